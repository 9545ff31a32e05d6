//! The xDS client against the embedded control plane: convergence over SotW and Delta, ADS
//! and per-type streams; ACK/NACK bookkeeping; add/modify/remove; RDS/EDS subscription
//! tracking; reconnects; initial fetch timeout.

mod xds_client_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use pinion_xds::client::{Mode, ServerAddr};
use pinion_xds::control_plane::Snapshot;
use pinion_xds::sink::ResourceType;
use xds_client_support::*;

#[tokio::test]
async fn converges_in_every_mode() {
    for (mode, aggregated) in ALL_MODES {
        let cp = start_cp();
        cp.cp.set_snapshot("n1", basic_snapshot("v1"));
        let sink = TestSink::new();
        let client = start_client(config(cp.addr, mode, aggregated), sink.clone());
        wait_basic(&sink).await;
        // Every type gets ACKed.
        for t in [LDS, RDS, CDS, EDS] {
            assert!(
                cp.cp.wait_for(|rs| rs.iter().any(|r| r.type_url == t && r.is_ack()), WAIT).await,
                "{mode:?}/{aggregated}: no ACK for {t}"
            );
            assert!(cp.cp.nacks(t).is_empty(), "{mode:?}: unexpected NACK {:?}", cp.cp.nacks(t));
        }
        if mode == Mode::Sotw {
            for t in [LDS, RDS, CDS, EDS] {
                assert_eq!(cp.cp.last_ack_version("n1", t).as_deref(), Some("v1"), "{t}");
            }
        }
        let expected_streams = if aggregated { 1 } else { 4 };
        assert_eq!(cp.cp.connected_streams(), expected_streams, "{mode:?}/{aggregated}");
        assert_eq!(client.stats.connected_state.load(Ordering::Relaxed), 1);
        assert_eq!(client.stats.lds.update_success.load(Ordering::Relaxed), 1);
        assert_eq!(client.stats.lds.update_rejected.load(Ordering::Relaxed), 0);
        assert_ne!(client.stats.lds.version.load(Ordering::Relaxed), 0);
        // Node identity on the first request of each stream.
        let reqs = cp.cp.requests();
        assert!(reqs.iter().all(|r| r.node_id == "n1"));
        assert!(reqs.first().is_some_and(|r| r.has_node));
        drop(client);
    }
}

#[tokio::test]
async fn sotw_ack_carries_version_and_nonce() {
    let cp = start_cp();
    cp.cp.set_snapshot("n1", basic_snapshot("v1"));
    let sink = TestSink::new();
    let _client = start_client(config(cp.addr, Mode::Sotw, true), sink.clone());
    wait_basic(&sink).await;
    let reqs = cp.cp.requests();
    let first_lds = reqs.iter().find(|r| r.type_url == LDS).unwrap();
    assert_eq!(first_lds.version_info, "");
    assert_eq!(first_lds.response_nonce, "");
    assert!(first_lds.resource_names.is_empty(), "LDS is wildcard");
    let first_cds_pos = reqs.iter().position(|r| r.type_url == CDS).unwrap();
    let first_lds_pos = reqs.iter().position(|r| r.type_url == LDS).unwrap();
    assert!(first_cds_pos < first_lds_pos, "CDS is requested before LDS, as Envoy does");
    let ack1 = cp.cp.acks(LDS).last().cloned().unwrap();
    assert_eq!(ack1.version_info, "v1");

    cp.cp.set_snapshot("n1", basic_snapshot("v2").with_route(route("r1", "c2")).with_cluster(eds_cluster("c2", "c2")));
    assert!(cp.cp.wait_for(|_| cp.cp.last_ack_version("n1", LDS).as_deref() == Some("v2"), WAIT).await);
    let ack2 = cp.cp.acks(LDS).last().cloned().unwrap();
    assert!(ack2.response_nonce.parse::<u64>().unwrap() > ack1.response_nonce.parse::<u64>().unwrap());
    sink.wait("route r1 -> c2", |s| s.route_cluster("r1").as_deref() == Some("c2")).await;
    // An unchanged listener re-sent in v2 is not re-applied.
    let lds_updates: Vec<usize> = sink
        .updates
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.type_ == ResourceType::Listener)
        .map(|u| u.updated.len())
        .collect();
    assert_eq!(lds_updates, vec![1, 0], "identical resources are not re-applied");
}

