//! The control plane: the one task that owns every piece of mutable routing
//! state (health state machines, operator decisions, slow-start ramps,
//! probe tasks, DNS answers) and the only code that stores a new
//! [`RoutingTable`]. Probes, the request path's passive signals, operator
//! commands and timers reach it on one channel; when what the request path
//! would decide changes, it builds a complete new table and publishes it,
//! and tells [`ControllerHandle::published`] its generation.
//!
//! Nothing slow runs in the loop: a reload's file is read, validated and
//! its new upstream clients built (CA files, the system's root store) on a
//! blocking thread, and the loop only applies the result.
//!
//! Submodules: [`events`] (the event log), `operator` (drain, enable,
//! weight, reload), [`state_file`] (persisted operator decisions), `status`
//! (the status document). The commands themselves are
//! [`crate::signals::command`]: a leaf, so senders need not import this.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HedgeAfter, PoolConfig, StampConfig};
use crate::discovery::{self, Discovery, DnsCache, DnsError, DnsReport};
use crate::health::latency::{self, LatencyVerdict, LiveLatency, OutlierRule, Reading};
use crate::health::probe::{self, ProbeSchedule, ProbeTarget};
use crate::health::rates::{Counts, FailureWindow, LiveClock, LiveRates};
use crate::health::state::{
    HealthSettings, HealthState, StampHealth, Transition, max_ejected_allows,
};
use crate::metrics::ProxyStats;
use crate::proxy::tls::{Certificates, TlsSetupError};
use crate::routing::budget::RetryBudget;
use crate::routing::head_latency::QuantileWindow;
use crate::routing::{ProbeResult, RouteShared, RouteStats, RoutingTable, StampInput, StampStats};
use crate::upstream::{Upstream, UpstreamSetupError};

pub mod events;
mod fleet;
pub mod history;
mod operator;
pub mod state_file;
mod status;

use crate::signals::{AdminError, AdminRequest, AdminState, Command, Signal};
use events::{EventKind, EventLog, NewEvent};

