//! SDS: TLS certificates and validation contexts from `static_resources.secrets` and from the
//! test control plane (ADS and a separate SDS stream, SotW and Delta): listeners warm until
//! their secrets arrive, a rotation applies to new handshakes while established connections
//! keep serving, a bad secret is NACKed naming it and the last good one keeps serving, and an
//! mTLS sidecar pair keeps every request succeeding through 20 rotations under load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pinion_certs::{Ca, Workload};
use pinion_testkit::sds::{
    ads_only, bootstrap, ca_secret, cert_secret, cluster, downstream_tls, hcm, route_all, sds_common, sds_config,
    sds_inbound_sidecar, sds_outbound_clusters, sds_outbound_sidecar, socket,
};
use pinion_testkit::{free_port, spawn_http_backend, BackendKind, ProxyKind, ProxyProcess};
use pinion_xds::control_plane::{ControlPlane, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

const TD: &str = "cluster.local";
const SECRET_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

fn issue(ca: &Ca, sa: &str) -> Workload {
    ca.issue_spiffe(TD, "default", sa, &["localhost"]).expect("issue")
}

fn serial_of_der(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("x509");
    c.raw_serial_as_string()
}

fn serial_of_pem(pem: &str) -> String {
    serial_of_der(CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").as_ref())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn spawn(bootstrap: &str) -> ProxyProcess {
    spawn_with(bootstrap, "2")
}

fn spawn_with(bootstrap: &str, concurrency: &str) -> ProxyProcess {
    std::env::set_var("PINION_BIN", env!("CARGO_BIN_EXE_pinion"));
    ProxyProcess::spawn(ProxyKind::Pinion, bootstrap, &["--concurrency", concurrency, "--drain-time-s", "1"])
}

/// A client TLS config trusting `ca_pem`, presenting `id` (no hostname check: mesh peers are
/// checked by SPIFFE id elsewhere; here only the serial matters).
fn client_config(ca_pem: &str, id: &Workload) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(id.cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session reports the certificate of the session it resumes: every probe
    // must see what a new client would.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

/// An mTLS HTTP/1.1 connection to `addr`: the server certificate's serial and a sender.
async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> anyhow::Result<(String, Sender)> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??;
    let serial = serial_of_der(tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("peer certificate"));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok((serial, sender))
}

async fn get_on(sender: &mut Sender, path: &str) -> anyhow::Result<u16> {
    let req = http::Request::get(path).header("host", "localhost").body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Poll until a new handshake with `addr` shows `serial` (and a request over it succeeds).
async fn wait_serial(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, serial: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match tls_connect(addr, config.clone()).await {
            Ok((s, mut sender)) if s == serial => {
                assert_eq!(get_on(&mut sender, "/").await.expect("request"), 200);
                return;
            }
            Ok((s, _)) => last = s,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no handshake with serial {serial} within {within:?}; last: {last}");
}

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> M {
    message_from_str(text, Format::Yaml, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// An LDS listener on `port`: mTLS with SDS secrets from `source`, routing to cluster `app`.
fn sds_listener(port: u16, source: &Value) -> Listener {
    let l = json!({
        "name": "inbound",
        "address": socket(local(port)),
        "filter_chains": [{ "filters": [hcm("inbound", route_all("app"))],
            "transport_socket": downstream_tls(sds_common(source, &spiffe("client"), &["http/1.1"])) }],
    });
    yaml(&serde_json::to_string(&l).unwrap())
}

async fn wait_nack(cp: &ControlPlane, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(msg) = cp
            .requests()
            .into_iter()
            .filter(|r| r.type_url == SECRET_URL || r.type_url.is_empty())
            .filter_map(|r| r.error_detail.map(|(_, m)| m))
            .find(|m| m.contains(needle))
        {
            return msg;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no SDS NACK containing {needle:?}: {:?}",
        cp.requests().iter().map(|r| &r.error_detail).collect::<Vec<_>>()
    );
}

/// The listener (from LDS) warms until its secrets arrive; rotation reaches new handshakes
/// while an established connection keeps serving; bad secrets are NACKed and the last good
/// certificate keeps serving. `ads`: SDS over ADS, else its own stream.
async fn warm_rotate_reject(api_type: &str, ads: bool) {
    let node = "sidecar-1";
    let ca = Ca::new("sds test CA").unwrap();
    let ca_pem = ca.cert_pem();
    let client_id = issue(&ca, "client");
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let app = spawn_http_backend(BackendKind::Http1);
    let (port, admin) = (free_port(), free_port());
    let source = sds_config(ads, api_type);
    let dynamic = if ads {
        let mut d = ads_only(api_type);
        d["lds_config"] = json!({ "ads": {}, "resource_api_version": "V3" });
        d
    } else {
        json!({ "lds_config": sds_config(false, api_type) })
    };
    let static_app = cluster("app", app.addr, false, None);
    let listener = sds_listener(port, &source);
    cp.set_snapshot(node, Snapshot::new("1").with_listener(listener.clone()));
    let mut proxy = spawn(&bootstrap(node, admin, xds, dynamic, json!([]), vec![static_app]));

    // Warming: not ready, and the listener is not bound, while the secrets are missing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ready, _) = proxy.admin_get("/ready").unwrap_or((0, String::new()));
    assert_ne!(ready, 200, "ready without its secrets");
    assert!(tokio::net::TcpStream::connect(local(port)).await.is_err(), "listener bound before its secrets arrived");
    assert_eq!(proxy.stat("listener_manager.total_listeners_warming"), Some(1), "{}", proxy.stats());

    let s1 = issue(&ca, "server");
    let with = |v: &str, cert: tlsv3::Secret| {
        Snapshot::new(v).with_listener(listener.clone()).with_secret(cert).with_secret(ca_secret("ROOTCA", &ca_pem))
    };
    cp.set_snapshot(node, with("2", cert_secret("default", &s1.cert_pem, &s1.key_pem)));
    proxy.wait_ready(admin, Duration::from_secs(10)).expect("ready once the secrets arrived");
    let config = client_config(&ca_pem, &client_id);
    wait_serial(local(port), &config, &serial_of_pem(&s1.cert_pem), Duration::from_secs(5)).await;

    // An established connection, then a rotation: new handshakes get the new certificate
    // within a second, the old connection keeps serving.
    let (serial, mut old) = tls_connect(local(port), config.clone()).await.unwrap();
    assert_eq!(serial, serial_of_pem(&s1.cert_pem));
    let s2 = issue(&ca, "server");
    let pushed = Instant::now();
    cp.set_snapshot(node, with("3", cert_secret("default", &s2.cert_pem, &s2.key_pem)));
    wait_serial(local(port), &config, &serial_of_pem(&s2.cert_pem), Duration::from_secs(2)).await;
    assert!(pushed.elapsed() < Duration::from_secs(2));
    assert_eq!(get_on(&mut old, "/still-here").await.unwrap(), 200);

    // A key that does not match the certificate: NACKed naming the secret; s2 keeps serving.
    let wrong = issue(&ca, "server");
    cp.set_snapshot(node, with("4", cert_secret("default", &s2.cert_pem, &wrong.key_pem)));
    let msg = wait_nack(&cp, "does not match").await;
    assert!(msg.contains("default"), "{msg}");
    let (serial, mut c) = tls_connect(local(port), config.clone()).await.unwrap();
    assert_eq!(serial, serial_of_pem(&s2.cert_pem));
    assert_eq!(get_on(&mut c, "/").await.unwrap(), 200);
    // Unparsable PEM: NACKed too.
    cp.set_snapshot(
        node,
        with(
            "5",
            cert_secret(
                "default",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &s2.key_pem,
            ),
        ),
    );
    let msg = wait_nack(&cp, "certificate_chain").await;
    assert!(msg.contains("default"), "{msg}");
    let (serial, _) = tls_connect(local(port), config.clone()).await.unwrap();
    assert_eq!(serial, serial_of_pem(&s2.cert_pem));
    assert!(proxy.stat("sds.default.update_rejected").unwrap_or(0) >= 2, "{}", proxy.stats());
    assert!(proxy.stat("sds.default.update_success").unwrap_or(0) >= 2, "{}", proxy.stats());
    // The old connection is still there.
    assert_eq!(get_on(&mut old, "/after-nack").await.unwrap(), 200);
    proxy.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_secrets_warm_rotate_and_reject() {
    tokio::time::timeout(Duration::from_secs(60), warm_rotate_reject("GRPC", true)).await.expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta_secrets_warm_rotate_and_reject() {
    tokio::time::timeout(Duration::from_secs(60), warm_rotate_reject("DELTA_GRPC", true)).await.expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_stream_sotw_secrets_warm_rotate_and_reject() {
    tokio::time::timeout(Duration::from_secs(60), warm_rotate_reject("GRPC", false)).await.expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_stream_delta_secrets_warm_rotate_and_reject() {
    tokio::time::timeout(Duration::from_secs(60), warm_rotate_reject("DELTA_GRPC", false)).await.expect("bounded");
}

/// Static secrets (`static_resources.secrets`, no `sds_config`) serve mTLS; an unknown one
/// is refused at startup naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_secrets_serve_mtls() {
    let ca = Ca::new("static CA").unwrap();
    let ca_pem = ca.cert_pem();
    let server = issue(&ca, "server");
    let client_id = issue(&ca, "client");
    let app = spawn_http_backend(BackendKind::Http1);
    let (port, admin) = (free_port(), free_port());
    let common = json!({
        "tls_certificate_sds_secret_configs": [{ "name": "server-cert" }],
        "validation_context_sds_secret_config": { "name": "mesh-ca" },
    });
    let secrets = json!([
        { "name": "server-cert", "tls_certificate": { "certificate_chain": { "inline_string": server.cert_pem },
            "private_key": { "inline_string": server.key_pem } } },
        { "name": "mesh-ca", "validation_context": { "trusted_ca": { "inline_string": ca_pem },
            "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": spiffe("client") } }] } },
    ]);
    let b = |common: &Value| {
        serde_json::to_string_pretty(&json!({
            "admin": { "address": socket(local(admin)) },
            "static_resources": {
                "secrets": secrets,
                "listeners": [{ "name": "inbound", "address": socket(local(port)),
                    "filter_chains": [{ "filters": [hcm("inbound", route_all("app"))], "transport_socket": downstream_tls(common.clone()) }] }],
                "clusters": [cluster("app", app.addr, false, None)],
            },
        }))
        .unwrap()
    };
    std::env::set_var("PINION_BIN", env!("CARGO_BIN_EXE_pinion"));
    let mut proxy = ProxyProcess::spawn(ProxyKind::Pinion, &b(&common), &["--concurrency", "1"]);
    proxy.wait_ready(admin, Duration::from_secs(10)).expect("ready");
    let (serial, mut c) = tls_connect(local(port), client_config(&ca_pem, &client_id)).await.unwrap();
    assert_eq!(serial, serial_of_pem(&server.cert_pem));
    assert_eq!(get_on(&mut c, "/").await.unwrap(), 200);
    // A client with the wrong identity is refused by the secret's SAN matcher.
    let other = issue(&ca, "other");
    let refused = match tls_connect(local(port), client_config(&ca_pem, &other)).await {
        Err(_) => true,
        Ok((_, mut s)) => get_on(&mut s, "/").await.is_err(),
    };
    assert!(refused, "a client outside the secret's SAN matcher got through");
    proxy.kill();

    // An unknown static secret: validate mode fails naming it.
    let mut unknown = common.clone();
    unknown["tls_certificate_sds_secret_configs"][0]["name"] = json!("nope");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.json");
    std::fs::write(&path, b(&unknown)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinion"))
        .args(["--mode", "validate", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Unknown static secret: nope"), "{err}");
}

/// 20 rotations of both sidecars' certificates under steady HTTP/1.1 and HTTP/2 load through
/// the pair: no request fails, each rotation reaches new handshakes (serial), and the HTTP/2
/// connection between the sidecars, established before the first rotation, carries the load
/// to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_pair_rotates_under_load_without_errors() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let ca = Ca::new("pair CA").unwrap();
        let ca_pem = ca.cert_pem();
        let cp = ControlPlane::new();
        let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
        let app = spawn_http_backend(BackendKind::Http1);
        let (in_port, in_admin, out_port, out_admin) = (free_port(), free_port(), free_port(), free_port());
        let clusters: Vec<envoy_types::pb::envoy::config::cluster::v3::Cluster> =
            sds_outbound_clusters(local(in_port)).iter().map(|c| yaml(&c.to_string())).collect();
        let push = |v: u32, server: &Workload, client: &Workload| {
            for (node, id) in [("inbound", server), ("outbound", client)] {
                let mut snap = Snapshot::new(v.to_string())
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
        let (mut server, mut client) = (issue(&ca, "server"), issue(&ca, "client"));
        push(0, &server, &client);
        let mut inbound = spawn(&sds_inbound_sidecar("inbound", in_admin, in_port, xds, app.addr));
        // One worker: one HTTP/2 connection to the inbound sidecar, to follow through.
        let mut outbound = spawn_with(&sds_outbound_sidecar("outbound", out_admin, out_port, xds), "1");
        inbound.wait_ready(in_admin, Duration::from_secs(10)).expect("inbound ready");
        outbound.wait_ready(out_admin, Duration::from_secs(10)).expect("outbound ready");

        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let client = pinion_testkit::http1_client();
                let path = if i % 2 == 0 { "h2" } else { "h1" };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let req = http::Request::get(format!("http://127.0.0.1:{out_port}/{path}/{i}/{n}"))
                        .body(pinion_testkit::empty())
                        .unwrap();
                    match pinion_testkit::send(&client, req).await {
                        Ok((s, _, _)) if s == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("request failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        // Let load reach both clusters before the first rotation.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ok.load(Ordering::Relaxed) < 50 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(outbound.stat("cluster.mesh-h2.upstream_cx_total"), Some(1), "{}", outbound.stats());
        let probe = client_config(&ca_pem, &issue(&ca, "client"));
        for v in 1..=20 {
            server = issue(&ca, "server");
            client = issue(&ca, "client");
            push(v, &server, &client);
            // Each rotation reaches new handshakes within a second.
            wait_serial(local(in_port), &probe, &serial_of_pem(&server.cert_pem), Duration::from_secs(1)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        eprintln!("sidecar pair: {ok} requests succeeded, {failed} failed through 20 rotations");
        assert_eq!(failed, 0, "requests failed during rotations: {}", outbound.stats());
        assert!(ok > 200, "too little load: {ok}");
        // The outbound sidecar's client certificate rotated too: the inbound one saw it on
        // new HTTP/1.1 upstream connections (each handshake verified against ROOTCA).
        assert!(inbound.stat("sds.default.update_success").unwrap_or(0) >= 21, "{}", inbound.stats());
        assert!(outbound.stat("sds.default.update_success").unwrap_or(0) >= 21, "{}", outbound.stats());
        // The HTTP/2 connection established before the rotations carried the load to the end.
        assert_eq!(outbound.stat("cluster.mesh-h2.upstream_cx_total"), Some(1), "{}", outbound.stats());
        assert_eq!(outbound.stat("cluster.mesh-h2.upstream_cx_destroy"), Some(0));
        assert_eq!(outbound.stat("cluster.mesh-h2.ssl.connection_error"), Some(0));
        let _ = client;
        inbound.kill();
        outbound.kill();
    })
    .await
    .expect("bounded");
}

/// A secret that does not come within its `sds_config.initial_fetch_timeout`: the listener
/// stops warming and serves, its handshakes failing (as Envoy's), counted in
/// `sds.<name>.init_fetch_timeout`; once the secret arrives, handshakes succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_fetch_timeout_lets_the_listener_serve_without_its_secret() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let node = "sidecar-1";
        let ca = Ca::new("timeout CA").unwrap();
        let ca_pem = ca.cert_pem();
        let cp = ControlPlane::new();
        let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
        let app = spawn_http_backend(BackendKind::Http1);
        let (port, admin) = (free_port(), free_port());
        let mut source = sds_config(true, "GRPC");
        source["initial_fetch_timeout"] = json!("1s");
        let listener = sds_listener(port, &source);
        cp.set_snapshot(node, Snapshot::new("1").with_listener(listener.clone()));
        let mut dynamic = ads_only("GRPC");
        dynamic["lds_config"] = json!({ "ads": {}, "resource_api_version": "V3" });
        let started = Instant::now();
        let mut proxy =
            spawn(&bootstrap(node, admin, xds, dynamic, json!([]), vec![cluster("app", app.addr, false, None)]));
        proxy.wait_ready(admin, Duration::from_secs(10)).expect("ready after the secrets' initial fetch timeout");
        assert!(started.elapsed() >= Duration::from_millis(900), "ready before the timeout");
        assert_eq!(proxy.stat("sds.default.init_fetch_timeout"), Some(1), "{}", proxy.stats());
        assert_eq!(proxy.stat("sds.ROOTCA.init_fetch_timeout"), Some(1));
        assert_eq!(proxy.stat("listener_manager.total_listeners_warming"), Some(0));
        let config = client_config(&ca_pem, &issue(&ca, "client"));
        assert!(tls_connect(local(port), config.clone()).await.is_err(), "a handshake without a certificate");

        let server = issue(&ca, "server");
        cp.set_snapshot(
            node,
            Snapshot::new("2")
                .with_listener(listener)
                .with_secret(cert_secret("default", &server.cert_pem, &server.key_pem))
                .with_secret(ca_secret("ROOTCA", &ca_pem)),
        );
        wait_serial(local(port), &config, &serial_of_pem(&server.cert_pem), Duration::from_secs(5)).await;
        proxy.kill();
    })
    .await
    .expect("bounded");
}

/// CDS clusters naming secrets warm until the secrets arrive (the server is not ready
/// meanwhile), then serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_warm_until_their_secrets_arrive() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let ca = Ca::new("cluster CA").unwrap();
        let ca_pem = ca.cert_pem();
        let cp = ControlPlane::new();
        let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
        let app = spawn_http_backend(BackendKind::Http1);
        let (in_port, in_admin, out_port, out_admin) = (free_port(), free_port(), free_port(), free_port());
        let server = issue(&ca, "server");
        cp.set_snapshot(
            "inbound",
            Snapshot::new("1")
                .with_secret(cert_secret("default", &server.cert_pem, &server.key_pem))
                .with_secret(ca_secret("ROOTCA", &ca_pem)),
        );
        let clusters: Vec<envoy_types::pb::envoy::config::cluster::v3::Cluster> =
            sds_outbound_clusters(local(in_port)).iter().map(|c| yaml(&c.to_string())).collect();
        let mut snap = Snapshot::new("1");
        for c in &clusters {
            snap = snap.with_cluster(c.clone());
        }
        cp.set_snapshot("outbound", snap.clone());
        let mut inbound = spawn(&sds_inbound_sidecar("inbound", in_admin, in_port, xds, app.addr));
        let outbound = spawn(&sds_outbound_sidecar("outbound", out_admin, out_port, xds));
        inbound.wait_ready(in_admin, Duration::from_secs(10)).expect("inbound ready");

        let deadline = Instant::now() + Duration::from_secs(10);
        while outbound.stat("cluster_manager.warming_clusters") != Some(2) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(outbound.stat("cluster_manager.warming_clusters"), Some(2), "{}", outbound.stats());
        assert_ne!(outbound.admin_get("/ready").map(|r| r.0).unwrap_or(0), 200, "ready while clusters warm");
        let client = issue(&ca, "client");
        let mut snap = snap
            .with_secret(cert_secret("default", &client.cert_pem, &client.key_pem))
            .with_secret(ca_secret("ROOTCA", &ca_pem));
        snap.version = "2".into();
        cp.set_snapshot("outbound", snap);
        let mut outbound = outbound;
        outbound.wait_ready(out_admin, Duration::from_secs(10)).expect("outbound ready once its secrets arrived");
        assert_eq!(outbound.stat("cluster_manager.warming_clusters"), Some(0));
        for path in ["/h2/x", "/h1/y"] {
            let req =
                http::Request::get(format!("http://127.0.0.1:{out_port}{path}")).body(pinion_testkit::empty()).unwrap();
            let client = pinion_testkit::http1_client();
            assert_eq!(pinion_testkit::send(&client, req).await.unwrap().0, 200, "{path}");
        }
        inbound.kill();
        outbound.kill();
    })
    .await
    .expect("bounded");
}

/// Istio's layout: listeners over ADS from one control plane, secrets from an SDS server on
/// a Unix socket (`api_config_source` through a cluster with a `pipe` address), SotW or
/// Delta: the listener warms until they arrive, and a rotation reaches new handshakes.
async fn unix_socket_sds_beside_ads(api_type: &str) {
    let node = "sidecar-1";
    let ca = Ca::new("uds CA").unwrap();
    let ca_pem = ca.cert_pem();
    let cp = ControlPlane::new();
    let (xds, _shutdown) = cp.serve("127.0.0.1:0".parse().unwrap()).expect("control plane");
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("sds.sock");
    let agent = ControlPlane::new();
    let _agent_shutdown = agent.serve_unix(&socket_path).expect("SDS server on a Unix socket");
    let app = spawn_http_backend(BackendKind::Http1);
    let (port, admin) = (free_port(), free_port());
    let source = json!({ "api_config_source": { "api_type": api_type, "transport_api_version": "V3",
        "grpc_services": [{ "envoy_grpc": { "cluster_name": "sds-grpc" } }] }, "resource_api_version": "V3" });
    cp.set_snapshot(node, Snapshot::new("1").with_listener(sds_listener(port, &source)));
    let mut dynamic = ads_only("GRPC");
    dynamic["lds_config"] = json!({ "ads": {}, "resource_api_version": "V3" });
    let sds_cluster = json!({ "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} } } },
        "load_assignment": { "cluster_name": "sds-grpc", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "pipe": { "path": socket_path.display().to_string() } } } }] }] } });
    let mut proxy = spawn(&bootstrap(
        node,
        admin,
        xds,
        dynamic,
        json!([]),
        vec![cluster("app", app.addr, false, None), sds_cluster],
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(proxy.stat("listener_manager.total_listeners_warming"), Some(1), "{}", proxy.stats());
    let config = client_config(&ca_pem, &issue(&ca, "client"));
    for (v, server) in [("1", issue(&ca, "server")), ("2", issue(&ca, "server"))] {
        agent.set_snapshot(
            node,
            Snapshot::new(v)
                .with_secret(cert_secret("default", &server.cert_pem, &server.key_pem))
                .with_secret(ca_secret("ROOTCA", &ca_pem)),
        );
        if v == "1" {
            proxy.wait_ready(admin, Duration::from_secs(10)).expect("ready once the agent served the secrets");
        }
        wait_serial(local(port), &config, &serial_of_pem(&server.cert_pem), Duration::from_secs(3)).await;
    }
    // The secrets came from the agent only; the ADS stream never asked for them.
    assert!(cp.requests().iter().all(|r| r.type_url != SECRET_URL || r.resource_names.is_empty()));
    assert!(agent.requests().iter().any(|r| r.resource_names.contains(&"default".to_string())));
    proxy.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_sds_sotw_beside_ads() {
    tokio::time::timeout(Duration::from_secs(60), unix_socket_sds_beside_ads("GRPC")).await.expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_sds_delta_beside_ads() {
    tokio::time::timeout(Duration::from_secs(60), unix_socket_sds_beside_ads("DELTA_GRPC")).await.expect("bounded");
}
