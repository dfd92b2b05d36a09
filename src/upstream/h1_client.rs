//! The HTTP/1.1 client codec of the request path: [`super`] hands
//! an [`H1Conn`] (new, or idle from [`super::conn_cache`]) a request, which is
//! written and whose response head is read on the request's own task; the
//! response body ([`H1Body`]) then streams to the client and puts the
//! connection back into the pool once it has been read to its end.
//!
//! This replaces hyper's `client::conn::http1`, whose connection task,
//! per-request channels and extra wake-ups were the largest single cost
//! in the request path's profile (figures in `bench/PERF.md`, "Figures
//! behind code comments"). Nothing here is spawned: the
//! connection is owned by whoever is using it (the request future, then the
//! response body), so dropping either closes it.
//!
//! Responses are parsed strictly (RFC 9112): `httparse` for the head with
//! limits on its size and header count, then framing by §6.3. Anything
//! doubtful is an error or, where the message is still well defined,
//! makes the connection single-use.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{BodyError, BoxError, UpstreamBody};

/// Most headers a response head may have (hyper's default is also 100).
pub const MAX_HEADERS: usize = 100;
/// Largest response head, and largest trailer section, accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Buffers larger than this are released when the connection goes idle, so
/// an idle connection costs little memory after one large response.
const KEEP_BUFFER: usize = 16 * 1024;

/// The byte stream to a stamp: TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP; boxed because the session state is large and would
    /// otherwise size every connection, TLS or not.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-memory pipe, for the codec's tests.
    #[cfg(test)]
    Mem(tokio::io::DuplexStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            Io::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            Io::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(test)]
            Io::Mem(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            Io::Mem(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            Io::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            Io::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection failed or closed.
    #[error("connection: {err}")]
    Closed {
        /// The I/O error (`UnexpectedEof` for a close).
        err: io::Error,
        /// No byte of the request had been written.
        unsent: bool,
        /// No byte of a response had arrived.
        quiet: bool,
    },
    /// The stamp's response is not valid HTTP/1.1 (or is unsupported).
    #[error("invalid response: {0}")]
    Protocol(String),
    /// The client's request body failed or exceeded the limit.
    #[error(transparent)]
    Body(BodyError),
    /// The request body's length differs from the length it declared.
    #[error("request body length differs from Content-Length")]
    BodyLength,
}

impl H1Error {
    /// The connection turned out closed before the stamp answered anything:
    /// what a connection the stamp closed while idle looks like.
    pub fn closed_quietly(&self) -> bool {
        match self {
            H1Error::Closed { err, quiet, .. } => {
                *quiet
                    && matches!(
                        err.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    )
            }
            _ => false,
        }
    }

    /// Not one byte of the request was written.
    pub fn unsent(&self) -> bool {
        matches!(self, H1Error::Closed { unsent: true, .. })
    }

    fn eof(unsent: bool, quiet: bool) -> H1Error {
        H1Error::Closed {
            err: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            unsent,
            quiet,
        }
    }
}

fn protocol(why: impl Into<String>) -> H1Error {
    H1Error::Protocol(why.into())
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// No body and no framing header.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl ReqFraming {
    /// From the body's own size, never from the client's headers: a body
    /// of known length gets `Content-Length`, an unknown one is chunked.
    /// An empty body states `Content-Length: 0` only where a body is
    /// expected (or the client stated it), as hyper does.
    fn of(method: &Method, declared: bool, body: &UpstreamBody) -> ReqFraming {
        match body.size_hint().exact() {
            Some(0) if body.is_end_stream() => {
                if declared || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                    ReqFraming::Length(0)
                } else {
                    ReqFraming::None
                }
            }
            Some(n) => ReqFraming::Length(n),
            None => ReqFraming::Chunked,
        }
    }
}