/// Signals queued for the controller. Sized for a burst of probe results
/// from many stamps; the request path never waits on it (`try_send`).
const SIGNAL_QUEUE: usize = 1024;
/// How often time-driven changes are looked at: ejection expiry, hold
/// times, slow-start steps, drain deadlines. A tenth of a second keeps
/// failback precise without measurable cost.
const TICK: Duration = Duration::from_millis(100);
/// Ticks of the sliding window the failure rate is judged on: half a
/// second, evaluated every tick, so that a stamp failing a share of its
/// requests is out well within a second of the fault wherever it falls.
const FAILURE_WINDOW: usize = 5;
/// Slow start ramps in this many steps, so a recovery publishes a handful
/// of intermediate tables rather than one per tick.
const SLOW_START_STEPS: f64 = 10.0;
/// A recovered stamp starts its ramp at this share of its weight (Envoy's
/// `min_weight_percent` idea): zero would starve it of the traffic that
/// proves it healthy.
const SLOW_START_FLOOR: f64 = 0.1;
/// Live windows (seconds) of times to response head an adaptive hedge
/// delay is read from: long enough for a quiet route to have samples,
/// short enough to follow a change in its stamps' latency.
const HEDGE_WINDOW: usize = 10;
/// Fewer samples than this in [`HEDGE_WINDOW`] make no quantile worth
/// hedging on.
const HEDGE_MIN_SAMPLES: u64 = 20;
/// Retry budget window and floor (Finagle/tower defaults): the floor lets
/// a quiet route still retry a few requests a second.
const BUDGET_TTL: Duration = Duration::from_secs(10);
const BUDGET_MIN_PER_SEC: u32 = 10;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A pool's upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// Stamp addresses use host names and no resolver could be set up.
    #[error("dns: {0}")]
    Dns(#[from] DnsError),
    /// The state file exists but cannot be read or parsed; it is left
    /// untouched.
    #[error(transparent)]
    State(#[from] state_file::StateFileError),
    /// A TLS listener certificate is unusable.
    #[error(transparent)]
    Certificates(#[from] TlsSetupError),
}

/// The controller's view of one stamp.
struct StampEntry {
    pool: usize,
    config: StampConfig,
    health: StampHealth,
    stats: Arc<StampStats>,
    fast_probe: Arc<AtomicBool>,
    probe_cancel: CancellationToken,
    /// Requests and failures per second over the last live window.
    live: LiveRates,
    /// Requests and failures over the last [`FAILURE_WINDOW`] ticks, for
    /// failure-rate ejection.
    recent: FailureWindow,
    /// Live latency from the request path's counters, read every tick.
    live_latency: LiveLatency,
    /// Set while the stamp is a latency outlier (it gets a trickle).
    latency_outlier: Option<LatencyVerdict>,
    /// The operator's decision.
    admin: AdminState,
    /// The operator's weight, replacing the configured one.
    weight_override: Option<u32>,
    /// A draining stamp's requests still in flight are cut at this time.
    drain_deadline: Option<Instant>,
    /// The drain was reported complete (nothing in flight).
    drained: bool,
}

impl StampEntry {
    fn new(
        pool: usize,
        config: &PoolConfig,
        stamp: &StampConfig,
        cancel: &CancellationToken,
        now: Instant,
    ) -> StampEntry {
        StampEntry {
            pool,
            config: stamp.clone(),
            health: StampHealth::new(HealthSettings::for_pool(config), now),
            stats: Arc::default(),
            fast_probe: Arc::default(),
            probe_cancel: cancel.child_token(),
            live: LiveRates::default(),
            recent: FailureWindow::new(FAILURE_WINDOW),
            live_latency: LiveLatency::default(),
            latency_outlier: None,
            admin: AdminState::Active,
            weight_override: None,
            drain_deadline: None,
            drained: false,
        }
    }

    fn weight(&self) -> u32 {
        self.weight_override.unwrap_or(self.config.weight)
    }

    /// The latency the latency method ranks by: live when the stamp has
    /// recent traffic (what its callers wait), else the probe's round trip.
    fn latency(&self, now: Instant) -> Option<Duration> {
        self.live_latency
            .estimate(now)
            .map(|e| e.latency)
            .or(self.health.smoothed_rtt())
    }

    /// The request path's cumulative counts for this stamp.
    fn counts(&self) -> Counts {
        Counts {
            requests: self.stats.requests.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed)
                + self.stats.server_errors.load(Ordering::Relaxed),
        }
    }

    fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Ordering::Relaxed)
    }

    fn decision(&self) -> state_file::Decision {
        state_file::Decision {
            admin: self.admin,
            weight: self.weight_override,
        }
    }
}

/// What the rest of the process holds of the controller.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    /// The routing table (read by the request path).
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// Where passive signals and commands go.
    pub signals: mpsc::Sender<Signal>,
    /// Health transitions, alarms and operator actions.
    pub events: EventLog,
    /// Proxy-wide counters (connections, reloads, access log), for metrics.
    pub stats: Arc<ProxyStats>,
    /// Resolved stamp host names, kept fresh by the controller (the DNS
    /// server answers with them).
    pub dns: DnsCache,
    /// The generation of the table last stored in `routing`.
    published: watch::Receiver<u64>,
    /// The TLS listeners' certificates, replaced on reload.
    pub certificates: Arc<Certificates>,
    /// Per-second samples of the last minutes, for the dashboard.
    pub history: Arc<history::History>,
    /// Set when the process starts shutting down: every readiness check
    /// (the admin API's and the `[health]` listener's) fails from then
    /// on, so load balancers stop sending while requests still finish.
    pub shutting_down: Arc<AtomicBool>,
}

impl ControllerHandle {
    /// A handle over parts made elsewhere: `published` carries the
    /// generation of each table stored in `routing`. The controller makes
    /// its own in [`Controller::start`]; tests make one around a stand-in.
    #[allow(clippy::too_many_arguments)] // each is one shared part the controller owns
    pub fn new(
        routing: Arc<ArcSwap<RoutingTable>>,
        signals: mpsc::Sender<Signal>,
        events: EventLog,
        stats: Arc<ProxyStats>,
        published: watch::Receiver<u64>,
        dns: DnsCache,
        certificates: Arc<Certificates>,
        history: Arc<history::History>,
    ) -> ControllerHandle {
        ControllerHandle {
            routing,
            signals,
            events,
            stats,
            dns,
            certificates,
            history,
            published,
            shutting_down: Arc::default(),
        }
    }

