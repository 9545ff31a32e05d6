//! The router's route decision (what Envoy's `RouteEntryImpl` answers in `router.cc`): which
//! cluster a matched route sends to, and how the path and `Host` are rewritten on the way.
//!
//! Pure functions over the route and a view of the request: no I/O, no clock, and the weighted
//! pick takes its random number as an argument, so every rule is table-tested below without a
//! socket.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use pinion_xds::model::{
    ClusterSpecifier, ForwardAction, HostRewrite, PathMatch, RetryPolicy, Route, VirtualHost, WeightedCluster,
};

/// Asks for a route timeout (consumed).
pub const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
/// Asks for a per-try timeout (consumed).
pub const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
/// The timeout a downstream Envoy expects (read with `respect_expected_rq_timeout`).
pub const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// The retry policy in effect: the route's, else its virtual host's (Envoy never merges them).
pub fn retry_policy<'a>(action: &'a ForwardAction, vhost: &'a VirtualHost) -> Option<&'a RetryPolicy> {
    action.retry_policy.as_ref().or(vhost.retry_policy.as_ref())
}

/// A request's timeouts (Envoy's `TimeoutData`); `None` is disabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The route timeout over all attempts.
    pub global: Option<Duration>,
    /// Each attempt's timeout.
    pub per_try: Option<Duration>,
    /// Each attempt's idle timeout.
    pub per_try_idle: Option<Duration>,
}

/// Envoy's `FilterUtility::finalTimeout`: the route's timeout and its retry policy's per-try
/// timeouts, overridden by `x-envoy-upstream-rq-timeout-ms` and
/// `x-envoy-upstream-rq-per-try-timeout-ms` (both consumed; values in ms, 0 disables), or with
/// `respect_expected_rq_timeout` by a downstream Envoy's `x-envoy-expected-rq-timeout-ms`
/// (kept). A per-try timeout not below the global one is dropped.
pub fn final_timeouts(
    route: Option<Duration>,
    policy: Option<&RetryPolicy>,
    headers: &mut HeaderMap,
    respect_expected_rq_timeout: bool,
) -> Timeouts {
    let mut t = Timeouts {
        global: route,
        per_try: policy.and_then(|p| p.per_try_timeout),
        per_try_idle: policy.and_then(|p| p.per_try_idle_timeout),
    };
    // None of the headers: one pass over the names instead of three lookups (the common case).
    if headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        let ms = |headers: &HeaderMap, name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
        };
        if respect_expected_rq_timeout && headers.contains_key(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS) {
            if let Some(g) = ms(headers, &X_ENVOY_EXPECTED_RQ_TIMEOUT_MS) {
                t.global = g;
            }
        } else if headers.contains_key(X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
            if let Some(g) = ms(headers, &X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
                t.global = g;
            }
            headers.remove(X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS);
        }
        if headers.contains_key(X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
            if let Some(p) = ms(headers, &X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
                t.per_try = p;
            }
            headers.remove(X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS);
        }
    }
    if let (Some(p), Some(g)) = (t.per_try, t.global) {
        if p >= g {
            t.per_try = None;
        }
    }
    t
}

/// Envoy's `setTimeoutHeaders`: the `x-envoy-expected-rq-timeout-ms` an attempt carries, in
/// ms, `elapsed` into the request: the per-try timeout (else the global one), never past what
/// is left of the global one (1 when nothing is). `None`: no timeout at all.
pub fn expected_timeout_ms(t: &Timeouts, elapsed: Duration) -> Option<u64> {
    let global = t.global.map_or(0, |g| g.as_millis() as u64);
    let mut expected = t.per_try.map_or(global, |p| p.as_millis() as u64);
    if expected == 0 {
        return None;
    }
    if global > 0 {
        let elapsed = elapsed.as_millis() as u64;
        expected = if elapsed >= global { 1 } else { expected.min(global - elapsed) };
    }
    Some(expected)
}

