//! The routing table: the one immutable snapshot that the request path reads
//! (with a single `ArcSwap::load`) to map a request to a route, a pool and
//! a stamp. Only the controller builds tables; see [`RoutingTable::build`].
//!
//! A newcomer looking for "which stamp gets this request" wants
//! [`RoutingTable::route`] and then [`selector::Selector::pick`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::Authority;

use crate::config::{
    AllUnhealthy, Config, Method, PoolConfig, RetryConfig, RouteConfig, StampConfig,
};
use crate::upstream::Upstream;

pub mod budget;
pub mod header_rules;
pub mod histogram;
pub mod selector;
pub mod stats;

use budget::RetryBudget;
use header_rules::HeaderRules;

pub use selector::{Selector, Tier, Tried};
pub use stats::RouteStats;

/// Per-stamp counters written by the request path with relaxed atomics and
/// read by the controller, status and metrics. One instance per stamp name
/// lives as long as the stamp is configured, across table generations.
#[derive(Debug, Default)]
pub struct StampStats {
    /// Requests currently being served by the stamp (headers or body).
    pub in_flight: AtomicU64,
    /// Requests sent to the stamp since start.
    pub requests: AtomicU64,
    /// Requests that failed at the stamp (connect, reset, timeout, 5xx gateway).
    pub failures: AtomicU64,
    /// Requests the stamp answered with a 5xx that is not a gateway
    /// failure (the application failed; counts for the live error rate).
    pub server_errors: AtomicU64,
    /// Gateway failures in a row; reset by any answer (passive health).
    pub consecutive_failures: AtomicU32,
    /// Set by the request path when it asked the controller to eject the
    /// stamp, cleared by the controller: one message per episode, not one
    /// per failed request.
    pub ejection_requested: AtomicBool,
    /// Tripped when a drain deadline passes: requests still in flight to
    /// the stamp are cut. Replaced by a fresh wire after each cut.
    pub cut: arc_swap::ArcSwap<crate::tripwire::Tripwire>,
    /// Answers by status class (index 0 = 1xx ... 4 = 5xx), for metrics.
    pub responses: [AtomicU64; 5],
    /// Connect failures by kind (refused, timeout, other), for metrics.
    pub connect_errors: [AtomicU64; 3],
    /// Time from sending a request to the stamp's response head.
    pub upstream_latency: crate::routing::histogram::LatencyHistogram,
    /// Tries sent to the stamp and waiting for a response head: requests
    /// piling up with no answer are how a hung stamp shows.
    pub awaiting_head: AtomicU64,
    /// Live latency samples: time to response head, or until the try
    /// timed out or was cancelled (a lower bound then), and their sum in
    /// microseconds. The controller reads them every tick.
    pub live_samples: AtomicU64,
    /// See [`StampStats::live_samples`].
    pub live_micros: AtomicU64,
    /// The controller's view, mirrored for metrics (written by the
    /// controller only).
    pub control: ControlStats,
}

/// What the controller knows of a stamp, mirrored into atomics so that
/// `/metrics` can read it without asking the controller task.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Health state, as an index of [`HEALTH_STATES`].
    pub health: AtomicU8,
    /// Admin state, as an index of [`ADMIN_STATES`].
    pub admin: AtomicU8,
    /// Health transitions into each state of [`HEALTH_STATES`].
    pub transitions: [AtomicU64; 4],
    /// Passive ejections (consecutive gateway failures).
    pub ejections: AtomicU64,
    /// Probe results: passed, failed.
    pub probes: [AtomicU64; 2],
    /// Probe round-trip times (until the answer or the failure).
    pub probe_duration: crate::routing::histogram::LatencyHistogram,
}

/// Health state labels, indexed as in [`ControlStats::health`].
pub const HEALTH_STATES: [&str; 4] = ["unknown", "healthy", "degraded", "unhealthy"];
/// Admin state labels, indexed as in [`ControlStats::admin`].
pub const ADMIN_STATES: [&str; 4] = ["active", "draining", "drained", "disabled"];

impl ControlStats {
    /// Mirror the current health and admin state labels.
    pub fn set_state(&self, health: &str, admin: &str) {
        let index = |all: &[&str; 4], s: &str| all.iter().position(|x| *x == s).unwrap_or(0) as u8;
        self.health
            .store(index(&HEALTH_STATES, health), Ordering::Relaxed);
        self.admin
            .store(index(&ADMIN_STATES, admin), Ordering::Relaxed);
    }

