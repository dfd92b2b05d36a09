//! The drill's side of the proxy's admin API and the stamps' control API:
//! the HTTP calls the fault timeline makes, and the `/admin/events` stream
//! the measurements time health transitions from.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::load::HttpClient;
use super::measure::SeenEvent;
use crate::controller::events::Event;

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
    client: HttpClient,
    admin: &Uri,
    start: Instant,
    since_unix_ms: u64,
    events: mpsc::UnboundedSender<SeenEvent>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CallError> {
    let url = format!(
        "{}/admin/events?follow=1",
        admin.to_string().trim_end_matches('/')
    );
    let unreachable = |reason: String| CallError::Unreachable {
        method: Method::GET,
        url: url.clone(),
        reason,
    };
    let request = Request::get(&url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| unreachable(e.to_string()))?;
    let response = tokio::time::timeout(CALL_TIMEOUT, client.request(request))
        .await
        .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(CallError::Refused {
            method: Method::GET,
            url,
            status: response.status(),
            body: String::new(),
        });
    }
    let mut body = response.into_body();
    Ok(tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = stop.cancelled() => return,
            };
            let Some(Ok(frame)) = frame else { return };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let at = start.elapsed().as_secs_f64() * 1000.0;
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let message = buffer.split_to(end + 2);
                if let Some(event) = parse_message(&message, at, since_unix_ms) {
                    let _ = events.send(event);
                }
            }
        }
    }))
}

/// One server-sent event message (`data: {json}\n\n`; comments skipped).
fn parse_message(message: &[u8], at_ms: f64, since_unix_ms: u64) -> Option<SeenEvent> {
    let text = std::str::from_utf8(message).ok()?;
    let json = text.lines().find_map(|l| l.strip_prefix("data: "))?;
    let event: Event = serde_json::from_str(json).ok()?;
    (event.unix_ms >= since_unix_ms).then_some(SeenEvent { at_ms, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::events::EventKind;

    #[test]
    fn messages_parse_and_old_ones_are_skipped() {
        let msg = br#"data: {"seq":3,"time":"2026-11-29T00:00:02.000Z","unix_ms":2000,"kind":"health","stamp":"a","from":"healthy","to":"unhealthy","reason":"probe"}

"#;
        let e = parse_message(msg, 12.5, 1000).expect("an event");
        assert_eq!(
            (
                e.event.kind,
                e.event.stamp.as_deref(),
                e.event.to.as_deref()
            ),
            (EventKind::Health, Some("a"), Some("unhealthy"))
        );
        assert_eq!(e.at_ms, 12.5);
        assert!(
            parse_message(msg, 0.0, 3000).is_none(),
            "older than the drill"
        );
        assert!(parse_message(b": keep-alive\n\n", 0.0, 0).is_none());
    }
}
