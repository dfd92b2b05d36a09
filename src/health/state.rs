//! Health state machine — control plane: turns probe samples and passive
//! failure signals into a health verdict per stamp.
//!
//! One [`StampHealth`] per stamp, owned by the controller task. It is pure:
//! no I/O, no clock reads (every call takes `now`), no tasks. The controller
//! feeds it four kinds of input and publishes a new routing table whenever a
//! call returns a [`Transition`]:
//!
//! | input | from | call |
//! | --- | --- | --- |
//! | probe sample | probe task | [`StampHealth::record_probe`] |
//! | live traffic counts | request-path atomics, ~1/s | [`StampHealth::record_live`] |
//! | consecutive gateway failures | request path, `try_send` | [`StampHealth::eject`] |
//! | time | controller loop | [`StampHealth::tick`] |
//!
//! # How the state is decided
//!
//! Every call first lets time act (an ejection runs out, a flap penalty
//! decays, an old live error rate is forgotten) and then asks which state the
//! inputs call for. The first matching cause wins, so the reason shown is the
//! most fundamental one:
//!
//! 1. the probe window fails (it can no longer reach
//!    `successful_samples_required` of `sample_size`) → `Unhealthy`;
//! 2. a passive ejection is running → `Unhealthy`;
//! 3. flap damping suppresses the stamp → `Unhealthy`;
//! 4. the window has no verdict yet → `Unknown` (usable: optimistic start);
//! 5. probe RTT or live error rate is over its threshold → `Degraded`;
//! 6. otherwise → `Healthy`.
//!
//! Moves *down* (towards `Unhealthy`) happen at once: fast failover first.
//! Moves *up* wait until the stamp has been `min_hold` in its current state;
//! `tick` carries out a move that was held back. The first verdict out of
//! `Unknown` is information, not recovery, so it is never held.
//!
//! A change of state returns a [`Transition`] with a human reason. When the
//! cause changes but the state does not (an ejection ends while the probes
//! still fail), only [`StampHealth::reason`] changes: there is nothing to
//! republish.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Default probe window length: Azure Front Door's default sample size.
const DEFAULT_SAMPLE_SIZE: u32 = 4;
/// Default successes needed in the window: Front Door's default, so that one
/// lost probe never moves traffic but two in a row do.
const DEFAULT_SUCCESSFUL_SAMPLES_REQUIRED: u32 = 3;
/// Default live gateway-error share that degrades a stamp: up to one failure
/// in ten is cheaply absorbed by retries to another stamp; more means users
/// feel it, so the stamp should carry less traffic.
const DEFAULT_DEGRADED_ERROR_RATE: f64 = 0.10;
/// Default weight of a degraded stamp: it keeps enough traffic to show
/// whether it recovers, while most users go elsewhere.
const DEFAULT_DEGRADED_WEIGHT_PERCENT: u32 = 25;
/// Default minimum time in a state before moving up: several probe intervals
/// at the 1s default, so one lucky window cannot bring a stamp back.
const DEFAULT_MIN_HOLD: Duration = Duration::from_secs(10);
/// Default consecutive gateway failures that eject (the example config).
const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default first ejection: about ten probe intervals, long enough for probes
/// to confirm a real outage.
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
/// Default longest ejection: Envoy's `max_ejection_time` default.
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Default penalty per usability change (BGP route-flap damping's unit).
const DEFAULT_FLAP_PENALTY: f64 = 1000.0;
/// Default penalty half-life. BGP uses 15 minutes for routes; stamps fail
/// and recover on the scale of seconds, so a minute is the matching scale.
const DEFAULT_FLAP_HALF_LIFE: Duration = Duration::from_secs(60);
/// Default suppress threshold: one outage (down and up, two changes) stays
/// under it; a second outage within a couple of minutes crosses it.
const DEFAULT_FLAP_SUPPRESS: f64 = 3000.0;
/// Default reuse threshold: half of suppress, so a suppressed stamp stays
/// out at least one half-life after it stops flapping.
const DEFAULT_FLAP_REUSE: f64 = 1500.0;
/// Default EWMA weight of a new RTT sample: about the last three probes
/// dominate, so one slow probe does not degrade a stamp.
const DEFAULT_RTT_ALPHA: f64 = 0.3;

/// Live windows with fewer requests carry too little evidence for a rate
/// (one failure in three requests is not a 33% error rate) and are ignored.
pub const MIN_LIVE_REQUESTS: u64 = 10;
/// A degraded signal clears only under this share of its threshold
/// (hysteresis), so a value hovering at the threshold does not toggle the
/// stamp between degraded and healthy.
const RECOVERY_FRACTION: f64 = 0.8;
/// A live error rate older than this is forgotten: a stamp with too little
/// traffic to measure has no live evidence either way, and the probes decide.
const LIVE_ERROR_MAX_AGE: Duration = Duration::from_secs(30);
/// The flap penalty is capped at `reuse × 2^this`, so a stamp is held out at
/// most this many half-lives after it stops flapping (BGP's default
/// max-suppress-time is four half-lives).
const MAX_SUPPRESS_HALF_LIVES: i32 = 4;

/// What stampgate observed about a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No verdict yet; takes traffic at full weight (optimistic start).
    Unknown,
    /// Probes pass and live traffic is within thresholds.
    Healthy,
    /// Probes pass but RTT or live errors are over threshold: reduced weight.
    Degraded,
    /// Probes fail, or the stamp is ejected or flap-damped: no traffic.
    Unhealthy,
}

