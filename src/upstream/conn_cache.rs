//! Open connections to the stamps of one pool, kept by [`super`]
//! between requests: idle HTTP/1.1 connections in a queue per stamp
//! ([`IdleQueue`], kept with the client codec that returns to it), and one shared (multiplexed) HTTP/2 sender per stamp.
//!
//! This replaces hyper-util's legacy pooled client on the request path. That
//! client keys a `HashMap` by scheme + authority (SipHash per checkout and
//! return), wraps every connect in a lazy future, boxes each response future
//! and spawns a task per request to return a busy connection once it is
//! ready again. Here the stamp is found by comparing authorities in a short
//! `Vec`, and an HTTP/1.1 connection is in the queue only while idle: the
//! response body puts it back when it has been read to its end.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http2;

use super::body::UpstreamBody;
use super::h1_client::IdleQueue;

/// The sending half of an HTTP/2 connection to a stamp (cloneable).
pub type Http2Sender = http2::SendRequest<UpstreamBody>;

/// The connections of one stamp.
#[derive(Debug)]
struct StampConns {
    h1: Arc<IdleQueue>,
    h2: Option<Http2Sender>,
}

/// Connections of one pool's stamps, keyed by the stamp's authority.
///
/// Locks: one `std::sync::Mutex` for the list of stamps and one per stamp
/// queue, each held only to push or pop (never across an `.await`, never
/// while connecting). A pool has a handful of stamps, so a linear search by
/// authority beats hashing it.
pub struct ConnCache {
    idle_timeout: Duration,
    stamps: Mutex<Vec<(Authority, StampConns)>>,
}

impl std::fmt::Debug for ConnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCache")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnCache {
    /// An empty pool whose HTTP/1.1 connections are not reused after
    /// `idle_timeout` without a request.
    pub fn new(idle_timeout: Duration) -> ConnCache {
        ConnCache {
            idle_timeout,
            stamps: Mutex::new(Vec::new()),
        }
    }

    fn with_stamp<R>(&self, key: &Authority, f: impl FnOnce(&mut StampConns) -> R) -> R {
        let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match stamps.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                let conns = StampConns {
                    h1: Arc::new(IdleQueue::new(self.idle_timeout)),
                    h2: None,
                };
                stamps.push((key.clone(), conns));
                stamps.len() - 1
            }
        };
        f(&mut stamps[i].1)
    }

    /// The queue of idle HTTP/1.1 connections to `key`.
    pub fn h1(&self, key: &Authority) -> Arc<IdleQueue> {
        self.with_stamp(key, |conns| Arc::clone(&conns.h1))
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
}
