//! The control plane: the one task that owns every piece of mutable routing
//! state (health state machines, slow-start ramps, probe tasks) and the only
//! code that stores a new [`RoutingTable`]. Probes, the request path's
//! passive signals and timers reach it as [`Signal`]s on one channel; when
//! effective weights change it builds a complete new table and publishes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolConfig, RouteConfig, StampConfig};
use crate::discovery::{self, Discovery, DnsCache, DnsError, DnsReport};
use crate::health::probe::{self, ProbeSchedule, ProbeTarget};
use crate::health::state::{
    HealthSettings, HealthState, ProbeSample, StampHealth, Transition, max_ejected_allows,
};
use crate::proxy::budget::RetryBudget;
use crate::proxy::upstream::{Upstream, UpstreamSetupError};
use crate::routing::{RoutingTable, StampInput, StampStats};

pub mod admin;
pub mod events;

use admin::{AdminError, AdminRequest, Command};
use events::{EventKind, EventLog, NewEvent};

/// Signals queued for the controller. Sized for a burst of probe results
/// from many stamps; the request path never waits on it (`try_send`).
const SIGNAL_QUEUE: usize = 1024;
/// How often time-driven changes are looked at: ejection expiry, hold
/// times, slow-start steps. A tenth of a second keeps failback precise
/// without measurable cost.
const TICK: Duration = Duration::from_millis(100);
/// Live error rates are computed over this window.
const LIVE_WINDOW: Duration = Duration::from_secs(1);
/// Slow start ramps in this many steps, so a recovery publishes a handful
/// of intermediate tables rather than one per tick.
const SLOW_START_STEPS: f64 = 10.0;
/// A recovered stamp starts its ramp at this share of its weight (Envoy's
/// `min_weight_percent` idea): zero would starve it of the traffic that
/// proves it healthy.
const SLOW_START_FLOOR: f64 = 0.1;
/// Penalty one flap adds; the config speaks in flaps, the damper in points.
const FLAP_PENALTY: f64 = 1000.0;
/// Retry budget window and floor (Finagle/tower defaults): the floor lets
/// a quiet route still retry a few requests a second.
const BUDGET_TTL: Duration = Duration::from_secs(10);
const BUDGET_MIN_PER_SEC: u32 = 10;

/// Something the controller must react to.
#[derive(Debug)]
pub enum Signal {
    /// A probe finished.
    Probe {
        /// Stamp name.
        stamp: Arc<str>,
        /// The raw sample.
        sample: ProbeSample,
    },
    /// The request path saw `consecutive` gateway failures in a row.
    Outlier {
        /// Stamp name.
        stamp: Arc<str>,
        /// The count that crossed the threshold.
        consecutive: u32,
    },
    /// An operator command (admin API, SIGHUP).
    Admin(AdminRequest),
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A pool's upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// Stamp addresses use host names and no resolver could be set up.
    #[error("dns: {0}")]
    Dns(#[from] DnsError),
}

/// The controller's view of one stamp.
struct StampEntry {
    pool: usize,
    config: StampConfig,
    health: StampHealth,
    stats: Arc<StampStats>,
    fast_probe: Arc<AtomicBool>,
    probe_cancel: CancellationToken,
    /// Counter values at the last live-rate sample.
    seen_requests: u64,
    seen_errors: u64,
}

/// What the rest of the process holds of the controller.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    /// The routing table (read by the request path).
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// Where passive signals go.
    pub signals: mpsc::Sender<Signal>,
    /// Health transitions and alarms.
    pub events: EventLog,
}

impl ControllerHandle {
    /// Ask the controller to carry out `command` on behalf of `who`, and
    /// wait for its answer.
    pub async fn command(
        &self,
        command: Command,
        who: &str,
    ) -> Result<serde_json::Value, AdminError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = AdminRequest {
            command,
            who: who.to_owned(),
            reply,
        };
        self.signals
            .send(Signal::Admin(request))
            .await
            .map_err(|_| AdminError::Unavailable)?;
        answer.await.map_err(|_| AdminError::Unavailable)?
    }
}

