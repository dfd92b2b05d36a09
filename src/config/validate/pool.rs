//! Validation of `[pools.NAME]`: routing method, probe, outlier detection
//! and stamps. Stamp names are checked for uniqueness across all pools,
//! because the admin API addresses a stamp by name alone.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue};

use super::{Ctx, check_host_name, key_segment, pem, quote, quote_list, shown_duration};
use crate::config::defaults::*;
use crate::config::raw::{
    RawHealth, RawOutlier, RawPool, RawProbe, RawStamp, RawUpstreamTls, RawUpstreamTlsTable,
};
use crate::config::units::format_duration;
use crate::config::{
    AllUnhealthy, ClientCertConfig, ConfigError, HealthConfig, Method, OutlierConfig, PoolConfig,
    ProbeConfig, StampConfig,
};

/// Validates every pool, in name order.
pub(super) fn pools(
    ctx: &Ctx<'_>,
    raw: BTreeMap<String, RawPool>,
) -> Result<Vec<PoolConfig>, ConfigError> {
    // Stamp name -> where it was first defined, across all pools.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut pools = Vec::with_capacity(raw.len());
    for (name, raw) in raw {
        let pool = pool(ctx, &name, raw)?;
        for (i, stamp) in pool.stamps.iter().enumerate() {
            let here = format!("pools.{}.stamps[{i}]", key_segment(&name));
            if let Some(first) = seen.insert(stamp.name.clone(), here.clone()) {
                return Err(ctx.invalid(
                    &format!("{here}.name"),
                    quote(&stamp.name),
                    format!("duplicate stamp name: already used by {first}; stamp names must be unique across all pools"),
                ));
            }
        }
        pools.push(pool);
    }
    Ok(pools)
}

