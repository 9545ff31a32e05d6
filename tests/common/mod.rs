//! Shared helpers for the `pinion` binary's integration tests: bootstrap builders (JSON, which
//! is also YAML), starting the binary under test, raw HTTP/1.1 exchanges, one-connection
//! HTTP/1.1 and h2c clients, and polling with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pinion_testkit::{ProxyKind, ProxyProcess};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Bound for one exchange in these helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

static SET_BIN: Once = Once::new();

/// Point testkit's `ProxyProcess` at the binary cargo built for this test run.
pub fn use_this_binary() {
    SET_BIN.call_once(|| std::env::set_var("PINION_BIN", env!("CARGO_BIN_EXE_pinion")));
}

/// `127.0.0.1:<port>`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------
// Bootstrap builders
// ---------------------------------------------------------------------------------------

/// Merge `extra`'s keys into `base` (shallow, objects only).
pub fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
    base
}

/// The router filter.
pub fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    })
}

/// One virtual host `*` with a `/` prefix route to `cluster`.
pub fn route_all_to(cluster: &str) -> Value {
    json!({
        "name": "routes",
        "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
            { "match": { "prefix": "/" }, "route": { "cluster": cluster } }
        ]}]
    })
}

/// An HTTP connection manager network filter with `route_config`, plus `extra` HCM fields.
pub fn hcm(stat_prefix: &str, route_config: Value, extra: Value) -> Value {
    let typed = merged(
        json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": [router_filter()],
        }),
        extra,
    );
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": typed })
}

/// A TCP proxy network filter to `cluster`.
pub fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        }
    })
}

/// A listener on 127.0.0.1:`port` with one filter chain holding `filter`.
pub fn listener(name: &str, port: u16, filter: Value) -> Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [filter] }],
    })
}

/// A STATIC cluster with one endpoint, plus `extra` cluster fields.
pub fn cluster(name: &str, addr: SocketAddr, extra: Value) -> Value {
    merged(
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() }
            }}}]}]},
        }),
        extra,
    )
}

/// `typed_extension_protocol_options` selecting HTTP/2 upstream, with `common` options.
pub fn h2_upstream(common: Value) -> Value {
    json!({ "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": common,
        "explicit_http_config": { "http2_protocol_options": {} },
    }}})
}

/// `typed_extension_protocol_options` with `use_downstream_protocol_config`.
pub fn use_downstream_protocol() -> Value {
    json!({ "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "use_downstream_protocol_config": { "http_protocol_options": {}, "http2_protocol_options": {} },
    }}})
}

/// A whole bootstrap (as JSON text, which is valid YAML) with the admin on `admin_port`.
pub fn bootstrap(admin_port: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    let b = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
        "static_resources": { "listeners": listeners, "clusters": clusters },
    });
    serde_json::to_string_pretty(&b).expect("bootstrap json")
}

/// Which proxy the tests run against: Pinion, unless `PINION_TESTS_AGAINST=envoy` (used to
/// check an expectation against the real Envoy by hand; not every test applies to Envoy).
pub fn proxy_kind() -> ProxyKind {
    match std::env::var("PINION_TESTS_AGAINST").as_deref() {
        Ok("envoy") => ProxyKind::Envoy,
        _ => ProxyKind::Pinion,
    }
}

/// Start the `pinion` binary under test with `bootstrap` and wait until `/ready` is 200.
pub fn start(bootstrap: &str, args: &[&str]) -> ProxyProcess {
    use_this_binary();
    let admin = admin_port_of(bootstrap);
    let mut p = ProxyProcess::spawn(proxy_kind(), bootstrap, args);
    if let Err(e) = p.wait_ready(admin, Duration::from_secs(20)) {
        panic!("{e:#}");
    }
    p
}

fn admin_port_of(bootstrap: &str) -> u16 {
    let v: Value = serde_json::from_str(bootstrap).expect("bootstrap is JSON");
    v["admin"]["address"]["socket_address"]["port_value"].as_u64().expect("admin port") as u16
}

/// Value of stat `name` (0 when absent).
pub fn stat(p: &ProxyProcess, name: &str) -> u64 {
    p.stat(name).unwrap_or(0)
}

/// Poll `f` every 20 ms until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_for`].
pub async fn wait_for_async<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------------------

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (the backends' request description).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Connect to `addr` within the I/O timeout.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Read one HTTP/1.x response from `r` (bounded by the I/O timeout). `None` if the connection
/// closed before a status line.
pub async fn read_response<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<RawResponse> {
    read_response_within(r, IO_TIMEOUT).await
}

/// [`read_response`] with its own bound.
pub async fn read_response_within<R: tokio::io::AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    within: Duration,
) -> Option<RawResponse> {
    tokio::time::timeout(within, read_response_inner(r))
        .await
        .unwrap_or_else(|_| panic!("no response within {within:?}"))
}

