//! Prometheus metrics, off the request path: the request path only bumps
//! relaxed atomics it already holds (per stamp in [`StampStats`], per route
//! in the retry budget); at scrape time a prometheus-client [`Collector`]
//! reads them through the current routing table. No lock, no allocation
//! and no label lookup per request, and label sets stay bounded (pool,
//! stamp, region, route, status class — never a path).
//!
//! [`StampStats`]: crate::routing::StampStats

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::counters::{ByEnum, Label, labels};
use crate::routing::histogram::LatencyHistogram;
use crate::routing::{RoutingTable, StampView};
use crate::signals::{AdminShown, HealthState};

/// Proxy-wide counters: client connections, TLS handshakes, reloads, the
/// access log. Shared by the listeners, the controller and `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Open client connections by listener and protocol; a connection is
    /// [`Protocol::Pending`] until its first request.
    pub connections: ByEnum<Listener, ByEnum<Protocol, AtomicI64, 3>, 2>,
    /// Client connections accepted, by listener.
    pub accepted: ByEnum<Listener, AtomicU64, 2>,
    /// Failed TLS handshakes, by reason.
    pub tls_handshake_failures: ByEnum<HandshakeFailure, AtomicU64, 2>,
    /// Config reloads, by result.
    pub reloads: ByEnum<ReloadResult, AtomicU64, 2>,
    /// Requests that matched no route (answered 404).
    pub unrouted: AtomicU64,
    /// Access log lines written.
    pub access_log_written: AtomicU64,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// The DNS server's counters, set when it starts (absent without
    /// `[dns_server]`).
    pub dns_server: arc_swap::ArcSwapOption<DnsQueryStats>,
    /// Connections upgraded (101 from a stamp) and spliced.
    pub upgrades: AtomicU64,
    /// Upgraded connections open now.
    pub upgraded_open: AtomicI64,
}

/// Query type labels of [`DnsQueryStats`].
pub const DNS_QTYPES: [&str; 6] = ["A", "AAAA", "SOA", "NS", "ANY", "other"];
/// Response code labels of [`DnsQueryStats`].
pub const DNS_RCODES: [&str; 7] = [
    "NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "SERVFAIL", "other",
];

/// The DNS server's counters, bumped per query with relaxed adds and read
/// at scrape time, plus what `/admin/status` shows of it.
#[derive(Debug)]
pub struct DnsQueryStats {
    /// Record labels: the records' names, then the zone apex, then `-`
    /// (unknown names, names outside the zone, malformed queries).
    pub labels: Box<[Box<str>]>,
    /// Queries by label x [`DNS_QTYPES`] x [`DNS_RCODES`].
    counts: Box<[AtomicU64]>,
    /// UDP responses held back by the rate limit: dropped, sent truncated.
    pub rate_limited: [AtomicU64; 2],
    /// Per record (first `labels` entries): 1 while it answers fail-open.
    pub failing_open: Box<[std::sync::atomic::AtomicBool]>,
    /// The current answer of each record, as `/admin/status` shows it;
    /// written by the DNS server's watcher when an answer changes.
    pub status: ArcSwap<serde_json::Value>,
}

impl DnsQueryStats {
    /// Counters for `records` (absolute names) of `zone`.
    pub fn new(records: &[&str], zone: &str) -> DnsQueryStats {
        let labels: Box<[Box<str>]> = records
            .iter()
            .copied()
            .chain([zone, "-"])
            .map(Box::from)
            .collect();
        let cells = labels.len() * DNS_QTYPES.len() * DNS_RCODES.len();
        DnsQueryStats {
            counts: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            labels,
            rate_limited: Default::default(),
            failing_open: records.iter().map(|_| Default::default()).collect(),
            status: ArcSwap::from_pointee(serde_json::Value::Null),
        }
    }