/// The most request body kept for retries (Envoy's `retry_shadow_buffer_limit_`): the
/// listener's `per_connection_buffer_limit_bytes` (0: no limit), lowered by the route's
/// `per_request_buffer_limit_bytes`, else the virtual host's.
pub fn retry_buffer_limit(listener_limit: u32, route: &Route, vhost: &VirtualHost) -> usize {
    let listener = if listener_limit == 0 { usize::MAX } else { listener_limit as usize };
    match route.per_request_buffer_limit_bytes.or(vhost.per_request_buffer_limit_bytes) {
        Some(r) => listener.min(r as usize),
        None => listener,
    }
}

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
            max_stream_duration: None,
            retry_policy: None,
            priority: Default::default(),
            upgrade_websocket: None,
            legacy_cors: None,
            hash_policy: Vec::new(),
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
            per_request_buffer_limit_bytes: None,
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

    #[test]
    fn final_timeouts_table() {
        let ms = |n: u64| Some(Duration::from_millis(n));
        let policy = RetryPolicy { per_try_timeout: ms(300), per_try_idle_timeout: ms(100), ..RetryPolicy::default() };
        // (route timeout, policy?, request headers, respect_expected, want, headers left)
        #[rustfmt::skip]
        type Row = (Option<Duration>, bool, Vec<(&'static str, &'static str)>, bool, Timeouts, usize);
        let rows: Vec<Row> = vec![
            (ms(15000), false, vec![], false, Timeouts { global: ms(15000), per_try: None, per_try_idle: None }, 0),
            (
                ms(15000),
                true,
                vec![],
                false,
                Timeouts { global: ms(15000), per_try: ms(300), per_try_idle: ms(100) },
                0,
            ),
            // Per try at or above the global timeout: dropped (the idle one stays).
            (ms(300), true, vec![], false, Timeouts { global: ms(300), per_try: None, per_try_idle: ms(100) }, 0),
            (None, true, vec![], false, Timeouts { global: None, per_try: ms(300), per_try_idle: ms(100) }, 0),
            (
                ms(15000),
                false,
                vec![("x-envoy-upstream-rq-timeout-ms", "2000")],
                false,
                Timeouts { global: ms(2000), ..Timeouts::default() },
                0,
            ),
            (ms(15000), false, vec![("x-envoy-upstream-rq-timeout-ms", "0")], false, Timeouts::default(), 0),
            (
                ms(15000),
                false,
                vec![("x-envoy-upstream-rq-timeout-ms", "soon")],
                false,
                Timeouts { global: ms(15000), ..Timeouts::default() },
                0,
            ),
            (
                ms(15000),
                true,
                vec![("x-envoy-upstream-rq-per-try-timeout-ms", "50")],
                false,
                Timeouts { global: ms(15000), per_try: ms(50), per_try_idle: ms(100) },
                0,
            ),
            (
                ms(1000),
                false,
                vec![("x-envoy-upstream-rq-per-try-timeout-ms", "5000")],
                false,
                Timeouts { global: ms(1000), ..Timeouts::default() },
                0,
            ),
            // Without respect_expected_rq_timeout the expected timeout is not read (nor removed).
            (
                ms(15000),
                false,
                vec![("x-envoy-expected-rq-timeout-ms", "10")],
                false,
                Timeouts { global: ms(15000), ..Timeouts::default() },
                1,
            ),
            (
                ms(15000),
                false,
                vec![("x-envoy-expected-rq-timeout-ms", "10"), ("x-envoy-upstream-rq-timeout-ms", "20")],
                true,
                Timeouts { global: ms(10), ..Timeouts::default() },
                2,
            ),
            (
                ms(15000),
                false,
                vec![("x-envoy-upstream-rq-timeout-ms", "20")],
                true,
                Timeouts { global: ms(20), ..Timeouts::default() },
                0,
            ),
            (
                ms(15000),
                false,
                vec![("x-envoy-other", "1")],
                false,
                Timeouts { global: ms(15000), ..Timeouts::default() },
                1,
            ),
        ];
        for (i, (route, with_policy, hs, respect, want, left)) in rows.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            for (k, v) in hs {
                headers.insert(HeaderName::from_static(k), v.parse().unwrap());
            }
            let got = final_timeouts(route, with_policy.then_some(&policy), &mut headers, respect);
            assert_eq!(got, want, "row {i}");
            assert_eq!(headers.len(), left, "row {i}: {headers:?}");
        }
    }

    #[test]
    fn expected_timeout_header() {
        let ms = |n: u64| Some(Duration::from_millis(n));
        let t = |global, per_try| Timeouts { global, per_try, per_try_idle: None };
        let d = Duration::from_millis;
        assert_eq!(expected_timeout_ms(&t(ms(15000), None), d(0)), Some(15000));
        assert_eq!(expected_timeout_ms(&t(ms(15000), None), d(21)), Some(14979));
        assert_eq!(expected_timeout_ms(&t(ms(5000), ms(300)), d(400)), Some(300));
        assert_eq!(expected_timeout_ms(&t(ms(5000), ms(300)), d(4800)), Some(200));
        assert_eq!(expected_timeout_ms(&t(ms(5000), ms(300)), d(6000)), Some(1));
        assert_eq!(expected_timeout_ms(&t(None, ms(300)), d(6000)), Some(300));
        assert_eq!(expected_timeout_ms(&t(None, None), d(0)), None);
    }
}