    /// Count a transition into `state` (a [`HEALTH_STATES`] label).
    pub fn transition_to(&self, state: &str) {
        if let Some(i) = HEALTH_STATES.iter().position(|x| *x == state) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How one try at a stamp ended, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stamp answered (any status but a gateway failure or 5xx).
    Answered,
    /// The stamp answered 5xx (not 502/503/504): the application failed.
    ServerError,
    /// Connect error, reset, timeout, or 502/503/504.
    GatewayFailure,
}

impl StampStats {
    /// Record a finished try. Returns the consecutive gateway-failure count
    /// after it.
    pub fn record(&self, outcome: Outcome) -> u32 {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::GatewayFailure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            }
            Outcome::ServerError => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Answered => {}
        }
        // Avoid a write (and cache-line traffic) when already zero.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        0
    }
}

impl StampStats {
    /// A try to the stamp begins at `start`: it waits for its response
    /// head until [`HeadWait::finish`], or until dropped (cancelled: a lost
    /// hedge, a client gone), which counts the time waited as a sample.
    pub fn begin_try(&self, start: tokio::time::Instant) -> HeadWait<'_> {
        self.awaiting_head.fetch_add(1, Ordering::Relaxed);
        HeadWait {
            stats: self,
            start,
            done: false,
        }
    }

    fn add_sample(&self, waited: Duration) {
        self.live_samples.fetch_add(1, Ordering::Relaxed);
        self.live_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }
}

/// One try waiting for its response head; keeps
/// [`StampStats::awaiting_head`] and the live latency samples right
/// whichever way the try ends. Relaxed atomics, no allocation.
#[derive(Debug)]
pub struct HeadWait<'a> {
    stats: &'a StampStats,
    start: tokio::time::Instant,
    done: bool,
}

impl HeadWait<'_> {
    /// The try ended; `sample`: its time says something about the stamp's
    /// latency (a response head, a timeout), unlike a refused connect.
    /// Returns the time it took (one clock read, shared with the caller).
    pub fn finish(mut self, sample: bool) -> Duration {
        self.done = true;
        let waited = self.start.elapsed();
        self.stats.awaiting_head.fetch_sub(1, Ordering::Relaxed);
        if sample {
            self.stats.add_sample(waited);
        }
        waited
    }
}

impl Drop for HeadWait<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.awaiting_head.fetch_sub(1, Ordering::Relaxed);
            self.stats.add_sample(self.start.elapsed());
        }
    }
}

/// What the controller knows about a stamp when it builds a table.
#[derive(Debug, Clone)]
pub struct StampInput {
    /// configured weight × health factor × slow-start ramp × admin state;
    /// zero means "no new requests".
    pub effective_weight: u32,
    /// The operator allows traffic (not draining, not disabled): fail-open
    /// may use the stamp even when it is unhealthy.
    pub admin_enabled: bool,
    /// The stamp's latency for the latency method: its live latency when
    /// it has recent traffic, else its smoothed probe round-trip time.
    pub rtt: Option<Duration>,
    /// A latency outlier: it keeps only a trickle of new requests
    /// ([`TRICKLE_SHARE`]), enough to see it recover.
    pub trickle: bool,
    /// The stamp's counters, carried over from earlier tables.
    pub stats: Arc<StampStats>,
}

/// One stamp as the request path sees it.
#[derive(Debug, Clone)]
pub struct StampView {
    /// Stamp name.
    pub name: Arc<str>,
    /// The name as a header value, made once per table (`x-stampgate-stamp`).
    pub name_header: http::HeaderValue,
    /// Region label.
    pub region: Arc<str>,
    /// Small integer per distinct region of the pool (retries avoid regions
    /// already tried without comparing strings).
    pub region_id: u16,
    /// `host:port` to connect to.
    pub authority: Authority,
    /// Weight from the config.
    pub configured_weight: u32,
    /// Weight this table gives it.
    pub effective_weight: u32,
    /// Priority tier from the config.
    pub priority: u32,
    /// Shared counters.
    pub stats: Arc<StampStats>,
}

