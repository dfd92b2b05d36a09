//! A fleet of edges acting as one, end to end: a real etcd started by the
//! test, three edges in this process (each an `App` with its own admin API
//! and state file), simulated stamps on port 0. Skips only when etcd is
//! not installed and `CI` is not set.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use stampgate::admin::Tokens;
use stampgate::app::App;
use stampgate::stamp::Stamp;
use support::dns::{self, ips};
use support::etcd::Etcd;
use support::{HttpClient, Setup, admin_call, eventually, get, http1_client, stamp};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "fleet-test-token";
const ITEMS: &str = "/catalogservice/api/1.0/catalogitem?limit=1";

/// One edge under test.
struct Edge {
    name: String,
    app: App,
    admin: SocketAddr,
}

impl Edge {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.listen[0])
    }
    /// The admin state of `stamp` in this edge's status document.
    async fn admin_state(&self, client: &HttpClient, stamp: &str) -> String {
        let status = get(client, &self.admin_url("/admin/status")).await.json();
        status["pools"][0]["stamps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stamp)
            .map(|s| s["admin"].as_str().unwrap().to_owned())
            .unwrap()
    }
    async fn call(&self, client: &HttpClient, path: &str) -> support::Answer {
        admin_call(client, Method::POST, &self.admin_url(path), Some(TOKEN), "").await
    }
    async fn fleet(&self, client: &HttpClient) -> Value {
        get(client, &self.admin_url("/admin/fleet")).await.json()
    }
}

/// Config of edge `name`: stamps by `(name, region, address)`, fast probes,
/// a 2 s lease, its own state file in `dir`.
fn edge_config(
    name: &str,
    etcd: &str,
    stamps: &[(String, String, String)],
    dir: &std::path::Path,
) -> stampgate::config::Config {
    edge_setup(name, etcd, stamps, dir).config()
}

/// [`edge_config`] before parsing; its text ends inside `[fleet]`.
fn edge_setup(
    name: &str,
    etcd: &str,
    stamps: &[(String, String, String)],
    dir: &std::path::Path,
) -> Setup {
    let mut setup = Setup::new()
        .admin(&format!(
            "state_file = \"{}\"",
            dir.join(format!("{name}.json")).display()
        ))
        .route("retry = { attempts = 3, per_try_timeout = \"400ms\" }")
        .pool("slow_start = \"0s\"")
        .extra(&format!(
            "[pools.p.probe]\ninterval = \"200ms\"\nunhealthy_interval = \"100ms\"\ntimeout = \"150ms\"\n\
             sample_size = 3\nsuccessful_samples_required = 2\njitter_percent = 0\n\
             [pools.p.health]\nmin_hold = \"200ms\"\n\
             [fleet]\nname = \"{name}\"\netcd = [\"{etcd}\"]\nprefix = \"/test/fleet\"\nlease_ttl = \"2s\"\n"
        ));
    for (n, r, a) in stamps {
        setup = setup.address(n, r, a);
    }
    setup
}

async fn start_edge(config: &stampgate::config::Config) -> Edge {
    let tokens = Tokens::parse(&format!("alice={TOKEN}")).unwrap();
    let app = App::start(config, Some(tokens)).await.expect("edge starts");
    Edge {
        name: config.fleet.as_ref().unwrap().name.clone(),
        admin: app.admin_addr().unwrap(),
        app,
    }
}

fn addresses(stamps: &[&Stamp]) -> Vec<(String, String, String)> {
    stamps
        .iter()
        .map(|s| (s.name().into(), s.region().into(), s.addr().to_string()))
        .collect()
}

struct Fleet {
    etcd: Etcd,
    dir: tempfile::TempDir,
    stamps: Vec<Stamp>,
    edges: Vec<Edge>,
    client: HttpClient,
}

/// etcd, two stamps (two regions) and three edges, all connected.
async fn fleet() -> Option<Fleet> {
    let etcd = Etcd::start().await?;
    let stamps = vec![stamp("a", "r1").await, stamp("b", "r2").await];
    let dir = tempfile::tempdir().unwrap();
    let list = addresses(&stamps.iter().collect::<Vec<_>>());
    let mut edges = Vec::new();
    for name in ["edge-1", "edge-2", "edge-3"] {
        edges.push(start_edge(&edge_config(name, &etcd.url(), &list, dir.path())).await);
    }
    let client = http1_client();
    let f = Fleet {
        etcd,
        dir,
        stamps,
        edges,
        client,
    };
    f.all_see_edges(3).await;
    Some(f)
}

