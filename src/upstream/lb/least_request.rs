//! Least request: power of `choice_count` choices (Envoy's default 2) among the candidates,
//! taking the one with the fewest active requests.
//!
//! Envoy uses this for equal weights; with unequal weights it switches to an EDF schedule
//! over `weight / (active + 1) ^ active_request_bias`. `Candidates::equal_weights` is where
//! that branch (and a bias field here) would go; until then weights are ignored, as before.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::context::{Candidates, LbContext};
use crate::upstream::host::Host;

/// Least-request state of a cluster.
#[derive(Debug, Clone)]
pub struct LeastRequest {
    /// Hosts sampled per pick (`least_request_lb_config.choice_count`, at least 2).
    choice_count: u32,
}

impl Default for LeastRequest {
    fn default() -> Self {
        LeastRequest { choice_count: 2 }
    }
}

impl LeastRequest {
    /// Sample `choice_count` hosts (with replacement, as Envoy) and keep the least loaded.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, _ctx: &LbContext) -> Option<&'a Arc<Host>> {
        let n = c.hosts.len();
        if n == 1 {
            return c.hosts.first();
        }
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