fn pool(ctx: &Ctx<'_>, name: &str, raw: RawPool) -> Result<PoolConfig, ConfigError> {
    let base = format!("pools.{}", key_segment(name));
    let key = |k: &str| format!("{base}.{k}");
    ctx.name(&base, name)?;
    let method = method(ctx, &key("method"), raw.method.as_deref())?;
    let all_unhealthy = all_unhealthy(ctx, &key("all_unhealthy"), raw.all_unhealthy.as_deref())?;
    let (upstream_tls, tls_table) = match raw.upstream_tls {
        None => (DEFAULT_UPSTREAM_TLS, None),
        Some(RawUpstreamTls::On(on)) => (on, None),
        // The table form is TLS with settings: there is no table that
        // means "off".
        Some(RawUpstreamTls::Table(t)) => (true, Some(t)),
    };
    let tls_table = tls_table.unwrap_or_default();
    let probe = probe(
        ctx,
        &key("probe"),
        raw.probe.unwrap_or_default(),
        upstream_tls,
    )?;
    let ca_file = match (&raw.ca_file, &tls_table.ca_file) {
        (None, None) => None,
        (Some(_), Some(inner)) => {
            return Err(ctx.invalid(
                &key("upstream_tls.ca_file"),
                quote(inner),
                format!("{} is set too; name the trust file once", key("ca_file")),
            ));
        }
        (Some(raw_path), None) => {
            // A trust file that nothing uses hides a forgotten upstream_tls.
            if !upstream_tls && !probe.https {
                return Err(ctx.invalid(
                    &key("ca_file"),
                    quote(raw_path),
                    "only used with upstream_tls = true or probe.https = true",
                ));
            }
            Some(ca_file(ctx, &key("ca_file"), raw_path)?)
        }
        (None, Some(raw_path)) => Some(ca_file(ctx, &key("upstream_tls.ca_file"), raw_path)?),
    };
    let client_cert = client_cert(ctx, &key("upstream_tls"), &tls_table)?;
    let tls_server_name = match &tls_table.server_name {
        None => None,
        Some(n) => {
            rustls::pki_types::ServerName::try_from(n.as_str()).map_err(|_| {
                ctx.invalid(
                    &key("upstream_tls.server_name"),
                    quote(n),
                    "must be a DNS name or an IP address",
                )
            })?;
            Some(n.clone())
        }
    };
    let host_header = match raw.host_header {
        Some(h) => Some(authority(ctx, &key("host_header"), h)?),
        None => None,
    };
    Ok(PoolConfig {
        name: name.to_string(),
        method,
        latency_sensitivity: ctx.duration(
            &key("latency_sensitivity"),
            raw.latency_sensitivity.as_deref(),
            DEFAULT_LATENCY_SENSITIVITY,
        )?,
        all_unhealthy,
        slow_start: ctx.duration(
            &key("slow_start"),
            raw.slow_start.as_deref(),
            DEFAULT_SLOW_START,
        )?,
        upstream_tls,
        ca_file,
        client_cert,
        tls_server_name,
        upstream_http2: raw.upstream_http2.unwrap_or(DEFAULT_UPSTREAM_HTTP2),
        host_header,
        connect_timeout: ctx.positive_duration(
            &key("connect_timeout"),
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        read_timeout: ctx.positive_duration(
            &key("read_timeout"),
            raw.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        )?,
        probe,
        outlier: outlier(ctx, &key("outlier"), raw.outlier.unwrap_or_default())?,
        health: health(ctx, &key("health"), raw.health.unwrap_or_default())?,
        stamps: stamps(ctx, &base, raw.stamps.unwrap_or_default())?,
    })
}

/// A PEM trust file, checked to hold a certificate.
fn ca_file(ctx: &Ctx<'_>, key: &str, raw_path: &str) -> Result<PathBuf, ConfigError> {
    let path = ctx.path(key, raw_path)?;
    pem::load_certs(&path).map_err(|rule| ctx.invalid(key, quote(raw_path), rule))?;
    Ok(path)
}

/// `upstream_tls.cert` and `.key`: both or neither, loaded and checked to
/// be a pair, so a wrong file fails `check` instead of every handshake.
fn client_cert(
    ctx: &Ctx<'_>,
    base: &str,
    t: &RawUpstreamTlsTable,
) -> Result<Option<ClientCertConfig>, ConfigError> {
    let (cert_key, key_key) = (format!("{base}.cert"), format!("{base}.key"));
    let (raw_cert, raw_key) = match (&t.cert, &t.key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(c), None) => {
            return Err(ctx.invalid(&cert_key, quote(c), format!("needs {key_key} too")));
        }
        (None, Some(k)) => {
            return Err(ctx.invalid(&key_key, quote(k), format!("needs {cert_key} too")));
        }
    };
    let cert_path = ctx.path(&cert_key, raw_cert)?;
    let cert_chain = pem::load_certs(&cert_path)
        .map_err(|rule| ctx.invalid(&cert_key, quote(raw_cert), rule))?;
    let key_path = ctx.path(&key_key, raw_key)?;
    let key =
        pem::load_key(&key_path).map_err(|rule| ctx.invalid(&key_key, quote(raw_key), rule))?;
    pem::check_pair(&cert_chain, &key, &cert_path)
        .map_err(|rule| ctx.invalid(&key_key, quote(raw_key), rule))?;
    Ok(Some(ClientCertConfig {
        cert_path,
        key_path,
        cert_chain,
        key: Arc::new(key),
    }))
}

fn method(ctx: &Ctx<'_>, key: &str, raw: Option<&str>) -> Result<Method, ConfigError> {
    match raw.unwrap_or(DEFAULT_METHOD) {
        "priority" => Ok(Method::Priority),
        "weighted" => Ok(Method::Weighted),
        "latency" => Ok(Method::Latency),
        other => Err(ctx.invalid(
            key,
            quote(other),
            "must be one of \"priority\", \"weighted\", \"latency\"",
        )),
    }
}

fn all_unhealthy(ctx: &Ctx<'_>, key: &str, raw: Option<&str>) -> Result<AllUnhealthy, ConfigError> {
    match raw.unwrap_or(DEFAULT_ALL_UNHEALTHY) {
        "fail-open" => Ok(AllUnhealthy::FailOpen),
        "fail-closed" => Ok(AllUnhealthy::FailClosed),
        other => Err(ctx.invalid(
            key,
            quote(other),
            "must be \"fail-open\" or \"fail-closed\"",
        )),
    }
}

