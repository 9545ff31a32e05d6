//! Per-worker upstream connection pools (Envoy's `ConnPool`), keyed by cluster generation,
//! host and protocol. Owned by one worker thread (`Rc`/`RefCell`): no lock on the request path.
//!
//! HTTP/1.1: a list of connections; a request takes a ready one or dials a new one, and the
//! connection goes back to the list once response headers arrive (it becomes ready again when
//! the response body is done). HTTP/2: a few multiplexed connections; a request uses the first
//! with a free stream slot, up to the cluster's `max_concurrent_streams`; a GOAWAY or error
//! closes the sender and the pool dials anew.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h2_client::{self, H2Sender};
use super::{Cluster, Host, HostStats};
use crate::http::body::{BoxError, RequestBody, UpstreamBody};
use crate::tls::{Alpn, Io};

/// Upstream protocol of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct PoolKey {
    cluster_id: u64,
    addr: SocketAddr,
    protocol: Protocol,
}

struct H1Conn {
    sender: http1::SendRequest<RequestBody>,
    requests: u32,
    last_used: Instant,
}

struct H2Conn {
    sender: H2Sender,
    active: Rc<Cell<u32>>,
    requests: u32,
    last_used: Instant,
}

#[derive(Default)]
struct Pool {
    h1: Vec<H1Conn>,
    h2: Vec<H2Conn>,
    idle_timeout: Option<Duration>,
    /// HTTP/2 connections being dialed: requests wait for them instead of each dialing its own.
    h2_dialing: u32,
}

/// Why an upstream exchange failed before response headers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed. (Display strings are Envoy's reset reasons, used in local replies.)
    #[error("remote connection failure")]
    ConnectFailure(std::io::Error),
    /// TCP connect timed out.
    #[error("connection timeout")]
    ConnectTimeout,
    /// The TLS handshake failed (Envoy counts it as a connect failure and gives the same reason).
    #[error("remote connection failure")]
    Tls(std::io::Error),
    /// The HTTP handshake failed.
    #[error("protocol error")]
    Handshake(BoxError),
    /// The connection was reset or closed before headers.
    #[error("connection termination")]
    Reset(BoxError),
}

/// Returned with a response: keeps the HTTP/2 stream slot (or H1 bookkeeping) until the
/// response body is done.
pub struct StreamSlot {
    active: Option<Rc<Cell<u32>>>,
}

impl StreamSlot {
    /// A slot that holds nothing (non-pooled exchanges).
    pub fn none() -> Self {
        StreamSlot { active: None }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(a) = &self.active {
            a.set(a.get().saturating_sub(1));
        }
    }
}

/// All pools of one worker.
#[derive(Default)]
pub struct ConnPools {
    pools: RefCell<HashMap<PoolKey, Pool>>,
    /// Woken when an HTTP/2 dial finishes (successfully or not).
    h2_dialed: tokio::sync::Notify,
}

enum Checkout {
    H1(http1::SendRequest<RequestBody>, u32),
    H2(H2Sender, Rc<Cell<u32>>),
    Dial,
}

