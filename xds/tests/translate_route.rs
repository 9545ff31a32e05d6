//! Translation of route configurations: domains, matches, actions, header mutations.
// The deprecated `append`/`total_weight` fields are still honoured and tested.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as r;
use envoy_types::pb::envoy::r#type::matcher::v3 as m;
use envoy_types::pb::google::protobuf as pbuf;
use pinion_xds::model;
use pinion_xds::translate::route_configuration;
use pinion_xds::ErrorKind;

fn forward(cluster: &str) -> r::route::Action {
    r::route::Action::Route(r::RouteAction {
        cluster_specifier: Some(r::route_action::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    })
}

fn prefix_route(prefix: &str, action: r::route::Action) -> r::Route {
    r::Route {
        r#match: Some(r::RouteMatch {
            path_specifier: Some(r::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<r::Route>) -> r::VirtualHost {
    r::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

fn rc(vhosts: Vec<r::VirtualHost>) -> r::RouteConfiguration {
    r::RouteConfiguration { name: "local_route".into(), virtual_hosts: vhosts, ..Default::default() }
}

fn one_route(route: r::Route) -> r::RouteConfiguration {
    rc(vec![vhost("vh", &["*"], vec![route])])
}

fn forward_action(cfg: &model::RouteConfiguration) -> &model::ForwardAction {
    match &cfg.virtual_hosts[0].routes[0].action {
        model::RouteAction::Forward(f) => f,
        other => panic!("expected forward, got {other:?}"),
    }
}

fn hvo(key: &str, value: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue { key: key.into(), value: value.into(), raw_value: vec![] }),
        ..Default::default()
    }
}

#[test]
fn route_defaults() {
    let cfg = route_configuration(&one_route(prefix_route("/", forward("svc")))).unwrap();
    assert_eq!(cfg.max_direct_response_body_size_bytes, 4096);
    assert_eq!(cfg.validate_clusters, None);
    let rt = &cfg.virtual_hosts[0].routes[0];
    assert!(rt.matcher.case_sensitive);
    assert!(matches!(rt.matcher.path, model::PathMatch::Prefix(ref p) if p == "/"));
    let f = forward_action(&cfg);
    assert!(matches!(f.cluster, model::ClusterSpecifier::Cluster(ref c) if c == "svc"));
    assert_eq!(f.timeout, Some(Duration::from_secs(15)));
    assert_eq!(f.cluster_not_found_response_code, 503);
    assert!(f.idle_timeout.is_none());
    assert!(f.retry_policy.is_none());
    assert!(matches!(f.host_rewrite, model::HostRewrite::None));
}

#[test]
fn route_timeout_zero_disables() {
    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.timeout = Some(pbuf::Duration { seconds: 0, nanos: 0 });
    }
    let cfg = route_configuration(&one_route(route.clone())).unwrap();
    let f = forward_action(&cfg);
    assert_eq!(f.timeout, None);
    // A per-route idle_timeout replaces the HCM's stream_idle_timeout; 0 disables it.
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.idle_timeout = Some(pbuf::Duration { seconds: 0, nanos: 0 });
    }
    let cfg = route_configuration(&one_route(route.clone())).unwrap();
    assert_eq!(forward_action(&cfg).idle_timeout, Some(None));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.idle_timeout = Some(pbuf::Duration { seconds: 2, nanos: 0 });
    }
    let cfg = route_configuration(&one_route(route)).unwrap();
    assert_eq!(forward_action(&cfg).idle_timeout, Some(Some(Duration::from_secs(2))));
}

#[test]
fn route_priority_selects_the_resource_manager() {
    let cfg = route_configuration(&one_route(prefix_route("/", forward("svc")))).unwrap();
    assert_eq!(forward_action(&cfg).priority, model::RoutingPriority::Default);
    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.priority = core::RoutingPriority::High as i32;
    }
    let cfg = route_configuration(&one_route(route.clone())).unwrap();
    assert_eq!(forward_action(&cfg).priority, model::RoutingPriority::High);
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.priority = 7;
    }
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert!(err.path.ends_with("route.priority"), "{err}");
}

