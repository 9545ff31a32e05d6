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
use pinion_xds::model::RoutingPriority;

use crate::http::body::{Activity, RequestBody, UpstreamBody};
use crate::upstream::conn_pool::{ConnPools, Overflow, Protocol, StreamSlot, UpstreamError};
use crate::upstream::{Cluster, Host, HostStats};

/// Holds an attempt's accounting (the pool's stream: active request gauges, the
/// `max_requests` circuit breaker, the connection) until the response body is done: a drop
/// guard would not know whether the body ended well, so the connection manager calls
/// [`UpstreamGuard::finish`] when it does.
pub struct UpstreamGuard {
    slot: StreamSlot,
}

impl UpstreamGuard {
    /// The response body ended (`ok`) or was cut short.
    pub fn finish(self, ok: bool) {
        if let Some((cluster, host)) = self.slot.target() {
            if ok {
                HostStats::inc(&host.stats.rq_success);
            } else {
                HostStats::inc(&host.stats.rq_error);
                cluster.stats.upstream_rq_rx_reset.inc();
            }
        }
        self.slot.finish(ok);
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
/// not an upstream request.
pub async fn send(
    pools: &ConnPools,
    target: Target<'_>,
    upgrade: bool,
    req: Request<RequestBody>,
    timeouts: AttemptTimeouts<'_>,
) -> Result<(Response<UpstreamBody>, UpstreamGuard), AttemptFailure> {
    let Target { cluster, host, protocol, priority } = target;
    // The exchange, raced against the stream timeouts and bounded by the route timeout. The
    // futures are pinned here and polled in place: each `async { x.await }` layer around a
    // moved future would keep its own copy of the exchange's state (it was 7.5 KiB for a
    // 1.7 KiB exchange), and hyper moves the request future around.
    let outcome = {
        let exchange = pin!(async {
            if upgrade {
                // Boxed: a dial and handshake are large states, and upgrades are rare.
                let (mut sender, slot) = Box::pin(pools.upgrade_connection(cluster, host, priority)).await?;
                let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.into()))?;
                Ok((resp.map(UpstreamBody::H1), slot))
            } else {
                pools.send(cluster, host, protocol, priority, req).await
            }
        });
        let watchdog =
            pin!(stream_watchdog(timeouts.activity, timeouts.stream_idle, timeouts.request, timeouts.started));
        match timeouts.route {
            Some(t) => tokio::time::timeout(t, race(exchange, watchdog)).await.ok(),
            None => Some(race(exchange, watchdog).await),
        }
    };
    let failure = match outcome {
        Some(Ok(Ok((resp, slot)))) => return Ok((resp, UpstreamGuard { slot })),
        Some(Ok(Err(e))) => {
            // Envoy charges the host only when the failure came with it: not for a request
            // refused before it had a connection (pending overflow, no pool).
            if !matches!(e, UpstreamError::Overflow(Overflow::Pending) | UpstreamError::PoolOverflow) {
                HostStats::inc(&host.stats.rq_error);
            }
            AttemptFailure::Upstream(e)
        }
        Some(Err(t)) => AttemptFailure::StreamTimeout(t),
        None => {
            cluster.stats.upstream_rq_timeout.inc();
            HostStats::inc(&host.stats.rq_timeout);
            AttemptFailure::RouteTimeout
        }
    };
    Err(failure)
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
