//! `stampgate ctl`, the built binary, against an in-process proxy and its
//! admin API on port 0: output, exit codes (0 done, 1 refused, 2 could not
//! ask), tokens from the command line and the environment.
//!
//! Tests named `with_controller_*` need the controller to carry out
//! operator commands (status, drain, weight); the others hold with any
//! controller.

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use stampgate::admin::Tokens;
use stampgate::stamp::Stamp;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TOKEN: &str = "s3cret";

struct World {
    _stamps: Vec<Stamp>,
    proxy: Proxy,
    admin: AdminApi,
}

async fn world() -> World {
    let eu = stamp("eu-1", "westeurope").await;
    let us = stamp("us-1", "eastus2").await;
    let proxy = Setup::new().stamp(&eu).stamp(&us).start().await;
    let admin = AdminApi::start(proxy.handle.controller.clone(), Tokens::single(TOKEN)).await;
    World {
        _stamps: vec![eu, us],
        proxy,
        admin,
    }
}

/// `stampgate ctl` with a clean environment (no admin URL or token
/// inherited from whoever runs the tests).
fn stampgate_ctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stampgate"));
    cmd.arg("ctl")
        .env_remove("STAMPGATE_ADMIN")
        .env_remove("STAMPGATE_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("ctl finishes within 30 s")
        .expect("ctl runs")
}

