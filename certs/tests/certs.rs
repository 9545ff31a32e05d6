//! Parse what pinion-certs produces back with x509-parser and rustls-pki-types.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use pinion_certs::{Ca, Error, San};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER};
use x509_parser::pem::Pem;
use x509_parser::prelude::*;

const SPIFFE_FOO: &str = "spiffe://cluster.local/ns/default/sa/foo";

/// The single PEM block of `pem`.
fn one_pem(pem: &str) -> Pem {
    let mut blocks = Pem::iter_from_buffer(pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(blocks.len(), 1, "want exactly one PEM block");
    let block = blocks.pop().unwrap();
    assert_eq!(block.label, "CERTIFICATE");
    block
}

fn sans<'a>(cert: &'a X509Certificate<'a>) -> Vec<GeneralName<'a>> {
    cert.subject_alternative_name().unwrap().expect("SAN extension").value.general_names.clone()
}

#[test]
fn ca_is_a_self_signed_ca() {
    let ca = Ca::new("pinion mesh CA").unwrap();
    let pem = one_pem(&ca.cert_pem());
    let cert = pem.parse_x509().unwrap();
    assert_eq!(cert.subject().to_string(), "CN=pinion mesh CA");
    assert_eq!(cert.issuer(), cert.subject());
    cert.verify_signature(None).unwrap();
    let bc = cert.basic_constraints().unwrap().expect("basic constraints");
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().expect("key usage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let now = ASN1Time::now().timestamp();
    let validity = cert.validity();
    assert!(validity.is_valid());
    assert!(validity.not_before.timestamp() < now - 23 * 3600);
    assert!(validity.not_after.timestamp() > now + 9 * 365 * 86400);
    assert_eq!(cert.public_key().algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
}

#[test]
fn spiffe_workload_is_an_mtls_leaf_signed_by_the_ca() {
    let ca = Ca::new("pinion mesh CA").unwrap();
    let ca_pem = one_pem(&ca.cert_pem());
    let ca_cert = ca_pem.parse_x509().unwrap();

    let workload = ca
        .issue_spiffe("cluster.local", "default", "foo", &["foo.default.svc", "foo.default.svc.cluster.local"])
        .unwrap();
    let pem = one_pem(&workload.cert_pem);
    let leaf = pem.parse_x509().unwrap();

    assert_eq!(leaf.issuer(), ca_cert.subject());
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    // Not self-signed: its own key does not verify it.
    assert!(leaf.verify_signature(None).is_err());

    let names = sans(&leaf);
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [SPIFFE_FOO]);
    let dns: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(dns, ["foo.default.svc", "foo.default.svc.cluster.local"]);
    // Empty subject, so the SAN extension must be critical.
    assert!(leaf.subject().iter().next().is_none());
    assert!(leaf.subject_alternative_name().unwrap().unwrap().critical);

    let eku = leaf.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().expect("key usage").value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    let bc = leaf.basic_constraints().unwrap().expect("basic constraints");
    assert!(!bc.value.ca);
    assert!(!leaf.is_ca());
    assert!(has_aki(&leaf));

    let now = ASN1Time::now().timestamp();
    assert!(leaf.validity().is_valid());
    assert!(leaf.validity().not_before.timestamp() < now - 23 * 3600);
    let year = leaf.validity().not_after.timestamp() - now;
    assert!((364 * 86400..=366 * 86400).contains(&year), "{year}");
}

fn has_aki(cert: &X509Certificate<'_>) -> bool {
    cert.extensions().iter().any(|e| e.oid == OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
}

#[test]
fn ip_and_plain_sans() {
    let ca = Ca::new("pinion mesh CA").unwrap();
    let workload = ca
        .issue(&[
            San::Dns("localhost".into()),
            San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            San::Uri("spiffe://example.org/bench".into()),
        ])
        .unwrap();
    let pem = one_pem(&workload.cert_pem);
    let leaf = pem.parse_x509().unwrap();
    let names = sans(&leaf);
    assert!(names.contains(&GeneralName::DNSName("localhost")));
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    assert!(names.contains(&GeneralName::URI("spiffe://example.org/bench")));
}

#[test]
fn expired_and_foreign_certificates_for_negative_tests() {
    let ca = Ca::new("pinion mesh CA").unwrap();
    let ca_pem = one_pem(&ca.cert_pem());
    let ca_cert = ca_pem.parse_x509().unwrap();

    let expired = ca.issue_expired(&[San::Uri(SPIFFE_FOO.into())]).unwrap();
    let pem = one_pem(&expired.cert_pem);
    let leaf = pem.parse_x509().unwrap();
    assert!(leaf.validity().not_after.timestamp() < ASN1Time::now().timestamp());
    assert!(!leaf.validity().is_valid());
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();

    let other = Ca::new("some other CA").unwrap();
    let foreign = other.issue_spiffe("cluster.local", "default", "foo", &[]).unwrap();
    let pem = one_pem(&foreign.cert_pem);
    let leaf = pem.parse_x509().unwrap();
    assert_ne!(leaf.issuer(), ca_cert.subject());
    assert!(leaf.verify_signature(Some(ca_cert.public_key())).is_err());
}

#[test]
fn invalid_requests_are_refused() {
    let ca = Ca::new("pinion mesh CA").unwrap();
    assert!(matches!(ca.issue(&[]), Err(Error::NoSubjectAltNames)));
    assert!(matches!(ca.issue_spiffe("cluster.local", "default", "../etc", &[]), Err(Error::InvalidSpiffeId(_))));
    assert!(matches!(ca.issue(&[San::Dns("bücher.example".into())]), Err(Error::Rcgen(_))));
}

#[test]
fn rustls_can_load_the_pem() {
    let ca = Ca::new("pinion mesh CA").unwrap();
    let workload = ca.issue_spiffe("cluster.local", "default", "foo", &["foo"]).unwrap();
    let certs = CertificateDer::pem_slice_iter(workload.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(certs.len(), 1);
    let key = PrivateKeyDer::from_pem_slice(workload.key_pem.as_bytes()).unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    let roots = CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(roots.len(), 1);
}

#[test]
fn write_to_writes_pem_files_with_a_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("pinion mesh CA").unwrap();
    let ca_path = ca.write_to(tmp.path()).unwrap();
    assert_eq!(ca_path, tmp.path().join("ca.pem"));
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca.cert_pem());

    let workload = ca.issue_spiffe("cluster.local", "default", "foo", &[]).unwrap();
    let dir = tmp.path().join("default-foo");
    // A pre-existing, world-readable key file is tightened too.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.pem"), "old, longer contents than nothing").unwrap();
    let (cert, key) = workload.write_to(&dir).unwrap();
    assert_eq!((cert.clone(), key.clone()), (dir.join("cert.pem"), dir.join("key.pem")));
    assert_eq!(std::fs::read_to_string(cert).unwrap(), workload.cert_pem);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), workload.key_pem);
    assert_mode_0600(&key);
}

