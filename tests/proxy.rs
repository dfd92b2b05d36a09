//! The data path end to end: simulated stamps on port 0 behind a proxy
//! under test; HTTP/1.1 and h2c clients.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use stampgate::proxy::ShutdownOutcome;
use stampgate::stamp::Fault;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ITEMS: &str = "/catalogservice/api/1.0/catalogitem";
const HEADERS: &str = "/catalogservice/api/1.0/headers";
const ECHO: &str = "/catalogservice/api/1.0/echo";
const BLOB: &str = "/catalogservice/api/1.0/blob";

#[tokio::test]
async fn get_and_post_pass_through_with_bodies() {
    let s = stamp("westeurope-1", "westeurope").await;
    let p = Setup::new().stamp(&s).start().await;
    let c = http1_client();

    let a = get(&c, &p.url(&format!("{ITEMS}?limit=3"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-server-name"), "westeurope-1");
    assert_eq!(a.header("x-server-location"), "westeurope");
    assert_eq!(a.header("x-stampgate-stamp"), "westeurope-1");
    assert_eq!(a.json().as_array().map(Vec::len), Some(3), "{}", a.text());

    let id = a.json()[0]["id"].as_str().expect("item id").to_owned();
    let req = Request::post(p.url(&format!("{ITEMS}/{id}/comments")))
        .header("content-type", "application/json")
        .body(full(r#"{"authorName":"a","text":"b"}"#))
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text());

    let req = Request::post(p.url(ECHO))
        .body(full("hello stamp"))
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "hello stamp");
}

#[tokio::test]
async fn header_rules_apply() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    let c = http1_client();
    let req = Request::get(p.url(HEADERS))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-forwarded-proto", "gopher")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = a.json();
    let h = &seen["headers"];
    assert_eq!(h["host"], "shop.example.com", "client's Host kept: {seen}");
    assert_eq!(h["x-forwarded-for"], "198.51.100.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["via"], "1.1 stampgate");
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(
        h.get("x-hop").is_none(),
        "Connection-named header stripped: {seen}"
    );
    assert!(h.get("keep-alive").is_none(), "hop-by-hop stripped: {seen}");
    let id = h["x-request-id"].as_str().expect("request id generated");
    assert_eq!(id.len(), 32);
    assert_eq!(
        a.header("x-request-id"),
        id,
        "the response carries the same id"
    );

    let req = Request::get(p.url(HEADERS))
        .header("x-request-id", "client-chosen-7")
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.json()["headers"]["x-request-id"], "client-chosen-7");
    assert_eq!(a.header("x-request-id"), "client-chosen-7");
}

#[tokio::test]
async fn pool_host_header_overrides_the_clients() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .pool("host_header = \"internal.example.net\"")
        .start()
        .await;
    let c = http1_client();
    let req = Request::get(p.url(HEADERS))
        .header("host", "shop.example.com")
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.json()["headers"]["host"], "internal.example.net");
    assert_eq!(a.json()["headers"]["x-forwarded-host"], "shop.example.com");
}

#[tokio::test]
async fn stamp_header_can_be_turned_off() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("stamp_header = false")
        .start()
        .await;
    let a = get(&http1_client(), &p.url(ITEMS)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("x-stampgate-stamp").is_none());
}

/// With every added header off, a request reaches the stamp with only
/// what the client sent (less hop-by-hop headers), on the HTTP/1.1 fast
/// path and through hyper (h2c) alike; errors made by the proxy still
/// carry an id.
#[tokio::test]
async fn forwarded_headers_and_request_ids_can_be_turned_off() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("forwarded_headers = false\nrequest_id = false\nstamp_header = false")
        .start()
        .await;
    for (c, how) in [(http1_client(), "HTTP/1.1"), (h2c_client(), "h2c")] {
        let a = get(&c, &p.url(HEADERS)).await;
        assert_eq!(a.status, StatusCode::OK, "{how}: {}", a.text());
        let seen = a.json();
        for added in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "via",
            "x-request-id",
        ] {
            assert!(
                seen["headers"].get(added).is_none(),
                "{how}: {added} in {seen}"
            );
        }
        assert!(a.headers.get("x-request-id").is_none(), "{how}");
        assert!(a.headers.get("x-stampgate-stamp").is_none(), "{how}");

        let req = Request::get(p.url(HEADERS))
            .header("x-request-id", "client-chosen-8")
            .body(empty())
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!(
            a.json()["headers"]["x-request-id"],
            "client-chosen-8",
            "{how}"
        );

        let a = get(&c, &p.url("/elsewhere")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{how}");
        assert_eq!(
            a.header("x-request-id").len(),
            32,
            "{how}: errors keep an id"
        );
    }
}

