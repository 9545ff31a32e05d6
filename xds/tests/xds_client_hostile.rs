//! A hostile or broken control plane: garbage payloads, wrong and unknown type URLs, duplicate
//! names, negative durations, huge responses, push floods, streams that close after every
//! response. The client must never panic, never apply a bad resource, and NACK as expected.

mod xds_client_support;

use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use pinion_xds::client::Mode;
use pinion_xds::control_plane::{Misbehave, Snapshot};
use pinion_xds::sink::ResourceType;
use prost::Message;
use xds_client_support::*;

/// Starts a plane with the basic snapshot and a converged client.
async fn converged(mode: Mode) -> (Cp, std::sync::Arc<TestSink>, Client) {
    let cp = start_cp();
    cp.cp.set_snapshot("n1", basic_snapshot("v1"));
    let sink = TestSink::new();
    let client = start_client(config(cp.addr, mode, true), sink.clone());
    wait_basic(&sink).await;
    (cp, sink, client)
}

async fn last_nack(cp: &Cp, type_url: &str) -> (String, String) {
    assert!(
        cp.cp.wait_for(|rs| rs.iter().any(|r| r.type_url == type_url && r.is_nack()), WAIT).await,
        "no NACK for {type_url}: {:?}",
        cp.cp.requests()
    );
    let r = cp.cp.nacks(type_url).pop().unwrap();
    (r.version_info, r.error_detail.unwrap().1)
}

#[tokio::test]
async fn garbage_payload_rejects_the_whole_response() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let (cp, sink, _client) = converged(mode).await;
        cp.cp.set_snapshot(
            "n1",
            basic_snapshot("v2").with_listener(listener("l2", 10002, "r1")).with_raw(LDS, "junk", vec![0xff; 64]),
        );
        let (version, msg) = last_nack(&cp, LDS).await;
        assert!(msg.contains("cannot decode envoy.config.listener.v3.Listener"), "{msg}");
        if mode == Mode::Sotw {
            assert_eq!(version, "v1");
        }
        assert!(!sink.names(ResourceType::Listener).contains("l2"), "nothing from a broken response is applied");
    }
}

#[tokio::test]
async fn wrong_type_url_inside_a_response_is_rejected() {
    let (cp, sink, _client) = converged(Mode::Sotw).await;
    let cluster_bytes = eds_cluster("sneaky", "sneaky").encode_to_vec();
    cp.cp.set_snapshot(
        "n1",
        basic_snapshot("v2").with_any(LDS, "sneaky", Any { type_url: CDS.into(), value: cluster_bytes }),
    );
    let (version, msg) = last_nack(&cp, LDS).await;
    assert_eq!(version, "v1");
    assert!(msg.contains(&format!("type URL {CDS} does not match")), "{msg}");
    assert!(!sink.names(ResourceType::Cluster).contains("sneaky"));
}

#[tokio::test]
async fn unknown_and_v2_type_urls_are_ignored_like_envoy() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let (cp, _sink, client) = converged(mode).await;
        let v2 = "type.googleapis.com/envoy.api.v2.Listener";
        let unknown = "type.googleapis.com/example.Nonsense";
        for t in [v2, unknown] {
            match mode {
                Mode::Sotw => cp.cp.inject(DiscoveryResponse {
                    version_info: "x1".into(),
                    type_url: t.into(),
                    resources: vec![Any { type_url: t.into(), value: vec![1, 2, 3] }],
                    ..Default::default()
                }),
                Mode::Delta => cp.cp.inject_delta(DeltaDiscoveryResponse {
                    system_version_info: "x1".into(),
                    type_url: t.into(),
                    ..Default::default()
                }),
            }
        }
        // Envoy ignores pushes of types it does not watch: no ACK, no NACK. The stream stays
        // healthy: a new snapshot converges, and nothing was ever sent back for those types.
        cp.cp.set_snapshot("n1", basic_snapshot("v2").with_listener(listener("l2", 10002, "r1")));
        _sink.wait("l2", |s| s.names(ResourceType::Listener).contains("l2")).await;
        let answered = cp.cp.requests().iter().any(|r| r.type_url == v2 || r.type_url == unknown);
        assert!(!answered, "unwatched types must get neither ACK nor NACK");
        assert_eq!(client.stats.connected_state.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn duplicate_names_are_rejected() {
    let (cp, sink, _client) = converged(Mode::Sotw).await;
    let dup = listener("l1", 10005, "r1");
    cp.cp.set_snapshot(
        "n1",
        basic_snapshot("v2").with_extra(LDS, Any { type_url: LDS.into(), value: dup.encode_to_vec() }),
    );
    let (version, msg) = last_nack(&cp, LDS).await;
    assert_eq!(version, "v1");
    assert!(msg.contains("duplicate listener l1 found"), "{msg}");
    let (_, l1) = sink.get(ResourceType::Listener, "l1").unwrap();
    let pinion_xds::sink::Resource::Listener(l) = l1 else { panic!() };
    assert_eq!(l.address.port(), 10001, "the duplicate is not applied");
}

#[tokio::test]
async fn negative_durations_are_rejected_with_the_field() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let (cp, sink, _client) = converged(mode).await;
        let mut c = eds_cluster("neg", "neg");
        c.connect_timeout = Some(PbDuration { seconds: -5, nanos: 0 });
        cp.cp.set_snapshot("n1", basic_snapshot("v2").with_cluster(c));
        let (_, msg) = last_nack(&cp, CDS).await;
        assert!(msg.starts_with("Error adding/updating cluster(s) neg: "), "{msg}");
        assert!(msg.contains("connect_timeout"), "{msg}");
        assert!(!sink.names(ResourceType::Cluster).contains("neg"));
        assert!(sink.names(ResourceType::Cluster).contains("c1"));
    }
}