#[cfg(unix)]
fn assert_mode_0600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[cfg(not(unix))]
fn assert_mode_0600(_: &Path) {}

#[test]
fn cli_writes_a_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mesh");
    let status = Command::new(env!("CARGO_BIN_EXE_pinion-certs"))
        .args(["mesh", "--out"])
        .arg(&out)
        .args(["--trust-domain", "cluster.local"])
        .args(["--workload", "default/foo,foo.default.svc,localhost"])
        .args(["--workload", "prod/bar"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");

    let ca_pem = std::fs::read_to_string(out.join("ca.pem")).unwrap();
    let ca_block = one_pem(&ca_pem);
    let ca_cert = ca_block.parse_x509().unwrap();
    for (dir, uri, dns) in [
        ("default-foo", SPIFFE_FOO, &["foo.default.svc", "localhost"][..]),
        ("prod-bar", "spiffe://cluster.local/ns/prod/sa/bar", &[][..]),
    ] {
        let cert_pem = std::fs::read_to_string(out.join(dir).join("cert.pem")).unwrap();
        let block = one_pem(&cert_pem);
        let leaf = block.parse_x509().unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        let names = sans(&leaf);
        assert_eq!(names[0], GeneralName::URI(uri));
        for d in dns {
            assert!(names.contains(&GeneralName::DNSName(d)), "{dir}: {d}");
        }
        let key = std::fs::read(out.join(dir).join("key.pem")).unwrap();
        PrivateKeyDer::from_pem_slice(&key).unwrap();
        assert_mode_0600(&out.join(dir).join("key.pem"));
    }

    // Bad input: no output directory is created.
    let bad = tmp.path().join("bad");
    let status = Command::new(env!("CARGO_BIN_EXE_pinion-certs"))
        .args(["mesh", "--out"])
        .arg(&bad)
        .args(["--workload", "default/../../x"])
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("invalid SPIFFE ID"));
    assert!(!bad.exists());
}
