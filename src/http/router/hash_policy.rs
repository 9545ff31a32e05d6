//! The request hash of a route's `hash_policy` (Envoy's `HashPolicyImpl::generateHash`), which
//! ring hash and Maglev clusters pick hosts by. Every value is hashed with xxHash64 (seed 0),
//! and several policies combine as Envoy combines them, so the same request gets the same hash
//! in Pinion and in Envoy.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri};
use pinion_xds::model::{HashPolicy, HashPolicyKind};
use xxhash_rust::xxh64::xxh64;

use super::route_decision::regex_substitution;

/// What the hash policies read from a request.
pub struct HashInput<'a> {
    /// Request headers (after the connection manager's processing, before route mutations).
    pub headers: &'a HeaderMap,
    /// Method (`:method`).
    pub method: &'a Method,
    /// Request target (`:path`, and the query for `query_parameter`).
    pub uri: &'a Uri,
    /// The downstream client's address as the connection manager sees it (the trusted
    /// `x-forwarded-for` hop, else the peer): `connection_properties.source_ip`.
    pub client_ip: IpAddr,
    /// The connection's peer and local addresses, which a generated cookie's value is derived
    /// from (as Envoy: the same for every request of a connection).
    pub peer: SocketAddr,
    /// See `peer`.
    pub local: SocketAddr,
}

/// The request's hash, or `None` when no policy produced one. A `cookie` policy with a `ttl`
/// whose cookie is missing generates one: its `Set-Cookie` value is pushed onto `set_cookies`
/// for the response.
pub fn generate(policies: &[HashPolicy], input: &HashInput<'_>, set_cookies: &mut Vec<HeaderValue>) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        if let Some(new) = evaluate(&p.kind, input, set_cookies) {
            // Rotating the old value keeps two equal policies from cancelling out (Envoy's rule).
            let old = hash.map_or(0, |h| h.rotate_left(1));
            hash = Some(old ^ new);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

fn evaluate(kind: &HashPolicyKind, input: &HashInput<'_>, set_cookies: &mut Vec<HeaderValue>) -> Option<u64> {
    match kind {
        HashPolicyKind::Header { name, regex_rewrite } => header_hash(name, regex_rewrite.as_ref(), input),
        HashPolicyKind::Cookie { name, path, ttl, attributes } => match cookie_value(input.headers, name) {
            Some(v) if !v.is_empty() => Some(xxh64(v, 0)),
            _ => {
                let ttl = (*ttl)?;
                let value = generated_cookie_value(input.peer, input.local);
                let set_cookie = set_cookie_value(name, &value, path, ttl.as_secs(), attributes);
                if let Ok(v) = HeaderValue::from_str(&set_cookie) {
                    set_cookies.push(v);
                }
                Some(xxh64(value.as_bytes(), 0))
            }
        },
        HashPolicyKind::SourceIp => Some(xxh64(input.client_ip.to_string().as_bytes(), 0)),
        HashPolicyKind::QueryParameter { name } => {
            query_first_value(input.uri.query()?, name).map(|v| xxh64(v.as_bytes(), 0))
        }
    }
}

/// Envoy's header hash: every value of the header (pseudo-headers included), each rewritten
/// by the regex if configured, sorted so their order does not matter, hashed as one
/// concatenation.
fn header_hash(name: &str, rewrite: Option<&(regex::Regex, String)>, input: &HashInput<'_>) -> Option<u64> {
    let pseudo: Option<&str> = match name {
        ":authority" | "host" => Some(input.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("")),
        ":path" => Some(input.uri.path_and_query().map_or("/", |p| p.as_str())),
        ":method" => Some(input.method.as_str()),
        _ => None,
    };
    if let Some(v) = pseudo {
        if name.starts_with(':') || !v.is_empty() {
            return Some(hash_values(&mut [v.as_bytes()], rewrite));
        }
        return None;
    }
    let mut values = input.headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => None,
        // The common case: one value, nothing to collect.
        (Some(v), None) => Some(hash_values(&mut [v.as_bytes()], rewrite)),
        (Some(_), Some(_)) => {
            let mut all: Vec<&[u8]> = input.headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
            Some(hash_values(&mut all, rewrite))
        }
    }
}

fn hash_values(values: &mut [&[u8]], rewrite: Option<&(regex::Regex, String)>) -> u64 {
    let Some((re, sub)) = rewrite else { return hash_sorted(values) };
    let sub = regex_substitution(sub);
    let rewritten: Vec<Vec<u8>> = values
        .iter()
        .map(|v| match std::str::from_utf8(v) {
            Ok(s) => re.replace_all(s, sub.as_str()).into_owned().into_bytes(),
            Err(_) => v.to_vec(),
        })
        .collect();
    let mut refs: Vec<&[u8]> = rewritten.iter().map(Vec::as_slice).collect();
    hash_sorted(&mut refs)
}

