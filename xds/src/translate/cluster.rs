//! `envoy.config.cluster.v3.Cluster`, including the upstream `HttpProtocolOptions` extension.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as c;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as up;

use super::endpoint::load_assignment;
use super::http_connection_manager::{common_options, http1_options, http2_options, CommonOptions, Side};
use super::{at, bool_or, duration_or, enum_value, reject_set, u32_or, unpack, unsupported_field, AddressMode};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// The extension key (and message name) of the upstream HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Translate a `Cluster` (errors relative to it).
pub fn cluster(cl: &c::Cluster) -> ConfigResult<model::Cluster> {
    use c::cluster::{ClusterDiscoveryType as CDT, ClusterProtocolSelection, DiscoveryType as DT};
    let c::Cluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name,
        // Stats only.
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment: assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_jitter,
        // Only changes the retry cadence after a failed resolution.
        dns_failure_refresh_rate: _,
        respect_dns_ttl,
        dns_lookup_family,
        dns_resolvers,
        // DNS transport detail of the resolver.
        use_tcp_for_dns_lookups: _,
        dns_resolution_config,
        typed_dns_resolver_config,
        // Static clusters are warm immediately; EDS warming is the xDS client's business.
        wait_for_warm_on_init: _,
        outlier_detection,
        // Only used by ORIGINAL_DST clusters, which are rejected.
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        // Opaque to the data plane.
        metadata: _,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        // Only used with lrs_server, which is rejected.
        lrs_report_endpoint_metrics: _,
        // Stats only.
        track_timeout_budgets: _,
        // Stats only.
        track_cluster_stats: _,
        upstream_config,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = cl;
    reject_set(transport_socket_matches, "transport_socket_matches")?;
    reject_set(transport_socket_matcher, "transport_socket_matcher")?;
    reject_set(per_connection_buffer_high_watermark_timeout, "per_connection_buffer_high_watermark_timeout")?;
    reject_set(upstream_http_protocol_options, "upstream_http_protocol_options")?;
    reject_set(dns_jitter, "dns_jitter")?;
    reject_set(respect_dns_ttl, "respect_dns_ttl")?;
    reject_set(dns_resolvers, "dns_resolvers")?;
    reject_set(dns_resolution_config, "dns_resolution_config")?;
    reject_set(typed_dns_resolver_config, "typed_dns_resolver_config")?;
    let outlier_detection = match outlier_detection {
        None => None,
        Some(od) => Some(outlier(od).map_err(at("outlier_detection"))?),
    };
    reject_set(upstream_bind_config, "upstream_bind_config")?;
    // Keeping hosts EDS removed while they pass active health checks
    // (`/pending_dynamic_removal`) is not implemented.
    reject_set(ignore_health_on_host_removal, "ignore_health_on_host_removal")?;
    reject_set(lb_subset_config, "lb_subset_config")?;
    reject_set(upstream_connection_options, "upstream_connection_options")?;
    reject_set(filters, "filters")?;
    reject_set(lrs_server, "lrs_server")?;
    reject_set(upstream_config, "upstream_config")?;
    reject_set(preconnect_policy, "preconnect_policy")?;
    reject_set(connection_pool_per_downstream_connection, "connection_pool_per_downstream_connection")?;
    reject_set(queuing_policies, "queuing_policies")?;
    let lb_settings = super::load_balancing::lb_config(common_lb_config.as_ref(), lb_config.as_ref())?;
    let transport_socket = super::tls::upstream(transport_socket).map_err(at("transport_socket"))?;

    let discovery = match cluster_discovery_type {
        None => model::DiscoveryType::Static,
        Some(CDT::ClusterType(_)) => return Err(unsupported_field("cluster_type")),
        Some(CDT::Type(t)) => match enum_value::<DT>(*t, "type")? {
            DT::Static => model::DiscoveryType::Static,
            DT::StrictDns => model::DiscoveryType::StrictDns,
            DT::LogicalDns => model::DiscoveryType::LogicalDns,
            DT::Eds => model::DiscoveryType::Eds,
            DT::OriginalDst => {
                return Err(ConfigError::unsupported("type", "ORIGINAL_DST clusters are not supported by pinion"))
            }
        },
    };
    let eds_service_name = match eds_cluster_config {
        None => String::new(),
        Some(c::cluster::EdsClusterConfig { eds_config, service_name }) => {
            // Where EDS comes from (ADS or an api_config_source) is the xDS client's business;
            // only check that it is a source Pinion can use.
            if let Some(cs) = eds_config {
                super::config_source::config_source(cs).map_err(at("eds_cluster_config.eds_config"))?;
            }
            service_name.clone()
        }
    };
    // As Envoy: the typed `load_balancing_policy`, when set, decides instead of `lb_policy`;
    // a `ring_hash_lb_config`/`maglev_lb_config` for another policy is unused, as in Envoy.
    let lb_policy = match load_balancing_policy {
        Some(p) => super::load_balancing_policy::load_balancing_policy(p).map_err(at("load_balancing_policy"))?,
        None => legacy_lb_policy(*lb_policy, lb_config.as_ref(), lb_settings.use_hostname_for_hashing)?,
    };
    let dns_lookup_family = {
        use c::cluster::DnsLookupFamily as F;
        match enum_value::<F>(*dns_lookup_family, "dns_lookup_family")? {
            F::Auto => model::DnsLookupFamily::Auto,
            F::V4Only => model::DnsLookupFamily::V4Only,
            F::V6Only => model::DnsLookupFamily::V6Only,
            F::V4Preferred => model::DnsLookupFamily::V4Preferred,
            F::All => model::DnsLookupFamily::All,
        }
    };

    let mode = match discovery {
        model::DiscoveryType::StrictDns | model::DiscoveryType::LogicalDns => AddressMode::AllowDns,
        model::DiscoveryType::Static | model::DiscoveryType::Eds => AddressMode::RequireIp,
    };
    let load_assignment = match assignment {
        None => model::LoadAssignment {
            cluster_name: name.clone(),
            localities: Vec::new(),
            overprovisioning_factor: 140,
            weighted_priority_health: false,
        },
        Some(a) => load_assignment(a, mode).map_err(at("load_assignment"))?,
    };
    if discovery == model::DiscoveryType::LogicalDns {
        let n: usize = load_assignment.localities.iter().map(|l| l.endpoints.len()).sum();
        if load_assignment.localities.len() != 1 || n != 1 {
            return Err(ConfigError::invalid(
                "load_assignment",
                "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
            ));
        }
    }

    // Protocol: the typed extension, or the deprecated cluster-level fields.
    let mut protocol = model::UpstreamProtocol::Http1;
    let mut http2 = model::Http2Options::default();
    let mut common = CommonOptions::default();
    let deprecated_set =
        common_http_protocol_options.is_some() || http_protocol_options.is_some() || http2_protocol_options.is_some();
    let mut keys: Vec<&String> = typed_extension_protocol_options.keys().collect();
    keys.sort();
    for k in keys {
        let Some(any) = typed_extension_protocol_options.get(k) else { continue };
        let p = format!("typed_extension_protocol_options[\"{k}\"]");
        if k != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::unsupported(
                p,
                format!("protocol options extension '{k}' is not supported by pinion"),
            ));
        }
        if deprecated_set {
            return Err(ConfigError::invalid(
                p,
                "cannot combine typed_extension_protocol_options HttpProtocolOptions with the deprecated cluster-level protocol options",
            ));
        }
        let o: up::HttpProtocolOptions = unpack(any).map_err(at(&p))?;
        let (pr, h2, co) = upstream_http_options(&o).map_err(at(&p))?;
        protocol = pr;
        http2 = h2;
        common = co;
    }
    if let Some(o) = common_http_protocol_options {
        common = upstream_common_options(o).map_err(at("common_http_protocol_options"))?;
    }
    if let Some(o) = http_protocol_options {
        http1_options(o, Side::Upstream).map_err(at("http_protocol_options"))?;
    }
    if let Some(o) = http2_protocol_options {
        protocol = model::UpstreamProtocol::Http2;
        http2 = http2_options(o).map_err(at("http2_protocol_options"))?;
    }
    if enum_value::<ClusterProtocolSelection>(*protocol_selection, "protocol_selection")?
        == ClusterProtocolSelection::UseDownstreamProtocol
    {
        protocol = model::UpstreamProtocol::UseDownstream;
    }
    let health_check =
        super::health_check::health_checks(health_checks, name, protocol == model::UpstreamProtocol::Http2)?;
    if health_check.is_some() && *close_connections_on_host_health_failure {
        // Closing every worker's pooled connections to a host that fails a check is not
        // implemented: refuse rather than keep using them.
        return Err(ConfigError::unsupported(
            "close_connections_on_host_health_failure",
            "close_connections_on_host_health_failure with health_checks is not supported by pinion",
        ));
    }
    let mut max_requests = common.max_requests_per_connection;
    if let Some(m) = max_requests_per_connection {
        if common.max_requests_per_connection != 0 {
            return Err(ConfigError::invalid(
                "max_requests_per_connection",
                "cannot be combined with common_http_protocol_options.max_requests_per_connection",
            ));
        }
        max_requests = m.value;
    }

    Ok(model::Cluster {
        name: name.clone(),
        stat_name: if alt_stat_name.is_empty() { name.clone() } else { alt_stat_name.clone() },
        discovery,
        eds_service_name,
        connect_timeout: duration_or(connect_timeout, Duration::from_secs(5), "connect_timeout")?,
        lb_policy,
        lb_config: lb_settings,
        load_assignment,
        protocol,
        http2,
        idle_timeout: common.idle_timeout,
        max_requests_per_connection: max_requests,
        max_stream_duration: common.max_stream_duration,
        per_connection_buffer_limit_bytes: u32_or(per_connection_buffer_limit_bytes, 1024 * 1024),
        dns_refresh_rate: duration_or(dns_refresh_rate, Duration::from_secs(5), "dns_refresh_rate")?,
        dns_lookup_family,
        circuit_breakers: match circuit_breakers {
            None => model::CircuitBreakers::default(),
            Some(cb) => breakers(cb).map_err(at("circuit_breakers"))?,
        },
        close_connections_on_host_health_failure: *close_connections_on_host_health_failure,
        transport_socket,
        outlier_detection,
        health_check,
    })
}

