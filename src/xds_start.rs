//! Starting the xDS client on the control thread: the bootstrap's `dynamic_resources` become a
//! client config, the config store is the sink, and the client's stats join `/stats`.

use std::sync::Arc;

use pinion_xds::client::{self, ClientConfig, ClientStats};

use crate::config_store::ConfigStore;
use crate::stats::Store;

/// Spawn the client; it reconnects on its own for the life of the process.
pub fn start(cfg: ClientConfig, store: Arc<ConfigStore>, stats: &Store) -> tokio::task::JoinHandle<()> {
    let client_stats = ClientStats::new();
    let source_stats = client_stats.clone();
    stats.add_source(Arc::new(move || {
        source_stats.entries().into_iter().map(|e| (e.name, e.value as i64, e.gauge)).collect()
    }));
    // LDS/CDS not configured count as done for readiness.
    for t in [pinion_xds::sink::ResourceType::Listener, pinion_xds::sink::ResourceType::Cluster] {
        if !cfg.types.contains(&t) {
            store.mark_initial_done(t);
        }
    }
    tokio::spawn(client::run(cfg, store, client_stats))
}
