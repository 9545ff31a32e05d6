//! The load balancer's monotonic clock in milliseconds (slow start), replaceable by a manual
//! clock in tests. A leaf module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Milliseconds on a monotonic clock; never 0 (0 means "never" in host timestamps).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The process's monotonic clock.
    #[default]
    System,
    /// A clock tests move by hand.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock at `ms` (at least 1) and the handle that moves it.
    pub fn manual(ms: u64) -> (Clock, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(ms.max(1)));
        (Clock::Manual(t.clone()), t)
    }

    /// Now, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => {
                static EPOCH: OnceLock<Instant> = OnceLock::new();
                EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
            }
            Clock::Manual(t) => t.load(Ordering::Relaxed).max(1),
        }
    }
}
