//! Applying `request_headers_to_add/remove` and `response_headers_to_add/remove` at route,
//! virtual host and route configuration level, with Envoy's append actions and `%VAR%` values.

use http::{HeaderMap, HeaderValue};
use pinion_xds::model::{AppendAction, HeaderValueOption};

use crate::formatter::{Context, Format};

/// Apply one level's additions and removals. Removals first, as Envoy does.
pub fn apply(headers: &mut HeaderMap, add: &[HeaderValueOption], remove: &[String], ctx: Option<&Context<'_>>) {
    for name in remove {
        headers.remove(name.as_str());
    }
    for opt in add {
        let rendered;
        let value: &str = if opt.has_formatter {
            rendered = match (Format::parse(&opt.value), ctx) {
                (Ok(f), Some(ctx)) => f.render(ctx, true),
                _ => opt.value.clone(),
            };
            &rendered
        } else {
            &opt.value
        };
        if value.is_empty() && !opt.keep_empty_value {
            continue;
        }
        let Ok(v) = HeaderValue::from_str(value) else { continue };
        match opt.append_action {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(opt.name.clone(), v);
            }
            AppendAction::AddIfAbsent => {
                if !headers.contains_key(&opt.name) {
                    headers.insert(opt.name.clone(), v);
                }
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(opt.name.clone(), v);
            }
            AppendAction::OverwriteIfExists => {
                if headers.contains_key(&opt.name) {
                    headers.insert(opt.name.clone(), v);
                }
            }
        }
    }
}
