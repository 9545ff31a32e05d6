//! Per-core workers: one OS thread each, with a single-threaded tokio runtime (no work
//! stealing). A worker owns its listening sockets (SO_REUSEPORT: the kernel spreads
//! connections), its upstream connection pools, and reads config from the shared snapshot.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::listener::{ChainFilter, ListenerImpl};
use crate::snapshot::SharedSnapshot;
use crate::tls::Io;
use crate::upstream::conn_pool::ConnPools;
use crate::worker_context::WorkerCtx;

/// Commands from the main thread (the listener manager).
pub enum WorkerCommand {
    /// Start accepting on this listener with this socket.
    AddListener(Arc<ListenerImpl>, std::net::TcpListener),
    /// New connections on listener `name` use this runtime (same address); existing ones
    /// keep theirs and drain.
    UpdateListener(String, Arc<ListenerImpl>),
    /// Stop accepting on listener `name` (its socket closes; its connections drain).
    RemoveListener(String),
}

/// A listener as one worker runs it: the runtime new connections get, and a stop switch.
struct WorkerListener {
    current: Rc<RefCell<Arc<ListenerImpl>>>,
    stop: Rc<tokio::sync::Notify>,
}

/// Handle the main thread keeps per worker.
pub struct WorkerHandle {
    /// Send commands.
    pub tx: mpsc::UnboundedSender<WorkerCommand>,
    /// Join on exit.
    pub thread: std::thread::JoinHandle<()>,
}

/// Start worker `index`. It runs until `drain` is set and all its connections end (or the
/// drain deadline passes).
pub fn spawn(
    index: usize,
    snapshot: SharedSnapshot,
    drain: watch::Receiver<bool>,
    drain_time: Duration,
) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new().name(format!("pinion-worker-{index}")).spawn(move || {
        crate::stats::set_worker_slot(index);
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "worker runtime failed to start");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, run(index, snapshot, drain, rx, drain_time));
    })?;
    Ok(WorkerHandle { tx, thread })
}

async fn run(
    index: usize,
    snapshot: SharedSnapshot,
    drain: watch::Receiver<bool>,
    mut rx: mpsc::UnboundedReceiver<WorkerCommand>,
    drain_time: Duration,
) {
    let ctx = Rc::new(WorkerCtx { index, snapshot, pools: ConnPools::default(), drain: drain.clone() });
    let connections = Rc::new(RefCell::new(0usize));
    // Pool maintenance: idle timeouts and pools of removed clusters.
    {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let snap = ctx.snapshot.load();
                if ctx.pools.pooled() == 0 {
                    continue;
                }
                let by_id: std::collections::HashMap<u64, &crate::upstream::Cluster> =
                    snap.clusters.values().map(|c| (c.id, &**c)).collect();
                ctx.pools.sweep(|id, addr| by_id.get(&id).is_some_and(|c| c.hosts().all().any(|h| h.address == addr)));
            }
        });
    }
    let mut drain_rx = drain.clone();
    let mut listeners: std::collections::HashMap<String, WorkerListener> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(WorkerCommand::AddListener(l, sock)) => {
                    match TcpListener::from_std(sock) {
                        Ok(listener) => {
                            let name = l.config.name.clone();
                            let current = Rc::new(RefCell::new(l));
                            let stop = Rc::new(tokio::sync::Notify::new());
                            if let Some(old) = listeners.insert(name, WorkerListener { current: current.clone(), stop: stop.clone() }) {
                                old.stop.notify_one();
                            }
                            tokio::task::spawn_local(accept_loop(listener, current, stop, ctx.clone(), connections.clone()));
                        }
                        Err(e) => tracing::error!(error = %e, "worker {index}: cannot register listener"),
                    }
                }
                Some(WorkerCommand::UpdateListener(name, l)) => {
                    if let Some(wl) = listeners.get(&name) {
                        *wl.current.borrow_mut() = l;
                    }
                }
                Some(WorkerCommand::RemoveListener(name)) => {
                    if let Some(wl) = listeners.remove(&name) {
                        wl.stop.notify_one();
                    }
                }
                None => break,
            },
            _ = drain_rx.changed() => {
                if *drain_rx.borrow() { break; }
            }
        }
    }
    // Drain: accept loops stop on the same signal; wait for connections to finish, bounded.
    let deadline = tokio::time::Instant::now() + drain_time;
    while *connections.borrow() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    current: Rc<RefCell<Arc<ListenerImpl>>>,
    stop: Rc<tokio::sync::Notify>,
    worker: Rc<WorkerCtx>,
    connections: Rc<RefCell<usize>>,
) {
    let mut drain = worker.drain.clone();
    // After a stop or drain, connections the kernel already completed (still in the backlog)
    // are accepted and served, draining, before the socket closes: closing it with a backlog
    // would reset connections whose clients have already sent a request.
    let mut closing = *drain.borrow();
    loop {
        let accepted = if closing {
            match futures_util::FutureExt::now_or_never(listener.accept()) {
                Some(r) => r,
                None => return,
            }
        } else {
            tokio::select! {
                r = listener.accept() => r,
                _ = stop.notified() => {
                    closing = true;
                    continue;
                }
                _ = drain.changed() => {
                    closing = *drain.borrow();
                    continue;
                }
            }
        };
        let rt = current.borrow().clone();
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local: SocketAddr = stream.local_addr().unwrap_or(rt.config.address);
        let stats = &rt.stats;
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        if let Some(c) = stats.worker_cx_total.get(worker.index) {
            c.inc();
        }
        if let Some(g) = stats.worker_cx_active.get(worker.index) {
            g.inc();
        }
        *connections.borrow_mut() += 1;

        let worker = worker.clone();
        let connections = connections.clone();
        tokio::task::spawn_local(async move {
            serve_downstream(stream, peer, local, &rt, &worker).await;
            let stats = &rt.stats;
            stats.downstream_cx_active.dec();
            stats.downstream_cx_destroy.inc();
            if let Some(g) = stats.worker_cx_active.get(worker.index) {
                g.dec();
            }
            *connections.borrow_mut() -= 1;
        });
    }
}

/// One accepted connection, phase by phase: listener filters, filter chain match, transport
/// socket (TLS handshake), then the chain's network filter until the connection ends.
async fn serve_downstream(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    rt: &Arc<ListenerImpl>,
    worker: &Rc<WorkerCtx>,
) {
    let inspected = match crate::listener_filter::inspect(&stream, &rt.config).await {
        Ok(i) => i,
        Err(e) => {
            if e == crate::listener_filter::InspectError::Timeout {
                rt.stats.downstream_pre_cx_timeout.inc();
            }
            tracing::debug!(peer = %peer, error = ?e, "listener filters gave up");
            return;
        }
    };
    let Some(chain) = rt.select_chain(local, peer, &inspected) else {
        rt.stats.no_filter_chain_match.inc();
        return;
    };
    let io = match &chain.tls {
        None => Io::Plain(stream),
        Some(tls) => match tls.accept(stream).await {
            Some(io) => io,
            None => return,
        },
    };
    match &chain.filter {
        ChainFilter::Http(hcm) => {
            let local_uris = chain.tls.as_ref().map(|t| t.local_uris());
            crate::http::connection_manager::serve_connection(
                io,
                local_uris.as_deref().unwrap_or(&[]),
                peer,
                local,
                hcm.clone(),
                rt.clone(),
                worker.clone(),
            )
            .await
        }
        ChainFilter::Tcp(tcp) => crate::tcp_proxy::serve(io, peer, local, tcp.clone(), worker.clone()).await,
    }
}
