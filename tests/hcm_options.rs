//! HTTP connection manager options of the `pinion` binary, as Envoy applies them (every
//! expectation here was checked against Envoy 1.40 with `PINION_TESTS_AGAINST=envoy`):
//! path normalization, escaped slashes, header limits, idle timeout, underscores, HTTP/1.0,
//! `server_name`, `stream_idle_timeout`, `request_timeout`, the route `timeout`, and Content-Length together with
//! Transfer-Encoding.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pinion_testkit::{free_port, spawn_http_backend, Backend, BackendKind, ProxyProcess};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};

/// The listeners, one per option set.
#[derive(Clone, Copy)]
enum L {
    Default,
    Normalize,
    EscapedReject,
    EscapedUnescape,
    Limits,
    Idle,
    UnderscoreReject,
    UnderscoreDrop,
    Http10,
    StreamIdle,
    RequestTimeout,
    RouteTimeout,
}

const ALL: [L; 12] = [
    L::Default,
    L::Normalize,
    L::EscapedReject,
    L::EscapedUnescape,
    L::Limits,
    L::Idle,
    L::UnderscoreReject,
    L::UnderscoreDrop,
    L::Http10,
    L::StreamIdle,
    L::RequestTimeout,
    L::RouteTimeout,
];

fn options(l: L) -> Value {
    match l {
        L::Default => json!({}),
        L::Normalize => json!({ "normalize_path": true, "merge_slashes": true }),
        L::EscapedReject => json!({ "path_with_escaped_slashes_action": "REJECT_REQUEST" }),
        L::EscapedUnescape => json!({ "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD" }),
        L::Limits => {
            json!({ "max_request_headers_kb": 2, "common_http_protocol_options": { "max_headers_count": 10 } })
        }
        // A short drain_timeout: Envoy closes an idle HTTP/1 connection only after draining it.
        L::Idle => json!({ "common_http_protocol_options": { "idle_timeout": "0.5s" }, "drain_timeout": "0.1s" }),
        L::UnderscoreReject => {
            json!({ "common_http_protocol_options": { "headers_with_underscores_action": "REJECT_REQUEST" } })
        }
        L::UnderscoreDrop => {
            json!({ "common_http_protocol_options": { "headers_with_underscores_action": "DROP_HEADER" } })
        }
        L::Http10 => json!({ "http_protocol_options": { "accept_http_10": true }, "server_name": "pinion-custom" }),
        L::StreamIdle => json!({ "stream_idle_timeout": "0.5s" }),
        L::RequestTimeout => json!({ "request_timeout": "0.5s" }),
        L::RouteTimeout => json!({}),
    }
}

struct Env {
    proxy: ProxyProcess,
    ports: Vec<u16>,
    _backend: Backend,
}

impl Env {
    fn addr(&self, l: L) -> SocketAddr {
        local(self.ports[l as usize])
    }
}

fn setup() -> Env {
    let backend = spawn_http_backend(BackendKind::Http1);
    let admin = free_port();
    let ports: Vec<u16> = ALL.iter().map(|_| free_port()).collect();
    let listeners = ALL
        .iter()
        .map(|&l| {
            let name = format!("l{}", l as usize);
            let routes = match l {
                L::RouteTimeout => json!({
                    "name": "routes",
                    "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
                        { "match": { "prefix": "/" }, "route": { "cluster": "backend", "timeout": "0.3s" } }
                    ]}]
                }),
                _ => route_all_to("backend"),
            };
            listener(&name, ports[l as usize], hcm(&name, routes, options(l)))
        })
        .collect();
    let proxy = start(&bootstrap(admin, listeners, vec![cluster("backend", backend.addr, json!({}))]), &[]);
    Env { proxy, ports, _backend: backend }
}

