//! Scenario (e): two sidecars of the same kind with mTLS between them, as in a service mesh.
//!
//! The **outbound** sidecar (client side) takes plaintext HTTP/1.1 or h2c from the load
//! generator and forwards every request over mTLS HTTP/2 (cluster `mesh`) to the **inbound**
//! sidecar (server side), which terminates mTLS (client certificate required, SPIFFE id
//! checked) and forwards to the backend over plain HTTP/1.1 keep-alive (`backend_h1`). Both
//! present SPIFFE workload certificates of one mesh CA (ECDSA P-256, from `pinion-certs`),
//! read from files as a mesh's sidecars do. Pinion and Envoy get the same two bootstraps.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::client;
use crate::proxies::{self, Bootstrap, Installed, Running};

/// The mesh's trust domain and namespace.
const TRUST_DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "default";
/// SPIFFE ids of the two sidecars' workloads.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
/// The inbound sidecar's workload.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

/// How the outbound sidecar uses its connections to the inbound one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mesh {
    /// (e1) long-lived mTLS HTTP/2 connections, many streams each.
    Pooled,
    /// (e2) `max_requests_per_connection: 1`: a new mTLS connection, with a full handshake, per request.
    HandshakePerRequest,
    /// (e3) no pair: one proxy terminating TLS (server certificate only) for HTTP/1.1 load.
    Terminate,
}

/// The mesh certificates as files: generated once per harness run.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The mesh CA (`trusted_ca` of both sidecars).
    pub ca: PathBuf,
    /// The client workload's certificate and key (outbound sidecar).
    pub client: (PathBuf, PathBuf),
    /// The server workload's certificate and key (inbound sidecar).
    pub server: (PathBuf, PathBuf),
}

impl Certs {
    /// A new mesh CA and the two workloads' SPIFFE certificates (SANs: the SPIFFE id and
    /// `localhost`), written under `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Certs> {
        let ca = pinion_certs::Ca::new("pinion mesh CA")?;
        let issue = |sa: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
            let w = ca.issue_spiffe(TRUST_DOMAIN, NAMESPACE, sa, &["localhost"])?;
            Ok(w.write_to(&dir.join(sa))?)
        };
        Ok(Certs { client: issue("client")?, server: issue("server")?, ca: ca.write_to(dir)? })
    }
}

/// The `common_tls_context` of both sidecars (indented for a `typed_config`): one
/// certificate, the mesh CA, and the one SPIFFE id accepted from the peer.
/// `peer`: `None` = no validation context (the peer is not asked for a certificate).
fn common_tls_context((cert, key): &(PathBuf, PathBuf), ca: &Path, alpn: &str, peer: Option<&str>) -> String {
    let validation = match peer {
        Some(peer) => format!(
            r#"
          validation_context:
            trusted_ca: {{ filename: "{}" }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ exact: "{peer}" }}"#,
            ca.display()
        ),
        None => String::new(),
    };
    format!(
        r#"        common_tls_context:
          alpn_protocols: {alpn}
          tls_certificates:
          - certificate_chain: {{ filename: "{}" }}
            private_key: {{ filename: "{}" }}{validation}"#,
        cert.display(),
        key.display(),
    )
}

/// The admin block and a one-listener HCM (codec AUTO, router only, `/` → `cluster`), with the
/// listener's `transport_socket` lines (empty for plaintext) in its filter chain.
fn listener(name: &str, admin_port: u16, port: u16, transport_socket: &str, cluster: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - {transport_socket}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
"#
    )
}

/// The outbound sidecar: plaintext listener (HTTP/1.1 or h2c from the load generator) → cluster
/// `mesh`: mTLS HTTP/2 to the inbound sidecar with the client workload's certificate, accepting
/// only the server workload's SPIFFE id; no TLS session resumption (`max_session_keys: 0`),
/// and for (e2) one request per connection.
pub fn outbound_bootstrap(admin_port: u16, port: u16, inbound_port: u16, certs: &Certs, mesh: Mesh) -> String {
    let max_requests = match mesh {
        Mesh::Pooled | Mesh::Terminate => "",
        Mesh::HandshakePerRequest => "\n    max_requests_per_connection: 1",
    };
    format!(
        r#"# pinion-bench (e): the outbound (client-side) sidecar, the same for Pinion and Envoy.
{}  clusters:
  - name: mesh
    type: STATIC
    connect_timeout: 1s{max_requests}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        max_session_keys: 0
{}
    load_assignment:
      cluster_name: mesh
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {inbound_port} }}
"#,
        listener("outbound", admin_port, port, "", "mesh"),
        common_tls_context(&certs.client, &certs.ca, r#"["h2"]"#, Some(SERVER_ID)),
    )
}

