//! The retry decision of one request, as a value: which stamp each try goes
//! to (pick), what a try's result means (classify), and whether another try
//! may follow (may retry), given the tries allowed, the route's deadline,
//! its retry budget and the stamps already tried. No I/O: the handler
//! (`handler`) drives it, and it is unit-tested with plain values.

use http::StatusCode;
use tokio::time::Instant;

use crate::error::{Blame, ProxyError};
use crate::routing::budget::RetryBudget;
use crate::routing::{Outcome, Selector, StampView, Tried};

/// The tries of one request. Picks never repeat a stamp; a retry goes to
/// another region first (the selector's rule).
#[derive(Debug)]
pub struct Attempts {
    /// Tries allowed: the route's `retry.attempts`, or 1 for a body that
    /// cannot be replayed.
    limit: usize,
    /// Tries begun.
    made: usize,
    tried: Tried,
    /// The route's timeout, from the request's arrival.
    deadline: Instant,
    /// The stamp chosen for the next try.
    next: Option<usize>,
}

/// One try, as [`Attempts::next_try`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Try {
    /// Index of the stamp in the pool.
    pub stamp: usize,
    /// 1 for the first try.
    pub number: usize,
    /// No try can follow this one: the limit is reached or every stamp of
    /// the pool has had one.
    pub last: bool,
}

impl Attempts {
    /// The tries of a request allowed `limit` of them until `deadline`,
    /// with the first stamp already picked.
    pub fn new(selector: &Selector, stamps: &[StampView], limit: usize, deadline: Instant) -> Self {
        let tried = Tried::default();
        Attempts {
            limit: limit.max(1),
            made: 0,
            next: selector.pick(stamps, &tried),
            tried,
            deadline,
        }
    }

    /// Begin the next try: `None` when no stamp could be picked (the pool
    /// has nothing usable, or nothing untried is left).
    pub fn next_try(&mut self, stamps: &[StampView]) -> Option<Try> {
        let stamp = self.next.take()?;
        self.made += 1;
        self.tried.push(stamp, stamps[stamp].region_id);
        Some(Try {
            stamp,
            number: self.made,
            last: self.made >= self.limit || self.tried.len() >= stamps.len(),
        })
    }

    /// After a failed try: whether another one goes. It does only if the
    /// try was not the last, the failure allows it, the deadline has not
    /// passed, another stamp can be picked, and the budget grants a token
    /// (asked last, so a retry that cannot happen spends none).
    pub fn may_retry<R>(
        &mut self,
        last: &Try,
        failure: &Failure<R>,
        selector: &Selector,
        stamps: &[StampView],
        budget: &RetryBudget,
        now: Instant,
    ) -> bool {
        if last.last || self.made >= self.limit || !failure.retryable() || now >= self.deadline {
            return false;
        }
        self.next = selector.pick(stamps, &self.tried);
        self.next.is_some() && budget.withdraw(now)
    }

    /// The hedge timer fired while `first` still waits for its answer:
    /// begin a second try at another stamp (another region first), if the
    /// limit leaves one, the deadline has not passed and the budget grants
    /// a token (a hedge is a retry sent early, and counts as one).
    pub fn hedge(
        &mut self,
        first: &Try,
        selector: &Selector,
        stamps: &[StampView],
        budget: &RetryBudget,
        now: Instant,
    ) -> Option<Try> {
        if first.last || self.made >= self.limit || now >= self.deadline {
            return None;
        }
        self.next = selector.pick(stamps, &self.tried);
        if self.next.is_none() || !budget.withdraw(now) {
            self.next = None;
            return None;
        }
        self.next_try(stamps)
    }

    /// Tries begun so far.
    pub fn made(&self) -> usize {
        self.made
    }
}

/// What a stamp's answer means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the client, counted as this outcome.
    Deliver(Outcome),
    /// 502/503/504: the stamp's gateway failed; another stamp may answer.
    GatewayStatus,
    /// The application's own 5xx on a route that retries them: another
    /// copy of the application may answer a replayable idempotent request.
    /// Not a gateway failure (no ejection streak).
    ServerError,
}

/// Classify a stamp's answer with status `status` on a try that is `last`
/// or not, on a route that does (`retry_server_errors`) or does not retry
/// the application's 5xx.
pub fn classify(status: StatusCode, retry_server_errors: bool, last: bool) -> Verdict {
    if is_gateway_failure(status) {
        Verdict::GatewayStatus
    } else if status.is_server_error() && retry_server_errors && !last {
        Verdict::ServerError
    } else if status.is_server_error() {
        Verdict::Deliver(Outcome::ServerError)
    } else {
        Verdict::Deliver(Outcome::Answered)
    }
}

