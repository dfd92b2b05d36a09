//! Retry budget — request path: decides, without a lock, whether one more
//! retry fits in the share of recent requests that may be retried.
//!
//! A retry count alone lets a dying region multiply the load on the healthy
//! ones (every failed request becomes `attempts` requests). A budget bounds
//! the retries to `retry_percent` of the requests seen in the last `ttl`,
//! plus a floor of `min_per_sec` so that low traffic can still retry (the
//! rule of tower's `TpsBudget` and Finagle's `RetryBudget`).
//!
//! # Why no lock
//!
//! tower's budget takes a `Mutex` on every deposit and withdrawal; on our
//! request path every request deposits, so that lock would serialise all
//! requests of a route. Here the window is `SLOTS` time slots of `ttl /
//! SLOTS`, each an atomic word that packs the slot's *epoch* (which slot
//! period it counts for) with its count. A writer that finds a word from an
//! older epoch resets it to its own epoch with one `compare_exchange`, so old
//! slots are cleared lazily by whoever touches them first and no reset can
//! lose a concurrent increment.
//!
//! # Accuracy
//!
//! Counts are approximate under races, which is fine for a budget: the sum
//! over the slots is not a snapshot, so a withdrawal racing with deposits
//! may see a few of them or not, and concurrent withdrawals at the limit may
//! both back off (refusing a retry that would have fit) but never both
//! succeed past it. The window slides in steps of one slot: a request counts
//! for between `ttl × (SLOTS-1)/SLOTS` and `ttl`. All atomics use `Relaxed`
//! ordering: they publish no other data, only their own counts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Number of slots of the sliding window: ten gives a resolution of a tenth
/// of the window (1s for the usual 10s) at ten atomics per counter.
const SLOTS: usize = 10;
/// Shortest slot; shorter windows are stretched to `SLOTS` of this. It also
/// keeps the 40-bit epochs from wrapping for decades.
const MIN_SLOT: Duration = Duration::from_millis(1);
/// Bits of a slot word holding the count; the epoch takes the rest. 24 bits
/// count 16.7 million per slot, beyond which a count saturates (it errs on
/// the side of fewer retries for deposits).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Epochs are compared modulo 2^40 (wrapping), so time never runs out.
const EPOCH_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// A lock-free retry budget shared by all requests of a route.
///
/// Locks: none. Every method takes `&self` and touches only atomics, so one
/// budget is shared (`Arc`) by every request task of its route.
#[derive(Debug)]
pub struct RetryBudget {
    start: Instant,
    slot_nanos: u128,
    /// Retries allowed per window regardless of deposits.
    reserve: u64,
    retry_percent: f64,
    deposits: [SlotCounter; SLOTS],
    withdrawals: [SlotCounter; SLOTS],
    exhausted: AtomicU64,
    granted: AtomicU64,
}

impl RetryBudget {
    /// A budget over a sliding window of `ttl` (e.g. 10s) that allows
    /// `min_per_sec × ttl` retries with no traffic at all plus
    /// `retry_percent` (e.g. 0.2) of the requests deposited in the window.
    /// Its clock starts now; later `now` values are measured from here.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f64) -> Self {
        Self::starting_at(ttl, min_per_sec, retry_percent, Instant::now())
    }

    /// Like [`RetryBudget::new`] with an explicit start (tests, and callers
    /// that already hold a `now`).
    pub fn starting_at(
        ttl: Duration,
        min_per_sec: u32,
        retry_percent: f64,
        start: Instant,
    ) -> Self {
        let slot = (ttl / SLOTS as u32).max(MIN_SLOT);
        let window = slot.as_secs_f64() * SLOTS as f64;
        Self {
            start,
            slot_nanos: slot.as_nanos(),
            reserve: (f64::from(min_per_sec) * window).round() as u64,
            retry_percent: if retry_percent.is_finite() {
                retry_percent.max(0.0)
            } else {
                0.0
            },
            deposits: Default::default(),
            withdrawals: Default::default(),
            exhausted: AtomicU64::new(0),
            granted: AtomicU64::new(0),
        }
    }

    /// Records an original request (call once per request, not per try).
    pub fn deposit(&self, now: Instant) {
        let epoch = self.epoch(now);
        self.deposits[slot_index(epoch)].add(epoch);
    }

    /// Takes one retry from the budget; `false` when it is spent (the retry
    /// must not be sent, and [`RetryBudget::exhausted_total`] counts it).
    pub fn withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let slot = &self.withdrawals[slot_index(epoch)];
        // Count first, then check, then undo: two withdrawals racing for the
        // last retry may both undo, but cannot both go through.
        slot.add(epoch);
        if sum(&self.withdrawals, epoch) <= self.allowed(epoch) {
            self.granted.fetch_add(1, Relaxed);
            return true;
        }
        slot.remove(epoch);
        self.exhausted.fetch_add(1, Relaxed);
        false
    }

    /// Retries granted since the budget was created (a metric).
    pub fn retries_total(&self) -> u64 {
        self.granted.load(Relaxed)
    }

    /// Retries refused since the budget was created (a metric).
    pub fn exhausted_total(&self) -> u64 {
        self.exhausted.load(Relaxed)
    }

    fn allowed(&self, epoch: u64) -> u64 {
        let earned = sum(&self.deposits, epoch) as f64 * self.retry_percent;
        self.reserve.saturating_add(earned as u64)
    }

    /// The slot period `now` falls in, modulo 2^40.
    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let epoch = elapsed / self.slot_nanos;
        (epoch & u128::from(EPOCH_MASK)) as u64
    }
}

