//! Translation of clusters, their protocol options and load assignments.
// The deprecated cluster-level http2_protocol_options is still honoured and tested.
#![allow(deprecated)]

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as c;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as e;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as up;
use envoy_types::pb::google::protobuf as pbuf;
use envoy_types::util::pack_any;
use pinion_xds::model;
use pinion_xds::translate::{cluster, cluster_load_assignment};
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

fn lb_endpoint(host: &str, port: u32) -> e::LbEndpoint {
    e::LbEndpoint {
        host_identifier: Some(e::lb_endpoint::HostIdentifier::Endpoint(e::Endpoint {
            address: Some(addr(host, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cla(name: &str, endpoints: Vec<e::LbEndpoint>) -> e::ClusterLoadAssignment {
    e::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![e::LocalityLbEndpoints { lb_endpoints: endpoints, ..Default::default() }],
        ..Default::default()
    }
}

fn static_cluster(name: &str, endpoints: Vec<e::LbEndpoint>) -> c::Cluster {
    c::Cluster { name: name.into(), load_assignment: Some(cla(name, endpoints)), ..Default::default() }
}

fn with_type(mut cl: c::Cluster, t: c::cluster::DiscoveryType) -> c::Cluster {
    cl.cluster_discovery_type = Some(c::cluster::ClusterDiscoveryType::Type(t as i32));
    cl
}

#[test]
fn cluster_defaults() {
    let m = cluster(&static_cluster("svc", vec![lb_endpoint("127.0.0.1", 8080)])).unwrap();
    assert_eq!(m.name, "svc");
    assert_eq!(m.stat_name, "svc");
    assert_eq!(m.discovery, model::DiscoveryType::Static);
    assert_eq!(m.connect_timeout, Duration::from_secs(5));
    assert_eq!(m.lb_policy, model::LbPolicy::RoundRobin);
    assert_eq!(m.protocol, model::UpstreamProtocol::Http1);
    assert_eq!(m.http2, model::Http2Options::default());
    assert_eq!(m.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(m.max_requests_per_connection, 0);
    assert_eq!(m.per_connection_buffer_limit_bytes, 1024 * 1024);
    assert_eq!(m.dns_refresh_rate, Duration::from_secs(5));
    assert_eq!(m.dns_lookup_family, model::DnsLookupFamily::Auto);
    assert_eq!(m.circuit_breakers, model::CircuitBreakers::default());
    assert_eq!(m.load_assignment.overprovisioning_factor, 140);
    let ep = &m.load_assignment.localities[0].endpoints[0];
    assert_eq!(ep.weight, 1);
    assert_eq!(ep.health_status, model::HealthStatus::Unknown);
    assert_eq!(ep.address, model::EndpointAddress::Socket("127.0.0.1:8080".parse().unwrap()));
}

#[test]
fn static_cluster_requires_ip_addresses() {
    let err = cluster(&static_cluster("svc", vec![lb_endpoint("backend.local", 80)])).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert_eq!(
        err.to_string(),
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: malformed IP address: backend.local"
    );
}

#[test]
fn strict_dns_keeps_hostnames() {
    let cl = with_type(
        static_cluster("svc", vec![lb_endpoint("backend.local", 80), lb_endpoint("::1", 81)]),
        c::cluster::DiscoveryType::StrictDns,
    );
    let m = cluster(&cl).unwrap();
    assert_eq!(m.discovery, model::DiscoveryType::StrictDns);
    let eps = &m.load_assignment.localities[0].endpoints;
    assert_eq!(eps[0].address, model::EndpointAddress::Dns { host: "backend.local".into(), port: 80 });
    assert_eq!(eps[1].address, model::EndpointAddress::Socket("[::1]:81".parse::<SocketAddr>().unwrap()));
}

#[test]
fn logical_dns_needs_exactly_one_endpoint() {
    let cl = with_type(
        static_cluster("svc", vec![lb_endpoint("a.local", 80), lb_endpoint("b.local", 80)]),
        c::cluster::DiscoveryType::LogicalDns,
    );
    let err = cluster(&cl).unwrap_err();
    assert_eq!(err.path, "load_assignment");
    let ok = with_type(static_cluster("svc", vec![lb_endpoint("a.local", 80)]), c::cluster::DiscoveryType::LogicalDns);
    assert_eq!(cluster(&ok).unwrap().discovery, model::DiscoveryType::LogicalDns);
}

#[test]
fn typed_http_protocol_options_http2() {
    let opts = up::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(pbuf::Duration { seconds: 30, nanos: 0 }),
            max_requests_per_connection: Some(pbuf::UInt32Value { value: 100 }),
            max_stream_duration: Some(pbuf::Duration { seconds: 2, nanos: 0 }),
            ..Default::default()
        }),
        upstream_protocol_options: Some(up::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            up::http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    up::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        core::Http2ProtocolOptions {
                            max_concurrent_streams: Some(pbuf::UInt32Value { value: 50 }),
                            connection_keepalive: Some(core::KeepaliveSettings {
                                interval: Some(pbuf::Duration { seconds: 10, nanos: 0 }),
                                timeout: Some(pbuf::Duration { seconds: 3, nanos: 0 }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    let mut cl = static_cluster("svc", vec![lb_endpoint("127.0.0.1", 8080)]);
    cl.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(opts));
    let m = cluster(&cl).unwrap();
    assert_eq!(m.protocol, model::UpstreamProtocol::Http2);
    assert_eq!(m.http2.max_concurrent_streams, 50);
    assert_eq!(m.http2.initial_stream_window_size, 268_435_456);
    assert_eq!(m.http2.keepalive_interval, Some(Duration::from_secs(10)));
    assert_eq!(m.http2.keepalive_timeout, Some(Duration::from_secs(3)));
    assert_eq!(m.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(m.max_requests_per_connection, 100);
    assert_eq!(m.max_stream_duration, Some(Duration::from_secs(2)));
    // Upstream connection durations are refused by name.
    let opts = up::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            max_connection_duration: Some(pbuf::Duration { seconds: 2, nanos: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut cl = static_cluster("svc", vec![lb_endpoint("127.0.0.1", 8080)]);
    cl.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(opts));
    let err = cluster(&cl).unwrap_err();
    assert!(err.path.ends_with("common_http_protocol_options.max_connection_duration"), "{err}");
    assert!(err.to_string().contains("not supported by pinion"), "{err}");
}

#[test]
fn typed_http_protocol_options_downstream_and_auto() {
    let mut cl = static_cluster("svc", vec![]);
    let down = up::HttpProtocolOptions {
        upstream_protocol_options: Some(
            up::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(Default::default()),
        ),
        ..Default::default()
    };
    cl.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(down));
    assert_eq!(cluster(&cl).unwrap().protocol, model::UpstreamProtocol::UseDownstream);

    let auto = up::HttpProtocolOptions {
        upstream_protocol_options: Some(up::http_protocol_options::UpstreamProtocolOptions::AutoConfig(
            Default::default(),
        )),
        ..Default::default()
    };
    cl.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(auto));
    let err = cluster(&cl).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert_eq!(
        err.path,
        "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].auto_config"
    );
}

#[test]
fn typed_protocol_options_wrong_type_url() {
    let mut cl = static_cluster("svc", vec![]);
    cl.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(core::Http2ProtocolOptions::default()),
    );
    let err = cluster(&cl).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.reason.contains("unexpected type URL"), "{err}");
}

#[test]
fn deprecated_http2_protocol_options_field() {
    let mut cl = static_cluster("svc", vec![]);
    cl.http2_protocol_options = Some(core::Http2ProtocolOptions {
        initial_connection_window_size: Some(pbuf::UInt32Value { value: 1 << 20 }),
        ..Default::default()
    });
    let m = cluster(&cl).unwrap();
    assert_eq!(m.protocol, model::UpstreamProtocol::Http2);
    assert_eq!(m.http2.initial_connection_window_size, 1 << 20);
}

#[test]
fn unsupported_cluster_features() {
    let cl = with_type(static_cluster("svc", vec![]), c::cluster::DiscoveryType::OriginalDst);
    let err = cluster(&cl).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "type"));

    let mut cl = static_cluster("svc", vec![]);
    cl.lb_policy = c::cluster::LbPolicy::ClusterProvided as i32;
    let err = cluster(&cl).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "lb_policy"));
    assert!(err.reason.contains("CLUSTER_PROVIDED"), "{err}");

    let mut cl = static_cluster("svc", vec![]);
    // A TLS socket without typed_config is an empty UpstreamTlsContext, as in Envoy: TLS with
    // no client certificate and no peer verification.
    cl.transport_socket = Some(core::TransportSocket { name: "envoy.transport_sockets.tls".into(), config_type: None });
    let tls = cluster(&cl).unwrap().transport_socket.expect("TLS context");
    assert!(tls.common.tls_certificates.is_empty() && tls.common.validation.is_none());

    let mut cl = static_cluster("svc", vec![]);
    cl.transport_socket =
        Some(core::TransportSocket { name: "envoy.transport_sockets.alts".into(), config_type: None });
    let err = cluster(&cl).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "transport_socket"));

    let mut cl = static_cluster("svc", vec![]);
    cl.transport_socket =
        Some(core::TransportSocket { name: "envoy.transport_sockets.raw_buffer".into(), config_type: None });
    assert!(cluster(&cl).is_ok());
}

#[test]
fn cluster_settings_mapped() {
    let mut cl = with_type(static_cluster("svc", vec![]), c::cluster::DiscoveryType::StrictDns);
    cl.alt_stat_name = "svc_stats".into();
    cl.connect_timeout = Some(pbuf::Duration { seconds: 0, nanos: 250_000_000 });
    cl.lb_policy = c::cluster::LbPolicy::LeastRequest as i32;
    cl.dns_lookup_family = c::cluster::DnsLookupFamily::V4Only as i32;
    cl.dns_refresh_rate = Some(pbuf::Duration { seconds: 30, nanos: 0 });
    let m = cluster(&cl).unwrap();
    assert_eq!(m.stat_name, "svc_stats");
    assert_eq!(m.connect_timeout, Duration::from_millis(250));
    assert_eq!(m.lb_policy, model::LbPolicy::LeastRequest);
    assert_eq!(m.dns_lookup_family, model::DnsLookupFamily::V4Only);
    assert_eq!(m.dns_refresh_rate, Duration::from_secs(30));
}

fn u32v(value: u32) -> Option<pbuf::UInt32Value> {
    Some(pbuf::UInt32Value { value })
}

fn thresholds(priority: core::RoutingPriority) -> c::circuit_breakers::Thresholds {
    c::circuit_breakers::Thresholds { priority: priority as i32, ..Default::default() }
}

#[test]
fn circuit_breakers_per_priority() {
    use core::RoutingPriority as P;
    let mut cl = static_cluster("svc", vec![]);
    cl.circuit_breakers = Some(c::CircuitBreakers {
        thresholds: vec![
            c::circuit_breakers::Thresholds {
                max_requests: u32v(5),
                max_connection_pools: u32v(2),
                track_remaining: true,
                ..thresholds(P::Default)
            },
            c::circuit_breakers::Thresholds {
                max_connections: u32v(7),
                max_pending_requests: u32v(8),
                max_retries: u32v(9),
                retry_budget: Some(c::circuit_breakers::thresholds::RetryBudget {
                    budget_percent: None,
                    min_retry_concurrency: u32v(4),
                    budget_interval: None,
                }),
                ..thresholds(P::High)
            },
            // Envoy reads the first entry of a priority only.
            c::circuit_breakers::Thresholds { max_requests: u32v(77), ..thresholds(P::Default) },
        ],
        per_host_thresholds: vec![
            c::circuit_breakers::Thresholds { max_connections: u32v(3), ..thresholds(P::Default) },
            // Ignored as a second DEFAULT entry, even with fields Envoy refuses.
            c::circuit_breakers::Thresholds { max_requests: u32v(1), ..thresholds(P::Default) },
        ],
    });
    let m = cluster(&cl).unwrap().circuit_breakers;
    let d = model::Thresholds::default();
    assert_eq!(
        m.default,
        model::Thresholds {
            max_requests: 5,
            max_connection_pools: 2,
            track_remaining: true,
            max_connections_per_host: 3,
            ..d.clone()
        }
    );
    assert_eq!(
        m.high,
        model::Thresholds {
            max_connections: 7,
            max_pending_requests: 8,
            max_retries: 9,
            retry_budget: Some(model::RetryBudget { budget_percent: 20.0, min_retry_concurrency: 4 }),
            ..d.clone()
        }
    );
    assert_eq!(m.get(model::RoutingPriority::High).max_connections, 7);
    assert_eq!((d.max_connections, d.max_pending_requests, d.max_requests, d.max_retries), (1024, 1024, 1024, 3));
    assert_eq!((d.max_connection_pools, d.max_connections_per_host), (u64::MAX, u64::MAX));
}

#[test]
fn per_host_thresholds_take_max_connections_only() {
    use core::RoutingPriority as P;
    for (t, field) in [
        (
            c::circuit_breakers::Thresholds { max_pending_requests: u32v(1), ..thresholds(P::Default) },
            "max_pending_requests",
        ),
        (c::circuit_breakers::Thresholds { max_requests: u32v(1), ..thresholds(P::High) }, "max_requests"),
        (c::circuit_breakers::Thresholds { max_retries: u32v(1), ..thresholds(P::Default) }, "max_retries"),
        (
            c::circuit_breakers::Thresholds { max_connection_pools: u32v(1), ..thresholds(P::Default) },
            "max_connection_pools",
        ),
        (
            c::circuit_breakers::Thresholds { retry_budget: Some(Default::default()), ..thresholds(P::Default) },
            "retry_budget",
        ),
    ] {
        let mut cl = static_cluster("svc", vec![]);
        cl.circuit_breakers = Some(c::CircuitBreakers { thresholds: vec![], per_host_thresholds: vec![t] });
        let err = cluster(&cl).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{field}");
        assert_eq!(err.path, format!("circuit_breakers.per_host_thresholds[0].{field}"));
        assert!(err.to_string().contains("Unsupported field in per_host_thresholds"), "{err}");
    }
    let mut cl = static_cluster("svc", vec![]);
    cl.circuit_breakers = Some(c::CircuitBreakers {
        thresholds: vec![],
        per_host_thresholds: vec![c::circuit_breakers::Thresholds {
            max_connections: u32v(2),
            track_remaining: true,
            ..thresholds(P::High)
        }],
    });
    let m = cluster(&cl).unwrap().circuit_breakers;
    assert_eq!((m.default.max_connections_per_host, m.high.max_connections_per_host), (u64::MAX, 2));
}

#[test]
fn load_assignment_priorities_weights_health() {
    let mut ep = lb_endpoint("10.0.0.1", 80);
    ep.load_balancing_weight = Some(pbuf::UInt32Value { value: 5 });
    ep.health_status = core::HealthStatus::Draining as i32;
    if let Some(e::lb_endpoint::HostIdentifier::Endpoint(inner)) = &mut ep.host_identifier {
        inner.hostname = "pod-1".into();
    }
    let a = e::ClusterLoadAssignment {
        cluster_name: "svc".into(),
        endpoints: vec![
            e::LocalityLbEndpoints {
                locality: Some(core::Locality { region: "r".into(), zone: "z".into(), sub_zone: "s".into() }),
                lb_endpoints: vec![ep],
                load_balancing_weight: Some(pbuf::UInt32Value { value: 3 }),
                priority: 0,
                ..Default::default()
            },
            e::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("10.0.0.2", 80)],
                priority: 1,
                ..Default::default()
            },
        ],
        policy: Some(e::cluster_load_assignment::Policy {
            overprovisioning_factor: Some(pbuf::UInt32Value { value: 200 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let m = cluster_load_assignment(&a).unwrap();
    assert_eq!(m.cluster_name, "svc");
    assert_eq!(m.overprovisioning_factor, 200);
    assert_eq!(m.localities.len(), 2);
    let l0 = &m.localities[0];
    assert_eq!(l0.load_balancing_weight, Some(3));
    assert_eq!(l0.locality.as_ref().unwrap().zone, "z");
    assert_eq!(l0.endpoints[0].weight, 5);
    assert_eq!(l0.endpoints[0].health_status, model::HealthStatus::Draining);
    assert_eq!(l0.endpoints[0].hostname, "pod-1");
    assert_eq!(m.localities[1].priority, 1);
    assert_eq!(m.localities[1].load_balancing_weight, None);
}

#[test]
fn load_assignment_unsupported_and_invalid() {
    let mut a = cla("svc", vec![lb_endpoint("10.0.0.1", 80)]);
    a.policy =
        Some(e::cluster_load_assignment::Policy { drop_overloads: vec![Default::default()], ..Default::default() });
    let err = cluster_load_assignment(&a).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Unsupported, "policy.drop_overloads"));

    // EDS endpoints must be IPs.
    let err = cluster_load_assignment(&cla("svc", vec![lb_endpoint("host.local", 80)])).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);

    // Port out of range never panics.
    let err = cluster_load_assignment(&cla("svc", vec![lb_endpoint("10.0.0.1", 70_000)])).unwrap_err();
    assert!(err.path.ends_with("socket_address.port_value"), "{err}");

    // Pipe and UDP addresses.
    let mut ep = lb_endpoint("10.0.0.1", 80);
    if let Some(e::lb_endpoint::HostIdentifier::Endpoint(inner)) = &mut ep.host_identifier {
        inner.address = Some(core::Address {
            address: Some(core::address::Address::Pipe(core::Pipe { path: "/tmp/s".into(), mode: 0 })),
        });
    }
    // Pipe endpoints are accepted (the xDS and access-log clients dial unix sockets).
    let la = cluster_load_assignment(&cla("svc", vec![ep])).unwrap();
    assert_eq!(la.localities[0].endpoints[0].address, pinion_xds::model::EndpointAddress::Pipe("/tmp/s".into()));

    let mut ep = lb_endpoint("10.0.0.1", 80);
    if let Some(e::lb_endpoint::HostIdentifier::Endpoint(inner)) = &mut ep.host_identifier {
        if let Some(core::address::Address::SocketAddress(s)) = inner.address.as_mut().and_then(|a| a.address.as_mut())
        {
            s.protocol = core::socket_address::Protocol::Udp as i32;
        }
    }
    let err = cluster_load_assignment(&cla("svc", vec![ep])).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.path.ends_with("socket_address.protocol"), "{err}");
}

