//! Open connections to the stamps of one pool, kept by [`super::upstream`]
//! between requests: HTTP/1.1 senders in a FIFO queue per stamp, and one
//! shared (multiplexed) HTTP/2 sender per stamp.
//!
//! This replaces hyper-util's legacy pooled client on the request path. That
//! client keys a `HashMap` by scheme + authority (SipHash per checkout and
//! return), wraps every connect in a lazy future, boxes each response future
//! and spawns a task per request to return a busy connection once it is
//! ready again; together about 16 % of the proxy's instructions per request.
//! Here the stamp is found by comparing authorities in a short `Vec`, and a
//! busy HTTP/1.1 sender goes back into the queue at once: checkout skips
//! those not ready yet, so nothing is spawned per request.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::body::UpstreamBody;

/// The sending half of an HTTP/1.1 connection to a stamp.
pub type Http1Sender = http1::SendRequest<UpstreamBody>;
/// The sending half of an HTTP/2 connection to a stamp (cloneable).
pub type Http2Sender = http2::SendRequest<UpstreamBody>;

/// An HTTP/1.1 connection back in the queue, and since when.
struct Parked {
    tx: Http1Sender,
    since: Instant,
}

/// The connections of one stamp.
#[derive(Default)]
struct StampConns {
    /// Oldest first: the front is the most likely to have finished its
    /// response and to be ready again.
    h1: VecDeque<Parked>,
    h2: Option<Http2Sender>,
}

