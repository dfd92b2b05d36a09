//! stampgate: a global traffic manager and failover proxy for multi-region stamps.

pub mod stamp;
