//! Scenario (r1) `r_cost`: what configured-but-idle resilience costs per request. The plain
//! bench bootstrap ([`Variant::Default`], as `a_sat`) against the same bootstrap with circuit
//! breakers (non-default thresholds, `track_remaining`) and outlier detection (consecutive
//! 5xx and gateway failures, success rate, failure percentage; evaluated every second) on
//! every cluster ([`Variant::Resilience`]), neither ever triggering: the backend never fails
//! and the limits are far above the load. Two workers (`--concurrency 2`, the proxy on both
//! cores, as `scale2`), so the breakers' cluster-wide counters are shared by two threads.
//! Pinion and Envoy each run both bootstraps; the rounds go A B, B A, A B, B A (see
//! `Scenario::abba`) and the report pairs the two runs of each round.

use std::fmt::Write as _;

use crate::proxies::{Installed, Kind, Variant};
use crate::report::{self, ScenarioResults, SmokeLine, Spread};
use crate::{Env, Scenario, Who};

/// A run's subject: the proxy and the bootstrap variant.
pub type Key = (Kind, Variant);

/// The extra CPU per request the resilience bootstrap may cost Pinion (the target).
pub const TARGET_EXTRA_PCT: f64 = 3.0;

const VARIANTS: [Variant; 2] = [Variant::Default, Variant::Resilience];

/// Rounds for `runs` requested: rounded up to an even count so every subject runs first in
/// as many rounds as it runs second (one round in smoke mode, which checks 2xx only).
pub fn rounds(runs: u32, smoke: bool) -> u32 {
    if smoke {
        1
    } else {
        runs.div_ceil(2) * 2
    }
}

/// Runs Pinion and Envoy, each on both bootstraps, for [`rounds`] rounds.
pub fn run(env: &Env, sc: &Scenario, pinion: &Installed, envoy: &Installed) -> ScenarioResults<Key> {
    let subjects: Vec<(Key, Who<'_>)> = [pinion, envoy]
        .into_iter()
        .flat_map(|p| {
            VARIANTS
                .map(|v| ((p.kind, v), Who { name: format!("{}/{}", p.kind.name(), v.name()), proxy: p, variant: v }))
        })
        .collect();
    crate::run_rounds(env, sc, &subjects, rounds(env.o.runs, env.o.smoke))
}

/// Resilience ÷ plain CPU per request of each round where both ran.
pub fn paired_ratios(r: &ScenarioResults<Key>, k: Kind) -> Vec<f64> {
    let runs = |v: Variant| r.samples.get(&(k, v)).map(Vec::as_slice).unwrap_or(&[]);
    let plain = runs(Variant::Default);
    runs(Variant::Resilience)
        .iter()
        .filter_map(|res| {
            let p = plain.iter().find(|p| p.round == res.round)?;
            (p.cpu_us_per_req > 0.0).then(|| res.cpu_us_per_req / p.cpu_us_per_req)
        })
        .collect()
}

/// `smoke`: every subject answered every request with a 2xx.
pub fn smoke_lines(sc: &Scenario, r: &ScenarioResults<Key>) -> Vec<SmokeLine> {
    let mut out = vec![];
    for k in [Kind::Pinion, Kind::Envoy] {
        for v in VARIANTS {
            let ok: u64 = r.samples.get(&(k, v)).map(|s| s.iter().map(|x| x.ok).sum()).unwrap_or(0);
            let fails = r.failures.get(&(k, v)).filter(|f| !f.is_empty());
            let name = format!("{} {}/{}", sc.id, k.name(), v.name());
            out.push(match fails {
                Some(f) => SmokeLine { ok: false, text: format!("{name}: {}", f.join("; ")) },
                None if ok == 0 => SmokeLine { ok: false, text: format!("{name}: no run") },
                None => SmokeLine { ok: true, text: format!("{name}: {ok} requests, all 2xx") },
            });
        }
    }
    out
}

/// The "(r1) Resilience cost" section of RESULTS.md.
pub fn render(sc: &Scenario, r: &ScenarioResults<Key>) -> String {
    let mut md = String::from("## (r1) Resilience cost: circuit breakers + outlier detection, never triggering\n\n");
    let _ = writeln!(
        md,
        "The `scale2` setup (HTTP/1.1 small at saturation, `--concurrency {}`, proxy `taskset -c {}`, load generator and \
         backend on core {}) on two bootstraps: **plain** (the bench bootstrap) and **resilience** (`pinion-bench bootstrap \
         resilience`: the same, plus on every cluster `circuit_breakers` with non-default thresholds for DEFAULT and HIGH \
         priority and `track_remaining: true`, and `outlier_detection` with consecutive 5xx, consecutive gateway failure, \
         success rate and failure percentage, all enforcing, `interval: 1s`, minimum hosts 1). Nothing ever trips: the \
         backend never fails and every limit is far above the load (every request must get a 2xx). Rounds alternate plain, \
         resilience / resilience, plain ({} rounds); \"paired\" is the resilience ÷ plain ratio of the two runs of one \
         round, whose median is the figure of the target (at most {TARGET_EXTRA_PCT:.0}% extra CPU per request for \
         Pinion).\n",
        sc.workers,
        sc.proxy_cpus,
        crate::LOAD_CORE,
        r.samples.values().flatten().map(|s| s.round + 1).max().unwrap_or(0),
    );
    let _ = writeln!(
        md,
        "| Proxy | CPU µs/req plain | CPU µs/req resilience | resilience ÷ plain (medians) | paired per round, median (min–max) | req/s plain | req/s resilience | extra ≤ {TARGET_EXTRA_PCT:.0}%? |\n|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for k in [Kind::Pinion, Kind::Envoy] {
        let cpu = |v: Variant| r.spread_of((k, v), |s| Some(s.cpu_us_per_req));
        let rps = |v: Variant| r.spread_of((k, v), |s| Some(s.rps));
        let (plain, res) = (cpu(Variant::Default), cpu(Variant::Resilience));
        let of_medians = match (plain, res) {
            (Some(p), Some(x)) if p.median > 0.0 => format!("{:.3}x", x.median / p.median),
            _ => "—".into(),
        };
        let paired = report::spread(&paired_ratios(r, k));
        let verdict = verdict(paired, plain, res);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {of_medians} | {} | {} | {} | {verdict} |",
            k.name(),
            report::fmt_spread(plain, 1),
            report::fmt_spread(res, 1),
            report::fmt_spread(paired, 3),
            report::fmt_spread(rps(Variant::Default), 0),
            report::fmt_spread(rps(Variant::Resilience), 0),
        );
    }
    let _ = writeln!(md);
    md
}

