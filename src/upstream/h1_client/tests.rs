//! The codec against scripted stamps over in-memory pipes.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::IdleQueue;
use super::*;

fn pair() -> (Box<H1Conn>, DuplexStream) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    (H1Conn::new(Io::Mem(client)), server)
}

fn queue() -> Arc<IdleQueue> {
    Arc::new(IdleQueue::new(Duration::from_secs(50)))
}

fn empty() -> UpstreamBody {
    UpstreamBody::full(Bytes::new())
}

/// Send `method` on `conn` with the stamp's `response` already waiting.
async fn exchange_on(
    conn: Box<H1Conn>,
    server: &mut DuplexStream,
    method: Method,
    response: &[u8],
    q: &Arc<IdleQueue>,
) -> Result<Response<H1Body>, H1Error> {
    server.write_all(response).await.unwrap();
    conn.send(&method, "/p?q=1", "stamp:80", &HeaderMap::new(), empty(), q)
        .await
}

async fn exchange(
    method: Method,
    response: &[u8],
) -> (
    Result<Response<H1Body>, H1Error>,
    Arc<IdleQueue>,
    DuplexStream,
) {
    let (conn, mut server) = pair();
    let q = queue();
    let resp = exchange_on(conn, &mut server, method, response, &q).await;
    (resp, q, server)
}

async fn body_of(resp: Response<H1Body>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

fn protocol_error(r: Result<Response<H1Body>, H1Error>) -> String {
    match r {
        Err(H1Error::Protocol(why)) => why,
        Err(e) => panic!("expected a protocol error, got {e}"),
        Ok(resp) => panic!("expected a protocol error, got {}", resp.status()),
    }
}

/// The request as the stamp received it (everything written so far).
async fn request_seen(server: &mut DuplexStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = server.read(&mut buf).await.unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test]
async fn content_length_body_and_reuse() {
    let (resp, q, mut server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    )
    .await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-a"], "1");
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    assert_eq!(q.len(), 0, "in use until the body is read");
    assert_eq!(body_of(resp).await, "hello");
    assert_eq!(q.len(), 1, "back in the pool");
    assert_eq!(
        request_seen(&mut server).await,
        "GET /p?q=1 HTTP/1.1\r\nhost: stamp:80\r\n\r\n"
    );

    // The same connection serves the next request.
    let conn = q.checkout().expect("pooled");
    assert!(conn.reused());
    let resp = exchange_on(
        conn,
        &mut server,
        Method::GET,
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        &q,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(q.len(), 1);
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6 ; a=\"b\"\r\n world\r\nA\r\n0123456789\r\n\
          0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
    )
    .await;
    let resp = resp.unwrap();
    assert_eq!(resp.body().size_hint().exact(), None);
    assert_eq!(body_of(resp).await, "hello world0123456789");
    assert_eq!(q.len(), 1, "reusable after the last chunk and trailers");
}

#[tokio::test]
async fn chunked_end_is_known_right_after_the_last_data() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let mut body = resp.unwrap().into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "ok");
    assert!(body.is_end_stream(), "hyper stops polling here");
    assert_eq!(q.len(), 1);
}

#[tokio::test]
async fn invalid_chunked_framing_is_an_error() {
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"0\r\nX-Trailer: t\n\r\n",
    ] {
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        wire.extend_from_slice(bad);
        let (resp, q, _server) = exchange(Method::GET, &wire).await;
        let collected = resp.unwrap().into_body().collect().await;
        assert!(collected.is_err(), "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(q.len(), 0);
    }
}

#[tokio::test]
async fn close_delimited_body_is_read_to_the_end_and_not_reused() {
    let (resp, q, server) = exchange(Method::GET, b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
    drop(server);
    assert_eq!(body_of(resp.unwrap()).await, "until close");
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn length_body_cut_short_is_an_error() {
    let (resp, q, server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    )
    .await;
    drop(server);
    assert!(resp.unwrap().into_body().collect().await.is_err());
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn head_response_has_no_body_but_keeps_its_length() {
    let (resp, q, _server) = exchange(
        Method::HEAD,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
    )
    .await;
    let resp = resp.unwrap();
    assert_eq!(resp.headers()["content-length"], "1234");
    assert!(resp.body().is_end_stream());
    assert_eq!(q.len(), 1, "pooled at once");
    assert_eq!(body_of(resp).await, "");
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    for head in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let (resp, q, _server) = exchange(Method::GET, head).await;
        let resp = resp.unwrap();
        assert!(resp.body().is_end_stream());
        assert_eq!(body_of(resp).await, "");
        assert_eq!(q.len(), 1);
    }
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("link"));
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(q.len(), 1);
}

/// A 101 hands the raw connection, and the bytes that came after the
/// head, to the request path; it never goes back to the pool.
#[tokio::test]
async fn switching_protocols_hands_over_the_connection() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nearly",
    )
    .await;
    let mut resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let (_io, early) = resp.body_mut().take_switched().expect("the raw connection");
    assert_eq!(&early[..], b"early");
    assert!(resp.body_mut().take_switched().is_none(), "taken once");
    assert_eq!(q.len(), 0, "never pooled");
}

