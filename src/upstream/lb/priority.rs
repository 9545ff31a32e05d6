//! Priority selection and the healthy panic threshold, shared by every policy.
//!
//! As Pinion always has: below the threshold of healthy hosts (counted over all priorities),
//! balance in panic mode over all hosts of the first non-empty priority; otherwise over the
//! healthy hosts of the first priority that has any.

use crate::upstream::host::{HostSet, PriorityHosts};

/// Envoy's default `healthy_panic_threshold`: below 50% healthy hosts, balance over all hosts.
/// 0 disables panic mode.
pub const DEFAULT_PANIC_THRESHOLD_PERCENT: usize = 50;

/// Where a pick goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrioritySelection {
    /// Priority level.
    pub level: usize,
    /// Panic mode: pick among all hosts of the level, healthy or not.
    pub panic: bool,
}

/// Select from the set's precomputed healthy counts: O(priorities), no host is read.
pub fn select(set: &HostSet, panic_threshold_percent: usize) -> Option<PrioritySelection> {
    select_with(set, set.healthy_len(), panic_threshold_percent, |p| p.healthy().len())
}

/// Select from the hosts' current flags: O(hosts), for when flags changed after the set was
/// built.
pub fn select_live(set: &HostSet, panic_threshold_percent: usize) -> Option<PrioritySelection> {
    let live = |p: &PriorityHosts| p.hosts().iter().filter(|h| h.healthy()).count();
    let healthy = set.priorities().iter().map(live).sum();
    select_with(set, healthy, panic_threshold_percent, live)
}

fn select_with(
    set: &HostSet,
    healthy_total: usize,
    panic_threshold_percent: usize,
    healthy_in: impl Fn(&PriorityHosts) -> usize,
) -> Option<PrioritySelection> {
    let total = set.len();
    if total == 0 {
        return None;
    }
    let panic = healthy_total * 100 < total * panic_threshold_percent;
    let levels = set.priorities().iter();
    let level = if panic {
        levels.map(|p| p.hosts().len()).position(|n| n > 0)
    } else {
        levels.map(healthy_in).position(|n| n > 0)
    }?;
    Some(PrioritySelection { level, panic })
}
