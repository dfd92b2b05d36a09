//! Behind a load balancer: the PROXY protocol (v1 and v2) names the client
//! for X-Forwarded-For and the access log, a connection without a valid
//! header is closed, and the readiness listener fails `/ready` for
//! `shutdown_delay` while requests are still served.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::raw::{RawClient, get as raw_get};
use support::*;

const HEADERS: &str = "/catalogservice/api/1.0/headers";

fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut block = src.to_vec();
    block.extend_from_slice(&[127, 0, 0, 1]);
    block.extend_from_slice(&port.to_be_bytes());
    block.extend_from_slice(&8080u16.to_be_bytes());
    // A TLV (PP2_TYPE_AUTHORITY) that must be skipped.
    block.extend_from_slice(&[0x02, 0, 4, b'e', b'd', b'g', b'e']);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let s = stamp("s1", "r1").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = Setup::new()
        .stamp(&s)
        .proxy("proxy_protocol = true")
        .access_log(&format!(
            "path = {:?}\nformat = \"json\"",
            log.display().to_string()
        ))
        .start()
        .await;

    let mut c = RawClient::connect(p.addr()).await;
    c.send(format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n{}",
        raw_get(HEADERS)
    ))
    .await;
    let a = c.response().await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "203.0.113.7");

    let mut c = RawClient::connect(p.addr()).await;
    let mut bytes = v2_tcp4([198, 51, 100, 9], 40000);
    bytes.extend_from_slice(raw_get(HEADERS).as_bytes());
    c.send(bytes).await;
    let a = c.response().await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "198.51.100.9");
    // A second request on the connection keeps the header's client.
    c.send(raw_get(HEADERS)).await;
    let a = c.response().await;
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "198.51.100.9");

    eventually(
        "the access log names the clients of the headers",
        async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("\"client\":\"203.0.113.7:51234\"")
                && text.contains("\"client\":\"198.51.100.9:40000\"")
        },
    )
    .await;
}

#[tokio::test]
async fn a_missing_or_bad_proxy_header_closes_the_connection() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("proxy_protocol = true\nheader_read_timeout = \"300ms\"")
        .start()
        .await;
    // A client that connects directly sends a request, not a header.
    let mut c = RawClient::connect(p.addr()).await;
    c.send(raw_get(HEADERS)).await;
    c.expect_closed().await;
    // A malformed v1 line.
    let mut c = RawClient::connect(p.addr()).await;
    c.send(format!(
        "PROXY TCP4 1.2.3 127.0.0.1 1 2\r\n{}",
        raw_get(HEADERS)
    ))
    .await;
    c.expect_closed().await;
    // Nothing at all: closed at header_read_timeout.
    let mut c = RawClient::connect(p.addr()).await;
    c.expect_closed().await;
    assert_eq!(s.requests_served(), 0);
}

async fn status_of(url: &str) -> StatusCode {
    get(&http1_client(), url).await.status
}

#[tokio::test]
async fn ready_fails_during_shutdown_delay_while_requests_are_served() {
    let s = stamp("s1", "r1").await;
    let config = Setup::new()
        .stamp(&s)
        .proxy("shutdown_delay = \"2s\"")
        .extra("[health]\nlisten = \"127.0.0.1:0\"")
        .config();
    // With the admin API too, whose own /ready must agree.
    let tokens = stampgate::admin::Tokens::none();
    let p = Proxy {
        handle: stampgate::app::App::start(&config, Some(tokens))
            .await
            .expect("proxy starts"),
        config,
    };
    let health = p.handle.health_addr().expect("health listener");
    let ready = format!("http://{health}/ready");
    eventually("ready once a table can serve", async || {
        status_of(&ready).await == StatusCode::OK
    })
    .await;
    assert_eq!(
        status_of(&format!("http://{health}/live")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&format!("http://{health}/x")).await,
        StatusCode::NOT_FOUND
    );

    let admin_ready = format!("http://{}/ready", p.handle.admin_addr().expect("admin API"));
    assert_eq!(status_of(&admin_ready).await, StatusCode::OK);

    let url = p.url(HEADERS);
    let shutdown = tokio::spawn(p.handle.shutdown());
    eventually("/ready fails once shutdown began", async || {
        status_of(&ready).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(
        status_of(&admin_ready).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the admin API's /ready fails too"
    );
    // Still serving during the delay: the balancer's time to notice.
    assert_eq!(status_of(&url).await, StatusCode::OK);
    assert!(!shutdown.is_finished(), "the delay has not passed yet");
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown finishes after the delay")
        .unwrap();
}