/// `lb_policy` with its `lb_config` (ring hash and Maglev settings) and `common_lb_config`'s
/// `use_hostname_for_hashing`.
fn legacy_lb_policy(
    lb_policy: i32,
    lb_config: Option<&c::cluster::LbConfig>,
    use_hostname_for_hashing: bool,
) -> ConfigResult<model::LbPolicy> {
    use c::cluster::{LbConfig, LbPolicy as LB};
    Ok(match enum_value::<LB>(lb_policy, "lb_policy")? {
        LB::RoundRobin => model::LbPolicy::RoundRobin,
        LB::LeastRequest => model::LbPolicy::LeastRequest,
        LB::Random => model::LbPolicy::Random,
        LB::RingHash => {
            let cfg = match lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => Some(r),
                _ => None,
            };
            model::LbPolicy::RingHash(super::load_balancing_policy::legacy_ring_hash(cfg, use_hostname_for_hashing)?)
        }
        LB::Maglev => {
            let cfg = match lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => Some(m),
                _ => None,
            };
            model::LbPolicy::Maglev(super::load_balancing_policy::legacy_maglev(cfg, use_hostname_for_hashing)?)
        }
        other => {
            return Err(ConfigError::unsupported(
                "lb_policy",
                format!("lb_policy {} is not supported by pinion", other.as_str_name()),
            ))
        }
    })
}

