//! The config store (Envoy's cluster manager + listener manager bookkeeping for xDS): keeps
//! every dynamic resource by type and name with its version, tracks warming (a cluster waits
//! for its endpoints, a listener for its route configs), and publishes a new immutable
//! snapshot whenever the active set changes. Implements the xDS client's `ConfigSink`.
//!
//! Runs on the control thread only; the request path never touches it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use pinion_xds::model;
use pinion_xds::sink::{ConfigSink, Rejected, Resource, ResourceType, ResourceUpdate, Update};
use tokio::sync::watch;

use crate::access_log::AccessLogManager;
use crate::http::on_demand::OnDemandVhds;
use crate::http::route_table::RouteTable;
use crate::listener::{scope_map_key, ListenerImpl, RdsSlot, RouteProvider, ScopeMap, ScopeSlot};
use crate::listener_manager::ListenerManager;
use crate::runtime::Runtime;
use crate::secret_manager::SecretManager;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::stats::{Prom, Store};
use crate::upstream::outlier_detector::{self, EventLog};
use crate::upstream::{dns, health_check, Cluster};

/// Starts the SDS client for an `api_config_source` beside ADS (once per server).
pub type SdsStarter = Box<dyn Fn(&model::ApiConfigSource, Option<Duration>) -> Result<(), String> + Send + Sync>;

/// A dynamic resource with its bookkeeping.
#[derive(Clone)]
pub struct Versioned<T> {
    /// The resource.
    pub value: T,
    /// Version it came with.
    pub version: String,
    /// The encoded proto, rendered to JSON only for `/config_dump`: JSON (even as text) costs
    /// several times the memory and most of an update's CPU, and thousands of resources are
    /// normal in a mesh.
    pub raw: bytes::Bytes,
    /// When it was accepted.
    pub last_updated: SystemTime,
}

/// The last rejected update, for `/config_dump`.
#[derive(Clone, Debug)]
pub struct RejectedUpdate {
    /// Resource type.
    pub type_: ResourceType,
    /// Version of the rejected response.
    pub version: String,
    /// The error message sent in the NACK.
    pub details: String,
    /// When.
    pub at: SystemTime,
}

#[derive(Default)]
struct Inner {
    static_clusters: HashMap<String, Arc<Cluster>>,
    /// Static EDS clusters still waiting for their first endpoints (part of initialization).
    static_eds_waiting: BTreeSet<String>,
    /// Static listeners whose routes come from RDS/SRDS.
    static_listeners: Vec<Arc<model::Listener>>,
    listeners: BTreeMap<String, Versioned<Arc<model::Listener>>>,
    routes: BTreeMap<String, Versioned<Arc<model::RouteConfiguration>>>,
    clusters: BTreeMap<String, Versioned<Arc<model::Cluster>>>,
    endpoints: BTreeMap<String, Versioned<Arc<model::LoadAssignment>>>,
    /// Runtime clusters serving traffic (dynamic only).
    active_clusters: HashMap<String, Arc<Cluster>>,
    /// Runtime clusters waiting for their first EDS response.
    warming_clusters: HashMap<String, Arc<Cluster>>,
    /// Listeners waiting for RDS or SDS.
    warming_listeners: HashMap<String, Arc<ListenerImpl>>,
    /// Runtime clusters waiting for their secrets (SDS), before anything else of them starts.
    secret_warming_clusters: HashMap<String, Arc<Cluster>>,
    rds_slots: HashMap<String, RdsSlot>,
    /// SRDS scopes.
    scopes: BTreeMap<String, Versioned<Arc<model::ScopedRouteConfiguration>>>,
    /// VHDS virtual hosts by route config, then by resource name (`<route config>/<vhost>`).
    vhds: BTreeMap<String, BTreeMap<String, Arc<model::VirtualHost>>>,
    /// Types whose first response (or initial fetch timeout) has arrived.
    initial_done: BTreeSet<ResourceType>,
    /// EDS/RDS gave up waiting (initial_fetch_timeout): warming proceeds without them.
    gave_up: BTreeSet<ResourceType>,
    last_rejected: Option<RejectedUpdate>,
    version: u64,
}

impl Inner {
    /// LDS listeners and the bootstrap's listeners that take routes from xDS.
    fn all_listeners(&self) -> impl Iterator<Item = &model::Listener> {
        self.listeners.values().map(|l| l.value.as_ref()).chain(self.static_listeners.iter().map(|l| l.as_ref()))
    }
}

/// The store.
pub struct ConfigStore {
    /// Itself, for the tasks that finish warming a cluster once its initial health checks
    /// are done.
    me: std::sync::Weak<ConfigStore>,
    inner: Mutex<Inner>,
    snapshot: SharedSnapshot,
    stats: Store,
    workers: usize,
    listeners: Arc<Mutex<ListenerManager>>,
    initialized: watch::Sender<bool>,
    connected: AtomicBool,
    /// The scope set SRDS delivers, shared by every `scoped_rds` HCM.
    srds: ScopeSlot,
    on_demand: Arc<OnDemandVhds>,
    runtime: Arc<Runtime>,
    /// The server's access log writers and sinks, for the listeners built here.
    access_logs: Arc<AccessLogManager>,
    /// VHDS needs Delta xDS.
    delta: bool,
    /// The outlier detection event log the clusters built here write to, if configured.
    outlier_events: std::sync::OnceLock<EventLog>,
    /// Static secrets and SDS subscriptions (see [`ConfigStore::set_secret_manager`]).
    secret_manager: std::sync::OnceLock<Arc<SecretManager>>,
    /// SDS comes over ADS (else a stream of its own): an `sds_config` must say the same.
    sds_aggregated: AtomicBool,
    /// Secrets named with an `api_config_source` have a client of their own beside ADS.
    separate_sds: AtomicBool,
    /// Bumped after every applied update: the separate SDS client re-reads its names then.
    applied: watch::Sender<u64>,
    /// Starts the client for secrets from another server than ADS (see `xds_start`).
    sds_starter: std::sync::OnceLock<SdsStarter>,
}

