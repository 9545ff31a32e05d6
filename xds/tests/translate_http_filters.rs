//! Translation of the HCM's HTTP filters (fault, CORS, local rate limit, header mutation) and
//! of `typed_per_filter_config` at every route level, from YAML as an operator writes it
//! (decoded and PGV-validated first, like a bootstrap). Envoy 1.40 (`envoy --mode validate`)
//! gives the same verdict for every accepted/rejected case here; the bootstrap fixtures under
//! tests/bootstraps/http_filters check that against the real binaries.

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use pinion_xds::decode::{message_from_str, text_to_json, DecodeOptions, Format};
use pinion_xds::model::{self, FilterOverride as O, HttpFilterKind as K};
use pinion_xds::translate::{listener, route_configuration};
use pinion_xds::{ConfigError, ErrorKind};
use serde_json::{json, Value};

/// The path of the first HTTP filter's typed_config in [`hcm`]'s listener.
const F0: &str = "filter_chains[0].filters[0].typed_config.http_filters[0]";

fn yaml(text: &str) -> Value {
    text_to_json(text, Format::Yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{text}"))
}

/// Decode (with PGV validation) and translate a listener given as JSON.
fn translate_listener(l: &Value) -> Result<model::Listener, ConfigError> {
    let text = serde_json::to_string(l).unwrap();
    let proto: Listener = message_from_str(&text, Format::Json, &DecodeOptions::default())?;
    listener(&proto)
}

/// A listener whose HCM has `filters` (a YAML list) then the router, and `route_config`.
fn hcm_with(filters: &str, route_config: Value) -> Result<model::HttpConnectionManager, ConfigError> {
    let mut fs = match filters.trim() {
        "" => vec![],
        f => match yaml(f) {
            Value::Array(a) => a,
            other => panic!("filters must be a YAML list, got {other}"),
        },
    };
    fs.push(json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let l = json!({
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress_http",
                "route_config": route_config,
                "http_filters": fs,
            }
        }]}]
    });
    let m = translate_listener(&l)?;
    match &m.filter_chains[0].filter {
        model::NetworkFilter::HttpConnectionManager(h) => Ok((**h).clone()),
        other => panic!("expected an HCM, got {other:?}"),
    }
}

fn default_routes() -> Value {
    yaml("virtual_hosts: [ { name: a, domains: ['*'], routes: [ { match: { prefix: / }, route: { cluster: c } } ] } ]")
}

/// The HCM's filters for `filters` (a YAML list), the router appended.
fn hcm(filters: &str) -> Result<model::HttpConnectionManager, ConfigError> {
    hcm_with(filters, default_routes())
}

/// The first filter's kind, for a one-filter (plus router) chain.
fn only_filter(filters: &str) -> model::HttpFilter {
    let h = hcm(filters).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.http_filters.len(), 2, "{:?}", h.http_filters);
    assert!(matches!(h.http_filters[1].kind, K::Router(_)));
    h.http_filters[0].clone()
}

fn hcm_err(filters: &str) -> ConfigError {
    match hcm(filters) {
        Ok(h) => panic!("accepted: {:?}", h.http_filters),
        Err(e) => e,
    }
}

/// Decode and translate a `RouteConfiguration` given as YAML.
fn routes(text: &str) -> Result<model::RouteConfiguration, ConfigError> {
    let proto: RouteConfiguration = message_from_str(text, Format::Yaml, &DecodeOptions::default())?;
    route_configuration(&proto)
}

fn routes_err(text: &str) -> ConfigError {
    match routes(text) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e,
    }
}

/// A one-vhost, one-route config with `vh_extra` and `route_extra` (YAML mapping entries,
/// one per line, no indentation) on the vhost and the route.
fn one_vhost(vh_extra: &str, route_extra: &str) -> String {
    let indent = |s: &str, n: usize| s.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect::<String>();
    format!(
        "virtual_hosts:\n- name: vh\n  domains: ['*']\n{}  routes:\n  - match: {{ prefix: / }}\n    route: {{ cluster: c }}\n{}",
        indent(vh_extra, 2),
        indent(route_extra, 4)
    )
}

fn pct(numerator: u32, denominator: u32) -> model::FractionalPercent {
    model::FractionalPercent { numerator, denominator }
}

