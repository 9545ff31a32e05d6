//! Differential test of active health checking: the real Envoy and Pinion get the same
//! bootstrap (`bootstraps/health_check.yaml`, only ports differ) and backends that fail on
//! command, and go through the same scenario. After every step (each waits for the state it
//! causes), `/clusters` health flags of every host and the `health_check.healthy` /
//! `.degraded` and `membership_*` gauges must be identical between the proxies and equal to
//! the expected values below (verified against Envoy 1.40). The `once` and `verify`
//! clusters are checked exactly once (60 s intervals), so all their `health_check.*`
//! counters must match exactly; the 100 ms clusters' counters depend on timing and are
//! compared with a tolerance.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs a single proxy; the default is both.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{free_port, HealthBackend, ProxyKind, ProxyProcess, TcpBackend};

const WAIT: Duration = Duration::from_secs(8);

/// The backends of one run, fresh per proxy (their states change during the scenario).
struct Backends {
    ok: HealthBackend,
    fail: HealthBackend,
    immediate: HealthBackend,
    degraded: HealthBackend,
    a: HealthBackend,
    b: HealthBackend,
    g: HealthBackend,
    tcp: TcpBackend,
    closed: u16,
    closed2: u16,
}

impl Backends {
    fn new() -> Backends {
        let b = Backends {
            ok: HealthBackend::spawn("ok"),
            fail: HealthBackend::spawn("fail"),
            immediate: HealthBackend::spawn("immediate"),
            degraded: HealthBackend::spawn("degraded"),
            a: HealthBackend::spawn("a"),
            b: HealthBackend::spawn("b"),
            g: HealthBackend::spawn("g"),
            tcp: TcpBackend::spawn(),
            closed: free_port(),
            closed2: free_port(),
        };
        b.fail.set_health(503, &[]);
        b.immediate.set_health(503, &[("x-envoy-immediate-health-check-fail", "true")]);
        b.degraded.set_health(200, &[("x-envoy-degraded", "true")]);
        b
    }

    /// Host labels by address as `/clusters` prints it.
    fn labels(&self) -> BTreeMap<String, &'static str> {
        let p = |port: u16| SocketAddr::from(([127, 0, 0, 1], port)).to_string();
        BTreeMap::from([
            (p(self.ok.addr.port()), "ok"),
            (p(self.fail.addr.port()), "fail"),
            (p(self.closed), "closed"),
            (p(self.immediate.addr.port()), "immediate"),
            (p(self.degraded.addr.port()), "degraded"),
            (format!("127.0.0.2:{}", self.ok.addr.port()), "draining"),
            (format!("127.0.0.3:{}", self.ok.addr.port()), "eds-unhealthy"),
            (p(self.closed2), "hc-port"),
            (format!("127.0.0.5:{}", self.closed), "hc-disabled"),
            (p(self.a.addr.port()), "a"),
            (p(self.b.addr.port()), "b"),
            (p(self.g.addr.port()), "g"),
            (p(self.tcp.addr.port()), "t"),
        ])
    }
}

/// `cluster/label` -> health flags.
type Flags = BTreeMap<String, String>;

fn flags(p: &ProxyProcess, labels: &BTreeMap<String, &'static str>) -> Flags {
    let (_, body) = p.admin_get("/clusters").expect("/clusters");
    body.lines()
        .filter_map(|l| {
            let (head, flags) = l.split_once("::health_flags::")?;
            let (cluster, addr) = head.split_once("::")?;
            let label = labels.get(addr).copied().unwrap_or("?");
            Some((format!("{cluster}/{label}"), flags.to_string()))
        })
        .collect()
}