impl ConfigStore {
    /// A store over the static clusters already in `snapshot`; the listeners it builds log
    /// through `access_logs`. `delta`: the client speaks Delta xDS (VHDS needs it).
    pub fn new(
        snapshot: SharedSnapshot,
        stats: Store,
        workers: usize,
        listeners: Arc<Mutex<ListenerManager>>,
        runtime: Arc<Runtime>,
        access_logs: Arc<AccessLogManager>,
        delta: bool,
    ) -> Arc<Self> {
        let static_clusters = snapshot.load().clusters.clone();
        let static_eds_waiting = static_clusters
            .iter()
            .filter(|(_, c)| c.config.discovery == model::DiscoveryType::Eds)
            .map(|(n, _)| n.clone())
            .collect();
        let version = snapshot.load().version;
        Arc::new_cyclic(|me| ConfigStore {
            me: me.clone(),
            inner: Mutex::new(Inner { static_clusters, static_eds_waiting, version, ..Inner::default() }),
            snapshot,
            stats,
            workers,
            listeners,
            initialized: watch::channel(false).0,
            connected: AtomicBool::new(false),
            srds: Arc::new(arc_swap::ArcSwap::from_pointee(ScopeMap::default())),
            on_demand: Arc::new(OnDemandVhds::default()),
            runtime,
            access_logs,
            delta,
            outlier_events: std::sync::OnceLock::new(),
            secret_manager: std::sync::OnceLock::new(),
            sds_aggregated: AtomicBool::new(true),
            separate_sds: AtomicBool::new(false),
            applied: watch::channel(0).0,
            sds_starter: std::sync::OnceLock::new(),
        })
    }

    /// Whether the xDS client fetches SDS over ADS (the default) or a stream of its own.
    pub fn set_sds_aggregated(&self, aggregated: bool) {
        self.sds_aggregated.store(aggregated, Ordering::Relaxed);
    }

    /// Secrets named with an `api_config_source` come from a client of their own (see
    /// [`ConfigStore::separate_sds_wanted`]); the main client subscribes to the others.
    pub fn set_separate_sds(&self, separate: bool) {
        self.separate_sds.store(separate, Ordering::Relaxed);
    }

    /// Have `f` start the separate SDS client for an `api_config_source` (once).
    pub fn set_separate_sds_starter(&self, f: SdsStarter) {
        let _ = self.sds_starter.set(f);
    }

    /// Start (if not yet) the client for secrets from `api`, another server than ADS.
    pub fn start_separate_sds(&self, api: &model::ApiConfigSource, timeout: Option<Duration>) -> Result<(), String> {
        match self.sds_starter.get() {
            Some(start) => start(api, timeout),
            None => Err("sds_config: an SDS server beside ADS is not supported here".into()),
        }
    }

    /// The secrets the separate SDS client subscribes to.
    pub fn separate_sds_wanted(&self) -> BTreeSet<String> {
        self.secrets().subscribed_by(true)
    }

    /// Changes after every applied update (the separate SDS client's wanted names may have).
    pub fn applied_changes(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Refuse an `sds_config` on another transport than the client's SDS subscription.
    fn check_sds_sources<'a>(&self, refs: impl Iterator<Item = &'a model::SdsSecretConfig>) -> Result<(), String> {
        let ads = self.sds_aggregated.load(Ordering::Relaxed);
        for r in refs {
            let ok = match r.source.as_ref().map(|s| (&s.kind, s.initial_fetch_timeout)) {
                None => true,
                Some((model::ConfigSourceKind::Ads, _)) => ads,
                Some((model::ConfigSourceKind::Api(_), _)) if !ads => true,
                // Beside ADS: a client of its own for that server.
                Some((model::ConfigSourceKind::Api(api), timeout)) => {
                    self.start_separate_sds(api, timeout).map_err(|e| format!("secret '{}': {e}", r.name))?;
                    true
                }
            };
            if !ok {
                return Err(format!(
                    "secret '{}': sds_config must use the same transport as lds_config/cds_config (ads, or an \
                     api_config_source): other transports are not supported by pinion",
                    r.name
                ));
            }
        }
        Ok(())
    }

    /// Have the listeners and clusters built from now on find their secrets in `secrets`
    /// (the server's, holding the static secrets; without it, a store has none).
    pub fn set_secret_manager(&self, secrets: Arc<SecretManager>) {
        let me = self.me.clone();
        secrets.set_on_timeout(Box::new(move || {
            if let Some(store) = me.upgrade() {
                store.secret_fetch_timed_out();
            }
        }));
        let _ = self.secret_manager.set(secrets);
    }

    /// A secret's own initial fetch timed out: what waited for it goes on without it.
    fn secret_fetch_timed_out(&self) {
        let mut inner = self.lock();
        self.promote_secret_clusters(&mut inner);
        self.promote_listeners(&mut inner);
        self.publish(&mut inner);
        self.check_initialized(&inner);
    }

    /// The secret manager.
    pub fn secrets(&self) -> &Arc<SecretManager> {
        self.secret_manager.get_or_init(|| SecretManager::empty(&self.stats))
    }

    /// Have the outlier detectors of the clusters built from now on write to `log`.
    pub fn set_outlier_event_log(&self, log: EventLog) {
        let _ = self.outlier_events.set(log);
    }

    /// Becomes true once the initial LDS/CDS responses and their dependents are in (Envoy's
    /// init manager): the server reports LIVE only then.
    pub fn initialized(&self) -> watch::Receiver<bool> {
        self.initialized.subscribe()
    }

    /// Add the bootstrap's listeners whose routes come from RDS or SRDS: they warm like LDS
    /// listeners until their routes arrive, and count for initialization.
    pub fn add_static_listeners(&self, listeners: &[Arc<model::Listener>]) -> Result<(), String> {
        let mut inner = self.lock();
        let mut manager = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for cfg in listeners {
            for n in rds_names(cfg) {
                Self::rds_slot(&mut inner, &n);
            }
            let provider = Provider { inner: &inner, srds: &self.srds, on_demand: &self.on_demand };
            let runtime = Arc::new(
                ListenerImpl::new(
                    cfg.clone(),
                    &self.stats,
                    self.workers,
                    &self.access_logs,
                    Some(&provider),
                    &**self.secrets(),
                )
                .map_err(|e| e.to_string())?,
            );
            inner.static_listeners.push(cfg.clone());
            if runtime.is_warm() {
                manager.upsert(runtime)?;
            } else {
                inner.warming_listeners.insert(cfg.name.clone(), runtime);
            }
        }
        Ok(())
    }

