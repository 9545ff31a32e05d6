//! Matchers: `StringMatcher`, `RegexMatcher`, `HeaderMatcher`, `QueryParameterMatcher`.

use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::r#type::matcher::v3 as m;
use regex::Regex;

use super::{at, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Compile a `RegexMatcher` for full-match use; errors at `regex`.
pub(crate) fn regex_matcher(r: &m::RegexMatcher) -> ConfigResult<Regex> {
    // engine_type: only the deprecated google_re2 engine exists; Pinion uses the Rust regex engine.
    let m::RegexMatcher { regex, engine_type: _ } = r;
    model::anchored_regex(regex).map_err(|e| ConfigError::invalid("regex", format!("invalid regex '{regex}': {e}")))
}

/// Compile a `RegexMatchAndSubstitute` (unanchored: Envoy substitutes every match, like
/// `RE2::GlobalReplace`); errors relative to the message.
pub(crate) fn regex_substitute(r: &m::RegexMatchAndSubstitute) -> ConfigResult<(Regex, String)> {
    let m::RegexMatchAndSubstitute { pattern, substitution } = r;
    let Some(pattern) = pattern else {
        return Err(ConfigError::invalid("pattern", "pattern is required"));
    };
    // engine_type: see regex_matcher.
    let m::RegexMatcher { regex, engine_type: _ } = pattern;
    let re = regex::RegexBuilder::new(regex)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ConfigError::invalid("pattern.regex", format!("invalid regex '{regex}': {e}")))?;
    Ok((re, substitution.clone()))
}

/// Translate a `StringMatcher`; errors relative to it.
pub(crate) fn string_matcher(s: &m::StringMatcher) -> ConfigResult<model::StringMatcher> {
    use m::string_matcher::MatchPattern;
    let m::StringMatcher { ignore_case, match_pattern } = s;
    let ignore_case = *ignore_case;
    Ok(match match_pattern {
        None => return Err(ConfigError::invalid("", "one of exact, prefix, suffix, safe_regex, contains must be set")),
        Some(MatchPattern::Exact(v)) => model::StringMatcher::Exact { value: v.clone(), ignore_case },
        Some(MatchPattern::Prefix(v)) => model::StringMatcher::Prefix { value: v.clone(), ignore_case },
        Some(MatchPattern::Suffix(v)) => model::StringMatcher::Suffix { value: v.clone(), ignore_case },
        Some(MatchPattern::Contains(v)) => model::StringMatcher::Contains { value: v.clone(), ignore_case },
        Some(MatchPattern::SafeRegex(r)) => model::StringMatcher::Regex(regex_matcher(r).map_err(at("safe_regex"))?),
        Some(MatchPattern::Custom(_)) => return Err(unsupported_field("custom")),
    })
}

/// Translate a route `HeaderMatcher`; errors relative to it.
pub(crate) fn header_matcher(h: &route::HeaderMatcher) -> ConfigResult<model::HeaderMatcher> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    let route::HeaderMatcher { name, invert_match, treat_missing_header_as_empty, header_match_specifier } = h;
    if name.is_empty() {
        return Err(ConfigError::invalid("name", "header name must not be empty"));
    }
    let exact = |v: &String| model::StringMatcher::Exact { value: v.clone(), ignore_case: false };
    let spec = match header_match_specifier {
        None => model::HeaderMatchSpec::Present(true),
        Some(S::PresentMatch(p)) => model::HeaderMatchSpec::Present(*p),
        Some(S::ExactMatch(v)) => model::HeaderMatchSpec::String(exact(v)),
        Some(S::PrefixMatch(v)) => {
            model::HeaderMatchSpec::String(model::StringMatcher::Prefix { value: v.clone(), ignore_case: false })
        }
        Some(S::SuffixMatch(v)) => {
            model::HeaderMatchSpec::String(model::StringMatcher::Suffix { value: v.clone(), ignore_case: false })
        }
        Some(S::ContainsMatch(v)) => {
            model::HeaderMatchSpec::String(model::StringMatcher::Contains { value: v.clone(), ignore_case: false })
        }
        Some(S::SafeRegexMatch(r)) => model::HeaderMatchSpec::String(model::StringMatcher::Regex(
            regex_matcher(r).map_err(at("safe_regex_match"))?,
        )),
        Some(S::StringMatch(s)) => model::HeaderMatchSpec::String(string_matcher(s).map_err(at("string_match"))?),
        Some(S::RangeMatch(r)) => {
            let envoy_types::pb::envoy::r#type::v3::Int64Range { start, end } = r;
            if start >= end {
                return Err(ConfigError::invalid(
                    "range_match",
                    format!("range start {start} must be below end {end}"),
                ));
            }
            model::HeaderMatchSpec::Range { start: *start, end: *end }
        }
    };
    Ok(model::HeaderMatcher {
        name: name.to_ascii_lowercase(),
        spec,
        invert_match: *invert_match,
        treat_missing_header_as_empty: *treat_missing_header_as_empty,
    })
}

/// Translate a `QueryParameterMatcher`; errors relative to it.
pub(crate) fn query_parameter_matcher(q: &route::QueryParameterMatcher) -> ConfigResult<model::QueryParameterMatcher> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let route::QueryParameterMatcher { name, query_parameter_match_specifier } = q;
    let string_match = match query_parameter_match_specifier {
        // No specifier and `present_match` both mean "the parameter is present".
        None | Some(S::PresentMatch(_)) => None,
        Some(S::StringMatch(s)) => Some(string_matcher(s).map_err(at("string_match"))?),
    };
    Ok(model::QueryParameterMatcher { name: name.clone(), string_match })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_regex_names_field() {
        let h = route::HeaderMatcher {
            name: "X-Foo".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(m::StringMatcher {
                ignore_case: false,
                match_pattern: Some(m::string_matcher::MatchPattern::SafeRegex(m::RegexMatcher {
                    regex: "(".into(),
                    engine_type: None,
                })),
            })),
            ..Default::default()
        };
        let err = header_matcher(&h).unwrap_err();
        assert_eq!(err.path, "string_match.safe_regex.regex");
    }

    #[test]
    fn deprecated_exact_match_lowercases_name() {
        let h = route::HeaderMatcher {
            name: "X-Foo".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::ExactMatch("v".into())),
            ..Default::default()
        };
        let got = header_matcher(&h).unwrap();
        assert_eq!(got.name, "x-foo");
        assert!(matches!(got.spec, model::HeaderMatchSpec::String(ref s) if s.matches("v")));
    }
}
