//! Upstream: clusters, hosts, load balancing, per-worker connection pools.

pub mod cluster;
pub mod cluster_stats;
pub mod conn_pool;
pub mod dns;
pub mod h2_client;
pub mod health_check;
pub mod health_checker;
pub mod host;
pub mod host_set;
pub mod lb;
pub mod outlier_detection;
pub mod outlier_detector;
pub mod resource_manager;

pub use cluster::{Cluster, ResolvedEndpoint};
pub use cluster_stats::{ClusterStats, HealthCheckStats};
pub use host::{HealthFlags, Host, HostStats};
pub use host_set::{HostSet, PriorityHosts};
pub use lb::{LbContext, LoadBalancer};
pub use resource_manager::{Resource, ResourceGuard, ResourceManager, RetryGuard};
