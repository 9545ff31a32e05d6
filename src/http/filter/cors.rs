//! `envoy.filters.http.cors` (Envoy's `CorsFilter`, `cors_filter.cc`): answers CORS preflight
//! requests itself, and adds `access-control-allow-origin` (and friends) to the responses of
//! simple cross-origin requests whose origin a policy allows.
//!
//! The policies come from the route: every level's `CorsPolicy` for this filter (weighted
//! cluster, route, virtual host, route configuration), each field taken from the most
//! specific policy that sets it; without any typed policy, the deprecated `cors` fields of the
//! route and then the virtual host.

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use pinion_xds::model::{CorsPolicy, RouteAction};

use super::callbacks::{DecodeCx, FilterStatus};
use crate::http::body::ResponseBody;
use crate::stats::Store;

const ORIGIN: HeaderName = HeaderName::from_static("origin");
const REQUEST_METHOD: HeaderName = HeaderName::from_static("access-control-request-method");
const REQUEST_HEADERS: HeaderName = HeaderName::from_static("access-control-request-headers");
const REQUEST_PRIVATE_NETWORK: HeaderName = HeaderName::from_static("access-control-request-private-network");
const ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ALLOW_CREDENTIALS: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
const MAX_AGE: HeaderName = HeaderName::from_static("access-control-max-age");
const EXPOSE_HEADERS: HeaderName = HeaderName::from_static("access-control-expose-headers");
const ALLOW_PRIVATE_NETWORK: HeaderName = HeaderName::from_static("access-control-allow-private-network");

crate::stats_struct! {
    /// Envoy's CORS stats (`http.<stat_prefix>.cors.*`).
    pub struct CorsStats {
        /// `cors.origin_valid`: requests whose `Origin` a policy allows.
        origin_valid: Counter = "cors.origin_valid",
        /// `cors.origin_invalid`: requests whose `Origin` no policy allows.
        origin_invalid: Counter = "cors.origin_invalid",
    }
}

/// The filter (its HCM-level config is empty in v3).
pub struct Cors {
    stats: CorsStats,
}

/// What the response hook needs from a CORS request whose origin was allowed.
pub struct CorsState {
    origin: HeaderValue,
    allow_credentials: bool,
    expose_headers: Option<String>,
}

/// The merged view of a request's policies (most specific first).
struct Policies<'a>(Vec<&'a CorsPolicy>);

impl<'a> Policies<'a> {
    fn first<T>(&self, f: impl Fn(&'a CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(|p| f(p))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.0
            .iter()
            .find(|p| !p.allow_origin_string_match.is_empty())
            .is_some_and(|p| p.allow_origin_string_match.iter().any(|m| m.matches("*") || m.matches(origin)))
    }

    fn allow_credentials(&self) -> bool {
        self.first(|p| p.allow_credentials).unwrap_or(false)
    }
}

impl Cors {
    /// The filter of the HCM with `stat_prefix`.
    pub fn new(store: &Store, stat_prefix: &str) -> Self {
        Cors { stats: CorsStats::new(store, "http", "envoy_http_conn_manager_prefix", stat_prefix) }
    }

    /// Request hook: counts the origin, answers preflights, and remembers what simple
    /// requests' responses need.
    pub fn decode_headers(
        &self,
        typed: &mut dyn Iterator<Item = &CorsPolicy>,
        state: &mut Option<CorsState>,
        head: &mut Parts,
        cx: &mut DecodeCx<'_, '_>,
    ) -> FilterStatus {
        let Some(route) = cx.route else { return FilterStatus::Continue };
        let mut list: Vec<&CorsPolicy> = typed.collect();
        if list.is_empty() {
            // The deprecated `cors` fields count only when no level has a typed policy.
            if let RouteAction::Forward(a) = &route.route.action {
                list.extend(a.legacy_cors.as_deref());
            }
            list.extend(route.vhost.legacy_cors.as_deref());
        }
        let Some(most_specific) = list.first() else { return FilterStatus::Continue };
        let rt = crate::runtime::snapshot();
        let on = |f: &pinion_xds::model::RuntimeFraction| {
            rt.feature_enabled(&f.runtime_key, &f.default_value, rand::random())
        };
        let enabled = on(&most_specific.filter_enabled);
        let shadow = on(&most_specific.shadow_enabled);
        if !enabled && !shadow {
            return FilterStatus::Continue;
        }
        let policies = Policies(list);
        let Some(origin) = head.headers.get(ORIGIN).filter(|o| !o.is_empty()).cloned() else {
            return FilterStatus::Continue;
        };
        let allowed = origin.to_str().is_ok_and(|o| policies.origin_allowed(o));
        if allowed {
            self.stats.origin_valid.inc();
        } else {
            self.stats.origin_invalid.inc();
        }
        if !enabled {
            return FilterStatus::Continue; // shadow mode: count only
        }
        let allow_credentials = policies.allow_credentials();
        if allowed {
            *state = Some(CorsState {
                origin: origin.clone(),
                allow_credentials,
                expose_headers: policies.first(|p| p.expose_headers.clone()),
            });
        }
        let request_method = head.headers.get(REQUEST_METHOD).filter(|v| !v.is_empty());
        let (true, Some(request_method)) = (head.method == Method::OPTIONS, request_method) else {
            return FilterStatus::Continue;
        };
        // A preflight.
        if !allowed && policies.first(|p| p.forward_not_matching_preflights).unwrap_or(true) {
            return FilterStatus::Continue;
        }
        let mut resp = Response::new(ResponseBody::empty());
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        if allowed {
            h.insert(ALLOW_ORIGIN, origin);
        }
        if allow_credentials {
            h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let echo_or = |configured: Option<String>, echoed: Option<&HeaderValue>| match configured.as_deref() {
            None => None,
            Some("*") => echoed.cloned(),
            Some(v) => HeaderValue::from_str(v).ok(),
        };
        if let Some(v) = echo_or(policies.first(|p| p.allow_methods.clone()), Some(request_method)) {
            h.insert(ALLOW_METHODS, v);
        }
        if let Some(v) = echo_or(policies.first(|p| p.allow_headers.clone()), head.headers.get(REQUEST_HEADERS)) {
            h.insert(ALLOW_HEADERS, v);
        }
        if let Some(v) = policies.first(|p| p.max_age.clone()).and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(MAX_AGE, v);
        }
        if policies.first(|p| p.allow_private_network_access).unwrap_or(false)
            && head.headers.get(REQUEST_PRIVATE_NETWORK).is_some_and(|v| v == "true")
        {
            h.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
        }
        cx.info.response_code_details = "cors_response";
        FilterStatus::StopIteration(resp)
    }

    /// Response hook: a CORS request with an allowed origin gets the allow-origin headers.
    pub fn encode_headers(state: Option<&CorsState>, resp: &mut Response<ResponseBody>) {
        let Some(s) = state else { return };
        let h = resp.headers_mut();
        h.insert(ALLOW_ORIGIN, s.origin.clone());
        if s.allow_credentials {
            h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(v) = s.expose_headers.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(EXPOSE_HEADERS, v);
        }
    }
}
