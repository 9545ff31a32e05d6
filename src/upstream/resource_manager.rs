//! Circuit breakers: Envoy's `ResourceManagerImpl` (`resource_manager_impl.h`), one per
//! cluster and routing priority, shared by every worker.
//!
//! Each resource (connections, pending requests, requests, retries, connection pools) is one
//! atomic count against its `max`. Envoy checks `canCreate()` and increments later, so
//! workers racing at the limit can pass it by one or two; here admission is one
//! compare-and-swap, so a limit is never exceeded by admitted work (connections may still be
//! forced past it: a worker's pool with no connection at all always gets one, as in Envoy).
//! Holding a resource is a [`ResourceGuard`] (or the pool's per-request accounting), released
//! on drop.
//!
//! `max` follows Envoy's runtime overrides `circuit_breakers.<cluster>.<priority>.max_*`
//! (and `.retry_budget.budget_percent` / `.min_retry_concurrency`), read from the process
//! runtime on each check. The `circuit_breakers.<priority>.*_open` and `remaining_*` gauges
//! are computed from the counts when stats are read, so the request path only touches the
//! count; their values are the ones Envoy's gauges take after each change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use pinion_xds::model::{RetryBudget, RoutingPriority, Thresholds};

use crate::stats::{Prom, Store};

/// One limited resource: a count against a maximum.
#[derive(Debug)]
pub struct ResourceLimit {
    max: u64,
    /// `circuit_breakers.<cluster>.<priority>.<max_name>`: overrides `max` when set.
    runtime_key: Box<str>,
    current: AtomicU64,
}

impl ResourceLimit {
    fn new(max: u64, runtime_key: String) -> Self {
        ResourceLimit { max, runtime_key: runtime_key.into(), current: AtomicU64::new(0) }
    }

    /// The limit now: the runtime override, else the configured value.
    pub fn max(&self) -> u64 {
        let rt = crate::runtime::snapshot();
        // Nearly every process has no runtime keys at all: skip the lookup.
        if rt.values.is_empty() {
            return self.max;
        }
        rt.get_integer(&self.runtime_key, self.max)
    }

    /// How much is held now.
    pub fn count(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Envoy's `canCreate()`: whether one more is within the limit now.
    pub fn can_create(&self) -> bool {
        self.count() < self.max()
    }

    /// Take one if that stays within the limit.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_below(self.max())
    }

    fn try_acquire_below(&self, max: u64) -> bool {
        self.current.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| (c < max).then_some(c + 1)).is_ok()
    }

    /// Take one regardless of the limit (a pool's first connection).
    pub fn acquire(&self) {
        self.current.fetch_add(1, Ordering::AcqRel);
    }

    /// Give one back.
    pub fn release(&self) {
        // Never below zero, even if a release were doubled by mistake.
        let _ = self.current.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| Some(c.saturating_sub(1)));
    }

    /// Envoy's `remaining_*` gauge: what is left before the breaker opens.
    pub fn remaining(&self) -> u64 {
        self.max().saturating_sub(self.count())
    }

    /// Envoy's `*_open` gauge: the breaker is open once the count reaches the limit.
    pub fn is_open(&self) -> bool {
        !self.can_create()
    }
}

/// Which resource a [`ResourceGuard`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// An upstream connection (connecting or connected).
    Connection,
    /// A request waiting in a pool for a connection.
    PendingRequest,
    /// A request attached to a connection (an active stream).
    Request,
    /// A retry in progress.
    Retry,
    /// A per-worker connection pool.
    ConnectionPool,
}

/// A cluster's resource manager for one priority.
#[derive(Debug)]
pub struct ResourceManager {
    priority: RoutingPriority,
    connections: ResourceLimit,
    pending_requests: ResourceLimit,
    requests: ResourceLimit,
    connection_pools: ResourceLimit,
    /// `max_retries`; with a retry budget it still counts retries and drives `rq_retry_open`.
    retries: ResourceLimit,
    retry_budget: Option<RetryBudget>,
    budget_percent_key: Box<str>,
    min_retry_concurrency_key: Box<str>,
    max_connections_per_host: u64,
}

/// Holds one unit of a resource; released on drop.
#[derive(Debug)]
pub struct ResourceGuard {
    manager: Arc<ResourceManager>,
    resource: Resource,
}

impl ResourceGuard {
    /// Which resource this holds.
    pub fn resource(&self) -> Resource {
        self.resource
    }
}

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        self.manager.limit(self.resource).release();
    }
}

/// A retry's hold on the cluster's retry resource (Envoy's `retries().inc()` while a retry
/// is scheduled or running; released on drop, as `resetRetry()` does).
pub type RetryGuard = ResourceGuard;

