//! `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`.

use std::sync::Arc;
use std::time::Duration;

use super::{AccessLog, HttpFilter, RouteConfiguration};

/// HTTP connection manager config, with Envoy's defaults filled in.
#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    /// `stat_prefix` (stats under `http.<stat_prefix>.`).
    pub stat_prefix: String,
    /// Downstream codec.
    pub codec_type: CodecType,
    /// Where routes come from.
    pub route_specifier: RouteSpecifier,
    /// HTTP filters in config order (optional unsupported ones skipped); the last is the router.
    pub http_filters: Vec<HttpFilter>,
    /// `use_remote_address` (default false).
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
    /// `skip_xff_append`.
    pub skip_xff_append: bool,
    /// `via` header value to append, if any.
    pub via: Option<String>,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `preserve_external_request_id`.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`.
    pub always_set_request_id_in_response: bool,
    /// `normalize_path` (RFC 3986 dot-segment removal).
    pub normalize_path: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub path_with_escaped_slashes_action: EscapedSlashesAction,
    /// `max_request_headers_kb` (default 60): larger request headers get 431.
    pub max_request_headers_kb: u32,
    /// `common_http_protocol_options.idle_timeout` (default 1h; `None` = disabled).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_headers_count` (default 100).
    pub max_headers_count: u32,
    /// `common_http_protocol_options.max_stream_duration` (`None`: unset or 0, disabled).
    pub max_stream_duration: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration` (`None`: unset or 0, disabled).
    pub max_connection_duration: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration_jitter`, in percent of
    /// `max_connection_duration` (0: no jitter).
    pub max_connection_duration_jitter_percent: f64,
    /// `http1_safe_max_connection_duration`: HTTP/1 connections past their max duration are
    /// closed after their next response (`connection: close`) instead of drained.
    pub http1_safe_max_connection_duration: bool,
    /// `common_http_protocol_options.headers_with_underscores_action`.
    pub headers_with_underscores_action: HeadersWithUnderscoresAction,
    /// `http_protocol_options.accept_http_10`.
    pub accept_http_10: bool,
    /// `http_protocol_options.default_host_for_http_10`.
    pub default_host_for_http_10: Option<String>,
    /// HTTP/2 downstream settings.
    pub http2: Http2Options,
    /// `server_name` (default `envoy`, kept for drop-in compatibility of dashboards and tests).
    pub server_name: String,
    /// `server_header_transformation`.
    pub server_header_transformation: ServerHeaderTransformation,
    /// `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
    /// `set_current_client_cert_details`: what APPEND_FORWARD / SANITIZE_SET add.
    pub client_cert_details: ClientCertDetails,
    /// `stream_idle_timeout` (default 5 min; `None` = disabled).
    pub stream_idle_timeout: Option<Duration>,
    /// `request_timeout` (default disabled).
    pub request_timeout: Option<Duration>,
    /// `request_headers_timeout` (default disabled).
    pub request_headers_timeout: Option<Duration>,
    /// `drain_timeout` (default 5s): time between the first GOAWAY and the final one.
    pub drain_timeout: Duration,
    /// `delayed_close_timeout` (default 1s).
    pub delayed_close_timeout: Duration,
    /// Access logs.
    pub access_logs: Vec<AccessLog>,
    /// `upgrade_configs`: upgrade types allowed (lowercased, e.g. `websocket`).
    pub upgrade_types: Vec<String>,
    /// `internal_address_config` absent: RFC1918 + loopback count as internal (Envoy's default).
    pub add_user_agent: bool,
}

/// `CodecType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecType {
    /// Sniff the HTTP/2 preface, else HTTP/1.
    Auto,
    /// HTTP/1.x only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// Where an HCM's routes come from.
#[derive(Debug, Clone)]
pub enum RouteSpecifier {
    /// Inline `route_config`.
    Static(Arc<RouteConfiguration>),
    /// `rds`: the route config name, resolved through the config store (xDS issue).
    Rds {
        /// `route_config_name`.
        route_config_name: String,
    },
    /// `scoped_routes` (SRDS or an inline scope list).
    Scoped(Arc<super::ScopedRoutes>),
}

/// `envoy.extensions.filters.http.router.v3.Router`.
#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    /// `suppress_envoy_headers`.
    pub suppress_envoy_headers: bool,
    /// `start_child_span` etc. ignored (no tracing yet).
    pub respect_expected_rq_timeout: bool,
}

/// `PathWithEscapedSlashesAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashesAction {
    /// Default: keep unchanged (Envoy's runtime default).
    KeepUnchanged,
    /// 400.
    RejectRequest,
    /// Unescape and redirect.
    UnescapeAndRedirect,
    /// Unescape and forward.
    UnescapeAndForward,
}

/// `HeadersWithUnderscoresAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersWithUnderscoresAction {
    /// Default.
    Allow,
    /// 400 and close.
    RejectRequest,
    /// Drop the header.
    DropHeader,
}

/// `ServerHeaderTransformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeaderTransformation {
    /// Overwrite with `server_name` (default).
    Overwrite,
    /// Set only when absent.
    AppendIfAbsent,
    /// Pass through, never set.
    PassThrough,
}

/// `envoy.config.core.v3.Http2ProtocolOptions` subset used on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Options {
    /// `max_concurrent_streams` (default 2147483647).
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size` (default 256 MiB in Envoy).
    pub initial_stream_window_size: u32,
    /// `initial_connection_window_size` (default 256 MiB in Envoy).
    pub initial_connection_window_size: u32,
    /// `connection_keepalive.interval`.
    pub keepalive_interval: Option<Duration>,
    /// `connection_keepalive.timeout`.
    pub keepalive_timeout: Option<Duration>,
}

impl Default for Http2Options {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 2_147_483_647,
            initial_stream_window_size: 268_435_456,
            initial_connection_window_size: 268_435_456,
            keepalive_interval: None,
            keepalive_timeout: None,
        }
    }
}

/// `HttpConnectionManager.ForwardClientCertDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Never send the header upstream (Envoy's default).
    Sanitize,
    /// On mTLS connections, forward the client's header unchanged.
    ForwardOnly,
    /// On mTLS connections, append this hop's element to the client's header.
    AppendForward,
    /// On mTLS connections, replace the client's header with this hop's element.
    SanitizeSet,
    /// Always forward the client's header unchanged, mTLS or not.
    AlwaysForwardOnly,
}

/// `SetCurrentClientCertDetails` (the fields Pinion implements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCertDetails {
    /// `Subject="..."` (RFC 2253).
    pub subject: bool,
    /// `URI=` per URI SAN.
    pub uri: bool,
    /// `DNS=` per DNS SAN.
    pub dns: bool,
}
