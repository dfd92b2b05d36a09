//! What the fleet keeps in etcd, as values: an operator decision per stamp
//! and each edge's published view. Pure parsing and building, no I/O, so
//! that a corrupt or foreign value is a tested `Err` (ignored with an
//! alarm by the sync task), never a panic and never applied.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::routing::RoutingTable;
use crate::signals::{AdminState, FleetDecision};

/// The key layout under the fleet's prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `{prefix}/decisions/{stamp}`
    Decision(&'a str),
    /// `{prefix}/edges/{name}`
    Edge(&'a str),
    /// `{prefix}/ledger`: touched by every decision, so that a decision
    /// is made against the whole current state (compare-and-swap on its
    /// mod revision).
    Ledger,
    /// Anything else: not ours.
    Foreign,
}

impl Keys {
    /// Keys under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Everything of this fleet (watched as one range).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The decision key of `stamp`.
    pub fn decision(&self, stamp: &str) -> String {
        format!("{}/decisions/{stamp}", self.prefix)
    }

    /// The view key of edge `name`.
    pub fn edge(&self, name: &str) -> String {
        format!("{}/edges/{name}", self.prefix)
    }

    /// The prefix of every edge's view.
    pub fn edges(&self) -> String {
        format!("{}/edges/", self.prefix)
    }

    /// The ledger key.
    pub fn ledger(&self) -> String {
        format!("{}/ledger", self.prefix)
    }

    /// What `key` is.
    pub fn kind<'a>(&self, key: &'a [u8]) -> KeyKind<'a> {
        let Ok(key) = std::str::from_utf8(key) else {
            return KeyKind::Foreign;
        };
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return KeyKind::Foreign;
        };
        let named = |s: &'a str| (!s.is_empty() && valid_name(s)).then_some(s);
        if rest == "ledger" {
            KeyKind::Ledger
        } else if let Some(stamp) = rest.strip_prefix("decisions/").and_then(named) {
            KeyKind::Decision(stamp)
        } else if let Some(edge) = rest.strip_prefix("edges/").and_then(named) {
            KeyKind::Edge(edge)
        } else {
            KeyKind::Foreign
        }
    }
}

/// Names as the config allows them (so a key cannot smuggle in a path).
fn valid_name(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The value of a decision key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionValue {
    /// Admin state.
    pub admin: AdminState,
    /// Weight override.
    pub weight: Option<u32>,
    /// A drain's deadline in milliseconds, counted on each edge from when
    /// it applies the decision (never a wall-clock instant: edges' clocks
    /// differ).
    pub deadline_ms: Option<u64>,
    /// The operator.
    pub by: String,
    /// The edge whose admin API took it.
    pub edge: String,
    /// What was asked, in words.
    pub why: String,
    /// When, by the deciding edge's clock (for people only; ordering is
    /// by etcd revision).
    pub at: String,
}

impl DecisionValue {
    /// The decision on `stamp`, as written at `revision`.
    pub fn into_decision(self, stamp: &str, revision: i64) -> FleetDecision {
        FleetDecision {
            stamp: stamp.to_owned(),
            admin: self.admin,
            weight: self.weight,
            deadline: self.deadline_ms.map(Duration::from_millis),
            by: self.by,
            edge: self.edge,
            why: self.why,
            revision,
        }
    }
}

/// Why a value under the prefix is not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadValue {
    /// Not the JSON document this key holds.
    #[error("{key}: not a stampgate value ({message}); ignored")]
    Parse {
        /// The key.
        key: String,
        /// The parser's message.
        message: String,
    },
    /// A weight out of range.
    #[error("{key}: weight {weight} is out of range 0..={max}; ignored")]
    Range {
        /// The key.
        key: String,
        /// The weight.
        weight: u32,
        /// The limit.
        max: u32,
    },
}

/// Parse the decision at `key` for `stamp`.
pub fn parse_decision(
    key: &str,
    stamp: &str,
    value: &[u8],
    revision: i64,
) -> Result<FleetDecision, BadValue> {
    let v: DecisionValue = serde_json::from_slice(value).map_err(|e| BadValue::Parse {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    let max = crate::config::defaults::MAX_WEIGHT;
    if let Some(weight) = v.weight.filter(|&w| w > max) {
        return Err(BadValue::Range {
            key: key.to_owned(),
            weight,
            max,
        });
    }
    Ok(v.into_decision(stamp, revision))
}

/// One stamp as an edge sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StampView {
    /// Health verdict (`healthy`, `degraded`, `unhealthy`, ...).
    pub health: String,
    /// Why.
    pub reason: String,
    /// Smoothed probe round trip.
    pub rtt_ms: Option<f64>,
    /// Failed share of requests over the last second.
    pub error_rate: f64,
    /// Requests per second.
    pub rps: f64,
    /// Admin state on this edge.
    pub admin: String,
}

/// What an edge publishes under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    /// The edge's name.
    pub name: String,
    /// stampgate version.
    pub version: String,
    /// Fingerprint of its config file (edges with different configs
    /// stand out).
    pub config_fingerprint: String,
    /// Connected to etcd when it wrote this (always, unless stale).
    pub connected: bool,
    /// Fleet revision it has applied.
    pub revision: i64,
    /// Stamps under a local override on that edge.
    pub local_overrides: Vec<String>,
    /// Per stamp.
    pub stamps: BTreeMap<String, StampView>,
    /// Where clients reach this edge (`fleet.advertise`): what DNS answers
    /// of kind `"edges"` give for it. Absent in the views of edges older
    /// than these answers, which then read as none: such an edge is never
    /// answered, since there is no address to give.
    #[serde(default)]
    pub advertise: Vec<IpAddr>,
    /// The pools this edge can serve: those with a usable stamp in its own
    /// routing table ([`crate::routing::PoolView::has_usable_stamp`]).
    /// Judged by the edge itself, since only it sees the stamps from where
    /// it stands. Absent (an older edge): none.
    #[serde(default)]
    pub pools: Vec<String>,
}

