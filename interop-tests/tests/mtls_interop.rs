//! mTLS between sidecars of different makes: an Envoy outbound sidecar talks mTLS HTTP/2 to a
//! Pinion inbound sidecar, and a Pinion outbound sidecar to an Envoy inbound one, with the
//! same bootstraps (`pinion_testkit::mesh`). Each pair serves requests, and refuses a peer
//! whose SPIFFE identity is not the expected one. Same-make pairs run too, as the control.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pinion_testkit::mesh::{inbound_sidecar, outbound_sidecar, MeshPki};
use pinion_testkit::{free_port, http_get_blocking, spawn_http_backend, BackendKind, ProxyKind, ProxyProcess};
use serde_json::json;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(kind: ProxyKind, bootstrap: &str, admin: u16) -> ProxyProcess {
    let mut p = ProxyProcess::spawn(kind, bootstrap, &["--concurrency", "1"]);
    if let Err(e) = p.wait_ready(admin, Duration::from_secs(30)) {
        panic!("{kind:?} did not start: {e:#}\n{}", p.logs());
    }
    p
}

/// Requests through `outbound` (a `kind_out` sidecar) reach the app behind a `kind_in`
/// inbound sidecar over mTLS, on one HTTP/2 connection; an outbound sidecar expecting another
/// identity gets 503 and counts `ssl.fail_verify_san`.
fn pair(kind_out: ProxyKind, kind_in: ProxyKind) {
    let what = format!("{kind_out:?} -> {kind_in:?}");
    let pki = MeshPki::new();
    let app = spawn_http_backend(BackendKind::Http1);
    let (in_admin, in_port) = (free_port(), free_port());
    let inbound = start(kind_in, &inbound_sidecar(&pki, in_admin, in_port, app.addr), in_admin);
    let (out_admin, out_port) = (free_port(), free_port());
    let outbound =
        start(kind_out, &outbound_sidecar(&pki, out_admin, out_port, local(in_port), "server", json!({})), out_admin);

    for i in 0..3 {
        let (status, body) = http_get_blocking(local(out_port), &format!("/r{i}"), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, 200, "{what}: {body}\n{}\n{}", outbound.logs(), inbound.logs());
        assert!(body.contains(&format!("\"path\":\"/r{i}\"")), "{what}: {body}");
    }
    assert_eq!(app.hit_count(), 3, "{what}");
    assert_eq!(outbound.stat("cluster.mesh.ssl.handshake"), Some(1), "{what}");
    assert_eq!(outbound.stat("cluster.mesh.upstream_cx_http2_total"), Some(1), "{what}");
    assert_eq!(inbound.stat(&format!("listener.127.0.0.1_{in_port}.ssl.handshake")), Some(1), "{what}");
    assert_eq!(inbound.stat("http.inbound.downstream_rq_http2_total"), Some(3), "{what}");

    // An outbound sidecar that expects a different identity refuses this inbound sidecar.
    let (admin2, port2) = (free_port(), free_port());
    let wrong = start(kind_out, &outbound_sidecar(&pki, admin2, port2, local(in_port), "billing", json!({})), admin2);
    let (status, body) = http_get_blocking(local(port2), "/", Duration::from_secs(10)).unwrap();
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(wrong.stat("cluster.mesh.ssl.fail_verify_san"), Some(1), "{what}");
    assert_eq!(app.hit_count(), 3, "{what}");
}

#[test]
fn envoy_outbound_to_pinion_inbound() {
    pair(ProxyKind::Envoy, ProxyKind::Pinion);
}

#[test]
fn pinion_outbound_to_envoy_inbound() {
    pair(ProxyKind::Pinion, ProxyKind::Envoy);
}

#[test]
fn same_make_pairs() {
    pair(ProxyKind::Envoy, ProxyKind::Envoy);
    pair(ProxyKind::Pinion, ProxyKind::Pinion);
}
