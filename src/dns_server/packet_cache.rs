//! UDP responses already written, sent again to the same query: the first
//! step of the UDP loop (`super::udp`), before hickory parses anything.
//!
//! Parsing a query, deciding and writing the response is about half of a
//! UDP query's CPU time (the rest is the kernel's); a resolver farm asks
//! the same few questions over and over. So each DNS thread keeps the
//! responses it wrote, keyed by the query's bytes after the ID (flags,
//! question with its exact letter case, EDNS options: everything the
//! response depends on), and answers a repeat by copying the kept bytes
//! and putting in the new ID, as PowerDNS's packet cache does. hickory
//! still wrote every byte that is sent.
//!
//! **Never stale.** A response is kept together with the routing table,
//! the live edges and the resolved stamp names it was decided from, held
//! by `Weak` (which keeps the allocation, so no later value can be given
//! its address, but not the value: an idle thread does not keep an old
//! table's upstream connections alive); every query first checks that the three are still the
//! current ones (three `ArcSwap` loads and pointer compares, the loads the
//! uncached path makes anyway) and drops everything kept when one is not.
//! A change in the routing table is thus in the very next answer, as
//! without the cache. Fail-open answers, which also read the stamps'
//! mirrored admin state, are never kept.
//!
//! **Orders stay drawn by weight.** A response whose addresses are ordered
//! per response is kept once per order it was written in. Each query
//! draws its order afresh, exactly as the uncached path does, and is
//! answered from the cache when a response in that order is kept;
//! otherwise the uncached path writes the response in that same order
//! ([`PacketCache::wanted_order`]) and it is kept. Every order sent is
//! thus one draw by weight, as without the cache. (Letting the uncached
//! path draw again instead would send a rare order only once it had been
//! drawn twice in a row: a 10 % order at 1 % until kept.)
//!
//! **Bounded.** At most [`MAX_QUERIES`] distinct queries per thread (a
//! flood of random names clears the cache and starts it again rather than
//! growing it) and [`MAX_ORDERS`] orders per query, enough for every order
//! of four targets; rarer orders of larger answers go the uncached way.
//!
//! Locking: none. The cache belongs to one UDP loop on one thread.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use crate::discovery::CacheState;
use crate::routing::RoutingTable;

use super::EdgeInfo;
use super::answer::draw_order;
use super::handler::{HEADER_LEN, Handler, Reuse};

/// Distinct queries kept per thread.
pub(super) const MAX_QUERIES: usize = 4096;
/// Orders kept per query: every order of four targets (4! = 24).
pub(super) const MAX_ORDERS: usize = 24;

/// The inputs every kept response was decided from.
struct Inputs {
    table: Weak<RoutingTable>,
    edges: Weak<Vec<EdgeInfo>>,
    names: CacheState,
}

/// One query's kept responses.
struct Kept {
    reuse: Reuse,
    /// One per order of the addresses; a single one under the empty order
    /// when the order is fixed.
    by_order: Vec<Written>,
}

/// A response as written, and the order of its addresses (target indices).
struct Written {
    order: Box<[u16]>,
    bytes: Box<[u8]>,
}

/// The kept responses of one UDP loop.
pub(super) struct PacketCache {
    inputs: Option<Inputs>,
    kept: HashMap<Box<[u8]>, Kept>,
    rng: fastrand::Rng,
    /// The order the last query drew.
    order: Vec<u16>,
    /// Whether the last query's order was drawn but no response in it is
    /// kept, so the uncached path must write it.
    wanted: bool,
}

/// Whether a datagram could be a query with an ID to answer to.
fn key(datagram: &[u8]) -> Option<&[u8]> {
    datagram.get(2..).filter(|_| datagram.len() >= HEADER_LEN)
}

impl PacketCache {
    pub(super) fn new() -> PacketCache {
        PacketCache {
            inputs: None,
            kept: HashMap::new(),
            rng: fastrand::Rng::new(),
            order: Vec::new(),
            wanted: false,
        }
    }

