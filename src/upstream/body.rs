//! Bodies between the proxy and a stamp: the request body on its way to a
//! stamp ([`UpstreamBody`], streamed with the size limit enforced as bytes
//! pass, or replayed from memory on a retry) and the error type of response bodies
//! ([`BoxError`]). Neither buffers a streamed body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

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

/// Boxed error of a response body (the stamp's, or a drain cut).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
