//! The `pinion` binary driven by the in-process test control plane over ADS, SotW and Delta:
//! initial convergence and readiness, endpoint and route changes, a rejected update that
//! leaves the last good config serving, removal, and steady load while the control plane
//! pushes updates (no request may fail).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use pinion_testkit::{free_port, spawn_http_backend_named, BackendKind, ProxyKind, ProxyProcess};
use pinion_xds::control_plane::{ControlPlane, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};

const NODE: &str = "sidecar-1";
const LISTENER_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> M {
    message_from_str(text, Format::Yaml, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn eds_cluster(name: &str) -> Cluster {
    yaml(&format!(
        "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
    ))
}

fn endpoints(name: &str, ports: &[u16]) -> ClusterLoadAssignment {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| {
            format!("  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}")
        })
        .collect();
    yaml(&format!("cluster_name: {name}\nendpoints:\n- lb_endpoints:\n{}\n", eps.join("\n")))
}

fn route(name: &str, cluster: &str, header: &str) -> RouteConfiguration {
    yaml(&format!(
        r#"
name: {name}
virtual_hosts:
- name: all
  domains: ["*"]
  response_headers_to_add: [{{ header: {{ key: x-route-version, value: "{header}" }} }}]
  routes:
  - match: {{ prefix: / }}
    route: {{ cluster: {cluster} }}
"#
    ))
}

fn listener(name: &str, port: u16, rds: &str) -> Listener {
    let spec = format!("rds: {{ route_config_name: {rds}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}");
    pinion_xds::control_plane::hcm_listener(name, port, "ingress", &spec, &[]).unwrap()
}

fn bootstrap(admin: u16, xds_port: u16, api_type: &str) -> String {
    pinion_xds::control_plane::ads_bootstrap(NODE, admin, ([127, 0, 0, 1], xds_port).into(), api_type)
}

/// GET / through the proxy; returns (status, x-backend, x-route-version).
async fn get(port: u16) -> anyhow::Result<(u16, String, String)> {
    let client = pinion_testkit::http1_client();
    let req = http::Request::get(format!("http://127.0.0.1:{port}/")).body(pinion_testkit::empty())?;
    let (status, headers, _) = pinion_testkit::send(&client, req).await?;
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Ok((status.as_u16(), h("x-backend"), h("x-route-version")))
}

/// Poll until `pred` holds for a response, or fail after `timeout`.
async fn eventually(
    port: u16,
    timeout: Duration,
    pred: impl Fn(&(u16, String, String)) -> bool,
) -> (u16, String, String) {
    let deadline = Instant::now() + timeout;
    let mut last = (0, String::new(), String::new());
    while Instant::now() < deadline {
        if let Ok(r) = get(port).await {
            if pred(&r) {
                return r;
            }
            last = r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in {timeout:?}; last response {last:?}");
}

fn spawn_pinion(admin: u16, xds_port: u16, api_type: &str) -> ProxyProcess {
    std::env::set_var("PINION_BIN", env!("CARGO_BIN_EXE_pinion"));
    ProxyProcess::spawn(ProxyKind::Pinion, &bootstrap(admin, xds_port, api_type), &["--drain-time-s", "2"])
}

async fn converge_update_reject_remove(api_type: &str) {
    let cp = ControlPlane::new();
    let (xds_addr, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let port = free_port();
    let admin = free_port();
    cp.set_snapshot(
        NODE,
        Snapshot::new("1")
            .with_cluster(eds_cluster("svc"))
            .with_endpoints(endpoints("svc", &[a.port()]))
            .with_route(route("rc", "svc", "v1"))
            .with_listener(listener("ingress", port, "rc")),
    );
    let mut proxy = spawn_pinion(admin, xds_addr.port(), api_type);
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("pinion becomes ready once xDS converged");

    // Initial convergence: the listener, its routes, the cluster and its endpoints.
    let r = eventually(port, Duration::from_secs(10), |r| r.0 == 200).await;
    assert_eq!((r.1.as_str(), r.2.as_str()), ("a", "v1"));

    // EDS change: endpoints move to b.
    cp.set_snapshot(
        NODE,
        Snapshot::new("2")
            .with_cluster(eds_cluster("svc"))
            .with_endpoints(endpoints("svc", &[b.port()]))
            .with_route(route("rc", "svc", "v1"))
            .with_listener(listener("ingress", port, "rc")),
    );
    eventually(port, Duration::from_secs(10), |r| r.0 == 200 && r.1 == "b").await;
    // The pooled connection to the removed endpoint closes once idle (the pool sweep runs
    // every second), instead of lingering until the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.stat("cluster.svc.upstream_cx_destroy").unwrap_or(0) < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.stat("cluster.svc.upstream_cx_destroy").unwrap_or(0) >= 1, "{}", proxy.stats());

    // RDS change.
    cp.set_snapshot(
        NODE,
        Snapshot::new("3")
            .with_cluster(eds_cluster("svc"))
            .with_endpoints(endpoints("svc", &[b.port()]))
            .with_route(route("rc", "svc", "v3"))
            .with_listener(listener("ingress", port, "rc")),
    );
    eventually(port, Duration::from_secs(10), |r| r.2 == "v3").await;

    // A bad listener (an HTTP filter Pinion does not implement): NACK naming it, and the
    // last good config keeps serving.
    let mut bad = listener("ingress", port, "rc");
    let bad_yaml = format!(
        r#"
name: bad
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: bad
      rds: {{ route_config_name: rc, config_source: {{ ads: {{}} }} }}
      http_filters:
      - name: envoy.filters.http.grpc_web
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
        free_port()
    );
    let bad_listener: Listener = yaml(&bad_yaml);
    bad.name = "ingress".into();
    cp.set_snapshot(
        NODE,
        Snapshot::new("4")
            .with_cluster(eds_cluster("svc"))
            .with_endpoints(endpoints("svc", &[b.port()]))
            .with_route(route("rc", "svc", "v3"))
            .with_listener(bad)
            .with_listener(bad_listener),
    );
    let nacked = cp
        .wait_for(
            |reqs| {
                reqs.iter().any(|r| {
                    r.type_url == LISTENER_URL
                        && r.error_detail.as_ref().is_some_and(|(_, m)| m.contains("bad") && m.contains("grpc_web"))
                })
            },
            Duration::from_secs(10),
        )
        .await;
    assert!(
        nacked,
        "expected an LDS NACK naming listener 'bad' and the grpc_web filter; got {:?}",
        cp.nacks(LISTENER_URL)
    );
    let r = get(port).await.expect("still serving");
    assert_eq!((r.0, r.1.as_str(), r.2.as_str()), (200, "b", "v3"));
    // Per-resource update stats under Envoy's names: per route config of each HCM, per cluster.
    let stat = |n: &str| proxy.stat(n).unwrap_or(0);
    assert!(stat("http.ingress.rds.rc.update_success") >= 2, "{}", proxy.stats());
    assert!(stat("http.ingress.rds.rc.update_attempt") >= stat("http.ingress.rds.rc.update_success"));
    assert!(stat("cluster.svc.update_success") >= 2, "{}", proxy.stats());
    let (_, prom) = proxy.admin_get("/stats/prometheus").unwrap();
    assert!(
        prom.contains(
            "envoy_http_rds_update_success{envoy_http_conn_manager_prefix=\"ingress\",envoy_rds_route_config=\"rc\"}"
        ),
        "{prom}"
    );
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    assert!(dump.contains("dynamic_active_clusters") && dump.contains("\"version_info\""), "{dump}");
    // The resources themselves are rendered as proto3 JSON with their type.
    assert!(dump.contains("\"@type\": \"type.googleapis.com/envoy.config.cluster.v3.Cluster\""), "{dump}");
    assert!(dump.contains("\"name\": \"svc\"") && dump.contains("\"route_config_name\": \"rc\""), "{dump}");

    // Removing the cluster: the route now names a missing cluster -> 503, as Envoy.
    cp.set_snapshot(
        NODE,
        Snapshot::new("5").with_route(route("rc", "svc", "v5")).with_listener(listener("ingress", port, "rc")),
    );
    eventually(port, Duration::from_secs(10), |r| r.0 == 503).await;
    let cds = proxy.stat("cluster_manager.cds.update_success").unwrap_or(0);
    assert!(cds >= 2, "cds update_success = {cds}\n{}", proxy.stats());
    assert_eq!(proxy.stat("control_plane.connected_state"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_converges_updates_rejects_and_removes() {
    converge_update_reject_remove("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta_converges_updates_rejects_and_removes() {
    converge_update_reject_remove("DELTA_GRPC").await;
}

/// Steady load while the control plane pushes 50 updates (weights, endpoints, routes, and a
/// listener replacement): no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pushes_under_load_lose_no_request() {
    let cp = ControlPlane::new();
    let (xds_addr, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let port = free_port();
    let admin = free_port();
    let snap = |v: u32| {
        let ports: Vec<u16> = match v % 3 {
            0 => vec![a.port()],
            1 => vec![b.port()],
            _ => vec![a.port(), b.port()],
        };
        let mut l = listener("ingress", port, "rc");
        if v % 10 == 9 {
            // A listener replacement: same address, changed config (stat prefix).
            l = listener("ingress", port, "rc");
            if let Some(f) = l.filter_chains.get_mut(0) {
                f.name = format!("chain-{v}");
            }
        }
        Snapshot::new(v.to_string())
            .with_cluster(eds_cluster("svc"))
            .with_endpoints(endpoints("svc", &ports))
            .with_route(route("rc", "svc", &format!("v{v}")))
            .with_listener(l)
    };
    cp.set_snapshot(NODE, snap(0));
    let mut proxy = spawn_pinion(admin, xds_addr.port(), "GRPC");
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("ready");
    eventually(port, Duration::from_secs(10), |r| r.0 == 200).await;

    let failures = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (failures, ok, stop) = (failures.clone(), ok.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = pinion_testkit::http1_client();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let req =
                    http::Request::get(format!("http://127.0.0.1:{port}/")).body(pinion_testkit::empty()).unwrap();
                match pinion_testkit::send(&client, req).await {
                    Ok((s, _, _)) if s.is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for v in 1..=50 {
        cp.set_snapshot(NODE, snap(v));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    eventually(port, Duration::from_secs(10), |r| r.2 == "v50").await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    assert!(ok > 100, "too little load went through: {ok}");
    assert_eq!(failed, 0, "{failed} of {} requests failed during 50 pushes", ok + failed);
}

/// The xDS cluster may be a unix socket (`pipe`), as Istio's bootstrap has it; a STRICT_DNS
/// name works too (here `localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_a_unix_socket_and_a_dns_name() {
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("xds.sock");
    let cp = ControlPlane::new();
    let _unix = cp.serve_unix(&sock).expect("unix control plane");
    let (tcp_addr, _tcp) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("tcp control plane");
    for (i, address) in [
        format!("pipe: {{ path: {} }}", sock.display()),
        format!("socket_address: {{ address: localhost, port_value: {} }}", tcp_addr.port()),
    ]
    .into_iter()
    .enumerate()
    {
        let port = free_port();
        let admin = free_port();
        let node = format!("node-{i}");
        cp.set_snapshot(
            &node,
            Snapshot::new("1")
                .with_cluster(eds_cluster("svc"))
                .with_endpoints(endpoints("svc", &[a.port()]))
                .with_route(route("rc", "svc", "v1"))
                .with_listener(listener("ingress", port, "rc")),
        );
        let cluster_type = if i == 0 { "STATIC" } else { "STRICT_DNS\n    dns_lookup_family: V4_ONLY" };
        let bootstrap = bootstrap(admin, 1, "GRPC")
            .replace(&format!("id: {NODE}"), &format!("id: {node}"))
            .replace("type: STATIC", &format!("type: {cluster_type}"))
            .replace("socket_address: { address: 127.0.0.1, port_value: 1 }", &address);
        std::env::set_var("PINION_BIN", env!("CARGO_BIN_EXE_pinion"));
        let mut proxy = ProxyProcess::spawn(ProxyKind::Pinion, &bootstrap, &["--drain-time-s", "1"]);
        proxy.wait_ready(admin, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{address}: {e:#}"));
        let r = eventually(port, Duration::from_secs(10), |r| r.0 == 200).await;
        assert_eq!(r.1, "a", "{address}");
    }
}

/// An EDS cluster with an `UpstreamTlsContext`: the mesh client certificate from `cert`/`key`
/// files, trusting `ca`, expecting `spiffe://cluster.local/ns/default/sa/server`.
fn tls_cluster(name: &str, cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Cluster {
    let mut c = eds_cluster(name);
    let t: Cluster = yaml(&format!(
        r#"
name: {name}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    common_tls_context:
      tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}]
      validation_context:
        trusted_ca: {{ filename: "{}" }}
        match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ exact: "spiffe://cluster.local/ns/default/sa/server" }} }}]
"#,
        cert.display(),
        key.display(),
        ca.display()
    ));
    c.transport_socket = t.transport_socket;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cds_tls_cluster_with_a_missing_certificate_is_nacked_and_the_old_one_keeps_serving() {
    let pki = pinion_testkit::mesh::MeshPki::new();
    let backend = pinion_testkit::mesh::spawn_tls_backend(&pki, &pki.server);
    let cp = ControlPlane::new();
    let (xds_addr, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let (port, admin) = (free_port(), free_port());
    let snapshot = |v: &str, cluster: Cluster| {
        Snapshot::new(v)
            .with_cluster(cluster)
            .with_endpoints(endpoints("mesh", &[backend.port()]))
            .with_route(route("rc", "mesh", v))
            .with_listener(listener("ingress", port, "rc"))
    };
    cp.set_snapshot(NODE, snapshot("1", tls_cluster("mesh", &pki.client.cert, &pki.client.key, &pki.ca)));
    let mut proxy = spawn_pinion(admin, xds_addr.port(), "GRPC");
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("pinion becomes ready");
    let r = eventually(port, Duration::from_secs(10), |r| r.0 == 200).await;
    assert_eq!(r.2, "1");
    assert_eq!(proxy.stat("cluster.mesh.ssl.handshake"), Some(1));

    // The control plane points the cluster at a key file that does not exist: NACK naming the
    // cluster and the file; the running cluster (and its mTLS connection) keeps serving.
    let missing = std::path::Path::new("/nonexistent/pinion/key.pem");
    cp.set_snapshot(NODE, snapshot("2", tls_cluster("mesh", &pki.client.cert, missing, &pki.ca)));
    let nacked = cp
        .wait_for(
            |reqs| {
                reqs.iter().any(|r| {
                    r.type_url.ends_with("envoy.config.cluster.v3.Cluster")
                        && r.error_detail
                            .as_ref()
                            .is_some_and(|(_, m)| m.contains("mesh") && m.contains("/nonexistent/pinion/key.pem"))
                })
            },
            Duration::from_secs(10),
        )
        .await;
    assert!(nacked, "expected a CDS NACK naming the cluster and the missing file");
    // The routes of version 2 arrived (RDS is fine); the cluster is still version 1's.
    let r = eventually(port, Duration::from_secs(10), |r| r.2 == "2").await;
    assert_eq!(r.0, 200);
    assert_eq!(proxy.stat("cluster.mesh.ssl.handshake"), Some(1));
    assert!(proxy.stat("cluster_manager.cds.update_rejected").unwrap_or(0) >= 1, "{}", proxy.stats());
}

/// `/clusters` value of `svc::<addr>::<field>`.
fn host_field(proxy: &ProxyProcess, addr: &str, field: &str) -> Option<String> {
    let (_, text) = proxy.admin_get("/clusters").ok()?;
    let prefix = format!("svc::{addr}::{field}::");
    text.lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

fn weighted_endpoints(name: &str, port: u16, weight: u32) -> ClusterLoadAssignment {
    yaml(&format!(
        "cluster_name: {name}\nendpoints:\n- lb_endpoints:\n  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n    load_balancing_weight: {weight}\n"
    ))
}

/// Poll until `pred` holds, or fail after 10s with `what`.
async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A host that stays in the cluster keeps its stats: through an EDS update that changes its
/// weight and through a CDS update that replaces the cluster. (Envoy keeps them across EDS
/// updates; Pinion also across the CDS replacement.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_stats_survive_eds_and_cds_updates() {
    let cp = ControlPlane::new();
    let (xds_addr, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let (port, admin) = (free_port(), free_port());
    let snapshot = |version: &str, cluster: Cluster, weight: u32| {
        Snapshot::new(version)
            .with_cluster(cluster)
            .with_endpoints(weighted_endpoints("svc", a.port(), weight))
            .with_route(route("rc", "svc", "v1"))
            .with_listener(listener("ingress", port, "rc"))
    };
    cp.set_snapshot(NODE, snapshot("1", eds_cluster("svc"), 1));
    let mut proxy = spawn_pinion(admin, xds_addr.port(), "GRPC");
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("pinion becomes ready");
    eventually(port, Duration::from_secs(10), |r| r.0 == 200).await;

    let host = format!("127.0.0.1:{}", a.port());
    let rq_total = |proxy: &ProxyProcess| -> u64 {
        host_field(proxy, &host, "rq_total")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no rq_total for {host}"))
    };
    let serve = |n: usize| async move {
        for _ in 0..n {
            assert_eq!(get(port).await.expect("request").0, 200);
        }
    };
    serve(3).await;
    let before = rq_total(&proxy);
    assert!(before >= 3, "{before}");

    // EDS: same address, new weight.
    cp.set_snapshot(NODE, snapshot("2", eds_cluster("svc"), 7));
    wait_for("the EDS update", || host_field(&proxy, &host, "weight").as_deref() == Some("7")).await;
    assert_eq!(rq_total(&proxy), before, "an EDS update keeps the host's rq_total");
    serve(2).await;
    assert_eq!(rq_total(&proxy), before + 2);

    // CDS: the cluster is replaced (new connect timeout); its host stays.
    let cds_before = proxy.stat("cluster_manager.cds.update_success").unwrap_or(0);
    let cluster: Cluster = yaml(
        "name: svc\ntype: EDS\nconnect_timeout: 2s\neds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }\n",
    );
    cp.set_snapshot(NODE, snapshot("3", cluster, 7));
    wait_for("the CDS update", || proxy.stat("cluster_manager.cds.update_success").unwrap_or(0) > cds_before).await;
    wait_for("the replaced cluster's hosts", || host_field(&proxy, &host, "weight").is_some()).await;
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    assert!(dump.replace(' ', "").contains("\"connect_timeout\":\"2s\""), "{dump}");
    assert_eq!(rq_total(&proxy), before + 2, "a CDS replacement keeps the host's rq_total");
    serve(2).await;
    assert_eq!(rq_total(&proxy), before + 4);
    assert_eq!(host_field(&proxy, &host, "rq_active").as_deref(), Some("0"));
}
