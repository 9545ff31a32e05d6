//! Ring hash (Envoy's `RingHashLoadBalancer`, ketama style): each host gets replicas on a
//! ring of 64-bit hashes in proportion to its weight; a request goes to the first replica at
//! or after its hash, wrapping around. Built exactly as Envoy builds it (xxHash64 of
//! `<host key>_<i>`, the same replica counts from the same floating-point arithmetic, the same
//! binary search), so a key picks the same host in Pinion and in Envoy.

use std::fmt::Write;
use std::sync::Arc;

use std::sync::OnceLock;

use pinion_xds::model::RingHashConfig;

use super::context::{Candidates, LbContext};
use super::hashing::{xxhash64, HashTable, NormalizedWeights, Tables};
use crate::stats::Store;
use crate::upstream::host::Host;
use crate::upstream::host_set::HostSet;

crate::stats_struct! {
    /// Envoy's `cluster.<name>.ring_hash_lb.*` gauges, from the last ring built.
    pub struct RingHashStats {
        /// `ring_hash_lb.size`.
        size: Gauge = "ring_hash_lb.size",
        /// `ring_hash_lb.min_hashes_per_host`.
        min_hashes_per_host: Gauge = "ring_hash_lb.min_hashes_per_host",
        /// `ring_hash_lb.max_hashes_per_host`.
        max_hashes_per_host: Gauge = "ring_hash_lb.max_hashes_per_host",
    }
}

/// A built ring: (hash, index into the host list), sorted by hash.
pub(super) struct Ring {
    entries: Box<[(u64, u32)]>,
    /// Envoy's `ring_hash_lb.size`: the scaled ring size it reserves (`ceil(scale)`).
    size: u64,
    /// Fewest and most replicas of one host.
    hashes_per_host: (u64, u64),
}

impl Ring {
    /// Build the ring of `hosts` (`None` when there are none).
    pub(super) fn build(cfg: &RingHashConfig, hosts: &[Arc<Host>]) -> Option<Ring> {
        if hosts.is_empty() {
            return None;
        }
        let w = NormalizedWeights::of(hosts);
        // Envoy: scale so the lightest host gets a whole number of replicas, capped by the
        // maximum ring size; heavier hosts may get fractional targets, settled by the running
        // sums below.
        let scale = ((w.min * cfg.minimum_ring_size as f64).ceil() / w.min).min(cfg.maximum_ring_size as f64);
        let size = scale.ceil() as u64;
        let mut entries = Vec::with_capacity(size as usize);
        let mut hashes_per_host = (size, 0u64);
        let mut key = String::new();
        let (mut current, mut target) = (0.0f64, 0.0f64);
        for (index, (host, weight)) in hosts.iter().zip(&w.weights).enumerate() {
            key.clear();
            key.push_str(&host.lb_hash_key(cfg.use_hostname_for_hashing));
            key.push('_');
            let prefix = key.len();
            target += scale * weight;
            let mut i: u64 = 0;
            while current < target {
                key.truncate(prefix);
                let _ = write!(key, "{i}");
                entries.push((xxhash64(key.as_bytes(), 0), index as u32));
                i += 1;
                current += 1.0;
            }
            hashes_per_host = (hashes_per_host.0.min(i), hashes_per_host.1.max(i));
        }
        // Envoy's sort is not stable; equal 64-bit hashes of different keys are not expected.
        entries.sort_by_key(|e| e.0);
        Some(Ring { entries: entries.into_boxed_slice(), size, hashes_per_host })
    }

    /// Number of replicas on the ring.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl HashTable for Ring {
    /// Envoy's port of ketama's `ketama_get_server`, quirks included (signed bounds, `high =
    /// mid - 1`), then `attempt` steps along the ring.
    fn pick(&self, hash: u64, attempt: u32) -> usize {
        let ring = &self.entries;
        let len = ring.len() as i64;
        let (mut low, mut high): (i64, i64) = (0, len);
        let mut mid;
        loop {
            mid = (low + high) / 2;
            if mid == len {
                mid = 0;
                break;
            }
            let midval = ring[mid as usize].0;
            let midval1 = if mid == 0 { 0 } else { ring[mid as usize - 1].0 };
            if hash <= midval && hash > midval1 {
                break;
            }
            if midval < hash {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                mid = 0;
                break;
            }
        }
        let mut at = mid as usize;
        if attempt > 0 {
            at = (at + attempt as usize) % ring.len();
        }
        ring[at].1 as usize
    }
}

/// Ring-hash state of a cluster: its settings and the rings of the current host set.
pub struct RingHash {
    config: RingHashConfig,
    rings: Tables<Ring>,
    stats: OnceLock<RingHashStats>,
}

impl RingHash {
    /// A ring-hash balancer with these settings.
    pub fn new(config: RingHashConfig) -> Self {
        RingHash { config, rings: Tables::new(), stats: OnceLock::new() }
    }

    /// Register the `ring_hash_lb.*` gauges of cluster `stat_name`.
    pub fn register_stats(&self, store: &Store, stat_name: &str) {
        let _ = self.stats.set(RingHashStats::new(store, "cluster", "envoy_cluster_name", stat_name));
    }

    /// Build the rings of a new host set.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        self.rings.rebuild(set, |hosts| Ring::build(&self.config, hosts));
        let Some(stats) = self.stats.get() else { return };
        // As the gauges follow the first level's mode (no random draw here).
        let panic = set.load().panic.first().copied().unwrap_or(false);
        if let Some(ring) = self.rings.last_used(panic) {
            stats.size.set(ring.size as i64);
            stats.min_hashes_per_host.set(ring.hashes_per_host.0 as i64);
            stats.max_hashes_per_host.set(ring.hashes_per_host.1 as i64);
        }
    }

    /// The host for the request's hash.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, ctx: &LbContext) -> Option<&'a Arc<Host>> {
        self.rings.pick(c, ctx)
    }
}
