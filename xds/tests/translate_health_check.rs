//! Translation of `Cluster.health_checks` and `Endpoint.health_check_config`: Envoy's
//! defaults, its semantic errors (with its wording), and what Pinion refuses.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as c;
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use pinion_xds::model::{self, HealthChecker};
use pinion_xds::translate::cluster;

/// A STATIC cluster (HTTP/2 when `h2`) with one endpoint and `hc` as its health check.
fn translate(hc: &str, h2: bool, endpoint_extra: &str) -> Result<model::Cluster, pinion_xds::ConfigError> {
    let h2 = if h2 { "http2_protocol_options: {}\n" } else { "" };
    let yaml = format!(
        "name: svc\ntype: STATIC\nconnect_timeout: 1s\n{h2}load_assignment:\n  cluster_name: svc\n  endpoints:\n  - lb_endpoints:\n    - endpoint:\n        address: {{ socket_address: {{ address: 127.0.0.1, port_value: 80 }} }}\n{endpoint_extra}health_checks:\n- {hc}\n"
    );
    let proto: c::Cluster = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default()).expect("decodes");
    cluster(&proto)
}

const BASE: &str = "timeout: 1s, interval: 2s, unhealthy_threshold: 3, healthy_threshold: 2";

fn ok(hc: &str) -> model::HealthCheck {
    translate(&format!("{{ {BASE}, {hc} }}"), true, "").unwrap().health_check.expect("health check")
}

fn err(hc: &str, h2: bool) -> String {
    translate(&format!("{{ {BASE}, {hc} }}"), h2, "").unwrap_err().to_string()
}

#[test]
fn defaults_follow_envoy() {
    let hc = ok("http_health_check: { path: /healthz }");
    assert_eq!((hc.timeout, hc.interval), (Duration::from_secs(1), Duration::from_secs(2)));
    assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (3, 2));
    assert!(hc.reuse_connection);
    assert_eq!(hc.no_traffic_interval, Duration::from_secs(60));
    assert_eq!(hc.no_traffic_healthy_interval, Duration::from_secs(60));
    // unhealthy_interval and healthy_edge_interval default to interval, unhealthy_edge_interval
    // to unhealthy_interval.
    assert_eq!(
        (hc.unhealthy_interval, hc.unhealthy_edge_interval, hc.healthy_edge_interval),
        (hc.interval, hc.interval, hc.interval)
    );
    let HealthChecker::Http(h) = &hc.checker else { panic!("http") };
    assert_eq!(h.expected_statuses, [(200, 201)]);
    assert_eq!(h.method, http::Method::GET);
    assert_eq!(h.codec, model::HealthCheckCodec::Http1);

    let hc = ok("unhealthy_interval: 5s, no_traffic_interval: 7s, tcp_health_check: {}");
    assert_eq!(
        (hc.unhealthy_edge_interval, hc.no_traffic_healthy_interval),
        (Duration::from_secs(5), Duration::from_secs(7))
    );
}

#[test]
fn checkers_translate() {
    let hc = ok("http_health_check: { path: /h, host: hc.example, codec_client_type: HTTP2, expected_statuses: [{ start: 200, end: 300 }], retriable_statuses: [{ start: 503, end: 504 }], request_headers_to_add: [{ header: { key: x-hc, value: '1' } }], request_headers_to_remove: [X-Drop], service_name_matcher: { prefix: svc } }");
    let HealthChecker::Http(h) = &hc.checker else { panic!("http") };
    assert_eq!((h.host.as_str(), h.codec), ("hc.example", model::HealthCheckCodec::Http2));
    assert_eq!(
        (h.expected_statuses.as_slice(), h.retriable_statuses.as_slice()),
        (&[(200, 300)][..], &[(503, 504)][..])
    );
    assert_eq!(h.request_headers_to_remove, ["x-drop"]);
    assert!(h.service_name_matcher.is_some());

    let hc = ok("tcp_health_check: { send: { text: '50494e47' }, receive: [{ text: '504f' }, { binary: Tkc= }] }");
    let HealthChecker::Tcp(t) = &hc.checker else { panic!("tcp") };
    assert_eq!((t.send.as_slice(), t.receive.clone()), (&b"PING"[..], vec![b"PO".to_vec(), b"NG".to_vec()]));
    // Envoy 1.40 only writes a `send` given as text.
    let hc = ok("tcp_health_check: { send: { binary: UElORw== }, receive: [{ text: '504f' }] }");
    let HealthChecker::Tcp(t) = &hc.checker else { panic!("tcp") };
    assert!(t.send.is_empty());

    let hc = ok("grpc_health_check: { service_name: pkg.Svc, authority: grpc.example }");
    let HealthChecker::Grpc(g) = &hc.checker else { panic!("grpc") };
    assert_eq!((g.service_name.as_deref(), g.authority.as_str()), (Some("pkg.Svc"), "grpc.example"));
}

