//! The plumbing around [`outlier_detection`](super::outlier_detection): one
//! [`OutlierDetector`] per cluster with `outlier_detection` configured.
//!
//! - Workers report each attempt's outcome to the host's atomics through
//!   [`OutlierDetector::put_http_status`] / [`OutlierDetector::put_local`]: no lock, no
//!   channel; only a request that crosses a consecutive-error threshold wakes the detector
//!   (a `Notify` permit, so a burst of crossings costs one wake-up).
//! - The detector task ([`spawn`]) runs on the main thread's runtime: it handles those
//!   crossings as they come and sweeps on `interval`, then applies what the state machine
//!   decided: the hosts' `FAILED_OUTLIER_CHECK` flag (through the cluster, so the load
//!   balancer's healthy lists follow), their counters, the stats, the event log.
//!
//! The task holds the cluster weakly (a [`DetectorTarget`]) and ends when the cluster is
//! dropped or replaced; a replacement starts its own task, and since hosts keep their
//! identity across updates, its detector finds their ejections and backoff as they were.

use std::collections::HashSet;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use pinion_xds::model;
use tokio::sync::Notify;

use super::host::{HealthFlags, Host};
use super::host_set::HostSet;
use super::outlier_detection::{
    Action, Consecutive, Detector, EjectionType, HostView, LocalResult, Origin, Settings, SuccessRateNums, Tally,
};
use crate::stats::Store;

crate::stats_struct! {
    /// Envoy's `ALL_OUTLIER_DETECTION_STATS` (`cluster.<name>.outlier_detection.*`),
    /// registered only for clusters with a detector, as in Envoy.
    pub struct OutlierStats {
        /// `ejections_active`.
        ejections_active: Gauge = "outlier_detection.ejections_active",
        /// `ejections_consecutive_5xx` (deprecated).
        ejections_consecutive_5xx: Counter = "outlier_detection.ejections_consecutive_5xx",
        /// `ejections_detected_consecutive_5xx`.
        ejections_detected_consecutive_5xx: Counter = "outlier_detection.ejections_detected_consecutive_5xx",
        /// `ejections_detected_consecutive_gateway_failure`.
        ejections_detected_consecutive_gateway_failure: Counter =
            "outlier_detection.ejections_detected_consecutive_gateway_failure",
        /// `ejections_detected_consecutive_local_origin_failure`.
        ejections_detected_consecutive_local_origin_failure: Counter =
            "outlier_detection.ejections_detected_consecutive_local_origin_failure",
        /// `ejections_detected_degradation` (Envoy 1.40's `detect_degraded_hosts`, refused by
        /// Pinion: always 0, listed because Envoy lists it).
        ejections_detected_degradation: Counter = "outlier_detection.ejections_detected_degradation",
        /// `ejections_detected_failure_percentage`.
        ejections_detected_failure_percentage: Counter = "outlier_detection.ejections_detected_failure_percentage",
        /// `ejections_detected_local_origin_failure_percentage`.
        ejections_detected_local_origin_failure_percentage: Counter =
            "outlier_detection.ejections_detected_local_origin_failure_percentage",
        /// `ejections_detected_local_origin_success_rate`.
        ejections_detected_local_origin_success_rate: Counter =
            "outlier_detection.ejections_detected_local_origin_success_rate",
        /// `ejections_detected_success_rate`.
        ejections_detected_success_rate: Counter = "outlier_detection.ejections_detected_success_rate",
        /// `ejections_enforced_consecutive_5xx`.
        ejections_enforced_consecutive_5xx: Counter = "outlier_detection.ejections_enforced_consecutive_5xx",
        /// `ejections_enforced_consecutive_gateway_failure`.
        ejections_enforced_consecutive_gateway_failure: Counter =
            "outlier_detection.ejections_enforced_consecutive_gateway_failure",
        /// `ejections_enforced_consecutive_local_origin_failure`.
        ejections_enforced_consecutive_local_origin_failure: Counter =
            "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
        /// `ejections_enforced_failure_percentage`.
        ejections_enforced_failure_percentage: Counter = "outlier_detection.ejections_enforced_failure_percentage",
        /// `ejections_enforced_local_origin_failure_percentage`.
        ejections_enforced_local_origin_failure_percentage: Counter =
            "outlier_detection.ejections_enforced_local_origin_failure_percentage",
        /// `ejections_enforced_local_origin_success_rate`.
        ejections_enforced_local_origin_success_rate: Counter =
            "outlier_detection.ejections_enforced_local_origin_success_rate",
        /// `ejections_enforced_success_rate`.
        ejections_enforced_success_rate: Counter = "outlier_detection.ejections_enforced_success_rate",
        /// `ejections_enforced_total`.
        ejections_enforced_total: Counter = "outlier_detection.ejections_enforced_total",
        /// `ejections_overflow`.
        ejections_overflow: Counter = "outlier_detection.ejections_overflow",
        /// `ejections_success_rate` (deprecated).
        ejections_success_rate: Counter = "outlier_detection.ejections_success_rate",
        /// `ejections_total` (deprecated).
        ejections_total: Counter = "outlier_detection.ejections_total",
    }
}

