//! Outlier detection as Envoy's `DetectorImpl` / `DetectorHostMonitorImpl`
//! (`source/common/upstream/outlier_detection_impl.cc`), without I/O: no clock (the caller
//! passes `now`), no randomness of its own (the caller passes a generator), no stats store,
//! no tasks. [`crate::upstream::outlier_detector`] runs it per cluster on the main thread.
//!
//! Two halves, as in Envoy:
//! - [`HostMonitor`]: the per-host atomics workers write on the request path (consecutive
//!   error counters, success-rate buckets). A worker learns from the return value that it
//!   crossed a consecutive-error threshold and only then wakes the detector.
//! - [`Detector`]: the per-cluster state machine the main thread drives: consecutive-error
//!   ejections, the interval sweep (un-ejection, success-rate and failure-percentage
//!   ejections, backoff decay), `max_ejection_percent`, `enforcing_*`, and the per-host
//!   state ([`HostState`]) that lives on the host so that it survives a cluster update.
//!
//! Envoy's quirks are kept on purpose (a differential test compares them), each noted where
//! it happens: e.g. a host can be ejected twice in one sweep (success rate, then failure
//! percentage), which counts it twice in `ejections_active`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pinion_xds::model;

/// `envoy.data.cluster.v3.OutlierEjectionType` (without `EXTENSION`: monitors are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectionType {
    /// `CONSECUTIVE_5XX`.
    Consecutive5xx,
    /// `CONSECUTIVE_GATEWAY_FAILURE`.
    ConsecutiveGatewayFailure,
    /// `SUCCESS_RATE`.
    SuccessRate,
    /// `CONSECUTIVE_LOCAL_ORIGIN_FAILURE`.
    ConsecutiveLocalOriginFailure,
    /// `SUCCESS_RATE_LOCAL_ORIGIN`.
    SuccessRateLocalOrigin,
    /// `FAILURE_PERCENTAGE`.
    FailurePercentage,
    /// `FAILURE_PERCENTAGE_LOCAL_ORIGIN`.
    FailurePercentageLocalOrigin,
}

impl EjectionType {
    /// Every type, in [`EjectionType::index`] order.
    pub const ALL: [EjectionType; 7] = [
        EjectionType::Consecutive5xx,
        EjectionType::ConsecutiveGatewayFailure,
        EjectionType::SuccessRate,
        EjectionType::ConsecutiveLocalOriginFailure,
        EjectionType::SuccessRateLocalOrigin,
        EjectionType::FailurePercentage,
        EjectionType::FailurePercentageLocalOrigin,
    ];

    /// Position in [`EjectionType::ALL`] (the proto enum value).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The proto enum name, as the event log prints it.
    pub fn proto_name(self) -> &'static str {
        match self {
            EjectionType::Consecutive5xx => "CONSECUTIVE_5XX",
            EjectionType::ConsecutiveGatewayFailure => "CONSECUTIVE_GATEWAY_FAILURE",
            EjectionType::SuccessRate => "SUCCESS_RATE",
            EjectionType::ConsecutiveLocalOriginFailure => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            EjectionType::SuccessRateLocalOrigin => "SUCCESS_RATE_LOCAL_ORIGIN",
            EjectionType::FailurePercentage => "FAILURE_PERCENTAGE",
            EjectionType::FailurePercentageLocalOrigin => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
        }
    }

    /// The success-rate monitor a statistical type reads (None: a consecutive type).
    pub fn origin(self) -> Option<Origin> {
        match self {
            EjectionType::SuccessRate | EjectionType::FailurePercentage => Some(Origin::External),
            EjectionType::SuccessRateLocalOrigin | EjectionType::FailurePercentageLocalOrigin => Some(Origin::Local),
            _ => None,
        }
    }
}

/// Which success-rate monitor: Envoy's `SuccessRateMonitorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `ExternalOrigin`: HTTP statuses (and, without the split, local origin errors mapped to them).
    External = 0,
    /// `LocalOrigin`: connect failures, timeouts, resets (only with
    /// `split_external_local_origin_errors`).
    Local = 1,
}

/// Envoy's `Outlier::Result` for events that are not an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalResult {
    /// `LOCAL_ORIGIN_CONNECT_SUCCESS`: the request got a connection (it may still fail).
    ConnectSuccess,
    /// `LOCAL_ORIGIN_CONNECT_FAILED`: connect failure or a reset.
    ConnectFailed,
    /// `LOCAL_ORIGIN_TIMEOUT`: the request timed out waiting for the response.
    Timeout,
}

/// The consecutive-error counters; also the bits of [`HostMonitor`]'s pending crossings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consecutive {
    /// `consecutive_gateway_failure`.
    GatewayFailure = 1,
    /// `consecutive_5xx`.
    Status5xx = 2,
    /// `consecutive_local_origin_failure`.
    LocalOriginFailure = 4,
}

impl Consecutive {
    /// In the order Envoy posts crossings from one response (gateway before 5xx).
    pub const ALL: [Consecutive; 3] =
        [Consecutive::GatewayFailure, Consecutive::Status5xx, Consecutive::LocalOriginFailure];

    /// The ejection this counter detects.
    pub fn ejection_type(self) -> EjectionType {
        match self {
            Consecutive::GatewayFailure => EjectionType::ConsecutiveGatewayFailure,
            Consecutive::Status5xx => EjectionType::Consecutive5xx,
            Consecutive::LocalOriginFailure => EjectionType::ConsecutiveLocalOriginFailure,
        }
    }
}

/// One success-rate accumulation window.
#[derive(Default)]
struct Bucket {
    success: AtomicU64,
    total: AtomicU64,
}

/// Envoy's `SuccessRateMonitor`: workers count into the current bucket; the interval sweep
/// swaps buckets and reads the one that just closed.
#[derive(Default)]
struct SuccessRateMonitor {
    buckets: [Bucket; 2],
    current: AtomicUsize,
}

impl SuccessRateMonitor {
    fn bucket(&self) -> &Bucket {
        &self.buckets[self.current.load(Ordering::Relaxed) & 1]
    }

