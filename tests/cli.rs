//! The `stampgate` binary: `check` exit codes and messages, `run` shutting
//! down cleanly on SIGTERM and speaking systemd's readiness protocol, log
//! lines without colour codes off a terminal, `--version`, and the demo's
//! stamps answering through its proxy.

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

/// `stampgate check | head -1`: a reader that leaves early is no failure.
#[test]
fn check_into_a_closed_pipe_exits_zero_without_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = stampgate()
        .args(["check", "--config", "config/stampgate.toml"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
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
    // Lists are JSON arrays, not strings a log query must parse again.
    let stamps = loaded["stamps"]
        .as_array()
        .unwrap_or_else(|| panic!("{loaded}"));
    assert!(
        stamps
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains("s1"))),
        "{loaded}"
    );
    let listening = seen.last().expect("the proxy announced its listeners");
    let listen = listening["listen"]
        .as_array()
        .unwrap_or_else(|| panic!("{listening}"));
    assert_eq!(listen.len(), 1, "{listening}");
    assert!(
        listen[0].as_str().unwrap().starts_with("127.0.0.1:"),
        "{listening}"
    );
    assert_eq!(
        listening["tls_listen"],
        serde_json::json!([]),
        "{listening}"
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
    // Request lines go to the file the banner names, not to the terminal.
    let log = demo.access_log.clone();
    assert!(
        banner.contains(&format!("tail -f {}", log.display())),
        "{banner}"
    );
    eventually(
        "60 request lines in the demo's access log file",
        async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines().filter(|l| l.contains("status=200")).count() >= 60
        },
    )
    .await;
    demo.shutdown().await;
    assert!(!log.exists(), "the demo removes its log directory on exit");
}

/// `--version` names the commit (what `git rev-parse` says for this
/// checkout, `unknown` outside one) and whether this is the PGO build.
#[test]
fn version_names_the_commit_and_the_build_kind() {
    let out = stampgate().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    // Set by bench/pgo.sh for the optimised build, read by build.rs.
    let kind = match option_env!("STAMPGATE_PGO") {
        Some("1") => "pgo",
        _ => "plain",
    };
    assert_eq!(
        text.trim(),
        format!(
            "stampgate {} (commit {commit}, {kind} build)",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// Under systemd (`Type=notify`): READY=1 once listening, RELOADING=1 then
/// READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM. The log, going to
/// a file rather than a terminal, has no colour escape codes.
#[test]
fn run_notifies_systemd_and_logs_without_colours_off_a_terminal() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(
        &path,
        Setup::new().address("s1", "r1", "127.0.0.1:1").toml(),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // A bound on each wait, not a pause: recv returns as soon as a state arrives.
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut child = stampgate()
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("NO_COLOR")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a state within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving on [\"127.0.0.1:"),
        "{ready:?}"
    );
    signal("-HUP");
    assert!(next().starts_with("RELOADING=1"));
    let reloaded = next();
    assert!(
        reloaded.starts_with("READY=1\nSTATUS=serving; configuration reloaded"),
        "{reloaded:?}"
    );
    signal("-TERM");
    assert!(next().starts_with("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("proxy listening"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
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
    // List fields are JSON arrays in the JSON log format.
    let addr = listening["listen"][0]
        .as_str()
        .expect("the listen addresses as a JSON array")
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
