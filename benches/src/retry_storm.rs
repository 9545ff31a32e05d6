//! Scenario (r2) `r_retry`: a retry storm. The backend answers `503` to half the requests to
//! `/flaky` (each attempt independently, see `backend::flaky_fails`); the route retries on
//! `5xx` up to 3 times (Envoy's default back-off: 25 ms base, exponential, jittered). Three
//! bootstraps differ only in what bounds concurrent retries on the cluster ([`Limit`]): no
//! limit at all, the default `max_retries` (3), or a retry budget (20% of the active and
//! pending requests, at least 3). Each run counts client requests, the upstream requests
//! the backend saw, and the proxy's `upstream_rq_retry` / `upstream_rq_retry_overflow`: the
//! budget must cap the upstream amplification (upstream ÷ client) below the no-limit one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::backend::{FLAKY_FAIL_PERCENT, SMALL_BODY_LEN};
use crate::loadgen::Amount;
use crate::proxies::{self, Bootstrap, Installed, Kind};
use crate::report::{self, SmokeLine};
use crate::{client, procs, Env, Scenario};

/// What bounds concurrent retries on the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    /// `max_retries: 1000000`: every retry is admitted.
    Unlimited,
    /// No `circuit_breakers`: Envoy's default `max_retries` of 3 concurrent retries.
    DefaultMaxRetries,
    /// `retry_budget: { budget_percent: 20, min_retry_concurrency: 3 }`.
    Budget,
}

/// Every limit, in run and report order.
pub const LIMITS: [Limit; 3] = [Limit::Unlimited, Limit::DefaultMaxRetries, Limit::Budget];

/// The route's `num_retries`.
pub const NUM_RETRIES: u32 = 3;
/// The budget's `budget_percent`.
pub const BUDGET_PERCENT: f64 = 20.0;
/// The budget's `min_retry_concurrency`.
pub const MIN_RETRY_CONCURRENCY: u32 = 3;

impl Limit {
    /// Short name (run directories, log lines, failures).
    pub fn name(self) -> &'static str {
        match self {
            Limit::Unlimited => "no-limit",
            Limit::DefaultMaxRetries => "max_retries-3",
            Limit::Budget => "budget",
        }
    }

    /// What the cluster's thresholds say, for the report.
    fn describe(self) -> String {
        match self {
            Limit::Unlimited => "none (`max_retries: 1000000`)".into(),
            Limit::DefaultMaxRetries => "default `max_retries` (3, no `circuit_breakers`)".into(),
            Limit::Budget => {
                format!("`retry_budget` {BUDGET_PERCENT:.0}%, `min_retry_concurrency` {MIN_RETRY_CONCURRENCY}")
            }
        }
    }

    /// The cluster's `circuit_breakers`, if any.
    fn circuit_breakers(self) -> Option<Value> {
        match self {
            Limit::Unlimited => Some(json!({ "thresholds": [{ "priority": "DEFAULT", "max_retries": 1_000_000 }] })),
            Limit::DefaultMaxRetries => None,
            Limit::Budget => Some(json!({ "thresholds": [{
                "priority": "DEFAULT",
                // `budget_percent` is an `envoy.type.v3.Percent`, not a wrapper.
                "retry_budget": {
                    "budget_percent": { "value": BUDGET_PERCENT },
                    "min_retry_concurrency": MIN_RETRY_CONCURRENCY,
                },
            }] })),
        }
    }
}

