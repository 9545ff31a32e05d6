//! Scenario (f): a large xDS configuration. One in-process control plane (the test control
//! plane of `pinion-xds`, on its own tokio runtime in the harness process) serves every proxy
//! over ADS (SotW) a snapshot of 1,000 EDS clusters with 10 endpoints each (10,000 endpoints,
//! all on the harness's backend ports on 127.0.0.1), one listener with RDS and a
//! RouteConfiguration of 1,000 routes (`/svc-<i>/` → `svc-<i>`).
//!
//! Each run starts a fresh proxy (pinned like the other scenarios) with the snapshot already
//! set for its node id, and measures:
//! * initial load: from spawning the proxy to its ACK of `v1` for all four types (the control
//!   plane timestamps every request it receives), and to the first 200 through the LAST
//!   route (`/svc-999/`); the proxy's CPU time and `VmRSS`/`VmHWM` once loaded;
//! * full update: `v2` moves every cluster's 10 endpoints to 10 other backend ports (CDS,
//!   LDS and RDS are re-sent unchanged under the new version, as a SotW server does); from
//!   `set_snapshot` to the ACK of `v2` for all four types, and to the first request through
//!   `/svc-999/` that reaches one of the new endpoints; CPU for the update, RSS after it and
//!   the peak (`VmHWM`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use pinion_xds::control_plane::{ControlPlane, ShutdownHandle, Snapshot};
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use pinion_xds::sink::ResourceType;

use crate::backend::{Backend, SMALL_BODY_LEN};
use crate::client;
use crate::procs::{self, Proc};
use crate::proxies::{self, Installed, Kind};
use crate::report::{fmt_spread, spread, Spread};

/// EDS clusters (and routes) in the snapshot.
pub const CLUSTERS: usize = 1000;
/// Endpoints per cluster (each on its own backend port).
pub const ENDPOINTS_PER_CLUSTER: usize = 10;
/// The four types, in Envoy's request order.
const TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::ClusterLoadAssignment,
    ResourceType::Listener,
    ResourceType::RouteConfiguration,
];
/// Bound on each phase (load, update) of one run.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two probes while waiting for the first routed request.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// How long the proxy may settle before its RSS and CPU time are read.
const SETTLE: Duration = Duration::from_millis(500);

/// The control plane and the two backend sets (v1 endpoints, v2 endpoints).
pub struct XdsServer {
    /// The control plane.
    pub cp: Arc<ControlPlane>,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Backend ports of the `v1` endpoints.
    pub v1: Backend,
    /// Backend ports of the `v2` endpoints (their hit counter tells that `v2` is in use).
    pub v2: Backend,
    shutdown: Option<ShutdownHandle>,
    rt: tokio::runtime::Runtime,
}

impl XdsServer {
    /// Starts the control plane on its own runtime thread (inheriting the caller's CPU
    /// affinity: the load core) and the two backend sets.
    pub fn start() -> anyhow::Result<XdsServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-xds")
            .enable_all()
            .build()
            .context("control plane runtime")?;
        let cp = ControlPlane::new();
        let (addr, shutdown) = rt
            .block_on(async { cp.serve(SocketAddr::from(([127, 0, 0, 1], 0))) })
            .context("start the control plane")?;
        Ok(XdsServer {
            cp,
            port: addr.port(),
            v1: Backend::spawn_ports(ENDPOINTS_PER_CLUSTER)?,
            v2: Backend::spawn_ports(ENDPOINTS_PER_CLUSTER)?,
            shutdown: Some(shutdown),
            rt,
        })
    }
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        if let Some(h) = self.shutdown.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

fn yaml<M: prost::Message + prost::Name + Default>(text: &str) -> anyhow::Result<M> {
    message_from_str(text, Format::Yaml, &DecodeOptions::default()).map_err(|e| anyhow::anyhow!("{e}\n{text}"))
}

