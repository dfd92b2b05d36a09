//! `GET /metrics`: after a known sequence of requests the exposition parses
//! and its counters hold the expected values; label sets stay bounded no
//! matter how many distinct paths clients ask for.

mod support;

use std::collections::BTreeMap;

use stampgate::admin::{self, Tokens};
use stampgate::stamp::Fault;
use support::*;
use tokio_util::sync::CancellationToken;

/// `name{labels}` -> value, from OpenMetrics text; fails on a malformed line.
fn parse(text: &str) -> BTreeMap<String, f64> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn sum_of(series: &BTreeMap<String, f64>, prefix: &str, containing: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && containing.iter().all(|c| k.contains(c)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_a_known_sequence_and_labels_stay_bounded() {
    let good = stamp("good-1", "westeurope").await;
    let bad = stamp("bad-1", "eastus2").await;
    let p = Setup::new()
        .stamp(&good)
        .stamp(&bad)
        .route("retry = { attempts = 1 }")
        .extra("[pools.p.probe]\ninterval = \"10s\"\njitter_percent = 0\n")
        .start()
        .await;
    let admin = admin::start_with_tokens(
        "127.0.0.1:0".parse().unwrap(),
        Tokens::none(),
        p.handle.controller.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let c = http1_client();
    // Both stamps share traffic; every answer of one is a 500.
    bad.set_fault(Fault {
        error_rate: Some(1.0),
        ..Fault::default()
    });
    let mut served = BTreeMap::new();
    for i in 0..40 {
        let a = get(
            &c,
            &p.url(&format!("/catalogservice/api/1.0/headers?n={i}&path={i}")),
        )
        .await;
        *served
            .entry((a.header("x-server-name").to_owned(), a.status.as_u16()))
            .or_insert(0u32) += 1;
    }
    let metrics_url = format!("http://{}/metrics", admin.addr);
    let a = get(&c, &metrics_url).await;
    assert_eq!(a.status, http::StatusCode::OK);
    assert!(
        a.header("content-type")
            .starts_with("application/openmetrics-text")
    );
    let series = parse(&a.text());

    let ok = f64::from(*served.get(&("good-1".to_owned(), 200)).unwrap_or(&0));
    let failed = f64::from(*served.get(&("bad-1".to_owned(), 500)).unwrap_or(&0));
    assert_eq!(ok + failed, 40.0, "{served:?}");
    assert_eq!(
        sum_of(
            &series,
            "stampgate_upstream_responses_total",
            &["stamp=\"good-1\"", "class=\"2xx\""]
        ),
        ok
    );
    assert_eq!(
        sum_of(
            &series,
            "stampgate_upstream_responses_total",
            &["stamp=\"bad-1\"", "class=\"5xx\""]
        ),
        failed
    );
    assert_eq!(
        sum_of(
            &series,
            "stampgate_upstream_duration_seconds_count",
            &["stamp=\"good-1\""]
        ),
        ok
    );
    assert_eq!(sum_of(&series, "stampgate_in_flight_requests", &[]), 0.0);
    assert!(
        series
            .keys()
            .any(|k| k.starts_with("stampgate_routing_table_generation"))
    );
    assert!(series.keys().all(|k| !k.contains("path")), "no path label");

    // Forty distinct paths later, the number of series is the same.
    for i in 40..80 {
        get(
            &c,
            &p.url(&format!("/catalogservice/api/1.0/headers?other={i}")),
        )
        .await;
    }
    let again = parse(&get(&c, &metrics_url).await.text());
    assert_eq!(again.len(), series.len(), "label sets are bounded");

    // A refused connection is counted by kind.
    bad.set_fault(Fault {
        down: Some(true),
        ..Fault::default()
    });
    bad.settled().await;
    for _ in 0..10 {
        get(&c, &p.url("/catalogservice/api/1.0/headers")).await;
    }
    let after = parse(&get(&c, &metrics_url).await.text());
    assert!(
        sum_of(
            &after,
            "stampgate_upstream_connect_errors_total",
            &["stamp=\"bad-1\"", "kind=\"refused\""]
        ) >= 1.0,
        "refused connects counted"
    );
}