    /// Whether the xDS stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current dynamic state for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        use serde_json::json;
        let inner = self.lock();
        let ts = |t: SystemTime| crate::formatter::format_time(t);
        let warming_clusters: BTreeSet<&String> =
            inner.warming_clusters.keys().chain(inner.secret_warming_clusters.keys()).collect();
        let (mut active_c, mut warming_c) = (Vec::new(), Vec::new());
        for (name, v) in &inner.clusters {
            let entry = json!({ "version_info": v.version, "cluster": with_type(&v.raw, ResourceType::Cluster), "last_updated": ts(v.last_updated) });
            if warming_clusters.contains(name) {
                warming_c.push(entry);
            } else {
                active_c.push(entry);
            }
        }
        let (mut active_l, mut warming_l) = (Vec::new(), Vec::new());
        for (name, v) in &inner.listeners {
            let state = json!({ "version_info": v.version, "listener": with_type(&v.raw, ResourceType::Listener), "last_updated": ts(v.last_updated) });
            if inner.warming_listeners.contains_key(name) {
                warming_l.push(json!({ "name": name, "warming_state": state }));
            } else {
                active_l.push(json!({ "name": name, "active_state": state }));
            }
        }
        let routes: Vec<_> = inner
            .routes
            .values()
            .map(|v| json!({ "version_info": v.version, "route_config": with_type(&v.raw, ResourceType::RouteConfiguration), "last_updated": ts(v.last_updated) }))
            .collect();
        let endpoints: Vec<_> = inner
            .endpoints
            .values()
            .map(|v| json!({ "version_info": v.version, "endpoint_config": with_type(&v.raw, ResourceType::ClusterLoadAssignment), "last_updated": ts(v.last_updated) }))
            .collect();
        let scopes: Vec<_> = inner
            .scopes
            .values()
            .map(|v| json!({ "version_info": v.version, "scoped_route_config": with_type(&v.raw, ResourceType::ScopedRouteConfiguration), "last_updated": ts(v.last_updated) }))
            .collect();
        let rejected = inner.last_rejected.as_ref().map(|r| {
            json!({ "type": r.type_.type_url(), "version_info": r.version, "details": r.details, "last_update_attempt": ts(r.at) })
        });
        json!({
            "dynamic_active_clusters": active_c,
            "dynamic_warming_clusters": warming_c,
            "dynamic_listeners": active_l.into_iter().chain(warming_l).collect::<Vec<_>>(),
            "dynamic_route_configs": routes,
            "dynamic_endpoint_configs": endpoints,
            "dynamic_scoped_route_configs": scopes,
            "last_rejected_update": rejected,
        })
    }

    fn rds_slot(inner: &mut Inner, name: &str) -> RdsSlot {
        inner.rds_slots.entry(name.to_string()).or_insert_with(|| Arc::new(ArcSwapOption::empty())).clone()
    }

    fn apply_clusters(&self, inner: &mut Inner, updated: Vec<ResourceUpdate>, removed: &[String]) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for name in removed {
            inner.clusters.remove(name);
            for c in [inner.active_clusters.remove(name), inner.warming_clusters.remove(name)].into_iter().flatten() {
                c.stop_health_checks();
            }
            inner.secret_warming_clusters.remove(name);
        }
        for u in updated {
            let Resource::Cluster(cfg) = u.resource else { continue };
            if inner.static_clusters.contains_key(&u.name) {
                // Envoy refuses to replace a static cluster from CDS; so does Pinion.
                continue;
            }
            if inner.clusters.get(&u.name).is_some_and(|old| old.raw == u.raw) {
                continue; // unchanged: keep the running cluster, its pools and host state
            }
            // A replacement adopts the hosts of the cluster it replaces (by address, on its
            // first host set), so host stats and health survive a CDS update.
            if let Err(reason) = self.check_sds_sources(cfg.sds_configs()) {
                rejected.push(Rejected { name: u.name.clone(), reason });
                continue;
            }
            let previous = inner.active_clusters.get(&u.name).or_else(|| inner.warming_clusters.get(&u.name));
            let cluster =
                match Cluster::new_replacing(cfg.clone(), &self.stats, previous.map(|c| &**c), &**self.secrets()) {
                    Ok(c) => c,
                    Err(reason) => {
                        rejected.push(Rejected { name: u.name.clone(), reason });
                        continue;
                    }
                };
            inner.clusters.insert(
                u.name.clone(),
                Versioned { value: cfg.clone(), version: u.version, raw: u.raw, last_updated: SystemTime::now() },
            );
            inner.secret_warming_clusters.remove(&u.name);
            if !cluster.secrets_ready() && !inner.gave_up.contains(&ResourceType::Secret) {
                // Warms until its secrets arrive, with nothing of it running (Envoy's cluster
                // init waits for its SDS init targets); a previous version keeps serving.
                if let Some(old) = inner.warming_clusters.remove(&u.name) {
                    old.stop_health_checks();
                }
                inner.secret_warming_clusters.insert(u.name.clone(), cluster);
                continue;
            }
            self.start_cluster(inner, &u.name, cluster);
        }
        rejected
    }

    /// Start a built cluster whose secrets are in: outlier detection and health checks, then
    /// active (or warming until its endpoints or first health checks).
    fn start_cluster(&self, inner: &mut Inner, name: &str, cluster: Arc<Cluster>) {
        let cfg = cluster.config.clone();
        // Its detector runs from now on: while it warms it has no hosts to judge.
        outlier_detector::spawn(&cluster, self.outlier_events.get());
        health_check::start(&cluster);
        match cfg.discovery {
            model::DiscoveryType::Eds => {
                let eds_name = eds_name(&cfg);
                if let Some(cla) = inner.endpoints.get(eds_name) {
                    install_endpoints(&cluster, &cla.value);
                    self.activate(inner, name, cluster);
                } else if inner.gave_up.contains(&ResourceType::ClusterLoadAssignment) {
                    // No host set will come to health check: Envoy's cluster initializes
                    // empty after the initial fetch timeout.
                    self.make_active(inner, name, cluster);
                } else {
                    // Warming: the previous version (if any) keeps serving meanwhile.
                    if let Some(old) = inner.warming_clusters.insert(name.to_string(), cluster) {
                        old.stop_health_checks();
                    }
                }
            }
            model::DiscoveryType::StrictDns | model::DiscoveryType::LogicalDns => {
                dns::spawn_refresher(&cluster);
                self.activate(inner, name, cluster);
            }
            model::DiscoveryType::Static => {
                self.activate(inner, name, cluster);
            }
        }
    }

    fn apply_endpoints(&self, inner: &mut Inner, updated: Vec<ResourceUpdate>, removed: &[String]) {
        for name in removed {
            inner.endpoints.remove(name);
        }
        for u in updated {
            let Resource::ClusterLoadAssignment(cla) = u.resource else { continue };
            inner.endpoints.insert(
                u.name.clone(),
                Versioned { value: cla.clone(), version: u.version, raw: u.raw, last_updated: SystemTime::now() },
            );
            for c in inner.active_clusters.values().chain(inner.static_clusters.values()) {
                if c.config.discovery == model::DiscoveryType::Eds && eds_name(&c.config) == u.name {
                    install_endpoints(c, &cla);
                }
            }
            let static_done: Vec<String> = inner
                .static_clusters
                .values()
                .filter(|c| c.config.discovery == model::DiscoveryType::Eds && eds_name(&c.config) == u.name)
                .map(|c| c.config.name.clone())
                .collect();
            for n in static_done {
                inner.static_eds_waiting.remove(&n);
            }
            let warm: Vec<String> = inner
                .warming_clusters
                .iter()
                .filter(|(_, c)| eds_name(&c.config) == u.name)
                .map(|(n, _)| n.clone())
                .collect();
            for n in warm {
                if let Some(c) = inner.warming_clusters.remove(&n) {
                    install_endpoints(&c, &cla);
                    self.activate(inner, &n, c);
                }
            }
        }
    }

    /// Make a cluster whose hosts are known active, once its initial health checks are done
    /// (Envoy warms a cluster with health checks until every host had its first check);
    /// until then it waits in `warming_clusters` and the version it replaces keeps serving.
    fn activate(&self, inner: &mut Inner, name: &str, cluster: Arc<Cluster>) {
        if cluster.is_health_check_initialized() {
            self.make_active(inner, name, cluster);
            return;
        }
        let mut done = cluster.health_checks_initialized();
        let (me, id, n) = (self.me.clone(), cluster.id, name.to_string());
        if let Some(old) = inner.warming_clusters.insert(name.to_string(), cluster) {
            if old.id != id {
                old.stop_health_checks();
            }
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if done.wait_for(|d| *d).await.is_ok() {
                    if let Some(store) = me.upgrade() {
                        store.health_checks_initialized(&n, id);
                    }
                }
            });
        }
    }

    /// Move a cluster to active; the version it replaces stops health checking.
    fn make_active(&self, inner: &mut Inner, name: &str, cluster: Arc<Cluster>) {
        if let Some(w) = inner.warming_clusters.remove(name) {
            if w.id != cluster.id {
                w.stop_health_checks();
            }
        }
        if let Some(old) = inner.active_clusters.insert(name.to_string(), cluster) {
            old.stop_health_checks();
        }
    }

    /// The initial health checks of warming cluster `name` (generation `id`) are done.
    fn health_checks_initialized(&self, name: &str, id: u64) {
        let mut inner = self.lock();
        let Some(c) = inner.warming_clusters.get(name).filter(|c| c.id == id).cloned() else { return };
        self.make_active(&mut inner, name, c);
        self.publish(&mut inner);
        self.check_initialized(&inner);
    }

    fn apply_routes(&self, inner: &mut Inner, updated: Vec<ResourceUpdate>, removed: &[String]) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for name in removed {
            // Envoy keeps serving the last route table a listener has; only bookkeeping goes.
            inner.routes.remove(name);
        }
        for u in updated {
            let Resource::RouteConfiguration(rc) = u.resource else { continue };
            if rc.vhds.is_some() && !self.delta {
                rejected.push(Rejected {
                    name: u.name,
                    reason: "vhds: ADS must use DELTA_GRPC api_type when used as VHDS config source.".into(),
                });
                continue;
            }
            inner.routes.insert(
                u.name.clone(),
                Versioned { value: rc, version: u.version, raw: u.raw, last_updated: SystemTime::now() },
            );
            self.install_route(inner, &u.name);
        }
        rejected
    }

    /// Compile route config `name` (with its VHDS virtual hosts) into its slot.
    fn install_route(&self, inner: &mut Inner, name: &str) {
        let Some(rc) = inner.routes.get(name).map(|v| v.value.clone()) else { return };
        let rc = match (&rc.vhds, inner.vhds.get(name)) {
            (Some(_), Some(extra)) if !extra.is_empty() => {
                // VHDS virtual hosts come after the RDS ones; one with the name of an RDS
                // virtual host does not replace it.
                let mut merged = (*rc).clone();
                for vh in extra.values() {
                    if !merged.virtual_hosts.iter().any(|v| v.name == vh.name) {
                        merged.virtual_hosts.push(vh.clone());
                    }
                }
                Arc::new(merged)
            }
            _ => rc,
        };
        Self::rds_slot(inner, name).store(Some(Arc::new(RouteTable::new(rc, &self.stats))));
    }

    fn apply_vhds(&self, inner: &mut Inner, updated: Vec<ResourceUpdate>, removed: &[String]) {
        let mut touched = BTreeSet::new();
        for name in removed {
            let Some((rc, _)) = name.rsplit_once('/') else { continue };
            if let Some(m) = inner.vhds.get_mut(rc) {
                m.remove(name);
            }
            touched.insert(rc.to_string());
        }
        for u in updated {
            let Resource::VirtualHost(vh) = u.resource else { continue };
            let Some((rc, _)) = u.name.rsplit_once('/') else { continue };
            inner.vhds.entry(rc.to_string()).or_default().insert(u.name.clone(), vh);
            touched.insert(rc.to_string());
        }
        for rc in touched {
            self.install_route(inner, &rc);
        }
        self.on_demand.updated();
    }

    /// SRDS updates apply whole or not at all, as in Envoy (a key conflict rejects the
    /// response).
    fn apply_scopes(&self, inner: &mut Inner, updated: Vec<ResourceUpdate>, removed: &[String]) -> Vec<Rejected> {
        // The scope set as it would be after this update, to find key conflicts.
        let mut next: BTreeMap<String, String> = inner
            .scopes
            .iter()
            .filter(|(n, _)| !removed.contains(n))
            .map(|(n, v)| (n.clone(), scope_map_key(&v.value.key)))
            .collect();
        for u in &updated {
            if let Resource::ScopedRouteConfiguration(sc) = &u.resource {
                next.insert(u.name.clone(), scope_map_key(&sc.key));
            }
        }
        let mut conflicts = Vec::new();
        for u in &updated {
            let key = &next[&u.name];
            if let Some((other, _)) = next.iter().find(|(n, k)| **n != u.name && *k == key) {
                conflicts.push(Rejected {
                    name: u.name.clone(),
                    reason: format!("scope key conflict found, the same key is used by scope '{other}'"),
                });
            }
        }
        if !conflicts.is_empty() {
            let rest: Vec<Rejected> = updated
                .iter()
                .filter(|u| !conflicts.iter().any(|c| c.name == u.name))
                .map(|u| Rejected {
                    name: u.name.clone(),
                    reason: "not applied: the update has a scope key conflict".into(),
                })
                .collect();
            conflicts.extend(rest);
            return conflicts;
        }
        for name in removed {
            inner.scopes.remove(name);
        }
        for u in updated {
            let Resource::ScopedRouteConfiguration(sc) = u.resource else { continue };
            inner.scopes.insert(
                u.name.clone(),
                Versioned { value: sc, version: u.version, raw: u.raw, last_updated: SystemTime::now() },
            );
        }
        self.rebuild_scopes(inner);
        Vec::new()
    }

    /// Publish the SRDS scope set (ready from the first response on).
    fn rebuild_scopes(&self, inner: &mut Inner) {
        let mut map = ScopeMap { ready: true, scopes: HashMap::new() };
        let scopes: Vec<Arc<model::ScopedRouteConfiguration>> =
            inner.scopes.values().map(|v| v.value.clone()).collect();
        for sc in scopes {
            let slot = match &sc.route_configuration {
                Some(rc) => Arc::new(ArcSwapOption::from_pointee(RouteTable::new(rc.clone(), &self.stats))),
                None => Self::rds_slot(inner, &sc.route_configuration_name),
            };
            map.scopes.insert(scope_map_key(&sc.key), (sc.name.clone(), slot));
        }
        self.srds.store(Arc::new(map));
    }

    fn apply_runtime(&self, updated: Vec<ResourceUpdate>, removed: &[String]) {
        for name in removed {
            self.runtime.set_rtds(name, None);
        }
        for u in updated {
            if let Resource::Runtime(layer) = u.resource {
                self.runtime.set_rtds(&u.name, Some(&layer));
            }
        }
    }

    fn apply_listeners(&self, inner: &mut Inner, updated: Vec<ResourceUpdate>, removed: &[String]) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        let mut manager = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for name in removed {
            inner.listeners.remove(name);
            inner.warming_listeners.remove(name);
            manager.remove(name);
        }
        for u in updated {
            let Resource::Listener(cfg) = u.resource else { continue };
            if inner.listeners.get(&u.name).is_some_and(|old| old.raw == u.raw) {
                continue;
            }
            if let Err(reason) = self.check_sds_sources(cfg.sds_configs()) {
                rejected.push(Rejected { name: u.name.clone(), reason });
                continue;
            }
            for n in rds_names(&cfg) {
                Self::rds_slot(inner, &n);
            }
            let provider = Provider { inner: &*inner, srds: &self.srds, on_demand: &self.on_demand };
            let runtime = match ListenerImpl::new(
                cfg.clone(),
                &self.stats,
                self.workers,
                &self.access_logs,
                Some(&provider),
                &**self.secrets(),
            ) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    rejected.push(Rejected { name: u.name.clone(), reason: e.to_string() });
                    continue;
                }
            };
            inner.listeners.insert(
                u.name.clone(),
                Versioned { value: cfg, version: u.version, raw: u.raw, last_updated: SystemTime::now() },
            );
            if Self::listener_ready(inner, &runtime) {
                inner.warming_listeners.remove(&u.name);
                if let Err(e) = manager.upsert(runtime) {
                    rejected.push(Rejected { name: u.name.clone(), reason: e });
                }
            } else {
                inner.warming_listeners.insert(u.name.clone(), runtime);
            }
        }
        rejected
    }

    /// Whether a listener is done warming: its routes and secrets arrived, or their initial
    /// fetch timed out (then it serves without them, as Envoy: no route, failed handshakes).
    fn listener_ready(inner: &Inner, l: &ListenerImpl) -> bool {
        (l.routes_ready() || inner.gave_up.contains(&ResourceType::RouteConfiguration))
            && (l.secrets_ready() || inner.gave_up.contains(&ResourceType::Secret))
    }

    /// Start the clusters that waited for their secrets, once those are in (or timed out).
    fn promote_secret_clusters(&self, inner: &mut Inner) {
        let gave_up = inner.gave_up.contains(&ResourceType::Secret);
        let ready: Vec<String> = inner
            .secret_warming_clusters
            .iter()
            .filter(|(_, c)| gave_up || c.secrets_ready())
            .map(|(n, _)| n.clone())
            .collect();
        for n in ready {
            if let Some(c) = inner.secret_warming_clusters.remove(&n) {
                self.start_cluster(inner, &n, c);
            }
        }
    }

    /// Move listeners whose route configs and secrets arrived from warming to active.
    fn promote_listeners(&self, inner: &mut Inner) {
        let ready: Vec<String> = inner
            .warming_listeners
            .iter()
            .filter(|(_, l)| Self::listener_ready(inner, l))
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        let mut manager = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for n in ready {
            if let Some(l) = inner.warming_listeners.remove(&n) {
                if let Err(e) = manager.upsert(l) {
                    tracing::error!("{e}");
                }
            }
        }
    }

    /// Publish a snapshot with the current active clusters.
    fn publish(&self, inner: &mut Inner) {
        inner.version += 1;
        let mut clusters = inner.static_clusters.clone();
        for (n, c) in &inner.active_clusters {
            clusters.insert(n.clone(), c.clone());
        }
        let listeners: Vec<_> = {
            let manager = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            manager.names().iter().filter_map(|n| manager.get(n)).collect()
        };
        self.stats
            .gauge("cluster_manager.active_clusters", crate::stats::Prom::plain("cluster_manager.active_clusters"))
            .set(clusters.len() as i64);
        self.stats
            .gauge("cluster_manager.warming_clusters", crate::stats::Prom::plain("cluster_manager.warming_clusters"))
            .set((inner.warming_clusters.len() + inner.secret_warming_clusters.len()) as i64);
        let gauge = |name: &str, v: usize| self.stats.gauge(name, Prom::plain(name)).set(v as i64);
        gauge("listener_manager.total_listeners_warming", inner.warming_listeners.len());
        gauge("listener_manager.total_listeners_active", listeners.len());
        self.snapshot.store(Arc::new(Snapshot { version: inner.version, listeners, clusters }));
    }

    fn check_initialized(&self, inner: &Inner) {
        if *self.initialized.borrow() {
            return;
        }
        let done = inner.initial_done.contains(&ResourceType::Cluster)
            && inner.initial_done.contains(&ResourceType::Listener)
            && inner.warming_clusters.is_empty()
            && inner.warming_listeners.is_empty()
            && inner.secret_warming_clusters.is_empty()
            && (self.secrets().all_ready() || inner.gave_up.contains(&ResourceType::Secret))
            && inner.static_eds_waiting.is_empty()
            && (self.runtime.rtds_names().is_empty() || inner.initial_done.contains(&ResourceType::Runtime));
        if done {
            let _ = self.initialized.send(true);
        }
    }

    /// Mark a type's initial fetch done without data (no LDS/CDS configured, or timeout).
    pub fn mark_initial_done(&self, t: ResourceType) {
        let mut inner = self.lock();
        inner.initial_done.insert(t);
        self.check_initialized(&inner);
    }
}

