//! Differential test of outlier detection (`Cluster.outlier_detection`): the real Envoy and
//! Pinion get the same bootstrap (`bootstraps/outlier_detection.yaml`, only ports and the
//! event log path differ), the same backends failing the same way, and the same traffic.
//! Compared per scenario: the statuses the client sees, the failing host's traffic after
//! its ejection, every `cluster.<scenario>.outlier_detection.*` stat, the hosts' health flags
//! in `/clusters`, and the outlier event log (Envoy's JSON lines, hosts by position); each
//! is also checked against the scenario's expectations (verified against Envoy 1.40).
//!
//! Each proxy runs alone with fresh backends (they fail on command, so their state must
//! not be shared), with one worker, so round robin spreads a run of requests exactly.
//! Where a step depends on the detector having acted (an ejection is decided on the main
//! thread, after the response that caused it), the test waits for `/clusters` to show it
//! instead of racing it, so the counts are exact. Only timing is given a tolerance: the
//! time an ejected host stays out (`base_ejection_time` 1s, found by a 200 ms sweep).
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs a single proxy; `INTEROP_VERBOSE=1` prints the
//! observations.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    empty, free_port, http1_client_to, send_full, spawn_http_backend_named, Backend, BackendKind, ProxyKind,
    ProxyProcess, TestClient,
};
use serde_json::Value;

/// What a cluster's host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostKind {
    /// Answers 200.
    Ok,
    /// Answers this status to everything (until told otherwise).
    Fails(u16),
    /// Nothing listens: every connection attempt is refused.
    Refused,
}

/// How a scenario drives traffic.
#[derive(Clone, Copy, Debug)]
enum Drive {
    /// Send until `failures` non-200 answers came (at most 40 requests), wait for the
    /// failing host (the last one) to be ejected, then send `after` requests.
    EjectAfter { failures: usize, after: usize },
    /// Like `EjectAfter`, then heal the host, wait for it to come back and send `after`
    /// more requests, which must reach it again.
    EjectAndReturn { failures: usize, after: usize },
    /// Send exactly this many requests.
    Fixed(usize),
    /// Send this many requests, then wait for an interval sweep to eject the failing host.
    Sweep(usize),
}

struct Scenario {
    /// Cluster name and route prefix.
    name: &'static str,
    hosts: &'static [HostKind],
    drive: Drive,
    /// Expected non-200 statuses before the ejection (or in all, for `Fixed`/`Sweep`):
    /// (status, count). 200s before an ejection depend on round robin's start, so they are
    /// not counted.
    failures: &'static [(u16, usize)],
    /// Expected nonzero `outlier_detection.*` stats at the end (all others must be 0).
    stats: &'static [(&'static str, u64)],
    /// Expected `health_flags` of the failing host at the end.
    flags: &'static str,
    /// Expected event log lines of this cluster: (action, type, enforced, num_ejections).
    events: &'static [(&'static str, &'static str, bool, u64)],
}

