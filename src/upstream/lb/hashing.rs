//! What ring hash and Maglev share (Envoy's `ThreadAwareLoadBalancerBase`): host weights
//! normalized as Envoy normalizes them, and one lookup table per precomputed host list of a
//! host set (every list a selection can return: per priority level the healthy, degraded
//! and all-hosts lists, and the localities' lists),
//! built when the set changes and swapped whole, so a pick only reads.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::context::{Candidates, LbContext};
use crate::upstream::host::Host;
use crate::upstream::host_set::{HostList, HostSet};

/// Envoy's `HashUtil::xxHash64` (seed 0 unless given).
#[inline]
pub(super) fn xxhash64(bytes: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, seed)
}

/// A lookup table over one host list: maps a request hash to an index into that list.
pub(super) trait HashTable: Send + Sync {
    /// The index of the host for `hash` at host-selection `attempt` (always in range).
    fn pick(&self, hash: u64, attempt: u32) -> usize;
}

/// Weights normalized to sum to 1, in host order, with their extremes (Envoy's
/// `normalizeHostWeights` without locality weights: `weight / sum`, the minimum starting at
/// 1.0 and the maximum at 0.0, computed in the same floating-point order so tables match).
pub(super) struct NormalizedWeights {
    /// One per host, in host order.
    pub(super) weights: Vec<f64>,
    /// Smallest weight.
    pub(super) min: f64,
    /// Largest weight.
    pub(super) max: f64,
}

impl NormalizedWeights {
    /// Normalize the weights of `hosts`.
    pub(super) fn of(hosts: &[Arc<Host>]) -> Self {
        let sum: u64 = hosts.iter().map(|h| u64::from(h.weight())).sum();
        let (mut min, mut max) = (1.0f64, 0.0f64);
        let weights = hosts
            .iter()
            .map(|h| {
                // Envoy's `weight * 1.0 / sum`: the factor 1.0 changes no bit.
                let w = f64::from(h.weight()) / sum as f64;
                min = min.min(w);
                max = max.max(w);
                w
            })
            .collect();
        NormalizedWeights { weights, min, max }
    }
}

/// The tables of one host set, by host-list id (`HostList::id`).
struct SetTables<T> {
    /// `HostSet::generation` they were built for.
    generation: u64,
    /// Indexed by list id; `None` for an empty list or one no table was built for.
    by_list: Vec<Option<Arc<T>>>,
    /// Per priority level: the ids of its healthy list and of its all-hosts list.
    levels: Vec<(u32, u32)>,
}

/// Per-host-set tables of a hash-based policy, swapped whole when the set changes.
pub(super) struct Tables<T> {
    current: ArcSwap<SetTables<T>>,
}

impl<T: HashTable> Tables<T> {
    /// No tables yet (picks fall back to a modulo until the first set is in).
    pub(super) fn new() -> Self {
        Tables { current: ArcSwap::from_pointee(SetTables { generation: 0, by_list: Vec::new(), levels: Vec::new() }) }
    }

    /// Build the tables of a new host set with `build` (`None` for an empty list): one per
    /// list a selection can return (each level's healthy, degraded and all-hosts lists, and
    /// its localities' lists). Runs where the set is built (the control thread), never on a
    /// pick.
    pub(super) fn rebuild(&self, set: &HostSet, build: impl Fn(&[Arc<Host>]) -> Option<T>) {
        let mut by_list: Vec<Option<Arc<T>>> = Vec::new();
        let mut put = |list: &HostList, table: Option<Arc<T>>| {
            let id = list.id() as usize;
            if by_list.len() <= id {
                by_list.resize_with(id + 1, || None);
            }
            by_list[id] = table;
        };
        let mut levels = Vec::with_capacity(set.priorities().len());
        for p in set.priorities() {
            let healthy = build(p.healthy()).map(Arc::new);
            // Every host healthy: the panic-mode table is the same table.
            let all =
                if p.healthy().len() == p.hosts().len() { healthy.clone() } else { build(p.hosts()).map(Arc::new) };
            put(p.healthy_list(), healthy);
            put(p.all_list(), all);
            put(p.degraded_list(), build(p.degraded()).map(Arc::new));
            for l in p.localities() {
                put(l.healthy_list(), build(l.healthy_list().hosts()).map(Arc::new));
                put(l.degraded_list(), build(l.degraded_list().hosts()).map(Arc::new));
            }
            levels.push((p.healthy_list().id(), p.all_list().id()));
        }
        self.current.store(Arc::new(SetTables { generation: set.generation(), by_list, levels }));
    }

    /// The table the last priority level with hosts balances over (its healthy list, or all
    /// hosts in panic mode): the one whose numbers Envoy's `*_lb.*` gauges show, as Envoy
    /// sets them per level in order.
    pub(super) fn last_used(&self, panic: bool) -> Option<Arc<T>> {
        let tables = self.current.load();
        tables.levels.iter().rev().find_map(|&(healthy, all)| {
            let id = if panic { all } else { healthy };
            tables.by_list.get(id as usize).cloned().flatten()
        })
    }

    /// The candidate for the request's hash (a random one without a hash, as Envoy).
    /// Without a table for the list (a list filtered on the spot, or a set swapped in between),
    /// the hash picks by modulo: still sticky per key, until the next set.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, ctx: &LbContext) -> Option<&'a Arc<Host>> {
        let hash = ctx.hash.unwrap_or_else(rand::random);
        if let Some(id) = c.list {
            let tables = self.current.load();
            if tables.generation == id.generation {
                if let Some(Some(t)) = tables.by_list.get(id.id as usize) {
                    return c.hosts.get(t.pick(hash, ctx.attempt));
                }
            }
        }
        let n = c.hosts.len() as u64;
        c.hosts.get((hash.wrapping_add(u64::from(ctx.attempt)) % n.max(1)) as usize)
    }
}
