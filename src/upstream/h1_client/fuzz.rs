//! Differential fuzzing of the client's hand-written parsers, on the
//! stable toolchain (proptest): the response-head parser against
//! `httparse` plus RFC 9112 §6.3 framing, the chunk-size line against
//! `httparse::parse_chunk_size`, and the streaming chunked decoder (fed in
//! pieces of every size) against a whole-buffer reference decoder. Inputs
//! are random bytes over an alphabet rich in HTTP syntax, and mutations of
//! valid messages. `PROPTEST_CASES` sets the number of cases (256 by
//! default, a few seconds); bench/RESULTS.md records a long run.
//!
//! Where we refuse what `httparse` accepts, the test names why on purpose
//! (we are stricter); we must never accept what it refuses.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::fuzzing::{mutated, syntax};

/// Byte strings that HTTP parsers care about, to be strung together.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b";",
    b",",
    b":",
    b"=",
    b"\0",
    b"\x0c",
    b"0",
    b"1",
    b"5",
    b"9",
    b"a",
    b"f",
    b"F",
    b"x",
    b"+",
    b"-",
    b"chunked",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"close",
    b"keep-alive",
    b"\xff",
];

// ---- chunk-size line ------------------------------------------------------

const EXTENSIONS: &[&[u8]] = &[b"", b" ", b"\t ", b";a=b", b" ;x", b";q=\"v\""];

fn chunk_line() -> impl Strategy<Value = Vec<u8>> {
    let valid = (any::<u32>(), prop::sample::select(EXTENSIONS))
        .prop_map(|(n, ext)| [format!("{n:x}").as_bytes(), ext, b"\r"].concat());
    // The decoder splits lines at LF, so a line never holds one.
    prop_oneof![syntax(TOKENS, 12), mutated(valid, 4)].prop_map(|mut line| {
        line.retain(|&b| b != b'\n');
        line
    })
}

/// `httparse`'s answer for one line (the LF our decoder cuts off added).
fn httparse_chunk_size(line: &[u8]) -> Option<u64> {
    let with_lf = [line, b"\n"].concat();
    match httparse::parse_chunk_size(&with_lf) {
        Ok(httparse::Status::Complete((n, size))) if n == with_lf.len() => Some(size),
        _ => None,
    }
}

proptest! {
    #[test]
    fn chunk_size_lines_agree_with_httparse(line in chunk_line()) {
        let ours = parse_chunk_size(&line).ok();
        let theirs = httparse_chunk_size(&line);
        match (ours, theirs) {
            (Some(a), Some(b)) => prop_assert_eq!(a, b),
            (Some(a), None) => prop_assert!(false, "we read {a} from {line:?}; httparse refuses it"),
            // Stricter on purpose: httparse reads no digits as size 0, and
            // lets a NUL hide in an extension.
            (None, Some(_)) => prop_assert!(
                !line.first().is_some_and(u8::is_ascii_hexdigit) || line.contains(&0),
                "we refuse {line:?}; httparse accepts it"
            ),
            (None, None) => {}
        }
    }
}

/// A divergence from httparse found while writing this oracle: a bare CR
/// (or a form feed) was trimmed as whitespace after the size.
#[test]
fn a_bare_cr_or_form_feed_after_the_size_is_refused() {
    for line in [&b"5\r\r"[..], b"5\x0c\r", b"5 \r \r"] {
        assert!(parse_chunk_size(line).is_err(), "{line:?}");
        assert_eq!(httparse_chunk_size(line), None, "{line:?}");
    }
    assert_eq!(parse_chunk_size(b"5 \t;x\r").ok(), Some(5));
}

/// What the fuzzer found in the response-head parser: an empty
/// `Transfer-Encoding` line after `chunked` made the body read to the close.
#[test]
fn an_empty_transfer_encoding_line_does_not_end_the_list() {
    let head = "HTTP/1.1 200 R\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n";
    let mut buf = BytesMut::from(head);
    let Ok(Some(Parsed::Final(_, framing, _))) = parse_head(&mut buf, false) else {
        panic!("a final head");
    };
    assert_eq!(framing, Framing::Chunked(Chunk::Size));
}