#[tokio::test]
async fn no_route_is_404_with_a_clear_body() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    let a = get(&http1_client(), &p.url("/elsewhere")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("x-stampgate-error"), "no-route");
    assert_eq!(a.json()["error"], "no-route");
    assert_eq!(s.requests_served(), 0, "nothing reached the stamp");
}

#[tokio::test]
async fn host_routes_beat_catch_all_and_longest_prefix_wins() {
    let a_stamp = stamp("a", "r1").await;
    let b_stamp = stamp("b", "r2").await;
    let c_stamp = stamp("c", "r3").await;
    let extra = format!(
        "[[routes]]\nname = \"shop\"\nhosts = [\"shop.example.com\"]\npath_prefix = \"/\"\npool = \"b\"\n\n\
         [[routes]]\nname = \"deep\"\npath_prefix = \"/catalogservice/api/\"\npool = \"c\"\n\n\
         [pools.b]\n[[pools.b.stamps]]\nname = \"b\"\nregion = \"r2\"\naddress = \"{}\"\n\n\
         [pools.c]\n[[pools.c.stamps]]\nname = \"c\"\nregion = \"r3\"\naddress = \"{}\"\n",
        b_stamp.addr(),
        c_stamp.addr()
    );
    let p = Setup::new().stamp(&a_stamp).extra(&extra).start().await;
    let c = http1_client();
    let served_by = |host: &'static str, path: &'static str| {
        let req = Request::get(p.url(path))
            .header("host", host)
            .body(empty())
            .unwrap();
        let c = c.clone();
        async move { send(&c, req).await.header("x-server-name").to_owned() }
    };
    assert_eq!(served_by("shop.example.com", ITEMS).await, "b");
    assert_eq!(
        served_by("SHOP.example.com:8080", ITEMS).await,
        "b",
        "host match ignores case and port"
    );
    assert_eq!(
        served_by("other.example.com", ITEMS).await,
        "c",
        "longest prefix"
    );
    assert_eq!(
        served_by("other.example.com", "/catalogservice/x").await,
        "a"
    );
}

#[tokio::test]
async fn refused_connection_is_502() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = Setup::new()
        .address("dead", "r1", &format!("127.0.0.1:{port}"))
        .start()
        .await;
    let a = get(&http1_client(), &p.url(ITEMS)).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.header("x-stampgate-error"), "upstream-connect-refused");
    assert_eq!(a.json()["error"], "upstream-connect-refused");
    assert!(!a.header("x-request-id").is_empty());
}

#[tokio::test]
async fn stamp_down_fault_is_502() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    s.set_fault(Fault {
        down: Some(true),
        ..Fault::default()
    });
    s.settled().await;
    let a = get(&http1_client(), &p.url(ITEMS)).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
}

#[tokio::test]
async fn hanging_stamp_is_504_after_the_route_timeout() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .route("timeout = \"300ms\"")
        .route("retry = { attempts = 1, per_try_timeout = \"300ms\" }")
        .start()
        .await;
    s.set_fault(Fault {
        hang: Some(true),
        ..Fault::default()
    });
    let a = get(&http1_client(), &p.url(ITEMS)).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.header("x-stampgate-error"), "upstream-timeout");
}

