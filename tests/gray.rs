//! Gray failures end to end: simulated stamps whose API slows down or hangs
//! while their health endpoint stays fast and green. Live latency must move
//! the traffic, hedges must answer for a hung stamp, and a hedge's loser
//! must be cancelled without a try beyond the attempt limit.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, StatusCode};
use stampgate::stamp::{Fault, FaultScope, Stamp};
use support::*;
use tokio::time::Instant;

const ITEMS: &str = "/catalogservice/api/1.0/catalogitem?limit=1";

fn api_only(f: Fault) -> Fault {
    Fault {
        scope: Some(FaultScope::Api),
        ..f
    }
}

/// Priority pool: `first` takes every first try, `second` and `third`
/// (priorities 2 and 3) only retries and hedges; GETs are hedged after
/// `after` (`retry.hedge_after`).
fn hedged(after: &str, first: &Stamp, second: &Stamp, third: &Stamp) -> Setup {
    Setup::new()
        .route("timeout = \"3s\"")
        .route(&format!(
            "retry = {{ attempts = 2, per_try_timeout = \"2s\", hedge_after = \"{after}\" }}"
        ))
        .pool("method = \"priority\"")
        .extra(&format!(
            "[[pools.p.stamps]]\nname = \"{}\"\nregion = \"r1\"\naddress = \"{}\"\npriority = 1\n\
             [[pools.p.stamps]]\nname = \"{}\"\nregion = \"r2\"\naddress = \"{}\"\npriority = 2\n\
             [[pools.p.stamps]]\nname = \"{}\"\nregion = \"r3\"\naddress = \"{}\"\npriority = 3\n",
            first.name(),
            first.addr(),
            second.name(),
            second.addr(),
            third.name(),
            third.addr()
        ))
}

fn hedges(p: &Proxy) -> [(&'static str, u64); 3] {
    p.handle.routing.load().routes()[0].stats.hedges()
}

#[tokio::test]
async fn a_hedge_answers_for_a_hung_stamp_and_the_loser_is_cancelled() {
    let (a, b, c) = (
        stamp("a", "r1").await,
        stamp("b", "r2").await,
        stamp("c", "r3").await,
    );
    let p = hedged("100ms", &a, &b, &c).start().await;
    let client = http1_client();
    assert_eq!(
        get(&client, &p.url(ITEMS)).await.header("x-server-name"),
        "a"
    );
    assert_eq!(hedges(&p)[0], ("sent", 0), "a fast stamp needs no hedge");

    a.set_fault(api_only(Fault {
        hang: Some(true),
        ..Fault::default()
    }));
    let started = Instant::now();
    let answer = get(&client, &p.url(ITEMS)).await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-server-name"), "b", "the hedge won");
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(1),
        "the hedge waits hedge_after, then answers: {took:?}"
    );
    assert_eq!(hedges(&p), [("sent", 1), ("won", 1), ("lost", 0)]);
    assert_eq!(
        a.requests_received(),
        2,
        "the first try reached the hung stamp"
    );
    assert_eq!(c.requests_received(), 0, "no try beyond the attempt limit");

    // The loser was dropped: nothing of it waits at the proxy any more.
    let table = p.handle.routing.load();
    let stats = &table.pool("p").unwrap().stamps[0].stats;
    assert_eq!(stats.awaiting_head.load(Ordering::Relaxed), 0);
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    assert!(
        stats.live_samples.load(Ordering::Relaxed) >= 2,
        "the cancelled wait counts as a latency sample"
    );
}

#[tokio::test]
async fn a_route_hedging_at_p95_learns_its_delay_from_its_answers() {
    let (a, b, c) = (
        stamp("a", "r1").await,
        stamp("b", "r2").await,
        stamp("c", "r3").await,
    );
    let p = hedged("p95", &a, &b, &c).start().await;
    let client = http1_client();
    let url = p.url(ITEMS);
    let delay = || {
        p.handle.routing.load().routes()[0]
            .stats
            .head_latency
            .delay()
    };
    assert_eq!(delay(), None, "no delay before the route has answers");
    for _ in 0..40 {
        assert_eq!(get(&client, &url).await.status, StatusCode::OK);
    }
    eventually("the route's p95 is known", async || delay().is_some()).await;
    let learned = delay().unwrap();
    assert!(
        learned < Duration::from_secs(1),
        "loopback answers: a delay of milliseconds, not {learned:?}"
    );
    assert_eq!(hedges(&p)[0], ("sent", 0), "fast answers, no hedge");

    a.set_fault(api_only(Fault {
        hang: Some(true),
        ..Fault::default()
    }));
    let started = Instant::now();
    let answer = get(&client, &url).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-server-name"), "b", "the hedge won");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered before the 2 s per-try timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(hedges(&p), [("sent", 1), ("won", 1), ("lost", 0)]);
}

#[tokio::test]
async fn a_post_is_never_hedged() {
    let (a, b, c) = (
        stamp("a", "r1").await,
        stamp("b", "r2").await,
        stamp("c", "r3").await,
    );
    let p = hedged("100ms", &a, &b, &c).start().await;
    a.set_fault(api_only(Fault {
        latency_ms: Some(300),
        ..Fault::default()
    }));
    let req = Request::post(p.url("/catalogservice/api/1.0/echo"))
        .body(full("hello"))
        .unwrap();
    let answer = send(&http1_client(), req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("x-server-name"),
        "a",
        "waited for the slow stamp"
    );
    assert_eq!(b.requests_received(), 0);
    assert_eq!(hedges(&p)[0], ("sent", 0));
}

#[tokio::test]
async fn live_latency_takes_traffic_from_a_stamp_whose_api_alone_is_slow() {
    let stamps = [
        stamp("a", "r1").await,
        stamp("b", "r2").await,
        stamp("c", "r3").await,
    ];
    let p = stamps
        .iter()
        .fold(Setup::new(), |s, st| s.stamp(st))
        .pool("method = \"weighted\"")
        .start()
        .await;
    let client = http1_client();
    let url = p.url(ITEMS);
    // Traffic on every stamp first, so each has a live latency.
    for _ in 0..60 {
        get(&client, &url).await;
    }
    stamps[0].set_fault(api_only(Fault {
        latency_ms: Some(300),
        ..Fault::default()
    }));
    // Eight callers until the slow stamp is a latency outlier.
    eventually("a is a latency outlier", async || {
        let batch = (0..8).map(|_| get(&client, &url));
        futures_util::future::join_all(batch).await;
        let status = support::status(&p.handle.controller).await;
        status["pools"][0]["stamps"][0]["latency_outlier"].is_string()
    })
    .await;
    let before = stamps[0].requests_received();
    for _ in 0..400 {
        get(&client, &url).await;
    }
    let to_a = stamps[0].requests_received() - before;
    assert!(
        to_a <= 8,
        "{to_a} of 400 requests still went to the slow stamp"
    );
    let status = support::status(&p.handle.controller).await;
    let a = &status["pools"][0]["stamps"][0];
    assert_ne!(a["health"], "unhealthy", "probes saw nothing: {a}");
    let reason = a["latency_outlier"].as_str().unwrap();
    assert!(reason.contains("pool median"), "{reason}");
}
