//! `[fleet]`, validated: how this edge joins the others through etcd. Absent
//! means a single edge, exactly as before the fleet existed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[fleet]`
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    /// This edge's name, unique in the fleet (default: the host name).
    pub name: String,
    /// etcd v3 endpoints, `http://` or `https://`.
    pub etcd: Vec<String>,
    /// Every key of this fleet lives under this prefix (no trailing `/`).
    pub prefix: String,
    /// This edge's published view expires this long after it stops
    /// renewing its lease.
    pub lease_ttl: Duration,
    /// TLS to etcd: CA, and the client certificate and key (both or none).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// etcd user; the password comes from the variable `password_env`.
    pub username: Option<String>,
    /// Environment variable holding the etcd password.
    pub password_env: Option<String>,
    /// Addresses DNS answers with for this edge.
    pub advertise: Vec<IpAddr>,
    /// How many live edges must see a stamp down for all to drop it.
    pub health_quorum: Quorum,
}

/// `fleet.health_quorum`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// More than half of the live edges.
    Majority,
    /// At least this many live edges.
    Count(u32),
}

impl Quorum {
    /// How many of `alive` edges make a quorum (at least one).
    pub fn of(self, alive: usize) -> usize {
        match self {
            Quorum::Majority => alive / 2 + 1,
            Quorum::Count(n) => n as usize,
        }
        .max(1)
    }
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quorum::Majority => f.write_str("majority"),
            Quorum::Count(n) => write!(f, "{n}"),
        }
    }
}

impl FleetSettings {
    /// Whether this edge shares operator state with others through etcd;
    /// without endpoints the section only names the edge and its
    /// advertised addresses.
    pub fn is_shared(&self) -> bool {
        !self.etcd.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_live_edges() {
        assert_eq!(Quorum::Majority.of(3), 2);
        assert_eq!(Quorum::Majority.of(4), 3);
        assert_eq!(Quorum::Majority.of(0), 1);
        assert_eq!(Quorum::Count(2).of(5), 2);
    }
}
