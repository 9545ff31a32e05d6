//! The router filter (`envoy.filters.http.router`): picks the cluster and host, rewrites the
//! request for upstream, runs the exchange through the worker's pool under the route timeout,
//! and maps failures to Envoy's local replies.
//!
//! Phases: `upstream_cluster` -> `upstream_peer` -> `upstream_request` (rewrite) -> exchange
//! -> `upstream_response` (response headers).

use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pinion_xds::model::{
    ClusterSpecifier, ForwardAction, HeaderMutations, HostRewrite, PathMatch, Route, UpstreamProtocol, VirtualHost,
    WeightedCluster,
};

use super::body::{Activity, RequestBody, ResponseBody, UpstreamBody};
use super::connection_manager::{reply, set_path, ConnCtx};
use super::header_mutation;
use super::local_reply::{upstream_reset_body, NO_HEALTHY_UPSTREAM, UPSTREAM_TIMEOUT};
use super::request_headers::remove_hop_by_hop;
use super::route_table::RouteTable;
use super::stream_info::{ResponseFlags, StreamInfo};
use crate::formatter::Context;
use crate::upstream::conn_pool::{Protocol, StreamSlot, UpstreamError};
use crate::upstream::{Cluster, Host, HostStats};

// Names used on every request, built at compile time instead of validated per use.
const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

/// Header mutation levels that apply to a route, least specific first.
pub struct MutationLevels<'a> {
    /// Route configuration level.
    pub route_config: &'a HeaderMutations,
    /// Virtual host level.
    pub vhost: &'a HeaderMutations,
    /// Route level.
    pub route: &'a HeaderMutations,
}

impl MutationLevels<'_> {
    /// Envoy's evaluation order: most specific first (so the route config has the last word)
    /// unless `most_specific_header_mutations_wins`.
    fn ordered<'b>(
        &'b self,
        weighted: Option<&'b HeaderMutations>,
        most_specific_wins: bool,
    ) -> impl Iterator<Item = &'b HeaderMutations> + 'b {
        // No allocation: a fixed array, reversed by index when the most specific level wins.
        let levels = [weighted, Some(self.route), Some(self.vhost), Some(self.route_config)];
        (0..4).filter_map(move |i| levels[if most_specific_wins { 3 - i } else { i }]).filter(|m| !m.is_empty())
    }
}

/// Holds upstream accounting until the response body is done.
pub struct UpstreamGuard {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    _slot: StreamSlot,
}

impl UpstreamGuard {
    fn new(cluster: Arc<Cluster>, host: Arc<Host>, slot: StreamSlot) -> Self {
        UpstreamGuard { cluster, host, _slot: slot }
    }

    /// The response body ended (`ok`) or was cut short.
    pub fn finish(self, ok: bool) {
        self.cluster.stats.upstream_rq_active.dec();
        HostStats::add(&self.host.stats.rq_active, -1);
        if ok {
            HostStats::inc(&self.host.stats.rq_success);
        } else {
            HostStats::inc(&self.host.stats.rq_error);
            self.cluster.stats.upstream_rq_rx_reset.inc();
        }
    }
}

type Phase<T> = Result<T, Response<ResponseBody>>;

/// Apply response-side header mutations of every level.
pub fn apply_response_mutations(
    resp: &mut Response<ResponseBody>,
    levels: &MutationLevels<'_>,
    weighted: Option<&HeaderMutations>,
    info: &StreamInfo,
    request_headers: &HeaderMap,
) {
    if levels
        .ordered(weighted, false)
        .all(|m| m.response_headers_to_add.is_empty() && m.response_headers_to_remove.is_empty())
    {
        return;
    }
    let all = levels.ordered(weighted, false);
    let response_snapshot = resp.headers().clone();
    let ctx = Context {
        info,
        request_headers: Some(request_headers),
        response_headers: Some(&response_snapshot),
        bytes_sent: 0,
    };
    for m in all {
        header_mutation::apply(
            resp.headers_mut(),
            &m.response_headers_to_add,
            &m.response_headers_to_remove,
            Some(&ctx),
        );
    }
}

