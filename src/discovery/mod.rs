//! Control plane: resolves stamp host names and feeds the upstream connector
//! the current addresses.
//!
//! ```text
//!  spawn_refresh (one task per host name)
//!      │  Discovery::resolve ──▶ hickory TokioResolver ──▶ nameservers
//!      │  answer: store ──────────▶ DnsCache (ArcSwap, copy-on-write)
//!      │  change/failure: send ──▶ DnsReport ──▶ controller (mpsc)
//!      ▼                               │ load()
//!  sleep for the clamped TTL           ▼
//!                      CacheResolver (HttpConnector's resolver seam)
//!                      rotates the cached addresses per new connection,
//!                      falls back to getaddrinfo for unknown names
//! ```
//!
//! The cache sits beside the routing table, not inside it, for the same
//! reason the connection pools do: a new address list must not drop warm
//! connections, and the connector needs the addresses when it dials, not when
//! the controller publishes. The controller still hears about every change
//! and failure through [`DnsReport`], so it owns what the operator sees.
//!
//! Failure policy: a stamp whose name stops resolving keeps its last good
//! addresses. Losing DNS must not turn into losing the stamp; whether the
//! stamp is healthy is for the probes to say.

mod cache;
mod connector;
mod refresh;
mod resolver;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use cache::{CacheState, DnsCache};
pub use connector::{CacheResolver, ResolveFuture, ResolvedAddrs};
pub use refresh::{DnsReport, spawn_refresh};
pub use resolver::{Answer, Discovery, DnsError};

/// Never refresh a name more often than this, whatever its TTL says: a zero
/// or one-second TTL from a misconfigured zone must not turn every refresh
/// task into a loop hammering the nameservers. It is also the first retry
/// delay after a failure.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);

/// Refresh a name at least this often, even when its TTL is a day: a stamp
/// that moves to new addresses is then noticed within five minutes, and a
/// failing name is retried at least this often.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);

/// How long one resolution may take in all. Matches the resolv.conf default
/// per query: resolution runs off the request path (the cache keeps serving
/// the last answer meanwhile), so there is nothing to gain by giving up
/// sooner than the system resolver would.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How stamp names are resolved and how often they are refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Nameservers to ask (UDP, falling back to TCP for truncated answers).
    /// Empty means the system configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Floor for the refresh interval and first retry delay after a failure.
    pub min_ttl: Duration,
    /// Ceiling for the refresh interval and for the retry backoff.
    pub max_ttl: Duration,
    /// How long one resolution may take, retries included.
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl DnsSettings {
    /// Check the values that would otherwise make a refresh loop spin or
    /// never finish. Called by [`Discovery::new`].
    pub fn validate(&self) -> Result<(), DnsError> {
        let invalid = |reason: String| Err(DnsError::Settings(reason));
        if self.min_ttl.is_zero() {
            return invalid("min_ttl must be greater than zero".into());
        }
        if self.min_ttl > self.max_ttl {
            return invalid(format!(
                "min_ttl ({:?}) must not exceed max_ttl ({:?})",
                self.min_ttl, self.max_ttl
            ));
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be greater than zero".into());
        }
        Ok(())
    }
}

/// The address `host` spells out, if it is an IP literal rather than a
/// name. IPv6 literals may come bracketed (`[::1]`), as they appear in URLs.
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Whether `host` is an IP literal. Literals never go through DNS: there is
/// nothing to look up and nothing that could change.
pub fn is_ip_literal(host: &str) -> bool {
    parse_ip_literal(host).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_recognised_names_are_not() {
        assert_eq!(parse_ip_literal("127.0.0.10"), Some([127, 0, 0, 10].into()));
        assert!(is_ip_literal("::1"));
        assert!(is_ip_literal("[2001:db8::1]"));
        assert!(!is_ip_literal("eu.stamps.test"));
        assert!(!is_ip_literal("1.2.3"));
        assert!(!is_ip_literal("[eu.stamps.test]"));
        assert!(!is_ip_literal("[127.0.0.1"));
    }

    #[test]
    fn default_settings_are_valid() {
        assert!(DnsSettings::default().validate().is_ok());
    }

    #[test]
    fn settings_that_would_spin_or_hang_are_rejected() {
        let base = DnsSettings::default();
        let zero_min = DnsSettings {
            min_ttl: Duration::ZERO,
            ..base.clone()
        };
        let inverted = DnsSettings {
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(5),
            ..base.clone()
        };
        let zero_timeout = DnsSettings {
            timeout: Duration::ZERO,
            ..base
        };
        for (settings, expected) in [
            (zero_min, "min_ttl must be greater than zero"),
            (inverted, "min_ttl (10s) must not exceed max_ttl (5s)"),
            (zero_timeout, "timeout must be greater than zero"),
        ] {
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
