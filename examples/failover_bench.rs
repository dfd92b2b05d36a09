//! Failover benchmark: three simulated stamps behind a proxy under test
//! (stampgate in this process, or HAProxy as a child process), a constant
//! open-loop GET load, and one stamp killed in the middle of the run. The
//! report says how long until under 1% of requests still reach the dead
//! stamp, and what the client saw meanwhile. `bench/failover.sh` runs it
//! for both proxies and prints the comparison table.
//!
//! ```text
//! cargo run --release --example failover_bench -- --proxy stampgate|haproxy \
//!     [--rate 1000] [--seconds 10] [--kill-at 3] [--start-jitter-ms 1000] [--json]
//! ```
//!
//! Making the kill observable: a crashed process refuses connections, which
//! leaves no trace of the tries a proxy still sends it. So the kill sets the
//! victim's `down` fault (listener closed, connections dropped) and at once
//! binds a "dead stamp" listener on the same port. It reads each request
//! head, counts it in a 100 ms bucket, and resets the connection without an
//! answer, so every try fails like one at a crashed stamp, and is counted.
//! Health checks (the probe path) are counted apart.
//!
//! Figures:
//! - *time to shift*: from the kill to the start of the first 100 ms bucket
//!   after which tries at the dead stamp stay under 1% of the requests sent
//!   in each bucket until the end of the run (`null` / "never" if they do
//!   not); *last try* is the exact time of the last one;
//! - *errors after kill*: requests scheduled after the kill that got a
//!   non-2xx answer, a transport error or no answer within 5 s;
//! - p50 / p99 / max latency over the whole run, measured from each
//!   request's scheduled time (so a stalled proxy cannot hide its queue);
//! - *load generator lag*: the longest wait between a request's scheduled
//!   time and its task running. The generator shares the process (and, for
//!   stampgate, the runtime) with the proxy; when this is large, the tail
//!   latencies of that moment measure a starved machine, not the proxy.
//!
//! The load starts a random 0–1 s after the proxy is ready, so the kill
//! lands at a random point of the 1 s health-check cycles. `--json` adds
//! the 100 ms series of the whole run.
//!
//! Everything listens on 127.0.0.1. HAProxy is killed by PID when the run
//! ends, and also if the run fails or is interrupted.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use stampgate::app::App;
use stampgate::controller::events::EventKind;
use stampgate::stamp::{Fault, HEALTH_PATH, Stamp, StampOptions};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The request of the load: small and idempotent, so both proxies retry it.
const ITEMS: &str = "/catalogservice/api/1.0/catalogitem?limit=1";

/// The three stamps, `(name, region)`; the first one is killed.
const STAMPS: [(&str, &str); 3] = [
    ("westeurope-1", "westeurope"),
    ("eastus2-1", "eastus2"),
    ("southeastasia-1", "southeastasia"),
];
const VICTIM: usize = 0;

/// Resolution of the series: fine enough to see a sub-second shift, coarse
/// enough that a bucket holds 100 requests at 1,000 req/s (so "under 1%"
/// means "none").
const BUCKET_MS: u64 = 100;

/// The share of a bucket's requests that may still reach the dead stamp
/// for the traffic to count as shifted: the issue's 1%.
const SHIFTED_PERCENT: u64 = 1;

/// A request without a complete answer by then is an error. Longer than
/// either proxy's worst case here (3 tries of at most 1 s each).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the proxy may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between readiness attempts. Another process's listener sends no
/// event when it is up, so readiness is polled.
const READY_POLL: Duration = Duration::from_millis(20);

/// The dead stamp gives a connection this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request head the dead stamp reads before deciding.
const MAX_HEAD: usize = 8 * 1024;

/// Markdown table header matching [`Report::markdown_row`].
const TABLE_HEADER: &str = "| proxy | time to shift (ms) | last try at dead stamp (ms) | errors after kill | tries at dead stamp | p50 (ms) | p99 (ms) | max (ms) | load generator lag, max (ms) | requests sent |\n\
                            | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";

