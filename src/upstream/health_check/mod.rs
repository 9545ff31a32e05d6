//! Active health checking at run time: one checker per cluster with `health_checks`, on the
//! main thread's runtime (never on a worker, never on the request path). The checker follows
//! the cluster's host set and runs one session per checked host; a session probes its host
//! (HTTP, TCP or gRPC: one file each), feeds the result to the state machine in
//! `upstream::health_checker`, and writes the host's active-HC flags, after which the cluster
//! rebuilds its healthy lists.
//!
//! Hosts keep their identity across EDS/DNS/CDS updates, and so do their flags; a session's
//! threshold counters live as long as the host stays in this cluster. The checker stops when
//! the cluster is dropped, replaced (retired) or told to stop by the config store.

mod grpc;
mod http;
mod probe;
mod tcp;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use pinion_xds::model::{self, HealthChecker};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::probe::{Target, Verdict};
use super::cluster::Cluster;
use super::cluster_stats::HealthCheckStats;
use super::health_checker::{self as sm, CheckResult, Failure, Session};
use super::host::{HealthFlags, Host};

/// Hook for outlier detection (Envoy's `successful_active_health_check_uneject_host`, the
/// detector's host-check-complete callback): called on the main thread after every passed
/// active check of `host`, once its active-HC flags are updated. With outlier detection, a
/// host it ejected comes back at once unless it still fails active health checks (a pass
/// short of `healthy_threshold` leaves `/failed_active_hc` set); this is the one place the
/// health checker tells outlier detection anything.
pub fn outlier_on_active_hc_success(cluster: &Cluster, host: &Host) {
    cluster.on_active_health_check_success(host);
}

/// Start the health checker of `cluster` (no-op without `health_checks`, or outside a tokio
/// runtime, as in unit tests of the config store).
pub fn start(cluster: &Arc<Cluster>) {
    let (Some(cfg), Some(stats)) = (cluster.config.health_check.clone(), cluster.hc_stats.clone()) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let checker = Checker {
        cluster: Arc::downgrade(cluster),
        cfg: Arc::new(cfg),
        stats,
        sessions: HashMap::new(),
        initial: None,
        initial_done: false,
    };
    let changes = cluster.host_changes();
    rt.spawn(checker.run(changes));
}

/// A host's session as the checker keeps it.
struct Entry {
    host: Arc<Host>,
    task: JoinHandle<()>,
}

/// Identity of a host (hosts are shared `Arc`s, kept across updates).
fn key(h: &Arc<Host>) -> usize {
    Arc::as_ptr(h) as usize
}

struct Checker {
    cluster: Weak<Cluster>,
    cfg: Arc<model::HealthCheck>,
    stats: HealthCheckStats,
    sessions: HashMap<usize, Entry>,
    /// Hosts of the first host set still waiting for their first result (`None`: no host set
    /// yet, e.g. an EDS cluster before its first assignment).
    initial: Option<HashSet<usize>>,
    initial_done: bool,
}

impl Checker {
    async fn run(mut self, mut changes: tokio::sync::watch::Receiver<u64>) {
        let (first_tx, mut first_rx) = mpsc::unbounded_channel::<usize>();
        loop {
            {
                let Some(cluster) = self.cluster.upgrade() else { break };
                if cluster.health_checks_stopped() {
                    break;
                }
                self.reconcile(&cluster, &first_tx);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                Some(k) = first_rx.recv() => self.first_result(k),
            }
        }
        for (_, e) in self.sessions.drain() {
            e.task.abort();
            take_back(&self.stats, &e.host);
        }
    }

    /// Start sessions for new checked hosts, end those of hosts that left.
    fn reconcile(&mut self, cluster: &Arc<Cluster>, first_tx: &mpsc::UnboundedSender<usize>) {
        let set = cluster.hosts();
        let current: HashMap<usize, &Arc<Host>> =
            set.all().filter(|h| !h.health_check_config().disabled).map(|h| (key(h), h)).collect();
        let gone: Vec<usize> = self.sessions.keys().filter(|k| !current.contains_key(k)).copied().collect();
        for k in gone {
            if let Some(e) = self.sessions.remove(&k) {
                e.task.abort();
                take_back(&self.stats, &e.host);
                tracing::debug!(cluster = %cluster.config.name, host = %e.host.address, "health check session ended");
            }
            // A host removed before its first result no longer holds up initialization.
            self.first_result(k);
        }
        for (k, host) in &current {
            if self.sessions.contains_key(k) {
                continue;
            }
            let (h, d) = sm::gauge_contribution(host.health_flags());
            self.stats.healthy.add(h);
            self.stats.degraded.add(d);
            let session = SessionTask {
                cluster: self.cluster.clone(),
                host: Arc::clone(host),
                cfg: self.cfg.clone(),
                stats: self.stats.clone(),
                first_tx: first_tx.clone(),
                key: *k,
            };
            let task = tokio::spawn(session.run());
            self.sessions.insert(*k, Entry { host: Arc::clone(host), task });
        }
        if self.initial.is_none() && cluster.has_host_set() {
            self.initial = Some(current.keys().copied().collect());
            self.check_initialized();
        }
    }

    fn first_result(&mut self, k: usize) {
        if let Some(pending) = &mut self.initial {
            pending.remove(&k);
        }
        self.check_initialized();
    }

    fn check_initialized(&mut self) {
        if self.initial_done || !self.initial.as_ref().is_some_and(HashSet::is_empty) {
            return;
        }
        self.initial_done = true;
        if let Some(c) = self.cluster.upgrade() {
            tracing::debug!(cluster = %c.config.name, "initial health checks done");
            c.set_health_check_initialized();
        }
    }
}

