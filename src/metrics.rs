//! Prometheus metrics, off the request path: the request path only bumps
//! relaxed atomics it already holds (per stamp in [`StampStats`], per route
//! in the retry budget); at scrape time a prometheus-client [`Collector`]
//! reads them through the current routing table. No lock, no allocation
//! and no label lookup per request, and label sets stay bounded (pool,
//! stamp, region, route, status class — never a path).
//!
//! [`StampStats`]: crate::routing::StampStats

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::routing::RoutingTable;

/// Upper bounds of the latency buckets, in seconds: from a same-host
/// answer (1 ms) to the default per-try timeout (5 s) and beyond.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A fixed-bucket latency histogram in atomics: `observe` is a handful of
/// relaxed adds, safe from any thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, cumulative buckets)` for encoding.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (le, cumulative)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, count.max(cumulative)));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// Status class labels, by index of [`crate::routing::StampStats::responses`].
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Connect error kinds, by index of `StampStats::connect_errors`.
pub const CONNECT_ERRORS: [&str; 3] = ["refused", "timeout", "other"];

/// Reads the request path's counters through the current routing table.
#[derive(Debug)]
struct TableCollector {
    routing: Arc<ArcSwap<RoutingTable>>,
}

impl Collector for TableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.routing.load();
        let stamps = || {
            table.pools.iter().flat_map(|p| {
                p.stamps.iter().map(move |s| {
                    let labels = [
                        ("pool", p.name.to_string()),
                        ("stamp", s.name.to_string()),
                        ("region", s.region.to_string()),
                    ];
                    (labels, s)
                })
            })
        };

        let mut fam = encoder.encode_descriptor(
            "stampgate_upstream_responses",
            "Answers from stamps by status class",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in stamps() {
            for (class, n) in CLASSES.iter().zip(&s.stats.responses) {
                let [a, b, c] = labels.clone();
                let set = [a, b, c, ("class", (*class).to_owned())];
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(fam.encode_family(&set)?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            "stampgate_upstream_gateway_failures",
            "Tries that failed at the stamp: connect errors, resets, timeouts, 502/503/504",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in stamps() {
            let n = s.stats.failures.load(Ordering::Relaxed);
            ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "stampgate_upstream_connect_errors",
            "Failed connects to stamps by kind",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in stamps() {
            for (kind, n) in CONNECT_ERRORS.iter().zip(&s.stats.connect_errors) {
                let [a, b, c] = labels.clone();
                let set = [a, b, c, ("kind", (*kind).to_owned())];
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(fam.encode_family(&set)?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            "stampgate_upstream_duration_seconds",
            "Time from sending a request to a stamp until its response head",
            None,
            MetricType::Histogram,
        )?;
        for (labels, s) in stamps() {
            let (sum, count, buckets) = s.stats.upstream_latency.snapshot();
            fam.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }

        let mut fam = encoder.encode_descriptor(
            "stampgate_in_flight_requests",
            "Requests being served by each stamp (headers or body)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s) in stamps() {
            let n = s.stats.in_flight.load(Ordering::Relaxed) as i64;
            ConstGauge::new(n).encode(fam.encode_family(&labels)?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "stampgate_stamp_effective_weight",
            "Weight the current routing table gives each stamp (0: no new requests)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s) in stamps() {
            ConstGauge::new(i64::from(s.effective_weight)).encode(fam.encode_family(&labels)?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "stampgate_retries",
            "Retries granted by each route's retry budget",
            None,
            MetricType::Counter,
        )?;
        for r in table.routes() {
            let labels = [("route", r.name.to_string())];
            ConstCounter::new(r.budget.retries_total()).encode(fam.encode_family(&labels)?)?;
        }
        let mut fam = encoder.encode_descriptor(
            "stampgate_retry_budget_exhausted",
            "Retries refused because the route's retry budget was spent",
            None,
            MetricType::Counter,
        )?;
        for r in table.routes() {
            let labels = [("route", r.name.to_string())];
            ConstCounter::new(r.budget.exhausted_total()).encode(fam.encode_family(&labels)?)?;
        }

        let fam = encoder.encode_descriptor(
            "stampgate_routing_table_generation",
            "Generation of the routing table in use (bumps on every publish)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(table.generation as i64).encode(fam)?;
        Ok(())
    }
}

/// The registry behind `GET /metrics`.
pub fn registry(routing: Arc<ArcSwap<RoutingTable>>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TableCollector { routing }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(9));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 9.0305).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[5], (0.05, 2));
        assert_eq!(buckets.last().unwrap().1, 3, "+Inf counts everything");
    }
}
