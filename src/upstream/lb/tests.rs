//! Load-balancer tests: picks over hand-built host sets, no sockets.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use std::time::Duration;

use pinion_xds::model::{HealthStatus, LbConfig, LbPolicy, Locality, SlowStart};

use super::*;
use crate::stats::Store;
use crate::upstream::host::HealthFlags;
use crate::upstream::host_set::HostSetSettings;

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
    // Each worker starts at a random place in the cycle, as Envoy's seeded index.
    let cycle = [1, 1, 2, 1, 3, 1, 1];
    let got = picks(&lb(LbPolicy::RoundRobin, &set), &set, 7);
    assert!((0..7).any(|k| got.iter().enumerate().all(|(i, &p)| p == cycle[(i + k) % 7])), "{got:?}");
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
            assert_eq!(select(&set).map(|s| (s.level, s.panic)), Some((0, panic)));
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
    let hosts = vec![unhealthy(1), unhealthy(2)];
    let set = HostSet::with_settings(vec![hosts.clone()], settings(|s| s.panic_threshold = 0));
    let sel = select(&set).unwrap();
    assert!(!sel.panic && sel.list.hosts().is_empty());
    let stats = stats();
    assert!(lb(LbPolicy::RoundRobin, &set).choose(&set, &LbContext::default(), &stats).is_none());
    assert_eq!((stats.upstream_cx_none_healthy.value(), stats.lb_healthy_panic.value()), (1, 0));
    let set = HostSet::new(vec![hosts]);
    assert!(select(&set).unwrap().panic);
}

