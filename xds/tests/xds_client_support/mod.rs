//! Shared helpers for the xDS client tests: a recording sink, proto builders, and a client
//! runner that stops when dropped. Every wait is bounded.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use pinion_xds::client::{self, Backoff, ClientConfig, ClientStats, Mode, ServerAddr};
use pinion_xds::control_plane::{ControlPlane, ShutdownHandle};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use pinion_xds::model;
use pinion_xds::sink::{ConfigSink, Rejected, Resource, ResourceType, Update};

/// Default bound for every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// What the sink holds: name -> (version, resource).
type Held = BTreeMap<ResourceType, BTreeMap<String, (String, Resource)>>;

/// A sink that records every update, holds the current resources, and rejects configured names.
#[derive(Default)]
pub struct TestSink {
    pub updates: Mutex<Vec<Update>>,
    held: Mutex<Held>,
    reject: Mutex<BTreeMap<String, String>>,
    pub timeouts: Mutex<Vec<ResourceType>>,
    pub connected: Mutex<Vec<bool>>,
}

impl TestSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Make `apply` reject the resource `name` with `reason`.
    pub fn reject(&self, name: &str, reason: &str) {
        self.reject.lock().unwrap().insert(name.into(), reason.into());
    }

    pub fn names(&self, t: ResourceType) -> BTreeSet<String> {
        self.held.lock().unwrap().get(&t).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn get(&self, t: ResourceType, name: &str) -> Option<(String, Resource)> {
        self.held.lock().unwrap().get(&t).and_then(|m| m.get(name).cloned())
    }

    pub fn update_count(&self) -> usize {
        self.updates.lock().unwrap().len()
    }

    /// The cluster a route config's first route points at.
    pub fn route_cluster(&self, name: &str) -> Option<String> {
        let (_, r) = self.get(ResourceType::RouteConfiguration, name)?;
        let Resource::RouteConfiguration(rc) = r else { return None };
        let json = format!("{:?}", rc.virtual_hosts.first()?.routes.first()?);
        // Debug output contains `Cluster("name")`; good enough for tests.
        let start = json.find("Cluster(\"")? + "Cluster(\"".len();
        let end = json[start..].find('"')? + start;
        Some(json[start..end].to_string())
    }

    /// Endpoint count of a load assignment.
    pub fn endpoint_count(&self, name: &str) -> Option<usize> {
        let (_, r) = self.get(ResourceType::ClusterLoadAssignment, name)?;
        let Resource::ClusterLoadAssignment(la) = r else { return None };
        Some(la.localities.iter().map(|l| l.endpoints.len()).sum())
    }

    /// Waits (bounded) until `pred` holds.
    pub async fn wait(&self, what: &str, pred: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ConfigSink for TestSink {
    fn apply(&self, update: Update) -> Vec<Rejected> {
        let reject = self.reject.lock().unwrap().clone();
        let mut rejected = Vec::new();
        {
            let mut held = self.held.lock().unwrap();
            let m = held.entry(update.type_).or_default();
            for u in &update.updated {
                if let Some(reason) = reject.get(&u.name) {
                    rejected.push(Rejected { name: u.name.clone(), reason: reason.clone() });
                } else {
                    m.insert(u.name.clone(), (u.version.clone(), u.resource.clone()));
                }
            }
            for r in &update.removed {
                m.remove(r);
            }
        }
        self.updates.lock().unwrap().push(update);
        rejected
    }

    fn wanted(&self, t: ResourceType) -> Option<BTreeSet<String>> {
        let held = self.held.lock().unwrap();
        match t {
            ResourceType::RouteConfiguration => {
                let mut out = BTreeSet::new();
                for (_, r) in held.get(&ResourceType::Listener).into_iter().flat_map(|m| m.values()) {
                    let Resource::Listener(l) = r else { continue };
                    for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                        if let model::NetworkFilter::HttpConnectionManager(h) = &fc.filter {
                            if let model::RouteSpecifier::Rds { route_config_name } = &h.route_specifier {
                                out.insert(route_config_name.clone());
                            }
                        }
                    }
                }
                Some(out)
            }
            ResourceType::ClusterLoadAssignment => {
                let mut out = BTreeSet::new();
                for (_, r) in held.get(&ResourceType::Cluster).into_iter().flat_map(|m| m.values()) {
                    let Resource::Cluster(c) = r else { continue };
                    if c.discovery == model::DiscoveryType::Eds {
                        out.insert(if c.eds_service_name.is_empty() {
                            c.name.clone()
                        } else {
                            c.eds_service_name.clone()
                        });
                    }
                }
                Some(out)
            }
            _ => None,
        }
    }

    fn initial_fetch_timeout(&self, t: ResourceType) {
        self.timeouts.lock().unwrap().push(t);
    }

    fn connected(&self, c: bool) {
        self.connected.lock().unwrap().push(c);
    }
}

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> M {
    message_from_str::<M>(text, Format::Yaml, &DecodeOptions::default()).expect("test proto")
}

/// A listener on 127.0.0.1:`port` whose HCM takes its routes from RDS `route`.
pub fn listener(name: &str, port: u16, route: &str) -> Listener {
    let rds = format!("rds: {{ route_config_name: {route}, config_source: {{ ads: {{}} }} }}");
    pinion_xds::control_plane::hcm_listener(name, port, name, &rds, &[]).expect("test listener")
}

/// A route configuration sending everything to `cluster`.
pub fn route(name: &str, cluster: &str) -> RouteConfiguration {
    yaml(&format!(
        r#"
name: {name}
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: {cluster}}}
"#
    ))
}

