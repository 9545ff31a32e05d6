//! `RouteConfiguration`, `VirtualHost`, `Route`, `RouteAction`, redirects, direct responses and
//! header mutations.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as r;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;

use super::http_filter::{per_filter_config, route_cors_policy};
use super::matcher::{header_matcher, query_parameter_matcher, regex_matcher, regex_substitute};
use super::{
    at, bool_or, data_source, duration, duration_zero_disables, enum_value, has_formatter, is_type, reject_set,
    type_name, u32_or, unpack, unsupported_field,
};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Envoy's default route timeout.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default `max_direct_response_body_size_bytes`.
const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// Translate a `RouteConfiguration` (errors relative to it).
pub fn route_configuration(rc: &r::RouteConfiguration) -> ConfigResult<model::RouteConfiguration> {
    route_configuration_in(rc, &[])
}

/// What a route table's translation needs from around it.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    /// `max_direct_response_body_size_bytes` of the route configuration.
    max_body: u32,
    /// Names of the HCM's `is_optional` HTTP filters (known for inline route configs only).
    optional_filters: &'a [String],
}

/// Translate a `RouteConfiguration` inside an HCM whose `is_optional` HTTP filters are
/// `optional_filters` (errors relative to it).
pub(crate) fn route_configuration_in(
    rc: &r::RouteConfiguration,
    optional_filters: &[String],
) -> ConfigResult<model::RouteConfiguration> {
    let r::RouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        // Opaque to the data plane (filters may read it; Pinion has none that do).
        metadata: _,
        route_specifiers,
    } = rc;
    let vhds = match vhds {
        None => None,
        Some(r::Vhds { config_source }) => {
            let cs = config_source.as_ref().ok_or_else(|| ConfigError::invalid("vhds.config_source", "must be set"))?;
            let cs = crate::translate::config_source::config_source(cs).map_err(at("vhds.config_source"))?;
            if let model::ConfigSourceKind::Api(a) = &cs.kind {
                if a.api_type != model::ApiType::DeltaGrpc {
                    return Err(ConfigError::invalid(
                        "vhds.config_source",
                        "vhds: only 'DELTA_GRPC' or 'ADS' (which uses Delta xDS) is supported as a config source.",
                    ));
                }
            }
            Some(cs)
        }
    };
    reject_set(cluster_specifier_plugins, "cluster_specifier_plugins")?;
    reject_set(request_mirror_policies, "request_mirror_policies")?;
    reject_set(ignore_port_in_host_matching, "ignore_port_in_host_matching")?;
    reject_set(vhost_header, "vhost_header")?;
    reject_set(ignore_path_parameters_in_path_matching, "ignore_path_parameters_in_path_matching")?;
    reject_set(route_specifiers, "route_specifiers")?;
    let max_body = u32_or(max_direct_response_body_size_bytes, DEFAULT_MAX_DIRECT_RESPONSE_BODY);
    let ctx = Ctx { max_body, optional_filters };
    let per_filter_config =
        per_filter_config(typed_per_filter_config, optional_filters).map_err(at("typed_per_filter_config"))?;

    let headers = header_mutations(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    )?;
    let mut internal = Vec::with_capacity(internal_only_headers.len());
    for (i, h) in internal_only_headers.iter().enumerate() {
        internal.push(header_name(h).map_err(at(format!("internal_only_headers[{i}]")))?.to_string());
    }

    let mut names = HashSet::new();
    let mut domains_seen = HashSet::new();
    let mut vhosts = Vec::with_capacity(virtual_hosts.len());
    for (i, vh) in virtual_hosts.iter().enumerate() {
        let p = format!("virtual_hosts[{i}]");
        if !names.insert(vh.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{p}.name"),
                format!("duplicate virtual host name '{}' in route config '{name}'", vh.name),
            ));
        }
        for (j, d) in vh.domains.iter().enumerate() {
            if !domains_seen.insert(d.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    format!("{p}.domains[{j}]"),
                    format!(
                        "Only unique values for domains are permitted. Duplicate entry of domain {d} in route {name}"
                    ),
                ));
            }
        }
        vhosts.push(Arc::new(virtual_host(vh, ctx).map_err(at(&p))?));
    }

    Ok(model::RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vhosts,
        headers,
        internal_only_headers: internal,
        max_direct_response_body_size_bytes: max_body,
        most_specific_header_mutations_wins: *most_specific_header_mutations_wins,
        validate_clusters: validate_clusters.as_ref().map(|b| b.value),
        vhds,
        per_filter_config,
    })
}

