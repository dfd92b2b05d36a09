//! The authoritative DNS server end to end, on loopback: stamps at distinct
//! addresses (127.0.0.2, 127.0.0.3, ...) so that answers tell them apart,
//! queries written and read with hickory-proto over real UDP and TCP
//! sockets. Most tests drive the routing table by hand (one `store` per
//! step, as the controller would publish); the last ones run the real
//! controller with simulated stamps.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use stampgate::config::{self, Config};
use stampgate::controller::events::{EventKind, EventLog};
use stampgate::discovery::DnsCache;
use stampgate::dns_server::{self, DnsServerHandle, EdgeInfo, Inputs, LiveEdges};
use stampgate::metrics::ProxyStats;
use stampgate::routing::budget::RetryBudget;
use stampgate::routing::{RouteShared, RouteStats, RoutingTable, StampInput, StampStats};
use stampgate::signals::command::{Command, Target};
use stampgate::signals::{AdminShown, HealthState};
use stampgate::stamp::{HealthFault, Stamp, StampOptions};
use stampgate::upstream::Upstream;
use support::dns::{self, addresses, ip, ips, query, udp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long any single answer or awaited state may take before the test
/// fails.
const WAIT: Duration = Duration::from_secs(10);
const ZONE: &str = "example.com.";
const CATALOG: &str = "catalog.example.com.";

// ---- a DNS client (hickory-proto messages over tokio sockets) --------------
// `support::dns` has the plain UDP query; TCP, EDNS and raw bytes are here.

fn with_edns(mut m: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    m.set_edns(edns);
    m
}

/// Send raw bytes over UDP and wait up to `wait` for one datagram back.
async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

async fn tcp(server: SocketAddr, m: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = m.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(WAIT, read)
        .await
        .expect("a TCP answer in time");
    Message::from_vec(&buf).unwrap()
}

/// The addresses in answer order.
fn ordered(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

async fn a_records(server: SocketAddr) -> BTreeSet<IpAddr> {
    dns::a_records(server, CATALOG).await
}

fn soa_serial(m: &Message) -> Option<u32> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
}

// ---- a routing table driven by hand --------------------------------------

/// A stamp's state as the controller would publish it.
#[derive(Clone, Copy)]
struct State {
    weight: u32,
    enabled: bool,
    rtt_ms: Option<u64>,
}

const UP: State = State {
    weight: 100,
    enabled: true,
    rtt_ms: None,
};
const DRAINED: State = State {
    weight: 0,
    enabled: false,
    rtt_ms: None,
};
/// Ejected or unhealthy: no weight, still enabled.
const EJECTED: State = State {
    weight: 0,
    enabled: true,
    rtt_ms: None,
};

fn config_text(method: &str, stamps: &[(String, u32)], dns_extra: &str) -> String {
    let mut t = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"r\"\npool = \"backend-apis\"\n\
         [pools.backend-apis]\nmethod = \"{method}\"\nlatency_sensitivity = \"10ms\"\n"
    );
    for (i, (address, priority)) in stamps.iter().enumerate() {
        t.push_str(&format!(
            "[[pools.backend-apis.stamps]]\nname = \"s{i}\"\nregion = \"r{i}\"\naddress = \"{address}\"\npriority = {priority}\n"
        ));
    }
    t.push_str(&format!(
        "[fleet]\nadvertise = [\"127.0.0.9\"]\n\
         [dns_server]\nlisten = [\"127.0.0.1:0\"]\nzone = \"{ZONE}\"\nttl = \"30s\"\n\
         nameservers = [\"ns1.example.com.\", \"ns2.example.com.\"]\nresponses_per_second = 0\n{dns_extra}\n\
         [[dns_server.records]]\nname = \"catalog\"\npool = \"backend-apis\"\n\
         [[dns_server.records]]\nname = \"edge\"\npool = \"backend-apis\"\nanswer = \"edges\"\n\
         [[dns_server.records]]\nname = \"api.eu\"\npool = \"backend-apis\"\n"
    ));
    t
}

/// Stamps at 127.0.0.2, .3, ... with the given priorities.
fn stamps(priorities: &[u32]) -> Vec<(String, u32)> {
    priorities
        .iter()
        .enumerate()
        .map(|(i, &p)| (format!("127.0.0.{}:8080", i + 2), p))
        .collect()
}