impl HealthState {
    /// The lowercase name used in status JSON, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
        }
    }

    /// Whether a stamp in this state may receive new requests.
    pub fn is_usable(self) -> bool {
        self != HealthState::Unhealthy
    }

    /// Order for "up" and "down": `Unknown` counts as healthy (full weight).
    fn rank(self) -> u8 {
        match self {
            HealthState::Unhealthy => 0,
            HealthState::Degraded => 1,
            HealthState::Healthy | HealthState::Unknown => 2,
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tuning of one stamp's state machine, built by the controller from the
/// pool's config. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Length of the sliding probe window (default 4).
    pub sample_size: u32,
    /// Successes in the window needed to be healthy (default 3). The stamp
    /// is unhealthy once the window can no longer reach it.
    pub successful_samples_required: u32,
    /// Smoothed probe RTT above this degrades the stamp (default: off, since
    /// a normal RTT depends on the distance to the stamp).
    pub degraded_rtt: Option<Duration>,
    /// Live gateway-error share above this degrades the stamp (default 0.1).
    pub degraded_error_rate: Option<f64>,
    /// Weight factor of a degraded stamp, in percent (default 25).
    pub degraded_weight_percent: u32,
    /// Minimum time in a state before moving up (default 10s). Moves down
    /// are never delayed.
    pub min_hold: Duration,
    /// Consecutive gateway failures that eject; smaller signals are ignored
    /// (default 5).
    pub consecutive_failures: u32,
    /// Ejection n lasts `min(base_ejection × n, max_ejection)` (default 10s).
    pub base_ejection: Duration,
    /// Upper bound of one ejection (default 300s).
    pub max_ejection: Duration,
    /// Penalty added by each change between usable and unusable (default
    /// 1000; 0 turns flap damping off).
    pub flap_penalty: f64,
    /// Half-life of the flap penalty (default 60s).
    pub flap_half_life: Duration,
    /// Penalty above which the stamp is held out (default 3000).
    pub flap_suppress: f64,
    /// A held-out stamp may return once the penalty is below this (default
    /// 1500).
    pub flap_reuse: f64,
    /// EWMA weight of a new RTT sample, in (0, 1] (default 0.3).
    pub rtt_alpha: f64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            sample_size: DEFAULT_SAMPLE_SIZE,
            successful_samples_required: DEFAULT_SUCCESSFUL_SAMPLES_REQUIRED,
            degraded_rtt: None,
            degraded_error_rate: Some(DEFAULT_DEGRADED_ERROR_RATE),
            degraded_weight_percent: DEFAULT_DEGRADED_WEIGHT_PERCENT,
            min_hold: DEFAULT_MIN_HOLD,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            flap_penalty: DEFAULT_FLAP_PENALTY,
            flap_half_life: DEFAULT_FLAP_HALF_LIFE,
            flap_suppress: DEFAULT_FLAP_SUPPRESS,
            flap_reuse: DEFAULT_FLAP_REUSE,
            rtt_alpha: DEFAULT_RTT_ALPHA,
        }
    }
}