/// A session ends: take back what its host adds to the gauges now.
fn take_back(stats: &HealthCheckStats, host: &Host) {
    let (h, d) = sm::gauge_contribution(host.health_flags());
    stats.healthy.add(-h);
    stats.degraded.add(-d);
}

/// The probe of one session: its connection, kept between checks when
/// `reuse_connection` allows.
enum Probe {
    Http(http::HttpProbe),
    Tcp(tcp::TcpProbe),
    Grpc(grpc::GrpcProbe),
}

impl Probe {
    fn new(checker: &HealthChecker) -> Self {
        match checker {
            HealthChecker::Http(_) => Probe::Http(http::HttpProbe::default()),
            HealthChecker::Tcp(_) => Probe::Tcp(tcp::TcpProbe::default()),
            HealthChecker::Grpc(_) => Probe::Grpc(grpc::GrpcProbe::default()),
        }
    }

    async fn check(&mut self, target: &Target<'_>) -> Verdict {
        match (self, &target.cfg.checker) {
            (Probe::Http(p), HealthChecker::Http(c)) => p.check(target, c).await,
            (Probe::Tcp(p), HealthChecker::Tcp(c)) => p.check(target, c).await,
            (Probe::Grpc(p), HealthChecker::Grpc(c)) => p.check(target, c).await,
            // A session's config never changes (a new config is a new cluster).
            _ => Verdict::network(),
        }
    }

    /// Drop the connection (after a timeout, or when it may not be reused).
    fn close(&mut self) {
        match self {
            Probe::Http(p) => p.close(),
            Probe::Tcp(p) => p.close(),
            Probe::Grpc(p) => p.close(),
        }
    }
}

struct SessionTask {
    cluster: Weak<Cluster>,
    host: Arc<Host>,
    cfg: Arc<model::HealthCheck>,
    stats: HealthCheckStats,
    first_tx: mpsc::UnboundedSender<usize>,
    key: usize,
}

impl SessionTask {
    async fn run(self) {
        let mut rand = || rand::random::<u64>();
        let mut session = Session::new();
        let mut probe = Probe::new(&self.cfg.checker);
        let first = sm::initial_delay(&self.cfg, &mut rand);
        if !first.is_zero() {
            tokio::time::sleep(first).await;
        }
        loop {
            let Some(cluster) = self.cluster.upgrade() else { return };
            self.stats.attempt.inc();
            let target = Target { cluster: &cluster, host: &self.host, cfg: &self.cfg };
            let verdict = match tokio::time::timeout(self.cfg.timeout, probe.check(&target)).await {
                Ok(v) => v,
                Err(_) => {
                    probe.close();
                    Verdict::of(CheckResult::Failure {
                        kind: Failure::NetworkTimeout,
                        retriable: false,
                        exclude: false,
                    })
                }
            };
            if !self.cfg.reuse_connection {
                probe.close();
            }
            if cluster.health_checks_stopped() {
                return;
            }
            let delay = self.apply(&cluster, &mut session, verdict, &mut rand);
            drop(cluster);
            tokio::time::sleep(delay).await;
        }
    }

    /// Record a verdict: stats, flags, host set, outlier hook; returns the delay to the next
    /// check.
    fn apply(
        &self,
        cluster: &Cluster,
        session: &mut Session,
        verdict: Verdict,
        rand: &mut dyn FnMut() -> u64,
    ) -> Duration {
        let first = session.is_first_check();
        if verdict.verified_cluster {
            self.stats.verify_cluster.inc();
        }
        let before = self.host.health_flags();
        let out = session.record(&self.cfg, before, verdict.result);
        let c = out.counts;
        for (counter, n) in [
            (&self.stats.success, c.success),
            (&self.stats.failure, c.failure),
            (&self.stats.network_failure, c.network_failure),
            (&self.stats.passive_failure, c.passive_failure),
        ] {
            if n > 0 {
                counter.add(n);
            }
        }
        let passed = matches!(verdict.result, CheckResult::Success { .. });
        self.stats.healthy.add(out.healthy_delta);
        self.stats.degraded.add(out.degraded_delta);
        if before.contains(HealthFlags::FAILED_ACTIVE_HC) && !out.flags.contains(HealthFlags::FAILED_ACTIVE_HC) {
            cluster.note_active_hc_pass(&self.host);
        }
        if self.host.set_flags_masked(HealthFlags::ACTIVE_HC, out.flags) {
            cluster.recompute_health();
            if before.contains(HealthFlags::FAILED_ACTIVE_HC) != out.flags.contains(HealthFlags::FAILED_ACTIVE_HC) {
                let verb = if passed { "healthy" } else { "unhealthy" };
                tracing::info!(cluster = %cluster.config.name, host = %self.host.address, "health check: host is now {verb}");
            }
        }
        if passed {
            outlier_on_active_hc_success(cluster, &self.host);
        } else if self.cfg.always_log_health_check_failures {
            tracing::warn!(cluster = %cluster.config.name, host = %self.host.address, result = ?verdict.result, "health check failed");
        } else {
            tracing::debug!(cluster = %cluster.config.name, host = %self.host.address, result = ?verdict.result, "health check failed");
        }
        if first {
            let _ = self.first_tx.send(self.key);
        }
        // Envoy: the cluster has had traffic once it made an upstream connection or moved
        // bytes; health-check connections do not count.
        let s = &cluster.stats;
        let has_traffic = s.upstream_cx_total.value() > 0
            || s.upstream_cx_tx_bytes_total.value() > 0
            || s.upstream_cx_rx_bytes_total.value() > 0;
        sm::interval(&self.cfg, passed, out.transition, has_traffic, rand)
    }
}
