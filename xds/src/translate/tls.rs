//! `transport_socket`: `raw_buffer` (plaintext) or `envoy.transport_sockets.tls` with a
//! `DownstreamTlsContext` (filter chains) or an `UpstreamTlsContext` (clusters).
//!
//! Certificates, keys and CAs are read and PEM-decoded here, as Envoy does when it builds the
//! context: a missing file or a bad PEM rejects the resource instead of failing handshakes later.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf as pbuf;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::matcher::string_matcher;
use super::{at, bool_or, data_source, enum_value, reject_set, type_name, u32_or, unpack, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// The TLS transport socket's extension name.
const TLS_NAME: &str = "envoy.transport_sockets.tls";
/// The plaintext transport socket's extension name.
const RAW_BUFFER_NAME: &str = "envoy.transport_sockets.raw_buffer";
/// The plaintext transport socket's config message.
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Which end of the connection Pinion is: the defaults and a few rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A filter chain: Pinion is the TLS server.
    Downstream,
    /// A cluster: Pinion is the TLS client.
    Upstream,
}

/// What a `transport_socket` asks for.
enum Socket<'a> {
    /// Absent or `raw_buffer`.
    Plaintext,
    /// `envoy.transport_sockets.tls`, with its typed config if any.
    Tls(Option<&'a pbuf::Any>),
}

/// A filter chain's `transport_socket`: `None` for plaintext.
pub(crate) fn downstream(t: &Option<core::TransportSocket>) -> ConfigResult<Option<Arc<model::DownstreamTlsContext>>> {
    match classify(t)? {
        Socket::Plaintext => Ok(None),
        // Envoy builds a name-only TLS socket from the default (empty) context.
        Socket::Tls(None) => Ok(Some(Arc::new(downstream_context(&tls::DownstreamTlsContext::default())?))),
        Socket::Tls(Some(any)) => {
            let ctx: tls::DownstreamTlsContext = unpack(any).map_err(at("typed_config"))?;
            Ok(Some(Arc::new(downstream_context(&ctx).map_err(at("typed_config"))?)))
        }
    }
}

/// A cluster's `transport_socket`: `None` for plaintext.
pub(crate) fn upstream(t: &Option<core::TransportSocket>) -> ConfigResult<Option<Arc<model::UpstreamTlsContext>>> {
    match classify(t)? {
        Socket::Plaintext => Ok(None),
        // Envoy builds a name-only TLS socket from the default (empty) context.
        Socket::Tls(None) => Ok(Some(Arc::new(upstream_context(&tls::UpstreamTlsContext::default())?))),
        Socket::Tls(Some(any)) => {
            let ctx: tls::UpstreamTlsContext = unpack(any).map_err(at("typed_config"))?;
            Ok(Some(Arc::new(upstream_context(&ctx).map_err(at("typed_config"))?)))
        }
    }
}

/// Tell plaintext from TLS from anything else. As in Envoy, the typed config's type picks the
/// extension when there is one; the name only counts without it.
fn classify(t: &Option<core::TransportSocket>) -> ConfigResult<Socket<'_>> {
    use core::transport_socket::ConfigType;
    let Some(t) = t else { return Ok(Socket::Plaintext) };
    let core::TransportSocket { name, config_type } = t;
    // The irrefutable pattern fails to compile if Envoy adds a config type.
    let any = config_type.as_ref().map(|ConfigType::TypedConfig(any)| any);
    let what = match any {
        Some(any) => {
            let ty = type_name(any);
            if ty == RAW_BUFFER_TYPE {
                return Ok(Socket::Plaintext);
            }
            // A context of the wrong side is left to `unpack`, which names the expected type.
            if ty == <tls::DownstreamTlsContext as prost::Name>::full_name()
                || ty == <tls::UpstreamTlsContext as prost::Name>::full_name()
            {
                return Ok(Socket::Tls(Some(any)));
            }
            format!("{name} ({ty})")
        }
        None if name == RAW_BUFFER_NAME => return Ok(Socket::Plaintext),
        None if name == TLS_NAME => return Ok(Socket::Tls(None)),
        None => name.clone(),
    };
    Err(ConfigError::unsupported("", format!("transport socket {what} is not supported by pinion")))
}

/// Translate a `DownstreamTlsContext`; errors relative to it.
fn downstream_context(d: &tls::DownstreamTlsContext) -> ConfigResult<model::DownstreamTlsContext> {
    use tls::downstream_tls_context::{OcspStaplePolicy, SessionTicketKeysType};
    let tls::DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        // Not implemented by Envoy either (`not-implemented-hide`): it accepts and ignores it.
        require_sni: _,
        disable_stateful_session_resumption,
        // Only bounds how long a resumable session lives; Pinion's tickets and cache entries
        // expire on rustls' own schedule (a client past it does a full handshake).
        session_timeout: _,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        // Only orders the TLS 1.2 cipher suites, all of which Pinion's TLS stack deems secure.
        prefer_client_ciphers: _,
        session_ticket_keys_type,
    } = d;
    let stateless_resumption = match session_ticket_keys_type {
        // Envoy's default: tickets under keys it generates itself, as Pinion does. Configured
        // keys only make tickets valid across instances and restarts; with Pinion's own keys a
        // client of another instance does a full handshake instead.
        None
        | Some(SessionTicketKeysType::SessionTicketKeys(_))
        | Some(SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(_)) => true,
        Some(SessionTicketKeysType::DisableStatelessSessionResumption(disable)) => !disable,
    };
    match enum_value::<OcspStaplePolicy>(*ocsp_staple_policy, "ocsp_staple_policy")? {
        // Without staples (ocsp_staple is rejected) strict stapling behaves as lenient stapling.
        OcspStaplePolicy::LenientStapling | OcspStaplePolicy::StrictStapling => {}
        OcspStaplePolicy::MustStaple => {
            return Err(ConfigError::unsupported(
                "ocsp_staple_policy",
                "MUST_STAPLE is not supported by pinion (OCSP stapling is not implemented)",
            ))
        }
    }

    let default = tls::CommonTlsContext::default();
    let common =
        common(common_tls_context.as_ref().unwrap_or(&default), Side::Downstream).map_err(at("common_tls_context"))?;
    if common.tls_certificates.is_empty() && common.tls_certificate_sds.is_none() {
        let path =
            if common_tls_context.is_some() { "common_tls_context.tls_certificates" } else { "common_tls_context" };
        return Err(ConfigError::invalid(path, "No TLS certificates found for server context"));
    }
    // With a single certificate there is nothing to scan.
    if bool_or(full_scan_certs_on_sni_mismatch, false) && common.tls_certificates.len() > 1 {
        return Err(ConfigError::unsupported(
            "full_scan_certs_on_sni_mismatch",
            "full_scan_certs_on_sni_mismatch with several certificates is not supported by pinion",
        ));
    }
    let explicit = bool_or(require_client_certificate, false);
    if explicit && common.validation.is_none() && common.validation_sds.is_none() {
        return Err(ConfigError::unsupported(
            "require_client_certificate",
            "require_client_certificate without common_tls_context.validation_context.trusted_ca is not supported by \
             pinion: it does not accept unverified client certificates",
        ));
    }
    // Envoy makes the client certificate mandatory as soon as SAN matchers are configured
    // (SSL_VERIFY_FAIL_IF_NO_PEER_CERT), whatever require_client_certificate says. Matchers
    // of an SDS validation context count once it arrives (see the data plane's verifier).
    let san_matchers = common.validation.as_ref().is_some_and(|v| !v.match_subject_alt_names.is_empty())
        || common
            .validation_sds
            .as_ref()
            .and_then(|v| v.default.as_ref())
            .is_some_and(|v| !v.match_subject_alt_names.is_empty());
    Ok(model::DownstreamTlsContext {
        common,
        require_client_certificate: explicit || san_matchers,
        stateful_resumption: !disable_stateful_session_resumption,
        stateless_resumption,
    })
}