#[derive(Debug, Parser)]
#[command(about = "Kill one of three stamps under a constant GET load and measure the failover")]
struct Args {
    /// The proxy under test.
    #[arg(long, value_enum)]
    proxy: ProxyKind,
    /// Requests per second, sent open-loop: on schedule, whatever the latency.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    /// Length of the load, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    seconds: u32,
    /// Second of the run at which the victim stamp is killed (less than --seconds).
    #[arg(long, default_value_t = 3)]
    kill_at: u32,
    /// The load starts a random 0 to this many milliseconds after the proxy
    /// is ready, so that the kill lands at a random point of the proxies'
    /// 1 s health-check cycle (a fixed phase would always favour one side).
    #[arg(long, default_value_t = 1000)]
    start_jitter_ms: u64,
    /// Print the report as JSON (with the 100 ms series) instead of a table.
    #[arg(long)]
    json: bool,
    /// The HAProxy binary.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProxyKind {
    /// stampgate, started in this process.
    Stampgate,
    /// HAProxy, started as a child process.
    Haproxy,
}

impl ProxyKind {
    fn name(self) -> &'static str {
        match self {
            ProxyKind::Stampgate => "stampgate",
            ProxyKind::Haproxy => "haproxy",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    let outcome = tokio::select! {
        outcome = run(&args) => outcome,
        outcome = interrupted() => outcome,
    };
    match outcome {
        Ok(report) if args.json => match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => return fail(&format!("cannot encode the report: {e}")),
        },
        Ok(report) => println!("{TABLE_HEADER}\n{}", report.markdown_row()),
        Err(e) => return fail(&e.to_string()),
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("failover_bench: {message}");
    ExitCode::FAILURE
}

/// Logs go to stderr, warnings only unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// Completes on SIGINT or SIGTERM, so that `run` is dropped and the
/// HAProxy child (`kill_on_drop`) goes with it.
async fn interrupted() -> Result<Report, BoxError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c?,
    }
    Err("interrupted; proxy and stamps stopped".into())
}

/// One whole run: stamps, proxy, load, kill, report.
async fn run(args: &Args) -> Result<Report, BoxError> {
    if args.kill_at == 0 || args.kill_at >= args.seconds {
        return Err(format!(
            "--kill-at ({}) must be at least 1 and less than --seconds ({})",
            args.kill_at, args.seconds
        )
        .into());
    }
    let stamps = start_stamps().await?;
    let proxy = ProxyUnderTest::start(args, &stamps).await?;
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url: Uri = format!("http://{}{ITEMS}", proxy.addr()).parse()?;
    wait_ready(&client, &url).await?;
    let start_delay = Duration::from_millis(fastrand::u64(0..=args.start_jitter_ms));
    tokio::time::sleep(start_delay).await;

    let start = Instant::now();
    let buckets = bucket_count(args.seconds);
    let dead = Arc::new(DeadCounts::new(start, buckets));
    let served_at_start = served(&stamps);
    let load = tokio::spawn(open_loop(client, url, args.rate, args.seconds, start));

    tokio::time::sleep_until(start + Duration::from_secs(args.kill_at.into())).await;
    let victim_share = share_of_victim(&served_at_start, &served(&stamps));
    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    let dead_stamp = kill(&stamps[VICTIM], dead.clone()).await?;
    let refusing = killed.elapsed();

    let records = load
        .await
        .map_err(|e| format!("the load generator failed: {e}"))?;
    let facts = KillFacts {
        start_delay,
        victim_share,
        refusing,
        proxy_event: proxy.victim_event_after(stamps[VICTIM].name(), killed_wall),
    };
    proxy.stop().await?;
    drop(dead_stamp);
    Ok(Report::new(args, &records, &dead, facts))
}

// ---------------------------------------------------------------- stamps

async fn start_stamps() -> Result<Vec<Stamp>, BoxError> {
    let mut stamps = Vec::with_capacity(STAMPS.len());
    for (name, region) in STAMPS {
        let stamp = Stamp::start(StampOptions::loopback(name, region))
            .await
            .map_err(|e| format!("stamp {name} cannot start: {e}"))?;
        stamps.push(stamp);
    }
    Ok(stamps)
}

