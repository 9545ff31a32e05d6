//! gRPC access log service client (`envoy.access_loggers.http_grpc` / `tcp_grpc`).
//!
//! The data plane builds plain [`HttpLogRecord`]s / [`TcpLogRecord`]s on its workers and hands
//! them to an [`AlsSink`] ([`AlsSink::send`] never blocks: a bounded queue, dropped and counted
//! when full). One background task per sink turns them into `HttpAccessLogEntry` /
//! `TcpAccessLogEntry` protos, batches them by `buffer_size_bytes` / `buffer_flush_interval`
//! and streams `StreamAccessLogsMessage`s to `AccessLogService/StreamAccessLogs`, with the
//! `identifier { node, log_name }` on the first message of each stream, as Envoy does.
//!
//! The stream is opened lazily on the first flush. A failed connect or a stream the server
//! ends puts the sink into a jittered exponential backoff (500 ms .. 30 s); batches flushed
//! meanwhile are dropped and counted (`logs_dropped`), as Envoy drops what it cannot send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::data::accesslog::v3 as data;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::google::protobuf as pbuf;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::client::{Backoff, ClientConfig, ServerAddr};
use crate::model;

/// Records queued between the workers and the sink's task before new ones are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16 * 1024;
/// Messages queued on an open stream before batches are dropped (a stalled server).
const STREAM_QUEUE: usize = 64;
/// TCP connect timeout to the access log service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves the access log service's address at connect time (e.g. a host of the cluster).
pub type Resolver = Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>;

/// Response flags of one entry (Envoy's `ResponseFlags` subset Pinion sets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogFlags {
    /// `NR`.
    pub no_route_found: bool,
    /// `NC`.
    pub no_cluster_found: bool,
    /// `UH`.
    pub no_healthy_upstream: bool,
    /// `UF`.
    pub upstream_connection_failure: bool,
    /// `UT`.
    pub upstream_request_timeout: bool,
    /// `UC`.
    pub upstream_connection_termination: bool,
    /// `DC`.
    pub downstream_connection_termination: bool,
    /// `UR`.
    pub upstream_remote_reset: bool,
    /// `DPE`.
    pub downstream_protocol_error: bool,
    /// `UPE`.
    pub upstream_protocol_error: bool,
    /// `UO`.
    pub upstream_overflow: bool,
}

/// Properties shared by HTTP and TCP entries (`AccessLogCommon`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonRecord {
    /// Wall-clock start.
    pub start_time: SystemTime,
    /// Start to the end of the stream/connection (`duration`).
    pub duration: Option<Duration>,
    /// Start to the last byte sent downstream (`time_to_last_downstream_tx_byte`; HTTP).
    pub last_downstream_tx_byte: Option<Duration>,
    /// Upstream attempts (0: none).
    pub upstream_request_attempt_count: u32,
    /// `downstream_wire_bytes_sent` / `_received`, `upstream_wire_bytes_sent` / `_received`
    /// (TCP, where payload bytes are wire bytes).
    pub wire_bytes: [u64; 4],
    /// Downstream peer.
    pub downstream_remote: Option<SocketAddr>,
    /// Address the downstream connection was accepted on.
    pub downstream_local: Option<SocketAddr>,
    /// Upstream host.
    pub upstream_remote: Option<SocketAddr>,
    /// Upstream cluster (empty: none).
    pub upstream_cluster: String,
    /// Route name (empty: none).
    pub route_name: String,
    /// Response flags.
    pub flags: LogFlags,
    /// Stream id (Envoy: the request id).
    pub stream_id: String,
}

impl Default for CommonRecord {
    fn default() -> Self {
        CommonRecord {
            start_time: SystemTime::UNIX_EPOCH,
            duration: None,
            last_downstream_tx_byte: None,
            upstream_request_attempt_count: 0,
            wire_bytes: [0; 4],
            downstream_remote: None,
            downstream_local: None,
            upstream_remote: None,
            upstream_cluster: String::new(),
            route_name: String::new(),
            flags: LogFlags::default(),
            stream_id: String::new(),
        }
    }
}

/// Downstream HTTP protocol of an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpProtocol {
    /// Unknown.
    #[default]
    Unspecified,
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
    /// HTTP/3.
    Http3,
}

