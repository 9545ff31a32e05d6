//! Circuit breakers end to end (`Cluster.circuit_breakers`, route `priority`), with two
//! workers and a backend that holds requests open until the test releases them, so the
//! number of requests in flight, and every count, is exact:
//! - `max_requests` over 20 concurrent requests on 20 connections (spread over both
//!   workers): 5 answered, 15 refused at once with 503 `UO` and `x-envoy-overloaded`;
//! - `max_connections` and `max_pending_requests` on one worker's pool: requests wait for a
//!   connection, then overflow; waiting ones are served as connections free up;
//! - a pending request times out with the route timeout; per-host `max_connections`;
//! - `HIGH` routes use the `HIGH` thresholds; `max_connection_pools`; HTTP/2 upstream streams
//!   bounded by `max_requests`; `/clusters` and runtime overrides.
//!
//! Every number asserted here was first observed on Envoy 1.40 with the same config
//! (`PINION_TESTS_AGAINST=envoy` runs this file against it); the interop test
//! `circuit_breakers_differential` compares the two directly.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use pinion_testkit::{free_port, spawn_gate_backend, GateBackend, ProxyProcess};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// The local reply for a request a circuit breaker refused.
const OVERFLOW_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: overflow";

struct Env {
    proxy: ProxyProcess,
    addr: SocketAddr,
}

/// A proxy on two workers with `routes` (a virtual host's route list) and `clusters`.
fn start_proxy(routes: Value, clusters: Vec<Value>, extra: Value) -> Env {
    let port = free_port();
    let admin = free_port();
    let rc = json!({ "name": "routes", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] });
    let mut b: Value =
        serde_json::from_str(&bootstrap(admin, vec![listener("main", port, hcm("cb", rc, json!({})))], clusters))
            .expect("bootstrap json");
    if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
        b.extend(extra);
    }
    let proxy = start(&b.to_string(), &["--concurrency", "2"]);
    Env { proxy, addr: local(port) }
}

fn route(prefix: &str, action: Value) -> Value {
    json!({ "match": { "prefix": prefix }, "route": action })
}

fn breakers(thresholds: Value) -> Value {
    json!({ "circuit_breakers": { "thresholds": thresholds } })
}

fn stat_of(env: &Env, name: &str) -> u64 {
    stat(&env.proxy, name)
}

/// `(name, value)` for each listed stat of `cluster`, as one comparable string.
fn stats_of(env: &Env, cluster: &str, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{n}={}", stat_of(env, &format!("cluster.{cluster}.{n}")))).collect()
}

fn expect_stats(env: &Env, cluster: &str, want: &[(&str, u64)]) {
    let names: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    let want: Vec<String> = want.iter().map(|(n, v)| format!("{n}={v}")).collect();
    assert_eq!(stats_of(env, cluster, &names), want);
}

/// Send `n` concurrent GETs of `path`, each on its own HTTP/1.1 connection; returns the
/// handles (status, x-envoy-overloaded, body).
async fn h1_burst(addr: SocketAddr, path: &'static str, n: usize) -> Vec<tokio::task::JoinHandle<Resp>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut c = Conn::open(addr, Proto::H1).await;
        tasks.push(tokio::spawn(async move { c.get(path, &[]).await }));
    }
    tasks
}

