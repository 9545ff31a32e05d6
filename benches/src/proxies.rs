//! The proxies under test and their configs. Pinion and Envoy get the very same bootstrap
//! file and the same command line; nginx and HAProxy get the closest plain reverse-proxy
//! config (reference points only).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::procs::Proc;

/// A proxy under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// This project.
    Pinion,
    /// The reference implementation.
    Envoy,
    /// nginx (Debian), plain reverse proxy.
    Nginx,
    /// HAProxy (Debian), plain reverse proxy.
    Haproxy,
}

impl Kind {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pinion => "Pinion",
            Kind::Envoy => "Envoy",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
        }
    }
}

/// A located proxy binary.
#[derive(Clone, Debug)]
pub struct Installed {
    /// Which proxy.
    pub kind: Kind,
    /// Its binary.
    pub bin: PathBuf,
    /// Its version line.
    pub version: String,
}

/// A started proxy; stopped and reaped on drop.
pub struct Running {
    /// The process (taskset execs the proxy, so this is the proxy's pid).
    pub proc: Proc,
    /// Port for HTTP/1.1 traffic.
    pub h1_port: u16,
    /// Port for h2c (prior knowledge) traffic.
    pub h2_port: u16,
    /// Admin port (Pinion and Envoy).
    pub admin_port: Option<u16>,
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The bootstrap given unchanged (but for ports) to both Pinion and Envoy: one listener
/// (HCM, codec AUTO, router), three static clusters on the same backend: HTTP/1.1, HTTP/2
/// (h2c) and gRPC (HTTP/2).
pub fn envoy_bootstrap(admin_port: u16, listen_port: u16, backend_port: u16) -> String {
    format!(
        r#"# pinion-bench: the same bootstrap for Pinion and Envoy.
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/bench.Bench/" }}
                route: {{ cluster: grpc }}
              - match: {{ prefix: "/h2/" }}
                route: {{ cluster: backend_h2 }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend_h1 }}
  clusters:
  - name: backend_h1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend_h1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }}
  - name: backend_h2
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: backend_h2
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }}
  - name: grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }}
"#
    )
}

/// The HTTP filter chain a bench bootstrap carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// As written: the router filter only.
    Default,
    /// [`with_filters`]: fault, CORS and local rate limit before the router, none of which ever acts.
    Filters,
    /// [`with_resilience`]: circuit breakers and outlier detection on every cluster, never triggering.
    Resilience,
}

impl Variant {
    /// `default` / `filters` (the `--variant` values).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::Filters => "filters",
            Variant::Resilience => "resilience",
        }
    }

    /// The variant named `name` (`default`, `filters`, `resilience`).
    pub fn parse(name: &str) -> Option<Variant> {
        [Variant::Default, Variant::Filters, Variant::Resilience].into_iter().find(|v| v.name() == name)
    }

    /// `bootstrap` as this variant: unchanged, or through [`with_filters`].
    pub fn apply(self, bootstrap: String) -> anyhow::Result<String> {
        match self {
            Variant::Default => Ok(bootstrap),
            Variant::Filters => with_filters(&bootstrap),
            Variant::Resilience => with_resilience(&bootstrap),
        }
    }
}

/// The origin the CORS policy admits; the load never sends an `Origin` header.
pub const CORS_ORIGIN: &str = "https://cors-origin.bench.invalid";

/// The HTTP filters [`with_filters`] puts before the router, as Envoy 1.40 accepts them.
/// Each is configured but never acts on the bench load: fault injection (an abort and a
/// delay) at 0%, CORS (the policy is per virtual host, for an origin the load never sends)
/// and a local rate limit whose token bucket never runs dry.
pub fn bench_filters() -> Vec<Value> {
    let never = json!({ "numerator": 0, "denominator": "HUNDRED" });
    let always = json!({ "numerator": 100, "denominator": "HUNDRED" });
    vec![
        json!({
            "name": "envoy.filters.http.fault",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "abort": { "http_status": 503, "percentage": never },
                "delay": { "fixed_delay": "1s", "percentage": never },
            },
        }),
        json!({
            "name": "envoy.filters.http.cors",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" },
        }),
        json!({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "bench_local_rate_limit",
                "token_bucket": { "max_tokens": 1_000_000_000u32, "tokens_per_fill": 1_000_000_000u32, "fill_interval": "1s" },
                "filter_enabled": { "runtime_key": "local_rate_limit_enabled", "default_value": always },
                "filter_enforced": { "runtime_key": "local_rate_limit_enforced", "default_value": always },
            },
        }),
    ]
}