/// `Cluster.outlier_detection`, with Envoy's defaults (`DetectorConfig`).
fn outlier(od: &c::OutlierDetection) -> ConfigResult<model::OutlierDetection> {
    let c::OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = od;
    // The extension monitors (`envoy.outlier_detection_monitors.*`) are not implemented.
    reject_set(monitors, "monitors")?;
    // Marking hosts degraded needs DEGRADED_OUTLIER_DETECTION and degraded-aware load
    // balancing, which Pinion does not have.
    if bool_or(detect_degraded_hosts, false) {
        return Err(unsupported_field("detect_degraded_hosts"));
    }
    let d = model::OutlierDetection::default();
    let base_ejection_time = duration_or(base_ejection_time, d.base_ejection_time, "base_ejection_time")?;
    // Unset: 300s or the base time, whichever is larger (Envoy's DetectorConfig).
    let max_ejection_time =
        duration_or(max_ejection_time, d.max_ejection_time.max(base_ejection_time), "max_ejection_time")?;
    // Envoy compares whole milliseconds (`DetectorImpl::create`).
    if max_ejection_time.as_millis() < base_ejection_time.as_millis() {
        return Err(ConfigError::invalid(
            "max_ejection_time",
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
        ));
    }
    Ok(model::OutlierDetection {
        consecutive_5xx: u32_or(consecutive_5xx, d.consecutive_5xx),
        interval: duration_or(interval, d.interval, "interval")?,
        base_ejection_time,
        max_ejection_percent: u32_or(max_ejection_percent, d.max_ejection_percent),
        enforcing_consecutive_5xx: u32_or(enforcing_consecutive_5xx, d.enforcing_consecutive_5xx),
        enforcing_success_rate: u32_or(enforcing_success_rate, d.enforcing_success_rate),
        success_rate_minimum_hosts: u32_or(success_rate_minimum_hosts, d.success_rate_minimum_hosts),
        success_rate_request_volume: u32_or(success_rate_request_volume, d.success_rate_request_volume),
        success_rate_stdev_factor: u32_or(success_rate_stdev_factor, d.success_rate_stdev_factor),
        consecutive_gateway_failure: u32_or(consecutive_gateway_failure, d.consecutive_gateway_failure),
        enforcing_consecutive_gateway_failure: u32_or(
            enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
        ),
        split_external_local_origin_errors: *split_external_local_origin_errors,
        consecutive_local_origin_failure: u32_or(consecutive_local_origin_failure, d.consecutive_local_origin_failure),
        enforcing_consecutive_local_origin_failure: u32_or(
            enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
        ),
        enforcing_local_origin_success_rate: u32_or(
            enforcing_local_origin_success_rate,
            d.enforcing_local_origin_success_rate,
        ),
        failure_percentage_threshold: u32_or(failure_percentage_threshold, d.failure_percentage_threshold),
        enforcing_failure_percentage: u32_or(enforcing_failure_percentage, d.enforcing_failure_percentage),
        enforcing_failure_percentage_local_origin: u32_or(
            enforcing_failure_percentage_local_origin,
            d.enforcing_failure_percentage_local_origin,
        ),
        failure_percentage_minimum_hosts: u32_or(failure_percentage_minimum_hosts, d.failure_percentage_minimum_hosts),
        failure_percentage_request_volume: u32_or(
            failure_percentage_request_volume,
            d.failure_percentage_request_volume,
        ),
        max_ejection_time,
        max_ejection_time_jitter: duration_or(
            max_ejection_time_jitter,
            d.max_ejection_time_jitter,
            "max_ejection_time_jitter",
        )?,
        successful_active_health_check_uneject_host: bool_or(
            successful_active_health_check_uneject_host,
            d.successful_active_health_check_uneject_host,
        ),
        always_eject_one_host: bool_or(always_eject_one_host, d.always_eject_one_host),
    })
}

