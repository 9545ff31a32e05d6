//! `envoy.filters.http.header_mutation` (Envoy's `HeaderMutation` filter): the filter's own
//! request and response mutations, then every route level's `HeaderMutationPerRoute` (most
//! specific first, so the least specific has the last word, unless
//! `most_specific_header_mutations_wins`). The response side runs on every response, local
//! replies included, as Envoy's encoder does.

use http::HeaderMap;
use pinion_xds::model::{HeaderMutationAction, HeaderMutationConfig, HeaderMutationPerRoute};

use crate::formatter::Context;
use crate::http::header_mutation;
use crate::http::stream_info::StreamInfo;

/// Which headers a list mutates (what `%REQ(..)%` and `%RESP(..)%` read).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Request headers.
    Request,
    /// Response headers (the request's are gone upstream: `%REQ(..)%` renders empty).
    Response,
}

/// Apply one list of mutations, in order.
pub fn apply(headers: &mut HeaderMap, actions: &[HeaderMutationAction], info: &StreamInfo, side: Side) {
    for a in actions {
        match a {
            HeaderMutationAction::Remove(name) => {
                headers.remove(name.as_str());
            }
            HeaderMutationAction::RemoveOnMatch(m) => {
                let doomed: Vec<_> = headers.keys().filter(|k| m.matches(k.as_str())).cloned().collect();
                for k in doomed {
                    headers.remove(k);
                }
            }
            HeaderMutationAction::Append(opt) => {
                if opt.has_formatter {
                    // Values read the headers as they were before this mutation.
                    let snapshot = headers.clone();
                    let (request_headers, response_headers) = match side {
                        Side::Request => (Some(&snapshot), None),
                        Side::Response => (None, Some(&snapshot)),
                    };
                    let ctx = Context { info, request_headers, response_headers, bytes_sent: 0 };
                    header_mutation::apply(headers, std::slice::from_ref(opt), &[], Some(&ctx));
                } else {
                    header_mutation::apply(headers, std::slice::from_ref(opt), &[], None);
                }
            }
        }
    }
}

/// The order the per-route levels apply in (`levels` is most specific first).
fn ordered<'a>(
    config: &HeaderMutationConfig,
    levels: &'a [&'a HeaderMutationPerRoute],
) -> Box<dyn Iterator<Item = &'a HeaderMutationPerRoute> + 'a> {
    if config.most_specific_header_mutations_wins {
        Box::new(levels.iter().rev().copied())
    } else {
        Box::new(levels.iter().copied())
    }
}

/// Request hook.
pub fn decode_headers(
    config: &HeaderMutationConfig,
    levels: &[&HeaderMutationPerRoute],
    headers: &mut HeaderMap,
    info: &StreamInfo,
) {
    apply(headers, &config.mutations.request_mutations, info, Side::Request);
    for l in ordered(config, levels) {
        apply(headers, &l.mutations.request_mutations, info, Side::Request);
    }
}

/// Response hook.
pub fn encode_headers(
    config: &HeaderMutationConfig,
    levels: &[&HeaderMutationPerRoute],
    headers: &mut HeaderMap,
    info: &StreamInfo,
) {
    apply(headers, &config.mutations.response_mutations, info, Side::Response);
    for l in ordered(config, levels) {
        apply(headers, &l.mutations.response_mutations, info, Side::Response);
    }
}