/// Translate an `UpstreamTlsContext`; errors relative to it.
fn upstream_context(u: &tls::UpstreamTlsContext) -> ConfigResult<model::UpstreamTlsContext> {
    let tls::UpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        // Envoy's default (false) is the only behaviour: rustls never renegotiates.
        allow_renegotiation: _,
        max_session_keys,
        // Deprecated and ignored by Envoy, which always enforces keyUsage.
        enforce_rsa_key_usage: _,
    } = u;
    reject_set(auto_host_sni, "auto_host_sni")?;
    reject_set(auto_sni_san_validation, "auto_sni_san_validation")?;
    if sni.contains('\0') {
        return Err(ConfigError::invalid("sni", "SNI names containing NULL-byte are not allowed"));
    }
    if let Some(c) = common_tls_context {
        // Envoy counts the entries as given (empty ones included) for this check.
        if c.tls_certificates.len() + c.tls_certificate_sds_secret_configs.len() > 1 {
            return Err(ConfigError::invalid(
                "common_tls_context.tls_certificates",
                "Multiple TLS certificates are not supported for client contexts",
            ));
        }
    }
    let default = tls::CommonTlsContext::default();
    let common =
        common(common_tls_context.as_ref().unwrap_or(&default), Side::Upstream).map_err(at("common_tls_context"))?;
    Ok(model::UpstreamTlsContext { common, sni: sni.clone(), max_session_keys: u32_or(max_session_keys, 1) })
}

/// Translate a `CommonTlsContext`; errors relative to it.
fn common(c: &tls::CommonTlsContext, side: Side) -> ConfigResult<model::CommonTlsContext> {
    use tls::common_tls_context::ValidationContextType as V;
    let tls::CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = c;
    let tls_certificate_sds =
        match tls_certificate_sds_secret_configs.as_slice() {
            [] => None,
            [one] => {
                if !tls_certificates.is_empty() {
                    return Err(ConfigError::unsupported(
                        "tls_certificate_sds_secret_configs",
                        "tls_certificate_sds_secret_configs together with tls_certificates is not supported by pinion \
                     (one certificate per context)",
                    ));
                }
                Some(sds_secret_config(one).map_err(at("tls_certificate_sds_secret_configs[0]"))?)
            }
            _ => return Err(ConfigError::unsupported(
                "tls_certificate_sds_secret_configs",
                "several tls_certificate_sds_secret_configs are not supported by pinion (one certificate per context)",
            )),
        };
    reject_set(tls_certificate_provider_instance, "tls_certificate_provider_instance")?;
    reject_set(custom_tls_certificate_selector, "custom_tls_certificate_selector")?;
    reject_set(tls_certificate_certificate_provider, "tls_certificate_certificate_provider")?;
    reject_set(tls_certificate_certificate_provider_instance, "tls_certificate_certificate_provider_instance")?;
    reject_set(custom_handshaker, "custom_handshaker")?;
    reject_set(key_log, "key_log")?;

    let (min_version, max_version) = match tls_params {
        None => (model::TlsVersion::Tls12, default_max_version(side)),
        Some(p) => tls_parameters(p, side).map_err(at("tls_params"))?,
    };

    let mut certificates = Vec::with_capacity(tls_certificates.len());
    for (i, cert) in tls_certificates.iter().enumerate() {
        let path = format!("tls_certificates[{i}]");
        if let Some(cert) = tls_certificate(cert, side).map_err(at(&path))? {
            certificates.push(cert);
        }
    }

    let mut validation_sds = None;
    let validation = match validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => validation_context(v).map_err(at("validation_context"))?,
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            let secret = sds_secret_config(s).map_err(at("validation_context_sds_secret_config"))?;
            validation_sds = Some(model::SdsValidation { secret, default: None });
            None
        }
        Some(V::CombinedValidationContext(c)) => {
            validation_sds = Some(combined_validation_context(c).map_err(at("combined_validation_context"))?);
            None
        }
        Some(V::ValidationContextCertificateProvider(_)) => {
            return Err(unsupported_field("validation_context_certificate_provider"))
        }
        Some(V::ValidationContextCertificateProviderInstance(_)) => {
            return Err(unsupported_field("validation_context_certificate_provider_instance"))
        }
    };

    Ok(model::CommonTlsContext {
        tls_certificates: certificates,
        tls_certificate_sds,
        validation,
        validation_sds,
        alpn_protocols: alpn(alpn_protocols)?,
        min_version,
        max_version,
    })
}

/// Translate an `SdsSecretConfig`; errors relative to it.
fn sds_secret_config(s: &tls::SdsSecretConfig) -> ConfigResult<model::SdsSecretConfig> {
    let tls::SdsSecretConfig { name, sds_config } = s;
    if name.is_empty() {
        return Err(ConfigError::invalid("name", "the secret name must not be empty"));
    }
    let source = match sds_config {
        None => None,
        Some(c) => Some(super::config_source::config_source(c).map_err(at("sds_config"))?),
    };
    Ok(model::SdsSecretConfig { name: name.clone(), source })
}

/// Translate a `CombinedCertificateValidationContext`; errors relative to it.
fn combined_validation_context(
    c: &tls::common_tls_context::CombinedCertificateValidationContext,
) -> ConfigResult<model::SdsValidation> {
    let tls::common_tls_context::CombinedCertificateValidationContext {
        default_validation_context,
        validation_context_sds_secret_config,
        validation_context_certificate_provider,
        validation_context_certificate_provider_instance,
    } = c;
    reject_set(validation_context_certificate_provider, "validation_context_certificate_provider")?;
    reject_set(validation_context_certificate_provider_instance, "validation_context_certificate_provider_instance")?;
    let Some(sds) = validation_context_sds_secret_config else {
        return Err(ConfigError::invalid(
            "validation_context_sds_secret_config",
            "validation_context_sds_secret_config is required",
        ));
    };
    let secret = sds_secret_config(sds).map_err(at("validation_context_sds_secret_config"))?;
    let default = match default_validation_context {
        None => None,
        Some(v) => Some(validation_parts(v).map_err(at("default_validation_context"))?.1),
    };
    Ok(model::SdsValidation { secret, default })
}