/// Classify one virtual host domain (lowercased); errors relative to the domain.
pub(crate) fn domain(d: &str) -> ConfigResult<model::DomainMatcher> {
    let d = d.to_ascii_lowercase();
    if d.is_empty() {
        return Err(ConfigError::invalid("", "domain must not be empty"));
    }
    if d == "*" {
        return Ok(model::DomainMatcher::Any);
    }
    let stars = d.matches('*').count();
    let bad = || {
        ConfigError::invalid(
            "",
            format!(
                "invalid domain '{d}': a wildcard '*' is only allowed once, as the whole domain, a prefix or a suffix"
            ),
        )
    };
    match stars {
        0 => Ok(model::DomainMatcher::Exact(d)),
        1 => {
            if let Some(rest) = d.strip_prefix('*') {
                Ok(model::DomainMatcher::Suffix(rest.to_string()))
            } else if let Some(rest) = d.strip_suffix('*') {
                Ok(model::DomainMatcher::Prefix(rest.to_string()))
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn virtual_host(vh: &r::VirtualHost, ctx: Ctx<'_>) -> ConfigResult<model::VirtualHost> {
    let r::VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        // Virtual clusters only produce stats.
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        // Opaque to the data plane.
        metadata: _,
        route_specifiers,
    } = vh;
    reject_set(matcher, "matcher")?;
    reject_set(rate_limits, "rate_limits")?;
    reject_set(retry_policy_typed_config, "retry_policy_typed_config")?;
    reject_set(hedge_policy, "hedge_policy")?;
    reject_set(include_is_timeout_retry_header, "include_is_timeout_retry_header")?;
    // The newer limit also bounds the HCM's buffering for filters, which Pinion has none of.
    reject_set(request_body_buffer_limit, "request_body_buffer_limit")?;
    reject_set(request_mirror_policies, "request_mirror_policies")?;
    reject_set(route_specifiers, "route_specifiers")?;

    let mut out_domains = Vec::with_capacity(domains.len());
    for (i, d) in domains.iter().enumerate() {
        out_domains.push(domain(d).map_err(at(format!("domains[{i}]")))?);
    }
    let require_tls = match enum_value::<r::virtual_host::TlsRequirementType>(*require_tls, "require_tls")? {
        r::virtual_host::TlsRequirementType::None => model::RequireTls::None,
        r::virtual_host::TlsRequirementType::ExternalOnly => model::RequireTls::ExternalOnly,
        r::virtual_host::TlsRequirementType::All => model::RequireTls::All,
    };
    let retry_policy = retry_policy.as_ref().map(retry).transpose().map_err(at("retry_policy"))?;
    let mut out_routes = Vec::with_capacity(routes.len());
    for (i, rt) in routes.iter().enumerate() {
        out_routes.push(Arc::new(route(rt, ctx).map_err(at(format!("routes[{i}]")))?));
    }
    let per_filter_config =
        per_filter_config(typed_per_filter_config, ctx.optional_filters).map_err(at("typed_per_filter_config"))?;
    let legacy_cors = cors.as_ref().map(route_cors_policy).transpose().map_err(at("cors"))?.map(Arc::new);
    Ok(model::VirtualHost {
        name: name.clone(),
        domains: out_domains,
        routes: out_routes,
        headers: header_mutations(
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
        )?,
        require_tls,
        retry_policy,
        include_request_attempt_count: *include_request_attempt_count,
        include_attempt_count_in_response: *include_attempt_count_in_response,
        per_request_buffer_limit_bytes: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
        per_filter_config,
        legacy_cors,
    })
}

fn route(rt: &r::Route, ctx: Ctx<'_>) -> ConfigResult<model::Route> {
    use r::route::Action;
    let r::Route {
        name,
        r#match,
        // Opaque to the data plane.
        metadata: _,
        // Tracing-only (span name).
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        // Tracing-only (sampling overrides and custom tags).
        tracing: _,
        per_request_buffer_limit_bytes,
        // Stats only (per-route stats prefix).
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = rt;
    reject_set(request_body_buffer_limit, "request_body_buffer_limit")?;
    reject_set(route_specifiers, "route_specifiers")?;
    let Some(m) = r#match else {
        return Err(ConfigError::invalid("match", "match is required"));
    };
    let matcher = route_match(m).map_err(at("match"))?;
    let action = match action {
        None => {
            return Err(ConfigError::invalid(
                "",
                "one of route, redirect, direct_response or non_forwarding_action must be set",
            ))
        }
        Some(Action::Route(a)) => model::RouteAction::Forward(Arc::new(route_action(a, ctx).map_err(at("route"))?)),
        Some(Action::Redirect(a)) => model::RouteAction::Redirect(Arc::new(redirect(a).map_err(at("redirect"))?)),
        Some(Action::DirectResponse(a)) => model::RouteAction::DirectResponse(Arc::new(
            direct_response(a, ctx.max_body).map_err(at("direct_response"))?,
        )),
        Some(Action::NonForwardingAction(r::NonForwardingAction {})) => model::RouteAction::NonForwarding,
        Some(Action::FilterAction(_)) => return Err(unsupported_field("filter_action")),
    };
    Ok(model::Route {
        name: name.clone(),
        matcher,
        action,
        headers: header_mutations(
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
        )?,
        per_filter_config: per_filter_config(typed_per_filter_config, ctx.optional_filters)
            .map_err(at("typed_per_filter_config"))?,
        per_request_buffer_limit_bytes: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
    })
}

fn route_match(m: &r::RouteMatch) -> ConfigResult<model::RouteMatch> {
    use r::route_match::PathSpecifier as P;
    let r::RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    let runtime_fraction =
        runtime_fraction.as_ref().map(self::runtime_fraction).transpose().map_err(at("runtime_fraction"))?;
    reject_set(cookies, "cookies")?;
    reject_set(tls_context, "tls_context")?;
    reject_set(dynamic_metadata, "dynamic_metadata")?;
    reject_set(filter_state, "filter_state")?;
    let path = match path_specifier {
        None => {
            return Err(ConfigError::invalid(
                "",
                "one of prefix, path, safe_regex or path_separated_prefix must be set",
            ))
        }
        Some(P::Prefix(p)) => model::PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => model::PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(re)) => model::PathMatch::Regex(regex_matcher(re).map_err(at("safe_regex"))?),
        Some(P::PathSeparatedPrefix(p)) => model::PathMatch::SeparatedPrefix(p.clone()),
        Some(P::ConnectMatcher(_)) => return Err(unsupported_field("connect_matcher")),
        Some(P::PathMatchPolicy(_)) => return Err(unsupported_field("path_match_policy")),
    };
    let mut hs = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        hs.push(header_matcher(h).map_err(at(format!("headers[{i}]")))?);
    }
    let mut qs = Vec::with_capacity(query_parameters.len());
    for (i, q) in query_parameters.iter().enumerate() {
        qs.push(query_parameter_matcher(q).map_err(at(format!("query_parameters[{i}]")))?);
    }
    Ok(model::RouteMatch {
        path,
        case_sensitive: bool_or(case_sensitive, true),
        headers: hs,
        query_parameters: qs,
        grpc: grpc.is_some(),
        runtime_fraction,
    })
}

/// `envoy.config.core.v3.RuntimeFractionalPercent` (errors relative to it).
pub(crate) fn runtime_fraction(f: &core::RuntimeFractionalPercent) -> ConfigResult<model::RuntimeFraction> {
    let core::RuntimeFractionalPercent { default_value, runtime_key } = f;
    let d = default_value.as_ref().ok_or_else(|| ConfigError::invalid("default_value", "must be set"))?;
    Ok(model::RuntimeFraction {
        default_value: fractional_percent(d).map_err(at("default_value"))?,
        runtime_key: runtime_key.clone(),
    })
}

/// `envoy.type.v3.FractionalPercent` (errors relative to it).
pub(crate) fn fractional_percent(
    p: &envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> ConfigResult<model::FractionalPercent> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let envoy_types::pb::envoy::r#type::v3::FractionalPercent { numerator, denominator } = p;
    let denominator = match enum_value::<D>(*denominator, "denominator")? {
        D::Hundred => 100,
        D::TenThousand => 10_000,
        D::Million => 1_000_000,
    };
    Ok(model::FractionalPercent { numerator: *numerator, denominator })
}

/// Translate a VHDS `VirtualHost` resource (errors relative to it).
pub fn vhds_virtual_host(vh: &r::VirtualHost) -> ConfigResult<model::VirtualHost> {
    virtual_host(vh, Ctx { max_body: DEFAULT_MAX_DIRECT_RESPONSE_BODY, optional_filters: &[] })
}

fn route_action(a: &r::RouteAction, ctx: Ctx<'_>) -> ConfigResult<model::ForwardAction> {
    use r::route_action::{ClusterNotFoundResponseCode as C, ClusterSpecifier as CS, HostRewriteSpecifier as H};
    let r::RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        // Only meaningful with rate_limits, which are rejected.
        include_vh_rate_limits: _,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = a;
    reject_set(metadata_match, "metadata_match")?;
    reject_set(path_rewrite_policy, "path_rewrite_policy")?;
    reject_set(path_rewrite, "path_rewrite")?;
    reject_set(flush_timeout, "flush_timeout")?;
    reject_set(early_data_policy, "early_data_policy")?;
    reject_set(retry_policy_typed_config, "retry_policy_typed_config")?;
    reject_set(request_mirror_policies, "request_mirror_policies")?;
    reject_set(rate_limits, "rate_limits")?;
    reject_set(max_grpc_timeout, "max_grpc_timeout")?;
    reject_set(grpc_timeout_offset, "grpc_timeout_offset")?;
    reject_set(internal_redirect_policy, "internal_redirect_policy")?;
    reject_set(internal_redirect_action, "internal_redirect_action")?;
    reject_set(max_internal_redirects, "max_internal_redirects")?;
    reject_set(hedge_policy, "hedge_policy")?;
    let max_stream_duration = match max_stream_duration {
        None => None,
        Some(m) => {
            let r::route_action::MaxStreamDuration {
                max_stream_duration,
                grpc_timeout_header_max,
                grpc_timeout_header_offset,
            } = m;
            let ms = |d: &Option<_>, f: &str| -> ConfigResult<Option<Duration>> {
                d.as_ref().map(duration).transpose().map_err(at(format!("max_stream_duration.{f}")))
            };
            Some(model::RouteMaxStreamDuration {
                max_stream_duration: ms(max_stream_duration, "max_stream_duration")?,
                grpc_timeout_header_max: ms(grpc_timeout_header_max, "grpc_timeout_header_max")?,
                grpc_timeout_header_offset: ms(grpc_timeout_header_offset, "grpc_timeout_header_offset")?,
            })
        }
    };

    let cluster = match cluster_specifier {
        None => {
            return Err(ConfigError::invalid("", "one of cluster, cluster_header or weighted_clusters must be set"))
        }
        Some(CS::Cluster(c)) => model::ClusterSpecifier::Cluster(c.clone()),
        Some(CS::ClusterHeader(h)) => {
            model::ClusterSpecifier::ClusterHeader(header_name(h).map_err(at("cluster_header"))?)
        }
        Some(CS::WeightedClusters(w)) => weighted_clusters(w, ctx).map_err(at("weighted_clusters"))?,
        Some(CS::ClusterSpecifierPlugin(_)) => return Err(unsupported_field("cluster_specifier_plugin")),
        Some(CS::InlineClusterSpecifierPlugin(_)) => return Err(unsupported_field("inline_cluster_specifier_plugin")),
    };
    let priority = super::cluster::routing_priority(*priority)?;
    let cluster_not_found_response_code =
        match enum_value::<C>(*cluster_not_found_response_code, "cluster_not_found_response_code")? {
            C::ServiceUnavailable => 503,
            C::NotFound => 404,
            C::InternalServerError => 500,
        };
    let regex_rewrite = match regex_rewrite {
        None => None,
        Some(rr) => Some(regex_substitute(rr).map_err(at("regex_rewrite"))?),
    };
    let host_rewrite = match host_rewrite_specifier {
        None => model::HostRewrite::None,
        Some(H::HostRewriteLiteral(h)) => model::HostRewrite::Literal(h.clone()),
        Some(H::AutoHostRewrite(b)) => {
            if b.value {
                model::HostRewrite::Auto
            } else {
                model::HostRewrite::None
            }
        }
        Some(H::HostRewriteHeader(h)) => model::HostRewrite::Header(header_name(h).map_err(at("host_rewrite_header"))?),
        Some(H::HostRewritePathRegex(rr)) => {
            let (re, sub) = regex_substitute(rr).map_err(at("host_rewrite_path_regex"))?;
            model::HostRewrite::PathRegex(re, sub)
        }
        Some(H::HostRewrite(_)) => return Err(unsupported_field("host_rewrite")),
    };
    let timeout = duration_zero_disables(timeout, Some(DEFAULT_ROUTE_TIMEOUT), "timeout")?;
    // A `max_stream_duration` (even empty) switches the route to Envoy's "new timeouts": the
    // router then has no global timeout (`x-envoy-upstream-rq-timeout-ms` can still set one).
    let timeout = if max_stream_duration.is_some() { None } else { timeout };
    // Set (even to 0, which disables it), it replaces the HCM's stream_idle_timeout.
    let idle_timeout = match idle_timeout {
        None => None,
        Some(_) => Some(duration_zero_disables(idle_timeout, None, "idle_timeout")?),
    };
    let retry_policy = retry_policy.as_ref().map(retry).transpose().map_err(at("retry_policy"))?;
    let mut upgrade_websocket = None;
    for (i, u) in upgrade_configs.iter().enumerate() {
        let r::route_action::UpgradeConfig { upgrade_type, enabled, connect_config } = u;
        let p = format!("upgrade_configs[{i}]");
        reject_set(connect_config, &format!("{p}.connect_config"))?;
        if upgrade_type.eq_ignore_ascii_case("websocket") {
            upgrade_websocket = Some(bool_or(enabled, true));
        } else {
            return Err(ConfigError::unsupported(
                format!("{p}.upgrade_type"),
                format!("upgrade type '{upgrade_type}' is not supported by pinion (only websocket)"),
            ));
        }
    }
    Ok(model::ForwardAction {
        cluster,
        cluster_not_found_response_code,
        prefix_rewrite: if prefix_rewrite.is_empty() { None } else { Some(prefix_rewrite.clone()) },
        regex_rewrite,
        host_rewrite,
        append_x_forwarded_host: *append_x_forwarded_host,
        timeout,
        idle_timeout,
        max_stream_duration,
        retry_policy,
        priority,
        upgrade_websocket,
        legacy_cors: cors.as_ref().map(route_cors_policy).transpose().map_err(at("cors"))?.map(Arc::new),
        hash_policy: super::hash_policy::hash_policies(hash_policy)?,
    })
}

fn weighted_clusters(w: &r::WeightedCluster, ctx: Ctx<'_>) -> ConfigResult<model::ClusterSpecifier> {
    use r::weighted_cluster::cluster_weight::HostRewriteSpecifier as H;
    let r::WeightedCluster { clusters, total_weight, runtime_key_prefix, random_value_specifier } = w;
    reject_set(runtime_key_prefix, "runtime_key_prefix")?;
    reject_set(random_value_specifier, "header_name")?;
    let mut out = Vec::with_capacity(clusters.len());
    let mut sum: u64 = 0;
    for (i, c) in clusters.iter().enumerate() {
        let p = format!("clusters[{i}]");
        let r::weighted_cluster::ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        reject_set(cluster_header, &format!("{p}.cluster_header"))?;
        reject_set(metadata_match, &format!("{p}.metadata_match"))?;
        if name.is_empty() {
            return Err(ConfigError::invalid(format!("{p}.name"), "cluster name must not be empty"));
        }
        let weight = u32_or(weight, 0);
        sum = sum.saturating_add(u64::from(weight));
        let headers = header_mutations(
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
        )
        .map_err(at(&p))?;
        let host_rewrite_literal = host_rewrite_specifier.as_ref().map(|H::HostRewriteLiteral(h)| h.clone());
        let per_filter_config = per_filter_config(typed_per_filter_config, ctx.optional_filters)
            .map_err(at(format!("{p}.typed_per_filter_config")))?;
        out.push(model::WeightedCluster {
            name: name.clone(),
            weight,
            headers,
            host_rewrite_literal,
            per_filter_config,
        });
    }
    check_weight_sum(sum)?;
    if let Some(t) = total_weight {
        if u64::from(t.value) != sum {
            return Err(ConfigError::invalid(
                "total_weight",
                format!("sum of weights in weighted_clusters ({sum}) must equal total_weight ({})", t.value),
            ));
        }
    }
    Ok(model::ClusterSpecifier::Weighted { clusters: out, total_weight: sum })
}

/// Envoy's weighted-cluster sum checks (shared with tcp_proxy); errors relative to the message.
pub(crate) fn check_weight_sum(sum: u64) -> ConfigResult<()> {
    if sum == 0 {
        return Err(ConfigError::invalid("clusters", "sum of weights in weighted_clusters must be greater than 0"));
    }
    if sum > u64::from(u32::MAX) {
        return Err(ConfigError::invalid(
            "clusters",
            format!("sum of weights in weighted_clusters ({sum}) must not exceed {}", u32::MAX),
        ));
    }
    Ok(())
}

/// Envoy's default `rate_limited_retry_back_off.max_interval`.
const DEFAULT_RESET_MAX_INTERVAL: Duration = Duration::from_secs(300);
/// The name of the one retry host predicate Pinion has.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

fn retry(p: &r::RetryPolicy) -> ConfigResult<model::RetryPolicy> {
    use r::retry_policy::retry_host_predicate::ConfigType;
    let r::RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        // Envoy refreshes the cluster on a retry only for the matcher and dynamic-module
        // cluster specifiers, which Pinion refuses: for the others it changes nothing.
        refresh_cluster_on_retry: _,
    } = p;
    // `previous_priorities` changes priority loads per retry; not implemented.
    reject_set(retry_priority, "retry_priority")?;
    reject_set(retry_options_predicates, "retry_options_predicates")?;
    let mut previous_hosts = false;
    for (i, pred) in retry_host_predicate.iter().enumerate() {
        let r::retry_policy::RetryHostPredicate { name, config_type } = pred;
        let at_pred = format!("retry_host_predicate[{i}]");
        match config_type {
            Some(ConfigType::TypedConfig(any)) if is_type::<PreviousHostsPredicate>(any) => {
                let PreviousHostsPredicate {} = unpack(any).map_err(at(format!("{at_pred}.typed_config")))?;
            }
            Some(ConfigType::TypedConfig(any)) => {
                return Err(ConfigError::unsupported(
                    format!("{at_pred}.typed_config"),
                    format!(
                        "retry host predicate '{}' is not supported by pinion (only {PREVIOUS_HOSTS})",
                        type_name(any)
                    ),
                ))
            }
            // Without a config Envoy finds the factory by name.
            None if name == PREVIOUS_HOSTS => {}
            None => {
                return Err(ConfigError::unsupported(
                    format!("{at_pred}.name"),
                    format!("retry host predicate '{name}' is not supported by pinion (only {PREVIOUS_HOSTS})"),
                ))
            }
        }
        previous_hosts = true;
    }
    let back_off = match retry_back_off {
        None => None,
        Some(b) => {
            let r::retry_policy::RetryBackOff { base_interval, max_interval } = b;
            // Envoy keeps whole milliseconds, at least one (PGV has required base > 0).
            let ms = |d: Duration| Duration::from_millis((d.as_millis() as u64).max(1));
            let base = match base_interval {
                Some(d) => ms(duration(d).map_err(at("retry_back_off.base_interval"))?),
                None => return Err(ConfigError::invalid("retry_back_off.base_interval", "must be set")),
            };
            let max = match max_interval {
                None => None,
                Some(d) => Some(ms(duration(d).map_err(at("retry_back_off.max_interval"))?)),
            };
            if max.is_some_and(|m| m < base) {
                return Err(ConfigError::invalid(
                    "retry_back_off.max_interval",
                    "retry_policy.max_interval must greater than or equal to the base_interval",
                ));
            }
            Some(model::RetryBackOff { base, max })
        }
    };
    let rate_limited_back_off = match rate_limited_retry_back_off {
        None => None,
        Some(b) => {
            let r::retry_policy::RateLimitedRetryBackOff { reset_headers, max_interval } = b;
            let mut headers = Vec::with_capacity(reset_headers.len());
            for (i, h) in reset_headers.iter().enumerate() {
                let r::retry_policy::ResetHeader { name, format } = h;
                let at_h = format!("rate_limited_retry_back_off.reset_headers[{i}]");
                let format =
                    match enum_value::<r::retry_policy::ResetHeaderFormat>(*format, "format").map_err(at(&at_h))? {
                        r::retry_policy::ResetHeaderFormat::Seconds => model::ResetHeaderFormat::Seconds,
                        r::retry_policy::ResetHeaderFormat::UnixTimestamp => model::ResetHeaderFormat::UnixTimestamp,
                    };
                headers
                    .push(model::ResetHeader { name: header_name(name).map_err(at(format!("{at_h}.name")))?, format });
            }
            let max_interval = match max_interval {
                None => DEFAULT_RESET_MAX_INTERVAL,
                Some(d) => {
                    let d = duration(d).map_err(at("rate_limited_retry_back_off.max_interval"))?;
                    Duration::from_millis((d.as_millis() as u64).max(1))
                }
            };
            Some(model::RateLimitedBackOff { reset_headers: headers, max_interval })
        }
    };
    let matchers = |list: &[r::HeaderMatcher], field: &str| -> ConfigResult<Vec<model::HeaderMatcher>> {
        list.iter().enumerate().map(|(i, h)| header_matcher(h).map_err(at(format!("{field}[{i}]")))).collect()
    };
    // Envoy keeps the per-try timeouts in whole milliseconds; 0 disables them.
    let whole_ms =
        |d: Option<Duration>| d.map(|d| Duration::from_millis(d.as_millis() as u64)).filter(|d| !d.is_zero());
    Ok(model::RetryPolicy {
        retry_on: model::RetryOn::parse_policy(retry_on),
        num_retries: u32_or(num_retries, 1),
        per_try_timeout: whole_ms(duration_zero_disables(per_try_timeout, None, "per_try_timeout")?),
        per_try_idle_timeout: whole_ms(duration_zero_disables(per_try_idle_timeout, None, "per_try_idle_timeout")?),
        retriable_status_codes: retriable_status_codes.clone(),
        retriable_headers: matchers(retriable_headers, "retriable_headers")?,
        retriable_request_headers: matchers(retriable_request_headers, "retriable_request_headers")?,
        back_off,
        rate_limited_back_off,
        previous_hosts,
        // Envoy keeps its default of 1 when the field is 0 (unset); PGV has no rule for it, and
        // a negative value would wrap in Envoy's uint32: Pinion takes 1 for it.
        host_selection_max_attempts: u32::try_from(*host_selection_retry_max_attempts)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(1),
    })
}

