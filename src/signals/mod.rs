//! Messages between the planes, owned by neither: what probes, the request
//! path and the admin API send to the controller on its one channel. A leaf:
//! it imports nothing above it, so the data plane can signal the control
//! plane without depending on it.

use std::sync::Arc;
use std::time::Duration;

pub mod command;

pub use command::{
    AdminError, AdminRequest, AdminState, Command, FleetApply, FleetDecision, Target,
};

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