#[test]
fn domain_classification() {
    let cfg = route_configuration(&rc(vec![vhost(
        "vh",
        &["*", "*.Example.com", "*-bar.foo.com", "foo.*", "API.example.com:8080"],
        vec![],
    )]))
    .unwrap();
    assert_eq!(
        cfg.virtual_hosts[0].domains,
        vec![
            model::DomainMatcher::Any,
            model::DomainMatcher::Suffix(".example.com".into()),
            model::DomainMatcher::Suffix("-bar.foo.com".into()),
            model::DomainMatcher::Prefix("foo.".into()),
            model::DomainMatcher::Exact("api.example.com:8080".into()),
        ]
    );
}

#[test]
fn invalid_wildcard_domains() {
    for bad in ["foo.*.com", "*.foo.*", "**"] {
        let err = route_configuration(&rc(vec![vhost("vh", &["ok.com", bad], vec![])])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{bad}");
        assert_eq!(err.path, "virtual_hosts[0].domains[1]", "{bad}");
    }
}

#[test]
fn duplicate_domains_across_vhosts() {
    let err =
        route_configuration(&rc(vec![vhost("a", &["example.com"], vec![]), vhost("b", &["Example.com"], vec![])]))
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "virtual_hosts[1].domains[0]: Only unique values for domains are permitted. Duplicate entry of domain Example.com in route local_route"
    );
}

#[test]
fn duplicate_vhost_names() {
    let err =
        route_configuration(&rc(vec![vhost("a", &["x.com"], vec![]), vhost("a", &["y.com"], vec![])])).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[1].name");
    assert!(err.reason.contains("duplicate virtual host name 'a'"), "{err}");
}

#[test]
fn header_append_mapping() {
    use core::header_value_option::HeaderAppendAction as A;
    let mut unset = hvo("X-Unset", "1");
    unset.keep_empty_value = true;
    let mut append_true = hvo("x-true", "1");
    append_true.append = Some(pbuf::BoolValue { value: true });
    let mut append_false = hvo("x-false", "1");
    append_false.append = Some(pbuf::BoolValue { value: false });
    let mut add_if_absent = hvo("x-absent", "1");
    add_if_absent.append_action = A::AddIfAbsent as i32;
    let mut overwrite = hvo("x-over", "1");
    overwrite.append_action = A::OverwriteIfExists as i32;
    let mut route = prefix_route("/", forward("svc"));
    route.request_headers_to_add = vec![unset, append_true, append_false, add_if_absent, overwrite];
    route.response_headers_to_remove = vec!["X-Remove".into()];
    let cfg = route_configuration(&one_route(route)).unwrap();
    let h = &cfg.virtual_hosts[0].routes[0].headers;
    let actions: Vec<_> = h.request_headers_to_add.iter().map(|o| o.append_action).collect();
    assert_eq!(
        actions,
        vec![
            model::AppendAction::AppendIfExistsOrAdd,
            model::AppendAction::AppendIfExistsOrAdd,
            model::AppendAction::OverwriteIfExistsOrAdd,
            model::AppendAction::AddIfAbsent,
            model::AppendAction::OverwriteIfExists,
        ]
    );
    assert_eq!(h.request_headers_to_add[0].name.as_str(), "x-unset");
    assert!(h.request_headers_to_add[0].keep_empty_value);
    assert_eq!(h.response_headers_to_remove, vec!["x-remove".to_string()]);
}

#[test]
fn append_and_append_action_conflict() {
    let mut o = hvo("x-a", "1");
    o.append = Some(pbuf::BoolValue { value: true });
    o.append_action = core::header_value_option::HeaderAppendAction::AddIfAbsent as i32;
    let mut route = prefix_route("/", forward("svc"));
    route.request_headers_to_add = vec![o];
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].request_headers_to_add[0].append");
}

