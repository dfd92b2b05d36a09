//! `[health] listen`: a listener of its own for the load balancer's checks
//! (`GET`/`HEAD` `/ready` and `/live`), so they can reach a public address
//! while the admin API stays on loopback behind a token. `/ready` answers
//! as the admin API's does, and 503 from the moment shutdown begins, while
//! the proxy still serves for `proxy.shutdown_delay`: the balancer stops
//! sending before the listeners stop accepting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::api::{readiness, shutting_down};
use crate::routing::RoutingTable;

/// A balancer's check is one small request: a slow one is not a check.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The readiness listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("health.listen: cannot listen on {addr}: {source}")]
pub struct HealthPortError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// What the listener reads: the routing table and the shutdown flag.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// The routing table (`/ready` loads it once per check).
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// Set when shutdown begins; `/ready` fails from then on.
    pub shutting_down: Arc<AtomicBool>,
}

/// The running listener.
#[derive(Debug)]
pub struct HealthPort {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    tasks: TaskTracker,
}

impl HealthPort {
    /// After `stop` was cancelled: wait for the accept loop and its
    /// connections to end.
    pub async fn closed(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Bind `listen` and answer checks from `state` until `stop`.
pub async fn start(
    listen: SocketAddr,
    state: HealthState,
    stop: CancellationToken,
) -> Result<HealthPort, HealthPortError> {
    let bind_err = |source| HealthPortError {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    tracing::info!(%addr, "readiness listener for load balancers");
    let tasks = TaskTracker::new();
    let spawner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "readiness listener accept failed");
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            let state = state.clone();
            let stop = stop.clone();
            spawner.spawn(async move {
                let service = service_fn(move |req| {
                    let answer = answer(&state, &req);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(HealthPort { addr, tasks })
}

/// The answer to one check.
fn answer<B>(state: &HealthState, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/live") => (StatusCode::OK, json!({ "status": "live" })),
        (&Method::GET | &Method::HEAD, "/ready") => {
            if state.shutting_down.load(Ordering::Relaxed) {
                shutting_down()
            } else {
                readiness(&state.routing.load())
            }
        }
        (_, "/live" | "/ready") => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": "method not allowed: GET or HEAD" }),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({ "error": "not found: this listener answers /ready and /live" }),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}
