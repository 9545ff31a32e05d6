//! `dynamic_resources`: where LDS and CDS come from (ADS or their own API config sources).

use std::time::Duration;

/// The translated `Bootstrap.dynamic_resources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicResources {
    /// `ads_config`: the aggregated stream, if configured.
    pub ads: Option<ApiConfigSource>,
    /// `lds_config`.
    pub lds: Option<ConfigSource>,
    /// `cds_config`.
    pub cds: Option<ConfigSource>,
}

/// `envoy.config.core.v3.ConfigSource` (the parts Pinion implements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// ADS or a dedicated stream.
    pub kind: ConfigSourceKind,
    /// `initial_fetch_timeout` (default 15 s; `0s` disables: `None`).
    pub initial_fetch_timeout: Option<Duration>,
}

/// Where a `ConfigSource` fetches from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSourceKind {
    /// `ads: {}`: over the bootstrap's `ads_config` stream.
    Ads,
    /// `api_config_source`: its own stream.
    Api(ApiConfigSource),
}

/// `envoy.config.core.v3.ApiConfigSource` with a gRPC transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfigSource {
    /// `GRPC` (state of the world) or `DELTA_GRPC` (incremental).
    pub api_type: ApiType,
    /// The single gRPC service.
    pub grpc_service: GrpcService,
    /// `set_node_on_first_message_only`.
    pub set_node_on_first_message_only: bool,
}

/// `ApiConfigSource.api_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    /// `GRPC`.
    Grpc,
    /// `DELTA_GRPC`.
    DeltaGrpc,
}

/// `envoy.config.core.v3.GrpcService` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcService {
    /// `envoy_grpc`: through a (static) cluster.
    EnvoyGrpc {
        /// `cluster_name`.
        cluster_name: String,
        /// `authority` (empty: the cluster name).
        authority: String,
        /// `max_receive_message_length`, if set.
        max_receive_message_length: Option<u32>,
    },
    /// `google_grpc`: a target URI.
    GoogleGrpc {
        /// `target_uri`.
        target_uri: String,
        /// `stat_prefix`.
        stat_prefix: String,
    },
}
