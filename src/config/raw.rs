//! Stage one of the config: serde structs that mirror the TOML file key for
//! key. Unknown keys are refused here (`deny_unknown_fields`), defaultable
//! keys are `Option`, and durations and sizes stay strings; `validate` turns
//! this into the typed [`Config`](super::Config).
//!
//! Integers are `i64` (TOML's own integer type) so that a negative or
//! oversized number reaches validation and gets a range message naming the
//! key, instead of a bare "expected u32" from serde.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[proxy]`; optional, every key has a default.
    pub proxy: Option<RawProxy>,
    /// `[admin]`; optional, every key has a default.
    pub admin: Option<RawAdmin>,
    /// `[[routes]]`, in file order.
    pub routes: Option<Vec<RawRoute>>,
    /// `[pools.NAME]`, keyed by pool name.
    pub pools: Option<BTreeMap<String, RawPool>>,
    /// `[dns]`; optional.
    pub dns: Option<RawDns>,
    /// `[access_log]`; optional.
    pub access_log: Option<RawAccessLog>,
    /// `[dns_server]`; optional (no DNS server without it).
    pub dns_server: Option<RawDnsServer>,
    /// `[fleet]`; optional: without it this edge stands alone.
    pub fleet: Option<RawFleet>,
    /// `[health]`: the load balancer's readiness listener; optional.
    pub health: Option<RawHealthListener>,
}

/// `[dns_server]`: the authoritative DNS server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsServer {
    /// `IP:port` addresses, each served over UDP and TCP.
    pub listen: Vec<String>,
    /// The zone (`"example.com."`).
    pub zone: String,
    /// Duration string: TTL of answers.
    pub ttl: Option<String>,
    /// NS names at the apex.
    pub nameservers: Vec<String>,
    /// SOA RNAME.
    pub hostmaster: Option<String>,
    /// `[[dns_server.records]]`.
    pub records: Option<Vec<RawDnsRecord>>,
    /// UDP responses per second per client network; 0 is off.
    pub responses_per_second: Option<i64>,
    /// Threads answering UDP queries.
    pub threads: Option<i64>,
}

/// `[[dns_server.records]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsRecord {
    /// Name relative to the zone, `"@"` for the apex.
    pub name: String,
    /// Pool whose routing state the answers follow.
    pub pool: String,
    /// `"stamps"` or `"edges"`.
    pub answer: Option<String>,
}

/// `[fleet]`: edges that share operator state through etcd.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// This edge's unique name; default: the host name.
    pub name: Option<String>,
    /// etcd endpoints (`http://host:port` or `https://...`).
    pub etcd: Option<Vec<String>>,
    /// Key prefix of this fleet.
    pub prefix: Option<String>,
    /// Duration string: lease of this edge's published view.
    pub lease_ttl: Option<String>,
    /// CA bundle for `https://` endpoints, relative to the config file.
    pub ca_file: Option<String>,
    /// Client certificate (PEM).
    pub cert: Option<String>,
    /// Client key (PEM).
    pub key: Option<String>,
    /// etcd user name.
    pub username: Option<String>,
    /// Environment variable holding the etcd password.
    pub password_env: Option<String>,
    /// Addresses DNS answers with for this edge.
    pub advertise: Option<Vec<String>>,
    /// `"majority"` or a number.
    pub health_quorum: Option<toml::Value>,
}

/// `[health]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthListener {
    /// Address of the `/ready` and `/live` listener.
    pub listen: Option<String>,
}

/// `[access_log]`: one line per request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// Write an access log at all.
    pub enabled: Option<bool>,
    /// Share of successful requests logged, 0.0 to 1.0.
    pub sample: Option<f64>,
    /// `"-"` for standard output, else a file appended to.
    pub path: Option<String>,
    /// `"json"`, `"text"` or `"combined"`.
    pub format: Option<String>,
}

/// `[dns]`: how stamp host names are resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `IP:port` of name servers; empty or absent: the system's resolv.conf.
    pub nameservers: Option<Vec<String>>,
    /// Duration string: shortest time an answer is kept.
    #[serde(default, deserialize_with = "duration")]
    pub min_ttl: Option<String>,
    /// Duration string: longest time an answer is kept.
    #[serde(default, deserialize_with = "duration")]
    pub max_ttl: Option<String>,
    /// Duration string: time limit of one lookup.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<String>,
}

