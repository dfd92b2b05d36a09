//! The request handler: one routing-table load, route match, stamp pick,
//! header rewrite, forward on a pooled connection, classify the outcome into
//! the stamp's counters, stream the response back. Errors become responses
//! in [`error_response`] and nowhere else.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body::Body as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::access_log::{AccessLog, Entry};
use super::attempts::{Attempts, Failure, Try, Verdict, classify, is_gateway_failure};
use super::body::{ClientBody, ResponseBody, Stall};
use super::conn::{ConnInfo, TryTimer};
use super::headers::{
    self, ClientSide, TRACEPARENT, X_REQUEST_ID, X_STAMPGATE_ERROR, X_STAMPGATE_STAMP,
};
use super::hedge;
use super::in_flight::InFlight;
use super::request_body::RequestBody;
use crate::config::HedgeAfter;
use crate::error::{BadRequest, Blame, ProxyError};
use crate::metrics::ProxyStats;
use crate::routing::stats::Hedge;
use crate::routing::{
    ConnectError, Outcome, PoolView, RouteEntry, RoutingTable, StampStats, StampView,
    host_without_port,
};
use crate::signals::Signal;
use crate::upstream::StampBody;
use crate::upstream::body::{BoxError, UpstreamBody};

/// Seconds a fail-closed pool asks clients to wait before trying again:
/// about one probe interval, after which a recovered stamp is back.
const RETRY_AFTER_SECS: &str = "5";
/// The `Allow` of a 405 to CONNECT: every method the proxy forwards.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE";

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
    /// `proxy.redirect_http_to_https`: plain-HTTP requests get a 308.
    pub redirect: Option<super::redirect::Redirect>,
    /// An upgraded connection with no bytes either way for this long is
    /// closed (`proxy.idle_timeout`).
    pub upgrade_idle: std::time::Duration,
    /// Where upgraded connections run: the proxy's connection tracker, so
    /// that a shutdown waits for them too.
    pub tunnels: tokio_util::task::TaskTracker,
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
        if !conn.tls
            && let Some(redirect) = &self.redirect
            && let Some(resp) = redirect.answer(&req)
        {
            return resp;
        }
        let version = req.version();
        let mut guard = InFlight::begin(&conn.activity, version);
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
                (
                    error_response(&err, &id, version),
                    Some(id),
                    Some(err.code()),
                )
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

        let (host, repeated) = checked_host(&parts, &body).map_err(|e| (e, None))?;
        if let (true, Some(host)) = (repeated, &host) {
            parts.headers.insert(header::HOST, host.clone());
        }
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
        // `TE` is hop-by-hop, but `te: trailers` is the one value HTTP/2
        // allows and gRPC servers require it: it goes on to HTTP/2 stamps.
        // An upgrade goes through only to an HTTP/1.1 stamp and only with
        // hyper's handle on the client connection (the fast path hands
        // upgrade requests to hyper).
        let upgrade = if pool.upstream.version() == http::Version::HTTP_11 {
            super::upgrade::requested(&parts.headers, parts.version)
                .zip(parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        } else {
            None
        };
        let te_trailers = pool.upstream.version() == http::Version::HTTP_2
            && parts
                .headers
                .get_all(header::TE)
                .iter()
                .any(headers::names_trailers);
        let request_id = headers::prepare_request(
            &mut parts.headers,
            &client,
            pool.host_header.as_ref(),
            table.header_rules,
        );
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let (upgrade_value, mut on_upgrade) = match upgrade {
            Some((value, on)) => (Some(value), Some(on)),
            None => (None, None),
        };
        if let Some(value) = &upgrade_value {
            super::upgrade::restore(&mut parts.headers, value.clone());
        }
        let fail = |e: ProxyError| (e, request_id.clone());

        // The route's timeout runs from the request's arrival.
        let start = guard.start;
        let deadline = start + route.timeout;
        route.budget.deposit(start);
        let mut body = RequestBody::new(body, &parts, length, route, table.max_request_body)
            .await
            .map_err(fail)?;
        // An upgrade is never retried: the stamp may have switched.
        let limit = if body.replayable() && upgrade_value.is_none() {
            route.retry.attempts as usize
        } else {
            1
        };
        let mut attempts = Attempts::new(&pool.selector, &pool.stamps, limit, deadline);
        // Hedging: replayable idempotent requests only, and never a POST
        // (an Idempotency-Key makes a POST retryable after a failure, not
        // worth sending twice while the first may still act on it).
        let hedge_after = route
            .hedge_delay()
            .filter(|_| body.replayable() && parts.method != http::Method::POST);
        loop {
            let Some(mut this) = attempts.next_try(&pool.stamps) else {
                return Err(fail(ProxyError::NoHealthyStamp {
                    pool: pool.name.to_string(),
                }));
            };
            let mut stamp = &pool.stamps[this.stamp];
            // Filled in place: `Request::builder` would move the parts
            // through a `Result` at each step. The last try takes the
            // headers: the selector never picks a tried stamp, so they need
            // no copy.
            let mut upstream_req = Request::new(body.for_try());
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() =
                upstream_uri(pool.upstream.scheme(), &stamp.authority, &parts.uri);
            *upstream_req.version_mut() = pool.upstream.version();
            *upstream_req.headers_mut() = if this.last {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };

            let try_start = Instant::now();
            let remaining = deadline.saturating_duration_since(try_start);
            let try_timeout = if limit > 1 {
                route.retry.per_try_timeout.min(remaining)
            } else {
                remaining
            };
            guard.at_stamp(this.stamp, &stamp.stats);
            // The try races its timeout and the stamp's drain cut. Pinned in
            // place rather than through `timeout` and `select!`, each of
            // which would copy the send future (about 1.6 KiB) again.
            let hedge_at = hedge_after
                .filter(|&after| !this.last && this.number == 1 && after < try_timeout)
                .map(|after| try_start + after);
            let (sent, elapsed) = if let Some(hedge_at) = hedge_at {
                // Boxed: the race holds two tries' send futures, and held
                // in place it would size every request's future (and each
                // move of it) by both, hedged or not.
                let raced = Box::pin(self.hedged(HedgedTry {
                    first: this,
                    first_req: upstream_req,
                    hedge_at,
                    try_start,
                    try_timeout,
                    deadline,
                    pool,
                    route,
                    attempts: &mut attempts,
                    body: &mut body,
                    parts: &mut parts,
                    guard,
                }))
                .await;
                this = raced.this;
                stamp = &pool.stamps[this.stamp];
                (raced.sent, raced.elapsed)
            } else {
                // Dropped unfinished if this request is cancelled mid-try:
                // the wait still counts as a (lower-bound) latency sample.
                let head_wait = stamp.stats.begin_try(try_start);
                let until = try_start + try_timeout;
                let sent = send_try(pool, stamp, upstream_req, until, timer).await;
                let elapsed = head_wait.finish(is_sample(&sent));
                (sent, elapsed)
            };
            observe(&stamp.stats, &sent, elapsed);
            if let (Some(HedgeAfter::Quantile(_)), Ok(Ok(_))) = (route.retry.hedge_after, &sent) {
                route.stats.head_latency.record(elapsed);
            }
            guard.upstream = Some(elapsed);
            let failure = match sent {
                Ok(Ok(mut resp)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    let switched = match resp.body_mut() {
                        StampBody::H1(body) => body.take_switched(),
                        StampBody::H2(_) => None,
                    };
                    match (on_upgrade.take(), switched, upgrade_value.clone()) {
                        (Some(client), Some((io, early)), Some(value)) => {
                            stamp.stats.record(Outcome::Answered);
                            super::upgrade::splice(
                                client,
                                io,
                                early,
                                self.upgrade_idle,
                                self.stats.clone(),
                                &self.tunnels,
                            );
                            let mut resp = respond(resp, None, stamp, pool, table, &request_id);
                            super::upgrade::restore(resp.headers_mut(), value);
                            *resp.body_mut() = ResponseBody::local(bytes::Bytes::new());
                            return Ok((resp, request_id));
                        }
                        _ => Failure::Error(ProxyError::UpstreamProtocol {
                            stamp: stamp.name.to_string(),
                            detail:
                                "101 Switching Protocols to a request that asked for no upgrade"
                                    .to_owned(),
                        }),
                    }
                }
                Ok(Ok(mut resp)) => {
                    match classify(resp.status(), route.retry.on_server_error, this.last) {
                        Verdict::Deliver(outcome) => match first_frame(&mut resp) {
                            Ok(first) => {
                                stamp.stats.record(outcome);
                                let resp = respond(resp, first, stamp, pool, table, &request_id);
                                return Ok((resp, request_id));
                            }
                            Err(e) => Failure::Error(ProxyError::UpstreamProtocol {
                                stamp: stamp.name.to_string(),
                                detail: format!("response body: {e}"),
                            }),
                        },
                        Verdict::ServerError => {
                            stamp.stats.record(Outcome::ServerError);
                            Failure::ServerError(resp)
                        }
                        Verdict::GatewayStatus => Failure::Status(resp),
                    }
                }
                Ok(Err(e)) => Failure::Error(e),
                Err(TimedOut) => Failure::Error(ProxyError::UpstreamTimeout {
                    stamp: stamp.name.to_string(),
                    timeout: try_timeout,
                }),
            };
            if failure.blames_stamp() {
                self.stamp_failed(pool, stamp);
            }
            let now = Instant::now();
            if attempts.may_retry(
                &this,
                &failure,
                &pool.selector,
                &pool.stamps,
                &route.budget,
                now,
            ) {
                tracing::debug!(stamp = %stamp.name, attempt = this.number, "retrying on another stamp");
                continue;
            }
            return match failure {
                Failure::Status(resp) | Failure::ServerError(resp) => {
                    let resp = respond(resp, None, stamp, pool, table, &request_id);
                    Ok((resp, request_id))
                }
                Failure::Error(e) => Err(fail(e)),
            };
        }
    }

    /// The first try of a hedged request: alone until `hedge_at`, then,
    /// if [`Attempts::hedge`] grants a second try, both at once
    /// ([`hedge::race`]). The first usable answer wins and the other try is
    /// dropped, which drops its upstream connection (a connection goes back
    /// to the pool only once a response body was read to its end). A try
    /// that fails while the other runs is counted here; the returned try
    /// (the winner, or the last to fail) is left to the caller like any
    /// other.
    async fn hedged<'a>(&self, h: HedgedTry<'a, '_>) -> Raced {
        let HedgedTry {
            first,
            first_req,
            hedge_at,
            try_start,
            try_timeout,
            deadline,
            pool,
            route,
            attempts,
            body,
            parts,
            guard,
        } = h;
        let first_stamp = &pool.stamps[first.stamp];
        // Each try finishes its own head wait; a dropped loser's wait
        // counts as a (lower-bound) latency sample.
        let timed = |stamp: &'a StampView, req, start: Instant, until| async move {
            let wait = stamp.stats.begin_try(start);
            let sent = send_try(pool, stamp, req, until, None).await;
            let elapsed = wait.finish(is_sample(&sent));
            (sent, elapsed)
        };
        let start_hedge = || {
            let now = Instant::now();
            let second =
                attempts.hedge(&first, &pool.selector, &pool.stamps, &route.budget, now)?;
            route.stats.hedge(Hedge::Sent);
            let stamp = &pool.stamps[second.stamp];
            let mut req = Request::new(body.for_try());
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = upstream_uri(pool.upstream.scheme(), &stamp.authority, &parts.uri);
            *req.version_mut() = pool.upstream.version();
            *req.headers_mut() = if second.last {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            guard.at_stamp(second.stamp, &stamp.stats);
            let until = (now + route.retry.per_try_timeout).min(deadline);
            Some((second, timed(stamp, req, now, until)))
        };
        let raced = hedge::race(
            timed(first_stamp, first_req, try_start, try_start + try_timeout),
            hedge_at,
            start_hedge,
            |(sent, _)| wins(sent, route),
            |hedge, (sent, elapsed)| {
                let stamp = hedge.map_or(first_stamp, |t| &pool.stamps[t.stamp]);
                self.lost_try(pool, stamp, sent, *elapsed);
            },
        )
        .await;
        let (this, (sent, elapsed)) = match raced {
            hedge::Raced::Alone(out) => (first, out),
            hedge::Raced::First(out) => {
                route.stats.hedge(Hedge::Lost);
                // The answer is the first stamp's.
                guard.at_stamp(first.stamp, &first_stamp.stats);
                guard.attempts -= 1;
                (first, out)
            }
            hedge::Raced::Second(second, out) => {
                let won = wins(&out.0, route);
                route
                    .stats
                    .hedge(if won { Hedge::Won } else { Hedge::Lost });
                (second, out)
            }
        };
        Raced {
            this,
            sent,
            elapsed,
        }
    }

    /// Count a try that failed while its twin still ran: its metrics and,
    /// when the stamp is to blame, its ejection streak.
    fn lost_try(&self, pool: &PoolView, stamp: &StampView, sent: &Sent, elapsed: Duration) {
        observe(&stamp.stats, sent, elapsed);
        let blames_stamp = match sent {
            Ok(Ok(resp)) if is_gateway_failure(resp.status()) => true,
            Ok(Ok(_)) => {
                stamp.stats.record(Outcome::ServerError);
                false
            }
            Ok(Err(e)) => e.blame() == Blame::Stamp,
            Err(TimedOut) => true,
        };
        if blames_stamp {
            self.stamp_failed(pool, stamp);
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

/// Read what of the body is already there without waiting: a body whose
/// first bytes are broken (bad chunk line, oversized trailer) fails here,
/// while nothing has been sent, and the client gets a 502 instead of a
/// bare close. A frame read is handed back to go out first. The response
/// is borrowed, not passed through: moving it in and out cost two copies
/// of it per request.
fn first_frame(
    resp: &mut Response<StampBody>,
) -> Result<Option<http_body::Frame<bytes::Bytes>>, BoxError> {
    if resp.body().is_end_stream() {
        return Ok(None);
    }
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(resp.body_mut()).poll_frame(&mut cx) {
        Poll::Ready(Some(Err(e))) => Err(e),
        Poll::Ready(Some(Ok(frame))) => Ok(Some(frame)),
        Poll::Ready(None) | Poll::Pending => Ok(None),
    }
}

/// The stamp's response, on its way to the client.
fn respond(
    resp: Response<StampBody>,
    first: Option<http_body::Frame<bytes::Bytes>>,
    stamp: &StampView,
    pool: &PoolView,
    table: &RoutingTable,
    request_id: &Option<HeaderValue>,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::prepare_response(&mut parts.headers, request_id.as_ref());
    // 1xx, 204 and 304 answers carry no body, so a length on them only
    // misleads (RFC 9110, 8.6); HAProxy removes it too.
    let status = parts.status;
    if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    if table.stamp_header {
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
            first,
            stall: Stall::new(pool.read_timeout),
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
            stats.connect_errors[ConnectError::Refused].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(ProxyError::ConnectTimeout { .. })) => {
            stats.connect_errors[ConnectError::Timeout].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(ProxyError::ConnectFailed { .. })) => {
            stats.connect_errors[ConnectError::Other].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(_)) | Err(_) => {}
    }
}

/// A try ran out of its time.
#[derive(Debug)]
struct TimedOut;

/// How a try ended: the stamp's answer or error, or its time ran out.
type Sent = Result<Result<Response<StampBody>, ProxyError>, TimedOut>;

/// Everything [`Gateway::hedged`] needs of the request.
struct HedgedTry<'a, 'g> {
    first: Try,
    first_req: Request<UpstreamBody>,
    hedge_at: Instant,
    try_start: Instant,
    try_timeout: Duration,
    deadline: Instant,
    pool: &'a PoolView,
    route: &'a RouteEntry,
    attempts: &'g mut Attempts,
    body: &'g mut RequestBody,
    parts: &'g mut http::request::Parts,
    guard: &'g mut InFlight,
}

/// The try whose result stands, that result, and how long that try took
/// (from its own start: a winning hedge started late).
struct Raced {
    this: Try,
    sent: Sent,
    elapsed: Duration,
}

/// The try's time says something about the stamp's latency: it got a
/// response head or ran out of time (a refused connect says nothing).
fn is_sample(sent: &Sent) -> bool {
    matches!(sent, Ok(Ok(_)) | Err(TimedOut))
}

/// A hedged try's result ends the race: an answer the client may get
/// (not a gateway failure, nor a 5xx the route would retry).
fn wins(sent: &Sent, route: &RouteEntry) -> bool {
    match sent {
        Ok(Ok(resp)) => {
            let status = resp.status();
            let retried_5xx = route.retry.on_server_error && status.is_server_error();
            !(is_gateway_failure(status) || retried_5xx)
        }
        _ => false,
    }
}

/// One try at `stamp`: the send races its time limit (`until`, on the
/// connection's `timer` when there is one) and the stamp's drain cut.
/// Pinned in place rather than through `timeout` and `select!`, each of
/// which would copy the send future (about 1.6 KiB) again.
async fn send_try(
    pool: &PoolView,
    stamp: &StampView,
    req: Request<UpstreamBody>,
    until: Instant,
    timer: Option<&TryTimer>,
) -> Sent {
    let cut = stamp.stats.cut.load_full();
    let mut send = pin!(pool.upstream.send(&stamp.name, req));
    let mut own_timer = pin!(None::<tokio::time::Sleep>);
    match timer {
        Some(timer) => timer.arm(until),
        None => own_timer.set(Some(tokio::time::sleep_until(until))),
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
}

/// The host the client asked for, after refusing heads that a stamp
/// could read differently from the proxy. Both engines (the fast path and
/// hyper) leave these to this one place; each check is a compare on
/// fields already parsed, with no allocation on the way through.
///
/// - `CONNECT` is answered 405: the proxy opens no tunnels.
/// - Two `Host` headers with different values are 400; the same value
///   twice is folded to one (the `bool` returned says to).
/// - A target with an authority (absolute-form in HTTP/1.1, `:authority`
///   in HTTP/2) and a `Host` that differs (ASCII case aside) is 400, as
///   HAProxy answers; when they agree the request is routed by that host
///   and forwarded in origin-form.
/// - An HTTP/1.1 request without `Host` is 400 (RFC 9112 §3.2).
/// - A body whose `Transfer-Encoding` names a coding other than `chunked`
///   is 501 (the stamp would get it re-chunked and still encoded), and
///   `chunked` twice is 400. Only a request whose body has no length yet
///   can carry one, so the common request skips the header lookup.
fn checked_host(
    parts: &http::request::Parts,
    body: &ClientBody,
) -> Result<(Option<HeaderValue>, bool), ProxyError> {
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    let mut repeated = false;
    if let Some(first) = host {
        for other in hosts {
            if other != first {
                return Err(ProxyError::BadRequest(BadRequest::ConflictingHost));
            }
            repeated = true;
        }
    }
    let authority = parts.uri.authority();
    match (host, authority) {
        (Some(h), Some(a)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(ProxyError::BadRequest(BadRequest::HostMismatch));
        }
        (None, _) if parts.version == http::Version::HTTP_11 => {
            return Err(ProxyError::BadRequest(BadRequest::MissingHost));
        }
        _ => {}
    }
    if body.length_unknown() {
        check_transfer_coding(&parts.headers)?;
    }
    let host = host
        .cloned()
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    Ok((host, repeated))
}

/// Refuse every `Transfer-Encoding` but one `chunked` (see [`checked_host`]).
fn check_transfer_coding(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = false;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(ProxyError::UnsupportedTransferCoding {
                    coding: String::from_utf8_lossy(coding).into_owned(),
                });
            }
            if std::mem::replace(&mut chunked, true) {
                return Err(ProxyError::BadRequest(BadRequest::ChunkedTwice));
            }
        }
    }
    Ok(())
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
/// error, a short JSON body, the cause in `x-stampgate-error`, and
/// `connection: close` (HTTP/1.x) when the connection cannot go on.
pub fn error_response(
    err: &ProxyError,
    request_id: &HeaderValue,
    version: http::Version,
) -> Response<ResponseBody> {
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
    if matches!(err, ProxyError::ConnectMethod) {
        // RFC 9110 §15.5.6: a 405 lists what the target does allow.
        h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    }
    // HTTP/2 has no Connection header; its streams are framed apart.
    if err.closes_connection() && version < http::Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
