//! Active probes against a simulated stamp: method, custom headers, Host,
//! expected status ranges and body substring each decide the sample.

mod support;

use std::time::Duration;

use stampgate::health::probe::{ProbeTarget, probe_once};
use stampgate::stamp::{Fault, HealthFault};
use stampgate::upstream::Upstream;
use support::*;

async fn sample(probe_toml: &str) -> stampgate::signals::ProbeSample {
    let s = stamp("s1", "r1").await;
    let config = Setup::new()
        .stamp(&s)
        .extra(&format!("[pools.p.probe]\n{probe_toml}\n"))
        .config();
    let pool = &config.pools[0];
    let upstream = Upstream::new(pool, &Default::default()).unwrap();
    let target = ProbeTarget::new(pool, &pool.stamps[0]);
    probe_once(&upstream, &target).await
}

#[tokio::test]
async fn the_health_endpoint_passes_and_its_body_is_checked() {
    let ok = sample("expect_body = \"Healthy\"").await;
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.status, Some(200));
    assert!(ok.rtt < Duration::from_secs(1));
    let missing = sample("expect_body = \"no such text\"").await;
    assert!(!missing.ok);
    assert!(missing.detail.contains("no such text"), "{missing:?}");
}

#[tokio::test]
async fn custom_headers_and_host_reach_the_stamp() {
    // The headers endpoint echoes what it received: the body check proves
    // the header and Host were sent.
    let probe = "path = \"/catalogservice/api/1.0/headers\"\nheaders = { \"X-Probe\" = \"from-stampgate\" }\nhost = \"probe.example.net\"\nexpect_body = \"from-stampgate\"";
    let s = sample(probe).await;
    assert!(s.ok, "{s:?}");
    let host = sample("path = \"/catalogservice/api/1.0/headers\"\nhost = \"probe.example.net\"\nexpect_body = \"probe.example.net\"").await;
    assert!(host.ok, "{host:?}");
}

#[tokio::test]
async fn status_ranges_and_head_decide() {
    let head = sample("method = \"HEAD\"").await;
    assert!(head.ok, "{head:?}");
    let wrong = sample("expect_status = [\"500-599\"]").await;
    assert!(!wrong.ok);
    assert_eq!(wrong.status, Some(200));
    assert!(wrong.detail.contains("200"), "{wrong:?}");
}

#[tokio::test]
async fn failing_health_and_a_dead_stamp_fail_the_probe() {
    let s = stamp("s1", "r1").await;
    let config = Setup::new().stamp(&s).config();
    let pool = &config.pools[0];
    let upstream = Upstream::new(pool, &Default::default()).unwrap();
    let target = ProbeTarget::new(pool, &pool.stamps[0]);
    s.set_fault(Fault {
        health: Some(HealthFault::Fail),
        ..Fault::default()
    });
    let failed = probe_once(&upstream, &target).await;
    assert!(!failed.ok);
    assert_eq!(failed.status, Some(503));
    s.set_fault(Fault {
        down: Some(true),
        ..Fault::default()
    });
    s.settled().await;
    let refused = probe_once(&upstream, &target).await;
    assert!(!refused.ok);
    assert_eq!(refused.status, None);
    assert!(
        refused.detail.contains("refused") || refused.detail.contains("reset"),
        "{refused:?}"
    );
}
