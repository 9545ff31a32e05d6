//! Differential test: the real Envoy and Pinion get the same bootstrap
//! (`bootstraps/differential.yaml`, only ports differ) and the same table of requests,
//! over HTTP/1.1 and h2c; every row must give the same observable result.
//!
//! Each row also carries its own expectations (status, matched route, a few values),
//! checked against every proxy that runs, so the table itself is verified against Envoy.
//! `INTEROP_ONLY=envoy` (or `pinion`) runs a single proxy; the default is both.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    full, grpc_bidi_echo, grpc_unary_with, h2c_client_to, http1_client_to, send_full, spawn_grpc_backend,
    spawn_http_backend, Backend, BackendKind, GrpcBackend, ProxyKind, ProxyProcess, TestClient,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------

/// Downstream protocol a row is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

/// Which downstream protocols a row runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protos {
    Both,
    H1Only,
    H2Only,
}

/// What a row sends.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One HTTP request.
    Http,
    /// gRPC unary `Authorization/Check` (status = grpc-status).
    GrpcUnary,
    /// gRPC bidi ADS echo with n messages (status = grpc-status).
    GrpcBidi(usize),
    /// HTTP/1.1 WebSocket upgrade, then one text message echoed (status = 101).
    WebSocket,
}

/// How to compare response bodies between the proxies.
#[derive(Clone, Copy, Debug)]
enum BodyCmp {
    /// Byte for byte (local replies, direct responses, echo, gRPC summaries).
    Exact,
    /// The backend's JSON description: compare what the backend observed.
    Upstream,
    /// Length, and that every byte is b'x' (large streamed bodies).
    Len,
}

/// One request and what to compare / expect.
struct Row {
    name: &'static str,
    kind: Kind,
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    protos: Protos,
    cmp: BodyCmp,
    /// Expected HTTP status (gRPC rows: grpc-status code).
    status: u16,
    /// Expected `x-route` response header; None = must be absent.
    route: Option<&'static str>,
    /// Extra expectations. Keys: `up.<field>` (backend JSON field), `up:<header>` (as
    /// the backend saw it), `resp:<header>`, `trailer:<name>`, `body`, `body.len`.
    /// Values: exact text (multi-values joined with " | "), `<absent>` or `<present>`.
    expect: &'static [(&'static str, &'static str)],
}

const DEFAULT_AUTHORITY: &str = "default.example.com";
const HEADERS_VH: &str = "headers.example.com";

/// Defaults for rows: GET / on the default vhost, proxied JSON, 200, both protocols.
const R: Row = Row {
    name: "",
    kind: Kind::Http,
    method: "GET",
    authority: DEFAULT_AUTHORITY,
    path: "/",
    headers: &[],
    body: "",
    protos: Protos::Both,
    cmp: BodyCmp::Upstream,
    status: 200,
    route: None,
    expect: &[],
};

/// Local reply body for a refused upstream connection (Envoy 1.40 adds no OS detail).
const CONNECT_FAILURE_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";

/// Values that legitimately differ between the two runs, and why. Everything else
/// listed in the module docs is compared.
const DELIBERATE_DIFFERENCES: &[(&str, &str)] = &[
    ("response `date`", "wall-clock time: only its presence is compared"),
    ("response `x-envoy-upstream-service-time`", "measured latency: only its presence is compared"),
    ("upstream `x-request-id`", "random UUID per request: only its presence is compared"),
];

