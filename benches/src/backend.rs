//! The fast backend every proxy forwards to: one hyper server (HTTP/1.1 and h2c on the same
//! port, detected from the connection preface) on its own thread with a single-threaded
//! tokio runtime, so it lives on whatever core the harness is pinned to (core 1).
//!
//! * `GET /64k` (any path ending in `64k`): a 64 KiB body.
//! * `POST` with `content-type: application/grpc*`: a gRPC unary reply (one length-prefixed
//!   message, then the `grpc-status: 0` trailer), exactly what a gRPC server puts on the wire.
//! * `GET /flaky` (any path ending in `flaky`): `503` for [`FLAKY_FAIL_PERCENT`]% of requests,
//!   else the small body (the retry storm scenario). Which ones fail is a fixed pseudo-random
//!   function of the backend's request sequence number, so every attempt (first try or retry)
//!   fails independently of the others and a run is reproducible for a given arrival order.
//! * anything else: a small 64-byte body.
//!
//! Responses are static `Bytes`, so the backend costs as little per request as hyper allows.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

/// Size of the small response body.
pub const SMALL_BODY_LEN: usize = 64;
/// Size of the large response body.
pub const LARGE_BODY_LEN: usize = 64 * 1024;

/// Percentage of `/flaky` requests answered `503`.
pub const FLAKY_FAIL_PERCENT: u64 = 50;

static SMALL: [u8; SMALL_BODY_LEN] = *b"pinion-bench backend: a small response body of sixty-four bytes\n";
static LARGE: [u8; LARGE_BODY_LEN] = [b'x'; LARGE_BODY_LEN];
/// gRPC reply: uncompressed flag, big-endian length 6, then a 6-byte protobuf message
/// (field 1, string "hello").
static UNAVAILABLE: &[u8] = b"pinion-bench backend: flaky 503\n";
static GRPC_REPLY: [u8; 11] = [0, 0, 0, 0, 6, 0x0a, 4, b'p', b'o', b'n', b'g'];

/// A response body: one data frame, then optional trailers. Concrete and allocation-free.
pub struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.trailers) {
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A running backend; stopped when dropped.
pub struct Backend {
    /// 127.0.0.1:<ephemeral> (the first of `addrs`).
    pub addr: SocketAddr,
    /// Every port it listens on (one unless started with [`Backend::spawn_ports`]).
    pub addrs: Vec<SocketAddr>,
    /// Requests answered so far.
    pub hits: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts the backend on a new thread (inheriting the caller's CPU affinity).
    pub fn spawn() -> anyhow::Result<Backend> {
        Self::spawn_ports(1)
    }

    /// Starts one backend thread listening on `n` ports (same responses on each; one hit
    /// counter for all of them).
    pub fn spawn_ports(n: usize) -> anyhow::Result<Backend> {
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind backend")?;
            listener.set_nonblocking(true).context("nonblocking backend listener")?;
            listeners.push(listener);
        }
        let addrs = listeners.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = oneshot::channel();
        let h = hits.clone();
        let thread = std::thread::Builder::new()
            .name("bench-backend".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("backend runtime");
                rt.block_on(serve_all(listeners, h, rx));
            })
            .context("spawn backend thread")?;
        Ok(Backend { addr: addrs[0], addrs, hits, shutdown: Some(tx), thread: Some(thread) })
    }

    /// Every port the backend listens on.
    pub fn ports(&self) -> Vec<u16> {
        self.addrs.iter().map(SocketAddr::port).collect()
    }

    /// Port the backend listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far.
    pub fn hit_count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Serves every listener until the backend is dropped.
async fn serve_all(listeners: Vec<std::net::TcpListener>, hits: Arc<AtomicU64>, shutdown: oneshot::Receiver<()>) {
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::with_capacity(listeners.len());
    for l in listeners {
        let (h, mut stop) = (hits.clone(), stop_tx.subscribe());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = stop.recv().await;
            let _ = tx.send(());
        });
        tasks.push(tokio::spawn(serve(l, h, rx)));
    }
    let _ = shutdown.await;
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
}

async fn serve(listener: std::net::TcpListener, hits: Arc<AtomicU64>, mut shutdown: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().max_concurrent_streams(4096);
    // Runs until the Backend is dropped; each iteration accepts one connection.
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            acc = listener.accept() => match acc {
                Ok((s, _)) => s,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let b = builder.clone();
        let h = hits.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, h.clone()));
            // Resets and closes are the peer's business.
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Whether the `/flaky` request with sequence number `seq` fails: splitmix64 of `seq` (a
/// bijective mixer, so consecutive numbers give unrelated bits) below the failure percentage.
pub fn flaky_fails(seq: u64) -> bool {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z % 100 < FLAKY_FAIL_PERCENT
}

async fn handle(req: Request<Incoming>, hits: Arc<AtomicU64>) -> Result<Response<Reply>, Infallible> {
    let seq = hits.fetch_add(1, Ordering::Relaxed);
    if req.uri().path().ends_with("flaky") && flaky_fails(seq) {
        let _ = req.into_body().collect().await;
        let mut r = Response::new(Reply { data: Some(Bytes::from_static(UNAVAILABLE)), trailers: None });
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r.headers_mut().insert("x-backend", HeaderValue::from_static("bench"));
        return Ok(r);
    }
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let large = req.uri().path().ends_with("64k");
    // Read the request body so h2 streams end cleanly (bounded by the peer's body).
    let _ = req.into_body().collect().await;
    let mut resp = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut r = Response::new(Reply { data: Some(Bytes::from_static(&GRPC_REPLY)), trailers: Some(trailers) });
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        r
    } else {
        let body = if large { Bytes::from_static(&LARGE) } else { Bytes::from_static(&SMALL) };
        let mut r = Response::new(Reply { data: Some(body), trailers: None });
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    resp.headers_mut().insert("x-backend", HeaderValue::from_static("bench"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_fails_about_the_configured_share() {
        let n = 100_000u64;
        let failed = (0..n).filter(|&s| flaky_fails(s)).count() as u64;
        let expected = n * FLAKY_FAIL_PERCENT / 100;
        assert!(failed.abs_diff(expected) < n / 100, "{failed} of {n} failed, expected about {expected}");
        // Consecutive attempts are independent: about a quarter of pairs fail twice.
        let both = (0..n).filter(|&s| flaky_fails(2 * s) && flaky_fails(2 * s + 1)).count() as u64;
        assert!(both.abs_diff(n / 4) < n / 100, "{both} of {n} consecutive pairs both failed");
    }
}