#[tokio::test]
async fn nack_names_resource_and_reason_and_keeps_version() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let cp = start_cp();
        cp.cp.set_snapshot("n1", basic_snapshot("v1"));
        let sink = TestSink::new();
        let client = start_client(config(cp.addr, mode, true), sink.clone());
        wait_basic(&sink).await;

        // v2: one bad listener (not an IP), one good new listener, and a cluster the sink refuses.
        let mut bad = listener("bad", 10009, "r1");
        if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
            bad.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.address = "not-an-ip".into();
        }
        sink.reject("c3", "cluster c3 cannot be built");
        cp.cp.set_snapshot(
            "n1",
            basic_snapshot("v2")
                .with_listener(bad)
                .with_listener(listener("l2", 10002, "r1"))
                .with_cluster(eds_cluster("c3", "c3")),
        );
        assert!(cp.cp.wait_for(|rs| rs.iter().any(|r| r.type_url == LDS && r.is_nack()), WAIT).await);
        let nack = cp.cp.nacks(LDS).pop().unwrap();
        let (code, msg) = nack.error_detail.clone().unwrap();
        assert_eq!(code, 13, "Envoy NACKs with google.rpc.Code.INTERNAL");
        assert!(msg.starts_with("Error adding/updating listener(s) bad: "), "{msg}");
        assert!(msg.contains("address") && msg.contains("not-an-ip"), "{msg}");
        if mode == Mode::Sotw {
            assert_eq!(nack.version_info, "v1", "NACK carries the previous good version");
        }
        // Partial acceptance: the good new listener is in.
        sink.wait("l2 applied", |s| s.names(ResourceType::Listener).contains("l2")).await;
        assert!(!sink.names(ResourceType::Listener).contains("bad"));

        assert!(cp.cp.wait_for(|rs| rs.iter().any(|r| r.type_url == CDS && r.is_nack()), WAIT).await);
        let (_, msg) = cp.cp.nacks(CDS).pop().unwrap().error_detail.unwrap();
        assert_eq!(msg, "Error adding/updating cluster(s) c3: cluster c3 cannot be built");
        assert_eq!(client.stats.lds.update_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(client.stats.cds.update_rejected.load(Ordering::Relaxed), 1);
        if mode == Mode::Sotw {
            assert_eq!(cp.cp.last_ack_version("n1", LDS).as_deref(), Some("v1"));
        }

        // v3 fixes everything: ACKed.
        cp.cp.set_snapshot("n1", basic_snapshot("v3").with_listener(listener("l2", 10002, "r1")));
        if mode == Mode::Sotw {
            assert!(cp.cp.wait_for(|_| cp.cp.last_ack_version("n1", LDS).as_deref() == Some("v3"), WAIT).await);
            assert!(cp.cp.wait_for(|_| cp.cp.last_ack_version("n1", CDS).as_deref() == Some("v3"), WAIT).await);
        } else {
            let n = cp.cp.acks(LDS).len();
            assert!(cp.cp.wait_for(|_| cp.cp.acks(LDS).len() > n, WAIT).await);
        }
        drop(client);
    }
}