/// A `host[:port]` for a `Host` header.
fn authority(ctx: &Ctx<'_>, key: &str, raw: String) -> Result<String, ConfigError> {
    match Authority::from_str(&raw) {
        Ok(a) if !a.host().is_empty() && !raw.contains('@') => Ok(raw),
        _ => Err(ctx.invalid(
            key,
            quote(&raw),
            "must be host or host:port, e.g. \"catalog.example.com\"",
        )),
    }
}

fn probe(
    ctx: &Ctx<'_>,
    base: &str,
    raw: RawProbe,
    upstream_tls: bool,
) -> Result<ProbeConfig, ConfigError> {
    let key = |k: &str| format!("{base}.{k}");
    let (interval, unhealthy_interval, timeout) = probe_timing(ctx, base, &raw)?;
    let fast_interval = fast_interval(ctx, base, &raw, interval)?;
    let (sample_size, successful_samples_required) = probe_window(ctx, base, &raw)?;
    let path = raw.path.unwrap_or_else(|| DEFAULT_PROBE_PATH.to_string());
    if !path.starts_with('/') || PathAndQuery::from_str(&path).is_err() {
        return Err(ctx.invalid(
            &key("path"),
            quote(&path),
            "must be a URL path starting with '/'",
        ));
    }
    let method = match raw.method.as_deref().unwrap_or(DEFAULT_PROBE_METHOD) {
        "GET" => http::Method::GET,
        "HEAD" => http::Method::HEAD,
        other => {
            return Err(ctx.invalid(&key("method"), quote(other), "must be \"GET\" or \"HEAD\""));
        }
    };
    let expect_body = match raw.expect_body {
        Some(body) if body.is_empty() => {
            return Err(ctx.invalid(
                &key("expect_body"),
                "\"\"",
                "empty: leave the key out to accept any body",
            ));
        }
        Some(body) if method == http::Method::HEAD => {
            return Err(ctx.invalid(
                &key("expect_body"),
                quote(&body),
                "a HEAD response has no body: use method = \"GET\" or drop expect_body",
            ));
        }
        other => other,
    };
    let host = match raw.host {
        Some(h) => Some(authority(ctx, &key("host"), h)?),
        None => None,
    };
    Ok(ProbeConfig {
        path,
        method,
        https: raw.https.unwrap_or(upstream_tls),
        interval,
        unhealthy_interval,
        fast_interval,
        timeout,
        sample_size,
        successful_samples_required,
        expect_status: expect_status(ctx, &key("expect_status"), raw.expect_status)?,
        expect_body,
        headers: headers(ctx, &key("headers"), raw.headers.unwrap_or_default())?,
        host,
        jitter_percent: ctx.int(
            &key("jitter_percent"),
            raw.jitter_percent,
            DEFAULT_PROBE_JITTER_PERCENT,
            0,
            50,
        )?,
    })
}

/// `interval`, `unhealthy_interval` and `timeout`. A probe that may run
/// longer than the interval would overlap the next one and delay the verdict.
fn probe_timing(
    ctx: &Ctx<'_>,
    base: &str,
    raw: &RawProbe,
) -> Result<(Duration, Duration, Duration), ConfigError> {
    let key = |k: &str| format!("{base}.{k}");
    let interval = ctx.positive_duration(
        &key("interval"),
        raw.interval.as_deref(),
        DEFAULT_PROBE_INTERVAL,
    )?;
    // Recovery is noticed twice as fast as failure is sampled.
    let unhealthy_interval = ctx.positive_duration(
        &key("unhealthy_interval"),
        raw.unhealthy_interval.as_deref(),
        (interval / 2).max(Duration::from_millis(1)),
    )?;
    let timeout_default = DEFAULT_PROBE_TIMEOUT
        .min(interval / 2)
        .max(Duration::from_millis(1));
    let timeout =
        ctx.positive_duration(&key("timeout"), raw.timeout.as_deref(), timeout_default)?;
    if timeout >= interval {
        return Err(ctx.invalid(
            &key("timeout"),
            shown_duration(raw.timeout.as_deref(), timeout),
            format!("must be less than interval ({})", format_duration(interval)),
        ));
    }
    Ok((interval, unhealthy_interval, timeout))
}

