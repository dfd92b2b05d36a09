//! The admin API end to end, over real sockets on port 0.
//!
//! Two halves. The first runs the admin listener in front of a
//! [`FakeController`] that records every command it receives: it pins the
//! HTTP contract (auth, parsing, status codes, event stream) and that a
//! refused request never reaches the controller. The second, the tests
//! named `with_controller_*`, runs it in front of a real proxy and
//! controller and needs the controller to carry out operator commands
//! (drain, weight, status ...): those fail while the controller still
//! answers "operator commands are being wired in".

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use stampgate::admin::{self, Tokens};
use stampgate::config::AdminSettings;
use stampgate::signals::command::{AdminError, Command, Target};
use support::*;
use tokio_util::sync::CancellationToken;

const ALICE: &str = "s3cret";
const BOB: &str = "t0ken";

fn operators() -> Tokens {
    Tokens::parse(&format!("alice={ALICE},bob={BOB}")).unwrap()
}

/// A fake controller that answers every command with `{"ok": true}` and
/// the status with a small document.
fn agreeable() -> FakeController {
    FakeController::start(|command| match command {
        Command::Status => Ok(json!({"generation": 1, "pools": []})),
        _ => Ok(json!({"ok": true})),
    })
}

async fn call(
    c: &HttpClient,
    admin: &AdminApi,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    admin_call(c, method, &admin.url(path), token, body).await
}

/// Every endpoint that changes something, with a valid body.
const CHANGES: [(&str, &str, &str); 7] = [
    ("POST", "/admin/stamps/eu-1/drain", ""),
    ("POST", "/admin/stamps/eu-1/enable", ""),
    ("POST", "/admin/stamps/eu-1/disable", ""),
    ("PUT", "/admin/stamps/eu-1/weight", r#"{"weight": 5}"#),
    ("POST", "/admin/regions/westeurope/drain", ""),
    ("POST", "/admin/regions/westeurope/enable", ""),
    ("POST", "/admin/reload", ""),
];

// ---- the HTTP contract, against a fake controller -----------------------

#[tokio::test]
async fn reads_need_no_token() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();

    let live = call(&c, &admin, Method::GET, "/live", None, "").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json(), json!({"status": "live"}));

    let status = call(&c, &admin, Method::GET, "/admin/status", None, "").await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    assert_eq!(status.header("content-type"), "application/json");
    assert_eq!(status.json(), json!({"generation": 1, "pools": []}));
    assert_eq!(fake.commands(), [(Command::Status, "reader".to_owned())]);

    let events = call(&c, &admin, Method::GET, "/admin/events", None, "").await;
    assert_eq!(events.json(), json!([]));
    let first = push_event(&fake.handle.events, "eu-1", "first");
    push_event(&fake.handle.events, "eu-1", "second");
    let events = call(&c, &admin, Method::GET, "/admin/events", None, "").await;
    let reasons: Vec<Value> = events
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("first"), json!("second")]);
    let path = format!("/admin/events?since={}", first.seq);
    let later = call(&c, &admin, Method::GET, &path, None, "").await;
    assert_eq!(
        later.json().as_array().unwrap().len(),
        1,
        "{}",
        later.text()
    );
    assert_eq!(later.json()[0]["reason"], "second");

    let index = call(&c, &admin, Method::GET, "/", None, "").await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.header("content-type"), "text/html; charset=utf-8");
    assert!(
        index.text().contains("/admin/stamps/{name}/drain"),
        "{}",
        index.text()
    );
}

#[tokio::test]
async fn changes_without_a_valid_token_are_refused_and_never_sent() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    for (method, path, body) in CHANGES {
        let method: Method = method.parse().unwrap();
        let missing = call(&c, &admin, method.clone(), path, None, body).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(missing.json()["error"], "unauthorized");
        assert!(
            missing.json()["message"]
                .as_str()
                .unwrap()
                .contains("Bearer")
        );
        assert_eq!(missing.header("www-authenticate"), "Bearer");

        for wrong in ["wrong", "s3cre", "s3cretX", "alice=s3cret", ""] {
            let a = call(&c, &admin, method.clone(), path, Some(wrong), body).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} with {wrong:?}");
            assert_eq!(a.json()["error"], "unauthorized");
        }
        let basic = http::Request::builder()
            .method(method.clone())
            .uri(admin.url(path))
            .header("authorization", format!("Basic {ALICE}"))
            .body(full(body))
            .unwrap();
        assert_eq!(send(&c, basic).await.status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        fake.commands().is_empty(),
        "no refused request reached the controller"
    );
}

