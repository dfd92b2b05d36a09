//! Timeouts that must end a connection or an exchange whatever the peer
//! does: an HTTP/2 client that ignores the shutdown PING, a stamp that
//! stalls mid-body, a client that stops reading (issue 17).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ITEMS: &str = "/catalogservice/api/1.0/catalogitem";

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Read until the peer closes; `Err` when it is still open after `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Ok(()) => Ok(seen),
        Err(_) => Err(seen),
    }
}

/// An h2c connection on which one GET was answered.
async fn h2_after_one_request(p: &Proxy) -> TcpStream {
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(H2_PREFACE).await.unwrap();
    // SETTINGS ack, then a GET on stream 1.
    tcp.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        .await
        .unwrap();
    tcp.write_all(&headers_frame(1, ITEMS, true)).await.unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !has_frame_on(&seen, 1, 1) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("answer HEADERS on stream 1");
    tcp
}

/// After one request the client goes quiet and never answers a PING: at
/// the idle timeout the proxy sends GOAWAY and a PING, and must then close
/// within `shutdown_grace`, not wait for the PING's answer for ever.
#[tokio::test]
async fn h2_client_ignoring_the_shutdown_ping_is_closed_within_the_grace() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy(
            "idle_timeout = \"300ms\"\nheader_read_timeout = \"60s\"\nshutdown_grace = \"300ms\"",
        )
        .start()
        .await;
    let mut tcp = h2_after_one_request(&p).await;
    let seen = closed_within(&mut tcp, Duration::from_secs(10))
        .await
        .unwrap_or_else(|seen| {
            panic!(
                "h2 connection open 10 s after idle 300 ms + grace 300 ms; read {} bytes",
                seen.len()
            )
        });
    // The close was a graceful one first: a GOAWAY frame (type 7) came.
    assert!(has_frame(&seen, 7), "no GOAWAY before the close");
}

/// A request answered, then a HEADERS frame without END_HEADERS and no
/// CONTINUATION: the header block stops the connection, and falls under
/// `header_read_timeout` (the idle timeout and the grace are long here).
#[tokio::test]
async fn h2_header_block_left_open_falls_under_the_header_timeout() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("idle_timeout = \"60s\"\nheader_read_timeout = \"300ms\"\nshutdown_grace = \"60s\"")
        .start()
        .await;
    let mut tcp = h2_after_one_request(&p).await;
    // Stream 3: the header block is never finished.
    tcp.write_all(&headers_frame(3, ITEMS, false))
        .await
        .unwrap();
    closed_within(&mut tcp, Duration::from_secs(10))
        .await
        .unwrap_or_else(|_| panic!("h2 connection with an open header block was never closed"));
    assert_eq!(s.requests_served(), 1);
}

/// A HEADERS frame for `path` on `stream`, END_STREAM set, END_HEADERS as
/// `end_headers` says.
fn headers_frame(stream: u32, path: &str, end_headers: bool) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(4u8, path), (1u8, "test")] {
        block.push(index); // literal without indexing, indexed name
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let flags = 0x1 | if end_headers { 0x4 } else { 0 };
    let mut frame = Vec::new();
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    frame.push(1);
    frame.push(flags);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Frames in `bytes` as `(type, stream)`, stopping at a partial frame.
fn frames(bytes: &[u8]) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 9 {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let kind = bytes[at + 3];
        let stream =
            u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]])
                & 0x7fff_ffff;
        out.push((kind, stream));
        at += 9 + len;
    }
    out
}

fn has_frame(bytes: &[u8], kind: u8) -> bool {
    frames(bytes).iter().any(|&(k, _)| k == kind)
}

fn has_frame_on(bytes: &[u8], kind: u8, stream: u32) -> bool {
    frames(bytes).contains(&(kind, stream))
}

/// Read from `tcp` until the proxy closes it (panics after 10 s).
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    closed_within(tcp, Duration::from_secs(10))
        .await
        .unwrap_or_else(|seen| {
            panic!(
                "still open after 10 s; read {:?}",
                String::from_utf8_lossy(&seen)
            )
        })
}

/// What an HTTP/1.1 client reads, to the close, of a GET through the proxy
/// (`read_timeout` 300 ms) to a stamp that writes `answer` and then stalls.
async fn through_a_stalling_stamp(answer: &'static [u8]) -> Vec<u8> {
    let stamp = support::raw::raw_stamp(answer).await;
    let p = Setup::new()
        .address("stuck", "r1", &stamp.to_string())
        .pool("read_timeout = \"300ms\"")
        .start()
        .await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(support::raw::get(ITEMS).as_bytes())
        .await
        .unwrap();
    read_to_close(&mut tcp).await
}

/// A stamp that stops mid-body (Content-Length framing): after
/// `read_timeout` the proxy aborts the response short of its length,
/// which the client can tell from a complete one.
#[tokio::test]
async fn stamp_silent_mid_body_is_cut_short_of_content_length() {
    let seen =
        through_a_stalling_stamp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &seen[seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, b"hello", "{text}");
}

/// The same with chunked framing: the terminating chunk never comes.
#[tokio::test]
async fn stamp_silent_mid_chunked_body_is_cut_without_the_last_chunk() {
    let seen = through_a_stalling_stamp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "presented as complete: {text}"
    );
}

/// Over HTTP/2 the stalled stream is reset: the client's body read fails
/// instead of ending.
#[tokio::test]
async fn stamp_silent_mid_body_resets_the_h2_stream() {
    use http_body_util::BodyExt;
    let stamp =
        support::raw::raw_stamp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let p = Setup::new()
        .address("stuck", "r1", &stamp.to_string())
        .pool("read_timeout = \"300ms\"")
        .start()
        .await;
    let client = h2c_client();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(p.url(ITEMS).parse().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body ends within 10 s");
    assert!(body.is_err(), "stalled body presented as complete");
}

/// An HTTP/2 client that keeps its connection up (its connection task
/// reads every frame) but takes none of a response body grants no
/// flow-control window: the socket never blocks, the stream parks at the
/// proxy. It is cut like a client that stops reading.
#[tokio::test]
async fn h2_client_that_takes_no_response_data_is_cut() {
    let (_stamp, p) = proxy_with_short_idle_timeout().await;
    let client = h2c_client();
    let url = p.url(&blob_path());
    let resp = client
        .request(http::Request::get(url).body(empty()).unwrap())
        .await
        .expect("the response head");
    assert_eq!(resp.status(), http::StatusCode::OK);
    // Hold the body unread until the proxy gives up on the client.
    every_connection_closed(&p, "the stalled h2 connection is cut").await;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err_and(|e| !e.to_string().is_empty()),
        "the body ends in an error, not complete"
    );
}

/// A 64 MiB answer: far more than any socket buffer or HTTP/2 window.
const BLOB_BYTES: usize = 64 * 1024 * 1024;

fn blob_path() -> String {
    format!("/catalogservice/api/1.0/blob?bytes={BLOB_BYTES}")
}

async fn proxy_with_short_idle_timeout() -> (stampgate::stamp::Stamp, Proxy) {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .proxy("idle_timeout = \"300ms\"")
        .start()
        .await;
    (s, p)
}

/// Await every client connection of `p` closed.
async fn every_connection_closed(p: &Proxy, what: &str) {
    let stats = p.handle.stats.clone();
    let load = |n: &std::sync::atomic::AtomicI64| n.load(std::sync::atomic::Ordering::Relaxed);
    eventually(what, async || {
        stats
            .connections
            .iter()
            .all(|(_, by_protocol)| by_protocol.iter().all(|(_, n)| load(n) == 0))
    })
    .await;
}

/// A client that reads nothing of a large answer is cut at idle_timeout
/// instead of holding the exchange (and the stamp's connection) for ever.
#[tokio::test]
async fn client_that_stops_reading_is_cut() {
    let (_stamp, p) = proxy_with_short_idle_timeout().await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(support::raw::get(&blob_path()).as_bytes())
        .await
        .unwrap();
    let stats = p.handle.stats.clone();
    eventually("the connection is accepted", async || {
        stats.accepted[stampgate::metrics::Listener::Http]
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    every_connection_closed(&p, "the connection is cut").await;
    let seen = read_to_close(&mut tcp).await;
    assert!(
        seen.len() < BLOB_BYTES,
        "the whole answer got through: {} bytes, {:?}",
        seen.len(),
        String::from_utf8_lossy(&seen[..300.min(seen.len())])
    );
}
