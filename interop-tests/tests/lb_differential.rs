//! Differential test of load balancing across priorities and localities: the real Envoy and
//! Pinion get the same bootstrap (`bootstraps/lb.yaml`, only ports differ), one cluster per
//! scenario with STATIC endpoints in priorities and localities, some with EDS
//! `health_status` UNHEALTHY or DEGRADED (every host is a real backend, so traffic sent to
//! a host it should not reach is seen). Each proxy gets `N` sequential requests per
//! scenario; the share of each backend must be within `TOLERANCE` percentage points of the
//! expected share (Envoy 1.40's priority load, panic and locality arithmetic) and within
//! `PAIR_TOLERANCE` of the other proxy's share (a host expected to get nothing must get
//! nothing), and so must the share of picks `lb_healthy_panic` counts (exactly, where it is
//! none or all).
//!
//! The expected shares are exact for the deterministic parts (locality and weighted
//! schedules) and binomial for random ones (the priority draw, random picks): with
//! N = 1000 a share's standard deviation is at most 1.6 points, so the tolerance 7 is 4.4
//! standard deviations, and 10 for the difference of two proxies' shares (deviation at most
//! 2.2). A wrong split (say 50/50 for 70/30) is far outside either.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs a single proxy; `INTEROP_VERBOSE=1` prints the
//! observed shares.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    empty, free_port, http1_client_to, send_full, spawn_http_backend_named, Backend, BackendKind, HealthBackend,
    ProxyKind, ProxyProcess, TestClient,
};

/// Requests per scenario and proxy.
const N: usize = 1000;
/// Allowed distance (percentage points) of a host's share from the expected one.
const TOLERANCE: f64 = 7.0;
/// Allowed distance (percentage points) between the two proxies' shares.
const PAIR_TOLERANCE: f64 = 10.0;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct Scenario {
    /// Cluster name and route prefix.
    name: &'static str,
    /// Expected share (percent) of each host, by position in the bootstrap.
    shares: Vec<f64>,
    /// Expected share (percent) of the requests counted by `lb_healthy_panic`.
    panic: f64,
}

fn scenarios() -> Vec<Scenario> {
    // Locality: zone a (weight 1, two hosts), zone b (weight 3 * min(1, 1.4 * 1/2) = 2.1,
    // one healthy host), zone c without a weight.
    let a = 100.0 / 3.1;
    vec![
        // P0 2 of 4 healthy: 70% there, 30% to P1.
        Scenario { name: "priority", shares: vec![35.0, 35.0, 0.0, 0.0, 15.0, 15.0], panic: 0.0 },
        // Factor 1.0: P0 50%, P1 the rest, P2 nothing.
        Scenario { name: "factor", shares: vec![50.0, 0.0, 50.0, 0.0], panic: 0.0 },
        // 1 of 3 healthy: panic, every host.
        Scenario { name: "panic", shares: vec![100.0 / 3.0; 3], panic: 100.0 },
        Scenario { name: "nopanic", shares: vec![100.0, 0.0, 0.0], panic: 0.0 },
        Scenario { name: "degraded", shares: vec![70.0, 30.0], panic: 0.0 },
        Scenario { name: "locality", shares: vec![a / 2.0, a / 2.0, 100.0 - a, 0.0, 0.0], panic: 0.0 },
        Scenario { name: "lrweighted", shares: vec![25.0, 75.0], panic: 0.0 },
        {
            let (p0, p1) = (100.0 * 60.0 / 85.0, 100.0 * 25.0 / 85.0);
            let mut shares = vec![p0 / 3.0, p0 / 3.0, p0 / 3.0, 0.0, 0.0];
            shares.extend([p1 / 4.0; 4]);
            Scenario { name: "partialpanic", shares, panic: p1 }
        },
        Scenario { name: "totalpanic", shares: [vec![58.0 / 4.0; 4], vec![42.0 / 3.0; 3]].concat(), panic: 100.0 },
        Scenario { name: "draining", shares: vec![50.0, 50.0, 0.0, 0.0, 0.0], panic: 0.0 },
        Scenario { name: "weightedhealth", shares: vec![50.0, 50.0, 0.0, 0.0, 0.0], panic: 0.0 },
        // Panic disabled and no healthy host: nothing to pick.
        Scenario { name: "nonehealthy", shares: vec![0.0, 0.0], panic: 0.0 },
        Scenario { name: "localitydegraded", shares: vec![46.0, 54.0 * 0.7 / 1.7, 54.0 / 1.7], panic: 0.0 },
    ]
}

