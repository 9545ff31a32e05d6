//! Upstream: clusters, hosts, load balancing, per-worker connection pools.

pub mod cluster;
pub mod conn_pool;
pub mod dns;
pub mod h2_client;
pub mod host;
pub mod load_balancer;

pub use cluster::{Cluster, ClusterStats};
pub use host::{Host, HostSet, HostStats};
