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
//! # Passive ejection
//!
//! An ejection holds the stamp out for `min(base × n, max)`. It ends when it
//! runs out, or earlier when a full successful window has been probed since
//! it began ("released early when probes pass again": the request path saw
//! a blip that the stamp has got over). Since a failing window outranks an
//! ejection, the end of an ejection never overrides a probe verdict of
//! `Unhealthy`; the stamp returns when its probes pass.
//!
//! # Flap damping
//!
//! Every change between usable and unusable adds a penalty that halves every
//! `flap_half_life` (see `FlapDamper`). A stamp whose penalty would exceed
//! `flap_suppress` is held out ("flap-damped") until the penalty has decayed
//! below `flap_reuse` *and* its window passes. Moves between `Healthy` and
//! `Degraded` do not count: hysteresis and `min_hold` damp those.
//!
//! A change of state returns a [`Transition`] with a human reason. When the
//! cause changes but the state does not (an ejection ends while the probes
//! still fail), only [`StampHealth::reason`] changes: there is nothing to
//! republish.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{HealthConfig, PoolConfig};
pub use crate::signals::HealthState;
use crate::signals::ProbeSample;

/// Penalty one flap adds (BGP route-flap damping's unit): the config speaks
/// in flaps (`health.flap_suppress`), the damper in points.
const FLAP_PENALTY: f64 = 1000.0;
/// EWMA weight of a new RTT sample: about the last three probes dominate,
/// so one slow probe does not degrade a stamp. Not a config key.
const RTT_ALPHA: f64 = 0.3;

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

/// Tuning of one stamp's state machine, built from the pool's config
/// ([`HealthSettings::for_pool`]). [`Default`] gives what a pool with no
/// optional keys gets: the values and their reasons are in
/// [`crate::config::defaults`], the one place they are stated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Length of the sliding probe window (`probe.sample_size`).
    pub sample_size: u32,
    /// Successes in the window needed to be healthy
    /// (`probe.successful_samples_required`). The stamp is unhealthy once
    /// the window can no longer reach it.
    pub successful_samples_required: u32,
    /// Smoothed probe RTT above this degrades the stamp (`health.degraded_rtt`,
    /// off by default, since a normal RTT depends on the distance to the
    /// stamp).
    pub degraded_rtt: Option<Duration>,
    /// Live gateway-error share above this degrades the stamp
    /// (`health.degraded_error_rate`).
    pub degraded_error_rate: Option<f64>,
    /// Weight factor of a degraded stamp, in percent
    /// (`health.degraded_weight_percent`).
    pub degraded_weight_percent: u32,
    /// Minimum time in a state before moving up (`health.min_hold`). Moves
    /// down are never delayed.
    pub min_hold: Duration,
    /// Consecutive gateway failures that eject
    /// (`outlier.consecutive_failures`); smaller signals are ignored.
    pub consecutive_failures: u32,
    /// Ejection n lasts `min(base_ejection × n, max_ejection)`
    /// (`outlier.base_ejection`).
    pub base_ejection: Duration,
    /// Upper bound of one ejection (`outlier.max_ejection`).
    pub max_ejection: Duration,
    /// Penalty added by each change between usable and unusable (1000; 0
    /// turns flap damping off, as does a zero half-life).
    pub flap_penalty: f64,
    /// Half-life of the flap penalty (`health.flap_half_life`).
    pub flap_half_life: Duration,
    /// Penalty above which the stamp is held out, from
    /// `health.flap_suppress` flaps (see [`HealthSettings::for_pool`]).
    pub flap_suppress: f64,
    /// A held-out stamp may return once the penalty is below this (half of
    /// `flap_suppress`, so it stays out at least one half-life after it
    /// stops flapping).
    pub flap_reuse: f64,
    /// EWMA weight of a new RTT sample, in (0, 1] (0.3).
    pub rtt_alpha: f64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        use crate::config::defaults as d;
        Self::from_parts(
            d::DEFAULT_SAMPLE_SIZE,
            d::DEFAULT_SUCCESSFUL_SAMPLES_REQUIRED,
            &HealthConfig {
                degraded_rtt: None,
                degraded_error_rate: d::DEFAULT_DEGRADED_ERROR_RATE,
                degraded_weight_percent: d::DEFAULT_DEGRADED_WEIGHT_PERCENT,
                min_hold: d::DEFAULT_MIN_HOLD,
                flap_half_life: d::DEFAULT_FLAP_HALF_LIFE,
                flap_suppress: d::DEFAULT_FLAP_SUPPRESS,
            },
            (
                d::DEFAULT_CONSECUTIVE_FAILURES,
                d::DEFAULT_BASE_EJECTION,
                d::DEFAULT_MAX_EJECTION,
            ),
        )
    }
}

impl HealthSettings {
    /// The state machine's tuning from a validated pool config.
    pub fn for_pool(pool: &PoolConfig) -> Self {
        let o = &pool.outlier;
        Self::from_parts(
            pool.probe.sample_size,
            pool.probe.successful_samples_required,
            &pool.health,
            (o.consecutive_failures, o.base_ejection, o.max_ejection),
        )
    }

