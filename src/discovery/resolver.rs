//! Control plane: one DNS resolution of a stamp host name through hickory,
//! its TTL clamped to the refresh bounds.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};

use super::{DnsSettings, parse_ip_literal};

/// The addresses a host name resolved to and how long they may be used
/// before asking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// IPv4 and IPv6 addresses, in the order the resolver gave them.
    pub addrs: Vec<IpAddr>,
    /// The records' remaining validity, clamped to
    /// `[min_ttl, max_ttl]` of the [`DnsSettings`].
    pub ttl: Duration,
}

/// Why discovery could not be set up or a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The [`DnsSettings`] would make refresh loops spin or hang.
    #[error("dns settings: {0}")]
    Settings(String),
    /// No nameservers were configured and the system configuration
    /// (`/etc/resolv.conf`) could not be read.
    #[error("reading the system resolver configuration: {0}")]
    SystemConfig(#[source] NetError),
    /// The nameservers answered with an error or could not be reached.
    #[error("resolving {host}: {source}")]
    Lookup {
        /// The name being resolved.
        host: String,
        /// What hickory reported.
        #[source]
        source: NetError,
    },
    /// No answer arrived within [`DnsSettings::timeout`].
    #[error("resolving {host}: no answer within {after:?}")]
    Timeout {
        /// The name being resolved.
        host: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The answer held no A or AAAA records.
    #[error("resolving {host}: the answer holds no addresses")]
    NoAddresses {
        /// The name being resolved.
        host: String,
    },
}

/// Resolves stamp host names: a hickory resolver set up from
/// [`DnsSettings`]. Shared by all refresh tasks through an `Arc`.
#[derive(Debug)]
pub struct Discovery {
    resolver: TokioResolver,
    settings: DnsSettings,
}

impl Discovery {
    /// Validate `settings` and build the resolver. Reads `/etc/resolv.conf`
    /// when `settings.nameservers` is empty. Needs no running runtime.
    pub fn new(settings: DnsSettings) -> Result<Self, DnsError> {
        settings.validate()?;
        let mut builder = builder(&settings)?;
        tune(builder.options_mut(), &settings);
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Settings(format!("building the resolver: {e}")))?;
        Ok(Self { resolver, settings })
    }

    /// The settings this resolver was built from.
    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// Resolve `host` to its A and AAAA addresses. An IP literal is returned
    /// as is, valid for `max_ttl`, without asking DNS.
    pub async fn resolve(&self, host: &str) -> Result<Answer, DnsError> {
        if let Some(ip) = parse_ip_literal(host) {
            return Ok(Answer {
                addrs: vec![ip],
                ttl: self.settings.max_ttl,
            });
        }
        let timeout = self.settings.timeout;
        let lookup = tokio::time::timeout(timeout, self.resolver.lookup_ip(host))
            .await
            .map_err(|_| DnsError::Timeout {
                host: host.to_owned(),
                after: timeout,
            })?
            .map_err(|source| DnsError::Lookup {
                host: host.to_owned(),
                source,
            })?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses {
                host: host.to_owned(),
            });
        }
        // hickory stamps answers with a `std::time::Instant` deadline (the
        // earliest-expiring record of the A and AAAA answers), so the
        // remaining validity is measured on that clock, not tokio's.
        let remaining = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok(Answer {
            addrs,
            ttl: clamp_ttl(remaining, self.settings.min_ttl, self.settings.max_ttl),
        })
    }
}

/// The resolver builder: the given nameservers, or the system's.
fn builder(settings: &DnsSettings) -> Result<ResolverBuilder<TokioRuntimeProvider>, DnsError> {
    if settings.nameservers.is_empty() {
        return TokioResolver::builder_tokio().map_err(DnsError::SystemConfig);
    }
    let servers = settings
        .nameservers
        .iter()
        .map(|addr| {
            // UDP first; TCP for answers too large for a datagram.
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut c| {
                    c.port = addr.port();
                    c
                })
                .collect();
            NameServerConfig::new(addr.ip(), true, connections)
        })
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    Ok(TokioResolver::builder_with_config(
        config,
        TokioRuntimeProvider::default(),
    ))
}

/// Resolver options on top of the defaults (or resolv.conf's).
///
/// hickory's own answer cache is switched off (capacity 0: its moka cache
/// then stores nothing). The refresh loop already asks once per TTL, and a
/// second cache in between would serve a stale answer whenever `max_ttl`
/// cuts a long TTL short, which is exactly when we want to see a change.
fn tune(opts: &mut ResolverOpts, settings: &DnsSettings) {
    opts.cache_size = 0;
    opts.timeout = settings.timeout;
}

/// Bound a TTL to `[min, max]`. Unlike `Duration::clamp` it never panics;
/// should `min > max` slip through, `max` wins so the name is still
/// refreshed.
pub(crate) fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.max(min).min(max)
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_MAX_TTL;
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn ttl_below_the_floor_is_raised() {
        assert_eq!(clamp_ttl(Duration::ZERO, MIN, MAX), MIN);
        assert_eq!(clamp_ttl(Duration::from_millis(999), MIN, MAX), MIN);
    }

    #[test]
    fn ttl_above_the_ceiling_is_lowered() {
        assert_eq!(clamp_ttl(Duration::from_secs(86_400), MIN, MAX), MAX);
    }

    #[test]
    fn ttl_within_bounds_is_kept() {
        let ttl = Duration::from_secs(30);
        assert_eq!(clamp_ttl(ttl, MIN, MAX), ttl);
        assert_eq!(clamp_ttl(MIN, MIN, MAX), MIN);
        assert_eq!(clamp_ttl(MAX, MIN, MAX), MAX);
    }

    #[test]
    fn inverted_bounds_do_not_panic() {
        assert_eq!(clamp_ttl(Duration::from_secs(7), MAX, MIN), MIN);
    }

    #[test]
    fn invalid_settings_fail_construction() {
        let settings = DnsSettings {
            min_ttl: Duration::ZERO,
            ..DnsSettings::default()
        };
        assert!(matches!(
            Discovery::new(settings),
            Err(DnsError::Settings(_))
        ));
    }

    #[tokio::test]
    async fn ip_literals_skip_dns() {
        // A "nameserver" that never answers: any query would fail.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let settings = DnsSettings {
            nameservers: vec![silent.local_addr().unwrap()],
            timeout: Duration::from_millis(50),
            ..DnsSettings::default()
        };
        let discovery = Discovery::new(settings).unwrap();
        let answer = discovery.resolve("[::1]").await.unwrap();
        assert_eq!(answer.addrs, ["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(answer.ttl, DEFAULT_MAX_TTL);
        let err = discovery.resolve("eu.stamps.test").await.unwrap_err();
        assert!(err.to_string().contains("eu.stamps.test"), "{err}");
    }
}
