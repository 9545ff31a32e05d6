//! Random: a uniformly random candidate (weights are not considered, as before).

use std::sync::Arc;

use super::context::{Candidates, LbContext};
use crate::upstream::host::Host;

/// Random policy (stateless).
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Random {
    /// A uniformly random candidate.
    pub(super) fn pick<'a>(&self, c: Candidates<'a>, _ctx: &LbContext) -> Option<&'a Arc<Host>> {
        c.hosts.get(rand::random_range(0..c.hosts.len()))
    }
}
