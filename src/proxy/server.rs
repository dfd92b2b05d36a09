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
use crate::config::Http1Engine;
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
        self.project().inner.poll_write(cx, buf)
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
        self.project().inner.poll_write_vectored(cx, bufs)
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
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = self.shutdown.tripped() => break,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let this = self.clone();
                    let tls = tls.clone();
                    self.tracker
                        .spawn(async move { this.serve(stream, remote, tls).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    async fn serve(self, stream: TcpStream, remote: SocketAddr, tls: Option<TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        match tls {
            None => self.serve_io(stream, remote, false).await,
            // The TLS arm is boxed: a task holds its future's largest state,
            // and the handshake and TLS stream would otherwise make every
            // plaintext connection's task several KiB bigger.
            Some(acceptor) => {
                let handshake = Box::pin(tokio::time::timeout(
                    self.limits.header_read_timeout,
                    acceptor.accept(stream),
                ));
                match handshake.await {
                    Ok(Ok(tls_stream)) => Box::pin(self.serve_io(tls_stream, remote, true)).await,
                    Ok(Err(e)) => {
                        self.handshake_failed(0);
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        self.handshake_failed(1);
                        tracing::debug!(%remote, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    /// Count a failed handshake: 0 error, 1 timeout.
    fn handshake_failed(&self, reason: usize) {
        self.gateway.stats.tls_handshake_failures[reason].fetch_add(1, Ordering::Relaxed);
    }

    async fn serve_io<I>(self, io: I, remote: SocketAddr, tls: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let listener = usize::from(tls);
        let activity = Arc::new(ConnActivity::counted(self.gateway.stats.clone(), listener));
        let io = Watched {
            inner: io,
            activity: activity.clone(),
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
        let fast = h1_server::serve(io, &self.gateway, &info, &self.shutdown);
        let io = match self.timed(fast, &activity, remote).await {
            Some(Served::Handoff(io)) => io,
            Some(Served::Closed) | None => return,
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
        let conn = self.http.serve_connection(io, service);
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
                }
                () = &mut timer, if !closing => match self.limits.check(activity, remote) {
                    // Slowloris: drop the connection, not a graceful close
                    // that would wait for the head to finish.
                    Timers::HeadLate => break,
                    Timers::Idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Timers::Wait(at) => timer.as_mut().reset(at),
                },
            }
        }
    }

    /// Run `serving` under the connection's timers: `None` when a request
    /// head was late or the connection idle too long. Only for a future
    /// that may be dropped whenever the connection has nothing in flight
    /// (see [`ConnActivity::busy`]).
    async fn timed<F: Future>(
        &self,
        serving: F,
        activity: &ConnActivity,
        remote: SocketAddr,
    ) -> Option<F::Output> {
        let mut serving = pin!(serving);
        let limits = self.limits;
        let timer = tokio::time::sleep(limits.header_read_timeout.min(limits.idle_timeout));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                out = serving.as_mut() => return Some(out),
                () = &mut timer => match limits.check(activity, remote) {
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
}
