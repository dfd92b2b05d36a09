//! One request's in-flight accounting, from its head to the end of its
//! response body: the connection's idle timer, the stamp's in-flight gauge
//! (drains wait on it), the route's duration and the access log line.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::access_log::{AccessLog, Entry};
use super::conn::ConnActivity;
use crate::routing::{RouteStats, StampStats};

/// Held while a request is in flight, until its response body is done or
/// dropped; counts for the connection's idle timer and the stamp's
/// in-flight gauge (drains wait on it), and at its end records the
/// exchange's duration and hands the access log its line.
#[derive(Debug)]
pub struct InFlight {
    pub(super) conn: Arc<ConnActivity>,
    pub(super) stamp: Option<Arc<StampStats>>,
    pub(super) start: Instant,
    /// The matched route's counters (duration at the end).
    pub(super) route: Option<Arc<RouteStats>>,
    /// Index of the matched route in the table's routes.
    pub(super) route_index: Option<usize>,
    /// Index in the pool of the stamp of the last try.
    pub(super) tried: Option<usize>,
    /// Tries made.
    pub(super) attempts: u32,
    /// The last try's time to response head.
    pub(super) upstream: Option<std::time::Duration>,
    /// Response body bytes sent so far.
    pub(super) bytes: u64,
    /// The body ended cleanly.
    pub(super) complete: bool,
    /// A piece of its response body was handed over and the client side
    /// has not asked for the next yet (counted in the connection's
    /// `parked`).
    parked: bool,
    /// The access log line, when this request is logged.
    pub(super) log: Option<(Box<Entry>, AccessLog)>,
}

impl InFlight {
    pub(super) fn begin(conn: &Arc<ConnActivity>, version: http::Version) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.head_arrived();
        if conn.is_pending() {
            conn.classify(version);
        }
        if version == http::Version::HTTP_2 && !conn.h2.load(Ordering::Relaxed) {
            conn.h2.store(true, Ordering::Relaxed);
        }
        InFlight {
            conn: conn.clone(),
            stamp: None,
            start: Instant::now(),
            route: None,
            route_index: None,
            tried: None,
            attempts: 0,
            upstream: None,
            bytes: 0,
            complete: false,
            parked: false,
            log: None,
        }
    }

    pub(super) fn at_stamp(&mut self, index: usize, stats: &Arc<StampStats>) {
        if let Some(prev) = self.stamp.replace(stats.clone()) {
            prev.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.tried = Some(index);
        self.attempts += 1;
    }

    /// Response body bytes passed to the client.
    pub fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// The response body reached its end.
    pub fn completed(&mut self) {
        self.complete = true;
    }

    /// The client side asks for the next piece of the response body: it
    /// took the last one.
    pub(super) fn body_asked(&mut self) {
        if self.parked {
            self.parked = false;
            self.conn.parked.fetch_sub(1, Ordering::Relaxed);
            self.conn.body_taken.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A piece of the response body was handed to the client side, more
    /// follows: until asked again, the client is the one to wait on (see
    /// [`ConnActivity::body_stall_deadline`]).
    pub(super) fn body_gave(&mut self) {
        if !self.parked {
            self.parked = true;
            self.conn.parked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(stamp) = &self.stamp {
            stamp.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        // One clock read for both (about a tenth of the request path's
        // clock reads).
        let now = Instant::now();
        self.conn.touch_at(now);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.parked {
            self.conn.parked.fetch_sub(1, Ordering::Relaxed);
        }
        let total = now.saturating_duration_since(self.start);
        if let Some(route) = &self.route {
            route.observe(total);
        }
        if let Some((mut entry, sink)) = self.log.take() {
            entry.total = total;
            entry.bytes = self.bytes;
            entry.aborted = !self.complete;
            sink.send(entry);
        }
    }
}
