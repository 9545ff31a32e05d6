//! A backend that holds requests open until the test opens its gate: for tests that need a
//! known number of requests in flight at once (circuit breakers, pending queues).
//!
//! Requests whose path contains `hold` wait (at most 30 s) until [`GateBackend::open`];
//! every other request, and held ones once the gate is open, get `200 ok`. It speaks
//! HTTP/1.1 and h2c on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::backend::{BoxError, RespBody, ServerThread};

/// Longest a request waits for the gate, so a failed test cannot hang a connection.
const MAX_HOLD: Duration = Duration::from_secs(30);

/// A running gate backend; shuts down when dropped.
pub struct GateBackend {
    /// Address the backend listens on (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    gate: watch::Sender<bool>,
    _server: ServerThread,
}

#[derive(Default)]
struct Counts {
    /// Requests received.
    arrived: AtomicU64,
    /// Requests waiting at the gate now.
    held: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
}

impl GateBackend {
    /// Requests received so far (held or not).
    pub fn arrived(&self) -> u64 {
        self.counts.arrived.load(Ordering::SeqCst)
    }

    /// Requests waiting at the gate now.
    pub fn held(&self) -> u64 {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// Let every held request (and every later one) through.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Hold `hold` requests again from now on.
    pub fn close(&self) {
        self.gate.send_replace(false);
    }

    /// Wait (polling, at most `timeout`) until exactly `n` requests are held.
    pub fn wait_held(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.held() != n {
            if Instant::now() >= deadline {
                anyhow::bail!("{} requests held at the gate after {timeout:?}, want {n}", self.held());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// Starts a gate backend (closed) on 127.0.0.1:0.
pub fn spawn_gate_backend() -> GateBackend {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind gate backend");
    std_listener.set_nonblocking(true).expect("nonblocking gate listener");
    let addr = std_listener.local_addr().expect("gate backend local addr");
    let counts = Arc::new(Counts::default());
    let (gate, rx) = watch::channel(false);
    let c = counts.clone();
    let server = ServerThread::start("gate", move |mut shutdown| async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return,
                acc = listener.accept() => match acc {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            c.connections.fetch_add(1, Ordering::SeqCst);
            let (c, rx, builder) = (c.clone(), rx.clone(), builder.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, c.clone(), rx.clone()));
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    GateBackend { addr, counts, gate, _server: server }
}

async fn handle(
    req: Request<Incoming>,
    counts: Arc<Counts>,
    mut gate: watch::Receiver<bool>,
) -> Result<Response<RespBody>, Infallible> {
    counts.arrived.fetch_add(1, Ordering::SeqCst);
    if req.uri().path().contains("hold") {
        // Counted down on drop too: the proxy may give up on a held request.
        struct Held(Arc<Counts>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.held.fetch_sub(1, Ordering::SeqCst);
            }
        }
        counts.held.fetch_add(1, Ordering::SeqCst);
        let _held = Held(counts.clone());
        let _ = tokio::time::timeout(MAX_HOLD, gate.wait_for(|open| *open)).await;
    }
    let body = BodyExt::boxed(Full::new(Bytes::from_static(b"ok")).map_err(|e: Infallible| -> BoxError { match e {} }));
    Ok(Response::builder().header("content-type", "text/plain").body(body).expect("gate response"))
}
