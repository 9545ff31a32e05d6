//! Differential test of the hash-based load balancers: the real Envoy and Pinion get the same
//! bootstrap (`bootstraps/hash_lb.yaml`, only ports differ) in front of the SAME five
//! backends (one set, so the host addresses, which the rings and tables hash, are equal), and
//! the same requests. Every request's key (a header, a cookie, a query parameter, the
//! `x-forwarded-for` client address, a combination, a regex-rewritten path) must reach the
//! same backend through both proxies: ring hash (default, weighted with small ring bounds,
//! typed with hostnames, `envoy.lb` `hash_key` metadata) and Maglev (default, weighted with a
//! small table, typed with hostnames, `hash_key` metadata), 200 keys each.
//!
//! Each proxy's answers are also checked on their own: every key sticks to its backend when
//! sent again, keys spread over several backends, and a missing cookie with a `ttl` comes
//! back as Envoy's `Set-Cookie`. The `ring_hash_lb.*` / `maglev_lb.*` gauges (ring size,
//! replicas and slots per host) must be equal too. A `tcp_proxy` with a `source_ip` hash policy sends every
//! connection from 127.0.0.1 to one backend, the same through both proxies.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs one proxy; `INTEROP_VERBOSE=1` prints the mappings.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request};
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    empty, free_port, http1_client_to, send_full, spawn_http_backend_named, Backend, BackendKind, ProxyKind,
    ProxyProcess,
};

/// Keys per hashed cluster.
const KEYS: usize = 200;
/// Keys per hash policy kind (on clusters already covered above).
const POLICY_KEYS: usize = 50;

/// The header-keyed routes, one per cluster.
const CLUSTERS: [&str; 8] = [
    "ring",
    "ring_weighted",
    "ring_typed",
    "ring_hash_key",
    "maglev",
    "maglev_weighted",
    "maglev_typed",
    "maglev_hash_key",
];