/// Upstream `common_http_protocol_options`: idle_timeout, max_requests_per_connection and
/// max_stream_duration.
fn upstream_common_options(o: &core::HttpProtocolOptions) -> ConfigResult<CommonOptions> {
    // The other fields are destructured and checked by common_options.
    reject_set(&o.max_headers_count, "max_headers_count")?;
    // Upstream connection durations (Envoy's pool draining) are not implemented; the HCM's
    // downstream ones and upstream stream durations are.
    for (set, field) in [
        (o.max_connection_duration.is_some(), "max_connection_duration"),
        (o.max_connection_duration_jitter.is_some(), "max_connection_duration_jitter"),
    ] {
        if set {
            return Err(ConfigError::unsupported(
                field,
                format!("{field} is not supported by pinion on clusters (upstream connections)"),
            ));
        }
    }
    reject_set(&o.headers_with_underscores_action, "headers_with_underscores_action")?;
    common_options(o)
}

fn upstream_http_options(
    o: &up::HttpProtocolOptions,
) -> ConfigResult<(model::UpstreamProtocol, model::Http2Options, CommonOptions)> {
    use up::http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions as U};
    let up::HttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = o;
    reject_set(upstream_http_protocol_options, "upstream_http_protocol_options")?;
    reject_set(http_filters, "http_filters")?;
    reject_set(header_validation_config, "header_validation_config")?;
    reject_set(outlier_detection, "outlier_detection")?;
    reject_set(request_mirror_policies, "request_mirror_policies")?;
    reject_set(hash_policy, "hash_policy")?;
    reject_set(retry_policy, "retry_policy")?;
    let common = match common_http_protocol_options {
        None => CommonOptions::default(),
        Some(c) => upstream_common_options(c).map_err(at("common_http_protocol_options"))?,
    };
    let mut http2 = model::Http2Options::default();
    let protocol = match upstream_protocol_options {
        // Envoy's default: HTTP/1.1 with default options.
        None => model::UpstreamProtocol::Http1,
        Some(U::ExplicitHttpConfig(up::http_protocol_options::ExplicitHttpConfig { protocol_config })) => {
            match protocol_config {
                None => model::UpstreamProtocol::Http1,
                Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                    http1_options(h1, Side::Upstream).map_err(at("explicit_http_config.http_protocol_options"))?;
                    model::UpstreamProtocol::Http1
                }
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    http2 = http2_options(h2).map_err(at("explicit_http_config.http2_protocol_options"))?;
                    model::UpstreamProtocol::Http2
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(unsupported_field("explicit_http_config.http3_protocol_options"))
                }
            }
        }
        Some(U::UseDownstreamProtocolConfig(d)) => {
            let up::http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options,
                http2_protocol_options,
                http3_protocol_options,
            } = d;
            reject_set(http3_protocol_options, "use_downstream_protocol_config.http3_protocol_options")?;
            if let Some(h1) = http_protocol_options {
                http1_options(h1, Side::Upstream)
                    .map_err(at("use_downstream_protocol_config.http_protocol_options"))?;
            }
            if let Some(h2) = http2_protocol_options {
                http2 = http2_options(h2).map_err(at("use_downstream_protocol_config.http2_protocol_options"))?;
            }
            model::UpstreamProtocol::UseDownstream
        }
        Some(U::AutoConfig(_)) => return Err(unsupported_field("auto_config")),
    };
    Ok((protocol, http2, common))
}

