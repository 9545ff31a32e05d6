//! Envoy's priority load (`LoadBalancerBase::recalculatePerPriorityState`,
//! `recalculatePerPriorityPanic`, `recalculateLoadInTotalPanic`): how a cluster's traffic
//! splits across its priority levels, as whole percentages that add up to 100.
//!
//! A level's availability is `min(100, overprovisioning_factor * healthy / hosts)` (hosts not
//! counting excluded ones), the same for degraded hosts. Load goes to levels in order, each
//! taking as much as its availability (scaled up when the total availability is below 100),
//! healthy hosts first, then degraded hosts with what is left. A level whose healthy and
//! degraded hosts make up less than the panic threshold is in panic (only while the total
//! availability is below 100); when every level is, the load follows the host counts.
//!
//! Pure arithmetic over counts (a leaf module): the host set computes it once per build.

/// What the computation needs of one priority level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelCounts {
    /// All hosts of the level (excluded ones included).
    pub hosts: usize,
    /// Healthy hosts (neither failed, degraded nor excluded).
    pub healthy: usize,
    /// Degraded hosts (not failed, not excluded).
    pub degraded: usize,
    /// Excluded hosts (draining, pending their first health check, ...).
    pub excluded: usize,
    /// EDS `weighted_priority_health`: availability from these host weights instead of the
    /// counts (the panic check still counts hosts, as in Envoy).
    pub weights: Option<LevelWeights>,
}

/// Host weights of one level, for `weighted_priority_health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelWeights {
    /// Sum of the healthy hosts' weights.
    pub healthy: u64,
    /// Sum of the degraded hosts' weights.
    pub degraded: u64,
    /// Sum of the weights of all hosts but the excluded ones.
    pub total: u64,
}

/// Which hosts of a level a pick goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// The healthy hosts.
    Healthy,
    /// The degraded hosts.
    Degraded,
}

/// The traffic split across priority levels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorityLoad {
    /// Percent of the traffic to each level's healthy hosts.
    pub healthy: Vec<u32>,
    /// Percent of the traffic to each level's degraded hosts.
    pub degraded: Vec<u32>,
    /// Levels in panic: picks there go to all of the level's hosts.
    pub panic: Vec<bool>,
}

/// `min(100, factor * part / total)` in Envoy's integer arithmetic (0 for an empty level);
/// wide enough that no factor and weight sum from a control plane can overflow it.
fn availability(factor: u32, part: u64, total: u64) -> u32 {
    if total == 0 {
        return 0;
    }
    (u128::from(factor) * u128::from(part) / u128::from(total)).min(100) as u32
}

/// Envoy's `distributeLoad`: each level takes `availability * 100 / total` of what is left.
/// Returns the first level with any availability and the load left over.
fn distribute(load: &mut [u32], availability: &[u32], mut left: u32, total: u32) -> (Option<usize>, u32) {
    let mut first = None;
    for (i, (l, &a)) in load.iter_mut().zip(availability).enumerate() {
        if first.is_none() && a > 0 {
            first = Some(i);
        }
        *l = left.min(a * 100 / total);
        left -= *l;
    }
    (first, left)
}

impl PriorityLoad {
    /// The split for these levels with the EDS `overprovisioning_factor` (percent, 140 by
    /// default) and the `healthy_panic_threshold` (percent, 0 disables panic).
    pub fn compute(levels: &[LevelCounts], overprovisioning_factor: u32, panic_threshold: u32) -> PriorityLoad {
        let n = levels.len();
        let mut load = PriorityLoad { healthy: vec![0; n], degraded: vec![0; n], panic: vec![false; n] };
        if n == 0 {
            return load;
        }
        let counted = |l: &LevelCounts| l.hosts.saturating_sub(l.excluded);
        // (healthy, degraded, total) by weight or by count.
        let parts = |l: &LevelCounts| match l.weights {
            Some(w) => (w.healthy, w.degraded, w.total),
            None => (l.healthy as u64, l.degraded as u64, counted(l) as u64),
        };
        let health: Vec<u32> = levels
            .iter()
            .map(|l| {
                let (h, _, t) = parts(l);
                availability(overprovisioning_factor, h, t)
            })
            .collect();
        let degraded: Vec<u32> = levels
            .iter()
            .map(|l| {
                let (_, d, t) = parts(l);
                availability(overprovisioning_factor, d, t)
            })
            .collect();
        let total = (health.iter().sum::<u32>() + degraded.iter().sum::<u32>()).min(100);
        if total > 0 {
            let (first_healthy, left) = distribute(&mut load.healthy, &health, 100, total);
            let (first_degraded, left) = distribute(&mut load.degraded, &degraded, left, total);
            // Rounding leftovers go to the first available level.
            match (first_healthy, first_degraded) {
                (Some(i), _) => load.healthy[i] += left,
                (None, Some(i)) => load.degraded[i] += left,
                (None, None) => {}
            }
        }

        let threshold = panic_threshold.min(100);
        if threshold == 0 && total == 0 {
            // Panic disabled and nothing available: the load must still add up, so it goes to
            // P0's (empty) healthy list and picks find no host.
            load.healthy[0] = 100;
            return load;
        }
        for (p, l) in load.panic.iter_mut().zip(levels) {
            let hosts = counted(l);
            let percent = if hosts == 0 {
                0.0
            } else {
                100.0 * l.healthy as f64 / hosts as f64 + 100.0 * l.degraded as f64 / hosts as f64
            };
            *p = total < 100 && percent < f64::from(threshold);
        }
        if load.panic.iter().all(|&p| p) {
            load.total_panic(levels);
        }
        load
    }

