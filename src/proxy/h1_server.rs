//! The HTTP/1.1 fast path of client connections: [`super::server`] starts
//! every plaintext and TLS connection here. Requests without a body (GET,
//! HEAD, DELETE, ...) are parsed, handed to [`Gateway::handle`] and their
//! responses written on the connection's own task, with no hyper
//! dispatcher, service future or body channel in between.
//!
//! Everything else is handed to hyper, together with the bytes already
//! read, for the rest of the connection ([`Served::Handoff`]): a request
//! with a body (`Content-Length`, `Transfer-Encoding`), `Expect`, `Upgrade`,
//! `CONNECT`, HTTP/1.0, absolute-form or asterisk-form targets, HTTP/2's
//! preface, and anything `httparse` or `http` would not accept. Message
//! framing of request bodies, where request smuggling hides, therefore
//! stays with hyper; this path only ever reads heads that end the message.
//!
//! Behaviour matches hyper's server where a client can see it: lower-case
//! header names, a `Date` when the response has none, `Content-Length`
//! from an exact body size and chunked otherwise, no body for HEAD, 204
//! and 304, `connection: close` when the client asked for it or the proxy
//! is shutting down, and an in-flight request dropped when the client
//! closes its connection.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::{ClientBody, ResponseBody};
use super::conn::{ConnActivity, ConnInfo, TryTimer};
use super::handler::{Gateway, error_response};
use crate::error::{BadRequest, ProxyError};
use crate::tripwire::{Tripped, Tripwire};
use crate::upstream::h1_client::{chunk_size_line, consumed_by_parser, decimal, tokens, unwritten};

/// Most header fields a request head may have on the fast path; a longer
/// head goes to hyper, which applies its own limit (also 100).
const MAX_HEADERS: usize = 100;
/// A request head not complete within this many bytes goes to hyper.
const MAX_HEAD: usize = 16 * 1024;
/// How an HTTP/2 preface starts, as far as `httparse` reads before it
/// refuses the version.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2";
/// Bytes read at a time.
const READ_CHUNK: usize = 8 * 1024;
/// While a request is served, read ahead (pipelined requests, or the end
/// of the connection) at most this far.
const MAX_READ_AHEAD: usize = 64 * 1024;
/// Body data up to this size is copied behind the head or chunk line so a
/// response leaves in one write; larger data is written from its own buffer.
const COPY_LIMIT: usize = 16 * 1024;
/// Room for the headers `prepare_request` adds, made at parse time so the
/// map does not grow on the request path.
const ROOM_FOR_ADDED: usize = super::headers::ADDED_REQUEST_HEADERS;

/// How the fast path let go of a connection.
pub enum Served<I> {
    /// The connection is finished: closed by the client, after a response
    /// that ends it, on an I/O error, or at shutdown.
    Closed,
    /// hyper takes the connection from here, starting with the bytes the
    /// fast path read and did not serve.
    Handoff(Prefixed<I>),
}