/// `circuit_breakers`: for each priority, the first `thresholds` entry of that priority (as
/// Envoy's `ResourceManagers::load` picks it; later entries of the same priority are ignored)
/// and the `max_connections` of its first `per_host_thresholds` entry.
fn breakers(cb: &c::CircuitBreakers) -> ConfigResult<model::CircuitBreakers> {
    let c::CircuitBreakers { thresholds, per_host_thresholds } = cb;
    let mut out = model::CircuitBreakers::default();
    let mut seen = [false; 2];
    for (i, t) in thresholds.iter().enumerate() {
        let p = format!("thresholds[{i}]");
        let (priority, parsed) = threshold(t).map_err(at(&p))?;
        if !std::mem::replace(&mut seen[priority.index()], true) {
            match priority {
                model::RoutingPriority::Default => out.default = parsed,
                model::RoutingPriority::High => out.high = parsed,
            }
        }
    }
    let mut seen = [false; 2];
    for (i, t) in per_host_thresholds.iter().enumerate() {
        let p = format!("per_host_thresholds[{i}]");
        let c::circuit_breakers::Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            // Envoy publishes no per-host gauges, so this has no effect here.
            track_remaining: _,
            max_connection_pools,
        } = t;
        let priority = routing_priority(*priority).map_err(at(&p))?;
        if std::mem::replace(&mut seen[priority.index()], true) {
            continue; // Envoy only reads the first entry of a priority
        }
        // Envoy honours only max_connections per host and refuses the cluster otherwise,
        // with this message.
        let other = [
            ("max_pending_requests", max_pending_requests.is_some()),
            ("max_requests", max_requests.is_some()),
            ("max_retries", max_retries.is_some()),
            ("max_connection_pools", max_connection_pools.is_some()),
            ("retry_budget", retry_budget.is_some()),
        ];
        if let Some((field, _)) = other.iter().find(|(_, set)| *set) {
            return Err(ConfigError::invalid(format!("{p}.{field}"), "Unsupported field in per_host_thresholds"));
        }
        if let Some(m) = max_connections {
            let limits = match priority {
                model::RoutingPriority::Default => &mut out.default,
                model::RoutingPriority::High => &mut out.high,
            };
            limits.max_connections_per_host = u64::from(m.value);
        }
    }
    Ok(out)
}

