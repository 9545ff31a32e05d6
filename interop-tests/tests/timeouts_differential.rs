//! Differential test of stream and connection durations: the real Envoy and Pinion get the
//! same bootstrap (`bootstraps/timeouts.yaml`, only ports and the log path differ), each with
//! its own fail-on-command backend (`x-fail: 1:hang`, `1:stall`, `99:status=503`) and
//! `/delay/<ms>` backend.
//!
//! Stream durations (HCM `max_stream_duration`, a route's `max_stream_duration`, its
//! `grpc_timeout_header_max`/`_offset` with the `grpc-timeout` header, the route timeout
//! turned off by it, retries cut short): per row, over HTTP/1.1 and h2c, the status, the
//! local reply body, `grpc-status`/`grpc-message`, whether the body was reset, the
//! `grpc-timeout` the upstream saw, and the latency bounds are checked against the row (so
//! the table is verified against Envoy) and compared between the proxies, as are the access
//! log lines (status, response flags, response code details).
//!
//! Connection durations (`max_connection_duration`: the drain after it, HTTP/1.1 and h2c;
//! `http1_safe_max_connection_duration`): whether and when the connection closes, and
//! `Connection: close` on the next response. Then the duration counters from `/stats`.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs one proxy; `INTEROP_VERBOSE=1` prints every
//! observation.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    empty, free_port, h2c_client_to, http1_client_to, spawn_flaky_backend, spawn_http_backend, Backend, BackendKind,
    FlakyBackend, ProxyKind, ProxyProcess, TestClient,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

const DURATION_BODY: &str = "downstream duration timeout";
const UPSTREAM_BODY: &str = "upstream max stream duration reached";

/// One request and what it must produce.
struct Row {
    name: &'static str,
    /// The row's path; the protocol is appended for the flaky backend's per-path counts.
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// Sent as gRPC (`content-type: application/grpc`).
    grpc: bool,
    status: u16,
    /// Exact body, when it is Envoy's local reply.
    body_is: Option<&'static str>,
    /// The response body ends with a reset.
    body_reset: bool,
    /// `grpc-status` of the response.
    grpc_status: Option<&'static str>,
    /// The `grpc-timeout` the upstream saw (`Some(None)`: none; `None`: not checked).
    upstream_grpc_timeout: Option<Option<&'static str>>,
    /// Attempts the flaky backend saw (None: not checked).
    attempts: Option<u64>,
    /// Latency bounds in ms (the lower 10 ms under the timer).
    min_ms: u64,
    max_ms: u64,
}

const R: Row = Row {
    name: "",
    path: "/",
    headers: &[],
    grpc: false,
    status: 200,
    body_is: None,
    body_reset: false,
    grpc_status: None,
    upstream_grpc_timeout: None,
    attempts: None,
    min_ms: 0,
    max_ms: 4000,
};

const HANG: (&str, &str) = ("x-fail", "1:hang");