/// One pool with its ready-made selector.
#[derive(Debug)]
pub struct PoolView {
    /// Pool name.
    pub name: Arc<str>,
    /// Routing method.
    pub method: Method,
    /// Stamps in config order (selector indices point here).
    pub stamps: Vec<StampView>,
    /// Who gets the next request.
    pub selector: Selector,
    /// What happens when nothing is usable.
    pub all_unhealthy: AllUnhealthy,
    /// True when no stamp was usable and fail-open put them all back.
    pub failing_open: bool,
    /// `Host` to send upstream instead of the client's.
    pub host_header: Option<http::HeaderValue>,
    /// Connection pools to the stamps; shared across tables so a publish
    /// never drops warm connections.
    pub upstream: Arc<Upstream>,
    /// Consecutive gateway failures after which the request path asks the
    /// controller to eject a stamp.
    pub outlier_threshold: u32,
}

impl PoolView {
    fn routes_like(&self, other: &PoolView) -> bool {
        self.selector == other.selector
            && self.failing_open == other.failing_open
            && Arc::ptr_eq(&self.upstream, &other.upstream)
            && self.stamps.len() == other.stamps.len()
            && self
                .stamps
                .iter()
                .zip(&other.stamps)
                .all(|(a, b)| a.effective_weight == b.effective_weight && a.name == b.name)
    }
}

/// One route, precompiled for matching.
#[derive(Debug)]
pub struct RouteEntry {
    /// Route name.
    pub name: Arc<str>,
    /// Exact host names (lower case); empty matches any host.
    hosts: Box<[Box<str>]>,
    /// Path prefix.
    pub path_prefix: Box<str>,
    /// Index into [`RoutingTable::pools`].
    pub pool: usize,
    /// Whole-request limit until response headers.
    pub timeout: Duration,
    /// Retry settings.
    pub retry: RetryConfig,
    /// The route's retry budget, shared across tables.
    pub budget: Arc<RetryBudget>,
    /// What clients saw on this route, shared across tables.
    pub stats: Arc<RouteStats>,
}

impl RouteEntry {
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        path.starts_with(&*self.path_prefix)
            && (self.hosts.is_empty()
                || host.is_some_and(|h| self.hosts.iter().any(|e| e.eq_ignore_ascii_case(h))))
    }
}

/// What a route keeps across tables.
#[derive(Debug, Clone)]
pub struct RouteShared {
    /// Its retry budget.
    pub budget: Arc<RetryBudget>,
    /// Its client-side counters.
    pub stats: Arc<RouteStats>,
}

/// The immutable snapshot: routes, pools, selectors.
#[derive(Debug)]
pub struct RoutingTable {
    /// Bumps on every publish; shown in status.
    pub generation: u64,
    /// Routes ordered for first-match: routes naming hosts before catch-all
    /// ones, longest prefix first within each group.
    routes: Vec<RouteEntry>,
    /// Pools, indexed by [`RouteEntry::pool`].
    pub pools: Vec<PoolView>,
    /// `proxy.max_request_body` (here so that a reload changes it).
    pub max_request_body: u64,
    /// `proxy.stamp_header`: responses name the serving stamp.
    pub stamp_header: bool,
    /// `proxy.forwarded_headers` and `proxy.request_id`.
    pub header_rules: HeaderRules,
    /// `access_log.sample` when the access log is on: the share of
    /// answers below 500 that are logged (5xx always are).
    pub access_log: Option<f64>,
}

impl RoutingTable {
    /// Build a table from the config and the controller's view of each stamp.
    ///
    /// `upstream` supplies the connection pool of each pool and `shared`
    /// the retry budget and counters of each route (the controller keeps
    /// both across tables); `input` the state of each stamp.
    pub fn build(
        config: &Config,
        generation: u64,
        mut upstream: impl FnMut(&PoolConfig) -> Arc<Upstream>,
        mut shared: impl FnMut(&RouteConfig) -> RouteShared,
        mut input: impl FnMut(&PoolConfig, &StampConfig) -> StampInput,
    ) -> RoutingTable {
        let pools: Vec<PoolView> = config
            .pools
            .iter()
            .map(|p| {
                let inputs: Vec<StampInput> = p.stamps.iter().map(|s| input(p, s)).collect();
                build_pool(p, inputs, upstream(p))
            })
            .collect();
        let mut routes: Vec<RouteEntry> = config
            .routes
            .iter()
            .map(|r| (r, shared(r)))
            .map(|(r, shared)| RouteEntry {
                name: r.name.as_str().into(),
                hosts: r
                    .hosts
                    .iter()
                    .filter(|h| h.as_str() != "*")
                    .map(|h| h.to_ascii_lowercase().into_boxed_str())
                    .collect(),
                path_prefix: r.path_prefix.as_str().into(),
                pool: config
                    .pools
                    .iter()
                    .position(|p| p.name == r.pool)
                    .expect("validated config: route pools exist"),
                timeout: r.timeout,
                retry: r.retry.clone(),
                budget: shared.budget,
                stats: shared.stats,
            })
            .collect();
        // Stable sort keeps file order among equals, so the first of two
        // identical routes wins, as the operator would read it.
        routes.sort_by_key(|r| (r.hosts.is_empty(), std::cmp::Reverse(r.path_prefix.len())));
        RoutingTable {
            generation,
            routes,
            pools,
            max_request_body: config.proxy.max_request_body,
            stamp_header: config.proxy.stamp_header,
            header_rules: HeaderRules {
                forwarded: config.proxy.forwarded_headers,
                request_id: config.proxy.request_id,
            },
            access_log: config
                .access_log
                .enabled
                .then_some(config.access_log.sample),
        }
    }

