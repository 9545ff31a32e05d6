//! The server: loads the bootstrap, builds the first snapshot, binds listeners, starts the
//! workers and the admin listener, and runs the control loop on the main thread until a
//! signal or `/quitquitquit`, then drains.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pinion_xds::decode::{self, DecodeOptions, Format};
use pinion_xds::model;
use pinion_xds::translate::NodeOverrides;
use tokio::sync::{watch, Notify};

use crate::access_log::AccessLogManager;
use crate::access_log_grpc::GrpcSinks;
use crate::cli::{Mode, Options};
use crate::config_store::ConfigStore;
use crate::listener::ListenerImpl;
use crate::listener_manager::ListenerManager;
use crate::logging::LogHandle;
use crate::secret_manager::SecretManager;
use crate::server_state::{ServerState, ServerStateKind};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::stats::{Prom, Store};
use crate::upstream::outlier_detector::{self, EventLog};
use crate::upstream::{dns, health_check, Cluster};
use crate::worker::{self, WorkerHandle};

/// Deep-merge `over` into `base` (Envoy merges `--config-yaml` over `-c`: messages merge,
/// repeated fields concatenate, scalars override).
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    use serde_json::Value;
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_json(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

/// Load, validate and translate the bootstrap named by the options.
pub fn load_bootstrap(opts: &Options) -> Result<model::Bootstrap, String> {
    let dopts = DecodeOptions { allow_unknown_fields: opts.allow_unknown_static_fields };
    let json = bootstrap_json(opts)?;
    pinion_xds::loader::bootstrap_from_json(&json, &dopts, &node_overrides(opts)).map_err(|e| e.to_string())
}

/// The bootstrap as JSON: the file, with `--config-yaml` merged over it.
fn bootstrap_json(opts: &Options) -> Result<serde_json::Value, String> {
    let mut json = match &opts.config_path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("unable to read file: {}: {e}", p.display()))?;
            let format = match Path::new(p).extension().and_then(|e| e.to_str()) {
                Some("json") => Format::Json,
                Some("yaml") | Some("yml") => Format::Yaml,
                Some("pb") | Some("pb_text") => {
                    return Err(format!(
                        "{}: binary/text proto bootstraps are not supported; use YAML or JSON",
                        p.display()
                    ))
                }
                _ => Format::Auto,
            };
            Some(decode::text_to_json(&text, format).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    if let Some(y) = &opts.config_yaml {
        let over = decode::text_to_json(y, Format::Yaml).map_err(|e| e.to_string())?;
        match &mut json {
            Some(base) => merge_json(base, over),
            None => json = Some(over),
        }
    }
    json.ok_or_else(|| "at least one of --config-path or --config-yaml is required".into())
}

/// Set in the environment of the child process that decodes the bootstrap for the `pinion`
/// binary (see [`run_main`]).
pub const DECODE_CHILD_ENV: &str = "PINION_INTERNAL_DECODE_BOOTSTRAP";

/// Child side of [`run_main`]: decode, validate and translate the bootstrap as
/// [`load_bootstrap`] does, then write it to stdout as `u64 LE length | Bootstrap proto |
/// config_dump JSON`. On a config error, the error text goes to stderr and the exit code is 1.
pub fn decode_child(opts: &Options) -> i32 {
    use prost::Message;
    use std::io::Write;
    let result = (|| {
        let json = bootstrap_json(opts)?;
        let dopts = DecodeOptions { allow_unknown_fields: opts.allow_unknown_static_fields };
        let proto: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap =
            decode::message_from_json(&json, &dopts).map_err(|e| e.to_string())?;
        // Translate here too, so every config error is reported by the same code path.
        pinion_xds::translate::bootstrap(&proto, &node_overrides(opts)).map_err(|e| e.to_string())?;
        let dump = serde_json::to_vec(&decode::to_json(&proto)).map_err(|e| e.to_string())?;
        let bytes = proto.encode_to_vec();
        let mut out = Vec::with_capacity(8 + bytes.len() + dump.len());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
        out.extend_from_slice(&dump);
        Ok::<_, String>(out)
    })();
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(&out).and_then(|_| stdout.flush()).is_err() {
                return 2;
            }
            0
        }
        Err(e) => {
            eprint!("{e}");
            1
        }
    }
}

