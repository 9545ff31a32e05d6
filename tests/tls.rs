//! TLS transport sockets: a filter chain terminating TLS (ALPN picks the codec), mTLS with
//! `require_client_certificate` and SPIFFE SAN matching, a cluster originating mTLS to a TLS
//! backend, and two sidecars talking mTLS. Certificates come from `pinion-certs`.
//!
//! `PINION_TESTS_AGAINST=envoy cargo test --test tls` runs the same tests against Envoy.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pinion_testkit::mesh::{
    common_tls, downstream_tls, inbound_sidecar, outbound_sidecar, spiffe, upstream_tls, Identity, MeshPki,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

/// A listener whose one filter chain terminates TLS with `transport_socket`.
fn tls_listener(name: &str, port: u16, filter: Value, transport_socket: Value) -> Value {
    let mut l = listener(name, port, filter);
    l["filter_chains"][0]["transport_socket"] = transport_socket;
    l
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

/// A TLS client trusting the mesh CA, presenting `identity` if given, offering `alpn`.
fn client_config(pki: &MeshPki, identity: Option<&Identity>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&pki.ca_pem) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match identity {
        Some(f) => b
            .with_client_auth_cert(certs(&f.cert_pem), PrivateKeyDer::from_pem_slice(f.key_pem.as_bytes()).unwrap())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// What one request over TLS got.
#[derive(Debug)]
struct TlsReply {
    alpn: Option<String>,
    status: u16,
    body: Bytes,
}

/// GET `path` over TLS to `addr` (server name `localhost`), HTTP/2 if ALPN settles on `h2`.
async fn tls_get(addr: SocketAddr, config: Arc<rustls::ClientConfig>, path: &str) -> anyhow::Result<TlsReply> {
    tls_get_sni(addr, config, "localhost", "localhost", path).await
}

/// [`tls_get`] with server name `sni` and authority `host`.
async fn tls_get_sni(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<TlsReply> {
    let tcp = connect(addr).await;
    let tls = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(IO_TIMEOUT, tls.connect(ServerName::try_from(sni.to_string())?, tcp)).await??;
    let alpn = stream.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let io = TokioIo::new(stream);
    let req = http::Request::get(format!("https://{host}{path}")).body(Empty::<Bytes>::new())?;
    let exchange = async {
        let resp = if alpn.as_deref() == Some("h2") {
            let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            s.send_request(req).await?
        } else {
            let (mut s, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let mut req = req;
            req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_str(host)?);
            *req.uri_mut() = path.parse()?;
            s.send_request(req).await?
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(TlsReply { alpn: alpn.clone(), status, body })
    };
    tokio::time::timeout(IO_TIMEOUT, exchange).await?
}

fn json_body(r: &TlsReply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

fn listener_stat(p: &pinion_testkit::ProxyProcess, port: u16, rest: &str) -> u64 {
    p.stat(&format!("listener.127.0.0.1_{port}.{rest}")).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_tls_picks_the_codec_by_alpn() {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let ts = downstream_tls(common_tls(Some(&pki.server), None, None, &["h2", "http/1.1"]), false);
    let bootstrap = bootstrap(
        admin,
        vec![tls_listener("tls", port, hcm("tls", route_all_to("backend"), json!({})), ts)],
        vec![cluster("backend", backend.addr, json!({}))],
    );
    let proxy = start(&bootstrap, &["--concurrency", "1"]);
    for alpn in ["h2", "http/1.1"] {
        let r = tls_get(local(port), client_config(&pki, None, &[alpn]), "/hello").await.unwrap();
        assert_eq!(r.alpn.as_deref(), Some(alpn));
        assert_eq!(r.status, 200, "{r:?}");
        let seen = json_body(&r);
        assert_eq!(seen["path"], "/hello");
        // The downstream connection was TLS: the request goes upstream as https.
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    }
    // The downstream HTTP version the HCM counted follows ALPN.
    assert_eq!(stat(&proxy, "http.tls.downstream_rq_http2_total"), 1);
    assert_eq!(stat(&proxy, "http.tls.downstream_rq_http1_total"), 1);
    assert_eq!(listener_stat(&proxy, port, "ssl.handshake"), 2);
    // A plaintext request on the TLS port gets no HTTP answer.
    assert!(raw_request(local(port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_none());
    assert!(wait_for(std::time::Duration::from_secs(5), "ssl.connection_error", || {
        (listener_stat(&proxy, port, "ssl.connection_error") >= 1).then_some(true)
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_admits_only_the_expected_spiffe_identity() {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let common = common_tls(Some(&pki.server), Some(&pki.ca), Some(&spiffe("client")), &["h2", "http/1.1"]);
    let bootstrap = bootstrap(
        admin,
        vec![tls_listener("mtls", port, hcm("mtls", route_all_to("backend"), json!({})), downstream_tls(common, true))],
        vec![cluster("backend", backend.addr, json!({}))],
    );
    let proxy = start(&bootstrap, &["--concurrency", "1"]);
    let addr = local(port);

    let ok = tls_get(addr, client_config(&pki, Some(&pki.client), &["h2"]), "/").await.unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(backend.hit_count(), 1);
    // forward_client_cert_details defaults to SANITIZE: no x-forwarded-client-cert upstream
    // (here the proxy sets none; a client's own is stripped, see two_sidecars_talk_mtls_http2).
    assert_eq!(json_body(&ok)["headers"].get("x-forwarded-client-cert"), None);

    // Each refused client: no request reaches the backend, and the reason is counted.
    let refused: [(&str, Option<&Identity>, &str); 3] = [
        ("no client certificate", None, "ssl.fail_verify_no_cert"),
        ("certificate from another CA", Some(&pki.foreign), "ssl.fail_verify_error"),
        ("unexpected SPIFFE id", Some(&pki.other_sa), "ssl.fail_verify_san"),
    ];
    for (what, identity, counter) in refused {
        for alpn in ["h2", "http/1.1"] {
            let r = tls_get(addr, client_config(&pki, identity, &[alpn]), "/").await;
            assert!(r.is_err(), "{what} ({alpn}) was served: {r:?}");
        }
        assert_eq!(listener_stat(&proxy, port, counter), 2, "{what}: {counter}\n{}", proxy.stats());
    }
    assert_eq!(backend.hit_count(), 1);
    assert_eq!(listener_stat(&proxy, port, "ssl.handshake"), 1);
    // Envoy's connection_error leaves out failed certificate verifications.
    assert_eq!(listener_stat(&proxy, port, "ssl.connection_error"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_verifies_the_backend_identity() {
    let pki = MeshPki::new();
    let tls_backend = pinion_testkit::mesh::spawn_tls_backend(&pki, &pki.server);
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let routes = json!({
        "name": "routes",
        "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
            { "match": { "prefix": "/h1" }, "route": { "cluster": "tls_h1" } },
            { "match": { "prefix": "/h2" }, "route": { "cluster": "tls_h2" } },
            { "match": { "prefix": "/wrong" }, "route": { "cluster": "wrong_identity" } },
        ]}]
    });
    let tls = |san: &str| {
        json!({ "transport_socket": upstream_tls(
            common_tls(Some(&pki.client), Some(&pki.ca), Some(san), &[]), "localhost") })
    };
    let bootstrap = bootstrap(
        admin,
        vec![listener("main", port, hcm("main", routes, json!({})))],
        vec![
            cluster("tls_h1", tls_backend, tls(&spiffe("server"))),
            cluster("tls_h2", tls_backend, merged(tls(&spiffe("server")), h2_upstream(json!({})))),
            cluster("wrong_identity", tls_backend, tls(&spiffe("someone-else"))),
        ],
    );
    let proxy = start(&bootstrap, &["--concurrency", "1"]);

    // With no alpn_protocols configured, the ALPN offered follows the cluster's protocol.
    let r = get(local(port), "/h1", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "alpn": "http/1.1", "version": "HTTP/1.1" }));
    let r = get(local(port), "/h2", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "alpn": "h2", "version": "HTTP/2.0" }));
    assert_eq!(stat(&proxy, "cluster.tls_h1.ssl.handshake"), 1);
    assert_eq!(stat(&proxy, "cluster.tls_h2.ssl.handshake"), 1);

    // The backend's certificate does not carry the identity this cluster expects.
    let r = get(local(port), "/wrong", &[]).await;
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.starts_with(
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        ),
        "{body}"
    );
    assert_eq!(stat(&proxy, "cluster.wrong_identity.ssl.fail_verify_san"), 1);
    // Envoy's connection_error leaves out failed certificate verifications.
    assert_eq!(stat(&proxy, "cluster.wrong_identity.ssl.connection_error"), 0);
    assert_eq!(stat(&proxy, "cluster.wrong_identity.upstream_cx_connect_fail"), 1);
    assert_eq!(stat(&proxy, "cluster.wrong_identity.ssl.handshake"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_talk_mtls_http2() {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let ports: Vec<u16> = (0..4).map(|_| pinion_testkit::free_port()).collect();
    let inbound = start(&inbound_sidecar(&pki, ports[0], ports[1], backend.addr), &["--concurrency", "1"]);
    let outbound = start(
        &outbound_sidecar(&pki, ports[2], ports[3], local(ports[1]), "server", json!({})),
        &["--concurrency", "1"],
    );
    for i in 0..5 {
        // A forged client certificate header does not survive SANITIZE (Envoy's default).
        let r = get(local(ports[3]), &format!("/req/{i}"), &[("x-forwarded-client-cert", "URI=spiffe://evil")]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let seen = r.json();
        assert_eq!(seen["path"], format!("/req/{i}"));
        // The outbound sidecar set it for its plaintext downstream; the inbound one, not an
        // edge proxy (no use_remote_address), keeps it.
        assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{seen}");
        assert_eq!(seen["headers"].get("x-forwarded-client-cert"), None, "{seen}");
    }
    // One mTLS HTTP/2 connection carried all five requests.
    assert_eq!(stat(&outbound, "cluster.mesh.ssl.handshake"), 1);
    assert_eq!(stat(&outbound, "cluster.mesh.upstream_cx_http2_total"), 1);
    assert_eq!(listener_stat(&inbound, ports[1], "ssl.handshake"), 1);
    assert_eq!(stat(&inbound, "http.inbound.downstream_rq_http2_total"), 5);
}

/// A listener with the tls_inspector: a chain per `(filter_chain_match, stat_prefix, tls)`,
/// each HCM routing to `backend`.
fn inspected_listener(port: u16, backend_cluster: &str, chains: &[(Value, &str, Option<Value>)]) -> Value {
    let chains: Vec<Value> = chains
        .iter()
        .map(|(m, prefix, tls)| {
            let mut c =
                json!({ "filter_chain_match": m, "filters": [hcm(prefix, route_all_to(backend_cluster), json!({}))] });
            if let Some(t) = tls {
                c["transport_socket"] = t.clone();
            }
            c
        })
        .collect();
    json!({
        "name": "inspected",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
        "filter_chains": chains,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_inspector_serves_mtls_and_plaintext_on_one_port() {
    // Istio's PERMISSIVE inbound: mTLS peers and plaintext clients on the same port.
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let mtls = downstream_tls(
        common_tls(Some(&pki.server), Some(&pki.ca), Some(&spiffe("client")), &["h2", "http/1.1"]),
        true,
    );
    let l = inspected_listener(
        port,
        "backend",
        &[(json!({ "transport_protocol": "tls" }), "mtls", Some(mtls)), (json!({}), "plain", None)],
    );
    let proxy =
        start(&bootstrap(admin, vec![l], vec![cluster("backend", backend.addr, json!({}))]), &["--concurrency", "1"]);
    let r = tls_get(local(port), client_config(&pki, Some(&pki.client), &["h2"]), "/a").await.unwrap();
    assert_eq!((r.status, r.alpn.as_deref()), (200, Some("h2")));
    assert_eq!(get(local(port), "/b", &[]).await.status, 200);
    assert_eq!(stat(&proxy, "http.mtls.downstream_rq_total"), 1);
    assert_eq!(stat(&proxy, "http.plain.downstream_rq_total"), 1);
    assert_eq!(listener_stat(&proxy, port, "ssl.handshake"), 1);
    assert_eq!(listener_stat(&proxy, port, "no_filter_chain_match"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_most_specific_filter_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pinion_certs::Ca::new("sni test CA").unwrap();
    let names = ["api.example.com", "*.example.com", "other.test"];
    let cert = ca.issue(&names.map(|n| pinion_certs::San::Dns(n.into()))).unwrap();
    let (cert_path, key_path) = cert.write_to(dir.path()).unwrap();
    let id =
        Identity { cert: cert_path, key: key_path, cert_pem: cert.cert_pem.clone(), key_pem: cert.key_pem.clone() };
    let tls = || Some(downstream_tls(common_tls(Some(&id), None, None, &[]), false));
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let l = inspected_listener(
        port,
        "backend",
        &[
            (json!({ "server_names": ["*.example.com"] }), "wildcard", tls()),
            (json!({ "server_names": ["api.example.com"] }), "exact", tls()),
            (json!({ "transport_protocol": "tls" }), "any_tls", tls()),
        ],
    );
    let proxy =
        start(&bootstrap(admin, vec![l], vec![cluster("backend", backend.addr, json!({}))]), &["--concurrency", "1"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap()).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    for (sni, chain) in [("api.example.com", "exact"), ("www.example.com", "wildcard"), ("other.test", "any_tls")] {
        let r = tls_get_sni(local(port), config.clone(), sni, sni, "/").await.unwrap();
        assert_eq!(r.status, 200, "{sni}");
        assert_eq!(
            stat(&proxy, &format!("http.{chain}.downstream_rq_total")),
            1,
            "{sni} -> {chain}\n{}",
            proxy.stats()
        );
    }
    // Plaintext matches no chain (each needs TLS): the connection is closed.
    assert!(raw_request(local(port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_none());
    assert_eq!(listener_stat(&proxy, port, "no_filter_chain_match"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_redirects_plaintext_requests_to_https() {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let (plain, tls, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port(), pinion_testkit::free_port());
    let edge = pinion_testkit::free_port();
    let route = json!([{ "match": { "prefix": "/" }, "route": { "cluster": "backend" } }]);
    let routes = json!({
        "name": "routes",
        "virtual_hosts": [
            { "name": "all", "domains": ["secure.example"], "require_tls": "ALL", "routes": route },
            { "name": "ext", "domains": ["ext.example"], "require_tls": "EXTERNAL_ONLY", "routes": route },
            { "name": "open", "domains": ["*"], "routes": route },
        ]
    });
    let ts = downstream_tls(common_tls(Some(&pki.server), None, None, &["h2", "http/1.1"]), false);
    let bootstrap = bootstrap(
        admin,
        vec![
            listener("plain", plain, hcm("plain", routes.clone(), json!({}))),
            listener("edge", edge, hcm("edge", routes.clone(), json!({ "use_remote_address": true }))),
            tls_listener("tls", tls, hcm("tls", routes, json!({})), ts),
        ],
        vec![cluster("backend", backend.addr, json!({}))],
    );
    let _proxy = start(&bootstrap, &["--concurrency", "1"]);

    let r = get(local(plain), "/a/b?c=1", &[("host", "secure.example")]).await;
    assert_eq!((r.status, r.header("location")), (301, Some("https://secure.example/a/b?c=1")));
    let r = get(local(plain), "/", &[("host", "ext.example")]).await;
    assert_eq!((r.status, r.header("location")), (301, Some("https://ext.example/")));
    assert_eq!(backend.hit_count(), 0);
    // Not an edge proxy (no use_remote_address): the client's x-forwarded-proto is kept and
    // counts; its x-envoy-internal is stripped (the request is external), so it does not.
    assert_eq!(get(local(plain), "/", &[("host", "secure.example"), ("x-forwarded-proto", "https")]).await.status, 200);
    assert_eq!(get(local(plain), "/", &[("host", "ext.example"), ("x-envoy-internal", "true")]).await.status, 301);
    // At the edge (use_remote_address) the proxy sets x-forwarded-proto itself: a forged one
    // no longer counts. (Envoy 1.40 deems no client internal without internal_address_config,
    // so EXTERNAL_ONLY redirects here too.)
    let r = get(local(edge), "/", &[("host", "secure.example"), ("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status, 301);
    assert_eq!(get(local(edge), "/", &[("host", "ext.example")]).await.status, 301);
    assert_eq!(get(local(plain), "/", &[("host", "other.example")]).await.status, 200);
    // Over TLS the requirement is met.
    for alpn in ["http/1.1", "h2"] {
        let config = client_config(&pki, None, &[alpn]);
        let r = tls_get_sni(local(tls), config, "localhost", "secure.example", "/x").await.unwrap();
        assert_eq!(r.status, 200, "{alpn}: {r:?}");
    }
    assert_eq!(backend.hit_count(), 4);
    let r = get(local(plain), "/", &[("host", "open.example"), ("x-envoy-internal", "true")]).await;
    assert_eq!(r.json()["headers"].get("x-envoy-internal"), None);
}

/// Five requests through an outbound/inbound sidecar pair whose mesh cluster opens a new
/// connection per request; `patch` edits (outbound, inbound) bootstraps. Returns the inbound
/// listener's (`ssl.handshake`, `ssl.session_reused`).
async fn resumption(patch: impl Fn(&mut Value, &mut Value)) -> (u64, u64) {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let ports: Vec<u16> = (0..4).map(|_| pinion_testkit::free_port()).collect();
    let one_per_conn = json!({ "max_requests_per_connection": 1 });
    let mut out: Value =
        serde_json::from_str(&outbound_sidecar(&pki, ports[2], ports[3], local(ports[1]), "server", one_per_conn))
            .unwrap();
    let mut inb: Value = serde_json::from_str(&inbound_sidecar(&pki, ports[0], ports[1], backend.addr)).unwrap();
    patch(&mut out, &mut inb);
    let inbound = start(&inb.to_string(), &["--concurrency", "1"]);
    let _outbound = start(&out.to_string(), &["--concurrency", "1"]);
    for _ in 0..5 {
        assert_eq!(get(local(ports[3]), "/", &[]).await.status, 200);
    }
    (listener_stat(&inbound, ports[1], "ssl.handshake"), listener_stat(&inbound, ports[1], "ssl.session_reused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_follows_the_tls_contexts() {
    // Envoy's defaults: the client keeps a session, the server accepts it.
    let (handshakes, reused) = resumption(|_, _| {}).await;
    assert_eq!(handshakes, 5);
    assert!(reused >= 4, "{reused} of 5 resumed");
    // The client keeps no session (max_session_keys: 0).
    let (handshakes, reused) = resumption(|out, _| {
        out["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["max_session_keys"] = json!(0);
    })
    .await;
    assert_eq!((handshakes, reused), (5, 0));
    // The server resumes nothing (both kinds of resumption disabled).
    let (handshakes, reused) = resumption(|_, inb| {
        let ctx = &mut inb["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"];
        ctx["disable_stateful_session_resumption"] = json!(true);
        ctx["disable_stateless_session_resumption"] = json!(true);
    })
    .await;
    assert_eq!((handshakes, reused), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tls_peers_are_dropped_and_the_proxy_keeps_serving() {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let expired_backend = pinion_testkit::mesh::spawn_tls_backend(&pki, &pki.expired_server);
    let (port, plain, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port(), pinion_testkit::free_port());
    // An upstream that accepts TCP and never answers the ClientHello.
    let silent_upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent_upstream.local_addr().unwrap();
    let routes = json!({ "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/silent" }, "route": { "cluster": "silent" } },
        { "match": { "prefix": "/" }, "route": { "cluster": "expired" } },
    ]}]});
    let mut l = tls_listener(
        "tls",
        port,
        hcm("tls", route_all_to("backend"), json!({})),
        downstream_tls(common_tls(Some(&pki.server), None, None, &["http/1.1"]), false),
    );
    l["filter_chains"][0]["transport_socket_connect_timeout"] = json!("1s");
    let upstream = json!({ "transport_socket": upstream_tls(
        common_tls(Some(&pki.client), Some(&pki.ca), Some(&spiffe("server")), &[]), "") });
    let proxy = start(
        &bootstrap(
            admin,
            vec![l, listener("plain", plain, hcm("plain", routes, json!({})))],
            vec![
                cluster("backend", backend.addr, json!({})),
                cluster("expired", expired_backend, upstream.clone()),
                cluster("silent", silent_addr, merged(upstream, json!({ "connect_timeout": "0.5s" }))),
            ],
        ),
        &["--concurrency", "1"],
    );
    // Garbage where a ClientHello should be: the connection is closed.
    let mut s = connect(local(port)).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    assert!(closed_within(&mut s, std::time::Duration::from_secs(5)).await, "garbage handshake left open");
    // A client that never speaks is dropped after transport_socket_connect_timeout.
    let mut silent = connect(local(port)).await;
    let t = std::time::Instant::now();
    assert!(closed_within(&mut silent, std::time::Duration::from_secs(10)).await, "silent client left open");
    assert!(t.elapsed() >= std::time::Duration::from_millis(900), "closed after {:?}", t.elapsed());
    assert!(listener_stat(&proxy, port, "ssl.connection_error") >= 1);
    // The listener still serves.
    let r = tls_get(local(port), client_config(&pki, None, &["http/1.1"]), "/ok").await.unwrap();
    assert_eq!(r.status, 200);
    // An upstream whose certificate has expired is refused: 503, counted as a verify error.
    let r = get(local(plain), "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(stat(&proxy, "cluster.expired.ssl.fail_verify_error"), 1);
    assert_eq!(stat(&proxy, "cluster.expired.ssl.handshake"), 0);
    // connect_timeout bounds the TLS handshake too: 503, counted as a connect timeout.
    let t = std::time::Instant::now();
    let r = get(local(plain), "/silent", &[]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(t.elapsed() < std::time::Duration::from_secs(3), "took {:?}", t.elapsed());
    assert_eq!(stat(&proxy, "cluster.silent.upstream_cx_connect_timeout"), 1);
    drop(silent_upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_describes_the_mtls_client() {
    let pki = MeshPki::new();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    let admin = pinion_testkit::free_port();
    let (append, set) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let common = || common_tls(Some(&pki.server), Some(&pki.ca), Some(&spiffe("client")), &["http/1.1"]);
    let details = json!({ "subject": true, "uri": true, "dns": true });
    let l = |name: &str, port: u16, mode: &str| {
        let extra = json!({ "forward_client_cert_details": mode, "set_current_client_cert_details": details });
        tls_listener(name, port, hcm(name, route_all_to("backend"), extra), downstream_tls(common(), true))
    };
    let bootstrap = bootstrap(
        admin,
        vec![l("append", append, "APPEND_FORWARD"), l("set", set, "SANITIZE_SET")],
        vec![cluster("backend", backend.addr, json!({}))],
    );
    let _proxy = start(&bootstrap, &["--concurrency", "1"]);
    // Envoy's element: By = this proxy's URI SAN, Hash = SHA-256 of the client's leaf (hex),
    // then Subject (empty for a SPIFFE leaf), URI and DNS (none) SANs.
    let leaf = certs(&pki.client.cert_pem).remove(0);
    let hash: String = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let element = format!("By={};Hash={hash};Subject=\"\";URI={}", spiffe("server"), spiffe("client"));
    let send = |port: u16| {
        let config = client_config(&pki, Some(&pki.client), &["http/1.1"]);
        async move {
            // The client's own XFCC header, forged or from an earlier hop.
            let tcp = connect(local(port)).await;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/")
                .header("host", "localhost")
                .header("x-forwarded-client-cert", "By=spiffe://earlier;URI=spiffe://someone")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = s.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let seen: Value = serde_json::from_slice(&body).unwrap();
            seen["headers"]["x-forwarded-client-cert"].as_str().map(str::to_string)
        }
    };
    assert_eq!(send(append).await, Some(format!("By=spiffe://earlier;URI=spiffe://someone,{element}")));
    assert_eq!(send(set).await, Some(element));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_behind_a_tls_filter_chain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = MeshPki::new();
    let echo = spawn_tcp_echo();
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let ts = downstream_tls(common_tls(Some(&pki.server), None, None, &[]), false);
    let bootstrap = bootstrap(
        admin,
        vec![tls_listener("tcp", port, tcp_proxy("tcp", "echo"), ts)],
        vec![cluster("echo", echo, json!({}))],
    );
    let proxy = start(&bootstrap, &["--concurrency", "1"]);
    let tcp = connect(local(port)).await;
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&pki, None, &[]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"ping over tls").await.unwrap();
    let mut buf = [0u8; 13];
    tokio::time::timeout(IO_TIMEOUT, tls.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"ping over tls");
    assert_eq!(listener_stat(&proxy, port, "ssl.handshake"), 1);
}