fn slot_index(epoch: u64) -> usize {
    (epoch % SLOTS as u64) as usize
}

/// The counts of the slots whose epoch lies in the window ending at `epoch`.
fn sum(slots: &[SlotCounter; SLOTS], epoch: u64) -> u64 {
    slots.iter().map(|slot| slot.count_in_window(epoch)).sum()
}

/// One slot's count, tagged with the epoch it counts for, in one word.
#[derive(Debug, Default)]
struct SlotCounter(AtomicU64);

impl SlotCounter {
    /// Adds one for `epoch`, resetting the slot first if it still holds an
    /// older epoch. A late writer (one that read `now` just before a slot
    /// boundary) whose slot already moved on to a newer epoch counts there.
    fn add(&self, epoch: u64) {
        self.update(|slot_epoch, count| {
            if slot_epoch == epoch || newer(slot_epoch, epoch) {
                Some(pack(slot_epoch, count.saturating_add(1).min(COUNT_MASK)))
            } else {
                Some(pack(epoch, 1))
            }
        });
    }

    /// Takes back one `add(epoch)`; nothing to do if the slot was reset.
    fn remove(&self, epoch: u64) {
        self.update(|slot_epoch, count| {
            let same = slot_epoch == epoch || newer(slot_epoch, epoch);
            (same && count > 0).then(|| pack(slot_epoch, count - 1))
        });
    }

    fn count_in_window(&self, epoch: u64) -> u64 {
        let (slot_epoch, count) = unpack(self.0.load(Relaxed));
        let age = epoch.wrapping_sub(slot_epoch) & EPOCH_MASK;
        if age < SLOTS as u64 { count } else { 0 }
    }

    /// Applies `f(epoch, count)` atomically (a `compare_exchange` loop, so a
    /// reset and a racing increment cannot overwrite each other); `None`
    /// leaves the word alone.
    fn update(&self, f: impl Fn(u64, u64) -> Option<u64>) {
        let _ = self.0.fetch_update(Relaxed, Relaxed, |word| {
            let (epoch, count) = unpack(word);
            f(epoch, count)
        });
    }
}

fn pack(epoch: u64, count: u64) -> u64 {
    (epoch & EPOCH_MASK) << COUNT_BITS | (count & COUNT_MASK)
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> COUNT_BITS, word & COUNT_MASK)
}

