//! Hosts (`Upstream::Host` in Envoy) and the host set a cluster balances over.
//!
//! A host is identified by its address: a host-set update (EDS, DNS refresh, a CDS update
//! replacing the cluster) keeps the `Arc<Host>` of every address that stays, so its stats,
//! `rq_active` and active-HC/outlier flags survive, and updates the rest of it in place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bitflags::bitflags;
use pinion_xds::model::{EndpointHealthCheck, HealthStatus, Locality};

use super::lb::clock::Clock;
use super::lb::priority_load::{LevelCounts, PriorityLoad};
use super::lb::schedule::{self, Cursors, Rotation};
use super::outlier_detection::{HostMonitor, HostState};

bitflags! {
    /// Host health flags, as shown in `/clusters` (`health_flags::`), in Envoy's order and with
    /// Envoy's bit values. `FAILED_*` make a host unhealthy, `DEGRADED_*` degraded (still
    /// routable here), and the excluding flags (see [`HealthFlags::EXCLUDING`]) take it out of
    /// load balancing without making it unhealthy.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct HealthFlags: u32 {
        /// `/failed_active_hc`.
        const FAILED_ACTIVE_HC = 0x1;
        /// `/failed_outlier_check`.
        const FAILED_OUTLIER_CHECK = 0x2;
        /// `/failed_eds_health`.
        const FAILED_EDS_HEALTH = 0x4;
        /// `/degraded_active_hc`: the last check answered with `x-envoy-degraded`.
        const DEGRADED_ACTIVE_HC = 0x8;
        /// `/degraded_eds_health`.
        const DEGRADED_EDS_HEALTH = 0x10;
        /// `/pending_dynamic_removal`.
        const PENDING_DYNAMIC_REMOVAL = 0x20;
        /// `/pending_active_hc`: excluded until its first check (`ignore_new_hosts_until_first_hc`).
        const PENDING_ACTIVE_HC = 0x40;
        /// `/excluded_via_immediate_hc_fail`: a failed check carried
        /// `x-envoy-immediate-health-check-fail`.
        const EXCLUDED_VIA_IMMEDIATE_HC_FAIL = 0x80;
        /// `/active_hc_timeout`: failed active HC, last by a timeout.
        const ACTIVE_HC_TIMEOUT = 0x100;
        /// `/eds_status_draining`: EDS `health_status: DRAINING`.
        const EDS_STATUS_DRAINING = 0x200;
    }
}

impl HealthFlags {
    /// The flags config/EDS `health_status` owns; an update rewrites these and leaves the
    /// others (active HC, outlier detection) alone.
    pub const EDS: HealthFlags =
        HealthFlags::FAILED_EDS_HEALTH.union(HealthFlags::DEGRADED_EDS_HEALTH).union(HealthFlags::EDS_STATUS_DRAINING);

    /// The flags active health checking owns.
    pub const ACTIVE_HC: HealthFlags = HealthFlags::FAILED_ACTIVE_HC
        .union(HealthFlags::DEGRADED_ACTIVE_HC)
        .union(HealthFlags::PENDING_ACTIVE_HC)
        .union(HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL)
        .union(HealthFlags::ACTIVE_HC_TIMEOUT);

    /// Flags that make a host unhealthy (Envoy's `Host::Health::Unhealthy`).
    pub const FAILED: HealthFlags =
        HealthFlags::FAILED_ACTIVE_HC.union(HealthFlags::FAILED_OUTLIER_CHECK).union(HealthFlags::FAILED_EDS_HEALTH);

    /// Flags that make a host degraded.
    pub const DEGRADED: HealthFlags = HealthFlags::DEGRADED_ACTIVE_HC.union(HealthFlags::DEGRADED_EDS_HEALTH);

    /// Flags that exclude a host from load balancing (Envoy's excluded host list).
    pub const EXCLUDING: HealthFlags = HealthFlags::PENDING_DYNAMIC_REMOVAL
        .union(HealthFlags::PENDING_ACTIVE_HC)
        .union(HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL)
        .union(HealthFlags::EDS_STATUS_DRAINING);

    /// The flags a config/EDS `health_status` sets: UNHEALTHY and TIMEOUT fail the host,
    /// DRAINING excludes it (Envoy 1.40 shows `/eds_status_draining`, not a failure), DEGRADED
    /// degrades it.
    pub fn from_eds(health: HealthStatus) -> HealthFlags {
        match health {
            HealthStatus::Unhealthy | HealthStatus::Timeout => HealthFlags::FAILED_EDS_HEALTH,
            HealthStatus::Draining => HealthFlags::EDS_STATUS_DRAINING,
            HealthStatus::Degraded => HealthFlags::DEGRADED_EDS_HEALTH,
            HealthStatus::Unknown | HealthStatus::Healthy => HealthFlags::empty(),
        }
    }

