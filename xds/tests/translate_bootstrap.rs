//! Translation of bootstraps, listeners, HTTP connection managers, TCP proxies and access logs.
// The deprecated file access log `json_format` is still honoured and tested.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3 as al;
use envoy_types::pb::envoy::config::bootstrap::v3 as b;
use envoy_types::pb::envoy::config::cluster::v3 as c;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as e;
use envoy_types::pb::envoy::config::listener::v3 as l;
use envoy_types::pb::envoy::config::route::v3 as r;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3 as stream;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tp;
use envoy_types::pb::google::protobuf as pbuf;
use envoy_types::util::pack_any;
use pinion_xds::model;
use pinion_xds::translate::{bootstrap, listener, NodeOverrides};
use pinion_xds::ErrorKind;

fn addr(host: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    }
}

fn route_config(cluster: &str) -> r::RouteConfiguration {
    r::RouteConfiguration {
        name: "local_route".into(),
        virtual_hosts: vec![r::VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: vec![r::Route {
                r#match: Some(r::RouteMatch {
                    path_specifier: Some(r::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(r::route::Action::Route(r::RouteAction {
                    cluster_specifier: Some(r::route_action::ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn hcm_proto(cluster: &str) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix: "ingress_http".into(),
        http_filters: vec![router_filter()],
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(route_config(cluster))),
        ..Default::default()
    }
}

fn network_filter(name: &str, any: pbuf::Any) -> l::Filter {
    l::Filter { name: name.into(), config_type: Some(l::filter::ConfigType::TypedConfig(any)) }
}

fn hcm_filter(h: hcm::HttpConnectionManager) -> l::Filter {
    network_filter("envoy.filters.network.http_connection_manager", pack_any(h))
}

fn http_listener(name: &str, port: u32, h: hcm::HttpConnectionManager) -> l::Listener {
    l::Listener {
        name: name.into(),
        address: Some(addr("0.0.0.0", port)),
        filter_chains: vec![l::FilterChain { filters: vec![hcm_filter(h)], ..Default::default() }],
        ..Default::default()
    }
}

fn static_cluster(name: &str) -> c::Cluster {
    c::Cluster {
        name: name.into(),
        load_assignment: Some(e::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![e::LocalityLbEndpoints {
                lb_endpoints: vec![e::LbEndpoint {
                    host_identifier: Some(e::lb_endpoint::HostIdentifier::Endpoint(e::Endpoint {
                        address: Some(addr("127.0.0.1", 9000)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn bs(listeners: Vec<l::Listener>, clusters: Vec<c::Cluster>) -> b::Bootstrap {
    b::Bootstrap {
        static_resources: Some(b::bootstrap::StaticResources { listeners, clusters, secrets: vec![] }),
        ..Default::default()
    }
}

fn the_hcm(l: &model::Listener) -> &model::HttpConnectionManager {
    match &l.filter_chains[0].filter {
        model::NetworkFilter::HttpConnectionManager(h) => h,
        other => panic!("expected HCM, got {other:?}"),
    }
}

#[test]
fn minimal_bootstrap_and_hcm_defaults() {
    let out = bootstrap(
        &bs(vec![http_listener("l", 10000, hcm_proto("svc"))], vec![static_cluster("svc")]),
        &NodeOverrides::default(),
    )
    .unwrap();
    assert!(out.admin.is_none());
    assert_eq!(out.config_dump_json, serde_json::Value::Null);
    assert_eq!(out.clusters.len(), 1);
    let li = &out.listeners[0];
    assert_eq!(li.address, "0.0.0.0:10000".parse().unwrap());
    assert!(li.reuse_port);
    assert_eq!(li.per_connection_buffer_limit_bytes, 1024 * 1024);
    assert_eq!(li.tcp_backlog_size, None);
    let h = the_hcm(li);
    assert_eq!(h.stat_prefix, "ingress_http");
    assert_eq!(h.codec_type, model::CodecType::Auto);
    assert_eq!(h.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(h.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(h.max_request_headers_kb, 60);
    assert_eq!(h.max_headers_count, 100);
    assert!(h.generate_request_id);
    assert!(!h.use_remote_address);
    assert!(!h.normalize_path);
    assert_eq!(h.server_name, "envoy");
    assert_eq!(h.server_header_transformation, model::ServerHeaderTransformation::Overwrite);
    assert_eq!(h.path_with_escaped_slashes_action, model::EscapedSlashesAction::KeepUnchanged);
    assert_eq!(h.headers_with_underscores_action, model::HeadersWithUnderscoresAction::Allow);
    assert_eq!(h.drain_timeout, Duration::from_secs(5));
    assert_eq!(h.delayed_close_timeout, Duration::from_secs(1));
    assert_eq!(h.request_timeout, None);
    assert_eq!(h.request_headers_timeout, None);
    assert_eq!(h.max_stream_duration, None);
    assert_eq!(h.via, None);
    assert!(h.upgrade_types.is_empty());
    assert!(matches!(
        h.http_filters.as_slice(),
        [model::HttpFilter { kind: model::HttpFilterKind::Router(_), disabled: false, .. }]
    ));
    assert!(matches!(h.route_specifier, model::RouteSpecifier::Static(_)));
}

#[test]
fn node_overrides_win() {
    let mut b0 = bs(vec![], vec![]);
    b0.node = Some(core::Node {
        id: "from-config".into(),
        cluster: "cfg-cluster".into(),
        locality: Some(core::Locality { region: "eu".into(), ..Default::default() }),
        ..Default::default()
    });
    let out = bootstrap(&b0, &NodeOverrides::default()).unwrap();
    assert_eq!((out.node.id.as_str(), out.node.cluster.as_str()), ("from-config", "cfg-cluster"));
    assert_eq!(out.node.locality.unwrap().region, "eu");
    let o = NodeOverrides { service_node: Some("cli-node".into()), service_cluster: Some("cli-cluster".into()) };
    let out = bootstrap(&b0, &o).unwrap();
    assert_eq!((out.node.id.as_str(), out.node.cluster.as_str()), ("cli-node", "cli-cluster"));
}

#[test]
fn admin_translated() {
    let mut b0 = bs(vec![], vec![]);
    b0.admin = Some(b::Admin { address: Some(addr("127.0.0.1", 9901)), ..Default::default() });
    let out = bootstrap(&b0, &NodeOverrides::default()).unwrap();
    assert_eq!(out.admin.unwrap().address, "127.0.0.1:9901".parse().unwrap());

    b0.admin = Some(b::Admin { address: Some(addr("localhost", 9901)), ..Default::default() });
    let err = bootstrap(&b0, &NodeOverrides::default()).unwrap_err();
    assert_eq!(err.to_string(), "admin.address.socket_address.address: malformed IP address: localhost");
}

#[test]
fn duplicate_cluster_names() {
    let err =
        bootstrap(&bs(vec![], vec![static_cluster("x"), static_cluster("x")]), &NodeOverrides::default()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert_eq!(err.to_string(), "static_resources.clusters[1].name: duplicate cluster name 'x'");
}

#[test]
fn duplicate_listener_names_and_addresses() {
    let err = bootstrap(
        &bs(
            vec![http_listener("a", 1000, hcm_proto("svc")), http_listener("a", 1001, hcm_proto("svc"))],
            vec![static_cluster("svc")],
        ),
        &NodeOverrides::default(),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "static_resources.listeners[1].name: duplicate listener name 'a'");

    let err = bootstrap(
        &bs(
            vec![http_listener("a", 1000, hcm_proto("svc")), http_listener("b", 1000, hcm_proto("svc"))],
            vec![static_cluster("svc")],
        ),
        &NodeOverrides::default(),
    )
    .unwrap_err();
    assert_eq!(err.path, "static_resources.listeners[1].address");
    assert!(err.reason.contains("duplicate address '0.0.0.0:1000'"), "{err}");

    // Port 0 is an ephemeral port: never a conflict.
    assert!(bootstrap(
        &bs(
            vec![http_listener("a", 0, hcm_proto("svc")), http_listener("b", 0, hcm_proto("svc"))],
            vec![static_cluster("svc")]
        ),
        &NodeOverrides::default(),
    )
    .is_ok());
}

#[test]
fn static_route_unknown_cluster() {
    let err = bootstrap(
        &bs(vec![http_listener("l", 1000, hcm_proto("missing"))], vec![static_cluster("svc")]),
        &NodeOverrides::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert_eq!(
        err.to_string(),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: route: unknown cluster 'missing'"
    );

    let mut h = hcm_proto("missing");
    if let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) = &mut h.route_specifier {
        rc.validate_clusters = Some(pbuf::BoolValue { value: false });
    }
    assert!(bootstrap(&bs(vec![http_listener("l", 1000, h)], vec![]), &NodeOverrides::default()).is_ok());
}

#[test]
fn rds_and_eds_and_dynamic_resources_unsupported_in_static_bootstrap() {
    let mut h = hcm_proto("svc");
    h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
        config_source: None,
        route_config_name: "routes".into(),
    }));
    // The standalone listener translation (xDS path) keeps RDS.
    let li = listener(&http_listener("l", 1000, h.clone())).unwrap();
    assert!(
        matches!(the_hcm(&li).route_specifier, model::RouteSpecifier::Rds { ref route_config_name } if route_config_name == "routes")
    );
    // Without dynamic_resources there is no transport for its RDS: refused.
    let err = bootstrap(&bs(vec![http_listener("l", 1000, h)], vec![]), &NodeOverrides::default()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(err.path, "static_resources.listeners[0]");
    assert!(err.to_string().contains("needs dynamic_resources"), "{err}");

    let mut eds = c::Cluster { name: "e".into(), ..Default::default() };
    eds.cluster_discovery_type = Some(c::cluster::ClusterDiscoveryType::Type(c::cluster::DiscoveryType::Eds as i32));
    let err = bootstrap(&bs(vec![], vec![eds]), &NodeOverrides::default()).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "static_resources.clusters[0].type"));

    let mut b0 = bs(vec![], vec![]);
    b0.dynamic_resources = Some(b::bootstrap::DynamicResources::default());
    assert!(bootstrap(&b0, &NodeOverrides::default()).is_ok());
    b0.dynamic_resources =
        Some(b::bootstrap::DynamicResources { lds_config: Some(core::ConfigSource::default()), ..Default::default() });
    let err = bootstrap(&b0, &NodeOverrides::default()).unwrap_err();
    assert_eq!(err.to_string(), "dynamic_resources.lds_config: config_source_specifier must be set");
}

#[test]
fn listener_needs_filter_chains() {
    let li = l::Listener { name: "l".into(), address: Some(addr("0.0.0.0", 80)), ..Default::default() };
    let err = listener(&li).unwrap_err();
    assert_eq!(err.path, "filter_chains");
    assert_eq!(err.kind, ErrorKind::Invalid);

    let li = l::Listener {
        default_filter_chain: Some(l::FilterChain {
            filters: vec![hcm_filter(hcm_proto("svc"))],
            ..Default::default()
        }),
        ..li
    };
    let m = listener(&li).unwrap();
    assert!(m.filter_chains.is_empty());
    assert!(m.default_filter_chain.is_some());
}

#[test]
fn listener_address_must_be_ip_and_tcp() {
    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.address = Some(addr("example.com", 80));
    let err = listener(&li).unwrap_err();
    assert_eq!(err.to_string(), "address.socket_address.address: malformed IP address: example.com");

    let mut li = http_listener("l", 80, hcm_proto("svc"));
    if let Some(core::address::Address::SocketAddress(s)) = li.address.as_mut().and_then(|a| a.address.as_mut()) {
        s.protocol = core::socket_address::Protocol::Udp as i32;
    }
    let err = listener(&li).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "address.socket_address.protocol"));

    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.address = Some(addr("::", 8080));
    assert_eq!(listener(&li).unwrap().address, "[::]:8080".parse().unwrap());
}

#[test]
fn network_filter_chain_rules() {
    // A non-terminal (unknown) filter last.
    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.filter_chains[0].filters = vec![network_filter("envoy.filters.network.redis_proxy", pbuf::Any::default())];
    let err = listener(&li).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(err.path, "filter_chains[0].filters[0]");
    assert!(err.reason.contains("envoy.filters.network.redis_proxy"), "{err}");

    // A terminal filter that is not last.
    let mut li = http_listener("l", 80, hcm_proto("svc"));
    let tcp = tp::TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tp::tcp_proxy::ClusterSpecifier::Cluster("svc".into())),
        ..Default::default()
    };
    li.filter_chains[0].filters.push(network_filter("envoy.filters.network.tcp_proxy", pack_any(tcp)));
    let err = listener(&li).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert_eq!(err.path, "filter_chains[0].filters[0]");
    assert!(err.reason.contains("must be the last filter"), "{err}");

    // No filters at all.
    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.filter_chains[0].filters.clear();
    assert_eq!(listener(&li).unwrap_err().path, "filter_chains[0].filters");
}

#[test]
fn duplicate_filter_chain_matches() {
    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.filter_chains.push(li.filter_chains[0].clone());
    let err = listener(&li).unwrap_err();
    assert_eq!(err.path, "filter_chains[1].filter_chain_match");
}

#[test]
fn http_filters_must_end_with_router() {
    let unknown = hcm::HttpFilter {
        name: "envoy.filters.http.grpc_web".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pbuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb".into(),
            value: vec![],
        })),
        ..Default::default()
    };
    let mut h = hcm_proto("svc");
    h.http_filters = vec![unknown.clone(), router_filter()];
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(err.path, "filter_chains[0].filters[0].typed_config.http_filters[0]");
    assert!(err.reason.contains("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"), "{err}");

    // Optional filters are skipped.
    let mut h = hcm_proto("svc");
    h.http_filters = vec![hcm::HttpFilter { is_optional: true, ..unknown.clone() }, router_filter()];
    let m = listener(&http_listener("l", 80, h)).unwrap();
    assert_eq!(the_hcm(&m).http_filters.len(), 1);

    // Router not last.
    let mut h = hcm_proto("svc");
    h.http_filters = vec![router_filter(), hcm::HttpFilter { is_optional: true, ..unknown }];
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert_eq!(err.path, "filter_chains[0].filters[0].typed_config.http_filters[0]");

    // Empty list.
    let mut h = hcm_proto("svc");
    h.http_filters.clear();
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(err.path, "filter_chains[0].filters[0].typed_config.http_filters");

    // Router without typed_config, and with settings.
    let mut h = hcm_proto("svc");
    h.http_filters = vec![hcm::HttpFilter { name: "envoy.filters.http.router".into(), ..Default::default() }];
    assert!(listener(&http_listener("l", 80, h)).is_ok());
    let mut h = hcm_proto("svc");
    h.http_filters = vec![hcm::HttpFilter {
        name: "router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Router {
            suppress_envoy_headers: true,
            respect_expected_rq_timeout: true,
            ..Default::default()
        }))),
        ..Default::default()
    }];
    let m = listener(&http_listener("l", 80, h)).unwrap();
    let [model::HttpFilter { kind: model::HttpFilterKind::Router(rc), .. }] = the_hcm(&m).http_filters.as_slice()
    else {
        panic!()
    };
    assert!(rc.suppress_envoy_headers && rc.respect_expected_rq_timeout);
}

#[test]
fn hcm_settings_mapped() {
    use hcm::http_connection_manager as hm;
    let mut h = hcm_proto("svc");
    h.codec_type = hm::CodecType::Http2 as i32;
    h.use_remote_address = Some(pbuf::BoolValue { value: true });
    h.xff_num_trusted_hops = 2;
    h.via = "pinion".into();
    h.generate_request_id = Some(pbuf::BoolValue { value: false });
    h.normalize_path = Some(pbuf::BoolValue { value: true });
    h.merge_slashes = true;
    h.path_with_escaped_slashes_action = hm::PathWithEscapedSlashesAction::UnescapeAndRedirect as i32;
    h.max_request_headers_kb = Some(pbuf::UInt32Value { value: 96 });
    h.server_name = "pinion".into();
    h.server_header_transformation = hm::ServerHeaderTransformation::PassThrough as i32;
    h.stream_idle_timeout = Some(pbuf::Duration { seconds: 0, nanos: 0 });
    h.request_timeout = Some(pbuf::Duration { seconds: 30, nanos: 0 });
    h.common_http_protocol_options = Some(core::HttpProtocolOptions {
        idle_timeout: Some(pbuf::Duration { seconds: 0, nanos: 0 }),
        max_headers_count: Some(pbuf::UInt32Value { value: 50 }),
        headers_with_underscores_action: core::http_protocol_options::HeadersWithUnderscoresAction::DropHeader as i32,
        ..Default::default()
    });
    h.http_protocol_options = Some(core::Http1ProtocolOptions {
        accept_http_10: true,
        default_host_for_http_10: "example.com".into(),
        allow_chunked_length: true,
        ..Default::default()
    });
    h.http2_protocol_options = Some(core::Http2ProtocolOptions {
        max_concurrent_streams: Some(pbuf::UInt32Value { value: 10 }),
        ..Default::default()
    });
    h.upgrade_configs = vec![hm::UpgradeConfig { upgrade_type: "WebSocket".into(), ..Default::default() }];
    let m = listener(&http_listener("l", 80, h)).unwrap();
    let h = the_hcm(&m);
    assert_eq!(h.codec_type, model::CodecType::Http2);
    assert!(h.use_remote_address);
    assert_eq!(h.xff_num_trusted_hops, 2);
    assert_eq!(h.via.as_deref(), Some("pinion"));
    assert!(!h.generate_request_id);
    assert!(h.normalize_path && h.merge_slashes);
    assert_eq!(h.path_with_escaped_slashes_action, model::EscapedSlashesAction::UnescapeAndRedirect);
    assert_eq!(h.max_request_headers_kb, 96);
    assert_eq!(h.server_name, "pinion");
    assert_eq!(h.server_header_transformation, model::ServerHeaderTransformation::PassThrough);
    assert_eq!(h.stream_idle_timeout, None);
    assert_eq!(h.request_timeout, Some(Duration::from_secs(30)));
    assert_eq!(h.idle_timeout, None);
    assert_eq!(h.max_headers_count, 50);
    assert_eq!(h.headers_with_underscores_action, model::HeadersWithUnderscoresAction::DropHeader);
    assert!(h.accept_http_10);
    assert_eq!(h.default_host_for_http_10.as_deref(), Some("example.com"));
    assert_eq!(h.http2.max_concurrent_streams, 10);
    assert_eq!(h.upgrade_types, vec!["websocket".to_string()]);
}

#[test]
fn hcm_unsupported_fields() {
    use hcm::http_connection_manager as hm;
    let mut h = hcm_proto("svc");
    h.tracing = Some(hm::Tracing::default());
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(
        err.to_string(),
        "filter_chains[0].filters[0].typed_config.tracing: unsupported: tracing is not supported by pinion"
    );

    let mut h = hcm_proto("svc");
    h.codec_type = hm::CodecType::Http3 as i32;
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(
        (err.kind, err.path.as_str()),
        (ErrorKind::Unsupported, "filter_chains[0].filters[0].typed_config.codec_type")
    );

    let mut h = hcm_proto("svc");
    h.upgrade_configs = vec![hm::UpgradeConfig { upgrade_type: "h2c".into(), ..Default::default() }];
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);

    // Connection and stream durations are translated (0 disables them, as in Envoy).
    let mut h = hcm_proto("svc");
    h.http1_safe_max_connection_duration = true;
    h.common_http_protocol_options = Some(core::HttpProtocolOptions {
        max_connection_duration: Some(pbuf::Duration { seconds: 60, nanos: 0 }),
        max_connection_duration_jitter: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 10.0 }),
        max_stream_duration: Some(pbuf::Duration { seconds: 0, nanos: 0 }),
        ..Default::default()
    });
    let l = listener(&http_listener("l", 80, h)).unwrap();
    let t = the_hcm(&l);
    assert_eq!(t.max_connection_duration, Some(Duration::from_secs(60)));
    assert_eq!(t.max_connection_duration_jitter_percent, 10.0);
    assert!(t.http1_safe_max_connection_duration);
    assert_eq!(t.max_stream_duration, None);
    let mut h = hcm_proto("svc");
    h.common_http_protocol_options = Some(core::HttpProtocolOptions {
        max_connection_duration_jitter: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 150.0 }),
        ..Default::default()
    });
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(
        err.path,
        "filter_chains[0].filters[0].typed_config.common_http_protocol_options.max_connection_duration_jitter.value"
    );
}

#[test]
fn transport_sockets_and_listener_filters() {
    let mut li = http_listener("l", 443, hcm_proto("svc"));
    li.filter_chains[0].transport_socket =
        Some(core::TransportSocket { name: "envoy.transport_sockets.tls".into(), config_type: None });
    // A TLS socket without typed_config is an empty DownstreamTlsContext, as in Envoy: a
    // server context needs a certificate.
    let err = listener(&li).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.path.starts_with("filter_chains[0].transport_socket"), "{err}");
    assert!(err.reason.contains("No TLS certificates found for server context"), "{err}");

    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.filter_chains[0].transport_socket =
        Some(core::TransportSocket { name: "envoy.transport_sockets.raw_buffer".into(), config_type: None });
    li.listener_filters = vec![
        l::ListenerFilter { name: "envoy.filters.listener.tls_inspector".into(), ..Default::default() },
        l::ListenerFilter {
            name: "whatever".into(),
            config_type: Some(l::listener_filter::ConfigType::TypedConfig(pbuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst".into(),
                value: vec![],
            })),
            ..Default::default()
        },
    ];
    li.enable_reuse_port = Some(pbuf::BoolValue { value: false });
    li.tcp_backlog_size = Some(pbuf::UInt32Value { value: 512 });
    li.filter_chains[0].filter_chain_match = Some(l::FilterChainMatch {
        destination_port: Some(pbuf::UInt32Value { value: 80 }),
        prefix_ranges: vec![core::CidrRange {
            address_prefix: "10.0.0.0".into(),
            prefix_len: Some(pbuf::UInt32Value { value: 8 }),
        }],
        server_names: vec!["Example.COM".into()],
        ..Default::default()
    });
    // original_dst (transparent interception) is not implemented: refused, not ignored.
    let err = listener(&li).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "listener_filters[1]"));
    li.listener_filters.truncate(1);
    let m = listener(&li).unwrap();
    assert_eq!(m.listener_filters, vec![model::ListenerFilter::TlsInspector]);
    assert!(!m.reuse_port);
    assert_eq!(m.tcp_backlog_size, Some(512));
    let fcm = &m.filter_chains[0].filter_chain_match;
    assert_eq!(fcm.destination_port, Some(80));
    assert_eq!(fcm.prefix_ranges[0].prefix_len, 8);
    assert_eq!(fcm.server_names, vec!["example.com".to_string()]);
    assert!(m.filter_chains[0].transport_socket.is_none());

    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.listener_filters =
        vec![l::ListenerFilter { name: "envoy.filters.listener.proxy_protocol".into(), ..Default::default() }];
    let err = listener(&li).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "listener_filters[0]"));

    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.filter_chains[0].filter_chain_match = Some(l::FilterChainMatch {
        prefix_ranges: vec![core::CidrRange {
            address_prefix: "10.0.0.0".into(),
            prefix_len: Some(pbuf::UInt32Value { value: 33 }),
        }],
        ..Default::default()
    });
    let err = listener(&li).unwrap_err();
    assert_eq!(err.path, "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len");
}

