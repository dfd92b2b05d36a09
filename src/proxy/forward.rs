//! The request handler: one routing-table load, route match, stamp pick,
//! header rewrite, forward on a pooled connection, classify the outcome into
//! the stamp's counters, stream the response back. Errors become responses
//! in [`error_response`] and nowhere else.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::access_log::{AccessLog, Entry};
use super::body::{ClientBody, ResponseBody, StampBody, UpstreamBody};
use super::headers::{
    self, ClientSide, TRACEPARENT, X_REQUEST_ID, X_STAMPGATE_ERROR, X_STAMPGATE_STAMP,
};
use crate::controller::Signal;
use crate::error::{Blame, ProxyError};
use crate::metrics::ProxyStats;
use crate::routing::{
    Outcome, PoolView, RouteEntry, RouteStats, RoutingTable, StampStats, StampView, Tried,
    host_without_port,
};

/// Seconds a fail-closed pool asks clients to wait before trying again:
/// about one probe interval, after which a recovered stamp is back.
const RETRY_AFTER_SECS: &str = "5";

/// Everything the request path shares, read-only apart from atomics.
/// Locks: none. The routing table is swapped by the controller only.
#[derive(Debug)]
pub struct Gateway {
    /// The current routing table (with the limits a reload may change).
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// Passive health signals to the controller (`try_send` only).
    pub signals: mpsc::Sender<Signal>,
    /// Where finished requests are logged (`try_send` only).
    pub access_log: AccessLog,
    /// Proxy-wide counters.
    pub stats: Arc<ProxyStats>,
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
    in_flight: AtomicU32,
    last_active_ms: AtomicU64,
    /// Milliseconds since `born`, plus one, at which a request head started
    /// arriving with nothing in flight; 0: no head pending.
    head_started_ms: AtomicU64,
    /// An HTTP/2 connection: frames arrive between requests (pings,
    /// settings), so only the idle timer applies once it is known.
    h2: AtomicBool,
    /// Set by the connection's timer when it finds the connection idle;
    /// see [`ConnActivity::take_resting`].
    resting: AtomicBool,
    born: Instant,
    /// Index of [`crate::metrics::PROTOCOLS`] this connection is counted under, and the
    /// counters (none in unit tests).
    protocol: AtomicU8,
    gauge: Option<(Arc<ProxyStats>, usize)>,
}

impl ConnActivity {
    /// A fresh connection, active now.
    pub fn new() -> ConnActivity {
        ConnActivity {
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(0),
            // A new connection owes its first request head at once.
            head_started_ms: AtomicU64::new(1),
            h2: AtomicBool::new(false),
            resting: AtomicBool::new(false),
            born: Instant::now(),
            protocol: AtomicU8::new(0),
            gauge: None,
        }
    }

    /// A fresh connection on `listener` (index of [`crate::metrics::LISTENERS`]), counted
    /// as open in `stats` until dropped.
    pub fn counted(stats: Arc<ProxyStats>, listener: usize) -> ConnActivity {
        stats.accepted[listener].fetch_add(1, Ordering::Relaxed);
        stats.connections[listener][0].fetch_add(1, Ordering::Relaxed);
        let mut activity = ConnActivity::new();
        activity.gauge = Some((stats, listener));
        activity
    }

