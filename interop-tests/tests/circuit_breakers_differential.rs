//! Differential test of circuit breakers (`Cluster.circuit_breakers`, route `priority`):
//! the real Envoy and Pinion get the same bootstrap (`bootstraps/circuit_breakers.yaml`,
//! only ports differ), both with `--concurrency 2`, and the same scenarios, each against its
//! own cluster and a gate backend that holds requests open until the test opens it, so the
//! requests in flight are known when the counters and gauges are read:
//! - `rq`: `max_requests` 5, 20 concurrent requests on 20 connections (both workers);
//! - `cx`: `max_connections` 2 and `max_pending_requests` 3 on one worker's pool;
//! - `high`: a `HIGH` route against `HIGH` thresholds (with a retry budget and a runtime
//!   override), a `DEFAULT` route beside it;
//! - `pools`: `max_connection_pools` 1 with two hosts;
//! - `timeout`: per-host `max_connections` 1, a pending request ends with the route timeout;
//! - `h2`: HTTP/2 upstream streams against `max_requests` 3.
//!
//! Each observation (statuses, the overflow reply's body and headers, counters and gauges
//! while requests are held and after, `/clusters`) has an expected value checked for every
//! proxy, so the expectations are Envoy-verified; with both proxies the exact ones are also
//! compared between them. A few values depend on timing and have a range instead (see
//! `TOLERANCES`); they are not compared.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs a single proxy; `INTEROP_VERBOSE=1` prints every
//! observation.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    empty, free_port, h2c_client_to, http1_client_to, send_full, spawn_gate_backend, GateBackend, ProxyKind,
    ProxyProcess, Reply, TestClient,
};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const WAIT: Duration = Duration::from_secs(5);

/// An expected observation.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Exactly this text (and the same on both proxies).
    Is(&'static str),
    /// A number in this range, decided by timing; not compared between the proxies.
    Within(u64, u64),
}

use Want::{Is, Within};

/// Values that timing decides, and why; every other observation is exact.
const TOLERANCES: &[(&str, &str)] = &[
    (
        "cx.after.upstream_cx_overflow",
        "counted once per pass that gives freed connections to waiting requests: the two held \
         requests end in one pass or in two",
    ),
    ("h2.hold.upstream_cx_total", "one HTTP/2 connection per worker that got one of the requests"),
];

const OVERFLOW_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: overflow";