    /// The generation of each routing table, sent after it is stored: a
    /// watcher woken with generation `n` finds a table at least that new
    /// in `routing`. Those who must react to a publish (a test awaiting a
    /// routing change, a status stream) await this instead of polling.
    pub fn published(&self) -> watch::Receiver<u64> {
        self.published.clone()
    }

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
    /// Retry budget and counters per route name, kept across tables.
    routes: HashMap<String, RouteShared>,
    routing: Arc<ArcSwap<RoutingTable>>,
    /// Fail-open flag per pool in the last published table (for alarms).
    failing_open: Vec<bool>,
    generation: u64,
    /// Told the generation of every table stored, after the store.
    published: watch::Sender<u64>,
    events: EventLog,
    stats: Arc<ProxyStats>,
    signals_tx: mpsc::Sender<Signal>,
    /// Config files read and validated off the loop (see
    /// `operator::load_off_loop`), to be applied by it.
    loaded_tx: mpsc::Sender<operator::Loaded>,
    cancel: CancellationToken,
    /// When live rates are next sampled, for every stamp at once.
    live_clock: LiveClock,
    /// Operator decisions for stamps the config does not (or no longer)
    /// name: kept and persisted, applied again if the stamp comes back.
    orphans: BTreeMap<String, state_file::Decision>,
    /// The outcome of the last reload, for status.
    last_reload: Option<serde_json::Value>,
    /// The TLS listeners' certificates; this controller is their writer.
    certificates: Arc<Certificates>,
    /// The dashboard's history; pushed to once per live window.
    history: Arc<history::History>,
    /// DNS: the resolver (made once a host name is configured), the report
    /// channel, and the hosts that have a refresh loop.
    resolver: Option<Arc<Discovery>>,
    dns_reports: mpsc::Sender<DnsReport>,
    dns_hosts: BTreeSet<String>,
    /// Fleet decisions, local overrides and quorum verdicts.
    fleet: fleet::FleetState,
    /// Per route hedging at a quantile: its recent times to response head.
    hedge_windows: HashMap<String, QuantileWindow>,
}

impl Controller {
    /// Restore operator decisions from the state file, build the first
    /// table from `config`, start probes and DNS, and spawn the control
    /// loop. It runs until `cancel`.
    pub fn start(
        config: Config,
        stats: Arc<ProxyStats>,
        cancel: CancellationToken,
    ) -> Result<ControllerHandle, ControllerError> {
        let (decisions, fleet_record) = match &config.admin.state_file {
            Some(path) => state_file::load_all(path)?,
            None => (BTreeMap::new(), None),
        };
        let fleet = fleet::FleetState {
            enabled: config.fleet.as_ref().is_some_and(|f| f.is_shared()),
            record: fleet_record.unwrap_or_default(),
            down: BTreeMap::new(),
        };
        let certificates = Arc::new(Certificates::new(&config.proxy.certificates)?);
        let dns = DnsCache::new();
        let upstreams = config
            .pools
            .iter()
            .map(|p| Upstream::new(p, &dns).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        let (dns_tx, dns_rx) = mpsc::channel(SIGNAL_QUEUE);
        // Reloads are rare and each has an asker waiting: a short queue.
        let (loaded_tx, loaded_rx) = mpsc::channel(4);
        let (published, published_rx) = watch::channel(0);
        let now = Instant::now();
        let events = EventLog::new();
        let routes = route_shared(&config, &HashMap::new());
        let mut controller = Controller {
            routing: Arc::new(ArcSwap::from_pointee(RoutingTable::empty())),
            stamps: Vec::new(),
            by_name: HashMap::new(),
            upstreams,
            dns,
            routes,
            failing_open: Vec::new(),
            generation: 0,
            published,
            events: events.clone(),
            stats,
            signals_tx: tx.clone(),
            loaded_tx,
            cancel,
            live_clock: LiveClock::new(now),
            orphans: decisions,
            last_reload: None,
            certificates: certificates.clone(),
            history: Arc::default(),
            resolver: None,
            dns_reports: dns_tx,
            dns_hosts: BTreeSet::new(),
            fleet,
            hedge_windows: HashMap::new(),
            config,
        };
        controller.start_dns()?;
        let cfg = &controller.config;
        let stamps: Vec<String> = cfg
            .pools
            .iter()
            .flat_map(|p| {
                p.stamps
                    .iter()
                    .map(move |s| format!("{}/{} ({})", p.name, s.name, s.region))
            })
            .collect();
        tracing::info!(
            config = %cfg.source.display(),
            routes = cfg.routes.len(),
            pools = cfg.pools.len(),
            ?stamps,
            restored_decisions = controller.orphans.len(),
            "configuration loaded"
        );
        let entries = controller.fresh_entries(now, |_| None);
        controller.install_stamps(entries);
        controller.report_orphans();
        controller.publish(now, true);
        controller.start_probes();
        let handle = ControllerHandle::new(
            controller.routing.clone(),
            tx,
            events,
            controller.stats.clone(),
            published_rx,
            controller.dns.clone(),
            certificates,
            controller.history.clone(),
        );
        tokio::spawn(controller.run(rx, dns_rx, loaded_rx));
        Ok(handle)
    }

    /// An entry per stamp of the current config; `reuse` may hand back an
    /// existing entry (health history, counters) for a stamp.
    fn fresh_entries(
        &self,
        now: Instant,
        mut reuse: impl FnMut(&StampConfig) -> Option<StampEntry>,
    ) -> Vec<StampEntry> {
        let mut entries = Vec::new();
        for (pi, pool) in self.config.pools.iter().enumerate() {
            for s in &pool.stamps {
                let entry = match reuse(s) {
                    Some(mut e) => {
                        e.pool = pi;
                        e.config = s.clone();
                        e
                    }
                    None => StampEntry::new(pi, pool, s, &self.cancel, now),
                };
                entries.push(entry);
            }
        }
        entries
    }

    /// Make `entries` the stamps, applying the operator decisions kept for
    /// their names.
    fn install_stamps(&mut self, mut entries: Vec<StampEntry>) {
        for entry in &mut entries {
            if let Some(decision) = self.orphans.remove(&entry.config.name) {
                entry.admin = decision.admin;
                entry.weight_override = decision.weight;
            }
        }
        self.by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (Arc::from(e.config.name.as_str()), i))
            .collect();
        self.stamps = entries;
    }

