//! Ring hash and Maglev tests: determinism, weights, disruption when hosts change, retries.
//! Keys are fixed (xxHash64 of `key-<i>`), so every count here is deterministic; the bounds
//! state what consistent hashing promises, with the margin the table sizes allow.

use std::collections::BTreeMap;

use pinion_xds::model::{HealthStatus, LbPolicy, MaglevConfig, RingHashConfig};

use super::hashing::HashTable;
use super::maglev::MaglevTable;
use super::ring_hash::Ring;
use super::*;
use crate::stats::Store;
use crate::upstream::host::HealthFlags;

fn host(port: u16, weight: u32) -> Arc<Host> {
    Arc::new(Host::new(([127, 0, 0, 1], port).into(), String::new(), weight, None, 0, HealthStatus::Healthy))
}

fn hosts(ports: impl IntoIterator<Item = u16>) -> Vec<Arc<Host>> {
    ports.into_iter().map(|p| host(p, 1)).collect()
}

fn ring() -> LbPolicy {
    LbPolicy::RingHash(RingHashConfig::default())
}

fn maglev() -> LbPolicy {
    LbPolicy::Maglev(MaglevConfig::default())
}

fn key(i: usize) -> u64 {
    xxhash_rust::xxh64::xxh64(format!("key-{i}").as_bytes(), 0)
}

/// Port picked for keys `0..n` with `policy` over `set`.
fn mapping(policy: LbPolicy, set: &HostSet, n: usize) -> Vec<u16> {
    let lb = LoadBalancer::new(policy, 2);
    lb.on_hosts_changed(set);
    let stats = ClusterStats::new(&Store::new(1), "c");
    (0..n).map(|i| lb.choose(set, &LbContext::with_hash(key(i)), &stats).unwrap().address.port()).collect()
}

fn shares(picks: &[u16]) -> BTreeMap<u16, f64> {
    let mut m = BTreeMap::new();
    for &p in picks {
        *m.entry(p).or_insert(0.0) += 1.0 / picks.len() as f64;
    }
    m
}

#[test]
fn the_same_key_picks_the_same_host_every_time_and_in_every_instance() {
    for policy in [ring(), maglev()] {
        let set = HostSet::new(vec![hosts(1..=5)]);
        let a = mapping(policy, &set, 2000);
        // Another balancer over an equal set (fresh hosts, as another process would have).
        let b = mapping(policy, &HostSet::new(vec![hosts(1..=5)]), 2000);
        assert_eq!(a, b, "{policy:?}");
        assert_eq!(shares(&a).len(), 5, "{policy:?}: every host gets keys");
    }
}

#[test]
fn maglev_does_not_depend_on_host_order() {
    // Envoy fills the table in the order of the hosts' keys.
    let forward = mapping(maglev(), &HostSet::new(vec![hosts(1..=5)]), 2000);
    let backward = mapping(maglev(), &HostSet::new(vec![hosts((1..=5).rev())]), 2000);
    assert_eq!(forward, backward);
}

#[test]
fn ring_replica_counts_follow_envoy_scaling() {
    // (weights, minimum ring size, maximum ring size, expected ring size): Envoy scales so the
    // lightest host gets ceil(min_weight * min_size) replicas, capped by the maximum.
    let rows: &[(&[u32], u64, u64, usize)] = &[
        (&[1, 1, 1, 1], 1024, 8 << 20, 1024),
        (&[1, 1, 1, 1, 1], 1024, 8 << 20, 1025),
        (&[1, 2, 3, 4], 1024, 8 << 20, 1030),
        (&[1, 1, 1, 1], 1024, 6, 6),
        (&[1], 3, 8 << 20, 3),
    ];
    for &(weights, min, max, want) in rows {
        let hs: Vec<Arc<Host>> = weights.iter().enumerate().map(|(i, &w)| host(i as u16 + 1, w)).collect();
        let cfg = RingHashConfig { minimum_ring_size: min, maximum_ring_size: max, use_hostname_for_hashing: false };
        assert_eq!(Ring::build(&cfg, &hs).unwrap().len(), want, "{weights:?} {min} {max}");
    }
}

#[test]
fn weights_are_followed() {
    let weighted =
        || HostSet::new(vec![[1u32, 2, 3, 4].iter().enumerate().map(|(i, &w)| host(i as u16 + 1, w)).collect()]);
    // Maglev hands out slots in proportion to weight: within 1% of 65537 * w / 10.
    let hs = weighted();
    let table = MaglevTable::build(&MaglevConfig::default(), hs.priorities()[0].hosts()).unwrap();
    for (i, &count) in table.counts(4).iter().enumerate() {
        let want = 65537.0 * (i + 1) as f64 / 10.0;
        assert!((count as f64 - want).abs() < want * 0.01, "host {i}: {count} slots, want ~{want}");
    }
    // A ring's arcs vary with about 1/sqrt(replicas) relative deviation: with a 64K ring the
    // lightest host has ~6.5K replicas (~1.2%), so 20,000 keys land within 5% of the weight.
    let big = LbPolicy::RingHash(RingHashConfig { minimum_ring_size: 65536, ..RingHashConfig::default() });
    for policy in [big, maglev()] {
        let got = shares(&mapping(policy, &weighted(), 20_000));
        for (port, share) in got {
            let want = f64::from(port) / 10.0;
            assert!((share - want).abs() < want * 0.05, "{policy:?}: port {port} got {share:.3}, want {want}");
        }
    }
    // At the default size (103 replicas for the lightest host) the bound is looser: 25%.
    let got = shares(&mapping(ring(), &weighted(), 20_000));
    for (port, share) in got {
        let want = f64::from(port) / 10.0;
        assert!((share - want).abs() < want * 0.25, "ring: port {port} got {share:.3}, want {want}");
    }
}

