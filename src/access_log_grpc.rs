//! `envoy.access_loggers.http_grpc` / `tcp_grpc`: workers turn the finished stream's
//! `StreamInfo` and headers into plain records and hand them to a shared
//! [`pinion_xds::als::AlsSink`], whose task (on the main thread's runtime) batches and streams
//! them to the access log service. A sink is shared by every logger with the same config (as
//! Envoy's logger cache does) and resolves its cluster to a host at each (re)connect, so
//! static, DNS and EDS clusters all work.
//!
//! The sinks belong to the server's [`GrpcSinks`] (one per server, handed to listener
//! construction through the [`crate::access_log::AccessLogManager`]); without one (e.g.
//! `--mode validate`) loggers are built but send nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use pinion_xds::als::{self, AlsConfig, AlsSink, CommonRecord, HttpLogRecord, LogFlags, LogRecord, TcpLogRecord};
use pinion_xds::model::{self, GrpcAccessLog, GrpcAccessLogKind};

use crate::formatter::{self, Context};
use crate::http::stream_info::{ResponseFlags, StreamInfo};

/// Finds the address to dial for an access log service cluster. Asked at each (re)connect,
/// so it sees the cluster's current hosts; implemented by the server's config snapshot.
pub trait ClusterResolver: Send + Sync {
    /// A host address of `cluster`, or `None` (no such cluster, no host, not usable).
    fn resolve(&self, cluster: &str) -> Option<SocketAddr>;
}

/// The gRPC access log sinks of one server: one per distinct logger config, shared by every
/// logger with that config (as Envoy's logger cache does).
pub struct GrpcSinks {
    handle: tokio::runtime::Handle,
    node: model::Node,
    resolver: Arc<dyn ClusterResolver>,
    sinks: Mutex<HashMap<GrpcAccessLog, AlsSink>>,
}

impl GrpcSinks {
    /// Sinks that run on `handle`, identify as `node`, and find their cluster's hosts with
    /// `resolver`.
    pub fn new(handle: tokio::runtime::Handle, node: model::Node, resolver: Arc<dyn ClusterResolver>) -> Self {
        GrpcSinks { handle, node, resolver, sinks: Mutex::new(HashMap::new()) }
    }

    /// The sink for `cfg`, started on first use.
    fn sink(&self, cfg: &GrpcAccessLog) -> AlsSink {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks
            .entry(cfg.clone())
            .or_insert_with(|| {
                let cluster = cfg.cluster_name.clone();
                let resolver = self.resolver.clone();
                AlsSink::start(
                    &self.handle,
                    AlsConfig::new(cfg, self.node.clone()),
                    Arc::new(move || resolver.resolve(&cluster)),
                )
            })
            .clone()
    }
}

/// One configured gRPC access log.
#[derive(Clone)]
pub struct GrpcLogger {
    cfg: Arc<GrpcAccessLog>,
    sink: Option<AlsSink>,
}

impl GrpcLogger {
    /// A logger for `cfg` on the shared sink for it in `sinks` (started on first use); with
    /// no sinks it sends nothing.
    pub fn new(cfg: &GrpcAccessLog, sinks: Option<&GrpcSinks>) -> Self {
        GrpcLogger { cfg: Arc::new(cfg.clone()), sink: sinks.map(|s| s.sink(cfg)) }
    }

    /// Build and queue the entry for a finished stream or connection.
    pub fn log(&self, ctx: &Context<'_>) {
        let Some(sink) = &self.sink else { return };
        let record = match self.cfg.kind {
            GrpcAccessLogKind::Http => LogRecord::Http(Box::new(http_record(&self.cfg, ctx))),
            GrpcAccessLogKind::Tcp => {
                // Envoy gives every connection a random stream id; payload bytes are wire bytes.
                let stream_id = crate::http::request_headers::new_request_id().to_str().unwrap_or_default().to_owned();
                let mut common = common(ctx.info, stream_id);
                let (rx, tx) = (ctx.info.bytes_received, ctx.bytes_sent);
                if ctx.info.upstream_host.is_some() {
                    common.wire_bytes = [tx, rx, rx, tx];
                } else {
                    common.wire_bytes = [tx, rx, 0, 0];
                }
                LogRecord::Tcp(Box::new(TcpLogRecord { common, received_bytes: rx, sent_bytes: tx }))
            }
        };
        sink.send(record);
    }
}

fn flags(f: ResponseFlags) -> LogFlags {
    let has = |b: ResponseFlags| f.contains(b);
    LogFlags {
        no_route_found: has(ResponseFlags::NO_ROUTE),
        no_cluster_found: has(ResponseFlags::NO_CLUSTER),
        no_healthy_upstream: has(ResponseFlags::NO_HEALTHY_UPSTREAM),
        upstream_connection_failure: has(ResponseFlags::UPSTREAM_CONNECTION_FAILURE),
        upstream_request_timeout: has(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT),
        upstream_connection_termination: has(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION),
        downstream_connection_termination: has(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION),
        upstream_remote_reset: has(ResponseFlags::UPSTREAM_REMOTE_RESET),
        downstream_protocol_error: has(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR),
        upstream_protocol_error: has(ResponseFlags::UPSTREAM_PROTOCOL_ERROR),
        upstream_overflow: has(ResponseFlags::UPSTREAM_OVERFLOW),
    }
}

