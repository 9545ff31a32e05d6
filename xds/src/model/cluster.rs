//! `envoy.config.cluster.v3.Cluster` and its endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Http2Options, Locality};

/// An upstream cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Unique name.
    pub name: String,
    /// `alt_stat_name` or the name; stats under `cluster.<stat_name>.`.
    pub stat_name: String,
    /// How endpoints are found.
    pub discovery: DiscoveryType,
    /// `eds_cluster_config.service_name` (EDS only; empty = the cluster name).
    pub eds_service_name: String,
    /// `connect_timeout` (default 5s).
    pub connect_timeout: Duration,
    /// Load-balancing policy.
    pub lb_policy: LbPolicy,
    /// `common_lb_config` and the policy's `*_lb_config` settings.
    pub lb_config: LbConfig,
    /// Endpoints by priority/locality (`load_assignment`).
    pub load_assignment: LoadAssignment,
    /// Upstream HTTP protocol selection.
    pub protocol: UpstreamProtocol,
    /// HTTP/2 settings for upstream connections.
    pub http2: Http2Options,
    /// `common_http_protocol_options.idle_timeout` for upstream connections (default 1h).
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection` (0 = unlimited).
    pub max_requests_per_connection: u32,
    /// `common_http_protocol_options.max_stream_duration` for upstream streams, from the
    /// moment the stream has a connection (`None`: unset or 0).
    pub max_stream_duration: Option<Duration>,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub per_connection_buffer_limit_bytes: u32,
    /// `dns_refresh_rate` (default 5s) for STRICT_DNS.
    pub dns_refresh_rate: Duration,
    /// `dns_lookup_family`.
    pub dns_lookup_family: DnsLookupFamily,
    /// `circuit_breakers` thresholds per routing priority.
    pub circuit_breakers: CircuitBreakers,
    /// `close_connections_on_host_health_failure`.
    pub close_connections_on_host_health_failure: bool,
    /// Upstream TLS (`transport_socket` `envoy.transport_sockets.tls`); `None` = plaintext.
    pub transport_socket: Option<std::sync::Arc<super::UpstreamTlsContext>>,
    /// `outlier_detection` (`None`: no detector, as in Envoy).
    pub outlier_detection: Option<OutlierDetection>,
    /// `health_checks` (at most one): active health checking.
    pub health_check: Option<HealthCheck>,
}

/// `envoy.config.cluster.v3.OutlierDetection` with Envoy's defaults applied (the
/// `outlier_detection_impl.cc` `DetectorConfig` values). Durations are kept as configured;
/// the detector works in whole milliseconds, as Envoy does. Percentages are 0..=100 (PGV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `consecutive_5xx` (default 5).
    pub consecutive_5xx: u32,
    /// `interval` (default 10s).
    pub interval: Duration,
    /// `base_ejection_time` (default 30s).
    pub base_ejection_time: Duration,
    /// `max_ejection_percent` (default 10).
    pub max_ejection_percent: u32,
    /// `enforcing_consecutive_5xx` (default 100).
    pub enforcing_consecutive_5xx: u32,
    /// `enforcing_success_rate` (default 100).
    pub enforcing_success_rate: u32,
    /// `success_rate_minimum_hosts` (default 5).
    pub success_rate_minimum_hosts: u32,
    /// `success_rate_request_volume` (default 100).
    pub success_rate_request_volume: u32,
    /// `success_rate_stdev_factor` in thousandths (default 1900, i.e. 1.9).
    pub success_rate_stdev_factor: u32,
    /// `consecutive_gateway_failure` (default 5).
    pub consecutive_gateway_failure: u32,
    /// `enforcing_consecutive_gateway_failure` (default 0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// `split_external_local_origin_errors` (default false).
    pub split_external_local_origin_errors: bool,
    /// `consecutive_local_origin_failure` (default 5).
    pub consecutive_local_origin_failure: u32,
    /// `enforcing_consecutive_local_origin_failure` (default 100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// `enforcing_local_origin_success_rate` (default 100).
    pub enforcing_local_origin_success_rate: u32,
    /// `failure_percentage_threshold` (default 85).
    pub failure_percentage_threshold: u32,
    /// `enforcing_failure_percentage` (default 0).
    pub enforcing_failure_percentage: u32,
    /// `enforcing_failure_percentage_local_origin` (default 0).
    pub enforcing_failure_percentage_local_origin: u32,
    /// `failure_percentage_minimum_hosts` (default 5).
    pub failure_percentage_minimum_hosts: u32,
    /// `failure_percentage_request_volume` (default 50).
    pub failure_percentage_request_volume: u32,
    /// `max_ejection_time` (default: the larger of 300s and `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// `max_ejection_time_jitter` (default 0).
    pub max_ejection_time_jitter: Duration,
    /// `successful_active_health_check_uneject_host` (default true).
    pub successful_active_health_check_uneject_host: bool,
    /// `always_eject_one_host` (default false): the first ejection ignores
    /// `max_ejection_percent`.
    pub always_eject_one_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
            enforcing_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_local_origin_success_rate: 100,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            successful_active_health_check_uneject_host: true,
            always_eject_one_host: false,
        }
    }
}

