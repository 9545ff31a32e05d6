//! `envoy.config.route.v3.RouteConfiguration`, virtual hosts and routes.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::{CorsPolicy, HeaderMatcher, PerFilterConfig, QueryParameterMatcher};

/// A route table.
#[derive(Debug, Clone)]
pub struct RouteConfiguration {
    /// Route config name.
    pub name: String,
    /// Virtual hosts in config order.
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    /// Header mutations applied to every request/response routed by this table.
    pub headers: HeaderMutations,
    /// `internal_only_headers`: removed from requests from external clients.
    pub internal_only_headers: Vec<String>,
    /// `max_direct_response_body_size_bytes` (default 4096).
    pub max_direct_response_body_size_bytes: u32,
    /// `most_specific_header_mutations_wins`.
    pub most_specific_header_mutations_wins: bool,
    /// `validate_clusters` as configured; unset means true for inline (static) route configs and
    /// false for RDS, as in Envoy.
    pub validate_clusters: Option<bool>,
    /// `vhds`: virtual hosts also come from VHDS (Delta only), merged after these.
    pub vhds: Option<super::ConfigSource>,
    /// `typed_per_filter_config` at route configuration level.
    pub per_filter_config: PerFilterConfig,
}

/// Request and response header mutations at one level (route config, vhost, route, weighted cluster).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    /// `request_headers_to_add`.
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// `request_headers_to_remove` (lowercased).
    pub request_headers_to_remove: Vec<String>,
    /// `response_headers_to_add`.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// `response_headers_to_remove` (lowercased).
    pub response_headers_to_remove: Vec<String>,
}

impl HeaderMutations {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.request_headers_to_add.is_empty()
            && self.request_headers_to_remove.is_empty()
            && self.response_headers_to_add.is_empty()
            && self.response_headers_to_remove.is_empty()
    }
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Debug, Clone)]
pub struct HeaderValueOption {
    /// Lowercased header name.
    pub name: http::HeaderName,
    /// Value; may contain `%VAR%` formatter commands (see `has_formatter`).
    pub value: String,
    /// Whether `value` contains `%...%` commands to be substituted per request.
    pub has_formatter: bool,
    /// `append_action` (the deprecated `append` bool is mapped onto it).
    pub append_action: AppendAction,
    /// `keep_empty_value`.
    pub keep_empty_value: bool,
}

/// `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// Append to existing values (Envoy's default).
    AppendIfExistsOrAdd,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace existing values, or add.
    OverwriteIfExistsOrAdd,
    /// Replace only when present.
    OverwriteIfExists,
}

/// A domain pattern of a virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainMatcher {
    /// `*`.
    Any,
    /// Exact host (lowercased), possibly with a port.
    Exact(String),
    /// `*.example.com` / `*-bar.foo.com`: stores the suffix after `*` (lowercased).
    Suffix(String),
    /// `foo.*`: stores the prefix before `*` (lowercased).
    Prefix(String),
}

/// `envoy.config.route.v3.VirtualHost`.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// Name (stats `vhost.<name>.`).
    pub name: String,
    /// Domains, with their original strings kept for matching priority.
    pub domains: Vec<DomainMatcher>,
    /// Routes in order; first match wins.
    pub routes: Vec<Arc<Route>>,
    /// Header mutations at vhost level.
    pub headers: HeaderMutations,
    /// `require_tls`.
    pub require_tls: RequireTls,
    /// `retry_policy` at vhost level (used when the route has none).
    pub retry_policy: Option<RetryPolicy>,
    /// `include_request_attempt_count`.
    pub include_request_attempt_count: bool,
    /// `typed_per_filter_config` at virtual host level.
    pub per_filter_config: PerFilterConfig,
    /// The deprecated `cors`: used by the CORS filter only when no level has a typed
    /// `CorsPolicy` for it (see [`CorsPolicy`]).
    pub legacy_cors: Option<Arc<CorsPolicy>>,
}

/// `VirtualHost.TlsRequirementType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireTls {
    /// No requirement.
    None,
    /// External requests must use TLS.
    ExternalOnly,
    /// All requests must use TLS.
    All,
}

/// `envoy.config.route.v3.Route`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route name (may be empty).
    pub name: String,
    /// When it matches.
    pub matcher: RouteMatch,
    /// What it does.
    pub action: RouteAction,
    /// Header mutations at route level.
    pub headers: HeaderMutations,
    /// `typed_per_filter_config` at route level.
    pub per_filter_config: PerFilterConfig,
}

/// `envoy.config.route.v3.RouteMatch`.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Path specifier.
    pub path: PathMatch,
    /// `case_sensitive` (default true); applies to prefix/path/path_separated_prefix.
    pub case_sensitive: bool,
    /// All must match.
    pub headers: Vec<HeaderMatcher>,
    /// All must match.
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc: {}`: only gRPC requests (content-type application/grpc*).
    pub grpc: bool,
    /// `runtime_fraction`: matches this share of requests (runtime-overridable).
    pub runtime_fraction: Option<RuntimeFraction>,
}

/// `envoy.config.core.v3.RuntimeFractionalPercent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFraction {
    /// `default_value`.
    pub default_value: super::FractionalPercent,
    /// `runtime_key` (may be empty: the default always applies).
    pub runtime_key: String,
}

