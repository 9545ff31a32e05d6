//! tonic service implementations: ADS and the per-type LDS/RDS/CDS/EDS services.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::scoped_routes_discovery_service_server::{
    ScopedRoutesDiscoveryService, ScopedRoutesDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::virtual_host_discovery_service_server::{
    VirtualHostDiscoveryService, VirtualHostDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::runtime::v3::runtime_discovery_service_server::{
    RuntimeDiscoveryService, RuntimeDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ControlPlane;
use crate::sink::ResourceType;

/// Requests the server decodes at most (clients send small requests).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send + 'static>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>>;

#[derive(Clone)]
pub(crate) struct Svc(Arc<ControlPlane>);

impl Svc {
    fn sotw(&self, req: Request<Streaming<DiscoveryRequest>>, implied: Option<&'static str>) -> Response<SotwStream> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(super::serve_stream::<super::sotw::Sotw>(self.0.clone(), req.into_inner(), tx, implied));
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }

    fn delta(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
        implied: Option<&'static str>,
    ) -> Response<DeltaStream> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(super::serve_stream::<super::delta::Delta>(self.0.clone(), req.into_inner(), tx, implied));
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }
}

/// The tonic router with every xDS service.
pub(crate) fn router(cp: Arc<ControlPlane>) -> tonic::transport::server::Router {
    let svc = Svc(cp);
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(ListenerDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(RouteDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(ClusterDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(EndpointDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(ScopedRoutesDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(VirtualHostDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(RuntimeDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(SecretDiscoveryServiceServer::new(svc).max_decoding_message_size(MAX_REQUEST))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Ok(self.sotw(request, None))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Ok(self.delta(request, None))
    }
}

macro_rules! per_type_service {
    ($trait:ident, $rt:expr, $sotw_ty:ident, $sotw:ident, $delta_ty:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for Svc {
            type $sotw_ty = SotwStream;
            type $delta_ty = DeltaStream;

            async fn $sotw(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                Ok(self.sotw(request, Some($rt.type_url())))
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                Ok(self.delta(request, Some($rt.type_url())))
            }

            async fn $fetch(&self, _request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented("REST-style fetch is not served; use the streaming methods"))
            }
        }
    };
}

per_type_service!(
    ListenerDiscoveryService,
    ResourceType::Listener,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    ResourceType::RouteConfiguration,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
per_type_service!(
    ClusterDiscoveryService,
    ResourceType::Cluster,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    EndpointDiscoveryService,
    ResourceType::ClusterLoadAssignment,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
per_type_service!(
    ScopedRoutesDiscoveryService,
    ResourceType::ScopedRouteConfiguration,
    StreamScopedRoutesStream,
    stream_scoped_routes,
    DeltaScopedRoutesStream,
    delta_scoped_routes,
    fetch_scoped_routes
);
per_type_service!(
    RuntimeDiscoveryService,
    ResourceType::Runtime,
    StreamRuntimeStream,
    stream_runtime,
    DeltaRuntimeStream,
    delta_runtime,
    fetch_runtime
);
per_type_service!(
    SecretDiscoveryService,
    ResourceType::Secret,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);

#[tonic::async_trait]
impl VirtualHostDiscoveryService for Svc {
    type DeltaVirtualHostsStream = DeltaStream;

    async fn delta_virtual_hosts(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Ok(self.delta(request, Some(ResourceType::VirtualHost.type_url())))
    }
}