fn with_type(raw: &[u8], t: ResourceType) -> serde_json::Value {
    let v = pinion_xds::decode::json_of(t.message_name(), raw);
    let v = &v;
    let mut m = serde_json::Map::new();
    m.insert("@type".into(), serde_json::Value::String(t.type_url().into()));
    if let serde_json::Value::Object(o) = v {
        for (k, val) in o {
            m.insert(k.clone(), val.clone());
        }
    }
    serde_json::Value::Object(m)
}

/// The EDS service name of a cluster (`eds_cluster_config.service_name`, else its name).
pub fn eds_name(c: &model::Cluster) -> &str {
    if c.eds_service_name.is_empty() {
        &c.name
    } else {
        &c.eds_service_name
    }
}

fn rds_names(l: &model::Listener) -> Vec<String> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .filter_map(|c| match &c.filter {
            model::NetworkFilter::HttpConnectionManager(h) => Some(h),
            model::NetworkFilter::TcpProxy(_) => None,
        })
        .flat_map(|h| match &h.route_specifier {
            model::RouteSpecifier::Rds { route_config_name } => vec![route_config_name.clone()],
            model::RouteSpecifier::Static(_) => Vec::new(),
            model::RouteSpecifier::Scoped(sr) => match &sr.scopes {
                model::ScopesSource::Inline(list) => list
                    .iter()
                    .filter(|s| s.route_configuration.is_none())
                    .map(|s| s.route_configuration_name.clone())
                    .collect(),
                model::ScopesSource::Srds(_) => Vec::new(),
            },
        })
        .collect()
}