// ---- chunked bodies -------------------------------------------------------

/// Decode `input` fed in pieces of `step` bytes, the way `poll_data` drives
/// the decoder: `Ok(Some((body, bytes left after the end)))`, `Ok(None)`
/// when it is not complete.
fn decode_streaming(input: &[u8], step: usize) -> Result<Option<(Vec<u8>, usize)>, ()> {
    let mut state = Chunk::Size;
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match state {
                Chunk::Done => return Ok(Some((body, input.len() - fed + buf.len()))),
                Chunk::Data(left) if left > 0 && !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    body.extend_from_slice(&buf.split_to(n as usize));
                    state = Chunk::Data(left - n);
                    advance_chunked(&mut state, &mut buf).map_err(|_| ())?;
                }
                _ => {
                    let before = state;
                    advance_chunked(&mut state, &mut buf).map_err(|_| ())?;
                    if state == before {
                        break;
                    }
                }
            }
        }
        if fed == input.len() {
            return Ok(None);
        }
        let n = step.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

/// RFC 9112 §7.1 over a whole buffer, strictly: CRLF line ends and no
/// other CR or NUL in a line; 1 to 16 hex digits; spaces or tabs, then
/// `;` and extensions; trailer lines up to an empty line.
fn decode_reference(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    fn line(input: &[u8], at: usize) -> Result<Option<&[u8]>, ()> {
        let Some(nl) = input[at..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = input[at..at + nl].strip_suffix(b"\r").ok_or(())?;
        if line.contains(&b'\r') || line.contains(&0) {
            return Err(());
        }
        Ok(Some(line))
    }
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(size_line) = line(input, at)? else {
            return Ok(None);
        };
        at += size_line.len() + 2;
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 || digits > 16 {
            return Err(());
        }
        let size = u64::from_str_radix(std::str::from_utf8(&size_line[..digits]).unwrap(), 16)
            .map_err(|_| ())?;
        let rest = &size_line[digits..];
        let rest = &rest[rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count()..];
        if !rest.is_empty() && rest[0] != b';' {
            return Err(());
        }
        if size == 0 {
            loop {
                let Some(trailer) = line(input, at)? else {
                    return Ok(None);
                };
                at += trailer.len() + 2;
                if trailer.is_empty() {
                    return Ok(Some((body, input.len() - at)));
                }
            }
        }
        let end = at as u64 + size;
        if (input.len() as u64) < end {
            // The data is still coming; what is there must not be judged.
            return Ok(None);
        }
        body.extend_from_slice(&input[at..end as usize]);
        at = end as usize;
        match input.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Err(()),
            None if input.get(at).is_some_and(|&b| b != b'\r') => return Err(()),
            None => return Ok(None),
        }
    }
}

const TRAILERS: &[&[u8]] = &[b"", b"x-t: 1\r\n", b"a: b\r\nc: d\r\n"];

fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (prop::collection::vec(any::<u8>(), 1..20), any::<bool>());
    let valid = (
        prop::collection::vec(chunk, 0..4),
        prop::sample::select(TRAILERS),
        prop::collection::vec(any::<u8>(), 0..6),
    )
        .prop_map(|(chunks, trailers, after)| {
            let mut out = Vec::new();
            for (data, ext) in chunks {
                out.extend_from_slice(format!("{:x}", data.len()).as_bytes());
                if ext {
                    out.extend_from_slice(b";e=1");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            out.extend_from_slice(trailers);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&after);
            out
        });
    prop_oneof![1 => syntax(TOKENS, 30), 3 => mutated(valid, 4)]
}

proptest! {
    #[test]
    fn the_chunked_decoder_agrees_with_a_whole_buffer_reference(
        input in chunked_body(),
        step in 1usize..9,
    ) {
        let reference = decode_reference(&input);
        prop_assert_eq!(decode_streaming(&input, step), reference.clone(), "{:?}", input);
        prop_assert_eq!(decode_streaming(&input, input.len().max(1)), reference, "{:?}", input);
    }
}