/// One HTTP/1.1 connection to a stamp, idle or in use.
#[derive(Debug)]
pub struct H1Conn {
    io: Io,
    /// Bytes read and not yet parsed; body data is split off it as `Bytes`.
    read: BytesMut,
    /// The request head being written, kept for the next request.
    head: Vec<u8>,
    /// Has served a request before (a stamp may have closed it meanwhile).
    reused: bool,
}

impl H1Conn {
    /// A new connection. Boxed for its whole life: it moves from the
    /// pool into each exchange and its response body and back, and a
    /// pointer is cheaper to move than the connection (about 100 bytes).
    pub fn new(io: Io) -> Box<H1Conn> {
        Box::new(H1Conn {
            io,
            read: BytesMut::new(),
            head: Vec::new(),
            reused: false,
        })
    }

    /// Whether the connection served a request before.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Going idle: large buffers are released, the rest kept for the next
    /// request.
    pub(crate) fn park(&mut self) {
        self.reused = true;
        if self.read.capacity() > KEEP_BUFFER {
            self.read = BytesMut::new();
        }
        if self.head.capacity() > KEEP_BUFFER {
            self.head = Vec::new();
        }
    }

    /// Whether an idle connection still looks usable: a read would block.
    /// End of stream, an error or bytes the stamp sent unasked all mean it
    /// is not. Registers the current task for the connection's readiness,
    /// which the response read that follows does anyway.
    pub async fn still_open(&mut self) -> bool {
        self.read.reserve(READ_CHUNK);
        let read = &mut self.read;
        let io = &mut self.io;
        std::future::poll_fn(|cx| match pin!(io.read_buf(&mut *read)).poll(cx) {
            Poll::Pending => Poll::Ready(true),
            Poll::Ready(_) => Poll::Ready(false),
        })
        .await
    }