#[test]
fn tcp_proxy_translation() {
    let tcp = tp::TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tp::tcp_proxy::ClusterSpecifier::WeightedClusters(tp::tcp_proxy::WeightedCluster {
            clusters: vec![
                tp::tcp_proxy::weighted_cluster::ClusterWeight { name: "a".into(), weight: 1, metadata_match: None },
                tp::tcp_proxy::weighted_cluster::ClusterWeight { name: "b".into(), weight: 3, metadata_match: None },
            ],
        })),
        ..Default::default()
    };
    let li = l::Listener {
        name: "tcp".into(),
        address: Some(addr("127.0.0.1", 5432)),
        filter_chains: vec![l::FilterChain {
            filters: vec![network_filter("envoy.filters.network.tcp_proxy", pack_any(tcp.clone()))],
            ..Default::default()
        }],
        ..Default::default()
    };
    let m = listener(&li).unwrap();
    let model::NetworkFilter::TcpProxy(t) = &m.filter_chains[0].filter else { panic!() };
    assert_eq!(t.stat_prefix, "tcp");
    assert_eq!(t.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(t.max_connect_attempts, 1);
    let model::TcpProxyCluster::Weighted(ws) = &t.cluster else { panic!() };
    assert_eq!(ws.iter().map(|w| (w.name.as_str(), w.weight)).collect::<Vec<_>>(), vec![("a", 1), ("b", 3)]);

    let single = tp::TcpProxy {
        cluster_specifier: Some(tp::tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        idle_timeout: Some(pbuf::Duration { seconds: 0, nanos: 0 }),
        max_connect_attempts: Some(pbuf::UInt32Value { value: 3 }),
        ..tcp.clone()
    };
    let mut li2 = li.clone();
    li2.filter_chains[0].filters = vec![network_filter("x", pack_any(single))];
    let m = listener(&li2).unwrap();
    let model::NetworkFilter::TcpProxy(t) = &m.filter_chains[0].filter else { panic!() };
    assert!(matches!(t.cluster, model::TcpProxyCluster::Single(ref c) if c == "db"));
    assert_eq!(t.idle_timeout, None);
    assert_eq!(t.max_connect_attempts, 3);

    let tunneling = tp::TcpProxy { tunneling_config: Some(Default::default()), ..tcp };
    let mut li3 = li;
    li3.filter_chains[0].filters = vec![network_filter("x", pack_any(tunneling))];
    let err = listener(&li3).unwrap_err();
    assert_eq!(
        (err.kind, err.path.as_str()),
        (ErrorKind::Unsupported, "filter_chains[0].filters[0].typed_config.tunneling_config")
    );
}

#[test]
fn access_logs() {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    let file_log = |fmt: Option<file::file_access_log::AccessLogFormat>| al::AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(al::access_log::ConfigType::TypedConfig(pack_any(file::FileAccessLog {
            path: "/dev/stdout".into(),
            access_log_format: fmt,
        }))),
    };
    let json = pbuf::Struct {
        fields: [(
            "status".to_string(),
            pbuf::Value { kind: Some(pbuf::value::Kind::StringValue("%RESPONSE_CODE%".into())) },
        )]
        .into_iter()
        .collect(),
    };
    let mut h = hcm_proto("svc");
    h.access_log = vec![
        file_log(None),
        file_log(Some(file::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
            format: Some(Format::TextFormatSource(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString("%PROTOCOL%\n".into())),
                watched_directory: None,
            })),
            ..Default::default()
        }))),
        file_log(Some(file::file_access_log::AccessLogFormat::JsonFormat(json))),
        al::AccessLog {
            name: "envoy.access_loggers.stderr".into(),
            filter: None,
            config_type: Some(al::access_log::ConfigType::TypedConfig(pack_any(stream::StderrAccessLog::default()))),
        },
    ];
    let m = listener(&http_listener("l", 80, h)).unwrap();
    let logs = &the_hcm(&m).access_logs;
    assert_eq!(
        logs[0],
        model::AccessLog {
            sink: model::AccessLogSink::File("/dev/stdout".into()),
            format: model::AccessLogFormat::Default
        }
    );
    assert_eq!(logs[1].format, model::AccessLogFormat::Text("%PROTOCOL%\n".into()));
    assert_eq!(logs[2].format, model::AccessLogFormat::Json(vec![("status".into(), "%RESPONSE_CODE%".into())]));
    assert_eq!(logs[3].sink, model::AccessLogSink::Stderr);

    let mut h = hcm_proto("svc");
    let mut filtered = file_log(None);
    filtered.filter = Some(al::AccessLogFilter::default());
    h.access_log = vec![filtered];
    let err = listener(&http_listener("l", 80, h)).unwrap_err();
    assert_eq!(
        (err.kind, err.path.as_str()),
        (ErrorKind::Unsupported, "filter_chains[0].filters[0].typed_config.access_log[0].filter")
    );
}

