//! One-shot signals read on every request: a stamp's drain cut (checked by
//! each try and each response body) and the proxy's shutdown (checked by
//! each client connection between requests).
//!
//! tokio-util's `CancellationToken` takes a mutex for every check, clone
//! and drop, and its waiter list takes one for every poll and drop of a
//! waiting future: five lock round-trips per request on the shutdown token
//! alone, shared by every worker thread. A [`Tripwire`] is a flag read with
//! one atomic load, plus a `Notify` that only futures which really wait
//! register with; [`Tripped`] registers once and afterwards re-polls only
//! when the flag is set or its task's waker changed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::{Notified, OwnedNotified};

/// A one-shot signal: once tripped, it stays tripped.
#[derive(Debug, Default)]
pub struct Tripwire {
    tripped: AtomicBool,
    notify: Arc<Notify>,
}

impl Tripwire {
    /// A new, untripped wire.
    pub fn new() -> Tripwire {
        Tripwire::default()
    }

    /// Trip the wire: every future waiting on it completes.
    pub fn trip(&self) {
        // The flag first: a future created before this call either sees it
        // or is woken by `notify_waiters` (which reaches every `Notified`
        // created before it, polled or not).
        self.tripped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the wire was tripped.
    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Completes when the wire is tripped (at once if it was).
    pub fn tripped(&self) -> Tripped<'_> {
        Tripped {
            wire: self,
            notified: self.notify.notified(),
            waker: None,
        }
    }

    /// [`Tripwire::tripped`] for a future that outlives the borrow.
    pub fn tripped_owned(self: Arc<Self>) -> TrippedOwned {
        TrippedOwned {
            notified: self.notify.clone().notified_owned(),
            wire: self,
            waker: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Tripwire::tripped`].
    #[derive(Debug)]
    pub struct Tripped<'a> {
        wire: &'a Tripwire,
        #[pin]
        notified: Notified<'a>,
        waker: Option<Waker>,
    }
}

pin_project_lite::pin_project! {
    /// See [`Tripwire::tripped_owned`].
    #[derive(Debug)]
    pub struct TrippedOwned {
        wire: Arc<Tripwire>,
        #[pin]
        notified: OwnedNotified,
        waker: Option<Waker>,
    }
}

/// The shared poll: ready when the flag is set; otherwise register with
/// the `Notify` (a lock) only the first time and when the task's waker
/// changed, since a registered waiter is woken by `trip` anyway.
fn poll_tripped<N: Future<Output = ()>>(
    wire: &Tripwire,
    notified: Pin<&mut N>,
    registered: &mut Option<Waker>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if wire.is_tripped() {
        return Poll::Ready(());
    }
    if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        return Poll::Pending;
    }
    if notified.poll(cx).is_ready() {
        return Poll::Ready(());
    }
    *registered = Some(cx.waker().clone());
    Poll::Pending
}

impl Future for Tripped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        poll_tripped(this.wire, this.notified, this.waker, cx)
    }
}

impl TrippedOwned {
    /// Whether the wire was tripped (no registration).
    pub fn is_tripped(&self) -> bool {
        self.wire.is_tripped()
    }
}

impl Future for TrippedOwned {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        poll_tripped(this.wire, this.notified, this.waker, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_completes_when_tripped_and_not_before() {
        let wire = Arc::new(Tripwire::new());
        let waiting = tokio::spawn(wire.clone().tripped_owned());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        assert!(!wire.is_tripped());
        wire.trip();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the trip")
            .unwrap();
        assert!(wire.is_tripped());
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_created_before_the_trip_and_polled_after_completes() {
        let wire = Tripwire::new();
        let late = wire.tripped();
        wire.trip();
        tokio::time::timeout(Duration::from_secs(1), late)
            .await
            .expect("ready at once");
        tokio::time::timeout(Duration::from_secs(1), wire.tripped())
            .await
            .expect("a tripped wire stays tripped");
    }

    /// Polled many times while waiting (as a connection's select polls all
    /// its branches on every wake), the future still wakes its task.
    #[tokio::test(start_paused = true)]
    async fn a_future_polled_repeatedly_is_still_woken() {
        let wire = Arc::new(Tripwire::new());
        let (poke, mut poked) = tokio::sync::mpsc::unbounded_channel::<()>();
        let task = tokio::spawn({
            let wire = wire.clone();
            async move {
                let mut tripped = std::pin::pin!(wire.tripped());
                let mut polls = 0;
                loop {
                    tokio::select! {
                        () = &mut tripped => return polls,
                        Some(()) = poked.recv() => polls += 1,
                    }
                }
            }
        });
        for _ in 0..3 {
            poke.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wire.trip();
        let polls = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("woken by the trip")
            .unwrap();
        assert_eq!(polls, 3);
    }
}
