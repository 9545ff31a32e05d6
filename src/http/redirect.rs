//! Redirect responses, built in one place for the three kinds Envoy sends: a route's
//! `redirect` action, a virtual host's `require_tls` (SSL redirect), and the HCM's
//! `UNESCAPE_AND_REDIRECT` path normalization.

use http::{header, HeaderValue, Response, StatusCode};
use pinion_xds::model::{PathMatch, RedirectAction, RedirectPath};

use super::body::ResponseBody;
use super::router::route_decision::{prefix_rewrite, regex_substitution, split_query};

/// A redirect response to `location` (an unrepresentable location is left out, as a header
/// Envoy could not have built either).
pub fn response(status: StatusCode, location: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The `Location` of a route's `redirect` action for a request to `authority` +
/// `path_and_query`; `route_path` is how the route matched (for `prefix_rewrite`).
pub fn route_location(
    rd: &RedirectAction,
    authority: &str,
    path_and_query: &str,
    route_path: &PathMatch,
    tls: bool,
) -> String {
    let (path, query) = split_query(path_and_query);
    let scheme = rd.scheme.as_deref().unwrap_or(if tls { "https" } else { "http" });
    let (mut host, mut port) = match super::route_table::strip_port(authority) {
        Some(h) => (h, Some(&authority[h.len() + 1..])),
        None => (authority, None),
    };
    if let Some(h) = &rd.host {
        // `host_redirect` replaces the whole authority, port included.
        host = h;
        port = None;
    }
    if rd.scheme.is_some() {
        // A scheme change drops the old scheme's port.
        port = None;
    }
    let port_redirect = rd.port.map(|p| p.to_string());
    if let Some(p) = &port_redirect {
        port = Some(p);
    }
    let new_path = match &rd.path {
        RedirectPath::Keep => path.to_owned(),
        RedirectPath::Path(p) => p.clone(),
        RedirectPath::PrefixRewrite(prefix) => prefix_rewrite(path, route_path, prefix),
        RedirectPath::RegexRewrite(re, sub) => re.replace_all(path, regex_substitution(sub).as_str()).into_owned(),
    };
    let path_has_query = matches!(&rd.path, RedirectPath::Path(p) if p.contains('?'));
    let mut loc = format!("{scheme}://{host}");
    if let Some(p) = port {
        loc.push(':');
        loc.push_str(p);
    }
    loc.push_str(&new_path);
    if !rd.strip_query && !path_has_query {
        if let Some(q) = query {
            loc.push('?');
            loc.push_str(q);
        }
    }
    loc
}

/// The `Location` of a `require_tls` redirect: the same authority and path over https.
pub fn tls_location(authority: &str, path_and_query: &str) -> String {
    format!("https://{authority}{path_and_query}")
}

/// The `Location` of a path-normalization redirect: the normalized path, same query.
pub fn normalized_path_location(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn rd(path: RedirectPath) -> RedirectAction {
        RedirectAction { scheme: None, host: None, port: None, path, strip_query: false, response_code: 301 }
    }

    #[test]
    fn route_redirect_locations() {
        let prefix = PathMatch::Prefix("/old/".into());
        type Setup = fn(&mut RedirectAction);
        // (setup, authority, path?query, tls, expected Location)
        let cases: Vec<(Setup, &str, &str, bool, &str)> = vec![
            (|_| {}, "a.example", "/old/x?q=1", false, "http://a.example/old/x?q=1"),
            (|_| {}, "a.example:8080", "/p", true, "https://a.example:8080/p"),
            (|r| r.scheme = Some("https".into()), "a.example:8080", "/p", false, "https://a.example/p"),
            (|r| r.host = Some("b.example".into()), "a.example:8080", "/p", false, "http://b.example/p"),
            (|r| r.port = Some(9443), "a.example:8080", "/p", false, "http://a.example:9443/p"),
            (|r| r.path = RedirectPath::Path("/new".into()), "a", "/old/x?q=1", false, "http://a/new?q=1"),
            (|r| r.path = RedirectPath::Path("/new?k=v".into()), "a", "/old/x?q=1", false, "http://a/new?k=v"),
            (|r| r.path = RedirectPath::PrefixRewrite("/v2/".into()), "a", "/old/x", false, "http://a/v2/x"),
            (
                |r| r.path = RedirectPath::RegexRewrite(Regex::new("^/old/(.*)$").unwrap(), "/\\1/z".into()),
                "a",
                "/old/x",
                false,
                "http://a/x/z",
            ),
            (|r| r.strip_query = true, "a", "/old/x?q=1", false, "http://a/old/x"),
        ];
        for (i, (setup, authority, pq, tls, want)) in cases.into_iter().enumerate() {
            let mut r = rd(RedirectPath::Keep);
            setup(&mut r);
            assert_eq!(route_location(&r, authority, pq, &prefix, tls), want, "case {i}");
        }
    }

    #[test]
    fn tls_and_normalization_locations() {
        assert_eq!(tls_location("a.example:80", "/x?y"), "https://a.example:80/x?y");
        assert_eq!(normalized_path_location("/a/b", Some("q=1")), "/a/b?q=1");
        assert_eq!(normalized_path_location("/a/b", None), "/a/b");
    }
}
