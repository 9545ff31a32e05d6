//! The boundary between the xDS client (protocol, protos) and the data plane (plain model
//! types): translated resources flow in through [`ConfigSink::apply`], which returns the
//! resources it rejected (they become the NACK); the sink tells the client which RDS/EDS
//! names the current listeners and clusters reference.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model;

/// The resource types Pinion subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS.
    Listener,
    /// RDS.
    RouteConfiguration,
    /// CDS.
    Cluster,
    /// EDS.
    ClusterLoadAssignment,
    /// SRDS (wildcard, requested once an HCM uses `scoped_rds`).
    ScopedRouteConfiguration,
    /// VHDS (Delta only; named by route configuration, namespace-matched, plus on-demand names).
    VirtualHost,
    /// RTDS.
    Runtime,
    /// SDS (named by the TLS contexts of listeners and clusters).
    Secret,
}

impl ResourceType {
    /// The v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::RouteConfiguration => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::ClusterLoadAssignment => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            ResourceType::ScopedRouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
            }
            ResourceType::VirtualHost => "type.googleapis.com/envoy.config.route.v3.VirtualHost",
            ResourceType::Runtime => "type.googleapis.com/envoy.service.runtime.v3.Runtime",
            ResourceType::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// Parse a v3 type URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Every type.
    pub const ALL: [ResourceType; 8] = [
        Self::Listener,
        Self::RouteConfiguration,
        Self::Cluster,
        Self::ClusterLoadAssignment,
        Self::ScopedRouteConfiguration,
        Self::VirtualHost,
        Self::Runtime,
        Self::Secret,
    ];

    /// LDS, CDS and SRDS are wildcard subscriptions; the others name their resources.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster | ResourceType::ScopedRouteConfiguration)
    }

    /// SRDS, VHDS, RTDS, SDS: used only by some configs (the four core types are always there).
    pub fn is_optional(self) -> bool {
        matches!(
            self,
            ResourceType::ScopedRouteConfiguration
                | ResourceType::VirtualHost
                | ResourceType::Runtime
                | ResourceType::Secret
        )
    }

    /// Subscribed only once the config needs it (SRDS: an HCM with `scoped_rds`; the sink's
    /// `wanted` returns a non-empty set then), instead of from the start.
    pub fn is_lazy(self) -> bool {
        matches!(self, ResourceType::ScopedRouteConfiguration)
    }

    /// The proto message's full name (`envoy.config.listener.v3.Listener`).
    pub fn message_name(self) -> &'static str {
        self.type_url().trim_start_matches("type.googleapis.com/")
    }

    /// Short name for logs and stats (`lds`, `rds`, `cds`, `eds`, `srds`, `vhds`, `rtds`, `sds`).
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Listener => "lds",
            ResourceType::RouteConfiguration => "rds",
            ResourceType::Cluster => "cds",
            ResourceType::ClusterLoadAssignment => "eds",
            ResourceType::ScopedRouteConfiguration => "srds",
            ResourceType::VirtualHost => "vhds",
            ResourceType::Runtime => "rtds",
            ResourceType::Secret => "sds",
        }
    }
}

/// A translated resource.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A listener.
    Listener(Arc<model::Listener>),
    /// A route configuration.
    RouteConfiguration(Arc<model::RouteConfiguration>),
    /// A cluster (EDS clusters carry `eds_service_name` in `load_assignment.cluster_name`).
    Cluster(Arc<model::Cluster>),
    /// Endpoints of a cluster.
    ClusterLoadAssignment(Arc<model::LoadAssignment>),
    /// A routing scope.
    ScopedRouteConfiguration(Arc<model::ScopedRouteConfiguration>),
    /// A virtual host of a route configuration (VHDS); the resource name is
    /// `<route configuration name>/<virtual host name>`.
    VirtualHost(Arc<model::VirtualHost>),
    /// A runtime layer.
    Runtime(Arc<model::RuntimeLayer>),
    /// A secret (SDS).
    Secret(Arc<model::Secret>),
}

/// One added or updated resource.
#[derive(Debug, Clone)]
pub struct ResourceUpdate {
    /// Resource name.
    pub name: String,
    /// Version (SotW: the response's `version_info`; Delta: the resource's version).
    pub version: String,
    /// The resource, translated.
    pub resource: Resource,
    /// The resource's encoded proto, kept for `/config_dump` (rendered to JSON only when asked:
    /// JSON for thousands of resources costs memory and update time for nothing).
    pub raw: bytes::Bytes,
}

/// A resource the client or the sink refused, with the reason (goes into the NACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Resource name (may be empty if the payload could not be decoded far enough).
    pub name: String,
    /// Why, naming the field path.
    pub reason: String,
}

/// A batch for one type from one response.
#[derive(Debug, Clone)]
pub struct Update {
    /// Resource type.
    pub type_: ResourceType,
    /// Added or changed resources that passed decoding, validation and translation.
    pub updated: Vec<ResourceUpdate>,
    /// Names removed (Delta `removed_resources`; SotW wildcard types: names missing from the
    /// full set are computed by the client and listed here).
    pub removed: Vec<String>,
    /// Response version (`version_info` / `system_version_info`).
    pub version: String,
}

/// Where the client delivers configuration. Implemented by the data plane's config store.
pub trait ConfigSink: Send + Sync + 'static {
    /// Apply a batch. Returns resources that the sink rejects (e.g. a cluster referenced by
    /// nothing fails to build); the client folds them into the NACK. Must not block long.
    fn apply(&self, update: Update) -> Vec<Rejected>;

    /// The names of `type_` the current config references (RDS names from listeners, EDS
    /// service names from EDS clusters). Wildcard types return `None`.
    fn wanted(&self, type_: ResourceType) -> Option<BTreeSet<String>>;

    /// Called when a subscription's `initial_fetch_timeout` passes without data, so warming
    /// can give up waiting (Envoy then proceeds without the resource).
    fn initial_fetch_timeout(&self, type_: ResourceType) {
        let _ = type_;
    }

    /// Per-resource outcome of one response for named types (RDS, EDS): Envoy keeps
    /// `update_attempt`/`update_success`/`update_rejected` per route configuration
    /// (`http.<prefix>.rds.<name>.`) and per cluster (`cluster.<name>.`). `accepted` includes
    /// resources re-sent unchanged.
    fn resource_outcomes(&self, type_: ResourceType, accepted: &[String], rejected: &[String]) {
        let _ = (type_, accepted, rejected);
    }

    /// A receiver that changes whenever the sink's wanted names change for reasons other than
    /// an applied update (VHDS on-demand requests from the data plane).
    fn wanted_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Called on stream state changes (`control_plane.connected_state`).
    fn connected(&self, connected: bool) {
        let _ = connected;
    }
}