fn table() -> Vec<Row> {
    vec![
        Row { name: "fast", path: "/hcm/fast", ..R },
        Row {
            name: "hcm-limit",
            path: "/hcm/hang",
            headers: &[HANG],
            status: 504,
            body_is: Some(DURATION_BODY),
            min_ms: 790,
            ..R
        },
        Row {
            name: "route-limit",
            path: "/route/hang",
            headers: &[HANG],
            status: 504,
            body_is: Some(DURATION_BODY),
            min_ms: 290,
            max_ms: 750,
            ..R
        },
        Row { name: "route-limit-off", path: "/off/delay/1000", min_ms: 990, ..R },
        Row { name: "route-timeout-unused", path: "/new/delay/500", min_ms: 490, ..R },
        Row {
            name: "route-timeout-control",
            path: "/old/delay/500",
            status: 504,
            body_is: Some("upstream request timeout"),
            min_ms: 190,
            max_ms: 490,
            ..R
        },
        Row {
            name: "grpc-timeout-capped",
            path: "/grpc-max/hang",
            headers: &[HANG, ("grpc-timeout", "5S")],
            grpc: true,
            grpc_status: Some("4"),
            upstream_grpc_timeout: Some(Some("300m")),
            min_ms: 290,
            max_ms: 750,
            ..R
        },
        Row {
            name: "grpc-timeout-offset",
            path: "/grpc-offset/hang",
            headers: &[HANG, ("grpc-timeout", "400m")],
            grpc: true,
            grpc_status: Some("4"),
            upstream_grpc_timeout: Some(Some("300m")),
            min_ms: 290,
            max_ms: 390,
            ..R
        },
        Row {
            name: "grpc-timeout-without-header",
            path: "/grpc-max/none",
            headers: &[HANG],
            grpc: true,
            grpc_status: Some("4"),
            upstream_grpc_timeout: Some(Some("800m")),
            min_ms: 790,
            ..R
        },
        Row {
            name: "grpc-timeout-on-plain-http",
            path: "/grpc-max/plain",
            headers: &[HANG, ("grpc-timeout", "200m")],
            status: 504,
            body_is: Some(DURATION_BODY),
            upstream_grpc_timeout: Some(Some("200m")),
            min_ms: 190,
            max_ms: 750,
            ..R
        },
        Row {
            name: "body-cut-after-headers",
            path: "/route/stall",
            headers: &[("x-fail", "1:stall")],
            body_reset: true,
            min_ms: 290,
            max_ms: 1500,
            ..R
        },
        Row {
            name: "upstream-limit",
            path: "/umsdr/hang",
            headers: &[HANG],
            status: 504,
            body_is: Some(UPSTREAM_BODY),
            min_ms: 290,
            max_ms: 750,
            ..R
        },
        Row {
            name: "upstream-limit-body-cut",
            path: "/umsdr/stall",
            headers: &[("x-fail", "1:stall")],
            body_reset: true,
            min_ms: 290,
            max_ms: 2500,
            ..R
        },
        Row {
            name: "upstream-limit-retried",
            path: "/umsdr-retry/hang",
            headers: &[("x-fail", "2:hang")],
            status: 504,
            body_is: Some(UPSTREAM_BODY),
            attempts: Some(2),
            min_ms: 590,
            max_ms: 1500,
            ..R
        },
        Row {
            name: "retries-cut-short",
            path: "/retry/503",
            headers: &[("x-fail", "99:status=503")],
            status: 504,
            body_is: Some(DURATION_BODY),
            min_ms: 490,
            max_ms: 1500,
            ..R
        },
    ]
}

#[derive(Debug, Clone, Default)]
struct Obs {
    status: u16,
    body: Bytes,
    body_reset: bool,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
    upstream_grpc_timeout: Option<String>,
    attempts: u64,
    error: Option<String>,
    took: Duration,
}

