//! Scenario (e): two sidecars of the same kind with mTLS between them, as in a service mesh.
//!
//! The **outbound** sidecar (client side) takes plaintext HTTP/1.1 or h2c from the load
//! generator and forwards every request over mTLS HTTP/2 (cluster `mesh`) to the **inbound**
//! sidecar (server side), which terminates mTLS (client certificate required, SPIFFE id
//! checked) and forwards to the backend over plain HTTP/1.1 keep-alive (cluster `app`). Both
//! present SPIFFE workload certificates of one mesh CA (ECDSA P-256, from `pinion-certs`),
//! read from files as a mesh's sidecars do. Pinion and Envoy get the same two bootstraps: the
//! ones the tests and interop tests use (`pinion_testkit::mesh`), with session resumption off.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use pinion_testkit::mesh::{inbound_sidecar, outbound_sidecar, MeshPki};
use serde_json::{json, Value};

use crate::client;
use crate::proxies::{self, Bootstrap, Installed, Running, Variant};

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

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Edit the JSON bootstrap `b` with `f`.
fn edit(b: &str, f: impl FnOnce(&mut Value)) -> anyhow::Result<String> {
    let mut v: Value = serde_json::from_str(b).context("sidecar bootstrap")?;
    f(&mut v);
    Ok(v.to_string())
}

/// The outbound sidecar (`pinion_testkit::mesh::outbound_sidecar`: plaintext listener →
/// cluster `mesh`, mTLS HTTP/2 as `sa/client`, expecting `sa/server`), without TLS session
/// resumption (`max_session_keys: 0`), and for (e2) one request per connection.
pub fn outbound_bootstrap(
    pki: &MeshPki,
    admin_port: u16,
    port: u16,
    inbound_port: u16,
    mesh: Mesh,
) -> anyhow::Result<String> {
    let extra = match mesh {
        Mesh::Pooled | Mesh::Terminate => json!({}),
        Mesh::HandshakePerRequest => json!({ "max_requests_per_connection": 1 }),
    };
    let b = outbound_sidecar(pki, admin_port, port, local(inbound_port), "server", extra);
    edit(&b, |v| {
        v["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["max_session_keys"] = json!(0)
    })
}

/// The inbound sidecar (`pinion_testkit::mesh::inbound_sidecar`: mTLS listener as `sa/server`
/// admitting only `sa/client`, ALPN h2 and http/1.1 → plain HTTP/1.1 keep-alive to the
/// backend) without session resumption. `mtls: false` (e3): the same listener without client
/// certificates.
pub fn inbound_bootstrap(
    pki: &MeshPki,
    admin_port: u16,
    port: u16,
    backend_port: u16,
    mtls: bool,
) -> anyhow::Result<String> {
    let b = inbound_sidecar(pki, admin_port, port, local(backend_port));
    edit(&b, |v| {
        let ctx = &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"];
        ctx["disable_stateful_session_resumption"] = json!(true);
        ctx["disable_stateless_session_resumption"] = json!(true);
        if !mtls {
            if let Some(o) = ctx.as_object_mut() {
                o.remove("require_client_certificate");
            }
            if let Some(o) = ctx["common_tls_context"].as_object_mut() {
                o.remove("validation_context");
            }
        }
    })
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
/// pinned to `cpus`, their bootstraps (both as `variant`) and logs in `dir`.
#[allow(clippy::too_many_arguments)]
pub fn start_pair(
    p: &Installed,
    dir: &Path,
    backend_port: u16,
    pki: &MeshPki,
    mesh: Mesh,
    workers: u32,
    cpus: Option<&str>,
    variant: Variant,
) -> anyhow::Result<Pair> {
    let timeout = Duration::from_secs(30);
    let (admin, port) = (proxies::free_port()?, proxies::free_port()?);
    let b = Bootstrap { yaml: variant.apply(inbound_bootstrap(pki, admin, port, backend_port, true)?)?, admin, port };
    let inbound = proxies::start_bootstrap(p, dir, "inbound", &b, workers, cpus, timeout)?;
    let (out_admin, out_port) = (proxies::free_port()?, proxies::free_port()?);
    let b = Bootstrap {
        yaml: variant.apply(outbound_bootstrap(pki, out_admin, out_port, port, mesh)?)?,
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