/// Envoy's `regex_rewrite` substitution uses `\1`; the regex crate uses `${1}`.
pub fn regex_substitution(sub: &str) -> String {
    let mut out = String::with_capacity(sub.len());
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str("${");
                out.push(d);
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn pick_weighted(clusters: &[WeightedCluster], total: u64) -> Option<&WeightedCluster> {
    if total == 0 {
        return None;
    }
    let mut r = rand::random_range(0..total);
    for c in clusters {
        let w = u64::from(c.weight);
        if r < w {
            return Some(c);
        }
        r -= w;
    }
    clusters.last()
}

/// Forward a routed request upstream.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
pub async fn forward(
    ctx: &Rc<ConnCtx>,
    mut req: Request<Incoming>,
    info: &mut StreamInfo,
    grpc: bool,
    route: &Route,
    vhost: &VirtualHost,
    table: &RouteTable,
    action: &ForwardAction,
    is_upgrade: bool,
) -> Phase<(Response<ResponseBody>, Option<UpstreamGuard>)> {
    let hcm = &ctx.hcm;
    let levels = MutationLevels { route_config: &table.config.headers, vhost: &vhost.headers, route: &route.headers };

    // Phase: upstream_cluster.
    let mut weighted: Option<&WeightedCluster> = None;
    let cluster_name: std::borrow::Cow<'_, str> = match &action.cluster {
        ClusterSpecifier::Cluster(name) => name.as_str().into(),
        ClusterSpecifier::ClusterHeader(h) => {
            req.headers().get(h).and_then(|v| v.to_str().ok()).map(|s| s.to_owned()).unwrap_or_default().into()
        }
        ClusterSpecifier::Weighted { clusters, total_weight } => {
            weighted = pick_weighted(clusters, *total_weight);
            weighted.map(|w| w.name.as_str()).unwrap_or_default().into()
        }
    };
    let snapshot = ctx.worker.snapshot.load();
    let Some(cluster) = snapshot.clusters.get(cluster_name.as_ref()).cloned() else {
        hcm.stats.no_cluster.inc();
        info.flags.set(ResponseFlags::NO_CLUSTER);
        let mut resp = reply(action.cluster_not_found_response_code, "", grpc, info, "cluster_not_found");
        apply_response_mutations(&mut resp, &levels, weighted.map(|w| &w.headers), info, req.headers());
        return Err(resp);
    };
    drop(snapshot);
    if !hcm.access_logs.is_empty() {
        info.upstream_cluster = Some(cluster.config.name.as_str().into());
    }

    // Phase: upstream_peer.
    let Some(host) = cluster.choose_host() else {
        info.flags.set(ResponseFlags::NO_HEALTHY_UPSTREAM);
        let mut resp = reply(503, NO_HEALTHY_UPSTREAM, grpc, info, "no_healthy_upstream");
        apply_response_mutations(&mut resp, &levels, weighted.map(|w| &w.headers), info, req.headers());
        return Err(resp);
    };
    info.upstream_host = Some(host.address);

    // Phase: upstream_request (rewrites and headers).
    // Header values with `%REQ(..)%`-style commands read the downstream request headers as
    // received; copy them only when some mutation level actually formats.
    let formats = levels
        .ordered(weighted.map(|w| &w.headers), false)
        .any(|m| m.request_headers_to_add.iter().chain(&m.response_headers_to_add).any(|h| h.has_formatter));
    let downstream_headers_for_log = if formats { req.headers().clone() } else { HeaderMap::new() };
    rewrite_request(&mut req, route, action, &host, weighted, hcm.router.suppress_envoy_headers);
    {
        let fctx =
            Context { info, request_headers: Some(&downstream_headers_for_log), response_headers: None, bytes_sent: 0 };
        let most_specific = table.config.most_specific_header_mutations_wins;
        for m in levels.ordered(weighted.map(|w| &w.headers), most_specific) {
            header_mutation::apply(
                req.headers_mut(),
                &m.request_headers_to_add,
                &m.request_headers_to_remove,
                Some(&fctx),
            );
        }
    }
    if let Some(t) = action.timeout {
        if !hcm.router.suppress_envoy_headers {
            req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, crate::http::numeric_header(t.as_millis() as u64));
        }
    }
    let protocol = if is_upgrade {
        Protocol::Http1
    } else {
        match cluster.config.protocol {
            UpstreamProtocol::Http1 => Protocol::Http1,
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::UseDownstream => {
                if req.version() == Version::HTTP_2 {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                }
            }
        }
    };
    let downstream_version = req.version();
    let on_downstream_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    // Stream timeouts watch the request body's progress; a bodyless request is done already.
    let cfg = &hcm.config;
    let timeouts = cfg.stream_idle_timeout.is_some() || cfg.request_timeout.is_some();
    // Only a streaming body needs shared progress tracking (and its allocation).
    let tracked = (timeouts && !http_body::Body::is_end_stream(req.body())).then(|| Rc::new(Activity::new(false)));
    let bodyless = Activity::new(true);
    let upstream_req = to_upstream_request(req, protocol, tracked.clone());
    let activity: &Activity = tracked.as_deref().unwrap_or(&bodyless);

    // Exchange.
    cluster.stats.upstream_rq_total.inc();
    cluster.stats.upstream_rq_active.inc();
    HostStats::inc(&host.stats.rq_total);
    HostStats::add(&host.stats.rq_active, 1);
    let started = Instant::now();
    // The exchange, raced against the stream timeouts and bounded by the route timeout. The
    // futures are pinned here and polled in place: each `async { x.await }` layer around a
    // moved future would keep its own copy of the exchange's state (it was 7.5 KiB for a
    // 1.7 KiB exchange), and hyper moves the request future around.
    let outcome = {
        let exchange = pin!(async {
            if is_upgrade {
                // Boxed: a dial and handshake are large states, and upgrades are rare.
                let mut sender = Box::pin(ctx.worker.pools.upgrade_connection(&cluster, &host)).await?;
                let resp = sender.send_request(upstream_req).await.map_err(|e| UpstreamError::Reset(e.into()))?;
                Ok((resp.map(UpstreamBody::H1), StreamSlot::none()))
            } else {
                ctx.worker.pools.send(&cluster, &host, protocol, upstream_req).await
            }
        });
        let watchdog = pin!(stream_watchdog(activity, cfg.stream_idle_timeout, cfg.request_timeout, info.start));
        match action.timeout {
            Some(t) => tokio::time::timeout(t, race(exchange, watchdog)).await.ok(),
            None => Some(race(exchange, watchdog).await),
        }
    };
    // The upstream request ends without a response: it is no longer active, and the local
    // reply gets the route's response header mutations.
    let fail = |mut resp: Response<ResponseBody>, info: &mut StreamInfo| {
        cluster.stats.upstream_rq_active.dec();
        HostStats::add(&host.stats.rq_active, -1);
        apply_response_mutations(&mut resp, &levels, weighted.map(|w| &w.headers), info, &downstream_headers_for_log);
        Err(resp)
    };
    let result = match outcome {
        Some(Ok(r)) => r,
        Some(Err((status, body, details, is_request_timeout))) => {
            if is_request_timeout {
                hcm.stats.downstream_rq_timeout.inc();
            } else {
                hcm.stats.downstream_rq_idle_timeout.inc();
            }
            let mut resp = reply(status, body, grpc, info, details);
            if status == 408 {
                // Envoy closes the connection after a downstream timeout.
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return fail(resp, info);
        }
        None => {
            cluster.stats.upstream_rq_timeout.inc();
            HostStats::inc(&host.stats.rq_timeout);
            info.flags.set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            cluster.stats.record_status(504);
            return fail(reply(504, UPSTREAM_TIMEOUT, grpc, info, "upstream_response_timeout"), info);
        }
    };
    let (mut resp, slot) = match result {
        Ok(r) => r,
        Err(e) => {
            HostStats::inc(&host.stats.rq_error);
            let (flag, details) = match &e {
                UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_) => (
                    ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                    "upstream_reset_before_response_started{connection_failure}",
                ),
                UpstreamError::Handshake(_) => {
                    (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "upstream_reset_before_response_started{protocol_error}")
                }
                UpstreamError::Reset(_) => (
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                    "upstream_reset_before_response_started{connection_termination}",
                ),
            };
            let reason = e.to_string();
            tracing::debug!(cluster = %cluster.config.name, host = %host.address, error = ?e, "upstream request failed");
            info.flags.set(flag);
            cluster.stats.record_status(503);
            return fail(reply(503, &upstream_reset_body(&reason), grpc, info, details), info);
        }
    };
    let service_time = started.elapsed();
    info.upstream_service_time = Some(service_time);

    // Phase: upstream_response.
    let status = resp.status();
    cluster.stats.record_status(status.as_u16());
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(resp.headers_mut(), switching);
    if switching {
        if let Some(up) = resp.headers().get(header::UPGRADE).cloned() {
            resp.headers_mut().insert(header::UPGRADE, up);
        }
    }
    // Envoy leaves the service time off upgrade (101) responses.
    if !hcm.router.suppress_envoy_headers && !switching {
        resp.headers_mut()
            .insert(X_ENVOY_UPSTREAM_SERVICE_TIME, crate::http::numeric_header(service_time.as_millis() as u64));
    }
    if switching {
        if let Some(down) = on_downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            tokio::task::spawn_local(async move {
                match tokio::join!(down, up) {
                    (Ok(d), Ok(u)) => {
                        let mut d = TokioIo::new(d);
                        let mut u = TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    (d, u) => tracing::debug!(down_ok = d.is_ok(), up_ok = u.is_ok(), "upgrade failed"),
                }
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    if downstream_version == Version::HTTP_2 {
        parts.version = Version::HTTP_2;
    } else {
        parts.version = Version::HTTP_11;
    }
    let mut resp = Response::from_parts(parts, ResponseBody::upstream(body));
    apply_response_mutations(&mut resp, &levels, weighted.map(|w| &w.headers), info, &downstream_headers_for_log);
    Ok((resp, Some(UpstreamGuard::new(cluster, host, slot))))
}

/// Polls `a`, then `b`, until one is ready (`Ok` for `a`): a `select!` that moves neither
/// future.
fn race<'a, A: Future, B: Future>(
    mut a: Pin<&'a mut A>,
    mut b: Pin<&'a mut B>,
) -> impl Future<Output = Result<A::Output, B::Output>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(r) = a.as_mut().poll(cx) {
            return Poll::Ready(Ok(r));
        }
        b.as_mut().poll(cx).map(Err)
    })
}

