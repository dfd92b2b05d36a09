//! The drill's side of the stamps' control API and the proxy's admin API:
//! the HTTP calls the fault timeline makes to stamps, and the
//! `/admin/events` stream the measurements time health transitions from,
//! read through the admin API's one client ([`crate::admin::client`]).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::load::HttpClient;
use super::measure::SeenEvent;
use crate::admin::client::{AdminClient, ClientError};

/// A control or admin call gets this long: they answer at once, except a
/// stamp's `down`, which waits until its connections are dropped.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control or admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer.
    #[error("{method} {url}: {reason}")]
    Unreachable {
        /// The method.
        method: Method,
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An answer other than 2xx.
    #[error("{method} {url}: {status}: {body}")]
    Refused {
        /// The method.
        method: Method,
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The answer's body, as text.
        body: String,
    },
}

/// One HTTP call with an optional bearer token; the body of a 2xx answer.
pub async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Bytes,
) -> Result<Bytes, CallError> {
    let unreachable = |reason: String| CallError::Unreachable {
        method: method.clone(),
        url: url.to_owned(),
        reason,
    };
    let mut request = Request::builder().method(method.clone()).uri(url);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body.to_bytes()))
    };
    let (status, body) = match tokio::time::timeout(CALL_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => return Err(unreachable(reason)),
        Err(_) => return Err(unreachable(format!("no answer within {CALL_TIMEOUT:?}"))),
    };
    if !status.is_success() {
        return Err(CallError::Refused {
            method,
            url: url.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    Ok(body)
}

/// Follows `GET {admin}/admin/events?follow=1` until `stop`, sending every
/// event that happened at or after `since_unix_ms` (the backlog the stream
/// starts with is older), timed by the drill's clock relative to `start`.
///
/// Returns once connected, so that no event of the drill is missed; the
/// stream is read by a spawned task.
pub async fn follow_events(
    admin: &Uri,
    start: Instant,
    since_unix_ms: u64,
    events: mpsc::UnboundedSender<SeenEvent>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ClientError> {
    let mut stream = AdminClient::new(&admin.to_string(), None)?.events().await?;
    Ok(tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = stream.next_event() => event,
                () = stop.cancelled() => return,
            };
            let Some(Ok(event)) = event else { return };
            let at_ms = start.elapsed().as_secs_f64() * 1000.0;
            if event.unix_ms >= since_unix_ms {
                let _ = events.send(SeenEvent { at_ms, event });
            }
        }
    }))
}
