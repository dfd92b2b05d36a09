//! A raw HTTP/1.x client for tests where the exact bytes on the wire
//! matter: requests are written as given (pipelined, split, malformed) and
//! responses are parsed strictly, one at a time, from one read buffer, so a
//! stray byte between two responses shows up as a parse failure.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single read may take before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 request without a body, with `extra` header lines (each
/// ending in CRLF).
pub fn request(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n")
}

/// A plain GET.
pub fn get(path: &str) -> String {
    request("GET", path, "")
}

/// A POST with a Content-Length body.
pub fn post(path: &str, body: &str) -> String {
    let length = format!("Content-Length: {}\r\n", body.len());
    request("POST", path, &length) + body
}

/// One response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    pub status: u16,
    /// Names as sent (case kept), in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The only value of header `name` (case-insensitive); panics if it is
    /// repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "{name} repeated: {self:?}");
        first
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.text()))
    }
}

/// A connection written and read by hand.
pub struct RawClient<S> {
    io: S,
    /// Read and not yet parsed.
    buf: Vec<u8>,
}

impl RawClient<TcpStream> {
    pub async fn connect(addr: std::net::SocketAddr) -> RawClient<TcpStream> {
        RawClient::new(TcpStream::connect(addr).await.expect("connect"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    pub fn new(io: S) -> RawClient<S> {
        RawClient {
            io,
            buf: Vec::new(),
        }
    }

    /// Write `bytes` in one `write_all`.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.write_all(bytes.as_ref()).await.expect("write");
    }

    /// The next response to a request other than HEAD.
    pub async fn response(&mut self) -> RawResponse {
        self.next(false).await
    }

    /// The next response, to a HEAD request: its head only.
    pub async fn head_response(&mut self) -> RawResponse {
        self.next(true).await
    }

    /// The next response, or `None` when the peer closes the connection
    /// before sending a byte of one. Interim (1xx) responses are skipped.
    pub async fn response_or_close(&mut self) -> Option<RawResponse> {
        loop {
            if self.buf.is_empty() && !self.fill().await {
                return None;
            }
            let resp = self.next(false).await;
            if resp.status / 100 != 1 {
                return Some(resp);
            }
        }
    }

    /// `Ok` when the peer closes the connection without sending anything
    /// more; what it sent instead otherwise.
    pub async fn closed(&mut self) -> Result<(), String> {
        if self.buf.is_empty() && !self.fill().await {
            return Ok(());
        }
        Err(format!(
            "the connection stayed open; then came {:?}",
            String::from_utf8_lossy(&self.buf)
        ))
    }

    /// Assert the peer closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        let more = self.fill().await;
        assert!(
            !more && self.buf.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Read once more into the buffer; `false` at the end of the stream
    /// (or a reset, which a test treats alike).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(READ_TIMEOUT, self.io.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing read within {READ_TIMEOUT:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            });
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Read until `n` bytes are buffered; panics at the end of the stream.
    async fn want(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection closed {} bytes short; buffered: {:?}",
                n - self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// The first `n` buffered bytes, removed from the buffer.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        self.want(n).await;
        self.buf.drain(..n).collect()
    }

    /// A line ending in CRLF, without it.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2).await;
                return line[..end].to_vec();
            }
            let len = self.buf.len();
            self.want(len + 1).await;
        }
    }

