//! A load-balancer pick allocates nothing (the hot path), in the default case (one priority,
//! all healthy, equal weights) and in the cases this crate's priority load, locality weights,
//! weighted round robin and least-request EDF add: counted with a global allocator of this
//! test binary alone. Also prints the time per pick (debug build: a relative figure only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pinion::stats::Store;
use pinion::upstream::host_set::HostSetSettings;
use pinion::upstream::lb::LbContext;
use pinion::upstream::{ClusterStats, Host, HostSet, LoadBalancer};
use pinion_xds::model::{HealthStatus, LbConfig, LbPolicy, Locality};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn host(port: u16, weight: u32, zone: &str, health: HealthStatus) -> Arc<Host> {
    let loc = Locality { region: "r".into(), zone: zone.into(), sub_zone: String::new() };
    Arc::new(
        Host::new(([127, 0, 0, 1], port).into(), String::new(), weight, Some(loc), 0, health)
            .with_locality_weight(Some(u32::from(port % 3) + 1)),
    )
}

#[test]
fn picks_do_not_allocate() {
    use HealthStatus::{Healthy as H, Unhealthy as U};
    let hosts = |weights: &[u32], health: &[HealthStatus]| -> Vec<Arc<Host>> {
        weights
            .iter()
            .zip(health)
            .enumerate()
            .map(|(i, (&w, &h))| host(i as u16 + 1, w, ["a", "b", "c"][i % 3], h))
            .collect()
    };
    let default = HostSetSettings::default();
    let locality = HostSetSettings { locality_weighted: true, ..HostSetSettings::default() };
    // (what, policy, set)
    let cases: Vec<(&str, LbPolicy, HostSet)> = vec![
        ("default rr", LbPolicy::RoundRobin, HostSet::new(vec![hosts(&[1; 8], &[H; 8])])),
        ("default lr", LbPolicy::LeastRequest, HostSet::new(vec![hosts(&[1; 8], &[H; 8])])),
        ("default random", LbPolicy::Random, HostSet::new(vec![hosts(&[1; 8], &[H; 8])])),
        (
            "priority split rr",
            LbPolicy::RoundRobin,
            HostSet::with_settings(vec![hosts(&[1; 4], &[H, H, U, U]), hosts(&[1; 2], &[H; 2])], default.clone()),
        ),
        ("weighted rr", LbPolicy::RoundRobin, HostSet::new(vec![hosts(&[1, 2, 3, 4], &[H; 4])])),
        ("weighted lr (edf)", LbPolicy::LeastRequest, HostSet::new(vec![hosts(&[1, 2, 3, 4], &[H; 4])])),
        ("locality rr", LbPolicy::RoundRobin, HostSet::with_settings(vec![hosts(&[1; 6], &[H; 6])], locality.clone())),
        ("panic rr", LbPolicy::RoundRobin, HostSet::new(vec![hosts(&[1; 3], &[H, U, U])])),
    ];
    let stats = ClusterStats::new(&Store::new(1), "c");
    let ctx = LbContext::default();
    // Warm the process up (thread locals, caches) so the first case's time is comparable.
    let warm = HostSet::new(vec![hosts(&[1; 8], &[H; 8])]);
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, 2);
    for _ in 0..100_000 {
        std::hint::black_box(lb.choose(&warm, &ctx, &stats));
    }
    for (what, policy, set) in cases {
        let lb = LoadBalancer::with_config(policy, &LbConfig::default(), 2);
        // Warm up: per-worker EDF schedulers are built on a list's first pick.
        for _ in 0..10 {
            lb.choose(&set, &ctx, &stats).expect("a host");
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        let n = 100_000;
        let t = Instant::now();
        for _ in 0..n {
            let h = lb.choose(&set, &ctx, &stats).expect("a host");
            std::hint::black_box(h);
        }
        let per_pick = t.elapsed() / n;
        assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 0, "{what}: a pick allocated");
        eprintln!("{what}: {per_pick:?} per pick (debug build)");
    }
}
