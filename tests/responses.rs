//! What the client gets of a stamp's answer that is broken or carries
//! what it must not: a body that fails before anything was sent becomes a
//! 502 with `x-stampgate-error`; a length on a bodiless answer is removed
//! (issue 17).

mod support;

use support::raw::{RawClient, get, raw_stamp};
use support::*;

const ITEMS: &str = "/catalogservice/api/1.0/catalogitem";

async fn through(answer: &'static [u8]) -> support::raw::RawResponse {
    let stamp = raw_stamp(answer).await;
    let p = Setup::new()
        .address("broken", "r1", &stamp.to_string())
        .start()
        .await;
    let mut c = RawClient::connect(p.addr()).await;
    c.send(get(ITEMS)).await;
    c.response().await
}

/// Body framing that fails at its first read: the client gets a 502 that
/// names the cause, not a 200 head followed by a bare close.
#[tokio::test]
async fn body_broken_at_its_first_read_is_a_502() {
    let broken: [&'static [u8]; 3] = [
        // Not a chunk size.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        // A chunk line ended by a bare LF.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        // A trailer section far beyond any limit.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ];
    for (i, answer) in broken.into_iter().enumerate() {
        let answer: &'static [u8] = if i == 2 {
            let mut v = answer.to_vec();
            for n in 0..4000 {
                v.extend_from_slice(format!("x-trailer-{n}: {}\r\n", "v".repeat(64)).as_bytes());
            }
            v.extend_from_slice(b"\r\n");
            Box::leak(v.into_boxed_slice())
        } else {
            answer
        };
        let r = through(answer).await;
        assert_eq!(r.status, 502, "case {i}: {r:?}");
        assert_eq!(
            r.header("x-stampgate-error"),
            Some("upstream-protocol-error"),
            "case {i}: {r:?}"
        );
    }
}

/// 204, 304 and 1xx carry no body; a stamp's Content-Length on them is
/// removed, as HAProxy does.
#[tokio::test]
async fn content_length_is_removed_from_204_and_304() {
    for answer in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"[..],
        &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"a\"\r\n\r\n"[..],
    ] {
        let r = through(answer).await;
        assert!(matches!(r.status, 204 | 304), "{r:?}");
        assert_eq!(r.header("content-length"), None, "{r:?}");
    }
}