/// API requests each stamp has answered so far.
fn served(stamps: &[Stamp]) -> Vec<u64> {
    stamps.iter().map(Stamp::requests_served).collect()
}

/// The victim's share of the requests answered between two snapshots: a
/// check that the proxy really spread the load before the kill.
fn share_of_victim(before: &[u64], after: &[u64]) -> f64 {
    let deltas: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total: u64 = deltas.iter().sum();
    if total == 0 {
        return 0.0;
    }
    deltas[VICTIM] as f64 / total as f64
}

/// Kills `victim` as a crash would, but observably: `down` closes its
/// listener and drops its connections, then a dead stamp takes the port.
async fn kill(victim: &Stamp, counts: Arc<DeadCounts>) -> Result<DeadStamp, BoxError> {
    victim.set_fault(Fault {
        down: Some(true),
        ..Fault::default()
    });
    victim.settled().await;
    let addr = victim.addr();
    DeadStamp::bind(addr, counts)
        .map_err(|e| format!("cannot bind the dead stamp on {addr}: {e}").into())
}

// ------------------------------------------------------------ dead stamp

/// What reached the dead stamp. Written by its connection tasks, read once
/// the run is over; atomics only.
#[derive(Debug)]
struct DeadCounts {
    /// Request heads other than health checks, by arrival bucket.
    tries: Buckets,
    /// Health-check request heads.
    probes: AtomicU64,
    /// Accepted connections.
    connections: AtomicU64,
}

impl DeadCounts {
    fn new(start: Instant, buckets: usize) -> DeadCounts {
        DeadCounts {
            tries: Buckets::new(start, buckets),
            probes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }
}

/// The listener that stands in for the crashed stamp. Dropping it closes
/// the listener and resets every connection it still holds.
struct DeadStamp {
    task: tokio::task::JoinHandle<()>,
}

impl DeadStamp {
    /// Binds `addr` with `SO_REUSEADDR` (the victim's dropped connections
    /// may sit in `TIME_WAIT`) and starts answering nothing.
    fn bind(addr: SocketAddr, counts: Arc<DeadCounts>) -> io::Result<DeadStamp> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        Ok(DeadStamp {
            task: tokio::spawn(swallow_all(listener, counts)),
        })
    }
}

impl Drop for DeadStamp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; the `JoinSet` owns them, so the
/// abort drops them too.
async fn swallow_all(listener: TcpListener, counts: Arc<DeadCounts>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(swallow(stream, counts.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "dead stamp: accept failed"),
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Reads one request head, counts it, and resets the connection.
async fn swallow(mut stream: TcpStream, counts: Arc<DeadCounts>) {
    match read_request_target(&mut stream).await {
        Some(target) if target.starts_with(HEALTH_PATH) => {
            counts.probes.fetch_add(1, Ordering::Relaxed);
        }
        Some(_) => counts.tries.add(Instant::now()),
        None => {}
    }
    // RST instead of FIN: the peer sees a crash, not a polite close.
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "dead stamp: cannot set SO_LINGER 0");
    }
}

/// The request target of the head that arrives on `stream`, or `None` if
/// the peer sends no request line in time.
async fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // A timeout is fine: whatever arrived by then is judged below.
    let _ = tokio::time::timeout(HEAD_TIMEOUT, read).await;
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    line.split_whitespace().nth(1).map(str::to_owned)
}

// --------------------------------------------------------------- buckets

/// Counts per [`BUCKET_MS`] of the run, from the load's start. Lock-free;
/// anything after the last bucket is counted in it.
#[derive(Debug)]
struct Buckets {
    start: Instant,
    counts: Vec<AtomicU64>,
    /// Nanoseconds from `start` to the latest count, plus one (0: none).
    latest: AtomicU64,
}

impl Buckets {
    fn new(start: Instant, len: usize) -> Buckets {
        Buckets {
            start,
            counts: (0..len.max(1)).map(|_| AtomicU64::new(0)).collect(),
            latest: AtomicU64::new(0),
        }
    }

    fn add(&self, at: Instant) {
        let offset = at.saturating_duration_since(self.start);
        let i = bucket_of(offset).min(self.counts.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX - 1);
        self.latest.fetch_max(nanos + 1, Ordering::Relaxed);
    }

