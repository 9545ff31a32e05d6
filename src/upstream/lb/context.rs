//! What one pick works with: the request's context and the candidate hosts (a leaf module
//! the policies share).

use std::sync::Arc;

use crate::upstream::host::Host;

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

/// The hosts one pick chooses among.
#[derive(Clone, Copy)]
pub(super) struct Candidates<'a> {
    /// Non-empty list to pick from.
    pub(super) hosts: &'a [Arc<Host>],
    /// Which precomputed list of which set `hosts` is, so per-set state (round-robin
    /// schedules) can be looked up; `None` for a list filtered on the spot.
    pub(super) list: Option<ListId>,
    /// All candidates have the same weight (lets weighted policies take their fast path).
    pub(super) equal_weights: bool,
}

/// Identifies a precomputed host list: set generation, priority level, and whether it is the
/// all-hosts list (panic mode) rather than the healthy list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ListId {
    /// `HostSet::generation`.
    pub(super) generation: u64,
    /// Priority level.
    pub(super) level: usize,
    /// The all-hosts list (panic mode) instead of the healthy one.
    pub(super) panic: bool,
}
