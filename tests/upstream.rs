//! Connections to stamps (`proxy::upstream`): kept and reused between
//! requests, replaced when the stamp closed them, and connect failures
//! classified by kind.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use stampgate::error::ProxyError;
use stampgate::upstream::Upstream;
use stampgate::upstream::body::UpstreamBody;
use support::*;
use tokio::net::TcpListener;

/// A stamp stand-in on port 0 that answers 200 and counts the
/// connections it accepted; `keep_alive = false` closes each after one
/// response.
async fn counting_stamp(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn upstream_to(addr: SocketAddr) -> Upstream {
    let config = Setup::new().address("s1", "r1", &addr.to_string()).config();
    Upstream::new(&config.pools[0], &Default::default()).unwrap()
}

fn request(addr: SocketAddr) -> http::Request<UpstreamBody> {
    http::Request::builder()
        .uri(format!("http://{addr}/catalogservice/x"))
        .header(http::header::HOST, "shop.example.com")
        .body(UpstreamBody::full(Bytes::new()))
        .unwrap()
}

async fn body_of(resp: http::Response<stampgate::upstream::StampBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn connections_are_reused_and_only_busy_ones_add_more() {
    let (addr, accepted) = counting_stamp(true).await;
    let upstream = upstream_to(addr);
    for _ in 0..3 {
        let resp = upstream.send("s1", request(addr)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body_of(resp).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");

    // Two requests in flight at once need two connections; both are then
    // kept for the next requests.
    let (a, b) = tokio::join!(
        upstream.send("s1", request(addr)),
        upstream.send("s1", request(addr))
    );
    body_of(a.unwrap()).await;
    body_of(b.unwrap()).await;
    for _ in 0..4 {
        body_of(upstream.send("s1", request(addr)).await.unwrap()).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_stamp_closed_is_replaced() {
    let (addr, accepted) = counting_stamp(false).await;
    let upstream = upstream_to(addr);
    for _ in 0..3 {
        let resp = upstream.send("s1", request(addr)).await.unwrap();
        assert_eq!(body_of(resp).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_refused_connect_is_its_own_kind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let upstream = upstream_to(addr);
    let err = upstream.send("s1", request(addr)).await.unwrap_err();
    assert!(
        matches!(&err, ProxyError::ConnectRefused { stamp } if stamp == "s1"),
        "{err:?}"
    );
}

/// HTTP/2 to stamps: `te: trailers` goes through (gRPC needs it, though
/// TE is otherwise hop-by-hop), and `:authority` says what `Host` says,
/// not the stamp's address (issue 17).
#[tokio::test]
async fn h2_to_stamps_keeps_te_trailers_and_authority_matches_host() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new()
        .stamp(&s)
        .pool("upstream_http2 = true\nhost_header = \"api.internal\"")
        .start()
        .await;
    let req = http::Request::get(p.url("/catalogservice/api/1.0/headers"))
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let a = send(&http1_client(), req).await;
    let head = a.json();
    assert_eq!(head["version"], "HTTP/2.0", "{head}");
    assert_eq!(head["headers"]["te"], "trailers", "{head}");
    let uri = head["uri"].as_str().unwrap();
    assert!(uri.starts_with("http://api.internal/"), "{head}");
    let host = &head["headers"]["host"];
    assert!(host.is_null() || host == "api.internal", "{head}");
}
