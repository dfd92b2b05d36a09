//! stampgate

pub mod discovery;