/// "yes" / "**no** (+x%)" for the paired median against the target, noting when the plain and
/// resilience min–max ranges overlap (the difference is within run-to-run noise).
fn verdict(paired: Option<Spread>, plain: Option<Spread>, res: Option<Spread>) -> String {
    let Some(p) = paired else { return "—".into() };
    let extra = (p.median - 1.0) * 100.0;
    let overlap = match (plain, res) {
        (Some(a), Some(b)) => a.n >= 2 && b.n >= 2 && a.min <= b.max && b.min <= a.max,
        _ => false,
    };
    let noise = if overlap { ", within run-to-run spread" } else { "" };
    if extra <= TARGET_EXTRA_PCT {
        format!("yes ({extra:+.1}%{noise})")
    } else {
        format!("**no** ({extra:+.1}%{noise})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Sample;

    fn sample(cpu: f64, round: u32) -> Sample {
        Sample { cpu_us_per_req: cpu, round, ok: 1, ..Sample::default() }
    }

    #[test]
    fn rounds_are_even_outside_smoke() {
        assert_eq!((rounds(3, false), rounds(4, false), rounds(1, false), rounds(3, true)), (4, 4, 2, 1));
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        let mut r = ScenarioResults::<Key>::default();
        // Round 1 of the plain bootstrap failed: its resilience run has nothing to pair with.
        r.samples.insert((Kind::Pinion, Variant::Default), vec![sample(10.0, 0), sample(20.0, 2)]);
        r.samples.insert((Kind::Pinion, Variant::Resilience), vec![sample(10.2, 0), sample(30.0, 1), sample(21.2, 2)]);
        let v = paired_ratios(&r, Kind::Pinion);
        assert_eq!(v.len(), 2);
        assert!((v[0] - 1.02).abs() < 1e-9 && (v[1] - 1.06).abs() < 1e-9, "{v:?}");
        assert!(paired_ratios(&r, Kind::Envoy).is_empty());
        let table = render(&crate::scenarios().into_iter().find(|s| s.id == "r_cost").unwrap(), &r);
        assert!(table.contains("| Pinion | 15.0 (10.0–20.0) | 21.2 (10.2–30.0) |"), "{table}");
        assert!(table.contains("1.040 (1.020–1.060)"), "{table}");
        assert!(table.contains("**no** (+4.0%, within run-to-run spread)"), "{table}");
    }
}