    /// When the latest count was made, from `start`.
    fn latest(&self) -> Option<Duration> {
        match self.latest.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    fn snapshot(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

fn bucket_count(seconds: u32) -> usize {
    usize::try_from(u64::from(seconds) * 1000 / BUCKET_MS).unwrap_or(usize::MAX)
}

fn bucket_of(offset: Duration) -> usize {
    usize::try_from(offset.as_millis() / u128::from(BUCKET_MS)).unwrap_or(usize::MAX)
}

// ------------------------------------------------------------------ load

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer, body read to the end.
    Ok,
    /// Another status; stampgate names its cause in `x-stampgate-error`.
    Status(u16, Option<String>),
    /// The connection failed or the body broke off.
    Transport,
    /// No complete answer within [`REQUEST_TIMEOUT`].
    Timeout,
}

impl Outcome {
    fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(code, Some(cause)) => format!("{code} {cause}"),
            Outcome::Status(code, None) => code.to_string(),
            Outcome::Transport => "transport error".into(),
            Outcome::Timeout => "timeout".into(),
        }
    }
}

/// One request of the load.
#[derive(Debug)]
struct Record {
    /// When it was scheduled, from the load's start.
    scheduled: Duration,
    /// From the scheduled time to the end of the answer (or the failure).
    latency: Duration,
    /// From the scheduled time until the request's task ran: the load
    /// generator's own lag (a starved process), not the proxy's.
    send_lag: Duration,
    outcome: Outcome,
}

/// Sends `rate × seconds` GETs, request `i` at `start + i / rate`, each in
/// its own task over the client's keep-alive pool, whatever the answers
/// take. Every request ends within [`REQUEST_TIMEOUT`], so the whole load
/// ends within `seconds` plus that.
async fn open_loop(
    client: HttpClient,
    url: Uri,
    rate: u32,
    seconds: u32,
    start: Instant,
) -> Vec<Record> {
    let total = u64::from(rate) * u64::from(seconds);
    let mut requests = JoinSet::new();
    for i in 0..total {
        let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / u64::from(rate));
        tokio::time::sleep_until(scheduled).await;
        requests.spawn(timed_request(client.clone(), url.clone(), start, scheduled));
    }
    let mut records = Vec::with_capacity(requests.len());
    while let Some(done) = requests.join_next().await {
        match done {
            Ok(record) => records.push(record),
            Err(e) => tracing::error!(error = %e, "a request task failed"),
        }
    }
    records.sort_by_key(|r| r.scheduled);
    records
}

async fn timed_request(client: HttpClient, url: Uri, start: Instant, scheduled: Instant) -> Record {
    let send_lag = scheduled.elapsed();
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, get(&client, url))
        .await
        .unwrap_or(Outcome::Timeout);
    Record {
        scheduled: scheduled - start,
        latency: scheduled.elapsed(),
        send_lag,
        outcome,
    }
}

/// One GET, its body read to the end.
async fn get(client: &HttpClient, url: Uri) -> Outcome {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = url;
    let Ok(response) = client.request(request).await else {
        return Outcome::Transport;
    };
    let status = response.status();
    let cause = response
        .headers()
        .get("x-stampgate-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match response.into_body().collect().await {
        Err(_) => Outcome::Transport,
        Ok(_) if status.is_success() => Outcome::Ok,
        Ok(_) => Outcome::Status(status.as_u16(), cause),
    }
}

/// Waits until the proxy answers a GET with 2xx.
async fn wait_ready(client: &HttpClient, url: &Uri) -> Result<(), BoxError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = get(client, url.clone()).await;
        if last == Outcome::Ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let last = last.label();
            return Err(format!(
                "the proxy did not answer {url} within {READY_TIMEOUT:?} (last: {last})"
            )
            .into());
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

// ----------------------------------------------------------------- proxies

/// The proxy in front of the stamps.
enum ProxyUnderTest {
    Stampgate(App),
    Haproxy(Haproxy),
}

