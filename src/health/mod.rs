//! Health: active probes ([`probe`]) send raw samples to the controller,
//! which runs the pure per-stamp state machine ([`state`]) on them and on
//! the passive signals of live traffic, whose rates [`rates`] computes;
//! [`latency`] estimates each stamp's live latency and judges latency
//! outliers.

pub mod latency;
pub mod probe;
pub mod rates;
pub mod state;

pub use state::{HealthState, StampHealth, Transition};
