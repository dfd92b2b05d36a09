//! Bodies on the request path: the client's request body on its way to a
//! stamp ([`UpstreamBody`], streamed with the size limit enforced as bytes
//! pass, or replayed from memory on a retry) and the response on its way
//! back ([`ResponseBody`], streamed from the stamp or made by the proxy).
//! Neither buffers a streamed body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;

use super::forward::InFlight;
use super::h1::H1Body;

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than `proxy.max_request_body`.
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's side of the body failed (aborted upload, bad framing).
    #[error("client body: {0}")]
    Client(#[source] hyper::Error),
}

/// A client's request body as the request path receives it.
#[derive(Debug)]
pub enum ClientBody {
    /// No body: a request the HTTP/1.1 fast path ([`super::h1_server`])
    /// served, which takes only requests without one.
    Empty,
    /// From hyper's server (HTTP/2, and HTTP/1.1 requests with a body).
    Hyper(Incoming),
}

impl ClientBody {
    /// Whether there is nothing (more) to read.
    pub fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(b) => b.is_end_stream(),
        }
    }
}

pin_project! {
    /// The body sent to a stamp.
    #[allow(missing_docs)] // fields are described on their variants
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        /// The client's body, streamed, with `remaining` bytes still allowed.
        Streaming {
            #[pin] inner: Incoming,
            remaining: u64,
            limit: u64,
        },
        /// A body held in memory (small enough to replay on a retry).
        Full {
            data: Option<Bytes>,
        },
    }
}

impl UpstreamBody {
    /// Stream `inner`, failing once more than `limit` bytes were seen.
    pub fn streaming(inner: Incoming, limit: u64) -> UpstreamBody {
        UpstreamBody::Streaming {
            inner,
            remaining: limit,
            limit,
        }
    }

    /// A body from memory (empty `Bytes` for no body).
    pub fn full(data: Bytes) -> UpstreamBody {
        UpstreamBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            UpstreamBodyProj::Streaming {
                inner,
                remaining,
                limit,
            } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let len = data.len() as u64;
                        if len > *remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge { limit: *limit })));
                        }
                        *remaining -= len;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            UpstreamBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streaming { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streaming { inner, .. } => inner.size_hint(),
            UpstreamBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// A response body as it comes from a stamp: from our own HTTP/1.1 client
/// or from hyper's HTTP/2 one.
#[derive(Debug)]
pub enum StampBody {
    /// Over an HTTP/1.1 connection ([`super::h1`]).
    H1(H1Body),
    /// Over an HTTP/2 connection.
    H2(Incoming),
}

impl Body for StampBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            StampBody::H1(b) => Pin::new(b).poll_frame(cx),
            StampBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StampBody::H1(b) => b.is_end_stream(),
            StampBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StampBody::H1(b) => b.size_hint(),
            StampBody::H2(b) => b.size_hint(),
        }
    }
}

pin_project! {
    /// The body sent back to the client.
    #[allow(missing_docs)] // fields are described on their variants
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        /// Streamed from the stamp; `guard` ends in-flight accounting on drop;
        /// `cut` ends the body when an operator's drain deadline passes.
        Upstream {
            #[pin] inner: StampBody,
            guard: Option<InFlight>,
            #[pin] cut: super::tripwire::TrippedOwned,
        },
        /// Made by the proxy (errors, 404).
        Local {
            data: Option<Bytes>,
            guard: Option<InFlight>,
        },
    }
}

impl ResponseBody {
    /// A proxy-made body.
    pub fn local(data: impl Into<Bytes>) -> ResponseBody {
        let data: Bytes = data.into();
        ResponseBody::Local {
            data: (!data.is_empty()).then_some(data),
            guard: None,
        }
    }
}

/// Boxed error of a response body (the stamp's, or a drain cut).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Upstream {
                mut inner,
                cut,
                guard,
            } => {
                let cut_off =
                    || Poll::Ready(Some(Err("cut: the stamp's drain deadline passed".into())));
                if cut.is_tripped() {
                    return cut_off();
                }
                let polled = inner.as_mut().poll_frame(cx);
                // Only a body that waits registers for the cut: most small
                // bodies are ready at once, and registering takes the
                // stamp-wide waiter list's lock twice.
                if polled.is_pending() && cut.poll(cx).is_ready() {
                    return cut_off();
                }
                if let Some(guard) = guard {
                    // hyper stops polling once `is_end_stream` says so, so
                    // the end is noticed after the last frame, not only at
                    // `None`.
                    match &polled {
                        Poll::Ready(Some(Ok(frame))) => {
                            guard.sent(frame.data_ref().map_or(0, Bytes::len));
                            if inner.is_end_stream() {
                                guard.completed();
                            }
                        }
                        Poll::Ready(None) => guard.completed(),
                        _ => {}
                    }
                }
                polled
            }
            ResponseBodyProj::Local { data, guard } => {
                let frame = data.take();
                if let Some(guard) = guard {
                    guard.sent(frame.as_ref().map_or(0, Bytes::len));
                    guard.completed();
                }
                Poll::Ready(frame.map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
            ResponseBody::Local { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Local { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
