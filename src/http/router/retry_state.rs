//! Retry state (Envoy's `RetryStateImpl`, `retry_state_impl.cc`): after each attempt the
//! router asks [`RetryState::should_retry`] whether to try again, and after how long.
//!
//! Pure: no clocks, timers, sockets or stats. The random numbers for the jittered backoff come
//! from the injected RNG, the wall clock (for `UNIX_TIMESTAMP` reset headers) from an injected
//! function, and the circuit breaker's admission from a closure, so the decisions are
//! table-tested. The router counts the stats from the decision.
//!
//! A request has a state only when its route's policy or its `x-envoy-retry-on` /
//! `x-envoy-retry-grpc-on` headers name a condition ([`RetryState::create`]); without one,
//! nothing is allocated and every attempt is final.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use pinion_xds::model::{HeaderMatcher, ResetHeaderFormat, RetryOn, RetryPolicy};

use crate::http::route_table::{header_map_matches, value_matches};

/// Request headers that control retries; the router consumes them all (Envoy's
/// `consume_all_retry_headers`), whether or not the request gets a retry state.
pub const X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
/// gRPC retry conditions.
pub const X_ENVOY_RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
/// Overrides `num_retries`.
pub const X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
/// Extra `retriable_status_codes`.
pub const X_ENVOY_RETRIABLE_STATUS_CODES: HeaderName = HeaderName::from_static("x-envoy-retriable-status-codes");
/// Extra `retriable_headers` (names only: presence matches).
pub const X_ENVOY_RETRIABLE_HEADER_NAMES: HeaderName = HeaderName::from_static("x-envoy-retriable-header-names");
/// Hedging (not implemented): consumed like the others.
const X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-hedge-on-per-try-timeout");
/// Per-try timeout override (read by the router's timeouts before the state is made).
pub const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
/// An upstream Envoy rate-limited the request: retried only on `envoy-ratelimited`.
const X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Envoy's default `upstream.base_retry_backoff_ms`.
pub const DEFAULT_BASE_BACKOFF_MS: u64 = 25;

/// The policy of a route without one, when `x-envoy-retry-on` asks for retries (Envoy's
/// `DefaultRetryPolicy`: one retry, default backoff, nothing else).
static DEFAULT_POLICY: RetryPolicy = RetryPolicy {
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
};

/// Why an attempt ended without response headers (Envoy's stream reset reasons, as far as
/// the retry conditions tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// No connection: refused, unreachable, connect timeout, TLS handshake failure.
    ConnectionFailure,
    /// The peer refused the stream (HTTP/2 `REFUSED_STREAM`).
    RefusedStream,
    /// Any other reset: the connection closed or broke, a protocol error, or the router's own
    /// reset after a per-try timeout.
    Other,
}

/// How an attempt ended, as the retry conditions see it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Response headers arrived.
    Response {
        /// Status code.
        status: u16,
        /// Response headers.
        headers: &'a HeaderMap,
    },
    /// No response headers.
    Reset {
        /// Why.
        reason: ResetReason,
        /// Some attempt of this request (this one or an earlier one) got as far as sending
        /// the request: `reset-before-request` no longer applies (Envoy keeps this sticky).
        request_started: bool,
    },
}

/// What the router should do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Answer with this outcome. `after_retry`: an earlier attempt was retried, so this
    /// one counts as a successful retry (`upstream_rq_retry_success`), whatever its status.
    No {
        /// A retry led here.
        after_retry: bool,
    },
    /// Retriable, but the retries are used up (`upstream_rq_retry_limit_exceeded`, `URX`).
    LimitExceeded,
    /// Retriable, but the circuit breaker refused the retry (`upstream_rq_retry_overflow`,
    /// `UO`).
    Overflow,
    /// Try again after the backoff.
    Retry(Backoff),
}

/// The wait before a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// How long.
    pub delay: Duration,
    /// From the response's rate-limit reset header (`upstream_rq_retry_backoff_ratelimited`)
    /// rather than the exponential backoff (`upstream_rq_retry_backoff_exponential`).
    pub rate_limited: bool,
}

/// Envoy's `JitteredExponentialBackOffStrategy`: a uniformly random wait below an interval
/// that doubles from `base` up to `max`.
#[derive(Debug, Clone, Copy)]
struct ExponentialBackoff {
    max_ms: u64,
    next_ms: u64,
}