impl OutlierStats {
    /// Add an evaluation's counts.
    fn add(&self, t: &Tally) {
        let detected = [
            &self.ejections_detected_consecutive_5xx,
            &self.ejections_detected_consecutive_gateway_failure,
            &self.ejections_detected_success_rate,
            &self.ejections_detected_consecutive_local_origin_failure,
            &self.ejections_detected_local_origin_success_rate,
            &self.ejections_detected_failure_percentage,
            &self.ejections_detected_local_origin_failure_percentage,
        ];
        let enforced = [
            &self.ejections_enforced_consecutive_5xx,
            &self.ejections_enforced_consecutive_gateway_failure,
            &self.ejections_enforced_success_rate,
            &self.ejections_enforced_consecutive_local_origin_failure,
            &self.ejections_enforced_local_origin_success_rate,
            &self.ejections_enforced_failure_percentage,
            &self.ejections_enforced_local_origin_failure_percentage,
        ];
        for (i, c) in detected.iter().enumerate() {
            if t.detected[i] > 0 {
                c.add(t.detected[i]);
            }
        }
        for (i, c) in enforced.iter().enumerate() {
            if t.enforced[i] > 0 {
                c.add(t.enforced[i]);
            }
        }
        for (c, n) in [
            (&self.ejections_enforced_total, t.enforced_total),
            (&self.ejections_overflow, t.overflow),
            (&self.ejections_total, t.total),
            (&self.ejections_consecutive_5xx, t.consecutive_5xx),
            (&self.ejections_success_rate, t.success_rate),
        ] {
            if n > 0 {
                c.add(n);
            }
        }
    }
}

/// The outlier event log (`cluster_manager.outlier_detection.event_log_path`): one JSON
/// object per line, as Envoy's `EventLoggerImpl` writes them, through an access log file
/// writer (so the main thread never blocks on the disk).
#[derive(Clone)]
pub struct EventLog {
    tx: Sender<String>,
}

impl EventLog {
    /// A log writing lines to `tx` (an access log file writer).
    pub fn new(tx: Sender<String>) -> Self {
        EventLog { tx }
    }

    fn write(&self, line: String) {
        // The writer thread only goes away with the process.
        let _ = self.tx.send(line);
    }
}

/// Who the detector task works for: the cluster, held weakly. A trait so that this module
/// does not depend on the cluster (which holds the detector).
pub trait DetectorTarget: Send + Sync + 'static {
    /// The cluster's detector.
    fn outlier_detector(&self) -> Option<&Arc<OutlierDetector>>;
    /// The current hosts.
    fn current_hosts(&self) -> Arc<HostSet>;
    /// Set or clear `FAILED_OUTLIER_CHECK` on these hosts and rebuild the healthy lists once.
    fn set_outlier_flags(&self, changes: &[(Arc<Host>, bool)]);
    /// The cluster was replaced: its hosts belong to the replacement (and its detector).
    fn is_retired(&self) -> bool;
}

/// What the main thread keeps between evaluations.
#[derive(Default)]
struct Inner {
    detector: Detector,
    /// The hosts of the last evaluation, to notice additions and removals (Envoy's member
    /// update callback).
    known: Vec<Arc<Host>>,
}

/// One cluster's outlier detector.
pub struct OutlierDetector {
    config: model::OutlierDetection,
    cluster_name: String,
    stats: OutlierStats,
    wake: Notify,
    inner: Mutex<Inner>,
    event_log: OnceLock<EventLog>,
}

