//! One upstream attempt (Envoy's `UpstreamRequest`, `upstream_request.cc`): a request to one
//! host through the worker's pool, raced against the HCM's stream timeouts and bounded by the
//! route timeout, with the cluster's and host's accounting for it. The router decides what to
//! do with the outcome (answer, or, with a retry policy, try again).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{Request, Response};

use crate::http::body::{Activity, RequestBody, UpstreamBody};
use crate::upstream::conn_pool::{ConnPools, Protocol, StreamSlot, UpstreamError};
use crate::upstream::outlier_detection::LocalResult;
use crate::upstream::{Cluster, Host, HostStats};

/// Holds an attempt's accounting (active request gauges, the pool's stream slot) until the
/// response body is done: a drop guard would not know whether the body ended well, so the
/// connection manager calls [`UpstreamGuard::finish`] when it does.
pub struct UpstreamGuard {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    _slot: StreamSlot,
}

impl UpstreamGuard {
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

/// Why an attempt produced no response.
#[derive(Debug)]
pub enum AttemptFailure {
    /// The pool or the exchange failed (connect, TLS, handshake, reset).
    Upstream(UpstreamError),
    /// The route `timeout` fired first (504 UT).
    RouteTimeout,
    /// An HCM stream timeout fired first (408 or 504, with Envoy's body and details).
    StreamTimeout(StreamTimeout),
}

/// An HCM stream timeout that ended the request before the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeout {
    /// 408 while the request is still arriving, 504 after.
    pub status: u16,
    /// Envoy's local reply body.
    pub body: &'static str,
    /// Envoy's response code details.
    pub details: &'static str,
    /// `request_timeout` (else `stream_idle_timeout`).
    pub is_request_timeout: bool,
}

/// The timeouts an attempt runs under.
pub struct AttemptTimeouts<'a> {
    /// The route's `timeout` (None: disabled).
    pub route: Option<Duration>,
    /// HCM `stream_idle_timeout`.
    pub stream_idle: Option<Duration>,
    /// HCM `request_timeout`.
    pub request: Option<Duration>,
    /// When the downstream request started.
    pub started: Instant,
    /// The request body's progress, watched by the stream timeouts.
    pub activity: &'a Activity,
}

/// One attempt: `req` to `host`. On success the response's accounting is handed over as an
/// [`UpstreamGuard`]; on failure it is already settled.
pub async fn send(
    pools: &ConnPools,
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    protocol: Protocol,
    upgrade: bool,
    req: Request<RequestBody>,
    timeouts: AttemptTimeouts<'_>,
) -> Result<(Response<UpstreamBody>, UpstreamGuard), AttemptFailure> {
    cluster.stats.upstream_rq_total.inc();
    cluster.stats.upstream_rq_active.inc();
    HostStats::inc(&host.stats.rq_total);
    HostStats::add(&host.stats.rq_active, 1);
    // Only outlier detection reads it, and a gRPC status in the response headers replaces
    // the HTTP status only for gRPC requests.
    let grpc = cluster.outlier().is_some() && is_grpc(req.headers());
    // The exchange, raced against the stream timeouts and bounded by the route timeout. The
    // futures are pinned here and polled in place: each `async { x.await }` layer around a
    // moved future would keep its own copy of the exchange's state (it was 7.5 KiB for a
    // 1.7 KiB exchange), and hyper moves the request future around.
    let outcome = {
        let exchange = pin!(async {
            if upgrade {
                // Boxed: a dial and handshake are large states, and upgrades are rare.
                let mut sender = Box::pin(pools.upgrade_connection(cluster, host)).await?;
                let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.into()))?;
                Ok((resp.map(UpstreamBody::H1), StreamSlot::none()))
            } else {
                pools.send(cluster, host, protocol, req).await
            }
        });
        let watchdog =
            pin!(stream_watchdog(timeouts.activity, timeouts.stream_idle, timeouts.request, timeouts.started));
        match timeouts.route {
            Some(t) => tokio::time::timeout(t, race(exchange, watchdog)).await.ok(),
            None => Some(race(exchange, watchdog).await),
        }
    };
    report_outlier(cluster, host, &outcome, grpc);
    let failure = match outcome {
        Some(Ok(Ok((resp, slot)))) => {
            let guard = UpstreamGuard { cluster: cluster.clone(), host: host.clone(), _slot: slot };
            return Ok((resp, guard));
        }
        Some(Ok(Err(e))) => {
            HostStats::inc(&host.stats.rq_error);
            AttemptFailure::Upstream(e)
        }
        Some(Err(t)) => AttemptFailure::StreamTimeout(t),
        None => {
            cluster.stats.upstream_rq_timeout.inc();
            HostStats::inc(&host.stats.rq_timeout);
            AttemptFailure::RouteTimeout
        }
    };
    // No response: the attempt is no longer active.
    cluster.stats.upstream_rq_active.dec();
    HostStats::add(&host.stats.rq_active, -1);
    Err(failure)
}

