//! Active health checking (`Cluster.health_checks`) of the `pinion` binary against real
//! backends that fail on command: hosts leave load balancing when their checks fail and
//! come back when they pass, `/clusters` shows Envoy's flags, and `health_check.*` counts.
//! Intervals are 100 ms, so every state change shows within a second or two.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pinion_testkit::{free_port, HealthBackend, ProxyKind, ProxyProcess, TcpBackend};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(8);

/// A STATIC cluster over `hosts` (each optionally with endpoint JSON fields) with `hc`.
fn hc_cluster(name: &str, hosts: &[(SocketAddr, Value)], hc: Value, extra: Value) -> Value {
    let eps: Vec<Value> = hosts
        .iter()
        .map(|(a, ep_extra)| {
            merged(
                json!({ "endpoint": merged(
                    json!({ "address": { "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } }),
                    ep_extra.get("endpoint").cloned().unwrap_or(json!({})),
                )}),
                ep_extra.get("lb_endpoint").cloned().unwrap_or(json!({})),
            )
        })
        .collect();
    merged(
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": eps }] },
            "health_checks": [hc],
        }),
        extra,
    )
}

/// The common timing part of a health check (100 ms everywhere, thresholds 2/2).
fn timing(checker: (&str, Value)) -> Value {
    let mut hc = json!({
        "timeout": "1s",
        "interval": "0.1s",
        "no_traffic_interval": "0.1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
    });
    hc[checker.0] = checker.1;
    hc
}

/// `health_flags` of every host of `cluster` in `/clusters`, by address.
fn flags(p: &ProxyProcess, cluster: &str) -> Vec<(String, String)> {
    let (_, body) = p.admin_get("/clusters").expect("/clusters");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{cluster}::"))?;
            let (addr, flags) = rest.split_once("::health_flags::")?;
            Some((addr.to_string(), flags.to_string()))
        })
        .collect()
}

fn flags_of(p: &ProxyProcess, cluster: &str, addr: SocketAddr) -> String {
    flags(p, cluster).into_iter().find(|(a, _)| *a == addr.to_string()).map(|(_, f)| f).unwrap_or_default()
}

fn wait_flags(p: &ProxyProcess, cluster: &str, addr: SocketAddr, want: &str) {
    wait_for(WAIT, &format!("{addr} to show {want}"), || (flags_of(p, cluster, addr) == want).then_some(()));
}