/// Serve `io` until it closes, or until a request the fast path does not
/// take arrives.
pub async fn serve<I>(io: I, gateway: &Gateway, info: &ConnInfo, shutdown: &Tripwire) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        io,
        read: BytesMut::new(),
        out: Vec::new(),
    };
    // One try timer for the connection's requests, moved for each.
    let try_timer = TryTimer::default();
    // The handler's future (about 4 KiB) lives in one allocation reused
    // by each request: a new one per request missed the allocator's thread
    // cache and showed as a tenth of the proxy's user time in the profile.
    // Only connections holding a permit keep it between requests (so many
    // idle connections do not each hold 4 KiB), and the connection's timer
    // lets go of it (and of the try timer) while the connection is idle.
    let mut handler = None;
    let mut keep: Option<KeepPermit> = None;
    // One shutdown waiter for the connection's life, not one per request.
    let mut closing = pin!(shutdown.tripped());
    // A connection's protocol is chosen by its first bytes: once a request
    // was served, an HTTP/2 preface is a malformed HTTP/1.1 request, not
    // a switch (hyper would take it as h2c prior knowledge after the
    // hand-off).
    let mut served = false;
    loop {
        let (req, close) = match conn.read_head(closing.as_mut(), &info.activity).await {
            Ok(Head::Request(req, close)) => (req, close),
            Ok(Head::Rest) => {
                handler = None;
                keep = None;
                try_timer.release();
                continue;
            }
            Ok(Head::Handoff(bytes)) if served && bytes.starts_with(H2_PREFACE_LINE) => {
                conn.refuse(&ProxyError::BadRequest(BadRequest::LateHttp2Preface))
                    .await;
                return Served::Closed;
            }
            Ok(Head::Handoff(bytes)) => {
                return Served::Handoff(Prefixed {
                    prefix: bytes,
                    inner: conn.io,
                });
            }
            Err(Gone) => return Served::Closed,
        };
        // Busy from here until the response is written: the connection's
        // idle timer must not close it in between.
        let busy = info.activity.busy();
        let head_request = req.method() == Method::HEAD;
        // Boxed, not inline: the connection's future would otherwise hold a
        // slot the size of the handler's future for its whole life.
        let handling = match &mut handler {
            Some(slot) => {
                let slot: &mut Pin<Box<Option<_>>> = slot;
                slot.set(Some(gateway.handle(req, info, Some(&try_timer))));
                slot
            }
            None => handler.insert(crate::upstream::boxed_in_place(|| {
                Some(gateway.handle(req, info, Some(&try_timer)))
            })),
        };
        let resp = std::future::poll_fn(|cx| {
            let handle = handling.as_mut().as_pin_mut().expect("set just above");
            if let Poll::Ready(resp) = handle.poll(cx) {
                return Poll::Ready(Ok(resp));
            }
            conn.poll_read_ahead(cx).map(Err)
        })
        .await;
        // Ends the handler's borrows (and, if the client left, the request).
        handling.set(None);
        if keep.is_none() {
            keep = KeepPermit::take(&KEPT_HANDLERS, MAX_KEPT_HANDLERS);
            if keep.is_none() {
                handler = None;
            }
        }
        let Ok(resp) = resp else {
            // The client left: dropping the handler cancels the request.
            return Served::Closed;
        };
        let close = close || shutdown.is_tripped();
        // Only the body and its progress live across the writes: the
        // response head is encoded and dropped before the first one, so
        // the connection's future does not hold it.
        // The body (and the request's in-flight guard in it) ends with this
        // block, before the connection counts as idle below.
        let (written, pump) = {
            let (body, mut pump) = conn.start_response(resp, head_request, close);
            let mut body = pin!(body);
            let written =
                std::future::poll_fn(|cx| conn.poll_pump(cx, body.as_mut(), &mut pump)).await;
            (written, pump)
        };
        match conn.end_response(written, &pump) {
            Ok(true) if !shutdown.is_tripped() => {}
            Ok(_) => {
                conn.close().await;
                return Served::Closed;
            }
            Err(Gone) => return Served::Closed,
        }
        drop(busy);
        served = true;
        // A buffer with nothing in it is released: an idle keep-alive
        // connection holds no read buffer. Part of the next head read
        // ahead starts that head's timer now, as its first byte would have.
        if conn.read.is_empty() {
            conn.read = BytesMut::new();
        } else {
            info.activity.bytes_read();
        }
    }
}

/// Most connections that keep their handler's allocation between requests,
/// process-wide (4 KiB each): enough for every busy connection of a
/// loaded proxy, few enough that idle connections cost little.
const MAX_KEPT_HANDLERS: usize = 1024;
static KEPT_HANDLERS: AtomicUsize = AtomicUsize::new(0);

/// A connection's right to keep its handler's allocation between
/// requests; see [`MAX_KEPT_HANDLERS`]. Given back on drop.
struct KeepPermit<'a>(&'a AtomicUsize);