/// `fast_interval`: a quarter of `interval` but at least
/// [`MIN_PROBE_FAST_INTERVAL`] (and never above `interval`). Longer than
/// `interval` would make a failed probe slow the verdict down.
fn fast_interval(
    ctx: &Ctx<'_>,
    base: &str,
    raw: &RawProbe,
    interval: Duration,
) -> Result<Duration, ConfigError> {
    let key = format!("{base}.fast_interval");
    let default = (interval / 4).max(MIN_PROBE_FAST_INTERVAL).min(interval);
    let fast = ctx.positive_duration(&key, raw.fast_interval.as_deref(), default)?;
    if fast > interval {
        return Err(ctx.invalid(
            &key,
            shown_duration(raw.fast_interval.as_deref(), fast),
            format!(
                "must not be longer than interval ({})",
                format_duration(interval)
            ),
        ));
    }
    Ok(fast)
}

/// `sample_size` and `successful_samples_required` (M of the last N).
fn probe_window(ctx: &Ctx<'_>, base: &str, raw: &RawProbe) -> Result<(u32, u32), ConfigError> {
    let key = |k: &str| format!("{base}.{k}");
    let size = ctx.int(
        &key("sample_size"),
        raw.sample_size,
        DEFAULT_SAMPLE_SIZE,
        1,
        MAX_SAMPLE_SIZE,
    )?;
    let required_key = key("successful_samples_required");
    let default_required = DEFAULT_SUCCESSFUL_SAMPLES_REQUIRED.min(size);
    let required = ctx.int(
        &required_key,
        raw.successful_samples_required,
        default_required,
        1,
        u32::MAX,
    )?;
    if required > size {
        return Err(ctx.invalid(
            &required_key,
            required,
            format!("must not exceed sample_size ({size})"),
        ));
    }
    Ok((size, required))
}

/// `["200", "200-299"]` into inclusive ranges.
fn expect_status(
    ctx: &Ctx<'_>,
    key: &str,
    raw: Option<Vec<String>>,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec![DEFAULT_EXPECT_STATUS]);
    };
    if raw.is_empty() {
        return Err(ctx.invalid(
            key,
            quote_list(&raw),
            "empty list: leave the key out to accept 200-399",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, entry)| {
            status_range(entry).ok_or_else(|| {
                ctx.invalid(
                    &format!("{key}[{i}]"),
                    quote(entry),
                    "must be a status \"200\" or a range \"200-299\" within 100-599, low to high",
                )
            })
        })
        .collect()
}

fn status_range(entry: &str) -> Option<(u16, u16)> {
    let (low, high) = entry.split_once('-').unwrap_or((entry, entry));
    let parse = |s: &str| -> Option<u16> {
        let digits = s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| s.parse().ok()).flatten()
    };
    let (low, high) = (parse(low)?, parse(high)?);
    (100 <= low && low <= high && high <= 599).then_some((low, high))
}

fn headers(
    ctx: &Ctx<'_>,
    key: &str,
    raw: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    raw.into_iter()
        .map(|(name, value)| {
            let key = format!("{key}.{}", key_segment(&name));
            let header = HeaderName::from_str(&name)
                .map_err(|_| ctx.invalid(&key, quote(&value), "not a valid header name"))?;
            if header == http::header::HOST {
                return Err(ctx.invalid(
                    &key,
                    quote(&value),
                    "set the probe's Host with probe.host instead",
                ));
            }
            let value = HeaderValue::from_str(&value).map_err(|_| {
                ctx.invalid(
                    &key,
                    quote(&value),
                    "not a valid header value (visible ASCII only)",
                )
            })?;
            Ok((header, value))
        })
        .collect()
}