#[test]
fn priority_failover() {
    // Priorities as (healthy, unhealthy) counts -> the levels picks may land on, and panic.
    type Case = (&'static [(u16, u16)], &'static [usize], bool);
    let cases: &[Case] = &[
        (&[(1, 0), (1, 0)], &[0], false),
        (&[(0, 1), (2, 0)], &[1], false),
        (&[(0, 0), (1, 0)], &[1], false),
        (&[(0, 2), (0, 1), (3, 0)], &[2], false),
        // P1 has full availability: no panic although most hosts are down (Envoy).
        (&[(0, 2), (1, 0)], &[1], false),
        // 2 of 4 healthy in P0: 70% there, 30% to P1.
        (&[(2, 2), (2, 0)], &[0, 1], false),
        // Nothing healthy anywhere: every level in panic, load by host counts.
        (&[(0, 0), (0, 1), (0, 3)], &[1, 2], true),
        (&[], &[], false),
    ];
    for (levels, want_levels, want_panic) in cases {
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
        for policy in POLICIES {
            let lb = lb(policy, &set);
            let stats = stats();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..300 {
                let h = lb.choose(&set, &LbContext::default(), &stats);
                if want_levels.is_empty() {
                    assert!(h.is_none());
                    continue;
                }
                let h = h.expect("a host");
                let level = set.priorities().iter().position(|p| p.hosts().iter().any(|x| Arc::ptr_eq(x, &h))).unwrap();
                seen.insert(level);
                assert!(*want_panic || h.healthy(), "{levels:?}");
            }
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), *want_levels, "{levels:?} {policy:?}");
            assert_eq!(stats.lb_healthy_panic.value() > 0, *want_panic, "{levels:?}");
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
fn degraded_hosts_take_what_healthy_ones_leave() {
    // One healthy, one degraded host, factor 1.4: healthy availability 70%, the other 30% go
    // to the degraded host (Envoy's degraded priority load).
    let set = HostSet::new(vec![vec![host(1, 1, HealthStatus::Degraded), healthy(2)]]);
    assert_eq!((set.healthy_len(), set.priorities()[0].degraded().len()), (1, 1));
    assert_eq!((set.load().healthy.clone(), set.load().degraded.clone()), (vec![70], vec![30]));
    for policy in POLICIES {
        let c = counts(&picks(&lb(policy, &set), &set, 4000));
        let degraded = c.get(&1).copied().unwrap_or(0);
        assert!((1000..1400).contains(&degraded), "{policy:?} {c:?}");
    }
    // Enough healthy hosts (3 of 4 with factor 1.4): the degraded one gets nothing.
    let set = HostSet::new(vec![vec![host(1, 1, HealthStatus::Degraded), healthy(2), healthy(3), healthy(4)]]);
    assert!(picks(&lb(LbPolicy::Random, &set), &set, 300).iter().all(|&p| p != 1));
}

fn settings(f: impl FnOnce(&mut HostSetSettings)) -> HostSetSettings {
    let mut s = HostSetSettings::default();
    f(&mut s);
    s
}

/// Share of `n` picks that went to each port, in percent.
fn shares(lb: &LoadBalancer, set: &HostSet, n: usize) -> BTreeMap<u16, f64> {
    counts(&picks(lb, set, n)).into_iter().map(|(p, c)| (p, 100.0 * c as f64 / n as f64)).collect()
}

fn assert_near(got: &BTreeMap<u16, f64>, want: &[(u16, f64)], tolerance: f64, what: &str) {
    for &(port, pct) in want {
        let g = got.get(&port).copied().unwrap_or(0.0);
        assert!((g - pct).abs() <= tolerance, "{what}: port {port} got {g:.1}% want {pct}% ({got:?})");
    }
    let covered: f64 = want.iter().map(|&(p, _)| got.get(&p).copied().unwrap_or(0.0)).sum();
    assert!((covered - 100.0).abs() < 1e-6, "{what}: picks outside the expected hosts: {got:?}");
}

#[test]
fn priority_load_splits_traffic_across_levels() {
    use HealthStatus::{Healthy as H, Unhealthy as U};
    // (levels of health statuses, overprovisioning factor, expected % per port). Ports are
    // numbered from 1 across levels in order. 10 000 random-level picks: a binomial share's
    // standard deviation is at most 0.5%, the tolerance is 3%.
    type Case = (&'static [&'static [HealthStatus]], u32, &'static [(u16, f64)]);
    let cases: &[Case] = &[
        // P0 2/4 healthy, factor 1.4 -> 70/30.
        (&[&[H, H, U, U], &[H, H]], 140, &[(1, 35.0), (2, 35.0), (5, 15.0), (6, 15.0)]),
        // Factor 1.0 -> 50/50.
        (&[&[H, H, U, U], &[H, H]], 100, &[(1, 25.0), (2, 25.0), (5, 25.0), (6, 25.0)]),
        // Factor 2.0: half healthy is fully available.
        (&[&[H, U], &[H]], 200, &[(1, 100.0)]),
        // Three levels: 35 / 35 / 30.
        (&[&[H, U, U, U], &[H, U, U, U], &[H]], 140, &[(1, 35.0), (5, 35.0), (9, 30.0)]),
    ];
    for (levels, factor, want) in cases {
        let mut port = 0u16;
        let priorities: Vec<Vec<Arc<Host>>> = levels
            .iter()
            .map(|l| {
                l.iter()
                    .map(|&h| {
                        port += 1;
                        host(port, 1, h)
                    })
                    .collect()
            })
            .collect();
        let set = HostSet::with_settings(priorities, settings(|s| s.overprovisioning_factor = *factor));
        for policy in POLICIES {
            let got = shares(&lb(policy, &set), &set, 10_000);
            assert_near(&got, want, 3.0, &format!("{policy:?} {levels:?} factor {factor}"));
        }
    }
}

#[test]
fn weighted_priority_health_uses_host_weights() {
    use HealthStatus::{Healthy as H, Unhealthy as U};
    let level0 = || vec![host(1, 3, H), host(2, 3, H), host(3, 1, U), host(4, 1, U)];
    // Healthy hosts carry 6 of 8 weight: 140 * 6/8 > 100, P1 gets nothing.
    let weighted = settings(|s| s.weighted_priority_health = true);
    let set = HostSet::with_settings(vec![level0(), vec![healthy(5)]], weighted);
    assert_eq!(set.load().healthy, vec![100, 0]);
    assert_near(&shares(&lb(LbPolicy::RoundRobin, &set), &set, 1000), &[(1, 50.0), (2, 50.0)], 0.0, "weighted");
    // By count: 2 of 4, 70/30.
    let set = HostSet::new(vec![level0(), vec![healthy(5)]]);
    assert_eq!(set.load().healthy, vec![70, 30]);
}

fn in_zone(port: u16, zone: &str, locality_weight: Option<u32>, health: HealthStatus) -> Arc<Host> {
    let loc = Locality { region: "r".into(), zone: zone.into(), sub_zone: String::new() };
    Arc::new(
        Host::new(([127, 0, 0, 1], port).into(), String::new(), 1, Some(loc), 0, health)
            .with_locality_weight(locality_weight),
    )
}

#[test]
fn locality_weighted_picks_follow_effective_locality_weights() {
    use HealthStatus::{Healthy as H, Unhealthy as U};
    let weighted = settings(|s| s.locality_weighted = true);
    // (hosts as (port, zone, locality weight, health), expected % per port). Localities are
    // picked from a deterministic schedule, hosts within one by the policy: with 3000 picks
    // the shares are exact to well within the 3% tolerance (random within a locality).
    type Case = (&'static [(u16, &'static str, Option<u32>, HealthStatus)], &'static [(u16, f64)]);
    let cases: &[Case] = &[
        // Weights 1:3.
        (&[(1, "a", Some(1), H), (2, "b", Some(3), H)], &[(1, 25.0), (2, 75.0)]),
        // Two hosts in a, one in b, equal locality weights: 50/50 per locality, not per host.
        (&[(1, "a", Some(1), H), (2, "a", Some(1), H), (3, "b", Some(1), H)], &[(1, 25.0), (2, 25.0), (3, 50.0)]),
        // b half healthy: effective weight 1 * min(1, 1.4 * 0.5) = 0.7 -> 1 : 0.7.
        (
            &[(1, "a", Some(1), H), (2, "a", Some(1), H), (3, "b", Some(1), H), (4, "b", Some(1), U)],
            &[(1, 100.0 / 1.7 / 2.0), (2, 100.0 / 1.7 / 2.0), (3, 70.0 / 1.7)],
        ),
        // A locality without a weight gets nothing (Envoy's weight 0).
        (&[(1, "a", Some(2), H), (2, "b", None, H)], &[(1, 100.0)]),
    ];
    for (hosts, want) in cases {
        let hs: Vec<Arc<Host>> = hosts.iter().map(|&(p, z, w, h)| in_zone(p, z, w, h)).collect();
        let set = HostSet::with_settings(vec![hs.clone()], weighted.clone());
        for policy in POLICIES {
            let got = shares(&lb(policy, &set), &set, 3000);
            assert_near(&got, want, 3.0, &format!("{policy:?} {hosts:?}"));
        }
        // Without locality_weighted_lb_config the locality weights play no part.
        let plain = HostSet::new(vec![hs]);
        assert!(plain.priorities()[0].localities().is_empty());
    }
    // No locality has a weight: no schedule, picks over the whole level.
    let set = HostSet::with_settings(vec![vec![in_zone(1, "a", None, H), in_zone(2, "b", None, H)]], weighted);
    assert!(set.priorities()[0].locality_schedule(false).is_none());
    assert_near(&shares(&lb(LbPolicy::RoundRobin, &set), &set, 100), &[(1, 50.0), (2, 50.0)], 0.0, "no weights");
}