/// A live edge other than this one, as DNS answers of kind `"edges"` need
/// it: the fleet hands a list of these to whoever watches
/// ([`crate::fleet::FleetHandle::live_peers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePeer {
    /// The edge's name.
    pub name: String,
    /// Its advertised addresses (never empty).
    pub advertise: Vec<IpAddr>,
    /// The pools it can serve, from its own published view.
    pub pools: Vec<String>,
}

/// The live edges other than `this_edge` that advertise an address, in
/// name order. An edge without an address is left out rather than listed
/// empty: counted as serving a pool, it would turn an answer that should
/// fail open into an empty one.
pub fn live_peers<'a>(edges: impl Iterator<Item = &'a EdgeView>, this_edge: &str) -> Vec<LivePeer> {
    edges
        .filter(|e| e.name != this_edge && !e.advertise.is_empty())
        .map(|e| LivePeer {
            name: e.name.clone(),
            advertise: e.advertise.clone(),
            pools: e.pools.clone(),
        })
        .collect()
}

/// The pools of `table` that this edge can serve, in table order.
pub fn serving_pools(table: &RoutingTable) -> Vec<String> {
    table
        .pools
        .iter()
        .filter(|p| p.has_usable_stamp())
        .map(|p| p.name.to_string())
        .collect()
}

