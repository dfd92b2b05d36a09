//! What a record answers, as a pure function of the routing table (plus the
//! resolved stamp names and the live edges): no socket, no clock, no lock.
//! The rules mirror the proxy's own decision by reading the selector the
//! controller built, rather than deciding usability a second time.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{DnsAnswerKind, DnsRecordConfig, Method};
use crate::routing::{PoolView, RoutingTable, StampView};
use crate::signals::AdminShown;

use super::EdgeInfo;

/// One thing an answer points at: a stamp or an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Stamp or edge name.
    pub name: Arc<str>,
    /// Its addresses (a stamp given as a DNS name may have several, or
    /// none yet before its first resolution).
    pub addresses: Vec<IpAddr>,
    /// Its share when answers are ordered.
    pub weight: u32,
    /// Preference group: every target of group 0 comes before any of
    /// group 1 (latency: the fast set first).
    pub group: u8,
}

/// The current answer of one record, before ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the answer points at, in group order.
    pub targets: Vec<Target>,
    /// Nothing was usable, so every enabled target is given instead.
    pub failing_open: bool,
    /// Why there is no answer at all, when that is the table's fault
    /// rather than the operator's (a pool a reload removed).
    pub problem: Option<&'static str>,
}

impl Answer {
    fn empty(problem: &'static str) -> Answer {
        Answer {
            targets: Vec::new(),
            failing_open: false,
            problem: Some(problem),
        }
    }

    /// Addresses in the order of this one response: group by group, and
    /// within a group an order drawn by weight, since most clients connect
    /// to the first address (the heavier a target, the more often it is
    /// first). Addresses of one target stay together.
    pub fn ordered(&self, rng: &mut fastrand::Rng) -> Vec<IpAddr> {
        self.in_order(&self.draw(rng)).collect()
    }

    /// The addresses of the targets in `order` (target indices, as
    /// [`Answer::draw`] gives them), each target's together.
    pub fn in_order<'a>(&'a self, order: &'a [u16]) -> impl Iterator<Item = IpAddr> + 'a {
        order
            .iter()
            .flat_map(|&i| self.targets[usize::from(i)].addresses.iter().copied())
    }

    /// The order of one response as target indices (see
    /// [`Answer::ordered`]).
    pub fn draw(&self, rng: &mut fastrand::Rng) -> Vec<u16> {
        let shape: Vec<(u8, u32)> = self.targets.iter().map(|t| (t.group, t.weight)).collect();
        draw_order(&shape, rng)
    }

    /// Whether `order` is an order of this answer's targets: each once,
    /// group by group.
    pub fn is_order(&self, order: &[u16]) -> bool {
        let mut seen = vec![false; self.targets.len()];
        let mut group = 0;
        order.len() == self.targets.len()
            && order.iter().all(|&i| {
                let Some(target) = self.targets.get(usize::from(i)) else {
                    return false;
                };
                let fresh = !std::mem::replace(&mut seen[usize::from(i)], true);
                let in_turn = target.group >= group;
                group = target.group;
                fresh && in_turn
            })
    }

    /// Whether every response orders the addresses the same way: at most
    /// one target in each group, so nothing is left to draw.
    pub fn is_fixed_order(&self) -> bool {
        self.targets.windows(2).all(|w| w[0].group != w[1].group)
    }

    /// Addresses in table order (status pages and tests).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.targets
            .iter()
            .flat_map(|t| t.addresses.iter().copied())
            .collect()
    }
}