/// The bench bootstrap (`proxies::envoy_bootstrap`) with the catch-all route retrying
/// (`retry_on: 5xx`, [`NUM_RETRIES`]) and its cluster `backend_h1` bounded by `limit`. YAML.
pub fn bootstrap(admin: u16, port: u16, backend: u16, limit: Limit) -> anyhow::Result<String> {
    let mut v: Value = serde_yaml::from_str(&proxies::envoy_bootstrap(admin, port, backend))?;
    let hcm = &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array_mut().context("no routes")?;
    let catch_all = routes.iter_mut().find(|r| r["match"]["prefix"] == "/").context("no catch-all route")?;
    anyhow::ensure!(catch_all["route"]["cluster"] == "backend_h1", "the catch-all route is not to backend_h1");
    catch_all["route"]["retry_policy"] = json!({ "retry_on": "5xx", "num_retries": NUM_RETRIES });
    let clusters = v["static_resources"]["clusters"].as_array_mut().context("no clusters")?;
    let cluster = clusters.iter_mut().find(|c| c["name"] == "backend_h1").context("no cluster backend_h1")?;
    if let Some(cb) = limit.circuit_breakers() {
        cluster["circuit_breakers"] = cb;
    }
    Ok(serde_yaml::to_string(&v)?)
}

/// One run of one proxy on one limit.
#[derive(Clone, Debug, Default)]
pub struct StormSample {
    /// Requests the load generator got a response to (any status).
    pub client: u64,
    /// Of those, 2xx.
    pub ok: u64,
    /// Requests the backend received over the run: first attempts and retries.
    pub upstream: u64,
    /// The proxy's `cluster.backend_h1.upstream_rq_retry` over the run.
    pub retry: u64,
    /// `upstream_rq_retry_overflow`.
    pub overflow: u64,
    /// `upstream_rq_retry_success`.
    pub retry_success: u64,
    /// `upstream_rq_retry_limit_exceeded`.
    pub limit_exceeded: u64,
    /// Client responses per second.
    pub rps: f64,
    /// Proxy CPU per client response, µs.
    pub cpu_us_per_req: f64,
}

impl StormSample {
    /// Upstream requests per client request.
    pub fn amplification(&self) -> f64 {
        self.upstream as f64 / self.client.max(1) as f64
    }
}

/// Every run of the scenario.
#[derive(Default)]
pub struct StormResults {
    /// Samples by proxy and limit, in run order.
    pub samples: BTreeMap<(Kind, Limit), Vec<StormSample>>,
    /// Failed runs by proxy and limit.
    pub failures: BTreeMap<(Kind, Limit), Vec<String>>,
}

impl StormResults {
    fn spread(&self, k: Kind, l: Limit, f: impl Fn(&StormSample) -> f64) -> Option<report::Spread> {
        let v: Vec<f64> = self.samples.get(&(k, l)).into_iter().flatten().map(f).collect();
        report::spread(&v)
    }

    /// The median of a count, as a whole number, or `—`.
    fn median_count(&self, k: Kind, l: Limit, f: fn(&StormSample) -> u64) -> String {
        self.spread(k, l, |s| f(s) as f64).map_or_else(|| "—".into(), |s| format!("{:.0}", s.median))
    }
}

/// `runs` rounds, each running Pinion then Envoy on every limit.
pub fn run(env: &Env, sc: &Scenario, pinion: &Installed, envoy: &Installed) -> StormResults {
    let mut res = StormResults::default();
    for round in 0..env.o.runs {
        for p in [pinion, envoy] {
            for limit in LIMITS {
                let t = Instant::now();
                match run_one(env, sc, p, limit, round) {
                    Ok(s) => {
                        eprintln!(
                            "[bench] {:<7} {}/{} run {}: {} client ({} 2xx), {} upstream ({:.2}x), retry {} overflow {}, {:.0} req/s, {:.1} µs/req  ({:.1}s)",
                            sc.id,
                            p.kind.name(),
                            limit.name(),
                            round + 1,
                            s.client,
                            s.ok,
                            s.upstream,
                            s.amplification(),
                            s.retry,
                            s.overflow,
                            s.rps,
                            s.cpu_us_per_req,
                            t.elapsed().as_secs_f64()
                        );
                        // A timed run cuts off the requests in flight at its deadline (at most one
                        // per connection, each with its attempts so far): the backend saw them,
                        // the client did not count them.
                        let slack = if env.o.smoke { 0 } else { u64::from(sc.conns) * u64::from(NUM_RETRIES + 1) };
                        if s.upstream.abs_diff(s.client + s.retry) > slack {
                            eprintln!(
                                "[bench] {} {}/{}: the backend saw {} requests, client requests + upstream_rq_retry = {}",
                                sc.id,
                                p.kind.name(),
                                limit.name(),
                                s.upstream,
                                s.client + s.retry
                            );
                        }
                        res.samples.entry((p.kind, limit)).or_default().push(s);
                    }
                    Err(e) => {
                        eprintln!(
                            "[bench] {} {}/{} run {} FAILED: {e:#}",
                            sc.id,
                            p.kind.name(),
                            limit.name(),
                            round + 1
                        );
                        res.failures.entry((p.kind, limit)).or_default().push(format!("{e:#}"));
                    }
                }
            }
        }
    }
    res
}