fn table() -> Vec<Row> {
    vec![
        // ---- path matching on the default (`*`) virtual host ----
        Row { name: "path-exact", path: "/exact", route: Some("exact-path"), expect: &[("up.path", "/exact")], ..R },
        Row { name: "path-exact-longer-is-no-route", path: "/exact/more", cmp: BodyCmp::Exact, status: 404, ..R },
        Row { name: "safe-regex", path: "/regex/123", route: Some("regex"), ..R },
        Row { name: "safe-regex-miss", path: "/regex/12a", cmp: BodyCmp::Exact, status: 404, ..R },
        Row { name: "path-separated-prefix-exact", path: "/sep", route: Some("sep"), ..R },
        Row {
            name: "path-separated-prefix-child",
            path: "/sep/child?x=1",
            route: Some("sep"),
            expect: &[("up.path", "/sep/child?x=1")],
            ..R
        },
        Row { name: "path-separated-prefix-query", path: "/sep?x=1", route: Some("sep"), ..R },
        Row { name: "path-separated-prefix-miss", path: "/sepx", cmp: BodyCmp::Exact, status: 404, ..R },
        Row {
            name: "prefix-case-insensitive",
            path: "/caseINSENSITIVE/Abc",
            route: Some("case-insensitive"),
            expect: &[("up.path", "/caseINSENSITIVE/Abc")],
            ..R
        },
        // ---- header matchers ----
        Row { name: "header-exact", path: "/hdr", headers: &[("x-exact", "yes")], route: Some("hdr-exact"), ..R },
        Row {
            name: "header-exact-wrong-value",
            path: "/hdr",
            headers: &[("x-exact", "YES"), ("x-inv", "no")],
            route: Some("hdr-fallback"),
            ..R
        },
        Row { name: "header-present", path: "/hdr/x", headers: &[("x-present", "")], route: Some("hdr-present"), ..R },
        Row {
            name: "header-prefix",
            path: "/hdr",
            headers: &[("x-prefix", "abcdef"), ("x-inv", "no")],
            route: Some("hdr-prefix"),
            ..R
        },
        Row {
            name: "header-prefix-miss",
            path: "/hdr",
            headers: &[("x-prefix", "xabc"), ("x-inv", "no")],
            route: Some("hdr-fallback"),
            ..R
        },
        Row {
            name: "header-invert-other-value",
            path: "/hdr",
            headers: &[("x-inv", "yes")],
            route: Some("hdr-invert"),
            ..R
        },
        Row {
            name: "header-invert-same-value",
            path: "/hdr",
            headers: &[("x-inv", "no")],
            route: Some("hdr-fallback"),
            ..R
        },
        // Envoy: an absent header never matches a string matcher, even inverted.
        Row { name: "header-invert-absent", path: "/hdr", route: Some("hdr-fallback"), ..R },
        // ---- query parameter matchers ----
        Row { name: "query-exact", path: "/query?q=1", route: Some("query-exact"), ..R },
        Row { name: "query-exact-other-value", path: "/query?q=2", route: Some("query-fallback"), ..R },
        Row { name: "query-present-empty", path: "/query?a=b&p=", route: Some("query-present"), ..R },
        Row { name: "query-none", path: "/query", route: Some("query-fallback"), ..R },
        // ---- virtual host (domain) selection ----
        Row {
            name: "domain-exact",
            authority: "exact.example.com",
            path: "/only",
            route: Some("exact-only"),
            expect: &[("up:host", "exact.example.com")],
            ..R
        },
        Row {
            name: "domain-exact-mixed-case",
            authority: "EXACT.Example.com",
            path: "/vhost",
            cmp: BodyCmp::Exact,
            expect: &[("body", "exact")],
            ..R
        },
        Row {
            name: "domain-exact-no-route",
            authority: "exact.example.com",
            path: "/other",
            cmp: BodyCmp::Exact,
            status: 404,
            ..R
        },
        Row {
            name: "domain-exact-with-port-falls-to-default",
            authority: "exact.example.com:9999",
            path: "/vhost",
            cmp: BodyCmp::Exact,
            expect: &[("body", "default")],
            ..R
        },
        Row {
            name: "domain-suffix-wildcard",
            authority: "api.wild.example.com",
            path: "/x",
            route: Some("suffix"),
            ..R
        },
        Row {
            name: "domain-suffix-wildcard-bare",
            authority: "wild.example.com",
            path: "/vhost",
            cmp: BodyCmp::Exact,
            expect: &[("body", "default")],
            ..R
        },
        Row {
            name: "domain-prefix-wildcard",
            authority: "prefix.anything.test",
            path: "/x",
            route: Some("prefix-wild"),
            ..R
        },
        Row {
            name: "domain-with-port",
            authority: "port.example.com:8080",
            path: "/x",
            route: Some("with-port"),
            expect: &[("up:host", "port.example.com:8080")],
            ..R
        },
        Row {
            name: "domain-with-other-port",
            authority: "port.example.com:9090",
            path: "/vhost",
            cmp: BodyCmp::Exact,
            expect: &[("body", "default")],
            ..R
        },
        Row {
            name: "domain-catch-all",
            authority: "unknown.test",
            path: "/vhost",
            cmp: BodyCmp::Exact,
            expect: &[("body", "default")],
            ..R
        },
        // ---- rewrites and cluster selection ----
        Row {
            name: "prefix-rewrite",
            path: "/rewrite/a/b?z=1",
            route: Some("rewrite"),
            expect: &[("up.path", "/rewritten/a/b?z=1")],
            ..R
        },
        Row {
            name: "host-rewrite-literal",
            path: "/hostrw",
            route: Some("hostrw"),
            expect: &[("up:host", "rewritten.example.com")],
            ..R
        },
        Row { name: "auto-host-rewrite-static", path: "/autohost-static", route: Some("autohost-static"), ..R },
        Row { name: "auto-host-rewrite-dns", path: "/autohost", route: Some("autohost-dns"), ..R },
        Row {
            name: "weighted-clusters-100-0",
            path: "/weighted",
            route: Some("weighted"),
            expect: &[("up.backend", "http2"), ("up.version", "HTTP/2.0")],
            ..R
        },
        Row {
            name: "h2-upstream",
            path: "/h2/x?y=1",
            route: Some("h2"),
            expect: &[("up.path", "/x?y=1"), ("up.version", "HTTP/2.0")],
            ..R
        },
        // ---- direct responses and redirects ----
        Row {
            name: "direct-response-body",
            path: "/direct",
            cmp: BodyCmp::Exact,
            route: Some("direct"),
            expect: &[("body", "direct body\n"), ("resp:content-type", "text/plain")],
            ..R
        },
        Row {
            name: "direct-response-empty",
            path: "/direct-empty",
            cmp: BodyCmp::Exact,
            status: 418,
            expect: &[("body", "")],
            ..R
        },
        Row {
            name: "redirect-https",
            path: "/redirect/https?a=1",
            cmp: BodyCmp::Exact,
            status: 301,
            expect: &[("resp:location", "https://default.example.com/redirect/https?a=1")],
            ..R
        },
        Row {
            name: "redirect-path-308",
            path: "/redirect/path",
            cmp: BodyCmp::Exact,
            status: 308,
            expect: &[("resp:location", "http://default.example.com/new/path")],
            ..R
        },
        Row {
            name: "redirect-host-302",
            path: "/redirect/host",
            cmp: BodyCmp::Exact,
            status: 302,
            expect: &[("resp:location", "http://other.example.com/redirect/host")],
            ..R
        },
        Row {
            name: "redirect-prefix-307",
            path: "/redirect/prefix/abc",
            cmp: BodyCmp::Exact,
            status: 307,
            expect: &[("resp:location", "http://default.example.com/rewritten/abc")],
            ..R
        },
        // ---- header manipulation (route, vhost and route-config level) ----
        Row {
            name: "headers-levels",
            authority: HEADERS_VH,
            path: "/levels",
            route: Some("headers"),
            expect: &[
                ("up:x-level", "route | vh | rc"),
                ("up:x-vh-req", "vh"),
                ("up:x-rc-req", "rc"),
                ("resp:x-vh-resp", "vh"),
                ("resp:x-rc-resp", "rc"),
            ],
            ..R
        },
        Row {
            name: "headers-add-if-absent-absent",
            authority: HEADERS_VH,
            path: "/a",
            route: Some("headers"),
            expect: &[("up:x-add-if-absent", "added")],
            ..R
        },
        Row {
            name: "headers-add-if-absent-present",
            authority: HEADERS_VH,
            path: "/a",
            headers: &[("x-add-if-absent", "client")],
            route: Some("headers"),
            expect: &[("up:x-add-if-absent", "client")],
            ..R
        },
        Row {
            name: "headers-overwrite-or-add",
            authority: HEADERS_VH,
            path: "/a",
            headers: &[("x-overwrite", "client")],
            route: Some("headers"),
            expect: &[("up:x-overwrite", "over")],
            ..R
        },
        Row {
            name: "headers-overwrite-if-exists-absent",
            authority: HEADERS_VH,
            path: "/a",
            route: Some("headers"),
            expect: &[("up:x-overwrite-if-exists", "<absent>")],
            ..R
        },
        Row {
            name: "headers-overwrite-if-exists-present",
            authority: HEADERS_VH,
            path: "/a",
            headers: &[("x-overwrite-if-exists", "client")],
            route: Some("headers"),
            expect: &[("up:x-overwrite-if-exists", "over")],
            ..R
        },
        Row {
            name: "headers-append",
            authority: HEADERS_VH,
            path: "/a",
            headers: &[("x-append", "client")],
            route: Some("headers"),
            expect: &[("up:x-append", "client | appended")],
            ..R
        },
        Row {
            name: "headers-remove-request",
            authority: HEADERS_VH,
            path: "/strip",
            headers: &[("x-remove-me", "1"), ("x-remove-vh", "1"), ("x-remove-rc", "1"), ("x-keep", "1")],
            route: Some("strip"),
            expect: &[
                ("up:x-remove-me", "<absent>"),
                ("up:x-remove-vh", "<absent>"),
                ("up:x-remove-rc", "<absent>"),
                ("up:x-keep", "1"),
            ],
            ..R
        },
        Row {
            name: "headers-remove-response",
            authority: HEADERS_VH,
            path: "/strip",
            route: Some("strip"),
            expect: &[("resp:x-backend", "<absent>")],
            ..R
        },
        Row {
            name: "headers-response-overwrite",
            authority: HEADERS_VH,
            path: "/resp-overwrite",
            route: Some("resp-overwrite"),
            expect: &[("resp:x-backend", "overwritten")],
            ..R
        },
        Row {
            name: "headers-response-add-if-absent",
            authority: HEADERS_VH,
            path: "/resp-add-if-absent",
            route: Some("resp-add-if-absent"),
            expect: &[("resp:x-backend", "http1"), ("resp:x-absent-before", "added")],
            ..R
        },
        // ---- errors and local replies ----
        Row { name: "no-route", path: "/nothing-here", cmp: BodyCmp::Exact, status: 404, ..R },
        Row {
            name: "unknown-cluster",
            path: "/nocluster",
            cmp: BodyCmp::Exact,
            status: 503,
            route: Some("nocluster"),
            ..R
        },
        Row {
            name: "connection-refused",
            path: "/refused",
            cmp: BodyCmp::Exact,
            status: 503,
            route: Some("refused"),
            expect: &[("body", CONNECT_FAILURE_BODY), ("resp:content-type", "text/plain")],
            ..R
        },
        Row {
            name: "route-timeout",
            path: "/delay/3000",
            cmp: BodyCmp::Exact,
            status: 504,
            route: Some("delay"),
            expect: &[("body", "upstream request timeout")],
            ..R
        },
        Row {
            name: "within-route-timeout",
            path: "/delay/10",
            route: Some("delay"),
            expect: &[("up:x-envoy-expected-rq-timeout-ms", "1000")],
            ..R
        },
        // ---- pass-through behaviour ----
        Row { name: "upstream-status", path: "/status/418", status: 418, route: Some("pass"), ..R },
        Row { name: "upstream-status-503", path: "/status/503", status: 503, route: Some("pass"), ..R },
        Row {
            name: "post-body",
            method: "POST",
            path: "/anything",
            body: "hello world",
            route: Some("pass"),
            expect: &[("up.body_len", "11"), ("up.method", "POST")],
            ..R
        },
        Row {
            name: "head",
            method: "HEAD",
            path: "/anything",
            cmp: BodyCmp::Exact,
            route: Some("pass"),
            expect: &[("body", "")],
            ..R
        },
        Row {
            name: "echo",
            method: "POST",
            path: "/echo",
            body: "ping",
            cmp: BodyCmp::Exact,
            route: Some("pass"),
            expect: &[("body", "ping")],
            ..R
        },
        Row {
            name: "large-streamed-body-8MiB",
            path: "/bytes/8388608",
            cmp: BodyCmp::Len,
            route: Some("pass"),
            expect: &[("body.len", "8388608")],
            ..R
        },
        Row {
            name: "trailers",
            path: "/trailers",
            cmp: BodyCmp::Exact,
            route: Some("pass"),
            expect: &[("body", "ok")],
            ..R
        },
        Row {
            name: "trailers-h2",
            path: "/trailers",
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            route: Some("pass"),
            expect: &[("body", "ok"), ("trailer:x-trailer", "yes")],
            ..R
        },
        Row { name: "upstream-connection-close", path: "/close", route: Some("pass"), ..R },
        Row {
            name: "websocket-upgrade-echo",
            kind: Kind::WebSocket,
            path: "/ws",
            protos: Protos::H1Only,
            cmp: BodyCmp::Exact,
            status: 101,
            expect: &[("body", "echo=hello"), ("resp:upgrade", "websocket")],
            ..R
        },
        // ---- gRPC through the proxy (h2c only) ----
        Row {
            name: "grpc-unary",
            kind: Kind::GrpcUnary,
            authority: "grpc.example.com",
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 0,
            route: Some("grpc"),
            expect: &[("body", "path=/probe echo=hello"), ("resp:x-backend", "grpc")],
            ..R
        },
        Row {
            name: "grpc-bidi-stream",
            kind: Kind::GrpcBidi(5),
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 0,
            route: None,
            expect: &[("body", "responses=5 echoed_all=true")],
            ..R
        },
        Row {
            name: "grpc-connection-refused",
            kind: Kind::GrpcUnary,
            authority: "grpc-refused.example.com",
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 14,
            ..R
        },
    ]
}