    /// Whether a host with these flags is routable outside panic mode (healthy or degraded,
    /// and not excluded).
    pub fn is_healthy(self) -> bool {
        !self.intersects(HealthFlags::FAILED.union(HealthFlags::EXCLUDING))
    }

    /// The EDS status `/clusters?format=json` reports (`eds_health_status`): Envoy rebuilds it
    /// from the flags, so TIMEOUT reads as UNHEALTHY and UNKNOWN as HEALTHY.
    pub fn eds_status_name(self) -> &'static str {
        if self.contains(HealthFlags::FAILED_EDS_HEALTH) {
            "UNHEALTHY"
        } else if self.contains(HealthFlags::EDS_STATUS_DRAINING) {
            "DRAINING"
        } else if self.contains(HealthFlags::DEGRADED_EDS_HEALTH) {
            "DEGRADED"
        } else {
            "HEALTHY"
        }
    }
}

/// `/clusters` spelling of each flag, in Envoy's order.
const FLAG_TEXT: [(HealthFlags, &str); 10] = [
    (HealthFlags::FAILED_ACTIVE_HC, "/failed_active_hc"),
    (HealthFlags::FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
    (HealthFlags::FAILED_EDS_HEALTH, "/failed_eds_health"),
    (HealthFlags::DEGRADED_ACTIVE_HC, "/degraded_active_hc"),
    (HealthFlags::DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
    (HealthFlags::PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
    (HealthFlags::PENDING_ACTIVE_HC, "/pending_active_hc"),
    (HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "/excluded_via_immediate_hc_fail"),
    (HealthFlags::ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
    (HealthFlags::EDS_STATUS_DRAINING, "/eds_status_draining"),
];

/// Per-host counters (Envoy's host stats in `/clusters`). Plain atomics, not sharded: there
/// can be tens of thousands of hosts, and Envoy's host stats are shared atomics too.
#[derive(Default)]
pub struct HostStats {
    /// `cx_total`.
    pub cx_total: AtomicU64,
    /// `cx_connect_fail`.
    pub cx_connect_fail: AtomicU64,
    /// `cx_active`.
    pub cx_active: AtomicI64,
    /// `rq_total`.
    pub rq_total: AtomicU64,
    /// `rq_success`.
    pub rq_success: AtomicU64,
    /// `rq_error`.
    pub rq_error: AtomicU64,
    /// `rq_timeout`.
    pub rq_timeout: AtomicU64,
    /// `rq_active`.
    pub rq_active: AtomicI64,
    /// `rq_pending_active`: requests to this host waiting in a pool for a connection.
    pub rq_pending_active: AtomicI64,
}

impl HostStats {
    /// Add one to a counter.
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to a gauge.
    #[inline]
    pub fn add(g: &AtomicI64, n: i64) {
        g.fetch_add(n, Ordering::Relaxed);
    }
}

/// The descriptive part of a host that an update may change and that is not a number: read
/// by `/clusters` and `auto_host_rewrite`, written only when an update changes it.
#[derive(Debug, Default, PartialEq)]
struct HostMeta {
    hostname: String,
    locality: Option<Locality>,
    /// The `load_balancing_weight` of the locality entry the endpoint came from.
    locality_weight: Option<u32>,
    /// `health_check_config`: port override, Host for checks, opt-out.
    health_check: EndpointHealthCheck,
}

/// One upstream endpoint. Shared by all workers; everything but the address is updatable in
/// place, because the address is the host's identity across updates (as in Envoy).
pub struct Host {
    /// Resolved address: the host's identity.
    pub address: SocketAddr,
    weight: AtomicU32,
    priority: AtomicU32,
    meta: ArcSwap<HostMeta>,
    health_flags: AtomicU32,
    /// Slow start: when (LB clock ms) the host last became healthy, Envoy's `lastHcPassTime`
    /// (0: not yet).
    healthy_since: AtomicU64,
    /// Host stats.
    pub stats: HostStats,
    /// Outlier detection results, written by workers (atomics only).
    pub outlier: HostMonitor,
    /// The outlier detector's memory of this host (ejection count, backoff, times); only
    /// the main thread takes the lock. On the host, not the detector, so that it stays with
    /// the host across cluster updates, like the ejection flag itself.
    outlier_state: Mutex<HostState>,
}

impl Host {
    /// A host with its config-time health.
    pub fn new(
        address: SocketAddr,
        hostname: String,
        weight: u32,
        locality: Option<Locality>,
        priority: u32,
        health: HealthStatus,
    ) -> Self {
        Host {
            address,
            weight: AtomicU32::new(weight.max(1)),
            priority: AtomicU32::new(priority),
            meta: ArcSwap::from_pointee(HostMeta {
                hostname,
                locality,
                locality_weight: None,
                health_check: EndpointHealthCheck::default(),
            }),
            health_flags: AtomicU32::new(HealthFlags::from_eds(health).bits()),
            healthy_since: AtomicU64::new(0),
            stats: HostStats::default(),
            outlier: HostMonitor::default(),
            outlier_state: Mutex::new(HostState::default()),
        }
    }

    /// The outlier detector's state of this host.
    pub fn outlier_state(&self) -> HostState {
        *self.outlier_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the outlier detector's state of this host (main thread).
    pub fn set_outlier_state(&self, state: HostState) {
        *self.outlier_state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// This host with the endpoint's `health_check_config`.
    pub fn with_health_check(self, hc: &EndpointHealthCheck) -> Self {
        if *hc != EndpointHealthCheck::default() {
            let meta = self.meta.load();
            self.meta.store(Arc::new(HostMeta {
                hostname: meta.hostname.clone(),
                locality: meta.locality.clone(),
                locality_weight: meta.locality_weight,
                health_check: hc.clone(),
            }));
        }
        self
    }

    /// This host with the `load_balancing_weight` of its locality entry.
    pub fn with_locality_weight(self, weight: Option<u32>) -> Self {
        if weight.is_some() {
            let meta = self.meta.load();
            self.meta.store(Arc::new(HostMeta {
                hostname: meta.hostname.clone(),
                locality: meta.locality.clone(),
                locality_weight: weight,
                health_check: meta.health_check.clone(),
            }));
        }
        self
    }

    /// The `load_balancing_weight` of the host's locality entry.
    pub fn locality_weight(&self) -> Option<u32> {
        self.meta.load().locality_weight
    }

    /// When (LB clock ms) the host became healthy; set to `now` if it never was.
    pub fn healthy_since_or(&self, now: u64) -> u64 {
        match self.healthy_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => now,
            Err(since) => since,
        }
    }

    /// When (LB clock ms) the host became healthy (0: not seen healthy yet).
    pub fn healthy_since(&self) -> u64 {
        self.healthy_since.load(Ordering::Relaxed)
    }

    /// The host passed an active health check and became healthy at `now` (starts its slow
    /// start window again, as Envoy's `setLastHcPassTime`).
    pub fn set_healthy_since(&self, now: u64) {
        self.healthy_since.store(now, Ordering::Relaxed);
    }

    /// The endpoint's `health_check_config`.
    pub fn health_check_config(&self) -> EndpointHealthCheck {
        self.meta.load().health_check.clone()
    }

    /// Where active health checks connect: the address, with `health_check_config.port_value`
    /// when set.
    pub fn health_check_address(&self) -> SocketAddr {
        let port = self.meta.load().health_check.port;
        let mut a = self.address;
        if port != 0 {
            a.set_port(port);
        }
        a
    }

    /// LB weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Priority level (0 = highest).
    pub fn priority(&self) -> u32 {
        self.priority.load(Ordering::Relaxed)
    }

    /// Hostname (DNS name or EDS `hostname`), used by `auto_host_rewrite`; may be empty.
    pub fn hostname(&self) -> String {
        self.meta.load().hostname.clone()
    }

    /// Locality.
    pub fn locality(&self) -> Option<Locality> {
        self.meta.load().locality.clone()
    }

    /// Take over what an update says about this address (`fresh`, a host built from the new
    /// config): weight, priority, hostname, locality and the EDS health flags. Stats and the
    /// active-HC/outlier flags stay: they are this host's history, not config.
    pub fn update_from(&self, fresh: &Host) {
        self.weight.store(fresh.weight(), Ordering::Relaxed);
        self.priority.store(fresh.priority(), Ordering::Relaxed);
        let meta = fresh.meta.load();
        if **self.meta.load() != **meta {
            self.meta.store(Arc::clone(&meta));
        }
        let eds = fresh.health_flags() & HealthFlags::EDS;
        let _ = self.health_flags.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
            Some(((HealthFlags::from_bits_retain(f) - HealthFlags::EDS) | eds).bits())
        });
    }

    /// Current health flags.
    pub fn health_flags(&self) -> HealthFlags {
        HealthFlags::from_bits_retain(self.health_flags.load(Ordering::Relaxed))
    }

    /// Replace the flags in `mask` with `value & mask`; returns whether anything changed.
    pub fn set_flags_masked(&self, mask: HealthFlags, value: HealthFlags) -> bool {
        let value = value & mask;
        let old = self.health_flags.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
            Some(((HealthFlags::from_bits_retain(f) - mask) | value).bits())
        });
        let old = HealthFlags::from_bits_retain(old.unwrap_or_else(|v| v));
        old & mask != value
    }

    /// Set or clear health flags; returns whether anything changed. The host set's
    /// precomputed healthy lists follow only once the set is rebuilt: use
    /// `Cluster::set_host_health_flag`, which does both.
    pub fn set_flag(&self, flag: HealthFlags, on: bool) -> bool {
        let old = if on {
            self.health_flags.fetch_or(flag.bits(), Ordering::Relaxed)
        } else {
            self.health_flags.fetch_and(!flag.bits(), Ordering::Relaxed)
        };
        let old = HealthFlags::from_bits_retain(old);
        old.contains(flag) != on
    }

    /// Whether the LB may pick this host in normal (non-panic) mode: healthy or degraded.
    #[inline]
    pub fn healthy(&self) -> bool {
        self.health_flags().is_healthy()
    }

    /// `/clusters` health flag text: `healthy` or `/failed_active_hc/...`.
    pub fn health_flags_text(&self) -> String {
        let f = self.health_flags();
        if f.is_empty() {
            return "healthy".into();
        }
        FLAG_TEXT.iter().filter(|(bit, _)| f.contains(*bit)).map(|(_, name)| *name).collect()
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("address", &self.address).field("weight", &self.weight()).finish()
    }
}

/// How the load balancer sees a host (Envoy's healthy, degraded and excluded host lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbClass {
    /// Routable, neither degraded nor excluded.
    Healthy,
    /// Routable, but only used for the load healthy hosts cannot take.
    Degraded,
    /// Failed: only picked in panic mode.
    Unhealthy,
    /// Excluded from the healthy and degraded lists and from the availability counts.
    Excluded,
}

