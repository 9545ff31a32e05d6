//! Upstream HTTP/2 honours the peer's SETTINGS_MAX_CONCURRENT_STREAMS: past it the pool
//! opens another connection instead of queueing streams on a full one. Also IPv6 listeners
//! and upstreams.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// An h2c server that allows `max_streams` concurrent streams per connection, answers each
/// request after `delay`, and counts connections and the peak of concurrent requests.
fn spawn_limited_h2(max_streams: u32, delay: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    spawn_limited_h2_at("127.0.0.1:0".parse().unwrap(), max_streams, delay)
}

/// [`spawn_limited_h2`] on a given address.
fn spawn_limited_h2_at(
    at: std::net::SocketAddr,
    max_streams: u32,
    delay: Duration,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let peak_per_conn = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind(at).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, p) = (conns.clone(), peak_per_conn.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let active = Arc::new(AtomicUsize::new(0));
                let p = p.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                        let (active, p) = (active.clone(), p.clone());
                        async move {
                            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                            p.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            active.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(max_streams)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (addr, conns, peak_per_conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_respects_peer_max_concurrent_streams() {
    use_this_binary();
    let (backend, conns, peak) = spawn_limited_h2(2, Duration::from_millis(300));
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let bootstrap = bootstrap(
        admin,
        vec![listener("main", port, hcm("main", route_all_to("limited"), json!({})))],
        vec![cluster("limited", backend, h2_upstream(json!({})))],
    );
    let proxy = start(&bootstrap, &["--concurrency", "1"]);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(async move { get(local(port), "/", &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}\n{}", String::from_utf8_lossy(&r.body), proxy.logs());
    }
    // 10 concurrent requests, 2 streams per connection: at least 5 connections, and no
    // connection ever carried more than the peer allowed.
    assert!(conns.load(Ordering::SeqCst) >= 5, "only {} upstream connections", conns.load(Ordering::SeqCst));
    assert!(peak.load(Ordering::SeqCst) <= 2, "a connection carried {} streams", peak.load(Ordering::SeqCst));
    assert!(stat(&proxy, "cluster.limited.upstream_cx_http2_total") >= 5);
}

/// Listeners and upstreams on IPv6 loopback work like IPv4 ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_upstream() {
    use_this_binary();
    let backend = pinion_testkit::spawn_http_backend(pinion_testkit::BackendKind::Http1);
    // An IPv6 upstream: a tiny h2c server on [::1] (the testkit backends bind IPv4).
    let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let v6_addr = v6.local_addr().unwrap();
    drop(v6);
    let (v6_backend, _, _) = spawn_limited_h2_at(v6_addr, 100, Duration::from_millis(0));
    let (port, admin) = (pinion_testkit::free_port(), pinion_testkit::free_port());
    let mut l = listener("v6", port, hcm("v6", route_all_to("v4"), json!({})));
    l["address"]["socket_address"]["address"] = json!("::1");
    let mut l2 = listener("v4", pinion_testkit::free_port(), hcm("to_v6", route_all_to("v6up"), json!({})));
    let l2_port = l2["address"]["socket_address"]["port_value"].as_u64().unwrap() as u16;
    l2["address"]["socket_address"]["address"] = json!("127.0.0.1");
    let bootstrap = bootstrap(
        admin,
        vec![l, l2],
        vec![cluster("v4", backend.addr, json!({})), cluster("v6up", v6_backend, h2_upstream(json!({})))],
    );
    let _proxy = start(&bootstrap, &["--concurrency", "1"]);
    let r = get(std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), "/v6-in", &[]).await;
    assert_eq!(r.status, 200);
    let r = get(local(l2_port), "/v6-out", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"ok");
}
