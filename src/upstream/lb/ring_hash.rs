//! Ring hash (Envoy's `RingHashLoadBalancer`, ketama style): each host gets replicas on a
//! ring of 64-bit hashes in proportion to its weight; a request goes to the first replica at
//! or after its hash, wrapping around. Built exactly as Envoy builds it (xxHash64 of
//! `<host key>_<i>`, the same replica counts from the same floating-point arithmetic, the same
//! binary search), so a key picks the same host in Pinion and in Envoy.

use std::fmt::Write;
use std::sync::Arc;

use pinion_xds::model::RingHashConfig;

use super::context::{Candidates, LbContext};
use super::hashing::{xxhash64, HashTable, NormalizedWeights, Tables};
use crate::upstream::host::{Host, HostSet};

/// A built ring: (hash, index into the host list), sorted by hash.
pub(super) struct Ring {
    entries: Box<[(u64, u32)]>,
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
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
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
        }
        // Envoy's sort is not stable; equal 64-bit hashes of different keys are not expected.
        entries.sort_by_key(|e| e.0);
        Some(Ring { entries: entries.into_boxed_slice() })
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
}

impl RingHash {
    /// A ring-hash balancer with these settings.
    pub fn new(config: RingHashConfig) -> Self {
        RingHash { config, rings: Tables::new() }
    }

    /// Build the rings of a new host set.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        self.rings.rebuild(set, |hosts| Ring::build(&self.config, hosts));
    }

    /// The host for the request's hash.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, ctx: &LbContext) -> Option<&'a Arc<Host>> {
        self.rings.pick(c, ctx)
    }
}