impl HealthFlags {
    /// The list the load balancer puts a host with these flags in.
    pub fn lb_class(self) -> LbClass {
        if self.intersects(HealthFlags::EXCLUDING) {
            LbClass::Excluded
        } else if self.intersects(HealthFlags::FAILED) {
            LbClass::Unhealthy
        } else if self.intersects(HealthFlags::DEGRADED) {
            LbClass::Degraded
        } else {
            LbClass::Healthy
        }
    }
}

/// Host-set parameters that come from the cluster's config.
#[derive(Debug, Clone)]
pub struct HostSetSettings {
    /// EDS `policy.overprovisioning_factor` (percent).
    pub overprovisioning_factor: u32,
    /// `common_lb_config.healthy_panic_threshold` (percent, 0 disables panic).
    pub panic_threshold: u32,
    /// `locality_weighted_lb_config`: group hosts by locality and pick localities by weight.
    pub locality_weighted: bool,
    /// Precompute smooth weighted schedules of every list with unequal weights (round robin).
    pub weighted_schedules: bool,
    /// `slow_start_config.slow_start_window` in ms (0: no slow start).
    pub slow_start_window_ms: u64,
    /// The load balancer's clock (slow start timestamps).
    pub clock: Clock,
    /// Worker slots (workers + main): per-worker positions of locality schedules.
    pub slots: usize,
}

