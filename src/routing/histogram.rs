//! A fixed-bucket latency histogram in atomics, written on the request path
//! (per route, per stamp) and read by `/metrics` at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: from a same-host
/// answer (1 ms) to the default per-try timeout (5 s) and beyond.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A fixed-bucket latency histogram in atomics: `observe` is a handful of
/// relaxed adds, safe from any thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// `(sum in seconds, count, per-bucket counts)` for encoding, the
    /// last bucket `+Inf` holding what is above the largest bound.
    /// Per bucket, not cumulative: prometheus-client accumulates them
    /// itself while encoding. Read while requests record, the count is
    /// raised to the buckets' total so that `+Inf` always equals it.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, n)| {
                let n = n.load(Ordering::Relaxed);
                total += n;
                (le, n)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed).max(total);
        buckets.push((f64::INFINITY, count - total));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_per_bucket_and_add_up_to_the_count() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(9));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 9.0305).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[4], (0.025, 0));
        assert_eq!(buckets[5], (0.05, 1));
        assert_eq!(buckets.last().unwrap().1, 1, "+Inf: above 5 s");
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), count);
    }
}
