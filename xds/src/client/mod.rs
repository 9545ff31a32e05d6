//! The xDS client: ADS or per-type streams, SotW or Delta, for LDS/RDS/CDS/EDS.
//!
//! ztunnel-style: [`run`] owns the protocol state (versions, nonces, subscriptions,
//! per-resource versions) per type; typed handlers turn the `Any` payloads into model types at
//! the edge (decode -> PGV validation -> `crate::translate`), collecting rejected resources,
//! which become the NACK. The data plane only sees [`crate::sink::Update`]s and tells the client
//! which RDS/EDS names it wants ([`crate::sink::ConfigSink::wanted`]).
//!
//! Protocol behaviour follows Envoy:
//! - SotW ACK = the response's `version_info` + its nonce; NACK = the last accepted version + the
//!   nonce + `error_detail` (code 13, `INTERNAL`, as Envoy) naming each rejected resource.
//! - A response that cannot be decoded as a whole (bad payload, a resource whose `Any` type URL
//!   differs from the response's, duplicate names) is rejected entirely; otherwise valid
//!   resources are applied and invalid ones are listed in the NACK (the version does not advance).
//! - LDS/CDS are wildcard; for SotW the client computes the removed names. RDS/EDS names follow
//!   the sink's wanted set (subscribe and unsubscribe).
//! - Reconnects forever with jittered exponential backoff; resubscribes with the last accepted
//!   versions (SotW `version_info`, Delta `initial_resource_versions`).
//! - Responses are processed one at a time (a flood is back-pressured by HTTP/2 flow control);
//!   messages above [`ClientConfig::max_message_size`] fail the stream.
//!
//! Deliberate difference: a response for a type URL the stream did not subscribe to (unknown,
//! v2, or another type) is NACKed with a message; Envoy logs and ignores it.

mod resources;
mod session;
mod stats;
mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as pbuf;

pub use stats::{ClientStats, StatEntry, TypeStats};

use crate::model;
use crate::sink::{ConfigSink, ResourceType};

/// Default decode limit for one message from the control plane.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Where the control plane is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// Plaintext HTTP/2 over TCP.
    Tcp(SocketAddr),
    /// Plaintext HTTP/2 over a Unix domain socket.
    Unix(PathBuf),
    /// A URI (`http://host:port`, `host:port`, `dns:///host:port`), e.g. a `google_grpc` target.
    Uri(String),
}

/// State of the world or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// State of the world (`api_type: GRPC`).
    Sotw,
    /// Incremental (`api_type: DELTA_GRPC`).
    Delta,
}

/// Reconnect backoff: exponential from `initial` to `max`, each delay jittered in `[d/2, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay (Envoy: 500 ms).
    pub initial: Duration,
    /// Cap (Envoy: 30 s).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Node identity sent to the control plane.
    pub node: model::Node,
    /// The control plane (ADS, or every per-type stream without an override).
    pub server: ServerAddr,
    /// Per-type servers for non-aggregated mode (`lds_config`/`cds_config` api_config_source).
    pub per_type_servers: BTreeMap<ResourceType, ServerAddr>,
    /// SotW or Delta.
    pub mode: Mode,
    /// ADS (one stream) or one stream per type.
    pub aggregated: bool,
    /// Types to subscribe to (LDS/CDS wildcard; RDS/EDS follow the sink's wanted names).
    pub types: Vec<ResourceType>,
    /// Send the node only on the first message of a stream.
    pub set_node_on_first_message_only: bool,
    /// Per type, how long to wait for the first response after subscribing (`None`: forever).
    pub initial_fetch_timeout: Option<Duration>,
    /// Types with their own `initial_fetch_timeout` (SDS: its `sds_config`'s).
    pub type_initial_fetch_timeout: BTreeMap<ResourceType, Option<Duration>>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Decode limit for one message from the control plane.
    pub max_message_size: usize,
}

