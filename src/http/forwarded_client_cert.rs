//! `x-forwarded-client-cert` (XFCC) as Envoy's HCM handles it (`forward_client_cert_details`,
//! `set_current_client_cert_details`): the element this hop adds for an mTLS client is built
//! once per connection; per request the header is removed, kept, appended to or replaced.

use http::{HeaderMap, HeaderName, HeaderValue};
use pinion_xds::model::{ClientCertDetails, ForwardClientCert, SanType};

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What a connection contributes to XFCC.
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    /// The client presented a certificate (mTLS).
    pub presented: bool,
    /// This hop's element (`By=...;Hash=...;...`), for APPEND_FORWARD and SANITIZE_SET.
    pub element: Option<HeaderValue>,
}

impl ClientCert {
    /// From a TLS connection's peer certificate (leaf first, DER) and this proxy's own URI
    /// SANs; builds the element only when `mode` adds one.
    pub fn new(
        peer: Option<&[u8]>,
        local_uris: &[String],
        mode: ForwardClientCert,
        details: ClientCertDetails,
    ) -> Self {
        let Some(der) = peer else { return ClientCert::default() };
        let adds = matches!(mode, ForwardClientCert::AppendForward | ForwardClientCert::SanitizeSet);
        let element = adds.then(|| element(der, local_uris, details)).and_then(|e| HeaderValue::from_str(&e).ok());
        ClientCert { presented: true, element }
    }
}

/// Apply `mode` to the request's XFCC (Envoy's `mutateXfccRequestHeader`).
pub fn mutate(headers: &mut HeaderMap, mode: ForwardClientCert, cert: &ClientCert) {
    match mode {
        ForwardClientCert::AlwaysForwardOnly => {}
        ForwardClientCert::Sanitize => {
            headers.remove(XFCC);
        }
        _ if !cert.presented => {
            headers.remove(XFCC);
        }
        ForwardClientCert::ForwardOnly => {}
        ForwardClientCert::AppendForward => {
            let Some(el) = &cert.element else { return };
            let joined = match headers.get(XFCC) {
                Some(v) if !v.is_empty() => {
                    let mut b = Vec::with_capacity(v.len() + 1 + el.len());
                    b.extend_from_slice(v.as_bytes());
                    b.push(b',');
                    b.extend_from_slice(el.as_bytes());
                    HeaderValue::from_bytes(&b).ok()
                }
                _ => Some(el.clone()),
            };
            if let Some(v) = joined {
                headers.insert(XFCC, v);
            }
        }
        ForwardClientCert::SanitizeSet => match &cert.element {
            Some(el) => {
                headers.insert(XFCC, el.clone());
            }
            None => {
                headers.remove(XFCC);
            }
        },
    }
}

/// `By=<own URI SAN>;Hash=<sha256 of the client's leaf>` then the configured details, in
/// Envoy's order (Subject, URI, DNS).
fn element(der: &[u8], local_uris: &[String], d: ClientCertDetails) -> String {
    let mut parts: Vec<String> = local_uris.iter().map(|u| format!("By={u}")).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    parts.push(format!("Hash={}", hex(digest.as_ref())));
    let parsed = x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c);
    if d.subject {
        let subject = parsed.as_ref().map(|c| rfc2253(c.subject())).unwrap_or_default();
        parts.push(format!("Subject=\"{subject}\""));
    }
    let sans = parsed.as_ref().map(|c| crate::tls::sans(c)).unwrap_or_default();
    if d.uri {
        // The URI key is there even without a URI SAN, as in Envoy.
        let uris: Vec<&String> = sans.iter().filter(|(k, _)| *k == SanType::Uri).map(|(_, v)| v).collect();
        if uris.is_empty() {
            parts.push("URI=".into());
        }
        parts.extend(uris.into_iter().map(|u| format!("URI={u}")));
    }
    if d.dns {
        parts.extend(sans.iter().filter(|(k, _)| *k == SanType::Dns).map(|(_, v)| format!("DNS={v}")));
    }
    parts.join(";")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A distinguished name as OpenSSL prints it with `XN_FLAG_RFC2253` (Envoy's `Subject`):
/// most specific RDN first, `,` between RDNs, `+` inside one, RFC 2253 escaping.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    format!("{key}={}", escape(attr.as_str().unwrap_or("")))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(mode: ForwardClientCert) -> ClientCert {
        ClientCert {
            presented: true,
            element: (mode != ForwardClientCert::Sanitize).then(|| HeaderValue::from_static("By=a;Hash=b")),
        }
    }

    #[test]
    fn modes() {
        let forged = || {
            let mut h = HeaderMap::new();
            h.insert(XFCC, HeaderValue::from_static("URI=spiffe://evil"));
            h
        };
        let get = |h: &HeaderMap| h.get(XFCC).map(|v| v.to_str().unwrap().to_string());
        let mut h = forged();
        mutate(&mut h, ForwardClientCert::Sanitize, &cert(ForwardClientCert::Sanitize));
        assert_eq!(get(&h), None);
        let mut h = forged();
        mutate(&mut h, ForwardClientCert::AppendForward, &ClientCert::default());
        assert_eq!(get(&h), None, "not mTLS: removed");
        let mut h = forged();
        mutate(&mut h, ForwardClientCert::AlwaysForwardOnly, &ClientCert::default());
        assert_eq!(get(&h).as_deref(), Some("URI=spiffe://evil"));
        let mut h = forged();
        mutate(&mut h, ForwardClientCert::AppendForward, &cert(ForwardClientCert::AppendForward));
        assert_eq!(get(&h).as_deref(), Some("URI=spiffe://evil,By=a;Hash=b"));
        let mut h = forged();
        mutate(&mut h, ForwardClientCert::SanitizeSet, &cert(ForwardClientCert::SanitizeSet));
        assert_eq!(get(&h).as_deref(), Some("By=a;Hash=b"));
        let mut h = HeaderMap::new();
        mutate(&mut h, ForwardClientCert::AppendForward, &cert(ForwardClientCert::AppendForward));
        assert_eq!(get(&h).as_deref(), Some("By=a;Hash=b"));
    }

    #[test]
    fn rfc2253_escaping() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("#1"), "\\#1");
    }
}