/// The control loop's state. Owned by its task; nothing else mutates it.
pub struct Controller {
    config: Config,
    stamps: Vec<StampEntry>,
    by_name: HashMap<Arc<str>, usize>,
    upstreams: Vec<Arc<Upstream>>,
    dns: DnsCache,
    budgets: HashMap<String, Arc<RetryBudget>>,
    routing: Arc<ArcSwap<RoutingTable>>,
    /// Fail-open flag per pool in the last published table (for alarms).
    failing_open: Vec<bool>,
    generation: u64,
    events: EventLog,
    signals_tx: mpsc::Sender<Signal>,
    cancel: CancellationToken,
    last_live: Instant,
}

impl Controller {
    /// Build the first table from `config`, start the probes, and spawn the
    /// control loop. It runs until `cancel`.
    pub fn start(
        config: Config,
        cancel: CancellationToken,
    ) -> Result<ControllerHandle, ControllerError> {
        let dns = DnsCache::new();
        let upstreams = config
            .pools
            .iter()
            .map(|p| Upstream::new(p, &dns).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        let (dns_tx, dns_rx) = mpsc::channel(SIGNAL_QUEUE);
        start_dns(&config, &dns, dns_tx, &cancel)?;
        let now = Instant::now();
        let mut stamps = Vec::new();
        let mut by_name = HashMap::new();
        for (pi, pool) in config.pools.iter().enumerate() {
            for s in &pool.stamps {
                by_name.insert(Arc::from(s.name.as_str()), stamps.len());
                stamps.push(StampEntry {
                    pool: pi,
                    config: s.clone(),
                    health: StampHealth::new(health_settings(pool), now),
                    stats: Arc::default(),
                    fast_probe: Arc::default(),
                    probe_cancel: cancel.child_token(),
                    seen_requests: 0,
                    seen_errors: 0,
                });
            }
        }
        let budgets = config
            .routes
            .iter()
            .map(|r| (r.name.clone(), Arc::new(new_budget(r))))
            .collect();
        let events = EventLog::new();
        let mut controller = Controller {
            routing: Arc::new(ArcSwap::from_pointee(RoutingTable::empty())),
            config,
            stamps,
            by_name,
            upstreams,
            dns,
            budgets,
            failing_open: Vec::new(),
            generation: 0,
            events: events.clone(),
            signals_tx: tx.clone(),
            cancel,
            last_live: now,
        };
        controller.publish(now);
        controller.start_probes();
        let handle = ControllerHandle {
            routing: controller.routing.clone(),
            signals: tx,
            events,
        };
        tokio::spawn(controller.run(rx, dns_rx));
        Ok(handle)
    }

    fn start_probes(&self) {
        for entry in &self.stamps {
            let pool = &self.config.pools[entry.pool];
            tokio::spawn(probe::run(
                self.upstreams[entry.pool].clone(),
                ProbeTarget::new(pool, &entry.config),
                ProbeSchedule::of(pool),
                entry.fast_probe.clone(),
                self.signals_tx.clone(),
                entry.probe_cancel.clone(),
            ));
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Signal>, mut dns_rx: mpsc::Receiver<DnsReport>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                Some(signal) = rx.recv() => self.on_signal(signal, Instant::now()),
                Some(report) = dns_rx.recv() => self.on_dns(report, Instant::now()),
                _ = tick.tick() => self.on_tick(Instant::now()),
                () = self.cancel.cancelled() => break,
            }
        }
    }