impl ConnPools {
    /// Send `req` to `host` of `cluster` over `protocol`, reusing a pooled connection when one
    /// is free. Returns the response (headers; body streams) and the stream slot to hold
    /// until the body is done. `connected` is set once the request has a connection (Envoy's
    /// "pool ready": per-try timers start then, and a reset after it is no longer one
    /// "before request").
    pub async fn send(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        protocol: Protocol,
        mut req: Request<RequestBody>,
        connected: &Cell<bool>,
    ) -> Result<(http::Response<UpstreamBody>, StreamSlot), UpstreamError> {
        let key = PoolKey { cluster_id: cluster.id, addr: host.address, protocol };
        // One retry on a fresh connection when a pooled one turns out dead before the request
        // was written (a race with the upstream's idle close or GOAWAY), as Envoy does.
        for attempt in 0..2 {
            let checkout = if attempt > 0 {
                Checkout::Dial
            } else {
                match self.checkout(&key, cluster) {
                    // Maybe wait for a dial in progress: boxed, so its timer stays out of the
                    // common path's future (a `Dial` checkout changed nothing; it is redone).
                    Checkout::Dial if key.protocol == Protocol::Http2 => {
                        Box::pin(self.checkout_or_wait(&key, cluster)).await
                    }
                    c => c,
                }
            };
            match checkout {
                Checkout::H1(mut sender, requests) => {
                    connected.set(true);
                    match sender.try_send_request(req).await {
                        Ok(resp) => {
                            self.checkin_h1(key, cluster, sender, requests + 1);
                            return Ok((resp.map(UpstreamBody::H1), StreamSlot { active: None }));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(r) if attempt == 0 => req = r,
                            _ => return Err(UpstreamError::Reset(e.into_error().into())),
                        },
                    }
                }
                Checkout::H2(sender, active) => {
                    connected.set(true);
                    match sender.send(req).await {
                        Ok(resp) => return Ok((resp.map(UpstreamBody::H2), StreamSlot { active: Some(active) })),
                        Err((e, back)) => {
                            active.set(active.get().saturating_sub(1));
                            match back {
                                Some(r) if attempt == 0 => req = r,
                                _ => return Err(UpstreamError::Reset(e)),
                            }
                        }
                    }
                }
                // Boxed: dialing and the handshakes are the largest states of this future and
                // the rare path; inline, every request's future would carry (and copy) them.
                Checkout::Dial => return Box::pin(self.dial_and_send(key, cluster, host, req, connected)).await,
            }
        }
        unreachable!("the second attempt always dials and returns")
    }