#[tokio::test]
async fn each_token_speaks_for_its_operator() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    let drain = "/admin/stamps/eu-1/drain";
    let a = call(&c, &admin, Method::POST, drain, Some(ALICE), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json(), json!({"ok": true}));
    // The scheme is case-insensitive (RFC 9110).
    let lower = http::Request::post(admin.url("/admin/reload"))
        .header("authorization", format!("bearer {BOB}"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&c, lower).await.status, StatusCode::OK);
    let who: Vec<String> = fake.commands().into_iter().map(|(_, w)| w).collect();
    assert_eq!(who, ["alice", "bob"]);

    let single = FakeController::start(|_| Ok(json!({})));
    let admin = AdminApi::start(single.handle.clone(), Tokens::single("only")).await;
    let a = call(&c, &admin, Method::POST, "/admin/reload", Some("only"), "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        single.commands(),
        [(Command::Reload, "operator".to_owned())]
    );
}

#[tokio::test]
async fn without_a_configured_token_changes_are_refused_with_the_reason() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), Tokens::none()).await;
    let c = http1_client();
    for (method, path, body) in CHANGES {
        let a = call(
            &c,
            &admin,
            method.parse().unwrap(),
            path,
            Some("anything"),
            body,
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        let message = a.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("no admin token is configured"),
            "{message}"
        );
        assert!(message.contains("admin.token_env"), "{message}");
    }
    let status = call(&c, &admin, Method::GET, "/admin/status", None, "").await;
    assert_eq!(status.status, StatusCode::OK, "reads still work");
    assert_eq!(fake.commands(), [(Command::Status, "reader".to_owned())]);
}

#[tokio::test]
async fn a_non_loopback_listener_without_a_token_refuses_to_start() {
    let fake = agreeable();
    let anywhere = "0.0.0.0:0".parse().unwrap();
    let e = admin::start_with_tokens(
        anywhere,
        Tokens::none(),
        fake.handle.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("admin.listen") && message.contains("0.0.0.0:0"),
        "{message}"
    );
    assert!(message.contains("admin.token_env"), "{message}");

    // Through the config: the variable it names is unset (a name no
    // environment has), so there is no token either.
    let settings = AdminSettings {
        listen: anywhere,
        token_env: Some("STAMPGATE_TEST_TOKEN_NEVER_SET_7F3A".into()),
        state_file: None,
    };
    let e = admin::start(&settings, fake.handle.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("STAMPGATE_TEST_TOKEN_NEVER_SET_7F3A"),
        "{message}"
    );
    assert!(message.contains("admin.listen"), "{message}");
    let settings = AdminSettings {
        token_env: None,
        ..settings
    };
    let e = admin::start(&settings, fake.handle.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("admin.token_env is not set"), "{e}");

    // With a token, the same address is fine.
    let stop = CancellationToken::new();
    let h = admin::start_with_tokens(anywhere, operators(), fake.handle.clone(), stop.clone())
        .await
        .expect("starts with a token");
    assert_ne!(h.addr.port(), 0);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), h.closed())
        .await
        .expect("stops on cancel");
}

