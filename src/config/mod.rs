//! Configuration: the first thing `run`, `check` and reload touch. A TOML file
//! is read into the raw serde structs of [`raw`] (unknown keys rejected) and
//! then validated into the typed [`Config`] below, so that nothing past this
//! module ever sees an unchecked value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod defaults;
mod dns_server;
mod fleet;
#[cfg(test)]
mod fuzz;
pub mod raw;
mod summary;
mod units;
mod validate;

pub use dns_server::{DnsAnswerKind, DnsRecordConfig, DnsServerSettings};
pub use fleet::{FleetSettings, Quorum};
pub use summary::summary;
pub use units::{parse_duration, parse_size};
pub(crate) use validate::locate;
pub use validate::{ConfigError, load, parse_hedge_after, parse_str};

/// A validated configuration. Every value here has passed the checks in
/// `validate`; durations and sizes are typed, names are unique, routes point
/// at pools that exist.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from (for reload and messages).
    pub source: PathBuf,
    /// Client-facing listeners and limits.
    pub proxy: ProxySettings,
    /// The operator's listener.
    pub admin: AdminSettings,
    /// Routes in file order (matching order is decided by the routing table).
    pub routes: Vec<RouteConfig>,
    /// Pools in name order (`BTreeMap` order of the file), each with its stamps.
    pub pools: Vec<PoolConfig>,
    /// `[dns]`: resolution of stamp host names.
    pub dns: crate::discovery::DnsSettings,
    /// `[access_log]`: one line per request.
    pub access_log: AccessLogSettings,
    /// `[dns_server]`: the authoritative DNS server, when configured.
    pub dns_server: Option<DnsServerSettings>,
    /// `[fleet]`: shared operator state through etcd; `None` is a lone edge.
    pub fleet: Option<FleetSettings>,
    /// `[health]`: the load balancer's `/ready` and `/live` listener.
    pub health: HealthListenerSettings,
}

/// `[health]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthListenerSettings {
    /// Where `/ready` and `/live` are answered; `None`: no such listener
    /// (the admin API has its own `/ready`).
    pub listen: Option<SocketAddr>,
}

/// `[access_log]`
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    /// Write an access log at all.
    pub enabled: bool,
    /// Share of requests answered below 500 that are logged (0.0–1.0);
    /// 5xx answers, the proxy's own errors included, are always logged.
    pub sample: f64,
    /// File appended to; `None` is standard output.
    pub path: Option<PathBuf>,
    /// Line format.
    pub format: AccessLogFormat,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// `key=value` pairs on one line (for people tailing the log).
    Text,
    /// Apache's combined format (`%h %l %u %t "%r" %>s %b "%{Referer}i"
    /// "%{User-agent}i"`), for the log analysers and fail2ban-style tools
    /// that read only that.
    Combined,
}

/// `[proxy]`
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Plaintext listeners (HTTP/1.1 and h2c prior knowledge on one port).
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (ALPN h2, http/1.1).
    pub tls_listen: Vec<SocketAddr>,
    /// Requests with a larger body are answered 413.
    pub max_request_body: u64,
    /// A client must send the complete request head within this time.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this time.
    pub idle_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM before exit.
    pub shutdown_grace: Duration,
    /// On SIGTERM, `/ready` fails this long while requests are still
    /// served, before the listeners stop (a balancer's time to notice).
    pub shutdown_delay: Duration,
    /// Every client connection starts with a PROXY protocol header (v1 or
    /// v2) naming the client; one without is closed.
    pub proxy_protocol: bool,
    /// Plain-HTTP requests are answered 308 to the HTTPS URL.
    pub redirect_http_to_https: bool,
    /// Path prefixes served over plain HTTP despite the redirect (ACME).
    pub redirect_exempt_paths: Vec<String>,
    /// `[[proxy.certificates]]`: the first is the default certificate.
    pub certificates: Vec<CertificateConfig>,
    /// Add `x-stampgate-stamp` to responses (naming the serving stamp).
    pub stamp_header: bool,
    /// Set `X-Forwarded-For/-Proto/-Host` and `Via` on requests to stamps.
    pub forwarded_headers: bool,
    /// Make an `X-Request-Id` for a request that has none, send it to the
    /// stamp and return it on the response.
    pub request_id: bool,
    /// Which engine serves HTTP/1.1 client requests.
    pub http1_engine: Http1Engine,
}

