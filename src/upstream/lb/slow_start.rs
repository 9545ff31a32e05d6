//! Slow start (`slow_start_config` of round robin and least request): a host that became
//! healthy less than `slow_start_window` ago gets its weight scaled by
//! `max(min_weight_percent, time_factor ^ (1 / aggression))`, `time_factor` being the share of
//! the window elapsed (at least 1 ms), as Envoy's `EdfLoadBalancerBase::applySlowStartFactor`.
//! While any host of the set is in its window, the weighted policies pick with EDF so the
//! ramp is followed.

use pinion_xds::model::SlowStart;

use super::runtime_double::RuntimeDouble;
use crate::upstream::host::{Host, LbClass};

/// A cluster's slow-start parameters.
#[derive(Debug)]
pub struct SlowStartConfig {
    window_ms: u64,
    /// `aggression` (its runtime key read once per host set).
    aggression: RuntimeDouble,
    min_weight: f64,
}

impl SlowStartConfig {
    /// From the translated config; `None` when the window is zero (disabled, as in Envoy).
    pub fn new(s: &SlowStart) -> Option<Self> {
        let window_ms = s.window.as_millis() as u64;
        (window_ms > 0).then(|| SlowStartConfig {
            window_ms,
            aggression: RuntimeDouble::new(&s.aggression_key, s.aggression),
            min_weight: s.min_weight,
        })
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The ramp in force for the host set `generation`.
    #[inline]
    pub fn ramp(&self, generation: u64) -> Ramp {
        let a = self.aggression.get(generation);
        // Envoy logs and uses 1.0 for an aggression that is not positive.
        let aggression = if a > 0.0 && a.is_finite() { a } else { 1.0 };
        Ramp { window_ms: self.window_ms, aggression, min_weight: self.min_weight }
    }
}

/// Slow start with its aggression resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    window_ms: u64,
    aggression: f64,
    min_weight: f64,
}

impl Ramp {
    /// The factor (0..=1] `host`'s weight is scaled by at `now` (clock ms).
    pub fn factor(&self, host: &Host, now: u64) -> f64 {
        let since = host.healthy_since();
        if since == 0 || host.health_flags().lb_class() != LbClass::Healthy {
            return 1.0;
        }
        let elapsed = now.saturating_sub(since);
        if elapsed >= self.window_ms {
            return 1.0;
        }
        let time_factor = elapsed.max(1) as f64 / self.window_ms as f64;
        let ramp = if self.aggression == 1.0 { time_factor } else { time_factor.powf(1.0 / self.aggression) };
        ramp.max(self.min_weight)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pinion_xds::model::HealthStatus;

    use super::*;
    use crate::upstream::host::HealthFlags;

    #[test]
    fn factor_ramps_over_the_window() {
        let cfg = |aggression, min_weight| {
            let s =
                SlowStart { window: Duration::from_secs(10), aggression, aggression_key: String::new(), min_weight };
            SlowStartConfig::new(&s).unwrap().ramp(1)
        };
        let h = Host::new(([127, 0, 0, 1], 1).into(), String::new(), 1, None, 0, HealthStatus::Healthy);
        assert_eq!(cfg(1.0, 0.1).factor(&h, 5000), 1.0, "never seen healthy: full weight");
        h.set_healthy_since(1000);
        // (aggression, min weight, ms since healthy, factor)
        let cases = [
            (1.0, 0.1, 0, 0.1),
            (1.0, 0.1, 5000, 0.5),
            (1.0, 0.1, 9000, 0.9),
            (1.0, 0.1, 10_000, 1.0),
            (1.0, 0.6, 5000, 0.6),
            (2.0, 0.0, 2500, 0.5),
            (0.5, 0.0, 5000, 0.25),
            (-1.0, 0.0, 5000, 0.5),
        ];
        for (aggression, min_weight, ms, want) in cases {
            let got = cfg(aggression, min_weight).factor(&h, 1000 + ms);
            assert!((got - want).abs() < 1e-9, "aggression {aggression} min {min_weight} at {ms}ms: {got}");
        }
        // Degraded or failed hosts are not ramped.
        h.set_flag(HealthFlags::DEGRADED_EDS_HEALTH, true);
        assert_eq!(cfg(1.0, 0.1).factor(&h, 2000), 1.0);
        let zero =
            SlowStart { window: Duration::ZERO, aggression: 1.0, aggression_key: String::new(), min_weight: 0.1 };
        assert!(SlowStartConfig::new(&zero).is_none());
    }
}
