//! The hosts of a cluster as the load balancer sees them (Envoy's `PrioritySet` of
//! `HostSet`s): per priority level the healthy, degraded and all-hosts lists, per locality
//! the same (locality-weighted balancing), the priority load, locality schedules and slow
//! start deadline, all computed once when the set is built so a pick never scans hosts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pinion_xds::model::Locality;

use super::host::{Host, LbClass};
use super::lb::clock::Clock;
use super::lb::priority_load::{LevelCounts, LevelWeights, PriorityLoad};
use super::lb::schedule::{self, Cursors, Rotation};

/// Host-set parameters that come from the cluster's config.
#[derive(Debug, Clone)]
pub struct HostSetSettings {
    /// EDS `policy.overprovisioning_factor` (percent).
    pub overprovisioning_factor: u32,
    /// EDS `policy.weighted_priority_health`: priority availability by host weight.
    pub weighted_priority_health: bool,
    /// `common_lb_config.healthy_panic_threshold` (percent, 0 disables panic); the runtime
    /// key `upstream.healthy_panic_threshold` overrides it when the set is built.
    pub panic_threshold: u32,
    /// `locality_weighted_lb_config`: group hosts by locality and pick localities by weight.
    pub locality_weighted: bool,
    /// Precompute smooth weighted schedules of every list with unequal weights (round robin).
    pub weighted_schedules: bool,
    /// `slow_start_config.slow_start_window` in ms (0: no slow start).
    pub slow_start_window_ms: u64,
    /// The load balancer's clock (slow start timestamps).
    pub clock: Clock,
    /// Worker slots (workers + main): per-worker positions of locality schedules.
    pub slots: usize,
}

impl Default for HostSetSettings {
    fn default() -> Self {
        HostSetSettings {
            overprovisioning_factor: 140,
            weighted_priority_health: false,
            panic_threshold: 50,
            locality_weighted: false,
            weighted_schedules: true,
            slow_start_window_ms: 0,
            clock: Clock::System,
            slots: crate::stats::MAX_WORKERS + 1,
        }
    }
}

/// A list of hosts a pick chooses among, with what the pick needs precomputed.
#[derive(Debug, Default)]
pub struct HostList {
    hosts: Vec<Arc<Host>>,
    /// Unique within its host set: keys per-list LB state.
    id: u32,
    weight: u64,
    equal_weights: bool,
    /// Smooth weighted schedule (indices into `hosts`) when weights differ and the policy
    /// wants one.
    schedule: Option<Arc<[u32]>>,
    /// Round-robin positions of this list alone (as Envoy keeps an index per host source: a
    /// position shared between lists would skew the split within each).
    cursors: Option<Cursors>,
}

impl HostList {
    fn new(hosts: Vec<Arc<Host>>, next_id: &mut u32, schedules: bool, slots: usize) -> Self {
        let weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight())).collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let id = *next_id;
        *next_id += 1;
        HostList {
            weight: weights.iter().sum(),
            schedule: if schedules && !equal_weights { schedule::smooth_schedule(&weights) } else { None },
            equal_weights,
            id,
            cursors: (hosts.len() > 1).then(|| Cursors::new(slots)),
            hosts,
        }
    }

    /// Round-robin positions of this list, if it has its own.
    pub fn cursors(&self) -> Option<&Cursors> {
        self.cursors.as_ref()
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Identifies the list within its host set.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sum of the hosts' weights.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// All hosts have the same weight (an empty list too).
    pub fn equal_weights(&self) -> bool {
        self.equal_weights
    }

    /// The precomputed weighted round-robin schedule, if any.
    pub fn schedule(&self) -> Option<&[u32]> {
        self.schedule.as_deref()
    }
}

/// The hosts of one priority level split the way Envoy's `HostSet` splits them.
#[derive(Debug, Default)]
struct Split {
    all: HostList,
    healthy: HostList,
    degraded: HostList,
    excluded: usize,
    excluded_weight: u64,
}

impl Split {
    fn new(hosts: Vec<Arc<Host>>, next_id: &mut u32, settings: &HostSetSettings, locality: bool) -> Self {
        let mut healthy = Vec::new();
        let mut degraded = Vec::new();
        let mut excluded = 0;
        let mut excluded_weight = 0;
        for h in &hosts {
            match h.health_flags().lb_class() {
                LbClass::Healthy => healthy.push(h.clone()),
                LbClass::Degraded => degraded.push(h.clone()),
                LbClass::Unhealthy => {}
                LbClass::Excluded => {
                    excluded += 1;
                    excluded_weight += u64::from(h.weight());
                }
            }
        }
        let s = settings.weighted_schedules;
        Split {
            // Panic picks never use a locality's list.
            all: HostList::new(hosts, next_id, s && !locality, settings.slots),
            healthy: HostList::new(healthy, next_id, s, settings.slots),
            degraded: HostList::new(degraded, next_id, s, settings.slots),
            excluded,
            excluded_weight,
        }
    }

