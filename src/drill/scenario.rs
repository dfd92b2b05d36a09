//! Scenario files: what a drill runs. A TOML file is read into the raw serde
//! structs below (unknown keys refused) and checked into a [`Scenario`], the
//! same two stages as the proxy config, with errors that name the file, the
//! key path and the value.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Uri};
use serde::Deserialize;

use crate::config::{ConfigError, locate, parse_duration};
use crate::stamp::Fault;

/// The admin token variable when a scenario names none: the one
/// `stampgate ctl` reads.
pub const DEFAULT_TOKEN_ENV: &str = "STAMPGATE_ADMIN_TOKEN";

/// Requests that may be waiting for an answer at once unless the scenario
/// says otherwise: two seconds of load at 5,000 req/s. Beyond it the
/// generator counts requests as `overload` instead of piling up tasks.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// A request without a complete answer by then is a `timeout` error: longer
/// than the proxy's default tries, short enough to end a drill promptly.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The load when a scenario gives no rate.
pub const DEFAULT_RATE: u32 = 1_000;

/// The highest rate accepted: far above what one generator process can
/// send, so a typo is refused instead of attempted.
pub const MAX_RATE: u32 = 200_000;

/// The longest drill: a typo such as "10m" for "10s" should not pin a
/// machine for hours.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// The reference request mix: `(method, path after the item, weight)` for
/// get item 20, list 2, post rating 10, post comment 2, the shape of the
/// reference load test. `{item}` paths use catalog item 0.
pub const REFERENCE_MIX: &[(&str, &str, u32)] = &[
    ("GET", "/catalogservice/api/1.0/catalogitem/{item}", 20),
    ("GET", "/catalogservice/api/1.0/catalogitem?limit=10", 2),
    (
        "POST",
        "/catalogservice/api/1.0/catalogitem/{item}/ratings",
        10,
    ),
    (
        "POST",
        "/catalogservice/api/1.0/catalogitem/{item}/comments",
        2,
    ),
];

/// The body the reference mix posts.
const REFERENCE_POST_BODY: &str = r#"{"author":"drill","text":"failover drill"}"#;

/// Why a scenario was refused. One line, to be printed as is.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}: cannot read scenario: {source}", .file.display())]
    Io {
        /// The scenario file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown or missing key, or a value that breaks a
    /// rule: reported exactly as the proxy config reports it
    /// (`FILE:LINE:COLUMN: KEY = VALUE: MESSAGE`, `FILE: KEY = VALUE: RULE`).
    #[error(transparent)]
    Checked(#[from] ConfigError),
}

// ------------------------------------------------------------------ raw

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    #[serde(default)]
    description: String,
    duration: String,
    #[serde(default)]
    stamps: Vec<RawStamp>,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    load: RawLoad,
    #[serde(default)]
    timeline: Vec<RawStep>,
    #[serde(default)]
    expect: RawExpect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStamp {
    name: String,
    region: String,
    control: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    config: Option<String>,
    method: Option<String>,
    all_unhealthy: Option<String>,
    hedge_after: Option<String>,
    url: Option<String>,
    admin: Option<String>,
    token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    rate: Option<u32>,
    protocol: Option<String>,
    max_in_flight: Option<usize>,
    timeout: Option<String>,
    #[serde(default)]
    requests: Vec<RawRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default = "one")]
    weight: u32,
    body: Option<String>,
}

fn get() -> String {
    "GET".to_owned()
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at: String,
    stamp: Option<String>,
    region: Option<String>,
    fault: Option<Fault>,
    #[serde(default)]
    clear: bool,
    admin: Option<String>,
    config: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    max_errors: Option<u64>,
    max_idempotent_errors: Option<u64>,
    shift_within: Option<String>,
    max_p99: Option<String>,
    recover_within: Option<String>,
}

// ------------------------------------------------------------ validated

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name (the file stem when the file gives none).
    pub name: String,
    /// One line saying what it rehearses.
    pub description: String,
    /// Where it was read from; relative paths in it start at its directory.
    pub source: PathBuf,
    /// How long the load runs.
    pub duration: Duration,
    /// The stamps, in file order.
    pub stamps: Vec<StampSpec>,
    /// The proxy under test.
    pub proxy: ProxySpec,
    /// The load.
    pub load: LoadSpec,
    /// What happens when, in time order.
    pub timeline: Vec<Step>,
    /// What must hold for the drill to pass.
    pub expect: Expectations,
}