impl Default for HostSetSettings {
    fn default() -> Self {
        HostSetSettings {
            overprovisioning_factor: 140,
            panic_threshold: 50,
            locality_weighted: false,
            weighted_schedules: true,
            slow_start_window_ms: 0,
            clock: Clock::System,
            slots: crate::stats::MAX_WORKERS + 1,
        }
    }
}

/// A list of hosts a pick chooses among, with what the pick needs precomputed.
#[derive(Debug, Default)]
pub struct HostList {
    hosts: Vec<Arc<Host>>,
    /// Unique within its host set: keys per-list LB state.
    id: u32,
    weight: u64,
    equal_weights: bool,
    /// Smooth weighted schedule (indices into `hosts`) when weights differ and the policy
    /// wants one.
    schedule: Option<Arc<[u32]>>,
    /// Round-robin positions of this list alone (as Envoy keeps an index per host source: a
    /// position shared between lists would skew the split within each).
    cursors: Option<Cursors>,
}

impl HostList {
    fn new(hosts: Vec<Arc<Host>>, next_id: &mut u32, schedules: bool, slots: usize) -> Self {
        let weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight())).collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let id = *next_id;
        *next_id += 1;
        HostList {
            weight: weights.iter().sum(),
            schedule: if schedules && !equal_weights { schedule::smooth_schedule(&weights) } else { None },
            equal_weights,
            id,
            cursors: (hosts.len() > 1).then(|| Cursors::new(slots)),
            hosts,
        }
    }

    /// Round-robin positions of this list, if it has its own.
    pub fn cursors(&self) -> Option<&Cursors> {
        self.cursors.as_ref()
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Identifies the list within its host set.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sum of the hosts' weights.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// All hosts have the same weight (an empty list too).
    pub fn equal_weights(&self) -> bool {
        self.equal_weights
    }

    /// The precomputed weighted round-robin schedule, if any.
    pub fn schedule(&self) -> Option<&[u32]> {
        self.schedule.as_deref()
    }
}