    /// Every level in panic: load by each level's share of all hosts.
    fn total_panic(&mut self, levels: &[LevelCounts]) {
        let total: usize = levels.iter().map(|l| l.hosts).sum();
        self.degraded.iter_mut().for_each(|d| *d = 0);
        if total == 0 {
            self.healthy.iter_mut().for_each(|h| *h = 0);
            self.healthy[0] = 100;
            return;
        }
        let mut left = 100;
        for (h, l) in self.healthy.iter_mut().zip(levels) {
            *h = (100 * l.hosts / total) as u32;
            left -= *h;
        }
        if let Some(first) = levels.iter().position(|l| l.hosts > 0) {
            self.healthy[first] += left;
        }
    }

    /// The level (and which of its hosts) for a draw `r` in `1..=100` (Envoy's
    /// `choosePriority`). `None` only for a set without levels.
    pub fn choose(&self, r: u32) -> Option<(usize, Availability)> {
        let mut sum = 0;
        for (i, &l) in self.healthy.iter().enumerate() {
            sum += l;
            if r <= sum {
                return Some((i, Availability::Healthy));
            }
        }
        for (i, &l) in self.degraded.iter().enumerate() {
            sum += l;
            if r <= sum {
                return Some((i, Availability::Degraded));
            }
        }
        // Only reachable if the loads do not add up to 100, which compute never does.
        (!self.healthy.is_empty()).then_some((0, Availability::Healthy))
    }