impl ResourceManager {
    /// The manager of `cluster_name` (runtime keys use the cluster's name, not its stat name)
    /// for `priority`, with `thresholds`.
    pub fn new(cluster_name: &str, priority: RoutingPriority, thresholds: &Thresholds) -> Arc<Self> {
        let prefix = format!("circuit_breakers.{cluster_name}.{}.", priority.name());
        let key = |name: &str| format!("{prefix}{name}");
        Arc::new(ResourceManager {
            priority,
            connections: ResourceLimit::new(thresholds.max_connections, key("max_connections")),
            pending_requests: ResourceLimit::new(thresholds.max_pending_requests, key("max_pending_requests")),
            requests: ResourceLimit::new(thresholds.max_requests, key("max_requests")),
            connection_pools: ResourceLimit::new(thresholds.max_connection_pools, key("max_connection_pools")),
            retries: ResourceLimit::new(thresholds.max_retries, key("max_retries")),
            retry_budget: thresholds.retry_budget,
            budget_percent_key: key("retry_budget.budget_percent").into(),
            min_retry_concurrency_key: key("retry_budget.min_retry_concurrency").into(),
            max_connections_per_host: thresholds.max_connections_per_host,
        })
    }

    /// The priority this manager serves.
    pub fn priority(&self) -> RoutingPriority {
        self.priority
    }

    /// A resource's limit and count.
    pub fn limit(&self, resource: Resource) -> &ResourceLimit {
        match resource {
            Resource::Connection => &self.connections,
            Resource::PendingRequest => &self.pending_requests,
            Resource::Request => &self.requests,
            Resource::Retry => &self.retries,
            Resource::ConnectionPool => &self.connection_pools,
        }
    }

    /// `max_connections`.
    pub fn connections(&self) -> &ResourceLimit {
        &self.connections
    }

    /// `max_pending_requests`.
    pub fn pending_requests(&self) -> &ResourceLimit {
        &self.pending_requests
    }

    /// `max_requests`.
    pub fn requests(&self) -> &ResourceLimit {
        &self.requests
    }

    /// `max_connection_pools`.
    pub fn connection_pools(&self) -> &ResourceLimit {
        &self.connection_pools
    }

    /// `per_host_thresholds` `max_connections` (`u64::MAX`: unlimited).
    pub fn max_connections_per_host(&self) -> u64 {
        self.max_connections_per_host
    }

    /// Take one unit of `resource` if that stays within its limit.
    pub fn try_acquire(self: &Arc<Self>, resource: Resource) -> Option<ResourceGuard> {
        if resource == Resource::Retry {
            return self.try_retry();
        }
        self.limit(resource).try_acquire().then(|| ResourceGuard { manager: self.clone(), resource })
    }

    /// Take one unit of `resource` regardless of its limit (Envoy's unconditional `inc()`).
    pub fn acquire(self: &Arc<Self>, resource: Resource) -> ResourceGuard {
        self.limit(resource).acquire();
        ResourceGuard { manager: self.clone(), resource }
    }

    /// Whether a retry budget decides retries (configured, or given by the runtime keys).
    fn uses_retry_budget(&self) -> bool {
        if self.retry_budget.is_some() {
            return true;
        }
        let rt = crate::runtime::snapshot();
        !rt.values.is_empty()
            && (rt.values.contains_key(&*self.budget_percent_key)
                || rt.values.contains_key(&*self.min_retry_concurrency_key))
    }

    /// The concurrent retries allowed now: `max_retries`, or with a retry budget
    /// `max(budget_percent% of (active + pending requests), min_retry_concurrency)` (Envoy's
    /// `RetryBudgetImpl::max()`). `/clusters` shows this as `max_retries`.
    pub fn max_retries(&self) -> u64 {
        if !self.uses_retry_budget() {
            return self.retries.max();
        }
        let d = self.retry_budget.unwrap_or_default();
        let rt = crate::runtime::snapshot();
        let percent = rt
            .values
            .get(&*self.budget_percent_key)
            .and_then(|v| v.raw.trim().parse::<f64>().ok())
            .unwrap_or(d.budget_percent);
        let min = rt.get_integer(&self.min_retry_concurrency_key, u64::from(d.min_retry_concurrency));
        let active = self.requests.count() + self.pending_requests.count();
        // Truncated as Envoy's conversion of the product to an integer.
        let budget = (percent / 100.0 * active as f64) as u64;
        budget.max(min)
    }

    /// Start a retry if the retry circuit breaker allows it (Envoy's
    /// `retries().canCreate()` then `inc()`); `None` is Envoy's `NoOverflow`, for which the
    /// caller counts `upstream_rq_retry_overflow` (see `Cluster::try_retry`).
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryGuard> {
        let max = self.max_retries();
        self.retries.try_acquire_below(max).then(|| ResourceGuard { manager: self.clone(), resource: Resource::Retry })
    }

