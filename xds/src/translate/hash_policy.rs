//! `RouteAction.hash_policy`: what a request is hashed by for ring hash and Maglev clusters.

use envoy_types::pb::envoy::config::route::v3::route_action::{hash_policy as hp, HashPolicy};

use super::matcher::regex_substitute;
use super::{at, duration};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// The route's hash policies in order (errors relative to `hash_policy`). As Envoy,
/// `connection_properties` with `source_ip: false` contributes nothing and is dropped.
pub(crate) fn hash_policies(policies: &[HashPolicy]) -> ConfigResult<Vec<model::HashPolicy>> {
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        if let Some(kind) = hash_policy(p).map_err(at(format!("hash_policy[{i}]")))? {
            out.push(model::HashPolicy { kind, terminal: p.terminal });
        }
    }
    Ok(out)
}

fn hash_policy(p: &HashPolicy) -> ConfigResult<Option<model::HashPolicyKind>> {
    use hp::PolicySpecifier as S;
    let HashPolicy { terminal: _, policy_specifier } = p;
    Ok(Some(match policy_specifier {
        None => {
            return Err(ConfigError::invalid(
                "policy_specifier",
                "one of header, cookie, connection_properties, query_parameter, filter_state must be set",
            ))
        }
        Some(S::Header(hp::Header { header_name, regex_rewrite })) => {
            let regex_rewrite = match regex_rewrite {
                None => None,
                Some(rr) => Some(regex_substitute(rr).map_err(at("header.regex_rewrite"))?),
            };
            model::HashPolicyKind::Header { name: header_name.to_ascii_lowercase(), regex_rewrite }
        }
        Some(S::Cookie(hp::Cookie { name, ttl, path, attributes })) => {
            // Envoy takes the whole seconds of the TTL.
            let ttl = match ttl {
                None => None,
                Some(t) => Some(std::time::Duration::from_secs(duration(t).map_err(at("cookie.ttl"))?.as_secs())),
            };
            let attributes = attributes
                .iter()
                .map(|a| {
                    let hp::CookieAttribute { name, value } = a;
                    (name.clone(), value.clone())
                })
                .collect();
            model::HashPolicyKind::Cookie { name: name.clone(), path: path.clone(), ttl, attributes }
        }
        Some(S::ConnectionProperties(hp::ConnectionProperties { source_ip })) => {
            if !source_ip {
                return Ok(None);
            }
            model::HashPolicyKind::SourceIp
        }
        Some(S::QueryParameter(hp::QueryParameter { name })) => {
            model::HashPolicyKind::QueryParameter { name: name.clone() }
        }
        Some(S::FilterState(hp::FilterState { key: _ })) => {
            // Pinion has no filter state objects a hash could come from.
            return Err(ConfigError::unsupported(
                "filter_state",
                "filter_state hash policies are not supported by pinion",
            ));
        }
    }))
}
