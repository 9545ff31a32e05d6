//! Data path of the `pinion` binary (issue 2, acceptance 1): HTTP/1.1 keep-alive, pipelining
//! and chunked bodies, h2c with many streams, upstream HTTP/2 (explicit and
//! `use_downstream_protocol_config`) and multiplexing, large streamed bodies with bounded
//! memory, trailers, gRPC, WebSocket, hop-by-hop headers, `x-forwarded-*`, `x-request-id`,
//! STRICT_DNS, local replies (503/404), tcp_proxy and access logs.
//!
//! Tests that make sense on both downstream protocols run one body over HTTP/1.1 and h2c.
//! `PINION_TESTS_AGAINST=envoy` runs them against the real Envoy instead (to check an
//! expectation by hand).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pinion_testkit::{
    free_port, grpc_bidi_echo, grpc_unary, spawn_grpc_backend, spawn_http_backend, Backend, BackendKind, GrpcBackend,
    ProxyProcess,
};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};

/// Everything a data-path test talks to.
struct Env {
    proxy: ProxyProcess,
    /// Main listener: routes by domain, WebSocket upgrades allowed, access logs.
    main: SocketAddr,
    /// Same routes, no `upgrade_configs`.
    no_upgrade: SocketAddr,
    /// `use_remote_address: true`.
    remote: SocketAddr,
    /// `use_remote_address: true`, `xff_num_trusted_hops: 1`.
    trusted_hop: SocketAddr,
    /// `use_remote_address: true`, `skip_xff_append: true`.
    skip_xff: SocketAddr,
    /// `use_remote_address: true`, `preserve_external_request_id: true`.
    preserve_id: SocketAddr,
    /// tcp_proxy to a TCP echo server.
    tcp: SocketAddr,
    h1: Backend,
    _h2: Backend,
    _auto: Backend,
    _grpc: GrpcBackend,
    default_log: std::path::PathBuf,
    custom_log: std::path::PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.default_log);
        let _ = std::fs::remove_file(&self.custom_log);
    }
}

const CUSTOM_LOG_FORMAT: &str = "CUSTOM %REQ(:METHOD)% %REQ(X-LOG-TAG)% %RESPONSE_CODE% %DURATION% %UPSTREAM_HOST%\n";

fn routes() -> Value {
    let vh = |name: &str, domain: &str, cluster: &str| {
        json!({ "name": name, "domains": [domain], "routes": [
            { "match": { "prefix": "/" }, "route": { "cluster": cluster } }
        ]})
    };
    json!({
        "name": "main",
        "validate_clusters": false,
        "virtual_hosts": [
            vh("h2", "h2.test", "h2"),
            vh("ds", "ds.test", "downstream_protocol"),
            vh("dns", "dns.test", "dns"),
            vh("refused", "refused.test", "refused"),
            vh("nocluster", "nocluster.test", "does_not_exist"),
            vh("mux", "mux.test", "h2_mux"),
            vh("maxreq", "maxreq.test", "h2_max_requests"),
            { "name": "noroute", "domains": ["noroute.test"], "routes": [
                { "match": { "prefix": "/only" }, "route": { "cluster": "h1" } }
            ]},
            { "name": "default", "domains": ["*"], "routes": [
                { "match": { "prefix": "/envoy.service." }, "route": { "cluster": "grpc" } },
                { "match": { "prefix": "/" }, "route": { "cluster": "h1" } }
            ]},
        ]
    })
}

fn file_log(path: &std::path::Path, format: Option<&str>) -> Value {
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.display().to_string(),
    });
    if let Some(f) = format {
        typed["log_format"] = json!({ "text_format_source": { "inline_string": f } });
    }
    json!({ "name": "envoy.access_loggers.file", "typed_config": typed })
}

