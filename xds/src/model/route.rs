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
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on upstream requests.
    pub include_request_attempt_count: bool,
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on responses.
    pub include_attempt_count_in_response: bool,
    /// `per_request_buffer_limit_bytes`: the most request body buffered for retries (None:
    /// the listener's `per_connection_buffer_limit_bytes` alone bounds it).
    pub per_request_buffer_limit_bytes: Option<u32>,
    /// `typed_per_filter_config` at virtual host level.
    pub per_filter_config: PerFilterConfig,
    /// The deprecated `cors`: used by the CORS filter only when no level has a typed
    /// `CorsPolicy` for it (see [`CorsPolicy`]).
    pub legacy_cors: Option<Arc<CorsPolicy>>,
}

/// One `RouteAction.hash_policy` entry.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    /// What is hashed.
    pub kind: HashPolicyKind,
    /// `terminal`: once a hash exists after this entry, the later entries are skipped.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Debug, Clone)]
pub enum HashPolicyKind {
    /// `header`: the values of a request header (lower-case name; `:authority`, `:path`,
    /// `:method` and `:scheme` address the pseudo-headers), optionally regex-rewritten.
    Header {
        /// Lower-case header name.
        name: String,
        /// `regex_rewrite` (pattern, substitution with `\1` groups), applied to every value.
        regex_rewrite: Option<(Regex, String)>,
    },
    /// `cookie`: a request cookie's value; with `ttl`, a missing cookie is generated and set.
    Cookie {
        /// Cookie name.
        name: String,
        /// `path` of a generated cookie (empty: none).
        path: String,
        /// `ttl`: generate the cookie when absent (`Max-Age`; 0 makes a session cookie).
        ttl: Option<Duration>,
        /// `attributes` (name, value) of a generated cookie.
        attributes: Vec<(String, String)>,
    },
    /// `connection_properties.source_ip`: the downstream client's IP.
    SourceIp,
    /// `query_parameter`: the first value of a query parameter.
    QueryParameter {
        /// Parameter name.
        name: String,
    },
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
    /// `per_request_buffer_limit_bytes` (wins over the virtual host's).
    pub per_request_buffer_limit_bytes: Option<u32>,
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
    /// `idle_timeout`: replaces the HCM's `stream_idle_timeout` for this route (`Some(None)`:
    /// 0, which disables it).
    pub idle_timeout: Option<Option<Duration>>,
    /// `max_stream_duration`: when present, Envoy's "new timeouts" (the route `timeout` is
    /// not used and the HCM's stream duration timer takes these values).
    pub max_stream_duration: Option<RouteMaxStreamDuration>,
    /// Retry policy (route level wins over vhost).
    pub retry_policy: Option<RetryPolicy>,
    /// `priority`: which of the cluster's resource managers (circuit breakers, pools) the
    /// request uses.
    pub priority: super::RoutingPriority,
    /// WebSocket upgrades enabled (`Some(false)`: disabled) by `upgrade_configs`.
    pub upgrade_websocket: Option<bool>,
    /// The deprecated `route.cors`: used by the CORS filter only when no level has a typed
    /// `CorsPolicy` for it; it takes precedence over the virtual host's `legacy_cors`.
    pub legacy_cors: Option<Arc<CorsPolicy>>,
    /// `hash_policy`: how the request hash for hash-based load balancers is computed (empty:
    /// no hash; ring hash and Maglev then pick at random, as Envoy).
    pub hash_policy: Vec<HashPolicy>,
}

/// `RouteAction.MaxStreamDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteMaxStreamDuration {
    /// `max_stream_duration`: `None` unset (the HCM's applies), zero disables the HCM's.
    pub max_stream_duration: Option<Duration>,
    /// `grpc_timeout_header_max`: with it, a `grpc-timeout` header sets the duration, capped
    /// at this value (zero: not capped).
    pub grpc_timeout_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`: subtracted from the `grpc-timeout` header's value.
    pub grpc_timeout_header_offset: Option<Duration>,
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

/// `envoy.config.route.v3.RetryPolicy`, as the router's retry state uses it.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `retry_on`: the HTTP and gRPC conditions, parsed once (unknown names are ignored, as
    /// Envoy ignores them).
    pub retry_on: RetryOn,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout` (None: disabled).
    pub per_try_timeout: Option<Duration>,
    /// `per_try_idle_timeout` (None: disabled).
    pub per_try_idle_timeout: Option<Duration>,
    /// `retriable_status_codes` (any number: Envoy does not range-check them).
    pub retriable_status_codes: Vec<u32>,
    /// `retriable_headers`: response headers that make a response retriable.
    pub retriable_headers: Vec<HeaderMatcher>,
    /// `retriable_request_headers`: retries only for requests matching one of these.
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `retry_back_off`: `base_interval` (None: the runtime's `upstream.base_retry_backoff_ms`,
    /// default 25 ms) and `max_interval` (None: 10 times the base).
    pub back_off: Option<RetryBackOff>,
    /// `rate_limited_retry_back_off`.
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// `retry_host_predicate` has `envoy.retry_host_predicates.previous_hosts`.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (Envoy's default 1 when unset or 0).
    pub host_selection_max_attempts: u32,
}

