//! Envoy's per-cluster stats (`cluster.<name>.*`). Their own module so the load balancers can
//! count `upstream_cx_none_healthy` / `lb_healthy_panic` without depending on `Cluster`.

use std::sync::{Arc, OnceLock};

use crate::stats::{Counter, Gauge, Prom, Store};

/// Names of a cluster's stats after `cluster.<name>.`, in the order of their cells; `true`
/// marks gauges.
const CLUSTER_STATS: &[(&str, bool)] = &[
    ("upstream_cx_total", false),
    ("upstream_cx_active", true),
    ("upstream_cx_http1_total", false),
    ("upstream_cx_http2_total", false),
    ("upstream_cx_connect_fail", false),
    ("upstream_cx_connect_timeout", false),
    ("upstream_cx_none_healthy", false),
    ("upstream_cx_destroy", false),
    ("upstream_cx_rx_bytes_total", false),
    ("upstream_cx_tx_bytes_total", false),
    ("upstream_rq_total", false),
    ("upstream_rq_active", true),
    ("upstream_rq_completed", false),
    ("upstream_rq_timeout", false),
    ("upstream_rq_pending_total", false),
    ("upstream_rq_pending_failure_eject", false),
    ("upstream_rq_rx_reset", false),
    ("upstream_rq_1xx", false),
    ("upstream_rq_2xx", false),
    ("upstream_rq_3xx", false),
    ("upstream_rq_4xx", false),
    ("upstream_rq_5xx", false),
    ("membership_total", true),
    ("membership_healthy", true),
    ("lb_healthy_panic", false),
    ("upstream_rq_pending_active", true),
    ("upstream_rq_pending_overflow", false),
    ("upstream_rq_active_overflow", false),
    ("upstream_rq_cancelled", false),
    ("upstream_cx_overflow", false),
    ("upstream_cx_pool_overflow", false),
    ("upstream_rq_retry_overflow", false),
    ("membership_degraded", true),
    ("membership_excluded", true),
    ("upstream_rq_retry", false),
    ("upstream_rq_retry_success", false),
    ("upstream_rq_retry_limit_exceeded", false),
    ("upstream_rq_retry_backoff_exponential", false),
    ("upstream_rq_retry_backoff_ratelimited", false),
    ("upstream_rq_per_try_timeout", false),
    ("upstream_rq_per_try_idle_timeout", false),
    ("retry_or_shadow_abandoned", false),
    ("upstream_rq_max_duration_reached", false),
];