/// One HTTP request/response (`HttpAccessLogEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpLogRecord {
    /// Common properties.
    pub common: CommonRecord,
    /// Downstream protocol.
    pub protocol: HttpProtocol,
    /// `:method`.
    pub method: String,
    /// `:scheme`.
    pub scheme: String,
    /// `:authority` / `host`.
    pub authority: String,
    /// `:path` (with query).
    pub path: String,
    /// `user-agent`.
    pub user_agent: String,
    /// `referer`.
    pub referer: String,
    /// `x-forwarded-for`.
    pub forwarded_for: String,
    /// `x-request-id`.
    pub request_id: String,
    /// `x-envoy-original-path`.
    pub original_path: String,
    /// Size of the request headers.
    pub request_headers_bytes: u64,
    /// Request body bytes.
    pub request_body_bytes: u64,
    /// `additional_request_headers_to_log` that were present.
    pub request_headers: Vec<(String, String)>,
    /// Response status (None: no response).
    pub response_code: Option<u32>,
    /// Size of the response headers.
    pub response_headers_bytes: u64,
    /// Response body bytes.
    pub response_body_bytes: u64,
    /// `additional_response_headers_to_log` that were present.
    pub response_headers: Vec<(String, String)>,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub response_code_details: String,
}

/// One TCP connection (`TcpAccessLogEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpLogRecord {
    /// Common properties.
    pub common: CommonRecord,
    /// Bytes received from downstream.
    pub received_bytes: u64,
    /// Bytes sent to downstream.
    pub sent_bytes: u64,
}

/// A record for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// HTTP entry.
    Http(Box<HttpLogRecord>),
    /// TCP entry.
    Tcp(Box<TcpLogRecord>),
}

/// A sink's settings.
#[derive(Debug, Clone)]
pub struct AlsConfig {
    /// `log_name` in the identifier.
    pub log_name: String,
    /// The node sent in the identifier.
    pub node: model::Node,
    /// HTTP or TCP entries (records of the other kind are dropped).
    pub kind: model::GrpcAccessLogKind,
    /// `buffer_flush_interval`.
    pub flush_interval: Duration,
    /// `buffer_size_bytes` (0: send every entry at once).
    pub buffer_size_bytes: u32,
    /// `:authority` of the stream (Envoy: the cluster name); ignored when not a valid authority.
    pub authority: String,
    /// Records queued before dropping.
    pub queue_capacity: usize,
    /// Reconnect backoff.
    pub backoff: Backoff,
}

impl AlsConfig {
    /// A sink config from the model with Envoy's defaults for the rest.
    pub fn new(g: &model::GrpcAccessLog, node: model::Node) -> Self {
        AlsConfig {
            log_name: g.log_name.clone(),
            node,
            kind: g.kind,
            flush_interval: g.buffer_flush_interval,
            buffer_size_bytes: g.buffer_size_bytes,
            authority: if g.authority.is_empty() { g.cluster_name.clone() } else { g.authority.clone() },
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            backoff: Backoff::default(),
        }
    }
}

/// Counters of one sink (Envoy's `access_logs.grpc_access_log.*`).
#[derive(Debug, Default)]
pub struct AlsStats {
    /// Entries handed to an open stream.
    pub logs_written: AtomicU64,
    /// Entries dropped (queue full, no stream, stalled stream).
    pub logs_dropped: AtomicU64,
    /// Streams opened.
    pub streams_opened: AtomicU64,
    /// Streams that failed (connect errors, server-ended streams).
    pub stream_failures: AtomicU64,
}

/// A handle to a running sink; cheap to clone. The task ends when every handle is dropped.
#[derive(Clone)]
pub struct AlsSink {
    tx: mpsc::Sender<LogRecord>,
    stats: Arc<AlsStats>,
}

impl std::fmt::Debug for AlsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlsSink").field("stats", &self.stats).finish()
    }
}

impl AlsSink {
    /// Start a sink's task on `handle`.
    pub fn start(handle: &tokio::runtime::Handle, cfg: AlsConfig, resolve: Resolver) -> AlsSink {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let stats = Arc::new(AlsStats::default());
        handle.spawn(run(cfg, resolve, rx, stats.clone()));
        AlsSink { tx, stats }
    }