impl ExponentialBackoff {
    fn new(base_ms: u64, max_ms: u64) -> Self {
        // Envoy asserts `0 < base <= max`; config validation makes it so, and the runtime's
        // base is clamped here (`random % 0` would be undefined).
        let base_ms = base_ms.max(1);
        ExponentialBackoff { max_ms: max_ms.max(base_ms), next_ms: base_ms }
    }

    fn next(&mut self, random: u64) -> u64 {
        let backoff = self.next_ms;
        self.next_ms = if self.next_ms < self.max_ms / 2 { self.next_ms * 2 } else { self.max_ms };
        random % backoff
    }
}

/// A request's retry state.
pub struct RetryState<'a, R> {
    policy: &'a RetryPolicy,
    retry_on: RetryOn,
    retries_remaining: u32,
    /// `x-envoy-retriable-status-codes`, beside the policy's.
    header_status_codes: Vec<u32>,
    /// `x-envoy-retriable-header-names`, beside the policy's matchers.
    header_names: Vec<HeaderName>,
    backoff: ExponentialBackoff,
    /// The wait the last retriable response's reset header asked for (used once).
    rate_limited_ms: Option<u64>,
    /// A retry was granted and its attempt is the current one.
    retrying: bool,
    /// Hosts tried so far (only with the `previous_hosts` predicate).
    attempted: Vec<SocketAddr>,
    rng: R,
    /// Seconds since the Unix epoch (for `UNIX_TIMESTAMP` reset headers).
    unix_now: fn() -> u64,
}

impl<R> std::fmt::Debug for RetryState<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryState")
            .field("retry_on", &self.retry_on)
            .field("retries_remaining", &self.retries_remaining)
            .field("retrying", &self.retrying)
            .finish_non_exhaustive()
    }
}

/// Remove every retry header (Envoy consumes them so they never reach the upstream). A scan
/// of the names first: almost no request carries any `x-envoy-*` header by now (the HCM strips
/// them from external clients), and one pass is cheaper than seven hashed lookups.
pub fn consume_retry_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        return;
    }
    for h in [
        X_ENVOY_RETRY_ON,
        X_ENVOY_RETRY_GRPC_ON,
        X_ENVOY_MAX_RETRIES,
        X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT,
        X_ENVOY_RETRIABLE_HEADER_NAMES,
        X_ENVOY_RETRIABLE_STATUS_CODES,
        X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    ] {
        headers.remove(h);
    }
}

