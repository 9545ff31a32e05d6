//! Building snapshots from YAML (Envoy's own config syntax), so callers outside `xds/` (the
//! demo, tests) describe resources without touching protos. Every resource is decoded and
//! checked against the PGV rules on the way in.

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