    /// Decisions for stamps the config does not name are reported, never
    /// silently dropped.
    fn report_orphans(&self) {
        for (name, decision) in &self.orphans {
            tracing::warn!(stamp = %name, admin = ?decision.admin, weight = ?decision.weight,
                "the state file holds a decision for a stamp that is not in the config; kept aside");
            self.events.push(NewEvent {
                kind: EventKind::Operator,
                pool: None,
                stamp: Some(name.clone()),
                from: None,
                to: None,
                reason: "decision kept aside: the stamp is not in the config".into(),
            });
        }
    }

    fn start_probes(&self) {
        for entry in &self.stamps {
            self.start_probe(entry);
        }
    }

    fn start_probe(&self, entry: &StampEntry) {
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

    /// Probe tasks hold their pool's upstream client: after it is renewed
    /// they are restarted on the new one.
    fn restart_probes(&mut self, pools: &[usize]) {
        for i in 0..self.stamps.len() {
            if pools.contains(&self.stamps[i].pool) {
                self.stamps[i].probe_cancel.cancel();
                self.stamps[i].probe_cancel = self.cancel.child_token();
                self.start_probe(&self.stamps[i]);
            }
        }
    }

    /// Replace the upstream client of `pools` (new addresses, a drained
    /// stamp's idle connections): the old client closes its connections
    /// once the requests using them finish.
    fn renew_upstreams(&mut self, pools: &[usize]) {
        for &pi in pools {
            match Upstream::new(&self.config.pools[pi], &self.dns) {
                Ok(u) => self.upstreams[pi] = Arc::new(u),
                Err(e) => {
                    tracing::error!(pool = %self.config.pools[pi].name, error = %e, "cannot renew upstream client");
                }
            }
        }
        self.restart_probes(pools);
    }

    /// One refresh loop per distinct stamp host name (IP literals need
    /// none); called at start and after a reload for new names.
    fn start_dns(&mut self) -> Result<(), DnsError> {
        let hosts: BTreeSet<String> = self
            .config
            .pools
            .iter()
            .flat_map(|p| &p.stamps)
            .map(|s| s.host.clone())
            .filter(|h| !discovery::is_ip_literal(h))
            .collect();
        for host in hosts {
            if self.dns_hosts.contains(&host) {
                continue;
            }
            let resolver = match &self.resolver {
                Some(r) => r.clone(),
                None => {
                    let r = Arc::new(Discovery::new(self.config.dns.clone())?);
                    self.resolver = Some(r.clone());
                    r
                }
            };
            discovery::spawn_refresh(
                resolver,
                host.clone(),
                self.dns.clone(),
                self.dns_reports.clone(),
                self.cancel.child_token(),
            );
            self.dns_hosts.insert(host);
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Signal>,
        mut dns_rx: mpsc::Receiver<DnsReport>,
        mut loaded_rx: mpsc::Receiver<operator::Loaded>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                Some(signal) = rx.recv() => self.on_signal(signal, Instant::now()),
                Some(report) = dns_rx.recv() => self.on_dns(report, Instant::now()),
                Some(loaded) = loaded_rx.recv() => self.on_loaded(loaded, Instant::now()),
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
                let control = &self.stamps[i].stats.control;
                control.probes[ProbeResult::of(sample.ok)].fetch_add(1, Ordering::Relaxed);
                control.probe_duration.observe(sample.rtt);
                let t = self.stamps[i].health.record_probe(&sample, now);
                self.after(i, t, now);
            }
            Signal::Outlier { stamp, consecutive } => {
                let Some(&i) = self.by_name.get(&stamp) else {
                    return;
                };
                self.on_outlier(i, consecutive, now);
            }
            Signal::Admin(request) => self.on_admin(request, now),
        }
    }

