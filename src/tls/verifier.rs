//! Peer certificate verification as Envoy's `CertificateValidationContext` does it: the chain
//! must lead to `trusted_ca`, and the leaf must carry a SAN matching one of
//! `match_typed_subject_alt_names`. Envoy does not check the peer's hostname against the SNI
//! by default, so neither verifier does; mesh identities are SPIFFE URI SANs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use pinion_xds::model::{CertificateValidation, SanMatcher};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use super::secret::{LoadedKind, LoadedSecret, SecretSlot};
use super::subject_alt_names::sans;
use super::SslStats;

/// Whether the leaf `der` has a SAN matching one of `matchers` (none configured: any leaf).
pub fn san_matches(der: &[u8], matchers: &[SanMatcher]) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return false };
    sans(&cert).iter().any(|(kind, text)| matchers.iter().any(|m| m.san_type == *kind && m.matcher.matches(text)))
}

/// The SAN check every verifier runs after the chain check: counts `ssl.fail_verify_san` on a miss.
fn check_sans(der: &[u8], matchers: &[SanMatcher], stats: &SslStats) -> Result<(), Error> {
    if san_matches(der, matchers) {
        return Ok(());
    }
    stats.fail_verify_san.inc();
    Err(Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(SanMismatch)))))
}

#[derive(Debug)]
struct SanMismatch;

impl std::fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no subject alternative name matches the validation context")
    }
}

impl std::error::Error for SanMismatch {}

/// Verifies an upstream's certificate (client side).
pub struct UpstreamVerifier {
    /// `trusted_ca`; `None` = no validation context: any certificate is accepted, as in Envoy.
    pub roots: Option<Arc<RootCertStore>>,
    /// SAN matchers (need `roots`; translation enforces that).
    pub sans: Vec<SanMatcher>,
    /// Signature algorithms of the crypto provider.
    pub algs: WebPkiSupportedAlgorithms,
    /// Where failures are counted.
    pub stats: SslStats,
    /// A validation context from SDS: replaces `roots` and `sans`, read per handshake.
    pub sds: Option<DynamicValidation>,
}

impl UpstreamVerifier {
    /// The chain must lead to `roots` (if any), the leaf must match `sans`.
    fn verify(
        &self,
        roots: Option<&RootCertStore>,
        sans: &[SanMatcher],
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algs.all)
                .inspect_err(|_| self.stats.fail_verify_error.inc())?;
        }
        check_sans(end_entity, sans, &self.stats)?;
        Ok(ServerCertVerified::assertion())
    }
}

impl std::fmt::Debug for UpstreamVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamVerifier").field("sans", &self.sans).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(sds) = &self.sds {
            let Some(r) = sds.current() else {
                self.stats.fail_verify_error.inc();
                return Err(no_secret_error(&sds.slot));
            };
            return self.verify(r.roots.as_deref(), &r.sans, end_entity, intermediates, now);
        }
        self.verify(self.roots.as_deref(), &self.sans, end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies a downstream client's certificate (server side): rustls' WebPKI client verifier
/// for the chain, then the SAN matchers.
pub struct DownstreamVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatcher>,
    stats: SslStats,
}

impl std::fmt::Debug for DownstreamVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamVerifier").field("sans", &self.sans).finish_non_exhaustive()
    }
}

impl DownstreamVerifier {
    /// Clients must chain to `roots`; `required`: a client without a certificate is refused.
    pub fn new(
        roots: RootCertStore,
        sans: Vec<SanMatcher>,
        required: bool,
        provider: Arc<CryptoProvider>,
        stats: SslStats,
    ) -> Result<Self, super::error::TlsError> {
        let mut b = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !required {
            b = b.allow_unauthenticated();
        }
        let inner = b.build().map_err(|e| super::error::TlsError::Verifier(e.to_string()))?;
        Ok(DownstreamVerifier { inner, sans, stats })
    }
}

impl ClientCertVerifier for DownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|_| self.stats.fail_verify_error.inc())?;
        check_sans(end_entity, &self.sans, &self.stats)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn no_secret_error(slot: &SecretSlot) -> Error {
    Error::General(format!("validation context secret '{}' is not available", slot.name))
}

