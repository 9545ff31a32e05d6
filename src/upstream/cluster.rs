//! A cluster at runtime: its config, stats, current host set and LB state. Shared by all
//! workers through the config snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pinion_xds::model;

use super::cluster_stats::{ClusterStats, HealthCheckStats};
use super::host::{HealthFlags, Host};
use super::host_set::{HostSet, HostSetSettings};
use super::lb::{Clock, LbContext, LoadBalancer, SlowStartConfig};
use super::outlier_detector::{DetectorTarget, OutlierDetector};
use super::resource_manager::{ResourceManager, RetryGuard};
use crate::stats::Store;

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// An endpoint resolved to an address: its locality entry, its config, the address.
pub type ResolvedEndpoint<'a> = (&'a model::LocalityEndpoints, &'a model::Endpoint, SocketAddr);

/// Hosts a replacement cluster got from the cluster it replaced, until its first host set.
#[derive(Clone)]
struct Inherited {
    hosts: Arc<HostSet>,
    /// The `retired` flag of the cluster the hosts come from.
    from: Arc<AtomicBool>,
}

/// A cluster as workers use it.
pub struct Cluster {
    /// Unique id of this cluster generation (a config change makes a new one); keys pools.
    pub id: u64,
    /// Translated config.
    pub config: Arc<model::Cluster>,
    /// Stats.
    pub stats: ClusterStats,
    hosts: ArcSwap<HostSet>,
    /// Serializes host-set writers (EDS, DNS refresh, health changes), since a rebuild starts
    /// from the current set; holds the hosts of the cluster this one replaced until the first
    /// build adopts those whose address reappears.
    writer: Mutex<Option<Inherited>>,
    /// Set when a replacement adopted this cluster's hosts: they are the replacement's to
    /// update from then on, so this cluster (draining, or still held by a long request)
    /// leaves them alone.
    retired: Arc<AtomicBool>,
    /// Load balancer state.
    pub lb: LoadBalancer,
    /// How host sets are built for the load balancer (panic threshold, localities, ...);
    /// the overprovisioning factor is taken from each load assignment.
    host_set_settings: HostSetSettings,
    /// Upstream TLS (`None`: plaintext).
    pub tls: Option<crate::tls::ClientContext>,
    /// Circuit breakers, one resource manager per routing priority (`DEFAULT`, `HIGH`),
    /// shared by all workers. A CDS update builds new ones, as Envoy's new `ClusterInfo`
    /// does: requests in flight keep counting against the managers they started with.
    resources: [Arc<ResourceManager>; 2],
    /// The outlier detector (`outlier_detection` configured); its task is started with
    /// [`super::outlier_detector::spawn`] by whoever activates the cluster.
    outlier: Option<Arc<OutlierDetector>>,
    /// `health_check.*` stats (clusters with `health_checks` only).
    pub hc_stats: Option<HealthCheckStats>,
    /// Bumped on every host-set install, so the health checker sees membership changes
    /// without polling.
    changes: tokio::sync::watch::Sender<u64>,
    /// Whether a host set was ever installed (an EDS cluster has none until its first
    /// assignment): the initial health-check round covers the hosts of the first set.
    has_host_set: AtomicBool,
    /// Set when the config no longer uses this cluster (removed, or its replacement is
    /// active): its health checker stops.
    hc_stopped: AtomicBool,
    /// True once every host of the first host set had its first check (at once for
    /// clusters without health checks): until then the cluster warms, as in Envoy.
    hc_initialized: tokio::sync::watch::Sender<bool>,
}

impl Cluster {
    /// Build a cluster from config; STATIC endpoints become hosts now, DNS ones on first resolve.
    /// Fails only when rustls refuses the cluster's TLS context (which cannot name secrets
    /// here: see [`Cluster::new_replacing`]).
    pub fn new(config: Arc<model::Cluster>, store: &Store) -> Result<Arc<Self>, String> {
        Self::new_replacing(config, store, None, &crate::tls::NoSecrets)
    }

