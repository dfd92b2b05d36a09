//! `stampgate drill fleet`: the fleet rehearsal. A real etcd (started
//! here on free loopback ports), three simulated stamps in three regions
//! and three in-process edges, each under its own steady load, through a
//! fixed timeline: a drain made through one edge, etcd killed and
//! restarted, one edge's network path to a stamp cut and healed, an enable
//! made through another edge. The report shows, per edge, its requests,
//! errors and traffic per stamp, and how fast each step reached every
//! edge; the drill fails if any edge answered an error or a step did not
//! reach every edge.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::etcd::{EtcdProcess, find_binary};
use super::{DrillArgs, DrillError, EXIT_FAILED, EXIT_PASSED, EXIT_USAGE};
use crate::app::App;
use crate::signals::{Command, Target};
use crate::stamp::{Stamp, StampOptions};

/// Requests per second on each edge unless `--rate` says otherwise.
const DEFAULT_RATE: u32 = 100;
/// A step that has not reached every edge within this long fails the
/// drill (the target is well under a second).
const STEP_WITHIN: Duration = Duration::from_secs(5);
/// How often the edges' routing tables are looked at while a step spreads.
const STEP_POLL: Duration = Duration::from_millis(1);
const PATH: &str = "/catalogservice/api/1.0/catalogitem?limit=1";
const STAMPS: [(&str, &str); 3] = [
    ("a", "westeurope"),
    ("b", "eastus2"),
    ("c", "southeastasia"),
];
const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];

/// `stampgate drill fleet`.
pub async fn run_cli(args: &DrillArgs) -> ExitCode {
    if args.duration.is_some() || args.scenario.is_some() {
        eprintln!("stampgate drill fleet: its timeline is fixed; only --rate and --out apply");
        return ExitCode::from(EXIT_USAGE);
    }
    let rate = args.rate.unwrap_or(DEFAULT_RATE).clamp(1, 2000);
    match run(rate, &args.out).await {
        Ok((text, passed)) => {
            print!("{text}");
            ExitCode::from(if passed { EXIT_PASSED } else { EXIT_FAILED })
        }
        Err(e) => {
            eprintln!("stampgate drill fleet: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// A TCP relay in front of a stamp for one edge: cutting it refuses new
/// connections and closes live ones, as a broken network path would.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

async fn relay(target: SocketAddr) -> std::io::Result<Relay> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if flag.load(Ordering::Relaxed) {
                continue;
            }
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let watch_cut = async {
                    while !flag.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    () = watch_cut => {}
                }
            });
        }
    });
    Ok(Relay { addr, cut })
}

fn edge_toml(
    name: &str,
    etcd: &str,
    stamps: &[(String, String, SocketAddr)],
    dir: &Path,
) -> String {
    let mut t = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{}\"\n\
         [[routes]]\nname = \"main\"\npath_prefix = \"/\"\npool = \"p\"\n\
         retry = {{ attempts = 3, per_try_timeout = \"400ms\" }}\n\
         [pools.p]\nslow_start = \"0s\"\n\
         [pools.p.probe]\ninterval = \"200ms\"\nunhealthy_interval = \"100ms\"\ntimeout = \"150ms\"\n\
         sample_size = 3\nsuccessful_samples_required = 2\njitter_percent = 0\n\
         [pools.p.health]\nmin_hold = \"200ms\"\n\
         [access_log]\nenabled = false\n\
         [fleet]\nname = \"{name}\"\netcd = [\"{etcd}\"]\nprefix = \"/stampgate/drill\"\nlease_ttl = \"2s\"\n",
        dir.join(format!("{name}.json")).display()
    );
    for (stamp, region, addr) in stamps {
        t.push_str(&format!(
            "[[pools.p.stamps]]\nname = \"{stamp}\"\nregion = \"{region}\"\naddress = \"{addr}\"\n"
        ));
    }
    t
}

