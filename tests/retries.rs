//! Retries and per-try timeouts of the `pinion` binary against a backend that fails on
//! command (`pinion_testkit::flaky`): 5xx then success, resets, hangs past the per-try
//! timeout, request bodies replayed (and not, past the buffer limit), the retry limit,
//! rate-limited backoff from `retry-after`, the previous-hosts predicate, the route timeout
//! over all attempts, the per-try idle timeout on a stalled body, the retry headers (honoured
//! from a route's header mutations, stripped from clients), gRPC conditions; over HTTP/1.1
//! and h2c downstream, HTTP/1.1 and HTTP/2 upstream. Every expectation was checked against
//! Envoy 1.40 with `PINION_TESTS_AGAINST=envoy`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use pinion_testkit::{free_port, spawn_flaky_backend, FlakyBackend, ProxyProcess};
use serde_json::{json, Value};

/// Routes under test, by prefix; the flaky backend fails per `x-fail` (see its module).
fn routes(cluster: &str) -> Value {
    // A route to `cluster` with a retry policy and `extra` RouteAction fields.
    let r = |prefix: &str, policy: Value, extra: Value| json!({ "match": { "prefix": prefix }, "route": merged(json!({ "cluster": cluster, "retry_policy": policy }), extra) });
    json!({
        "name": "routes",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "include_request_attempt_count": true,
            "include_attempt_count_in_response": true,
            "routes": [
                r("/5xx/", json!({ "retry_on": "5xx", "num_retries": 2 }), json!({})),
                r("/reset/", json!({ "retry_on": "reset", "num_retries": 2 }), json!({})),
                r("/pertry/", json!({ "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s" }), json!({ "timeout": "4s" })),
                r("/global/", json!({ "retry_on": "5xx", "num_retries": 5, "per_try_timeout": "0.4s" }), json!({ "timeout": "0.6s" })),
                r("/idle/", json!({ "retry_on": "5xx", "num_retries": 1, "per_try_idle_timeout": "0.3s" }), json!({})),
                r("/ratelimited/", json!({
                    "retry_on": "5xx", "num_retries": 1,
                    "rate_limited_retry_back_off": { "reset_headers": [{ "name": "retry-after" }], "max_interval": "5s" }
                }), json!({})),
                merged(r("/small/", json!({ "retry_on": "5xx", "num_retries": 1 }), json!({})), json!({ "per_request_buffer_limit_bytes": 16 })),
                r("/grpc/", json!({ "retry_on": "unavailable,cancelled", "num_retries": 1 }), json!({})),
                r("/codes/", json!({ "retry_on": "retriable-status-codes,retriable-headers", "num_retries": 1,
                    "retriable_status_codes": [418], "retriable_headers": [{ "name": "x-retry-me" }] }), json!({})),
                {
                    "match": { "prefix": "/route-header/" },
                    "request_headers_to_add": [{ "header": { "key": "x-envoy-retry-on", "value": "5xx" } }],
                    "route": { "cluster": cluster }
                },
                { "match": { "prefix": "/" }, "route": { "cluster": cluster } }
            ]
        }]
    })
}

struct Env {
    proxy: ProxyProcess,
    h1: std::net::SocketAddr,
    backend: FlakyBackend,
}

/// A proxy with one listener whose routes send to the flaky backend over `upstream_h2` or
/// HTTP/1.1.
fn setup(upstream_h2: bool) -> Env {
    let backend = spawn_flaky_backend();
    let admin = free_port();
    let port = free_port();
    let extra = if upstream_h2 { h2_upstream(json!({})) } else { json!({}) };
    let boot = bootstrap(
        admin,
        vec![listener("l", port, hcm("l", routes("flaky"), json!({})))],
        vec![cluster("flaky", backend.addr, extra)],
    );
    Env { proxy: start(&boot, &[]), h1: local(port), backend }
}

fn req(path: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Request<Body> {
    let mut b = Request::builder().method(if body.is_empty() { "GET" } else { "POST" }).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(Bytes::from_static(body))).expect("request")
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("<absent>")
}