#[tokio::test]
async fn every_change_endpoint_sends_its_command() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    let stamp = || Target::Stamp("eu-1".into());
    let region = || Target::Region("westeurope".into());
    let cases: Vec<(&str, &str, &str, Command)> = vec![
        (
            "POST",
            "/admin/stamps/eu-1/drain",
            "",
            Command::Drain {
                target: stamp(),
                deadline: None,
                dry_run: false,
                force: false,
            },
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain?deadline=30s&dry_run=1",
            "",
            Command::Drain {
                target: stamp(),
                deadline: Some(Duration::from_secs(30)),
                dry_run: true,
                force: false,
            },
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain",
            r#"{"deadline": "1m30s", "dry_run": true}"#,
            Command::Drain {
                target: stamp(),
                deadline: Some(Duration::from_secs(90)),
                dry_run: true,
                force: false,
            },
        ),
        (
            "POST",
            "/admin/stamps/eu-1/enable",
            "",
            Command::Enable { target: stamp() },
        ),
        (
            "POST",
            "/admin/stamps/eu-1/disable",
            "",
            Command::Disable {
                stamp: "eu-1".into(),
            },
        ),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            r#"{"weight": 250}"#,
            Command::Weight {
                stamp: "eu-1".into(),
                weight: Some(250),
            },
        ),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            r#"{"weight": null}"#,
            Command::Weight {
                stamp: "eu-1".into(),
                weight: None,
            },
        ),
        (
            "POST",
            "/admin/regions/westeurope/drain?force=1&deadline=10s",
            "",
            Command::Drain {
                target: region(),
                deadline: Some(Duration::from_secs(10)),
                dry_run: false,
                force: true,
            },
        ),
        (
            "POST",
            "/admin/regions/westeurope/drain",
            r#"{"force": true, "dry_run": true}"#,
            Command::Drain {
                target: region(),
                deadline: None,
                dry_run: true,
                force: true,
            },
        ),
        (
            "POST",
            "/admin/regions/westeurope/enable",
            "",
            Command::Enable { target: region() },
        ),
        ("POST", "/admin/reload", "", Command::Reload),
    ];
    let mut expected = Vec::new();
    for (method, path, body, command) in cases {
        let a = call(&c, &admin, method.parse().unwrap(), path, Some(ALICE), body).await;
        assert_eq!(a.status, StatusCode::OK, "{method} {path}: {}", a.text());
        assert_eq!(a.json(), json!({"ok": true}));
        expected.push((command, "alice".to_owned()));
    }
    assert_eq!(fake.commands(), expected);
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field_and_never_sent() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    let cases = [
        (
            "POST",
            "/admin/stamps/eu-1/drain?deadline=soon",
            "",
            "deadline: ",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain?deadline=30",
            "",
            "deadline: ",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain",
            r#"{"deadline": 30}"#,
            "deadline: ",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain?dry_run=perhaps",
            "",
            "dry_run: ",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain?dryrun=1",
            "",
            "dryrun: unknown query parameter",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain",
            r#"{"dryrun": true}"#,
            "dryrun: unknown field",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/drain",
            "{not json",
            "body: not valid JSON",
        ),
        (
            "POST",
            "/admin/regions/westeurope/drain?force=2",
            "",
            "force: ",
        ),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            r#"{"weight": 1001}"#,
            "weight: expected an integer 0..=1000 or null",
        ),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            r#"{"weight": "ten"}"#,
            "weight: expected an integer 0..=1000 or null",
        ),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            r#"{"weight": -3}"#,
            "weight: expected an integer 0..=1000 or null",
        ),
        ("PUT", "/admin/stamps/eu-1/weight", "", "weight: required"),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            "[5]",
            "body: expected a JSON object",
        ),
        (
            "POST",
            "/admin/reload?now=1",
            "",
            "now: unknown query parameter",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/enable",
            r#"{"force": true}"#,
            "force: unknown field",
        ),
    ];
    for (method, path, body, message) in cases {
        let a = call(&c, &admin, method.parse().unwrap(), path, Some(ALICE), body).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {}",
            a.text()
        );
        assert_eq!(a.json()["error"], "invalid");
        let got = a.json()["message"].as_str().unwrap().to_owned();
        assert!(got.starts_with(message), "{method} {path} {body}: {got}");
    }
    let a = call(
        &c,
        &admin,
        Method::GET,
        "/admin/events?since=yesterday",
        None,
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json()["message"].as_str().unwrap().starts_with("since: "));
    assert!(
        fake.commands().is_empty(),
        "bad input never reached the controller"
    );
}

