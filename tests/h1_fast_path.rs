//! The HTTP/1.1 fast path of client connections (`proxy::h1_server`) end to
//! end, over loopback sockets with requests written byte for byte:
//! pipelining, the hand-off to hyper in the middle of a connection (bodies,
//! HTTP/1.0, oversized and malformed heads, request-smuggling shapes),
//! response framing (HEAD, proxy-made errors, bodies of unknown length),
//! `Connection: close`, and a client leaving while its request is at the
//! stamp.
//!
//! Covered elsewhere: h2c prior knowledge on the same port, the header read
//! and idle timeouts and graceful shutdown (`tests/proxy.rs`), GET and POST
//! on one TLS connection (`tests/tls.rs`).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stampgate::stamp::{Fault, Stamp};
use support::raw::{RawClient, RawResponse, get, post, request};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEADERS: &str = "/catalogservice/api/1.0/headers";
const ECHO: &str = "/catalogservice/api/1.0/echo";

async fn stamp_and_proxy() -> (Stamp, Proxy) {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    (s, p)
}

async fn client(p: &Proxy) -> RawClient<TcpStream> {
    RawClient::connect(p.addr()).await
}

/// `GET /headers?{tag}`: the stamp answers with the request it saw, so a
/// response can be matched to its request.
fn tagged(tag: &str) -> String {
    get(&format!("{HEADERS}?{tag}"))
}

/// Assert `resp` is the stamp's answer to [`tagged`]`(tag)`.
fn assert_answers(resp: &RawResponse, tag: &str) {
    assert_eq!(resp.status, 200, "{resp:?}");
    let uri = resp.json()["uri"].as_str().unwrap_or_default().to_owned();
    assert!(uri.ends_with(&format!("?{tag}")), "{tag}: answered {uri}");
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let (_s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    c.send(tagged("one") + &tagged("two") + &tagged("three"))
        .await;
    for tag in ["one", "two", "three"] {
        assert_answers(&c.response().await, tag);
    }
    // Still open and serving after the pipeline drained.
    c.send(tagged("four")).await;
    assert_answers(&c.response().await, "four");
}

#[tokio::test]
async fn a_request_with_a_body_mid_connection_goes_to_hyper_and_the_connection_goes_on() {
    let (s, p) = stamp_and_proxy().await;
    let body = "a body for the stamp, not a request: GET / HTTP/1.1\r\n\r\n";
    let requests = [tagged("before"), post(ECHO, body), tagged("after")];
    // One at a time (the POST arrives on an idle fast-path connection),
    // then all in one write (the POST and the GET behind it are already
    // buffered when the fast path lets go).
    for pipelined in [false, true] {
        let mut c = client(&p).await;
        if pipelined {
            c.send(requests.concat()).await;
        }
        let mut answers = Vec::new();
        for r in &requests {
            if !pipelined {
                c.send(r).await;
            }
            answers.push(c.response().await);
        }
        assert_answers(&answers[0], "before");
        assert_eq!(answers[1].status, 200, "{:?}", answers[1]);
        assert_eq!(answers[1].text(), body, "pipelined: {pipelined}");
        assert_answers(&answers[2], "after");
    }
    assert_eq!(s.requests_served(), 6);
}

#[tokio::test]
async fn a_chunked_body_split_across_writes_after_a_fast_path_get_arrives_whole() {
    let (s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    let chunked = request("POST", ECHO, "Transfer-Encoding: chunked\r\n");
    c.send(tagged("first") + &chunked + "6\r\nhello \r\n").await;
    // The GET is answered before the body's end is even sent: the fast path
    // read the POST's head and first chunk, and hyper must be given them.
    assert_answers(&c.response().await, "first");
    c.send("5\r\nworld\r\n0\r\n\r\n").await;
    let echoed = c.response().await;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert_eq!(echoed.text(), "hello world");
    c.send(tagged("last")).await;
    assert_answers(&c.response().await, "last");
    assert_eq!(s.requests_served(), 3);
}

/// Request-smuggling shapes behind a fast-path GET on the same connection.
/// hyper frames each of them once, and the bytes a lax parser would take
/// for a second request never reach the stamp as one.
mod smuggling {
    use super::*;

    /// What a lax parser would read as a request of its own.
    fn hidden() -> String {
        tagged("smuggled")
    }

    #[tokio::test]
    async fn content_length_with_chunked_is_read_as_chunked_and_closes() {
        let (s, p) = stamp_and_proxy().await;
        let mut c = client(&p).await;
        let head = request(
            "POST",
            ECHO,
            "Content-Length: 100\r\nTransfer-Encoding: chunked\r\n",
        );
        c.send(tagged("plain") + &head + "5\r\nhello\r\n0\r\n\r\n" + &hidden())
            .await;
        assert_answers(&c.response().await, "plain");
        let resp = c.response().await;
        assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));
        // hyper does not trust a connection framed both ways: it ends it,
        // and what followed the chunked body is never served.
        assert_eq!(resp.header("connection"), Some("close"));
        c.expect_closed().await;
        assert_eq!(s.requests_served(), 2);
    }

    #[tokio::test]
    async fn two_different_content_lengths_are_400() {
        let (s, p) = stamp_and_proxy().await;
        let mut c = client(&p).await;
        let head = request("POST", ECHO, "Content-Length: 5\r\nContent-Length: 40\r\n");
        c.send(tagged("plain") + &head + "hello" + &hidden()).await;
        assert_answers(&c.response().await, "plain");
        assert_eq!(c.response().await.status, 400);
        c.expect_closed().await;
        assert_eq!(s.requests_served(), 1, "only the plain GET");
    }

    #[tokio::test]
    async fn a_get_with_a_content_length_keeps_its_body_to_itself() {
        let (s, p) = stamp_and_proxy().await;
        let mut c = client(&p).await;
        let hidden = hidden();
        let length = format!("Content-Length: {}\r\n", hidden.len());
        let bearer = request("GET", &format!("{HEADERS}?bearer"), &length) + &hidden;
        c.send(tagged("plain") + &bearer + &tagged("next")).await;
        assert_answers(&c.response().await, "plain");
        // Had the body been read as a request, the second answer would be
        // to `?smuggled`.
        assert_answers(&c.response().await, "bearer");
        assert_answers(&c.response().await, "next");
        assert_eq!(s.requests_served(), 3);
    }
}