fn outlier(ctx: &Ctx<'_>, base: &str, raw: RawOutlier) -> Result<OutlierConfig, ConfigError> {
    let key = |k: &str| format!("{base}.{k}");
    let consecutive_failures = ctx.int(
        &key("consecutive_failures"),
        raw.consecutive_failures,
        DEFAULT_CONSECUTIVE_FAILURES,
        1,
        u32::MAX,
    )?;
    let base_ejection = ctx.positive_duration(
        &key("base_ejection"),
        raw.base_ejection.as_deref(),
        DEFAULT_BASE_EJECTION,
    )?;
    // A long base ejection lifts the default cap rather than failing.
    let max_ejection = ctx.duration(
        &key("max_ejection"),
        raw.max_ejection.as_deref(),
        DEFAULT_MAX_EJECTION.max(base_ejection),
    )?;
    if max_ejection < base_ejection {
        return Err(ctx.invalid(
            &key("max_ejection"),
            shown_duration(raw.max_ejection.as_deref(), max_ejection),
            format!(
                "must not be less than base_ejection ({})",
                format_duration(base_ejection)
            ),
        ));
    }
    let max_ejected_percent = ctx.int(
        &key("max_ejected_percent"),
        raw.max_ejected_percent,
        DEFAULT_MAX_EJECTED_PERCENT,
        0,
        100,
    )?;
    let failure_rate = raw.failure_rate.unwrap_or(DEFAULT_FAILURE_RATE);
    if !(0.0..=1.0).contains(&failure_rate) {
        return Err(ctx.invalid(
            &key("failure_rate"),
            failure_rate,
            "must be a share from 0 (off) to 1",
        ));
    }
    let failure_rate_min_requests = ctx.int(
        &key("failure_rate_min_requests"),
        raw.failure_rate_min_requests,
        DEFAULT_FAILURE_RATE_MIN_REQUESTS,
        1,
        u32::MAX,
    )?;
    let latency_factor = raw.latency_factor.unwrap_or(DEFAULT_LATENCY_FACTOR);
    if !(latency_factor > 1.0 && latency_factor.is_finite()) {
        return Err(ctx.invalid(
            &key("latency_factor"),
            latency_factor,
            "must be above 1: a stamp is an outlier when its latency is this many times the pool median",
        ));
    }
    let latency_floor = ctx.duration(
        &key("latency_floor"),
        raw.latency_floor.as_deref(),
        DEFAULT_LATENCY_FLOOR,
    )?;
    Ok(OutlierConfig {
        latency_factor,
        latency_floor,
        failure_rate: (failure_rate > 0.0).then_some(failure_rate),
        failure_rate_min_requests,
        consecutive_failures,
        base_ejection,
        max_ejection,
        max_ejected_percent,
    })
}

fn health(ctx: &Ctx<'_>, base: &str, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
    let key = |k: &str| format!("{base}.{k}");
    let degraded_rtt = match raw.degraded_rtt.as_deref() {
        None => None,
        Some(s) => Some(ctx.positive_duration(&key("degraded_rtt"), Some(s), Duration::ZERO)?),
    };
    let degraded_error_rate = raw
        .degraded_error_rate
        .unwrap_or(DEFAULT_DEGRADED_ERROR_RATE);
    if !(degraded_error_rate > 0.0 && degraded_error_rate <= 1.0) {
        return Err(ctx.invalid(
            &key("degraded_error_rate"),
            degraded_error_rate,
            "must be a share above 0 and at most 1 (e.g. 0.1 for 10 %)",
        ));
    }
    Ok(HealthConfig {
        degraded_rtt,
        degraded_error_rate,
        degraded_weight_percent: ctx.int(
            &key("degraded_weight_percent"),
            raw.degraded_weight_percent,
            DEFAULT_DEGRADED_WEIGHT_PERCENT,
            1,
            100,
        )?,
        min_hold: ctx.duration(&key("min_hold"), raw.min_hold.as_deref(), DEFAULT_MIN_HOLD)?,
        flap_half_life: ctx.positive_duration(
            &key("flap_half_life"),
            raw.flap_half_life.as_deref(),
            DEFAULT_FLAP_HALF_LIFE,
        )?,
        flap_suppress: ctx.int(
            &key("flap_suppress"),
            raw.flap_suppress,
            DEFAULT_FLAP_SUPPRESS,
            2,
            1000,
        )?,
    })
}