struct Target {
    kind: ProxyKind,
    proc: ProxyProcess,
    flaky: FlakyBackend,
    _slow: Backend,
    h1: TestClient,
    h2: TestClient,
    addr: SocketAddr,
    mcd: SocketAddr,
    safe: SocketAddr,
    log: PathBuf,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(kind: ProxyKind) -> Result<Target, String> {
    let flaky = spawn_flaky_backend();
    let slow = spawn_http_backend(BackendKind::Auto);
    let (admin, listen, mcd, safe) = (free_port(), free_port(), free_port(), free_port());
    let log = std::env::temp_dir().join(format!("timeouts-{kind}-{}-{admin}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let yaml = render_bootstrap(
        "timeouts.yaml",
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", listen.to_string()),
            ("MCD_PORT", mcd.to_string()),
            ("SAFE_PORT", safe.to_string()),
            ("FLAKY_PORT", flaky.addr.port().to_string()),
            ("SLOW_PORT", slow.addr.port().to_string()),
            ("LOG_PATH", log.display().to_string()),
        ],
    );
    let mut proc = ProxyProcess::try_spawn(kind, &yaml, &["--file-flush-interval-msec", "100"])
        .map_err(|e| format!("{kind} could not start: {e:#}"))?;
    proc.wait_ready(admin, Duration::from_secs(20)).map_err(|e| format!("{kind} not ready: {e:#}"))?;
    let addr = local(listen);
    for a in [addr, local(mcd), local(safe)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("{kind} ready but not accepting on {a}\n{}", proc.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(Target {
        kind,
        proc,
        flaky,
        _slow: slow,
        h1: http1_client_to(addr),
        h2: h2c_client_to(addr),
        addr,
        mcd: local(mcd),
        safe: local(safe),
        log,
    })
}

async fn run_row(t: &Target, row: &Row, proto: Proto) -> Obs {
    let client = if proto == Proto::H1 { &t.h1 } else { &t.h2 };
    // Flaky paths get the protocol, so each run has its own attempts; `/delay/<ms>` cannot.
    let path = if row.path.contains("/delay/") { row.path.to_string() } else { format!("{}/{proto:?}", row.path) };
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://timeouts.example.com{path}"))
        .header("x-row", format!("{}/{proto:?}", row.name));
    if row.grpc {
        req = req.method(Method::POST).header("content-type", "application/grpc").header("te", "trailers");
    }
    for (k, v) in row.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(empty()).expect("request");
    let mut obs = Obs::default();
    let t0 = Instant::now();
    match tokio::time::timeout(Duration::from_secs(8), client.request(req)).await {
        Ok(Ok(resp)) => {
            let (parts, body) = resp.into_parts();
            obs.status = parts.status.as_u16();
            let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(String::from);
            obs.grpc_status = header("grpc-status");
            obs.grpc_message = header("grpc-message");
            match tokio::time::timeout(Duration::from_secs(8), body.collect()).await {
                Ok(Ok(c)) => obs.body = c.to_bytes(),
                Ok(Err(_)) => obs.body_reset = true,
                Err(_) => obs.error = Some("body not done within 8 s".into()),
            }
        }
        Ok(Err(e)) => obs.error = Some(format!("{e:#} (via {})", t.addr)),
        Err(_) => obs.error = Some("no response within 8 s".into()),
    }
    obs.took = t0.elapsed();
    let seen = t.flaky.seen(&path);
    obs.attempts = seen.len() as u64;
    obs.upstream_grpc_timeout = seen.first().and_then(|s| s.headers.get("grpc-timeout").cloned());
    obs
}

fn check(row: &Row, o: &Obs) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(e) = &o.error {
        bad.push(format!("error: {e}"));
    }
    if o.status != row.status {
        bad.push(format!("status {} (want {})", o.status, row.status));
    }
    if let Some(want) = row.body_is {
        if o.body != want.as_bytes() {
            bad.push(format!("body {:?} (want {want:?})", String::from_utf8_lossy(&o.body)));
        }
    }
    if o.body_reset != row.body_reset {
        bad.push(format!("body reset: {} (want {})", o.body_reset, row.body_reset));
    }
    if o.grpc_status.as_deref() != row.grpc_status {
        bad.push(format!("grpc-status {:?} (want {:?})", o.grpc_status, row.grpc_status));
    }
    if row.grpc_status.is_some() && o.grpc_message.as_deref() != Some(DURATION_BODY) {
        bad.push(format!("grpc-message {:?}", o.grpc_message));
    }
    if let Some(want) = row.upstream_grpc_timeout {
        if o.upstream_grpc_timeout.as_deref() != want {
            bad.push(format!("upstream grpc-timeout {:?} (want {want:?})", o.upstream_grpc_timeout));
        }
    }
    if let Some(n) = row.attempts {
        if o.attempts != n {
            bad.push(format!("backend saw {} attempts (want {n})", o.attempts));
        }
    }
    let ms = o.took.as_millis() as u64;
    if ms < row.min_ms || ms > row.max_ms {
        bad.push(format!("took {ms} ms (want {}..={} ms)", row.min_ms, row.max_ms));
    }
    bad
}

fn compare(a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    let key = |o: &Obs| {
        (o.status, o.body_reset, o.grpc_status.clone(), o.grpc_message.clone(), o.upstream_grpc_timeout.clone())
    };
    if key(a) != key(b) {
        d.push(format!("envoy {:?} vs pinion {:?}", key(a), key(b)));
    }
    // Local replies (upstream bodies carry per-proxy request ids).
    if a.status != 200 && a.body != b.body {
        d.push(format!("body: envoy {:?} vs pinion {:?}", a.body, b.body));
    }
    d
}

/// The access log lines by row (`<row>/<proto>` -> `code flags details`).
fn access_log(t: &Target) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(&t.log).unwrap_or_default();
    text.lines().filter_map(|l| l.split_once(' ')).map(|(row, rest)| (row.to_string(), rest.to_string())).collect()
}

// ---------------------------------------------------------------------------------------
// Connection durations
// ---------------------------------------------------------------------------------------

/// What one connection scenario saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnObs {
    /// Per response: status and whether it carried `Connection: close`.
    responses: Vec<(u16, bool)>,
    /// The proxy closed the connection by the end of the scenario.
    closed: bool,
}

