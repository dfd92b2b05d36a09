//! Rates of live traffic — control plane: the controller turns the request
//! path's cumulative per-stamp counters into the rates its verdicts and
//! status need. Pure like [`super::state`]: the counters' values and `now`
//! are passed in, nothing here reads an atomic or a clock.
//!
//! - [`FailureWindow`]: failed share of the requests over the last few
//!   controller ticks, for failure-rate ejection;
//! - [`LiveClock`] and [`LiveRates`]: requests and failures per second over
//!   [`LIVE_WINDOW`], for the degraded verdict, traffic shares and status.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Live error rates and traffic shares are computed over this window: long
/// enough to hold a countable number of requests at modest rates, short
/// enough that a degraded verdict follows a fault within about a second.
pub const LIVE_WINDOW: Duration = Duration::from_secs(1);

/// Requests and failures counted over a span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests that reached a stamp.
    pub requests: u64,
    /// Of those, failed tries (gateway failures and 5xx).
    pub failures: u64,
}

impl Counts {
    /// Failed share of the requests, in 0..=1 (0 without requests). Failures
    /// are capped at the requests: the two counters are read one after the
    /// other, so a failure may be counted before its request.
    pub fn rate(&self) -> f64 {
        self.failures.min(self.requests) as f64 / self.requests.max(1) as f64
    }

    /// What was added since `earlier`. A counter that went back (a fresh
    /// set of counters) counts as nothing new rather than wrapping.
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            failures: self.failures.saturating_sub(earlier.failures),
        }
    }
}

/// The failed share of a stamp's requests over its last `ticks` controller
/// ticks, slid by one tick at a time.
#[derive(Debug, Clone)]
pub struct FailureWindow {
    /// Per tick, oldest first, at most `ticks` of them.
    recent: VecDeque<Counts>,
    ticks: usize,
    /// The cumulative counters at the last slide.
    seen: Counts,
}

impl FailureWindow {
    /// An empty window of `ticks` ticks (at least one).
    pub fn new(ticks: usize) -> Self {
        let ticks = ticks.max(1);
        FailureWindow {
            recent: VecDeque::with_capacity(ticks + 1),
            ticks,
            seen: Counts::default(),
        }
    }

    /// One tick passed and the cumulative counters now read `total`: the
    /// window drops its oldest tick, takes this one's, and returns what it
    /// holds.
    pub fn slide(&mut self, total: Counts) -> Counts {
        let tick = total.since(std::mem::replace(&mut self.seen, total));
        self.recent.push_back(tick);
        if self.recent.len() > self.ticks {
            self.recent.pop_front();
        }
        self.recent.iter().fold(Counts::default(), |sum, c| Counts {
            requests: sum.requests + c.requests,
            failures: sum.failures + c.failures,
        })
    }

    /// Forget the ticks so far (after an ejection, what led to it must not
    /// count again); the counters seen are kept, so the next slide counts
    /// only what happens from now on.
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

/// When the controller samples live rates: every [`LIVE_WINDOW`], one clock
/// for every stamp so that their rates cover the same span and their
/// traffic shares add up.
#[derive(Debug, Clone)]
pub struct LiveClock {
    last: Instant,
}

impl LiveClock {
    /// A clock whose first window starts `now`.
    pub fn new(now: Instant) -> Self {
        LiveClock { last: now }
    }

    /// The span of the window that ends `now`, if a full [`LIVE_WINDOW`]
    /// has passed since the last one (a late tick makes a longer window,
    /// which the rates divide by); `None` otherwise.
    pub fn due(&mut self, now: Instant) -> Option<Duration> {
        let window = now.duration_since(self.last);
        if window < LIVE_WINDOW {
            return None;
        }
        self.last = now;
        Some(window)
    }
}

/// A stamp's requests and failures per second over the last live window.
#[derive(Debug, Clone, Default)]
pub struct LiveRates {
    /// The cumulative counters at the last sample.
    seen: Counts,
    rps: f64,
    eps: f64,
}

impl LiveRates {
    /// Take the sample of a window of `window` whose cumulative counters now
    /// read `total`; returns what the window counted (for
    /// [`super::StampHealth::record_live`]).
    pub fn sample(&mut self, total: Counts, window: Duration) -> Counts {
        let counted = total.since(std::mem::replace(&mut self.seen, total));
        let secs = window.as_secs_f64();
        if secs > 0.0 {
            self.rps = counted.requests as f64 / secs;
            self.eps = counted.failures as f64 / secs;
        }
        counted
    }

    /// Requests per second over the last window (traffic share).
    pub fn rps(&self) -> f64 {
        self.rps
    }

    /// Failed tries (gateway failures and 5xx) per second, same window.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, failures: u64) -> Counts {
        Counts { requests, failures }
    }

    #[test]
    fn the_failure_window_holds_its_last_ticks_only() {
        let mut w = FailureWindow::new(3);
        assert_eq!(w.slide(counts(10, 0)), counts(10, 0));
        assert_eq!(w.slide(counts(20, 5)), counts(20, 5));
        assert_eq!(w.slide(counts(30, 10)), counts(30, 10));
        // The first tick (10 requests, no failure) drops out.
        assert_eq!(w.slide(counts(40, 15)), counts(30, 15));
        assert_eq!(w.slide(counts(40, 15)).rate(), 10.0 / 20.0);
    }

    #[test]
    fn a_cleared_window_counts_from_the_clear_on() {
        let mut w = FailureWindow::new(5);
        w.slide(counts(10, 0));
        assert_eq!(w.slide(counts(20, 10)), counts(20, 10));
        w.clear();
        assert_eq!(w.slide(counts(22, 10)), counts(2, 0), "not 22 and 10");
    }

    #[test]
    fn counters_that_go_back_count_as_nothing_new() {
        let mut w = FailureWindow::new(1);
        w.slide(counts(100, 50));
        assert_eq!(w.slide(counts(5, 5)), counts(0, 0));
        assert_eq!(w.slide(counts(7, 6)), counts(2, 1));
    }

    #[test]
    fn the_rate_caps_failures_at_requests_and_is_zero_without_requests() {
        assert_eq!(counts(0, 0).rate(), 0.0);
        assert_eq!(counts(0, 3).rate(), 0.0);
        assert_eq!(counts(4, 9).rate(), 1.0);
        assert_eq!(counts(4, 1).rate(), 0.25);
    }

    #[tokio::test(start_paused = true)]
    async fn the_live_clock_is_due_once_per_window() {
        let mut clock = LiveClock::new(Instant::now());
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(clock.due(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(clock.due(Instant::now()), Some(LIVE_WINDOW));
        assert_eq!(clock.due(Instant::now()), None, "a new window began");
        // A late tick: the window is as long as it really was.
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.due(Instant::now()), Some(Duration::from_millis(1500)));
    }

    #[tokio::test(start_paused = true)]
    async fn live_rates_are_per_second_of_the_window() {
        let mut clock = LiveClock::new(Instant::now());
        let mut rates = LiveRates::default();
        tokio::time::advance(Duration::from_secs(2)).await;
        let window = clock.due(Instant::now()).expect("due");
        assert_eq!(rates.sample(counts(100, 10), window), counts(100, 10));
        assert_eq!((rates.rps(), rates.eps()), (50.0, 5.0));
        tokio::time::advance(LIVE_WINDOW).await;
        let window = clock.due(Instant::now()).expect("due");
        assert_eq!(rates.sample(counts(130, 10), window), counts(30, 0));
        assert_eq!((rates.rps(), rates.eps()), (30.0, 0.0));
    }
}
