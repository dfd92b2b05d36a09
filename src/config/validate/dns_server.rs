//! Validation of `[dns_server]`: names are checked as DNS
//! names and made absolute and lower case, records must follow a pool that
//! exists, and `answer = "edges"` needs addresses to advertise.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{Ctx, overlaps, quote, shown_duration};
use crate::config::defaults::{DEFAULT_DNS_RESPONSES_PER_SECOND, DEFAULT_DNS_TTL, MAX_DNS_THREADS};
use crate::config::raw::{RawDnsRecord, RawDnsServer};
use crate::config::{
    AdminSettings, ConfigError, DnsAnswerKind, DnsRecordConfig, DnsServerSettings, PoolConfig,
    ProxySettings,
};

/// Largest TTL DNS allows (RFC 2181 section 8: 2^31 - 1 seconds).
const MAX_TTL_SECS: u64 = i32::MAX as u64;

/// `[dns_server]`.
pub(super) fn dns_server(
    ctx: &Ctx<'_>,
    raw: RawDnsServer,
    pools: &[PoolConfig],
    advertise: &[IpAddr],
    proxy: &ProxySettings,
    admin: &AdminSettings,
) -> Result<DnsServerSettings, ConfigError> {
    let listen = ctx.socket_addrs("dns_server.listen", &raw.listen)?;
    if listen.is_empty() {
        return Err(ctx.invalid(
            "dns_server.listen",
            "[]",
            "no listener: name at least one IP:port, e.g. [\"0.0.0.0:53\"]",
        ));
    }
    // UDP ports are separate from TCP ones, but the server listens on TCP
    // too, where it would collide with the proxy's and admin's listeners.
    let mut taken: Vec<(String, std::net::SocketAddr)> = Vec::new();
    for (key, addrs) in [
        ("proxy.listen", &proxy.listen),
        ("proxy.tls_listen", &proxy.tls_listen),
    ] {
        taken.extend(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("{key}[{i}]"), *a)),
        );
    }
    taken.push(("admin.listen".into(), admin.listen));
    for (i, addr) in listen.iter().enumerate() {
        if let Some((other, at)) = taken.iter().find(|(_, a)| overlaps(*a, *addr)) {
            return Err(ctx.invalid(
                &format!("dns_server.listen[{i}]"),
                quote(&addr.to_string()),
                format!(
                    "overlaps {other} ({at}): both would bind TCP port {}",
                    addr.port()
                ),
            ));
        }
    }

    let zone = absolute_name(ctx, "dns_server.zone", &raw.zone, None)?;
    let ttl = ctx.duration("dns_server.ttl", raw.ttl.as_deref(), DEFAULT_DNS_TTL)?;
    if ttl.subsec_nanos() != 0 || ttl.as_secs() > MAX_TTL_SECS {
        return Err(ctx.invalid(
            "dns_server.ttl",
            shown_duration(raw.ttl.as_deref(), ttl),
            "must be a whole number of seconds, at most 2147483647s (DNS TTLs are seconds)",
        ));
    }
    if raw.nameservers.is_empty() {
        return Err(ctx.invalid(
            "dns_server.nameservers",
            "[]",
            "name at least one name server for the NS records at the zone apex",
        ));
    }
    let nameservers = raw
        .nameservers
        .iter()
        .enumerate()
        .map(|(i, n)| absolute_name(ctx, &format!("dns_server.nameservers[{i}]"), n, None))
        .collect::<Result<Vec<_>, _>>()?;
    let hostmaster = match &raw.hostmaster {
        Some(h) => absolute_name(ctx, "dns_server.hostmaster", h, None)?,
        None => format!("hostmaster.{zone}"),
    };
    let responses_per_second = ctx.int(
        "dns_server.responses_per_second",
        raw.responses_per_second,
        DEFAULT_DNS_RESPONSES_PER_SECOND,
        0,
        u32::MAX,
    )?;
    let threads = match raw.threads {
        None => None,
        Some(n) => Some(ctx.int("dns_server.threads", Some(n), 1, 1, MAX_DNS_THREADS)? as usize),
    };

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut records = Vec::new();
    for (i, r) in raw.records.unwrap_or_default().into_iter().enumerate() {
        let record = record(ctx, i, r, &zone, pools, advertise)?;
        if let Some(first) = seen.insert(record.fqdn.clone(), i) {
            return Err(ctx.invalid(
                &format!("dns_server.records[{i}].name"),
                quote(&record.name),
                format!(
                    "duplicate: dns_server.records[{first}] already answers for {}",
                    record.fqdn
                ),
            ));
        }
        records.push(record);
    }
    Ok(DnsServerSettings {
        listen,
        zone,
        ttl,
        nameservers,
        hostmaster,
        records,
        responses_per_second,
        threads,
    })
}

fn record(
    ctx: &Ctx<'_>,
    i: usize,
    raw: RawDnsRecord,
    zone: &str,
    pools: &[PoolConfig],
    advertise: &[IpAddr],
) -> Result<DnsRecordConfig, ConfigError> {
    let key = |k: &str| format!("dns_server.records[{i}].{k}");
    let fqdn = match raw.name.as_str() {
        "@" => zone.to_string(),
        n if n.ends_with('.') => {
            let fqdn = absolute_name(ctx, &key("name"), n, None)?;
            if fqdn != zone && !fqdn.ends_with(&format!(".{zone}")) {
                return Err(ctx.invalid(
                    &key("name"),
                    quote(n),
                    format!("is outside the zone {zone}; write it relative to the zone, or \"@\" for the apex"),
                ));
            }
            fqdn
        }
        n => absolute_name(ctx, &key("name"), n, Some(zone))?,
    };
    if !pools.iter().any(|p| p.name == raw.pool) {
        let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        return Err(ctx.invalid(
            &key("pool"),
            quote(&raw.pool),
            format!("no such pool (pools: {})", known.join(", ")),
        ));
    }
    let answer = match raw.answer.as_deref().unwrap_or("stamps") {
        "stamps" => DnsAnswerKind::Stamps,
        "edges" => DnsAnswerKind::Edges,
        other => {
            return Err(ctx.invalid(
                &key("answer"),
                quote(other),
                "must be \"stamps\" or \"edges\"",
            ));
        }
    };
    if answer == DnsAnswerKind::Edges && advertise.is_empty() {
        return Err(ctx.invalid(
            &key("answer"),
            quote("edges"),
            "needs this edge's addresses: set fleet.advertise = [\"IP\", ...]",
        ));
    }
    Ok(DnsRecordConfig {
        name: raw.name,
        fqdn,
        pool: raw.pool,
        answer,
    })
}

/// `raw` as an absolute, lower-case DNS name. With `origin`, a name without
/// a trailing dot is relative to it; without, the trailing dot is optional.
fn absolute_name(
    ctx: &Ctx<'_>,
    key: &str,
    raw: &str,
    origin: Option<&str>,
) -> Result<String, ConfigError> {
    let bare = raw.strip_suffix('.').unwrap_or(raw);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let name = match origin {
        Some(o) if !raw.ends_with('.') => format!("{}.{o}", bare.to_ascii_lowercase()),
        _ => format!("{}.", bare.to_ascii_lowercase()),
    };
    // 253 characters of text is the 255-byte wire limit.
    if bare.is_empty() || !bare.split('.').all(label_ok) || name.len() > 254 {
        return Err(ctx.invalid(
            key,
            quote(raw),
            "not a DNS name: dot-separated labels of letters, digits, '-' and '_' (1 to 63 each), 253 characters in all",
        ));
    }
    Ok(name)
}