impl KeepPermit<'_> {
    fn take(count: &AtomicUsize, max: usize) -> Option<KeepPermit<'_>> {
        // Checked first: past the limit, a request costs one load, not
        // two writes to a line every worker thread shares.
        if count.load(Ordering::Relaxed) >= max {
            return None;
        }
        if count.fetch_add(1, Ordering::Relaxed) >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(KeepPermit(count))
    }
}

impl Drop for KeepPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client closed the connection or it failed: nothing more to do.
#[derive(Debug)]
struct Gone;

/// A request head read from the client.
#[allow(clippy::large_enum_variant)] // consumed at once; boxing costs an allocation per request
enum Head {
    /// A request for the fast path, and whether the client asked to close
    /// the connection after it.
    Request(Request<ClientBody>, bool),
    /// Not for the fast path: every byte read so far, for hyper.
    Handoff(Bytes),
    /// Nothing read yet, and the connection's timer found it idle: time to
    /// let go of what is kept for the next request.
    Rest,
}

struct Conn<I> {
    io: I,
    /// Read and not yet parsed: the start of the next request.
    read: BytesMut,
    /// The response head, chunk lines and small body data being written.
    out: Vec<u8>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Read until a complete request head is buffered. Shutdown ends a
    /// connection only between requests, with nothing of the next one read.
    async fn read_head(
        &mut self,
        mut closing: Pin<&mut Tripped<'_>>,
        activity: &ConnActivity,
    ) -> Result<Head, Gone> {
        loop {
            if !self.read.is_empty() {
                match parse(&mut self.read) {
                    Parsed::Request(req, close) => return Ok(Head::Request(req, close)),
                    Parsed::Partial if self.read.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Handoff => {
                        return Ok(Head::Handoff(std::mem::take(&mut self.read).freeze()));
                    }
                    Parsed::HandoffSplit(head) => {
                        let mut all = BytesMut::with_capacity(head.len() + self.read.len());
                        all.extend_from_slice(&head);
                        all.extend_from_slice(&self.read);
                        return Ok(Head::Handoff(all.freeze()));
                    }
                }
            }
            let idle = self.read.is_empty();
            let read = std::future::poll_fn(|cx| poll_read_some(&mut self.io, cx, &mut self.read));
            let n = if idle {
                tokio::select! {
                    biased;
                    n = read => n,
                    () = closing.as_mut() => return Err(Gone),
                    // Polled again whenever the connection's timer fires.
                    () = std::future::poll_fn(|_| {
                        if activity.take_resting() { Poll::Ready(()) } else { Poll::Pending }
                    }) => return Ok(Head::Rest),
                }
            } else {
                read.await
            };
            match n {
                Ok(0) | Err(_) => return Err(Gone),
                Ok(_) => {}
            }
        }
    }

    /// While a request is served: read what the client sends next
    /// (pipelined requests) into the buffer, up to a limit. Ready only when
    /// the client closed or the connection failed.
    fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<Gone> {
        while self.read.len() < MAX_READ_AHEAD {
            match poll_read_some(&mut self.io, cx, &mut self.read) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Gone),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Pending
    }

    /// Encode the response head into the write buffer; the body and its
    /// framing are what is left to write.
    fn start_response(
        &mut self,
        resp: Response<ResponseBody>,
        head_request: bool,
        close: bool,
    ) -> (ResponseBody, Pump) {
        let (parts, body) = resp.into_parts();
        let status = parts.status;
        self.out = buffers::take();
        let bodiless = head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational();
        let framing = encode_head(
            &mut self.out,
            status,
            &parts.headers,
            &body,
            bodiless,
            close,
        );
        let mut pump = Pump::new(framing);
        pump.done = bodiless || body.is_end_stream();
        pump.keep = !close && !closes(&parts.headers);
        pump.bodiless = bodiless;
        if pump.done {
            pump.finish(&mut self.out);
        }
        (body, pump)
    }

