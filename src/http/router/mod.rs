//! The router filter (`envoy.filters.http.router`), the terminal filter of every HTTP filter
//! chain. Split as Envoy splits it:
//! - [`route_decision`]: pure functions from the matched route to a cluster and rewrites;
//! - [`upstream_request`]: one attempt to one host, with its timeouts and accounting;
//! - [`retry_state`]: whether to try again after an attempt;
//! - [`hash_policy`]: the request hash hash-based load balancers pick by;
//! - this file: the filter itself, which answers routes that need no upstream (no route,
//!   direct responses, redirects) and otherwise looks up the cluster, picks a host, shapes the
//!   request, runs the attempt and maps failures to Envoy's local replies.

pub mod hash_policy;
pub mod retry_state;
pub mod route_decision;
pub mod upstream_request;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pinion_xds::model::{ForwardAction, HeaderMutations, HostRewrite, RouteAction, RoutingPriority, UpstreamProtocol};

use super::body::{Activity, RequestBody, ResponseBody};
use super::connection_context::ConnCtx;
use super::header_mutation;
use super::local_reply::{reply, upstream_reset_body, NO_HEALTHY_UPSTREAM, UPSTREAM_TIMEOUT};
use super::path::set_path;
use super::redirect;
use super::replay_body::ReplayBody;
use super::request_headers::remove_hop_by_hop;
use super::route_table::{header_matches, Matched, RequestView};
use super::stream_info::{ResponseFlags, StreamInfo};
use crate::formatter::Context;
use crate::listener::HcmConfig;
use crate::upstream::conn_pool::{Overflow, Protocol, UpstreamError};
use crate::upstream::outlier_detection::LocalResult;
use crate::upstream::{Cluster, Host, HostStats, LbContext, RetryGuard};
use retry_state::{Outcome, ResetReason, RetryDecision, RetryState, DEFAULT_BASE_BACKOFF_MS};
use route_decision::{ClusterChoice, Rewrites, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS};
use upstream_request::{
    charges_host, AttemptFailure, AttemptTimeouts, StreamTimeout, StreamTimeoutKind, Target, UpstreamGuard,
};

// Names used on every request, built at compile time instead of validated per use.
const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
const X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// Header mutation levels that apply to a route, least specific first.
pub struct MutationLevels<'a> {
    /// Route configuration level.
    pub route_config: &'a HeaderMutations,
    /// Virtual host level.
    pub vhost: &'a HeaderMutations,
    /// Route level.
    pub route: &'a HeaderMutations,
    /// The weighted cluster chosen, if any.
    pub weighted: Option<&'a HeaderMutations>,
}

impl<'a> MutationLevels<'a> {
    /// The levels of a matched route (and its weighted cluster, if one was chosen).
    pub fn of(matched: &Matched<'a>, cluster: Option<&ClusterChoice<'a>>) -> Self {
        MutationLevels {
            route_config: &matched.table.config.headers,
            vhost: &matched.vhost.headers,
            route: &matched.route.headers,
            weighted: cluster.and_then(|c| c.weighted).map(|w| &w.headers),
        }
    }

    /// Envoy's evaluation order: most specific first (so the route config has the last word)
    /// unless `most_specific_header_mutations_wins`.
    fn ordered(&self, most_specific_wins: bool) -> impl Iterator<Item = &'a HeaderMutations> + 'a {
        // No allocation: a fixed array, reversed by index when the most specific level wins.
        let levels = [self.weighted, Some(self.route), Some(self.vhost), Some(self.route_config)];
        (0..4).filter_map(move |i| levels[if most_specific_wins { 3 - i } else { i }]).filter(|m| !m.is_empty())
    }

    /// Apply the response-side mutations of every level.
    pub fn apply_to_response(&self, resp: &mut Response<ResponseBody>, info: &StreamInfo, request_headers: &HeaderMap) {
        if self.ordered(false).all(|m| m.response_headers_to_add.is_empty() && m.response_headers_to_remove.is_empty())
        {
            return;
        }
        let response_snapshot = resp.headers().clone();
        let ctx = Context {
            info,
            request_headers: Some(request_headers),
            response_headers: Some(&response_snapshot),
            bytes_sent: 0,
        };
        for m in self.ordered(false) {
            header_mutation::apply(
                resp.headers_mut(),
                &m.response_headers_to_add,
                &m.response_headers_to_remove,
                Some(&ctx),
            );
        }
    }
}

/// A phase either continues with a value or ends the request with a response; responses are
/// moved, not boxed, since this is the hot path and the `Err` side is the rare one.
pub type Phase<T> = Result<T, Response<ResponseBody>>;

