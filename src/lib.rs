//! stampgate

pub mod config;