/// The retry counters of cluster `backend_h1` (admin `/stats`).
fn retry_counters(env: &Env, admin: u16) -> anyhow::Result<[u64; 4]> {
    let text = client::get_text(&env.rt, admin, "/stats?filter=upstream_rq_retry", Duration::from_secs(5))?;
    let stat = |name: &str| -> anyhow::Result<u64> {
        let full = format!("cluster.backend_h1.{name}");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == full).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
            .with_context(|| format!("no {full} in /stats"))
    };
    Ok([
        stat("upstream_rq_retry")?,
        stat("upstream_rq_retry_overflow")?,
        stat("upstream_rq_retry_success")?,
        stat("upstream_rq_retry_limit_exceeded")?,
    ])
}

fn run_one(env: &Env, sc: &Scenario, p: &Installed, limit: Limit, round: u32) -> anyhow::Result<StormSample> {
    let dir = env.scratch.join(format!("{}-{}-{}-{round}", sc.id, p.kind.name().to_lowercase(), limit.name()));
    let (admin, port) = (proxies::free_port()?, proxies::free_port()?);
    let b = Bootstrap { yaml: bootstrap(admin, port, env.backend.port(), limit)?, admin, port };
    let cpus = env.pinned.then_some(sc.proxy_cpus);
    let mut running = proxies::start_bootstrap(p, &dir, "proxy", &b, sc.workers, cpus, Duration::from_secs(30))?;
    // The retrying route forwards (a path the backend never fails).
    let probe = client::Probe {
        port,
        path: "/small".into(),
        h2: false,
        body: None,
        headers: vec![],
        expect_len: SMALL_BODY_LEN,
        grpc: false,
        tls_ca: None,
    };
    client::check(&env.rt, &probe, Duration::from_secs(5)).with_context(|| running.proc.log_tail())?;
    if !env.o.warmup.is_zero() {
        let w = env.sat_gen.run(&crate::load_spec(env, sc, port, Amount::Duration(env.o.warmup)), &dir)?;
        anyhow::ensure!(w.completed() > 0, "warm-up completed no request ({})", w.error_detail);
    }
    let amount = if env.o.smoke { Amount::Requests(sc.smoke_requests) } else { Amount::Duration(env.o.duration) };
    let c0 = retry_counters(env, admin)?;
    let hits0 = env.backend.hit_count();
    let t0 = procs::tree_cpu_ticks(running.proc.pid());
    let r = env.sat_gen.run(&crate::load_spec(env, sc, port, amount), &dir)?;
    let t1 = procs::tree_cpu_ticks(running.proc.pid());
    let upstream = env.backend.hit_count() - hits0;
    let c1 = retry_counters(env, admin)?;
    if let Some(st) = running.proc.exited() {
        anyhow::bail!("exited during the run: {st}\n{}", running.proc.log_tail());
    }
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        r.errors == 0 && r.completed() > 0,
        "{} 2xx, {} other statuses, {} without response: {}",
        r.ok,
        r.non_2xx,
        r.errors,
        r.error_detail
    );
    if let Amount::Requests(n) = amount {
        anyhow::ensure!(r.completed() == n, "{} of {n} requests answered", r.completed());
    }
    let d = |i: usize| c1[i].saturating_sub(c0[i]);
    let cpu_s = t1.saturating_sub(t0) as f64 / env.clk_tck as f64;
    Ok(StormSample {
        client: r.completed(),
        ok: r.ok,
        upstream,
        retry: d(0),
        overflow: d(1),
        retry_success: d(2),
        limit_exceeded: d(3),
        rps: r.rps,
        cpu_us_per_req: cpu_s * 1e6 / r.completed() as f64,
    })
}

