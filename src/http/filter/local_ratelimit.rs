//! `envoy.filters.http.local_ratelimit` (Envoy's `LocalRateLimitFilter`): a token bucket per
//! filter config, shared by every worker (Envoy's bucket is per process), or per route when a
//! route carries its own `LocalRateLimit`. An empty bucket answers with the configured status
//! (429) unless enforcement is off, in which case the request goes on and is only counted.

use std::time::Instant;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Response};
use pinion_xds::model::{LocalRateLimitConfig, RuntimeFraction};

use super::callbacks::{DecodeCx, FilterStatus};
pub use super::rate_limiter::LocalRateLimit;
use super::rate_limiter::TokenBucket;
use crate::http::body::ResponseBody;
use crate::http::header_mutation;
use crate::http::local_reply::reply_with_grpc_status;
use crate::http::stream_info::ResponseFlags;

const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
/// gRPC `RESOURCE_EXHAUSTED`, for `rate_limited_as_resource_exhausted`.
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;

/// Request hook, with the most specific limiter for the route.
pub fn decode_headers(limiter: &LocalRateLimit, head: &mut Parts, cx: &mut DecodeCx<'_, '_>) -> FilterStatus {
    let cfg = &*limiter.config;
    let rt = crate::runtime::snapshot();
    let enabled = |f: &RuntimeFraction| rt.feature_enabled(&f.runtime_key, &f.default_value, rand::random());
    if !enabled(&cfg.filter_enabled) {
        return FilterStatus::Continue;
    }
    limiter.stats.enabled.inc();
    let now = Instant::now();
    let Some(bucket) = &limiter.bucket else {
        limiter.stats.ok.inc();
        return FilterStatus::Continue;
    };
    if bucket.consume(now) {
        limiter.stats.ok.inc();
        return FilterStatus::Continue;
    }
    limiter.stats.rate_limited.inc();
    if !enabled(&cfg.filter_enforced) {
        header_mutation::apply(&mut head.headers, &cfg.request_headers_to_add_when_not_enforced, &[], None);
        return FilterStatus::Continue;
    }
    limiter.stats.enforced.inc();
    cx.info.flags.insert(ResponseFlags::RATE_LIMITED);
    let grpc_status = cfg.rate_limited_as_resource_exhausted.then_some(GRPC_RESOURCE_EXHAUSTED);
    let mut resp =
        reply_with_grpc_status(cfg.status, "local_rate_limited", cx.grpc, grpc_status, cx.info, "local_rate_limited");
    decorate_reply(cfg, &mut resp, bucket, now);
    FilterStatus::LocalReply(resp)
}

/// The limited reply's headers: the configured ones, and `retry-after`. (Envoy 1.40 sends no
/// `x-envoy-ratelimited` on a local rate limit: that header belongs to the global one.)
fn decorate_reply(cfg: &LocalRateLimitConfig, resp: &mut Response<ResponseBody>, bucket: &TokenBucket, now: Instant) {
    let h = resp.headers_mut();
    header_mutation::apply(h, &cfg.response_headers_to_add, &[], None);
    if cfg.enable_retry_after_header && !h.contains_key(RETRY_AFTER) {
        let secs = bucket.until_next_token(now).as_secs_f64().ceil().max(1.0) as u64;
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}
