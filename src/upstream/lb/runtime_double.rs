//! A `RuntimeDouble` setting of a load balancer (`active_request_bias`, slow start
//! `aggression`): the runtime key's value if it parses as a number, else the default, read
//! once per host set as Envoy reads it when it refreshes its load balancer (not per pick).

use std::sync::atomic::{AtomicU64, Ordering};

/// A runtime-overridable number, cached per host-set generation.
#[derive(Debug)]
pub struct RuntimeDouble {
    key: String,
    default: f64,
    /// Generation the cached value was read for (0: none yet).
    generation: AtomicU64,
    bits: AtomicU64,
}

impl RuntimeDouble {
    /// `default` unless the runtime has `key` (empty: never looked up).
    pub fn new(key: &str, default: f64) -> Self {
        RuntimeDouble {
            key: key.to_string(),
            default,
            generation: AtomicU64::new(0),
            bits: AtomicU64::new(default.to_bits()),
        }
    }

    /// The value for the host set `generation`: read from the runtime on the first pick of a
    /// new set (two racing workers both read it, harmlessly), cached otherwise.
    #[inline]
    pub fn get(&self, generation: u64) -> f64 {
        if self.key.is_empty() {
            return self.default;
        }
        if self.generation.load(Ordering::Acquire) != generation {
            let v = crate::runtime::snapshot().get_double(&self.key, self.default);
            self.bits.store(v.to_bits(), Ordering::Relaxed);
            self.generation.store(generation, Ordering::Release);
            return v;
        }
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
}
