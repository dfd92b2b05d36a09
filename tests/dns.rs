//! DNS discovery end to end: a hickory authoritative server on
//! `127.0.0.1:0` serves `stamps.test.`; the resolver, the refresh loop and
//! the connector's resolver are checked against it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name as HostName;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stampgate::discovery::{
    CacheResolver, Discovery, DnsCache, DnsReport, DnsSettings, spawn_refresh,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

const ZONE: &str = "stamps.test.";
const SERIAL: u32 = 1;
/// Longer than `MAX_TTL` below, so answers are clamped down to it.
const RECORD_TTL: u32 = 1;
/// Small bounds keep the refresh loop turning several times a second.
const MIN_TTL: Duration = Duration::from_millis(100);
const MAX_TTL: Duration = Duration::from_millis(300);
/// How long a test waits for a report before failing.
const REPORT_WAIT: Duration = Duration::from_secs(10);

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn name(host: &str) -> Name {
    Name::from_ascii(host).unwrap()
}

fn a_record(host: &str, ttl: u32, ip: IpAddr) -> Record {
    let IpAddr::V4(ip) = ip else {
        panic!("A records hold IPv4 addresses");
    };
    Record::from_rdata(name(host), ttl, RData::A(A(ip)))
}

/// The zone: `eu` with one address, `multi` with three, `zero` with a TTL
/// of 0 (below any sane floor).
fn zone() -> InMemoryZoneHandler {
    let origin = name(ZONE);
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        name("ns.stamps.test."),
        name("admin.stamps.test."),
        SERIAL,
        3600,
        600,
        86_400,
        0,
    );
    let records = [
        Record::from_rdata(origin, 3600, RData::SOA(soa)),
        a_record("eu.stamps.test.", RECORD_TTL, v4(10)),
        a_record("multi.stamps.test.", RECORD_TTL, v4(21)),
        a_record("multi.stamps.test.", RECORD_TTL, v4(22)),
        a_record("multi.stamps.test.", RECORD_TTL, v4(23)),
        a_record("zero.stamps.test.", 0, v4(30)),
    ];
    for record in records {
        assert!(zone.upsert_mut(record, SERIAL));
    }
    zone
}

/// An authoritative server for [`ZONE`] on a UDP port of its own.
struct TestDns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    server: Server<Catalog>,
}

impl TestDns {
    async fn start() -> Self {
        let zone = Arc::new(zone());
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::new(&name(ZONE)), vec![handler]);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        Self { addr, zone, server }
    }

    fn settings(&self) -> DnsSettings {
        DnsSettings {
            nameservers: vec![self.addr],
            min_ttl: MIN_TTL,
            max_ttl: MAX_TTL,
            timeout: Duration::from_millis(500),
        }
    }

    fn discovery(&self) -> Arc<Discovery> {
        Arc::new(Discovery::new(self.settings()).unwrap())
    }

    /// Replace the A records of `host` with `ip`, as a zone update would.
    async fn set_a(&self, host: &str, ip: IpAddr) {
        let mut rrset = RecordSet::new(name(host), RecordType::A, SERIAL + 1);
        assert!(rrset.insert(a_record(host, RECORD_TTL, ip), SERIAL + 1));
        let key = RrKey::new(LowerName::new(&name(host)), RecordType::A);
        self.zone.records_mut().await.insert(key, Arc::new(rrset));
    }

    /// Stop answering: the socket closes, queries go unanswered.
    async fn stop(mut self) {
        self.server.shutdown_gracefully().await.unwrap();
    }
}

async fn next_report(reports: &mut mpsc::Receiver<DnsReport>) -> DnsReport {
    tokio::time::timeout(REPORT_WAIT, reports.recv())
        .await
        .expect("no DNS report in time")
        .expect("report channel closed")
}

fn cached(cache: &DnsCache, host: &str) -> Vec<IpAddr> {
    cache.get(host).map(|a| a.to_vec()).unwrap_or_default()
}

/// Call the resolver as `HttpConnector` does: ready, then call.
async fn connector_lookup(resolver: &mut CacheResolver, host: &str) -> Vec<SocketAddr> {
    std::future::poll_fn(|cx| resolver.poll_ready(cx))
        .await
        .unwrap();
    resolver
        .call(HostName::from_str(host).unwrap())
        .await
        .unwrap()
        .collect()
}

