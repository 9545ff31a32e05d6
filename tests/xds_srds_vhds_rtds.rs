//! The xDS types real control planes serve beside LDS/RDS/CDS/EDS, end to end through the
//! `pinion` binary: scoped routes (SRDS, keyed on a request header), virtual hosts (VHDS,
//! merged into their route configuration and fetched on demand) and runtime layers (RTDS,
//! driving a route's `runtime_fraction`, with the admin layer on top).

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::service::runtime::v3::Runtime;
use pinion_testkit::{free_port, spawn_http_backend_named, BackendKind, ProxyKind, ProxyProcess};
use pinion_xds::control_plane::{ControlPlane, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};

const NODE: &str = "sidecar-1";

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> M {
    message_from_str(text, Format::Yaml, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn static_cluster(name: &str, port: u16) -> Cluster {
    pinion_xds::control_plane::static_cluster(name, ([127, 0, 0, 1], port).into()).unwrap()
}

fn all_to(name: &str, cluster: &str) -> RouteConfiguration {
    yaml(&format!(
        "name: {name}\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}]\n"
    ))
}

fn hcm_listener(port: u16, route_spec: &str, filters: &[&str]) -> Listener {
    pinion_xds::control_plane::hcm_listener("ingress", port, "ingress", route_spec, filters).unwrap()
}

fn scope(name: &str, key: &str, rc: &str) -> ScopedRouteConfiguration {
    yaml(&format!("name: {name}\nroute_configuration_name: {rc}\nkey: {{ fragments: [{{ string_key: {key} }}] }}\n"))
}

/// GET / with `host` and optional `x-tenant`; returns (status, x-backend).
async fn get(port: u16, host: &str, tenant: Option<&str>) -> anyhow::Result<(u16, String)> {
    let client = pinion_testkit::http1_client();
    let mut req = http::Request::get(format!("http://127.0.0.1:{port}/")).header("host", host);
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    let (status, headers, _) = pinion_testkit::send(&client, req.body(pinion_testkit::empty())?).await?;
    let backend = headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Ok((status.as_u16(), backend))
}

async fn eventually(port: u16, host: &str, tenant: Option<&str>, want: (u16, &str)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(r) = get(port, host, tenant).await {
            if r.0 == want.0 && r.1 == want.1 {
                return;
            }
            last = Some(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("host {host} tenant {tenant:?}: wanted {want:?}, last {last:?}");
}

fn spawn_pinion(bootstrap: &str) -> ProxyProcess {
    std::env::set_var("PINION_BIN", env!("CARGO_BIN_EXE_pinion"));
    ProxyProcess::spawn(ProxyKind::Pinion, bootstrap, &["--drain-time-s", "1"])
}

async fn scoped_routes_follow_srds(api_type: &str) {
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let (port, admin) = (free_port(), free_port());
    let route_spec = "scoped_routes: { name: tenants, \
        scope_key_builder: { fragments: [{ header_value_extractor: { name: x-tenant, index: 0 } }] }, \
        rds_config_source: { ads: {}, resource_api_version: V3 }, \
        scoped_rds: { scoped_rds_config_source: { ads: {}, resource_api_version: V3 } } }";
    let base = |v: &str| {
        Snapshot::new(v)
            .with_cluster(static_cluster("a", a.port()))
            .with_cluster(static_cluster("b", b.port()))
            .with_route(all_to("rc-a", "a"))
            .with_route(all_to("rc-b", "b"))
            .with_listener(hcm_listener(port, route_spec, &[]))
    };
    cp.set_snapshot(
        NODE,
        base("1").with_scoped_route(scope("sa", "alpha", "rc-a")).with_scoped_route(scope("sb", "beta", "rc-b")),
    );
    let mut proxy = spawn_pinion(&pinion_xds::control_plane::ads_bootstrap(NODE, admin, xds, api_type));
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("ready once scopes and their routes are in");

    // Ready means warm: the very first request routes by scope.
    assert_eq!(get(port, "x", Some("alpha")).await.unwrap(), (200, "a".into()));
    assert_eq!(get(port, "x", Some("beta")).await.unwrap(), (200, "b".into()));
    // No key (header absent) or no scope for the key: no route (Envoy: 404).
    assert_eq!(get(port, "x", None).await.unwrap().0, 404);
    assert_eq!(get(port, "x", Some("gamma")).await.unwrap().0, 404);

    // SRDS update: alpha moves to rc-b, beta is removed, gamma is added.
    cp.set_snapshot(
        NODE,
        base("2").with_scoped_route(scope("sa", "alpha", "rc-b")).with_scoped_route(scope("sg", "gamma", "rc-a")),
    );
    eventually(port, "x", Some("alpha"), (200, "b")).await;
    eventually(port, "x", Some("beta"), (404, "")).await;
    eventually(port, "x", Some("gamma"), (200, "a")).await;

    // A scope whose key collides with another's is NACKed; the last good scopes keep serving.
    cp.set_snapshot(
        NODE,
        base("3")
            .with_scoped_route(scope("sa", "alpha", "rc-b"))
            .with_scoped_route(scope("sg", "gamma", "rc-a"))
            .with_scoped_route(scope("sz", "alpha", "rc-a")),
    );
    let url = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    assert!(
        cp.wait_for(|r| r.iter().any(|r| r.type_url == url && r.is_nack()), Duration::from_secs(10)).await,
        "the colliding scope is NACKed"
    );
    let nack = cp.nacks(url).pop().unwrap();
    assert!(nack.error_detail.as_ref().unwrap().1.contains("scope key conflict"), "{nack:?}");
    assert_eq!(get(port, "x", Some("alpha")).await.unwrap(), (200, "b".into()));
    assert!(proxy.stat("srds.update_rejected").unwrap_or(0) >= 1, "{}", proxy.stats());
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    assert!(dump.contains("dynamic_scoped_route_configs") && dump.contains("\"gamma\""), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_routes_follow_srds_sotw() {
    scoped_routes_follow_srds("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_routes_follow_srds_delta() {
    scoped_routes_follow_srds("DELTA_GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhds_merges_virtual_hosts_and_fetches_on_demand() {
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let (port, admin) = (free_port(), free_port());
    let rc: RouteConfiguration = yaml(
        r#"
name: rc
vhds: { config_source: { ads: {}, resource_api_version: V3 } }
virtual_hosts:
- name: known
  domains: [known.com]
  routes: [{ match: { prefix: / }, route: { cluster: a } }]
"#,
    );
    let vhost = |name: &str, domain: &str, cluster: &str| -> VirtualHost {
        yaml(&format!(
            "name: {name}\ndomains: [{domain}]\nroutes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}]\n"
        ))
    };
    let on_demand = "{ name: envoy.filters.http.on_demand, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand } }";
    let route_spec = "rds: { route_config_name: rc, config_source: { ads: {}, resource_api_version: V3 } }";
    let base = |v: &str| {
        Snapshot::new(v)
            .with_cluster(static_cluster("a", a.port()))
            .with_cluster(static_cluster("b", b.port()))
            .with_route(rc.clone())
            .with_listener(hcm_listener(port, route_spec, &[on_demand]))
    };
    cp.set_snapshot(NODE, base("1").with_virtual_host("rc", vhost("late", "late.com", "b")));
    let mut proxy = spawn_pinion(&pinion_xds::control_plane::ads_bootstrap(NODE, admin, xds, "DELTA_GRPC"));
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("ready");

    // RDS's own virtual host, and one delivered by VHDS for the route config (namespace match).
    assert_eq!(get(port, "known.com", None).await.unwrap(), (200, "a".into()));
    eventually(port, "late.com", None, (200, "b")).await;

    // An unknown host: the on-demand filter asks VHDS for `rc/new.com`; the control plane has
    // nothing, answers with an empty resource, and the waiting request ends promptly with 404.
    let vh_url = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
    let started = Instant::now();
    assert_eq!(get(port, "new.com", None).await.unwrap().0, 404);
    assert!(started.elapsed() < Duration::from_secs(4), "the empty VHDS answer ends the wait: {:?}", started.elapsed());
    let asked =
        cp.requests().iter().any(|r| r.type_url == vh_url && r.resource_names.iter().any(|n| n == "rc/new.com"));
    assert!(asked, "on-demand subscription for rc/new.com: {:#?}", cp.requests());

    // The control plane learns of new.com: pushed to the subscriber, it routes.
    cp.set_snapshot(
        NODE,
        base("2")
            .with_virtual_host("rc", vhost("late", "late.com", "b"))
            .with_virtual_host("rc", vhost("new", "new.com", "a")),
    );
    eventually(port, "new.com", None, (200, "a")).await;
    // A removed VHDS virtual host stops routing; RDS's own stays.
    cp.set_snapshot(NODE, base("3").with_virtual_host("rc", vhost("new", "new.com", "a")));
    eventually(port, "late.com", None, (404, "")).await;
    assert_eq!(get(port, "known.com", None).await.unwrap(), (200, "a".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhds_needs_delta_xds() {
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let (port, admin) = (free_port(), free_port());
    let rc: RouteConfiguration = yaml(
        "name: rc\nvhds: { config_source: { ads: {}, resource_api_version: V3 } }\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }]\n",
    );
    let route_spec = "rds: { route_config_name: rc, config_source: { ads: {}, resource_api_version: V3 } }";
    cp.set_snapshot(
        NODE,
        Snapshot::new("1").with_cluster(static_cluster("a", a.port())).with_route(rc).with_listener(hcm_listener(
            port,
            route_spec,
            &[],
        )),
    );
    let _proxy = spawn_pinion(&pinion_xds::control_plane::ads_bootstrap(NODE, admin, xds, "GRPC"));
    let url = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    assert!(cp.wait_for(|r| r.iter().any(|r| r.type_url == url && r.is_nack()), Duration::from_secs(20)).await);
    let nack = cp.nacks(url).pop().unwrap();
    assert!(nack.error_detail.unwrap().1.contains("ADS must use DELTA_GRPC"));
}

async fn rtds_drives_runtime_fraction(api_type: &str) {
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let (port, admin) = (free_port(), free_port());
    let rc: RouteConfiguration = yaml(
        r#"
name: rc
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: /, runtime_fraction: { default_value: { numerator: 0 }, runtime_key: routing.canary } }
    route: { cluster: b }
  - match: { prefix: / }
    route: { cluster: a }
"#,
    );
    let route_spec = "rds: { route_config_name: rc, config_source: { ads: {}, resource_api_version: V3 } }";
    let base = |v: &str| {
        Snapshot::new(v)
            .with_cluster(static_cluster("a", a.port()))
            .with_cluster(static_cluster("b", b.port()))
            .with_route(rc.clone())
            .with_listener(hcm_listener(port, route_spec, &[]))
    };
    let layer =
        |pct: u32| -> Runtime { yaml(&format!("name: rtds0\nlayer: {{ routing: {{ canary: {pct} }}, other: x }}\n")) };
    cp.set_snapshot(NODE, base("1").with_runtime(layer(0)));
    let bootstrap = pinion_xds::control_plane::ads_bootstrap(NODE, admin, xds, api_type)
        + r#"
layered_runtime:
  layers:
  - name: base
    static_layer: { routing: { canary: 0 }, base_only: 7 }
  - name: rtds
    rtds_layer: { name: rtds0, rtds_config: { ads: {}, resource_api_version: V3 } }
  - name: admin
    admin_layer: {}
"#;
    let mut proxy = spawn_pinion(&bootstrap);
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("ready once RTDS answered");
    for _ in 0..20 {
        assert_eq!(get(port, "x", None).await.unwrap(), (200, "a".into()), "0%: never the canary");
    }
    // RTDS raises the canary share to 100%.
    cp.set_snapshot(NODE, base("2").with_runtime(layer(100)));
    eventually(port, "x", None, (200, "b")).await;
    for _ in 0..20 {
        assert_eq!(get(port, "x", None).await.unwrap(), (200, "b".into()), "100%: always the canary");
    }
    let (_, rt) = proxy.admin_get("/runtime").unwrap();
    let v: serde_json::Value = serde_json::from_str(&rt).unwrap();
    assert_eq!(v["layers"], serde_json::json!(["base", "rtds", "admin"]));
    assert_eq!(v["entries"]["routing.canary"]["final_value"], "100");
    assert_eq!(v["entries"]["routing.canary"]["layer_values"], serde_json::json!(["0", "100", ""]));
    assert_eq!(v["entries"]["base_only"]["final_value"], "7");
    assert_eq!(proxy.stat("runtime.num_layers"), Some(3));

    // The admin layer overrides RTDS; an empty value removes the override again.
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let post = |q: &str| {
        let mut s = std::net::TcpStream::connect(admin_addr).unwrap();
        use std::io::{Read, Write};
        write!(s, "POST /runtime_modify?{q} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(post("routing.canary=0").starts_with("HTTP/1.1 200"));
    eventually(port, "x", None, (200, "a")).await;
    assert_eq!(proxy.stat("runtime.admin_overrides_active"), Some(1));
    assert!(post("routing.canary=").starts_with("HTTP/1.1 200"));
    eventually(port, "x", None, (200, "b")).await;

    // A bad layer (a list value) is NACKed and the last good layer stays.
    let bad: Runtime = yaml("name: rtds0\nlayer: { routing: { canary: [1, 2] } }\n");
    cp.set_snapshot(NODE, base("3").with_runtime(bad));
    let url = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    assert!(cp.wait_for(|r| r.iter().any(|r| r.type_url == url && r.is_nack()), Duration::from_secs(10)).await);
    assert_eq!(get(port, "x", None).await.unwrap(), (200, "b".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_drives_runtime_fraction_sotw() {
    rtds_drives_runtime_fraction("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_drives_runtime_fraction_delta() {
    rtds_drives_runtime_fraction("DELTA_GRPC").await;
}

/// A bootstrap with only `ads_config` whose static listener takes routes from RDS and whose
/// static cluster takes endpoints from EDS (Envoy accepts both): ready once both arrived,
/// then following RDS and EDS updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_resources_with_rds_and_eds_over_ads() {
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let (port, admin) = (free_port(), free_port());
    let cla = |p: u16| -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
        yaml(&format!(
            "cluster_name: svc\nendpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}] }}]\n"
        ))
    };
    let rc = |header: &str| -> RouteConfiguration {
        yaml(&format!(
            "name: rc\nvirtual_hosts: [{{ name: all, domains: ['*'], response_headers_to_add: [{{ header: {{ key: x-rc, value: {header} }} }}], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: svc }} }}] }}]\n"
        ))
    };
    cp.set_snapshot(NODE, Snapshot::new("1").with_route(rc("v1")).with_endpoints(cla(a.port())));
    let full = pinion_xds::control_plane::ads_bootstrap(NODE, admin, xds, "GRPC");
    // Keep ads_config and the xds cluster; drop lds_config/cds_config; add the static pair.
    let base: String =
        full.lines().filter(|l| !l.contains("lds_config") && !l.contains("cds_config")).collect::<Vec<_>>().join("\n");
    let bootstrap = base.replace(
        "static_resources:\n  clusters:\n",
        &format!(
            r#"static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          rds: {{ route_config_name: rc, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: svc
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
"#
        ),
    );
    assert!(bootstrap.contains("type: EDS") && !bootstrap.contains("lds_config"), "{bootstrap}");
    let mut proxy = spawn_pinion(&bootstrap);
    proxy.wait_ready(admin, Duration::from_secs(20)).expect("ready once RDS and EDS arrived");
    let client = pinion_testkit::http1_client();
    let req = || http::Request::get(format!("http://127.0.0.1:{port}/")).body(pinion_testkit::empty()).unwrap();
    let (status, headers, _) = pinion_testkit::send(&client, req()).await.unwrap();
    assert_eq!((status.as_u16(), headers.get("x-rc").unwrap().to_str().unwrap()), (200, "v1"));
    assert_eq!(headers.get("x-backend").unwrap(), "a");
    // Only RDS and EDS were asked for: no LDS/CDS subscription.
    let types: std::collections::BTreeSet<String> = cp.requests().iter().map(|r| r.type_url.clone()).collect();
    assert!(
        types.iter().all(|t| t.ends_with("RouteConfiguration") || t.ends_with("ClusterLoadAssignment")),
        "{types:?}"
    );

    cp.set_snapshot(NODE, Snapshot::new("2").with_route(rc("v2")).with_endpoints(cla(b.port())));
    eventually(port, "x", None, (200, "b")).await;
    let (_, headers, _) = pinion_testkit::send(&client, req()).await.unwrap();
    assert_eq!(headers.get("x-rc").unwrap(), "v2");
    assert!(proxy.stat("cluster.svc.update_success").unwrap_or(0) >= 2, "{}", proxy.stats());
}
