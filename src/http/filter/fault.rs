//! `envoy.filters.http.fault` (Envoy's `FaultFilter`, `fault_filter.cc`): delays and aborts
//! injected into a share of requests, chosen by route, upstream cluster, downstream node and
//! request headers, or controlled by the client through `x-envoy-fault-*` headers when the
//! config says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName};
use pinion_xds::model::{FaultAbortKind, FaultConfig, FaultDelayKind, FractionalPercent};

use super::callbacks::{DecodeCx, FilterStatus};
use crate::http::local_reply::reply_with_grpc_status;
use crate::http::route_table::{header_matches, RequestView};
use crate::http::router::route_decision::split_query;
use crate::http::stream_info::ResponseFlags;
use crate::runtime::RuntimeSnapshot;
use crate::stats::{Counter, Prom, Store};

const ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
const ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
const ABORT_REQUEST_PERCENTAGE: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request-percentage");
const DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
const DELAY_REQUEST_PERCENTAGE: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request-percentage");
const DOWNSTREAM_SERVICE_CLUSTER: HeaderName = HeaderName::from_static("x-envoy-downstream-service-cluster");
const DOWNSTREAM_SERVICE_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");

crate::stats_struct! {
    /// Envoy's fault filter stats (`http.<stat_prefix>.fault.*`).
    pub struct FaultStats {
        /// `fault.delays_injected`.
        delays_injected: Counter = "fault.delays_injected",
        /// `fault.aborts_injected`.
        aborts_injected: Counter = "fault.aborts_injected",
        /// `fault.faults_overflow`: a fault was due but `max_active_faults` were active.
        faults_overflow: Counter = "fault.faults_overflow",
        /// `fault.response_rl_injected` (response rate limits are refused by translation).
        response_rl_injected: Counter = "fault.response_rl_injected",
        /// `fault.active_faults`.
        active_faults: Gauge = "fault.active_faults",
    }
}

/// The filter: its HCM-level config, and stats shared by the HCM's workers.
pub struct Fault {
    config: Arc<FaultConfig>,
    stats: FaultStats,
    /// Faults in progress across all workers (Envoy's `active_faults` gauge is what
    /// `max_active_faults` is checked against; the gauge's per-worker cells cannot be read
    /// atomically, so the count lives here).
    active: Arc<AtomicU64>,
    store: Store,
    hcm_prefix: Arc<str>,
}