/// Which engine serves HTTP/1.1 client requests (`proxy.http1_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http1Engine {
    /// The proxy's own parser for requests without a body, hyper for the
    /// rest of a connection from the first request it does not take.
    Fast,
    /// hyper for every connection: a one-line way to take the fast path
    /// out of service should a parser bug turn up in it.
    Hyper,
}

/// One `[[proxy.certificates]]` entry, already loaded from disk and checked
/// to be PEM.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    /// SNI names this certificate answers for (exact, or `*.example.com`).
    pub server_names: Vec<String>,
    /// Path of the certificate chain (for messages).
    pub cert_path: PathBuf,
    /// Path of the private key (for messages).
    pub key_path: PathBuf,
    /// The certificate chain, DER, leaf first.
    pub cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The private key, DER.
    pub key: Arc<rustls::pki_types::PrivateKeyDer<'static>>,
}

/// `upstream_tls = { cert, key }`, loaded and checked to be a pair.
#[derive(Debug, Clone)]
pub struct ClientCertConfig {
    /// Path of the certificate chain (for messages, and to tell a changed
    /// setting on reload).
    pub cert_path: PathBuf,
    /// Path of the private key.
    pub key_path: PathBuf,
    /// The certificate chain, DER, leaf first.
    pub cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The private key, DER.
    pub key: Arc<rustls::pki_types::PrivateKeyDer<'static>>,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Admin listener address (default `127.0.0.1:9901`).
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// Where operator decisions are persisted.
    pub state_file: Option<PathBuf>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Route name (unique), used in logs and metrics.
    pub name: String,
    /// Host patterns: exact names (lower-cased, no port) or `*` for any.
    pub hosts: Vec<String>,
    /// Path prefix; the longest matching prefix wins.
    pub path_prefix: String,
    /// Name of the pool (exists in `Config::pools`).
    pub pool: String,
    /// Time limit for the whole request until response headers (504).
    pub timeout: Duration,
    /// Retry settings.
    pub retry: RetryConfig,
}

/// `retry = { attempts, budget_percent, per_try_timeout, replay_limit }`
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total tries including the first (1 = no retry).
    pub attempts: u32,
    /// Retries allowed as a share of recent requests (percent).
    pub budget_percent: u32,
    /// Time limit for one try until response headers.
    pub per_try_timeout: Duration,
    /// Request bodies up to this size are kept for replay; larger ones are
    /// never retried.
    pub replay_limit: u64,
    /// Also retry (replayable, idempotent) requests a stamp answered with
    /// a 5xx that is not a gateway failure: with identical stamps, another
    /// region's copy answers the same request correctly.
    pub on_server_error: bool,
    /// Hedging: when a replayable idempotent request has no response head
    /// from its stamp after this, a second try goes to another stamp while
    /// the first still runs; the first answer wins. `None`: off.
    pub hedge_after: Option<HedgeAfter>,
}

/// When a hedge goes (`retry.hedge_after`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeAfter {
    /// A fixed delay (`"100ms"`).
    Fixed(Duration),
    /// A quantile of the route's recent times to response head (`"p95"`:
    /// 0.95), so that about that share of requests never hedges whatever
    /// the stamps' normal latency is.
    Quantile(f64),
}

/// Routing method of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Lowest priority number with a usable stamp takes all traffic.
    Priority,
    /// Active-active by effective weight.
    Weighted,
    /// Stamps within `latency_sensitivity` of the fastest share traffic.
    Latency,
}

/// What to do when no stamp of a pool is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllUnhealthy {
    /// Send traffic to every enabled stamp anyway.
    FailOpen,
    /// Answer 503 with `Retry-After`.
    FailClosed,
}

/// One `[pools.NAME]` table.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool name (the TOML key).
    pub name: String,
    /// Routing method.
    pub method: Method,
    /// Latency method: stamps within this of the fastest share traffic.
    pub latency_sensitivity: Duration,
    /// Behaviour when every stamp is unusable.
    pub all_unhealthy: AllUnhealthy,
    /// Ramp-up window of a recovered stamp (zero: none).
    pub slow_start: Duration,
    /// TLS to stamps.
    pub upstream_tls: bool,
    /// Extra trust anchors for upstream TLS (PEM), instead of system roots
    /// (pool-level `ca_file` or `upstream_tls.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// `upstream_tls.cert`/`key`: the client certificate presented to
    /// stamps that ask for one (mutual TLS).
    pub client_cert: Option<ClientCertConfig>,
    /// `upstream_tls.server_name`: sent as SNI and required in the stamp's
    /// certificate instead of the stamp's host; `None` uses the host.
    pub tls_server_name: Option<String>,
    /// Speak HTTP/2 to stamps (prior knowledge, or ALPN with TLS).
    pub upstream_http2: bool,
    /// `Host` header sent to stamps; `None` keeps the client's.
    pub host_header: Option<String>,
    /// Upstream TCP connect time limit.
    pub connect_timeout: Duration,
    /// Longest a stamp may stay silent while its response body is read.
    pub read_timeout: Duration,
    /// Active health probe.
    pub probe: ProbeConfig,
    /// Passive health (outlier detection).
    pub outlier: OutlierConfig,
    /// Degradation thresholds and flap damping.
    pub health: HealthConfig,
    /// Stamps in file order (at least one).
    pub stamps: Vec<StampConfig>,
}

