//! The simulated stamp's sockets: binding, the accept loop that owns every
//! connection it accepted, and the supervisor that closes and re-opens the
//! serving listener as the `down` fault comes and goes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::api;
use super::fault::Fault;

/// Listen backlog: ample for a drill's bursts of new connections.
const BACKLOG: u32 = 1024;

/// Pause after an accept error that is not about one connection (typically
/// out of file descriptors), so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Pause between attempts to bind the serving address again when a stamp
/// comes back up and the port is still (or suddenly) taken. No event says
/// when a port becomes free, so this one place retries on a timer.
const REBIND_RETRY: Duration = Duration::from_millis(100);

/// Binds a listener with `SO_REUSEADDR`: a stamp that comes back up binds
/// the port it just closed, while the connections it dropped may still sit
/// in `TIME_WAIT`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections and runs `serve` on each until `until` completes;
/// then closes the listener and drops every connection it accepted. The
/// connections live in a `JoinSet` owned by this loop, so "drop them all"
/// is one `shutdown` and none can outlive the listener's generation.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    until: impl Future<Output = ()>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut until = pin!(until);
    loop {
        tokio::select! {
            () = &mut until => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve(stream));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Errors that concern one incoming connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Runs the serving listener for the stamp's whole life: serves until
/// `down` is set, then (with the listener closed and its connections
/// dropped) waits for `down` to clear and binds `addr` again. Every change
/// is published on `shared.listening`, which [`Shared::settled`] watches.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut listener: TcpListener,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    let mut faults = shared.faults.subscribe();
    loop {
        shared.listening.send_replace(true);
        let down_or_stop = async {
            tokio::select! {
                _ = faults.wait_for(Fault::is_down) => {}
                () = stop.cancelled() => {}
            }
        };
        let serving = shared.clone();
        accept_loop(listener, down_or_stop, move |stream| {
            serve_connection(serving.clone(), stream)
        })
        .await;
        shared.listening.send_replace(false);
        if stop.is_cancelled() {
            return;
        }
        tracing::info!(stamp = %shared.name, %addr, "down: listener closed, connections dropped");
        tokio::select! {
            _ = faults.wait_for(|fault| !fault.is_down()) => {}
            () = stop.cancelled() => return,
        }
        listener = match rebind(addr, &stop).await {
            Some(listener) => listener,
            None => return,
        };
        tracing::info!(stamp = %shared.name, %addr, "up: serving again");
    }
}

/// Binds `addr` again, retrying while it is taken; `None` when stopped.
async fn rebind(addr: SocketAddr, stop: &CancellationToken) -> Option<TcpListener> {
    loop {
        match bind(addr) {
            Ok(listener) => return Some(listener),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot bind the serving address again; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(REBIND_RETRY) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Serves one connection of the serving listener, HTTP/1.1 or h2c prior
/// knowledge (detected from the first bytes).
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    // Taken from the backlog just as the stamp went down: a dead stamp
    // does not answer, so hang up at once.
    if shared.faults.get().is_down() {
        return;
    }
    // Small JSON answers should not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let service = service_fn(move |request| api::handle(shared.clone(), request));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "serving connection ended with an error");
    }
}