    fn record(&self, success: bool) {
        let b = self.bucket();
        b.total.fetch_add(1, Ordering::Relaxed);
        if success {
            b.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `updateCurrentWriter` + `getSuccessRateAndVolume`: clear the idle bucket, make it the
    /// current one, and return (success rate %, volume) of the bucket that closed (None: no
    /// requests). A worker that read the old index just before the swap may still count into
    /// the closed bucket; Envoy has the same benign race.
    fn close_window(&self) -> Option<(f64, u64)> {
        let old = self.current.load(Ordering::Relaxed) & 1;
        let next = &self.buckets[old ^ 1];
        next.success.store(0, Ordering::Relaxed);
        next.total.store(0, Ordering::Relaxed);
        self.current.store(old ^ 1, Ordering::Relaxed);
        let closed = &self.buckets[old];
        let total = closed.total.load(Ordering::Relaxed);
        if total == 0 {
            return None;
        }
        let success = closed.success.load(Ordering::Relaxed);
        Some((success as f64 * 100.0 / total as f64, total))
    }
}

/// The part of a host's outlier state that workers write: plain atomics, no lock, and a
/// wake-up for the detector only when a consecutive-error threshold is crossed.
#[derive(Default)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// [`Consecutive`] bits crossed and not yet handled by the detector.
    pending: AtomicU8,
    success_rate: [SuccessRateMonitor; 2],
}

/// `++counter == threshold`, as Envoy compares: the crossing is reported once; the
/// detector resets the counter when it handles it.
fn bump(c: &AtomicU32, threshold: u64) -> bool {
    u64::from(c.fetch_add(1, Ordering::Relaxed).wrapping_add(1)) == threshold
}

/// Clear a counter without writing a cache line other workers read when it is already 0.
fn clear(c: &AtomicU32) {
    if c.load(Ordering::Relaxed) != 0 {
        c.store(0, Ordering::Relaxed);
    }
}

impl HostMonitor {
    /// `putHttpResponseCode`: a response status (or a local origin error mapped to one).
    /// `threshold` gives a counter's current threshold (read only on errors). Returns whether
    /// a threshold was crossed (the caller then wakes the detector).
    pub fn put_http_status(&self, status: u64, threshold: &dyn Fn(Consecutive) -> u64) -> bool {
        let mut crossed = 0u8;
        if (500..600).contains(&status) {
            self.success_rate[Origin::External as usize].record(false);
            if matches!(status, 502..=504) {
                if bump(&self.consecutive_gateway_failure, threshold(Consecutive::GatewayFailure)) {
                    crossed |= Consecutive::GatewayFailure as u8;
                }
            } else {
                clear(&self.consecutive_gateway_failure);
            }
            if bump(&self.consecutive_5xx, threshold(Consecutive::Status5xx)) {
                crossed |= Consecutive::Status5xx as u8;
            }
        } else {
            self.success_rate[Origin::External as usize].record(true);
            clear(&self.consecutive_5xx);
            clear(&self.consecutive_gateway_failure);
        }
        self.mark(crossed)
    }

    /// `putResult` for a local origin event. Without `split`, it is mapped to a status as
    /// Envoy's `resultToHttpCode` does (connect failure and reset: 503, timeout: `code`, the
    /// route's timeout status, else 504; a connect success is not reported). With `split`,
    /// it feeds the local-origin counters and success rate instead.
    pub fn put_local(
        &self,
        result: LocalResult,
        code: Option<u64>,
        split: bool,
        threshold: &dyn Fn(Consecutive) -> u64,
    ) -> bool {
        if !split {
            let status = match (result, code) {
                (LocalResult::ConnectSuccess, _) => return false,
                (_, Some(c)) => c,
                (LocalResult::ConnectFailed, None) => 503,
                (LocalResult::Timeout, None) => 504,
            };
            return self.put_http_status(status, threshold);
        }
        let local = &self.success_rate[Origin::Local as usize];
        match result {
            LocalResult::ConnectSuccess => {
                local.record(true);
                clear(&self.consecutive_local_origin_failure);
                false
            }
            LocalResult::ConnectFailed | LocalResult::Timeout => {
                local.record(false);
                let crossed = bump(&self.consecutive_local_origin_failure, threshold(Consecutive::LocalOriginFailure));
                self.mark(if crossed { Consecutive::LocalOriginFailure as u8 } else { 0 })
            }
        }
    }

    fn mark(&self, crossed: u8) -> bool {
        if crossed == 0 {
            return false;
        }
        self.pending.fetch_or(crossed, Ordering::Relaxed);
        true
    }

    /// Take the crossings not handled yet, in Envoy's posting order.
    pub fn take_pending(&self) -> impl Iterator<Item = Consecutive> {
        let bits = if self.pending.load(Ordering::Relaxed) == 0 { 0 } else { self.pending.swap(0, Ordering::Relaxed) };
        Consecutive::ALL.into_iter().filter(move |c| bits & (*c as u8) != 0)
    }

    /// Reset a consecutive counter (the detector handled its crossing, or un-ejected the host).
    pub fn reset(&self, c: Consecutive) {
        let counter = match c {
            Consecutive::Status5xx => &self.consecutive_5xx,
            Consecutive::GatewayFailure => &self.consecutive_gateway_failure,
            Consecutive::LocalOriginFailure => &self.consecutive_local_origin_failure,
        };
        counter.store(0, Ordering::Relaxed);
    }

    /// Current value of a consecutive counter.
    pub fn consecutive(&self, c: Consecutive) -> u32 {
        let counter = match c {
            Consecutive::Status5xx => &self.consecutive_5xx,
            Consecutive::GatewayFailure => &self.consecutive_gateway_failure,
            Consecutive::LocalOriginFailure => &self.consecutive_local_origin_failure,
        };
        counter.load(Ordering::Relaxed)
    }

    /// Close both success-rate windows (the interval sweep): [External, Local].
    pub fn close_windows(&self) -> [Option<(f64, u64)>; 2] {
        [self.success_rate[0].close_window(), self.success_rate[1].close_window()]
    }
}

/// The detector's memory of one host (Envoy keeps it in the host's monitor): only the main
/// thread writes it. Kept on the host, so a cluster update that keeps the host keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostState {
    /// Times the host was ejected (the event log's `num_ejections`; never decays).
    pub num_ejections: u32,
    /// Envoy's `eject_time_backoff`: the ejection time multiplier, raised on each ejection
    /// (while below the cap) and lowered by one per interval the host stays healthy.
    pub backoff: u32,
    /// When it was last ejected.
    pub last_ejection: Option<Instant>,
    /// When it was last un-ejected.
    pub last_unejection: Option<Instant>,
    /// The jitter drawn at the last ejection.
    pub jitter: Duration,
    /// Success rate of the last interval shown by `/clusters` ([External, Local]; -1: none).
    pub success_rate: [f64; 2],
}

impl Default for HostState {
    fn default() -> Self {
        HostState {
            num_ejections: 0,
            backoff: 0,
            last_ejection: None,
            last_unejection: None,
            jitter: Duration::ZERO,
            success_rate: [-1.0; 2],
        }
    }
}

