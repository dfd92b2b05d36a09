//! The human-readable view of a validated config that `stampgate check`
//! prints: listeners, routes, pools with their stamps, and how long each
//! pool takes, at worst, to notice a dead stamp.

use std::fmt::Write as _;
use std::time::Duration;

use super::units::{format_duration, format_size};
use super::{AllUnhealthy, Config, Method, PoolConfig, ProbeConfig};

/// Request rate used to turn `consecutive_failures` into a time: a modest,
/// round figure, so numbers compare across pools and configs.
const PASSIVE_REFERENCE_RPS: f64 = 100.0;

/// Renders `cfg` as the text of `stampgate check`.
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    listeners(&mut out, cfg);
    routes(&mut out, cfg);
    out.push_str("pools:\n");
    for pool in &cfg.pools {
        pool_block(&mut out, pool);
    }
    let unused: Vec<&str> = cfg
        .pools
        .iter()
        .filter(|p| !cfg.routes.iter().any(|r| r.pool == p.name))
        .filter(|p| {
            let records = cfg.dns_server.iter().flat_map(|d| &d.records);
            !records.into_iter().any(|r| r.pool == p.name)
        })
        .map(|p| p.name.as_str())
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(out, "note: no route uses pool(s) {}", unused.join(", "));
    }
    fleet(&mut out, cfg);
    if let Some(dns) = &cfg.dns_server {
        let advertise = cfg
            .fleet
            .as_ref()
            .map_or(&[][..], |f| f.advertise.as_slice());
        dns_zone(&mut out, dns, advertise);
    }
    out
}

/// The zone the DNS server is authoritative for, and which pool each
/// record follows.
fn dns_zone(out: &mut String, dns: &super::DnsServerSettings, advertise: &[std::net::IpAddr]) {
    let listen: Vec<String> = dns.listen.iter().map(|a| a.to_string()).collect();
    let limit = match dns.responses_per_second {
        0 => "off".to_string(),
        n => format!("{n}/s per client network"),
    };
    let threads = match dns.threads {
        None => format!("; a thread per core ({})", dns.thread_count()),
        Some(1) => "; 1 thread".to_string(),
        Some(n) => format!("; {n} threads"),
    };
    let _ = writeln!(
        out,
        "dns zone {}  (udp+tcp {}; ttl {}; rate limit {limit}{threads})",
        dns.zone,
        listen.join(", "),
        format_duration(dns.ttl)
    );
    let _ = writeln!(
        out,
        "  {}  SOA  {} {}  (serial = routing table generation)",
        dns.zone, dns.nameservers[0], dns.hostmaster
    );
    for ns in &dns.nameservers {
        let _ = writeln!(out, "  {}  NS   {ns}", dns.zone);
    }
    for r in &dns.records {
        let what = match r.answer {
            super::DnsAnswerKind::Stamps => format!("the usable stamps of pool {}", r.pool),
            super::DnsAnswerKind::Edges => {
                let own: Vec<String> = advertise.iter().map(|a| a.to_string()).collect();
                format!(
                    "the live edges that can serve pool {} (this edge: {})",
                    r.pool,
                    own.join(", ")
                )
            }
        };
        let _ = writeln!(out, "  {}  A/AAAA  follows {what}", r.fqdn);
    }
}

fn fleet(out: &mut String, cfg: &Config) {
    let Some(f) = &cfg.fleet else {
        out.push_str("fleet: none (this edge stands alone)\n");
        return;
    };
    let _ = writeln!(
        out,
        "fleet: edge {} in {} on etcd {}",
        f.name,
        f.prefix,
        f.etcd.join(", ")
    );
    let auth = match &f.username {
        Some(u) => format!(
            "user {u} (password from ${})",
            f.password_env.as_deref().unwrap_or("")
        ),
        None => "no auth".to_owned(),
    };
    let tls = match (&f.ca_file, &f.cert) {
        (_, Some(c)) => format!("client certificate {}", c.display()),
        (Some(ca), None) => format!("ca {}", ca.display()),
        (None, None) => "no client certificate".to_owned(),
    };
    let advertise: Vec<String> = f.advertise.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "  lease {}, health quorum {}, {tls}, {auth}, advertise [{}]",
        super::units::format_duration(f.lease_ttl),
        f.health_quorum,
        advertise.join(", ")
    );
}

