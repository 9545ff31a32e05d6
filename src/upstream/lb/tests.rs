//! Load-balancer tests: picks over hand-built host sets, no sockets.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use pinion_xds::model::{HealthStatus, LbPolicy};

use super::*;
use crate::stats::Store;
use crate::upstream::host::HealthFlags;

const POLICIES: [LbPolicy; 3] = [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::Random];

fn host(port: u16, weight: u32, health: HealthStatus) -> Arc<Host> {
    Arc::new(Host::new(([127, 0, 0, 1], port).into(), String::new(), weight, None, 0, health))
}

fn healthy(port: u16) -> Arc<Host> {
    host(port, 1, HealthStatus::Healthy)
}

fn unhealthy(port: u16) -> Arc<Host> {
    host(port, 1, HealthStatus::Unhealthy)
}

fn stats() -> ClusterStats {
    ClusterStats::new(&Store::new(1), "c")
}

fn lb(policy: LbPolicy, set: &HostSet) -> LoadBalancer {
    let lb = LoadBalancer::new(policy, 2);
    lb.on_hosts_changed(set);
    lb
}

fn picks(lb: &LoadBalancer, set: &HostSet, n: usize) -> Vec<u16> {
    let stats = stats();
    (0..n).map(|_| lb.choose(set, &LbContext::default(), &stats).unwrap().address.port()).collect()
}

