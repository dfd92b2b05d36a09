//! A route's recent time to response head, for the adaptive hedge delay
//! (`retry.hedge_after = "p95"`): the request path adds each try's wait to
//! [`HeadLatencies`] (one relaxed atomic add), and the controller turns the
//! last seconds of it into a quantile with [`QuantileWindow`] and stores it
//! back for the request path to read (one atomic load).
//!
//! Buckets are log-linear, eight per octave of microseconds (at most
//! 12.5 % wide, up to 33 s): fine enough that a hedge delay taken at a
//! bucket's upper bound is late by at most an eighth, coarse enough that
//! a route's counters stay under 1.5 KiB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per octave, as a power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Up to 2^25 us (33 s); slower waits land in the last bucket.
const BUCKETS: usize = (24 - SUB_BITS as usize + 2) * SUB;

/// The bucket of a wait of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros();
    let sub = (us >> (octave - SUB_BITS)) as usize & (SUB - 1);
    ((octave - SUB_BITS + 1) as usize * SUB + sub).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i`, in microseconds.
fn upper_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64 + 1;
    }
    let shift = (i / SUB) as u32 - 1;
    (SUB + i % SUB + 1) as u64 * (1 << shift)
}

/// Cumulative counts of a route's waits for a response head, written by
/// the request path, and the delay the controller derived from them.
#[derive(Debug)]
pub struct HeadLatencies {
    buckets: [AtomicU64; BUCKETS],
    /// The current adaptive hedge delay in microseconds; 0 until the
    /// route has enough recent samples.
    delay_micros: AtomicU64,
}

impl Default for HeadLatencies {
    fn default() -> Self {
        HeadLatencies {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            delay_micros: AtomicU64::new(0),
        }
    }
}

impl HeadLatencies {
    /// One try got its response head after `waited`.
    pub fn record(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The adaptive hedge delay, once known.
    pub fn delay(&self) -> Option<Duration> {
        match self.delay_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Set by the controller (see [`QuantileWindow`]).
    pub fn set_delay(&self, delay: Option<Duration>) {
        let us = delay.map_or(0, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        self.delay_micros.store(us, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// The last `slots` samples of a [`HeadLatencies`], as per-sample counts,
/// and their sum: a sliding window over which quantiles are read. Owned by
/// the controller, sampled once per live window.
#[derive(Debug, Clone)]
pub struct QuantileWindow {
    slots: usize,
    /// The cumulative counts at the last sample.
    seen: Box<[u64; BUCKETS]>,
    recent: std::collections::VecDeque<Box<[u64; BUCKETS]>>,
    sum: Box<[u64; BUCKETS]>,
}

impl QuantileWindow {
    /// A window over the last `slots` samples.
    pub fn new(slots: usize) -> QuantileWindow {
        QuantileWindow {
            slots: slots.max(1),
            seen: Box::new([0; BUCKETS]),
            recent: std::collections::VecDeque::new(),
            sum: Box::new([0; BUCKETS]),
        }
    }

    /// Take what `latencies` counted since the last sample into the window.
    pub fn sample(&mut self, latencies: &HeadLatencies) {
        let now = latencies.counts();
        let mut delta = Box::new([0; BUCKETS]);
        for i in 0..BUCKETS {
            delta[i] = now[i].saturating_sub(self.seen[i]);
            self.sum[i] += delta[i];
        }
        *self.seen = now;
        self.recent.push_back(delta);
        if self.recent.len() > self.slots {
            let old = self.recent.pop_front().expect("longer than slots");
            for i in 0..BUCKETS {
                self.sum[i] -= old[i];
            }
        }
    }

    /// The `q` quantile (0 < q < 1) of the waits in the window, as the
    /// upper bound of its bucket; `None` with fewer than `min_samples`.
    pub fn quantile(&self, q: f64, min_samples: u64) -> Option<Duration> {
        let total: u64 = self.sum.iter().sum();
        if total == 0 || total < min_samples {
            return None;
        }
        // The smallest bucket with at least q of the samples at or below it.
        // (The epsilon keeps 100 x 0.95 at rank 95 in floating point.)
        let rank = ((total as f64) * q - 1e-9).ceil().max(1.0) as u64;
        let mut below = 0;
        let i = self.sum.iter().position(|&n| {
            below += n;
            below >= rank
        })?;
        Some(Duration::from_micros(upper_bound(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_contiguous_and_at_most_an_eighth_wide() {
        let mut last = 0;
        for us in 1..200_000u64 {
            let b = bucket(us);
            assert!(
                b == last || b == last + 1,
                "{us} us: bucket {b} after {last}"
            );
            assert!(
                us < upper_bound(b),
                "{us} us under its bound {}",
                upper_bound(b)
            );
            if b > 0 {
                assert!(us >= upper_bound(b - 1), "{us} us above the bucket below");
            }
            if us >= 8 {
                let width = upper_bound(b) - upper_bound(b - 1);
                assert!(width * 8 <= upper_bound(b - 1), "{us} us: width {width}");
            }
            last = b;
        }
        assert_eq!(
            bucket(u64::MAX),
            BUCKETS - 1,
            "slower waits share the last bucket"
        );
        assert!(upper_bound(BUCKETS - 2) >= 16_000_000);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_quantile_is_the_upper_bound_of_its_bucket() {
        let h = HeadLatencies::default();
        for _ in 0..95 {
            h.record(ms(10));
        }
        for _ in 0..5 {
            h.record(ms(300));
        }
        let mut w = QuantileWindow::new(10);
        w.sample(&h);
        let p95 = w.quantile(0.95, 20).unwrap();
        assert!(p95 > ms(10) && p95 <= ms(10) + ms(10) / 8, "p95 {p95:?}");
        let p99 = w.quantile(0.99, 20).unwrap();
        assert!(p99 > ms(300) && p99 <= ms(300) + ms(300) / 8, "p99 {p99:?}");
        assert_eq!(w.quantile(0.95, 101), None, "too few samples");
    }

    #[test]
    fn old_samples_leave_the_window() {
        let h = HeadLatencies::default();
        let mut w = QuantileWindow::new(3);
        for _ in 0..100 {
            h.record(ms(200));
        }
        w.sample(&h);
        for _ in 0..100 {
            h.record(ms(5));
        }
        w.sample(&h);
        assert!(w.quantile(0.95, 1).unwrap() > ms(200), "both seconds count");
        w.sample(&h);
        w.sample(&h);
        let p95 = w.quantile(0.95, 1).unwrap();
        assert!(p95 < ms(6), "the slow second has left: {p95:?}");
        w.sample(&h);
        assert_eq!(w.quantile(0.95, 1), None, "nothing recent");
    }

    #[test]
    fn the_delay_is_unset_until_set_and_never_zero_once_set() {
        let h = HeadLatencies::default();
        assert_eq!(h.delay(), None);
        h.set_delay(Some(Duration::from_nanos(10)));
        assert_eq!(h.delay(), Some(Duration::from_micros(1)));
        h.set_delay(None);
        assert_eq!(h.delay(), None);
    }
}