/// Holds one active fault until the request ends (Envoy decrements on stream destroy).
pub struct ActiveFault {
    active: Arc<AtomicU64>,
    gauge: crate::stats::Gauge,
}

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Fault {
    /// The filter of the HCM with `stat_prefix`.
    pub fn new(config: Arc<FaultConfig>, store: &Store, stat_prefix: &str) -> Self {
        Fault {
            config,
            stats: FaultStats::new(store, "http", "envoy_http_conn_manager_prefix", stat_prefix),
            active: Arc::new(AtomicU64::new(0)),
            store: store.clone(),
            hcm_prefix: stat_prefix.into(),
        }
    }

    /// Request hook: maybe delay, then maybe abort. `per_route` replaces the HCM config.
    pub async fn decode_headers(
        &self,
        per_route: Option<&Arc<FaultConfig>>,
        slot: &mut Option<ActiveFault>,
        head: &mut Parts,
        cx: &mut DecodeCx<'_, '_>,
    ) -> FilterStatus {
        let cfg: &FaultConfig = per_route.map_or(&self.config, |c| c);
        let (path, query) = split_query(head.uri.path_and_query().map_or("/", |p| p.as_str()));
        let view = RequestView {
            authority: head.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or(""),
            path,
            query,
            method: &head.method,
            headers: &head.headers,
            is_grpc: cx.grpc,
            random: Default::default(),
        };
        if !applies(cfg, &view, cx.cluster) {
            return FilterStatus::Continue;
        }
        let downstream_cluster = (!cfg.disable_downstream_cluster_stats)
            .then(|| head.headers.get(DOWNSTREAM_SERVICE_CLUSTER).and_then(|v| v.to_str().ok()))
            .flatten()
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let delay = {
            let rt = crate::runtime::snapshot();
            delay_duration(cfg, &rt, &head.headers, rand::random())
        };
        if let Some(d) = delay {
            if self.try_activate(cfg, slot) {
                self.stats.delays_injected.inc();
                if let Some(c) = &downstream_cluster {
                    self.downstream_counter(c, "delays_injected").inc();
                }
                cx.info.flags.insert(ResponseFlags::DELAY_INJECTED);
                tokio::time::sleep(d).await;
            }
        }
        let abort = {
            let rt = crate::runtime::snapshot();
            abort_status(cfg, &rt, &head.headers, rand::random())
        };
        if let Some((http_status, grpc_status)) = abort {
            if self.try_activate(cfg, slot) {
                self.stats.aborts_injected.inc();
                if let Some(c) = &downstream_cluster {
                    self.downstream_counter(c, "aborts_injected").inc();
                }
                cx.info.flags.insert(ResponseFlags::FAULT_INJECTED);
                let body = cfg.abort.as_ref().map_or("fault filter abort", |a| a.response_body.as_str());
                return FilterStatus::LocalReply(reply_with_grpc_status(
                    http_status,
                    body,
                    cx.grpc,
                    grpc_status,
                    cx.info,
                    "fault_filter_abort",
                ));
            }
        }
        FilterStatus::Continue
    }

    /// Envoy's `tryIncActiveFaults`: a request holds at most one active fault; a new one is
    /// refused (and counted as an overflow) when `max_active_faults` are active.
    fn try_activate(&self, cfg: &FaultConfig, slot: &mut Option<ActiveFault>) -> bool {
        if slot.is_some() {
            return true;
        }
        let max = crate::runtime::snapshot()
            .get_integer(&cfg.runtime.max_active_faults, cfg.max_active_faults.map_or(u64::MAX, u64::from));
        let claimed = self.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        if claimed.is_err() {
            self.stats.faults_overflow.inc();
            return false;
        }
        self.stats.active_faults.inc();
        *slot = Some(ActiveFault { active: self.active.clone(), gauge: self.stats.active_faults.clone() });
        true
    }

    /// `http.<prefix>.fault.<downstream cluster>.<name>`, created on first use (the cluster
    /// name comes from a request header; the store keeps one counter per name).
    fn downstream_counter(&self, cluster: &str, name: &str) -> Counter {
        let p = &self.hcm_prefix;
        self.store.counter(
            &format!("http.{p}.fault.{cluster}.{name}"),
            Prom::tagged("http", "envoy_http_conn_manager_prefix", p, &format!("fault.{name}"))
                .with_tag("envoy_fault_downstream_cluster", cluster),
        )
    }
}

/// The fault's targeting: upstream cluster, downstream node, request headers.
fn applies(cfg: &FaultConfig, req: &RequestView<'_>, cluster: Option<&str>) -> bool {
    if let Some(want) = &cfg.upstream_cluster {
        if cluster != Some(want.as_str()) {
            return false;
        }
    }
    if !cfg.downstream_nodes.is_empty() {
        let node = req.headers.get(DOWNSTREAM_SERVICE_NODE).and_then(|v| v.to_str().ok());
        if !node.is_some_and(|n| cfg.downstream_nodes.iter().any(|d| d == n)) {
            return false;
        }
    }
    cfg.headers.iter().all(|m| header_matches(m, req))
}

/// A percentage, lowered by the request's percentage header when the fault is header
/// controlled (Envoy's `HeaderPercentageProvider`: the smaller numerator wins).
fn percentage(
    configured: FractionalPercent,
    header_controlled: bool,
    headers: &HeaderMap,
    name: &HeaderName,
) -> FractionalPercent {
    if !header_controlled {
        return configured;
    }
    match headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) {
        Some(n) => FractionalPercent { numerator: n.min(configured.numerator), denominator: configured.denominator },
        None => configured,
    }
}

