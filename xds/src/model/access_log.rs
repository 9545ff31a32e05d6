//! Access loggers (`envoy.access_loggers.file`, `envoy.access_loggers.stdout`/`stderr`).

/// One access log sink with its format.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// Where lines go.
    pub sink: AccessLogSink,
    /// Line format.
    pub format: AccessLogFormat,
}

/// Access log destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    /// A file path (`/dev/stdout` allowed).
    File(String),
    /// Process stdout.
    Stdout,
    /// Process stderr.
    Stderr,
    /// `envoy.access_loggers.http_grpc` / `tcp_grpc`: entries streamed to an access log
    /// service (the line format is unused).
    Grpc(GrpcAccessLog),
}

/// Which entries a gRPC access log sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcAccessLogKind {
    /// `HttpGrpcAccessLogConfig`: `HttpAccessLogEntry`.
    Http,
    /// `TcpGrpcAccessLogConfig`: `TcpAccessLogEntry`.
    Tcp,
}

/// A gRPC access log (`HttpGrpcAccessLogConfig` / `TcpGrpcAccessLogConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrpcAccessLog {
    /// `common_config.log_name` (sent in the stream's identifier).
    pub log_name: String,
    /// `common_config.grpc_service.envoy_grpc.cluster_name`.
    pub cluster_name: String,
    /// `envoy_grpc.authority` (empty: the cluster name).
    pub authority: String,
    /// HTTP or TCP entries.
    pub kind: GrpcAccessLogKind,
    /// `buffer_flush_interval` (default 1 s).
    pub buffer_flush_interval: std::time::Duration,
    /// `buffer_size_bytes` (default 16384; 0 disables batching).
    pub buffer_size_bytes: u32,
    /// `additional_request_headers_to_log` (lowercased).
    pub additional_request_headers_to_log: Vec<String>,
    /// `additional_response_headers_to_log` (lowercased).
    pub additional_response_headers_to_log: Vec<String>,
    /// `additional_response_trailers_to_log` (lowercased).
    pub additional_response_trailers_to_log: Vec<String>,
}

impl GrpcAccessLog {
    /// Envoy's default `buffer_flush_interval`.
    pub const DEFAULT_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
    /// Envoy's default `buffer_size_bytes`.
    pub const DEFAULT_BUFFER_SIZE_BYTES: u32 = 16384;
}

/// Access log line format.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogFormat {
    /// Envoy's default format string.
    Default,
    /// A `text_format`/`format` string with `%OPERATOR%` commands (ends with a newline as given).
    Text(String),
    /// `json_format`: key -> format string, one JSON object per line.
    Json(Vec<(String, String)>),
}

/// Envoy's default access log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";