fn listeners(out: &mut String, cfg: &Config) {
    let proxy = &cfg.proxy;
    out.push_str("listeners:\n");
    for addr in &proxy.listen {
        let _ = writeln!(out, "  proxy  http   {addr}");
    }
    let names: Vec<String> = proxy
        .certificates
        .iter()
        .map(|c| match c.server_names.is_empty() {
            true => c.cert_path.display().to_string(),
            false => c.server_names.join(" "),
        })
        .collect();
    for addr in &proxy.tls_listen {
        let _ = writeln!(
            out,
            "  proxy  https  {addr}  certificates: {}",
            names.join(", ")
        );
    }
    let token = match &cfg.admin.token_env {
        Some(var) => format!("  token from ${var}"),
        None => String::new(),
    };
    let _ = writeln!(out, "  admin  http   {}{token}", cfg.admin.listen);
    if let Some(addr) = cfg.health.listen {
        let _ = writeln!(
            out,
            "  health http   {addr}  /ready and /live for load balancers"
        );
    }
    let mut front = Vec::new();
    if proxy.proxy_protocol {
        front.push("PROXY protocol header required on every connection".to_owned());
    }
    if proxy.redirect_http_to_https {
        let exempt = match proxy.redirect_exempt_paths.is_empty() {
            true => String::new(),
            false => format!(" (except {})", proxy.redirect_exempt_paths.join(", ")),
        };
        front.push(format!("plain HTTP redirected to HTTPS{exempt}"));
    }
    if proxy.http1_engine == super::Http1Engine::Hyper {
        front.push("HTTP/1.1 served by hyper only (http1_engine)".to_owned());
    }
    if !proxy.shutdown_delay.is_zero() {
        front.push(format!(
            "shutdown: /ready fails {} before listeners close",
            format_duration(proxy.shutdown_delay)
        ));
    }
    for line in front {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(
        out,
        "  limits: body {}, header read {}, idle {}, shutdown grace {}",
        format_size(proxy.max_request_body),
        format_duration(proxy.header_read_timeout),
        format_duration(proxy.idle_timeout),
        format_duration(proxy.shutdown_grace),
    );
    let log = &cfg.access_log;
    if log.enabled {
        let to = log
            .path
            .as_ref()
            .map_or("standard output".to_owned(), |p| p.display().to_string());
        let format = match log.format {
            crate::config::AccessLogFormat::Json => "json",
            crate::config::AccessLogFormat::Text => "text",
            crate::config::AccessLogFormat::Combined => "combined",
        };
        let _ = writeln!(
            out,
            "  access log: {format} to {to}, {}% of answers below 500 and every 5xx",
            log.sample * 100.0
        );
    } else {
        out.push_str("  access log: off\n");
    }
}

fn routes(out: &mut String, cfg: &Config) {
    out.push_str("routes:\n");
    for route in &cfg.routes {
        let (method, all_unhealthy) = cfg
            .pools
            .iter()
            .find(|p| p.name == route.pool)
            .map_or(("?", "?"), |p| {
                (method_name(p.method), all_unhealthy_name(p.all_unhealthy))
            });
        let retry = &route.retry;
        let _ = writeln!(
            out,
            "  {}: hosts {} path {} -> pool {} ({method}, {all_unhealthy})\n    \
             timeout {}, {} attempt(s), retry budget {}%, per try {}, replay up to {}",
            route.name,
            route.hosts.join(","),
            route.path_prefix,
            route.pool,
            format_duration(route.timeout),
            retry.attempts,
            retry.budget_percent,
            format_duration(retry.per_try_timeout),
            format_size(retry.replay_limit),
        );
        match retry.hedge_after {
            Some(super::HedgeAfter::Fixed(after)) => {
                let _ = writeln!(out, "    hedge after {}", format_duration(after));
            }
            Some(super::HedgeAfter::Quantile(q)) => {
                let _ = writeln!(
                    out,
                    "    hedge after the route's p{} time to response head (last 10 s)",
                    // 0.999 * 100 is 99.89999...: back to the tenth it was written in.
                    (q * 1000.0).round() / 10.0
                );
            }
            None => {}
        }
    }
}

fn pool_block(out: &mut String, pool: &PoolConfig) {
    let method = match pool.method {
        Method::Latency => format!(
            "latency within {}",
            format_duration(pool.latency_sensitivity)
        ),
        other => method_name(other).to_string(),
    };
    let scheme = if pool.upstream_tls { "https" } else { "http" };
    let version = if pool.upstream_http2 {
        "h2"
    } else {
        "http/1.1"
    };
    let _ = writeln!(
        out,
        "  {}: {method}, {}, slow start {}, upstream {scheme} {version}",
        pool.name,
        all_unhealthy_name(pool.all_unhealthy),
        format_duration(pool.slow_start),
    );
    let name_w = pool.stamps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let region_w = pool
        .stamps
        .iter()
        .map(|s| s.region.len())
        .max()
        .unwrap_or(0);
    let addr_w = pool
        .stamps
        .iter()
        .map(|s| s.address.len())
        .max()
        .unwrap_or(0);
    for s in &pool.stamps {
        let _ = writeln!(
            out,
            "    {:name_w$}  {:region_w$}  {:addr_w$}  weight {:>4}  priority {}",
            s.name, s.region, s.address, s.weight, s.priority
        );
    }
    let probe = &pool.probe;
    let _ = writeln!(
        out,
        "    worst-case detection: active probes {} = interval {} + {} x fast_interval {} + {} x timeout {} ({} {})",
        format_duration(active_detection(probe)),
        format_duration(probe.interval),
        failed_probes_needed(probe) - 1,
        format_duration(probe.fast_interval),
        failed_probes_needed(probe),
        format_duration(probe.timeout),
        probe.method,
        probe.path,
    );
    let failures = pool.outlier.consecutive_failures;
    let _ = match passive_detection(pool) {
        Some(t) => writeln!(
            out,
            "    passive: {failures} consecutive failures (~{} at {PASSIVE_REFERENCE_RPS} req/s)",
            format_duration(t)
        ),
        None => writeln!(
            out,
            "    passive: {failures} consecutive failures (no stamp has a weight above 0)"
        ),
    };
}

/// Failed probes that mark a healthy stamp down: the window holds
/// `required` successes, so `size - required + 1` failures are needed.
fn failed_probes_needed(probe: &ProbeConfig) -> u32 {
    probe.sample_size - probe.successful_samples_required + 1
}

/// Worst case for the active probe to mark a dead stamp down: the first
/// failed probe starts up to one `interval` after the fault, each further
/// one `fast_interval` after the one before, and each may take its whole
/// `timeout` to fail (a hung stamp). A stamp that refuses or answers 503
/// is out sooner: `interval + (n - 1) x fast_interval`.
pub(crate) fn active_detection(probe: &ProbeConfig) -> Duration {
    let probes = failed_probes_needed(probe);
    probe.interval + probe.fast_interval * (probes - 1) + probe.timeout * probes
}

/// Time for the least-loaded stamp that gets traffic to see
/// `consecutive_failures` requests at [`PASSIVE_REFERENCE_RPS`]:
/// the stamp's rate is `rps x weight / total_weight`, so the time is
/// `failures x total_weight / (rps x weight)`. Only stamps with weight
/// above 0 count, and for the priority method only the first tier (the
/// others get no traffic until it fails). `None` when no stamp gets traffic.
pub(crate) fn passive_detection(pool: &PoolConfig) -> Option<Duration> {
    let live = pool.stamps.iter().filter(|s| s.weight > 0);
    let top_tier = live.clone().map(|s| s.priority).min()?;
    let weights: Vec<u32> = live
        .filter(|s| pool.method != Method::Priority || s.priority == top_tier)
        .map(|s| s.weight)
        .collect();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let lightest = f64::from(*weights.iter().min()?);
    let secs =
        f64::from(pool.outlier.consecutive_failures) * total / (PASSIVE_REFERENCE_RPS * lightest);
    // Whole milliseconds: the estimate is not more precise than that.
    Some(Duration::from_millis((secs * 1000.0).round() as u64))
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Priority => "priority",
        Method::Weighted => "weighted",
        Method::Latency => "latency",
    }
}