fn common(info: &StreamInfo, stream_id: String) -> CommonRecord {
    CommonRecord {
        start_time: info.start_time,
        duration: Some(info.start.elapsed()),
        last_downstream_tx_byte: None,
        upstream_request_attempt_count: u32::from(info.upstream_host.is_some()),
        wire_bytes: [0; 4],
        downstream_remote: Some(info.downstream_remote),
        downstream_local: Some(info.downstream_local),
        upstream_remote: info.upstream_host,
        upstream_cluster: info.upstream_cluster.as_deref().unwrap_or_default().to_owned(),
        route_name: info.route_name.as_deref().unwrap_or_default().to_owned(),
        flags: flags(info.flags),
        stream_id,
    }
}

/// Size of a header map as Envoy counts it (names plus values).
fn headers_bytes(h: &HeaderMap) -> u64 {
    h.iter().map(|(k, v)| (k.as_str().len() + v.len()) as u64).sum()
}

fn header(h: Option<&HeaderMap>, name: &str) -> String {
    h.and_then(|h| h.get(name)).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// The selected headers that are present (`:authority`, `:path`, `:method` map to what the
/// HCM recorded for them).
fn selected(h: Option<&HeaderMap>, names: &[String]) -> Vec<(String, String)> {
    let Some(h) = h else { return Vec::new() };
    names
        .iter()
        .filter_map(|n| {
            let key = match n.as_str() {
                ":authority" => "host",
                ":path" => formatter::PSEUDO_PATH,
                ":method" => formatter::PSEUDO_METHOD,
                other => other,
            };
            let v = h.get(key)?.to_str().ok()?;
            Some((n.clone(), v.to_owned()))
        })
        .collect()
}

fn http_record(cfg: &GrpcAccessLog, ctx: &Context<'_>) -> HttpLogRecord {
    let info = ctx.info;
    let req = ctx.request_headers;
    let resp = ctx.response_headers;
    let request_id = header(req, "x-request-id");
    // The HCM's copy of the request headers carries :path/:method under internal names and
    // :authority as `host`; they are counted as Envoy counts its pseudo headers, with the
    // `:scheme` and `x-forwarded-proto` Envoy adds. (Envoy also counts the
    // `x-envoy-expected-rq-timeout-ms` the router adds, which this copy does not see.)
    let request_headers_bytes = req.map_or(0, |h| {
        let renamed = |k: &str, name: &str| h.get(k).map_or(0, |v| (name.len() + v.len()) as u64);
        let scheme = (":scheme".len() + "http".len()) as u64;
        let xfp = if h.contains_key("x-forwarded-proto") { 0 } else { ("x-forwarded-proto".len() + 4) as u64 };
        headers_bytes(h)
            .saturating_sub(renamed(formatter::PSEUDO_PATH, formatter::PSEUDO_PATH))
            .saturating_sub(renamed(formatter::PSEUDO_METHOD, formatter::PSEUDO_METHOD))
            .saturating_sub(renamed("host", "host"))
            .saturating_add(renamed(formatter::PSEUDO_PATH, ":path"))
            .saturating_add(renamed(formatter::PSEUDO_METHOD, ":method"))
            .saturating_add(renamed("host", ":authority"))
            .saturating_add(scheme + xfp)
    });
    let mut common = common(info, request_id.clone());
    common.last_downstream_tx_byte = common.duration;
    HttpLogRecord {
        common,
        protocol: match info.protocol {
            "HTTP/1.0" => als::HttpProtocol::Http10,
            "HTTP/1.1" => als::HttpProtocol::Http11,
            "HTTP/2" => als::HttpProtocol::Http2,
            "HTTP/3" => als::HttpProtocol::Http3,
            _ => als::HttpProtocol::Unspecified,
        },
        method: header(req, formatter::PSEUDO_METHOD),
        scheme: "http".into(),
        authority: header(req, "host"),
        path: header(req, formatter::PSEUDO_PATH),
        user_agent: header(req, "user-agent"),
        referer: header(req, "referer"),
        forwarded_for: header(req, "x-forwarded-for"),
        request_id,
        original_path: header(req, "x-envoy-original-path"),
        request_headers_bytes,
        request_body_bytes: info.bytes_received,
        request_headers: selected(req, &cfg.additional_request_headers_to_log),
        response_code: (info.response_code != 0).then_some(u32::from(info.response_code)),
        response_headers_bytes: resp.map_or(0, |h| headers_bytes(h) + ":status".len() as u64 + 3),
        response_body_bytes: ctx.bytes_sent,
        response_headers: selected(resp, &cfg.additional_response_headers_to_log),
        response_code_details: info.response_code_details.to_owned(),
    }
}
