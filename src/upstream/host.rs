//! Hosts (`Upstream::Host` in Envoy) and the host set a cluster balances over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use pinion_xds::model::{HealthStatus, Locality};

/// Health flag bits, as shown in `/clusters` (`health_flags::`).
pub mod health_flag {
    /// `/failed_active_hc`.
    pub const FAILED_ACTIVE_HC: u32 = 1 << 0;
    /// `/failed_outlier_check`.
    pub const FAILED_OUTLIER_CHECK: u32 = 1 << 1;
    /// `/failed_eds_health`.
    pub const FAILED_EDS_HEALTH: u32 = 1 << 2;
    /// `/degraded_eds_health`.
    pub const DEGRADED_EDS_HEALTH: u32 = 1 << 3;
    /// `/pending_dynamic_removal`.
    pub const PENDING_DYNAMIC_REMOVAL: u32 = 1 << 4;
}

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

/// One upstream endpoint. Shared by all workers; health flags are atomics the control thread
/// sets and workers read.
pub struct Host {
    /// Resolved address.
    pub address: SocketAddr,
    /// Hostname (DNS name or EDS `hostname`), used by `auto_host_rewrite`.
    pub hostname: String,
    /// LB weight.
    pub weight: u32,
    /// Locality.
    pub locality: Option<Locality>,
    /// Priority level.
    pub priority: u32,
    health_flags: AtomicU32,
    /// Host stats.
    pub stats: HostStats,
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
        let flags = match health {
            HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout => health_flag::FAILED_EDS_HEALTH,
            HealthStatus::Degraded => health_flag::DEGRADED_EDS_HEALTH,
            HealthStatus::Unknown | HealthStatus::Healthy => 0,
        };
        Host {
            address,
            hostname,
            weight: weight.max(1),
            locality,
            priority,
            health_flags: AtomicU32::new(flags),
            stats: HostStats::default(),
        }
    }

    /// Current health flag bits.
    pub fn health_flags(&self) -> u32 {
        self.health_flags.load(Ordering::Relaxed)
    }

    /// Set or clear a health flag.
    pub fn set_flag(&self, flag: u32, on: bool) {
        if on {
            self.health_flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.health_flags.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    /// Whether the LB may pick this host in normal (non-panic) mode.
    pub fn healthy(&self) -> bool {
        self.health_flags() & !health_flag::DEGRADED_EDS_HEALTH == 0
    }

    /// `/clusters` health flag text: `healthy` or `/failed_active_hc/...`.
    pub fn health_flags_text(&self) -> String {
        let f = self.health_flags();
        if f == 0 {
            return "healthy".into();
        }
        let mut s = String::new();
        for (bit, name) in [
            (health_flag::FAILED_ACTIVE_HC, "/failed_active_hc"),
            (health_flag::FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
            (health_flag::FAILED_EDS_HEALTH, "/failed_eds_health"),
            (health_flag::DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
            (health_flag::PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
        ] {
            if f & bit != 0 {
                s.push_str(name);
            }
        }
        s
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("address", &self.address).field("weight", &self.weight).finish()
    }
}

/// The hosts of a cluster, grouped by priority (index 0 = highest). Swapped whole on change.
#[derive(Debug, Default)]
pub struct HostSet {
    /// Hosts per priority level.
    pub priorities: Vec<Vec<Arc<Host>>>,
    /// Every host was routable when the set was built: the LB's fast path.
    pub all_routable: bool,
}

impl HostSet {
    /// A set over these priority levels.
    pub fn new(priorities: Vec<Vec<Arc<Host>>>) -> Self {
        let all_routable = priorities.iter().flatten().all(|h| h.healthy());
        HostSet { priorities, all_routable }
    }
}

impl HostSet {
    /// All hosts, across priorities.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.priorities.iter().flatten()
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.priorities.iter().map(Vec::len).sum()
    }

    /// True when there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