/// `[proxy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Plaintext listener addresses (`"127.0.0.1:8080"`).
    pub listen: Option<Vec<String>>,
    /// TLS listener addresses.
    pub tls_listen: Option<Vec<String>>,
    /// Size string, e.g. `"10MiB"`.
    pub max_request_body: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub header_read_timeout: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<String>,
    /// Duration string: `/ready` fails this long before listeners stop.
    pub shutdown_delay: Option<String>,
    /// Every client connection starts with a PROXY v1/v2 header.
    pub proxy_protocol: Option<bool>,
    /// Answer plain-HTTP requests with a 308 to HTTPS.
    pub redirect_http_to_https: Option<bool>,
    /// Path prefixes answered over plain HTTP despite the redirect.
    pub redirect_exempt_paths: Option<Vec<String>>,
    /// Add the `x-stampgate-stamp` response header.
    pub stamp_header: Option<bool>,
    /// Set `X-Forwarded-For/-Proto/-Host` and `Via` on requests.
    pub forwarded_headers: Option<bool>,
    /// Make an `X-Request-Id` when the client sent none, and return it.
    pub request_id: Option<bool>,
    /// `"fast"` or `"hyper"`: which engine serves HTTP/1.1 requests.
    pub http1_engine: Option<String>,
    /// `[[proxy.certificates]]`
    pub certificates: Option<Vec<RawCertificate>>,
}

/// `[[proxy.certificates]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// SNI names (exact, or `*.example.com`).
    pub server_names: Option<Vec<String>>,
    /// PEM certificate chain path, relative to the config file.
    pub cert: String,
    /// PEM private key path, relative to the config file.
    pub key: String,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Admin listener address.
    pub listen: Option<String>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// Where operator decisions are persisted, relative to the config file.
    pub state_file: Option<String>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name.
    pub name: String,
    /// Host patterns; default `["*"]`.
    pub hosts: Option<Vec<String>>,
    /// Path prefix; default `"/"`.
    pub path_prefix: Option<String>,
    /// Pool name.
    pub pool: String,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<String>,
    /// `retry = { ... }`
    pub retry: Option<RawRetry>,
}

/// `retry = { attempts, budget_percent, per_try_timeout, replay_limit }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total tries including the first.
    pub attempts: Option<i64>,
    /// Retry budget, percent of recent requests.
    pub budget_percent: Option<i64>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub per_try_timeout: Option<String>,
    /// Size string.
    pub replay_limit: Option<String>,
    /// Retry idempotent requests a stamp answered with a 5xx.
    pub on_server_error: Option<bool>,
    /// Duration string: send a second try when the first has no answer yet.
    pub hedge_after: Option<String>,
}

/// `[pools.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// `"priority"`, `"weighted"` or `"latency"`.
    pub method: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub latency_sensitivity: Option<String>,
    /// `"fail-open"` or `"fail-closed"`.
    pub all_unhealthy: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub slow_start: Option<String>,
    /// TLS to stamps: `true`/`false`, or a table with mutual-TLS settings.
    pub upstream_tls: Option<RawUpstreamTls>,
    /// PEM trust anchors path, relative to the config file.
    pub ca_file: Option<String>,
    /// HTTP/2 to stamps.
    pub upstream_http2: Option<bool>,
    /// `Host` header sent to stamps.
    pub host_header: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<String>,
    /// Duration string.
    pub read_timeout: Option<String>,
    /// `[pools.NAME.probe]`
    pub probe: Option<RawProbe>,
    /// `[pools.NAME.outlier]`
    pub outlier: Option<RawOutlier>,
    /// `[pools.NAME.health]`
    pub health: Option<RawHealth>,
    /// `[[pools.NAME.stamps]]`; optional here so that a missing list gets
    /// the "empty pool" message rather than serde's "missing field".
    pub stamps: Option<Vec<RawStamp>>,
}

/// `[pools.NAME.probe]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    /// Path probed on every stamp.
    pub path: Option<String>,
    /// `"GET"` or `"HEAD"`.
    pub method: Option<String>,
    /// Probe over HTTPS.
    pub https: Option<bool>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub unhealthy_interval: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub fast_interval: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<String>,
    /// Sliding window length.
    pub sample_size: Option<i64>,
    /// Successes within the window needed to be healthy.
    pub successful_samples_required: Option<i64>,
    /// `"200"` or `"200-299"` entries.
    pub expect_status: Option<Vec<String>>,
    /// Substring the body must contain.
    pub expect_body: Option<String>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// `Host` header for probes.
    pub host: Option<String>,
    /// Random spread of each probe interval, in percent (0 = none).
    pub jitter_percent: Option<i64>,
}

