//! Route matching (Envoy's `RouteMatcher`): virtual host by `:authority`, then the first
//! matching route. Built once per route configuration; lookups allocate nothing.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::filter::route_config::{self, RouteFilterConfigs};
use pinion_xds::model::{
    DomainMatcher, HeaderMatchSpec, HeaderMatcher, PathMatch, QueryParameterMatcher, Route, RouteConfiguration,
    VirtualHost,
};

/// A compiled route configuration.
pub struct RouteTable {
    /// The config it was built from.
    pub config: Arc<RouteConfiguration>,
    exact: HashMap<String, usize>,
    /// (suffix, vhost), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// (prefix, vhost), longest prefix first.
    prefixes: Vec<(String, usize)>,
    wildcard: Option<usize>,
    /// Per virtual host (parallel to `config.virtual_hosts`): a first-path-segment index over
    /// its routes, for large tables.
    indexes: Vec<Option<RouteIndex>>,
    /// Some virtual host has `require_tls`: only then is it checked per request.
    pub any_require_tls: bool,
    /// Per virtual host, per route: compiled `typed_per_filter_config` (`None` when no level
    /// of the table configures any filter, the common case).
    filter_configs: Option<Box<[Box<[RouteFilterConfigs]>]>>,
}

/// A matched route, with what the filters and the router read from it.
pub struct Matched<'a> {
    /// The table it was found in.
    pub table: &'a RouteTable,
    /// Its virtual host.
    pub vhost: &'a Arc<VirtualHost>,
    /// The route.
    pub route: &'a Arc<Route>,
    /// Its per-filter overrides, if any level configures one.
    pub filter_configs: Option<&'a RouteFilterConfigs>,
}

/// Routes of one virtual host by the first segment of the paths they can match, so a lookup
/// in a table of thousands of routes checks only the few that can match, still in config
/// order (first match wins, as in Envoy).
struct RouteIndex {
    /// First path segment -> indexes of the routes that can only match paths with it.
    by_segment: HashMap<Box<str>, Vec<u32>>,
    /// Routes any path may match (regex, short or case-insensitive prefixes).
    generic: Vec<u32>,
}

/// Below this many routes a linear scan is as fast as the index.
const INDEX_MIN_ROUTES: usize = 16;

/// `/seg/rest` -> `seg`; `/seg` -> `seg`.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split_once('/').map_or(rest, |(seg, _)| seg))
}

impl RouteIndex {
    fn new(routes: &[Arc<Route>]) -> Option<Self> {
        if routes.len() < INDEX_MIN_ROUTES {
            return None;
        }
        let mut by_segment: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut generic = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let i = u32::try_from(i).ok()?;
            let m = &r.matcher;
            // The segment every matching path must start with, when the matcher pins it.
            let seg = match &m.path {
                _ if !m.case_sensitive => None,
                // `/seg/...`: a prefix that ends the first segment.
                PathMatch::Prefix(p) => p.strip_prefix('/').and_then(|rest| rest.split_once('/')).map(|(seg, _)| seg),
                PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => first_segment(p),
                PathMatch::Regex(_) => None,
            };
            match seg {
                Some(seg) => by_segment.entry(seg.into()).or_default().push(i),
                None => generic.push(i),
            }
        }
        Some(RouteIndex { by_segment, generic })
    }

    /// The first route (in config order) among the candidates for `req.path` that matches.
    fn find(&self, routes: &[Arc<Route>], req: &RequestView<'_>) -> Option<usize> {
        let pinned: &[u32] =
            first_segment(req.path).and_then(|seg| self.by_segment.get(seg)).map_or(&[], Vec::as_slice);
        let (mut a, mut b) = (pinned.iter().peekable(), self.generic.iter().peekable());
        loop {
            // Merge the two ascending lists: config order across both.
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            let i = *next? as usize;
            if route_matches(routes.get(i)?, req) {
                return Some(i);
            }
        }
    }
}