/// Parent side: run this binary again as a decoding child and rebuild the model from what it
/// wrote. The reflective decoder (prost-reflect, the Envoy descriptor set, PGV validation)
/// faults in several MiB of code and heap that a static proxy never uses again; in the child
/// they go away with it, so the long-lived process stays small. `None` when the child could
/// not run at all (no `/proc/self/exe`, killed): the caller decodes in-process instead.
fn load_bootstrap_in_child(opts: &Options) -> Option<Result<model::Bootstrap, String>> {
    use prost::Message;
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(DECODE_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .ok()?;
    match out.status.code() {
        Some(0) => {}
        Some(1) => return Some(Err(String::from_utf8_lossy(&out.stderr).into_owned())),
        _ => return None,
    }
    let (len, rest) = out.stdout.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (bytes, dump) = rest.split_at(len);
    let proto = envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap::decode(bytes).ok()?;
    let dump: serde_json::Value = serde_json::from_slice(dump).ok()?;
    Some(pinion_xds::translate::bootstrap(&proto, &node_overrides(opts)).map_err(|e| e.to_string()).map(|mut b| {
        b.config_dump_json = dump;
        b
    }))
}

fn node_overrides(opts: &Options) -> NodeOverrides {
    NodeOverrides { service_node: opts.service_node.clone(), service_cluster: opts.service_cluster.clone() }
}

/// Whether a listener's HCM takes routes from RDS or SRDS.
fn needs_xds_routes(l: &model::Listener) -> bool {
    l.filter_chains.iter().chain(l.default_filter_chain.iter()).any(|fc| {
        matches!(&fc.filter, model::NetworkFilter::HttpConnectionManager(h)
            if !matches!(h.route_specifier, model::RouteSpecifier::Static(_)))
    })
}

/// Build runtime clusters and listeners from a translated bootstrap; the listeners log
/// through `access_logs`; TLS contexts find their secrets in `secrets`.
fn build_snapshot(
    b: &model::Bootstrap,
    store: &Store,
    workers: usize,
    access_logs: &AccessLogManager,
    secrets: &SecretManager,
) -> Result<Snapshot, String> {
    let mut clusters = std::collections::HashMap::new();
    for c in &b.clusters {
        clusters.insert(c.name.clone(), Cluster::new_replacing(c.clone(), store, None, secrets)?);
    }
    // Listeners whose routes come from xDS are built once the config store exists.
    let listeners = b
        .listeners
        .iter()
        .filter(|l| !needs_xds_routes(l))
        .map(|l| ListenerImpl::new(l.clone(), store, workers, access_logs, None, secrets).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Snapshot { version: 1, listeners, clusters })
}

/// Size of the one-off heap block whose release raises glibc's dynamic malloc thresholds.
const MALLOC_THRESHOLD_PROBE: usize = 1 << 20;

/// Stop glibc from returning a worker arena's top to the OS after every burst of requests.
///
/// glibc trims a per-thread arena whenever its free top exceeds `M_TRIM_THRESHOLD` (128 KiB
/// by default), and the next requests fault the same pages back in: page faults and
/// `madvise` were ~10% of a worker's CPU under h2c load. Freeing an mmapped block raises the
/// thresholds for the whole process (mallopt(3), dynamic mmap threshold: mmap threshold =
/// its size, trim threshold = twice that), without `unsafe` or a different allocator, which
/// would cost idle memory. Other allocators ignore the probe.
fn raise_malloc_trim_threshold() {
    let probe: Vec<u8> = std::hint::black_box(Vec::with_capacity(MALLOC_THRESHOLD_PROBE));
    drop(probe);
}

/// Run the proxy with these options; returns the process exit code.
pub fn run(opts: Options, log: LogHandle) -> i32 {
    run_with(opts, log, false)
}

/// [`run`] for the `pinion` binary: the bootstrap is decoded by a child process running the
/// same binary (see [`load_bootstrap_in_child`]). Only the binary can do this: a test or
/// embedding process has no such child mode.
pub fn run_main(opts: Options, log: LogHandle) -> i32 {
    run_with(opts, log, true)
}

fn run_with(opts: Options, log: LogHandle, decode_in_child: bool) -> i32 {
    let from_child = if decode_in_child && opts.mode == Mode::Serve { load_bootstrap_in_child(&opts) } else { None };
    // Otherwise decoding runs on a short-lived thread: its scratch memory (descriptor pool,
    // JSON trees) lives in that thread's malloc arena, which gives it back to the OS once
    // freed, instead of staying in the main heap for the life of the process.
    let loaded = from_child.unwrap_or_else(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                let b = load_bootstrap(&opts);
                if matches!(&b, Ok(b) if b.dynamic_resources.is_none()) {
                    pinion_xds::descriptor::release();
                }
                b
            })
            .join()
            .unwrap_or_else(|_| Err("configuration loader panicked".into()))
        })
    });
    let bootstrap = match loaded {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error initializing configuration '{}': {e}", config_name(&opts));
            return 1;
        }
    };
    if opts.mode != Mode::Serve {
        // Validate also builds runtime state (regex, access log formats) without binding.
        let store = Store::new(1);
        // No gRPC sinks: validating sends no access log entries.
        let access_logs = AccessLogManager::new(file_flush_interval(&opts), None);
        let built = SecretManager::new(&bootstrap.secrets, &store)
            .and_then(|secrets| build_snapshot(&bootstrap, &store, 1, &access_logs, &secrets));
        if let Err(e) = built {
            eprintln!("error initializing configuration '{}': {e}", config_name(&opts));
            return 1;
        }
        println!("configuration '{}' OK", config_name(&opts));
        return 0;
    }
    // After decoding: its scratch arena should still be trimmed the default way.
    raise_malloc_trim_threshold();
    let concurrency = opts
        .concurrency
        .filter(|&c| c > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .min(crate::stats::MAX_WORKERS);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return 1;
        }
    };
    rt.block_on(serve(bootstrap, opts, concurrency, log))
}

