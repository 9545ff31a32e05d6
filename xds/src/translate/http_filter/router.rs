//! `envoy.extensions.filters.http.router.v3.Router`.

use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;

use crate::error::ConfigResult;
use crate::model;
use crate::translate::reject_set;

/// Translate the router's config; errors relative to it.
pub(super) fn router_config(r: &router::Router) -> ConfigResult<model::RouterConfig> {
    let router::Router {
        // Stats only.
        dynamic_stats: _,
        // Tracing only.
        start_child_span: _,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        // Stats only.
        suppress_grpc_request_failure_code_stats: _,
        upstream_http_filters,
        // Early data (0-RTT) is never accepted by Pinion.
        reject_connect_request_early_data: _,
    } = r;
    reject_set(upstream_log, "upstream_log")?;
    reject_set(upstream_log_options, "upstream_log_options")?;
    reject_set(strict_check_headers, "strict_check_headers")?;
    reject_set(upstream_http_filters, "upstream_http_filters")?;
    Ok(model::RouterConfig {
        suppress_envoy_headers: *suppress_envoy_headers,
        respect_expected_rq_timeout: *respect_expected_rq_timeout,
    })
}