    fn on_signal(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Probe { stamp, sample } => {
                let Some(&i) = self.by_name.get(&stamp) else {
                    return;
                };
                let t = self.stamps[i].health.record_probe(&sample, now);
                self.after(i, t, now);
            }
            Signal::Outlier { stamp, consecutive } => {
                let Some(&i) = self.by_name.get(&stamp) else {
                    return;
                };
                self.on_outlier(i, consecutive, now);
            }
            Signal::Admin(request) => {
                let answer = self.on_admin(request.command, &request.who, now);
                // The asker may have gone away; the decision stands.
                let _ = request.reply.send(answer);
            }
        }
    }

    /// New addresses for a host: connections to the old ones must not be
    /// reused, so the pools using the host get a fresh upstream client (the
    /// old one closes its connections once in-flight requests finish).
    fn on_dns(&mut self, report: DnsReport, now: Instant) {
        match report {
            DnsReport::Resolved { host, addrs, ttl } => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                tracing::info!(%host, addrs = ?list, ?ttl, "stamp host resolved");
                self.events.push(NewEvent {
                    kind: EventKind::Dns,
                    pool: None,
                    stamp: None,
                    from: None,
                    to: Some(list.join(", ")),
                    reason: format!(
                        "{host} resolves to {} (next lookup in {ttl:?})",
                        list.join(", ")
                    ),
                });
                for (pi, pool) in self.config.pools.iter().enumerate() {
                    if pool.stamps.iter().any(|s| s.host == host) {
                        match Upstream::new(pool, &self.dns) {
                            Ok(u) => self.upstreams[pi] = Arc::new(u),
                            Err(e) => {
                                tracing::error!(pool = %pool.name, error = %e, "cannot renew upstream client")
                            }
                        }
                    }
                }
                self.publish(now);
            }
            DnsReport::Failed { host, error, kept } => {
                tracing::warn!(%host, %error, kept, "stamp host resolution failed; keeping the last answer");
                self.events.push(NewEvent {
                    kind: EventKind::Alarm,
                    pool: None,
                    stamp: None,
                    from: None,
                    to: None,
                    reason: format!(
                        "resolving {host} failed ({error}); {kept} address(es) kept in use"
                    ),
                });
            }
        }
    }

    fn on_admin(
        &mut self,
        command: Command,
        who: &str,
        now: Instant,
    ) -> Result<serde_json::Value, AdminError> {
        let _ = (command, who, now);
        Err(AdminError::Refused(
            "operator commands are being wired in".into(),
        ))
    }

    fn on_outlier(&mut self, i: usize, consecutive: u32, now: Instant) {
        let pool = self.stamps[i].pool;
        let members = self.stamps.iter().filter(|e| e.pool == pool);
        let size = members.clone().count();
        let ejected = members
            .filter(|e| e.health.ejected_until().is_some_and(|u| u > now))
            .count();
        let max_percent = self.config.pools[pool].outlier.max_ejected_percent;
        let entry = &mut self.stamps[i];
        // Start counting afresh either way, and let the request path signal
        // again: after a refusal the next failure asks once more.
        entry.stats.consecutive_failures.store(0, Ordering::Relaxed);
        entry
            .stats
            .ejection_requested
            .store(false, Ordering::Relaxed);
        let already = entry.health.ejected_until().is_some_and(|u| u > now);
        if already {
            return;
        }
        if !max_ejected_allows(ejected, size, max_percent) {
            tracing::warn!(stamp = %entry.config.name, ejected, size, max_percent, "not ejecting: max_ejected_percent reached");
            return;
        }
        let t = entry.health.eject(consecutive, now);
        self.after(i, t, now);
    }

    fn on_tick(&mut self, now: Instant) {
        let live_due = now.duration_since(self.last_live) >= LIVE_WINDOW;
        if live_due {
            self.last_live = now;
        }
        for i in 0..self.stamps.len() {
            let entry = &mut self.stamps[i];
            let mut t = entry.health.tick(now);
            if live_due {
                let requests = entry.stats.requests.load(Ordering::Relaxed);
                let errors = entry.stats.failures.load(Ordering::Relaxed)
                    + entry.stats.server_errors.load(Ordering::Relaxed);
                let dr = requests.saturating_sub(entry.seen_requests);
                let de = errors.saturating_sub(entry.seen_errors);
                entry.seen_requests = requests;
                entry.seen_errors = errors;
                t = t.or(entry.health.record_live(dr, de, now));
            }
            self.record_transition(i, t);
        }
        self.publish(now);
    }

    /// After a state machine call: record the transition, then publish.
    fn after(&mut self, i: usize, t: Option<Transition>, now: Instant) {
        self.record_transition(i, t);
        self.publish(now);
    }

    fn record_transition(&mut self, i: usize, t: Option<Transition>) {
        let entry = &self.stamps[i];
        entry
            .fast_probe
            .store(entry.health.wants_fast_probes(), Ordering::Relaxed);
        let Some(t) = t else { return };
        let pool = &self.config.pools[entry.pool].name;
        let stamp = &entry.config.name;
        if t.to == HealthState::Unhealthy
            || (t.to == HealthState::Degraded && t.from != HealthState::Unhealthy)
        {
            tracing::warn!(%pool, %stamp, from = %t.from, to = %t.to, reason = %t.reason, "stamp health changed");
        } else {
            tracing::info!(%pool, %stamp, from = %t.from, to = %t.to, reason = %t.reason, "stamp health changed");
        }
        self.events.push(NewEvent {
            kind: EventKind::Health,
            pool: Some(pool.clone()),
            stamp: Some(stamp.clone()),
            from: Some(t.from.to_string()),
            to: Some(t.to.to_string()),
            reason: t.reason,
        });
    }

    fn effective_weight(&self, entry: &StampEntry, now: Instant) -> u32 {
        if !entry.health.usable() || entry.config.weight == 0 {
            return 0;
        }
        let pool = &self.config.pools[entry.pool];
        let ramp = slow_start_factor(entry.health.recovered_at(), pool.slow_start, now);
        let w = f64::from(entry.config.weight) * entry.health.weight_factor() * ramp;
        (w.round() as u32).max(1)
    }

    /// Build a table from the current state and store it if the request
    /// path would decide differently with it (weights, tiers, fail-open).
    fn publish(&mut self, now: Instant) {
        let weights: Vec<u32> = self
            .stamps
            .iter()
            .map(|e| self.effective_weight(e, now))
            .collect();
        let table = RoutingTable::build(
            &self.config,
            self.generation + 1,
            |pool| self.upstreams[pool_index(&self.config, pool)].clone(),
            |route| self.budgets[&route.name].clone(),
            |_, stamp| {
                let i = self.by_name[stamp.name.as_str()];
                let entry = &self.stamps[i];
                StampInput {
                    effective_weight: weights[i],
                    admin_enabled: true,
                    rtt: entry.health.smoothed_rtt(),
                    stats: entry.stats.clone(),
                }
            },
        );
        if self.generation > 0 && table.routes_like(&self.routing.load()) {
            return;
        }
        self.generation += 1;
        let failing_open: Vec<bool> = table.pools.iter().map(|p| p.failing_open).collect();
        for (pi, pool) in table.pools.iter().enumerate() {
            let was = self.failing_open.get(pi).copied().unwrap_or(false);
            if pool.failing_open && !was {
                tracing::error!(pool = %pool.name, "no usable stamp: failing open to every enabled stamp");
                self.events.push(NewEvent {
                    kind: EventKind::Alarm,
                    pool: Some(pool.name.to_string()),
                    stamp: None,
                    from: None,
                    to: Some("fail-open".into()),
                    reason: "no usable stamp: sending traffic to every enabled stamp".into(),
                });
            } else if was && !pool.failing_open {
                self.events.push(NewEvent {
                    kind: EventKind::Alarm,
                    pool: Some(pool.name.to_string()),
                    stamp: None,
                    from: Some("fail-open".into()),
                    to: None,
                    reason: "a stamp is usable again: fail-open ended".into(),
                });
            }
        }
        self.failing_open = failing_open;
        self.routing.store(Arc::new(table));
    }
}