// ---------------------------------------------------------------------------------
// Running rows
// ---------------------------------------------------------------------------------

/// What one proxy did for one row.
#[derive(Debug, Default, Clone)]
struct Obs {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
    body: Bytes,
    trailers: BTreeMap<String, Vec<String>>,
    upstream: Option<Value>,
    /// Requests the (h1, h2, grpc) backends received while the row ran.
    hits: (u64, u64, u64),
    error: Option<String>,
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        m.entry(k.as_str().to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    m
}

struct Backends {
    h1: Backend,
    h2: Backend,
    grpc: GrpcBackend,
    refused_port: u16,
}

impl Backends {
    fn hits(&self) -> (u64, u64, u64) {
        (self.h1.hit_count(), self.h2.hit_count(), self.grpc.hits.load(Ordering::SeqCst))
    }
}

struct Target {
    kind: ProxyKind,
    proc: ProxyProcess,
    listen: SocketAddr,
    h1: TestClient,
    h2: TestClient,
}

fn start(kind: ProxyKind, b: &Backends) -> Target {
    let admin = pinion_testkit::free_port();
    let listen = pinion_testkit::free_port();
    let yaml = render_bootstrap(
        "differential.yaml",
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", listen.to_string()),
            ("H1_PORT", b.h1.port().to_string()),
            ("H2_PORT", b.h2.port().to_string()),
            ("GRPC_PORT", b.grpc.port().to_string()),
            ("REFUSED_PORT", b.refused_port.to_string()),
        ],
    );
    let mut proc = ProxyProcess::spawn(kind, &yaml, &[]);
    if let Err(e) = proc.wait_ready(admin, Duration::from_secs(30)) {
        panic!("{kind} did not become ready: {e:#}");
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], listen));
    // /ready should imply listeners are bound; still, allow a short grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{kind} ready but listener {listen} not accepting\n{}", proc.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    Target { kind, proc, listen, h1: http1_client_to(listen), h2: h2c_client_to(listen) }
}