/// Envoy's runtime key for each consecutive-error threshold.
fn threshold_key(c: Consecutive) -> &'static str {
    match c {
        Consecutive::Status5xx => "outlier_detection.consecutive_5xx",
        Consecutive::GatewayFailure => "outlier_detection.consecutive_gateway_failure",
        Consecutive::LocalOriginFailure => "outlier_detection.consecutive_local_origin_failure",
    }
}

impl OutlierDetector {
    /// The detector of cluster `name` (stats under `cluster.<stat_name>.outlier_detection.`).
    pub fn new(config: &model::OutlierDetection, name: &str, stat_name: &str, store: &Store) -> Arc<Self> {
        Arc::new(OutlierDetector {
            config: config.clone(),
            cluster_name: name.to_string(),
            stats: OutlierStats::new(store, "cluster", "envoy_cluster_name", stat_name),
            wake: Notify::new(),
            inner: Mutex::new(Inner::default()),
            event_log: OnceLock::new(),
        })
    }

    /// The config.
    pub fn config(&self) -> &model::OutlierDetection {
        &self.config
    }

    /// The stats.
    pub fn stats(&self) -> &OutlierStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consecutive-error threshold, with Envoy's runtime override (read only on errors).
    fn threshold(&self, c: Consecutive) -> u64 {
        let configured = match c {
            Consecutive::Status5xx => self.config.consecutive_5xx,
            Consecutive::GatewayFailure => self.config.consecutive_gateway_failure,
            Consecutive::LocalOriginFailure => self.config.consecutive_local_origin_failure,
        };
        crate::runtime::snapshot().get_integer(threshold_key(c), u64::from(configured))
    }

    /// Worker: the upstream answered `status` (Envoy's router `putHttpResponseCode`).
    #[inline]
    pub fn put_http_status(&self, host: &Host, status: u16) {
        if host.outlier.put_http_status(u64::from(status), &|c| self.threshold(c)) {
            self.wake.notify_one();
        }
    }

    /// Worker: a local origin event (`putResult`), `code` being the status Envoy attaches
    /// (the route's timeout status for timeouts).
    pub fn put_local(&self, host: &Host, result: LocalResult, code: Option<u16>) {
        let split = self.config.split_external_local_origin_errors;
        if host.outlier.put_local(result, code.map(u64::from), split, &|c| self.threshold(c)) {
            self.wake.notify_one();
        }
    }

    /// Settings for an evaluation (runtime overrides as of now).
    fn settings(&self) -> Settings {
        let rt = crate::runtime::snapshot();
        Settings::resolve(&self.config, &|key, default| rt.get_integer(key, default))
    }