fn fraction(numerator: u32, denominator: u32, key: &str) -> model::RuntimeFraction {
    model::RuntimeFraction { default_value: pct(numerator, denominator), runtime_key: key.into() }
}

// ---------------------------------------------------------------------------------------------
// fault

#[test]
fn fault_fields_and_defaults() {
    let f = only_filter(
        r#"
- name: envoy.filters.http.fault
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    delay: { fixed_delay: 1.5005s, percentage: { numerator: 20, denominator: TEN_THOUSAND } }
    abort: { http_status: 503, percentage: { numerator: 5 }, response_body: nope }
    upstream_cluster: backend
    headers: [ { name: X-Fault, string_match: { exact: "1" } } ]
    downstream_nodes: [ a, b ]
    max_active_faults: 7
    delay_percent_runtime: my.delay
    abort_grpc_status_runtime: my.grpc
    disable_downstream_cluster_stats: true
"#,
    );
    assert_eq!(f.name, "envoy.filters.http.fault");
    assert!(!f.disabled);
    let K::Fault(c) = &f.kind else { panic!("{:?}", f.kind) };
    // Envoy reads the delay in whole milliseconds.
    assert_eq!(
        c.delay,
        Some(model::FaultDelay {
            kind: model::FaultDelayKind::Fixed(Duration::from_millis(1500)),
            percentage: pct(20, 10_000)
        })
    );
    assert_eq!(
        c.abort,
        Some(model::FaultAbort {
            kind: model::FaultAbortKind::Http(503),
            percentage: pct(5, 100),
            response_body: "nope".into()
        })
    );
    assert_eq!(c.upstream_cluster.as_deref(), Some("backend"));
    assert_eq!(c.headers.len(), 1);
    assert_eq!(c.headers[0].name, "x-fault");
    assert_eq!(c.downstream_nodes, ["a", "b"]);
    assert_eq!(c.max_active_faults, Some(7));
    assert_eq!(c.runtime.delay_percent, "my.delay");
    assert_eq!(c.runtime.abort_grpc_status, "my.grpc");
    assert_eq!(c.runtime.abort_percent, "fault.http.abort.abort_percent");
    assert!(c.disable_downstream_cluster_stats);

    // An empty HTTPFault is valid (Envoy too): no faults, Envoy's runtime keys.
    let f = only_filter(
        r#"
- name: f
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }
"#,
    );
    let K::Fault(c) = &f.kind else { panic!() };
    assert!(c.delay.is_none() && c.abort.is_none() && c.upstream_cluster.is_none());
    assert_eq!(c.max_active_faults, None, "unset = unlimited");
    assert!(!c.disable_downstream_cluster_stats);
    assert_eq!(
        c.runtime,
        model::FaultRuntimeKeys {
            delay_percent: "fault.http.delay.fixed_delay_percent".into(),
            abort_percent: "fault.http.abort.abort_percent".into(),
            delay_duration: "fault.http.delay.fixed_duration_ms".into(),
            abort_http_status: "fault.http.abort.http_status".into(),
            abort_grpc_status: "fault.http.abort.grpc_status".into(),
            max_active_faults: "fault.http.max_active_faults".into(),
            response_rate_limit_percent: "fault.http.rate_limit.response_percent".into(),
        }
    );

    // Header-controlled faults; an unset percentage is 0% (Envoy's default FractionalPercent).
    let f = only_filter(
        r#"
- name: f
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    delay: { header_delay: {} }
    abort: { grpc_status: 14 }
"#,
    );
    let K::Fault(c) = &f.kind else { panic!() };
    assert_eq!(c.delay, Some(model::FaultDelay { kind: model::FaultDelayKind::Header, percentage: pct(0, 100) }));
    let a = c.abort.as_ref().unwrap();
    assert_eq!(a.kind, model::FaultAbortKind::Grpc(14));
    assert_eq!(a.percentage, pct(0, 100));
    assert_eq!(a.response_body, "fault filter abort");
    let f = only_filter(
        r#"
- name: f
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    abort: { header_abort: {}, percentage: { numerator: 100 } }
"#,
    );
    let K::Fault(c) = &f.kind else { panic!() };
    assert_eq!(c.abort.as_ref().unwrap().kind, model::FaultAbortKind::Header);
}

