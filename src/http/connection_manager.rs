//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`): serves one
//! downstream connection with hyper (HTTP/1.1, h2c, or sniffed), and runs each request through
//! explicit phases:
//!
//! `decode_headers` (protocol checks, path normalization, header sanitizing) -> `route`
//! (virtual host and route match) -> `local_response` (direct responses, redirects) or
//! `router::forward` (cluster, host, pool, upstream exchange) -> `encode_headers` (response
//! headers) -> `log` (access log and stats, when the response body ends).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::tls::Io;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pinion_xds::model::{
    self, CodecType, HeadersWithUnderscoresAction, RedirectAction, RedirectPath, RouteAction,
    ServerHeaderTransformation,
};

use super::body::{OnComplete, ResponseBody};
use super::h1_framing::{FramingCheck, FramingFlags};
use super::local_reply::local_reply;
use super::path::{self, PathOutcome};
use super::request_headers;
use super::route_table::RequestView;
use super::router;
use super::stream_info::{ResponseFlags, StreamInfo};
use crate::formatter::{self, Context};
use crate::listener::{HcmRuntime, ListenerRuntime};
use crate::worker_context::{LocalExec, WorkerCtx};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-connection state.
pub struct ConnCtx {
    /// The HCM serving this connection.
    pub hcm: Arc<HcmRuntime>,
    /// The listener.
    pub listener: Arc<ListenerRuntime>,
    /// The worker.
    pub worker: Rc<WorkerCtx>,
    /// Peer address.
    pub peer: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// Whether the downstream transport is TLS.
    pub tls: bool,
    /// The client certificate, as `x-forwarded-client-cert` uses it.
    pub client_cert: super::forwarded_client_cert::ClientCert,
    active_streams: Cell<u32>,
    last_activity: Cell<Instant>,
    /// Per HTTP/1 request, in order: did it carry both Content-Length and Transfer-Encoding?
    framing: FramingFlags,
    /// The connection is draining: HTTP/1.1 responses get `Connection: close`.
    draining: Cell<bool>,
    /// The connection speaks HTTP/2 (known after its first request).
    saw_h2: Cell<bool>,
    /// The `server` header value, built once per connection: cloning it shares the bytes,
    /// where building it per response allocated.
    server_header: Option<HeaderValue>,
}