    /// Build a cluster that replaces `previous` (a CDS update of the same name); its TLS
    /// context finds the secrets it names through `secrets`. Hosts of
    /// `previous` whose address is in this cluster's first host set (STATIC now, EDS or DNS
    /// later) keep their identity: stats, active requests, health-check/outlier flags. Nothing
    /// else changes: until that first set, this cluster has no hosts, as before.
    pub fn new_replacing(
        config: Arc<model::Cluster>,
        store: &Store,
        previous: Option<&Cluster>,
        secrets: &dyn crate::tls::SecretLookup,
    ) -> Result<Arc<Self>, String> {
        let stats = ClusterStats::new(store, &config.stat_name);
        let tls = match &config.transport_socket {
            None => None,
            Some(t) => {
                let ssl = crate::tls::SslStats::new(store, "cluster", "envoy_cluster_name", &config.stat_name);
                let ctx = crate::tls::ClientContext::new(t, ssl, secrets)
                    .map_err(|e| format!("cluster '{}': transport_socket: {e}", config.name))?;
                Some(ctx)
            }
        };
        let inherited = previous.and_then(Cluster::adoptable_hosts);
        let resources = model::RoutingPriority::ALL.map(|p| {
            let thresholds = config.circuit_breakers.get(p);
            let rm = ResourceManager::new(&config.name, p, thresholds);
            rm.register_stats(store, &config.stat_name, thresholds.track_remaining);
            rm
        });
        let outlier = config
            .outlier_detection
            .as_ref()
            .map(|od| OutlierDetector::new(od, &config.name, &config.stat_name, store));
        let hc_stats = config
            .health_check
            .as_ref()
            .map(|_| HealthCheckStats::new(store, "cluster", "envoy_cluster_name", &config.stat_name));
        let hc_initialized = tokio::sync::watch::Sender::new(config.health_check.is_none());
        let cluster = Arc::new(Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            lb: LoadBalancer::with_config(config.lb_policy, &config.lb_config, store.slots()),
            host_set_settings: host_set_settings(&config, Clock::System, store.slots()),
            config,
            stats,
            hosts: ArcSwap::from_pointee(HostSet::default()),
            writer: Mutex::new(inherited),
            retired: Arc::new(AtomicBool::new(false)),
            tls,
            resources,
            outlier,
            hc_stats,
            changes: tokio::sync::watch::Sender::new(0),
            has_host_set: AtomicBool::new(false),
            hc_stopped: AtomicBool::new(false),
            hc_initialized,
        });
        cluster.lb.register_stats(store, &cluster.config.stat_name);
        if cluster.config.discovery == model::DiscoveryType::Static {
            cluster.set_load_assignment(&cluster.config.load_assignment);
        }
        Ok(cluster)
    }

    /// The hosts a successor may adopt: the current set, or, while this cluster never had
    /// one (warming), what it inherited itself.
    fn adoptable_hosts(&self) -> Option<Inherited> {
        let current = self.hosts.load_full();
        if !current.is_empty() {
            return Some(Inherited { hosts: current, from: self.retired.clone() });
        }
        self.lock_writer().clone()
    }

    /// Whether every secret (SDS) of the cluster's TLS context has arrived.
    pub fn secrets_ready(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| t.secrets_ready())
    }

    /// Whether a replacement took over this cluster's hosts (it is no longer in the config).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Option<Inherited>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install the IP endpoints of a load assignment (STATIC config, an EDS update); see
    /// `update_hosts`.
    pub fn set_load_assignment(&self, la: &model::LoadAssignment) {
        let resolved = la.localities.iter().flat_map(|loc| {
            loc.endpoints.iter().filter_map(move |ep| match ep.address {
                model::EndpointAddress::Socket(addr) => Some((loc, ep, addr)),
                model::EndpointAddress::Dns { .. } | model::EndpointAddress::Pipe(_) => None,
            })
        });
        self.update_hosts_with_policy(resolved, la);
    }

    /// Install the host set for these resolved endpoints (STATIC config, an EDS update, a DNS
    /// answer). A host whose address is already in the set (or in the replaced cluster's) is
    /// kept and updated in place (weight, priority, hostname, locality, EDS health); other
    /// addresses get new hosts; hosts no longer listed drop out (a request holding one still
    /// finishes on it). A no-op once the cluster is retired.
    pub fn update_hosts<'a>(&self, endpoints: impl IntoIterator<Item = ResolvedEndpoint<'a>>) {
        self.update_hosts_with_policy(endpoints, &self.config.load_assignment);
    }

    /// `update_hosts` with the assignment's `policy` (overprovisioning factor, weighted
    /// priority health).
    fn update_hosts_with_policy<'a>(
        &self,
        endpoints: impl IntoIterator<Item = ResolvedEndpoint<'a>>,
        policy: &model::LoadAssignment,
    ) {
        let mut writer = self.lock_writer();
        if self.is_retired() {
            return;
        }
        let inherited = writer.take();
        if let Some(i) = &inherited {
            i.from.store(true, Ordering::Relaxed);
        }
        let current = self.hosts.load_full();
        let mut known: HashMap<SocketAddr, &Arc<Host>> = HashMap::with_capacity(current.len());
        for h in current.all().chain(inherited.iter().flat_map(|i| i.hosts.all())) {
            known.entry(h.address).or_insert(h);
        }
        let mut priorities: Vec<Vec<Arc<Host>>> = Vec::new();
        for (loc, ep, addr) in endpoints {
            let p = loc.priority as usize;
            if priorities.len() <= p {
                priorities.resize_with(p + 1, Vec::new);
            }
            let hostname = if ep.hostname.is_empty() {
                match &ep.address {
                    model::EndpointAddress::Dns { host, .. } => host.clone(),
                    model::EndpointAddress::Socket(_) | model::EndpointAddress::Pipe(_) => String::new(),
                }
            } else {
                ep.hostname.clone()
            };
            let fresh = Host::new(addr, hostname, ep.weight, loc.locality.clone(), loc.priority, ep.health_status)
                .with_health_check(&ep.health_check)
                .with_locality_weight(loc.load_balancing_weight)
                .with_lb_hash_key(&ep.lb_hash_key);
            let checked = self.config.health_check.is_some() && !ep.health_check.disabled;
            // `remove`: the first listing of an address takes the existing host; a duplicate
            // listing gets a host of its own, as every listing did before.
            let host = match known.remove(&addr) {
                Some(existing) => {
                    existing.update_from(&fresh);
                    if !checked {
                        // Active-HC verdicts of a checker this cluster no longer has (or that
                        // no longer checks this host) would stick forever.
                        existing.set_flags_masked(HealthFlags::ACTIVE_HC, HealthFlags::empty());
                    }
                    existing.clone()
                }
                None => {
                    if checked {
                        // As Envoy: a host starts failed until its first check passes.
                        fresh.set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
                    }
                    Arc::new(fresh)
                }
            };
            priorities[p].push(host);
        }
        drop(known);
        let settings = HostSetSettings {
            overprovisioning_factor: policy.overprovisioning_factor,
            weighted_priority_health: policy.weighted_priority_health,
            ..self.host_set_settings.clone()
        };
        self.install(HostSet::with_settings(priorities, settings));
    }

    /// Set or clear a health flag of one of this cluster's hosts (active health checking,
    /// outlier detection); when that changes the flag, the host set is recomputed so the
    /// load balancer's healthy lists and `membership_healthy` follow.
    pub fn set_host_health_flag(&self, host: &Host, flag: HealthFlags, on: bool) {
        let _writer = self.lock_writer();
        if host.set_flag(flag, on) {
            if flag.contains(HealthFlags::FAILED_ACTIVE_HC) && !on {
                self.note_active_hc_pass(host);
            }
            let set = self.hosts.load().recompute();
            self.install(set);
        }
    }

    /// A host passed active health checking after failing it: its slow-start window starts
    /// now (Envoy's `setLastHcPassTime`). Call before the set is recomputed.
    pub fn note_active_hc_pass(&self, host: &Host) {
        host.set_healthy_since(self.host_set_settings.clock.now_ms());
    }

    /// Set or clear `flag` on several hosts, recomputing the host set once if any changed.
    pub fn set_host_health_flags(&self, flag: HealthFlags, changes: &[(Arc<Host>, bool)]) {
        let _writer = self.lock_writer();
        let mut changed = false;
        for (host, on) in changes {
            changed |= host.set_flag(flag, *on);
        }
        if changed {
            let set = self.hosts.load().recompute();
            self.install(set);
        }
    }

    /// The outlier detector, if `outlier_detection` is configured.
    pub fn outlier(&self) -> Option<&Arc<OutlierDetector>> {
        self.outlier.as_ref()
    }

    /// Active health checking saw `host` pass: with outlier detection (and
    /// `successful_active_health_check_uneject_host`, its default), an ejected host that is
    /// not failing active health checks comes back at once, as in Envoy. Main thread.
    pub fn on_active_health_check_success(&self, host: &Host) {
        if let Some(od) = &self.outlier {
            od.on_active_health_check_success(self, host);
        }
    }

    /// Recompute the host set's health-derived lists from the hosts' current flags, after
    /// flags were changed with `Host::set_flag` directly (e.g. a batch).
    pub fn recompute_health(&self) {
        let _writer = self.lock_writer();
        let set = self.hosts.load().recompute();
        self.install(set);
    }

    /// Publish a set (caller holds the writer lock): LB state first, so picks from the new
    /// set find it.
    fn install(&self, set: HostSet) {
        let (healthy, degraded, excluded) = set.membership();
        self.stats.membership_total.set(set.len() as i64);
        self.stats.membership_healthy.set(healthy as i64);
        self.stats.membership_degraded.set(degraded as i64);
        self.stats.membership_excluded.set(excluded as i64);
        self.lb.on_hosts_changed(&set);
        self.hosts.store(Arc::new(set));
        self.has_host_set.store(true, Ordering::Relaxed);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a host set was ever installed.
    pub fn has_host_set(&self) -> bool {
        self.has_host_set.load(Ordering::Relaxed)
    }

    /// Host-set changes (the value is a change counter).
    pub fn host_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Stop this cluster's health checker (the config no longer uses the cluster).
    pub fn stop_health_checks(&self) {
        self.hc_stopped.store(true, Ordering::Relaxed);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Becomes true once the initial health-check round is done (already true without
    /// health checks).
    pub fn health_checks_initialized(&self) -> tokio::sync::watch::Receiver<bool> {
        self.hc_initialized.subscribe()
    }

    /// Whether the initial health-check round is done.
    pub fn is_health_check_initialized(&self) -> bool {
        *self.hc_initialized.borrow()
    }

    /// The health checker finished its initial round.
    pub fn set_health_check_initialized(&self) {
        self.hc_initialized.send_replace(true);
    }

    /// Whether the health checker should stop: told so, or the cluster was replaced.
    pub fn health_checks_stopped(&self) -> bool {
        self.hc_stopped.load(Ordering::Relaxed) || self.is_retired()
    }

    /// The circuit breakers of `priority`.
    pub fn resource_manager(&self, priority: model::RoutingPriority) -> &Arc<ResourceManager> {
        &self.resources[priority.index()]
    }

    /// Start a retry of a request at `priority` if the retry circuit breaker (`max_retries`
    /// or the retry budget) allows it; otherwise count `upstream_rq_retry_overflow` and
    /// return `None` (Envoy's `RetryStatus::NoOverflow`). Hold the guard while the retry is
    /// scheduled or running.
    pub fn try_retry(&self, priority: model::RoutingPriority) -> Option<RetryGuard> {
        let guard = self.resource_manager(priority).try_retry();
        if guard.is_none() {
            self.stats.upstream_rq_retry_overflow.inc();
        }
        guard
    }

    /// Current hosts.
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Pick a host for a new request (None = no healthy upstream).
    pub fn choose_host(&self) -> Option<Arc<Host>> {
        self.choose_host_with(&LbContext::default())
    }

    /// Pick a host for a request with its LB context (e.g. a hash from the route's hash policy).
    pub fn choose_host_with(&self, ctx: &LbContext) -> Option<Arc<Host>> {
        let hosts = self.hosts.load();
        self.lb.choose(&hosts, ctx, &self.stats)
    }
}

/// The host-set settings of a cluster's config.
fn host_set_settings(config: &model::Cluster, clock: Clock, slots: usize) -> HostSetSettings {
    let lb = &config.lb_config;
    HostSetSettings {
        overprovisioning_factor: config.load_assignment.overprovisioning_factor,
        weighted_priority_health: config.load_assignment.weighted_priority_health,
        panic_threshold: lb.healthy_panic_threshold,
        locality_weighted: lb.locality_weighted,
        // Only round robin walks precomputed schedules.
        weighted_schedules: config.lb_policy == model::LbPolicy::RoundRobin,
        slow_start_window_ms: lb.slow_start.as_ref().and_then(SlowStartConfig::new).map_or(0, |s| s.window_ms()),
        clock,
        slots,
    }
}

impl DetectorTarget for Cluster {
    fn outlier_detector(&self) -> Option<&Arc<OutlierDetector>> {
        self.outlier.as_ref()
    }

    fn current_hosts(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    fn set_outlier_flags(&self, changes: &[(Arc<Host>, bool)]) {
        self.set_host_health_flags(HealthFlags::FAILED_OUTLIER_CHECK, changes);
    }

    fn is_retired(&self) -> bool {
        Cluster::is_retired(self)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;

    use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
    use pinion_xds::model::{Endpoint, EndpointAddress, HealthStatus, LoadAssignment, Locality, LocalityEndpoints};

    use super::*;
    use crate::upstream::HostStats;

    type ClusterProto = envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn config(yaml: &str) -> Arc<model::Cluster> {
        let proto: ClusterProto = message_from_str(yaml, Format::Yaml, &DecodeOptions::default()).unwrap();
        Arc::new(pinion_xds::translate::cluster(&proto).unwrap())
    }

    fn eds_config() -> Arc<model::Cluster> {
        config("name: svc\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: { eds_config: { ads: {} } }\n")
    }

    fn static_config(ports: &[u16], connect_timeout: &str) -> Arc<model::Cluster> {
        let eps: Vec<String> = ports
            .iter()
            .map(|p| {
                format!(
                    "    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}"
                )
            })
            .collect();
        config(&format!(
            "name: svc\ntype: STATIC\nconnect_timeout: {connect_timeout}\nload_assignment:\n  cluster_name: svc\n  endpoints:\n  - lb_endpoints:\n{}\n",
            eps.join("\n")
        ))
    }

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    /// One endpoint of an EDS-style update.
    #[derive(Clone)]
    struct Ep {
        port: u16,
        weight: u32,
        health: HealthStatus,
        priority: u32,
        zone: &'static str,
        hostname: &'static str,
    }

    fn ep(port: u16) -> Ep {
        Ep { port, weight: 1, health: HealthStatus::Healthy, priority: 0, zone: "z1", hostname: "" }
    }

    fn assignment(eps: &[Ep]) -> LoadAssignment {
        let localities = eps
            .iter()
            .map(|e| LocalityEndpoints {
                locality: Some(Locality { region: "r".into(), zone: e.zone.into(), sub_zone: String::new() }),
                load_balancing_weight: None,
                priority: e.priority,
                endpoints: vec![Endpoint {
                    address: EndpointAddress::Socket(addr(e.port)),
                    weight: e.weight,
                    health_status: e.health,
                    hostname: e.hostname.into(),
                    health_check: Default::default(),
                    lb_hash_key: String::new(),
                }],
            })
            .collect();
        LoadAssignment {
            cluster_name: "svc".into(),
            localities,
            overprovisioning_factor: 140,
            weighted_priority_health: false,
        }
    }

    fn find(c: &Cluster, port: u16) -> Option<Arc<Host>> {
        c.hosts().all().find(|h| h.address.port() == port).cloned()
    }

    /// Serve `n` requests on `h` the way the router counts them.
    fn serve(h: &Host, n: u64) {
        for _ in 0..n {
            HostStats::inc(&h.stats.rq_total);
        }
    }

    #[test]
    fn hosts_keep_identity_across_eds_updates() {
        let store = Store::new(1);
        let c = Cluster::new(eds_config(), &store).unwrap();
        c.set_load_assignment(&assignment(&[ep(1), ep(2), ep(3)]));
        let (h1, h2, h3) = (find(&c, 1).unwrap(), find(&c, 2).unwrap(), find(&c, 3).unwrap());
        serve(&h1, 15);
        HostStats::add(&h1.stats.rq_active, 2);
        h1.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true);
        serve(&h3, 4);
        HostStats::add(&h3.stats.rq_active, 1);

        // Host 1 changes everything but its address; host 2 moves to another port; host 3 goes.
        let h1_new =
            Ep { weight: 5, health: HealthStatus::Degraded, priority: 1, zone: "z2", hostname: "one.svc", ..ep(1) };
        c.set_load_assignment(&assignment(&[h1_new, ep(20)]));

        let kept = find(&c, 1).unwrap();
        assert!(Arc::ptr_eq(&kept, &h1), "same address, same host");
        assert_eq!(kept.stats.rq_total.load(Ordering::Relaxed), 15);
        assert_eq!(kept.stats.rq_active.load(Ordering::Relaxed), 2);
        assert_eq!((kept.weight(), kept.priority(), kept.hostname()), (5, 1, "one.svc".to_string()));
        assert_eq!(kept.locality().unwrap().zone, "z2");
        assert_eq!(kept.health_flags(), HealthFlags::FAILED_OUTLIER_CHECK | HealthFlags::DEGRADED_EDS_HEALTH);
        assert_eq!(c.hosts().priorities()[1].hosts().len(), 1, "host 1 is listed at its new priority");

        let moved = find(&c, 20).unwrap();
        assert!(!Arc::ptr_eq(&moved, &h2), "a new port is a new host");
        assert_eq!(moved.stats.rq_total.load(Ordering::Relaxed), 0);
        assert!(find(&c, 2).is_none());

        // Host 3 is gone from the set; a request still holding it finishes on it.
        assert!(find(&c, 3).is_none());
        assert_eq!(c.hosts().len(), 2);
        HostStats::add(&h3.stats.rq_active, -1);
        HostStats::inc(&h3.stats.rq_success);
        assert_eq!(h3.stats.rq_active.load(Ordering::Relaxed), 0);
        assert_eq!(h3.stats.rq_total.load(Ordering::Relaxed), 4);

        // EDS health comes back; the outlier flag stays (it is not EDS's to clear).
        c.set_load_assignment(&assignment(&[ep(1), ep(20)]));
        assert!(Arc::ptr_eq(&find(&c, 1).unwrap(), &h1));
        assert_eq!(h1.health_flags(), HealthFlags::FAILED_OUTLIER_CHECK);
        assert_eq!((h1.weight(), h1.priority(), h1.hostname()), (1, 0, String::new()));
        assert_eq!(c.stats.membership_total.value(), 2);
        assert_eq!(c.stats.membership_healthy.value(), 1);
    }

    #[test]
    fn eds_health_update_changes_the_healthy_list() {
        // (health of host 1 in the second update, routable hosts after it, Envoy's
        // membership_healthy / _degraded / _excluded)
        let cases = [
            (HealthStatus::Healthy, 2, (2, 0, 0)),
            // Degraded: not in the healthy list (Envoy's degraded host list).
            (HealthStatus::Degraded, 1, (1, 1, 0)),
            (HealthStatus::Unhealthy, 1, (1, 0, 0)),
            (HealthStatus::Draining, 1, (1, 0, 1)),
            (HealthStatus::Timeout, 1, (1, 0, 0)),
        ];
        for (health, healthy, (m_healthy, m_degraded, m_excluded)) in cases {
            let c = Cluster::new(eds_config(), &Store::new(1)).unwrap();
            c.set_load_assignment(&assignment(&[ep(1), ep(2)]));
            let h1 = find(&c, 1).unwrap();
            c.set_load_assignment(&assignment(&[Ep { health, ..ep(1) }, ep(2)]));
            assert!(Arc::ptr_eq(&find(&c, 1).unwrap(), &h1));
            assert_eq!(c.hosts().healthy_len(), healthy, "{health:?}");
            let s = &c.stats;
            let got = (s.membership_healthy.value(), s.membership_degraded.value(), s.membership_excluded.value());
            assert_eq!(got, (m_healthy, m_degraded, m_excluded), "{health:?}");
        }
    }

    #[test]
    fn duplicate_addresses_keep_one_identity() {
        let c = Cluster::new(eds_config(), &Store::new(1)).unwrap();
        c.set_load_assignment(&assignment(&[ep(1), ep(1)]));
        let first = c.hosts().priorities()[0].hosts()[0].clone();
        serve(&first, 3);
        c.set_load_assignment(&assignment(&[ep(1), ep(1)]));
        let hosts = c.hosts().priorities()[0].hosts().to_vec();
        assert_eq!(hosts.len(), 2, "both listings stay, as before");
        assert!(Arc::ptr_eq(&hosts[0], &first));
        assert!(!Arc::ptr_eq(&hosts[1], &first));
    }

    #[test]
    fn weight_update_reaches_round_robin() {
        let c = Cluster::new(eds_config(), &Store::new(1)).unwrap();
        c.set_load_assignment(&assignment(&[ep(1), ep(2)]));
        c.set_load_assignment(&assignment(&[Ep { weight: 3, ..ep(1) }, ep(2)]));
        let picks: Vec<u16> = (0..400).map(|_| c.choose_host().unwrap().address.port()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 300);
    }

    #[test]
    fn cds_replacement_keeps_hosts() {
        let store = Store::new(1);
        // STATIC: the replacement builds its hosts at once and adopts the old ones.
        let old = Cluster::new(static_config(&[1, 2], "1s"), &store).unwrap();
        let h1 = find(&old, 1).unwrap();
        serve(&h1, 7);
        let new =
            Cluster::new_replacing(static_config(&[1, 3], "2s"), &store, Some(&old), &crate::tls::NoSecrets).unwrap();
        assert_ne!(new.id, old.id);
        assert!(Arc::ptr_eq(&find(&new, 1).unwrap(), &h1));
        assert_eq!(find(&new, 1).unwrap().stats.rq_total.load(Ordering::Relaxed), 7);
        assert!(find(&new, 2).is_none());
        assert!(find(&new, 3).is_some());
        assert!(Arc::ptr_eq(&find(&old, 1).unwrap(), &h1), "the old cluster keeps serving until dropped");
        // The replacement owns the hosts now: the old cluster (say, its DNS refresher) no
        // longer writes them.
        assert!(old.is_retired() && !new.is_retired());
        old.set_load_assignment(&LoadAssignment::default());
        assert_eq!(old.hosts().len(), 2);

        // EDS: no hosts until its endpoints arrive (warming is unchanged), then adoption.
        let old = Cluster::new(eds_config(), &store).unwrap();
        old.set_load_assignment(&assignment(&[ep(1), ep(2)]));
        let (h1, h2) = (find(&old, 1).unwrap(), find(&old, 2).unwrap());
        serve(&h1, 5);
        h2.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true);
        let warming = Cluster::new_replacing(eds_config(), &store, Some(&old), &crate::tls::NoSecrets).unwrap();
        assert!(warming.hosts().is_empty());
        assert!(warming.choose_host().is_none());
        assert!(!old.is_retired(), "the old cluster serves and takes EDS while the new one warms");
        // Replaced again while still warming: the hosts pass through.
        let newest = Cluster::new_replacing(eds_config(), &store, Some(&warming), &crate::tls::NoSecrets).unwrap();
        newest.set_load_assignment(&assignment(&[ep(1), ep(2), ep(9)]));
        assert!(Arc::ptr_eq(&find(&newest, 1).unwrap(), &h1));
        assert!(Arc::ptr_eq(&find(&newest, 2).unwrap(), &h2));
        assert!(old.is_retired());
        assert_eq!(h1.stats.rq_total.load(Ordering::Relaxed), 5);
        assert_eq!(newest.hosts().healthy_len(), 2, "host 2 keeps its outlier ejection");

        // Adoption happens once: an address that comes back later is a new host.
        newest.set_load_assignment(&assignment(&[ep(1)]));
        let c = Cluster::new_replacing(eds_config(), &store, Some(&old), &crate::tls::NoSecrets).unwrap();
        c.set_load_assignment(&assignment(&[ep(1)]));
        c.set_load_assignment(&assignment(&[ep(1), ep(2)]));
        assert!(Arc::ptr_eq(&find(&c, 1).unwrap(), &h1));
        assert!(!Arc::ptr_eq(&find(&c, 2).unwrap(), &h2));
    }

    #[test]
    fn host_health_change_recomputes_the_set() {
        let c = Cluster::new(eds_config(), &Store::new(1)).unwrap();
        c.set_load_assignment(&assignment(&[ep(1), ep(2), ep(3)]));
        let h2 = find(&c, 2).unwrap();
        let generation = c.hosts().generation();
        c.set_host_health_flag(&h2, HealthFlags::FAILED_ACTIVE_HC, true);
        assert_ne!(c.hosts().generation(), generation);
        let healthy: Vec<u16> = c.hosts().priorities()[0].healthy().iter().map(|h| h.address.port()).collect();
        assert_eq!(healthy, [1, 3]);
        assert_eq!(c.stats.membership_healthy.value(), 2);
        assert!((0..30).all(|_| c.choose_host().unwrap().address.port() != 2));

        // No change, no rebuild.
        let generation = c.hosts().generation();
        c.set_host_health_flag(&h2, HealthFlags::FAILED_ACTIVE_HC, true);
        assert_eq!(c.hosts().generation(), generation);

        // A flag set directly is honoured at once and reflected after `recompute_health`.
        let h3 = find(&c, 3).unwrap();
        h3.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true);
        c.set_host_health_flag(&h2, HealthFlags::FAILED_ACTIVE_HC, false);
        assert!((0..30).all(|_| c.choose_host().unwrap().address.port() != 3));
        c.recompute_health();
        assert_eq!(c.hosts().healthy_len(), 2);
        assert!(Arc::ptr_eq(&find(&c, 2).unwrap(), &h2));
    }

    #[test]
    fn choose_host_with_a_context() {
        let c = Cluster::new(static_config(&[1, 2], "1s"), &Store::new(1)).unwrap();
        assert!(c.choose_host_with(&LbContext::with_hash(42)).is_some());
        assert!(c.choose_host().is_some());
    }

    fn with_outlier(cfg: Arc<model::Cluster>, od: model::OutlierDetection) -> Arc<model::Cluster> {
        let mut c = (*cfg).clone();
        c.outlier_detection = Some(od);
        Arc::new(c)
    }

    #[test]
    fn outlier_ejection_reaches_the_load_balancer_and_survives_replacement() {
        let store = Store::new(1);
        let od = model::OutlierDetection { consecutive_5xx: 2, max_ejection_percent: 100, ..Default::default() };
        let c = Cluster::new(with_outlier(static_config(&[1, 2, 3], "1s"), od.clone()), &store).unwrap();
        let det = c.outlier().expect("a detector").clone();
        let h3 = find(&c, 3).unwrap();
        // Workers report; nothing changes until the detector handles the crossing.
        det.put_http_status(&h3, 503);
        det.put_http_status(&h3, 500);
        assert!(h3.healthy());
        det.handle_crossings(&*c);
        assert!(h3.health_flags().contains(HealthFlags::FAILED_OUTLIER_CHECK));
        assert!((0..30).all(|_| c.choose_host().unwrap().address.port() != 3), "the LB skips it");
        assert_eq!(c.stats.membership_healthy.value(), 2);
        let stat = |name: &str| store.value(&format!("cluster.svc.outlier_detection.{name}"));
        assert_eq!(stat("ejections_active"), Some(1));
        assert_eq!(stat("ejections_enforced_consecutive_5xx"), Some(1));
        assert_eq!(h3.outlier_state().num_ejections, 1);
        assert_eq!(h3.outlier.consecutive(super::super::outlier_detection::Consecutive::Status5xx), 0);

        // A CDS update keeps the host, its ejection and the detector's memory of it; the
        // new detector counts the ejection as active.
        let new = Cluster::new_replacing(
            with_outlier(static_config(&[1, 2, 3], "2s"), od),
            &store,
            Some(&c),
            &crate::tls::NoSecrets,
        )
        .unwrap();
        assert!(c.is_retired());
        let kept = find(&new, 3).unwrap();
        assert!(Arc::ptr_eq(&kept, &h3));
        assert_eq!(new.hosts().healthy_len(), 2);
        let det2 = new.outlier().unwrap().clone();
        det2.sweep(&*new);
        assert!(kept.health_flags().contains(HealthFlags::FAILED_OUTLIER_CHECK), "30s are not over");
        assert_eq!(stat("ejections_active"), Some(1));
        assert_eq!(kept.outlier_state().backoff, 1);

        // Active health checking brings it back at once.
        new.on_active_health_check_success(&kept);
        assert!(kept.healthy());
        assert_eq!(new.hosts().healthy_len(), 3);
        assert_eq!(stat("ejections_active"), Some(0));
        // Not while active health checking itself fails the host.
        det2.put_http_status(&kept, 503);
        det2.put_http_status(&kept, 503);
        det2.handle_crossings(&*new);
        kept.set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
        new.on_active_health_check_success(&kept);
        assert!(kept.health_flags().contains(HealthFlags::FAILED_OUTLIER_CHECK));

        // A removed ejected host no longer counts.
        new.set_load_assignment(&LoadAssignment {
            cluster_name: "svc".into(),
            localities: vec![LocalityEndpoints {
                endpoints: vec![Endpoint {
                    address: EndpointAddress::Socket(addr(1)),
                    weight: 1,
                    health_status: HealthStatus::Healthy,
                    hostname: String::new(),
                    health_check: Default::default(),
                    lb_hash_key: String::new(),
                }],
                ..Default::default()
            }],
            overprovisioning_factor: 140,
            weighted_priority_health: false,
        });
        det2.sweep(&*new);
        assert_eq!(stat("ejections_active"), Some(0));
    }

    #[test]
    fn no_outlier_detection_no_detector_and_no_stats() {
        let store = Store::new(1);
        let c = Cluster::new(static_config(&[1], "1s"), &store).unwrap();
        assert!(c.outlier().is_none());
        assert_eq!(store.value("cluster.svc.outlier_detection.ejections_active"), None);
    }

    fn hc_config(extra: &str) -> Arc<model::Cluster> {
        config(&format!(
            "name: svc\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}\n{extra}"
        ))
    }

    #[test]
    fn health_checked_hosts_start_failed_and_unchecked_clusters_drop_active_hc_flags() {
        let store = Store::new(1);
        let hc = "health_checks: [{ timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]\n";
        let c = Cluster::new(hc_config(hc), &store).unwrap();
        assert!(!c.is_health_check_initialized());
        let mut disabled = assignment(&[ep(1), ep(2)]);
        disabled.localities[1].endpoints[0].health_check.disabled = true;
        c.set_load_assignment(&disabled);
        let (h1, h2) = (find(&c, 1).unwrap(), find(&c, 2).unwrap());
        assert_eq!(h1.health_flags(), HealthFlags::FAILED_ACTIVE_HC, "new hosts wait for their first check");
        assert_eq!(h2.health_flags(), HealthFlags::empty(), "disable_active_health_check");
        assert_eq!(c.hosts().healthy_len(), 1);
        // A host that passed keeps its state across updates (no new FAILED_ACTIVE_HC).
        h1.set_flag(HealthFlags::FAILED_ACTIVE_HC, false);
        c.set_load_assignment(&disabled);
        assert_eq!(h1.health_flags(), HealthFlags::empty());
        h1.set_flag(HealthFlags::FAILED_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT, true);

        // A replacement without health checks adopts the host without its active-HC verdict.
        let plain = Cluster::new_replacing(eds_config(), &store, Some(&c), &crate::tls::NoSecrets).unwrap();
        assert!(plain.is_health_check_initialized());
        plain.set_load_assignment(&assignment(&[ep(1)]));
        assert!(Arc::ptr_eq(&find(&plain, 1).unwrap(), &h1));
        assert_eq!(h1.health_flags(), HealthFlags::empty());
    }
}
