//! The HCM's HTTP filters (`http_filters`) and their per-route overrides
//! (`typed_per_filter_config` on route configurations, virtual hosts, routes and weighted
//! clusters), with Envoy's defaults filled in.
//!
//! Envoy looks a per-route override up by the filter's configured `name` at request time and
//! lets each filter decide how levels combine; the notes on each config say how Envoy does it.

use std::sync::Arc;
use std::time::Duration;

use super::{FractionalPercent, HeaderMatcher, HeaderValueOption, RouterConfig, RuntimeFraction, StringMatcher};

/// One entry of the HCM's `http_filters`, in config order.
#[derive(Debug, Clone)]
pub struct HttpFilter {
    /// `name`: the key routes use in `typed_per_filter_config` (not necessarily unique).
    pub name: String,
    /// `disabled`: the filter runs only where a route's per-filter config enables it
    /// ([`FilterOverride::Enabled`] or a config override).
    pub disabled: bool,
    /// What the filter is, with its config.
    pub kind: HttpFilterKind,
}

/// The HTTP filters Pinion implements, with their filter-level config.
#[derive(Debug, Clone)]
pub enum HttpFilterKind {
    /// `envoy.filters.http.router` (always last, never disabled).
    Router(RouterConfig),
    /// `envoy.filters.http.on_demand`: a request whose host has no virtual host asks VHDS for
    /// it and waits for the answer.
    OnDemand,
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault`.
    Fault(Arc<FaultConfig>),
    /// `envoy.extensions.filters.http.cors.v3.Cors` (no settings: policies come per route).
    Cors(Arc<CorsConfig>),
    /// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
    LocalRateLimit(Arc<LocalRateLimitConfig>),
    /// `envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`.
    HeaderMutation(Arc<HeaderMutationConfig>),
}

/// A per-route override from `typed_per_filter_config`, keyed by filter name.
#[derive(Debug, Clone)]
pub enum FilterOverride {
    /// `envoy.config.route.v3.FilterConfig{disabled: true}`: the filter does not run here.
    Disabled,
    /// `FilterConfig{config: {}}` (an empty `Any`): enables a filter that is `disabled` in the
    /// HCM, with its filter-level config.
    Enabled,
    /// A per-route `HTTPFault`: replaces the filter-level fault config (most specific level wins).
    Fault(Arc<FaultConfig>),
    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy` (see [`CorsPolicy`] for how levels merge).
    Cors(Arc<CorsPolicy>),
    /// A per-route `LocalRateLimit` with its own token bucket (most specific level wins).
    LocalRateLimit(Arc<LocalRateLimitConfig>),
    /// `HeaderMutationPerRoute` (every level applies, see [`HeaderMutationConfig`]).
    HeaderMutation(Arc<HeaderMutationPerRoute>),
}

/// `typed_per_filter_config`: filter name -> override, sorted by name (empty = none).
pub type PerFilterConfig = Vec<(String, FilterOverride)>;

/// The override for filter `name` at one level, if any (`config` is sorted by name).
pub fn find_override<'a>(config: &'a [(String, FilterOverride)], name: &str) -> Option<&'a FilterOverride> {
    config.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().and_then(|i| config.get(i)).map(|(_, o)| o)
}

// ---------------------------------------------------------------------------------------------
// fault

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`. A per-route config replaces the
/// filter-level one entirely (Envoy uses the most specific level's).
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// `delay`, if any.
    pub delay: Option<FaultDelay>,
    /// `abort`, if any.
    pub abort: Option<FaultAbort>,
    /// `upstream_cluster`: faults apply only to requests routed to this cluster (`None` = all).
    pub upstream_cluster: Option<String>,
    /// `headers`: faults apply only when every matcher matches the request.
    pub headers: Vec<HeaderMatcher>,
    /// `downstream_nodes`: faults apply only when `x-envoy-downstream-service-node` is one of
    /// these (empty = all).
    pub downstream_nodes: Vec<String>,
    /// `max_active_faults` (`None` = unlimited; runtime key `runtime.max_active_faults`).
    pub max_active_faults: Option<u32>,
    /// The runtime keys that override the percentages, durations and codes.
    pub runtime: FaultRuntimeKeys,
    /// `disable_downstream_cluster_stats`: no `<downstream-cluster>.` fault stats.
    pub disable_downstream_cluster_stats: bool,
}

/// `common.fault.v3.FaultDelay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultDelay {
    /// How long.
    pub kind: FaultDelayKind,
    /// `percentage` of requests delayed (unset = 0%, as in Envoy).
    pub percentage: FractionalPercent,
}