/// Envoy 1.40's `xxHash64(Span<string_view>)` over the sorted values: each value hashed with
/// the previous hash as its seed (seed 0 first). Found against Envoy 1.40 by the differential
/// test: it is neither the hash of the concatenation nor of the first value.
fn hash_sorted(values: &mut [&[u8]]) -> u64 {
    values.sort_unstable();
    values.iter().fold(0, |seed, v| xxh64(v, seed))
}

/// Envoy's `parseCookieValue`: the first `name=value` pair named `name` in the `cookie`
/// headers (pairs split on `;`, leading spaces skipped, one pair of surrounding double quotes
/// removed from the value).
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for h in headers.get_all(header::COOKIE) {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else { continue };
            let start = pair.iter().position(|&b| b != b' ').unwrap_or(pair.len()).min(eq);
            if &pair[start..eq] != name.as_bytes() {
                continue;
            }
            let v = &pair[eq + 1..];
            return Some(if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' { &v[1..v.len() - 1] } else { v });
        }
    }
    None
}

/// A generated cookie's value: 16 hex digits of xxHash64 over the connection's peer and local
/// addresses (Envoy's `addDownstreamSetCookie`), so a client keeps its host across requests.
pub fn generated_cookie_value(peer: SocketAddr, local: SocketAddr) -> String {
    format!("{:016x}", xxh64(format!("{peer}{local}").as_bytes(), 0))
}

/// Envoy's `makeSetCookieValue`: `name="value"`, `Max-Age` unless 0, `Path` if set, the
/// attributes, `HttpOnly`.
pub fn set_cookie_value(name: &str, value: &str, path: &str, max_age: u64, attributes: &[(String, String)]) -> String {
    use std::fmt::Write;
    let mut s = format!("{name}=\"{value}\"");
    if max_age != 0 {
        let _ = write!(s, "; Max-Age={max_age}");
    }
    if !path.is_empty() {
        let _ = write!(s, "; Path={path}");
    }
    for (n, v) in attributes {
        if v.is_empty() {
            let _ = write!(s, "; {n}");
        } else {
            let _ = write!(s, "; {n}={v}");
        }
    }
    s.push_str("; HttpOnly");
    s
}