    /// Dial a new connection for `key` and send `req` on it.
    async fn dial_and_send(
        &self,
        key: PoolKey,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        req: Request<RequestBody>,
        connected: &Cell<bool>,
    ) -> Result<(http::Response<UpstreamBody>, StreamSlot), UpstreamError> {
        let protocol = key.protocol;
        // Requests arriving while this HTTP/2 connection is dialed wait for it.
        let dialing = (protocol == Protocol::Http2).then(|| H2Dialing::start(self, key, cluster));
        let stream = dial(cluster, host, protocol == Protocol::Http2).await?;
        match protocol {
            Protocol::Http1 => {
                let mut sender = handshake_h1(stream, cluster, host).await?;
                connected.set(true);
                let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.into()))?;
                self.checkin_h1(key, cluster, sender, 1);
                Ok((resp.map(UpstreamBody::H1), StreamSlot { active: None }))
            }
            Protocol::Http2 => {
                let sender = handshake_h2(stream, cluster, host).await?;
                connected.set(true);
                let active = Rc::new(Cell::new(1));
                self.add_h2(key, cluster, sender.clone(), active.clone());
                drop(dialing);
                let resp = sender.send(req).await.map_err(|(e, _)| {
                    active.set(active.get().saturating_sub(1));
                    UpstreamError::Reset(e)
                })?;
                Ok((resp.map(UpstreamBody::H2), StreamSlot { active: Some(active) }))
            }
        }
    }

    /// Dial a plain HTTP/1.1 connection for an upgrade (WebSocket): never pooled.
    pub async fn upgrade_connection(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let stream = dial(cluster, host, false).await?;
        handshake_h1(stream, cluster, host).await
    }

    /// `checkout`, but an HTTP/2 request that would dial while another request of the same
    /// pool is already dialing waits for that connection (bounded by the connect timeout), so
    /// a burst of requests shares one new connection instead of opening one each.
    async fn checkout_or_wait(&self, key: &PoolKey, cluster: &Cluster) -> Checkout {
        let deadline = tokio::time::Instant::now() + cluster.config.connect_timeout + Duration::from_secs(1);
        loop {
            let c = self.checkout(key, cluster);
            let dialing = self.pools.borrow().get(key).is_some_and(|p| p.h2_dialing > 0);
            if !matches!(c, Checkout::Dial) || key.protocol != Protocol::Http2 || !dialing {
                return c;
            }
            if tokio::time::timeout_at(deadline, self.h2_dialed.notified()).await.is_err() {
                return Checkout::Dial;
            }
        }
    }

    fn checkout(&self, key: &PoolKey, cluster: &Cluster) -> Checkout {
        let mut pools = self.pools.borrow_mut();
        let Some(pool) = pools.get_mut(key) else { return Checkout::Dial };
        match key.protocol {
            Protocol::Http1 => {
                pool.h1.retain(|c| !c.sender.is_closed());
                if let Some(i) = pool.h1.iter().position(|c| c.sender.is_ready()) {
                    let c = pool.h1.swap_remove(i);
                    return Checkout::H1(c.sender, c.requests);
                }
                Checkout::Dial
            }
            Protocol::Http2 => {
                pool.h2.retain(|c| !c.sender.is_closed());
                let max_streams = cluster.config.http2.max_concurrent_streams.max(1);
                let max_requests = cluster.config.max_requests_per_connection;
                for c in pool.h2.iter_mut() {
                    // The peer's SETTINGS_MAX_CONCURRENT_STREAMS bounds each connection too:
                    // past it, a new connection is dialed rather than queueing streams.
                    let limit = (max_streams as usize).min(c.sender.peer_max_streams()).max(1);
                    if (c.active.get() as usize) < limit && (max_requests == 0 || c.requests < max_requests) {
                        c.active.set(c.active.get() + 1);
                        c.requests += 1;
                        c.last_used = Instant::now();
                        return Checkout::H2(c.sender.clone(), c.active.clone());
                    }
                }
                // Connections that reached max_requests_per_connection drain: drop them from the
                // pool once idle so they close.
                if max_requests > 0 {
                    pool.h2.retain(|c| c.requests < max_requests || c.active.get() > 0);
                }
                Checkout::Dial
            }
        }
    }

    fn checkin_h1(&self, key: PoolKey, cluster: &Cluster, sender: http1::SendRequest<RequestBody>, requests: u32) {
        let max = cluster.config.max_requests_per_connection;
        if max > 0 && requests >= max {
            return; // dropping the sender closes the connection once the response is done
        }
        let mut pools = self.pools.borrow_mut();
        let pool =
            pools.entry(key).or_insert_with(|| Pool { idle_timeout: cluster.config.idle_timeout, ..Pool::default() });
        pool.h1.push(H1Conn { sender, requests, last_used: Instant::now() });
    }

    fn add_h2(&self, key: PoolKey, cluster: &Cluster, sender: H2Sender, active: Rc<Cell<u32>>) {
        let mut pools = self.pools.borrow_mut();
        let pool =
            pools.entry(key).or_insert_with(|| Pool { idle_timeout: cluster.config.idle_timeout, ..Pool::default() });
        pool.h2.push(H2Conn { sender, active, requests: 1, last_used: Instant::now() });
    }

    /// Close idle connections past their idle timeout, dead ones, and idle connections to
    /// hosts or clusters that are no longer in the config (`live(cluster_id, host)` says
    /// which are current); busy ones finish their requests first.
    pub fn sweep(&self, live: impl Fn(u64, SocketAddr) -> bool) {
        let now = Instant::now();
        let mut pools = self.pools.borrow_mut();
        pools.retain(|key, pool| {
            let expired = |last: Instant| pool.idle_timeout.is_some_and(|t| now.duration_since(last) >= t);
            pool.h1.retain(|c| !(c.sender.is_closed() || c.sender.is_ready() && expired(c.last_used)));
            pool.h2.retain(|c| !(c.sender.is_closed() || c.active.get() == 0 && expired(c.last_used)));
            if !live(key.cluster_id, key.addr) {
                pool.h1.retain(|c| !c.sender.is_ready());
                pool.h2.retain(|c| c.active.get() > 0);
            }
            !(pool.h1.is_empty() && pool.h2.is_empty() && pool.h2_dialing == 0)
        });
    }

    /// Number of pooled connections (for tests and stats).
    pub fn pooled(&self) -> usize {
        self.pools.borrow().values().map(|p| p.h1.len() + p.h2.len()).sum()
    }
}

/// Marks an HTTP/2 dial (TCP connect + handshake) in progress for one pool; on drop (success
/// or failure) clears the mark and wakes the requests waiting for it.
struct H2Dialing<'a> {
    pools: &'a ConnPools,
    key: PoolKey,
}

impl<'a> H2Dialing<'a> {
    fn start(pools: &'a ConnPools, key: PoolKey, cluster: &Cluster) -> Self {
        let mut map = pools.pools.borrow_mut();
        let pool =
            map.entry(key).or_insert_with(|| Pool { idle_timeout: cluster.config.idle_timeout, ..Pool::default() });
        pool.h2_dialing += 1;
        H2Dialing { pools, key }
    }
}