    /// The first request tells the protocol: move the connection from
    /// `pending` to it.
    fn classify(&self, version: http::Version) {
        let protocol = if version == http::Version::HTTP_2 {
            2
        } else {
            1
        };
        if self
            .protocol
            .compare_exchange(0, protocol, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && let Some((stats, listener)) = &self.gauge
        {
            stats.connections[*listener][0].fetch_sub(1, Ordering::Relaxed);
            stats.connections[*listener][usize::from(protocol)].fetch_add(1, Ordering::Relaxed);
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
    /// memory kept warm for the next request (the fast path's handler
    /// allocation) may be released.
    pub fn take_resting(&self) -> bool {
        self.resting.load(Ordering::Relaxed) && self.resting.swap(false, Ordering::Relaxed)
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn touch_at(&self, now: Instant) {
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
            let protocol = usize::from(self.protocol.load(Ordering::Relaxed));
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

/// Held while a request is in flight, until its response body is done or
/// dropped; counts for the connection's idle timer and the stamp's
/// in-flight gauge (drains wait on it), and at its end records the
/// exchange's duration and hands the access log its line.
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<ConnActivity>,
    stamp: Option<Arc<StampStats>>,
    start: Instant,
    /// The matched route's counters (duration at the end).
    route: Option<Arc<RouteStats>>,
    /// Index of the matched route in the table's routes.
    route_index: Option<usize>,
    /// Index in the pool of the stamp of the last try.
    tried: Option<usize>,
    /// Tries made.
    attempts: u32,
    /// The last try's time to response head.
    upstream: Option<std::time::Duration>,
    /// Response body bytes sent so far.
    bytes: u64,
    /// The body ended cleanly.
    complete: bool,
    /// The access log line, when this request is logged.
    log: Option<(Box<Entry>, AccessLog)>,
}

impl InFlight {
    fn begin(conn: &Arc<ConnActivity>, version: http::Version) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.head_arrived();
        if conn.protocol.load(Ordering::Relaxed) == 0 {
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
            log: None,
        }
    }

    fn at_stamp(&mut self, index: usize, stats: &Arc<StampStats>) {
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

/// The try timer of a client connection that serves one request at a
/// time (the HTTP/1.1 fast path), kept across its requests. A registered
/// tokio timer moved to a later deadline costs one atomic operation; a new
/// timer per try was inserted into the runtime's timer wheel and removed
/// again, each under the wheel's lock (about 800 instructions per request
/// in the profile, about 550 with this). The mutex is the connection's
/// own, never contended.
#[derive(Debug, Default)]
pub struct TryTimer(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

impl TryTimer {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<tokio::time::Sleep>>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start timing a try that must end by `deadline`.
    fn arm(&self, deadline: Instant) {
        let mut slot = self.slot();
        match slot.as_mut() {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => *slot = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the armed deadline passed; registers `cx` to be woken then.
    fn poll_expired(&self, cx: &mut Context<'_>) -> bool {
        self.slot()
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    /// Let go of the timer: the connection is idle.
    pub fn release(&self) {
        *self.slot() = None;
    }
}

/// What the access log needs of the request, taken before the request is
/// consumed: reference-counted clones, no copies.
struct RequestHead {
    time: std::time::SystemTime,
    method: http::Method,
    uri: Uri,
    version: http::Version,
    traceparent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl Gateway {
    /// Serve one client request. `timer`: the connection's [`TryTimer`],
    /// when it serves one request at a time.
    pub async fn handle(
        &self,
        req: Request<ClientBody>,
        conn: &ConnInfo,
        timer: Option<&TryTimer>,
    ) -> Response<ResponseBody> {
        let mut guard = InFlight::begin(&conn.activity, req.version());
        let table = self.routing.load_full();
        let client_id = req.headers().get(&X_REQUEST_ID).cloned();
        let head = table.access_log.map(|_| RequestHead {
            time: std::time::SystemTime::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            traceparent: req.headers().get(&TRACEPARENT).cloned(),
            referer: req.headers().get(http::header::REFERER).cloned(),
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
        });
        let (mut resp, request_id, error) = match self
            .forward(req, conn, timer, &table, &mut guard)
            .await
        {
            // Without request ids of our own, the log keeps the client's.
            Ok((resp, id)) => (resp, id.or(client_id), None),
            Err((err, id)) => {
                let id = id.or(client_id).unwrap_or_else(headers::new_request_id);
                match err.blame() {
                    Blame::Stamp | Blame::Proxy => tracing::debug!(error = %err, "request failed"),
                    Blame::Client => tracing::trace!(error = %err, "request refused"),
                }
                if matches!(err, ProxyError::NoRoute) {
                    self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
                }
                (error_response(&err, &id), Some(id), Some(err.code()))
            }
        };
        let status = resp.status().as_u16();
        // An error answer is the proxy's own, whichever stamp was tried.
        let served_by = guard.tried.filter(|_| error.is_none());
        if let Some(route) = &guard.route {
            route.count(served_by, status);
        }
        if let (Some(sample), Some(head)) = (table.access_log, head)
            && (status >= 500 || sample >= 1.0 || (sample > 0.0 && fastrand::f64() < sample))
        {
            guard.log = Some((
                Box::new(self.log_entry(&table, head, &guard, status, request_id, error, conn)),
                self.access_log.clone(),
            ));
        }
        if resp.body().is_end_stream() {
            guard.completed();
        }
        match resp.body_mut() {
            ResponseBody::Upstream { guard: g, .. } | ResponseBody::Local { guard: g, .. } => {
                *g = Some(guard);
            }
        }
        resp
    }

    #[allow(clippy::too_many_arguments)] // one call site, all of them facts of the request
    fn log_entry(
        &self,
        table: &RoutingTable,
        head: RequestHead,
        guard: &InFlight,
        status: u16,
        request_id: Option<HeaderValue>,
        error: Option<&'static str>,
        conn: &ConnInfo,
    ) -> Entry {
        let route = guard.route_index.and_then(|i| table.routes().get(i));
        let stamp = route
            .zip(guard.tried)
            .and_then(|(r, i)| table.pools[r.pool].stamps.get(i));
        Entry {
            time: head.time,
            client: conn.remote,
            method: head.method,
            uri: head.uri,
            version: head.version,
            status,
            route: route.map(|r| r.name.clone()),
            stamp: stamp.map(|s| s.name.clone()),
            region: stamp.map(|s| s.region.clone()),
            attempts: guard.attempts,
            total: Default::default(),
            upstream: guard.upstream,
            bytes: 0,
            request_id,
            traceparent: head.traceparent,
            referer: head.referer,
            user_agent: head.user_agent,
            error,
            aborted: false,
        }
    }

    /// Route, pick, forward and retry; the response still lacks its
    /// guard, which [`Gateway::handle`] attaches.
    async fn forward(
        &self,
        req: Request<ClientBody>,
        conn: &ConnInfo,
        timer: Option<&TryTimer>,
        table: &RoutingTable,
        guard: &mut InFlight,
    ) -> Result<(Response<ResponseBody>, Option<HeaderValue>), (ProxyError, Option<HeaderValue>)>
    {
        let (mut parts, body) = req.into_parts();

        let host = client_host(&parts);
        let host_name = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(host_without_port);
        let route_index = table
            .route_index(host_name, parts.uri.path())
            .ok_or((ProxyError::NoRoute, None))?;
        let route = &table.routes()[route_index];
        guard.route = Some(route.stats.clone());
        guard.route_index = Some(route_index);
        let pool = &table.pools[route.pool];

        let length = content_length(&parts.headers);
        if length.is_some_and(|len| len > table.max_request_body) {
            let limit = table.max_request_body;
            return Err((ProxyError::BodyTooLarge { limit }, None));
        }

        let client = ClientSide {
            ip: &conn.client_ip,
            tls: conn.tls,
            version: parts.version,
            host: host.as_ref(),
        };
        let request_id = headers::prepare_request(
            &mut parts.headers,
            &client,
            pool.host_header.as_ref(),
            table.header_rules,
        );
        let fail = |e: ProxyError| (e, request_id.clone());

        // The route's timeout runs from the request's arrival.
        let start = guard.start;
        let deadline = start + route.timeout;
        route.budget.deposit(start);
        let mut body = RequestBody::new(body, &parts, length, route, table.max_request_body)
            .await
            .map_err(fail)?;
        let attempts = if body.replayable() {
            route.retry.attempts.max(1)
        } else {
            1
        };

        let mut tried = Tried::default();
        let mut next = pool.selector.pick(&pool.stamps, &tried);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(idx) = next.take() else {
                return Err(fail(ProxyError::NoHealthyStamp {
                    pool: pool.name.to_string(),
                }));
            };
            let stamp = &pool.stamps[idx];
            tried.push(idx, stamp.region_id);
            // Also the last try when every stamp has had one: the selector
            // never picks a tried stamp, so the headers need no copy.
            let last_try = attempt >= attempts || tried.len() >= pool.stamps.len();
            // Filled in place: `Request::builder` would move the parts
            // through a `Result` at each step.
            let mut upstream_req = Request::new(body.for_try());
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() =
                upstream_uri(pool.upstream.scheme(), &stamp.authority, &parts.uri);
            *upstream_req.version_mut() = pool.upstream.version();
            *upstream_req.headers_mut() = if last_try {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };

            let try_start = Instant::now();
            let remaining = deadline.saturating_duration_since(try_start);
            let try_timeout = if attempts > 1 {
                route.retry.per_try_timeout.min(remaining)
            } else {
                remaining
            };
            guard.at_stamp(idx, &stamp.stats);
            let cut = stamp.stats.cut.load_full();
            // The try races its timeout and the stamp's drain cut. Pinned in
            // place rather than through `timeout` and `select!`, each of
            // which would copy the send future (about 1.6 KiB) again.
            let sent = {
                let mut send = pin!(pool.upstream.send(&stamp.name, upstream_req));
                let mut own_timer = pin!(None::<tokio::time::Sleep>);
                match timer {
                    Some(timer) => timer.arm(try_start + try_timeout),
                    None => own_timer.set(Some(tokio::time::sleep_until(try_start + try_timeout))),
                }
                let mut cut_off = pin!(cut.tripped());
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = send.as_mut().poll(cx) {
                        Poll::Ready(Ok(r))
                    } else if cut_off.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Ok(Err(ProxyError::DrainDeadline {
                            stamp: stamp.name.to_string(),
                        })))
                    } else if match timer {
                        Some(timer) => timer.poll_expired(cx),
                        None => own_timer
                            .as_mut()
                            .as_pin_mut()
                            .is_some_and(|t| t.poll(cx).is_ready()),
                    } {
                        Poll::Ready(Err(TimedOut))
                    } else {
                        Poll::Pending
                    }
                })
                .await
            };
            let elapsed = try_start.elapsed();
            observe(&stamp.stats, &sent, elapsed);
            guard.upstream = Some(elapsed);
            let failure = match sent {
                // The application's 5xx: its own answer, not a gateway
                // failure (no ejection streak), but another copy of the
                // application may answer a replayable idempotent request.
                Ok(Ok(resp))
                    if resp.status().is_server_error()
                        && !is_gateway_failure(resp.status())
                        && route.retry.on_server_error
                        && !last_try =>
                {
                    stamp.stats.record(Outcome::ServerError);
                    Failure::ServerError(resp)
                }
                Ok(Ok(resp)) if !is_gateway_failure(resp.status()) => {
                    let outcome = if resp.status().is_server_error() {
                        Outcome::ServerError
                    } else {
                        Outcome::Answered
                    };
                    stamp.stats.record(outcome);
                    let resp = respond(resp, stamp, request_id.as_ref(), table.stamp_header);
                    return Ok((resp, request_id));
                }
                Ok(Ok(resp)) => Failure::Status(resp),
                Ok(Err(e)) => Failure::Error(e),
                Err(TimedOut) => Failure::Error(ProxyError::UpstreamTimeout {
                    stamp: stamp.name.to_string(),
                    timeout: try_timeout,
                }),
            };
            if failure.blames_stamp() {
                self.stamp_failed(pool, stamp);
            }
            // Another try only if the failure allows it, a stamp not yet
            // tried is left, time is left, and the budget has a token.
            if !last_try && failure.retryable() && Instant::now() < deadline {
                next = pool.selector.pick(&pool.stamps, &tried);
                if next.is_some() && route.budget.withdraw(Instant::now()) {
                    tracing::debug!(stamp = %stamp.name, attempt, "retrying on another stamp");
                    continue;
                }
            }
            return match failure {
                Failure::Status(resp) | Failure::ServerError(resp) => {
                    let resp = respond(resp, stamp, request_id.as_ref(), table.stamp_header);
                    Ok((resp, request_id))
                }
                Failure::Error(e) => Err(fail(e)),
            };
        }
    }

    /// Count a gateway failure; past the pool's threshold, ask the
    /// controller (once per episode, never waiting) to eject the stamp.
    fn stamp_failed(&self, pool: &PoolView, stamp: &StampView) {
        let consecutive = stamp.stats.record(Outcome::GatewayFailure);
        if consecutive < pool.outlier_threshold
            || stamp.stats.ejection_requested.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let signal = Signal::Outlier {
            stamp: stamp.name.clone(),
            consecutive,
        };
        if self.signals.try_send(signal).is_err() {
            // Full queue: let the next failure ask again.
            stamp
                .stats
                .ejection_requested
                .store(false, Ordering::Relaxed);
        }
    }
}

/// The stamp's response, on its way to the client.
fn respond(
    resp: Response<StampBody>,
    stamp: &StampView,
    request_id: Option<&HeaderValue>,
    stamp_header: bool,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::prepare_response(&mut parts.headers, request_id);
    if stamp_header {
        parts
            .headers
            .insert(X_STAMPGATE_STAMP.clone(), stamp.name_header.clone());
    }
    let cut = stamp.stats.cut.load_full().tripped_owned();
    Response::from_parts(
        parts,
        ResponseBody::Upstream {
            inner: body,
            guard: None,
            cut,
        },
    )
}

/// Metrics of one try: the answer's status class and latency, or the
/// kind of connect failure. Relaxed atomics only.
fn observe(
    stats: &StampStats,
    sent: &Result<Result<Response<StampBody>, ProxyError>, TimedOut>,
    elapsed: std::time::Duration,
) {
    match sent {
        Ok(Ok(resp)) => {
            let class = usize::from(resp.status().as_u16() / 100).clamp(1, 5) - 1;
            stats.responses[class].fetch_add(1, Ordering::Relaxed);
            stats.upstream_latency.observe(elapsed);
        }
        Ok(Err(ProxyError::ConnectRefused { .. })) => {
            stats.connect_errors[0].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(ProxyError::ConnectTimeout { .. })) => {
            stats.connect_errors[1].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(ProxyError::ConnectFailed { .. })) => {
            stats.connect_errors[2].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(_)) | Err(_) => {}
    }
}

/// A try ran out of its time.
#[derive(Debug)]
struct TimedOut;

/// How a try at a stamp failed.
enum Failure {
    /// The stamp answered 502/503/504.
    Status(Response<StampBody>),
    /// The application answered another 5xx (retried when allowed; not
    /// the stamp's gateway failing).
    ServerError(Response<StampBody>),
    /// No usable answer.
    Error(ProxyError),
}

impl Failure {
    fn blames_stamp(&self) -> bool {
        match self {
            Failure::Status(_) => true,
            Failure::ServerError(_) => false,
            Failure::Error(e) => e.blame() == Blame::Stamp,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            Failure::Status(_) | Failure::ServerError(_) => true,
            Failure::Error(e) => e.retryable(),
        }
    }
}

/// The client's request body, either streamed (one try only) or held in
/// memory so that a retry can send it again.
enum RequestBody {
    Streaming(Option<(Incoming, u64)>),
    Replay(Bytes),
}

impl RequestBody {
    /// Hold the body for replay when the request may be retried: it is
    /// idempotent, the route allows retries, and the body is empty or its
    /// declared length is within the replay limit. Everything else streams.
    async fn new(
        body: ClientBody,
        parts: &http::request::Parts,
        length: Option<u64>,
        route: &RouteEntry,
        max_body: u64,
    ) -> Result<RequestBody, ProxyError> {
        let retryable = route.retry.attempts > 1 && is_idempotent(&parts.method, &parts.headers);
        let body = match body {
            ClientBody::Hyper(body) => body,
            // Sent as an empty body either way; only a retryable request
            // may go to a second stamp.
            ClientBody::Empty if retryable => return Ok(RequestBody::Replay(Bytes::new())),
            ClientBody::Empty => return Ok(RequestBody::Streaming(None)),
        };
        if !retryable {
            return Ok(RequestBody::Streaming(Some((body, max_body))));
        }
        if body.is_end_stream() {
            return Ok(RequestBody::Replay(Bytes::new()));
        }
        match length {
            Some(len) if len <= route.retry.replay_limit => {
                let collected = http_body_util::Limited::new(body, len as usize)
                    .collect()
                    .await
                    .map_err(|e| ProxyError::ClientBody(e.to_string()))?;
                Ok(RequestBody::Replay(collected.to_bytes()))
            }
            _ => Ok(RequestBody::Streaming(Some((body, max_body)))),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replay(_))
    }

    fn for_try(&mut self) -> UpstreamBody {
        match self {
            RequestBody::Replay(bytes) => UpstreamBody::full(bytes.clone()),
            RequestBody::Streaming(inner) => match inner.take() {
                Some((body, limit)) => UpstreamBody::streaming(body, limit),
                // Only one try streams; a second never reaches here.
                None => UpstreamBody::full(Bytes::new()),
            },
        }
    }
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2),
/// or a request the client marked with an `Idempotency-Key`.
pub fn is_idempotent(method: &http::Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

/// 502/503/504 from a stamp mean it (or something in front of it) could not
/// serve: a gateway failure for passive health, unlike a 500 from the app.
pub fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The host the client asked for: the Host header (HTTP/1.1) or the URI
/// authority (HTTP/2 `:authority`, absolute-form HTTP/1.1).
fn client_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn upstream_uri(
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
    original: &Uri,
) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).expect("scheme, authority and path are each valid")
}

/// The one place a [`ProxyError`] becomes a response: status from the
/// error, a short JSON body, the cause in `x-stampgate-error`.
pub fn error_response(err: &ProxyError, request_id: &HeaderValue) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": err.code(),
        "message": err.to_string(),
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    let mut resp = Response::new(ResponseBody::local(body.to_string()));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        X_STAMPGATE_ERROR.clone(),
        HeaderValue::from_static(err.code()),
    );
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if matches!(err, ProxyError::NoHealthyStamp { .. }) {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    resp
}