const OK: HostKind = HostKind::Ok;
const EJECTED: &str = "/failed_outlier_check";

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "c5xx",
            hosts: &[OK, OK, HostKind::Fails(503)],
            drive: Drive::EjectAndReturn { failures: 3, after: 6 },
            failures: &[(503, 3)],
            stats: &[
                ("ejections_consecutive_5xx", 1),
                ("ejections_detected_consecutive_5xx", 1),
                ("ejections_enforced_consecutive_5xx", 1),
                ("ejections_enforced_total", 1),
                ("ejections_total", 1),
            ],
            flags: "healthy",
            events: &[("EJECT", "CONSECUTIVE_5XX", true, 1), ("UNEJECT", "CONSECUTIVE_5XX", false, 1)],
        },
        Scenario {
            name: "overflow",
            hosts: &[OK, OK, HostKind::Fails(503)],
            drive: Drive::Fixed(15),
            failures: &[(503, 5)],
            // The 3rd error is a consecutive 5xx and the 5th a consecutive gateway failure;
            // both overflow (33% > 10%): there is no "at least one host" rule without
            // always_eject_one_host. Overflows are not events.
            stats: &[
                ("ejections_consecutive_5xx", 1),
                ("ejections_detected_consecutive_5xx", 1),
                ("ejections_detected_consecutive_gateway_failure", 1),
                ("ejections_overflow", 2),
            ],
            flags: "healthy",
            events: &[],
        },
        Scenario {
            name: "gateway",
            hosts: &[OK, HostKind::Fails(502)],
            drive: Drive::Fixed(10),
            failures: &[(502, 5)],
            stats: &[("ejections_detected_consecutive_gateway_failure", 2)],
            flags: "healthy",
            // Not enforced, yet logged as EJECT events with enforced false.
            events: &[
                ("EJECT", "CONSECUTIVE_GATEWAY_FAILURE", false, 0),
                ("EJECT", "CONSECUTIVE_GATEWAY_FAILURE", false, 0),
            ],
        },
        Scenario {
            name: "gateway_enforced",
            hosts: &[OK, OK, HostKind::Fails(504)],
            drive: Drive::EjectAfter { failures: 2, after: 6 },
            failures: &[(504, 2)],
            stats: &[
                ("ejections_active", 1),
                ("ejections_detected_consecutive_gateway_failure", 1),
                ("ejections_enforced_consecutive_gateway_failure", 1),
                ("ejections_enforced_total", 1),
            ],
            flags: EJECTED,
            events: &[("EJECT", "CONSECUTIVE_GATEWAY_FAILURE", true, 1)],
        },
        Scenario {
            name: "connect",
            hosts: &[OK, OK, HostKind::Refused],
            drive: Drive::EjectAfter { failures: 2, after: 6 },
            failures: &[(503, 2)],
            stats: &[
                ("ejections_active", 1),
                ("ejections_consecutive_5xx", 1),
                ("ejections_detected_consecutive_5xx", 1),
                ("ejections_enforced_consecutive_5xx", 1),
                ("ejections_enforced_total", 1),
                ("ejections_total", 1),
            ],
            flags: EJECTED,
            events: &[("EJECT", "CONSECUTIVE_5XX", true, 1)],
        },
        Scenario {
            name: "local",
            hosts: &[OK, OK, HostKind::Refused],
            drive: Drive::EjectAfter { failures: 2, after: 6 },
            failures: &[(503, 2)],
            stats: &[
                ("ejections_active", 1),
                ("ejections_detected_consecutive_local_origin_failure", 1),
                ("ejections_enforced_consecutive_local_origin_failure", 1),
                ("ejections_enforced_total", 1),
            ],
            flags: EJECTED,
            events: &[("EJECT", "CONSECUTIVE_LOCAL_ORIGIN_FAILURE", true, 1)],
        },
        Scenario {
            name: "sr",
            hosts: &[OK, OK, OK, OK, HostKind::Fails(503)],
            drive: Drive::Sweep(50),
            failures: &[(503, 10)],
            // Envoy ejects the host twice in one sweep (success rate, then failure
            // percentage): ejections_active 2 for one host, num_ejections 2.
            stats: &[
                ("ejections_active", 2),
                ("ejections_detected_failure_percentage", 1),
                ("ejections_detected_success_rate", 1),
                ("ejections_enforced_failure_percentage", 1),
                ("ejections_enforced_success_rate", 1),
                ("ejections_enforced_total", 2),
                ("ejections_success_rate", 1),
                ("ejections_total", 1),
            ],
            flags: EJECTED,
            events: &[("EJECT", "SUCCESS_RATE", true, 1), ("EJECT", "FAILURE_PERCENTAGE", true, 2)],
        },
    ]
}

