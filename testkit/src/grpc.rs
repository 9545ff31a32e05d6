//! A real tonic gRPC backend (no protoc: services generated in `envoy-types`) and
//! client helpers that report what came back, including the grpc-status.
//!
//! * `AggregatedDiscoveryService/StreamAggregatedResources`: bidirectional echo; each
//!   DiscoveryRequest gets a DiscoveryResponse with `version_info`, `nonce`
//!   (= request's `response_nonce`) and `type_url` copied from it.
//! * `Authorization/Check`: unary echo; returns OK with headers `x-echo-path` (the
//!   checked request's path) and `x-echo` (its `x-echo` header), and initial metadata
//!   `x-backend: <name>`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response, AttributeContext, CheckRequest, CheckResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::backend::ServerThread;

/// Bound for one whole gRPC helper call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Type URL the bidi helper sends.
const PROBE_TYPE_URL: &str = "type.googleapis.com/pinion.test.Probe";

/// A running gRPC backend; shuts down when dropped.
pub struct GrpcBackend {
    /// Address the backend listens on (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// Name sent back as `x-backend` metadata by `Check`.
    pub name: String,
    /// Number of RPCs received.
    pub hits: Arc<AtomicU64>,
    server: ServerThread,
}

impl GrpcBackend {
    /// `http://127.0.0.1:<port>` for this backend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Port the backend listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops the backend and waits (at most 5 s) for its thread to exit.
    pub fn shutdown(mut self) {
        self.server.stop();
    }
}

#[derive(Clone)]
struct Svc {
    name: String,
    hits: Arc<AtomicU64>,
}

type AdsStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send + 'static>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = AdsStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<AdsStream>, Status> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let out = request.into_inner().map(|r| {
            r.map(|req| DiscoveryResponse {
                version_info: req.version_info,
                nonce: req.response_nonce,
                type_url: req.type_url,
                ..Default::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta is not part of the test backend"))
    }
}

#[tonic::async_trait]
impl Authorization for Svc {
    async fn check(&self, request: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, Status> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let http = request.into_inner().attributes.and_then(|a| a.request).and_then(|r| r.http).unwrap_or_default();
        let mut headers = vec![hv("x-echo-path", &http.path)];
        if let Some(v) = http.headers.get("x-echo") {
            headers.push(hv("x-echo", v));
        }
        let resp = CheckResponse {
            status: Some(RpcStatus { code: 0, ..Default::default() }),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers,
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut resp = tonic::Response::new(resp);
        if let Ok(v) = self.name.parse() {
            resp.metadata_mut().insert("x-backend", v);
        }
        Ok(resp)
    }
}

fn hv(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Starts the gRPC backend (ADS echo + Authorization check) on 127.0.0.1:0 named `grpc`.
pub fn spawn_grpc_backend() -> GrpcBackend {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind grpc backend");
    std_listener.set_nonblocking(true).expect("nonblocking grpc listener");
    let addr = std_listener.local_addr().expect("grpc local addr");
    let hits = Arc::new(AtomicU64::new(0));
    let svc = Svc { name: "grpc".into(), hits: hits.clone() };
    let server = ServerThread::start("grpc", move |shutdown| async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(svc.clone()))
            .add_service(AuthorizationServer::new(svc))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown.await;
            })
            .await;
    });
    GrpcBackend { addr, name: "grpc".into(), hits, server }
}

/// What a unary `Check` call produced.
#[derive(Debug, Clone)]
pub struct GrpcUnaryReply {
    /// grpc-status (`Ok` on success; transport failures map to `Unavailable` etc.).
    pub code: Code,
    /// grpc-message (empty on success).
    pub message: String,
    /// Initial response metadata (or the trailers-only metadata on error).
    pub metadata: http::HeaderMap,
    /// Value of the echoed `x-echo-path` header in the CheckResponse.
    pub echoed_path: Option<String>,
    /// Value of the echoed `x-echo` header in the CheckResponse.
    pub echoed_header: Option<String>,
}

/// What a bidirectional ADS echo exchange produced.
#[derive(Debug, Clone)]
pub struct GrpcBidiReply {
    /// Final grpc-status of the stream.
    pub code: Code,
    /// Final grpc-message.
    pub message: String,
    /// Responses received, in order.
    pub responses: Vec<DiscoveryResponse>,
}

impl GrpcBidiReply {
    /// True when `n` responses came back in order echoing what the helper sent.
    pub fn echoed_all(&self, n: usize) -> bool {
        self.code == Code::Ok
            && self.responses.len() == n
            && self.responses.iter().enumerate().all(|(i, r)| {
                r.version_info == format!("v{i}") && r.nonce == format!("n{i}") && r.type_url == PROBE_TYPE_URL
            })
    }
}

fn normalize(addr_or_uri: &str) -> String {
    if addr_or_uri.contains("://") {
        addr_or_uri.to_string()
    } else {
        format!("http://{addr_or_uri}")
    }
}