/// The hosts of one priority level split the way Envoy's `HostSet` splits them.
#[derive(Debug, Default)]
struct Split {
    all: HostList,
    healthy: HostList,
    degraded: HostList,
    excluded: usize,
}

impl Split {
    fn new(hosts: Vec<Arc<Host>>, next_id: &mut u32, settings: &HostSetSettings, locality: bool) -> Self {
        let mut healthy = Vec::new();
        let mut degraded = Vec::new();
        let mut excluded = 0;
        for h in &hosts {
            match h.health_flags().lb_class() {
                LbClass::Healthy => healthy.push(h.clone()),
                LbClass::Degraded => degraded.push(h.clone()),
                LbClass::Unhealthy => {}
                LbClass::Excluded => excluded += 1,
            }
        }
        let s = settings.weighted_schedules;
        Split {
            // Panic picks never use a locality's list.
            all: HostList::new(hosts, next_id, s && !locality, settings.slots),
            healthy: HostList::new(healthy, next_id, s, settings.slots),
            degraded: HostList::new(degraded, next_id, s, settings.slots),
            excluded,
        }
    }

    fn counts(&self) -> LevelCounts {
        LevelCounts {
            hosts: self.all.hosts.len(),
            healthy: self.healthy.hosts.len(),
            degraded: self.degraded.hosts.len(),
            excluded: self.excluded,
        }
    }
}

/// A locality as a sort key: (region, zone, sub-zone).
type LocalityKey = (String, String, String);

/// The hosts of one locality within a priority level (locality-weighted balancing only).
#[derive(Debug)]
pub struct LocalityHosts {
    locality: Locality,
    /// The locality's `load_balancing_weight` (0 when unset: never picked, as in Envoy).
    weight: u32,
    split: Split,
}

impl LocalityHosts {
    /// The locality (empty fields when the endpoints had none).
    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    /// `load_balancing_weight` of the locality (0: unset).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its healthy hosts.
    pub fn healthy_list(&self) -> &HostList {
        &self.split.healthy
    }

    /// Its degraded hosts.
    pub fn degraded_list(&self) -> &HostList {
        &self.split.degraded
    }

    /// Envoy's `effectiveLocalityWeight`: the weight scaled by the share of the locality's
    /// (non-excluded) hosts that are `eligible`, times the overprovisioning factor, capped at 1.
    fn effective_weight(&self, eligible: usize, overprovisioning_factor: u32) -> f64 {
        let hosts = self.split.all.hosts.len().saturating_sub(self.split.excluded);
        if hosts == 0 {
            return 0.0;
        }
        let ratio = eligible as f64 / hosts as f64;
        f64::from(self.weight) * (f64::from(overprovisioning_factor) / 100.0 * ratio).min(1.0)
    }
}

/// One priority level of a host set with what load balancing needs, computed once when the
/// set is built so a pick never scans the hosts.
#[derive(Debug, Default)]
pub struct PriorityHosts {
    split: Split,
    /// Locality-weighted balancing: the level's hosts by locality (Envoy's order: sorted by
    /// region, zone, sub-zone), and a schedule over them by effective weight for picks among
    /// healthy and among degraded hosts (`None`: no locality has weight and eligible hosts).
    localities: Vec<LocalityHosts>,
    healthy_localities: Option<Rotation>,
    degraded_localities: Option<Rotation>,
}