/// The detector's settings for one evaluation: the cluster's config with Envoy's runtime
/// overrides (`outlier_detection.<field>`) applied, times in whole milliseconds as Envoy
/// keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `interval` (ms).
    pub interval_ms: u64,
    /// `base_ejection_time` (ms).
    pub base_ejection_time_ms: u64,
    /// `max_ejection_time` (ms).
    pub max_ejection_time_ms: u64,
    /// `max_ejection_time_jitter` (ms).
    pub max_ejection_time_jitter_ms: u64,
    /// `max_ejection_percent`.
    pub max_ejection_percent: u64,
    /// `always_eject_one_host`.
    pub always_eject_one_host: bool,
    /// `consecutive_5xx`.
    pub consecutive_5xx: u64,
    /// `consecutive_gateway_failure`.
    pub consecutive_gateway_failure: u64,
    /// `consecutive_local_origin_failure`.
    pub consecutive_local_origin_failure: u64,
    /// `enforcing_*` by [`EjectionType::index`].
    pub enforcing: [u64; 7],
    /// `success_rate_minimum_hosts`.
    pub success_rate_minimum_hosts: u64,
    /// `success_rate_request_volume`.
    pub success_rate_request_volume: u64,
    /// `success_rate_stdev_factor` (thousandths).
    pub success_rate_stdev_factor: u64,
    /// `failure_percentage_threshold`.
    pub failure_percentage_threshold: u64,
    /// `failure_percentage_minimum_hosts`.
    pub failure_percentage_minimum_hosts: u64,
    /// `failure_percentage_request_volume`.
    pub failure_percentage_request_volume: u64,
    /// `split_external_local_origin_errors`.
    pub split_external_local_origin_errors: bool,
}

/// Envoy's runtime key of each `enforcing_*` setting, by [`EjectionType::index`].
const ENFORCING_KEYS: [&str; 7] = [
    "outlier_detection.enforcing_consecutive_5xx",
    "outlier_detection.enforcing_consecutive_gateway_failure",
    "outlier_detection.enforcing_success_rate",
    "outlier_detection.enforcing_consecutive_local_origin_failure",
    "outlier_detection.enforcing_local_origin_success_rate",
    "outlier_detection.enforcing_failure_percentage",
    "outlier_detection.enforcing_failure_percentage_local_origin",
];

impl Settings {
    /// The config with runtime overrides: `runtime(key, default)` is Envoy's `getInteger`.
    pub fn resolve(c: &model::OutlierDetection, runtime: &dyn Fn(&str, u64) -> u64) -> Settings {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let rt = |key: &str, v: u32| runtime(key, u64::from(v));
        let enforcing_cfg = [
            c.enforcing_consecutive_5xx,
            c.enforcing_consecutive_gateway_failure,
            c.enforcing_success_rate,
            c.enforcing_consecutive_local_origin_failure,
            c.enforcing_local_origin_success_rate,
            c.enforcing_failure_percentage,
            c.enforcing_failure_percentage_local_origin,
        ];
        Settings {
            interval_ms: runtime("outlier_detection.interval_ms", ms(c.interval)),
            base_ejection_time_ms: runtime("outlier_detection.base_ejection_time_ms", ms(c.base_ejection_time)),
            max_ejection_time_ms: runtime("outlier_detection.max_ejection_time_ms", ms(c.max_ejection_time)),
            max_ejection_time_jitter_ms: runtime(
                "outlier_detection.max_ejection_time_jitter_ms",
                ms(c.max_ejection_time_jitter),
            ),
            max_ejection_percent: rt("outlier_detection.max_ejection_percent", c.max_ejection_percent).min(100),
            always_eject_one_host: c.always_eject_one_host,
            consecutive_5xx: rt("outlier_detection.consecutive_5xx", c.consecutive_5xx),
            consecutive_gateway_failure: rt(
                "outlier_detection.consecutive_gateway_failure",
                c.consecutive_gateway_failure,
            ),
            consecutive_local_origin_failure: rt(
                "outlier_detection.consecutive_local_origin_failure",
                c.consecutive_local_origin_failure,
            ),
            enforcing: std::array::from_fn(|i| rt(ENFORCING_KEYS[i], enforcing_cfg[i])),
            success_rate_minimum_hosts: rt(
                "outlier_detection.success_rate_minimum_hosts",
                c.success_rate_minimum_hosts,
            ),
            success_rate_request_volume: rt(
                "outlier_detection.success_rate_request_volume",
                c.success_rate_request_volume,
            ),
            success_rate_stdev_factor: rt("outlier_detection.success_rate_stdev_factor", c.success_rate_stdev_factor),
            failure_percentage_threshold: rt(
                "outlier_detection.failure_percentage_threshold",
                c.failure_percentage_threshold,
            ),
            failure_percentage_minimum_hosts: rt(
                "outlier_detection.failure_percentage_minimum_hosts",
                c.failure_percentage_minimum_hosts,
            ),
            failure_percentage_request_volume: rt(
                "outlier_detection.failure_percentage_request_volume",
                c.failure_percentage_request_volume,
            ),
            split_external_local_origin_errors: c.split_external_local_origin_errors,
        }
    }

    /// The threshold of a consecutive-error counter.
    pub fn threshold(&self, c: Consecutive) -> u64 {
        match c {
            Consecutive::Status5xx => self.consecutive_5xx,
            Consecutive::GatewayFailure => self.consecutive_gateway_failure,
            Consecutive::LocalOriginFailure => self.consecutive_local_origin_failure,
        }
    }
}

/// The cluster's success-rate statistics of the last sweep (-1: not computed), shown by
/// `/clusters` and the event log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateNums {
    /// Mean success rate of the hosts with enough volume.
    pub average: f64,
    /// `mean - stdev_factor * stdev`: hosts below it are outliers.
    pub ejection_threshold: f64,
}

impl Default for SuccessRateNums {
    fn default() -> Self {
        SuccessRateNums { average: -1.0, ejection_threshold: -1.0 }
    }
}

/// Envoy's `successRateEjectionThreshold`: mean and `mean - factor * stdev` (population
/// stdev) of `rates`. With {50, 100, 100, 100, 100} and 1.9: mean 90, stdev 20, threshold 52.
pub fn success_rate_ejection_threshold(rates: &[f64], stdev_factor: f64) -> SuccessRateNums {
    if rates.is_empty() {
        return SuccessRateNums::default();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    SuccessRateNums { average: mean, ejection_threshold: mean - stdev_factor * variance.sqrt() }
}

/// One host as an evaluation sees it. The caller copies the host's [`HostState`] and flag
/// in, and writes back what the evaluation changed.
#[derive(Debug, Clone)]
pub struct HostView {
    /// The detector's memory of the host.
    pub state: HostState,
    /// `FAILED_OUTLIER_CHECK` is set.
    pub ejected: bool,
    /// Success rate and volume of the interval that just closed ([External, Local]); only
    /// read by [`Detector::on_interval`].
    pub window: [Option<(f64, u64)>; 2],
}

impl HostView {
    /// A host in this state.
    pub fn new(state: HostState, ejected: bool) -> Self {
        HostView { state, ejected, window: [None; 2] }
    }
}

/// What an evaluation did to a host, for the caller to apply (flags, counters, event log).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// An outlier passed `max_ejection_percent`: ejected if `enforced` (the host's flag must
    /// be set), else only detected. Either way Envoy writes an `EJECT` event.
    Eject {
        /// Index into the evaluated hosts.
        host: usize,
        /// Why.
        kind: EjectionType,
        /// Whether `enforcing_*` let it through.
        enforced: bool,
        /// The host's `num_ejections` after this.
        num_ejections: u32,
        /// Time since the host's last un-ejection, if any (the event's `secs_since_last_action`).
        since_last_action: Option<Duration>,
        /// Success rate details of a statistical ejection: host rate, cluster average,
        /// cluster threshold (the two last only for success-rate ejections).
        success_rate: Option<(f64, Option<SuccessRateNums>)>,
    },
    /// The host's ejection ended: clear its flag, reset its consecutive counters.
    Uneject {
        /// Index into the evaluated hosts.
        host: usize,
        /// The host's `num_ejections`.
        num_ejections: u32,
        /// Time since its ejection.
        since_last_action: Option<Duration>,
    },
    /// A consecutive-error crossing was handled: reset that counter on the host.
    ResetCounter {
        /// Index into the evaluated hosts.
        host: usize,
        /// Which counter.
        counter: Consecutive,
    },
}

