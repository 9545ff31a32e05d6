//! Differential xDS test: ONE in-process control plane (`pinion_xds::control_plane`) drives the
//! real Envoy and Pinion at the same time, each with its own node id (`envoy-node`,
//! `pinion-node`) and the same bootstrap (`bootstraps/xds_differential.yaml`, only node id and
//! ports differ). Both nodes get the same snapshot content; the only per-node difference is the
//! listener's port.
//!
//! The script (see [`script`]) walks through 12 snapshots: initial EDS/RDS config, endpoint
//! change, weight shift, route add, header mutation change, cluster add, cluster removal (routes
//! to a missing cluster), listener replacement (new stat prefix, server name and route config
//! name), an invalid route configuration, recovery, a snapshot whose CDS response carries one
//! invalid cluster next to a new valid one, and recovery. After each step the test waits (bounded)
//! until both proxies have answered (ACK or NACK) what the control plane sent, then:
//! - compares the ACK/NACK record per type (which versions were ACKed, which NACKed) and the
//!   RDS/EDS subscription sets of both proxies;
//! - sends the same small request table over HTTP/1.1 to both (each request on a new
//!   connection) and compares status, `x-backend`, selected headers and what the backend saw;
//! - checks the step's own expectations against both, so the script is verified against Envoy.
//!
//! The whole script runs once over ADS SotW (`api_type: GRPC`) and once over ADS Delta
//! (`DELTA_GRPC`). `INTEROP_VERBOSE=1` prints every request's observation.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use http::{HeaderMap, Request};
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    empty, free_port, http1_client_to, send_full, spawn_http_backend_named, Backend, BackendKind, ProxyKind,
    ProxyProcess,
};
use pinion_xds::control_plane::{ControlPlane, RecordedRequest, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use pinion_xds::sink::ResourceType;
use serde_json::Value;

const ENVOY_NODE: &str = "envoy-node";
const PINION_NODE: &str = "pinion-node";
/// Every type the script serves, in Envoy's request order.
const TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::ClusterLoadAssignment,
    ResourceType::Listener,
    ResourceType::RouteConfiguration,
];
/// Bound for one step's xDS exchange to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A step has settled once nothing new reached the control plane for this long.
const QUIET: Duration = Duration::from_millis(300);
/// How long a step waits for the two proxies' subscription sets to agree once answers are in.
const SUBSCRIPTION_GRACE: Duration = Duration::from_secs(3);
/// Both proxies drain replaced listeners this fast (same flag for both).
const DRAIN_TIME_S: &str = "1";

/// Values or behaviours that legitimately differ between the two proxies, and why.
const DELIBERATE_DIFFERENCES: &[(&str, &str)] = &[
    (
        "NACK error_detail message text",
        "each proxy words its own errors; ACK vs NACK, the version and the status code are compared (both \
         messages are printed)",
    ),
    (
        "number of ACKs per type within a step",
        "a proxy may re-request (and so re-ACK) a type when its RDS/EDS subscription set changes at a \
         slightly different moment; the set of ACKed/NACKed versions is compared, the counts are printed",
    ),
    ("response `date`, `x-envoy-upstream-service-time`", "wall-clock values: only their presence is compared"),
    ("upstream `x-request-id`", "random UUID per request: only its presence is compared"),
    (
        "xDS stats under `http.*.rds.*` and `cluster.*.` (EDS)",
        "Pinion aggregates RDS/EDS update counters per type instead of per route config / cluster; only \
         `listener_manager.lds.*`, `cluster_manager.cds.*` and `control_plane.connected_state` are compared",
    ),
];

// ---------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> M {
    message_from_str(text, Format::Yaml, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// What the control plane serves in one step (for both nodes, apart from the listener port).
#[derive(Clone, Debug)]
struct Cfg {
    /// EDS clusters and the backends (by name) of their endpoints.
    clusters: BTreeMap<&'static str, Vec<&'static str>>,
    /// A cluster served with a negative `connect_timeout` (invalid for both proxies).
    broken_cluster: Option<&'static str>,
    /// Clusters served with `connect_timeout: 2s` instead of 1s (forces a re-send).
    slow_connect: BTreeSet<&'static str>,
    /// Weights of alpha and beta on `/weighted`.
    weights: (u32, u32),
    /// Routes `x-canary: yes` -> beta and `/beta` -> beta.
    beta_routes: bool,
    /// Route `/gamma` -> gamma.
    gamma_route: bool,
    /// Route `/omega` -> omega.
    omega_route: bool,
    /// Value of the virtual host's `x-req-version` / `x-vh-version` headers.
    header_version: &'static str,
    /// The virtual host removes `x-drop-me` from requests.
    strip_header: bool,
    /// The replaced listener: stat prefix `ingress_v8`, server name `xds-v8`, RDS `rc2` (with `/v8`).
    listener_v2: bool,
    /// The main virtual host repeats the domain of the `api` one (invalid for both proxies).
    duplicate_domain: bool,
}

impl Cfg {
    fn initial() -> Self {
        Cfg {
            clusters: [("alpha", vec!["alpha-1"]), ("beta", vec!["beta"])].into_iter().collect(),
            broken_cluster: None,
            slow_connect: BTreeSet::new(),
            weights: (100, 0),
            beta_routes: false,
            gamma_route: false,
            omega_route: false,
            header_version: "v1",
            strip_header: false,
            listener_v2: false,
            duplicate_domain: false,
        }
    }

    fn rds_name(&self) -> &'static str {
        if self.listener_v2 {
            "rc2"
        } else {
            "rc"
        }
    }
}

