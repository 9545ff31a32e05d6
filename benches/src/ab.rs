//! `ab`: two proxy binaries, A and B (typically Pinion before and after a change), measured
//! exactly as `all` measures Pinion: the same scenarios ([`crate::run_rounds`] and
//! [`crate::run_one`]), the same bootstrap for both, a fresh proxy per run pinned to the proxy
//! core, runs alternating A, B, A, B. Optionally on a second bootstrap variant whose HTTP
//! connection manager carries fault, CORS and local rate limit filters that never act
//! ([`crate::proxies::with_filters`]). Reports CPU per request of each, B/A with a verdict,
//! and what the filters cost each binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::proxies::{Installed, Kind, Refused, Variant};
use crate::report::{self, ScenarioResults};
use crate::{procs, Env, Opts, Scenario, Who, LOAD_CORE, PROXY_CORE};

/// The scenarios `ab` runs without `--only`: HTTP/1.1 small and h2c, at saturation.
pub const DEFAULT_SCENARIOS: [&str; 2] = ["a_sat", "c"];

/// `ab`'s own options as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct AbArgs {
    /// `--a`.
    pub a: Option<PathBuf>,
    /// `--b`.
    pub b: Option<PathBuf>,
    /// `--label-a`.
    pub label_a: Option<String>,
    /// `--label-b`.
    pub label_b: Option<String>,
    /// `--variant`.
    pub variant: Option<String>,
}

impl AbArgs {
    /// Records `--<flag> value`.
    pub fn set(&mut self, flag: &str, value: &str) -> anyhow::Result<()> {
        let v = Some(value.to_string());
        match flag {
            "--a" => self.a = Some(PathBuf::from(value)),
            "--b" => self.b = Some(PathBuf::from(value)),
            "--label-a" => self.label_a = v,
            "--label-b" => self.label_b = v,
            "--variant" => self.variant = v,
            other => anyhow::bail!("{other} is not an option of `ab`"),
        }
        Ok(())
    }

    /// Checks them and fills in the defaults.
    pub fn finish(self) -> anyhow::Result<AbOpts> {
        let a = self.a.context("ab needs --a BINARY")?;
        let b = self.b.context("ab needs --b BINARY")?;
        let label_a = self.label_a.unwrap_or_else(|| "A".into());
        let label_b = self.label_b.unwrap_or_else(|| "B".into());
        anyhow::ensure!(label_a != label_b, "--label-a and --label-b must differ");
        let variants = match self.variant.as_deref().unwrap_or("default") {
            "both" => vec![Variant::Default, Variant::Filters],
            list => {
                let mut v = vec![];
                for name in list.split(',') {
                    let variant = Variant::parse(name).with_context(|| {
                        format!("--variant default|filters|resilience|both or a comma-separated list, not {name:?}")
                    })?;
                    anyhow::ensure!(!v.contains(&variant), "--variant {list}: {name} twice");
                    v.push(variant);
                }
                v
            }
        };
        Ok(AbOpts { a, b, label_a, label_b, variants })
    }
}

/// What `ab` compares.
#[derive(Clone, Debug)]
pub struct AbOpts {
    /// Binary A (the baseline).
    pub a: PathBuf,
    /// Binary B (compared with A).
    pub b: PathBuf,
    /// A's name in the report.
    pub label_a: String,
    /// B's name in the report.
    pub label_b: String,
    /// Bootstrap variants, in run order within each round.
    pub variants: Vec<Variant>,
}

/// Which binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// The baseline.
    A,
    /// The one compared with it.
    B,
}

/// A run's subject: a bootstrap variant and a binary.
type Key = (Variant, Slot);

/// One of the two binaries.
struct Binary {
    slot: Slot,
    label: String,
    proxy: Installed,
    /// Version line, sha256 prefix and modification time, for the report.
    identity: String,
}

