//! The failover drill: the load generator's schedule and its accounting of
//! latency from the scheduled time, a short region outage end to end with
//! its report checked against its own series, expectations turning into
//! exit codes, and the CLI's list and scenario errors.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use stampgate::drill::load::{self, Outcome, Sample};
use stampgate::drill::measure::{FINE_BUCKET, SHARE_WINDOW, SHIFTED_SHARE};
use stampgate::drill::scenario::{Action, Protocol, Scenario, reference_mix};
use stampgate::drill::{self, builtin};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn stampgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stampgate"))
}

/// A scenario with two spawned stamps, no faults, and `expect` appended.
fn small_scenario(rate: u32, duration: &str, expect: &str) -> String {
    format!(
        "name = \"small\"\ndescription = \"two stamps, no faults\"\nduration = \"{duration}\"\n\
         [[stamps]]\nname = \"a-1\"\nregion = \"a\"\n[[stamps]]\nname = \"b-1\"\nregion = \"b\"\n\
         [load]\nrate = {rate}\n[expect]\n{expect}\n"
    )
}

/// Runs the open loop straight at a stamp and returns every sample.
async fn load_at(
    stamp: &stampgate::stamp::Stamp,
    rate: u32,
    duration: Duration,
) -> (u64, Vec<Sample>) {
    let text = small_scenario(rate, "1s", "");
    let mut scenario = Scenario::parse(&text, Path::new("t.toml")).unwrap();
    scenario.load.rate = rate;
    let base = format!("http://{}", stamp.addr()).parse().unwrap();
    let mix = Arc::new(load::Mix::new(&base, &reference_mix()).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let sent = load::open_loop(
        load::client(Protocol::Http1),
        mix,
        &scenario.load,
        start,
        duration,
        tx,
        CancellationToken::new(),
    )
    .await;
    let mut samples = Vec::new();
    while let Some(s) = rx.recv().await {
        samples.push(s);
    }
    (sent, samples)
}

#[tokio::test]
async fn the_open_loop_keeps_its_rate_and_sends_everything() {
    let stamp = support::stamp("a-1", "a").await;
    let began = std::time::Instant::now();
    let (sent, samples) = load_at(&stamp, 400, Duration::from_millis(1500)).await;
    let took = began.elapsed();
    assert_eq!(sent, 600, "rate × duration requests are scheduled");
    assert_eq!(
        samples.len(),
        600,
        "every scheduled request ends as a sample"
    );
    assert!(
        samples.iter().all(|s| s.outcome == Outcome::Ok),
        "{:?}",
        samples.iter().find(|s| s.outcome != Outcome::Ok)
    );
    // Each 100 ms of the schedule holds 40 requests: the spacing is even.
    let mut per_bucket = [0u32; 15];
    for s in &samples {
        per_bucket[(s.scheduled.as_millis() / 100) as usize] += 1;
    }
    assert!(per_bucket.iter().all(|&n| n == 40), "{per_bucket:?}");
    assert!(
        took >= Duration::from_millis(1490) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(stamp.requests_served(), 600);
}

/// A stalled generator (its thread blocked for 300 ms, as a starved
/// machine would) must not hide the stall: the requests due meanwhile go
/// out late, their latency counts from when they were due, and the lag is
/// reported. With injected stamp latency, every latency includes it.
#[tokio::test(flavor = "current_thread")]
async fn latency_counts_from_the_schedule_not_from_the_send() {
    let stamp = support::stamp("a-1", "a").await;
    stamp.set_fault(stampgate::stamp::Fault {
        latency_ms: Some(20),
        ..Default::default()
    });
    let stall = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Blocks the only runtime thread: nothing is sent meanwhile.
        std::thread::sleep(Duration::from_millis(300));
    });
    let (sent, samples) = load_at(&stamp, 200, Duration::from_secs(1)).await;
    stall.await.unwrap();
    assert_eq!(sent, 200);
    assert_eq!(samples.len(), 200);
    assert!(
        samples
            .iter()
            .all(|s| s.latency >= Duration::from_millis(20))
    );
    let max_lag = samples.iter().map(|s| s.lag).max().unwrap();
    assert!(
        max_lag >= Duration::from_millis(250),
        "the stall shows as lag: {max_lag:?}"
    );
    // A request due at 450 ms could not leave before about 700 ms.
    let stalled: Vec<&Sample> = samples
        .iter()
        .filter(|s| (420..600).contains(&s.scheduled.as_millis()))
        .collect();
    assert!(!stalled.is_empty());
    for s in stalled {
        let queued = Duration::from_millis(690).saturating_sub(s.scheduled);
        assert!(
            s.latency >= queued + Duration::from_millis(20),
            "due at {:?}: latency {:?} must include {queued:?} of queueing",
            s.scheduled,
            s.latency
        );
    }
}