#[tokio::test]
async fn invalid_content_length_is_refused() {
    for value in ["1x", "-1", "+5", "", "5 5", "99999999999999999999", "0x10"] {
        let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        let (resp, _q, _server) = exchange(Method::GET, wire.as_bytes()).await;
        protocol_error(resp);
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused_equal_ones_accepted() {
    for wire in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ] {
        let (resp, _q, _server) = exchange(Method::GET, wire).await;
        assert!(protocol_error(resp).contains("conflicting"));
    }
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(body_of(resp.unwrap()).await, "hello");
    assert_eq!(q.len(), 1);
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_chunked_and_single_use() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let resp = resp.unwrap();
    assert!(!resp.headers().contains_key("content-length"));
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(q.len(), 0, "not trusted again");
}

#[tokio::test]
async fn too_many_headers_are_refused() {
    let mut wire = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_HEADERS {
        wire.push_str(&format!("x-h{i}: v\r\n"));
    }
    wire.push_str("\r\n");
    let (resp, _q, _server) = exchange(Method::GET, wire.as_bytes()).await;
    assert!(protocol_error(resp).contains("header fields"));
}

#[tokio::test]
async fn oversized_head_is_refused() {
    // Incomplete and over the limit: refused without waiting for the end.
    let mut wire = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    wire.resize(MAX_HEAD + 10, b'a');
    let (resp, _q, _server) = exchange(Method::GET, &wire).await;
    assert!(protocol_error(resp).contains("64 KiB"));
    // Complete but over the limit.
    wire.extend_from_slice(b"\r\n\r\n");
    let (resp, _q, _server) = exchange(Method::GET, &wire).await;
    assert!(protocol_error(resp).contains("64 KiB"));
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let (resp, _q, _server) = exchange(Method::GET, b"SSH-2.0-OpenSSH\r\n\r\n").await;
    protocol_error(resp);
}

#[tokio::test]
async fn connection_close_and_http10_decide_reuse() {
    let cases: [(&[u8], usize); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            0,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 0),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
    ];
    for (wire, pooled) in cases {
        let (resp, q, _server) = exchange(Method::GET, wire).await;
        assert_eq!(body_of(resp.unwrap()).await, "ok");
        assert_eq!(q.len(), pooled, "{}", String::from_utf8_lossy(wire));
    }
}

#[tokio::test]
async fn extra_bytes_after_the_response_make_the_connection_single_use() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
    )
    .await;
    assert_eq!(body_of(resp.unwrap()).await, "ok");
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn unread_body_closes_the_connection() {
    let (resp, q, _server) = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    drop(resp.unwrap());
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn close_before_any_response_byte_is_quiet() {
    let (conn, server) = pair();
    drop(server);
    let q = queue();
    let err = conn
        .send(&Method::GET, "/", "stamp", &HeaderMap::new(), empty(), &q)
        .await
        .unwrap_err();
    assert!(err.closed_quietly(), "{err}");

    let (conn, mut server) = pair();
    let stamp = tokio::spawn(async move {
        request_seen(&mut server).await;
        server.write_all(b"HTTP/1.1 2").await.unwrap();
    });
    let err = conn
        .send(&Method::GET, "/", "stamp", &HeaderMap::new(), empty(), &q)
        .await
        .unwrap_err();
    assert!(!err.closed_quietly(), "part of a response arrived: {err}");
    stamp.await.unwrap();
}

/// Every split of a response into two reads gives the same result.
#[tokio::test]
async fn split_reads_at_every_byte_boundary() {
    let responses: [&[u8]; 2] = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\nhello world",
    ];
    for wire in responses {
        for split in 1..wire.len() {
            let (conn, mut server) = pair();
            let q = queue();
            server.write_all(&wire[..split]).await.unwrap();
            let headers = HeaderMap::new();
            let mut send = pin!(conn.send(&Method::GET, "/", "s", &headers, empty(), &q));
            let mut cx = Context::from_waker(Waker::noop());
            let mut got = Vec::new();
            // Read everything the first part allows, then send the rest.
            let early = match send.as_mut().poll(&mut cx) {
                Poll::Ready(resp) => {
                    let mut body = resp.unwrap().into_body();
                    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
                        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
                    }
                    Some(body)
                }
                Poll::Pending => None,
            };
            server.write_all(&wire[split..]).await.unwrap();
            let body = match early {
                Some(body) => body,
                None => send.await.unwrap().into_body(),
            };
            got.extend_from_slice(&body.collect().await.unwrap().to_bytes());
            assert_eq!(got, b"hello world", "split at {split}");
            assert_eq!(q.len(), 1, "split at {split}");
        }
    }
}

