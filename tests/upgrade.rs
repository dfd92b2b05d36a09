//! HTTP/1.1 upgrades (WebSocket) end to end: the stamp's 101 reaches the
//! client, bytes flow both ways, half-closes pass through, an idle tunnel
//! is closed, and `Upgrade: h2c` is not forwarded (issue 17).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A stamp that answers any request with 101 and then echoes every byte
/// until the proxy half-closes, then half-closes too. Sends what request
/// heads it saw on `heads`.
async fn echo_stamp() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                tcp.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                )
                .await
                .unwrap();
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, rx)
}

const UPGRADE_REQUEST: &str = "GET /catalogservice/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Read up to the end of a response head; returns the head.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed in the head");
            head.push(byte[0]);
        }
    })
    .await
    .expect("a response head within 10 s");
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn websocket_upgrade_is_spliced_both_ways_and_half_closed() {
    let (stamp, mut heads) = echo_stamp().await;
    let p = Setup::new()
        .address("ws", "r1", &stamp.to_string())
        .start()
        .await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    let seen = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        seen.contains("upgrade: websocket") && seen.contains("connection: upgrade"),
        "{seen}"
    );

    for message in [&b"hello"[..], b"second message"] {
        tcp.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert_eq!(back, message);
    }
    assert_eq!(p.handle.stats.upgrades.load(Ordering::Relaxed), 1);
    assert_eq!(p.handle.stats.upgraded_open.load(Ordering::Relaxed), 1);
    // Our half-close reaches the stamp, whose own half-close comes back.
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("the stamp's half-close within 10 s")
        .unwrap();
    assert!(rest.is_empty());
    let stats = p.handle.stats.clone();
    eventually("the upgraded gauge falls to 0", async || {
        stats.upgraded_open.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_waits_for_an_open_tunnel_within_its_grace() {
    let (stamp, _heads) = echo_stamp().await;
    let p = Setup::new()
        .address("ws", "r1", &stamp.to_string())
        .proxy("shutdown_grace = \"300ms\"")
        .start()
        .await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let stats = p.handle.stats.clone();
    eventually("the tunnel is open", async || {
        stats.upgraded_open.load(Ordering::Relaxed) == 1
    })
    .await;
    // The tunnel outlives the grace: the shutdown says so rather than
    // claiming every connection drained.
    assert_eq!(
        p.handle.shutdown().await,
        stampgate::proxy::ShutdownOutcome::GraceExpired
    );
}

#[tokio::test]
async fn idle_upgraded_connection_is_closed() {
    let (stamp, _heads) = echo_stamp().await;
    let p = Setup::new()
        .address("ws", "r1", &stamp.to_string())
        .proxy("idle_timeout = \"300ms\"")
        .start()
        .await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    assert!(read_head(&mut tcp).await.starts_with("HTTP/1.1 101"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle tunnel is closed at idle_timeout");
}

/// `Upgrade: h2c` is not passed on: the request is served as plain
/// HTTP/1.1 (HTTP/2 to stamps is the pool's setting, not the client's).
#[tokio::test]
async fn h2c_upgrade_is_not_forwarded() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    let mut c = support::raw::RawClient::connect(p.addr()).await;
    c.send(support::raw::request(
        "GET",
        "/catalogservice/api/1.0/headers",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let echoed = r.json();
    assert!(echoed["headers"]["upgrade"].is_null(), "{echoed}");
    assert_eq!(echoed["version"], "HTTP/1.1", "{echoed}");
}
