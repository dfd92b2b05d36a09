//! Operator commands: what the admin API (and SIGHUP) asks of the
//! controller. Commands travel on the controller's channel with a reply
//! channel, so a drain is applied, persisted and published in one place.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// What the operator decided for a stamp. Independent of health: probes
/// never override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes traffic as its health allows.
    #[default]
    Active,
    /// No new requests; in-flight ones finish (until an optional deadline).
    /// Shown as `drained` once nothing is in flight.
    Draining,
    /// No traffic, not even when the pool fails open.
    Disabled,
}

impl AdminState {
    /// How the state is shown: a draining stamp with nothing in flight is
    /// `drained`.
    pub fn shown(self, in_flight: u64) -> AdminShown {
        match self {
            AdminState::Active => AdminShown::Active,
            AdminState::Draining if in_flight == 0 => AdminShown::Drained,
            AdminState::Draining => AdminShown::Draining,
            AdminState::Disabled => AdminShown::Disabled,
        }
    }
}

crate::counters::labels! {
    /// The admin state as status, events and metrics show it.
    pub enum AdminShown {
        /// Takes traffic as its health allows.
        Active => "active",
        /// No new requests; some still in flight.
        Draining => "draining",
        /// Draining, and nothing in flight any more.
        Drained => "drained",
        /// No traffic at all.
        Disabled => "disabled",
    }
}

/// A stamp, or every stamp of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One stamp, by name.
    Stamp(String),
    /// Every stamp whose region has this label.
    Region(String),
}

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Stop new traffic; cut in-flight requests at `deadline` if given.
    /// `dry_run` answers with the shares that would result, changing
    /// nothing. Draining the last usable region of a pool is refused
    /// unless `force`.
    Drain {
        /// What to drain.
        target: Target,
        /// Cut requests still in flight after this long.
        deadline: Option<Duration>,
        /// Only predict.
        dry_run: bool,
        /// Allow draining the last usable region.
        force: bool,
    },
    /// Back to `active`.
    Enable {
        /// What to enable.
        target: Target,
    },
    /// `disabled`: no traffic at all.
    Disable {
        /// The stamp.
        stamp: String,
    },
    /// Override the configured weight (0..=1000); `None` removes the override.
    Weight {
        /// The stamp.
        stamp: String,
        /// New weight.
        weight: Option<u32>,
    },
    /// Re-read and apply the config file.
    Reload,
    /// The JSON status document (`/admin/status`).
    Status,
    /// Fleet: what `command` would decide per stamp (from the fleet's
    /// decisions as applied here); changes nothing.
    /// Refusals (unknown stamp, last usable region) come back as for the
    /// command itself.
    Plan(Box<Command>),
    /// Fleet: decisions read from etcd, to apply on this edge.
    ApplyFleet(FleetApply),
    /// Fleet: the emergency override: carry out `command` on this edge
    /// only, and keep the stamps it touches out of fleet decisions until
    /// [`Command::ClearLocal`].
    Local(Box<Command>),
    /// Fleet: end the local override of a stamp; it follows the fleet's
    /// decision again.
    ClearLocal {
        /// The stamp.
        stamp: String,
    },
    /// Fleet: stamps that a quorum of live edges sees unhealthy, with the
    /// edges that see it so (the whole set each time; empty clears).
    FleetHealth {
        /// Stamp name to the names of the edges that see it down.
        down: std::collections::BTreeMap<String, Vec<String>>,
    },
}

/// The fleet's word on one stamp, as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDecision {
    /// The stamp.
    pub stamp: String,
    /// Admin state.
    pub admin: AdminState,
    /// Weight override.
    pub weight: Option<u32>,
    /// A drain's deadline, counted from when each edge applies it.
    pub deadline: Option<Duration>,
    /// The operator (token label) who decided.
    pub by: String,
    /// The edge whose admin API took the decision.
    pub edge: String,
    /// What was asked, in words (`drain stamp a`).
    pub why: String,
    /// The etcd revision that wrote it (its key's mod revision).
    pub revision: i64,
}

/// A batch of fleet decisions to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetApply {
    /// The decisions; older than what a stamp already has: skipped.
    pub decisions: Vec<FleetDecision>,
    /// A full read: stamps without a decision here go back to active.
    pub full: bool,
    /// The etcd revision this batch brings the edge to.
    pub revision: i64,
}

/// Why a command was not carried out. Maps to the admin API's status code.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// No such stamp.
    #[error("no stamp named {0:?}")]
    UnknownStamp(String),
    /// No stamp has this region.
    #[error("no region named {0:?}")]
    UnknownRegion(String),
    /// Understood but refused (e.g. draining the last usable region).
    #[error("{0}")]
    Refused(String),
    /// A field has a bad value.
    #[error("{field}: {message}")]
    Invalid {
        /// The field name.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The new config file is invalid; the old one keeps serving.
    #[error("reload refused, still serving the previous config: {0}")]
    Reload(String),
    /// The decision could not be written to the state file (nothing changed).
    #[error("state file: {0}")]
    Persist(String),
    /// The controller is gone (shutting down).
    #[error("the controller is not running")]
    Unavailable,
    /// Fleet: etcd cannot be reached, so a fleet-wide decision cannot be
    /// made; nothing changed anywhere.
    #[error("{0}")]
    FleetUnavailable(String),
    /// Fleet: another operator changed the same stamp at the same time,
    /// and retrying on the new state did not settle it.
    #[error("{0}")]
    Conflict(String),
}

impl AdminError {
    /// The admin API's status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::UnknownStamp(_) | AdminError::UnknownRegion(_) => StatusCode::NOT_FOUND,
            AdminError::Refused(_) => StatusCode::CONFLICT,
            AdminError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AdminError::Reload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::Unavailable | AdminError::FleetUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AdminError::Conflict(_) => StatusCode::CONFLICT,
        }
    }
}

/// A command on its way to the controller.
#[derive(Debug)]
pub struct AdminRequest {
    /// What to do.
    pub command: Command,
    /// Who asked (the token's label, `sighup`, ...), for the event log.
    pub who: String,
    /// Where the answer goes: a JSON document or the refusal.
    pub reply: oneshot::Sender<Result<serde_json::Value, AdminError>>,
}