    /// After the response is written (or failed): `Ok(true)` when the
    /// connection may serve another request.
    fn end_response(&mut self, written: Result<(), PumpError>, pump: &Pump) -> Result<bool, Gone> {
        buffers::give(std::mem::take(&mut self.out));
        match written {
            // A body shorter than its Content-Length leaves the client
            // waiting for bytes that never come unless the connection ends.
            Ok(()) => Ok(pump.keep
                && (pump.bodiless
                    || !matches!(pump.framing, Framing::Length(n) if pump.sent != n))),
            Err(PumpError::Client) => Err(Gone),
            // A body that fails midway (the stamp reset, a drain cut) cannot
            // be ended cleanly: closing tells the client it is incomplete.
            Err(PumpError::Body) => Ok(false),
        }
    }

    /// Take the body's frames as they come and write them, until the body
    /// has ended and everything is written and flushed. What the body has
    /// ready is gathered first, so a head and a small body leave in one
    /// write.
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        mut body: Pin<&mut ResponseBody>,
        pump: &mut Pump,
    ) -> Poll<Result<(), PumpError>> {
        loop {
            while !pump.done && pump.data.is_empty() && self.out.len() < COPY_LIMIT {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            pump.queue(&mut self.out, data, self.io.is_write_vectored());
                        }
                        if body.is_end_stream() {
                            pump.done = true;
                            pump.finish(&mut self.out);
                        }
                    }
                    Poll::Ready(None) => {
                        pump.done = true;
                        pump.finish(&mut self.out);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(error = %e, "response body failed; closing the client connection");
                        return Poll::Ready(Err(PumpError::Body));
                    }
                    Poll::Pending => break,
                }
            }
            if pump.pos < self.out.len() + pump.data.len() + pump.tail.len() {
                ready!(self.poll_write_queued(cx, pump))?;
                continue;
            }
            if pump.done {
                return Pin::new(&mut self.io)
                    .poll_flush(cx)
                    .map_err(|_| PumpError::Client);
            }
            // Everything written and the stamp has sent nothing more yet:
            // notice meanwhile if the client goes away, as hyper does.
            ready!(self.poll_read_ahead(cx));
            return Poll::Ready(Err(PumpError::Client));
        }
    }

    /// Write `out`, then the queued data, then its tail.
    fn poll_write_queued(
        &mut self,
        cx: &mut Context<'_>,
        pump: &mut Pump,
    ) -> Poll<Result<(), PumpError>> {
        loop {
            let parts = [&self.out[..], &pump.data[..], pump.tail];
            let total: usize = parts.iter().map(|p| p.len()).sum();
            if pump.pos >= total {
                self.out.clear();
                pump.data = Bytes::new();
                pump.tail = &[];
                pump.pos = 0;
                return Poll::Ready(Ok(()));
            }
            let mut slices = [IoSlice::new(&[]); 3];
            let k = unwritten(parts, pump.pos, &mut slices);
            let io = Pin::new(&mut self.io);
            let written = if k == 1 {
                io.poll_write(cx, &slices[0])
            } else {
                io.poll_write_vectored(cx, &slices[..k])
            };
            match ready!(written) {
                Ok(0) | Err(_) => return Poll::Ready(Err(PumpError::Client)),
                Ok(n) => pump.pos += n,
            }
        }
    }

    /// Answer a head refused before it reached the handler, then end the
    /// connection: what follows it cannot be framed.
    async fn refuse(&mut self, err: &ProxyError) {
        let resp = error_response(err, &super::headers::new_request_id(), Version::HTTP_11);
        let (body, mut pump) = self.start_response(resp, false, true);
        let mut body = pin!(body);
        let _ = std::future::poll_fn(|cx| self.poll_pump(cx, body.as_mut(), &mut pump)).await;
        buffers::give(std::mem::take(&mut self.out));
        self.close().await;
    }

    /// End the connection cleanly after its last response.
    async fn close(&mut self) {
        let _ = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
    }
}