    /// Queue a record without blocking; returns false (and counts a drop) when the queue is
    /// full or the sink has stopped.
    pub fn send(&self, record: LogRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(_) => {
                self.stats.logs_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The sink's counters.
    pub fn stats(&self) -> &Arc<AlsStats> {
        &self.stats
    }
}

/// An open `StreamAccessLogs` call.
struct OpenStream {
    tx: mpsc::Sender<StreamAccessLogsMessage>,
    ended: Arc<AtomicBool>,
    sent_identifier: bool,
}

enum Batch {
    Http(Vec<data::HttpAccessLogEntry>),
    Tcp(Vec<data::TcpAccessLogEntry>),
}

impl Batch {
    fn new(kind: model::GrpcAccessLogKind) -> Self {
        match kind {
            model::GrpcAccessLogKind::Http => Batch::Http(Vec::new()),
            model::GrpcAccessLogKind::Tcp => Batch::Tcp(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Batch::Http(v) => v.len(),
            Batch::Tcp(v) => v.len(),
        }
    }

    /// Add a record; returns its encoded size, or None when it is of the other kind.
    fn push(&mut self, r: LogRecord) -> Option<usize> {
        match (self, r) {
            (Batch::Http(v), LogRecord::Http(h)) => {
                let e = http_entry(&h);
                let n = e.encoded_len();
                v.push(e);
                Some(n)
            }
            (Batch::Tcp(v), LogRecord::Tcp(t)) => {
                let e = tcp_entry(&t);
                let n = e.encoded_len();
                v.push(e);
                Some(n)
            }
            _ => None,
        }
    }

    fn take(&mut self) -> LogEntries {
        match self {
            Batch::Http(v) => LogEntries::HttpLogs(HttpAccessLogEntries { log_entry: std::mem::take(v) }),
            Batch::Tcp(v) => LogEntries::TcpLogs(TcpAccessLogEntries { log_entry: std::mem::take(v) }),
        }
    }
}

struct Runner {
    cfg: AlsConfig,
    node: core::Node,
    resolve: Resolver,
    stats: Arc<AlsStats>,
    stream: Option<OpenStream>,
    /// No connect attempts before this instant.
    retry_at: Option<Instant>,
    delay: Duration,
}

async fn run(cfg: AlsConfig, resolve: Resolver, mut rx: mpsc::Receiver<LogRecord>, stats: Arc<AlsStats>) {
    let node = ClientConfig::new(cfg.node.clone(), ServerAddr::Uri(String::new())).node_proto();
    let interval = cfg.flush_interval.max(Duration::from_millis(1));
    let mut batch = Batch::new(cfg.kind);
    let mut batch_bytes = 0usize;
    let delay = cfg.backoff.initial;
    let mut r = Runner { cfg, node, resolve, stats, stream: None, retry_at: None, delay };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            rec = rx.recv() => match rec {
                Some(rec) => {
                    match batch.push(rec) {
                        Some(n) => batch_bytes += n,
                        None => {
                            r.stats.logs_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if batch_bytes >= r.cfg.buffer_size_bytes as usize {
                        r.flush(&mut batch).await;
                        batch_bytes = 0;
                    }
                }
                None => {
                    if batch.len() > 0 {
                        r.flush(&mut batch).await;
                    }
                    return;
                }
            },
            _ = tick.tick() => {
                if batch.len() > 0 {
                    r.flush(&mut batch).await;
                    batch_bytes = 0;
                }
            }
        }
    }
}

impl Runner {
    async fn flush(&mut self, batch: &mut Batch) {
        let count = batch.len() as u64;
        if self.stream.as_ref().is_some_and(|s| s.tx.is_closed() || s.ended.load(Ordering::Relaxed)) {
            self.stream = None;
            self.stats.stream_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(log_name = %self.cfg.log_name, "access log stream ended");
            self.back_off();
        }
        if self.stream.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                self.drop_batch(batch, count);
                return;
            }
            match self.open().await {
                Ok(s) => {
                    self.stream = Some(s);
                    self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(log_name = %self.cfg.log_name, "access log service: {e}");
                    self.stats.stream_failures.fetch_add(1, Ordering::Relaxed);
                    self.back_off();
                    self.drop_batch(batch, count);
                    return;
                }
            }
        }
        let Some(stream) = self.stream.as_mut() else { return };
        let identifier = (!stream.sent_identifier)
            .then(|| Identifier { node: Some(self.node.clone()), log_name: self.cfg.log_name.clone() });
        let msg = StreamAccessLogsMessage { identifier, log_entries: Some(batch.take()) };
        match stream.tx.try_send(msg) {
            Ok(()) => {
                stream.sent_identifier = true;
                self.stats.logs_written.fetch_add(count, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.logs_dropped.fetch_add(count, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.logs_dropped.fetch_add(count, Ordering::Relaxed);
                self.stream = None;
                self.stats.stream_failures.fetch_add(1, Ordering::Relaxed);
                self.back_off();
            }
        }
    }

    fn drop_batch(&self, batch: &mut Batch, count: u64) {
        let _ = batch.take();
        self.stats.logs_dropped.fetch_add(count, Ordering::Relaxed);
    }

    fn back_off(&mut self) {
        let d = self.delay;
        let jittered = d / 2 + Duration::from_millis(rand::random_range(0..=(d / 2).as_millis() as u64));
        self.retry_at = Some(Instant::now() + jittered);
        self.delay = (d * 2).min(self.cfg.backoff.max);
    }

    async fn open(&mut self) -> Result<OpenStream, String> {
        let addr = (self.resolve)().ok_or("no address for the access log service cluster")?;
        let mut ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Ok(origin) = format!("http://{}", self.cfg.authority).parse::<http::Uri>() {
            ep = ep.origin(origin);
        }
        let channel = tokio::time::timeout(CONNECT_TIMEOUT * 2, ep.connect())
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ended = Arc::new(AtomicBool::new(false));
        let done = ended.clone();
        let log_name = self.cfg.log_name.clone();
        tokio::spawn(async move {
            let mut client = AccessLogServiceClient::new(channel);
            match client.stream_access_logs(ReceiverStream::new(rx)).await {
                Ok(_) => tracing::debug!(%log_name, "access log stream closed by the server"),
                Err(e) => tracing::warn!(%log_name, "access log stream failed: {e}"),
            }
            done.store(true, Ordering::Relaxed);
        });
        // A connection that worked resets the backoff.
        self.delay = self.cfg.backoff.initial;
        self.retry_at = None;
        Ok(OpenStream { tx, ended, sent_identifier: false })
    }
}

fn timestamp(t: SystemTime) -> pbuf::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbuf::Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

fn pb_duration(d: Duration) -> pbuf::Duration {
    pbuf::Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

fn address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

/// Envoy leaves `response_flags` unset when no flag is set.
fn flags(f: &LogFlags) -> Option<data::ResponseFlags> {
    if *f == LogFlags::default() {
        return None;
    }
    Some(data::ResponseFlags {
        no_route_found: f.no_route_found,
        no_cluster_found: f.no_cluster_found,
        no_healthy_upstream: f.no_healthy_upstream,
        upstream_connection_failure: f.upstream_connection_failure,
        upstream_request_timeout: f.upstream_request_timeout,
        upstream_connection_termination: f.upstream_connection_termination,
        downstream_connection_termination: f.downstream_connection_termination,
        upstream_remote_reset: f.upstream_remote_reset,
        downstream_protocol_error: f.downstream_protocol_error,
        upstream_protocol_error: f.upstream_protocol_error,
        upstream_overflow: f.upstream_overflow,
        ..Default::default()
    })
}

fn common(c: &CommonRecord, kind: data::AccessLogType) -> data::AccessLogCommon {
    let [downstream_wire_bytes_sent, downstream_wire_bytes_received, upstream_wire_bytes_sent, upstream_wire_bytes_received] =
        c.wire_bytes;
    data::AccessLogCommon {
        downstream_remote_address: c.downstream_remote.map(address),
        downstream_local_address: c.downstream_local.map(address),
        downstream_direct_remote_address: c.downstream_remote.map(address),
        start_time: Some(timestamp(c.start_time)),
        time_to_last_downstream_tx_byte: c.last_downstream_tx_byte.map(pb_duration),
        duration: c.duration.map(pb_duration),
        upstream_remote_address: c.upstream_remote.map(address),
        upstream_cluster: c.upstream_cluster.clone(),
        response_flags: flags(&c.flags),
        upstream_request_attempt_count: c.upstream_request_attempt_count,
        downstream_wire_bytes_sent,
        downstream_wire_bytes_received,
        upstream_wire_bytes_sent,
        upstream_wire_bytes_received,
        route_name: c.route_name.clone(),
        stream_id: c.stream_id.clone(),
        access_log_type: kind as i32,
        ..Default::default()
    }
}

/// The `HttpAccessLogEntry` for a record.
pub fn http_entry(r: &HttpLogRecord) -> data::HttpAccessLogEntry {
    use data::http_access_log_entry::HttpVersion as V;
    let method = core::RequestMethod::from_str_name(&r.method).unwrap_or(core::RequestMethod::MethodUnspecified);
    data::HttpAccessLogEntry {
        common_properties: Some(common(&r.common, data::AccessLogType::DownstreamEnd)),
        protocol_version: match r.protocol {
            HttpProtocol::Unspecified => V::ProtocolUnspecified,
            HttpProtocol::Http10 => V::Http10,
            HttpProtocol::Http11 => V::Http11,
            HttpProtocol::Http2 => V::Http2,
            HttpProtocol::Http3 => V::Http3,
        } as i32,
        request: Some(data::HttpRequestProperties {
            request_method: method as i32,
            scheme: r.scheme.clone(),
            authority: r.authority.clone(),
            path: r.path.clone(),
            user_agent: r.user_agent.clone(),
            referer: r.referer.clone(),
            forwarded_for: r.forwarded_for.clone(),
            request_id: r.request_id.clone(),
            original_path: r.original_path.clone(),
            request_headers_bytes: r.request_headers_bytes,
            request_body_bytes: r.request_body_bytes,
            request_headers: r.request_headers.iter().cloned().collect(),
            ..Default::default()
        }),
        response: Some(data::HttpResponseProperties {
            response_code: r.response_code.map(|value| pbuf::UInt32Value { value }),
            response_headers_bytes: r.response_headers_bytes,
            response_body_bytes: r.response_body_bytes,
            response_headers: r.response_headers.iter().cloned().collect(),
            response_code_details: r.response_code_details.clone(),
            ..Default::default()
        }),
    }
}

/// The `TcpAccessLogEntry` for a record.
pub fn tcp_entry(r: &TcpLogRecord) -> data::TcpAccessLogEntry {
    data::TcpAccessLogEntry {
        common_properties: Some(common(&r.common, data::AccessLogType::TcpConnectionEnd)),
        connection_properties: Some(data::ConnectionProperties {
            received_bytes: r.received_bytes,
            sent_bytes: r.sent_bytes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_entry_fields() {
        let r = HttpLogRecord {
            method: "GET".into(),
            path: "/a".into(),
            response_code: Some(404),
            common: CommonRecord {
                flags: LogFlags { no_route_found: true, ..Default::default() },
                ..Default::default()
            },
            ..Default::default()
        };
        let e = http_entry(&r);
        let req = e.request.unwrap_or_default();
        assert_eq!(req.request_method, core::RequestMethod::Get as i32);
        assert_eq!(req.path, "/a");
        assert_eq!(e.response.and_then(|r| r.response_code).map(|c| c.value), Some(404));
        assert!(e.common_properties.and_then(|c| c.response_flags).is_some_and(|f| f.no_route_found));
    }

    #[tokio::test]
    async fn send_never_blocks_without_a_server() {
        let cfg = AlsConfig {
            log_name: "l".into(),
            node: model::Node::default(),
            kind: model::GrpcAccessLogKind::Tcp,
            flush_interval: Duration::from_millis(10),
            buffer_size_bytes: 0,
            authority: "als".into(),
            queue_capacity: 4,
            backoff: Backoff::default(),
        };
        let sink = AlsSink::start(&tokio::runtime::Handle::current(), cfg, Arc::new(|| None));
        for _ in 0..100 {
            sink.send(LogRecord::Tcp(Box::default()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sink.stats().logs_written.load(Ordering::Relaxed), 0);
        assert!(sink.stats().logs_dropped.load(Ordering::Relaxed) > 0);
    }
}