/// Translate an SDS `Secret` (static `secrets` or an SDS response); errors relative to it.
/// Only certificates and validation contexts: the secret kinds TLS contexts use.
pub fn secret(s: &tls::Secret) -> ConfigResult<model::Secret> {
    use tls::secret::Type;
    let tls::Secret { name, r#type } = s;
    let kind = match r#type {
        None => return Err(ConfigError::invalid("", format!("secret '{name}' has no type"))),
        Some(Type::TlsCertificate(c)) => match tls_certificate(c, Side::Downstream).map_err(at("tls_certificate"))? {
            Some(c) => model::SecretKind::TlsCertificate(c),
            None => {
                return Err(ConfigError::invalid(
                    "tls_certificate",
                    "certificate_chain and private_key are required in a tls_certificate secret",
                ))
            }
        },
        Some(Type::ValidationContext(v)) => {
            model::SecretKind::ValidationContext(validation_parts(v).map_err(at("validation_context"))?.1)
        }
        Some(Type::SessionTicketKeys(_)) => {
            return Err(ConfigError::unsupported(
                "session_ticket_keys",
                "session_ticket_keys secrets are not supported by pinion (it keys session tickets itself)",
            ))
        }
        Some(Type::GenericSecret(_)) => {
            return Err(ConfigError::unsupported(
                "generic_secret",
                "generic_secret secrets are not supported by pinion (no filter uses them)",
            ))
        }
    };
    Ok(model::Secret { name: name.clone(), kind })
}

/// Envoy's default maximum version: TLS 1.2 as a client, TLS 1.3 as a server.
fn default_max_version(side: Side) -> model::TlsVersion {
    match side {
        Side::Downstream => model::TlsVersion::Tls13,
        Side::Upstream => model::TlsVersion::Tls12,
    }
}

/// `alpn_protocols`. Envoy joins the list with `,` and splits it again, so an entry written
/// the old way (`"h2,http/1.1"`) is two protocols; keep that.
fn alpn(protocols: &[String]) -> ConfigResult<Vec<String>> {
    let mut out = Vec::new();
    for (i, entry) in protocols.iter().enumerate() {
        for p in entry.split(',') {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::invalid(
                    format!("alpn_protocols[{i}]"),
                    format!("invalid ALPN protocol '{entry}': each protocol must be 1 to 255 bytes"),
                ));
            }
            out.push(p.to_string());
        }
    }
    Ok(out)
}

/// Translate `TlsParameters` into (minimum, maximum) versions; errors relative to it.
fn tls_parameters(p: &tls::TlsParameters, side: Side) -> ConfigResult<(model::TlsVersion, model::TlsVersion)> {
    let tls::TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = p;
    reject_set(cipher_suites, "cipher_suites")?;
    reject_set(ecdh_curves, "ecdh_curves")?;
    reject_set(signature_algorithms, "signature_algorithms")?;
    reject_set(compliance_policies, "compliance_policies")?;
    let min = tls_version(*tls_minimum_protocol_version, model::TlsVersion::Tls12, "tls_minimum_protocol_version")?;
    let max = tls_version(*tls_maximum_protocol_version, default_max_version(side), "tls_maximum_protocol_version")?;
    if min > max {
        let side_default = if *tls_maximum_protocol_version == 0 {
            match side {
                Side::Downstream => ", the server default",
                Side::Upstream => ", the client default",
            }
        } else {
            ""
        };
        return Err(ConfigError::invalid(
            "tls_minimum_protocol_version",
            format!(
                "tls_minimum_protocol_version {} is above tls_maximum_protocol_version ({}{side_default})",
                version_name(min),
                version_name(max)
            ),
        ));
    }
    Ok((min, max))
}

/// One `TlsProtocol` value; `TLS_AUTO` is `default`.
fn tls_version(v: i32, default: model::TlsVersion, field: &str) -> ConfigResult<model::TlsVersion> {
    use tls::tls_parameters::TlsProtocol as P;
    match enum_value::<P>(v, field)? {
        P::TlsAuto => Ok(default),
        old @ (P::TlSv10 | P::TlSv11) => Err(ConfigError::unsupported(
            field,
            format!("{} is not supported: pinion supports TLS 1.2 and 1.3", old.as_str_name()),
        )),
        P::TlSv12 => Ok(model::TlsVersion::Tls12),
        P::TlSv13 => Ok(model::TlsVersion::Tls13),
    }
}

/// The proto spelling of a version, for messages.
fn version_name(v: model::TlsVersion) -> &'static str {
    match v {
        model::TlsVersion::Tls12 => "TLSv1_2",
        model::TlsVersion::Tls13 => "TLSv1_3",
    }
}

/// Translate a `TlsCertificate`; `None` for an entry with nothing set, which Envoy skips.
/// Errors relative to it.
fn tls_certificate(c: &tls::TlsCertificate, side: Side) -> ConfigResult<Option<model::TlsCertificate>> {
    let tls::TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = c;
    reject_set(pkcs12, "pkcs12")?;
    // Only used for SDS-delivered certificates in Envoy; Pinion does not reload files.
    reject_set(watched_directory, "watched_directory")?;
    reject_set(private_key_provider, "private_key_provider")?;
    reject_set(password, "password")?;
    reject_set(ocsp_staple, "ocsp_staple")?;
    reject_set(signed_certificate_timestamp, "signed_certificate_timestamp")?;
    match side {
        Side::Downstream => reject_set(tls_params, "tls_params")?,
        // Envoy ignores per-certificate parameters on client certificates.
        Side::Upstream => {}
    }
    let (chain, key) = match (certificate_chain, private_key) {
        (None, None) => return Ok(None),
        (Some(chain), Some(key)) => (chain, key),
        (Some(_), None) => {
            return Err(ConfigError::invalid("private_key", "private_key is required with certificate_chain"))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid("certificate_chain", "certificate_chain is required with private_key"))
        }
    };
    let certificate_chain = certificates(chain, "certificate chain").map_err(at("certificate_chain"))?;
    let private_key = private_key_pem(key).map_err(at("private_key"))?;
    Ok(Some(model::TlsCertificate { certificate_chain, private_key: Arc::new(private_key) }))
}

/// Translate a `CertificateValidationContext` without the checks that need the whole context
/// (a combined validation context merges two halves first); returns the field the SAN
/// matchers came from, for errors. Errors relative to it.
fn validation_parts(
    v: &tls::CertificateValidationContext,
) -> ConfigResult<(&'static str, model::CertificateValidation)> {
    use tls::certificate_validation_context::TrustChainVerification;
    let tls::CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        // Not implemented by Envoy either (`not-implemented-hide`): it accepts and ignores it.
        require_signed_certificate_timestamp: _,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = v;
    reject_set(ca_certificate_provider_instance, "ca_certificate_provider_instance")?;
    reject_set(system_root_certs, "system_root_certs")?;
    // Only used for SDS-delivered contexts in Envoy; Pinion does not reload files.
    reject_set(watched_directory, "watched_directory")?;
    reject_set(verify_certificate_spki, "verify_certificate_spki")?;
    reject_set(verify_certificate_hash, "verify_certificate_hash")?;
    reject_set(crl, "crl")?;
    reject_set(allow_expired_certificate, "allow_expired_certificate")?;
    reject_set(custom_validator_config, "custom_validator_config")?;
    reject_set(only_verify_leaf_cert_crl, "only_verify_leaf_cert_crl")?;
    reject_set(max_verify_depth, "max_verify_depth")?;
    reject_set(suppress_client_ca_list, "suppress_client_ca_list")?;
    match enum_value::<TrustChainVerification>(*trust_chain_verification, "trust_chain_verification")? {
        TrustChainVerification::VerifyTrustChain => {}
        TrustChainVerification::AcceptUntrusted => {
            return Err(ConfigError::unsupported(
                "trust_chain_verification",
                "ACCEPT_UNTRUSTED is not supported by pinion: it does not accept unverified certificates",
            ))
        }
    }

    let (san_field, matchers) = subject_alt_names(match_typed_subject_alt_names, match_subject_alt_names)?;
    let trusted_ca = match trusted_ca {
        None => Vec::new(),
        Some(ca) => certificates(ca, "trusted CA certificates").map_err(at("trusted_ca"))?,
    };
    Ok((san_field, model::CertificateValidation { trusted_ca, match_subject_alt_names: matchers }))
}