/// Per-edge load counters.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Open-loop load at `rate` per second against `addr` until `stop`.
fn load(addr: SocketAddr, rate: u32, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (client, counts) = (client.clone(), counts.clone());
            let uri: http::Uri = format!("http://{addr}{PATH}").parse().expect("uri");
            tokio::spawn(async move {
                let ok = match client.get(uri).await {
                    Ok(r) => {
                        let success = r.status().is_success();
                        success && r.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                let counter = if ok { &counts.ok } else { &counts.errors };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
}

/// Requests each stamp got from `app`, by name.
fn stamp_requests(app: &App) -> Vec<(String, u64)> {
    let table = app.routing.load();
    table.pools[0]
        .stamps
        .iter()
        .map(|s| (s.name.to_string(), s.stats.requests.load(Ordering::Relaxed)))
        .collect()
}

/// Wait until `holds` is true on every edge; the time it took.
async fn spread(edges: &[App], holds: impl Fn(&App) -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < STEP_WITHIN {
        if edges.iter().all(&holds) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(STEP_POLL).await;
    }
    None
}

fn weight_of(app: &App, stamp: &str) -> u32 {
    let table = app.routing.load();
    table.pools[0]
        .stamps
        .iter()
        .find(|s| &*s.name == stamp)
        .map_or(0, |s| s.effective_weight)
}

fn connected(app: &App) -> bool {
    app.fleet.as_ref().is_some_and(|f| f.connected())
}

fn describe(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        None => format!("NOT within {STEP_WITHIN:?}"),
    }
}

async fn run(rate: u32, out: &Path) -> Result<(String, bool), DrillError> {
    let setup = |e: String| DrillError::Setup(e);
    let binary = find_binary().ok_or_else(|| {
        setup("no etcd binary on PATH: the fleet drill runs a real etcd (apt-get install -y etcd-server)".into())
    })?;
    let mut etcd = EtcdProcess::start(&binary).await.map_err(setup)?;
    let dir = tempfile::tempdir().map_err(|e| setup(e.to_string()))?;
    let mut stamps = Vec::new();
    for (name, region) in STAMPS {
        let s = Stamp::start(StampOptions::loopback(name, region))
            .await
            .map_err(|e| setup(format!("stamp {name}: {e}")))?;
        stamps.push(s);
    }
    // edge-1 reaches stamp c through a relay: its path alone can be cut.
    let c_relay = relay(stamps[2].addr())
        .await
        .map_err(|e| setup(e.to_string()))?;
    let mut edges = Vec::new();
    for (i, name) in EDGES.iter().enumerate() {
        let list: Vec<(String, String, SocketAddr)> = stamps
            .iter()
            .map(|s| {
                let addr = if i == 0 && s.name() == "c" {
                    c_relay.addr
                } else {
                    s.addr()
                };
                (s.name().to_owned(), s.region().to_owned(), addr)
            })
            .collect();
        let text = edge_toml(name, &etcd.url(), &list, dir.path());
        let config = crate::config::parse_str(&text, &dir.path().join(format!("{name}.toml")))
            .map_err(|e| setup(e.to_string()))?;
        edges.push(
            App::start(&config, None)
                .await
                .map_err(|e| setup(e.to_string()))?,
        );
    }
    if spread(&edges, connected).await.is_none() {
        return Err(setup("the edges did not connect to etcd".into()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<Counts>> = edges.iter().map(|_| Arc::default()).collect();
    for (app, c) in edges.iter().zip(&counts) {
        load(app.listen[0], rate, c.clone(), stop.clone());
    }
    let t0 = Instant::now();
    let at = |s: u64| tokio::time::sleep_until(t0 + Duration::from_secs(s));
    let mut steps: Vec<(f64, String, bool)> = Vec::new();
    let mut step = |what: String, ok: bool| steps.push((t0.elapsed().as_secs_f64(), what, ok));
    let fleet = |i: usize| edges[i].fleet.clone().expect("edges are in a fleet");

    at(2).await;
    let drained = fleet(0)
        .decide(
            Command::Drain {
                target: Target::Stamp("a".into()),
                deadline: None,
                dry_run: false,
                force: false,
            },
            "drill",
        )
        .await;
    let took = spread(&edges, |e| weight_of(e, "a") == 0).await;
    step(
        format!(
            "drain stamp a through edge-1 ({}): in every edge's table after {}",
            if drained.is_ok() {
                "accepted"
            } else {
                "REFUSED"
            },
            describe(took)
        ),
        drained.is_ok() && took.is_some(),
    );

    at(5).await;
    etcd.kill().await;
    let took = spread(&edges, |e| !connected(e)).await;
    step(
        format!(
            "etcd killed: every edge noticed after {}, serving with its last decisions",
            describe(took)
        ),
        took.is_some(),
    );

    at(7).await;
    c_relay.cut.store(true, Ordering::Relaxed);
    let c_before: Vec<u64> = edges.iter().map(|e| request_count(e, "c")).collect();
    let took = spread(&edges[..1], |e| weight_of(e, "c") == 0).await;
    step(
        format!(
            "edge-1's path to stamp c cut: edge-1 stopped using c after {}",
            describe(took)
        ),
        took.is_some(),
    );

    at(10).await;
    let restarted = etcd.restart().await;
    let took = spread(&edges, connected).await;
    step(
        format!(
            "etcd restarted: every edge back in sync after {}",
            describe(took)
        ),
        restarted.is_ok() && took.is_some(),
    );

    at(12).await;
    let enabled = fleet(1)
        .decide(
            Command::Enable {
                target: Target::Stamp("a".into()),
            },
            "drill",
        )
        .await;
    let took = spread(&edges, |e| weight_of(e, "a") > 0).await;
    step(
        format!(
            "enable stamp a through edge-2 ({}): in every edge's table after {}",
            if enabled.is_ok() {
                "accepted"
            } else {
                "REFUSED"
            },
            describe(took)
        ),
        enabled.is_ok() && took.is_some(),
    );

    at(14).await;
    let c_during: Vec<u64> = edges
        .iter()
        .zip(&c_before)
        .map(|(e, b)| request_count(e, "c") - b)
        .collect();
    let kept = c_during[1] > 0 && c_during[2] > 0;
    step(
        format!(
            "while edge-1's path was cut, stamp c took {} and {} requests from edge-2 and edge-3 (the fault stayed local)",
            c_during[1], c_during[2]
        ),
        kept,
    );
    c_relay.cut.store(false, Ordering::Relaxed);
    let took = spread(&edges[..1], |e| weight_of(e, "c") > 0).await;
    step(
        format!("path healed: edge-1 uses c again after {}", describe(took)),
        took.is_some(),
    );

    at(16).await;
    stop.store(true, Ordering::Relaxed);
    // Requests already sent get their answers.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut text = format!(
        "stampgate drill fleet: 3 edges, a real etcd ({}), {rate} req/s per edge for 16 s\n\ntimeline:\n",
        etcd.url()
    );
    let mut passed = true;
    for (t, what, ok) in &steps {
        passed &= ok;
        text.push_str(&format!(
            "  {t:5.1}s  {}  {what}\n",
            if *ok { "ok  " } else { "FAIL" }
        ));
    }
    text.push_str("\nper edge:\n  EDGE      REQUESTS  ERRORS  TO a    TO b    TO c\n");
    let mut per_edge = Vec::new();
    for ((name, app), c) in EDGES.iter().zip(&edges).zip(&counts) {
        let ok = c.ok.load(Ordering::Relaxed);
        let errors = c.errors.load(Ordering::Relaxed);
        passed &= errors == 0;
        let by_stamp = stamp_requests(app);
        let cell = |n: &str| by_stamp.iter().find(|(s, _)| s == n).map_or(0, |(_, r)| *r);
        text.push_str(&format!(
            "  {name:<8}  {:>8}  {errors:>6}  {:>6}  {:>6}  {:>6}\n",
            ok + errors,
            cell("a"),
            cell("b"),
            cell("c")
        ));
        per_edge.push(json!({ "edge": name, "requests": ok + errors, "errors": errors, "stamps": by_stamp.iter().map(|(s, r)| (s.clone(), json!(r))).collect::<serde_json::Map<String, Value>>() }));
    }
    text.push_str(&format!(
        "\nverdict: {}\n",
        if passed {
            "PASSED (no edge answered an error; every step reached every edge)"
        } else {
            "FAILED"
        }
    ));
    let report = json!({
        "scenario": "fleet",
        "rate_per_edge": rate,
        "passed": passed,
        "steps": steps.iter().map(|(t, what, ok)| json!({ "at_s": t, "what": what, "ok": ok })).collect::<Vec<_>>(),
        "edges": per_edge,
    });
    std::fs::create_dir_all(out).map_err(|source| DrillError::Write {
        path: out.to_owned(),
        source,
    })?;
    let path = out.join("report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("report serializes"),
    )
    .map_err(|source| DrillError::Write {
        path: path.clone(),
        source,
    })?;
    text.push_str(&format!("  report: {}\n", path.display()));
    for app in edges {
        app.shutdown().await;
    }
    Ok((text, passed))
}

fn request_count(app: &App, stamp: &str) -> u64 {
    stamp_requests(app)
        .into_iter()
        .find(|(s, _)| s == stamp)
        .map_or(0, |(_, r)| r)
}