/// Connections of one pool's stamps, keyed by the stamp's authority.
///
/// Locks: one `std::sync::Mutex`, held only to push or pop a sender (never
/// across an `.await`, never while connecting). A pool has a handful of
/// stamps, so a linear search by authority beats hashing it.
pub struct ConnPool {
    idle_timeout: Duration,
    stamps: Mutex<Vec<(Authority, StampConns)>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnPool {
    /// An empty pool whose HTTP/1.1 connections are not reused after
    /// `idle_timeout` without a request.
    pub fn new(idle_timeout: Duration) -> ConnPool {
        ConnPool {
            idle_timeout,
            stamps: Mutex::new(Vec::new()),
        }
    }

    fn with_stamp<R>(&self, key: &Authority, f: impl FnOnce(&mut StampConns) -> R) -> R {
        let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match stamps.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                stamps.push((key.clone(), StampConns::default()));
                stamps.len() - 1
            }
        };
        f(&mut stamps[i].1)
    }

    /// An HTTP/1.1 connection to `key` that is ready for a request, if one
    /// is open. Closed and idle-expired connections met on the way are
    /// dropped (which closes them); busy ones stay queued.
    pub fn checkout_h1(&self, key: &Authority) -> Option<Http1Sender> {
        let now = Instant::now();
        let idle_timeout = self.idle_timeout;
        self.with_stamp(key, |conns| {
            for _ in 0..conns.h1.len() {
                let parked = conns.h1.pop_front()?;
                if parked.tx.is_closed() {
                    continue;
                }
                if !parked.tx.is_ready() {
                    conns.h1.push_back(parked);
                    continue;
                }
                if now.saturating_duration_since(parked.since) >= idle_timeout {
                    continue;
                }
                return Some(parked.tx);
            }
            None
        })
    }

    /// Queue an HTTP/1.1 connection to `key` after its response head
    /// arrived; it becomes ready again once the response body is read.
    /// Idle-expired connections at the front are dropped on the way.
    pub fn checkin_h1(&self, key: &Authority, tx: Http1Sender) {
        let now = Instant::now();
        let idle_timeout = self.idle_timeout;
        self.with_stamp(key, |conns| {
            while conns.h1.front().is_some_and(|p| {
                p.tx.is_closed()
                    || (p.tx.is_ready() && now.saturating_duration_since(p.since) >= idle_timeout)
            }) {
                conns.h1.pop_front();
            }
            conns.h1.push_back(Parked { tx, since: now });
        });
    }

    /// The open HTTP/2 connection to `key`, if there is one.
    pub fn h2(&self, key: &Authority) -> Option<Http2Sender> {
        self.with_stamp(key, |conns| match &conns.h2 {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                conns.h2 = None;
                None
            }
            None => None,
        })
    }

    /// Share a new HTTP/2 connection to `key`, unless another open one was
    /// stored meanwhile (then `tx` serves its own request and closes).
    pub fn set_h2(&self, key: &Authority, tx: &Http2Sender) {
        self.with_stamp(key, |conns| {
            if conns.h2.as_ref().is_none_or(http2::SendRequest::is_closed) {
                conns.h2 = Some(tx.clone());
            }
        });
    }

    /// HTTP/1.1 connections queued for `key` (busy or ready).
    #[cfg(test)]
    fn queued_h1(&self, key: &Authority) -> usize {
        self.with_stamp(key, |conns| conns.h1.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::server::conn::http1 as server_http1;
    use hyper_util::rt::TokioIo;

    /// An HTTP/1.1 connection over an in-memory pipe to a server that
    /// answers 200; the response body ends once `gate` fires (at once
    /// without one). The server task ends when the returned sender drops.
    async fn pipe_conn_gated(
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> (Http1Sender, tokio::sync::oneshot::Sender<()>) {
        use futures_util::StreamExt;
        use http_body::Frame;

        let (client, server) = tokio::io::duplex(4096);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let gate = gate.lock().unwrap().take();
                async move {
                    let chunk = futures_util::stream::once(async move {
                        if let Some(gate) = gate {
                            let _ = gate.await;
                        }
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"ok")))
                    })
                    .boxed();
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::StreamBody::new(chunk),
                    ))
                }
            });
            let conn = server_http1::Builder::new().serve_connection(TokioIo::new(server), service);
            tokio::select! {
                _ = conn => {}
                _ = stopped => {}
            }
        });
        let (tx, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        (tx, stop)
    }

    async fn pipe_conn() -> (Http1Sender, tokio::sync::oneshot::Sender<()>) {
        pipe_conn_gated(None).await
    }

    async fn until_ready(tx: &mut Http1Sender) {
        tx.ready().await.unwrap();
    }

    /// Let the connection tasks run until they have nothing left to do.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn key() -> Authority {
        Authority::from_static("stamp-a:80")
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_reused_until_the_idle_timeout() {
        let pool = ConnPool::new(Duration::from_secs(50));
        let (mut tx, _stop) = pipe_conn().await;
        until_ready(&mut tx).await;
        pool.checkin_h1(&key(), tx);
        let tx = pool.checkout_h1(&key()).expect("reused while fresh");
        pool.checkin_h1(&key(), tx);

        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(pool.checkout_h1(&key()).is_none(), "expired after 50 s");
        assert_eq!(pool.queued_h1(&key()), 0, "the expired one was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn stamps_are_kept_apart() {
        let pool = ConnPool::new(Duration::from_secs(50));
        let (mut tx, _stop) = pipe_conn().await;
        until_ready(&mut tx).await;
        pool.checkin_h1(&key(), tx);
        assert!(
            pool.checkout_h1(&Authority::from_static("stamp-b:80"))
                .is_none()
        );
        assert!(pool.checkout_h1(&key()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_connection_is_dropped_not_handed_out() {
        let pool = ConnPool::new(Duration::from_secs(50));
        let (mut tx, stop) = pipe_conn().await;
        until_ready(&mut tx).await;
        pool.checkin_h1(&key(), tx);
        drop(stop);
        // Let the client's connection task see the pipe close.
        settle().await;
        assert!(pool.checkout_h1(&key()).is_none());
        assert_eq!(pool.queued_h1(&key()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_stays_queued_until_ready() {
        let pool = ConnPool::new(Duration::from_secs(50));
        let (gate, gated) = tokio::sync::oneshot::channel();
        let (mut tx, _stop) = pipe_conn_gated(Some(gated)).await;
        until_ready(&mut tx).await;
        let resp = tx
            .send_request(http::Request::new(UpstreamBody::full(Bytes::new())))
            .await
            .unwrap();
        // The response body is unread: the connection is busy.
        pool.checkin_h1(&key(), tx);
        assert!(pool.checkout_h1(&key()).is_none());
        assert_eq!(pool.queued_h1(&key()), 1, "busy, not dropped");

        use http_body_util::BodyExt;
        gate.send(()).unwrap();
        resp.into_body().collect().await.unwrap();
        settle().await;
        assert!(
            pool.checkout_h1(&key()).is_some(),
            "ready once the body was read"
        );
    }
}
