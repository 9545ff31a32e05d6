//! A backend that fails on command, for retry tests: each request says, in its `x-fail`
//! header, how the first attempts for its path should fail; the backend counts the attempts
//! per path and records what each one carried.
//!
//! `x-fail: <n>:<how>` makes the first `n` requests for the path fail, later ones succeed
//! (200, a JSON description). `<how>` is one of:
//! - `status=<code>`: answer `<code>` with a short body (`x-fail-headers: a=1;b=2` adds
//!   response headers);
//! - `reset`: no response (HTTP/1.1: the connection is closed; HTTP/2: the stream is reset);
//! - `hang`: answer only after 5 s (longer than any per-try timeout in the tests);
//! - `stall`: answer 200 at once with half the body, the rest after 2 s;
//! - `grpc=<code>`: a gRPC trailers-only answer (`grpc-status: <code>` in the headers).
//!
//! HTTP/1.1 and h2c on one port (detected from the preface).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::backend::{BoxError, RespBody, ServerThread};

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Attempt number for its path (1-based).
    pub attempt: u64,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Request headers (lowercase names; repeated values joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// The request body.
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    seen: HashMap<String, Vec<Seen>>,
}

/// A running fail-on-command backend; stops when dropped.
pub struct FlakyBackend {
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: ServerThread,
}

impl FlakyBackend {
    /// Requests received for `path` so far.
    pub fn attempts(&self, path: &str) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).seen.get(path).map_or(0, |v| v.len() as u64)
    }

    /// The requests received for `path`, in order.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).seen.get(path).cloned().unwrap_or_default()
    }
}

/// Start a fail-on-command backend.
pub fn spawn_flaky_backend() -> FlakyBackend {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind flaky backend");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("local addr");
    let state = Arc::new(Mutex::new(State::default()));
    let st = state.clone();
    let server = ServerThread::start("flaky", move |mut shutdown| async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => return,
                acc = listener.accept() => match acc {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let st = st.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                // A `reset` answer is a service error: hyper closes the connection (HTTP/1.1)
                // or resets the stream (HTTP/2).
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    FlakyBackend { addr, state, _server: server }
}

fn text(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Response<RespBody>, BoxError> {
    let (parts, body) = req.into_parts();
    // Read the whole body first: the proxies under test must replay it whole on retries.
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let mut headers = BTreeMap::new();
    for name in parts.headers.keys() {
        let v: Vec<&str> = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        headers.insert(name.as_str().to_string(), v.join(", "));
    }
    let attempt = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let list = st.seen.entry(path.clone()).or_default();
        let attempt = list.len() as u64 + 1;
        list.push(Seen {
            attempt,
            version: format!("{:?}", parts.version),
            headers: headers.clone(),
            body: body.clone(),
        });
        attempt
    };
    let how = headers.get("x-fail").and_then(|v| v.split_once(':'));
    let fail = how.and_then(|(n, how)| Some((n.trim().parse::<u64>().ok()?, how.trim())));
    if let Some((n, how)) = fail.filter(|(n, _)| attempt <= *n) {
        let _ = n;
        if let Some(code) = how.strip_prefix("status=") {
            let status = code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok());
            let mut r = text(status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "failed on purpose\n");
            for kv in headers.get("x-fail-headers").map(String::as_str).unwrap_or("").split(';') {
                if let Some((k, v)) = kv.split_once('=') {
                    if let (Ok(k), Ok(v)) =
                        (http::HeaderName::from_bytes(k.trim().as_bytes()), HeaderValue::from_str(v))
                    {
                        r.headers_mut().append(k, v);
                    }
                }
            }
            return Ok(r);
        }
        if let Some(code) = how.strip_prefix("grpc=") {
            let mut r = text(StatusCode::OK, "");
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("2")));
            *r.body_mut() = http_body_util::Empty::new().map_err(|e| match e {}).boxed();
            return Ok(r);
        }
        match how {
            "reset" => return Err("reset on purpose".into()),
            "hang" => tokio::time::sleep(Duration::from_secs(5)).await,
            "stall" => {
                let frames = futures_util::stream::iter([0u8, 1]).then(|i| async move {
                    if i == 1 {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"stall")))
                });
                let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
                r.headers_mut().insert("content-length", HeaderValue::from_static("10"));
                return Ok(r);
            }
            _ => {}
        }
    }
    let desc = json!({ "path": path, "attempt": attempt, "headers": headers, "body_len": body.len() });
    let mut r = Response::new(Full::new(Bytes::from(desc.to_string())).map_err(|e: Infallible| match e {}).boxed());
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    Ok(r)
}
