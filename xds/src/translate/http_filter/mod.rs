//! HTTP filters: the HCM's `http_filters` list and the per-route `typed_per_filter_config`
//! overrides, dispatched on the `Any` type URL to one file per filter.

mod cors;
mod fault;
mod header_mutation;
mod local_ratelimit;
mod per_filter_config;
mod router;

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as hm_pb;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl_pb;
use envoy_types::pb::envoy::extensions::filters::http::on_demand::v3 as on_demand;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf as pbuf;

use super::{at, is_type, reject_set, type_name, unpack, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

pub(crate) use cors::route_cors_policy;
pub(crate) use per_filter_config::per_filter_config;

/// The router's well-known name.
const ROUTER_NAME: &str = "envoy.filters.http.router";
/// The on-demand filter's well-known name.
const ON_DEMAND_NAME: &str = "envoy.filters.http.on_demand";

/// The HCM's `http_filters` (errors relative to the list): supported filters in order, the
/// router last; unsupported ones are skipped when `is_optional`, else rejected.
pub(crate) fn http_filters(fs: &[hcm::HttpFilter]) -> ConfigResult<Vec<model::HttpFilter>> {
    use hcm::http_filter::ConfigType;
    let mut out = Vec::new();
    let last = fs.len().checked_sub(1);
    for (i, f) in fs.iter().enumerate() {
        let p = format!("[{i}]");
        let hcm::HttpFilter { name, is_optional, disabled, config_type } = f;
        let any = match config_type {
            None => None,
            Some(ConfigType::TypedConfig(any)) => Some(any),
            Some(ConfigType::ConfigDiscovery(_)) => return Err(unsupported_field("config_discovery").under(&p)),
        };
        let is_router = match any {
            Some(any) => is_type::<router_pb::Router>(any),
            None => name == ROUTER_NAME,
        };
        if is_router {
            if Some(i) != last {
                return Err(ConfigError::invalid(
                    p,
                    format!("terminal filter named {name} of type {ROUTER_NAME} must be the last filter in a http filter chain"),
                ));
            }
            if *disabled {
                return Err(ConfigError::invalid(format!("{p}.disabled"), "the router filter may not be disabled"));
            }
            let cfg = match any {
                None => model::RouterConfig::default(),
                Some(any) => {
                    let r: router_pb::Router = unpack(any).map_err(at(format!("{p}.typed_config")))?;
                    router::router_config(&r).map_err(at(format!("{p}.typed_config")))?
                }
            };
            out.push(model::HttpFilter {
                name: name.clone(),
                disabled: false,
                kind: model::HttpFilterKind::Router(cfg),
            });
            continue;
        }
        // Only the router and on-demand are known by name alone (as before); Envoy 1.40 needs a
        // typed_config for every filter, so a bare name falls through to the unknown case.
        let kind = match any {
            Some(any) => filter_kind(any).map_err(at(format!("{p}.typed_config")))?,
            None if name == ON_DEMAND_NAME => Some(model::HttpFilterKind::OnDemand),
            None => None,
        };
        let what = match any {
            Some(any) => format!("'{name}' ({})", type_name(any)),
            None => format!("'{name}'"),
        };
        if Some(i) == last {
            return Err(ConfigError::invalid(
                p,
                format!("the last HTTP filter must be the router ({ROUTER_NAME}), found {what}"),
            ));
        }
        match kind {
            Some(kind) => out.push(model::HttpFilter { name: name.clone(), disabled: *disabled, kind }),
            None if *is_optional => {
                tracing::warn!(filter = %what, "skipping optional HTTP filter not supported by pinion");
            }
            // Envoy's own verdict: it looks filters up by type URL.
            None if any.is_none() => {
                return Err(ConfigError::invalid(
                    p,
                    format!(
                    "Didn't find a registered implementation for '{name}' with type URL: '' (typed_config is required)"
                ),
                ))
            }
            // A disabled filter is not skipped: a route may enable it via typed_per_filter_config.
            None => return Err(ConfigError::unsupported(p, format!("HTTP filter {what} is not supported by pinion"))),
        }
    }
    if out.is_empty() {
        return Err(ConfigError::invalid("", format!("http_filters must end with the router filter ({ROUTER_NAME})")));
    }
    Ok(out)
}

/// A non-router filter's `typed_config` (errors relative to it); `None` for a type Pinion
/// does not implement.
fn filter_kind(any: &pbuf::Any) -> ConfigResult<Option<model::HttpFilterKind>> {
    use model::HttpFilterKind as K;
    Ok(Some(if is_type::<on_demand::OnDemand>(any) {
        let on_demand::OnDemand { odcds } = unpack(any)?;
        reject_set(&odcds, "odcds")?;
        K::OnDemand
    } else if is_type::<fault_pb::HttpFault>(any) {
        K::Fault(Arc::new(fault::fault(&unpack(any)?)?))
    } else if is_type::<cors_pb::Cors>(any) || is_type::<cors_pb::CorsPolicy>(any) {
        let cors_pb::Cors {} = unpack_as_sibling(any)?;
        K::Cors(Arc::new(model::CorsConfig {}))
    } else if is_type::<lrl_pb::LocalRateLimit>(any) {
        K::LocalRateLimit(Arc::new(local_ratelimit::local_rate_limit(&unpack(any)?, Level::Filter)?))
    } else if is_type::<hm_pb::HeaderMutation>(any) || is_type::<hm_pb::HeaderMutationPerRoute>(any) {
        K::HeaderMutation(Arc::new(header_mutation::header_mutation(&unpack_as_sibling(any)?)?))
    } else {
        return Ok(None);
    }))
}

/// A per-route `Any` (errors relative to it) as an override; `None` for a type Pinion does
/// not implement per route.
fn route_override(any: &pbuf::Any) -> ConfigResult<Option<model::FilterOverride>> {
    use model::FilterOverride as O;
    Ok(Some(if is_type::<fault_pb::HttpFault>(any) {
        O::Fault(Arc::new(fault::fault(&unpack(any)?)?))
    } else if is_type::<cors_pb::CorsPolicy>(any) || is_type::<cors_pb::Cors>(any) {
        O::Cors(Arc::new(cors::cors_policy(&unpack_as_sibling(any)?)?))
    } else if is_type::<lrl_pb::LocalRateLimit>(any) {
        O::LocalRateLimit(Arc::new(local_ratelimit::local_rate_limit(&unpack(any)?, Level::PerRoute)?))
    } else if is_type::<hm_pb::HeaderMutationPerRoute>(any) || is_type::<hm_pb::HeaderMutation>(any) {
        O::HeaderMutation(Arc::new(header_mutation::header_mutation_per_route(&unpack_as_sibling(any)?)?))
    } else {
        return Ok(None);
    }))
}

/// Envoy picks the filter factory by type URL, and a factory owns both its filter-level and
/// its per-route message, then converts the `Any` into the message it needs there. An empty
/// payload skips the conversion (the default message is used); anything else must be exactly
/// `M` ("Unable to unpack as ...").
fn unpack_as_sibling<M: prost::Message + prost::Name + Default>(any: &pbuf::Any) -> ConfigResult<M> {
    if !is_type::<M>(any) && any.value.is_empty() {
        return Ok(M::default());
    }
    if !is_type::<M>(any) {
        return Err(ConfigError::invalid("", format!("Unable to unpack {} as {}", type_name(any), M::full_name())));
    }
    unpack(any)
}

/// Where a filter config sits: some checks differ between the HCM and per-route configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// In the HCM's `http_filters`.
    Filter,
    /// In a `typed_per_filter_config`.
    PerRoute,
}
