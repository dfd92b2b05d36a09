//! One client connection's state on the request path: its activity for
//! the idle and header timers ([`ConnActivity`]), the try timer the
//! HTTP/1.1 fast path keeps across requests ([`TryTimer`]), and what a
//! request knows of its connection ([`ConnInfo`]). Used by both server
//! paths (`server` for hyper, `h1_server` for the fast path).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::Context;

use http::header::HeaderValue;
use tokio::time::Instant;

use crate::counters::Label;
use crate::metrics::{Listener, Protocol, ProxyStats};

/// A protocol as stored in [`ConnActivity`]'s atomic.
fn index(p: Protocol) -> u8 {
    u8::try_from(p.index()).expect("three protocols")
}

/// Activity of one client connection, for its two timers: a connection is
/// idle when no request is in flight (including streaming bodies) and none
/// ended for `idle_timeout`; a request head is late when the client started
/// sending one (or connected) and the request has not begun within
/// `header_read_timeout` (slowloris). hyper's own header timeout also runs
/// between keep-alive requests, which would cap the idle time at the header
/// timeout, so both live here.
#[derive(Debug)]
pub struct ConnActivity {
    pub(super) in_flight: AtomicU32,
    last_active_ms: AtomicU64,
    /// Milliseconds since `born`, plus one, at which a request head started
    /// arriving with nothing in flight; 0: no head pending.
    head_started_ms: AtomicU64,
    /// Milliseconds since `born`, plus one, at which an HTTP/2 header
    /// block was opened and not yet finished; 0: none open.
    block_started_ms: AtomicU64,
    /// Milliseconds since `born`, plus one, since which a write to the
    /// client has been waiting (it reads nothing); 0: not waiting.
    write_blocked_ms: AtomicU64,
    /// Response bodies of this connection that handed the client side a
    /// piece and wait to be asked for the next, and how many times one
    /// was asked (a wrapping count: only change matters).
    pub(super) parked: AtomicU32,
    pub(super) body_taken: AtomicU32,
    /// Written by the connection's timer only: `body_taken` when it last
    /// looked, and since when (milliseconds since `born`, plus one) it has
    /// not moved while a body was parked; 0: not judged.
    seen_body_taken: AtomicU32,
    body_still_ms: AtomicU64,
    /// An HTTP/2 connection: frames arrive between requests (pings,
    /// settings), so only the idle timer applies once it is known.
    pub(super) h2: AtomicBool,
    /// Set by the connection's timer when it finds the connection idle;
    /// see [`ConnActivity::take_resting`].
    resting: AtomicBool,
    born: Instant,
    /// The [`Protocol`] this connection is counted under (as its
    /// [`Label::index`]), and the counters (none in unit tests).
    pub(super) protocol: AtomicU8,
    gauge: Option<(Arc<ProxyStats>, Listener)>,
}

impl ConnActivity {
    /// A fresh connection, active now.
    pub fn new() -> ConnActivity {
        ConnActivity {
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(0),
            // A new connection owes its first request head at once.
            head_started_ms: AtomicU64::new(1),
            block_started_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
            parked: AtomicU32::new(0),
            body_taken: AtomicU32::new(0),
            seen_body_taken: AtomicU32::new(0),
            body_still_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            resting: AtomicBool::new(false),
            born: Instant::now(),
            protocol: AtomicU8::new(index(Protocol::Pending)),
            gauge: None,
        }
    }

    /// A fresh connection on `listener`, counted as open in `stats` until
    /// dropped.
    pub fn counted(stats: Arc<ProxyStats>, listener: Listener) -> ConnActivity {
        stats.accepted[listener].fetch_add(1, Ordering::Relaxed);
        stats.connections[listener][Protocol::Pending].fetch_add(1, Ordering::Relaxed);
        let mut activity = ConnActivity::new();
        activity.gauge = Some((stats, listener));
        activity
    }

    /// No request has told the protocol yet.
    pub(super) fn is_pending(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == index(Protocol::Pending)
    }

    /// The first request tells the protocol: move the connection from
    /// `pending` to it.
    pub(super) fn classify(&self, version: http::Version) {
        let protocol = if version == http::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let (pending, new) = (index(Protocol::Pending), index(protocol));
        if self
            .protocol
            .compare_exchange(pending, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && let Some((stats, listener)) = &self.gauge
        {
            stats.connections[*listener][Protocol::Pending].fetch_sub(1, Ordering::Relaxed);
            stats.connections[*listener][protocol].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Milliseconds since `born` at `now`.
    fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_millis() as u64
    }

    /// The client sent bytes: with nothing in flight on an HTTP/1
    /// connection, that starts the next request head.
    pub fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// When a pending request head becomes late, if one is pending.
    pub fn head_deadline(&self, limit: std::time::Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.head_started_ms.load(Ordering::Relaxed) {
            0 => None,
            started => Some(self.born + std::time::Duration::from_millis(started - 1) + limit),
        }
    }

    /// An HTTP/2 header block was opened (`true`) or finished (`false`).
    pub(super) fn header_block(&self, open: bool) {
        let at = if open { self.now_ms() + 1 } else { 0 };
        self.block_started_ms.store(at, Ordering::Relaxed);
    }

    /// When an open HTTP/2 header block becomes late, if one is open: it
    /// stops the whole connection, so requests in flight do not excuse it.
    pub fn header_block_deadline(&self, limit: std::time::Duration) -> Option<Instant> {
        match self.block_started_ms.load(Ordering::Relaxed) {
            0 => None,
            started => Some(self.born + std::time::Duration::from_millis(started - 1) + limit),
        }
    }

    /// A write to the client returned: `blocked` when it could not take a
    /// byte. The clock is read only when a wait starts.
    pub(super) fn write_polled(&self, blocked: bool) {
        let since = self.write_blocked_ms.load(Ordering::Relaxed);
        if blocked && since == 0 {
            self.write_blocked_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        } else if !blocked && since != 0 {
            self.write_blocked_ms.store(0, Ordering::Relaxed);
        }
    }

    /// When a client that stopped reading is cut, if a write waits on it.
    pub fn write_deadline(&self, limit: std::time::Duration) -> Option<Instant> {
        match self.write_blocked_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.born + std::time::Duration::from_millis(since - 1) + limit),
        }
    }

