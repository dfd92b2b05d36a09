//! Operating stampgate through the controller's command interface: drains
//! (under load, with a deadline, of the last region, as a dry run),
//! persisted decisions across restarts, and hot reload. The admin HTTP
//! layer on top is tested in `admin.rs`.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::Value;
use stampgate::signals::command::{AdminError, Command, Target};
use stampgate::stamp::{Fault, Stamp};
use support::*;
use tokio::time::Instant;

const ITEMS: &str = "/catalogservice/api/1.0/catalogitem?limit=1";

async fn three() -> Vec<Stamp> {
    vec![
        stamp("westeurope-1", "westeurope").await,
        stamp("eastus2-1", "eastus2").await,
        stamp("southeastasia-1", "southeastasia").await,
    ]
}

fn setup(stamps: &[Stamp]) -> Setup {
    stamps
        .iter()
        .fold(Setup::new(), |s, st| s.stamp(st))
        .pool("slow_start = \"0s\"")
        .extra("[pools.p.probe]\ninterval = \"200ms\"\ntimeout = \"150ms\"\njitter_percent = 0\n")
}

fn stamp_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["stamps"].as_array().unwrap())
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} in status: {status}"))
}

async fn status(p: &Proxy) -> Value {
    support::status(&p.handle.controller).await
}

fn drain(name: &str) -> Command {
    drain_of(Target::Stamp(name.into()), None, false, false)
}

fn drain_of(target: Target, deadline: Option<Duration>, dry_run: bool, force: bool) -> Command {
    Command::Drain {
        target,
        deadline,
        dry_run,
        force,
    }
}

fn tries(p: &Proxy, name: &str) -> u64 {
    let t = p.handle.routing.load();
    let s = t.pools[0].stamps.iter().find(|s| &*s.name == name).unwrap();
    s.stats.requests.load(Ordering::Relaxed)
}