/// Every `outlier_detection.*` stat Envoy 1.40 has for a cluster with a detector.
const STAT_NAMES: &[&str] = &[
    "ejections_active",
    "ejections_consecutive_5xx",
    "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_detected_consecutive_local_origin_failure",
    "ejections_detected_degradation",
    "ejections_detected_failure_percentage",
    "ejections_detected_local_origin_failure_percentage",
    "ejections_detected_local_origin_success_rate",
    "ejections_detected_success_rate",
    "ejections_enforced_consecutive_5xx",
    "ejections_enforced_consecutive_gateway_failure",
    "ejections_enforced_consecutive_local_origin_failure",
    "ejections_enforced_failure_percentage",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_enforced_local_origin_success_rate",
    "ejections_enforced_success_rate",
    "ejections_enforced_total",
    "ejections_overflow",
    "ejections_success_rate",
    "ejections_total",
];

/// How long an ejected host may stay out in `c5xx` (base_ejection_time 1s, interval 200 ms,
/// measured from when the test saw the ejection): the only timing-dependent check.
const RETURN_WINDOW: (Duration, Duration) = (Duration::from_millis(700), Duration::from_millis(3000));
/// Bound for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one scenario looked like on one proxy.
#[derive(Debug, Default, Clone, PartialEq)]
struct Obs {
    /// Non-200 statuses before the ejection (all, without one).
    failures: BTreeMap<u16, usize>,
    /// Statuses after the ejection (and after the return): all must be 200.
    after: Vec<u16>,
    /// Requests the failing host got after its ejection / after its return.
    bad_hits_after: (u64, u64),
    /// The cluster's outlier stats.
    stats: BTreeMap<String, u64>,
    /// `health_flags` per host, by position.
    flags: Vec<String>,
    /// This cluster's event log lines, hosts by position.
    events: Vec<String>,
}

struct Run {
    kind: ProxyKind,
    obs: BTreeMap<&'static str, Obs>,
    /// How long the `c5xx` host stayed out.
    out_for: Option<Duration>,
    /// `/clusters` lines about outlier detection before any traffic (hosts by position).
    initial_outlier_lines: Vec<String>,
}

/// Backends (or refused ports) of every scenario, by cluster then position.
struct Hosts {
    by_cluster: BTreeMap<&'static str, Vec<(SocketAddr, Option<Backend>)>>,
}

impl Hosts {
    fn spawn(scenarios: &[Scenario]) -> Hosts {
        let mut by_cluster = BTreeMap::new();
        for s in scenarios {
            let hosts = s
                .hosts
                .iter()
                .enumerate()
                .map(|(i, k)| match k {
                    HostKind::Refused => (SocketAddr::from(([127, 0, 0, 1], free_port())), None),
                    HostKind::Ok | HostKind::Fails(_) => {
                        let b = spawn_http_backend_named(BackendKind::Http1, &format!("{}_{i}", s.name));
                        if let HostKind::Fails(code) = k {
                            b.force_status(Some(*code));
                        }
                        (b.addr, Some(b))
                    }
                })
                .collect();
            by_cluster.insert(s.name, hosts);
        }
        Hosts { by_cluster }
    }

