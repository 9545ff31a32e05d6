//! One upstream attempt (Envoy's `UpstreamRequest`, `upstream_request.cc`): a request to one
//! host through the worker's pool, raced against the HCM's stream timeouts and bounded by the
//! route timeout, with the cluster's and host's accounting for it. The router decides what to
//! do with the outcome (answer, or, with a retry policy, try again).

use std::cell::Cell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{Request, Response};
use pinion_xds::model::RoutingPriority;

use crate::http::body::{Activity, RequestBody, UpstreamBody};
use crate::http::replay_body::ReplayBody;
use crate::upstream::conn_pool::{ConnPools, Overflow, Protocol, StreamSlot, UpstreamError};
use crate::upstream::outlier_detection::LocalResult;
use crate::upstream::{Cluster, Host, HostStats};

/// Holds an attempt's accounting (the pool's stream: active request gauges, the
/// `max_requests` circuit breaker, the connection) until the response body is done: a drop
/// guard would not know whether the body ended well, so the connection manager calls
/// [`UpstreamGuard::finish`] when it does.
pub struct UpstreamGuard {
    slot: StreamSlot,
    /// Set when Pinion itself ended the response body (the per-try idle timer): not a reset
    /// received from the upstream. Only routes with that timer have one.
    local_reset: Option<Rc<Cell<bool>>>,
    /// A gRPC response whose success is known only at its end (Envoy's
    /// `grpcRqSuccessDeferred`): the host is charged when the body ends.
    grpc_deferred: bool,
    /// When the cluster's `max_stream_duration` ends the stream (counted from the moment it
    /// had a connection).
    max_stream_deadline: Option<Instant>,
    /// Set when that limit cut the response body (for the access log: `UMSDR`).
    max_stream_cut: Option<Rc<Cell<bool>>>,
}

impl UpstreamGuard {
    /// The response was retried (its body is dropped unread, resetting the stream): the
    /// attempt is over and, as in Envoy, an error for the host.
    pub fn retried(self) {
        if let Some((_, host)) = self.slot.target() {
            HostStats::inc(&host.stats.rq_error);
        }
        self.slot.finish(false);
    }

    /// When the cluster's `max_stream_duration` ends the response body, if it has one.
    pub fn max_stream_deadline(&self) -> Option<Instant> {
        self.max_stream_deadline
    }

    /// A flag to set when the cluster's `max_stream_duration` cuts the response body.
    pub fn max_stream_cut_flag(&mut self) -> Rc<Cell<bool>> {
        self.max_stream_cut.get_or_insert_with(Default::default).clone()
    }

    /// Whether the cluster's `max_stream_duration` cut the response body.
    pub fn max_stream_cut(&self) -> bool {
        self.max_stream_cut.as_ref().is_some_and(|f| f.get())
    }

    /// A flag that, once set, makes a cut-short body count as Pinion's own reset rather than
    /// the upstream's (`upstream_rq_rx_reset`).
    pub fn local_reset_flag(&mut self) -> Rc<Cell<bool>> {
        self.local_reset.get_or_insert_with(Default::default).clone()
    }

    /// The final response's headers (Envoy's `chargeUpstreamCode` and
    /// `handleNon5xxResponseHeaders`): a 5xx is an error for the host, anything else a
    /// success, counted now (a body cut short later does not change it); a gRPC request's
    /// response is judged by its `grpc-status`, in the headers (trailers-only) or, without
    /// one there, when the body ends.
    pub fn charge_response(&mut self, status: u16, grpc: bool, headers: &http::HeaderMap) {
        let Some((_, host)) = self.slot.target() else { return };
        if (500..600).contains(&status) {
            HostStats::inc(&host.stats.rq_error);
        } else if !grpc {
            HostStats::inc(&host.stats.rq_success);
        } else {
            match headers.get("grpc-status") {
                Some(v) if (500..600).contains(&grpc_to_http_status(v.as_bytes())) => {
                    HostStats::inc(&host.stats.rq_error)
                }
                Some(_) => HostStats::inc(&host.stats.rq_success),
                None => self.grpc_deferred = true,
            }
        }
    }

