//! Per-connection state of the HTTP connection manager, shared by the connection's requests
//! and read by the filters and the router (a leaf module: it imports none of them).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use super::forwarded_client_cert::ClientCert;
use super::h1_framing::FramingFlags;
use crate::listener::{HcmConfig, ListenerImpl};
use crate::worker_context::WorkerCtx;

/// Per-connection state.
pub struct ConnCtx {
    /// The HCM serving this connection.
    pub hcm: Arc<HcmConfig>,
    /// The listener.
    pub listener: Arc<ListenerImpl>,
    /// The worker.
    pub worker: Rc<WorkerCtx>,
    /// Peer address.
    pub peer: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// Whether the downstream transport is TLS.
    pub tls: bool,
    /// The client certificate, as `x-forwarded-client-cert` uses it.
    pub client_cert: ClientCert,
    /// Requests in flight on this connection.
    pub active_streams: Cell<u32>,
    /// Last request start or end (the idle timeout counts from it).
    pub last_activity: Cell<Instant>,
    /// Per HTTP/1 request, in order: did it carry both Content-Length and Transfer-Encoding?
    pub framing: FramingFlags,
    /// The connection is draining: HTTP/1.1 responses get `Connection: close`.
    pub draining: Cell<bool>,
    /// The connection speaks HTTP/2 (known after its first request).
    pub saw_h2: Cell<bool>,
    /// A request has started on this connection (Envoy creates its codec on the first
    /// bytes; a connection closed by a timer before that is closed at once, not drained).
    pub saw_request: Cell<bool>,
    /// The `server` header value, built once per connection: cloning it shares the bytes,
    /// where building it per response allocated.
    pub server_header: Option<HeaderValue>,
}