/// Stat prefixes of the HCMs of `l` that take route config `rc` from RDS.
fn hcm_prefixes_using(l: &model::Listener, rc: &str) -> Vec<String> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .filter_map(|c| match &c.filter {
            model::NetworkFilter::HttpConnectionManager(h) => match &h.route_specifier {
                model::RouteSpecifier::Rds { route_config_name } if route_config_name == rc => {
                    Some(h.stat_prefix.clone())
                }
                _ => None,
            },
            model::NetworkFilter::TcpProxy(_) => None,
        })
        .collect()
}

/// Whether a listener takes its scopes from SRDS.
fn uses_srds(l: &model::Listener) -> bool {
    l.filter_chains.iter().chain(l.default_filter_chain.iter()).any(|c| match &c.filter {
        model::NetworkFilter::HttpConnectionManager(h) => {
            matches!(&h.route_specifier, model::RouteSpecifier::Scoped(sr) if matches!(sr.scopes, model::ScopesSource::Srds(_)))
        }
        model::NetworkFilter::TcpProxy(_) => false,
    })
}

/// The config store as seen by a listener being built.
struct Provider<'a> {
    inner: &'a Inner,
    srds: &'a ScopeSlot,
    on_demand: &'a Arc<OnDemandVhds>,
}

impl RouteProvider for Provider<'_> {
    fn rds(&self, name: &str) -> RdsSlot {
        // `apply_listeners` creates the slots of every name the listener references first.
        self.inner.rds_slots.get(name).cloned().unwrap_or_else(|| Arc::new(ArcSwapOption::empty()))
    }
    fn srds(&self) -> ScopeSlot {
        self.srds.clone()
    }
    fn on_demand(&self) -> Arc<OnDemandVhds> {
        self.on_demand.clone()
    }
}