/// Translate a `CertificateValidationContext`; `None` when it asks for no verification.
/// Errors relative to it.
fn validation_context(v: &tls::CertificateValidationContext) -> ConfigResult<Option<model::CertificateValidation>> {
    let (san_field, parts) = validation_parts(v)?;
    check_validation(parts, san_field)
}

/// Envoy's checks on a complete validation context: SAN matchers need `trusted_ca`; without
/// either nothing is verified (`None`). `san_field` names the matchers for the error.
fn check_validation(
    v: model::CertificateValidation,
    san_field: &str,
) -> ConfigResult<Option<model::CertificateValidation>> {
    let model::CertificateValidation { trusted_ca, match_subject_alt_names: matchers } = v;
    if trusted_ca.is_empty() {
        if !matchers.is_empty() {
            return Err(ConfigError::invalid(
                san_field,
                "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
            ));
        }
        // Nothing to verify, as in Envoy without trusted_ca.
        return Ok(None);
    }
    Ok(Some(model::CertificateValidation { trusted_ca, match_subject_alt_names: matchers }))
}

/// The SAN matchers of a validation context, with the field they came from (for errors).
fn subject_alt_names(
    typed: &[tls::SubjectAltNameMatcher],
    deprecated: &[envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher],
) -> ConfigResult<(&'static str, Vec<model::SanMatcher>)> {
    if !typed.is_empty() && !deprecated.is_empty() {
        // The proto comment says the deprecated field is ignored, but Envoy rejects the mix.
        return Err(ConfigError::invalid(
            "match_subject_alt_names",
            "SAN-based verification using both match_typed_subject_alt_names and the deprecated \
             match_subject_alt_names is not allowed",
        ));
    }
    if !deprecated.is_empty() {
        // Envoy matches an untyped matcher against every SAN type; same order as Envoy.
        const ALL: [model::SanType; 4] =
            [model::SanType::Dns, model::SanType::Uri, model::SanType::Email, model::SanType::IpAddress];
        let mut out = Vec::with_capacity(deprecated.len() * ALL.len());
        for (i, m) in deprecated.iter().enumerate() {
            let matcher = string_matcher(m).map_err(at(format!("match_subject_alt_names[{i}]")))?;
            out.extend(ALL.iter().map(|&san_type| model::SanMatcher { san_type, matcher: matcher.clone() }));
        }
        return Ok(("match_subject_alt_names", out));
    }
    let mut out = Vec::with_capacity(typed.len());
    for (i, m) in typed.iter().enumerate() {
        out.push(san_matcher(m).map_err(at(format!("match_typed_subject_alt_names[{i}]")))?);
    }
    Ok(("match_typed_subject_alt_names", out))
}

/// Translate a `SubjectAltNameMatcher`; errors relative to it.
fn san_matcher(m: &tls::SubjectAltNameMatcher) -> ConfigResult<model::SanMatcher> {
    use tls::subject_alt_name_matcher::SanType as T;
    // oid: Envoy ignores it for every type but OTHER_NAME, which is rejected below.
    let tls::SubjectAltNameMatcher { san_type, matcher, oid: _ } = m;
    let san_type = match enum_value::<T>(*san_type, "san_type")? {
        T::Unspecified => return Err(ConfigError::invalid("san_type", "san_type must be set")),
        T::Email => model::SanType::Email,
        T::Dns => model::SanType::Dns,
        T::Uri => model::SanType::Uri,
        T::IpAddress => model::SanType::IpAddress,
        T::OtherName => {
            return Err(ConfigError::unsupported("san_type", "OTHER_NAME SAN matchers are not supported by pinion"))
        }
    };
    let Some(matcher) = matcher else {
        return Err(ConfigError::invalid("matcher", "matcher is required"));
    };
    Ok(model::SanMatcher { san_type, matcher: string_matcher(matcher).map_err(at("matcher"))? })
}

/// Where a `DataSource`'s bytes come from, for messages.
fn source_name(d: &core::DataSource) -> String {
    use core::data_source::Specifier;
    match &d.specifier {
        Some(Specifier::Filename(f)) => format!("file '{f}'"),
        Some(Specifier::InlineString(_)) => "inline_string".into(),
        Some(Specifier::InlineBytes(_)) => "inline_bytes".into(),
        Some(Specifier::EnvironmentVariable(v)) => format!("environment variable '{v}'"),
        None => "an empty data source".into(),
    }
}

/// A PEM error in words (the crate's own `Display` prints byte arrays).
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("missing '-----END {}-----' line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM line '{}'", String::from_utf8_lossy(line).trim_end())
        }
        other => format!("bad PEM: {other}"),
    }
}

