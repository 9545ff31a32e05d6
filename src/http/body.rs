//! Body types on the proxy path: an enum instead of a boxed trait object, so forwarding a
//! request or response does not allocate. The upstream h2 response body lives here too (the
//! h2 client builds it): the client depends on these types, not the other way round.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::replay_body::ReplayBody;

/// Error type of proxy bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Progress of one request, for the HCM's `stream_idle_timeout` and `request_timeout`.
#[derive(Debug)]
pub struct Activity {
    /// Last time a body frame moved.
    pub last: std::cell::Cell<std::time::Instant>,
    /// The downstream request body has ended.
    pub request_done: std::cell::Cell<bool>,
}

impl Activity {
    /// Fresh activity at `now`.
    pub fn new(request_done: bool) -> Self {
        Activity {
            last: std::cell::Cell::new(std::time::Instant::now()),
            request_done: std::cell::Cell::new(request_done),
        }
    }
}

/// A request body sent upstream.
pub enum RequestBody {
    /// Streamed from downstream.
    Incoming(Incoming),
    /// Streamed from downstream, recording progress for the stream timeouts.
    Tracked(Incoming, std::rc::Rc<Activity>),
    /// A buffered body (or none).
    Full(Option<Bytes>),
    /// Streamed from downstream and kept for retries (only on routes that may retry); the
    /// inner body is `Incoming` or `Tracked`.
    Replay(ReplayBody<RequestBody>),
}

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        RequestBody::Full(None)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Tracked(b, activity) => {
                let res = Pin::new(&mut *b).poll_frame(cx).map_err(Into::into);
                match &res {
                    Poll::Ready(Some(Ok(_))) => {
                        activity.last.set(std::time::Instant::now());
                        if b.is_end_stream() {
                            activity.request_done.set(true);
                        }
                    }
                    Poll::Ready(None) => activity.request_done.set(true),
                    _ => {}
                }
                res
            }
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Replay(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) | RequestBody::Tracked(b, _) => b.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Replay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) | RequestBody::Tracked(b, _) => b.size_hint(),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Replay(b) => b.size_hint(),
        }
    }
}

/// A response body from upstream: hyper's (HTTP/1.1) or an h2 stream.
pub enum UpstreamBody {
    /// HTTP/1.1.
    H1(Incoming),
    /// HTTP/2.
    H2(H2Body),
}

/// Called once when a response body ends (fully sent, failed or dropped): finishes the
/// request's accounting (access log, active-request gauges, pool stream slots).
pub trait OnComplete {
    /// `bytes_sent` is the response body bytes passed downstream; `ok` is false on a reset.
    fn complete(self: Box<Self>, bytes_sent: u64, ok: bool);
}

/// A response body sent downstream.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    on_complete: Option<Box<dyn OnComplete>>,
    /// The retry policy's `per_try_idle_timeout` while the body streams (boxed: only routes
    /// that set one pay for the timer).
    idle: Option<Box<IdleTimer>>,
    /// The HCM's stream duration limit (boxed: only streams with a limit pay for the timer).
    deadline: Option<Box<Deadline>>,
}

/// Ends a response body at a fixed time (the HCM's `max_stream_duration`: Envoy resets a
/// stream whose response has started).
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    on_timeout: Option<Box<dyn FnOnce()>>,
}

/// The error a body cut by the stream duration limit ends with.
#[derive(Debug, thiserror::Error)]
#[error("max stream duration reached")]
pub struct MaxStreamDuration;

/// Ends a response body that stalls for `after` (Envoy's per-try idle timer, which keeps
/// running once the response has started and then resets the stream).
struct IdleTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    after: std::time::Duration,
    on_timeout: Option<Box<dyn FnOnce()>>,
}

/// The error a stalled response body ends with.
#[derive(Debug, thiserror::Error)]
#[error("upstream per try idle timeout")]
pub struct IdleTimeout;

enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
    UpstreamH2(H2Body),
}

impl ResponseBody {
    /// A local reply body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody {
            inner: Inner::Full(if b.is_empty() { None } else { Some(b) }),
            bytes: 0,
            on_complete: None,
            idle: None,
            deadline: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody { inner: Inner::Full(None), bytes: 0, on_complete: None, idle: None, deadline: None }
    }

    /// Stream an upstream body.
    pub fn upstream(b: UpstreamBody) -> Self {
        let inner = match b {
            UpstreamBody::H1(b) => Inner::Upstream(b),
            UpstreamBody::H2(b) => Inner::UpstreamH2(b),
        };
        ResponseBody { inner, bytes: 0, on_complete: None, idle: None, deadline: None }
    }

    /// End the body with an error if no frame arrives for `after`, calling `on_timeout` then.
    pub fn set_idle_timeout(&mut self, after: std::time::Duration, on_timeout: Box<dyn FnOnce()>) {
        let sleep = Box::pin(tokio::time::sleep(after));
        self.idle = Some(Box::new(IdleTimer { sleep, after, on_timeout: Some(on_timeout) }));
    }

    /// End the body with an error at `at` unless it ended before, calling `on_timeout` then.
    /// A body that is already complete (a local reply) needs none.
    /// Of two deadlines (the cluster's and the HCM's stream durations) the earlier wins.
    pub fn set_deadline(&mut self, at: std::time::Instant, on_timeout: Box<dyn FnOnce()>) {
        if self.is_end_stream() || matches!(self.inner, Inner::Full(_)) {
            return;
        }
        let at_tokio = tokio::time::Instant::from_std(at);
        if self.deadline.as_ref().is_some_and(|d| d.sleep.deadline() <= at_tokio) {
            return;
        }
        let sleep = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at)));
        self.deadline = Some(Box::new(Deadline { sleep, on_timeout: Some(on_timeout) }));
    }

    /// Run `f` when the body ends.
    pub fn set_on_complete(&mut self, f: Box<dyn OnComplete>) {
        self.on_complete = Some(f);
    }

    fn finish(&mut self, ok: bool) {
        if let Some(f) = self.on_complete.take() {
            f.complete(self.bytes, ok);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before the end: the downstream went away or the stream was reset.
        let ended = self.is_end_stream();
        self.finish(ended);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Checked on every poll, so a body that never stalls is cut on time too.
        if let Some(d) = this.deadline.as_mut() {
            if d.sleep.as_mut().poll(cx).is_ready() {
                if let Some(f) = d.on_timeout.take() {
                    f();
                }
                this.deadline = None;
                this.idle = None;
                this.finish(false);
                return Poll::Ready(Some(Err(MaxStreamDuration.into())));
            }
        }
        let res = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::UpstreamH2(b) => Pin::new(b).poll_frame(cx),
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {
                if let Some(t) = this.idle.as_mut() {
                    if t.sleep.as_mut().poll(cx).is_ready() {
                        if let Some(f) = t.on_timeout.take() {
                            f();
                        }
                        this.idle = None;
                        this.finish(false);
                        return Poll::Ready(Some(Err(IdleTimeout.into())));
                    }
                }
                return Poll::Pending;
            }
        }
        if let Some(t) = this.idle.as_mut() {
            // Any frame is activity (Envoy resets the timer on response data).
            let at = tokio::time::Instant::now() + t.after;
            t.sleep.as_mut().reset(at);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::UpstreamH2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
            Inner::UpstreamH2(b) => b.size_hint(),
        }
    }
}

/// A response body read from an h2 stream.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
}

impl H2Body {
    /// The body of a response received on `recv`.
    pub fn new(recv: RecvStream) -> Self {
        H2Body { recv, data_done: false }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Give the window back as soon as the bytes move on downstream.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
