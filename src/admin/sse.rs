//! `GET /admin/events?follow=1`: the event log as server-sent events. The
//! stream sends the recent events, then every new one as the controller
//! pushes it, with a comment line now and then so that proxies in between
//! keep the connection open and a vanished client is noticed.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::controller::events::{Event, EventLog};

/// A response body of the admin API (the API names it `api::Body`): a
/// stream of frames that cannot fail.
pub type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A comment line this often: below the 30-60 s idle timeouts of common
/// load balancers, and the write is how a client that went away without a
/// FIN is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Without `?since=`, a follower first gets this many of the latest events:
/// enough context for a terminal, not the whole ring.
pub const BACKLOG: usize = 50;

const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";

/// The event stream body. It ends on `shutdown`; when the client goes
/// away hyper drops the body, and with it the subscription.
pub fn follow(log: EventLog, since: Option<u64>, shutdown: CancellationToken) -> Body {
    // Subscribe before reading the ring: an event pushed in between is then
    // in both, and the sequence number filters the copy out.
    let live = log.subscribe();
    let backlog: VecDeque<Event> = match since {
        Some(after) => log.since(after).into(),
        None => {
            let mut all = log.since(0);
            let skip = all.len().saturating_sub(BACKLOG);
            all.drain(..skip);
            all.into()
        }
    };
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let follower = Follower {
        log,
        live,
        pending: backlog,
        last: since.unwrap_or(0),
        keep_alive,
        shutdown,
    };
    let frames = futures_util::stream::unfold(follower, |mut f| async move {
        let bytes = f.next_frame().await?;
        Some((Ok(Frame::data(bytes)), f))
    });
    StreamBody::new(frames).boxed_unsync()
}

struct Follower {
    log: EventLog,
    live: Receiver<Event>,
    /// Events to send, oldest first.
    pending: VecDeque<Event>,
    /// Sequence number of the last event sent.
    last: u64,
    keep_alive: Interval,
    shutdown: CancellationToken,
}

impl Follower {
    /// The next chunk to write, or `None` when the stream is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if event.seq <= self.last {
                    continue;
                }
                self.last = event.seq;
                return Some(data_frame(&event));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                _ = self.keep_alive.tick() => return Some(Bytes::from_static(KEEP_ALIVE_FRAME)),
                received = self.live.recv() => match received {
                    Ok(event) => self.pending.push_back(event),
                    // Too slow a reader: the ring still has what the
                    // broadcast dropped (unless it overflowed too).
                    Err(RecvError::Lagged(_)) => self.pending.extend(self.log.since(self.last)),
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// `data: <json>\n\n`. The JSON of an event has no newline, so one `data:`
/// line carries it whole.
pub fn data_frame(event: &Event) -> Bytes {
    let json = serde_json::to_string(event).expect("events serialize to JSON");
    Bytes::from(format!("data: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::events::{EventKind, NewEvent};

    fn push(log: &EventLog, reason: &str) -> Event {
        log.push(NewEvent {
            kind: EventKind::Operator,
            pool: None,
            stamp: Some("a".into()),
            from: None,
            to: None,
            reason: reason.into(),
        })
    }

    async fn next_chunk(body: &mut Body) -> String {
        let frame = body.frame().await.expect("a frame").expect("no error");
        String::from_utf8(frame.into_data().expect("data").to_vec()).unwrap()
    }

    #[tokio::test]
    async fn backlog_then_live_events_without_duplicates() {
        let log = EventLog::new();
        push(&log, "one");
        push(&log, "two");
        let mut body = follow(log.clone(), Some(1), CancellationToken::new());
        push(&log, "three");
        let two = next_chunk(&mut body).await;
        assert!(
            two.starts_with("data: {") && two.ends_with("}\n\n"),
            "{two}"
        );
        assert!(two.contains("\"two\""), "{two}");
        assert!(next_chunk(&mut body).await.contains("\"three\""));
    }

    #[tokio::test]
    async fn without_since_only_the_latest_are_replayed() {
        let log = EventLog::new();
        for i in 0..BACKLOG + 5 {
            push(&log, &format!("e{i}"));
        }
        let mut body = follow(log.clone(), None, CancellationToken::new());
        assert!(next_chunk(&mut body).await.contains("\"e5\""));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_comments_and_shutdown_end() {
        let log = EventLog::new();
        let stop = CancellationToken::new();
        let mut body = follow(log, None, stop.clone());
        assert_eq!(next_chunk(&mut body).await, ": keep-alive\n\n");
        stop.cancel();
        assert!(body.frame().await.is_none(), "the stream ends on shutdown");
    }
}