/// The router's answer: a response, and the upstream accounting to settle when its body ends.
pub type Routed = (Response<ResponseBody>, Option<UpstreamGuard>);

/// The router filter's decode step for a matched route: local answers, or upstream.
#[allow(clippy::result_large_err)]
pub async fn decode_headers(
    ctx: &Rc<ConnCtx>,
    req: Request<Incoming>,
    info: &mut StreamInfo,
    grpc: bool,
    matched: &Matched<'_>,
    cluster: Option<&ClusterChoice<'_>>,
    is_upgrade: bool,
) -> Phase<Routed> {
    let hcm = &ctx.hcm;
    let route = matched.route;
    let levels = MutationLevels::of(matched, cluster);
    match &route.action {
        RouteAction::DirectResponse(dr) => {
            hcm.stats.rq_direct_response.inc();
            info.response_code_details = "direct_response";
            let mut resp = match &dr.body {
                Some(b) => {
                    let mut r = Response::new(ResponseBody::full(b.clone()));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                    r
                }
                None => Response::new(ResponseBody::empty()),
            };
            *resp.status_mut() = StatusCode::from_u16(dr.status).unwrap_or(StatusCode::OK);
            levels.apply_to_response(&mut resp, info, req.headers());
            Ok((resp, None))
        }
        RouteAction::Redirect(rd) => {
            hcm.stats.rq_redirect.inc();
            info.response_code_details = "direct_response";
            let authority = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let location = redirect::route_location(rd, authority, path_and_query, &route.matcher.path, ctx.tls);
            let status = StatusCode::from_u16(rd.response_code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut resp = redirect::response(status, &location);
            levels.apply_to_response(&mut resp, info, req.headers());
            Ok((resp, None))
        }
        RouteAction::NonForwarding => Err(no_route(ctx, info, grpc, "route_not_found")),
        RouteAction::Forward(action) => {
            // A forwarding route always has its cluster chosen when it is matched.
            let Some(cluster) = cluster else { return Err(no_route(ctx, info, grpc, "route_not_found")) };
            // Not boxed: the whole request future is boxed once by the service.
            forward(ctx, req, info, grpc, matched, &levels, action, cluster, is_upgrade).await
        }
    }
}

/// No route (or no route table): 404 `NR`, as Envoy's router answers.
pub fn no_route(ctx: &ConnCtx, info: &mut StreamInfo, grpc: bool, details: &'static str) -> Response<ResponseBody> {
    ctx.hcm.stats.no_route.inc();
    info.flags.insert(ResponseFlags::NO_ROUTE);
    reply(404, "", grpc, info, details)
}

/// Forward a routed request upstream.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
async fn forward(
    ctx: &Rc<ConnCtx>,
    mut req: Request<Incoming>,
    info: &mut StreamInfo,
    grpc: bool,
    matched: &Matched<'_>,
    levels: &MutationLevels<'_>,
    action: &ForwardAction,
    choice: &ClusterChoice<'_>,
    is_upgrade: bool,
) -> Phase<Routed> {
    let hcm = &ctx.hcm;

    // Phase: upstream_cluster.
    let snapshot = ctx.worker.snapshot.load();
    let Some(mut cluster) = snapshot.clusters.get(choice.name.as_ref()).cloned() else {
        hcm.stats.no_cluster.inc();
        info.flags.insert(ResponseFlags::NO_CLUSTER);
        let mut resp = reply(action.cluster_not_found_response_code, "", grpc, info, "cluster_not_found");
        levels.apply_to_response(&mut resp, info, req.headers());
        return Err(resp);
    };
    drop(snapshot);
    if !hcm.access_logs.is_empty() {
        info.upstream_cluster = Some(cluster.config.name.as_str().into());
    }

    // Phase: upstream_peer. The request hash is computed once, before route mutations and
    // rewrites (as Envoy picks the host first), and kept for the retries' picks.
    let mut set_cookies = Vec::new();
    let lb_ctx = lb_context(ctx, &req, info, action, &cluster, &mut set_cookies);
    let Some(mut host) = cluster.choose_host_with(&lb_ctx) else {
        let mut resp = no_healthy_upstream(&cluster, info, grpc);
        levels.apply_to_response(&mut resp, info, req.headers());
        return Err(resp);
    };
    info.upstream_host = Some(host.address);

    // Phase: upstream_request (timeouts, rewrites and headers, retry state), in Envoy's order:
    // the timeout headers are read before the route's header mutations, the retry headers
    // after them (so a route can add `x-envoy-retry-on`, and a client cannot: the HCM strips
    // them from external requests).
    let policy = route_decision::retry_policy(action, matched.vhost);
    let timeouts = route_decision::final_timeouts(
        action.timeout,
        policy,
        req.headers_mut(),
        hcm.router.respect_expected_rq_timeout,
    );
    if !hcm.router.suppress_envoy_headers {
        if let Some(ms) = route_decision::expected_timeout_ms(&timeouts, Duration::ZERO) {
            req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, crate::http::numeric_header(ms));
        }
    }
    let vhost = matched.vhost;
    if vhost.include_request_attempt_count {
        req.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT, crate::http::numeric_header(1));
    }
    // Header values with `%REQ(..)%`-style commands read the downstream request headers as
    // received; copy them only when some mutation level actually formats.
    let formats = levels
        .ordered(false)
        .any(|m| m.request_headers_to_add.iter().chain(&m.response_headers_to_add).any(|h| h.has_formatter));
    let downstream_headers = if formats { req.headers().clone() } else { HeaderMap::new() };
    // Only `auto_host_rewrite` reads the host's name (a copy: it can change with EDS).
    let hostname = if matches!(action.host_rewrite, HostRewrite::Auto) { host.hostname() } else { String::new() };
    let rewrites = route_decision::rewrites(
        matched.route,
        action,
        choice.weighted,
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.headers(),
        &hostname,
    );
    if !rewrites.is_empty() {
        apply_rewrites(&mut req, rewrites, action.append_x_forwarded_host, hcm.router.suppress_envoy_headers);
    }
    {
        let fctx = Context { info, request_headers: Some(&downstream_headers), response_headers: None, bytes_sent: 0 };
        for m in levels.ordered(matched.table.config.most_specific_header_mutations_wins) {
            header_mutation::apply(
                req.headers_mut(),
                &m.request_headers_to_add,
                &m.request_headers_to_remove,
                Some(&fctx),
            );
        }
    }
    let mut retry = if is_upgrade {
        // An upgraded stream cannot be replayed: no retries (the headers are consumed all the same).
        retry_state::consume_retry_headers(req.headers_mut());
        None
    } else {
        // The pseudo-headers `retriable_request_headers` may match (copied only for them).
        let pseudo = policy
            .filter(|p| !p.retriable_request_headers.is_empty())
            .map(|_| (req.method().clone(), req.uri().clone()));
        RetryState::create(
            policy,
            req.headers_mut(),
            |m, headers| {
                let Some((method, uri)) = &pseudo else { return false };
                let authority = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
                let view = RequestView {
                    authority,
                    path: uri.path(),
                    query: uri.query(),
                    method,
                    headers,
                    is_grpc: grpc,
                    random: Default::default(),
                };
                header_matches(m, &view)
            },
            || crate::runtime::snapshot().get_integer("upstream.base_retry_backoff_ms", DEFAULT_BASE_BACKOFF_MS),
            rand::rng,
        )
    };
    let protocol = upstream_protocol(cluster.config.protocol, req.version(), is_upgrade);
    let downstream_version = req.version();
    let on_downstream_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    // Stream timeouts watch the request body's progress; a bodyless request is done already.
    // A route's `idle_timeout` replaces the HCM's `stream_idle_timeout` (0 disables it).
    let cfg = &hcm.config;
    let stream_idle = action.idle_timeout.unwrap_or(cfg.stream_idle_timeout);
    let stream_timeouts = stream_idle.is_some() || cfg.request_timeout.is_some() || info.stream_deadline.is_some();
    // Only a streaming body needs shared progress tracking (and its allocation).
    let tracked =
        (stream_timeouts && !http_body::Body::is_end_stream(req.body())).then(|| Rc::new(Activity::new(false)));
    let bodyless = Activity::new(true);
    let mut upstream_req = Some(to_upstream_request(req, protocol, tracked.clone()));
    let activity: &Activity = tracked.as_deref().unwrap_or(&bodyless);

    // With retries possible, the request head is kept for the next attempts and the body made
    // replayable. Without, the request goes out as it is: nothing is copied or kept.
    let mut replay: Option<ReplayBody<RequestBody>> = None;
    let mut head: Option<http::request::Parts> = None;
    if retry.as_ref().is_some_and(|r| r.enabled()) {
        if let Some(r) = upstream_req.take() {
            let (parts, body) = r.into_parts();
            if !http_body::Body::is_end_stream(&body) {
                let limit = route_decision::retry_buffer_limit(
                    ctx.listener.config.per_connection_buffer_limit_bytes,
                    matched.route,
                    vhost,
                );
                // The router keeps this first handle for `retry()`; attempts get the others.
                replay = Some(ReplayBody::new(body, limit, Some(cluster.stats.retry_or_shadow_abandoned.clone())));
            }
            head = Some(parts);
        }
    }

    // Exchange: attempts until one is final (Envoy's `UpstreamRequest`s, one at a time).
    let started = std::time::Instant::now();
    let route_deadline = timeouts.global.map(|t| tokio::time::Instant::now() + t);
    let mut attempt: u32 = 1;
    // Some attempt got a connection (Envoy keeps `upstream_request_started_` sticky).
    let mut request_started = false;
    let attempt_count_in_response = vhost.include_attempt_count_in_response;
    // The retry circuit breaker's slot of the retry under way, from the decision to retry
    // until the next decision (or the request's end), as Envoy's `RetryStateImpl` holds it.
    let mut retry_slot: Option<RetryGuard> = None;
    let (mut resp, mut guard) = loop {
        info.attempt_count = attempt;
        info.upstream_host = Some(host.address);
        if let Some(r) = retry.as_mut() {
            r.on_host_attempted(host.address);
        }
        let req = match (upstream_req.take(), &head) {
            (Some(r), _) => r,
            (None, Some(parts)) => {
                let mut parts = parts.clone();
                if attempt > 1 {
                    if vhost.include_request_attempt_count {
                        parts.headers.insert(X_ENVOY_ATTEMPT_COUNT, crate::http::numeric_header(attempt.into()));
                    }
                    if !hcm.router.suppress_envoy_headers {
                        if let Some(ms) = route_decision::expected_timeout_ms(&timeouts, started.elapsed()) {
                            parts.headers.insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, crate::http::numeric_header(ms));
                        }
                    }
                }
                let body = match &replay {
                    Some(r) => match r.retry() {
                        Some(b) => RequestBody::Replay(b),
                        // Checked before every retry: only reachable for the first attempt,
                        // which has read nothing yet.
                        None => RequestBody::empty(),
                    },
                    None => RequestBody::empty(),
                };
                Request::from_parts(parts, body)
            }
            (None, None) => unreachable!("each attempt has a request"),
        };
        let connected = Cell::new(false);
        let target = Target { cluster: &cluster, host: &host, protocol, priority: action.priority };
        let outcome = upstream_request::send(
            &ctx.worker.pools,
            target,
            is_upgrade,
            req,
            AttemptTimeouts {
                route_deadline,
                per_try: timeouts.per_try,
                per_try_idle: timeouts.per_try_idle,
                connected: &connected,
                replay: replay.as_ref(),
                stream_idle,
                request: cfg.request_timeout,
                started: info.start,
                max_stream: info.stream_deadline,
                activity,
            },
        )
        .await;
        request_started |= connected.get();
        // A body that outgrew the replay limit ends the retries (Envoy drops the retry state).
        if replay.as_ref().is_some_and(|r| r.is_capped()) {
            retry = None;
        }
        // The retry this attempt was (if any) is over: its circuit breaker slot goes before
        // the next one is asked for (Envoy's `resetRetry` at the top of `shouldRetry`).
        drop(retry_slot.take());
        let admit = || admit_retry(&cluster, action.priority, &mut retry_slot);
        let decision = match (&outcome, retry.as_mut()) {
            (_, None) => RetryDecision::No { after_retry: false },
            (Ok((resp, _)), Some(r)) => {
                r.should_retry(&Outcome::Response { status: resp.status().as_u16(), headers: resp.headers() }, admit)
            }
            (Err(f), Some(r)) => match reset_reason(f) {
                Some(reason) => r.should_retry(&Outcome::Reset { reason, request_started }, admit),
                // The route timeout and the HCM's stream timeouts end the request.
                None => RetryDecision::No { after_retry: false },
            },
        };
        let backoff = match decision {
            RetryDecision::Retry(b) => b,
            RetryDecision::No { after_retry } => {
                if after_retry {
                    cluster.stats.upstream_rq_retry_success.inc();
                }
                match outcome {
                    Ok(r) => break r,
                    Err(failure) => {
                        return Err(attempt_failed(
                            ctx,
                            info,
                            grpc,
                            levels,
                            &downstream_headers,
                            &cluster,
                            &host,
                            failure,
                            attempt,
                            attempt_count_in_response,
                        ));
                    }
                }
            }
            RetryDecision::LimitExceeded | RetryDecision::Overflow => {
                if decision == RetryDecision::LimitExceeded {
                    cluster.stats.upstream_rq_retry_limit_exceeded.inc();
                    info.flags.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                } else {
                    // `upstream_rq_retry_overflow` was counted by `Cluster::try_retry`.
                    info.flags.insert(ResponseFlags::UPSTREAM_OVERFLOW);
                }
                match outcome {
                    Ok(r) => break r,
                    Err(failure) => {
                        return Err(attempt_failed(
                            ctx,
                            info,
                            grpc,
                            levels,
                            &downstream_headers,
                            &cluster,
                            &host,
                            failure,
                            attempt,
                            attempt_count_in_response,
                        ));
                    }
                }
            }
        };
        // Retry: settle this attempt, wait, pick a host, go again.
        match outcome {
            Ok((resp, guard)) => {
                // The response and its unread body are dropped: the stream is reset, as Envoy
                // resets it, and a retried response counts under `retry.` only.
                cluster.stats.record_retried_status(resp.status().as_u16());
                guard.retried();
                drop(resp);
            }
            Err(failure) => {
                // Envoy's `maybeRetryReset`: a retried failure is one error for its host.
                if charges_host(&failure) || matches!(failure, AttemptFailure::UpstreamMaxStreamDuration { .. }) {
                    HostStats::inc(&host.stats.rq_error);
                }
                tracing::debug!(cluster = %cluster.config.name, host = %host.address, ?failure, "retrying");
            }
        }
        let stream_timers = (stream_idle, cfg.request_timeout, info.stream_deadline);
        if let Err(stop) = backoff_wait(backoff.delay, route_deadline, activity, stream_timers, info.start).await {
            let mut resp = match stop {
                Some(t) => stream_timeout_reply(hcm, info, grpc, t),
                // The route timeout ran out between attempts: no attempt to charge.
                None => {
                    info.flags.insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    reply(504, UPSTREAM_TIMEOUT, grpc, info, "response_timeout")
                }
            };
            finish_local_reply(&mut resp, info, levels, &downstream_headers, attempt, attempt_count_in_response);
            return Err(resp);
        }
        // Envoy 1.40 counts the retry and its backoff kind when the backoff is over and the
        // retry goes out (a retry cut short by a timeout while it waits counts neither); the
        // retry circuit breaker's slot is held from the decision on.
        cluster.stats.upstream_rq_retry.inc();
        if backoff.rate_limited {
            cluster.stats.upstream_rq_retry_backoff_ratelimited.inc();
        } else {
            cluster.stats.upstream_rq_retry_backoff_exponential.inc();
        }
        // The cluster may have changed or gone (CDS) while waiting, as Envoy rechecks.
        let current = ctx.worker.snapshot.load().clusters.get(cluster.config.name.as_str()).cloned();
        let next = current.and_then(|c| {
            let h = retry.as_ref().and_then(|r| pick_retry_host(&c, r, lb_ctx));
            h.map(|h| (c, h))
        });
        let Some((c, h)) = next else {
            let mut resp = no_healthy_upstream(&cluster, info, grpc);
            finish_local_reply(&mut resp, info, levels, &downstream_headers, attempt, attempt_count_in_response);
            return Err(resp);
        };
        cluster = c;
        host = h;
        attempt += 1;
    };
    let service_time = started.elapsed();
    info.upstream_service_time = Some(service_time);

    // Phase: upstream_response.
    let status = resp.status();
    cluster.stats.record_status(status.as_u16());
    guard.charge_response(status.as_u16(), grpc, resp.headers());
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(resp.headers_mut(), switching);
    // Cookies the hash policy generated go on the upstream response (not on local replies),
    // as Envoy's router adds them.
    for c in set_cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    // Envoy leaves the service time off upgrade (101) responses.
    if !hcm.router.suppress_envoy_headers && !switching {
        resp.headers_mut()
            .insert(X_ENVOY_UPSTREAM_SERVICE_TIME, crate::http::numeric_header(service_time.as_millis() as u64));
    }
    if attempt_count_in_response {
        // Not subject to `suppress_envoy_headers`, as in Envoy.
        resp.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT, crate::http::numeric_header(attempt.into()));
    }
    if switching {
        if let Some(down) = on_downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            // The stream duration limit also ends a tunnel (Envoy resets the stream).
            let deadline = info.stream_deadline.map(tokio::time::Instant::from_std);
            let max_duration_reached = hcm.stats.downstream_rq_max_duration_reached.clone();
            tokio::task::spawn_local(async move {
                match tokio::join!(down, up) {
                    (Ok(d), Ok(u)) => {
                        let mut d = TokioIo::new(d);
                        let mut u = TokioIo::new(u);
                        let copy = tokio::io::copy_bidirectional(&mut d, &mut u);
                        match deadline {
                            Some(at) => {
                                if tokio::time::timeout_at(at, copy).await.is_err() {
                                    max_duration_reached.inc();
                                }
                            }
                            None => {
                                let _ = copy.await;
                            }
                        }
                    }
                    (d, u) => tracing::debug!(down_ok = d.is_ok(), up_ok = u.is_ok(), "upgrade failed"),
                }
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    parts.version = if downstream_version == Version::HTTP_2 { Version::HTTP_2 } else { Version::HTTP_11 };
    let mut resp = Response::from_parts(parts, ResponseBody::upstream(body));
    if let Some(after) = timeouts.per_try_idle {
        // The per-try idle timer keeps running while the body streams; it then ends the stream.
        // Like before the headers, the timeout is reported to outlier detection (Envoy's
        // `onPerTryTimeoutCommon`: a local origin timeout with the 504 timeout status).
        let counter = cluster.stats.upstream_rq_per_try_idle_timeout.clone();
        let outlier = cluster.outlier().cloned();
        let host = host.clone();
        let local_reset = guard.local_reset_flag();
        resp.body_mut().set_idle_timeout(
            after,
            Box::new(move || {
                local_reset.set(true);
                counter.inc();
                HostStats::inc(&host.stats.rq_timeout);
                if let Some(od) = outlier {
                    od.put_local(&host, LocalResult::Timeout, Some(504));
                }
            }),
        );
    }
    if let Some(at) = guard.max_stream_deadline() {
        // The cluster's `max_stream_duration` keeps running while the body streams.
        let counter = cluster.stats.upstream_rq_max_duration_reached.clone();
        let local_reset = guard.local_reset_flag();
        let cut = guard.max_stream_cut_flag();
        resp.body_mut().set_deadline(
            at,
            Box::new(move || {
                local_reset.set(true);
                cut.set(true);
                counter.inc();
            }),
        );
    }
    levels.apply_to_response(&mut resp, info, &downstream_headers);
    Ok((resp, Some(guard)))
}

/// The single place a retry is admitted, after the retry limit check: the cluster's retry
/// circuit breaker at the route's priority (`max_retries`, or the retry budget) reserves a
/// slot into `slot` (Envoy's `retries().canCreate()` then `inc()`), or refuses, and then
/// [`Cluster::try_retry`] counts `upstream_rq_retry_overflow` (once: the router does not).
/// The caller holds the slot while the retry waits out its backoff and runs, and drops it
/// at the next retry decision or when the request ends.
fn admit_retry(cluster: &Cluster, priority: RoutingPriority, slot: &mut Option<RetryGuard>) -> bool {
    *slot = cluster.try_retry(priority);
    slot.is_some()
}

/// The reset reason a failed attempt gives the retry conditions; `None` for the failures
/// that end the request whatever the policy (the route timeout, the HCM's stream timeouts).
fn reset_reason(f: &AttemptFailure) -> Option<ResetReason> {
    match f {
        AttemptFailure::Upstream(
            UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_),
        ) => Some(ResetReason::ConnectionFailure),
        AttemptFailure::Upstream(UpstreamError::Reset(e)) => {
            let refused = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) == Some(h2::Reason::REFUSED_STREAM);
            Some(if refused { ResetReason::RefusedStream } else { ResetReason::Other })
        }
        AttemptFailure::Upstream(UpstreamError::Handshake(_)) => Some(ResetReason::Other),
        // A circuit breaker's refusal (Envoy's `Overflow` reset) is never retried, and a
        // host without a pool is answered as no healthy upstream at once.
        AttemptFailure::Upstream(UpstreamError::Overflow(_) | UpstreamError::PoolOverflow) => None,
        // Envoy resets the attempt itself (a local reset).
        AttemptFailure::PerTryTimeout | AttemptFailure::PerTryIdleTimeout => Some(ResetReason::Other),
        AttemptFailure::RouteTimeout | AttemptFailure::StreamTimeout(_) => None,
        // Envoy resets the stream itself (a local reset), retried as such.
        AttemptFailure::UpstreamMaxStreamDuration { .. } => Some(ResetReason::Other),
    }
}