#[test]
fn locality_weighted_degraded_picks_use_degraded_availability() {
    use HealthStatus::{Degraded as D, Healthy as H};
    // P0: a has 1 healthy of 2, b has 1 degraded of 1: healthy availability 70 -> 70% of
    // picks to a's healthy host, the other 30% to degraded hosts, i.e. b's.
    let set = HostSet::with_settings(
        vec![vec![in_zone(1, "a", Some(1), H), in_zone(2, "a", Some(1), D), in_zone(3, "b", Some(1), D)]],
        settings(|s| s.locality_weighted = true),
    );
    assert_eq!((set.load().healthy.clone(), set.load().degraded.clone()), (vec![46], vec![54]));
    // Degraded schedule: a 1 of 2 degraded -> 0.7, b 1 of 1 -> 1.0.
    let got = shares(&lb(LbPolicy::RoundRobin, &set), &set, 10_000);
    let degraded_a = 54.0 * 0.7 / 1.7;
    assert_near(&got, &[(1, 46.0), (2, degraded_a), (3, 54.0 - degraded_a)], 3.0, "degraded localities");
}

#[test]
fn active_request_bias_scales_weights_by_active_requests() {
    // Host 1 weight 1 idle, host 2 weight 3 with 5 active requests. EDF over
    // weight / (active + 1) ^ bias: bias 1 -> 1 : 0.5, bias 0 -> 1 : 3, bias 0.5 -> 1 : 1.22.
    let cases = [(1.0, 100.0 / 1.5), (0.0, 25.0), (0.5, 100.0 / (1.0 + 3.0 / 6f64.sqrt()))];
    for (bias, want_idle) in cases {
        let (idle, busy) = (host(1, 1, HealthStatus::Healthy), host(2, 3, HealthStatus::Healthy));
        busy.stats.rq_active.store(5, Ordering::Relaxed);
        let set = HostSet::new(vec![vec![idle, busy]]);
        let cfg = LbConfig { active_request_bias: Some(bias), ..LbConfig::default() };
        let lb = LoadBalancer::with_config(LbPolicy::LeastRequest, &cfg, 2);
        let got = shares(&lb, &set, 2000);
        assert_near(&got, &[(1, want_idle), (2, 100.0 - want_idle)], 1.0, &format!("bias {bias}"));
    }
    // Equal weights: power of two choices, the bias plays no part.
    let (a, b) = (healthy(1), healthy(2));
    b.stats.rq_active.store(5, Ordering::Relaxed);
    let set = HostSet::new(vec![vec![a, b]]);
    let cfg = LbConfig { active_request_bias: Some(0.0), ..LbConfig::default() };
    let got = shares(&LoadBalancer::with_config(LbPolicy::LeastRequest, &cfg, 2), &set, 4000);
    assert_near(&got, &[(1, 75.0), (2, 25.0)], 3.0, "equal weights");
}

