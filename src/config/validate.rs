//! Stage two of the config: reads the file into [`raw`](super::raw) structs
//! and checks every value into the typed [`Config`], filling in the
//! [`defaults`](super::defaults). Every error names the file, the key path,
//! the value as written and the rule it breaks, so that `stampgate check`
//! and a failed reload tell the operator exactly what to fix.

mod dns_server;
mod fleet;
mod interpolate;
pub(crate) mod locate;
mod pem;
mod pool;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::defaults::*;
use super::raw::{
    RawAccessLog, RawAdmin, RawCertificate, RawConfig, RawDns, RawProxy, RawRetry, RawRoute,
};
use super::units::{format_duration, parse_duration, parse_size};
use super::{
    AccessLogFormat, AccessLogSettings, AdminSettings, CertificateConfig, Config,
    HealthListenerSettings, HedgeAfter, Http1Engine, PoolConfig, ProxySettings, RetryConfig,
    RouteConfig,
};
use crate::discovery::DnsSettings;

/// Why a config was refused. Every variant names the file; the message is
/// one line, meant to be printed as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", .file.display())]
    Io {
        /// The config file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a missing key or a value of the wrong
    /// type: `FILE:LINE:COLUMN: KEY = VALUE: MESSAGE`.
    #[error("{}", syntax_message(.file, *.line, *.column, .key.as_deref(), .value.as_deref(), .message))]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// 1-based line (0 when the parser gave no position).
        line: usize,
        /// 1-based column in characters (0 when unknown).
        column: usize,
        /// Dotted key path, when the position falls on a key or value.
        key: Option<String>,
        /// The value as written, when the position falls on a value.
        value: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A well-formed value that breaks a rule: `FILE: KEY = VALUE: RULE`.
    #[error("{}: {key} = {value}: {rule}", .file.display())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted key path, e.g. `pools.backend-apis.probe.timeout`.
        key: String,
        /// The offending value, TOML-quoted as in the file.
        value: String,
        /// The rule, e.g. `must be less than interval (1s)`.
        rule: String,
    },
}

fn syntax_message(
    file: &Path,
    line: usize,
    column: usize,
    key: Option<&str>,
    value: Option<&str>,
    message: &str,
) -> String {
    let mut out = file.display().to_string();
    if line > 0 {
        out.push_str(&format!(":{line}:{column}"));
    }
    match (key, value) {
        (Some(key), Some(value)) => out.push_str(&format!(": {key} = {value}")),
        (Some(key), None) => out.push_str(&format!(": {key}")),
        _ => {}
    }
    // toml's messages may span lines ("invalid array\nexpected `]`").
    out.push_str(&format!(": {}", message.trim().replace('\n', ", ")));
    out
}

/// Reads and validates the config file at `path`. Relative file paths inside
/// it (`cert`, `key`, `ca_file`, `state_file`) are resolved against the
/// file's directory, so the result does not depend on the working directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// Validates config `text` as if read from `source` (named in errors;
/// relative paths resolve against its directory). For tests and the
/// embedded demo config.
///
/// `${NAME}` in string values is replaced by the environment variable
/// `NAME` first (`$${` for a literal `${`); an unset variable is an error
/// naming the variable and the key.
pub fn parse_str(text: &str, source: &Path) -> Result<Config, ConfigError> {
    let text =
        interpolate::expand_document(text, &|name| std::env::var(name).ok()).map_err(|e| {
            ConfigError::Invalid {
                file: source.to_path_buf(),
                key: e.key,
                value: e.value,
                rule: e.rule,
            }
        })?;
    let raw: RawConfig = toml::from_str(&text).map_err(|e| syntax_error(&e, &text, source))?;
    Ctx::new(source).config(raw)
}

fn syntax_error(e: &toml::de::Error, text: &str, source: &Path) -> ConfigError {
    let location = e.span().map(|span| locate::locate(text, &span));
    let location = location.unwrap_or_default();
    ConfigError::Syntax {
        file: source.to_path_buf(),
        line: location.line,
        column: location.column,
        key: location.key,
        value: location.value,
        message: e.message().to_string(),
    }
}

/// One segment of a key path, quoted the way TOML would need it
/// (`headers."X Probe"`), so a path can be pasted back into the file.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { key.to_string() } else { quote(key) }
}