fn parse(text: &str) -> Config {
    config::parse_str(text, Path::new("dns-test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn table(config: &Config, generation: u64, states: &[State]) -> RoutingTable {
    let upstream = Arc::new(Upstream::new(&config.pools[0], &DnsCache::new()).unwrap());
    let names: Vec<String> = config.pools[0]
        .stamps
        .iter()
        .map(|s| s.name.clone())
        .collect();
    RoutingTable::build(
        config,
        generation,
        |_| upstream.clone(),
        |_| RouteShared {
            budget: Arc::new(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
            stats: Arc::new(RouteStats::new(&names)),
        },
        |_, s| {
            let i: usize = s.name[1..].parse().unwrap();
            let st = states[i];
            let stats = Arc::new(StampStats::default());
            stats.control.set_state(
                HealthState::Healthy,
                if st.enabled {
                    AdminShown::Active
                } else {
                    AdminShown::Drained
                },
            );
            StampInput {
                effective_weight: st.weight,
                admin_enabled: st.enabled,
                rtt: st.rtt_ms.map(Duration::from_millis),
                trickle: false,
                stats,
            }
        },
    )
}

/// A DNS server over a table the test publishes by hand.
struct Fixture {
    config: Config,
    routing: Arc<ArcSwap<RoutingTable>>,
    generation: u64,
    events: EventLog,
    stats: Arc<ProxyStats>,
    edges: LiveEdges,
    server: DnsServerHandle,
    stop: CancellationToken,
}

impl Fixture {
    async fn start(config: Config, states: &[State]) -> Fixture {
        let routing = Arc::new(ArcSwap::from_pointee(table(&config, 1, states)));
        let events = EventLog::new();
        let stats = Arc::new(ProxyStats::default());
        let edges = LiveEdges::local(
            "this-edge",
            &config
                .fleet
                .as_ref()
                .map(|f| f.advertise.clone())
                .unwrap_or_default(),
        );
        let stop = CancellationToken::new();
        let inputs = Inputs {
            resolved: DnsCache::new(),
            edges: edges.clone(),
            events: events.clone(),
            stats: stats.clone(),
        };
        let settings = config.dns_server.clone().unwrap();
        let server = dns_server::start(&settings, routing.clone(), inputs, stop.clone())
            .await
            .expect("dns server starts");
        Fixture {
            config,
            routing,
            generation: 1,
            events,
            stats,
            edges,
            server,
            stop,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.listen[0]
    }

    /// Publish a new table, as the controller does.
    fn publish(&mut self, states: &[State]) {
        self.generation += 1;
        let t = table(&self.config, self.generation, states);
        self.routing.store(Arc::new(t));
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.server.stopped())
            .await
            .expect("the server stops");
    }
}

// ---- answers per method ---------------------------------------------------

#[tokio::test]
async fn weighted_answers_follow_drain_ejection_fail_open_and_recovery() {
    let config = parse(&config_text("weighted", &stamps(&[1, 1]), ""));
    let mut f = Fixture::start(config, &[UP, UP]).await;
    let mut alarms = f.events.subscribe();
    assert_eq!(a_records(f.addr()).await, ips(&[2, 3]));

    f.publish(&[DRAINED, UP]);
    assert_eq!(
        a_records(f.addr()).await,
        ips(&[3]),
        "drained: out of the next answer"
    );

    f.publish(&[UP, EJECTED]);
    assert_eq!(a_records(f.addr()).await, ips(&[2]), "ejected: out");

    // Nothing usable: every enabled stamp (the drained one stays out), and
    // an alarm.
    f.publish(&[EJECTED, EJECTED]);
    assert_eq!(a_records(f.addr()).await, ips(&[2, 3]), "fail-open");
    let alarm = tokio::time::timeout(WAIT, alarms.recv())
        .await
        .expect("a fail-open alarm")
        .unwrap();
    assert_eq!(alarm.kind, EventKind::Alarm);
    assert!(alarm.reason.contains(CATALOG), "{}", alarm.reason);
    assert!(alarm.reason.contains("fail-open"), "{}", alarm.reason);
    f.publish(&[DRAINED, EJECTED]);
    assert_eq!(
        a_records(f.addr()).await,
        ips(&[3]),
        "fail-open skips drained stamps"
    );

    f.publish(&[UP, UP]);
    assert_eq!(a_records(f.addr()).await, ips(&[2, 3]), "recovered");
    f.stop().await;
}

#[tokio::test]
async fn weighted_answers_are_ordered_by_weight_draw() {
    let config = parse(&config_text("weighted", &stamps(&[1, 1]), ""));
    let heavy = State { weight: 900, ..UP };
    let light = State { weight: 100, ..UP };
    let f = Fixture::start(config, &[heavy, light]).await;
    let mut heavy_first = 0;
    for _ in 0..200 {
        let answer = udp(f.addr(), &query(CATALOG, RecordType::A)).await;
        assert_eq!(addresses(&answer), ips(&[2, 3]), "both, every time");
        if ordered(&answer)[0] == ip(2) {
            heavy_first += 1;
        }
    }
    // Expect 180 of 200; the band fails a fixed or uniform order.
    assert!((150..200).contains(&heavy_first), "{heavy_first}");
    f.stop().await;
}

#[tokio::test]
async fn priority_answers_the_top_usable_tier_and_hands_back_on_recovery() {
    let config = parse(&config_text("priority", &stamps(&[1, 2, 2]), ""));
    let mut f = Fixture::start(config, &[UP, UP, UP]).await;
    assert_eq!(a_records(f.addr()).await, ips(&[2]));
    f.publish(&[EJECTED, UP, UP]);
    assert_eq!(a_records(f.addr()).await, ips(&[3, 4]), "the next tier");
    f.publish(&[EJECTED, DRAINED, UP]);
    assert_eq!(a_records(f.addr()).await, ips(&[4]));
    f.publish(&[UP, UP, UP]);
    assert_eq!(a_records(f.addr()).await, ips(&[2]), "handed back");
    f.stop().await;
}

#[tokio::test]
async fn latency_answers_the_usable_set_with_the_fast_stamps_first() {
    let config = parse(&config_text("latency", &stamps(&[1, 1, 1]), ""));
    let fast = State {
        rtt_ms: Some(5),
        ..UP
    };
    let slow = State {
        rtt_ms: Some(90),
        ..UP
    };
    let mut f = Fixture::start(config, &[slow, fast, EJECTED]).await;
    for _ in 0..20 {
        let answer = udp(f.addr(), &query(CATALOG, RecordType::A)).await;
        assert_eq!(ordered(&answer), [ip(3), ip(2)]);
    }
    f.publish(&[EJECTED, EJECTED, EJECTED]);
    assert_eq!(a_records(f.addr()).await, ips(&[2, 3, 4]), "fail-open");
    f.stop().await;
}

#[tokio::test]
async fn edges_answer_this_edge_until_the_fleet_feeds_others() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let mut f = Fixture::start(config, &[UP]).await;
    let edge = "edge.example.com.";
    let answer = udp(f.addr(), &query(edge, RecordType::A)).await;
    assert_eq!(addresses(&answer), ips(&[9]));
    f.edges.set(vec![
        EdgeInfo {
            name: "edge-a".into(),
            addresses: vec![ip(20)],
            pools: Some(vec!["backend-apis".into()]),
        },
        EdgeInfo {
            name: "edge-b".into(),
            addresses: vec![ip(21)],
            pools: Some(vec![]),
        },
    ]);
    let answer = udp(f.addr(), &query(edge, RecordType::A)).await;
    assert_eq!(
        addresses(&answer),
        ips(&[20]),
        "only edges that can serve the pool"
    );
    f.publish(&[EJECTED]);
    let answer = udp(f.addr(), &query(edge, RecordType::A)).await;
    assert_eq!(
        addresses(&answer),
        ips(&[20]),
        "a remote edge's view is its own"
    );
    f.stop().await;
}

// ---- correct DNS ------------------------------------------------------------

#[tokio::test]
async fn the_apex_has_soa_and_ns_and_the_serial_follows_the_table() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let mut f = Fixture::start(config, &[UP]).await;
    let soa = udp(f.addr(), &query(ZONE, RecordType::SOA)).await;
    assert!(soa.metadata.authoritative);
    assert!(!soa.metadata.recursion_available);
    assert_eq!(soa_serial(&soa), Some(1));
    let ns = udp(f.addr(), &query(ZONE, RecordType::NS)).await;
    let names: Vec<String> = ns
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["ns1.example.com.", "ns2.example.com."]);
    f.publish(&[DRAINED]);
    f.publish(&[UP]);
    let soa = udp(f.addr(), &query(ZONE, RecordType::SOA)).await;
    assert_eq!(soa_serial(&soa), Some(3), "serial = table generation");
    f.stop().await;
}

