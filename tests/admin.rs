//! The admin listener of the `pinion` binary: Envoy's endpoints and output formats.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pinion_testkit::{free_port, http_get_blocking, spawn_http_backend, BackendKind, ProxyProcess};
use serde_json::{json, Value};

struct Env {
    proxy: ProxyProcess,
    admin: SocketAddr,
    listen: SocketAddr,
    backend_addr: SocketAddr,
    _backend: pinion_testkit::Backend,
}

fn setup() -> Env {
    let backend = spawn_http_backend(BackendKind::Http1);
    let (admin, port) = (free_port(), free_port());
    let b = bootstrap(
        admin,
        vec![listener("ingress", port, hcm("ingress_http", route_all_to("backend"), json!({})))],
        vec![cluster("backend", backend.addr, json!({}))],
    );
    let proxy = start(&b, &[]);
    Env { proxy, admin: local(admin), listen: local(port), backend_addr: backend.addr, _backend: backend }
}

fn admin_get(env: &Env, path: &str) -> (u16, String) {
    http_get_blocking(env.admin, path, Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn admin_post(env: &Env, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&env.admin, Duration::from_secs(5)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

async fn traffic(env: &Env, n: usize) {
    for _ in 0..n {
        assert_eq!(get(env.listen, "/", &[]).await.status, 200);
    }
}

#[test]
fn ready_and_healthcheck_fail_ok() {
    let env = setup();
    assert_eq!(admin_get(&env, "/ready"), (200, "LIVE\n".into()));
    assert_eq!(admin_post(&env, "/healthcheck/fail").0, 200);
    let (code, body) = admin_get(&env, "/ready");
    assert_eq!(code, 503, "{body}");
    assert_eq!(admin_post(&env, "/healthcheck/ok").0, 200);
    assert_eq!(admin_get(&env, "/ready").0, 200);
}

#[test]
fn server_info_fields() {
    let env = setup();
    let (code, body) = admin_get(&env, "/server_info");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("server_info JSON");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(v["state"], "LIVE");
    assert_eq!(v["command_line_options"]["concurrency"], 1);
    assert!(v["command_line_options"]["config_path"].as_str().unwrap().ends_with("bootstrap.yaml"));
    assert!(v["uptime_current_epoch"].as_str().is_some_and(|s| s.ends_with('s')), "{v}");
    assert!(v["node"].is_object(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_text_filter_usedonly_and_prometheus() {
    let env = setup();
    traffic(&env, 3).await;
    let (code, all) = admin_get(&env, "/stats");
    assert_eq!(code, 200);
    let line_re = regex::Regex::new(r"^[A-Za-z0-9_.\[\]:-]+: -?\d+$").unwrap();
    for l in all.lines().filter(|l| !l.contains("P0(") && !l.contains("No recorded values")) {
        assert!(line_re.is_match(l), "not `name: value`: {l:?}");
    }
    assert!(all.lines().any(|l| l == "cluster.backend.upstream_rq_total: 3"), "{all}");
    assert!(all.lines().any(|l| l == "http.ingress_http.downstream_rq_total: 3"), "{all}");

    let (_, filtered) = admin_get(&env, "/stats?filter=upstream_rq_total");
    assert!(!filtered.is_empty());
    assert!(filtered.lines().all(|l| l.contains("upstream_rq_total")), "{filtered}");
    assert!(filtered.lines().any(|l| l == "cluster.backend.upstream_rq_total: 3"));

    let (_, used) = admin_get(&env, "/stats?usedonly");
    assert!(used.lines().any(|l| l.starts_with("cluster.backend.upstream_rq_total: ")));
    assert!(!used.lines().any(|l| l.ends_with(": 0") && l.starts_with("cluster.backend.upstream_rq_5xx")), "{used}");
    assert!(used.lines().count() < all.lines().count(), "usedonly must drop untouched stats");

    let (code, prom) = admin_get(&env, "/stats/prometheus");
    assert_eq!(code, 200);
    let has = |prefix: &str, value: &str| prom.lines().any(|l| l.starts_with(prefix) && l.ends_with(value));
    assert!(has("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"}", " 3"), "{prom}");
    assert!(has("envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"}", " 3"), "{prom}");
    assert!(prom.lines().any(|l| l.starts_with("# TYPE envoy_cluster_upstream_rq_total counter")), "{prom}");
}

#[test]
fn config_dump_has_bootstrap_and_static_resources() {
    let env = setup();
    let (code, body) = admin_get(&env, "/config_dump");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("config_dump JSON");
    let configs = v["configs"].as_array().expect("configs");
    let by_type = |t: &str| {
        configs
            .iter()
            .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{t}"))
            .unwrap_or_else(|| panic!("no {t} in {v}"))
    };
    let b = by_type("BootstrapConfigDump");
    assert_eq!(b["bootstrap"]["static_resources"]["clusters"][0]["name"], "backend");
    let c = by_type("ClustersConfigDump");
    assert_eq!(c["static_clusters"][0]["cluster"]["name"], "backend");
    assert_eq!(c["static_clusters"][0]["cluster"]["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    let l = by_type("ListenersConfigDump");
    assert_eq!(l["static_listeners"][0]["listener"]["name"], "ingress");
    let r = by_type("RoutesConfigDump");
    assert_eq!(r["static_route_configs"][0]["route_config"]["name"], "routes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_text_and_json() {
    let env = setup();
    traffic(&env, 2).await;
    let (code, text) = admin_get(&env, "/clusters");
    assert_eq!(code, 200);
    let host = env.backend_addr.to_string();
    assert!(text.lines().any(|l| l == format!("backend::{host}::health_flags::healthy")), "{text}");
    assert!(text.lines().any(|l| l == format!("backend::{host}::rq_total::2")), "{text}");
    assert!(text.lines().any(|l| l == "backend::default_priority::max_connections::1024"), "{text}");

    let (code, body) = admin_get(&env, "/clusters?format=json");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("clusters JSON");
    let c = &v["cluster_statuses"][0];
    assert_eq!(c["name"], "backend");
    let h = &c["host_statuses"][0];
    assert_eq!(h["address"]["socket_address"]["port_value"], env.backend_addr.port());
    assert_eq!(h["health_status"]["eds_health_status"], "HEALTHY");
    let rq_total = h["stats"].as_array().unwrap().iter().find(|s| s["name"] == "rq_total").expect("rq_total");
    assert_eq!(rq_total["value"], "2");
}

#[test]
fn logging_level_and_method_checks() {
    let env = setup();
    let (code, body) = admin_post(&env, "/logging?level=debug");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("debug"), "{body}");
    assert_eq!(admin_post(&env, "/logging?level=not-a-level").0, 400);
    // Mutating endpoints refuse GET.
    for path in ["/healthcheck/fail", "/quitquitquit", "/logging?level=info", "/drain_listeners"] {
        assert_eq!(admin_get(&env, path).0, 405, "GET {path}");
    }
    assert_eq!(admin_get(&env, "/ready").0, 200, "refused GETs must not have acted");
}

#[test]
fn quitquitquit_exits_zero() {
    let mut env = setup();
    assert_eq!(admin_post(&env, "/quitquitquit").0, 200);
    let status = wait_for(Duration::from_secs(10), "exit after /quitquitquit", || env.proxy.try_exit_status());
    assert_eq!(status.code(), Some(0), "{}", env.proxy.logs());
}
