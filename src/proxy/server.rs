//! Listeners and client connections: accept, TLS handshake (bounded by the
//! header read timeout), then the HTTP/1.1 fast path ([`super::h1_server`])
//! and, from the first request it does not take, one hyper connection
//! serving HTTP/1.1 and HTTP/2 on the same port; the header and idle
//! timeouts, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::body::ClientBody;
use super::conn::{ConnActivity, ConnInfo};
use super::h1_server::{self, Served};
use super::handler::Gateway;
use super::headers;
use super::proxy_protocol;
use crate::config::Http1Engine;
use crate::metrics::{HandshakeFailure, Listener};
use crate::tripwire::Tripwire;

/// After an accept error (out of file descriptors, mostly) wait this long
/// before accepting again, so the loop does not spin while the process is
/// at its limit.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to complete the TLS handshake and each request head.
    pub header_read_timeout: Duration,
    /// Close a connection with nothing in flight after this long.
    pub idle_timeout: Duration,
    /// Once a graceful close started (GOAWAY, or `Connection: close` on the
    /// next answer), drop the connection after this long whatever the
    /// client does: an HTTP/2 client that never answers the shutdown PING
    /// would otherwise hold it for ever (`proxy.shutdown_grace`).
    pub close_grace: Duration,
    /// Whether HTTP/1.1 starts on the fast path or goes straight to hyper.
    pub http1_engine: Http1Engine,
}

/// What every accept loop shares.
#[derive(Clone)]
pub struct Acceptor {
    /// The request handler state.
    pub gateway: Arc<Gateway>,
    /// Connection limits.
    pub limits: ConnLimits,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// hyper's HTTP/1 + HTTP/2 server settings.
    pub http: Arc<auto::Builder<TokioExecutor>>,
    /// Tripped on shutdown: stop accepting, finish in-flight requests.
    pub shutdown: Arc<Tripwire>,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

pin_project_lite::pin_project! {
    /// A client stream that tells the connection's [`ConnActivity`] when
    /// bytes arrive, so the connection task can time request heads.
    struct Watched<I> {
        #[pin]
        inner: I,
        activity: Arc<ConnActivity>,
        frames: H2Frames,
    }
}

/// HTTP/2 client connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Follows the frame headers of an HTTP/2 client connection just far
/// enough to see a header block left open (HEADERS without END_HEADERS and
/// no final CONTINUATION): hyper holds such a block without a request in
/// flight, so neither of its timers nor ours would end it, while the
/// block stops every other stream of the connection. An HTTP/1 connection
/// is recognised by its first bytes and costs nothing after them.
#[derive(Debug, Default)]
struct H2Frames {
    /// Bytes of the preface matched so far; `u8::MAX` once it failed
    /// (not HTTP/2: stop looking).
    preface: u8,
    /// The frame header being read, and how much of it.
    head: [u8; 9],
    head_len: u8,
    /// Payload bytes of the current frame still to pass.
    skip: u32,
}

impl H2Frames {
    const OFF: u8 = u8::MAX;
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const END_HEADERS: u8 = 0x4;

    /// Follow `bytes`, read from the client. Inlined into the stream's
    /// read: on an HTTP/1 connection (every read after its first) it is
    /// one compare, not a call.
    #[inline]
    fn feed(&mut self, bytes: &[u8], activity: &ConnActivity) {
        if self.preface != Self::OFF {
            self.follow(bytes, activity);
        }
    }