/// `smoke`: for each proxy, every limit ran and the budget's amplification is below the
/// no-limit one.
pub fn smoke_lines(sc: &Scenario, r: &StormResults) -> Vec<SmokeLine> {
    let mut out = vec![];
    for k in [Kind::Pinion, Kind::Envoy] {
        let name = format!("{} {}", sc.id, k.name());
        let failed: Vec<String> = LIMITS
            .iter()
            .flat_map(|&l| r.failures.get(&(k, l)).into_iter().flatten().map(move |f| format!("{}: {f}", l.name())))
            .collect();
        if !failed.is_empty() {
            out.push(SmokeLine { ok: false, text: format!("{name}: {}", failed.join("; ")) });
            continue;
        }
        let amp = |l: Limit| r.spread(k, l, StormSample::amplification).map(|s| s.median);
        let sum =
            |l: Limit, f: fn(&StormSample) -> u64| -> u64 { r.samples.get(&(k, l)).into_iter().flatten().map(f).sum() };
        out.push(match (amp(Limit::Unlimited), amp(Limit::Budget)) {
            (Some(none), Some(budget)) => SmokeLine {
                ok: budget < none,
                text: format!(
                    "{name}: upstream/client {none:.2}x with no retry limit ({} retries), {:.2}x with the budget ({} retries, {} overflows){}",
                    sum(Limit::Unlimited, |s| s.retry),
                    budget,
                    sum(Limit::Budget, |s| s.retry),
                    sum(Limit::Budget, |s| s.overflow),
                    if budget < none { "" } else { ": the budget did not cap the amplification" }
                ),
            },
            _ => SmokeLine { ok: false, text: format!("{name}: no run") },
        });
    }
    out
}

