//! The router's route decision (what Envoy's `RouteEntryImpl` answers in `router.cc`): which
//! cluster a matched route sends to, and how the path and `Host` are rewritten on the way.
//!
//! Pure functions over the route and a view of the request: no I/O, no clock, and the weighted
//! pick takes its random number as an argument, so every rule is table-tested below without a
//! socket.

use std::borrow::Cow;

use http::HeaderMap;
use pinion_xds::model::{ClusterSpecifier, ForwardAction, HostRewrite, PathMatch, Route, WeightedCluster};

/// The cluster a forwarding route picked, decided when the route is matched (as Envoy picks a
/// weighted cluster during route resolution), so HTTP filters see it before the router runs.
#[derive(Debug, Clone)]
pub struct ClusterChoice<'a> {
    /// The cluster name (empty when `cluster_header` is absent: no such cluster).
    pub name: Cow<'a, str>,
    /// The `weighted_clusters` entry, when the route splits traffic.
    pub weighted: Option<&'a WeightedCluster>,
    /// Its index in `weighted_clusters` (per-filter overrides are kept by index).
    pub weighted_index: Option<usize>,
}

/// Pick the cluster of `action`. `random` is the request's draw for the weighted split.
pub fn choose_cluster<'a>(action: &'a ForwardAction, headers: &HeaderMap, random: u64) -> ClusterChoice<'a> {
    match &action.cluster {
        ClusterSpecifier::Cluster(name) => {
            ClusterChoice { name: Cow::Borrowed(name), weighted: None, weighted_index: None }
        }
        ClusterSpecifier::ClusterHeader(h) => ClusterChoice {
            name: Cow::Owned(headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()),
            weighted: None,
            weighted_index: None,
        },
        ClusterSpecifier::Weighted { clusters, total_weight } => {
            let index = pick_weighted(clusters, *total_weight, random);
            let weighted = index.and_then(|i| clusters.get(i));
            ClusterChoice {
                name: Cow::Borrowed(weighted.map_or("", |w| w.name.as_str())),
                weighted,
                weighted_index: index,
            }
        }
    }
}

/// Envoy's `WeightedClusterEntry` selection: `random % total` falls into one cluster's range,
/// ranges laid out in config order.
fn pick_weighted(clusters: &[WeightedCluster], total: u64, random: u64) -> Option<usize> {
    if total == 0 || clusters.is_empty() {
        return None;
    }
    let mut r = random % total;
    for (i, c) in clusters.iter().enumerate() {
        let w = u64::from(c.weight);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    Some(clusters.len() - 1)
}

/// The upstream host's name, as `auto_host_rewrite` uses it (empty for IP-only hosts).
pub type HostName<'a> = &'a str;

/// What the router changes in the request's path and `Host` before sending it upstream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// The new `path?query`, when the path is rewritten.
    pub path_and_query: Option<String>,
    /// The new `Host`.
    pub host: Option<String>,
}

impl Rewrites {
    /// True when nothing changes (the common case).
    pub fn is_empty(&self) -> bool {
        self.path_and_query.is_none() && self.host.is_none()
    }
}

/// Envoy's path and host rewrites for `route`/`action`, given the request's `path?query`, its
/// headers, the weighted cluster chosen and the upstream host's name.
pub fn rewrites(
    route: &Route,
    action: &ForwardAction,
    weighted: Option<&WeightedCluster>,
    path_and_query: &str,
    headers: &HeaderMap,
    upstream_hostname: HostName<'_>,
) -> Rewrites {
    let no_host_rewrite =
        matches!(action.host_rewrite, HostRewrite::None) && weighted.is_none_or(|w| w.host_rewrite_literal.is_none());
    if action.prefix_rewrite.is_none() && action.regex_rewrite.is_none() && no_host_rewrite {
        return Rewrites::default();
    }
    let (path, query) = split_query(path_and_query);
    let new_path = if let Some(prefix) = &action.prefix_rewrite {
        Some(prefix_rewrite(path, &route.matcher.path, prefix))
    } else {
        action
            .regex_rewrite
            .as_ref()
            .map(|(re, sub)| re.replace_all(path, regex_substitution(sub).as_str()).into_owned())
    };
    let path_and_query = new_path.map(|p| match query {
        Some(q) => format!("{p}?{q}"),
        None => p,
    });
    let host = match (weighted.and_then(|w| w.host_rewrite_literal.as_ref()), &action.host_rewrite) {
        (Some(h), _) => Some(h.clone()),
        (None, HostRewrite::None) => None,
        (None, HostRewrite::Literal(h)) => Some(h.clone()),
        // Envoy rewrites to the host's hostname only; IP-only hosts (STATIC) keep the Host.
        (None, HostRewrite::Auto) => (!upstream_hostname.is_empty()).then(|| upstream_hostname.to_owned()),
        (None, HostRewrite::Header(h)) => headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_owned),
        (None, HostRewrite::PathRegex(re, sub)) => {
            Some(re.replace_all(path, regex_substitution(sub).as_str()).into_owned())
        }
    };
    Rewrites { path_and_query, host }
}

