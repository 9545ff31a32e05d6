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