/// The order of one response over targets given as `(group, weight)` in
/// group order: every target of a group before any of the next, and
/// within a group one drawn by weight (a weight of 0 counts as 1, so an
/// answered target is never last by rule). Shared by [`Answer::ordered`]
/// and the UDP packet cache, which draws an order per response and then
/// looks for a response already written in that order.
pub fn draw_order(targets: &[(u8, u32)], rng: &mut fastrand::Rng) -> Vec<u16> {
    let mut out = Vec::with_capacity(targets.len());
    let mut left: Vec<u16> = Vec::with_capacity(targets.len());
    let mut start = 0;
    while start < targets.len() {
        let group = targets[start].0;
        let end = start + targets[start..].iter().take_while(|t| t.0 == group).count();
        left.clear();
        left.extend((start..end).filter_map(|i| u16::try_from(i).ok()));
        let weight = |i: u16| u64::from(targets[usize::from(i)].1.max(1));
        while !left.is_empty() {
            let total: u64 = left.iter().map(|&i| weight(i)).sum();
            let mut r = rng.u64(..total);
            let pos = left
                .iter()
                .position(|&i| {
                    let w = weight(i);
                    if r < w {
                        return true;
                    }
                    r -= w;
                    false
                })
                .unwrap_or(0);
            out.push(left.remove(pos));
        }
        start = end;
    }
    out
}

/// The answer of `record` under `table`. `resolve` gives the current
/// addresses of a stamp host name (the discovery cache); `edges` the live
/// edges of the fleet.
pub fn compute(
    table: &RoutingTable,
    record: &DnsRecordConfig,
    edges: &[EdgeInfo],
    resolve: impl Fn(&str) -> Option<Arc<[IpAddr]>>,
) -> Answer {
    let Some(pool) = table.pool(&record.pool) else {
        return Answer::empty("the pool is not in the routing table");
    };
    match record.answer {
        DnsAnswerKind::Stamps => stamps(pool, resolve),
        DnsAnswerKind::Edges => self::edges(pool, edges),
    }
}

/// Under the pool's method: priority, the top usable tier; weighted, every
/// stamp with weight above 0; latency, every usable stamp, the fast set
/// first. Latency answers keep the slow stamps (after the fast ones)
/// because the latencies were measured from this edge, not from the DNS
/// client: a stamp slow from here may be the nearest to the client. In
/// priority and weighted answers a trickled stamp (a latency outlier,
/// which the proxy gives only a trickle to see it recover) is left out:
/// a resolver cannot give it a trickle, and a client handed it would
/// wait on it.
fn stamps(pool: &PoolView, resolve: impl Fn(&str) -> Option<Arc<[IpAddr]>>) -> Answer {
    let tiers = pool.selector.tiers();
    let target = |i: usize, weight: u32, group: u8| {
        let stamp = &pool.stamps[i];
        Target {
            name: stamp.name.clone(),
            addresses: stamp_addresses(stamp, &resolve),
            weight,
            group,
        }
    };
    if pool.failing_open || tiers.is_empty() {
        // Fail open, as Traffic Manager does, even for a pool that fails
        // closed for HTTP: an empty DNS answer is cached by resolvers and
        // outlives the outage, while a stamp that may be up is a chance.
        // A pool failing open already has every enabled stamp in its one
        // tier; a fail-closed pool has none, so the operator's word is read
        // from the stamps' mirrored admin state.
        let members: Vec<usize> = match tiers.first() {
            Some(tier) => tier.members().collect(),
            None => (0..pool.stamps.len())
                .filter(|&i| {
                    let s = &pool.stamps[i];
                    s.configured_weight > 0 && s.stats.control.admin() == AdminShown::Active
                })
                .collect(),
        };
        return Answer {
            targets: members
                .into_iter()
                .map(|i| target(i, pool.stamps[i].configured_weight, 0))
                .collect(),
            failing_open: true,
            problem: None,
        };
    }
    // The trickled stamps sit in the first tier with a token weight.
    let members = tiers[0].members();
    let targets = match pool.method {
        Method::Priority | Method::Weighted => members
            .filter(|&i| !pool.stamps[i].trickled)
            .map(|i| target(i, pool.stamps[i].effective_weight, 0))
            .collect(),
        Method::Latency => {
            let mut targets: Vec<Target> = members
                .map(|i| {
                    let s = &pool.stamps[i];
                    target(i, s.effective_weight, u8::from(s.trickled))
                })
                .collect();
            targets.sort_by_key(|t| t.group);
            targets
        }
    };
    Answer {
        targets,
        failing_open: false,
        problem: None,
    }
}

