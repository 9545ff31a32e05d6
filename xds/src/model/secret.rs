//! `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS) and the references TLS contexts
//! make to secrets (`SdsSecretConfig`).

use super::{CertificateValidation, ConfigSource, TlsCertificate};

/// A secret: a certificate with its key, or a validation context.
#[derive(Debug, Clone)]
pub struct Secret {
    /// `name`: what `SdsSecretConfig.name` refers to.
    pub name: String,
    /// What it holds.
    pub kind: SecretKind,
}

/// `Secret.type` (the kinds Pinion implements).
#[derive(Debug, Clone)]
pub enum SecretKind {
    /// `tls_certificate`.
    TlsCertificate(TlsCertificate),
    /// `validation_context`: `trusted_ca` may be empty here (a combined validation context can
    /// take it from its default); the checks that need both halves run once they are merged.
    ValidationContext(CertificateValidation),
}

/// `SdsSecretConfig`: a secret by name, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsSecretConfig {
    /// `name`.
    pub name: String,
    /// `sds_config`; `None`: a static secret of the bootstrap (`static_resources.secrets`).
    pub source: Option<ConfigSource>,
}

/// A validation context from SDS (`validation_context_sds_secret_config`, or the SDS half of a
/// `combined_validation_context`).
#[derive(Debug, Clone)]
pub struct SdsValidation {
    /// The secret holding the validation context.
    pub secret: SdsSecretConfig,
    /// `combined_validation_context.default_validation_context`: Envoy merges the SDS context
    /// into it (proto `MergeFrom`: the secret's `trusted_ca` wins when set, SAN matchers are
    /// the default's followed by the secret's).
    pub default: Option<CertificateValidation>,
}

impl CertificateValidation {
    /// The default validation context with an SDS one merged in, as Envoy's
    /// `getCombinedValidationContextConfig` (`default.MergeFrom(sds)`).
    pub fn merged(default: Option<&CertificateValidation>, sds: &CertificateValidation) -> CertificateValidation {
        let Some(d) = default else { return sds.clone() };
        CertificateValidation {
            trusted_ca: if sds.trusted_ca.is_empty() { d.trusted_ca.clone() } else { sds.trusted_ca.clone() },
            match_subject_alt_names: d
                .match_subject_alt_names
                .iter()
                .chain(sds.match_subject_alt_names.iter())
                .cloned()
                .collect(),
        }
    }
}

impl super::CommonTlsContext {
    /// The secrets this context refers to (certificate first, then validation context).
    pub fn sds_configs(&self) -> impl Iterator<Item = &SdsSecretConfig> {
        self.tls_certificate_sds.iter().chain(self.validation_sds.iter().map(|v| &v.secret))
    }
}

impl super::Listener {
    /// The secrets the filter chains' TLS contexts refer to.
    pub fn sds_configs(&self) -> impl Iterator<Item = &SdsSecretConfig> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.iter())
            .filter_map(|c| c.transport_socket.as_ref())
            .flat_map(|t| t.common.sds_configs())
    }
}

impl super::Cluster {
    /// The secrets the cluster's TLS context refers to.
    pub fn sds_configs(&self) -> impl Iterator<Item = &SdsSecretConfig> {
        self.transport_socket.iter().flat_map(|t| t.common.sds_configs())
    }
}