#[tokio::test]
async fn resolve_returns_the_addresses_with_a_clamped_ttl() {
    let dns = TestDns::start().await;
    let discovery = dns.discovery();

    let eu = discovery.resolve("eu.stamps.test").await.unwrap();
    assert_eq!(eu.addrs, [v4(10)]);
    assert_eq!(eu.ttl, MAX_TTL, "a 1s TTL is cut to max_ttl");

    let zero = discovery.resolve("zero.stamps.test").await.unwrap();
    assert_eq!(zero.addrs, [v4(30)]);
    assert_eq!(zero.ttl, MIN_TTL, "a 0s TTL is raised to min_ttl");

    let multi = discovery.resolve("multi.stamps.test").await.unwrap();
    let multi: HashSet<IpAddr> = multi.addrs.into_iter().collect();
    assert_eq!(multi, HashSet::from([v4(21), v4(22), v4(23)]));
}

/// The TTL is honoured by the refresh loop alone: no cache inside the
/// resolver may answer in its place, or a `max_ttl` shorter than the record's
/// TTL would be refreshed with stale data.
#[tokio::test]
async fn resolve_always_asks_the_nameserver() {
    let dns = TestDns::start().await;
    let discovery = dns.discovery();
    assert_eq!(
        discovery.resolve("eu.stamps.test").await.unwrap().addrs,
        [v4(10)]
    );
    dns.set_a("eu.stamps.test.", v4(11)).await;
    assert_eq!(
        discovery.resolve("eu.stamps.test").await.unwrap().addrs,
        [v4(11)]
    );
}

#[tokio::test]
async fn resolve_names_the_host_when_it_does_not_exist() {
    let dns = TestDns::start().await;
    let err = dns
        .discovery()
        .resolve("nowhere.stamps.test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nowhere.stamps.test"), "{err}");
}

#[tokio::test]
async fn refresh_follows_a_record_change() {
    let dns = TestDns::start().await;
    let cache = DnsCache::new();
    let (tx, mut reports) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = spawn_refresh(
        dns.discovery(),
        "eu.stamps.test".into(),
        cache.clone(),
        tx,
        cancel.clone(),
    );

    let first = next_report(&mut reports).await;
    assert!(
        matches!(&first, DnsReport::Resolved { addrs, .. } if addrs[..] == [v4(10)]),
        "{first:?}"
    );
    assert_eq!(cached(&cache, "eu.stamps.test"), [v4(10)]);

    dns.set_a("eu.stamps.test.", v4(11)).await;
    // Unchanged refreshes are silent, so the next report is the change.
    let changed = next_report(&mut reports).await;
    match changed {
        DnsReport::Resolved { host, addrs, ttl } => {
            assert_eq!(host, "eu.stamps.test");
            assert_eq!(addrs[..], [v4(11)]);
            assert!(ttl >= MIN_TTL && ttl <= MAX_TTL, "{ttl:?}");
        }
        other => panic!("expected the new address, got {other:?}"),
    }
    assert_eq!(cached(&cache, "eu.stamps.test"), [v4(11)]);

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn resolver_failure_keeps_the_last_answer() {
    let dns = TestDns::start().await;
    let discovery = dns.discovery();
    let cache = DnsCache::new();
    let (tx, mut reports) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = spawn_refresh(
        discovery,
        "multi.stamps.test".into(),
        cache.clone(),
        tx,
        cancel.clone(),
    );
    assert!(matches!(
        next_report(&mut reports).await,
        DnsReport::Resolved { .. }
    ));

    dns.stop().await;
    match next_report(&mut reports).await {
        DnsReport::Failed { host, error, kept } => {
            assert_eq!(host, "multi.stamps.test");
            assert!(error.contains("multi.stamps.test"), "{error}");
            assert_eq!(kept, 3);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(
        cached(&cache, "multi.stamps.test"),
        [v4(21), v4(22), v4(23)],
        "the last good answer stays in use"
    );

    cancel.cancel();
    tokio::time::timeout(REPORT_WAIT, task)
        .await
        .expect("cancel ends the loop, even mid-lookup")
        .unwrap();
}

#[tokio::test]
async fn ip_literals_are_stored_without_dns() {
    let dns = TestDns::start().await;
    let discovery = dns.discovery();
    dns.stop().await;
    let cache = DnsCache::new();
    let (tx, mut reports) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = spawn_refresh(
        discovery,
        "127.0.0.7".into(),
        cache.clone(),
        tx,
        cancel.clone(),
    );
    let report = next_report(&mut reports).await;
    assert!(
        matches!(&report, DnsReport::Resolved { addrs, ttl, .. } if addrs[..] == [v4(7)] && *ttl == MAX_TTL),
        "{report:?}"
    );
    assert_eq!(cached(&cache, "127.0.0.7"), [v4(7)]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn cache_resolver_rotates_across_all_addresses() {
    let dns = TestDns::start().await;
    let answer = dns.discovery().resolve("multi.stamps.test").await.unwrap();
    let cache = DnsCache::new();
    cache.set("multi.stamps.test", answer.addrs);
    let mut resolver = CacheResolver::new(cache);

    let mut firsts = Vec::new();
    for _ in 0..3 {
        let addrs = connector_lookup(&mut resolver, "multi.stamps.test").await;
        assert_eq!(addrs.len(), 3, "every call offers every address");
        assert!(
            addrs.iter().all(|a| a.port() == 0),
            "the connector sets the port"
        );
        firsts.push(addrs[0].ip());
    }
    assert_eq!(firsts, [v4(21), v4(22), v4(23)]);
}

#[tokio::test]
async fn cache_resolver_falls_back_to_getaddrinfo() {
    let mut resolver = CacheResolver::new(DnsCache::new());
    let addrs = connector_lookup(&mut resolver, "localhost").await;
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
}

/// The seam as the proxy uses it: a pooled client over
/// `HttpsConnector<HttpConnector<CacheResolver>>` reaches a server by a
/// name only the cache knows.
#[tokio::test]
async fn pooled_client_dials_a_cached_name() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("eu"))))
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
            .unwrap();
    });

    let cache = DnsCache::new();
    cache.set("eu.stamps.test", [v4(1)]);
    let mut http = HttpConnector::new_with_resolver(CacheResolver::new(cache));
    http.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);

    let uri = format!("http://eu.stamps.test:{port}/").parse().unwrap();
    let response = client.get(uri).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "eu");
}

