//! CORS policies: `envoy.extensions.filters.http.cors.v3.CorsPolicy` (per route) and the
//! deprecated `envoy.config.route.v3.CorsPolicy` (`cors` on virtual hosts and route actions),
//! which Envoy 1.40 still honours with the same fields.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::r#type::matcher::v3 as m;
use envoy_types::pb::google::protobuf as pbuf;

use crate::error::ConfigResult;
use crate::model;
use crate::translate::at;
use crate::translate::matcher::string_matcher;
use crate::translate::route::runtime_fraction;

/// Translate a typed `CorsPolicy`; errors relative to it.
pub(super) fn cors_policy(c: &cors::CorsPolicy) -> ConfigResult<model::CorsPolicy> {
    let cors::CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled,
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
    } = c;
    policy(Fields {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled: filter_enabled.as_ref(),
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
    })
}

/// Translate the deprecated route/vhost `cors`; errors relative to it.
pub(crate) fn route_cors_policy(c: &route::CorsPolicy) -> ConfigResult<model::CorsPolicy> {
    use route::cors_policy::EnabledSpecifier;
    let route::CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
        enabled_specifier,
    } = c;
    policy(Fields {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled: enabled_specifier.as_ref().map(|EnabledSpecifier::FilterEnabled(f)| f),
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
    })
}

/// The fields both policy messages share.
struct Fields<'a> {
    allow_origin_string_match: &'a [m::StringMatcher],
    allow_methods: &'a str,
    allow_headers: &'a str,
    expose_headers: &'a str,
    max_age: &'a str,
    allow_credentials: &'a Option<pbuf::BoolValue>,
    filter_enabled: Option<&'a core::RuntimeFractionalPercent>,
    shadow_enabled: &'a Option<core::RuntimeFractionalPercent>,
    allow_private_network_access: &'a Option<pbuf::BoolValue>,
    forward_not_matching_preflights: &'a Option<pbuf::BoolValue>,
}

fn policy(f: Fields<'_>) -> ConfigResult<model::CorsPolicy> {
    let mut origins = Vec::with_capacity(f.allow_origin_string_match.len());
    for (i, s) in f.allow_origin_string_match.iter().enumerate() {
        origins.push(string_matcher(s).map_err(at(format!("allow_origin_string_match[{i}]")))?);
    }
    // Empty strings and unset wrappers stay unset: Envoy takes each field from the most
    // specific policy that sets it.
    let text = |s: &str| if s.is_empty() { None } else { Some(s.to_string()) };
    let flag = |b: &Option<pbuf::BoolValue>| b.as_ref().map(|v| v.value);
    let fraction = |numerator| model::RuntimeFraction {
        default_value: model::FractionalPercent { numerator, denominator: 100 },
        runtime_key: String::new(),
    };
    Ok(model::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: text(f.allow_methods),
        allow_headers: text(f.allow_headers),
        expose_headers: text(f.expose_headers),
        max_age: text(f.max_age),
        allow_credentials: flag(f.allow_credentials),
        allow_private_network_access: flag(f.allow_private_network_access),
        forward_not_matching_preflights: flag(f.forward_not_matching_preflights),
        // Unset filter_enabled: enabled for every request; unset shadow_enabled: never.
        filter_enabled: match f.filter_enabled {
            None => fraction(100),
            Some(r) => runtime_fraction(r).map_err(at("filter_enabled"))?,
        },
        shadow_enabled: match f.shadow_enabled {
            None => fraction(0),
            Some(r) => runtime_fraction(r).map_err(at("shadow_enabled"))?,
        },
    })
}