/// Wait until `n` of `tasks` are done; returns their responses and the rest.
async fn finished(
    tasks: Vec<tokio::task::JoinHandle<Resp>>,
    n: usize,
) -> (Vec<Resp>, Vec<tokio::task::JoinHandle<Resp>>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tasks = tasks;
    loop {
        if tasks.iter().filter(|t| t.is_finished()).count() >= n {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "fewer than {n} responses within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (done, rest): (Vec<_>, Vec<_>) = tasks.drain(..).partition(|t| t.is_finished());
    let mut out = Vec::new();
    for t in done {
        out.push(t.await.expect("request task"));
    }
    (out, rest)
}

fn assert_overflow_reply(r: &Resp) {
    assert_eq!(r.status, 503);
    assert_eq!(r.headers.get("x-envoy-overloaded").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(r.headers.get("content-type").map(|v| v.to_str().unwrap()), Some("text/plain"));
    assert_eq!(r.body, Bytes::from(OVERFLOW_BODY));
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_refuses_the_excess_of_concurrent_requests_on_both_workers() {
    let gate = spawn_gate_backend();
    let limited = cluster(
        "limited",
        gate.addr,
        breakers(json!([{ "max_requests": 5, "track_remaining": true }, { "priority": "HIGH", "max_requests": 1 }])),
    );
    let env = blocking(|| start_proxy(json!([route("/", json!({ "cluster": "limited" }))]), vec![limited], json!({})));

    let tasks = h1_burst(env.addr, "/hold", 20).await;
    blocking(|| gate.wait_held(5, WAIT)).unwrap();
    let (refused, held) = finished(tasks, 15).await;
    assert_eq!((refused.len(), held.len()), (15, 5));
    refused.iter().for_each(assert_overflow_reply);
    assert_eq!(gate.arrived(), 5, "refused requests never reach the upstream");
    blocking(|| {
        expect_stats(
            &env,
            "limited",
            &[
                ("upstream_rq_active_overflow", 15),
                ("upstream_rq_pending_overflow", 0),
                ("upstream_rq_total", 5),
                ("upstream_rq_active", 5),
                ("circuit_breakers.default.rq_open", 1),
                ("circuit_breakers.default.remaining_rq", 0),
                ("circuit_breakers.default.rq_pending_open", 0),
                ("circuit_breakers.default.remaining_pending", 1024),
                ("circuit_breakers.high.rq_open", 0),
                ("upstream_rq_503", 15),
            ],
        )
    });
    assert!(env.proxy.stat("cluster.limited.circuit_breakers.high.remaining_rq").is_none(), "no track_remaining");

    gate.open();
    for t in held {
        assert_eq!(t.await.unwrap().status, 200);
    }
    blocking(|| {
        wait_for(WAIT, "active requests to end", || {
            (stat_of(&env, "cluster.limited.upstream_rq_active") == 0).then_some(())
        });
        expect_stats(
            &env,
            "limited",
            &[
                ("circuit_breakers.default.rq_open", 0),
                ("circuit_breakers.default.remaining_rq", 5),
                ("upstream_rq_200", 5),
                ("upstream_rq_503", 15),
                ("upstream_rq_completed", 20),
            ],
        );
        let (_, clusters) = env.proxy.admin_get("/clusters").unwrap();
        for line in [
            "limited::default_priority::max_connections::1024",
            "limited::default_priority::max_pending_requests::1024",
            "limited::default_priority::max_requests::5",
            "limited::default_priority::max_retries::3",
            "limited::high_priority::max_requests::1",
        ] {
            assert!(clusters.lines().any(|l| l == line), "{line} in\n{clusters}");
        }
        let host = gate.addr;
        assert!(clusters.lines().any(|l| l == format!("limited::{host}::rq_error::15")), "{clusters}");
        assert!(clusters.lines().any(|l| l == format!("limited::{host}::rq_total::5")), "{clusters}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_makes_requests_wait_and_max_pending_requests_bounds_them() {
    let gate = spawn_gate_backend();
    let limited = cluster(
        "limited",
        gate.addr,
        breakers(json!([{ "max_connections": 2, "max_pending_requests": 3, "track_remaining": true }])),
    );
    let env = blocking(|| start_proxy(json!([route("/", json!({ "cluster": "limited" }))]), vec![limited], json!({})));
    // One downstream h2c connection: every request on one worker, so on one pool.
    let conn = Conn::open(env.addr, Proto::H2c).await;
    let send = |path: &'static str| {
        let mut c = conn.clone();
        tokio::spawn(async move { c.get(path, &[]).await })
    };
    let mut tasks: Vec<_> = (0..2).map(|_| send("/hold")).collect();
    blocking(|| gate.wait_held(2, WAIT)).unwrap();
    // Both connections busy: 3 requests wait (each time the pool wants a connection it may
    // not open: upstream_cx_overflow), the next 5 overflow.
    tasks.extend((0..8).map(|_| send("/hold")));
    let (refused, waiting) = finished(tasks, 5).await;
    refused.iter().for_each(assert_overflow_reply);
    assert_eq!(waiting.len(), 5);
    blocking(|| {
        wait_for(WAIT, "3 pending requests", || {
            (stat_of(&env, "cluster.limited.upstream_rq_pending_active") == 3).then_some(())
        });
        expect_stats(
            &env,
            "limited",
            &[
                ("upstream_cx_total", 2),
                ("upstream_cx_overflow", 3),
                ("upstream_rq_pending_total", 5),
                ("upstream_rq_pending_overflow", 5),
                ("upstream_rq_active_overflow", 0),
                ("upstream_rq_total", 2),
                ("circuit_breakers.default.cx_open", 1),
                ("circuit_breakers.default.remaining_cx", 0),
                ("circuit_breakers.default.rq_pending_open", 1),
                ("circuit_breakers.default.remaining_pending", 0),
                ("circuit_breakers.default.rq_open", 0),
            ],
        );
    });
    // Each finished request frees its connection for the oldest waiting one; while others
    // still wait, the pool asks for a connection again and counts upstream_cx_overflow: once
    // per pass over the freed connections, and whether the two held requests end in one
    // pass or two is timing (Envoy too: 4 or 5).
    gate.open();
    for t in waiting {
        assert_eq!(t.await.unwrap().status, 200);
    }
    blocking(|| {
        let cx_overflow = stat_of(&env, "cluster.limited.upstream_cx_overflow");
        assert!((4..=5).contains(&cx_overflow), "upstream_cx_overflow {cx_overflow}");
        expect_stats(
            &env,
            "limited",
            &[
                ("upstream_cx_total", 2),
                ("upstream_rq_total", 5),
                ("upstream_rq_pending_active", 0),
                ("circuit_breakers.default.rq_pending_open", 0),
                ("circuit_breakers.default.remaining_pending", 3),
                ("circuit_breakers.default.cx_open", 1),
            ],
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_request_times_out_and_per_host_max_connections_applies() {
    let gate = spawn_gate_backend();
    let mut one = cluster("one", gate.addr, json!({}));
    one["circuit_breakers"] = json!({ "per_host_thresholds": [{ "max_connections": 1 }] });
    let routes = json!([
        route("/quick", json!({ "cluster": "one", "timeout": "0.5s" })),
        route("/", json!({ "cluster": "one" })),
    ]);
    let env = blocking(|| start_proxy(routes, vec![one], json!({})));
    let conn = Conn::open(env.addr, Proto::H2c).await;
    let mut c = conn.clone();
    let first = tokio::spawn(async move { c.get("/hold", &[]).await });
    blocking(|| gate.wait_held(1, WAIT)).unwrap();
    let started = std::time::Instant::now();
    let r = conn.clone().get("/quick/hold", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, Bytes::from("upstream request timeout"));
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    blocking(|| {
        expect_stats(
            &env,
            "one",
            &[
                ("upstream_cx_total", 1),
                ("upstream_cx_overflow", 1),
                ("upstream_rq_pending_total", 2),
                ("upstream_rq_pending_active", 0),
                ("upstream_rq_cancelled", 1),
                ("upstream_rq_timeout", 1),
                ("upstream_rq_total", 1),
                ("upstream_rq_504", 1),
            ],
        )
    });
    gate.open();
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_priority_routes_use_the_high_thresholds() {
    let gate = spawn_gate_backend();
    let svc = cluster("svc", gate.addr, breakers(json!([{ "priority": "HIGH", "max_requests": 1 }])));
    let routes = json!([
        route("/high", json!({ "cluster": "svc", "priority": "HIGH" })),
        route("/", json!({ "cluster": "svc" })),
    ]);
    let env = blocking(|| start_proxy(routes, vec![svc], json!({})));
    let conn = Conn::open(env.addr, Proto::H2c).await;
    let mut c = conn.clone();
    let held = tokio::spawn(async move { c.get("/high/hold", &[]).await });
    blocking(|| gate.wait_held(1, WAIT)).unwrap();
    assert_overflow_reply(&conn.clone().get("/high/again", &[]).await);
    assert_eq!(conn.clone().get("/default", &[]).await.status, 200, "DEFAULT has its own limits");
    blocking(|| {
        expect_stats(
            &env,
            "svc",
            &[
                ("circuit_breakers.high.rq_open", 1),
                ("circuit_breakers.default.rq_open", 0),
                ("upstream_rq_active_overflow", 1),
            ],
        )
    });
    gate.open();
    assert_eq!(held.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connection_pools_answers_no_healthy_upstream() {
    let (a, b) = (spawn_gate_backend(), spawn_gate_backend());
    let mut two = cluster("two", a.addr, breakers(json!([{ "max_connection_pools": 1, "track_remaining": true }])));
    let second = json!({ "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": b.addr.port() } } } });
    two["load_assignment"]["endpoints"][0]["lb_endpoints"].as_array_mut().unwrap().push(second);
    let env = blocking(|| start_proxy(json!([route("/", json!({ "cluster": "two" }))]), vec![two], json!({})));
    let mut conn = Conn::open(env.addr, Proto::H2c).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = conn.get("/", &[]).await;
        if r.status == 503 {
            assert_eq!(r.body, Bytes::from("no healthy upstream"));
        }
        statuses.push(r.status.as_u16());
    }
    // Round robin alternates the hosts; the second host's pool would be one too many.
    assert!(statuses == [200, 503, 200, 503] || statuses == [503, 200, 503, 200], "{statuses:?}");
    blocking(|| {
        expect_stats(
            &env,
            "two",
            &[
                ("upstream_cx_pool_overflow", 2),
                ("circuit_breakers.default.cx_pool_open", 1),
                ("circuit_breakers.default.remaining_cx_pools", 0),
                ("upstream_rq_503", 2),
            ],
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_upstream_streams_count_against_max_requests() {
    let gate = spawn_gate_backend();
    let mut h2 = cluster("h2", gate.addr, breakers(json!([{ "max_requests": 3 }])));
    h2.as_object_mut().unwrap().extend(h2_upstream(json!({})).as_object().unwrap().clone());
    let env = blocking(|| start_proxy(json!([route("/", json!({ "cluster": "h2" }))]), vec![h2], json!({})));
    let tasks = h1_burst(env.addr, "/hold", 8).await;
    blocking(|| gate.wait_held(3, WAIT)).unwrap();
    let (refused, held) = finished(tasks, 5).await;
    refused.iter().for_each(assert_overflow_reply);
    let cx = stat_of(&env, "cluster.h2.upstream_cx_total");
    assert!((1..=2).contains(&cx), "one multiplexed connection per worker at most, got {cx}");
    assert_eq!(gate.connections(), cx);
    blocking(|| expect_stats(&env, "h2", &[("upstream_rq_active_overflow", 5), ("upstream_rq_total", 3)]));
    gate.open();
    for t in held {
        assert_eq!(t.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_overrides_and_admin_output() {
    let gate = spawn_gate_backend();
    let svc = cluster(
        "svc",
        gate.addr,
        breakers(json!([
            { "max_requests": 4, "max_retries": 9, "track_remaining": true },
            { "priority": "HIGH", "max_connections": 7, "retry_budget": { "min_retry_concurrency": 5 } },
        ])),
    );
    let runtime = json!({ "layered_runtime": { "layers": [{ "name": "static", "static_layer": {
        "circuit_breakers.svc.default.max_requests": 1,
    }}]}});
    let env = blocking(|| start_proxy(json!([route("/", json!({ "cluster": "svc" }))]), vec![svc], runtime));
    let conn = Conn::open(env.addr, Proto::H2c).await;
    let mut c = conn.clone();
    let held = tokio::spawn(async move { c.get("/hold", &[]).await });
    blocking(|| gate.wait_held(1, WAIT)).unwrap();
    assert_overflow_reply(&conn.clone().get("/again", &[]).await);
    blocking(|| {
        expect_stats(
            &env,
            "svc",
            &[("circuit_breakers.default.rq_open", 1), ("circuit_breakers.default.remaining_rq", 0)],
        );
        let (_, text) = env.proxy.admin_get("/clusters").unwrap();
        let cb: Vec<&str> = text.lines().filter(|l| l.contains("_priority::")).collect();
        assert_eq!(
            cb,
            [
                "svc::default_priority::max_connections::1024",
                "svc::default_priority::max_pending_requests::1024",
                "svc::default_priority::max_requests::1",
                "svc::default_priority::max_retries::9",
                "svc::high_priority::max_connections::7",
                "svc::high_priority::max_pending_requests::1024",
                "svc::high_priority::max_requests::1024",
                "svc::high_priority::max_retries::5",
            ]
        );
        let (_, j) = env.proxy.admin_get("/clusters?format=json").unwrap();
        let j: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(
            j["cluster_statuses"][0]["circuit_breakers"],
            json!({ "thresholds": [
                { "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1, "max_retries": 9 },
                { "priority": "HIGH", "max_connections": 7, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 5 },
            ]})
        );
    });
    gate.open();
    assert_eq!(held.await.unwrap().status, 200);
}

/// The gate itself: held requests wait, `open` lets them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_backend_holds_until_opened() {
    let gate: GateBackend = spawn_gate_backend();
    let mut c = Conn::open(gate.addr, Proto::H1).await;
    assert_eq!(c.get("/free", &[]).await.status, 200);
    let mut c2 = Conn::open(gate.addr, Proto::H1).await;
    let t = tokio::spawn(async move { c2.get("/hold", &[]).await.status });
    blocking(|| gate.wait_held(1, WAIT)).unwrap();
    assert!(!t.is_finished());
    gate.open();
    assert_eq!(t.await.unwrap(), 200);
    assert_eq!((gate.arrived(), gate.held()), (2, 0));
}