async fn read_response_inner<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<RawResponse> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).await.ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.ok()? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk).await.ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).await.ok()?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        r.read_to_end(&mut body).await.ok()?;
    }
    Some(RawResponse { status, headers, body })
}

/// Send raw bytes on a new connection and read one response.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let s = connect(addr).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(request).await.expect("write request");
    read_response(&mut r).await
}

/// `GET path` over HTTP/1.1 with `headers` on a new connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: example.com\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(addr, req.as_bytes()).await.unwrap_or_else(|| panic!("no response to GET {path}"))
}

/// Whether the peer closes `s` within `within` (EOF or reset), reading and discarding data.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One-connection clients (HTTP/1.1 or h2c)
// ---------------------------------------------------------------------------------------

/// Downstream protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

/// Both downstream protocols.
pub const PROTOS: [Proto; 2] = [Proto::H1, Proto::H2c];

/// Request body type for [`Conn`].
pub type Body = http_body_util::combinators::BoxBody<Bytes, pinion_testkit::BoxError>;

/// A full body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// One client connection; every request goes over this same TCP connection.
pub enum Conn {
    /// HTTP/1.1 (one request at a time).
    H1(hyper::client::conn::http1::SendRequest<Body>),
    /// h2c (multiplexed).
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Trailers.
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Clone for Conn {
    /// Only h2c connections multiplex; cloning an HTTP/1.1 connection is a test bug.
    fn clone(&self) -> Self {
        match self {
            Conn::H2(tx) => Conn::H2(tx.clone()),
            Conn::H1(_) => panic!("an HTTP/1.1 connection cannot be shared"),
        }
    }
}

impl Conn {
    /// Open a connection to `addr` speaking `proto`.
    pub async fn open(addr: SocketAddr, proto: Proto) -> Conn {
        let io = TokioIo::new(connect(addr).await);
        match proto {
            Proto::H1 => {
                let (tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn::H1(tx)
            }
            Proto::H2c => {
                let (tx, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn::H2(tx)
            }
        }
    }

    /// Send a request (the URI may be a path; the authority defaults to `example.com`) and
    /// read the whole response.
    pub async fn send(&mut self, req: Request<Body>) -> anyhow::Result<Resp> {
        let req = self.shape(req);
        let fut = async {
            let resp = match self {
                Conn::H1(tx) => {
                    tx.ready().await?;
                    tx.send_request(req).await?
                }
                Conn::H2(tx) => {
                    tx.ready().await?;
                    tx.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await?;
            let trailers = collected.trailers().cloned();
            Ok::<_, anyhow::Error>(Resp {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            })
        };
        tokio::time::timeout(Duration::from_secs(60), fut).await.map_err(|_| anyhow::anyhow!("exchange timed out"))?
    }

    /// `GET path` with `headers`.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::get(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(full(Bytes::new())).expect("request");
        self.send(req).await.unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    fn shape(&self, mut req: Request<Body>) -> Request<Body> {
        match self {
            Conn::H1(_) => {
                if !req.headers().contains_key(http::header::HOST) {
                    req.headers_mut().insert(http::header::HOST, "example.com".parse().expect("host"));
                }
            }
            Conn::H2(_) => {
                // A `host` header given by the test becomes `:authority`.
                let host = req.headers_mut().remove(http::header::HOST);
                if req.uri().authority().is_none() {
                    let authority = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("example.com").to_owned();
                    let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
                    *req.uri_mut() = format!("http://{authority}{pq}").parse().expect("uri");
                }
                *req.version_mut() = http::Version::HTTP_2;
            }
        }
        req
    }
}

/// A minimal TCP echo server on 127.0.0.1 (its own thread and runtime); returns its address.
pub fn spawn_tcp_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            // Lives as long as the test process; each connection ends when its peer closes.
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    });
    addr
}

/// The address Envoy appends to `x-forwarded-for` for a loopback peer: the host's own
/// (routable, non-loopback) IPv4 address; 127.0.0.1 on a host without one.
pub fn host_address() -> String {
    let probe = || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect("192.0.2.1:9").ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    };
    probe().map(|ip| ip.to_string()).unwrap_or_else(|| "127.0.0.1".into())
}

/// Peak resident set size (VmHWM) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