/// A validation context from SDS, merged into the context's default (a combined validation
/// context) and cached per secret generation: a rotation costs one rebuild per context, on
/// the first handshake that sees it; other handshakes load two `ArcSwap`s.
pub struct DynamicValidation {
    slot: Arc<SecretSlot>,
    default: Option<CertificateValidation>,
    /// Server side: client certificates required whatever the matchers say.
    required: bool,
    /// Server side: build a WebPKI client verifier over the roots.
    server: bool,
    provider: Arc<CryptoProvider>,
    cache: ArcSwapOption<Resolved>,
    /// Generation that could not be used with this context (logged once, last good kept).
    failed: AtomicU64,
}

/// What a handshake verifies against, derived from one secret generation.
pub(super) struct Resolved {
    generation: u64,
    roots: Option<Arc<RootCertStore>>,
    sans: Vec<SanMatcher>,
    /// Server side, with roots: the chain check.
    client: Option<Arc<dyn ClientCertVerifier>>,
    /// Server side: a client without a certificate is refused.
    mandatory: bool,
}

impl DynamicValidation {
    /// Validation from `slot`, merged into `default`. `server`: verifies clients, which
    /// `required` makes send a certificate.
    pub fn new(
        slot: Arc<SecretSlot>,
        default: Option<CertificateValidation>,
        server: bool,
        required: bool,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        DynamicValidation {
            slot,
            default,
            required,
            server,
            provider,
            cache: ArcSwapOption::empty(),
            failed: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<Arc<Resolved>> {
        let secret = self.slot.load();
        let secret = secret.as_ref()?;
        let cached = self.cache.load_full();
        if cached.as_ref().is_some_and(|c| c.generation == secret.generation)
            || self.failed.load(Ordering::Relaxed) == secret.generation
        {
            return cached;
        }
        match self.resolve(secret) {
            Ok(r) => {
                let r = Arc::new(r);
                self.cache.store(Some(r.clone()));
                Some(r)
            }
            Err(e) => {
                self.failed.store(secret.generation, Ordering::Relaxed);
                tracing::warn!(secret = %self.slot.name, error = %e, "validation context secret not applied; keeping the last good one");
                cached
            }
        }
    }

    fn resolve(&self, secret: &LoadedSecret) -> Result<Resolved, String> {
        let LoadedKind::Validation(v) = &secret.kind else {
            return Err("the secret is not a validation context".into());
        };
        let merged = CertificateValidation::merged(self.default.as_ref(), v);
        let generation = secret.generation;
        if merged.trusted_ca.is_empty() {
            if !merged.match_subject_alt_names.is_empty() {
                return Err(
                    "SAN-based verification of peer certificates without trusted CA is insecure and not allowed".into(),
                );
            }
            // Nothing to verify, as Envoy without trusted_ca.
            return Ok(Resolved { generation, roots: None, sans: Vec::new(), client: None, mandatory: self.required });
        }
        let mut roots = RootCertStore::empty();
        for (i, ca) in merged.trusted_ca.iter().enumerate() {
            roots.add(ca.clone()).map_err(|e| format!("trusted_ca certificate {i}: {e}"))?;
        }
        let roots = Arc::new(roots);
        let client = if self.server {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| e.to_string())?;
            Some(v)
        } else {
            None
        };
        let mandatory = self.required || !merged.match_subject_alt_names.is_empty();
        Ok(Resolved { generation, roots: Some(roots), sans: merged.match_subject_alt_names, client, mandatory })
    }
}

/// Verifies downstream clients against a validation context from SDS.
pub struct SdsDownstreamVerifier {
    validation: DynamicValidation,
    stats: SslStats,
}

impl SdsDownstreamVerifier {
    /// A verifier over `validation` (built with `server: true`).
    pub fn new(validation: DynamicValidation, stats: SslStats) -> Self {
        SdsDownstreamVerifier { validation, stats }
    }
}

impl std::fmt::Debug for SdsDownstreamVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsDownstreamVerifier").field("secret", &self.validation.slot.name).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SdsDownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.validation.current().is_none_or(|r| r.mandatory)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The roots change under the verifier; no CA names are sent (clients send their
        // certificate anyway).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let Some(r) = self.validation.current() else {
            self.stats.fail_verify_error.inc();
            return Err(no_secret_error(&self.validation.slot));
        };
        let Some(inner) = &r.client else { return Ok(ClientCertVerified::assertion()) };
        inner.verify_client_cert(end_entity, intermediates, now).inspect_err(|_| self.stats.fail_verify_error.inc())?;
        check_sans(end_entity, &r.sans, &self.stats)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.validation.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.validation.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.validation.provider.signature_verification_algorithms.supported_schemes()
    }
}