impl HealthSettings {
    /// Config validation already rejects these; the clamps only keep a
    /// hand-built value from producing a window that can never decide.
    fn sanitized(mut self) -> Self {
        self.sample_size = self.sample_size.max(1);
        self.successful_samples_required =
            self.successful_samples_required.clamp(1, self.sample_size);
        if !(self.rtt_alpha > 0.0 && self.rtt_alpha <= 1.0) {
            self.rtt_alpha = DEFAULT_RTT_ALPHA;
        }
        self
    }
}

/// One active probe result, as sent by a probe task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSample {
    /// The probe met its expectations (status range, body).
    pub ok: bool,
    /// Time until the response (or until the failure).
    pub rtt: Duration,
    /// Response status, if there was a response.
    pub status: Option<u16>,
    /// Short cause for humans, e.g. `status 503` or `connect refused`.
    pub detail: String,
}

/// A change of a stamp's health state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// State before.
    pub from: HealthState,
    /// State after.
    pub to: HealthState,
    /// Why, for humans: `3 of last 4 probes failed (status 503)`.
    pub reason: String,
    /// When the change was decided.
    pub at: Instant,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.reason)
    }
}

/// May one more stamp be ejected while `ejected_now` of a pool of
/// `pool_size` are, without exceeding `max_percent`?
///
/// The limit is `floor(pool_size × max_percent / 100)`, but at least one
/// when `max_percent > 0` (Envoy's rule): with floor alone, a 10% limit would
/// silently turn passive ejection off for every pool under ten stamps. What
/// happens when that leaves no usable stamp is the pool's `all_unhealthy`
/// policy's business. `max_percent = 0` never allows an ejection.
pub fn max_ejected_allows(ejected_now: usize, pool_size: usize, max_percent: u32) -> bool {
    if pool_size == 0 || max_percent == 0 {
        return false;
    }
    let percent = usize::try_from(max_percent.min(100)).unwrap_or(100);
    let limit = (pool_size * percent / 100).max(1);
    ejected_now < limit
}

/// The health of one stamp: the probe window, the passive signals and the
/// damping that together decide its [`HealthState`].
#[derive(Debug, Clone)]
pub struct StampHealth {
    settings: HealthSettings,
    state: HealthState,
    reason: String,
    since: Instant,
    window: Window,
    last_probe: Option<ProbeSample>,
    /// Detail of the newest failed probe, for the unhealthy reason.
    last_failure: Option<String>,
    smoothed_rtt: Option<Duration>,
    /// Hysteresis latch: RTT went over `degraded_rtt` and has not yet fallen
    /// under `RECOVERY_FRACTION` of it.
    rtt_high: bool,
    live: Option<LiveRate>,
    /// Hysteresis latch for the live error rate, like `rtt_high`.
    errors_high: bool,
    ejection: Option<Ejection>,
    ejections: Ejections,
    flap: FlapDamper,
    recovered_at: Option<Instant>,
    /// What just stopped holding the stamp out ("ejection expired"): the
    /// reason of the move up it allows. Dropped when another cause still
    /// holds the stamp out, so it cannot explain a later, unrelated recovery.
    cleared: Option<String>,
}

/// The outcome of "which state do the inputs call for".
struct Verdict {
    state: HealthState,
    reason: String,
}