    /// All traffic goes to P0's healthy hosts (the common case): no draw needed.
    #[inline]
    pub fn all_to_first(&self) -> bool {
        self.healthy.first() == Some(&100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvl(healthy: usize, degraded: usize, unhealthy: usize) -> LevelCounts {
        LevelCounts { hosts: healthy + degraded + unhealthy, healthy, degraded, excluded: 0, weights: None }
    }

    #[test]
    fn loads_match_envoy() {
        // (levels as (healthy, degraded, unhealthy), factor, healthy load, degraded load, panic)
        type Case = (&'static [(usize, usize, usize)], u32, &'static [u32], &'static [u32], &'static [bool]);
        let cases: &[Case] = &[
            (&[(4, 0, 0)], 140, &[100], &[0], &[false]),
            // 2 of 4 healthy with factor 1.4: 70% stay, 30% spill to P1.
            (&[(2, 0, 2), (4, 0, 0)], 140, &[70, 30], &[0, 0], &[false, false]),
            // Factor 1.0: 50/50.
            (&[(2, 0, 2), (4, 0, 0)], 100, &[50, 50], &[0, 0], &[false, false]),
            // 80% healthy is still 100% available with 1.4.
            (&[(4, 0, 1), (1, 0, 0)], 140, &[100, 0], &[0, 0], &[false, false]),
            // Nothing healthy in P0: all to P1.
            (&[(0, 0, 2), (1, 0, 0)], 140, &[0, 100], &[0, 0], &[false, false]),
            // Three levels, each partly healthy.
            (&[(1, 0, 3), (1, 0, 3), (2, 0, 0)], 140, &[35, 35, 30], &[0, 0, 0], &[false, false, false]),
            // Degraded hosts take what the healthy ones leave: P0 1 healthy + 1 degraded.
            (&[(1, 1, 0)], 140, &[70], &[30], &[false]),
            // Total availability below 100: scaled up (20 + 10 of 30 -> 66/33, +1 rounding).
            (&[(1, 0, 6), (1, 0, 13)], 140, &[67, 33], &[0, 0], &[true, true]),
            // Envoy's doc example: 10%/20%/10% healthy, 20%/10%/0% degraded (factor 1.0).
            (&[(1, 2, 7), (2, 1, 7), (1, 0, 9)], 100, &[16, 28, 14], &[28, 14, 0], &[true, true, true]),
        ];
        for (levels, factor, healthy, degraded, panic) in cases {
            let counts: Vec<LevelCounts> = levels.iter().map(|&(h, d, u)| lvl(h, d, u)).collect();
            // Threshold 0 shows the availability-based split (every level in panic would
            // replace it by the host-count split).
            let load = PriorityLoad::compute(&counts, *factor, 0);
            assert_eq!(load.healthy, *healthy, "{levels:?} healthy");
            assert_eq!(load.degraded, *degraded, "{levels:?} degraded");
            assert_eq!(load.healthy.iter().chain(&load.degraded).sum::<u32>(), 100);
            assert_eq!(PriorityLoad::compute(&counts, *factor, 50).panic, *panic, "{levels:?} panic");
        }
    }

    #[test]
    fn panic_is_per_level_and_only_below_full_availability() {
        // P0 a third healthy but P1 makes up the rest: total availability 100, no panic.
        let load = PriorityLoad::compute(&[lvl(1, 0, 2), lvl(2, 0, 0)], 140, 50);
        assert_eq!((load.healthy.clone(), load.panic.clone()), (vec![46, 54], vec![false, false]));
        // P0 a quarter healthy, P1 a third healthy: total 35 + 46 < 100, both below 50% ->
        // total panic, load by host counts (4 and 3 hosts).
        let load = PriorityLoad::compute(&[lvl(1, 0, 3), lvl(1, 0, 2)], 140, 50);
        assert_eq!((load.healthy.clone(), load.panic.clone()), (vec![58, 42], vec![true, true]));
        // Only P1 in panic (total 60 + 25 < 100): P0 keeps its availability-based share,
        // P1 balances over all its hosts.
        let load = PriorityLoad::compute(&[lvl(3, 0, 2), lvl(1, 0, 3)], 100, 50);
        assert_eq!(load.panic, vec![false, true]);
        assert_eq!(load.healthy, vec![71, 29]);
        // Threshold 0: never panic; with nothing available P0 gets the (empty) load.
        let load = PriorityLoad::compute(&[lvl(0, 0, 2), lvl(0, 0, 1)], 140, 0);
        assert_eq!((load.healthy.clone(), load.panic.clone()), (vec![100, 0], vec![false, false]));
        // Threshold 100: panic as soon as any host is down (and availability < 100).
        let load = PriorityLoad::compute(&[lvl(1, 0, 1)], 100, 100);
        assert_eq!(load.panic, vec![true]);
        let load = PriorityLoad::compute(&[lvl(5, 0, 1)], 140, 100);
        assert_eq!(load.panic, vec![false], "5/6 with factor 1.4 is fully available");
    }

    #[test]
    fn excluded_hosts_do_not_count() {
        // 2 healthy + 2 excluded: fully available.
        let load = PriorityLoad::compute(
            &[LevelCounts { hosts: 4, healthy: 2, degraded: 0, excluded: 2, weights: None }, lvl(1, 0, 0)],
            100,
            50,
        );
        assert_eq!(load.healthy, vec![100, 0]);
    }

    #[test]
    fn weighted_priority_health_uses_weights() {
        // P0: 2 of 4 hosts healthy, but they carry 6 of 8 weight: 140 * 6/8 = 105 -> 100.
        let weights = LevelWeights { healthy: 6, degraded: 0, total: 8 };
        let p0 = LevelCounts { weights: Some(weights), ..lvl(2, 0, 2) };
        let load = PriorityLoad::compute(&[p0, lvl(2, 0, 0)], 140, 50);
        assert_eq!(load.healthy, vec![100, 0]);
        // By count the same level keeps 70%.
        let load = PriorityLoad::compute(&[lvl(2, 0, 2), lvl(2, 0, 0)], 140, 50);
        assert_eq!(load.healthy, vec![70, 30]);
        // Light healthy hosts: 2 of 8 weight -> 35%, yet no panic (half the hosts count).
        let weights = LevelWeights { healthy: 2, degraded: 0, total: 8 };
        let p0 = LevelCounts { weights: Some(weights), ..lvl(2, 0, 2) };
        let load = PriorityLoad::compute(&[p0, lvl(1, 0, 1)], 140, 50);
        assert_eq!((load.healthy.clone(), load.panic.clone()), (vec![35, 65], vec![false, false]));
    }

    #[test]
    fn extreme_factors_and_weights_do_not_overflow() {
        let weights =
            LevelWeights { healthy: u64::from(u32::MAX) * 1000, degraded: 0, total: u64::from(u32::MAX) * 1000 };
        let p0 = LevelCounts { weights: Some(weights), ..lvl(1000, 0, 0) };
        assert_eq!(PriorityLoad::compute(&[p0], u32::MAX, 50).healthy, vec![100]);
        assert_eq!(PriorityLoad::compute(&[lvl(1, 0, 1)], u32::MAX, 50).healthy, vec![100]);
        // Factor 0 (refused by validation): nothing is available, yet a level is chosen.
        assert!(PriorityLoad::compute(&[lvl(1, 0, 1), lvl(1, 0, 0)], 0, 50).choose(50).is_some());
    }

    #[test]
    fn choose_walks_healthy_then_degraded() {
        let load = PriorityLoad { healthy: vec![16, 28, 14], degraded: vec![28, 14, 0], panic: vec![false; 3] };
        let want = |r| load.choose(r).unwrap();
        assert_eq!(want(1), (0, Availability::Healthy));
        assert_eq!(want(16), (0, Availability::Healthy));
        assert_eq!(want(17), (1, Availability::Healthy));
        assert_eq!(want(58), (2, Availability::Healthy));
        assert_eq!(want(59), (0, Availability::Degraded));
        assert_eq!(want(100), (1, Availability::Degraded));
        assert!(PriorityLoad::default().choose(50).is_none());
        assert!(PriorityLoad::compute(&[lvl(1, 0, 0)], 140, 50).all_to_first());
    }
}
