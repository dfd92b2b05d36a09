//! Listeners and client connections: accept, TLS handshake (bounded by the
//! header read timeout), one hyper connection per client serving HTTP/1.1
//! and HTTP/2 on the same port, the idle timeout, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::forward::{ConnActivity, ConnInfo, Gateway};

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
    /// Cancelled on shutdown: stop accepting, finish in-flight requests.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// hyper's server settings for client connections.
pub fn http_builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
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
                () = self.shutdown.cancelled() => break,
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
            None => self.serve_io(TokioIo::new(stream), remote, false).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(tls_stream)) => {
                        self.serve_io(TokioIo::new(tls_stream), remote, true).await
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_io<I>(self, io: TokioIo<I>, remote: SocketAddr, tls: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(ConnActivity::new());
        let info = ConnInfo {
            remote,
            tls,
            activity: activity.clone(),
        };
        let gateway = self.gateway.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            let info = info.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, &info).await) }
        });
        let conn = self.http.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout;
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        let mut closing = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%remote, error = %e, "client connection ended with an error");
                    }
                    break;
                }
                () = self.shutdown.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = &mut idle_timer, if !closing => {
                    match activity.idle_deadline(idle) {
                        Some(deadline) if deadline <= tokio::time::Instant::now() => {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Some(deadline) => idle_timer.as_mut().reset(deadline),
                        // Busy: look again in one idle period.
                        None => idle_timer.as_mut().reset(tokio::time::Instant::now() + idle),
                    }
                }
            }
        }
    }
}