async fn run_row(t: &Target, b: &Backends, row: &Row, proto: Proto) -> Obs {
    let before = b.hits();
    let mut obs = match row.kind {
        Kind::Http => run_http(t, row, proto).await,
        Kind::GrpcUnary => match grpc_unary_with(&t.listen.to_string(), Some(row.authority), "/probe", "hello").await {
            Ok(r) => Obs {
                status: r.code as u16,
                headers: header_map(&r.metadata),
                body: Bytes::from(format!(
                    "path={} echo={}",
                    r.echoed_path.unwrap_or_default(),
                    r.echoed_header.unwrap_or_default()
                )),
                error: (!r.message.is_empty()).then(|| format!("grpc-message: {}", r.message)),
                ..Obs::default()
            },
            Err(e) => Obs { error: Some(format!("{e:#}")), ..Obs::default() },
        },
        Kind::GrpcBidi(n) => match grpc_bidi_echo(&t.listen.to_string(), n).await {
            Ok(r) => Obs {
                status: r.code as u16,
                body: Bytes::from(format!("responses={} echoed_all={}", r.responses.len(), r.echoed_all(n))),
                error: (!r.message.is_empty()).then(|| format!("grpc-message: {}", r.message)),
                ..Obs::default()
            },
            Err(e) => Obs { error: Some(format!("{e:#}")), ..Obs::default() },
        },
        Kind::WebSocket => run_websocket(t, row).await,
    };
    // Let a slow backend request (the timeout row) register before counting.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = b.hits();
    obs.hits = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    obs
}