#[tokio::test]
async fn controller_refusals_keep_their_status_and_message() {
    let fake = FakeController::start(|command| match command {
        Command::Drain {
            target: Target::Stamp(s),
            ..
        } => Err(AdminError::UnknownStamp(s.clone())),
        Command::Drain {
            target: Target::Region(r),
            force: false,
            ..
        } => Err(AdminError::Refused(format!(
            "{r} is the last usable region of pool p"
        ))),
        Command::Enable {
            target: Target::Region(r),
        } => Err(AdminError::UnknownRegion(r.clone())),
        Command::Reload => Err(AdminError::Reload("test.toml:3: bad".into())),
        Command::Weight { .. } => Err(AdminError::Invalid {
            field: "weight".into(),
            message: "too heavy".into(),
        }),
        Command::Disable { .. } => Err(AdminError::Unavailable),
        _ => Ok(json!({"ok": true})),
    });
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    let cases = [
        (
            "POST",
            "/admin/stamps/ghost/drain",
            "",
            StatusCode::NOT_FOUND,
            "unknown-stamp",
            "\"ghost\"",
        ),
        (
            "POST",
            "/admin/regions/mars/enable",
            "",
            StatusCode::NOT_FOUND,
            "unknown-region",
            "\"mars\"",
        ),
        (
            "POST",
            "/admin/regions/westeurope/drain",
            "",
            StatusCode::CONFLICT,
            "refused",
            "last usable region",
        ),
        (
            "POST",
            "/admin/reload",
            "",
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload",
            "test.toml:3: bad",
        ),
        (
            "PUT",
            "/admin/stamps/eu-1/weight",
            r#"{"weight": 7}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "weight: too heavy",
        ),
        (
            "POST",
            "/admin/stamps/eu-1/disable",
            "",
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "not running",
        ),
    ];
    for (method, path, body, status, kind, message) in cases {
        let a = call(&c, &admin, method.parse().unwrap(), path, Some(BOB), body).await;
        assert_eq!(a.status, status, "{path}: {}", a.text());
        assert_eq!(a.json()["error"], kind, "{path}");
        let got = a.json()["message"].as_str().unwrap().to_owned();
        assert!(got.contains(message), "{path}: {got}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    for path in [
        "/nope",
        "/admin",
        "/admin/stamps/eu-1",
        "/admin/stamps/eu-1/explode",
        "/metrics/extra",
    ] {
        let a = call(&c, &admin, Method::GET, path, None, "").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.json()["error"], "not-found");
        assert!(
            a.json()["message"].as_str().unwrap().contains(path),
            "{}",
            a.text()
        );
    }
    let cases = [
        (Method::GET, "/admin/stamps/eu-1/drain", "POST"),
        (Method::POST, "/admin/stamps/eu-1/weight", "PUT"),
        (Method::DELETE, "/admin/status", "GET, HEAD"),
        (Method::POST, "/live", "GET, HEAD"),
        (Method::GET, "/admin/reload", "POST"),
    ];
    for (method, path, allow) in cases {
        // With a valid token too: the method is wrong whoever asks.
        let a = call(&c, &admin, method.clone(), path, Some(ALICE), "").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(a.header("allow"), allow, "{method} {path}");
        assert_eq!(a.json()["error"], "method-not-allowed");
    }
    assert!(fake.commands().is_empty(), "{:?}", fake.commands());
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    let big = format!(r#"{{"weight": 5, "pad": "{}"}}"#, "x".repeat(64 * 1024));
    let a = call(
        &c,
        &admin,
        Method::PUT,
        "/admin/stamps/eu-1/weight",
        Some(ALICE),
        &big,
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    assert_eq!(a.json()["error"], "too-large");

    // A chunked body (no Content-Length) is cut at the limit as it is read.
    let chunks = futures_util::stream::iter((0..80).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(vec![
            b' ';
            1024
        ])))
    }));
    let body: TestBody = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
        http_body_util::StreamBody::new(chunks),
        |e: std::convert::Infallible| -> Box<dyn std::error::Error + Send + Sync> { match e {} },
    ));
    let req = http::Request::post(admin.url("/admin/stamps/eu-1/drain"))
        .header("authorization", format!("Bearer {ALICE}"))
        .body(body)
        .unwrap();
    assert_eq!(send(&c, req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fake.commands().is_empty(), "{:?}", fake.commands());
}

#[tokio::test]
async fn ready_needs_a_published_table() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let c = http1_client();
    let a = call(&c, &admin, Method::GET, "/ready", None, "").await;
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "generation 0: {}",
        a.text()
    );
    assert_eq!(a.json()["status"], "not-ready");
    let live = call(&c, &admin, Method::GET, "/live", None, "").await;
    assert_eq!(live.status, StatusCode::OK, "live even when not ready");
}

