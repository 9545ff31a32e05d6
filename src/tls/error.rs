//! Errors building TLS contexts.

/// Why rustls refused a TLS context (the message names the config field).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A `trusted_ca` certificate was refused.
    #[error("trusted_ca certificate {0}: {1}")]
    TrustedCa(usize, rustls::Error),
    /// The TLS versions cannot be served.
    #[error("tls_params: {0}")]
    TlsParams(rustls::Error),
    /// The certificate or its key was refused.
    #[error("tls_certificates[0]: {0}")]
    Certificate(rustls::Error),
    /// Session tickets could not be set up.
    #[error("session tickets: {0}")]
    SessionTickets(rustls::Error),
    /// A server context without a certificate.
    #[error("a server TLS context needs a certificate")]
    NoCertificate,
    /// `sni` is not a valid server name.
    #[error("sni '{0}': invalid DNS name")]
    Sni(String),
    /// A secret reference could not be resolved (an unknown static secret).
    #[error("{0}")]
    Secret(String),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}