#[test]
fn header_formatter_detection() {
    let mut route = prefix_route("/", forward("svc"));
    route.request_headers_to_add =
        vec![hvo("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%"), hvo("x-pct", "100%%"), hvo("x-req", "%REQ(x-a)%")];
    let cfg = route_configuration(&one_route(route)).unwrap();
    let f: Vec<bool> =
        cfg.virtual_hosts[0].routes[0].headers.request_headers_to_add.iter().map(|h| h.has_formatter).collect();
    assert_eq!(f, vec![true, false, true]);
}

#[test]
fn pseudo_and_host_headers_may_not_be_modified() {
    let mut r1 = rc(vec![vhost("vh", &["*"], vec![])]);
    r1.request_headers_to_add = vec![hvo(":path", "/x")];
    let err = route_configuration(&r1).unwrap_err();
    assert_eq!(err.to_string(), "request_headers_to_add[0].header.key: :-prefixed or host headers may not be modified");

    let mut r2 = rc(vec![vhost("vh", &["*"], vec![])]);
    r2.request_headers_to_remove = vec!["Host".into()];
    let err = route_configuration(&r2).unwrap_err();
    assert_eq!(err.path, "request_headers_to_remove[0]");
}

#[test]
fn weighted_clusters() {
    let wc = |name: &str, w: u32| r::weighted_cluster::ClusterWeight {
        name: name.into(),
        weight: Some(pbuf::UInt32Value { value: w }),
        request_headers_to_add: vec![hvo("x-w", name)],
        host_rewrite_specifier: Some(r::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
            format!("{name}.internal"),
        )),
        ..Default::default()
    };
    let action = |clusters, total: Option<u32>| {
        r::route::Action::Route(r::RouteAction {
            cluster_specifier: Some(r::route_action::ClusterSpecifier::WeightedClusters(r::WeightedCluster {
                clusters,
                total_weight: total.map(|value| pbuf::UInt32Value { value }),
                ..Default::default()
            })),
            ..Default::default()
        })
    };
    let cfg = route_configuration(&one_route(prefix_route("/", action(vec![wc("a", 30), wc("b", 70)], None)))).unwrap();
    match &forward_action(&cfg).cluster {
        model::ClusterSpecifier::Weighted { clusters, total_weight } => {
            assert_eq!(*total_weight, 100);
            assert_eq!(clusters[1].name, "b");
            assert_eq!(clusters[1].weight, 70);
            assert_eq!(clusters[1].host_rewrite_literal.as_deref(), Some("b.internal"));
            assert_eq!(clusters[1].headers.request_headers_to_add[0].value, "b");
        }
        other => panic!("{other:?}"),
    }

    let err =
        route_configuration(&one_route(prefix_route("/", action(vec![wc("a", 0), wc("b", 0)], None)))).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].route.weighted_clusters.clusters");
    assert!(err.reason.contains("greater than 0"), "{err}");

    let err = route_configuration(&one_route(prefix_route("/", action(vec![wc("a", 30), wc("b", 70)], Some(50)))))
        .unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].route.weighted_clusters.total_weight");

    let huge = action(vec![wc("a", u32::MAX), wc("b", u32::MAX)], None);
    assert!(route_configuration(&one_route(prefix_route("/", huge))).is_err());
}

