//! Test support: simulated stamps on port 0, a proxy-under-test built from a
//! TOML snippet, and small HTTP clients (HTTP/1.1, h2c, TLS, and [`raw`]
//! for exact bytes).
#![allow(dead_code, missing_docs)] // each test binary uses a different part

pub mod dns;
pub mod raw;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stampgate::app::App;
use stampgate::config::{self, Config};
use stampgate::stamp::{Stamp, StampOptions};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type HttpClient = Client<HttpConnector, TestBody>;

/// Start a simulated stamp on port 0.
pub async fn stamp(name: &str, region: &str) -> Stamp {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Stamp::start(StampOptions {
        name: name.into(),
        region: region.into(),
        listen: any,
        control: any,
    })
    .await
    .expect("stamp starts")
}

/// Pieces of a test config; every listener binds port 0.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Extra lines in `[proxy]`.
    pub proxy: String,
    /// Extra lines in `[admin]`.
    pub admin: String,
    /// Extra lines in the route (`path_prefix = "/"`, pool `p`).
    pub route: String,
    /// Extra lines in `[pools.p]`.
    pub pool: String,
    /// `(name, region, address)`, in pool `p`.
    pub stamps: Vec<(String, String, String)>,
    /// Whole extra TOML appended at the end.
    pub extra: String,
    /// Lines of `[access_log]` (off when `None`).
    pub access_log: Option<String>,
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            proxy: String::new(),
            admin: String::new(),
            route: String::new(),
            pool: String::new(),
            stamps: Vec::new(),
            extra: String::new(),
            access_log: None,
        }
    }

    pub fn stamp(mut self, s: &Stamp) -> Setup {
        self.stamps
            .push((s.name().into(), s.region().into(), s.addr().to_string()));
        self
    }

    pub fn address(mut self, name: &str, region: &str, addr: &str) -> Setup {
        self.stamps.push((name.into(), region.into(), addr.into()));
        self
    }

    pub fn proxy(mut self, lines: &str) -> Setup {
        self.proxy.push_str(lines);
        self.proxy.push('\n');
        self
    }

    pub fn admin(mut self, lines: &str) -> Setup {
        self.admin.push_str(lines);
        self.admin.push('\n');
        self
    }

    pub fn route(mut self, lines: &str) -> Setup {
        self.route.push_str(lines);
        self.route.push('\n');
        self
    }

    pub fn pool(mut self, lines: &str) -> Setup {
        self.pool.push_str(lines);
        self.pool.push('\n');
        self
    }

    /// Lines of `[access_log]`; without this call the log is off, so
    /// that tests do not write request lines to standard output.
    pub fn access_log(mut self, lines: &str) -> Setup {
        self.access_log = Some(lines.to_owned());
        self
    }

    pub fn extra(mut self, text: &str) -> Setup {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    pub fn toml(&self) -> String {
        let mut t = format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n\
             [[routes]]\nname = \"main\"\npath_prefix = \"/catalogservice/\"\npool = \"p\"\n{}\n\
             [pools.p]\n{}\n",
            self.proxy, self.admin, self.route, self.pool
        );
        for (name, region, addr) in &self.stamps {
            t.push_str(&format!(
                "[[pools.p.stamps]]\nname = \"{name}\"\nregion = \"{region}\"\naddress = \"{addr}\"\n\n"
            ));
        }
        t.push_str(&self.extra);
        let log = self.access_log.as_deref().unwrap_or("enabled = false");
        t.push_str(&format!("\n[access_log]\n{log}\n"));
        t
    }

    pub fn config(&self) -> Config {
        let text = self.toml();
        config::parse_str(&text, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("test config is valid: {e}\n{text}"))
    }

    pub async fn start(&self) -> Proxy {
        let config = self.config();
        let handle = App::start(&config, None).await.expect("proxy starts");
        Proxy { handle, config }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

/// A proxy under test.
pub struct Proxy {
    pub handle: App,
    pub config: Config,
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        self.handle.listen[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }
}

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A response with its body read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn send(client: &HttpClient, req: http::Request<TestBody>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30 s")
        .expect("request succeeds");
    read(resp).await
}

pub async fn read<B>(resp: http::Response<B>) -> Answer
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body,
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Answer {
    let req = http::Request::get(url).body(empty()).unwrap();
    send(client, req).await
}

/// How long [`eventually`] waits before it fails. Generous: a wait that
/// succeeds returns as soon as its condition holds, and a loaded machine
/// (two cores, several test binaries at once) can take seconds for what
/// usually takes milliseconds.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// Wait until `holds` returns true, checking again every few
/// milliseconds; panic naming `what` after [`EVENTUALLY`]. For a state
/// that can only be polled (a counter, the routing table, an answer); where
/// an event can be awaited (a channel, a stream, a process exit), await it.
pub async fn eventually(what: &str, mut holds: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(EVENTUALLY, async {
        while !holds().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not within {EVENTUALLY:?}: {what}");
}

/// What `/admin/status` would show, straight from the controller.
pub async fn status(controller: &stampgate::controller::ControllerHandle) -> serde_json::Value {
    controller
        .command(stampgate::signals::command::Command::Status, "test")
        .await
        .expect("the controller answers a status command")
}

/// Wait until the controller has stored a table newer than generation
/// `after`; return its generation. Awaits the publish itself, so a test
/// needs no sleep to let a change reach the routing table.
pub async fn published_after(
    controller: &stampgate::controller::ControllerHandle,
    after: u64,
) -> u64 {
    let mut published = controller.published();
    let waited = tokio::time::timeout(EVENTUALLY, published.wait_for(|&g| g > after)).await;
    match waited {
        Ok(Ok(g)) => *g,
        Ok(Err(_)) => panic!("the controller stopped before publishing past generation {after}"),
        Err(_) => panic!("no table past generation {after} within {EVENTUALLY:?}"),
    }
}

/// Wait until a published routing table satisfies `holds`, looking at each
/// table as the controller stores it (never polling on a timer); panic
/// naming `what` after [`EVENTUALLY`].
pub async fn published_until(
    controller: &stampgate::controller::ControllerHandle,
    what: &str,
    mut holds: impl FnMut(&stampgate::routing::RoutingTable) -> bool,
) {
    let mut published = controller.published();
    let waited = tokio::time::timeout(EVENTUALLY, async {
        loop {
            published.borrow_and_update();
            if holds(&controller.routing.load()) {
                return;
            }
            if published.changed().await.is_err() {
                panic!("the controller stopped: {what}");
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "not within {EVENTUALLY:?}: {what}");
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS line")
}

// ---- admin API (tests/admin.rs, tests/ctl.rs) ------------------------------

/// An admin listener on `127.0.0.1:0`; it stops when dropped.
pub struct AdminApi {
    pub addr: SocketAddr,
    pub stop: tokio_util::sync::CancellationToken,
}

impl AdminApi {
    pub async fn start(
        controller: stampgate::controller::ControllerHandle,
        tokens: stampgate::admin::Tokens,
    ) -> AdminApi {
        let stop = tokio_util::sync::CancellationToken::new();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let handle = stampgate::admin::start_with_tokens(any, tokens, controller, stop.clone())
            .await
            .expect("admin API starts");
        AdminApi {
            addr: handle.addr,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for AdminApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A request to the admin API with an optional bearer token and a body.
pub async fn admin_call(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(client, req.body(full(body.to_owned())).unwrap()).await
}

/// A stand-in for the controller: records each operator command with its
/// `who`, answers with `answer`; its routing table is the empty one
/// (generation 0) and its event log starts empty.
pub struct FakeController {
    pub handle: stampgate::controller::ControllerHandle,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(stampgate::signals::command::Command, String)>>>,
}

impl FakeController {
    pub fn start<F>(mut answer: F) -> FakeController
    where
        F: FnMut(
                &stampgate::signals::command::Command,
            ) -> Result<serde_json::Value, stampgate::signals::command::AdminError>
            + Send
            + 'static,
    {
        use stampgate::controller::ControllerHandle;
        use stampgate::signals::Signal;
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some(signal) = rx.recv().await {
                if let Signal::Admin(request) = signal {
                    let reply = answer(&request.command);
                    log.lock().unwrap().push((request.command, request.who));
                    let _ = request.reply.send(reply);
                }
            }
        });
        // Nothing publishes here: the table stays at generation 0.
        let (_, published) = tokio::sync::watch::channel(0);
        let handle = ControllerHandle::new(
            std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
                stampgate::routing::RoutingTable::empty(),
            )),
            tx,
            stampgate::controller::events::EventLog::new(),
            Default::default(),
            published,
            Default::default(),
            Default::default(),
            Default::default(),
        );
        FakeController { handle, seen }
    }

    /// The commands received so far, with who sent them.
    pub fn commands(&self) -> Vec<(stampgate::signals::command::Command, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Push an operator event into a log (as the controller would).
pub fn push_event(
    log: &stampgate::controller::events::EventLog,
    stamp: &str,
    reason: &str,
) -> stampgate::controller::events::Event {
    log.push(stampgate::controller::events::NewEvent {
        kind: stampgate::controller::events::EventKind::Operator,
        pool: Some("p".into()),
        stamp: Some(stamp.into()),
        from: None,
        to: None,
        reason: reason.into(),
    })
}

/// The next `data:` payload of a server-sent event stream, skipping
/// comments; `None` when the stream ends.
pub async fn next_sse_data<B>(body: &mut B, buffer: &mut String) -> Option<String>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")?
            .expect("stream frame");
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}
pub mod etcd;
