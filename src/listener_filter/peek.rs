//! What the listener filters share: the result they fill in ([`Inspected`]), why they give
//! up, and peeking at a socket. Apart from `mod.rs` (which runs the filters) so that the
//! filters do not depend on their runner.

use std::time::Duration;

use tokio::net::TcpStream;

/// Largest prefix the inspectors peek at (a ClientHello bigger than this is treated as TLS
/// without SNI/ALPN). Envoy's tls_inspector reads up to 64 KiB; ClientHellos are ~0.5 KiB.
pub(super) const MAX_PEEK: usize = 16 * 1024 + 5;

/// What the listener filters learnt; matched against `FilterChainMatch`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// `tls` when the tls_inspector saw a ClientHello; empty = `raw_buffer` (Envoy's default).
    pub transport_protocol: &'static str,
    /// SNI from the ClientHello.
    pub server_name: Option<String>,
    /// ALPN offered in the ClientHello, or the HTTP version the http_inspector detected
    /// (`http/1.1`, `h2c`).
    pub application_protocols: Vec<String>,
}

/// Why inspection gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum InspectError {
    /// The peer closed or the read failed before the inspectors were done.
    Closed,
    /// `listener_filters_timeout` passed.
    Timeout,
}

/// Peek until `enough(bytes)` says the prefix suffices (`Some`), the peer closes, or
/// `MAX_PEEK` bytes are there. Waits for more data without spinning: a socket with unread
/// bytes stays readable, so a short prefix is re-peeked after a brief pause.
pub(super) async fn peek_until<T>(
    stream: &TcpStream,
    mut enough: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, InspectError> {
    let mut buf = vec![0u8; 1024];
    let mut last = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| InspectError::Closed)?;
        if n == 0 {
            return Err(InspectError::Closed);
        }
        if let Some(t) = enough(&buf[..n]) {
            return Ok(t);
        }
        if n == buf.len() {
            if buf.len() >= MAX_PEEK {
                return Err(InspectError::Closed);
            }
            buf.resize((buf.len() * 4).min(MAX_PEEK), 0);
        } else if n == last {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = n;
    }
}