/// `--file-flush-interval-msec`.
fn file_flush_interval(opts: &Options) -> Duration {
    Duration::from_millis(opts.file_flush_interval_msec)
}

fn config_name(opts: &Options) -> String {
    opts.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "--config-yaml".into())
}

async fn serve(bootstrap: model::Bootstrap, opts: Options, concurrency: usize, log: LogHandle) -> i32 {
    let store = Store::new(concurrency);
    let state_gauge = store.gauge("server.state", Prom::plain("server.state"));
    // The shared snapshot exists before the first config is built into it: the gRPC access
    // log sinks the listeners start resolve their cluster through it (and find nothing until
    // the config is in).
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let grpc_sinks = GrpcSinks::new(tokio::runtime::Handle::current(), bootstrap.node.clone(), shared.clone());
    let access_logs = Arc::new(AccessLogManager::new(file_flush_interval(&opts), Some(grpc_sinks)));
    let secrets = match SecretManager::new(&bootstrap.secrets, &store) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("error initializing configuration: {e}");
            eprintln!("error initializing configuration: {e}");
            return 1;
        }
    };
    let snapshot = match build_snapshot(&bootstrap, &store, concurrency, &access_logs, &secrets) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("error initializing configuration: {e}");
            return 1;
        }
    };
    let outlier_events = match outlier_event_log(&bootstrap, &access_logs) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("error initializing configuration: {e}");
            eprintln!("error initializing configuration: {e}");
            return 1;
        }
    };
    // DNS clusters resolve once before we report ready, then keep refreshing.
    for c in snapshot.clusters.values() {
        if dns::is_dns(c) {
            dns::refresh(c).await;
            dns::spawn_refresher(c);
        }
        outlier_detector::spawn(c, outlier_events.as_ref());
        health_check::start(c);
    }
    // Envoy initializes a cluster with health checks only once each of its hosts had a first
    // check: the server is not LIVE before that.
    let hc_initialized: Vec<watch::Receiver<bool>> =
        snapshot.clusters.values().map(|c| c.health_checks_initialized()).collect();
    let (drain_tx, drain_rx) = watch::channel(false);
    let listeners = snapshot.listeners.clone();
    shared.store(Arc::new(snapshot));
    let runtime = crate::runtime::Runtime::new(&bootstrap.layered_runtime, &store);
    let state = Arc::new(ServerState {
        runtime,
        store: store.clone(),
        snapshot: shared,
        bootstrap: Arc::new(bootstrap),
        options: opts.clone(),
        start: Instant::now(),
        state: AtomicU8::new(ServerStateKind::PreInitializing as u8),
        healthcheck_failed: AtomicBool::new(false),
        drain_tx,
        shutdown: Notify::new(),
        immediate_exit: AtomicBool::new(false),
        log,
        concurrency,
        bound_listeners: Arc::new(Mutex::new(Vec::new())),
        admin_address: Mutex::new(None),
        config_store: std::sync::OnceLock::new(),
        state_gauge,
    });
    state.set_state(ServerStateKind::Initializing);
    register_server_stats(&state);

    let mut workers: Vec<WorkerHandle> = Vec::with_capacity(concurrency);
    let drain_time = Duration::from_secs(opts.drain_time_s);
    for i in 0..concurrency {
        match worker::spawn(i, state.snapshot.clone(), drain_rx.clone(), drain_time) {
            Ok(h) => workers.push(h),
            Err(e) => {
                eprintln!("cannot start worker {i}: {e}");
                return 1;
            }
        }
    }
    // Static listeners go through the same listener manager as dynamic ones.
    let mut manager =
        ListenerManager::new(workers.iter().map(|w| w.tx.clone()).collect(), state.bound_listeners.clone());
    for l in &listeners {
        if let Err(e) = manager.upsert(l.clone()) {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return 1;
        }
    }
    let manager = Arc::new(Mutex::new(manager));
    let mut initialized = None;
    match dynamic_client_config(&state.bootstrap) {
        None => {}
        Some(Err(e)) => {
            eprintln!("error initializing configuration: {e}");
            return 1;
        }
        Some(Ok(cfg)) => {
            let store = ConfigStore::new(
                state.snapshot.clone(),
                state.store.clone(),
                concurrency,
                manager.clone(),
                state.runtime.clone(),
                access_logs.clone(),
                cfg.mode == pinion_xds::client::Mode::Delta,
            );
            store.set_secret_manager(secrets.clone());
            store.set_sds_aggregated(cfg.aggregated);
            if let Some(log) = &outlier_events {
                store.set_outlier_event_log(log.clone());
            }
            let deferred: Vec<_> = state.bootstrap.listeners.iter().filter(|l| needs_xds_routes(l)).cloned().collect();
            if let Err(e) = store.add_static_listeners(&deferred) {
                eprintln!("error: {e}");
                return 1;
            }
            initialized = Some(store.initialized());
            let _ = state.config_store.set(store.clone());
            crate::xds_start::start(cfg, store, &state.store, state.bootstrap.clone());
        }
    }

    if let Some(admin) = &state.bootstrap.admin {
        match crate::admin::start(admin.address, state.clone()).await {
            Ok(addr) => {
                *state.admin_address.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                tracing::info!("admin address: {addr}");
            }
            Err(e) => {
                eprintln!("error: admin failed to bind to {}: {e}", admin.address);
                return 1;
            }
        }
    }
    // Envoy's init manager: LIVE only once the static clusters' initial health checks and the
    // initial xDS fetches (and warming) are done.
    if initialized.is_some() || hc_initialized.iter().any(|r| !*r.borrow()) {
        let state = state.clone();
        tokio::spawn(async move {
            for mut r in hc_initialized {
                let _ = r.wait_for(|done| *done).await;
            }
            if let Some(mut init) = initialized {
                let _ = init.wait_for(|done| *done).await;
                tracing::info!("initial xDS configuration received");
            }
            if state.state() == ServerStateKind::Initializing {
                state.set_state(ServerStateKind::Live);
                tracing::info!("server is live");
            }
        });
    } else {
        state.set_state(ServerStateKind::Live);
    }
    tracing::info!("pinion {} started with {concurrency} worker(s)", env!("CARGO_PKG_VERSION"));

    // Control loop: signals and admin requests.
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install SIGTERM handler: {e}");
            return 1;
        }
    };
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("caught SIGTERM, draining"),
        _ = async { match sigint.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => {
            tracing::info!("caught SIGINT, draining");
        }
        _ = state.shutdown.notified() => tracing::info!("shutdown requested via admin"),
    }
    if state.immediate_exit.load(Ordering::Relaxed) {
        access_logs.flush_all();
        return 0;
    }
    state.start_drain();
    // Workers exit when their connections end or the drain time passes.
    let joined = tokio::task::spawn_blocking(move || {
        for w in workers {
            drop(w.tx);
            let _ = w.thread.join();
        }
    });
    let _ = tokio::time::timeout(drain_time + Duration::from_secs(1), joined).await;
    access_logs.flush_all();
    tracing::info!("exiting");
    0
}