fn setup(args: &[&str]) -> Env {
    let h1 = spawn_http_backend(BackendKind::Http1);
    let h2 = spawn_http_backend(BackendKind::Http2);
    let auto = spawn_http_backend(BackendKind::Auto);
    let grpc = spawn_grpc_backend();
    let echo = spawn_tcp_echo();
    let refused = local(free_port()); // nothing listens there
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let admin = ports[0];
    let tmp = std::env::temp_dir();
    let default_log = tmp.join(format!("pinion-test-{}-{}-default.log", std::process::id(), ports[1]));
    let custom_log = tmp.join(format!("pinion-test-{}-{}-custom.log", std::process::id(), ports[1]));
    let remote = |stat: &str, extra: Value| hcm(stat, routes(), merged(json!({ "use_remote_address": true }), extra));
    let listeners = vec![
        listener(
            "main",
            ports[1],
            hcm(
                "main",
                routes(),
                json!({
                    "upgrade_configs": [{ "upgrade_type": "websocket" }],
                    // Envoy's edge recommendation: the HTTP/2 stream window bounds what the
                    // proxy buffers per stream (the 256 MiB default would allow 256 MiB).
                    "http2_protocol_options": {
                        "initial_stream_window_size": 65536,
                        "initial_connection_window_size": 1048576,
                    },
                    "access_log": [file_log(&default_log, None), file_log(&custom_log, Some(CUSTOM_LOG_FORMAT))],
                }),
            ),
        ),
        listener("no_upgrade", ports[2], hcm("no_upgrade", routes(), json!({}))),
        listener("remote", ports[3], remote("remote", json!({}))),
        listener("trusted_hop", ports[4], remote("trusted_hop", json!({ "xff_num_trusted_hops": 1 }))),
        listener("skip_xff", ports[5], remote("skip_xff", json!({ "skip_xff_append": true }))),
        listener("preserve_id", ports[6], remote("preserve_id", json!({ "preserve_external_request_id": true }))),
        listener("tcp", ports[7], tcp_proxy("tcp", "echo")),
    ];
    let clusters = vec![
        cluster("h1", h1.addr, json!({})),
        cluster("h2", h2.addr, h2_upstream(json!({}))),
        cluster("h2_mux", h2.addr, h2_upstream(json!({}))),
        cluster("h2_max_requests", h2.addr, h2_upstream(json!({ "max_requests_per_connection": 10 }))),
        cluster("downstream_protocol", auto.addr, use_downstream_protocol()),
        cluster("grpc", grpc.addr, h2_upstream(json!({}))),
        cluster("refused", refused, json!({})),
        cluster("echo", echo, json!({})),
        json!({
            "name": "dns",
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_ONLY",
            "connect_timeout": "1s",
            "load_assignment": { "cluster_name": "dns", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "localhost", "port_value": h1.port() }
            }}}]}]},
        }),
    ];
    // Pinion's default flush interval, given explicitly so Envoy (default 10 s) matches.
    let mut all_args = vec!["--file-flush-interval-msec", "1000"];
    all_args.extend_from_slice(args);
    let proxy = start(&bootstrap(admin, listeners, clusters), &all_args);
    Env {
        proxy,
        main: local(ports[1]),
        no_upgrade: local(ports[2]),
        remote: local(ports[3]),
        trusted_hop: local(ports[4]),
        skip_xff: local(ports[5]),
        preserve_id: local(ports[6]),
        tcp: local(ports[7]),
        h1,
        _h2: h2,
        _auto: auto,
        _grpc: grpc,
        default_log,
        custom_log,
    }
}