/// `FaultDelay.fault_delay_secifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDelayKind {
    /// `fixed_delay`, truncated to whole milliseconds as Envoy does (always >= 0; PGV: > 0s).
    Fixed(Duration),
    /// `header_delay`: the delay in ms comes from `x-envoy-fault-delay-request`.
    Header,
}

/// `http.fault.v3.FaultAbort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultAbort {
    /// What to answer.
    pub kind: FaultAbortKind,
    /// `percentage` of requests aborted (unset = 0%, as in Envoy).
    pub percentage: FractionalPercent,
    /// `response_body` (default `fault filter abort`).
    pub response_body: String,
}

/// `FaultAbort.error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAbortKind {
    /// `http_status` in [200, 600).
    Http(u16),
    /// `grpc_status` (any number; sent as `grpc-status`).
    Grpc(u32),
    /// `header_abort`: the code comes from `x-envoy-fault-abort-request` /
    /// `x-envoy-fault-abort-grpc-request`.
    Header,
}

/// The fault filter's runtime keys, with Envoy's defaults when unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRuntimeKeys {
    /// `delay_percent_runtime` (default `fault.http.delay.fixed_delay_percent`).
    pub delay_percent: String,
    /// `abort_percent_runtime` (default `fault.http.abort.abort_percent`).
    pub abort_percent: String,
    /// `delay_duration_runtime` (default `fault.http.delay.fixed_duration_ms`).
    pub delay_duration: String,
    /// `abort_http_status_runtime` (default `fault.http.abort.http_status`).
    pub abort_http_status: String,
    /// `abort_grpc_status_runtime` (default `fault.http.abort.grpc_status`).
    pub abort_grpc_status: String,
    /// `max_active_faults_runtime` (default `fault.http.max_active_faults`).
    pub max_active_faults: String,
    /// `response_rate_limit_percent_runtime` (default `fault.http.rate_limit.response_percent`).
    pub response_rate_limit_percent: String,
}

// ---------------------------------------------------------------------------------------------
// cors

/// `envoy.extensions.filters.http.cors.v3.Cors`: empty in v3; the policies come from
/// `typed_per_filter_config` ([`FilterOverride::Cors`]) or the deprecated route/vhost `cors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {}

/// A CORS policy: `envoy.extensions.filters.http.cors.v3.CorsPolicy`, or the deprecated
/// `envoy.config.route.v3.CorsPolicy` (same fields).
///
/// Envoy's CORS filter collects the policies of every level (route first, then virtual host,
/// then route configuration) and takes each field from the first policy that sets it, so the
/// optional fields stay `None` when unset; `filter_enabled` / `shadow_enabled` come from the
/// most specific policy only. The deprecated `cors` fields are used only when no level has a
/// typed policy for the filter.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// `allow_origin_string_match`: the origin is allowed if any matches (a matcher matching
    /// `*` allows every origin).
    pub allow_origin_string_match: Vec<StringMatcher>,
    /// `allow_methods` (`None` when empty); `*` echoes `access-control-request-method`.
    pub allow_methods: Option<String>,
    /// `allow_headers` (`None` when empty); `*` echoes `access-control-request-headers`.
    pub allow_headers: Option<String>,
    /// `expose_headers` (`None` when empty).
    pub expose_headers: Option<String>,
    /// `max_age`, sent verbatim (`None` when empty).
    pub max_age: Option<String>,
    /// `allow_credentials` (unset at every level = false).
    pub allow_credentials: Option<bool>,
    /// `allow_private_network_access` (unset at every level = false).
    pub allow_private_network_access: Option<bool>,
    /// `forward_not_matching_preflights` (unset at every level = true).
    pub forward_not_matching_preflights: Option<bool>,
    /// `filter_enabled` (unset = 100%, empty runtime key).
    pub filter_enabled: RuntimeFraction,
    /// `shadow_enabled` (unset = 0%, empty runtime key): evaluate and count, do not enforce.
    pub shadow_enabled: RuntimeFraction,
}