fn cluster(name: &str, connect_timeout: &str) -> Cluster {
    yaml(&format!(
        "name: {name}\ntype: EDS\nconnect_timeout: {connect_timeout}\n\
         eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
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

fn route_config(c: &Cfg) -> RouteConfiguration {
    let name = c.rds_name();
    let route = |m: &str, action: &str, tag: &str| {
        format!(
            "  - match: {m}\n    route: {action}\n    \
             response_headers_to_add: [{{ header: {{ key: x-route, value: {tag} }} }}]\n"
        )
    };
    let mut routes = String::new();
    if c.beta_routes {
        routes += &route(
            r#"{ prefix: "/", headers: [{ name: x-canary, string_match: { exact: "yes" } }] }"#,
            "{ cluster: beta }",
            "canary",
        );
        routes += &route(r#"{ prefix: "/beta" }"#, "{ cluster: beta }", "beta");
    }
    if c.gamma_route {
        routes += &route(r#"{ prefix: "/gamma" }"#, "{ cluster: gamma }", "gamma");
    }
    if c.omega_route {
        routes += &route(r#"{ prefix: "/omega" }"#, "{ cluster: omega }", "omega");
    }
    if c.listener_v2 {
        routes += &route(r#"{ prefix: "/v8" }"#, r#"{ cluster: alpha, prefix_rewrite: "/rewritten" }"#, "v8");
    }
    let (wa, wb) = c.weights;
    routes += &route(
        r#"{ prefix: "/weighted" }"#,
        &format!("{{ weighted_clusters: {{ clusters: [{{ name: alpha, weight: {wa} }}, {{ name: beta, weight: {wb} }}] }} }}"),
        "weighted",
    );
    routes += &route(r#"{ prefix: "/" }"#, "{ cluster: alpha }", "default");
    let strip = if c.strip_header { "  request_headers_to_remove: [x-drop-me]\n" } else { "" };
    let dup = if c.duplicate_domain { r#", "api.example.com""# } else { "" };
    let hv = c.header_version;
    yaml(&format!(
        r#"
name: {name}
response_headers_to_add: [{{ header: {{ key: x-rc, value: {name} }} }}]
virtual_hosts:
- name: api
  domains: ["api.example.com"]
  routes:
  - match: {{ prefix: "/api" }}
    route: {{ cluster: alpha }}
    response_headers_to_add: [{{ header: {{ key: x-route, value: api }} }}]
- name: main
  domains: ["*"{dup}]
  request_headers_to_add: [{{ header: {{ key: x-req-version, value: {hv} }} }}]
  response_headers_to_add: [{{ header: {{ key: x-vh-version, value: {hv} }} }}]
{strip}  routes:
{routes}"#
    ))
}

fn listener(c: &Cfg, port: u16) -> Listener {
    let (stat_prefix, server_name) = if c.listener_v2 { ("ingress_v8", "xds-v8") } else { ("ingress", "xds-v1") };
    let rds = c.rds_name();
    yaml(&format!(
        r#"
name: ingress
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {stat_prefix}
      server_name: {server_name}
      rds: {{ route_config_name: {rds}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
}

/// The snapshot for one node: `c` with the listener on `listen_port`.
fn snapshot(c: &Cfg, version: &str, listen_port: u16, backends: &BTreeMap<&'static str, Backend>) -> Snapshot {
    let mut s = Snapshot::new(version);
    for (name, eps) in &c.clusters {
        let mut cl = cluster(name, if c.slow_connect.contains(name) { "2s" } else { "1s" });
        if c.broken_cluster == Some(*name) {
            cl.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: -1, nanos: 0 });
        }
        let ports: Vec<u16> = eps.iter().map(|b| backends[b].port()).collect();
        s = s.with_cluster(cl).with_endpoints(endpoints(name, &ports));
    }
    s.with_route(route_config(c)).with_listener(listener(c, listen_port))
}

// ---------------------------------------------------------------------------------
// The script and the request table
// ---------------------------------------------------------------------------------

/// One scripted snapshot.
struct Step {
    name: &'static str,
    what: &'static str,
    change: fn(&mut Cfg),
    /// Types both proxies must NACK in this step (every other answer must be an ACK).
    nacked: &'static [ResourceType],
    /// (row, key, value) checked against both proxies. Keys: `status`, `resp:<header>`,
    /// `up.path`, `up:<header>` (as the backend saw it). Values: exact, or `<absent>`.
    expect: &'static [(&'static str, &'static str, &'static str)],
}

fn script() -> Vec<Step> {
    vec![
        Step {
            name: "initial",
            what: "EDS clusters alpha[alpha-1] + beta[beta] with CLAs, RDS rc, listener ingress",
            change: |_| {},
            nacked: &[],
            expect: &[
                ("root", "resp:x-backend", "alpha-1"),
                ("root", "resp:x-route", "default"),
                ("root", "resp:x-vh-version", "v1"),
                ("root", "resp:server", "xds-v1"),
                ("weighted", "resp:x-backend", "alpha-1"),
                ("beta", "resp:x-route", "default"),
                ("canary", "resp:x-backend", "alpha-1"),
                ("strip", "up:x-drop-me", "1"),
                ("api", "resp:x-route", "api"),
                ("api-miss", "status", "404"),
            ],
        },
        Step {
            name: "endpoint-change",
            what: "alpha's endpoint moves from alpha-1 to alpha-2",
            change: |c| {
                c.clusters.insert("alpha", vec!["alpha-2"]);
            },
            nacked: &[],
            expect: &[("root", "resp:x-backend", "alpha-2"), ("weighted", "resp:x-backend", "alpha-2")],
        },
        Step {
            name: "weight-shift",
            what: "/weighted alpha/beta 100/0 -> 0/100",
            change: |c| c.weights = (0, 100),
            nacked: &[],
            expect: &[("weighted", "resp:x-backend", "beta"), ("root", "resp:x-backend", "alpha-2")],
        },
        Step {
            name: "route-add",
            what: "routes added: header x-canary: yes -> beta, /beta -> beta",
            change: |c| c.beta_routes = true,
            nacked: &[],
            expect: &[
                ("beta", "resp:x-backend", "beta"),
                ("beta", "resp:x-route", "beta"),
                ("canary", "resp:x-route", "canary"),
                ("root", "resp:x-route", "default"),
            ],
        },
        Step {
            name: "header-mutation",
            what: "vhost header values v1 -> v5, and x-drop-me now removed from requests",
            change: |c| {
                c.header_version = "v5";
                c.strip_header = true;
            },
            nacked: &[],
            expect: &[
                ("root", "resp:x-vh-version", "v5"),
                ("root", "up:x-req-version", "v5"),
                ("strip", "up:x-drop-me", "<absent>"),
            ],
        },
        Step {
            name: "cluster-add",
            what: "new EDS cluster gamma[gamma] and route /gamma -> gamma",
            change: |c| {
                c.clusters.insert("gamma", vec!["gamma"]);
                c.gamma_route = true;
            },
            nacked: &[],
            expect: &[("gamma", "resp:x-backend", "gamma"), ("gamma", "resp:x-route", "gamma")],
        },
        Step {
            name: "cluster-remove",
            what: "cluster beta and its CLA removed: /beta, canary and /weighted (0/100) route to a missing cluster",
            change: |c| {
                c.clusters.remove("beta");
            },
            nacked: &[],
            expect: &[
                ("beta", "status", "503"),
                ("canary", "status", "503"),
                ("weighted", "status", "503"),
                ("gamma", "resp:x-backend", "gamma"),
                ("root", "resp:x-backend", "alpha-2"),
            ],
        },
        Step {
            name: "listener-replace",
            what: "listener ingress replaced: stat_prefix ingress_v8, server_name xds-v8, RDS rc -> rc2 (adds /v8)",
            change: |c| c.listener_v2 = true,
            nacked: &[],
            expect: &[
                ("v8", "resp:x-backend", "alpha-2"),
                ("v8", "up.path", "/rewritten/x?q=1"),
                ("root", "resp:server", "xds-v8"),
                ("root", "resp:x-rc", "rc2"),
                ("gamma", "resp:x-backend", "gamma"),
            ],
        },
        Step {
            name: "invalid-route",
            what: "rc2 with a duplicate domain (api.example.com twice) and header value v9: NACKed, v8's rc2 keeps serving",
            change: |c| {
                c.duplicate_domain = true;
                c.header_version = "v9";
            },
            nacked: &[ResourceType::RouteConfiguration],
            expect: &[("root", "resp:x-vh-version", "v5"), ("api", "resp:x-route", "api")],
        },
        Step {
            name: "route-recovery",
            what: "valid rc2 again, header value v10",
            change: |c| {
                c.duplicate_domain = false;
                c.header_version = "v10";
            },
            nacked: &[],
            expect: &[("root", "resp:x-vh-version", "v10"), ("root", "up:x-req-version", "v10")],
        },
        Step {
            name: "invalid-cluster",
            what: "gamma gets a negative connect_timeout while new cluster omega[omega] and /omega are added: \
                   the whole CDS response is NACKed, so omega does not exist (503) and gamma keeps serving",
            change: |c| {
                c.broken_cluster = Some("gamma");
                c.clusters.insert("omega", vec!["omega"]);
                c.omega_route = true;
            },
            nacked: &[ResourceType::Cluster],
            expect: &[
                ("omega", "status", "503"),
                ("omega", "resp:x-route", "omega"),
                ("gamma", "resp:x-backend", "gamma"),
            ],
        },
        Step {
            name: "cluster-recovery",
            what: "gamma valid again; omega re-sent (connect_timeout 2s, so Delta sends it again too)",
            change: |c| {
                c.broken_cluster = None;
                c.slow_connect.insert("omega");
            },
            nacked: &[],
            expect: &[("omega", "resp:x-backend", "omega"), ("gamma", "resp:x-backend", "gamma")],
        },
    ]
}

/// One request of the table.
struct Row {
    name: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const WWW: &str = "www.example.com";
const API: &str = "api.example.com";

const ROWS: &[Row] = &[
    Row { name: "root", authority: WWW, path: "/", headers: &[] },
    Row { name: "weighted", authority: WWW, path: "/weighted", headers: &[] },
    Row { name: "beta", authority: WWW, path: "/beta/x", headers: &[] },
    Row { name: "canary", authority: WWW, path: "/canary", headers: &[("x-canary", "yes")] },
    Row { name: "gamma", authority: WWW, path: "/gamma", headers: &[] },
    Row { name: "omega", authority: WWW, path: "/omega", headers: &[] },
    Row { name: "v8", authority: WWW, path: "/v8/x?q=1", headers: &[] },
    Row { name: "strip", authority: WWW, path: "/strip", headers: &[("x-drop-me", "1")] },
    Row { name: "api", authority: API, path: "/api/v1", headers: &[] },
    Row { name: "api-miss", authority: API, path: "/other", headers: &[] },
];

// ---------------------------------------------------------------------------------
// Observing and comparing requests
// ---------------------------------------------------------------------------------

/// What one proxy did for one row.
#[derive(Debug, Default, Clone)]
struct Obs {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
    body: Bytes,
    /// The backend's JSON description of the request it received.
    upstream: Option<Value>,
    error: Option<String>,
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        m.entry(k.as_str().to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    m
}

/// Sends `row` to `listen` on a new HTTP/1.1 connection.
async fn observe(listen: SocketAddr, row: &Row) -> Obs {
    let mut req = Request::get(format!("http://{}{}", row.authority, row.path));
    for (k, v) in row.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(empty()).expect("request");
    // A fresh client per request: no connection survives a listener update.
    let client = http1_client_to(listen);
    match send_full(&client, req, Duration::from_secs(10)).await {
        Ok(r) => {
            let upstream =
                r.headers.contains_key("x-backend").then(|| serde_json::from_slice::<Value>(&r.body).ok()).flatten();
            Obs { status: r.status.as_u16(), headers: header_map(&r.headers), body: r.body, upstream, error: None }
        }
        Err(e) => Obs { error: Some(format!("{e:#}")), ..Obs::default() },
    }
}

/// Response headers whose values are compared (absent == absent).
const COMPARED_RESPONSE_HEADERS: &[&str] =
    &["server", "content-type", "x-backend", "x-route", "x-rc", "x-vh-version", "location"];
/// Response headers compared for presence only (values vary by time).
const PRESENCE_ONLY_RESPONSE_HEADERS: &[&str] = &["date", "x-envoy-upstream-service-time"];
/// Upstream request headers compared for presence only.
const PRESENCE_ONLY_UPSTREAM_HEADERS: &[&str] = &["x-request-id"];

fn joined(v: Option<&Vec<String>>) -> String {
    v.map_or_else(|| "<absent>".to_string(), |v| v.join(" | "))
}

fn upstream_headers(o: &Obs) -> BTreeMap<String, Value> {
    o.upstream
        .as_ref()
        .and_then(|u| u.get("headers"))
        .and_then(|h| h.as_object())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn upstream_field(o: &Obs, f: &str) -> String {
    match o.upstream.as_ref().and_then(|u| u.get(f)) {
        None => "<absent>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn upstream_header(o: &Obs, name: &str) -> String {
    match upstream_headers(o).get(name) {
        None => "<absent>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect::<Vec<_>>().join(" | "),
        Some(v) => v.to_string(),
    }
}

/// Differences between Envoy's (`a`) and Pinion's (`b`) observation of one row.
fn compare(a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    if a.status != b.status {
        d.push(format!("status: envoy {} vs pinion {}", a.status, b.status));
    }
    if a.error.is_some() != b.error.is_some() {
        d.push(format!("error: envoy {:?} vs pinion {:?}", a.error, b.error));
    }
    let names = |o: &Obs| o.headers.keys().cloned().collect::<BTreeSet<_>>();
    if names(a) != names(b) {
        d.push(format!(
            "response header names: only envoy {:?}, only pinion {:?}",
            names(a).difference(&names(b)).collect::<Vec<_>>(),
            names(b).difference(&names(a)).collect::<Vec<_>>()
        ));
    }
    let mut value_headers = COMPARED_RESPONSE_HEADERS.to_vec();
    if a.upstream.is_none() || b.upstream.is_none() {
        value_headers.push("content-length");
    }
    for h in value_headers {
        let (x, y) = (joined(a.headers.get(h)), joined(b.headers.get(h)));
        if x != y {
            d.push(format!("response {h}: envoy {x:?} vs pinion {y:?}"));
        }
    }
    for h in PRESENCE_ONLY_RESPONSE_HEADERS {
        let (x, y) = (a.headers.contains_key(*h), b.headers.contains_key(*h));
        if x != y {
            d.push(format!("response {h} present: envoy {x} vs pinion {y}"));
        }
    }
    match (&a.upstream, &b.upstream) {
        (Some(_), Some(_)) => {
            for f in ["backend", "method", "path", "version", "body_len"] {
                let (x, y) = (upstream_field(a, f), upstream_field(b, f));
                if x != y {
                    d.push(format!("upstream {f}: envoy {x:?} vs pinion {y:?}"));
                }
            }
            let (ha, hb) = (upstream_headers(a), upstream_headers(b));
            for k in ha.keys().chain(hb.keys()).collect::<BTreeSet<_>>() {
                let (x, y) = (ha.get(k), hb.get(k));
                let same = if PRESENCE_ONLY_UPSTREAM_HEADERS.contains(&k.as_str()) {
                    x.is_some() == y.is_some()
                } else {
                    x == y
                };
                if !same {
                    d.push(format!(
                        "upstream header {k}: envoy {} vs pinion {}",
                        x.map_or("<absent>".into(), |v| v.to_string()),
                        y.map_or("<absent>".into(), |v| v.to_string())
                    ));
                }
            }
        }
        (None, None) => {
            if a.body != b.body {
                d.push(format!("body: envoy {:?} vs pinion {:?}", show(&a.body), show(&b.body)));
            }
        }
        _ => d.push(format!(
            "body: envoy {} vs pinion {}",
            if a.upstream.is_some() { "backend JSON" } else { "local reply" },
            if b.upstream.is_some() { "backend JSON" } else { "local reply" }
        )),
    }
    d
}

/// The step's expectations for `row` against one observation.
fn check_expectations(step: &Step, row: &Row, o: &Obs) -> Vec<String> {
    let mut bad = Vec::new();
    for (r, key, want) in step.expect {
        if *r != row.name {
            continue;
        }
        let got = if *key == "status" {
            o.status.to_string()
        } else if let Some(h) = key.strip_prefix("resp:") {
            joined(o.headers.get(h))
        } else if let Some(f) = key.strip_prefix("up.") {
            upstream_field(o, f)
        } else if let Some(h) = key.strip_prefix("up:") {
            upstream_header(o, h)
        } else {
            panic!("step {}: unknown expectation key {key}", step.name)
        };
        if got != *want {
            bad.push(format!("{key} = {got:?} (want {want:?})"));
        }
    }
    bad
}

fn show(b: &[u8]) -> String {
    const MAX: usize = 200;
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX)]).into_owned();
    if b.len() > MAX {
        format!("{s}…({} bytes)", b.len())
    } else {
        s
    }
}

fn describe(o: &Obs) -> String {
    let body = o.upstream.as_ref().map_or_else(|| show(&o.body), |u| u.to_string());
    format!("status={} error={:?}\n      headers={:?}\n      body={}", o.status, o.error, o.headers, body)
}

/// One-line summary of an observation for the step log.
fn brief(o: &Obs) -> String {
    if let Some(e) = &o.error {
        return format!("error {e}");
    }
    let h = |n: &str| o.headers.get(n).map(|v| v.join(",")).unwrap_or_else(|| "-".into());
    format!("{} {} ({})", o.status, h("x-backend"), h("x-route"))
}

// ---------------------------------------------------------------------------------
// xDS bookkeeping from the control plane's record of requests
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Sotw,
    Delta,
}

impl Api {
    fn api_type(self) -> &'static str {
        match self {
            Api::Sotw => "GRPC",
            Api::Delta => "DELTA_GRPC",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Api::Sotw => "sotw",
            Api::Delta => "delta",
        }
    }
}

fn short(t: ResourceType) -> &'static str {
    match t {
        ResourceType::Cluster => "CDS",
        ResourceType::ClusterLoadAssignment => "EDS",
        ResourceType::Listener => "LDS",
        ResourceType::RouteConfiguration => "RDS",
        ResourceType::ScopedRouteConfiguration => "SRDS",
        ResourceType::VirtualHost => "VHDS",
        ResourceType::Runtime => "RTDS",
        ResourceType::Secret => "SDS",
    }
}

/// A proxy's answer (ACK or NACK) to one response: the first request that carries its nonce.
#[derive(Debug, Clone)]
struct Answer {
    type_: ResourceType,
    /// SotW `version_info` (the accepted version; on a NACK the previous good one).
    version_info: String,
    /// NACK: (`error_detail.code`, message).
    nack: Option<(i32, String)>,
}

/// Answers from `node` recorded at index `mark` or later, in order. Later requests that
/// repeat a nonce (subscription changes) are not answers.
fn answers(reqs: &[RecordedRequest], mark: usize, node: &str) -> Vec<Answer> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        if r.node_id != node || r.response_nonce.is_empty() {
            continue;
        }
        if !seen.insert((r.type_url.clone(), r.response_nonce.clone())) || i < mark {
            continue;
        }
        let Some(type_) = ResourceType::from_type_url(&r.type_url) else { continue };
        out.push(Answer { type_, version_info: r.version_info.clone(), nack: r.error_detail.clone() });
    }
    out
}

/// Per type: the set of ACKed / NACKed versions of the step, e.g. `ACK 3` or `NACK 9 (keeps 8)`.
fn ack_summary(api: Api, version: &str, ans: &[Answer]) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut m: BTreeMap<&'static str, BTreeSet<String>> = TYPES.iter().map(|t| (short(*t), BTreeSet::new())).collect();
    for a in ans {
        let s = match (api, &a.nack) {
            (Api::Sotw, None) => format!("ACK {}", a.version_info),
            (Api::Sotw, Some((code, _))) => format!("NACK {version} (keeps {:?}, code {code})", a.version_info),
            // Delta ACKs carry no version: every answer in a step answers that step's snapshot.
            (Api::Delta, None) => format!("ACK {version}"),
            (Api::Delta, Some((code, _))) => format!("NACK {version} (code {code})"),
        };
        m.entry(short(a.type_)).or_default().insert(s);
    }
    m
}

fn render_summary(m: &BTreeMap<&'static str, BTreeSet<String>>, counts: &BTreeMap<&'static str, usize>) -> String {
    TYPES
        .iter()
        .map(|t| {
            let k = short(*t);
            let set = &m[k];
            let n = counts.get(k).copied().unwrap_or(0);
            if set.is_empty() {
                format!("{k} -")
            } else {
                format!(
                    "{k} {}{}",
                    set.iter().cloned().collect::<Vec<_>>().join("+"),
                    if n > 1 { format!(" x{n}") } else { String::new() }
                )
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn answer_counts(ans: &[Answer]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for a in ans {
        *m.entry(short(a.type_)).or_default() += 1;
    }
    m
}

/// Current RDS/EDS subscription of `node`, as the control plane saw it.
fn subscriptions(reqs: &[RecordedRequest], api: Api, node: &str) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for t in [ResourceType::ClusterLoadAssignment, ResourceType::RouteConfiguration] {
        let mut mine = reqs.iter().filter(|r| r.node_id == node && r.type_url == t.type_url());
        let mut names = BTreeSet::new();
        match api {
            Api::Sotw => {
                if let Some(r) = mine.next_back() {
                    names = r.resource_names.iter().cloned().collect();
                }
            }
            Api::Delta => {
                let mut stream = None;
                for r in mine {
                    if stream != Some(r.stream_id) {
                        stream = Some(r.stream_id);
                        names.clear();
                    }
                    names.extend(r.resource_names.iter().cloned());
                    for n in &r.unsubscribe {
                        names.remove(n);
                    }
                }
            }
        }
        out.insert(short(t), names);
    }
    out
}

fn dump_requests(reqs: &[RecordedRequest], mark: usize, node: &str) -> String {
    reqs.iter()
        .enumerate()
        .skip(mark)
        .filter(|(_, r)| r.node_id == node)
        .map(|(i, r)| {
            format!(
                "      #{i} stream {} {} version {:?} nonce {:?} names {:?} unsub {:?}{}",
                r.stream_id,
                ResourceType::from_type_url(&r.type_url).map_or_else(|| r.type_url.clone(), |t| short(t).to_string()),
                r.version_info,
                r.response_nonce,
                r.resource_names,
                r.unsubscribe,
                r.error_detail.as_ref().map(|(c, m)| format!(" NACK({c}): {m}")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Types whose resources differ between two snapshots.
fn changed_types(prev: Option<&Snapshot>, cur: &Snapshot) -> BTreeSet<ResourceType> {
    TYPES.iter().copied().filter(|t| prev.and_then(|p| p.of_type(t.type_url())) != cur.of_type(t.type_url())).collect()
}

/// Waits until both nodes answered the step and the exchange went quiet. SotW: every type's
/// last answer is an ACK of `version` or a NACK. Delta: every changed wildcard type (LDS, CDS)
/// was answered; RDS/EDS answers depend on subscriptions, so quiet time decides. It also waits
/// (at most [`SUBSCRIPTION_GRACE`] more) for the RDS/EDS subscription sets of the two proxies
/// to agree: a replaced listener's route config is only unsubscribed once it has drained. The
/// caller compares the subscriptions afterwards.
async fn settle(
    cp: &ControlPlane,
    api: Api,
    mark: usize,
    version: &str,
    changed: &BTreeSet<ResourceType>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + SETTLE_TIMEOUT;
    let mut last_len = usize::MAX;
    let mut last_change = Instant::now();
    let mut answered_at: Option<Instant> = None;
    loop {
        let reqs = cp.requests();
        if reqs.len() != last_len {
            last_len = reqs.len();
            last_change = Instant::now();
        }
        let mut missing = Vec::new();
        for node in [ENVOY_NODE, PINION_NODE] {
            let ans = answers(&reqs, mark, node);
            let last = |t: ResourceType| ans.iter().rev().find(|a| a.type_ == t);
            match api {
                Api::Sotw => {
                    for t in TYPES {
                        match last(t) {
                            Some(a) if a.nack.is_some() || a.version_info == version => {}
                            other => missing.push(format!(
                                "{node} {}: last answer {:?}",
                                short(t),
                                other.map(|a| (&a.version_info, a.nack.is_some()))
                            )),
                        }
                    }
                }
                Api::Delta => {
                    for t in changed.iter().filter(|t| t.is_wildcard()) {
                        if last(*t).is_none() {
                            missing.push(format!("{node} {}: no answer", short(*t)));
                        }
                    }
                    if ans.is_empty() {
                        missing.push(format!("{node}: no answer at all"));
                    }
                }
            }
        }
        let quiet = last_change.elapsed() >= QUIET;
        if missing.is_empty() && quiet {
            let answered = *answered_at.get_or_insert_with(Instant::now);
            let same_subscriptions = subscriptions(&reqs, api, ENVOY_NODE) == subscriptions(&reqs, api, PINION_NODE);
            if same_subscriptions || answered.elapsed() >= SUBSCRIPTION_GRACE {
                return Ok(start.elapsed());
            }
        } else {
            answered_at = None;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "xDS did not settle within {SETTLE_TIMEOUT:?} (quiet: {quiet}):\n    {}\n    envoy requests since the step began:\n{}\n    pinion requests since the step began:\n{}",
                if missing.is_empty() { "(answers complete, still busy)".to_string() } else { missing.join("\n    ") },
                dump_requests(&reqs, mark, ENVOY_NODE),
                dump_requests(&reqs, mark, PINION_NODE)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// Proxies
// ---------------------------------------------------------------------------------

struct Side {
    kind: ProxyKind,
    node: &'static str,
    admin: u16,
    listen: u16,
    proc: Option<ProxyProcess>,
}

impl Side {
    fn new(kind: ProxyKind, node: &'static str) -> Self {
        Side { kind, node, admin: free_port(), listen: free_port(), proc: None }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listen))
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map_or_else(|| format!("({} not started)", self.kind), |p| p.logs())
    }

    fn stat(&self, name: &str) -> Option<u64> {
        self.proc.as_ref().and_then(|p| p.stat(name))
    }
}

/// Starts both proxies at once and waits (bounded) until both are ready and listening.
fn start(sides: &mut [Side], api: Api, xds_port: u16) {
    for s in sides.iter_mut() {
        let yaml = render_bootstrap(
            "xds_differential.yaml",
            &[
                ("NODE_ID", s.node.to_string()),
                ("ADMIN_PORT", s.admin.to_string()),
                ("XDS_PORT", xds_port.to_string()),
                ("API_TYPE", api.api_type().to_string()),
            ],
        );
        s.proc = Some(ProxyProcess::spawn(s.kind, &yaml, &["--drain-time-s", DRAIN_TIME_S]));
    }
    for s in sides.iter_mut() {
        let p = s.proc.as_mut().expect("spawned");
        if let Err(e) = p.wait_ready(s.admin, Duration::from_secs(20)) {
            panic!("[{}] {} did not become ready: {e:#}", api.label(), s.kind);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], s.listen));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "{} ready but listener {addr} not accepting\n{}", s.kind, p.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------

/// The two runs share the machine (2 cores); run them one after the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_script(api: Api) {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let tag = api.label();
    for kind in [ProxyKind::Envoy, ProxyKind::Pinion] {
        if let Err(e) = kind.binary() {
            panic!("xds_differential needs both proxies; {kind} is missing: {e:#}");
        }
    }
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let steps = script();
    assert!(steps.len() >= 10, "the script must have at least 10 snapshots");
    assert!(!DELIBERATE_DIFFERENCES.is_empty());
    for (what, why) in DELIBERATE_DIFFERENCES {
        eprintln!("[{tag}] not compared: {what}: {why}");
    }

    let backends: BTreeMap<&'static str, Backend> = ["alpha-1", "alpha-2", "beta", "gamma", "omega"]
        .into_iter()
        .map(|n| (n, spawn_http_backend_named(BackendKind::Http1, n)))
        .collect();
    let cp = ControlPlane::new();
    let (xds_addr, shutdown) = cp.serve(SocketAddr::from(([127, 0, 0, 1], 0))).expect("control plane");
    let mut sides = [Side::new(ProxyKind::Envoy, ENVOY_NODE), Side::new(ProxyKind::Pinion, PINION_NODE)];
    eprintln!(
        "[{tag}] control plane on {xds_addr}; envoy ({ENVOY_NODE}) listens on {}, pinion ({PINION_NODE}) on {}",
        sides[0].listen, sides[1].listen
    );

    let mut cfg = Cfg::initial();
    let mut prev: Option<Snapshot> = None;
    let mut failures: Vec<String> = Vec::new();
    let mut identical_rows = 0usize;
    let mut total_rows = 0usize;
    for (i, step) in steps.iter().enumerate() {
        let version = (i + 1).to_string();
        (step.change)(&mut cfg);
        let mark = cp.requests().len();
        let mut snaps = Vec::new();
        for s in &sides {
            let snap = snapshot(&cfg, &version, s.listen, &backends);
            cp.set_snapshot(s.node, snap.clone());
            snaps.push(snap);
        }
        let changed = changed_types(prev.as_ref(), &snaps[0]);
        prev = Some(snaps.swap_remove(0));
        eprintln!("[{tag}] step {}/{} v{version} {}: {}", i + 1, steps.len(), step.name, step.what);
        if i == 0 {
            tokio::task::block_in_place(|| start(&mut sides, api, xds_addr.port()));
        }

        // 1. Wait until both answered the snapshot; compare ACK/NACK per type and subscriptions.
        let settled = settle(&cp, api, mark, &version, &changed).await;
        let took = match settled {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("step {} ({}): {e}", i + 1, step.name));
                let logs: Vec<String> = sides.iter().map(Side::logs).collect();
                panic!(
                    "[{tag}] aborting after step {} ({}):\n\n{}\n\n{}",
                    i + 1,
                    step.name,
                    failures.join("\n\n"),
                    logs.join("\n")
                );
            }
        };
        let reqs = cp.requests();
        let (ae, ap) = (answers(&reqs, mark, ENVOY_NODE), answers(&reqs, mark, PINION_NODE));
        let (se, sp) = (ack_summary(api, &version, &ae), ack_summary(api, &version, &ap));
        let (ce, cpn) = (answer_counts(&ae), answer_counts(&ap));
        let mut xds_problems = Vec::new();
        if se != sp {
            xds_problems.push(format!(
                "ACK/NACK per type differ:\n      envoy:  {}\n      pinion: {}",
                render_summary(&se, &ce),
                render_summary(&sp, &cpn)
            ));
        }
        for (side, ans) in [("envoy", &ae), ("pinion", &ap)] {
            for a in ans.iter() {
                let want_nack = step.nacked.contains(&a.type_);
                if a.nack.is_some() != want_nack {
                    xds_problems.push(format!(
                        "{side} {} {} (the script expects {})",
                        short(a.type_),
                        a.nack.as_ref().map_or("ACKed".to_string(), |(_, m)| format!("NACKed: {m}")),
                        if want_nack { "a NACK" } else { "an ACK" }
                    ));
                }
            }
            for t in step.nacked {
                if !ans.iter().any(|a| a.type_ == *t && a.nack.is_some()) {
                    xds_problems.push(format!("{side} sent no {} NACK", short(*t)));
                }
            }
        }
        eprintln!(
            "    xDS settled in {:.2}s: {}{}",
            took.as_secs_f64(),
            render_summary(&se, &ce),
            if se == sp { " (same on both)".to_string() } else { format!(" | pinion: {}", render_summary(&sp, &cpn)) }
        );
        let (sub_e, sub_p) = (subscriptions(&reqs, api, ENVOY_NODE), subscriptions(&reqs, api, PINION_NODE));
        let show_subs = |m: &BTreeMap<&str, BTreeSet<String>>| {
            format!("EDS {:?} RDS {:?}", m["EDS"].iter().collect::<Vec<_>>(), m["RDS"].iter().collect::<Vec<_>>())
        };
        if sub_e == sub_p {
            eprintln!("    subscriptions (both): {}", show_subs(&sub_e));
        } else {
            eprintln!("    subscriptions DIFFER: envoy {} | pinion {}", show_subs(&sub_e), show_subs(&sub_p));
            xds_problems.push(format!(
                "RDS/EDS subscriptions differ:\n      envoy:  {}\n      pinion: {}",
                show_subs(&sub_e),
                show_subs(&sub_p)
            ));
        }
        for (side, ans) in [("envoy", &ae), ("pinion", &ap)] {
            for a in ans.iter().filter(|a| a.nack.is_some()) {
                let msg =
                    a.nack.as_ref().map_or(String::new(), |(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "));
                eprintln!("    {side} NACK {}: {msg}", short(a.type_));
            }
        }
        if !xds_problems.is_empty() {
            failures.push(format!(
                "[{tag}] step {} v{version} {}: xDS:\n  - {}\n    envoy requests:\n{}\n    pinion requests:\n{}",
                i + 1,
                step.name,
                xds_problems.join("\n  - "),
                dump_requests(&reqs, mark, ENVOY_NODE),
                dump_requests(&reqs, mark, PINION_NODE)
            ));
        }

        // 2. Let workers pick up what the main thread applied, then the request table.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut line = Vec::new();
        for row in ROWS {
            total_rows += 1;
            let a = observe(sides[0].addr(), row).await;
            let b = observe(sides[1].addr(), row).await;
            if verbose {
                eprintln!("      {} envoy: {}\n      {} pinion: {}", row.name, describe(&a), row.name, describe(&b));
            }
            let mut problems = compare(&a, &b);
            for (side, o) in [("envoy", &a), ("pinion", &b)] {
                problems
                    .extend(check_expectations(step, row, o).into_iter().map(|p| format!("{side} expectation: {p}")));
            }
            if problems.is_empty() {
                identical_rows += 1;
                line.push(format!("{} {}", row.name, brief(&a)));
            } else {
                line.push(format!("{} DIFF envoy {} / pinion {}", row.name, brief(&a), brief(&b)));
                failures.push(format!(
                    "[{tag}] step {} v{version} {}: row {} GET {}{} (authority {}):\n  - {}\n    envoy: {}\n    pinion: {}",
                    i + 1,
                    step.name,
                    row.name,
                    row.path,
                    if row.headers.is_empty() { String::new() } else { format!(" {:?}", row.headers) },
                    row.authority,
                    problems.join("\n  - "),
                    describe(&a),
                    describe(&b)
                ));
            }
        }
        eprintln!("    requests: {}", line.join(" | "));
    }

    // Stats both proxies name the same way.
    let stats = tokio::task::block_in_place(|| {
        ["listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected", "control_plane.connected_state"]
            .iter()
            .map(|n| (*n, sides[0].stat(n), sides[1].stat(n)))
            .collect::<Vec<_>>()
    });
    for (name, e, p) in &stats {
        eprintln!("[{tag}] stat {name}: envoy {e:?} pinion {p:?}");
        if e != p {
            failures.push(format!("[{tag}] stat {name}: envoy {e:?} vs pinion {p:?}"));
        }
    }

    eprintln!(
        "[{tag}] {} steps, {identical_rows}/{total_rows} request rows identical, {} failure(s), {:.1}s",
        steps.len(),
        failures.len(),
        began.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let logs: Vec<String> = sides.iter().map(Side::logs).collect();
        panic!("[{tag}] {} failure(s):\n\n{}\n\n{}", failures.len(), failures.join("\n\n"), logs.join("\n"));
    }
    drop(sides);
    shutdown.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_differential_sotw() {
    run_script(Api::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_differential_delta() {
    run_script(Api::Delta).await;
}

/// The bookkeeping must notice differences (guards against a vacuous harness).
#[test]
fn bookkeeping_reports_differences() {
    let req = |node: &str, t: ResourceType, version: &str, nonce: &str, nack: bool| RecordedRequest {
        node_id: node.into(),
        type_url: t.type_url().into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        resource_names: vec![],
        unsubscribe: vec![],
        initial_resource_versions: BTreeMap::new(),
        error_detail: nack.then(|| (3, "bad".to_string())),
        delta: false,
        has_node: true,
        stream_id: 1,
        received_at: Instant::now(),
    };
    let reqs = vec![
        // Step 1 (before the mark).
        req(ENVOY_NODE, ResourceType::Cluster, "1", "1", false),
        req(PINION_NODE, ResourceType::Cluster, "1", "2", false),
        // Step 2.
        req(ENVOY_NODE, ResourceType::Cluster, "2", "3", false),
        // A repeated nonce (subscription change) is not an answer.
        req(PINION_NODE, ResourceType::Cluster, "1", "2", false),
        req(PINION_NODE, ResourceType::Cluster, "1", "4", true),
    ];
    let e = ack_summary(Api::Sotw, "2", &answers(&reqs, 2, ENVOY_NODE));
    let p = ack_summary(Api::Sotw, "2", &answers(&reqs, 2, PINION_NODE));
    assert_eq!(e["CDS"].iter().collect::<Vec<_>>(), ["ACK 2"]);
    assert_eq!(p["CDS"].iter().collect::<Vec<_>>(), ["NACK 2 (keeps \"1\", code 3)"]);
    assert_ne!(e, p);

    let mut a = Obs { status: 200, ..Obs::default() };
    a.headers.insert("x-backend".into(), vec!["alpha-1".into()]);
    let mut b = a.clone();
    assert!(compare(&a, &b).is_empty());
    b.headers.insert("x-backend".into(), vec!["beta".into()]);
    b.status = 503;
    let d = compare(&a, &b).join("\n");
    assert!(d.contains("status: envoy 200 vs pinion 503") && d.contains("x-backend"), "{d}");
}
