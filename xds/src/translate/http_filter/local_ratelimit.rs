//! `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` (filter-level and per-route).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as rl;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use envoy_types::pb::envoy::r#type::v3 as ty;

use super::Level;
use crate::error::{ConfigError, ConfigResult};
use crate::model;
use crate::translate::route::{header_value_option, runtime_fraction};
use crate::translate::{at, bool_or, duration, enum_value, reject_set, u32_or};

/// Envoy refuses faster refills than this (its token bucket timer granularity).
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Translate a `LocalRateLimit`; errors relative to it.
pub(super) fn local_rate_limit(c: &lrl::LocalRateLimit, level: Level) -> ConfigResult<model::LocalRateLimitConfig> {
    let lrl::LocalRateLimit {
        stat_prefix,
        status,
        token_bucket,
        filter_enabled,
        filter_enforced,
        request_headers_to_add_when_not_enforced,
        response_headers_to_add,
        descriptors,
        stage,
        local_rate_limit_per_downstream_connection,
        local_cluster_rate_limit,
        enable_x_ratelimit_headers,
        vh_rate_limits,
        always_consume_default_token_bucket,
        rate_limited_as_resource_exhausted,
        rate_limits,
        // Only meaningful with wildcard descriptors, which are rejected.
        max_dynamic_descriptors: _,
        enable_retry_after_header,
    } = c;
    if stat_prefix.is_empty() {
        return Err(ConfigError::invalid("stat_prefix", "value length must be at least 1 characters"));
    }
    reject_set(descriptors, "descriptors")?;
    reject_set(local_cluster_rate_limit, "local_cluster_rate_limit")?;
    reject_set(rate_limits, "rate_limits")?;
    if *stage > 10 {
        return Err(ConfigError::invalid("stage", "value must be less than or equal to 10"));
    }
    let token_bucket = match token_bucket {
        None if level == Level::PerRoute => {
            return Err(ConfigError::invalid(
                "token_bucket",
                "local rate limit token bucket must be set for per filter configs",
            ))
        }
        None => None,
        Some(b) => bucket(b).map_err(at("token_bucket"))?,
    };
    let x_headers =
        match enum_value::<rl::XRateLimitHeadersRfcVersion>(*enable_x_ratelimit_headers, "enable_x_ratelimit_headers")?
        {
            rl::XRateLimitHeadersRfcVersion::Off => false,
            rl::XRateLimitHeadersRfcVersion::DraftVersion03 => true,
        };
    let vh_rate_limits = match enum_value::<rl::VhRateLimitsOptions>(*vh_rate_limits, "vh_rate_limits")? {
        rl::VhRateLimitsOptions::Override => model::VhRateLimits::Override,
        rl::VhRateLimitsOptions::Include => model::VhRateLimits::Include,
        rl::VhRateLimitsOptions::Ignore => model::VhRateLimits::Ignore,
    };
    // Unset filter_enabled / filter_enforced mean 0% in Envoy ("for safety").
    let zero = || model::RuntimeFraction {
        default_value: model::FractionalPercent { numerator: 0, denominator: 100 },
        runtime_key: String::new(),
    };
    Ok(model::LocalRateLimitConfig {
        stat_prefix: stat_prefix.clone(),
        status: status_code(status.as_ref()),
        token_bucket,
        filter_enabled: match filter_enabled {
            None => zero(),
            Some(f) => runtime_fraction(f).map_err(at("filter_enabled"))?,
        },
        filter_enforced: match filter_enforced {
            None => zero(),
            Some(f) => runtime_fraction(f).map_err(at("filter_enforced"))?,
        },
        request_headers_to_add_when_not_enforced: headers(request_headers_to_add_when_not_enforced)
            .map_err(at("request_headers_to_add_when_not_enforced"))?,
        response_headers_to_add: headers(response_headers_to_add).map_err(at("response_headers_to_add"))?,
        stage: *stage,
        local_rate_limit_per_downstream_connection: *local_rate_limit_per_downstream_connection,
        enable_x_ratelimit_headers: x_headers,
        vh_rate_limits,
        always_consume_default_token_bucket: bool_or(always_consume_default_token_bucket, true),
        rate_limited_as_resource_exhausted: *rate_limited_as_resource_exhausted,
        enable_retry_after_header: *enable_retry_after_header,
    })
}

/// Envoy answers 429 unless `status` is a 4xx/5xx code.
fn status_code(s: Option<&ty::HttpStatus>) -> u16 {
    s.and_then(|ty::HttpStatus { code }| u16::try_from(*code).ok()).filter(|c| *c >= 400).unwrap_or(429)
}

/// Translate a `TokenBucket` (errors relative to it); `None` when Envoy ignores the bucket.
fn bucket(b: &ty::TokenBucket) -> ConfigResult<Option<model::TokenBucket>> {
    let ty::TokenBucket { max_tokens, tokens_per_fill, fill_interval } = b;
    let Some(fill) = fill_interval else {
        return Err(ConfigError::invalid("fill_interval", "value is required"));
    };
    let fill = duration(fill).map_err(at("fill_interval"))?;
    if fill.is_zero() {
        return Err(ConfigError::invalid("fill_interval", "value must be greater than 0s"));
    }
    let tokens_per_fill = u32_or(tokens_per_fill, 1);
    if tokens_per_fill == 0 {
        return Err(ConfigError::invalid("tokens_per_fill", "value must be greater than 0"));
    }
    // Envoy reads the interval in whole milliseconds and has no bucket at all (every request
    // allowed) when that is 0.
    let fill = Duration::from_millis(u64::try_from(fill.as_millis()).unwrap_or(u64::MAX));
    if fill.is_zero() {
        return Ok(None);
    }
    // An empty bucket denies everything and is never refilled, so Envoy skips the check then.
    if *max_tokens > 0 && fill < MIN_FILL_INTERVAL {
        return Err(ConfigError::invalid("fill_interval", "local rate limit token bucket fill timer must be >= 50ms"));
    }
    Ok(Some(model::TokenBucket { max_tokens: *max_tokens, tokens_per_fill, fill_interval: fill }))
}

fn headers(hs: &[core::HeaderValueOption]) -> ConfigResult<Vec<model::HeaderValueOption>> {
    let mut out = Vec::with_capacity(hs.len());
    for (i, h) in hs.iter().enumerate() {
        out.push(header_value_option(h).map_err(at(format!("[{i}]")))?);
    }
    Ok(out)
}