/// One request: a label to compare by, its path and headers.
struct Probe {
    label: String,
    path: String,
    headers: Vec<(&'static str, String)>,
}

fn probe(label: String, path: String, headers: Vec<(&'static str, String)>) -> Probe {
    Probe { label, path, headers }
}

/// Every request whose backend is compared between the proxies.
fn probes() -> Vec<Probe> {
    let mut v = Vec::new();
    for c in CLUSTERS {
        for i in 0..KEYS {
            v.push(probe(format!("{c}/{i}"), format!("/{c}/x"), vec![("x-key", format!("user-{i}"))]));
        }
    }
    for i in 0..POLICY_KEYS {
        v.push(probe(format!("cookie/{i}"), "/cookie/x".into(), vec![("cookie", format!("a=1; sticky={i:016x}"))]));
        v.push(probe(format!("query/{i}"), format!("/query/x?a=1&user=u{i}&user=other"), vec![]));
        v.push(probe(format!("ip/{i}"), "/ip/x".into(), vec![("x-forwarded-for", format!("10.1.{i}.7"))]));
        // Three headers, some missing; the terminal `x-key` ends the list.
        let mut combo = vec![("x-key", format!("k{i}"))];
        if i % 2 == 0 {
            combo.push(("x-a", format!("a{i}")));
        }
        if i % 3 == 0 {
            combo.push(("x-b", format!("b{i}")));
        }
        v.push(probe(format!("combo/{i}"), "/combo/x".into(), combo));
        // Several values of one header: sorted before hashing.
        v.push(probe(
            format!("multi/{i}"),
            "/ring/x".into(),
            vec![("x-key", format!("z{i}")), ("x-key", format!("a{i}"))],
        ));
        v.push(probe(format!("rewrite/{i}"), format!("/rewrite/t{i}/one"), vec![]));
        v.push(probe(format!("authority/{i}"), "/authority/x".into(), vec![("host", format!("h{i}.example"))]));
        v.push(probe(format!("hostheader/{i}"), "/hostheader/x".into(), vec![("host", format!("h{i}.example"))]));
    }
    v
}

/// What one proxy answered.
struct Run {
    /// Probe label -> backend name.
    backends: BTreeMap<String, String>,
    /// Problems found in this proxy's answers alone.
    failures: Vec<String>,
    /// The `ring_hash_lb.*` and `maglev_lb.*` gauges (ring sizes, replicas and slots per host).
    lb_stats: BTreeMap<String, u64>,
}

async fn get(
    client: &pinion_testkit::TestClient,
    path: &str,
    headers: &[(&'static str, String)],
) -> (u16, Option<String>, Vec<String>) {
    let mut req = Request::builder().method(Method::GET).uri(format!("http://hash.example{path}"));
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let r = send_full(client, req.body(empty()).expect("request"), Duration::from_secs(10)).await.expect(path);
    let backend = r.headers.get("x-backend").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let cookies = r.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    (r.status.as_u16(), backend, cookies)
}

fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

async fn exercise(listen: SocketAddr, tcp: SocketAddr, kind: ProxyKind) -> Run {
    let client = http1_client_to(listen);
    let mut backends = BTreeMap::new();
    let mut failures = Vec::new();
    for p in probes() {
        let (status, backend, _) = get(&client, &p.path, &p.headers).await;
        match (status, backend) {
            (200, Some(b)) => {
                backends.insert(p.label, b);
            }
            (s, b) => failures.push(format!("{kind}: {} {}: status {s}, backend {b:?}", p.label, p.path)),
        }
    }
    // Sticky: the same key again, and a rewritten path that keeps the key, land where they did.
    for c in CLUSTERS {
        for i in 0..20 {
            let (_, b, _) = get(&client, &format!("/{c}/again"), &[("x-key", format!("user-{i}"))]).await;
            let first = backends.get(&format!("{c}/{i}"));
            if b.as_ref() != first {
                failures.push(format!("{kind}: {c}/{i} moved from {first:?} to {b:?}"));
            }
        }
        let spread: BTreeSet<&String> =
            backends.iter().filter(|(k, _)| k.starts_with(&format!("{c}/"))).map(|(_, v)| v).collect();
        if spread.len() < 3 {
            failures.push(format!("{kind}: {c}: {KEYS} keys reached only {spread:?}"));
        }
    }
    for i in 0..10 {
        let (_, b, _) = get(&client, &format!("/rewrite/t{i}/two?x=1"), &[]).await;
        let first = backends.get(&format!("rewrite/{i}"));
        if b.as_ref() != first {
            failures.push(format!("{kind}: rewrite/{i}: the rewritten key moved from {first:?} to {b:?}"));
        }
    }
    // A missing cookie with a TTL is generated: Envoy's Set-Cookie, 16 hex digits of value.
    let (_, _, cookies) = get(&client, "/cookie/new", &[]).await;
    match cookies.as_slice() {
        [c] if c.starts_with("sticky=\"") && c.ends_with("\"; Max-Age=60; Path=/; HttpOnly") => {
            if !is_hex16(&c["sticky=\"".len()..c.len() - "\"; Max-Age=60; Path=/; HttpOnly".len()]) {
                failures.push(format!("{kind}: generated cookie value: {c}"));
            }
        }
        other => failures.push(format!("{kind}: generated cookie: {other:?}")),
    }
    let (_, _, cookies) = get(&client, "/session-cookie/new", &[]).await;
    match cookies.as_slice() {
        [c] if c.starts_with("sticky=\"") && c.ends_with("\"; SameSite=Lax; Secure; HttpOnly") => {}
        other => failures.push(format!("{kind}: generated session cookie: {other:?}")),
    }
    // A cookie that is present is used, not set again.
    let (_, _, cookies) = get(&client, "/cookie/x", &[("cookie", "sticky=abc".into())]).await;
    if !cookies.is_empty() {
        failures.push(format!("{kind}: a present cookie was set again: {cookies:?}"));
    }
    // tcp_proxy hashing by the client IP: every connection (new each time) to one backend.
    let mut tcp_backends = BTreeSet::new();
    for _ in 0..5 {
        let c = http1_client_to(tcp);
        tcp_backends.insert(get(&c, "/tcp", &[]).await.1);
    }
    match tcp_backends.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(b)] => {
            backends.insert("tcp_proxy/127.0.0.1".into(), b.clone());
        }
        other => failures.push(format!("{kind}: tcp_proxy source_ip reached {other:?}")),
    }
    // Without a hash policy the hash balancers pick at random: several backends.
    let mut random = BTreeSet::new();
    for _ in 0..60 {
        random.insert(get(&client, "/nohash/x", &[]).await.1);
    }
    if random.len() < 3 {
        failures.push(format!("{kind}: no hash policy reached only {random:?}"));
    }
    Run { backends, failures, lb_stats: BTreeMap::new() }
}

fn run(kind: ProxyKind, backends: &[Backend]) -> Run {
    let (admin, listen, tcp) = (free_port(), free_port(), free_port());
    let mut vars =
        vec![("ADMIN_PORT", admin.to_string()), ("LISTEN_PORT", listen.to_string()), ("TCP_PORT", tcp.to_string())];
    let names = ["B0_PORT", "B1_PORT", "B2_PORT", "B3_PORT", "B4_PORT"];
    for (n, b) in names.iter().zip(backends) {
        vars.push((n, b.port().to_string()));
    }
    let yaml = render_bootstrap("hash_lb.yaml", &vars);
    let mut p = ProxyProcess::spawn(kind, &yaml, &["--concurrency", "2"]);
    p.wait_ready(admin, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let listen = SocketAddr::from(([127, 0, 0, 1], listen));
    let tcp = SocketAddr::from(([127, 0, 0, 1], tcp));
    let run = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), exercise(listen, tcp, kind))
            .await
            .expect("requests within 120 s")
    });
    let mut run = run;
    run.lb_stats = p
        .stats()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let keep = k.contains(".ring_hash_lb.") || k.contains(".maglev_lb.");
            Some((k.to_string(), v.trim().parse().ok()?)).filter(|_| keep)
        })
        .collect();
    p.kill();
    run
}