#[test]
fn slow_start_ramps_new_hosts_up_over_the_window() {
    let window = Duration::from_secs(10);
    for policy in [LbPolicy::RoundRobin, LbPolicy::LeastRequest] {
        let (clock, time) = Clock::manual(1_000);
        let s = settings(|s| {
            s.slow_start_window_ms = 10_000;
            s.clock = clock.clone();
        });
        let cfg = LbConfig {
            slow_start: Some(SlowStart { window, aggression: 1.0, aggression_key: String::new(), min_weight: 0.1 }),
            ..LbConfig::default()
        };
        let lb = LoadBalancer::with_config(policy, &cfg, 2);
        let (h1, h2) = (healthy(1), healthy(2));
        // The initial hosts start their window together: equal shares throughout.
        let set = HostSet::with_settings(vec![vec![h1.clone(), h2.clone()]], s.clone());
        assert_eq!((h1.healthy_since(), set.slow_start_until()), (1_000, 11_000));
        assert_near(&shares(&lb, &set, 1000), &[(1, 50.0), (2, 50.0)], 2.0, "initial");

        // 20s later host 3 joins: its weight ramps from 10% to 100% over 10s.
        time.store(21_000, Ordering::Relaxed);
        let h3 = healthy(3);
        let set = HostSet::with_settings(vec![vec![h1.clone(), h2.clone(), h3.clone()]], s.clone());
        assert_eq!((h3.healthy_since(), set.slow_start_until()), (21_000, 31_000));
        // (ms after joining, host 3's expected share: f / (2 + f))
        for (ms, f) in [(0u64, 0.1), (2_500, 0.25), (5_000, 0.5), (9_000, 0.9)] {
            time.store(21_000 + ms, Ordering::Relaxed);
            // A fresh set per step so the EDF starts from this step's weights.
            let set = set.recompute();
            let want = 100.0 * f / (2.0 + f);
            let got = shares(&lb, &set, 2000);
            assert_near(
                &got,
                &[(1, (100.0 - want) / 2.0), (2, (100.0 - want) / 2.0), (3, want)],
                2.0,
                &format!("{policy:?} +{ms}ms"),
            );
        }
        // Past the window: plain round robin / least request again.
        time.store(31_000, Ordering::Relaxed);
        // Least request samples at random again: 3000 picks, standard deviation 0.9 points.
        assert_near(&shares(&lb, &set, 3000), &[(1, 33.3), (2, 33.3), (3, 33.3)], 4.0, "after the window");
    }
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