#[test]
fn eds_cluster_translates_with_service_name() {
    let mut cl = with_type(c::Cluster { name: "svc".into(), ..Default::default() }, c::cluster::DiscoveryType::Eds);
    cl.eds_cluster_config = Some(c::cluster::EdsClusterConfig { eds_config: None, service_name: "svc-eds".into() });
    let m = cluster(&cl).unwrap();
    assert_eq!(m.discovery, model::DiscoveryType::Eds);
    assert_eq!(m.eds_service_name, "svc-eds");
}

#[test]
fn unknown_enum_values_are_errors_not_panics() {
    let mut cl = static_cluster("svc", vec![lb_endpoint("127.0.0.1", 80)]);
    cl.lb_policy = 999;
    let err = cluster(&cl).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (ErrorKind::Invalid, "lb_policy"));
    assert!(err.reason.contains("999"), "{err}");

    let mut cl = static_cluster("svc", vec![lb_endpoint("127.0.0.1", 80)]);
    cl.cluster_discovery_type = Some(c::cluster::ClusterDiscoveryType::Type(-1));
    assert_eq!(cluster(&cl).unwrap_err().path, "type");

    let mut ep = lb_endpoint("127.0.0.1", 80);
    ep.health_status = 77;
    let err = cluster_load_assignment(&cla("svc", vec![ep])).unwrap_err();
    assert_eq!(err.path, "endpoints[0].lb_endpoints[0].health_status");

    let mut cl = static_cluster("svc", vec![]);
    cl.connect_timeout = Some(pbuf::Duration { seconds: -5, nanos: 0 });
    assert_eq!(cluster(&cl).unwrap_err().path, "connect_timeout");
}