/// `envoy.config.core.v3.HealthCheck`, with Envoy's defaults resolved.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `timeout` of one check (connect included).
    pub timeout: Duration,
    /// `interval` between checks of a host.
    pub interval: Duration,
    /// `initial_jitter` (0 = the first check runs at once).
    pub initial_jitter: Duration,
    /// `interval_jitter` (added at random, up to this).
    pub interval_jitter: Duration,
    /// `interval_jitter_percent` (of the base interval, added at random).
    pub interval_jitter_percent: u32,
    /// `unhealthy_threshold`: network failures (or retriable ones) in a row that fail a host.
    pub unhealthy_threshold: u32,
    /// `healthy_threshold`: successes in a row that bring a failed host back.
    pub healthy_threshold: u32,
    /// `reuse_connection` (default true).
    pub reuse_connection: bool,
    /// `no_traffic_interval` (default 60s): the interval while the cluster has had no traffic.
    pub no_traffic_interval: Duration,
    /// `no_traffic_healthy_interval` (default: `no_traffic_interval`).
    pub no_traffic_healthy_interval: Duration,
    /// `unhealthy_interval` (default: `interval`).
    pub unhealthy_interval: Duration,
    /// `unhealthy_edge_interval` (default: `unhealthy_interval`).
    pub unhealthy_edge_interval: Duration,
    /// `healthy_edge_interval` (default: `interval`).
    pub healthy_edge_interval: Duration,
    /// `always_log_health_check_failures` (only changes the log level of failures).
    pub always_log_health_check_failures: bool,
    /// What a check sends and expects.
    pub checker: HealthChecker,
}

/// `HealthCheck.health_checker`.
#[derive(Debug, Clone)]
pub enum HealthChecker {
    /// `http_health_check`.
    Http(HttpHealthCheck),
    /// `tcp_health_check`.
    Tcp(TcpHealthCheck),
    /// `grpc_health_check`.
    Grpc(GrpcHealthCheck),
}

/// `HealthCheck.HttpHealthCheck`.
#[derive(Debug, Clone)]
pub struct HttpHealthCheck {
    /// `host` (empty: the endpoint's `health_check_config.hostname`, else the cluster name).
    pub host: String,
    /// `path`.
    pub path: String,
    /// `method` (default GET).
    pub method: http::Method,
    /// `request_headers_to_add` (plain values only).
    pub request_headers_to_add: Vec<super::HeaderValueOption>,
    /// `request_headers_to_remove` (lowercased).
    pub request_headers_to_remove: Vec<String>,
    /// `expected_statuses` as half-open `[start, end)` ranges (default `[200, 201)`).
    pub expected_statuses: Vec<(u16, u16)>,
    /// `retriable_statuses` as half-open ranges.
    pub retriable_statuses: Vec<(u16, u16)>,
    /// `codec_client_type`.
    pub codec: HealthCheckCodec,
    /// `service_name_matcher`: matched against `x-envoy-upstream-healthchecked-cluster`.
    pub service_name_matcher: Option<super::StringMatcher>,
}

/// `envoy.type.v3.CodecClientType` of an HTTP health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckCodec {
    /// `HTTP1` (default).
    Http1,
    /// `HTTP2` (prior knowledge on plaintext).
    Http2,
}

/// `HealthCheck.TcpHealthCheck`.
#[derive(Debug, Clone, Default)]
pub struct TcpHealthCheck {
    /// Bytes written after connecting (decoded `send.text`); only sent when `receive` is set.
    pub send: Vec<u8>,
    /// Segments that must appear in order in what the host sends back (empty: connecting is
    /// the check).
    pub receive: Vec<Vec<u8>>,
}

/// `HealthCheck.GrpcHealthCheck`: `grpc.health.v1.Health/Check`.
#[derive(Debug, Clone, Default)]
pub struct GrpcHealthCheck {
    /// `service_name` (None: the field is left out of the request).
    pub service_name: Option<String>,
    /// `authority` (empty: as the HTTP check's host).
    pub authority: String,
    /// `initial_metadata` (plain values only).
    pub initial_metadata: Vec<super::HeaderValueOption>,
}