/// Envoy's `delayDuration`: enabled by percentage (runtime-overridable), then the configured
/// or header-given duration (runtime-overridable); zero means no delay.
fn delay_duration(cfg: &FaultConfig, rt: &RuntimeSnapshot, headers: &HeaderMap, random: u64) -> Option<Duration> {
    let delay = cfg.delay.as_ref()?;
    let header_controlled = delay.kind == FaultDelayKind::Header;
    let pct = percentage(delay.percentage, header_controlled, headers, &DELAY_REQUEST_PERCENTAGE);
    if !rt.feature_enabled(&cfg.runtime.delay_percent, &pct, random) {
        return None;
    }
    let configured = match delay.kind {
        FaultDelayKind::Fixed(d) => d.as_millis() as u64,
        FaultDelayKind::Header => headers.get(DELAY_REQUEST)?.to_str().ok()?.parse::<u64>().ok()?,
    };
    let ms = rt.get_integer(&cfg.runtime.delay_duration, configured);
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Envoy's `abortStatus`: enabled by percentage (runtime-overridable), then an HTTP status, or
/// a gRPC status (sent with HTTP 200). A header-controlled abort needs a valid header value.
fn abort_status(
    cfg: &FaultConfig,
    rt: &RuntimeSnapshot,
    headers: &HeaderMap,
    random: u64,
) -> Option<(u16, Option<u32>)> {
    let abort = cfg.abort.as_ref()?;
    let header_controlled = abort.kind == FaultAbortKind::Header;
    let pct = percentage(abort.percentage, header_controlled, headers, &ABORT_REQUEST_PERCENTAGE);
    if !rt.feature_enabled(&cfg.runtime.abort_percent, &pct, random) {
        return None;
    }
    let header_u64 =
        |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let http = match abort.kind {
        FaultAbortKind::Http(code) => Some(u64::from(code)),
        FaultAbortKind::Header => header_u64(&ABORT_REQUEST).filter(|c| (200..600).contains(c)),
        FaultAbortKind::Grpc(_) => None,
    };
    if let Some(code) = http {
        let code = rt.get_integer(&cfg.runtime.abort_http_status, code);
        return u16::try_from(code).ok().filter(|c| (200..600).contains(c)).map(|c| (c, None));
    }
    let grpc = match abort.kind {
        FaultAbortKind::Grpc(code) => Some(u64::from(code)),
        FaultAbortKind::Header => header_u64(&ABORT_GRPC_REQUEST),
        FaultAbortKind::Http(_) => None,
    }?;
    let grpc = rt.get_integer(&cfg.runtime.abort_grpc_status, grpc);
    Some((200, Some(u32::try_from(grpc).ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_xds::model::{FaultAbort, FaultDelay, FaultRuntimeKeys};

    fn pct(n: u32) -> FractionalPercent {
        FractionalPercent { numerator: n, denominator: 100 }
    }

    fn cfg(delay: Option<FaultDelay>, abort: Option<FaultAbort>) -> FaultConfig {
        FaultConfig {
            delay,
            abort,
            upstream_cluster: None,
            headers: vec![],
            downstream_nodes: vec![],
            max_active_faults: None,
            runtime: FaultRuntimeKeys {
                delay_percent: "fault.http.delay.fixed_delay_percent".into(),
                abort_percent: "fault.http.abort.abort_percent".into(),
                delay_duration: "fault.http.delay.fixed_duration_ms".into(),
                abort_http_status: "fault.http.abort.http_status".into(),
                abort_grpc_status: "fault.http.abort.grpc_status".into(),
                max_active_faults: "fault.http.max_active_faults".into(),
                response_rate_limit_percent: "fault.http.rate_limit.response_percent".into(),
            },
            disable_downstream_cluster_stats: false,
        }
    }

    fn headers(kv: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in kv {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn abort_decisions() {
        let rt = RuntimeSnapshot::default();
        let abort = |kind, p| Some(FaultAbort { kind, percentage: pct(p), response_body: "fault filter abort".into() });
        // (config, request headers, random draw, expected (http, grpc))
        type Case = (FaultConfig, HeaderMap, u64, Option<(u16, Option<u32>)>);
        let cases: Vec<Case> = vec![
            (cfg(None, abort(FaultAbortKind::Http(503), 100)), headers(&[]), 7, Some((503, None))),
            (cfg(None, abort(FaultAbortKind::Http(503), 0)), headers(&[]), 7, None),
            // 50%: the draw decides (random % 100 < 50).
            (cfg(None, abort(FaultAbortKind::Http(503), 50)), headers(&[]), 49, Some((503, None))),
            (cfg(None, abort(FaultAbortKind::Http(503), 50)), headers(&[]), 50, None),
            (cfg(None, abort(FaultAbortKind::Grpc(14), 100)), headers(&[]), 0, Some((200, Some(14)))),
            (
                cfg(None, abort(FaultAbortKind::Header, 100)),
                headers(&[("x-envoy-fault-abort-request", "429")]),
                0,
                Some((429, None)),
            ),
            // Out of range or unparsable header values abort nothing.
            (
                cfg(None, abort(FaultAbortKind::Header, 100)),
                headers(&[("x-envoy-fault-abort-request", "700")]),
                0,
                None,
            ),
            (cfg(None, abort(FaultAbortKind::Header, 100)), headers(&[("x-envoy-fault-abort-request", "x")]), 0, None),
            (cfg(None, abort(FaultAbortKind::Header, 100)), headers(&[]), 0, None),
            (
                cfg(None, abort(FaultAbortKind::Header, 100)),
                headers(&[("x-envoy-fault-abort-grpc-request", "4")]),
                0,
                Some((200, Some(4))),
            ),
            // The percentage header can only lower the configured share.
            (
                cfg(None, abort(FaultAbortKind::Header, 100)),
                headers(&[("x-envoy-fault-abort-request", "503"), ("x-envoy-fault-abort-request-percentage", "0")]),
                0,
                None,
            ),
        ];
        for (i, (c, h, random, want)) in cases.into_iter().enumerate() {
            assert_eq!(abort_status(&c, &rt, &h, random), want, "case {i}");
        }
    }

    #[test]
    fn delay_decisions() {
        let rt = RuntimeSnapshot::default();
        let delay = |kind, p| Some(FaultDelay { kind, percentage: pct(p) });
        let ms = |n| Some(Duration::from_millis(n));
        let cases: Vec<(FaultConfig, HeaderMap, Option<Duration>)> = vec![
            (cfg(delay(FaultDelayKind::Fixed(Duration::from_millis(300)), 100), None), headers(&[]), ms(300)),
            (cfg(delay(FaultDelayKind::Fixed(Duration::from_millis(300)), 0), None), headers(&[]), None),
            (
                cfg(delay(FaultDelayKind::Header, 100), None),
                headers(&[("x-envoy-fault-delay-request", "200")]),
                ms(200),
            ),
            (cfg(delay(FaultDelayKind::Header, 100), None), headers(&[("x-envoy-fault-delay-request", "0")]), None),
            (cfg(delay(FaultDelayKind::Header, 100), None), headers(&[]), None),
        ];
        for (i, (c, h, want)) in cases.into_iter().enumerate() {
            assert_eq!(delay_duration(&c, &rt, &h, 0), want, "case {i}");
        }
    }

    fn view<'a>(h: &'a HeaderMap, method: &'a http::Method) -> RequestView<'a> {
        RequestView {
            authority: "a.example",
            path: "/p",
            query: None,
            method,
            headers: h,
            is_grpc: false,
            random: Default::default(),
        }
    }

    #[test]
    fn targeting() {
        let get = http::Method::GET;
        let none = HeaderMap::new();
        let mut c = cfg(None, None);
        c.upstream_cluster = Some("a".into());
        assert!(applies(&c, &view(&none, &get), Some("a")));
        assert!(!applies(&c, &view(&none, &get), Some("b")));
        assert!(!applies(&c, &view(&none, &get), None));
        let mut c = cfg(None, None);
        c.downstream_nodes = vec!["node-1".into()];
        let n1 = headers(&[("x-envoy-downstream-service-node", "node-1")]);
        let n2 = headers(&[("x-envoy-downstream-service-node", "node-2")]);
        assert!(applies(&c, &view(&n1, &get), None));
        assert!(!applies(&c, &view(&n2, &get), None));
        assert!(!applies(&c, &view(&none, &get), None));
    }

    #[test]
    fn max_active_faults_overflow() {
        let store = Store::new(1);
        let mut c = cfg(None, None);
        c.max_active_faults = Some(1);
        let f = Fault::new(Arc::new(c.clone()), &store, "p");
        let (mut a, mut b) = (None, None);
        assert!(f.try_activate(&c, &mut a));
        // The same request keeps its fault; another one overflows while it is active.
        assert!(f.try_activate(&c, &mut a));
        assert!(!f.try_activate(&c, &mut b));
        assert_eq!(f.stats.faults_overflow.value(), 1);
        assert_eq!(f.stats.active_faults.value(), 1);
        drop(a);
        assert_eq!(f.stats.active_faults.value(), 0);
        assert!(f.try_activate(&c, &mut b));
    }
}