mod support;

/// The whole path: the proxy's stamp address is a name, the record moves
/// to another loopback address (where a second stamp listens on the same
/// port), and traffic follows; when DNS stops answering, the last answer
/// stays in use and an alarm is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_an_address_change_and_survives_a_dns_outage() {
    use stampgate::stamp::{Stamp, StampOptions};
    let dns = TestDns::start().await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let first = Stamp::start(StampOptions {
        name: "eu-a".into(),
        region: "westeurope".into(),
        listen: SocketAddr::new(v4(10), 0),
        control: any,
    })
    .await
    .unwrap();
    let port = first.addr().port();
    let second = Stamp::start(StampOptions {
        name: "eu-b".into(),
        region: "westeurope".into(),
        listen: SocketAddr::new(v4(11), port),
        control: any,
    })
    .await
    .unwrap();
    let p = support::Setup::new()
        .address("eu", "westeurope", &format!("eu.stamps.test:{port}"))
        .extra(&format!(
            "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"300ms\"\n",
            dns.addr
        ))
        .start()
        .await;
    let c = support::http1_client();
    let url = p.url("/catalogservice/api/1.0/catalogitem?limit=1");
    let served_by = || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            support::get(&c, &url)
                .await
                .header("x-server-name")
                .to_owned()
        }
    };
    support::eventually("served by the first address", async || {
        served_by().await == "eu-a"
    })
    .await;

    dns.set_a("eu.stamps.test.", v4(11)).await;
    support::eventually("the address change is followed", async || {
        served_by().await == "eu-b"
    })
    .await;

    dns.stop().await;
    let events = &p.handle.controller.events;
    support::eventually("an alarm for the DNS outage", async || {
        events.since(0).iter().any(|e| e.reason.contains("failed"))
    })
    .await;
    for _ in 0..10 {
        assert_eq!(served_by().await, "eu-b", "the last answer stays in use");
    }
    drop(first);
    drop(second);
}
