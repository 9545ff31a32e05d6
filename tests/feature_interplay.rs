//! Where the resilience features meet, end to end through the `pinion` binary:
//! - retries take the retry circuit breaker's slot (`max_retries`) from the decision to retry
//!   until the retried attempt ends, and a refused retry counts `upstream_rq_retry_overflow`
//!   once;
//! - a circuit breaker's refusal (503 `UO`) is not an outlier detection failure of the host;
//! - a passed active health check brings back a host outlier detection ejected
//!   (`successful_active_health_check_uneject_host`, on by default);
//! - every attempt of a retried request is reported to outlier detection: a response status
//!   each, and a per-try timeout as a 504.
//!
//! The expectations hold against Envoy 1.40 too (`PINION_TESTS_AGAINST=envoy`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pinion_testkit::{free_port, spawn_flaky_backend, spawn_gate_backend, ProxyProcess};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

fn route(prefix: &str, action: Value) -> Value {
    json!({ "match": { "prefix": prefix }, "route": action })
}

/// A proxy with one listener whose virtual host has `routes`, and `clusters`.
fn start_proxy(routes: Vec<Value>, clusters: Vec<Value>) -> (ProxyProcess, SocketAddr) {
    let (admin, port) = (free_port(), free_port());
    let rc = json!({ "name": "routes", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] });
    let b = bootstrap(admin, vec![listener("ingress", port, hcm("ingress_http", rc, json!({})))], clusters);
    (start(&b, &[]), local(port))
}

fn od_stat(p: &ProxyProcess, cluster: &str, name: &str) -> u64 {
    stat(p, &format!("cluster.{cluster}.outlier_detection.{name}"))
}