    /// The response body ended (`ok`) or was cut short.
    pub fn finish(self, ok: bool) {
        if let Some((cluster, host)) = self.slot.target() {
            if self.grpc_deferred {
                // The trailers' `grpc-status` is not read: a complete body counts as success.
                HostStats::inc(if ok { &host.stats.rq_success } else { &host.stats.rq_error });
            }
            if !ok && !self.local_reset.is_some_and(|f| f.get()) {
                cluster.stats.upstream_rq_rx_reset.inc();
            }
        }
        self.slot.finish(ok);
    }
}

/// Whether a failed attempt is an error for its host (Envoy charges the host only when the
/// failure came with it: not for a request refused before it had a connection, by a pending
/// overflow or for want of a pool; nor for an HCM stream timeout, which resets the stream).
pub fn charges_host(f: &AttemptFailure) -> bool {
    !matches!(
        f,
        AttemptFailure::Upstream(UpstreamError::Overflow(Overflow::Pending) | UpstreamError::PoolOverflow)
            | AttemptFailure::StreamTimeout(_)
            | AttemptFailure::UpstreamMaxStreamDuration { .. }
    )
}

/// Why an attempt produced no response.
#[derive(Debug)]
pub enum AttemptFailure {
    /// The pool or the exchange failed (connect, TLS, handshake, reset).
    Upstream(UpstreamError),
    /// The route `timeout` fired first (504 UT).
    RouteTimeout,
    /// The retry policy's `per_try_timeout` fired first.
    PerTryTimeout,
    /// The retry policy's `per_try_idle_timeout` fired first.
    PerTryIdleTimeout,
    /// An HCM stream timeout fired first (408 or 504, with Envoy's body and details).
    StreamTimeout(StreamTimeout),
    /// The cluster's `max_stream_duration` fired first (`UMSDR`; 504, or 408 while the
    /// request is still arriving).
    UpstreamMaxStreamDuration {
        /// The downstream request was complete.
        request_done: bool,
    },
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
    /// Which timer fired.
    pub kind: StreamTimeoutKind,
}

/// The HCM timers behind a [`StreamTimeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTimeoutKind {
    /// `stream_idle_timeout` (or the route's `idle_timeout`).
    Idle,
    /// `request_timeout`.
    Request,
    /// `max_stream_duration` (the HCM's or the route's).
    MaxDuration,
}

/// The timeouts an attempt runs under.
pub struct AttemptTimeouts<'a> {
    /// When the route's `timeout` runs out, for all attempts together (None: disabled).
    pub route_deadline: Option<tokio::time::Instant>,
    /// The retry policy's `per_try_timeout` and `per_try_idle_timeout` (None: disabled),
    /// started once the attempt has a connection and the downstream body is complete.
    pub per_try: Option<Duration>,
    /// See `per_try`: before response headers there is no activity to reset it.
    pub per_try_idle: Option<Duration>,
    /// Set by the pool when the attempt has a connection.
    pub connected: &'a Cell<bool>,
    /// The replayable request body, when the route may retry: the per-try timers wait for
    /// it to end (without one, the body is empty or nobody waits on it).
    pub replay: Option<&'a ReplayBody<RequestBody>>,
    /// HCM `stream_idle_timeout`.
    pub stream_idle: Option<Duration>,
    /// HCM `request_timeout`.
    pub request: Option<Duration>,
    /// When the downstream request started.
    pub started: Instant,
    /// When the HCM's stream duration limit ends the stream.
    pub max_stream: Option<Instant>,
    /// The request body's progress, watched by the stream timeouts.
    pub activity: &'a Activity,
}

/// Where an attempt goes: the cluster, the host the load balancer picked, the protocol, and
/// the route's priority (which circuit breakers and pools it uses).
pub struct Target<'a> {
    /// The cluster.
    pub cluster: &'a Arc<Cluster>,
    /// The host.
    pub host: &'a Arc<Host>,
    /// The upstream codec.
    pub protocol: Protocol,
    /// The route's `priority`.
    pub priority: RoutingPriority,
}