/// The per-virtual-host CORS policy (`typed_per_filter_config` of `envoy.filters.http.cors`).
pub fn bench_cors_policy() -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{ "exact": CORS_ORIGIN }],
        "allow_methods": "GET, POST",
        "allow_headers": "content-type",
        "max_age": "600",
    })
}

/// `bootstrap` (YAML or JSON: any bench bootstrap) with [`bench_filters`] inserted before the
/// router of every HTTP connection manager of its static listeners, and [`bench_cors_policy`]
/// in every virtual host of their inline route configs. Everything else is left as it is, so
/// the bootstrap a scenario uses stays the one source of truth. Returns YAML.
pub fn with_filters(bootstrap: &str) -> anyhow::Result<String> {
    const HCM: &str = "envoy.filters.network.http_connection_manager";
    const ROUTER: &str = "envoy.filters.http.router";
    let mut v: Value = serde_yaml::from_str(bootstrap).context("parse the bootstrap")?;
    let mut edited = 0;
    let listeners = v["static_resources"]["listeners"].as_array_mut().context("no static listeners")?;
    for l in listeners {
        let name = l["name"].as_str().unwrap_or("?").to_string();
        for chain in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in chain["filters"].as_array_mut().into_iter().flatten() {
                if f["name"] != HCM {
                    continue;
                }
                let hcm = &mut f["typed_config"];
                let filters =
                    hcm["http_filters"].as_array_mut().with_context(|| format!("listener {name}: no http_filters"))?;
                let router = filters
                    .iter()
                    .position(|h| h["name"] == ROUTER)
                    .with_context(|| format!("listener {name}: no {ROUTER}"))?;
                filters.splice(router..router, bench_filters());
                let vhosts = hcm["route_config"]["virtual_hosts"]
                    .as_array_mut()
                    .with_context(|| format!("listener {name}: no inline route_config with virtual_hosts"))?;
                for vh in vhosts {
                    let per_filter = vh
                        .as_object_mut()
                        .context("virtual host")?
                        .entry("typed_per_filter_config")
                        .or_insert_with(|| json!({}));
                    per_filter["envoy.filters.http.cors"] = bench_cors_policy();
                }
                edited += 1;
            }
        }
    }
    anyhow::ensure!(edited > 0, "no {HCM} in the bootstrap's static listeners");
    serde_yaml::to_string(&v).context("write the bootstrap")
}

/// The `circuit_breakers` [`with_resilience`] gives every cluster: non-default thresholds for
/// both priorities, with `track_remaining` (the `remaining_*` gauges are kept up to date on
/// every request), all far above what the bench load reaches (50 connections).
pub fn bench_circuit_breakers() -> Value {
    let t = |priority: &str, limit: u32, retries: u32| {
        json!({
            "priority": priority,
            "max_connections": limit,
            "max_pending_requests": limit,
            "max_requests": limit,
            "max_retries": retries,
            "max_connection_pools": limit,
            "track_remaining": true,
        })
    };
    json!({ "thresholds": [t("DEFAULT", 4096, 64), t("HIGH", 2048, 32)] })
}

/// The `outlier_detection` [`with_resilience`] gives every cluster: consecutive 5xx and
/// gateway failures, success rate and failure percentage, all enforcing, evaluated every
/// second with the minimum host count lowered to 1 so the one bench host is really analysed.
/// The bench backend never fails, so nothing is ever ejected.
pub fn bench_outlier_detection() -> Value {
    json!({
        "consecutive_5xx": 5,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 5,
        "enforcing_consecutive_gateway_failure": 100,
        "interval": "1s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 50,
        "success_rate_minimum_hosts": 1,
        "success_rate_request_volume": 100,
        "success_rate_stdev_factor": 1900,
        "enforcing_success_rate": 100,
        "failure_percentage_threshold": 50,
        "failure_percentage_minimum_hosts": 1,
        "failure_percentage_request_volume": 100,
        "enforcing_failure_percentage": 100,
    })
}

/// `bootstrap` (YAML or JSON) with [`bench_circuit_breakers`] and [`bench_outlier_detection`]
/// on every static cluster, everything else unchanged. Returns YAML.
pub fn with_resilience(bootstrap: &str) -> anyhow::Result<String> {
    let mut v: Value = serde_yaml::from_str(bootstrap).context("parse the bootstrap")?;
    let clusters = v["static_resources"]["clusters"].as_array_mut().context("no static clusters")?;
    anyhow::ensure!(!clusters.is_empty(), "no static clusters");
    for c in clusters {
        let c = c.as_object_mut().context("cluster")?;
        c.insert("circuit_breakers".into(), bench_circuit_breakers());
        c.insert("outlier_detection".into(), bench_outlier_detection());
    }
    serde_yaml::to_string(&v).context("write the bootstrap")
}

