//! Host selection shared by every policy (Envoy's `LoadBalancerBase::chooseHostSet` and
//! `ZoneAwareLoadBalancerBase::hostSourceToUse`): a priority level by the set's priority load,
//! all of its hosts when it is in panic, else its healthy or degraded hosts, narrowed to one
//! locality by effective locality weight when locality-weighted balancing is on.
//!
//! The default case (one level, all hosts healthy) draws no random number and reads no host.

use std::sync::Arc;

use super::priority_load::{Availability, LevelCounts, LevelWeights, PriorityLoad};
use crate::upstream::host::{Host, LbClass};
use crate::upstream::host_set::{HostList, HostSet};

/// Where a pick goes.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    /// Priority level.
    pub level: usize,
    /// Panic mode: the level's hosts whatever their health.
    pub panic: bool,
    /// Healthy or degraded hosts (meaningless in panic).
    pub availability: Availability,
    /// The hosts to pick among (may be empty: nothing to pick).
    pub list: &'a HostList,
}

/// A level (and healthy or degraded) for a set's load: no draw when all goes to P0.
fn choose_level(load: &PriorityLoad) -> Option<(usize, Availability)> {
    if load.all_to_first() {
        return Some((0, Availability::Healthy));
    }
    load.choose(rand::random_range(1..=100))
}

/// Select from the set's precomputed lists and load: O(priorities), no host is read.
pub fn select(set: &HostSet) -> Option<Selection<'_>> {
    let load = set.load();
    let (level, availability) = choose_level(load)?;
    let p = set.priorities().get(level)?;
    if load.panic.get(level).copied().unwrap_or(false) {
        return Some(Selection { level, panic: true, availability, list: p.all_list() });
    }
    let degraded = availability == Availability::Degraded;
    let list = match (p.choose_locality(degraded), degraded) {
        (Some(l), false) => l.healthy_list(),
        (Some(l), true) => l.degraded_list(),
        (None, false) => p.healthy_list(),
        (None, true) => p.degraded_list(),
    };
    Some(Selection { level, panic: false, availability, list })
}

/// Select from the hosts' current flags, for when flags changed after the set was built:
/// O(hosts) and allocates (the level's hosts as they are now; localities are not used on
/// this path, which lasts only until the set is rebuilt). `None`: nothing to pick.
pub fn select_live(set: &HostSet) -> Option<(Vec<Arc<Host>>, bool)> {
    let counts: Vec<LevelCounts> = set
        .priorities()
        .iter()
        .map(|p| {
            let mut c = LevelCounts { hosts: p.hosts().len(), ..LevelCounts::default() };
            let mut w = LevelWeights::default();
            for h in p.hosts() {
                let weight = u64::from(h.weight());
                match h.health_flags().lb_class() {
                    LbClass::Healthy => (c.healthy, w.healthy) = (c.healthy + 1, w.healthy + weight),
                    LbClass::Degraded => (c.degraded, w.degraded) = (c.degraded + 1, w.degraded + weight),
                    LbClass::Excluded => c.excluded += 1,
                    LbClass::Unhealthy => {}
                }
                if h.health_flags().lb_class() != LbClass::Excluded {
                    w.total += weight;
                }
            }
            c.weights = set.settings().weighted_priority_health.then_some(w);
            c
        })
        .collect();
    let settings = set.settings();
    let load = PriorityLoad::compute(&counts, settings.overprovisioning_factor, set.panic_threshold());
    let (level, availability) = choose_level(&load)?;
    let panic = load.panic.get(level).copied().unwrap_or(false);
    let want = match availability {
        Availability::Healthy => LbClass::Healthy,
        Availability::Degraded => LbClass::Degraded,
    };
    let hosts: Vec<Arc<Host>> = set
        .priorities()
        .get(level)?
        .hosts()
        .iter()
        .filter(|h| panic || h.health_flags().lb_class() == want)
        .cloned()
        .collect();
    (!hosts.is_empty()).then_some((hosts, panic))
}