#[tokio::test]
async fn request_framing_comes_from_the_body_not_the_client() {
    let (conn, mut server) = pair();
    server
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("app.example"));
    headers.insert("content-length", HeaderValue::from_static("99"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("x-b", HeaderValue::from_static("2"));
    let q = queue();
    let resp = conn
        .send(
            &Method::POST,
            "/up",
            "stamp:80",
            &headers,
            UpstreamBody::full(Bytes::from_static(b"abc")),
            &q,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        request_seen(&mut server).await,
        "POST /up HTTP/1.1\r\nhost: app.example\r\nx-b: 2\r\ncontent-length: 3\r\n\r\nabc"
    );
}

#[test]
fn empty_bodies_state_a_length_only_where_a_body_is_expected() {
    let none = UpstreamBody::full(Bytes::new());
    assert_eq!(ReqFraming::of(&Method::GET, false, &none), ReqFraming::None);
    assert_eq!(
        ReqFraming::of(&Method::GET, true, &none),
        ReqFraming::Length(0)
    );
    assert_eq!(
        ReqFraming::of(&Method::POST, false, &none),
        ReqFraming::Length(0)
    );
    let some = UpstreamBody::full(Bytes::from_static(b"12345"));
    assert_eq!(
        ReqFraming::of(&Method::GET, false, &some),
        ReqFraming::Length(5)
    );
}

#[test]
fn chunked_request_head_and_chunk_lines() {
    let mut head = Vec::new();
    encode_head(
        &mut head,
        &Method::PUT,
        "/x",
        "s:1",
        &HeaderMap::new(),
        ReqFraming::Chunked,
    );
    assert_eq!(
        head,
        b"PUT /x HTTP/1.1\r\nhost: s:1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut line = [0u8; 18];
    assert_eq!(chunk_size_line(&mut line, 1), b"1\r\n");
    assert_eq!(chunk_size_line(&mut line, 255), b"ff\r\n");
    assert_eq!(chunk_size_line(&mut line, 0x1000), b"1000\r\n");
    assert_eq!(
        chunk_size_line(&mut line, usize::MAX),
        b"ffffffffffffffff\r\n"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_connections_expire_and_the_newest_goes_first() {
    let q = queue();
    let (a, _sa) = pair();
    let (b, _sb) = pair();
    q.checkin(a);
    tokio::time::advance(Duration::from_secs(30)).await;
    q.checkin(b);
    assert_eq!(q.len(), 2);
    tokio::time::advance(Duration::from_secs(25)).await;
    // `a` has been idle 55 s, `b` 25 s.
    let got = q.checkout().expect("b is fresh");
    assert_eq!(q.len(), 0, "a expired and was dropped");
    q.checkin(got);
    tokio::time::advance(Duration::from_secs(50)).await;
    assert!(q.checkout().is_none());
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn a_closed_idle_connection_is_noticed_before_use() {
    let (mut conn, server) = pair();
    assert!(conn.still_open().await);
    drop(server);
    assert!(!conn.still_open().await);

    let (mut conn, mut server) = pair();
    server.write_all(b"unasked").await.unwrap();
    assert!(!conn.still_open().await);
}

#[tokio::test]
async fn an_early_answer_beats_the_reset_of_an_unfinished_upload() {
    // A small pipe: the body cannot be written before the stamp answers.
    let (client, mut server) = tokio::io::duplex(4 * 1024);
    let conn = H1Conn::new(Io::Mem(client));
    let q = queue();
    let stamp = tokio::spawn(async move {
        let mut buf = vec![0u8; 1024];
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0, "the request head arrives");
        server
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
            .await
            .unwrap();
        // Closes without reading the body.
    });
    let body = UpstreamBody::full(Bytes::from(vec![b'x'; 1024 * 1024]));
    let resp = conn
        .send(
            &Method::PUT,
            "/upload",
            "stamp:80",
            &HeaderMap::new(),
            body,
            &q,
        )
        .await
        .expect("the stamp's answer, not the write error");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_of(resp).await, "big!");
    assert_eq!(
        q.len(),
        0,
        "a connection with an unfinished request is not reused"
    );
    stamp.await.unwrap();
}