impl PriorityHosts {
    fn new(hosts: Vec<Arc<Host>>, next_id: &mut u32, settings: &HostSetSettings) -> Self {
        let localities =
            if settings.locality_weighted { Self::by_locality(&hosts, next_id, settings) } else { Vec::new() };
        let split = Split::new(hosts, next_id, settings, false);
        let rotation = |eligible: &dyn Fn(&LocalityHosts) -> usize, any: bool| {
            if !any {
                return None;
            }
            let weights: Vec<f64> =
                localities.iter().map(|l| l.effective_weight(eligible(l), settings.overprovisioning_factor)).collect();
            schedule::fractional_schedule(&weights).map(|order| Rotation::new(order, settings.slots))
        };
        let healthy_localities = rotation(&|l| l.split.healthy.hosts.len(), !split.healthy.hosts.is_empty());
        let degraded_localities = rotation(&|l| l.split.degraded.hosts.len(), !split.degraded.hosts.is_empty());
        PriorityHosts { split, localities, healthy_localities, degraded_localities }
    }

    fn by_locality(hosts: &[Arc<Host>], next_id: &mut u32, settings: &HostSetSettings) -> Vec<LocalityHosts> {
        // Keyed by (region, zone, sub-zone): Envoy's `LocalityLess` order.
        let mut groups: BTreeMap<LocalityKey, (u32, Vec<Arc<Host>>)> = BTreeMap::new();
        for h in hosts {
            let meta = h.meta.load();
            let loc = meta.locality.clone().unwrap_or_default();
            let entry = groups.entry((loc.region, loc.zone, loc.sub_zone)).or_default();
            // As Envoy's map of locality weights: a listing with a weight sets it.
            if let Some(w) = meta.locality_weight {
                entry.0 = w;
            }
            entry.1.push(h.clone());
        }
        groups
            .into_iter()
            .map(|((region, zone, sub_zone), (weight, hosts))| LocalityHosts {
                locality: Locality { region, zone, sub_zone },
                weight,
                split: Split::new(hosts, next_id, settings, true),
            })
            .collect()
    }

    /// Every host of this level.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.split.all.hosts
    }

    /// The hosts that were healthy (not degraded, not excluded) when the set was built, in
    /// `hosts` order (Envoy's healthy host list).
    pub fn healthy(&self) -> &[Arc<Host>] {
        &self.split.healthy.hosts
    }

    /// The hosts that were degraded (and neither failed nor excluded) when the set was built.
    pub fn degraded(&self) -> &[Arc<Host>] {
        &self.split.degraded.hosts
    }

    /// All hosts as a pick list.
    pub fn all_list(&self) -> &HostList {
        &self.split.all
    }

    /// The healthy hosts as a pick list.
    pub fn healthy_list(&self) -> &HostList {
        &self.split.healthy
    }

    /// The degraded hosts as a pick list.
    pub fn degraded_list(&self) -> &HostList {
        &self.split.degraded
    }

    /// Number of excluded hosts.
    pub fn excluded(&self) -> usize {
        self.split.excluded
    }

    /// The localities (locality-weighted balancing only; empty otherwise).
    pub fn localities(&self) -> &[LocalityHosts] {
        &self.localities
    }

    /// The next locality for a pick among healthy (`degraded` false) or degraded hosts, by
    /// effective locality weight; `None` when there is no locality schedule.
    #[inline]
    pub fn choose_locality(&self, degraded: bool) -> Option<&LocalityHosts> {
        let rotation = if degraded { &self.degraded_localities } else { &self.healthy_localities };
        rotation.as_ref().and_then(|r| self.localities.get(r.next() as usize))
    }

    /// The locality schedule for healthy or degraded picks (tests, `/clusters` debugging).
    pub fn locality_schedule(&self, degraded: bool) -> Option<&[u32]> {
        let rotation = if degraded { &self.degraded_localities } else { &self.healthy_localities };
        rotation.as_ref().map(Rotation::order)
    }

    /// Sum of the weights of all hosts.
    pub fn total_weight(&self) -> u64 {
        self.split.all.weight
    }

    /// Sum of the weights of the healthy hosts.
    pub fn healthy_weight(&self) -> u64 {
        self.split.healthy.weight
    }

    /// All hosts of this level (so also the healthy ones) have the same weight.
    pub fn equal_weights(&self) -> bool {
        self.split.all.equal_weights
    }
}

