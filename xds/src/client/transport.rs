//! Connecting to the control plane and opening xDS streams (ADS or per-type).

use std::time::Duration;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
use envoy_types::pb::envoy::service::route::v3::scoped_routes_discovery_service_client::ScopedRoutesDiscoveryServiceClient;
use envoy_types::pb::envoy::service::route::v3::virtual_host_discovery_service_client::VirtualHostDiscoveryServiceClient;
use envoy_types::pb::envoy::service::runtime::v3::runtime_discovery_service_client::RuntimeDiscoveryServiceClient;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use super::ServerAddr;
use crate::sink::ResourceType;

/// TCP/Unix connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a stream (until response headers) may take.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Which service a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// `AggregatedDiscoveryService`.
    Ads,
    /// The per-type service of this type.
    Single(ResourceType),
}

/// Connects a channel to `server`.
pub(crate) async fn connect(server: &ServerAddr) -> Result<Channel, String> {
    let fut = async {
        match server {
            ServerAddr::Tcp(addr) => endpoint(&format!("http://{addr}"))?
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}")),
            ServerAddr::Uri(uri) => {
                let uri = uri.strip_prefix("dns:///").unwrap_or(uri);
                let uri = if uri.contains("://") { uri.to_string() } else { format!("http://{uri}") };
                endpoint(&uri)?.connect().await.map_err(|e| format!("cannot connect to {uri}: {e}"))
            }
            ServerAddr::Unix(path) => {
                let path = path.clone();
                let shown = path.display().to_string();
                endpoint("http://localhost")?
                    .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
                    .await
                    .map_err(|e| format!("cannot connect to unix:{shown}: {e}"))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 2, fut).await.map_err(|_| "connecting timed out".to_string())?
}

fn endpoint(uri: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|e| format!("invalid control plane URI {uri}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Opens a SotW stream.
pub(crate) async fn open_sotw(
    ch: Channel,
    kind: StreamKind,
    reqs: ReceiverStream<DiscoveryRequest>,
    max: usize,
) -> Result<Streaming<DiscoveryResponse>, Status> {
    let r = match kind {
        StreamKind::Ads => {
            AggregatedDiscoveryServiceClient::new(ch)
                .max_decoding_message_size(max)
                .stream_aggregated_resources(reqs)
                .await
        }
        StreamKind::Single(ResourceType::Listener) => {
            ListenerDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_listeners(reqs).await
        }
        StreamKind::Single(ResourceType::RouteConfiguration) => {
            RouteDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_routes(reqs).await
        }
        StreamKind::Single(ResourceType::Cluster) => {
            ClusterDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_clusters(reqs).await
        }
        StreamKind::Single(ResourceType::ClusterLoadAssignment) => {
            EndpointDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_endpoints(reqs).await
        }
        StreamKind::Single(ResourceType::ScopedRouteConfiguration) => {
            ScopedRoutesDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_scoped_routes(reqs).await
        }
        StreamKind::Single(ResourceType::Runtime) => {
            RuntimeDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_runtime(reqs).await
        }
        StreamKind::Single(ResourceType::VirtualHost) => {
            return Err(Status::invalid_argument("VHDS is Delta only"));
        }
        StreamKind::Single(ResourceType::Secret) => {
            SecretDiscoveryServiceClient::new(ch).max_decoding_message_size(max).stream_secrets(reqs).await
        }
    };
    r.map(|r| r.into_inner())
}

/// Opens a Delta stream.
pub(crate) async fn open_delta(
    ch: Channel,
    kind: StreamKind,
    reqs: ReceiverStream<DeltaDiscoveryRequest>,
    max: usize,
) -> Result<Streaming<DeltaDiscoveryResponse>, Status> {
    let r = match kind {
        StreamKind::Ads => {
            AggregatedDiscoveryServiceClient::new(ch)
                .max_decoding_message_size(max)
                .delta_aggregated_resources(reqs)
                .await
        }
        StreamKind::Single(ResourceType::Listener) => {
            ListenerDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_listeners(reqs).await
        }
        StreamKind::Single(ResourceType::RouteConfiguration) => {
            RouteDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_routes(reqs).await
        }
        StreamKind::Single(ResourceType::Cluster) => {
            ClusterDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_clusters(reqs).await
        }
        StreamKind::Single(ResourceType::ClusterLoadAssignment) => {
            EndpointDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_endpoints(reqs).await
        }
        StreamKind::Single(ResourceType::ScopedRouteConfiguration) => {
            ScopedRoutesDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_scoped_routes(reqs).await
        }
        StreamKind::Single(ResourceType::Runtime) => {
            RuntimeDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_runtime(reqs).await
        }
        StreamKind::Single(ResourceType::VirtualHost) => {
            VirtualHostDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_virtual_hosts(reqs).await
        }
        StreamKind::Single(ResourceType::Secret) => {
            SecretDiscoveryServiceClient::new(ch).max_decoding_message_size(max).delta_secrets(reqs).await
        }
    };
    r.map(|r| r.into_inner())
}
