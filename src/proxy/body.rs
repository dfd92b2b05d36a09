//! Bodies on the client side of the request path: the client's request
//! body as it arrives ([`ClientBody`]) and the response on its way back
//! ([`ResponseBody`], streamed from the stamp or made by the proxy, ending
//! the request's in-flight accounting when done).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;

use super::in_flight::InFlight;
use crate::upstream::StampBody;
use crate::upstream::body::BoxError;

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

    /// Whether the body's length is not known up front: the only kind
    /// of body that a `Transfer-Encoding` can have framed.
    pub fn length_unknown(&self) -> bool {
        match self {
            ClientBody::Empty => false,
            ClientBody::Hyper(b) => b.size_hint().exact().is_none(),
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
            #[pin] cut: crate::tripwire::TrippedOwned,
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