#[tokio::test]
async fn ready_follows_the_routing_table_of_a_real_proxy() {
    let s = stamp("eu-1", "westeurope").await;
    let p = Setup::new().stamp(&s).start().await;
    let admin = AdminApi::start(p.handle.controller.clone(), operators()).await;
    let c = http1_client();
    let a = call(&c, &admin, Method::GET, "/ready", None, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["status"], "ready");

    // A fail-closed pool whose only stamp is down: not ready once it is
    // found unhealthy.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let p = Setup::new()
        .address("gone-1", "westeurope", &dead_addr)
        .pool("all_unhealthy = \"fail-closed\"")
        .extra(
            "[pools.p.probe]\ninterval = \"100ms\"\nunhealthy_interval = \"100ms\"\ntimeout = \"50ms\"\n\
             sample_size = 2\nsuccessful_samples_required = 2\njitter_percent = 0\n",
        )
        .start()
        .await;
    let mut events = p.handle.controller.events.subscribe();
    let admin = AdminApi::start(p.handle.controller.clone(), operators()).await;
    let unhealthy = async {
        loop {
            let e = events.recv().await.expect("event log open");
            if e.to.as_deref() == Some("unhealthy") {
                return;
            }
        }
    };
    let seen = p.handle.controller.events.since(0);
    if !seen.iter().any(|e| e.to.as_deref() == Some("unhealthy")) {
        tokio::time::timeout(Duration::from_secs(10), unhealthy)
            .await
            .expect("the dead stamp is found unhealthy");
    }
    let a = call(&c, &admin, Method::GET, "/ready", None, "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(
        a.json()["reason"].as_str().unwrap().contains("no pool"),
        "{}",
        a.text()
    );
}

#[tokio::test]
async fn events_follow_streams_the_recent_then_new_events() {
    let fake = agreeable();
    let admin = AdminApi::start(fake.handle.clone(), operators()).await;
    let log = fake.handle.events.clone();
    let before = push_event(&log, "eu-1", "before");

    let c = http1_client();
    let req = http::Request::get(admin.url("/admin/events?follow=1"))
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buffer = String::new();
    let first: Value =
        serde_json::from_str(&next_sse_data(&mut body, &mut buffer).await.unwrap()).unwrap();
    assert_eq!(first["reason"], "before");
    assert_eq!(first["seq"], before.seq);

    // The response head arrived, so the stream is subscribed: this one is live.
    push_event(&log, "us-1", "after");
    let live: Value =
        serde_json::from_str(&next_sse_data(&mut body, &mut buffer).await.unwrap()).unwrap();
    assert_eq!(live["reason"], "after");
    assert_eq!(live["stamp"], "us-1");

    // A follower resuming with ?since= gets only what it missed.
    let path = format!("/admin/events?follow=1&since={}", before.seq);
    let req = http::Request::get(admin.url(&path)).body(empty()).unwrap();
    let mut resumed = c.request(req).await.unwrap().into_body();
    let mut buffer = String::new();
    let next: Value =
        serde_json::from_str(&next_sse_data(&mut resumed, &mut buffer).await.unwrap()).unwrap();
    assert_eq!(next["reason"], "after");

    // Shutdown ends the stream.
    admin.stop.cancel();
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        next_sse_data(&mut body, &mut String::new()),
    )
    .await;
    assert_eq!(end.expect("the stream ends on shutdown"), None);
}

// ---- with the real controller (needs operator commands implemented) ----

/// Two stamps in two regions behind a real proxy, and its admin API.
struct World {
    _stamps: Vec<stampgate::stamp::Stamp>,
    proxy: Proxy,
    admin: AdminApi,
    c: HttpClient,
}

async fn world() -> World {
    let eu = stamp("eu-1", "westeurope").await;
    let us = stamp("us-1", "eastus2").await;
    let proxy = Setup::new().stamp(&eu).stamp(&us).start().await;
    let admin = AdminApi::start(proxy.handle.controller.clone(), operators()).await;
    World {
        _stamps: vec![eu, us],
        proxy,
        admin,
        c: http1_client(),
    }
}

impl World {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Answer {
        call(&self.c, &self.admin, method, path, token, body).await
    }