    fn counts(&self, weighted: bool) -> LevelCounts {
        LevelCounts {
            hosts: self.all.hosts.len(),
            healthy: self.healthy.hosts.len(),
            degraded: self.degraded.hosts.len(),
            excluded: self.excluded,
            weights: weighted.then(|| LevelWeights {
                healthy: self.healthy.weight,
                degraded: self.degraded.weight,
                total: self.all.weight.saturating_sub(self.excluded_weight),
            }),
        }
    }
}

/// A locality as a sort key: (region, zone, sub-zone).
type LocalityKey = (String, String, String);

/// The hosts of one locality within a priority level (locality-weighted balancing only).
#[derive(Debug)]
pub struct LocalityHosts {
    locality: Locality,
    /// The locality's `load_balancing_weight` (0 when unset: never picked, as in Envoy).
    weight: u32,
    split: Split,
}

impl LocalityHosts {
    /// The locality (empty fields when the endpoints had none).
    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    /// `load_balancing_weight` of the locality (0: unset).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its healthy hosts.
    pub fn healthy_list(&self) -> &HostList {
        &self.split.healthy
    }

    /// Its degraded hosts.
    pub fn degraded_list(&self) -> &HostList {
        &self.split.degraded
    }

    /// Envoy's `effectiveLocalityWeight`: the weight scaled by the share of the locality's
    /// (non-excluded) hosts that are `eligible`, times the overprovisioning factor, capped at 1.
    fn effective_weight(&self, eligible: usize, overprovisioning_factor: u32) -> f64 {
        let hosts = self.split.all.hosts.len().saturating_sub(self.split.excluded);
        if hosts == 0 {
            return 0.0;
        }
        let ratio = eligible as f64 / hosts as f64;
        f64::from(self.weight) * (f64::from(overprovisioning_factor) / 100.0 * ratio).min(1.0)
    }
}

/// One priority level of a host set with what load balancing needs, computed once when the
/// set is built so a pick never scans the hosts.
#[derive(Debug, Default)]
pub struct PriorityHosts {
    split: Split,
    /// Locality-weighted balancing: the level's hosts by locality (Envoy's order: sorted by
    /// region, zone, sub-zone), and a schedule over them by effective weight for picks among
    /// healthy and among degraded hosts (`None`: no locality has weight and eligible hosts).
    localities: Vec<LocalityHosts>,
    healthy_localities: Option<Rotation>,
    degraded_localities: Option<Rotation>,
}

impl PriorityHosts {
    fn new(hosts: Vec<Arc<Host>>, next_id: &mut u32, settings: &HostSetSettings) -> Self {
        let localities =
            if settings.locality_weighted { Self::by_locality(&hosts, next_id, settings) } else { Vec::new() };
        let split = Split::new(hosts, next_id, settings, false);
        let rotation = |eligible: &dyn Fn(&LocalityHosts) -> usize, any: bool| {
            if !any {
                return None;
            }
            let weights: Vec<f64> =
                localities.iter().map(|l| l.effective_weight(eligible(l), settings.overprovisioning_factor)).collect();
            schedule::fractional_schedule(&weights).map(|order| Rotation::new(order, settings.slots))
        };
        let healthy_localities = rotation(&|l| l.split.healthy.hosts.len(), !split.healthy.hosts.is_empty());
        let degraded_localities = rotation(&|l| l.split.degraded.hosts.len(), !split.degraded.hosts.is_empty());
        PriorityHosts { split, localities, healthy_localities, degraded_localities }
    }

    fn by_locality(hosts: &[Arc<Host>], next_id: &mut u32, settings: &HostSetSettings) -> Vec<LocalityHosts> {
        // Keyed by (region, zone, sub-zone): Envoy's `LocalityLess` order.
        let mut groups: BTreeMap<LocalityKey, (u32, Vec<Arc<Host>>)> = BTreeMap::new();
        for h in hosts {
            let loc = h.locality().unwrap_or_default();
            let entry = groups.entry((loc.region, loc.zone, loc.sub_zone)).or_default();
            // As Envoy's map of locality weights: a listing with a weight sets it.
            if let Some(w) = h.locality_weight() {
                entry.0 = w;
            }
            entry.1.push(h.clone());
        }
        groups
            .into_iter()
            .map(|((region, zone, sub_zone), (weight, hosts))| LocalityHosts {
                locality: Locality { region, zone, sub_zone },
                weight,
                split: Split::new(hosts, next_id, settings, true),
            })
            .collect()
    }