/// The request headers the backend saw (`headers` of its JSON description).
fn upstream_header(desc: &Value, name: &str) -> Option<String> {
    match &desc["headers"][name] {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | ")),
        _ => None,
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().enumerate().all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'))
}

// ---------------------------------------------------------------------------------------
// Connections and bodies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_one_downstream_connection() {
    let env = setup(&[]);
    for proto in PROTOS {
        let before = stat(&env.proxy, "http.main.downstream_cx_total");
        let mut conn = Conn::open(env.main, proto).await;
        for i in 0..50 {
            let r = conn.get(&format!("/keepalive/{i}"), &[]).await;
            assert_eq!(r.status, 200, "{proto:?} request {i}");
            assert_eq!(r.json()["path"], format!("/keepalive/{i}"), "{proto:?}");
        }
        let after = stat(&env.proxy, "http.main.downstream_cx_total");
        assert_eq!(after - before, 1, "{proto:?}: 50 requests must use one downstream connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let env = setup(&[]);
    let s = connect(env.main).await;
    let mut r = BufReader::new(s);
    let two = "GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n";
    r.get_mut().write_all(two.as_bytes()).await.unwrap();
    let first = read_response(&mut r).await.expect("first pipelined response");
    let second = read_response(&mut r).await.expect("second pipelined response");
    assert_eq!((first.status, second.status), (201, 202));
    assert_eq!(first.json()["path"], "/status/201");
    assert_eq!(second.json()["path"], "/status/202");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_streamed_request_bodies_reach_the_backend() {
    let env = setup(&[]);
    // HTTP/1.1 chunked, written in pieces.
    let s = connect(env.main).await;
    let mut r = BufReader::new(s);
    let w = r.get_mut();
    w.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    let mut sent = 0;
    for n in [5usize, 1000, 70000, 1] {
        w.write_all(format!("{n:x}\r\n").as_bytes()).await.unwrap();
        w.write_all(&vec![b'a'; n]).await.unwrap();
        w.write_all(b"\r\n").await.unwrap();
        sent += n;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = read_response(&mut r).await.expect("response");
    assert_eq!(resp.status, 200);
    let desc = resp.json();
    assert_eq!(desc["body_len"], sent as u64);
    assert_eq!(desc["method"], "POST");

    // Both protocols: a body of unknown length streamed in frames.
    for proto in PROTOS {
        let mut conn = Conn::open(env.main, proto).await;
        let frames = (0..20).map(|_| Ok::<_, pinion_testkit::BoxError>(Frame::data(Bytes::from(vec![b'z'; 4096]))));
        let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        let req = Request::post("/stream").body(body).unwrap();
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.status, 200, "{proto:?}");
        assert_eq!(resp.json()["body_len"], 20 * 4096, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_serves_100_concurrent_streams_on_one_connection() {
    let env = setup(&[]);
    let conn = Conn::open(env.main, Proto::H2c).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = conn.clone();
        tasks.push(tokio::spawn(async move { (i, c.get(&format!("/delay/200?i={i}"), &[]).await) }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.status, 200, "stream {i}");
        assert_eq!(r.json()["path"], format!("/delay/200?i={i}"));
    }
    assert_eq!(stat(&env.proxy, "http.main.downstream_cx_total"), 1);
    assert_eq!(stat(&env.proxy, "http.main.downstream_rq_http2_total"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_follows_cluster_options() {
    let env = setup(&[]);
    for proto in PROTOS {
        let mut conn = Conn::open(env.main, proto).await;
        // explicit_http_config.http2_protocol_options: HTTP/2 to an h2c-only backend.
        let r = conn.get("/", &[("host", "h2.test")]).await;
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(r.json()["version"], "HTTP/2.0", "{proto:?}");
        // use_downstream_protocol_config: the downstream's protocol.
        let r = conn.get("/", &[("host", "ds.test")]).await;
        assert_eq!(r.status, 200, "{proto:?}");
        let want = if proto == Proto::H1 { "HTTP/1.1" } else { "HTTP/2.0" };
        assert_eq!(r.json()["version"], want, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_multiplexes_and_honours_max_requests_per_connection() {
    let env = setup(&["--concurrency", "1"]);
    // 200 concurrent requests over 4 downstream h2c connections.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Conn::open(env.main, Proto::H2c).await);
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = conns[i % 4].clone();
        tasks.push(tokio::spawn(async move { c.get("/delay/300", &[("host", "mux.test")]).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let cx = stat(&env.proxy, "cluster.h2_mux.upstream_cx_total");
    assert_eq!(stat(&env.proxy, "cluster.h2_mux.upstream_rq_total"), 200);
    assert!((1..=4).contains(&cx), "200 concurrent requests used {cx} upstream h2 connections");

    // max_requests_per_connection: 10 -> 30 sequential requests need at least 3 connections.
    let mut c = Conn::open(env.main, Proto::H1).await;
    for _ in 0..30 {
        assert_eq!(c.get("/", &[("host", "maxreq.test")]).await.status, 200);
    }
    let cx = stat(&env.proxy, "cluster.h2_max_requests.upstream_cx_total");
    assert!(cx >= 3, "30 requests with max_requests_per_connection 10 used {cx} connection(s)");
}

/// Bytes to stream through the proxy (`PINION_TEST_LARGE_BODY_MIB` overrides 1 GiB).
fn large_body_bytes() -> u64 {
    let mib = std::env::var("PINION_TEST_LARGE_BODY_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024u64);
    mib << 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_body_passes_with_bounded_proxy_memory() {
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let env = setup(&["--concurrency", "1"]);
    let pid = env.proxy.pid().expect("pid");
    let total = large_body_bytes();
    for proto in PROTOS {
        let started = Instant::now();
        let mut conn = Conn::open(env.main, proto).await;
        let chunks = total / CHUNK.len() as u64;
        let stream = futures_util::stream::iter(0..chunks)
            .map(|_| Ok::<_, pinion_testkit::BoxError>(Frame::data(Bytes::from_static(&CHUNK))));
        let req = Request::post("/echo")
            .header("content-length", total.to_string())
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
        let req = match &conn {
            Conn::H2(_) => {
                let (mut p, b) = req.into_parts();
                p.uri = "http://example.com/echo".parse().unwrap();
                p.version = http::Version::HTTP_2;
                Request::from_parts(p, b)
            }
            Conn::H1(_) => req,
        };
        let resp = match &mut conn {
            Conn::H1(tx) => {
                let mut req = req;
                req.headers_mut().insert("host", "example.com".parse().unwrap());
                tx.send_request(req).await.unwrap()
            }
            Conn::H2(tx) => tx.send_request(req).await.unwrap(),
        };
        assert_eq!(resp.status(), 200, "{proto:?}");
        let mut body = resp.into_body();
        let mut received = 0u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame()).await.expect("body in time") {
            if let Some(d) = frame.expect("body frame").data_ref() {
                assert!(d.iter().all(|&b| b == b'x'));
                received += d.len() as u64;
            }
        }
        assert_eq!(received, total, "{proto:?}");
        let hwm_mib = vm_hwm_kib(pid) / 1024;
        println!(
            "{proto:?}: {} MiB echoed through the proxy in {:?}; proxy VmHWM {hwm_mib} MiB",
            total >> 20,
            started.elapsed()
        );
        assert!(hwm_mib < 200, "{proto:?}: proxy peak RSS {hwm_mib} MiB streaming {} MiB", total >> 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_grpc_pass_through() {
    let env = setup(&[]);
    let mut conn = Conn::open(env.main, Proto::H2c).await;
    let r = conn.get("/trailers", &[("host", "h2.test")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"ok");
    let t = r.trailers.expect("trailers forwarded");
    assert_eq!(t.get("x-trailer").map(|v| v.to_str().unwrap()), Some("yes"));

    let unary = grpc_unary(&env.main.to_string()).await.unwrap();
    assert_eq!(unary.code, tonic::Code::Ok, "{unary:?}");
    assert_eq!(unary.echoed_path.as_deref(), Some("/grpc-unary-probe"));
    assert_eq!(unary.echoed_header.as_deref(), Some("hello"));
    let bidi = grpc_bidi_echo(&env.main.to_string(), 5).await.unwrap();
    assert!(bidi.echoed_all(5), "{bidi:?}");
}

// ---------------------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_403_without_upgrade_config() {
    let env = setup(&[]);
    let stream = connect(env.main).await;
    let (mut ws, resp) =
        tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(format!("ws://{}/ws", env.main), stream))
            .await
            .expect("handshake in time")
            .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        let msg = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await.unwrap();
        let got = tokio::time::timeout(IO_TIMEOUT, ws.next()).await.expect("echo in time").expect("message").unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), msg);
    }
    let _ = ws.close(None).await;

    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        env.no_upgrade
    );
    let r = raw_request(env.no_upgrade, req.as_bytes()).await.expect("response");
    assert_eq!(r.status, 403);
}

// ---------------------------------------------------------------------------------------
// Request headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let env = setup(&[]);
    let r = get(
        env.main,
        "/hop",
        &[
            ("Connection", "keep-alive, x-named-in-connection"),
            ("x-named-in-connection", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "gzip"),
            ("x-kept", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let d = r.json();
    for h in ["connection", "keep-alive", "proxy-connection", "te", "x-named-in-connection", "upgrade"] {
        assert_eq!(upstream_header(&d, h), None, "{h} must not be forwarded: {d}");
    }
    assert_eq!(upstream_header(&d, "x-kept").as_deref(), Some("1"));
    // `te: trailers` is the one TE value that is forwarded.
    let d = get(env.main, "/hop", &[("TE", "trailers")]).await.json();
    assert_eq!(upstream_header(&d, "te").as_deref(), Some("trailers"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_follow_hcm_options() {
    let env = setup(&[]);
    let xff = |addr, hdrs: &'static [(&'static str, &'static str)]| async move {
        let d = get(addr, "/xff", hdrs).await.json();
        (upstream_header(&d, "x-forwarded-for"), upstream_header(&d, "x-forwarded-proto"), d)
    };
    // use_remote_address: false (default): XFF untouched, x-forwarded-proto set.
    let (f, p, _) = xff(env.main, &[]).await;
    assert_eq!((f.as_deref(), p.as_deref()), (None, Some("http")));
    let (f, _, _) = xff(env.main, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(f.as_deref(), Some("203.0.113.9"));
    // use_remote_address: true: the peer is appended; for a loopback peer Envoy appends the
    // host's own address instead.
    let me = host_address();
    let (f, p, d) = xff(env.remote, &[]).await;
    assert_eq!((f.as_deref(), p.as_deref()), (Some(me.as_str()), Some("http")));
    // Envoy 1.40 without internal_address_config counts no address as internal, loopback
    // included: no x-envoy-internal, and the peer is the external address.
    assert_eq!(upstream_header(&d, "x-envoy-internal"), None, "{d}");
    assert_eq!(upstream_header(&d, "x-envoy-external-address").as_deref(), Some("127.0.0.1"), "{d}");
    let (f, _, d) = xff(env.remote, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(f, Some(format!("203.0.113.9,{me}")));
    assert_eq!(upstream_header(&d, "x-envoy-internal"), None, "more than one XFF hop is external: {d}");
    assert_eq!(upstream_header(&d, "x-envoy-external-address").as_deref(), Some("127.0.0.1"), "{d}");
    // x-forwarded-proto from the client is overwritten at the edge.
    let (_, p, _) = xff(env.remote, &[("x-forwarded-proto", "https")]).await;
    assert_eq!(p.as_deref(), Some("http"));
    // xff_num_trusted_hops: 1: the client is the address before the trusted hop.
    let (f, _, d) = xff(env.trusted_hop, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(f, Some(format!("203.0.113.9,{me}")));
    assert_eq!(upstream_header(&d, "x-envoy-external-address").as_deref(), Some("203.0.113.9"), "{d}");
    // skip_xff_append: nothing appended.
    let (f, _, _) = xff(env.skip_xff, &[]).await;
    assert_eq!(f, None);
    let (f, _, _) = xff(env.skip_xff, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(f.as_deref(), Some("203.0.113.9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_generated_kept_or_regenerated() {
    let env = setup(&[]);
    let rid = |addr, hdrs: &'static [(&'static str, &'static str)]| async move {
        let d = get(addr, "/rid", hdrs).await.json();
        upstream_header(&d, "x-request-id").unwrap_or_default()
    };
    // Generated when missing.
    let a = rid(env.main, &[]).await;
    let b = rid(env.main, &[]).await;
    assert!(is_uuid(&a) && is_uuid(&b) && a != b, "{a} {b}");
    // Kept when present (use_remote_address: false).
    assert_eq!(rid(env.main, &[("x-request-id", "keep-me")]).await, "keep-me");
    // use_remote_address: every request is external (Envoy 1.40's default internal address
    // config), so a client's id is replaced.
    let edge = rid(env.remote, &[("x-request-id", "keep-me")]).await;
    assert!(is_uuid(&edge), "edge request id must be regenerated, got {edge}");
    // An external request (XFF from elsewhere) gets a fresh id...
    let ext = rid(env.remote, &[("x-request-id", "keep-me"), ("x-forwarded-for", "203.0.113.9")]).await;
    assert!(is_uuid(&ext), "external request id must be regenerated, got {ext}");
    // ...unless preserve_external_request_id.
    let kept = rid(env.preserve_id, &[("x-request-id", "keep-me"), ("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(kept, "keep-me");
}

// ---------------------------------------------------------------------------------------
// Clusters and local replies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_cluster_and_local_replies() {
    let env = setup(&[]);
    for proto in PROTOS {
        let mut conn = Conn::open(env.main, proto).await;
        // STRICT_DNS `localhost` with V4_ONLY.
        let r = conn.get("/dns", &[("host", "dns.test")]).await;
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(r.json()["backend"], "http1");
        // Connect failure: 503 with Envoy's body and the UF details.
        let r = conn.get("/", &[("host", "refused.test")]).await;
        assert_eq!(r.status, 503, "{proto:?}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.starts_with("upstream connect error or disconnect/reset before headers"), "{body}");
        // No route: 404; unknown cluster: 503.
        assert_eq!(conn.get("/elsewhere", &[("host", "noroute.test")]).await.status, 404, "{proto:?}");
        assert_eq!(conn.get("/", &[("host", "nocluster.test")]).await.status, 503, "{proto:?}");
    }
    assert_eq!(stat(&env.proxy, "http.main.no_route"), 2);
    assert_eq!(stat(&env.proxy, "http.main.no_cluster"), 2);
    assert!(stat(&env.proxy, "cluster.refused.upstream_cx_connect_fail") >= 2);
    assert!(env.h1.hit_count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_relays_both_ways() {
    let env = setup(&[]);
    let mut s = connect(env.tcp).await;
    let mut buf = vec![0u8; 5];
    for msg in [&b"hello"[..], b"world"] {
        s.write_all(msg).await.unwrap();
        tokio::time::timeout(IO_TIMEOUT, tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(&buf[..], msg);
    }
    s.shutdown().await.unwrap();
    assert!(closed_within(&mut s, IO_TIMEOUT).await, "proxy must close after the echo server does");
    assert_eq!(stat(&env.proxy, "tcp.tcp.downstream_cx_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_use_default_and_custom_formats() {
    let env = setup(&[]);
    let r = get(env.main, "/logged?q=1", &[("x-log-tag", "tag-1"), ("user-agent", "pinion-test")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(env.main, "/x", &[("host", "noroute.test")]).await.status, 404);
    let upstream = env.h1.addr.to_string();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let default = wait_for_async(Duration::from_secs(5), "default access log lines", || {
        let s = read(&env.default_log);
        (s.lines().count() >= 2).then_some(s)
    })
    .await;
    // [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    // %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    // "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
    let line = default.lines().find(|l| l.contains("/logged")).expect("line for /logged");
    let re = regex::Regex::new(&format!(
        r#"^\[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\] "GET /logged\?q=1 HTTP/1\.1" 200 - 0 {} \d+ \d+ "-" "pinion-test" "[0-9a-f-]{{36}}" "example\.com" "{}"$"#,
        r.body.len(),
        regex::escape(&upstream)
    ))
    .unwrap();
    assert!(re.is_match(line), "default format line: {line}");
    let line = default.lines().find(|l| l.contains(" 404 ")).expect("404 line");
    assert!(line.contains("\"GET /x HTTP/1.1\" 404 NR 0 0 "), "{line}");
    assert!(line.ends_with("\"noroute.test\" \"-\""), "{line}");

    let custom = wait_for_async(Duration::from_secs(5), "custom access log lines", || {
        let s = read(&env.custom_log);
        (s.lines().count() >= 2).then_some(s)
    })
    .await;
    let re = regex::Regex::new(&format!(r"^CUSTOM GET tag-1 200 \d+ {}$", regex::escape(&upstream))).unwrap();
    assert!(custom.lines().any(|l| re.is_match(l)), "custom format:\n{custom}");
    assert!(custom.lines().any(|l| l == "CUSTOM GET - 404 0 -" || l.starts_with("CUSTOM GET - 404 ")), "{custom}");
}