    fn from_parts(
        sample_size: u32,
        successful_samples_required: u32,
        h: &HealthConfig,
        (consecutive_failures, base_ejection, max_ejection): (u32, Duration, Duration),
    ) -> Self {
        // The n-th flap within about a half-life crosses the limit: n-1
        // flaps sit at (n-1)·P, the n-th pushes past (n-½)·P.
        let suppress = (f64::from(h.flap_suppress) - 0.5) * FLAP_PENALTY;
        HealthSettings {
            sample_size,
            successful_samples_required,
            degraded_rtt: h.degraded_rtt,
            degraded_error_rate: Some(h.degraded_error_rate),
            degraded_weight_percent: h.degraded_weight_percent,
            min_hold: h.min_hold,
            consecutive_failures,
            base_ejection,
            max_ejection,
            flap_penalty: FLAP_PENALTY,
            flap_half_life: h.flap_half_life,
            flap_suppress: suppress,
            flap_reuse: suppress / 2.0,
            rtt_alpha: RTT_ALPHA,
        }
    }

    /// Config validation already rejects these; the clamps only keep a
    /// hand-built value from producing a window that can never decide.
    fn sanitized(mut self) -> Self {
        self.sample_size = self.sample_size.max(1);
        self.successful_samples_required =
            self.successful_samples_required.clamp(1, self.sample_size);
        if !(self.rtt_alpha > 0.0 && self.rtt_alpha <= 1.0) {
            self.rtt_alpha = RTT_ALPHA;
        }
        self
    }
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
        let window = Window::new(settings.sample_size, settings.successful_samples_required);
        Self {
            reason: awaiting_reason(&window),
            window,
            state: HealthState::Unknown,
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
        if consecutive >= self.settings.consecutive_failures {
            self.start_ejection(EjectionCause::Consecutive(consecutive), now);
        }
        self.decide(now)
    }

    /// Passive signal: `rate` (0..1) of the stamp's live requests failed
    /// in the controller's window, at or above the pool's limit. Ejects
    /// like [`StampHealth::eject`], but only time ends this ejection:
    /// probes passing prove nothing about failures they cannot see.
    pub fn eject_for_failure_rate(&mut self, rate: f64, now: Instant) -> Option<Transition> {
        self.refresh(now);
        let percent = (rate * 100.0).round() as u32;
        self.start_ejection(EjectionCause::FailureRate(percent), now);
        self.decide(now)
    }

