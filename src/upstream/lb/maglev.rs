//! Maglev (Envoy's `MaglevLoadBalancer`): a lookup table of prime size where each host fills
//! slots along its own permutation (offset and skip from xxHash64 of its key with seeds 0 and
//! 1), taking turns in proportion to its weight. Built as Envoy's `MaglevTable` builds it
//! (hosts ordered by key, the same weighted turns), so a key picks the same host in Pinion and
//! in Envoy; a pick is one table read.

use std::sync::Arc;

use std::sync::OnceLock;

use pinion_xds::model::MaglevConfig;

use super::context::{Candidates, LbContext};
use super::hashing::{xxhash64, HashTable, NormalizedWeights, Tables};
use crate::stats::Store;
use crate::upstream::host::Host;
use crate::upstream::host_set::HostSet;

crate::stats_struct! {
    /// Envoy's `cluster.<name>.maglev_lb.*` gauges, from the last table built.
    pub struct MaglevStats {
        /// `maglev_lb.min_entries_per_host`.
        min_entries_per_host: Gauge = "maglev_lb.min_entries_per_host",
        /// `maglev_lb.max_entries_per_host`.
        max_entries_per_host: Gauge = "maglev_lb.max_entries_per_host",
    }
}

/// A built table: index into the host list per slot.
pub(super) struct MaglevTable {
    slots: Box<[u32]>,
    /// Fewest and most slots of one host.
    entries_per_host: (u64, u64),
}

/// One host while the table is filled (Envoy's `TableBuildEntry`).
struct BuildEntry {
    index: u32,
    offset: u64,
    skip: u64,
    weight: f64,
    target_weight: f64,
    next: u64,
    count: u64,
}

impl MaglevTable {
    /// Build the table of `hosts` (`None` when there are none).
    pub(super) fn build(cfg: &MaglevConfig, hosts: &[Arc<Host>]) -> Option<MaglevTable> {
        if hosts.is_empty() {
            return None;
        }
        let size = cfg.table_size;
        let w = NormalizedWeights::of(hosts);
        // Envoy fills in the order of the hosts' keys, so the table does not depend on the
        // order endpoints were listed in.
        let mut keyed: Vec<(String, u32, f64)> = hosts
            .iter()
            .zip(&w.weights)
            .enumerate()
            .map(|(i, (h, &weight))| (h.lb_hash_key(cfg.use_hostname_for_hashing), i as u32, weight))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut entries: Vec<BuildEntry> = keyed
            .into_iter()
            .map(|(key, index, weight)| BuildEntry {
                index,
                offset: xxhash64(key.as_bytes(), 0) % size,
                skip: xxhash64(key.as_bytes(), 1) % (size - 1) + 1,
                weight,
                target_weight: 0.0,
                next: 0,
                count: 0,
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut slots = vec![EMPTY; size as usize];
        let permutation = |e: &BuildEntry| (e.offset.wrapping_add(e.skip.wrapping_mul(e.next)) % size) as usize;
        let mut filled: u64 = 0;
        let mut iteration: u32 = 1;
        while filled < size {
            for e in entries.iter_mut() {
                if filled >= size {
                    break;
                }
                // A host of the largest weight takes a slot every turn, one of a third of it
                // every third turn, and so on.
                if f64::from(iteration) * e.weight < e.target_weight {
                    continue;
                }
                e.target_weight += w.max;
                let mut c = permutation(&*e);
                while slots[c] != EMPTY {
                    e.next += 1;
                    c = permutation(&*e);
                }
                slots[c] = e.index;
                e.next += 1;
                e.count += 1;
                filled += 1;
            }
            iteration = iteration.wrapping_add(1);
        }
        let entries_per_host = entries.iter().fold((size, 0), |(lo, hi), e| (lo.min(e.count), hi.max(e.count)));
        Some(MaglevTable { slots: slots.into_boxed_slice(), entries_per_host })
    }

    /// Slots held by each host index (for tests).
    #[cfg(test)]
    pub(super) fn counts(&self, hosts: usize) -> Vec<usize> {
        let mut counts = vec![0; hosts];
        for &s in self.slots.iter() {
            counts[s as usize] += 1;
        }
        counts
    }
}

impl HashTable for MaglevTable {
    /// `hash % size`; a retry's later attempts flip the hash with a value that has most bits
    /// set, as Envoy does, to land far away.
    fn pick(&self, mut hash: u64, attempt: u32) -> usize {
        if attempt > 0 {
            hash ^= u64::MAX.wrapping_sub(u64::from(attempt)).wrapping_add(1);
        }
        self.slots[(hash % self.slots.len() as u64) as usize] as usize
    }
}

/// Maglev state of a cluster: its settings and the tables of the current host set.
pub struct Maglev {
    config: MaglevConfig,
    tables: Tables<MaglevTable>,
    stats: OnceLock<MaglevStats>,
}

impl Maglev {
    /// A Maglev balancer with these settings.
    pub fn new(config: MaglevConfig) -> Self {
        Maglev { config, tables: Tables::new(), stats: OnceLock::new() }
    }

    /// Register the `maglev_lb.*` gauges of cluster `stat_name`.
    pub fn register_stats(&self, store: &Store, stat_name: &str) {
        let _ = self.stats.set(MaglevStats::new(store, "cluster", "envoy_cluster_name", stat_name));
    }

    /// Build the tables of a new host set.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        self.tables.rebuild(set, |hosts| MaglevTable::build(&self.config, hosts));
        let Some(stats) = self.stats.get() else { return };
        // As the gauges follow the first level's mode (no random draw here).
        let panic = set.load().panic.first().copied().unwrap_or(false);
        if let Some(t) = self.tables.last_used(panic) {
            stats.min_entries_per_host.set(t.entries_per_host.0 as i64);
            stats.max_entries_per_host.set(t.entries_per_host.1 as i64);
        }
    }

    /// The host for the request's hash.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, ctx: &LbContext) -> Option<&'a Arc<Host>> {
        self.tables.pick(c, ctx)
    }
}
