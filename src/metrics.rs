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

use crate::routing::histogram::LatencyHistogram;
use crate::routing::{ADMIN_STATES, HEALTH_STATES, RoutingTable, StampView};

/// Proxy-wide counters: client connections, TLS handshakes, reloads, the
/// access log. Shared by the listeners, the controller and `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Open client connections by listener ([`LISTENERS`]) and protocol
    /// ([`PROTOCOLS`]); a connection is `pending` until its first request.
    pub connections: [[AtomicI64; 3]; 2],
    /// Client connections accepted, by listener.
    pub accepted: [AtomicU64; 2],
    /// Failed TLS handshakes: error, timeout.
    pub tls_handshake_failures: [AtomicU64; 2],
    /// Config reloads: applied, refused.
    pub reloads: [AtomicU64; 2],
    /// Requests that matched no route (answered 404).
    pub unrouted: AtomicU64,
    /// Access log lines written.
    pub access_log_written: AtomicU64,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
}

/// Listener labels of [`ProxyStats::connections`].
pub const LISTENERS: [&str; 2] = ["http", "https"];
/// Protocol labels of [`ProxyStats::connections`].
pub const PROTOCOLS: [&str; 3] = ["pending", "http1", "http2"];

/// Status class labels, by index of [`crate::routing::StampStats::responses`].
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Connect error kinds, by index of `StampStats::connect_errors`.
pub const CONNECT_ERRORS: [&str; 3] = ["refused", "timeout", "other"];

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
fn state_set(
    fam: &mut MetricEncoder,
    labels: &Labels,
    states: &[&str],
    current: u8,
) -> std::fmt::Result {
    for (i, state) in states.iter().enumerate() {
        let on = i == usize::from(current);
        gauge(fam, &with(labels, "state", state), i64::from(on))?;
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
            for (kind, n) in CONNECT_ERRORS.iter().zip(&s.stats.connect_errors) {
                counter(
                    &mut fam,
                    &with(labels, "kind", kind),
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
            let current = s.stats.control.health.load(Ordering::Relaxed);
            state_set(&mut fam, labels, &HEALTH_STATES, current)?;
        }
        let mut fam = family!(
            "stampgate_stamp_admin",
            "1 for the stamp's current admin state, 0 for the others",
            MetricType::Gauge,
        )?;
        for (labels, s) in &stamps {
            let current = s.stats.control.admin.load(Ordering::Relaxed);
            state_set(&mut fam, labels, &ADMIN_STATES, current)?;
        }
        let mut fam = family!(
            "stampgate_health_transitions",
            "Health state changes of each stamp, by the state entered",
            MetricType::Counter,
        )?;
        for (labels, s) in &stamps {
            for (state, n) in HEALTH_STATES.iter().zip(&s.stats.control.transitions) {
                counter(
                    &mut fam,
                    &with(labels, "to", state),
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
            for (result, n) in ["passed", "failed"].iter().zip(&s.stats.control.probes) {
                counter(
                    &mut fam,
                    &with(labels, "result", result),
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
        for (listener, row) in LISTENERS.iter().zip(&stats.connections) {
            for (protocol, n) in PROTOCOLS.iter().zip(row) {
                let labels = vec![
                    ("listener", listener.to_string()),
                    ("protocol", protocol.to_string()),
                ];
                gauge(&mut fam, &labels, n.load(Ordering::Relaxed).max(0))?;
            }
        }
        let mut fam = family!(
            "stampgate_client_connections_accepted",
            "Client connections accepted, by listener",
            MetricType::Counter,
        )?;
        for (listener, n) in LISTENERS.iter().zip(&stats.accepted) {
            let labels = vec![("listener", listener.to_string())];
            counter(&mut fam, &labels, n.load(Ordering::Relaxed))?;
        }
        let mut fam = family!(
            "stampgate_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            MetricType::Counter,
        )?;
        for (reason, n) in ["error", "timeout"]
            .iter()
            .zip(&stats.tls_handshake_failures)
        {
            counter(
                &mut fam,
                &vec![("reason", reason.to_string())],
                n.load(Ordering::Relaxed),
            )?;
        }
        let mut fam = family!(
            "stampgate_config_reloads",
            "Config reloads (SIGHUP or admin API) by result",
            MetricType::Counter,
        )?;
        for (result, n) in ["applied", "refused"].iter().zip(&stats.reloads) {
            counter(
                &mut fam,
                &vec![("result", result.to_string())],
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
