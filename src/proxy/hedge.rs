//! The request path's hedge race, apart from sockets: the first try runs
//! alone until the hedge is due, then (if a second try is granted) both
//! run and the first usable result stands. The handler supplies the tries
//! as futures; dropping the race's loser cancels it. Tested under tokio's
//! paused clock.

use std::future::Future;
use std::pin::pin;

use tokio::time::Instant;

/// Which result stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Raced<T, P> {
    /// No hedge went: the first try ended before it was due, or none was
    /// granted.
    Alone(T),
    /// A hedge went, and the first try's result stands.
    First(T),
    /// A hedge went (`P`, what [`race`]'s `start_hedge` made of it), and
    /// its result stands.
    Second(P, T),
}

/// Run `first` alone until `hedge_at`; then, if `start_hedge` grants a
/// second try, both at once. A result that is `usable` ends the race at
/// once and the other try is dropped; one that is not is handed to `lost`
/// (`None`: the first try's; `Some`: the hedge's) while the other still
/// runs, and when both fail the last to fail stands.
pub async fn race<T, P, F1, F2>(
    first: F1,
    hedge_at: Instant,
    start_hedge: impl FnOnce() -> Option<(P, F2)>,
    usable: impl Fn(&T) -> bool,
    mut lost: impl FnMut(Option<&P>, &T),
) -> Raced<T, P>
where
    F1: Future<Output = T>,
    F2: Future<Output = T>,
{
    let mut first = pin!(first);
    tokio::select! {
        biased;
        out = &mut first => return Raced::Alone(out),
        () = tokio::time::sleep_until(hedge_at) => {}
    }
    let Some((hedge, second)) = start_hedge() else {
        return Raced::Alone(first.await);
    };
    let mut second = pin!(second);
    let (mut first_done, mut second_done) = (false, false);
    loop {
        tokio::select! {
            out = &mut first, if !first_done => {
                first_done = true;
                if second_done || usable(&out) {
                    return Raced::First(out);
                }
                lost(None, &out);
            }
            out = &mut second, if !second_done => {
                second_done = true;
                if first_done || usable(&out) {
                    return Raced::Second(hedge, out);
                }
                lost(Some(&hedge), &out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    const HEDGE_AFTER: Duration = Duration::from_millis(100);

    /// A try: ends after `after` with `ok`, and says when it was dropped
    /// unfinished (cancelled).
    async fn try_(after: Duration, ok: bool, cancelled: &Cell<bool>) -> (bool, Instant) {
        struct Cancel<'a>(&'a Cell<bool>, bool);
        impl Drop for Cancel<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.set(true);
                }
            }
        }
        let mut guard = Cancel(cancelled, false);
        tokio::time::sleep(after).await;
        guard.1 = true;
        (ok, Instant::now())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_delay_sends_no_hedge() {
        let start = Instant::now();
        let cancelled = Cell::new(false);
        let raced = race(
            try_(ms(99), true, &cancelled),
            start + HEDGE_AFTER,
            || -> Option<((), std::future::Pending<_>)> { panic!("no hedge before it is due") },
            |r| r.0,
            |_, _| panic!("nothing lost"),
        )
        .await;
        assert_eq!(raced, Raced::Alone((true, start + ms(99))));
    }

    #[tokio::test(start_paused = true)]
    async fn the_hedge_goes_exactly_at_the_delay_and_its_answer_cancels_the_first() {
        let start = Instant::now();
        let (first_cancelled, second_cancelled) = (Cell::new(false), Cell::new(false));
        let sent_at = Cell::new(None);
        let raced = race(
            try_(ms(5_000), true, &first_cancelled),
            start + HEDGE_AFTER,
            || {
                sent_at.set(Some(Instant::now()));
                Some(("b", try_(ms(10), true, &second_cancelled)))
            },
            |r| r.0,
            |_, _| panic!("nothing lost"),
        )
        .await;
        assert_eq!(sent_at.get(), Some(start + HEDGE_AFTER));
        assert_eq!(raced, Raced::Second("b", (true, start + ms(110))));
        assert!(first_cancelled.get(), "the slow first try was dropped");
        assert!(!second_cancelled.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_hedge_leaves_the_first_try_to_finish() {
        let start = Instant::now();
        let cancelled = Cell::new(false);
        let raced = race(
            try_(ms(700), true, &cancelled),
            start + HEDGE_AFTER,
            || -> Option<((), std::future::Pending<_>)> { None },
            |r| r.0,
            |_, _| panic!("nothing lost"),
        )
        .await;
        assert_eq!(raced, Raced::Alone((true, start + ms(700))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_while_the_twin_runs_is_lost_and_the_twin_answers() {
        let start = Instant::now();
        let never = Cell::new(false);
        // The first try fails after the hedge went: the hedge answers.
        let lost = Cell::new(0);
        let raced = race(
            try_(ms(150), false, &never),
            start + HEDGE_AFTER,
            || Some(("b", try_(ms(200), true, &never))),
            |r| r.0,
            |which, r| {
                assert_eq!((which, r.0), (None, false));
                lost.set(lost.get() + 1);
            },
        )
        .await;
        assert_eq!(raced, Raced::Second("b", (true, start + ms(300))));
        assert_eq!(lost.get(), 1);

        // The hedge fails first: the first try's answer stands.
        let start = Instant::now();
        let raced = race(
            try_(ms(400), true, &never),
            start + HEDGE_AFTER,
            || Some(("b", try_(ms(50), false, &never))),
            |r| r.0,
            |which, r| assert_eq!((which, r.0), (Some(&"b"), false)),
        )
        .await;
        assert_eq!(raced, Raced::First((true, start + ms(400))));
    }

    #[tokio::test(start_paused = true)]
    async fn when_both_fail_the_last_to_fail_stands() {
        let start = Instant::now();
        let never = Cell::new(false);
        let raced = race(
            try_(ms(120), false, &never),
            start + HEDGE_AFTER,
            || Some(("b", try_(ms(80), false, &never))),
            |r| r.0,
            |_, _| {},
        )
        .await;
        assert_eq!(raced, Raced::Second("b", (false, start + ms(180))));
        assert!(!never.get(), "both ran to their end");
    }
}