#[tokio::test]
async fn a_short_region_outage_reports_figures_consistent_with_its_series() {
    let mut scenario = builtin::find("region-outage").unwrap().unwrap();
    scenario.load.rate = 200;
    scenario.duration = Duration::from_secs(6);
    scenario.timeline[0].at = Duration::from_millis(1500);
    scenario.timeline[1].at = Duration::from_secs(3);
    assert!(matches!(scenario.timeline[0].action, Action::Fault(_)));
    let out = tempfile::tempdir().unwrap();
    let report = drill::run(&scenario, out.path(), false)
        .await
        .expect("the drill runs");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    let totals = &json["totals"];
    assert_eq!(totals["requests"], 1200);
    let seconds = json["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 6);
    let sum = |field: &str| -> u64 { seconds.iter().map(|s| s[field].as_u64().unwrap()).sum() };
    assert_eq!(
        sum("requests"),
        1200,
        "per-second counts add up to the total"
    );
    let errors: u64 = seconds
        .iter()
        .flat_map(|s| s["errors"].as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errors, totals["errors"].as_u64().unwrap());
    let answered: u64 = totals["by_region"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let failed = totals["errors"].as_u64().unwrap();
    assert!(
        answered <= 1200 && answered + failed >= 1200,
        "every success names its region"
    );

    // The shift agrees with the 100 ms series: from the shift to the
    // bucket before the clear, every second (ten buckets) brings westeurope
    // under 1% of its requests; the second from the bucket before the
    // shift brought it more (or the shift is 0). "Brings" counts requests
    // the stamps received.
    let fault = &json["faults"][0];
    assert_eq!(fault["target"], "region westeurope");
    assert!(fault["share_before"].as_f64().unwrap() > 0.3, "{fault}");
    let shift = fault["shift_ms"].as_f64().expect("traffic shifted");
    assert!(shift <= 1000.0, "shift {shift} ms");
    let fine = json["fine"].as_array().unwrap();
    let west = |b: &serde_json::Value| -> f64 {
        let by = b["received_by"]
            .as_object()
            .expect("spawned stamps are counted");
        ["westeurope-1", "westeurope-2"]
            .iter()
            .filter_map(|s| by.get(*s))
            .map(|v| v.as_f64().unwrap())
            .sum()
    };
    let bucket_ms = FINE_BUCKET.as_millis() as f64;
    let shifted_from = ((1500.0 + shift) / bucket_ms) as usize;
    let second_from = |k: usize| -> (f64, f64) {
        let window = &fine[k..(k + SHARE_WINDOW).min(29)];
        let reached = window.iter().map(west).sum();
        let requests = window.iter().map(|b| b["requests"].as_f64().unwrap()).sum();
        (reached, requests)
    };
    for (k, bucket) in fine.iter().enumerate().take(29).skip(shifted_from) {
        let (reached, requests) = second_from(k);
        assert!(reached < SHIFTED_SHARE * requests.max(1.0), "{bucket}");
    }
    if shift > 0.0 {
        let (reached, requests) = second_from(shifted_from - 1);
        assert!(reached >= SHIFTED_SHARE * requests);
    }
    assert!(
        fault["detect_ms"].as_f64().is_some(),
        "the proxy reported the outage: {fault}"
    );
    assert_eq!(report.totals.requests, 1200);

    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"));
    for external in ["src=", "href=", "<link", "<script", "url(", "@import"] {
        assert!(
            !html.contains(external),
            "report.html must reference nothing outside itself: {external}"
        );
    }
    assert!(
        out.path().join("proxy.toml").is_file(),
        "the config the proxy ran is kept"
    );
}

#[test]
fn expectations_decide_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass.toml");
    std::fs::write(
        &pass,
        small_scenario(100, "1s", "max_errors = 0\nmax_p99 = \"2s\""),
    )
    .unwrap();
    let out = stampgate()
        .args(["drill", "--scenario"])
        .arg(&pass)
        .arg("--out")
        .arg(dir.path().join("p"))
        .arg("--junit")
        .arg(dir.path().join("p.xml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASSED"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("p/report.json")).unwrap()).unwrap();
    check_provenance(&report, &dir.path().join("p/report.html"));
    let junit = std::fs::read_to_string(dir.path().join("p.xml")).unwrap();
    let cases = report["expectations"].as_array().unwrap();
    assert!(cases.len() >= 3, "{report}");
    assert_eq!(junit.matches("<testcase ").count(), cases.len(), "{junit}");
    assert!(
        junit.contains(&format!("tests=\"{}\" failures=\"0\"", cases.len())),
        "{junit}"
    );
    assert!(!junit.contains("<failure"), "{junit}");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        assert!(
            junit.contains(&format!("classname=\"drill.small\" name=\"{name}\"/>")),
            "{junit}"
        );
    }
    assert!(
        junit.contains(&format!(
            "<property name=\"stampgate.commit\" value=\"{}\"/>",
            report["build"]["commit"].as_str().unwrap()
        )),
        "{junit}"
    );

    let fail = dir.path().join("fail.toml");
    std::fs::write(&fail, small_scenario(100, "1s", "max_p99 = \"0ms\"")).unwrap();
    let out = stampgate()
        .args(["drill"])
        .arg(&fail)
        .arg("--out")
        .arg(dir.path().join("f"))
        .arg("--junit")
        .arg(dir.path().join("f.xml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("max_p99"),
        "the failed expectation is listed: {stderr}"
    );
    // The failed expectation is the one failed test case, with its figures.
    let junit = std::fs::read_to_string(dir.path().join("f.xml")).unwrap();
    assert_eq!(junit.matches("<failure ").count(), 1, "{junit}");
    let failed = junit
        .split("<testcase ")
        .find(|c| c.contains("<failure"))
        .unwrap();
    assert!(failed.contains("name=\"max_p99\""), "{failed}");
    assert!(failed.contains("message=\"expected "), "{failed}");
    assert!(junit.contains("failures=\"1\""), "{junit}");
    // Same scenario text, same generated config: the same fingerprint,
    // though the stamps listened on other ports.
    let failed_report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("f/report.json")).unwrap()).unwrap();
    assert_eq!(
        failed_report["config_fingerprint"],
        report["config_fingerprint"]
    );
}

