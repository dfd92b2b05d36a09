//! Health: active probes ([`probe`]) send raw samples to the controller,
//! which runs the pure per-stamp state machine ([`state`]) on them and on
//! the passive signals of live traffic, whose rates [`rates`] computes.

pub mod probe;
pub mod rates;
pub mod state;

pub use state::{HealthState, StampHealth, Transition};
