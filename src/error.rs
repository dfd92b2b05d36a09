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

impl ProxyError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute | ProxyError::BodyTooLarge { .. } | ProxyError::ClientBody(_) => {
                Blame::Client
            }
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
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::NoHealthyStamp { .. } => false,
        }
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
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
            // error, status, blame, retryable, x-stampgate-error
            (ProxyError::NoRoute, 404, Client, false, "no-route"),
            (ProxyError::BodyTooLarge { limit: 10 }, 413, Client, false, "request-body-too-large"),
            (ProxyError::ClientBody(detail()), 400, Client, false, "client-body-error"),
            (ProxyError::NoHealthyStamp { pool: "p".into() }, 503, Proxy, false, "no-healthy-stamp"),
            (ProxyError::DrainDeadline { stamp: stamp() }, 503, Proxy, true, "stamp-drain-deadline"),
            (ProxyError::ConnectRefused { stamp: stamp() }, 502, Stamp, true, "upstream-connect-refused"),
            (ProxyError::ConnectTimeout { stamp: stamp() }, 504, Stamp, true, "upstream-connect-timeout"),
            (ProxyError::ConnectFailed { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-connect-failed"),
            (ProxyError::UpstreamReset { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-reset"),
            (ProxyError::UpstreamProtocol { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-protocol-error"),
            (ProxyError::UpstreamTimeout { stamp: stamp(), timeout: Duration::from_secs(1) }, 504, Stamp, true, "upstream-timeout"),
            (ProxyError::UpstreamTlsRejected { stamp: stamp(), detail: detail() }, 502, Stamp, true, "upstream-tls-client-cert-rejected"),
        ];
        let mut seen = [false; 12];
        for (error, status, blame, retryable, code) in &table {
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
            };
            assert!(!seen[row], "{error:?} has two rows");
            seen[row] = true;
        }
        assert!(seen.iter().all(|&s| s), "a variant has no row: {seen:?}");
    }
}
