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
    /// The connection broke before any response byte arrived.
    #[error("stamp {stamp} closed the connection before responding: {detail}")]
    UpstreamReset {
        /// Stamp name.
        stamp: String,
        /// The underlying cause, for logs.
        detail: String,
    },
    /// The stamp's response was not valid HTTP (or used an unsupported
    /// feature such as `101 Switching Protocols`).
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
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTimeout { .. } => Blame::Stamp,
        }
    }

    /// Whether the stamp certainly did not act on the request, so that an
    /// idempotent request may be sent to another stamp. A timeout is not in
    /// this set: the stamp may still be working on it, which is why only
    /// idempotent requests are retried at all.
    pub fn stamp_did_not_act(&self) -> bool {
        match self {
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ConnectFailed { .. } => true,
            ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::DrainDeadline { .. } => false,
            ProxyError::NoRoute
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::NoHealthyStamp { .. } => false,
        }
    }

    /// Whether an idempotent request may be tried again on another stamp.
    pub fn retryable(&self) -> bool {
        match self {
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ConnectFailed { .. }
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
            ProxyError::UpstreamReset { .. } => "upstream-reset",
            ProxyError::UpstreamProtocol { .. } => "upstream-protocol-error",
            ProxyError::UpstreamTimeout { .. } => "upstream-timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_failures_are_retryable_and_blame_the_stamp() {
        let e = ProxyError::ConnectRefused { stamp: "a".into() };
        assert!(e.retryable());
        assert!(e.stamp_did_not_act());
        assert_eq!(e.blame(), Blame::Stamp);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.code(), "upstream-connect-refused");
    }

    #[test]
    fn client_failures_are_not_retryable() {
        let e = ProxyError::BodyTooLarge { limit: 10 };
        assert!(!e.retryable());
        assert_eq!(e.blame(), Blame::Client);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn timeouts_are_gateway_timeouts() {
        let e = ProxyError::UpstreamTimeout {
            stamp: "a".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!e.stamp_did_not_act());
    }
}