#[tokio::test]
async fn head_has_the_stamps_length_and_no_body() {
    let (_s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    c.send(request("HEAD", HEADERS, "") + &tagged("after"))
        .await;
    let head = c.head_response().await;
    assert_eq!(head.status, 200, "{head:?}");
    let length: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("HEAD keeps the stamp's content-length: {head:?}"));
    assert!(length > 0, "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None);
    // Any body bytes after the HEAD answer would be parsed here as the
    // start of the next response, and fail.
    assert_answers(&c.response().await, "after");
}

#[tokio::test]
async fn head_of_a_proxy_error_has_the_length_of_its_get() {
    let (_s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    // The same request id makes the two error bodies the same.
    let id = "X-Request-Id: same-id\r\n";
    c.send(request("HEAD", "/no/such/route", id) + &request("GET", "/no/such/route", id))
        .await;
    let head = c.head_response().await;
    let full = c.response().await;
    assert_eq!((head.status, full.status), (404, 404));
    // As hyper does: a HEAD answer announces the length its GET would have.
    assert_eq!(
        head.header("content-length"),
        Some(full.body.len().to_string().as_str()),
        "{head:?}"
    );
}

#[tokio::test]
async fn connection_close_is_answered_and_the_connection_ends() {
    let (s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    let closing = request(
        "GET",
        &format!("{HEADERS}?closing"),
        "Connection: close\r\n",
    );
    // The GET behind it is already read when the answer goes out; it must
    // not be served.
    c.send(closing + &tagged("ignored")).await;
    let resp = c.response().await;
    assert_answers(&resp, "closing");
    assert_eq!(resp.header("connection"), Some("close"));
    c.expect_closed().await;
    assert_eq!(s.requests_served(), 1);
}

#[tokio::test]
async fn a_proxy_error_is_framed_and_dated() {
    let (s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    c.send(get("/no/such/route") + &tagged("next")).await;
    let resp = c.response().await;
    assert_eq!(resp.status, 404, "{resp:?}");
    let date = resp.header("date").expect("date header");
    httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("date {date:?}: {e}"));
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
    assert_eq!(resp.json()["error"], "no-route");
    assert_answers(&c.response().await, "next");
    assert_eq!(s.requests_served(), 1);
}

/// A stamp stand-in that answers every request (health probes too) with
/// `response`, verbatim, then closes the connection.
async fn raw_origin(response: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response: std::sync::Arc<str> = response.into();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_body_of_unknown_length_is_sent_chunked() {
    const OK: &str = "HTTP/1.1 200 OK\r\n";
    // Large enough to take many frames and writes on its way through.
    let big: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let big_chunks: String = big
        .as_bytes()
        .chunks(50_000)
        .map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
        .collect();
    for (stamp_answer, body) in [
        (
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
            "hello world",
        ),
        // Close-delimited: no length and no chunking.
        (
            format!("{OK}Connection: close\r\n\r\nhello world"),
            "hello world",
        ),
        (
            format!("{OK}Transfer-Encoding: chunked\r\n\r\n{big_chunks}0\r\n\r\n"),
            &big,
        ),
    ] {
        let origin = raw_origin(stamp_answer).await;
        let p = Setup::new()
            .address("raw", "r1", &origin.to_string())
            .start()
            .await;
        let mut c = client(&p).await;
        let path = "/catalogservice/anything";
        c.send(get(path) + &get(path)).await;
        // Twice: the first body's end must be exactly where the second
        // response starts.
        for _ in 0..2 {
            let resp = c.response().await;
            assert_eq!(resp.status, 200, "{resp:?}");
            assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
            assert!(
                resp.text() == body,
                "{} bytes, not {}",
                resp.body.len(),
                body.len()
            );
        }
    }
}

/// The fast path's parsers keep the hop-by-hop headers whose meaning they
/// take out of the message (a `Connection` of only `close`/`keep-alive`,
/// `Keep-Alive`); what else `Connection` names must still be stripped.
#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_proxy_both_ways() {
    let (_s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    for (connection, named) in [("keep-alive", false), ("Keep-Alive, X-Hop", true)] {
        c.send(format!(
            "GET {HEADERS} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\
             Keep-Alive: timeout=5\r\nX-Hop: secret\r\n\r\n"
        ))
        .await;
        let resp = c.response().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let seen = resp.json();
        let h = &seen["headers"];
        assert!(h.get("connection").is_none(), "{connection}: {seen}");
        assert!(h.get("keep-alive").is_none(), "{connection}: {seen}");
        assert_eq!(h.get("x-hop").is_none(), named, "{connection}: {seen}");
    }

    for (connection, named) in [("keep-alive", false), ("keep-alive, x-hop", true)] {
        let origin = raw_origin(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: {connection}\r\n\
             Keep-Alive: timeout=5, max=100\r\nX-Hop: secret\r\n\r\nok"
        ))
        .await;
        let p = Setup::new()
            .address("raw", "r1", &origin.to_string())
            .start()
            .await;
        let mut c = client(&p).await;
        c.send(get("/catalogservice/anything")).await;
        let resp = c.response().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "ok");
        assert_eq!(resp.header("connection"), None, "{connection}: {resp:?}");
        assert_eq!(resp.header("keep-alive"), None, "{connection}: {resp:?}");
        assert_eq!(
            resp.header("x-hop").is_none(),
            named,
            "{connection}: {resp:?}"
        );
    }
}

#[tokio::test]
async fn http_1_0_is_answered() {
    let (s, p) = stamp_and_proxy().await;
    let mut c = client(&p).await;
    c.send(format!("GET {HEADERS}?old HTTP/1.0\r\nHost: test\r\n\r\n"))
        .await;
    let resp = c.response().await;
    assert_answers(&resp, "old");
    assert_eq!(resp.header("transfer-encoding"), None, "not for HTTP/1.0");
    // HTTP/1.0 without keep-alive: one request, then the connection ends.
    c.expect_closed().await;
    assert_eq!(s.requests_served(), 1);
}

#[tokio::test]
async fn a_head_over_16_kib_is_served_by_hyper() {
    let (s, p) = stamp_and_proxy().await;
    let big = "b".repeat(20 * 1024);
    let mut c = client(&p).await;
    // Behind a fast-path GET: the long head is read ahead while the GET is
    // served, and hyper must get all of it.
    let long = request(
        "GET",
        &format!("{HEADERS}?long"),
        &format!("X-Big: {big}\r\n"),
    );
    c.send(tagged("short") + &long).await;
    assert_answers(&c.response().await, "short");
    let resp = c.response().await;
    assert_answers(&resp, "long");
    assert_eq!(resp.json()["headers"]["x-big"], big.as_str());
    assert_eq!(s.requests_served(), 2);
}

#[tokio::test]
async fn heads_the_fast_path_refuses_get_hypers_error() {
    let (s, p) = stamp_and_proxy().await;
    let many: String = (0..101).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    for (bad, status) in [
        // More header fields than hyper's limit (100).
        (request("GET", HEADERS, &many), 431),
        // httparse takes this target, `http::Uri` does not: the fast path
        // has split the head off its buffer before it finds out.
        (get("/catalogservice/a<b"), 400),
    ] {
        let mut c = client(&p).await;
        c.send(tagged("first") + &bad).await;
        assert_answers(&c.response().await, "first");
        assert_eq!(c.response().await.status, status, "{bad:.40}");
        c.expect_closed().await;
    }
    assert_eq!(s.requests_served(), 2, "only the good requests");
}

#[tokio::test]
async fn a_client_leaving_cancels_its_request_and_the_proxy_serves_on() {
    let s = stamp("s1", "r1").await;
    // Neither a timeout nor a retry may end the request before the client
    // does.
    let p = Setup::new()
        .stamp(&s)
        .route("timeout = \"60s\"")
        .route("retry = { attempts = 1, per_try_timeout = \"60s\" }")
        .start()
        .await;
    s.set_fault(Fault {
        latency_ms: Some(60_000),
        ..Fault::default()
    });
    let stats = p.handle.routing.load().pools[0].stamps[0].stats.clone();
    let in_flight = || stats.in_flight.load(Ordering::Relaxed);
    let mut c = client(&p).await;
    c.send(tagged("slow")).await;
    eventually("the request reaches the stamp", async || in_flight() == 1).await;
    drop(c);
    // Long before the stamp would answer, the request is gone: the proxy
    // noticed the close while waiting and dropped the request (no access
    // log line shows it: a request dropped before its answer has none).
    eventually("the request is dropped", async || in_flight() == 0).await;

    s.clear_fault();
    let mut c = client(&p).await;
    c.send(tagged("fresh")).await;
    assert_answers(&c.response().await, "fresh");
}

/// Part of the next head, read ahead while a request is at the stamp,
/// starts that head's `header_read_timeout` when the exchange ends: the
/// connection is cut then, not only after the (long) idle timeout.
#[tokio::test]
async fn a_head_begun_during_an_exchange_is_timed_from_its_end() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"")
        .start()
        .await;
    s.set_fault(Fault {
        latency_ms: Some(400),
        ..Fault::default()
    });
    let mut c = client(&p).await;
    // The first request, then the start of a second that never completes.
    c.send(format!("{}GET {HEADERS} HTTP/1.1\r\nHo", tagged("first")))
        .await;
    assert_answers(&c.response().await, "first");
    // Within the raw client's read timeout, far below the idle timeout.
    c.expect_closed().await;
    assert_eq!(s.requests_served(), 1);
}