/// One HTTP/1.1 exchange on an open connection: status and `Connection: close`.
async fn h1_exchange(r: &mut BufReader<TcpStream>) -> Option<(u16, bool)> {
    r.get_mut().write_all(b"GET /delay/0 HTTP/1.1\r\nHost: a\r\n\r\n").await.ok()?;
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut close, mut len) = (false, 0usize);
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("connection:") {
            close |= v.trim() == "close";
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some((status, close))
}

/// Whether the peer closes within `within`.
async fn h1_closed_within(r: &mut BufReader<TcpStream>, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, r.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// HTTP/1.1: a request, then `pause`, then (if `second`) another request; then whether the
/// connection closes within `close_within`.
async fn h1_scenario(addr: SocketAddr, pause: Duration, second: bool, close_within: Duration) -> ConnObs {
    let s = TcpStream::connect(addr).await.expect("connect");
    let mut r = BufReader::new(s);
    let mut responses = Vec::new();
    responses.extend(tokio::time::timeout(Duration::from_secs(5), h1_exchange(&mut r)).await.ok().flatten());
    tokio::time::sleep(pause).await;
    if second {
        responses.extend(tokio::time::timeout(Duration::from_secs(5), h1_exchange(&mut r)).await.ok().flatten());
    }
    let closed = h1_closed_within(&mut r, close_within).await;
    ConnObs { responses, closed }
}

/// h2c: one request, then whether the proxy ends the connection (GOAWAY, then close)
/// within `close_within`.
async fn h2_scenario(addr: SocketAddr, close_within: Duration) -> ConnObs {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.expect("h2 handshake");
    let mut conn = tokio::spawn(conn);
    let req = Request::builder().uri(format!("http://{addr}/delay/0")).body(empty()).expect("request");
    let mut responses = Vec::new();
    if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await {
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        responses.push((status, false));
    }
    let closed = tokio::time::timeout(close_within, &mut conn).await.is_ok();
    conn.abort();
    ConnObs { responses, closed }
}

/// The connection scenarios: name and observation.
async fn connection_scenarios(t: &Target) -> Vec<(&'static str, ConnObs)> {
    let ms = Duration::from_millis;
    let (mcd_idle, mcd_next, safe_idle, safe_next, mcd_h2, safe_h2) = tokio::join!(
        // Drained at 0.5 s, closed at 0.9 s (drain_timeout 0.4 s).
        h1_scenario(t.mcd, ms(0), false, ms(2500)),
        // A request while draining gets `Connection: close`, then the connection closes.
        h1_scenario(t.mcd, ms(650), true, ms(1500)),
        // HTTP/1-safe: an idle connection is left open...
        h1_scenario(t.safe, ms(0), false, ms(1500)),
        // ... and the next response closes it.
        h1_scenario(t.safe, ms(650), true, ms(1500)),
        // h2 drains with GOAWAY, with or without the HTTP/1-safe option.
        h2_scenario(t.mcd, ms(2500)),
        h2_scenario(t.safe, ms(2500)),
    );
    vec![
        ("mcd-h1-idle", mcd_idle),
        ("mcd-h1-next-request", mcd_next),
        ("safe-h1-idle", safe_idle),
        ("safe-h1-next-request", safe_next),
        ("mcd-h2", mcd_h2),
        ("safe-h2", safe_h2),
    ]
}

fn expected_connection(name: &str) -> ConnObs {
    let (responses, closed) = match name {
        "mcd-h1-idle" => (vec![(200, false)], true),
        "mcd-h1-next-request" => (vec![(200, false), (200, true)], true),
        "safe-h1-idle" => (vec![(200, false)], false),
        "safe-h1-next-request" => (vec![(200, false), (200, true)], true),
        "mcd-h2" | "safe-h2" => (vec![(200, false)], true),
        other => panic!("unknown scenario {other}"),
    };
    ConnObs { responses, closed }
}

/// The duration counters compared after the table.
const COUNTERS: &[(&str, u64)] = &[
    // hcm-limit, route-limit, 3 gRPC rows, plain-http grpc-timeout, body cut, retries: x2.
    ("http.durations.downstream_rq_max_duration_reached", 16),
    ("http.mcd.downstream_cx_max_duration_reached", 3),
    ("http.safe.downstream_cx_max_duration_reached", 3),
    ("cluster.slow.upstream_rq_timeout", 2),
    // upstream-limit, the body cut, two attempts of the retried row: x2.
    ("cluster.flaky_msd.upstream_rq_max_duration_reached", 8),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let started: Vec<Result<Target, String>> =
        tokio::task::block_in_place(|| kinds.iter().map(|k| start(*k)).collect());
    let mut failures = Vec::new();
    let mut targets = Vec::new();
    for s in started {
        match s {
            Ok(t) => targets.push(t),
            Err(e) => failures.push(format!("PROXY FAILED TO START: {e}")),
        }
    }
    assert!(!targets.is_empty(), "{}", failures.join("\n"));

    // Stream durations: both proxies run a row at once, the rows one after the other.
    let rows = table();
    let (mut passed, mut total) = (0, 0);
    let t_table = Instant::now();
    for proto in [Proto::H1, Proto::H2c] {
        for row in &rows {
            total += 1;
            let obs: Vec<(ProxyKind, Obs)> = futures_util::future::join_all(
                targets.iter().map(|t| async move { (t.kind, run_row(t, row, proto).await) }),
            )
            .await;
            let mut problems = Vec::new();
            for (kind, o) in &obs {
                if verbose {
                    eprintln!("{} [{proto:?}] {kind}: {o:?}", row.name);
                }
                problems.extend(check(row, o).into_iter().map(|p| format!("{kind}: {p}")));
            }
            if let [(_, a), (_, b)] = obs.as_slice() {
                problems.extend(compare(a, b));
            }
            if problems.is_empty() {
                passed += 1;
            } else {
                failures.push(format!("row {} [{proto:?}] {}:\n  - {}", row.name, row.path, problems.join("\n  - ")));
            }
        }
    }
    eprintln!("timeouts: {passed}/{total} row runs passed in {:?}", t_table.elapsed());

    // Connection durations.
    let conns: Vec<(ProxyKind, Vec<(&str, ConnObs)>)> =
        futures_util::future::join_all(targets.iter().map(|t| async move { (t.kind, connection_scenarios(t).await) }))
            .await;
    for (kind, scenarios) in &conns {
        for (name, o) in scenarios {
            if verbose {
                eprintln!("{name} {kind}: {o:?}");
            }
            let want = expected_connection(name);
            if *o != want {
                failures.push(format!("{kind}: connection scenario {name}: {o:?} (want {want:?})"));
            }
        }
    }

    // Counters, and the access logs (flushed every 100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut logs = Vec::new();
    for t in &targets {
        for (name, want) in COUNTERS {
            let got = t.proc.stat(name).unwrap_or(0);
            if got != *want {
                failures.push(format!("{}: {name} = {got} (want {want})", t.kind));
            }
        }
        let log = access_log(t);
        if verbose {
            for (row, line) in &log {
                eprintln!("log {}: {row} {line}", t.kind);
            }
        }
        if log.len() != total {
            failures.push(format!("{}: {} access log lines for {total} requests", t.kind, log.len()));
        }
        logs.push(log);
    }
    if let [a, b] = logs.as_slice() {
        for (row, line) in a {
            if b.get(row) != Some(line) {
                failures.push(format!("access log {row}: envoy {line:?} vs pinion {:?}", b.get(row)));
            }
        }
    }
    for t in &targets {
        let _ = std::fs::remove_file(&t.log);
    }
    if !failures.is_empty() {
        let logs: Vec<String> = targets.iter().map(|t| t.proc.logs()).collect();
        panic!("{} problems\n\n{}\n\n{}", failures.len(), failures.join("\n\n"), logs.join("\n"));
    }
}

/// The comparison must notice differences.
#[test]
fn compare_reports_differences() {
    let a = Obs { status: 504, body: Bytes::from_static(DURATION_BODY.as_bytes()), ..Obs::default() };
    assert!(compare(&a, &a.clone()).is_empty());
    let b = Obs { status: 408, ..a.clone() };
    assert!(!compare(&a, &b).is_empty());
    let row = table().into_iter().find(|r| r.name == "hcm-limit").expect("row");
    assert!(!check(&row, &b).is_empty());
}