    /// Every host of this level.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.split.all.hosts
    }

    /// The hosts that were healthy (not degraded, not excluded) when the set was built, in
    /// `hosts` order (Envoy's healthy host list).
    pub fn healthy(&self) -> &[Arc<Host>] {
        &self.split.healthy.hosts
    }

    /// The hosts that were degraded (and neither failed nor excluded) when the set was built.
    pub fn degraded(&self) -> &[Arc<Host>] {
        &self.split.degraded.hosts
    }

    /// All hosts as a pick list.
    pub fn all_list(&self) -> &HostList {
        &self.split.all
    }

    /// The healthy hosts as a pick list.
    pub fn healthy_list(&self) -> &HostList {
        &self.split.healthy
    }

    /// The degraded hosts as a pick list.
    pub fn degraded_list(&self) -> &HostList {
        &self.split.degraded
    }

    /// Number of excluded hosts.
    pub fn excluded(&self) -> usize {
        self.split.excluded
    }

    /// The localities (locality-weighted balancing only; empty otherwise).
    pub fn localities(&self) -> &[LocalityHosts] {
        &self.localities
    }

    /// The next locality for a pick among healthy (`degraded` false) or degraded hosts, by
    /// effective locality weight; `None` when there is no locality schedule.
    #[inline]
    pub fn choose_locality(&self, degraded: bool) -> Option<&LocalityHosts> {
        let rotation = if degraded { &self.degraded_localities } else { &self.healthy_localities };
        rotation.as_ref().and_then(|r| self.localities.get(r.next() as usize))
    }

    /// The locality schedule for healthy or degraded picks (tests, `/clusters` debugging).
    pub fn locality_schedule(&self, degraded: bool) -> Option<&[u32]> {
        let rotation = if degraded { &self.degraded_localities } else { &self.healthy_localities };
        rotation.as_ref().map(Rotation::order)
    }

    /// Sum of the weights of all hosts.
    pub fn total_weight(&self) -> u64 {
        self.split.all.weight
    }

    /// Sum of the weights of the healthy hosts.
    pub fn healthy_weight(&self) -> u64 {
        self.split.healthy.weight
    }

    /// All hosts of this level (so also the healthy ones) have the same weight.
    pub fn equal_weights(&self) -> bool {
        self.split.all.equal_weights
    }
}

/// Envoy reads `upstream.healthy_panic_threshold` (capped at 100) each time it recomputes
/// the priority load, with the cluster's configured threshold as the default.
fn panic_threshold(settings: &HostSetSettings) -> u32 {
    let rt = crate::runtime::snapshot();
    rt.get_integer("upstream.healthy_panic_threshold", u64::from(settings.panic_threshold)).min(100) as u32
}

/// Distinguishes host sets, so per-set LB state (round-robin schedules) is used only with the
/// set it was computed for.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The hosts of a cluster, grouped by priority (index 0 = highest). Immutable: swapped whole
/// on change (hosts that stay are shared with the previous set).
#[derive(Debug, Default)]
pub struct HostSet {
    priorities: Vec<PriorityHosts>,
    generation: u64,
    len: usize,
    healthy_len: usize,
    /// Envoy's membership gauges: (healthy, degraded, excluded).
    membership: (usize, usize, usize),
    /// The traffic split across priorities.
    load: PriorityLoad,
    /// `settings.panic_threshold` or its runtime override, when the set was built.
    panic_threshold: u32,
    settings: HostSetSettings,
    /// Slow start: until when (clock ms) some host of the set is in its window (0: none).
    slow_start_until: u64,
}

impl HostSet {
    /// A set over these priority levels with default settings (Envoy's defaults).
    pub fn new(priorities: Vec<Vec<Arc<Host>>>) -> Self {
        HostSet::with_settings(priorities, HostSetSettings::default())
    }