/// One `Thresholds` entry of `thresholds` (errors relative to it).
fn threshold(t: &c::circuit_breakers::Thresholds) -> ConfigResult<(model::RoutingPriority, model::Thresholds)> {
    let c::circuit_breakers::Thresholds {
        priority,
        max_connections,
        max_pending_requests,
        max_requests,
        max_retries,
        retry_budget,
        track_remaining,
        max_connection_pools,
    } = t;
    let priority = routing_priority(*priority)?;
    let d = model::Thresholds::default();
    let wide = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u64| {
        v.as_ref().map_or(default, |v| u64::from(v.value))
    };
    let retry_budget = match retry_budget {
        None => None,
        Some(b) => {
            let c::circuit_breakers::thresholds::RetryBudget { budget_percent, min_retry_concurrency, budget_interval } =
                b;
            // 0 (the default) counts only the requests active now, which is what Pinion does.
            if !duration_or(budget_interval, Duration::ZERO, "retry_budget.budget_interval")?.is_zero() {
                return Err(unsupported_field("retry_budget.budget_interval"));
            }
            let d = model::RetryBudget::default();
            Some(model::RetryBudget {
                budget_percent: budget_percent.as_ref().map_or(d.budget_percent, |p| p.value),
                min_retry_concurrency: u32_or(min_retry_concurrency, d.min_retry_concurrency),
            })
        }
    };
    Ok((
        priority,
        model::Thresholds {
            max_connections: wide(max_connections, d.max_connections),
            max_pending_requests: wide(max_pending_requests, d.max_pending_requests),
            max_requests: wide(max_requests, d.max_requests),
            max_retries: wide(max_retries, d.max_retries),
            retry_budget,
            track_remaining: *track_remaining,
            max_connection_pools: wide(max_connection_pools, d.max_connection_pools),
            max_connections_per_host: d.max_connections_per_host,
        },
    ))
}

/// `RoutingPriority` at field `priority`.
pub(crate) fn routing_priority(v: i32) -> ConfigResult<model::RoutingPriority> {
    use core::RoutingPriority as P;
    Ok(match enum_value::<P>(v, "priority")? {
        P::Default => model::RoutingPriority::Default,
        P::High => model::RoutingPriority::High,
    })
}