#[tokio::test]
async fn a_missing_type_is_nodata_with_the_soa_in_authority() {
    let config = parse(&config_text("weighted", &stamps(&[1, 1]), ""));
    let f = Fixture::start(config, &[UP, UP]).await;
    for (name, rtype) in [
        (CATALOG, RecordType::AAAA),
        (CATALOG, RecordType::MX),
        (ZONE, RecordType::A),
        // An empty non-terminal: `eu` exists because `api.eu` does.
        ("eu.example.com.", RecordType::A),
    ] {
        let answer = udp(f.addr(), &query(name, rtype)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name} {rtype}"
        );
        assert!(answer.answers.is_empty(), "{name} {rtype}");
        assert!(answer.metadata.authoritative);
        assert_eq!(
            soa_serial(&answer),
            Some(1),
            "SOA in authority: {name} {rtype}"
        );
        let ttl = answer.authorities[0].ttl;
        assert_eq!(ttl, 30, "negative TTL");
    }
    // The same name over A has data, with the configured TTL.
    let answer = udp(f.addr(), &query("API.EU.example.com.", RecordType::A)).await;
    assert_eq!(
        addresses(&answer),
        ips(&[2, 3]),
        "names are case-insensitive"
    );
    assert!(answer.answers.iter().all(|r| r.ttl == 30));
    f.stop().await;
}