// ---- response heads -------------------------------------------------------

fn response_head() -> impl Strategy<Value = Vec<u8>> {
    let lines: &[&[u8]] = &[
        b"Content-Length: 5\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: 6\r\n",
        b"Content-Length: \r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: \r\n",
        b"Transfer-Encoding: ,\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive\r\n",
        b"X-A: b\r\n",
    ];
    let valid = (
        any::<bool>(),
        prop::sample::select(&[100u16, 101, 103, 200, 204, 304, 404, 502, 999][..]),
        prop::collection::vec(prop::sample::select(lines), 0..5),
    )
        .prop_map(|(minor, code, headers)| {
            let minor = u8::from(minor);
            [
                format!("HTTP/1.{minor} {code} R\r\n").into_bytes(),
                headers.concat(),
                b"\r\n".to_vec(),
            ]
            .concat()
        });
    prop_oneof![1 => syntax(TOKENS, 40), 4 => mutated(valid, 4)]
}

/// RFC 9112 §6.3 from `httparse`'s headers: the framing and reuse we must
/// arrive at, or `None` where we refuse the head on purpose.
fn reference_framing(
    res: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Option<(Framing, bool)> {
    let code = res.code?;
    let mut te: Vec<&[u8]> = Vec::new();
    let mut has_te = false;
    let mut length: Option<u64> = None;
    let (mut close, mut keep_alive) = (false, false);
    for h in res.headers.iter() {
        // Names and values the http crate refuses: we refuse the head.
        HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        HeaderValue::from_bytes(h.value).ok()?;
        let tokens = h
            .value
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty());
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            te.extend(tokens);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let mut any = false;
            for t in tokens {
                any = true;
                let n = parse_length(t)?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
            if !any {
                return None;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let mut reuse = !close && (res.version == Some(1) || keep_alive);
    let framing = if code == 101 {
        // The connection now speaks another protocol: never reused.
        reuse = false;
        Framing::Switched
    } else if head_request || code == 204 || code == 304 {
        Framing::Length(0)
    } else if has_te {
        reuse &= length.is_none();
        if te
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Some((framing, reuse && framing != Framing::Close))
}

proptest! {
    #[test]
    fn response_heads_agree_with_httparse(input in response_head(), head_request: bool) {
        let mut buf = BytesMut::from(&input[..]);
        let ours = parse_head(&mut buf, head_request);
        let consumed = input.len() - buf.len();
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut slots);
        match (ours, res.parse(&input)) {
            (Ok(None), Ok(httparse::Status::Partial)) => prop_assert_eq!(consumed, 0),
            (Ok(Some(parsed)), Ok(httparse::Status::Complete(len))) => {
                prop_assert_eq!(consumed, len);
                let code = res.code.unwrap();
                match parsed {
                    Parsed::Informational => prop_assert!((100..200).contains(&code) && code != 101),
                    Parsed::Final(head, framing, reuse) => {
                        prop_assert_eq!(head.status.as_u16(), code);
                        prop_assert_eq!(
                            Some((framing, reuse)),
                            reference_framing(&res, head_request),
                            "{:?}", String::from_utf8_lossy(&input)
                        );
                    }
                }
            }
            (Err(_), Ok(httparse::Status::Complete(len))) => {
                let code = res.code.unwrap();
                // Refused on purpose: a status the http crate refuses, a
                // head of 64 KiB, or framing we do not trust.
                prop_assert!(
                    StatusCode::from_u16(code).is_err()
                        || len >= MAX_HEAD
                        || ((!(100..200).contains(&code) || code == 101)
                            && reference_framing(&res, head_request).is_none()),
                    "we refuse what httparse accepts: {:?}", String::from_utf8_lossy(&input)
                );
            }
            (Err(_), Err(_)) => {}
            (ours, theirs) => prop_assert!(
                false,
                "we say {:?}, httparse {:?}: {:?}",
                ours.map(|p| p.is_some()), theirs, String::from_utf8_lossy(&input)
            ),
        }
    }
}
