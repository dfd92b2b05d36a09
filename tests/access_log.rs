//! The access log: one JSON line per request with the fields an incident
//! needs, request tracing ids carried through, and sampling that never
//! hides an error.

mod support;

use std::path::Path;

use serde_json::Value;
use stampgate::stamp::Fault;
use support::*;

/// The log's complete lines, parsed: the writer may be half-way through
/// the last one.
fn written(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The log's lines once `count` have been written (the writer thread
/// flushes when its queue is empty).
async fn lines(path: &Path, count: usize) -> Vec<Value> {
    eventually(&format!("{count} lines in the access log"), async || {
        written(path).len() >= count
    })
    .await;
    written(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_line_with_its_facts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let s = stamp("westeurope-1", "westeurope").await;
    let p = Setup::new()
        .stamp(&s)
        .access_log(&format!("path = {:?}", log.display().to_string()))
        .start()
        .await;
    let c = http1_client();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get(p.url("/catalogservice/api/1.0/catalogitem?limit=2&token=secret"))
        .header("x-request-id", "client-chosen-id")
        .header("traceparent", trace)
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, http::StatusCode::OK);
    assert_eq!(a.header("x-request-id"), "client-chosen-id");
    let b = get(&c, &p.url("/nowhere")).await;
    assert_eq!(b.status, http::StatusCode::NOT_FOUND);

    let got = lines(&log, 2).await;
    let ok = &got[0];
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/catalogservice/api/1.0/catalogitem");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "main");
    assert_eq!(ok["stamp"], "westeurope-1");
    assert_eq!(ok["region"], "westeurope");
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["request_id"], "client-chosen-id");
    assert_eq!(ok["traceparent"], trace);
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["aborted"], false);
    assert_eq!(ok["bytes"], a.body.len() as u64);
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    let (total, upstream) = (
        ok["duration_ms"].as_f64().unwrap(),
        ok["upstream_ms"].as_f64().unwrap(),
    );
    assert!(upstream > 0.0 && upstream <= total, "{ok}");
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("secret"),
        "query strings stay out of the log"
    );

    let missed = &got[1];
    assert_eq!(missed["status"], 404);
    assert_eq!(missed["route"], Value::Null);
    assert_eq!(missed["attempts"], 0);
    assert_eq!(missed["error"], "no-route");
    assert_eq!(missed["request_id"], b.header("x-request-id"));
}

/// `format = "combined"`: Apache's combined format, as log analysers read
/// it, with the client's Referer and User-Agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_format_is_apaches() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let s = stamp("westeurope-1", "westeurope").await;
    let p = Setup::new()
        .stamp(&s)
        .access_log(&format!(
            "format = \"combined\"\npath = {:?}",
            log.display().to_string()
        ))
        .start()
        .await;
    let c = http1_client();
    let req = http::Request::get(p.url("/catalogservice/api/1.0/catalogitem?limit=1"))
        .header("referer", "https://example.com/a\"b")
        .header("user-agent", "drill/1.0")
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, http::StatusCode::OK);
    let b = get(&c, &p.url("/nowhere")).await;
    assert_eq!(b.status, http::StatusCode::NOT_FOUND);

    eventually("2 combined lines in the access log", async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 2
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // 127.0.0.1 - - [05/Dec/2026:12:00:00 +0000] "GET /path HTTP/1.1" 200 N "ref" "ua"
    let ok = lines[0];
    assert!(ok.starts_with("127.0.0.1 - - ["), "{ok}");
    assert!(
        ok.contains(" +0000] \"GET /catalogservice/api/1.0/catalogitem HTTP/1.1\" 200 "),
        "{ok}"
    );
    assert!(
        ok.ends_with(&format!(
            " 200 {} \"https://example.com/a\\\"b\" \"drill/1.0\"",
            a.body.len()
        )),
        "{ok}"
    );
    let missed = lines[1];
    assert!(
        missed.contains("\"GET /nowhere HTTP/1.1\" 404 "),
        "{missed}"
    );
    assert!(missed.ends_with(" \"-\" \"-\""), "{missed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_to_zero_still_logs_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let s = stamp("eastus2-1", "eastus2").await;
    let p = Setup::new()
        .stamp(&s)
        .route("retry = { attempts = 1 }")
        .access_log(&format!(
            "sample = 0.0\nformat = \"json\"\npath = {:?}",
            log.display().to_string()
        ))
        .start()
        .await;
    let c = http1_client();
    let url = p.url("/catalogservice/api/1.0/catalogitem?limit=1");
    let request = async |id: &str| {
        let req = http::Request::get(&url)
            .header("x-request-id", id)
            .body(empty())
            .unwrap();
        send(&c, req).await.status
    };
    let failing = || Fault {
        error_rate: Some(1.0),
        ..Fault::default()
    };
    // Successes around the errors, all sampled out.
    for i in 0..10 {
        assert_eq!(request(&format!("ok-{i}")).await, 200);
    }
    s.set_fault(failing());
    for i in 0..3 {
        assert_eq!(request(&format!("error-{i}")).await, 500);
    }
    s.clear_fault();
    for i in 10..20 {
        assert_eq!(request(&format!("ok-{i}")).await, 200);
    }
    // One more error, certain to be logged, after all of the above had
    // ended: the writer keeps the order lines were handed to it, so once
    // this line is written any stray line would be there too.
    s.set_fault(failing());
    assert_eq!(request("barrier").await, 500);
    eventually("the barrier's line", async || {
        written(&log).iter().any(|l| l["request_id"] == "barrier")
    })
    .await;
    let got = written(&log);
    let ids: Vec<&str> = got
        .iter()
        .map(|l| l["request_id"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        ids,
        ["error-0", "error-1", "error-2", "barrier"],
        "only the errors: {got:?}"
    );
    assert!(got.iter().all(|l| l["status"] == 500), "{got:?}");
}

#[tokio::test]
async fn an_unwritable_log_path_stops_start_up_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("missing-dir").join("access.log");
    let setup = Setup::new()
        .address("s1", "r1", "127.0.0.1:1")
        .access_log(&format!("path = {:?}", bad.display().to_string()));
    let err = stampgate::app::App::start(&setup.config(), None)
        .await
        .expect_err("cannot open the log");
    let message = err.to_string();
    assert!(message.contains("access_log.path"), "{message}");
    assert!(message.contains("missing-dir"), "{message}");
}

#[test]
fn bad_access_log_settings_name_their_key() {
    for (lines, key, value) in [
        ("sample = 1.5", "access_log.sample", "1.5"),
        ("format = \"xml\"", "access_log.format", "xml"),
        ("path = \"\"", "access_log.path", "\"\""),
    ] {
        let text = Setup::new()
            .address("s1", "r1", "127.0.0.1:1")
            .access_log(lines)
            .toml();
        let err = stampgate::config::parse_str(&text, Path::new("t.toml"))
            .expect_err(lines)
            .to_string();
        assert!(err.contains(key) && err.contains(value), "{lines}: {err}");
    }
}