/// Envoy's `QueryParamsMulti::parseQueryString(...).getFirstValue(name)`: parameters split on
/// `&`, a parameter without `=` has the empty value, nothing is percent-decoded.
fn query_first_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').filter(|p| !p.is_empty() || name.is_empty()).find_map(|p| match p.split_once('=') {
        Some((k, v)) => (k == name).then_some(v),
        None => (p == name).then_some(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(kind: HashPolicyKind) -> HashPolicy {
        HashPolicy { kind, terminal: false }
    }

    fn header(name: &str) -> HashPolicyKind {
        HashPolicyKind::Header { name: name.into(), regex_rewrite: None }
    }

    fn hash_of(policies: &[HashPolicy], headers: &[(&str, &str)], uri: &str) -> (Option<u64>, Vec<HeaderValue>) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let uri: Uri = uri.parse().unwrap();
        let input = HashInput {
            headers: &h,
            method: &Method::GET,
            uri: &uri,
            client_ip: "10.0.0.7".parse().unwrap(),
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:10000".parse().unwrap(),
        };
        let mut cookies = Vec::new();
        (generate(policies, &input, &mut cookies), cookies)
    }

    fn x(s: &str) -> u64 {
        xxh64(s.as_bytes(), 0)
    }

    #[test]
    fn xxhash64_matches_the_reference_vectors() {
        // Reference values of XXH64 with seed 0 (the xxHash test suite's).
        assert_eq!(x(""), 0xef46db3751d8e999);
        assert_eq!(x("abc"), 0x44bc2cf5ad770999);
    }

    #[test]
    fn request_hash_per_policy_kind() {
        let cookie = |ttl: Option<u64>| HashPolicyKind::Cookie {
            name: "sid".into(),
            path: String::new(),
            ttl: ttl.map(Duration::from_secs),
            attributes: Vec::new(),
        };
        let query = HashPolicyKind::QueryParameter { name: "user".into() };
        // (policy, headers, uri, expected hash)
        type Row = (HashPolicyKind, Vec<(&'static str, &'static str)>, &'static str, Option<u64>);
        let rows: Vec<Row> = vec![
            (header("x-user"), vec![("x-user", "alice")], "/", Some(x("alice"))),
            (header("x-user"), vec![], "/", None),
            // Several values: sorted (so order does not matter), each hashed with the previous
            // hash as seed.
            (header("x-user"), vec![("x-user", "b"), ("x-user", "a")], "/", Some(xxh64(b"b", x("a")))),
            (header("x-user"), vec![("x-user", "a"), ("x-user", "b")], "/", Some(xxh64(b"b", x("a")))),
            (header(":authority"), vec![("host", "example.com")], "/", Some(x("example.com"))),
            (header(":path"), vec![], "/a/b?c=d", Some(x("/a/b?c=d"))),
            (header(":method"), vec![], "/", Some(x("GET"))),
            (cookie(None), vec![("cookie", "a=1; sid=abc; z=2")], "/", Some(x("abc"))),
            (cookie(None), vec![("cookie", "sid=\"quoted\"")], "/", Some(x("quoted"))),
            (cookie(None), vec![("cookie", "a=1"), ("cookie", "sid=second")], "/", Some(x("second"))),
            (cookie(None), vec![("cookie", "other=1")], "/", None),
            (cookie(None), vec![("cookie", "sid=")], "/", None),
            (HashPolicyKind::SourceIp, vec![], "/", Some(x("10.0.0.7"))),
            (query.clone(), vec![], "/p?a=1&user=bob&user=eve", Some(x("bob"))),
            (query.clone(), vec![], "/p?user", Some(x(""))),
            (query.clone(), vec![], "/p?user=a%20b", Some(x("a%20b"))),
            (query.clone(), vec![], "/p?users=1", None),
            (query, vec![], "/p", None),
        ];
        for (kind, headers, uri, want) in rows {
            let (got, cookies) = hash_of(&[policy(kind.clone())], &headers, uri);
            assert_eq!(got, want, "{kind:?} {headers:?} {uri}");
            assert!(cookies.is_empty());
        }
    }

    #[test]
    fn header_regex_rewrite_applies_before_hashing() {
        let re = regex::Regex::new("^/api/([^/]+)/.*$").unwrap();
        let kind = HashPolicyKind::Header { name: ":path".into(), regex_rewrite: Some((re, "\\1".into())) };
        assert_eq!(hash_of(&[policy(kind)], &[], "/api/tenant7/items").0, Some(x("tenant7")));
    }

    #[test]
    fn policies_combine_with_rotation_and_terminal_stops() {
        let a = policy(header("x-a"));
        let b = policy(header("x-b"));
        let both = [("x-a", "1"), ("x-b", "2")];
        assert_eq!(hash_of(&[a.clone(), b.clone()], &both, "/").0, Some(x("1").rotate_left(1) ^ x("2")));
        // Two equal policies do not cancel out.
        assert_eq!(hash_of(&[a.clone(), a.clone()], &both, "/").0, Some(x("1").rotate_left(1) ^ x("1")));
        // A policy that yields nothing is skipped.
        assert_eq!(hash_of(&[a.clone(), b.clone()], &[("x-b", "2")], "/").0, Some(x("2")));
        let terminal = HashPolicy { terminal: true, ..a.clone() };
        assert_eq!(hash_of(&[terminal.clone(), b.clone()], &both, "/").0, Some(x("1")));
        // Terminal only once a hash exists.
        assert_eq!(hash_of(&[terminal, b], &[("x-b", "2")], "/").0, Some(x("2")));
    }

    #[test]
    fn missing_cookie_with_ttl_is_generated_and_set() {
        let kind = HashPolicyKind::Cookie {
            name: "sid".into(),
            path: "/app".into(),
            ttl: Some(Duration::from_secs(3600)),
            attributes: vec![("SameSite".into(), "Strict".into()), ("Secure".into(), String::new())],
        };
        let (hash, cookies) = hash_of(&[policy(kind.clone())], &[], "/");
        let value = format!("{:016x}", x("127.0.0.1:40000127.0.0.1:10000"));
        assert_eq!(hash, Some(x(&value)));
        assert_eq!(cookies, [format!("sid=\"{value}\"; Max-Age=3600; Path=/app; SameSite=Strict; Secure; HttpOnly")]);
        // Present: used, nothing set.
        let (hash, cookies) = hash_of(&[policy(kind)], &[("cookie", "sid=abc")], "/");
        assert_eq!((hash, cookies.len()), (Some(x("abc")), 0));
        // A zero TTL makes a session cookie (no Max-Age).
        assert_eq!(set_cookie_value("s", "v", "", 0, &[]), "s=\"v\"; HttpOnly");
    }
}