/// Send `n` requests through the listener; returns how many each backend (by `x-backend`)
/// served.
async fn spread(listen: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = get(listen, "/traffic", &[]).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        *m.entry(r.header("x-backend").unwrap_or("?").to_string()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn http_checks_take_hosts_out_of_load_balancing_and_back() {
    let (a, b) = (HealthBackend::spawn("a"), HealthBackend::spawn("b"));
    let (admin, port) = (free_port(), free_port());
    let hc = timing((
        "http_health_check",
        json!({
            "path": "/healthz",
            "request_headers_to_add": [{ "header": { "key": "x-hc", "value": "yes" } }],
        }),
    ));
    let cl = hc_cluster("svc", &[(a.addr, json!({})), (b.addr, json!({}))], hc, json!({}));
    let p =
        start(&bootstrap(admin, vec![listener("in", port, hcm("in", route_all_to("svc"), json!({})))], vec![cl]), &[]);
    let listen = local(port);

    // Ready means both had their first check; both pass.
    assert_eq!(flags(&p, "svc").iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>(), ["healthy", "healthy"]);
    assert_eq!(stat(&p, "cluster.svc.health_check.healthy"), 2);
    let (path, headers) = a.last_health_request().expect("a was checked");
    assert_eq!(path, "/healthz");
    assert_eq!(headers.get("host").and_then(|v| v.to_str().ok()), Some("svc"), "Host defaults to the cluster name");
    assert_eq!(headers.get("user-agent").and_then(|v| v.to_str().ok()), Some("Envoy/HC"));
    assert_eq!(headers.get("x-hc").and_then(|v| v.to_str().ok()), Some("yes"));
    let m = spread(listen, 10).await;
    assert_eq!((m.get("a"), m.get("b")), (Some(&5), Some(&5)), "{m:?}");

    // A 503 fails the host at once (an active failure does not wait for the threshold).
    b.set_health(503, &[]);
    wait_flags(&p, "svc", b.addr, "/failed_active_hc");
    assert_eq!(spread(listen, 6).await.get("b"), None, "a failed host gets no traffic");
    assert_eq!(stat(&p, "cluster.svc.health_check.healthy"), 1);
    assert_eq!(stat(&p, "cluster.svc.membership_healthy"), 1);
    assert!(stat(&p, "cluster.svc.health_check.failure") >= 1);
    assert_eq!(stat(&p, "cluster.svc.health_check.network_failure"), 0);

    // Back after healthy_threshold passes.
    b.set_health(200, &[]);
    wait_flags(&p, "svc", b.addr, "healthy");
    assert_eq!(stat(&p, "cluster.svc.health_check.healthy"), 2);
    // (Envoy's workers take the new host set a moment after `/clusters` shows it.)
    let deadline = Instant::now() + WAIT;
    while !spread(listen, 4).await.contains_key("b") {
        assert!(Instant::now() < deadline, "the host is back in load balancing");
    }

    // x-envoy-immediate-health-check-fail on a failing answer also excludes the host.
    b.set_health(503, &[("x-envoy-immediate-health-check-fail", "true")]);
    wait_flags(&p, "svc", b.addr, "/failed_active_hc/excluded_via_immediate_hc_fail");
    assert_eq!(stat(&p, "cluster.svc.membership_excluded"), 1);
    // x-envoy-degraded on a passing answer: healthy again, but degraded.
    b.set_health(200, &[("x-envoy-degraded", "1")]);
    wait_flags(&p, "svc", b.addr, "/degraded_active_hc");
    assert_eq!(stat(&p, "cluster.svc.health_check.degraded"), 1);
    assert_eq!(stat(&p, "cluster.svc.membership_degraded"), 1);
    let (_, json_body) = p.admin_get("/clusters?format=json").expect("json");
    let v: Value = serde_json::from_str(&json_body).expect("json");
    let hosts = v["cluster_statuses"][0]["host_statuses"].as_array().expect("hosts").clone();
    let hb = hosts.iter().find(|h| h["address"]["socket_address"]["port_value"] == b.addr.port()).expect("b");
    assert_eq!(hb["health_status"]["failed_active_degraded_check"], true);
    b.set_health(200, &[]);
    wait_flags(&p, "svc", b.addr, "healthy");

    let (attempt, success, failure) = (
        stat(&p, "cluster.svc.health_check.attempt"),
        stat(&p, "cluster.svc.health_check.success"),
        stat(&p, "cluster.svc.health_check.failure"),
    );
    // Every finished attempt is a success or a failure; at most one per host is in flight.
    assert!(attempt >= success + failure && attempt <= success + failure + 2, "{attempt} {success} {failure}");
    assert!(a.health_hits() >= 5 && b.health_hits() >= 5);
}

#[tokio::test]
async fn tcp_checks_follow_a_backend_that_stops_accepting() {
    let (ping, connect) = (TcpBackend::spawn(), TcpBackend::spawn());
    let admin = free_port();
    let send_receive = hc_cluster(
        "ping",
        &[(ping.addr, json!({}))],
        timing(("tcp_health_check", json!({ "send": { "text": "50494E47" }, "receive": [{ "text": "504f4e47" }] }))),
        json!({}),
    );
    let connect_only =
        hc_cluster("connect", &[(connect.addr, json!({}))], timing(("tcp_health_check", json!({}))), json!({}));
    let p = start(&bootstrap(admin, vec![], vec![send_receive, connect_only]), &[]);
    wait_flags(&p, "ping", ping.addr, "healthy");
    wait_flags(&p, "connect", connect.addr, "healthy");
    // reuse_connection (the default): the PING/PONG checks share one connection.
    let connections = ping.connections();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(ping.connections(), connections, "checks reuse their connection");
    // Connect-only checks close at once and reconnect every time.
    assert!(connect.connections() >= 3);

    for backend in [&ping, &connect] {
        backend.stop();
    }
    // Refused connects are network failures: unhealthy_threshold (2) of them fail the host.
    wait_flags(&p, "ping", ping.addr, "/failed_active_hc");
    wait_flags(&p, "connect", connect.addr, "/failed_active_hc");
    assert!(stat(&p, "cluster.connect.health_check.network_failure") >= 2);
    assert_eq!(stat(&p, "cluster.connect.health_check.healthy"), 0);
    for backend in [&ping, &connect] {
        backend.start();
    }
    wait_flags(&p, "ping", ping.addr, "healthy");
    wait_flags(&p, "connect", connect.addr, "healthy");
    assert_eq!(stat(&p, "cluster.ping.health_check.healthy"), 1);
}

#[tokio::test]
async fn grpc_checks_use_the_grpc_health_protocol() {
    let b = HealthBackend::spawn("g");
    let admin = free_port();
    let hc = timing(("grpc_health_check", json!({ "service_name": "pkg.Svc", "authority": "grpc.example" })));
    let cl = hc_cluster("grpc", &[(b.addr, json!({}))], hc, h2_upstream(json!({})));
    let p = start(&bootstrap(admin, vec![], vec![cl]), &[]);
    wait_flags(&p, "grpc", b.addr, "healthy");
    let (path, h) = b.last_health_request().expect("checked");
    assert_eq!(path, "/grpc.health.v1.Health/Check");
    let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(hv("content-type").as_deref(), Some("application/grpc"));
    assert_eq!(hv("user-agent").as_deref(), Some("Envoy/HC"));
    assert_eq!(hv("te").as_deref(), Some("trailers"));
    assert_eq!(hv("grpc-timeout").as_deref(), Some("1000m"));
    // NOT_SERVING is an active failure: immediate.
    b.set_health(503, &[]);
    wait_flags(&p, "grpc", b.addr, "/failed_active_hc");
    assert_eq!(stat(&p, "cluster.grpc.health_check.network_failure"), 0);
    b.set_health(200, &[]);
    wait_flags(&p, "grpc", b.addr, "healthy");
}

#[tokio::test]
async fn endpoint_health_check_config_and_eds_health_status() {
    let hcb = HealthBackend::spawn("hc");
    let traffic = HealthBackend::spawn("traffic");
    let admin = free_port();
    let hc = timing(("http_health_check", json!({ "path": "/healthz", "host": "configured.example" })));
    // Host 1 serves traffic on one port and is checked on another, with its own Host;
    // host 2 opts out of active checks and is DRAINING; host 3 is DEGRADED by EDS and
    // checked (on a closed port: it fails).
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let hosts = [
        (
            traffic.addr,
            json!({ "endpoint": { "health_check_config": { "port_value": hcb.addr.port(), "hostname": "ep.example" } } }),
        ),
        (
            SocketAddr::from(([127, 0, 0, 2], traffic.addr.port())),
            json!({ "endpoint": { "health_check_config": { "disable_active_health_check": true } }, "lb_endpoint": { "health_status": "DRAINING" } }),
        ),
        (closed, json!({ "lb_endpoint": { "health_status": "DEGRADED" } })),
    ];
    let p = start(&bootstrap(admin, vec![], vec![hc_cluster("svc", &hosts, hc, json!({}))]), &[]);
    wait_flags(&p, "svc", traffic.addr, "healthy");
    assert_eq!(flags_of(&p, "svc", hosts[1].0), "/eds_status_draining");
    assert_eq!(flags_of(&p, "svc", closed), "/failed_active_hc/degraded_eds_health");
    let (_, h) = hcb.last_health_request().expect("checked on the health_check_config port");
    assert_eq!(h.get("host").and_then(|v| v.to_str().ok()), Some("ep.example"), "the endpoint's hostname wins");
    assert_eq!(traffic.health_hits(), 0);
    // Only the two checked hosts have sessions.
    assert_eq!(stat(&p, "cluster.svc.health_check.healthy"), 1);
    assert_eq!(stat(&p, "cluster.svc.membership_excluded"), 1);
    let (_, json_body) = p.admin_get("/clusters?format=json").expect("json");
    assert!(json_body.contains("\"DRAINING\""), "{json_body}");
}

#[test]
fn readiness_waits_for_the_initial_health_checks() {
    use_this_binary();
    // A host that accepts connections and never answers: its first check ends by timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = free_port();
    let mut hc = timing(("http_health_check", json!({ "path": "/healthz" })));
    hc["timeout"] = json!("1.5s");
    let ok = HealthBackend::spawn("ok");
    let cl = hc_cluster("svc", &[(ok.addr, json!({})), (silent.local_addr().unwrap(), json!({}))], hc, json!({}));
    let started = Instant::now();
    let mut p = ProxyProcess::spawn(ProxyKind::Pinion, &bootstrap(admin, vec![], vec![cl]), &[]);
    let ready = local(admin);
    let mut saw_not_ready = false;
    loop {
        match pinion_testkit::http_get_blocking(ready, "/ready", Duration::from_secs(2)) {
            Ok((200, _)) => break,
            Ok((503, _)) => saw_not_ready = true,
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ready\n{}", p.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = started.elapsed();
    assert!(saw_not_ready, "the admin answered 503 while the first checks ran");
    assert!(waited >= Duration::from_millis(1400), "ready before the silent host's first check timed out: {waited:?}");
    p.wait_ready(admin, Duration::from_secs(1)).expect("ready");
    assert_eq!(flags_of(&p, "svc", silent.local_addr().unwrap()), "/failed_active_hc/active_hc_timeout");
    assert_eq!(flags_of(&p, "svc", ok.addr), "healthy");
    assert!(stat(&p, "cluster.svc.health_check.network_failure") >= 1);
}