    async fn status(&self) -> Value {
        let a = self.call(Method::GET, "/admin/status", None, "").await;
        assert_eq!(a.status, StatusCode::OK, "status: {}", a.text());
        a.json()
    }

    /// `(name, admin state)` of every stamp.
    async fn admin_states(&self) -> Vec<(String, String)> {
        let status = self.status().await;
        status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["stamps"].as_array().unwrap().clone())
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["admin"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn stamp_status(&self, name: &str) -> Value {
        let status = self.status().await;
        status["pools"][0]["stamps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {status}"))
    }
}

fn active_all() -> Vec<(String, String)> {
    vec![
        ("eu-1".into(), "active".into()),
        ("us-1".into(), "active".into()),
    ]
}

#[tokio::test]
async fn with_controller_status_lists_every_stamp() {
    let w = world().await;
    let status = w.status().await;
    assert!(status["generation"].as_u64().unwrap() >= 1, "{status}");
    let pool = &status["pools"][0];
    assert_eq!(pool["name"], "p");
    assert_eq!(pool["failing_open"], false);
    let eu = w.stamp_status("eu-1").await;
    assert_eq!(eu["region"], "westeurope");
    assert_eq!(eu["admin"], "active");
    assert_eq!(eu["configured_weight"], 100);
    assert_eq!(eu["weight_override"], Value::Null);
    for field in [
        "health",
        "effective_weight",
        "traffic_share",
        "requests_per_second",
        "in_flight",
    ] {
        assert!(!eu[field].is_null(), "{field} in {eu}");
    }
}

