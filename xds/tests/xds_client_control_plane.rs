//! The embedded control plane's protocol behaviour, driven by a raw tonic client (no Pinion
//! client in the loop): what it answers, what it ignores, what it records.

mod xds_client_support;

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use pinion_xds::control_plane::Snapshot;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use xds_client_support::*;

fn node() -> Option<Node> {
    Some(Node { id: "n1".into(), ..Default::default() })
}

async fn next<T>(s: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, s.message()).await.expect("response in time").expect("stream ok").expect("not closed")
}

async fn nothing<T: std::fmt::Debug>(s: &mut Streaming<T>) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), s.message()).await {
        panic!("unexpected response: {r:?}");
    }
}

async fn sotw(cp: &Cp) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let s = c.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, s)
}

async fn delta(cp: &Cp) -> (mpsc::Sender<DeltaDiscoveryRequest>, Streaming<DeltaDiscoveryResponse>) {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let s = c.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, s)
}

fn req(type_url: &str, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(),
        type_url: type_url.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn sotw_semantics() {
    let cp = start_cp();
    cp.cp.set_snapshot("n1", basic_snapshot("v1").with_endpoints(endpoints("c2", &[1])));
    let (tx, mut s) = sotw(&cp).await;

    // Wildcard CDS: everything; ACK: silence.
    tx.send(req(CDS, "", "", &[])).await.unwrap();
    let r = next(&mut s).await;
    assert_eq!((r.version_info.as_str(), r.type_url.as_str(), r.resources.len()), ("v1", CDS, 1));
    tx.send(req(CDS, "v1", &r.nonce, &[])).await.unwrap();
    nothing(&mut s).await;

    // EDS: only the requested names; a names change gets an answer at the same version.
    tx.send(req(EDS, "", "", &["c1"])).await.unwrap();
    let e1 = next(&mut s).await;
    assert_eq!(e1.resources.len(), 1);
    tx.send(req(EDS, "v1", &e1.nonce, &["c1", "c2"])).await.unwrap();
    let e2 = next(&mut s).await;
    assert_eq!((e2.version_info.as_str(), e2.resources.len()), ("v1", 2));
    assert!(e2.nonce.parse::<u64>().unwrap() > e1.nonce.parse::<u64>().unwrap());
    // A stale nonce is ignored, even with new names.
    tx.send(req(EDS, "v1", &e1.nonce, &["c1"])).await.unwrap();
    nothing(&mut s).await;
    tx.send(req(EDS, "v1", &e2.nonce, &["c1", "c2"])).await.unwrap();
    nothing(&mut s).await;

    // A push reaches every watched type; a NACK is recorded and not answered.
    cp.cp.set_snapshot("n1", basic_snapshot("v2"));
    let mut got = HashMap::new();
    for _ in 0..2 {
        let r = next(&mut s).await;
        got.insert(r.type_url.clone(), r);
    }
    let cds = &got[CDS];
    assert_eq!(cds.version_info, "v2");
    assert_eq!(got[EDS].resources.len(), 1, "c2 is gone from v2");
    let mut nack = req(CDS, "v1", &cds.nonce, &[]);
    nack.error_detail = Some(Status { code: 3, message: "no".into(), details: vec![] });
    tx.send(nack).await.unwrap();
    nothing(&mut s).await;
    assert!(cp.cp.wait_for(|_| cp.cp.nacks(CDS).len() == 1, WAIT).await);
    assert_eq!(cp.cp.acks(CDS).len(), 1);
    assert_eq!(cp.cp.last_ack_version("n1", CDS).as_deref(), Some("v1"));

    // Resuming on a new stream with the current version: no response.
    drop(tx);
    let (tx, mut s) = sotw(&cp).await;
    tx.send(req(CDS, "v2", "", &[])).await.unwrap();
    nothing(&mut s).await;
    assert!(cp.cp.wait_for_streams(1, WAIT).await);
}

#[tokio::test]
async fn delta_semantics() {
    let cp = start_cp();
    cp.cp.set_snapshot("n1", basic_snapshot("v1").with_cluster(eds_cluster("c2", "c2")));
    let (tx, mut s) = delta(&cp).await;

    tx.send(DeltaDiscoveryRequest { node: node(), type_url: CDS.into(), ..Default::default() }).await.unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.system_version_info, "v1");
    let mut names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["c1", "c2"]);
    let versions: HashMap<String, String> = r.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    tx.send(DeltaDiscoveryRequest { type_url: CDS.into(), response_nonce: r.nonce.clone(), ..Default::default() })
        .await
        .unwrap();
    nothing(&mut s).await;

    // Change c1, drop c2: only c1 is sent, c2 is removed.
    let mut c1 = eds_cluster("c1", "c1");
    c1.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: 7, nanos: 0 });
    cp.cp.set_snapshot("n1", Snapshot::new("v2").with_cluster(c1).with_endpoints(endpoints("c1", &[1])));
    let r = next(&mut s).await;
    assert_eq!(r.system_version_info, "v2");
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c1"]);
    assert_ne!(r.resources[0].version, versions["c1"]);
    assert_eq!(r.removed_resources, ["c2"]);

    // Named subscription with a version the client already has: nothing; unsubscribe: silence.
    tx.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_subscribe: vec!["c1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let e = next(&mut s).await;
    assert_eq!(e.resources.len(), 1);
    tx.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_unsubscribe: vec!["c1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    nothing(&mut s).await;

    // New stream resuming with current versions: nothing re-sent.
    drop(tx);
    let (tx, mut s) = delta(&cp).await;
    let snap = cp.cp.snapshot_for("n1").unwrap();
    let v = snap.of_type(CDS).unwrap()["c1"].version();
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: CDS.into(),
        initial_resource_versions: [("c1".to_string(), v)].into(),
        ..Default::default()
    })
    .await
    .unwrap();
    nothing(&mut s).await;
    let last = cp.cp.requests().pop().unwrap();
    assert!(last.delta && last.initial_resource_versions.contains_key("c1"));
}