impl World {
    /// `ctl --admin URL [--token T] args...`
    async fn ctl(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = stampgate_ctl();
        cmd.args(["--admin", &self.admin.url("")]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.args(args);
        run(cmd).await
    }

    async fn status_json(&self) -> Value {
        let out = self.ctl(None, &["status", "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code and a stderr of exactly one line starting `stampgate ctl: `.
fn assert_one_line_failure(out: &Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(stderr.starts_with("stampgate ctl: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr
}

#[tokio::test]
async fn an_unreachable_admin_api_exits_2_saying_so() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut cmd = stampgate_ctl();
    cmd.args(["--admin", &url, "status"]);
    let out = run(cmd).await;
    let stderr = assert_one_line_failure(&out, 2);
    assert_eq!(
        stderr,
        format!("stampgate ctl: cannot reach {url}: connection refused\n")
    );
}

#[tokio::test]
async fn bad_usage_exits_2() {
    let cases: [&[&str]; 7] = [
        &["frobnicate"],
        &["drain"],
        &["weight", "eu-1", "5000"],
        &["weight", "eu-1", "heavy"],
        &["drain", "eu-1", "--deadline", "30"],
        &["drain", "eu-1", "--wait", "--dry-run"],
        &["--admin", "https://127.0.0.1:9901", "status"],
    ];
    for args in cases {
        let mut cmd = stampgate_ctl();
        cmd.args(args);
        let out = run(cmd).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let mut cmd = stampgate_ctl();
    cmd.args(["--admin", "https://127.0.0.1:9901", "status"]);
    let stderr = assert_one_line_failure(&run(cmd).await, 2);
    assert!(stderr.contains("only http://"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_exits_1_and_changes_nothing() {
    let w = world().await;
    let out = w.ctl(Some("nope"), &["drain", "eu-1"]).await;
    let stderr = assert_one_line_failure(&out, 1);
    assert!(stderr.contains("not valid"), "{stderr}");
    let out = w.ctl(None, &["drain", "eu-1"]).await;
    let stderr = assert_one_line_failure(&out, 1);
    assert!(stderr.contains("Authorization"), "{stderr}");
    let events = w.proxy.handle.controller.events.since(0);
    assert!(
        events.iter().all(|e| !e.reason.contains("drain")),
        "no drain happened: {events:?}"
    );
}

#[tokio::test]
async fn events_prints_the_log_and_follow_prints_new_events_as_they_come() {
    let w = world().await;
    let log = w.proxy.handle.controller.events.clone();
    push_event(&log, "eu-1", "marker before");
    let out = w.ctl(None, &["events"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("marker before"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("operator") && line.contains("p/eu-1"),
        "{line}"
    );

    let mut cmd = stampgate_ctl();
    cmd.args(["--admin", &w.admin.url(""), "events", "--follow"])
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("ctl starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_for = async |needle: &str| loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} printed within 10 s"))
            .unwrap()
            .expect("ctl still following");
        if line.contains(needle) {
            return line;
        }
    };
    // The backlog line proves the stream is open; the next one is live.
    wait_for("marker before").await;
    push_event(&log, "us-1", "marker after");
    let live = wait_for("marker after").await;
    assert!(live.contains("p/us-1"), "{live}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test]
async fn url_and_token_come_from_the_environment() {
    let w = world().await;
    let mut cmd = stampgate_ctl();
    cmd.env("STAMPGATE_ADMIN", w.admin.url(""))
        .env("STAMPGATE_ADMIN_TOKEN", "wrong")
        .args(["reload"]);
    let stderr = assert_one_line_failure(&run(cmd).await, 1);
    assert!(
        stderr.contains("not valid"),
        "the env token was sent: {stderr}"
    );
}

#[tokio::test]
async fn with_controller_status_prints_a_table_of_every_stamp() {
    let w = world().await;
    let out = w.ctl(None, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in [
        "pool p",
        "STAMP",
        "HEALTH",
        "eu-1",
        "us-1",
        "westeurope",
        "eastus2",
        "active",
    ] {
        assert!(stdout.contains(needle), "{needle} in:\n{stdout}");
    }
}

#[tokio::test]
async fn with_controller_status_json_is_the_document() {
    let w = world().await;
    let status = w.status_json().await;
    let names: Vec<&str> = status["pools"][0]["stamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eu-1", "us-1"]);
}

#[tokio::test]
async fn with_controller_an_unknown_stamp_exits_1_naming_it() {
    let w = world().await;
    let out = w.ctl(Some(TOKEN), &["drain", "ghost"]).await;
    let stderr = assert_one_line_failure(&out, 1);
    assert!(stderr.contains("ghost"), "{stderr}");
    let out = w.ctl(Some(TOKEN), &["enable-region", "mars"]).await;
    let stderr = assert_one_line_failure(&out, 1);
    assert!(stderr.contains("mars"), "{stderr}");
}

#[tokio::test]
async fn with_controller_drain_wait_then_enable() {
    let w = world().await;
    let out = w.ctl(Some(TOKEN), &["drain", "eu-1", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("dry run") && stdout.contains("100.0%"),
        "{stdout}"
    );
    assert_eq!(
        w.status_json().await["pools"][0]["stamps"][0]["admin"],
        "active"
    );

    let out = w
        .ctl(
            Some(TOKEN),
            &["drain", "eu-1", "--wait", "--deadline", "5s"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("eu-1: drained, 0 in flight"), "{stdout}");
    assert_eq!(
        w.status_json().await["pools"][0]["stamps"][0]["admin"],
        "drained"
    );

    let out = w.ctl(Some(TOKEN), &["enable", "eu-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        w.status_json().await["pools"][0]["stamps"][0]["admin"],
        "active"
    );
}

#[tokio::test]
async fn with_controller_weight_set_and_clear() {
    let w = world().await;
    let out = w.ctl(Some(TOKEN), &["weight", "us-1", "300"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        w.status_json().await["pools"][0]["stamps"][1]["weight_override"],
        300
    );
    let out = w.ctl(Some(TOKEN), &["status"]).await;
    assert!(text(&out.stdout).contains("300*/"), "{}", text(&out.stdout));
    let out = w.ctl(Some(TOKEN), &["weight", "us-1", "clear"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        w.status_json().await["pools"][0]["stamps"][1]["weight_override"],
        Value::Null
    );
}

#[tokio::test]
async fn with_controller_the_last_region_is_refused_without_force() {
    let w = world().await;
    let out = w.ctl(Some(TOKEN), &["drain-region", "westeurope"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = w.ctl(Some(TOKEN), &["drain-region", "eastus2"]).await;
    assert_one_line_failure(&out, 1);
    let out = w
        .ctl(Some(TOKEN), &["drain-region", "eastus2", "--force"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for region in ["westeurope", "eastus2"] {
        let out = w.ctl(Some(TOKEN), &["enable-region", region]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

/// A dry run of a drain the real call would refuse (the pool's last usable
/// stamp) says so and exits 1, as the real call does; nothing changes.
#[tokio::test]
async fn with_controller_a_dry_run_the_server_would_refuse_exits_1() {
    let w = world().await;
    let out = w.ctl(Some(TOKEN), &["drain", "eu-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = w.ctl(Some(TOKEN), &["drain", "us-1", "--dry-run"]).await;
    let stderr = assert_one_line_failure(&out, 1);
    assert!(
        stderr.contains("dry run: the real call would be refused")
            && stderr.contains("no usable stamp")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("planned traffic shares"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        w.status_json().await["pools"][0]["stamps"][1]["admin"],
        "active",
        "a dry run changes nothing"
    );
    // With --force the dry run is what the forced call would do: fine.
    let out = w
        .ctl(Some(TOKEN), &["drain", "us-1", "--dry-run", "--force"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
