//! Memory of idle keep-alive client connections served by hyper, in a test
//! binary of its own so that no other test's allocations move this
//! process's RSS.
//!
//! hyper as published keeps an 8–16 KiB read buffer and an 8 KiB head
//! buffer on every connection, idle or not; the vendored hyper
//! (`vendor/PATCHES.md`) holds neither while a connection waits, which is
//! what lets 10,000 idle clients fit in well under 150 MB.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Few enough for a default `ulimit -n` of 1024 (each connection is two
/// descriptors here: the client's and the proxy's), and enough that the
/// patch's effect, summed, is megabytes: far above the allocator's noise.
const CONNS: usize = 300;

/// Per idle connection, measured in this test (debug build, 300
/// connections, a dozen runs each): 10.3–11.2 KiB with the vendored hyper,
/// 22.5–23.4 KiB with hyper 1.12.0 as published. The bound sits between
/// them with about 5 KiB of room on either side.
const BUDGET: u64 = 16 * 1024;

/// A request with a body: the proxy's own HTTP/1.1 fast path
/// (`proxy::h1_server`) serves only requests without one and hands a
/// connection to hyper at its first request with a body. A GET would
/// never reach hyper's buffers, and the measure would not see the patch.
const REQUEST: &[u8] =
    b"POST /catalogservice/api/1.0/echo HTTP/1.1\r\nhost: shop\r\ncontent-length: 2\r\n\r\nhi";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_buffers() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;

    // Warm up: the proxy's upstream connection and first allocations.
    let mut warm = open(&p).await;
    exchange(&mut warm).await;

    let before = rss_bytes();
    let mut held = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut conn = open(&p).await;
        exchange(&mut conn).await;
        held.push(conn);
    }
    let grown = rss_bytes().saturating_sub(before);
    let per_conn = grown / CONNS as u64;
    assert!(
        per_conn < BUDGET,
        "{CONNS} idle keep-alive connections grew RSS by {} KiB: {} bytes each (budget {BUDGET})",
        grown / 1024,
        per_conn
    );

    // Still open and usable: the proxy kept them, it did not just close them.
    for conn in held.iter_mut().step_by(50) {
        exchange(conn).await;
    }
}

async fn open(p: &Proxy) -> TcpStream {
    TcpStream::connect(p.addr())
        .await
        .expect("connect to proxy")
}

/// One keep-alive POST, its response read to the end of its
/// (content-length) body.
async fn exchange(conn: &mut TcpStream) {
    conn.write_all(REQUEST).await.expect("write request");
    let mut buf = Vec::with_capacity(4096);
    loop {
        let n = conn.read_buf(&mut buf).await.expect("read response");
        assert!(n > 0, "proxy closed a keep-alive connection");
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                assert_eq!(&buf[end + 4..], b"hi", "the stamp echoed the body");
                return;
            }
        }
    }
}