    /// New addresses for a host: connections to the old ones must not be
    /// reused, so the pools using the host get a fresh upstream client.
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
                let pools: Vec<usize> = (0..self.config.pools.len())
                    .filter(|&pi| self.config.pools[pi].stamps.iter().any(|s| s.host == host))
                    .collect();
                self.renew_upstreams(&pools);
                self.publish(now, false);
            }
            DnsReport::Failed { host, error, kept } => {
                tracing::warn!(%host, %error, kept, "stamp host resolution failed; keeping the last answer");
                self.events.push(NewEvent::proxy_wide(
                    EventKind::Alarm,
                    format!("resolving {host} failed ({error}); {kept} address(es) kept in use"),
                ));
            }
        }
    }

    fn on_outlier(&mut self, i: usize, consecutive: u32, now: Instant) {
        let entry = &mut self.stamps[i];
        // Start counting afresh either way, and let the request path signal
        // again: after a refusal the next failure asks once more.
        entry.stats.consecutive_failures.store(0, Ordering::Relaxed);
        entry
            .stats
            .ejection_requested
            .store(false, Ordering::Relaxed);
        if !self.may_eject(i, now) {
            return;
        }
        let entry = &mut self.stamps[i];
        let t = entry.health.eject(consecutive, now);
        if t.is_some() || entry.health.ejected_until().is_some_and(|u| u > now) {
            entry
                .stats
                .control
                .ejections
                .fetch_add(1, Ordering::Relaxed);
        }
        self.after(i, t, now);
    }

    /// A passive ejection of stamp `i` is allowed: it is not ejected
    /// already and the pool's `max_ejected_percent` leaves room.
    fn may_eject(&self, i: usize, now: Instant) -> bool {
        let entry = &self.stamps[i];
        if entry.health.ejected_until().is_some_and(|u| u > now) {
            return false;
        }
        let pool = entry.pool;
        let members = self.stamps.iter().filter(|e| e.pool == pool);
        let size = members.clone().count();
        let ejected = members
            .filter(|e| e.health.ejected_until().is_some_and(|u| u > now))
            .count();
        let max_percent = self.config.pools[pool].outlier.max_ejected_percent;
        if !max_ejected_allows(ejected, size, max_percent) {
            tracing::warn!(stamp = %entry.config.name, ejected, size, max_percent,
                "not ejecting: max_ejected_percent reached");
            return false;
        }
        true
    }

    /// Failure-rate ejection: slide stamp `i`'s window by one tick and
    /// eject it when the share of failed requests in the window reaches
    /// the pool's `outlier.failure_rate`.
    fn judge_failure_rate(&mut self, i: usize, now: Instant) -> Option<Transition> {
        let outlier = &self.config.pools[self.stamps[i].pool].outlier;
        let (limit, min_requests) = (outlier.failure_rate?, outlier.failure_rate_min_requests);
        let entry = &mut self.stamps[i];
        let total = entry.counts();
        let window = entry.recent.slide(total);
        let rate = window.rate();
        if window.requests < u64::from(min_requests) || rate < limit || !self.may_eject(i, now) {
            return None;
        }
        let entry = &mut self.stamps[i];
        // The next judgement starts from an empty window: what led to this
        // ejection must not count again after it.
        entry.recent.clear();
        entry
            .stats
            .control
            .ejections
            .fetch_add(1, Ordering::Relaxed);
        entry.health.eject_for_failure_rate(rate, now)
    }

    /// Read every stamp's live latency counters and judge each pool's
    /// latency outliers; changes are logged and recorded as events.
    fn judge_latency(&mut self, now: Instant) {
        for e in &mut self.stamps {
            let s = &e.stats;
            let reading = Reading {
                samples: s.live_samples.load(Ordering::Relaxed),
                micros: s.live_micros.load(Ordering::Relaxed),
                ended: s.requests.load(Ordering::Relaxed),
                awaiting: s.awaiting_head.load(Ordering::Relaxed),
            };
            e.live_latency.observe(now, reading);
        }
        for (pi, pool) in self.config.pools.iter().enumerate() {
            let members: Vec<usize> = (0..self.stamps.len())
                .filter(|&i| self.stamps[i].pool == pi)
                .collect();
            let estimates: Vec<_> = members
                .iter()
                .map(|&i| self.stamps[i].live_latency.estimate(now))
                .collect();
            let was: Vec<bool> = members
                .iter()
                .map(|&i| self.stamps[i].latency_outlier.is_some())
                .collect();
            let rule = OutlierRule {
                factor: pool.outlier.latency_factor,
                floor: pool.outlier.latency_floor,
            };
            let max_out = members.len() * pool.outlier.max_ejected_percent as usize / 100;
            let verdicts = latency::judge(&estimates, &was, &rule, max_out);
            for (&i, verdict) in members.iter().zip(verdicts) {
                let entry = &mut self.stamps[i];
                let change = match (&entry.latency_outlier, &verdict) {
                    (None, Some(v)) => Some((true, v.reason(&rule))),
                    (Some(_), None) => {
                        Some((false, "live latency back near the pool median".into()))
                    }
                    _ => None,
                };
                entry.latency_outlier = verdict;
                let Some((out, reason)) = change else {
                    continue;
                };
                let stamp = entry.config.name.clone();
                if out {
                    tracing::warn!(pool = %pool.name, %stamp, %reason, "latency outlier: traffic cut to a trickle");
                } else {
                    tracing::info!(pool = %pool.name, %stamp, %reason, "latency outlier released");
                }
                self.events.push(NewEvent {
                    kind: EventKind::Health,
                    pool: Some(pool.name.clone()),
                    stamp: Some(stamp),
                    from: Some(
                        if out {
                            "in rotation"
                        } else {
                            "latency outlier"
                        }
                        .into(),
                    ),
                    to: Some(
                        if out {
                            "latency outlier"
                        } else {
                            "in rotation"
                        }
                        .into(),
                    ),
                    reason,
                });
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let live_window = self.live_clock.due(now);
        for i in 0..self.stamps.len() {
            let entry = &mut self.stamps[i];
            let mut t = entry.health.tick(now);
            if let Some(window) = live_window {
                let total = entry.counts();
                let counted = entry.live.sample(total, window);
                t = t.or(entry
                    .health
                    .record_live(counted.requests, counted.failures, now));
            }
            self.record_transition(i, t);
            let t = self.judge_failure_rate(i, now);
            self.record_transition(i, t);
        }
        self.judge_latency(now);
        if live_window.is_some() {
            self.sample_history();
            self.update_hedge_delays();
        }
        self.advance_drains(now);
        self.publish(now, false);
    }

    /// Once per live window: each route hedging at a quantile gets its
    /// delay from the last [`HEDGE_WINDOW`] windows of its times to
    /// response head; with fewer than [`HEDGE_MIN_SAMPLES`] it has none and
    /// does not hedge (its retries still cover a failed try).
    fn update_hedge_delays(&mut self) {
        let routes = &self.routes;
        self.hedge_windows
            .retain(|name, _| routes.contains_key(name));
        for route in &self.config.routes {
            let (Some(HedgeAfter::Quantile(q)), Some(shared)) =
                (route.retry.hedge_after, self.routes.get(&route.name))
            else {
                continue;
            };
            let latencies = &shared.stats.head_latency;
            let window = self
                .hedge_windows
                .entry(route.name.clone())
                .or_insert_with(|| QuantileWindow::new(HEDGE_WINDOW));
            window.sample(latencies);
            latencies.set_delay(window.quantile(q, HEDGE_MIN_SAMPLES));
        }
    }

    /// One second of figures per stamp into the dashboard's history.
    fn sample_history(&self) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let stamps: Vec<history::StampSample> = self
            .stamps
            .iter()
            .map(|e| history::StampSample {
                stamp: e.config.name.clone(),
                region: e.config.region.clone(),
                rps: e.live.rps(),
                eps: e.live.eps(),
                rtt_ms: e.health.smoothed_rtt().map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        self.history.push(unix_ms, &stamps);
    }

    /// After a state machine call: record the transition, then publish.
    fn after(&mut self, i: usize, t: Option<Transition>, now: Instant) {
        self.record_transition(i, t);
        self.publish(now, false);
    }

    fn record_transition(&mut self, i: usize, t: Option<Transition>) {
        let entry = &self.stamps[i];
        entry
            .fast_probe
            .store(entry.health.wants_fast_probes(), Ordering::Relaxed);
        let Some(t) = t else { return };
        entry.stats.control.transition_to(t.to);
        let pool = &self.config.pools[entry.pool].name;
        let stamp = &entry.config.name;
        let down = t.to == HealthState::Unhealthy
            || (t.to == HealthState::Degraded && t.from != HealthState::Unhealthy);
        if down {
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

    /// A table for the current state, with `weights` per stamp.
    fn build_table(&self, weights: &[u32], generation: u64, now: Instant) -> RoutingTable {
        RoutingTable::build(
            &self.config,
            generation,
            |pool| self.upstreams[pool_index(&self.config, pool)].clone(),
            |route| self.routes[&route.name].clone(),
            |_, stamp| {
                let i = self.by_name[stamp.name.as_str()];
                let entry = &self.stamps[i];
                StampInput {
                    effective_weight: weights[i],
                    admin_enabled: entry.admin == AdminState::Active,
                    rtt: entry.latency(now),
                    trickle: entry.latency_outlier.is_some(),
                    stats: entry.stats.clone(),
                }
            },
        )
    }

    fn weights(&self, now: Instant) -> Vec<u32> {
        self.stamps
            .iter()
            .map(|e| match self.fleet.quorum_down(&e.config.name) {
                true => 0,
                false => effective_weight(e, &self.config.pools[e.pool], now),
            })
            .collect()
    }

    /// Build a table from the current state and store it if the request
    /// path would decide differently with it (weights, tiers, fail-open),
    /// or always with `force` (a new config).
    fn publish(&mut self, now: Instant, force: bool) {
        for e in &self.stamps {
            e.stats
                .control
                .set_state(e.health.state(), operator::admin_label(e));
        }
        let weights = self.weights(now);
        let table = self.build_table(&weights, self.generation + 1, now);
        if !force && self.generation > 0 && table.routes_like(&self.routing.load()) {
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
        self.published.send_replace(self.generation);
    }
}

/// configured (or overridden) weight × health factor × slow-start ramp ×
/// admin state; zero means "no new requests".
fn effective_weight(entry: &StampEntry, pool: &PoolConfig, now: Instant) -> u32 {
    if entry.admin != AdminState::Active || !entry.health.usable() || entry.weight() == 0 {
        return 0;
    }
    let ramp = slow_start_factor(entry.health.recovered_at(), pool.slow_start, now);
    let w = f64::from(entry.weight()) * entry.health.weight_factor() * ramp;
    (w.round() as u32).max(1)
}

fn pool_index(config: &Config, pool: &PoolConfig) -> usize {
    config
        .pools
        .iter()
        .position(|p| p.name == pool.name)
        .expect("pool of this config")
}

/// Retry budget and counters for each route of `config`, keeping those of
/// `kept` by route name. Counters restart when the route's pool now lists
/// other stamps (their rows follow the pool's stamp order); a counter
/// reset is what Prometheus' `rate()` expects after such a change.
fn route_shared(
    config: &Config,
    kept: &HashMap<String, RouteShared>,
) -> HashMap<String, RouteShared> {
    config
        .routes
        .iter()
        .map(|r| {
            let stamps: Vec<String> = config
                .pools
                .iter()
                .find(|p| p.name == r.pool)
                .map(|p| p.stamps.iter().map(|s| s.name.clone()).collect())
                .unwrap_or_default();
            let old = kept.get(&r.name);
            let shared = RouteShared {
                budget: old.map(|o| o.budget.clone()).unwrap_or_else(|| {
                    Arc::new(RetryBudget::new(
                        BUDGET_TTL,
                        BUDGET_MIN_PER_SEC,
                        f64::from(r.retry.budget_percent) / 100.0,
                    ))
                }),
                stats: old
                    .map(|o| o.stats.clone())
                    .filter(|s| s.fits(&stamps))
                    .unwrap_or_else(|| Arc::new(RouteStats::new(&stamps))),
            };
            (r.name.clone(), shared)
        })
        .collect()
}

/// Share of its weight a stamp gets `now`, ramping linearly in ten steps
/// from 10 % over `window` after it recovered.
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
    use crate::signals::ProbeSample;

    fn pool(keys: &str) -> Config {
        let text = format!(
            "[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\n{keys}\n\
             [[pools.p.stamps]]\nname = \"a\"\nregion = \"r1\"\n\
             address = \"127.0.0.1:9000\"\nweight = 200\n"
        );
        crate::config::parse_str(&text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn entry(config: &Config, now: Instant) -> StampEntry {
        let pool = &config.pools[0];
        StampEntry::new(0, pool, &pool.stamps[0], &CancellationToken::new(), now)
    }

    fn probe(e: &mut StampEntry, ok: bool, now: Instant) {
        let sample = ProbeSample {
            ok,
            rtt: Duration::from_millis(5),
            status: Some(if ok { 200 } else { 503 }),
            detail: String::new(),
        };
        e.health.record_probe(&sample, now);
    }

    #[test]
    fn effective_weight_ramps_a_recovered_stamp_over_slow_start() {
        let config = pool("slow_start = \"10s\"\n[pools.p.health]\nmin_hold = \"0s\"");
        let p = &config.pools[0];
        let t0 = Instant::now();
        let mut e = entry(&config, t0);
        assert_eq!(
            effective_weight(&e, p, t0),
            200,
            "unknown: optimistic start"
        );
        for _ in 0..4 {
            probe(&mut e, false, t0);
        }
        assert_eq!(effective_weight(&e, p, t0), 0, "unhealthy");
        for _ in 0..4 {
            probe(&mut e, true, t0);
        }
        let at = e.health.recovered_at().expect("recovered");
        let after = |ms| at + Duration::from_millis(ms);
        assert_eq!(effective_weight(&e, p, at), 20, "the 10 % floor of 200");
        assert_eq!(
            effective_weight(&e, p, after(3_500)),
            60,
            "30 %: 3 steps of 1 s"
        );
        assert_eq!(effective_weight(&e, p, after(9_999)), 180);
        assert_eq!(effective_weight(&e, p, after(10_000)), 200);
    }

    #[test]
    fn effective_weight_follows_the_operator() {
        let config = pool("slow_start = \"0s\"");
        let p = &config.pools[0];
        let now = Instant::now();
        let mut e = entry(&config, now);
        e.weight_override = Some(30);
        assert_eq!(effective_weight(&e, p, now), 30);
        e.weight_override = Some(0);
        assert_eq!(effective_weight(&e, p, now), 0, "weight 0: no traffic");
        e.weight_override = None;
        for admin in [AdminState::Draining, AdminState::Disabled] {
            e.admin = admin;
            assert_eq!(effective_weight(&e, p, now), 0, "{admin:?}");
        }
    }

    #[test]
    fn a_small_ramped_weight_never_rounds_to_zero() {
        let config = pool("slow_start = \"10s\"\n[pools.p.health]\nmin_hold = \"0s\"");
        let p = &config.pools[0];
        let t0 = Instant::now();
        let mut e = entry(&config, t0);
        e.weight_override = Some(1);
        for ok in [false, false, false, false, true, true, true, true] {
            probe(&mut e, ok, t0);
        }
        let at = e.health.recovered_at().expect("recovered");
        assert_eq!(effective_weight(&e, p, at), 1, "0.1 rounds up to 1");
    }

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
