//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`): serves one
//! downstream connection with hyper (HTTP/1.1, h2c, or sniffed), and runs each request through
//! explicit phases:
//!
//! `decode_headers` (protocol checks, path normalization, header sanitizing) -> `route`
//! (virtual host, route, and the cluster a forwarding route picks) -> the HTTP filters'
//! request hooks, in order (`http::filter`) -> the router, the terminal filter (local
//! answers, or upstream: `http::router`) -> the filters' response hooks, in reverse ->
//! `encode_headers` (response headers) -> `log` (access log and stats, when the response body
//! ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::tls::Io;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pinion_xds::model::{self, CodecType, HeadersWithUnderscoresAction, RouteAction, ServerHeaderTransformation};

use super::body::{OnComplete, ResponseBody};
use super::connection_context::ConnCtx;
use super::filter::route_config::RouteFilterConfigs;
use super::filter::{Applies, DecodeCx, EncodeCx, FilterStatus};
use super::h1_framing::FramingCheck;
use super::local_reply::reply;
use super::max_stream_duration;
use super::path::{self, set_path, PathOutcome};
use super::redirect;
use super::request_headers;
use super::route_table::{Matched, RequestView, RouteTable};
use super::router::route_decision::{self, split_query, ClusterChoice};
use super::router::upstream_request::UpstreamGuard;
use super::router::{self, Phase, Routed};
use super::stream_info::{ResponseFlags, StreamInfo};
use crate::formatter::{self, Context};
use crate::listener::{HcmConfig, ListenerImpl};
use crate::worker_context::{LocalExec, WorkerCtx};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serve one downstream connection until it closes, idles out, or the worker drains.
/// `local_uris`: the URI SANs of the listener's certificate, for `x-forwarded-client-cert`.
pub async fn serve_connection(
    stream: Io,
    local_uris: &[String],
    peer: SocketAddr,
    local: SocketAddr,
    hcm: Arc<HcmConfig>,
    listener: Arc<ListenerImpl>,
    worker: Rc<WorkerCtx>,
) {
    let cfg = hcm.config.clone();
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let ctx = Rc::new(ConnCtx {
        hcm: hcm.clone(),
        listener,
        worker: worker.clone(),
        peer,
        local,
        tls: stream.is_tls(),
        client_cert: super::forwarded_client_cert::ClientCert::new(
            stream.peer_certificate(),
            local_uris,
            cfg.forward_client_cert,
            cfg.client_cert_details,
        ),
        active_streams: std::cell::Cell::new(0),
        last_activity: std::cell::Cell::new(Instant::now()),
        framing: Default::default(),
        draining: std::cell::Cell::new(false),
        saw_h2: std::cell::Cell::new(false),
        saw_request: std::cell::Cell::new(false),
        server_header: HeaderValue::from_str(&cfg.server_name).ok(),
    });
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        // Boxed once here: hyper's HTTP/2 server moves the service future several times while
        // spawning a task per stream, and the request's state machine is ~10 KiB.
        async move { Ok::<_, Infallible>(Box::pin(handle(ctx, req)).await) }
    });
    // A protocol settled by ALPN wins over sniffing the first bytes, as in Envoy.
    let codec = match (stream.alpn(), cfg.codec_type) {
        (Some(b"h2"), _) => CodecType::Http2,
        (Some(b"http/1.1"), _) => CodecType::Http1,
        (_, c) => c,
    };
    let io = FramingCheck::new(stream, ctx.framing.clone());
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            .half_close(false)
            .max_buf_size(((cfg.max_request_headers_kb as usize) * 1024).max(8192))
            .max_headers(cfg.max_headers_count as usize);
        if let Some(t) = cfg.request_headers_timeout {
            h1.header_read_timeout(t);
        } else {
            h1.header_read_timeout(None);
        }
    }
    {
        let h2o = &cfg.http2;
        let mut h2 = builder.http2();
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(h2o.max_concurrent_streams)
            .initial_stream_window_size(h2o.initial_stream_window_size)
            .initial_connection_window_size(h2o.initial_connection_window_size)
            .max_header_list_size(cfg.max_request_headers_kb.saturating_mul(1024))
            .enable_connect_protocol();
        if let Some(i) = h2o.keepalive_interval {
            h2.keep_alive_interval(i);
            if let Some(t) = h2o.keepalive_timeout {
                h2.keep_alive_timeout(t);
            }
        }
    }
    let builder = match codec {
        CodecType::Auto => builder,
        CodecType::Http1 => builder.http1_only(),
        CodecType::Http2 => builder.http2_only(),
    };
    let is_h2 = codec == CodecType::Http2;
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut drain = worker.drain.clone();
    let mut listener_drain = ctx.listener.drain.subscribe();
    let idle_timeout = cfg.idle_timeout;
    // Draining (server drain, or this listener generation replaced/removed): HTTP/2 gets
    // GOAWAY at once; HTTP/1.1 responses carry `Connection: close` and an idle connection is
    // closed only after the HCM's `drain_timeout`, so a client never races a request against
    // a silent close. `closing` means hyper's graceful shutdown has started.
    let mut closing = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Returns whether graceful shutdown started now (HTTP/2); otherwise the HTTP/1 deadline.
    let start_drain = || -> Option<tokio::time::Instant> {
        ctx.draining.set(true);
        (!is_h2 && !ctx.saw_h2.get()).then(|| tokio::time::Instant::now() + cfg.drain_timeout)
    };
    // `max_connection_duration` (plus its jitter) from now, when the connection drains as
    // above; with `http1_safe_max_connection_duration` an HTTP/1 connection is only marked,
    // so its next response carries `Connection: close` and it closes after that.
    let mut max_duration_deadline = cfg.max_connection_duration.map(|d| {
        let jitter = d.mul_f64(cfg.max_connection_duration_jitter_percent / 100.0 * rand::random::<f64>());
        tokio::time::Instant::now() + d + jitter
    });
    if *drain.borrow() || *listener_drain.borrow() {
        drain_deadline = start_drain();
        if drain_deadline.is_none() {
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
    }
    loop {
        let idle_deadline = idle_timeout.map(|t| tokio::time::Instant::from_std(ctx.last_activity.get() + t));
        let deadline = match (idle_deadline, drain_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let draining = ctx.draining.get();
        // A soft (HTTP/1-safe) drain still gives way to a real one.
        let drain_started = drain_deadline.is_some();
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "downstream connection error");
                }
                break;
            }
            _ = drain.changed(), if !drain_started && !closing => {
                drain_deadline = start_drain();
                if drain_deadline.is_none() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = listener_drain.changed(), if !drain_started && !closing => {
                drain_deadline = start_drain();
                if drain_deadline.is_none() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = sleep_until(max_duration_deadline), if max_duration_deadline.is_some() && !closing => {
                max_duration_deadline = None;
                stats.downstream_cx_max_duration_reached.inc();
                if !ctx.saw_request.get() {
                    // Nothing to drain (Envoy has no codec yet): closed at once.
                    break;
                }
                if cfg.http1_safe_max_connection_duration && !is_h2 && !ctx.saw_h2.get() {
                    ctx.draining.set(true);
                } else if !drain_started {
                    drain_deadline = start_drain();
                    if drain_deadline.is_none() {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
            _ = sleep_until(deadline), if !closing => {
                let now = tokio::time::Instant::now();
                let idle = ctx.active_streams.get() == 0;
                let expired = idle_timeout.is_some_and(|t| ctx.last_activity.get().elapsed() >= t);
                if idle && expired {
                    if !draining {
                        stats.downstream_cx_idle_timeout.inc();
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else if drain_deadline.is_some_and(|d| now >= d) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else if !idle {
                    ctx.last_activity.set(Instant::now());
                }
            }
        }
    }
    stats.downstream_cx_active.dec();
    stats.downstream_cx_destroy.inc();
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether a request is gRPC (`content-type: application/grpc*`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn protocol_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Everything `finish` needs once the response body ends.
struct Completion {
    ctx: Rc<ConnCtx>,
    info: StreamInfo,
    log_request_headers: Option<HeaderMap>,
    log_response_headers: Option<HeaderMap>,
    upstream: Option<UpstreamGuard>,
    /// Set when the stream duration limit cut the response body.
    duration_cut: Option<Rc<std::cell::Cell<bool>>>,
}

impl OnComplete for Completion {
    fn complete(self: Box<Self>, bytes_sent: u64, ok: bool) {
        let mut this = *self;
        let ctx = &this.ctx;
        if this.upstream.as_ref().is_some_and(UpstreamGuard::max_stream_cut) {
            this.info.flags.insert(ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED);
            this.info.response_code_details = "upstream_max_stream_duration_reached";
        } else if this.duration_cut.as_ref().is_some_and(|c| c.get()) {
            // Envoy's local reply after the response started: the details, no flag.
            this.info.response_code_details = max_stream_duration::DETAILS;
        } else if !ok {
            this.info.flags.insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
        if let Some(up) = this.upstream.take() {
            up.finish(ok);
        }
        let hcm = &ctx.hcm;
        hcm.stats.downstream_rq_active.dec();
        ctx.active_streams.set(ctx.active_streams.get().saturating_sub(1));
        ctx.last_activity.set(Instant::now());
        if !hcm.access_logs.is_empty() {
            let fctx = Context {
                info: &this.info,
                request_headers: this.log_request_headers.as_ref(),
                response_headers: this.log_response_headers.as_ref(),
                bytes_sent,
            };
            for l in &hcm.access_logs {
                l.log(&fctx);
            }
        }
    }
}

/// Handle one request end to end.
async fn handle(ctx: Rc<ConnCtx>, req: Request<Incoming>) -> Response<ResponseBody> {
    let hcm = ctx.hcm.clone();
    let stats = &hcm.stats;
    stats.downstream_rq_total.inc();
    stats.rq_total.inc();
    stats.downstream_rq_active.inc();
    if req.version() == Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
        ctx.saw_h2.set(true);
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    ctx.active_streams.set(ctx.active_streams.get() + 1);
    ctx.saw_request.set(true);
    ctx.last_activity.set(Instant::now());
    let mut info = StreamInfo::new(ctx.peer, ctx.local, protocol_str(req.version()));
    let log_request_headers = (!hcm.access_logs.is_empty()).then(|| {
        let mut h = req.headers().clone();
        if let Ok(v) = HeaderValue::from_str(req.uri().path_and_query().map_or("/", |p| p.as_str())) {
            h.insert(formatter::PSEUDO_PATH, v);
        }
        if let Ok(v) = HeaderValue::from_str(req.method().as_str()) {
            h.insert(formatter::PSEUDO_METHOD, v);
        }
        if let Some(a) = req.uri().authority() {
            if !h.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    h.insert(header::HOST, v);
                }
            }
        }
        h
    });
    let grpc = is_grpc(req.headers());
    let mut log_request_headers = log_request_headers;
    let (mut resp, mut upstream) = match process(&ctx, req, &mut info, grpc, &mut log_request_headers).await {
        Ok((resp, up)) => (resp, up),
        Err(resp) => (resp, None),
    };
    let mut duration_cut = None;
    if let Some(at) = info.stream_deadline {
        // The limit still runs while the response streams: it then resets the stream, a
        // reset of Pinion's own (not `upstream_rq_rx_reset`).
        let counter = stats.downstream_rq_max_duration_reached.clone();
        let local_reset = upstream.as_mut().map(UpstreamGuard::local_reset_flag);
        let cut = Rc::new(std::cell::Cell::new(false));
        duration_cut = Some(cut.clone());
        resp.body_mut().set_deadline(
            at,
            Box::new(move || {
                counter.inc();
                cut.set(true);
                if let Some(f) = local_reset {
                    f.set(true);
                }
            }),
        );
    }
    encode_headers(&ctx, &mut resp);
    info.response_code = resp.status().as_u16();
    stats.record_status(info.response_code);
    let log_response_headers = (!hcm.access_logs.is_empty()).then(|| resp.headers().clone());
    let completion =
        Completion { ctx: ctx.clone(), info, log_request_headers, log_response_headers, upstream, duration_cut };
    resp.body_mut().set_on_complete(Box::new(completion));
    resp
}

/// What the route phase found for a request.
enum Routing<'a> {
    /// No route table (an RDS config that never arrived, or no scope for the scope key).
    NoTable,
    /// The virtual host's `require_tls` redirects this request (to this `Location`).
    TlsRedirect(String),
    /// No virtual host or no route matched.
    NoRoute,
    /// A route matched.
    Route(Matched<'a>),
}

/// Phase `route`: the virtual host's `require_tls` (decided before its routes, as Envoy's
/// SSL redirect), then virtual host and route.
fn route<'a>(table: Option<&'a RouteTable>, head: &Parts, grpc: bool) -> Routing<'a> {
    let Some(table) = table else { return Routing::NoTable };
    let authority = head.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let path_and_query = head.uri.path_and_query().map_or("/", |p| p.as_str());
    if table.any_require_tls && needs_tls_redirect(table, authority, &head.headers) {
        return Routing::TlsRedirect(redirect::tls_location(authority, path_and_query));
    }
    let (path, query) = split_query(path_and_query);
    let view = RequestView {
        authority,
        path,
        query,
        method: &head.method,
        headers: &head.headers,
        is_grpc: grpc,
        random: Default::default(),
    };
    match table.route(&view) {
        Some(m) => Routing::Route(m),
        None => Routing::NoRoute,
    }
}

/// The cluster a matched forwarding route sends to (chosen once, before the filters run).
fn choose_cluster<'a>(routing: &Routing<'a>, head: &Parts) -> Option<ClusterChoice<'a>> {
    match routing {
        Routing::Route(m) => match &m.route.action {
            RouteAction::Forward(a) => Some(route_decision::choose_cluster(a, &head.headers, rand::random())),
            _ => None,
        },
        _ => None,
    }
}

/// The virtual host's `require_tls`: a request that is not https (by `x-forwarded-proto`, as
/// the HCM set or kept it) is redirected; `EXTERNAL_ONLY` spares requests marked
/// `x-envoy-internal`.
fn needs_tls_redirect(table: &RouteTable, authority: &str, h: &HeaderMap) -> bool {
    use pinion_xds::model::RequireTls;
    let Some(vh) = table.virtual_host(authority) else { return false };
    let https = h.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let internal = h.get("x-envoy-internal").is_some_and(|v| v == "true");
    match vh.require_tls {
        RequireTls::None => false,
        RequireTls::All => !https,
        RequireTls::ExternalOnly => !https && !internal,
    }
}

/// Upgrades allowed by the HCM's `upgrade_configs` (and not disabled on the route): a refused
/// upgrade is answered by the HCM, before any filter, as in Envoy.
fn check_upgrade(ctx: &ConnCtx, routing: &Routing<'_>, upgrade: Option<&str>) -> bool {
    let (Some(u), Routing::Route(m)) = (upgrade, routing) else { return true };
    let route_allows = match &m.route.action {
        RouteAction::Forward(f) => f.upgrade_websocket.unwrap_or(true),
        _ => true,
    };
    if ctx.hcm.config.upgrade_types.iter().any(|t| t == u) && route_allows {
        return true;
    }
    ctx.hcm.stats.downstream_rq_ws_on_non_ws_route.inc();
    false
}

/// The request phases up to a response: `decode_headers` (HCM), `route`, the filters'
/// request hooks in order, the router (terminal), then the filters' response hooks in reverse.
#[allow(clippy::result_large_err)]
async fn process(
    ctx: &Rc<ConnCtx>,
    mut req: Request<Incoming>,
    info: &mut StreamInfo,
    grpc: bool,
    log_headers: &mut Option<HeaderMap>,
) -> Phase<Routed> {
    let hcm = &ctx.hcm;
    // The HCM's stream duration limit runs from the stream's start; a route can change it.
    info.stream_deadline = max_stream_duration::deadline(info.start, hcm.config.max_stream_duration);

    // Phase: decode_headers. Its local replies come before any filter, as the HCM's own.
    decode_headers(ctx, &mut req, info, grpc)?;
    // The access log sees the request id the HCM generated, as in Envoy.
    if let Some(h) = log_headers.as_mut() {
        if let Some(rid) = req.headers().get(X_REQUEST_ID) {
            h.insert(X_REQUEST_ID, rid.clone());
        }
    }
    let (mut head, body) = req.into_parts();
    let upgrade = head.headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).map(|u| u.to_ascii_lowercase());

    // Phase: route. The match borrows only the table, so the request head stays mutable for
    // the filters.
    let mut table = hcm.routes.table_for(&head.headers);
    let mut routing = route(table.as_deref(), &head, grpc);
    let mut cluster = choose_cluster(&routing, &head);
    refresh_stream_deadline(hcm, &routing, &mut head, grpc, info);
    if !check_upgrade(ctx, &routing, upgrade.as_deref()) {
        return Err(reply(403, "", grpc, info, "upgrade_failed"));
    }

    // Phase: HTTP filters, request side.
    let chain = &hcm.filters;
    let mut states = chain.new_states();
    let mut stopped = None;
    for (i, state) in states.iter_mut().enumerate() {
        let (configs, weighted) = filter_configs(&routing, cluster.as_ref());
        let Applies::Run(per_route) = chain.applies(i, configs, weighted) else { continue };
        let matched = match &routing {
            Routing::Route(m) => Some(m),
            _ => None,
        };
        let deadline = info.stream_deadline;
        let mut cx = DecodeCx {
            info,
            grpc,
            table: table.as_deref(),
            route: matched,
            cluster: cluster.as_ref().map(|c| c.name.as_ref()),
            per_route,
            route_configs: configs.map(|c| (c, weighted)),
        };
        // A filter that holds the request (a fault delay, an on-demand lookup) is cut short
        // by the stream duration limit too.
        let status = match deadline {
            None => Some(chain.decode_headers(i, state, &mut head, &mut cx).await),
            Some(at) => {
                let at = tokio::time::Instant::from_std(at);
                tokio::time::timeout_at(at, chain.decode_headers(i, state, &mut head, &mut cx)).await.ok()
            }
        };
        let Some(status) = status else {
            let complete = http_body::Body::is_end_stream(&body);
            stopped = Some(max_stream_duration::timeout_reply(&hcm.stats, info, grpc, complete));
            break;
        };
        match status {
            FilterStatus::Continue => {}
            FilterStatus::ClearRouteCache => {
                table = hcm.routes.table_for(&head.headers);
                routing = route(table.as_deref(), &head, grpc);
                cluster = choose_cluster(&routing, &head);
                refresh_stream_deadline(hcm, &routing, &mut head, grpc, info);
                if !check_upgrade(ctx, &routing, upgrade.as_deref()) {
                    return Err(reply(403, "", grpc, info, "upgrade_failed"));
                }
            }
            FilterStatus::LocalReply(mut resp) => {
                if let Routing::Route(m) = &routing {
                    let levels = router::MutationLevels::of(m, cluster.as_ref());
                    levels.apply_to_response(&mut resp, info, &head.headers);
                }
                stopped = Some(resp);
                break;
            }
            FilterStatus::StopIteration(resp) => {
                stopped = Some(resp);
                break;
            }
        }
    }

    // Phase: router (terminal filter).
    if !hcm.access_logs.is_empty() {
        if let Routing::Route(m) = &routing {
            if !m.route.name.is_empty() {
                info.route_name = Some(m.route.name.as_str().into());
            }
        }
    }
    let mut result = match stopped {
        Some(resp) => Err(resp),
        None => {
            let req = Request::from_parts(head, body);
            match &routing {
                Routing::NoTable => Err(router::no_route(ctx, info, grpc, "route_configuration_not_found")),
                Routing::NoRoute => Err(router::no_route(ctx, info, grpc, "route_not_found")),
                Routing::TlsRedirect(location) => {
                    hcm.stats.rq_redirect.inc();
                    info.response_code_details = "direct_response";
                    Ok((redirect::response(StatusCode::MOVED_PERMANENTLY, location), None))
                }
                Routing::Route(m) => {
                    router::decode_headers(ctx, req, info, grpc, m, cluster.as_ref(), upgrade.is_some()).await
                }
            }
        }
    };

    // Phase: HTTP filters, response side, in reverse order, on every response.
    if !chain.is_empty() {
        let resp = match &mut result {
            Ok((resp, _)) | Err(resp) => resp,
        };
        let (configs, weighted) = filter_configs(&routing, cluster.as_ref());
        for (i, state) in states.iter_mut().enumerate().rev() {
            let Applies::Run(per_route) = chain.applies(i, configs, weighted) else { continue };
            let route_configs = configs.map(|c| (c, weighted));
            chain.encode_headers(i, state, resp, &EncodeCx { info, grpc, per_route, route_configs });
        }
    }
    result
}

