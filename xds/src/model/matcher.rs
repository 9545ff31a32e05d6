//! Matchers: `envoy.type.matcher.v3.StringMatcher`, header and query-parameter matchers.

use regex::Regex;

/// `StringMatcher`, with `ignore_case` applied at build time where possible.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// `exact`.
    Exact {
        /// The string to compare with.
        value: String,
        /// Compare ASCII case-insensitively.
        ignore_case: bool,
    },
    /// `prefix`.
    Prefix {
        /// The string to compare with.
        value: String,
        /// Compare ASCII case-insensitively.
        ignore_case: bool,
    },
    /// `suffix`.
    Suffix {
        /// The string to compare with.
        value: String,
        /// Compare ASCII case-insensitively.
        ignore_case: bool,
    },
    /// `contains`.
    Contains {
        /// The string to compare with.
        value: String,
        /// Compare ASCII case-insensitively.
        ignore_case: bool,
    },
    /// `safe_regex` (RE2 syntax; full match as Envoy does).
    Regex(Regex),
}

impl StringMatcher {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatcher::Exact { value, ignore_case } => {
                if *ignore_case {
                    value.eq_ignore_ascii_case(s)
                } else {
                    value == s
                }
            }
            StringMatcher::Prefix { value, ignore_case } => {
                s.len() >= value.len() && s.is_char_boundary(value.len()) && eq(&s[..value.len()], value, *ignore_case)
            }
            StringMatcher::Suffix { value, ignore_case } => {
                s.len() >= value.len()
                    && s.is_char_boundary(s.len() - value.len())
                    && eq(&s[s.len() - value.len()..], value, *ignore_case)
            }
            StringMatcher::Contains { value, ignore_case } => {
                if *ignore_case {
                    s.to_ascii_lowercase().contains(&value.to_ascii_lowercase())
                } else {
                    s.contains(value.as_str())
                }
            }
            StringMatcher::Regex(re) => full_match(re, s),
        }
    }
}

fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// RE2 `FullMatch` semantics, as Envoy's `safe_regex` uses. Every `Regex` in the model is
/// compiled anchored (`^(?:...)$`, see `anchored_regex`), so a plain `is_match` is a full match.
pub fn full_match(re: &Regex, s: &str) -> bool {
    re.is_match(s)
}

/// Compile `pattern` for full-match use (`^(?:pattern)$`), as every model regex is.
pub fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(1 << 20).build()
}

/// `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lowercased header name (`:authority`, `:path`, `:method` pseudo-headers allowed).
    pub name: String,
    /// How the value is matched.
    pub spec: HeaderMatchSpec,
    /// `invert_match`.
    pub invert_match: bool,
    /// `treat_missing_header_as_empty`.
    pub treat_missing_header_as_empty: bool,
}

/// The header match specifier.
#[derive(Debug, Clone)]
pub enum HeaderMatchSpec {
    /// `present_match: true` (or no specifier: presence).
    Present(bool),
    /// `string_match` or the deprecated exact/prefix/suffix/contains/safe_regex fields.
    String(StringMatcher),
    /// `range_match` [start, end).
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
}

/// `envoy.config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryParameterMatcher {
    /// Parameter name.
    pub name: String,
    /// `None` = `present_match`.
    pub string_match: Option<StringMatcher>,
}