    /// The kept response to `query`, with the query's ID, written into
    /// `out`, and the query counted; `false` (and `out` untouched) when
    /// the query must take the uncached path. Checks first that what the
    /// kept responses were decided from is still current, and drops them
    /// all when not.
    pub(super) fn answer(&mut self, handler: &Handler, query: &[u8], out: &mut Vec<u8>) -> bool {
        self.wanted = false;
        if !self.current(handler) {
            // Taken before the uncached path reads anything, so what it
            // decides is never older than the inputs it is kept under.
            self.kept.clear();
            self.inputs = Some(Inputs {
                table: Arc::downgrade(&handler.routing.load()),
                edges: Arc::downgrade(&handler.edges.load()),
                names: handler.resolved.state(),
            });
            return false;
        }
        let Some(kept) = key(query).and_then(|k| self.kept.get(k)) else {
            return false;
        };
        self.order.clear();
        if !kept.reuse.order.shape.is_empty() {
            self.order = draw_order(&kept.reuse.order.shape, &mut self.rng);
        }
        let Some(written) = kept.by_order.iter().find(|w| *w.order == self.order[..]) else {
            self.wanted = !self.order.is_empty();
            return false;
        };
        out.clear();
        out.extend_from_slice(&written.bytes);
        out[..2].copy_from_slice(&query[..2]);
        handler.count_in(kept.reuse.counter);
        true
    }

    /// The order the last query drew, when [`answer`] found no response
    /// in it: the uncached path writes the response in this order.
    ///
    /// [`answer`]: PacketCache::answer
    pub(super) fn wanted_order(&self) -> Option<&[u16]> {
        self.wanted.then_some(&self.order[..])
    }

    /// Keep `response`, written for `query` by the uncached path as
    /// `reuse` says, under the inputs [`answer`] found current just before
    /// (if they have changed since, the next query's check drops it).
    ///
    /// [`answer`]: PacketCache::answer
    pub(super) fn keep(&mut self, query: &[u8], reuse: Reuse, response: &[u8]) {
        let Some(key) = key(query) else { return };
        if response.len() < 12 || self.inputs.is_none() {
            return;
        }
        if !self.kept.contains_key(key) && self.kept.len() >= MAX_QUERIES {
            self.kept.clear();
        }
        let order: Box<[u16]> = reuse.order.drawn.clone().into();
        let kept = self.kept.entry(key.into()).or_insert_with(|| Kept {
            reuse,
            by_order: Vec::new(),
        });
        if kept.by_order.len() < MAX_ORDERS && kept.by_order.iter().all(|w| w.order != order) {
            kept.by_order.push(Written {
                order,
                bytes: response.into(),
            });
        }
    }

    /// Whether inputs are held and are the current ones.
    fn current(&self, handler: &Handler) -> bool {
        let Some(inputs) = &self.inputs else {
            return false;
        };
        std::ptr::eq(Arc::as_ptr(&handler.routing.load()), inputs.table.as_ptr())
            && std::ptr::eq(Arc::as_ptr(&handler.edges.load()), inputs.edges.as_ptr())
            && handler.resolved.is_at(&inputs.names)
    }

    /// How many distinct queries are kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::discovery::DnsCache;
    use crate::dns_server::LiveEdges;
    use crate::dns_server::answer::tests::{DOWN, State, UP, table};
    use crate::dns_server::handler::Zone;
    use crate::dns_server::udp::uncached;
    use crate::metrics::DnsQueryStats;
    use arc_swap::ArcSwap;
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::{Name, RData, RecordType};
    use hickory_server::proto::serialize::binary::{BinDecodable, BinEncodable};
    use std::net::IpAddr;
    use std::path::Path;

    const CLIENT: &str = "192.0.2.1:5353";

    struct Fixture {
        config: crate::config::Config,
        routing: Arc<ArcSwap<RoutingTable>>,
        handler: Handler,
        cache: PacketCache,
        out: Vec<u8>,
    }