/// The snapshot: 1,000 EDS clusters `svc-<i>` whose 10 endpoints are `ports`, one listener
/// on `listen_port` with RDS `routes`, and `routes` with `/svc-<i>/` → `svc-<i>`.
pub fn snapshot(version: &str, listen_port: u16, ports: &[u16]) -> anyhow::Result<Snapshot> {
    anyhow::ensure!(ports.len() >= ENDPOINTS_PER_CLUSTER, "need {ENDPOINTS_PER_CLUSTER} backend ports");
    let cluster: Cluster = yaml(
        "name: t\ntype: EDS\nconnect_timeout: 1s\n\
         eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }\n",
    )?;
    let eps: Vec<String> = ports[..ENDPOINTS_PER_CLUSTER]
        .iter()
        .map(|p| {
            format!("  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}")
        })
        .collect();
    let cla: ClusterLoadAssignment =
        yaml(&format!("cluster_name: t\nendpoints:\n- lb_endpoints:\n{}\n", eps.join("\n")))?;
    let mut routes = String::new();
    for i in 0..CLUSTERS {
        let _ = writeln!(routes, "  - match: {{ prefix: \"/svc-{i}/\" }}\n    route: {{ cluster: svc-{i} }}");
    }
    let rc: RouteConfiguration =
        yaml(&format!("name: routes\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n{routes}"))?;
    let listener: Listener = yaml(&format!(
        r#"
name: bench
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: bench
      codec_type: AUTO
      rds: {{ route_config_name: routes, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))?;
    let mut s = Snapshot::new(version);
    for i in 0..CLUSTERS {
        let name = format!("svc-{i}");
        let mut c = cluster.clone();
        c.name = name.clone();
        let mut e = cla.clone();
        e.cluster_name = name;
        s = s.with_cluster(c).with_endpoints(e);
    }
    Ok(s.with_route(rc).with_listener(listener))
}

/// One run of one proxy.
#[derive(Clone, Debug, Default)]
pub struct XdsSample {
    /// Spawn → the last of the four `v1` ACKs.
    pub start_ack: Duration,
    /// Spawn → the first 200 through `/svc-999/`.
    pub start_route: Duration,
    /// Spawn → each type's `v1` ACK (Cluster, ClusterLoadAssignment, Listener, RouteConfiguration).
    pub start_ack_by_type: [Duration; 4],
    /// Proxy CPU time from spawn until loaded (+ settle), seconds.
    pub load_cpu_s: f64,
    /// VmRSS once loaded (KiB).
    pub loaded_rss_kib: u64,
    /// VmHWM once loaded (KiB).
    pub loaded_hwm_kib: u64,
    /// `set_snapshot(v2)` → the last of the four `v2` ACKs.
    pub update_ack: Duration,
    /// `set_snapshot(v2)` → the first 200 through `/svc-999/` from a `v2` endpoint.
    pub update_route: Duration,
    /// `set_snapshot(v2)` → each type's `v2` ACK.
    pub update_ack_by_type: [Duration; 4],
    /// Proxy CPU time for the update (+ settle), seconds.
    pub update_cpu_s: f64,
    /// VmRSS after the update (KiB).
    pub updated_rss_kib: u64,
    /// VmHWM at the end of the run (KiB).
    pub peak_rss_kib: u64,
}

/// All runs of scenario (f).
#[derive(Default)]
pub struct XdsResults {
    /// Samples by proxy, in run order.
    pub samples: BTreeMap<Kind, Vec<XdsSample>>,
    /// Failed runs by proxy.
    pub failures: BTreeMap<Kind, Vec<String>>,
    /// Wall time of the whole scenario.
    pub elapsed: Duration,
}

impl XdsResults {
    /// Spread of one figure.
    pub fn spread_of(&self, k: Kind, f: impl Fn(&XdsSample) -> f64) -> Option<Spread> {
        let v: Vec<f64> = self.samples.get(&k).map(|s| s.iter().map(&f).collect()).unwrap_or_default();
        spread(&v)
    }

    /// Median of one figure.
    pub fn median_of(&self, k: Kind, f: impl Fn(&XdsSample) -> f64) -> Option<f64> {
        self.spread_of(k, f).map(|s| s.median)
    }
}

/// What a run needs from the harness.
pub struct RunCtx<'a> {
    /// Runtime for the probe client.
    pub rt: &'a tokio::runtime::Runtime,
    /// Scratch directory.
    pub scratch: &'a Path,
    /// CPUs for the proxy (`None`: unpinned).
    pub cpus: Option<&'a str>,
    /// Clock ticks per second.
    pub clk_tck: u64,
}

/// One run: initial load, then the full update. The proxy is always stopped.
pub fn run_one(ctx: &RunCtx<'_>, xs: &XdsServer, p: &Installed, round: u32) -> anyhow::Result<XdsSample> {
    let node = format!("pinion-bench-f-{}-{round}", p.kind.name().to_lowercase());
    let listen_port = proxies::free_port()?;
    let v1 = snapshot("v1", listen_port, &xs.v1.ports())?;
    let v2 = snapshot("v2", listen_port, &xs.v2.ports())?;
    let dir = ctx.scratch.join(format!("f-{}-{round}", p.kind.name().to_lowercase()));
    xs.cp.clear_requests();
    xs.cp.set_snapshot(&node, v1);
    let probe = client::Probe {
        port: listen_port,
        path: format!("/svc-{}/", CLUSTERS - 1),
        h2: false,
        body: None,
        headers: vec![],
        expect_len: SMALL_BODY_LEN,
        grpc: false,
        tls_ca: None,
    };

    let t0 = Instant::now();
    let mut proc = proxies::spawn_xds(p, &dir, &node, xs.port, 1, ctx.cpus)?;
    let pid = proc.pid();
    let result = (|| -> anyhow::Result<XdsSample> {
        let mut s = XdsSample::default();
        let routed = wait_routed(ctx.rt, &probe, &mut proc, t0 + PHASE_TIMEOUT, || true).context("initial load")?;
        let acks = wait_acks(&xs.cp, &node, "v1", t0, &mut proc, t0 + PHASE_TIMEOUT).context("initial load")?;
        s.start_route = routed - t0;
        s.start_ack_by_type = acks.map(|a| a - t0);
        s.start_ack = s.start_ack_by_type.iter().copied().max().unwrap_or_default();
        std::thread::sleep(SETTLE);
        let ticks_loaded = procs::tree_cpu_ticks(pid);
        s.load_cpu_s = ticks_loaded as f64 / ctx.clk_tck as f64;
        s.loaded_rss_kib = procs::tree_status_kib(pid, "VmRSS");
        s.loaded_hwm_kib = procs::tree_status_kib(pid, "VmHWM");

        let hits0 = xs.v2.hit_count();
        let t1 = Instant::now();
        xs.cp.set_snapshot(&node, v2);
        let routed = wait_routed(ctx.rt, &probe, &mut proc, t1 + PHASE_TIMEOUT, || xs.v2.hit_count() > hits0)
            .context("update v1 -> v2")?;
        let acks = wait_acks(&xs.cp, &node, "v2", t1, &mut proc, t1 + PHASE_TIMEOUT).context("update v1 -> v2")?;
        s.update_route = routed - t1;
        s.update_ack_by_type = acks.map(|a| a - t1);
        s.update_ack = s.update_ack_by_type.iter().copied().max().unwrap_or_default();
        std::thread::sleep(SETTLE);
        s.update_cpu_s = procs::tree_cpu_ticks(pid).saturating_sub(ticks_loaded) as f64 / ctx.clk_tck as f64;
        s.updated_rss_kib = procs::tree_status_kib(pid, "VmRSS");
        s.peak_rss_kib = procs::tree_status_kib(pid, "VmHWM");
        if let Some(st) = proc.exited() {
            bail!("{} exited during the run: {st}", p.kind.name());
        }
        Ok(s)
    })();
    let result = result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", proc.log_tail()));
    proc.stop();
    xs.cp.clear_snapshot(&node);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Probes until a 200 with the full body comes back and `cond` holds; returns when.
fn wait_routed(
    rt: &tokio::runtime::Runtime,
    probe: &client::Probe,
    proc: &mut Proc,
    deadline: Instant,
    cond: impl Fn() -> bool,
) -> anyhow::Result<Instant> {
    // Bounded by the deadline.
    loop {
        let last = match client::attempt(rt, probe, Duration::from_secs(2)) {
            Ok(()) if cond() => return Ok(Instant::now()),
            Ok(()) => "200 from an old endpoint".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if let Some(st) = proc.exited() {
            bail!("the proxy exited: {st}");
        }
        if Instant::now() > deadline {
            bail!("no routed request to {} within {PHASE_TIMEOUT:?} (last: {last})", probe.path);
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Waits until `node` ACKed `version` for all four types (after `since`); fails on a NACK.
/// Returns when each ACK arrived, in [`TYPES`] order.
fn wait_acks(
    cp: &ControlPlane,
    node: &str,
    version: &str,
    since: Instant,
    proc: &mut Proc,
    deadline: Instant,
) -> anyhow::Result<[Instant; 4]> {
    // Bounded by the deadline.
    loop {
        let reqs = cp.requests();
        if let Some(n) = reqs.iter().find(|r| r.node_id == node && r.is_nack()) {
            bail!("NACK of {} version {:?}: {:?}", n.type_url, n.version_info, n.error_detail);
        }
        let at = TYPES.map(|t| {
            reqs.iter()
                .find(|r| {
                    r.node_id == node
                        && r.type_url == t.type_url()
                        && r.is_ack()
                        && r.version_info == version
                        && r.received_at >= since
                })
                .map(|r| r.received_at)
        });
        if at.iter().all(Option::is_some) {
            return Ok(at.map(|a| a.unwrap_or(since)));
        }
        if let Some(st) = proc.exited() {
            bail!("the proxy exited: {st}");
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> =
                TYPES.iter().zip(at).filter(|(_, a)| a.is_none()).map(|(t, _)| t.type_url()).collect();
            bail!("no ACK of {version} for {missing:?} within {PHASE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One log line for a run.
pub fn log_line(s: &XdsSample) -> String {
    let by_type = |a: &[Duration; 4], f: fn(Duration) -> f64| {
        a.iter().map(|d| format!("{:.0}", f(*d))).collect::<Vec<_>>().join("/")
    };
    format!(
        "load: ACK {:.2} s (CDS/EDS/LDS/RDS {} ms), routed {:.2} s, CPU {:.2} s, RSS {:.1} MiB (HWM {:.1}); \
         update: ACK {:.0} ms ({} ms), routed {:.0} ms, CPU {:.0} ms, RSS {:.1} MiB, peak {:.1} MiB",
        secs(s.start_ack),
        by_type(&s.start_ack_by_type, ms),
        secs(s.start_route),
        s.load_cpu_s,
        s.loaded_rss_kib as f64 / 1024.0,
        s.loaded_hwm_kib as f64 / 1024.0,
        ms(s.update_ack),
        by_type(&s.update_ack_by_type, ms),
        ms(s.update_route),
        s.update_cpu_s * 1e3,
        s.updated_rss_kib as f64 / 1024.0,
        s.peak_rss_kib as f64 / 1024.0,
    )
}

/// Medians of Pinion and Envoy for the loaded RSS (the target's figure), in MiB.
pub fn loaded_rss_mib(r: &XdsResults, k: Kind) -> Option<f64> {
    r.median_of(k, |s| s.loaded_rss_kib as f64 / 1024.0)
}

/// The (f) section of RESULTS.md: one row per proxy and the Pinion/Envoy ratio row.
pub fn render(r: &XdsResults, runs: u32) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## (f) xDS scale: {CLUSTERS} EDS clusters, {} endpoints, {CLUSTERS} routes\n",
        CLUSTERS * ENDPOINTS_PER_CLUSTER
    );
    let _ = writeln!(
        md,
        "One in-process control plane (the test control plane of `pinion-xds`, in the harness process on the load core) \
         serves each proxy over ADS SotW: {CLUSTERS} EDS clusters `svc-<i>` with {ENDPOINTS_PER_CLUSTER} endpoints each (on \
         {ENDPOINTS_PER_CLUSTER} backend ports of 127.0.0.1), one listener with RDS, and one RouteConfiguration of {CLUSTERS} \
         prefix routes `/svc-<i>/` → `svc-<i>`. Same bootstrap for both (node id and ports differ), `--concurrency 1`, proxy \
         pinned to core 0; {runs} fresh run(s) per proxy, alternating. **Load**: from spawning the proxy (the snapshot is \
         already set) to its ACK of `v1` for all four types (the control plane timestamps every request), and to the first \
         200 through the last route `/svc-{}/` (probed every 5 ms); CPU is the proxy's utime+stime from spawn to loaded \
         (+0.5 s); RSS is read 0.5 s after both. **Update**: `v2` moves every cluster's endpoints to {ENDPOINTS_PER_CLUSTER} \
         other backend ports (CDS, LDS and RDS are re-sent unchanged with the new version, as SotW does); from \
         `set_snapshot(v2)` to the ACK of `v2` for all four types, and to the first request through `/svc-{}/` that reached \
         a `v2` endpoint. RSS peak is `VmHWM` at the end of the run. Cells: median (min–max).\n",
        CLUSTERS - 1,
        CLUSTERS - 1
    );
    let _ = writeln!(
        md,
        "| Proxy | load: start → all ACKed s | load: start → `/svc-{}/` routed s | load CPU s | RSS loaded MiB | update: push → all ACKed ms | update: push → routed to new endpoints ms | update CPU ms | RSS after update MiB | RSS peak MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        CLUSTERS - 1
    );
    type Fig = fn(&XdsSample) -> f64;
    let figs: [(Fig, usize); 9] = [
        (|s| secs(s.start_ack), 2),
        (|s| secs(s.start_route), 2),
        (|s| s.load_cpu_s, 2),
        (|s| s.loaded_rss_kib as f64 / 1024.0, 1),
        (|s| ms(s.update_ack), 0),
        (|s| ms(s.update_route), 0),
        (|s| s.update_cpu_s * 1e3, 0),
        (|s| s.updated_rss_kib as f64 / 1024.0, 1),
        (|s| s.peak_rss_kib as f64 / 1024.0, 1),
    ];
    for k in [Kind::Pinion, Kind::Envoy] {
        if r.samples.get(&k).is_none_or(|s| s.is_empty()) {
            if let Some(f) = r.failures.get(&k).and_then(|f| f.first()) {
                let first = f.lines().next().unwrap_or("").replace('|', "/");
                let _ = writeln!(md, "| {} | failed: {first} | | | | | | | | |", k.name());
            }
            continue;
        }
        let cells: Vec<String> = figs.iter().map(|(f, p)| fmt_spread(r.spread_of(k, f), *p)).collect();
        let _ = writeln!(md, "| {} | {} |", k.name(), cells.join(" | "));
    }
    let ratios: Vec<String> = figs
        .iter()
        .map(|(f, _)| match (r.median_of(Kind::Pinion, f), r.median_of(Kind::Envoy, f)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "—".into(),
        })
        .collect();
    let _ = writeln!(md, "| Pinion/Envoy (medians) | {} |", ratios.join(" | "));
    let _ = writeln!(md);
    let _ = writeln!(md, "(f) took {:.0} s of this run.\n", r.elapsed.as_secs_f64());
    md
}
