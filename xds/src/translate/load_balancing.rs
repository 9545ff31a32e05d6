//! A cluster's load-balancer settings: `common_lb_config` and the policy's
//! `round_robin_lb_config` / `least_request_lb_config` (ring hash and Maglev configs are read
//! with `lb_policy`, in `load_balancing_policy`).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as c;
use envoy_types::pb::envoy::config::core::v3 as core;

use super::{at, duration_or, reject_set, u32_or, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Envoy's default `min_weight_percent` of slow start.
const DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT: f64 = 10.0;

/// `Cluster.common_lb_config` and `Cluster.lb_config` (errors relative to the cluster).
pub(crate) fn lb_config(
    common: Option<&c::cluster::CommonLbConfig>,
    policy_config: Option<&c::cluster::LbConfig>,
) -> ConfigResult<model::LbConfig> {
    use c::cluster::LbConfig;
    let mut out = model::LbConfig::default();
    if let Some(common) = common {
        common_lb_config(common, &mut out).map_err(at("common_lb_config"))?;
    }
    // A config for another policy than `lb_policy` is ignored, as Envoy ignores it.
    match policy_config {
        None => {}
        // Read with `lb_policy` (see `load_balancing_policy`).
        Some(LbConfig::RingHashLbConfig(_) | LbConfig::MaglevLbConfig(_)) => {}
        Some(LbConfig::OriginalDstLbConfig(_)) => return Err(unsupported_field("original_dst_lb_config")),
        Some(LbConfig::RoundRobinLbConfig(rr)) => {
            let c::cluster::RoundRobinLbConfig { slow_start_config } = rr;
            out.slow_start = slow_start(slow_start_config.as_ref()).map_err(at("round_robin_lb_config"))?;
        }
        Some(LbConfig::LeastRequestLbConfig(lr)) => {
            let c::cluster::LeastRequestLbConfig { choice_count, active_request_bias, slow_start_config } = lr;
            let p = "least_request_lb_config";
            out.choice_count = u32_or(choice_count, 2);
            if out.choice_count < 2 {
                return Err(ConfigError::invalid(
                    format!("{p}.choice_count"),
                    "value must be greater than or equal to 2",
                ));
            }
            if let Some(b) = active_request_bias {
                let (value, key) = runtime_double(b);
                out.active_request_bias = Some(value);
                out.active_request_bias_key = key;
            }
            out.slow_start = slow_start(slow_start_config.as_ref()).map_err(at(p))?;
        }
    }
    Ok(out)
}

/// `RuntimeDouble` as (default value, runtime key).
fn runtime_double(d: &core::RuntimeDouble) -> (f64, String) {
    let core::RuntimeDouble { default_value, runtime_key } = d;
    (*default_value, runtime_key.clone())
}

fn common_lb_config(common: &c::cluster::CommonLbConfig, out: &mut model::LbConfig) -> ConfigResult<()> {
    use c::cluster::common_lb_config::LocalityConfigSpecifier as L;
    let c::cluster::CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = common;
    if let Some(p) = healthy_panic_threshold {
        let envoy_types::pb::envoy::r#type::v3::Percent { value } = p;
        if !(0.0..=100.0).contains(value) {
            return Err(ConfigError::invalid("healthy_panic_threshold.value", "value must be inside range [0, 100]"));
        }
        // Envoy rounds the percentage to a whole number.
        out.healthy_panic_threshold = value.round() as u32;
    }
    // Pinion applies every host update at once, as with a zero window; Envoy's default 1s
    // merging is what Pinion has always not done, so only other windows are refused.
    let window = duration_or(update_merge_window, Duration::from_secs(1), "update_merge_window")?;
    if !window.is_zero() && window != Duration::from_secs(1) {
        return Err(unsupported_field("update_merge_window"));
    }
    reject_set(ignore_new_hosts_until_first_hc, "ignore_new_hosts_until_first_hc")?;
    reject_set(close_connections_on_host_set_change, "close_connections_on_host_set_change")?;
    if let Some(ch) = consistent_hashing_lb_config {
        out.use_hostname_for_hashing =
            super::load_balancing_policy::legacy_consistent_hashing(ch).map_err(at("consistent_hashing_lb_config"))?;
    }
    reject_set(override_host_status, "override_host_status")?;
    match locality_config_specifier {
        None => {}
        Some(L::LocalityWeightedLbConfig(c::cluster::common_lb_config::LocalityWeightedLbConfig {})) => {
            out.locality_weighted = true;
        }
        // Zone-aware routing needs the local cluster (`cluster_manager.local_cluster_name`)
        // and its membership, which Pinion does not track.
        Some(L::ZoneAwareLbConfig(_)) => {
            return Err(ConfigError::unsupported(
                "zone_aware_lb_config",
                "zone_aware_lb_config (zone-aware routing) is not supported by pinion",
            ))
        }
    }
    Ok(())
}

/// `SlowStartConfig` (errors relative to the owning policy config).
fn slow_start(s: Option<&c::cluster::SlowStartConfig>) -> ConfigResult<Option<model::SlowStart>> {
    let Some(s) = s else { return Ok(None) };
    let c::cluster::SlowStartConfig { slow_start_window, aggression, min_weight_percent } = s;
    let window = duration_or(slow_start_window, Duration::ZERO, "slow_start_config.slow_start_window")?;
    let min_weight = match min_weight_percent {
        None => DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT,
        Some(p) => {
            let envoy_types::pb::envoy::r#type::v3::Percent { value } = p;
            if !(0.0..=100.0).contains(value) {
                return Err(ConfigError::invalid(
                    "slow_start_config.min_weight_percent.value",
                    "value must be inside range [0, 100]",
                ));
            }
            *value
        }
    };
    let (aggression, aggression_key) = aggression.as_ref().map_or((1.0, String::new()), runtime_double);
    Ok(Some(model::SlowStart { window, aggression, aggression_key, min_weight: min_weight / 100.0 }))
}
