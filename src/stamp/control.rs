//! The simulated stamp's control listener (HTTP/1.1): where a drill, a test
//! or an operator sets and clears faults (`/fault`) and reads counters
//! (`/stats`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{ALLOW, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::body::{self, Body};
use super::fault::Fault;
use super::listener::accept_loop;

/// A fault is a handful of fields; anything larger is not one.
const MAX_FAULT_BODY: usize = 64 * 1024;

/// How long a fault change waits for the serving listener to follow (close
/// or bind again) before the control answer says that it did not.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the control listener until `stop` is cancelled.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    accept_loop(listener, stop.cancelled_owned(), move |stream| {
        serve_connection(shared.clone(), stream)
    })
    .await;
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let service = service_fn(move |request| handle(shared.clone(), request));
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "control connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/fault") => body::json(StatusCode::OK, &shared.faults.get()),
        (&Method::PUT, "/fault") => put_fault(&shared, request.into_body()).await,
        (&Method::DELETE, "/fault") => {
            shared.clear_fault();
            answer_when_settled(&shared).await
        }
        (_, "/fault") => not_allowed("GET, PUT, DELETE"),
        (&Method::GET, "/stats") => {
            let requests = shared.requests.load(Ordering::Relaxed);
            let received = shared.received.load(Ordering::Relaxed);
            body::json(
                StatusCode::OK,
                &serde_json::json!({ "requests": requests, "received": received }),
            )
        }
        (_, "/stats") => not_allowed("GET"),
        (method, path) => {
            let message = format!("no control endpoint {method} {path}; try /fault or /stats");
            body::error(StatusCode::NOT_FOUND, message)
        }
    };
    Ok(response)
}

/// `PUT /fault`: merges the body's fields into the current fault.
async fn put_fault(shared: &Shared, request_body: Incoming) -> Response<Body> {
    let bytes = match Limited::new(request_body, MAX_FAULT_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let message = format!("cannot read the fault body (limit {MAX_FAULT_BODY} bytes): {e}");
            return body::error(StatusCode::BAD_REQUEST, message);
        }
    };
    match Fault::from_json(&bytes) {
        Ok(update) => {
            shared.set_fault(update);
            answer_when_settled(shared).await
        }
        Err(e) => body::error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Answers with the current fault once the serving listener matches it, so
/// that a client which got its 200 for `{"down": true}` can count on the port
/// being closed (and, after `DELETE`, open again).
async fn answer_when_settled(shared: &Shared) -> Response<Body> {
    match tokio::time::timeout(SETTLE_TIMEOUT, shared.settled()).await {
        Ok(()) => body::json(StatusCode::OK, &shared.faults.get()),
        Err(_) => body::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "fault applied, but the serving listener did not follow within {}s; see the stamp's log",
                SETTLE_TIMEOUT.as_secs()
            ),
        ),
    }
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = body::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this endpoint takes {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
