//! Load balancers: round robin (weighted by schedule), least request (power of two choices)
//! and random. Round-robin position is kept per worker slot, so picks never share a written
//! cache line across workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pinion_xds::model::LbPolicy;

use super::cluster::ClusterStats;
use super::host::{Host, HostSet};
use crate::stats::{current_slot, MAX_WORKERS};

/// Envoy's default healthy panic threshold: below 50% healthy hosts, balance over all hosts.
const PANIC_THRESHOLD_PERCENT: usize = 50;

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicUsize);

/// Per-priority smooth weighted round-robin schedules (host indices), rebuilt when hosts change.
#[derive(Default)]
struct Schedules {
    per_priority: Vec<Option<Vec<u32>>>,
}

/// A cluster's load balancer.
pub struct LoadBalancer {
    policy: LbPolicy,
    rr: Box<[Slot]>,
    schedules: ArcSwap<Schedules>,
}

impl LoadBalancer {
    /// A balancer for `policy` with a round-robin slot per stats slot (workers + main).
    pub fn new(policy: LbPolicy, slots: usize) -> Self {
        LoadBalancer {
            policy,
            rr: (0..slots.clamp(1, MAX_WORKERS + 1)).map(|_| Slot::default()).collect(),
            schedules: ArcSwap::from_pointee(Schedules::default()),
        }
    }

    /// Recompute weight schedules for a new host set.
    pub fn on_hosts_changed(&self, set: &HostSet) {
        let per_priority = set.priorities.iter().map(|hosts| weighted_schedule(hosts)).collect();
        self.schedules.store(Arc::new(Schedules { per_priority }));
    }

    /// Pick a host: the highest priority with healthy hosts; panic mode (all hosts of
    /// priority 0) when fewer than 50% are healthy everywhere.
    pub fn choose(&self, set: &HostSet, stats: &ClusterStats) -> Option<Arc<Host>> {
        let total = set.len();
        if total == 0 {
            stats.upstream_cx_none_healthy.inc();
            return None;
        }
        let healthy_total = set.all().filter(|h| h.healthy()).count();
        let panic = healthy_total * 100 < total * PANIC_THRESHOLD_PERCENT;
        let level = if panic {
            stats.lb_healthy_panic.inc();
            set.priorities.iter().position(|p| !p.is_empty())?
        } else {
            set.priorities.iter().position(|p| p.iter().any(|h| h.healthy()))?
        };
        let hosts = &set.priorities[level];
        let usable = |h: &Arc<Host>| panic || h.healthy();
        match self.policy {
            LbPolicy::RoundRobin => {
                let schedules = self.schedules.load();
                let slot = &self.rr[current_slot().min(self.rr.len() - 1)].0;
                match schedules.per_priority.get(level).and_then(|s| s.as_ref()) {
                    Some(schedule) if !schedule.is_empty() => {
                        for _ in 0..schedule.len() {
                            let i = slot.fetch_add(1, Ordering::Relaxed) % schedule.len();
                            let h = hosts.get(schedule[i] as usize)?;
                            if usable(h) {
                                return Some(h.clone());
                            }
                        }
                        None
                    }
                    _ => {
                        let start = slot.fetch_add(1, Ordering::Relaxed);
                        let h = &hosts[start % hosts.len()];
                        if set.all_routable && usable(h) {
                            return Some(h.clone());
                        }
                        // Some hosts are out: rotate over the usable ones only, so the
                        // remaining hosts share the load evenly (Envoy's healthy host list).
                        let k = hosts.iter().filter(|h| usable(h)).count();
                        if k == 0 {
                            return None;
                        }
                        hosts.iter().filter(|h| usable(h)).nth(start % k).cloned()
                    }
                }
            }
            LbPolicy::Random => {
                let candidates: Vec<&Arc<Host>> = hosts.iter().filter(|h| usable(h)).collect();
                if candidates.is_empty() {
                    return None;
                }
                Some(candidates[rand::random_range(0..candidates.len())].clone())
            }
            LbPolicy::LeastRequest => {
                let candidates: Vec<&Arc<Host>> = hosts.iter().filter(|h| usable(h)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0].clone()),
                    n => {
                        let a = candidates[rand::random_range(0..n)];
                        let b = candidates[rand::random_range(0..n)];
                        let load = |h: &Host| h.stats.rq_active.load(Ordering::Relaxed);
                        Some(if load(b) < load(a) { b.clone() } else { a.clone() })
                    }
                }
            }
        }
    }
}

/// Smooth weighted round robin (nginx's algorithm) expanded into a schedule of host indices.
/// `None` when all weights are equal (plain rotation is the same and needs no memory).
fn weighted_schedule(hosts: &[Arc<Host>]) -> Option<Vec<u32>> {
    let first = hosts.first()?.weight;
    if hosts.iter().all(|h| h.weight == first) {
        return None;
    }
    let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    // Bound the schedule's size; scale weights down proportionally if needed.
    const MAX_SCHEDULE: u64 = 4096;
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = hosts.iter().map(|h| (u64::from(h.weight) / scale).max(1) as i64).collect();
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
    Some(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use pinion_xds::model::HealthStatus;

    fn host(port: u16, weight: u32, health: HealthStatus) -> Arc<Host> {
        Arc::new(Host::new(([127, 0, 0, 1], port).into(), String::new(), weight, None, 0, health))
    }

    fn picks(lb: &LoadBalancer, set: &HostSet, n: usize) -> Vec<u16> {
        let stats = ClusterStats::new(&Store::new(1), "c");
        (0..n).map(|_| lb.choose(set, &stats).unwrap().address.port()).collect()
    }

    #[test]
    fn round_robin_rotates_and_skips_unhealthy() {
        let set = HostSet::new(vec![vec![
            host(1, 1, HealthStatus::Healthy),
            host(2, 1, HealthStatus::Unhealthy),
            host(3, 1, HealthStatus::Healthy),
        ]]);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, 2);
        lb.on_hosts_changed(&set);
        let p = picks(&lb, &set, 6);
        assert!(!p.contains(&2));
        assert_eq!(p.iter().filter(|&&x| x == 1).count(), 3);
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let set = HostSet::new(vec![vec![host(1, 3, HealthStatus::Healthy), host(2, 1, HealthStatus::Healthy)]]);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, 2);
        lb.on_hosts_changed(&set);
        let p = picks(&lb, &set, 400);
        assert_eq!(p.iter().filter(|&&x| x == 1).count(), 300);
    }

    #[test]
    fn panic_mode_uses_all_hosts_and_priorities_fall_over() {
        let set = HostSet::new(vec![vec![host(1, 1, HealthStatus::Unhealthy)]]);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, 2);
        lb.on_hosts_changed(&set);
        assert_eq!(picks(&lb, &set, 2), vec![1, 1]);
        let set = HostSet::new(vec![
            vec![host(1, 1, HealthStatus::Unhealthy)],
            vec![host(2, 1, HealthStatus::Healthy), host(3, 1, HealthStatus::Healthy)],
        ]);
        lb.on_hosts_changed(&set);
        assert!(picks(&lb, &set, 4).iter().all(|&p| p != 1));
    }

    #[test]
    fn empty_cluster_has_no_host() {
        let lb = LoadBalancer::new(LbPolicy::Random, 2);
        let stats = ClusterStats::new(&Store::new(1), "c");
        assert!(lb.choose(&HostSet::default(), &stats).is_none());
        assert_eq!(stats.upstream_cx_none_healthy.value(), 1);
    }
}