/// `Endpoint.health_check_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealthCheck {
    /// `port_value` (0: the endpoint's port).
    pub port: u16,
    /// `hostname`: the Host/authority of HTTP and gRPC checks of this endpoint.
    pub hostname: String,
    /// `disable_active_health_check`.
    pub disabled: bool,
}

/// `Cluster.DiscoveryType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    /// `STATIC`.
    Static,
    /// `STRICT_DNS`.
    StrictDns,
    /// `LOGICAL_DNS`.
    LogicalDns,
    /// `EDS` (with the EDS service name).
    Eds,
}

/// `Cluster.LbPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN`.
    RoundRobin,
    /// `LEAST_REQUEST`.
    LeastRequest,
    /// `RANDOM`.
    Random,
    /// `RING_HASH` (or the `envoy.load_balancing_policies.ring_hash` extension).
    RingHash(RingHashConfig),
    /// `MAGLEV` (or the `envoy.load_balancing_policies.maglev` extension).
    Maglev(MaglevConfig),
}

/// Ring hash settings (`ring_hash_lb_config`), Envoy's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    /// `minimum_ring_size` (default 1024).
    pub minimum_ring_size: u64,
    /// `maximum_ring_size` (default 8M).
    pub maximum_ring_size: u64,
    /// `consistent_hashing_lb_config.use_hostname_for_hashing`: hash hosts by hostname
    /// instead of address.
    pub use_hostname_for_hashing: bool,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig { minimum_ring_size: 1024, maximum_ring_size: 8 * 1024 * 1024, use_hostname_for_hashing: false }
    }
}

/// Maglev settings (`maglev_lb_config`), Envoy's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevConfig {
    /// `table_size`, a prime (default 65537).
    pub table_size: u64,
    /// `consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig { table_size: 65537, use_hostname_for_hashing: false }
    }
}

/// Load-balancer settings: `common_lb_config` plus `round_robin_lb_config` /
/// `least_request_lb_config`, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    /// `common_lb_config.healthy_panic_threshold`, rounded to a whole percent (default 50, 0
    /// disables panic mode).
    pub healthy_panic_threshold: u32,
    /// `common_lb_config.locality_weighted_lb_config` is set.
    pub locality_weighted: bool,
    /// `least_request_lb_config.choice_count` (default 2).
    pub choice_count: u32,
    /// `least_request_lb_config.active_request_bias.default_value` (`None`: not set, 1.0
    /// applies).
    pub active_request_bias: Option<f64>,
    /// `least_request_lb_config.active_request_bias.runtime_key` (empty: none).
    pub active_request_bias_key: String,
    /// `slow_start_config` of the round robin or least request config.
    pub slow_start: Option<SlowStart>,
    /// `common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            healthy_panic_threshold: 50,
            locality_weighted: false,
            choice_count: 2,
            active_request_bias: None,
            active_request_bias_key: String::new(),
            slow_start: None,
            use_hostname_for_hashing: false,
        }
    }
}

/// `Cluster.SlowStartConfig`: a host that becomes healthy ramps its weight up over `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStart {
    /// `slow_start_window` (non-zero: a zero window disables slow start, as in Envoy).
    pub window: Duration,
    /// `aggression.default_value` (default 1.0; the ramp is `time_factor ^ (1 / aggression)`).
    pub aggression: f64,
    /// `aggression.runtime_key` (empty: none).
    pub aggression_key: String,
    /// `min_weight_percent` as a fraction (default 0.1).
    pub min_weight: f64,
}

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 (prior knowledge when cleartext).
    Http2,
    /// Same as the downstream request.
    UseDownstream,
}

/// `DnsLookupFamily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// `AUTO`: prefer v6, fall back to v4 (Envoy's default for DNS clusters).
    Auto,
    /// `V4_ONLY`.
    V4Only,
    /// `V6_ONLY`.
    V6Only,
    /// `V4_PREFERRED`.
    V4Preferred,
    /// `ALL`.
    All,
}

/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
#[derive(Debug, Clone, Default)]
pub struct LoadAssignment {
    /// `cluster_name`.
    pub cluster_name: String,
    /// Localities with their endpoints.
    pub localities: Vec<LocalityEndpoints>,
    /// `policy.overprovisioning_factor` (default 140).
    pub overprovisioning_factor: u32,
    /// `policy.weighted_priority_health`: priority health from host weights, not counts.
    pub weighted_priority_health: bool,
}

