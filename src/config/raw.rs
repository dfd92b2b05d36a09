//! Stage one of the config: serde structs that mirror the TOML file key for
//! key. Unknown keys are refused here (`deny_unknown_fields`), defaultable
//! keys are `Option`, and durations and sizes stay strings; `validate` turns
//! this into the typed [`Config`](super::Config).
//!
//! Integers are `i64` (TOML's own integer type) so that a negative or
//! oversized number reaches validation and gets a range message naming the
//! key, instead of a bare "expected u32" from serde.

use std::collections::BTreeMap;

use serde::Deserialize;

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
    /// `"json"` or `"text"`.
    pub format: Option<String>,
}

/// `[dns]`: how stamp host names are resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `IP:port` of name servers; empty or absent: the system's resolv.conf.
    pub nameservers: Option<Vec<String>>,
    /// Duration string: shortest time an answer is kept.
    pub min_ttl: Option<String>,
    /// Duration string: longest time an answer is kept.
    pub max_ttl: Option<String>,
    /// Duration string: time limit of one lookup.
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
    pub header_read_timeout: Option<String>,
    /// Duration string.
    pub idle_timeout: Option<String>,
    /// Duration string.
    pub shutdown_grace: Option<String>,
    /// Add the `x-stampgate-stamp` response header.
    pub stamp_header: Option<bool>,
    /// Set `X-Forwarded-For/-Proto/-Host` and `Via` on requests.
    pub forwarded_headers: Option<bool>,
    /// Make an `X-Request-Id` when the client sent none, and return it.
    pub request_id: Option<bool>,
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
    pub latency_sensitivity: Option<String>,
    /// `"fail-open"` or `"fail-closed"`.
    pub all_unhealthy: Option<String>,
    /// Duration string.
    pub slow_start: Option<String>,
    /// TLS to stamps.
    pub upstream_tls: Option<bool>,
    /// PEM trust anchors path, relative to the config file.
    pub ca_file: Option<String>,
    /// HTTP/2 to stamps.
    pub upstream_http2: Option<bool>,
    /// `Host` header sent to stamps.
    pub host_header: Option<String>,
    /// Duration string.
    pub connect_timeout: Option<String>,
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
    pub interval: Option<String>,
    /// Duration string.
    pub unhealthy_interval: Option<String>,
    /// Duration string.
    pub fast_interval: Option<String>,
    /// Duration string.
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
    pub base_ejection: Option<String>,
    /// Duration string.
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
    pub degraded_rtt: Option<String>,
    /// Share (0..1) of live requests failing with 5xx that marks a stamp degraded.
    pub degraded_error_rate: Option<f64>,
    /// Percent of its weight a degraded stamp keeps.
    pub degraded_weight_percent: Option<i64>,
    /// Duration string: minimum time in a state before moving up.
    pub min_hold: Option<String>,
    /// Duration string: half-life of the flap penalty.
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
