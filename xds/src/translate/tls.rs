//! `transport_socket`: `raw_buffer` (plaintext) or `envoy.transport_sockets.tls` with a
//! `DownstreamTlsContext` (filter chains) or an `UpstreamTlsContext` (clusters).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;

use crate::error::ConfigResult;
use crate::model;

/// A filter chain's `transport_socket`: `None` for plaintext.
pub(crate) fn downstream(t: &Option<core::TransportSocket>) -> ConfigResult<Option<Arc<model::DownstreamTlsContext>>> {
    super::plaintext_transport_socket(t, "downstream TLS arrives with the mTLS issue")?;
    Ok(None)
}

/// A cluster's `transport_socket`: `None` for plaintext.
pub(crate) fn upstream(t: &Option<core::TransportSocket>) -> ConfigResult<Option<Arc<model::UpstreamTlsContext>>> {
    super::plaintext_transport_socket(t, "upstream TLS arrives with the mTLS issue")?;
    Ok(None)
}