    async fn next(&mut self, head_request: bool) -> RawResponse {
        let (version, status, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = (
                        parsed.version.unwrap(),
                        parsed.code.unwrap(),
                        parsed
                            .headers
                            .iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value).into_owned();
                                (h.name.to_owned(), value)
                            })
                            .collect::<Vec<_>>(),
                    );
                    self.buf.drain(..len);
                    break head;
                }
                Ok(httparse::Status::Partial) => {
                    let len = self.buf.len();
                    self.want(len + 1).await;
                }
                Err(e) => panic!(
                    "not a response head ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        };
        let mut resp = RawResponse {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length = resp.header("content-length").map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("content-length {v:?}"))
        });
        assert!(
            !(chunked && length.is_some()),
            "both chunked and content-length: {resp:?}"
        );
        if head_request || status / 100 == 1 || status == 204 || status == 304 {
            // No body, whatever the head says.
        } else if chunked {
            resp.body = self.chunked_body().await;
        } else if let Some(n) = length {
            resp.body = self.take(n).await;
        } else {
            // Delimited by the end of the connection.
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .unwrap_or_else(|| panic!("chunk size line {:?}", String::from_utf8_lossy(&line)));
            if size == 0 {
                // Trailers (none expected), then the empty line.
                while !self.line().await.is_empty() {}
                return body;
            }
            body.extend(self.take(size).await);
            assert_eq!(self.take(2).await, b"\r\n", "chunk not followed by CRLF");
        }
    }
}

/// A stamp written by hand: on each connection it reads one request head,
/// writes `answer` as given, and then keeps the connection open, silent,
/// until the peer closes it. For answers no well-behaved server sends
/// (a stall mid-body, broken chunk framing).
pub async fn raw_stamp(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if tcp.write_all(answer).await.is_err() {
                    return;
                }
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A stamp stand-in that records every request it receives, raw (head and
/// body bytes as they came off the wire, framed the way a stamp would
/// frame them), and answers each `200 ok`. Health probes
/// (`/healthservice/...`) are answered and not recorded, so what a test
/// reads is what the proxy forwarded for it.
pub struct RecordingOrigin {
    pub addr: std::net::SocketAddr,
    seen: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Recorded in place of a request the origin could not parse.
pub const UNPARSEABLE: &[u8] = b"<unparseable>";

impl RecordingOrigin {
    pub async fn start() -> RecordingOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(record_connection(tcp, tx.clone()));
            }
        });
        RecordingOrigin { addr, seen }
    }

    /// The next request recorded (head and body, raw).
    pub async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(READ_TIMEOUT, self.seen.recv())
            .await
            .expect("the origin received a request in time")
            .expect("the origin runs")
    }

    /// Every request recorded up to the one whose request line contains
    /// `marker` (not included): send a marked request after a case, then
    /// this returns what the case forwarded, whatever it was.
    pub async fn until(&mut self, marker: &str) -> Vec<Vec<u8>> {
        let mut before = Vec::new();
        loop {
            let req = self.next().await;
            let line_end = req
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or(req.len());
            if String::from_utf8_lossy(&req[..line_end]).contains(marker) {
                return before;
            }
            before.push(req);
        }
    }
}

async fn record_connection(mut tcp: TcpStream, seen: tokio::sync::mpsc::UnboundedSender<Vec<u8>>) {
    let mut buf = Vec::new();
    loop {
        let len = loop {
            match request_len(&buf) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(()) => {
                    let _ = seen.send(UNPARSEABLE.to_vec());
                    return;
                }
            }
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let req: Vec<u8> = buf.drain(..len).collect();
        if !req.starts_with(b"GET /healthservice/") {
            let _ = seen.send(req);
        }
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if tcp.write_all(ok).await.is_err() {
            return;
        }
    }
}

/// The length of the first complete request in `buf` (head and body,
/// framed as RFC 9112 §6.3 says: chunked, then Content-Length, then
/// none); `Ok(None)` until it is all there.
fn request_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let value = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let chunked = value("transfer-encoding")
        .last()
        .is_some_and(|te| te.ends_with("chunked"));
    if chunked {
        return Ok(chunked_len(&buf[head..]).map(|n| head + n));
    }
    let length = match value("content-length").first() {
        Some(v) => v.parse::<usize>().map_err(|_| ())?,
        None => 0,
    };
    Ok((buf.len() >= head + length).then_some(head + length))
}

/// The length of a complete chunked body at the start of `buf`.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let text = String::from_utf8_lossy(&buf[at..at + line]).into_owned();
        let size = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
                at += line + 2;
                if line == 0 {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if buf.len() < at {
            return None;
        }
    }
}