/// A connection keeps one try timer across its requests and moves it for
/// each: a request after a quick one still times out at its own deadline,
/// and the request after a timeout is timed afresh.
#[tokio::test]
async fn each_request_on_a_connection_gets_its_own_try_deadline() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .route("timeout = \"400ms\"")
        .route("retry = { attempts = 1, per_try_timeout = \"400ms\" }")
        .start()
        .await;
    let mut c = client(&p).await;
    c.send(tagged("quick")).await;
    assert_answers(&c.response().await, "quick");

    // The first request armed the timer for 400 ms after its start; this
    // one must be cut 400 ms after its own, well within the raw client's
    // read timeout and long before the stamp would answer.
    s.set_fault(Fault {
        hang: Some(true),
        ..Fault::default()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = std::time::Instant::now();
    c.send(tagged("hanging")).await;
    let cut = c.response().await;
    assert_eq!(cut.status, 504, "{cut:?}");
    // A lower bound only (timers never fire early): the first request's
    // deadline would have cut this one after about 200 ms.
    assert!(
        sent.elapsed() >= Duration::from_millis(380),
        "cut after {:?}, before its own deadline",
        sent.elapsed()
    );
    assert_eq!(cut.header("x-stampgate-error"), Some("upstream-timeout"));

    s.clear_fault();
    c.send(tagged("after")).await;
    assert_answers(&c.response().await, "after");
}