    /// A set over these priority levels.
    pub fn with_settings(priorities: Vec<Vec<Arc<Host>>>, settings: HostSetSettings) -> Self {
        let mut next_id = 0;
        let priorities: Vec<PriorityHosts> =
            priorities.into_iter().map(|p| PriorityHosts::new(p, &mut next_id, &settings)).collect();
        let mut membership = (0, 0, 0);
        let mut slow_start_until = 0;
        let now = if settings.slow_start_window_ms > 0 { settings.clock.now_ms() } else { 0 };
        for h in priorities.iter().flat_map(|p| p.hosts().iter()) {
            match h.health_flags().lb_class() {
                LbClass::Healthy => {
                    membership.0 += 1;
                    if settings.slow_start_window_ms > 0 {
                        // As Envoy's `recalculateHostsInSlowStart`: a healthy host without a
                        // health-check pass time starts its window when first seen.
                        let since = h.healthy_since_or(now);
                        slow_start_until = slow_start_until.max(since + settings.slow_start_window_ms);
                    }
                }
                LbClass::Degraded => membership.1 += 1,
                LbClass::Excluded => membership.2 += 1,
                LbClass::Unhealthy => {}
            }
        }
        let counts: Vec<LevelCounts> =
            priorities.iter().map(|p| p.split.counts(settings.weighted_priority_health)).collect();
        let panic_threshold = panic_threshold(&settings);
        HostSet {
            membership,
            len: priorities.iter().map(|p| p.hosts().len()).sum(),
            healthy_len: priorities.iter().map(|p| p.healthy().len()).sum(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            load: PriorityLoad::compute(&counts, settings.overprovisioning_factor, panic_threshold),
            panic_threshold,
            priorities,
            settings,
            slow_start_until: if slow_start_until > now { slow_start_until } else { 0 },
        }
    }

    /// The same hosts with the health-derived lists recomputed from the hosts' current flags.
    pub fn recompute(&self) -> HostSet {
        HostSet::with_settings(self.priorities.iter().map(|p| p.hosts().to_vec()).collect(), self.settings.clone())
    }

    /// The priority levels (index 0 = highest).
    pub fn priorities(&self) -> &[PriorityHosts] {
        &self.priorities
    }

    /// The traffic split across the priority levels.
    pub fn load(&self) -> &PriorityLoad {
        &self.load
    }

    /// The panic threshold in force when the set was built (runtime override included).
    pub fn panic_threshold(&self) -> u32 {
        self.panic_threshold
    }

    /// The settings the set was built with.
    pub fn settings(&self) -> &HostSetSettings {
        &self.settings
    }

    /// Until when (clock ms) some host is in its slow-start window; 0 when none was at build.
    pub fn slow_start_until(&self) -> u64 {
        self.slow_start_until
    }

    /// Unique id of this set (0 for the empty default set).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// All hosts, across priorities.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.priorities.iter().flat_map(|p| p.hosts().iter())
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of hosts that were healthy (not degraded, not excluded) when the set was built.
    pub fn healthy_len(&self) -> usize {
        self.healthy_len
    }

    /// Envoy's `membership_healthy`, `membership_degraded` and `membership_excluded`: hosts
    /// neither failed, degraded nor excluded; degraded and not failed or excluded; excluded.
    pub fn membership(&self) -> (usize, usize, usize) {
        self.membership
    }

    /// True when there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use pinion_xds::model::HealthStatus;

    use super::*;
    use crate::upstream::host::HealthFlags;

    fn host(port: u16, weight: u32, health: HealthStatus) -> Arc<Host> {
        Arc::new(Host::new(([127, 0, 0, 1], port).into(), String::new(), weight, None, 0, health))
    }

    #[test]
    fn host_set_precomputes_healthy_lists_and_weights() {
        let set = HostSet::new(vec![
            vec![
                host(1, 2, HealthStatus::Healthy),
                host(2, 3, HealthStatus::Unhealthy),
                host(3, 5, HealthStatus::Degraded),
            ],
            vec![host(4, 1, HealthStatus::Healthy), host(5, 1, HealthStatus::Healthy)],
        ]);
        assert_eq!((set.len(), set.healthy_len()), (5, 3));
        let p0 = &set.priorities()[0];
        let ports = |hs: &[Arc<Host>]| hs.iter().map(|h| h.address.port()).collect::<Vec<u16>>();
        assert_eq!((ports(p0.healthy()), ports(p0.degraded())), (vec![1], vec![3]));
        assert_eq!((p0.total_weight(), p0.healthy_weight(), p0.equal_weights()), (10, 2, false));
        let p1 = &set.priorities()[1];
        assert_eq!((p1.total_weight(), p1.healthy_weight(), p1.equal_weights()), (2, 2, true));
        assert_ne!(set.generation(), HostSet::new(Vec::new()).generation());
    }

    #[test]
    fn recompute_follows_flag_changes() {
        let set = HostSet::new(vec![vec![host(1, 1, HealthStatus::Healthy), host(2, 1, HealthStatus::Healthy)]]);
        set.priorities()[0].hosts()[1].set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
        assert_eq!(set.healthy_len(), 2, "a built set does not change");
        let again = set.recompute();
        assert_eq!(again.healthy_len(), 1);
        assert!(Arc::ptr_eq(&again.priorities()[0].healthy()[0], &set.priorities()[0].hosts()[0]));
        assert_ne!(again.generation(), set.generation());
    }
}
