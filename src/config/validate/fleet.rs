//! `[fleet]`: names, etcd endpoints, TLS files and the health quorum.

use std::net::IpAddr;

use super::{Ctx, quote, quote_list, shown_duration};
use crate::config::defaults::*;
use crate::config::raw::RawFleet;
use crate::config::{ConfigError, FleetSettings, Quorum};

pub(super) fn fleet(ctx: &Ctx<'_>, raw: RawFleet) -> Result<FleetSettings, ConfigError> {
    let name = match raw.name {
        Some(n) => n,
        None => host_name().ok_or_else(|| {
            ctx.invalid(
                "fleet.name",
                "(unset)",
                "the host name cannot be read; give this edge a name",
            )
        })?,
    };
    ctx.name("fleet.name", &name)?;
    // Without etcd the section only names this edge and its advertised
    // addresses (a lone edge answering DNS "edges" records with itself).
    let etcd = raw.etcd.unwrap_or_default();
    if etcd.is_empty()
        && let Some((key, _)) = [
            ("fleet.ca_file", raw.ca_file.is_some()),
            ("fleet.cert", raw.cert.is_some()),
            ("fleet.username", raw.username.is_some()),
            ("fleet.health_quorum", raw.health_quorum.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
    {
        return Err(ctx.invalid(
            "fleet.etcd",
            "[]",
            format!(
                "{key} is only used with etcd endpoints, e.g. fleet.etcd = [\"http://10.0.0.5:2379\"]"
            ),
        ));
    }
    for (i, e) in etcd.iter().enumerate() {
        let ok = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .and_then(|rest| rest.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| a.port_u16().is_some());
        if !ok {
            return Err(ctx.invalid(
                &format!("fleet.etcd[{i}]"),
                quote(e),
                "expected http://HOST:PORT or https://HOST:PORT",
            ));
        }
    }
    let prefix = raw
        .prefix
        .unwrap_or_else(|| DEFAULT_FLEET_PREFIX.to_owned());
    let ok = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok {
        return Err(ctx.invalid(
            "fleet.prefix",
            quote(&prefix),
            "must start with '/', not end with '/', and use only letters, digits, '-', '_', '.' and '/'",
        ));
    }
    let lease_ttl = ctx.duration(
        "fleet.lease_ttl",
        raw.lease_ttl.as_deref(),
        DEFAULT_FLEET_LEASE_TTL,
    )?;
    if lease_ttl < MIN_FLEET_LEASE_TTL || lease_ttl.subsec_nanos() != 0 {
        return Err(ctx.invalid(
            "fleet.lease_ttl",
            shown_duration(raw.lease_ttl.as_deref(), lease_ttl),
            "must be whole seconds, at least 2s (etcd leases count in seconds)",
        ));
    }
    let tls = etcd.iter().any(|e| e.starts_with("https://"));
    let ca_file = raw
        .ca_file
        .as_deref()
        .map(|p| ctx.path("fleet.ca_file", p))
        .transpose()?;
    let cert = raw
        .cert
        .as_deref()
        .map(|p| ctx.path("fleet.cert", p))
        .transpose()?;
    let key = raw
        .key
        .as_deref()
        .map(|p| ctx.path("fleet.key", p))
        .transpose()?;
    if cert.is_some() != key.is_some() {
        let (k, v) = match &raw.cert {
            Some(c) => ("fleet.cert", c),
            None => ("fleet.key", raw.key.as_ref().expect("one of them is set")),
        };
        return Err(ctx.invalid(k, quote(v), "fleet.cert and fleet.key go together"));
    }
    if !tls && (ca_file.is_some() || cert.is_some()) {
        return Err(ctx.invalid(
            "fleet.etcd",
            quote_list(&etcd),
            "fleet.ca_file, fleet.cert and fleet.key need https:// endpoints",
        ));
    }
    if tls && ca_file.is_none() {
        return Err(ctx.invalid(
            "fleet.etcd",
            quote_list(&etcd),
            "https:// endpoints need fleet.ca_file (the CA that signed etcd's certificate)",
        ));
    }
    for (k, p) in [
        ("fleet.ca_file", &ca_file),
        ("fleet.cert", &cert),
        ("fleet.key", &key),
    ] {
        if let Some(p) = p
            && !p.is_file()
        {
            return Err(ctx.invalid(k, quote(&p.display().to_string()), "no such file"));
        }
    }
    if raw.username.is_some() != raw.password_env.is_some() {
        let (k, v) = match &raw.username {
            Some(u) => ("fleet.username", u),
            None => (
                "fleet.password_env",
                raw.password_env.as_ref().expect("set"),
            ),
        };
        return Err(ctx.invalid(
            k,
            quote(v),
            "fleet.username and fleet.password_env go together (the password itself never goes in the file)",
        ));
    }
    let advertise = raw
        .advertise
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<IpAddr>().map_err(|_| {
                ctx.invalid(
                    &format!("fleet.advertise[{i}]"),
                    quote(a),
                    "not an IP address",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let health_quorum = match raw.health_quorum {
        None => Quorum::Majority,
        Some(toml::Value::String(s)) if s == "majority" => Quorum::Majority,
        Some(toml::Value::Integer(n)) if n >= 1 && n <= i64::from(u16::MAX) => {
            Quorum::Count(n as u32)
        }
        Some(other) => {
            return Err(ctx.invalid(
                "fleet.health_quorum",
                other,
                "expected \"majority\" or a number of edges of at least 1",
            ));
        }
    };
    Ok(FleetSettings {
        name,
        etcd,
        prefix,
        lease_ttl,
        ca_file,
        cert,
        key,
        username: raw.username,
        password_env: raw.password_env,
        advertise,
        health_quorum,
    })
}

/// The kernel's host name: the default edge name, unique per machine.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse_str;

    /// The smallest config that passes, to put a `[fleet]` beside.
    const BASE: &str = "[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\n\
                        [[pools.p.stamps]]\nname = \"a\"\nregion = \"r1\"\naddress = \"127.0.0.1:9001\"\n";

    fn err(fleet: &str) -> String {
        let text = format!("{BASE}[fleet]\n{fleet}\n");
        parse_str(&text, Path::new("t.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn absent_fleet_is_a_lone_edge() {
        let c = parse_str(BASE, Path::new("t.toml")).unwrap();
        assert!(c.fleet.is_none());
    }

    #[test]
    fn without_etcd_the_section_only_names_this_edge() {
        let text = "[fleet]\nname = \"edge-1\"\nadvertise = [\"203.0.113.10\"]\n";
        let f = parse_str(&format!("{BASE}{text}"), Path::new("t.toml"))
            .unwrap()
            .fleet
            .unwrap();
        assert!(!f.is_shared());
        assert_eq!(f.advertise.len(), 1);
    }

    #[test]
    fn a_full_fleet_section_parses() {
        let text = "[fleet]\nname = \"edge-1\"\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/sg/prod\"\nlease_ttl = \"5s\"\nadvertise = [\"203.0.113.10\"]\nhealth_quorum = 2\n";
        let f = parse_str(&format!("{BASE}{text}"), Path::new("t.toml"))
            .unwrap()
            .fleet
            .unwrap();
        assert_eq!(f.name, "edge-1");
        assert_eq!(f.prefix, "/sg/prod");
        assert_eq!(f.lease_ttl.as_secs(), 5);
        assert_eq!(f.health_quorum, super::Quorum::Count(2));
        assert_eq!(f.advertise.len(), 1);
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let base = "name = \"e\"\netcd = [\"http://127.0.0.1:2379\"]\n";
        assert!(
            err("name = \"e\"\netcd = []\nusername = \"u\"")
                .contains("fleet.etcd = []: fleet.username is only used with etcd endpoints")
        );
        assert!(
            err("name = \"e\"\netcd = [\"10.0.0.5:2379\"]")
                .contains("fleet.etcd[0] = \"10.0.0.5:2379\": expected http://")
        );
        assert!(err(&format!("{base}prefix = \"x/\"")).contains("fleet.prefix = \"x/\""));
        assert!(
            err(&format!("{base}lease_ttl = \"500ms\"")).contains("fleet.lease_ttl = \"500ms\"")
        );
        assert!(
            err(&format!("{base}advertise = [\"edge.example\"]"))
                .contains("fleet.advertise[0] = \"edge.example\": not an IP address")
        );
        assert!(
            err(&format!("{base}health_quorum = \"most\""))
                .contains("fleet.health_quorum = \"most\"")
        );
        assert!(err(&format!("{base}username = \"u\"")).contains("fleet.username = \"u\""));
        assert!(
            err("name = \"a b\"\netcd = [\"http://127.0.0.1:2379\"]")
                .contains("fleet.name = \"a b\"")
        );
        assert!(err(&format!("{base}ca_file = \"ca.pem\"")).contains("need https://"));
    }
}