#[test]
fn envoy_semantic_errors() {
    let cases = [
        (
            "http_health_check: { path: /, expected_statuses: [{ start: 200, end: 200 }] }",
            true,
            "Invalid http expected status range: expecting start < end, but found start=200 and end=200",
        ),
        (
            "http_health_check: { path: /, retriable_statuses: [{ start: 99, end: 200 }] }",
            true,
            "expecting start >= 100",
        ),
        ("http_health_check: { path: /, expected_statuses: [{ start: 200, end: 601 }] }", true, "expecting end <= 600"),
        ("tcp_health_check: { send: { text: zz } }", true, "invalid hex string 'zz'"),
        ("grpc_health_check: {}", false, "svc cluster must support HTTP/2 for gRPC healthchecking"),
    ];
    for (hc, h2, want) in cases {
        let e = err(hc, h2);
        assert!(e.contains(want), "{hc}: {e}");
    }
}

#[test]
fn unsupported_fields_are_refused_by_path() {
    let cases = [
        ("event_log_path: /tmp/hc.log, tcp_health_check: {}", "health_checks[0].event_log_path"),
        ("tls_options: { alpn_protocols: [h2] }, tcp_health_check: {}", "health_checks[0].tls_options"),
        ("transport_socket_match_criteria: { key: v }, tcp_health_check: {}", "health_checks[0].transport_socket_match_criteria"),
        ("custom_health_check: { name: envoy.health_checkers.redis }", "health_checks[0].custom_health_check"),
        ("http_health_check: { path: /, send: { text: '00' } }", "health_checks[0].http_health_check.send"),
        ("http_health_check: { path: /, receive: [{ text: '00' }] }", "health_checks[0].http_health_check.receive"),
        ("http_health_check: { path: /, codec_client_type: HTTP3 }", "health_checks[0].http_health_check.codec_client_type"),
        (
            "http_health_check: { path: /, request_headers_to_add: [{ header: { key: x, value: '%UPSTREAM_REMOTE_ADDRESS%' } }] }",
            "health_checks[0].http_health_check.request_headers_to_add[0].header.value",
        ),
        ("tcp_health_check: { proxy_protocol_config: {} }", "health_checks[0].tcp_health_check.proxy_protocol_config"),
    ];
    for (hc, path) in cases {
        let e = err(hc, true);
        assert!(e.starts_with(&format!("{path}: unsupported")), "{hc}: {e}");
    }
    let two = format!("{{ {BASE}, tcp_health_check: {{}} }}\n- {{ {BASE}, tcp_health_check: {{}} }}");
    let e = translate(&two, false, "").unwrap_err().to_string();
    assert!(e.starts_with("health_checks: unsupported"), "{e}");
}

#[test]
fn endpoint_health_check_config() {
    let extra =
        "        health_check_config: { port_value: 8081, hostname: hc.example, disable_active_health_check: true }\n";
    let m = translate(&format!("{{ {BASE}, tcp_health_check: {{}} }}"), false, extra).unwrap();
    let ep = &m.load_assignment.localities[0].endpoints[0];
    assert_eq!(
        ep.health_check,
        model::EndpointHealthCheck { port: 8081, hostname: "hc.example".into(), disabled: true }
    );
    let extra = "        health_check_config: { address: { socket_address: { address: 127.0.0.2, port_value: 1 } } }\n";
    let e = translate(&format!("{{ {BASE}, tcp_health_check: {{}} }}"), false, extra).unwrap_err().to_string();
    assert!(e.contains("endpoint.health_check_config.address: unsupported"), "{e}");
}