/// `prefix_rewrite` (of a route or a redirect): the part of `path` the route's prefix matched
/// is replaced; a route that does not match by prefix replaces the whole path.
pub fn prefix_rewrite(path: &str, matcher: &PathMatch, prefix: &str) -> String {
    match matcher {
        PathMatch::Prefix(m) | PathMatch::SeparatedPrefix(m) if path.len() >= m.len() => {
            format!("{prefix}{}", &path[m.len()..])
        }
        _ => prefix.to_owned(),
    }
}

/// Envoy's `regex_rewrite` substitution uses `\1`; the regex crate uses `${1}`.
pub fn regex_substitution(sub: &str) -> String {
    let mut out = String::with_capacity(sub.len());
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str("${");
                out.push(d);
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// `path?query` -> (`path`, `query`).
pub fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use pinion_xds::model::{HeaderMutations, RouteAction, RouteMatch};
    use regex::Regex;
    use std::sync::Arc;

    fn action(cluster: ClusterSpecifier) -> ForwardAction {
        ForwardAction {
            cluster,
            cluster_not_found_response_code: 503,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: HostRewrite::None,
            append_x_forwarded_host: false,
            timeout: None,
            idle_timeout: None,
            retry_policy: None,
            priority: Default::default(),
            upgrade_websocket: None,
            legacy_cors: None,
        }
    }

    fn route(path: PathMatch, a: &ForwardAction) -> Route {
        Route {
            name: String::new(),
            matcher: RouteMatch {
                path,
                case_sensitive: true,
                headers: vec![],
                query_parameters: vec![],
                grpc: false,
                runtime_fraction: None,
            },
            action: RouteAction::Forward(Arc::new(a.clone())),
            headers: HeaderMutations::default(),
            per_filter_config: vec![],
        }
    }

    fn wc(name: &str, weight: u32, host: Option<&str>) -> WeightedCluster {
        WeightedCluster {
            name: name.into(),
            weight,
            headers: HeaderMutations::default(),
            host_rewrite_literal: host.map(Into::into),
            per_filter_config: vec![],
        }
    }

    #[test]
    fn cluster_choice() {
        let mut headers = HeaderMap::new();
        headers.insert("x-cluster", "from-header".parse().unwrap());
        let weighted =
            ClusterSpecifier::Weighted { clusters: vec![wc("a", 1, None), wc("b", 3, None)], total_weight: 4 };
        // (specifier, random draw, expected cluster name, weighted?)
        let cases: Vec<(ClusterSpecifier, u64, &str, bool)> = vec![
            (ClusterSpecifier::Cluster("plain".into()), 0, "plain", false),
            (ClusterSpecifier::ClusterHeader(HeaderName::from_static("x-cluster")), 0, "from-header", false),
            // A missing header names no cluster: the router answers cluster_not_found.
            (ClusterSpecifier::ClusterHeader(HeaderName::from_static("x-absent")), 0, "", false),
            (weighted.clone(), 0, "a", true),
            (weighted.clone(), 1, "b", true),
            (weighted.clone(), 3, "b", true),
            // The draw is taken modulo the total weight.
            (weighted.clone(), 4, "a", true),
            (weighted, u64::MAX, "b", true),
            (ClusterSpecifier::Weighted { clusters: vec![], total_weight: 0 }, 7, "", false),
        ];
        for (spec, random, want, is_weighted) in cases {
            let a = action(spec);
            let got = choose_cluster(&a, &headers, random);
            assert_eq!(got.name, want, "random {random}");
            assert_eq!(got.weighted.is_some(), is_weighted, "random {random}");
        }
    }

    #[test]
    fn weighted_split_follows_weights() {
        let a =
            action(ClusterSpecifier::Weighted { clusters: vec![wc("a", 1, None), wc("b", 3, None)], total_weight: 4 });
        let b = (0..400u64).filter(|r| choose_cluster(&a, &HeaderMap::new(), *r).name == "b").count();
        assert_eq!(b, 300);
    }

    #[test]
    fn path_and_host_rewrites() {
        let mut headers = HeaderMap::new();
        headers.insert("x-host", "header.example".parse().unwrap());
        let prefix = PathMatch::Prefix("/api/".into());
        type Setup = fn(&mut ForwardAction);
        // (route path match, action setup, weighted host literal, request path, upstream hostname,
        //  expected path, expected host)
        type Case<'a> = (PathMatch, Setup, Option<&'a str>, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (prefix.clone(), |_| {}, None, "/api/x?q=1", "svc", None, None),
            (
                prefix.clone(),
                |a| a.prefix_rewrite = Some("/v2/".into()),
                None,
                "/api/x?q=1",
                "",
                Some("/v2/x?q=1"),
                None,
            ),
            // A prefix rewrite on a non-prefix route replaces the whole path.
            (
                PathMatch::Exact("/api/x".into()),
                |a| a.prefix_rewrite = Some("/y".into()),
                None,
                "/api/x",
                "",
                Some("/y"),
                None,
            ),
            (
                prefix.clone(),
                |a| a.regex_rewrite = Some((Regex::new("^/api/(.*)$").unwrap(), "/\\1/end".into())),
                None,
                "/api/x?k=v",
                "",
                Some("/x/end?k=v"),
                None,
            ),
            (
                prefix.clone(),
                |a| a.host_rewrite = HostRewrite::Literal("lit.example".into()),
                None,
                "/",
                "",
                None,
                Some("lit.example"),
            ),
            // auto_host_rewrite takes the host's name; an IP-only host keeps the Host.
            (
                prefix.clone(),
                |a| a.host_rewrite = HostRewrite::Auto,
                None,
                "/",
                "svc.internal",
                None,
                Some("svc.internal"),
            ),
            (prefix.clone(), |a| a.host_rewrite = HostRewrite::Auto, None, "/", "", None, None),
            (
                prefix.clone(),
                |a| a.host_rewrite = HostRewrite::Header(HeaderName::from_static("x-host")),
                None,
                "/",
                "",
                None,
                Some("header.example"),
            ),
            (
                prefix.clone(),
                |a| a.host_rewrite = HostRewrite::Header(HeaderName::from_static("x-none")),
                None,
                "/",
                "",
                None,
                None,
            ),
            (
                prefix.clone(),
                |a| a.host_rewrite = HostRewrite::PathRegex(Regex::new("^/api/([a-z]+).*$").unwrap(), "\\1.svc".into()),
                None,
                "/api/users/1?x",
                "",
                None,
                Some("users.svc"),
            ),
            // The weighted cluster's literal wins over the route's host rewrite.
            (
                prefix,
                |a| a.host_rewrite = HostRewrite::Literal("route".into()),
                Some("weighted"),
                "/",
                "",
                None,
                Some("weighted"),
            ),
        ];
        for (i, (path, setup, w_host, pq, hostname, want_path, want_host)) in cases.into_iter().enumerate() {
            let mut a = action(ClusterSpecifier::Cluster("c".into()));
            setup(&mut a);
            let r = route(path, &a);
            let w = w_host.map(|h| wc("c", 1, Some(h)));
            let got = rewrites(&r, &a, w.as_ref(), pq, &headers, hostname);
            assert_eq!(got.path_and_query.as_deref(), want_path, "case {i}");
            assert_eq!(got.host.as_deref(), want_host, "case {i}");
        }
    }

    #[test]
    fn regex_substitution_maps_groups_and_escapes_dollars() {
        for (sub, want) in [("\\1", "${1}"), ("/a/\\2/b", "/a/${2}/b"), ("$x", "$$x"), ("\\x", "\\x")] {
            assert_eq!(regex_substitution(sub), want);
        }
    }
}