/// What a request carries that routes can match on.
pub struct RequestView<'a> {
    /// `:authority` / Host, as received.
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Whether it is a gRPC request.
    pub is_grpc: bool,
    /// The request's random value for `runtime_fraction` matches (Envoy draws one per stream);
    /// drawn on first use, so tables without runtime fractions never pay for it.
    pub random: std::cell::Cell<Option<u64>>,
}

impl RequestView<'_> {
    fn random_value(&self) -> u64 {
        match self.random.get() {
            Some(r) => r,
            None => {
                let r = rand::random();
                self.random.set(Some(r));
                r
            }
        }
    }
}

impl RouteTable {
    /// Compile `config`.
    pub fn new(config: Arc<RouteConfiguration>, store: &crate::stats::Store) -> Self {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut wildcard = None;
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    DomainMatcher::Any => {
                        wildcard.get_or_insert(i);
                    }
                    DomainMatcher::Exact(s) => {
                        exact.entry(s.clone()).or_insert(i);
                    }
                    DomainMatcher::Suffix(s) => suffixes.push((s.clone(), i)),
                    DomainMatcher::Prefix(s) => prefixes.push((s.clone(), i)),
                }
            }
        }
        // Envoy: longest wildcard wins; stable sort keeps config order among equals.
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let indexes = config.virtual_hosts.iter().map(|vh| RouteIndex::new(&vh.routes)).collect();
        let any_require_tls =
            config.virtual_hosts.iter().any(|vh| vh.require_tls != pinion_xds::model::RequireTls::None);
        let filter_configs = route_config::compile(&config, store);
        RouteTable { config, exact, suffixes, prefixes, wildcard, indexes, any_require_tls, filter_configs }
    }

    /// Find the virtual host for `authority` (Envoy: exact, then suffix wildcards, then prefix
    /// wildcards, then `*`). The port is part of the match unless the HCM stripped it
    /// (`strip_any_host_port` / `strip_matching_host_port`), as in Envoy.
    pub fn virtual_host(&self, authority: &str) -> Option<&Arc<VirtualHost>> {
        self.virtual_host_index(authority).and_then(|i| self.config.virtual_hosts.get(i))
    }

    fn virtual_host_index(&self, authority: &str) -> Option<usize> {
        let lower;
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        self.find(host).or(self.wildcard)
    }

    fn find(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        // Envoy requires the wildcard to match at least one character.
        if let Some((_, i)) = self.suffixes.iter().find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str())) {
            return Some(*i);
        }
        if let Some((_, i)) = self.prefixes.iter().find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str())) {
            return Some(*i);
        }
        None
    }

    /// Full lookup: vhost, then first matching route.
    pub fn route<'a>(&'a self, req: &RequestView<'_>) -> Option<Matched<'a>> {
        let i = self.virtual_host_index(req.authority)?;
        let vhost = self.config.virtual_hosts.get(i)?;
        let r = match self.indexes.get(i).and_then(Option::as_ref) {
            Some(index) => index.find(&vhost.routes, req),
            None => vhost.routes.iter().position(|r| route_matches(r, req)),
        }?;
        let filter_configs = self.filter_configs.as_ref().and_then(|f| f.get(i)?.get(r));
        Some(Matched { table: self, vhost, route: vhost.routes.get(r)?, filter_configs })
    }
}

/// `host:port` -> `host` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> Option<&str> {
    // IPv6 literals: `[::1]:80`.
    if let Some(end) = host.rfind(']') {
        return host[end + 1..].starts_with(':').then(|| &host[..=end]);
    }
    let (h, port) = host.rsplit_once(':')?;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(h)
}