    /// Retries in progress.
    pub fn retries_active(&self) -> u64 {
        self.retries.count()
    }

    /// Register the `cluster.<stat_name>.circuit_breakers.<priority>.*` gauges: the `*_open`
    /// ones always, the `remaining_*` ones with `track_remaining` (Envoy leaves them out
    /// otherwise). They read this manager when stats are scraped.
    pub fn register_stats(self: &Arc<Self>, store: &Store, stat_name: &str, track_remaining: bool) {
        type Read = fn(&ResourceManager) -> u64;
        let open: [(&str, Read); 5] = [
            ("cx_open", |m| m.connections.is_open().into()),
            ("cx_pool_open", |m| m.connection_pools.is_open().into()),
            ("rq_open", |m| m.requests.is_open().into()),
            ("rq_pending_open", |m| m.pending_requests.is_open().into()),
            // Envoy's retry gauge follows max_retries even under a retry budget.
            ("rq_retry_open", |m| m.retries.is_open().into()),
        ];
        let remaining: [(&str, Read); 5] = [
            ("remaining_cx", |m| m.connections.remaining()),
            ("remaining_cx_pools", |m| m.connection_pools.remaining()),
            ("remaining_pending", |m| m.pending_requests.remaining()),
            // A budget depends on other resources, so Envoy publishes 0 instead.
            ("remaining_retries", |m| if m.uses_retry_budget() { 0 } else { m.retries.remaining() }),
            ("remaining_rq", |m| m.requests.remaining()),
        ];
        let n = if track_remaining { 2 } else { 1 };
        for (name, read) in [open, remaining].iter().take(n).flatten() {
            let rest = format!("circuit_breakers.{}.{name}", self.priority.name());
            let weak: Weak<ResourceManager> = Arc::downgrade(self);
            let read = *read;
            store.computed_gauge(
                &format!("cluster.{stat_name}.{rest}"),
                Prom::tagged("cluster", "envoy_cluster_name", stat_name, &rest),
                Arc::new(move || weak.upgrade().map_or(0, |m| read(&m))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(t: Thresholds) -> Arc<ResourceManager> {
        ResourceManager::new("svc", RoutingPriority::Default, &t)
    }

    fn stat(store: &Store, name: &str) -> Option<String> {
        store.render_text(None, false).lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.to_string())
        })
    }

    #[test]
    fn guards_hold_and_release() {
        let m = manager(Thresholds { max_requests: 2, ..Thresholds::default() });
        let a = m.try_acquire(Resource::Request).expect("first");
        let b = m.try_acquire(Resource::Request).expect("second");
        assert!(m.try_acquire(Resource::Request).is_none(), "the third overflows");
        assert_eq!(m.requests().count(), 2);
        assert!(m.requests().is_open());
        drop(a);
        assert!(!m.requests().is_open());
        let c = m.try_acquire(Resource::Request).expect("room again");
        drop((b, c));
        assert_eq!(m.requests().count(), 0);
        // Forced acquisitions pass the limit (a pool's first connection) and still release.
        let m = manager(Thresholds { max_connections: 1, ..Thresholds::default() });
        let a = m.acquire(Resource::Connection);
        let b = m.acquire(Resource::Connection);
        assert_eq!((m.connections().count(), m.connections().remaining()), (2, 0));
        assert!(m.try_acquire(Resource::Connection).is_none());
        drop((a, b));
        assert_eq!(m.connections().count(), 0);
        assert_eq!(m.try_acquire(Resource::Connection).map(|g| g.resource()), Some(Resource::Connection));
    }

    #[test]
    fn gauges_follow_the_counts() {
        let store = Store::new(1);
        let t = Thresholds { max_requests: 2, max_pending_requests: 1, track_remaining: true, ..Thresholds::default() };
        let m = manager(t);
        m.register_stats(&store, "svc_stat", true);
        let g = |n: &str| stat(&store, &format!("cluster.svc_stat.circuit_breakers.default.{n}")).unwrap();
        assert_eq!(g("rq_open"), "0");
        assert_eq!(g("remaining_rq"), "2");
        assert_eq!(g("remaining_cx"), "1024");
        assert_eq!(g("remaining_retries"), "3");
        assert_eq!(g("remaining_cx_pools"), u64::MAX.to_string(), "unlimited pools print as Envoy's u64 max");
        let held: Vec<_> = (0..2).filter_map(|_| m.try_acquire(Resource::Request)).collect();
        let pending = m.try_acquire(Resource::PendingRequest);
        assert_eq!((g("rq_open"), g("remaining_rq")), ("1".into(), "0".into()));
        assert_eq!((g("rq_pending_open"), g("remaining_pending")), ("1".into(), "0".into()));
        assert_eq!(g("cx_open"), "0");
        drop((held, pending));
        assert_eq!((g("rq_open"), g("remaining_rq"), g("rq_pending_open")), ("0".into(), "2".into(), "0".into()));
        let json = store.render_json(None, false).to_string();
        assert!(json.contains(&format!("\"value\":{}", u64::MAX)), "{json}");
        let prom = store.render_prometheus(false);
        assert!(
            prom.contains("envoy_cluster_circuit_breakers_default_rq_open{envoy_cluster_name=\"svc_stat\"} 0"),
            "{prom}"
        );
    }

    #[test]
    fn remaining_gauges_only_with_track_remaining() {
        let store = Store::new(1);
        ResourceManager::new("svc", RoutingPriority::High, &Thresholds::default()).register_stats(&store, "svc", false);
        let text = store.render_text(None, false);
        let names: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "cluster.svc.circuit_breakers.high.cx_open",
                "cluster.svc.circuit_breakers.high.cx_pool_open",
                "cluster.svc.circuit_breakers.high.rq_open",
                "cluster.svc.circuit_breakers.high.rq_pending_open",
                "cluster.svc.circuit_breakers.high.rq_retry_open",
            ]
        );
    }

    #[test]
    fn a_dropped_manager_reads_zero() {
        let store = Store::new(1);
        let m = manager(Thresholds { max_requests: 1, ..Thresholds::default() });
        m.register_stats(&store, "svc", true);
        let _held = m.try_acquire(Resource::Request);
        assert_eq!(stat(&store, "cluster.svc.circuit_breakers.default.rq_open").as_deref(), Some("1"));
        drop(_held);
        drop(m);
        assert_eq!(stat(&store, "cluster.svc.circuit_breakers.default.remaining_rq").as_deref(), Some("0"));
    }

    #[test]
    fn max_retries_without_budget() {
        let m = manager(Thresholds { max_retries: 2, ..Thresholds::default() });
        let a = m.try_retry().expect("first retry");
        let _b = m.try_retry().expect("second retry");
        assert!(m.try_retry().is_none(), "max_retries 2");
        assert_eq!(m.retries_active(), 2);
        drop(a);
        assert!(m.try_retry().is_some());
    }

    #[test]
    fn retry_budget_scales_with_active_and_pending_requests() {
        let store = Store::new(1);
        let budget = RetryBudget { budget_percent: 25.0, min_retry_concurrency: 2 };
        let m = manager(Thresholds {
            max_retries: 1,
            retry_budget: Some(budget),
            max_requests: 100,
            max_pending_requests: 100,
            ..Thresholds::default()
        });
        m.register_stats(&store, "svc", true);
        // No requests: the floor.
        assert_eq!(m.max_retries(), 2);
        let requests: Vec<_> = (0..12).filter_map(|_| m.try_acquire(Resource::Request)).collect();
        let pending: Vec<_> = (0..4).filter_map(|_| m.try_acquire(Resource::PendingRequest)).collect();
        // 25% of 16.
        assert_eq!(m.max_retries(), 4);
        let retries: Vec<_> = (0..10).filter_map(|_| m.try_retry()).collect();
        assert_eq!(retries.len(), 4, "the budget, not max_retries 1, decides");
        // Envoy: under a budget, remaining_retries reads 0 and rq_retry_open follows max_retries.
        assert_eq!(stat(&store, "cluster.svc.circuit_breakers.default.remaining_retries").as_deref(), Some("0"));
        assert_eq!(stat(&store, "cluster.svc.circuit_breakers.default.rq_retry_open").as_deref(), Some("1"));
        drop((requests, pending));
        // 25% of 0 -> the floor of 2, with 4 still running: no new retry.
        assert!(m.try_retry().is_none());
        drop(retries);
        assert!(m.try_retry().is_some());
        // 7 active -> 25% is 1.75, truncated to 1, below the floor.
        let _r: Vec<_> = (0..7).filter_map(|_| m.try_acquire(Resource::Request)).collect();
        assert_eq!(m.max_retries(), 2);
    }

    #[test]
    fn concurrent_use_never_exceeds_the_limit() {
        let m = manager(Thresholds { max_requests: 5, ..Thresholds::default() });
        let peak = Arc::new(AtomicU64::new(0));
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (m, peak, admitted) = (m.clone(), peak.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(g) = m.try_acquire(Resource::Request) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            peak.fetch_max(m.requests().count(), Ordering::Relaxed);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 5, "peak {}", peak.load(Ordering::Relaxed));
        assert!(admitted.load(Ordering::Relaxed) > 0);
        assert_eq!(m.requests().count(), 0, "every guard released");
        // Held guards from many threads: exactly the limit gets in.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || (0..10).filter_map(|_| m.try_acquire(Resource::Request)).collect::<Vec<_>>())
            })
            .collect();
        let held: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(held.len(), 5);
    }
}