/// Serve one downstream connection until it closes, idles out, or the worker drains.
/// `local_uris`: the URI SANs of the listener's certificate, for `x-forwarded-client-cert`.
pub async fn serve_connection(
    stream: Io,
    local_uris: &[String],
    peer: SocketAddr,
    local: SocketAddr,
    hcm: Arc<HcmRuntime>,
    listener: Arc<ListenerRuntime>,
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
        active_streams: Cell::new(0),
        last_activity: Cell::new(Instant::now()),
        framing: FramingFlags::default(),
        draining: Cell::new(false),
        saw_h2: Cell::new(false),
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
        (!ctx.saw_h2.get()).then(|| tokio::time::Instant::now() + cfg.drain_timeout)
    };
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
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "downstream connection error");
                }
                break;
            }
            _ = drain.changed(), if !draining && !closing => {
                drain_deadline = start_drain();
                if drain_deadline.is_none() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = listener_drain.changed(), if !draining && !closing => {
                drain_deadline = start_drain();
                if drain_deadline.is_none() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
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
    upstream: Option<router::UpstreamGuard>,
}

impl OnComplete for Completion {
    fn complete(self: Box<Self>, bytes_sent: u64, ok: bool) {
        let mut this = *self;
        let ctx = &this.ctx;
        if !ok {
            this.info.flags.set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
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
    let (mut resp, upstream) = match process(&ctx, req, &mut info, grpc, &mut log_request_headers).await {
        Ok((resp, up)) => (resp, up),
        Err(resp) => (resp, None),
    };
    encode_headers(&ctx, &mut resp);
    info.response_code = resp.status().as_u16();
    stats.record_status(info.response_code);
    let log_response_headers = (!hcm.access_logs.is_empty()).then(|| resp.headers().clone());
    let completion = Completion { ctx: ctx.clone(), info, log_request_headers, log_response_headers, upstream };
    resp.body_mut().set_on_complete(Box::new(completion));
    resp
}

/// A local reply, converted to a gRPC trailers-only response for gRPC requests (as Envoy does).
pub fn reply(
    status: u16,
    body: &str,
    grpc: bool,
    info: &mut StreamInfo,
    details: &'static str,
) -> Response<ResponseBody> {
    info.response_code_details = details;
    if !grpc {
        return local_reply(status, body);
    }
    let grpc_status = match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    };
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(grpc_status));
    if !body.is_empty() {
        if let Ok(v) = HeaderValue::from_str(body) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

// A phase either continues with a value or ends the request with a response; responses are
// moved, not boxed, since this is the hot path and the Err side is the rare one.
#[allow(clippy::result_large_err)]
type Phase<T> = Result<T, Response<ResponseBody>>;

/// The request phases up to a response.
#[allow(clippy::result_large_err)]
async fn process(
    ctx: &Rc<ConnCtx>,
    mut req: Request<Incoming>,
    info: &mut StreamInfo,
    grpc: bool,
    log_headers: &mut Option<HeaderMap>,
) -> Phase<(Response<ResponseBody>, Option<router::UpstreamGuard>)> {
    let hcm = &ctx.hcm;
    let cfg = &hcm.config;

    // Phase: decode_headers.
    decode_headers(ctx, &mut req, info, grpc)?;
    // The access log sees the request id the HCM generated, as in Envoy.
    if let Some(h) = log_headers.as_mut() {
        if let Some(rid) = req.headers().get(X_REQUEST_ID) {
            h.insert(X_REQUEST_ID, rid.clone());
        }
    }

    // Phase: route. The view borrows the request; the match borrows only the table, so the
    // request can move on to the router without copying its authority or path.
    let Some(mut table) = hcm.routes.table_for(req.headers()) else {
        // An RDS config that never arrived (warming timed out), or no scope for the request's
        // scope key: no routes, as Envoy.
        hcm.stats.no_route.inc();
        info.flags.set(ResponseFlags::NO_ROUTE);
        return Err(reply(404, "", grpc, info, "route_configuration_not_found"));
    };
    // Phase: on_demand (VHDS). Only a host without a virtual host gets here.
    if let Some(od) = &hcm.on_demand {
        let authority = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        // A host longer than a DNS name (+ port) is never asked for: names are kept for good.
        if table.config.vhds.is_some() && authority.len() <= 261 && table.virtual_host(authority).is_none() {
            let name = format!("{}/{}", table.config.name, authority.to_ascii_lowercase());
            drop(table);
            od.fetch(name, super::on_demand::ON_DEMAND_TIMEOUT).await;
            table = match hcm.routes.table_for(req.headers()) {
                Some(t) => t,
                None => {
                    hcm.stats.no_route.inc();
                    info.flags.set(ResponseFlags::NO_ROUTE);
                    return Err(reply(404, "", grpc, info, "route_configuration_not_found"));
                }
            };
        }
    }
    if table.any_require_tls {
        if let Some(location) = tls_redirect(&table, &req) {
            hcm.stats.rq_redirect.inc();
            info.response_code_details = "direct_response";
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            resp.headers_mut().insert(header::LOCATION, location);
            return Ok((resp, None));
        }
    }
    let matched = {
        let authority = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (path_only, query) = split_query(path_and_query);
        let view = RequestView {
            authority,
            path: path_only,
            query,
            method: req.method(),
            headers: req.headers(),
            is_grpc: grpc,
            random: Default::default(),
        };
        table.route(&view)
    };
    let Some((vhost, route)) = matched else {
        hcm.stats.no_route.inc();
        info.flags.set(ResponseFlags::NO_ROUTE);
        return Err(reply(404, "", grpc, info, "route_not_found"));
    };
    if !route.name.is_empty() && !hcm.access_logs.is_empty() {
        info.route_name = Some(route.name.as_str().into());
    }
    let levels =
        router::MutationLevels { route_config: &table.config.headers, vhost: &vhost.headers, route: &route.headers };

    // Upgrades allowed by the HCM's `upgrade_configs` (and not disabled on the route).
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).map(|u| u.to_ascii_lowercase());
    if let Some(u) = &upgrade {
        let route_allows = match &route.action {
            RouteAction::Forward(f) => f.upgrade_websocket.unwrap_or(true),
            _ => true,
        };
        if !cfg.upgrade_types.iter().any(|t| t == u) || !route_allows {
            hcm.stats.downstream_rq_ws_on_non_ws_route.inc();
            return Err(reply(403, "", grpc, info, "upgrade_failed"));
        }
    }

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
            router::apply_response_mutations(&mut resp, &levels, None, info, req.headers());
            Ok((resp, None))
        }
        RouteAction::Redirect(rd) => {
            hcm.stats.rq_redirect.inc();
            info.response_code_details = "direct_response";
            let authority = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let (path_only, query) = split_query(req.uri().path_and_query().map_or("/", |p| p.as_str()));
            let location = redirect_location(rd, authority, path_only, query, route, ctx.tls);
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = StatusCode::from_u16(rd.response_code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            router::apply_response_mutations(&mut resp, &levels, None, info, req.headers());
            Ok((resp, None))
        }
        RouteAction::NonForwarding => {
            hcm.stats.no_route.inc();
            info.flags.set(ResponseFlags::NO_ROUTE);
            Err(reply(404, "", grpc, info, "route_not_found"))
        }
        RouteAction::Forward(action) => {
            // Not boxed: the whole request future is boxed once by the service.
            router::forward(ctx, req, info, grpc, route, vhost, &table, action, upgrade.is_some()).await
        }
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
        info.flags.set(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
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
        info.flags.set(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
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
                    info.flags.set(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                    return Err(reply(400, "missing required header: :authority", grpc, info, "missing_host_header"));
                }
            },
        }
    }
    if cfg.headers_with_underscores_action != HeadersWithUnderscoresAction::Allow {
        let bad: Vec<HeaderName> = req.headers().keys().filter(|k| k.as_str().contains('_')).cloned().collect();
        if !bad.is_empty() {
            if cfg.headers_with_underscores_action == HeadersWithUnderscoresAction::RejectRequest {
                info.flags.set(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
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
                let q = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
                set_path(req, &format!("{p}{q}"));
            }
            PathOutcome::Reject => {
                info.flags.set(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                return Err(reply(400, "", grpc, info, "path_normalization_failed"));
            }
            PathOutcome::Redirect(p) => {
                let q = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
                let mut resp = Response::new(ResponseBody::empty());
                *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                if let Ok(v) = HeaderValue::from_str(&format!("{p}{q}")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return Err(resp);
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
    request_headers::mutate(cfg, req.headers_mut(), ctx.peer, ctx.tls, &mut request_headers::new_request_id);
    super::forwarded_client_cert::mutate(req.headers_mut(), cfg.forward_client_cert, &ctx.client_cert);
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    {
        info.bytes_received = len;
    }
    Ok(())
}

/// `path?query` -> (`path`, `query`).
/// The virtual host's `require_tls` (Envoy's SSL redirect, decided before its routes): a
/// request that is not https (by `x-forwarded-proto`, as the HCM set or kept it) gets
/// `https://<host><path>`; `EXTERNAL_ONLY` spares requests marked `x-envoy-internal`.
fn tls_redirect(table: &super::route_table::RouteTable, req: &Request<Incoming>) -> Option<HeaderValue> {
    use pinion_xds::model::RequireTls;
    let h = req.headers();
    let authority = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let vh = table.virtual_host(authority)?;
    let https = h.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let internal = h.get("x-envoy-internal").is_some_and(|v| v == "true");
    let redirect = match vh.require_tls {
        RequireTls::None => false,
        RequireTls::All => !https,
        RequireTls::ExternalOnly => !https && !internal,
    };
    if !redirect {
        return None;
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{authority}{path}")).ok()
}

fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    }
}

/// Replace the request's path (and query).
pub fn set_path<B>(req: &mut Request<B>, path_and_query: &str) {
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

fn redirect_location(
    rd: &RedirectAction,
    authority: &str,
    path: &str,
    query: Option<&str>,
    route: &model::Route,
    tls: bool,
) -> String {
    let scheme = rd.scheme.clone().unwrap_or_else(|| if tls { "https".into() } else { "http".into() });
    let (mut host, mut port) = match super::route_table::strip_port(authority) {
        Some(h) => (h.to_string(), Some(authority[h.len() + 1..].to_string())),
        None => (authority.to_string(), None),
    };
    if let Some(h) = &rd.host {
        // `host_redirect` replaces the whole authority, port included.
        host = h.clone();
        port = None;
    }
    if rd.scheme.is_some() {
        // A scheme change drops the old scheme's port.
        port = None;
    }
    if let Some(p) = rd.port {
        port = Some(p.to_string());
    }
    let new_path = match &rd.path {
        RedirectPath::Keep => path.to_string(),
        RedirectPath::Path(p) => p.clone(),
        RedirectPath::PrefixRewrite(prefix) => match &route.matcher.path {
            model::PathMatch::Prefix(m) | model::PathMatch::SeparatedPrefix(m) if path.len() >= m.len() => {
                format!("{prefix}{}", &path[m.len()..])
            }
            _ => prefix.clone(),
        },
        RedirectPath::RegexRewrite(re, sub) => {
            re.replace_all(path, router::regex_substitution(sub).as_str()).into_owned()
        }
    };
    let path_has_query = matches!(&rd.path, RedirectPath::Path(p) if p.contains('?'));
    let mut loc = format!("{scheme}://{host}");
    if let Some(p) = port {
        loc.push(':');
        loc.push_str(&p);
    }
    loc.push_str(&new_path);
    if !rd.strip_query && !path_has_query {
        if let Some(q) = query {
            loc.push('?');
            loc.push_str(q);
        }
    }
    loc
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
        h.insert(header::DATE, crate::worker::http_date());
    }
    if ctx.draining.get() && !ctx.saw_h2.get() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
