//! Mesh PKI tooling for tests, benchmarks and the demo: a root CA and SPIFFE workload certificates, as PEM.
//!
//! All keys are ECDSA P-256. Workload certificates are leaves usable for both TLS server and
//! client auth (mTLS between sidecars); their PEM holds the leaf only, the CA is separate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// Errors from building or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen failed: key generation, signing, or a name that is not ASCII (IA5String).
    #[error(transparent)]
    Rcgen(#[from] rcgen::Error),
    /// A workload certificate needs at least one subject alternative name (its subject is empty).
    #[error("a workload certificate needs at least one subject alternative name")]
    NoSubjectAltNames,
    /// A SPIFFE ID component is empty or has characters the SPIFFE ID spec does not allow.
    #[error("invalid SPIFFE ID: {0}")]
    InvalidSpiffeId(String),
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// A DNS name, e.g. `foo.default.svc.cluster.local`.
    Dns(String),
    /// A URI, e.g. a SPIFFE ID `spiffe://cluster.local/ns/default/sa/foo`.
    Uri(String),
    /// An IP address.
    Ip(IpAddr),
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, Error> {
        Ok(match self {
            San::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            San::Uri(uri) => SanType::URI(uri.as_str().try_into()?),
            San::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

/// A certificate authority (self-signed root) that issues workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rcgen's Issuer elides its key in Debug output.
        f.debug_struct("Ca").field("issuer", &self.issuer).finish()
    }
}

impl Ca {
    /// A new root CA with the given common name (e.g. "pinion mesh CA"), ECDSA P-256, valid from 1 day ago for 10 years.
    pub fn new(common_name: &str) -> Result<Ca, Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        // Path length 0: this CA signs leaves only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(10 * 365 + 2);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issue a workload certificate (leaf, ECDSA P-256, server + client auth) with the given SANs, valid from 1 day ago for 1 year.
    pub fn issue(&self, sans: &[San]) -> Result<Workload, Error> {
        let now = OffsetDateTime::now_utc();
        self.sign_leaf(sans, now - Duration::days(1), now + Duration::days(365))
    }

    /// Issue a workload certificate like [`Ca::issue`] but already expired (valid 30 days ago to 1 day ago), for negative tests.
    pub fn issue_expired(&self, sans: &[San]) -> Result<Workload, Error> {
        let now = OffsetDateTime::now_utc();
        self.sign_leaf(sans, now - Duration::days(30), now - Duration::days(1))
    }

    /// Shorthand: a SPIFFE workload `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>` (URI SAN) plus the given DNS names.
    pub fn issue_spiffe(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        dns: &[&str],
    ) -> Result<Workload, Error> {
        let id = spiffe_id(trust_domain, namespace, service_account)?;
        let mut sans = vec![San::Uri(id)];
        sans.extend(dns.iter().map(|name| San::Dns(name.to_string())));
        self.issue(&sans)
    }

    /// Write `ca.pem` into `dir` (created if missing); returns its path.
    pub fn write_to(&self, dir: &Path) -> io::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let path = dir.join("ca.pem");
        fs::write(&path, &self.cert_pem)?;
        Ok(path)
    }

    fn sign_leaf(
        &self,
        sans: &[San],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Workload, Error> {
        if sans.is_empty() {
            return Err(Error::NoSubjectAltNames);
        }
        let mut params = CertificateParams::default();
        // Empty subject, as for SPIFFE X.509-SVIDs: the identity is in the SANs, which rcgen
        // then marks critical (RFC 5280 4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Workload { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`, checking each component against the SPIFFE ID spec's charset.
fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> Result<String, Error> {
    let td_ok = !trust_domain.is_empty()
        && trust_domain.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'));
    if !td_ok {
        return Err(Error::InvalidSpiffeId(format!(
            "trust domain {trust_domain:?} (want lowercase letters, digits, '.', '-', '_')"
        )));
    }
    for (what, segment) in [("namespace", namespace), ("service account", service_account)] {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            return Err(Error::InvalidSpiffeId(format!("{what} {segment:?} (want letters, digits, '.', '-', '_')")));
        }
    }
    Ok(format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
}

/// An issued certificate and its key.
#[derive(Clone)]
pub struct Workload {
    /// The leaf certificate, PEM (leaf only: the CA is separate).
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload").field("cert_pem", &self.cert_pem).field("key_pem", &"[elided]").finish()
    }
}

impl Workload {
    /// Write `cert.pem` and `key.pem` (mode 0600 on Unix) into `dir` (created if missing); returns their paths.
    pub fn write_to(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir)?;
        let cert = dir.join("cert.pem");
        fs::write(&cert, &self.cert_pem)?;
        let key = dir.join("key.pem");
        write_private(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// Write `data` to `path` readable by the owner only, also when the file already existed.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // `mode` only applies when creating; tighten a pre-existing file before writing the key.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_validation() {
        assert_eq!(spiffe_id("cluster.local", "default", "foo").unwrap(), "spiffe://cluster.local/ns/default/sa/foo");
        for (td, ns, sa) in [
            ("", "default", "foo"),
            ("Cluster.local", "default", "foo"),
            ("cluster.local", "", "foo"),
            ("cluster.local", "default", "a/b"),
            ("cluster.local", "..", "foo"),
            ("cluster.local", "default", "f o o"),
        ] {
            assert!(matches!(spiffe_id(td, ns, sa), Err(Error::InvalidSpiffeId(_))), "{td:?} {ns:?} {sa:?}");
        }
    }
}