#[test]
fn redirect_mapping() {
    use r::redirect_action::{PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S};
    let redirect = r::RedirectAction {
        host_redirect: "new.example.com".into(),
        port_redirect: 8443,
        response_code: C::PermanentRedirect as i32,
        strip_query: true,
        scheme_rewrite_specifier: Some(S::HttpsRedirect(true)),
        path_rewrite_specifier: Some(P::PrefixRewrite("/v2/".into())),
    };
    let cfg = route_configuration(&one_route(prefix_route("/v1/", r::route::Action::Redirect(redirect)))).unwrap();
    let model::RouteAction::Redirect(rd) = &cfg.virtual_hosts[0].routes[0].action else { panic!() };
    assert_eq!(rd.scheme.as_deref(), Some("https"));
    assert_eq!(rd.host.as_deref(), Some("new.example.com"));
    assert_eq!(rd.port, Some(8443));
    assert_eq!(rd.response_code, 308);
    assert!(rd.strip_query);
    assert!(matches!(rd.path, model::RedirectPath::PrefixRewrite(ref p) if p == "/v2/"));

    // Defaults: 301, keep path.
    let cfg =
        route_configuration(&one_route(prefix_route("/", r::route::Action::Redirect(r::RedirectAction::default()))))
            .unwrap();
    let model::RouteAction::Redirect(rd) = &cfg.virtual_hosts[0].routes[0].action else { panic!() };
    assert_eq!(rd.response_code, 301);
    assert!(matches!(rd.path, model::RedirectPath::Keep));
    assert_eq!(rd.scheme, None);
    assert_eq!(rd.port, None);

    for (code, want) in [(C::Found, 302), (C::SeeOther, 303), (C::TemporaryRedirect, 307)] {
        let a = r::RedirectAction { response_code: code as i32, ..Default::default() };
        let cfg = route_configuration(&one_route(prefix_route("/", r::route::Action::Redirect(a)))).unwrap();
        let model::RouteAction::Redirect(rd) = &cfg.virtual_hosts[0].routes[0].action else { panic!() };
        assert_eq!(rd.response_code, want);
    }
}

#[test]
fn direct_response_body_limits_and_file() {
    let dr = |body: core::data_source::Specifier| {
        r::route::Action::DirectResponse(r::DirectResponseAction {
            status: 200,
            body: Some(core::DataSource { specifier: Some(body), watched_directory: None }),
            body_format: None,
        })
    };
    let big = "x".repeat(5000);
    let err =
        route_configuration(&one_route(prefix_route("/", dr(core::data_source::Specifier::InlineString(big.clone())))))
            .unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].direct_response.body");
    assert!(err.reason.contains("response body size is 5000 bytes; maximum is 4096"), "{err}");

    let mut cfg = one_route(prefix_route("/", dr(core::data_source::Specifier::InlineString(big))));
    cfg.max_direct_response_body_size_bytes = Some(pbuf::UInt32Value { value: 10_000 });
    assert!(route_configuration(&cfg).is_ok());

    let path = std::env::temp_dir().join(format!("pinion-translate-body-{}", std::process::id()));
    std::fs::write(&path, b"from file").unwrap();
    let cfg = route_configuration(&one_route(prefix_route(
        "/",
        dr(core::data_source::Specifier::Filename(path.display().to_string())),
    )))
    .unwrap();
    let _ = std::fs::remove_file(&path);
    let model::RouteAction::DirectResponse(d) = &cfg.virtual_hosts[0].routes[0].action else { panic!() };
    assert_eq!(d.status, 200);
    assert_eq!(d.body.as_deref(), Some(&b"from file"[..]));

    let err = route_configuration(&one_route(prefix_route(
        "/",
        dr(core::data_source::Specifier::Filename("/nonexistent/pinion/body".into())),
    )))
    .unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].direct_response.body.filename");

    let err = route_configuration(&one_route(prefix_route(
        "/",
        dr(core::data_source::Specifier::EnvironmentVariable("X".into())),
    )))
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
}

#[test]
fn regex_errors_name_the_field() {
    let route = r::Route {
        r#match: Some(r::RouteMatch {
            path_specifier: Some(r::route_match::PathSpecifier::SafeRegex(m::RegexMatcher {
                regex: "/api/(".into(),
                engine_type: None,
            })),
            ..Default::default()
        }),
        action: Some(forward("svc")),
        ..Default::default()
    };
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].match.safe_regex.regex");
    assert_eq!(err.kind, ErrorKind::Invalid);

    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.regex_rewrite = Some(m::RegexMatchAndSubstitute {
            pattern: Some(m::RegexMatcher { regex: "[".into(), engine_type: None }),
            substitution: "x".into(),
        });
    }
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].route.regex_rewrite.pattern.regex");
}