#[tokio::test]
async fn unknown_names_are_nxdomain_and_other_zones_are_refused() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let f = Fixture::start(config, &[UP]).await;
    let answer = udp(f.addr(), &query("nope.example.com.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(answer.metadata.authoritative);
    assert_eq!(soa_serial(&answer), Some(1), "SOA in authority");
    for outside in ["example.org.", "com.", "notexample.com."] {
        let mut q = query(outside, RecordType::A);
        q.metadata.recursion_desired = true;
        let answer = udp(f.addr(), &q).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{outside}"
        );
        assert!(answer.answers.is_empty());
        assert!(!answer.metadata.recursion_available, "no recursion");
    }
    f.stop().await;
}

#[tokio::test]
async fn a_truncated_udp_answer_is_complete_over_tcp_and_with_edns() {
    // 60 stamps fail open: 60 A records, more than 512 bytes.
    let many: Vec<(String, u32)> = (0..60)
        .map(|i| (format!("127.0.1.{}:8080", i + 1), 1))
        .collect();
    let config = parse(&config_text("weighted", &many, ""));
    let f = Fixture::start(config, &vec![EJECTED; 60]).await;
    let plain = udp(f.addr(), &query(CATALOG, RecordType::A)).await;
    assert!(plain.metadata.truncation, "TC bit without EDNS");
    assert!(plain.answers.len() < 60);
    let over_tcp = tcp(f.addr(), &query(CATALOG, RecordType::A)).await;
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(over_tcp.answers.len(), 60);
    let big = udp(f.addr(), &with_edns(query(CATALOG, RecordType::A), 4096)).await;
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 60);
    let edns = big.edns.expect("EDNS answered with EDNS");
    assert_eq!(edns.version(), 0);
    f.stop().await;
}

