//! Load balancers (Envoy's `LoadBalancer`), one file per policy: round robin (smooth weighted
//! schedule), least request (power of two choices, EDF with unequal weights), random, and the
//! hash-based ring hash and Maglev (`hashing.rs` has what those two share). The
//! `LoadBalancer` enum dispatches with a match, so a pick is a direct call with no
//! allocation. Host selection (priority load, panic, degraded hosts, locality weights) comes
//! first and is shared by all policies (`priority.rs`, over what the host set precomputed:
//! `priority_load.rs`, `schedule.rs`); slow start is `slow_start.rs`.
//!
//! Picks read the host set's precomputed lists. Those are from when the set was built; a
//! host whose flags changed since (before the owner rebuilt the set) is caught by checking
//! the picked host, and the pick is redone from the hosts' live flags.

pub mod clock;
mod context;
mod edf;
mod hashing;
mod least_request;
mod maglev;
mod priority;
pub mod priority_load;
mod random;
mod ring_hash;
mod round_robin;
mod runtime_double;
pub mod schedule;
mod slow_start;

use std::sync::Arc;

use pinion_xds::model::{LbConfig, LbPolicy};

pub use clock::Clock;
pub use context::{Candidates, LbContext, ListId};
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use priority::{select, select_live, Selection};
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use runtime_double::RuntimeDouble;
pub use slow_start::{Ramp, SlowStartConfig};

use super::cluster_stats::ClusterStats;
use super::host::Host;
use super::host_set::HostSet;

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
    /// A balancer for `policy` with default settings; `slots` is the number of stats slots
    /// (workers + main), one round-robin position each.
    pub fn new(policy: LbPolicy, slots: usize) -> Self {
        LoadBalancer::with_config(policy, &LbConfig::default(), slots)
    }

    /// A balancer for `policy` with the cluster's LB settings.
    pub fn with_config(policy: LbPolicy, config: &LbConfig, slots: usize) -> Self {
        let slow_start = config.slow_start.as_ref().and_then(SlowStartConfig::new);
        match policy {
            LbPolicy::RoundRobin => LoadBalancer::RoundRobin(RoundRobin::new(slots, slow_start)),
            LbPolicy::LeastRequest => LoadBalancer::LeastRequest(LeastRequest::new(
                config.choice_count,
                RuntimeDouble::new(&config.active_request_bias_key, config.active_request_bias.unwrap_or(1.0)),
                slow_start,
                slots,
            )),
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

    /// Recompute per-set state (rings, Maglev tables) for a new host
    /// set. Call before the set is published, so picks from it find its state.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        match self {
            LoadBalancer::RingHash(rh) => rh.on_hosts_changed(set),
            LoadBalancer::Maglev(m) => m.on_hosts_changed(set),
            // Round robin and least request keep their per-list state in the set itself.
            LoadBalancer::RoundRobin(_) | LoadBalancer::LeastRequest(_) | LoadBalancer::Random(_) => {}
        }
    }

    /// The selection step: the hosts a pick for this request chooses among (priority by
    /// load, panic, healthy or degraded, locality). `None` when the set has no priority level.
    /// Counts `lb_healthy_panic` for a selection in panic.
    pub fn candidates<'a>(&self, set: &'a HostSet, stats: &ClusterStats) -> Option<(Candidates<'a>, bool)> {
        let sel = select(set)?;
        if sel.panic {
            stats.lb_healthy_panic.inc();
        }
        Some((Candidates::from_list(sel.list, set.generation(), slow_start_now(set)), sel.panic))
    }

    /// Pick a host for a request. `None` (and `upstream_cx_none_healthy`) when there is
    /// nothing to pick.
    pub fn choose(&self, set: &HostSet, ctx: &LbContext, stats: &ClusterStats) -> Option<Arc<Host>> {
        let Some((candidates, panic)) = self.candidates(set, stats) else {
            stats.upstream_cx_none_healthy.inc();
            return None;
        };
        if candidates.hosts.is_empty() {
            stats.upstream_cx_none_healthy.inc();
            return None;
        }
        match self.pick(candidates, ctx) {
            Some(h) if panic || h.healthy() => Some(h.clone()),
            _ => self.choose_live(set, ctx, stats),
        }
    }

    /// The slow path: select and pick from the hosts' current flags (some flag changed after
    /// the set was built). Allocates; only taken until the set is rebuilt.
    fn choose_live(&self, set: &HostSet, ctx: &LbContext, stats: &ClusterStats) -> Option<Arc<Host>> {
        let Some((hosts, panic)) = select_live(set) else {
            stats.upstream_cx_none_healthy.inc();
            return None;
        };
        if panic {
            stats.lb_healthy_panic.inc();
        }
        let first = hosts[0].weight();
        let equal_weights = hosts.iter().all(|h| h.weight() == first);
        // No per-list state on this path: the schedules belong to the precomputed lists.
        let c = Candidates {
            hosts: &hosts,
            schedule: None,
            cursors: None,
            list: None,
            equal_weights,
            slow_start_now: None,
        };
        self.pick(c, ctx).cloned()
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

/// Now on the set's clock if some host of the set is in its slow-start window.
#[inline]
fn slow_start_now(set: &HostSet) -> Option<u64> {
    let until = set.slow_start_until();
    if until == 0 {
        return None;
    }
    let now = set.settings().clock.now_ms();
    (now < until).then_some(now)
}

#[cfg(test)]
mod hash_tests;
#[cfg(test)]
mod tests;