#[test]
fn outlier_detection_defaults_are_envoys() {
    let m = cluster(&static_cluster("svc", vec![])).unwrap();
    assert_eq!(m.outlier_detection, None, "no detector unless configured");
    let mut cl = static_cluster("svc", vec![]);
    cl.outlier_detection = Some(c::OutlierDetection::default());
    let od = cluster(&cl).unwrap().outlier_detection.expect("a detector");
    assert_eq!(od, model::OutlierDetection::default());
    // The defaults spelled out (Envoy's DetectorConfig and the proto docs).
    assert_eq!((od.consecutive_5xx, od.consecutive_gateway_failure, od.consecutive_local_origin_failure), (5, 5, 5));
    assert_eq!((od.interval, od.base_ejection_time), (Duration::from_secs(10), Duration::from_secs(30)));
    assert_eq!((od.max_ejection_time, od.max_ejection_time_jitter), (Duration::from_secs(300), Duration::ZERO));
    assert_eq!(od.max_ejection_percent, 10);
    assert_eq!(
        (
            od.enforcing_consecutive_5xx,
            od.enforcing_consecutive_gateway_failure,
            od.enforcing_consecutive_local_origin_failure,
            od.enforcing_success_rate,
            od.enforcing_local_origin_success_rate,
            od.enforcing_failure_percentage,
            od.enforcing_failure_percentage_local_origin,
        ),
        (100, 0, 100, 100, 100, 0, 0)
    );
    assert_eq!(
        (od.success_rate_minimum_hosts, od.success_rate_request_volume, od.success_rate_stdev_factor),
        (5, 100, 1900)
    );
    assert_eq!(
        (od.failure_percentage_threshold, od.failure_percentage_minimum_hosts, od.failure_percentage_request_volume),
        (85, 5, 50)
    );
    assert!(od.successful_active_health_check_uneject_host);
    assert!(!od.split_external_local_origin_errors && !od.always_eject_one_host);
}

