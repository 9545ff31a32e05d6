//! Listener filters: what is learnt from a connection's first bytes, before a filter chain is
//! chosen (`tls_inspector`: TLS, SNI, ALPN; `http_inspector`: plaintext HTTP version). Both
//! only peek: the bytes stay in the socket for the chain's transport and codec.

pub mod http_inspector;
mod peek;
pub mod tls_inspector;

use pinion_xds::model;
use tokio::net::TcpStream;

pub use peek::{InspectError, Inspected};

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