/// Install EDS endpoints into a cluster (hosts whose address stays keep their identity).
fn install_endpoints(c: &Arc<Cluster>, cla: &model::LoadAssignment) {
    c.set_load_assignment(cla);
}

impl ConfigSink for ConfigStore {
    fn apply(&self, update: Update) -> Vec<Rejected> {
        let mut inner = self.lock();
        let Update { type_, updated, removed, version } = update;
        let rejected = match type_ {
            ResourceType::Cluster => self.apply_clusters(&mut inner, updated, &removed),
            ResourceType::ClusterLoadAssignment => {
                self.apply_endpoints(&mut inner, updated, &removed);
                Vec::new()
            }
            ResourceType::RouteConfiguration => self.apply_routes(&mut inner, updated, &removed),
            ResourceType::Listener => self.apply_listeners(&mut inner, updated, &removed),
            ResourceType::ScopedRouteConfiguration => self.apply_scopes(&mut inner, updated, &removed),
            ResourceType::VirtualHost => {
                self.apply_vhds(&mut inner, updated, &removed);
                Vec::new()
            }
            ResourceType::Runtime => {
                self.apply_runtime(updated, &removed);
                Vec::new()
            }
            ResourceType::Secret => self.secrets().apply(updated),
        };
        self.promote_secret_clusters(&mut inner);
        self.promote_listeners(&mut inner);
        inner.initial_done.insert(type_);
        if !rejected.is_empty() {
            inner.last_rejected = Some(RejectedUpdate {
                type_,
                version,
                details: rejected.iter().map(|r| format!("{}: {}", r.name, r.reason)).collect::<Vec<_>>().join("; "),
                at: SystemTime::now(),
            });
        }
        self.publish(&mut inner);
        self.check_initialized(&inner);
        self.applied.send_modify(|n| *n += 1);
        rejected
    }

