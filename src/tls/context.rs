//! rustls configs built from Pinion's TLS model: Envoy's `ServerContextImpl` (one per filter
//! chain) and `ClientContextImpl` (one per cluster).

use std::sync::Arc;
use std::time::Duration;

use pinion_xds::model::{self, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use super::error::TlsError;
use super::secret::{SdsCertResolver, SecretLookup, SecretSlot};
use super::verifier::{DownstreamVerifier, DynamicValidation, SdsDownstreamVerifier, UpstreamVerifier};
use super::{Io, SslStats};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(c: &model::CommonTlsContext) -> Vec<&'static rustls::SupportedProtocolVersion> {
    [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (c.min_version..=c.max_version).contains(v))
        .map(|(_, p)| p)
        .collect()
}

fn roots(v: &model::CertificateValidation) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, ca) in v.trusted_ca.iter().enumerate() {
        roots.add(ca.clone()).map_err(|e| TlsError::TrustedCa(i, e))?;
    }
    Ok(roots)
}

fn alpn(list: &[String]) -> Vec<Vec<u8>> {
    list.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// A filter chain's TLS: terminates downstream TLS.
pub struct ServerContext {
    acceptor: tokio_rustls::TlsAcceptor,
    /// URI SANs of this context's certificate (XFCC's `By=`).
    local_uris: LocalUris,
    handshake_timeout: Option<Duration>,
    /// `ssl.*` stats of the listener.
    pub stats: SslStats,
    /// The secrets this context reads (warming waits for them).
    secrets: Vec<Arc<SecretSlot>>,
}

/// Where a server context's URI SANs come from.
enum LocalUris {
    /// A certificate from the config.
    Static(Arc<[String]>),
    /// The certificate a secret holds now.
    Sds(Arc<SecretSlot>),
}

/// The SAN URIs of a leaf certificate.
fn uri_sans(leaf: Option<&rustls::pki_types::CertificateDer<'_>>) -> Vec<String> {
    leaf.and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
        .map(|(_, leaf)| {
            super::sans(&leaf).into_iter().filter(|(k, _)| *k == model::SanType::Uri).map(|(_, v)| v).collect()
        })
        .unwrap_or_default()
}

impl ServerContext {
    /// Build from a `DownstreamTlsContext`; errors name what rustls refused.
    /// `handshake_timeout` is the filter chain's `transport_socket_connect_timeout`; secrets
    /// the context names are found through `secrets`.
    pub fn new(
        cfg: &model::DownstreamTlsContext,
        handshake_timeout: Option<Duration>,
        stats: SslStats,
        secrets: &dyn SecretLookup,
    ) -> Result<Self, TlsError> {
        let c = &cfg.common;
        let provider = provider();
        let mut slots = Vec::new();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(c))
            .map_err(TlsError::TlsParams)?;
        let builder = match (&c.validation, &c.validation_sds) {
            (_, Some(sds)) => {
                let slot = secrets.slot(&sds.secret).map_err(TlsError::Secret)?;
                slots.push(slot.clone());
                let dynamic = DynamicValidation::new(
                    slot,
                    sds.default.clone(),
                    true,
                    cfg.require_client_certificate,
                    provider.clone(),
                );
                builder.with_client_cert_verifier(Arc::new(SdsDownstreamVerifier::new(dynamic, stats.clone())))
            }
            (Some(v), None) if !v.trusted_ca.is_empty() => {
                builder.with_client_cert_verifier(Arc::new(DownstreamVerifier::new(
                    roots(v)?,
                    v.match_subject_alt_names.clone(),
                    cfg.require_client_certificate,
                    provider,
                    stats.clone(),
                )?))
            }
            _ => builder.with_no_client_auth(),
        };
        let (mut config, local_uris) = match &c.tls_certificate_sds {
            Some(sds) => {
                let slot = secrets.slot(sds).map_err(TlsError::Secret)?;
                slots.push(slot.clone());
                (builder.with_cert_resolver(SdsCertResolver::new(slot.clone())), LocalUris::Sds(slot))
            }
            None => {
                let cert = c.tls_certificates.first().ok_or(TlsError::NoCertificate)?;
                let uris = uri_sans(cert.certificate_chain.first());
                let config = builder
                    .with_single_cert(cert.certificate_chain.clone(), cert.private_key.clone_key())
                    .map_err(TlsError::Certificate)?;
                (config, LocalUris::Static(uris.into()))
            }
        };
        config.alpn_protocols = alpn(&c.alpn_protocols);
        // Session resumption as Envoy configures it: a session cache and self-keyed tickets
        // unless disabled.
        if !cfg.stateful_resumption {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        if cfg.stateless_resumption {
            config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::SessionTickets)?;
        }
        if !cfg.stateful_resumption && !cfg.stateless_resumption {
            config.send_tls13_tickets = 0;
        }
        Ok(ServerContext {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            local_uris,
            handshake_timeout,
            stats,
            secrets: slots,
        })
    }

    /// URI SANs of the certificate served now (XFCC's `By=`); one per connection.
    pub fn local_uris(&self) -> Arc<[String]> {
        match &self.local_uris {
            LocalUris::Static(u) => u.clone(),
            LocalUris::Sds(slot) => slot.uris(),
        }
    }

    /// Whether every secret this context names has arrived (or timed out).
    pub fn secrets_ready(&self) -> bool {
        self.secrets.iter().all(|s| s.is_settled())
    }

    /// Run the server handshake on `tcp`; `None` (counted in `ssl.connection_error`) if it fails.
    pub async fn accept(&self, tcp: TcpStream) -> Option<Io> {
        let handshake = self.acceptor.accept(tcp);
        let res = match self.handshake_timeout {
            None => handshake.await,
            Some(t) => tokio::time::timeout(t, handshake)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))),
        };
        match res {
            Ok(s) => {
                self.stats.handshake_done(s.get_ref().1);
                if s.get_ref().1.peer_certificates().is_none_or(|c| c.is_empty()) {
                    self.stats.no_certificate.inc();
                }
                Some(Io::Server(Box::new(s)))
            }
            Err(e) => {
                match rustls_error(&e) {
                    Some(rustls::Error::NoCertificatesPresented) => self.stats.fail_verify_no_cert.inc(),
                    // Counted by the verifier as fail_verify_*.
                    Some(rustls::Error::InvalidCertificate(_)) => {}
                    _ => self.stats.connection_error.inc(),
                }
                tracing::debug!(error = %e, "downstream TLS handshake failed");
                None
            }
        }
    }
}

