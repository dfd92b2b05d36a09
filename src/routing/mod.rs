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
    AllUnhealthy, Config, HedgeAfter, Method, PoolConfig, RetryConfig, RouteConfig, StampConfig,
};
use crate::counters::{ByEnum, Label, labels};
use crate::signals::{AdminShown, HealthState};
use crate::upstream::Upstream;

pub mod budget;
pub mod head_latency;
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
    /// Connect failures by kind, for metrics.
    pub connect_errors: ByEnum<ConnectError, AtomicU64, 3>,
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
    /// Health state, as its [`Label::index`] (read with [`ControlStats::health`]).
    health: AtomicU8,
    /// Admin state as shown, as its [`Label::index`].
    admin: AtomicU8,
    /// Health transitions into each state.
    pub transitions: ByEnum<HealthState, AtomicU64, 4>,
    /// Passive ejections (consecutive gateway failures).
    pub ejections: AtomicU64,
    /// Probe results.
    pub probes: ByEnum<ProbeResult, AtomicU64, 2>,
    /// Probe round-trip times (until the answer or the failure).
    pub probe_duration: crate::routing::histogram::LatencyHistogram,
}

labels! {
    /// Why a connect to a stamp failed (`kind` on /metrics).
    pub enum ConnectError {
        /// Nothing listens at the address.
        Refused => "refused",
        /// No answer within `connect_timeout`.
        Timeout => "timeout",
        /// Anything else (unreachable, TLS, ...).
        Other => "other",
    }
}

labels! {
    /// An active probe's result (`result` on /metrics).
    pub enum ProbeResult {
        /// It met its expectations.
        Passed => "passed",
        /// It did not.
        Failed => "failed",
    }
}

impl ProbeResult {
    /// The result of a probe that did (`true`) or did not pass.
    pub fn of(ok: bool) -> ProbeResult {
        if ok {
            ProbeResult::Passed
        } else {
            ProbeResult::Failed
        }
    }
}

impl ControlStats {
    /// Mirror the current health and admin state.
    pub fn set_state(&self, health: HealthState, admin: AdminShown) {
        let index = |i: usize| u8::try_from(i).expect("a handful of states");
        self.health.store(index(health.index()), Ordering::Relaxed);
        self.admin.store(index(admin.index()), Ordering::Relaxed);
    }

    /// The health state last mirrored.
    pub fn health(&self) -> HealthState {
        HealthState::ALL[usize::from(self.health.load(Ordering::Relaxed))]
    }

    /// The admin state last mirrored.
    pub fn admin(&self) -> AdminShown {
        AdminShown::ALL[usize::from(self.admin.load(Ordering::Relaxed))]
    }

    /// Count a transition into `state`.
    pub fn transition_to(&self, state: HealthState) {
        self.transitions[state].fetch_add(1, Ordering::Relaxed);
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
    /// It gets only a trickle of new requests ([`TRICKLE_SHARE`]): a
    /// latency outlier, or too slow for the latency method.
    pub trickled: bool,
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
    /// Longest silence of a stamp while its response body is read.
    pub read_timeout: std::time::Duration,
}

impl PoolView {
    /// Whether a stamp of this pool is usable by its own health and the
    /// operator's word: the selector has one, and it is not the fail-open
    /// fallback (which hands traffic to stamps known to be down). This is
    /// what "this edge can serve the pool" means both for DNS answers of
    /// kind `"edges"` and for the pools an edge publishes to the fleet, so
    /// that the two can never disagree.
    pub fn has_usable_stamp(&self) -> bool {
        !self.selector.is_empty() && !self.failing_open
    }

    fn routes_like(&self, other: &PoolView) -> bool {
        self.selector == other.selector
            && self.failing_open == other.failing_open
            && self.read_timeout == other.read_timeout
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

    /// How long a try waits for its response head before a hedge goes:
    /// the fixed `retry.hedge_after`, or the quantile the controller last
    /// read from the route's answers. `None`: the route does not hedge, or
    /// has too few recent answers to know its quantile.
    pub fn hedge_delay(&self) -> Option<Duration> {
        match self.retry.hedge_after? {
            HedgeAfter::Fixed(after) => Some(after),
            HedgeAfter::Quantile(_) => self.stats.head_latency.delay(),
        }
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
    let trickled = trickled(pool, &inputs);
    let mut regions: Vec<&str> = Vec::new();
    let stamps: Vec<StampView> = pool
        .stamps
        .iter()
        .zip(&inputs)
        .zip(&trickled)
        .map(|((s, i), &trickled)| StampView {
            name: s.name.as_str().into(),
            name_header: http::HeaderValue::from_str(&s.name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-name")),
            region: s.region.as_str().into(),
            region_id: region_id(&mut regions, &s.region),
            authority: authority_of(s),
            configured_weight: s.weight,
            effective_weight: i.effective_weight,
            priority: s.priority,
            trickled,
            stats: i.stats.clone(),
        })
        .collect();
    let usable = |i: &usize| inputs[*i].effective_weight > 0;
    let mut failing_open = false;
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
        read_timeout: pool.read_timeout,
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
                trickled: false,
                stats: Arc::default(),
            })
            .collect()
    }