async fn run_websocket(t: &Target, row: &Row) -> Obs {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(t.listen).await?;
        let url = format!("ws://{}{}", row.authority, row.path);
        let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await?;
        ws.send(Message::text("hello")).await?;
        let echoed = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => format!("unexpected {other:?}"),
        };
        let _ = ws.close(None).await;
        Ok::<_, anyhow::Error>(Obs {
            status: resp.status().as_u16(),
            headers: header_map(resp.headers()),
            body: Bytes::from(format!("echo={echoed}")),
            ..Obs::default()
        })
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Obs { error: Some(format!("{e:#}")), ..Obs::default() },
        Err(_) => Obs { error: Some("websocket exchange timed out".into()), ..Obs::default() },
    }
}

async fn run_http(t: &Target, row: &Row, proto: Proto) -> Obs {
    let mut req = Request::builder()
        .method(Method::from_bytes(row.method.as_bytes()).expect("method"))
        .uri(format!("http://{}{}", row.authority, row.path));
    for (k, v) in row.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(row.body)).expect("request");
    let client = match proto {
        Proto::H1 => &t.h1,
        Proto::H2c => &t.h2,
    };
    match send_full(client, req, Duration::from_secs(20)).await {
        Ok(r) => {
            let upstream = match row.cmp {
                BodyCmp::Upstream => serde_json::from_slice(&r.body).ok(),
                _ => None,
            };
            Obs {
                status: r.status.as_u16(),
                headers: header_map(&r.headers),
                body: r.body,
                trailers: r.trailers.as_ref().map(header_map).unwrap_or_default(),
                upstream,
                ..Obs::default()
            }
        }
        Err(e) => Obs { error: Some(format!("{e:#}")), ..Obs::default() },
    }
}