fn route_matches(route: &Route, req: &RequestView<'_>) -> bool {
    let m = &route.matcher;
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => starts_with(req.path, p, m.case_sensitive),
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                req.path == p
            } else {
                req.path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(re) => re.is_match(req.path),
        PathMatch::SeparatedPrefix(p) => {
            starts_with(req.path, p, m.case_sensitive)
                && (req.path.len() == p.len() || req.path.as_bytes().get(p.len()) == Some(&b'/'))
        }
    };
    if !path_ok {
        return false;
    }
    if m.grpc && !req.is_grpc {
        return false;
    }
    if let Some(f) = &m.runtime_fraction {
        if !crate::runtime::snapshot().feature_enabled(&f.runtime_key, &f.default_value, req.random_value()) {
            return false;
        }
    }
    m.headers.iter().all(|h| header_matches(h, req)) && m.query_parameters.iter().all(|q| query_matches(q, req.query))
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len() && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// Envoy's header matcher: multiple values of a header are joined with `,` before matching.
pub fn header_matches(h: &HeaderMatcher, req: &RequestView<'_>) -> bool {
    match h.name.as_str() {
        ":authority" | "host" => value_matches(h, Some(req.authority)),
        ":path" => value_matches(h, Some(req.path)),
        ":method" => value_matches(h, Some(req.method.as_str())),
        name => header_map_matches(h, name, req.headers),
    }
}

/// A header matcher against the header `name` of `headers` (no pseudo-headers), multiple
/// values joined with `,` as Envoy joins them.
pub fn header_map_matches(h: &HeaderMatcher, name: &str, headers: &HeaderMap) -> bool {
    let mut it = headers.get_all(name).iter();
    match (it.next(), it.next()) {
        (None, _) => value_matches(h, None),
        (Some(v), None) => value_matches(h, v.to_str().ok()),
        (Some(_), Some(_)) => {
            let joined = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
            value_matches(h, Some(&joined))
        }
    }
}

/// A header matcher against a header's value (`None`: the header is absent).
pub fn value_matches(h: &HeaderMatcher, value: Option<&str>) -> bool {
    let value = match value {
        Some(v) => Some(v),
        None if h.treat_missing_header_as_empty => Some(""),
        None => None,
    };
    let matched = match (&h.spec, value) {
        (HeaderMatchSpec::Present(want), v) => {
            // `present_match: false` matches when the header is absent.
            return (v.is_some() == *want) != h.invert_match;
        }
        (_, None) => return false, // absent headers never match, even inverted (Envoy)
        (HeaderMatchSpec::String(sm), Some(v)) => sm.matches(v),
        (HeaderMatchSpec::Range { start, end }, Some(v)) => {
            v.parse::<i64>().map(|n| n >= *start && n < *end).unwrap_or(false)
        }
    };
    matched != h.invert_match
}

