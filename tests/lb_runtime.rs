//! Runtime overrides of load-balancer settings: `upstream.healthy_panic_threshold` and an
//! `active_request_bias` runtime key, read when a host set is built / first picked from (as
//! Envoy reads them when it refreshes). Its own test binary: it changes the process-wide
//! runtime (each test uses its own keys).

use std::sync::Arc;

use pinion::runtime::Runtime;
use pinion::stats::Store;
use pinion::upstream::lb::{select, LbContext};
use pinion::upstream::{ClusterStats, Host, HostSet, LoadBalancer};
use pinion_xds::model::{HealthStatus, LayeredRuntime, LbConfig, LbPolicy, RuntimeLayerKind, RuntimeLayerSpec};

/// The one admin-layer runtime of this test binary (the runtime is process-wide).
fn runtime() -> &'static Arc<Runtime> {
    static RT: std::sync::OnceLock<Arc<Runtime>> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let cfg =
            LayeredRuntime { layers: vec![RuntimeLayerSpec { name: "admin".into(), kind: RuntimeLayerKind::Admin }] };
        Runtime::new(&cfg, &Store::new(1))
    })
}

#[test]
fn runtime_overrides_active_request_bias_per_host_set() {
    // Host 1 weight 1 idle, host 2 weight 3 with 5 active requests.
    let (h1, h2) = (
        Arc::new(Host::new(([127, 0, 0, 1], 1).into(), String::new(), 1, None, 0, HealthStatus::Healthy)),
        Arc::new(Host::new(([127, 0, 0, 1], 2).into(), String::new(), 3, None, 0, HealthStatus::Healthy)),
    );
    h2.stats.rq_active.store(5, std::sync::atomic::Ordering::Relaxed);
    let cfg = LbConfig {
        active_request_bias: Some(1.0),
        active_request_bias_key: "test.lr_bias".into(),
        ..LbConfig::default()
    };
    let lb = LoadBalancer::with_config(LbPolicy::LeastRequest, &cfg, 2);
    let stats = ClusterStats::new(&Store::new(1), "c");
    let share_of_1 = |set: &HostSet| {
        let n = 3000;
        let hits =
            (0..n).filter(|_| lb.choose(set, &LbContext::default(), &stats).unwrap().address.port() == 1).count();
        100.0 * hits as f64 / n as f64
    };
    // Bias 1: weights 1 and 3/6 -> host 1 gets 2/3.
    let set = HostSet::new(vec![vec![h1.clone(), h2.clone()]]);
    assert!((share_of_1(&set) - 66.7).abs() < 1.0);
    // Bias 0 from the runtime: weights 1 and 3 -> 1/4, from the next host set on.
    runtime().modify(&[("test.lr_bias".into(), "0".into())]).unwrap();
    assert!((share_of_1(&set) - 66.7).abs() < 1.0, "the current set keeps its bias");
    let set = set.recompute();
    assert!((share_of_1(&set) - 25.0).abs() < 1.0);
    runtime().modify(&[("test.lr_bias".into(), String::new())]).unwrap();
}

#[test]
fn runtime_overrides_the_panic_threshold() {
    let hosts: Vec<Arc<Host>> = [HealthStatus::Healthy, HealthStatus::Unhealthy, HealthStatus::Unhealthy]
        .iter()
        .enumerate()
        .map(|(i, &h)| Arc::new(Host::new(([127, 0, 0, 1], i as u16 + 1).into(), String::new(), 1, None, 0, h)))
        .collect();
    // 1 of 3 healthy: in panic with the default 50%.
    let set = HostSet::new(vec![hosts.clone()]);
    assert_eq!((set.panic_threshold(), select(&set).unwrap().panic), (50, true));

    let rt = runtime();
    rt.modify(&[("upstream.healthy_panic_threshold".into(), "0".into())]).unwrap();
    // The built set keeps its threshold; the next build reads the override.
    assert!(select(&set).unwrap().panic);
    let set = set.recompute();
    assert_eq!((set.panic_threshold(), select(&set).unwrap().panic), (0, false));
    // Above 100 counts as 100.
    rt.modify(&[("upstream.healthy_panic_threshold".into(), "250".into())]).unwrap();
    assert_eq!(set.recompute().panic_threshold(), 100);
    rt.modify(&[("upstream.healthy_panic_threshold".into(), String::new())]).unwrap();
    assert_eq!(set.recompute().panic_threshold(), 50);
}