/// One attempt: `req` to `target`. On success the response's accounting is handed over as
/// an [`UpstreamGuard`]; on failure it is already settled. The pool counts the request
/// (`upstream_rq_total`, active gauges) once it is attached to a connection, as Envoy's does:
/// a request refused by a circuit breaker or failing while it waited for a connection is
/// not an upstream request. Each attempt's outcome is reported to outlier detection here.
pub async fn send(
    pools: &ConnPools,
    target: Target<'_>,
    upgrade: bool,
    req: Request<RequestBody>,
    timeouts: AttemptTimeouts<'_>,
) -> Result<(Response<UpstreamBody>, UpstreamGuard), AttemptFailure> {
    let Target { cluster, host, protocol, priority } = target;
    // Only outlier detection reads it, and a gRPC status in the response headers replaces
    // the HTTP status only for gRPC requests.
    let grpc = cluster.outlier().is_some() && is_grpc(req.headers());
    // The exchange, raced against the stream timeouts, the route timeout and the per-try
    // timers. The futures are pinned here and polled in place: each `async { x.await }` layer
    // around a moved future would keep its own copy of the exchange's state (it was 7.5 KiB
    // for a 1.7 KiB exchange), and hyper moves the request future around. The timers exist
    // only when configured.
    let max_stream_armed = Cell::new(None);
    let outcome = {
        let exchange = pin!(async {
            if upgrade {
                // Boxed: a dial and handshake are large states, and upgrades are rare.
                let (mut sender, slot) = Box::pin(pools.upgrade_connection(cluster, host, priority)).await?;
                timeouts.connected.set(true);
                let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.into()))?;
                Ok((resp.map(UpstreamBody::H1), slot))
            } else {
                pools.send(cluster, host, protocol, priority, req, timeouts.connected).await
            }
        });
        let watchdog = pin!(stream_watchdog(
            timeouts.activity,
            timeouts.stream_idle,
            timeouts.request,
            timeouts.started,
            timeouts.max_stream
        ));
        let route = pin!(timeouts.route_deadline.map(tokio::time::sleep_until));
        // Per try: the earlier of the two timers decides which one fires (the per-try
        // timeout on a tie, as Envoy arms it first).
        let per_try = match (timeouts.per_try, timeouts.per_try_idle) {
            (Some(t), Some(i)) if i < t => Some((i, true)),
            (Some(t), _) => Some((t, false)),
            (None, Some(i)) => Some((i, true)),
            (None, None) => None,
        };
        let per_try_timer = pin!(per_try.map(|_| tokio::time::sleep_until(far_future())));
        let max_stream = MaxStreamTimer {
            after: cluster.config.max_stream_duration,
            timer: pin!(cluster.config.max_stream_duration.map(|_| tokio::time::sleep_until(far_future()))),
            armed_at: &max_stream_armed,
        };
        race(exchange, watchdog, route, per_try_timer, per_try, timeouts.connected, timeouts.replay, max_stream).await
    };
    report_outlier(cluster, host, &outcome, grpc, timeouts.connected.get());
    let failure = match outcome {
        Raced::Exchange(Ok((resp, slot))) => {
            // A response that came in the poll that connected it never armed the timer.
            let max_stream_deadline =
                cluster.config.max_stream_duration.map(|d| max_stream_armed.get().unwrap_or_else(Instant::now) + d);
            return Ok((
                resp,
                UpstreamGuard {
                    slot,
                    local_reset: None,
                    grpc_deferred: false,
                    max_stream_deadline,
                    max_stream_cut: None,
                },
            ));
        }
        // The host's `rq_error` is the router's to count: once, whether the failure is
        // retried or final (Envoy's `maybeRetryReset` or `chargeUpstreamAbort`).
        Raced::Exchange(Err(e)) => AttemptFailure::Upstream(e),
        Raced::Stream(t) => AttemptFailure::StreamTimeout(t),
        Raced::Route => {
            cluster.stats.upstream_rq_timeout.inc();
            HostStats::inc(&host.stats.rq_timeout);
            AttemptFailure::RouteTimeout
        }
        Raced::MaxStream => {
            cluster.stats.upstream_rq_max_duration_reached.inc();
            AttemptFailure::UpstreamMaxStreamDuration { request_done: timeouts.activity.request_done.get() }
        }
        Raced::PerTry(f) => {
            match f {
                AttemptFailure::PerTryIdleTimeout => cluster.stats.upstream_rq_per_try_idle_timeout.inc(),
                _ => cluster.stats.upstream_rq_per_try_timeout.inc(),
            }
            HostStats::inc(&host.stats.rq_timeout);
            f
        }
    };
    Err(failure)
}

