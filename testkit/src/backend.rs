//! Real HTTP/1.1, h2c and WebSocket backends that describe what they received.
//!
//! Each backend runs on its own thread with its own tokio runtime, so it keeps serving
//! while a test blocks (e.g. waiting for a proxy process) and works from both plain
//! `#[test]` and `#[tokio::test]` of any flavour.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};
use tokio_tungstenite::WebSocketStream;

/// Boxed error used by test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type produced by the backends.
pub type RespBody = BoxBody<Bytes, BoxError>;

/// Size of each chunk streamed by `/bytes/<n>`.
const CHUNK_SIZE: usize = 64 * 1024;
/// Static payload for `/bytes/<n>`, so streaming never allocates per chunk.
static CHUNK: [u8; CHUNK_SIZE] = [b'x'; CHUNK_SIZE];
/// Upper bound for `/bytes/<n>` so a typo cannot stream forever.
const MAX_BYTES: u64 = 4 << 30;
/// Upper bound for `/delay/<ms>` so a test cannot hang on a backend.
const MAX_DELAY_MS: u64 = 60_000;

/// Which HTTP protocol(s) a backend accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge (h2c) only.
    Http2,
    /// Either, detected from the connection preface.
    Auto,
}

impl BackendKind {
    /// Default backend name for this kind.
    pub fn default_name(self) -> &'static str {
        match self {
            BackendKind::Http1 => "http1",
            BackendKind::Http2 => "http2",
            BackendKind::Auto => "auto",
        }
    }
}

/// A server thread with its own runtime; stopped (not joined) on drop.
pub(crate) struct ServerThread {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve(shutdown_rx)` on a fresh current-thread runtime in a new thread.
    pub(crate) fn start<F, Fut>(name: &str, serve: F) -> ServerThread
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("testkit-{name}"))
            .spawn(move || {
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build backend runtime");
                rt.block_on(serve(rx));
                // Dropping the runtime here cancels the per-connection tasks.
            })
            .expect("spawn backend thread");
        ServerThread { shutdown: Some(tx), thread: Some(thread) }
    }

    /// Signals the server to stop and waits (bounded) for its thread to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        // Only signal: joining from inside an async test could stall its runtime.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A running HTTP backend; shuts down when dropped.
pub struct Backend {
    /// Address the backend listens on (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// Name reported in the `x-backend` header and the JSON body.
    pub name: String,
    /// Number of requests received (all endpoints).
    pub hits: Arc<AtomicU64>,
    /// A status every request gets instead of its path's answer (0: none).
    forced_status: Arc<AtomicU64>,
    server: ServerThread,
}

impl Backend {
    /// `http://127.0.0.1:<port>` for this backend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Port the backend listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received so far.
    pub fn hit_count(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Answer every request (any path) with `status` from now on, or behave normally again
    /// with `None`: a backend that fails on command.
    pub fn force_status(&self, status: Option<u16>) {
        self.forced_status.store(status.map_or(0, u64::from), Ordering::SeqCst);
    }

    /// Stops the backend and waits (at most 5 s) for its thread to exit.
    pub fn shutdown(mut self) {
        self.server.stop();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("hits", &self.hit_count())
            .finish()
    }
}

/// Starts a backend of `kind` on 127.0.0.1:0 named after its kind (`http1`, `http2`, `auto`).
pub fn spawn_http_backend(kind: BackendKind) -> Backend {
    spawn_http_backend_named(kind, kind.default_name())
}

/// Starts a backend of `kind` on 127.0.0.1:0 that reports itself as `name`.
pub fn spawn_http_backend_named(kind: BackendKind, name: &str) -> Backend {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    std_listener.set_nonblocking(true).expect("nonblocking backend listener");
    let addr = std_listener.local_addr().expect("backend local addr");
    let hits = Arc::new(AtomicU64::new(0));
    let forced_status = Arc::new(AtomicU64::new(0));
    let state = Arc::new(State { name: name.to_string(), hits: hits.clone(), forced_status: forced_status.clone() });
    let server = ServerThread::start(name, move |shutdown| serve(std_listener, kind, state, shutdown));
    Backend { addr, name: name.to_string(), hits, forced_status, server }
}

struct State {
    name: String,
    hits: Arc<AtomicU64>,
    forced_status: Arc<AtomicU64>,
}

async fn serve(
    std_listener: std::net::TcpListener,
    kind: BackendKind,
    state: Arc<State>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    // auto::Builder's http1_only/http2_only are ignored with upgrades, so the
    // single-protocol kinds use hyper's own builders.
    let auto = auto::Builder::new(TokioExecutor::new());
    let h1 = hyper::server::conn::http1::Builder::new();
    let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Runs until the Backend is dropped/shut down.
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            acc = listener.accept() => match acc {
                Ok(x) => x,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        let (auto, h1, h2) = (auto.clone(), h1.clone(), h2.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
            let io = TokioIo::new(stream);
            // Connection errors (resets, bad preface) are the peer's business.
            match kind {
                BackendKind::Http1 => {
                    let _ = h1.serve_connection(io, svc).with_upgrades().await;
                }
                BackendKind::Http2 => {
                    let _ = h2.serve_connection(io, svc).await;
                }
                BackendKind::Auto => {
                    let _ = auto.serve_connection_with_upgrades(io, svc).await;
                }
            }
        });
    }
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<RespBody>, Infallible> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let mut resp = route(req, &st).await;
    if let Ok(v) = HeaderValue::from_str(&st.name) {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

async fn route(req: Request<Incoming>, st: &State) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return ws_upgrade(req);
    }
    if path == "/echo" {
        return echo(req);
    }
    let is_h1 = req.version() < Version::HTTP_2;
    let (parts, body) = req.into_parts();
    let body_len = drain(body).await;
    let desc = || describe(&st.name, &parts, body_len);
    let forced = st.forced_status.load(Ordering::SeqCst);
    if let Some(status) = u16::try_from(forced).ok().and_then(|c| StatusCode::from_u16(c).ok()) {
        return json_response(status, &desc());
    }
    if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("yes"));
        let frames = vec![Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"ok"))), Ok(Frame::trailers(trailers))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(BodyExt::boxed(body))
            .expect("trailers response");
    }
    if path == "/close" {
        let mut resp = json_response(StatusCode::OK, &desc());
        if is_h1 {
            // Connection-specific headers are illegal in HTTP/2.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(n) if n <= MAX_BYTES => stream_bytes(n),
            _ => text_response(StatusCode::BAD_REQUEST, "bad byte count\n"),
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(c) => {
                let status = StatusCode::from_u16(c).expect("valid status");
                if c == 204 || c == 304 {
                    let mut r = Response::new(empty_body());
                    *r.status_mut() = status;
                    r
                } else {
                    json_response(status, &desc())
                }
            }
            None => text_response(StatusCode::BAD_REQUEST, "bad status code\n"),
        };
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        return match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
                json_response(StatusCode::OK, &desc())
            }
            Err(_) => text_response(StatusCode::BAD_REQUEST, "bad delay\n"),
        };
    }
    json_response(StatusCode::OK, &desc())
}

