//! A request body that can be sent again (the router's retries), after linkerd2-proxy's
//! `ReplayBody` (`linkerd/http/retry/src/replay.rs`), reshaped for Pinion's single-threaded
//! workers.
//!
//! The downstream body streams to the first attempt as it arrives; each data chunk is kept
//! (a `Bytes` clone: a reference count, no copy) up to a limit. A retry gets a new handle
//! ([`ReplayBody::retry`]) that replays the kept chunks, then reads on from the downstream
//! body where the earlier attempt stopped. Past the limit the kept chunks are dropped and
//! no retry is possible, as in Envoy (the router then counts `retry_or_shadow_abandoned`);
//! the attempt in flight still gets the whole body.
//!
//! Differences from linkerd's: all handles live on one worker, so the shared state is an
//! `Rc<RefCell<..>>` and no lock; and the latest attempt owns the downstream body outright.
//! An earlier attempt's handle, still held by a connection task that has not noticed the
//! retry (the router reset it, as Envoy resets the previous upstream request), is woken and
//! fails on its next poll, instead of the retry waiting for it to be dropped.
//!
//! Requests without a retry policy never get one of these: their body is forwarded as before,
//! with nothing kept.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::stats::Counter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an earlier attempt's handle stopped.
#[derive(Debug, thiserror::Error)]
#[error("the request body moved on to a retry")]
pub struct Superseded;

/// A replayable request body around the downstream body `B`.
pub struct ReplayBody<B> {
    shared: Rc<RefCell<Shared<B>>>,
    /// The attempt this handle belongs to; only the latest may poll.
    attempt: u32,
    /// The next kept chunk this handle has not sent yet.
    pos: usize,
    /// This handle has sent the trailers.
    trailers_sent: bool,
    /// The downstream body's size hint when it was wrapped: every attempt sends all of it.
    size_hint: SizeHint,
}

struct Shared<B> {
    /// The downstream body, read by the latest attempt.
    rest: B,
    /// Data chunks read so far (empty once capped).
    kept: Vec<Bytes>,
    /// Bytes read so far.
    read: usize,
    /// The most bytes kept for a replay.
    limit: usize,
    /// The body outgrew `limit` (or failed): it cannot be replayed.
    capped: bool,
    /// The downstream trailers, once read.
    trailers: Option<HeaderMap>,
    /// The downstream body has ended.
    done: bool,
    /// The latest attempt.
    attempt: u32,
    /// The handle waiting on `rest`, woken when a retry takes over (so a stale one fails).
    reader: Option<Waker>,
    /// The router, waiting for the downstream body to end (per-try timers start then).
    done_waiter: Option<Waker>,
    /// `retry_or_shadow_abandoned`, counted when the body outgrows the limit.
    abandoned: Option<Counter>,
}

impl<B: Body<Data = Bytes> + Unpin> ReplayBody<B> {
    /// Wrap `body`, keeping up to `limit` bytes for replays; `abandoned` is counted when the
    /// body turns out larger.
    pub fn new(body: B, limit: usize, abandoned: Option<Counter>) -> Self {
        let size_hint = body.size_hint();
        let done = body.is_end_stream();
        ReplayBody {
            shared: Rc::new(RefCell::new(Shared {
                rest: body,
                kept: Vec::new(),
                read: 0,
                limit,
                capped: false,
                trailers: None,
                done,
                attempt: 0,
                reader: None,
                done_waiter: None,
                abandoned,
            })),
            attempt: 0,
            pos: 0,
            trailers_sent: false,
            size_hint,
        }
    }

    /// A handle for the next attempt, which sends the whole body again; `None` when the
    /// body outgrew the limit. Earlier handles fail from now on.
    pub fn retry(&self) -> Option<ReplayBody<B>> {
        let mut sh = self.shared.borrow_mut();
        if sh.capped {
            return None;
        }
        sh.attempt += 1;
        if let Some(w) = sh.reader.take() {
            w.wake();
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            attempt: sh.attempt,
            pos: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }

    /// The body outgrew the replay limit: no more retries.
    pub fn is_capped(&self) -> bool {
        self.shared.borrow().capped
    }

    /// Whether the downstream body has ended; if not, `cx` is woken when it does.
    pub fn poll_request_done(&self, cx: &mut Context<'_>) -> bool {
        let mut sh = self.shared.borrow_mut();
        if !sh.done {
            sh.done_waiter = Some(cx.waker().clone());
        }
        sh.done
    }
}

impl<B> Shared<B> {
    fn finish(&mut self) {
        self.done = true;
        if let Some(w) = self.done_waiter.take() {
            w.wake();
        }
    }