/// What the raced exchange ended with.
type AttemptOutcome = Raced<Result<(Response<UpstreamBody>, StreamSlot), UpstreamError>>;

/// The attempt's outcome as the router reports it to outlier detection (Envoy's
/// `onPoolReady`, `onUpstreamHeaders`, `onUpstreamReset`, `onResponseTimeout`,
/// `onPerTryTimeout`): a response status (a gRPC status in the headers mapped to HTTP for gRPC
/// requests), a connect failure or a reset (503 without the local/external split), a route or
/// per-try timeout (504). Every attempt reports, a retried one included, so with a retry
/// policy one request can report several failures for one host or one for each of several
/// hosts. An attempt that had a connection (`connected`: the pool was ready) first reports a
/// connect success, as Envoy's `onPoolReady` does, also when it then times out. An HCM stream
/// timeout resets the downstream stream and reports nothing more, as in Envoy.
fn report_outlier(cluster: &Cluster, host: &Host, outcome: &AttemptOutcome, grpc: bool, connected: bool) {
    let Some(od) = cluster.outlier() else { return };
    match outcome {
        Raced::Exchange(Ok((resp, _))) => {
            od.put_local(host, LocalResult::ConnectSuccess, None);
            let status = match resp.headers().get("grpc-status") {
                Some(v) if grpc => grpc_to_http_status(v.as_bytes()),
                _ => resp.status().as_u16(),
            };
            od.put_http_status(host, status);
        }
        // A circuit breaker's refusal (or no pool for the host) says nothing about the
        // host: Envoy skips outlier detection for the `Overflow` reset reason.
        Raced::Exchange(Err(UpstreamError::Overflow(_) | UpstreamError::PoolOverflow)) => {}
        Raced::Exchange(Err(e)) => {
            let connected =
                !matches!(e, UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_));
            if connected {
                od.put_local(host, LocalResult::ConnectSuccess, None);
            }
            od.put_local(host, LocalResult::ConnectFailed, None);
        }
        Raced::Stream(_) | Raced::Route | Raced::PerTry(_) | Raced::MaxStream => {
            if connected {
                od.put_local(host, LocalResult::ConnectSuccess, None);
            }
            // Envoy reports no timeout for HCM stream timeouts or `max_stream_duration`.
            if !matches!(outcome, Raced::Stream(_) | Raced::MaxStream) {
                od.put_local(host, LocalResult::Timeout, Some(504));
            }
        }
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

/// A deadline no request reaches (the per-try timer's until it is armed).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The cluster's `max_stream_duration` timer of an attempt, armed once it has a connection.
struct MaxStreamTimer<'a> {
    after: Option<Duration>,
    timer: Pin<&'a mut Option<tokio::time::Sleep>>,
    /// When it was armed (the attempt got its connection).
    armed_at: &'a Cell<Option<Instant>>,
}

/// Which of the raced futures finished first.
enum Raced<T> {
    Exchange(T),
    Stream(StreamTimeout),
    Route,
    PerTry(AttemptFailure),
    MaxStream,
}

