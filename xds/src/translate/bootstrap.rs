//! `envoy.config.bootstrap.v3.Bootstrap`: node, admin and static resources, plus the checks
//! that span resources (duplicate names/addresses, route -> cluster references).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3 as b;
use envoy_types::pb::envoy::config::core::v3 as core;

use super::access_log::access_logs;
use super::endpoint::locality;
use super::{at, cluster, ip_address, listener, reject_set, struct_to_json};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Command-line overrides of the node identity (`--service-node`, `--service-cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    /// `--service-node`: wins over `node.id`.
    pub service_node: Option<String>,
    /// `--service-cluster`: wins over `node.cluster`.
    pub service_cluster: Option<String>,
}

/// Translate a bootstrap; returns the first error (as Envoy does). `config_dump_json` is left
/// `Null` for the caller to fill.
pub fn bootstrap(bs: &b::Bootstrap, overrides: &NodeOverrides) -> ConfigResult<model::Bootstrap> {
    let b::Bootstrap {
        node,
        // xDS resource-naming context parameters; only used with xdstp:// names.
        node_context_params: _,
        static_resources,
        dynamic_resources,
        cluster_manager,
        hds_config,
        flags_path,
        stats_sinks,
        // Stats-implementation tuning.
        deferred_stat_options: _,
        // Stats tag extraction and inclusion config (stats naming only).
        stats_config: _,
        // Flush cadence for stats sinks (sinks are rejected).
        stats_flush_interval: _,
        // Watchdog (miss/megamiss/kill) timers: process-health tuning Pinion does not implement.
        watchdog: _,
        watchdogs: _,
        tracing,
        layered_runtime,
        admin,
        overload_manager,
        // Stats only.
        enable_dispatcher_stats: _,
        header_prefix,
        // Stats only.
        stats_server_version_override: _,
        // DNS transport detail of the resolver.
        use_tcp_for_dns_lookups: _,
        dns_resolution_config,
        typed_dns_resolver_config,
        bootstrap_extensions,
        // Crash-time hooks.
        fatal_actions: _,
        config_sources,
        default_config_source,
        default_socket_interface,
        certificate_provider_instances,
        // Header-map performance hint only.
        inline_headers: _,
        // Perfetto tracing output only.
        perf_tracing_file_path: _,
        // Only RE2 exists; Pinion always uses its own (RE2-compatible) regex engine.
        default_regex_engine: _,
        xds_delegate_extension,
        xds_config_tracker_extension,
        listener_manager,
        // Format of the proxy's own log lines.
        application_log_config: _,
        // gRPC client cache tuning.
        grpc_async_client_manager_config: _,
        // Allocator tuning.
        memory_allocator_manager: _,
        // Thread pinning is a performance knob.
        enable_worker_cpu_affinity: _,
        // Stats flushing policy (sinks are rejected).
        stats_flush: _,
        // Stats memory policy.
        stats_eviction: _,
    } = bs;
    let outlier_event_log_path = match cluster_manager {
        None => String::new(),
        Some(cm) => cluster_manager_(cm).map_err(at("cluster_manager"))?,
    };
    reject_set(hds_config, "hds_config")?;
    reject_set(flags_path, "flags_path")?;
    reject_set(stats_sinks, "stats_sinks")?;
    reject_set(tracing, "tracing")?;
    reject_set(overload_manager, "overload_manager")?;
    reject_set(header_prefix, "header_prefix")?;
    reject_set(dns_resolution_config, "dns_resolution_config")?;
    reject_set(typed_dns_resolver_config, "typed_dns_resolver_config")?;
    reject_set(bootstrap_extensions, "bootstrap_extensions")?;
    reject_set(config_sources, "config_sources")?;
    reject_set(default_config_source, "default_config_source")?;
    reject_set(default_socket_interface, "default_socket_interface")?;
    reject_set(certificate_provider_instances, "certificate_provider_instances")?;
    reject_set(xds_delegate_extension, "xds_delegate_extension")?;
    reject_set(xds_config_tracker_extension, "xds_config_tracker_extension")?;
    reject_set(listener_manager, "listener_manager")?;
    let layered_runtime = match layered_runtime {
        Some(rt) => super::runtime::layered_runtime(rt).map_err(at("layered_runtime"))?,
        None => model::LayeredRuntime::default(),
    };
    let dynamic_resources = match dynamic_resources {
        Some(d) if *d != b::bootstrap::DynamicResources::default() => {
            Some(super::config_source::dynamic_resources(d).map_err(at("dynamic_resources"))?)
        }
        _ => None,
    };

    let node = translate_node(node.as_ref(), overrides);
    let admin = match admin {
        None => None,
        Some(a) => translate_admin(a).map_err(at("admin"))?,
    };
    let (listeners, clusters, secrets) = match static_resources {
        None => (Vec::new(), Vec::new(), Vec::new()),
        Some(s) => static_resources_(s).map_err(at("static_resources"))?,
    };
    check_secret_refs(&listeners, &clusters, &secrets, dynamic_resources.is_some()).map_err(at("static_resources"))?;
    if dynamic_resources.is_none() {
        if let Some((path, what)) = static_xds_dependents(&listeners, &clusters).into_iter().next() {
            return Err(ConfigError::unsupported(
                format!("static_resources.{path}"),
                format!("{what} needs dynamic_resources (ads_config, lds_config or cds_config): pinion fetches it over the same transport"),
            ));
        }
        if let Some(i) =
            layered_runtime.layers.iter().position(|l| matches!(l.kind, model::RuntimeLayerKind::Rtds { .. }))
        {
            return Err(ConfigError::unsupported(
                format!("layered_runtime.layers[{i}].rtds_layer"),
                "rtds_layer needs dynamic_resources (RTDS shares the LDS/CDS transport in pinion)",
            ));
        }
    }
    Ok(model::Bootstrap {
        node,
        admin,
        listeners,
        clusters,
        secrets,
        dynamic_resources,
        layered_runtime,
        outlier_event_log_path,
        config_dump_json: serde_json::Value::Null,
    })
}

/// `cluster_manager`: only the outlier detection event log; returns its path (may be empty).
fn cluster_manager_(cm: &b::ClusterManager) -> ConfigResult<String> {
    let b::ClusterManager {
        local_cluster_name,
        outlier_detection,
        upstream_bind_config,
        load_stats_config,
        // Only changes when clusters are instantiated on workers, not what they do.
        enable_deferred_cluster_creation: _,
    } = cm;
    reject_set(local_cluster_name, "local_cluster_name")?;
    reject_set(upstream_bind_config, "upstream_bind_config")?;
    reject_set(load_stats_config, "load_stats_config")?;
    let Some(od) = outlier_detection else { return Ok(String::new()) };
    let b::cluster_manager::OutlierDetection { event_log_path, event_service } = od;
    reject_set(event_service, "outlier_detection.event_service")?;
    Ok(event_log_path.clone())
}

fn translate_node(node: Option<&core::Node>, overrides: &NodeOverrides) -> model::Node {
    let mut out = model::Node { metadata: serde_json::Value::Null, ..Default::default() };
    if let Some(n) = node {
        let core::Node {
            id,
            cluster,
            metadata,
            // xDS context parameters (xdstp:// naming).
            dynamic_parameters: _,
            locality: loc,
            // Pinion reports its own user agent.
            user_agent_name: _,
            // Filled by the proxy itself when talking to a control plane.
            extensions: _,
            client_features: _,
            listening_addresses: _,
            user_agent_version_type: _,
        } = n;
        out.id = id.clone();
        out.cluster = cluster.clone();
        out.metadata = metadata.as_ref().map_or(serde_json::Value::Null, struct_to_json);
        out.locality = loc.as_ref().map(locality);
    }
    if let Some(id) = &overrides.service_node {
        out.id = id.clone();
    }
    if let Some(c) = &overrides.service_cluster {
        out.cluster = c.clone();
    }
    out
}

fn translate_admin(a: &b::Admin) -> ConfigResult<Option<model::Admin>> {
    let b::Admin {
        access_log,
        access_log_path,
        // CPU profiler output path; Pinion has no profiler endpoint.
        profile_path: _,
        address,
        socket_options,
        // Pinion has no global connection limit.
        ignore_global_conn_limit: _,
        allow_paths,
    } = a;
    reject_set(socket_options, "socket_options")?;
    reject_set(allow_paths, "allow_paths")?;
    let mut logs = access_logs(access_log).map_err(at("access_log"))?;
    if !access_log_path.is_empty() {
        logs.push(model::AccessLog {
            sink: model::AccessLogSink::File(access_log_path.clone()),
            format: model::AccessLogFormat::Default,
        });
    }
    // Envoy runs without an admin listener when no address is given.
    if address.is_none() {
        return Ok(None);
    }
    let address = ip_address(address).map_err(at("address"))?;
    Ok(Some(model::Admin { address, access_logs: logs }))
}

type Resources = (Vec<Arc<model::Listener>>, Vec<Arc<model::Cluster>>, Vec<Arc<model::Secret>>);

/// Static listeners and clusters may only name static secrets that exist (Envoy: "Unknown
/// static secret"), and SDS ones need an xDS transport.
fn check_secret_refs(
    listeners: &[Arc<model::Listener>],
    clusters: &[Arc<model::Cluster>],
    secrets: &[Arc<model::Secret>],
    dynamic: bool,
) -> ConfigResult<()> {
    let refs = listeners
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.sds_configs().map(move |s| (format!("listeners[{i}]"), s)))
        .chain(
            clusters.iter().enumerate().flat_map(|(i, c)| c.sds_configs().map(move |s| (format!("clusters[{i}]"), s))),
        );
    for (path, s) in refs {
        match &s.source {
            None if !secrets.iter().any(|x| x.name == s.name) => {
                return Err(ConfigError::invalid(path, format!("Unknown static secret: {}", s.name)))
            }
            Some(_) if !dynamic => {
                return Err(ConfigError::unsupported(
                    path,
                    format!(
                        "secret '{}' from sds_config needs dynamic_resources (ads_config, lds_config or cds_config): \
                         pinion fetches SDS over the same transport",
                        s.name
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn static_resources_(s: &b::bootstrap::StaticResources) -> ConfigResult<Resources> {
    let b::bootstrap::StaticResources { listeners, clusters, secrets } = s;
    let mut out_secrets: Vec<Arc<model::Secret>> = Vec::with_capacity(secrets.len());
    for (i, s) in secrets.iter().enumerate() {
        let p = format!("secrets[{i}]");
        let secret = super::tls::secret(s).map_err(at(&p))?;
        if out_secrets.iter().any(|o| o.name == secret.name) {
            return Err(ConfigError::invalid(format!("{p}.name"), format!("Duplicate static secret name {}", s.name)));
        }
        out_secrets.push(Arc::new(secret));
    }

    let mut out_clusters = Vec::with_capacity(clusters.len());
    let mut cluster_names: HashSet<&str> = HashSet::new();
    for (i, c) in clusters.iter().enumerate() {
        let p = format!("clusters[{i}]");
        if !cluster_names.insert(c.name.as_str()) {
            return Err(ConfigError::invalid(format!("{p}.name"), format!("duplicate cluster name '{}'", c.name)));
        }
        let mc = cluster(c).map_err(at(&p))?;
        out_clusters.push(Arc::new(mc));
    }

    let mut out_listeners = Vec::with_capacity(listeners.len());
    let mut listener_names: HashSet<&str> = HashSet::new();
    let mut addresses: HashMap<std::net::SocketAddr, &str> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if !l.name.is_empty() && !listener_names.insert(l.name.as_str()) {
            return Err(ConfigError::invalid(format!("{p}.name"), format!("duplicate listener name '{}'", l.name)));
        }
        let ml = listener(l).map_err(at(&p))?;
        // Port 0 asks the kernel for an ephemeral port: never a conflict.
        if ml.address.port() != 0 {
            if let Some(other) = addresses.insert(ml.address, l.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{p}.address"),
                    format!(
                        "listener '{}' has duplicate address '{}' as existing listener '{other}'",
                        l.name, ml.address
                    ),
                ));
            }
        }
        check_static_routes(l, &ml, &cluster_names).map_err(at(&p))?;
        out_listeners.push(Arc::new(ml));
    }
    Ok((out_listeners, out_clusters, out_secrets))
}

/// Inline route configs: RDS is unavailable without xDS, and `validate_clusters` (default true
/// for inline configs) requires every named cluster to be a static cluster.
fn check_static_routes(
    proto: &envoy_types::pb::envoy::config::listener::v3::Listener,
    l: &model::Listener,
    clusters: &HashSet<&str>,
) -> ConfigResult<()> {
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, fc)| {
            let n = proto.filter_chains.get(i).map_or(0, |p| p.filters.len().saturating_sub(1));
            (format!("filter_chains[{i}].filters[{n}].typed_config"), fc)
        })
        .chain(l.default_filter_chain.iter().map(|fc| {
            let n = proto.default_filter_chain.as_ref().map_or(0, |p| p.filters.len().saturating_sub(1));
            (format!("default_filter_chain.filters[{n}].typed_config"), fc)
        }));
    for (p, fc) in chains {
        let model::NetworkFilter::HttpConnectionManager(h) = &fc.filter else { continue };
        match &h.route_specifier {
            // Routes from xDS: `bootstrap` checks there is a transport for them.
            model::RouteSpecifier::Scoped(_) | model::RouteSpecifier::Rds { .. } => {}
            model::RouteSpecifier::Static(rc) => {
                if !rc.validate_clusters.unwrap_or(true) {
                    continue;
                }
                for (rp, name) in super::route::referenced_clusters(rc) {
                    if !clusters.contains(name.as_str()) {
                        return Err(ConfigError::invalid(
                            format!("{p}.route_config.{rp}"),
                            format!("route: unknown cluster '{name}'"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Static resources whose parts come from xDS (EDS clusters; listeners with `rds` or
/// `scoped_routes`), as (field path, what).
pub fn static_xds_dependents(
    listeners: &[Arc<model::Listener>],
    clusters: &[Arc<model::Cluster>],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        if c.discovery == model::DiscoveryType::Eds {
            out.push((format!("clusters[{i}].type"), format!("EDS cluster '{}'", c.name)));
        }
    }
    for (i, l) in listeners.iter().enumerate() {
        let uses_xds = l.filter_chains.iter().chain(l.default_filter_chain.iter()).any(|fc| {
            matches!(&fc.filter, model::NetworkFilter::HttpConnectionManager(h)
                if !matches!(h.route_specifier, model::RouteSpecifier::Static(_)))
        });
        if uses_xds {
            out.push((format!("listeners[{i}]"), format!("listener '{}' (rds or scoped_routes)", l.name)));
        }
    }
    out
}