impl Default for RetryPolicy {
    /// Envoy's default policy (no conditions, one retry): what `x-envoy-retry-on` works with
    /// on a route without a policy.
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::NONE,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            back_off: None,
            rate_limited_back_off: None,
            previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }
}

/// `RetryPolicy.RetryBackOff`, in whole milliseconds as Envoy keeps it (at least 1 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackOff {
    /// `base_interval`.
    pub base: Duration,
    /// `max_interval` (None: 10 times the base).
    pub max: Option<Duration>,
}

/// `RetryPolicy.RateLimitedRetryBackOff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitedBackOff {
    /// `reset_headers`, in order: the first that parses (within `max_interval`) wins.
    pub reset_headers: Vec<ResetHeader>,
    /// `max_interval` (default 300 s).
    pub max_interval: Duration,
}

/// `RetryPolicy.ResetHeader`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetHeader {
    /// Lowercased header name.
    pub name: http::HeaderName,
    /// `format`.
    pub format: ResetHeaderFormat,
}

/// `RetryPolicy.ResetHeaderFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetHeaderFormat {
    /// `SECONDS`: a number of seconds to wait.
    Seconds,
    /// `UNIX_TIMESTAMP`: the time to retry at.
    UnixTimestamp,
}

/// Retry conditions (Envoy's `RetryPolicy::RETRY_ON_*` bits): the `retry_on` of a policy, or
/// what `x-envoy-retry-on` / `x-envoy-retry-grpc-on` ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RetryOn(u32);

impl RetryOn {
    /// No condition.
    pub const NONE: RetryOn = RetryOn(0);
    /// `5xx`: any 5xx response, and resets and connect failures (they become a 503).
    pub const FIVE_XX: RetryOn = RetryOn(1 << 0);
    /// `gateway-error`: 502, 503, 504, and resets and connect failures.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// `connect-failure`.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 2);
    /// `retriable-4xx`: 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 3);
    /// `refused-stream`: an HTTP/2 `REFUSED_STREAM` reset.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 4);
    /// `retriable-status-codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 5);
    /// `retriable-headers`.
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 6);
    /// `reset`: any reset or connect failure.
    pub const RESET: RetryOn = RetryOn(1 << 7);
    /// `reset-before-request`: a reset before any request byte went upstream.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 8);
    /// `envoy-ratelimited`: responses carrying `x-envoy-ratelimited`.
    pub const ENVOY_RATE_LIMITED: RetryOn = RetryOn(1 << 9);
    /// `http3-post-connect-failure` (HTTP/3 only: never applies to Pinion's upstreams).
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 10);
    /// gRPC `cancelled` (status 1).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 16);
    /// gRPC `deadline-exceeded` (status 4).
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 17);
    /// gRPC `resource-exhausted` (status 8).
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 18);
    /// gRPC `unavailable` (status 14).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 19);
    /// gRPC `internal` (status 13).
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 20);
    /// All the gRPC conditions.
    pub const ANY_GRPC: RetryOn = RetryOn(0x1f << 16);

    const HTTP_NAMES: [(&'static str, RetryOn); 11] = [
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("envoy-ratelimited", RetryOn::ENVOY_RATE_LIMITED),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
        ("reset", RetryOn::RESET),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
        ("http3-post-connect-failure", RetryOn::HTTP3_POST_CONNECT_FAILURE),
    ];
    const GRPC_NAMES: [(&'static str, RetryOn); 5] = [
        ("cancelled", RetryOn::GRPC_CANCELLED),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE),
        ("internal", RetryOn::GRPC_INTERNAL),
    ];

    /// The HTTP conditions in a comma-separated list (`x-envoy-retry-on`); Envoy trims each
    /// name and skips unknown ones.
    pub fn parse_http(list: &str) -> RetryOn {
        Self::parse(list, &Self::HTTP_NAMES)
    }

    /// The gRPC conditions in a comma-separated list (`x-envoy-retry-grpc-on`).
    pub fn parse_grpc(list: &str) -> RetryOn {
        Self::parse(list, &Self::GRPC_NAMES)
    }

    /// A policy's `retry_on`, which may name both kinds.
    pub fn parse_policy(list: &str) -> RetryOn {
        Self::parse_http(list).union(Self::parse_grpc(list))
    }

    fn parse(list: &str, names: &[(&str, RetryOn)]) -> RetryOn {
        list.split(',')
            .map(str::trim)
            .filter_map(|n| names.iter().find(|(name, _)| *name == n).map(|(_, bit)| *bit))
            .fold(RetryOn::NONE, RetryOn::union)
    }

    /// Both sets of conditions.
    #[must_use]
    pub const fn union(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    /// Whether any condition of `other` is in this set.
    pub const fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// No condition at all.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
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