    /// Send one request and read its response head. `target` is the
    /// request target (origin-form, or authority-form for `CONNECT`),
    /// `host` the `Host` to send if the headers have none.
    pub async fn send(
        mut self: Box<Self>,
        method: &Method,
        target: &str,
        host: &str,
        headers: &HeaderMap,
        body: UpstreamBody,
        queue: &Arc<IdleQueue>,
    ) -> Result<Response<H1Body>, H1Error> {
        let declared = headers.contains_key(header::CONTENT_LENGTH);
        let framing = ReqFraming::of(method, declared, &body);
        encode_head(&mut self.head, method, target, host, headers, framing);
        let head_request = *method == Method::HEAD;
        match self.write_request(body, framing).await {
            Ok(()) => self.read_response(head_request, queue, true).await,
            // A stamp may answer before it has read the whole body (413,
            // 401) and close: the client should see that answer, not the
            // reset our next write ran into. Only a response already on
            // its way counts, and the connection is not reused after it.
            Err(err @ H1Error::Closed { unsent: false, .. }) => {
                match self.read_response(head_request, queue, false).await {
                    Ok(resp) => Ok(resp),
                    Err(_) => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    async fn write_request(
        &mut self,
        body: UpstreamBody,
        framing: ReqFraming,
    ) -> Result<(), H1Error> {
        let mut written = 0u64;
        let closed = |err, written: u64| H1Error::Closed {
            err,
            unsent: written == 0,
            quiet: true,
        };
        if let UpstreamBody::Full { data } = &body {
            // Head and body in one write: a small request is one syscall.
            let data = data.as_ref().map_or(&[][..], |d| &d[..]);
            write_slices(&mut self.io, [&self.head, data, &[]], &mut written)
                .await
                .map_err(|e| closed(e, written))?;
        } else {
            write_slices(&mut self.io, [&self.head, &[], &[]], &mut written)
                .await
                .map_err(|e| closed(e, written))?;
            let mut body = pin!(body);
            let mut sent = 0u64;
            while let Some(frame) = body.as_mut().frame().await {
                let frame = frame.map_err(H1Error::Body)?;
                // Trailers of the client's request are not forwarded.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                match framing {
                    ReqFraming::Length(n) if sent > n => return Err(H1Error::BodyLength),
                    ReqFraming::Chunked => {
                        let mut line = [0u8; 18];
                        let size = chunk_size_line(&mut line, data.len());
                        write_slices(&mut self.io, [size, &data, b"\r\n"], &mut written).await
                    }
                    _ => write_slices(&mut self.io, [&data, &[], &[]], &mut written).await,
                }
                .map_err(|e| closed(e, written))?;
            }
            match framing {
                ReqFraming::Chunked => {
                    write_slices(&mut self.io, [b"0\r\n\r\n", &[], &[]], &mut written)
                        .await
                        .map_err(|e| closed(e, written))?;
                }
                ReqFraming::Length(n) if sent != n => return Err(H1Error::BodyLength),
                _ => {}
            }
        }
        self.io.flush().await.map_err(|e| closed(e, written))
    }

    /// Read the response head; `reusable` is false when the request was
    /// not written completely (the connection is then single-use).
    async fn read_response(
        mut self: Box<Self>,
        head_request: bool,
        queue: &Arc<IdleQueue>,
        reusable: bool,
    ) -> Result<Response<H1Body>, H1Error> {
        let mut received = false;
        loop {
            if !self.read.is_empty() {
                match parse_head(&mut self.read, head_request)? {
                    Some(Parsed::Informational) => continue,
                    Some(Parsed::Final(head, framing, reuse)) => {
                        let reuse = reuse && reusable;
                        let mut resp = Response::new(H1Body::new(self, framing, reuse, queue));
                        *resp.status_mut() = head.status;
                        *resp.version_mut() = head.version;
                        *resp.headers_mut() = head.headers;
                        return Ok(resp);
                    }
                    None if self.read.len() >= MAX_HEAD => {
                        return Err(protocol("response head larger than 64 KiB"));
                    }
                    None => {}
                }
            }
            self.read.reserve(READ_CHUNK);
            let quiet = !received && self.read.is_empty();
            let n = self
                .io
                .read_buf(&mut self.read)
                .await
                .map_err(|err| H1Error::Closed {
                    err,
                    unsent: false,
                    quiet,
                })?;
            if n == 0 {
                return Err(H1Error::eof(false, quiet));
            }
            received = true;
        }
    }
}

/// Write up to three slices fully; `written` counts the bytes.
async fn write_slices(io: &mut Io, parts: [&[u8]; 3], written: &mut u64) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut slices = [IoSlice::new(&[]); 3];
        let k = unwritten(parts, done, &mut slices);
        // One slice (a request without a body, mostly) goes out with
        // `send`: the kernel's `writev` path costs more per call.
        let n = if k == 1 {
            io.write(&slices[0]).await?
        } else {
            io.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
        *written += n as u64;
    }
    Ok(())
}

/// Whether a parser that has taken a hop-by-hop header's meaning may leave
/// it out of the message's map altogether: `Keep-Alive` and
/// `Transfer-Encoding` always (framing is each hop's own), `Connection`
/// when its tokens are only `close` and `keep-alive`, so that it names no
/// other header for `proxy::headers::strip_hop_by_hop` to find and remove. A header left
/// out costs no insert into the map and no removal from it, which showed
/// in the per-response profile (`bench/PERF.md`, "Figures behind code
/// comments"). Any other `Connection` value goes into the map, and the strip
/// removes it with the headers it names.
pub fn consumed_by_parser(name: &HeaderName, value: &[u8]) -> bool {
    if name == header::CONNECTION {
        value.split(|&b| b == b',').all(|t| {
            let t = t.trim_ascii();
            t.is_empty()
                || t.eq_ignore_ascii_case(b"close")
                || t.eq_ignore_ascii_case(b"keep-alive")
        })
    } else {
        name == header::TRANSFER_ENCODING || name.as_str() == "keep-alive"
    }
}

/// The parts of `parts` not yet written when `done` bytes of them are,
/// into `slices`; returns how many slices are filled.
pub(crate) fn unwritten<'a>(
    parts: [&'a [u8]; 3],
    done: usize,
    slices: &mut [IoSlice<'a>; 3],
) -> usize {
    let mut k = 0;
    let mut skip = done;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        slices[k] = IoSlice::new(&part[skip..]);
        skip = 0;
        k += 1;
    }
    k
}

/// `{size:x}\r\n` into `buf`, without formatting machinery.
pub(crate) fn chunk_size_line(buf: &mut [u8; 18], size: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        buf[digits - 1 - i] = HEX[(size >> (4 * i)) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

/// The request head into `out` (cleared first). The client's framing
/// headers are never copied: the body's own framing is written instead.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &str,
    headers: &HeaderMap,
    framing: ReqFraming,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            let mut digits = [0u8; 20];
            out.extend_from_slice(decimal(&mut digits, n));
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, into the end of `buf`, without formatting machinery.
pub(crate) fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// A parsed final response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

enum Parsed {
    /// A 1xx other than 101: consumed and skipped.
    Informational,
    /// The final response, how its body is framed, and whether the
    /// connection may serve another request afterwards.
    Final(Head, Framing, bool),
}

/// Parse a response head from the start of `buf`; `None` when incomplete.
/// The head is split off `buf` and frozen, and header values are slices of
/// it, so no header value is copied.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, H1Error> {
    // Where each header's name and value lie in the head (offsets fit 16
    // bits: a longer head is refused). Both arrays are per response: the
    // parser's is left uninitialised, and these are kept small, since
    // clearing them showed as data-cache misses in the profile.
    let mut spans = [[0u16; 4]; MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut res, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(protocol(format!("more than {MAX_HEADERS} header fields")));
            }
            Err(e) => return Err(protocol(format!("response head: {e}"))),
        };
        if len >= MAX_HEAD {
            return Err(protocol("response head larger than 64 KiB"));
        }
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            *span = [
                name as u16,
                (name + h.name.len()) as u16,
                value as u16,
                (value + h.value.len()) as u16,
            ];
        }
        (
            len,
            res.code.unwrap_or_default(),
            res.version.unwrap_or_default(),
            res.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| protocol(format!("status {code}")))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(Parsed::Informational));
    }
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };

    let mut headers = HeaderMap::with_capacity(count);
    let mut chunked = false;
    let mut has_te = false;
    let mut length: Option<u64> = None;
    let mut close = false;
    let mut keep_alive = false;
    for &[ns, ne, vs, ve] in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| protocol("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| protocol("invalid header value"))?;
        if name == header::TRANSFER_ENCODING {
            has_te = true;
            // Only the final coding of the whole list says whether the body
            // is chunked; a line with no coding in it (`Transfer-Encoding:`
            // after `chunked`) does not end the list (the fuzzer in
            // `fuzz.rs` found that it read such a body to the close).
            if let Some(last) = tokens(&value).last() {
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONTENT_LENGTH {
            for token in tokens(&value) {
                let n = parse_length(token).ok_or_else(|| protocol("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting Content-Length values"));
                }
                length = Some(n);
            }
            if tokens(&value).next().is_none() {
                return Err(protocol("empty Content-Length"));
            }
        } else if name == header::CONNECTION {
            for token in tokens(&value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        if !consumed_by_parser(&name, value.as_bytes()) {
            headers.append(name, value);
        }
    }

    let mut reuse = !close && (version == Version::HTTP_11 || keep_alive);
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        reuse = false;
        Framing::Switched
    } else if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if has_te {
        if length.is_some() {
            // Both: a smuggling attempt or a broken stamp. The chunked
            // framing wins (RFC 9112 §6.3), the stated length must not
            // reach the client, and the connection is not trusted again.
            headers.remove(header::CONTENT_LENGTH);
            reuse = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    if framing == Framing::Close {
        reuse = false;
    }
    Ok(Some(Parsed::Final(
        Head {
            status,
            version,
            headers,
        },
        framing,
        reuse,
    )))
}

/// The comma-separated tokens of a header value, trimmed, empty ones
/// skipped.
pub(crate) fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: decimal digits only, no sign, no overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of the framing.
    Chunked(Chunk),
    /// Until the stamp closes the connection.
    Close,
    /// `101 Switching Protocols`: no HTTP body; the connection is the
    /// request path's to take ([`H1Body::take_switched`]), never pooled.
    Switched,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, in the trailer section (this many bytes seen).
    Trailers(usize),
    /// The body ended.
    Done,
}

/// Consume chunked framing buffered in `buf` (CRLFs, size lines, trailers)
/// until chunk data, the end, or the need for more bytes.
fn advance_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<(), H1Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(protocol("chunk-size line too long"));
                    }
                    return Ok(());
                };
                if nl > MAX_CHUNK_LINE {
                    return Err(protocol("chunk-size line too long"));
                }
                let size = parse_chunk_size(&buf[..nl])?;
                buf.advance(nl + 1);
                *state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(0) => *state = Chunk::DataEnd,
            Chunk::Data(_) | Chunk::Done => return Ok(()),
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|&b| b != b'\r') {
                        return Err(protocol("chunk data not followed by CRLF"));
                    }
                    return Ok(());
                }
                if &buf[..2] != b"\r\n" {
                    return Err(protocol("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers(seen) => {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    if seen + buf.len() > MAX_HEAD {
                        return Err(protocol("trailer section too large"));
                    }
                    return Ok(());
                };
                if nl == 0 || buf[nl - 1] != b'\r' {
                    return Err(protocol("trailer line not ended by CRLF"));
                }
                // A bare CR (or NUL) inside a trailer line: a parser that
                // ends lines at a bare CR would see the trailers end
                // elsewhere ("\r\r\n" is an empty line to it).
                if buf[..nl - 1].iter().any(|&b| b == b'\r' || b == 0) {
                    return Err(protocol("control character in a trailer line"));
                }
                let seen = seen + nl + 1;
                if seen > MAX_HEAD {
                    return Err(protocol("trailer section too large"));
                }
                let last = nl == 1;
                buf.advance(nl + 1);
                *state = if last {
                    Chunk::Done
                } else {
                    Chunk::Trailers(seen)
                };
            }
        }
    }
}