/// nginx: one worker, HTTP/1.1 on one port and h2c (prior knowledge) on another, both to an
/// HTTP/1.1 keep-alive upstream (nginx cannot proxy HTTP/2 upstream except via grpc_pass).
fn nginx_conf(dir: &Path, h1_port: u16, h2_port: u16, backend_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"# pinion-bench: nginx as a plain reverse proxy (reference point).
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream backend {{
    server 127.0.0.1:{backend_port};
    keepalive 128;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{h1_port};
    listen 127.0.0.1:{h2_port} http2;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#
    )
}

/// HAProxy: one thread, HTTP/1.1 frontend to an HTTP/1.1 server, h2c frontend to an h2c server.
fn haproxy_conf(h1_port: u16, h2_port: u16, backend_port: u16, threads: u32) -> String {
    format!(
        r#"# pinion-bench: HAProxy as a plain reverse proxy (reference point).
global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe_h1
  bind 127.0.0.1:{h1_port}
  default_backend be_h1
frontend fe_h2
  bind 127.0.0.1:{h2_port} proto h2
  default_backend be_h2
backend be_h1
  server s1 127.0.0.1:{backend_port}
backend be_h2
  server s1 127.0.0.1:{backend_port} proto h2
"#
    )
}

/// Starts `p` with `workers` workers pinned to `cpus`, writes its config to `dir`, and waits
/// until it is ready (admin `/ready` for Pinion and Envoy, the listener accepting for the
/// others), at most `timeout`. Pinion and Envoy get [`envoy_bootstrap`] as `variant`.
pub fn start(
    p: &Installed,
    dir: &Path,
    backend_port: u16,
    workers: u32,
    cpus: Option<&str>,
    timeout: Duration,
    variant: Variant,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir)?;
    let log = dir.join("proxy.log");
    let (proc, h1_port, h2_port) = match p.kind {
        Kind::Pinion | Kind::Envoy => {
            let (admin, port) = (free_port()?, free_port()?);
            let b = Bootstrap { yaml: variant.apply(envoy_bootstrap(admin, port, backend_port))?, admin, port };
            return start_bootstrap(p, dir, "proxy", &b, workers, cpus, timeout);
        }
        Kind::Nginx => {
            let (h1, h2) = (free_port()?, free_port()?);
            let cfg = dir.join("nginx.conf");
            std::fs::write(&cfg, nginx_conf(dir, h1, h2, backend_port))?;
            let args: Vec<String> =
                vec!["-p".into(), dir.display().to_string(), "-c".into(), cfg.display().to_string()];
            (Proc::spawn("nginx", cpus, &p.bin, &args, &log)?, h1, h2)
        }
        Kind::Haproxy => {
            let (h1, h2) = (free_port()?, free_port()?);
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_conf(h1, h2, backend_port, workers))?;
            let args: Vec<String> = vec!["-f".into(), cfg.display().to_string(), "-db".into()];
            (Proc::spawn("haproxy", cpus, &p.bin, &args, &log)?, h1, h2)
        }
    };
    wait_ready(Running { proc, h1_port, h2_port, admin_port: None }, p.kind.name(), timeout)
}

/// A bootstrap for Pinion and Envoy and the ports it uses.
pub struct Bootstrap {
    /// The YAML.
    pub yaml: String,
    /// Its admin port.
    pub admin: u16,
    /// Its one listener's port (HTTP/1.1 and h2c, or TLS).
    pub port: u16,
}