    /// The route for a request: a route naming the host beats a catch-all
    /// one, then the longest path prefix wins. `host` is without port.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&RouteEntry> {
        self.route_index(host, path).map(|i| &self.routes[i])
    }

    /// [`RoutingTable::route`] as an index into [`RoutingTable::routes`].
    pub fn route_index(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(host, path))
    }

    /// A table with no routes (before the first publish).
    pub fn empty() -> RoutingTable {
        RoutingTable {
            generation: 0,
            routes: Vec::new(),
            pools: Vec::new(),
            max_request_body: 0,
            stamp_header: false,
            header_rules: HeaderRules::default(),
            access_log: None,
        }
    }

    /// Whether `other` would route every request the same way: same pools,
    /// selectors, weights and fail-open state (routes come from the same
    /// config). The controller publishes only tables that differ.
    pub fn routes_like(&self, other: &RoutingTable) -> bool {
        self.routes.len() == other.routes.len()
            && self.pools.len() == other.pools.len()
            && self
                .pools
                .iter()
                .zip(&other.pools)
                .all(|(a, b)| a.routes_like(b))
    }

    /// Routes in match order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&PoolView> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}

fn build_pool(pool: &PoolConfig, inputs: Vec<StampInput>, upstream: Arc<Upstream>) -> PoolView {
    let mut regions: Vec<&str> = Vec::new();
    let stamps: Vec<StampView> = pool
        .stamps
        .iter()
        .zip(&inputs)
        .map(|(s, i)| StampView {
            name: s.name.as_str().into(),
            name_header: http::HeaderValue::from_str(&s.name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-name")),
            region: s.region.as_str().into(),
            region_id: region_id(&mut regions, &s.region),
            authority: authority_of(s),
            configured_weight: s.weight,
            effective_weight: i.effective_weight,
            priority: s.priority,
            stats: i.stats.clone(),
        })
        .collect();
    let usable = |i: &usize| inputs[*i].effective_weight > 0;
    let mut failing_open = false;
    let trickled = trickled(pool, &inputs);
    let full = |i: &usize| usable(i) && !trickled[*i];
    // Full weights are scaled so that a trickle of one weight unit is a
    // small share even when the configured weights are small numbers.
    let scale = if trickled.contains(&true) {
        TRICKLE_SCALE
    } else {
        1
    };
    let weighted = |i: usize| (i, inputs[i].effective_weight.saturating_mul(scale));
    let tiers: Vec<Tier> = if !(0..stamps.len()).any(|i| usable(&i)) {
        match pool.all_unhealthy {
            AllUnhealthy::FailClosed => Vec::new(),
            AllUnhealthy::FailOpen => {
                failing_open = true;
                let enabled = (0..stamps.len()).filter(|&i| inputs[i].admin_enabled);
                vec![Tier::new(enabled.map(|i| (i, stamps[i].configured_weight)))]
            }
        }
    } else {
        let mut tiers: Vec<Vec<(usize, u32)>> = match pool.method {
            Method::Weighted | Method::Latency => {
                vec![(0..stamps.len()).filter(full).map(weighted).collect()]
            }
            Method::Priority => {
                let mut prios: Vec<u32> = pool.stamps.iter().map(|s| s.priority).collect();
                prios.sort_unstable();
                prios.dedup();
                prios
                    .into_iter()
                    .map(|p| {
                        let members = (0..stamps.len()).filter(full);
                        members
                            .filter(|&i| stamps[i].priority == p)
                            .map(weighted)
                            .collect()
                    })
                    .collect()
            }
        };
        // Trickled stamps join the first tier that takes new requests,
        // whatever their own tier: a slow primary must not keep its tier
        // (and so all traffic) to itself.
        tiers.retain(|t| !t.is_empty());
        let total: u32 = tiers.first().map_or(0, |t| t.iter().map(|m| m.1).sum());
        let trickle = ((f64::from(total) * TRICKLE_SHARE).round() as u32).max(1);
        let slow = (0..stamps.len()).filter(usable).filter(|&i| trickled[i]);
        match tiers.first_mut() {
            Some(first) => first.extend(slow.map(|i| (i, trickle))),
            // Nothing at full weight (cannot happen with the outlier rule,
            // which compares with the others): share by weight anyway.
            None => tiers.push(slow.map(weighted).collect()),
        }
        tiers.into_iter().map(Tier::new).collect()
    };
    PoolView {
        name: pool.name.as_str().into(),
        method: pool.method,
        stamps,
        selector: Selector::new(tiers),
        all_unhealthy: pool.all_unhealthy,
        failing_open,
        host_header: pool
            .host_header
            .as_deref()
            .and_then(|h| http::HeaderValue::from_str(h).ok()),
        upstream,
        outlier_threshold: pool.outlier.consecutive_failures,
    }
}

/// The share of a pool's new requests that each trickled stamp (a latency
/// outlier, or too slow for the latency method) still gets: enough to see
/// it recover within seconds at a few hundred requests a second, and well
/// under the 1 % by which a drill judges traffic to have left it.
pub const TRICKLE_SHARE: f64 = 0.0025;
/// Full weights are multiplied by this when a pool has trickled stamps, so
/// that one unit of trickle weight is at most [`TRICKLE_SHARE`].
const TRICKLE_SCALE: u32 = 400;

/// Which usable stamps get only a trickle: latency outliers, and for the
/// latency method the stamps slower than the fastest by more than
/// `latency_sensitivity` (the fastest judged among the others, so the
/// rule never trickles every stamp).
fn trickled(pool: &PoolConfig, inputs: &[StampInput]) -> Vec<bool> {
    let usable = |i: usize| inputs[i].effective_weight > 0;
    let mut trickled: Vec<bool> = (0..inputs.len())
        .map(|i| usable(i) && inputs[i].trickle)
        .collect();
    if pool.method == Method::Latency {
        let fastest = (0..inputs.len())
            .filter(|&i| usable(i) && !trickled[i])
            .filter_map(|i| inputs[i].rtt)
            .min();
        for i in (0..inputs.len()).filter(|&i| usable(i)) {
            // Not measured yet: give it traffic rather than guess it slow.
            if let (Some(f), Some(rtt)) = (fastest, inputs[i].rtt) {
                trickled[i] |= rtt > f + pool.latency_sensitivity;
            }
        }
    }
    trickled
}

fn region_id<'a>(regions: &mut Vec<&'a str>, region: &'a str) -> u16 {
    let pos = regions
        .iter()
        .position(|r| *r == region)
        .unwrap_or_else(|| {
            regions.push(region);
            regions.len() - 1
        });
    u16::try_from(pos).expect("fewer than 65536 regions")
}