fn all_unhealthy_name(a: AllUnhealthy) -> &'static str {
    match a {
        AllUnhealthy::FailOpen => "fail-open",
        AllUnhealthy::FailClosed => "fail-closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use std::path::Path;

    const POOL: &str = r#"
[[routes]]
name = "all"
pool = "p"

[pools.p]
method = "METHOD"
[pools.p.probe]
interval = "1s"
timeout = "500ms"
sample_size = 4
successful_samples_required = 3
[pools.p.outlier]
consecutive_failures = 5

[[pools.p.stamps]]
name = "a"
region = "r1"
address = "127.0.0.1:9001"
weight = 100

[[pools.p.stamps]]
name = "b"
region = "r2"
address = "127.0.0.1:9002"
weight = 300

[[pools.p.stamps]]
name = "c"
region = "r3"
address = "127.0.0.1:9003"
priority = 2
weight = 0
"#;

    fn pool(method: &str) -> PoolConfig {
        let text = POOL.replace("METHOD", method);
        let cfg = parse_str(&text, Path::new("t.toml")).expect("valid");
        cfg.pools.into_iter().next().expect("one pool")
    }

    #[test]
    fn active_detection_is_interval_then_fast_probes_each_to_its_timeout() {
        // 1s + (2 - 1) x 250ms (a quarter of the interval) + 2 x 500ms
        assert_eq!(
            active_detection(&pool("weighted").probe),
            Duration::from_millis(2250)
        );
    }

    #[test]
    fn passive_detection_uses_the_lightest_stamp_with_traffic() {
        // a gets 100/400 of 100 req/s = 25 req/s; 5 failures take 200ms.
        assert_eq!(
            passive_detection(&pool("weighted")),
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn summary_shows_the_fleet_or_its_absence() {
        let text = POOL.replace("METHOD", "priority");
        let cfg = parse_str(&text, Path::new("t.toml")).expect("valid");
        assert!(summary(&cfg).contains("fleet: none (this edge stands alone)\n"));
        let text = format!(
            "{text}\n[fleet]\nname = \"e1\"\netcd = [\"http://10.0.0.5:2379\"]\nhealth_quorum = 2\n"
        );
        let cfg = parse_str(&text, Path::new("t.toml")).expect("valid");
        let s = summary(&cfg);
        assert!(
            s.contains("fleet: edge e1 in /stampgate on etcd http://10.0.0.5:2379\n"),
            "{s}"
        );
        assert!(
            s.contains("lease 10s, health quorum 2, no client certificate, no auth, advertise []"),
            "{s}"
        );
    }

    #[test]
    fn summary_shows_the_front_door_and_hedging() {
        let text = POOL.replace("METHOD", "priority").replace(
            "pool = \"p\"\n",
            "pool = \"p\"\nretry = { attempts = 2, hedge_after = \"p95\" }\n",
        );
        let text = format!(
            "[proxy]\nlisten = [\"127.0.0.1:8080\"]\nproxy_protocol = true\nshutdown_delay = \"5s\"\n\
             http1_engine = \"hyper\"\n[health]\nlisten = \"127.0.0.1:8081\"\n{text}"
        );
        let cfg = parse_str(&text, Path::new("t.toml")).expect("valid");
        let s = summary(&cfg);
        for line in [
            "  health http   127.0.0.1:8081  /ready and /live for load balancers\n",
            "  PROXY protocol header required on every connection\n",
            "  HTTP/1.1 served by hyper only (http1_engine)\n",
            "  shutdown: /ready fails 5s before listeners close\n",
            "    hedge after the route's p95 time to response head (last 10 s)\n",
        ] {
            assert!(s.contains(line), "{line:?} in\n{s}");
        }
    }

    #[test]
    fn summary_lists_everything_one_per_line() {
        let text = POOL.replace("METHOD", "priority");
        let cfg = parse_str(&text, Path::new("t.toml")).expect("valid");
        let s = summary(&cfg);
        assert!(s.contains("  proxy  http   127.0.0.1:8080\n"), "{s}");
        assert!(s.contains("  admin  http   127.0.0.1:9901\n"), "{s}");
        assert!(
            s.contains(
                "  access log: json to standard output, 100% of answers below 500 and every 5xx\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("all: hosts * path / -> pool p (priority, fail-open)"),
            "{s}"
        );
        assert!(
            s.contains("    a  r1  127.0.0.1:9001  weight  100  priority 1\n"),
            "{s}"
        );
        assert!(
            s.contains("    c  r3  127.0.0.1:9003  weight    0  priority 2\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "worst-case detection: active probes 2.25s = interval 1s + 1 x fast_interval 250ms + 2 x timeout 500ms"
            ),
            "{s}"
        );
        assert!(
            s.contains("passive: 5 consecutive failures (~200ms at 100 req/s)"),
            "{s}"
        );
    }
}