#[test]
fn regex_path_match_is_anchored() {
    let route = r::Route {
        r#match: Some(r::RouteMatch {
            path_specifier: Some(r::route_match::PathSpecifier::SafeRegex(m::RegexMatcher {
                regex: "/api/[0-9]+".into(),
                engine_type: None,
            })),
            case_sensitive: Some(pbuf::BoolValue { value: false }),
            ..Default::default()
        }),
        action: Some(forward("svc")),
        ..Default::default()
    };
    let cfg = route_configuration(&one_route(route)).unwrap();
    let rm = &cfg.virtual_hosts[0].routes[0].matcher;
    assert!(!rm.case_sensitive);
    let model::PathMatch::Regex(re) = &rm.path else { panic!() };
    assert!(re.is_match("/api/42"));
    assert!(!re.is_match("/api/42/x"));
}

#[test]
fn header_and_query_matchers() {
    use r::header_matcher::HeaderMatchSpecifier as H;
    let route = r::Route {
        r#match: Some(r::RouteMatch {
            path_specifier: Some(r::route_match::PathSpecifier::Path("/exact".into())),
            headers: vec![
                r::HeaderMatcher { name: "X-Present".into(), ..Default::default() },
                r::HeaderMatcher {
                    name: "x-range".into(),
                    header_match_specifier: Some(H::RangeMatch(envoy_types::pb::envoy::r#type::v3::Int64Range {
                        start: 1,
                        end: 10,
                    })),
                    invert_match: true,
                    ..Default::default()
                },
                r::HeaderMatcher {
                    name: "x-s".into(),
                    header_match_specifier: Some(H::StringMatch(m::StringMatcher {
                        ignore_case: true,
                        match_pattern: Some(m::string_matcher::MatchPattern::Prefix("ab".into())),
                    })),
                    treat_missing_header_as_empty: true,
                    ..Default::default()
                },
            ],
            query_parameters: vec![
                r::QueryParameterMatcher { name: "debug".into(), query_parameter_match_specifier: None },
                r::QueryParameterMatcher {
                    name: "v".into(),
                    query_parameter_match_specifier: Some(
                        r::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(m::StringMatcher {
                            ignore_case: false,
                            match_pattern: Some(m::string_matcher::MatchPattern::Exact("2".into())),
                        }),
                    ),
                },
            ],
            grpc: Some(r::route_match::GrpcRouteMatchOptions {}),
            ..Default::default()
        }),
        action: Some(forward("svc")),
        ..Default::default()
    };
    let cfg = route_configuration(&one_route(route)).unwrap();
    let rm = &cfg.virtual_hosts[0].routes[0].matcher;
    assert!(rm.grpc);
    assert!(matches!(rm.path, model::PathMatch::Exact(ref p) if p == "/exact"));
    assert_eq!(rm.headers[0].name, "x-present");
    assert!(matches!(rm.headers[0].spec, model::HeaderMatchSpec::Present(true)));
    assert!(matches!(rm.headers[1].spec, model::HeaderMatchSpec::Range { start: 1, end: 10 }));
    assert!(rm.headers[1].invert_match);
    assert!(rm.headers[2].treat_missing_header_as_empty);
    let model::HeaderMatchSpec::String(s) = &rm.headers[2].spec else { panic!() };
    assert!(s.matches("ABc"));
    assert!(rm.query_parameters[0].string_match.is_none());
    assert!(rm.query_parameters[1].string_match.as_ref().unwrap().matches("2"));
}