/// `1*HEXDIG [ BWS ";" extensions ] CR` (the LF already cut off).
fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let bad = || protocol("invalid chunk-size line");
    let line = line.strip_suffix(b"\r").ok_or_else(bad)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad());
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        size = size << 4 | u64::from((d as char).to_digit(16).ok_or_else(bad)?);
    }
    // BWS is spaces and tabs only: `trim_ascii_start` also took a bare CR
    // (or a form feed), so "5\r\r\n" read as size 5 where a parser that
    // ends lines at a bare CR reads another line (found by the fuzzer in
    // `fuzz.rs`; httparse refuses it too).
    let bws = line[digits..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &line[digits + bws..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(bad());
    }
    // Extensions are ignored, but must not hide control characters.
    if rest.iter().any(|&b| b == b'\r' || b == 0 || b == b'\n') {
        return Err(bad());
    }
    Ok(size)
}

/// A connection reading a response body.
#[derive(Debug)]
struct Reading {
    conn: Box<H1Conn>,
    framing: Framing,
    reuse: bool,
    queue: Arc<IdleQueue>,
}

/// A response body streamed from a stamp over an [`H1Conn`]. Read to its
/// end, it returns the connection to the pool (when reusable); dropped
/// before, it closes the connection.
#[derive(Debug)]
pub struct H1Body {
    reading: Option<Reading>,
}

