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