async fn channel(addr_or_uri: &str, authority: Option<&str>) -> anyhow::Result<Channel> {
    let uri = normalize(addr_or_uri);
    let mut ep = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("bad gRPC uri {uri}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT);
    if let Some(a) = authority {
        // Connect to `uri` but send `:authority: a` (to pick a virtual host).
        let origin: http::Uri = format!("http://{a}").parse().context("bad authority")?;
        ep = ep.origin(origin);
    }
    tokio::time::timeout(CALL_TIMEOUT, ep.connect())
        .await
        .map_err(|_| anyhow!("connecting to {uri} timed out"))?
        .with_context(|| format!("connecting to {uri}"))
}

/// Unary `Check` over h2c to `addr_or_uri` (e.g. `127.0.0.1:1234` or `http://…`).
pub async fn grpc_unary(addr_or_uri: &str) -> anyhow::Result<GrpcUnaryReply> {
    grpc_unary_with(addr_or_uri, None, "/grpc-unary-probe", "hello").await
}

/// Unary `Check` with an optional `:authority`, echoing `path` and an `x-echo` value.
pub async fn grpc_unary_with(
    addr_or_uri: &str,
    authority: Option<&str>,
    path: &str,
    echo: &str,
) -> anyhow::Result<GrpcUnaryReply> {
    grpc_unary_with_metadata(addr_or_uri, authority, path, echo, &[]).await
}

/// Like [`grpc_unary_with`], also sending `metadata` (ASCII request headers, e.g. the
/// `x-envoy-fault-*` headers a proxy acts on).
pub async fn grpc_unary_with_metadata(
    addr_or_uri: &str,
    authority: Option<&str>,
    path: &str,
    echo: &str,
    metadata: &[(&str, &str)],
) -> anyhow::Result<GrpcUnaryReply> {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in metadata {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes())
            .with_context(|| format!("bad metadata key {k:?}"))?;
        md.append(key, v.parse().with_context(|| format!("bad metadata value {v:?}"))?);
    }
    let ch = channel(addr_or_uri, authority).await?;
    let mut client = AuthorizationClient::new(ch);
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers: [("x-echo".to_string(), echo.to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let req = tonic::Request::from_parts(md, tonic::Extensions::default(), req);
    let res =
        tokio::time::timeout(CALL_TIMEOUT, client.check(req)).await.map_err(|_| anyhow!("gRPC Check timed out"))?;
    Ok(match res {
        Ok(resp) => {
            let metadata = resp.metadata().clone().into_headers();
            let (mut echoed_path, mut echoed_header) = (None, None);
            if let Some(check_response::HttpResponse::OkResponse(ok)) = resp.into_inner().http_response {
                for h in ok.headers.into_iter().filter_map(|o| o.header) {
                    match h.key.as_str() {
                        "x-echo-path" => echoed_path = Some(h.value),
                        "x-echo" => echoed_header = Some(h.value),
                        _ => {}
                    }
                }
            }
            GrpcUnaryReply { code: Code::Ok, message: String::new(), metadata, echoed_path, echoed_header }
        }
        Err(status) => GrpcUnaryReply {
            code: status.code(),
            message: status.message().to_string(),
            metadata: status.metadata().clone().into_headers(),
            echoed_path: None,
            echoed_header: None,
        },
    })
}

/// Bidirectional ADS echo: sends `n` requests one at a time, awaiting each reply.
pub async fn grpc_bidi_echo(addr_or_uri: &str, n: usize) -> anyhow::Result<GrpcBidiReply> {
    let ch = channel(addr_or_uri, None).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(4);
    let fut = async move {
        let mk = |i: usize| DiscoveryRequest {
            version_info: format!("v{i}"),
            response_nonce: format!("n{i}"),
            type_url: PROBE_TYPE_URL.into(),
            ..Default::default()
        };
        if n > 0 {
            tx.send(mk(0)).await.map_err(|_| anyhow!("request stream closed"))?;
        }
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = match client.stream_aggregated_resources(outbound).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Ok(finish(s, Vec::new())),
        };
        let mut responses = Vec::with_capacity(n);
        let mut tx = Some(tx);
        // At most n round trips, then half-close and read the final status.
        for i in 0..n {
            match inbound.message().await {
                Ok(Some(resp)) => responses.push(resp),
                Ok(None) => break,
                Err(s) => return Ok(finish(s, responses)),
            }
            if i + 1 < n {
                if let Some(t) = &tx {
                    let _ = t.send(mk(i + 1)).await;
                }
            }
        }
        tx.take(); // half-close so the server ends the stream
        let end = loop_until_end(&mut inbound).await;
        Ok::<_, anyhow::Error>(match end {
            Ok(()) => GrpcBidiReply { code: Code::Ok, message: String::new(), responses },
            Err(s) => finish(s, responses),
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| anyhow!("gRPC bidi exchange timed out"))?
}

/// Reads whatever is left (bounded: the server sends nothing more after half-close).
async fn loop_until_end(inbound: &mut Streaming<DiscoveryResponse>) -> Result<(), Status> {
    for _ in 0..1024 {
        match inbound.message().await? {
            Some(_) => continue,
            None => return Ok(()),
        }
    }
    Err(Status::internal("server kept streaming after half-close"))
}

fn finish(s: Status, responses: Vec<DiscoveryResponse>) -> GrpcBidiReply {
    GrpcBidiReply { code: s.code(), message: s.message().to_string(), responses }
}