    fn follow(&mut self, mut bytes: &[u8], activity: &ConnActivity) {
        while !bytes.is_empty() {
            let matched = usize::from(self.preface);
            if self.preface == Self::OFF {
                return;
            } else if matched < H2_PREFACE.len() {
                let n = bytes.len().min(H2_PREFACE.len() - matched);
                if bytes[..n] != H2_PREFACE[matched..matched + n] {
                    self.preface = Self::OFF;
                    return;
                }
                self.preface += n as u8;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
            } else {
                let have = usize::from(self.head_len);
                let n = bytes.len().min(9 - have);
                self.head[have..have + n].copy_from_slice(&bytes[..n]);
                self.head_len += n as u8;
                bytes = &bytes[n..];
                if self.head_len == 9 {
                    let h = self.head;
                    self.head_len = 0;
                    self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    let end = h[4] & Self::END_HEADERS != 0;
                    match h[3] {
                        Self::HEADERS if !end => activity.header_block(true),
                        Self::CONTINUATION if end => activity.header_block(false),
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
            this.frames.feed(&buf.filled()[before..], this.activity);
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        this.activity.write_polled(polled.is_pending());
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        this.activity.write_polled(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// hyper's server settings for client connections.
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is enforced by the connection task (see
    // `ConnActivity`): hyper's would also cut idle keep-alive connections.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

impl Acceptor {
    /// Accept on `listener` until shutdown; `tls` makes it a TLS listener.
    pub async fn run(self, listener: TcpListener, tls: Option<TlsAcceptor>) {
        // Shared by the connections: each task holds one pointer (the
        // connection task's size is what an idle connection costs), and
        // an accept costs one reference count, not five.
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = this.shutdown.tripped() => break,
            };
            match accepted {
                Ok((stream, remote)) => {
                    // `serve`'s future itself, not an async block around
                    // it that would hold its arguments a second time.
                    let serving = this.clone().serve(stream, remote, tls.clone());
                    this.tracker.spawn(serving);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    async fn serve(
        self: Arc<Self>,
        mut stream: TcpStream,
        remote: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) {
        let _ = stream.set_nodelay(true);
        // Behind a balancer speaking the PROXY protocol, the peer is the
        // balancer; the header (before any TLS) names the client. A
        // connection without a valid one within the head timeout is
        // closed: serving it would log the balancer as the client.
        let remote = if self.proxy_protocol {
            let header = Box::pin(tokio::time::timeout(
                self.limits.header_read_timeout,
                proxy_protocol::read_header(&mut stream),
            ));
            match header.await {
                Ok(Ok(client)) => client.unwrap_or(remote),
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "PROXY header refused; closing");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "no PROXY header within header_read_timeout; closing");
                    return;
                }
            }
        } else {
            remote
        };
        match tls {
            None => self.serve_io(stream, remote, false).await,
            // The TLS arm is boxed, handshake included: a task holds its
            // future's largest state, and the handshake's result (1.2 KiB)
            // and the TLS stream would otherwise make every plaintext
            // connection's task bigger.
            Some(acceptor) => Box::pin(self.serve_tls(stream, remote, acceptor)).await,
        }
    }

    async fn serve_tls(&self, stream: TcpStream, remote: SocketAddr, acceptor: TlsAcceptor) {
        let handshake = Box::pin(tokio::time::timeout(
            self.limits.header_read_timeout,
            acceptor.accept(stream),
        ));
        match handshake.await {
            // Boxed: the TLS state (over 1 KiB) would otherwise be moved
            // with the fast path's connection into and out of each
            // request's exchange, and held again by every layer of the
            // connection's future.
            Ok(Ok(tls_stream)) => self.serve_io(Box::new(tls_stream), remote, true).await,
            Ok(Err(e)) => {
                self.handshake_failed(HandshakeFailure::Error);
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.handshake_failed(HandshakeFailure::Timeout);
                tracing::debug!(%remote, "TLS handshake timed out");
            }
        }
    }

    fn handshake_failed(&self, reason: HandshakeFailure) {
        self.gateway.stats.tls_handshake_failures[reason].fetch_add(1, Ordering::Relaxed);
    }

    async fn serve_io<I>(&self, io: I, remote: SocketAddr, tls: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let listener = Listener::of(tls);
        let activity = Arc::new(ConnActivity::counted(self.gateway.stats.clone(), listener));
        let io = Watched {
            inner: io,
            activity: activity.clone(),
            frames: H2Frames::default(),
        };
        let info = ConnInfo {
            remote,
            client_ip: headers::client_ip_value(remote.ip()),
            tls,
            activity: activity.clone(),
        };
        if self.limits.http1_engine == Http1Engine::Hyper {
            // As a hand-off with nothing read: one hyper serving function
            // per stream type, not two.
            let io = h1_server::Prefixed::new(bytes::Bytes::new(), io);
            return Box::pin(self.serve_hyper(io, info, &activity)).await;
        }
        // Requests without a body are served by the fast path; the first
        // request it does not take hands the connection to hyper for good.
        // Pinned here and lent to `timed`: passed by value, it would be
        // held twice (as `timed`'s argument and as its pinned local).
        let io = {
            let fast = pin!(h1_server::serve(io, &self.gateway, &info, &self.shutdown));
            match self.timed(fast, &activity, &info.remote).await {
                Some(Served::Handoff(io)) => io,
                Some(Served::Closed) | None => return,
            }
        };
        // Boxed: hyper's connection state would otherwise size the task of
        // every connection, most of which never leave the fast path.
        Box::pin(self.serve_hyper(io, info, &activity)).await;
    }

    /// Serve the rest of a connection with hyper (HTTP/1.1 with bodies,
    /// HTTP/2), under the same timers and graceful shutdown.
    async fn serve_hyper<I>(&self, io: I, info: ConnInfo, activity: &ConnActivity)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let remote = info.remote;
        let io = TokioIo::new(io);
        let gateway = self.gateway.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let gateway = gateway.clone();
            let info = info.clone();
            // Boxed per request: hyper keeps a slot the size of this future
            // for the connection's whole life, idle or not.
            Box::pin(async move {
                let req = req.map(ClientBody::Hyper);
                Ok::<_, std::convert::Infallible>(gateway.handle(req, &info, None).await)
            })
        });
        let conn = self.http.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let (head, idle) = (self.limits.header_read_timeout, self.limits.idle_timeout);
        let timer = tokio::time::sleep(head.min(idle));
        tokio::pin!(timer);
        let stop = self.shutdown.tripped();
        tokio::pin!(stop);
        let mut closing = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%remote, error = %e, "client connection ended with an error");
                    }
                    break;
                }
                () = &mut stop, if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + self.limits.close_grace);
                }
                () = &mut timer => {
                    if closing {
                        tracing::debug!(%remote, "graceful close not finished within shutdown_grace");
                        break;
                    }
                    match self.limits.check(activity, remote) {
                        // Slowloris: drop the connection, not a graceful close
                        // that would wait for the head to finish.
                        Timers::HeadLate => break,
                        Timers::Idle => {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            timer.as_mut().reset(tokio::time::Instant::now() + self.limits.close_grace);
                        }
                        Timers::Wait(at) => timer.as_mut().reset(at),
                    }
                }
            }
        }
    }

    /// Run `serving` under the connection's timers: `None` when a request
    /// head was late or the connection idle too long. Only for a future
    /// that may be dropped whenever the connection has nothing in flight
    /// (see [`ConnActivity::busy`]).
    async fn timed<F: Future>(
        &self,
        mut serving: Pin<&mut F>,
        activity: &ConnActivity,
        remote: &SocketAddr,
    ) -> Option<F::Output> {
        // `self.limits` is read in place: a copy would be held for the
        // connection's life (56 bytes of every connection task).
        let limits = &self.limits;
        let timer = tokio::time::sleep(limits.header_read_timeout.min(limits.idle_timeout));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                out = serving.as_mut() => return Some(out),
                () = &mut timer => match limits.check(activity, *remote) {
                    Timers::HeadLate | Timers::Idle => return None,
                    Timers::Wait(at) => timer.as_mut().reset(at),
                },
            }
        }
    }
}

