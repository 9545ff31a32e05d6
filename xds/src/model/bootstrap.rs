//! The bootstrap: node identity, admin, and the static resources.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Cluster, Listener};

/// The translated bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Identity sent to control planes and shown in `/server_info`.
    pub node: Node,
    /// Admin listener, if configured.
    pub admin: Option<Admin>,
    /// Static listeners, in config order.
    pub listeners: Vec<Arc<Listener>>,
    /// Static clusters, in config order.
    pub clusters: Vec<Arc<Cluster>>,
    /// `static_resources.secrets`, in config order.
    pub secrets: Vec<Arc<super::Secret>>,
    /// `dynamic_resources` (xDS), if set to anything.
    pub dynamic_resources: Option<super::DynamicResources>,
    /// `layered_runtime` (empty when not set).
    pub layered_runtime: super::LayeredRuntime,
    /// `cluster_manager.outlier_detection.event_log_path` (empty: no outlier event log).
    pub outlier_event_log_path: String,
    /// The bootstrap as proto3 JSON, for `/config_dump`.
    pub config_dump_json: serde_json::Value,
}

/// `envoy.config.core.v3.Node`.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// `node.id` (or `--service-node`).
    pub id: String,
    /// `node.cluster` (or `--service-cluster`).
    pub cluster: String,
    /// `node.metadata` as JSON.
    pub metadata: serde_json::Value,
    /// `node.locality`.
    pub locality: Option<Locality>,
}

/// `envoy.config.core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// `envoy.config.bootstrap.v3.Admin`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Where the admin listener binds.
    pub address: SocketAddr,
    /// Admin access logs (Envoy's `admin.access_log`).
    pub access_logs: Vec<super::AccessLog>,
}