/// Counter increments of an evaluation (`cluster.<name>.outlier_detection.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// `ejections_detected_<type>` by [`EjectionType::index`].
    pub detected: [u64; 7],
    /// `ejections_enforced_<type>` by [`EjectionType::index`].
    pub enforced: [u64; 7],
    /// `ejections_enforced_total`.
    pub enforced_total: u64,
    /// `ejections_overflow`.
    pub overflow: u64,
    /// `ejections_total` (deprecated: consecutive 5xx and success rate ejections that passed
    /// `max_ejection_percent`, enforced or not).
    pub total: u64,
    /// `ejections_consecutive_5xx` (deprecated: consecutive 5xx detections).
    pub consecutive_5xx: u64,
    /// `ejections_success_rate` (deprecated: success rate detections).
    pub success_rate: u64,
}

/// The per-cluster state machine (Envoy's `DetectorImpl` minus timers and threads).
#[derive(Debug, Default)]
pub struct Detector {
    /// Envoy's `ejections_active_helper_`: raised per enforced ejection, lowered per
    /// un-ejection or removal of an ejected host; the `ejections_active` gauge.
    ejections_active: u64,
    success_rate: [SuccessRateNums; 2],
    tally: Tally,
}

impl Detector {
    /// A detector with no ejections.
    pub fn new() -> Self {
        Detector::default()
    }

    /// `ejections_active`.
    pub fn ejections_active(&self) -> u64 {
        self.ejections_active
    }

    /// The last sweep's success rate statistics for `origin`.
    pub fn success_rate_nums(&self, origin: Origin) -> SuccessRateNums {
        self.success_rate[origin as usize]
    }

    /// Take the counter increments since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// A host joined the cluster. One that arrives ejected (kept from the cluster this one
    /// replaced) counts as an active ejection, which a new Envoy monitor would not know of;
    /// Pinion keeps hosts, and with them their ejections, across updates.
    pub fn host_added(&mut self, ejected: bool) {
        if ejected {
            self.ejections_active += 1;
        }
    }

    /// A host left the cluster (Envoy's member update callback).
    pub fn host_removed(&mut self, ejected: bool) {
        if ejected {
            self.ejections_active = self.ejections_active.saturating_sub(1);
        }
    }

    /// `onConsecutiveErrorWorker`: a worker saw `counter` cross its threshold on `hosts[idx]`.
    // The clock and the generator are arguments so that tests drive them.
    #[allow(clippy::too_many_arguments)]
    pub fn on_consecutive_error(
        &mut self,
        s: &Settings,
        now: Instant,
        hosts: &mut [HostView],
        idx: usize,
        counter: Consecutive,
        rng: &mut dyn FnMut() -> u64,
        actions: &mut Vec<Action>,
    ) {
        if hosts[idx].ejected {
            // Envoy leaves the counter as it is: the host is out already.
            return;
        }
        let kind = counter.ejection_type();
        self.tally.detected[kind.index()] += 1;
        self.eject(s, now, hosts, idx, kind, rng, actions);
        if counter == Consecutive::Status5xx {
            self.tally.consecutive_5xx += 1;
        }
        // Reset so that a new bout of errors is detected even without a success in between.
        actions.push(Action::ResetCounter { host: idx, counter });
    }

    /// The interval timer (`onIntervalTimer`): un-eject hosts whose time is up, run the
    /// success-rate and failure-percentage detection over the windows that just closed,
    /// and let the ejection backoff of healthy hosts decay.
    pub fn on_interval(
        &mut self,
        s: &Settings,
        now: Instant,
        hosts: &mut [HostView],
        rng: &mut dyn FnMut() -> u64,
        actions: &mut Vec<Action>,
    ) {
        for idx in 0..hosts.len() {
            self.check_for_uneject(s, now, hosts, idx, actions);
            // Refreshed below if the host has a valid rate this time.
            hosts[idx].state.success_rate = [-1.0; 2];
        }
        self.process_success_rate(s, now, hosts, Origin::External, rng, actions);
        self.process_success_rate(s, now, hosts, Origin::Local, rng, actions);
        let interval = Duration::from_millis(s.interval_ms);
        for h in hosts.iter_mut().filter(|h| !h.ejected) {
            // Healthy (and not ejected again) for at least an interval since its un-ejection.
            if h.state.last_unejection.is_some_and(|t| now.saturating_duration_since(t) >= interval) {
                h.state.backoff = h.state.backoff.saturating_sub(1);
            }
        }
    }

    /// An active health check passed for an ejected host that is not failing active health
    /// checks (`successful_active_health_check_uneject_host`; the caller checks those).
    pub fn on_active_health_check_success(
        &mut self,
        now: Instant,
        hosts: &mut [HostView],
        idx: usize,
        actions: &mut Vec<Action>,
    ) {
        if hosts[idx].ejected {
            self.uneject(now, hosts, idx, actions);
        }
    }

    fn check_for_uneject(
        &mut self,
        s: &Settings,
        now: Instant,
        hosts: &mut [HostView],
        idx: usize,
        actions: &mut Vec<Action>,
    ) {
        let h = &hosts[idx];
        if !h.ejected {
            return;
        }
        let base = u128::from(s.base_ejection_time_ms);
        let ejection = (base * u128::from(h.state.backoff)).min(u128::from(s.max_ejection_time_ms));
        let due = Duration::from_millis(u64::try_from(ejection).unwrap_or(u64::MAX)) + h.state.jitter;
        // A host ejected without a recorded time (cannot happen through this detector) is
        // released at once rather than never.
        let elapsed = h.state.last_ejection.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        if due <= elapsed {
            self.uneject(now, hosts, idx, actions);
        }
    }

    /// `unejectHost`.
    fn uneject(&mut self, now: Instant, hosts: &mut [HostView], idx: usize, actions: &mut Vec<Action>) {
        self.ejections_active = self.ejections_active.saturating_sub(1);
        let h = &mut hosts[idx];
        h.ejected = false;
        h.state.last_unejection = Some(now);
        for counter in Consecutive::ALL {
            actions.push(Action::ResetCounter { host: idx, counter });
        }
        actions.push(Action::Uneject {
            host: idx,
            num_ejections: h.state.num_ejections,
            since_last_action: h.state.last_ejection.map(|t| now.saturating_duration_since(t)),
        });
    }

