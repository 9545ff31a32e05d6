//! Backends for active health checking tests that fail on command.
//!
//! [`HealthBackend`] serves HTTP/1.1 and h2c: `/healthz` (any path starting with it) answers
//! with the status and headers set by [`HealthBackend::set_health`], the gRPC
//! `grpc.health.v1.Health/Check` answers SERVING while that status is 200 and NOT_SERVING
//! otherwise, and every other path answers 200 with `x-backend: <name>` (routed traffic).
//! [`TcpBackend`] accepts TCP connections (answering `PONG` to `PING`) and can stop
//! accepting, so connects are refused, and start again on the same port.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{BoxError, RespBody, ServerThread};

/// What `/healthz` answers.
#[derive(Clone, Debug)]
struct Health {
    status: u16,
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Seen {
    /// Request headers of the most recent health requests (newest last, at most 16).
    requests: VecDeque<(String, HeaderMap)>,
}

struct State {
    name: String,
    health: Mutex<Health>,
    health_hits: AtomicU64,
    traffic_hits: AtomicU64,
    seen: Mutex<Seen>,
}

/// An HTTP/1.1 + h2c backend whose health endpoint fails on command; stopped when dropped.
pub struct HealthBackend {
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    state: Arc<State>,
    _server: ServerThread,
}

impl HealthBackend {
    /// Start one named `name`, healthy (`/healthz` answers 200).
    pub fn spawn(name: &str) -> HealthBackend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind health backend");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local addr");
        let state = Arc::new(State {
            name: name.to_string(),
            health: Mutex::new(Health { status: 200, headers: Vec::new() }),
            health_hits: AtomicU64::new(0),
            traffic_hits: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
        });
        let st = state.clone();
        let server = ServerThread::start(name, move |mut shutdown| async move {
            let listener = tokio::net::TcpListener::from_std(l).expect("tokio listener");
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut shutdown => return,
                    acc = listener.accept() => match acc {
                        Ok(x) => x,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
                    },
                };
                let st = st.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        HealthBackend { addr, state, _server: server }
    }

    /// Make `/healthz` answer `status` with these extra response headers (e.g.
    /// `x-envoy-immediate-health-check-fail`, `x-envoy-degraded`).
    pub fn set_health(&self, status: u16, headers: &[(&str, &str)]) {
        let mut h = self.state.health.lock().unwrap_or_else(|e| e.into_inner());
        h.status = status;
        h.headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Health requests (HTTP and gRPC) answered so far.
    pub fn health_hits(&self) -> u64 {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// Other (routed) requests answered so far.
    pub fn traffic_hits(&self) -> u64 {
        self.state.traffic_hits.load(Ordering::SeqCst)
    }

    /// Path and headers of the last health request, if any.
    pub fn last_health_request(&self) -> Option<(String, HeaderMap)> {
        self.state.seen.lock().unwrap_or_else(|e| e.into_inner()).requests.back().cloned()
    }
}

fn grpc_frame(serving: bool) -> Bytes {
    // HealthCheckResponse { status: SERVING (1) | NOT_SERVING (2) }, length-prefixed.
    Bytes::from(vec![0, 0, 0, 0, 2, 0x08, if serving { 1 } else { 2 }])
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let is_health = path.starts_with("/healthz") || path == "/grpc.health.v1.Health/Check";
    if !is_health {
        st.traffic_hits.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(Full::new(Bytes::from(st.name.clone())).map_err(|e| match e {}).boxed());
        if let Ok(v) = HeaderValue::from_str(&st.name) {
            resp.headers_mut().insert("x-backend", v);
        }
        return Ok(resp);
    }
    st.health_hits.fetch_add(1, Ordering::SeqCst);
    {
        let mut seen = st.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.requests.push_back((path.clone(), parts.headers.clone()));
        if seen.requests.len() > 16 {
            seen.requests.pop_front();
        }
    }
    let health = st.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if path == "/grpc.health.v1.Health/Check" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames =
            vec![Ok::<_, BoxError>(Frame::data(grpc_frame(health.status == 200))), Ok(Frame::trailers(trailers))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let resp = Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(BodyExt::boxed(body))
            .expect("grpc response");
        return Ok(resp);
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"health")).map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::from_u16(health.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in &health.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

/// A TCP backend that can stop accepting connections (so connects are refused) and start
/// again on the same port. It answers `PONG` to every `PING` it reads and keeps the
/// connection open; stopped when dropped.
pub struct TcpBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    server: Mutex<Option<ServerThread>>,
    connections: Arc<AtomicU64>,
}

impl TcpBackend {
    /// Start one on an ephemeral port.
    pub fn spawn() -> TcpBackend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp backend");
        let addr = l.local_addr().expect("local addr");
        let connections = Arc::new(AtomicU64::new(0));
        let server = Self::serve(l, connections.clone());
        TcpBackend { addr, server: Mutex::new(Some(server)), connections }
    }

    fn serve(l: std::net::TcpListener, connections: Arc<AtomicU64>) -> ServerThread {
        l.set_nonblocking(true).expect("nonblocking");
        ServerThread::start("tcp-health", move |mut shutdown| async move {
            let listener = tokio::net::TcpListener::from_std(l).expect("tokio listener");
            loop {
                let (mut s, _) = tokio::select! {
                    _ = &mut shutdown => return,
                    acc = listener.accept() => match acc {
                        Ok(x) => x,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
                    },
                };
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(i) = buf.windows(4).position(|w| w == b"PING") {
                            buf.drain(..i + 4);
                            if s.write_all(b"PONG").await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        })
    }

    /// Stop accepting: the listening socket is closed (new connects are refused) and the
    /// open connections end.
    pub fn stop(&self) {
        if let Some(mut s) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            s.stop();
        }
    }

    /// Accept again on the same port.
    pub fn start(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            let l = std::net::TcpListener::bind(self.addr).expect("rebind tcp backend");
            *server = Some(Self::serve(l, self.connections.clone()));
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}
