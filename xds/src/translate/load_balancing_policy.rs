//! The hash-based load balancers' settings (`ring_hash_lb_config`, `maglev_lb_config`) and
//! `Cluster.load_balancing_policy`, the typed-extension way of choosing a policy.

use envoy_types::pb::envoy::config::cluster::v3 as c;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::google::protobuf as pbuf;

use super::{at, enum_value, reject_set, type_name, unpack};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Envoy's bound on a ring (`maximum_ring_size` default and PGV limit).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// `lb_policy: RING_HASH` with the cluster's `ring_hash_lb_config` (if any) and
/// `common_lb_config`'s `use_hostname_for_hashing`.
pub(crate) fn legacy_ring_hash(
    cfg: Option<&c::cluster::RingHashLbConfig>,
    use_hostname_for_hashing: bool,
) -> ConfigResult<model::RingHashConfig> {
    use c::cluster::ring_hash_lb_config::HashFunction as F;
    let mut out = model::RingHashConfig { use_hostname_for_hashing, ..model::RingHashConfig::default() };
    let Some(cfg) = cfg else { return Ok(out) };
    let c::cluster::RingHashLbConfig { minimum_ring_size, hash_function, maximum_ring_size } = cfg;
    if enum_value::<F>(*hash_function, "ring_hash_lb_config.hash_function")? == F::MurmurHash2 {
        return Err(murmur("ring_hash_lb_config.hash_function"));
    }
    out.minimum_ring_size = u64_or(minimum_ring_size, out.minimum_ring_size);
    out.maximum_ring_size = u64_or(maximum_ring_size, out.maximum_ring_size);
    ring_sizes(out).map_err(at("ring_hash_lb_config"))
}

/// `lb_policy: MAGLEV` with the cluster's `maglev_lb_config` (if any) and
/// `common_lb_config`'s `use_hostname_for_hashing`.
pub(crate) fn legacy_maglev(
    cfg: Option<&c::cluster::MaglevLbConfig>,
    use_hostname_for_hashing: bool,
) -> ConfigResult<model::MaglevConfig> {
    let mut out = model::MaglevConfig { use_hostname_for_hashing, ..model::MaglevConfig::default() };
    if let Some(c::cluster::MaglevLbConfig { table_size }) = cfg {
        out.table_size = u64_or(table_size, out.table_size);
    }
    maglev_table_size(out).map_err(at("maglev_lb_config"))
}

/// `Cluster.load_balancing_policy` (errors relative to it): as Envoy, the first policy in the
/// list decides. Ring hash, Maglev, round robin, least request and random are supported; any
/// other extension Envoy has is refused rather than skipped (Envoy would use it).
pub(crate) fn load_balancing_policy(p: &c::LoadBalancingPolicy) -> ConfigResult<model::LbPolicy> {
    let c::LoadBalancingPolicy { policies } = p;
    let Some(first) = policies.first() else {
        return Err(ConfigError::invalid("policies", "at least one policy is required"));
    };
    let c::load_balancing_policy::Policy { typed_extension_config } = first;
    let Some(core::TypedExtensionConfig { name: _, typed_config }) = typed_extension_config else {
        return Err(ConfigError::invalid("policies[0].typed_extension_config", "typed_extension_config is required"));
    };
    let Some(any) = typed_config else {
        return Err(ConfigError::invalid(
            "policies[0].typed_extension_config.typed_config",
            "typed_config is required",
        ));
    };
    policy(any).map_err(at("policies[0].typed_extension_config.typed_config"))
}

fn policy(any: &pbuf::Any) -> ConfigResult<model::LbPolicy> {
    use prost::Name;
    let t = type_name(any);
    if t == lbp::ring_hash::v3::RingHash::full_name() {
        return ring_hash(&unpack(any)?).map(model::LbPolicy::RingHash);
    }
    if t == lbp::maglev::v3::Maglev::full_name() {
        return maglev(&unpack(any)?).map(model::LbPolicy::Maglev);
    }
    if t == lbp::round_robin::v3::RoundRobin::full_name() {
        let lbp::round_robin::v3::RoundRobin { slow_start_config, locality_lb_config } = unpack(any)?;
        reject_set(&slow_start_config, "slow_start_config")?;
        reject_set(&locality_lb_config, "locality_lb_config")?;
        return Ok(model::LbPolicy::RoundRobin);
    }
    if t == lbp::least_request::v3::LeastRequest::full_name() {
        let lbp::least_request::v3::LeastRequest {
            choice_count,
            active_request_bias,
            slow_start_config,
            locality_lb_config,
            enable_full_scan,
            selection_method,
        } = unpack(any)?;
        // Pinion's least request samples Envoy's default two hosts.
        if choice_count.is_some_and(|c| c.value != 2) {
            return Err(super::unsupported_field("choice_count"));
        }
        reject_set(&active_request_bias, "active_request_bias")?;
        reject_set(&slow_start_config, "slow_start_config")?;
        reject_set(&locality_lb_config, "locality_lb_config")?;
        reject_set(&enable_full_scan, "enable_full_scan")?;
        reject_set(&selection_method, "selection_method")?;
        return Ok(model::LbPolicy::LeastRequest);
    }
    if t == lbp::random::v3::Random::full_name() {
        let lbp::random::v3::Random { locality_lb_config } = unpack(any)?;
        reject_set(&locality_lb_config, "locality_lb_config")?;
        return Ok(model::LbPolicy::Random);
    }
    Err(ConfigError::unsupported("", format!("load balancing policy '{t}' is not supported by pinion")))
}

