//! Small HTTP client helpers (HTTP/1.1 and h2c) with bounded waits.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::backend::BoxError;

/// Request body type accepted by the test clients (boxed so streams work too).
pub type ReqBody = BoxBody<Bytes, BoxError>;
/// The client type returned by the constructors here.
pub type TestClient = Client<TestConnector, ReqBody>;

/// Default bound for a whole exchange in [`send`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connector that dials the URI's host, or always `target` when set (so the URI's
/// authority can be any virtual host while the TCP connection goes to a proxy).
#[derive(Clone, Debug, Default)]
pub struct TestConnector {
    target: Option<SocketAddr>,
}

impl tower_service::Service<Uri> for TestConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let target = self.target;
        Box::pin(async move {
            let addr = match target {
                Some(a) => a,
                None => {
                    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
                    let port = uri.port_u16().unwrap_or(80);
                    tokio::net::lookup_host((host, port))
                        .await?
                        .next()
                        .ok_or_else(|| std::io::Error::other("no address for host"))?
                }
            };
            let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

fn build(target: Option<SocketAddr>, h2: bool) -> TestClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(5));
    if h2 {
        b.http2_only(true);
    }
    b.build(TestConnector { target })
}

/// HTTP/1.1 client dialing each URI's own host.
pub fn http1_client() -> TestClient {
    build(None, false)
}

/// HTTP/2 prior-knowledge (h2c) client dialing each URI's own host.
pub fn h2c_client() -> TestClient {
    build(None, true)
}

/// HTTP/1.1 client that sends every request to `addr` whatever the URI's authority.
pub fn http1_client_to(addr: SocketAddr) -> TestClient {
    build(Some(addr), false)
}

/// h2c client that sends every request to `addr` whatever the URI's authority.
pub fn h2c_client_to(addr: SocketAddr) -> TestClient {
    build(Some(addr), true)
}

/// A request body from bytes.
pub fn full(b: impl Into<Bytes>) -> ReqBody {
    BodyExt::boxed(Full::new(b.into()).map_err(|e| match e {}))
}

/// An empty request body.
pub fn empty() -> ReqBody {
    BodyExt::boxed(Empty::new().map_err(|e| match e {}))
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Response status.
    pub status: StatusCode,
    /// Protocol version the response came over.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// Whole response body.
    pub body: Bytes,
    /// Trailers, if any were received.
    pub trailers: Option<HeaderMap>,
}

/// Sends `req` and reads the whole response within 30 s: `(status, headers, body)`.
pub async fn send(client: &TestClient, req: Request<ReqBody>) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    let r = send_full(client, req, DEFAULT_TIMEOUT).await?;
    Ok((r.status, r.headers, r.body))
}

/// Sends `req` and reads the whole response (with trailers) within `timeout`.
pub async fn send_full(client: &TestClient, req: Request<ReqBody>, timeout: Duration) -> anyhow::Result<Reply> {
    let what = format!("{} {}", req.method(), req.uri());
    let fut = async {
        let resp = client.request(req).await.context("request failed")?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.context("reading response body")?;
        let trailers = collected.trailers().cloned();
        Ok::<_, anyhow::Error>(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("{what}: no complete response within {timeout:?}"))?
        .with_context(|| what.clone())
}
