//! A mesh for tests: a CA with SPIFFE workload certificates written to files (plus ones that
//! must be refused), the TLS `transport_socket` JSON of Envoy's bootstrap, and the bootstraps
//! of an outbound/inbound sidecar pair talking mTLS HTTP/2. Pinion and Envoy take the same.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use pinion_certs::{Ca, San, Workload};
use serde_json::{json, Value};

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/default/sa/<sa>`.
pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

/// A workload certificate and key, as files and as PEM.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `cert.pem`.
    pub cert: PathBuf,
    /// `key.pem`.
    pub key: PathBuf,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A mesh CA and its workloads, in a temporary directory that lives as long as this.
pub struct MeshPki {
    _dir: tempfile::TempDir,
    /// `ca.pem`.
    pub ca: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// `sa/server`, with DNS SAN `localhost`.
    pub server: Identity,
    /// `sa/client`.
    pub client: Identity,
    /// Right CA, wrong identity (`sa/other`).
    pub other_sa: Identity,
    /// `sa/client` and `localhost`, but signed by another CA.
    pub foreign: Identity,
    /// `sa/server` with DNS SAN `localhost`, right CA, but expired.
    pub expired_server: Identity,
}

fn write(dir: &Path, name: &str, w: &Workload) -> Identity {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("workload dir");
    let (cert, key) = w.write_to(&d).expect("write workload");
    Identity { cert, key, cert_pem: w.cert_pem.clone(), key_pem: w.key_pem.clone() }
}

impl MeshPki {
    /// A fresh CA and workloads.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("pinion test mesh CA").expect("CA");
        let other_ca = Ca::new("some other CA").expect("other CA");
        let issue = |sa: &str, dns: &[&str]| ca.issue_spiffe(TRUST_DOMAIN, "default", sa, dns).expect("issue");
        let server = write(dir.path(), "server", &issue("server", &["localhost"]));
        let client = write(dir.path(), "client", &issue("client", &[]));
        let other_sa = write(dir.path(), "other", &issue("other", &[]));
        let foreign = other_ca.issue(&[San::Uri(spiffe("client")), San::Dns("localhost".into())]).expect("issue");
        let foreign = write(dir.path(), "foreign", &foreign);
        let expired = ca.issue_expired(&[San::Uri(spiffe("server")), San::Dns("localhost".into())]).expect("issue");
        let expired_server = write(dir.path(), "expired", &expired);
        MeshPki {
            ca: ca.write_to(dir.path()).expect("write CA"),
            ca_pem: ca.cert_pem(),
            _dir: dir,
            server,
            client,
            other_sa,
            foreign,
            expired_server,
        }
    }
}

impl Default for MeshPki {
    fn default() -> Self {
        Self::new()
    }
}

fn file(p: &Path) -> Value {
    json!({ "filename": p.display().to_string() })
}

/// A `CommonTlsContext`: certificate `cert`, peers verified against `ca` and, if given, the
/// URI SAN `san`; `alpn_protocols` if not empty.
pub fn common_tls(cert: Option<&Identity>, ca: Option<&Path>, san: Option<&str>, alpn: &[&str]) -> Value {
    let mut c = json!({});
    if let Some(id) = cert {
        c["tls_certificates"] = json!([{ "certificate_chain": file(&id.cert), "private_key": file(&id.key) }]);
    }
    if let Some(ca) = ca {
        let mut v = json!({ "trusted_ca": file(ca) });
        if let Some(san) = san {
            v["match_typed_subject_alt_names"] = json!([{ "san_type": "URI", "matcher": { "exact": san } }]);
        }
        c["validation_context"] = v;
    }
    if !alpn.is_empty() {
        c["alpn_protocols"] = json!(alpn);
    }
    c
}

/// A `transport_socket` with a `DownstreamTlsContext`.
pub fn downstream_tls(common: Value, require_client_certificate: bool) -> Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
        "require_client_certificate": require_client_certificate,
    }})
}

/// A `transport_socket` with an `UpstreamTlsContext` (`sni` empty: none sent).
pub fn upstream_tls(common: Value, sni: &str) -> Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
        "sni": sni,
    }})
}

fn socket(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

fn hcm(stat_prefix: &str, cluster: &str) -> Value {
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": { "name": "routes", "virtual_hosts": [{ "name": "all", "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] },
        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
    }})
}

fn bootstrap(admin: u16, listener: Value, cluster: Value) -> String {
    let b = json!({
        "admin": { "address": socket(SocketAddr::from(([127, 0, 0, 1], admin))) },
        "static_resources": { "listeners": [listener], "clusters": [cluster] },
    });
    serde_json::to_string_pretty(&b).expect("bootstrap json")
}

/// The outbound sidecar: a plaintext listener on 127.0.0.1:`port` (stat prefix `outbound`)
/// routing everything to cluster `mesh`: the inbound sidecar at `peer`, over HTTP/2 with mTLS
/// as `sa/client`, expecting the peer to be `spiffe(peer_sa)`. `cluster_extra` is merged into
/// the cluster (e.g. `max_requests_per_connection`).
pub fn outbound_sidecar(
    pki: &MeshPki,
    admin: u16,
    port: u16,
    peer: SocketAddr,
    peer_sa: &str,
    cluster_extra: Value,
) -> String {
    let listener = json!({
        "name": "outbound",
        "address": socket(SocketAddr::from(([127, 0, 0, 1], port))),
        "filter_chains": [{ "filters": [hcm("outbound", "mesh")] }],
    });
    let mut cluster = json!({
        "name": "mesh",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": "mesh", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(peer) } }] }] },
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        }},
        "transport_socket": upstream_tls(common_tls(Some(&pki.client), Some(&pki.ca), Some(&spiffe(peer_sa)), &[]), ""),
    });
    if let (Some(c), Value::Object(extra)) = (cluster.as_object_mut(), cluster_extra) {
        c.extend(extra);
    }
    bootstrap(admin, listener, cluster)
}

/// The inbound sidecar: an mTLS listener on 127.0.0.1:`port` (stat prefix `inbound`) as
/// `sa/server`, admitting only `sa/client`, ALPN `h2` and `http/1.1`, routing everything to
/// cluster `app`: the plaintext HTTP/1.1 `app` address.
pub fn inbound_sidecar(pki: &MeshPki, admin: u16, port: u16, app: SocketAddr) -> String {
    let common = common_tls(Some(&pki.server), Some(&pki.ca), Some(&spiffe("client")), &["h2", "http/1.1"]);
    let listener = json!({
        "name": "inbound",
        "address": socket(SocketAddr::from(([127, 0, 0, 1], port))),
        "filter_chains": [{ "filters": [hcm("inbound", "app")], "transport_socket": downstream_tls(common, true) }],
    });
    let cluster = json!({
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": "app", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(app) } }] }] },
    });
    bootstrap(admin, listener, cluster)
}

/// A TLS backend on 127.0.0.1 presenting `identity` and requiring a client certificate from
/// `pki`'s CA; it answers every request with JSON `{"alpn": <negotiated>, "version": <HTTP version>}`.
pub fn spawn_tls_backend(pki: &MeshPki, identity: &Identity) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes()).map(|c| c.expect("cert PEM")).collect();
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else { return };
                    let alpn = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = json!({ "alpn": alpn, "version": format!("{:?}", req.version()) }).to_string();
                        async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    addr
}