/// `envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash`.
fn ring_hash(r: &lbp::ring_hash::v3::RingHash) -> ConfigResult<model::RingHashConfig> {
    use lbp::ring_hash::v3::ring_hash::HashFunction as F;
    #[allow(deprecated)]
    let lbp::ring_hash::v3::RingHash {
        hash_function,
        minimum_ring_size,
        maximum_ring_size,
        use_hostname_for_hashing,
        hash_balance_factor,
        consistent_hashing_lb_config,
        locality_weighted_lb_config,
    } = r;
    if enum_value::<F>(*hash_function, "hash_function")? == F::MurmurHash2 {
        return Err(murmur("hash_function"));
    }
    reject_set(hash_balance_factor, "hash_balance_factor")?;
    reject_set(locality_weighted_lb_config, "locality_weighted_lb_config")?;
    let defaults = model::RingHashConfig::default();
    // As Envoy: `consistent_hashing_lb_config`, when present, replaces the deprecated field.
    let use_hostname = match consistent_hashing_lb_config {
        Some(ch) => consistent_hashing(ch).map_err(at("consistent_hashing_lb_config"))?,
        None => *use_hostname_for_hashing,
    };
    ring_sizes(model::RingHashConfig {
        minimum_ring_size: u64_or(minimum_ring_size, defaults.minimum_ring_size),
        maximum_ring_size: u64_or(maximum_ring_size, defaults.maximum_ring_size),
        use_hostname_for_hashing: use_hostname,
    })
}

/// `envoy.extensions.load_balancing_policies.maglev.v3.Maglev`.
fn maglev(m: &lbp::maglev::v3::Maglev) -> ConfigResult<model::MaglevConfig> {
    let lbp::maglev::v3::Maglev { table_size, consistent_hashing_lb_config, locality_weighted_lb_config } = m;
    reject_set(locality_weighted_lb_config, "locality_weighted_lb_config")?;
    let use_hostname = match consistent_hashing_lb_config {
        Some(ch) => consistent_hashing(ch).map_err(at("consistent_hashing_lb_config"))?,
        None => false,
    };
    maglev_table_size(model::MaglevConfig {
        table_size: u64_or(table_size, model::MaglevConfig::default().table_size),
        use_hostname_for_hashing: use_hostname,
    })
}

/// `ConsistentHashingLbConfig` of the typed policies: `use_hostname_for_hashing`. Bounded
/// load (`hash_balance_factor`) and policy-level `hash_policy` are not implemented.
fn consistent_hashing(ch: &lbp::common::v3::ConsistentHashingLbConfig) -> ConfigResult<bool> {
    let lbp::common::v3::ConsistentHashingLbConfig { use_hostname_for_hashing, hash_balance_factor, hash_policy } = ch;
    reject_set(hash_balance_factor, "hash_balance_factor")?;
    reject_set(hash_policy, "hash_policy")?;
    Ok(*use_hostname_for_hashing)
}

/// The cluster-level `common_lb_config.consistent_hashing_lb_config`:
/// `use_hostname_for_hashing`; bounded load (`hash_balance_factor`) is refused.
pub(crate) fn legacy_consistent_hashing(
    ch: &c::cluster::common_lb_config::ConsistentHashingLbConfig,
) -> ConfigResult<bool> {
    let c::cluster::common_lb_config::ConsistentHashingLbConfig { use_hostname_for_hashing, hash_balance_factor } = ch;
    reject_set(hash_balance_factor, "hash_balance_factor")?;
    Ok(*use_hostname_for_hashing)
}

/// Envoy's check: `minimum_ring_size` at most `maximum_ring_size` (both at most 8M by PGV).
fn ring_sizes(cfg: model::RingHashConfig) -> ConfigResult<model::RingHashConfig> {
    if cfg.minimum_ring_size > cfg.maximum_ring_size {
        return Err(ConfigError::invalid(
            "minimum_ring_size",
            format!(
                "ring hash: minimum_ring_size ({}) > maximum_ring_size ({})",
                cfg.minimum_ring_size, cfg.maximum_ring_size
            ),
        ));
    }
    if cfg.maximum_ring_size > MAX_RING_SIZE || cfg.minimum_ring_size == 0 {
        return Err(ConfigError::invalid("maximum_ring_size", "ring sizes must be in 1..=8388608"));
    }
    Ok(cfg)
}

/// Envoy's check: the Maglev table size must be a prime.
fn maglev_table_size(cfg: model::MaglevConfig) -> ConfigResult<model::MaglevConfig> {
    if !is_prime(cfg.table_size) {
        return Err(ConfigError::invalid("table_size", "The table size of maglev must be prime number"));
    }
    Ok(cfg)
}

fn murmur(field: &str) -> ConfigError {
    ConfigError::unsupported(field, "hash_function MURMUR_HASH_2 is not supported by pinion (only XX_HASH)")
}

fn u64_or(v: &Option<pbuf::UInt64Value>, default: u64) -> u64 {
    v.as_ref().map_or(default, |w| w.value)
}

/// Trial division: table sizes are at most 5000011 (PGV), so this is at most ~1100 steps.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(is_prime(5_000_011));
    }
}
