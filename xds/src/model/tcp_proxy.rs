//! `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.

use std::time::Duration;

use super::{AccessLog, WeightedCluster};

/// TCP proxy filter config.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    /// `stat_prefix` (stats under `tcp.<stat_prefix>.`).
    pub stat_prefix: String,
    /// Target: one cluster or weighted clusters.
    pub cluster: TcpProxyCluster,
    /// `idle_timeout`: default 1h; `None` = disabled (0s in config).
    pub idle_timeout: Option<Duration>,
    /// `max_connect_attempts` (default 1).
    pub max_connect_attempts: u32,
    /// Access logs.
    pub access_logs: Vec<AccessLog>,
    /// `hash_policy` `source_ip`: ring hash and Maglev clusters pick by the client's IP.
    pub hash_source_ip: bool,
}

/// Where a TCP proxy sends connections.
#[derive(Debug, Clone)]
pub enum TcpProxyCluster {
    /// `cluster`.
    Single(String),
    /// `weighted_clusters`.
    Weighted(Vec<WeightedCluster>),
}
