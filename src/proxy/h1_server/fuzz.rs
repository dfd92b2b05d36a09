//! Differential fuzzing of the fast path's request parser ([`parse`]) on
//! the stable toolchain (proptest), against `httparse` and what hyper
//! would make of the same head. Inputs are random bytes over an alphabet
//! rich in HTTP syntax, and mutations of valid requests, bodies, absolute
//! targets and protocol switches included. `PROPTEST_CASES` sets the
//! number of cases (256 by default); bench/RESULTS.md records a long run.
//!
//! The fast path may hand any head to hyper; what it takes must be exactly
//! what `httparse` reads (same length, method, target, headers), and must
//! be a head that ends its message: HTTP/1.1, origin-form, not CONNECT, no
//! `Content-Length`, `Transfer-Encoding`, `Expect` or `Upgrade`. A head it
//! hands off must reach hyper byte for byte.

use proptest::prelude::*;

use super::*;
use crate::fuzzing;

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b",",
    b"/",
    b"?",
    b"*",
    b"\0",
    b"\x7f",
    b"\xff",
    b"GET",
    b"HEAD",
    b"CONNECT",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"Host",
    b"test",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"Expect",
    b"Upgrade",
    b"Connection",
    b"close",
    b"http://a",
    b"0",
    b"5",
];

const LINES: &[&[u8]] = &[
    b"Host: test\r\n",
    b"Host: other\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, Close\r\n",
    b"Content-Length: 5\r\n",
    b"content-length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Upgrade: h2c\r\n",
    b"Keep-Alive: timeout=5\r\n",
    b"X-Request-Id: abc\r\n",
    b"X-Empty:\r\n",
    b"X-Obs: \xe9\r\n",
];

const STARTS: &[&[u8]] = &[
    b"GET /a HTTP/1.1\r\n",
    b"HEAD /a?b=c HTTP/1.1\r\n",
    b"DELETE //x HTTP/1.1\r\n",
    b"CONNECT /a HTTP/1.1\r\n",
    b"GET http://test/a HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"GET /a HTTP/1.0\r\n",
    b"PRI * HTTP/2.0\r\n",
    b"G@T /a HTTP/1.1\r\n",
];

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        prop::sample::select(STARTS),
        prop::collection::vec(prop::sample::select(LINES), 0..5),
        prop::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(start, lines, after)| [start, &lines.concat(), b"\r\n", &after].concat());
    let mutated = fuzzing::mutated(valid, 4);
    prop_oneof![1 => fuzzing::syntax(TOKENS, 40), 4 => mutated]
}

/// Header names the fast path must hand to hyper.
const HYPERS: [&str; 4] = ["content-length", "transfer-encoding", "expect", "upgrade"];

proptest! {
    #[test]
    fn the_fast_path_takes_only_what_httparse_reads_the_same(input in request_bytes()) {
        let mut buf = BytesMut::from(&input[..]);
        let parsed = parse(&mut buf);
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut theirs = httparse::Request::new(&mut slots);
        let status = theirs.parse(&input);
        let shown = String::from_utf8_lossy(&input).into_owned();
        match parsed {
            Parsed::Request(req, close) => {
                let Ok(httparse::Status::Complete(len)) = status else {
                    return Err(TestCaseError::fail(format!("took what httparse does not: {shown:?}")));
                };
                prop_assert_eq!(input.len() - buf.len(), len, "{:?}", shown);
                prop_assert!(len <= MAX_HEAD);
                prop_assert_eq!(theirs.version, Some(1));
                prop_assert_eq!(Some(req.method().as_str()), theirs.method);
                prop_assert!(req.method() != Method::CONNECT);
                let target = theirs.path.unwrap_or_default();
                prop_assert!(target.starts_with('/'), "{:?}", shown);
                prop_assert_eq!(req.uri().to_string(), target);
                let mut want: Vec<(String, Vec<u8>)> = Vec::new();
                for h in theirs.headers.iter() {
                    let name = h.name.to_ascii_lowercase();
                    prop_assert!(!HYPERS.contains(&name.as_str()), "took {:?}", shown);
                    let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
                    if !consumed_by_parser(&header, h.value) {
                        want.push((name, h.value.to_vec()));
                    }
                }
                let mut got: Vec<(String, Vec<u8>)> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                want.sort();
                got.sort();
                prop_assert_eq!(got, want, "{:?}", shown);
                let asks_close = theirs.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                });
                prop_assert_eq!(close, asks_close);
            }
            Parsed::Partial => {
                prop_assert!(matches!(status, Ok(httparse::Status::Partial)), "{:?}", shown);
                prop_assert_eq!(&buf[..], &input[..]);
            }
            Parsed::Handoff => prop_assert_eq!(&buf[..], &input[..]),
            Parsed::HandoffSplit(head) => prop_assert_eq!([&head[..], &buf[..]].concat(), input),
        }
    }
}