/// Phase `route`, continued: the stream duration limit for the route found (Envoy's
/// `refreshDurationTimeout`), from the stream's start. Only a forwarding route changes it.
fn refresh_stream_deadline(
    hcm: &HcmConfig,
    routing: &Routing<'_>,
    head: &mut Parts,
    grpc: bool,
    info: &mut StreamInfo,
) {
    let hcm_limit = hcm.config.max_stream_duration;
    let limit = match routing {
        Routing::Route(m) => match &m.route.action {
            RouteAction::Forward(a) => {
                max_stream_duration::for_route(hcm_limit, a.max_stream_duration.as_ref(), &mut head.headers, grpc)
            }
            _ => hcm_limit,
        },
        _ => hcm_limit,
    };
    info.stream_deadline = max_stream_duration::deadline(info.start, limit);
}

/// The matched route's per-filter overrides and the weighted cluster chosen, if any.
fn filter_configs<'a>(
    routing: &Routing<'a>,
    cluster: Option<&ClusterChoice<'_>>,
) -> (Option<&'a RouteFilterConfigs>, Option<usize>) {
    match routing {
        Routing::Route(m) => (m.filter_configs, cluster.and_then(|c| c.weighted_index)),
        _ => (None, None),
    }
}

#[allow(clippy::result_large_err)]
/// Phase `decode_headers`: protocol-level checks and request header sanitizing.
fn decode_headers(ctx: &Rc<ConnCtx>, req: &mut Request<Incoming>, info: &mut StreamInfo, grpc: bool) -> Phase<()> {
    let cfg = &ctx.hcm.config;
    if req.version() != Version::HTTP_2
        && ctx.framing.lock().unwrap_or_else(|e| e.into_inner()).pop_front().unwrap_or(false)
    {
        // Both Content-Length and Transfer-Encoding: a smuggling vector; Envoy answers 400.
        info.flags.insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
        return Err(reply(400, "", grpc, info, "http1.content_length_and_chunked_not_allowed"));
    }
    if req.version() == Version::HTTP_10 && !cfg.accept_http_10 {
        return Err(reply(426, "", grpc, info, "low_version"));
    }
    // hyper's HTTP/1 buffer has an 8 KiB floor, so smaller `max_request_headers_kb` limits
    // are enforced here (Envoy counts names and values, pseudo-headers included).
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.method().as_str().len();
    if header_bytes > (cfg.max_request_headers_kb as usize) * 1024 {
        info.flags.insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
        return Err(reply(431, "", grpc, info, "headers_too_large"));
    }
    // Normalize the authority into `Host` for both protocols. On HTTP/2, `:authority` wins
    // over a `host` header, as in Envoy.
    if req.version() == Version::HTTP_2 && req.uri().authority().is_some() {
        req.headers_mut().remove(header::HOST);
    }
    if !req.headers().contains_key(header::HOST) {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        match authority {
            Some(a) => {
                if let Ok(v) = HeaderValue::from_str(&a) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            None => match (&cfg.default_host_for_http_10, req.version()) {
                (Some(h), Version::HTTP_10) => {
                    if let Ok(v) = HeaderValue::from_str(h) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                }
                _ if req.method() == Method::CONNECT => {}
                _ => {
                    info.flags.insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                    return Err(reply(400, "missing required header: :authority", grpc, info, "missing_host_header"));
                }
            },
        }
    }
    if cfg.headers_with_underscores_action != HeadersWithUnderscoresAction::Allow {
        let bad: Vec<HeaderName> = req.headers().keys().filter(|k| k.as_str().contains('_')).cloned().collect();
        if !bad.is_empty() {
            if cfg.headers_with_underscores_action == HeadersWithUnderscoresAction::RejectRequest {
                info.flags.insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                return Err(reply(400, "", grpc, info, "unexpected_underscore"));
            }
            for k in bad {
                req.headers_mut().remove(k);
            }
        }
    }
    // Path normalization.
    let path = req.uri().path();
    if cfg.normalize_path
        || cfg.merge_slashes
        || cfg.path_with_escaped_slashes_action != model::EscapedSlashesAction::KeepUnchanged
    {
        let outcome =
            path::normalize(path, cfg.normalize_path, cfg.merge_slashes, cfg.path_with_escaped_slashes_action);
        match outcome {
            PathOutcome::Continue(std::borrow::Cow::Borrowed(_)) => {}
            PathOutcome::Continue(std::borrow::Cow::Owned(p)) => {
                let pq = redirect::normalized_path_location(&p, req.uri().query());
                set_path(req, &pq);
            }
            PathOutcome::Reject => {
                info.flags.insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                return Err(reply(400, "", grpc, info, "path_normalization_failed"));
            }
            PathOutcome::Redirect(p) => {
                let location = redirect::normalized_path_location(&p, req.uri().query());
                return Err(redirect::response(StatusCode::TEMPORARY_REDIRECT, &location));
            }
        }
    }
    let keep_upgrade = req.headers().contains_key(header::UPGRADE);
    request_headers::remove_hop_by_hop(req.headers_mut(), keep_upgrade);
    // Internal-only headers named by the route config are stripped from every request here;
    // Envoy strips them from external requests, and with `use_remote_address: false` all
    // requests count as external for this purpose.
    if let Some(table) = ctx.hcm.routes.table_for(req.headers()) {
        for h in &table.config.internal_only_headers {
            req.headers_mut().remove(h.as_str());
        }
    }
    let mutated =
        request_headers::mutate(cfg, req.headers_mut(), ctx.peer, ctx.tls, &mut request_headers::new_request_id);
    info.downstream_client_ip = mutated.trusted_client;
    super::forwarded_client_cert::mutate(req.headers_mut(), cfg.forward_client_cert, &ctx.client_cert);
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    {
        info.bytes_received = len;
    }
    Ok(())
}

/// Phase `encode_headers`: response header rules applied to every response, proxied or local.
fn encode_headers(ctx: &Rc<ConnCtx>, resp: &mut Response<ResponseBody>) {
    let cfg = &ctx.hcm.config;
    let h = resp.headers_mut();
    match cfg.server_header_transformation {
        ServerHeaderTransformation::Overwrite => {
            if let Some(v) = &ctx.server_header {
                h.insert(header::SERVER, v.clone());
            }
        }
        ServerHeaderTransformation::AppendIfAbsent => {
            if !h.contains_key(header::SERVER) {
                if let Some(v) = &ctx.server_header {
                    h.insert(header::SERVER, v.clone());
                }
            }
        }
        ServerHeaderTransformation::PassThrough => {}
    }
    if !h.contains_key(header::DATE) {
        h.insert(header::DATE, crate::worker_context::http_date());
    }
    if ctx.draining.get() && !ctx.saw_h2.get() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
