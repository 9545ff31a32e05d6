//! Listener filters: what is learnt from a connection's first bytes, before a filter chain is
//! chosen (`tls_inspector`: TLS, SNI, ALPN; `http_inspector`: plaintext HTTP version). Both
//! only peek: the bytes stay in the socket for the chain's transport and codec.

pub mod http_inspector;
pub mod tls_inspector;

use std::time::Duration;

use pinion_xds::model;
use tokio::net::TcpStream;

/// Largest prefix the inspectors peek at (a ClientHello bigger than this is treated as TLS
/// without SNI/ALPN). Envoy's tls_inspector reads up to 64 KiB; ClientHellos are ~0.5 KiB.
const MAX_PEEK: usize = 16 * 1024 + 5;

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

/// Run `filters` (in order) on `stream`, bounded by the listener's `listener_filters_timeout`.
/// On timeout, `continue_on_listener_filters_timeout` keeps what is known so far.
pub async fn inspect(stream: &TcpStream, listener: &model::Listener) -> Result<Inspected, InspectError> {
    let mut out = Inspected::default();
    if listener.listener_filters.is_empty() {
        return Ok(out);
    }
    let run = async {
        for f in &listener.listener_filters {
            match f {
                model::ListenerFilter::TlsInspector => tls_inspector::inspect(stream, &mut out).await?,
                model::ListenerFilter::HttpInspector => http_inspector::inspect(stream, &mut out).await?,
                // Translation refuses original_dst (no transparent interception).
                model::ListenerFilter::OriginalDst => {}
            }
        }
        Ok(())
    };
    let res = match listener.listener_filters_timeout {
        Some(t) => tokio::time::timeout(t, run).await.unwrap_or(Err(InspectError::Timeout)),
        None => run.await,
    };
    match res {
        Ok(()) => Ok(out),
        Err(InspectError::Timeout) if listener.continue_on_listener_filters_timeout => Ok(out),
        Err(e) => Err(e),
    }
}

/// Peek until `enough(bytes)` says the prefix suffices (`Some`), the peer closes, or
/// `MAX_PEEK` bytes are there. Waits for more data without spinning: a socket with unread
/// bytes stays readable, so a short prefix is re-peeked after a brief pause.
async fn peek_until<T>(stream: &TcpStream, mut enough: impl FnMut(&[u8]) -> Option<T>) -> Result<T, InspectError> {
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