    // --- RoutingTable::build ---------------------------------------------

    /// One route to pool `p` with `pool_keys`, and a stamp per
    /// `(name, region, priority)`.
    fn config(pool_keys: &str, stamps: &[(&str, &str, u32)]) -> Config {
        let mut text = format!("[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\n{pool_keys}\n");
        for (i, (name, region, priority)) in stamps.iter().enumerate() {
            text.push_str(&format!(
                "[[pools.p.stamps]]\nname = \"{name}\"\nregion = \"{region}\"\n\
                 address = \"127.0.0.1:{}\"\npriority = {priority}\n",
                9000 + i
            ));
        }
        crate::config::parse_str(&text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// What the controller says of one stamp.
    #[derive(Clone, Copy)]
    struct Seen {
        weight: u32,
        enabled: bool,
        rtt_ms: Option<u64>,
        trickle: bool,
    }

    const UP: Seen = Seen {
        weight: 100,
        enabled: true,
        rtt_ms: None,
        trickle: false,
    };
    const SLOW: Seen = Seen {
        trickle: true,
        ..UP
    };
    const DOWN: Seen = Seen { weight: 0, ..UP };

    fn rtt(ms: u64) -> Seen {
        Seen {
            rtt_ms: Some(ms),
            ..UP
        }
    }

    fn build(config: &Config, seen: &[Seen]) -> RoutingTable {
        let dns = crate::discovery::DnsCache::new();
        let mut next = seen.iter();
        RoutingTable::build(
            config,
            7,
            |p| Arc::new(Upstream::new(p, &dns).expect("plain upstream")),
            |_| RouteShared {
                budget: Arc::new(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
                stats: Arc::new(RouteStats::new(&[])),
            },
            |_, _| {
                let s = next.next().expect("one Seen per stamp");
                StampInput {
                    effective_weight: s.weight,
                    admin_enabled: s.enabled,
                    rtt: s.rtt_ms.map(Duration::from_millis),
                    trickle: s.trickle,
                    stats: Arc::default(),
                }
            },
        )
    }

    /// The first pool's tiers as stamp names with their weights.
    fn tiers(table: &RoutingTable) -> Vec<Vec<(String, u32)>> {
        let pool = &table.pools[0];
        pool.selector
            .tiers()
            .iter()
            .map(|t| {
                t.weighted_members()
                    .map(|(i, w)| (pool.stamps[i].name.to_string(), w))
                    .collect()
            })
            .collect()
    }

    fn named(tiers: &[&[(&str, u32)]]) -> Vec<Vec<(String, u32)>> {
        tiers
            .iter()
            .map(|t| t.iter().map(|&(n, w)| (n.to_owned(), w)).collect())
            .collect()
    }

    #[test]
    fn priority_makes_one_tier_per_priority_in_order_of_only_usable_stamps() {
        let cfg = config(
            "method = \"priority\"",
            &[
                ("a", "r1", 2),
                ("b", "r2", 1),
                ("c", "r3", 1),
                ("d", "r4", 3),
            ],
        );
        let seen = [UP, Seen { weight: 40, ..UP }, DOWN, UP];
        let table = build(&cfg, &seen);
        assert_eq!(table.generation, 7);
        assert_eq!(
            tiers(&table),
            named(&[&[("b", 40)], &[("a", 100)], &[("d", 100)]]),
            "the unusable c is in no tier"
        );
        assert!(!table.pools[0].failing_open);
        assert_eq!(table.pools[0].stamps[1].effective_weight, 40);
        assert_eq!(table.pools[0].stamps[2].configured_weight, 100);
    }

    #[test]
    fn weighted_is_one_tier_of_effective_weights() {
        let cfg = config(
            "method = \"weighted\"",
            &[("a", "r1", 1), ("b", "r2", 2), ("c", "r3", 1)],
        );
        let table = build(&cfg, &[Seen { weight: 10, ..UP }, UP, DOWN]);
        assert_eq!(tiers(&table), named(&[&[("a", 10), ("b", 100)]]));
    }

    #[test]
    fn latency_trickles_stamps_slower_than_the_fastest_usable_one_by_the_sensitivity() {
        let cfg = config(
            "method = \"latency\"\nlatency_sensitivity = \"50ms\"",
            &[
                ("fastest-but-down", "r0", 1),
                ("a", "r1", 1),
                ("b", "r2", 1),
                ("c", "r3", 1),
                ("unmeasured", "r4", 1),
            ],
        );
        let seen = [
            Seen {
                weight: 0,
                ..rtt(1)
            },
            rtt(10),
            rtt(60),
            rtt(61),
            UP,
        ];
        // Full weights scaled by 400 so that c's one unit of trickle,
        // 0.25 % of the first tier's weight, is 300.
        assert_eq!(
            tiers(&build(&cfg, &seen)),
            named(&[&[
                ("a", 40_000),
                ("b", 40_000),
                ("unmeasured", 40_000),
                ("c", 300)
            ]]),
            "within 50 ms of a (10 ms), not of the unusable 1 ms stamp; \
             an unmeasured stamp is not guessed slow"
        );
    }

    #[test]
    fn fail_open_puts_every_enabled_stamp_back_at_its_configured_weight() {
        let cfg = config(
            "method = \"priority\"\nall_unhealthy = \"fail-open\"",
            &[("a", "r1", 1), ("b", "r2", 2), ("disabled", "r3", 1)],
        );
        let seen = [
            DOWN,
            DOWN,
            Seen {
                enabled: false,
                ..DOWN
            },
        ];
        let table = build(&cfg, &seen);
        assert!(table.pools[0].failing_open);
        assert_eq!(
            tiers(&table),
            named(&[&[("a", 100), ("b", 100)]]),
            "one tier, priorities ignored, the operator's disabled stamp left out"
        );
        // One usable stamp is enough to end it.
        let table = build(&cfg, &[DOWN, Seen { weight: 5, ..UP }, DOWN]);
        assert!(!table.pools[0].failing_open);
        assert_eq!(
            tiers(&table),
            named(&[&[("b", 5)]]),
            "the empty tier is dropped"
        );
    }

    #[test]
    fn fail_closed_leaves_no_tier_when_nothing_is_usable() {
        let cfg = config(
            "all_unhealthy = \"fail-closed\"",
            &[("a", "r1", 1), ("b", "r2", 1)],
        );
        let table = build(&cfg, &[DOWN, DOWN]);
        assert!(!table.pools[0].failing_open);
        assert!(tiers(&table).is_empty());
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

    /// Three stamps at priorities 1, 2, 2.
    fn three(method: &str) -> Config {
        config(
            &format!("method = \"{method}\""),
            &[("a", "r1", 1), ("b", "r2", 2), ("c", "r3", 2)],
        )
    }

    #[test]
    fn a_latency_outlier_keeps_only_a_trickle_in_every_method() {
        fastrand::seed(3);
        for method in ["weighted", "latency"] {
            let table = build(
                &three(method),
                &[
                    rtt(1),
                    Seen {
                        trickle: true,
                        ..rtt(1)
                    },
                    rtt(1),
                ],
            );
            let s = shares(&table.pools[0]);
            assert!(s[1] > 0.0 && s[1] < 0.005, "{method}: trickle {s:?}");
        }
        // Priority: the slow primary must not keep its tier to itself.
        let table = build(&three("priority"), &[SLOW, UP, UP]);
        let s = shares(&table.pools[0]);
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
        let table = build(&three("latency"), &[rtt(1), rtt(300), rtt(30)]);
        let s = shares(&table.pools[0]);
        assert!(s[1] > 0.0 && s[1] < 0.005, "{s:?}");
        assert!(s[2] > 0.45, "30 ms is within the sensitivity: {s:?}");
        // Nobody trickled: no scaling, even shares.
        let table = build(&three("latency"), &[rtt(1), rtt(2), rtt(3)]);
        assert!(shares(&table.pools[0]).iter().all(|&x| x > 0.3));
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