/// Polls the exchange, then the stream watchdog, the route timer and the per-try timer,
/// until one is ready: a `select!` that moves none of them. The per-try timer is armed
/// once the attempt has a connection and the request body is complete (Envoy's
/// `setupPerTryTimeout` at pool ready or request end): both happen while the exchange is
/// polled, or wake this future (the replay body does), so they are checked after it.
#[allow(clippy::too_many_arguments)]
fn race<'a, A: Future, B: Future<Output = StreamTimeout>>(
    mut exchange: Pin<&'a mut A>,
    mut watchdog: Pin<&'a mut B>,
    mut route: Pin<&'a mut Option<tokio::time::Sleep>>,
    mut per_try_timer: Pin<&'a mut Option<tokio::time::Sleep>>,
    per_try: Option<(Duration, bool)>,
    connected: &'a Cell<bool>,
    replay: Option<&'a ReplayBody<RequestBody>>,
    mut max_stream: MaxStreamTimer<'a>,
) -> impl Future<Output = Raced<A::Output>> + 'a {
    let mut armed = false;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Raced::Exchange(r));
        }
        if let Poll::Ready(t) = watchdog.as_mut().poll(cx) {
            return Poll::Ready(Raced::Stream(t));
        }
        if let Some(r) = route.as_mut().as_pin_mut() {
            if r.poll(cx).is_ready() {
                return Poll::Ready(Raced::Route);
            }
        }
        if let (Some((after, idle)), Some(mut timer)) = (per_try, per_try_timer.as_mut().as_pin_mut()) {
            if !armed && connected.get() && replay.is_none_or(|r| r.poll_request_done(cx)) {
                timer.as_mut().reset(tokio::time::Instant::now() + after);
                armed = true;
            }
            if armed && timer.poll(cx).is_ready() {
                let failure = if idle { AttemptFailure::PerTryIdleTimeout } else { AttemptFailure::PerTryTimeout };
                return Poll::Ready(Raced::PerTry(failure));
            }
        }
        // The cluster's `max_stream_duration` runs from the moment the stream has a
        // connection (Envoy's `onPoolReady`).
        if let (Some(after), Some(mut timer)) = (max_stream.after, max_stream.timer.as_mut().as_pin_mut()) {
            if max_stream.armed_at.get().is_none() && connected.get() {
                let now = Instant::now();
                timer.as_mut().reset(tokio::time::Instant::from_std(now + after));
                max_stream.armed_at.set(Some(now));
            }
            if max_stream.armed_at.get().is_some() && timer.poll(cx).is_ready() {
                return Poll::Ready(Raced::MaxStream);
            }
        }
        Poll::Pending
    })
}

/// Resolves when a stream timeout fires before the upstream answers: `request_timeout`
/// while the request body is incomplete (408), `stream_idle_timeout` with no body progress
/// (408 while the request is incomplete, else 504), or the stream duration limit at
/// `max_stream` (likewise), with Envoy's bodies.
pub async fn stream_watchdog(
    activity: &Activity,
    stream_idle: Option<Duration>,
    request: Option<Duration>,
    started: Instant,
    max_stream: Option<Instant>,
) -> StreamTimeout {
    if stream_idle.is_none() && request.is_none() && max_stream.is_none() {
        return std::future::pending().await;
    }
    loop {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(3600);
        let timeout_status = if activity.request_done.get() { 504 } else { 408 };
        if let Some(d) = max_stream {
            if now >= d {
                return StreamTimeout {
                    status: timeout_status,
                    body: crate::http::max_stream_duration::BODY,
                    details: crate::http::max_stream_duration::DETAILS,
                    kind: StreamTimeoutKind::MaxDuration,
                };
            }
            next = next.min(d);
        }
        if let Some(rt) = request {
            if !activity.request_done.get() {
                let d = started + rt;
                if now >= d {
                    return StreamTimeout {
                        status: 408,
                        body: "request timeout",
                        details: "request_overall_timeout",
                        kind: StreamTimeoutKind::Request,
                    };
                }
                next = next.min(d);
            }
        }
        if let Some(it) = stream_idle {
            let d = activity.last.get() + it;
            if now >= d {
                return StreamTimeout {
                    status: timeout_status,
                    body: "stream timeout",
                    details: "stream_idle_timeout",
                    kind: StreamTimeoutKind::Idle,
                };
            }
            next = next.min(d);
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}
