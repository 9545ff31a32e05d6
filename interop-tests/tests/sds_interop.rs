//! SDS across makes: Envoy and Pinion sidecars take their certificates (`default`) and trust
//! bundles (`ROOTCA`, combined with a SPIFFE SAN matcher) from the same test control plane
//! over ADS, and talk mTLS both ways (Envoy outbound -> Pinion inbound and the reverse), over
//! HTTP/2 and HTTP/1.1, through a rotation of every certificate during traffic.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use pinion_certs::{Ca, Workload};
use pinion_testkit::mesh::TRUST_DOMAIN;
use pinion_testkit::sds::{
    ca_secret, cert_secret, der_of, peer_leaf, sds_inbound_sidecar, sds_outbound_clusters, sds_outbound_sidecar,
};
use pinion_testkit::{free_port, spawn_http_backend, BackendKind, ProxyKind, ProxyProcess};
use pinion_xds::control_plane::{ControlPlane, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn issue(ca: &Ca, sa: &str) -> Workload {
    ca.issue_spiffe(TRUST_DOMAIN, "default", sa, &["localhost"]).expect("issue")
}

fn start(kind: ProxyKind, bootstrap: &str, admin: u16) -> ProxyProcess {
    let mut p = ProxyProcess::spawn(kind, bootstrap, &["--concurrency", "1"]);
    if let Err(e) = p.wait_ready(admin, Duration::from_secs(30)) {
        panic!("{kind:?} did not start: {e:#}\n{}", p.logs());
    }
    p
}

async fn get(port: u16, path: &str) -> anyhow::Result<u16> {
    let client = pinion_testkit::http1_client();
    let req = http::Request::get(format!("http://127.0.0.1:{port}{path}")).body(pinion_testkit::empty())?;
    Ok(pinion_testkit::send(&client, req).await?.0.as_u16())
}

/// A `kind_out` outbound sidecar and a `kind_in` inbound one, both with SDS certificates
/// from one control plane: requests go through over HTTP/2 and HTTP/1.1, and keep going
/// through a rotation of both certificates, which new handshakes then present.
async fn pair(kind_out: ProxyKind, kind_in: ProxyKind) {
    let what = format!("{kind_out:?} -> {kind_in:?}");
    let ca = Ca::new("sds interop CA").unwrap();
    let ca_pem = ca.cert_pem();
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let (in_admin, in_port, out_admin, out_port) = (free_port(), free_port(), free_port(), free_port());
    let clusters: Vec<Cluster> = sds_outbound_clusters(local(in_port))
        .iter()
        .map(|c| message_from_str(&c.to_string(), Format::Json, &DecodeOptions::default()).expect("cluster"))
        .collect();
    let push = |v: &str, server: &Workload, client: &Workload| {
        for (node, id) in [("inbound", server), ("outbound", client)] {
            let mut snap = Snapshot::new(v)
                .with_secret(cert_secret("default", &id.cert_pem, &id.key_pem))
                .with_secret(ca_secret("ROOTCA", &ca_pem));
            if node == "outbound" {
                for c in &clusters {
                    snap = snap.with_cluster(c.clone());
                }
            }
            cp.set_snapshot(node, snap);
        }
    };
    let (server, client) = (issue(&ca, "server"), issue(&ca, "client"));
    push("1", &server, &client);
    let app = spawn_http_backend(BackendKind::Http1);
    let inbound = start(kind_in, &sds_inbound_sidecar("inbound", in_admin, in_port, xds, app.addr), in_admin);
    let outbound = start(kind_out, &sds_outbound_sidecar("outbound", out_admin, out_port, xds), out_admin);
    for path in ["/h2/a", "/h1/b"] {
        assert_eq!(get(out_port, path).await.unwrap(), 200, "{what} {path}\n{}\n{}", outbound.logs(), inbound.logs());
    }
    let probe = issue(&ca, "client");
    assert_eq!(
        peer_leaf(local(in_port), &ca_pem, &probe.cert_pem, &probe.key_pem).await.unwrap(),
        der_of(&server.cert_pem)
    );

    // Traffic while both certificates rotate.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for path in ["/h2/load", "/h1/load"] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(out_port, path).await {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (server2, client2) = (issue(&ca, "server"), issue(&ca, "client"));
    push("2", &server2, &client2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leaf = peer_leaf(local(in_port), &ca_pem, &probe.cert_pem, &probe.key_pem).await;
        if leaf.as_ref().ok() == Some(&der_of(&server2.cert_pem)) {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: the inbound sidecar still presents the old certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{what}: {failed} requests failed during the rotation ({ok} succeeded)");
    assert!(ok > 10, "{what}: too little traffic ({ok})");
    for (p, name) in [(&outbound, "outbound"), (&inbound, "inbound")] {
        assert!(p.stat("sds.default.update_success").unwrap_or(0) >= 2, "{what}: {name}\n{}", p.stats());
        assert!(p.stat("sds.ROOTCA.update_success").unwrap_or(0) >= 1, "{what}: {name}\n{}", p.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_outbound_to_pinion_inbound_with_sds() {
    tokio::time::timeout(Duration::from_secs(90), pair(ProxyKind::Envoy, ProxyKind::Pinion)).await.expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinion_outbound_to_envoy_inbound_with_sds() {
    tokio::time::timeout(Duration::from_secs(90), pair(ProxyKind::Pinion, ProxyKind::Envoy)).await.expect("bounded");
}