/// A retry's host: up to `host_selection_retry_max_attempts` more picks while the retry host
/// predicate rejects the pick, then the last pick (Envoy's `LoadBalancerBase::chooseHost`).
/// Each pick is a new attempt for hash-based balancers, which then move off the key's host.
fn pick_retry_host<R: rand::RngCore>(
    cluster: &Cluster,
    retry: &RetryState<'_, R>,
    lb_ctx: LbContext,
) -> Option<Arc<Host>> {
    let mut last = None;
    for attempt in 0..retry.host_selection_picks() {
        let h = cluster.choose_host_with(&lb_ctx.at_attempt(attempt))?;
        if !retry.should_select_another_host(h.address) {
            return Some(h);
        }
        last = Some(h);
    }
    last
}

/// The load-balancing context of a request: its hash, when the cluster balances by hash and
/// the route has a hash policy (generated cookies go into `set_cookies`).
fn lb_context(
    ctx: &ConnCtx,
    req: &Request<Incoming>,
    info: &StreamInfo,
    action: &ForwardAction,
    cluster: &Cluster,
    set_cookies: &mut Vec<HeaderValue>,
) -> LbContext {
    if action.hash_policy.is_empty() || !cluster.lb.uses_hash() {
        return LbContext::default();
    }
    let input = hash_policy::HashInput {
        headers: req.headers(),
        method: req.method(),
        uri: req.uri(),
        client_ip: info.downstream_client_ip.unwrap_or(ctx.peer.ip()),
        peer: ctx.peer,
        local: ctx.local,
    };
    LbContext { hash: hash_policy::generate(&action.hash_policy, &input, set_cookies), attempt: 0 }
}

