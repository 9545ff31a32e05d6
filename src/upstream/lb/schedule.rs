//! Precomputed weighted schedules and the per-worker positions that walk them (a leaf module).
//!
//! With static weights, Envoy's EDF scheduler repeats a fixed cycle in which every entry
//! appears in proportion to its weight. Such a cycle is precomputed once per host set (as a
//! smooth weighted round robin, nginx's algorithm, which spreads each entry evenly over the
//! cycle), so a pick is an index into it: no lock, no allocation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::stats::{current_slot, MAX_WORKERS};

/// Bound on a schedule's length; weights are scaled down proportionally beyond it.
const MAX_SCHEDULE: u64 = 4096;

/// Resolution of fractional weights (locality weights scaled by availability).
const FRACTION_STEPS: f64 = 10_000.0;

/// A smooth weighted schedule of indices into `weights`. `None` when all weights are equal
/// (plain rotation is the same and needs no memory) or there are none.
pub fn smooth_schedule(weights: &[u64]) -> Option<Arc<[u32]>> {
    let first = *weights.first()?;
    if weights.iter().all(|&w| w == first) {
        return None;
    }
    // Reduce by the common divisor first (exact), then scale down what is still too long.
    let gcd = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let total: u64 = weights.iter().map(|w| w / gcd).sum();
    let scale = gcd * total.div_ceil(MAX_SCHEDULE).max(1);
    // A positive weight keeps at least one slot; a zero weight never appears.
    let weights: Vec<i64> = weights.iter().map(|&w| if w == 0 { 0 } else { (w / scale).max(1) as i64 }).collect();
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = None::<usize>;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            current[i] += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let Some(best) = best else { break };
        current[best] -= sum;
        schedule.push(best as u32);
    }
    Some(schedule.into())
}

/// A schedule over fractional weights (zero or negative: never picked). `None` when no weight
/// is positive.
pub fn fractional_schedule(weights: &[f64]) -> Option<Arc<[u32]>> {
    let max = weights.iter().copied().fold(0.0, f64::max);
    if max <= 0.0 {
        return None;
    }
    let ints: Vec<u64> =
        weights.iter().map(|&w| if w > 0.0 { ((w / max * FRACTION_STEPS).round() as u64).max(1) } else { 0 }).collect();
    // Equal weights: a plain cycle over the entries.
    smooth_schedule(&ints).or_else(|| Some((0..weights.len() as u32).collect()))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct Cursor(AtomicUsize);

/// One position per worker slot, so workers never share a written cache line.
#[derive(Debug)]
pub struct Cursors(Box<[Cursor]>);

impl Cursors {
    /// Positions for `slots` worker slots (workers + main; a slot beyond shares the last),
    /// each starting at a random place (as Envoy seeds its round-robin indexes), so a list
    /// rebuilt often does not favour its first entries.
    pub fn new(slots: usize) -> Self {
        let start = || Cursor(AtomicUsize::new(rand::random::<u32>() as usize));
        Cursors((0..slots.clamp(1, MAX_WORKERS + 1)).map(|_| start()).collect())
    }

    /// Positions starting at 0 (deterministic tests).
    #[cfg(test)]
    pub fn from_zero(slots: usize) -> Self {
        Cursors((0..slots.clamp(1, MAX_WORKERS + 1)).map(|_| Cursor::default()).collect())
    }

    /// This worker's position, then advance it.
    #[inline]
    pub fn next(&self) -> usize {
        self.0[current_slot().min(self.0.len() - 1)].0.fetch_add(1, Ordering::Relaxed)
    }
}

/// A schedule walked with per-worker positions.
#[derive(Debug)]
pub struct Rotation {
    order: Arc<[u32]>,
    cursors: Cursors,
}

impl Rotation {
    /// Walk `order` (non-empty) with positions for `slots` worker slots.
    pub fn new(order: Arc<[u32]>, slots: usize) -> Self {
        Rotation { order, cursors: Cursors::new(slots) }
    }

    /// The next entry for this worker.
    #[inline]
    pub fn next(&self) -> u32 {
        self.order[self.cursors.next() % self.order.len()]
    }

    /// The schedule.
    pub fn order(&self) -> &[u32] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in s {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn schedules_follow_weights() {
        assert!(smooth_schedule(&[2, 2, 2]).is_none());
        assert!(smooth_schedule(&[]).is_none());
        let s = smooth_schedule(&[5, 1, 1]).unwrap();
        assert_eq!(&*s, &[0, 0, 1, 0, 2, 0, 0]);
        // Reduced by the common divisor; zero weights never appear.
        assert_eq!(counts(&smooth_schedule(&[30, 0, 10]).unwrap(), 3), [3, 0, 1]);
        // Scaled down past the bound, proportions kept.
        let s = smooth_schedule(&[100_000, 300_000]).unwrap();
        assert!(s.len() <= MAX_SCHEDULE as usize);
        let c = counts(&s, 2);
        assert_eq!(c[1], 3 * c[0]);
        // Fractions: 1.0 vs 0.7.
        let c = counts(&fractional_schedule(&[1.0, 0.7]).unwrap(), 2);
        assert_eq!(c[0] * 7, c[1] * 10);
        assert_eq!(&*fractional_schedule(&[0.5, 0.0, 0.5]).unwrap(), &[0, 2]);
        assert!(fractional_schedule(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn rotation_walks_the_schedule() {
        let r = Rotation { order: vec![0, 1, 0].into(), cursors: Cursors::from_zero(1) };
        let got: Vec<u32> = (0..6).map(|_| r.next()).collect();
        assert_eq!(got, [0, 1, 0, 0, 1, 0]);
        // A random start, then the same cycle.
        let r = Rotation::new(vec![0, 1, 1].into(), 2);
        let got: Vec<u32> = (0..300).map(|_| r.next()).collect();
        assert_eq!(got.iter().filter(|&&i| i == 0).count(), 100);
    }
}