#[test]
fn retry_policy_and_host_rewrite() {
    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.retry_policy = Some(r::RetryPolicy {
            retry_on: "5xx, connect-failure,,retriable-status-codes".into(),
            per_try_timeout: Some(pbuf::Duration { seconds: 2, nanos: 0 }),
            retriable_status_codes: vec![503, 504],
            ..Default::default()
        });
        a.host_rewrite_specifier =
            Some(r::route_action::HostRewriteSpecifier::AutoHostRewrite(pbuf::BoolValue { value: true }));
        a.prefix_rewrite = "/new/".into();
        a.cluster_not_found_response_code = r::route_action::ClusterNotFoundResponseCode::NotFound as i32;
        a.upgrade_configs =
            vec![r::route_action::UpgradeConfig { upgrade_type: "WebSocket".into(), ..Default::default() }];
    }
    let cfg = route_configuration(&one_route(route.clone())).unwrap();
    let p = forward_action(&cfg).retry_policy.as_ref().expect("retry policy");
    assert_eq!(
        p.retry_on,
        model::RetryOn::FIVE_XX.union(model::RetryOn::CONNECT_FAILURE).union(model::RetryOn::RETRIABLE_STATUS_CODES)
    );
    assert_eq!(p.num_retries, 1);
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.retriable_status_codes, vec![503, 504]);
    assert_eq!(p.host_selection_max_attempts, 1);
    assert!(!p.previous_hosts && p.back_off.is_none() && p.rate_limited_back_off.is_none());
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.retry_policy = None;
    }
    let cfg = route_configuration(&one_route(route)).unwrap();
    let f = forward_action(&cfg);
    assert!(matches!(f.host_rewrite, model::HostRewrite::Auto));
    assert_eq!(f.prefix_rewrite.as_deref(), Some("/new/"));
    assert_eq!(f.cluster_not_found_response_code, 404);
    assert_eq!(f.upgrade_websocket, Some(true));
}

#[test]
fn unsupported_route_fields() {
    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.hedge_policy = Some(r::HedgePolicy { hedge_on_per_try_timeout: true, ..Default::default() });
    }
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(
        err.to_string(),
        "virtual_hosts[0].routes[0].route.hedge_policy: unsupported: hedge_policy is not supported by pinion"
    );

    // runtime_fraction without default_value is invalid (supported otherwise: see below).
    let mut route = prefix_route("/", forward("svc"));
    route.r#match.as_mut().unwrap().runtime_fraction = Some(core::RuntimeFractionalPercent::default());
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].match.runtime_fraction.default_value");

    let mut vh = vhost("vh", &["*"], vec![]);
    vh.rate_limits = vec![r::RateLimit::default()];
    let err = route_configuration(&rc(vec![vh])).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].rate_limits");

    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.upgrade_configs =
            vec![r::route_action::UpgradeConfig { upgrade_type: "CONNECT".into(), ..Default::default() }];
    }
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(err.path, "virtual_hosts[0].routes[0].route.upgrade_configs[0].upgrade_type");
}

#[test]
fn route_without_action_or_match_is_invalid() {
    let route = r::Route { r#match: None, action: Some(forward("svc")), ..Default::default() };
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.path, "virtual_hosts[0].routes[0].match");
    let route = r::Route { action: None, ..prefix_route("/", forward("svc")) };
    let err = route_configuration(&one_route(route)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
}

#[test]
fn runtime_fraction_and_vhds() {
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let mut route = prefix_route("/", forward("svc"));
    route.r#match.as_mut().unwrap().runtime_fraction = Some(core::RuntimeFractionalPercent {
        default_value: Some(FractionalPercent { numerator: 25, denominator: 1 }),
        runtime_key: "routing.canary".into(),
    });
    let cfg = route_configuration(&one_route(route)).unwrap();
    let f = cfg.virtual_hosts[0].routes[0].matcher.runtime_fraction.clone().unwrap();
    assert_eq!(f.runtime_key, "routing.canary");
    assert_eq!(f.default_value, model::FractionalPercent { numerator: 25, denominator: 10_000 });
    assert!(f.default_value.evaluate(10_024) && !f.default_value.evaluate(10_025));

    // VHDS over a SotW api_config_source is refused with Envoy's message.
    let mut cfg = rc(vec![vhost("vh", &["a.com"], vec![])]);
    cfg.vhds = Some(r::Vhds {
        config_source: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                core::ApiConfigSource {
                    api_type: core::api_config_source::ApiType::Grpc as i32,
                    grpc_services: vec![core::GrpcService {
                        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                            core::grpc_service::EnvoyGrpc { cluster_name: "xds".into(), ..Default::default() },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    });
    let err = route_configuration(&cfg).unwrap_err();
    assert!(err.to_string().contains("vhds: only 'DELTA_GRPC' or 'ADS'"), "{err}");
    cfg.vhds = Some(r::Vhds {
        config_source: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(Default::default())),
            ..Default::default()
        }),
    });
    assert!(route_configuration(&cfg).unwrap().vhds.is_some());
}

