//! Active health checking's state machine, as Envoy's `HealthCheckerImplBase` /
//! `ActiveHealthCheckSession`: what one check result does to a host's active-HC flags and to
//! the `health_check.*` stats, and when the next check runs. Pure: no I/O, no clock, no
//! randomness of its own (the caller passes them in), so it is tested table by table; the
//! probes and the tasks that run them are in `upstream::health_check`.
//!
//! Envoy's rules, which are not what the field names suggest:
//! - only *network* failures (connect error, reset, timeout) and *retriable* HTTP statuses
//!   count towards `unhealthy_threshold`; any other failed check (an unexpected HTTP status,
//!   a gRPC answer other than SERVING) fails the host at once;
//! - the first check of a host decides alone: one success makes a new host healthy whatever
//!   `healthy_threshold` says;
//! - the success counter is not reset when a host turns healthy, only by a failure.

use std::time::{Duration, Instant};

use pinion_xds::model::HealthCheck;

use super::host::HealthFlags;

/// Envoy's `HealthTransition`: what a result did to the host's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    Unchanged,
    /// The host changed (healthy <-> unhealthy, degraded, or left `pending_active_hc`): the
    /// host set is rebuilt.
    Changed,
    /// On its way to a change, below a threshold: the edge intervals apply.
    ChangePending,
}

/// Envoy's `HealthCheckFailureType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The host answered, and the answer is a failure (status, gRPC status, service name).
    Active,
    /// Connecting, or the connection or stream, failed.
    Network,
    /// The check did not finish within `timeout`.
    NetworkTimeout,
    /// Reported from outside the checker (e.g. `x-envoy-immediate-health-check-fail` on
    /// routed traffic).
    Passive,
}

impl Failure {
    fn is_network(self) -> bool {
        matches!(self, Failure::Network | Failure::NetworkTimeout)
    }
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// Passed; `degraded`: the answer carried `x-envoy-degraded`.
    Success {
        /// `x-envoy-degraded` was present.
        degraded: bool,
    },
    /// Failed.
    Failure {
        /// How.
        kind: Failure,
        /// An HTTP status in `retriable_statuses`: counts towards the threshold like a network
        /// failure.
        retriable: bool,
        /// The failed answer carried `x-envoy-immediate-health-check-fail`: the host is
        /// excluded from load balancing until it passes again.
        exclude: bool,
    },
}

/// What one result changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The host's flags after the result (only [`HealthFlags::ACTIVE_HC`] bits differ).
    pub flags: HealthFlags,
    /// Envoy's transition (decides the next interval).
    pub transition: Transition,
    /// `health_check.success` / `failure` / `network_failure` / `passive_failure` to add.
    pub counts: Counts,
    /// Change of the `health_check.healthy` gauge (the host left or joined failed active HC).
    pub healthy_delta: i64,
    /// Change of the `health_check.degraded` gauge: +1 when the host becomes degraded, and
    /// nothing when it stops being degraded. That is Envoy 1.40's accounting (`handleSuccess`
    /// clears `DEGRADED_ACTIVE_HC` without `decDegraded()`); the gauge only goes down when
    /// the session of a degraded host ends. Kept, so the gauge reads as Envoy's.
    pub degraded_delta: i64,
}

/// Counter increments of one result (0 or 1 each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `health_check.success`.
    pub success: u64,
    /// `health_check.failure`.
    pub failure: u64,
    /// `health_check.network_failure`.
    pub network_failure: u64,
    /// `health_check.passive_failure`.
    pub passive_failure: u64,
}

/// What a host adds to the `health_check.healthy` and `health_check.degraded` gauges when
/// its session starts, and takes back when it ends: not failing active HC, degraded by
/// active HC (Envoy's session constructor and `onDeferredDeleteBase`).
pub fn gauge_contribution(flags: HealthFlags) -> (i64, i64) {
    (
        i64::from(!flags.contains(HealthFlags::FAILED_ACTIVE_HC)),
        i64::from(flags.contains(HealthFlags::DEGRADED_ACTIVE_HC)),
    )
}

/// One host's checking state (Envoy's `ActiveHealthCheckSession` counters).
#[derive(Debug, Clone)]
pub struct Session {
    num_healthy: u32,
    num_unhealthy: u32,
    first_check: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session { num_healthy: 0, num_unhealthy: 0, first_check: true }
    }
}