fn redirect(a: &r::RedirectAction) -> ConfigResult<model::RedirectAction> {
    use r::redirect_action::{PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S};
    let r::RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = a;
    let scheme = match scheme_rewrite_specifier {
        None | Some(S::HttpsRedirect(false)) => None,
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if s.is_empty() => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let port = match *port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p).map_err(|_| ConfigError::invalid("port_redirect", format!("port {p} is out of range")))?,
        ),
    };
    let path = match path_rewrite_specifier {
        None => model::RedirectPath::Keep,
        Some(P::PathRedirect(p)) => model::RedirectPath::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => model::RedirectPath::PrefixRewrite(p.clone()),
        Some(P::RegexRewrite(rr)) => {
            let (re, sub) = regex_substitute(rr).map_err(at("regex_rewrite"))?;
            model::RedirectPath::RegexRewrite(re, sub)
        }
        Some(P::PathRewrite(_)) => return Err(unsupported_field("path_rewrite")),
    };
    let response_code = match enum_value::<C>(*response_code, "response_code")? {
        C::MovedPermanently => 301,
        C::Found => 302,
        C::SeeOther => 303,
        C::TemporaryRedirect => 307,
        C::PermanentRedirect => 308,
    };
    Ok(model::RedirectAction {
        scheme,
        host: if host_redirect.is_empty() { None } else { Some(host_redirect.clone()) },
        port,
        path,
        strip_query: *strip_query,
        response_code,
    })
}