#[test]
fn adding_a_host_moves_about_one_in_n_plus_one_keys() {
    // From N = 5 to 6 hosts, 1/6 of the keys (16.7%) should go to the new host: within 5
    // points for both. Envoy's ring also rescales every host's replica count (205 -> 171 at
    // the default minimum size of 1024), so keys also move between the old hosts: in all at
    // most 1/6 + 12 points (26.6% here). Maglev moves at most 1/6 + 5 points in all (its
    // paper reports a small extra churn).
    let n = 10_000;
    for (policy, extra) in [(ring(), 0.12), (maglev(), 0.05)] {
        let before = mapping(policy, &HostSet::new(vec![hosts(1..=5)]), n);
        let after = mapping(policy, &HostSet::new(vec![hosts(1..=6)]), n);
        let moved = (0..n).filter(|&i| before[i] != after[i]).count() as f64 / n as f64;
        let to_new = after.iter().filter(|&&p| p == 6).count() as f64 / n as f64;
        assert!((to_new - 1.0 / 6.0).abs() < 0.05, "{policy:?}: {to_new:.3} of the keys went to the new host");
        assert!(moved < 1.0 / 6.0 + extra, "{policy:?}: {moved:.3} of the keys moved");
    }
}

#[test]
fn an_unhealthy_host_loses_its_keys_and_most_others_stay() {
    // Maglev keeps at least 90% of the other hosts' keys where they were; the ring at least
    // 80% (it rescales replica counts for 4 hosts: 205 -> 256 each, 86% stay here).
    for (policy, keep) in [(ring(), 0.8), (maglev(), 0.9)] {
        let all = hosts(1..=5);
        let before = mapping(policy, &HostSet::new(vec![all.clone()]), 5000);
        all[2].set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
        let after = mapping(policy, &HostSet::new(vec![all.clone()]), 5000);
        assert!(after.iter().all(|&p| p != 3), "{policy:?}: the unhealthy host gets nothing");
        let kept = (0..5000).filter(|&i| before[i] != 3 && before[i] == after[i]).count();
        let others = before.iter().filter(|&&p| p != 3).count();
        assert!(kept as f64 > others as f64 * keep, "{policy:?}: {kept} of {others} keys stayed");
    }
}

#[test]
fn without_a_hash_picks_are_random() {
    for policy in [ring(), maglev()] {
        let set = HostSet::new(vec![hosts(1..=4)]);
        let lb = LoadBalancer::new(policy, 2);
        lb.on_hosts_changed(&set);
        let stats = ClusterStats::new(&Store::new(1), "c");
        let picks: Vec<u16> =
            (0..400).map(|_| lb.choose(&set, &LbContext::default(), &stats).unwrap().address.port()).collect();
        assert_eq!(shares(&picks).len(), 4, "{policy:?}");
    }
}

#[test]
fn retry_attempts_move_off_the_keys_host() {
    let hs = hosts(1..=5);
    let ring = Ring::build(&RingHashConfig::default(), &hs).unwrap();
    let table = MaglevTable::build(&MaglevConfig::default(), &hs).unwrap();
    for t in [&ring as &dyn HashTable, &table] {
        let moved = (0..1000).filter(|&i| t.pick(key(i), 0) != t.pick(key(i), 1)).count();
        // Another host most of the time (a ring's neighbour replica can be the same host).
        assert!(moved > 600, "{moved} of 1000 moved");
        assert!((0..1000).all(|i| t.pick(key(i), 1) == t.pick(key(i), 1)), "still deterministic");
    }
}

#[test]
fn ring_lookup_wraps_and_hits_exact_replicas() {
    let hs = hosts(1..=3);
    let cfg = RingHashConfig { minimum_ring_size: 3, maximum_ring_size: 3, use_hostname_for_hashing: false };
    let ring = Ring::build(&cfg, &hs).unwrap();
    // Replica hashes: xxHash64 of "<address>_0", one per host.
    let mut replicas: Vec<(u64, usize)> =
        (0..3).map(|i| (xxhash_rust::xxh64::xxh64(format!("127.0.0.1:{}_0", i + 1).as_bytes(), 0), i)).collect();
    replicas.sort();
    for &(h, idx) in &replicas {
        assert_eq!(ring.pick(h, 0), idx, "a replica's own hash");
        assert_eq!(ring.pick(h - 1, 0), idx, "just below it");
    }
    // Past the last replica (and 0) wraps to the first.
    assert_eq!(ring.pick(u64::MAX, 0), replicas[0].1);
    assert_eq!(ring.pick(replicas[2].0 + 1, 0), replicas[0].1);
    assert_eq!(ring.pick(0, 0), replicas[0].1);
}

#[test]
fn hash_key_metadata_and_hostname_replace_the_address() {
    let by_meta = Host::new(([127, 0, 0, 1], 1).into(), "h.example".into(), 1, None, 0, HealthStatus::Healthy)
        .with_lb_hash_key("tenant-a");
    assert_eq!(by_meta.lb_hash_key(false), "tenant-a");
    let by_name = Host::new(([127, 0, 0, 1], 1).into(), "h.example".into(), 1, None, 0, HealthStatus::Healthy);
    assert_eq!(by_name.lb_hash_key(true), "h.example");
    assert_eq!(by_name.lb_hash_key(false), "127.0.0.1:1");
}