/// Is epoch `a` later than `b` (modulo 2^40, within half the range)?
fn newer(a: u64, b: u64) -> bool {
    let ahead = a.wrapping_sub(b) & EPOCH_MASK;
    ahead != 0 && ahead < EPOCH_MASK / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn budget(min_per_sec: u32, percent: f64) -> (RetryBudget, Instant) {
        let start = Instant::now();
        (
            RetryBudget::starting_at(TTL, min_per_sec, percent, start),
            start,
        )
    }

    fn withdraw_all(budget: &RetryBudget, now: Instant, tries: u32) -> u32 {
        (0..tries).map(|_| u32::from(budget.withdraw(now))).sum()
    }

    #[test]
    fn floor_allows_min_per_sec_times_ttl_without_traffic() {
        let (budget, start) = budget(10, 0.2);
        assert_eq!(withdraw_all(&budget, start, 500), 100);
        assert_eq!(budget.exhausted_total(), 400);
        assert_eq!(budget.retries_total(), 100);
    }

    #[test]
    fn a_share_of_deposits_adds_to_the_floor() {
        let (budget, start) = budget(10, 0.2);
        for _ in 0..1000 {
            budget.deposit(start);
        }
        assert_eq!(withdraw_all(&budget, start, 1000), 100 + 200);
    }

    #[test]
    fn zero_floor_and_zero_percent_allow_nothing() {
        let (budget, start) = budget(0, 0.0);
        budget.deposit(start);
        assert!(!budget.withdraw(start));
        assert_eq!(budget.exhausted_total(), 1);
    }

    #[test]
    fn deposits_older_than_ttl_stop_counting() {
        let (budget, start) = budget(0, 0.5);
        for _ in 0..100 {
            budget.deposit(start);
        }
        // Within the window the deposits still count ...
        let late = start + Duration::from_millis(9_500);
        assert_eq!(withdraw_all(&budget, late, 10), 10);
        // ... one ttl later they are gone.
        assert!(!budget.withdraw(start + TTL));
        // New deposits earn afresh once the old withdrawals left too.
        let much_later = start + 3 * TTL;
        for _ in 0..10 {
            budget.deposit(much_later);
        }
        assert_eq!(withdraw_all(&budget, much_later, 10), 5);
    }

    #[test]
    fn spent_retries_are_returned_when_they_leave_the_window() {
        let (budget, start) = budget(1, 0.0);
        assert_eq!(withdraw_all(&budget, start, 20), 10);
        let later = start + TTL + Duration::from_secs(1);
        assert_eq!(withdraw_all(&budget, later, 20), 10);
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let (budget, start) = budget(0, 1.0);
        for second in 0..10 {
            budget.deposit(start + Duration::from_secs(second));
        }
        // At 12.5s the deposits of seconds 0..=2 have left the window.
        assert_eq!(
            withdraw_all(&budget, start + Duration::from_millis(12_500), 10),
            7
        );
    }

    #[test]
    fn a_time_before_start_counts_as_start() {
        let start = Instant::now() + Duration::from_secs(5);
        let budget = RetryBudget::starting_at(TTL, 1, 0.0, start);
        assert_eq!(
            withdraw_all(&budget, start - Duration::from_secs(5), 20),
            10
        );
    }

    #[test]
    fn slot_words_reset_lazily_and_count_late_writers() {
        let slot = SlotCounter::default();
        slot.add(3);
        slot.add(3);
        assert_eq!(slot.count_in_window(3), 2);
        slot.add(13);
        assert_eq!(
            slot.count_in_window(13),
            1,
            "an old epoch is reset, not added to"
        );
        slot.add(3);
        assert_eq!(
            slot.count_in_window(13),
            2,
            "a late writer counts in the newer epoch"
        );
        slot.remove(3);
        slot.remove(13);
        slot.remove(13);
        assert_eq!(slot.count_in_window(13), 0, "never below zero");
        assert_eq!(slot.count_in_window(30), 0, "out of the window");
    }

    #[test]
    fn epochs_compare_across_wrap_around() {
        assert!(newer(0, EPOCH_MASK));
        assert!(newer(5, 3));
        assert!(!newer(3, 5));
        assert!(!newer(4, 4));
        let slot = SlotCounter(AtomicU64::new(pack(EPOCH_MASK, 1)));
        assert_eq!(
            slot.count_in_window(2),
            1,
            "three slots old across the wrap"
        );
        slot.add(12);
        assert_eq!(slot.count_in_window(12), 1, "reset across the wrap");
    }

    #[test]
    fn concurrent_use_stays_within_the_budget() {
        let (budget, start) = budget(10, 0.2);
        let granted: u32 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..250 {
                            budget.deposit(start);
                        }
                        withdraw_all(&budget, start, 200)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker panicked"))
                .sum()
        });
        // 100 floor + 20% of 1000: never more; a few may be lost to
        // withdrawals that raced for the last retries, or that ran before
        // the other threads' deposits arrived.
        assert!(granted <= 300, "granted {granted}");
        assert!(granted >= 100, "granted {granted}");
        let after: u32 = withdraw_all(&budget, start, 300);
        assert_eq!(
            granted + after,
            300,
            "the sequential remainder fills it exactly"
        );
        assert_eq!(budget.exhausted_total(), 1100 - 300);
    }

    #[test]
    fn concurrent_use_across_slot_boundaries_stays_within_the_budget() {
        let (budget, start) = budget(1, 0.1);
        // A shared clock: every operation is 1.75ms after the previous one,
        // whichever thread makes it, so 20k rounds span 35s of slots.
        let clock = AtomicU64::new(0);
        let granted: u32 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut granted = 0;
                        for _ in 0..5_000 {
                            let tick = clock.fetch_add(1, Relaxed);
                            let now = start + Duration::from_micros(tick * 1_750);
                            budget.deposit(now);
                            granted += u32::from(budget.withdraw(now));
                        }
                        granted
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker panicked"))
                .sum()
        });
        // 36 slots are 4 disjoint windows; each grants at most its floor
        // (10) plus 10% of its deposits: 40 + 2000 in all, and a little
        // slack for writers that straddle a slot boundary.
        let ceiling = 4 * 10 + 20_000 / 10 + 20;
        assert!(granted <= ceiling, "granted {granted} > {ceiling}");
        assert!(granted >= 1_900, "granted only {granted}");
    }
}
