//! gRPC access logs (issue 3): `envoy.access_loggers.http_grpc` on an HTTP connection manager
//! and `envoy.access_loggers.tcp_grpc` on a tcp_proxy stream `StreamAccessLogsMessage`s to an
//! access log service reached through a static HTTP/2 cluster. The service here is an
//! in-process tonic server that records every message.
//!
//! `PINION_TESTS_AGAINST=envoy` runs the streaming tests against the real Envoy.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use envoy_types::pb::envoy::data::accesslog::v3::{HttpAccessLogEntry, TcpAccessLogEntry};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
use pinion_testkit::{free_port, spawn_http_backend, BackendKind};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every message one ALS server received, with the index of the stream it came on.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(usize, StreamAccessLogsMessage)>>>, Arc<Mutex<usize>>);

impl Recorded {
    fn messages(&self) -> Vec<(usize, StreamAccessLogsMessage)> {
        self.0.lock().expect("lock").clone()
    }

    fn http_entries(&self) -> Vec<HttpAccessLogEntry> {
        self.messages()
            .into_iter()
            .filter_map(|(_, m)| match m.log_entries {
                Some(LogEntries::HttpLogs(h)) => Some(h.log_entry),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn tcp_entries(&self) -> Vec<TcpAccessLogEntry> {
        self.messages()
            .into_iter()
            .filter_map(|(_, m)| match m.log_entries {
                Some(LogEntries::TcpLogs(t)) => Some(t.log_entry),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

#[tonic::async_trait]
impl AccessLogService for Recorded {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let stream_index = {
            let mut n = self.1.lock().expect("lock");
            *n += 1;
            *n
        };
        let mut s = request.into_inner();
        while let Some(m) = s.message().await? {
            self.0.lock().expect("lock").push((stream_index, m));
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}

/// Start an ALS server on its own thread and runtime (lives as long as the test process).
fn spawn_als() -> (SocketAddr, Recorded) {
    spawn_als_on(std::net::TcpListener::bind("127.0.0.1:0").expect("bind als"))
}

fn spawn_als_on(l: std::net::TcpListener) -> (SocketAddr, Recorded) {
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    let rec = Recorded::default();
    let svc = rec.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let incoming = tonic::transport::server::TcpIncoming::from(l);
            let _ = tonic::transport::Server::builder()
                .add_service(AccessLogServiceServer::new(svc))
                .serve_with_incoming(incoming)
                .await;
        });
    });
    (addr, rec)
}

fn grpc_logger(kind: &str, log_name: &str, extra: Value) -> Value {
    let (name, ty) = match kind {
        "http" => ("envoy.access_loggers.http_grpc", "HttpGrpcAccessLogConfig"),
        _ => ("envoy.access_loggers.tcp_grpc", "TcpGrpcAccessLogConfig"),
    };
    json!({
        "name": name,
        "typed_config": merged(json!({
            "@type": format!("type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.{ty}"),
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "buffer_flush_interval": "0.1s",
                "grpc_service": { "envoy_grpc": { "cluster_name": "als" } },
            },
        }), extra),
    })
}

fn with_node(bootstrap: String, id: &str) -> String {
    let mut v: Value = serde_json::from_str(&bootstrap).expect("json");
    v["node"] = json!({ "id": id, "cluster": "test-cluster" });
    serde_json::to_string_pretty(&v).expect("json")
}

fn wait_entries<T>(what: &str, mut f: impl FnMut() -> Vec<T>, n: usize) -> Vec<T> {
    wait_for(Duration::from_secs(15), what, || {
        let v = f();
        (v.len() >= n).then_some(v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_grpc_access_log_streams_entries() {
    let (als_addr, rec) = spawn_als();
    let backend = spawn_http_backend(BackendKind::Http1);
    let admin = free_port();
    let port = free_port();
    let routes = json!({
        "name": "routes",
        "virtual_hosts": [{ "name": "svc", "domains": ["svc.test"], "routes": [
            { "match": { "prefix": "/" }, "route": { "cluster": "backend" }, "name": "to_backend" }
        ]}]
    });
    let hcm = hcm(
        "ingress",
        routes,
        json!({ "access_log": [grpc_logger("http", "hcm_log", json!({
            "additional_request_headers_to_log": ["x-log-me"],
            "additional_response_headers_to_log": ["content-type"],
        }))] }),
    );
    let b = with_node(
        bootstrap(
            admin,
            vec![listener("http", port, hcm)],
            vec![cluster("backend", backend.addr, json!({})), cluster("als", als_addr, h2_upstream(json!({})))],
        ),
        "node-http",
    );
    let _proxy = start(&b, &[]);
    let addr = local(port);

    let ok = get(addr, "/hello?x=1", &[("host", "svc.test"), ("x-log-me", "yes"), ("user-agent", "als-test")]).await;
    assert_eq!(ok.status, 200);
    let nr = get(addr, "/missing", &[("host", "nowhere.test")]).await;
    assert_eq!(nr.status, 404);

    let entries = wait_entries("two http entries", || rec.http_entries(), 2);
    let msgs = rec.messages();
    let (first_stream, first) = &msgs[0];
    let id = first.identifier.as_ref().expect("identifier on the first message");
    assert_eq!(id.log_name, "hcm_log");
    let node = id.node.as_ref().expect("node");
    assert_eq!(node.id, "node-http");
    assert_eq!(node.cluster, "test-cluster");
    // Only the first message of a stream carries the identifier.
    for (stream, m) in &msgs[1..] {
        if stream == first_stream {
            assert!(m.identifier.is_none(), "identifier repeated on the same stream");
        }
    }

    let find = |path: &str| {
        entries
            .iter()
            .find(|e| e.request.as_ref().is_some_and(|r| r.path == path))
            .unwrap_or_else(|| panic!("no entry for {path}: {entries:#?}"))
            .clone()
    };
    let e = find("/hello?x=1");
    let req = e.request.clone().expect("request");
    let resp = e.response.clone().expect("response");
    let c = e.common_properties.clone().expect("common");
    assert_eq!(req.request_method, RequestMethod::Get as i32);
    assert_eq!(req.authority, "svc.test");
    assert_eq!(req.user_agent, "als-test");
    assert_eq!(req.scheme, "http");
    assert!(!req.request_id.is_empty());
    assert_eq!(req.request_headers.get("x-log-me").map(String::as_str), Some("yes"));
    assert_eq!(resp.response_code.map(|c| c.value), Some(200));
    assert!(resp.response_headers.contains_key("content-type"), "{resp:?}");
    assert!(resp.response_body_bytes > 0);
    assert_eq!(c.upstream_cluster, "backend");
    assert_eq!(c.route_name, "to_backend");
    assert!(c.upstream_remote_address.is_some());
    assert!(c.downstream_remote_address.is_some());
    assert!(c.start_time.is_some());
    // Envoy leaves response_flags unset when no flag is set.
    assert!(c.response_flags.is_none(), "{c:?}");
    assert_eq!(c.upstream_request_attempt_count, 1);
    assert_eq!(c.stream_id, req.request_id);
    assert_eq!(e.protocol_version, 2, "HTTP11");

    let e = find("/missing");
    let c = e.common_properties.clone().expect("common");
    assert_eq!(e.response.and_then(|r| r.response_code).map(|c| c.value), Some(404));
    assert_eq!(e.request.map(|r| r.authority).unwrap_or_default(), "nowhere.test");
    assert!(c.response_flags.is_some_and(|f| f.no_route_found), "{c:?}");
    assert_eq!(c.upstream_cluster, "");
    assert_eq!(c.upstream_request_attempt_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_grpc_access_log_streams_entries() {
    let (als_addr, rec) = spawn_als();
    let echo = spawn_tcp_echo();
    let admin = free_port();
    let port = free_port();
    let mut tcp = tcp_proxy("tcp", "echo");
    tcp["typed_config"]["access_log"] = json!([grpc_logger("tcp", "tcp_log", json!({}))]);
    let b = with_node(
        bootstrap(
            admin,
            vec![listener("tcp", port, tcp)],
            vec![cluster("echo", echo, json!({})), cluster("als", als_addr, h2_upstream(json!({})))],
        ),
        "node-tcp",
    );
    let _proxy = start(&b, &[]);

    let mut s = connect(local(port)).await;
    s.write_all(b"hello als").await.expect("write");
    let mut buf = [0u8; 9];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut buf)).await.expect("echo in time").expect("echo");
    assert_eq!(&buf, b"hello als");
    drop(s);

    let entries = wait_entries("one tcp entry", || rec.tcp_entries(), 1);
    let msgs = rec.messages();
    let id = msgs[0].1.identifier.as_ref().expect("identifier");
    assert_eq!(id.log_name, "tcp_log");
    assert_eq!(id.node.as_ref().map(|n| n.id.as_str()), Some("node-tcp"));
    let e = &entries[0];
    let c = e.common_properties.clone().expect("common");
    assert_eq!(c.upstream_cluster, "echo");
    assert!(c.upstream_remote_address.is_some());
    let p = e.connection_properties.expect("connection properties");
    assert_eq!(p.received_bytes, 9);
    assert_eq!(p.sent_bytes, 9);
    assert_eq!(c.upstream_request_attempt_count, 1);
    assert!(!c.stream_id.is_empty());
    assert_eq!((c.downstream_wire_bytes_received, c.upstream_wire_bytes_sent), (9, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_als_server_does_not_affect_traffic() {
    // The ALS cluster points at a port nobody listens on: requests still succeed.
    let backend = spawn_http_backend(BackendKind::Http1);
    let admin = free_port();
    let port = free_port();
    let dead = local(free_port());
    let hcm = hcm("ingress", route_all_to("backend"), json!({ "access_log": [grpc_logger("http", "l", json!({}))] }));
    let b = bootstrap(
        admin,
        vec![listener("http", port, hcm)],
        vec![cluster("backend", backend.addr, json!({})), cluster("als", dead, h2_upstream(json!({})))],
    );
    let _proxy = start(&b, &[]);
    for _ in 0..20 {
        assert_eq!(get(local(port), "/", &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_once_the_als_server_is_up() {
    // The ALS server starts only after the first requests: their entries are dropped, and
    // the sink reconnects (with backoff) and streams later entries with a fresh identifier.
    let backend = spawn_http_backend(BackendKind::Http1);
    let admin = free_port();
    let port = free_port();
    let als_port = free_port();
    let hcm =
        hcm("ingress", route_all_to("backend"), json!({ "access_log": [grpc_logger("http", "late", json!({}))] }));
    let b = bootstrap(
        admin,
        vec![listener("http", port, hcm)],
        vec![cluster("backend", backend.addr, json!({})), cluster("als", local(als_port), h2_upstream(json!({})))],
    );
    let _proxy = start(&b, &[]);
    for _ in 0..3 {
        assert_eq!(get(local(port), "/early", &[]).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let l = std::net::TcpListener::bind(local(als_port)).expect("bind als port");
    let (_, rec) = spawn_als_on(l);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(get(local(port), "/late", &[]).await.status, 200);
        if rec.http_entries().iter().any(|e| e.request.as_ref().is_some_and(|r| r.path == "/late")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no entry after the ALS server came up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let msgs = rec.messages();
    assert_eq!(msgs[0].1.identifier.as_ref().map(|i| i.log_name.as_str()), Some("late"));
}

fn validate(bootstrap: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("pinion-als-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bootstrap.yaml");
    std::fs::write(&file, bootstrap).expect("write bootstrap");
    let out = Command::new(env!("CARGO_BIN_EXE_pinion"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("run pinion");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn validate_with(logger: Value) -> (Option<i32>, String) {
    let hcm = hcm("ingress", route_all_to("backend"), json!({ "access_log": [logger] }));
    let mut tcp = tcp_proxy("tcp", "backend");
    tcp["typed_config"]["access_log"] = json!([grpc_logger("tcp", "tcp_log", json!({}))]);
    let b = bootstrap(
        free_port(),
        vec![listener("http", free_port(), hcm), listener("tcp", free_port(), tcp)],
        vec![cluster("backend", local(1), json!({})), cluster("als", local(2), h2_upstream(json!({})))],
    );
    validate(&b)
}

#[test]
fn validate_accepts_grpc_access_logs() {
    let (code, out) = validate_with(grpc_logger(
        "http",
        "hcm_log",
        json!({
            "additional_request_headers_to_log": ["x-a", ":authority"],
            "additional_response_headers_to_log": ["x-b"],
        }),
    ));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn validate_rejects_unsupported_grpc_access_log_fields() {
    let cases = [
        (
            json!({ "common_config": {
                "log_name": "l",
                "grpc_service": { "google_grpc": { "target_uri": "127.0.0.1:1", "stat_prefix": "als" } },
            }}),
            "google_grpc",
        ),
        (json!({ "additional_response_trailers_to_log": ["grpc-status"] }), "additional_response_trailers_to_log"),
        (
            json!({ "common_config": {
                "log_name": "l",
                "grpc_service": { "envoy_grpc": { "cluster_name": "als" } },
                "filter_state_objects_to_log": ["x"],
            }}),
            "filter_state_objects_to_log",
        ),
        (
            json!({ "common_config": {
                "log_name": "l",
                "grpc_service": { "envoy_grpc": { "cluster_name": "als" } },
                "custom_tags": [{ "tag": "t", "literal": { "value": "v" } }],
            }}),
            "custom_tags",
        ),
    ];
    for (extra, field) in cases {
        let (code, out) = validate_with(grpc_logger("http", "l", extra));
        assert_ne!(code, Some(0), "{field}: {out}");
        assert!(out.contains(field) && out.contains("unsupported"), "{field}: {out}");
    }
}