fn expected() -> Vec<(&'static str, Want)> {
    vec![
        // ---- rq: max_requests 5 over 20 connections on both workers ----
        ("rq.refused_at_once", Is("503x15")),
        ("rq.statuses", Is("200x5 503x15")),
        ("rq.upstream_arrivals", Is("5")),
        ("rq.overflow.body", Is(OVERFLOW_BODY)),
        ("rq.overflow.headers", Is("content-length content-type server x-envoy-overloaded")),
        ("rq.overflow.x-envoy-overloaded", Is("true")),
        ("rq.overflow.content-type", Is("text/plain")),
        ("rq.hold.upstream_rq_active_overflow", Is("15")),
        ("rq.hold.upstream_rq_pending_overflow", Is("0")),
        ("rq.hold.upstream_rq_total", Is("5")),
        ("rq.hold.upstream_rq_active", Is("5")),
        ("rq.hold.circuit_breakers.default.rq_open", Is("1")),
        ("rq.hold.circuit_breakers.default.remaining_rq", Is("0")),
        ("rq.hold.circuit_breakers.default.rq_pending_open", Is("0")),
        ("rq.hold.circuit_breakers.default.remaining_pending", Is("1024")),
        ("rq.hold.circuit_breakers.default.cx_open", Is("0")),
        ("rq.hold.circuit_breakers.default.rq_retry_open", Is("0")),
        ("rq.hold.circuit_breakers.default.remaining_retries", Is("3")),
        ("rq.hold.circuit_breakers.high.rq_open", Is("0")),
        ("rq.after.circuit_breakers.default.rq_open", Is("0")),
        ("rq.after.circuit_breakers.default.remaining_rq", Is("5")),
        ("rq.after.upstream_rq_active", Is("0")),
        ("rq.after.upstream_rq_200", Is("5")),
        ("rq.after.upstream_rq_503", Is("15")),
        ("rq.after.upstream_rq_completed", Is("20")),
        (
            "rq.stat_names",
            Is("circuit_breakers.default.cx_open circuit_breakers.default.cx_pool_open \
                circuit_breakers.default.remaining_cx circuit_breakers.default.remaining_cx_pools \
                circuit_breakers.default.remaining_pending circuit_breakers.default.remaining_retries \
                circuit_breakers.default.remaining_rq circuit_breakers.default.rq_open \
                circuit_breakers.default.rq_pending_open circuit_breakers.default.rq_retry_open \
                circuit_breakers.high.cx_open circuit_breakers.high.cx_pool_open circuit_breakers.high.rq_open \
                circuit_breakers.high.rq_pending_open circuit_breakers.high.rq_retry_open"),
        ),
        ("rq.clusters", Is("max_connections::1024 max_pending_requests::1024 max_requests::5 max_retries::3 | max_connections::1024 max_pending_requests::1024 max_requests::1024 max_retries::3")),
        // ---- cx: max_connections 2, max_pending_requests 3, one worker ----
        ("cx.refused_at_once", Is("503x5")),
        ("cx.statuses", Is("200x5 503x5")),
        ("cx.hold.upstream_cx_total", Is("2")),
        ("cx.hold.upstream_cx_overflow", Is("3")),
        ("cx.hold.upstream_rq_pending_total", Is("5")),
        ("cx.hold.upstream_rq_pending_active", Is("3")),
        ("cx.hold.upstream_rq_pending_overflow", Is("5")),
        ("cx.hold.upstream_rq_active_overflow", Is("0")),
        ("cx.hold.upstream_rq_total", Is("2")),
        ("cx.hold.circuit_breakers.default.cx_open", Is("1")),
        ("cx.hold.circuit_breakers.default.remaining_cx", Is("0")),
        ("cx.hold.circuit_breakers.default.rq_pending_open", Is("1")),
        ("cx.hold.circuit_breakers.default.remaining_pending", Is("0")),
        ("cx.hold.circuit_breakers.default.rq_open", Is("0")),
        ("cx.hold.circuit_breakers.default.remaining_rq", Is("1022")),
        ("cx.host.rq_pending_active", Is("3")),
        ("cx.after.upstream_cx_total", Is("2")),
        ("cx.after.upstream_cx_overflow", Within(4, 5)),
        ("cx.after.upstream_rq_total", Is("5")),
        ("cx.after.upstream_rq_pending_active", Is("0")),
        ("cx.after.circuit_breakers.default.remaining_pending", Is("3")),
        ("cx.after.circuit_breakers.default.cx_open", Is("1")),
        ("cx.after.upstream_rq_503", Is("5")),
        ("cx.upstream_connections", Is("2")),
        // ---- high: HIGH thresholds for the HIGH route ----
        ("high.refused", Is("503")),
        ("high.default_route", Is("200")),
        ("high.hold.circuit_breakers.high.rq_open", Is("1")),
        ("high.hold.circuit_breakers.high.remaining_rq", Is("0")),
        ("high.hold.circuit_breakers.high.remaining_retries", Is("0")),
        ("high.hold.circuit_breakers.high.rq_retry_open", Is("0")),
        ("high.hold.circuit_breakers.high.remaining_pending", Is("6")),
        ("high.hold.circuit_breakers.default.rq_open", Is("0")),
        ("high.hold.upstream_rq_active_overflow", Is("1")),
        ("high.clusters", Is("max_connections::1024 max_pending_requests::1024 max_requests::1024 max_retries::3 | max_connections::1024 max_pending_requests::6 max_requests::1 max_retries::2")),
        // ---- pools: max_connection_pools 1, two hosts ----
        ("pools.statuses", Is("200x2 503x2")),
        ("pools.alternate", Is("yes")),
        ("pools.refused_body", Is("no healthy upstream")),
        ("pools.upstream_cx_pool_overflow", Is("2")),
        ("pools.circuit_breakers.default.cx_pool_open", Is("1")),
        ("pools.circuit_breakers.default.remaining_cx_pools", Is("0")),
        ("pools.upstream_rq_503", Is("2")),
        ("pools.upstream_rq_total", Is("2")),
        // ---- timeout: per-host max_connections 1, pending until the route timeout ----
        ("timeout.status", Is("504")),
        ("timeout.body", Is("upstream request timeout")),
        ("timeout.upstream_cx_total", Is("1")),
        ("timeout.upstream_cx_overflow", Is("1")),
        ("timeout.upstream_rq_pending_total", Is("2")),
        ("timeout.upstream_rq_pending_active", Is("0")),
        ("timeout.upstream_rq_cancelled", Is("1")),
        ("timeout.upstream_rq_timeout", Is("1")),
        ("timeout.upstream_rq_total", Is("1")),
        ("timeout.upstream_rq_504", Is("1")),
        ("timeout.held", Is("200")),
        // ---- h2: HTTP/2 upstream, max_requests 3 ----
        ("h2.refused_at_once", Is("503x5")),
        ("h2.statuses", Is("200x3 503x5")),
        ("h2.hold.upstream_cx_total", Within(1, 2)),
        ("h2.hold.upstream_rq_active_overflow", Is("5")),
        ("h2.hold.upstream_rq_total", Is("3")),
        ("h2.hold.circuit_breakers.default.remaining_rq", Is("0")),
        ("h2.hold.circuit_breakers.default.rq_open", Is("1")),
    ]
}

