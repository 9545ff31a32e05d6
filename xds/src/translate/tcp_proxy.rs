//! `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tp;

use super::access_log::access_logs;
use super::route::check_weight_sum;
use super::{at, duration_zero_disables, reject_set, u32_or};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Envoy's default TCP proxy idle timeout.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Translate a `TcpProxy`; errors relative to it.
pub(crate) fn tcp_proxy(t: &tp::TcpProxy) -> ConfigResult<model::TcpProxy> {
    use tp::tcp_proxy::ClusterSpecifier as CS;
    let tp::TcpProxy {
        stat_prefix,
        on_demand,
        metadata_match,
        idle_timeout,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close,
        cluster_specifier,
    } = t;
    reject_set(on_demand, "on_demand")?;
    reject_set(metadata_match, "metadata_match")?;
    reject_set(downstream_idle_timeout, "downstream_idle_timeout")?;
    reject_set(upstream_idle_timeout, "upstream_idle_timeout")?;
    reject_set(backoff_options, "backoff_options")?;
    let hash_source_ip = source_ip_hash_policy(hash_policy).map_err(at("hash_policy"))?;
    reject_set(tunneling_config, "tunneling_config")?;
    reject_set(max_downstream_connection_duration, "max_downstream_connection_duration")?;
    reject_set(
        max_downstream_connection_duration_jitter_percentage,
        "max_downstream_connection_duration_jitter_percentage",
    )?;
    reject_set(access_log_flush_interval, "access_log_flush_interval")?;
    reject_set(flush_access_log_on_connected, "flush_access_log_on_connected")?;
    reject_set(access_log_options, "access_log_options")?;
    reject_set(proxy_protocol_tlvs, "proxy_protocol_tlvs")?;
    reject_set(proxy_protocol_tlv_merge_policy, "proxy_protocol_tlv_merge_policy")?;
    reject_set(upstream_connect_mode, "upstream_connect_mode")?;
    reject_set(max_early_data_bytes, "max_early_data_bytes")?;
    reject_set(check_drain_close, "check_drain_close")?;

    let cluster = match cluster_specifier {
        None => return Err(ConfigError::invalid("", "one of cluster or weighted_clusters must be set")),
        Some(CS::Cluster(c)) => model::TcpProxyCluster::Single(c.clone()),
        Some(CS::WeightedClusters(w)) => {
            let tp::tcp_proxy::WeightedCluster { clusters } = w;
            let mut out = Vec::with_capacity(clusters.len());
            let mut sum: u64 = 0;
            for (i, c) in clusters.iter().enumerate() {
                let tp::tcp_proxy::weighted_cluster::ClusterWeight { name, weight, metadata_match } = c;
                reject_set(metadata_match, &format!("weighted_clusters.clusters[{i}].metadata_match"))?;
                sum = sum.saturating_add(u64::from(*weight));
                out.push(model::WeightedCluster {
                    name: name.clone(),
                    weight: *weight,
                    headers: model::HeaderMutations::default(),
                    host_rewrite_literal: None,
                    per_filter_config: Vec::new(),
                });
            }
            check_weight_sum(sum).map_err(at("weighted_clusters"))?;
            model::TcpProxyCluster::Weighted(out)
        }
    };
    Ok(model::TcpProxy {
        stat_prefix: stat_prefix.clone(),
        cluster,
        idle_timeout: duration_zero_disables(idle_timeout, Some(DEFAULT_IDLE_TIMEOUT), "idle_timeout")?,
        max_connect_attempts: u32_or(max_connect_attempts, 1),
        access_logs: access_logs(access_log).map_err(at("access_log"))?,
        hash_source_ip,
    })
}

/// `hash_policy` (at most one entry, PGV): whether connections are hashed by the client IP
/// for ring hash and Maglev clusters. `filter_state` is refused: Pinion has no filter state.
fn source_ip_hash_policy(policies: &[envoy_types::pb::envoy::r#type::v3::HashPolicy]) -> ConfigResult<bool> {
    use envoy_types::pb::envoy::r#type::v3::hash_policy::{PolicySpecifier as S, SourceIp};
    use envoy_types::pb::envoy::r#type::v3::HashPolicy;
    let mut source_ip = false;
    for (i, p) in policies.iter().enumerate() {
        let HashPolicy { policy_specifier } = p;
        match policy_specifier {
            Some(S::SourceIp(SourceIp {})) => source_ip = true,
            Some(S::FilterState(_)) => {
                return Err(ConfigError::unsupported(
                    format!("[{i}].filter_state"),
                    "filter_state hash policies are not supported by pinion",
                ))
            }
            None => return Err(ConfigError::invalid(format!("[{i}]"), "one of source_ip, filter_state must be set")),
        }
    }
    Ok(source_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{message_from_str, DecodeOptions, Format};
    use crate::ErrorKind;

    fn tcp(policy: &str) -> ConfigResult<model::TcpProxy> {
        let yaml = format!("stat_prefix: t\ncluster: svc\n{policy}");
        let proto: tp::TcpProxy = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default())?;
        tcp_proxy(&proto)
    }

    #[test]
    fn source_ip_hash_policy() {
        assert!(!tcp("").unwrap().hash_source_ip);
        assert!(tcp("hash_policy: [{ source_ip: {} }]\n").unwrap().hash_source_ip);
        let err = tcp("hash_policy: [{ filter_state: { key: k } }]\n").unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "hash_policy[0].filter_state"), "{err}");
    }
}