impl Binary {
    fn locate(slot: Slot, label: &str, path: &Path) -> anyhow::Result<Binary> {
        let flag = if slot == Slot::A { "--a" } else { "--b" };
        let bin = std::fs::canonicalize(path).with_context(|| format!("{flag} {}", path.display()))?;
        anyhow::ensure!(bin.is_file(), "{flag} {} is not a file", bin.display());
        let version = procs::first_line(&bin, &["--version"]);
        // Pinion takes Envoy's command line and bootstrap, so Envoy can stand in either slot;
        // the kind only names its processes.
        let kind = if version.to_lowercase().contains("envoy") { Kind::Envoy } else { Kind::Pinion };
        let sha = procs::first_line(Path::new("sha256sum"), &[&bin.display().to_string()]);
        let sha: String = sha.chars().take(12).collect();
        let modified = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| {
                procs::first_line(Path::new("date"), &["-u", "-d", &format!("@{}", d.as_secs()), "+%Y-%m-%d %H:%M UTC"])
            })
            .unwrap_or_else(|| "unknown".into());
        let identity = format!("{version}; sha256 {sha}…, modified {modified}");
        Ok(Binary { slot, label: label.to_string(), proxy: Installed { kind, bin, version }, identity })
    }

    fn slot_name(&self) -> &'static str {
        match self.slot {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// `A: before`, or just `A` when it has no label of its own.
    fn heading(&self) -> String {
        if self.label == self.slot_name() {
            self.label.clone()
        } else {
            format!("{}: {}", self.slot_name(), self.label)
        }
    }
}

/// The subject's name in log lines and reports: `<label>/<variant>`.
fn subject_name(b: &Binary, v: Variant) -> String {
    format!("{}/{}", b.label, v.name())
}