fn upstream_path(r: &RawResponse) -> String {
    r.json()["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalization_and_escaped_slashes() {
    let env = setup();
    let n = env.addr(L::Normalize);
    assert_eq!(upstream_path(&get(n, "/a/../b", &[]).await), "/b");
    assert_eq!(upstream_path(&get(n, "/a//b///c?x=//", &[]).await), "/a/b/c?x=//");
    assert_eq!(upstream_path(&get(n, "/a/./b/../../c", &[]).await), "/c");
    // Without the options the path is forwarded as received.
    assert_eq!(upstream_path(&get(env.addr(L::Default), "/a//b", &[]).await), "/a//b");

    assert_eq!(get(env.addr(L::EscapedReject), "/a%2Fb", &[]).await.status, 400);
    assert_eq!(get(env.addr(L::EscapedReject), "/a%2fb", &[]).await.status, 400);
    assert_eq!(get(env.addr(L::EscapedReject), "/a/b", &[]).await.status, 200);
    assert_eq!(upstream_path(&get(env.addr(L::EscapedUnescape), "/a%2Fb%5Cc", &[]).await), "/a/b\\c");
    assert_eq!(upstream_path(&get(env.addr(L::Default), "/a%2Fb", &[]).await), "/a%2Fb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_size_and_count_limits_give_431() {
    let env = setup();
    let a = env.addr(L::Limits);
    let big = "a".repeat(3000);
    assert_eq!(get(a, "/", &[("x-big", &big)]).await.status, 431, "3 KB of headers over a 2 KB limit");
    assert_eq!(get(a, "/", &[("x-small", "a")]).await.status, 200);
    let names: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    assert_eq!(get(a, "/", &many).await.status, 431, "12 headers over a limit of 10");
    assert_eq!(get(a, "/", &many[..5]).await.status, 200);
    // The default limit (60 KiB) lets 3 KB through.
    assert_eq!(get(env.addr(L::Default), "/", &[("x-big", &big)]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let env = setup();
    let s = connect(env.addr(L::Idle)).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut r).await.expect("response").status, 200);
    let mut s = r.into_inner();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "idle connection still open after 5 s");
    assert_eq!(stat(&env.proxy, "http.l5.downstream_cx_idle_timeout"), 1);
    // Without idle_timeout set low, a connection stays open well past 0.5 s.
    let mut s = connect(env.addr(L::Default)).await;
    assert!(!closed_within(&mut s, Duration::from_millis(1500)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_underscores() {
    let env = setup();
    assert_eq!(get(env.addr(L::UnderscoreReject), "/", &[("x_foo", "1")]).await.status, 400);
    assert_eq!(get(env.addr(L::UnderscoreReject), "/", &[("x-foo", "1")]).await.status, 200);
    let d = get(env.addr(L::UnderscoreDrop), "/", &[("x_foo", "1"), ("x-bar", "2")]).await.json();
    assert!(d["headers"].get("x_foo").is_none(), "{d}");
    assert_eq!(d["headers"]["x-bar"], "2");
    let d = get(env.addr(L::Default), "/", &[("x_foo", "1")]).await.json();
    assert_eq!(d["headers"]["x_foo"], "1", "allowed by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_10_and_server_name() {
    let env = setup();
    let req = b"GET / HTTP/1.0\r\nHost: a\r\n\r\n";
    let r = raw_request(env.addr(L::Default), req).await.expect("response");
    assert_eq!(r.status, 426);
    assert_eq!(r.header("server"), Some("envoy"));
    let r = raw_request(env.addr(L::Http10), req).await.expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("pinion-custom"));
    assert_eq!(r.json()["method"], "GET");
}

/// A request whose body never comes: `Content-Length: 10` and nothing after the headers.
async fn stalled_body(addr: SocketAddr) -> (RawResponse, bool) {
    let s = connect(addr).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    let resp = read_response_within(&mut r, Duration::from_secs(5)).await.expect("a local reply");
    let mut s = r.into_inner();
    let closed = closed_within(&mut s, Duration::from_secs(3)).await;
    (resp, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout() {
    let env = setup();
    let a = env.addr(L::StreamIdle);
    // Request body stalls: 408, and the connection closes.
    let (r, closed) = stalled_body(a).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (408, "stream timeout"));
    assert!(closed, "connection must close after a 408");
    // Upstream stalls: 504.
    let s = connect(a).await;
    let mut rd = BufReader::new(s);
    rd.get_mut().write_all(b"GET /delay/3000 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let r = read_response_within(&mut rd, Duration::from_secs(5)).await.expect("a local reply");
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (504, "stream timeout"));
    assert_eq!(stat(&env.proxy, "http.l9.downstream_rq_idle_timeout"), 2);
    assert_eq!(env.proxy.stat("cluster.backend.upstream_rq_active"), Some(0), "timed-out requests are not active");
    // A slow but active exchange is not idle.
    assert_eq!(get(a, "/delay/100", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout() {
    let env = setup();
    let a = env.addr(L::RequestTimeout);
    let (r, closed) = stalled_body(a).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (408, "request timeout"));
    assert!(closed, "connection must close after a 408");
    assert_eq!(stat(&env.proxy, "http.l10.downstream_rq_timeout"), 1);
    assert_eq!(env.proxy.stat("cluster.backend.upstream_rq_active"), Some(0), "a timed-out request is not active");
    // The timer stops once the whole request is received: a slow upstream is fine.
    assert_eq!(get(a, "/delay/1000", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_gives_504_and_ends_the_upstream_request() {
    let env = setup();
    let a = env.addr(L::RouteTimeout);
    let r = get(a, "/delay/2000", &[]).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (504, "upstream request timeout"));
    assert_eq!(env.proxy.stat("cluster.backend.upstream_rq_timeout"), Some(1));
    assert_eq!(env.proxy.stat("cluster.backend.upstream_rq_active"), Some(0), "a timed-out request is not active");
    assert_eq!(env.proxy.stat("cluster.backend.upstream_rq_504"), Some(1));
    // Within the timeout the request goes through.
    assert_eq!(get(a, "/delay/50", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_rejected() {
    let env = setup();
    let req =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = raw_request(env.addr(L::Default), req).await.expect("a response");
    assert_eq!(r.status, 400, "Envoy rejects Content-Length together with Transfer-Encoding");
    // The other order too.
    let req =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = raw_request(env.addr(L::Default), req).await.expect("a response");
    assert_eq!(r.status, 400, "Transfer-Encoding then Content-Length");
}
