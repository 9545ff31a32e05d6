//! SDS for tests: secrets as the control plane serves them, Istio-style TLS contexts that
//! take certificate `default` and validation context `ROOTCA` from SDS, and the bootstraps of
//! an mTLS sidecar pair whose certificates all come from the control plane (Pinion and Envoy
//! take the same).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use serde_json::{json, Value};

use crate::mesh::spiffe;

fn inline(s: &str) -> core::DataSource {
    core::DataSource { specifier: Some(core::data_source::Specifier::InlineString(s.into())), watched_directory: None }
}

/// A `tls_certificate` secret.
pub fn cert_secret(name: &str, cert_pem: &str, key_pem: &str) -> tls::Secret {
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: Some(inline(cert_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        })),
    }
}

/// A `validation_context` secret trusting `ca_pem` (no SAN matchers: the contexts' defaults
/// have them).
pub fn ca_secret(name: &str, ca_pem: &str) -> tls::Secret {
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
            trusted_ca: Some(inline(ca_pem)),
            ..Default::default()
        })),
    }
}

/// An `sds_config`: ADS, or a stream of its own (`api_type`) through cluster `xds`.
pub fn sds_config(ads: bool, api_type: &str) -> Value {
    if ads {
        json!({ "ads": {}, "resource_api_version": "V3" })
    } else {
        json!({ "api_config_source": { "api_type": api_type, "transport_api_version": "V3",
            "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }] }, "resource_api_version": "V3" })
    }
}

/// Istio's `CommonTlsContext`: certificate `default` and validation `ROOTCA` from `source`,
/// combined with a default validation context matching the URI SAN `peer_san`.
pub fn sds_common(source: &Value, peer_san: &str, alpn: &[&str]) -> Value {
    let mut c = json!({
        "tls_certificate_sds_secret_configs": [{ "name": "default", "sds_config": source }],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": peer_san } }]
            },
            "validation_context_sds_secret_config": { "name": "ROOTCA", "sds_config": source },
        },
    });
    if !alpn.is_empty() {
        c["alpn_protocols"] = json!(alpn);
    }
    c
}

/// A listener or cluster address.
pub fn socket(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// An HTTP connection manager with an inline route table of `routes`.
pub fn hcm(stat_prefix: &str, routes: Value) -> Value {
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": { "name": "routes", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] },
        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
    }})
}

/// Routes sending everything to `cluster`.
pub fn route_all(cluster: &str) -> Value {
    json!([{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }])
}

/// A `STATIC` cluster with one endpoint, HTTP/2 upstream if `h2`.
pub fn cluster(name: &str, addr: SocketAddr, h2: bool, transport_socket: Option<Value>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(addr) } }] }] },
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} } } });
    }
    if let Some(t) = transport_socket {
        c["transport_socket"] = t;
    }
    c
}

/// A `transport_socket` with a `DownstreamTlsContext` requiring client certificates.
pub fn downstream_tls(common: Value) -> Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common, "require_client_certificate": true }})
}

/// A `transport_socket` with an `UpstreamTlsContext`.
pub fn upstream_tls(common: Value) -> Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common }})
}

/// `dynamic_resources` with only `ads_config` (to cluster `xds`).
pub fn ads_only(api_type: &str) -> Value {
    json!({ "ads_config": { "api_type": api_type, "transport_api_version": "V3",
        "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }] } })
}

/// A bootstrap: `node`, admin on `admin`, `dynamic` resources, the static `listeners` and
/// `clusters`, plus cluster `xds` (HTTP/2) to the control plane at `xds`.
pub fn bootstrap(
    node: &str,
    admin: u16,
    xds: SocketAddr,
    dynamic: Value,
    listeners: Value,
    clusters: Vec<Value>,
) -> String {
    let mut all = clusters;
    all.push(cluster("xds", xds, true, None));
    serde_json::to_string_pretty(&json!({
        "node": { "id": node, "cluster": "test" },
        "admin": { "address": socket(SocketAddr::from(([127, 0, 0, 1], admin))) },
        "dynamic_resources": dynamic,
        "static_resources": { "listeners": listeners, "clusters": all },
    }))
    .expect("bootstrap json")
}

/// The outbound sidecar of an SDS mesh (node `node`): a plaintext listener on `port` (stat
/// prefix `outbound`) routing `/h2/*` to cluster `mesh-h2` and the rest to `mesh-h1`; those
/// clusters come over CDS ([`sds_outbound_clusters`]), secrets over ADS (SotW) from the
/// control plane at `xds`. (Envoy 1.40 crashes at startup when a static cluster takes its
/// secrets over ADS, envoyproxy/envoy#15517: the clusters are dynamic, as in Istio.)
pub fn sds_outbound_sidecar(node: &str, admin: u16, port: u16, xds: SocketAddr) -> String {
    let routes = json!([
        { "match": { "prefix": "/h2/" }, "route": { "cluster": "mesh-h2" } },
        { "match": { "prefix": "/" }, "route": { "cluster": "mesh-h1" } },
    ]);
    let mut filter = hcm("outbound", routes);
    // The clusters come later, over CDS.
    filter["typed_config"]["route_config"]["validate_clusters"] = json!(false);
    let listener = json!({ "name": "outbound", "address": socket(SocketAddr::from(([127, 0, 0, 1], port))),
        "filter_chains": [{ "filters": [filter] }] });
    let mut dynamic = ads_only("GRPC");
    dynamic["cds_config"] = json!({ "ads": {}, "resource_api_version": "V3" });
    bootstrap(node, admin, xds, dynamic, json!([listener]), Vec::new())
}

/// The outbound sidecar's clusters (JSON `Cluster`s for CDS): `mesh-h2` (HTTP/2) and
/// `mesh-h1` (HTTP/1.1), both mTLS to `peer` as whatever certificate `default` holds,
/// expecting `sa/server`, secrets over ADS.
pub fn sds_outbound_clusters(peer: SocketAddr) -> Vec<Value> {
    let tls = upstream_tls(sds_common(&sds_config(true, "GRPC"), &spiffe("server"), &[]));
    vec![cluster("mesh-h2", peer, true, Some(tls.clone())), cluster("mesh-h1", peer, false, Some(tls))]
}

/// The inbound sidecar of an SDS mesh (node `node`): an mTLS listener on `port` (stat prefix
/// `inbound`, ALPN `h2` and `http/1.1`) as certificate `default`, admitting only `sa/client`,
/// routing to the plaintext `app`; secrets over ADS (SotW) from the control plane at `xds`.
pub fn sds_inbound_sidecar(node: &str, admin: u16, port: u16, xds: SocketAddr, app: SocketAddr) -> String {
    let source = sds_config(true, "GRPC");
    let listener = json!({ "name": "inbound", "address": socket(SocketAddr::from(([127, 0, 0, 1], port))),
        "filter_chains": [{ "filters": [hcm("inbound", route_all("app"))],
            "transport_socket": downstream_tls(sds_common(&source, &spiffe("client"), &["h2", "http/1.1"])) }] });
    bootstrap(node, admin, xds, ads_only("GRPC"), json!([listener]), vec![cluster("app", app, false, None)])
}

/// The leaf certificate (DER) a TLS server at `addr` presents to a client trusting `ca_pem`
/// and presenting `cert_pem`/`key_pem` (a new handshake each call).
pub async fn peer_leaf(addr: SocketAddr, ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?)?;
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("no peer certificate"))?;
    Ok(leaf.as_ref().to_vec())
}

/// The DER of the first certificate of `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM").as_ref().to_vec()
}