/// The "(r2) Retry storm" section of RESULTS.md.
pub fn render(sc: &Scenario, r: &StormResults) -> String {
    let mut md = String::from("## (r2) Retry storm: retry budget against unbounded retries\n\n");
    let p_fail = FLAKY_FAIL_PERCENT as f64 / 100.0;
    let attempts: f64 = (0..=NUM_RETRIES).map(|i| p_fail.powi(i as i32)).sum();
    let _ = writeln!(
        md,
        "The backend answers `{}` with `503` to {FLAKY_FAIL_PERCENT}% of requests, each attempt independently; the \
         route has `retry_policy: {{retry_on: 5xx, num_retries: {NUM_RETRIES}}}` (Envoy's default back-off, 25 ms base), \
         the cluster one of three retry limits; HTTP/1.1 at saturation ({} connections, `--concurrency {}`, proxy on core \
         {}). Unbounded, every request costs {attempts:.3} upstream requests on average and {:.2}% still fail after {} \
         attempts. \"upstream\" is counted by the backend; the counters are the proxy's \
         `cluster.backend_h1.upstream_rq_retry*`. Medians over the runs ({} per proxy and limit); with a budget, \
         retries beyond it are refused (`upstream_rq_retry_overflow`) and the 503 goes to the client.\n",
        sc.path,
        sc.conns,
        sc.workers,
        sc.proxy_cpus,
        p_fail.powi(NUM_RETRIES as i32 + 1) * 100.0,
        NUM_RETRIES + 1,
        r.samples.values().map(Vec::len).max().unwrap_or(0),
    );
    let _ = writeln!(
        md,
        "| Proxy | retry limit | client requests | client 2xx | upstream requests | upstream ÷ client | `upstream_rq_retry` | `upstream_rq_retry_overflow` | `upstream_rq_retry_success` | `upstream_rq_retry_limit_exceeded` | req/s | CPU µs/client req |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for k in [Kind::Pinion, Kind::Envoy] {
        for l in LIMITS {
            if r.samples.get(&(k, l)).is_none_or(Vec::is_empty) {
                if let Some(f) = r.failures.get(&(k, l)).and_then(|f| f.first()) {
                    let first = f.lines().next().unwrap_or("").replace('|', "/");
                    let _ = writeln!(md, "| {} | {} | failed: {first} | | | | | | | | | |", k.name(), l.describe());
                }
                continue;
            }
            let n = |f: fn(&StormSample) -> u64| r.median_count(k, l, f);
            let ok_pct = r.spread(k, l, |s| s.ok as f64 * 100.0 / s.client.max(1) as f64);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} ({:.1}%) | {} | {} | {} | {} | {} | {} | {} | {} |",
                k.name(),
                l.describe(),
                n(|s| s.client),
                n(|s| s.ok),
                ok_pct.map_or(0.0, |s| s.median),
                n(|s| s.upstream),
                report::fmt_spread(r.spread(k, l, StormSample::amplification), 2),
                n(|s| s.retry),
                n(|s| s.overflow),
                n(|s| s.retry_success),
                n(|s| s.limit_exceeded),
                report::fmt_spread(r.spread(k, l, |s| s.rps), 0),
                report::fmt_spread(r.spread(k, l, |s| s.cpu_us_per_req), 1),
            );
        }
    }
    let _ = writeln!(md);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstraps_differ_only_in_the_retry_limit() {
        let plain: Value = serde_yaml::from_str(&proxies::envoy_bootstrap(1, 2, 3)).unwrap();
        for l in LIMITS {
            let mut v: Value = serde_yaml::from_str(&bootstrap(1, 2, 3, l).unwrap()).unwrap();
            let routes = &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                ["route_config"]["virtual_hosts"][0]["routes"];
            let policy = routes[2]["route"].as_object_mut().unwrap().remove("retry_policy");
            assert_eq!(policy, Some(json!({ "retry_on": "5xx", "num_retries": 3 })));
            let cluster = v["static_resources"]["clusters"][0].as_object_mut().unwrap();
            assert_eq!(cluster["name"], "backend_h1");
            assert_eq!(cluster.remove("circuit_breakers"), l.circuit_breakers());
            assert_eq!(v, plain, "{l:?}");
        }
        assert_eq!(
            Limit::Budget.circuit_breakers().unwrap()["thresholds"][0]["retry_budget"],
            json!({ "budget_percent": { "value": 20.0 }, "min_retry_concurrency": 3 })
        );
    }

    #[test]
    fn smoke_wants_the_budget_below_no_limit() {
        let sc = crate::scenarios().into_iter().find(|s| s.id == "r_retry").unwrap();
        let s = |client: u64, upstream: u64| StormSample { client, ok: client, upstream, ..StormSample::default() };
        let mut r = StormResults::default();
        for k in [Kind::Pinion, Kind::Envoy] {
            r.samples.insert((k, Limit::Unlimited), vec![s(1000, 1875)]);
            r.samples.insert((k, Limit::DefaultMaxRetries), vec![s(1000, 1100)]);
        }
        r.samples.insert((Kind::Pinion, Limit::Budget), vec![s(1000, 1200)]);
        r.samples.insert((Kind::Envoy, Limit::Budget), vec![s(1000, 1900)]);
        let lines = smoke_lines(&sc, &r);
        assert_eq!(lines.iter().map(|l| l.ok).collect::<Vec<_>>(), vec![true, false]);
        assert!(lines[1].to_string().contains("did not cap"), "{}", lines[1]);
        let table = render(&sc, &r);
        assert!(
            table.contains(
                "| Pinion | `retry_budget` 20%, `min_retry_concurrency` 3 | 1000 | 1000 (100.0%) | 1200 | 1.20 |"
            ),
            "{table}"
        );
    }
}
