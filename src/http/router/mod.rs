//! The router filter (`envoy.filters.http.router`), the terminal filter of every HTTP filter
//! chain. Split as Envoy splits it:
//! - [`route_decision`]: pure functions from the matched route to a cluster and rewrites;
//! - [`upstream_request`]: one attempt to one host, with its timeouts and accounting;
//! - [`retry_state`]: whether to try again after an attempt;
//! - this file: the filter itself, which answers routes that need no upstream (no route,
//!   direct responses, redirects) and otherwise looks up the cluster, picks a host, shapes the
//!   request, runs the attempt and maps failures to Envoy's local replies.

pub mod retry_state;
pub mod route_decision;
pub mod upstream_request;

use std::rc::Rc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pinion_xds::model::{ForwardAction, HeaderMutations, HostRewrite, RouteAction, UpstreamProtocol};

use super::body::{Activity, RequestBody, ResponseBody};
use super::connection_context::ConnCtx;
use super::header_mutation;
use super::local_reply::{reply, upstream_reset_body, NO_HEALTHY_UPSTREAM, UPSTREAM_TIMEOUT};
use super::path::set_path;
use super::redirect;
use super::request_headers::remove_hop_by_hop;
use super::route_table::Matched;
use super::stream_info::{ResponseFlags, StreamInfo};
use crate::formatter::Context;
use crate::upstream::conn_pool::{Overflow, Protocol, UpstreamError};
use crate::upstream::Cluster;
use retry_state::{RetryDecision, RetryState};
use route_decision::{ClusterChoice, Rewrites};
use upstream_request::{AttemptFailure, AttemptTimeouts, Target, UpstreamGuard};

// Names used on every request, built at compile time instead of validated per use.
const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
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
    let Some(cluster) = snapshot.clusters.get(choice.name.as_ref()).cloned() else {
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

    // Phase: upstream_peer.
    let Some(host) = cluster.choose_host() else {
        let mut resp = no_healthy_upstream(&cluster, info, grpc);
        levels.apply_to_response(&mut resp, info, req.headers());
        return Err(resp);
    };
    info.upstream_host = Some(host.address);

    // Phase: upstream_request (rewrites and headers).
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
    if let Some(t) = action.timeout {
        if !hcm.router.suppress_envoy_headers {
            req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, crate::http::numeric_header(t.as_millis() as u64));
        }
    }
    let protocol = upstream_protocol(cluster.config.protocol, req.version(), is_upgrade);
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

    // Exchange: one attempt (the request body streams, so it cannot be replayed yet).
    let mut retry = RetryState::none();
    let started = std::time::Instant::now();
    let target = Target { cluster: &cluster, host: &host, protocol, priority: action.priority };
    let attempt = upstream_request::send(
        &ctx.worker.pools,
        target,
        is_upgrade,
        upstream_req,
        AttemptTimeouts {
            route: action.timeout,
            stream_idle: cfg.stream_idle_timeout,
            request: cfg.request_timeout,
            started: info.start,
            activity,
        },
    )
    .await;
    let (mut resp, guard) = match attempt {
        Ok(r) => r,
        Err(failure) => {
            let RetryDecision::NoRetry = retry.on_failure(&failure);
            let mut resp = match failure {
                AttemptFailure::StreamTimeout(t) => {
                    if t.is_request_timeout {
                        hcm.stats.downstream_rq_timeout.inc();
                    } else {
                        hcm.stats.downstream_rq_idle_timeout.inc();
                    }
                    let mut resp = reply(t.status, t.body, grpc, info, t.details);
                    if t.status == 408 {
                        // Envoy closes the connection after a downstream timeout.
                        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    resp
                }
                AttemptFailure::RouteTimeout => {
                    info.flags.insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    cluster.stats.record_status(504);
                    reply(504, UPSTREAM_TIMEOUT, grpc, info, "upstream_response_timeout")
                }
                // No pool for the host (max_connection_pools): Envoy's router finds no
                // connection pool and answers as for no healthy upstream.
                AttemptFailure::Upstream(UpstreamError::PoolOverflow) => no_healthy_upstream(&cluster, info, grpc),
                AttemptFailure::Upstream(e) => {
                    let (flag, details) = reset_flag_and_details(&e);
                    tracing::debug!(cluster = %cluster.config.name, host = %host.address, error = ?e, "upstream request failed");
                    info.flags.insert(flag);
                    cluster.stats.record_status(503);
                    let mut resp = reply(503, &upstream_reset_body(&e.to_string()), grpc, info, details);
                    if let UpstreamError::Overflow(kind) = e {
                        // A request refused while pending never had a host (Envoy logs `-`).
                        if kind == Overflow::Pending {
                            info.upstream_host = None;
                        }
                        // A circuit breaker's refusal is "dropped": Envoy says so downstream.
                        if !hcm.router.suppress_envoy_headers {
                            resp.headers_mut().insert(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
                        }
                    }
                    resp
                }
            };
            levels.apply_to_response(&mut resp, info, &downstream_headers);
            return Err(resp);
        }
    };
    let service_time = started.elapsed();
    info.upstream_service_time = Some(service_time);
    let RetryDecision::NoRetry = retry.on_response(resp.status().as_u16());

    // Phase: upstream_response.
    let status = resp.status();
    cluster.stats.record_status(status.as_u16());
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(resp.headers_mut(), switching);
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
    parts.version = if downstream_version == Version::HTTP_2 { Version::HTTP_2 } else { Version::HTTP_11 };
    let mut resp = Response::from_parts(parts, ResponseBody::upstream(body));
    levels.apply_to_response(&mut resp, info, &downstream_headers);
    Ok((resp, Some(guard)))
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
