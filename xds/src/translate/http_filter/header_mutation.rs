//! `envoy.extensions.filters.http.header_mutation.v3.HeaderMutation` and
//! `HeaderMutationPerRoute`, with `envoy.config.common.mutation_rules.v3.HeaderMutation` actions.

use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as hm;

use crate::error::{ConfigError, ConfigResult};
use crate::model;
use crate::translate::matcher::string_matcher;
use crate::translate::route::header_value_option;
use crate::translate::{at, reject_set};

/// Translate the filter-level `HeaderMutation`; errors relative to it.
pub(super) fn header_mutation(h: &hm::HeaderMutation) -> ConfigResult<model::HeaderMutationConfig> {
    let hm::HeaderMutation { mutations, most_specific_header_mutations_wins } = h;
    Ok(model::HeaderMutationConfig {
        mutations: lists(mutations.as_ref()).map_err(at("mutations"))?,
        most_specific_header_mutations_wins: *most_specific_header_mutations_wins,
    })
}

/// Translate a `HeaderMutationPerRoute`; errors relative to it.
pub(super) fn header_mutation_per_route(h: &hm::HeaderMutationPerRoute) -> ConfigResult<model::HeaderMutationPerRoute> {
    let hm::HeaderMutationPerRoute { mutations } = h;
    Ok(model::HeaderMutationPerRoute { mutations: lists(mutations.as_ref()).map_err(at("mutations"))? })
}

fn lists(m: Option<&hm::Mutations>) -> ConfigResult<model::HeaderMutationLists> {
    let Some(hm::Mutations {
        request_mutations,
        query_parameter_mutations,
        response_mutations,
        response_trailers_mutations,
        request_trailers_mutations,
    }) = m
    else {
        return Ok(model::HeaderMutationLists::default());
    };
    reject_set(query_parameter_mutations, "query_parameter_mutations")?;
    reject_set(response_trailers_mutations, "response_trailers_mutations")?;
    reject_set(request_trailers_mutations, "request_trailers_mutations")?;
    Ok(model::HeaderMutationLists {
        request_mutations: actions(request_mutations).map_err(at("request_mutations"))?,
        response_mutations: actions(response_mutations).map_err(at("response_mutations"))?,
    })
}

fn actions(list: &[rules::HeaderMutation]) -> ConfigResult<Vec<model::HeaderMutationAction>> {
    use rules::header_mutation::{Action, RemoveOnMatch};
    let mut out = Vec::with_capacity(list.len());
    for (i, rules::HeaderMutation { action }) in list.iter().enumerate() {
        let p = format!("[{i}]");
        out.push(match action {
            None => return Err(ConfigError::invalid(p, "one of remove, append or remove_on_match must be set")),
            // Envoy removes any (lowercased) name here, pseudo-headers and `host` included.
            Some(Action::Remove(name)) => model::HeaderMutationAction::Remove(name.to_ascii_lowercase()),
            Some(Action::Append(o)) => {
                model::HeaderMutationAction::Append(header_value_option(o).map_err(at(format!("{p}.append")))?)
            }
            Some(Action::RemoveOnMatch(RemoveOnMatch { key_matcher })) => {
                let Some(km) = key_matcher else {
                    return Err(ConfigError::invalid(format!("{p}.remove_on_match.key_matcher"), "value is required"));
                };
                model::HeaderMutationAction::RemoveOnMatch(
                    string_matcher(km).map_err(at(format!("{p}.remove_on_match.key_matcher")))?,
                )
            }
        });
    }
    Ok(out)
}