    /// `ejectHost`: the `max_ejection_percent` check, the `enforcing_*` roll, the ejection.
    #[allow(clippy::too_many_arguments)]
    fn eject(
        &mut self,
        s: &Settings,
        now: Instant,
        hosts: &mut [HostView],
        idx: usize,
        kind: EjectionType,
        rng: &mut dyn FnMut() -> u64,
        actions: &mut Vec<Action>,
    ) {
        // Across all priorities, as Envoy (which notes it can eject a whole priority level).
        let ejected_percent = 100.0 * (self.ejections_active + 1) as f64 / hosts.len() as f64;
        let mut should_eject = ejected_percent <= s.max_ejection_percent as f64;
        if s.always_eject_one_host {
            should_eject = self.ejections_active == 0 || should_eject;
        }
        if !should_eject {
            self.tally.overflow += 1;
            return;
        }
        if matches!(kind, EjectionType::Consecutive5xx | EjectionType::SuccessRate) {
            self.tally.total += 1;
        }
        // Runtime `featureEnabled(key, default)`: a percentage of 100.
        let enforced = rng() % 100 < s.enforcing[kind.index()].min(100);
        let success_rate = kind.origin().map(|o| {
            let nums = matches!(kind, EjectionType::SuccessRate | EjectionType::SuccessRateLocalOrigin)
                .then_some(self.success_rate[o as usize]);
            (hosts[idx].state.success_rate[o as usize], nums)
        });
        let h = &mut hosts[idx];
        if enforced {
            self.ejections_active += 1;
            self.tally.enforced_total += 1;
            self.tally.enforced[kind.index()] += 1;
            // No check that the host is still in: Envoy ejects a host that both the success
            // rate and the failure percentage flag in one sweep twice (num_ejections,
            // backoff and ejections_active all count it twice).
            h.ejected = true;
            h.state.num_ejections += 1;
            h.state.last_ejection = Some(now);
            h.state.jitter = Duration::from_millis(rng() % s.max_ejection_time_jitter_ms.saturating_add(1));
            let base = u128::from(s.base_ejection_time_ms);
            if u128::from(h.state.backoff) * base < u128::from(s.max_ejection_time_ms) + base {
                h.state.backoff += 1;
            }
        }
        actions.push(Action::Eject {
            host: idx,
            kind,
            enforced,
            num_ejections: h.state.num_ejections,
            since_last_action: h.state.last_unejection.map(|t| now.saturating_duration_since(t)),
            success_rate,
        });
    }