impl ClientConfig {
    /// Envoy's defaults: SotW ADS for all four types, 15 s initial fetch timeout, 500 ms..30 s
    /// backoff, 64 MiB message limit.
    pub fn new(node: model::Node, server: ServerAddr) -> Self {
        Self {
            node,
            server,
            per_type_servers: BTreeMap::new(),
            mode: Mode::Sotw,
            aggregated: true,
            types: vec![
                ResourceType::Cluster,
                ResourceType::ClusterLoadAssignment,
                ResourceType::Listener,
                ResourceType::RouteConfiguration,
            ],
            set_node_on_first_message_only: false,
            initial_fetch_timeout: Some(Duration::from_secs(15)),
            type_initial_fetch_timeout: BTreeMap::new(),
            backoff: Backoff::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// The `Node` proto sent to the control plane (`user_agent_name: pinion` and its version).
    pub fn node_proto(&self) -> core::Node {
        let n = &self.node;
        let mut version = env!("CARGO_PKG_VERSION").split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let semver = envoy_types::pb::envoy::r#type::v3::SemanticVersion {
            major_number: version.next().unwrap_or(0),
            minor_number: version.next().unwrap_or(0),
            patch: version.next().unwrap_or(0),
        };
        core::Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            metadata: match &n.metadata {
                serde_json::Value::Object(_) => match json_to_value(&n.metadata).kind {
                    Some(pbuf::value::Kind::StructValue(s)) => Some(s),
                    _ => None,
                },
                _ => None,
            },
            locality: n.locality.as_ref().map(|l| core::Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            }),
            user_agent_name: "pinion".into(),
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentBuildVersion(
                core::BuildVersion { version: Some(semver), metadata: None },
            )),
            ..Default::default()
        }
    }

    /// The client config a bootstrap's `dynamic_resources` asks for: `None` without dynamic
    /// resources. `envoy_grpc` clusters must be static clusters of the bootstrap with an IP
    /// endpoint (the first one is used); `google_grpc` targets are used as URIs. LDS brings RDS
    /// and CDS brings EDS along (over ADS, or each on its own stream to the same server).
    pub fn from_bootstrap(b: &model::Bootstrap) -> Result<Option<Self>, String> {
        let Some(d) = &b.dynamic_resources else { return Ok(None) };
        let sources: Vec<(ResourceType, &model::ConfigSource)> =
            [(ResourceType::Listener, d.lds.as_ref()), (ResourceType::Cluster, d.cds.as_ref())]
                .into_iter()
                .filter_map(|(t, s)| s.map(|s| (t, s)))
                .collect();
        // Static resources with parts from xDS: EDS clusters, listeners with rds/scoped_routes.
        let needs_eds = b.clusters.iter().any(|c| c.discovery == model::DiscoveryType::Eds);
        let needs_routes = b.listeners.iter().any(|l| {
            l.filter_chains.iter().chain(l.default_filter_chain.iter()).any(|fc| {
                matches!(&fc.filter, model::NetworkFilter::HttpConnectionManager(h)
                    if !matches!(h.route_specifier, model::RouteSpecifier::Static(_)))
            })
        });
        // SDS references with an `sds_config` (the others name static secrets).
        let sds_refs: Vec<&model::ConfigSource> = b
            .listeners
            .iter()
            .flat_map(|l| l.sds_configs())
            .chain(b.clusters.iter().flat_map(|c| c.sds_configs()))
            .filter_map(|s| s.source.as_ref())
            .collect();
        let needs_secrets = !sds_refs.is_empty();
        let ads_only;
        let sources = if sources.is_empty() && (needs_eds || needs_routes || needs_secrets) && d.ads.is_some() {
            // Only `ads_config`: the static resources' RDS/EDS go over it.
            ads_only = model::ConfigSource {
                kind: model::ConfigSourceKind::Ads,
                initial_fetch_timeout: Some(Duration::from_secs(15)),
            };
            vec![(if needs_routes { ResourceType::Listener } else { ResourceType::Cluster }, &ads_only)]
        } else {
            sources
        };
        let lds_configured = d.lds.is_some();
        let cds_configured = d.cds.is_some();
        let Some((_, first)) = sources.first() else {
            // No LDS/CDS: a client for the static resources' secrets alone, if they need one.
            return match sds_refs.iter().find_map(|s| match &s.kind {
                model::ConfigSourceKind::Api(api) => Some((api, s.initial_fetch_timeout)),
                model::ConfigSourceKind::Ads => None,
            }) {
                Some((api, timeout)) => Ok(Some(Self::sds_only(b, api, timeout)?)),
                None => Ok(None),
            };
        };
        let uses_ads = sources.iter().any(|(_, s)| s.kind == model::ConfigSourceKind::Ads);
        let all_ads = sources.iter().all(|(_, s)| s.kind == model::ConfigSourceKind::Ads);
        if uses_ads && !all_ads {
            return Err("mixing ads and api_config_source for lds_config/cds_config is not supported".into());
        }
        let resolve = |api: &model::ApiConfigSource| -> Result<(ServerAddr, Option<u32>), String> {
            match &api.grpc_service {
                model::GrpcService::GoogleGrpc { target_uri, .. } => Ok((ServerAddr::Uri(target_uri.clone()), None)),
                model::GrpcService::EnvoyGrpc { cluster_name, max_receive_message_length, .. } => {
                    let c = b
                        .clusters
                        .iter()
                        .find(|c| &c.name == cluster_name)
                        .ok_or_else(|| format!("envoy_grpc cluster '{cluster_name}' is not a static cluster"))?;
                    // The xDS client dials the cluster itself; refusing TLS beats speaking
                    // plaintext to a control plane that expects TLS.
                    if c.transport_socket.is_some() {
                        return Err(format!(
                            "envoy_grpc cluster '{cluster_name}': TLS to the control plane is not supported by pinion yet"
                        ));
                    }
                    let addr = c
                        .load_assignment
                        .localities
                        .iter()
                        .flat_map(|l| l.endpoints.iter())
                        .map(|e| match &e.address {
                            model::EndpointAddress::Socket(a) => ServerAddr::Tcp(*a),
                            model::EndpointAddress::Dns { host, port } => {
                                ServerAddr::Uri(format!("http://{host}:{port}"))
                            }
                            model::EndpointAddress::Pipe(path) => ServerAddr::Unix(path.into()),
                        })
                        .next()
                        .ok_or_else(|| format!("envoy_grpc cluster '{cluster_name}' has no endpoint"))?;
                    Ok((addr, *max_receive_message_length))
                }
            }
        };
        let mut apis: BTreeMap<ResourceType, &model::ApiConfigSource> = BTreeMap::new();
        for (t, s) in &sources {
            match &s.kind {
                model::ConfigSourceKind::Ads => {
                    let ads = d.ads.as_ref().ok_or("ads is used but ads_config is not set")?;
                    apis.insert(*t, ads);
                }
                model::ConfigSourceKind::Api(a) => {
                    apis.insert(*t, a);
                }
            }
        }
        let Some(main) = apis.values().next().copied() else { return Ok(None) };
        if apis.values().any(|a| a.api_type != main.api_type) {
            return Err("lds_config and cds_config must use the same api_type".into());
        }
        let (server, max) = resolve(main)?;
        let mut cfg = ClientConfig::new(b.node.clone(), server);
        cfg.aggregated = all_ads;
        cfg.mode = match main.api_type {
            model::ApiType::Grpc => Mode::Sotw,
            model::ApiType::DeltaGrpc => Mode::Delta,
        };
        cfg.set_node_on_first_message_only = main.set_node_on_first_message_only;
        cfg.initial_fetch_timeout = first.initial_fetch_timeout;
        if let Some(m) = max.filter(|m| *m > 0) {
            cfg.max_message_size = usize::try_from(m).unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        }
        cfg.types.clear();
        for (t, api) in &apis {
            // LDS brings RDS, SRDS and (Delta only) VHDS along; CDS brings EDS.
            let dependents: &[ResourceType] = match (t, cfg.mode) {
                (ResourceType::Listener, Mode::Delta) => &[
                    ResourceType::RouteConfiguration,
                    ResourceType::ScopedRouteConfiguration,
                    ResourceType::VirtualHost,
                ],
                (ResourceType::Listener, Mode::Sotw) => {
                    &[ResourceType::RouteConfiguration, ResourceType::ScopedRouteConfiguration]
                }
                _ => &[ResourceType::ClusterLoadAssignment],
            };
            cfg.types.push(*t);
            cfg.types.extend_from_slice(dependents);
            if !all_ads {
                let (server, _) = resolve(api)?;
                cfg.per_type_servers.insert(*t, server.clone());
                for d in dependents {
                    cfg.per_type_servers.insert(*d, server.clone());
                }
            }
        }
        // A type that only brought dependents along (no lds_config/cds_config of its own).
        cfg.types.retain(|t| match t {
            ResourceType::Listener => lds_configured,
            ResourceType::Cluster => cds_configured,
            _ => true,
        });
        let main_server = cfg.per_type_servers.values().next().cloned();
        for (need, deps) in [
            (needs_eds, &[ResourceType::ClusterLoadAssignment][..]),
            (needs_routes, &[ResourceType::RouteConfiguration, ResourceType::ScopedRouteConfiguration][..]),
        ] {
            for d in deps.iter().filter(|_| need) {
                if !cfg.types.contains(d) {
                    cfg.types.push(*d);
                    if let Some(server) = &main_server {
                        cfg.per_type_servers.insert(*d, server.clone());
                    }
                }
            }
        }
        // SDS goes over the LDS/CDS transport: ADS, or a stream of its own to the server of
        // the bootstrap's SDS api_config_source (else the LDS/CDS server). The config store
        // refuses dynamic resources whose sds_config asks for another transport.
        let mut sds_api: Option<&model::ApiConfigSource> = None;
        let mut separate: Option<(&model::ApiConfigSource, Option<Duration>)> = None;
        for s in &sds_refs {
            match (&s.kind, all_ads) {
                (model::ConfigSourceKind::Ads, true) => {}
                // Beside ADS: a stream of its own to that server.
                (model::ConfigSourceKind::Api(api), true) => match separate {
                    None => separate = Some((api, s.initial_fetch_timeout)),
                    Some((first, _)) if first == api => {}
                    Some(_) => return Err("sds_config: several SDS api_config_sources are not supported by pinion".into()),
                },
                (model::ConfigSourceKind::Api(api), false) if api.api_type == main.api_type => match sds_api {
                    None => sds_api = Some(api),
                    Some(first) if first == api => {}
                    Some(_) => return Err("sds_config: several SDS api_config_sources are not supported by pinion".into()),
                },
                _ => {
                    return Err(
                        "sds_config must use the same transport as lds_config/cds_config (ads, or an api_config_source of the same api_type): other transports are not supported by pinion"
                            .into(),
                    )
                }
            }
        }
        if let Some(first) = sds_refs.first() {
            cfg.type_initial_fetch_timeout.insert(ResourceType::Secret, first.initial_fetch_timeout);
        }
        if !all_ads {
            let server = match sds_api {
                Some(api) => Some(resolve(api)?.0),
                None => main_server.clone(),
            };
            if let Some(server) = server {
                cfg.per_type_servers.insert(ResourceType::Secret, server);
            }
        }
        cfg.types.push(ResourceType::Secret);
        if let Some((api, timeout)) = separate {
            // Checked here; the data plane starts that client (see `sds_only`).
            Self::sds_only(b, api, timeout)?;
        }
        // RTDS layers of the layered runtime.
        for layer in &b.layered_runtime.layers {
            let model::RuntimeLayerKind::Rtds { config_source, .. } = &layer.kind else { continue };
            match (&config_source.kind, all_ads) {
                (model::ConfigSourceKind::Ads, true) => {}
                (model::ConfigSourceKind::Api(api), false) if api.api_type == main.api_type => {
                    let (server, _) = resolve(api)?;
                    cfg.per_type_servers.insert(ResourceType::Runtime, server);
                }
                _ => {
                    return Err(format!(
                        "layered_runtime layer '{}': rtds_config must use the same transport as lds_config/cds_config (ads, or an api_config_source of the same api_type)",
                        layer.name
                    ))
                }
            }
            if !cfg.types.contains(&ResourceType::Runtime) {
                cfg.types.push(ResourceType::Runtime);
            }
        }
        Ok(Some(cfg))
    }

    /// A client for SDS alone, on a stream of its own to `api`'s server (an `envoy_grpc`
    /// cluster of the bootstrap, e.g. with a `pipe` address, or a `google_grpc` target).
    /// Used for secrets whose `sds_config` names another server than the ADS stream
    /// (Istio's agent on a Unix socket beside istiod).
    pub fn sds_only(
        b: &model::Bootstrap,
        api: &model::ApiConfigSource,
        timeout: Option<Duration>,
    ) -> Result<Self, String> {
        let server = match &api.grpc_service {
            model::GrpcService::GoogleGrpc { target_uri, .. } => ServerAddr::Uri(target_uri.clone()),
            model::GrpcService::EnvoyGrpc { cluster_name, .. } => {
                let c = b.clusters.iter().find(|c| &c.name == cluster_name).ok_or_else(|| {
                    format!("sds_config: envoy_grpc cluster '{cluster_name}' is not a static cluster")
                })?;
                if c.transport_socket.is_some() {
                    return Err(format!(
                        "sds_config: envoy_grpc cluster '{cluster_name}': TLS to the SDS server is not supported by pinion yet"
                    ));
                }
                c.load_assignment
                    .localities
                    .iter()
                    .flat_map(|l| l.endpoints.iter())
                    .map(|e| match &e.address {
                        model::EndpointAddress::Socket(a) => ServerAddr::Tcp(*a),
                        model::EndpointAddress::Dns { host, port } => ServerAddr::Uri(format!("http://{host}:{port}")),
                        model::EndpointAddress::Pipe(path) => ServerAddr::Unix(path.into()),
                    })
                    .next()
                    .ok_or_else(|| format!("sds_config: envoy_grpc cluster '{cluster_name}' has no endpoint"))?
            }
        };
        let mut cfg = ClientConfig::new(b.node.clone(), server.clone());
        cfg.aggregated = false;
        cfg.mode = match api.api_type {
            model::ApiType::Grpc => Mode::Sotw,
            model::ApiType::DeltaGrpc => Mode::Delta,
        };
        cfg.set_node_on_first_message_only = api.set_node_on_first_message_only;
        cfg.types = vec![ResourceType::Secret];
        cfg.per_type_servers.insert(ResourceType::Secret, server);
        cfg.initial_fetch_timeout = timeout;
        Ok(cfg)
    }

    /// The initial fetch timeout of `t`.
    pub fn fetch_timeout(&self, t: ResourceType) -> Option<Duration> {
        self.type_initial_fetch_timeout.get(&t).copied().unwrap_or(self.initial_fetch_timeout)
    }

    fn server_for(&self, t: ResourceType) -> ServerAddr {
        self.per_type_servers.get(&t).cloned().unwrap_or_else(|| self.server.clone())
    }
}

/// JSON -> `google.protobuf.Value`.
fn json_to_value(v: &serde_json::Value) -> pbuf::Value {
    use pbuf::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(pbuf::ListValue { values: a.iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(o) => {
            Kind::StructValue(pbuf::Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() })
        }
    };
    pbuf::Value { kind: Some(kind) }
}

/// Runs the client until the future is dropped (or its task aborted): connects, subscribes,
/// delivers updates to `sink`, ACKs/NACKs, and reconnects forever with backoff.
pub async fn run(cfg: ClientConfig, sink: Arc<dyn ConfigSink>, stats: Arc<ClientStats>) {
    let mut types = cfg.types.clone();
    types.sort();
    types.dedup();
    let shared = session::Shared::new(cfg, sink, stats);
    if shared.cfg.aggregated {
        session::drive(shared.clone(), transport::StreamKind::Ads, types, shared.cfg.server.clone()).await;
    } else {
        let drivers = types.into_iter().map(|t| {
            let server = shared.cfg.server_for(t);
            session::drive(shared.clone(), transport::StreamKind::Single(t), vec![t], server)
        });
        futures_util::future::join_all(drivers).await;
    }
}
