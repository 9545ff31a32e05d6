//! Least request, as Envoy's: with equal weights, power of `choice_count` choices (default 2)
//! among the candidates, taking the one with the fewest active requests; with unequal
//! weights (or hosts in slow start), a per-worker EDF schedule over
//! `weight / (active + 1) ^ active_request_bias` (times the slow-start factor), each host's
//! weight recomputed when it is re-added after a pick.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::context::{Candidates, LbContext};
use super::edf::EdfSlots;
use super::runtime_double::RuntimeDouble;
use super::slow_start::{Ramp, SlowStartConfig};
use crate::upstream::host::Host;

/// Least-request state of a cluster.
pub struct LeastRequest {
    /// Hosts sampled per pick (`least_request_lb_config.choice_count`, at least 2).
    choice_count: u32,
    /// `active_request_bias` (default 1.0; its runtime key read once per host set).
    bias: RuntimeDouble,
    slow_start: Option<SlowStartConfig>,
    edf: EdfSlots,
}

impl LeastRequest {
    /// A least-request balancer; `slots` as for round robin.
    pub fn new(choice_count: u32, bias: RuntimeDouble, slow_start: Option<SlowStartConfig>, slots: usize) -> Self {
        LeastRequest { choice_count: choice_count.max(2), bias, slow_start, edf: EdfSlots::new(slots) }
    }

    /// Envoy's `LeastRequestLoadBalancer::hostWeight`, with the bias and slow-start ramp in
    /// force for the pick's host set.
    fn weight(h: &Host, bias: f64, slow_start: Option<(Ramp, u64)>) -> f64 {
        let base = f64::from(h.weight());
        let active = h.stats.rq_active.load(Ordering::Relaxed).max(0) as f64 + 1.0;
        let w = if bias == 1.0 {
            base / active
        } else if bias == 0.0 {
            base
        } else {
            base / active.powf(bias)
        };
        match slow_start {
            Some((ramp, now)) => w * ramp.factor(h, now),
            None => w,
        }
    }

    /// Pick a host: EDF when weights differ or slow start is on, else `choice_count` choices.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, _ctx: &LbContext) -> Option<&'a Arc<Host>> {
        let n = c.hosts.len();
        if n == 1 {
            return c.hosts.first();
        }
        let slow_start = c.slow_start_now.filter(|_| self.slow_start.is_some());
        if let (true, Some(list)) = (!c.equal_weights || slow_start.is_some(), c.list) {
            let b = self.bias.get(list.generation);
            // Envoy logs and uses 1.0 for a negative or NaN bias.
            let bias = if b >= 0.0 { b } else { 1.0 };
            let ramp = match (slow_start, &self.slow_start) {
                (Some(now), Some(ss)) => Some((ss.ramp(list.generation), now)),
                _ => None,
            };
            let weight = |i: usize| Self::weight(&c.hosts[i], bias, ramp);
            return self.edf.pick(list, n, &weight).and_then(|i| c.hosts.get(i));
        }
        // Sample with replacement, as Envoy: with two hosts the busier one still wins 1/4.
        let load = |h: &Host| h.stats.rq_active.load(Ordering::Relaxed);
        let mut best = &c.hosts[rand::random_range(0..n)];
        for _ in 1..self.choice_count {
            let other = &c.hosts[rand::random_range(0..n)];
            if load(other) < load(best) {
                best = other;
            }
        }
        Some(best)
    }
}
