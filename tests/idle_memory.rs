//! Memory of idle keep-alive client connections, in a test binary of its
//! own so that no other test's allocations move this process's RSS.
//!
//! hyper as published keeps an 8–16 KiB read buffer and an 8 KiB head
//! buffer on every connection, idle or not (about 20 KiB of RSS each);
//! the vendored hyper (`vendor/PATCHES.md`) holds neither while a
//! connection waits, which is what lets 10,000 idle clients fit in well
//! under 150 MB.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Few enough for a default `ulimit -n` of 1024 (each connection is two
/// descriptors here: the client's and the proxy's).
const CONNS: usize = 300;

/// Per idle connection. Patched: about 7 KiB (the connection task, the
/// parsed-header cache, the socket's registration); unpatched: about 20.
const BUDGET: u64 = 12 * 1024;

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

/// One keep-alive GET, read to the end of its (content-length) body.
async fn exchange(conn: &mut TcpStream) {
    conn.write_all(
        b"GET /catalogservice/api/1.0/catalogitem?limit=1 HTTP/1.1\r\nhost: shop\r\n\r\n",
    )
    .await
    .expect("write request");
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
                return;
            }
        }
    }
}