// ---------------------------------------------------------------------------------
// Checking and comparing
// ---------------------------------------------------------------------------------

/// Response headers whose values are compared on every row (absent == absent).
const COMPARED_RESPONSE_HEADERS: &[&str] = &[
    "server",
    "content-type",
    "location",
    "x-backend",
    "x-route",
    "x-rc-resp",
    "x-vh-resp",
    "x-level",
    "x-absent-before",
    "upgrade",
    "connection",
    "grpc-status",
    "grpc-message",
];
/// Response headers compared for presence only (values vary by time).
const PRESENCE_ONLY_RESPONSE_HEADERS: &[&str] = &["date", "x-envoy-upstream-service-time"];
/// Upstream request headers compared for presence only.
const PRESENCE_ONLY_UPSTREAM_HEADERS: &[&str] = &["x-request-id"];

fn joined(v: Option<&Vec<String>>) -> String {
    match v {
        None => "<absent>".into(),
        Some(v) => v.join(" | "),
    }
}

fn upstream_header(o: &Obs, name: &str) -> Option<Vec<String>> {
    let h = o.upstream.as_ref()?.get("headers")?.get(name)?;
    Some(match h {
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
        Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    })
}

fn upstream_field(o: &Obs, f: &str) -> String {
    match o.upstream.as_ref().and_then(|u| u.get(f)) {
        None => "<absent>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn matches(want: &str, got: &str) -> bool {
    match want {
        "<present>" => got != "<absent>",
        _ => want == got,
    }
}

/// The row's own expectations against one proxy's observation.
fn check_expectations(row: &Row, o: &Obs) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(e) = &o.error {
        if !matches!(row.kind, Kind::GrpcUnary | Kind::GrpcBidi(_)) || o.status == 0 {
            bad.push(format!("error: {e}"));
        }
    }
    if o.status != row.status {
        bad.push(format!("status {} (want {})", o.status, row.status));
    }
    if !matches!(row.kind, Kind::GrpcBidi(_)) {
        let got = joined(o.headers.get("x-route"));
        let want = row.route.unwrap_or("<absent>");
        if got != want {
            bad.push(format!("x-route {got:?} (want {want:?})"));
        }
    }
    if matches!(row.cmp, BodyCmp::Upstream) && o.upstream.is_none() && o.error.is_none() {
        bad.push("body is not the backend's JSON description".into());
    }
    for (key, want) in row.expect {
        let got = if let Some(f) = key.strip_prefix("up.") {
            upstream_field(o, f)
        } else if let Some(h) = key.strip_prefix("up:") {
            joined(upstream_header(o, h).as_ref())
        } else if let Some(h) = key.strip_prefix("resp:") {
            joined(o.headers.get(h))
        } else if let Some(h) = key.strip_prefix("trailer:") {
            joined(o.trailers.get(h))
        } else if *key == "body" {
            String::from_utf8_lossy(&o.body).into_owned()
        } else if *key == "body.len" {
            o.body.len().to_string()
        } else {
            panic!("row {}: unknown expectation key {key}", row.name)
        };
        if !matches(want, &got) {
            bad.push(format!("{key} = {got:?} (want {want:?})"));
        }
    }
    bad
}