/// The inbound sidecar: a TLS listener (the server workload's certificate, client certificate
/// required and checked for the client workload's SPIFFE id, ALPN h2 and http/1.1, no session
/// resumption), HCM codec AUTO → `backend_h1`: plain HTTP/1.1 keep-alive to the backend.
/// `mtls: false` (e3): the same listener without client certificates.
pub fn inbound_bootstrap(admin_port: u16, port: u16, backend_port: u16, certs: &Certs, mtls: bool) -> String {
    let require = if mtls { "\n          require_client_certificate: true" } else { "" };
    let transport_socket = format!(
        r#"transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext{require}
          disable_stateful_session_resumption: true
          disable_stateless_session_resumption: true
{}
      "#,
        // Two more spaces: the filter chain's transport_socket is one level deeper.
        common_tls_context(&certs.server, &certs.ca, r#"["h2", "http/1.1"]"#, mtls.then_some(CLIENT_ID))
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    format!(
        r#"# pinion-bench (e): the inbound (server-side) sidecar, the same for Pinion and Envoy.
{}  clusters:
  - name: backend_h1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend_h1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }}
"#,
        listener("inbound", admin_port, port, &transport_socket, "backend_h1"),
    )
}

/// A started pair of sidecars of one kind; both stopped and reaped on drop.
pub struct Pair {
    /// The client side: the load goes to its `h1_port` (= `h2_port`).
    pub outbound: Running,
    /// The server side.
    pub inbound: Running,
    /// The inbound listener's port (its `listener.127.0.0.1_<port>.` stats).
    pub inbound_port: u16,
}

/// Starts the inbound, then the outbound sidecar of kind `p`, each with `workers` workers
/// pinned to `cpus`, their bootstraps and logs in `dir`.
pub fn start_pair(
    p: &Installed,
    dir: &Path,
    backend_port: u16,
    certs: &Certs,
    mesh: Mesh,
    workers: u32,
    cpus: Option<&str>,
) -> anyhow::Result<Pair> {
    let timeout = Duration::from_secs(30);
    let (admin, port) = (proxies::free_port()?, proxies::free_port()?);
    let b = Bootstrap { yaml: inbound_bootstrap(admin, port, backend_port, certs, true), admin, port };
    let inbound = proxies::start_bootstrap(p, dir, "inbound", &b, workers, cpus, timeout)?;
    let (out_admin, out_port) = (proxies::free_port()?, proxies::free_port()?);
    let b = Bootstrap {
        yaml: outbound_bootstrap(out_admin, out_port, port, certs, mesh),
        admin: out_admin,
        port: out_port,
    };
    let outbound = proxies::start_bootstrap(p, dir, "outbound", &b, workers, cpus, timeout)?;
    Ok(Pair { outbound, inbound, inbound_port: port })
}

/// The inbound sidecar's TLS counters (admin `/stats`).
#[derive(Clone, Copy, Debug)]
pub struct SslCounters {
    /// `listener.127.0.0.1_<port>.ssl.handshake`: TLS handshakes completed.
    pub handshake: u64,
    /// `...ssl.session_reused`, when the proxy has that stat (Envoy does): resumed sessions.
    pub session_reused: Option<u64>,
}

impl Pair {
    /// The inbound listener's `ssl.*` counters. Envoy and Pinion both name its stats after the
    /// listener's address: `listener.127.0.0.1_<port>.ssl.handshake`.
    pub fn inbound_ssl(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<SslCounters> {
        let admin = self.inbound.admin_port.context("the inbound sidecar has no admin port")?;
        let text = client::get_text(rt, admin, "/stats?filter=ssl", Duration::from_secs(5))?;
        let prefix = format!("listener.127.0.0.1_{}.ssl.", self.inbound_port);
        let stat = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().strip_prefix(&prefix)? == name).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        let handshake = stat("handshake").with_context(|| {
            let head: String = text.chars().take(2000).collect();
            format!("no {prefix}handshake in the inbound sidecar's /stats:\n{head}")
        })?;
        Ok(SslCounters { handshake, session_reused: stat("session_reused") })
    }
}
