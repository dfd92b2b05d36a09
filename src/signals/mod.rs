//! Messages between the planes, owned by neither: what probes, the request
//! path and the admin API send to the controller on its one channel. A leaf:
//! it imports nothing above it, so the data plane can signal the control
//! plane without depending on it.

use std::sync::Arc;
use std::time::Duration;

pub mod command;

pub use command::{
    AdminError, AdminRequest, AdminShown, AdminState, Command, FleetApply, FleetDecision, Target,
};

/// What stampgate observed about a stamp: decided by the health state
/// machine ([`crate::health::state`]), shown by status and metrics. Here,
/// below both, so that the request path's counters can be indexed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
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
    pub(crate) fn rank(self) -> u8 {
        match self {
            HealthState::Unhealthy => 0,
            HealthState::Degraded => 1,
            HealthState::Healthy | HealthState::Unknown => 2,
        }
    }
}

impl crate::counters::Label for HealthState {
    const ALL: &'static [Self] = &[
        HealthState::Unknown,
        HealthState::Healthy,
        HealthState::Degraded,
        HealthState::Unhealthy,
    ];

    fn as_str(self) -> &'static str {
        HealthState::as_str(self)
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