/// One stamp of the scenario.
#[derive(Debug, Clone)]
pub struct StampSpec {
    /// Its name (`X-Server-Name`).
    pub name: String,
    /// Its region (`X-Server-Location`).
    pub region: String,
    /// `None`: the drill spawns a simulated stamp. `Some`: an existing one,
    /// faulted through this control URL (`PUT /fault`).
    pub control: Option<Uri>,
}

/// The proxy under test.
#[derive(Debug, Clone)]
pub enum ProxySpec {
    /// Started in the drill's process, with an admin listener on a free
    /// loopback port and a fresh token.
    Spawned(ProxyConfigSource),
    /// Already running.
    Existing {
        /// Where clients send requests.
        url: Uri,
        /// Its admin API.
        admin: Uri,
        /// The variable holding the admin token.
        token_env: String,
    },
}

/// Where a spawned proxy's config comes from.
#[derive(Debug, Clone)]
pub enum ProxyConfigSource {
    /// Made from the scenario's stamps: one weighted (or `method`) pool,
    /// probes as fast as the demo's.
    Generated {
        /// `weighted`, `priority` or `latency`.
        method: String,
        /// `fail-open` or `fail-closed`.
        all_unhealthy: String,
        /// The route's `retry.hedge_after`, if hedged.
        hedge_after: Option<String>,
    },
    /// A config file; `{{stamp:NAME}}` in it is replaced by the address of
    /// the spawned stamp NAME.
    File(PathBuf),
}

/// The HTTP version the load speaks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over keep-alive connections.
    Http1,
    /// HTTP/2 cleartext (prior knowledge).
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "h2c",
        })
    }
}

/// The load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests per second, sent on schedule whatever the answers take.
    pub rate: u32,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: Protocol,
    /// The cap on requests awaiting an answer.
    pub max_in_flight: usize,
    /// A request without a complete answer by then is a timeout.
    pub timeout: Duration,
    /// The weighted requests.
    pub requests: Vec<RequestSpec>,
}

/// One kind of request of the mix.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Its share of the mix, relative to the others.
    pub weight: u32,
    /// The body sent (empty for none).
    pub body: Bytes,
}

/// One entry of the fault timeline.
#[derive(Debug, Clone)]
pub struct Step {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What it acts on.
    pub target: Target,
    /// What it does.
    pub action: Action,
}

/// What a step acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One stamp, by name.
    Stamp(String),
    /// Every stamp of a region.
    Region(String),
    /// The proxy as a whole (reload).
    Proxy,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Stamp(s) => write!(f, "stamp {s}"),
            Target::Region(r) => write!(f, "region {r}"),
            Target::Proxy => f.write_str("proxy"),
        }
    }
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Merge a fault into the target stamps (`PUT /fault`).
    Fault(Fault),
    /// Clear the target stamps' faults (`DELETE /fault`).
    Clear,
    /// Admin API: drain the stamp or region.
    Drain,
    /// Admin API: enable the stamp or region.
    Enable,
    /// Admin API: reload, after writing this config (if given) over the
    /// spawned proxy's config file.
    Reload(Option<PathBuf>),
}

impl Action {
    /// A short label for reports and markers.
    pub fn label(&self) -> String {
        match self {
            Action::Fault(fault) => {
                let json = serde_json::to_string(fault).unwrap_or_default();
                format!("fault {json}")
            }
            Action::Clear => "clear".to_owned(),
            Action::Drain => "drain".to_owned(),
            Action::Enable => "enable".to_owned(),
            Action::Reload(None) => "reload".to_owned(),
            Action::Reload(Some(p)) => format!("reload {}", p.display()),
        }
    }
}

/// What must hold for the drill to pass; `None` is not checked.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Client-visible errors over the whole run, at most.
    pub max_errors: Option<u64>,
    /// Errors of idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE),
    /// at most: the ones the proxy may retry on another stamp. A POST in
    /// flight when its stamp dies cannot be retried safely.
    pub max_idempotent_errors: Option<u64>,
    /// Every fault's traffic has shifted within this.
    pub shift_within: Option<Duration>,
    /// p99 latency over the whole run, at most.
    pub max_p99: Option<Duration>,
    /// After every fault that ends, traffic is back within this.
    pub recover_within: Option<Duration>,
}