fn retry_route(p: r::RetryPolicy) -> r::RouteConfiguration {
    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.retry_policy = Some(p);
    }
    one_route(route)
}

fn ms(n: i32) -> Option<pbuf::Duration> {
    Some(pbuf::Duration { seconds: 0, nanos: n * 1_000_000 })
}

#[test]
fn retry_policy_in_full() {
    use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
    use prost::Message;
    let any = pbuf::Any {
        type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".into(),
        value: PreviousHostsPredicate {}.encode_to_vec(),
    };
    let matcher = |name: &str| r::HeaderMatcher { name: name.into(), ..Default::default() };
    let p = r::RetryPolicy {
        retry_on: "gateway-error,reset-before-request,unavailable,internal,bogus".into(),
        num_retries: Some(pbuf::UInt32Value { value: 4 }),
        per_try_timeout: ms(250),
        per_try_idle_timeout: ms(100),
        retry_host_predicate: vec![r::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(r::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any)),
        }],
        host_selection_retry_max_attempts: 3,
        retriable_status_codes: vec![418, 99999],
        retry_back_off: Some(r::retry_policy::RetryBackOff { base_interval: ms(10), max_interval: None }),
        rate_limited_retry_back_off: Some(r::retry_policy::RateLimitedRetryBackOff {
            reset_headers: vec![
                r::retry_policy::ResetHeader { name: "Retry-After".into(), format: 0 },
                r::retry_policy::ResetHeader { name: "x-ratelimit-reset".into(), format: 1 },
            ],
            max_interval: None,
        }),
        retriable_headers: vec![matcher("x-retry")],
        retriable_request_headers: vec![matcher(":method")],
        refresh_cluster_on_retry: true,
        ..Default::default()
    };
    let cfg = route_configuration(&retry_route(p)).unwrap();
    let p = forward_action(&cfg).retry_policy.as_ref().unwrap();
    let on = model::RetryOn::GATEWAY_ERROR
        .union(model::RetryOn::RESET_BEFORE_REQUEST)
        .union(model::RetryOn::GRPC_UNAVAILABLE)
        .union(model::RetryOn::GRPC_INTERNAL);
    assert_eq!(p.retry_on, on, "unknown names are ignored, as Envoy ignores them");
    assert_eq!(p.num_retries, 4);
    assert_eq!(
        (p.per_try_timeout, p.per_try_idle_timeout),
        (Some(Duration::from_millis(250)), Some(Duration::from_millis(100)))
    );
    assert!(p.previous_hosts);
    assert_eq!(p.host_selection_max_attempts, 3);
    assert_eq!(p.retriable_status_codes, vec![418, 99999], "Envoy does not range-check them");
    assert_eq!(p.back_off, Some(model::RetryBackOff { base: Duration::from_millis(10), max: None }));
    let rl = p.rate_limited_back_off.as_ref().unwrap();
    assert_eq!(rl.max_interval, Duration::from_secs(300));
    assert_eq!(rl.reset_headers[0].name, "retry-after");
    assert_eq!(rl.reset_headers[1].format, model::ResetHeaderFormat::UnixTimestamp);
    assert_eq!(p.retriable_headers[0].name, "x-retry");
    assert_eq!(p.retriable_request_headers[0].name, ":method");

    // A virtual host's policy is translated too (the router uses it when the route has none).
    let mut rcfg = one_route(prefix_route("/", forward("svc")));
    rcfg.virtual_hosts[0].retry_policy = Some(r::RetryPolicy { retry_on: "5xx".into(), ..Default::default() });
    rcfg.virtual_hosts[0].include_attempt_count_in_response = true;
    rcfg.virtual_hosts[0].per_request_buffer_limit_bytes = Some(pbuf::UInt32Value { value: 10 });
    let cfg = route_configuration(&rcfg).unwrap();
    let vh = &cfg.virtual_hosts[0];
    assert_eq!(vh.retry_policy.as_ref().unwrap().retry_on, model::RetryOn::FIVE_XX);
    assert!(vh.include_attempt_count_in_response);
    assert_eq!(vh.per_request_buffer_limit_bytes, Some(10));
}