#[tokio::test]
async fn an_unsupported_edns_version_is_badvers() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let f = Fixture::start(config, &[UP]).await;
    let mut q = with_edns(query(CATALOG, RecordType::A), 1232);
    q.edns.as_mut().unwrap().set_version(1);
    let answer = udp(f.addr(), &q).await;
    // 16 is both BADVERS and BADSIG on the wire; the decoder picks a name.
    assert_eq!(
        u16::from(answer.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    f.stop().await;
}

#[tokio::test]
async fn malformed_packets_are_dropped_or_formerr_and_answering_goes_on() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let f = Fixture::start(config, &[UP]).await;
    // Shorter than a header: nothing to answer to. (Silence can only be
    // awaited with a time limit; the queries below prove the server did
    // not die meanwhile.)
    let silence = Duration::from_millis(300);
    assert_eq!(udp_raw(f.addr(), &[0xde, 0xad, 0xbe], silence).await, None);
    // A response (QR set), well formed or not: answering it would let two
    // servers bounce packets between them forever.
    let mut response = query(CATALOG, RecordType::A);
    response.metadata.message_type = MessageType::Response;
    let response = response.to_vec().unwrap();
    assert_eq!(udp_raw(f.addr(), &response, silence).await, None);
    let broken_response = [0x12, 0x34, 0x81, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    assert_eq!(udp_raw(f.addr(), &broken_response, silence).await, None);
    // A header announcing a question that is not there.
    let header = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let answer = udp_raw(f.addr(), &header, WAIT).await.expect("an answer");
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, 0x1234);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    // A label running past the end.
    let mut broken = header.to_vec();
    broken.extend_from_slice(&[40, b'x', b'y']);
    let answer = udp_raw(f.addr(), &broken, WAIT).await.expect("an answer");
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    // Two questions in one query.
    let mut two = query(CATALOG, RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii(ZONE).unwrap(),
        RecordType::SOA,
    ));
    let answer = udp(f.addr(), &two).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    // Random garbage, many times, then a normal query.
    let mut rng = fastrand::Rng::with_seed(19);
    for _ in 0..200 {
        let len = rng.usize(0..300);
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&junk, f.addr()).await.unwrap();
    }
    assert_eq!(a_records(f.addr()).await, ips(&[2]), "still answering");
    // Over TCP: a length prefix followed by junk, then a hang-up.
    let mut junk = TcpStream::connect(f.addr()).await.unwrap();
    junk.write_all(&[0x00, 0x20, 0xff, 0xfe, 0x01])
        .await
        .unwrap();
    drop(junk);
    let over_tcp = tcp(f.addr(), &query(CATALOG, RecordType::A)).await;
    assert_eq!(addresses(&over_tcp), ips(&[2]), "TCP still answering");
    f.stop().await;
}

/// The server has a thread of its own: it answers while the runtime that
/// started it (the proxy's, in `stampgate run`) cannot run anything. The
/// query below blocks this test's only runtime thread, so on a shared
/// runtime it could never be answered and would time out.
#[tokio::test(flavor = "current_thread")]
async fn answers_come_while_the_starting_runtime_is_blocked() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let f = Fixture::start(config, &[UP]).await;
    let blocking = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    blocking.set_read_timeout(Some(WAIT)).unwrap();
    let question = query(CATALOG, RecordType::A).to_vec().unwrap();
    for _ in 0..3 {
        blocking.send_to(&question, f.addr()).unwrap();
        let mut buf = [0u8; 512];
        let n = blocking.recv(&mut buf).expect("answered on the DNS thread");
        let answer = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(addresses(&answer), ips(&[2]));
    }
    f.stop().await;
}

