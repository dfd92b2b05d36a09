//! The dashboard end to end: three in-process stamps behind a proxy with
//! fast probes, the admin listener on port 0, and headless Chromium
//! rendering `/admin/ui` with its script running (virtual time lets the
//! page's one-second polling happen before the DOM is dumped).
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium` package; `.ci/run`
//! installs it). Without it the test fails and says so: a skipped browser
//! test looks green and checks nothing.
//!
//! Each run writes a screenshot to `$CARGO_TARGET_TMPDIR/dashboard-test.png`;
//! with `UPDATE_DASHBOARD_PNG=1` it also replaces `docs/dashboard.png`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use stampgate::admin::Tokens;
use stampgate::stamp::{Fault, HealthFault, Stamp};
use support::*;
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "s3cret";
const ITEMS: &str = "/catalogservice/api/1.0/catalogitem?limit=1";

/// A whole Chromium run (start, load, three seconds of virtual time,
/// dump) takes one or two seconds; this is the bound for a stuck one.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Probes every 200 ms decide a fault within about a second.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

struct World {
    stamps: Vec<Stamp>,
    proxy: Proxy,
    admin: AdminApi,
    c: HttpClient,
    profile: tempfile::TempDir,
}

async fn world() -> World {
    let stamps = vec![
        stamp("westeurope-1", "westeurope").await,
        stamp("eastus2-1", "eastus2").await,
        stamp("southeastasia-1", "southeastasia").await,
    ];
    let proxy = stamps
        .iter()
        .fold(Setup::new(), |s, st| s.stamp(st))
        .pool("slow_start = \"0s\"")
        .extra(
            "[pools.p.probe]\ninterval = \"200ms\"\nunhealthy_interval = \"100ms\"\n\
             timeout = \"150ms\"\nsample_size = 3\nsuccessful_samples_required = 2\n\
             jitter_percent = 0\n[pools.p.health]\nmin_hold = \"200ms\"\n",
        )
        .start()
        .await;
    let tokens = Tokens::parse(&format!("alice={TOKEN}")).unwrap();
    let admin = AdminApi::start(proxy.handle.controller.clone(), tokens).await;
    World {
        stamps,
        proxy,
        admin,
        c: http1_client(),
        profile: tempfile::tempdir().expect("a temporary browser profile"),
    }
}

impl World {
    async fn status(&self) -> Value {
        let a = get(&self.c, &self.admin.url("/admin/status")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        a.json()
    }

    /// `(name, health)` of every stamp, as the status reports them.
    async fn healths(&self) -> Vec<(String, String)> {
        self.status().await["pools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["stamps"].as_array().unwrap().clone())
            .map(|s| {
                let field = |k: &str| s[k].as_str().unwrap().to_owned();
                (field("name"), field("health"))
            })
            .collect()
    }

    /// Wait (on the event log, not a timer) until `name` has health `want`.
    async fn until_health(&self, name: &str, want: &str) {
        let mut events = self.proxy.handle.controller.events.subscribe();
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let now = self.healths().await;
            if now.iter().any(|(n, h)| n == name && h == want) {
                return;
            }
            // A lagged receiver also means something happened: look again.
            if tokio::time::timeout_at(deadline, events.recv())
                .await
                .is_err()
            {
                panic!("{name} is not {want} after {HEALTH_TIMEOUT:?}: {now:?}");
            }
        }
    }

    /// Run Chromium headless on the dashboard with `extra` arguments.
    async fn chromium(&self, extra: &[String]) -> String {
        let chromium = chromium();
        let url = self.admin.url("/admin/ui");
        let run = tokio::process::Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(extra)
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(BROWSER_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{chromium:?} did not finish within {BROWSER_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("cannot run {chromium:?}: {e}"));
        assert!(
            out.status.success(),
            "{chromium:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The page after a few polls, as HTML.
    async fn render(&self) -> String {
        self.chromium(&["--dump-dom".to_owned()]).await
    }

    async fn screenshot(&self, path: &Path) {
        self.chromium(&[
            format!("--screenshot={}", path.display()),
            "--window-size=1400,1000".to_owned(),
        ])
        .await;
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        assert!(
            len > 10_000,
            "{} is a real picture: {len} bytes",
            path.display()
        );
    }
}

/// The browser, or a failure that says how to get it.
fn chromium() -> PathBuf {
    let path = PathBuf::from(CHROMIUM);
    assert!(
        path.exists(),
        "{CHROMIUM} is missing: the dashboard test needs headless Chromium; install the \
         Debian package `chromium` (apt-get install chromium; .ci/run does this)"
    );
    path
}

/// The opening tag of the card of `name` and the card's text up to the next
/// card, or `None` if the page has no such card.
fn card<'a>(dom: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let start = dom.find(&format!("data-stamp=\"{name}\""))?;
    let rest = &dom[start..];
    let tag = &rest[..rest.find('>')?];
    let end = rest[1..]
        .find("data-stamp=\"")
        .map_or(rest.len(), |i| i + 1);
    Some((tag, &rest[..end]))
}

/// The `data-health` of `name`'s card, after checking the card shows the
/// name and the health as text.
fn card_health(dom: &str, name: &str) -> String {
    let (tag, body) = card(dom, name).unwrap_or_else(|| panic!("no card for {name} in:\n{dom}"));
    let health = tag
        .split("data-health=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .unwrap_or_else(|| panic!("card of {name} has no data-health: {tag}"));
    assert!(body.contains(&format!(">{name}<")), "{name}'s card: {body}");
    assert!(
        body.contains(&format!(">{health}<")),
        "{name}'s card shows {health}: {body}"
    );
    health.to_owned()
}

/// A steady trickle of requests through the proxy, so the page has
/// requests/s and traffic shares to draw.
fn traffic(w: &World) -> tokio::task::JoinHandle<()> {
    let c = w.c.clone();
    let url = w.proxy.url(ITEMS);
    tokio::spawn(async move {
        loop {
            let req = http::Request::get(&url).body(empty()).unwrap();
            let _ = c.request(req).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_every_stamp_and_follows_a_failure() {
    let w = world().await;
    let page = get(&w.c, &w.admin.url("/admin/ui")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(get(&w.c, &w.admin.url("/")).await.body, page.body);

    let load = traffic(&w);
    for s in &w.stamps {
        w.until_health(s.name(), "healthy").await;
    }
    let dom = w.render().await;
    for s in &w.stamps {
        assert_eq!(card_health(&dom, s.name()), "healthy", "{}", s.name());
    }
    assert!(dom.contains("test.toml"), "the header names the config");
    assert!(
        dom.contains("error rate at stamps"),
        "each pool has its error-rate sparkline"
    );
    assert!(!dom.contains("class=\"lost\""), "the page is connected");

    let victim = &w.stamps[0];
    victim.set_fault(Fault {
        health: Some(HealthFault::Fail),
        ..Fault::default()
    });
    w.until_health(victim.name(), "unhealthy").await;
    // More server-side samples than a fresh page could take itself within
    // its 3 s of virtual time: the page must draw them from the history.
    let history = w.admin.url("/admin/history");
    eventually("the server keeps at least 6 s of history", async || {
        let a = get(&w.c, &history).await;
        a.json()["samples"].as_array().is_some_and(|s| s.len() >= 6)
    })
    .await;
    let dom = w.render().await;
    let span: u32 = dom
        .split("requests/s, last ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a sparkline span in {dom}"));
    assert!(
        span >= 6,
        "a page opened now shows the last minutes: {span} s"
    );
    assert!(
        dom.contains("probe rtt"),
        "regions show their error rate and latency"
    );
    assert_eq!(card_health(&dom, victim.name()), "unhealthy");
    assert_eq!(card_health(&dom, "eastus2-1"), "healthy");
    assert!(
        dom.contains("to-unhealthy"),
        "the timeline shows the transition"
    );

    // An operator drain, for the picture: a striped card and an event.
    let drain = admin_call(
        &w.c,
        Method::POST,
        &w.admin.url("/admin/stamps/southeastasia-1/drain"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(drain.status, StatusCode::OK, "{}", drain.text());
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-test.png");
    w.screenshot(&shot).await;
    load.abort();
    if std::env::var_os("UPDATE_DASHBOARD_PNG").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::copy(&shot, &docs).expect("copy the screenshot to docs/");
    }
}