    /// Count one query: label index, [`DNS_QTYPES`] index, [`DNS_RCODES`] index.
    pub fn count(&self, label: usize, qtype: usize, rcode: usize) {
        let i = (label * DNS_QTYPES.len() + qtype) * DNS_RCODES.len() + rcode;
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queries counted for one cell.
    pub fn get(&self, label: usize, qtype: usize, rcode: usize) -> u64 {
        let i = (label * DNS_QTYPES.len() + qtype) * DNS_RCODES.len() + rcode;
        self.counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut fam = encoder.encode_descriptor(
            "stampgate_dns_queries",
            "DNS queries answered, by record, query type and response code",
            None,
            MetricType::Counter,
        )?;
        for (l, label) in self.labels.iter().enumerate() {
            for (t, qtype) in DNS_QTYPES.iter().enumerate() {
                for (c, rcode) in DNS_RCODES.iter().enumerate() {
                    let n = self.get(l, t, c);
                    // Only combinations that happened: most never do.
                    if n > 0 {
                        let labels = vec![
                            ("record", label.to_string()),
                            ("type", qtype.to_string()),
                            ("rcode", rcode.to_string()),
                        ];
                        counter(&mut fam, &labels, n)?;
                    }
                }
            }
        }
        let mut fam = encoder.encode_descriptor(
            "stampgate_dns_rate_limited",
            "UDP responses held back by the per-client rate limit",
            None,
            MetricType::Counter,
        )?;
        for (action, n) in ["dropped", "truncated"].iter().zip(&self.rate_limited) {
            counter(
                &mut fam,
                &vec![("action", action.to_string())],
                n.load(Ordering::Relaxed),
            )?;
        }
        let mut fam = encoder.encode_descriptor(
            "stampgate_dns_failing_open",
            "1 while a record answers with every enabled target because none is usable",
            None,
            MetricType::Gauge,
        )?;
        for (label, on) in self.labels.iter().zip(&self.failing_open) {
            let on = i64::from(on.load(Ordering::Relaxed));
            gauge(&mut fam, &vec![("record", label.to_string())], on)?;
        }
        Ok(())
    }
}

labels! {
    /// Which kind of client listener a connection came in on.
    pub enum Listener {
        /// Plaintext (HTTP/1.1 and h2c).
        Http => "http",
        /// TLS.
        Https => "https",
    }
}

impl Listener {
    /// The listener kind of a connection with (`true`) or without TLS.
    pub fn of(tls: bool) -> Listener {
        if tls { Listener::Https } else { Listener::Http }
    }
}

labels! {
    /// What a client connection speaks, known at its first request.
    pub enum Protocol {
        /// No request yet.
        Pending => "pending",
        /// HTTP/1.x.
        Http1 => "http1",
        /// HTTP/2.
        Http2 => "http2",
    }
}

labels! {
    /// Why a TLS handshake failed.
    pub enum HandshakeFailure {
        /// The peer or rustls broke it off.
        Error => "error",
        /// It did not finish in time.
        Timeout => "timeout",
    }
}

labels! {
    /// How a config reload ended.
    pub enum ReloadResult {
        /// The new config serves.
        Applied => "applied",
        /// It was refused; the old one keeps serving.
        Refused => "refused",
    }
}

/// Status class labels, by index of [`crate::routing::StampStats::responses`].
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Reads the request path's counters through the current routing table,
/// and the proxy-wide ones.
#[derive(Debug)]
struct TableCollector {
    routing: Arc<ArcSwap<RoutingTable>>,
    stats: Arc<ProxyStats>,
}

/// `[(name, value)]` label pairs of one series.
type Labels = Vec<(&'static str, String)>;

fn with(labels: &Labels, name: &'static str, value: &str) -> Labels {
    let mut l = labels.clone();
    l.push((name, value.to_owned()));
    l
}

fn counter(fam: &mut MetricEncoder, labels: &Labels, n: u64) -> std::fmt::Result {
    ConstCounter::new(n).encode(fam.encode_family(labels)?)
}

fn gauge(fam: &mut MetricEncoder, labels: &Labels, n: i64) -> std::fmt::Result {
    ConstGauge::new(n).encode(fam.encode_family(labels)?)
}

/// An enum as a set of 0/1 gauges: 1 for `current`, 0 for the others.
fn state_set<E: Label>(fam: &mut MetricEncoder, labels: &Labels, current: E) -> std::fmt::Result {
    for &state in E::ALL {
        let on = state == current;
        gauge(fam, &with(labels, "state", state.as_str()), i64::from(on))?;
    }
    Ok(())
}

fn histogram(fam: &mut MetricEncoder, labels: &Labels, h: &LatencyHistogram) -> std::fmt::Result {
    let (sum, count, buckets) = h.snapshot();
    fam.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for TableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.routing.load();
        let stamps: Vec<(Labels, &StampView)> = table
            .pools
            .iter()
            .flat_map(|p| {
                p.stamps.iter().map(move |s| {
                    let labels = vec![
                        ("pool", p.name.to_string()),
                        ("stamp", s.name.to_string()),
                        ("region", s.region.to_string()),
                    ];
                    (labels, s)
                })
            })
            .collect();
        macro_rules! family {
            ($name:expr, $help:expr, $kind:expr $(,)?) => {
                encoder.encode_descriptor($name, $help, None, $kind)
            };
        }

        // ---- what clients saw, per route ----
        let mut fam = family!(
            "stampgate_requests",
            "Answers to clients by route, serving stamp (\"none\": made by the proxy) and status class",
            MetricType::Counter,
        )?;
        for r in table.routes() {
            let pool = &table.pools[r.pool];
            let route = vec![
                ("route", r.name.to_string()),
                ("pool", pool.name.to_string()),
            ];
            let rows = pool
                .stamps
                .iter()
                .enumerate()
                .map(|(i, s)| (Some(i), &*s.name, &*s.region))
                .chain([(None, "none", "none")]);
            for (index, stamp, region) in rows {
                let labels = with(&with(&route, "stamp", stamp), "region", region);
                for (class, n) in CLASSES.iter().zip(r.stats.answers(index)) {
                    counter(&mut fam, &with(&labels, "class", class), n)?;
                }
            }
        }
        let mut fam = family!(
            "stampgate_request_duration_seconds",
            "Time from a request's head to the end of its response body, by route",
            MetricType::Histogram,
        )?;
        for r in table.routes() {
            let labels = vec![
                ("route", r.name.to_string()),
                ("pool", table.pools[r.pool].name.to_string()),
            ];
            histogram(&mut fam, &labels, r.stats.duration())?;
        }
        let mut fam = family!(
            "stampgate_unrouted_requests",
            "Requests that matched no route (answered 404)",
            MetricType::Counter,
        )?;
        counter(
            &mut fam,
            &vec![],
            self.stats.unrouted.load(Ordering::Relaxed),
        )?;
        let mut fam = family!(
            "stampgate_upgrades",
            "Client connections upgraded (101 Switching Protocols, e.g. WebSocket) and spliced to a stamp",
            MetricType::Counter,
        )?;
        counter(
            &mut fam,
            &vec![],
            self.stats.upgrades.load(Ordering::Relaxed),
        )?;
        let mut fam = family!(
            "stampgate_upgraded_connections",
            "Upgraded connections open now",
            MetricType::Gauge,
        )?;
        gauge(
            &mut fam,
            &vec![],
            self.stats.upgraded_open.load(Ordering::Relaxed).max(0),
        )?;
        let mut fam = family!(
            "stampgate_retries",
            "Retries granted by each route's retry budget",
            MetricType::Counter,
        )?;
        for r in table.routes() {
            counter(
                &mut fam,
                &vec![("route", r.name.to_string())],
                r.budget.retries_total(),
            )?;
        }
        let mut fam = family!(
            "stampgate_retry_budget_exhausted",
            "Retries refused because the route's retry budget was spent",
            MetricType::Counter,
        )?;
        for r in table.routes() {
            let n = r.budget.exhausted_total();
            counter(&mut fam, &vec![("route", r.name.to_string())], n)?;
        }
        let mut fam = family!(
            "stampgate_hedges",
            "Hedged tries by route and result: sent, won (the hedge answered first), lost (the first try answered first, or the hedge failed)",
            MetricType::Counter,
        )?;
        for r in table.routes() {
            for (result, n) in r.stats.hedges() {
                let labels = vec![
                    ("route", r.name.to_string()),
                    ("result", result.to_string()),
                ];
                counter(&mut fam, &labels, n)?;
            }
        }
        let mut fam = family!(
            "stampgate_hedge_delay_seconds",
            "Hedge delay of each hedging route: its retry.hedge_after, or for a quantile (\"p95\") the one read from its last 10 s of times to response head, absent while it has too few of them to hedge",
            MetricType::Gauge,
        )?;
        for r in table.routes() {
            if let Some(delay) = r.hedge_delay() {
                let labels = vec![("route", r.name.to_string())];
                ConstGauge::new(delay.as_secs_f64()).encode(fam.encode_family(&labels)?)?;
            }
        }

        // ---- tries at stamps ----
        let mut fam = family!(
            "stampgate_upstream_responses",
            "Answers from stamps by status class",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            for (class, n) in CLASSES.iter().zip(&s.stats.responses) {
                counter(
                    &mut fam,
                    &with(labels, "class", class),
                    n.load(Ordering::Relaxed),
                )?;
            }
        }
        let mut fam = family!(
            "stampgate_upstream_gateway_failures",
            "Tries that failed at the stamp: connect errors, resets, timeouts, 502/503/504",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            counter(&mut fam, labels, s.stats.failures.load(Ordering::Relaxed))?;
        }
        let mut fam = family!(
            "stampgate_upstream_connect_errors",
            "Failed connects to stamps by kind",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            for (kind, n) in s.stats.connect_errors.iter() {
                counter(
                    &mut fam,
                    &with(labels, "kind", kind.as_str()),
                    n.load(Ordering::Relaxed),
                )?;
            }
        }
        let mut fam = family!(
            "stampgate_upstream_duration_seconds",
            "Time from sending a request to a stamp until its response head",
            MetricType::Histogram,
        )?;
        for (labels, s) in &stamps {
            histogram(&mut fam, labels, &s.stats.upstream_latency)?;
        }
        let mut fam = family!(
            "stampgate_in_flight_requests",
            "Requests being served by each stamp (headers or body)",
            MetricType::Gauge,
        )?;
        for (labels, s) in &stamps {
            gauge(
                &mut fam,
                labels,
                s.stats.in_flight.load(Ordering::Relaxed) as i64,
            )?;
        }

        // ---- the controller's view of each stamp ----
        let mut fam = family!(
            "stampgate_stamp_effective_weight",
            "Weight the current routing table gives each stamp (0: no new requests)",
            MetricType::Gauge,
        )?;
        for (labels, s) in &stamps {
            gauge(&mut fam, labels, i64::from(s.effective_weight))?;
        }
        let mut fam = family!(
            "stampgate_stamp_health",
            "1 for the stamp's current health state, 0 for the others",
            MetricType::Gauge,
        )?;
        for (labels, s) in &stamps {
            state_set::<HealthState>(&mut fam, labels, s.stats.control.health())?;
        }
        let mut fam = family!(
            "stampgate_stamp_admin",
            "1 for the stamp's current admin state, 0 for the others",
            MetricType::Gauge,
        )?;
        for (labels, s) in &stamps {
            state_set::<AdminShown>(&mut fam, labels, s.stats.control.admin())?;
        }
        let mut fam = family!(
            "stampgate_health_transitions",
            "Health state changes of each stamp, by the state entered",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            for (state, n) in s.stats.control.transitions.iter() {
                counter(
                    &mut fam,
                    &with(labels, "to", state.as_str()),
                    n.load(Ordering::Relaxed),
                )?;
            }
        }
        let mut fam = family!(
            "stampgate_ejections",
            "Passive ejections of each stamp after consecutive gateway failures",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            counter(
                &mut fam,
                labels,
                s.stats.control.ejections.load(Ordering::Relaxed),
            )?;
        }
        let mut fam = family!(
            "stampgate_probes",
            "Active health probes by result",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            for (result, n) in s.stats.control.probes.iter() {
                counter(
                    &mut fam,
                    &with(labels, "result", result.as_str()),
                    n.load(Ordering::Relaxed),
                )?;
            }
        }
        let mut fam = family!(
            "stampgate_probe_duration_seconds",
            "Time until a probe's answer (or its failure)",
            MetricType::Histogram,
        )?;
        for (labels, s) in &stamps {
            histogram(&mut fam, labels, &s.stats.control.probe_duration)?;
        }

        // ---- the proxy itself ----
        let stats = &self.stats;
        let mut fam = family!(
            "stampgate_client_connections",
            "Open client connections by listener and protocol (pending: no request yet)",
            MetricType::Gauge,
        )?;
        for (listener, row) in stats.connections.iter() {
            for (protocol, n) in row.iter() {
                let labels = vec![
                    ("listener", listener.as_str().to_owned()),
                    ("protocol", protocol.as_str().to_owned()),
                ];
                gauge(&mut fam, &labels, n.load(Ordering::Relaxed).max(0))?;
            }
        }
        let mut fam = family!(
            "stampgate_client_connections_accepted",
            "Client connections accepted, by listener",
            MetricType::Counter,
        )?;
        for (listener, n) in stats.accepted.iter() {
            let labels = vec![("listener", listener.as_str().to_owned())];
            counter(&mut fam, &labels, n.load(Ordering::Relaxed))?;
        }
        let mut fam = family!(
            "stampgate_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            MetricType::Counter,
        )?;
        for (reason, n) in stats.tls_handshake_failures.iter() {
            counter(
                &mut fam,
                &vec![("reason", reason.as_str().to_owned())],
                n.load(Ordering::Relaxed),
            )?;
        }
        let mut fam = family!(
            "stampgate_config_reloads",
            "Config reloads (SIGHUP or admin API) by result",
            MetricType::Counter,
        )?;
        for (result, n) in stats.reloads.iter() {
            counter(
                &mut fam,
                &vec![("result", result.as_str().to_owned())],
                n.load(Ordering::Relaxed),
            )?;
        }
        let mut fam = family!(
            "stampgate_access_log_lines",
            "Access log lines written, or dropped because the writer fell behind",
            MetricType::Counter,
        )?;
        let lines = [
            ("written", &stats.access_log_written),
            ("dropped", &stats.access_log_dropped),
        ];
        for (result, n) in lines {
            counter(
                &mut fam,
                &vec![("result", result.to_string())],
                n.load(Ordering::Relaxed),
            )?;
        }
        let fam = family!(
            "stampgate_routing_table_generation",
            "Generation of the routing table in use (bumps on every publish)",
            MetricType::Gauge,
        )?;
        ConstGauge::new(table.generation as i64).encode(fam)?;
        if let Some(dns) = self.stats.dns_server.load_full() {
            dns.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The registry behind `GET /metrics`.
pub fn registry(routing: Arc<ArcSwap<RoutingTable>>, stats: Arc<ProxyStats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TableCollector { routing, stats }));
    registry
}

/// The exposition (OpenMetrics text).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of [`render_prometheus`]'s output.
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition in the Prometheus text format 0.0.4, for scrapers that
/// do not read OpenMetrics. prometheus-client writes only OpenMetrics; the
/// two differ, for what this registry holds, in the `TYPE` line of
/// counters (named without `_total` in OpenMetrics, as their samples in
/// 0.0.4), in the types 0.0.4 lacks (`info`, `unknown`), and in the
/// `UNIT` and `EOF` lines 0.0.4 does not have.
pub fn render_prometheus(registry: &Registry) -> String {
    let open = render(registry);
    let mut out = String::with_capacity(open.len());
    // OpenMetrics writes HELP before TYPE; the name both carry in 0.0.4
    // is known only at TYPE.
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, h)| h));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            if let Some(help) = help.take() {
                out.push_str(&format!("# HELP {name}{suffix} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether a scraper's `Accept` prefers the Prometheus text format 0.0.4
/// (`text/plain`) over OpenMetrics, by quality value; OpenMetrics when it
/// asks for neither or both equally.
pub fn wants_prometheus_text(accept: Option<&str>) -> bool {
    let mut open = -1.0f32;
    let mut text = -1.0f32;
    for range in accept.unwrap_or_default().split(',') {
        let mut params = range.split(';').map(str::trim);
        let kind = params.next().unwrap_or_default().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match kind.as_str() {
            "application/openmetrics-text" => open = open.max(q),
            "text/plain" => text = text.max(q),
            _ => {}
        }
    }
    text > open
}