/// Read once into `buf`. An empty buffer is read through the stack, so a
/// connection waiting for its next request holds no buffer of its own.
fn poll_read_some<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() >= READ_CHUNK / 2 {
        return tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    buf.extend_from_slice(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

#[derive(Debug)]
enum PumpError {
    /// Writing to the client failed, or the client left.
    Client,
    /// The response body failed.
    Body,
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is written (HEAD, 204, 304).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The body's progress: what is queued behind `out`, and how much of it
/// (counting `out`) is written.
struct Pump {
    framing: Framing,
    /// Body bytes queued so far.
    sent: u64,
    /// A body chunk too large to copy, written from its own buffer.
    data: Bytes,
    /// Written after `data`: the chunk's CRLF, maybe the last chunk.
    tail: &'static [u8],
    /// Bytes of `out`, `data` and `tail` written.
    pos: usize,
    /// The body has ended; its end is queued.
    done: bool,
    /// The connection may serve another request after this response.
    keep: bool,
    /// No body is sent (HEAD, 204, 304).
    bodiless: bool,
}

impl Pump {
    /// Nothing queued or written yet; the connection kept unless told.
    fn new(framing: Framing) -> Pump {
        Pump {
            framing,
            sent: 0,
            data: Bytes::new(),
            tail: &[],
            pos: 0,
            done: false,
            keep: true,
            bodiless: false,
        }
    }

    /// Queue one data frame behind what `out` holds.
    fn queue(&mut self, out: &mut Vec<u8>, data: Bytes, vectored: bool) {
        let mut data = data;
        match self.framing {
            Framing::None => return,
            // Never more than the declared length: the rest would be read
            // as the start of another response.
            Framing::Length(n) => {
                let left = n.saturating_sub(self.sent);
                if (data.len() as u64) > left {
                    data.truncate(left as usize);
                }
            }
            Framing::Chunked => {
                let mut line = [0u8; 18];
                out.extend_from_slice(chunk_size_line(&mut line, data.len()));
            }
        }
        self.sent += data.len() as u64;
        let crlf: &'static [u8] = if self.framing == Framing::Chunked {
            b"\r\n"
        } else {
            b""
        };
        if data.len() <= COPY_LIMIT || !vectored {
            out.extend_from_slice(&data);
            out.extend_from_slice(crlf);
        } else {
            self.data = data;
            self.tail = crlf;
        }
    }

    /// Queue the end of the body (the last chunk).
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.framing == Framing::Chunked {
            if self.tail.is_empty() {
                out.extend_from_slice(b"0\r\n\r\n");
            } else {
                self.tail = b"\r\n0\r\n\r\n";
            }
        }
    }
}

/// The response head into `out`; returns how the body is framed.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &ResponseBody,
    bodiless: bool,
    close: bool,
) -> Framing {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut date = false;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this hop's to choose.
            continue;
        } else if name == header::CONTENT_LENGTH {
            if length.is_some() {
                continue;
            }
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if length.is_none() {
                continue;
            }
        } else if name == header::DATE {
            date = true;
        } else if name == header::CONNECTION && close {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // 1xx, 204 and 304 never carry a length; of the other bodiless
    // answers, those to HEAD, hyper announces the length the body has.
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        if length.is_none()
            && !no_length
            && let Some(n) = body.size_hint().exact().filter(|&n| n > 0)
        {
            put_length(out, n);
        }
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        put_length(out, n);
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !date {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// A `content-length` line into `out`.
fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(&mut digits, n));
    out.extend_from_slice(b"\r\n");
}

/// Whether the response itself says the connection ends after it.
fn closes(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"close")))
}

/// The outcome of parsing the start of the read buffer.
#[allow(clippy::large_enum_variant)] // consumed at once; boxing costs an allocation per request
enum Parsed {
    /// A request for the fast path; its head was split off the buffer.
    Request(Request<ClientBody>, bool),
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path; the buffer is untouched.
    Handoff,
    /// Not for the fast path, found after the head was split off: these
    /// bytes go back in front of the buffer.
    HandoffSplit(Bytes),
}