    fn wanted(&self, type_: ResourceType) -> Option<BTreeSet<String>> {
        let inner = self.lock();
        match type_ {
            ResourceType::Listener | ResourceType::Cluster => None,
            ResourceType::RouteConfiguration => {
                let mut names: BTreeSet<String> = inner.all_listeners().flat_map(rds_names).collect();
                if inner.all_listeners().any(uses_srds) {
                    names.extend(
                        inner
                            .scopes
                            .values()
                            .filter(|s| s.value.route_configuration.is_none())
                            .map(|s| s.value.route_configuration_name.clone()),
                    );
                }
                Some(names)
            }
            ResourceType::ScopedRouteConfiguration => {
                // A wildcard subscription, opened once some listener uses SRDS.
                let used = inner.all_listeners().any(uses_srds);
                Some(if used { BTreeSet::from(["*".to_string()]) } else { BTreeSet::new() })
            }
            ResourceType::VirtualHost => {
                if !self.delta {
                    return Some(BTreeSet::new());
                }
                let mut names: BTreeSet<String> =
                    inner.routes.iter().filter(|(_, v)| v.value.vhds.is_some()).map(|(n, _)| n.clone()).collect();
                names.extend(self.on_demand.names());
                Some(names)
            }
            ResourceType::Runtime => Some(self.runtime.rtds_names().into_iter().collect()),
            ResourceType::Secret => Some(if self.separate_sds.load(Ordering::Relaxed) {
                self.secrets().subscribed_by(false)
            } else {
                self.secrets().subscribed()
            }),
            ResourceType::ClusterLoadAssignment => Some(
                inner
                    .clusters
                    .values()
                    .map(|c| &c.value)
                    .chain(inner.static_clusters.values().map(|c| &c.config))
                    .filter(|c| c.discovery == model::DiscoveryType::Eds)
                    .map(|c| eds_name(c).to_owned())
                    .collect(),
            ),
        }
    }

    fn initial_fetch_timeout(&self, type_: ResourceType) {
        let mut inner = self.lock();
        inner.initial_done.insert(type_);
        match type_ {
            ResourceType::ClusterLoadAssignment => {
                inner.gave_up.insert(type_);
                inner.static_eds_waiting.clear();
                // EDS clusters still without endpoints initialize empty, as in Envoy: there is
                // no first host set for their health checks to wait for (the server's
                // readiness waits on the static ones).
                for c in inner.static_clusters.values().chain(inner.warming_clusters.values()) {
                    if !c.has_host_set() {
                        c.set_health_check_initialized();
                    }
                }
                let warming: Vec<(String, Arc<Cluster>)> = inner.warming_clusters.drain().collect();
                for (n, c) in warming {
                    self.make_active(&mut inner, &n, c);
                }
            }
            ResourceType::RouteConfiguration => {
                inner.gave_up.insert(type_);
                self.promote_listeners(&mut inner);
            }
            ResourceType::Secret => {
                // Listeners and clusters go on without their secrets: their handshakes fail
                // until the secrets arrive, as in Envoy.
                inner.gave_up.insert(type_);
                self.secrets().give_up_missing();
                self.promote_secret_clusters(&mut inner);
                self.promote_listeners(&mut inner);
            }
            ResourceType::ScopedRouteConfiguration => {
                // No scopes yet: the scope set is known to be empty; listeners go on.
                if !self.srds.load().ready {
                    self.rebuild_scopes(&mut inner);
                }
                self.promote_listeners(&mut inner);
            }
            _ => {}
        }
        self.publish(&mut inner);
        self.check_initialized(&inner);
    }

    fn resource_outcomes(&self, type_: ResourceType, accepted: &[String], rejected: &[String]) {
        if type_ == ResourceType::Secret {
            self.secrets().count_outcomes(accepted, rejected);
            return;
        }
        let inner = self.lock();
        // (stat prefix, Prometheus base) of every owner of a resource: the HCMs that use a
        // route config, the clusters that take an EDS service's endpoints.
        let owners = |name: &str| -> Vec<(String, Prom)> {
            match type_ {
                ResourceType::RouteConfiguration => inner
                    .all_listeners()
                    .flat_map(|l| hcm_prefixes_using(l, name))
                    .map(|prefix| {
                        let stat = format!("http.{prefix}.rds.{name}");
                        let prom = Prom::tagged("http", "envoy_http_conn_manager_prefix", &prefix, "rds")
                            .with_tag("envoy_rds_route_config", name);
                        (stat, prom)
                    })
                    .collect(),
                ResourceType::ClusterLoadAssignment => inner
                    .clusters
                    .values()
                    .map(|c| &c.value)
                    .chain(inner.static_clusters.values().map(|c| &c.config))
                    .filter(|c| c.discovery == model::DiscoveryType::Eds && eds_name(c) == name)
                    .map(|c| {
                        let n = &c.name;
                        (format!("cluster.{n}"), Prom::tagged("cluster", "envoy_cluster_name", n, ""))
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let bump = |stat: &str, prom: &Prom, what: &str| {
            let prom = prom.clone().renamed(what);
            self.stats.counter(&format!("{stat}.{what}"), prom).inc();
        };
        for (names, ok) in [(accepted, true), (rejected, false)] {
            for name in names {
                for (stat, prom) in owners(name) {
                    bump(&stat, &prom, "update_attempt");
                    bump(&stat, &prom, if ok { "update_success" } else { "update_rejected" });
                }
            }
        }
    }

    fn wanted_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.on_demand.changes())
    }

    fn connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use pinion_xds::decode::{message_from_str, DecodeOptions, Format};

    use super::*;
    use crate::upstream::{Host, HostStats};

    type ClusterProto = envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn store() -> (Arc<ConfigStore>, SharedSnapshot) {
        let stats = Store::new(1);
        let snapshot: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::default()));
        let listeners = Arc::new(Mutex::new(ListenerManager::new(Vec::new(), Arc::new(Mutex::new(Vec::new())))));
        let runtime = Runtime::new(&model::LayeredRuntime::default(), &stats);
        (
            ConfigStore::new(
                snapshot.clone(),
                stats,
                1,
                listeners,
                runtime,
                Arc::new(crate::access_log::AccessLogManager::new(std::time::Duration::from_secs(1), None)),
                false,
            ),
            snapshot,
        )
    }

