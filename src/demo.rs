//! `pinion demo`: two built-in backends and a sidecar on a built-in bootstrap, plus a few
//! sample requests printed so a user sees the mesh work.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

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

/// The demo bootstrap: `/` split 80/20 across the two backends, `/a` and `/b` pinned, a
/// direct response at `/healthz`, and an access log on stdout.
pub fn bootstrap(port: u16, admin_port: u16, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
node: {{ id: demo-sidecar, cluster: demo }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
          route_config:
            name: demo
            virtual_hosts:
            - name: demo
              domains: ["*"]
              routes:
              - match: {{ path: /healthz }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok\n" }} }}
              - match: {{ prefix: /a }}
                route: {{ cluster: service-a }}
              - match: {{ prefix: /b }}
                route: {{ cluster: service-b }}
              - match: {{ prefix: / }}
                route:
                  weighted_clusters:
                    clusters:
                    - {{ name: service-a, weight: 80 }}
                    - {{ name: service-b, weight: 20 }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: service-a
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: service-a
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {a_ip}, port_value: {a_port} }} }} }}
  - name: service-b
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: service-b
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {b_ip}, port_value: {b_port} }} }} }}
"#,
        a_ip = a.ip(),
        a_port = a.port(),
        b_ip = b.ip(),
        b_port = b.port(),
    )
}

fn http_get(addr: SocketAddr, path: &str, method: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return "connect failed".into() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "{method} {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Run the demo; returns the exit code.
pub fn run(port: u16, admin_port: u16, duration_s: u64, mut opts: Options, log: LogHandle) -> i32 {
    let (a, b) = match (spawn_backend("service-a"), spawn_backend("service-b")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("demo: cannot start backends: {e}");
            return 1;
        }
    };
    opts.config_yaml = Some(bootstrap(port, admin_port, a, b));
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
        // Wait for the sidecar, then show a few requests through it.
        for _ in 0..100 {
            if http_get(admin, "/ready", "GET").starts_with("HTTP/1.1 200") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("\nPinion demo mesh is up: backends service-a ({a}) and service-b ({b}) behind a sidecar on {proxy}.");
        println!("Sample requests through the sidecar:");
        for path in ["/a/hello", "/b/hello", "/", "/", "/", "/healthz"] {
            let resp = http_get(proxy, path, "GET");
            let status = resp.lines().next().unwrap_or("").to_string();
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
            println!("  GET {path:<10} -> {status:<16} {body}");
        }
        println!("\nTry it yourself:");
        println!("  curl -v http://{proxy}/            # 80/20 split across service-a and service-b");
        println!("  curl http://{proxy}/b/anything     # pinned to service-b");
        println!("  curl --http2-prior-knowledge http://{proxy}/a   # h2c works too");
        println!("  curl http://{admin}/stats/prometheus | grep upstream_rq_total");
        println!("  curl http://{admin}/clusters");
        println!("Press Ctrl-C to stop.\n");
        if duration_s > 0 {
            std::thread::sleep(Duration::from_secs(duration_s));
            let _ = http_get(admin, "/quitquitquit", "POST");
        }
    });
    crate::server::run(opts, log)
}