/// `PENDING_ACTIVE_HC` goes with the first result, whatever it is, and that is a change.
fn clear_pending(flags: &mut HealthFlags, t: Transition) -> Transition {
    if flags.contains(HealthFlags::PENDING_ACTIVE_HC) {
        flags.remove(HealthFlags::PENDING_ACTIVE_HC);
        return Transition::Changed;
    }
    t
}

impl Session {
    /// A host no check has answered yet.
    pub fn new() -> Self {
        Session::default()
    }

    /// Whether no result has been recorded yet.
    pub fn is_first_check(&self) -> bool {
        self.first_check
    }

    /// Apply one result to a host with `flags` (Envoy's `handleSuccess` / `setUnhealthy`).
    pub fn record(&mut self, cfg: &HealthCheck, flags: HealthFlags, result: CheckResult) -> Outcome {
        let before = flags;
        let mut flags = flags;
        let mut counts = Counts::default();
        let transition = match result {
            CheckResult::Success { degraded } => {
                self.num_unhealthy = 0;
                let mut t = Transition::Unchanged;
                if flags.contains(HealthFlags::FAILED_ACTIVE_HC) {
                    // The first result ever turns a host healthy at once (Envoy: faster
                    // startup); otherwise `healthy_threshold` successes in a row.
                    let reached = self.first_check || {
                        self.num_healthy = self.num_healthy.wrapping_add(1);
                        self.num_healthy == cfg.healthy_threshold
                    };
                    if reached {
                        flags.remove(
                            HealthFlags::ACTIVE_HC_TIMEOUT
                                | HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL
                                | HealthFlags::FAILED_ACTIVE_HC,
                        );
                        t = Transition::Changed;
                    } else {
                        t = Transition::ChangePending;
                    }
                }
                t = clear_pending(&mut flags, t);
                if degraded != flags.contains(HealthFlags::DEGRADED_ACTIVE_HC) {
                    flags.set(HealthFlags::DEGRADED_ACTIVE_HC, degraded);
                    if t == Transition::Unchanged {
                        t = Transition::Changed;
                    }
                }
                counts.success = 1;
                t
            }
            CheckResult::Failure { kind, retriable, exclude } => {
                if exclude {
                    flags.insert(HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL);
                }
                self.num_healthy = 0;
                let mut t = Transition::Unchanged;
                if !flags.contains(HealthFlags::FAILED_ACTIVE_HC) {
                    let reached = (!kind.is_network() && !retriable) || {
                        self.num_unhealthy = self.num_unhealthy.wrapping_add(1);
                        self.num_unhealthy == cfg.unhealthy_threshold
                    };
                    if reached {
                        flags.insert(HealthFlags::FAILED_ACTIVE_HC);
                        t = Transition::Changed;
                    } else {
                        t = Transition::ChangePending;
                    }
                }
                // Timeouts of a failed host show as `/active_hc_timeout`; any other failure
                // clears it, so the flag follows the latest reason.
                let timeout = kind == Failure::NetworkTimeout && flags.contains(HealthFlags::FAILED_ACTIVE_HC);
                flags.set(HealthFlags::ACTIVE_HC_TIMEOUT, timeout);
                t = clear_pending(&mut flags, t);
                counts.failure = 1;
                counts.network_failure = u64::from(kind.is_network());
                counts.passive_failure = u64::from(kind == Failure::Passive);
                t
            }
        };
        self.first_check = false;
        let failed = |f: HealthFlags| f.contains(HealthFlags::FAILED_ACTIVE_HC);
        let healthy_delta = i64::from(failed(before)) - i64::from(failed(flags));
        let degraded = |f: HealthFlags| f.contains(HealthFlags::DEGRADED_ACTIVE_HC);
        let degraded_delta = i64::from(degraded(flags) && !degraded(before));
        Outcome { flags, transition, counts, healthy_delta, degraded_delta }
    }
}