    /// `processSuccessRateEjections` for one monitor.
    fn process_success_rate(
        &mut self,
        s: &Settings,
        now: Instant,
        hosts: &mut [HostView],
        origin: Origin,
        rng: &mut dyn FnMut() -> u64,
        actions: &mut Vec<Action>,
    ) {
        let o = origin as usize;
        self.success_rate[o] = SuccessRateNums::default();
        let n = hosts.len() as u64;
        if n < s.success_rate_minimum_hosts && n < s.failure_percentage_minimum_hosts {
            return;
        }
        let min_volume = s.success_rate_request_volume.min(s.failure_percentage_request_volume);
        let mut sr_hosts: Vec<(usize, f64)> = Vec::new();
        let mut fp_hosts: Vec<(usize, f64)> = Vec::new();
        for (idx, h) in hosts.iter_mut().enumerate() {
            if h.ejected {
                continue;
            }
            let Some((rate, volume)) = h.window[o] else { continue };
            if volume >= min_volume {
                h.state.success_rate[o] = rate;
            }
            if volume >= s.success_rate_request_volume {
                sr_hosts.push((idx, rate));
            }
            if volume >= s.failure_percentage_request_volume {
                fp_hosts.push((idx, rate));
            }
        }
        if !sr_hosts.is_empty() && sr_hosts.len() as u64 >= s.success_rate_minimum_hosts {
            let rates: Vec<f64> = sr_hosts.iter().map(|(_, r)| *r).collect();
            let nums = success_rate_ejection_threshold(&rates, s.success_rate_stdev_factor as f64 / 1000.0);
            self.success_rate[o] = nums;
            let kind = match origin {
                Origin::External => EjectionType::SuccessRate,
                Origin::Local => EjectionType::SuccessRateLocalOrigin,
            };
            for &(idx, rate) in &sr_hosts {
                if rate < nums.ejection_threshold {
                    self.tally.success_rate += 1;
                    self.tally.detected[kind.index()] += 1;
                    self.eject(s, now, hosts, idx, kind, rng, actions);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() as u64 >= s.failure_percentage_minimum_hosts {
            let kind = match origin {
                Origin::External => EjectionType::FailurePercentage,
                Origin::Local => EjectionType::FailurePercentageLocalOrigin,
            };
            for &(idx, rate) in &fp_hosts {
                if 100.0 - rate >= s.failure_percentage_threshold as f64 {
                    self.tally.detected[kind.index()] += 1;
                    self.eject(s, now, hosts, idx, kind, rng, actions);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::resolve(&model::OutlierDetection::default(), &|_, v| v)
    }

    fn hosts(n: usize) -> Vec<HostView> {
        (0..n).map(|_| HostView::new(HostState::default(), false)).collect()
    }

    /// A generator that always returns `v` (0: every `enforcing_*` > 0 passes, no jitter).
    fn fixed(v: u64) -> impl FnMut() -> u64 {
        move || v
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ejects(actions: &[Action]) -> Vec<(usize, EjectionType, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Eject { host, kind, enforced, .. } => Some((*host, *kind, *enforced)),
                _ => None,
            })
            .collect()
    }

    fn unejects(actions: &[Action]) -> Vec<usize> {
        actions.iter().filter_map(|a| if let Action::Uneject { host, .. } = a { Some(*host) } else { None }).collect()
    }

    fn th(s: &Settings) -> impl Fn(Consecutive) -> u64 + '_ {
        move |c| s.threshold(c)
    }

    #[test]
    fn monitor_reports_each_crossing_once() {
        let s = Settings { consecutive_5xx: 3, consecutive_gateway_failure: 2, ..settings() };
        let m = HostMonitor::default();
        // (status, crossed, pending after)
        let steps: &[(u64, bool, &[Consecutive])] = &[
            (500, false, &[]),
            (503, false, &[]),                                                   // gateway 1, 5xx 2
            (502, true, &[Consecutive::GatewayFailure, Consecutive::Status5xx]), // gateway 2, 5xx 3
            (503, false, &[]), // past the thresholds: no second report
            (200, false, &[]),
            (500, false, &[]),
        ];
        for (i, (status, crossed, pending)) in steps.iter().enumerate() {
            assert_eq!(m.put_http_status(*status, &th(&s)), *crossed, "step {i}");
            assert_eq!(m.take_pending().collect::<Vec<_>>(), *pending, "step {i}");
        }
        assert_eq!(m.consecutive(Consecutive::Status5xx), 1, "the 200 reset it");
        assert_eq!(m.consecutive(Consecutive::GatewayFailure), 0, "a non-gateway 5xx resets the gateway count");
    }

    #[test]
    fn local_origin_errors_map_to_statuses_without_the_split() {
        let s = Settings { consecutive_5xx: 2, consecutive_gateway_failure: 2, ..settings() };
        // (result, code, 5xx count after, gateway count after)
        let cases = [
            (LocalResult::ConnectSuccess, None, 0, 0),
            (LocalResult::ConnectFailed, None, 1, 1),
            (LocalResult::Timeout, None, 1, 1),
            (LocalResult::Timeout, Some(504), 1, 1),
            (LocalResult::Timeout, Some(200), 0, 0),
        ];
        for (result, code, c5xx, gw) in cases {
            let m = HostMonitor::default();
            m.put_local(result, code, false, &th(&s));
            assert_eq!(
                (m.consecutive(Consecutive::Status5xx), m.consecutive(Consecutive::GatewayFailure)),
                (c5xx, gw),
                "{result:?} {code:?}"
            );
            assert_eq!(m.consecutive(Consecutive::LocalOriginFailure), 0);
        }
        let m = HostMonitor::default();
        assert!(!m.put_local(LocalResult::ConnectFailed, None, false, &th(&s)));
        assert!(m.put_local(LocalResult::ConnectFailed, None, false, &th(&s)));
        assert_eq!(m.take_pending().collect::<Vec<_>>(), [Consecutive::GatewayFailure, Consecutive::Status5xx]);
        assert_eq!(m.close_windows(), [Some((0.0, 2)), None]);
    }

    #[test]
    fn split_local_origin_errors_have_their_own_counter_and_rate() {
        let s = Settings { consecutive_local_origin_failure: 2, ..settings() };
        let m = HostMonitor::default();
        assert!(!m.put_local(LocalResult::ConnectFailed, None, true, &th(&s)));
        m.put_local(LocalResult::ConnectSuccess, None, true, &th(&s));
        assert_eq!(m.consecutive(Consecutive::LocalOriginFailure), 0, "a connection resets it");
        assert!(!m.put_local(LocalResult::Timeout, Some(504), true, &th(&s)));
        assert!(m.put_local(LocalResult::ConnectFailed, None, true, &th(&s)));
        assert_eq!(m.take_pending().collect::<Vec<_>>(), [Consecutive::LocalOriginFailure]);
        assert_eq!(m.consecutive(Consecutive::Status5xx), 0, "not counted as 5xx");
        m.put_http_status(200, &th(&s));
        let [ext, local] = m.close_windows();
        assert_eq!(ext, Some((100.0, 1)));
        assert_eq!(local, Some((25.0, 4)));
        assert_eq!(m.close_windows(), [None, None], "a fresh window");
    }

    #[test]
    fn consecutive_5xx_ejects_and_resets_the_counter() {
        let s = Settings { max_ejection_percent: 100, ..settings() };
        let mut d = Detector::new();
        let mut hs = hosts(3);
        let mut actions = Vec::new();
        let now = Instant::now();
        d.on_consecutive_error(&s, now, &mut hs, 1, Consecutive::Status5xx, &mut fixed(0), &mut actions);
        assert_eq!(ejects(&actions), [(1, EjectionType::Consecutive5xx, true)]);
        assert_eq!(actions.last(), Some(&Action::ResetCounter { host: 1, counter: Consecutive::Status5xx }));
        assert!(hs[1].ejected);
        assert_eq!((hs[1].state.num_ejections, hs[1].state.backoff, hs[1].state.last_ejection), (1, 1, Some(now)));
        assert_eq!(d.ejections_active(), 1);
        let t = d.take_tally();
        assert_eq!((t.detected[0], t.enforced[0], t.enforced_total, t.total, t.consecutive_5xx), (1, 1, 1, 1, 1));

        // Already ejected: nothing happens, not even the counter reset.
        actions.clear();
        d.on_consecutive_error(&s, now, &mut hs, 1, Consecutive::Status5xx, &mut fixed(0), &mut actions);
        assert!(actions.is_empty());
        assert_eq!(d.take_tally(), Tally::default());
    }

    #[test]
    fn enforcing_zero_detects_without_ejecting() {
        // (counter, enforcing_* index, enforcing value, rng, enforced)
        let cases = [
            (Consecutive::GatewayFailure, 1, 0, 0, false), // Envoy's default for gateway failures
            (Consecutive::GatewayFailure, 1, 100, 99, true),
            (Consecutive::Status5xx, 0, 0, 0, false),
            (Consecutive::Status5xx, 0, 50, 49, true),
            (Consecutive::Status5xx, 0, 50, 50, false),
            (Consecutive::Status5xx, 0, 50, 149, true), // random % 100
            (Consecutive::LocalOriginFailure, 3, 100, 7, true),
        ];
        for (counter, i, enforcing, roll, enforced) in cases {
            let mut s = Settings { max_ejection_percent: 100, ..settings() };
            s.enforcing[i] = enforcing;
            let (mut d, mut hs, mut actions) = (Detector::new(), hosts(2), Vec::new());
            d.on_consecutive_error(&s, Instant::now(), &mut hs, 0, counter, &mut fixed(roll), &mut actions);
            let kind = counter.ejection_type();
            assert_eq!(ejects(&actions), [(0, kind, enforced)], "{counter:?} {enforcing} {roll}");
            assert_eq!(hs[0].ejected, enforced);
            assert_eq!(d.ejections_active(), u64::from(enforced));
            let t = d.take_tally();
            assert_eq!((t.detected[kind.index()], t.enforced[kind.index()]), (1, u64::from(enforced)));
            // The deprecated `ejections_total` counts 5xx (and success rate) even unenforced.
            assert_eq!(t.total, u64::from(counter == Consecutive::Status5xx));
        }
    }

    #[test]
    fn max_ejection_percent_and_always_eject_one_host() {
        // (hosts, max_ejection_percent, always_eject_one_host, hosts to eject in turn, ejected)
        let cases: &[(usize, u64, bool, usize, usize)] = &[
            (3, 10, false, 1, 0), // Envoy's default: 33% > 10%, nothing (no "at least one" rule)
            (3, 10, true, 3, 1),  // ... unless always_eject_one_host: the first one only
            (10, 10, false, 3, 1),
            (10, 20, false, 3, 2),
            (4, 50, false, 4, 2),
            (4, 100, false, 4, 4),
            (5, 0, false, 2, 0),
            (5, 0, true, 2, 1),
        ];
        for &(n, pct, one, attempts, ejected) in cases {
            let s = Settings { max_ejection_percent: pct, always_eject_one_host: one, ..settings() };
            let (mut d, mut hs, mut actions) = (Detector::new(), hosts(n), Vec::new());
            for i in 0..attempts {
                d.on_consecutive_error(
                    &s,
                    Instant::now(),
                    &mut hs,
                    i,
                    Consecutive::Status5xx,
                    &mut fixed(0),
                    &mut actions,
                );
            }
            let case = format!("{n} hosts, {pct}%, always_eject_one_host {one}");
            assert_eq!(hs.iter().filter(|h| h.ejected).count(), ejected, "{case}");
            let t = d.take_tally();
            assert_eq!(t.overflow as usize, attempts - ejected, "{case}");
            assert_eq!(t.detected[0] as usize, attempts, "{case}");
            assert_eq!(t.total as usize, ejected, "{case}: overflows are not in ejections_total");
        }
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let s = Settings {
            max_ejection_percent: 100,
            base_ejection_time_ms: 1000,
            max_ejection_time_ms: 3000,
            interval_ms: 100,
            ..settings()
        };
        let (mut d, mut hs) = (Detector::new(), hosts(1));
        let t0 = Instant::now();
        let mut now = t0;
        // Eject, then find when the sweep lets the host back: 1s, 2s, 3s, 3s (capped).
        for (round, expected) in [1000u64, 2000, 3000, 3000].into_iter().enumerate() {
            let mut actions = Vec::new();
            d.on_consecutive_error(&s, now, &mut hs, 0, Consecutive::Status5xx, &mut fixed(0), &mut actions);
            let ejected_at = now;
            let backoff = hs[0].state.backoff;
            loop {
                now += ms(100);
                actions.clear();
                d.on_interval(&s, now, &mut hs, &mut fixed(0), &mut actions);
                if !unejects(&actions).is_empty() {
                    break;
                }
                assert!(now - ejected_at < ms(10_000), "round {round}: never un-ejected");
            }
            assert_eq!(now - ejected_at, ms(expected), "round {round} (backoff {backoff})");
            assert!(!hs[0].ejected);
            // The un-ejection resets every consecutive counter.
            let resets = actions.iter().filter(|a| matches!(a, Action::ResetCounter { .. })).count();
            assert_eq!(resets, 3);
        }
        // Capped: the backoff stops rising once base * backoff reaches max + base.
        assert_eq!(hs[0].state.backoff, 4);
        assert_eq!(hs[0].state.num_ejections, 4);
        assert_eq!(d.ejections_active(), 0);
    }

    #[test]
    fn backoff_decays_while_the_host_stays_healthy() {
        let s = Settings { max_ejection_percent: 100, base_ejection_time_ms: 1000, interval_ms: 1000, ..settings() };
        let (mut d, mut hs, mut actions) = (Detector::new(), hosts(1), Vec::new());
        let mut now = Instant::now();
        for _ in 0..2 {
            d.on_consecutive_error(&s, now, &mut hs, 0, Consecutive::Status5xx, &mut fixed(0), &mut actions);
            while hs[0].ejected {
                now += ms(1000);
                d.on_interval(&s, now, &mut hs, &mut fixed(0), &mut actions);
            }
        }
        assert_eq!(hs[0].state.backoff, 2);
        // The sweep that un-ejected it does not count; each later one lowers it by one.
        now += ms(1000);
        d.on_interval(&s, now, &mut hs, &mut fixed(0), &mut actions);
        assert_eq!(hs[0].state.backoff, 1);
        now += ms(1000);
        d.on_interval(&s, now, &mut hs, &mut fixed(0), &mut actions);
        now += ms(1000);
        d.on_interval(&s, now, &mut hs, &mut fixed(0), &mut actions);
        assert_eq!(hs[0].state.backoff, 0);
        // So the next ejection is a first one again: base time.
        d.on_consecutive_error(&s, now, &mut hs, 0, Consecutive::Status5xx, &mut fixed(0), &mut actions);
        assert_eq!(hs[0].state.backoff, 1);
        assert_eq!(hs[0].state.num_ejections, 3, "num_ejections never decays");
    }

    #[test]
    fn jitter_extends_the_ejection() {
        let s = Settings {
            max_ejection_percent: 100,
            base_ejection_time_ms: 1000,
            max_ejection_time_jitter_ms: 500,
            ..settings()
        };
        let (mut d, mut hs, mut actions) = (Detector::new(), hosts(1), Vec::new());
        let t0 = Instant::now();
        // enforce roll 0, then jitter 1234 % 501 = 232 ms.
        let mut rolls = [0u64, 1234].into_iter();
        d.on_consecutive_error(
            &s,
            t0,
            &mut hs,
            0,
            Consecutive::Status5xx,
            &mut || rolls.next().unwrap_or(0),
            &mut actions,
        );
        assert_eq!(hs[0].state.jitter, ms(232));
        d.on_interval(&s, t0 + ms(1231), &mut hs, &mut fixed(0), &mut actions);
        assert!(hs[0].ejected);
        d.on_interval(&s, t0 + ms(1232), &mut hs, &mut fixed(0), &mut actions);
        assert!(!hs[0].ejected);
    }

    #[test]
    fn success_rate_threshold_math() {
        // (rates, factor, average, threshold)
        let cases: &[(&[f64], f64, f64, f64)] = &[
            (&[50.0, 100.0, 100.0, 100.0, 100.0], 1.9, 90.0, 52.0),
            (&[0.0, 100.0, 100.0, 100.0, 100.0], 1.9, 80.0, 4.0),
            (&[100.0; 5], 1.9, 100.0, 100.0),
            (&[90.0, 95.0, 100.0], 1.0, 95.0, 95.0 - (50.0f64 / 3.0).sqrt()),
        ];
        for (rates, factor, avg, threshold) in cases {
            let n = success_rate_ejection_threshold(rates, *factor);
            assert!((n.average - avg).abs() < 1e-9, "{rates:?}");
            assert!((n.ejection_threshold - threshold).abs() < 1e-9, "{rates:?}: {}", n.ejection_threshold);
        }
        assert_eq!(success_rate_ejection_threshold(&[], 1.9), SuccessRateNums::default());
    }

    /// Hosts with these (success %, volume) windows on the external monitor.
    fn with_windows(w: &[(f64, u64)]) -> Vec<HostView> {
        w.iter()
            .map(|&(r, v)| HostView { window: [Some((r, v)), None], ..HostView::new(HostState::default(), false) })
            .collect()
    }

    #[test]
    fn success_rate_ejection() {
        let s = Settings { max_ejection_percent: 100, success_rate_request_volume: 10, ..settings() };
        let (mut d, mut actions) = (Detector::new(), Vec::new());
        let mut hs = with_windows(&[(100.0, 20), (100.0, 20), (100.0, 20), (100.0, 20), (0.0, 20)]);
        d.on_interval(&s, Instant::now(), &mut hs, &mut fixed(0), &mut actions);
        let nums = d.success_rate_nums(Origin::External);
        assert_eq!((nums.average, nums.ejection_threshold), (80.0, 4.0));
        assert_eq!(d.success_rate_nums(Origin::Local), SuccessRateNums::default());
        // Failure percentage detects it too (volume 20 < 50: not here).
        assert_eq!(ejects(&actions), [(4, EjectionType::SuccessRate, true)]);
        match &actions[0] {
            Action::Eject { success_rate, .. } => assert_eq!(*success_rate, Some((0.0, Some(nums)))),
            other => panic!("{other:?}"),
        }
        assert_eq!(hs.iter().map(|h| h.state.success_rate[0]).collect::<Vec<_>>(), [100.0, 100.0, 100.0, 100.0, 0.0]);
        let t = d.take_tally();
        assert_eq!((t.detected[2], t.enforced[2], t.success_rate, t.total), (1, 1, 1, 1));

        // Too few hosts with volume: no statistics, rates of hosts with enough volume shown.
        let (mut d, mut actions) = (Detector::new(), Vec::new());
        let mut hs = with_windows(&[(100.0, 20), (100.0, 20), (100.0, 20), (100.0, 9), (0.0, 20)]);
        d.on_interval(&s, Instant::now(), &mut hs, &mut fixed(0), &mut actions);
        assert!(actions.is_empty());
        assert_eq!(d.success_rate_nums(Origin::External), SuccessRateNums::default());
        assert_eq!(hs[3].state.success_rate[0], -1.0, "below the volume");
        assert_eq!(hs[4].state.success_rate[0], 0.0);
    }

    #[test]
    fn failure_percentage_ejection() {
        // (failure_percentage_threshold, enforcing_failure_percentage, host rates, ejected)
        type Case = (u64, u64, [f64; 5], &'static [(usize, bool)]);
        let cases: &[Case] = &[
            (85, 0, [100.0, 100.0, 100.0, 100.0, 10.0], &[(4, false)]), // Envoy's default: detect only
            (85, 100, [100.0, 100.0, 100.0, 100.0, 15.0], &[(4, true)]), // 85% failures: >= threshold
            (85, 100, [100.0, 100.0, 100.0, 100.0, 16.0], &[]),
            (50, 100, [50.0, 40.0, 60.0, 100.0, 100.0], &[(0, true), (1, true)]),
        ];
        for (threshold, enforcing, rates, expected) in cases {
            let mut s = Settings {
                max_ejection_percent: 100,
                failure_percentage_threshold: *threshold,
                success_rate_minimum_hosts: 100, // only failure percentage
                ..settings()
            };
            s.enforcing[EjectionType::FailurePercentage.index()] = *enforcing;
            let (mut d, mut actions) = (Detector::new(), Vec::new());
            let mut hs = with_windows(&rates.map(|r| (r, 50)));
            d.on_interval(&s, Instant::now(), &mut hs, &mut fixed(0), &mut actions);
            let got: Vec<(usize, bool)> = ejects(&actions).into_iter().map(|(h, _, e)| (h, e)).collect();
            assert_eq!(got, *expected, "{threshold} {enforcing} {rates:?}");
            assert!(ejects(&actions).iter().all(|e| e.1 == EjectionType::FailurePercentage));
        }
    }

    #[test]
    fn success_rate_and_failure_percentage_eject_the_same_host_twice() {
        // Envoy 1.40 does this (checked against it): ejections_active 2, num_ejections 2.
        let mut s = Settings {
            max_ejection_percent: 100,
            success_rate_request_volume: 10,
            failure_percentage_request_volume: 10,
            ..settings()
        };
        s.enforcing[EjectionType::FailurePercentage.index()] = 100;
        let (mut d, mut actions) = (Detector::new(), Vec::new());
        let mut hs = with_windows(&[(100.0, 12), (100.0, 12), (100.0, 12), (100.0, 12), (0.0, 12)]);
        d.on_interval(&s, Instant::now(), &mut hs, &mut fixed(0), &mut actions);
        assert_eq!(
            ejects(&actions),
            [(4, EjectionType::SuccessRate, true), (4, EjectionType::FailurePercentage, true)]
        );
        assert_eq!((d.ejections_active(), hs[4].state.num_ejections, hs[4].state.backoff), (2, 2, 2));
        let t = d.take_tally();
        assert_eq!((t.enforced_total, t.total), (2, 1));
    }

    #[test]
    fn ejected_hosts_sit_out_the_statistics() {
        let s = Settings { max_ejection_percent: 100, success_rate_request_volume: 10, ..settings() };
        let (mut d, mut actions) = (Detector::new(), Vec::new());
        let mut hs = with_windows(&[(100.0, 20), (100.0, 20), (100.0, 20), (100.0, 20), (100.0, 20), (0.0, 20)]);
        d.on_consecutive_error(&s, Instant::now(), &mut hs, 5, Consecutive::Status5xx, &mut fixed(0), &mut actions);
        actions.clear();
        d.on_interval(&s, Instant::now(), &mut hs, &mut fixed(0), &mut actions);
        assert!(ejects(&actions).is_empty());
        assert_eq!(d.success_rate_nums(Origin::External).average, 100.0);
        assert_eq!(hs[5].state.success_rate[0], -1.0);
    }

    #[test]
    fn membership_changes_move_ejections_active() {
        let mut d = Detector::new();
        d.host_added(true);
        d.host_added(false);
        assert_eq!(d.ejections_active(), 1);
        d.host_removed(true);
        d.host_removed(true);
        assert_eq!(d.ejections_active(), 0);
    }

    #[test]
    fn active_health_check_unejects() {
        let s = Settings { max_ejection_percent: 100, ..settings() };
        let (mut d, mut hs, mut actions) = (Detector::new(), hosts(2), Vec::new());
        let now = Instant::now();
        d.on_consecutive_error(&s, now, &mut hs, 0, Consecutive::Status5xx, &mut fixed(0), &mut actions);
        actions.clear();
        d.on_active_health_check_success(now, &mut hs, 0, &mut actions);
        assert_eq!(unejects(&actions), [0]);
        assert!(!hs[0].ejected);
        assert_eq!(d.ejections_active(), 0);
        actions.clear();
        d.on_active_health_check_success(now, &mut hs, 1, &mut actions);
        assert!(actions.is_empty(), "not ejected: nothing to do");
    }

    #[test]
    fn runtime_overrides_settings() {
        let s = Settings::resolve(&model::OutlierDetection::default(), &|key, v| match key {
            "outlier_detection.consecutive_5xx" => 2,
            "outlier_detection.enforcing_consecutive_gateway_failure" => 100,
            "outlier_detection.max_ejection_percent" => 250,
            _ => v,
        });
        assert_eq!(s.consecutive_5xx, 2);
        assert_eq!(s.enforcing[EjectionType::ConsecutiveGatewayFailure.index()], 100);
        assert_eq!(s.max_ejection_percent, 100, "capped");
        assert_eq!((s.interval_ms, s.base_ejection_time_ms, s.max_ejection_time_ms), (10_000, 30_000, 300_000));
        assert_eq!(s.enforcing, [100, 100, 100, 100, 100, 0, 0]);
    }
}
