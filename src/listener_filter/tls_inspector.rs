//! `envoy.filters.listener.tls_inspector`: detects a TLS ClientHello and reads its SNI and
//! ALPN, so filter chains can match on `transport_protocol: tls`, `server_names` and
//! `application_protocols` (as Istio's inbound listeners do).

use tokio::net::TcpStream;

use super::peek::{peek_until, InspectError, Inspected, MAX_PEEK};

/// What the first bytes say.
enum Hello {
    NotTls,
    Tls { server_name: Option<String>, alpn: Vec<String> },
}

/// Peek at `stream`'s first bytes; a ClientHello sets `transport_protocol` to `tls`, the
/// server name and the offered ALPN protocols. Anything else leaves `out` untouched.
pub async fn inspect(stream: &TcpStream, out: &mut Inspected) -> Result<(), InspectError> {
    match peek_until(stream, parse).await? {
        Hello::NotTls => {}
        Hello::Tls { server_name, alpn } => {
            out.transport_protocol = "tls";
            out.server_name = server_name;
            out.application_protocols = alpn;
        }
    }
    Ok(())
}

/// `Some` once `bytes` decide: not a TLS handshake record, or a whole ClientHello.
fn parse(bytes: &[u8]) -> Option<Hello> {
    // A TLS record: type 22 (handshake), version 3.x, then the length.
    match bytes {
        [] => return None,
        [22] | [22, 3] | [22, 3, _] | [22, 3, _, _] => return None,
        [22, 3, ..] => {}
        _ => return Some(Hello::NotTls),
    }
    let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    if bytes.len() < 5 + len && 5 + len <= MAX_PEEK {
        return None;
    }
    // rustls parses the ClientHello from a copy; the socket's bytes stay for the handshake.
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = bytes;
    if acceptor.read_tls(&mut rd).is_err() {
        return Some(Hello::Tls { server_name: None, alpn: Vec::new() });
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let server_name = hello.server_name().map(|s| s.to_ascii_lowercase());
            let alpn = hello
                .alpn()
                .map(|protocols| protocols.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                .unwrap_or_default();
            Some(Hello::Tls { server_name, alpn })
        }
        // More records needed than fit: TLS, but nothing more is known.
        Ok(None) | Err(_) => Some(Hello::Tls { server_name: None, alpn: Vec::new() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(std::iter::empty());
        let mut config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_client_hello() {
        let hello = client_hello("Api.Example.com", &["h2", "http/1.1"]);
        match parse(&hello) {
            Some(Hello::Tls { server_name, alpn }) => {
                assert_eq!(server_name.as_deref(), Some("api.example.com"));
                assert_eq!(alpn, vec!["h2", "http/1.1"]);
            }
            _ => panic!("not recognised as TLS"),
        }
        // A prefix is not enough yet.
        assert!(parse(&hello[..hello.len() / 2]).is_none());
        assert!(parse(&hello[..3]).is_none());
    }

    #[test]
    fn plaintext_is_not_tls() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Some(Hello::NotTls)));
        assert!(matches!(parse(b"PRI * HTTP/2.0\r\n"), Some(Hello::NotTls)));
        assert!(matches!(parse(&[22, 1, 0, 0, 0]), Some(Hello::NotTls)));
    }
}