impl ProxyUnderTest {
    async fn start(args: &Args, stamps: &[Stamp]) -> Result<ProxyUnderTest, BoxError> {
        match args.proxy {
            ProxyKind::Stampgate => {
                let toml = stampgate_config(stamps);
                let config = stampgate::config::parse_str(&toml, Path::new("failover_bench.toml"))
                    .map_err(|e| format!("generated stampgate config: {e}\n{toml}"))?;
                let handle = App::start(&config, None)
                    .await
                    .map_err(|e| format!("stampgate cannot start: {e}"))?;
                Ok(ProxyUnderTest::Stampgate(handle))
            }
            ProxyKind::Haproxy => Ok(ProxyUnderTest::Haproxy(
                Haproxy::start(&args.haproxy, stamps).await?,
            )),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            ProxyUnderTest::Stampgate(handle) => handle.listen[0],
            ProxyUnderTest::Haproxy(haproxy) => haproxy.addr,
        }
    }

    /// What the proxy said about the victim after the kill: stampgate's
    /// first health event for it (with its delay), or HAProxy's first
    /// "is DOWN" line (its stderr log carries no time).
    fn victim_event_after(&self, victim: &str, killed: SystemTime) -> Option<String> {
        match self {
            ProxyUnderTest::Stampgate(handle) => stampgate_event(handle, victim, killed),
            ProxyUnderTest::Haproxy(haproxy) => {
                let marker = format!("/{victim} is DOWN");
                let log = haproxy.log();
                let line = log.lines().find(|l| l.contains(&marker))?;
                let message = line.split_once(" : ").map_or(line, |(_, m)| m);
                Some(message.trim().to_owned())
            }
        }
    }

    async fn stop(self) -> Result<(), BoxError> {
        match self {
            ProxyUnderTest::Stampgate(handle) => {
                handle.shutdown().await;
                Ok(())
            }
            ProxyUnderTest::Haproxy(haproxy) => haproxy.stop().await,
        }
    }
}

/// stampgate's first health event for `victim` at or after `killed`.
fn stampgate_event(handle: &App, victim: &str, killed: SystemTime) -> Option<String> {
    let killed_ms = killed.duration_since(UNIX_EPOCH).ok()?.as_millis();
    let event = handle.controller.events.since(0).into_iter().find(|e| {
        e.kind == EventKind::Health
            && e.stamp.as_deref() == Some(victim)
            && u128::from(e.unix_ms) >= killed_ms
    })?;
    let after = u128::from(event.unix_ms) - killed_ms;
    let to = event.to.unwrap_or_default();
    Some(format!("+{after} ms: {to} ({})", event.reason))
}

/// stampgate with the shipped probe defaults spelled out, one route `/` to
/// a weighted pool, 5 consecutive failures to eject, 3 tries of 1 s.
fn stampgate_config(stamps: &[Stamp]) -> String {
    let mut toml = String::from(
        r#"[proxy]
listen = ["127.0.0.1:0"]

[access_log]
enabled = false

[admin]
listen = "127.0.0.1:0"

[[routes]]
name = "catalog"
path_prefix = "/"
pool = "catalog"
retry = { attempts = 3, per_try_timeout = "1s" }

[pools.catalog]
method = "weighted"

[pools.catalog.probe]
interval = "1s"
timeout = "500ms"
sample_size = 4
successful_samples_required = 3

[pools.catalog.outlier]
consecutive_failures = 5
"#,
    );
    for stamp in stamps {
        toml.push_str(&format!(
            "\n[[pools.catalog.stamps]]\nname = \"{}\"\nregion = \"{}\"\naddress = \"{}\"\n",
            stamp.name(),
            stamp.region(),
            stamp.addr()
        ));
    }
    toml
}

