//! Outlier detection end to end: real backends that fail on command behind the `pinion`
//! binary; ejection after `consecutive_5xx` errors (across workers), traffic staying away
//! from the ejected host, `/clusters`, the stats and the event log, and the host's return
//! after `base_ejection_time`. Connect failures count as 5xx without
//! `split_external_local_origin_errors` and as local origin failures with it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pinion_testkit::{free_port, spawn_http_backend_named, Backend, BackendKind, ProxyProcess};
use serde_json::{json, Value};

/// A STATIC cluster over `hosts` with `outlier_detection`.
fn cluster_over(name: &str, hosts: &[SocketAddr], outlier: Value) -> Value {
    let eps: Vec<Value> = hosts
        .iter()
        .map(|a| json!({ "endpoint": { "address": { "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } } }))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "outlier_detection": outlier,
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": eps }] },
    })
}

fn with_event_log(bootstrap: String, path: &std::path::Path) -> String {
    let mut v: Value = serde_json::from_str(&bootstrap).expect("bootstrap");
    v["cluster_manager"] = json!({ "outlier_detection": { "event_log_path": path.display().to_string() } });
    serde_json::to_string_pretty(&v).expect("bootstrap")
}

/// `health_flags` of `host` in `/clusters`.
fn health_flags(p: &ProxyProcess, cluster: &str, host: SocketAddr) -> String {
    let (_, body) = p.admin_get("/clusters").expect("/clusters");
    let prefix = format!("{cluster}::{host}::health_flags::");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("<missing>").to_string()
}

fn od_stat(p: &ProxyProcess, cluster: &str, name: &str) -> u64 {
    stat(p, &format!("cluster.{cluster}.outlier_detection.{name}"))
}

/// GET `/` through the proxy until `bad` has answered `n` times; returns the statuses seen.
async fn until_hits(listen: SocketAddr, bad: &Backend, n: u64) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..60 {
        if bad.hit_count() >= n {
            return statuses;
        }
        statuses.push(get(listen, "/", &[]).await.status);
    }
    panic!("the failing backend got {} requests of {n} after 60 (statuses {statuses:?})", bad.hit_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_ejects_the_host_until_its_time_is_up() {
    let ok = [spawn_http_backend_named(BackendKind::Http1, "ok0"), spawn_http_backend_named(BackendKind::Http1, "ok1")];
    let bad = spawn_http_backend_named(BackendKind::Http1, "bad");
    bad.force_status(Some(503));
    let (admin, port) = (free_port(), free_port());
    let log = std::env::temp_dir().join(format!("pinion-outlier-events-{}-{port}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let outlier = json!({
        "consecutive_5xx": 3,
        "interval": "0.2s",
        "base_ejection_time": "1s",
        "max_ejection_percent": 100,
    });
    let b = bootstrap(
        admin,
        vec![listener("ingress", port, hcm("ingress_http", route_all_to("svc"), json!({})))],
        vec![cluster_over("svc", &[ok[0].addr, ok[1].addr, bad.addr], outlier)],
    );
    // Two workers: the consecutive errors are counted per host, whichever worker sees them.
    let p = start(&with_event_log(b, &log), &["--concurrency", "2", "--file-flush-interval-msec", "50"]);
    let listen = local(port);
    assert_eq!(health_flags(&p, "svc", bad.addr), "healthy");
    let (_, clusters) = p.admin_get("/clusters").unwrap();
    for line in ["svc::outlier::success_rate_average::-1", "svc::outlier::success_rate_ejection_threshold::-1"] {
        assert!(clusters.lines().any(|l| l == line), "{line} missing:\n{clusters}");
    }

    // Three 503s from the failing host eject it (the detector acts when the third arrives).
    let statuses = until_hits(listen, &bad, 3).await;
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 3, "{statuses:?}");
    wait_for_async(Duration::from_secs(3), "the host to be ejected", || {
        (health_flags(&p, "svc", bad.addr) == "/failed_outlier_check").then_some(())
    })
    .await;
    let ejected_at = Instant::now();
    let hits = bad.hit_count();
    for _ in 0..12 {
        assert_eq!(get(listen, "/", &[]).await.status, 200);
    }
    assert_eq!(bad.hit_count(), hits, "no traffic reaches the ejected host");
    for (name, v) in [
        ("ejections_active", 1),
        ("ejections_detected_consecutive_5xx", 1),
        ("ejections_enforced_consecutive_5xx", 1),
        ("ejections_enforced_total", 1),
        ("ejections_total", 1),
        ("ejections_consecutive_5xx", 1),
        ("ejections_overflow", 0),
        ("ejections_detected_consecutive_gateway_failure", 0),
    ] {
        assert_eq!(od_stat(&p, "svc", name), v, "{name}");
    }
    assert!(p.stats().contains("cluster.svc.outlier_detection.ejections_detected_failure_percentage: 0"));
    let (_, body) = p.admin_get("/clusters?format=json").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let hosts = v["cluster_statuses"][0]["host_statuses"].as_array().unwrap();
    let bad_port = u64::from(bad.addr.port());
    let h = hosts.iter().find(|h| h["address"]["socket_address"]["port_value"] == bad_port).unwrap();
    assert_eq!(h["health_status"]["failed_outlier_check"], true, "{h}");
    assert_eq!(membership_healthy(&p), 2);

    // Healthy again; back after base_ejection_time (1s, first ejection), found by a sweep.
    bad.force_status(None);
    wait_for_async(Duration::from_secs(4), "the host to return", || {
        (health_flags(&p, "svc", bad.addr) == "healthy").then_some(())
    })
    .await;
    let out_for = ejected_at.elapsed();
    assert!(out_for >= Duration::from_millis(700), "back after {out_for:?}");
    assert_eq!(od_stat(&p, "svc", "ejections_active"), 0);
    assert_eq!(membership_healthy(&p), 3);
    let statuses = until_hits(listen, &bad, hits + 2).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // The event log: Envoy's JSON lines, EJECT then UNEJECT.
    let lines = wait_for_async(Duration::from_secs(3), "two event log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let _ = std::fs::remove_file(&log);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let url = bad.addr.to_string();
    assert_eq!(
        (&lines[0]["action"], &lines[0]["type"], &lines[0]["upstream_url"], &lines[0]["enforced"]),
        (&json!("EJECT"), &json!("CONSECUTIVE_5XX"), &json!(url), &json!(true))
    );
    assert_eq!(lines[0]["eject_consecutive_event"], json!({}));
    assert_eq!((&lines[1]["action"], &lines[1]["num_ejections"]), (&json!("UNEJECT"), &json!(1)));
    assert_eq!(lines[1]["secs_since_last_action"], json!("1"));
}

fn membership_healthy(p: &ProxyProcess) -> u64 {
    stat(p, "cluster.svc.membership_healthy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_5xx_or_local_origin_failures() {
    // (split_external_local_origin_errors, the stat that counts the ejection)
    let cases =
        [(false, "ejections_enforced_consecutive_5xx"), (true, "ejections_enforced_consecutive_local_origin_failure")];
    for (split, ejected_by) in cases {
        let ok = spawn_http_backend_named(BackendKind::Http1, "ok");
        // Nothing listens there: every attempt is a connect failure (503 to the client).
        let refused = local(free_port());
        let (admin, port) = (free_port(), free_port());
        let outlier = json!({
            "consecutive_5xx": 2,
            "consecutive_local_origin_failure": 2,
            "split_external_local_origin_errors": split,
            "max_ejection_percent": 100,
            "interval": "0.2s",
        });
        let b = bootstrap(
            admin,
            vec![listener("ingress", port, hcm("ingress_http", route_all_to("svc"), json!({})))],
            vec![cluster_over("svc", &[ok.addr, refused], outlier)],
        );
        let p = start(&b, &[]);
        let listen = local(port);
        let mut failed = 0;
        for _ in 0..10 {
            if get(listen, "/", &[]).await.status == 503 {
                failed += 1;
            }
            if failed == 2 {
                break;
            }
        }
        assert_eq!(failed, 2, "split {split}");
        wait_for_async(Duration::from_secs(3), "the refused host to be ejected", || {
            (health_flags(&p, "svc", refused) == "/failed_outlier_check").then_some(())
        })
        .await;
        for _ in 0..4 {
            assert_eq!(get(listen, "/", &[]).await.status, 200, "split {split}");
        }
        assert_eq!(od_stat(&p, "svc", ejected_by), 1, "split {split}");
        assert_eq!(od_stat(&p, "svc", "ejections_enforced_total"), 1, "split {split}");
        // Without the split a connect failure is a 503: a gateway failure too (not enforced
        // by default, and below its threshold of 5 here).
        assert_eq!(od_stat(&p, "svc", "ejections_detected_consecutive_gateway_failure"), 0);
    }
}
