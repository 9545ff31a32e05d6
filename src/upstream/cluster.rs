//! A cluster at runtime: its config, stats, current host set and LB state. Shared by all
//! workers through the config snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use pinion_xds::model;

use super::host::{Host, HostSet};
use super::load_balancer::LoadBalancer;
use crate::stats::{Counter, Gauge, Prom, Store};

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// Envoy's cluster stats (`cluster.<name>.*`).
#[derive(Clone)]
pub struct ClusterStats {
    /// `upstream_cx_total`.
    pub upstream_cx_total: Counter,
    /// `upstream_cx_active`.
    pub upstream_cx_active: Gauge,
    /// `upstream_cx_http1_total`.
    pub upstream_cx_http1_total: Counter,
    /// `upstream_cx_http2_total`.
    pub upstream_cx_http2_total: Counter,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Counter,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Counter,
    /// `upstream_cx_none_healthy`.
    pub upstream_cx_none_healthy: Counter,
    /// `upstream_cx_destroy`.
    pub upstream_cx_destroy: Counter,
    /// `upstream_cx_rx_bytes_total`.
    pub upstream_cx_rx_bytes_total: Counter,
    /// `upstream_cx_tx_bytes_total`.
    pub upstream_cx_tx_bytes_total: Counter,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Counter,
    /// `upstream_rq_active`.
    pub upstream_rq_active: Gauge,
    /// `upstream_rq_completed`.
    pub upstream_rq_completed: Counter,
    /// `upstream_rq_timeout`.
    pub upstream_rq_timeout: Counter,
    /// `upstream_rq_pending_total`.
    pub upstream_rq_pending_total: Counter,
    /// `upstream_rq_pending_failure_eject`.
    pub upstream_rq_pending_failure_eject: Counter,
    /// `upstream_rq_rx_reset`.
    pub upstream_rq_rx_reset: Counter,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`.
    pub upstream_rq_xx: [Counter; 5],
    /// `membership_total`.
    pub membership_total: Gauge,
    /// `membership_healthy`.
    pub membership_healthy: Gauge,
    /// `lb_healthy_panic`.
    pub lb_healthy_panic: Counter,
    /// `upstream_rq_<code>`, created on first use.
    codes: Arc<OnceLock<Box<[OnceLock<Counter>]>>>,
    store: Store,
    stat_name: Arc<str>,
}

impl ClusterStats {
    /// Register the stats of cluster `stat_name`.
    pub fn new(store: &Store, stat_name: &str) -> Self {
        let c = |rest: &str| {
            store.counter(
                &format!("cluster.{stat_name}.{rest}"),
                Prom::tagged("cluster", "envoy_cluster_name", stat_name, rest),
            )
        };
        let g = |rest: &str| {
            store.gauge(
                &format!("cluster.{stat_name}.{rest}"),
                Prom::tagged("cluster", "envoy_cluster_name", stat_name, rest),
            )
        };
        let xx = |class: u8| {
            store.counter(
                &format!("cluster.{stat_name}.upstream_rq_{class}xx"),
                Prom::tagged("cluster", "envoy_cluster_name", stat_name, "upstream_rq_xx")
                    .with_tag("envoy_response_code_class", &class.to_string()),
            )
        };
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_failure_eject: c("upstream_rq_pending_failure_eject"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_xx: [xx(1), xx(2), xx(3), xx(4), xx(5)],
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            lb_healthy_panic: c("lb_healthy_panic"),
            codes: Arc::new(OnceLock::new()),
            store: store.clone(),
            stat_name: stat_name.into(),
        }
    }

    /// Count a response status: `upstream_rq_<code>`, `upstream_rq_<class>xx`, `upstream_rq_completed`.
    pub fn record_status(&self, status: u16) {
        self.upstream_rq_completed.inc();
        let class = (status / 100) as usize;
        if (1..=5).contains(&class) {
            self.upstream_rq_xx[class - 1].inc();
        }
        if !(100..600).contains(&status) {
            return;
        }
        let codes = self.codes.get_or_init(|| (0..500).map(|_| OnceLock::new()).collect());
        let name = &self.stat_name;
        codes[(status - 100) as usize]
            .get_or_init(|| {
                self.store.counter(
                    &format!("cluster.{name}.upstream_rq_{status}"),
                    Prom::tagged("cluster", "envoy_cluster_name", name, "upstream_rq")
                        .with_tag("envoy_response_code", &status.to_string()),
                )
            })
            .inc();
    }
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
    /// Load balancer state.
    pub lb: LoadBalancer,
}

impl Cluster {
    /// Build a cluster from config; STATIC endpoints become hosts now, DNS ones on first resolve.
    pub fn new(config: Arc<model::Cluster>, store: &Store) -> Arc<Self> {
        let stats = ClusterStats::new(store, &config.stat_name);
        let cluster = Arc::new(Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            lb: LoadBalancer::new(config.lb_policy, store.slots()),
            config,
            stats,
            hosts: ArcSwap::from_pointee(HostSet::default()),
        });
        if cluster.config.discovery == model::DiscoveryType::Static {
            let mut resolved = Vec::new();
            for loc in &cluster.config.load_assignment.localities {
                for ep in &loc.endpoints {
                    if let model::EndpointAddress::Socket(addr) = ep.address {
                        resolved.push((loc, ep, addr));
                    }
                }
            }
            let set = cluster.build_host_set(resolved.into_iter());
            cluster.set_hosts(set);
        }
        cluster
    }

    /// Build a host set from resolved endpoints.
    pub fn build_host_set<'a>(
        &self,
        endpoints: impl Iterator<Item = (&'a model::LocalityEndpoints, &'a model::Endpoint, std::net::SocketAddr)>,
    ) -> HostSet {
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
            priorities[p].push(Arc::new(Host::new(
                addr,
                hostname,
                ep.weight,
                loc.locality.clone(),
                loc.priority,
                ep.health_status,
            )));
        }
        HostSet::new(priorities)
    }

    /// Replace the host set (DNS refresh, later EDS).
    pub fn set_hosts(&self, set: HostSet) {
        self.stats.membership_total.set(set.len() as i64);
        self.stats.membership_healthy.set(set.all().filter(|h| h.healthy()).count() as i64);
        self.lb.on_hosts_changed(&set);
        self.hosts.store(Arc::new(set));
    }

    /// Current hosts.
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Pick a host for a new request (None = no healthy upstream).
    pub fn choose_host(&self) -> Option<Arc<Host>> {
        let hosts = self.hosts.load();
        self.lb.choose(&hosts, &self.stats)
    }
}