    /// The sweep interval (`outlier_detection.interval_ms` overrides it).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.settings().interval_ms.max(1))
    }

    /// Start writing events to `log` (once).
    pub fn set_event_log(&self, log: EventLog) {
        let _ = self.event_log.set(log);
    }

    /// The last sweep's success rate statistics (for `/clusters`).
    pub fn success_rate_nums(&self, origin: Origin) -> SuccessRateNums {
        self.lock().detector.success_rate_nums(origin)
    }

    /// Handle the consecutive-error crossings workers reported.
    pub fn handle_crossings(&self, target: &dyn DetectorTarget) {
        self.evaluate(target, |d, s, now, hosts, views, rng, actions| {
            for (idx, host) in hosts.iter().enumerate() {
                for c in host.outlier.take_pending() {
                    d.on_consecutive_error(s, now, views, idx, c, rng, actions);
                }
            }
        });
    }

    /// The interval sweep.
    pub fn sweep(&self, target: &dyn DetectorTarget) {
        self.evaluate(target, |d, s, now, hosts, views, rng, actions| {
            for (view, host) in views.iter_mut().zip(hosts) {
                view.window = host.outlier.close_windows();
            }
            d.on_interval(s, now, views, rng, actions);
        });
    }

    /// An active health check of `host` passed: un-eject it unless
    /// `successful_active_health_check_uneject_host` is off or active health checking
    /// itself fails the host (Envoy's host check complete callback).
    pub fn on_active_health_check_success(&self, target: &dyn DetectorTarget, host: &Host) {
        if !self.config.successful_active_health_check_uneject_host {
            return;
        }
        let flags = host.health_flags();
        if flags.contains(HealthFlags::FAILED_ACTIVE_HC) || !flags.contains(HealthFlags::FAILED_OUTLIER_CHECK) {
            return;
        }
        self.evaluate(target, |d, _, now, hosts, views, _, actions| {
            if let Some(idx) = hosts.iter().position(|h| std::ptr::eq(&**h, host)) {
                d.on_active_health_check_success(now, views, idx, actions);
            }
        });
    }

    /// Run `f` over the cluster's current hosts and apply what it decided.
    #[allow(clippy::type_complexity)]
    fn evaluate(
        &self,
        target: &dyn DetectorTarget,
        f: impl FnOnce(
            &mut Detector,
            &Settings,
            Instant,
            &[Arc<Host>],
            &mut [HostView],
            &mut dyn FnMut() -> u64,
            &mut Vec<Action>,
        ),
    ) {
        let set = target.current_hosts();
        let hosts: Vec<Arc<Host>> = set.all().cloned().collect();
        let settings = self.settings();
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        sync_membership(&mut inner.detector, &inner.known, &hosts);
        inner.known.clone_from(&hosts);
        let ejected = |h: &Host| h.health_flags().contains(HealthFlags::FAILED_OUTLIER_CHECK);
        let mut views: Vec<HostView> = hosts.iter().map(|h| HostView::new(h.outlier_state(), ejected(h))).collect();
        let before: Vec<HostView> = views.clone();
        let mut actions = Vec::new();
        let mut rng = rand::random::<u64>;
        f(&mut inner.detector, &settings, now, &hosts, &mut views, &mut rng, &mut actions);

        let mut flags = Vec::new();
        for ((host, view), old) in hosts.iter().zip(&views).zip(&before) {
            if view.state != old.state {
                host.set_outlier_state(view.state);
            }
            if view.ejected != old.ejected {
                flags.push((host.clone(), view.ejected));
            }
        }
        if !flags.is_empty() {
            target.set_outlier_flags(&flags);
        }
        let log = self.event_log.get();
        for a in &actions {
            match a {
                Action::ResetCounter { host, counter } => hosts[*host].outlier.reset(*counter),
                Action::Eject { host, .. } | Action::Uneject { host, .. } => {
                    if let Some(log) = log {
                        log.write(event_json(a, &self.cluster_name, &hosts[*host], SystemTime::now()));
                    }
                }
            }
        }
        self.stats.add(&inner.detector.take_tally());
        self.stats.ejections_active.set(i64::try_from(inner.detector.ejections_active()).unwrap_or(i64::MAX));
    }
}

/// Tell the detector which hosts came and went since the last evaluation.
fn sync_membership(d: &mut Detector, known: &[Arc<Host>], current: &[Arc<Host>]) {
    let ejected = |h: &Host| h.health_flags().contains(HealthFlags::FAILED_OUTLIER_CHECK);
    let now: HashSet<*const Host> = current.iter().map(Arc::as_ptr).collect();
    let before: HashSet<*const Host> = known.iter().map(Arc::as_ptr).collect();
    for h in known.iter().filter(|h| !now.contains(&Arc::as_ptr(h))) {
        d.host_removed(ejected(h));
    }
    for h in current.iter().filter(|h| !before.contains(&Arc::as_ptr(h))) {
        d.host_added(ejected(h));
    }
}

/// Start the detector task of `target`'s cluster (no-op without outlier detection), with
/// the server's event log if it has one. Must run on the main thread's runtime.
pub fn spawn<T: DetectorTarget>(target: &Arc<T>, event_log: Option<&EventLog>) {
    let Some(det) = target.outlier_detector().cloned() else { return };
    if let Some(log) = event_log {
        det.set_event_log(log.clone());
    }
    let weak: Weak<T> = Arc::downgrade(target);
    // Outside a runtime (config checks, unit tests) there is nothing to run it on.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::debug!("no runtime: outlier detector task not started");
        return;
    };
    rt.spawn(async move {
        let mut next = tokio::time::Instant::now() + det.interval();
        loop {
            let tick = tokio::select! {
                _ = tokio::time::sleep_until(next) => true,
                _ = det.wake.notified() => false,
            };
            // Upgraded only while working: the task must not keep a dropped cluster alive.
            let Some(t) = weak.upgrade().filter(|t| !t.is_retired()) else { return };
            if tick {
                det.sweep(&*t);
                next = tokio::time::Instant::now() + det.interval();
            } else {
                det.handle_crossings(&*t);
            }
        }
    });
}

