//! Stream and connection durations of the `pinion` binary against real backends that hang
//! or stall, as Envoy applies them (each expectation checked against Envoy 1.40 with
//! `PINION_TESTS_AGAINST=envoy`): the HCM's `max_stream_duration` and a route's (with the
//! `grpc-timeout` header), during the upstream exchange, a fault filter's delay, a request
//! body that never comes and a response body that stalls; `max_connection_duration` on
//! HTTP/1.1 and h2c.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pinion_testkit::{
    free_port, spawn_flaky_backend, spawn_http_backend, Backend, BackendKind, FlakyBackend, ProxyProcess,
};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};

const BODY: &str = "downstream duration timeout";

struct Env {
    proxy: ProxyProcess,
    /// HCM limit 0.6 s; routes `/route/` (0.2 s), `/off/` (0), `/new/` (timeout 0.1 s,
    /// limit 2 s), `/grpc/` (grpc_timeout_header_max 0.3 s) to the flaky backend or
    /// `/delay/<ms>`.
    durations: SocketAddr,
    /// HCM limit 0.3 s in front of a fault filter delaying every request 2 s.
    fault: SocketAddr,
    /// `max_connection_duration` 0.3 s, `drain_timeout` 0.2 s.
    mcd: SocketAddr,
    flaky: FlakyBackend,
    _slow: Backend,
}

fn route(prefix: &str, cluster: &str, extra: Value) -> Value {
    let mut r = json!({ "cluster": cluster });
    if let (Some(r), Value::Object(e)) = (r.as_object_mut(), extra) {
        r.extend(e);
    }
    json!({ "match": { "prefix": prefix }, "route": r })
}

fn setup() -> Env {
    let flaky = spawn_flaky_backend();
    let slow = spawn_http_backend(BackendKind::Http1);
    let admin = free_port();
    let (durations, fault, mcd) = (free_port(), free_port(), free_port());
    let routes = json!({ "name": "routes", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
        route("/route/", "flaky", json!({ "max_stream_duration": { "max_stream_duration": "0.2s" } })),
        route("/off/", "slow", json!({ "prefix_rewrite": "/", "max_stream_duration": { "max_stream_duration": "0s" } })),
        route("/new/", "slow", json!({ "prefix_rewrite": "/", "timeout": "0.1s",
            "max_stream_duration": { "max_stream_duration": "2s" } })),
        route("/grpc/", "flaky", json!({ "max_stream_duration": { "grpc_timeout_header_max": "0.3s" } })),
        route("/delay/", "slow", json!({})),
        route("/", "flaky", json!({})),
    ]}]});
    let fault_filter = json!({
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": { "fixed_delay": "2s", "percentage": { "numerator": 100 } }
        }
    });
    let listeners = vec![
        listener(
            "durations",
            durations,
            hcm("durations", routes, json!({ "common_http_protocol_options": { "max_stream_duration": "0.6s" } })),
        ),
        listener(
            "fault",
            fault,
            hcm(
                "fault",
                route_all_to("slow"),
                json!({
                    "common_http_protocol_options": { "max_stream_duration": "0.3s" },
                    "http_filters": [fault_filter, router_filter()],
                }),
            ),
        ),
        listener(
            "mcd",
            mcd,
            hcm(
                "mcd",
                route_all_to("slow"),
                json!({ "drain_timeout": "0.2s", "common_http_protocol_options": { "max_connection_duration": "0.3s" } }),
            ),
        ),
    ];
    let clusters = vec![cluster("flaky", flaky.addr, json!({})), cluster("slow", slow.addr, json!({}))];
    let proxy = start(&bootstrap(admin, listeners, clusters), &[]);
    Env { proxy, durations: local(durations), fault: local(fault), mcd: local(mcd), flaky, _slow: slow }
}

/// `GET path` with `headers`, timed.
async fn timed_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (RawResponse, Duration) {
    let t0 = Instant::now();
    let r = get(addr, path, headers).await;
    (r, t0.elapsed())
}