/// `LocalityLbEndpoints`.
#[derive(Debug, Clone, Default)]
pub struct LocalityEndpoints {
    /// Locality.
    pub locality: Option<Locality>,
    /// `load_balancing_weight`.
    pub load_balancing_weight: Option<u32>,
    /// `priority` (0 = highest).
    pub priority: u32,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// `LbEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: EndpointAddress,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// `health_status` from config/EDS.
    pub health_status: HealthStatus,
    /// `endpoint.hostname` (used by `auto_host_rewrite`).
    pub hostname: String,
    /// `endpoint.health_check_config`.
    pub health_check: EndpointHealthCheck,
    /// `metadata.filter_metadata["envoy.lb"].hash_key`: what hash-based load balancers hash
    /// for this host instead of its address (empty: not set).
    pub lb_hash_key: String,
}

/// An endpoint address: resolved, or a DNS name for STRICT_DNS/LOGICAL_DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// IP and port.
    Socket(SocketAddr),
    /// A hostname to resolve, with its port.
    Dns {
        /// Hostname.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix domain socket (`pipe`). The xDS and gRPC access-log clients dial it; the HTTP
    /// data plane does not yet, so such hosts never serve routed traffic (503 no healthy upstream).
    Pipe(String),
}

/// `envoy.config.core.v3.HealthStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// `UNKNOWN` (treated as healthy).
    Unknown,
    /// `HEALTHY`.
    Healthy,
    /// `UNHEALTHY`.
    Unhealthy,
    /// `DRAINING`.
    Draining,
    /// `TIMEOUT`.
    Timeout,
    /// `DEGRADED`.
    Degraded,
}

impl HealthStatus {
    /// Whether the LB may pick the endpoint.
    pub fn is_routable(self) -> bool {
        matches!(self, HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
    }
}

/// `envoy.config.core.v3.RoutingPriority`: which of a cluster's resource managers (circuit
/// breaker thresholds, connection pools) a route's requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoutingPriority {
    /// `DEFAULT`.
    #[default]
    Default,
    /// `HIGH`.
    High,
}

impl RoutingPriority {
    /// Both priorities, `DEFAULT` first (Envoy's order in `/clusters` and stats).
    pub const ALL: [RoutingPriority; 2] = [RoutingPriority::Default, RoutingPriority::High];

    /// Index into per-priority arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Envoy's lower-case name (`circuit_breakers.<name>.` stats, runtime keys, `/clusters`).
    pub fn name(self) -> &'static str {
        match self {
            RoutingPriority::Default => "default",
            RoutingPriority::High => "high",
        }
    }
}

/// `circuit_breakers`: the thresholds of each routing priority (Envoy uses the first
/// `thresholds` entry of a priority, and Envoy's defaults when there is none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CircuitBreakers {
    /// `DEFAULT` priority.
    pub default: Thresholds,
    /// `HIGH` priority.
    pub high: Thresholds,
}

impl CircuitBreakers {
    /// The thresholds of `priority`.
    pub fn get(&self, priority: RoutingPriority) -> &Thresholds {
        match priority {
            RoutingPriority::Default => &self.default,
            RoutingPriority::High => &self.high,
        }
    }
}

/// One priority's thresholds (`CircuitBreakers.Thresholds`, plus `max_connections` of the
/// priority's `per_host_thresholds`). Envoy's defaults: 1024 connections, pending and active
/// requests, 3 retries, unlimited connection pools and connections per host.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// `max_connections`.
    pub max_connections: u64,
    /// `max_pending_requests`.
    pub max_pending_requests: u64,
    /// `max_requests`.
    pub max_requests: u64,
    /// `max_retries` (ignored for admission while a `retry_budget` is set).
    pub max_retries: u64,
    /// `retry_budget`, with its defaults filled in.
    pub retry_budget: Option<RetryBudget>,
    /// `track_remaining`: publish the `remaining_*` gauges.
    pub track_remaining: bool,
    /// `max_connection_pools` (`u64::MAX`: unlimited).
    pub max_connection_pools: u64,
    /// `per_host_thresholds[].max_connections` of this priority (`u64::MAX`: unlimited).
    pub max_connections_per_host: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
            max_connection_pools: u64::MAX,
            max_connections_per_host: u64::MAX,
        }
    }
}

/// `Thresholds.RetryBudget`: concurrent retries limited to a share of the active and pending
/// requests, with a floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent` (default 20.0).
    pub budget_percent: f64,
    /// `min_retry_concurrency` (default 3).
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { budget_percent: 20.0, min_retry_concurrency: 3 }
    }
}