    fn cds(version: &str, connect_timeout: &str) -> Update {
        let yaml = format!(
            "name: svc\ntype: EDS\nconnect_timeout: {connect_timeout}\neds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}\n"
        );
        let proto: ClusterProto = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default()).unwrap();
        let cfg = pinion_xds::translate::cluster(&proto).unwrap();
        let u = ResourceUpdate {
            name: "svc".into(),
            version: version.into(),
            resource: Resource::Cluster(Arc::new(cfg)),
            raw: bytes::Bytes::from(yaml),
        };
        Update { type_: ResourceType::Cluster, updated: vec![u], removed: Vec::new(), version: version.into() }
    }

    fn eds(version: &str, endpoints: &[(u16, u32)]) -> Update {
        let endpoints = endpoints
            .iter()
            .map(|&(port, weight)| model::Endpoint {
                address: model::EndpointAddress::Socket(([127, 0, 0, 1], port).into()),
                weight,
                health_status: model::HealthStatus::Healthy,
                hostname: String::new(),
                health_check: Default::default(),
                lb_hash_key: String::new(),
            })
            .collect();
        let cla = model::LoadAssignment {
            cluster_name: "svc".into(),
            localities: vec![model::LocalityEndpoints { endpoints, ..Default::default() }],
            overprovisioning_factor: 140,
            weighted_priority_health: false,
        };
        let u = ResourceUpdate {
            name: "svc".into(),
            version: version.into(),
            resource: Resource::ClusterLoadAssignment(Arc::new(cla)),
            raw: bytes::Bytes::from(version.to_string()),
        };
        Update {
            type_: ResourceType::ClusterLoadAssignment,
            updated: vec![u],
            removed: Vec::new(),
            version: version.into(),
        }
    }

    fn host(snapshot: &SharedSnapshot, port: u16) -> Option<Arc<Host>> {
        snapshot.load().clusters.get("svc")?.hosts().all().find(|h| h.address.port() == port).cloned()
    }

    #[test]
    fn cds_replacement_and_eds_updates_keep_hosts() {
        let (store, snapshot) = store();
        assert!(store.apply(cds("1", "1s")).is_empty());
        store.apply(eds("1", &[(1, 1), (2, 1)]));
        let h1 = host(&snapshot, 1).expect("host 1");
        let id = snapshot.load().clusters["svc"].id;
        for _ in 0..5 {
            HostStats::inc(&h1.stats.rq_total);
        }

        // CDS replaces the cluster (new id, new pools); the endpoints are known, so it is
        // active at once, with the same host for the same address.
        assert!(store.apply(cds("2", "2s")).is_empty());
        assert_ne!(snapshot.load().clusters["svc"].id, id);
        assert!(Arc::ptr_eq(&host(&snapshot, 1).unwrap(), &h1));

        // EDS drops host 2 and reweights host 1.
        store.apply(eds("2", &[(1, 3)]));
        let kept = host(&snapshot, 1).unwrap();
        assert!(Arc::ptr_eq(&kept, &h1));
        assert_eq!((kept.stats.rq_total.load(Ordering::Relaxed), kept.weight()), (5, 3));
        assert!(host(&snapshot, 2).is_none());

        // Removed and added again: a new cluster and new hosts (Envoy drops a removed
        // cluster's hosts too).
        store.apply(Update {
            type_: ResourceType::Cluster,
            updated: Vec::new(),
            removed: vec!["svc".into()],
            version: "3".into(),
        });
        assert!(!snapshot.load().clusters.contains_key("svc"));
        store.apply(cds("4", "1s"));
        assert!(!Arc::ptr_eq(&host(&snapshot, 1).unwrap(), &h1));
    }

    /// A CDS cluster with health checks warms until every host had its first check, then
    /// becomes active (Envoy's cluster warming); removing it stops its checker.
    #[tokio::test]
    async fn cds_clusters_with_health_checks_warm_until_the_first_checks() {
        let (store, snapshot) = store();
        // A port nothing listens on: the first check fails fast (connection refused).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let yaml = format!(
            "name: svc\ntype: STATIC\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: svc\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\nhealth_checks: [{{ timeout: 1s, interval: 60s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}} }}]\n"
        );
        let proto: ClusterProto = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default()).unwrap();
        let cfg = pinion_xds::translate::cluster(&proto).unwrap();
        let u = ResourceUpdate {
            name: "svc".into(),
            version: "1".into(),
            resource: Resource::Cluster(Arc::new(cfg)),
            raw: bytes::Bytes::from(yaml),
        };
        store.apply(Update {
            type_: ResourceType::Cluster,
            updated: vec![u],
            removed: Vec::new(),
            version: "1".into(),
        });
        assert!(!snapshot.load().clusters.contains_key("svc"), "warming until the first checks");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !snapshot.load().clusters.contains_key("svc") {
            assert!(std::time::Instant::now() < deadline, "never warmed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let c = snapshot.load().clusters["svc"].clone();
        assert_eq!(c.hosts().all().next().unwrap().health_flags_text(), "/failed_active_hc");
        let stats = c.hc_stats.clone().unwrap();
        assert_eq!((stats.attempt.value(), stats.network_failure.value()), (1, 1));
        store.apply(Update {
            type_: ResourceType::Cluster,
            updated: Vec::new(),
            removed: vec!["svc".into()],
            version: "2".into(),
        });
        assert!(c.health_checks_stopped());
    }
}