fn text(r: &RawResponse) -> (u16, String) {
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_duration_limits_end_hanging_exchanges() {
    let env = setup();
    let a = env.durations;
    // The HCM's limit: 504 once the request is complete, counted.
    let (r, took) = timed_get(a, "/hcm", &[("x-fail", "1:hang")]).await;
    assert_eq!(text(&r), (504, BODY.into()));
    assert!(took >= Duration::from_millis(590) && took < Duration::from_millis(3000), "{took:?}");
    assert_eq!(stat(&env.proxy, "http.durations.downstream_rq_max_duration_reached"), 1);
    assert_eq!(env.proxy.stat("cluster.flaky.upstream_rq_active"), Some(0), "the upstream request is reset");
    // A route's limit replaces it.
    let (r, took) = timed_get(a, "/route/x", &[("x-fail", "1:hang")]).await;
    assert_eq!(text(&r), (504, BODY.into()));
    assert!(took < Duration::from_millis(550), "the route's 0.2 s, not the HCM's 0.6 s: {took:?}");
    // Zero turns it off for the route.
    let (r, took) = timed_get(a, "/off/delay/900", &[]).await;
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(890), "{took:?}");
    // With a route limit the route timeout (0.1 s) is not used.
    assert_eq!(get(a, "/new/delay/300", &[]).await.status, 200);
    // Fast exchanges are untouched.
    assert_eq!(get(a, "/delay/10", &[]).await.status, 200);
    assert_eq!(stat(&env.proxy, "http.durations.downstream_rq_max_duration_reached"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_header_sets_and_is_rewritten_to_the_limit() {
    let env = setup();
    let grpc = [("content-type", "application/grpc"), ("grpc-timeout", "5S"), ("x-fail", "1:hang")];
    let (r, took) = timed_get(env.durations, "/grpc/capped", &grpc).await;
    // A gRPC request gets a trailers-only DEADLINE_EXCEEDED.
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("4"));
    assert_eq!(r.header("grpc-message"), Some(BODY));
    assert!(took < Duration::from_millis(550), "capped at 0.3 s: {took:?}");
    let seen = env.flaky.seen("/grpc/capped");
    assert_eq!(seen[0].headers.get("grpc-timeout").map(String::as_str), Some("300m"));
    // Shorter than the cap: the header's own value.
    let grpc = [("content-type", "application/grpc"), ("grpc-timeout", "100m"), ("x-fail", "1:hang")];
    let (_, took) = timed_get(env.durations, "/grpc/short", &grpc).await;
    assert!(took < Duration::from_millis(290), "{took:?}");
    assert_eq!(env.flaky.seen("/grpc/short")[0].headers.get("grpc-timeout").map(String::as_str), Some("100m"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_duration_limit_cuts_filters_request_and_response_bodies() {
    let env = setup();
    // A fault filter's delay (2 s) is cut by the HCM's 0.3 s.
    let (r, took) = timed_get(env.fault, "/delay/0", &[]).await;
    assert_eq!(text(&r), (504, BODY.into()));
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(stat(&env.proxy, "http.fault.downstream_rq_max_duration_reached"), 1);

    // A request body that never comes: 408, and the connection closes.
    let s = connect(env.durations).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"POST /route/body HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    let resp = read_response_within(&mut r, Duration::from_secs(5)).await.expect("a local reply");
    assert_eq!(text(&resp), (408, BODY.into()));
    let mut s = r.into_inner();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await, "connection must close after a 408");

    // A response body that stalls after its headers: the stream is reset (HTTP/1.1: the
    // connection closes before the body is complete).
    let s = connect(env.durations).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"GET /route/stall HTTP/1.1\r\nHost: a\r\nx-fail: 1:stall\r\n\r\n").await.unwrap();
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), read_response(&mut r)).await.expect("bounded");
    assert!(resp.is_none(), "the body must not complete: {resp:?}");
    assert!(t0.elapsed() < Duration::from_millis(1500), "cut at 0.2 s, not at the backend's 2 s");
    assert_eq!(stat(&env.proxy, "http.durations.downstream_rq_max_duration_reached"), 2);
    assert_eq!(stat(&env.proxy, "cluster.flaky.upstream_rq_rx_reset"), 0, "a reset of the proxy's own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_duration_drains_connections() {
    let env = setup();
    // A connection that never sent a request is closed at max_connection_duration itself.
    let t0 = Instant::now();
    let mut c = connect(env.mcd).await;
    assert!(closed_within(&mut c, Duration::from_secs(3)).await, "silent connection not closed");
    assert!(t0.elapsed() >= Duration::from_millis(250), "closed early: {:?}", t0.elapsed());
    // HTTP/1.1, idle after a request: closed after max_connection_duration + drain_timeout.
    let t0 = Instant::now();
    let s = connect(env.mcd).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"GET /delay/0 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut r).await.expect("response").status, 200);
    let mut c = r.into_inner();
    assert!(closed_within(&mut c, Duration::from_secs(3)).await, "idle HTTP/1.1 connection not closed");
    assert!(t0.elapsed() >= Duration::from_millis(450), "closed before the drain: {:?}", t0.elapsed());
    // HTTP/1.1, a request while draining: `Connection: close`, then the connection closes.
    let s = connect(env.mcd).await;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"GET /delay/0 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let first = read_response(&mut r).await.expect("response");
    assert_eq!((first.status, first.header("connection")), (200, None));
    tokio::time::sleep(Duration::from_millis(400)).await;
    r.get_mut().write_all(b"GET /delay/0 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let second = read_response(&mut r).await.expect("response while draining");
    assert_eq!((second.status, second.header("connection")), (200, Some("close")));
    let mut s = r.into_inner();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    // h2c: GOAWAY, then the connection ends.
    let mut conn = Conn::open(env.mcd, Proto::H2c).await;
    assert_eq!(conn.get("/delay/0", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(conn.send(http::Request::get("/delay/0").body(full("")).unwrap()).await.is_err(), "h2 still open");
    assert_eq!(stat(&env.proxy, "http.mcd.downstream_cx_max_duration_reached"), 4);
}