/// Differences between Envoy's (`a`) and Pinion's (`b`) observations.
fn compare(row: &Row, a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    if a.status != b.status {
        d.push(format!("status: envoy {} vs pinion {}", a.status, b.status));
    }
    let grpc = matches!(row.kind, Kind::GrpcUnary | Kind::GrpcBidi(_));
    if (grpc && a.error != b.error) || a.error.is_some() != b.error.is_some() {
        d.push(format!("error: envoy {:?} vs pinion {:?}", a.error, b.error));
    }
    if a.hits != b.hits {
        d.push(format!("backend hits (h1,h2,grpc): envoy {:?} vs pinion {:?}", a.hits, b.hits));
    }
    // Same set of response header names, compared values for the listed ones.
    let names = |o: &Obs| o.headers.keys().cloned().collect::<BTreeSet<_>>();
    if names(a) != names(b) {
        d.push(format!(
            "response header names: only envoy {:?}, only pinion {:?}",
            names(a).difference(&names(b)).collect::<Vec<_>>(),
            names(b).difference(&names(a)).collect::<Vec<_>>()
        ));
    }
    let mut value_headers: Vec<&str> = COMPARED_RESPONSE_HEADERS.to_vec();
    if matches!(row.cmp, BodyCmp::Exact | BodyCmp::Len) {
        value_headers.push("content-length");
    }
    for h in value_headers {
        let (x, y) = (joined(a.headers.get(h)), joined(b.headers.get(h)));
        if x != y {
            d.push(format!("response {h}: envoy {x:?} vs pinion {y:?}"));
        }
    }
    for h in PRESENCE_ONLY_RESPONSE_HEADERS {
        let (x, y) = (a.headers.contains_key(*h), b.headers.contains_key(*h));
        if x != y {
            d.push(format!("response {h} present: envoy {x} vs pinion {y}"));
        }
    }
    if a.trailers != b.trailers {
        d.push(format!("trailers: envoy {:?} vs pinion {:?}", a.trailers, b.trailers));
    }
    match row.cmp {
        BodyCmp::Exact => {
            if a.body != b.body {
                d.push(format!("body: envoy {:?} vs pinion {:?}", show(&a.body), show(&b.body)));
            }
        }
        BodyCmp::Len => {
            let all_x = |b: &Bytes| b.iter().all(|&c| c == b'x');
            if a.body.len() != b.body.len() || all_x(&a.body) != all_x(&b.body) {
                d.push(format!(
                    "body: envoy {} bytes (all 'x': {}) vs pinion {} bytes (all 'x': {})",
                    a.body.len(),
                    all_x(&a.body),
                    b.body.len(),
                    all_x(&b.body)
                ));
            }
        }
        BodyCmp::Upstream => d.extend(compare_upstream(a, b)),
    }
    d
}

/// Compares what the backend saw: request line fields, header names and values.
fn compare_upstream(a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    for f in ["backend", "method", "path", "version", "body_len"] {
        let (x, y) = (upstream_field(a, f), upstream_field(b, f));
        if x != y {
            d.push(format!("upstream {f}: envoy {x:?} vs pinion {y:?}"));
        }
    }
    let headers = |o: &Obs| -> BTreeMap<String, Value> {
        o.upstream
            .as_ref()
            .and_then(|u| u.get("headers"))
            .and_then(|h| h.as_object())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (ha, hb) = (headers(a), headers(b));
    let keys: BTreeSet<&String> = ha.keys().chain(hb.keys()).collect();
    for k in keys {
        let (x, y) = (ha.get(k), hb.get(k));
        let same =
            if PRESENCE_ONLY_UPSTREAM_HEADERS.contains(&k.as_str()) { x.is_some() == y.is_some() } else { x == y };
        if !same {
            d.push(format!(
                "upstream header {k}: envoy {} vs pinion {}",
                x.map_or("<absent>".into(), |v| v.to_string()),
                y.map_or("<absent>".into(), |v| v.to_string())
            ));
        }
    }
    d
}

fn show(b: &[u8]) -> String {
    const MAX: usize = 300;
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX)]).into_owned();
    if b.len() > MAX {
        format!("{s}…({} bytes)", b.len())
    } else {
        s
    }
}

