//! Load balancers (Envoy's `LoadBalancer`), one file per policy: round robin (smooth weighted
//! schedule), least request (power of two choices), random, and the hash-based ring hash and
//! Maglev (`hashing.rs` has what those two share). The `LoadBalancer` enum
//! dispatches with a match, so a pick is a direct call with no allocation. Priority selection
//! and the panic threshold are shared by all policies (`priority.rs`).
//!
//! Picks read the host set's precomputed healthy lists. Those are from when the set was
//! built; a host whose flags changed since (before the owner rebuilt the set) is caught by
//! checking the picked host, and the pick is redone from the hosts' live flags.

mod context;
mod hashing;
mod least_request;
mod maglev;
mod priority;
mod random;
mod ring_hash;
mod round_robin;

use std::sync::Arc;

use pinion_xds::model::LbPolicy;

pub use context::LbContext;
use context::{Candidates, ListId};
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use priority::{select, select_live, PrioritySelection, DEFAULT_PANIC_THRESHOLD_PERCENT};
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;

use super::cluster_stats::ClusterStats;
use super::host::{Host, HostSet};

/// A cluster's load balancer.
pub enum LoadBalancer {
    /// `ROUND_ROBIN`.
    RoundRobin(RoundRobin),
    /// `LEAST_REQUEST`.
    LeastRequest(LeastRequest),
    /// `RANDOM`.
    Random(Random),
    /// `RING_HASH`.
    RingHash(RingHash),
    /// `MAGLEV`.
    Maglev(Maglev),
}

impl LoadBalancer {
    /// A balancer for `policy`; `slots` is the number of stats slots (workers + main), one
    /// round-robin position each.
    pub fn new(policy: LbPolicy, slots: usize) -> Self {
        match policy {
            LbPolicy::RoundRobin => LoadBalancer::RoundRobin(RoundRobin::new(slots)),
            LbPolicy::LeastRequest => LoadBalancer::LeastRequest(LeastRequest::default()),
            LbPolicy::Random => LoadBalancer::Random(Random),
            LbPolicy::RingHash(cfg) => LoadBalancer::RingHash(RingHash::new(cfg)),
            LbPolicy::Maglev(cfg) => LoadBalancer::Maglev(Maglev::new(cfg)),
        }
    }

    /// Register the policy's own stats (Envoy's `ring_hash_lb.*`, `maglev_lb.*` gauges) for
    /// cluster `stat_name`; before the first host set is installed.
    pub fn register_stats(&self, store: &crate::stats::Store, stat_name: &str) {
        match self {
            LoadBalancer::RingHash(rh) => rh.register_stats(store, stat_name),
            LoadBalancer::Maglev(m) => m.register_stats(store, stat_name),
            LoadBalancer::RoundRobin(_) | LoadBalancer::LeastRequest(_) | LoadBalancer::Random(_) => {}
        }
    }

    /// Whether picks use the request hash (ring hash, Maglev): only then is a route's hash
    /// policy evaluated, as Envoy computes the hash only when such a balancer asks for it.
    pub fn uses_hash(&self) -> bool {
        matches!(self, LoadBalancer::RingHash(_) | LoadBalancer::Maglev(_))
    }

    /// Recompute per-set state (round-robin schedules, rings, Maglev tables) for a new host
    /// set. Call before the set is published, so picks from it find its state.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        match self {
            LoadBalancer::RoundRobin(rr) => rr.on_hosts_changed(set),
            LoadBalancer::RingHash(rh) => rh.on_hosts_changed(set),
            LoadBalancer::Maglev(m) => m.on_hosts_changed(set),
            LoadBalancer::LeastRequest(_) | LoadBalancer::Random(_) => {}
        }
    }

    /// Pick a host for a request: the highest priority with healthy hosts, or panic mode (all
    /// hosts of the first non-empty priority) when fewer than the panic threshold are healthy.
    /// `None` (and `upstream_cx_none_healthy`) when there is nothing to pick.
    pub fn choose(&self, set: &HostSet, ctx: &LbContext, stats: &ClusterStats) -> Option<Arc<Host>> {
        let Some(sel) = select(set, DEFAULT_PANIC_THRESHOLD_PERCENT) else {
            stats.upstream_cx_none_healthy.inc();
            return None;
        };
        if sel.panic {
            stats.lb_healthy_panic.inc();
        }
        let level = &set.priorities()[sel.level];
        let candidates = Candidates {
            hosts: if sel.panic { level.hosts() } else { level.healthy() },
            list: Some(ListId { generation: set.generation(), level: sel.level, panic: sel.panic }),
            equal_weights: level.equal_weights(),
        };
        match self.pick(candidates, ctx) {
            Some(h) if sel.panic || h.healthy() => Some(h.clone()),
            _ => self.choose_live(set, ctx, stats),
        }
    }

    /// The slow path: select and pick from the hosts' current flags (some flag changed after
    /// the set was built). Allocates; only taken until the set is rebuilt.
    fn choose_live(&self, set: &HostSet, ctx: &LbContext, stats: &ClusterStats) -> Option<Arc<Host>> {
        let Some(sel) = select_live(set, DEFAULT_PANIC_THRESHOLD_PERCENT) else {
            stats.upstream_cx_none_healthy.inc();
            return None;
        };
        if sel.panic {
            stats.lb_healthy_panic.inc();
        }
        let level = &set.priorities()[sel.level];
        let hosts: Vec<Arc<Host>> = level.hosts().iter().filter(|h| sel.panic || h.healthy()).cloned().collect();
        // Unweighted until the rebuild: the schedules belong to the precomputed lists.
        self.pick(Candidates { hosts: &hosts, list: None, equal_weights: level.equal_weights() }, ctx).cloned()
    }

    fn pick<'a>(&self, candidates: Candidates<'a>, ctx: &LbContext) -> Option<&'a Arc<Host>> {
        if candidates.hosts.is_empty() {
            return None;
        }
        match self {
            LoadBalancer::RoundRobin(rr) => rr.pick(candidates, ctx),
            LoadBalancer::LeastRequest(lr) => lr.pick(candidates, ctx),
            LoadBalancer::Random(r) => r.pick(candidates, ctx),
            LoadBalancer::RingHash(rh) => rh.pick(candidates, ctx),
            LoadBalancer::Maglev(m) => m.pick(candidates, ctx),
        }
    }
}

#[cfg(test)]
mod hash_tests;
#[cfg(test)]
mod tests;