/// `health_flags` of `host` in `/clusters`.
fn health_flags(p: &ProxyProcess, cluster: &str, host: SocketAddr) -> String {
    let (_, body) = p.admin_get("/clusters").expect("/clusters");
    let prefix = format!("{cluster}::{host}::health_flags::");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("<missing>").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hold_the_retry_circuit_breaker() {
    let backend = spawn_flaky_backend();
    let policy = json!({
        "retry_on": "5xx",
        "num_retries": 2,
        // A `retry-after` answer makes the retry wait 2-3 s: long enough to look at it.
        "rate_limited_retry_back_off": { "reset_headers": [{ "name": "retry-after" }], "max_interval": "5s" },
    });
    let cluster = cluster(
        "svc",
        backend.addr,
        json!({ "circuit_breakers": { "thresholds": [{ "max_retries": 1, "track_remaining": true }] } }),
    );
    let (p, addr) = start_proxy(vec![route("/", json!({ "cluster": "svc", "retry_policy": policy }))], vec![cluster]);
    let cb = |name: &str| stat(&p, &format!("cluster.svc.circuit_breakers.default.{name}"));
    assert_eq!((cb("rq_retry_open"), cb("remaining_retries")), (0, 1));

    // A retry waiting out its backoff holds the only retry slot...
    let waiting = tokio::spawn(async move {
        get(addr, "/a", &[("x-fail", "1:status=503"), ("x-fail-headers", "retry-after=2")]).await
    });
    wait_for_async(WAIT, "the retry to be scheduled", || (cb("rq_retry_open") == 1).then_some(())).await;
    assert_eq!(backend.attempts("/a"), 1);
    assert_eq!(cb("remaining_retries"), 0);
    // Envoy counts the retry when it goes out, after the backoff.
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry"), 0);

    // ...so another request's retry overflows: its 503 goes back at once, counted once.
    let r = get(addr, "/b", &[("x-fail", "9:status=503")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(backend.attempts("/b"), 1, "no retry");
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry_overflow"), 1);
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry"), 0);

    // The retried attempt answers; its slot is free again for the next retry.
    let r = waiting.await.expect("first request");
    assert_eq!(r.status, 200);
    assert_eq!(backend.attempts("/a"), 2);
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry"), 1);
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry_backoff_ratelimited"), 1);
    assert_eq!((cb("rq_retry_open"), cb("remaining_retries")), (0, 1));
    let r = get(addr, "/c", &[("x-fail", "1:status=503")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.attempts("/c"), 2);
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry"), 2);
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry_success"), 2);
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_retry_overflow"), 1);
    assert_eq!(cb("rq_retry_open"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_is_not_an_outlier_failure() {
    let gate = spawn_gate_backend();
    let cluster = cluster(
        "svc",
        gate.addr,
        json!({
            "circuit_breakers": { "thresholds": [{ "max_requests": 1 }] },
            "outlier_detection": {
                "consecutive_5xx": 2,
                "consecutive_gateway_failure": 2,
                "enforcing_consecutive_gateway_failure": 100,
                "interval": "30s",
                "base_ejection_time": "60s",
                "max_ejection_percent": 100,
            },
        }),
    );
    let routes = vec![
        route("/timeout/", json!({ "cluster": "svc", "timeout": "0.2s" })),
        route("/", json!({ "cluster": "svc" })),
    ];
    let (p, addr) = start_proxy(routes, vec![cluster]);

    // One request in flight takes `max_requests`; the next ones are refused.
    let held = tokio::spawn(async move { get(addr, "/hold", &[]).await });
    gate.wait_held(1, WAIT).expect("held");
    for _ in 0..3 {
        let r = get(addr, "/other", &[]).await;
        assert_eq!((r.status, r.header("x-envoy-overloaded")), (503, Some("true")));
    }
    assert_eq!(stat(&p, "cluster.svc.upstream_rq_active_overflow"), 3);
    // The detector acts on a crossing at once; give it time to (wrongly) do so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(od_stat(&p, "svc", "ejections_detected_consecutive_5xx"), 0);
    assert_eq!(od_stat(&p, "svc", "ejections_detected_consecutive_gateway_failure"), 0);
    assert_eq!(health_flags(&p, "svc", gate.addr), "healthy");
    gate.open();
    assert_eq!(held.await.expect("held request").status, 200);
    gate.close();

    // The same host's real failures (route timeouts, 504) still count: two eject it.
    for _ in 0..2 {
        assert_eq!(get(addr, "/timeout/hold", &[]).await.status, 504);
    }
    wait_for_async(WAIT, "the host to be ejected", || {
        (health_flags(&p, "svc", gate.addr) == "/failed_outlier_check").then_some(())
    })
    .await;
    assert_eq!(od_stat(&p, "svc", "ejections_enforced_total"), 1);
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_active_health_check_unejects_the_host() {
    let backend = spawn_flaky_backend();
    let cluster = cluster(
        "svc",
        backend.addr,
        json!({
            "health_checks": [{
                "timeout": "1s",
                "interval": "0.2s",
                "no_traffic_interval": "0.2s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "http_health_check": { "path": "/healthz" },
            }],
            "outlier_detection": {
                "consecutive_5xx": 2,
                "interval": "30s",
                "base_ejection_time": "60s",
                "max_ejection_percent": 100,
            },
        }),
    );
    let (p, addr) = start_proxy(vec![route("/", json!({ "cluster": "svc" }))], vec![cluster]);
    assert_eq!(health_flags(&p, "svc", backend.addr), "healthy");

    // Two 503s eject the host (for 60 s); the health checks keep passing.
    for _ in 0..2 {
        assert_eq!(get(addr, "/fail", &[("x-fail", "2:status=503")]).await.status, 503);
    }
    wait_for_async(WAIT, "the ejection", || {
        (od_stat(&p, "svc", "ejections_enforced_consecutive_5xx") == 1).then_some(())
    })
    .await;
    let ejected = Instant::now();
    // The next passed check brings it back, long before base_ejection_time.
    wait_for_async(WAIT, "the host to return", || {
        (od_stat(&p, "svc", "ejections_active") == 0 && health_flags(&p, "svc", backend.addr) == "healthy")
            .then_some(())
    })
    .await;
    assert!(ejected.elapsed() < Duration::from_secs(5));
    assert_eq!(od_stat(&p, "svc", "ejections_enforced_total"), 1);
    assert_eq!(stat(&p, "cluster.svc.health_check.failure"), 0);
    assert_eq!(get(addr, "/ok", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_attempt_reports_to_outlier_detection() {
    let backend = spawn_flaky_backend();
    let outlier = json!({ "outlier_detection": {
        "consecutive_5xx": 3,
        "interval": "30s",
        "base_ejection_time": "60s",
        "max_ejection_percent": 100,
    }});
    // The same backend as two clusters, one per scenario, so their detectors count apart.
    let clusters = vec![cluster("status", backend.addr, outlier.clone()), cluster("pertry", backend.addr, outlier)];
    let routes = vec![
        route("/status/", json!({ "cluster": "status", "retry_policy": { "retry_on": "5xx", "num_retries": 2 } })),
        route(
            "/pertry/",
            json!({ "cluster": "pertry", "retry_policy": { "retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.2s" } }),
        ),
    ];
    let (p, addr) = start_proxy(routes, clusters);

    // One downstream request, three 503 attempts: three consecutive 5xx for the host.
    let r = get(addr, "/status/x", &[("x-fail", "3:status=503")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(backend.attempts("/status/x"), 3);
    wait_for_async(WAIT, "the ejection by response statuses", || {
        (health_flags(&p, "status", backend.addr) == "/failed_outlier_check").then_some(())
    })
    .await;
    assert_eq!(od_stat(&p, "status", "ejections_enforced_consecutive_5xx"), 1);

    // Three per-try timeouts: each a local origin timeout, a 504 for the detector.
    let r = get(addr, "/pertry/x", &[("x-fail", "3:hang")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(backend.attempts("/pertry/x"), 3);
    assert_eq!(stat(&p, "cluster.pertry.upstream_rq_per_try_timeout"), 3);
    wait_for_async(WAIT, "the ejection by per-try timeouts", || {
        (health_flags(&p, "pertry", backend.addr) == "/failed_outlier_check").then_some(())
    })
    .await;
    assert_eq!(od_stat(&p, "pertry", "ejections_enforced_consecutive_5xx"), 1);
}