fn stats(p: &ProxyProcess) -> BTreeMap<String, u64> {
    p.stats()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let keep = k.starts_with("cluster.") && (k.contains(".health_check.") || k.contains(".membership_"));
            if !keep || k.ends_with("membership_change") {
                return None;
            }
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The gauges compared exactly at every step.
fn gauges(s: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    s.iter()
        .filter(|(k, _)| k.ends_with(".healthy") || k.ends_with(".degraded") || k.contains(".membership_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// One step's observation.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    step: &'static str,
    flags: Flags,
    gauges: BTreeMap<String, u64>,
}

struct Run {
    steps: Vec<Snapshot>,
    /// `health_check.*` counters at the end.
    counters: BTreeMap<String, u64>,
}

fn wait_until(p: &ProxyProcess, labels: &BTreeMap<String, &'static str>, key: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let f = flags(p, labels);
        if f.get(key).map(String::as_str) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{}: {key} never became {want}: {f:?}\n{}", p.kind(), p.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(kind: ProxyKind) -> Run {
    let be = Backends::new();
    let labels = be.labels();
    let (admin, listen) = (free_port(), free_port());
    let port = |p: u16| p.to_string();
    let yaml = render_bootstrap(
        "health_check.yaml",
        &[
            ("ADMIN_PORT", port(admin)),
            ("LISTEN_PORT", port(listen)),
            ("OK_PORT", port(be.ok.addr.port())),
            ("FAIL_PORT", port(be.fail.addr.port())),
            ("CLOSED_PORT", port(be.closed)),
            ("CLOSED2_PORT", port(be.closed2)),
            ("IMMEDIATE_PORT", port(be.immediate.addr.port())),
            ("DEGRADED_PORT", port(be.degraded.addr.port())),
            ("A_PORT", port(be.a.addr.port())),
            ("B_PORT", port(be.b.addr.port())),
            ("G_PORT", port(be.g.addr.port())),
            ("TCP_PORT", port(be.tcp.addr.port())),
        ],
    );
    let mut p = ProxyProcess::spawn(kind, &yaml, &[]);
    p.wait_ready(admin, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}"));
    let mut steps = Vec::new();
    let mut snap = |step: &'static str, p: &ProxyProcess| {
        steps.push(Snapshot { step, flags: flags(p, &labels), gauges: gauges(&stats(p)) });
    };
    // Ready: every host had its first check.
    snap("initial", &p);

    // 429 is retriable: two in a row (the threshold) fail the host.
    be.b.set_health(429, &[]);
    wait_until(&p, &labels, "http/b", "/failed_active_hc");
    snap("b retriable failures", &p);
    be.b.set_health(200, &[]);
    wait_until(&p, &labels, "http/b", "healthy");
    snap("b back", &p);
    // 503 is not retriable: failed at once.
    be.b.set_health(503, &[("x-envoy-immediate-health-check-fail", "1")]);
    wait_until(&p, &labels, "http/b", "/failed_active_hc/excluded_via_immediate_hc_fail");
    snap("b immediate fail", &p);
    be.b.set_health(200, &[("x-envoy-degraded", "1")]);
    wait_until(&p, &labels, "http/b", "/degraded_active_hc");
    snap("b degraded", &p);
    be.b.set_health(200, &[]);
    wait_until(&p, &labels, "http/b", "healthy");

    be.tcp.stop();
    wait_until(&p, &labels, "tcp/t", "/failed_active_hc");
    snap("tcp refused", &p);
    be.tcp.start();
    wait_until(&p, &labels, "tcp/t", "healthy");

    be.g.set_health(503, &[]);
    wait_until(&p, &labels, "grpc/g", "/failed_active_hc");
    snap("grpc not serving", &p);
    be.g.set_health(200, &[]);
    wait_until(&p, &labels, "grpc/g", "healthy");
    snap("all back", &p);

    let counters = stats(&p).into_iter().filter(|(k, _)| k.contains(".health_check.")).collect();
    // The `http` checks carry the configured host and header, and Envoy's user agent.
    let (path, h) = be.a.last_health_request().expect("a checked");
    let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(
        (path.as_str(), hv("host"), hv("user-agent"), hv("x-hc")),
        ("/healthz", "configured.example".into(), "Envoy/HC".into(), "1".into()),
        "{kind}"
    );
    let (_, h) = be.ok.last_health_request().expect("ok checked");
    let host = h.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(host == "once" || host == "verify" || host == "ep.example", "{kind}: {host}");
    p.kill();
    Run { steps, counters }
}

/// Expected flags after the initial round (Envoy 1.40).
fn expected_initial_flags() -> Flags {
    [
        ("once/ok", "healthy"),
        ("once/fail", "/failed_active_hc"),
        ("once/closed", "/failed_active_hc"),
        ("once/immediate", "/failed_active_hc/excluded_via_immediate_hc_fail"),
        ("once/degraded", "/degraded_active_hc"),
        ("once/draining", "/failed_active_hc/eds_status_draining"),
        ("once/eds-unhealthy", "/failed_active_hc/failed_eds_health"),
        ("once/hc-port", "/degraded_eds_health"),
        ("once/hc-disabled", "healthy"),
        ("verify/ok", "/failed_active_hc"),
        ("http/a", "healthy"),
        ("http/b", "healthy"),
        ("tcp/t", "healthy"),
        ("grpc/g", "healthy"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Exact counters of the clusters checked once.
const EXACT: &[(&str, u64)] = &[
    ("cluster.once.health_check.attempt", 8),
    ("cluster.once.health_check.success", 3),
    ("cluster.once.health_check.failure", 5),
    ("cluster.once.health_check.network_failure", 3),
    ("cluster.once.health_check.passive_failure", 0),
    ("cluster.once.health_check.verify_cluster", 0),
    ("cluster.once.health_check.healthy", 3),
    ("cluster.once.health_check.degraded", 1),
    ("cluster.once.membership_total", 9),
    ("cluster.once.membership_healthy", 2),
    ("cluster.once.membership_degraded", 2),
    ("cluster.once.membership_excluded", 2),
    ("cluster.verify.health_check.attempt", 1),
    ("cluster.verify.health_check.failure", 1),
    ("cluster.verify.health_check.verify_cluster", 1),
    ("cluster.verify.health_check.healthy", 0),
    ("cluster.http.health_check.passive_failure", 0),
    ("cluster.http.health_check.network_failure", 0),
    ("cluster.http.health_check.healthy", 2),
    // Envoy 1.40 never takes the degraded gauge back when a host stops being degraded.
    ("cluster.http.health_check.degraded", 1),
    ("cluster.tcp.health_check.healthy", 1),
    ("cluster.grpc.health_check.healthy", 1),
    ("cluster.grpc.health_check.network_failure", 0),
];

#[test]
fn health_checks_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let runs: Vec<(ProxyKind, Run)> = kinds.iter().map(|k| (*k, run(*k))).collect();
    let mut failures = Vec::new();
    for (kind, r) in &runs {
        let initial = &r.steps[0].flags;
        if *initial != expected_initial_flags() {
            failures.push(format!("{kind}: initial flags {initial:#?}"));
        }
        let all: BTreeMap<String, u64> = r
            .counters
            .iter()
            .chain(r.steps.last().map(|s| &s.gauges).into_iter().flatten())
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, want) in EXACT {
            if all.get(*name) != Some(want) {
                failures.push(format!("{kind}: {name} = {:?}, expected {want}", all.get(*name)));
            }
        }
        // Every finished attempt is a success or a failure (one may be in flight per host).
        // Envoy's TCP checker also counts a failure when the host closes a reused
        // connection between checks, without an attempt: a few more results than attempts.
        for c in ["http", "tcp", "grpc"] {
            let get = |s: &str| r.counters.get(&format!("cluster.{c}.health_check.{s}")).copied().unwrap_or(0);
            let (attempt, done) = (get("attempt"), get("success") + get("failure"));
            if done > attempt + 2 || attempt > done + 2 || get("failure") == 0 {
                failures.push(format!("{kind}: {c}: attempt {attempt}, success+failure {done}"));
            }
        }
    }
    if let [(_, envoy), (_, pinion)] = runs.as_slice() {
        for (e, p) in envoy.steps.iter().zip(&pinion.steps) {
            if e != p {
                failures.push(format!("step '{}' differs:\nenvoy:  {e:?}\npinion: {p:?}", e.step));
            }
        }
        // Timing decides how often the 100 ms clusters were checked: within a factor of 2
        // (plus a few) of each other. Failures come from the scenario's steps: closer.
        for (name, ev) in &envoy.counters {
            let pv = pinion.counters.get(name).copied().unwrap_or(0);
            let (lo, hi) = (ev.min(&pv), *ev.max(&pv));
            let tolerance =
                if name.ends_with(".failure") || name.ends_with("network_failure") { hi / 2 + 3 } else { hi / 2 + 5 };
            if hi - lo > tolerance {
                failures.push(format!("{name}: envoy {ev}, pinion {pv}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