/// Distinguishes host sets, so per-set LB state (round-robin schedules) is used only with the
/// set it was computed for.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The hosts of a cluster, grouped by priority (index 0 = highest). Immutable: swapped whole
/// on change (hosts that stay are shared with the previous set).
#[derive(Debug, Default)]
pub struct HostSet {
    priorities: Vec<PriorityHosts>,
    generation: u64,
    len: usize,
    healthy_len: usize,
    /// Envoy's membership gauges: (healthy, degraded, excluded).
    membership: (usize, usize, usize),
    /// The traffic split across priorities.
    load: PriorityLoad,
    settings: HostSetSettings,
    /// Slow start: until when (clock ms) some host of the set is in its window (0: none).
    slow_start_until: u64,
}

impl HostSet {
    /// A set over these priority levels with default settings (Envoy's defaults).
    pub fn new(priorities: Vec<Vec<Arc<Host>>>) -> Self {
        HostSet::with_settings(priorities, HostSetSettings::default())
    }

    /// A set over these priority levels.
    pub fn with_settings(priorities: Vec<Vec<Arc<Host>>>, settings: HostSetSettings) -> Self {
        let mut next_id = 0;
        let priorities: Vec<PriorityHosts> =
            priorities.into_iter().map(|p| PriorityHosts::new(p, &mut next_id, &settings)).collect();
        let mut membership = (0, 0, 0);
        let mut slow_start_until = 0;
        let now = if settings.slow_start_window_ms > 0 { settings.clock.now_ms() } else { 0 };
        for h in priorities.iter().flat_map(|p| p.hosts().iter()) {
            match h.health_flags().lb_class() {
                LbClass::Healthy => {
                    membership.0 += 1;
                    if settings.slow_start_window_ms > 0 {
                        // As Envoy's `recalculateHostsInSlowStart`: a healthy host without a
                        // health-check pass time starts its window when first seen.
                        let since = h.healthy_since_or(now);
                        slow_start_until = slow_start_until.max(since + settings.slow_start_window_ms);
                    }
                }
                LbClass::Degraded => membership.1 += 1,
                LbClass::Excluded => membership.2 += 1,
                LbClass::Unhealthy => {}
            }
        }
        let counts: Vec<LevelCounts> = priorities.iter().map(|p| p.split.counts()).collect();
        HostSet {
            membership,
            len: priorities.iter().map(|p| p.hosts().len()).sum(),
            healthy_len: priorities.iter().map(|p| p.healthy().len()).sum(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            load: PriorityLoad::compute(&counts, settings.overprovisioning_factor, settings.panic_threshold),
            priorities,
            settings,
            slow_start_until: if slow_start_until > now { slow_start_until } else { 0 },
        }
    }

    /// The same hosts with the health-derived lists recomputed from the hosts' current flags.
    pub fn recompute(&self) -> HostSet {
        HostSet::with_settings(self.priorities.iter().map(|p| p.hosts().to_vec()).collect(), self.settings.clone())
    }

    /// The priority levels (index 0 = highest).
    pub fn priorities(&self) -> &[PriorityHosts] {
        &self.priorities
    }

    /// The traffic split across the priority levels.
    pub fn load(&self) -> &PriorityLoad {
        &self.load
    }

    /// The settings the set was built with.
    pub fn settings(&self) -> &HostSetSettings {
        &self.settings
    }

    /// Until when (clock ms) some host is in its slow-start window; 0 when none was at build.
    pub fn slow_start_until(&self) -> u64 {
        self.slow_start_until
    }

    /// Unique id of this set (0 for the empty default set).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// All hosts, across priorities.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.priorities.iter().flat_map(|p| p.hosts().iter())
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of hosts that were healthy (not degraded, not excluded) when the set was built.
    pub fn healthy_len(&self) -> usize {
        self.healthy_len
    }

    /// Envoy's `membership_healthy`, `membership_degraded` and `membership_excluded`: hosts
    /// neither failed, degraded nor excluded; degraded and not failed or excluded; excluded.
    pub fn membership(&self) -> (usize, usize, usize) {
        self.membership
    }

    /// True when there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(port: u16, weight: u32, health: HealthStatus) -> Arc<Host> {
        Arc::new(Host::new(([127, 0, 0, 1], port).into(), String::new(), weight, None, 0, health))
    }