    impl Fixture {
        fn new(states: &[State]) -> Fixture {
            let config = parse_str(
                "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\nmethod = \"weighted\"\n\
                 [[pools.p.stamps]]\nname = \"a\"\nregion = \"ra\"\naddress = \"127.0.0.2:80\"\n\
                 [[pools.p.stamps]]\nname = \"b\"\nregion = \"rb\"\naddress = \"127.0.0.3:80\"\n\
                 [dns_server]\nlisten = [\"127.0.0.1:0\"]\nzone = \"example.com.\"\n\
                 nameservers = [\"ns1.example.com.\"]\n\
                 [[dns_server.records]]\nname = \"catalog\"\npool = \"p\"\n",
                Path::new("t.toml"),
            )
            .unwrap();
            let settings = config.dns_server.clone().unwrap();
            let routing = Arc::new(ArcSwap::from_pointee(table(&config, states)));
            let handler = Handler {
                zone: Zone::new(&settings).unwrap(),
                routing: routing.clone(),
                resolved: DnsCache::new(),
                edges: LiveEdges::local("me", &[]),
                limiter: None,
                stats: Arc::new(DnsQueryStats::new(
                    &["catalog.example.com."],
                    "example.com.",
                )),
            };
            Fixture {
                config,
                routing,
                handler,
                cache: PacketCache::new(),
                out: Vec::new(),
            }
        }

        /// Answer `query` as the UDP loop does; whether it came from the
        /// cache.
        fn ask(&mut self, query: &[u8]) -> bool {
            if self.cache.answer(&self.handler, query, &mut self.out) {
                return true;
            }
            let src = CLIENT.parse().unwrap();
            let order = self.cache.wanted_order();
            let reuse = uncached(
                &self.handler,
                query,
                src,
                Verdict::Answer,
                order,
                &mut self.out,
            );
            if let Some(reuse) = reuse {
                self.cache.keep(query, reuse, &self.out);
            }
            false
        }

        fn response(&self) -> Message {
            Message::from_bytes(&self.out).unwrap()
        }

        fn publish(&self, states: &[State]) {
            self.routing.store(Arc::new(table(&self.config, states)));
        }

        fn queries_counted(&self) -> u64 {
            // catalog (label 0), A (type 0), NOERROR (code 0).
            self.handler.stats.get(0, 0, 0)
        }
    }