#[test]
fn retry_policy_errors() {
    let base = || r::RetryPolicy { retry_on: "5xx".into(), ..Default::default() };
    // (policy, error path suffix, unsupported?)
    let cases: Vec<(r::RetryPolicy, &str, bool)> = vec![
        (
            r::RetryPolicy {
                retry_back_off: Some(r::retry_policy::RetryBackOff { base_interval: ms(100), max_interval: ms(50) }),
                ..base()
            },
            "retry_policy.retry_back_off.max_interval",
            false,
        ),
        (
            r::RetryPolicy {
                retry_priority: Some(r::retry_policy::RetryPriority {
                    name: "envoy.retry_priorities.previous_priorities".into(),
                    ..Default::default()
                }),
                ..base()
            },
            "retry_policy.retry_priority",
            true,
        ),
        (
            r::RetryPolicy {
                retry_host_predicate: vec![r::retry_policy::RetryHostPredicate {
                    name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
                    config_type: None,
                }],
                ..base()
            },
            "retry_policy.retry_host_predicate[0].name",
            true,
        ),
        (
            r::RetryPolicy { retry_options_predicates: vec![core::TypedExtensionConfig::default()], ..base() },
            "retry_policy.retry_options_predicates",
            true,
        ),
    ];
    for (p, path, unsupported) in cases {
        let err = route_configuration(&retry_route(p)).unwrap_err();
        assert!(err.path.ends_with(path), "{err}");
        assert_eq!(err.kind == ErrorKind::Unsupported, unsupported, "{err}");
    }
    // A predicate named without a config is found by name, as Envoy finds its factory.
    let p = r::RetryPolicy {
        retry_host_predicate: vec![r::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: None,
        }],
        ..base()
    };
    assert!(
        forward_action(&route_configuration(&retry_route(p)).unwrap()).retry_policy.as_ref().unwrap().previous_hosts
    );
    // A route's max_stream_duration is translated, and (Envoy's "new timeouts") turns the
    // route timeout off.
    let mut route = prefix_route("/", forward("svc"));
    if let Some(r::route::Action::Route(a)) = &mut route.action {
        a.timeout = ms(300);
        a.max_stream_duration = Some(r::route_action::MaxStreamDuration {
            max_stream_duration: ms(0),
            grpc_timeout_header_max: ms(100),
            grpc_timeout_header_offset: ms(10),
        });
    }
    let rc = route_configuration(&one_route(route)).unwrap();
    let a = forward_action(&rc);
    assert_eq!(a.timeout, None);
    assert_eq!(
        a.max_stream_duration,
        Some(model::RouteMaxStreamDuration {
            max_stream_duration: Some(Duration::ZERO),
            grpc_timeout_header_max: Some(Duration::from_millis(100)),
            grpc_timeout_header_offset: Some(Duration::from_millis(10)),
        })
    );
}
