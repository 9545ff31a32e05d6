//! Differential test of retries and per-try timeouts: the real Envoy and Pinion get the same
//! bootstrap (`bootstraps/retries.yaml`, only ports differ), each with its own
//! fail-on-command backend (`pinion_testkit::flaky`), and the same table of requests over
//! HTTP/1.1 and h2c.
//!
//! Per row and proxy the test observes the status, the `x-envoy-attempt-count` response
//! header, the local reply body where the row says it is Envoy's, how many attempts the
//! backend saw for the row's path, the `x-envoy-attempt-count` and (for per-try rows)
//! `x-envoy-expected-rq-timeout-ms` each attempt carried, the request bodies of the
//! attempts, whether a retry header leaked upstream, and a lower bound on the latency. Each
//! row's own expectations are checked against every proxy (so the table is verified against
//! Envoy), and the two observations are compared. After the table, the retry counters from
//! admin `/stats` (`upstream_rq_retry*`, `upstream_rq_per_try_timeout`,
//! `retry_or_shadow_abandoned`, `cluster.<c>.retry.upstream_rq_*`, the final
//! `upstream_rq_<code>`s, `upstream_rq_timeout`) are checked against fixed values and compared.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs one proxy; `INTEROP_VERBOSE=1` prints every
//! observation and the counters.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    free_port, full, h2c_client_to, http1_client_to, send_full, spawn_flaky_backend, FlakyBackend, ProxyKind,
    ProxyProcess, TestClient,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

const COUNTED: &str = "counted.example.com";
const VHOST: &str = "vhost.example.com";

/// One request (or `repeat` requests to `path0`, `path1`, ...) and what it must produce.
struct Row {
    name: &'static str,
    authority: &'static str,
    method: &'static str,
    /// The row's path; the protocol is appended (`/5xx/two/H1`) so each run has its own
    /// attempt count at the backend.
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    status: u16,
    /// Attempts the backend sees (None: not deterministic, not compared).
    attempts: Option<u64>,
    /// `x-envoy-attempt-count` on the response (None: absent).
    resp_count: Option<&'static str>,
    /// Exact local reply body, when the answer is Envoy's own.
    body_is: Option<&'static str>,
    /// `x-envoy-expected-rq-timeout-ms` of every attempt, when deterministic.
    expected_timeout: Option<&'static str>,
    /// Lower bound on the latency, in ms (10 ms under the timer: Envoy's coarse timers were
    /// seen firing a fraction of a millisecond early).
    min_ms: u64,
    /// Send this many requests (distinct paths), all must get `status`.
    repeat: usize,
}

const R: Row = Row {
    name: "",
    authority: COUNTED,
    method: "GET",
    path: "/",
    headers: &[],
    body: "",
    status: 200,
    attempts: Some(1),
    resp_count: Some("1"),
    body_is: None,
    expected_timeout: None,
    min_ms: 0,
    repeat: 1,
};

const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination";
const CONNECT_BODY: &str =
    "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure";

