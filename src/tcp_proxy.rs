//! `envoy.filters.network.tcp_proxy`: pick a cluster and host, connect (with
//! `max_connect_attempts`), then copy bytes both ways until either side closes or the idle
//! timeout passes.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use pinion_xds::model::TcpProxyCluster;
use std::cell::Cell;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{Alpn, Io};

use crate::formatter::Context;
use crate::http::stream_info::{ResponseFlags, StreamInfo};
use crate::listener::TcpProxyConfig;
use crate::upstream::LbContext;
use crate::worker_context::WorkerCtx;

/// Serve one downstream TCP connection.
pub async fn serve(
    mut downstream: Io,
    peer: SocketAddr,
    local: SocketAddr,
    tcp: Arc<TcpProxyConfig>,
    worker: Rc<WorkerCtx>,
) {
    tcp.downstream_cx_total.inc();
    let cfg = &tcp.config;
    let mut info = StreamInfo::new(peer, local, "-");
    let name = match &cfg.cluster {
        TcpProxyCluster::Single(n) => n.clone(),
        TcpProxyCluster::Weighted(ws) => {
            let total: u64 = ws.iter().map(|w| u64::from(w.weight)).sum();
            let mut r = if total > 0 { rand::random_range(0..total) } else { 0 };
            ws.iter()
                .find(|w| {
                    let hit = r < u64::from(w.weight);
                    r = r.saturating_sub(u64::from(w.weight));
                    hit
                })
                .map(|w| w.name.clone())
                .unwrap_or_default()
        }
    };
    let cluster = worker.snapshot.load().clusters.get(&name).cloned();
    let Some(cluster) = cluster else {
        tcp.downstream_cx_no_route.inc();
        info.flags.insert(ResponseFlags::NO_CLUSTER);
        log(&tcp, &info, 0);
        return;
    };
    info.upstream_cluster = Some(cluster.config.name.as_str().into());
    // As Envoy, the hash is computed only for a balancer that asks for one.
    let lb_ctx = if cfg.hash_source_ip && cluster.lb.uses_hash() {
        LbContext::with_hash(xxhash_rust::xxh64::xxh64(peer.ip().to_string().as_bytes(), 0))
    } else {
        LbContext::default()
    };
    let mut upstream = None;
    for _ in 0..cfg.max_connect_attempts.max(1) {
        let Some(host) = cluster.choose_host_with(&lb_ctx) else {
            info.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
            break;
        };
        info.upstream_host = Some(host.address);
        match tokio::time::timeout(cluster.config.connect_timeout, TcpStream::connect(host.address)).await {
            Ok(Ok(s)) => {
                cluster.stats.upstream_cx_total.inc();
                let _ = s.set_nodelay(true);
                let io = match &cluster.tls {
                    None => Ok(Io::Plain(s)),
                    Some(tls) => tls.connect(s, Alpn::None, cluster.config.connect_timeout).await,
                };
                match io {
                    Ok(io) => {
                        upstream = Some(io);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(cluster = %cluster.config.name, error = %e, "upstream TLS handshake failed");
                        cluster.stats.upstream_cx_connect_fail.inc();
                        info.flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                    }
                }
            }
            _ => {
                cluster.stats.upstream_cx_connect_fail.inc();
                info.flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            }
        }
    }
    let Some(mut upstream) = upstream else {
        let _ = downstream.shutdown().await;
        log(&tcp, &info, 0);
        return;
    };
    info.flags = ResponseFlags::default();
    cluster.stats.upstream_cx_active.inc();
    let (rx, tx) = copy_with_idle_timeout(&mut downstream, &mut upstream, cfg.idle_timeout).await;
    cluster.stats.upstream_cx_active.dec();
    cluster.stats.upstream_cx_tx_bytes_total.add(rx);
    cluster.stats.upstream_cx_rx_bytes_total.add(tx);
    info.bytes_received = rx;
    log(&tcp, &info, tx);
}

/// Copy both ways until both sides finish, or nothing moves for `idle` (Envoy's
/// `idle_timeout`, reset by activity in either direction). Returns (down->up, up->down) bytes.
async fn copy_with_idle_timeout(a: &mut Io, b: &mut Io, idle: Option<Duration>) -> (u64, u64) {
    match (a, b) {
        // Plain TCP both ways: borrowed halves, no shared state between the two pumps.
        (Io::Plain(a), Io::Plain(b)) => {
            let ((ar, aw), (br, bw)) = (a.split(), b.split());
            copy_halves(ar, aw, br, bw, idle).await
        }
        // A TLS stream has no borrowed halves; tokio's split shares it between the pumps.
        (a, b) => {
            let ((ar, aw), (br, bw)) = (tokio::io::split(a), tokio::io::split(b));
            copy_halves(ar, aw, br, bw, idle).await
        }
    }
}

async fn copy_halves(
    mut ar: impl tokio::io::AsyncRead + Unpin,
    mut aw: impl tokio::io::AsyncWrite + Unpin,
    mut br: impl tokio::io::AsyncRead + Unpin,
    mut bw: impl tokio::io::AsyncWrite + Unpin,
    idle: Option<Duration>,
) -> (u64, u64) {
    let last = Cell::new(Instant::now());
    let a_to_b = Cell::new(0u64);
    let b_to_a = Cell::new(0u64);
    let both = async { tokio::join!(pump(&mut ar, &mut bw, &a_to_b, &last), pump(&mut br, &mut aw, &b_to_a, &last)) };
    tokio::pin!(both);
    loop {
        let deadline = idle.map(|t| tokio::time::Instant::from_std(last.get() + t));
        tokio::select! {
            _ = &mut both => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                if idle.is_some_and(|t| last.get().elapsed() >= t) {
                    break;
                }
            }
        }
    }
    (a_to_b.get(), b_to_a.get())
}

async fn pump(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    n: &Cell<u64>,
    last: &Cell<Instant>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                if w.write_all(&buf[..k]).await.is_err() {
                    break;
                }
                n.set(n.get() + k as u64);
                last.set(Instant::now());
            }
        }
    }
    let _ = w.shutdown().await;
}

fn log(tcp: &TcpProxyConfig, info: &StreamInfo, bytes_sent: u64) {
    let ctx = Context { info, request_headers: None, response_headers: None, bytes_sent };
    for l in &tcp.access_logs {
        l.log(&ctx);
    }
}