#[test]
fn fault_errors_name_the_field() {
    let fault = |body: &str| {
        hcm_err(&format!(
            "- name: f\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n    {body}\n"
        ))
    };
    let e = fault("abort: { http_status: 600 }");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.path, format!("{F0}.typed_config.abort.http_status"), "{e}");
    let e = fault("abort: { http_status: 199 }");
    assert_eq!(e.path, format!("{F0}.typed_config.abort.http_status"), "{e}");
    let e = fault("abort: { percentage: { numerator: 1 } }");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.path.starts_with(&format!("{F0}.typed_config.abort")), "{e}");
    let e = fault("delay: { fixed_delay: 0s }");
    assert_eq!(e.path, format!("{F0}.typed_config.delay.fixed_delay"), "{e}");
    let e = fault("delay: { percentage: { numerator: 1 } }");
    assert!(e.path.starts_with(&format!("{F0}.typed_config.delay")), "{e}");

    let e = fault("response_rate_limit: { fixed_limit: { limit_kbps: 1 } }");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(
        e.to_string(),
        format!("{F0}.typed_config.response_rate_limit: unsupported: response_rate_limit is not supported by pinion")
    );
    let e = fault("filter_metadata: { a: 1 }");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.path, format!("{F0}.typed_config.filter_metadata"));
    let e = fault("headers: [ { name: x, string_match: { safe_regex: { regex: '(' } } } ]");
    assert_eq!(e.path, format!("{F0}.typed_config.headers[0].string_match.safe_regex.regex"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// cors

#[test]
fn cors_filter_and_policies() {
    let f = only_filter(
        r#"
- name: envoy.filters.http.cors
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
"#,
    );
    assert!(matches!(&f.kind, K::Cors(c) if **c == model::CorsConfig {}));

    let rc = routes(&one_vhost(
        r#"typed_per_filter_config:
  envoy.filters.http.cors:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
    allow_origin_string_match: [ { prefix: "https://" }, { exact: "http://a", ignore_case: true } ]
    allow_methods: "GET, POST"
    allow_headers: x-a
    expose_headers: x-b
    max_age: "600"
    allow_credentials: true
    allow_private_network_access: false
    forward_not_matching_preflights: false
    filter_enabled: { default_value: { numerator: 50 }, runtime_key: cors.on }
    shadow_enabled: { default_value: { numerator: 10, denominator: TEN_THOUSAND } }"#,
        "",
    ))
    .unwrap();
    let vh = &rc.virtual_hosts[0];
    let [(name, O::Cors(p))] = vh.per_filter_config.as_slice() else { panic!("{:?}", vh.per_filter_config) };
    assert_eq!(name, "envoy.filters.http.cors");
    assert_eq!(p.allow_origin_string_match.len(), 2);
    assert!(p.allow_origin_string_match[0].matches("https://x"));
    assert!(p.allow_origin_string_match[1].matches("HTTP://A"));
    assert_eq!(p.allow_methods.as_deref(), Some("GET, POST"));
    assert_eq!(p.allow_headers.as_deref(), Some("x-a"));
    assert_eq!(p.expose_headers.as_deref(), Some("x-b"));
    assert_eq!(p.max_age.as_deref(), Some("600"));
    assert_eq!(p.allow_credentials, Some(true));
    assert_eq!(p.allow_private_network_access, Some(false));
    assert_eq!(p.forward_not_matching_preflights, Some(false));
    assert_eq!(p.filter_enabled, fraction(50, 100, "cors.on"));
    assert_eq!(p.shadow_enabled, fraction(10, 10_000, ""));

    // Defaults: unset fields stay unset (levels merge field by field), enabled for 100%,
    // shadow for 0%.
    let rc = routes(&one_vhost(
        "",
        r#"typed_per_filter_config:
  cors: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy }"#,
    ))
    .unwrap();
    let [(_, O::Cors(p))] = rc.virtual_hosts[0].routes[0].per_filter_config.as_slice() else { panic!() };
    assert!(p.allow_origin_string_match.is_empty());
    assert_eq!((p.allow_methods.as_ref(), p.max_age.as_ref()), (None, None));
    assert_eq!(
        (p.allow_credentials, p.allow_private_network_access, p.forward_not_matching_preflights),
        (None, None, None)
    );
    assert_eq!(p.filter_enabled, fraction(100, 100, ""));
    assert_eq!(p.shadow_enabled, fraction(0, 100, ""));

    let e = routes_err(&one_vhost(
        r#"typed_per_filter_config:
  cors:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
    allow_origin_string_match: [ { safe_regex: { regex: "(" } } ]"#,
        "",
    ));
    assert_eq!(
        e.path,
        r#"virtual_hosts[0].typed_per_filter_config["cors"].allow_origin_string_match[0].safe_regex.regex"#
    );
}

#[test]
fn deprecated_cors_fields_are_kept_apart() {
    // Envoy 1.40 still honours them, as a fallback when no level has a typed CorsPolicy.
    let rc = routes(
        r#"
virtual_hosts:
- name: vh
  domains: ['*']
  cors: { allow_origin_string_match: [ { exact: "https://a" } ], allow_methods: GET, filter_enabled: { default_value: { numerator: 0 } } }
  routes:
  - match: { prefix: / }
    route: { cluster: c, cors: { allow_headers: x-y, allow_credentials: true } }
"#,
    )
    .unwrap();
    let vh = &rc.virtual_hosts[0];
    assert!(vh.per_filter_config.is_empty());
    let p = vh.legacy_cors.as_ref().unwrap();
    assert_eq!(p.allow_methods.as_deref(), Some("GET"));
    assert_eq!(p.filter_enabled, fraction(0, 100, ""));
    let model::RouteAction::Forward(f) = &vh.routes[0].action else { panic!() };
    let p = f.legacy_cors.as_ref().unwrap();
    assert_eq!(p.allow_headers.as_deref(), Some("x-y"));
    assert_eq!(p.allow_credentials, Some(true));
    assert_eq!(p.filter_enabled, fraction(100, 100, ""));
    assert!(vh.routes[0].per_filter_config.is_empty());
}

// ---------------------------------------------------------------------------------------------
// local_ratelimit

#[test]
fn local_rate_limit_fields_and_defaults() {
    let f = only_filter(
        r#"
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: http_local_rate_limiter
"#,
    );
    let K::LocalRateLimit(c) = &f.kind else { panic!("{:?}", f.kind) };
    assert_eq!(c.stat_prefix, "http_local_rate_limiter");
    assert_eq!(c.status, 429);
    assert_eq!(c.token_bucket, None, "no bucket at filter level: nothing is limited");
    // Envoy: unset filter_enabled / filter_enforced = 0% "for safety".
    assert_eq!(c.filter_enabled, fraction(0, 100, ""));
    assert_eq!(c.filter_enforced, fraction(0, 100, ""));
    assert!(c.request_headers_to_add_when_not_enforced.is_empty() && c.response_headers_to_add.is_empty());
    assert_eq!(c.stage, 0);
    assert!(!c.local_rate_limit_per_downstream_connection);
    assert!(!c.enable_x_ratelimit_headers);
    assert_eq!(c.vh_rate_limits, model::VhRateLimits::Override);
    assert!(c.always_consume_default_token_bucket);
    assert!(!c.rate_limited_as_resource_exhausted);
    assert!(!c.enable_retry_after_header);

    let f = only_filter(
        r#"
- name: rl
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: rl
    status: { code: ServiceUnavailable }
    token_bucket: { max_tokens: 10, tokens_per_fill: 5, fill_interval: 1.0009s }
    filter_enabled: { default_value: { numerator: 100 }, runtime_key: rl.enabled }
    filter_enforced: { default_value: { numerator: 50 }, runtime_key: rl.enforced }
    request_headers_to_add_when_not_enforced: [ { header: { key: X-Limited, value: "1" } } ]
    response_headers_to_add: [ { header: { key: x-rl, value: "%RESPONSE_CODE%" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD } ]
    stage: 3
    local_rate_limit_per_downstream_connection: true
    enable_x_ratelimit_headers: DRAFT_VERSION_03
    vh_rate_limits: INCLUDE
    always_consume_default_token_bucket: false
    rate_limited_as_resource_exhausted: true
    enable_retry_after_header: true
"#,
    );
    let K::LocalRateLimit(c) = &f.kind else { panic!() };
    assert_eq!(c.status, 503);
    assert_eq!(
        c.token_bucket,
        Some(model::TokenBucket { max_tokens: 10, tokens_per_fill: 5, fill_interval: Duration::from_millis(1000) })
    );
    assert_eq!(c.filter_enabled, fraction(100, 100, "rl.enabled"));
    assert_eq!(c.filter_enforced, fraction(50, 100, "rl.enforced"));
    assert_eq!(c.request_headers_to_add_when_not_enforced[0].name.as_str(), "x-limited");
    assert!(c.response_headers_to_add[0].has_formatter);
    assert_eq!(c.response_headers_to_add[0].append_action, model::AppendAction::OverwriteIfExistsOrAdd);
    assert_eq!(c.stage, 3);
    assert!(c.local_rate_limit_per_downstream_connection);
    assert!(c.enable_x_ratelimit_headers);
    assert_eq!(c.vh_rate_limits, model::VhRateLimits::Include);
    assert!(!c.always_consume_default_token_bucket);
    assert!(c.rate_limited_as_resource_exhausted);
    assert!(c.enable_retry_after_header);
}

#[test]
fn local_rate_limit_buckets_and_status() {
    let lrl = |body: &str| {
        hcm(&format!(
            "- name: rl\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n    stat_prefix: rl\n    {body}\n"
        ))
        .map(|h| match &h.http_filters[0].kind {
            K::LocalRateLimit(c) => (**c).clone(),
            other => panic!("{other:?}"),
        })
    };
    // Codes below 400 become 429.
    assert_eq!(lrl("status: { code: OK }").unwrap().status, 429);
    assert_eq!(lrl("status: { code: BadRequest }").unwrap().status, 400);
    // Exactly 50ms (after truncation to whole ms) is the fastest refill Envoy allows...
    let b = lrl("token_bucket: { max_tokens: 1, fill_interval: 0.0505s }").unwrap().token_bucket.unwrap();
    assert_eq!(b.fill_interval, Duration::from_millis(50));
    assert_eq!(b.tokens_per_fill, 1);
    let e = lrl("token_bucket: { max_tokens: 1, fill_interval: 0.0499s }").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(
        e.to_string(),
        format!(
            "{F0}.typed_config.token_bucket.fill_interval: local rate limit token bucket fill timer must be >= 50ms"
        )
    );
    // ...except for an empty bucket (always denies, never refilled)...
    let b = lrl("token_bucket: { max_tokens: 0, fill_interval: 0.01s }").unwrap().token_bucket.unwrap();
    assert_eq!(b.max_tokens, 0);
    // ...and an interval under 1ms, which Envoy reads as 0ms: then there is no bucket at all.
    assert_eq!(lrl("token_bucket: { max_tokens: 1, fill_interval: 0.0005s }").unwrap().token_bucket, None);
    // PGV: fill_interval required and > 0, tokens_per_fill > 0.
    let e = lrl("token_bucket: { max_tokens: 1 }").unwrap_err();
    assert_eq!(e.path, format!("{F0}.typed_config.token_bucket.fill_interval"));
    let e = lrl("token_bucket: { max_tokens: 1, tokens_per_fill: 0, fill_interval: 1s }").unwrap_err();
    assert_eq!(e.path, format!("{F0}.typed_config.token_bucket.tokens_per_fill"));
    let e = lrl("stage: 11").unwrap_err();
    assert_eq!(e.path, format!("{F0}.typed_config.stage"));
    let e = lrl("request_headers_to_add_when_not_enforced: [ { header: { key: ':path', value: x } } ]").unwrap_err();
    assert_eq!(e.path, format!("{F0}.typed_config.request_headers_to_add_when_not_enforced[0].header.key"));
    let e = hcm_err(
        "- name: rl\n  typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit }\n",
    );
    assert_eq!(e.path, format!("{F0}.typed_config.stat_prefix"), "{e}");

    // Descriptors (and what only they use) are not implemented.
    for (body, field) in [
        ("descriptors: [ { entries: [ { key: a, value: b } ], token_bucket: { max_tokens: 1, fill_interval: 1s } } ]", "descriptors"),
        ("rate_limits: [ { actions: [ { remote_address: {} } ] } ]", "rate_limits"),
        ("local_cluster_rate_limit: {}", "local_cluster_rate_limit"),
    ] {
        let e = lrl(body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{body}: {e}");
        assert_eq!(e.path, format!("{F0}.typed_config.{field}"), "{body}");
    }
}

// ---------------------------------------------------------------------------------------------
// header_mutation

#[test]
fn header_mutation_filter_and_per_route() {
    let f = only_filter(
        r#"
- name: hm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
    most_specific_header_mutations_wins: true
    mutations:
      request_mutations:
      - remove: X-Secret
      - remove: ":path"
      - append: { header: { key: X-Added, value: "%REQ(x-a)%" }, append_action: ADD_IF_ABSENT }
      response_mutations:
      - remove_on_match: { key_matcher: { prefix: x-internal- } }
"#,
    );
    let K::HeaderMutation(c) = &f.kind else { panic!("{:?}", f.kind) };
    assert!(c.most_specific_header_mutations_wins);
    let rq = &c.mutations.request_mutations;
    assert!(matches!(&rq[0], model::HeaderMutationAction::Remove(n) if n == "x-secret"));
    // Envoy lets this filter remove pseudo-headers (route-level removal refuses them).
    assert!(matches!(&rq[1], model::HeaderMutationAction::Remove(n) if n == ":path"));
    let model::HeaderMutationAction::Append(a) = &rq[2] else { panic!() };
    assert_eq!(a.name.as_str(), "x-added");
    assert!(a.has_formatter);
    assert_eq!(a.append_action, model::AppendAction::AddIfAbsent);
    let model::HeaderMutationAction::RemoveOnMatch(m) = &c.mutations.response_mutations[0] else { panic!() };
    assert!(m.matches("x-internal-id") && !m.matches("x-other"));

    let f = only_filter(
        r#"
- name: hm
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation }
"#,
    );
    let K::HeaderMutation(c) = &f.kind else { panic!() };
    assert!(c.mutations.request_mutations.is_empty() && !c.most_specific_header_mutations_wins);

    let rc = routes(&one_vhost(
        "",
        r#"typed_per_filter_config:
  hm:
    "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute
    mutations: { response_mutations: [ { append: { header: { key: x-route, value: "1" } } } ] }"#,
    ))
    .unwrap();
    let [(_, O::HeaderMutation(p))] = rc.virtual_hosts[0].routes[0].per_filter_config.as_slice() else { panic!() };
    assert!(p.mutations.request_mutations.is_empty());
    let model::HeaderMutationAction::Append(a) = &p.mutations.response_mutations[0] else { panic!() };
    assert_eq!(a.append_action, model::AppendAction::AppendIfExistsOrAdd);
}

#[test]
fn header_mutation_errors_name_the_field() {
    let hm = |mutations: &str| {
        hcm_err(&format!(
            "- name: hm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n    mutations: {mutations}\n"
        ))
    };
    // Same message as Envoy's.
    let e = hm("{ request_mutations: [ { append: { header: { key: host, value: x } } } ] }");
    assert_eq!(
        e.to_string(),
        format!("{F0}.typed_config.mutations.request_mutations[0].append.header.key: :-prefixed or host headers may not be modified")
    );
    let e = hm("{ response_mutations: [ { append: { header: { key: x, value: '%BAD' } } } ] }");
    assert_eq!(e.path, format!("{F0}.typed_config.mutations.response_mutations[0].append.header.value"));
    let e = hm("{ request_mutations: [ { append: { header: { key: x, value: v }, append: true, append_action: ADD_IF_ABSENT } } ] }");
    assert_eq!(e.path, format!("{F0}.typed_config.mutations.request_mutations[0].append.append"));
    for field in ["query_parameter_mutations", "request_trailers_mutations", "response_trailers_mutations"] {
        let body = if field == "query_parameter_mutations" { "[ { remove: a } ]" } else { "[ { remove: x-a } ]" };
        let e = hm(&format!("{{ {field}: {body} }}"));
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
        assert_eq!(
            e.to_string(),
            format!("{F0}.typed_config.mutations.{field}: unsupported: {field} is not supported by pinion")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the HCM's list

#[test]
fn http_filters_keep_config_order_and_disabled_flags() {
    let h = hcm(r#"
- name: hm
  disabled: true
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation }
- name: grpc_web
  is_optional: true
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }
- name: cors
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
- name: od
  disabled: true
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand }
- name: fault
  is_optional: true
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }
"#)
    .unwrap();
    let got: Vec<(&str, bool, &str)> = h
        .http_filters
        .iter()
        .map(|f| {
            let kind = match f.kind {
                K::Router(_) => "router",
                K::OnDemand => "on_demand",
                K::Fault(_) => "fault",
                K::Cors(_) => "cors",
                K::LocalRateLimit(_) => "local_ratelimit",
                K::HeaderMutation(_) => "header_mutation",
            };
            (f.name.as_str(), f.disabled, kind)
        })
        .collect();
    // The optional filter Pinion lacks is skipped; supported ones stay, optional or not.
    assert_eq!(
        got,
        [
            ("hm", true, "header_mutation"),
            ("cors", false, "cors"),
            ("od", true, "on_demand"),
            ("fault", false, "fault"),
            ("envoy.filters.http.router", false, "router"),
        ]
    );
}

#[test]
fn http_filter_dispatch_edges() {
    // A disabled filter Pinion lacks is rejected: a route could enable it.
    let e = hcm_err(
        r#"
- name: grpc_web
  disabled: true
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }
"#,
    );
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.path, F0);
    assert!(e.reason.contains("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"), "{e}");

    // Envoy 1.40 wants a typed_config for every filter (only router and on_demand were ever
    // known by name here).
    let e = hcm_err("- name: envoy.filters.http.fault\n");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.path, F0);
    assert!(e.reason.starts_with("Didn't find a registered implementation for 'envoy.filters.http.fault'"), "{e}");
    let e = hcm_err("- name: envoy.filters.http.fault\n  is_optional: true\n- name: x\n  typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_methods: GET }\n");
    // The per-route message of a filter is accepted only when empty (Envoy then uses defaults).
    assert_eq!(e.path, "filter_chains[0].filters[0].typed_config.http_filters[1].typed_config");
    assert!(e.reason.contains("Unable to unpack"), "{e}");
    let h = hcm(r#"
- name: c
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy }
- name: hm
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute }
"#)
    .unwrap();
    assert!(matches!(h.http_filters[0].kind, K::Cors(_)));
    assert!(matches!(h.http_filters[1].kind, K::HeaderMutation(_)));

    // A supported filter cannot be last.
    let proto_err = {
        let l = json!({
            "name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "s",
                    "route_config": default_routes(),
                    "http_filters": [{"name": "f", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}],
                }
            }]}]
        });
        translate_listener(&l).unwrap_err()
    };
    assert_eq!(proto_err.path, F0);
    assert!(proto_err.reason.contains("the last HTTP filter must be the router"), "{proto_err}");

    let e = hcm_err(
        "- name: x\n  config_discovery: { config_source: { ads: {} }, type_urls: [ type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault ] }\n",
    );
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.path, format!("{F0}.config_discovery"));
}