    /// `cluster` and position of a host address.
    fn position(&self, addr: &str) -> Option<(&'static str, usize)> {
        self.by_cluster.iter().find_map(|(c, hs)| hs.iter().position(|(a, _)| a.to_string() == addr).map(|i| (*c, i)))
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn get(client: &TestClient, listen: SocketAddr, cluster: &str) -> u16 {
    let req = Request::get(format!("http://{listen}/{cluster}/")).body(empty()).expect("request");
    match send_full(client, req, REQUEST_TIMEOUT).await {
        Ok(r) => r.status.as_u16(),
        Err(e) => panic!("GET /{cluster}/: {e:#}"),
    }
}

/// `health_flags` of each host of `cluster`, by position.
fn health_flags(p: &ProxyProcess, hosts: &Hosts, cluster: &str) -> Vec<String> {
    let body = p.admin_get("/clusters").map(|(_, b)| b).unwrap_or_default();
    hosts.by_cluster[cluster]
        .iter()
        .map(|(a, _)| {
            let prefix = format!("{cluster}::{a}::health_flags::");
            body.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("<missing>").to_string()
        })
        .collect()
}

/// Poll until the last host of `cluster` has `flags` (at most `within`); false on timeout.
fn wait_flags(p: &ProxyProcess, hosts: &Hosts, cluster: &str, flags: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if health_flags(p, hosts, cluster).last().is_some_and(|f| f == flags) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outlier_stats(p: &ProxyProcess, cluster: &str) -> BTreeMap<String, u64> {
    let prefix = format!("cluster.{cluster}.outlier_detection.");
    let body = p.admin_get("/stats").map(|(_, b)| b).unwrap_or_default();
    body.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let name = k.strip_prefix(&prefix)?;
            Some((name.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn bad_hits(hosts: &Hosts, cluster: &str) -> u64 {
    hosts.by_cluster[cluster].last().and_then(|(_, b)| b.as_ref()).map_or(0, |b| b.hit_count())
}

async fn run_scenario(
    p: &ProxyProcess,
    hosts: &Hosts,
    client: &TestClient,
    listen: SocketAddr,
    s: &Scenario,
) -> (Obs, Option<Duration>) {
    let mut o = Obs::default();
    let mut out_for = None;
    let count = |o: &mut Obs, status: u16| {
        if status != 200 {
            *o.failures.entry(status).or_default() += 1;
        }
    };
    match s.drive {
        Drive::Fixed(n) | Drive::Sweep(n) => {
            for _ in 0..n {
                let st = get(client, listen, s.name).await;
                count(&mut o, st);
            }
            if let Drive::Sweep(_) = s.drive {
                // Blocking admin polls, bounded.
                let ok = tokio::task::block_in_place(|| wait_flags(p, hosts, s.name, EJECTED, Duration::from_secs(5)));
                assert!(ok, "{}: {} did not eject the host in a sweep", s.name, p.kind());
            }
        }
        Drive::EjectAfter { failures, after } | Drive::EjectAndReturn { failures, after } => {
            let mut seen = 0;
            for _ in 0..40 {
                let st = get(client, listen, s.name).await;
                count(&mut o, st);
                seen += usize::from(st != 200);
                if seen == failures {
                    break;
                }
            }
            let ok = tokio::task::block_in_place(|| wait_flags(p, hosts, s.name, EJECTED, Duration::from_secs(3)));
            assert!(ok, "{}: {} did not eject the host", s.name, p.kind());
            let ejected_at = Instant::now();
            let before = bad_hits(hosts, s.name);
            for _ in 0..after {
                o.after.push(get(client, listen, s.name).await);
            }
            o.bad_hits_after.0 = bad_hits(hosts, s.name) - before;
            if let Drive::EjectAndReturn { .. } = s.drive {
                if let Some((_, Some(b))) = hosts.by_cluster[s.name].last() {
                    b.force_status(None);
                }
                let ok =
                    tokio::task::block_in_place(|| wait_flags(p, hosts, s.name, "healthy", Duration::from_secs(5)));
                assert!(ok, "{}: {} did not let the host back", s.name, p.kind());
                out_for = Some(ejected_at.elapsed());
                let before = bad_hits(hosts, s.name);
                for _ in 0..after {
                    o.after.push(get(client, listen, s.name).await);
                }
                o.bad_hits_after.1 = bad_hits(hosts, s.name) - before;
            }
        }
    }
    (o, out_for)
}

/// Read the event log (flushed every 50 ms by both proxies) once it stops growing.
fn read_event_log(path: &std::path::Path) -> Vec<Value> {
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if !now.is_empty() && now == last {
            break;
        }
        last = now;
    }
    last.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event log line {l:?}: {e}"))).collect()
}

/// An event line with the host by position and the time fields dropped.
fn event_summary(e: &Value, hosts: &Hosts) -> (String, String) {
    let url = e["upstream_url"].as_str().unwrap_or("");
    let (cluster, pos) = hosts.position(url).unwrap_or(("?", 0));
    let mut keys: Vec<&String> = e.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    keys.retain(|k| k.starts_with("eject_"));
    let detail = keys.first().map(|k| format!(" {k}={}", e[k.as_str()])).unwrap_or_default();
    (
        cluster.to_string(),
        format!(
            "{} {} enforced={} num_ejections={} host={pos} cluster_name={}{detail}",
            e["action"].as_str().unwrap_or("?"),
            e["type"].as_str().unwrap_or("?"),
            e["enforced"],
            e["num_ejections"],
            e["cluster_name"].as_str().unwrap_or("?"),
        ),
    )
}

async fn run(kind: ProxyKind, scenarios: &[Scenario]) -> Result<Run, String> {
    let hosts = Hosts::spawn(scenarios);
    let (admin, port) = (free_port(), free_port());
    let log = std::env::temp_dir().join(format!("outlier-events-{kind}-{}-{port}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut vars: Vec<(String, String)> = vec![
        ("ADMIN_PORT".into(), admin.to_string()),
        ("LISTEN_PORT".into(), port.to_string()),
        ("EVENT_LOG".into(), log.display().to_string()),
    ];
    for (c, hs) in &hosts.by_cluster {
        for (i, (a, _)) in hs.iter().enumerate() {
            vars.push((format!("{}_{i}", c.to_uppercase()), a.port().to_string()));
        }
    }
    let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let yaml = render_bootstrap("outlier_detection.yaml", &vars);
    let mut p = tokio::task::block_in_place(|| -> Result<ProxyProcess, String> {
        let mut p = ProxyProcess::try_spawn(kind, &yaml, &["--file-flush-interval-msec", "50"])
            .map_err(|e| format!("{kind} could not be started: {e:#}"))?;
        p.wait_ready(admin, Duration::from_secs(20)).map_err(|e| format!("{kind} did not become ready: {e:#}"))?;
        Ok(p)
    })?;
    let initial = p.admin_get("/clusters").map(|(_, b)| b).unwrap_or_default();
    let mut initial_outlier_lines: Vec<String> = initial
        .lines()
        .filter(|l| l.contains("::outlier::") || l.contains("success_rate::"))
        .map(|l| {
            let mut l = l.to_string();
            for (c, hs) in &hosts.by_cluster {
                for (i, (a, _)) in hs.iter().enumerate() {
                    l = l.replace(&format!("{c}::{a}::"), &format!("{c}::host{i}::"));
                }
            }
            l
        })
        .collect();
    initial_outlier_lines.sort();

    let listen = local(port);
    let client = http1_client_to(listen);
    let mut obs = BTreeMap::new();
    let mut out_for = None;
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    for s in scenarios {
        let started = Instant::now();
        let (mut o, t) = run_scenario(&p, &hosts, &client, listen, s).await;
        if verbose {
            eprintln!("{kind} {}: {:?}", s.name, started.elapsed());
        }
        out_for = out_for.or(t);
        o.stats = outlier_stats(&p, s.name);
        o.flags = health_flags(&p, &hosts, s.name);
        obs.insert(s.name, o);
    }
    let events = tokio::task::block_in_place(|| read_event_log(&log));
    let _ = std::fs::remove_file(&log);
    for e in &events {
        let (cluster, line) = event_summary(e, &hosts);
        if let Some(o) = obs.get_mut(cluster.as_str()) {
            o.events.push(line);
        }
    }
    // Close the keep-alive connection first: Pinion drains open connections on SIGTERM.
    drop(client);
    p.kill();
    Ok(Run { kind, obs, out_for, initial_outlier_lines })
}

/// Problems of one proxy's observation of `s` against the scenario's expectations.
fn check(s: &Scenario, o: &Obs) -> Vec<String> {
    let mut bad = Vec::new();
    let failures: BTreeMap<u16, usize> = s.failures.iter().copied().collect();
    if o.failures != failures {
        bad.push(format!("failures {:?}, want {failures:?}", o.failures));
    }
    if o.after.iter().any(|s| *s != 200) {
        bad.push(format!("statuses after the ejection {:?}, want all 200", o.after));
    }
    if o.bad_hits_after.0 != 0 {
        bad.push(format!("the ejected host got {} requests", o.bad_hits_after.0));
    }
    if let Drive::EjectAndReturn { after, .. } = s.drive {
        // Round robin over the hosts again.
        let want = (after / s.hosts.len()) as u64;
        if o.bad_hits_after.1 != want {
            bad.push(format!("the returned host got {} of {after} requests, want {want}", o.bad_hits_after.1));
        }
    }
    for name in STAT_NAMES {
        let want = s.stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
        match o.stats.get(*name) {
            Some(v) if *v == want => {}
            Some(v) => bad.push(format!("{name} = {v}, want {want}")),
            None => bad.push(format!("{name} missing")),
        }
    }
    for name in o.stats.keys() {
        if !STAT_NAMES.contains(&name.as_str()) {
            bad.push(format!("unexpected stat {name}"));
        }
    }
    if o.flags.last().map(String::as_str) != Some(s.flags) {
        bad.push(format!("health flags {:?}, want the failing host {}", o.flags, s.flags));
    }
    if o.flags[..o.flags.len() - 1].iter().any(|f| f != "healthy") {
        bad.push(format!("health flags {:?}: the good hosts must be healthy", o.flags));
    }
    let want: Vec<String> = s
        .events
        .iter()
        .map(|(action, ty, enforced, n)| format!("{action} {ty} enforced={enforced} num_ejections={n}"))
        .collect();
    let got: Vec<String> = o.events.iter().map(|e| e.split(" host=").next().unwrap_or_default().to_string()).collect();
    if got != want {
        bad.push(format!("events {got:?}, want {want:?}"));
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let scenarios = scenarios();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for kind in kinds {
        let t = Instant::now();
        match run(kind, &scenarios).await {
            Ok(r) => {
                eprintln!("outlier_detection: {kind} ran {} scenarios in {:?}", scenarios.len(), t.elapsed());
                runs.push(r);
            }
            Err(e) => failures.push(e),
        }
    }
    for r in &runs {
        for s in &scenarios {
            let o = &r.obs[s.name];
            if verbose {
                eprintln!("{} {}: {o:?}", r.kind, s.name);
            }
            for p in check(s, o) {
                failures.push(format!("{} {}: {p}", r.kind, s.name));
            }
        }
        match r.out_for {
            Some(t) if t >= RETURN_WINDOW.0 && t <= RETURN_WINDOW.1 => {}
            other => failures.push(format!("{}: c5xx host out for {other:?}, want within {RETURN_WINDOW:?}", r.kind)),
        }
        let all_unset = r.initial_outlier_lines.iter().all(|l| l.ends_with("::-1"));
        if r.initial_outlier_lines.is_empty() || !all_unset {
            failures.push(format!("{}: /clusters before traffic: {:?}", r.kind, r.initial_outlier_lines));
        }
    }
    if let [a, b] = runs.as_slice() {
        for s in &scenarios {
            let (x, y) = (&a.obs[s.name], &b.obs[s.name]);
            if x != y {
                failures.push(format!("{}: {} and {} differ:\n    {x:?}\n    {y:?}", s.name, a.kind, b.kind));
            }
        }
        if a.initial_outlier_lines != b.initial_outlier_lines {
            failures.push(format!(
                "/clusters outlier lines differ:\n    {:?}\n    {:?}",
                a.initial_outlier_lines, b.initial_outlier_lines
            ));
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

/// The checks must notice a wrong observation (guards against a vacuous harness).
#[test]
fn check_reports_differences() {
    let s = &scenarios()[0];
    let o = Obs {
        failures: [(503, 4)].into_iter().collect(),
        after: vec![200, 503],
        bad_hits_after: (1, 0),
        stats: BTreeMap::new(),
        flags: vec!["healthy".into(), EJECTED.into(), EJECTED.into()],
        events: Vec::new(),
    };
    let problems = check(s, &o);
    for needle in
        ["failures", "statuses after", "ejected host got", "returned host", "missing", "health flags", "events"]
    {
        assert!(problems.iter().any(|p| p.contains(needle)), "{needle} not reported: {problems:?}");
    }
}