/// The values of `name`, each split at `,` and trimmed (Envoy joins repeated headers).
fn header_tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Seconds since the Unix epoch, from the system clock.
pub fn system_unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl<'a, R: rand::RngCore> RetryState<'a, R> {
    /// Envoy's `RetryStateImpl::create`: a state when the route's policy (`policy`, the
    /// route's or else the virtual host's) or the request's `x-envoy-retry-on` /
    /// `x-envoy-retry-grpc-on` ask for retries; `None` otherwise. Consumes the retry headers
    /// either way. `request_matches` tells whether the request (its `headers` and pseudo
    /// headers) matches one of the policy's `retriable_request_headers`; `base_backoff_ms` is the runtime's
    /// `upstream.base_retry_backoff_ms` (used without a `retry_back_off`).
    pub fn create(
        policy: Option<&'a RetryPolicy>,
        headers: &mut HeaderMap,
        request_matches: impl Fn(&HeaderMatcher, &HeaderMap) -> bool,
        base_backoff_ms: impl FnOnce() -> u64,
        rng: impl FnOnce() -> R,
    ) -> Option<Self> {
        let policy_on = policy.map_or(RetryOn::NONE, |p| p.retry_on);
        if policy_on.is_empty() {
            // The common case, kept to one pass over the header names.
            if !headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
                return None;
            }
            if !headers.contains_key(X_ENVOY_RETRY_ON) && !headers.contains_key(X_ENVOY_RETRY_GRPC_ON) {
                consume_retry_headers(headers);
                return None;
            }
        }
        let policy = policy.unwrap_or(&DEFAULT_POLICY);
        let mut retry_on = policy_on;
        for t in header_tokens(headers, &X_ENVOY_RETRY_ON) {
            retry_on = retry_on.union(RetryOn::parse_http(t));
        }
        for t in header_tokens(headers, &X_ENVOY_RETRY_GRPC_ON) {
            retry_on = retry_on.union(RetryOn::parse_grpc(t));
        }
        // A policy limited to some requests: the others get no retries at all.
        if !policy.retriable_request_headers.is_empty()
            && !policy.retriable_request_headers.iter().any(|m| request_matches(m, headers))
        {
            retry_on = RetryOn::NONE;
        }
        let mut retries_remaining = policy.num_retries;
        if !retry_on.is_empty() {
            if let Some(n) = headers.get(X_ENVOY_MAX_RETRIES).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                // Envoy keeps it in a uint32 (truncating, as here).
                retries_remaining = n as u32;
            }
        }
        let header_status_codes =
            header_tokens(headers, &X_ENVOY_RETRIABLE_STATUS_CODES).filter_map(|t| t.parse::<u32>().ok()).collect();
        let header_names = header_tokens(headers, &X_ENVOY_RETRIABLE_HEADER_NAMES)
            .filter_map(|t| HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        consume_retry_headers(headers);
        let (base_ms, max_ms) = match policy.back_off {
            Some(b) => {
                let base = b.base.as_millis() as u64;
                (base, b.max.map_or(base.saturating_mul(10), |m| m.as_millis() as u64))
            }
            None => {
                let base = base_backoff_ms();
                (base, base.saturating_mul(10))
            }
        };
        Some(RetryState {
            policy,
            retry_on,
            retries_remaining,
            header_status_codes,
            header_names,
            backoff: ExponentialBackoff::new(base_ms, max_ms),
            rate_limited_ms: None,
            retrying: false,
            attempted: Vec::new(),
            rng: rng(),
            unix_now: system_unix_now,
        })
    }

    /// Use `unix_now` as the wall clock (tests).
    pub fn with_clock(mut self, unix_now: fn() -> u64) -> Self {
        self.unix_now = unix_now;
        self
    }

    /// Whether any retry is possible: the request body must then be kept for a replay.
    pub fn enabled(&self) -> bool {
        !self.retry_on.is_empty()
    }

    /// Retries left.
    pub fn retries_remaining(&self) -> u32 {
        self.retries_remaining
    }

    /// The policy in effect (the route's, or Envoy's default).
    pub fn policy(&self) -> &'a RetryPolicy {
        self.policy
    }

    /// Envoy's `wouldRetryFromHeaders`.
    fn would_retry_response(&self, status: u16, headers: &HeaderMap) -> bool {
        let on = self.retry_on;
        // A response an upstream Envoy rate limited: only `envoy-ratelimited` retries it.
        if headers.contains_key(X_ENVOY_RATELIMITED) {
            return on.intersects(RetryOn::ENVOY_RATE_LIMITED);
        }
        if on.intersects(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.intersects(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status) {
            return true;
        }
        if on.intersects(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.intersects(RetryOn::RETRIABLE_STATUS_CODES) {
            let s = u32::from(status);
            if self.policy.retriable_status_codes.contains(&s) || self.header_status_codes.contains(&s) {
                return true;
            }
        }
        if on.intersects(RetryOn::RETRIABLE_HEADERS) {
            // The one pseudo-header of a response, spelled out only when a matcher asks.
            let status_text = if self.policy.retriable_headers.iter().any(|m| m.name == ":status") {
                status.to_string()
            } else {
                String::new()
            };
            let matched = |m: &HeaderMatcher| match m.name.as_str() {
                ":status" => value_matches(m, Some(status_text.as_str())),
                name => header_map_matches(m, name, headers),
            };
            if self.policy.retriable_headers.iter().any(matched)
                || self.header_names.iter().any(|n| headers.contains_key(n))
            {
                return true;
            }
        }
        if on.intersects(RetryOn::ANY_GRPC) {
            // `grpc-status` in the headers (a trailers-only response), whatever the request.
            let grpc = headers.get(GRPC_STATUS).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let bit = match grpc {
                Some(1) => RetryOn::GRPC_CANCELLED,
                Some(4) => RetryOn::GRPC_DEADLINE_EXCEEDED,
                Some(8) => RetryOn::GRPC_RESOURCE_EXHAUSTED,
                Some(13) => RetryOn::GRPC_INTERNAL,
                Some(14) => RetryOn::GRPC_UNAVAILABLE,
                _ => RetryOn::NONE,
            };
            if on.intersects(bit) {
                return true;
            }
        }
        false
    }

    /// Envoy's `wouldRetryFromReset` (over TCP: no HTTP/3 branches).
    fn would_retry_reset(&self, reason: ResetReason, request_started: bool) -> bool {
        let on = self.retry_on;
        if reason == ResetReason::ConnectionFailure && on.intersects(RetryOn::CONNECT_FAILURE) {
            return true;
        }
        if on.intersects(RetryOn::RESET_BEFORE_REQUEST) && !request_started {
            return true;
        }
        if on.intersects(RetryOn::RESET.union(RetryOn::FIVE_XX).union(RetryOn::GATEWAY_ERROR)) {
            // A reset becomes a 503 (Envoy counts it as a 5xx).
            return true;
        }
        reason == ResetReason::RefusedStream && on.intersects(RetryOn::REFUSED_STREAM)
    }

    /// The wait a retriable response asks for with a reset header of
    /// `rate_limited_retry_back_off` (the first that parses within `max_interval`).
    fn rate_limited_interval_ms(&self, headers: &HeaderMap) -> Option<u64> {
        let rl = self.policy.rate_limited_back_off.as_ref()?;
        let max_ms = rl.max_interval.as_millis() as u64;
        rl.reset_headers.iter().find_map(|h| {
            // Only the first value counts (a trusted header, per Envoy's API).
            let n = headers.get(&h.name)?.to_str().ok()?.parse::<u64>().ok()?;
            let secs = match h.format {
                ResetHeaderFormat::Seconds => n,
                ResetHeaderFormat::UnixTimestamp => n.checked_sub((self.unix_now)())?,
            };
            let ms = secs.saturating_mul(1000);
            (ms <= max_ms).then_some(ms)
        })
    }

    /// Envoy's `shouldRetry{Headers,Reset}`: after an attempt, whether to try again and
    /// after how long. `admit` is the circuit breaker's word on one more retry, asked only
    /// for a retriable outcome with retries left (see `admit_retry`).
    pub fn should_retry(&mut self, outcome: &Outcome<'_>, admit: impl FnOnce() -> bool) -> RetryDecision {
        let would = match *outcome {
            Outcome::Response { status, headers } => {
                let would = self.would_retry_response(status, headers);
                if would {
                    // A reset header's wait applies to this retry only; under 2 ms Envoy's
                    // lower-bound jitter is not defined, so the exponential backoff applies.
                    self.rate_limited_ms = self.rate_limited_interval_ms(headers).filter(|ms| *ms > 1);
                }
                would
            }
            Outcome::Reset { reason, request_started } => self.would_retry_reset(reason, request_started),
        };
        let after_retry = std::mem::take(&mut self.retrying);
        if !would {
            return RetryDecision::No { after_retry };
        }
        if self.retries_remaining == 0 {
            return RetryDecision::LimitExceeded;
        }
        self.retries_remaining -= 1;
        if !admit() {
            return RetryDecision::Overflow;
        }
        self.retrying = true;
        let random = self.rng.next_u64();
        let backoff = match self.rate_limited_ms.take() {
            // Envoy's `JitteredLowerBoundBackOffStrategy`: between the interval and 1.5 times it.
            Some(ms) => Backoff { delay: Duration::from_millis(random % (ms >> 1) + ms), rate_limited: true },
            None => Backoff { delay: Duration::from_millis(self.backoff.next(random)), rate_limited: false },
        };
        RetryDecision::Retry(backoff)
    }

    /// The `previous_hosts` predicate records each host an attempt went to.
    pub fn on_host_attempted(&mut self, host: SocketAddr) {
        if self.policy.previous_hosts && !self.attempted.contains(&host) {
            self.attempted.push(host);
        }
    }

    /// Whether the load balancer should pick again instead of `host` (it was tried already).
    pub fn should_select_another_host(&self, host: SocketAddr) -> bool {
        self.policy.previous_hosts && self.attempted.contains(&host)
    }

    /// How many picks a retry's host selection may make (Envoy: the policy's
    /// `host_selection_retry_max_attempts`, plus the first pick).
    pub fn host_selection_picks(&self) -> u32 {
        self.policy.host_selection_max_attempts.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use pinion_xds::model::{HeaderMatchSpec, RateLimitedBackOff, ResetHeader, RetryBackOff, StringMatcher};

    use super::*;

    /// Returns the numbers it was given, in order, then zeros.
    struct Seq(Vec<u64>);

    impl rand::RngCore for Seq {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            if self.0.is_empty() {
                0
            } else {
                self.0.remove(0)
            }
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(0);
        }
    }

    fn policy(retry_on: &str, num_retries: u32) -> RetryPolicy {
        RetryPolicy { retry_on: RetryOn::parse_policy(retry_on), num_retries, ..RetryPolicy::default() }
    }

    fn state<'a>(p: &'a RetryPolicy, headers: &mut HeaderMap, random: Vec<u64>) -> RetryState<'a, Seq> {
        RetryState::create(Some(p), headers, |_, _| false, || DEFAULT_BASE_BACKOFF_MS, || Seq(random))
            .expect("a policy with conditions has a state")
    }

    fn resp(status: u16, headers: &HeaderMap) -> Outcome<'_> {
        Outcome::Response { status, headers }
    }

    fn reset(reason: ResetReason, request_started: bool) -> Outcome<'static> {
        Outcome::Reset { reason, request_started }
    }

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn retried(d: RetryDecision) -> bool {
        matches!(d, RetryDecision::Retry(_))
    }

    #[test]
    fn no_policy_no_headers_no_state() {
        let mut h = hm(&[("x-envoy-max-retries", "3"), ("x-envoy-retriable-status-codes", "418")]);
        let s = RetryState::create(None, &mut h, |_, _| true, || 25, || Seq(vec![]));
        assert!(s.is_none());
        // Consumed all the same: they never reach the upstream.
        assert!(h.is_empty(), "{h:?}");
        let p = policy("", 3);
        assert!(RetryState::create(Some(&p), &mut HeaderMap::new(), |_, _| true, || 25, || Seq(vec![])).is_none());
    }

    /// Which outcomes each condition retries (one retry allowed, so the first decision tells).
    #[test]
    fn conditions_table() {
        let none = HeaderMap::new();
        let ratelimited = hm(&[("x-envoy-ratelimited", "true")]);
        let grpc_unavailable = hm(&[("grpc-status", "14")]);
        let grpc_internal = hm(&[("grpc-status", "13")]);
        let grpc_cancelled = hm(&[("grpc-status", "1")]);
        let grpc_deadline = hm(&[("grpc-status", "4")]);
        let grpc_exhausted = hm(&[("grpc-status", "8")]);
        let grpc_ok = hm(&[("grpc-status", "0")]);
        let marked = hm(&[("x-retry-me", "yes")]);
        use ResetReason::*;
        #[rustfmt::skip]
        let rows: Vec<(&str, Outcome<'_>, bool)> = vec![
            ("5xx", resp(500, &none), true),
            ("5xx", resp(503, &none), true),
            ("5xx", resp(599, &none), true),
            ("5xx", resp(404, &none), false),
            ("5xx", resp(200, &none), false),
            ("5xx", resp(503, &ratelimited), false),
            ("5xx", reset(ConnectionFailure, false), true),
            ("5xx", reset(Other, true), true),
            ("5xx", reset(RefusedStream, true), true),
            ("gateway-error", resp(500, &none), false),
            ("gateway-error", resp(501, &none), false),
            ("gateway-error", resp(502, &none), true),
            ("gateway-error", resp(503, &none), true),
            ("gateway-error", resp(504, &none), true),
            ("gateway-error", reset(Other, true), true),
            ("reset", resp(503, &none), false),
            ("reset", reset(Other, true), true),
            ("reset", reset(ConnectionFailure, false), true),
            ("reset-before-request", reset(Other, false), true),
            ("reset-before-request", reset(Other, true), false),
            ("reset-before-request", reset(ConnectionFailure, false), true),
            ("reset-before-request", resp(503, &none), false),
            ("connect-failure", reset(ConnectionFailure, false), true),
            ("connect-failure", reset(Other, true), false),
            ("connect-failure", reset(Other, false), false),
            ("connect-failure", resp(503, &none), false),
            ("refused-stream", reset(RefusedStream, true), true),
            ("refused-stream", reset(Other, true), false),
            ("refused-stream", reset(ConnectionFailure, false), false),
            ("retriable-4xx", resp(409, &none), true),
            ("retriable-4xx", resp(408, &none), false),
            ("retriable-4xx", resp(503, &none), false),
            ("envoy-ratelimited", resp(429, &ratelimited), true),
            ("envoy-ratelimited", resp(429, &none), false),
            ("envoy-ratelimited,5xx", resp(503, &none), true),
            ("unavailable", resp(200, &grpc_unavailable), true),
            ("unavailable", resp(200, &grpc_internal), false),
            ("internal", resp(200, &grpc_internal), true),
            ("cancelled", resp(200, &grpc_cancelled), true),
            ("deadline-exceeded", resp(200, &grpc_deadline), true),
            ("resource-exhausted", resp(200, &grpc_exhausted), true),
            ("cancelled,deadline-exceeded,internal,resource-exhausted,unavailable", resp(200, &grpc_ok), false),
            ("unavailable", reset(Other, true), false),
            ("http3-post-connect-failure", reset(Other, true), false),
            ("retriable-status-codes", resp(418, &none), true),
            ("retriable-status-codes", resp(503, &none), false),
            ("retriable-headers", resp(200, &marked), true),
            ("retriable-headers", resp(200, &none), false),
            ("retriable-headers", resp(201, &none), true),
            // Unknown names are ignored, as Envoy ignores them.
            ("bogus, 5xx ,", resp(502, &none), true),
        ];
        for (i, (on, outcome, want)) in rows.iter().enumerate() {
            let mut p = policy(on, 1);
            p.retriable_status_codes = vec![418];
            p.retriable_headers = vec![
                HeaderMatcher {
                    name: "x-retry-me".into(),
                    spec: HeaderMatchSpec::String(StringMatcher::Exact { value: "yes".into(), ignore_case: false }),
                    invert_match: false,
                    treat_missing_header_as_empty: false,
                },
                HeaderMatcher {
                    name: ":status".into(),
                    spec: HeaderMatchSpec::Range { start: 201, end: 202 },
                    invert_match: false,
                    treat_missing_header_as_empty: false,
                },
            ];
            let mut s = state(&p, &mut HeaderMap::new(), vec![]);
            let got = s.should_retry(outcome, || true);
            assert_eq!(retried(got), *want, "row {i}: retry_on {on:?}, {outcome:?} -> {got:?}");
        }
    }

    #[test]
    fn retries_run_out_and_success_is_after_a_retry() {
        let p = policy("5xx", 2);
        let none = HeaderMap::new();
        let mut s = state(&p, &mut HeaderMap::new(), vec![]);
        assert!(s.enabled());
        assert_eq!(s.should_retry(&resp(200, &none), || true), RetryDecision::No { after_retry: false });
        assert!(retried(s.should_retry(&resp(503, &none), || true)));
        assert!(retried(s.should_retry(&resp(503, &none), || true)));
        assert_eq!(s.retries_remaining(), 0);
        assert_eq!(s.should_retry(&resp(503, &none), || true), RetryDecision::LimitExceeded);
        // After a limit, no retry is pending: a final answer is not a retry's success.
        assert_eq!(s.should_retry(&resp(200, &none), || true), RetryDecision::No { after_retry: false });

        let mut s = state(&p, &mut HeaderMap::new(), vec![]);
        assert!(retried(s.should_retry(&resp(503, &none), || true)));
        // Any non-retriable outcome after a retry counts as its success (Envoy), even a 404.
        assert_eq!(s.should_retry(&resp(404, &none), || true), RetryDecision::No { after_retry: true });
    }

    #[test]
    fn admission_is_asked_only_for_a_retriable_outcome_with_retries_left() {
        let p = policy("5xx", 1);
        let none = HeaderMap::new();
        let mut s = state(&p, &mut HeaderMap::new(), vec![]);
        let asked = std::cell::Cell::new(0);
        let admit = || {
            asked.set(asked.get() + 1);
            false
        };
        assert_eq!(s.should_retry(&resp(200, &none), admit), RetryDecision::No { after_retry: false });
        assert_eq!(asked.get(), 0);
        assert_eq!(s.should_retry(&resp(503, &none), admit), RetryDecision::Overflow);
        assert_eq!(asked.get(), 1);
        // The refused retry still used up the retry (Envoy decrements first).
        assert_eq!(s.should_retry(&resp(503, &none), admit), RetryDecision::LimitExceeded);
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn exponential_backoff_is_fully_jittered_and_doubles_to_the_cap() {
        // Default: base 25 ms, max 250 ms. The interval doubles 25, 50, 100, 200, then sticks at
        // the max; each wait is `random % interval`.
        let p = policy("5xx", 10);
        let none = HeaderMap::new();
        let mut s = state(&p, &mut HeaderMap::new(), vec![1000, 49, 99, 199, 249, 260, 249]);
        let waits: Vec<u64> = (0..7)
            .map(|_| match s.should_retry(&resp(503, &none), || true) {
                RetryDecision::Retry(b) => {
                    assert!(!b.rate_limited);
                    b.delay.as_millis() as u64
                }
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(waits, vec![0, 49, 99, 199, 249, 10, 249]);

        let mut p = policy("5xx", 10);
        p.back_off = Some(RetryBackOff { base: Duration::from_millis(100), max: Some(Duration::from_millis(300)) });
        let mut s = state(&p, &mut HeaderMap::new(), vec![99, 199, 299, 150, 7]);
        let mut next = || match s.should_retry(&resp(503, &none), || true) {
            RetryDecision::Retry(b) => b.delay.as_millis() as u64,
            d => panic!("{d:?}"),
        };
        // Intervals 100, 200 (100 < 300/2), then the cap: 200 < 150 is false.
        assert_eq!([next(), next(), next(), next(), next()], [99, 199, 299, 150, 7]);

        // The runtime's base applies without a retry_back_off, 10x for the max.
        let p = policy("5xx", 3);
        let mut s =
            RetryState::create(Some(&p), &mut HeaderMap::new(), |_, _| false, || 10, || Seq(vec![9, 19, 39])).unwrap();
        let mut next = || match s.should_retry(&resp(503, &none), || true) {
            RetryDecision::Retry(b) => b.delay.as_millis() as u64,
            d => panic!("{d:?}"),
        };
        assert_eq!([next(), next(), next()], [9, 19, 39]);
    }

    #[test]
    fn rate_limited_backoff_from_reset_headers() {
        let mut p = policy("5xx", 5);
        p.rate_limited_back_off = Some(RateLimitedBackOff {
            reset_headers: vec![
                ResetHeader { name: HeaderName::from_static("retry-after"), format: ResetHeaderFormat::Seconds },
                ResetHeader { name: HeaderName::from_static("x-reset"), format: ResetHeaderFormat::UnixTimestamp },
            ],
            max_interval: Duration::from_secs(10),
        });
        let decide = |headers: &HeaderMap, random: u64| {
            let mut s = state(&p, &mut HeaderMap::new(), vec![random]).with_clock(|| 1_000_000);
            s.should_retry(&resp(503, headers), || true)
        };
        // 2 s: between 2000 and 3000 ms (random % 1000 + 2000).
        assert_eq!(
            decide(&hm(&[("retry-after", "2")]), 1234),
            RetryDecision::Retry(Backoff { delay: Duration::from_millis(2234), rate_limited: true })
        );
        // A timestamp 3 s ahead of the clock.
        assert_eq!(
            decide(&hm(&[("x-reset", "1000003")]), 0),
            RetryDecision::Retry(Backoff { delay: Duration::from_millis(3000), rate_limited: true })
        );
        // Past timestamps, unparsable values, 0 s and waits above max_interval fall back to the
        // exponential backoff.
        for h in [
            hm(&[("x-reset", "999999")]),
            hm(&[("retry-after", "soon")]),
            hm(&[("retry-after", "0")]),
            hm(&[("retry-after", "11")]),
        ] {
            let d = decide(&h, 3);
            assert_eq!(
                d,
                RetryDecision::Retry(Backoff { delay: Duration::from_millis(3), rate_limited: false }),
                "{h:?}"
            );
        }
        // The first header that parses wins; the wait is used for one retry only.
        let mut s = state(&p, &mut HeaderMap::new(), vec![0, 0]).with_clock(|| 1_000_000);
        let h = hm(&[("retry-after", "1"), ("x-reset", "1000005")]);
        assert_eq!(
            s.should_retry(&resp(503, &h), || true),
            RetryDecision::Retry(Backoff { delay: Duration::from_millis(1000), rate_limited: true })
        );
        assert_eq!(
            s.should_retry(&reset(ResetReason::Other, true), || true),
            RetryDecision::Retry(Backoff { delay: Duration::ZERO, rate_limited: false })
        );
        // A non-retriable response's reset header is not looked at.
        let mut s = state(&p, &mut HeaderMap::new(), vec![0]);
        assert_eq!(
            s.should_retry(&resp(200, &hm(&[("retry-after", "1")])), || true),
            RetryDecision::No { after_retry: false }
        );
    }

    #[test]
    fn request_headers_add_conditions_and_override_the_count() {
        // No policy: the headers alone make a state, with Envoy's default of one retry.
        let mut h = hm(&[("x-envoy-retry-on", "gateway-error"), ("x-envoy-retry-grpc-on", "unavailable")]);
        let mut s = RetryState::create(None, &mut h, |_, _| false, || 25, || Seq(vec![])).unwrap();
        assert!(h.is_empty());
        assert_eq!(s.retries_remaining(), 1);
        assert!(retried(s.should_retry(&resp(502, &HeaderMap::new()), || true)));
        let mut s = RetryState::create(
            None,
            &mut hm(&[("x-envoy-retry-grpc-on", "unavailable")]),
            |_, _| false,
            || 25,
            || Seq(vec![]),
        )
        .unwrap();
        assert!(retried(s.should_retry(&resp(200, &hm(&[("grpc-status", "14")])), || true)));
        // gRPC names in x-envoy-retry-on, HTTP names in x-envoy-retry-grpc-on: ignored.
        let mut h = hm(&[("x-envoy-retry-on", "unavailable"), ("x-envoy-retry-grpc-on", "5xx")]);
        let s = RetryState::create(None, &mut h, |_, _| false, || 25, || Seq(vec![])).unwrap();
        assert!(!s.enabled());

        // Merged with the policy; max-retries overrides num_retries; extra codes and names.
        let p = policy("5xx", 1);
        let mut h = hm(&[
            ("x-envoy-retry-on", "retriable-status-codes,retriable-headers"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-retriable-status-codes", "418, 429,x"),
            ("x-envoy-retriable-header-names", "X-Again"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "5"),
            ("x-envoy-hedge-on-per-try-timeout", "true"),
            ("x-envoy-other", "kept"),
        ]);
        let mut s = state(&p, &mut h, vec![]);
        assert_eq!(h.len(), 1, "only the unrelated header is left: {h:?}");
        assert_eq!(s.retries_remaining(), 3);
        assert!(retried(s.should_retry(&resp(503, &HeaderMap::new()), || true)));
        assert!(retried(s.should_retry(&resp(429, &HeaderMap::new()), || true)));
        assert!(retried(s.should_retry(&resp(200, &hm(&[("x-again", "")])), || true)));
        assert_eq!(s.should_retry(&resp(418, &HeaderMap::new()), || true), RetryDecision::LimitExceeded);

        // x-envoy-max-retries without any condition changes nothing; unparsable is ignored.
        let p0 = policy("5xx", 2);
        let mut s = state(&p0, &mut hm(&[("x-envoy-max-retries", "many")]), vec![]);
        assert_eq!(s.retries_remaining(), 2);
        assert!(retried(s.should_retry(&resp(503, &HeaderMap::new()), || true)));
        let mut s = state(&p0, &mut hm(&[("x-envoy-max-retries", "0")]), vec![]);
        assert_eq!(s.should_retry(&resp(503, &HeaderMap::new()), || true), RetryDecision::LimitExceeded);
    }

    #[test]
    fn retriable_request_headers_limit_which_requests_retry() {
        let mut p = policy("5xx", 1);
        p.retriable_request_headers = vec![HeaderMatcher {
            name: ":method".into(),
            spec: HeaderMatchSpec::String(StringMatcher::Exact { value: "GET".into(), ignore_case: false }),
            invert_match: false,
            treat_missing_header_as_empty: false,
        }];
        let get = RetryState::create(Some(&p), &mut HeaderMap::new(), |_, _| true, || 25, || Seq(vec![])).unwrap();
        assert!(get.enabled());
        let mut post =
            RetryState::create(Some(&p), &mut HeaderMap::new(), |_, _| false, || 25, || Seq(vec![])).unwrap();
        assert!(!post.enabled());
        assert_eq!(post.should_retry(&resp(503, &HeaderMap::new()), || true), RetryDecision::No { after_retry: false });
        // Not even x-envoy-retry-on brings the conditions back.
        let mut h = hm(&[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "4")]);
        let post = RetryState::create(Some(&p), &mut h, |_, _| false, || 25, || Seq(vec![])).unwrap();
        assert!(!post.enabled());
        assert_eq!(post.retries_remaining(), 1);
    }

    #[test]
    fn previous_hosts_predicate() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut p = policy("5xx", 1);
        let mut s = state(&p, &mut HeaderMap::new(), vec![]);
        s.on_host_attempted(a);
        assert!(!s.should_select_another_host(a), "no predicate: any host will do");
        assert_eq!(s.host_selection_picks(), 2);
        p.previous_hosts = true;
        p.host_selection_max_attempts = 3;
        let mut s = state(&p, &mut HeaderMap::new(), vec![]);
        assert!(!s.should_select_another_host(a));
        s.on_host_attempted(a);
        assert!(s.should_select_another_host(a));
        assert!(!s.should_select_another_host(b));
        assert_eq!(s.host_selection_picks(), 4);
    }
}