fn describe(o: &Obs) -> String {
    let body = if o.upstream.is_some() {
        o.upstream.as_ref().map(|u| u.to_string()).unwrap_or_default()
    } else {
        show(&o.body)
    };
    format!(
        "status={} error={:?} hits(h1,h2,grpc)={:?}\n      headers={:?}\n      trailers={:?}\n      body={}",
        o.status, o.error, o.hits, o.headers, o.trailers, body
    )
}

// ---------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    // INTEROP_VERBOSE=1 prints every observation (to document the reference's behaviour).
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let rows = table();
    assert!(rows.len() >= 45, "table has only {} rows", rows.len());
    let names: BTreeSet<_> = rows.iter().map(|r| r.name).collect();
    assert_eq!(names.len(), rows.len(), "row names must be unique");
    assert!(!DELIBERATE_DIFFERENCES.is_empty());

    let backends = Backends {
        h1: spawn_http_backend(BackendKind::Http1),
        h2: spawn_http_backend(BackendKind::Http2),
        grpc: spawn_grpc_backend(),
        refused_port: pinion_testkit::free_port(),
    };
    // Spawning and waiting are blocking calls (bounded by wait_ready's timeout).
    let targets: Vec<Target> = tokio::task::block_in_place(|| kinds.iter().map(|k| start(*k, &backends)).collect());

    let mut failures = Vec::new();
    let mut passed = 0usize;
    let mut total = 0usize;
    for proto in [Proto::H1, Proto::H2c] {
        for row in &rows {
            let skip = match proto {
                Proto::H1 => row.protos == Protos::H2Only,
                Proto::H2c => row.protos == Protos::H1Only,
            };
            if skip {
                continue;
            }
            total += 1;
            let mut obs = Vec::new();
            for t in &targets {
                obs.push((t.kind, run_row(t, &backends, row, proto).await));
            }
            if verbose {
                for (kind, o) in &obs {
                    eprintln!("{} [{proto:?}] {kind}: {}", row.name, describe(o));
                }
            }
            let mut problems = Vec::new();
            for (kind, o) in &obs {
                for p in check_expectations(row, o) {
                    problems.push(format!("{kind} expectation: {p}"));
                }
            }
            if let [(_, a), (_, b)] = obs.as_slice() {
                problems.extend(compare(row, a, b));
            }
            if problems.is_empty() {
                passed += 1;
            } else {
                let sides: Vec<String> = obs.iter().map(|(k, o)| format!("    {k}: {}", describe(o))).collect();
                failures.push(format!(
                    "row {} [{:?}] {} {}{} (authority {}):\n  - {}\n{}",
                    row.name,
                    proto,
                    row.method,
                    row.path,
                    if row.headers.is_empty() { String::new() } else { format!(" {:?}", row.headers) },
                    row.authority,
                    problems.join("\n  - "),
                    sides.join("\n")
                ));
            }
        }
    }
    let which: Vec<String> = targets.iter().map(|t| t.kind.to_string()).collect();
    eprintln!(
        "differential [{}]: {passed}/{total} row runs passed ({} rows x protocols)",
        which.join(" vs "),
        rows.len()
    );
    if !failures.is_empty() {
        let logs: Vec<String> = targets.iter().map(|t| t.proc.logs()).collect();
        panic!("{} of {total} row runs failed:\n\n{}\n\n{}", failures.len(), failures.join("\n\n"), logs.join("\n"));
    }
}

/// The comparison itself must notice differences (guards against a vacuous harness).
#[test]
fn compare_reports_differences() {
    let row = table().into_iter().find(|r| r.name == "prefix-rewrite").expect("row");
    let up = |path: &str, rid: &str| {
        serde_json::json!({"backend": "http1", "method": "GET", "path": path,
            "version": "HTTP/1.1", "body_len": 0,
            "headers": {"host": "default.example.com", "x-request-id": rid}})
    };
    let mut a = Obs { status: 200, upstream: Some(up("/rewritten/a", "1")), ..Obs::default() };
    a.headers.insert("server".into(), vec!["pinion-test".into()]);
    let mut b = a.clone();
    b.upstream = Some(up("/rewritten/a", "2"));
    assert!(compare(&row, &a, &b).is_empty(), "x-request-id value is volatile");
    b.upstream = Some(up("/rewrite/a", "2"));
    b.status = 404;
    b.headers.insert("server".into(), vec!["envoy".into()]);
    let d = compare(&row, &a, &b).join("\n");
    assert!(d.contains("status: envoy 200 vs pinion 404"), "{d}");
    assert!(d.contains("upstream path"), "{d}");
    assert!(d.contains("response server"), "{d}");
}
