//! Scoped routes: HCM `scoped_routes` and SRDS `ScopedRouteConfiguration` resources.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3 as r;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

use super::config_source::config_source;
use super::route::{header_name, route_configuration};
use super::{at, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Translate a `ScopedRouteConfiguration` (errors relative to it).
pub fn scoped_route_configuration(s: &r::ScopedRouteConfiguration) -> ConfigResult<model::ScopedRouteConfiguration> {
    use r::scoped_route_configuration::key::fragment::Type;
    let r::ScopedRouteConfiguration { on_demand, name, route_configuration_name, route_configuration: inline, key } = s;
    let key = key.as_ref().ok_or_else(|| ConfigError::invalid("key", "must be set"))?;
    let mut fragments = Vec::with_capacity(key.fragments.len());
    for (i, f) in key.fragments.iter().enumerate() {
        match &f.r#type {
            Some(Type::StringKey(k)) => fragments.push(k.clone()),
            None => return Err(ConfigError::invalid(format!("key.fragments[{i}]"), "string_key must be set")),
        }
    }
    let (rc_name, rc) = match (route_configuration_name.is_empty(), inline) {
        (false, None) => (route_configuration_name.clone(), None),
        (true, Some(rc)) => {
            let t = route_configuration(rc).map_err(at("route_configuration"))?;
            (t.name.clone(), Some(Arc::new(t)))
        }
        (false, Some(_)) => {
            return Err(ConfigError::invalid(
                "route_configuration",
                "only one of route_configuration_name and route_configuration may be set",
            ))
        }
        (true, None) => {
            return Err(ConfigError::invalid(
                "route_configuration_name",
                "one of route_configuration_name and route_configuration must be set",
            ))
        }
    };
    Ok(model::ScopedRouteConfiguration {
        name: name.clone(),
        on_demand: *on_demand,
        route_configuration_name: rc_name,
        route_configuration: rc,
        key: fragments,
    })
}

/// Translate HCM `scoped_routes` (errors relative to it).
pub(crate) fn scoped_routes(s: &hcm::ScopedRoutes) -> ConfigResult<model::ScopedRoutes> {
    use hcm::scoped_routes::scope_key_builder::fragment_builder::header_value_extractor::ExtractType;
    use hcm::scoped_routes::scope_key_builder::fragment_builder::Type;
    use hcm::scoped_routes::ConfigSpecifier;
    let hcm::ScopedRoutes { name, scope_key_builder, rds_config_source, config_specifier } = s;
    let builder = scope_key_builder.as_ref().ok_or_else(|| ConfigError::invalid("scope_key_builder", "must be set"))?;
    if builder.fragments.is_empty() {
        return Err(ConfigError::invalid("scope_key_builder.fragments", "must have at least 1 item"));
    }
    let mut key_builder = Vec::with_capacity(builder.fragments.len());
    for (i, f) in builder.fragments.iter().enumerate() {
        let p = format!("scope_key_builder.fragments[{i}]");
        let Some(Type::HeaderValueExtractor(h)) = &f.r#type else {
            return Err(ConfigError::invalid(p, "header_value_extractor must be set"));
        };
        let hcm::scoped_routes::scope_key_builder::fragment_builder::HeaderValueExtractor {
            name: header,
            element_separator,
            extract_type,
        } = h;
        let extract = match extract_type {
            Some(ExtractType::Index(i)) => model::FragmentExtract::Index(*i),
            Some(ExtractType::Element(e)) => {
                if e.separator.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{p}.header_value_extractor.element.separator"),
                        "must not be empty",
                    ));
                }
                model::FragmentExtract::Element { separator: e.separator.clone(), key: e.key.clone() }
            }
            None => {
                return Err(ConfigError::invalid(
                    format!("{p}.header_value_extractor"),
                    "one of index or element must be set",
                ))
            }
        };
        key_builder.push(model::ScopeKeyFragment {
            header: header_name(header).map_err(at(format!("{p}.header_value_extractor.name")))?,
            element_separator: element_separator.clone(),
            extract,
        });
    }
    let rds_config_source = config_source(
        rds_config_source.as_ref().ok_or_else(|| ConfigError::invalid("rds_config_source", "must be set"))?,
    )
    .map_err(at("rds_config_source"))?;
    let scopes = match config_specifier {
        None => {
            return Err(ConfigError::invalid("", "one of scoped_route_configurations_list or scoped_rds must be set"))
        }
        Some(ConfigSpecifier::ScopedRouteConfigurationsList(l)) => {
            let mut out = Vec::with_capacity(l.scoped_route_configurations.len());
            let mut names = HashSet::new();
            let mut keys = HashSet::new();
            for (i, sc) in l.scoped_route_configurations.iter().enumerate() {
                let p = format!("scoped_route_configurations_list.scoped_route_configurations[{i}]");
                let t = scoped_route_configuration(sc).map_err(at(&p))?;
                if !names.insert(t.name.clone()) {
                    return Err(ConfigError::invalid(
                        format!("{p}.name"),
                        format!("duplicate scope name '{}'", t.name),
                    ));
                }
                if !keys.insert(t.key.clone()) {
                    return Err(ConfigError::invalid(
                        format!("{p}.key"),
                        format!("scope '{}' has the same key as another scope", t.name),
                    ));
                }
                out.push(Arc::new(t));
            }
            model::ScopesSource::Inline(out)
        }
        Some(ConfigSpecifier::ScopedRds(hcm::ScopedRds { scoped_rds_config_source, srds_resources_locator })) => {
            if !srds_resources_locator.is_empty() {
                return Err(unsupported_field("scoped_rds.srds_resources_locator"));
            }
            let cs = scoped_rds_config_source
                .as_ref()
                .ok_or_else(|| ConfigError::invalid("scoped_rds.scoped_rds_config_source", "must be set"))?;
            model::ScopesSource::Srds(config_source(cs).map_err(at("scoped_rds.scoped_rds_config_source"))?)
        }
    };
    Ok(model::ScopedRoutes { name: name.clone(), key_builder, rds_config_source, scopes })
}