fn direct_response(a: &r::DirectResponseAction, max_body: u32) -> ConfigResult<model::DirectResponse> {
    let r::DirectResponseAction { status, body, body_format } = a;
    reject_set(body_format, "body_format")?;
    let status = u16::try_from(*status)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| ConfigError::invalid("status", format!("invalid status code {status}")))?;
    let body = match body {
        None => None,
        Some(ds) => {
            let bytes = data_source(ds).map_err(at("body"))?;
            if bytes.len() > max_body as usize {
                return Err(ConfigError::invalid(
                    "body",
                    format!("response body size is {} bytes; maximum is {max_body}", bytes.len()),
                ));
            }
            Some(bytes::Bytes::from(bytes))
        }
    };
    Ok(model::DirectResponse { status, body })
}

/// A header name for matching/removal/cluster_header: lowercased and validated.
pub(crate) fn header_name(name: &str) -> ConfigResult<http::HeaderName> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::invalid("", format!("invalid header name '{name}'")))
}

/// Whether Envoy lets config add/remove this header (not `:`-prefixed, not `host`).
fn is_modifiable(name: &str) -> bool {
    !(name.starts_with(':') || name.eq_ignore_ascii_case("host"))
}

/// Translate the four header mutation lists of one level; errors relative to that level.
pub(crate) fn header_mutations(
    request_headers_to_add: &[core::HeaderValueOption],
    request_headers_to_remove: &[String],
    response_headers_to_add: &[core::HeaderValueOption],
    response_headers_to_remove: &[String],
) -> ConfigResult<model::HeaderMutations> {
    Ok(model::HeaderMutations {
        request_headers_to_add: headers_to_add(request_headers_to_add).map_err(at("request_headers_to_add"))?,
        request_headers_to_remove: headers_to_remove(request_headers_to_remove)
            .map_err(at("request_headers_to_remove"))?,
        response_headers_to_add: headers_to_add(response_headers_to_add).map_err(at("response_headers_to_add"))?,
        response_headers_to_remove: headers_to_remove(response_headers_to_remove)
            .map_err(at("response_headers_to_remove"))?,
    })
}