/// The authority to connect to; IPv6 hosts get their brackets back.
pub fn authority_of(stamp: &StampConfig) -> Authority {
    let text = if stamp.host.contains(':') {
        format!("[{}]:{}", stamp.host, stamp.port)
    } else {
        format!("{}:{}", stamp.host, stamp.port)
    };
    text.parse()
        .expect("validated config: stamp addresses are valid authorities")
}

/// Host part of a `Host` header or URI authority: port stripped, IPv6
/// brackets kept off, a trailing dot removed.
pub fn host_without_port(authority: &str) -> &str {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Stamp views with the given names and region ids, for selector tests.
    pub(crate) fn stamp_views(spec: &[(&str, u16)]) -> Vec<StampView> {
        spec.iter()
            .map(|&(name, region_id)| StampView {
                name: name.into(),
                name_header: http::HeaderValue::from_static("x"),
                region: format!("r{region_id}").into(),
                region_id,
                authority: "127.0.0.1:1".parse().unwrap(),
                configured_weight: 100,
                effective_weight: 100,
                priority: 1,
                stats: Arc::default(),
            })
            .collect()
    }

    /// A pool of three stamps (priorities 1, 2, 2) with `method`.
    fn pool_config(method: &str) -> PoolConfig {
        let text = format!(
            r#"
[[routes]]
name = "r"
pool = "p"
[pools.p]
method = "{method}"
[[pools.p.stamps]]
name = "a"
region = "r1"
address = "127.0.0.1:9001"
weight = 1
[[pools.p.stamps]]
name = "b"
region = "r2"
address = "127.0.0.1:9002"
weight = 1
priority = 2
[[pools.p.stamps]]
name = "c"
region = "r3"
address = "127.0.0.1:9003"
weight = 1
priority = 2
"#
        );
        let cfg = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        cfg.pools.into_iter().next().unwrap()
    }

    fn input(trickle: bool, rtt_ms: u64) -> StampInput {
        StampInput {
            effective_weight: 1,
            admin_enabled: true,
            rtt: Some(Duration::from_millis(rtt_ms)),
            trickle,
            stats: Arc::default(),
        }
    }

    /// Share of new requests per stamp over many picks.
    fn shares(pool: &PoolView) -> Vec<f64> {
        let n = 100_000;
        let mut counts = vec![0u32; pool.stamps.len()];
        for _ in 0..n {
            counts[pool.selector.pick(&pool.stamps, &Tried::default()).unwrap()] += 1;
        }
        counts
            .iter()
            .map(|&c| f64::from(c) / f64::from(n))
            .collect()
    }

    fn built(method: &str, inputs: Vec<StampInput>) -> PoolView {
        let config = pool_config(method);
        let upstream = Arc::new(Upstream::new(&config, &Default::default()).unwrap());
        build_pool(&config, inputs, upstream)
    }

    #[test]
    fn a_latency_outlier_keeps_only_a_trickle_in_every_method() {
        fastrand::seed(3);
        for method in ["weighted", "latency"] {
            let pool = built(
                method,
                vec![input(false, 1), input(true, 1), input(false, 1)],
            );
            let s = shares(&pool);
            assert!(s[1] > 0.0 && s[1] < 0.005, "{method}: trickle {s:?}");
        }
        // Priority: the slow primary must not keep its tier to itself.
        let pool = built(
            "priority",
            vec![input(true, 1), input(false, 1), input(false, 1)],
        );
        let s = shares(&pool);
        assert!(s[0] > 0.0 && s[0] < 0.005, "primary trickles: {s:?}");
        assert!(
            s[1] > 0.45 && s[2] > 0.45,
            "the backup tier takes over: {s:?}"
        );
    }

    #[test]
    fn the_latency_method_trickles_stamps_slower_than_the_sensitivity() {
        fastrand::seed(4);
        // 300 ms against 1 ms, sensitivity 50 ms by default.
        let pool = built(
            "latency",
            vec![input(false, 1), input(false, 300), input(false, 30)],
        );
        let s = shares(&pool);
        assert!(s[1] > 0.0 && s[1] < 0.005, "{s:?}");
        assert!(s[2] > 0.45, "30 ms is within the sensitivity: {s:?}");
        // Nobody trickled: no scaling, even shares.
        let pool = built(
            "latency",
            vec![input(false, 1), input(false, 2), input(false, 3)],
        );
        assert!(shares(&pool).iter().all(|&x| x > 0.3));
    }

    #[test]
    fn host_is_stripped_of_port_and_brackets() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("example.com."), "example.com");
        assert_eq!(host_without_port("[::1]:443"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
    }

    #[test]
    fn stats_count_consecutive_failures_until_a_success() {
        let s = StampStats::default();
        assert_eq!(s.record(Outcome::GatewayFailure), 1);
        assert_eq!(s.record(Outcome::GatewayFailure), 2);
        assert_eq!(
            s.record(Outcome::ServerError),
            0,
            "an answer ends the streak"
        );
        assert_eq!(s.record(Outcome::GatewayFailure), 1);
        assert_eq!(s.record(Outcome::Answered), 0);
        assert_eq!(s.requests.load(Ordering::Relaxed), 5);
        assert_eq!(s.failures.load(Ordering::Relaxed), 3);
        assert_eq!(s.server_errors.load(Ordering::Relaxed), 1);
    }
}