    use super::super::rate_limit::Verdict;

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_bytes().unwrap()
    }

    fn first_address(m: &Message) -> IpAddr {
        match m.answers[0].data {
            RData::A(a) => a.0.into(),
            ref other => panic!("not an A record: {other:?}"),
        }
    }

    fn addresses(m: &Message) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = m
            .answers
            .iter()
            .map(|r| match r.data {
                RData::A(a) => a.0.into(),
                ref other => panic!("not an A record: {other:?}"),
            })
            .collect();
        v.sort();
        v
    }

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    #[test]
    fn a_repeat_gets_the_kept_response_with_its_own_id_and_is_counted() {
        let mut f = Fixture::new(&[UP, UP]);
        assert!(
            !f.ask(&query(1, "catalog.example.com.")),
            "the first is written"
        );
        let mut from_cache = 0;
        for id in 2..=40 {
            from_cache += usize::from(f.ask(&query(id, "catalog.example.com.")));
            let m = f.response();
            assert_eq!(m.metadata.id, id);
            assert!(m.metadata.authoritative);
            assert_eq!(addresses(&m), [ip(2), ip(3)]);
        }
        // Two orders to keep; each is written once.
        assert!(from_cache >= 30, "{from_cache} of 39 from the cache");
        assert_eq!(f.queries_counted(), 40, "kept answers count too");
        assert_eq!(f.cache.len(), 1);
    }

    #[test]
    fn the_letter_case_of_the_question_is_its_own_key_and_comes_back() {
        let mut f = Fixture::new(&[UP, UP]);
        for _ in 0..3 {
            f.ask(&query(7, "CaTaLoG.example.com."));
            let m = f.response();
            assert_eq!(m.queries[0].name().to_ascii(), "CaTaLoG.example.com.");
            f.ask(&query(8, "catalog.example.com."));
            assert_eq!(
                f.response().queries[0].name().to_ascii(),
                "catalog.example.com."
            );
        }
        assert_eq!(f.cache.len(), 2);
    }

    #[test]
    fn a_new_routing_table_is_in_the_next_answer() {
        let mut f = Fixture::new(&[UP, UP]);
        for id in 0..10 {
            f.ask(&query(id, "catalog.example.com."));
        }
        f.publish(&[UP, DOWN]);
        assert!(
            !f.ask(&query(11, "catalog.example.com.")),
            "nothing kept is reused"
        );
        assert_eq!(addresses(&f.response()), [ip(2)]);
        assert!(f.ask(&query(12, "catalog.example.com.")), "kept again");
        assert_eq!(addresses(&f.response()), [ip(2)]);
    }

    #[test]
    fn a_change_of_the_live_edges_or_of_a_resolved_name_drops_what_was_kept() {
        let mut f = Fixture::new(&[UP, UP]);
        let q = query(1, "catalog.example.com.");
        let kept = |f: &mut Fixture| (0..10).any(|_| f.ask(&q));
        assert!(kept(&mut f));
        f.handler.edges.set_peers([]);
        assert!(!f.ask(&q), "the edges changed");
        assert!(kept(&mut f));
        f.handler.resolved.set("stamp.example", [ip(9)]);
        assert!(!f.ask(&q), "a resolved name changed");
        assert!(kept(&mut f));
    }

    #[test]
    fn orders_sent_from_the_cache_follow_the_weights() {
        let heavy = State { weight: 900, ..UP };
        let light = State { weight: 100, ..UP };
        let mut f = Fixture::new(&[heavy, light]);
        let (mut heavy_first, mut from_cache) = (0, 0);
        for id in 0..2000 {
            from_cache += usize::from(f.ask(&query(id, "catalog.example.com.")));
            if first_address(&f.response()) == ip(2) {
                heavy_first += 1;
            }
        }
        assert!(from_cache > 1900, "{from_cache} of 2000 from the cache");
        // Expect 1,800 (sd 13); a fixed order gives 0 or 2,000, a
        // uniform one 1,000.
        assert!((1700..1900).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn an_old_table_is_not_kept_alive_by_the_cache() {
        let mut f = Fixture::new(&[UP, UP]);
        f.ask(&query(1, "catalog.example.com."));
        let old = Arc::downgrade(&f.routing.load_full());
        f.publish(&[UP, DOWN]);
        assert_eq!(old.strong_count(), 0, "only the cache could hold it");
        assert!(!f.ask(&query(2, "catalog.example.com.")));
        assert_eq!(addresses(&f.response()), [ip(2)]);
    }

    #[test]
    fn a_rare_order_is_sent_at_its_share_from_the_first_queries() {
        let heavy = State { weight: 900, ..UP };
        let light = State { weight: 100, ..UP };
        // Fresh caches, so every query is among the first few of its cache:
        // the light stamp must be first in 10 % of them (sd 0.7 %), not in
        // the 1 % it got when the uncached path drew a second time.
        let mut light_first = 0;
        for _ in 0..50 {
            let mut f = Fixture::new(&[heavy, light]);
            for id in 0..40 {
                f.ask(&query(id, "catalog.example.com."));
                light_first += usize::from(first_address(&f.response()) == ip(3));
            }
        }
        assert!((140..260).contains(&light_first), "{light_first} of 2,000");
    }

    #[test]
    fn fail_open_answers_are_not_kept() {
        let mut f = Fixture::new(&[DOWN, DOWN]);
        for id in 0..10 {
            assert!(!f.ask(&query(id, "catalog.example.com.")));
            assert_eq!(addresses(&f.response()), [ip(2), ip(3)], "fail-open");
        }
        assert_eq!(f.cache.len(), 0);
    }

    #[test]
    fn distinct_queries_kept_are_bounded() {
        let mut f = Fixture::new(&[UP, UP]);
        for i in 0..MAX_QUERIES + 10 {
            f.ask(&query(1, &format!("n{i}.example.com.")));
            assert!(f.cache.len() <= MAX_QUERIES);
        }
        f.ask(&query(1, "n0.example.com."));
        assert!(
            f.ask(&query(2, "n0.example.com.")),
            "still keeping after a clear"
        );
    }
}
