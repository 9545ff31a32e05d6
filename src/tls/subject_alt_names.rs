//! The subject alternative names of a certificate, as SAN matchers and XFCC see them.

use pinion_xds::model::SanType;

/// The DNS, URI, email and IP subject alternative names of `cert`, in certificate order.
pub fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<(SanType, String)> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return Vec::new() };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(s) => Some((SanType::Dns, (*s).to_string())),
            GeneralName::URI(s) => Some((SanType::Uri, (*s).to_string())),
            GeneralName::RFC822Name(s) => Some((SanType::Email, (*s).to_string())),
            GeneralName::IPAddress(b) => ip_text(b).map(|t| (SanType::IpAddress, t)),
            _ => None,
        })
        .collect()
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}
