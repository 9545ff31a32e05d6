//! Hosts (`Upstream::Host` in Envoy) and how the load balancer classes them (the host set a
//! cluster balances over is `host_set.rs`).
//!
//! A host is identified by its address: a host-set update (EDS, DNS refresh, a CDS update
//! replacing the cluster) keeps the `Arc<Host>` of every address that stays, so its stats,
//! `rq_active` and active-HC/outlier flags survive, and updates the rest of it in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bitflags::bitflags;
use pinion_xds::model::{EndpointHealthCheck, HealthStatus, Locality};

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
    /// The endpoint's `envoy.lb` `hash_key` metadata (empty: none).
    lb_hash_key: String,
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
                lb_hash_key: String::new(),
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
                lb_hash_key: meta.lb_hash_key.clone(),
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
                lb_hash_key: meta.lb_hash_key.clone(),
            }));
        }
        self
    }

    /// This host with the endpoint's `envoy.lb` `hash_key` metadata.
    pub fn with_lb_hash_key(self, key: &str) -> Self {
        if !key.is_empty() {
            let meta = self.meta.load();
            self.meta.store(Arc::new(HostMeta {
                hostname: meta.hostname.clone(),
                locality: meta.locality.clone(),
                locality_weight: meta.locality_weight,
                health_check: meta.health_check.clone(),
                lb_hash_key: key.to_owned(),
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

    /// What hash-based load balancers hash for this host (Envoy's `hashKey`): the
    /// `envoy.lb` `hash_key` metadata, else the hostname (`use_hostname`) or the address.
    pub fn lb_hash_key(&self, use_hostname: bool) -> String {
        let meta = self.meta.load();
        if !meta.lb_hash_key.is_empty() {
            meta.lb_hash_key.clone()
        } else if use_hostname {
            meta.hostname.clone()
        } else {
            self.address.to_string()
        }
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
}