fn table() -> Vec<Row> {
    vec![
        Row {
            name: "5xx-then-ok",
            path: "/5xx/two",
            headers: &[("x-fail", "2:status=503")],
            attempts: Some(3),
            resp_count: Some("3"),
            ..R
        },
        Row {
            name: "5xx-limit",
            path: "/5xx/limit",
            headers: &[("x-fail", "9:status=503")],
            status: 503,
            attempts: Some(3),
            resp_count: Some("3"),
            body_is: Some("failed on purpose\n"),
            ..R
        },
        Row { name: "5xx-404-not-retried", path: "/5xx/404", headers: &[("x-fail", "1:status=404")], status: 404, ..R },
        Row {
            name: "gateway-error-500-not-retried",
            path: "/gateway/500",
            headers: &[("x-fail", "1:status=500")],
            status: 500,
            ..R
        },
        Row {
            name: "gateway-error-504",
            path: "/gateway/504",
            headers: &[("x-fail", "2:status=504")],
            attempts: Some(3),
            resp_count: Some("3"),
            ..R
        },
        Row {
            name: "body-replayed",
            method: "POST",
            path: "/5xx/body",
            body: "replay me, please",
            headers: &[("x-fail", "1:status=500")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "body-over-buffer-limit",
            method: "POST",
            path: "/small/over",
            body: "seventeen bytes!!",
            headers: &[("x-fail", "1:status=503")],
            status: 503,
            ..R
        },
        Row {
            name: "body-at-buffer-limit",
            method: "POST",
            path: "/small/at",
            body: "sixteen bytes!!!",
            headers: &[("x-fail", "1:status=503")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "h2-upstream-5xx",
            path: "/h2/5xx",
            headers: &[("x-fail", "2:status=503")],
            attempts: Some(3),
            resp_count: Some("3"),
            ..R
        },
        Row {
            name: "h2-upstream-reset",
            path: "/h2/reset",
            headers: &[("x-fail", "1:reset")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "reset-once",
            path: "/reset/once",
            headers: &[("x-fail", "1:reset")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "reset-limit",
            path: "/reset/limit",
            headers: &[("x-fail", "9:reset")],
            status: 503,
            attempts: Some(2),
            resp_count: Some("2"),
            body_is: Some(RESET_BODY),
            ..R
        },
        Row {
            name: "connect-failure-limit",
            path: "/connect/x",
            status: 503,
            attempts: Some(0),
            resp_count: Some("3"),
            body_is: Some(CONNECT_BODY),
            ..R
        },
        Row {
            name: "per-try-timeout-then-ok",
            path: "/pertry/once",
            headers: &[("x-fail", "1:hang")],
            attempts: Some(2),
            resp_count: Some("2"),
            expected_timeout: Some("300"),
            min_ms: 290,
            ..R
        },
        Row {
            name: "per-try-timeout-limit",
            path: "/pertry/limit",
            headers: &[("x-fail", "9:hang")],
            status: 504,
            attempts: Some(2),
            resp_count: Some("2"),
            body_is: Some("upstream request timeout"),
            expected_timeout: Some("300"),
            min_ms: 590,
            ..R
        },
        Row {
            name: "route-timeout-over-attempts",
            path: "/global/x",
            headers: &[("x-fail", "9:hang")],
            status: 504,
            attempts: Some(2),
            resp_count: Some("2"),
            body_is: Some("upstream request timeout"),
            min_ms: 590,
            ..R
        },
        Row {
            name: "retry-after-backoff",
            path: "/ratelimited/x",
            headers: &[("x-fail", "1:status=503"), ("x-fail-headers", "retry-after=1")],
            attempts: Some(2),
            resp_count: Some("2"),
            min_ms: 1000,
            ..R
        },
        Row {
            name: "retriable-status-code",
            path: "/codes/418",
            headers: &[("x-fail", "1:status=418")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "retriable-4xx",
            path: "/codes/409",
            headers: &[("x-fail", "1:status=409")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "retriable-header",
            path: "/codes/hdr",
            headers: &[("x-fail", "1:status=200"), ("x-fail-headers", "x-retry-me=1")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "grpc-unavailable",
            path: "/grpc/14",
            headers: &[("x-fail", "1:grpc=14")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row { name: "grpc-internal-not-retried", path: "/grpc/13", headers: &[("x-fail", "1:grpc=13")], ..R },
        Row {
            name: "request-headers-get",
            path: "/get-only/get",
            headers: &[("x-fail", "1:status=503")],
            attempts: Some(2),
            resp_count: Some("2"),
            ..R
        },
        Row {
            name: "request-headers-post",
            method: "POST",
            body: "x",
            path: "/get-only/post",
            headers: &[("x-fail", "1:status=503")],
            status: 503,
            ..R
        },
        Row {
            name: "client-retry-headers-stripped",
            path: "/plain/x",
            headers: &[("x-fail", "1:status=503"), ("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")],
            status: 503,
            ..R
        },
        Row {
            name: "route-added-retry-headers",
            path: "/route-header/x",
            headers: &[("x-fail", "3:status=503")],
            attempts: Some(4),
            resp_count: Some("4"),
            ..R
        },
        Row {
            name: "vhost-policy",
            authority: VHOST,
            path: "/v/x",
            headers: &[("x-fail", "1:status=503")],
            attempts: Some(2),
            resp_count: None,
            ..R
        },
        Row {
            name: "route-policy-wins-over-vhost",
            authority: VHOST,
            path: "/own/503",
            headers: &[("x-fail", "1:status=503")],
            status: 503,
            resp_count: None,
            ..R
        },
        Row {
            name: "route-policy-4xx",
            authority: VHOST,
            path: "/own/409",
            headers: &[("x-fail", "1:status=409")],
            attempts: Some(2),
            resp_count: None,
            ..R
        },
        Row {
            name: "previous-hosts",
            authority: VHOST,
            path: "/previous/p",
            attempts: None,
            resp_count: None,
            repeat: 12,
            ..R
        },
    ]
}

/// What one proxy did with one row.
#[derive(Debug, Default, Clone, PartialEq)]
struct Obs {
    statuses: Vec<u16>,
    resp_count: Option<String>,
    body: Bytes,
    attempts: u64,
    /// Per attempt: `x-envoy-attempt-count`, `x-envoy-expected-rq-timeout-ms`, body.
    upstream: Vec<(Option<String>, Option<String>, Bytes)>,
    /// A retry control header reached the upstream.
    leaked: bool,
    error: Option<String>,
    took: Duration,
}

struct Target {
    kind: ProxyKind,
    proc: ProxyProcess,
    backend: FlakyBackend,
    h1: TestClient,
    h2: TestClient,
    addr: SocketAddr,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(kind: ProxyKind) -> Result<Target, String> {
    let backend = spawn_flaky_backend();
    let (admin, listen, dead) = (free_port(), free_port(), free_port());
    let yaml = render_bootstrap(
        "retries.yaml",
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", listen.to_string()),
            ("FLAKY_PORT", backend.addr.port().to_string()),
            ("DEAD_PORT", dead.to_string()),
        ],
    );
    let mut proc = ProxyProcess::try_spawn(kind, &yaml, &[]).map_err(|e| format!("{kind} could not start: {e:#}"))?;
    proc.wait_ready(admin, Duration::from_secs(20)).map_err(|e| format!("{kind} not ready: {e:#}"))?;
    let addr = local(listen);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("{kind} ready but not accepting on {addr}\n{}", proc.logs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Target { kind, proc, backend, h1: http1_client_to(addr), h2: h2c_client_to(addr), addr })
}

async fn run_row(t: &Target, row: &Row, proto: Proto) -> Obs {
    let client = if proto == Proto::H1 { &t.h1 } else { &t.h2 };
    let mut obs = Obs::default();
    let t0 = Instant::now();
    let paths: Vec<String> = if row.repeat > 1 {
        (0..row.repeat).map(|i| format!("{}{i}/{proto:?}", row.path)).collect()
    } else {
        vec![format!("{}/{proto:?}", row.path)]
    };
    for path in &paths {
        let mut req = Request::builder()
            .method(Method::from_bytes(row.method.as_bytes()).expect("method"))
            .uri(format!("http://{}{path}", row.authority));
        for (k, v) in row.headers {
            req = req.header(*k, *v);
        }
        let req = req.body(full(Bytes::from_static(row.body.as_bytes()))).expect("request");
        match send_full(client, req, Duration::from_secs(8)).await {
            Ok(r) => {
                obs.statuses.push(r.status.as_u16());
                obs.resp_count = r.headers.get("x-envoy-attempt-count").and_then(|v| v.to_str().ok()).map(Into::into);
                obs.body = r.body;
            }
            Err(e) => {
                obs.statuses.push(0);
                obs.error = Some(format!("{e:#} (via {})", t.addr));
            }
        }
    }
    obs.took = t0.elapsed();
    if row.repeat == 1 {
        let seen = t.backend.seen(&paths[0]);
        obs.attempts = seen.len() as u64;
        for s in &seen {
            obs.upstream.push((
                s.headers.get("x-envoy-attempt-count").cloned(),
                s.headers.get("x-envoy-expected-rq-timeout-ms").cloned(),
                s.body.clone(),
            ));
            obs.leaked |= s
                .headers
                .keys()
                .any(|k| matches!(k.as_str(), "x-envoy-retry-on" | "x-envoy-max-retries" | "x-envoy-retry-grpc-on"));
        }
    }
    obs
}

fn check(row: &Row, o: &Obs) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(e) = &o.error {
        bad.push(format!("error: {e}"));
    }
    if o.statuses.iter().any(|s| *s != row.status) {
        bad.push(format!("statuses {:?} (want all {})", o.statuses, row.status));
    }
    if o.resp_count.as_deref() != row.resp_count {
        bad.push(format!("response x-envoy-attempt-count {:?} (want {:?})", o.resp_count, row.resp_count));
    }
    if let Some(want) = row.body_is {
        if o.body != want.as_bytes() {
            bad.push(format!("body {:?} (want {want:?})", String::from_utf8_lossy(&o.body)));
        }
    }
    if let Some(n) = row.attempts {
        if o.attempts != n {
            bad.push(format!("backend saw {} attempts (want {n})", o.attempts));
        }
        // Attempt counts 1..n upstream on the counting virtual host, none elsewhere.
        let counts: Vec<Option<String>> = o.upstream.iter().map(|u| u.0.clone()).collect();
        let want: Vec<Option<String>> = (1..=n).map(|i| (row.authority == COUNTED).then(|| i.to_string())).collect();
        if counts != want {
            bad.push(format!("upstream x-envoy-attempt-count {counts:?} (want {want:?})"));
        }
    }
    if let Some(want) = row.expected_timeout {
        if o.upstream.iter().any(|u| u.1.as_deref() != Some(want)) {
            bad.push(format!("upstream x-envoy-expected-rq-timeout-ms {:?} (want {want})", o.upstream));
        }
    }
    if o.upstream.iter().any(|u| u.2 != row.body.as_bytes()) {
        bad.push("an attempt did not carry the whole request body".into());
    }
    if o.leaked {
        bad.push("a retry header reached the upstream".into());
    }
    if o.took < Duration::from_millis(row.min_ms) {
        bad.push(format!("took {:?} (want at least {} ms)", o.took, row.min_ms));
    }
    bad
}

fn compare(a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    let strip = |o: &Obs| Obs { took: Duration::ZERO, error: None, ..o.clone() };
    let (x, y) = (strip(a), strip(b));
    if x.statuses != y.statuses {
        d.push(format!("statuses: envoy {:?} vs pinion {:?}", x.statuses, y.statuses));
    }
    if x.resp_count != y.resp_count {
        d.push(format!("x-envoy-attempt-count: envoy {:?} vs pinion {:?}", x.resp_count, y.resp_count));
    }
    if x.attempts != y.attempts {
        d.push(format!("backend attempts: envoy {} vs pinion {}", x.attempts, y.attempts));
    }
    // Expected timeouts are compared only where the row fixes them (elsewhere they count
    // down with the elapsed time).
    let counts = |o: &Obs| o.upstream.iter().map(|u| (u.0.clone(), u.2.clone())).collect::<Vec<_>>();
    if counts(&x) != counts(&y) {
        d.push(format!("upstream attempts: envoy {:?} vs pinion {:?}", x.upstream, y.upstream));
    }
    if x.statuses.first().is_some_and(|s| *s >= 500)
        && x.body != y.body
        && (a.resp_count.is_some() || b.resp_count.is_some())
    {
        d.push(format!("body: envoy {:?} vs pinion {:?}", x.body, y.body));
    }
    d
}

/// The counters compared: retries, per-try timeouts, abandoned buffers, and the response
/// codes, of the clusters with deterministic traffic (`two` has random picks).
fn retry_stats(p: &ProxyProcess) -> BTreeMap<String, u64> {
    p.stats()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let v = v.trim().parse::<u64>().ok()?;
            let rest =
                ["cluster.flaky.", "cluster.flaky_h2.", "cluster.dead."].iter().find_map(|c| k.strip_prefix(c))?;
            let wanted = rest.starts_with("upstream_rq_retry")
                || rest.starts_with("upstream_rq_per_try")
                || rest.starts_with("retry.")
                || rest == "retry_or_shadow_abandoned"
                || rest == "upstream_rq_timeout"
                || rest == "upstream_rq_completed"
                || rest.strip_prefix("upstream_rq_").is_some_and(|c| c.len() == 3 && c.as_bytes()[0].is_ascii_digit());
            (wanted && v > 0).then(|| (k.to_string(), v))
        })
        .collect()
}

/// The per-host request outcomes of `/clusters` (`rq_error`, `rq_success`, `rq_timeout`,
/// `rq_total`) of the clusters with one host, as `<cluster>::<stat>`: a retried failure is
/// one error for its host, a final one too, a 5xx response an error at its headers.
fn host_stats(p: &ProxyProcess) -> BTreeMap<String, u64> {
    let (_, text) = p.admin_get("/clusters").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split("::");
            let (cluster, _host, stat, v) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let wanted = ["flaky", "flaky_h2", "dead"].contains(&cluster)
                && ["rq_error", "rq_success", "rq_timeout", "rq_total"].contains(&stat);
            let v = v.trim().parse::<u64>().ok()?;
            (wanted && v > 0).then(|| (format!("{cluster}::{stat}"), v))
        })
        .collect()
}

/// What Envoy 1.40's `/clusters` shows per host for the table (both protocols).
const EXPECTED_HOST_STATS: &[(&str, u64)] = &[
    ("dead::rq_error", 6),
    ("flaky::rq_error", 66),
    ("flaky::rq_success", 34),
    ("flaky::rq_timeout", 10),
    ("flaky::rq_total", 100),
    ("flaky_h2::rq_error", 6),
    ("flaky_h2::rq_success", 4),
    ("flaky_h2::rq_total", 10),
];

/// What Envoy 1.40 counts for the table (both protocols), read from its `/stats`.
const EXPECTED_STATS: &[(&str, u64)] = &[
    ("cluster.dead.upstream_rq_503", 2),
    ("cluster.dead.upstream_rq_5xx", 2),
    ("cluster.dead.upstream_rq_completed", 2),
    ("cluster.dead.upstream_rq_retry", 4),
    ("cluster.dead.upstream_rq_retry_backoff_exponential", 4),
    ("cluster.dead.upstream_rq_retry_limit_exceeded", 2),
    ("cluster.flaky.retry.upstream_rq_200", 4),
    ("cluster.flaky.retry.upstream_rq_2xx", 4),
    ("cluster.flaky.retry.upstream_rq_409", 4),
    ("cluster.flaky.retry.upstream_rq_418", 2),
    ("cluster.flaky.retry.upstream_rq_4xx", 6),
    ("cluster.flaky.retry.upstream_rq_500", 2),
    ("cluster.flaky.retry.upstream_rq_503", 22),
    ("cluster.flaky.retry.upstream_rq_504", 4),
    ("cluster.flaky.retry.upstream_rq_5xx", 28),
    ("cluster.flaky.retry.upstream_rq_completed", 38),
    ("cluster.flaky.retry_or_shadow_abandoned", 2),
    ("cluster.flaky.upstream_rq_200", 32),
    ("cluster.flaky.upstream_rq_2xx", 32),
    ("cluster.flaky.upstream_rq_404", 2),
    ("cluster.flaky.upstream_rq_4xx", 2),
    ("cluster.flaky.upstream_rq_500", 2),
    ("cluster.flaky.upstream_rq_503", 12),
    ("cluster.flaky.upstream_rq_504", 4),
    ("cluster.flaky.upstream_rq_5xx", 18),
    ("cluster.flaky.upstream_rq_completed", 52),
    ("cluster.flaky.upstream_rq_per_try_timeout", 8),
    ("cluster.flaky.upstream_rq_retry", 48),
    ("cluster.flaky.upstream_rq_retry_backoff_exponential", 46),
    ("cluster.flaky.upstream_rq_retry_backoff_ratelimited", 2),
    ("cluster.flaky.upstream_rq_retry_limit_exceeded", 6),
    ("cluster.flaky.upstream_rq_retry_success", 30),
    ("cluster.flaky.upstream_rq_timeout", 2),
    ("cluster.flaky_h2.retry.upstream_rq_503", 4),
    ("cluster.flaky_h2.retry.upstream_rq_5xx", 4),
    ("cluster.flaky_h2.retry.upstream_rq_completed", 4),
    ("cluster.flaky_h2.upstream_rq_200", 4),
    ("cluster.flaky_h2.upstream_rq_2xx", 4),
    ("cluster.flaky_h2.upstream_rq_completed", 4),
    ("cluster.flaky_h2.upstream_rq_retry", 6),
    ("cluster.flaky_h2.upstream_rq_retry_backoff_exponential", 6),
    ("cluster.flaky_h2.upstream_rq_retry_success", 4),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let rows = table();
    let names: BTreeSet<_> = rows.iter().map(|r| r.name).collect();
    assert_eq!(names.len(), rows.len(), "row names must be unique");

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

    // Both proxies run a row before the next one: the slow rows (timeouts, backoff) overlap.
    let t_table = Instant::now();
    let (mut passed, mut total) = (0, 0);
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
                failures.push(format!(
                    "row {} [{proto:?}] {} {}:\n  - {}",
                    row.name,
                    row.method,
                    row.path,
                    problems.join("\n  - ")
                ));
            }
        }
    }
    eprintln!("retries: {passed}/{total} row runs passed in {:?}", t_table.elapsed());

    let mut all = Vec::new();
    for t in &targets {
        let s = retry_stats(&t.proc);
        if verbose {
            for (k, v) in &s {
                eprintln!("stat {}: {k}: {v}", t.kind);
            }
        }
        let mut bad = Vec::new();
        for (name, want) in EXPECTED_STATS {
            if s.get(*name) != Some(want) {
                bad.push(format!("{name} = {:?} (want {want})", s.get(*name)));
            }
        }
        for (name, v) in &s {
            if !EXPECTED_STATS.iter().any(|(n, _)| n == name) {
                bad.push(format!("unexpected {name} = {v}"));
            }
        }
        let hs = host_stats(&t.proc);
        if verbose {
            for (k, v) in &hs {
                eprintln!("host stat {}: {k}: {v}", t.kind);
            }
        }
        for (name, want) in EXPECTED_HOST_STATS {
            if hs.get(*name) != Some(want) {
                bad.push(format!("/clusters {name} = {:?} (want {want})", hs.get(*name)));
            }
        }
        for (name, v) in &hs {
            if !EXPECTED_HOST_STATS.iter().any(|(n, _)| n == name) {
                bad.push(format!("unexpected /clusters {name} = {v}"));
            }
        }
        // `two` picks at random: only bounds, and no request may run out of retries.
        let two = |n: &str| t.proc.stat(&format!("cluster.two.{n}")).unwrap_or(0);
        let retries = two("upstream_rq_retry");
        if retries == 0 || retries > 24 || two("upstream_rq_retry_success") != retries {
            bad.push(format!("cluster.two: {retries} retries, {} successes", two("upstream_rq_retry_success")));
        }
        if two("upstream_rq_retry_limit_exceeded") != 0 {
            bad.push("cluster.two ran out of retries: previous_hosts did not steer away".into());
        }
        if !bad.is_empty() {
            failures.push(format!("{} stats:\n  - {}", t.kind, bad.join("\n  - ")));
        }
        all.push(s);
    }
    if let [a, b] = all.as_slice() {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: envoy {:?} vs pinion {:?}", a.get(k), b.get(k)))
            .collect();
        if !diffs.is_empty() {
            failures.push(format!("stats differ:\n  - {}", diffs.join("\n  - ")));
        }
    }
    if !failures.is_empty() {
        let logs: Vec<String> = targets.iter().map(|t| t.proc.logs()).collect();
        panic!("{} of {total} row runs failed\n\n{}\n\n{}", total - passed, failures.join("\n\n"), logs.join("\n"));
    }
}

/// The comparison must notice differences.
#[test]
fn compare_reports_differences() {
    let a = Obs { statuses: vec![200], resp_count: Some("2".into()), attempts: 2, ..Obs::default() };
    assert!(compare(&a, &a.clone()).is_empty());
    let b = Obs { statuses: vec![503], resp_count: Some("3".into()), attempts: 3, ..Obs::default() };
    let d = compare(&a, &b).join("\n");
    assert!(d.contains("statuses") && d.contains("x-envoy-attempt-count") && d.contains("backend attempts"), "{d}");
    let row = table().into_iter().find(|r| r.name == "5xx-then-ok").expect("row");
    assert!(!check(&row, &b).is_empty());
}