fn stamps(ctx: &Ctx<'_>, base: &str, raw: Vec<RawStamp>) -> Result<Vec<StampConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(ctx.invalid(
            &format!("{base}.stamps"),
            "[]",
            format!("empty pool: add at least one [[{base}.stamps]] entry"),
        ));
    }
    let mut addresses: HashMap<String, usize> = HashMap::new();
    let mut stamps = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let stamp = stamp(ctx, &format!("{base}.stamps[{i}]"), raw)?;
        // The same address twice in one pool doubles its share by accident.
        if let Some(first) = addresses.insert(stamp.address.to_ascii_lowercase(), i) {
            return Err(ctx.invalid(
                &format!("{base}.stamps[{i}].address"),
                quote(&stamp.address),
                format!("same address as {base}.stamps[{first}]"),
            ));
        }
        stamps.push(stamp);
    }
    Ok(stamps)
}

fn stamp(ctx: &Ctx<'_>, base: &str, raw: RawStamp) -> Result<StampConfig, ConfigError> {
    let key = |k: &str| format!("{base}.{k}");
    ctx.name(&key("name"), &raw.name)?;
    ctx.name(&key("region"), &raw.region)?;
    let (host, port) = split_host_port(&raw.address)
        .map_err(|rule| ctx.invalid(&key("address"), quote(&raw.address), rule))?;
    Ok(StampConfig {
        name: raw.name,
        region: raw.region,
        address: raw.address,
        host,
        port,
        weight: ctx.int(&key("weight"), raw.weight, DEFAULT_WEIGHT, 0, MAX_WEIGHT)?,
        priority: ctx.int(
            &key("priority"),
            raw.priority,
            DEFAULT_PRIORITY,
            1,
            MAX_PRIORITY,
        )?,
    })
}

/// Splits a stamp address: `host:port`, `10.0.0.1:9001` or `[::1]:9001`.
fn split_host_port(address: &str) -> Result<(String, u16), String> {
    const SYNTAX: &str =
        "write host:port, e.g. \"10.0.0.5:9001\", \"stamp.example.com:443\" or \"[::1]:9001\"";
    if address.contains("://") {
        return Err(format!("no scheme here: {SYNTAX}"));
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("missing port: {SYNTAX}"))?;
        std::net::Ipv6Addr::from_str(v6)
            .map_err(|_| format!("not an IPv6 address in brackets: {SYNTAX}"))?;
        (v6, port)
    } else {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("missing port: {SYNTAX}"))?;
        if host.contains(':') {
            return Err(format!("IPv6 addresses need brackets: {SYNTAX}"));
        }
        check_host_name(host).map_err(|rule| format!("{rule}: {SYNTAX}"))?;
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_string(), p)),
        _ => Err(format!("port must be a number from 1 to 65535: {SYNTAX}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:9001"),
            Ok(("127.0.0.1".into(), 9001))
        );
        assert_eq!(split_host_port("[::1]:9001"), Ok(("::1".into(), 9001)));
        assert_eq!(
            split_host_port("stamp.example.com:443"),
            Ok(("stamp.example.com".into(), 443))
        );
        assert!(
            split_host_port("::1:9001")
                .unwrap_err()
                .contains("brackets")
        );
        assert!(
            split_host_port("localhost")
                .unwrap_err()
                .contains("missing port")
        );
        assert!(
            split_host_port("localhost:0")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(
            split_host_port("localhost:70000")
                .unwrap_err()
                .contains("1 to 65535")
        );
        assert!(
            split_host_port("http://a:1")
                .unwrap_err()
                .contains("no scheme")
        );
        assert!(split_host_port(":80").unwrap_err().contains("empty host"));
        assert!(split_host_port("[zz]:80").unwrap_err().contains("IPv6"));
    }

    #[test]
    fn status_ranges() {
        assert_eq!(status_range("200"), Some((200, 200)));
        assert_eq!(status_range("200-299"), Some((200, 299)));
        assert_eq!(status_range("599"), Some((599, 599)));
        for bad in [
            "99", "600", "299-200", "2xx", "200-", "-200", "", "0200", "200-600",
        ] {
            assert_eq!(status_range(bad), None, "{bad}");
        }
    }
}