pub(crate) fn headers_to_remove(names: &[String]) -> ConfigResult<Vec<String>> {
    let mut out = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let p = format!("[{i}]");
        if !is_modifiable(n) {
            return Err(ConfigError::invalid(p, ":-prefixed or host headers may not be removed"));
        }
        out.push(header_name(n).map_err(at(&p))?.to_string());
    }
    Ok(out)
}

fn headers_to_add(opts: &[core::HeaderValueOption]) -> ConfigResult<Vec<model::HeaderValueOption>> {
    let mut out = Vec::with_capacity(opts.len());
    for (i, o) in opts.iter().enumerate() {
        out.push(header_value_option(o).map_err(at(format!("[{i}]")))?);
    }
    Ok(out)
}

/// Translate one `HeaderValueOption`; errors relative to it.
pub(crate) fn header_value_option(o: &core::HeaderValueOption) -> ConfigResult<model::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction as A;
    let core::HeaderValueOption { header, append, append_action, keep_empty_value } = o;
    let Some(core::HeaderValue { key, value, raw_value }) = header else {
        return Err(ConfigError::invalid("header", "header is required"));
    };
    if !is_modifiable(key) {
        return Err(ConfigError::invalid("header.key", ":-prefixed or host headers may not be modified"));
    }
    let name = header_name(key).map_err(at("header.key"))?;
    let (value, vfield) = if value.is_empty() && !raw_value.is_empty() {
        let v = String::from_utf8(raw_value.clone())
            .map_err(|_| ConfigError::invalid("header.raw_value", "raw_value must be UTF-8"))?;
        (v, "header.raw_value")
    } else {
        (value.clone(), "header.value")
    };
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ConfigError::invalid(vfield, "header value must not contain CR, LF or NUL"));
    }
    let has_formatter = has_formatter(&value).map_err(at(vfield))?;
    let action = enum_value::<A>(*append_action, "append_action")?;
    let append_action = match (append, action) {
        (Some(_), a) if a != A::AppendIfExistsOrAdd => {
            return Err(ConfigError::invalid("append", "Both append and append_action are set and it's not allowed"))
        }
        (Some(b), _) if b.value => model::AppendAction::AppendIfExistsOrAdd,
        (Some(_), _) => model::AppendAction::OverwriteIfExistsOrAdd,
        (None, A::AppendIfExistsOrAdd) => model::AppendAction::AppendIfExistsOrAdd,
        (None, A::AddIfAbsent) => model::AppendAction::AddIfAbsent,
        (None, A::OverwriteIfExistsOrAdd) => model::AppendAction::OverwriteIfExistsOrAdd,
        (None, A::OverwriteIfExists) => model::AppendAction::OverwriteIfExists,
    };
    Ok(model::HeaderValueOption { name, value, has_formatter, append_action, keep_empty_value: *keep_empty_value })
}

/// Every cluster a route table names, with the path (relative to the route config) where it is
/// named: used for `validate_clusters`.
pub(crate) fn referenced_clusters(rc: &model::RouteConfiguration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        for (j, rt) in vh.routes.iter().enumerate() {
            let model::RouteAction::Forward(f) = &rt.action else { continue };
            let p = format!("virtual_hosts[{i}].routes[{j}].route");
            match &f.cluster {
                model::ClusterSpecifier::Cluster(c) => out.push((format!("{p}.cluster"), c.clone())),
                model::ClusterSpecifier::Weighted { clusters, .. } => {
                    for (k, w) in clusters.iter().enumerate() {
                        out.push((format!("{p}.weighted_clusters.clusters[{k}].name"), w.name.clone()));
                    }
                }
                model::ClusterSpecifier::ClusterHeader(_) => {}
            }
        }
    }
    out
}