/// `[pools.NAME.probe]`
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Path probed on every stamp.
    pub path: String,
    /// `GET` or `HEAD`.
    pub method: http::Method,
    /// Probe over HTTPS (defaults to the pool's `upstream_tls`).
    pub https: bool,
    /// Time between probes of a healthy stamp.
    pub interval: Duration,
    /// Time between probes of an unhealthy stamp (faster, to notice recovery).
    pub unhealthy_interval: Duration,
    /// Time until the next probe after a failed one, while the stamp is
    /// not yet unhealthy: the verdict is decided in a fraction of an
    /// interval (HAProxy's `fastinter`).
    pub fast_interval: Duration,
    /// Probe time limit (< interval).
    pub timeout: Duration,
    /// Sliding window length.
    pub sample_size: u32,
    /// Successes within the window needed to be healthy (<= sample_size).
    pub successful_samples_required: u32,
    /// Accepted status ranges, inclusive.
    pub expect_status: Vec<(u16, u16)>,
    /// Optional substring the body must contain.
    pub expect_body: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `Host` header for probes (default: the stamp address).
    pub host: Option<String>,
    /// Each interval is spread randomly by up to this percent, so that many
    /// proxies do not probe in lock-step (0 in tests).
    pub jitter_percent: u32,
}

/// `[pools.NAME.outlier]`
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive gateway failures that eject a stamp.
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the number of ejections (capped).
    pub base_ejection: Duration,
    /// Upper bound of an ejection.
    pub max_ejection: Duration,
    /// Never eject more than this share of a pool at once.
    pub max_ejected_percent: u32,
    /// Eject a stamp whose live failure rate (gateway failures and 5xx
    /// answers) reaches this share over the last half second (`None`: off).
    pub failure_rate: Option<f64>,
    /// ... counted only once it served this many requests in that window.
    pub failure_rate_min_requests: u32,
    /// A stamp whose live latency is more than this many times the median
    /// of the pool's other stamps ...
    pub latency_factor: f64,
    /// ... and above this is a latency outlier: it keeps a trickle of
    /// traffic (to see it recover) and loses the rest.
    pub latency_floor: Duration,
}

/// `[pools.NAME.health]`
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Smoothed probe RTT above this marks a stamp degraded (`None`: off).
    pub degraded_rtt: Option<Duration>,
    /// Live 5xx share above this marks a stamp degraded.
    pub degraded_error_rate: f64,
    /// Percent of its weight a degraded stamp keeps (1..=100).
    pub degraded_weight_percent: u32,
    /// Minimum time in a state before moving up (down is never delayed).
    pub min_hold: Duration,
    /// Half-life of the flap penalty.
    pub flap_half_life: Duration,
    /// Flaps within about a half-life after which a stamp is held out
    /// until the penalty decays.
    pub flap_suppress: u32,
}

/// One `[[pools.NAME.stamps]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampConfig {
    /// Stamp name, unique across the whole config.
    pub name: String,
    /// Region label.
    pub region: String,
    /// `host:port` as written; `host` may be an IP or a DNS name.
    pub address: String,
    /// Host part of `address` (no brackets for IPv6).
    pub host: String,
    /// Port part of `address`.
    pub port: u16,
    /// Configured weight, 1..=1000 (0 is allowed: configured out).
    pub weight: u32,
    /// Priority tier (lower is preferred), 1..=255.
    pub priority: u32,
}

/// A config's fingerprint: `sha256:` and the hex digest of its `text`, what
/// `sha256sum` prints for the same file, so a drill report (or an edge's
/// published view) can be matched to a config by hand.
pub fn fingerprint(text: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
