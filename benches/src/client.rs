//! A one-request client used before each measured run to check that the proxy really
//! forwards the scenario's request: status 200, the whole body, and for gRPC
//! `grpc-status: 0` in the trailers. A misconfigured proxy fails loudly here instead of
//! producing fast-looking numbers from error replies.

use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What one request must look like.
#[derive(Clone, Debug)]
pub struct Probe {
    /// 127.0.0.1 port.
    pub port: u16,
    /// Path.
    pub path: String,
    /// h2c prior knowledge.
    pub h2: bool,
    /// POST this body with these headers (gRPC).
    pub body: Option<Bytes>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Expected response body length.
    pub expect_len: usize,
    /// Expect `grpc-status: 0`.
    pub grpc: bool,
    /// Speak TLS (ALPN `h2` or `http/1.1`), trusting this CA for the name `localhost`.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Sends `probe` once; retries for up to `within` (a proxy may accept before it routes).
pub fn check(rt: &tokio::runtime::Runtime, probe: &Probe, within: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    let mut last;
    // Bounded by the deadline.
    loop {
        let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), once(probe)).await });
        last = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("probe timed out"),
        };
        if std::time::Instant::now() > deadline {
            return Err(last.context(format!("probe {} (h2={}) failed", probe.path, probe.h2)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `probe` once, waiting at most `timeout` for the whole response.
pub fn attempt(rt: &tokio::runtime::Runtime, probe: &Probe, timeout: Duration) -> anyhow::Result<()> {
    match rt.block_on(async { tokio::time::timeout(timeout, once(probe)).await }) {
        Ok(r) => r,
        Err(_) => bail!("probe timed out"),
    }
}

async fn once(p: &Probe) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", p.port)).await.context("connect")?;
    match &p.tls_ca {
        None => exchange(p, TokioIo::new(stream)).await,
        Some(ca) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).context("CA file")? {
                roots.add(c?)?;
            }
            let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![if p.h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, stream).await?;
            exchange(p, TokioIo::new(tls)).await
        }
    }
}

async fn exchange<I>(p: &Probe, io: TokioIo<I>) -> anyhow::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let method = if p.body.is_some() { Method::POST } else { Method::GET };
    let mut req = Request::builder().method(method).uri(format!("http://127.0.0.1:{}{}", p.port, p.path));
    if !p.h2 {
        req = req.header("host", format!("127.0.0.1:{}", p.port));
    }
    for (k, v) in &p.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(p.body.clone().unwrap_or_default()))?;
    let resp = if p.h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        tx.send_request(req).await?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        tx.send_request(req).await?
    };
    let status = resp.status();
    let collected = resp.into_body().collect().await.context("reading body")?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    if status != 200 {
        bail!("status {status}, body {:?}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    }
    if body.len() != p.expect_len {
        bail!("body length {} != {}", body.len(), p.expect_len);
    }
    if p.grpc {
        let gs = trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap_or("?").to_string());
        if gs.as_deref() != Some("0") {
            bail!("grpc-status {gs:?} (trailers {trailers:?})");
        }
    }
    Ok(())
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.1 (admin endpoints such as `/stats`): the body
/// of a 200, at most `timeout` for the whole response.
pub fn get_text(rt: &tokio::runtime::Runtime, port: u16, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let get = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.context("connect")?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", format!("127.0.0.1:{port}")).body(Full::new(Bytes::new()))?;
        let resp = tx.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.context("reading body")?.to_bytes();
        anyhow::ensure!(status == 200, "GET {path}: status {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    match rt.block_on(async { tokio::time::timeout(timeout, get).await }) {
        Ok(r) => r,
        Err(_) => bail!("GET {path} on port {port} timed out"),
    }
}
