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

use crate::http::body::{Activity, RequestBody, UpstreamBody};
use crate::http::replay_body::ReplayBody;
use crate::upstream::conn_pool::{ConnPools, Protocol, StreamSlot, UpstreamError};
use crate::upstream::{Cluster, Host, HostStats};

/// Holds an attempt's accounting (active request gauges, the pool's stream slot) until the
/// response body is done: a drop guard would not know whether the body ended well, so the
/// connection manager calls [`UpstreamGuard::finish`] when it does.
pub struct UpstreamGuard {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    _slot: StreamSlot,
    /// Set when Pinion itself ended the response body (the per-try idle timer): not a reset
    /// received from the upstream. Only routes with that timer have one.
    local_reset: Option<Rc<Cell<bool>>>,
}

impl UpstreamGuard {
    /// The response was retried (its body is dropped unread, resetting the stream): the
    /// attempt is over and, as in Envoy, an error for the host.
    pub fn retried(self) {
        self.cluster.stats.upstream_rq_active.dec();
        HostStats::add(&self.host.stats.rq_active, -1);
        HostStats::inc(&self.host.stats.rq_error);
    }

    /// A flag that, once set, makes a cut-short body count as Pinion's own reset rather than
    /// the upstream's (`upstream_rq_rx_reset`).
    pub fn local_reset_flag(&mut self) -> Rc<Cell<bool>> {
        self.local_reset.get_or_insert_with(Default::default).clone()
    }

    /// The response body ended (`ok`) or was cut short.
    pub fn finish(self, ok: bool) {
        self.cluster.stats.upstream_rq_active.dec();
        HostStats::add(&self.host.stats.rq_active, -1);
        if ok {
            HostStats::inc(&self.host.stats.rq_success);
        } else {
            HostStats::inc(&self.host.stats.rq_error);
            if !self.local_reset.is_some_and(|f| f.get()) {
                self.cluster.stats.upstream_rq_rx_reset.inc();
            }
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
    /// The retry policy's `per_try_timeout` fired first.
    PerTryTimeout,
    /// The retry policy's `per_try_idle_timeout` fired first.
    PerTryIdleTimeout,
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
    // The exchange, raced against the stream timeouts, the route timeout and the per-try
    // timers. The futures are pinned here and polled in place: each `async { x.await }` layer
    // around a moved future would keep its own copy of the exchange's state (it was 7.5 KiB
    // for a 1.7 KiB exchange), and hyper moves the request future around. The timers exist
    // only when configured.
    let outcome = {
        let exchange = pin!(async {
            if upgrade {
                // Boxed: a dial and handshake are large states, and upgrades are rare.
                let mut sender = Box::pin(pools.upgrade_connection(cluster, host)).await?;
                timeouts.connected.set(true);
                let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.into()))?;
                Ok((resp.map(UpstreamBody::H1), StreamSlot::none()))
            } else {
                pools.send(cluster, host, protocol, req, timeouts.connected).await
            }
        });
        let watchdog =
            pin!(stream_watchdog(timeouts.activity, timeouts.stream_idle, timeouts.request, timeouts.started));
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
        race(exchange, watchdog, route, per_try_timer, per_try, timeouts.connected, timeouts.replay).await
    };
    let failure = match outcome {
        Raced::Exchange(Ok((resp, slot))) => {
            let guard = UpstreamGuard { cluster: cluster.clone(), host: host.clone(), _slot: slot, local_reset: None };
            return Ok((resp, guard));
        }
        Raced::Exchange(Err(e)) => {
            HostStats::inc(&host.stats.rq_error);
            AttemptFailure::Upstream(e)
        }
        Raced::Stream(t) => AttemptFailure::StreamTimeout(t),
        Raced::Route => {
            cluster.stats.upstream_rq_timeout.inc();
            HostStats::inc(&host.stats.rq_timeout);
            AttemptFailure::RouteTimeout
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
    // No response: the attempt is no longer active.
    cluster.stats.upstream_rq_active.dec();
    HostStats::add(&host.stats.rq_active, -1);
    Err(failure)
}

/// A deadline no request reaches (the per-try timer's until it is armed).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Which of the raced futures finished first.
enum Raced<T> {
    Exchange(T),
    Stream(StreamTimeout),
    Route,
    PerTry(AttemptFailure),
}

/// Polls the exchange, then the stream watchdog, the route timer and the per-try timer,
/// until one is ready: a `select!` that moves none of them. The per-try timer is armed
/// once the attempt has a connection and the request body is complete (Envoy's
/// `setupPerTryTimeout` at pool ready or request end): both happen while the exchange is
/// polled, or wake this future (the replay body does), so they are checked after it.
fn race<'a, A: Future, B: Future<Output = StreamTimeout>>(
    mut exchange: Pin<&'a mut A>,
    mut watchdog: Pin<&'a mut B>,
    mut route: Pin<&'a mut Option<tokio::time::Sleep>>,
    mut per_try_timer: Pin<&'a mut Option<tokio::time::Sleep>>,
    per_try: Option<(Duration, bool)>,
    connected: &'a Cell<bool>,
    replay: Option<&'a ReplayBody<RequestBody>>,
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
        Poll::Pending
    })
}

/// Resolves when a stream timeout fires before the upstream answers: `request_timeout`
/// while the request body is incomplete (408), or `stream_idle_timeout` with no body
/// progress (408 while the request is incomplete, else 504), with Envoy's bodies.
pub async fn stream_watchdog(
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
