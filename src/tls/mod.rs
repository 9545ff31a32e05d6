//! TLS transport sockets (Envoy's `envoy.transport_sockets.tls`) on rustls: a server context
//! per filter chain (`DownstreamTlsContext`), a client context per cluster
//! (`UpstreamTlsContext`), certificates and validation contexts from secrets (SDS) read per
//! handshake, and Envoy's `ssl.*` stats.

mod context;
mod error;
mod secret;
mod stream;
mod subject_alt_names;
mod verifier;

pub use context::{Alpn, ClientContext, ServerContext};
pub use error::TlsError;
pub use secret::{LoadedKind, LoadedSecret, NoSecrets, SecretLookup, SecretSlot};
pub use stream::Io;
pub use subject_alt_names::sans;

use crate::stats::{Counter, Prom, Store};

/// Envoy's `ssl.*` stats of one listener or cluster.
#[derive(Clone)]
pub struct SslStats {
    /// `ssl.handshake`: handshakes completed.
    pub handshake: Counter,
    /// `ssl.connection_error`: handshakes that failed.
    pub connection_error: Counter,
    /// `ssl.no_certificate`: connections whose peer sent no certificate (allowed).
    pub no_certificate: Counter,
    /// `ssl.fail_verify_no_cert`: peers refused for sending no certificate.
    pub fail_verify_no_cert: Counter,
    /// `ssl.fail_verify_error`: peer chains that did not verify against `trusted_ca`.
    pub fail_verify_error: Counter,
    /// `ssl.fail_verify_san`: peer certificates with no SAN matching the configured matchers.
    pub fail_verify_san: Counter,
    /// `ssl.session_reused`: handshakes that resumed a session.
    pub session_reused: Counter,
}

impl SslStats {
    /// Count a completed handshake (`ssl.handshake`, `ssl.session_reused`).
    fn handshake_done(&self, conn: &rustls::CommonState) {
        self.handshake.inc();
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
    }

    /// The stats under `<family>.<prefix>.ssl.` (`listener.<address>` or `cluster.<name>`);
    /// `tag` is the Prometheus tag carrying `prefix`.
    pub fn new(store: &Store, family: &str, tag: &'static str, prefix: &str) -> Self {
        let c = |rest: &str| {
            let name = format!("ssl.{rest}");
            store.counter(&format!("{family}.{prefix}.{name}"), Prom::tagged(family, tag, prefix, &name))
        };
        SslStats {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_san: c("fail_verify_san"),
            session_reused: c("session_reused"),
        }
    }
}
