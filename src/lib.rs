//! stampgate