/// Parse an edge view.
pub fn parse_edge(key: &str, value: &[u8]) -> Result<EdgeView, BadValue> {
    serde_json::from_slice(value).map_err(|e| BadValue::Parse {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// This edge's view from the controller's status document, with its
/// advertised addresses and the pools it can serve ([`serving_pools`]).
pub fn view_from_status(
    name: &str,
    fingerprint: &str,
    revision: i64,
    status: &Value,
    advertise: &[IpAddr],
    pools: Vec<String>,
) -> EdgeView {
    let mut stamps = BTreeMap::new();
    for pool in status["pools"].as_array().into_iter().flatten() {
        for s in pool["stamps"].as_array().into_iter().flatten() {
            let Some(stamp) = s["name"].as_str() else {
                continue;
            };
            let rps = s["requests_per_second"].as_f64().unwrap_or(0.0);
            let eps = s["errors_per_second"].as_f64().unwrap_or(0.0);
            let error_rate = if rps > 0.0 { (eps / rps).min(1.0) } else { 0.0 };
            stamps.insert(
                stamp.to_owned(),
                StampView {
                    health: s["health"].as_str().unwrap_or("unknown").to_owned(),
                    reason: s["health_reason"].as_str().unwrap_or("").to_owned(),
                    rtt_ms: s["probe_rtt_ms"].as_f64(),
                    error_rate: (error_rate * 1000.0).round() / 1000.0,
                    rps,
                    admin: s["admin"].as_str().unwrap_or("").to_owned(),
                },
            );
        }
    }
    let local_overrides = status["fleet"]["local_overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    EdgeView {
        name: name.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_fingerprint: fingerprint.to_owned(),
        connected: true,
        revision,
        local_overrides,
        stamps,
        advertise: advertise.to_vec(),
        pools,
    }
}

/// Stamps that at least `quorum` of `edges` see unhealthy, with those
/// edges' names (sorted).
pub fn quorum_down<'a>(
    edges: impl Iterator<Item = &'a EdgeView>,
    quorum: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for edge in edges {
        for (stamp, view) in &edge.stamps {
            if view.health == "unhealthy" {
                seen.entry(stamp.clone())
                    .or_default()
                    .push(edge.name.clone());
            }
        }
    }
    seen.retain(|_, edges| {
        edges.sort();
        edges.len() >= quorum
    });
    seen
}

/// FNV-1a, 64 bits: a fingerprint that is the same on every build and
/// platform (std's hasher is not), so edges can be compared.
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart_and_foreign_ones_refused() {
        let k = Keys::new("/sg/prod");
        assert_eq!(k.kind(b"/sg/prod/decisions/a-1"), KeyKind::Decision("a-1"));
        assert_eq!(k.kind(b"/sg/prod/edges/edge-1"), KeyKind::Edge("edge-1"));
        assert_eq!(k.kind(b"/sg/prod/ledger"), KeyKind::Ledger);
        assert_eq!(k.kind(b"/sg/prod/decisions/"), KeyKind::Foreign);
        assert_eq!(k.kind(b"/sg/prod/decisions/a/b"), KeyKind::Foreign);
        assert_eq!(k.kind(b"/sg/production/ledger"), KeyKind::Foreign);
        assert_eq!(k.kind(b"/sg/prod/other"), KeyKind::Foreign);
        assert_eq!(k.kind(&[0xff, 0xfe]), KeyKind::Foreign);
    }

    #[test]
    fn a_decision_round_trips_and_garbage_is_an_error() {
        let v = DecisionValue {
            admin: AdminState::Draining,
            weight: Some(5),
            deadline_ms: Some(1500),
            by: "alice".into(),
            edge: "edge-1".into(),
            why: "drain stamp a".into(),
            at: "now".into(),
        };
        let bytes = serde_json::to_vec(&v).unwrap();
        let d = parse_decision("k", "a", &bytes, 7).unwrap();
        assert_eq!(d.admin, AdminState::Draining);
        assert_eq!(d.deadline, Some(Duration::from_millis(1500)));
        assert_eq!(d.revision, 7);
        assert!(matches!(
            parse_decision("k", "a", b"{\"admin\":\"gone\"}", 1),
            Err(BadValue::Parse { .. })
        ));
        assert!(matches!(
            parse_decision("k", "a", b"\xff\x00", 1),
            Err(BadValue::Parse { .. })
        ));
        let heavy = String::from_utf8(bytes)
            .unwrap()
            .replace("\"weight\":5", "\"weight\":5000");
        assert!(matches!(
            parse_decision("k", "a", heavy.as_bytes(), 1),
            Err(BadValue::Range { .. })
        ));
    }

    fn edge(name: &str, down: &[&str]) -> EdgeView {
        let stamps = ["a", "b"]
            .iter()
            .map(|s| {
                let health = if down.contains(s) {
                    "unhealthy"
                } else {
                    "healthy"
                };
                (
                    (*s).to_owned(),
                    StampView {
                        health: health.into(),
                        reason: String::new(),
                        rtt_ms: None,
                        error_rate: 0.0,
                        rps: 0.0,
                        admin: "active".into(),
                    },
                )
            })
            .collect();
        EdgeView {
            name: name.into(),
            version: "0".into(),
            config_fingerprint: "x".into(),
            connected: true,
            revision: 1,
            local_overrides: vec![],
            stamps,
            advertise: vec![[127, 0, 0, 2].into()],
            pools: vec!["p".into()],
        }
    }

    #[test]
    fn one_edge_alone_is_no_quorum_two_of_three_are() {
        let edges = [edge("e1", &["a"]), edge("e2", &[]), edge("e3", &[])];
        assert!(quorum_down(edges.iter(), 2).is_empty());
        let edges = [edge("e3", &["a"]), edge("e1", &["a", "b"]), edge("e2", &[])];
        let down = quorum_down(edges.iter(), 2);
        assert_eq!(down.len(), 1);
        assert_eq!(down["a"], vec!["e1".to_owned(), "e3".to_owned()]);
    }

    #[test]
    fn a_view_without_advertise_or_pools_still_parses_as_serving_nothing() {
        // An edge older than DNS answers of kind "edges" publishes neither.
        let mut old = serde_json::to_value(edge("e1", &[])).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("advertise");
        fields.remove("pools");
        let view = parse_edge("k", old.to_string().as_bytes()).unwrap();
        assert!(view.advertise.is_empty());
        assert!(view.pools.is_empty());
    }

    #[test]
    fn a_view_with_fields_added_later_still_parses() {
        // A newer edge's view, read by this one.
        let mut newer = serde_json::to_value(edge("e1", &[])).unwrap();
        newer["weights"] = serde_json::json!({"a": 3});
        let view = parse_edge("k", newer.to_string().as_bytes()).unwrap();
        assert_eq!(view, edge("e1", &[]));
    }

    #[test]
    fn live_peers_are_the_other_edges_that_advertise_an_address() {
        let mut silent = edge("e3", &[]);
        silent.advertise.clear();
        let mut drained = edge("e2", &[]);
        drained.pools.clear();
        let edges = [edge("e1", &[]), drained, silent];
        let peers = live_peers(edges.iter(), "e1");
        assert_eq!(
            peers,
            [LivePeer {
                name: "e2".into(),
                advertise: vec![[127, 0, 0, 2].into()],
                pools: vec![],
            }],
            "this edge and the one without an address are left out; one that serves nothing stays"
        );
    }

    #[test]
    fn fingerprint_is_stable() {
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    }
}