// ---------------------------------------------------------------------------------------------
// typed_per_filter_config

const FAULT_ANY: &str = r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: { http_status: 418, percentage: { numerator: 100 } } }"#;

#[test]
fn per_filter_config_at_every_level() {
    let rc = routes(&format!(
        r#"
typed_per_filter_config:
  f: {{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }}
virtual_hosts:
- name: vh
  domains: ['*']
  typed_per_filter_config:
    f: {{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {{}} }}
  routes:
  - match: {{ prefix: / }}
    typed_per_filter_config:
      f: {FAULT_ANY}
    route:
      weighted_clusters:
        clusters:
        - name: a
          weight: 1
          typed_per_filter_config:
            f:
              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
              config: {FAULT_ANY}
            rl:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: per_cluster
              token_bucket: {{ max_tokens: 2, fill_interval: 1s }}
              filter_enabled: {{ default_value: {{ numerator: 100 }} }}
"#
    ))
    .unwrap();
    assert!(matches!(rc.per_filter_config.as_slice(), [(n, O::Disabled)] if n == "f"));
    let vh = &rc.virtual_hosts[0];
    assert!(matches!(vh.per_filter_config.as_slice(), [(n, O::Enabled)] if n == "f"));
    let rt = &vh.routes[0];
    let [(_, O::Fault(c))] = rt.per_filter_config.as_slice() else { panic!("{:?}", rt.per_filter_config) };
    assert_eq!(c.abort.as_ref().unwrap().kind, model::FaultAbortKind::Http(418));
    let model::RouteAction::Forward(fwd) = &rt.action else { panic!() };
    let model::ClusterSpecifier::Weighted { clusters, .. } = &fwd.cluster else { panic!() };
    let wc = &clusters[0].per_filter_config;
    // Sorted by filter name, and a FilterConfig's inner config is the override itself.
    let names: Vec<&str> = wc.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["f", "rl"]);
    assert!(matches!(model::find_override(wc, "f"), Some(O::Fault(_))));
    let Some(O::LocalRateLimit(rl)) = model::find_override(wc, "rl") else { panic!() };
    assert_eq!(rl.stat_prefix, "per_cluster");
    assert_eq!(rl.token_bucket.unwrap().max_tokens, 2);
    assert_eq!(rl.filter_enabled, fraction(100, 100, ""));
    assert!(model::find_override(wc, "other").is_none());
}