/// `[pools.NAME.outlier]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Consecutive gateway failures that eject a stamp.
    pub consecutive_failures: Option<i64>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub base_ejection: Option<String>,
    /// Duration string.
    #[serde(default, deserialize_with = "duration")]
    pub max_ejection: Option<String>,
    /// Percent of a pool that may be ejected at once.
    pub max_ejected_percent: Option<i64>,
    /// Share (0..1) of live requests failing (gateway failures and 5xx)
    /// that ejects a stamp; 0 turns it off.
    pub failure_rate: Option<f64>,
    /// Requests a stamp must have served in the window for the failure
    /// rate to count.
    pub failure_rate_min_requests: Option<i64>,
    /// Live latency above this many times the pool median: an outlier.
    pub latency_factor: Option<f64>,
    /// Duration string: ... and above this.
    pub latency_floor: Option<String>,
}

/// `[pools.NAME.health]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Duration string: smoothed probe RTT above this marks a stamp degraded.
    #[serde(default, deserialize_with = "duration")]
    pub degraded_rtt: Option<String>,
    /// Share (0..1) of live requests failing with 5xx that marks a stamp degraded.
    pub degraded_error_rate: Option<f64>,
    /// Percent of its weight a degraded stamp keeps.
    pub degraded_weight_percent: Option<i64>,
    /// Duration string: minimum time in a state before moving up.
    #[serde(default, deserialize_with = "duration")]
    pub min_hold: Option<String>,
    /// Duration string: half-life of the flap penalty.
    #[serde(default, deserialize_with = "duration")]
    pub flap_half_life: Option<String>,
    /// Flaps (within about a half-life) after which a stamp is held out.
    pub flap_suppress: Option<i64>,
}

/// `[[pools.NAME.stamps]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStamp {
    /// Unique stamp name.
    pub name: String,
    /// Region label.
    pub region: String,
    /// `host:port`.
    pub address: String,
    /// 0..=1000.
    pub weight: Option<i64>,
    /// 1..=255.
    pub priority: Option<i64>,
}

/// A duration key: a string (checked by `validate`), or absent. A bare
/// number is refused here, where the parser still knows its line: `5`
/// could mean seconds or milliseconds, and guessing wrong costs an outage.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration string such as \"500ms\" or \"2s\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_owned()))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Err(E::custom(format!(
                "a duration needs a unit, e.g. \"{n}s\" or \"{n}ms\""
            )))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Err(E::custom(format!(
                "a duration needs a unit, e.g. \"{n}s\" or \"{n}ms\""
            )))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(
                "a duration is a string with a unit and whole numbers, e.g. \"1s500ms\"",
            ))
        }
    }
    d.deserialize_any(Visitor)
}

/// `upstream_tls`: the boolean form (`upstream_tls = true`, trust from the
/// pool's `ca_file`) or the table form, which turns TLS on and adds the
/// client certificate and a fixed server name.
#[derive(Debug)]
pub enum RawUpstreamTls {
    /// `upstream_tls = true` or `false`.
    On(bool),
    /// `upstream_tls = { ca_file, cert, key, server_name }`.
    Table(RawUpstreamTlsTable),
}

/// `upstream_tls = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTlsTable {
    /// PEM trust anchors path, relative to the config file.
    pub ca_file: Option<String>,
    /// PEM client certificate chain presented to stamps.
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    pub key: Option<String>,
    /// SNI sent to stamps and the name their certificate must carry.
    pub server_name: Option<String>,
}

/// By hand rather than `#[serde(untagged)]`: untagged enums answer a typo
/// in the table with "did not match any variant", while this passes the
/// table's own error (the unknown key, named) through.
impl<'de> Deserialize<'de> for RawUpstreamTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawUpstreamTls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a table { ca_file, cert, key, server_name }")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawUpstreamTls, E> {
                Ok(RawUpstreamTls::On(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawUpstreamTls, A::Error> {
                RawUpstreamTlsTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawUpstreamTls::Table)
            }
        }
        d.deserialize_any(Visit)
    }
}