/// A string value as TOML writes it.
fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// The value a message shows for a duration key: as written, or the
/// default that was in force when the key was left out.
fn shown_duration(raw: Option<&str>, value: Duration) -> String {
    quote(raw.unwrap_or(&format_duration(value)))
}

/// A string list as TOML writes it.
fn quote_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// Validation context: which file is being checked (for messages) and where
/// relative paths start.
struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl<'a> Ctx<'a> {
    fn new(file: &'a Path) -> Self {
        let base = file.parent().unwrap_or(Path::new(""));
        Ctx { file, base }
    }

    fn invalid(&self, key: &str, value: impl fmt::Display, rule: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    /// A duration key; `default` when absent.
    fn duration(
        &self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match raw {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|rule| self.invalid(key, quote(s), rule)),
        }
    }

    /// A duration that must be above zero (a zero time limit fails every
    /// request; a zero interval spins).
    fn positive_duration(
        &self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, raw, default)?;
        if d.is_zero() {
            return Err(self.invalid(key, quote(raw.unwrap_or("0s")), "must be more than 0s"));
        }
        Ok(d)
    }

    /// A size key; `default` when absent.
    fn size(&self, key: &str, raw: Option<&str>, default: u64) -> Result<u64, ConfigError> {
        match raw {
            None => Ok(default),
            Some(s) => parse_size(s).map_err(|rule| self.invalid(key, quote(s), rule)),
        }
    }

    /// An integer key within `min..=max`; `default` when absent.
    fn int(
        &self,
        key: &str,
        raw: Option<i64>,
        default: u32,
        min: u32,
        max: u32,
    ) -> Result<u32, ConfigError> {
        let Some(n) = raw else { return Ok(default) };
        match u32::try_from(n) {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ if max == u32::MAX && n < i64::from(min) => {
                Err(self.invalid(key, n, format!("must be at least {min}")))
            }
            _ => Err(self.invalid(key, n, format!("must be between {min} and {max}"))),
        }
    }

    /// A name that ends up in URLs (`/admin/stamps/{name}/drain`), metrics
    /// labels and logs, so it is kept to characters that need no escaping.
    fn name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            return Ok(());
        }
        Err(self.invalid(
            key,
            quote(name),
            "must be non-empty and use only letters, digits, '-', '_' and '.'",
        ))
    }

    /// A listener address: an IP and a port, no host name (a listener binds
    /// an interface, and resolving a name at bind time hides mistakes).
    fn socket_addr(&self, key: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
        raw.parse().map_err(|_| {
            // "127.0.0.1:80800" fails to parse only for its port: say so,
            // rather than send the reader looking for a typo in the IP.
            let port = raw.rsplit_once(':').map(|(_, p)| p);
            let digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if let Some(port) = port.filter(digits)
                && port.parse::<u16>().is_err()
            {
                return self.invalid(
                    key,
                    quote(raw),
                    format!(
                        "port {port} is out of range: a port is a number from 0 to 65535 (0: any free port)"
                    ),
                );
            }
            self.invalid(
                key,
                quote(raw),
                "not a listen address: write IP:port, e.g. \"127.0.0.1:8080\", \"0.0.0.0:443\" or \"[::]:8443\"",
            )
        })
    }

    fn socket_addrs(&self, key: &str, raw: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
        raw.iter()
            .enumerate()
            .map(|(i, s)| self.socket_addr(&format!("{key}[{i}]"), s))
            .collect()
    }

    /// A file path key, resolved against the config file's directory.
    fn path(&self, key: &str, raw: &str) -> Result<PathBuf, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid(key, quote(raw), "empty path"));
        }
        Ok(self.base.join(raw))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let proxy = self.proxy(raw.proxy.unwrap_or_default())?;
        let admin = self.admin(raw.admin.unwrap_or_default())?;
        self.check_listener_overlap(&proxy, &admin)?;
        let pools = pool::pools(self, raw.pools.unwrap_or_default())?;
        let routes = self.routes(raw.routes.unwrap_or_default(), &pools)?;
        let dns = self.dns(raw.dns.unwrap_or_default())?;
        let access_log = self.access_log(raw.access_log.unwrap_or_default())?;
        let fleet = raw.fleet.map(|f| fleet::fleet(self, f)).transpose()?;
        let advertise = fleet.as_ref().map_or(&[][..], |f| f.advertise.as_slice());
        let dns_server = raw
            .dns_server
            .map(|d| dns_server::dns_server(self, d, &pools, advertise, &proxy, &admin))
            .transpose()?;
        let health = match raw.health.unwrap_or_default().listen {
            Some(l) => HealthListenerSettings {
                listen: Some(self.socket_addr("health.listen", &l)?),
            },
            None => HealthListenerSettings::default(),
        };
        self.check_health_overlap(&proxy, &admin, &health)?;
        Ok(Config {
            source: self.file.to_path_buf(),
            proxy,
            admin,
            routes,
            pools,
            dns,
            access_log,
            dns_server,
            fleet,
            health,
        })
    }

    fn access_log(&self, raw: RawAccessLog) -> Result<AccessLogSettings, ConfigError> {
        let sample = raw.sample.unwrap_or(DEFAULT_ACCESS_LOG_SAMPLE);
        if !(0.0..=1.0).contains(&sample) {
            return Err(self.invalid(
                "access_log.sample",
                sample,
                "must be between 0.0 (errors only) and 1.0 (every request)",
            ));
        }
        let path = match raw.path.as_deref().unwrap_or(DEFAULT_ACCESS_LOG_PATH) {
            "-" => None,
            p => Some(self.path("access_log.path", p)?),
        };
        let format = match raw.format.as_deref().unwrap_or(DEFAULT_ACCESS_LOG_FORMAT) {
            "json" => AccessLogFormat::Json,
            "text" => AccessLogFormat::Text,
            "combined" => AccessLogFormat::Combined,
            other => {
                return Err(self.invalid(
                    "access_log.format",
                    quote(other),
                    "must be \"json\", \"text\" or \"combined\"",
                ));
            }
        };
        Ok(AccessLogSettings {
            enabled: raw.enabled.unwrap_or(DEFAULT_ACCESS_LOG_ENABLED),
            sample,
            path,
            format,
        })
    }

    fn dns(&self, raw: RawDns) -> Result<DnsSettings, ConfigError> {
        let defaults = DnsSettings::default();
        let nameservers =
            self.socket_addrs("dns.nameservers", &raw.nameservers.unwrap_or_default())?;
        let min_ttl =
            self.positive_duration("dns.min_ttl", raw.min_ttl.as_deref(), defaults.min_ttl)?;
        let max_ttl = self.duration(
            "dns.max_ttl",
            raw.max_ttl.as_deref(),
            defaults.max_ttl.max(min_ttl),
        )?;
        if max_ttl < min_ttl {
            return Err(self.invalid(
                "dns.max_ttl",
                quote(raw.max_ttl.as_deref().unwrap_or_default()),
                format!(
                    "must not be less than min_ttl ({})",
                    format_duration(min_ttl)
                ),
            ));
        }
        let timeout =
            self.positive_duration("dns.timeout", raw.timeout.as_deref(), defaults.timeout)?;
        Ok(DnsSettings {
            nameservers,
            min_ttl,
            max_ttl,
            timeout,
        })
    }

    fn proxy(&self, raw: RawProxy) -> Result<ProxySettings, ConfigError> {
        let listen_raw = raw
            .listen
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
        let tls_raw = raw.tls_listen.unwrap_or_default();
        let listen = self.socket_addrs("proxy.listen", &listen_raw)?;
        let tls_listen = self.socket_addrs("proxy.tls_listen", &tls_raw)?;
        if listen.is_empty() && tls_listen.is_empty() {
            return Err(self.invalid(
                "proxy.listen",
                "[]",
                "no listener: set proxy.listen or proxy.tls_listen (or both)",
            ));
        }
        let certificates = raw
            .certificates
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.certificate(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        // Certificates without a TLS listener are allowed: a config can be
        // prepared before the listener is switched on.
        if !tls_listen.is_empty() && certificates.is_empty() {
            return Err(self.invalid(
                "proxy.tls_listen",
                quote_list(&tls_raw),
                "TLS listeners need at least one [[proxy.certificates]] entry",
            ));
        }
        let key = |k: &str| format!("proxy.{k}");
        let redirect = raw
            .redirect_http_to_https
            .unwrap_or(DEFAULT_REDIRECT_HTTP_TO_HTTPS);
        if redirect && tls_listen.is_empty() {
            return Err(self.invalid(
                &key("redirect_http_to_https"),
                "true",
                "needs a TLS listener to redirect to: set proxy.tls_listen",
            ));
        }
        let exempt = match raw.redirect_exempt_paths {
            None => DEFAULT_REDIRECT_EXEMPT_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            Some(paths) => {
                for (i, p) in paths.iter().enumerate() {
                    if !p.starts_with('/') {
                        return Err(self.invalid(
                            &format!("proxy.redirect_exempt_paths[{i}]"),
                            quote(p),
                            "must be a path prefix starting with '/'",
                        ));
                    }
                }
                paths
            }
        };
        Ok(ProxySettings {
            listen,
            tls_listen,
            max_request_body: self.size(
                &key("max_request_body"),
                raw.max_request_body.as_deref(),
                DEFAULT_MAX_REQUEST_BODY,
            )?,
            header_read_timeout: self.positive_duration(
                &key("header_read_timeout"),
                raw.header_read_timeout.as_deref(),
                DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            idle_timeout: self.positive_duration(
                &key("idle_timeout"),
                raw.idle_timeout.as_deref(),
                DEFAULT_IDLE_TIMEOUT,
            )?,
            shutdown_grace: self.duration(
                &key("shutdown_grace"),
                raw.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            )?,
            shutdown_delay: self.duration(
                &key("shutdown_delay"),
                raw.shutdown_delay.as_deref(),
                DEFAULT_SHUTDOWN_DELAY,
            )?,
            proxy_protocol: raw.proxy_protocol.unwrap_or(DEFAULT_PROXY_PROTOCOL),
            redirect_http_to_https: redirect,
            redirect_exempt_paths: exempt,
            certificates,
            stamp_header: raw.stamp_header.unwrap_or(DEFAULT_STAMP_HEADER),
            forwarded_headers: raw.forwarded_headers.unwrap_or(DEFAULT_FORWARDED_HEADERS),
            request_id: raw.request_id.unwrap_or(DEFAULT_REQUEST_ID),
            http1_engine: match raw.http1_engine.as_deref().unwrap_or(DEFAULT_HTTP1_ENGINE) {
                "fast" => Http1Engine::Fast,
                "hyper" => Http1Engine::Hyper,
                other => {
                    return Err(self.invalid(
                        &key("http1_engine"),
                        quote(other),
                        "must be \"fast\" or \"hyper\"",
                    ));
                }
            },
        })
    }

    fn certificate(&self, i: usize, raw: RawCertificate) -> Result<CertificateConfig, ConfigError> {
        let base = format!("proxy.certificates[{i}]");
        let server_names = raw
            .server_names
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(j, name)| self.server_name(&format!("{base}.server_names[{j}]"), name))
            .collect::<Result<Vec<_>, _>>()?;
        let (cert_key, key_key) = (format!("{base}.cert"), format!("{base}.key"));
        let cert_path = self.path(&cert_key, &raw.cert)?;
        let cert_chain = pem::load_certs(&cert_path)
            .map_err(|rule| self.invalid(&cert_key, quote(&raw.cert), rule))?;
        let key_path = self.path(&key_key, &raw.key)?;
        let key = pem::load_key(&key_path)
            .map_err(|rule| self.invalid(&key_key, quote(&raw.key), rule))?;
        pem::check_pair(&cert_chain, &key, &cert_path)
            .map_err(|rule| self.invalid(&key_key, quote(&raw.key), rule))?;
        Ok(CertificateConfig {
            server_names,
            cert_path,
            key_path,
            cert_chain,
            key: Arc::new(key),
        })
    }

    /// An SNI name: a host name, or `*.` and a host name; lower-cased
    /// because SNI matching is case-insensitive.
    fn server_name(&self, key: &str, raw: &str) -> Result<String, ConfigError> {
        let name = raw.to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        check_host_name(bare).map_err(|rule| {
            self.invalid(
                key,
                quote(raw),
                format!("{rule} (exact name or \"*.example.com\")"),
            )
        })?;
        Ok(name)
    }

    fn admin(&self, raw: RawAdmin) -> Result<AdminSettings, ConfigError> {
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = self.socket_addr("admin.listen", listen)?;
        if let Some(var) = &raw.token_env {
            let ok = !var.is_empty()
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(self.invalid(
                    "admin.token_env",
                    quote(var),
                    "must be an environment variable name (letters, digits, '_'), e.g. \"STAMPGATE_ADMIN_TOKEN\"",
                ));
            }
        }
        let state_file = match &raw.state_file {
            Some(p) => Some(self.path("admin.state_file", p)?),
            None => None,
        };
        Ok(AdminSettings {
            listen,
            token_env: raw.token_env,
            state_file,
        })
    }

    /// Two listeners on one socket fail at bind time, in the middle of a
    /// start or reload; a wildcard address (`0.0.0.0`, `[::]`) takes its
    /// port on every interface. Port 0 (pick a free port) never collides.
    fn check_listener_overlap(
        &self,
        proxy: &ProxySettings,
        admin: &AdminSettings,
    ) -> Result<(), ConfigError> {
        let keyed = |key: &str, addrs: &[SocketAddr]| -> Vec<(String, SocketAddr)> {
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("{key}[{i}]"), *a))
                .collect()
        };
        let mut all = keyed("proxy.listen", &proxy.listen);
        all.extend(keyed("proxy.tls_listen", &proxy.tls_listen));
        all.push(("admin.listen".to_string(), admin.listen));
        for (j, (key, addr)) in all.iter().enumerate() {
            if let Some((earlier, other)) = all[..j].iter().find(|(_, a)| overlaps(*a, *addr)) {
                return Err(self.invalid(
                    key,
                    quote(&addr.to_string()),
                    format!(
                        "overlaps {earlier} ({other}): both would bind port {}",
                        addr.port()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `health.listen` must not take a port another listener binds
    /// (port 0 never collides).
    fn check_health_overlap(
        &self,
        proxy: &ProxySettings,
        admin: &AdminSettings,
        health: &HealthListenerSettings,
    ) -> Result<(), ConfigError> {
        let Some(addr) = health.listen else {
            return Ok(());
        };
        let others = proxy
            .listen
            .iter()
            .map(|a| ("proxy.listen", *a))
            .chain(proxy.tls_listen.iter().map(|a| ("proxy.tls_listen", *a)))
            .chain(std::iter::once(("admin.listen", admin.listen)));
        for (key, other) in others {
            if overlaps(addr, other) {
                return Err(self.invalid(
                    "health.listen",
                    quote(&addr.to_string()),
                    format!(
                        "overlaps {key} ({other}): both would bind port {}",
                        addr.port()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn routes(
        &self,
        raw: Vec<RawRoute>,
        pools: &[PoolConfig],
    ) -> Result<Vec<RouteConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid(
                "routes",
                "[]",
                "no routes: add at least one [[routes]] entry",
            ));
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut matchers: HashMap<(String, String), usize> = HashMap::new();
        let mut routes = Vec::with_capacity(raw.len());
        for (i, raw) in raw.into_iter().enumerate() {
            let route = self.route(i, raw, pools)?;
            if let Some(first) = names.insert(route.name.clone(), i) {
                return Err(self.invalid(
                    &format!("routes[{i}].name"),
                    quote(&route.name),
                    format!("duplicate route name: also routes[{first}].name"),
                ));
            }
            for host in &route.hosts {
                let matcher = (host.clone(), route.path_prefix.clone());
                if let Some(first) = matchers.insert(matcher, i) {
                    return Err(self.invalid(
                        &format!("routes[{i}].path_prefix"),
                        quote(&route.path_prefix),
                        format!(
                            "routes[{first}] already matches host {} with this prefix; this route could never be chosen",
                            quote(host)
                        ),
                    ));
                }
            }
            routes.push(route);
        }
        Ok(routes)
    }

    fn route(
        &self,
        i: usize,
        raw: RawRoute,
        pools: &[PoolConfig],
    ) -> Result<RouteConfig, ConfigError> {
        let key = |k: &str| format!("routes[{i}].{k}");
        self.name(&key("name"), &raw.name)?;
        let hosts = self.route_hosts(&key("hosts"), raw.hosts)?;
        let path_prefix = raw
            .path_prefix
            .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_string());
        if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ']) {
            return Err(self.invalid(
                &key("path_prefix"),
                quote(&path_prefix),
                "must start with '/' and contain no spaces, '?' or '#'",
            ));
        }
        if !pools.iter().any(|p| p.name == raw.pool) {
            return Err(self.invalid(&key("pool"), quote(&raw.pool), missing_pool_rule(pools)));
        }
        let timeout = self.positive_duration(
            &key("timeout"),
            raw.timeout.as_deref(),
            DEFAULT_ROUTE_TIMEOUT,
        )?;
        let retry = self.retry(&key("retry"), raw.retry.unwrap_or_default(), timeout)?;
        Ok(RouteConfig {
            name: raw.name,
            hosts,
            path_prefix,
            pool: raw.pool,
            timeout,
            retry,
        })
    }

    /// Route hosts: `*` or exact names, lower-cased (Host matching is
    /// case-insensitive), without a port.
    fn route_hosts(&self, key: &str, raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(vec![DEFAULT_ROUTE_HOST.to_string()]);
        };
        if raw.is_empty() {
            return Err(self.invalid(key, "[]", "empty list: leave hosts out to match any host"));
        }
        raw.iter()
            .enumerate()
            .map(|(i, host)| {
                let lower = host.to_ascii_lowercase();
                if lower == DEFAULT_ROUTE_HOST {
                    return Ok(lower);
                }
                check_host_name(&lower).map(|()| lower).map_err(|rule| {
                    self.invalid(
                        &format!("{key}[{i}]"),
                        quote(host),
                        format!("{rule} (an exact host name without port, or \"*\" for any)"),
                    )
                })
            })
            .collect()
    }

    fn retry(
        &self,
        key: &str,
        raw: RawRetry,
        route_timeout: Duration,
    ) -> Result<RetryConfig, ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        let attempts = self.int(
            &key("attempts"),
            raw.attempts,
            DEFAULT_RETRY_ATTEMPTS,
            1,
            MAX_RETRY_ATTEMPTS,
        )?;
        let budget_percent = self.int(
            &key("budget_percent"),
            raw.budget_percent,
            DEFAULT_RETRY_BUDGET_PERCENT,
            0,
            100,
        )?;
        // The default never exceeds a short route timeout; an explicit value
        // that does is a mistake (the route would end every try first).
        let per_try_default = DEFAULT_PER_TRY_TIMEOUT.min(route_timeout);
        let per_try_timeout = self.positive_duration(
            &key("per_try_timeout"),
            raw.per_try_timeout.as_deref(),
            per_try_default,
        )?;
        if per_try_timeout > route_timeout {
            return Err(self.invalid(
                &key("per_try_timeout"),
                shown_duration(raw.per_try_timeout.as_deref(), per_try_timeout),
                format!(
                    "must not exceed the route timeout ({})",
                    format_duration(route_timeout)
                ),
            ));
        }
        let replay_limit = self.size(
            &key("replay_limit"),
            raw.replay_limit.as_deref(),
            DEFAULT_REPLAY_LIMIT,
        )?;
        let hedge_after = match raw.hedge_after.as_deref() {
            None => None,
            Some(text) => {
                let hedge_key = key("hedge_after");
                let after = parse_hedge_after(text)
                    .map_err(|rule| self.invalid(&hedge_key, quote(text), rule))?;
                if let HedgeAfter::Fixed(after) = after
                    && after >= per_try_timeout
                {
                    return Err(self.invalid(
                        &hedge_key,
                        quote(text),
                        format!(
                            "must be less than per_try_timeout ({}): the first try would end before its hedge",
                            format_duration(per_try_timeout)
                        ),
                    ));
                }
                if attempts < 2 {
                    return Err(self.invalid(
                        &hedge_key,
                        quote(text),
                        "a hedge is a second try: needs retry.attempts of at least 2 (is 1)",
                    ));
                }
                Some(after)
            }
        };
        Ok(RetryConfig {
            hedge_after,
            attempts,
            budget_percent,
            per_try_timeout,
            replay_limit,
            on_server_error: raw.on_server_error.unwrap_or(DEFAULT_RETRY_ON_SERVER_ERROR),
        })
    }
}

/// `retry.hedge_after` on its own: a duration above zero, or a quantile
/// `"p50"`..`"p99.9"`; the error is the rule broken. (How it compares with
/// the route's other keys is checked with them.)
pub fn parse_hedge_after(text: &str) -> Result<HedgeAfter, String> {
    match quantile_text(text) {
        Some(q) => q
            .map(HedgeAfter::Quantile)
            .ok_or_else(|| "a quantile must be from p50 to p99.9 (e.g. \"p95\")".to_owned()),
        None => match parse_duration(text)? {
            d if d.is_zero() => Err("must be more than 0s".to_owned()),
            d => Ok(HedgeAfter::Fixed(d)),
        },
    }
}

/// `"p95"`, `"p99.9"`: `Some` of the quantile as a fraction when in
/// 50..=99.9 percent, `Some(None)` when it is out of range or not a number;
/// `None` for anything not written as `pNN` (a duration, say).
fn quantile_text(text: &str) -> Option<Option<f64>> {
    let percent = text.strip_prefix('p')?;
    if !percent.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let q = percent
        .parse::<f64>()
        .ok()
        .filter(|p| (50.0..=99.9).contains(p))
        .map(|p| p / 100.0);
    Some(q)
}

fn missing_pool_rule(pools: &[PoolConfig]) -> String {
    if pools.is_empty() {
        return "no such pool (no [pools.NAME] is defined)".to_string();
    }
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    format!("no such pool; defined pools: {}", names.join(", "))
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A DNS host name or an IPv4 address: dot-separated labels of letters,
/// digits, '-' and '_' (1 to 63 characters each), at most 253 characters.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".to_string());
    }
    if name.contains(':') {
        return Err("not a host name (no port or scheme here)".to_string());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("not a valid host name".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_quantiles_are_written_p50_to_p99_9() {
        assert_eq!(quantile_text("p95"), Some(Some(0.95)));
        let q = quantile_text("p99.9").flatten().unwrap();
        assert!((q - 0.999).abs() < 1e-12, "{q}");
        assert_eq!(quantile_text("p50"), Some(Some(0.5)));
        for out in ["p49", "p100", "p99.95x", "p9x"] {
            assert_eq!(quantile_text(out), Some(None), "{out}");
        }
        for duration in ["100ms", "1s", "p", "pp95", ""] {
            assert_eq!(quantile_text(duration), None, "{duration}");
        }
    }

    #[test]
    fn example_config_passes_from_any_working_directory() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stampgate.toml");
        let cfg = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.pools.len(), 1);
        assert_eq!(cfg.pools[0].stamps.len(), 3);
        assert!(cfg.proxy.tls_listen.is_empty());
        let state = cfg.admin.state_file.expect("state_file set");
        assert_eq!(
            state,
            path.parent().expect("dir").join("var/stampgate-state.json")
        );
    }

    #[test]
    fn demo_config_parses_as_embedded() {
        let text = include_str!("../../config/demo.toml");
        let cfg = parse_str(text, Path::new("config/demo.toml")).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = cfg.pools[0]
            .stamps
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["westeurope-1", "eastus2-1", "southeastasia-1"]);
        assert_eq!(cfg.pools[0].probe.sample_size, 3);
        assert_eq!(cfg.pools[0].outlier.consecutive_failures, 3);
    }

    #[test]
    fn key_segments_quote_only_when_needed() {
        assert_eq!(key_segment("backend-apis"), "backend-apis");
        assert_eq!(key_segment("X Probe"), "\"X Probe\"");
        assert_eq!(key_segment("a.b"), "\"a.b\"");
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("127.0.0.1:80"), a("[::]:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn host_names() {
        assert!(check_host_name("catalog.example.com").is_ok());
        assert!(check_host_name("127.0.0.1").is_ok());
        assert!(check_host_name("").is_err());
        assert!(check_host_name("a..b").is_err());
        assert!(check_host_name("example.com:80").is_err());
        assert!(check_host_name("exa mple.com").is_err());
    }

    #[test]
    fn syntax_message_without_position_or_key() {
        let m = syntax_message(Path::new("f.toml"), 0, 0, None, None, "bad\nthing");
        assert_eq!(m, "f.toml: bad, thing");
        let m = syntax_message(Path::new("f.toml"), 3, 7, Some("a.b"), Some("1"), "oops");
        assert_eq!(m, "f.toml:3:7: a.b = 1: oops");
    }
}