// ---------------------------------------------------------------------------------------------
// local_ratelimit

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`. A per-route config
/// replaces the filter-level one (most specific level wins) and has its own token bucket.
#[derive(Debug, Clone)]
pub struct LocalRateLimitConfig {
    /// `stat_prefix`: stats under `<stat_prefix>.http_local_rate_limit.`.
    pub stat_prefix: String,
    /// `status.code` of rate-limited responses (default 429; codes below 400 become 429).
    pub status: u16,
    /// `token_bucket`. `None` means no bucket, so every request is allowed: unset (allowed
    /// only at filter level), or a `fill_interval` under 1ms, which Envoy reads as 0ms.
    pub token_bucket: Option<TokenBucket>,
    /// `filter_enabled` (unset = 0%, empty runtime key: the filter does nothing).
    pub filter_enabled: RuntimeFraction,
    /// `filter_enforced` (unset = 0%, empty runtime key: limited requests are only counted and
    /// get `request_headers_to_add_when_not_enforced`).
    pub filter_enforced: RuntimeFraction,
    /// `request_headers_to_add_when_not_enforced`: added to limited but forwarded requests.
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    /// `response_headers_to_add`: added to the local 429 (or `status`) reply.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// `stage` (0..=10): which route `rate_limits` populate descriptors.
    pub stage: u32,
    /// `local_rate_limit_per_downstream_connection`: one bucket per connection instead of one
    /// shared by all workers.
    pub local_rate_limit_per_downstream_connection: bool,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`: send `x-ratelimit-limit`,
    /// `x-ratelimit-remaining` and `x-ratelimit-reset`.
    pub enable_x_ratelimit_headers: bool,
    /// `vh_rate_limits`.
    pub vh_rate_limits: VhRateLimits,
    /// `always_consume_default_token_bucket` (default true).
    pub always_consume_default_token_bucket: bool,
    /// `rate_limited_as_resource_exhausted`: gRPC calls get RESOURCE_EXHAUSTED, not UNAVAILABLE.
    pub rate_limited_as_resource_exhausted: bool,
    /// `enable_retry_after_header`: a 429 carries `retry-after` (seconds to the next token, >= 1)
    /// unless `response_headers_to_add` sets one.
    pub enable_retry_after_header: bool,
}

/// `envoy.type.v3.TokenBucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// `max_tokens`: the bucket's capacity and initial fill; 0 denies every request.
    pub max_tokens: u32,
    /// `tokens_per_fill` (default 1).
    pub tokens_per_fill: u32,
    /// `fill_interval`, truncated to whole milliseconds as Envoy does (>= 50ms unless
    /// `max_tokens` is 0).
    pub fill_interval: Duration,
}

/// `envoy.extensions.common.ratelimit.v3.VhRateLimitsOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhRateLimits {
    /// `OVERRIDE` (default): vhost rate limits apply only when the route has none.
    Override,
    /// `INCLUDE`: vhost rate limits apply too.
    Include,
    /// `IGNORE`: vhost rate limits never apply.
    Ignore,
}

// ---------------------------------------------------------------------------------------------
// header_mutation

/// `envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`. The filter-level
/// mutations apply first, then the per-route ones of every level: most specific level first
/// (route, virtual host, route configuration), or least specific first when
/// `most_specific_header_mutations_wins`.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutationConfig {
    /// `mutations`.
    pub mutations: HeaderMutationLists,
    /// `most_specific_header_mutations_wins`.
    pub most_specific_header_mutations_wins: bool,
}

/// `HeaderMutationPerRoute`.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutationPerRoute {
    /// `mutations`.
    pub mutations: HeaderMutationLists,
}

/// `header_mutation.v3.Mutations` (the request and response lists; the others are rejected).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutationLists {
    /// `request_mutations`, in order, before the request goes upstream.
    pub request_mutations: Vec<HeaderMutationAction>,
    /// `response_mutations`, in order, before the response goes downstream.
    pub response_mutations: Vec<HeaderMutationAction>,
}

/// `envoy.config.common.mutation_rules.v3.HeaderMutation`.
#[derive(Debug, Clone)]
pub enum HeaderMutationAction {
    /// `remove`: the header (lowercased) is removed. Envoy allows any name here, pseudo-headers
    /// and `host` included, so this is a plain string.
    Remove(String),
    /// `append`: a header to add, as in route-level `*_headers_to_add`.
    Append(HeaderValueOption),
    /// `remove_on_match.key_matcher`: every header whose name matches is removed.
    RemoveOnMatch(StringMatcher),
}