/// HAProxy as a child process, with its config and log in a temp dir.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Haproxy {
    async fn start(binary: &Path, stamps: &[Stamp]) -> Result<Haproxy, BoxError> {
        let addr = free_port()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(addr, stamps))?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut haproxy = Haproxy { child, addr, dir };
        haproxy.wait_listening().await?;
        Ok(haproxy)
    }

    async fn wait_listening(&mut self) -> Result<(), BoxError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log();
                return Err(format!("haproxy exited ({status}) before listening:\n{log}").into());
            }
            if TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.log();
                return Err(format!(
                    "haproxy is not listening on {} after {READY_TIMEOUT:?}:\n{log}",
                    self.addr
                )
                .into());
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// SIGKILL by PID, then reap it.
    async fn stop(mut self) -> Result<(), BoxError> {
        let pid = self.child.id();
        self.child
            .kill()
            .await
            .map_err(|e| format!("cannot kill haproxy (pid {pid:?}): {e}").into())
    }
}

/// A free loopback port: bind port 0, read the port, release it.
fn free_port() -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
}

/// HAProxy's nearest equivalent of the stampgate config: active checks every
/// second (down after 2 failures), passive mark-down after 5 consecutive
/// errors, 3 tries (`retries 2`) with redispatch, keep-alive to servers.
fn haproxy_config(addr: SocketAddr, stamps: &[Stamp]) -> String {
    let mut cfg = format!(
        "global
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    # Per try, like stampgate's per_try_timeout.
    timeout server 1s
    timeout client 30s
    timeout check 500ms
    retries 2
    option redispatch
    retry-on all-retryable-errors
    http-reuse always

frontend bench
    bind {addr}
    default_backend stamps

backend stamps
    balance roundrobin
    option httpchk GET {HEALTH_PATH}
    default-server check inter 1s fall 2 rise 2 observe layer7 error-limit 5 on-error mark-down
"
    );
    for stamp in stamps {
        cfg.push_str(&format!("    server {} {}\n", stamp.name(), stamp.addr()));
    }
    cfg
}

// ----------------------------------------------------------------- report

/// What was learnt at the kill, beyond the counters.
#[derive(Debug)]
struct KillFacts {
    /// The random wait between the proxy being ready and the load.
    start_delay: Duration,
    /// The victim's share of the requests answered before the kill.
    victim_share: f64,
    /// From setting `down` until the dead stamp listened: tries in this
    /// window were refused and are not counted.
    refusing: Duration,
    /// What the proxy said about the victim after the kill.
    proxy_event: Option<String>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    proxy: &'static str,
    rate: u32,
    seconds: u32,
    kill_at_s: u32,
    /// The random wait between the proxy being ready and the load.
    start_delay_ms: f64,
    sent: usize,
    /// From the kill to the start of the first bucket after which tries at
    /// the dead stamp stay under 1%; `None` if they never do.
    shift_ms: Option<u64>,
    errors_after_kill: usize,
    errors_before_kill: usize,
    /// Failed requests by kind (status and stampgate's cause, transport, timeout).
    error_kinds: BTreeMap<String, usize>,
    /// Request heads (not health checks) that reached the dead stamp.
    dead_stamp_tries: u64,
    /// From the kill to the last of those tries.
    last_try_ms: Option<f64>,
    /// From the kill until the dead stamp listened (tries then uncounted).
    refusing_ms: f64,
    dead_stamp_probes: u64,
    dead_stamp_connections: u64,
    /// The victim's share of the requests answered before the kill.
    victim_share_before_kill: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The load generator's longest lag: when large, latencies of that
    /// time say more about the machine than about the proxy.
    max_send_lag_ms: f64,
    /// What the proxy said about the victim after the kill.
    proxy_event: Option<String>,
    /// 100 ms buckets of the whole run.
    series: Vec<BucketRow>,
}

/// One 100 ms bucket of the series.
#[derive(Debug, Serialize)]
struct BucketRow {
    /// Start of the bucket, relative to the kill.
    t_ms: i64,
    requests: u64,
    dead_stamp_tries: u64,
    errors: u64,
    /// The slowest request scheduled in the bucket.
    max_ms: f64,
    /// The longest send lag in the bucket (see [`Record::send_lag`]).
    max_send_lag_ms: f64,
}

