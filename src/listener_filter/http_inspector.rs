//! `envoy.filters.listener.http_inspector`: tells plaintext HTTP/1.x from h2c (prior
//! knowledge) by the first bytes, for chains matching `application_protocols`.

use tokio::net::TcpStream;

use super::peek::{peek_until, InspectError, Inspected};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// On a plaintext connection (the tls_inspector found no TLS), set the application protocol
/// to `h2c` or `http/1.1` when the first bytes are HTTP; otherwise leave it.
pub async fn inspect(stream: &TcpStream, out: &mut Inspected) -> Result<(), InspectError> {
    if out.transport_protocol == "tls" {
        return Ok(());
    }
    if let Some(p) = peek_until(stream, detect).await? {
        out.application_protocols = vec![p.to_string()];
    }
    Ok(())
}

/// `Some(Some(protocol))` once known, `Some(None)` when not HTTP, `None`: need more bytes.
fn detect(bytes: &[u8]) -> Option<Option<&'static str>> {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Some("h2c"));
    }
    // HTTP/1.x: the request line ends with " HTTP/1.0" or " HTTP/1.1".
    let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
        // Request lines longer than what we peeked are not worth waiting for.
        return (bytes.len() >= 8192).then_some(None);
    };
    let line = bytes[..end].strip_suffix(b"\r").unwrap_or(&bytes[..end]);
    let http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    let method = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
    Some((http1 && method > 0 && line.get(method) == Some(&b' ')).then_some("http/1.1"))
}

#[cfg(test)]
mod tests {
    use super::detect;

    #[test]
    fn detects_http_versions() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: x\r\n"), Some(Some("http/1.1")));
        assert_eq!(detect(b"POST /a HTTP/1.0\r\n"), Some(Some("http/1.1")));
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Some("h2c")));
        assert_eq!(detect(b"PRI * HTTP/2"), None);
        assert_eq!(detect(b"GET / HTTP/1.1"), None);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00\n"), Some(None));
        assert_eq!(detect(b"SSH-2.0-OpenSSH\r\n"), Some(None));
    }
}