/// What one proxy did in one scenario.
#[derive(Debug, Clone, PartialEq)]
struct Obs {
    /// Share (percent) of the requests each host got.
    shares: Vec<f64>,
    /// Non-200 answers.
    errors: usize,
    /// `cluster.<name>.lb_healthy_panic`.
    panic: u64,
    /// `cluster.<name>.upstream_cx_none_healthy`.
    none_healthy: u64,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn stat(p: &ProxyProcess, name: &str) -> u64 {
    let body = p.admin_get("/stats").map(|(_, b)| b).unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

async fn run(kind: ProxyKind, scenarios: &[Scenario]) -> Result<BTreeMap<&'static str, Obs>, String> {
    let backends: BTreeMap<&str, Vec<Backend>> = scenarios
        .iter()
        .map(|s| {
            let hosts = (0..s.shares.len())
                .map(|i| spawn_http_backend_named(BackendKind::Http1, &format!("{}-{i}", s.name)))
                .collect();
            (s.name, hosts)
        })
        .collect();
    let (admin, port) = (free_port(), free_port());
    let mut vars: Vec<(String, String)> =
        vec![("ADMIN_PORT".into(), admin.to_string()), ("LISTEN_PORT".into(), port.to_string())];
    for (c, hs) in &backends {
        for (i, b) in hs.iter().enumerate() {
            vars.push((format!("{}_{i}", c.to_uppercase()), b.port().to_string()));
        }
    }
    let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let yaml = render_bootstrap("lb.yaml", &vars);
    let p = tokio::task::block_in_place(|| -> Result<ProxyProcess, String> {
        let mut p =
            ProxyProcess::try_spawn(kind, &yaml, &[]).map_err(|e| format!("{kind} could not be started: {e:#}"))?;
        p.wait_ready(admin, Duration::from_secs(20)).map_err(|e| format!("{kind} did not become ready: {e:#}"))?;
        Ok(p)
    })?;
    let client = http1_client_to(local(port));
    let mut out = BTreeMap::new();
    for s in scenarios {
        let mut errors = 0;
        for _ in 0..N {
            let req = Request::get(format!("http://{}/{}/", local(port), s.name)).body(empty()).expect("request");
            match send_full(&client, req, REQUEST_TIMEOUT).await {
                Ok(r) if r.status == 200 => {}
                Ok(_) => errors += 1,
                Err(e) => return Err(format!("{kind} GET /{}/: {e:#}", s.name)),
            }
        }
        let shares = backends[s.name].iter().map(|b| 100.0 * b.hit_count() as f64 / N as f64).collect();
        let (panic, none_healthy) = tokio::task::block_in_place(|| {
            (
                stat(&p, &format!("cluster.{}.lb_healthy_panic", s.name)),
                stat(&p, &format!("cluster.{}.upstream_cx_none_healthy", s.name)),
            )
        });
        out.insert(s.name, Obs { shares, errors, panic, none_healthy });
    }
    Ok(out)
}

/// Differences between an observation and the scenario's expectations.
fn check(s: &Scenario, o: &Obs) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, (&got, &want)) in o.shares.iter().zip(&s.shares).enumerate() {
        // A host that must get nothing gets nothing, exactly.
        let ok = if want == 0.0 { got == 0.0 } else { (got - want).abs() <= TOLERANCE };
        if !ok {
            problems.push(format!("host {i}: {got:.1}% of the requests, want {want:.1}%"));
        }
    }
    // Nothing may be picked (all shares 0): every request is a 503 "no healthy upstream".
    let want = if s.shares.iter().all(|&x| x == 0.0) { N } else { 0 };
    if o.errors != want || o.none_healthy != want as u64 {
        problems.push(format!("{} errors, {} upstream_cx_none_healthy, want {want}", o.errors, o.none_healthy));
    }
    let panic = 100.0 * o.panic as f64 / N as f64;
    let ok = if s.panic == 0.0 || s.panic == 100.0 { panic == s.panic } else { (panic - s.panic).abs() <= TOLERANCE };
    if !ok {
        problems.push(format!("lb_healthy_panic {} ({panic:.1}%), want {:.1}%", o.panic, s.panic));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_matches_envoy() {
    let t = Instant::now();
    let kinds = kinds();
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let scenarios = scenarios();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for kind in kinds {
        match tokio::time::timeout(Duration::from_secs(240), run(kind, &scenarios)).await {
            Ok(Ok(obs)) => runs.push((kind, obs)),
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push(format!("{kind}: timed out")),
        }
    }
    for (kind, obs) in &runs {
        for s in &scenarios {
            let o = &obs[s.name];
            if verbose {
                eprintln!("{kind} {}: {o:?}", s.name);
            }
            for p in check(s, o) {
                failures.push(format!("{kind} {}: {p}", s.name));
            }
        }
    }
    if let [(ka, a), (kb, b)] = runs.as_slice() {
        for s in &scenarios {
            let (x, y) = (&a[s.name], &b[s.name]);
            let close = x.shares.iter().zip(&y.shares).all(|(p, q)| (p - q).abs() <= PAIR_TOLERANCE);
            let panic_close = (x.panic as f64 - y.panic as f64).abs() <= PAIR_TOLERANCE * N as f64 / 100.0;
            if !close || !panic_close {
                failures.push(format!("{}: {ka} and {kb} differ:\n    {x:?}\n    {y:?}", s.name));
            }
        }
    }
    eprintln!("lb_differential: {} proxies in {:?}", runs.len(), t.elapsed());
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

/// The proxies to run (`INTEROP_ONLY`).
fn kinds() -> Vec<ProxyKind> {
    match std::env::var("INTEROP_ONLY").as_deref() {
        Err(_) | Ok("") | Ok("both") => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        Ok("envoy") => vec![ProxyKind::Envoy],
        Ok("pinion") => vec![ProxyKind::Pinion],
        Ok(other) => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    }
}

/// `health_flags` of the host at `port` in `/clusters`.
fn host_flags(p: &ProxyProcess, port: u16) -> String {
    let body = p.admin_get("/clusters").map(|(_, b)| b).unwrap_or_default();
    let prefix = format!("slow::127.0.0.1:{port}::health_flags::");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("").to_string()
}

fn wait_flags(p: &ProxyProcess, port: u16, want: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let got = host_flags(p, port);
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{}: host {port} never became {want} (is {got:?})", p.kind()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Share (percent) of `n` requests host `b` got.
async fn share_of(client: &TestClient, listen: SocketAddr, b: &HealthBackend, n: usize) -> Result<f64, String> {
    let before = b.traffic_hits();
    for _ in 0..n {
        let req = Request::get(format!("http://{listen}/x")).body(empty()).expect("request");
        match send_full(client, req, REQUEST_TIMEOUT).await {
            Ok(r) if r.status == 200 => {}
            other => return Err(format!("GET /x: {:?}", other.map(|r| r.status))),
        }
    }
    Ok(100.0 * (b.traffic_hits() - before) as f64 / n as f64)
}

/// Slow start on one proxy: B's share of 100 requests sent right after it passes active
/// health checking again, and of 400 requests once its window is over.
async fn slow_start_run(kind: ProxyKind) -> Result<(f64, f64), String> {
    let (a, b) = (HealthBackend::spawn("a"), HealthBackend::spawn("b"));
    let (admin, port) = (free_port(), free_port());
    let yaml = render_bootstrap(
        "lb_slow_start.yaml",
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", port.to_string()),
            ("A_PORT", a.addr.port().to_string()),
            ("B_PORT", b.addr.port().to_string()),
        ],
    );
    let listen = local(port);
    let client = http1_client_to(listen);
    let p = tokio::task::block_in_place(|| -> Result<ProxyProcess, String> {
        let mut p = ProxyProcess::try_spawn(kind, &yaml, &[]).map_err(|e| format!("{kind}: {e:#}"))?;
        p.wait_ready(admin, Duration::from_secs(20)).map_err(|e| format!("{kind} not ready: {e:#}"))?;
        Ok(p)
    })?;
    // Both hosts started their window together; let it pass.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    b.set_health(503, &[]);
    tokio::task::block_in_place(|| wait_flags(&p, b.addr.port(), "/failed_active_hc"))?;
    b.set_health(200, &[]);
    tokio::task::block_in_place(|| wait_flags(&p, b.addr.port(), "healthy"))?;
    // Early in B's window its weight is 10% of A's (the ramp is below min_weight_percent).
    let early = share_of(&client, listen, &b, 100).await?;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let late = share_of(&client, listen, &b, 400).await?;
    Ok((early, late))
}

/// A host that passes active health checking again ramps up over `slow_start_window`
/// (round robin), in Envoy and in Pinion: right after its return B's weight is
/// `min_weight_percent` (10%) of A's, far below the 50% plain round robin gives it, and
/// after the window it is back to 50%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_matches_envoy() {
    let mut failures = Vec::new();
    for kind in kinds() {
        match tokio::time::timeout(Duration::from_secs(60), slow_start_run(kind)).await {
            Ok(Ok((early, late))) => {
                eprintln!("slow start {kind}: B got {early:.1}% early in its window, {late:.1}% after");
                // Weight 0.1 (min_weight_percent) against A's 1: about 9%.
                if !(3.0..=18.0).contains(&early) {
                    failures.push(format!("{kind}: B got {early:.1}% early in its slow-start window, want 3-18%"));
                }
                if (late - 50.0).abs() > 5.0 {
                    failures.push(format!("{kind}: B got {late:.1}% after its window, want 50% +- 5"));
                }
            }
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push(format!("{kind}: timed out")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The checks must notice a wrong observation (guards against a vacuous harness).
#[test]
fn check_reports_differences() {
    let s = Scenario { name: "x", shares: vec![70.0, 30.0, 0.0], panic: 100.0 };
    let o = Obs { shares: vec![50.0, 49.0, 1.0], errors: 1, panic: 0, none_healthy: 0 };
    let problems = check(&s, &o);
    assert_eq!(problems.len(), 5, "{problems:?}");
    let good = Obs { shares: vec![72.0, 28.0, 0.0], errors: 0, panic: N as u64, none_healthy: 0 };
    assert!(check(&s, &good).is_empty());
}