// ---------------------------------------------------------------------------------
// Running a proxy through the scenarios
// ---------------------------------------------------------------------------------

struct Gates {
    rq: GateBackend,
    cx: GateBackend,
    high: GateBackend,
    pools_a: GateBackend,
    pools_b: GateBackend,
    timeout: GateBackend,
    h2: GateBackend,
}

struct Target {
    kind: ProxyKind,
    proc: ProxyProcess,
    addr: SocketAddr,
    gates: Gates,
    obs: Vec<(String, String)>,
}

fn start(kind: ProxyKind) -> Result<Target, String> {
    let gates = Gates {
        rq: spawn_gate_backend(),
        cx: spawn_gate_backend(),
        high: spawn_gate_backend(),
        pools_a: spawn_gate_backend(),
        pools_b: spawn_gate_backend(),
        timeout: spawn_gate_backend(),
        h2: spawn_gate_backend(),
    };
    let (admin, port) = (free_port(), free_port());
    let p = |g: &GateBackend| g.addr.port().to_string();
    let vars = [
        ("ADMIN_PORT", admin.to_string()),
        ("LISTEN_PORT", port.to_string()),
        ("RQ_PORT", p(&gates.rq)),
        ("CX_PORT", p(&gates.cx)),
        ("HIGH_PORT", p(&gates.high)),
        ("POOLS_A_PORT", p(&gates.pools_a)),
        ("POOLS_B_PORT", p(&gates.pools_b)),
        ("TIMEOUT_PORT", p(&gates.timeout)),
        ("H2_PORT", p(&gates.h2)),
    ];
    let yaml = render_bootstrap("circuit_breakers.yaml", &vars);
    let mut proc = ProxyProcess::try_spawn(kind, &yaml, &["--concurrency", "2"])
        .map_err(|e| format!("{kind} could not be started: {e:#}"))?;
    proc.wait_ready(admin, READY_TIMEOUT).map_err(|e| format!("{kind} did not become ready: {e:#}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("{kind} ready but its listener {addr} is not accepting\n{}", proc.logs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Target { kind, proc, addr, gates, obs: Vec::new() })
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Target {
    fn note(&mut self, key: impl Into<String>, value: impl ToString) {
        self.obs.push((key.into(), value.to_string()));
    }

    /// All of `/stats` as a map.
    fn stats(&self) -> BTreeMap<String, String> {
        let s = blocking(|| self.proc.stats());
        s.lines().filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_string(), v.trim().to_string()))).collect()
    }

    /// Note `<scenario>.<phase><name>` for each stat `cluster.<stat_cluster>.<name>`.
    fn note_stats(&mut self, prefix: &str, stat_cluster: &str, names: &[&str]) {
        let all = self.stats();
        for n in names {
            let v = all.get(&format!("cluster.{stat_cluster}.{n}")).cloned().unwrap_or_else(|| "<absent>".into());
            self.note(format!("{prefix}{n}"), v);
        }
    }

    fn wait_stat(&self, name: &str, want: &str) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.stats().get(name).cloned();
            if got.as_deref() == Some(want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: {name} is {got:?}, want {want} after {WAIT:?}", self.kind));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The four circuit breaker lines of each priority of `cluster` in `/clusters`, as
    /// `default | high`.
    fn clusters_breakers(&self, cluster: &str) -> String {
        let (_, text) = blocking(|| self.proc.admin_get("/clusters")).unwrap_or((0, String::new()));
        ["default", "high"]
            .iter()
            .map(|p| {
                let prefix = format!("{cluster}::{p}_priority::");
                text.lines().filter_map(|l| l.strip_prefix(&prefix)).collect::<Vec<_>>().join(" ")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// `circuit_breakers` of `cluster` in `/clusters?format=json`.
    fn clusters_json(&self, cluster: &str) -> Value {
        let (_, text) = blocking(|| self.proc.admin_get("/clusters?format=json")).unwrap_or((0, String::new()));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v["cluster_statuses"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == cluster))
            .map(|c| c["circuit_breakers"].clone())
            .unwrap_or(Value::Null)
    }

    fn host_stat(&self, cluster: &str, host: SocketAddr, name: &str) -> String {
        let (_, text) = blocking(|| self.proc.admin_get("/clusters")).unwrap_or((0, String::new()));
        let prefix = format!("{cluster}::{host}::{name}::");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("<absent>").to_string()
    }
}

fn get(path: &str) -> Request<pinion_testkit::ReqBody> {
    Request::get(format!("http://cb.example.com{path}")).body(empty()).expect("request")
}

type Pending = tokio::task::JoinHandle<Result<Reply, String>>;

fn spawn_get(client: &TestClient, path: &'static str) -> Pending {
    let client = client.clone();
    tokio::spawn(
        async move { send_full(&client, get(path), Duration::from_secs(15)).await.map_err(|e| format!("{e:#}")) },
    )
}

/// Wait until `n` of `tasks` are done; returns their replies and the rest.
async fn finished(mut tasks: Vec<Pending>, n: usize) -> Result<(Vec<Reply>, Vec<Pending>), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tasks.iter().filter(|t| t.is_finished()).count() < n {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("fewer than {n} responses within {WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (done, rest): (Vec<_>, Vec<_>) = tasks.drain(..).partition(|t| t.is_finished());
    let mut out = Vec::new();
    for t in done {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok((out, rest))
}

async fn all(tasks: Vec<Pending>) -> Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// `200x5 503x15`.
fn status_counts<'a>(replies: impl IntoIterator<Item = &'a Reply>) -> String {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for r in replies {
        *counts.entry(r.status.as_u16()).or_default() += 1;
    }
    counts.iter().map(|(s, n)| format!("{s}x{n}")).collect::<Vec<_>>().join(" ")
}

fn header(r: &Reply, name: &str) -> String {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("<absent>").to_string()
}

async fn scenario_rq(t: &mut Target) -> Result<(), String> {
    // 20 concurrent requests, each on its own connection: both workers get some.
    let client = http1_client_to(t.addr);
    let tasks: Vec<Pending> = (0..20).map(|_| spawn_get(&client, "/rq/hold")).collect();
    blocking(|| t.gates.rq.wait_held(5, WAIT)).map_err(|e| format!("{e:#}"))?;
    let (refused, held) = finished(tasks, 15).await?;
    t.note("rq.refused_at_once", status_counts(&refused));
    if let Some(r) = refused.first() {
        t.note("rq.overflow.body", String::from_utf8_lossy(&r.body));
        let mut names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).filter(|k| *k != "date").collect();
        names.sort();
        t.note("rq.overflow.headers", names.join(" "));
        t.note("rq.overflow.x-envoy-overloaded", header(r, "x-envoy-overloaded"));
        t.note("rq.overflow.content-type", header(r, "content-type"));
    }
    t.note_stats(
        "rq.hold.",
        "rq_stats",
        &[
            "upstream_rq_active_overflow",
            "upstream_rq_pending_overflow",
            "upstream_rq_total",
            "upstream_rq_active",
            "circuit_breakers.default.rq_open",
            "circuit_breakers.default.remaining_rq",
            "circuit_breakers.default.rq_pending_open",
            "circuit_breakers.default.remaining_pending",
            "circuit_breakers.default.cx_open",
            "circuit_breakers.default.rq_retry_open",
            "circuit_breakers.default.remaining_retries",
            "circuit_breakers.high.rq_open",
        ],
    );
    let names: Vec<String> = t
        .stats()
        .keys()
        .filter_map(|k| k.strip_prefix("cluster.rq_stats.").filter(|n| n.starts_with("circuit_breakers.")))
        .map(str::to_string)
        .collect();
    t.note("rq.stat_names", names.join(" "));
    t.note("rq.clusters", t.clusters_breakers("rq"));
    t.gates.rq.open();
    let held = all(held).await?;
    t.note("rq.statuses", status_counts(refused.iter().chain(&held)));
    t.note("rq.upstream_arrivals", t.gates.rq.arrived());
    blocking(|| t.wait_stat("cluster.rq_stats.upstream_rq_active", "0"))?;
    t.note_stats(
        "rq.after.",
        "rq_stats",
        &[
            "circuit_breakers.default.rq_open",
            "circuit_breakers.default.remaining_rq",
            "upstream_rq_active",
            "upstream_rq_200",
            "upstream_rq_503",
            "upstream_rq_completed",
        ],
    );
    Ok(())
}

async fn scenario_cx(t: &mut Target) -> Result<(), String> {
    // One h2c connection: every request on the same worker, so on one pool.
    let client = h2c_client_to(t.addr);
    let mut tasks: Vec<Pending> = (0..2).map(|_| spawn_get(&client, "/cx/hold")).collect();
    blocking(|| t.gates.cx.wait_held(2, WAIT)).map_err(|e| format!("{e:#}"))?;
    tasks.extend((0..8).map(|_| spawn_get(&client, "/cx/hold")));
    let (refused, waiting) = finished(tasks, 5).await?;
    t.note("cx.refused_at_once", status_counts(&refused));
    blocking(|| t.wait_stat("cluster.cx.upstream_rq_pending_active", "3"))?;
    t.note_stats(
        "cx.hold.",
        "cx",
        &[
            "upstream_cx_total",
            "upstream_cx_overflow",
            "upstream_rq_pending_total",
            "upstream_rq_pending_active",
            "upstream_rq_pending_overflow",
            "upstream_rq_active_overflow",
            "upstream_rq_total",
            "circuit_breakers.default.cx_open",
            "circuit_breakers.default.remaining_cx",
            "circuit_breakers.default.rq_pending_open",
            "circuit_breakers.default.remaining_pending",
            "circuit_breakers.default.rq_open",
            "circuit_breakers.default.remaining_rq",
        ],
    );
    let host = t.gates.cx.addr;
    t.note("cx.host.rq_pending_active", t.host_stat("cx", host, "rq_pending_active"));
    t.gates.cx.open();
    let waiting = all(waiting).await?;
    t.note("cx.statuses", status_counts(refused.iter().chain(&waiting)));
    blocking(|| t.wait_stat("cluster.cx.upstream_rq_active", "0"))?;
    t.note_stats(
        "cx.after.",
        "cx",
        &[
            "upstream_cx_total",
            "upstream_cx_overflow",
            "upstream_rq_total",
            "upstream_rq_pending_active",
            "circuit_breakers.default.remaining_pending",
            "circuit_breakers.default.cx_open",
            "upstream_rq_503",
        ],
    );
    t.note("cx.upstream_connections", t.gates.cx.connections());
    Ok(())
}

async fn scenario_high(t: &mut Target) -> Result<(), String> {
    let client = h2c_client_to(t.addr);
    let held = spawn_get(&client, "/high/hold");
    blocking(|| t.gates.high.wait_held(1, WAIT)).map_err(|e| format!("{e:#}"))?;
    let refused = send_full(&client, get("/high/again"), WAIT).await.map_err(|e| format!("{e:#}"))?;
    t.note("high.refused", refused.status.as_u16());
    let other = send_full(&client, get("/default/x"), WAIT).await.map_err(|e| format!("{e:#}"))?;
    t.note("high.default_route", other.status.as_u16());
    t.note_stats(
        "high.hold.",
        "high",
        &[
            "circuit_breakers.high.rq_open",
            "circuit_breakers.high.remaining_rq",
            "circuit_breakers.high.remaining_retries",
            "circuit_breakers.high.rq_retry_open",
            "circuit_breakers.high.remaining_pending",
            "circuit_breakers.default.rq_open",
            "upstream_rq_active_overflow",
        ],
    );
    t.note("high.clusters", t.clusters_breakers("high"));
    t.gates.high.open();
    held.await.map_err(|e| e.to_string())??;
    Ok(())
}

async fn scenario_pools(t: &mut Target) -> Result<(), String> {
    let client = h2c_client_to(t.addr);
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(send_full(&client, get("/pools/x"), WAIT).await.map_err(|e| format!("{e:#}"))?);
    }
    t.note("pools.statuses", status_counts(&replies));
    let alternate = replies.windows(2).all(|w| w[0].status != w[1].status);
    t.note("pools.alternate", if alternate { "yes" } else { "no" });
    if let Some(r) = replies.iter().find(|r| r.status == 503) {
        t.note("pools.refused_body", String::from_utf8_lossy(&r.body));
    }
    t.note_stats(
        "pools.",
        "pools",
        &[
            "upstream_cx_pool_overflow",
            "circuit_breakers.default.cx_pool_open",
            "circuit_breakers.default.remaining_cx_pools",
            "upstream_rq_503",
            "upstream_rq_total",
        ],
    );
    Ok(())
}

async fn scenario_timeout(t: &mut Target) -> Result<(), String> {
    let client = h2c_client_to(t.addr);
    let held = spawn_get(&client, "/timeout/hold");
    blocking(|| t.gates.timeout.wait_held(1, WAIT)).map_err(|e| format!("{e:#}"))?;
    let r = send_full(&client, get("/quick/hold"), WAIT).await.map_err(|e| format!("{e:#}"))?;
    t.note("timeout.status", r.status.as_u16());
    t.note("timeout.body", String::from_utf8_lossy(&r.body));
    t.note_stats(
        "timeout.",
        "timeout",
        &[
            "upstream_cx_total",
            "upstream_cx_overflow",
            "upstream_rq_pending_total",
            "upstream_rq_pending_active",
            "upstream_rq_cancelled",
            "upstream_rq_timeout",
            "upstream_rq_total",
            "upstream_rq_504",
        ],
    );
    t.gates.timeout.open();
    let held = held.await.map_err(|e| e.to_string())??;
    t.note("timeout.held", held.status.as_u16());
    Ok(())
}

async fn scenario_h2(t: &mut Target) -> Result<(), String> {
    let client = http1_client_to(t.addr);
    let tasks: Vec<Pending> = (0..8).map(|_| spawn_get(&client, "/h2/hold")).collect();
    blocking(|| t.gates.h2.wait_held(3, WAIT)).map_err(|e| format!("{e:#}"))?;
    let (refused, held) = finished(tasks, 5).await?;
    t.note("h2.refused_at_once", status_counts(&refused));
    t.note_stats(
        "h2.hold.",
        "h2",
        &[
            "upstream_cx_total",
            "upstream_rq_active_overflow",
            "upstream_rq_total",
            "circuit_breakers.default.remaining_rq",
            "circuit_breakers.default.rq_open",
        ],
    );
    t.gates.h2.open();
    let held = all(held).await?;
    t.note("h2.statuses", status_counts(refused.iter().chain(&held)));
    Ok(())
}

async fn run(t: &mut Target) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, r) in [
        ("rq", scenario_rq(t).await),
        ("cx", scenario_cx(t).await),
        ("high", scenario_high(t).await),
        ("pools", scenario_pools(t).await),
        ("timeout", scenario_timeout(t).await),
        ("h2", scenario_h2(t).await),
    ] {
        if let Err(e) = r {
            errors.push(format!("{} scenario {name}: {e}", t.kind));
        }
    }
    errors
}