fn counts(p: &[u16]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for &x in p {
        *m.entry(x).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_rotates_and_skips_unhealthy() {
    let set = HostSet::new(vec![vec![healthy(1), unhealthy(2), healthy(3)]]);
    let p = picks(&lb(LbPolicy::RoundRobin, &set), &set, 6);
    assert!(!p.contains(&2));
    assert_eq!(p.iter().filter(|&&x| x == 1).count(), 3);
}

#[test]
fn weighted_round_robin_follows_weights() {
    let set = HostSet::new(vec![vec![host(1, 3, HealthStatus::Healthy), host(2, 1, HealthStatus::Healthy)]]);
    let p = picks(&lb(LbPolicy::RoundRobin, &set), &set, 400);
    assert_eq!(p.iter().filter(|&&x| x == 1).count(), 300);
}

#[test]
fn weighted_round_robin_distribution() {
    // (weights of hosts 1.., health of each, picks, expected picks per port)
    type Case = (&'static [u32], &'static [HealthStatus], usize, &'static [(u16, usize)]);
    use HealthStatus::{Healthy as H, Unhealthy as U};
    let cases: &[Case] = &[
        (&[1, 2, 3, 4], &[H, H, H, H], 1000, &[(1, 100), (2, 200), (3, 300), (4, 400)]),
        (&[5, 1], &[H, H], 60, &[(1, 50), (2, 10)]),
        (&[1, 1, 1], &[H, H, H], 30, &[(1, 10), (2, 10), (3, 10)]),
        // The schedule is over the healthy hosts: their weights share the load.
        (&[1, 9, 3], &[H, U, H], 400, &[(1, 100), (3, 300)]),
    ];
    for (weights, health, n, want) in cases {
        let hosts = weights.iter().zip(*health).enumerate().map(|(i, (&w, &h))| host(i as u16 + 1, w, h)).collect();
        let set = HostSet::new(vec![hosts]);
        let got = counts(&picks(&lb(LbPolicy::RoundRobin, &set), &set, *n));
        let want: BTreeMap<u16, usize> = want.iter().copied().collect();
        assert_eq!(got, want, "weights {weights:?} health {health:?}");
    }
}

#[test]
fn weighted_round_robin_is_smooth() {
    // nginx's smooth WRR interleaves: 5:1:1 is a a b a c a a, not a a a a a b c.
    let set = HostSet::new(vec![vec![
        host(1, 5, HealthStatus::Healthy),
        host(2, 1, HealthStatus::Healthy),
        host(3, 1, HealthStatus::Healthy),
    ]]);
    assert_eq!(picks(&lb(LbPolicy::RoundRobin, &set), &set, 7), [1, 1, 2, 1, 3, 1, 1]);
}

#[test]
fn round_robin_without_schedules_for_the_set_rotates() {
    // A set the LB never saw (a pick racing the swap): plain rotation, never a wrong index.
    let seen = HostSet::new(vec![vec![host(1, 3, HealthStatus::Healthy), host(2, 1, HealthStatus::Healthy)]]);
    let lb = lb(LbPolicy::RoundRobin, &seen);
    let other = HostSet::new(vec![vec![host(7, 3, HealthStatus::Healthy), host(8, 1, HealthStatus::Healthy)]]);
    assert_eq!(counts(&picks(&lb, &other, 10)), BTreeMap::from([(7, 5), (8, 5)]));
}

#[test]
fn least_request_prefers_the_less_loaded_host() {
    let (busy, idle) = (healthy(1), healthy(2));
    busy.stats.rq_active.store(10, Ordering::Relaxed);
    let set = HostSet::new(vec![vec![busy.clone(), idle.clone()]]);
    let c = counts(&picks(&lb(LbPolicy::LeastRequest, &set), &set, 2000));
    // Two choices with replacement: the busy host wins only when drawn twice (1/4).
    let idle_picks = c.get(&2).copied().unwrap_or(0);
    assert!((1300..1700).contains(&idle_picks), "{c:?}");

    // Equal load: both serve.
    busy.stats.rq_active.store(0, Ordering::Relaxed);
    let c = counts(&picks(&lb(LbPolicy::LeastRequest, &set), &set, 2000));
    assert!(c.values().all(|&n| n > 600), "{c:?}");
}

#[test]
fn least_request_single_candidate() {
    let set = HostSet::new(vec![vec![healthy(1), unhealthy(2)]]);
    assert!(picks(&lb(LbPolicy::LeastRequest, &set), &set, 20).iter().all(|&p| p == 1));
}

#[test]
fn every_policy_picks_only_healthy_hosts_and_none_from_an_empty_set() {
    for policy in POLICIES {
        let set = HostSet::new(vec![vec![healthy(1), unhealthy(2), healthy(3), healthy(4)]]);
        let c = counts(&picks(&lb(policy, &set), &set, 300));
        assert_eq!(c.keys().copied().collect::<Vec<_>>(), [1, 3, 4], "{policy:?}");

        let lb = LoadBalancer::new(policy, 2);
        let stats = stats();
        assert!(lb.choose(&HostSet::default(), &LbContext::default(), &stats).is_none());
        assert_eq!(stats.upstream_cx_none_healthy.value(), 1, "{policy:?}");
    }
}

#[test]
fn empty_cluster_has_no_host() {
    let lb = LoadBalancer::new(LbPolicy::Random, 2);
    let stats = stats();
    assert!(lb.choose(&HostSet::default(), &LbContext::default(), &stats).is_none());
    assert_eq!(stats.upstream_cx_none_healthy.value(), 1);
}

#[test]
fn panic_mode_uses_all_hosts_and_priorities_fall_over() {
    let set = HostSet::new(vec![vec![unhealthy(1)]]);
    let lb = lb(LbPolicy::RoundRobin, &set);
    assert_eq!(picks(&lb, &set, 2), vec![1, 1]);
    let set = HostSet::new(vec![vec![unhealthy(1)], vec![healthy(2), healthy(3)]]);
    lb.on_hosts_changed(&set);
    assert!(picks(&lb, &set, 4).iter().all(|&p| p != 1));
}

#[test]
fn panic_threshold() {
    // (healthy, unhealthy) hosts in one priority -> panic?
    let cases = [(0, 1, true), (1, 2, true), (1, 1, false), (2, 1, false), (1, 0, false), (4, 5, true), (5, 5, false)];
    for policy in POLICIES {
        for (h, u, panic) in cases {
            let mut hosts: Vec<Arc<Host>> = (0..h).map(|i| healthy(1 + i)).collect();
            hosts.extend((0..u).map(|i| unhealthy(100 + i)));
            let set = HostSet::new(vec![hosts]);
            assert_eq!(select(&set, DEFAULT_PANIC_THRESHOLD_PERCENT), Some(PrioritySelection { level: 0, panic }));
            let lb = lb(policy, &set);
            let stats = stats();
            let picked: Vec<u16> =
                (0..200).map(|_| lb.choose(&set, &LbContext::default(), &stats).unwrap().address.port()).collect();
            let got_unhealthy = picked.iter().any(|&p| p >= 100);
            assert_eq!(got_unhealthy, panic, "{policy:?} healthy {h} unhealthy {u}");
            assert_eq!(stats.lb_healthy_panic.value(), if panic { 200 } else { 0 }, "{policy:?} {h}/{u}");
        }
    }
}

#[test]
fn panic_threshold_zero_disables_panic() {
    let set = HostSet::new(vec![vec![unhealthy(1), unhealthy(2)]]);
    assert_eq!(select(&set, 0), None);
    assert_eq!(select(&set, 50), Some(PrioritySelection { level: 0, panic: true }));
}

#[test]
fn priority_failover() {
    // Priorities as (healthy, unhealthy) counts -> selected level and panic.
    type Case = (&'static [(u16, u16)], Option<(usize, bool)>);
    let cases: &[Case] = &[
        (&[(1, 0), (1, 0)], Some((0, false))),
        (&[(0, 1), (2, 0)], Some((1, false))),
        (&[(0, 0), (1, 0)], Some((1, false))),
        (&[(0, 2), (0, 1), (3, 0)], Some((2, false))),
        // Fewer than half healthy overall: panic on the first non-empty level.
        (&[(0, 2), (1, 0)], Some((0, true))),
        (&[(0, 0), (0, 1), (0, 3)], Some((1, true))),
        (&[], None),
    ];
    for (levels, want) in cases {
        let mut port = 0;
        let mut next = || {
            port += 1;
            port
        };
        let priorities: Vec<Vec<Arc<Host>>> = levels
            .iter()
            .map(|&(h, u)| {
                let mut hosts: Vec<Arc<Host>> = (0..h).map(|_| healthy(next())).collect();
                hosts.extend((0..u).map(|_| unhealthy(next())));
                hosts
            })
            .collect();
        let set = HostSet::new(priorities);
        let want = want.map(|(level, panic)| PrioritySelection { level, panic });
        assert_eq!(select(&set, DEFAULT_PANIC_THRESHOLD_PERCENT), want, "{levels:?}");
        assert_eq!(select_live(&set, DEFAULT_PANIC_THRESHOLD_PERCENT), want, "{levels:?}");
        for policy in POLICIES {
            let lb = lb(policy, &set);
            let stats = stats();
            for _ in 0..50 {
                let h = lb.choose(&set, &LbContext::default(), &stats);
                match want {
                    None => assert!(h.is_none()),
                    Some(sel) => {
                        let h = h.expect("a host");
                        assert!(set.priorities()[sel.level].hosts().iter().any(|x| Arc::ptr_eq(x, &h)), "{levels:?}");
                        assert!(sel.panic || h.healthy());
                    }
                }
            }
        }
    }
}

#[test]
fn flag_changed_after_the_set_was_built_is_honoured_and_recompute_updates_the_lists() {
    for policy in POLICIES {
        let hosts = [healthy(1), healthy(2), healthy(3)];
        let set = HostSet::new(vec![hosts.to_vec()]);
        let lb = lb(policy, &set);
        assert_eq!(set.priorities()[0].healthy().len(), 3);

        // Outlier detection ejects host 2 without rebuilding the set: never picked anyway.
        hosts[1].set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true);
        assert!(picks(&lb, &set, 60).iter().all(|&p| p != 2), "{policy:?}");

        // The rebuilt set's precomputed lists follow the flag.
        let set = set.recompute();
        lb.on_hosts_changed(&set);
        let ports: Vec<u16> = set.priorities()[0].healthy().iter().map(|h| h.address.port()).collect();
        assert_eq!((ports, set.healthy_len()), (vec![1, 3], 2), "{policy:?}");
        assert!(picks(&lb, &set, 60).iter().all(|&p| p != 2), "{policy:?}");

        // Back in: picked again after the next rebuild.
        hosts[1].set_flag(HealthFlags::FAILED_OUTLIER_CHECK, false);
        let set = set.recompute();
        lb.on_hosts_changed(&set);
        assert_eq!(set.priorities()[0].healthy().len(), 3);
        assert!(picks(&lb, &set, 60).contains(&2), "{policy:?}");
    }
}

#[test]
fn stale_set_whose_only_healthy_level_failed_falls_over_live() {
    // P0's only host fails after the set was built: the live path goes to P1.
    let (p0, p1) = (healthy(1), healthy(2));
    let set = HostSet::new(vec![vec![p0.clone()], vec![p1, healthy(3)]]);
    for policy in POLICIES {
        let lb = lb(policy, &set);
        assert!(picks(&lb, &set, 10).iter().all(|&p| p == 1), "{policy:?}");
        p0.set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
        assert!(picks(&lb, &set, 10).iter().all(|&p| p != 1), "{policy:?}");
        p0.set_flag(HealthFlags::FAILED_ACTIVE_HC, false);
    }
}

#[test]
fn degraded_hosts_are_routable() {
    let set = HostSet::new(vec![vec![host(1, 1, HealthStatus::Degraded), healthy(2)]]);
    assert_eq!(set.healthy_len(), 2);
    assert_eq!(counts(&picks(&lb(LbPolicy::RoundRobin, &set), &set, 4)), BTreeMap::from([(1, 2), (2, 2)]));
}

#[test]
fn context_with_a_hash_is_accepted_by_every_policy() {
    let set = HostSet::new(vec![vec![healthy(1), healthy(2)]]);
    for policy in POLICIES {
        let ctx = LbContext::with_hash(0xfeed);
        assert_eq!(ctx.hash, Some(0xfeed));
        assert!(lb(policy, &set).choose(&set, &ctx, &stats()).is_some(), "{policy:?}");
    }
}