    /// Keep a chunk for replays, or give up on replays when it would pass the limit.
    fn keep(&mut self, data: &Bytes) {
        self.read += data.len();
        if self.capped {
            return;
        }
        if self.read > self.limit {
            self.capped = true;
            self.kept = Vec::new();
            if let Some(c) = &self.abandoned {
                c.inc();
            }
        } else {
            self.kept.push(data.clone());
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut sh = this.shared.borrow_mut();
        let sh = &mut *sh;
        if this.attempt != sh.attempt {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(chunk) = sh.kept.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if sh.done {
            if !this.trailers_sent {
                if let Some(t) = &sh.trailers {
                    this.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
            }
            return Poll::Ready(None);
        }
        match Pin::new(&mut sh.rest).poll_frame(cx) {
            Poll::Pending => {
                if !sh.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    sh.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                sh.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken body cannot be sent again.
                sh.capped = true;
                sh.kept = Vec::new();
                sh.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    sh.keep(data);
                    this.pos = sh.kept.len();
                    if sh.rest.is_end_stream() {
                        sh.finish();
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    sh.trailers = Some(t.clone());
                    this.trailers_sent = true;
                    sh.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let sh = self.shared.borrow();
        if self.attempt != sh.attempt {
            // Not ended: the next poll fails, which resets the stale upstream request.
            return false;
        }
        if self.pos < sh.kept.len() {
            return false;
        }
        if sh.done {
            return self.trailers_sent || sh.trailers.is_none();
        }
        sh.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A body of scripted frames; `None` entries are a pending poll (woken at once).
    struct Script {
        frames: VecDeque<Option<Frame<Bytes>>>,
    }

    impl Script {
        fn new(chunks: &[&'static str], trailers: bool) -> Self {
            let mut frames: VecDeque<Option<Frame<Bytes>>> =
                chunks.iter().map(|c| Some(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
            if trailers {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                frames.push_back(Some(Frame::trailers(t)));
            }
            Script { frames }
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.frames.pop_front() {
                None => Poll::Ready(None),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(f)) => Poll::Ready(Some(Ok(f))),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
        }
    }

    async fn collect(b: &mut ReplayBody<Script>) -> (Vec<u8>, Option<HeaderMap>) {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = b.frame().await {
            let f = f.expect("frame");
            if let Some(d) = f.data_ref() {
                data.extend_from_slice(d);
            } else if let Ok(t) = f.into_trailers() {
                trailers = Some(t);
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn replays_everything_including_trailers() {
        let mut first = ReplayBody::new(Script::new(&["ab", "cd"], true), 100, None);
        let (data, trailers) = collect(&mut first).await;
        assert_eq!(data, b"abcd");
        assert!(trailers.is_some());
        assert!(first.is_end_stream());
        let mut second = first.retry().expect("replayable");
        assert!(!second.is_end_stream());
        let (data, trailers) = collect(&mut second).await;
        assert_eq!(data, b"abcd");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(second.is_end_stream());
    }

    #[tokio::test]
    async fn a_retry_reads_on_where_the_earlier_attempt_stopped() {
        let script = Script { frames: VecDeque::from([Some(Frame::data(Bytes::from_static(b"one"))), None]) };
        let mut script = script;
        script.frames.push_back(Some(Frame::data(Bytes::from_static(b"two"))));
        let mut first = ReplayBody::new(script, 100, None);
        // The first attempt sends one chunk, then its upstream fails.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "one");
        let mut second = first.retry().unwrap();
        // The stale handle fails instead of competing for the downstream body.
        assert!(first.frame().await.unwrap().is_err());
        assert!(!first.is_end_stream());
        let (data, _) = collect(&mut second).await;
        assert_eq!(data, b"onetwo");
        let mut third = second.retry().unwrap();
        assert_eq!(collect(&mut third).await.0, b"onetwo");
    }

    #[tokio::test]
    async fn past_the_limit_no_replay_but_the_attempt_gets_it_all() {
        let store = crate::stats::Store::new(1);
        let abandoned = store
            .counter("cluster.c.retry_or_shadow_abandoned", crate::stats::Prom::plain("retry_or_shadow_abandoned"));
        // Exactly the limit is still replayable (Envoy gives up when it would be exceeded).
        let mut at_limit = ReplayBody::new(Script::new(&["12345", "67890"], false), 10, Some(abandoned.clone()));
        assert_eq!(collect(&mut at_limit).await.0, b"1234567890");
        assert!(!at_limit.is_capped());
        assert!(at_limit.retry().is_some());
        assert_eq!(abandoned.value(), 0);

        let mut over = ReplayBody::new(Script::new(&["12345", "678901"], false), 10, Some(abandoned.clone()));
        assert_eq!(collect(&mut over).await.0, b"12345678901");
        assert!(over.is_capped());
        assert!(over.retry().is_none());
        assert_eq!(abandoned.value(), 1);
    }

    #[tokio::test]
    async fn done_is_signalled() {
        let mut b = ReplayBody::new(Script::new(&["x"], false), 10, None);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(!b.poll_request_done(&mut cx));
        collect(&mut b).await;
        assert!(b.poll_request_done(&mut cx));
        let empty = ReplayBody::new(Script::new(&[], false), 10, None);
        assert!(empty.poll_request_done(&mut cx));
    }
}
