//! The active configuration as workers see it: an immutable snapshot swapped atomically
//! (arc-swap). Workers load it per connection and per request; in-flight requests keep the
//! snapshot (and the clusters) they started with alive through their `Arc`s.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::listener::ListenerRuntime;
use crate::upstream::Cluster;

/// One version of the active config.
#[derive(Default)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// Active listeners.
    pub listeners: Vec<Arc<ListenerRuntime>>,
    /// Active clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
}

/// Shared handle to the current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
