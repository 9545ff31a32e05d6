//! SRDS, VHDS (with the on-demand filter) and RTDS, differential: one test control plane
//! drives the real Envoy and Pinion through the same steps; after each step both must route
//! a request table identically (status and which backend answered) and ACK/NACK the same
//! types.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration, VirtualHost};
use pinion_testkit::{free_port, spawn_http_backend_named, Backend, BackendKind, ProxyKind, ProxyProcess};
use pinion_xds::control_plane::{ControlPlane, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};

const SRDS: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
const RTDS: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
const VHDS: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> M {
    message_from_str(text, Format::Yaml, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn bootstrap(node: &str, admin: u16, xds: u16, api_type: &str) -> String {
    pinion_xds::control_plane::ads_bootstrap(node, admin, ([127, 0, 0, 1], xds).into(), api_type)
        + r#"
layered_runtime:
  layers:
  - name: base
    static_layer: { routing: { canary: 0 } }
  - name: rtds
    rtds_layer: { name: rtds0, rtds_config: { ads: {}, resource_api_version: V3 } }
  - name: admin
    admin_layer: {}
"#
}

fn cluster(name: &str, port: u16) -> Cluster {
    pinion_xds::control_plane::static_cluster(name, ([127, 0, 0, 1], port).into()).unwrap()
}

fn hcm(name: &str, port: u16, route_spec: &str, filters: &[&str]) -> Listener {
    pinion_xds::control_plane::hcm_listener(name, port, name, route_spec, filters).unwrap()
}

/// One step of the script: what the control plane serves.
#[derive(Clone)]
struct Cfg {
    /// (scope name, tenant key, route config).
    scopes: Vec<(&'static str, &'static str, &'static str)>,
    /// RTDS `routing.canary` value, as YAML (a number, or something invalid).
    canary: &'static str,
    /// VHDS virtual hosts of `rc-vh`: (name, domain, cluster).
    vhosts: Vec<(&'static str, &'static str, &'static str)>,
}

fn snapshot(c: &Cfg, version: &str, ports: (u16, u16), a: &Backend, b: &Backend, api: &str) -> Snapshot {
    let scoped = "scoped_routes: { name: tenants, \
        scope_key_builder: { fragments: [{ header_value_extractor: { name: x-tenant, element_separator: \",\", index: 0 } }] }, \
        rds_config_source: { ads: {}, resource_api_version: V3 }, \
        scoped_rds: { scoped_rds_config_source: { ads: {}, resource_api_version: V3 } } }";
    // rc-a: the canary share of `/` goes to b (runtime_fraction, default 0%), the rest to a.
    let rc_a: RouteConfiguration = yaml(
        r#"
name: rc-a
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
    let rc_b: RouteConfiguration =
        yaml("name: rc-b\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: / }, route: { cluster: b } }] }]\n");
    let mut s = Snapshot::new(version)
        .with_cluster(cluster("a", a.port()))
        .with_cluster(cluster("b", b.port()))
        .with_route(rc_a)
        .with_route(rc_b)
        .with_listener(hcm("scoped", ports.0, scoped, &[]))
        .with_runtime(yaml(&format!("name: rtds0\nlayer: {{ routing: {{ canary: {} }} }}\n", c.canary)));
    for (name, key, rc) in &c.scopes {
        let sc: ScopedRouteConfiguration = yaml(&format!(
            "name: {name}\nroute_configuration_name: {rc}\nkey: {{ fragments: [{{ string_key: {key} }}] }}\n"
        ));
        s = s.with_scoped_route(sc);
    }
    if api == "DELTA_GRPC" {
        let rc_vh: RouteConfiguration = yaml(
            "name: rc-vh\nvhds: { config_source: { ads: {}, resource_api_version: V3 } }\nvirtual_hosts: [{ name: known, domains: [known.com], routes: [{ match: { prefix: / }, route: { cluster: a } }] }]\n",
        );
        let on_demand = "{ name: envoy.filters.http.on_demand, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand } }";
        let rds = "rds: { route_config_name: rc-vh, config_source: { ads: {}, resource_api_version: V3 } }";
        s = s.with_route(rc_vh).with_listener(hcm("vhds", ports.1, rds, &[on_demand]));
        for (name, domain, cl) in &c.vhosts {
            let vh: VirtualHost = yaml(&format!(
                "name: {name}\ndomains: [{domain}]\nroutes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cl} }} }}]\n"
            ));
            s = s.with_virtual_host("rc-vh", vh);
        }
    }
    s
}

/// (listener: 0 scoped / 1 vhds, host, x-tenant).
const ROWS: &[(usize, &str, Option<&str>)] = &[
    (0, "x", Some("alpha")),
    (0, "x", Some("beta")),
    (0, "x", Some("gamma")),
    (0, "x", Some("beta,alpha")),
    (0, "x", None),
    (1, "known.com", None),
    (1, "late.com", None),
    (1, "new.com", None),
];

async fn observe(port: u16, host: &str, tenant: Option<&str>) -> (u16, String) {
    let client = pinion_testkit::http1_client();
    let mut req = http::Request::get(format!("http://127.0.0.1:{port}/")).header("host", host);
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    match pinion_testkit::send(&client, req.body(pinion_testkit::empty()).unwrap()).await {
        Ok((status, headers, _)) => {
            (status.as_u16(), headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string())
        }
        Err(e) => (0, format!("error: {e}")),
    }
}

struct Side {
    node: &'static str,
    admin: u16,
    ports: (u16, u16),
    proc: ProxyProcess,
}

async fn table(side: &Side, delta: bool) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for (l, host, tenant) in ROWS {
        if *l == 1 && !delta {
            continue;
        }
        let port = if *l == 0 { side.ports.0 } else { side.ports.1 };
        out.push(observe(port, host, *tenant).await);
    }
    out
}

fn nacks(cp: &ControlPlane, node: &str, url: &str) -> usize {
    cp.nacks(url).iter().filter(|r| r.node_id == node).count()
}

/// The two runs share the machine (2 cores); run them one after the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(api: &str) {
    let _serial = SERIAL.lock().await;
    let delta = api == "DELTA_GRPC";
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let a = spawn_http_backend_named(BackendKind::Http1, "a");
    let b = spawn_http_backend_named(BackendKind::Http1, "b");
    let steps: Vec<(&str, Cfg)> = vec![
        (
            "initial: alpha->rc-a, beta->rc-b, canary 0%, VHDS late.com",
            Cfg {
                scopes: vec![("sa", "alpha", "rc-a"), ("sb", "beta", "rc-b")],
                canary: "0",
                vhosts: vec![("late", "late.com", "b")],
            },
        ),
        (
            "RTDS: canary 100%",
            Cfg {
                scopes: vec![("sa", "alpha", "rc-a"), ("sb", "beta", "rc-b")],
                canary: "100",
                vhosts: vec![("late", "late.com", "b")],
            },
        ),
        (
            "SRDS: beta removed, gamma added, VHDS new.com added",
            Cfg {
                scopes: vec![("sa", "alpha", "rc-a"), ("sg", "gamma", "rc-b")],
                canary: "100",
                vhosts: vec![("late", "late.com", "b"), ("new", "new.com", "a")],
            },
        ),
        (
            "SRDS: a scope key conflict beside a valid new scope (the whole update is NACKed)",
            Cfg {
                scopes: vec![
                    ("sa", "alpha", "rc-a"),
                    ("sg", "gamma", "rc-b"),
                    ("sz", "gamma", "rc-a"),
                    ("sb", "beta", "rc-a"),
                ],
                canary: "100",
                vhosts: vec![("late", "late.com", "b"), ("new", "new.com", "a")],
            },
        ),
        (
            "RTDS: a list value (NACK, last good kept); VHDS late.com removed",
            Cfg {
                scopes: vec![("sa", "alpha", "rc-a"), ("sg", "gamma", "rc-b")],
                canary: "[1, 2]",
                vhosts: vec![("new", "new.com", "a")],
            },
        ),
    ];
    let mut sides: Vec<(ProxyKind, Side)> = Vec::new();
    for (kind, node) in [(ProxyKind::Envoy, "envoy-node"), (ProxyKind::Pinion, "pinion-node")] {
        let (admin, ports) = (free_port(), (free_port(), free_port()));
        cp.set_snapshot(node, snapshot(&steps[0].1, "1", ports, &a, &b, api));
        let proc = ProxyProcess::spawn(kind, &bootstrap(node, admin, xds.port(), api), &["--drain-time-s", "1"]);
        sides.push((kind, Side { node, admin, ports, proc }));
    }
    for (kind, s) in sides.iter_mut() {
        if let Err(e) = s.proc.wait_ready(s.admin, Duration::from_secs(20)) {
            panic!("[{api}] {kind} not ready: {e:#}");
        }
    }
    for (i, (what, cfg)) in steps.iter().enumerate() {
        let version = (i + 1).to_string();
        if i > 0 {
            for (_, s) in &sides {
                cp.set_snapshot(s.node, snapshot(cfg, &version, s.ports, &a, &b, api));
            }
        }
        // Settle: poll until both tables agree and stop changing (bounded), then compare.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut envoy, mut pinion) = (Vec::new(), Vec::new());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            envoy = table(&sides[0].1, delta).await;
            pinion = table(&sides[1].1, delta).await;
            let envoy_again = table(&sides[0].1, delta).await;
            if envoy == pinion && envoy == envoy_again {
                break;
            }
        }
        assert_eq!(
            envoy, pinion,
            "[{api}] step {version} ({what}): Envoy and Pinion route differently\nrows: {ROWS:?}\nVHDS requests: {:#?}\nEnvoy logs:\n{}\nPinion logs:\n{}",
            cp.requests().iter().filter(|r| r.type_url == VHDS).map(|r| (r.node_id.clone(), r.resource_names.clone(), r.unsubscribe.clone(), r.response_nonce.clone(), r.error_detail.clone())).collect::<Vec<_>>(),
            sides[0].1.proc.logs(),
            sides[1].1.proc.logs()
        );
        for url in [SRDS, RTDS, VHDS] {
            let (e, p) = (nacks(&cp, sides[0].1.node, url), nacks(&cp, sides[1].1.node, url));
            assert_eq!(e, p, "[{api}] step {version} ({what}): NACKs of {url}: Envoy {e}, Pinion {p}");
        }
        // Expectations, so that "both wrong the same way" cannot pass.
        let t = &pinion;
        match i {
            0 => {
                assert_eq!(
                    &t[..5],
                    &[(200, "a".into()), (200, "b".into()), (404, "".into()), (200, "b".into()), (404, "".into())]
                );
            }
            1 => assert_eq!(t[0], (200, "b".into()), "canary 100% sends alpha to b"),
            2 => assert_eq!((t[1].0, t[2].clone()), (404, (200, "b".into()))),
            3 => {
                assert_eq!(nacks(&cp, sides[1].1.node, SRDS), 1);
                assert_eq!(t[1].0, 404, "beta came in the rejected update: not applied");
            }
            _ => assert_eq!(nacks(&cp, sides[1].1.node, RTDS), 1),
        }
        if delta {
            match i {
                0 => assert_eq!(&t[5..], &[(200, "a".into()), (200, "b".into()), (404, "".into())]),
                2 => assert_eq!(t[7], (200, "a".into()), "new.com arrived over VHDS"),
                4 => assert_eq!(t[6].0, 404, "late.com removed"),
                _ => {}
            }
        }
    }
    if delta {
        // Both asked for new.com on demand before it existed.
        for (_, s) in &sides {
            let asked = cp.requests().iter().any(|r| {
                r.node_id == s.node && r.type_url == VHDS && r.resource_names.iter().any(|n| n == "rc-vh/new.com")
            });
            assert!(asked, "{} subscribed rc-vh/new.com on demand", s.node);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srds_rtds_differential_sotw() {
    run("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srds_vhds_rtds_differential_delta() {
    run("DELTA_GRPC").await;
}
