//! The client's request body as the handler holds it across tries: held
//! in memory when a retry may send it again, streamed otherwise.

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ClientBody;
use crate::error::ProxyError;
use crate::routing::RouteEntry;
use crate::upstream::body::UpstreamBody;
use crate::upstream::is_idempotent;

/// The client's request body, either streamed (one try only) or held in
/// memory so that a retry can send it again.
pub(super) enum RequestBody {
    Streaming(Option<(Incoming, u64)>),
    Replay(Bytes),
}

impl RequestBody {
    /// Hold the body for replay when the request may be retried: it is
    /// idempotent, the route allows retries, and the body is empty or its
    /// declared length is within the replay limit. Everything else streams.
    pub(super) async fn new(
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

    pub(super) fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replay(_))
    }

    pub(super) fn for_try(&mut self) -> UpstreamBody {
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