/// One event log line, as Envoy's `EventLoggerImpl` prints an `OutlierDetectionEvent`
/// (proto field names, enums by name, primitive fields even when default, `uint64` as a
/// string): an un-ejection has no `type` of its own, so it shows the enum's default,
/// `CONSECUTIVE_5XX`, and `enforced: false`.
pub fn event_json(action: &Action, cluster: &str, host: &Host, at: SystemTime) -> String {
    use serde_json::Value;
    let (kind, is_eject, enforced, num_ejections, since, details) = match action {
        Action::Eject { kind, enforced, num_ejections, since_last_action, success_rate, .. } => {
            let details = match (kind.origin(), success_rate) {
                (Some(_), Some((host_rate, Some(nums)))) => (
                    "eject_success_rate_event",
                    format!(
                        "{{\"host_success_rate\":{},\"cluster_average_success_rate\":{},\"cluster_success_rate_ejection_threshold\":{}}}",
                        proto_double(*host_rate),
                        proto_double(nums.average),
                        proto_double(nums.ejection_threshold)
                    ),
                ),
                (Some(_), Some((host_rate, None))) => {
                    ("eject_failure_percentage_event", format!("{{\"host_success_rate\":{}}}", proto_double(*host_rate)))
                }
                _ => ("eject_consecutive_event", "{}".to_string()),
            };
            (*kind, true, *enforced, *num_ejections, *since_last_action, Some(details))
        }
        Action::Uneject { num_ejections, since_last_action, .. } => {
            (EjectionType::Consecutive5xx, false, false, *num_ejections, *since_last_action, None)
        }
        Action::ResetCounter { .. } => return String::new(),
    };
    let mut timestamp = crate::formatter::format_time(at);
    // Proto JSON drops an all-zero fraction.
    if let Some(stripped) = timestamp.strip_suffix(".000Z") {
        timestamp = format!("{stripped}Z");
    }
    let mut out = format!("{{\"type\":\"{}\",\"timestamp\":\"{timestamp}\"", kind.proto_name());
    if let Some(d) = since {
        out.push_str(&format!(",\"secs_since_last_action\":\"{}\"", d.as_secs()));
    }
    out.push_str(&format!(
        ",\"cluster_name\":{},\"upstream_url\":\"{}\",\"action\":\"{}\",\"num_ejections\":{num_ejections},\"enforced\":{enforced}",
        Value::String(cluster.to_string()),
        host.address,
        if is_eject { "EJECT" } else { "UNEJECT" },
    ));
    if let Some((field, body)) = details {
        out.push_str(&format!(",\"{field}\":{body}"));
    }
    out.push_str("}\n");
    out
}

/// A double as protobuf's JSON printer writes it (`SimpleDtoa`: 15 significant digits,
/// 17 when 15 do not round-trip).
pub fn proto_double(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "\"NaN\"".into()
        } else if v > 0.0 {
            "\"Infinity\"".into()
        } else {
            "\"-Infinity\"".into()
        };
    }
    let short = format_g(v, 15);
    if short.parse::<f64>().ok() == Some(v) {
        short
    } else {
        format_g(v, 17)
    }
}

