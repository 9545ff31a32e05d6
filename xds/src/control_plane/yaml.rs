//! Building snapshots from YAML (Envoy's own config syntax), so callers outside `xds/` (the
//! demo, tests) describe resources without touching protos. Every resource is decoded and
//! checked against the PGV rules on the way in.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::Snapshot;
use crate::decode::{message_from_str, DecodeOptions, Format};
use crate::error::ConfigError;
use crate::sink::ResourceType;

impl Snapshot {
    /// Add one resource of `type_` given as YAML (or JSON).
    pub fn with_yaml(self, type_: ResourceType, yaml: &str) -> Result<Self, ConfigError> {
        let opts = DecodeOptions::default();
        Ok(match type_ {
            ResourceType::Listener => self.with_listener(message_from_str(yaml, Format::Yaml, &opts)?),
            ResourceType::RouteConfiguration => self.with_route(message_from_str(yaml, Format::Yaml, &opts)?),
            ResourceType::Cluster => self.with_cluster(message_from_str(yaml, Format::Yaml, &opts)?),
            ResourceType::ClusterLoadAssignment => self.with_endpoints(message_from_str(yaml, Format::Yaml, &opts)?),
            ResourceType::ScopedRouteConfiguration => {
                self.with_scoped_route(message_from_str(yaml, Format::Yaml, &opts)?)
            }
            ResourceType::Runtime => self.with_runtime(message_from_str(yaml, Format::Yaml, &opts)?),
            ResourceType::Secret => self.with_secret(message_from_str(yaml, Format::Yaml, &opts)?),
            ResourceType::VirtualHost => {
                return Err(ConfigError::invalid("", "use with_virtual_host_yaml: VHDS names need the route config"))
            }
        })
    }

    /// Add a VHDS virtual host of `route_config`, given as YAML.
    pub fn with_virtual_host_yaml(self, route_config: &str, yaml: &str) -> Result<Self, ConfigError> {
        let opts = DecodeOptions::default();
        Ok(self.with_virtual_host(route_config, message_from_str(yaml, Format::Yaml, &opts)?))
    }
}

/// A sidecar bootstrap with only an admin listener and ADS (`api_type` `GRPC` or `DELTA_GRPC`)
/// to the control plane at `xds`; everything else (listeners, routes, clusters, endpoints)
/// arrives over xDS. Used by the demo and the xDS end-to-end tests.
pub fn ads_bootstrap(node_id: &str, admin_port: u16, xds: SocketAddr, api_type: &str) -> String {
    format!(
        r#"
node: {{ id: {node_id}, cluster: demo }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
        ip = xds.ip(),
        port = xds.port(),
    )
}

/// A listener on `127.0.0.1:port` with one HTTP connection manager: `route_spec` is its route
/// specifier as one line of YAML (`rds: {...}`, `route_config: {...}`, `scoped_routes: {...}`),
/// `filters` are HTTP filters (one line of YAML each) placed before the router.
pub fn hcm_listener(
    name: &str,
    port: u16,
    stat_prefix: &str,
    route_spec: &str,
    filters: &[&str],
) -> Result<Listener, ConfigError> {
    let filters: String = filters.iter().map(|f| format!("      - {f}\n")).collect();
    let text = format!(
        r#"
name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {stat_prefix}
      {route_spec}
      http_filters:
{filters}      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    );
    message_from_str(&text, Format::Yaml, &DecodeOptions::default())
}

/// A `STATIC` cluster with one endpoint.
pub fn static_cluster(name: &str, addr: SocketAddr) -> Result<Cluster, ConfigError> {
    let text = format!(
        "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}] }}] }}\n",
        addr.ip(),
        addr.port()
    );
    message_from_str(&text, Format::Yaml, &DecodeOptions::default())
}