/// Starts Pinion or Envoy (`p`) on `b` (written to `dir/<tag>.yaml`, output to
/// `dir/<tag>.log`) with the command line both get, `workers` workers pinned to `cpus`, and
/// waits at most `timeout` for admin `/ready` and for the listener to accept.
pub fn start_bootstrap(
    p: &Installed,
    dir: &Path,
    tag: &str,
    b: &Bootstrap,
    workers: u32,
    cpus: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Running> {
    anyhow::ensure!(matches!(p.kind, Kind::Pinion | Kind::Envoy), "{} takes no Envoy bootstrap", p.kind.name());
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join(format!("{tag}.yaml"));
    std::fs::write(&cfg, &b.yaml).with_context(|| format!("write {}", cfg.display()))?;
    let name = format!("{} {tag}", p.kind.name());
    // The same command line for both (Pinion accepts Envoy's flags).
    let proc = Proc::spawn(&name, cpus, &p.bin, &proxy_args(&cfg, workers), &dir.join(format!("{tag}.log")))?;
    wait_ready(Running { proc, h1_port: b.port, h2_port: b.port, admin_port: Some(b.admin) }, &name, timeout)
}

/// Polls until `running` is ready (admin `/ready` answers 200 if it has an admin port, and its
/// listeners accept), it exits, or `timeout` passes.
fn wait_ready(mut running: Running, name: &str, timeout: Duration) -> anyhow::Result<Running> {
    let deadline = Instant::now() + timeout;
    // Polls until ready, the process exits, or the deadline passes.
    loop {
        if let Some(st) = running.proc.exited() {
            return Err(
                Refused { name: name.to_string(), status: st.to_string(), output: running.proc.log_tail() }.into()
            );
        }
        let admin_ready = running.admin_port.is_none_or(|a| matches!(http_get_status(a, "/ready"), Ok(200)));
        if admin_ready && port_open(running.h1_port) && port_open(running.h2_port) {
            return Ok(running);
        }
        if Instant::now() > deadline {
            bail!("{name} not ready within {timeout:?}\n{}", running.proc.log_tail());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A proxy that exited before it was ready: almost always because it refused its bootstrap
/// (an unsupported or invalid field), sometimes because it could not bind a port. Callers
/// tell it from other failures with `anyhow::Error::downcast_ref::<Refused>()`.
#[derive(Clone, Debug)]
pub struct Refused {
    /// The process's name (`Pinion proxy`, `Envoy inbound`, ...).
    pub name: String,
    /// Its exit status.
    pub status: String,
    /// The end of its output (stdout and stderr), headed by the log file's path.
    pub output: String,
}

impl Refused {
    /// The last `n` lines of the proxy's output.
    pub fn output_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.output.lines().filter(|l| !l.starts_with("----- ")).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited during start ({}): it refused its bootstrap (or could not bind a port)\n{}",
            self.name, self.status, self.output
        )
    }
}

impl std::error::Error for Refused {}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// Minimal blocking `GET` returning the status code (admin endpoints).
pub fn http_get_status(port: u16, path: &str) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    // Bounded by the read timeout and the size limit.
    s.take(1 << 20).read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("bad status line")
}

/// The bootstrap of scenario (f), the same for Pinion and Envoy apart from the node id and the
/// ports: everything (listener, routes, clusters, endpoints) comes over ADS (SotW, `api_type:
/// GRPC`) from the harness's in-process control plane, reached through a static HTTP/2 cluster.
pub fn xds_bootstrap(node_id: &str, admin_port: u16, xds_port: u16) -> String {
    pinion_xds::control_plane::ads_bootstrap(node_id, admin_port, ([127, 0, 0, 1], xds_port).into(), "GRPC")
}

/// Starts Pinion or Envoy on an xDS bootstrap (scenario (f)) without waiting for anything:
/// the caller times what happens next. Same command line as [`start`].
pub fn spawn_xds(
    p: &Installed,
    dir: &Path,
    node_id: &str,
    xds_port: u16,
    workers: u32,
    cpus: Option<&str>,
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("bootstrap.yaml");
    std::fs::write(&cfg, xds_bootstrap(node_id, free_port()?, xds_port))?;
    let args = proxy_args(&cfg, workers);
    Proc::spawn(p.kind.name(), cpus, &p.bin, &args, &dir.join("proxy.log"))
}

/// The command line both proxies get (Pinion accepts Envoy's flags).
fn proxy_args(cfg: &std::path::Path, workers: u32) -> Vec<String> {
    vec![
        "-c".into(),
        cfg.display().to_string(),
        "--concurrency".into(),
        workers.to_string(),
        "-l".into(),
        "warning".into(),
        "--disable-hot-restart".into(),
        // Only shortens the exit after SIGTERM (Pinion drains for this long first).
        "--drain-time-s".into(),
        "1".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_filter_names(v: &Value) -> Vec<Vec<String>> {
        let mut out = vec![];
        for l in v["static_resources"]["listeners"].as_array().into_iter().flatten() {
            for c in l["filter_chains"].as_array().into_iter().flatten() {
                for f in c["filters"].as_array().into_iter().flatten() {
                    if let Some(hf) = f["typed_config"]["http_filters"].as_array() {
                        out.push(hf.iter().map(|h| h["name"].as_str().unwrap_or("").to_string()).collect());
                    }
                }
            }
        }
        out
    }

    const WITH_FILTERS: [&str; 4] = [
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ];

    #[test]
    fn filters_variant_is_the_default_bootstrap_plus_the_filters() {
        let default = envoy_bootstrap(9901, 10000, 8080);
        assert_eq!(Variant::Default.apply(default.clone()).unwrap(), default);
        let filters = Variant::Filters.apply(default.clone()).unwrap();
        let mut v: Value = serde_yaml::from_str(&filters).unwrap();
        assert_eq!(http_filter_names(&v), vec![WITH_FILTERS.to_vec()]);
        let hcm = &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let vh = &mut hcm["route_config"]["virtual_hosts"][0];
        assert_eq!(vh["typed_per_filter_config"]["envoy.filters.http.cors"], bench_cors_policy());
        // Taking the additions out again gives the default bootstrap back, field for field.
        vh.as_object_mut().unwrap().remove("typed_per_filter_config");
        hcm["http_filters"].as_array_mut().unwrap().drain(0..3);
        let original: Value = serde_yaml::from_str(&default).unwrap();
        assert_eq!(v, original);
    }

    #[test]
    fn filters_variant_applies_to_both_sidecars() {
        let pki = pinion_testkit::mesh::MeshPki::new();
        let out = crate::mesh::outbound_bootstrap(&pki, 1, 2, 3, crate::mesh::Mesh::Pooled).unwrap();
        let inb = crate::mesh::inbound_bootstrap(&pki, 4, 5, 6, true).unwrap();
        for b in [out, inb] {
            let v: Value = serde_yaml::from_str(&with_filters(&b).unwrap()).unwrap();
            assert_eq!(http_filter_names(&v), vec![WITH_FILTERS.to_vec()]);
        }
    }

    #[test]
    fn resilience_variant_is_the_default_bootstrap_plus_breakers_and_outlier_detection() {
        let default = envoy_bootstrap(9901, 10000, 8080);
        let mut v: Value = serde_yaml::from_str(&Variant::Resilience.apply(default.clone()).unwrap()).unwrap();
        let clusters = v["static_resources"]["clusters"].as_array_mut().unwrap();
        assert_eq!(clusters.len(), 3);
        for c in clusters {
            let c = c.as_object_mut().unwrap();
            assert_eq!(c.remove("circuit_breakers"), Some(bench_circuit_breakers()));
            assert_eq!(c.remove("outlier_detection"), Some(bench_outlier_detection()));
        }
        let original: Value = serde_yaml::from_str(&default).unwrap();
        assert_eq!(v, original);
        assert_eq!(Variant::parse("resilience"), Some(Variant::Resilience));
        assert_eq!(Variant::parse("both"), None);
    }

    #[test]
    fn a_bootstrap_without_a_router_is_an_error() {
        let b = envoy_bootstrap(1, 2, 3).replace("envoy.filters.http.router", "envoy.filters.http.other");
        assert!(format!("{:#}", with_filters(&b).unwrap_err()).contains("no envoy.filters.http.router"));
    }

    /// Envoy 1.40 accepts the filters and resilience bootstraps (`envoy --mode validate`), when
    /// an Envoy is at hand (ENVOY_BIN, PATH or `<repo>/.venv`, as for the interop tests);
    /// skipped otherwise.
    #[test]
    fn envoy_validates_the_variant_bootstraps() {
        let Ok(envoy) = pinion_testkit::ProxyKind::Envoy.binary() else {
            eprintln!("skipped: no envoy binary (set ENVOY_BIN)");
            return;
        };
        let dir = std::env::temp_dir().join(format!("pinion-bench-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for variant in [Variant::Filters, Variant::Resilience] {
            let path = dir.join(format!("{}.yaml", variant.name()));
            std::fs::write(&path, variant.apply(envoy_bootstrap(9901, 10000, 8080)).unwrap()).unwrap();
            let out = std::process::Command::new(&envoy)
                .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "envoy --mode validate refused the {} bootstrap:\n{}{}",
                variant.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refused_output_tail_drops_the_header() {
        let r = Refused {
            name: "Pinion proxy".into(),
            status: "exit status: 1".into(),
            output: "----- Pinion proxy output (/tmp/x.log) -----\na\nb\nc".into(),
        };
        assert_eq!(r.output_tail(2), "b\nc");
        assert!(r.to_string().starts_with("Pinion proxy exited during start (exit status: 1)"));
    }
}