#[tokio::test]
async fn fifty_megabyte_response_is_survived() {
    let (cp, sink, client) = converged(Mode::Sotw).await;
    // ~50 MB of garbage in one resource: decoded by tonic (under the 64 MiB limit), rejected.
    cp.cp.set_snapshot("n1", basic_snapshot("v2").with_raw(LDS, "huge", vec![0xff; 50 * 1024 * 1024]));
    let (_, msg) = last_nack(&cp, LDS).await;
    assert!(msg.contains("cannot decode"), "{msg}");
    // Over the limit: the stream fails, the client reconnects and keeps the last good config.
    cp.cp.set_snapshot("n1", basic_snapshot("v3").with_raw(LDS, "huger", vec![0xff; 70 * 1024 * 1024]));
    assert!(
        cp.cp.wait_for(|rs| rs.iter().any(|r| r.stream_id >= 2), WAIT).await,
        "the client reconnected after the oversized message"
    );
    assert!(client.stats.lds.update_failure.load(Ordering::Relaxed) >= 1);
    assert!(sink.names(ResourceType::Listener).contains("l1"));
    cp.cp.set_snapshot("n1", basic_snapshot("v4").with_listener(listener("l4", 10004, "r1")));
    sink.wait("l4", |s| s.names(ResourceType::Listener).contains("l4")).await;
}

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn push_flood_converges_with_bounded_memory() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let (cp, sink, client) = converged(mode).await;
        let before = rss_kib();
        for i in 0..200u16 {
            let s = Snapshot::new(format!("f{i}"))
                .with_listener(listener("l1", 10001, "r1"))
                .with_route(route("r1", &format!("c{}", i % 7)))
                .with_cluster(eds_cluster("c1", "c1"))
                .with_endpoints(endpoints("c1", &[20000 + i]));
            cp.cp.set_snapshot("n1", s);
        }
        sink.wait("final flood state", |s| s.route_cluster("r1").as_deref() == Some("c3")).await;
        if mode == Mode::Sotw {
            assert!(cp.cp.wait_for(|_| cp.cp.last_ack_version("n1", RDS).as_deref() == Some("f199"), WAIT).await);
        }
        let (_, la) = sink.get(ResourceType::ClusterLoadAssignment, "c1").unwrap();
        let pinion_xds::sink::Resource::ClusterLoadAssignment(la) = la else { panic!() };
        assert_eq!(la.localities[0].endpoints.len(), 1);
        for t in [LDS, RDS, CDS, EDS] {
            assert!(cp.cp.nacks(t).is_empty());
        }
        assert!(client.stats.rds.update_attempt.load(Ordering::Relaxed) <= 201);
        if let (Some(b), Some(a)) = (before, rss_kib()) {
            assert!(a < b + 200 * 1024, "RSS grew from {b} KiB to {a} KiB");
        }
    }
}

#[tokio::test]
async fn stream_closing_after_every_response_still_converges() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let cp = start_cp();
        cp.cp.set_misbehave(Misbehave::CloseStreamAfterResponse);
        cp.cp.set_snapshot("n1", basic_snapshot("v1"));
        let sink = TestSink::new();
        let client = start_client(config(cp.addr, mode, true), sink.clone());
        wait_basic(&sink).await;
        assert!(cp.cp.total_streams() >= 4, "one response per stream");
        assert!(client.stats.lds.update_failure.load(Ordering::Relaxed) >= 1);
    }
}

#[tokio::test]
async fn silent_server_triggers_initial_fetch_timeouts() {
    let cp = start_cp();
    cp.cp.set_misbehave(Misbehave::Silent);
    let sink = TestSink::new();
    let mut cfg = config(cp.addr, Mode::Sotw, true);
    cfg.initial_fetch_timeout = Some(std::time::Duration::from_millis(200));
    let client = start_client(cfg, sink.clone());
    sink.wait("LDS and CDS timeouts", |s| s.timeouts.lock().unwrap().len() == 2).await;
    assert_eq!(client.stats.lds.init_fetch_timeout.load(Ordering::Relaxed), 1);
    assert_eq!(client.stats.cds.init_fetch_timeout.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn unreachable_server_backs_off_without_panicking() {
    // Bind and drop to get a port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sink = TestSink::new();
    let mut cfg = config(addr, Mode::Delta, true);
    cfg.initial_fetch_timeout = Some(std::time::Duration::from_millis(100));
    let client = start_client(cfg, sink.clone());
    sink.wait("timeouts while disconnected", |s| s.timeouts.lock().unwrap().len() == 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(client.stats.cds.update_failure.load(Ordering::Relaxed) >= 2);
    assert_eq!(client.stats.connected_state.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unrequested_rds_resources_are_ignored() {
    let (cp, sink, _client) = converged(Mode::Sotw).await;
    cp.cp.inject(DiscoveryResponse {
        version_info: "x1".into(),
        type_url: RDS.into(),
        resources: vec![
            Any { type_url: RDS.into(), value: route("r1", "c1").encode_to_vec() },
            Any { type_url: RDS.into(), value: route("rx", "c1").encode_to_vec() },
        ],
        ..Default::default()
    });
    assert!(cp.cp.wait_for(|_| cp.cp.last_ack_version("n1", RDS).as_deref() == Some("x1"), WAIT).await);
    assert!(!sink.names(ResourceType::RouteConfiguration).contains("rx"));
    assert!(sink.names(ResourceType::RouteConfiguration).contains("r1"));
}