/// Envoy's `intervalWithJitter`: `base` plus a random part of `interval_jitter_percent` of it
/// plus a random part of `interval_jitter`, at least 1 ms. `rand` gives uniform `u64`s.
pub fn with_jitter(cfg: &HealthCheck, base: Duration, jitter: Duration, rand: &mut dyn FnMut() -> u64) -> Duration {
    let mut ms = base.as_millis() as u64;
    let percent_mod = u64::from(cfg.interval_jitter_percent) * ms / 100;
    if percent_mod > 0 {
        ms += rand() % percent_mod;
    }
    let jitter_ms = jitter.as_millis() as u64;
    if jitter_ms > 0 {
        ms += rand() % jitter_ms;
    }
    Duration::from_millis(ms.max(1))
}

/// Delay before a new host's first check: none, or a random part of `initial_jitter`.
pub fn initial_delay(cfg: &HealthCheck, rand: &mut dyn FnMut() -> u64) -> Duration {
    if cfg.initial_jitter.is_zero() {
        Duration::ZERO
    } else {
        with_jitter(cfg, Duration::ZERO, cfg.initial_jitter, rand)
    }
}

/// Envoy's `interval(state, changed_state)`: the delay after a check that passed (`passed`)
/// or failed, given its transition and whether the cluster has had upstream traffic. Without
/// traffic, `no_traffic_interval` (`no_traffic_healthy_interval` for a steady pass);
/// with traffic, `interval` / `unhealthy_interval`, or their edge variants while a threshold
/// is being approached.
pub fn interval(
    cfg: &HealthCheck,
    passed: bool,
    transition: Transition,
    has_traffic: bool,
    rand: &mut dyn FnMut() -> u64,
) -> Duration {
    let pending = transition == Transition::ChangePending;
    let base = match (has_traffic, passed, pending) {
        (true, false, true) => cfg.unhealthy_edge_interval,
        (true, false, false) => cfg.unhealthy_interval,
        (true, true, true) => cfg.healthy_edge_interval,
        (true, true, false) => cfg.interval,
        (false, true, false) => cfg.no_traffic_healthy_interval,
        (false, _, _) => cfg.no_traffic_interval,
    };
    with_jitter(cfg, base, cfg.interval_jitter, rand)
}

/// When the next check of a host runs, for a check that finished at `now`.
pub fn next_check_at(now: Instant, delay: Duration) -> Instant {
    now + delay
}

#[cfg(test)]
mod tests {
    use pinion_xds::model::{HealthChecker, TcpHealthCheck};

    use super::*;

    const OK: CheckResult = CheckResult::Success { degraded: false };
    const DEGRADED: CheckResult = CheckResult::Success { degraded: true };
    const ACTIVE: CheckResult = CheckResult::Failure { kind: Failure::Active, retriable: false, exclude: false };
    const RETRIABLE: CheckResult = CheckResult::Failure { kind: Failure::Active, retriable: true, exclude: false };
    const EXCLUDE: CheckResult = CheckResult::Failure { kind: Failure::Active, retriable: false, exclude: true };
    const NET: CheckResult = CheckResult::Failure { kind: Failure::Network, retriable: false, exclude: false };
    const TIMEOUT: CheckResult =
        CheckResult::Failure { kind: Failure::NetworkTimeout, retriable: false, exclude: false };
    const PASSIVE: CheckResult = CheckResult::Failure { kind: Failure::Passive, retriable: false, exclude: false };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(unhealthy: u32, healthy: u32) -> HealthCheck {
        HealthCheck {
            timeout: ms(1000),
            interval: ms(100),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            reuse_connection: true,
            no_traffic_interval: ms(60_000),
            no_traffic_healthy_interval: ms(50_000),
            unhealthy_interval: ms(200),
            unhealthy_edge_interval: ms(300),
            healthy_edge_interval: ms(400),
            always_log_health_check_failures: false,
            checker: HealthChecker::Tcp(TcpHealthCheck::default()),
        }
    }

    const F: HealthFlags = HealthFlags::FAILED_ACTIVE_HC;
    const NONE: HealthFlags = HealthFlags::empty();

    /// Run `results` from `start` flags; returns (flags, transition) after each.
    fn run(c: &HealthCheck, start: HealthFlags, results: &[CheckResult]) -> Vec<(HealthFlags, Transition)> {
        let mut s = Session::new();
        let mut flags = start;
        results
            .iter()
            .map(|r| {
                let o = s.record(c, flags, *r);
                flags = o.flags;
                (flags, o.transition)
            })
            .collect()
    }