#[test]
fn outlier_detection_settings_and_checks() {
    let secs = |s: i64| Some(pbuf::Duration { seconds: s, nanos: 0 });
    let u = |v: u32| Some(pbuf::UInt32Value { value: v });
    let mut cl = static_cluster("svc", vec![]);
    cl.outlier_detection = Some(c::OutlierDetection {
        consecutive_5xx: u(3),
        interval: Some(pbuf::Duration { seconds: 0, nanos: 200_000_000 }),
        base_ejection_time: secs(400),
        max_ejection_percent: u(100),
        enforcing_consecutive_gateway_failure: u(100),
        split_external_local_origin_errors: true,
        failure_percentage_threshold: u(60),
        max_ejection_time_jitter: secs(2),
        successful_active_health_check_uneject_host: Some(pbuf::BoolValue { value: false }),
        always_eject_one_host: Some(pbuf::BoolValue { value: true }),
        ..Default::default()
    });
    let od = cluster(&cl).unwrap().outlier_detection.unwrap();
    assert_eq!((od.consecutive_5xx, od.interval), (3, Duration::from_millis(200)));
    // Unset max_ejection_time: the larger of 300s and the base time.
    assert_eq!((od.base_ejection_time, od.max_ejection_time), (Duration::from_secs(400), Duration::from_secs(400)));
    assert_eq!((od.max_ejection_percent, od.enforcing_consecutive_gateway_failure), (100, 100));
    assert_eq!((od.failure_percentage_threshold, od.max_ejection_time_jitter), (60, Duration::from_secs(2)));
    assert!(od.split_external_local_origin_errors && od.always_eject_one_host);
    assert!(!od.successful_active_health_check_uneject_host);

    // (change, error path, kind)
    type Case = (fn(&mut c::OutlierDetection), &'static str, ErrorKind);
    let bad: Vec<Case> = vec![
        (
            |o| {
                o.base_ejection_time = Some(pbuf::Duration { seconds: 10, nanos: 0 });
                o.max_ejection_time = Some(pbuf::Duration { seconds: 5, nanos: 0 });
            },
            "outlier_detection.max_ejection_time",
            ErrorKind::Invalid,
        ),
        (
            |o| o.monitors = vec![core::TypedExtensionConfig { name: "m".into(), typed_config: None }],
            "outlier_detection.monitors",
            ErrorKind::Unsupported,
        ),
        (
            |o| o.detect_degraded_hosts = Some(pbuf::BoolValue { value: true }),
            "outlier_detection.detect_degraded_hosts",
            ErrorKind::Unsupported,
        ),
    ];
    for (change, path, kind) in bad {
        let mut cl = static_cluster("svc", vec![]);
        let mut od = c::OutlierDetection::default();
        change(&mut od);
        cl.outlier_detection = Some(od);
        let err = cluster(&cl).unwrap_err();
        assert_eq!((err.kind, err.path.as_str()), (kind, path), "{err}");
    }
    // detect_degraded_hosts: false is the default, accepted.
    let mut cl = static_cluster("svc", vec![]);
    cl.outlier_detection = Some(c::OutlierDetection {
        detect_degraded_hosts: Some(pbuf::BoolValue { value: false }),
        ..Default::default()
    });
    assert!(cluster(&cl).is_ok());
}

#[test]
fn http_protocol_options_outlier_detection_stays_refused() {
    // The upstream HTTP protocol options' own `outlier_detection` (error matchers) is not the
    // cluster's detector.
    let mut cl = static_cluster("svc", vec![]);
    let opts = up::HttpProtocolOptions {
        outlier_detection: Some(up::http_protocol_options::OutlierDetection::default()),
        ..Default::default()
    };
    cl.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(opts));
    let err = cluster(&cl).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.path.ends_with("outlier_detection"), "{err}");
}
