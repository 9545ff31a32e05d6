//! `envoy.config.endpoint.v3.ClusterLoadAssignment`: priorities, localities and endpoints.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as e;

use super::{address, at, enum_value, reject_set, u32_or, unsupported_field, AddressMode, ResolvedAddress};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Envoy's default `overprovisioning_factor`.
const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// Translate a `ClusterLoadAssignment` as delivered by EDS: endpoints must be IP addresses
/// (errors relative to it).
pub fn cluster_load_assignment(c: &e::ClusterLoadAssignment) -> ConfigResult<model::LoadAssignment> {
    load_assignment(c, AddressMode::RequireIp)
}

/// Translate a `ClusterLoadAssignment` with the address rules of the owning cluster type.
pub(crate) fn load_assignment(c: &e::ClusterLoadAssignment, mode: AddressMode) -> ConfigResult<model::LoadAssignment> {
    let e::ClusterLoadAssignment { cluster_name, endpoints, named_endpoints, policy } = c;
    reject_set(named_endpoints, "named_endpoints")?;
    let mut overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR;
    let mut weighted = false;
    if let Some(p) = policy {
        let e::cluster_load_assignment::Policy {
            drop_overloads,
            overprovisioning_factor: factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = p;
        weighted = *weighted_priority_health;
        reject_set(drop_overloads, "policy.drop_overloads")?;
        reject_set(endpoint_stale_after, "policy.endpoint_stale_after")?;
        overprovisioning_factor = u32_or(factor, DEFAULT_OVERPROVISIONING_FACTOR);
    }
    let mut localities = Vec::with_capacity(endpoints.len());
    for (i, l) in endpoints.iter().enumerate() {
        localities.push(locality_endpoints(l, mode).map_err(at(format!("endpoints[{i}]")))?);
    }
    Ok(model::LoadAssignment {
        cluster_name: cluster_name.clone(),
        localities,
        overprovisioning_factor,
        weighted_priority_health: weighted,
    })
}

/// `core.Locality` -> model.
pub(crate) fn locality(l: &core::Locality) -> model::Locality {
    let core::Locality { region, zone, sub_zone } = l;
    model::Locality { region: region.clone(), zone: zone.clone(), sub_zone: sub_zone.clone() }
}

fn locality_endpoints(l: &e::LocalityLbEndpoints, mode: AddressMode) -> ConfigResult<model::LocalityEndpoints> {
    let e::LocalityLbEndpoints {
        locality: loc,
        // Opaque to the data plane (subset LB is not supported).
        metadata: _,
        lb_endpoints,
        load_balancing_weight,
        priority,
        // Envoy's load balancers do not use it either.
        proximity: _,
        lb_config,
    } = l;
    if let Some(cfg) = lb_config {
        use e::locality_lb_endpoints::LbConfig;
        return Err(unsupported_field(match cfg {
            LbConfig::LoadBalancerEndpoints(_) => "load_balancer_endpoints",
            LbConfig::LedsClusterLocalityConfig(_) => "leds_cluster_locality_config",
        }));
    }
    let mut endpoints = Vec::with_capacity(lb_endpoints.len());
    for (i, ep) in lb_endpoints.iter().enumerate() {
        endpoints.push(lb_endpoint(ep, mode).map_err(at(format!("lb_endpoints[{i}]")))?);
    }
    Ok(model::LocalityEndpoints {
        locality: loc.as_ref().map(locality),
        load_balancing_weight: load_balancing_weight.as_ref().map(|w| w.value),
        priority: *priority,
        endpoints,
    })
}

fn lb_endpoint(ep: &e::LbEndpoint, mode: AddressMode) -> ConfigResult<model::Endpoint> {
    use core::HealthStatus as H;
    use e::lb_endpoint::HostIdentifier;
    let e::LbEndpoint {
        health_status,
        // Only `envoy.lb` `hash_key` is read (subset LB is not supported).
        metadata,
        load_balancing_weight,
        host_identifier,
    } = ep;
    let endpoint = match host_identifier {
        None => return Err(ConfigError::invalid("endpoint", "endpoint is required")),
        Some(HostIdentifier::EndpointName(_)) => return Err(unsupported_field("endpoint_name")),
        Some(HostIdentifier::Endpoint(ep)) => ep,
    };
    let e::Endpoint {
        address: addr,
        health_check_config,
        hostname,
        additional_addresses,
        // Only used in logs/stats.
        observability_name: _,
    } = endpoint;
    reject_set(additional_addresses, "endpoint.additional_addresses")?;
    let Some(addr) = addr else {
        return Err(ConfigError::invalid("endpoint.address", "address is required"));
    };
    let address = match address(addr, mode).map_err(at("endpoint.address"))? {
        ResolvedAddress::Ip(sa) => model::EndpointAddress::Socket(sa),
        ResolvedAddress::Dns(host, port) => model::EndpointAddress::Dns { host, port },
        ResolvedAddress::Pipe(path) => model::EndpointAddress::Pipe(path),
    };
    let weight = u32_or(load_balancing_weight, 1);
    if weight == 0 {
        return Err(ConfigError::invalid("load_balancing_weight", "weight must be at least 1"));
    }
    let health_status = match enum_value::<H>(*health_status, "health_status")? {
        H::Unknown => model::HealthStatus::Unknown,
        H::Healthy => model::HealthStatus::Healthy,
        H::Unhealthy => model::HealthStatus::Unhealthy,
        H::Draining => model::HealthStatus::Draining,
        H::Timeout => model::HealthStatus::Timeout,
        H::Degraded => model::HealthStatus::Degraded,
    };
    let health_check = match health_check_config {
        None => model::EndpointHealthCheck::default(),
        Some(c) => endpoint_health_check(c).map_err(at("endpoint.health_check_config"))?,
    };
    Ok(model::Endpoint {
        address,
        weight,
        health_status,
        hostname: hostname.clone(),
        health_check,
        lb_hash_key: metadata.as_ref().map(lb_hash_key).unwrap_or_default(),
    })
}

/// The endpoint's `filter_metadata["envoy.lb"].hash_key` string, which hash-based load
/// balancers hash instead of the address (Envoy's `hashKey`); empty when absent or not a
/// string, as Envoy then falls back too.
fn lb_hash_key(m: &core::Metadata) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    let key = m.filter_metadata.get("envoy.lb").and_then(|s| s.fields.get("hash_key")).and_then(|v| v.kind.as_ref());
    match key {
        Some(Kind::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

/// `Endpoint.HealthCheckConfig`: where and as whom active health checks reach the endpoint.
fn endpoint_health_check(c: &e::endpoint::HealthCheckConfig) -> ConfigResult<model::EndpointHealthCheck> {
    let e::endpoint::HealthCheckConfig { port_value, hostname, address, disable_active_health_check } = c;
    // A health-check address other than the endpoint's needs a second connection target per
    // host; not implemented.
    reject_set(address, "address")?;
    let port = u16::try_from(*port_value)
        .map_err(|_| ConfigError::invalid("port_value", "port_value must be at most 65535"))?;
    Ok(model::EndpointHealthCheck { port, hostname: hostname.clone(), disabled: *disable_active_health_check })
}