/// C's `%.<precision>g` (also fmt's `{:g}` with precision 6): `precision` significant
/// digits, trailing zeros dropped, scientific notation (`1e-05`) below 1e-4 or from
/// 10^precision on.
pub fn format_g(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let p = precision.max(1);
    // The exponent after rounding to p significant digits.
    let sci = format!("{:.*e}", p - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i32 {
        let m = trim_fraction(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.unsigned_abs());
    }
    let decimals = usize::try_from(p as i32 - 1 - exp).unwrap_or(0);
    trim_fraction(&format!("{v:.decimals$}")).to_string()
}

/// fmt's `{}` for a double (Envoy's per-host `success_rate::` lines): the shortest digits
/// that round-trip, scientific below 1e-4 or from 1e16 on.
pub fn format_shortest(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format_g(v, 1);
    }
    let sci = format!("{v:e}");
    let exp: i32 = sci.split_once('e').and_then(|(_, e)| e.parse().ok()).unwrap_or(0);
    if (-4..16).contains(&exp) {
        return format!("{v}");
    }
    let (m, _) = sci.split_once('e').unwrap_or((&sci, ""));
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{m}e{sign}{:02}", exp.unsigned_abs())
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use pinion_xds::model::HealthStatus;

    use super::*;
    use crate::upstream::outlier_detection::SuccessRateNums;

    #[test]
    fn number_formats() {
        // (value, %g (6), shortest, proto JSON)
        let cases: &[(f64, &str, &str, &str)] = &[
            (-1.0, "-1", "-1", "-1"),
            (0.0, "0", "0", "0"),
            (100.0, "100", "100", "100"),
            (80.0, "80", "80", "80"),
            (4.0, "4", "4", "4"),
            (200.0 / 3.0, "66.6667", "66.66666666666667", "66.666666666666671"),
            (52.5, "52.5", "52.5", "52.5"),
            (99.99999, "100", "99.99999", "99.99999"),
            (0.0001, "0.0001", "0.0001", "0.0001"),
            (0.00001, "1e-05", "1e-05", "1e-05"),
            (-12.345678, "-12.3457", "-12.345678", "-12.345678"),
            (1234567.0, "1.23457e+06", "1234567", "1234567"),
        ];
        for (v, g, shortest, proto) in cases {
            assert_eq!(format_g(*v, 6), *g, "{v} %g");
            assert_eq!(format_shortest(*v), *shortest, "{v} shortest");
            assert_eq!(proto_double(*v), *proto, "{v} proto");
        }
    }

    fn host(port: u16) -> Host {
        Host::new(SocketAddr::from(([127, 0, 0, 1], port)), String::new(), 1, None, 0, HealthStatus::Healthy)
    }

    #[test]
    fn event_lines_match_envoy() {
        // Lines as Envoy 1.40 wrote them (timestamps aside).
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_462_463_807);
        let h = host(18003);
        let eject = Action::Eject {
            host: 0,
            kind: EjectionType::Consecutive5xx,
            enforced: true,
            num_ejections: 1,
            since_last_action: None,
            success_rate: None,
        };
        assert_eq!(
            event_json(&eject, "svc", &h, at),
            "{\"type\":\"CONSECUTIVE_5XX\",\"timestamp\":\"2026-12-05T09:21:03.807Z\",\"cluster_name\":\"svc\",\"upstream_url\":\"127.0.0.1:18003\",\"action\":\"EJECT\",\"num_ejections\":1,\"enforced\":true,\"eject_consecutive_event\":{}}\n"
        );
        let uneject =
            Action::Uneject { host: 0, num_ejections: 1, since_last_action: Some(Duration::from_millis(2376)) };
        assert_eq!(
            event_json(&uneject, "svc", &h, at - Duration::from_millis(807)),
            "{\"type\":\"CONSECUTIVE_5XX\",\"timestamp\":\"2026-12-05T09:21:03Z\",\"secs_since_last_action\":\"2\",\"cluster_name\":\"svc\",\"upstream_url\":\"127.0.0.1:18003\",\"action\":\"UNEJECT\",\"num_ejections\":1,\"enforced\":false}\n"
        );
        let sr = Action::Eject {
            host: 0,
            kind: EjectionType::SuccessRate,
            enforced: true,
            num_ejections: 1,
            since_last_action: None,
            success_rate: Some((0.0, Some(SuccessRateNums { average: 80.0, ejection_threshold: 4.0 }))),
        };
        assert!(event_json(&sr, "svc", &h, at).ends_with(
            "\"action\":\"EJECT\",\"num_ejections\":1,\"enforced\":true,\"eject_success_rate_event\":{\"host_success_rate\":0,\"cluster_average_success_rate\":80,\"cluster_success_rate_ejection_threshold\":4}}\n"
        ));
        let fp = Action::Eject {
            host: 0,
            kind: EjectionType::FailurePercentage,
            enforced: false,
            num_ejections: 1,
            since_last_action: None,
            success_rate: Some((0.0, None)),
        };
        assert!(event_json(&fp, "svc", &h, at).ends_with(
            "\"type\":\"FAILURE_PERCENTAGE\",\"timestamp\":\"2026-12-05T09:21:03.807Z\",\"cluster_name\":\"svc\",\"upstream_url\":\"127.0.0.1:18003\",\"action\":\"EJECT\",\"num_ejections\":1,\"enforced\":false,\"eject_failure_percentage_event\":{\"host_success_rate\":0}}\n"
        ));
        assert!(event_json(&fp, "svc", &h, at).starts_with("{\"type\":\"FAILURE_PERCENTAGE\""));
    }
}