#[tokio::test]
async fn oversize_body_is_413_by_length_and_while_streaming() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("max_request_body = \"1KiB\"")
        .start()
        .await;
    let c = http1_client();

    let req = Request::post(p.url(ECHO))
        .body(full(vec![b'x'; 2048]))
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.header("x-stampgate-error"), "request-body-too-large");

    // Chunked: no Content-Length, so the limit trips while streaming.
    let chunks = (0..4).map(|_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(Bytes::from(
            vec![b'y'; 512],
        )))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = Request::post(p.url(ECHO)).body(body).unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());

    let req = Request::post(p.url(ECHO))
        .body(full(vec![b'z'; 1024]))
        .unwrap();
    assert_eq!(
        send(&c, req).await.status,
        StatusCode::OK,
        "exactly the limit passes"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    let c = h2c_client();
    let a = get(&c, &p.url(HEADERS)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.version, http::Version::HTTP_2);
    let seen = a.json();
    assert_eq!(seen["headers"]["via"], "2 stampgate");
    assert!(
        seen["headers"]["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:")),
        "authority became Host: {seen}"
    );
    let req = Request::post(p.url(ECHO)).body(full("over h2")).unwrap();
    assert_eq!(send(&c, req).await.text(), "over h2");
}

#[tokio::test]
async fn upstream_http2_is_spoken_when_configured() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .pool("upstream_http2 = true")
        .start()
        .await;
    let a = get(&http1_client(), &p.url(HEADERS)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["version"], "HTTP/2.0", "{}", a.text());
}

const BIG: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_with_flat_memory() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("max_request_body = \"200MiB\"")
        .start()
        .await;
    let c = http1_client();
    let before = rss_bytes();

    // Download: count bytes as they arrive, never hold the body.
    let req = Request::get(p.url(&format!("{BLOB}?bytes={BIG}")))
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.expect("download starts");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, BIG);

    // Upload: 1,600 chunks of 64 KiB made on the fly.
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = (0..BIG / (64 * 1024)).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(chunk.clone()))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let id = get(&c, &p.url(&format!("{ITEMS}?limit=1"))).await.json()[0]["id"]
        .as_str()
        .expect("item id")
        .to_owned();
    let req = Request::post(p.url(&format!("{ITEMS}/{id}/comments")))
        .body(body)
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text());
    assert_eq!(a.json()["received_bytes"], BIG);

    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 40 * 1024 * 1024,
        "RSS grew by {} MiB moving 200 MiB",
        grown / (1024 * 1024)
    );
}

#[tokio::test]
async fn slow_header_sender_is_cut_off() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("header_read_timeout = \"300ms\"")
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(b"GET /catalogservice/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the head; the proxy must close the connection.
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open 10 s after a 300 ms header timeout"
    );
    assert_eq!(s.requests_served(), 0);
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("idle_timeout = \"300ms\"")
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(format!("GET {ITEMS} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle keep-alive connection was not closed");
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("shutdown_grace = \"10s\"")
        .start()
        .await;
    s.set_fault(Fault {
        latency_ms: Some(500),
        ..Fault::default()
    });
    let addr = p.addr();
    let url = p.url(ITEMS);
    let c = http1_client();
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    // Wait until the request is at the stamp, then shut down.
    let stats = p.handle.routing.load().pools[0].stamps[0].stats.clone();
    eventually("the request reaches the stamp", async || {
        stats.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    let outcome = p.handle.shutdown().await;
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "in-flight request finished");
    assert_eq!(outcome, ShutdownOutcome::Drained);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn methods_other_than_get_and_post_pass() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    let c = http1_client();
    let req = Request::builder()
        .method(Method::PUT)
        .uri(p.url(ECHO))
        .body(full("put body"))
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.text(), "put body");
    let req = Request::builder()
        .method(Method::HEAD)
        .uri(p.url(HEADERS))
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn keep_alive_outlives_the_header_timeout_until_idle_timeout() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("header_read_timeout = \"200ms\"\nidle_timeout = \"5s\"")
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let request = format!("GET {ITEMS} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    for round in 0..2 {
        if round > 0 {
            // Idle for longer than the header timeout, far less than
            // idle_timeout: the next request is still served.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        tcp.write_all(request.as_bytes()).await.unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // Then left idle, the connection is closed once idle_timeout has
    // passed since the last answer, and not before. The proxy's timer
    // started when it wrote the answer, a moment before this client read
    // it: half a second allows for that on a loaded machine and still
    // tells idle_timeout from header_read_timeout (200 ms).
    let idle = tokio::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
        .await
        .expect("closed within 20 s of a 5 s idle_timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "nothing but the close: {read:?} {}",
        String::from_utf8_lossy(&buf[..*read.as_ref().unwrap_or(&0)])
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(4_500),
        "closed {:?} after the last answer, before the 5 s idle_timeout",
        idle.elapsed()
    );
}
