//! Per-core workers and graceful drain of the `pinion` binary (issue 2, acceptance 4 and 5).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use pinion_testkit::{free_port, spawn_http_backend, Backend, BackendKind, ProxyProcess};
use serde_json::json;

fn setup(args: &[&str]) -> (ProxyProcess, SocketAddr, u16, Backend) {
    let backend = spawn_http_backend(BackendKind::Http1);
    let (admin, port) = (free_port(), free_port());
    let b = bootstrap(
        admin,
        vec![listener("ingress", port, hcm("ingress_http", route_all_to("backend"), json!({})))],
        vec![cluster("backend", backend.addr, json!({}))],
    );
    (start(&b, args), local(port), port, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_workers_accept_connections() {
    let (proxy, addr, port, _backend) = setup(&["--concurrency", "2"]);
    let n = 64;
    for i in 0..n {
        // A new connection per request, so the kernel spreads them over both sockets.
        let r = get(addr, &format!("/worker/{i}"), &[("connection", "close")]).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let prefix = format!("listener.127.0.0.1_{port}");
    let w0 = stat(&proxy, &format!("{prefix}.worker_0.downstream_cx_total"));
    let w1 = stat(&proxy, &format!("{prefix}.worker_1.downstream_cx_total"));
    assert!(w0 > 0 && w1 > 0, "worker_0: {w0}, worker_1: {w1}");
    assert_eq!(w0 + w1, n, "per-worker counters must add up to the connections made");
    assert_eq!(stat(&proxy, &format!("{prefix}.downstream_cx_total")), n);
    assert_eq!(stat(&proxy, "http.ingress_http.downstream_rq_2xx"), n);
    assert_eq!(stat(&proxy, "server.concurrency"), 2);
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Sent on an established connection, then no complete 2xx response.
    lost: AtomicU64,
    /// Connections refused (listener closed): expected once draining.
    refused: AtomicU64,
    /// Connections the proxy closed before a request was written on them.
    closed_before_send: AtomicU64,
}

/// One client: requests in a loop until `stop`, reconnecting when the proxy closes the
/// connection (`Connection: close` during drain) and stopping once connections are refused.
async fn client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
) {
    'conns: while !stop.load(Ordering::Relaxed) {
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake::<_, Body>(io).await else { continue };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        while !stop.load(Ordering::Relaxed) {
            if tx.ready().await.is_err() {
                tally.closed_before_send.fetch_add(1, Ordering::Relaxed);
                continue 'conns;
            }
            let req = Request::get("/delay/20").header("host", "a").body(full(bytes::Bytes::new())).unwrap();
            let exchange = async {
                let resp = tx.try_send_request(req).await;
                match resp {
                    Ok(resp) => {
                        let status = resp.status();
                        let close = resp.headers().get("connection").is_some_and(|v| v == "close");
                        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                        Ok((status, close, body.is_ok()))
                    }
                    Err(mut e) => Err((e.take_message().is_some(), e.into_error().to_string())),
                }
            };
            match tokio::time::timeout(Duration::from_secs(15), exchange).await {
                Ok(Ok((status, close, body_ok))) => {
                    if status.is_success() && body_ok {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("status {status}, body complete: {body_ok}"));
                    }
                    if close {
                        continue 'conns;
                    }
                }
                // hyper gave the request back: it was never written, nothing was accepted.
                Ok(Err((true, _))) => {
                    tally.closed_before_send.fetch_add(1, Ordering::Relaxed);
                    continue 'conns;
                }
                Ok(Err((false, e))) => {
                    tally.lost.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap().push(e);
                    continue 'conns;
                }
                Err(_) => {
                    tally.lost.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap().push("no response within 15 s".into());
                    continue 'conns;
                }
            }
        }
    }
}

fn sigterm(pid: u32) {
    let st = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill(1)");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_request() {
    let (mut proxy, addr, _port, backend) = setup(&["--concurrency", "2", "--drain-time-s", "5"]);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> =
        (0..8).map(|_| tokio::spawn(client(addr, stop.clone(), tally.clone(), errors.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "no request succeeded before SIGTERM");
    let pid = proxy.pid().expect("pid");
    sigterm(pid);
    let terminated = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(20), c).await.expect("client ends").unwrap();
    }
    let status = wait_for_async(Duration::from_secs(10), "proxy exit after SIGTERM", || proxy.try_exit_status()).await;
    let t = &tally;
    let summary = format!(
        "ok {} (before SIGTERM {before}), lost {}, refused {}, closed before send {}, backend hits {}, exit after {:?}",
        t.ok.load(Ordering::Relaxed),
        t.lost.load(Ordering::Relaxed),
        t.refused.load(Ordering::Relaxed),
        t.closed_before_send.load(Ordering::Relaxed),
        backend.hit_count(),
        terminated.elapsed(),
    );
    println!("{summary}");
    assert_eq!(t.lost.load(Ordering::Relaxed), 0, "{summary}\n{:?}", errors.lock().unwrap());
    assert_eq!(status.code(), Some(0), "{summary}\n{}", proxy.logs());
    // Every request the backend answered reached its client.
    assert_eq!(backend.hit_count(), t.ok.load(Ordering::Relaxed), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_stops_new_connections_but_finishes_in_flight() {
    let (proxy, addr, _port, _backend) = setup(&["--concurrency", "1", "--drain-time-s", "5"]);
    let mut conn = Conn::open(addr, Proto::H1).await;
    let in_flight = tokio::spawn(async move { conn.get("/delay/1000", &[]).await.status });
    // Let the request reach the proxy.
    let admin = local(proxy.admin_port().expect("admin port"));
    wait_for_async(Duration::from_secs(5), "request in flight", || {
        (stat(&proxy, "http.ingress_http.downstream_rq_active") == 1).then_some(())
    })
    .await;
    let (code, _) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /drain_listeners HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0), out)
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    // New connections are refused (or closed unanswered) once the listener is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = match tokio::net::TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(s) => {
                let mut r = tokio::io::BufReader::new(s);
                tokio::io::AsyncWriteExt::write_all(r.get_mut(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.ok();
                tokio::time::timeout(Duration::from_secs(2), async { read_response(&mut r).await })
                    .await
                    .ok()
                    .flatten()
                    .is_none()
            }
        };
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "listener still serves new connections 5 s after /drain_listeners");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status =
        tokio::time::timeout(Duration::from_secs(10), in_flight).await.expect("in-flight request ends").unwrap();
    assert_eq!(status, 200, "the in-flight request must complete");
}
