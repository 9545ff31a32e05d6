//! `pinion demo`: a small mesh in one process: an embedded xDS control plane, three
//! backends, and a sidecar that gets all of its config over ADS. A script pushes two config
//! changes (a weight shift and an endpoint move) and prints what the traffic does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use pinion_xds::control_plane::{ControlPlane, Snapshot};
use pinion_xds::sink::ResourceType;

use crate::cli::Options;
use crate::logging::LogHandle;

/// Start a tiny HTTP/1.1 + h2c backend named `name` on an ephemeral port (own thread).
fn spawn_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name(format!("demo-{name}")).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("hello from {name}: {} {}\n", req.method(), req.uri().path());
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    })?;
    Ok(addr)
}

const NODE: &str = "demo-sidecar";

/// One version of the demo mesh as the control plane serves it: `/` split across service-a
/// and service-b by `weights`, `/a` and `/b` pinned, `/healthz` answered by the sidecar.
fn snapshot(version: &str, port: u16, weights: (u32, u32), a: &[SocketAddr], b: &[SocketAddr]) -> Snapshot {
    let eps = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|x| {
                format!(
                    "  - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
                    x.ip(),
                    x.port()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cluster = |name: &str| {
        format!("name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n")
    };
    let cla = |name: &str, addrs: &[SocketAddr]| {
        format!("cluster_name: {name}\nendpoints:\n- lb_endpoints:\n{}\n", eps(addrs))
    };
    let route = format!(
        r#"
name: demo
virtual_hosts:
- name: demo
  domains: ["*"]
  routes:
  - match: {{ path: /healthz }}
    direct_response: {{ status: 200, body: {{ inline_string: "ok (config {version})" }} }}
  - match: {{ prefix: /a }}
    route: {{ cluster: service-a }}
  - match: {{ prefix: /b }}
    route: {{ cluster: service-b }}
  - match: {{ prefix: / }}
    route:
      weighted_clusters:
        clusters:
        - {{ name: service-a, weight: {wa} }}
        - {{ name: service-b, weight: {wb} }}
"#,
        wa = weights.0,
        wb = weights.1,
    );
    let build = || -> Result<Snapshot, pinion_xds::ConfigError> {
        Ok(Snapshot::new(version)
            .with_yaml(ResourceType::Cluster, &cluster("service-a"))?
            .with_yaml(ResourceType::Cluster, &cluster("service-b"))?
            .with_yaml(ResourceType::ClusterLoadAssignment, &cla("service-a", a))?
            .with_yaml(ResourceType::ClusterLoadAssignment, &cla("service-b", b))?
            .with_yaml(ResourceType::RouteConfiguration, &route)?
            .with_listener(pinion_xds::control_plane::hcm_listener(
                "ingress",
                port,
                "ingress_http",
                "rds: { route_config_name: demo, config_source: { ads: {}, resource_api_version: V3 } }",
                &[],
            )?))
    };
    build().unwrap_or_else(|e| panic!("demo snapshot {version} is invalid: {e}"))
}

fn http_get(addr: SocketAddr, path: &str, method: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return "connect failed".into() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "{method} {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Send `n` requests to `path` and count answers per backend.
fn sample(proxy: SocketAddr, path: &str, n: usize) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..n {
        let resp = http_get(proxy, path, "GET");
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
        let who = body.split(':').next().unwrap_or("").trim_start_matches("hello from ").to_string();
        *counts
            .entry(if who.is_empty() { resp.lines().next().unwrap_or("no answer").to_string() } else { who })
            .or_default() += 1;
    }
    counts.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", ")
}

/// Wait until the sidecar ACKed `version` of every type (bounded).
fn wait_ack(cp: &ControlPlane, version: &str) -> bool {
    let types = [
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
    ];
    for _ in 0..200 {
        if types.iter().all(|t| cp.last_ack_version(NODE, t.type_url()).as_deref() == Some(version)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Run the demo; returns the exit code.
pub fn run(port: u16, admin_port: u16, duration_s: u64, mut opts: Options, log: LogHandle) -> i32 {
    let backends = (spawn_backend("service-a/1"), spawn_backend("service-a/2"), spawn_backend("service-b"));
    let (a1, a2, b) = match backends {
        (Ok(a1), Ok(a2), Ok(b)) => (a1, a2, b),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("demo: cannot start backends: {e}");
            return 1;
        }
    };
    // The embedded control plane runs on its own thread and runtime.
    let cp = ControlPlane::new();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let cp = cp.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                match cp.serve(([127, 0, 0, 1], 0).into()) {
                    Ok((addr, shutdown)) => {
                        let _ = tx.send(Ok(addr));
                        std::future::pending::<()>().await;
                        drop(shutdown);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
    }
    let xds = match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            eprintln!("demo: control plane failed to start: {e}");
            return 1;
        }
        Err(_) => {
            eprintln!("demo: control plane did not start");
            return 1;
        }
    };
    cp.set_snapshot(NODE, snapshot("1", port, (80, 20), &[a1], &[b]));
    opts.config_yaml = Some(pinion_xds::control_plane::ads_bootstrap(NODE, admin_port, xds, "GRPC"));
    opts.config_path = None;
    if opts.concurrency.is_none() {
        opts.concurrency = Some(2);
    }
    if opts.drain_time_s == 600 {
        opts.drain_time_s = 2;
    }
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    std::thread::spawn(move || {
        for _ in 0..200 {
            if http_get(admin, "/ready", "GET").starts_with("HTTP/1.1 200") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("\nPinion demo mesh: an embedded xDS control plane ({xds}), backends service-a/1 ({a1}),");
        println!("service-a/2 ({a2}) and service-b ({b}), and a sidecar on {proxy} configured only over ADS.");
        println!("\n[config 1] / split 80/20 between service-a and service-b; service-a = service-a/1");
        println!("  20 x GET /    -> {}", sample(proxy, "/", 20));
        println!(
            "  GET /healthz  -> {}",
            http_get(proxy, "/healthz", "GET").split("\r\n\r\n").nth(1).unwrap_or("").trim()
        );

        cp.set_snapshot(NODE, snapshot("2", port, (0, 100), &[a2], &[b]));
        let acked = wait_ack(&cp, "2");
        println!("\n[config 2 pushed, ACKed by the sidecar: {acked}] weights shift to 0/100; service-a's endpoint moves to service-a/2");
        println!("  20 x GET /    -> {}", sample(proxy, "/", 20));
        println!("  10 x GET /a   -> {}", sample(proxy, "/a", 10));

        cp.set_snapshot(NODE, snapshot("3", port, (50, 50), &[a1, a2], &[b]));
        let acked = wait_ack(&cp, "3");
        println!("\n[config 3 pushed, ACKed: {acked}] 50/50, service-a has both endpoints (round robin)");
        println!("  20 x GET /    -> {}", sample(proxy, "/", 20));
        println!("\nTry it yourself:");
        println!("  curl -v http://{proxy}/");
        println!("  curl --http2-prior-knowledge http://{proxy}/a");
        println!("  curl http://{admin}/config_dump      # dynamic listeners/clusters/routes with versions");
        println!("  curl http://{admin}/clusters");
        println!("  curl http://{admin}/stats/prometheus | grep -E 'upstream_rq_total|update_success'");
        if duration_s > 0 {
            std::thread::sleep(Duration::from_secs(duration_s));
            let _ = http_get(admin, "/quitquitquit", "POST");
        } else {
            println!("Press Ctrl-C to stop.\n");
        }
    });
    crate::server::run(opts, log)
}
