//! The fleet's Prometheus metrics: connection to etcd, live edges, the
//! applied revision, how long a decision takes from the watch to the
//! routing table, and resyncs.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of the apply lag, in seconds: applying is a mailbox round trip
/// (sub-millisecond) unless the controller is busy; the target is p99
/// under a second end to end.
const LAG_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// Counters and gauges shared by the sync task and the admin API (all
/// atomics inside; cloning shares them).
#[derive(Debug, Clone)]
pub struct FleetMetrics {
    /// 1 while etcd is reachable.
    pub connected: Gauge,
    /// Live edges (lease-bound views seen).
    pub edges_alive: Gauge,
    /// Last fleet revision applied.
    pub revision: Gauge,
    /// From a decision arriving on the watch to the controller's answer.
    pub apply_lag: Histogram,
    /// Full reads after a compacted revision or a replaced etcd.
    pub resyncs: Counter,
    /// Sessions lost (or failed to open).
    pub outages: Counter,
    /// Decisions this edge wrote.
    pub decisions: Counter,
    /// Decisions that raced another and were planned again.
    pub conflicts: Counter,
    /// Values under the prefix that were not ours and were ignored.
    pub bad_values: Counter,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        FleetMetrics {
            connected: Gauge::default(),
            edges_alive: Gauge::default(),
            revision: Gauge::default(),
            apply_lag: Histogram::new(LAG_BUCKETS),
            resyncs: Counter::default(),
            outages: Counter::default(),
            decisions: Counter::default(),
            conflicts: Counter::default(),
            bad_values: Counter::default(),
        }
    }
}

impl FleetMetrics {
    /// Add them to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "stampgate_fleet_connected",
            "1 while this edge reaches etcd",
            self.connected.clone(),
        );
        registry.register(
            "stampgate_fleet_edges_alive",
            "Edges whose lease-bound view is live",
            self.edges_alive.clone(),
        );
        registry.register(
            "stampgate_fleet_revision",
            "Last etcd revision applied on this edge",
            self.revision.clone(),
        );
        registry.register(
            "stampgate_fleet_apply_lag_seconds",
            "From a fleet decision arriving on the watch to its routing table",
            self.apply_lag.clone(),
        );
        registry.register(
            "stampgate_fleet_resyncs",
            "Full reads of the fleet's decisions (compacted revision, replaced etcd)",
            self.resyncs.clone(),
        );
        registry.register(
            "stampgate_fleet_outages",
            "etcd sessions lost or failed to open",
            self.outages.clone(),
        );
        registry.register(
            "stampgate_fleet_decisions",
            "Fleet decisions written through this edge",
            self.decisions.clone(),
        );
        registry.register(
            "stampgate_fleet_conflicts",
            "Fleet decisions that raced another and were planned again",
            self.conflicts.clone(),
        );
        registry.register(
            "stampgate_fleet_bad_values",
            "Values under the fleet prefix ignored as corrupt or foreign",
            self.bad_values.clone(),
        );
    }
}
