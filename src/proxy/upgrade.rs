//! HTTP/1.1 protocol upgrades (WebSocket and other `Upgrade` tokens but
//! `h2c`), on the request path after a stamp answered `101 Switching
//! Protocols`: the client's connection (from hyper) and the stamp's (from
//! our HTTP/1.1 client, never pooled again) are spliced both ways until
//! both sides have closed, or until neither sent a byte for
//! `proxy.idle_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::metrics::ProxyStats;
use crate::upstream::h1_client::Io;

/// The `Upgrade` value to forward, when the request asks for an upgrade
/// we proxy: HTTP/1.1, `Connection: upgrade`, and a protocol other than
/// `h2c` (HTTP/2 to stamps is our choice, not the client's: an h2c upgrade
/// is dropped and the request served as plain HTTP/1.1, as HAProxy does).
pub fn requested(headers: &HeaderMap, version: http::Version) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    // `Upgrade` first: most requests have none, and need no scan of
    // `Connection`.
    let value = headers.get(header::UPGRADE)?;
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let h2c = value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (asks && !h2c).then(|| value.clone())
}

/// Put the upgrade back on a request (or a 101 answer) whose hop-by-hop
/// headers were stripped.
pub fn restore(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Splice the client's upgraded connection and the stamp's in a task of
/// its own, on the proxy's `tracker`: a shutdown waits for open tunnels
/// (up to `shutdown_grace`) as it does for requests, and reports the
/// grace expired when one outlives it. `early` are bytes the stamp sent
/// right after its 101.
pub fn splice(
    client: OnUpgrade,
    stamp: Io,
    early: BytesMut,
    idle: Duration,
    stats: Arc<ProxyStats>,
    tracker: &TaskTracker,
) {
    stats.upgrades.fetch_add(1, Ordering::Relaxed);
    tracker.spawn(async move {
        let client = match client.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "client connection was not upgraded");
                return;
            }
        };
        stats.upgraded_open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGauge(&stats);
        let clock = Instant::now();
        let last = AtomicU64::new(0);
        let mut client = Active {
            inner: client,
            last: &last,
            clock,
        };
        let mut stamp = Active {
            inner: stamp,
            last: &last,
            clock,
        };
        if !early.is_empty() && client.write_all(&early).await.is_err() {
            return;
        }
        let copy = tokio::io::copy_bidirectional(&mut client, &mut stamp);
        tokio::pin!(copy);
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                done = &mut copy => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "upgraded connection ended with an error");
                    }
                    return;
                }
                () = &mut timer => {
                    let quiet_since = clock + Duration::from_millis(last.load(Ordering::Relaxed));
                    if quiet_since + idle <= Instant::now() {
                        tracing::debug!("upgraded connection idle for idle_timeout; closing");
                        return;
                    }
                    timer.as_mut().reset(quiet_since + idle);
                }
            }
        }
    });
}

/// Counts the upgraded connection open until dropped.
struct OpenGauge<'a>(&'a ProxyStats);

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.upgraded_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One side of the splice, noting when bytes last moved either way (in
/// milliseconds since `clock`) for the idle timeout.
struct Active<'a, I> {
    inner: I,
    last: &'a AtomicU64,
    clock: Instant,
}

impl<I> Active<'_, I> {
    fn moved(&self) {
        let ms = self.clock.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Active<'_, I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Active<'_, I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn websocket_is_proxied_and_h2c_is_not() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested(&ws, http::Version::HTTP_11).unwrap(), "websocket");
        assert!(requested(&ws, http::Version::HTTP_10).is_none());
        let h2c = headers(&[
            ("connection", "upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(requested(&h2c, http::Version::HTTP_11).is_none());
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(requested(&no_connection, http::Version::HTTP_11).is_none());
    }
}