/// The backend's attempts per path: one path per (test, protocol) so runs do not mix.
fn path(base: &str, proto: Proto, upstream_h2: bool) -> String {
    format!("{base}{proto:?}-{}", if upstream_h2 { "h2" } else { "h1" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_resets_limits_and_bodies() {
    for upstream_h2 in [false, true] {
        let env = setup(upstream_h2);
        for proto in PROTOS {
            let mut c = Conn::open(env.h1, proto).await;
            // Two 503s, then 200: three attempts, each told its number.
            let p = path("/5xx/two-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "2:status=503")], b"")).await.unwrap();
            assert_eq!(r.status, 200, "{p}");
            assert_eq!(header(&r, "x-envoy-attempt-count"), "3");
            assert_eq!(r.json()["attempt"], 3);
            let counts: Vec<String> =
                env.backend.seen(&p).iter().map(|s| s.headers["x-envoy-attempt-count"].clone()).collect();
            assert_eq!(counts, ["1", "2", "3"]);
            // The route's retry policy header controls never reach the upstream.
            assert!(env.backend.seen(&p).iter().all(|s| !s.headers.contains_key("x-envoy-retry-on")));

            // Out of retries: the last 503 goes downstream as it came.
            let p = path("/5xx/always-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "9:status=503")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), header(&r, "x-envoy-attempt-count")), (503, "3"));
            assert_eq!(&r.body[..], b"failed on purpose\n");
            assert_eq!(env.backend.attempts(&p), 3);

            // Not a retriable status.
            let p = path("/5xx/404-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:status=404")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (404, 1));

            // A body is replayed whole on every attempt.
            let p = path("/5xx/body-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:status=500")], b"a request body to replay")).await.unwrap();
            assert_eq!(r.status, 200);
            let bodies: Vec<Bytes> = env.backend.seen(&p).into_iter().map(|s| s.body).collect();
            assert_eq!(bodies, vec![Bytes::from_static(b"a request body to replay"); 2]);

            // Past `per_request_buffer_limit_bytes` (16) the request is not retried; at it, it is.
            let p = path("/small/over-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:status=503")], b"seventeen bytes!!")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (503, 1));
            let p = path("/small/at-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:status=503")], b"sixteen bytes!!!")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));

            // Resets: retried with `reset`; out of retries, Envoy's reset reply (retried).
            let p = path("/reset/once-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:reset")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));
            let p = path("/reset/always-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "9:reset")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (503, 3));
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                body.starts_with(
                    "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
                ),
                "{body}"
            );
            assert_eq!(header(&r, "x-envoy-attempt-count"), "3");

            // Retriable status codes and headers.
            let p = path("/codes/418-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:status=418")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));
            let p = path("/codes/hdr-", proto, upstream_h2);
            let r =
                c.send(req(&p, &[("x-fail", "1:status=200"), ("x-fail-headers", "x-retry-me=1")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));
            assert_eq!(r.json()["attempt"], 2);

            // gRPC conditions read `grpc-status` from the response headers.
            let p = path("/grpc/", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:grpc=14")], b"")).await.unwrap();
            assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));
            let p = path("/grpc/internal-", proto, upstream_h2);
            let r = c.send(req(&p, &[("x-fail", "1:grpc=13")], b"")).await.unwrap();
            assert_eq!(header(&r, "grpc-status"), "13");
            assert_eq!(env.backend.attempts(&p), 1);
        }
        let s = |n: &str| stat(&env.proxy, &format!("cluster.flaky.{n}"));
        // Per protocol: 2 + 2 (5xx) + 1 (body) + 1 (small) + 1 + 2 (reset) + 1 + 1 (codes) + 1 (grpc) = 12.
        assert_eq!(s("upstream_rq_retry"), 24);
        assert_eq!(s("upstream_rq_retry_backoff_exponential"), 24);
        // two-, body-, at-, once-, 418-, hdr-, grpc (and the 404 and grpc=13 were never retried).
        assert_eq!(s("upstream_rq_retry_success"), 14);
        assert_eq!(s("upstream_rq_retry_limit_exceeded"), 4);
        assert_eq!(s("retry_or_shadow_abandoned"), 2);
        // Retried responses count under `retry.` only: 503 x (2 + 2 + 1) per protocol.
        assert_eq!(s("retry.upstream_rq_503"), 10);
        assert_eq!(s("retry.upstream_rq_500"), 2);
        assert_eq!(s("retry.upstream_rq_418"), 2);
        assert_eq!(s("retry.upstream_rq_200"), 4);
        assert_eq!(s("upstream_rq_503"), 6, "final 503s: always-, over-, reset-always (x2 protocols)");
        assert_eq!(s("upstream_rq_retry_overflow"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_route_timeout_and_idle() {
    let env = setup(false);
    for proto in PROTOS {
        let mut c = Conn::open(env.h1, proto).await;
        // The first attempt hangs past the 0.3 s per-try timeout; the retry answers.
        let p = path("/pertry/once-", proto, false);
        let t = Instant::now();
        let r = c.send(req(&p, &[("x-fail", "1:hang")], b"")).await.unwrap();
        assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));
        assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // The expected timeout each attempt is told is the per-try one.
        assert!(env.backend.seen(&p).iter().all(|s| s.headers["x-envoy-expected-rq-timeout-ms"] == "300"));
        // Both hang: 504 after two per-try timeouts.
        let p = path("/pertry/always-", proto, false);
        let r = c.send(req(&p, &[("x-fail", "9:hang")], b"")).await.unwrap();
        assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (504, 2));
        assert_eq!(&r.body[..], b"upstream request timeout");
        assert_eq!(header(&r, "x-envoy-attempt-count"), "2");
        // The route timeout (0.6 s) bounds all attempts together: the second one is cut short.
        let p = path("/global/", proto, false);
        let t = Instant::now();
        let r = c.send(req(&p, &[("x-fail", "9:hang")], b"")).await.unwrap();
        assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (504, 2));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // A per-try idle timeout before the headers is retried like a per-try timeout.
        let p = path("/idle/hang-", proto, false);
        let r = c.send(req(&p, &[("x-fail", "1:hang")], b"")).await.unwrap();
        assert_eq!((r.status.as_u16(), env.backend.attempts(&p)), (200, 2));
        // ... and once the body streams, a stall resets the stream (no retry then).
        let p = path("/idle/stall-", proto, false);
        let res = c.send(req(&p, &[("x-fail", "1:stall")], b"")).await;
        assert!(res.is_err(), "a stalled body is cut: {res:?}");
    }
    let s = |n: &str| stat(&env.proxy, &format!("cluster.flaky.{n}"));
    // once- 1, always- 2, global- 1 per protocol.
    assert_eq!(s("upstream_rq_per_try_timeout"), 8);
    assert_eq!(s("upstream_rq_timeout"), 2, "the route timeout fired once per protocol");
    // idle: the hang, and the stall.
    assert_eq!(s("upstream_rq_per_try_idle_timeout"), 4);
    assert_eq!(s("upstream_rq_retry_limit_exceeded"), 2);
    assert_eq!(s("upstream_rq_504"), 4, "per-try exhaustion and the route timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_backoff_and_retry_headers() {
    let env = setup(false);
    let mut c = Conn::open(env.h1, Proto::H1).await;
    // `retry-after: 1` makes the retry wait between 1 and 1.5 s.
    let t = Instant::now();
    let r = c
        .send(req("/ratelimited/x", &[("x-fail", "1:status=503"), ("x-fail-headers", "retry-after=1")], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(1000), "{:?}", t.elapsed());
    assert_eq!(stat(&env.proxy, "cluster.flaky.upstream_rq_retry_backoff_ratelimited"), 1);

    // A client's x-envoy-retry-on is stripped by the HCM (external request): no retry, and the
    // upstream never sees it.
    let r = c
        .send(req(
            "/plain/x",
            &[("x-fail", "1:status=503"), ("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")],
            b"",
        ))
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), env.backend.attempts("/plain/x")), (503, 1));
    let seen = &env.backend.seen("/plain/x")[0].headers;
    assert!(!seen.contains_key("x-envoy-retry-on") && !seen.contains_key("x-envoy-max-retries"), "{seen:?}");
    // A route's request_headers_to_add can ask for retries (consumed, not forwarded).
    let r = c.send(req("/route-header/x", &[("x-fail", "1:status=503")], b"")).await.unwrap();
    assert_eq!((r.status.as_u16(), env.backend.attempts("/route-header/x")), (200, 2));
    assert!(env.backend.seen("/route-header/x").iter().all(|s| !s.headers.contains_key("x-envoy-retry-on")));
    // Without a retry policy there is no attempt count on retries, only the first.
    assert_eq!(header(&r, "x-envoy-attempt-count"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_hosts_steers_retries_away_from_a_dead_host() {
    let backend = spawn_flaky_backend();
    // A port nothing listens on.
    let dead = local(free_port());
    let admin = free_port();
    let port = free_port();
    let endpoints = |addrs: &[std::net::SocketAddr]| -> Value {
        json!({ "cluster_name": "two", "endpoints": [{ "lb_endpoints": addrs.iter().map(|a| json!({ "endpoint": { "address": {
            "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } } })).collect::<Vec<_>>() }] })
    };
    let policy = json!({
        "retry_on": "connect-failure", "num_retries": 1, "host_selection_retry_max_attempts": 30,
        "retry_host_predicate": [{ "name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" } }]
    });
    let routes = json!({ "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "two", "retry_policy": policy } }
    ]}]});
    let two = json!({ "name": "two", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "RANDOM",
        "load_assignment": endpoints(&[dead, backend.addr]) });
    let proxy = start(&bootstrap(admin, vec![listener("l", port, hcm("l", routes, json!({})))], vec![two]), &[]);
    let mut c = Conn::open(local(port), Proto::H1).await;
    for i in 0..20 {
        // A retry after the dead host never picks it again (1 in 2^31 it would).
        let r = c.get(&format!("/n{i}"), &[]).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let retries = stat(&proxy, "cluster.two.upstream_rq_retry");
    assert!(retries > 0 && retries <= 20, "{retries}");
    assert_eq!(stat(&proxy, "cluster.two.upstream_rq_retry_limit_exceeded"), 0);
}