impl Verdict {
    fn new(state: HealthState, reason: String) -> Self {
        Self { state, reason }
    }
}

impl StampHealth {
    /// A fresh stamp: `Unknown`, which is usable at full weight until a
    /// probe says otherwise.
    pub fn new(settings: HealthSettings, now: Instant) -> Self {
        let settings = settings.sanitized();
        Self {
            window: Window::new(settings.sample_size, settings.successful_samples_required),
            state: HealthState::Unknown,
            reason: "no probe verdict yet".to_owned(),
            since: now,
            last_probe: None,
            last_failure: None,
            smoothed_rtt: None,
            rtt_high: false,
            live: None,
            errors_high: false,
            ejection: None,
            ejections: Ejections::default(),
            flap: FlapDamper::new(now),
            recovered_at: None,
            cleared: None,
            settings,
        }
    }

    /// Adds one probe result to the window. Only successful probes feed the
    /// smoothed RTT: a refused connect is fast and a timeout is slow, and
    /// neither measures how quickly the stamp serves.
    pub fn record_probe(&mut self, sample: &ProbeSample, now: Instant) -> Option<Transition> {
        self.window.push(sample.ok);
        if sample.ok {
            self.observe_rtt(sample.rtt);
        } else {
            self.last_failure = Some(sample.detail.clone());
        }
        self.last_probe = Some(sample.clone());
        self.settle(now)
    }

    /// Takes the live request counts since the previous call (the controller
    /// calls this about once a second). Windows with fewer than
    /// [`MIN_LIVE_REQUESTS`] requests are ignored; the error rate of the
    /// last counted window expires after 30s without a new one.
    pub fn record_live(
        &mut self,
        requests: u64,
        gateway_failures: u64,
        now: Instant,
    ) -> Option<Transition> {
        if requests >= MIN_LIVE_REQUESTS {
            let rate = gateway_failures.min(requests) as f64 / requests as f64;
            self.live = Some(LiveRate { rate, at: now });
            if let Some(limit) = self.settings.degraded_error_rate {
                self.errors_high = latch(self.errors_high, rate, limit);
            }
        }
        self.settle(now)
    }

    /// Passive signal: the request path saw `consecutive` gateway failures in
    /// a row. Ejects the stamp (`Unhealthy`) for `min(base × n, max)` where n
    /// is its ejection level, unless it is already ejected or `consecutive`
    /// is below the configured threshold. An ejection also starts when the
    /// stamp is already unhealthy for another reason, so that it has to earn
    /// its way back with a fresh successful window.
    ///
    /// The level rises by one per ejection and falls by one per
    /// `base_ejection` spent without one (Envoy's rule), so a stamp that was
    /// ejected once last week starts short again. The controller checks
    /// [`max_ejected_allows`] before calling.
    pub fn eject(&mut self, consecutive: u32, now: Instant) -> Option<Transition> {
        self.refresh(now);
        if self.ejection.is_none() && consecutive >= self.settings.consecutive_failures {
            let duration = self.ejections.start(&self.settings, now);
            self.ejection = Some(Ejection {
                until: now + duration,
                consecutive,
                duration,
            });
            // Early release needs a successful window made of probes sent
            // after this point: the ones before it evidently missed the fault.
            self.window.mark();
        }
        self.decide(now)
    }

    /// Lets time pass: an ejection expires, a move up that `min_hold` held
    /// back goes ahead, a flap penalty decays below reuse, an old live error
    /// rate is forgotten.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        self.settle(now)
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Why the stamp is in its state (kept current even when the state does
    /// not change, e.g. a newer probe failure detail).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// May the stamp receive new requests? `Healthy`, `Degraded` and
    /// `Unknown` are usable; ejected and flap-damped stamps are `Unhealthy`.
    pub fn usable(&self) -> bool {
        self.state.is_usable()
    }

    /// Health factor of the effective weight: 1 healthy or unknown,
    /// `degraded_weight_percent / 100` degraded, 0 unhealthy.
    pub fn weight_factor(&self) -> f64 {
        match self.state {
            HealthState::Healthy | HealthState::Unknown => 1.0,
            HealthState::Degraded => {
                f64::from(self.settings.degraded_weight_percent.min(100)) / 100.0
            }
            HealthState::Unhealthy => 0.0,
        }
    }

    /// EWMA of successful probe RTTs (the latency method's input).
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.smoothed_rtt
    }