/// Requests at the stamp now: the gauge the request path keeps, which
/// lives as long as the stamp, across table generations.
fn in_flight(p: &Proxy, name: &str) -> u64 {
    let t = p.handle.routing.load();
    let s = t.pools[0].stamps.iter().find(|s| &*s.name == name).unwrap();
    s.stats.in_flight.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_moves_traffic_at_once_without_errors() {
    let stamps = three().await;
    let p = setup(&stamps).start().await;
    let url = p.url(ITEMS);
    let load = tokio::spawn(async move {
        let c = http1_client();
        let mut failed = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if get(&c, &url).await.status != StatusCode::OK {
                failed += 1;
            }
        }
        failed
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = p
        .handle
        .controller
        .command(drain("eastus2-1"), "alice")
        .await
        .unwrap();
    assert_eq!(answer["stamps"][0]["name"], "eastus2-1");
    let at_drain = tries(&p, "eastus2-1");
    assert_eq!(load.await.unwrap(), 0, "no failed request during the drain");
    assert!(
        tries(&p, "eastus2-1") <= at_drain + 4,
        "no new requests after the drain (a few were already being sent)"
    );
    let s = status(&p).await;
    assert_eq!(stamp_status(&s, "eastus2-1")["admin"], "drained");
    assert_eq!(stamp_status(&s, "eastus2-1")["effective_weight"], 0);
    let events = p.handle.controller.events.since(0);
    assert!(
        events
            .iter()
            .any(|e| e.reason.contains("by alice") && e.stamp.as_deref() == Some("eastus2-1")),
        "the event log records who"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_and_a_deadline_cuts_a_long_one() {
    let stamps = three().await;
    let p = setup(&stamps).start().await;
    // Only one stamp serves, slowly.
    for name in ["eastus2-1", "southeastasia-1"] {
        p.handle
            .controller
            .command(drain(name), "test")
            .await
            .unwrap();
    }
    stamps[0].set_fault(Fault {
        latency_ms: Some(600),
        ..Fault::default()
    });
    let url = p.url("/catalogservice/api/1.0/echo");
    let c = http1_client();
    let post = |c: HttpClient, url: String| async move {
        send(&c, Request::post(&url).body(full("x")).unwrap()).await
    };
    // 1. Without a deadline the in-flight request finishes.
    let slow = tokio::spawn(post(c.clone(), url.clone()));
    eventually("the POST is at the stamp", async || {
        in_flight(&p, "westeurope-1") == 1
    })
    .await;
    let force_drain = Command::Drain {
        target: Target::Stamp("westeurope-1".into()),
        deadline: None,
        dry_run: false,
        force: true,
    };
    p.handle
        .controller
        .command(force_drain, "test")
        .await
        .unwrap();
    assert_eq!(
        slow.await.unwrap().status,
        StatusCode::OK,
        "in-flight request completed"
    );

    // 2. With a deadline it is cut.
    p.handle
        .controller
        .command(
            Command::Enable {
                target: Target::Stamp("westeurope-1".into()),
            },
            "test",
        )
        .await
        .unwrap();
    stamps[0].set_fault(Fault {
        latency_ms: Some(5_000),
        ..Fault::default()
    });
    // The first POST's count ends with its body, which may be a moment
    // after the client has it all: wait for that, then for the new one.
    eventually("the first POST has left the stamp", async || {
        in_flight(&p, "westeurope-1") == 0
    })
    .await;
    let slow = tokio::spawn(post(c.clone(), url.clone()));
    eventually("the second POST is at the stamp", async || {
        in_flight(&p, "westeurope-1") == 1
    })
    .await;
    let deadline_drain = Command::Drain {
        target: Target::Stamp("westeurope-1".into()),
        deadline: Some(Duration::from_millis(300)),
        dry_run: false,
        force: true,
    };
    let started = Instant::now();
    p.handle
        .controller
        .command(deadline_drain, "test")
        .await
        .unwrap();
    let a = slow.await.unwrap();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.header("x-stampgate-error"), "stamp-drain-deadline");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut at the deadline, not at 5 s"
    );
    stamps[0].clear_fault();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_the_last_region_needs_force_and_a_dry_run_changes_nothing() {
    let stamps = three().await;
    let p = setup(&stamps).start().await;
    let c = &p.handle.controller;
    let dry = c
        .command(
            Command::Drain {
                target: Target::Region("westeurope".into()),
                deadline: None,
                dry_run: true,
                force: false,
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(dry["shares"]["p"]["westeurope-1"], 0.0, "{dry}");
    assert_eq!(dry["shares"]["p"]["eastus2-1"], 0.5, "{dry}");
    let s = status(&p).await;
    assert_eq!(
        stamp_status(&s, "westeurope-1")["admin"],
        "active",
        "dry run changed nothing"
    );

    for region in ["westeurope", "eastus2"] {
        let cmd = Command::Drain {
            target: Target::Region(region.into()),
            deadline: None,
            dry_run: false,
            force: false,
        };
        c.command(cmd, "test").await.unwrap();
    }
    let last = Command::Drain {
        target: Target::Region("southeastasia".into()),
        deadline: None,
        dry_run: false,
        force: false,
    };
    match c.command(last.clone(), "test").await {
        Err(AdminError::Refused(why)) => assert!(why.contains("force"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let forced = Command::Drain {
        target: Target::Region("southeastasia".into()),
        deadline: None,
        dry_run: false,
        force: true,
    };
    c.command(forced, "test").await.unwrap();
    assert!(matches!(
        c.command(drain("nope"), "test").await,
        Err(AdminError::UnknownStamp(n)) if n == "nope"
    ));
    let unknown_region = Command::Enable {
        target: Target::Region("mars".into()),
    };
    assert!(matches!(
        c.command(unknown_region, "test").await,
        Err(AdminError::UnknownRegion(_))
    ));
    let bad_weight = Command::Weight {
        stamp: "eastus2-1".into(),
        weight: Some(5000),
    };
    assert!(matches!(
        c.command(bad_weight, "test").await,
        Err(AdminError::Invalid { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_survive_a_restart_and_a_corrupt_state_file_refuses_to_start() {
    let stamps = three().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let config = setup(&stamps)
        .admin(&format!("state_file = \"{}\"", state.display()))
        .config();

    let first = stampgate::app::App::start(&config, None).await.unwrap();
    first
        .controller
        .command(drain("westeurope-1"), "test")
        .await
        .unwrap();
    let weight = Command::Weight {
        stamp: "eastus2-1".into(),
        weight: Some(7),
    };
    first.controller.command(weight, "test").await.unwrap();
    first.shutdown().await;

    let second = stampgate::app::App::start(&config, None).await.unwrap();
    let s = support::status(&second.controller).await;
    assert_eq!(
        stamp_status(&s, "westeurope-1")["admin"],
        "drained",
        "drain restored"
    );
    assert_eq!(
        stamp_status(&s, "eastus2-1")["weight_override"],
        7,
        "weight restored"
    );
    second.shutdown().await;

    std::fs::write(&state, b"{ this is not json").unwrap();
    let err = stampgate::app::App::start(&config, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("state.json"), "{err}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"{ this is not json",
        "left byte-identical"
    );

    // A decision for a stamp the config no longer has is kept aside.
    std::fs::write(
        &state,
        br#"{"version":1,"stamps":{"gone-1":{"admin":"disabled"},"westeurope-1":{"admin":"draining"}}}"#,
    )
    .unwrap();
    let third = stampgate::app::App::start(&config, None).await.unwrap();
    let s = support::status(&third.controller).await;
    assert_eq!(s["orphaned_decisions"][0]["stamp"], "gone-1", "{s}");
    // Writing a new decision keeps the orphan in the file.
    third
        .controller
        .command(
            Command::Enable {
                target: Target::Stamp("westeurope-1".into()),
            },
            "test",
        )
        .await
        .unwrap();
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("gone-1"), "{text}");
    third.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_changes_routing_without_failed_requests() {
    let stamps = three().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stampgate.toml");
    let two = setup(&stamps[..2]);
    std::fs::write(&path, two.toml()).unwrap();
    let config = stampgate::config::load(&path).unwrap();
    let handle = stampgate::app::App::start(&config, None).await.unwrap();
    let url = format!("http://{}{ITEMS}", handle.listen[0]);
    let load = tokio::spawn(async move {
        let c = http1_client();
        let mut failed = 0;
        let mut seen = std::collections::BTreeSet::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            let a = get(&c, &url).await;
            if a.status != StatusCode::OK {
                failed += 1;
            }
            seen.insert(a.header("x-server-name").to_owned());
        }
        (failed, seen)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Valid change: the third stamp joins.
    std::fs::write(&path, setup(&stamps).toml()).unwrap();
    let answer = handle
        .controller
        .command(Command::Reload, "test")
        .await
        .unwrap();
    assert_eq!(answer["stamps_added"][0], "southeastasia-1", "{answer}");
    let generation = answer["generation"].as_u64().unwrap();
    assert!(
        *handle.controller.published().borrow() >= generation,
        "the reload's table is announced: {answer}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Invalid change: refused, the old config keeps serving.
    std::fs::write(&path, "[proxy]\nlisten = [\"not an address\"]\n").unwrap();
    match handle.controller.command(Command::Reload, "test").await {
        Err(AdminError::Reload(why)) => assert!(why.contains("proxy.listen"), "{why}"),
        other => panic!("expected a refused reload, got {other:?}"),
    }
    let (failed, seen) = load.await.unwrap();
    assert_eq!(failed, 0, "no failed request across two reloads");
    assert!(
        seen.contains("southeastasia-1"),
        "the new stamp took traffic: {seen:?}"
    );
    let s = support::status(&handle.controller).await;
    assert_eq!(s["last_reload"]["ok"], false, "{s}");
    let events = handle.controller.events.since(0);
    assert!(
        events
            .iter()
            .any(|e| e.reason.starts_with("reload refused"))
    );
    handle.shutdown().await;
}