/// Envoy's cluster stats (`cluster.<name>.*`).
#[derive(Clone)]
pub struct ClusterStats {
    /// `upstream_cx_total`.
    pub upstream_cx_total: Counter,
    /// `upstream_cx_active`.
    pub upstream_cx_active: Gauge,
    /// `upstream_cx_http1_total`.
    pub upstream_cx_http1_total: Counter,
    /// `upstream_cx_http2_total`.
    pub upstream_cx_http2_total: Counter,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Counter,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Counter,
    /// `upstream_cx_none_healthy`.
    pub upstream_cx_none_healthy: Counter,
    /// `upstream_cx_destroy`.
    pub upstream_cx_destroy: Counter,
    /// `upstream_cx_rx_bytes_total`.
    pub upstream_cx_rx_bytes_total: Counter,
    /// `upstream_cx_tx_bytes_total`.
    pub upstream_cx_tx_bytes_total: Counter,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Counter,
    /// `upstream_rq_active`.
    pub upstream_rq_active: Gauge,
    /// `upstream_rq_completed`.
    pub upstream_rq_completed: Counter,
    /// `upstream_rq_timeout`.
    pub upstream_rq_timeout: Counter,
    /// `upstream_rq_pending_total`.
    pub upstream_rq_pending_total: Counter,
    /// `upstream_rq_pending_failure_eject`.
    pub upstream_rq_pending_failure_eject: Counter,
    /// `upstream_rq_rx_reset`.
    pub upstream_rq_rx_reset: Counter,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`.
    pub upstream_rq_xx: [Counter; 5],
    /// `membership_total`.
    pub membership_total: Gauge,
    /// `membership_healthy`.
    pub membership_healthy: Gauge,
    /// `lb_healthy_panic`.
    pub lb_healthy_panic: Counter,
    /// `upstream_rq_pending_active`: requests waiting in a pool for a connection.
    pub upstream_rq_pending_active: Gauge,
    /// `upstream_rq_pending_overflow`: refused by `max_pending_requests`.
    pub upstream_rq_pending_overflow: Counter,
    /// `upstream_rq_active_overflow`: refused by `max_requests` (Envoy 1.38+; before, these
    /// counted as pending overflows).
    pub upstream_rq_active_overflow: Counter,
    /// `upstream_rq_cancelled`: pending requests given up before a connection was ready.
    pub upstream_rq_cancelled: Counter,
    /// `upstream_cx_overflow`: a pool wanted a connection beyond `max_connections`.
    pub upstream_cx_overflow: Counter,
    /// `upstream_cx_pool_overflow`: a pool could not be created (`max_connection_pools`).
    pub upstream_cx_pool_overflow: Counter,
    /// `upstream_rq_retry_overflow`: a retry refused by `max_retries` or the retry budget.
    pub upstream_rq_retry_overflow: Counter,
    /// `membership_degraded`.
    pub membership_degraded: Gauge,
    /// `membership_excluded`.
    pub membership_excluded: Gauge,
    /// `upstream_rq_retry`: retries granted.
    pub upstream_rq_retry: Counter,
    /// `upstream_rq_retry_success`: requests answered after a retry.
    pub upstream_rq_retry_success: Counter,
    /// `upstream_rq_retry_limit_exceeded`: retriable outcomes with no retries left.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// `upstream_rq_retry_backoff_exponential`.
    pub upstream_rq_retry_backoff_exponential: Counter,
    /// `upstream_rq_retry_backoff_ratelimited`.
    pub upstream_rq_retry_backoff_ratelimited: Counter,
    /// `upstream_rq_per_try_timeout`.
    pub upstream_rq_per_try_timeout: Counter,
    /// `upstream_rq_per_try_idle_timeout`.
    pub upstream_rq_per_try_idle_timeout: Counter,
    /// `retry_or_shadow_abandoned`: request bodies too large to keep for a retry.
    pub retry_or_shadow_abandoned: Counter,
    /// `upstream_rq_max_duration_reached`: streams ended by the cluster's
    /// `max_stream_duration`.
    pub upstream_rq_max_duration_reached: Counter,
    /// `upstream_rq_<code>`, created on first use.
    codes: Arc<OnceLock<Box<[OnceLock<Counter>]>>>,
    /// `retry.upstream_rq_completed`, `retry.upstream_rq_<class>xx`, `retry.upstream_rq_<code>`:
    /// responses that were retried, created on first use (Envoy's are dynamic too).
    retry_codes: Arc<OnceLock<RetryCodeStats>>,
    store: Store,
    stat_name: Arc<str>,
}

impl ClusterStats {
    /// Register the stats of cluster `stat_name` (one stat group: one block of cells).
    pub fn new(store: &Store, stat_name: &str) -> Self {
        let g = store.group("cluster", "envoy_cluster_name", stat_name, CLUSTER_STATS);
        ClusterStats {
            upstream_cx_total: g.counter(0),
            upstream_cx_active: g.gauge(1),
            upstream_cx_http1_total: g.counter(2),
            upstream_cx_http2_total: g.counter(3),
            upstream_cx_connect_fail: g.counter(4),
            upstream_cx_connect_timeout: g.counter(5),
            upstream_cx_none_healthy: g.counter(6),
            upstream_cx_destroy: g.counter(7),
            upstream_cx_rx_bytes_total: g.counter(8),
            upstream_cx_tx_bytes_total: g.counter(9),
            upstream_rq_total: g.counter(10),
            upstream_rq_active: g.gauge(11),
            upstream_rq_completed: g.counter(12),
            upstream_rq_timeout: g.counter(13),
            upstream_rq_pending_total: g.counter(14),
            upstream_rq_pending_failure_eject: g.counter(15),
            upstream_rq_rx_reset: g.counter(16),
            membership_total: g.gauge(22),
            membership_healthy: g.gauge(23),
            lb_healthy_panic: g.counter(24),
            upstream_rq_pending_active: g.gauge(25),
            upstream_rq_pending_overflow: g.counter(26),
            upstream_rq_active_overflow: g.counter(27),
            upstream_rq_cancelled: g.counter(28),
            upstream_cx_overflow: g.counter(29),
            upstream_cx_pool_overflow: g.counter(30),
            upstream_rq_retry_overflow: g.counter(31),
            membership_degraded: g.gauge(32),
            membership_excluded: g.gauge(33),
            upstream_rq_retry: g.counter(34),
            upstream_rq_retry_success: g.counter(35),
            upstream_rq_retry_limit_exceeded: g.counter(36),
            upstream_rq_retry_backoff_exponential: g.counter(37),
            upstream_rq_retry_backoff_ratelimited: g.counter(38),
            upstream_rq_per_try_timeout: g.counter(39),
            upstream_rq_per_try_idle_timeout: g.counter(40),
            retry_or_shadow_abandoned: g.counter(41),
            upstream_rq_max_duration_reached: g.counter(42),
            upstream_rq_xx: [g.counter(17), g.counter(18), g.counter(19), g.counter(20), g.counter(21)],
            codes: Arc::new(OnceLock::new()),
            retry_codes: Arc::new(OnceLock::new()),
            store: store.clone(),
            stat_name: stat_name.into(),
        }
    }

    /// Count a response status: `upstream_rq_<code>`, `upstream_rq_<class>xx`, `upstream_rq_completed`.
    pub fn record_status(&self, status: u16) {
        self.upstream_rq_completed.inc();
        let class = (status / 100) as usize;
        if (1..=5).contains(&class) {
            self.upstream_rq_xx[class - 1].inc();
        }
        if !(100..600).contains(&status) {
            return;
        }
        let codes = self.codes.get_or_init(|| (0..500).map(|_| OnceLock::new()).collect());
        let name = &self.stat_name;
        codes[(status - 100) as usize]
            .get_or_init(|| {
                self.store.counter(
                    &format!("cluster.{name}.upstream_rq_{status}"),
                    Prom::tagged("cluster", "envoy_cluster_name", name, "upstream_rq")
                        .with_tag("envoy_response_code", &status.to_string()),
                )
            })
            .inc();
    }

    /// Count a response that was retried (Envoy's `chargeBasicResponseStat` under the
    /// cluster's `retry.` prefix): `retry.upstream_rq_completed`, `retry.upstream_rq_<class>xx`,
    /// `retry.upstream_rq_<code>`. Not in `upstream_rq_<code>`: only final answers are.
    pub fn record_retried_status(&self, status: u16) {
        let name = &self.stat_name;
        let stats = self.retry_codes.get_or_init(|| RetryCodeStats {
            completed: self.store.counter(
                &format!("cluster.{name}.retry.upstream_rq_completed"),
                Prom::tagged("cluster", "envoy_cluster_name", name, "retry.upstream_rq_completed"),
            ),
            classes: Default::default(),
            codes: (0..500).map(|_| OnceLock::new()).collect(),
        });
        stats.completed.inc();
        let class = (status / 100) as usize;
        if (1..=5).contains(&class) {
            stats.classes[class - 1]
                .get_or_init(|| {
                    self.store.counter(
                        &format!("cluster.{name}.retry.upstream_rq_{class}xx"),
                        Prom::tagged("cluster", "envoy_cluster_name", name, "retry.upstream_rq_xx")
                            .with_tag("envoy_response_code_class", &class.to_string()),
                    )
                })
                .inc();
        }
        if (100..600).contains(&status) {
            stats.codes[(status - 100) as usize]
                .get_or_init(|| {
                    self.store.counter(
                        &format!("cluster.{name}.retry.upstream_rq_{status}"),
                        Prom::tagged("cluster", "envoy_cluster_name", name, "retry.upstream_rq")
                            .with_tag("envoy_response_code", &status.to_string()),
                    )
                })
                .inc();
        }
    }
}

/// The dynamic `retry.*` response stats of a cluster.
struct RetryCodeStats {
    completed: Counter,
    classes: [OnceLock<Counter>; 5],
    codes: Box<[OnceLock<Counter>]>,
}

crate::stats_struct! {
    /// Active health checking stats of a cluster (`cluster.<name>.health_check.*`), registered
    /// only for clusters with `health_checks`, as in Envoy.
    #[derive(Clone)]
    pub struct HealthCheckStats {
        /// `health_check.attempt`.
        attempt: Counter = "health_check.attempt",
        /// `health_check.success`.
        success: Counter = "health_check.success",
        /// `health_check.failure`.
        failure: Counter = "health_check.failure",
        /// `health_check.passive_failure`.
        passive_failure: Counter = "health_check.passive_failure",
        /// `health_check.network_failure`.
        network_failure: Counter = "health_check.network_failure",
        /// `health_check.verify_cluster`.
        verify_cluster: Counter = "health_check.verify_cluster",
        /// `health_check.healthy`: checked hosts not failing active HC.
        healthy: Gauge = "health_check.healthy",
        /// `health_check.degraded`: checked hosts degraded by active HC.
        degraded: Gauge = "health_check.degraded",
    }
}
