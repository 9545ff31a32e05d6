//! Upstream HTTP/2 on the `h2` crate directly (hyper's client hides the peer's settings):
//! the pool reads the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` per connection, and opens
//! another connection instead of queueing streams past it. Request bodies are pumped with
//! h2 flow control; response bodies release window as the downstream consumes them.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::SendStream;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use pinion_xds::model::Http2Options;

use crate::http::body::{BoxError, H2Body, RequestBody};

/// One upstream HTTP/2 connection as the pool holds it.
#[derive(Clone)]
pub struct H2Sender {
    send: SendRequest<Bytes>,
    closed: Rc<Cell<bool>>,
}

impl H2Sender {
    /// Whether the connection has ended (GOAWAY, error, idle close).
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The peer's current `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub fn peer_max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Send a request. On failure before the stream was opened, the request comes back so
    /// the caller can retry it on another connection.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<H2Body>, (BoxError, Option<Request<RequestBody>>)> {
        let mut send = match self.send.clone().ready().await {
            Ok(s) => s,
            Err(e) => return Err((e.into(), Some(req))),
        };
        let (parts, body) = req.into_parts();
        let end = body.is_end_stream();
        let (resp, tx) = match send.send_request(Request::from_parts(parts, ()), end) {
            Ok(x) => x,
            Err(e) => return Err((e.into(), None)),
        };
        if !end {
            send_body(body, tx);
        }
        let resp = resp.await.map_err(|e| (BoxError::from(e), None))?;
        Ok(resp.map(H2Body::new))
    }
}

/// Handshake over `stream`; the connection runs on the worker until it ends, answering
/// keepalive pings per `opts`. `on_close` runs when it ends. Returns after one PING round
/// trip, by which time the peer's SETTINGS (sent with its preface, before any PONG) are
/// applied, so the pool sees the real `SETTINGS_MAX_CONCURRENT_STREAMS` before it puts a
/// burst of streams on the new connection.
pub async fn handshake(
    stream: crate::tls::Io,
    opts: &Http2Options,
    settings_timeout: Duration,
    on_close: impl FnOnce() + 'static,
) -> Result<H2Sender, h2::Error> {
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(opts.initial_stream_window_size)
        .initial_connection_window_size(opts.initial_connection_window_size)
        .max_concurrent_reset_streams(100)
        .handshake(stream)
        .await?;
    let closed = Rc::new(Cell::new(false));
    let flag = closed.clone();
    let mut ping = conn.ping_pong();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::task::spawn_local(async move {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream http/2 connection ended");
                }
            }
            Ok(()) = stop_rx => tracing::debug!("upstream http/2 connection closed (no keepalive answer)"),
        }
        flag.set(true);
        on_close();
    });
    if let Some(p) = ping.as_mut() {
        // A failed or missing PONG leaves the connection usable with h2's default limit.
        let _ = tokio::time::timeout(settings_timeout, p.ping(h2::Ping::opaque())).await;
    }
    if let (Some(interval), Some(mut p)) = (opts.keepalive_interval, ping) {
        let timeout = opts.keepalive_timeout.unwrap_or(Duration::from_secs(3));
        let closed = closed.clone();
        tokio::task::spawn_local(async move {
            while !closed.get() {
                tokio::time::sleep(interval).await;
                match tokio::time::timeout(timeout, p.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_)) => {}
                    _ => {
                        let _ = stop_tx.send(());
                        return;
                    }
                }
            }
        });
    }
    Ok(H2Sender { send, closed })
}

/// Send a request body: a body that is already complete in one frame (a gRPC unary request,
/// a small POST) goes out at once; anything else is pumped by its own task. h2 queues data
/// past the peer's window, so one frame needs no capacity reservation; skipping the pump
/// task saves a task spawn per request.
fn send_body(mut body: RequestBody, mut tx: SendStream<Bytes>) {
    use futures_util::FutureExt;
    match body.frame().now_or_never() {
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => {
                let end = http_body::Body::is_end_stream(&body);
                if tx.send_data(data, end).is_ok() && !end {
                    tokio::task::spawn_local(pump(body, tx));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                }
            }
        },
        Some(Some(Err(_))) => tx.send_reset(h2::Reason::CANCEL),
        Some(None) => {
            let _ = tx.send_data(Bytes::new(), true);
        }
        // Not ready yet: the pump polls it again with a real waker.
        None => {
            tokio::task::spawn_local(pump(body, tx));
        }
    }
}

/// Copy a request body into an h2 stream, honouring the peer's flow control.
async fn pump(mut body: RequestBody, mut tx: SendStream<Bytes>) {
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    while !data.is_empty() {
                        tx.reserve_capacity(data.len());
                        let cap = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                            Some(Ok(n)) if n > 0 => n,
                            Some(Ok(_)) => continue,
                            _ => return, // stream reset or closed by the peer
                        };
                        let chunk = data.split_to(cap.min(data.len()));
                        if tx.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = tx.send_trailers(trailers);
                    }
                    return;
                }
            },
            Some(Err(_)) => {
                tx.send_reset(h2::Reason::CANCEL);
                return;
            }
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
        }
    }
}