#[tokio::test]
async fn with_controller_refused_changes_change_nothing() {
    let w = world().await;
    assert_eq!(w.admin_states().await, active_all());
    let drain = "/admin/stamps/eu-1/drain";
    assert_eq!(
        w.call(Method::POST, drain, None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        w.call(Method::POST, drain, Some("nope"), "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let weight = "/admin/stamps/eu-1/weight";
    let a = w
        .call(Method::PUT, weight, Some("nope"), r#"{"weight": 0}"#)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.admin_states().await, active_all(), "nothing changed");
    assert_eq!(w.stamp_status("eu-1").await["weight_override"], Value::Null);

    let a = w.call(Method::POST, drain, Some(ALICE), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let eu = w.stamp_status("eu-1").await;
    assert!(
        matches!(eu["admin"].as_str(), Some("draining" | "drained")),
        "{eu}"
    );
    let events = serde_json::to_string(&w.proxy.handle.controller.events.since(0)).unwrap();
    assert!(
        events.contains("alice"),
        "the event log records who: {events}"
    );
}

#[tokio::test]
async fn with_controller_unknown_names_are_404_naming_them() {
    let w = world().await;
    let cases = [
        (Method::POST, "/admin/stamps/ghost/drain", "", "ghost"),
        (Method::POST, "/admin/stamps/ghost/enable", "", "ghost"),
        (Method::POST, "/admin/stamps/ghost/disable", "", "ghost"),
        (
            Method::PUT,
            "/admin/stamps/ghost/weight",
            r#"{"weight": 5}"#,
            "ghost",
        ),
        (Method::POST, "/admin/regions/mars/drain", "", "mars"),
        (Method::POST, "/admin/regions/mars/enable", "", "mars"),
    ];
    for (method, path, body, name) in cases {
        let a = w.call(method, path, Some(ALICE), body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.text());
        assert!(
            a.json()["message"].as_str().unwrap().contains(name),
            "{}",
            a.text()
        );
    }
}

#[tokio::test]
async fn with_controller_dry_run_predicts_and_changes_nothing() {
    let w = world().await;
    let a = w
        .call(
            Method::POST,
            "/admin/stamps/eu-1/drain?dry_run=1",
            Some(ALICE),
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(!a.json()["shares"].is_null(), "{}", a.text());
    assert_eq!(w.admin_states().await, active_all());
}

#[tokio::test]
async fn with_controller_disable_enable_and_weight() {
    let w = world().await;
    let a = w
        .call(Method::POST, "/admin/stamps/us-1/disable", Some(BOB), "")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(w.stamp_status("us-1").await["admin"], "disabled");
    let a = w
        .call(Method::POST, "/admin/stamps/us-1/enable", Some(BOB), "")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(w.stamp_status("us-1").await["admin"], "active");

    let weight = "/admin/stamps/us-1/weight";
    let a = w
        .call(Method::PUT, weight, Some(BOB), r#"{"weight": 300}"#)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(w.stamp_status("us-1").await["weight_override"], 300);
    let a = w
        .call(Method::PUT, weight, Some(BOB), r#"{"weight": null}"#)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(w.stamp_status("us-1").await["weight_override"], Value::Null);
}

#[tokio::test]
async fn with_controller_the_last_region_needs_force() {
    let w = world().await;
    let a = w
        .call(
            Method::POST,
            "/admin/regions/westeurope/drain",
            Some(ALICE),
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let last = "/admin/regions/eastus2/drain";
    let a = w.call(Method::POST, last, Some(ALICE), "").await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text());
    assert_eq!(a.json()["error"], "refused");
    assert_eq!(w.stamp_status("us-1").await["admin"], "active");
    let a = w
        .call(Method::POST, &format!("{last}?force=1"), Some(ALICE), "")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    for region in ["westeurope", "eastus2"] {
        let path = format!("/admin/regions/{region}/enable");
        assert_eq!(
            w.call(Method::POST, &path, Some(ALICE), "").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(w.admin_states().await, active_all());
}

#[tokio::test]
async fn with_controller_a_drain_appears_on_the_event_stream() {
    let w = world().await;
    let req = http::Request::get(w.admin.url("/admin/events?follow=1"))
        .body(empty())
        .unwrap();
    let mut body = w.c.request(req).await.unwrap().into_body();
    let a = w
        .call(Method::POST, "/admin/stamps/eu-1/drain", Some(ALICE), "")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let mut buffer = String::new();
    loop {
        let data = next_sse_data(&mut body, &mut buffer)
            .await
            .expect("stream open");
        let event: Value = serde_json::from_str(&data).unwrap();
        if event["kind"] == "operator" && event["stamp"] == "eu-1" {
            break;
        }
    }
}

#[tokio::test]
async fn with_controller_reload_applies_a_valid_file_and_refuses_a_broken_one() {
    let eu = stamp("eu-1", "westeurope").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stampgate.toml");
    let setup = Setup::new().stamp(&eu);
    std::fs::write(&path, setup.toml()).unwrap();
    let config = stampgate::config::load(&path).unwrap();
    let handle = stampgate::app::App::start(&config, None).await.unwrap();
    let admin = AdminApi::start(handle.controller.clone(), operators()).await;
    let c = http1_client();
    let a = call(&c, &admin, Method::POST, "/admin/reload", Some(ALICE), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    std::fs::write(&path, "[proxy]\nlisten = 5\n").unwrap();
    let a = call(&c, &admin, Method::POST, "/admin/reload", Some(ALICE), "").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text());
    assert_eq!(a.json()["error"], "reload");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("proxy.listen"),
        "{}",
        a.text()
    );
}

/// `GET /admin/history`: after some traffic, per-second samples with each
/// stamp's observed share and its region's figures, so a dashboard opened
/// now can draw the last minutes.
#[tokio::test]
async fn history_has_per_second_samples_after_load() {
    let eu = stamp("eu-1", "westeurope").await;
    let us = stamp("us-1", "eastus2").await;
    let p = Setup::new().stamp(&eu).stamp(&us).start().await;
    let api = AdminApi::start(p.handle.controller.clone(), Tokens::single(ALICE)).await;
    let client = http1_client();
    let url = p.url("/catalogservice/api/1.0/headers");
    eventually(
        "a sample shows the traffic, per stamp and region",
        async || {
            for _ in 0..20 {
                assert_eq!(get(&client, &url).await.status, StatusCode::OK);
            }
            let a = get(&client, &api.url("/admin/history")).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            let v = a.json();
            assert_eq!(v["interval_s"], 1);
            v["samples"].as_array().unwrap().iter().any(|s| {
                let share = |name: &str| s["stamps"][name]["share"].as_f64().unwrap_or(0.0);
                s["stamps"]["eu-1"]["rps"].as_f64().unwrap_or(0.0) > 0.0
                    && (share("eu-1") + share("us-1") - 1.0).abs() < 0.01
                    && s["regions"]["westeurope"]["share"].as_f64() == Some(share("eu-1"))
            })
        },
    )
    .await;
}