    /// The newest probe result.
    pub fn last_probe(&self) -> Option<&ProbeSample> {
        self.last_probe.as_ref()
    }

    /// How many times the stamp has been ejected since it was created.
    pub fn ejections(&self) -> u32 {
        self.ejections.total
    }

    /// End of the running ejection, if any. The controller counts these for
    /// [`max_ejected_allows`].
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejection.as_ref().map(|e| e.until)
    }

    /// The flap penalty, decayed to `now`.
    pub fn flap_penalty(&self, now: Instant) -> f64 {
        self.flap.value(&self.settings, now)
    }

    /// When the stamp last became usable after being unusable; slow start
    /// ramps its weight up from here.
    pub fn recovered_at(&self) -> Option<Instant> {
        self.recovered_at
    }

    /// True while `Unhealthy` (including ejected and flap-damped): probe at
    /// the faster interval to notice recovery sooner.
    pub fn wants_fast_probes(&self) -> bool {
        self.state == HealthState::Unhealthy
    }

    fn observe_rtt(&mut self, rtt: Duration) {
        let smoothed = match self.smoothed_rtt {
            None => rtt,
            Some(old) => ewma(old, rtt, self.settings.rtt_alpha),
        };
        self.smoothed_rtt = Some(smoothed);
        if let Some(limit) = self.settings.degraded_rtt {
            self.rtt_high = latch(self.rtt_high, smoothed.as_secs_f64(), limit.as_secs_f64());
        }
    }

    fn settle(&mut self, now: Instant) -> Option<Transition> {
        self.refresh(now);
        self.decide(now)
    }

    /// The effects of time and of new probes on the hold-out causes.
    fn refresh(&mut self, now: Instant) {
        if self
            .live
            .as_ref()
            .is_some_and(|l| now >= l.at + LIVE_ERROR_MAX_AGE)
        {
            self.live = None;
            self.errors_high = false;
        }
        self.release_ejection(now);
        self.release_suppression(now);
    }

    /// Ends an ejection when it runs out, or early once a full successful
    /// window was probed after it began.
    fn release_ejection(&mut self, now: Instant) {
        let Some(ejection) = &self.ejection else {
            return;
        };
        let note = if now >= ejection.until {
            "ejection expired".to_owned()
        } else if self.window.passing_since_mark() {
            format!(
                "probes pass again ({}), ejection released early",
                self.window.tally()
            )
        } else {
            return;
        };
        let ended = now.min(ejection.until);
        self.ejection = None;
        self.ejections.ended(ended);
        self.cleared = Some(note);
    }

    /// A suppressed stamp returns only when the penalty has decayed below
    /// reuse *and* its probe window passes: decay alone proves nothing.
    fn release_suppression(&mut self, now: Instant) {
        if !self.flap.suppressed || !self.window.passing() {
            return;
        }
        let penalty = self.flap.value(&self.settings, now);
        if penalty < self.settings.flap_reuse {
            self.flap.suppressed = false;
            self.cleared = Some(format!(
                "flap penalty decayed to {penalty:.0}, below reuse {:.0}",
                self.settings.flap_reuse
            ));
        }
    }

    /// Moves to the state the inputs call for, subject to `min_hold` (moves
    /// up only) and flap damping (changes of usability).
    fn decide(&mut self, now: Instant) -> Option<Transition> {
        let verdict = self.target(now);
        if !verdict.state.is_usable() {
            self.cleared = None;
        }
        if verdict.state == self.state {
            self.reason = verdict.reason;
            return None;
        }
        let upward = self.is_upward(verdict.state);
        if upward && now < self.since + self.settings.min_hold {
            self.reason = format!(
                "{}; held {} for min hold {}",
                verdict.reason,
                self.state,
                fmt_duration(self.settings.min_hold)
            );
            return None;
        }
        let to = verdict.state;
        let mut reason = self.transition_reason(upward, verdict);
        if self.state.is_usable() != to.is_usable() {
            if upward && self.flap.would_suppress(&self.settings, now) {
                // Coming back would be one flap too many: stay out instead
                // of bouncing in and out again.
                self.flap.suppressed = true;
                self.cleared = None;
                self.reason = self.flap_reason(now);
                return None;
            }
            if self.flap.add(&self.settings, now) {
                reason = format!("{reason}; {}", self.flap_reason(now));
            }
        }
        Some(self.apply(to, reason, now))
    }

    /// Which state the inputs call for, first matching cause first (see the
    /// module docs for the order).
    fn target(&self, now: Instant) -> Verdict {
        use HealthState::{Degraded, Healthy, Unhealthy, Unknown};
        if self.window.failing() {
            return Verdict::new(Unhealthy, self.failing_reason());
        }
        if let Some(ejection) = &self.ejection {
            return Verdict::new(Unhealthy, ejection.reason());
        }
        if self.flap.suppressed {
            return Verdict::new(Unhealthy, self.flap_reason(now));
        }
        if !self.window.passing() {
            let reason = format!(
                "awaiting probe verdict ({} probes so far)",
                self.window.len()
            );
            return Verdict::new(Unknown, reason);
        }
        match self.degraded_reason() {
            Some(reason) => Verdict::new(Degraded, reason),
            None => Verdict::new(Healthy, self.healthy_reason()),
        }
    }

    /// Up means towards more traffic. Leaving `Unknown` is never "up": the
    /// first verdict is news, not a recovery to be held back.
    fn is_upward(&self, to: HealthState) -> bool {
        self.state != HealthState::Unknown && to.rank() > self.state.rank()
    }

    /// A move up out of `Unhealthy` is explained by what stopped holding the
    /// stamp out, when that was not the probe window itself.
    fn transition_reason(&mut self, upward: bool, verdict: Verdict) -> String {
        let cleared = if upward && self.state == HealthState::Unhealthy {
            self.cleared.take()
        } else {
            None
        };
        match (cleared, verdict.state) {
            (Some(cleared), HealthState::Degraded) => format!("{cleared}; {}", verdict.reason),
            (Some(cleared), _) => cleared,
            (None, _) => verdict.reason,
        }
    }

    fn apply(&mut self, to: HealthState, reason: String, now: Instant) -> Transition {
        let from = self.state;
        if !from.is_usable() && to.is_usable() {
            self.recovered_at = Some(now);
        }
        self.state = to;
        self.since = now;
        self.reason.clone_from(&reason);
        self.cleared = None;
        Transition {
            from,
            to,
            reason,
            at: now,
        }
    }

    fn failing_reason(&self) -> String {
        let counts = format!(
            "{} of last {} probes failed",
            self.window.failures(),
            self.window.len()
        );
        match self.last_failure.as_deref() {
            Some(detail) if !detail.is_empty() => format!("{counts} ({detail})"),
            _ => counts,
        }
    }

    fn flap_reason(&self, now: Instant) -> String {
        format!("flap-damped (penalty {:.0})", self.flap_penalty(now))
    }

    fn healthy_reason(&self) -> String {
        match self.state {
            HealthState::Unhealthy => format!("probes pass again ({})", self.window.tally()),
            HealthState::Degraded => format!("back under degraded thresholds ({})", self.signals()),
            HealthState::Healthy | HealthState::Unknown => {
                format!("probes pass ({})", self.window.tally())
            }
        }
    }

    /// The latched degraded signals, or `None` when neither holds. A latched
    /// signal between recovery level and threshold says what it waits for.
    fn degraded_reason(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let (true, Some(rtt), Some(limit)) =
            (self.rtt_high, self.smoothed_rtt, self.settings.degraded_rtt)
        {
            parts.push(over_or_recovering(
                &format!("probe RTT {}", fmt_duration(rtt)),
                rtt > limit,
                &fmt_duration(limit),
                &fmt_duration(limit.mul_f64(RECOVERY_FRACTION)),
            ));
        }
        if let (true, Some(live), Some(limit)) = (
            self.errors_high,
            &self.live,
            self.settings.degraded_error_rate,
        ) {
            parts.push(over_or_recovering(
                &format!("gateway errors {}", fmt_percent(live.rate)),
                live.rate > limit,
                &fmt_percent(limit),
                &fmt_percent(limit * RECOVERY_FRACTION),
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Current RTT and error rate, for the "back under thresholds" reason.
    fn signals(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rtt) = self.smoothed_rtt {
            parts.push(format!("probe RTT {}", fmt_duration(rtt)));
        }
        if let Some(live) = &self.live {
            parts.push(format!("gateway errors {}", fmt_percent(live.rate)));
        }
        if parts.is_empty() {
            format!("probes pass {}", self.window.tally())
        } else {
            parts.join(", ")
        }
    }
}

/// The sliding window of the last `size` probe results (Front Door's rule).
#[derive(Debug, Clone)]
struct Window {
    results: VecDeque<bool>,
    size: usize,
    required: usize,
    /// Results pushed since the last `mark` (capped at `size`).
    fresh: usize,
}

impl Window {
    fn new(size: u32, required: u32) -> Self {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        Self {
            results: VecDeque::with_capacity(size),
            size,
            required: usize::try_from(required).unwrap_or(size),
            fresh: 0,
        }
    }

    fn push(&mut self, ok: bool) {
        if self.results.len() == self.size {
            self.results.pop_front();
        }
        self.results.push_back(ok);
        self.fresh = (self.fresh + 1).min(self.size);
    }

    fn len(&self) -> usize {
        self.results.len()
    }

    fn successes(&self) -> usize {
        self.results.iter().filter(|ok| **ok).count()
    }

    fn failures(&self) -> usize {
        self.len() - self.successes()
    }

    /// Healthy: at least `required` of the last `size` probes succeeded.
    /// Holds before the window is full, so a fresh stamp is healthy after
    /// `required` successes.
    fn passing(&self) -> bool {
        self.successes() >= self.required
    }

    /// Unhealthy: more than `size - required` failures, so `required`
    /// successes can no longer fit in the window. For 3-of-4 that is 2
    /// failures. `passing` and `failing` never both hold; before the window
    /// fills, neither may (no verdict yet); once full, exactly one does.
    fn failing(&self) -> bool {
        self.failures() > self.size - self.required
    }

    /// Starts counting results afresh (an ejection began).
    fn mark(&mut self) {
        self.fresh = 0;
    }

    /// `required` successes among the results pushed since `mark`.
    fn passing_since_mark(&self) -> bool {
        let fresh_successes = self
            .results
            .iter()
            .rev()
            .take(self.fresh)
            .filter(|ok| **ok)
            .count();
        fresh_successes >= self.required
    }

    /// `successes/len`, e.g. `3/4`.
    fn tally(&self) -> String {
        format!("{}/{}", self.successes(), self.len())
    }
}

/// A running passive ejection.
#[derive(Debug, Clone)]
struct Ejection {
    until: Instant,
    consecutive: u32,
    duration: Duration,
}

impl Ejection {
    fn reason(&self) -> String {
        format!(
            "ejected after {} consecutive failures for {}",
            self.consecutive,
            fmt_duration(self.duration)
        )
    }
}

/// Ejection bookkeeping: how long the next ejection lasts.
#[derive(Debug, Clone, Default)]
struct Ejections {
    total: u32,
    /// Multiplier of `base_ejection`; +1 per ejection, -1 per
    /// `base_ejection` without one.
    level: u32,
    last_end: Option<Instant>,
}

impl Ejections {
    /// Counts a new ejection and returns its duration.
    fn start(&mut self, settings: &HealthSettings, now: Instant) -> Duration {
        self.level = self
            .decayed_level(settings.base_ejection, now)
            .saturating_add(1);
        self.total = self.total.saturating_add(1);
        settings
            .base_ejection
            .saturating_mul(self.level)
            .min(settings.max_ejection)
    }

    fn ended(&mut self, at: Instant) {
        self.last_end = Some(at);
    }

    fn decayed_level(&self, base: Duration, now: Instant) -> u32 {
        let Some(last_end) = self.last_end else {
            return self.level;
        };
        if base.is_zero() {
            return 0;
        }
        let quiet_periods = now.saturating_duration_since(last_end).as_nanos() / base.as_nanos();
        self.level
            .saturating_sub(u32::try_from(quiet_periods).unwrap_or(u32::MAX))
    }
}

/// Route-flap damping, BGP style: every change of usability adds a penalty
/// that decays as `p0 × 0.5^(dt / half_life)`; above `suppress` the stamp is
/// held out until the penalty falls below `reuse` (and its window passes).
#[derive(Debug, Clone)]
struct FlapDamper {
    penalty: f64,
    at: Instant,
    suppressed: bool,
}

impl FlapDamper {
    fn new(now: Instant) -> Self {
        Self {
            penalty: 0.0,
            at: now,
            suppressed: false,
        }
    }

    fn value(&self, settings: &HealthSettings, now: Instant) -> f64 {
        if settings.flap_half_life.is_zero() {
            return 0.0;
        }
        let half_lives = now.saturating_duration_since(self.at).as_secs_f64()
            / settings.flap_half_life.as_secs_f64();
        self.penalty * 0.5_f64.powf(half_lives)
    }

    /// Would one more change of usability push the penalty over suppress?
    fn would_suppress(&self, settings: &HealthSettings, now: Instant) -> bool {
        self.value(settings, now) + settings.flap_penalty > settings.flap_suppress
    }

    /// Adds one flap; returns true when this flap starts a suppression.
    fn add(&mut self, settings: &HealthSettings, now: Instant) -> bool {
        let ceiling = (settings.flap_reuse * 2_f64.powi(MAX_SUPPRESS_HALF_LIVES))
            .max(settings.flap_suppress + settings.flap_penalty);
        self.penalty = (self.value(settings, now) + settings.flap_penalty).min(ceiling);
        self.at = now;
        let starts = !self.suppressed && self.penalty > settings.flap_suppress;
        self.suppressed |= starts;
        starts
    }
}

/// The error rate of the last live window with enough requests.
#[derive(Debug, Clone)]
struct LiveRate {
    rate: f64,
    at: Instant,
}

/// Hysteresis: a signal goes high above `threshold` and stays high until it
/// falls under `RECOVERY_FRACTION × threshold`.
fn latch(high: bool, value: f64, threshold: f64) -> bool {
    if high {
        value >= threshold * RECOVERY_FRACTION
    } else {
        value > threshold
    }
}

fn ewma(old: Duration, new: Duration, alpha: f64) -> Duration {
    Duration::from_secs_f64(alpha * new.as_secs_f64() + (1.0 - alpha) * old.as_secs_f64())
}

fn over_or_recovering(what: &str, over: bool, threshold: &str, recovery: &str) -> String {
    if over {
        format!("{what} over {threshold}")
    } else {
        format!("{what}, recovers under {recovery}")
    }
}

/// `420ms`, `10s`, `1.5s`: milliseconds rounded, whole seconds plain.
fn fmt_duration(d: Duration) -> String {
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn fmt_percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {}
