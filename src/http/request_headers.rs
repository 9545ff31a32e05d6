//! Request header handling done by the HCM before routing (Envoy's
//! `ConnectionManagerUtility::mutateRequestHeaders`): hop-by-hop removal, `x-forwarded-for`,
//! `x-forwarded-proto`, `x-request-id`, `x-envoy-internal` and internal-header cleaning.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pinion_xds::model::HttpConnectionManager;

/// Connection-specific headers never forwarded (RFC 9110 §7.6.1 plus legacy ones). As
/// `HeaderName`s, so removing them (twice per request) does not parse a `&str` each time.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `x-envoy-*` request headers Envoy removes from requests of external clients at the edge
/// (`use_remote_address`) only.
const EDGE_ONLY_INTERNAL_REQUEST_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
];

/// `x-envoy-*` request headers Envoy removes from every request of an external client, edge
/// or not (`cleanInternalHeaders`): the retry and timeout controls among them, so a client
/// cannot ask for retries or longer timeouts; only filters and route header mutations can.
const INTERNAL_REQUEST_HEADERS: [HeaderName; 14] = [
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-original-url"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
];

const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Remove hop-by-hop headers, including those named in `Connection`. `keep_upgrade` keeps
/// `Connection: upgrade`/`Upgrade` for an allowed upgrade. `te` survives only as `trailers`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            let named: Vec<String> = list
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty() && s != "upgrade" && s != "close" && s != "keep-alive")
                .collect();
            for n in named {
                // Never let `Connection` strip headers the proxy relies on.
                if !matches!(n.as_str(), "host" | "content-length" | "te") && !n.starts_with(':') {
                    headers.remove(n.as_str());
                }
            }
        }
    }
    for h in &HOP_BY_HOP {
        if keep_upgrade && (h == header::CONNECTION || h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(te) = headers.get(header::TE) {
        let keep =
            te.to_str().map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))).unwrap_or(false);
        if keep {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Whether an address counts as internal. Envoy 1.40 without `internal_address_config` (which
/// Pinion rejects as unsupported) treats no address as internal, loopback included, so neither
/// does Pinion: edge requests get `x-envoy-external-address` and a fresh `x-request-id`.
pub fn is_internal(ip: IpAddr) -> bool {
    let _ = ip;
    false
}

/// Result of request header mutation that later phases need.
pub struct Mutated {
    /// The address Envoy considers the client (`%DOWNSTREAM_REMOTE_ADDRESS%` analogue).
    pub trusted_client: Option<IpAddr>,
    /// Whether the request counts as internal.
    pub internal: bool,
}

const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// Apply the HCM's request header rules.
pub fn mutate(
    cfg: &HttpConnectionManager,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    tls: bool,
    request_id: &mut dyn FnMut() -> HeaderValue,
) -> Mutated {
    let scheme = if tls { "https" } else { "http" };
    let xff_name = HeaderName::from_static("x-forwarded-for");
    let had_xff = headers.contains_key(&xff_name);
    let (trusted_client, internal) = if cfg.use_remote_address {
        // Envoy: with N trusted hops the client is the Nth address from the right of the XFF
        // the proxy received (before appending); otherwise the peer.
        let client = match cfg.xff_num_trusted_hops {
            0 => None,
            n => xff_client(headers, &xff_name, n - 1),
        }
        .unwrap_or(peer.ip());
        if !cfg.skip_xff_append {
            // Envoy appends its own non-loopback address for a loopback peer.
            let hop = if peer.ip().is_loopback() { local_address(peer.ip()) } else { peer.ip() };
            append_xff(headers, &xff_name, hop);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        let internal = !had_xff && is_internal(client);
        (Some(client), internal)
    } else {
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        let client = xff_client(headers, &xff_name, cfg.xff_num_trusted_hops);
        let internal = client.map(is_internal).unwrap_or(false);
        (client, internal)
    };
    if internal {
        headers.insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    } else {
        // Envoy strips a client's x-envoy-internal (it would otherwise spare the request from
        // `require_tls: EXTERNAL_ONLY`) and the retry/timeout controls from every external
        // request, edge or not (verified against Envoy 1.40 with `use_remote_address: false`);
        // the decorator and service-cluster/node headers only at the edge.
        // One pass over the names first: most requests carry no `x-envoy-*` header at all, and
        // that is cheaper to see than seventeen hashed lookups.
        if headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
            headers.remove(X_ENVOY_INTERNAL);
            for h in &INTERNAL_REQUEST_HEADERS {
                headers.remove(h);
            }
            if cfg.use_remote_address {
                for h in &EDGE_ONLY_INTERNAL_REQUEST_HEADERS {
                    headers.remove(h);
                }
            }
        }
        if cfg.use_remote_address {
            if let Some(ip) = trusted_client {
                if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                    headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
                }
            }
        }
    }
    if let Some(via) = &cfg.via {
        if let Ok(v) = HeaderValue::from_str(via) {
            headers.append(header::VIA, v);
        }
    }
    if cfg.generate_request_id {
        let rid = HeaderName::from_static("x-request-id");
        let external_edge = cfg.use_remote_address && !internal;
        let regenerate = !headers.contains_key(&rid) || (external_edge && !cfg.preserve_external_request_id);
        if regenerate {
            headers.insert(rid, request_id());
        }
    }
    Mutated { trusted_client, internal }
}

/// The host's own address of `like`'s family (Envoy's `getLocalAddress`: the address the host
/// routes from, not loopback), found once; `like` itself when there is none.
pub fn local_address(like: IpAddr) -> IpAddr {
    use std::sync::OnceLock;
    static V4: OnceLock<Option<IpAddr>> = OnceLock::new();
    static V6: OnceLock<Option<IpAddr>> = OnceLock::new();
    // Connecting a UDP socket only selects a route and source address; nothing is sent.
    let probe = |bind: &str, to: &str| {
        let s = std::net::UdpSocket::bind(bind).ok()?;
        s.connect(to).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    };
    let found = match like {
        IpAddr::V4(_) => *V4.get_or_init(|| probe("0.0.0.0:0", "192.0.2.1:9")),
        IpAddr::V6(_) => *V6.get_or_init(|| probe("[::]:0", "[2001:db8::1]:9")),
    };
    found.unwrap_or(like)
}

fn append_xff(headers: &mut HeaderMap, name: &HeaderName, ip: IpAddr) {
    let ip = ip.to_string();
    let new = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&new) {
        headers.insert(name.clone(), v);
    }
}