#[test]
fn filter_config_wrapper_rules() {
    let vh_pfc = |entry: &str| routes(&one_vhost(&format!("typed_per_filter_config:\n  x: {entry}"), ""));
    // disabled wins over (and ignores) config.
    let rc = vh_pfc(&format!(
        r#"{{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true, config: {FAULT_ANY} }}"#
    ))
    .unwrap();
    assert!(matches!(rc.virtual_hosts[0].per_filter_config.as_slice(), [(_, O::Disabled)]));
    // Neither config nor disabled: Envoy's error.
    let e = vh_pfc(r#"{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig }"#).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(
        e.to_string(),
        r#"virtual_hosts[0].typed_per_filter_config["x"]: Empty route/virtual host per filter configuration for x filter"#
    );
    // An optional wrapper around a type Pinion lacks is skipped; without is_optional it is an
    // error naming the entry.
    let grpc_web = r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }"#;
    let rc = vh_pfc(&format!(
        r#"{{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, is_optional: true, config: {grpc_web} }}"#
    ))
    .unwrap();
    assert!(rc.virtual_hosts[0].per_filter_config.is_empty());
    let e = vh_pfc(&format!(
        r#"{{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {grpc_web} }}"#
    ))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.path, r#"virtual_hosts[0].typed_per_filter_config["x"].config"#);
    let e = vh_pfc(grpc_web).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.path, r#"virtual_hosts[0].typed_per_filter_config["x"]"#);
    // The router has no per-route config: Envoy's error.
    let e = vh_pfc(r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.reason.contains("doesn't support virtual host or route specific configurations"), "{e}");
    // The inner config is translated with its own checks and paths.
    let e = vh_pfc(
        r#"{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: { "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: x } }"#,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"virtual_hosts[0].typed_per_filter_config["x"].config.token_bucket: local rate limit token bucket must be set for per filter configs"#
    );
    // The filter-level CORS / header mutation messages, when empty, mean the default per-route one.
    let rc = vh_pfc(r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }"#).unwrap();
    assert!(matches!(rc.virtual_hosts[0].per_filter_config.as_slice(), [(_, O::Cors(_))]));
    let e = vh_pfc(
        r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation, most_specific_header_mutations_wins: true }"#,
    )
    .unwrap_err();
    assert!(e.reason.contains("Unable to unpack"), "{e}");
}

#[test]
fn per_route_config_for_an_optional_hcm_filter_is_skipped_when_unsupported() {
    // Envoy skips a plain per-route config of an unknown type when the HCM marks the filter of
    // that name optional; Pinion does the same for types it lacks (inline route configs).
    let rc = yaml(&one_vhost(
        "typed_per_filter_config:\n  grpc_web: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }",
        "",
    ));
    let optional = r#"
- name: grpc_web
  is_optional: true
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }
"#;
    let h = hcm_with(optional, rc.clone()).unwrap();
    let model::RouteSpecifier::Static(rc_model) = &h.route_specifier else { panic!() };
    assert!(rc_model.virtual_hosts[0].per_filter_config.is_empty());
    let e = hcm_with("", rc).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(
        e.path,
        r#"filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].typed_per_filter_config["grpc_web"]"#
    );
}