#[tokio::test]
async fn add_modify_remove_each_type() {
    for (mode, aggregated) in ALL_MODES {
        let cp = start_cp();
        cp.cp.set_snapshot("n1", basic_snapshot("v1"));
        let sink = TestSink::new();
        let _client = start_client(config(cp.addr, mode, aggregated), sink.clone());
        wait_basic(&sink).await;

        // Add one of each.
        let v2 = basic_snapshot("v2")
            .with_listener(listener("l2", 10002, "r2"))
            .with_route(route("r2", "c2"))
            .with_cluster(eds_cluster("c2", "c2"))
            .with_endpoints(endpoints("c2", &[20003]));
        cp.cp.set_snapshot("n1", v2);
        sink.wait("v2 added", |s| {
            s.names(ResourceType::Listener).len() == 2
                && s.names(ResourceType::RouteConfiguration).contains("r2")
                && s.endpoint_count("c2") == Some(1)
        })
        .await;

        // Modify each.
        let v3 = Snapshot::new("v3")
            .with_listener(listener("l1", 10001, "r1"))
            .with_listener(listener("l2", 10012, "r2"))
            .with_route(route("r1", "c1"))
            .with_route(route("r2", "c1"))
            .with_cluster(eds_cluster("c1", "c1"))
            .with_cluster(eds_cluster("c2", "c2"))
            .with_endpoints(endpoints("c1", &[20001, 20002]))
            .with_endpoints(endpoints("c2", &[20003, 20004, 20005]));
        cp.cp.set_snapshot("n1", v3);
        sink.wait("v3 modified", |s| {
            s.route_cluster("r2").as_deref() == Some("c1") && s.endpoint_count("c2") == Some(3)
        })
        .await;
        let l2 = sink.get(ResourceType::Listener, "l2").unwrap();
        let pinion_xds::sink::Resource::Listener(l) = l2.1 else { panic!() };
        assert_eq!(l.address.port(), 10012);

        // Remove l2, r2, c2 and its endpoints.
        cp.cp.set_snapshot("n1", basic_snapshot("v4"));
        sink.wait("v4 removed", |s| {
            s.names(ResourceType::Listener).len() == 1 && s.names(ResourceType::Cluster).len() == 1
        })
        .await;
        if mode == Mode::Delta {
            // Delta removes RDS/EDS resources explicitly too.
            sink.wait("r2/c2 endpoints removed", |s| {
                !s.names(ResourceType::RouteConfiguration).contains("r2")
                    && !s.names(ResourceType::ClusterLoadAssignment).contains("c2")
            })
            .await;
        }
        for t in [LDS, RDS, CDS, EDS] {
            assert!(cp.cp.nacks(t).is_empty(), "{mode:?}/{aggregated}: {:?}", cp.cp.nacks(t));
        }
    }
}

#[tokio::test]
async fn rds_and_eds_names_follow_the_sink() {
    for (mode, aggregated) in ALL_MODES {
        let cp = start_cp();
        let both_routes = |v: &str, rname: &str| {
            Snapshot::new(v)
                .with_listener(listener("l1", 10001, rname))
                .with_route(route("ra", "c1"))
                .with_route(route("rb", "c1"))
                .with_cluster(eds_cluster("c1", "svc1"))
                .with_endpoints(endpoints("svc1", &[1]))
                .with_endpoints(endpoints("svc2", &[2]))
        };
        cp.cp.set_snapshot("n1", both_routes("v1", "ra"));
        let sink = TestSink::new();
        let _client = start_client(config(cp.addr, mode, aggregated), sink.clone());
        sink.wait("ra and svc1", |s| {
            s.names(ResourceType::RouteConfiguration).contains("ra") && s.endpoint_count("svc1") == Some(1)
        })
        .await;
        assert!(!sink.names(ResourceType::RouteConfiguration).contains("rb"), "only the referenced route");
        assert!(!sink.names(ResourceType::ClusterLoadAssignment).contains("svc2"));
        let rds_names = |cp: &Cp| -> Vec<Vec<String>> {
            cp.cp.requests().iter().filter(|r| r.type_url == RDS).map(|r| r.resource_names.clone()).collect()
        };
        assert!(
            rds_names(&cp).iter().all(|n| mode == Mode::Delta && n.is_empty() || n == &["ra"]),
            "{:?}",
            rds_names(&cp)
        );

        // Listener now points at rb: subscription switches.
        cp.cp.set_snapshot("n1", both_routes("v2", "rb"));
        sink.wait("rb", |s| s.names(ResourceType::RouteConfiguration).contains("rb")).await;
        let reqs = cp.cp.requests();
        if mode == Mode::Sotw {
            assert!(reqs.iter().any(|r| r.type_url == RDS && r.resource_names == ["rb"]), "{reqs:?}");
        } else {
            assert!(
                reqs.iter().any(|r| r.type_url == RDS && r.resource_names == ["rb"] && r.unsubscribe == ["ra"]),
                "{reqs:?}"
            );
        }

        // Cluster removed: EDS unsubscribed entirely.
        cp.cp.set_snapshot(
            "n1",
            Snapshot::new("v3").with_listener(listener("l1", 10001, "rb")).with_route(route("rb", "c1")),
        );
        assert!(
            cp.cp
                .wait_for(
                    |rs| rs.iter().any(|r| r.type_url == EDS
                        && if mode == Mode::Sotw {
                            r.resource_names.is_empty() && !r.response_nonce.is_empty()
                        } else {
                            r.unsubscribe == ["svc1"]
                        }),
                    WAIT
                )
                .await,
            "{mode:?}/{aggregated}: no EDS unsubscribe: {:?}",
            cp.cp.requests()
        );
    }
}

