//! Response rate limiting for UDP answers, so the server cannot be used to
//! reflect traffic at a victim whose address an attacker spoofs. Checked
//! once per UDP query before any answer is built; TCP is not limited (a
//! TCP client has proved its address in the handshake).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::time::Instant;

/// Counters are kept per slot of a fixed table, not per client: memory
/// stays bounded however many (spoofed) sources send. Two networks that
/// hash to one slot share a budget; with this many slots an attacker needs
/// hundreds of thousands of queries a second to crowd out a resolver, and
/// that resolver still gets truncated answers and so retries over TCP.
const SLOTS: usize = 4096;

/// Seconds between two log lines about responses held back: a flood is a
/// line every so often, not a line per query, and an operator whose load
/// test is being limited still sees why.
const LOG_EVERY_SECS: u32 = 10;

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: answer.
    Answer,
    /// Over the budget, but every second such response is sent empty with
    /// the TC bit ("slip", as BIND's RRL does): a real client behind the
    /// address retries over TCP, a victim gets a packet no larger than the
    /// query.
    Slip,
    /// Over the budget: send nothing.
    Drop,
}

/// A fixed-window counter per client network: IPv4 /24 and IPv6 /56, the
/// prefixes BIND's RRL uses, so that one resolver farm counts once and an
/// attacker cannot dodge the limit by spoofing neighbouring addresses.
///
/// Locking: none. Each slot is one `AtomicU64` holding the window (whole
/// seconds since start, high 32 bits) and the responses counted in it (low
/// 32 bits), updated with a compare-and-swap loop.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    start: Instant,
    slots: Box<[AtomicU64]>,
    /// The window (plus one; 0 is never) of the last over-limit log line.
    logged: AtomicU32,
}

impl RateLimiter {
    /// A limiter allowing `per_second` responses to each client network;
    /// `None` when the limit is off (0).
    pub fn new(per_second: u32, start: Instant) -> Option<RateLimiter> {
        (per_second > 0).then(|| RateLimiter {
            per_second,
            start,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            logged: AtomicU32::new(0),
        })
    }

    /// The responses allowed to one client network per second.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Whether a response held back at `now` should be logged: true for
    /// the first one, then at most once every `LOG_EVERY_SECS`, across
    /// every thread sharing this limiter.
    pub fn log_due(&self, now: Instant) -> bool {
        let stamp = (now.saturating_duration_since(self.start).as_secs() as u32).saturating_add(1);
        let last = self.logged.load(Ordering::Relaxed);
        (last == 0 || stamp.saturating_sub(last) >= LOG_EVERY_SECS)
            && self
                .logged
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Count one response to `client` at `now` and say what to do with it.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        let window = now.saturating_duration_since(self.start).as_secs() as u32;
        let slot = &self.slots[slot_of(client)];
        let mut current = slot.load(Ordering::Relaxed);
        let count = loop {
            let (w, n) = ((current >> 32) as u32, current as u32);
            let n = if w == window { n.saturating_add(1) } else { 1 };
            let next = (u64::from(window) << 32) | u64::from(n);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break n,
                Err(seen) => current = seen,
            }
        };
        match count.checked_sub(self.per_second) {
            None | Some(0) => Verdict::Answer,
            Some(over) if over % 2 == 1 => Verdict::Slip,
            Some(_) => Verdict::Drop,
        }
    }
}

/// The slot of a client's network: /24 for IPv4, /56 for IPv6, mixed by a
/// multiplicative hash so neighbouring networks spread over the table.
fn slot_of(client: IpAddr) -> usize {
    let network: u64 = match client {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
        // Tagged so an IPv6 network never equals an IPv4 one.
        IpAddr::V6(v6) => ((u128::from(v6) >> 72) as u64) | (1 << 63),
    };
    // Fibonacci hashing: the top bits of the product are well mixed.
    let mixed = network.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_network_over_its_budget_gets_slips_and_drops_until_the_next_second() {
        let start = Instant::now();
        let limiter = RateLimiter::new(3, start).unwrap();
        let verdicts: Vec<Verdict> = (0..7)
            .map(|_| limiter.check(ip("192.0.2.1"), start))
            .collect();
        use Verdict::*;
        assert_eq!(verdicts, [Answer, Answer, Answer, Slip, Drop, Slip, Drop]);
        // Same /24, other host: same budget.
        assert_eq!(limiter.check(ip("192.0.2.77"), start), Slip);
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.check(ip("192.0.2.1"), later), Answer);
    }

    #[test]
    fn networks_are_counted_apart() {
        let start = Instant::now();
        let limiter = RateLimiter::new(1, start).unwrap();
        assert_eq!(limiter.check(ip("192.0.2.1"), start), Verdict::Answer);
        assert_eq!(limiter.check(ip("198.51.100.1"), start), Verdict::Answer);
        assert_eq!(limiter.check(ip("2001:db8:0:1::1"), start), Verdict::Answer);
        // Same /56.
        assert_eq!(limiter.check(ip("2001:db8:0:2::1"), start), Verdict::Slip);
        assert_ne!(slot_of(ip("192.0.2.1")), slot_of(ip("192.0.3.1")));
    }

    #[test]
    fn held_back_responses_are_logged_once_per_ten_seconds() {
        let start = Instant::now();
        let limiter = RateLimiter::new(1, start).unwrap();
        assert!(limiter.log_due(start));
        assert!(!limiter.log_due(start));
        assert!(!limiter.log_due(start + Duration::from_secs(9)));
        assert!(limiter.log_due(start + Duration::from_secs(10)));
        assert!(!limiter.log_due(start + Duration::from_secs(11)));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(RateLimiter::new(0, Instant::now()).is_none());
    }
}
