//! The runtime key `upstream.healthy_panic_threshold` overrides a cluster's panic threshold
//! when its host set is rebuilt (as Envoy reads it when it recomputes priority loads). Its
//! own test binary: it changes the process-wide runtime.

use std::sync::Arc;

use pinion::runtime::Runtime;
use pinion::stats::Store;
use pinion::upstream::lb::select;
use pinion::upstream::{Host, HostSet};
use pinion_xds::model::{HealthStatus, LayeredRuntime, RuntimeLayerKind, RuntimeLayerSpec};

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

    let cfg = LayeredRuntime { layers: vec![RuntimeLayerSpec { name: "admin".into(), kind: RuntimeLayerKind::Admin }] };
    let rt = Runtime::new(&cfg, &Store::new(1));
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