/// Resolves when a stream timeout fires before the upstream answers: `request_timeout`
/// while the request body is incomplete (408), or `stream_idle_timeout` with no body
/// progress (408 while the request is incomplete, else 504), with Envoy's bodies.
async fn stream_watchdog(
    activity: &Activity,
    stream_idle: Option<Duration>,
    request: Option<Duration>,
    started: Instant,
) -> (u16, &'static str, &'static str, bool) {
    if stream_idle.is_none() && request.is_none() {
        return std::future::pending().await;
    }
    loop {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(3600);
        if let Some(rt) = request {
            if !activity.request_done.get() {
                let d = started + rt;
                if now >= d {
                    return (408, "request timeout", "request_overall_timeout", true);
                }
                next = next.min(d);
            }
        }
        if let Some(it) = stream_idle {
            let d = activity.last.get() + it;
            if now >= d {
                return if activity.request_done.get() {
                    (504, "stream timeout", "stream_idle_timeout", false)
                } else {
                    (408, "stream timeout", "stream_idle_timeout", false)
                };
            }
            next = next.min(d);
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}

/// Path and host rewrites, `x-envoy-original-path`, `x-forwarded-host`.
fn rewrite_request(
    req: &mut Request<Incoming>,
    route: &Route,
    action: &ForwardAction,
    host: &Host,
    weighted: Option<&WeightedCluster>,
    suppress_envoy_headers: bool,
) {
    let no_host_rewrite =
        matches!(action.host_rewrite, HostRewrite::None) && weighted.is_none_or(|w| w.host_rewrite_literal.is_none());
    if action.prefix_rewrite.is_none() && action.regex_rewrite.is_none() && no_host_rewrite {
        return; // the common case: nothing to rewrite, nothing to copy
    }
    let original = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let (path, query) = match original.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (original.as_str(), None),
    };
    let mut new_path: Option<String> = None;
    if let Some(prefix) = &action.prefix_rewrite {
        new_path = Some(match &route.matcher.path {
            PathMatch::Prefix(m) | PathMatch::SeparatedPrefix(m) if path.len() >= m.len() => {
                format!("{prefix}{}", &path[m.len()..])
            }
            _ => prefix.clone(),
        });
    } else if let Some((re, sub)) = &action.regex_rewrite {
        new_path = Some(re.replace_all(path, regex_substitution(sub).as_str()).into_owned());
    }
    if let Some(p) = new_path {
        if !suppress_envoy_headers {
            if let Ok(v) = HeaderValue::from_str(&original) {
                req.headers_mut().insert(HeaderName::from_static("x-envoy-original-path"), v);
            }
        }
        let full = match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        set_path(req, &full);
    }
    let new_host: Option<String> = match (weighted.and_then(|w| w.host_rewrite_literal.clone()), &action.host_rewrite) {
        (Some(h), _) => Some(h),
        (None, HostRewrite::None) => None,
        (None, HostRewrite::Literal(h)) => Some(h.clone()),
        // Envoy rewrites to the host's hostname only; IP-only hosts (STATIC) keep the Host.
        (None, HostRewrite::Auto) => Some(host.hostname()).filter(|h| !h.is_empty()),
        (None, HostRewrite::Header(h)) => req.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned),
        (None, HostRewrite::PathRegex(re, sub)) => {
            Some(re.replace_all(path, regex_substitution(sub).as_str()).into_owned())
        }
    };
    if let Some(h) = new_host {
        if let Ok(v) = HeaderValue::from_str(&h) {
            if let Some(old) = req.headers_mut().insert(header::HOST, v) {
                if !suppress_envoy_headers {
                    req.headers_mut().insert(HeaderName::from_static("x-envoy-original-host"), old.clone());
                }
                if action.append_x_forwarded_host {
                    req.headers_mut().append(HeaderName::from_static("x-forwarded-host"), old);
                }
            }
        }
    }
}

/// Shape the request for the upstream codec: origin-form + `Host` for HTTP/1.1, absolute URI
/// (`:authority`) for HTTP/2.
fn to_upstream_request(
    req: Request<Incoming>,
    protocol: Protocol,
    activity: Option<Rc<Activity>>,
) -> Request<RequestBody> {
    let (mut parts, body) = req.into_parts();
    // Cloning the parsed `PathAndQuery` shares its bytes; re-parsing a copy allocated twice.
    let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(pq);
    match protocol {
        Protocol::Http1 => {
            parts.version = Version::HTTP_11;
        }
        Protocol::Http2 => {
            parts.version = Version::HTTP_2;
            // No usable authority (CONNECT without Host): keep the request's URI as it is.
            uri.authority = parts.headers.remove(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok());
            uri.scheme = Some(http::uri::Scheme::HTTP);
        }
    }
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
    let body = match activity {
        Some(a) => RequestBody::Tracked(body, a),
        None => RequestBody::Incoming(body),
    };
    Request::from_parts(parts, body)
}
