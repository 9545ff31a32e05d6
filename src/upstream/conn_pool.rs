//! Per-worker upstream connection pools (Envoy's `ConnPoolImplBase`, `conn_pool_base.cc`),
//! one per cluster generation, host, protocol and routing priority. Owned by one worker
//! thread (`Rc`/`RefCell`): no lock on the request path. The cluster's circuit breakers
//! (`ResourceManager`, shared atomics) bound them across workers.
//!
//! A request takes a ready connection (HTTP/1.1: an idle one; HTTP/2: one with a free
//! stream) if there is one, which is the only admission check on the common path:
//! `max_requests` (an overflow is answered at once, `upstream_rq_active_overflow`). Otherwise
//! it becomes a pending request (`max_pending_requests`, else `upstream_rq_pending_overflow`)
//! and, when the pending requests outnumber what connections being set up will carry, the
//! pool dials another connection if `max_connections` (and the host's
//! `per_host_thresholds.max_connections`) allow; if not it counts `upstream_cx_overflow`
//! and dials only when it has no connection at all. Connections are dialed by their own
//! task, not by a request: when one is up, or a stream ends on one, the oldest pending
//! requests get it. A failed dial fails every pending request of the pool
//! (`upstream_rq_pending_failure_eject`), as Envoy purges them. A pending request that gives
//! up (route timeout, downstream gone) counts `upstream_rq_cancelled`.
//!
//! HTTP/1.1 connections serve one request at a time; HTTP/2 connections multiplex up to the
//! cluster's `max_concurrent_streams` and the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`. A
//! pool exists while it has connections or pending requests (`max_connection_pools` counts
//! them; a request that would need a new pool beyond it gets `upstream_cx_pool_overflow`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use pinion_xds::model::RoutingPriority;
use tokio::net::TcpStream;

use super::h2_client::{self, H2Sender};
use super::resource_manager::{Resource, ResourceGuard, ResourceManager};
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

#[derive(Hash, PartialEq, Eq, Clone, Copy, Debug)]
struct PoolKey {
    cluster_id: u64,
    addr: SocketAddr,
    protocol: Protocol,
    priority: RoutingPriority,
}

/// Which circuit breaker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_pending_requests`: no ready connection and no room to wait for one.
    Pending,
    /// `max_requests`: a connection was ready but the cluster has too many active requests.
    Active,
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
    /// A circuit breaker refused the request (Envoy's `PoolFailureReason::Overflow`).
    #[error("overflow")]
    Overflow(Overflow),
    /// No pool for the host: `max_connection_pools` reached (Envoy then answers as for no
    /// healthy upstream).
    #[error("connection pool overflow")]
    PoolOverflow,
}

impl UpstreamError {
    /// The same failure for another pending request of a pool whose dial failed.
    fn for_another_request(&self) -> UpstreamError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            UpstreamError::ConnectFailure(e) => UpstreamError::ConnectFailure(io(e)),
            UpstreamError::ConnectTimeout => UpstreamError::ConnectTimeout,
            UpstreamError::Tls(e) => UpstreamError::Tls(io(e)),
            UpstreamError::Handshake(e) => UpstreamError::Handshake(e.to_string().into()),
            UpstreamError::Reset(e) => UpstreamError::Reset(e.to_string().into()),
            UpstreamError::Overflow(o) => UpstreamError::Overflow(*o),
            UpstreamError::PoolOverflow => UpstreamError::PoolOverflow,
        }
    }
}

/// An HTTP/1.1 connection while it is not serving a request.
struct H1Conn {
    sender: http1::SendRequest<RequestBody>,
    requests: u32,
    last_used: Instant,
}

/// An HTTP/2 connection; its streams hold clones of `sender` and `active`.
struct H2Conn {
    id: u64,
    sender: H2Sender,
    active: Rc<Cell<u32>>,
    requests: u32,
    last_used: Instant,
}

/// A request waiting in a pool (Envoy's `PendingStream`).
struct Waiter {
    /// What the pool decided for it: a stream on a connection, or a failure.
    assigned: RefCell<Option<Result<StreamSlot, UpstreamError>>>,
    waker: Cell<Option<Waker>>,
    /// The pending-request resource and gauges, released when the wait ends.
    hold: RefCell<Option<PendingHold>>,
}