#[test]
fn hash_lb_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let backends: Vec<Backend> =
        (0..5).map(|i| spawn_http_backend_named(BackendKind::Http1, &format!("b{i}"))).collect();
    let runs: Vec<(ProxyKind, Run)> = kinds.iter().map(|k| (*k, run(*k, &backends))).collect();
    let verbose = std::env::var("INTEROP_VERBOSE").is_ok();
    if verbose {
        eprintln!("ports: {:?}", backends.iter().map(|b| b.port()).collect::<Vec<_>>());
    }
    let mut failures: Vec<String> = runs.iter().flat_map(|(_, r)| r.failures.iter().cloned()).collect();
    if verbose {
        for (kind, r) in &runs {
            eprintln!("{kind}: {:?}", r.backends);
        }
    }
    if let [(_, envoy), (_, pinion)] = runs.as_slice() {
        let mut differ: BTreeMap<&str, usize> = BTreeMap::new();
        for (label, e) in &envoy.backends {
            let p = pinion.backends.get(label);
            if p != Some(e) {
                let group = label.split('/').next().unwrap_or("");
                *differ.entry(group).or_default() += 1;
                if differ[group] <= 3 {
                    failures.push(format!("{label}: envoy {e}, pinion {p:?}"));
                }
            }
        }
        if !differ.is_empty() {
            failures.push(format!("keys mapped differently, per group: {differ:?}"));
        }
        // 4 ring clusters x 3 gauges, 4 Maglev clusters x 2.
        if envoy.lb_stats.len() != 20 || envoy.lb_stats != pinion.lb_stats {
            failures.push(format!("lb gauges:\nenvoy:  {:?}\npinion: {:?}", envoy.lb_stats, pinion.lb_stats));
        }
        if envoy.backends.len() != pinion.backends.len() {
            failures.push(format!("answered: envoy {}, pinion {}", envoy.backends.len(), pinion.backends.len()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