/// One refresh loop per distinct stamp host name; IP literals need none.
fn start_dns(
    config: &Config,
    cache: &DnsCache,
    reports: mpsc::Sender<DnsReport>,
    cancel: &CancellationToken,
) -> Result<(), DnsError> {
    let mut hosts: Vec<&str> = config
        .pools
        .iter()
        .flat_map(|p| &p.stamps)
        .map(|s| s.host.as_str())
        .filter(|h| !discovery::is_ip_literal(h))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    if hosts.is_empty() {
        return Ok(());
    }
    let resolver = Arc::new(Discovery::new(config.dns.clone())?);
    for host in hosts {
        discovery::spawn_refresh(
            resolver.clone(),
            host.to_owned(),
            cache.clone(),
            reports.clone(),
            cancel.child_token(),
        );
    }
    Ok(())
}

fn pool_index(config: &Config, pool: &PoolConfig) -> usize {
    config
        .pools
        .iter()
        .position(|p| p.name == pool.name)
        .expect("pool of this config")
}

fn new_budget(route: &RouteConfig) -> RetryBudget {
    RetryBudget::new(
        BUDGET_TTL,
        BUDGET_MIN_PER_SEC,
        f64::from(route.retry.budget_percent) / 100.0,
    )
}

/// The state machine's tuning from the pool's config.
pub fn health_settings(pool: &PoolConfig) -> HealthSettings {
    let h = &pool.health;
    // The n-th flap within about a half-life crosses the limit: n-1 flaps
    // sit at (n-1)·P, the n-th pushes past (n-½)·P.
    let suppress = (f64::from(h.flap_suppress) - 0.5) * FLAP_PENALTY;
    HealthSettings {
        sample_size: pool.probe.sample_size,
        successful_samples_required: pool.probe.successful_samples_required,
        degraded_rtt: h.degraded_rtt,
        degraded_error_rate: Some(h.degraded_error_rate),
        degraded_weight_percent: h.degraded_weight_percent,
        min_hold: h.min_hold,
        consecutive_failures: pool.outlier.consecutive_failures,
        base_ejection: pool.outlier.base_ejection,
        max_ejection: pool.outlier.max_ejection,
        flap_penalty: FLAP_PENALTY,
        flap_half_life: h.flap_half_life,
        flap_suppress: suppress,
        flap_reuse: suppress / 2.0,
        ..HealthSettings::default()
    }
}

/// Share of its weight a stamp gets `now`, ramping linearly in
/// [`SLOW_START_STEPS`] steps from [`SLOW_START_FLOOR`] over `window` after
/// it recovered.
pub fn slow_start_factor(recovered_at: Option<Instant>, window: Duration, now: Instant) -> f64 {
    let Some(at) = recovered_at else { return 1.0 };
    if window.is_zero() {
        return 1.0;
    }
    let progress = now.duration_since(at).as_secs_f64() / window.as_secs_f64();
    if progress >= 1.0 {
        return 1.0;
    }
    let stepped = (progress * SLOW_START_STEPS).floor() / SLOW_START_STEPS;
    stepped.max(SLOW_START_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramps_in_steps() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        assert_eq!(slow_start_factor(None, w, t0), 1.0);
        assert_eq!(slow_start_factor(Some(t0), w, t0), SLOW_START_FLOOR);
        assert_eq!(
            slow_start_factor(Some(t0), w, t0 + Duration::from_millis(5500)),
            0.5
        );
        assert_eq!(
            slow_start_factor(Some(t0), w, t0 + Duration::from_secs(10)),
            1.0
        );
        assert_eq!(slow_start_factor(Some(t0), Duration::ZERO, t0), 1.0);
    }
}