/// 502/503/504 from a stamp mean it (or something in front of it) could not
/// serve: a gateway failure for passive health, unlike a 500 from the app.
pub fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// How a try at a stamp failed; `R` is the stamp's response, kept to be
/// passed on when no retry follows.
#[derive(Debug)]
pub enum Failure<R = ()> {
    /// The stamp answered 502/503/504.
    Status(R),
    /// The application answered another 5xx (retried when allowed; not
    /// the stamp's gateway failing).
    ServerError(R),
    /// No usable answer.
    Error(ProxyError),
}

impl<R> Failure<R> {
    /// The stamp is to blame: counts toward its ejection streak.
    pub fn blames_stamp(&self) -> bool {
        match self {
            Failure::Status(_) => true,
            Failure::ServerError(_) => false,
            Failure::Error(e) => e.blame() == Blame::Stamp,
        }
    }

    /// Another stamp may be tried.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Status(_) | Failure::ServerError(_) => true,
            Failure::Error(e) => e.retryable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::routing::Tier;
    use crate::routing::tests::stamp_views;

    /// Three stamps: two in region 0, one in region 1, one tier.
    fn pool() -> (Selector, Vec<StampView>) {
        let stamps = stamp_views(&[("a", 0), ("b", 0), ("c", 1)]);
        let selector = Selector::new([Tier::new([(0, 1), (1, 1), (2, 1)])]);
        (selector, stamps)
    }

    fn generous_budget(now: Instant) -> RetryBudget {
        RetryBudget::starting_at(Duration::from_secs(10), 100, 1.0, now)
    }

