//! Secrets as TLS contexts use them (Envoy's `TlsCertificateConfigProvider` and
//! `CertificateValidationContextConfigProvider`): a [`SecretSlot`] per secret name holds the
//! current value, checked and pre-parsed when it arrives; contexts keep the slot and read it
//! on each handshake (one `ArcSwap` load), so a rotation applies to new handshakes without
//! rebuilding listeners or clusters, and established connections keep what they negotiated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};
use pinion_xds::model;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// Generations of loaded secrets: a context caches what it derived from a secret until the
/// slot holds another generation.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A secret's value, checked and ready for handshakes.
#[derive(Debug)]
pub struct LoadedSecret {
    /// Unique per loaded value.
    pub generation: u64,
    /// What it holds.
    pub kind: LoadedKind,
    /// The secret as translated (for `/certs`-style reporting and merging).
    pub source: Arc<model::Secret>,
}

/// The two kinds of secrets TLS contexts use.
#[derive(Debug)]
pub enum LoadedKind {
    /// A certificate chain with its (matching) key.
    Certificate {
        /// The key rustls signs with, with its chain.
        key: Arc<CertifiedKey>,
        /// URI SANs of the leaf (XFCC's `By=`).
        uris: Arc<[String]>,
    },
    /// A validation context (possibly partial: a combined context merges in its default).
    Validation(model::CertificateValidation),
}

impl LoadedSecret {
    /// Check and parse `secret`: the key must load and match the certificate, every CA must
    /// be usable as a trust anchor. The error says what is wrong (it goes into the NACK).
    pub fn load(secret: Arc<model::Secret>) -> Result<Self, String> {
        let kind = match &secret.kind {
            model::SecretKind::TlsCertificate(c) => {
                let provider = rustls::crypto::ring::default_provider();
                let key = CertifiedKey::from_der(c.certificate_chain.clone(), c.private_key.clone_key(), &provider)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "tls_certificate: the private key does not match the certificate".to_string()
                        }
                        e => format!("tls_certificate: {e}"),
                    })?;
                let uris = c
                    .certificate_chain
                    .first()
                    .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
                    .map(|(_, leaf)| {
                        super::sans(&leaf)
                            .into_iter()
                            .filter(|(k, _)| *k == model::SanType::Uri)
                            .map(|(_, v)| v)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                LoadedKind::Certificate { key: Arc::new(key), uris: uris.into() }
            }
            model::SecretKind::ValidationContext(v) => {
                let mut roots = rustls::RootCertStore::empty();
                for (i, ca) in v.trusted_ca.iter().enumerate() {
                    roots.add(ca.clone()).map_err(|e| format!("validation_context.trusted_ca certificate {i}: {e}"))?;
                }
                LoadedKind::Validation(v.clone())
            }
        };
        Ok(LoadedSecret { generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed), kind, source: secret })
    }
}

/// The current value of one named secret, shared by every context that names it.
#[derive(Debug)]
pub struct SecretSlot {
    /// The secret's name.
    pub name: String,
    value: ArcSwapOption<LoadedSecret>,
    /// The initial fetch timed out: contexts stop waiting for it (and fail handshakes).
    gave_up: AtomicBool,
}

impl SecretSlot {
    /// An empty slot: contexts using it fail their handshakes until a value arrives.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(SecretSlot { name: name.to_string(), value: ArcSwapOption::empty(), gave_up: AtomicBool::new(false) })
    }

    /// The current value (a cheap guard; per handshake).
    pub fn load(&self) -> Guard<Option<Arc<LoadedSecret>>> {
        self.value.load()
    }

    /// Install a new value: handshakes from now on use it.
    pub fn set(&self, v: LoadedSecret) {
        self.value.store(Some(Arc::new(v)));
    }

    /// Whether a value has arrived.
    pub fn is_ready(&self) -> bool {
        self.value.load().is_some()
    }

    /// Stop waiting for the first value (its initial fetch timed out); false if it had
    /// arrived or was given up already.
    pub fn give_up(&self) -> bool {
        !self.is_ready() && !self.gave_up.swap(true, Ordering::Relaxed)
    }

    /// Whether warming may go on: a value arrived, or its initial fetch timed out.
    pub fn is_settled(&self) -> bool {
        self.is_ready() || self.gave_up.load(Ordering::Relaxed)
    }

    /// The certificate of a certificate secret.
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        match &self.value.load().as_ref()?.kind {
            LoadedKind::Certificate { key, .. } => Some(key.clone()),
            LoadedKind::Validation(_) => None,
        }
    }

    /// The leaf's URI SANs of a certificate secret (empty before it arrives).
    pub fn uris(&self) -> Arc<[String]> {
        match self.value.load().as_ref().map(|v| &v.kind) {
            Some(LoadedKind::Certificate { uris, .. }) => uris.clone(),
            _ => Arc::from(Vec::new()),
        }
    }
}

/// Finds the slot of a secret reference (Envoy's secret manager): static secrets by name,
/// SDS ones subscribed on first use.
pub trait SecretLookup {
    /// The slot for `cfg`; fails for an unknown static secret.
    fn slot(&self, cfg: &model::SdsSecretConfig) -> Result<Arc<SecretSlot>, String>;
}

/// For contexts built without a secret manager (tests, tools): every reference fails.
pub struct NoSecrets;

impl SecretLookup for NoSecrets {
    fn slot(&self, cfg: &model::SdsSecretConfig) -> Result<Arc<SecretSlot>, String> {
        Err(format!("Unknown static secret: {}", cfg.name))
    }
}

/// Serves (and presents as a client) the certificate a slot holds at handshake time.
#[derive(Debug)]
pub struct SdsCertResolver {
    slot: Arc<SecretSlot>,
}

impl SdsCertResolver {
    /// A resolver reading `slot`.
    pub fn new(slot: Arc<SecretSlot>) -> Arc<Self> {
        Arc::new(SdsCertResolver { slot })
    }
}

impl ResolvesServerCert for SdsCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None (no secret yet): the handshake fails, as Envoy's without a certificate.
        self.slot.certified_key()
    }
}

impl ResolvesClientCert for SdsCertResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.slot.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