/// The outlier detection event log (`cluster_manager.outlier_detection.event_log_path`),
/// opened at startup: a path that cannot be opened fails startup, as in Envoy.
fn outlier_event_log(b: &model::Bootstrap, logs: &AccessLogManager) -> Result<Option<EventLog>, String> {
    if b.outlier_event_log_path.is_empty() {
        return Ok(None);
    }
    Ok(Some(EventLog::new(logs.file_writer(&b.outlier_event_log_path)?)))
}

/// The xDS client config from the bootstrap's `dynamic_resources` (None: static only).
fn dynamic_client_config(b: &model::Bootstrap) -> Option<Result<pinion_xds::client::ClientConfig, String>> {
    pinion_xds::client::ClientConfig::from_bootstrap(b).transpose()
}

fn register_server_stats(state: &Arc<ServerState>) {
    let s = &state.store;
    s.gauge("server.concurrency", Prom::plain("server.concurrency")).set(state.concurrency as i64);
    s.gauge("server.live", Prom::plain("server.live")).set(1);
    let snap = state.snapshot.load();
    s.gauge("cluster_manager.active_clusters", Prom::plain("cluster_manager.active_clusters"))
        .set(snap.clusters.len() as i64);
    s.gauge("listener_manager.total_listeners_active", Prom::plain("listener_manager.total_listeners_active"))
        .set(snap.listeners.len() as i64);
    let uptime = s.gauge("server.uptime", Prom::plain("server.uptime"));
    let start = state.start;
    tokio::spawn(async move {
        loop {
            uptime.set(start.elapsed().as_secs() as i64);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