/// An EDS cluster whose endpoints come from ADS under `service`.
pub fn eds_cluster(name: &str, service: &str) -> Cluster {
    yaml(&format!(
        r#"
name: {name}
type: EDS
connect_timeout: 1s
eds_cluster_config: {{service_name: {service}, eds_config: {{ads: {{}}}}}}
"#
    ))
}

/// Endpoints for `name` on 127.0.0.1 at `ports`.
pub fn endpoints(name: &str, ports: &[u16]) -> ClusterLoadAssignment {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| format!("  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}"))
        .collect();
    yaml(&format!("cluster_name: {name}\nendpoints:\n- lb_endpoints:\n{}\n", eps.join("\n")))
}

/// A running control plane.
pub struct Cp {
    pub cp: Arc<ControlPlane>,
    pub addr: SocketAddr,
    pub handle: Option<ShutdownHandle>,
}

pub fn start_cp() -> Cp {
    let cp = ControlPlane::new();
    let (addr, handle) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("serve");
    Cp { cp, addr, handle: Some(handle) }
}

/// Client config for tests: fast backoff, node `n1`.
pub fn config(addr: SocketAddr, mode: Mode, aggregated: bool) -> ClientConfig {
    let node = model::Node { id: "n1".into(), cluster: "test".into(), ..Default::default() };
    let mut cfg = ClientConfig::new(node, ServerAddr::Tcp(addr));
    cfg.mode = mode;
    cfg.aggregated = aggregated;
    cfg.backoff = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    cfg
}

/// A running client; aborted when dropped.
pub struct Client {
    pub task: tokio::task::JoinHandle<()>,
    pub stats: Arc<ClientStats>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start_client(cfg: ClientConfig, sink: Arc<TestSink>) -> Client {
    let stats = ClientStats::new();
    let task = tokio::spawn(client::run(cfg, sink, stats.clone()));
    Client { task, stats }
}

/// The usual snapshot: l1 -> r1 -> c1 (EDS) with endpoints.
pub fn basic_snapshot(version: &str) -> pinion_xds::control_plane::Snapshot {
    pinion_xds::control_plane::Snapshot::new(version)
        .with_listener(listener("l1", 10001, "r1"))
        .with_route(route("r1", "c1"))
        .with_cluster(eds_cluster("c1", "c1"))
        .with_endpoints(endpoints("c1", &[20001, 20002]))
}

/// Waits until the sink holds the basic snapshot.
pub async fn wait_basic(sink: &TestSink) {
    sink.wait("basic snapshot", |s| {
        s.names(ResourceType::Listener).contains("l1")
            && s.names(ResourceType::RouteConfiguration).contains("r1")
            && s.names(ResourceType::Cluster).contains("c1")
            && s.endpoint_count("c1") == Some(2)
    })
    .await;
}

pub const ALL_MODES: [(Mode, bool); 4] =
    [(Mode::Sotw, true), (Mode::Sotw, false), (Mode::Delta, true), (Mode::Delta, false)];