/// Each listener is served over UDP and TCP on the same port, IPv4 and
/// IPv6 alike.
#[tokio::test]
async fn every_listener_answers_over_udp_and_tcp() {
    let text = config_text("weighted", &stamps(&[1]), "");
    let two = text.replace(
        "[dns_server]\nlisten = [\"127.0.0.1:0\"]",
        "[dns_server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    assert_ne!(text, two, "the fixture's listen line moved");
    let f = Fixture::start(parse(&two), &[UP]).await;
    assert_eq!(f.server.listen.len(), 2);
    for &addr in &f.server.listen {
        let over_udp = udp(addr, &query(CATALOG, RecordType::A)).await;
        assert_eq!(addresses(&over_udp), ips(&[2]), "{addr} over UDP");
        let over_tcp = tcp(addr, &query(CATALOG, RecordType::A)).await;
        assert_eq!(addresses(&over_tcp), ips(&[2]), "{addr} over TCP");
    }
    f.stop().await;
}

/// `threads = 2`: a second thread with its own UDP socket on the same port
/// (SO_REUSEPORT). The kernel spreads clients over the two sockets by
/// address and port, so of 32 clients both sockets get some (all 32 on
/// one has a chance of 2^-31), and every client must be answered.
#[tokio::test]
async fn with_two_threads_both_sockets_answer() {
    let text = config_text("weighted", &stamps(&[1]), "").replace(
        "responses_per_second = 0",
        "responses_per_second = 0\nthreads = 2",
    );
    let f = Fixture::start(parse(&text), &[UP]).await;
    let port = f.addr().port();
    assert_eq!(udp_sockets_on(port), 2, "two UDP sockets on port {port}");
    assert!(
        thread_names().iter().any(|n| n == "stampgate-dns1"),
        "a second DNS thread: {:?}",
        thread_names()
    );
    for _ in 0..32 {
        let answer = udp(f.addr(), &query(CATALOG, RecordType::A)).await;
        assert_eq!(addresses(&answer), ips(&[2]));
    }
    let over_tcp = tcp(f.addr(), &query(CATALOG, RecordType::A)).await;
    assert_eq!(addresses(&over_tcp), ips(&[2]), "TCP on the first thread");
    f.stop().await;
}

/// UDP sockets bound to 127.0.0.1:`port` in this network namespace.
fn udp_sockets_on(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
        .count()
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// A port already taken fails the start (the server binds on its own
/// thread, and the error still reaches the caller), naming the key.
#[tokio::test]
async fn a_taken_port_fails_the_start_with_the_key_and_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = parse(&config_text("weighted", &stamps(&[1]), "").replace(
        "[dns_server]\nlisten = [\"127.0.0.1:0\"]",
        &format!("[dns_server]\nlisten = [\"127.0.0.1:{port}\"]"),
    ));
    let settings = config.dns_server.clone().unwrap();
    let inputs = Inputs {
        resolved: DnsCache::new(),
        edges: LiveEdges::local("this-edge", &[]),
        events: EventLog::new(),
        stats: Arc::new(ProxyStats::default()),
    };
    let routing = Arc::new(ArcSwap::from_pointee(table(&config, 1, &[UP])));
    let error = dns_server::start(&settings, routing, inputs, CancellationToken::new())
        .await
        .expect_err("the port is taken");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "dns_server.listen: cannot listen on 127.0.0.1:{port} (udp)"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn udp_over_the_rate_limit_is_slipped_or_dropped_tcp_is_not_limited() {
    let config = parse(
        &config_text("weighted", &stamps(&[1]), "")
            .replace("responses_per_second = 0", "responses_per_second = 5"),
    );
    let f = Fixture::start(config, &[UP]).await;
    let dns = f.stats.dns_server.load_full().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..20 {
        let q = query(CATALOG, RecordType::A).to_vec().unwrap();
        socket.send_to(&q, f.addr()).await.unwrap();
    }
    // Await the server's verdict on all 20: answered (counted as queries),
    // truncated or dropped (counted by the limit).
    let verdicts = || {
        let answered = dns.get(0, 0, 0);
        let dropped = dns.rate_limited[0].load(std::sync::atomic::Ordering::Relaxed);
        let slipped = dns.rate_limited[1].load(std::sync::atomic::Ordering::Relaxed);
        (answered, slipped, dropped)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while {
        let (a, s, d) = verdicts();
        a + s + d < 20
    } {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", verdicts());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (answered, slipped, dropped) = verdicts();
    // Within one second: 5 answers, then of the 15 over the limit every
    // second one slips (8 sent truncated and empty), the rest (7) are
    // dropped. A burst that happens to straddle a second boundary gets a
    // second budget, so only the exact split is checked for one window.
    assert!((5..20).contains(&answered), "{:?}", verdicts());
    assert!(slipped >= 1 && dropped >= 1, "{:?}", verdicts());
    if answered == 5 {
        assert_eq!((slipped, dropped), (8, 7));
    }
    // What arrives is exactly what the server says it sent.
    let (mut got_answers, mut got_slips) = (0, 0);
    let mut buf = vec![0u8; 4096];
    while got_answers + got_slips < answered + slipped {
        let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
            .await
            .expect("every sent response arrives")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.truncation {
            assert!(m.answers.is_empty());
            got_slips += 1;
        } else {
            assert_eq!(addresses(&m), ips(&[2]));
            got_answers += 1;
        }
    }
    assert_eq!((got_answers, got_slips), (answered, slipped));
    // TCP proves the source address: not limited.
    let answer = tcp(f.addr(), &query(CATALOG, RecordType::A)).await;
    assert_eq!(addresses(&answer), ips(&[2]));
    f.stop().await;
}

#[tokio::test]
async fn queries_are_counted_by_record_type_and_code() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let f = Fixture::start(config, &[UP]).await;
    for _ in 0..3 {
        udp(f.addr(), &query(CATALOG, RecordType::A)).await;
    }
    udp(f.addr(), &query(CATALOG, RecordType::AAAA)).await;
    udp(f.addr(), &query("nope.example.com.", RecordType::A)).await;
    udp(f.addr(), &query("example.org.", RecordType::A)).await;
    // A header announcing a question that is not there.
    let header = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    udp_raw(f.addr(), &header, WAIT).await.expect("FORMERR");
    let registry = stampgate::metrics::registry(f.routing.clone(), f.stats.clone());
    let text = stampgate::metrics::render(&registry);
    for line in [
        "stampgate_dns_queries_total{record=\"catalog.example.com.\",type=\"A\",rcode=\"NOERROR\"} 3",
        "stampgate_dns_queries_total{record=\"catalog.example.com.\",type=\"AAAA\",rcode=\"NOERROR\"} 1",
        "stampgate_dns_queries_total{record=\"-\",type=\"A\",rcode=\"NXDOMAIN\"} 1",
        "stampgate_dns_queries_total{record=\"-\",type=\"A\",rcode=\"REFUSED\"} 1",
        "stampgate_dns_queries_total{record=\"-\",type=\"other\",rcode=\"FORMERR\"} 1",
        "stampgate_dns_failing_open{record=\"catalog.example.com.\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    f.stop().await;
}

// ---- config -----------------------------------------------------------------

#[test]
fn config_errors_name_the_key_and_the_value() {
    let base = config_text("weighted", &stamps(&[1]), "");
    for (from, to, expected) in [
        (
            "pool = \"backend-apis\"\nanswer = \"edges\"",
            "pool = \"nope\"\nanswer = \"edges\"",
            "dns_server.records[1].pool = \"nope\": no such pool (pools: backend-apis)",
        ),
        (
            "advertise = [\"127.0.0.9\"]",
            "advertise = []",
            "dns_server.records[1].answer = \"edges\": needs this edge's addresses",
        ),
        (
            "advertise = [\"127.0.0.9\"]",
            "advertise = [\"edge.example.com\"]",
            "fleet.advertise[0] = \"edge.example.com\": not an IP address",
        ),
        (
            "ttl = \"30s\"",
            "ttl = \"1500ms\"",
            "dns_server.ttl = \"1500ms\": must be a whole number of seconds",
        ),
        (
            "zone = \"example.com.\"",
            "zone = \"exa mple.com.\"",
            "dns_server.zone = \"exa mple.com.\": not a DNS name",
        ),
        (
            "name = \"api.eu\"",
            "name = \"catalog\"",
            "dns_server.records[2].name = \"catalog\": duplicate: dns_server.records[0] already answers for catalog.example.com.",
        ),
        (
            "name = \"api.eu\"",
            "name = \"api.example.org.\"",
            "dns_server.records[2].name = \"api.example.org.\": is outside the zone example.com.",
        ),
        (
            "listen = [\"127.0.0.1:0\"]\nzone",
            "listen = [\"127.0.0.1:9901\"]\nzone",
            "dns_server.listen[0] = \"127.0.0.1:9901\": overlaps admin.listen",
        ),
        (
            "responses_per_second = 0",
            "responses_per_second = 0\nthreads = 0",
            "dns_server.threads = 0: must be between 1 and 64",
        ),
        (
            "responses_per_second = 0",
            "responses_per_second = 0\nthreads = 65",
            "dns_server.threads = 65: must be between 1 and 64",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let text = base.replacen(from, to, 1);
        let text = if to.contains("9901") {
            text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:9901\"")
        } else {
            text
        };
        let err = config::parse_str(&text, Path::new("dns.toml"))
            .expect_err(expected)
            .to_string();
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
}

#[test]
fn check_prints_the_zone_and_which_pool_each_record_follows() {
    let config = parse(&config_text("weighted", &stamps(&[1]), ""));
    let text = config::summary(&config);
    for expected in [
        "dns zone example.com.  (udp+tcp 127.0.0.1:0; ttl 30s; rate limit off; a thread per core (",
        "example.com.  SOA  ns1.example.com. hostmaster.example.com.",
        "example.com.  NS   ns2.example.com.",
        "catalog.example.com.  A/AAAA  follows the usable stamps of pool backend-apis",
        "edge.example.com.  A/AAAA  follows the live edges that can serve pool backend-apis (this edge: 127.0.0.9)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let threads = config_text("weighted", &stamps(&[1]), "").replace(
        "responses_per_second = 0",
        "responses_per_second = 0\nthreads = 4",
    );
    let text = config::summary(&parse(&threads));
    assert!(
        text.contains("(udp+tcp 127.0.0.1:0; ttl 30s; rate limit off; 4 threads)"),
        "{text}"
    );
}

// ---- with the real controller ------------------------------------------------

async fn stamp_at(name: &str, last: u8) -> Stamp {
    let listen: SocketAddr = (ip(last), 0).into();
    Stamp::start(StampOptions {
        name: name.into(),
        region: format!("region-{name}"),
        listen,
        control: "127.0.0.1:0".parse().unwrap(),
    })
    .await
    .expect("stamp starts")
}

/// Ask until the answer is `expected`, or fail after [`WAIT`].
async fn await_answer(server: SocketAddr, expected: BTreeSet<IpAddr>) {
    dns::await_a_records(server, CATALOG, expected, WAIT).await;
}

#[tokio::test]
async fn controller_decisions_reach_the_next_answer_and_the_status() {
    let west = stamp_at("west", 2).await;
    let east = stamp_at("east", 3).await;
    let setup = support::Setup::new()
        .stamp(&west)
        .stamp(&east)
        .pool("method = \"weighted\"")
        .extra(
            "[pools.p.probe]\ninterval = \"100ms\"\nunhealthy_interval = \"50ms\"\ntimeout = \"80ms\"\n\
             sample_size = 2\nsuccessful_samples_required = 2\njitter_percent = 0\n\
             [pools.p.health]\nmin_hold = \"0s\"\n\
             [dns_server]\nlisten = [\"127.0.0.1:0\"]\nzone = \"example.com.\"\n\
             nameservers = [\"ns1.example.com.\"]\n\
             [[dns_server.records]]\nname = \"catalog\"\npool = \"p\"\n",
        );
    let proxy = setup.start().await;
    let controller = proxy.handle.controller.clone();
    let stop = CancellationToken::new();
    let inputs = Inputs {
        resolved: controller.dns.clone(),
        edges: LiveEdges::local(
            "this-edge",
            &proxy
                .config
                .fleet
                .as_ref()
                .map(|f| f.advertise.clone())
                .unwrap_or_default(),
        ),
        events: controller.events.clone(),
        stats: controller.stats.clone(),
    };
    let settings = proxy.config.dns_server.clone().unwrap();
    let dns = dns_server::start(
        &settings,
        proxy.handle.routing.clone(),
        inputs,
        stop.clone(),
    )
    .await
    .unwrap();
    let server = dns.listen[0];
    await_answer(server, ips(&[2, 3])).await;

    // A drain is published before the command returns, and every answer
    // loads the table when its query arrives: the very first query after
    // the publish has it (the target is 100 ms; no clock is checked here,
    // the order of events is the stronger claim and cannot flake).
    let drain = Command::Drain {
        target: Target::Stamp("west".into()),
        deadline: None,
        dry_run: false,
        force: false,
    };
    controller.command(drain, "test").await.unwrap();
    assert_eq!(a_records(server).await, ips(&[3]));

    let admin =
        support::AdminApi::start(controller.clone(), stampgate::admin::Tokens::none()).await;
    let client = support::http1_client();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = support::get(&client, &admin.url("/admin/status"))
            .await
            .json();
        let record = &status["dns_server"]["records"][0];
        if record["addresses"] == serde_json::json!(["127.0.0.3"]) {
            assert_eq!(record["name"], CATALOG);
            assert_eq!(record["pool"], "p");
            let cores = std::thread::available_parallelism().unwrap().get();
            assert_eq!(
                status["dns_server"]["threads"],
                cores.min(64),
                "one per core"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "status: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    controller
        .command(
            Command::Enable {
                target: Target::Stamp("west".into()),
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(a_records(server).await, ips(&[2, 3]));

    // Health: a failing stamp leaves the answer once probes see it, and
    // comes back when it recovers.
    east.set_fault(stampgate::stamp::Fault {
        health: Some(HealthFault::Fail),
        ..Default::default()
    });
    await_answer(server, ips(&[2])).await;
    east.clear_fault();
    await_answer(server, ips(&[2, 3])).await;

    stop.cancel();
    dns.stopped().await;
    proxy.handle.shutdown().await;
}
