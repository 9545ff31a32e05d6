//! `typed_per_filter_config` (route configuration, virtual host, route, weighted cluster):
//! filter name -> `Any`, either a filter's per-route message or an
//! `envoy.config.route.v3.FilterConfig` wrapping one.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router_pb;
use envoy_types::pb::google::protobuf as pbuf;

use super::route_override;
use crate::error::{ConfigError, ConfigResult};
use crate::model;
use crate::translate::{at, is_type, type_name, unpack};

/// Translate one `typed_per_filter_config` map (errors relative to it, `["name"]...`), sorted
/// by filter name. `optional_filters` are the names of the HCM's `is_optional` filters: as in
/// Envoy, a plain per-route config for one of them is skipped when its type is not supported.
pub(crate) fn per_filter_config(
    map: &HashMap<String, pbuf::Any>,
    optional_filters: &[String],
) -> ConfigResult<model::PerFilterConfig> {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(any) = map.get(name) else { continue };
        let p = format!("[{name:?}]");
        let entry = if is_type::<route::FilterConfig>(any) {
            filter_config(name, any).map_err(at(&p))?
        } else {
            let optional = optional_filters.iter().any(|f| f == name);
            typed(name, any, optional).map_err(at(&p))?
        };
        if let Some(o) = entry {
            out.push((name.clone(), o));
        }
    }
    Ok(out)
}

/// A `FilterConfig` wrapper (errors relative to it); `None` when it is skipped.
fn filter_config(name: &str, any: &pbuf::Any) -> ConfigResult<Option<model::FilterOverride>> {
    let route::FilterConfig { config, is_optional, disabled } = unpack(any)?;
    if disabled {
        // Envoy ignores `config` entirely then.
        return Ok(Some(model::FilterOverride::Disabled));
    }
    match config {
        None => Err(ConfigError::invalid(
            "",
            format!("Empty route/virtual host per filter configuration for {name} filter"),
        )),
        // `config: {}`: the filter is enabled here with its filter-level config.
        Some(c) if c.type_url.is_empty() => Ok(Some(model::FilterOverride::Enabled)),
        Some(c) => typed(name, &c, is_optional).map_err(at("config")),
    }
}

/// A filter's per-route message (errors relative to it); `None` when an optional one of a
/// type Pinion does not implement is skipped.
fn typed(name: &str, any: &pbuf::Any, optional: bool) -> ConfigResult<Option<model::FilterOverride>> {
    if let Some(o) = route_override(any)? {
        return Ok(Some(o));
    }
    if optional {
        tracing::warn!(filter = %name, type_url = %any.type_url, "skipping optional per-route filter config not supported by pinion");
        return Ok(None);
    }
    // Envoy's own verdicts for types that can never be a per-route config.
    if is_type::<router_pb::Router>(any) {
        return Err(ConfigError::invalid(
            "",
            format!("The filter {name} doesn't support virtual host or route specific configurations"),
        ));
    }
    if is_type::<route::FilterConfig>(any) {
        return Err(ConfigError::invalid(
            "",
            format!("Didn't find a registered implementation for '{name}' with type URL: '{}'", type_name(any)),
        ));
    }
    Err(ConfigError::unsupported(
        "",
        format!("per-route config of type {} for filter '{name}' is not supported by pinion", type_name(any)),
    ))
}
