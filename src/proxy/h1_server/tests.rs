use super::*;

fn parse_str(text: &str) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(text.as_bytes());
    let parsed = parse(&mut buf);
    (parsed, buf)
}

fn request(text: &str) -> (Request<ClientBody>, bool, BytesMut) {
    match parse_str(text) {
        (Parsed::Request(req, close), rest) => (req, close, rest),
        _ => panic!("not taken by the fast path: {text:?}"),
    }
}

fn is_handoff(text: &str) -> bool {
    match parse_str(text) {
        // Nothing consumed: hyper gets every byte.
        (Parsed::Handoff, rest) => rest == text.as_bytes(),
        (Parsed::HandoffSplit(head), rest) => [&head[..], &rest[..]].concat() == text.as_bytes(),
        _ => false,
    }
}

#[test]
fn a_bodiless_request_is_parsed_without_copying_its_head() {
    let (req, close, rest) =
        request("GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\n");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/a/b?c=d");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "example.com");
    assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
    assert!(!close);
    assert!(rest.is_empty());
    assert!(matches!(req.body(), ClientBody::Empty));
    // Room for the headers the request path adds, so it does not grow.
    assert!(req.headers().capacity() >= 3 + ROOM_FOR_ADDED);
}

#[test]
fn pipelined_requests_are_taken_one_at_a_time() {
    let text = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3";
    let mut buf = BytesMut::from(text.as_bytes());
    let Parsed::Request(first, _) = parse(&mut buf) else {
        panic!("first")
    };
    assert_eq!(first.uri().path(), "/1");
    let Parsed::Request(second, _) = parse(&mut buf) else {
        panic!("second")
    };
    assert_eq!(second.method(), Method::HEAD);
    assert!(matches!(parse(&mut buf), Parsed::Partial));
    assert_eq!(&buf[..], b"GET /3");
}

#[test]
fn connection_close_is_noticed_among_other_tokens() {
    let (_, close, _) = request("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n");
    assert!(close);
    let (_, close, _) = request("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n");
    assert!(!close);
}

#[test]
fn bodies_framing_and_protocol_switches_go_to_hyper() {
    for text in [
        // Any body framing, including the smuggling shapes.
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
        "GET / HTTP/1.1\r\nTRANSFER-ENCODING: x\r\n\r\n",
        "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        // Other versions and request-target forms.
        "GET / HTTP/1.0\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET http://example.com/ HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        // Malformed: hyper answers these (400, 431) as it always has.
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
        "G@T / HTTP/1.1\r\n\r\n",
    ] {
        assert!(is_handoff(text), "{text:?}");
    }
    let many = format!(
        "GET / HTTP/1.1\r\n{}\r\n",
        "X: y\r\n".repeat(MAX_HEADERS + 1)
    );
    assert!(is_handoff(&many));
    // Complete but longer than the fast path takes (read ahead at once).
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(MAX_HEAD));
    assert!(is_handoff(&long));
}

#[test]
fn an_incomplete_head_waits_for_more() {
    assert!(matches!(
        parse_str("GET / HTTP/1.1\r\nHost: a\r\n").0,
        Parsed::Partial
    ));
}

fn head_of(resp: Response<ResponseBody>, head_request: bool, close: bool) -> (String, Framing) {
    let mut out = Vec::new();
    let (parts, body) = resp.into_parts();
    let bodiless = head_request || parts.status == StatusCode::NO_CONTENT;
    let framing = encode_head(
        &mut out,
        parts.status,
        &parts.headers,
        &body,
        bodiless,
        close,
    );
    (String::from_utf8(out).unwrap(), framing)
}

#[test]
fn response_heads_are_framed_like_hypers() {
    let mut resp = Response::new(ResponseBody::local("hello"));
    resp.headers_mut()
        .insert("transfer-encoding", HeaderValue::from_static("chunked"));
    let (head, framing) = head_of(resp, false, false);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: 5\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("connection"), "{head}");
    assert!(head.ends_with("\r\n\r\n"));
    assert_eq!(framing, Framing::Length(5));

    // The response's own length and date are kept; close is announced.
    let mut resp = Response::new(ResponseBody::local(""));
    *resp.status_mut() = StatusCode::from_u16(599).unwrap();
    let h = resp.headers_mut();
    h.insert("content-length", HeaderValue::from_static("42"));
    h.insert(
        "date",
        HeaderValue::from_static("Sun, 29 Nov 2026 05:00:00 GMT"),
    );
    let (head, framing) = head_of(resp, true, true);
    assert!(head.starts_with("HTTP/1.1 599 \r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: 42\r\n"), "{head}");
    assert_eq!(head.matches("date: ").count(), 1, "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(framing, Framing::None);
}