/// What the connection's timers say when one fires.
enum Timers {
    /// A request head did not arrive within `header_read_timeout`.
    HeadLate,
    /// Nothing in flight for `idle_timeout`.
    Idle,
    /// Look again then.
    Wait(tokio::time::Instant),
}

impl ConnLimits {
    fn check(&self, activity: &ConnActivity, remote: SocketAddr) -> Timers {
        let (head, idle) = (self.header_read_timeout, self.idle_timeout);
        let now = tokio::time::Instant::now();
        if let Some(late) = activity.header_block_deadline(head)
            && late <= now
        {
            tracing::debug!(%remote, "HTTP/2 header block not finished within header_read_timeout");
            return Timers::HeadLate;
        }
        // A client that reads nothing holds the response (and the stamp's
        // connection behind it) as long as it likes unless cut.
        if let Some(late) = activity.write_deadline(idle)
            && late <= now
        {
            tracing::debug!(%remote, "client read nothing for idle_timeout");
            return Timers::HeadLate;
        }
        if let Some(late) = activity.body_stall_deadline(idle)
            && late <= now
        {
            tracing::debug!(%remote, "client took no response data for idle_timeout");
            return Timers::HeadLate;
        }
        match activity.head_deadline(head) {
            Some(late) if late <= now => {
                tracing::debug!(%remote, "request head not received within header_read_timeout");
                Timers::HeadLate
            }
            Some(late) => Timers::Wait(late),
            None => match activity.idle_deadline(idle) {
                Some(deadline) if deadline <= now => Timers::Idle,
                Some(deadline) => {
                    activity.mark_resting();
                    Timers::Wait(deadline.min(now + head))
                }
                // Busy: look again soon (a head may start after it).
                None => Timers::Wait(now + head.min(idle)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(30),
            http1_engine: Http1Engine::Fast,
        }
    }

    fn remote() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// Only a connection with nothing in flight and no head pending is
    /// told to rest (release memory kept for the next request).
    #[tokio::test(start_paused = true)]
    async fn the_timer_marks_only_an_idle_connection_resting() {
        let activity = ConnActivity::new();
        // A new connection owes its first head.
        assert!(matches!(
            limits().check(&activity, remote()),
            Timers::Wait(_)
        ));
        assert!(!activity.take_resting());

        activity.head_arrived();
        let busy = activity.busy();
        assert!(matches!(
            limits().check(&activity, remote()),
            Timers::Wait(_)
        ));
        assert!(!activity.take_resting(), "busy: not resting");
        drop(busy);

        assert!(matches!(
            limits().check(&activity, remote()),
            Timers::Wait(_)
        ));
        assert!(activity.take_resting());
    }

    /// A client that takes no response data for idle_timeout while a body
    /// waits on it is cut; one that takes some, however slowly, is not;
    /// a body waiting on its stamp is not the client's wait.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_response_data_is_cut_after_idle_timeout() {
        let step = Duration::from_secs(10);
        let activity = ConnActivity::new();
        activity.head_arrived();
        let _busy = activity.busy();
        let check = || limits().check(&activity, remote());
        // Waiting on the stamp: nothing parked, never cut for it.
        for _ in 0..8 {
            tokio::time::advance(step).await;
            assert!(matches!(check(), Timers::Wait(_)));
        }
        // A piece handed over; the client takes one every 50 s.
        activity.parked.fetch_add(1, Ordering::Relaxed);
        for _ in 0..3 {
            for _ in 0..5 {
                assert!(matches!(check(), Timers::Wait(_)));
                tokio::time::advance(step).await;
            }
            activity.body_taken.fetch_add(1, Ordering::Relaxed);
        }
        // Then nothing: cut once 60 s have passed since the timer saw the
        // last piece taken.
        assert!(matches!(check(), Timers::Wait(_)));
        for _ in 0..5 {
            tokio::time::advance(step).await;
            assert!(matches!(check(), Timers::Wait(_)));
        }
        tokio::time::advance(step).await;
        assert!(matches!(check(), Timers::HeadLate));
    }
}