impl H1Body {
    fn new(conn: Box<H1Conn>, framing: Framing, reuse: bool, queue: &Arc<IdleQueue>) -> H1Body {
        let mut body = H1Body {
            reading: Some(Reading {
                conn,
                framing,
                reuse,
                queue: Arc::clone(queue),
            }),
        };
        if framing == Framing::Length(0) {
            body.finish();
        }
        body
    }

    /// After `101 Switching Protocols`: the raw connection and the bytes
    /// the stamp already sent past the head. `None` for any other answer.
    pub fn take_switched(&mut self) -> Option<(Io, BytesMut)> {
        if !matches!(&self.reading, Some(r) if r.framing == Framing::Switched) {
            return None;
        }
        let conn = self.reading.take()?.conn;
        let H1Conn { io, read, .. } = *conn;
        Some((io, read))
    }

    /// The body was read to its end: the connection goes back if it may.
    /// Bytes after the response (the stamp must send none) make it
    /// unusable.
    fn finish(&mut self) {
        if let Some(r) = self.reading.take()
            && r.reuse
            && r.conn.read.is_empty()
        {
            r.queue.checkin(r.conn);
        }
    }
}

impl Reading {
    /// The next piece of body data, `None` at its end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, H1Error>> {
        loop {
            let buf = &mut self.conn.read;
            match &mut self.framing {
                Framing::Length(0) | Framing::Switched => return Poll::Ready(Ok(None)),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    let data = buf.split_to(n as usize).freeze();
                    if let Framing::Chunked(state) = &mut self.framing {
                        // Consume the framing that follows, so that the
                        // end is known right after the last data.
                        advance_chunked(state, buf)?;
                    }
                    return Poll::Ready(Ok(Some(data)));
                }
                Framing::Close if !buf.is_empty() => {
                    return Poll::Ready(Ok(Some(buf.split().freeze())));
                }
                Framing::Chunked(Chunk::Done) => return Poll::Ready(Ok(None)),
                Framing::Chunked(state) => {
                    let before = *state;
                    advance_chunked(state, buf)?;
                    if *state != before {
                        continue;
                    }
                }
                Framing::Length(_) | Framing::Close => {}
            }
            // More bytes needed.
            self.conn.read.reserve(READ_CHUNK);
            let n = match pin!(self.conn.io.read_buf(&mut self.conn.read)).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(err)) => {
                    return Poll::Ready(Err(H1Error::Closed {
                        err,
                        unsent: false,
                        quiet: false,
                    }));
                }
            };
            if n == 0 {
                return Poll::Ready(if self.framing == Framing::Close {
                    Ok(None)
                } else {
                    Err(H1Error::eof(false, false))
                });
            }
        }
    }

    fn ended(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        match reading.poll_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(data))) => {
                if reading.ended() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.reading = None;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            None => SizeHint::with_exact(0),
            Some(Reading {
                framing: Framing::Length(n),
                ..
            }) => SizeHint::with_exact(*n),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Idle HTTP/1.1 connections to one stamp. Shared (`Arc`) with the
/// response bodies reading on its connections, which return them here; a
/// queue outlives its pool only until those bodies end.
#[derive(Debug)]
pub struct IdleQueue {
    idle_timeout: Duration,
    /// Oldest first. Checkout takes the newest: the one least likely to
    /// have been closed by the stamp, and it leaves the old ones to expire
    /// when fewer connections are needed than are open.
    conns: Mutex<VecDeque<(Instant, Box<H1Conn>)>>,
}

impl IdleQueue {
    pub(crate) fn new(idle_timeout: Duration) -> IdleQueue {
        IdleQueue {
            idle_timeout,
            conns: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently used idle connection, if any. Idle-expired ones
    /// are dropped (which closes them) on the way.
    pub fn checkout(&self) -> Option<Box<H1Conn>> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        self.expire(&mut conns, now);
        conns.pop_back().map(|(_, conn)| conn)
    }

    /// An idle connection, ready for the next request.
    pub fn checkin(&self, mut conn: Box<H1Conn>) {
        conn.park();
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        self.expire(&mut conns, now);
        conns.push_back((now, conn));
    }

    fn expire(&self, conns: &mut VecDeque<(Instant, Box<H1Conn>)>, now: Instant) {
        while conns
            .front()
            .is_some_and(|(since, _)| now.saturating_duration_since(*since) >= self.idle_timeout)
        {
            conns.pop_front();
        }
    }

    /// Idle connections queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