/// Parse a request head from the start of `buf`. Only a request that is
/// complete with its head (no body), HTTP/1.1, origin-form and free of
/// anything hyper treats specially is taken; the head is then split off
/// and frozen, and the URI and header values are slices of it.
fn parse(buf: &mut BytesMut) -> Parsed {
    // Where each header's name and value lie in the head (offsets fit 16
    // bits: a head is at most MAX_HEAD here).
    let mut spans = [[0u16; 4]; MAX_HEADERS];
    let (len, method, path, count, close) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut headers) {
            // A longer head (read ahead behind a request in flight) is
            // hyper's, as one that arrives slowly is.
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) | Err(_) => return Parsed::Handoff,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
        };
        if req.version != Some(1) {
            return Parsed::Handoff;
        }
        // A `#` (a fragment, which no request target may carry) is
        // dropped by the `http` crate's URI parser, so the URI would not
        // be what was sent; hyper's path decides (the fuzzer in `fuzz.rs`
        // found this).
        let Some(path) = req
            .path
            .filter(|p| p.starts_with('/') && !p.as_bytes().contains(&b'#'))
        else {
            return Parsed::Handoff;
        };
        let method = match Method::from_bytes(req.method.unwrap_or_default().as_bytes()) {
            Ok(m) if m != Method::CONNECT => m,
            _ => return Parsed::Handoff,
        };
        let base = buf.as_ptr() as usize;
        let mut close = false;
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            let name = h.name.as_bytes();
            // Framing and protocol switches are hyper's to handle.
            if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade")
            {
                return Parsed::Handoff;
            }
            if name.eq_ignore_ascii_case(b"connection") {
                close |= h
                    .value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            *span = [
                n as u16,
                (n + h.name.len()) as u16,
                v as u16,
                (v + h.value.len()) as u16,
            ];
        }
        let p = path.as_ptr() as usize - base;
        (len, method, (p, p + path.len()), req.headers.len(), close)
    };
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.1)) else {
        return Parsed::HandoffSplit(head);
    };
    let mut headers = HeaderMap::with_capacity(count + ROOM_FOR_ADDED);
    for &[ns, ne, vs, ve] in &spans[..count] {
        let Ok(name) = HeaderName::from_bytes(&head[ns as usize..ne as usize]) else {
            return Parsed::HandoffSplit(head);
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)) else {
            return Parsed::HandoffSplit(head);
        };
        if !consumed_by_parser(&name, value.as_bytes()) {
            headers.append(name, value);
        }
    }
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(req, close)
}

pin_project_lite::pin_project! {
    /// A connection handed to hyper: the bytes the fast path read first,
    /// then the connection itself.
    pub struct Prefixed<I> {
        prefix: Bytes,
        #[pin]
        inner: I,
    }
}

impl<I> Prefixed<I> {
    /// `inner`, read after `prefix`.
    pub fn new(prefix: Bytes, inner: I) -> Prefixed<I> {
        Prefixed { prefix, inner }
    }
}

impl<I: AsyncRead> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Write buffers shared by one thread's connections. A connection holds
/// one only while it writes a response, so an idle connection costs none
/// (one kept per connection was 1.9 KiB each of 10,000 held ones), and a
/// busy thread keeps reusing a few warm ones.
mod buffers {
    use std::cell::RefCell;

    /// Buffers kept per thread.
    const KEEP: usize = 32;
    /// A new buffer's size: a typical head and small body.
    const INITIAL: usize = 4 * 1024;
    /// A buffer grown past this is freed rather than kept.
    const LARGEST_KEPT: usize = 64 * 1024;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer.
    pub fn take() -> Vec<u8> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(INITIAL))
    }

    /// Return a buffer for reuse.
    pub fn give(mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT {
            return;
        }
        buf.clear();
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }
}

/// The `Date` header's value, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    /// Call `f` with the current `Date` value (IMF-fixdate, 29 bytes).
    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = secs;
                }
            }
            f(&cached.1);
        });
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