/// report.json and report.html say which stampgate ran, where, and with
/// which config.
fn check_provenance(report: &serde_json::Value, html: &Path) {
    let build = &report["build"];
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"), "{report}");
    let commit = build["commit"].as_str().unwrap();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{build}"
    );
    assert!(
        matches!(build["build"].as_str(), Some("plain" | "pgo")),
        "{build}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(build["host"], host.trim(), "{build}");
    let fingerprint = report["config_fingerprint"].as_str().unwrap();
    assert!(
        fingerprint.starts_with("sha256:") && fingerprint.len() == 7 + 64,
        "{fingerprint}"
    );
    let html = std::fs::read_to_string(html).unwrap();
    assert!(
        html.contains(&format!("(commit {commit}, ")),
        "commit in report.html"
    );
    assert!(html.contains(fingerprint), "fingerprint in report.html");
}

#[test]
fn list_names_every_builtin_with_its_description() {
    let out = stampgate().args(["drill", "--list"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "region-outage",
        "brownout",
        "partial-errors",
        "health-takeout",
        "flapping",
        "drain-under-load",
        "all-regions-down",
        "reload-under-load",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} listed: {stdout}"));
        assert!(
            line.len() > name.len() + 10,
            "{name} has a description: {line}"
        );
    }
}

#[test]
fn a_bad_scenario_exits_2_naming_the_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = small_scenario(100, "5s", "")
        + "[[timeline]]\nat = \"2 s\"\nstamp = \"a-1\"\nclear = true\n";
    std::fs::write(&path, text).unwrap();
    let out = stampgate()
        .args(["drill", "--scenario"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("timeline[0].at = \"2 s\""),
        "{stderr}"
    );

    let out = stampgate()
        .args(["drill", "no-such-scenario"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("region-outage"),
        "the built-ins are named"
    );
}

/// Existing targets: stamps and a proxy already running (here in the test
/// process), reached only through their URLs. The drill drives HTTP/2
/// load, drains a stamp through the admin API with the token from the
/// named variable, and injects a fault through a stamp's control URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_proxy_and_stamps_are_driven_through_their_urls() {
    use stampgate::admin::{self, Tokens};
    let a = support::stamp("a-1", "a").await;
    let b = support::stamp("b-1", "b").await;
    let p = support::Setup::new().stamp(&a).stamp(&b).start().await;
    let admin = admin::start_with_tokens(
        "127.0.0.1:0".parse().unwrap(),
        Tokens::single("drill-secret"),
        p.handle.controller.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("existing.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"existing\"\nduration = \"3s\"\n\
             [[stamps]]\nname = \"a-1\"\nregion = \"a\"\ncontrol = \"http://{}\"\n\
             [[stamps]]\nname = \"b-1\"\nregion = \"b\"\ncontrol = \"http://{}\"\n\
             [proxy]\nurl = \"http://{}\"\nadmin = \"http://{}\"\ntoken_env = \"DRILL_TOKEN\"\n\
             [load]\nrate = 100\nprotocol = \"http2\"\n\
             [[load.requests]]\npath = \"/catalogservice/api/1.0/catalogitem?limit=1\"\n\
             [[timeline]]\nat = \"1s\"\nstamp = \"a-1\"\nadmin = \"drain\"\n\
             [[timeline]]\nat = \"2s\"\nstamp = \"b-1\"\nfault = {{ latency_ms = 30 }}\n\
             [expect]\nmax_errors = 0\n",
            a.control_addr(),
            b.control_addr(),
            p.addr(),
            admin.addr,
        ),
    )
    .unwrap();
    let out = dir.path().join("report");
    let report = out.join("report.json");
    let run = tokio::task::spawn_blocking(move || {
        stampgate()
            .args(["drill"])
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .env("DRILL_TOKEN", "drill-secret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("(h2c)"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let drain_shift = json["faults"][0]["shift_ms"].as_f64();
    assert!(
        drain_shift.is_some_and(|ms| ms <= 500.0),
        "traffic left the drained stamp at once: {drain_shift:?}"
    );
    assert_eq!(
        b.fault().latency_ms,
        Some(30),
        "the fault went through b-1's control URL"
    );
    let status = support::status(&p.handle.controller).await;
    let a_admin = status["pools"][0]["stamps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "a-1")
        .map(|s| s["admin"].clone());
    assert!(
        matches!(
            a_admin.as_ref().and_then(|v| v.as_str()),
            Some("draining" | "drained")
        ),
        "the drain went through the admin API: {a_admin:?}"
    );
}

/// A reload with another config file: the drill writes it over the
/// spawned proxy's config and reloads through the admin API; the stamp the
/// new file leaves out stops getting traffic, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_another_config_takes_effect_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = |stamps: &[&str]| {
        let mut t = String::from(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [access_log]\nenabled = false\n\
             [[routes]]\nname = \"catalog\"\npath_prefix = \"/\"\npool = \"catalog\"\n",
        );
        for s in stamps {
            t.push_str(&format!(
                "[[pools.catalog.stamps]]\nname = \"{s}\"\nregion = \"{}\"\naddress = \"{{{{stamp:{s}}}}}\"\n",
                &s[..1]
            ));
        }
        t
    };
    std::fs::write(dir.path().join("before.toml"), proxy(&["a-1", "b-1"])).unwrap();
    std::fs::write(dir.path().join("after.toml"), proxy(&["b-1"])).unwrap();
    let file = dir.path().join("reload.toml");
    std::fs::write(
        &file,
        "name = \"reload-other\"\nduration = \"3s\"\n\
         [[stamps]]\nname = \"a-1\"\nregion = \"a\"\n[[stamps]]\nname = \"b-1\"\nregion = \"b\"\n\
         [proxy]\nconfig = \"before.toml\"\n[load]\nrate = 200\n\
         [[load.requests]]\npath = \"/catalogservice/api/1.0/catalogitem?limit=1\"\n\
         [[timeline]]\nat = \"1s\"\nadmin = \"reload\"\nconfig = \"after.toml\"\n\
         [expect]\nmax_errors = 0\n",
    )
    .unwrap();
    let scenario = Scenario::load(&file).unwrap();
    let out = dir.path().join("out");
    let report = drill::run(&scenario, &out, false)
        .await
        .expect("the drill runs");
    assert!(report.passed, "{}", report.summary());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let seconds = json["seconds"].as_array().unwrap();
    let a_in = |i: usize| seconds[i]["by_stamp"]["a-1"].as_u64().unwrap_or(0);
    assert!(a_in(0) > 0, "a-1 served before the reload: {}", seconds[0]);
    assert_eq!(a_in(2), 0, "a-1 left with the new config: {}", seconds[2]);
}
