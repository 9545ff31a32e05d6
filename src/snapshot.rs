//! The active configuration as workers see it: an immutable snapshot swapped atomically
//! (arc-swap). Workers load it per connection and per request; in-flight requests keep the
//! snapshot (and the clusters) they started with alive through their `Arc`s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access_log_grpc::ClusterResolver;
use crate::listener::ListenerImpl;
use crate::upstream::Cluster;

/// One version of the active config.
#[derive(Default)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// Active listeners.
    pub listeners: Vec<Arc<ListenerImpl>>,
    /// Active clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
}

/// Shared handle to the current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// gRPC access log sinks dial a host of their cluster in the config current at each connect.
impl ClusterResolver for ArcSwap<Snapshot> {
    fn resolve(&self, cluster: &str) -> Option<SocketAddr> {
        let snap = self.load();
        let c = snap.clusters.get(cluster)?;
        // The sink dials plaintext gRPC: a TLS cluster gets no logs rather than cleartext ones.
        if c.tls.is_some() {
            tracing::warn!(cluster, "gRPC access log: TLS to the log service is not supported by pinion yet");
            return None;
        }
        c.choose_host().map(|h| h.address)
    }
}