    fn refused() -> Failure {
        Failure::Error(ProxyError::ConnectRefused { stamp: "a".into() })
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_is_a_try_another_region_and_spends_the_budget() {
        let (selector, stamps) = pool();
        let now = Instant::now();
        let budget = generous_budget(now);
        let mut attempts = Attempts::new(&selector, &stamps, 2, now + Duration::from_secs(5));
        let first = attempts.next_try(&stamps).unwrap();
        let hedge = attempts
            .hedge(&first, &selector, &stamps, &budget, now)
            .expect("a second try is allowed");
        assert_ne!(stamps[first.stamp].region_id, stamps[hedge.stamp].region_id);
        assert!(hedge.last, "the limit of two is reached");
        assert_eq!(budget.retries_total(), 1, "a hedge is a retry");
        // Both failed: no third stamp beyond the limit.
        assert!(!attempts.may_retry(&first, &refused(), &selector, &stamps, &budget, now));
        assert!(!attempts.may_retry(&hedge, &refused(), &selector, &stamps, &budget, now));
        assert_eq!(attempts.made(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_without_budget_or_after_the_last_try() {
        let (selector, stamps) = pool();
        let now = Instant::now();
        let empty = RetryBudget::starting_at(Duration::from_secs(10), 0, 0.0, now);
        let mut attempts = Attempts::new(&selector, &stamps, 3, now + Duration::from_secs(5));
        let first = attempts.next_try(&stamps).unwrap();
        assert_eq!(
            attempts.hedge(&first, &selector, &stamps, &empty, now),
            None
        );
        let budget = generous_budget(now);
        let mut single = Attempts::new(&selector, &stamps, 1, now + Duration::from_secs(5));
        let only = single.next_try(&stamps).unwrap();
        assert_eq!(single.hedge(&only, &selector, &stamps, &budget, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_another_region_and_never_repeats_a_stamp() {
        let (selector, stamps) = pool();
        let now = Instant::now();
        let budget = generous_budget(now);
        for _ in 0..50 {
            let mut attempts = Attempts::new(&selector, &stamps, 3, now + Duration::from_secs(5));
            let first = attempts.next_try(&stamps).unwrap();
            assert!(!first.last);
            assert!(attempts.may_retry(&first, &refused(), &selector, &stamps, &budget, now));
            let second = attempts.next_try(&stamps).unwrap();
            assert_ne!(
                stamps[first.stamp].region_id, stamps[second.stamp].region_id,
                "the second try leaves the first one's region"
            );
            assert!(attempts.may_retry(&second, &refused(), &selector, &stamps, &budget, now));
            let third = attempts.next_try(&stamps).unwrap();
            assert!(third.last, "three tries of three stamps: nothing is left");
            let mut seen = [first.stamp, second.stamp, third.stamp];
            seen.sort();
            assert_eq!(seen, [0, 1, 2]);
            assert_eq!(attempts.made(), 3);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_makes_a_try_the_last() {
        let (selector, stamps) = pool();
        let now = Instant::now();
        let mut attempts = Attempts::new(&selector, &stamps, 1, now + Duration::from_secs(5));
        let only = attempts.next_try(&stamps).unwrap();
        assert!(only.last);
        let budget = generous_budget(now);
        assert!(!attempts.may_retry(&only, &refused(), &selector, &stamps, &budget, now));
        assert_eq!(attempts.next_try(&stamps), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_after_the_deadline_or_for_a_failure_that_forbids_it() {
        let (selector, stamps) = pool();
        let now = Instant::now();
        let budget = generous_budget(now);
        let deadline = now + Duration::from_millis(100);
        let mut attempts = Attempts::new(&selector, &stamps, 3, deadline);
        let first = attempts.next_try(&stamps).unwrap();
        assert!(
            !attempts.may_retry(&first, &refused(), &selector, &stamps, &budget, deadline),
            "at the deadline no time is left"
        );
        let mut attempts = Attempts::new(&selector, &stamps, 3, deadline);
        let first = attempts.next_try(&stamps).unwrap();
        let client_fault: Failure = Failure::Error(ProxyError::BodyTooLarge { limit: 1 });
        assert!(!attempts.may_retry(&first, &client_fault, &selector, &stamps, &budget, now));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_stops_retries_and_a_failed_pick_spends_nothing() {
        let (selector, stamps) = pool();
        let now = Instant::now();
        // No floor and no share of traffic: no token at all.
        let empty = RetryBudget::starting_at(Duration::from_secs(10), 0, 0.0, now);
        let mut attempts = Attempts::new(&selector, &stamps, 3, now + Duration::from_secs(5));
        let first = attempts.next_try(&stamps).unwrap();
        assert!(!attempts.may_retry(&first, &refused(), &selector, &stamps, &empty, now));
        assert_eq!(empty.exhausted_total(), 1);

        // One stamp only: the second pick finds nothing, so the budget is
        // not asked.
        let stamps = stamp_views(&[("solo", 0)]);
        let selector = Selector::new([Tier::new([(0, 1)])]);
        let budget = generous_budget(now);
        let mut attempts = Attempts::new(&selector, &stamps, 3, now + Duration::from_secs(5));
        let only = attempts.next_try(&stamps).unwrap();
        assert!(only.last, "every stamp of the pool has had a try");
        assert!(!attempts.may_retry(&only, &refused(), &selector, &stamps, &budget, now));
        assert_eq!(budget.retries_total(), 0);
    }

    #[test]
    fn a_pool_with_nothing_usable_offers_no_try() {
        let stamps = stamp_views(&[("a", 0)]);
        let mut attempts = Attempts::new(&Selector::default(), &stamps, 3, Instant::now());
        assert_eq!(attempts.next_try(&stamps), None);
    }

    #[test]
    fn answers_are_classified_by_status_route_and_try() {
        use StatusCode as S;
        assert_eq!(
            classify(S::OK, true, false),
            Verdict::Deliver(Outcome::Answered)
        );
        assert_eq!(
            classify(S::NOT_FOUND, true, false),
            Verdict::Deliver(Outcome::Answered)
        );
        for gateway in [S::BAD_GATEWAY, S::SERVICE_UNAVAILABLE, S::GATEWAY_TIMEOUT] {
            assert_eq!(classify(gateway, false, true), Verdict::GatewayStatus);
        }
        assert_eq!(
            classify(S::INTERNAL_SERVER_ERROR, true, false),
            Verdict::ServerError
        );
        assert_eq!(
            classify(S::INTERNAL_SERVER_ERROR, true, true),
            Verdict::Deliver(Outcome::ServerError),
            "the last try delivers the application's 5xx"
        );
        assert_eq!(
            classify(S::INTERNAL_SERVER_ERROR, false, false),
            Verdict::Deliver(Outcome::ServerError)
        );
    }

    #[test]
    fn only_the_stamps_faults_count_toward_its_ejection() {
        assert!(Failure::Status(()).blames_stamp());
        assert!(!Failure::ServerError(()).blames_stamp());
        assert!(refused().blames_stamp());
        assert!(!Failure::<()>::Error(ProxyError::BodyTooLarge { limit: 1 }).blames_stamp());
    }
}
