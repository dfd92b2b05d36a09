//! The `stampgate` binary: `check` exit codes and messages, `run` shutting
//! down cleanly on SIGTERM, and the demo's stamps answering through its proxy.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use stampgate::demo::{Demo, DemoPorts};
use support::*;

fn stampgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stampgate"))
}

#[test]
fn check_prints_the_resolved_config_and_exits_zero() {
    let out = stampgate()
        .args(["check", "--config", "config/stampgate.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("backend-apis"), "{stdout}");
    assert!(stdout.contains("westeurope"), "{stdout}");
    assert!(stdout.contains("worst-case detection"), "{stdout}");
}

#[test]
fn check_names_the_key_and_exits_one_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\n[pools.p.probe]\ninterval = \"1s\"\ntimeout = \"2s\"\n\
         [[pools.p.stamps]]\nname = \"a\"\nregion = \"r\"\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = stampgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pools.p.probe.timeout"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn run_stops_cleanly_on_sigterm() {
    run_and_stop("multi-thread");
}

#[test]
fn run_on_the_current_thread_runtime_stops_cleanly_too() {
    run_and_stop("current-thread");
}

fn run_and_stop(runtime: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    let setup = Setup::new().address("s1", "r1", "127.0.0.1:1");
    std::fs::write(&path, setup.toml()).unwrap();
    let mut child = stampgate()
        .args([
            "--runtime",
            runtime,
            "--log-format",
            "json",
            "run",
            "--config",
        ])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // `--log-format json`: every line is an object with level, target and
    // fields; start-up logs its configuration once, with its facts.
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(),
            "{v}"
        );
        let done = v["message"] == "proxy listening";
        seen.push(v);
        if done {
            break;
        }
    }
    let loaded = seen
        .iter()
        .find(|v| v["message"] == "configuration loaded")
        .unwrap_or_else(|| panic!("no start-up config line in {seen:?}"));
    assert_eq!(loaded["level"], "INFO");
    assert_eq!(loaded["routes"], 1);
    assert!(
        loaded["stamps"].as_str().unwrap().contains("s1"),
        "{loaded}"
    );
    assert!(
        seen.iter().any(|v| v["message"] == "proxy listening"),
        "the proxy announced its listeners"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Wait for the exit itself (on a thread, as this test has no runtime),
    // with the same limit as `support::eventually`.
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(child.wait()));
    let code = exit
        .recv_timeout(EVENTUALLY)
        .unwrap_or_else(|_| panic!("did not exit within {EVENTUALLY:?} after SIGTERM"))
        .unwrap();
    assert!(code.success(), "exit status {code}");
}

#[tokio::test]
async fn demo_serves_from_all_three_regions() {
    let demo = Demo::start(DemoPorts::Ephemeral, None)
        .await
        .expect("demo starts");
    let banner = demo.banner();
    assert!(banner.contains("curl"), "{banner}");
    assert!(banner.contains("/fault"), "{banner}");
    let url = format!(
        "http://{}/catalogservice/api/1.0/catalogitem?limit=1",
        demo.app.listen[0]
    );
    let c = http1_client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let a = get(&c, &url).await;
        assert_eq!(a.status, http::StatusCode::OK);
        seen.insert(a.header("x-server-location").to_owned());
    }
    assert_eq!(
        seen.len(),
        3,
        "weighted demo pool spreads over regions: {seen:?}"
    );
    demo.shutdown().await;
}

/// Log rotation: rename the access log, send SIGUSR1; the process lives
/// on (the signal's default action would end it) and the next request's
/// line lands in a new file at the configured path.
#[test]
fn sigusr1_reopens_the_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = dir.path().join("run.toml");
    let setup = Setup::new()
        .address("s1", "r1", "127.0.0.1:1")
        .access_log(&format!(
            "enabled = true\npath = {:?}",
            log.to_str().unwrap()
        ));
    std::fs::write(&path, setup.toml()).unwrap();
    let mut child = stampgate()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
        .find(|v| v["message"] == "proxy listening")
        .expect("the proxy announced its listeners");
    let addr = listening["listen"]
        .as_str()
        .unwrap()
        .trim_matches(['[', ']'])
        .to_owned();
    // Keep reading stderr so that the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let request = |n: u32| {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            tcp,
            "GET /catalogservice/r{n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    };
    let has_line = |file: &std::path::Path| {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains("/catalogservice/r"))
    };
    let start = std::time::Instant::now();
    let wait = |what: &str| {
        assert!(
            start.elapsed() < EVENTUALLY,
            "not within {EVENTUALLY:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    request(1);
    while !has_line(&log) {
        wait("the first line in the log");
    }
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let status = Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The signal is handled asynchronously: ask until a line reaches a
    // file at the configured path again (the old one was renamed away).
    let mut n = 2;
    while !has_line(&log) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGUSR1 ended the process"
        );
        request(n);
        n += 1;
        wait("a line in the reopened log");
    }
    assert!(has_line(&rotated), "the rotated file keeps its line");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}