/// Wait out a retry's backoff, unless the route timeout (`Err(None)`) or an HCM stream
/// timeout (`Err(Some)`; `stream_timers`: `stream_idle_timeout`, `request_timeout` and the
/// stream duration deadline) ends the request first.
async fn backoff_wait(
    delay: Duration,
    route_deadline: Option<tokio::time::Instant>,
    activity: &Activity,
    stream_timers: (Option<Duration>, Option<Duration>, Option<std::time::Instant>),
    started: std::time::Instant,
) -> Result<(), Option<StreamTimeout>> {
    let (stream_idle, request, max_stream) = stream_timers;
    let wake = tokio::time::Instant::now() + delay;
    let (until, timed_out) = match route_deadline {
        Some(d) if d <= wake => (d, true),
        _ => (wake, false),
    };
    let watchdog = upstream_request::stream_watchdog(activity, stream_idle, request, started, max_stream);
    tokio::select! {
        biased;
        t = watchdog => Err(Some(t)),
        _ = tokio::time::sleep_until(until) => if timed_out { Err(None) } else { Ok(()) },
    }
}

/// The local reply of an HCM stream timeout (408 while the request is still arriving, else
/// 504), with its counter.
fn stream_timeout_reply(
    hcm: &HcmConfig,
    info: &mut StreamInfo,
    grpc: bool,
    t: StreamTimeout,
) -> Response<ResponseBody> {
    match t.kind {
        StreamTimeoutKind::Request => hcm.stats.downstream_rq_timeout.inc(),
        StreamTimeoutKind::Idle => hcm.stats.downstream_rq_idle_timeout.inc(),
        StreamTimeoutKind::MaxDuration => {
            return crate::http::max_stream_duration::timeout_reply(&hcm.stats, info, grpc, t.status == 504)
        }
    }
    let mut resp = reply(t.status, t.body, grpc, info, t.details);
    if t.status == 408 {
        // Envoy closes the connection after a downstream timeout.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// What every local reply of the upstream phase gets: `x-envoy-attempt-count` when the
/// virtual host asks for it (before the response mutations, as Envoy's `modify_headers`),
/// then the response header mutations.
fn finish_local_reply(
    resp: &mut Response<ResponseBody>,
    info: &StreamInfo,
    levels: &MutationLevels<'_>,
    downstream_headers: &HeaderMap,
    attempt: u32,
    attempt_count_in_response: bool,
) {
    if attempt_count_in_response {
        resp.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT, crate::http::numeric_header(attempt.into()));
    }
    levels.apply_to_response(resp, info, downstream_headers);
}

/// The local reply for the final attempt's failure (Envoy's `onUpstreamAbort` and friends).
#[allow(clippy::too_many_arguments)]
fn attempt_failed(
    ctx: &ConnCtx,
    info: &mut StreamInfo,
    grpc: bool,
    levels: &MutationLevels<'_>,
    downstream_headers: &HeaderMap,
    cluster: &Cluster,
    host: &Host,
    failure: AttemptFailure,
    attempt: u32,
    attempt_count_in_response: bool,
) -> Response<ResponseBody> {
    // Envoy's `chargeUpstreamAbort`: the final failure is one error for its host.
    if charges_host(&failure) {
        HostStats::inc(&host.stats.rq_error);
    }
    let mut resp = match failure {
        AttemptFailure::StreamTimeout(t) => stream_timeout_reply(&ctx.hcm, info, grpc, t),
        // Envoy's `onStreamMaxDurationReached`: a local reply, no upstream code charged.
        AttemptFailure::UpstreamMaxStreamDuration { request_done } => {
            info.flags.insert(ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED);
            let status = if request_done { 504 } else { 408 };
            let mut resp = reply(
                status,
                "upstream max stream duration reached",
                grpc,
                info,
                "upstream_max_stream_duration_reached",
            );
            if status == 408 {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
        AttemptFailure::RouteTimeout => {
            info.flags.insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            cluster.stats.record_status(504);
            reply(504, UPSTREAM_TIMEOUT, grpc, info, "response_timeout")
        }
        AttemptFailure::PerTryTimeout | AttemptFailure::PerTryIdleTimeout => {
            info.flags.insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            cluster.stats.record_status(504);
            let details = if matches!(failure, AttemptFailure::PerTryTimeout) {
                "upstream_per_try_timeout"
            } else {
                "upstream_per_try_idle_timeout"
            };
            reply(504, UPSTREAM_TIMEOUT, grpc, info, details)
        }
        // No pool for the host (max_connection_pools): Envoy's router finds no connection
        // pool and answers as for no healthy upstream.
        AttemptFailure::Upstream(UpstreamError::PoolOverflow) => no_healthy_upstream(cluster, info, grpc),
        AttemptFailure::Upstream(e) => {
            let (flag, details) = reset_flag_and_details(&e);
            tracing::debug!(cluster = %cluster.config.name, host = %host.address, error = ?e, "upstream request failed");
            info.flags.insert(flag);
            cluster.stats.record_status(503);
            let mut resp = reply(503, &upstream_reset_body(&e.to_string(), attempt > 1), grpc, info, details);
            if let UpstreamError::Overflow(kind) = e {
                // A request refused while pending never had a host (Envoy logs `-`).
                if kind == Overflow::Pending {
                    info.upstream_host = None;
                }
                // A circuit breaker's refusal is "dropped": Envoy says so downstream.
                if !ctx.hcm.router.suppress_envoy_headers {
                    resp.headers_mut().insert(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
                }
            }
            resp
        }
    };
    finish_local_reply(&mut resp, info, levels, downstream_headers, attempt, attempt_count_in_response);
    resp
}

/// Envoy's `sendNoHealthyUpstreamResponse`: 503 `UH`, counted as the cluster's 503.
fn no_healthy_upstream(cluster: &Cluster, info: &mut StreamInfo, grpc: bool) -> Response<ResponseBody> {
    info.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
    cluster.stats.record_status(503);
    reply(503, NO_HEALTHY_UPSTREAM, grpc, info, "no_healthy_upstream")
}

/// The upstream codec: HTTP/1.1 for upgrades, else the cluster's, or the downstream's.
fn upstream_protocol(cluster: UpstreamProtocol, downstream: Version, is_upgrade: bool) -> Protocol {
    match cluster {
        _ if is_upgrade => Protocol::Http1,
        UpstreamProtocol::Http1 => Protocol::Http1,
        UpstreamProtocol::Http2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream if downstream == Version::HTTP_2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream => Protocol::Http1,
    }
}

/// Envoy's response flag and details for an upstream failure before response headers.
fn reset_flag_and_details(e: &UpstreamError) -> (ResponseFlags, &'static str) {
    match e {
        UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_) => {
            (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, "upstream_reset_before_response_started{connection_failure}")
        }
        UpstreamError::Handshake(_) => {
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "upstream_reset_before_response_started{protocol_error}")
        }
        UpstreamError::Reset(_) => (
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "upstream_reset_before_response_started{connection_termination}",
        ),
        UpstreamError::Overflow(_) => {
            (ResponseFlags::UPSTREAM_OVERFLOW, "upstream_reset_before_response_started{overflow}")
        }
        // Answered as no healthy upstream before this is asked; kept total for the match.
        UpstreamError::PoolOverflow => (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
    }
}

/// Apply the decided rewrites: the path (keeping `x-envoy-original-path`) and `Host`
/// (keeping `x-envoy-original-host`, and `x-forwarded-host` when asked).
fn apply_rewrites(req: &mut Request<Incoming>, rewrites: Rewrites, append_xfh: bool, suppress_envoy_headers: bool) {
    if let Some(pq) = rewrites.path_and_query {
        if !suppress_envoy_headers {
            if let Some(original) = req.uri().path_and_query().and_then(|p| HeaderValue::from_str(p.as_str()).ok()) {
                req.headers_mut().insert(X_ENVOY_ORIGINAL_PATH, original);
            }
        }
        set_path(req, &pq);
    }
    if let Some(h) = rewrites.host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        if let Some(old) = req.headers_mut().insert(header::HOST, h) {
            if !suppress_envoy_headers {
                req.headers_mut().insert(X_ENVOY_ORIGINAL_HOST, old.clone());
            }
            if append_xfh {
                req.headers_mut().append(X_FORWARDED_HOST, old);
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
            // Envoy's HTTP/1 codec frames a headers-only request of a method that may carry a
            // body with an explicit `content-length: 0` (`requestShouldHaveNoBody` lists the
            // ones that may not: GET, HEAD, DELETE, TRACE, CONNECT).
            let may_have_body =
                !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT);
            if may_have_body
                && http_body::Body::is_end_stream(&body)
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
            {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
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
