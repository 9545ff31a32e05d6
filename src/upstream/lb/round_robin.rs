//! Round robin: plain rotation when weights are equal, else the list's precomputed smooth
//! weighted schedule (nginx's algorithm; Envoy's EDF gives the same proportions). Positions
//! are kept per host list (as Envoy's index per host source) and per worker slot, so picks
//! never share a written cache line across workers; a list filtered on the spot uses the
//! balancer's own per-worker position. While hosts are in their slow-start window, picks
//! follow a per-worker EDF over `weight * slow start factor`, as Envoy's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::context::{Candidates, LbContext};
use super::edf::EdfSlots;
use super::slow_start::SlowStartConfig;
use crate::stats::{current_slot, MAX_WORKERS};
use crate::upstream::host::Host;

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicUsize);

/// Round-robin state of a cluster.
pub struct RoundRobin {
    slots: Box<[Slot]>,
    slow_start: Option<SlowStartConfig>,
    edf: EdfSlots,
}

impl RoundRobin {
    /// One position per stats slot (workers + main).
    pub fn new(slots: usize, slow_start: Option<SlowStartConfig>) -> Self {
        RoundRobin {
            slots: (0..slots.clamp(1, MAX_WORKERS + 1)).map(|_| Slot::default()).collect(),
            slow_start,
            edf: EdfSlots::new(slots),
        }
    }

    /// Next host of this worker's rotation.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, _ctx: &LbContext) -> Option<&'a Arc<Host>> {
        if let (Some(now), Some(ss), Some(list)) = (c.slow_start_now, &self.slow_start, c.list) {
            let ramp = ss.ramp(list.generation);
            let weight = |i: usize| f64::from(c.hosts[i].weight()) * ramp.factor(&c.hosts[i], now);
            return self.edf.pick(list, c.hosts.len(), &weight).and_then(|i| c.hosts.get(i));
        }
        let pos = match c.cursors {
            Some(cursors) => cursors.next(),
            None => self.slots[current_slot().min(self.slots.len() - 1)].0.fetch_add(1, Ordering::Relaxed),
        };
        if let (false, Some(s)) = (c.equal_weights, c.schedule) {
            return c.hosts.get(s[pos % s.len()] as usize);
        }
        Some(&c.hosts[pos % c.hosts.len()])
    }
}