    fn start_ejection(&mut self, cause: EjectionCause, now: Instant) {
        if self.ejection.is_some() {
            return;
        }
        let duration = self.ejections.start(&self.settings, now);
        self.ejection = Some(Ejection {
            until: now + duration,
            cause,
            duration,
        });
        // Early release needs a successful window made of probes sent
        // after this point: the ones before it evidently missed the fault.
        self.window.mark();
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
        let early = matches!(ejection.cause, EjectionCause::Consecutive(_));
        let note = if now >= ejection.until {
            "ejection expired".to_owned()
        } else if early && self.window.passing_since_mark() {
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
            return Verdict::new(Unknown, awaiting_reason(&self.window));
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
        format!(
            "flap-damped (penalty {:.0}, reuse under {:.0})",
            self.flap_penalty(now),
            self.settings.flap_reuse
        )
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
    cause: EjectionCause,
    duration: Duration,
}

/// What set off an ejection, which decides how it may end early.
#[derive(Debug, Clone, Copy)]
enum EjectionCause {
    /// Gateway failures in a row: the kind probes also see, so a passing
    /// probe window may end it early.
    Consecutive(u32),
    /// A share of live requests failing (in percent): often answers the
    /// health endpoint cannot see (a 500 from the application), so only
    /// time ends it.
    FailureRate(u32),
}

impl Ejection {
    fn reason(&self) -> String {
        let why = match self.cause {
            EjectionCause::Consecutive(n) => format!("{n} consecutive failures"),
            EjectionCause::FailureRate(p) => format!("{p}% of live requests failing"),
        };
        format!("ejected after {why} for {}", fmt_duration(self.duration))
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
///
/// A move back to usable that would push the penalty over `suppress` is
/// refused and starts the suppression instead, without adding: the stamp
/// never bounces in and out, and refusals cannot feed the penalty forever.
/// A suppressed stamp makes no further changes, so the penalty never exceeds
/// `suppress + flap_penalty` and needs no cap (BGP's max-suppress-time): a
/// stamp is held out at most `half_life × log2((suppress + penalty) / reuse)`
/// after its last flap, about 85s with the defaults.
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
        self.penalty = self.value(settings, now) + settings.flap_penalty;
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

fn awaiting_reason(window: &Window) -> String {
    format!(
        "awaiting probe verdict ({} of {} successes needed)",
        window.successes(),
        window.required
    )
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
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn fmt_percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_EVERY: Duration = Duration::from_secs(1);

    /// The hold and damping tuning the hold and flap tests count against
    /// (10 s hold; penalty halving every minute; out above 3000 points,
    /// back below 1500), stated here so that a new default changes no
    /// test's arithmetic.
    fn damped() -> HealthSettings {
        HealthSettings {
            min_hold: secs(10),
            flap_half_life: secs(60),
            flap_suppress: 3000.0,
            flap_reuse: 1500.0,
            ..HealthSettings::default()
        }
    }

    #[test]
    fn defaults_are_what_a_pool_without_optional_keys_gets() {
        let config = crate::config::parse_str(
            "[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\n[[pools.p.stamps]]\n\
             name = \"a-1\"\nregion = \"a\"\naddress = \"127.0.0.1:1\"\n",
            std::path::Path::new("test.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            HealthSettings::for_pool(&config.pools[0]),
            HealthSettings::default()
        );
        let d = HealthSettings::default();
        assert_eq!(d.min_hold, crate::config::defaults::DEFAULT_MIN_HOLD);
        assert_eq!(
            d.flap_half_life,
            crate::config::defaults::DEFAULT_FLAP_HALF_LIFE
        );
        // Four flaps within about a half-life: three stay under, the
        // fourth crosses.
        assert!(3.0 * d.flap_penalty < d.flap_suppress);
        assert!(4.0 * d.flap_penalty > d.flap_suppress);
    }

    /// Settings with holds and damping off, so each test sees one rule.
    fn plain() -> HealthSettings {
        HealthSettings {
            min_hold: Duration::ZERO,
            flap_penalty: 0.0,
            ..HealthSettings::default()
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// A stamp and a hand-driven clock.
    struct Sim {
        health: StampHealth,
        start: Instant,
        now: Instant,
        step: Duration,
    }

    impl Sim {
        fn new(settings: HealthSettings) -> Self {
            let start = Instant::now();
            Self {
                health: StampHealth::new(settings, start),
                start,
                now: start,
                step: PROBE_EVERY,
            }
        }

        fn at(&self, offset: Duration) -> Instant {
            self.start + offset
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        fn sample(&mut self, sample: &ProbeSample) -> Option<Transition> {
            self.advance(self.step);
            self.health.record_probe(sample, self.now)
        }

        fn ok_rtt(&mut self, rtt: Duration) -> Option<Transition> {
            self.sample(&ProbeSample {
                ok: true,
                rtt,
                status: Some(200),
                detail: "status 200".to_owned(),
            })
        }

        /// Probes in order, `+` passing and `-` failing (status 503); returns
        /// the transitions they caused.
        fn probes(&mut self, pattern: &str) -> Vec<Transition> {
            pattern
                .chars()
                .filter_map(|c| match c {
                    '+' => self.ok_rtt(ms(20)),
                    '-' => self.sample(&ProbeSample {
                        ok: false,
                        rtt: ms(5),
                        status: Some(503),
                        detail: "status 503".to_owned(),
                    }),
                    other => panic!("bad probe pattern char {other:?}"),
                })
                .collect()
        }

        fn eject(&mut self, consecutive: u32) -> Option<Transition> {
            self.health.eject(consecutive, self.now)
        }

        fn live(&mut self, requests: u64, failures: u64) -> Option<Transition> {
            self.advance(PROBE_EVERY);
            self.health.record_live(requests, failures, self.now)
        }

        fn tick_at(&mut self, offset: Duration) -> Option<Transition> {
            self.now = self.at(offset);
            self.health.tick(self.now)
        }

        fn state(&self) -> HealthState {
            self.health.state()
        }
    }

    fn only(transitions: Vec<Transition>) -> Transition {
        assert_eq!(transitions.len(), 1, "{transitions:#?}");
        transitions.into_iter().next().expect("one transition")
    }

    fn assert_move(t: &Transition, from: HealthState, to: HealthState, reason: &str) {
        assert_eq!((t.from, t.to), (from, to), "{t}");
        assert_eq!(t.reason, reason, "{t}");
    }

    use HealthState::{Degraded, Healthy, Unhealthy, Unknown};

    // --- the probe window -------------------------------------------------

    #[test]
    fn a_fresh_stamp_is_unknown_usable_at_full_weight() {
        let sim = Sim::new(HealthSettings::default());
        assert_eq!(sim.state(), Unknown);
        assert!(sim.health.usable());
        assert_eq!(sim.health.weight_factor(), 1.0);
        assert!(!sim.health.wants_fast_probes());
        assert_eq!(sim.health.since(), sim.start);
        assert_eq!(
            sim.health.reason(),
            "awaiting probe verdict (0 of 3 successes needed)"
        );
        assert_eq!(sim.health.recovered_at(), None);
        assert_eq!(sim.health.last_probe(), None);
    }

    #[test]
    fn three_of_four_is_healthy_after_three_successes() {
        let mut sim = Sim::new(plain());
        assert!(sim.probes("++").is_empty());
        assert_eq!(sim.state(), Unknown);
        let t = only(sim.probes("+"));
        assert_move(&t, Unknown, Healthy, "probes pass (3/3)");
        assert_eq!(t.at, sim.at(secs(3)));
        assert_eq!(sim.health.since(), t.at);
    }

    #[test]
    fn three_of_four_is_unhealthy_after_two_failures() {
        let mut sim = Sim::new(plain());
        assert!(sim.probes("-").is_empty(), "one failure still fits 3 of 4");
        let t = only(sim.probes("-"));
        assert_move(
            &t,
            Unknown,
            Unhealthy,
            "2 of last 2 probes failed (status 503)",
        );
        assert!(!sim.health.usable());
        assert_eq!(sim.health.weight_factor(), 0.0);
        assert!(sim.health.wants_fast_probes());
    }

    #[test]
    fn an_undecided_window_stays_unknown() {
        let mut sim = Sim::new(plain());
        assert!(sim.probes("+-+").is_empty());
        assert_eq!(sim.state(), Unknown);
        assert!(sim.health.usable());
        assert_eq!(
            sim.health.reason(),
            "awaiting probe verdict (2 of 3 successes needed)"
        );
    }

    #[test]
    fn three_of_four_tolerates_one_failure_in_the_window() {
        let mut sim = Sim::new(plain());
        sim.probes("+++");
        assert!(sim.probes("-+").is_empty(), "[+ + - +] still passes");
        let t = only(sim.probes("-"));
        assert_move(
            &t,
            Healthy,
            Unhealthy,
            "2 of last 4 probes failed (status 503)",
        );
        let back = only(sim.probes("++"));
        assert_move(&back, Unhealthy, Healthy, "probes pass again (3/4)");
    }

    #[test]
    fn two_of_four_needs_three_failures_and_two_successes() {
        let mut sim = Sim::new(HealthSettings {
            successful_samples_required: 2,
            ..plain()
        });
        assert!(sim.probes("--").is_empty(), "2 of 4 can still be reached");
        let down = only(sim.probes("-"));
        assert_move(
            &down,
            Unknown,
            Unhealthy,
            "3 of last 3 probes failed (status 503)",
        );
        assert!(sim.probes("+").is_empty(), "[- - - +] fails");
        let up = only(sim.probes("+"));
        assert_move(&up, Unhealthy, Healthy, "probes pass again (2/4)");
        assert!(
            sim.probes("--").is_empty(),
            "[- + + -], [+ + - -] still pass"
        );
        let again = only(sim.probes("-"));
        assert_move(
            &again,
            Healthy,
            Unhealthy,
            "3 of last 4 probes failed (status 503)",
        );
    }

    #[test]
    fn the_failure_reason_names_the_newest_cause() {
        let mut sim = Sim::new(plain());
        sim.probes("+++-");
        sim.advance(PROBE_EVERY);
        let refused = ProbeSample {
            ok: false,
            rtt: ms(1),
            status: None,
            detail: "connect refused".to_owned(),
        };
        let t = sim.health.record_probe(&refused, sim.now).expect("down");
        assert_eq!(t.reason, "2 of last 4 probes failed (connect refused)");
        assert_eq!(sim.health.last_probe(), Some(&refused));
        sim.probes("-");
        assert_eq!(
            sim.health.reason(),
            "3 of last 4 probes failed (status 503)",
            "kept current"
        );
    }

    #[test]
    fn out_of_range_settings_are_clamped_to_a_deciding_window() {
        let mut sim = Sim::new(HealthSettings {
            sample_size: 0,
            successful_samples_required: 9,
            ..plain()
        });
        assert_move(
            &only(sim.probes("+")),
            Unknown,
            Healthy,
            "probes pass (1/1)",
        );
        assert_move(
            &only(sim.probes("-")),
            Healthy,
            Unhealthy,
            "1 of last 1 probes failed (status 503)",
        );
    }

    // --- passive ejection -------------------------------------------------

    #[test]
    fn an_ejection_takes_a_healthy_stamp_out() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        let t = sim.eject(5).expect("ejected");
        assert_move(
            &t,
            Healthy,
            Unhealthy,
            "ejected after 5 consecutive failures for 10s",
        );
        assert_eq!(sim.health.ejected_until(), Some(sim.now + secs(10)));
        assert_eq!(sim.health.ejections(), 1);
        assert!(!sim.health.usable());
        assert!(sim.health.wants_fast_probes());
    }

    #[test]
    fn ejection_signals_below_threshold_or_while_ejected_are_ignored() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        assert_eq!(sim.eject(4), None, "below consecutive_failures");
        assert_eq!(sim.state(), Healthy);
        assert!(sim.eject(5).is_some());
        let until = sim.health.ejected_until();
        sim.advance(secs(1));
        assert_eq!(sim.eject(9), None, "already ejected");
        assert_eq!(sim.health.ejected_until(), until, "not extended");
        assert_eq!(sim.health.ejections(), 1);
    }

    #[test]
    fn an_ejection_expires_with_time() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        sim.eject(5);
        let ejected_at = sim.now;
        assert_eq!(sim.tick_at(secs(4) + secs(10) - ms(1)), None);
        let t = sim.tick_at(secs(14)).expect("released");
        assert_move(&t, Unhealthy, Healthy, "ejection expired");
        assert_eq!(sim.health.ejected_until(), None);
        assert_eq!(sim.health.recovered_at(), Some(ejected_at + secs(10)));
        assert_eq!(sim.health.reason(), "ejection expired");
        sim.tick_at(secs(15));
        assert_eq!(
            sim.health.reason(),
            "probes pass (4/4)",
            "reason follows the current cause"
        );
    }

    #[test]
    fn a_failure_rate_ejection_is_not_released_by_passing_probes() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        let t = sim
            .health
            .eject_for_failure_rate(0.3, sim.now)
            .expect("ejected");
        assert_move(
            &t,
            Healthy,
            Unhealthy,
            "ejected after 30% of live requests failing for 10s",
        );
        assert!(
            sim.probes("++++").is_empty(),
            "the health endpoint cannot see the application's 500s"
        );
        assert_eq!(sim.state(), Unhealthy);
        let until = sim.health.ejected_until().expect("still ejected");
        let t = sim.tick_at(until - sim.start).expect("released");
        assert_move(&t, Unhealthy, Healthy, "ejection expired");
        assert_eq!(sim.health.ejections(), 1);
        sim.health.eject_for_failure_rate(0.5, sim.now);
        assert_eq!(
            sim.health.ejected_until(),
            Some(sim.now + secs(20)),
            "a second ejection lasts longer"
        );
    }

    #[test]
    fn passing_probes_release_an_ejection_early() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        sim.eject(5);
        assert!(
            sim.probes("++").is_empty(),
            "successes from before the ejection do not count towards release"
        );
        let t = only(sim.probes("+"));
        assert_move(
            &t,
            Unhealthy,
            Healthy,
            "probes pass again (4/4), ejection released early",
        );
        assert_eq!(sim.health.ejected_until(), None);
        assert!(sim.now < sim.at(secs(4) + secs(10)));
    }

    #[test]
    fn a_released_ejection_does_not_override_failing_probes() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        sim.eject(5);
        assert!(sim.probes("--").is_empty(), "already unhealthy");
        assert_eq!(
            sim.health.reason(),
            "2 of last 4 probes failed (status 503)"
        );
        assert_eq!(
            sim.tick_at(secs(20)),
            None,
            "ejection over, probes still fail"
        );
        assert_eq!(sim.state(), Unhealthy);
        assert_eq!(sim.health.ejected_until(), None);
        let t = only(sim.probes("+++"));
        assert_move(&t, Unhealthy, Healthy, "probes pass again (3/4)");
    }

    #[test]
    fn ejecting_an_unknown_stamp_returns_it_to_unknown() {
        let mut sim = Sim::new(plain());
        let t = sim.eject(5).expect("ejected");
        assert_eq!((t.from, t.to), (Unknown, Unhealthy));
        let back = sim.tick_at(secs(10)).expect("expired");
        assert_move(&back, Unhealthy, Unknown, "ejection expired");
    }

    #[test]
    fn ejection_durations_grow_by_base_and_cap_at_max() {
        let mut sim = Sim::new(HealthSettings {
            base_ejection: secs(10),
            max_ejection: secs(25),
            ..plain()
        });
        sim.probes("++++");
        let mut durations = Vec::new();
        for _ in 0..4 {
            sim.eject(5).expect("ejected");
            let until = sim.health.ejected_until().expect("ejected");
            durations.push(until - sim.now);
            sim.now = until;
            sim.health.tick(sim.now).expect("expired");
        }
        assert_eq!(durations, [secs(10), secs(20), secs(25), secs(25)]);
        assert_eq!(sim.health.ejections(), 4);
    }

    #[test]
    fn the_ejection_level_falls_while_the_stamp_stays_in() {
        let mut sim = Sim::new(plain());
        sim.probes("++++");
        for _ in 0..2 {
            sim.eject(5);
            sim.now = sim.health.ejected_until().expect("ejected");
            sim.health.tick(sim.now);
        }
        // Level 2; two quiet base periods bring it back to 0.
        sim.advance(secs(20));
        sim.eject(5);
        assert_eq!(sim.health.ejected_until(), Some(sim.now + secs(10)));
        assert_eq!(
            sim.health.ejections(),
            3,
            "the total still counts every one"
        );
    }

    #[test]
    fn max_ejected_allows_floor_with_at_least_one() {
        // (ejected now, pool size, max percent, allowed)
        let table = [
            (0, 1, 50, true),   // floor 0, but at least one
            (1, 1, 50, false),  // ... and only one
            (0, 2, 50, true),   // floor 1
            (1, 2, 50, false),  // never the whole pool at 50%
            (1, 3, 50, false),  // floor(1.5) = 1
            (1, 4, 50, true),   // 2
            (2, 4, 50, false),  //
            (0, 3, 10, true),   // floor 0 -> 1: 10% must not disable ejection
            (1, 10, 10, false), // exactly 1
            (1, 20, 10, true),  // 2
            (0, 5, 0, false),   // 0% turns ejection off
            (0, 0, 50, false),  // empty pool
            (2, 3, 100, true),  // 100%: the last one too
            (3, 3, 150, false), // over 100% is 100%
        ];
        for (ejected, pool, percent, allowed) in table {
            assert_eq!(
                max_ejected_allows(ejected, pool, percent),
                allowed,
                "{ejected} ejected of {pool} at {percent}%"
            );
        }
    }

    // --- degraded ---------------------------------------------------------

    fn rtt_limited() -> HealthSettings {
        HealthSettings {
            degraded_rtt: Some(ms(250)),
            rtt_alpha: 1.0,
            ..plain()
        }
    }

    #[test]
    fn a_slow_stamp_with_a_passing_window_is_degraded() {
        let mut sim = Sim::new(rtt_limited());
        assert_eq!(
            sim.ok_rtt(ms(420)),
            None,
            "no verdict before the window passes"
        );
        assert_eq!(sim.ok_rtt(ms(420)), None);
        let t = sim.ok_rtt(ms(420)).expect("verdict");
        assert_move(&t, Unknown, Degraded, "probe RTT 420ms over 250ms");
        assert!(sim.health.usable());
        assert_eq!(sim.health.weight_factor(), 0.25);
        assert!(!sim.health.wants_fast_probes());
    }

    #[test]
    fn rtt_recovery_needs_to_fall_under_eighty_percent() {
        let mut sim = Sim::new(rtt_limited());
        sim.probes("+++");
        let t = sim.ok_rtt(ms(300)).expect("degraded");
        assert_move(&t, Healthy, Degraded, "probe RTT 300ms over 250ms");
        assert_eq!(
            sim.ok_rtt(ms(240)),
            None,
            "under the threshold is not enough"
        );
        assert_eq!(sim.health.reason(), "probe RTT 240ms, recovers under 200ms");
        assert_eq!(sim.ok_rtt(ms(200)), None, "at 80% is not under it");
        let back = sim.ok_rtt(ms(199)).expect("recovered");
        assert_move(
            &back,
            Degraded,
            Healthy,
            "back under degraded thresholds (probe RTT 199ms)",
        );
        assert_eq!(
            sim.ok_rtt(ms(249)),
            None,
            "healthy until over the threshold again"
        );
    }

    #[test]
    fn rtt_is_smoothed_and_failed_probes_do_not_feed_it() {
        let mut sim = Sim::new(plain());
        sim.ok_rtt(ms(100));
        assert_eq!(sim.health.smoothed_rtt(), Some(ms(100)));
        sim.ok_rtt(ms(200));
        let smoothed = sim.health.smoothed_rtt().expect("rtt");
        assert!(
            smoothed.abs_diff(ms(130)) < Duration::from_micros(1),
            "{smoothed:?}"
        );
        sim.probes("-");
        assert_eq!(sim.health.smoothed_rtt(), Some(smoothed));
    }

    #[test]
    fn one_slow_probe_does_not_degrade_a_smoothed_stamp() {
        let mut sim = Sim::new(HealthSettings {
            degraded_rtt: Some(ms(250)),
            ..plain()
        });
        sim.probes("+++");
        assert_eq!(sim.ok_rtt(ms(600)), None, "20ms -> ~194ms");
        let t = sim.ok_rtt(ms(600)).expect("a second slow probe degrades");
        assert_eq!(t.to, Degraded);
    }

    #[test]
    fn live_gateway_errors_degrade_with_hysteresis() {
        let mut sim = Sim::new(plain());
        sim.probes("+++");
        let t = sim.live(100, 20).expect("degraded");
        assert_move(&t, Healthy, Degraded, "gateway errors 20.0% over 10.0%");
        assert_eq!(sim.live(100, 9), None);
        assert_eq!(
            sim.health.reason(),
            "gateway errors 9.0%, recovers under 8.0%"
        );
        let back = sim.live(100, 5).expect("recovered");
        assert_move(
            &back,
            Degraded,
            Healthy,
            "back under degraded thresholds (probe RTT 20ms, gateway errors 5.0%)",
        );
    }

    #[test]
    fn small_live_windows_are_ignored() {
        let mut sim = Sim::new(plain());
        sim.probes("+++");
        assert_eq!(sim.live(MIN_LIVE_REQUESTS - 1, MIN_LIVE_REQUESTS - 1), None);
        assert_eq!(sim.state(), Healthy);
        assert!(sim.live(MIN_LIVE_REQUESTS, MIN_LIVE_REQUESTS).is_some());
    }

    #[test]
    fn an_old_live_error_rate_is_forgotten() {
        let mut sim = Sim::new(plain());
        sim.probes("+++");
        sim.live(50, 25).expect("degraded");
        let measured = sim.now - sim.start;
        assert_eq!(sim.live(5, 0), None, "too few requests to clear it");
        assert_eq!(sim.tick_at(measured + secs(29)), None);
        let t = sim.tick_at(measured + secs(30)).expect("forgotten");
        assert_eq!((t.from, t.to), (Degraded, Healthy));
    }

    #[test]
    fn degraded_needs_a_passing_window() {
        let mut sim = Sim::new(HealthSettings {
            degraded_rtt: Some(ms(250)),
            rtt_alpha: 1.0,
            ..plain()
        });
        assert_eq!(sim.live(100, 50), None, "no probe verdict yet");
        assert_eq!(sim.state(), Unknown);
        let down = only(sim.probes("--"));
        assert_eq!(
            down.to, Unhealthy,
            "a failing window is unhealthy, not degraded"
        );
        sim.ok_rtt(ms(400));
        sim.ok_rtt(ms(400));
        let t = sim.ok_rtt(ms(400)).expect("window passes");
        assert_move(
            &t,
            Unhealthy,
            Degraded,
            "probe RTT 400ms over 250ms; gateway errors 50.0% over 10.0%",
        );
    }

    #[test]
    fn a_degraded_weight_over_one_hundred_percent_is_capped() {
        let mut sim = Sim::new(HealthSettings {
            degraded_weight_percent: 150,
            ..plain()
        });
        sim.probes("+++");
        sim.live(10, 10);
        assert_eq!(sim.state(), Degraded);
        assert_eq!(sim.health.weight_factor(), 1.0);
    }

    // --- min hold ---------------------------------------------------------

    #[test]
    fn min_hold_delays_moves_up_but_not_down() {
        let mut sim = Sim::new(damped());
        assert_eq!(
            only(sim.probes("+++")).to,
            Healthy,
            "the first verdict is not held"
        );
        let down = only(sim.probes("--"));
        assert_eq!(
            (down.at, down.to),
            (sim.at(secs(5)), Unhealthy),
            "down at once"
        );
        assert!(sim.probes("+++").is_empty(), "held at 8s");
        assert_eq!(
            sim.health.reason(),
            "probes pass again (3/4); held unhealthy for min hold 10s"
        );
        assert_eq!(sim.tick_at(secs(15) - ms(1)), None);
        let up = sim.tick_at(secs(15)).expect("hold over");
        assert_move(&up, Unhealthy, Healthy, "probes pass again (3/4)");
        let down_again = only(sim.probes("--"));
        assert_eq!(
            down_again.to, Unhealthy,
            "down at once, even right after a move up"
        );
    }

    #[test]
    fn min_hold_also_holds_degraded_to_healthy() {
        let mut sim = Sim::new(HealthSettings {
            min_hold: secs(10),
            ..plain()
        });
        sim.probes("+++");
        assert_eq!(
            sim.live(100, 50).map(|t| t.to),
            Some(Degraded),
            "down at once"
        );
        let degraded_at = sim.now - sim.start;
        assert_eq!(sim.live(100, 0), None, "held");
        assert_eq!(sim.state(), Degraded);
        let t = sim.tick_at(degraded_at + secs(10)).expect("released");
        assert_eq!((t.from, t.to), (Degraded, Healthy));
    }

    #[test]
    fn a_held_recovery_is_dropped_when_the_stamp_fails_again() {
        // An ejection shorter than the hold: its end only allows a move up.
        let mut sim = Sim::new(HealthSettings {
            min_hold: secs(10),
            base_ejection: secs(5),
            ..plain()
        });
        sim.probes("++++");
        sim.eject(5);
        assert_eq!(
            sim.tick_at(secs(9) + ms(1)),
            None,
            "ejection over, hold not"
        );
        sim.step = ms(100);
        sim.probes("--");
        assert_eq!(sim.tick_at(secs(14)), None, "probes fail now");
        assert_eq!(
            sim.health.reason(),
            "2 of last 4 probes failed (status 503)"
        );
        let up = only(sim.probes("+++"));
        assert_eq!(
            up.reason, "probes pass again (3/4)",
            "not the stale ejection note"
        );
    }

    // --- flap damping -----------------------------------------------------

    #[test]
    fn the_flap_penalty_halves_every_half_life() {
        let mut sim = Sim::new(HealthSettings {
            min_hold: Duration::ZERO,
            ..damped()
        });
        sim.probes("+++");
        assert_eq!(
            sim.health.flap_penalty(sim.now),
            0.0,
            "unknown -> healthy is no flap"
        );
        sim.probes("--");
        let down = sim.now;
        assert_eq!(sim.health.flap_penalty(down), 1000.0);
        assert!((sim.health.flap_penalty(down + secs(60)) - 500.0).abs() < 1e-6);
        assert!((sim.health.flap_penalty(down + secs(120)) - 250.0).abs() < 1e-6);
        let _ = only(sim.probes("+++"));
        assert!(
            sim.health.flap_penalty(sim.now) > 1900.0,
            "the return is a flap too"
        );
    }

    #[test]
    fn flapping_ends_suppressed_and_stays_out_until_the_penalty_decays() {
        let mut sim = Sim::new(HealthSettings {
            min_hold: Duration::ZERO,
            ..damped()
        });
        sim.step = ms(200);
        let mut transitions = Vec::new();
        for _ in 0..6 {
            transitions.extend(sim.probes("--+++"));
        }
        let moves: Vec<_> = transitions.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            moves,
            [
                (Unknown, Unhealthy),
                (Unhealthy, Healthy),
                (Healthy, Unhealthy)
            ],
            "the second return would cross suppress: the stamp stays out"
        );
        assert!(
            sim.health.reason().starts_with("flap-damped (penalty "),
            "{}",
            sim.health.reason()
        );
        assert!(!sim.health.usable());
        assert!(sim.health.wants_fast_probes());

        // Probes pass from now on; the stamp stays out until the penalty
        // (about 2980 at 1.4s) has decayed below 1500: about 60s later.
        sim.step = PROBE_EVERY;
        let up = loop {
            if let Some(t) = sim.probes("+").pop() {
                break t;
            }
            assert!(sim.now < sim.at(secs(90)), "never released");
        };
        let released = up.at - sim.start;
        assert!(
            released > secs(59) && released < secs(63),
            "released at {released:?}"
        );
        assert_eq!((up.from, up.to), (Unhealthy, Healthy));
        assert!(
            up.reason.starts_with("flap penalty decayed to 14"),
            "{}",
            up.reason
        );
        assert!(up.reason.ends_with("below reuse 1500"), "{}", up.reason);
        assert_eq!(sim.health.recovered_at(), Some(up.at));
    }

    #[test]
    fn a_suppressed_stamp_also_waits_for_a_passing_window() {
        let mut sim = Sim::new(HealthSettings {
            min_hold: Duration::ZERO,
            ..damped()
        });
        sim.step = ms(200);
        sim.probes("--+++--+++");
        assert!(sim.health.reason().starts_with("flap-damped"));
        sim.probes("--");
        sim.step = secs(10);
        assert!(sim.probes("--------").is_empty(), "80s of failures");
        assert!(sim.health.flap_penalty(sim.now) < 1500.0);
        assert_eq!(
            sim.health.reason(),
            "4 of last 4 probes failed (status 503)"
        );
        assert!(sim.probes("++").is_empty());
        let up = only(sim.probes("+"));
        assert!(
            up.reason.starts_with("flap penalty decayed"),
            "{}",
            up.reason
        );
    }

    #[test]
    fn ejection_cycles_are_damped_too() {
        let mut sim = Sim::new(HealthSettings {
            min_hold: Duration::ZERO,
            ..damped()
        });
        sim.probes("++++");
        for round in 0..2 {
            assert!(sim.eject(5).is_some(), "round {round}");
            let until = sim.health.ejected_until().expect("ejected");
            sim.now = until;
            let back = sim.health.tick(sim.now);
            if round == 0 {
                assert_eq!(back.map(|t| t.to), Some(Healthy));
            } else {
                assert_eq!(back, None, "the second return is damped");
            }
        }
        assert!(
            sim.health.reason().starts_with("flap-damped"),
            "{}",
            sim.health.reason()
        );
    }

    #[test]
    fn a_down_move_that_crosses_suppress_says_so() {
        let mut sim = Sim::new(HealthSettings {
            min_hold: Duration::ZERO,
            flap_suppress: 900.0,
            flap_reuse: 300.0,
            ..HealthSettings::default()
        });
        sim.probes("+++");
        let t = only(sim.probes("--"));
        assert_eq!(t.to, Unhealthy);
        assert_eq!(
            t.reason,
            "2 of last 4 probes failed (status 503); flap-damped (penalty 1000, reuse under 300)"
        );
    }

    #[test]
    fn zero_penalty_or_half_life_turns_damping_off() {
        for settings in [
            HealthSettings {
                min_hold: Duration::ZERO,
                flap_penalty: 0.0,
                ..HealthSettings::default()
            },
            HealthSettings {
                min_hold: Duration::ZERO,
                flap_half_life: Duration::ZERO,
                ..HealthSettings::default()
            },
        ] {
            let mut sim = Sim::new(settings);
            sim.step = ms(200);
            assert_eq!(sim.probes("--+++--+++--+++").len(), 6);
            assert_eq!(sim.health.flap_penalty(sim.now), 0.0);
        }
    }

    // --- names and reasons ------------------------------------------------

    #[test]
    fn health_states_have_lowercase_names() {
        let all = [Unknown, Healthy, Degraded, Unhealthy];
        let names: Vec<_> = all.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["unknown", "healthy", "degraded", "unhealthy"]);
        for state in all {
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn transitions_read_as_one_line() {
        let mut sim = Sim::new(plain());
        let t = only(sim.probes("--"));
        assert_eq!(
            t.to_string(),
            "unknown -> unhealthy: 2 of last 2 probes failed (status 503)"
        );
    }

    #[test]
    fn durations_in_reasons_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_micros(419_600)), "420ms");
        assert_eq!(fmt_duration(secs(10)), "10s");
        assert_eq!(fmt_duration(ms(1500)), "1.5s");
        assert_eq!(fmt_percent(0.125), "12.5%");
    }
}