/// What the raced exchange ended with: `None` on the route timeout, `Err` on a stream
/// timeout, else the pool's result.
type AttemptOutcome = Option<Result<Result<(Response<UpstreamBody>, StreamSlot), UpstreamError>, StreamTimeout>>;

/// The attempt's outcome as the router reports it to outlier detection (Envoy's
/// `onPoolReady`, `onUpstreamHeaders`, `onUpstreamReset`, `onResponseTimeout`): a response
/// status (a gRPC status in the headers mapped to HTTP for gRPC requests), a connect failure
/// or a reset (503 without the local/external split), a route timeout (504). An HCM stream
/// timeout resets the downstream stream and reports nothing, as in Envoy.
fn report_outlier(cluster: &Cluster, host: &Host, outcome: &AttemptOutcome, grpc: bool) {
    let Some(od) = cluster.outlier() else { return };
    match outcome {
        Some(Ok(Ok((resp, _)))) => {
            od.put_local(host, LocalResult::ConnectSuccess, None);
            let status = match resp.headers().get("grpc-status") {
                Some(v) if grpc => grpc_to_http_status(v.as_bytes()),
                _ => resp.status().as_u16(),
            };
            od.put_http_status(host, status);
        }
        Some(Ok(Err(e))) => {
            let connected =
                !matches!(e, UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_));
            if connected {
                od.put_local(host, LocalResult::ConnectSuccess, None);
            }
            od.put_local(host, LocalResult::ConnectFailed, None);
        }
        Some(Err(_)) => {}
        None => od.put_local(host, LocalResult::Timeout, Some(504)),
    }
}

/// Whether a request is gRPC (`content-type: application/grpc*`).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus` (an unparsable status counts as 500).
fn grpc_to_http_status(v: &[u8]) -> u16 {
    let code = std::str::from_utf8(v).ok().and_then(|s| s.parse::<u32>().ok());
    match code {
        Some(0) => 200,
        Some(1) => 499,
        Some(3 | 9 | 11) => 400,
        Some(4) => 504,
        Some(5) => 404,
        Some(6 | 10) => 409,
        Some(7) => 403,
        Some(8) => 429,
        Some(12) => 501,
        Some(14) => 503,
        Some(16) => 401,
        _ => 500,
    }
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
) -> StreamTimeout {
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
                    return StreamTimeout {
                        status: 408,
                        body: "request timeout",
                        details: "request_overall_timeout",
                        is_request_timeout: true,
                    };
                }
                next = next.min(d);
            }
        }
        if let Some(it) = stream_idle {
            let d = activity.last.get() + it;
            if now >= d {
                let status = if activity.request_done.get() { 504 } else { 408 };
                return StreamTimeout {
                    status,
                    body: "stream timeout",
                    details: "stream_idle_timeout",
                    is_request_timeout: false,
                };
            }
            next = next.min(d);
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}