    #[test]
    fn thresholds_and_transitions_match_envoy() {
        use Transition::{ChangePending as P, Changed as C, Unchanged as U};
        // (name, unhealthy_threshold, healthy_threshold, start flags, results, expected after each)
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, u32, u32, HealthFlags, &[CheckResult], &[(HealthFlags, Transition)])] = &[
            ("new host: first success decides alone", 3, 3, F, &[OK, OK], &[(NONE, C), (NONE, U)]),
            ("new host: first network failure keeps it failed", 2, 2, F, &[NET], &[(F, U)]),
            (
                "new host: failed, then healthy_threshold successes",
                2,
                2,
                F,
                &[NET, OK, OK],
                &[(F, U), (F, P), (NONE, C)],
            ),
            ("active failure is immediate", 3, 1, NONE, &[ACTIVE], &[(F, C)]),
            ("network failures count to the threshold", 3, 1, NONE, &[NET, NET, NET], &[(NONE, P), (NONE, P), (F, C)]),
            (
                "retriable statuses count like network failures",
                2,
                1,
                NONE,
                &[RETRIABLE, RETRIABLE],
                &[(NONE, P), (F, C)],
            ),
            (
                "a success resets the failure count",
                2,
                1,
                NONE,
                &[NET, OK, NET, NET],
                &[(NONE, P), (NONE, U), (NONE, P), (F, C)],
            ),
            (
                "a failure resets the success count",
                1,
                2,
                F,
                &[NET, OK, NET, OK, OK],
                &[(F, U), (F, P), (F, U), (F, P), (NONE, C)],
            ),
            ("passive failure is immediate", 5, 1, NONE, &[PASSIVE], &[(F, C)]),
            (
                "timeouts mark the failed host; other failures clear it",
                1,
                1,
                NONE,
                &[TIMEOUT, ACTIVE, TIMEOUT, OK],
                &[
                    (F.union(HealthFlags::ACTIVE_HC_TIMEOUT), C),
                    (F, U),
                    (F.union(HealthFlags::ACTIVE_HC_TIMEOUT), U),
                    (NONE, C),
                ],
            ),
            ("a timeout below the threshold sets no timeout flag", 2, 1, NONE, &[TIMEOUT], &[(NONE, P)]),
            (
                "immediate-fail header excludes until healthy again",
                1,
                2,
                NONE,
                &[EXCLUDE, OK, OK],
                &[
                    (F.union(HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL), C),
                    (F.union(HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL), P),
                    (NONE, C),
                ],
            ),
            (
                "degraded answers toggle the degraded flag",
                1,
                1,
                NONE,
                &[DEGRADED, DEGRADED, OK],
                &[(HealthFlags::DEGRADED_ACTIVE_HC, C), (HealthFlags::DEGRADED_ACTIVE_HC, U), (NONE, C)],
            ),
            (
                "degraded stays through a failure",
                1,
                1,
                HealthFlags::DEGRADED_ACTIVE_HC,
                &[ACTIVE],
                &[(F.union(HealthFlags::DEGRADED_ACTIVE_HC), C)],
            ),
            (
                "pending_active_hc goes with the first result, as a change",
                1,
                1,
                F.union(HealthFlags::PENDING_ACTIVE_HC),
                &[NET],
                &[(F, C)],
            ),
            (
                "eds flags are left alone",
                1,
                1,
                HealthFlags::FAILED_EDS_HEALTH.union(F),
                &[OK],
                &[(HealthFlags::FAILED_EDS_HEALTH, C)],
            ),
        ];
        for (name, unhealthy, healthy, start, results, want) in cases {
            let got = run(&cfg(*unhealthy, *healthy), *start, results);
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn counters_per_result() {
        let c = cfg(1, 1);
        let cases = [
            (OK, Counts { success: 1, ..Counts::default() }),
            (ACTIVE, Counts { failure: 1, ..Counts::default() }),
            (NET, Counts { failure: 1, network_failure: 1, ..Counts::default() }),
            (TIMEOUT, Counts { failure: 1, network_failure: 1, ..Counts::default() }),
            (PASSIVE, Counts { failure: 1, passive_failure: 1, ..Counts::default() }),
        ];
        for (r, want) in cases {
            assert_eq!(Session::new().record(&c, NONE, r).counts, want, "{r:?}");
        }
    }

    #[test]
    fn gauge_deltas_follow_envoy() {
        let c = cfg(1, 1);
        let delta = |flags, r| {
            let o = Session::new().record(&c, flags, r);
            (o.healthy_delta, o.degraded_delta)
        };
        assert_eq!(delta(F, OK), (1, 0));
        assert_eq!(delta(NONE, ACTIVE), (-1, 0));
        assert_eq!(delta(NONE, OK), (0, 0));
        assert_eq!(delta(F, DEGRADED), (1, 1));
        // Envoy 1.40 does not decrement the degraded gauge when a host stops being degraded.
        assert_eq!(delta(HealthFlags::DEGRADED_ACTIVE_HC, OK), (0, 0));
    }

    #[test]
    fn gauges_follow_flags() {
        assert_eq!(gauge_contribution(NONE), (1, 0));
        assert_eq!(gauge_contribution(F), (0, 0));
        assert_eq!(gauge_contribution(HealthFlags::DEGRADED_ACTIVE_HC), (1, 1));
    }

    #[test]
    fn intervals_match_envoy() {
        use Transition::{ChangePending as P, Changed as C, Unchanged as U};
        let c = cfg(1, 1);
        // (passed, transition, traffic, expected ms)
        let cases = [
            (true, U, true, 100),
            (true, C, true, 100),
            (true, P, true, 400),
            (false, U, true, 200),
            (false, C, true, 200),
            (false, P, true, 300),
            (true, U, false, 50_000),
            (true, C, false, 50_000),
            (true, P, false, 60_000),
            (false, U, false, 60_000),
            (false, P, false, 60_000),
        ];
        let mut never = || panic!("no jitter configured");
        for (passed, t, traffic, want) in cases {
            assert_eq!(interval(&c, passed, t, traffic, &mut never), ms(want), "{passed} {t:?} {traffic}");
        }
    }

    #[test]
    fn jitter_is_added_within_bounds() {
        let mut c = cfg(1, 1);
        c.interval_jitter = ms(50);
        c.interval_jitter_percent = 10;
        // 100 ms base: up to 10 ms of percent jitter, then up to 50 ms of jitter.
        let mut vals = [7u64, 33].into_iter();
        let mut rand = || vals.next().unwrap();
        assert_eq!(interval(&c, true, Transition::Unchanged, true, &mut rand), ms(100 + 7 + 33));
        let mut big = || u64::MAX;
        let d = interval(&c, true, Transition::Unchanged, true, &mut big);
        assert!(d >= ms(100) && d < ms(160), "{d:?}");
        c.initial_jitter = ms(20);
        let mut five = || 5;
        assert_eq!(initial_delay(&c, &mut five), ms(5));
        c.initial_jitter = Duration::ZERO;
        assert_eq!(initial_delay(&c, &mut five), Duration::ZERO);
        // Never 0: Envoy forces at least 1 ms.
        c.interval = Duration::ZERO;
        c.interval_jitter = Duration::ZERO;
        c.interval_jitter_percent = 0;
        assert_eq!(interval(&c, true, Transition::Unchanged, true, &mut five), ms(1));
    }

    /// A host that goes down and comes back, checked on a simulated clock: when each check
    /// runs follows from the transitions (edge intervals while a threshold is approached).
    #[test]
    fn schedule_on_a_simulated_clock() {
        let c = cfg(2, 2);
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Session::new();
        let mut flags = F;
        let mut times = Vec::new();
        let mut never = || 0;
        for r in [OK, OK, NET, NET, NET, OK, OK, OK] {
            times.push((now - t0).as_millis() as u64);
            let o = s.record(&c, flags, r);
            flags = o.flags;
            let passed = matches!(r, CheckResult::Success { .. });
            now = next_check_at(now, interval(&c, passed, o.transition, true, &mut never));
        }
        // ok(100) ok(100) net pending(300) net->failed(200) net(200) ok pending(400) ok->healthy(100) ok
        assert_eq!(times, [0, 100, 200, 500, 700, 900, 1300, 1400]);
        assert_eq!(flags, NONE);
    }
}