impl Scenario {
    /// Reads and checks the scenario file at `path`.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// Checks scenario `text` as if read from `source`.
    pub fn parse(text: &str, source: &Path) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let loc = e
                .span()
                .map(|span| locate::locate(text, &span))
                .unwrap_or_default();
            ScenarioError::Checked(ConfigError::Syntax {
                file: source.to_path_buf(),
                line: loc.line,
                column: loc.column,
                key: loc.key,
                value: loc.value,
                message: e.message().to_owned(),
            })
        })?;
        Checker { file: source }.scenario(raw)
    }

    /// The regions of the stamps, in first-seen order.
    pub fn regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.stamps {
            if !out.contains(&s.region) {
                out.push(s.region.clone());
            }
        }
        out
    }

    /// The names of the stamps a target covers.
    pub fn stamps_of(&self, target: &Target) -> Vec<String> {
        self.stamps
            .iter()
            .filter(|s| match target {
                Target::Stamp(name) => &s.name == name,
                Target::Region(region) => &s.region == region,
                Target::Proxy => false,
            })
            .map(|s| s.name.clone())
            .collect()
    }
}

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn invalid(
        &self,
        key: &str,
        value: impl fmt::Display,
        rule: impl Into<String>,
    ) -> ScenarioError {
        ScenarioError::Checked(ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            value: value.to_string(),
            rule: rule.into(),
        })
    }

    fn duration(&self, key: &str, raw: &str) -> Result<Duration, ScenarioError> {
        parse_duration(raw).map_err(|rule| self.invalid(key, format!("{raw:?}"), rule))
    }

    fn uri(&self, key: &str, raw: &str) -> Result<Uri, ScenarioError> {
        let uri: Uri = raw
            .parse()
            .map_err(|e| self.invalid(key, format!("{raw:?}"), format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(self.invalid(
                key,
                format!("{raw:?}"),
                "must be an http:// URL with a host, e.g. \"http://127.0.0.1:9101\"",
            ));
        }
        Ok(uri)
    }

    fn path(&self, raw: &str) -> PathBuf {
        let base = self.file.parent().unwrap_or(Path::new(""));
        base.join(raw)
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let name = raw.name.clone().unwrap_or_else(|| {
            let stem = self.file.file_stem().unwrap_or_default();
            stem.to_string_lossy().into_owned()
        });
        let duration = self.duration("duration", &raw.duration)?;
        if duration.is_zero() || duration > MAX_DURATION {
            return Err(self.invalid(
                "duration",
                format!("{:?}", raw.duration),
                "must be more than 0s and at most 1h",
            ));
        }
        let stamps = self.stamps(raw.stamps)?;
        let proxy = self.proxy(raw.proxy, &stamps)?;
        let load = self.load(raw.load)?;
        let mut scenario = Scenario {
            name,
            description: raw.description,
            source: self.file.to_path_buf(),
            duration,
            stamps,
            proxy,
            load,
            timeline: Vec::new(),
            expect: self.expect(raw.expect)?,
        };
        scenario.timeline = self.timeline(raw.timeline, &scenario)?;
        Ok(scenario)
    }

    fn stamps(&self, raw: Vec<RawStamp>) -> Result<Vec<StampSpec>, ScenarioError> {
        if raw.is_empty() {
            return Err(self.invalid("stamps", "[]", "a drill needs at least one [[stamps]]"));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            if s.name.is_empty() || !seen.insert(s.name.clone()) {
                return Err(self.invalid(
                    &format!("stamps[{i}].name"),
                    format!("{:?}", s.name),
                    "stamp names must be non-empty and unique",
                ));
            }
            if s.region.is_empty() {
                return Err(self.invalid(
                    &format!("stamps[{i}].region"),
                    "\"\"",
                    "must not be empty",
                ));
            }
            let control = match &s.control {
                Some(raw) => Some(self.uri(&format!("stamps[{i}].control"), raw)?),
                None => None,
            };
            out.push(StampSpec {
                name: s.name,
                region: s.region,
                control,
            });
        }
        Ok(out)
    }

    fn proxy(&self, raw: RawProxy, stamps: &[StampSpec]) -> Result<ProxySpec, ScenarioError> {
        if let Some(url) = &raw.url {
            let url = self.uri("proxy.url", url)?;
            let Some(admin) = &raw.admin else {
                return Err(self.invalid(
                    "proxy.url",
                    format!("{:?}", url.to_string()),
                    "an existing proxy also needs proxy.admin (its admin API URL)",
                ));
            };
            let admin = self.uri("proxy.admin", admin)?;
            for (key, given) in [
                ("proxy.config", &raw.config),
                ("proxy.method", &raw.method),
                ("proxy.all_unhealthy", &raw.all_unhealthy),
                ("proxy.hedge_after", &raw.hedge_after),
            ] {
                if let Some(v) = given {
                    return Err(self.invalid(
                        key,
                        format!("{v:?}"),
                        "only for a spawned proxy; remove it or proxy.url",
                    ));
                }
            }
            return Ok(ProxySpec::Existing {
                url,
                admin,
                token_env: raw
                    .token_env
                    .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_owned()),
            });
        }
        if let Some(admin) = &raw.admin {
            return Err(self.invalid(
                "proxy.admin",
                format!("{admin:?}"),
                "only with proxy.url (an existing proxy)",
            ));
        }
        if let Some(s) = stamps.iter().position(|s| s.control.is_some()) {
            return Err(self.invalid(
                &format!("stamps[{s}].control"),
                format!("{:?}", stamps[s].control.as_ref().map(Uri::to_string).unwrap_or_default()),
                "existing stamps need an existing proxy (proxy.url); a spawned proxy fronts spawned stamps",
            ));
        }
        if let Some(config) = &raw.config {
            if raw.method.is_some() || raw.all_unhealthy.is_some() || raw.hedge_after.is_some() {
                return Err(self.invalid(
                    "proxy.config",
                    format!("{config:?}"),
                    "method, all_unhealthy and hedge_after belong in that file; give either proxy.config or them",
                ));
            }
            return Ok(ProxySpec::Spawned(ProxyConfigSource::File(
                self.path(config),
            )));
        }
        let method = raw.method.unwrap_or_else(|| "weighted".to_owned());
        if !["weighted", "priority", "latency"].contains(&method.as_str()) {
            return Err(self.invalid(
                "proxy.method",
                format!("{method:?}"),
                "expected \"weighted\", \"priority\" or \"latency\"",
            ));
        }
        let all_unhealthy = raw.all_unhealthy.unwrap_or_else(|| "fail-open".to_owned());
        if !["fail-open", "fail-closed"].contains(&all_unhealthy.as_str()) {
            return Err(self.invalid(
                "proxy.all_unhealthy",
                format!("{all_unhealthy:?}"),
                "expected \"fail-open\" or \"fail-closed\"",
            ));
        }
        if let Some(hedge) = &raw.hedge_after
            && let Err(rule) = crate::config::parse_hedge_after(hedge)
        {
            return Err(self.invalid("proxy.hedge_after", format!("{hedge:?}"), rule));
        }
        Ok(ProxySpec::Spawned(ProxyConfigSource::Generated {
            method,
            all_unhealthy,
            hedge_after: raw.hedge_after,
        }))
    }

    fn load(&self, raw: RawLoad) -> Result<LoadSpec, ScenarioError> {
        let rate = raw.rate.unwrap_or(DEFAULT_RATE);
        if rate == 0 || rate > MAX_RATE {
            return Err(self.invalid(
                "load.rate",
                rate,
                format!("must be 1 to {MAX_RATE} requests per second"),
            ));
        }
        let protocol = match raw.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("http2") => Protocol::Http2,
            Some(other) => {
                return Err(self.invalid(
                    "load.protocol",
                    format!("{other:?}"),
                    "expected \"http1\" or \"http2\"",
                ));
            }
        };
        let max_in_flight = raw.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(self.invalid("load.max_in_flight", 0, "must be at least 1"));
        }
        let timeout = match &raw.timeout {
            Some(t) => self.duration("load.timeout", t)?,
            None => DEFAULT_REQUEST_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(self.invalid("load.timeout", "\"0s\"", "must be more than 0s"));
        }
        let requests = if raw.requests.is_empty() {
            reference_mix()
        } else {
            let mut out = Vec::with_capacity(raw.requests.len());
            for (i, r) in raw.requests.into_iter().enumerate() {
                let key = |field: &str| format!("load.requests[{i}].{field}");
                let method = Method::from_bytes(r.method.as_bytes()).map_err(|_| {
                    self.invalid(
                        &key("method"),
                        format!("{:?}", r.method),
                        "not an HTTP method",
                    )
                })?;
                if !r.path.starts_with('/') || r.path.parse::<Uri>().is_err() {
                    return Err(self.invalid(
                        &key("path"),
                        format!("{:?}", r.path),
                        "must be a path such as \"/catalogservice/api/1.0/catalogitem/1\"",
                    ));
                }
                if r.weight == 0 {
                    return Err(self.invalid(&key("weight"), 0, "must be at least 1"));
                }
                out.push(RequestSpec {
                    method,
                    path: r.path,
                    weight: r.weight,
                    body: Bytes::from(r.body.unwrap_or_default()),
                });
            }
            out
        };
        Ok(LoadSpec {
            rate,
            protocol,
            max_in_flight,
            timeout,
            requests,
        })
    }

    fn timeline(&self, raw: Vec<RawStep>, scenario: &Scenario) -> Result<Vec<Step>, ScenarioError> {
        let mut steps = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let key = |field: &str| format!("timeline[{i}].{field}");
            let at = self.duration(&key("at"), &r.at)?;
            if at >= scenario.duration {
                return Err(self.invalid(
                    &key("at"),
                    format!("{:?}", r.at),
                    format!(
                        "must be before the end of the drill (duration {:?})",
                        scenario.duration
                    ),
                ));
            }
            let target = match (&r.stamp, &r.region) {
                (Some(_), Some(region)) => {
                    return Err(self.invalid(
                        &key("region"),
                        format!("{region:?}"),
                        "give stamp or region, not both",
                    ));
                }
                (Some(stamp), None) => {
                    if !scenario.stamps.iter().any(|s| &s.name == stamp) {
                        return Err(self.invalid(
                            &key("stamp"),
                            format!("{stamp:?}"),
                            "no stamp of that name in [[stamps]]",
                        ));
                    }
                    Target::Stamp(stamp.clone())
                }
                (None, Some(region)) => {
                    if !scenario.stamps.iter().any(|s| &s.region == region) {
                        return Err(self.invalid(
                            &key("region"),
                            format!("{region:?}"),
                            "no stamp in that region in [[stamps]]",
                        ));
                    }
                    Target::Region(region.clone())
                }
                (None, None) => Target::Proxy,
            };
            let action = self.action(&r, &key)?;
            let needs_target = !matches!(action, Action::Reload(_));
            if needs_target && target == Target::Proxy {
                return Err(self.invalid(
                    &key("at"),
                    format!("{:?}", r.at),
                    "this step needs a stamp or a region",
                ));
            }
            if !needs_target && target != Target::Proxy {
                return Err(self.invalid(
                    &key("admin"),
                    "\"reload\"",
                    "a reload acts on the whole proxy; remove stamp/region",
                ));
            }
            if let (Action::Reload(Some(_)), ProxySpec::Existing { .. }) =
                (&action, &scenario.proxy)
            {
                return Err(self.invalid(
                    &key("config"),
                    format!("{:?}", r.config.unwrap_or_default()),
                    "a drill can replace the config only of a proxy it spawned",
                ));
            }
            if matches!(action, Action::Fault(_) | Action::Clear) {
                let uncontrolled = scenario.stamps.iter().find(|s| {
                    scenario.stamps_of(&target).contains(&s.name)
                        && s.control.is_none()
                        && matches!(scenario.proxy, ProxySpec::Existing { .. })
                });
                if let Some(s) = uncontrolled {
                    return Err(self.invalid(
                        &key("stamp"),
                        format!("{:?}", s.name),
                        "an existing stamp can be faulted only through its control URL (stamps[].control)",
                    ));
                }
            }
            steps.push(Step { at, target, action });
        }
        // A stable sort keeps file order for steps at the same offset.
        steps.sort_by_key(|s| s.at);
        Ok(steps)
    }

    fn action(&self, r: &RawStep, key: &dyn Fn(&str) -> String) -> Result<Action, ScenarioError> {
        let chosen =
            usize::from(r.fault.is_some()) + usize::from(r.clear) + usize::from(r.admin.is_some());
        if chosen != 1 {
            return Err(self.invalid(
                &key("at"),
                format!("{:?}", r.at),
                "each step needs exactly one of fault = {...}, clear = true, admin = \"drain\"|\"enable\"|\"reload\"",
            ));
        }
        if r.config.is_some() && r.admin.as_deref() != Some("reload") {
            return Err(self.invalid(
                &key("config"),
                format!("{:?}", r.config.clone().unwrap_or_default()),
                "only for admin = \"reload\"",
            ));
        }
        if let Some(fault) = &r.fault {
            if let Err(e) = fault.validate() {
                let json = serde_json::to_string(fault).unwrap_or_default();
                return Err(self.invalid(&key("fault"), json, e.to_string()));
            }
            if *fault == Fault::default() {
                return Err(self.invalid(
                    &key("fault"),
                    "{}",
                    "names no fault; use clear = true to recover",
                ));
            }
            return Ok(Action::Fault(fault.clone()));
        }
        if r.clear {
            return Ok(Action::Clear);
        }
        match r.admin.as_deref() {
            Some("drain") => Ok(Action::Drain),
            Some("enable") => Ok(Action::Enable),
            Some("reload") => Ok(Action::Reload(r.config.as_deref().map(|c| self.path(c)))),
            Some(other) => Err(self.invalid(
                &key("admin"),
                format!("{other:?}"),
                "expected \"drain\", \"enable\" or \"reload\"",
            )),
            None => unreachable!("exactly one action was counted above"),
        }
    }

    fn expect(&self, raw: RawExpect) -> Result<Expectations, ScenarioError> {
        let opt = |key: &str, v: &Option<String>| -> Result<Option<Duration>, ScenarioError> {
            v.as_deref().map(|s| self.duration(key, s)).transpose()
        };
        Ok(Expectations {
            max_errors: raw.max_errors,
            max_idempotent_errors: raw.max_idempotent_errors,
            shift_within: opt("expect.shift_within", &raw.shift_within)?,
            max_p99: opt("expect.max_p99", &raw.max_p99)?,
            recover_within: opt("expect.recover_within", &raw.recover_within)?,
        })
    }
}