impl Report {
    fn new(args: &Args, records: &[Record], dead: &DeadCounts, kill_facts: KillFacts) -> Report {
        let kill = Duration::from_secs(args.kill_at.into());
        let series = series(records, dead, bucket_count(args.seconds), bucket_of(kill));
        let after_kill: Vec<&BucketRow> = series.iter().filter(|b| b.t_ms >= 0).collect();
        let failed = || records.iter().filter(|r| r.outcome != Outcome::Ok);
        let mut error_kinds = BTreeMap::new();
        for r in failed() {
            *error_kinds.entry(r.outcome.label()).or_insert(0) += 1;
        }
        let mut latencies: Vec<Duration> = records.iter().map(|r| r.latency).collect();
        latencies.sort_unstable();
        Report {
            proxy: args.proxy.name(),
            rate: args.rate,
            seconds: args.seconds,
            kill_at_s: args.kill_at,
            start_delay_ms: millis(kill_facts.start_delay),
            sent: records.len(),
            shift_ms: time_to_shift(&after_kill),
            errors_after_kill: failed().filter(|r| r.scheduled >= kill).count(),
            errors_before_kill: failed().filter(|r| r.scheduled < kill).count(),
            error_kinds,
            dead_stamp_tries: dead.tries.snapshot().iter().sum(),
            last_try_ms: dead.tries.latest().map(|t| millis(t.saturating_sub(kill))),
            refusing_ms: millis(kill_facts.refusing),
            dead_stamp_probes: dead.probes.load(Ordering::Relaxed),
            dead_stamp_connections: dead.connections.load(Ordering::Relaxed),
            victim_share_before_kill: kill_facts.victim_share,
            p50_ms: percentile_ms(&latencies, 50.0),
            p99_ms: percentile_ms(&latencies, 99.0),
            max_ms: percentile_ms(&latencies, 100.0),
            max_send_lag_ms: records
                .iter()
                .map(|r| millis(r.send_lag))
                .fold(0.0, f64::max),
            proxy_event: kill_facts.proxy_event,
            series,
        }
    }

    fn markdown_row(&self) -> String {
        let shift = self
            .shift_ms
            .map_or_else(|| "never".to_owned(), |ms| ms.to_string());
        let last_try = self
            .last_try_ms
            .map_or_else(|| "none".to_owned(), |ms| format!("{ms:.0}"));
        format!(
            "| {} | {shift} | {last_try} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            self.proxy,
            self.errors_after_kill,
            self.dead_stamp_tries,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.max_send_lag_ms,
            self.sent
        )
    }
}

/// Requests, errors, the slowest request (by scheduled time) and
/// dead-stamp tries (by arrival) per bucket of the whole run.
fn series(records: &[Record], dead: &DeadCounts, len: usize, kill: usize) -> Vec<BucketRow> {
    let mut requests = vec![0u64; len];
    let mut errors = vec![0u64; len];
    let mut slowest = vec![Duration::ZERO; len];
    let mut lag = vec![Duration::ZERO; len];
    for r in records {
        let i = bucket_of(r.scheduled).min(len - 1);
        requests[i] += 1;
        if r.outcome != Outcome::Ok {
            errors[i] += 1;
        }
        slowest[i] = slowest[i].max(r.latency);
        lag[i] = lag[i].max(r.send_lag);
    }
    let tries = dead.tries.snapshot();
    (0..len)
        .map(|i| BucketRow {
            t_ms: (i as i64 - kill as i64) * BUCKET_MS as i64,
            requests: requests[i],
            dead_stamp_tries: tries[i],
            errors: errors[i],
            max_ms: millis(slowest[i]),
            max_send_lag_ms: millis(lag[i]),
        })
        .collect()
}

/// The start (relative to the kill) of the first bucket from which every
/// bucket to the end has tries at the dead stamp under 1% of its requests;
/// `None` if even the last bucket is over.
fn time_to_shift(after_kill: &[&BucketRow]) -> Option<u64> {
    let shifted = |b: &BucketRow| {
        b.dead_stamp_tries == 0 || b.dead_stamp_tries * 100 < b.requests * SHIFTED_PERCENT
    };
    match after_kill.iter().rposition(|b| !shifted(b)) {
        None => Some(0),
        Some(last) if last + 1 == after_kill.len() => None,
        Some(last) => Some((last as u64 + 1) * BUCKET_MS),
    }
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted: &[Duration], percentile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    millis(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
