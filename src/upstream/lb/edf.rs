//! Envoy's EDF scheduler (`edf_scheduler.h`) for weights that change between picks (least
//! request with unequal weights, slow start): each entry's next deadline is `now + 1/weight`,
//! computed when it is (re)added, and a pick takes the earliest deadline and re-adds that
//! entry with its current weight.
//!
//! Schedulers are per worker slot and per host list, as each Envoy worker has its own load
//! balancer: a slot's lock is only ever taken by its own worker, so it is never contended.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use super::context::ListId;
use crate::stats::{current_slot, MAX_WORKERS};

/// Weights are clamped to this so a deadline is always finite.
const MIN_WEIGHT: f64 = 1e-9;

#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline: f64,
    /// Insertion order: ties go to the earlier entry, as in Envoy.
    order: u64,
    index: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    // Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.deadline.total_cmp(&self.deadline).then(other.order.cmp(&self.order))
    }
}

/// An EDF scheduler over the indices `0..n` of a host list.
#[derive(Debug, Default)]
pub(super) struct Edf {
    heap: BinaryHeap<Entry>,
    now: f64,
    order: u64,
}

impl Edf {
    /// All of `0..n` with their current weights, then a random number of picks so workers
    /// do not all start on the same host (Envoy's `createWithPicks`).
    pub(super) fn new(n: usize, weight: &dyn Fn(usize) -> f64) -> Self {
        let mut edf = Edf { heap: BinaryHeap::with_capacity(n), now: 0.0, order: 0 };
        for i in 0..n {
            edf.add(i as u32, weight(i));
        }
        if n > 1 {
            for _ in 0..rand::random_range(0..n) {
                edf.pick_and_add(weight);
            }
        }
        edf
    }

    fn add(&mut self, index: u32, weight: f64) {
        let weight = if weight.is_finite() { weight.max(MIN_WEIGHT) } else { MIN_WEIGHT };
        self.heap.push(Entry { deadline: self.now + 1.0 / weight, order: self.order, index });
        self.order += 1;
    }

    /// The entry with the earliest deadline, re-added with its weight now.
    pub(super) fn pick_and_add(&mut self, weight: &dyn Fn(usize) -> f64) -> Option<usize> {
        let e = self.heap.pop()?;
        self.now = e.deadline;
        self.add(e.index, weight(e.index as usize));
        Some(e.index as usize)
    }
}

/// The schedulers of one worker slot: those of the current host set's lists.
#[derive(Debug, Default)]
struct SlotSchedulers {
    generation: u64,
    lists: Vec<(u32, Edf)>,
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct Slot(Mutex<SlotSchedulers>);

/// Per-worker EDF schedulers of a cluster's load balancer.
#[derive(Debug)]
pub(super) struct EdfSlots {
    slots: Box<[Slot]>,
}

impl EdfSlots {
    /// One set of schedulers per stats slot (workers + main).
    pub(super) fn new(slots: usize) -> Self {
        EdfSlots { slots: (0..slots.clamp(1, MAX_WORKERS + 1)).map(|_| Slot::default()).collect() }
    }

    /// Pick an index of list `list` (of `n` entries) with this worker's scheduler, building it
    /// on first use for the list; a new host set starts the worker's schedulers afresh.
    pub(super) fn pick(&self, list: ListId, n: usize, weight: &dyn Fn(usize) -> f64) -> Option<usize> {
        let slot = &self.slots[current_slot().min(self.slots.len() - 1)];
        let mut s = slot.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation != list.generation {
            s.generation = list.generation;
            s.lists.clear();
        }
        let pos = match s.lists.iter().position(|(id, _)| *id == list.id) {
            Some(p) => p,
            None => {
                s.lists.push((list.id, Edf::new(n, weight)));
                s.lists.len() - 1
            }
        };
        s.lists[pos].1.pick_and_add(weight).filter(|&i| i < n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_weights_are_followed_exactly_over_a_cycle() {
        let w = [1.0, 2.0, 5.0];
        let mut edf = Edf::new(3, &|i| w[i]);
        let mut c = [0; 3];
        for _ in 0..800 {
            c[edf.pick_and_add(&|i| w[i]).unwrap()] += 1;
        }
        for (i, &n) in c.iter().enumerate() {
            let want = 100.0 * w[i];
            assert!((n as f64 - want).abs() <= 2.0, "{c:?}");
        }
    }

    #[test]
    fn slots_keep_a_scheduler_per_list_and_reset_on_a_new_set() {
        let slots = EdfSlots::new(2);
        let a = ListId { generation: 1, id: 0 };
        let b = ListId { generation: 1, id: 1 };
        let w = |_: usize| 1.0;
        // Two entries of equal weight alternate, whatever the random start.
        let p: Vec<usize> = (0..4).map(|_| slots.pick(a, 2, &w).unwrap()).collect();
        assert_ne!(p[0], p[1]);
        assert_eq!(p[0], p[2]);
        assert_eq!(slots.pick(b, 1, &w), Some(0));
        // A new generation: the old lists are dropped.
        assert_eq!(slots.pick(ListId { generation: 2, id: 0 }, 1, &w), Some(0));
        assert_eq!(slots.slots[0].0.lock().unwrap().lists.len(), 1);
    }
}
