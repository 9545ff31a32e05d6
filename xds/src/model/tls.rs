//! `envoy.extensions.transport_sockets.tls.v3`: the TLS contexts of filter chains
//! (`DownstreamTlsContext`) and clusters (`UpstreamTlsContext`).
//!
//! Certificates and keys are read and PEM-decoded when the config is translated, as Envoy
//! does: a missing file or a bad PEM rejects the resource instead of failing connections later.

use std::sync::Arc;

pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::StringMatcher;

/// `TlsCertificate`: a chain (leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct TlsCertificate {
    /// `certificate_chain`, leaf first, DER.
    pub certificate_chain: Vec<CertificateDer<'static>>,
    /// `private_key` (PKCS#8, PKCS#1 or SEC1), DER. `Arc` because the key type is not `Clone`.
    pub private_key: Arc<PrivateKeyDer<'static>>,
}

/// The kind of subject alternative name a `SubjectAltNameMatcher` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    /// `EMAIL`.
    Email,
    /// `DNS`.
    Dns,
    /// `URI` (SPIFFE ids are URI SANs).
    Uri,
    /// `IP_ADDRESS`, compared in its text form.
    IpAddress,
}

/// `SubjectAltNameMatcher`.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    /// Which SANs to look at.
    pub san_type: SanType,
    /// How to match them.
    pub matcher: StringMatcher,
}

/// `CertificateValidationContext` (the parts Pinion implements).
#[derive(Debug, Clone, Default)]
pub struct CertificateValidation {
    /// `trusted_ca`: the roots the peer's chain must lead to, DER. Empty = no chain check.
    pub trusted_ca: Vec<CertificateDer<'static>>,
    /// `match_typed_subject_alt_names`: the peer's leaf must have a SAN matching one of
    /// these (empty = any).
    pub match_subject_alt_names: Vec<SanMatcher>,
}

/// A TLS protocol version bound (`TlsParameters.TlsProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// `CommonTlsContext` (the parts Pinion implements).
#[derive(Debug, Clone)]
pub struct CommonTlsContext {
    /// `tls_certificates` (Pinion uses the first; Envoy picks by key type among several).
    pub tls_certificates: Vec<TlsCertificate>,
    /// `tls_certificate_sds_secret_configs` (Pinion takes one): the certificate comes from a
    /// secret instead of `tls_certificates`.
    pub tls_certificate_sds: Option<super::SdsSecretConfig>,
    /// `validation_context`; `None` = the peer's certificate is not verified (unless
    /// `validation_sds` is set).
    pub validation: Option<CertificateValidation>,
    /// `validation_context_sds_secret_config` or `combined_validation_context`.
    pub validation_sds: Option<super::SdsValidation>,
    /// `alpn_protocols`, in preference order.
    pub alpn_protocols: Vec<String>,
    /// `tls_params.tls_minimum_protocol_version` resolved (Envoy's default: TLS 1.2).
    pub min_version: TlsVersion,
    /// `tls_params.tls_maximum_protocol_version` resolved (Envoy's default: TLS 1.2 for
    /// clients, TLS 1.3 for servers).
    pub max_version: TlsVersion,
}

/// `DownstreamTlsContext`: TLS a filter chain terminates.
#[derive(Debug, Clone)]
pub struct DownstreamTlsContext {
    /// Certificates, validation and ALPN.
    pub common: CommonTlsContext,
    /// `require_client_certificate` (default false): a client without a certificate is refused.
    pub require_client_certificate: bool,
    /// Sessions are cached for resumption by session id (TLS 1.2) or stateful tickets (TLS
    /// 1.3); `!disable_stateful_session_resumption`.
    pub stateful_resumption: bool,
    /// Session tickets under self-generated keys; `!disable_stateless_session_resumption`.
    pub stateless_resumption: bool,
}

/// `UpstreamTlsContext`: TLS a cluster originates.
#[derive(Debug, Clone)]
pub struct UpstreamTlsContext {
    /// Certificates (the client certificate), validation and ALPN.
    pub common: CommonTlsContext,
    /// `sni` (empty = no SNI sent, as in Envoy).
    pub sni: String,
    /// `max_session_keys` (default 1): sessions kept for resumption; 0 disables resumption.
    pub max_session_keys: u32,
}