/// The reference mix as request specs.
pub fn reference_mix() -> Vec<RequestSpec> {
    REFERENCE_MIX
        .iter()
        .map(|&(method, path, weight)| {
            let post = method == "POST";
            RequestSpec {
                method: if post { Method::POST } else { Method::GET },
                path: path.replace("{item}", &crate::stamp::item_id(0)),
                weight,
                body: if post {
                    Bytes::from_static(REFERENCE_POST_BODY.as_bytes())
                } else {
                    Bytes::new()
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "duration = \"5s\"\n[[stamps]]\nname = \"a-1\"\nregion = \"a\"\n[[stamps]]\nname = \"b-1\"\nregion = \"b\"\n";

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("s.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn minimal_scenario_gets_the_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.name, "s");
        assert_eq!(s.load.rate, DEFAULT_RATE);
        assert_eq!(s.load.requests.len(), 4);
        assert_eq!(s.load.requests.iter().map(|r| r.weight).sum::<u32>(), 34);
        assert!(matches!(
            s.proxy,
            ProxySpec::Spawned(ProxyConfigSource::Generated { .. })
        ));
        assert_eq!(s.regions(), ["a", "b"]);
    }

    #[test]
    fn a_hedged_proxy_takes_a_delay_or_a_quantile() {
        for ok in ["100ms", "p95"] {
            let s = parse(&format!("{MINIMAL}[proxy]\nhedge_after = \"{ok}\"\n")).unwrap();
            assert!(matches!(
                s.proxy,
                ProxySpec::Spawned(ProxyConfigSource::Generated { hedge_after: Some(ref h), .. }) if h == ok
            ));
        }
        let msg = error(&format!("{MINIMAL}[proxy]\nhedge_after = \"p100\"\n"));
        assert!(
            msg.contains("proxy.hedge_after = \"p100\": a quantile"),
            "{msg}"
        );
    }

    #[test]
    fn timeline_is_sorted_and_typed() {
        let text = format!(
            "{MINIMAL}[[timeline]]\nat = \"3s\"\nstamp = \"a-1\"\nclear = true\n\
             [[timeline]]\nat = \"1s\"\nregion = \"a\"\nfault = {{ down = true }}\n\
             [[timeline]]\nat = \"2s\"\nadmin = \"reload\"\n"
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.timeline[0].at, Duration::from_secs(1));
        assert_eq!(s.timeline[0].target, Target::Region("a".into()));
        assert!(matches!(s.timeline[1].action, Action::Reload(None)));
        assert!(matches!(s.timeline[2].action, Action::Clear));
    }

    #[test]
    fn unknown_key_names_the_path_and_line() {
        let msg = error(&format!("{MINIMAL}[load]\nrat = 5\n"));
        assert!(msg.contains("s.toml:"), "{msg}");
        assert!(msg.contains("load.rat"), "{msg}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"10x\"\nstamp = \"a-1\"\nclear = true\n"
        ));
        assert!(msg.contains("timeline[0].at = \"10x\""), "{msg}");
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"1s\"\nstamp = \"zz\"\nclear = true\n"
        ));
        assert!(msg.contains("timeline[0].stamp = \"zz\""), "{msg}");
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"9s\"\nstamp = \"a-1\"\nclear = true\n"
        ));
        assert!(
            msg.contains("timeline[0].at") && msg.contains("before the end"),
            "{msg}"
        );
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"1s\"\nstamp = \"a-1\"\nfault = {{ error_rate = 1.5 }}\n"
        ));
        assert!(
            msg.contains("timeline[0].fault") && msg.contains("1.5"),
            "{msg}"
        );
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"1s\"\nstamp = \"a-1\"\nfault = {{ lag = 1 }}\n"
        ));
        assert!(msg.contains("timeline[0].fault.lag"), "{msg}");
        let msg = error(&format!("{MINIMAL}[load]\nrate = 0\n"));
        assert!(msg.contains("load.rate = 0"), "{msg}");
        let msg = error(&format!("{MINIMAL}[expect]\nshift_within = \"1\"\n"));
        assert!(msg.contains("expect.shift_within = \"1\""), "{msg}");
        let msg = error(&format!("{MINIMAL}[proxy]\nmethod = \"random\"\n"));
        assert!(msg.contains("proxy.method = \"random\""), "{msg}");
    }

    #[test]
    fn a_step_needs_exactly_one_action() {
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"1s\"\nstamp = \"a-1\"\nclear = true\nadmin = \"drain\"\n"
        ));
        assert!(msg.contains("exactly one"), "{msg}");
        let msg = error(&format!(
            "{MINIMAL}[[timeline]]\nat = \"1s\"\nclear = true\n"
        ));
        assert!(msg.contains("needs a stamp or a region"), "{msg}");
    }

    #[test]
    fn existing_targets_need_control_urls_and_a_proxy_url() {
        let text = "duration = \"5s\"\n[[stamps]]\nname = \"a\"\nregion = \"r\"\ncontrol = \"http://127.0.0.1:1\"\n";
        let msg = error(text);
        assert!(msg.contains("stamps[0].control"), "{msg}");
        let text = "duration = \"5s\"\n[proxy]\nurl = \"http://127.0.0.1:2\"\nadmin = \"http://127.0.0.1:3\"\n\
                    [[stamps]]\nname = \"a\"\nregion = \"r\"\n[[timeline]]\nat = \"1s\"\nstamp = \"a\"\nfault = { down = true }\n";
        let msg = error(text);
        assert!(
            msg.contains("timeline[0].stamp = \"a\"") && msg.contains("control URL"),
            "{msg}"
        );
    }

    #[test]
    fn the_documented_example_parses_with_its_proxy_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/example/custom.toml");
        let s = Scenario::load(&path).unwrap();
        let ProxySpec::Spawned(ProxyConfigSource::File(config)) = &s.proxy else {
            panic!("the example spawns its proxy from a file: {:?}", s.proxy);
        };
        assert!(config.is_file(), "{}", config.display());
        assert_eq!(
            (s.timeline.len(), s.load.requests.len(), s.load.rate),
            (4, 2, 500)
        );
        assert!(s.expect.shift_within.is_some() && s.expect.recover_within.is_some());
    }
}
