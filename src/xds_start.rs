//! Starting the xDS client on the control thread: the bootstrap's `dynamic_resources` become a
//! client config, the config store is the sink, and the client's stats join `/stats`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pinion_xds::client::{self, ClientConfig, ClientStats};
use pinion_xds::model;
use pinion_xds::sink::{ConfigSink, Rejected, ResourceType, Update};

use crate::config_store::ConfigStore;
use crate::stats::Store;

/// Spawn the client; it reconnects on its own for the life of the process.
pub fn start(
    cfg: ClientConfig,
    store: Arc<ConfigStore>,
    stats: &Store,
    bootstrap: Arc<model::Bootstrap>,
) -> tokio::task::JoinHandle<()> {
    // Secrets from another server than the ADS stream get a client of their own, started
    // when a listener or cluster first names that server.
    if cfg.aggregated {
        let starter = SeparateSdsStarter {
            bootstrap: bootstrap.clone(),
            store: Arc::downgrade(&store),
            started: Mutex::new(None),
        };
        store.set_separate_sds_starter(Box::new(move |api, timeout| starter.ensure(api, timeout)));
        let static_refs = bootstrap
            .listeners
            .iter()
            .flat_map(|l| l.sds_configs())
            .chain(bootstrap.clusters.iter().flat_map(|c| c.sds_configs()))
            .filter_map(|s| s.source.as_ref());
        for source in static_refs {
            if let model::ConfigSourceKind::Api(api) = &source.kind {
                if let Err(e) = store.start_separate_sds(api, source.initial_fetch_timeout) {
                    tracing::error!("{e}");
                }
            }
        }
    }
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

/// Starts the separate SDS client on first need, once.
struct SeparateSdsStarter {
    bootstrap: Arc<model::Bootstrap>,
    store: Weak<ConfigStore>,
    started: Mutex<Option<model::ApiConfigSource>>,
}

impl SeparateSdsStarter {
    fn ensure(&self, api: &model::ApiConfigSource, timeout: Option<Duration>) -> Result<(), String> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        match &*started {
            Some(a) if a == api => return Ok(()),
            Some(_) => {
                return Err("sds_config: several SDS servers beside ADS are not supported by pinion".into());
            }
            None => {}
        }
        let cfg = ClientConfig::sds_only(&self.bootstrap, api, timeout)?;
        let store = self.store.upgrade().ok_or("shutting down")?;
        store.set_separate_sds(true);
        tokio::spawn(client::run(cfg, Arc::new(SeparateSds(store)), ClientStats::new()));
        *started = Some(api.clone());
        Ok(())
    }
}

/// The sink of the separate SDS client: the config store, asked only for the secrets named
/// with an `api_config_source` (the main client subscribes to the ones over ADS).
struct SeparateSds(Arc<ConfigStore>);

impl ConfigSink for SeparateSds {
    fn apply(&self, update: Update) -> Vec<Rejected> {
        self.0.apply(update)
    }

    fn wanted(&self, type_: ResourceType) -> Option<BTreeSet<String>> {
        match type_ {
            ResourceType::Secret => Some(self.0.separate_sds_wanted()),
            _ => Some(BTreeSet::new()),
        }
    }

    fn initial_fetch_timeout(&self, type_: ResourceType) {
        self.0.initial_fetch_timeout(type_)
    }

    fn resource_outcomes(&self, type_: ResourceType, accepted: &[String], rejected: &[String]) {
        self.0.resource_outcomes(type_, accepted, rejected)
    }

    fn wanted_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.0.applied_changes())
    }
}
