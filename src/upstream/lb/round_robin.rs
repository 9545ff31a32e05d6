//! Round robin: plain rotation when weights are equal, else a smooth weighted schedule (nginx's
//! algorithm) per priority level. The position is kept per worker slot, so picks never share
//! a written cache line across workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::context::{Candidates, LbContext};
use crate::stats::{current_slot, MAX_WORKERS};
use crate::upstream::host::{Host, HostSet};

/// Bound on a schedule's length; weights are scaled down proportionally beyond it.
const MAX_SCHEDULE: u64 = 4096;

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicUsize);

/// Schedules (indices into the level's host list) of one priority level.
#[derive(Default)]
struct LevelSchedules {
    /// Over the healthy list; `None` when its weights are equal.
    healthy: Option<Arc<[u32]>>,
    /// Over all hosts (panic mode); shares `healthy`'s when every host is healthy.
    all: Option<Arc<[u32]>>,
}

/// The schedules of one host set.
#[derive(Default)]
struct Schedules {
    /// `HostSet::generation` they were computed for.
    generation: u64,
    per_priority: Vec<LevelSchedules>,
}

/// Round-robin state of a cluster.
pub struct RoundRobin {
    slots: Box<[Slot]>,
    schedules: ArcSwap<Schedules>,
}

impl RoundRobin {
    /// One position per stats slot (workers + main).
    pub fn new(slots: usize) -> Self {
        RoundRobin {
            slots: (0..slots.clamp(1, MAX_WORKERS + 1)).map(|_| Slot::default()).collect(),
            schedules: ArcSwap::from_pointee(Schedules::default()),
        }
    }

    /// Compute the weighted schedules of a new host set.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        let per_priority = set
            .priorities()
            .iter()
            .map(|p| {
                if p.equal_weights() {
                    return LevelSchedules::default();
                }
                let healthy = weighted_schedule(p.healthy());
                let all =
                    if p.healthy().len() == p.hosts().len() { healthy.clone() } else { weighted_schedule(p.hosts()) };
                LevelSchedules { healthy, all }
            })
            .collect();
        self.schedules.store(Arc::new(Schedules { generation: set.generation(), per_priority }));
    }

    /// Next host of this worker's rotation.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, _ctx: &LbContext) -> Option<&'a Arc<Host>> {
        let slot = &self.slots[current_slot().min(self.slots.len() - 1)].0;
        let pos = slot.fetch_add(1, Ordering::Relaxed);
        if let (false, Some(id)) = (c.equal_weights, c.list) {
            let schedules = self.schedules.load();
            // A set whose schedules are not in yet (or a stale pair during a swap) rotates
            // unweighted for that pick rather than mixing up two sets' indices.
            if schedules.generation == id.generation {
                let level = schedules.per_priority.get(id.level);
                let schedule = level.and_then(|l| if id.panic { l.all.as_ref() } else { l.healthy.as_ref() });
                if let Some(s) = schedule {
                    return c.hosts.get(s[pos % s.len()] as usize);
                }
            }
        }
        Some(&c.hosts[pos % c.hosts.len()])
    }
}

/// Smooth weighted round robin (nginx's algorithm) expanded into a schedule of host indices.
/// `None` when all weights are equal (plain rotation is the same and needs no memory).
fn weighted_schedule(hosts: &[Arc<Host>]) -> Option<Arc<[u32]>> {
    let weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight())).collect();
    let first = *weights.first()?;
    if weights.iter().all(|&w| w == first) {
        return None;
    }
    let total: u64 = weights.iter().sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| (w / scale).max(1) as i64).collect();
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut schedule = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = 0;
        for i in 0..hosts.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= sum;
        schedule.push(best as u32);
    }
    Some(schedule.into())
}