/// The rustls error under a handshake's I/O error. Envoy's `ssl.connection_error` leaves out
/// failed certificate verifications, which have their own `fail_verify_*` counters.
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// What a new upstream connection will carry, for the ALPN Envoy offers when the TLS context
/// lists no `alpn_protocols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Raw bytes (`tcp_proxy`): no ALPN.
    None,
    /// HTTP/1.1: `http/1.1`.
    Http1,
    /// HTTP/2: `h2`.
    Http2,
}

/// A cluster's TLS: originates upstream TLS.
pub struct ClientContext {
    /// One connector per [`Alpn`] (all alike when `alpn_protocols` is configured).
    connectors: [tokio_rustls::TlsConnector; 3],
    server_name: Option<ServerName<'static>>,
    /// `ssl.*` stats of the cluster.
    pub stats: SslStats,
    /// The secrets this context reads (warming waits for them).
    secrets: Vec<Arc<SecretSlot>>,
}

impl ClientContext {
    /// Build from an `UpstreamTlsContext`; errors name what rustls refused. Secrets the
    /// context names are found through `secrets`.
    pub fn new(cfg: &model::UpstreamTlsContext, stats: SslStats, secrets: &dyn SecretLookup) -> Result<Self, TlsError> {
        let c = &cfg.common;
        let provider = provider();
        let mut slots = Vec::new();
        let sds = match &c.validation_sds {
            None => None,
            Some(v) => {
                let slot = secrets.slot(&v.secret).map_err(TlsError::Secret)?;
                slots.push(slot.clone());
                Some(DynamicValidation::new(slot, v.default.clone(), false, false, provider.clone()))
            }
        };
        let verifier = UpstreamVerifier {
            roots: match &c.validation {
                Some(v) if !v.trusted_ca.is_empty() => Some(Arc::new(roots(v)?)),
                _ => None,
            },
            sans: c.validation.as_ref().map(|v| v.match_subject_alt_names.clone()).unwrap_or_default(),
            algs: provider.signature_verification_algorithms,
            stats: stats.clone(),
            sds,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions(c))
            .map_err(TlsError::TlsParams)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match (&c.tls_certificate_sds, c.tls_certificates.first()) {
            (Some(sds), _) => {
                let slot = secrets.slot(sds).map_err(TlsError::Secret)?;
                slots.push(slot.clone());
                builder.with_client_cert_resolver(SdsCertResolver::new(slot))
            }
            (None, Some(cert)) => builder
                .with_client_auth_cert(cert.certificate_chain.clone(), cert.private_key.clone_key())
                .map_err(TlsError::Certificate)?,
            (None, None) => builder.with_no_client_auth(),
        };
        config.resumption = match cfg.max_session_keys {
            0 => rustls::client::Resumption::disabled(),
            n => rustls::client::Resumption::in_memory_sessions(n as usize),
        };
        let server_name = if cfg.sni.is_empty() {
            // Envoy sends no SNI unless `sni` is set.
            config.enable_sni = false;
            None
        } else {
            Some(ServerName::try_from(cfg.sni.clone()).map_err(|_| TlsError::Sni(cfg.sni.clone()))?)
        };
        // With no `alpn_protocols`, Envoy offers the protocol of the codec it will speak.
        let with_alpn = |fallback: &[&str]| {
            let mut config = config.clone();
            config.alpn_protocols = if c.alpn_protocols.is_empty() {
                fallback.iter().map(|p| p.as_bytes().to_vec()).collect()
            } else {
                alpn(&c.alpn_protocols)
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        let connectors = [with_alpn(&[]), with_alpn(&["http/1.1"]), with_alpn(&["h2"])];
        Ok(ClientContext { connectors, server_name, stats, secrets: slots })
    }

    /// Whether every secret this context names has arrived (or timed out).
    pub fn secrets_ready(&self) -> bool {
        self.secrets.iter().all(|s| s.is_settled())
    }

    /// Run the client handshake on `tcp` (bounded by `timeout`).
    pub async fn connect(&self, tcp: TcpStream, alpn: Alpn, timeout: Duration) -> std::io::Result<Io> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            // Not sent (SNI is disabled): rustls needs a name for its API only.
            None => ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
        };
        let connector = &self.connectors[alpn as usize];
        let res = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
        };
        match res {
            Ok(s) => {
                self.stats.handshake_done(s.get_ref().1);
                Ok(Io::Client(Box::new(s)))
            }
            Err(e) => {
                if !matches!(rustls_error(&e), Some(rustls::Error::InvalidCertificate(_))) {
                    self.stats.connection_error.inc();
                }
                Err(e)
            }
        }
    }
}