fn check(kind: ProxyKind, obs: &BTreeMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (key, want) in expected() {
        let got = obs.get(key).map(String::as_str);
        let ok = match (want, got) {
            (_, None) => false,
            (Is(w), Some(g)) => w.split_whitespace().eq(g.split_whitespace()),
            (Within(lo, hi), Some(g)) => g.parse::<u64>().is_ok_and(|v| (lo..=hi).contains(&v)),
        };
        if !ok {
            bad.push(format!("{kind} {key} = {got:?}, want {want:?}"));
        }
    }
    for key in obs.keys() {
        if !expected().iter().any(|(k, _)| k == key) {
            bad.push(format!("{kind} observed {key} without an expectation"));
        }
    }
    bad
}

fn compare(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    expected()
        .into_iter()
        .filter(|(_, w)| matches!(w, Is(_)))
        .filter(|(k, _)| a.get(*k) != b.get(*k))
        .map(|(k, _)| format!("{k}: envoy {:?} vs pinion {:?}", a.get(k), b.get(k)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circuit_breakers_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    assert!(TOLERANCES.iter().all(|(k, _)| expected().iter().any(|(e, w)| e == k && matches!(w, Within(..)))));
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut observed = Vec::new();
    let mut json = Vec::new();
    let mut logs = Vec::new();
    for kind in kinds {
        let mut t = match blocking(|| start(kind)) {
            Ok(t) => t,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        failures.extend(run(&mut t).await);
        let obs: BTreeMap<String, String> = t.obs.iter().cloned().collect();
        if verbose {
            for (k, v) in &obs {
                eprintln!("{kind} {k} = {v}");
            }
        }
        failures.extend(check(kind, &obs));
        json.push((t.clusters_json("rq"), t.clusters_json("high")));
        observed.push(obs);
        logs.push(t.proc.logs());
    }
    if let [a, b] = observed.as_slice() {
        failures.extend(compare(a, b));
    }
    if let [(a_rq, a_high), (b_rq, b_high)] = json.as_slice() {
        if a_rq != b_rq || a_high != b_high {
            failures.push(format!(
                "/clusters?format=json circuit_breakers differ:\n  envoy {a_rq} {a_high}\n  pinion {b_rq} {b_high}"
            ));
        }
    }
    for (rq, high) in &json {
        let want_rq = json!({ "thresholds": [
            { "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 5, "max_retries": 3 },
            { "priority": "HIGH", "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3 },
        ]});
        if *rq != want_rq {
            failures.push(format!("/clusters?format=json rq: {rq}"));
        }
        if high["thresholds"][1]["max_pending_requests"] != 6 {
            failures.push(format!("/clusters?format=json high: {high}"));
        }
    }
    eprintln!("circuit_breakers: {} observations per proxy in {:?}", expected().len(), started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    if !failures.is_empty() {
        panic!("{} problem(s):\n  - {}\n\n{}", failures.len(), failures.join("\n  - "), logs.join("\n"));
    }
}

/// The checks must notice a difference (guards against a vacuous harness).
#[test]
fn check_and_compare_report_differences() {
    let mut a: BTreeMap<String, String> = expected()
        .into_iter()
        .map(|(k, w)| {
            let v = match w {
                Is(v) => v.split_whitespace().collect::<Vec<_>>().join(" "),
                Within(lo, _) => lo.to_string(),
            };
            (k.to_string(), v)
        })
        .collect();
    assert!(check(ProxyKind::Pinion, &a).is_empty(), "{:?}", check(ProxyKind::Pinion, &a));
    let mut b = a.clone();
    b.insert("cx.after.upstream_cx_overflow".into(), "5".into());
    assert!(compare(&a, &b).is_empty(), "a tolerated value is not compared");
    b.insert("rq.hold.upstream_rq_active_overflow".into(), "14".into());
    assert_eq!(compare(&a, &b).len(), 1);
    assert_eq!(check(ProxyKind::Pinion, &b).len(), 1);
    a.insert("cx.after.upstream_cx_overflow".into(), "6".into());
    assert_eq!(check(ProxyKind::Envoy, &a).len(), 1);
}