fn query_matches(q: &QueryParameterMatcher, query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == q.name {
            return match &q.string_match {
                None => true,
                Some(sm) => sm.matches(v),
            };
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_xds::model::*;

    fn vh(name: &str, domains: Vec<DomainMatcher>) -> Arc<VirtualHost> {
        Arc::new(VirtualHost {
            name: name.into(),
            domains,
            routes: vec![],
            headers: HeaderMutations::default(),
            require_tls: RequireTls::None,
            retry_policy: None,
            include_request_attempt_count: false,
            include_attempt_count_in_response: false,
            per_request_buffer_limit_bytes: None,
            per_filter_config: vec![],
            legacy_cors: None,
        })
    }

    #[test]
    fn virtual_host_priority_and_port_stripping() {
        let cfg = RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![
                vh("any", vec![DomainMatcher::Any]),
                vh("exact", vec![DomainMatcher::Exact("foo.com".into())]),
                vh("short", vec![DomainMatcher::Suffix(".com".into())]),
                vh("long", vec![DomainMatcher::Suffix(".foo.com".into())]),
                vh("prefix", vec![DomainMatcher::Prefix("api.".into())]),
            ],
            headers: HeaderMutations::default(),
            internal_only_headers: vec![],
            max_direct_response_body_size_bytes: 4096,
            most_specific_header_mutations_wins: false,
            validate_clusters: None,
            vhds: None,
            per_filter_config: vec![],
        };
        let t = RouteTable::new(Arc::new(cfg), &crate::stats::Store::new(1));
        let name = |a: &str| t.virtual_host(a).map(|v| v.name.clone()).unwrap();
        assert_eq!(name("foo.com"), "exact");
        assert_eq!(name("FOO.com"), "exact");
        assert_eq!(name("foo.com:8080"), "any");
        assert_eq!(name("a.foo.com"), "long");
        assert_eq!(name("bar.com"), "short");
        assert_eq!(name("api.example.org"), "prefix");
        assert_eq!(name("other.org"), "any");
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("[::1]"), None);
    }

    fn route(path: PathMatch, case_sensitive: bool, name: String) -> Arc<Route> {
        Arc::new(Route {
            name,
            matcher: RouteMatch {
                path,
                case_sensitive,
                headers: vec![],
                query_parameters: vec![],
                grpc: false,
                runtime_fraction: None,
            },
            action: RouteAction::NonForwarding,
            headers: HeaderMutations::default(),
            per_filter_config: vec![],
            per_request_buffer_limit_bytes: None,
        })
    }

    #[test]
    fn the_segment_index_finds_what_a_linear_scan_finds() {
        // Every kind of matcher, interleaved, so config order crosses the index's two lists.
        let mut routes = Vec::new();
        for i in 0..8 {
            routes.push(route(PathMatch::Prefix(format!("/svc-{i}/")), true, format!("p{i}")));
            routes.push(route(PathMatch::Exact(format!("/svc-{i}")), true, format!("e{i}")));
            routes.push(route(PathMatch::SeparatedPrefix(format!("/sep-{i}")), true, format!("s{i}")));
            routes.push(route(PathMatch::Prefix(format!("/svc-{i}")), true, format!("short{i}")));
            routes.push(route(PathMatch::Prefix(format!("/CI-{i}/")), false, format!("ci{i}")));
            if i % 3 == 0 {
                routes.push(route(
                    PathMatch::Regex(regex::Regex::new(&format!("^/re-{i}.*$")).unwrap()),
                    true,
                    format!("re{i}"),
                ));
            }
        }
        routes.push(route(PathMatch::Prefix("/".into()), true, "catch-all".into()));
        let mut v = (*vh("v", vec![DomainMatcher::Any])).clone();
        v.routes = routes;
        let cfg = RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![Arc::new(v)],
            headers: HeaderMutations::default(),
            internal_only_headers: vec![],
            max_direct_response_body_size_bytes: 4096,
            most_specific_header_mutations_wins: false,
            validate_clusters: None,
            vhds: None,
            per_filter_config: vec![],
        };
        let t = RouteTable::new(Arc::new(cfg), &crate::stats::Store::new(1));
        assert!(t.indexes[0].is_some(), "a table this size is indexed");
        let headers = http::HeaderMap::new();
        let method = http::Method::GET;
        let mut checked = 0;
        for i in 0..9 {
            for p in [
                format!("/svc-{i}/x"),
                format!("/svc-{i}"),
                format!("/svc-{i}x"),
                format!("/sep-{i}"),
                format!("/sep-{i}/y"),
                format!("/sep-{i}z"),
                format!("/ci-{i}/a"),
                format!("/CI-{i}/a"),
                format!("/re-{i}abc"),
                "/".to_string(),
                "/unknown/path".to_string(),
                String::new(),
            ] {
                let req = RequestView {
                    authority: "h",
                    path: &p,
                    query: None,
                    method: &method,
                    headers: &headers,
                    is_grpc: false,
                    random: Default::default(),
                };
                let vh = &t.config.virtual_hosts[0];
                let linear = vh.routes.iter().find(|r| route_matches(r, &req)).map(|r| r.name.clone());
                let indexed = t.route(&req).map(|m| m.route.name.clone());
                assert_eq!(indexed, linear, "path {p:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 108);
    }
}
