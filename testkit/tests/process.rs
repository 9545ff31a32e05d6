//! ProxyProcess against the real Envoy: spawn, readiness, admin, several at once, cleanup.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pinion_testkit::{free_port, http_get_blocking, ProxyKind, ProxyProcess};

fn bootstrap(admin: u16, listen: u16) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "hi" }} }}
"#
    )
}

#[test]
fn envoy_starts_serves_and_is_reaped() {
    let (a1, l1, a2, l2) = (free_port(), free_port(), free_port(), free_port());
    // Two at once: --base-id must differ for them to coexist.
    let mut e1 = ProxyProcess::spawn(ProxyKind::Envoy, &bootstrap(a1, l1), &[]);
    let mut e2 = ProxyProcess::spawn(ProxyKind::Envoy, &bootstrap(a2, l2), &["--concurrency", "2"]);
    e1.wait_ready(a1, Duration::from_secs(30)).unwrap();
    e2.wait_ready(a2, Duration::from_secs(30)).unwrap();
    assert_eq!(e1.admin_port(), Some(a1));

    for l in [l1, l2] {
        let (code, body) =
            http_get_blocking(SocketAddr::from(([127, 0, 0, 1], l)), "/x", Duration::from_secs(5)).unwrap();
        assert_eq!((code, body.as_str()), (200, "hi"));
    }
    let stats = e1.stats();
    assert!(stats.contains("http.t.downstream_rq_total: 1"), "{stats}");
    assert_eq!(e1.stat("http.t.downstream_rq_2xx"), Some(1));
    let (code, info) = e2.admin_get("/server_info").unwrap();
    assert_eq!(code, 200);
    assert!(info.contains("\"concurrency\": 2"), "{info}");

    let pid = e1.pid().unwrap();
    e1.kill();
    assert!(e1.pid().is_none());
    // Reaped: no /proc entry (a zombie would still have one).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(e2);
}

#[test]
fn bad_bootstrap_fails_fast_with_logs() {
    let admin = free_port();
    let mut p = ProxyProcess::spawn(ProxyKind::Envoy, "admin: [not, a, map]\n", &[]);
    let err = p.wait_ready(admin, Duration::from_secs(30)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("exited before ready"), "{msg}");
    assert!(msg.contains("stderr"), "{msg}");
}