#[test]
fn wrong_type_url_for_hcm_is_reported() {
    let mut li = http_listener("l", 80, hcm_proto("svc"));
    li.filter_chains[0].filters = vec![network_filter(
        "envoy.filters.network.http_connection_manager",
        pbuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".into(),
            value: vec![0xff],
        },
    )];
    // Identified as tcp_proxy by its type URL; the garbage bytes fail to decode without a panic.
    let err = listener(&li).unwrap_err();
    assert_eq!(err.path, "filter_chains[0].filters[0].typed_config");
}

#[test]
fn cluster_manager_outlier_event_log() {
    let mut b = bs(vec![], vec![static_cluster("svc")]);
    assert_eq!(bootstrap(&b, &NodeOverrides::default()).unwrap().outlier_event_log_path, "");
    b.cluster_manager = Some(b::ClusterManager {
        outlier_detection: Some(b::cluster_manager::OutlierDetection {
            event_log_path: "/tmp/outlier.log".into(),
            event_service: None,
        }),
        ..Default::default()
    });
    assert_eq!(bootstrap(&b, &NodeOverrides::default()).unwrap().outlier_event_log_path, "/tmp/outlier.log");
    b.cluster_manager.as_mut().unwrap().local_cluster_name = "svc".into();
    let err = bootstrap(&b, &NodeOverrides::default()).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "cluster_manager.local_cluster_name"));
}