    #[test]
    fn health_flags_text_matches_envoy() {
        let cases: &[(HealthFlags, &str)] = &[
            (HealthFlags::empty(), "healthy"),
            (HealthFlags::FAILED_ACTIVE_HC, "/failed_active_hc"),
            (HealthFlags::DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
            (
                HealthFlags::PENDING_DYNAMIC_REMOVAL | HealthFlags::FAILED_EDS_HEALTH | HealthFlags::FAILED_ACTIVE_HC,
                "/failed_active_hc/failed_eds_health/pending_dynamic_removal",
            ),
            (
                HealthFlags::all(),
                "/failed_active_hc/failed_outlier_check/failed_eds_health/degraded_active_hc/degraded_eds_health\
                 /pending_dynamic_removal/pending_active_hc/excluded_via_immediate_hc_fail/active_hc_timeout\
                 /eds_status_draining",
            ),
            (HealthFlags::FAILED_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT, "/failed_active_hc/active_hc_timeout"),
        ];
        for (flags, text) in cases {
            let h = host(1, 1, HealthStatus::Healthy);
            h.set_flag(*flags, true);
            assert_eq!(h.health_flags_text(), *text, "{flags:?}");
        }
    }

    #[test]
    fn eds_health_maps_to_flags() {
        let cases = [
            (HealthStatus::Unknown, HealthFlags::empty(), true),
            (HealthStatus::Healthy, HealthFlags::empty(), true),
            (HealthStatus::Degraded, HealthFlags::DEGRADED_EDS_HEALTH, true),
            (HealthStatus::Unhealthy, HealthFlags::FAILED_EDS_HEALTH, false),
            (HealthStatus::Draining, HealthFlags::EDS_STATUS_DRAINING, false),
            (HealthStatus::Timeout, HealthFlags::FAILED_EDS_HEALTH, false),
        ];
        for (status, flags, healthy) in cases {
            let h = host(1, 1, status);
            assert_eq!((h.health_flags(), h.healthy()), (flags, healthy), "{status:?}");
        }
    }

    #[test]
    fn set_flag_reports_changes() {
        let h = host(1, 1, HealthStatus::Healthy);
        assert!(h.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true));
        assert!(!h.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true));
        assert!(!h.healthy());
        assert!(h.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, false));
        assert!(!h.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, false));
        assert!(h.healthy());
    }

    #[test]
    fn update_from_replaces_config_and_eds_health_but_keeps_stats_and_hc_flags() {
        let h = host(1, 1, HealthStatus::Degraded);
        h.set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
        HostStats::inc(&h.stats.rq_total);
        let loc = Locality { region: "r".into(), zone: "z".into(), sub_zone: "s".into() };
        let fresh = Host::new(h.address, "svc.local".into(), 7, Some(loc.clone()), 2, HealthStatus::Unhealthy);
        h.update_from(&fresh);
        assert_eq!((h.weight(), h.priority(), h.hostname(), h.locality()), (7, 2, "svc.local".into(), Some(loc)));
        assert_eq!(h.health_flags(), HealthFlags::FAILED_ACTIVE_HC | HealthFlags::FAILED_EDS_HEALTH);
        assert_eq!(h.stats.rq_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn host_set_precomputes_healthy_lists_and_weights() {
        let set = HostSet::new(vec![
            vec![
                host(1, 2, HealthStatus::Healthy),
                host(2, 3, HealthStatus::Unhealthy),
                host(3, 5, HealthStatus::Degraded),
            ],
            vec![host(4, 1, HealthStatus::Healthy), host(5, 1, HealthStatus::Healthy)],
        ]);
        assert_eq!((set.len(), set.healthy_len()), (5, 3));
        let p0 = &set.priorities()[0];
        let ports = |hs: &[Arc<Host>]| hs.iter().map(|h| h.address.port()).collect::<Vec<u16>>();
        assert_eq!((ports(p0.healthy()), ports(p0.degraded())), (vec![1], vec![3]));
        assert_eq!((p0.total_weight(), p0.healthy_weight(), p0.equal_weights()), (10, 2, false));
        let p1 = &set.priorities()[1];
        assert_eq!((p1.total_weight(), p1.healthy_weight(), p1.equal_weights()), (2, 2, true));
        assert_ne!(set.generation(), HostSet::new(Vec::new()).generation());
    }

    #[test]
    fn recompute_follows_flag_changes() {
        let set = HostSet::new(vec![vec![host(1, 1, HealthStatus::Healthy), host(2, 1, HealthStatus::Healthy)]]);
        set.priorities()[0].hosts()[1].set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
        assert_eq!(set.healthy_len(), 2, "a built set does not change");
        let again = set.recompute();
        assert_eq!(again.healthy_len(), 1);
        assert!(Arc::ptr_eq(&again.priorities()[0].healthy()[0], &set.priorities()[0].hosts()[0]));
        assert_ne!(again.generation(), set.generation());
    }
}
