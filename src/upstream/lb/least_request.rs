//! Least request, as Envoy's: with equal weights, power of `choice_count` choices (default 2)
//! among the candidates, taking the one with the fewest active requests; with unequal
//! weights (or hosts in slow start), a per-worker EDF schedule over
//! `weight / (active + 1) ^ active_request_bias` (times the slow-start factor), each host's
//! weight recomputed when it is re-added after a pick.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::context::{Candidates, LbContext};
use super::edf::EdfSlots;
use super::slow_start::SlowStartConfig;
use crate::upstream::host::Host;

/// Least-request state of a cluster.
pub struct LeastRequest {
    /// Hosts sampled per pick (`least_request_lb_config.choice_count`, at least 2).
    choice_count: u32,
    /// `active_request_bias` (default 1.0).
    bias: f64,
    slow_start: Option<SlowStartConfig>,
    edf: EdfSlots,
}

impl Default for LeastRequest {
    fn default() -> Self {
        LeastRequest::new(2, 1.0, None, 1)
    }
}

impl LeastRequest {
    /// A least-request balancer; `slots` as for round robin.
    pub fn new(choice_count: u32, bias: f64, slow_start: Option<SlowStartConfig>, slots: usize) -> Self {
        // Envoy logs and uses 1.0 for a negative or NaN bias.
        let bias = if bias >= 0.0 { bias } else { 1.0 };
        LeastRequest { choice_count: choice_count.max(2), bias, slow_start, edf: EdfSlots::new(slots) }
    }

    /// Envoy's `LeastRequestLoadBalancer::hostWeight`.
    fn weight(&self, h: &Host, slow_start_now: Option<u64>) -> f64 {
        let base = f64::from(h.weight());
        let active = h.stats.rq_active.load(Ordering::Relaxed).max(0) as f64 + 1.0;
        let w = if self.bias == 1.0 {
            base / active
        } else if self.bias == 0.0 {
            base
        } else {
            base / active.powf(self.bias)
        };
        match (slow_start_now, &self.slow_start) {
            (Some(now), Some(ss)) => w * ss.factor(h, now),
            _ => w,
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
            let weight = |i: usize| self.weight(&c.hosts[i], slow_start);
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