/// Path specifier of a route match. Matching is on the path without the query string.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path` (exact).
    Exact(String),
    /// `safe_regex` (full match).
    Regex(Regex),
    /// `path_separated_prefix`: exact, or prefix followed by `/`.
    SeparatedPrefix(String),
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward upstream.
    Forward(Arc<ForwardAction>),
    /// `redirect`.
    Redirect(Arc<RedirectAction>),
    /// `direct_response`.
    DirectResponse(Arc<DirectResponse>),
    /// `non_forwarding_action`: Pinion answers 404 like a missing route (no filter consumes it).
    NonForwarding,
}

/// `envoy.config.route.v3.RouteAction` (the forwarding action).
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// Which cluster.
    pub cluster: ClusterSpecifier,
    /// `cluster_not_found_response_code`: 503 (default) or 404 / 500.
    pub cluster_not_found_response_code: u16,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite` (pattern, substitution with `\1` groups). The pattern is compiled
    /// unanchored: Envoy substitutes every match (RE2 `GlobalReplace`).
    pub regex_rewrite: Option<(Regex, String)>,
    /// Host rewrite.
    pub host_rewrite: HostRewrite,
    /// `append_x_forwarded_host`.
    pub append_x_forwarded_host: bool,
    /// Upstream timeout for the whole exchange; `None` = disabled. Default 15s.
    pub timeout: Option<Duration>,
    /// Per-route stream idle timeout override.
    pub idle_timeout: Option<Option<Duration>>,
    /// Retry policy (route level wins over vhost).
    pub retry_policy: Option<RetryPolicy>,
    /// `priority`: which of the cluster's resource managers (circuit breakers, pools) the
    /// request uses.
    pub priority: super::RoutingPriority,
    /// `max_stream_duration.grpc_timeout_header_max` etc. are not supported yet.
    pub upgrade_websocket: Option<bool>,
    /// The deprecated `route.cors`: used by the CORS filter only when no level has a typed
    /// `CorsPolicy` for it; it takes precedence over the virtual host's `legacy_cors`.
    pub legacy_cors: Option<Arc<CorsPolicy>>,
}

/// How to pick the cluster.
#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`: the cluster name is read from this request header.
    ClusterHeader(http::HeaderName),
    /// `weighted_clusters`.
    Weighted {
        /// Clusters with their weights.
        clusters: Vec<WeightedCluster>,
        /// Sum of weights (> 0).
        total_weight: u64,
    },
}

/// One entry of `weighted_clusters`.
#[derive(Debug, Clone)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Header mutations for this choice.
    pub headers: HeaderMutations,
    /// `host_rewrite_literal` for this choice.
    pub host_rewrite_literal: Option<String>,
    /// `typed_per_filter_config` for this choice (more specific than the route's).
    pub per_filter_config: PerFilterConfig,
}

/// Host header rewrite.
#[derive(Debug, Clone)]
pub enum HostRewrite {
    /// Keep the downstream host.
    None,
    /// `host_rewrite_literal`.
    Literal(String),
    /// `auto_host_rewrite`: the upstream host's hostname (DNS clusters) or address.
    Auto,
    /// `host_rewrite_header`: copy from this request header.
    Header(http::HeaderName),
    /// `host_rewrite_path_regex` (pattern compiled unanchored: every match is substituted).
    PathRegex(Regex, String),
}

/// `envoy.config.route.v3.RetryPolicy` (applied by the retries issue; parsed now).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `retry_on` conditions, comma separated in config.
    pub retry_on: Vec<String>,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
    /// `retriable_status_codes`.
    pub retriable_status_codes: Vec<u16>,
}

/// `envoy.config.route.v3.RedirectAction`.
#[derive(Debug, Clone)]
pub struct RedirectAction {
    /// `https_redirect` / `scheme_redirect`.
    pub scheme: Option<String>,
    /// `host_redirect`.
    pub host: Option<String>,
    /// `port_redirect`.
    pub port: Option<u16>,
    /// Path part.
    pub path: RedirectPath,
    /// `strip_query`.
    pub strip_query: bool,
    /// 301 (default), 302, 303, 307 or 308.
    pub response_code: u16,
}

/// How a redirect rewrites the path.
#[derive(Debug, Clone)]
pub enum RedirectPath {
    /// Keep the request path.
    Keep,
    /// `path_redirect` (may carry its own query).
    Path(String),
    /// `prefix_rewrite`: replace the matched prefix.
    PrefixRewrite(String),
    /// `regex_rewrite` (pattern compiled unanchored: every match is substituted).
    RegexRewrite(Regex, String),
}

/// `envoy.config.route.v3.DirectResponseAction`.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body (inline string/bytes or file contents read at load time).
    pub body: Option<bytes::Bytes>,
}