/// The client address per XFF and `xff_num_trusted_hops` (Envoy: the Nth address from the right).
fn xff_client(headers: &HeaderMap, name: &HeaderName, trusted_hops: u32) -> Option<IpAddr> {
    let xff = headers.get(name)?.to_str().ok()?;
    let parts: Vec<&str> = xff.split(',').map(str::trim).collect();
    let idx = parts.len().checked_sub(1 + trusted_hops as usize)?;
    parts.get(idx)?.parse().ok()
}

/// A random UUID v4 for `x-request-id`.
pub fn new_request_id() -> HeaderValue {
    let b: [u8; 16] = rand::random();
    let mut s = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        let byte = match i {
            6 => (byte & 0x0f) | 0x40,
            8 => (byte & 0x3f) | 0x80,
            _ => *byte,
        };
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = hex[(byte >> 4) as usize];
        s[j + 1] = hex[(byte & 0xf) as usize];
        j += 2;
    }
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_uuid_v4() {
        let v = new_request_id();
        let s = v.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn xff_trusted_hops() {
        let mut h = HeaderMap::new();
        let n = HeaderName::from_static("x-forwarded-for");
        h.insert(n.clone(), "1.1.1.1, 2.2.2.2, 3.3.3.3".parse().unwrap());
        assert_eq!(xff_client(&h, &n, 0), Some("3.3.3.3".parse().unwrap()));
        assert_eq!(xff_client(&h, &n, 1), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(xff_client(&h, &n, 5), None);
    }
}