/// Every `CERTIFICATE` in a PEM data source (at least one); errors relative to the data source.
fn certificates(d: &core::DataSource, what: &str) -> ConfigResult<Vec<CertificateDer<'static>>> {
    let pem = data_source(d)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
        ConfigError::invalid("", format!("cannot load {what} from {}: {}", source_name(d), pem_error(&e)))
    })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            "",
            format!("cannot load {what} from {}: no PEM 'CERTIFICATE' block found", source_name(d)),
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM data source; errors relative to it.
fn private_key_pem(d: &core::DataSource) -> ConfigResult<PrivateKeyDer<'static>> {
    let pem = data_source(d)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        // Encrypted keys are skipped by the parser (or fail in base64); say why.
        let encrypted = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
        if encrypted(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || encrypted(b"Proc-Type: 4,ENCRYPTED") {
            return ConfigError::unsupported(
                "",
                format!("the private key in {} is encrypted; pinion needs an unencrypted key", source_name(d)),
            );
        }
        let reason = match e {
            pem::Error::NoItemsFound => {
                "no PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block found".to_string()
            }
            e => pem_error(&e),
        };
        ConfigError::invalid("", format!("cannot load private key from {}: {reason}", source_name(d)))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    use prost::Message;
    use tls::subject_alt_name_matcher::SanType as T;
    use tls::tls_parameters::TlsProtocol as P;

    use super::*;
    use crate::error::ErrorKind;

    /// A fresh self-signed certificate and its key, PEM.
    fn pem_pair(name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        (cert.pem(), signing_key.serialize_pem())
    }

    fn inline(s: &str) -> core::DataSource {
        core::DataSource { specifier: Some(Specifier::InlineString(s.into())), watched_directory: None }
    }

    fn file(p: &std::path::Path) -> core::DataSource {
        core::DataSource {
            specifier: Some(Specifier::Filename(p.to_string_lossy().into_owned())),
            watched_directory: None,
        }
    }

    fn certificate(chain: core::DataSource, key: core::DataSource) -> tls::TlsCertificate {
        tls::TlsCertificate { certificate_chain: Some(chain), private_key: Some(key), ..Default::default() }
    }

    fn inline_certificate(name: &str) -> tls::TlsCertificate {
        let (cert, key) = pem_pair(name);
        certificate(inline(&cert), inline(&key))
    }

    fn socket<M: Message + prost::Name>(msg: &M) -> Option<core::TransportSocket> {
        Some(core::TransportSocket {
            name: TLS_NAME.into(),
            config_type: Some(ConfigType::TypedConfig(pbuf::Any {
                type_url: M::type_url(),
                value: msg.encode_to_vec(),
            })),
        })
    }

    fn server(common: tls::CommonTlsContext) -> tls::DownstreamTlsContext {
        tls::DownstreamTlsContext { common_tls_context: Some(common), ..Default::default() }
    }

    fn client(common: tls::CommonTlsContext) -> tls::UpstreamTlsContext {
        tls::UpstreamTlsContext { common_tls_context: Some(common), ..Default::default() }
    }

    fn with_certificate(mut common: tls::CommonTlsContext) -> tls::CommonTlsContext {
        common.tls_certificates.push(inline_certificate("localhost"));
        common
    }

    fn with_validation(
        mut common: tls::CommonTlsContext,
        v: tls::CertificateValidationContext,
    ) -> tls::CommonTlsContext {
        common.validation_context_type = Some(tls::common_tls_context::ValidationContextType::ValidationContext(v));
        common
    }

    fn san(san_type: T, pattern: m::string_matcher::MatchPattern) -> tls::SubjectAltNameMatcher {
        tls::SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(m::StringMatcher { ignore_case: false, match_pattern: Some(pattern) }),
            oid: String::new(),
        }
    }

    fn down_err(d: &tls::DownstreamTlsContext) -> ConfigError {
        downstream(&socket(d)).expect_err("expected an error")
    }

    fn up_err(u: &tls::UpstreamTlsContext) -> ConfigError {
        upstream(&socket(u)).expect_err("expected an error")
    }

    /// A file under the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str, contents: &str) -> Self {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("pinion-xds-tls-{}-{n}-{tag}.pem", std::process::id()));
            std::fs::write(&path, contents).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn absent_and_raw_buffer_are_plaintext() {
        assert!(downstream(&None).unwrap().is_none());
        assert!(upstream(&None).unwrap().is_none());
        let by_name = Some(core::TransportSocket { name: RAW_BUFFER_NAME.into(), config_type: None });
        assert!(downstream(&by_name).unwrap().is_none());
        assert!(upstream(&by_name).unwrap().is_none());
        let by_type = Some(core::TransportSocket {
            name: "whatever".into(),
            config_type: Some(ConfigType::TypedConfig(pbuf::Any {
                type_url: format!("type.googleapis.com/{RAW_BUFFER_TYPE}"),
                value: vec![],
            })),
        });
        assert!(downstream(&by_type).unwrap().is_none());
        assert!(upstream(&by_type).unwrap().is_none());
    }

    #[test]
    fn unknown_transport_socket_is_unsupported() {
        let t = Some(core::TransportSocket {
            name: "envoy.transport_sockets.alts".into(),
            config_type: Some(ConfigType::TypedConfig(pbuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts".into(),
                value: vec![],
            })),
        });
        let err = upstream(&t).unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, ""));
        assert_eq!(
            err.reason,
            "transport socket envoy.transport_sockets.alts (envoy.extensions.transport_sockets.alts.v3.Alts) is not \
             supported by pinion"
        );
        // The type decides, not the name.
        let t = Some(core::TransportSocket {
            name: TLS_NAME.into(),
            config_type: Some(ConfigType::TypedConfig(pbuf::Any {
                type_url: "type.googleapis.com/google.protobuf.Struct".into(),
                value: vec![],
            })),
        });
        assert_eq!(downstream(&t).unwrap_err().kind, ErrorKind::Unsupported);
        let t = Some(core::TransportSocket { name: "envoy.transport_sockets.starttls".into(), config_type: None });
        assert!(downstream(&t).unwrap_err().reason.contains("envoy.transport_sockets.starttls is not supported"));
    }

    #[test]
    fn wrong_context_type_for_the_side() {
        let err = downstream(&socket(&client(tls::CommonTlsContext::default()))).unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Invalid, "typed_config"));
        assert!(
            err.reason.contains(
                "expected 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext'"
            ),
            "{err}"
        );
        let err = upstream(&socket(&server(with_certificate(Default::default())))).unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Invalid, "typed_config"));
        assert!(err.reason.contains("UpstreamTlsContext"), "{err}");
    }

    #[test]
    fn inline_certificate_and_key() {
        let mut common = with_certificate(tls::CommonTlsContext::default());
        common.alpn_protocols = vec!["h2".into(), "http/1.1".into()];
        let got = downstream(&socket(&server(common))).unwrap().unwrap();
        assert_eq!(got.common.tls_certificates.len(), 1);
        assert_eq!(got.common.tls_certificates[0].certificate_chain.len(), 1);
        assert!(matches!(*got.common.tls_certificates[0].private_key, PrivateKeyDer::Pkcs8(_)));
        assert_eq!(got.common.alpn_protocols, ["h2", "http/1.1"]);
        assert!(got.common.validation.is_none());
        assert!(!got.require_client_certificate);
        assert_eq!(
            (got.common.min_version, got.common.max_version),
            (model::TlsVersion::Tls12, model::TlsVersion::Tls13)
        );
    }

    #[test]
    fn several_server_certificates_are_kept_and_empty_entries_skipped() {
        let mut common = with_certificate(tls::CommonTlsContext::default());
        common.tls_certificates.push(tls::TlsCertificate::default());
        common.tls_certificates.push(inline_certificate("other.example"));
        let got = downstream(&socket(&server(common))).unwrap().unwrap();
        assert_eq!(got.common.tls_certificates.len(), 2);
    }

    #[test]
    fn certificate_from_files() {
        let (cert, key) = pem_pair("localhost");
        let (ca, _) = pem_pair("ca");
        let cert_file = TempFile::new("cert", &format!("{cert}{ca}"));
        let key_file = TempFile::new("key", &key);
        let common = tls::CommonTlsContext {
            tls_certificates: vec![certificate(file(&cert_file.0), file(&key_file.0))],
            ..Default::default()
        };
        let got = upstream(&socket(&client(common))).unwrap().unwrap();
        // The whole chain, leaf first.
        assert_eq!(got.common.tls_certificates[0].certificate_chain.len(), 2);

        let missing = std::env::temp_dir().join(format!("pinion-xds-tls-{}-missing.pem", std::process::id()));
        let common = tls::CommonTlsContext {
            tls_certificates: vec![certificate(file(&cert_file.0), file(&missing))],
            ..Default::default()
        };
        let err = up_err(&client(common));
        assert_eq!(err.path, "typed_config.common_tls_context.tls_certificates[0].private_key.filename");
        assert!(err.reason.contains(&*missing.to_string_lossy()), "{err}");
    }

    #[test]
    fn bad_pem_names_field_and_source() {
        let (cert, key) = pem_pair("localhost");
        let garbage = TempFile::new("garbage", "not a certificate\n");
        let common = with_certificate(tls::CommonTlsContext {
            tls_certificates: vec![inline_certificate("a"), certificate(file(&garbage.0), inline(&key))],
            ..Default::default()
        });
        let err = down_err(&server(common));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (ErrorKind::Invalid, "typed_config.common_tls_context.tls_certificates[1].certificate_chain")
        );
        assert!(err.reason.contains(&format!("file '{}'", garbage.0.display())), "{err}");
        assert!(err.reason.contains("no PEM 'CERTIFICATE' block"), "{err}");

        let truncated = cert.lines().take(3).collect::<Vec<_>>().join("\n");
        let common = tls::CommonTlsContext {
            tls_certificates: vec![certificate(inline(&truncated), inline(&key))],
            ..Default::default()
        };
        let err = down_err(&server(common));
        assert_eq!(err.path, "typed_config.common_tls_context.tls_certificates[0].certificate_chain");
        assert!(err.reason.contains("inline_string: missing '-----END CERTIFICATE-----' line"), "{err}");

        // A certificate where the key should be.
        let common = tls::CommonTlsContext {
            tls_certificates: vec![certificate(inline(&cert), inline(&cert))],
            ..Default::default()
        };
        let err = down_err(&server(common));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (ErrorKind::Invalid, "typed_config.common_tls_context.tls_certificates[0].private_key")
        );
        assert!(err.reason.contains("cannot load private key from inline_string: no PEM 'PRIVATE KEY'"), "{err}");

        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let common = tls::CommonTlsContext {
            tls_certificates: vec![certificate(inline(&cert), inline(encrypted))],
            ..Default::default()
        };
        let err = down_err(&server(common));
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.reason.contains("encrypted"), "{err}");
    }

    #[test]
    fn incomplete_or_extended_certificates() {
        let (cert, _) = pem_pair("localhost");
        let only_chain = tls::TlsCertificate { certificate_chain: Some(inline(&cert)), ..Default::default() };
        let err = down_err(&server(tls::CommonTlsContext { tls_certificates: vec![only_chain], ..Default::default() }));
        assert_eq!(err.path, "typed_config.common_tls_context.tls_certificates[0].private_key");

        let mut with_password = inline_certificate("localhost");
        with_password.password = Some(inline("secret"));
        let err =
            down_err(&server(tls::CommonTlsContext { tls_certificates: vec![with_password], ..Default::default() }));
        assert_eq!(err.to_string(), "typed_config.common_tls_context.tls_certificates[0].password: unsupported: password is not supported by pinion");
    }

    #[test]
    fn server_needs_a_certificate() {
        let err = down_err(&server(tls::CommonTlsContext::default()));
        assert_eq!(
            err.to_string(),
            "typed_config.common_tls_context.tls_certificates: No TLS certificates found for server context"
        );
        // A name-only TLS socket is the default (empty) context, as in Envoy.
        let t = Some(core::TransportSocket { name: TLS_NAME.into(), config_type: None });
        let err = downstream(&t).unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Invalid, "common_tls_context"));
        let got = upstream(&t).unwrap().unwrap();
        assert!(got.common.tls_certificates.is_empty() && got.common.validation.is_none() && got.sni.is_empty());
    }

    fn sds(name: &str, ads: bool) -> tls::SdsSecretConfig {
        use self::core::config_source::ConfigSourceSpecifier as S;
        let sds_config = ads.then(|| core::ConfigSource {
            config_source_specifier: Some(S::Ads(core::AggregatedConfigSource {})),
            ..Default::default()
        });
        tls::SdsSecretConfig { name: name.into(), sds_config }
    }

    #[test]
    fn sds_references() {
        use m::string_matcher::MatchPattern;
        use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType as V};
        // A server certificate from SDS is enough for a downstream context.
        let common = tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default", true)],
            validation_context_type: Some(V::ValidationContextSdsSecretConfig(sds("ROOTCA", true))),
            ..Default::default()
        };
        let mut d = server(common);
        d.require_client_certificate = Some(pbuf::BoolValue { value: true });
        let got = downstream(&socket(&d)).unwrap().unwrap();
        let cert = got.common.tls_certificate_sds.as_ref().unwrap();
        assert_eq!(cert.name, "default");
        assert_eq!(cert.source.as_ref().unwrap().kind, model::ConfigSourceKind::Ads);
        let v = got.common.validation_sds.as_ref().unwrap();
        assert_eq!(v.secret.name, "ROOTCA");
        assert!(v.default.is_none() && got.common.validation.is_none() && got.require_client_certificate);

        // Static secret references (no sds_config); a combined context keeps its default half
        // untranslated-checks (SAN matchers without trusted_ca are fine until merged).
        let (ca, _) = pem_pair("ca");
        let combined = CombinedCertificateValidationContext {
            default_validation_context: Some(tls::CertificateValidationContext {
                match_typed_subject_alt_names: vec![san(T::Uri, MatchPattern::Prefix("spiffe://td/".into()))],
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(sds("ROOTCA", false)),
            ..Default::default()
        };
        let common = tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default", false)],
            validation_context_type: Some(V::CombinedValidationContext(combined)),
            ..Default::default()
        };
        let got = upstream(&socket(&client(common))).unwrap().unwrap();
        assert!(got.common.tls_certificate_sds.as_ref().unwrap().source.is_none());
        let v = got.common.validation_sds.as_ref().unwrap();
        let default = v.default.as_ref().unwrap();
        assert!(default.trusted_ca.is_empty());
        assert_eq!(default.match_subject_alt_names.len(), 1);
        // SAN matchers of the default make the client certificate mandatory downstream.
        let common = tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default", false)],
            validation_context_type: Some(V::CombinedValidationContext(CombinedCertificateValidationContext {
                default_validation_context: Some(tls::CertificateValidationContext {
                    trusted_ca: Some(inline(&ca)),
                    match_typed_subject_alt_names: vec![san(T::Uri, MatchPattern::Prefix("spiffe://td/".into()))],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA", false)),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(downstream(&socket(&server(common))).unwrap().unwrap().require_client_certificate);

        // One certificate per context.
        let common = tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("a", true), sds("b", true)],
            ..Default::default()
        };
        let err = down_err(&server(common));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (ErrorKind::Unsupported, "typed_config.common_tls_context.tls_certificate_sds_secret_configs")
        );
        let common = tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("a", true)],
            tls_certificates: vec![inline_certificate("localhost")],
            ..Default::default()
        };
        assert_eq!(down_err(&server(common)).kind, ErrorKind::Unsupported);
        // File-based SDS is refused clearly.
        let mut by_path = sds("a", true);
        by_path.sds_config = Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::PathConfigSource(
                core::PathConfigSource { path: "/tmp/x.yaml".into(), ..Default::default() },
            )),
            ..Default::default()
        });
        let common = tls::CommonTlsContext { tls_certificate_sds_secret_configs: vec![by_path], ..Default::default() };
        let err = down_err(&server(common));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (
                ErrorKind::Unsupported,
                "typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config.path_config_source"
            )
        );
    }

    #[test]
    fn secrets() {
        use tls::secret::Type;
        let got = secret(&tls::Secret {
            name: "default".into(),
            r#type: Some(Type::TlsCertificate(inline_certificate("localhost"))),
        })
        .unwrap();
        assert_eq!(got.name, "default");
        assert!(matches!(got.kind, model::SecretKind::TlsCertificate(ref c) if c.certificate_chain.len() == 1));

        let (ca, _) = pem_pair("ca");
        let v = tls::CertificateValidationContext { trusted_ca: Some(inline(&ca)), ..Default::default() };
        let got = secret(&tls::Secret { name: "ROOTCA".into(), r#type: Some(Type::ValidationContext(v)) }).unwrap();
        assert!(matches!(got.kind, model::SecretKind::ValidationContext(ref v) if v.trusted_ca.len() == 1));

        let bad = tls::TlsCertificate {
            certificate_chain: Some(inline("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")),
            private_key: inline_certificate("x").private_key,
            ..Default::default()
        };
        let err = secret(&tls::Secret { name: "x".into(), r#type: Some(Type::TlsCertificate(bad)) }).unwrap_err();
        assert_eq!(err.path, "tls_certificate.certificate_chain");

        let err =
            secret(&tls::Secret { name: "k".into(), r#type: Some(Type::GenericSecret(tls::GenericSecret::default())) })
                .unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "generic_secret"));
        let err = secret(&tls::Secret {
            name: "k".into(),
            r#type: Some(Type::SessionTicketKeys(tls::TlsSessionTicketKeys::default())),
        })
        .unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "session_ticket_keys"));
        assert_eq!(secret(&tls::Secret { name: "k".into(), r#type: None }).unwrap_err().kind, ErrorKind::Invalid);
    }

    #[test]
    fn combined_validation_merges_like_envoy() {
        use m::string_matcher::MatchPattern;
        let (ca1, _) = pem_pair("ca1");
        let (ca2, _) = pem_pair("ca2");
        let (_, d) = validation_parts(&tls::CertificateValidationContext {
            trusted_ca: Some(inline(&ca1)),
            match_typed_subject_alt_names: vec![san(T::Uri, MatchPattern::Exact("a".into()))],
            ..Default::default()
        })
        .unwrap();
        let (_, sds) = validation_parts(&tls::CertificateValidationContext {
            match_typed_subject_alt_names: vec![san(T::Dns, MatchPattern::Exact("b".into()))],
            ..Default::default()
        })
        .unwrap();
        // default.MergeFrom(sds): the default's CA stays when the secret has none; matchers
        // are appended.
        let m = model::CertificateValidation::merged(Some(&d), &sds);
        assert_eq!(m.trusted_ca, d.trusted_ca);
        let kinds: Vec<_> = m.match_subject_alt_names.iter().map(|s| s.san_type).collect();
        assert_eq!(kinds, [model::SanType::Uri, model::SanType::Dns]);
        // A secret's CA replaces the default's.
        let (_, sds2) = validation_parts(&tls::CertificateValidationContext {
            trusted_ca: Some(inline(&ca2)),
            ..Default::default()
        })
        .unwrap();
        let m = model::CertificateValidation::merged(Some(&d), &sds2);
        assert_eq!(m.trusted_ca, sds2.trusted_ca);
        assert_ne!(m.trusted_ca, d.trusted_ca);
    }

    #[test]
    fn client_certificates_need_trusted_ca() {
        let mut d = server(with_certificate(Default::default()));
        d.require_client_certificate = Some(pbuf::BoolValue { value: true });
        let err = down_err(&d);
        assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "typed_config.require_client_certificate"));

        let (ca, _) = pem_pair("ca");
        d.common_tls_context = Some(with_validation(
            with_certificate(Default::default()),
            tls::CertificateValidationContext { trusted_ca: Some(inline(&ca)), ..Default::default() },
        ));
        let got = downstream(&socket(&d)).unwrap().unwrap();
        assert!(got.require_client_certificate);
        let v = got.common.validation.as_ref().unwrap();
        assert_eq!(v.trusted_ca.len(), 1);
        assert!(v.match_subject_alt_names.is_empty());
    }

    #[test]
    fn san_matchers() {
        use m::string_matcher::MatchPattern;
        let (ca, _) = pem_pair("ca");
        let v = tls::CertificateValidationContext {
            trusted_ca: Some(inline(&ca)),
            match_typed_subject_alt_names: vec![
                san(T::Uri, MatchPattern::Exact("spiffe://cluster.local/ns/default/sa/foo".into())),
                san(T::Dns, MatchPattern::Prefix("api.".into())),
            ],
            ..Default::default()
        };
        // SAN matchers make the client certificate mandatory, as in Envoy.
        let got = downstream(&socket(&server(with_validation(with_certificate(Default::default()), v.clone()))))
            .unwrap()
            .unwrap();
        assert!(got.require_client_certificate);
        let sans = &got.common.validation.as_ref().unwrap().match_subject_alt_names;
        assert_eq!(sans.len(), 2);
        assert_eq!(sans[0].san_type, model::SanType::Uri);
        assert!(sans[0].matcher.matches("spiffe://cluster.local/ns/default/sa/foo"));
        assert!(!sans[0].matcher.matches("spiffe://cluster.local/ns/default/sa/bar"));
        assert_eq!(sans[1].san_type, model::SanType::Dns);
        assert!(sans[1].matcher.matches("api.example.com"));

        let got = upstream(&socket(&client(with_validation(Default::default(), v.clone())))).unwrap().unwrap();
        assert_eq!(got.common.validation.as_ref().unwrap().match_subject_alt_names.len(), 2);

        // Without trusted_ca.
        let mut no_ca = v.clone();
        no_ca.trusted_ca = None;
        let err = up_err(&client(with_validation(Default::default(), no_ca)));
        assert_eq!(
            err.to_string(),
            "typed_config.common_tls_context.validation_context.match_typed_subject_alt_names: SAN-based verification \
             of peer certificates without trusted CA is insecure and not allowed"
        );

        // Deprecated untyped matchers apply to every SAN type.
        let mut old = v.clone();
        old.match_typed_subject_alt_names.clear();
        old.match_subject_alt_names =
            vec![m::StringMatcher { ignore_case: false, match_pattern: Some(MatchPattern::Suffix(".local".into())) }];
        let got = upstream(&socket(&client(with_validation(Default::default(), old.clone())))).unwrap().unwrap();
        let types: Vec<_> =
            got.common.validation.as_ref().unwrap().match_subject_alt_names.iter().map(|s| s.san_type).collect();
        assert_eq!(types, [model::SanType::Dns, model::SanType::Uri, model::SanType::Email, model::SanType::IpAddress]);

        // Both at once: Envoy refuses.
        old.match_typed_subject_alt_names = v.match_typed_subject_alt_names.clone();
        let err = up_err(&client(with_validation(Default::default(), old)));
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(err.reason.contains("both match_typed_subject_alt_names and the deprecated"), "{err}");

        let mut bad = v.clone();
        bad.match_typed_subject_alt_names[1].san_type = T::Unspecified as i32;
        let err = up_err(&client(with_validation(Default::default(), bad)));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (
                ErrorKind::Invalid,
                "typed_config.common_tls_context.validation_context.match_typed_subject_alt_names[1].san_type"
            )
        );
        let mut other = v.clone();
        other.match_typed_subject_alt_names[0].san_type = T::OtherName as i32;
        other.match_typed_subject_alt_names[0].oid = "1.3.6.1.4.1.311.20.2.3".into();
        assert_eq!(up_err(&client(with_validation(Default::default(), other))).kind, ErrorKind::Unsupported);
        let mut regex = v;
        regex.match_typed_subject_alt_names[0].matcher = Some(m::StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::SafeRegex(m::RegexMatcher { regex: "(".into(), engine_type: None })),
        });
        let err = up_err(&client(with_validation(Default::default(), regex)));
        assert_eq!(
            err.path,
            "typed_config.common_tls_context.validation_context.match_typed_subject_alt_names[0].matcher.safe_regex.regex"
        );
    }

    #[test]
    fn validation_rejections() {
        let (ca, _) = pem_pair("ca");
        let base = tls::CertificateValidationContext { trusted_ca: Some(inline(&ca)), ..Default::default() };
        let mut untrusted = base.clone();
        untrusted.trust_chain_verification =
            tls::certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32;
        let err = up_err(&client(with_validation(Default::default(), untrusted)));
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.path.ends_with("validation_context.trust_chain_verification"), "{err}");

        let mut spki = base.clone();
        spki.verify_certificate_spki = vec!["NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=".into()];
        let err = up_err(&client(with_validation(Default::default(), spki)));
        assert_eq!(err.reason, "verify_certificate_spki is not supported by pinion");

        let mut empty_ca = base;
        empty_ca.trusted_ca = Some(inline(""));
        let err = up_err(&client(with_validation(Default::default(), empty_ca)));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (ErrorKind::Invalid, "typed_config.common_tls_context.validation_context.trusted_ca")
        );
    }

    #[test]
    fn tls_versions() {
        let params = |min: P, max: P| tls::TlsParameters {
            tls_minimum_protocol_version: min as i32,
            tls_maximum_protocol_version: max as i32,
            ..Default::default()
        };
        let versions = |c: &model::CommonTlsContext| (c.min_version, c.max_version);
        use model::TlsVersion::{Tls12, Tls13};

        let got = upstream(&socket(&client(Default::default()))).unwrap().unwrap();
        assert_eq!(versions(&got.common), (Tls12, Tls12));
        let got = downstream(&socket(&server(with_certificate(Default::default())))).unwrap().unwrap();
        assert_eq!(versions(&got.common), (Tls12, Tls13));

        let common = tls::CommonTlsContext { tls_params: Some(params(P::TlSv13, P::TlSv13)), ..Default::default() };
        assert_eq!(versions(&upstream(&socket(&client(common))).unwrap().unwrap().common), (Tls13, Tls13));

        // Upstream's default maximum is TLS 1.2, below a TLS 1.3 minimum.
        let common = tls::CommonTlsContext { tls_params: Some(params(P::TlSv13, P::TlsAuto)), ..Default::default() };
        let err = up_err(&client(common.clone()));
        assert_eq!(
            (err.kind, err.path.as_str()),
            (ErrorKind::Invalid, "typed_config.common_tls_context.tls_params.tls_minimum_protocol_version")
        );
        assert!(err.reason.contains("(TLSv1_2, the client default)"), "{err}");
        let got = downstream(&socket(&server(with_certificate(common)))).unwrap().unwrap();
        assert_eq!(versions(&got.common), (Tls13, Tls13));

        let common = tls::CommonTlsContext { tls_params: Some(params(P::TlSv13, P::TlSv12)), ..Default::default() };
        assert_eq!(down_err(&server(with_certificate(common))).kind, ErrorKind::Invalid);

        let common = tls::CommonTlsContext { tls_params: Some(params(P::TlSv11, P::TlsAuto)), ..Default::default() };
        let err = up_err(&client(common));
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.reason.contains("TLSv1_1 is not supported: pinion supports TLS 1.2 and 1.3"), "{err}");

        let mut p = params(P::TlsAuto, P::TlsAuto);
        p.cipher_suites = vec!["ECDHE-RSA-AES128-GCM-SHA256".into()];
        let err = up_err(&client(tls::CommonTlsContext { tls_params: Some(p), ..Default::default() }));
        assert_eq!(err.path, "typed_config.common_tls_context.tls_params.cipher_suites");
    }

    #[test]
    fn upstream_fields() {
        let mut u = client(with_certificate(Default::default()));
        u.sni = "backend.example.com".into();
        u.allow_renegotiation = true;
        u.max_session_keys = Some(pbuf::UInt32Value { value: 0 });
        let got = upstream(&socket(&u)).unwrap().unwrap();
        assert_eq!(got.sni, "backend.example.com");
        assert_eq!(got.common.tls_certificates.len(), 1);

        let mut two = u.clone();
        two.common_tls_context.as_mut().unwrap().tls_certificates.push(inline_certificate("b"));
        assert!(up_err(&two).reason.contains("Multiple TLS certificates are not supported for client contexts"));

        let mut nul = u.clone();
        nul.sni = "a\0b".into();
        assert_eq!(up_err(&nul).path, "typed_config.sni");

        let mut auto = u;
        auto.auto_host_sni = true;
        assert_eq!(
            up_err(&auto).to_string(),
            "typed_config.auto_host_sni: unsupported: auto_host_sni is not supported by pinion"
        );
    }

    #[test]
    fn alpn_entries_split_like_envoy() {
        let common = tls::CommonTlsContext { alpn_protocols: vec!["h2,http/1.1".into()], ..Default::default() };
        let got = upstream(&socket(&client(common))).unwrap().unwrap();
        assert_eq!(got.common.alpn_protocols, ["h2", "http/1.1"]);
        let common = tls::CommonTlsContext { alpn_protocols: vec!["h2".into(), String::new()], ..Default::default() };
        assert_eq!(up_err(&client(common)).path, "typed_config.common_tls_context.alpn_protocols[1]");
    }

    #[test]
    fn downstream_knobs() {
        use tls::downstream_tls_context::{OcspStaplePolicy, SessionTicketKeysType};
        let mut d = server(with_certificate(Default::default()));
        d.session_ticket_keys_type = Some(SessionTicketKeysType::DisableStatelessSessionResumption(true));
        d.disable_stateful_session_resumption = true;
        d.session_timeout = Some(pbuf::Duration { seconds: 300, nanos: 0 });
        d.prefer_client_ciphers = true;
        d.ocsp_staple_policy = OcspStaplePolicy::StrictStapling as i32;
        assert!(downstream(&socket(&d)).unwrap().is_some());

        d.ocsp_staple_policy = OcspStaplePolicy::MustStaple as i32;
        assert_eq!(down_err(&d).path, "typed_config.ocsp_staple_policy");

        let mut key_log = server(with_certificate(Default::default()));
        key_log.common_tls_context.as_mut().unwrap().key_log =
            Some(tls::TlsKeyLog { path: "/tmp/keys".into(), ..Default::default() });
        assert_eq!(down_err(&key_log).path, "typed_config.common_tls_context.key_log");
    }
}