/// Runs `ab` (or `ab --smoke`): prints and writes the report, returns the exit code (0: every
/// run succeeded).
pub fn run(args: &[String], o: &Opts, ab: &AbOpts) -> anyhow::Result<i32> {
    let started = Instant::now();
    let date = procs::first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_at_start = crate::loadavg();
    let bins = [Binary::locate(Slot::A, &ab.label_a, &ab.a)?, Binary::locate(Slot::B, &ab.label_b, &ab.b)?];
    let selected = crate::selected_scenarios(o);
    let (sat_gen, rate_gen) = crate::locate_loadgens(o, selected.iter().any(|s| s.rate.is_some()))?;
    for b in &bins {
        eprintln!("[bench] {} = {}: {} ({})", b.slot_name(), b.label, b.proxy.bin.display(), b.identity);
    }
    eprintln!("[bench] load: {} ({})", sat_gen.version, sat_gen.bin.display());
    let (nproc, model, kernel, mem) = crate::machine();
    let env = Env::setup(o, &selected, sat_gen, rate_gen)?;
    let subjects: Vec<(Key, Who<'_>)> = ab
        .variants
        .iter()
        .flat_map(|&v| {
            bins.iter().map(move |b| ((v, b.slot), Who { name: subject_name(b, v), proxy: &b.proxy, variant: v }))
        })
        .collect();
    eprintln!(
        "[bench] ab: {} scenario(s) x {} variant(s) x 2 binaries x {} round(s) = {} runs",
        selected.len(),
        ab.variants.len(),
        o.runs,
        selected.len() * subjects.len() * o.runs as usize
    );
    let all: Vec<(Scenario, ScenarioResults<Key>)> =
        selected.iter().map(|sc| (sc.clone(), crate::run_rounds(&env, sc, &subjects, o.runs))).collect();
    let _ = std::fs::remove_dir_all(&env.scratch);
    let elapsed = started.elapsed();
    let failed: usize = all.iter().map(|(_, r)| r.failures.values().filter(|f| !f.is_empty()).count()).sum();

    if o.smoke {
        return Ok(smoke_summary(&all, &bins, ab, elapsed));
    }
    let md = render(&Render {
        date,
        machine: format!("{nproc} CPUs, {model}, {mem} RAM, Linux {kernel}"),
        command: crate::command_line(args),
        load: format!("{load_at_start} at the start, {} at the end", crate::loadavg()),
        loadgen: format!("{} (saturation){}", env.sat_gen.version, {
            if all.iter().any(|(s, _)| s.rate.is_some()) {
                format!(", {} (fixed rate)", env.rate_gen.version)
            } else {
                String::new()
            }
        }),
        o,
        ab,
        bins: &bins,
        all: &all,
        elapsed,
    });
    println!("{md}");
    if let Some(out) = &o.out {
        std::fs::write(out, &md).with_context(|| format!("write {}", out.display()))?;
        eprintln!("[bench] wrote {}", out.display());
    }
    for (v, b, scs, _) in refusals(&all, &bins) {
        eprintln!(
            "[bench] ab: {} ({}, {}) refused the {} bootstrap in {}",
            b.slot_name(),
            b.label,
            b.proxy.bin.display(),
            v.name(),
            scs.iter().map(|s| s.id).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `ab --smoke`: one line per scenario and subject; 0 if all served every request with a 2xx.
fn smoke_summary(all: &[(Scenario, ScenarioResults<Key>)], bins: &[Binary; 2], ab: &AbOpts, elapsed: Duration) -> i32 {
    let mut failed = 0;
    let mut total = 0;
    for (sc, r) in all {
        for &v in &ab.variants {
            for b in bins {
                total += 1;
                let k = (v, b.slot);
                let name = subject_name(b, v);
                let ok: u64 = r.samples.get(&k).map(|s| s.iter().map(|x| x.ok).sum()).unwrap_or(0);
                if let Some(refused) = r.refused.get(&k) {
                    failed += 1;
                    println!(
                        "ab smoke FAIL {} {name}: {} ({}) refused the {} bootstrap ({}); its output ends:\n{}{}",
                        sc.id,
                        b.slot_name(),
                        b.proxy.bin.display(),
                        v.name(),
                        refused.status,
                        indent(&refused.output_tail(15)),
                        reproduce(sc, v, b).map(|r| format!("\n    reproduce: {r}")).unwrap_or_default()
                    );
                } else if let Some(f) = r.failures.get(&k).filter(|f| !f.is_empty()) {
                    failed += 1;
                    println!("ab smoke FAIL {} {name}: {}", sc.id, f.join("; "));
                } else if ok == 0 {
                    failed += 1;
                    println!("ab smoke FAIL {} {name}: no run", sc.id);
                } else {
                    println!("ab smoke ok   {} {name}: {ok} requests, all 2xx", sc.id);
                }
            }
        }
    }
    if failed == 0 {
        println!(
            "ab smoke OK: all {total} scenario x variant x binary runs served every request with a 2xx ({:.0} s)",
            elapsed.as_secs_f64()
        );
        0
    } else {
        println!(
            "ab smoke FAILED: {failed} of {total} scenario x variant x binary runs did not serve every request with a 2xx ({:.0} s)",
            elapsed.as_secs_f64()
        );
        1
    }
}

/// A command that shows the refusal again, for the scenarios on the bench bootstrap (not the
/// (e) sidecars, whose bootstraps need their certificates).
fn reproduce(sc: &Scenario, v: Variant, b: &Binary) -> Option<String> {
    sc.mesh.is_none().then(|| {
        format!(
            "cargo run -p pinion-bench -- bootstrap {} > /tmp/bench-{}.yaml && {} --mode validate -c /tmp/bench-{}.yaml",
            v.name(),
            v.name(),
            b.proxy.bin.display(),
            v.name()
        )
    })
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Each (variant, binary) that refused its bootstrap: the scenarios where it did, and the
/// first refusal.
fn refusals<'a>(
    all: &'a [(Scenario, ScenarioResults<Key>)],
    bins: &'a [Binary; 2],
) -> Vec<(Variant, &'a Binary, Vec<&'a Scenario>, &'a Refused)> {
    let mut by: BTreeMap<Key, (Vec<&'a Scenario>, &Refused)> = BTreeMap::new();
    for (sc, r) in all {
        for (k, refused) in &r.refused {
            by.entry(*k).or_insert_with(|| (vec![], refused)).0.push(sc);
        }
    }
    by.into_iter()
        .filter_map(|((v, slot), (scs, r))| Some((v, bins.iter().find(|b| b.slot == slot)?, scs, r)))
        .collect()
}

struct Render<'a> {
    date: String,
    machine: String,
    command: String,
    load: String,
    loadgen: String,
    o: &'a Opts,
    ab: &'a AbOpts,
    bins: &'a [Binary; 2],
    all: &'a [(Scenario, ScenarioResults<Key>)],
    elapsed: Duration,
}

/// The markdown report.
fn render(i: &Render<'_>) -> String {
    let (o, ab) = (i.o, i.ab);
    let [a, b] = i.bins;
    let cpu = |r: &ScenarioResults<Key>, k: Key| r.spread_of(k, |s| Some(s.cpu_us_per_req));
    // A cell for a subject without samples: why.
    let missing = |r: &ScenarioResults<Key>, k: Key| {
        if r.refused.contains_key(&k) {
            "refused the bootstrap".to_string()
        } else if r.failures.get(&k).is_some_and(|f| !f.is_empty()) {
            "failed".to_string()
        } else {
            "—".to_string()
        }
    };
    let mut md = String::new();
    let _ = writeln!(md, "# A/B: {} vs {}\n", a.heading(), b.heading());
    let _ = writeln!(md, "Generated by `pinion-bench ab` (see [README.md](README.md), \"A/B mode\").\n");
    let _ = writeln!(md, "- date: {}", i.date);
    let _ = writeln!(md, "- machine: {}", i.machine);
    for bin in i.bins {
        let _ = writeln!(md, "- **{}**: `{}` ({})", bin.heading(), bin.proxy.bin.display(), bin.identity);
    }
    let _ = writeln!(md, "- load generator: {}", i.loadgen);
    let _ = writeln!(md, "- command: `{}` (took {:.0} s)", i.command, i.elapsed.as_secs_f64());
    let _ = writeln!(md, "- machine load (1/5/15-min load averages, whole machine, benchmark included): {}", i.load);
    let _ = writeln!(
        md,
        "- method: as `pinion-bench all` measures Pinion: proxy `taskset -c {PROXY_CORE}`, `--concurrency 1`, the same bootstrap \
         and command line for A and B; backend (in the harness) and load generator on core {LOAD_CORE}. {} round(s) per scenario; \
         each round runs {}, each run on a fresh proxy: {} s warm-up, then {} s measured at saturation. CPU µs/req = the \
         proxy's utime + stime over the measured load ÷ completed requests; cells are median (min–max) over the rounds",
        o.runs,
        ab.variants
            .iter()
            .map(|v| format!("A then B on the `{}` bootstrap", v.name()))
            .collect::<Vec<_>>()
            .join(", then "),
        o.warmup.as_secs_f64(),
        o.duration.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "- variants: `default` = the bench bootstrap (HCM with the router only); `filters` = the same with \
         `envoy.filters.http.fault` (abort and delay at 0%), `envoy.filters.http.cors` (policy per virtual host for an origin \
         the load never sends) and `envoy.filters.http.local_ratelimit` (10^9 tokens, 10^9 per second) before the router: \
         configured, never acting (`pinion-bench bootstrap filters` prints it); `resilience` = the same as `default` with \
         `circuit_breakers` (non-default thresholds, `track_remaining`) and `outlier_detection` (consecutive 5xx and gateway \
         failures, success rate, failure percentage, every second) on every cluster, never triggering \
         (`pinion-bench bootstrap resilience`)\n"
    );

    let _ = writeln!(md, "## CPU µs/request, B/A\n");
    let _ = writeln!(
        md,
        "| Scenario | Variant | {} | {} | B/A | Verdict |\n|---|---|---:|---:|---:|---|",
        a.heading(),
        b.heading()
    );
    for (sc, r) in i.all {
        for &v in &ab.variants {
            let (sa, sb) = (cpu(r, (v, Slot::A)), cpu(r, (v, Slot::B)));
            let cell = |s: Option<report::Spread>, k: Key| match s {
                Some(_) => report::fmt_spread(s, 1),
                None => missing(r, k),
            };
            let (ratio, verdict) = match (sa, sb) {
                (Some(x), Some(y)) if x.median > 0.0 => {
                    (format!("{:.3}x", y.median / x.median), report::ab_verdict(x, y))
                }
                _ => ("—".into(), "—".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {ratio} | {verdict} |",
                sc.label,
                v.name(),
                cell(sa, (v, Slot::A)),
                cell(sb, (v, Slot::B))
            );
        }
    }
    let _ = writeln!(
        md,
        "\nVerdict: \"within {tol:.0}%\" when B's median is within {tol:.0}% of A's; otherwise B is slower (more CPU per request) or \
         faster (less) by that much. \"the min–max ranges overlap\": the difference is no larger than the run-to-run spread, so \
         more rounds (or a quieter machine) are needed to call it.\n",
        tol = report::AB_TOLERANCE_PCT
    );

    // What each extra variant costs over `default`, for every one run next to it.
    let extras = ab.variants.iter().filter(|&&v| v != Variant::Default);
    for &extra in extras.filter(|_| ab.variants.contains(&Variant::Default)) {
        let what = match extra {
            Variant::Resilience => "circuit breakers and outlier detection",
            _ => "filters",
        };
        let _ = writeln!(md, "## Cost of the {what} ({} ÷ default, same binary)\n", extra.name());
        let _ = writeln!(md, "| Scenario | {} | {} |\n|---|---:|---:|", a.heading(), b.heading());
        for (sc, r) in i.all {
            let cost = |slot: Slot| match (cpu(r, (Variant::Default, slot)), cpu(r, (extra, slot))) {
                (Some(d), Some(f)) if d.median > 0.0 => format!(
                    "{:.3}x ({:+.1}%: {:.1} vs {:.1} µs)",
                    f.median / d.median,
                    (f.median / d.median - 1.0) * 100.0,
                    f.median,
                    d.median
                ),
                (d, f) => {
                    let why = |s: Option<report::Spread>, v: Variant| {
                        s.is_none().then(|| format!("{}: {}", v.name(), missing(r, (v, slot))))
                    };
                    let parts: Vec<String> = [why(d, Variant::Default), why(f, extra)].into_iter().flatten().collect();
                    format!("— ({})", parts.join(", "))
                }
            };
            let _ = writeln!(md, "| {} | {} | {} |", sc.label, cost(Slot::A), cost(Slot::B));
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## All figures\n");
    md.push_str(report::MAIN_HEADER);
    let names: Vec<(Key, String)> = ab
        .variants
        .iter()
        .flat_map(|&v| i.bins.iter().map(move |bin| ((v, bin.slot), format!("{} · {}", bin.heading(), v.name()))))
        .collect();
    let order: Vec<(Key, &str)> = names.iter().map(|(k, n)| (*k, n.as_str())).collect();
    for (sc, r) in i.all {
        md.push_str(&report::main_rows(sc.label, sc.rate.is_some(), r, &order));
    }
    let _ = writeln!(
        md,
        "\n\"proxy busy %\" well below 100% in a saturation row means something else (the load core, other processes) \
         limited the run; CPU µs/req stays comparable.\n"
    );

    let refused = refusals(i.all, i.bins);
    if !refused.is_empty() {
        let _ = writeln!(md, "## Refused bootstraps\n");
        for (v, bin, scs, r) in &refused {
            let _ = writeln!(
                md,
                "- **{} ({}, `{}`) refused the `{}` bootstrap** (exited during start, {}; twice) in {}. Its output ends:\n\n```text\n{}\n```\n",
                bin.slot_name(),
                bin.label,
                bin.proxy.bin.display(),
                v.name(),
                r.status,
                scs.iter().map(|s| s.id).collect::<Vec<_>>().join(", "),
                r.output_tail(15)
            );
            if let Some(cmd) = scs.first().and_then(|sc| reproduce(sc, *v, bin)) {
                let _ = writeln!(md, "  Reproduce: `{cmd}`\n");
            }
        }
    }
    let failures: Vec<String> = i
        .all
        .iter()
        .flat_map(|(sc, r)| {
            r.failures.iter().filter(|(k, _)| !r.refused.contains_key(k)).flat_map(move |((v, slot), f)| {
                let label = if *slot == Slot::A { &a.label } else { &b.label };
                f.iter().map(move |e| {
                    format!("- {} {label}/{}: {}", sc.id, v.name(), e.lines().next().unwrap_or("").replace('|', "/"))
                })
            })
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "## Failed runs\n");
        for f in failures {
            let _ = writeln!(md, "{f}");
        }
        let _ = writeln!(md);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants(v: &str) -> anyhow::Result<Vec<Variant>> {
        let args = AbArgs { a: Some("a".into()), b: Some("b".into()), variant: Some(v.into()), ..AbArgs::default() };
        args.finish().map(|o| o.variants)
    }

    #[test]
    fn variant_lists() {
        assert_eq!(variants("both").unwrap(), vec![Variant::Default, Variant::Filters]);
        assert_eq!(variants("default,resilience").unwrap(), vec![Variant::Default, Variant::Resilience]);
        assert_eq!(variants("resilience").unwrap(), vec![Variant::Resilience]);
        assert!(variants("default,default").is_err());
        assert!(variants("fast").is_err());
    }
}
