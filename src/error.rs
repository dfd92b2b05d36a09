//! Errors of the request path: every failure a request can meet, typed, with
//! who is to blame and whether another stamp may be tried. The proxy turns
//! them into responses in exactly one place ([`ProxyError::status`]).

use http::StatusCode;

/// Who caused a failure. Decides the log level and which counters move: a
/// client's mistake must never count against a stamp's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we refuse (too large, malformed, no route).
    Client,
    /// stampgate itself could not serve (no usable stamp, internal limits).
    Proxy,
    /// The stamp failed: refused, timed out, reset, answered a gateway error.
    Stamp,
}

/// Why a request could not be answered by a stamp.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    #[error("no route matches this host and path")]
    NoRoute,
    /// The request head is one that the proxy and a stamp could read
    /// differently (request smuggling, routing around an ACL).
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
    /// A transfer coding other than `chunked`: forwarding the body
    /// re-chunked would hand the stamp encoded bytes it was not told of.
    #[error("transfer coding {coding:?} is not supported")]
    UnsupportedTransferCoding {
        /// The first coding that is not `chunked`, as the client sent it.
        coding: String,
    },
    /// `CONNECT`: the proxy opens no tunnels.
    #[error("method CONNECT is not supported")]
    ConnectMethod,
    /// The request body is larger than `proxy.max_request_body`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client's request body failed while it was being forwarded.
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// Every stamp of the pool is unusable and the pool fails closed.
    #[error("no healthy stamp in pool {pool}")]
    NoHealthyStamp {
        /// The pool that has nothing to offer.
        pool: String,
    },
    /// The stamp refused the TCP connection.
    #[error("stamp {stamp} refused the connection")]
    ConnectRefused {
        /// Stamp name.
        stamp: String,
    },
    /// The TCP (or TLS) connect did not finish within `connect_timeout`.
    #[error("connecting to stamp {stamp} timed out")]
    ConnectTimeout {
        /// Stamp name.
        stamp: String,
    },
    /// Any other failure to establish a connection (DNS, TLS handshake, ...).
    #[error("could not connect to stamp {stamp}: {detail}")]
    ConnectFailed {
        /// Stamp name.
        stamp: String,
        /// The underlying cause, for logs.
        detail: String,
    },
    /// The stamp refused our TLS client certificate, or asked for one we
    /// do not have (`upstream_tls.cert`): a setup problem, shown as such in
    /// status instead of as a generic connect failure.
    #[error("stamp {stamp} refused the TLS client certificate: {detail}")]
    UpstreamTlsRejected {
        /// Stamp name.
        stamp: String,
        /// The TLS alert, for logs.
        detail: String,
    },
    /// The connection broke before any response byte arrived.
    #[error("stamp {stamp} closed the connection before responding: {detail}")]
    UpstreamReset {
        /// Stamp name.
        stamp: String,
        /// The underlying cause, for logs.
        detail: String,
    },
    /// The stamp's response was not valid HTTP (including a body broken
    /// at its first read, or a `101` to a request that asked no upgrade).
    #[error("stamp {stamp} sent an invalid response: {detail}")]
    UpstreamProtocol {
        /// Stamp name.
        stamp: String,
        /// What was wrong, for logs.
        detail: String,
    },
    /// An operator's drain deadline passed while the request was at the stamp.
    #[error("stamp {stamp} was drained by an operator and its deadline passed")]
    DrainDeadline {
        /// Stamp name.
        stamp: String,
    },
    /// No response headers within the route (or per-try) timeout.
    #[error("stamp {stamp} did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// Stamp name.
        stamp: String,
        /// The limit that expired.
        timeout: std::time::Duration,
    },
}

/// What is wrong with a request head answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Two `Host` headers with different values: the proxy would route by
    /// one and the stamp might serve the other.
    #[error("two different Host headers")]
    ConflictingHost,
    /// The target's authority (absolute-form, or HTTP/2 `:authority`) and
    /// `Host` name different hosts (RFC 9112 §3.2.2: the target wins, so a
    /// stamp that reads Host would serve another host than was routed).
    #[error("the request target's authority and Host differ")]
    HostMismatch,
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2 makes this a 400).
    #[error("an HTTP/1.1 request without Host")]
    MissingHost,
    /// `chunked` applied twice (RFC 9112 §6.1 forbids it).
    #[error("Transfer-Encoding names chunked more than once")]
    ChunkedTwice,
    /// The HTTP/2 preface after HTTP/1.1 requests on the same connection:
    /// a connection's protocol is chosen by its first bytes only.
    #[error("an HTTP/2 preface after HTTP/1.1 requests")]
    LateHttp2Preface,
}

impl BadRequest {
    /// The cause for the `x-stampgate-error` header.
    pub fn code(self) -> &'static str {
        match self {
            BadRequest::ConflictingHost => "conflicting-host",
            BadRequest::HostMismatch => "host-mismatch",
            BadRequest::MissingHost => "missing-host",
            BadRequest::ChunkedTwice => "chunked-twice",
            BadRequest::LateHttp2Preface => "late-http2-preface",
        }
    }
}