impl Drop for H2Dialing<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pools.pools.borrow_mut().get_mut(&self.key) {
            p.h2_dialing = p.h2_dialing.saturating_sub(1);
        }
        self.pools.h2_dialed.notify_waiters();
    }
}

/// Connect to `host`, with the cluster's TLS when it has one (ALPN offering `h2` when the
/// connection will speak HTTP/2, unless the TLS context lists its own protocols).
async fn dial(cluster: &Cluster, host: &Host, http2: bool) -> Result<Io, UpstreamError> {
    let stats = &cluster.stats;
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(cluster.config.connect_timeout, TcpStream::connect(host.address)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            stats.upstream_cx_total.inc();
            HostStats::inc(&host.stats.cx_total);
            let Some(tls) = &cluster.tls else { return Ok(Io::Plain(s)) };
            // As in Envoy, connect_timeout bounds TCP connect and TLS handshake together.
            let left = cluster.config.connect_timeout.saturating_sub(started.elapsed());
            let alpn = if http2 { Alpn::Http2 } else { Alpn::Http1 };
            tls.connect(s, alpn, left).await.map_err(|e| {
                stats.upstream_cx_connect_fail.inc();
                HostStats::inc(&host.stats.cx_connect_fail);
                if e.kind() == std::io::ErrorKind::TimedOut {
                    stats.upstream_cx_connect_timeout.inc();
                    UpstreamError::ConnectTimeout
                } else {
                    UpstreamError::Tls(e)
                }
            })
        }
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            HostStats::inc(&host.stats.cx_connect_fail);
            Err(UpstreamError::ConnectFailure(e))
        }
        Err(_) => {
            stats.upstream_cx_connect_fail.inc();
            stats.upstream_cx_connect_timeout.inc();
            HostStats::inc(&host.stats.cx_connect_fail);
            Err(UpstreamError::ConnectTimeout)
        }
    }
}

/// Tracks `upstream_cx_active` for the life of a connection task.
struct CxActive {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
}

impl CxActive {
    fn new(cluster: &Arc<Cluster>, host: &Arc<Host>) -> Self {
        cluster.stats.upstream_cx_active.inc();
        HostStats::add(&host.stats.cx_active, 1);
        CxActive { cluster: cluster.clone(), host: host.clone() }
    }
}

impl Drop for CxActive {
    fn drop(&mut self) {
        self.cluster.stats.upstream_cx_active.dec();
        self.cluster.stats.upstream_cx_destroy.inc();
        HostStats::add(&self.host.stats.cx_active, -1);
    }
}

/// Largest read buffer of an upstream HTTP/1.1 connection (see `handshake_h1`).
const UPSTREAM_H1_READ_BUF: usize = 96 * 1024;

async fn handshake_h1(
    stream: Io,
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
    // hyper's adaptive read buffer grows to ~400 KiB on large bodies; a read buffer of 128
    // KiB or more is mmapped by malloc and page-faulted (and zeroed) afresh for each response.
    // 96 KiB keeps it on the heap, still takes a 64 KiB body and its head in one read (64 KiB
    // took two, one more syscall per response), and holds any response head Envoy accepts
    // (60 KiB `max_response_headers_kb`).
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_H1_READ_BUF)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(e.into()))?;
    cluster.stats.upstream_cx_http1_total.inc();
    let guard = CxActive::new(cluster, host);
    tokio::task::spawn_local(async move {
        let _guard = guard;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream http/1.1 connection ended");
        }
    });
    Ok(sender)
}

async fn handshake_h2(stream: Io, cluster: &Arc<Cluster>, host: &Arc<Host>) -> Result<H2Sender, UpstreamError> {
    let guard = CxActive::new(cluster, host);
    let sender =
        h2_client::handshake(stream, &cluster.config.http2, cluster.config.connect_timeout, move || drop(guard))
            .await
            .map_err(|e| UpstreamError::Handshake(e.into()))?;
    cluster.stats.upstream_cx_http2_total.inc();
    Ok(sender)
}