impl Fleet {
    async fn all_see_edges(&self, n: usize) {
        for e in &self.edges {
            eventually(&format!("{} sees {n} edges", e.name), async || {
                let f = e.fleet(&self.client).await;
                f["connected"] == true && f["edges"].as_array().unwrap().len() == n
            })
            .await;
        }
    }

    async fn all_have(&self, stamp: &str, admin: &str) {
        for e in &self.edges {
            eventually(&format!("{} has {stamp} {admin}", e.name), async || {
                e.admin_state(&self.client, stamp).await == admin
            })
            .await;
        }
    }
}

/// A steady client against an edge: counts answers that are not 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn load(url: String) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let client = http1_client();
        while !s.load(Ordering::Relaxed) {
            let answer = get(&client, &url).await;
            if answer.status == 200 {
                o.fetch_add(1, Ordering::Relaxed);
            } else {
                f.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Load {
        stop,
        ok,
        failed,
        task,
    }
}

impl Load {
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_through_one_edge_reaches_every_edge_without_a_failed_request() {
    let Some(f) = fleet().await else { return };
    let loads: Vec<Load> = f.edges.iter().map(|e| load(e.url(ITEMS))).collect();
    let started = tokio::time::Instant::now();
    let answer = f.edges[0].call(&f.client, "/admin/stamps/a/drain").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["edge"], "edge-1");
    assert!(answer.json()["fleet_revision"].as_i64().unwrap() > 0);
    f.all_have("a", "drained").await;
    let elapsed = started.elapsed();
    // The target is well under a second; loosely asserted on a shared
    // two-core machine (bench/fleet.sh measures it).
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // The remote edges' event logs name where the decision came from.
    let events = get(&f.client, &f.edges[2].admin_url("/admin/events"))
        .await
        .json();
    let remote = events.as_array().unwrap().iter().any(|e| {
        e["stamp"] == "a"
            && e["reason"]
                .as_str()
                .unwrap()
                .contains("by alice on edge edge-1")
    });
    assert!(remote, "{events:#}");
    let answer = f.edges[1].call(&f.client, "/admin/stamps/a/enable").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    f.all_have("a", "active").await;
    for l in loads {
        let (ok, failed) = l.finish().await;
        assert!(ok > 0);
        assert_eq!(failed, 0, "failed requests during the drain ({ok} ok)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_loss_costs_nothing_and_the_fleet_resyncs_when_it_returns() {
    let Some(mut f) = fleet().await else { return };
    let answer = f.edges[0].call(&f.client, "/admin/stamps/a/drain").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    f.all_have("a", "drained").await;
    // edge-1 is restarted below: load on the other two.
    let loads: Vec<Load> = f.edges[1..].iter().map(|e| load(e.url(ITEMS))).collect();
    f.etcd.kill().await;
    for e in &f.edges {
        eventually(&format!("{} notices etcd is gone", e.name), async || {
            e.fleet(&f.client).await["connected"] == false
        })
        .await;
    }
    // A fleet decision cannot be made: 503 with the reason, nothing changes.
    let answer = f.edges[1].call(&f.client, "/admin/stamps/a/enable").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.text().contains("etcd is unreachable"),
        "{}",
        answer.text()
    );
    assert_eq!(f.edges[1].admin_state(&f.client, "a").await, "drained");
    let metrics = get(&f.client, &f.edges[1].admin_url("/metrics"))
        .await
        .text();
    assert!(metrics.contains("stampgate_fleet_connected 0"), "{metrics}");
    // The emergency override works on this edge only and is shown.
    let answer = f.edges[2]
        .call(&f.client, "/admin/stamps/a/enable?local=1")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(f.edges[2].admin_state(&f.client, "a").await, "active");
    assert_eq!(f.edges[1].admin_state(&f.client, "a").await, "drained");
    let status = get(&f.client, &f.edges[2].admin_url("/admin/status"))
        .await
        .json();
    assert_eq!(status["fleet"]["local_overrides"][0], "a", "{status:#}");

    // An edge restarted while etcd is down starts from its state file.
    let old = f.edges.remove(0);
    old.app.shutdown().await;
    let list = addresses(&f.stamps.iter().collect::<Vec<_>>());
    let cfg = edge_config("edge-1", &f.etcd.url(), &list, f.dir.path());
    let restarted = start_edge(&cfg).await;
    assert_eq!(restarted.admin_state(&f.client, "a").await, "drained");
    assert_eq!(get(&f.client, &restarted.url(ITEMS)).await.status, 200);
    f.edges.insert(0, restarted);

    f.etcd.restart().await;
    f.all_see_edges(3).await;
    // Back in sync: a decision made now reaches everyone but the stamp
    // under the local override, until that is cleared.
    let answer = f.edges[1].call(&f.client, "/admin/stamps/a/enable").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    f.all_have("a", "active").await;
    let answer = f.edges[0].call(&f.client, "/admin/stamps/a/drain").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    for e in &f.edges[..2] {
        eventually(&format!("{} drains a", e.name), async || {
            e.admin_state(&f.client, "a").await == "drained"
        })
        .await;
    }
    assert_eq!(f.edges[2].admin_state(&f.client, "a").await, "active");
    let answer = f.edges[2]
        .call(&f.client, "/admin/stamps/a/clear-local")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Draining until its requests in flight under the load end.
    eventually("edge-3 follows the fleet's drain of a", async || {
        f.edges[2].admin_state(&f.client, "a").await == "drained"
    })
    .await;
    for l in loads {
        let (ok, failed) = l.finish().await;
        assert!(ok > 0);
        assert_eq!(failed, 0, "failed requests while etcd was away ({ok} ok)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compacted_revision_is_resynced_with_a_full_read() {
    let Some(f) = fleet().await else { return };
    // edge-3 stops following (as if cut off); decisions pile up and the
    // history is compacted past where it stood.
    let mut etcd = f.etcd.client().await;
    f.edges[2].app.fleet.as_ref().unwrap().halt();
    let answer = f.edges[0].call(&f.client, "/admin/stamps/a/drain").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = f.edges[0].call(&f.client, "/admin/stamps/a/enable").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = f.edges[0].call(&f.client, "/admin/stamps/b/disable").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let head = etcd.get("/test/fleet/ledger", None).await.unwrap();
    etcd.compact(head.header().unwrap().revision(), None)
        .await
        .unwrap();
    // A fresh edge-3 resumes from its state file's revision, which is
    // compacted: it reads everything.
    let list = addresses(&f.stamps.iter().collect::<Vec<_>>());
    eventually("edge-3's lease expires", async || {
        f.edges[0].fleet(&f.client).await["edges"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let Fleet {
        mut edges,
        client,
        dir,
        etcd: server,
        stamps: _stamps,
    } = f;
    edges.pop().unwrap().app.shutdown().await;
    let cfg = edge_config("edge-3", &server.url(), &list, dir.path());
    let edge = start_edge(&cfg).await;
    eventually("edge-3 catches up", async || {
        edge.admin_state(&client, "b").await == "disabled"
    })
    .await;
    assert_eq!(edge.admin_state(&client, "a").await, "active");
    let metrics = get(&client, &edge.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("stampgate_fleet_resyncs_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_edge_leaves_the_fleet_view_when_its_lease_expires() {
    let Some(f) = fleet().await else { return };
    f.edges[2].app.fleet.as_ref().unwrap().halt();
    for e in &f.edges[..2] {
        eventually(&format!("{} drops edge-3", e.name), async || {
            let v = e.fleet(&f.client).await;
            let names: Vec<&str> = v["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .collect();
            names == ["edge-1", "edge-2"]
        })
        .await;
    }
    let v = f.edges[0].fleet(&f.client).await;
    let stamps = &v["edges"][1]["stamps"];
    assert_eq!(stamps["a"]["health"], "healthy", "{v:#}");
    assert!(stamps["a"]["rtt_ms"].is_number(), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_edge_with_the_same_name_refuses_to_start() {
    let Some(f) = fleet().await else { return };
    let list = addresses(&f.stamps.iter().collect::<Vec<_>>());
    let cfg = edge_config("edge-2", &f.etcd.url(), &list, &f.dir.path().join("other"));
    let tokens = Tokens::parse(&format!("alice={TOKEN}")).unwrap();
    let err = App::start(&cfg, Some(tokens))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another live edge is registered as \"edge-2\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_values_under_the_prefix_are_ignored_with_an_alarm() {
    let Some(f) = fleet().await else { return };
    let mut etcd = f.etcd.client().await;
    etcd.put("/test/fleet/decisions/a", "{not json", None)
        .await
        .unwrap();
    etcd.put("/test/fleet/somebody-else", "x", None)
        .await
        .unwrap();
    for e in &f.edges {
        eventually(&format!("{} raises the alarm", e.name), async || {
            let events = get(&f.client, &e.admin_url("/admin/events")).await.json();
            events.as_array().unwrap().iter().any(|e| {
                e["kind"] == "alarm"
                    && e["reason"]
                        .as_str()
                        .unwrap()
                        .contains("/test/fleet/decisions/a: not a stampgate value")
            })
        })
        .await;
        assert_eq!(e.admin_state(&f.client, "a").await, "active");
    }
    // Still working: a real decision goes through.
    let answer = f.edges[0].call(&f.client, "/admin/stamps/a/drain").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    f.all_have("a", "drained").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_decisions_are_ordered_and_the_last_region_guard_holds_fleet_wide() {
    let Some(f) = fleet().await else { return };
    // Two operators at once, on two edges, each draining one of the two
    // regions: one wins, the other is refused on the new state (never both).
    let (x, y) = tokio::join!(
        f.edges[0].call(&f.client, "/admin/regions/r1/drain"),
        f.edges[1].call(&f.client, "/admin/regions/r2/drain"),
    );
    let mut codes = [x.status, y.status];
    codes.sort();
    assert_eq!(codes, [200, 409], "{} / {}", x.text(), y.text());
    // Two weights on one stamp at once: both ordered by etcd, the answers
    // say in which order, and every edge ends on the later one.
    let w = |e: &Edge, n: u32| {
        let url = e.admin_url("/admin/stamps/b/weight");
        let client = f.client.clone();
        async move {
            admin_call(
                &client,
                Method::PUT,
                &url,
                Some(TOKEN),
                &format!("{{\"weight\": {n}}}"),
            )
            .await
        }
    };
    let (x, y) = tokio::join!(w(&f.edges[1], 7), w(&f.edges[2], 9));
    assert!(
        x.status == 200 && y.status == 200,
        "{} / {}",
        x.text(),
        y.text()
    );
    let (rx, ry) = (
        x.json()["fleet_revision"].as_i64().unwrap(),
        y.json()["fleet_revision"].as_i64().unwrap(),
    );
    assert_ne!(rx, ry);
    let last = if rx > ry { 7 } else { 9 };
    for e in &f.edges {
        eventually(&format!("{} ends on weight {last}", e.name), async || {
            let s = get(&f.client, &e.admin_url("/admin/status")).await.json();
            s["pools"][0]["stamps"][1]["weight_override"] == last
        })
        .await;
    }
}

/// A TCP relay to `target` that can cut its path: new connections are
/// refused and live ones closed while cut.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let c = cut.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if c.load(Ordering::Relaxed) {
                continue;
            }
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    () = async { while !c.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                }
            });
        }
    });
    Relay { addr, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_on_one_edges_path_stays_local_and_a_quorum_fault_is_shared() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = stamp("a", "r1").await;
    let b = stamp("b", "r2").await;
    let dir = tempfile::tempdir().unwrap();
    let client = http1_client();
    // edge-1 and edge-2 reach stamp a through relays; edge-3 directly.
    let relays = [relay(a.addr()).await, relay(a.addr()).await];
    let mut edges = Vec::new();
    for (i, name) in ["edge-1", "edge-2", "edge-3"].iter().enumerate() {
        let a_addr = relays.get(i).map_or(a.addr(), |r| r.addr);
        let list = vec![
            ("a".into(), "r1".into(), a_addr.to_string()),
            ("b".into(), "r2".into(), b.addr().to_string()),
        ];
        edges.push(start_edge(&edge_config(name, &etcd.url(), &list, dir.path())).await);
    }
    let health = async |e: &Edge| -> (String, i64) {
        let s = get(&client, &e.admin_url("/admin/status")).await.json();
        let a = &s["pools"][0]["stamps"][0];
        (
            a["health"].as_str().unwrap().to_owned(),
            a["effective_weight"].as_i64().unwrap(),
        )
    };
    for e in &edges {
        eventually(&format!("{} sees 3 edges", e.name), async || {
            e.fleet(&client).await["edges"].as_array().unwrap().len() == 3
        })
        .await;
    }
    // One edge's path cut: it stops using a; the others keep it.
    relays[0].cut.store(true, Ordering::Relaxed);
    eventually("edge-1 sees a down", async || {
        health(&edges[0]).await.0 == "unhealthy"
    })
    .await;
    eventually("edge-3 publishes edge-1's view", async || {
        edges[2].fleet(&client).await["edges"][0]["stamps"]["a"]["health"] == "unhealthy"
    })
    .await;
    // Give the quorum judge a couple of rounds: edge-3 must keep a.
    let s = get(&client, &edges[2].admin_url("/admin/status"))
        .await
        .json();
    assert!(
        s["fleet"]["quorum_down"].as_object().unwrap().is_empty(),
        "{s:#}"
    );
    assert!(health(&edges[2]).await.1 > 0);
    assert!(health(&edges[1]).await.1 > 0);
    // A second edge sees it down: a quorum (2 of 3); edge-3 drops a at
    // once though its own probes still pass.
    relays[1].cut.store(true, Ordering::Relaxed);
    eventually("edge-3 drops a by quorum", async || {
        let (h, w) = health(&edges[2]).await;
        h == "healthy" && w == 0
    })
    .await;
    let s = get(&client, &edges[2].admin_url("/admin/status"))
        .await
        .json();
    assert_eq!(
        s["fleet"]["quorum_down"]["a"],
        serde_json::json!(["edge-1", "edge-2"]),
        "{s:#}"
    );
    // The paths heal: edge-3 takes a back.
    relays[0].cut.store(false, Ordering::Relaxed);
    relays[1].cut.store(false, Ordering::Relaxed);
    eventually("edge-3 uses a again", async || {
        health(&edges[2]).await.1 > 0
    })
    .await;
}

/// `bench/fleet.sh`: 100 decisions through rotating edges; for each, the
/// time from the admin call's answer until every edge's routing table has
/// it (read from the tables themselves, polled every millisecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run by bench/fleet.sh"]
async fn decision_latency_bench() {
    let Some(f) = fleet().await else { return };
    let mut answer_ms = Vec::new();
    let mut applied_ms = Vec::new();
    let mut total_ms = Vec::new();
    for i in 0..100 {
        let drain = i % 2 == 0;
        let path = if drain {
            "/admin/stamps/a/drain"
        } else {
            "/admin/stamps/a/enable"
        };
        let asked = tokio::time::Instant::now();
        let answer = f.edges[i % 3].call(&f.client, path).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let answered = tokio::time::Instant::now();
        loop {
            let done = f.edges.iter().all(|e| {
                let table = e.app.routing.load();
                let a = table.pools[0]
                    .stamps
                    .iter()
                    .find(|s| &*s.name == "a")
                    .unwrap();
                (a.effective_weight == 0) == drain
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        answer_ms.push(answered.duration_since(asked).as_secs_f64() * 1000.0);
        applied_ms.push(answered.elapsed().as_secs_f64() * 1000.0);
        total_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    println!("| measure (ms, 100 decisions, 3 edges) | p50 | p90 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, v) in [
        ("admin call (plan, etcd txn, apply here)", &mut answer_ms),
        ("answer -> in every edge's routing table", &mut applied_ms),
        ("asked -> in every edge's routing table", &mut total_ms),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
}

// ---- DNS answers of kind "edges" -------------------------------------------

const EDGES_RECORD: &str = "edge.example.com.";

/// [`edge_config`] with a DNS server whose record `edge` answers the live
/// edges that can serve pool `p`; this edge advertises 127.0.0.`last`.
fn dns_edge_config(
    name: &str,
    etcd: &str,
    stamps: &[(String, String, String)],
    dir: &std::path::Path,
    last: u8,
) -> stampgate::config::Config {
    edge_setup(name, etcd, stamps, dir)
        .extra(&format!(
            "advertise = [\"127.0.0.{last}\"]\n\
             [dns_server]\nlisten = [\"127.0.0.1:0\"]\nzone = \"example.com.\"\n\
             nameservers = [\"ns1.example.com.\"]\nresponses_per_second = 0\n\
             [[dns_server.records]]\nname = \"edge\"\npool = \"p\"\nanswer = \"edges\"\n"
        ))
        .config()
}

/// etcd, stamps a (r1) and b (r2), and one edge with a DNS server per
/// `(name, last byte of its advertised address)`.
async fn dns_fleet(edges: &[(&str, u8)]) -> Option<(Fleet, Vec<SocketAddr>)> {
    let etcd = Etcd::start().await?;
    let stamps = vec![stamp("a", "r1").await, stamp("b", "r2").await];
    let dir = tempfile::tempdir().unwrap();
    let list = addresses(&stamps.iter().collect::<Vec<_>>());
    let mut started = Vec::new();
    let mut servers = Vec::new();
    for &(name, last) in edges {
        let edge = start_edge(&dns_edge_config(name, &etcd.url(), &list, dir.path(), last)).await;
        servers.push(edge.app.dns.as_ref().unwrap().listen[0]);
        started.push(edge);
    }
    let f = Fleet {
        etcd,
        dir,
        stamps,
        edges: started,
        client: http1_client(),
    };
    Some((f, servers))
}

/// Ask `server` until the `edge` record answers 127.0.0.x for exactly the
/// given x, or fail after [`support::EVENTUALLY`] naming the last answer.
async fn await_edges(server: SocketAddr, lasts: &[u8]) {
    dns::await_a_records(server, EDGES_RECORD, ips(lasts), support::EVENTUALLY).await;
}

/// Drain every stamp of pool `p` on `edge` alone (a local override, forced
/// past the last-region guard): it can serve the pool no more.
async fn drain_locally(edge: &Edge, client: &HttpClient) {
    for region in ["r1", "r2"] {
        let path = format!("/admin/regions/{region}/drain?local=1&force=1");
        let answer = edge.call(client, &path).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_edges_answer_every_live_edge_and_drop_one_that_stops_or_dies() {
    let Some((mut f, dns)) = dns_fleet(&[("edge-1", 2), ("edge-2", 3), ("edge-3", 4)]).await else {
        return;
    };
    await_edges(dns[0], &[2, 3, 4]).await;
    await_edges(dns[2], &[2, 3, 4]).await;
    // What each edge published is shown in /admin/fleet.
    let view = f.edges[0].fleet(&f.client).await;
    assert_eq!(view["edges"][1]["name"], "edge-2", "{view:#}");
    assert_eq!(
        view["edges"][1]["advertise"],
        json!(["127.0.0.3"]),
        "{view:#}"
    );
    assert_eq!(view["edges"][1]["pools"], json!(["p"]), "{view:#}");

    // etcd away: no lease can be seen, the last known peers are kept.
    f.etcd.kill().await;
    eventually("edge-1 notices etcd is gone", async || {
        f.edges[0].fleet(&f.client).await["connected"] == false
    })
    .await;
    assert_eq!(dns::a_records(dns[0], EDGES_RECORD).await, ips(&[2, 3, 4]));
    f.etcd.restart().await;
    f.all_see_edges(3).await;

    // A clean stop revokes edge-2's lease: it leaves at once.
    f.edges.remove(1).app.shutdown().await;
    await_edges(dns[0], &[2, 4]).await;
    // A crash: edge-3 stops renewing and leaves when its lease expires.
    f.edges[1].app.fleet.as_ref().unwrap().halt();
    await_edges(dns[0], &[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_edges_leave_out_an_edge_without_a_usable_stamp_and_fail_open_when_none_has_one() {
    let Some((f, dns)) = dns_fleet(&[("edge-1", 2), ("edge-2", 3)]).await else {
        return;
    };
    await_edges(dns[0], &[2, 3]).await;
    // edge-2 drains its stamps on itself alone: it is out of both edges'
    // answers (its own judges it from its own table).
    drain_locally(&f.edges[1], &f.client).await;
    await_edges(dns[0], &[2]).await;
    await_edges(dns[1], &[2]).await;
    // edge-1 too: no edge can serve the pool, so every live edge is
    // answered (fail-open) and the alarm is raised, as for stamps.
    drain_locally(&f.edges[0], &f.client).await;
    await_edges(dns[0], &[2, 3]).await;
    eventually("edge-1 raises the fail-open alarm", async || {
        let events = get(&f.client, &f.edges[0].admin_url("/admin/events"))
            .await
            .json();
        events.as_array().unwrap().iter().any(|e| {
            let reason = e["reason"].as_str().unwrap();
            e["kind"] == "alarm" && reason.contains(EDGES_RECORD) && reason.contains("fail-open")
        })
    })
    .await;
    // edge-2's stamps back: it alone serves the pool, it alone is answered.
    for stamp in ["a", "b"] {
        let path = format!("/admin/stamps/{stamp}/clear-local");
        let answer = f.edges[1].call(&f.client, &path).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    await_edges(dns[0], &[3]).await;
}