impl ProxyError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::ConnectMethod
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_) => Blame::Client,
            ProxyError::NoHealthyStamp { .. } | ProxyError::DrainDeadline { .. } => Blame::Proxy,
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTlsRejected { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTimeout { .. } => Blame::Stamp,
        }
    }

    /// Whether an idempotent request may be tried again on another stamp.
    /// A stamp that reset or timed out may still have acted on the
    /// request, which is why only idempotent requests are retried at all.
    pub fn retryable(&self) -> bool {
        match self {
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTlsRejected { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::DrainDeadline { .. } => true,
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::ConnectMethod
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::NoHealthyStamp { .. } => false,
        }
    }

    /// Whether the client connection must end after the answer: after a
    /// head the proxy refused to read, what follows on the connection
    /// (a body, a tunnel, a smuggled request) cannot be framed safely.
    pub fn closes_connection(&self) -> bool {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::ConnectMethod => true,
            ProxyError::NoRoute
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::NoHealthyStamp { .. }
            | ProxyError::DrainDeadline { .. }
            | ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamTlsRejected { .. } => false,
        }
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferCoding { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoHealthyStamp { .. } | ProxyError::DrainDeadline { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTlsRejected { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The stable, machine-readable cause for the `x-stampgate-error` header.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::BadRequest(why) => why.code(),
            ProxyError::UnsupportedTransferCoding { .. } => "unsupported-transfer-coding",
            ProxyError::ConnectMethod => "method-not-allowed",
            ProxyError::BodyTooLarge { .. } => "request-body-too-large",
            ProxyError::ClientBody(_) => "client-body-error",
            ProxyError::NoHealthyStamp { .. } => "no-healthy-stamp",
            ProxyError::DrainDeadline { .. } => "stamp-drain-deadline",
            ProxyError::ConnectRefused { .. } => "upstream-connect-refused",
            ProxyError::ConnectTimeout { .. } => "upstream-connect-timeout",
            ProxyError::ConnectFailed { .. } => "upstream-connect-failed",
            ProxyError::UpstreamTlsRejected { .. } => "upstream-tls-client-cert-rejected",
            ProxyError::UpstreamReset { .. } => "upstream-reset",
            ProxyError::UpstreamProtocol { .. } => "upstream-protocol-error",
            ProxyError::UpstreamTimeout { .. } => "upstream-timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every variant, with what the client and the operator see of it.
    #[test]
    fn every_error_maps_to_its_status_blame_retry_and_header() {
        use Blame::{Client, Proxy, Stamp};
        let stamp = || "eu-1".to_owned();
        let detail = || "why".to_owned();
        #[rustfmt::skip]
        let table = [
            // error, status, blame, retryable, x-stampgate-error, closes
            (ProxyError::NoRoute, 404, Client, false, "no-route", false),
            (ProxyError::BadRequest(BadRequest::ConflictingHost), 400, Client, false, "conflicting-host", true),
            (ProxyError::UnsupportedTransferCoding { coding: "gzip".into() }, 501, Client, false, "unsupported-transfer-coding", true),
            (ProxyError::ConnectMethod, 405, Client, false, "method-not-allowed", true),
            (ProxyError::BodyTooLarge { limit: 10 }, 413, Client, false, "request-body-too-large", false),
            (ProxyError::ClientBody(detail()), 400, Client, false, "client-body-error", false),
            (ProxyError::NoHealthyStamp { pool: "p".into() }, 503, Proxy, false, "no-healthy-stamp", false),
            (ProxyError::DrainDeadline { stamp: stamp() }, 503, Proxy, true, "stamp-drain-deadline", false),
            (ProxyError::ConnectRefused { stamp: stamp() }, 502, Stamp, true, "upstream-connect-refused", false),
            (ProxyError::ConnectTimeout { stamp: stamp() }, 504, Stamp, true, "upstream-connect-timeout", false),
            (ProxyError::ConnectFailed { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-connect-failed", false),
            (ProxyError::UpstreamReset { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-reset", false),
            (ProxyError::UpstreamProtocol { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-protocol-error", false),
            (ProxyError::UpstreamTimeout { stamp: stamp(), timeout: Duration::from_secs(1) }, 504, Stamp, true, "upstream-timeout", false),
            (ProxyError::UpstreamTlsRejected { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-tls-client-cert-rejected", false),
        ];
        let mut seen = [false; 15];
        for (error, status, blame, retryable, code, closes) in &table {
            assert_eq!(error.closes_connection(), *closes, "{error:?}");
            assert_eq!(error.status().as_u16(), *status, "{error:?}");
            assert_eq!(error.blame(), *blame, "{error:?}");
            assert_eq!(error.retryable(), *retryable, "{error:?}");
            assert_eq!(error.code(), *code, "{error:?}");
            // No `_` arm: a new variant stops this from compiling until it
            // has a row above.
            let row = match error {
                ProxyError::NoRoute => 0,
                ProxyError::BodyTooLarge { .. } => 1,
                ProxyError::ClientBody(_) => 2,
                ProxyError::NoHealthyStamp { .. } => 3,
                ProxyError::DrainDeadline { .. } => 4,
                ProxyError::ConnectRefused { .. } => 5,
                ProxyError::ConnectTimeout { .. } => 6,
                ProxyError::ConnectFailed { .. } => 7,
                ProxyError::UpstreamReset { .. } => 8,
                ProxyError::UpstreamProtocol { .. } => 9,
                ProxyError::UpstreamTimeout { .. } => 10,
                ProxyError::UpstreamTlsRejected { .. } => 11,
                ProxyError::BadRequest(_) => 12,
                ProxyError::UnsupportedTransferCoding { .. } => 13,
                ProxyError::ConnectMethod => 14,
            };
            assert!(!seen[row], "{error:?} has two rows");
            seen[row] = true;
        }
        assert!(seen.iter().all(|&s| s), "a variant has no row: {seen:?}");
    }

    /// Each 400 cause has its own `x-stampgate-error` code.
    #[test]
    fn bad_request_causes_have_distinct_codes() {
        use BadRequest::*;
        let all = [
            ConflictingHost,
            HostMismatch,
            MissingHost,
            ChunkedTwice,
            LateHttp2Preface,
        ];
        let mut codes: Vec<_> = all
            .iter()
            .map(|b| ProxyError::BadRequest(*b).code())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "{codes:?}");
    }
}