/// A stamp's addresses: its IP literal, or the current resolution of its
/// host name (none before the first one).
fn stamp_addresses(
    stamp: &StampView,
    resolve: impl Fn(&str) -> Option<Arc<[IpAddr]>>,
) -> Vec<IpAddr> {
    let host = stamp.authority.host();
    match crate::discovery::parse_ip_literal(host) {
        Some(ip) => vec![ip],
        None => resolve(host).map(|a| a.to_vec()).unwrap_or_default(),
    }
}

/// The live edges that can serve the pool; every live edge when none can
/// (fail-open). An edge without a reported pool list is this edge, judged
/// from the local table: it can serve when the pool has a usable stamp.
fn edges(pool: &PoolView, edges: &[EdgeInfo]) -> Answer {
    let local_ok = pool.has_usable_stamp();
    let serves = |e: &EdgeInfo| match &e.pools {
        None => local_ok,
        Some(pools) => pools.contains(&pool.name),
    };
    let serving: Vec<&EdgeInfo> = edges.iter().filter(|e| serves(e)).collect();
    let failing_open = serving.is_empty();
    let chosen: Vec<&EdgeInfo> = if failing_open {
        edges.iter().collect()
    } else {
        serving
    };
    Answer {
        targets: chosen
            .into_iter()
            .map(|e| Target {
                name: e.name.clone(),
                addresses: e.addresses.clone(),
                weight: 1,
                group: 0,
            })
            .collect(),
        failing_open,
        problem: None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{Config, parse_str};
    use crate::routing::budget::RetryBudget;
    use crate::routing::{RouteShared, RouteStats, StampInput, StampStats};
    use crate::signals::HealthState;
    use crate::upstream::Upstream;
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    /// How a test stamp stands in the controller's view.
    #[derive(Clone, Copy)]
    pub(in crate::dns_server) struct State {
        pub(in crate::dns_server) weight: u32,
        pub(in crate::dns_server) enabled: bool,
        pub(in crate::dns_server) rtt_ms: Option<u64>,
        /// A latency outlier.
        pub(in crate::dns_server) trickle: bool,
    }

    pub(in crate::dns_server) const UP: State = State {
        weight: 100,
        enabled: true,
        rtt_ms: None,
        trickle: false,
    };
    /// A latency outlier: usable, with a trickle.
    const SLOW: State = State {
        trickle: true,
        ..UP
    };
    /// Drained or disabled: no weight, not enabled.
    const DRAINED: State = State {
        weight: 0,
        enabled: false,
        ..UP
    };
    /// Unhealthy or ejected: no weight, still enabled.
    pub(in crate::dns_server) const DOWN: State = State { weight: 0, ..UP };

    fn config(method: &str, all_unhealthy: &str, stamps: &[(&str, &str, u32)]) -> Config {
        let mut t = format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\n\
             [pools.p]\nmethod = \"{method}\"\nall_unhealthy = \"{all_unhealthy}\"\n\
             latency_sensitivity = \"10ms\"\n"
        );
        for (name, address, priority) in stamps {
            t.push_str(&format!(
                "[[pools.p.stamps]]\nname = \"{name}\"\nregion = \"r-{name}\"\naddress = \"{address}\"\npriority = {priority}\n"
            ));
        }
        parse_str(&t, Path::new("t.toml")).unwrap()
    }

    pub(in crate::dns_server) fn table(config: &Config, states: &[State]) -> RoutingTable {
        let upstream = Arc::new(Upstream::new(&config.pools[0], &Default::default()).unwrap());
        let by_name: HashMap<&str, State> = config.pools[0]
            .stamps
            .iter()
            .map(|s| s.name.as_str())
            .zip(states.iter().copied())
            .collect();
        RoutingTable::build(
            config,
            7,
            |_| upstream.clone(),
            |_| RouteShared {
                budget: Arc::new(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
                stats: Arc::new(RouteStats::new(&[])),
            },
            |_, s| {
                let st = by_name[s.name.as_str()];
                let stats = Arc::new(StampStats::default());
                let admin = if st.enabled {
                    AdminShown::Active
                } else {
                    AdminShown::Drained
                };
                stats.control.set_state(HealthState::Healthy, admin);
                StampInput {
                    effective_weight: st.weight,
                    admin_enabled: st.enabled,
                    rtt: st.rtt_ms.map(Duration::from_millis),
                    trickle: st.trickle,
                    stats,
                }
            },
        )
    }

    fn record(answer: DnsAnswerKind) -> DnsRecordConfig {
        DnsRecordConfig {
            name: "catalog".into(),
            fqdn: "catalog.example.com.".into(),
            pool: "p".into(),
            answer,
        }
    }

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    fn stamps_answer(table: &RoutingTable) -> Answer {
        compute(table, &record(DnsAnswerKind::Stamps), &[], |_| None)
    }

    const THREE: [(&str, &str, u32); 3] = [
        ("a", "127.0.0.2:80", 1),
        ("b", "127.0.0.3:80", 1),
        ("c", "127.0.0.4:80", 2),
    ];

    #[test]
    fn priority_answers_the_top_usable_tier_only() {
        let cfg = config("priority", "fail-open", &THREE);
        let answer = stamps_answer(&table(&cfg, &[UP, UP, UP]));
        assert_eq!(answer.addresses(), [ip(2), ip(3)]);
        assert!(!answer.failing_open);
        // One stamp of the top tier ejected: the other one alone.
        let answer = stamps_answer(&table(&cfg, &[DOWN, UP, UP]));
        assert_eq!(answer.addresses(), [ip(3)]);
        // Whole top tier drained: the next tier takes over.
        let answer = stamps_answer(&table(&cfg, &[DRAINED, DOWN, UP]));
        assert_eq!(answer.addresses(), [ip(4)]);
    }

    #[test]
    fn weighted_answers_every_stamp_with_weight_and_leaves_out_drained_and_ejected() {
        let cfg = config("weighted", "fail-open", &THREE);
        let answer = stamps_answer(&table(&cfg, &[UP, DRAINED, DOWN]));
        assert_eq!(answer.addresses(), [ip(2)]);
        let answer = stamps_answer(&table(&cfg, &[UP, UP, UP]));
        assert_eq!(answer.addresses(), [ip(2), ip(3), ip(4)]);
    }

    #[test]
    fn a_latency_outlier_is_left_out_of_priority_and_weighted_answers() {
        let cfg = config("weighted", "fail-open", &THREE);
        let answer = stamps_answer(&table(&cfg, &[UP, SLOW, UP]));
        assert_eq!(answer.addresses(), [ip(2), ip(4)]);
        // A slow primary: its tier partner alone, not the backup tier.
        let cfg = config("priority", "fail-open", &THREE);
        let answer = stamps_answer(&table(&cfg, &[SLOW, UP, UP]));
        assert_eq!(answer.addresses(), [ip(3)]);
        // Latency: kept, after the fast set.
        let cfg = config("latency", "fail-open", &THREE);
        let answer = stamps_answer(&table(&cfg, &[SLOW, UP, UP]));
        assert_eq!(answer.addresses(), [ip(3), ip(4), ip(2)]);
        assert_eq!(answer.targets[2].group, 1);
    }

    #[test]
    fn latency_answers_the_usable_set_fast_stamps_first() {
        let cfg = config("latency", "fail-open", &THREE);
        let slow = State {
            rtt_ms: Some(80),
            ..UP
        };
        let fast = State {
            rtt_ms: Some(5),
            ..UP
        };
        let answer = stamps_answer(&table(&cfg, &[slow, fast, DOWN]));
        assert_eq!(answer.addresses(), [ip(3), ip(2)]);
        assert_eq!(answer.targets[0].group, 0);
        assert_eq!(answer.targets[1].group, 1);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20 {
            assert_eq!(
                answer.ordered(&mut rng)[0],
                ip(3),
                "the fast set comes first"
            );
        }
    }

    #[test]
    fn nothing_usable_fails_open_to_every_enabled_stamp_even_for_a_fail_closed_pool() {
        for all_unhealthy in ["fail-open", "fail-closed"] {
            let cfg = config("weighted", all_unhealthy, &THREE);
            let answer = stamps_answer(&table(&cfg, &[DOWN, DRAINED, DOWN]));
            assert!(answer.failing_open, "{all_unhealthy}");
            assert_eq!(answer.addresses(), [ip(2), ip(4)], "{all_unhealthy}");
        }
        // Recovery: one stamp back, the answer is it alone again.
        let cfg = config("weighted", "fail-closed", &THREE);
        let answer = stamps_answer(&table(&cfg, &[DOWN, DRAINED, UP]));
        assert!(!answer.failing_open);
        assert_eq!(answer.addresses(), [ip(4)]);
    }

    #[test]
    fn a_stamp_given_by_name_answers_with_its_resolved_addresses() {
        let cfg = config(
            "weighted",
            "fail-open",
            &[("a", "eu.stamps.test:443", 1), ("b", "[::1]:443", 1)],
        );
        let t = table(&cfg, &[UP, UP]);
        let resolved: Arc<[IpAddr]> = vec![ip(21), ip(22)].into();
        let answer = compute(&t, &record(DnsAnswerKind::Stamps), &[], |host| {
            (host == "eu.stamps.test").then(|| resolved.clone())
        });
        assert_eq!(answer.addresses(), [ip(21), ip(22), "::1".parse().unwrap()]);
        // Not resolved yet: the stamp adds nothing.
        assert_eq!(
            stamps_answer(&t).addresses(),
            ["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn weighted_order_puts_heavier_stamps_first_more_often() {
        let answer = Answer {
            targets: vec![
                Target {
                    name: "heavy".into(),
                    addresses: vec![ip(2)],
                    weight: 300,
                    group: 0,
                },
                Target {
                    name: "light".into(),
                    addresses: vec![ip(3)],
                    weight: 100,
                    group: 0,
                },
            ],
            failing_open: false,
            problem: None,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let firsts = (0..4000)
            .filter(|_| answer.ordered(&mut rng)[0] == ip(2))
            .count();
        // Expect 3000 (three quarters); a wide band keeps the test stable
        // while still failing for a uniform or fixed order.
        assert!((2700..3300).contains(&firsts), "{firsts}");
        assert_eq!(answer.ordered(&mut rng).len(), 2, "every address, once");
    }

    #[test]
    fn edges_answer_the_live_edges_that_can_serve_the_pool() {
        let cfg = config("weighted", "fail-open", &THREE);
        let edge = |name: &str, last: u8, pools: Option<Vec<&str>>| EdgeInfo {
            name: name.into(),
            addresses: vec![ip(last)],
            pools: pools.map(|p| p.into_iter().map(Arc::from).collect()),
        };
        let edges = [
            edge("local", 10, None),
            edge("serves-p", 11, Some(vec!["p"])),
            edge("serves-other", 12, Some(vec!["other"])),
        ];
        let rec = record(DnsAnswerKind::Edges);
        let healthy = compute(&table(&cfg, &[UP, UP, UP]), &rec, &edges, |_| None);
        assert_eq!(healthy.addresses(), [ip(10), ip(11)]);
        // This edge's pool fails open: it no longer counts as serving.
        let down = table(&cfg, &[DOWN, DOWN, DOWN]);
        assert_eq!(compute(&down, &rec, &edges, |_| None).addresses(), [ip(11)]);
        // No edge can serve: every live edge.
        let answer = compute(&down, &rec, &edges[..1], |_| None);
        assert!(answer.failing_open);
        assert_eq!(answer.addresses(), [ip(10)]);
    }

    #[test]
    fn a_pool_missing_from_the_table_is_an_empty_answer_with_a_reason() {
        let cfg = config("weighted", "fail-open", &THREE);
        let mut rec = record(DnsAnswerKind::Stamps);
        rec.pool = "gone".into();
        let answer = compute(&table(&cfg, &[UP, UP, UP]), &rec, &[], |_| None);
        assert!(answer.targets.is_empty());
        assert!(answer.problem.is_some());
    }
}