#[tokio::test]
async fn reconnects_and_resumes_with_versions() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let cp = start_cp();
        cp.cp.set_snapshot("n1", basic_snapshot("v1"));
        let sink = TestSink::new();
        let client = start_client(config(cp.addr, mode, true), sink.clone());
        wait_basic(&sink).await;
        assert!(cp.cp.wait_for(|rs| rs.iter().filter(|r| r.is_ack()).count() >= 4, WAIT).await);
        let updates_before = sink.update_count();

        cp.cp.disconnect_all();
        assert!(cp.cp.wait_for(|rs| rs.iter().any(|r| r.stream_id >= 2), WAIT).await, "client reconnected");
        assert!(cp.cp.wait_for_streams(1, WAIT).await);
        // Give the new stream a moment: nothing changed, so nothing is re-sent or re-applied.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let resumed: Vec<_> = cp.cp.requests().into_iter().filter(|r| r.stream_id == 2).collect();
        let lds = resumed.iter().find(|r| r.type_url == LDS).expect("LDS resubscribed");
        let eds = resumed.iter().find(|r| r.type_url == EDS).expect("EDS resubscribed");
        if mode == Mode::Sotw {
            assert_eq!(lds.version_info, "v1");
            assert_eq!(lds.response_nonce, "", "nonces are per stream");
            assert_eq!(eds.resource_names, ["c1"]);
        } else {
            assert!(lds.initial_resource_versions.contains_key("l1"), "{lds:?}");
            assert_eq!(eds.resource_names, ["c1"]);
            assert!(eds.initial_resource_versions.contains_key("c1"));
        }
        assert_eq!(sink.update_count(), updates_before, "nothing re-applied after resuming");
        assert!(client.stats.lds.update_failure.load(Ordering::Relaxed) >= 1);

        // The server goes away entirely and comes back on the same port.
        let addr = cp.addr;
        let Cp { cp: plane, handle, .. } = cp;
        if let Some(h) = handle {
            h.shutdown().await;
        }
        sink.wait("disconnected", |s| s.connected.lock().unwrap().last() == Some(&false)).await;
        assert_eq!(client.stats.connected_state.load(Ordering::Relaxed), 0);
        // Last good config is still there.
        assert!(sink.names(ResourceType::Listener).contains("l1"));
        plane.set_snapshot("n1", basic_snapshot("v2").with_listener(listener("l9", 10009, "r1")));
        let (_, _h2) = plane.serve(addr).expect("rebind the same port");
        sink.wait("l9 after restart", |s| s.names(ResourceType::Listener).contains("l9")).await;
        assert_eq!(client.stats.connected_state.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn initial_fetch_timeout_fires_for_missing_endpoints() {
    let cp = start_cp();
    cp.cp.set_snapshot("n1", Snapshot::new("v1").with_cluster(eds_cluster("c9", "c9")));
    let sink = TestSink::new();
    let mut cfg = config(cp.addr, Mode::Delta, true);
    cfg.initial_fetch_timeout = Some(Duration::from_millis(300));
    let client = start_client(cfg, sink.clone());
    sink.wait("EDS init fetch timeout", |s| s.timeouts.lock().unwrap().contains(&ResourceType::ClusterLoadAssignment))
        .await;
    assert_eq!(client.stats.eds.init_fetch_timeout.load(Ordering::Relaxed), 1);
    // LDS got an (empty) response in time... or not at all under Delta: either way, no panic.
    assert_eq!(client.stats.cds.init_fetch_timeout.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unix_socket_and_node_on_first_message_only() {
    let dir = std::env::temp_dir().join(format!("pinion-xds-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("cp.sock");
    let _ = std::fs::remove_file(&path);
    let cp = pinion_xds::control_plane::ControlPlane::new();
    let _h = cp.serve_unix(&path).expect("serve unix");
    cp.set_snapshot("*", basic_snapshot("v1"));
    let sink = TestSink::new();
    let mut cfg = config("127.0.0.1:1".parse().unwrap(), Mode::Sotw, true);
    cfg.server = ServerAddr::Unix(path.clone());
    cfg.set_node_on_first_message_only = true;
    let _client = start_client(cfg, sink.clone());
    wait_basic(&sink).await;
    let reqs = cp.requests();
    assert!(reqs[0].has_node);
    assert!(reqs[1..].iter().all(|r| !r.has_node), "node only on the first message");
    let _ = std::fs::remove_file(&path);
}

fn bootstrap_for(addr: std::net::SocketAddr, api_type: &str, ads: bool) -> pinion_xds::model::Bootstrap {
    let source = if ads {
        "{ads: {}, resource_api_version: V3}".to_string()
    } else {
        format!(
            "{{api_config_source: {{api_type: {api_type}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}, initial_fetch_timeout: 3s}}"
        )
    };
    let yaml = format!(
        r#"
node: {{id: n1, cluster: test}}
dynamic_resources:
  ads_config: {{api_type: {api_type}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}
  lds_config: {source}
  cds_config: {source}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#,
        port = addr.port()
    );
    let proto = pinion_xds::decode::bootstrap_from_str(
        &yaml,
        pinion_xds::decode::Format::Yaml,
        &pinion_xds::decode::DecodeOptions::default(),
    )
    .expect("bootstrap decodes");
    pinion_xds::translate::bootstrap(&proto, &Default::default()).expect("bootstrap translates")
}

#[tokio::test]
async fn client_config_from_a_bootstrap() {
    for (api_type, ads) in [("GRPC", true), ("DELTA_GRPC", true), ("GRPC", false), ("DELTA_GRPC", false)] {
        let cp = start_cp();
        cp.cp.set_snapshot("n1", basic_snapshot("v1"));
        let b = bootstrap_for(cp.addr, api_type, ads);
        let cfg = pinion_xds::client::ClientConfig::from_bootstrap(&b).unwrap().expect("dynamic resources");
        assert_eq!(cfg.aggregated, ads);
        assert_eq!(cfg.mode, if api_type == "GRPC" { Mode::Sotw } else { Mode::Delta });
        assert_eq!(cfg.server, ServerAddr::Tcp(cp.addr));
        // LDS brings RDS and SRDS (subscribed only once used), plus VHDS with Delta; CDS brings
        // EDS; SDS is there for the TLS contexts that name secrets (none here: never requested).
        assert_eq!(cfg.types.len(), if api_type == "GRPC" { 6 } else { 7 });
        assert!(cfg.types.contains(&pinion_xds::sink::ResourceType::Secret));
        if !ads {
            assert_eq!(cfg.initial_fetch_timeout, Some(Duration::from_secs(3)));
        }
        let sink = TestSink::new();
        let _client = start_client(cfg, sink.clone());
        wait_basic(&sink).await;
    }
}

#[test]
fn eds_config_must_be_a_usable_source() {
    let mut c = eds_cluster("e", "e");
    assert!(pinion_xds::translate::cluster(&c).is_ok());
    c.eds_cluster_config.as_mut().unwrap().eds_config = Some(envoy_types::pb::envoy::config::core::v3::ConfigSource {
        config_source_specifier: Some(
            envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::PathConfigSource(
                Default::default(),
            ),
        ),
        ..Default::default()
    });
    let e = pinion_xds::translate::cluster(&c).unwrap_err().to_string();
    assert_eq!(
        e,
        "eds_cluster_config.eds_config.path_config_source: unsupported: path_config_source is not supported by pinion"
    );
}