/// Counts the request body without buffering it.
async fn drain(mut body: Incoming) -> u64 {
    let mut n = 0u64;
    // Ends when the body ends or errors; the peer bounds its length.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    n
}

fn describe(name: &str, parts: &http::request::Parts, body_len: u64) -> Value {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_ascii_lowercase())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    // HTTP/2 carries the authority as a pseudo-header; show it as `host` like h1 does.
    if !headers.contains_key("host") {
        if let Some(a) = parts.uri.authority() {
            headers.insert("host".into(), vec![a.to_string()]);
        }
    }
    let headers: Map<String, Value> = headers
        .into_iter()
        .map(|(k, mut v)| {
            let v = if v.len() == 1 {
                Value::String(v.pop().unwrap_or_default())
            } else {
                Value::Array(v.into_iter().map(Value::String).collect())
            };
            (k, v)
        })
        .collect();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    })
}

fn empty_body() -> RespBody {
    BodyExt::boxed(http_body_util::Empty::new().map_err(|e: Infallible| match e {}))
}

fn full_body(b: impl Into<Bytes>) -> RespBody {
    BodyExt::boxed(Full::new(b.into()).map_err(|e: Infallible| match e {}))
}

fn json_response(status: StatusCode, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).expect("serialize description");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full_body(body))
        .expect("json response")
}

fn text_response(status: StatusCode, s: &'static str) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full_body(s))
        .expect("text response")
}

fn stream_bytes(n: u64) -> Response<RespBody> {
    let stream = futures_util::stream::unfold(n, |left| async move {
        if left == 0 {
            return None;
        }
        let k = left.min(CHUNK_SIZE as u64) as usize;
        let frame = Frame::data(Bytes::from_static(&CHUNK[..k]));
        Some((Ok::<_, BoxError>(frame), left - k as u64))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, n)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("bytes response")
}

fn echo(req: Request<Incoming>) -> Response<RespBody> {
    let mut b = Response::builder();
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        b = b.header(header::CONTENT_TYPE, ct.clone());
    }
    if let Some(cl) = req.headers().get(header::CONTENT_LENGTH) {
        b = b.header(header::CONTENT_LENGTH, cl.clone());
    }
    // Frames flow straight through with flow control: memory stays bounded.
    let body = req.into_body().map_err(|e| Box::new(e) as BoxError);
    b.body(BodyExt::boxed(body)).expect("echo response")
}

fn ws_upgrade(mut req: Request<Incoming>) -> Response<RespBody> {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let Some(key) = key.filter(|_| is_ws) else {
        return text_response(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut tx, mut rx) = ws.split();
        // Ends when the peer closes or the connection drops.
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() {
                break;
            }
            // Pings are answered by tungstenite itself; only data frames are echoed.
            let data = msg.is_text() || msg.is_binary();
            if data && tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = tx.close().await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(empty_body())
        .expect("101 response")
}
