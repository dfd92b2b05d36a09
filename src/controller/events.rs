//! The event log: health transitions, alarms and (later) operator actions,
//! kept in a bounded ring for `/admin/events` and broadcast to followers.
//! Written by the controller (and by the DNS server for its fail-open
//! alarms); read by the admin API. Never touched by the request path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events kept for `/admin/events`: about an hour of a busy incident at a
/// few transitions a minute, a few hundred KiB at most.
pub const EVENT_RING_CAPACITY: usize = 1024;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A stamp's health state changed.
    Health,
    /// Something needs attention: a pool failing open, DNS failing.
    Alarm,
    /// An operator changed something.
    Operator,
    /// Configuration loaded or reloaded.
    Config,
    /// A stamp host name resolved to new addresses.
    Dns,
}

/// One entry of the event log. Deserialize is for clients of
/// `/admin/events` (the drill).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Increasing sequence number (followers resume from it).
    pub seq: u64,
    /// Wall-clock time, RFC 3339.
    pub time: String,
    /// Milliseconds since the UNIX epoch (for charts).
    pub unix_ms: u64,
    /// Kind.
    pub kind: EventKind,
    /// The pool concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The stamp concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// Previous state, for transitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// New state, for transitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Human-readable reason.
    pub reason: String,
}

/// The shared event log. The `Mutex` is held only to push (controller) or
/// copy out (admin readers), never across an await.
#[derive(Debug, Clone)]
pub struct EventLog {
    ring: Arc<Mutex<Ring>>,
    tx: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

/// The fields of a new event; `seq` and time are filled in by the log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Kind.
    pub kind: EventKind,
    /// Pool.
    pub pool: Option<String>,
    /// Stamp.
    pub stamp: Option<String>,
    /// Previous state.
    pub from: Option<String>,
    /// New state.
    pub to: Option<String>,
    /// Reason.
    pub reason: String,
}

impl NewEvent {
    /// An event about the proxy as a whole (config, DNS): no pool, stamp
    /// or state change.
    pub fn proxy_wide(kind: EventKind, reason: String) -> NewEvent {
        NewEvent {
            kind,
            pool: None,
            stamp: None,
            from: None,
            to: None,
            reason,
        }
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        let (tx, _) = broadcast::channel(256);
        EventLog {
            ring: Arc::new(Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(64),
            })),
            tx,
        }
    }

    /// Append an event (the oldest goes when the ring is full).
    pub fn push(&self, new: NewEvent) -> Event {
        let now = SystemTime::now();
        let unix_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let event = {
            let mut ring = self.ring.lock().expect("event log lock poisoned");
            let event = Event {
                seq: ring.next_seq,
                time: humantime::format_rfc3339_millis(now).to_string(),
                unix_ms,
                kind: new.kind,
                pool: new.pool,
                stamp: new.stamp,
                from: new.from,
                to: new.to,
                reason: new.reason,
            };
            ring.next_seq += 1;
            if ring.events.len() == EVENT_RING_CAPACITY {
                ring.events.pop_front();
            }
            ring.events.push_back(event.clone());
            event
        };
        // No follower is fine.
        let _ = self.tx.send(event.clone());
        event
    }

    /// Events with `seq > after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        let ring = self.ring.lock().expect("event log lock poisoned");
        ring.events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    /// Follow new events as they are pushed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(stamp: &str) -> NewEvent {
        NewEvent {
            kind: EventKind::Health,
            pool: Some("p".into()),
            stamp: Some(stamp.into()),
            from: Some("healthy".into()),
            to: Some("unhealthy".into()),
            reason: "probe failed".into(),
        }
    }

    #[test]
    fn ring_is_bounded_and_ordered() {
        let log = EventLog::new();
        for i in 0..EVENT_RING_CAPACITY + 10 {
            log.push(health(&format!("s{i}")));
        }
        let all = log.since(0);
        assert_eq!(all.len(), EVENT_RING_CAPACITY);
        assert_eq!(all[0].seq, 11, "the oldest ten were dropped");
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(log.since(all.last().unwrap().seq).len(), 0);
    }

    #[tokio::test]
    async fn followers_see_new_events() {
        let log = EventLog::new();
        let mut rx = log.subscribe();
        log.push(health("a"));
        assert_eq!(rx.recv().await.unwrap().stamp.as_deref(), Some("a"));
    }
}
