//! What one pick works with: the request's context and the candidate hosts (a leaf module
//! the policies share).

use std::sync::Arc;

use super::schedule::Cursors;
use crate::upstream::host::Host;
use crate::upstream::host_set::HostList;

/// Per-request input to a pick. Passed by reference so adding fields costs callers nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbContext {
    /// Request hash from the route's hash policy, for hash-based policies (ring hash,
    /// Maglev). `None`: no hash policy produced one (they then pick at random, as Envoy).
    pub hash: Option<u64>,
    /// Which host-selection attempt this is (Envoy's `chooseHost(hash, attempt)`): 0 for the
    /// first pick, 1, 2, ... when a retry's host predicate rejected the previous picks, so
    /// hash-based policies move off the key's host.
    pub attempt: u32,
}

impl LbContext {
    /// A context carrying a request hash.
    pub fn with_hash(hash: u64) -> Self {
        LbContext { hash: Some(hash), attempt: 0 }
    }

    /// This context for host-selection attempt `attempt`.
    pub fn at_attempt(self, attempt: u32) -> Self {
        LbContext { attempt, ..self }
    }
}

/// The hosts one pick chooses among: the result of priority (and locality) selection.
#[derive(Clone, Copy)]
pub struct Candidates<'a> {
    /// The list to pick from (may be empty: nothing to pick).
    pub hosts: &'a [Arc<Host>],
    /// Precomputed smooth weighted round-robin schedule of `hosts` (unequal weights).
    pub schedule: Option<&'a [u32]>,
    /// Round-robin positions of this list alone (`None`: the policy's shared positions).
    pub cursors: Option<&'a Cursors>,
    /// Which list of which set `hosts` is, so per-list state (EDF schedulers) can be kept;
    /// `None` for a list filtered on the spot.
    pub list: Option<ListId>,
    /// All candidates have the same weight (lets weighted policies take their fast path).
    pub equal_weights: bool,
    /// Slow start is in effect for this pick: the LB clock's now (ms).
    pub slow_start_now: Option<u64>,
}

impl<'a> Candidates<'a> {
    /// A precomputed list of the set `generation`.
    pub fn from_list(list: &'a HostList, generation: u64, slow_start_now: Option<u64>) -> Self {
        Candidates {
            hosts: list.hosts(),
            schedule: list.schedule(),
            cursors: list.cursors(),
            list: Some(ListId { generation, id: list.id() }),
            equal_weights: list.equal_weights(),
            slow_start_now,
        }
    }
}

/// Identifies a precomputed host list: set generation and the list's id within the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListId {
    /// `HostSet::generation`.
    pub generation: u64,
    /// `HostList::id`.
    pub id: u32,
}