#[test]
fn a_head_answer_announces_its_bodys_length_and_a_204_none() {
    let (head, framing) = head_of(Response::new(ResponseBody::local("hello")), true, false);
    assert!(head.contains("\r\ncontent-length: 5\r\n"), "{head}");
    assert_eq!(framing, Framing::None);

    let mut resp = Response::new(ResponseBody::local("hello"));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let (head, _) = head_of(resp, true, false);
    assert!(!head.contains("content-length"), "{head}");
}

#[test]
fn chunked_data_and_the_last_chunk_are_queued_behind_the_head() {
    let mut out = b"HEAD".to_vec();
    let mut pump = Pump::new(Framing::Chunked);
    pump.queue(&mut out, Bytes::from_static(b"hello world"), true);
    pump.finish(&mut out);
    assert_eq!(&out[..], b"HEADb\r\nhello world\r\n0\r\n\r\n");

    // Large data is not copied: it waits in the pump with its CRLF.
    let mut out = Vec::new();
    let big = Bytes::from(vec![b'x'; COPY_LIMIT + 1]);
    pump.queue(&mut out, big.clone(), true);
    pump.finish(&mut out);
    assert_eq!(&out[..], format!("{:x}\r\n", COPY_LIMIT + 1).as_bytes());
    assert_eq!(pump.data, big);
    assert_eq!(pump.tail, b"\r\n0\r\n\r\n");
}

#[test]
fn a_body_longer_than_its_length_is_cut_at_the_length() {
    let mut out = Vec::new();
    let mut pump = Pump::new(Framing::Length(3));
    pump.queue(&mut out, Bytes::from_static(b"abcdef"), false);
    assert_eq!(&out[..], b"abc");
    assert_eq!(pump.sent, 3);
}

#[tokio::test]
async fn prefixed_reads_the_prefix_first() {
    use tokio::io::AsyncReadExt;
    let (mut a, b) = tokio::io::duplex(64);
    tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
        .await
        .unwrap();
    drop(a);
    let mut io = Prefixed {
        prefix: Bytes::from_static(b"hello"),
        inner: b,
    };
    let mut all = String::new();
    io.read_to_string(&mut all).await.unwrap();
    assert_eq!(all, "hello world");
}

#[test]
fn handler_allocations_are_kept_by_a_bounded_number_of_connections() {
    let count = AtomicUsize::new(0);
    let first = KeepPermit::take(&count, 2).expect("room for two");
    let second = KeepPermit::take(&count, 2).expect("room for two");
    assert!(KeepPermit::take(&count, 2).is_none(), "full");
    assert_eq!(
        count.load(Ordering::Relaxed),
        2,
        "a refused take leaves no trace"
    );
    drop(first);
    let third = KeepPermit::take(&count, 2).expect("a permit given back is free again");
    drop((second, third));
    assert_eq!(count.load(Ordering::Relaxed), 0);
}

/// The connection's timer finding it idle makes the head read return, so
/// the connection lets go of the handler's allocation; a head begun is
/// not interrupted, and the mark is taken once.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_lets_go_when_its_timer_finds_it_idle() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let (mut client, server) = tokio::io::duplex(1024);
    let mut conn = Conn {
        io: server,
        read: BytesMut::new(),
        out: Vec::new(),
    };
    let shutdown = Tripwire::new();
    let mut closing = pin!(shutdown.tripped());
    let activity = ConnActivity::new();
    let wait = Duration::from_secs(1);

    let unmarked = tokio::time::timeout(wait, conn.read_head(closing.as_mut(), &activity)).await;
    assert!(unmarked.is_err(), "no head and no mark: still waiting");

    activity.mark_resting();
    let marked = tokio::time::timeout(wait, conn.read_head(closing.as_mut(), &activity)).await;
    assert!(matches!(marked, Ok(Ok(Head::Rest))));
    assert!(!activity.take_resting(), "the mark is taken by the read");

    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    activity.mark_resting();
    let begun = tokio::time::timeout(wait, conn.read_head(closing.as_mut(), &activity)).await;
    assert!(begun.is_err(), "a head begun waits for its end");
    client.write_all(b"st: a\r\n\r\n").await.unwrap();
    let done = tokio::time::timeout(wait, conn.read_head(closing.as_mut(), &activity)).await;
    assert!(matches!(done, Ok(Ok(Head::Request(..)))));
}
