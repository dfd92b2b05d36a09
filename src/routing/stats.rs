//! Per-route counters of what clients saw: answers by status class and by
//! the stamp that served them, and the whole exchange's duration. Written
//! by the request path with relaxed atomics, read by `/metrics` at scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::head_latency::HeadLatencies;
use super::histogram::LatencyHistogram;

/// Index of a status code's class (0 = 1xx ... 4 = 5xx); anything outside
/// 100..=599 is counted with its nearest class.
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One route's client-side counters. The per-stamp rows follow the order
/// of the route's pool's stamps, so the controller keeps an instance across
/// tables only while that list of stamps is unchanged.
#[derive(Debug)]
pub struct RouteStats {
    /// Answers served by each stamp of the pool, by status class.
    by_stamp: Box<[[AtomicU64; 5]]>,
    /// Answers the proxy made itself (no stamp reached or all failed).
    local: [AtomicU64; 5],
    /// From the request head to the end of the response body.
    duration: LatencyHistogram,
    /// The stamp names the rows were made for.
    stamps: Box<[String]>,
    /// Hedged tries: sent, won, lost (see [`Hedge`]).
    hedges: [AtomicU64; 3],
    /// Times to response head, and the adaptive hedge delay made of them
    /// (recorded only for a route hedging at a quantile).
    pub head_latency: HeadLatencies,
}

/// What became of a hedged try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hedge {
    /// A second try was sent while the first still ran.
    Sent,
    /// The hedge's answer was delivered.
    Won,
    /// The first try answered first, or the hedge failed.
    Lost,
}

impl RouteStats {
    /// Counters for a route whose pool has `stamps`, in pool order.
    pub fn new(stamps: &[String]) -> RouteStats {
        RouteStats {
            by_stamp: stamps.iter().map(|_| Default::default()).collect(),
            local: Default::default(),
            duration: LatencyHistogram::default(),
            stamps: stamps.into(),
            hedges: Default::default(),
            head_latency: HeadLatencies::default(),
        }
    }

    /// Were these counters made for this list of stamps?
    pub fn fits(&self, stamps: &[String]) -> bool {
        *self.stamps == *stamps
    }

    /// Count one answer: `stamp` is the index in the pool of the stamp
    /// that served it, `None` for an answer made by the proxy.
    pub fn count(&self, stamp: Option<usize>, status: u16) {
        let row = match stamp.and_then(|i| self.by_stamp.get(i)) {
            Some(row) => row,
            None => &self.local,
        };
        row[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Record the duration of a finished exchange.
    pub fn observe(&self, total: Duration) {
        self.duration.observe(total);
    }

    /// Counts by class for the stamp at `index` (`None`: proxy-made).
    pub fn answers(&self, stamp: Option<usize>) -> [u64; 5] {
        let row = match stamp {
            Some(i) => &self.by_stamp[i],
            None => &self.local,
        };
        std::array::from_fn(|c| row[c].load(Ordering::Relaxed))
    }

    /// Count a hedge event.
    pub fn hedge(&self, what: Hedge) {
        self.hedges[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Hedges sent, won and lost, labelled.
    pub fn hedges(&self) -> [(&'static str, u64); 3] {
        let n = |h: Hedge| self.hedges[h as usize].load(Ordering::Relaxed);
        [
            ("sent", n(Hedge::Sent)),
            ("won", n(Hedge::Won)),
            ("lost", n(Hedge::Lost)),
        ]
    }

    /// The duration histogram.
    pub fn duration(&self) -> &LatencyHistogram {
        &self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_their_stamp_and_class() {
        let stats = RouteStats::new(&["a".into(), "b".into()]);
        stats.count(Some(1), 200);
        stats.count(Some(1), 503);
        stats.count(None, 404);
        stats.count(Some(7), 200); // an index from another table: local
        assert_eq!(stats.answers(Some(0)), [0; 5]);
        assert_eq!(stats.answers(Some(1)), [0, 1, 0, 0, 1]);
        assert_eq!(stats.answers(None), [0, 1, 0, 1, 0]);
        assert!(stats.fits(&["a".into(), "b".into()]));
        assert!(!stats.fits(&["b".into(), "a".into()]));
    }

    #[test]
    fn odd_statuses_clamp_to_a_class() {
        assert_eq!(status_class(42), 0);
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(999), 4);
    }
}
