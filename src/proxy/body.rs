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

use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::in_flight::InFlight;
use crate::routing::Outcome;
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
        /// `cut` ends the body when an operator's drain deadline passes;
        /// `first` is a frame read before the head was passed on (see
        /// `handler::first_frame`); `stall` aborts the body when the stamp
        /// stays silent for `read_timeout`.
        Upstream {
            #[pin] inner: StampBody,
            guard: Option<InFlight>,
            #[pin] cut: crate::tripwire::TrippedOwned,
            first: Option<Frame<Bytes>>,
            stall: Stall,
        },
        /// Made by the proxy (errors, 404).
        Local {
            data: Option<Bytes>,
            guard: Option<InFlight>,
        },
    }
}

/// The read timeout of a stamp's response body. The timer is allocated
/// and registered only once the body waits, and moved only when the body
/// waits again after progress: a body that is always ready costs no timer
/// operation.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    progress: bool,
}

impl Stall {
    /// A stamp body may stay silent for `limit`.
    pub fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            progress: false,
        }
    }

    /// The body waits: whether the stamp has been silent for the limit
    /// (registers `cx` to be woken when it will have been).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timer = match &mut self.timer {
            Some(timer) if self.progress => {
                timer.as_mut().reset(Instant::now() + self.limit);
                timer
            }
            Some(timer) => timer,
            None => self.timer.insert(Box::pin(tokio::time::sleep(self.limit))),
        };
        self.progress = false;
        timer.as_mut().poll(cx).is_ready()
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
                first,
                stall,
            } => {
                if let Some(guard) = guard.as_mut() {
                    guard.body_asked();
                }
                let cut_off =
                    || Poll::Ready(Some(Err("cut: the stamp's drain deadline passed".into())));
                if cut.is_tripped() {
                    return cut_off();
                }
                let polled = match first.take() {
                    Some(frame) => Poll::Ready(Some(Ok(frame))),
                    None => inner.as_mut().poll_frame(cx),
                };
                // Only a body that waits registers for the cut and the read
                // timeout: most small bodies are ready at once, and
                // registering takes the stamp-wide waiter list's lock twice.
                if polled.is_pending() {
                    if cut.poll(cx).is_ready() {
                        return cut_off();
                    }
                    if stall.expired(cx) {
                        // A gateway failure of the stamp, like a reset.
                        if let Some(stamp) = guard.as_ref().and_then(|g| g.stamp.as_ref()) {
                            stamp.record(Outcome::GatewayFailure);
                        }
                        return Poll::Ready(Some(Err(
                            "the stamp was silent for read_timeout mid-body".into(),
                        )));
                    }
                } else {
                    stall.progress = true;
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
                            } else {
                                guard.body_gave();
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
            ResponseBody::Upstream { inner, first, .. } => first.is_none() && inner.is_end_stream(),
            ResponseBody::Local { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, first, .. } => {
                let mut hint = inner.size_hint();
                if let Some(data) = first.as_ref().and_then(Frame::data_ref) {
                    let len = data.len() as u64;
                    // Upper first: a lower bound above the upper one panics.
                    if let Some(upper) = hint.upper() {
                        hint.set_upper(upper + len);
                    }
                    hint.set_lower(hint.lower() + len);
                }
                hint
            }
            ResponseBody::Local { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