impl Waiter {
    fn assign(&self, outcome: Result<StreamSlot, UpstreamError>) {
        self.hold.take();
        *self.assigned.borrow_mut() = Some(outcome);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A pending request's accounting: `upstream_rq_pending_active`, the host's
/// `rq_pending_active` and the `max_pending_requests` resource.
struct PendingHold {
    pool: Rc<Pool>,
    _resource: ResourceGuard,
}

impl Drop for PendingHold {
    fn drop(&mut self) {
        self.pool.cluster.stats.upstream_rq_pending_active.dec();
        HostStats::add(&self.pool.host.stats.rq_pending_active, -1);
    }
}

#[derive(Default)]
struct PoolState {
    /// HTTP/1.1 connections not serving a request, most recently used last.
    h1_ready: Vec<H1Conn>,
    /// HTTP/1.1 connections serving a request (held by its `StreamSlot`).
    h1_busy: u32,
    h2: Vec<H2Conn>,
    /// Connections being dialed, and the streams they will carry.
    connecting: u32,
    connecting_capacity: u64,
    /// Oldest first.
    pending: VecDeque<Rc<Waiter>>,
    next_id: u64,
    /// An `on_upstream_ready` is scheduled (see `on_stream_closed`).
    ready_scheduled: bool,
}

impl PoolState {
    fn has_connections(&self) -> bool {
        !self.h1_ready.is_empty() || self.h1_busy > 0 || !self.h2.is_empty() || self.connecting > 0
    }
}

type PoolMap = RefCell<HashMap<PoolKey, Rc<Pool>>>;

/// One pool: the connections of one worker to one host of one cluster generation, for one
/// protocol and priority.
struct Pool {
    key: PoolKey,
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    rm: Arc<ResourceManager>,
    /// The worker's pools, to leave them once idle.
    map: Weak<PoolMap>,
    st: RefCell<PoolState>,
    /// `max_connection_pools`.
    _pool: ResourceGuard,
}

/// What `new_stream` gives a request.
enum Checkout {
    /// A stream on a ready connection.
    Ready(StreamSlot),
    /// Refused (a circuit breaker).
    Refused(UpstreamError),
    /// Waiting for a connection.
    Pending(PendingStream),
}

#[derive(Debug, PartialEq, Eq)]
enum ConnectResult {
    ShouldNotConnect,
    Created,
    CreatedButRateLimited,
    RateLimited,
}

impl Pool {
    /// Streams one new connection will carry (Envoy's `effectiveConcurrentStreamLimit`).
    fn connection_capacity(&self) -> u64 {
        match self.key.protocol {
            Protocol::Http1 => 1,
            Protocol::Http2 => {
                let streams = u64::from(self.cluster.config.http2.max_concurrent_streams.max(1));
                match self.cluster.config.max_requests_per_connection {
                    0 => streams,
                    n => streams.min(u64::from(n)),
                }
            }
        }
    }

    /// Envoy's `attachStreamToClient` accounting: `max_requests`, then the active request
    /// gauges and totals. On overflow the connection comes back with the error.
    fn attach(self: &Rc<Self>, conn: SlotConn) -> Result<StreamSlot, (SlotConn, UpstreamError)> {
        if !self.rm.requests().try_acquire() {
            let stats = &self.cluster.stats;
            stats.upstream_rq_active_overflow.inc();
            // Envoy 1.38 moved these out of upstream_rq_pending_overflow; the runtime flag
            // brings the old count back.
            let skip = crate::runtime::snapshot()
                .values
                .get("envoy.reloadable_features.skip_pending_overflow_count_on_active_rq")
                .and_then(|v| v.boolean)
                .unwrap_or(true);
            if !skip {
                stats.upstream_rq_pending_overflow.inc();
            }
            return Err((conn, UpstreamError::Overflow(Overflow::Active)));
        }
        let stats = &self.cluster.stats;
        stats.upstream_rq_total.inc();
        stats.upstream_rq_active.inc();
        HostStats::inc(&self.host.stats.rq_total);
        HostStats::add(&self.host.stats.rq_active, 1);
        Ok(StreamSlot { attached: Some(Attached { pool: self.clone() }), conn })
    }

    /// A ready connection, taken for a stream: an idle HTTP/1.1 one (most recently used
    /// first, as Envoy's ready list), or an HTTP/2 one with a free stream.
    fn take_ready(&self, st: &mut PoolState) -> Option<SlotConn> {
        match self.key.protocol {
            Protocol::Http1 => {
                while let Some(mut c) = st.h1_ready.pop() {
                    if c.sender.is_closed() {
                        continue;
                    }
                    st.h1_busy += 1;
                    c.requests += 1;
                    return Some(SlotConn::H1(c));
                }
                None
            }
            Protocol::Http2 => {
                st.h2.retain(|c| !c.sender.is_closed());
                let max_streams = self.cluster.config.http2.max_concurrent_streams.max(1) as usize;
                let max_requests = self.cluster.config.max_requests_per_connection;
                let c = st.h2.iter_mut().find(|c| {
                    // The peer's SETTINGS_MAX_CONCURRENT_STREAMS bounds each connection too.
                    let limit = max_streams.min(c.sender.peer_max_streams()).max(1);
                    (c.active.get() as usize) < limit && (max_requests == 0 || c.requests < max_requests)
                })?;
                c.active.set(c.active.get() + 1);
                c.requests += 1;
                c.last_used = Instant::now();
                Some(SlotConn::H2 { id: c.id, sender: c.sender.clone(), active: c.active.clone() })
            }
        }
    }

    /// Undo `take_ready` for a connection that got no stream (the request overflowed).
    fn put_back(&self, conn: SlotConn) {
        let mut st = self.st.borrow_mut();
        match conn {
            SlotConn::H1(mut c) => {
                st.h1_busy -= 1;
                c.requests -= 1;
                st.h1_ready.push(c);
            }
            SlotConn::H2 { id, active, .. } => {
                active.set(active.get().saturating_sub(1));
                if let Some(c) = st.h2.iter_mut().find(|c| c.id == id) {
                    c.requests -= 1;
                }
            }
            SlotConn::None => {}
        }
    }

    /// Envoy's `newStreamImpl`.
    fn new_stream(self: &Rc<Self>) -> Checkout {
        let ready = self.take_ready(&mut self.st.borrow_mut());
        if let Some(conn) = ready {
            return match self.attach(conn) {
                Ok(slot) => Checkout::Ready(slot),
                Err((conn, e)) => {
                    self.put_back(conn);
                    Checkout::Refused(e)
                }
            };
        }
        let Some(resource) = self.rm.try_acquire(Resource::PendingRequest) else {
            self.cluster.stats.upstream_rq_pending_overflow.inc();
            return Checkout::Refused(UpstreamError::Overflow(Overflow::Pending));
        };
        let stats = &self.cluster.stats;
        stats.upstream_rq_pending_total.inc();
        stats.upstream_rq_pending_active.inc();
        HostStats::add(&self.host.stats.rq_pending_active, 1);
        let waiter = Rc::new(Waiter {
            assigned: RefCell::new(None),
            waker: Cell::new(None),
            hold: RefCell::new(Some(PendingHold { pool: self.clone(), _resource: resource })),
        });
        self.st.borrow_mut().pending.push_back(waiter.clone());
        self.try_create_connections();
        Checkout::Pending(PendingStream { pool: self.clone(), waiter })
    }

    /// Envoy's `tryCreateNewConnections`: up to three connections while the pending
    /// requests outnumber the streams of the connections being set up.
    fn try_create_connections(self: &Rc<Self>) {
        for _ in 0..3 {
            if self.try_create_connection() != ConnectResult::Created {
                break;
            }
        }
    }

    fn try_create_connection(self: &Rc<Self>) -> ConnectResult {
        let (wanted, has_connections) = {
            let st = self.st.borrow();
            (st.pending.len() as u64 > st.connecting_capacity, st.has_connections())
        };
        if !wanted {
            return ConnectResult::ShouldNotConnect;
        }
        // Envoy's `canCreateConnection`: the host's limit, then the cluster's.
        let host_active = self.host.stats.cx_active.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64;
        let host_ok = host_active < self.rm.max_connections_per_host();
        let resource = if host_ok { self.rm.try_acquire(Resource::Connection) } else { None };
        let created = resource.is_some();
        if !created {
            self.cluster.stats.upstream_cx_overflow.inc();
        }
        // A pool with no connection at all gets one even past the limit (other pools or
        // workers hold the connections), or its pending requests could never be served.
        let resource = match resource {
            Some(r) => r,
            None if !has_connections => self.rm.acquire(Resource::Connection),
            None => return ConnectResult::RateLimited,
        };
        let capacity = self.connection_capacity();
        {
            let mut st = self.st.borrow_mut();
            st.connecting += 1;
            st.connecting_capacity += capacity;
        }
        let guard = ConnGuard::new(self.clone(), resource);
        tokio::task::spawn_local(connect(self.clone(), guard, capacity));
        if created {
            ConnectResult::Created
        } else {
            ConnectResult::CreatedButRateLimited
        }
    }

    /// Envoy's `onUpstreamReady`: give ready connections to the oldest pending requests;
    /// dial more if some are still waiting.
    fn on_upstream_ready(self: &Rc<Self>) {
        loop {
            let mut st = self.st.borrow_mut();
            if st.pending.is_empty() {
                break;
            }
            let Some(conn) = self.take_ready(&mut st) else { break };
            let Some(waiter) = st.pending.pop_front() else { break };
            drop(st);
            let outcome = match self.attach(conn) {
                Ok(slot) => Ok(slot),
                Err((conn, e)) => {
                    self.put_back(conn);
                    Err(e)
                }
            };
            waiter.assign(outcome);
        }
        if !self.st.borrow().pending.is_empty() {
            self.try_create_connections();
        }
    }

    /// A dial finished.
    fn on_connected(self: &Rc<Self>, capacity: u64, conn: Result<NewConn, UpstreamError>) {
        {
            let mut st = self.st.borrow_mut();
            st.connecting -= 1;
            st.connecting_capacity -= capacity;
            match conn {
                Ok(NewConn::H1(sender)) => st.h1_ready.push(H1Conn { sender, requests: 0, last_used: Instant::now() }),
                Ok(NewConn::H2(sender)) => {
                    st.next_id += 1;
                    let id = st.next_id;
                    st.h2.push(H2Conn {
                        id,
                        sender,
                        active: Rc::new(Cell::new(0)),
                        requests: 0,
                        last_used: Instant::now(),
                    });
                }
                Err(e) => {
                    drop(st);
                    self.purge_pending(&e);
                    return;
                }
            }
        }
        self.on_upstream_ready();
    }

    /// A dial failed: every pending request fails with it (Envoy's `purgePendingStreams`).
    fn purge_pending(&self, e: &UpstreamError) {
        let waiters = std::mem::take(&mut self.st.borrow_mut().pending);
        for w in waiters {
            self.cluster.stats.upstream_rq_pending_failure_eject.inc();
            w.assign(Err(e.for_another_request()));
        }
    }

    /// A stream ended (`ok`: its response was read to the end). HTTP/1.1: the connection
    /// serves the next request, unless the exchange was cut short or it reached
    /// `max_requests_per_connection` (then it closes).
    fn on_stream_closed(self: &Rc<Self>, conn: SlotConn, ok: bool) {
        let max_requests = self.cluster.config.max_requests_per_connection;
        {
            let mut st = self.st.borrow_mut();
            if let SlotConn::H1(_) = conn {
                // Envoy's HTTP/1.1 pool hands a freed connection to a pending request from a
                // callback scheduled for later in the event loop iteration, so the streams
                // that end together are given out by one pass (which then dials, or counts
                // `upstream_cx_overflow`, once). Same here, on the worker's task queue.
                if !st.pending.is_empty() && !st.ready_scheduled {
                    st.ready_scheduled = true;
                    let pool = self.clone();
                    tokio::task::spawn_local(async move {
                        pool.st.borrow_mut().ready_scheduled = false;
                        pool.on_upstream_ready();
                    });
                }
            }
            match conn {
                SlotConn::H1(mut c) => {
                    st.h1_busy -= 1;
                    let drained = max_requests > 0 && c.requests >= max_requests;
                    if ok && !drained && !c.sender.is_closed() {
                        c.last_used = Instant::now();
                        st.h1_ready.push(c);
                    }
                    // Otherwise dropping the sender closes the connection.
                    drop(st);
                    self.remove_if_idle();
                    return;
                }
                SlotConn::H2 { active, id, .. } => {
                    active.set(active.get().saturating_sub(1));
                    // Connections that reached max_requests_per_connection leave once idle.
                    if max_requests > 0 {
                        st.h2.retain(|c| c.id != id || c.requests < max_requests || c.active.get() > 0);
                    }
                }
                SlotConn::None => return,
            }
        }
        self.on_upstream_ready();
        self.remove_if_idle();
    }

    /// A connection of this pool ended: forget it, dial for pending requests if any (Envoy
    /// does so when it loses a connection), and leave the worker's pools once idle.
    fn on_connection_closed(self: &Rc<Self>) {
        let pending = {
            let mut st = self.st.borrow_mut();
            st.h1_ready.retain(|c| !c.sender.is_closed());
            st.h2.retain(|c| !c.sender.is_closed());
            !st.pending.is_empty()
        };
        if pending {
            self.try_create_connections();
        }
        self.remove_if_idle();
    }

    /// Leave the worker's pools when nothing is left in this one (Envoy deletes idle pools),
    /// which gives back its `max_connection_pools` slot once the last handle goes.
    fn remove_if_idle(&self) {
        {
            let st = self.st.borrow();
            if st.has_connections() || !st.pending.is_empty() {
                return;
            }
        }
        if let Some(map) = self.map.upgrade() {
            let mut map = map.borrow_mut();
            if map.get(&self.key).is_some_and(|p| std::ptr::eq(&**p, self)) {
                map.remove(&self.key);
            }
        }
    }
}

/// A connection a dial produced.
enum NewConn {
    H1(http1::SendRequest<RequestBody>),
    H2(H2Sender),
}

/// Dial a connection for `pool`; `guard` lives as long as the connection.
async fn connect(pool: Rc<Pool>, guard: ConnGuard, capacity: u64) {
    let http2 = pool.key.protocol == Protocol::Http2;
    let result = match dial(&pool.cluster, &pool.host, http2).await {
        Err(e) => Err((e, Some(guard))),
        Ok(stream) => match pool.key.protocol {
            Protocol::Http1 => handshake_h1(stream, guard).await.map(NewConn::H1),
            Protocol::Http2 => handshake_h2(stream, &pool.cluster, guard).await.map(NewConn::H2),
        },
    };
    match result {
        Ok(conn) => pool.on_connected(capacity, Ok(conn)),
        Err((e, guard)) => {
            // The pending requests fail before the connection's resources go (Envoy's
            // order), so its release does not dial again for them.
            pool.on_connected(capacity, Err(e));
            drop(guard);
        }
    }
}

/// A request waiting for a connection; dropping it (route timeout, downstream gone) takes it
/// out of the pool.
struct PendingStream {
    pool: Rc<Pool>,
    waiter: Rc<Waiter>,
}

impl PendingStream {
    async fn wait(&self) -> Result<StreamSlot, UpstreamError> {
        std::future::poll_fn(|cx| match self.waiter.assigned.borrow_mut().take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                self.waiter.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for PendingStream {
    fn drop(&mut self) {
        let queued = {
            let mut st = self.pool.st.borrow_mut();
            match st.pending.iter().position(|w| Rc::ptr_eq(w, &self.waiter)) {
                Some(i) => {
                    st.pending.remove(i);
                    true
                }
                None => false,
            }
        };
        if queued {
            self.pool.cluster.stats.upstream_rq_cancelled.inc();
            self.waiter.hold.take();
            self.pool.remove_if_idle();
        } else if let Some(Ok(slot)) = self.waiter.assigned.borrow_mut().take() {
            // Given a connection it never used: the connection serves the next request.
            slot.finish(true);
        }
    }
}

/// What a stream holds of its connection.
enum SlotConn {
    /// Not pooled (an upgrade's connection).
    None,
    /// The HTTP/1.1 connection, owned by the stream while it runs.
    H1(H1Conn),
    /// A stream of an HTTP/2 connection.
    H2 { id: u64, sender: H2Sender, active: Rc<Cell<u32>> },
}

/// An attached request: holds the `max_requests` resource and the active request gauges.
struct Attached {
    pool: Rc<Pool>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let p = &self.pool;
        p.rm.requests().release();
        p.cluster.stats.upstream_rq_active.dec();
        HostStats::add(&p.host.stats.rq_active, -1);
    }
}

/// A request's stream on a connection, from attach until its response is done: the
/// `max_requests` resource, the active request gauges, and the connection (HTTP/1.1) or the
/// stream slot (HTTP/2). [`StreamSlot::finish`] gives the connection back; dropping it
/// without `finish` means the exchange was cut short.
pub struct StreamSlot {
    attached: Option<Attached>,
    conn: SlotConn,
}

impl StreamSlot {
    /// The cluster and host of the stream, if it is attached to one.
    pub fn target(&self) -> Option<(&Arc<Cluster>, &Arc<Host>)> {
        self.attached.as_ref().map(|a| (&a.pool.cluster, &a.pool.host))
    }

    /// The stream is done; `ok`: its response was read to the end (an HTTP/1.1 connection
    /// is reused only then).
    pub fn finish(mut self, ok: bool) {
        self.close(ok);
    }

    fn close(&mut self, ok: bool) {
        // The request resource goes first, so the next pending request may attach.
        let Some(attached) = self.attached.take() else { return };
        let pool = attached.pool.clone();
        drop(attached);
        let conn = std::mem::replace(&mut self.conn, SlotConn::None);
        pool.on_stream_closed(conn, ok);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.close(false);
    }
}

/// A connection's accounting for its whole life, dial included (Envoy's `ActiveClient`):
/// `upstream_cx_total`, `upstream_cx_http1_total`/`http2_total`, `upstream_cx_active`, the
/// host's `cx_total` and `cx_active`, and the `max_connections` resource. On drop (the
/// connection ended or its dial failed) it counts `upstream_cx_destroy` and tells the pool.
struct ConnGuard {
    pool: Rc<Pool>,
    resource: Option<ResourceGuard>,
}

impl ConnGuard {
    fn new(pool: Rc<Pool>, resource: ResourceGuard) -> Self {
        let stats = &pool.cluster.stats;
        stats.upstream_cx_total.inc();
        match pool.key.protocol {
            Protocol::Http1 => stats.upstream_cx_http1_total.inc(),
            Protocol::Http2 => stats.upstream_cx_http2_total.inc(),
        }
        stats.upstream_cx_active.inc();
        HostStats::inc(&pool.host.stats.cx_total);
        HostStats::add(&pool.host.stats.cx_active, 1);
        ConnGuard { pool, resource: Some(resource) }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let stats = &self.pool.cluster.stats;
        stats.upstream_cx_active.dec();
        stats.upstream_cx_destroy.inc();
        HostStats::add(&self.pool.host.stats.cx_active, -1);
        drop(self.resource.take());
        self.pool.on_connection_closed();
    }
}

/// All pools of one worker.
#[derive(Default)]
pub struct ConnPools {
    pools: Rc<PoolMap>,
}

impl ConnPools {
    /// The pool for this cluster, host, protocol and priority, created if the cluster's
    /// `max_connection_pools` allows (else `upstream_cx_pool_overflow`).
    fn pool(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        protocol: Protocol,
        priority: RoutingPriority,
    ) -> Result<Rc<Pool>, UpstreamError> {
        let key = PoolKey { cluster_id: cluster.id, addr: host.address, protocol, priority };
        if let Some(p) = self.pools.borrow().get(&key) {
            return Ok(p.clone());
        }
        let rm = cluster.resource_manager(priority);
        let Some(slot) = rm.try_acquire(Resource::ConnectionPool) else {
            cluster.stats.upstream_cx_pool_overflow.inc();
            return Err(UpstreamError::PoolOverflow);
        };
        let pool = Rc::new(Pool {
            key,
            cluster: cluster.clone(),
            host: host.clone(),
            rm: rm.clone(),
            map: Rc::downgrade(&self.pools),
            st: RefCell::new(PoolState::default()),
            _pool: slot,
        });
        self.pools.borrow_mut().insert(key, pool.clone());
        Ok(pool)
    }

    /// Send `req` to `host` of `cluster` over `protocol` at `priority`: on a ready
    /// connection, or after waiting for one. Returns the response (headers; the body
    /// streams) and the stream slot to finish when the body is done. `connected` is set once
    /// the request has a connection (Envoy's "pool ready": per-try timers start then, and a
    /// reset after it is no longer one "before request").
    pub async fn send(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        protocol: Protocol,
        priority: RoutingPriority,
        mut req: Request<RequestBody>,
        connected: &Cell<bool>,
    ) -> Result<(http::Response<UpstreamBody>, StreamSlot), UpstreamError> {
        let pool = self.pool(cluster, host, protocol, priority)?;
        // One retry when a pooled connection turns out dead before the request was written
        // (a race with the upstream's idle close or GOAWAY).
        for attempt in 0..2 {
            let mut slot = match pool.new_stream() {
                Checkout::Ready(slot) => slot,
                Checkout::Refused(e) => {
                    // A pool made for this request alone does not stay (nor keep its slot).
                    pool.remove_if_idle();
                    return Err(e);
                }
                // The rarer path, boxed so its state stays out of the common future.
                Checkout::Pending(p) => Box::pin(async move { p.wait().await }).await?,
            };
            // The pool is ready for this request (Envoy's `onPoolReady`).
            connected.set(true);
            match &mut slot.conn {
                SlotConn::H1(c) => {
                    // A connection whose previous response just ended may not take the next
                    // request yet; one that closed meanwhile fails here.
                    match c.sender.ready().await {
                        Ok(()) => {}
                        // Dropping the slot closes the dead connection.
                        Err(e) if attempt == 0 => {
                            tracing::debug!(error = %e, "pooled upstream connection closed; trying another");
                            continue;
                        }
                        Err(e) => return Err(UpstreamError::Reset(e.into())),
                    }
                    match c.sender.try_send_request(req).await {
                        Ok(resp) => return Ok((resp.map(UpstreamBody::H1), slot)),
                        Err(mut e) => match e.take_message() {
                            // Dropping the slot closes the dead connection.
                            Some(r) if attempt == 0 => req = r,
                            _ => return Err(UpstreamError::Reset(e.into_error().into())),
                        },
                    }
                }
                SlotConn::H2 { sender, .. } => {
                    let sender = sender.clone();
                    match sender.send(req).await {
                        Ok(resp) => return Ok((resp.map(UpstreamBody::H2), slot)),
                        Err((e, back)) => match back {
                            Some(r) if attempt == 0 => req = r,
                            _ => return Err(UpstreamError::Reset(e)),
                        },
                    }
                }
                SlotConn::None => unreachable!("pooled streams have a connection"),
            }
        }
        Err(UpstreamError::Reset("upstream connection closed before the request was sent".into()))
    }

    /// A plain HTTP/1.1 connection for an upgrade (WebSocket), never pooled but counted as
    /// the pool's: the request is attached (`max_requests`), and the connection counts
    /// against `max_connections` (past it, `upstream_cx_overflow`; it is dialed anyway, the
    /// way a pool without connections gets one).
    pub async fn upgrade_connection(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        priority: RoutingPriority,
    ) -> Result<(http1::SendRequest<RequestBody>, StreamSlot), UpstreamError> {
        let pool = self.pool(cluster, host, Protocol::Http1, priority)?;
        let slot = pool.attach(SlotConn::None).map_err(|(_, e)| {
            pool.remove_if_idle();
            e
        })?;
        let resource = match pool.rm.try_acquire(Resource::Connection) {
            Some(r) => r,
            None => {
                cluster.stats.upstream_cx_overflow.inc();
                pool.rm.acquire(Resource::Connection)
            }
        };
        let guard = ConnGuard::new(pool.clone(), resource);
        let stream = dial(cluster, host, false).await?;
        let sender = handshake_h1(stream, guard).await.map_err(|(e, _)| e)?;
        Ok((sender, slot))
    }

    /// Close idle connections past their idle timeout, dead ones, and idle connections to
    /// hosts or clusters that are no longer in the config (`live(cluster_id, host)` says
    /// which are current); busy ones finish their requests first. Pools left without
    /// connections go.
    pub fn sweep(&self, live: impl Fn(u64, SocketAddr) -> bool) {
        let now = Instant::now();
        let pools: Vec<Rc<Pool>> = self.pools.borrow().values().cloned().collect();
        for pool in pools {
            {
                let mut st = pool.st.borrow_mut();
                let idle_timeout = pool.cluster.config.idle_timeout;
                let expired = |last: Instant| idle_timeout.is_some_and(|t| now.duration_since(last) >= t);
                let live = live(pool.key.cluster_id, pool.key.addr);
                st.h1_ready.retain(|c| live && !c.sender.is_closed() && !expired(c.last_used));
                st.h2.retain(|c| !c.sender.is_closed() && (c.active.get() > 0 || live && !expired(c.last_used)));
            }
            pool.remove_if_idle();
        }
    }

    /// Number of pooled connections (for tests and stats).
    pub fn pooled(&self) -> usize {
        self.pools
            .borrow()
            .values()
            .map(|p| {
                let st = p.st.borrow();
                st.h1_ready.len() + st.h1_busy as usize + st.h2.len() + st.connecting as usize
            })
            .sum()
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

/// Largest read buffer of an upstream HTTP/1.1 connection (see `handshake_h1`).
const UPSTREAM_H1_READ_BUF: usize = 96 * 1024;

/// The HTTP/1.1 handshake; the connection then runs on the worker, holding `guard` until it
/// ends. On failure the guard comes back, for the caller to drop after its bookkeeping.
async fn handshake_h1(
    stream: Io,
    guard: ConnGuard,
) -> Result<http1::SendRequest<RequestBody>, (UpstreamError, Option<ConnGuard>)> {
    // hyper's adaptive read buffer grows to ~400 KiB on large bodies; a read buffer of 128
    // KiB or more is mmapped by malloc and page-faulted (and zeroed) afresh for each response.
    // 96 KiB keeps it on the heap, still takes a 64 KiB body and its head in one read (64 KiB
    // took two, one more syscall per response), and holds any response head Envoy accepts
    // (60 KiB `max_response_headers_kb`).
    let handshake = http1::Builder::new().max_buf_size(UPSTREAM_H1_READ_BUF).handshake(TokioIo::new(stream)).await;
    let (sender, conn) = match handshake {
        Ok(x) => x,
        Err(e) => return Err((UpstreamError::Handshake(e.into()), Some(guard))),
    };
    tokio::task::spawn_local(async move {
        // A statement of its own, so the connection (and its end of the sender's channel)
        // is gone before the guard tells the pool it closed.
        let result = conn.with_upgrades().await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "upstream http/1.1 connection ended");
        }
        drop(guard);
    });
    Ok(sender)
}

/// The HTTP/2 handshake; the connection then runs on the worker, holding `guard` until it
/// ends. On failure the guard comes back, for the caller to drop after its bookkeeping.
async fn handshake_h2(
    stream: Io,
    cluster: &Cluster,
    guard: ConnGuard,
) -> Result<H2Sender, (UpstreamError, Option<ConnGuard>)> {
    // The guard moves into the connection's close callback, which `h2_client::handshake`
    // runs only for an established connection; a failed handshake leaves it here.
    let slot = Rc::new(RefCell::new(Some(guard)));
    let on_close = slot.clone();
    let result = h2_client::handshake(stream, &cluster.config.http2, cluster.config.connect_timeout, move || {
        on_close.borrow_mut().take();
    })
    .await;
    let e = match result {
        Ok(sender) => return Ok(sender),
        Err(e) => UpstreamError::Handshake(e.into()),
    };
    let guard = slot.borrow_mut().take();
    Err((e, guard))
}