    /// When a client that takes no response data is cut: a response body
    /// waits for the client side to ask for more, and none of this
    /// connection's bodies was asked since the timer started watching.
    /// The socket may still take bytes (an HTTP/2 peer can keep reading
    /// PINGs and SETTINGS while granting no flow-control window, which
    /// parks every stream at the proxy), so
    /// [`ConnActivity::write_deadline`] does not see it. A body waiting on
    /// its stamp is not parked: the stamp's silence is `read_timeout`'s to
    /// judge. Called by the connection's timer only.
    pub fn body_stall_deadline(&self, limit: std::time::Duration) -> Option<Instant> {
        if self.parked.load(Ordering::Relaxed) == 0 {
            self.body_still_ms.store(0, Ordering::Relaxed);
            return None;
        }
        let taken = self.body_taken.load(Ordering::Relaxed);
        let moved = self.seen_body_taken.swap(taken, Ordering::Relaxed) != taken;
        let since = match self.body_still_ms.load(Ordering::Relaxed) {
            0 => None,
            _ if moved => None,
            since => Some(since),
        };
        let since = since.unwrap_or_else(|| {
            let now = self.now_ms() + 1;
            self.body_still_ms.store(now, Ordering::Relaxed);
            now
        });
        Some(self.born + std::time::Duration::from_millis(since - 1) + limit)
    }

    /// Mark the connection busy until the returned guard is dropped: the
    /// HTTP/1.1 fast path holds it from a complete request head until the
    /// response is written, so neither timer cuts the exchange.
    pub fn busy(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    /// A complete request head arrived: its header timer stops.
    pub(crate) fn head_arrived(&self) {
        if self.head_started_ms.load(Ordering::Relaxed) != 0 {
            self.head_started_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Called by the connection's timer when nothing is in flight and no
    /// request head is pending.
    pub fn mark_resting(&self) {
        self.resting.store(true, Ordering::Relaxed);
    }

    /// Whether the connection's timer found it idle since the last call:
    /// memory kept warm for the next request (the fast path's exchange
    /// allocation) may be released.
    pub fn take_resting(&self) -> bool {
        self.resting.load(Ordering::Relaxed) && self.resting.swap(false, Ordering::Relaxed)
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(super) fn touch_at(&self, now: Instant) {
        self.last_active_ms
            .store(self.ms_at(now), Ordering::Relaxed);
    }

    /// When the connection becomes idle if nothing happens, or `None` while
    /// a request is in flight.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.last_active_ms.load(Ordering::Relaxed);
        Some(self.born + std::time::Duration::from_millis(last) + idle)
    }
}

/// See [`ConnActivity::busy`].
#[derive(Debug)]
pub struct Busy<'a>(&'a ConnActivity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ConnActivity {
    fn drop(&mut self) {
        if let Some((stats, listener)) = &self.gauge {
            let protocol = Protocol::ALL[usize::from(self.protocol.load(Ordering::Relaxed))];
            stats.connections[*listener][protocol].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity::new()
    }
}

/// The client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address.
    pub remote: SocketAddr,
    /// The client's IP as an `X-Forwarded-For` element, made at accept.
    pub client_ip: HeaderValue,
    /// TLS listener?
    pub tls: bool,
    /// Shared with the connection task for the idle timeout.
    pub activity: Arc<ConnActivity>,
}

/// The try timer of a client connection that serves one request at a
/// time (the HTTP/1.1 fast path), kept across its requests. A registered
/// tokio timer moved to a later deadline costs one atomic operation; a new
/// timer per try was inserted into the runtime's timer wheel and removed
/// again, each under the wheel's lock (the profile's figures are in
/// `bench/PERF.md`, "Figures behind code comments"). The mutex is the
/// connection's own, never contended.
#[derive(Debug, Default)]
pub struct TryTimer(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

impl TryTimer {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<tokio::time::Sleep>>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start timing a try that must end by `deadline`.
    pub(super) fn arm(&self, deadline: Instant) {
        let mut slot = self.slot();
        match slot.as_mut() {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => *slot = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the armed deadline passed; registers `cx` to be woken then.
    pub(super) fn poll_expired(&self, cx: &mut Context<'_>) -> bool {
        self.slot()
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    /// Let go of the timer: the connection is idle.
    pub fn release(&self) {
        *self.slot() = None;
    }
}
