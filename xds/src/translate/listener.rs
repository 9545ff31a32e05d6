//! `envoy.config.listener.v3.Listener`, filter chains, network and listener filters.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as l;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;

use super::http_connection_manager::http_connection_manager;
use super::tcp_proxy::tcp_proxy;
use super::{
    at, bool_or, duration, duration_zero_disables, enum_value, ip_address, is_type, reject_set, type_name, u32_or,
    unpack, unsupported_field,
};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY_NAME: &str = "envoy.filters.network.tcp_proxy";

/// Translate a `Listener` (errors relative to it).
pub fn listener(li: &l::Listener) -> ConfigResult<model::Listener> {
    let l::Listener {
        name,
        address,
        additional_addresses,
        stat_prefix,
        // Stats only.
        stats_matcher: _,
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        // Opaque to the data plane.
        metadata: _,
        deprecated_v1,
        // Only affects draining on hot restart / health-check failure, which Pinion does not do.
        drain_type: _,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        // Informational (tracing/stats direction hint).
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        // Deprecated in favour of enable_reuse_port, which is honoured.
        reuse_port: _,
        enable_reuse_port,
        access_log,
        tcp_backlog_size,
        // Accept batching is a tuning knob.
        max_connections_to_accept_per_socket_event: _,
        bind_to_port,
        enable_mptcp,
        // Pinion has no global connection limit.
        ignore_global_conn_limit: _,
        // Pinion has no overload manager.
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
    } = li;
    reject_set(additional_addresses, "additional_addresses")?;
    reject_set(fcds_config, "fcds_config")?;
    reject_set(filter_chain_matcher, "filter_chain_matcher")?;
    if bool_or(use_original_dst, false) {
        return Err(unsupported_field("use_original_dst"));
    }
    reject_set(per_connection_buffer_high_watermark_timeout, "per_connection_buffer_high_watermark_timeout")?;
    reject_set(deprecated_v1, "deprecated_v1")?;
    if bool_or(transparent, false) {
        return Err(unsupported_field("transparent"));
    }
    if bool_or(freebind, false) {
        return Err(unsupported_field("freebind"));
    }
    reject_set(socket_options, "socket_options")?;
    reject_set(tcp_fast_open_queue_length, "tcp_fast_open_queue_length")?;
    reject_set(udp_listener_config, "udp_listener_config")?;
    reject_set(api_listener, "api_listener")?;
    reject_set(connection_balance_config, "connection_balance_config")?;
    reject_set(access_log, "access_log")?;
    if !bool_or(bind_to_port, true) {
        return Err(unsupported_field("bind_to_port"));
    }
    reject_set(enable_mptcp, "enable_mptcp")?;
    reject_set(tcp_keepalive, "tcp_keepalive")?;
    reject_set(listener_specifier, "internal_listener")?;

    let address = ip_address(address).map_err(at("address"))?;
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(ConfigError::invalid(
            "filter_chains",
            format!("listener '{name}' has no filter chains and no default_filter_chain"),
        ));
    }
    let mut chains = Vec::with_capacity(filter_chains.len());
    let default_match = l::FilterChainMatch::default();
    let mut seen: Vec<&l::FilterChainMatch> = Vec::with_capacity(filter_chains.len());
    for (i, fc) in filter_chains.iter().enumerate() {
        let m = fc.filter_chain_match.as_ref().unwrap_or(&default_match);
        if let Some(j) = seen.iter().position(|o| *o == m) {
            return Err(ConfigError::invalid(
                format!("filter_chains[{i}].filter_chain_match"),
                format!(
                    "multiple filter chains with the same matching rules are defined (filter_chains[{j}] and filter_chains[{i}])"
                ),
            ));
        }
        seen.push(m);
        chains.push(Arc::new(filter_chain(fc).map_err(at(format!("filter_chains[{i}]")))?));
    }
    let default_filter_chain = match default_filter_chain {
        None => None,
        Some(fc) => Some(Arc::new(filter_chain(fc).map_err(at("default_filter_chain"))?)),
    };
    let mut lfs = Vec::with_capacity(listener_filters.len());
    for (i, f) in listener_filters.iter().enumerate() {
        lfs.push(listener_filter(f).map_err(at(format!("listener_filters[{i}]")))?);
    }
    Ok(model::Listener {
        name: name.clone(),
        address,
        stat_prefix: stat_prefix.clone(),
        filter_chains: chains,
        default_filter_chain,
        listener_filters: lfs,
        per_connection_buffer_limit_bytes: u32_or(per_connection_buffer_limit_bytes, 1024 * 1024),
        reuse_port: bool_or(enable_reuse_port, true),
        tcp_backlog_size: tcp_backlog_size.as_ref().map(|v| v.value),
        listener_filters_timeout: duration_zero_disables(
            listener_filters_timeout,
            Some(std::time::Duration::from_secs(15)),
            "listener_filters_timeout",
        )?,
        continue_on_listener_filters_timeout: *continue_on_listener_filters_timeout,
    })
}

fn listener_filter(f: &l::ListenerFilter) -> ConfigResult<model::ListenerFilter> {
    use l::listener_filter::ConfigType;
    let l::ListenerFilter { name, filter_disabled, config_type } = f;
    reject_set(filter_disabled, "filter_disabled")?;
    let any = match config_type {
        None => None,
        Some(ConfigType::TypedConfig(any)) => Some(any),
        Some(ConfigType::ConfigDiscovery(_)) => return Err(unsupported_field("config_discovery")),
    };
    let known: [(&str, &str, model::ListenerFilter); 2] = [
        (
            "envoy.filters.listener.tls_inspector",
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
            model::ListenerFilter::TlsInspector,
        ),
        (
            "envoy.filters.listener.http_inspector",
            "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
            model::ListenerFilter::HttpInspector,
        ),
        // original_dst is left out on purpose: transparent interception (SO_ORIGINAL_DST)
        // is not implemented, so it is reported as unsupported rather than ignored.
    ];
    let found = known.iter().find(|(n, ty, _)| match any {
        Some(any) => type_name(any) == *ty,
        None => name == n,
    });
    match found {
        Some((_, _, filter)) => {
            // Pinion implements these filters with their default settings only.
            if any.is_some_and(|a| !a.value.is_empty()) {
                return Err(ConfigError::unsupported(
                    "typed_config",
                    format!("non-default settings for listener filter '{name}' are not supported by pinion"),
                ));
            }
            Ok(filter.clone())
        }
        None => {
            let what = match any {
                Some(any) => format!("'{name}' ({})", type_name(any)),
                None => format!("'{name}'"),
            };
            Err(ConfigError::unsupported("", format!("listener filter {what} is not supported by pinion")))
        }
    }
}

fn filter_chain(fc: &l::FilterChain) -> ConfigResult<model::FilterChain> {
    let l::FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        // Opaque to the data plane.
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout,
        name,
    } = fc;
    if bool_or(use_proxy_proto, false) {
        return Err(unsupported_field("use_proxy_proto"));
    }
    let transport_socket = super::tls::downstream(transport_socket).map_err(at("transport_socket"))?;
    let filter_chain_match = match filter_chain_match {
        None => model::FilterChainMatch::default(),
        Some(m) => chain_match(m).map_err(at("filter_chain_match"))?,
    };
    let Some(last) = filters.len().checked_sub(1) else {
        return Err(ConfigError::invalid(
            "filters",
            "a filter chain needs a terminal network filter (http_connection_manager or tcp_proxy)",
        ));
    };
    let mut terminal = None;
    for (i, f) in filters.iter().enumerate() {
        let p = format!("filters[{i}]");
        let t = network_filter(f, i == last).map_err(at(&p))?;
        terminal = t.or(terminal);
    }
    let Some(filter) = terminal else {
        // network_filter always returns the terminal filter for the last entry or an error.
        return Err(ConfigError::invalid("filters", "a filter chain needs a terminal network filter"));
    };
    let transport_socket_connect_timeout = match transport_socket_connect_timeout {
        None => None,
        Some(d) => Some(duration(d).map_err(at("transport_socket_connect_timeout"))?).filter(|d| !d.is_zero()),
    };
    Ok(model::FilterChain {
        name: name.clone(),
        filter_chain_match,
        filter,
        transport_socket,
        transport_socket_connect_timeout,
    })
}

/// Translate one network filter; only the last may be (and must be) terminal.
fn network_filter(f: &l::Filter, is_last: bool) -> ConfigResult<Option<model::NetworkFilter>> {
    use l::filter::ConfigType;
    let l::Filter { name, config_type } = f;
    let any = match config_type {
        None => None,
        Some(ConfigType::TypedConfig(any)) => Some(any),
        Some(ConfigType::ConfigDiscovery(_)) => return Err(unsupported_field("config_discovery")),
    };
    let is_hcm = any.map_or(name == HCM_NAME, is_type::<HttpConnectionManager>);
    let is_tcp = any.map_or(name == TCP_PROXY_NAME, is_type::<TcpProxy>);
    let what = match any {
        Some(any) => format!("{name} of type {}", type_name(any)),
        None => name.clone(),
    };
    if !is_hcm && !is_tcp {
        if is_last {
            return Err(ConfigError::unsupported(
                "",
                format!("non-terminal filter named {what} is the last filter in a network filter chain; pinion supports only http_connection_manager and tcp_proxy"),
            ));
        }
        return Err(ConfigError::unsupported("", format!("network filter named {what} is not supported by pinion")));
    }
    if !is_last {
        return Err(ConfigError::invalid(
            "",
            format!("terminal filter named {what} must be the last filter in a network filter chain"),
        ));
    }
    let Some(any) = any else {
        return Err(ConfigError::invalid("typed_config", format!("filter {name} needs a typed_config")));
    };
    let typed = |e: ConfigError| e.under("typed_config");
    if is_hcm {
        let h: HttpConnectionManager = unpack(any).map_err(typed)?;
        let h = http_connection_manager(&h).map_err(typed)?;
        Ok(Some(model::NetworkFilter::HttpConnectionManager(Arc::new(h))))
    } else {
        let t: TcpProxy = unpack(any).map_err(typed)?;
        let t = tcp_proxy(&t).map_err(typed)?;
        Ok(Some(model::NetworkFilter::TcpProxy(Arc::new(t))))
    }
}

fn chain_match(m: &l::FilterChainMatch) -> ConfigResult<model::FilterChainMatch> {
    use l::filter_chain_match::ConnectionSourceType;
    let l::FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    reject_set(address_suffix, "address_suffix")?;
    reject_set(suffix_len, "suffix_len")?;
    reject_set(direct_source_prefix_ranges, "direct_source_prefix_ranges")?;
    if enum_value::<ConnectionSourceType>(*source_type, "source_type")? != ConnectionSourceType::Any {
        return Err(unsupported_field("source_type"));
    }
    let port = |p: u32, field: String| {
        u16::try_from(p).map_err(|_| ConfigError::invalid(field, format!("port {p} is out of range")))
    };
    let destination_port = match destination_port {
        None => None,
        Some(p) => Some(port(p.value, "destination_port".into())?),
    };
    let mut ports = Vec::with_capacity(source_ports.len());
    for (i, p) in source_ports.iter().enumerate() {
        ports.push(port(*p, format!("source_ports[{i}]"))?);
    }
    Ok(model::FilterChainMatch {
        destination_port,
        prefix_ranges: cidrs(prefix_ranges).map_err(at("prefix_ranges"))?,
        source_prefix_ranges: cidrs(source_prefix_ranges).map_err(at("source_prefix_ranges"))?,
        source_ports: ports,
        server_names: server_names.iter().map(|s| s.to_ascii_lowercase()).collect(),
        transport_protocol: transport_protocol.clone(),
        application_protocols: application_protocols.clone(),
    })
}

fn cidrs(rs: &[core::CidrRange]) -> ConfigResult<Vec<model::CidrRange>> {
    let mut out = Vec::with_capacity(rs.len());
    for (i, r) in rs.iter().enumerate() {
        let core::CidrRange { address_prefix, prefix_len } = r;
        let address: IpAddr = address_prefix.parse().map_err(|_| {
            ConfigError::invalid(format!("[{i}].address_prefix"), format!("malformed IP address: {address_prefix}"))
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = u32_or(prefix_len, 0);
        let prefix_len = u8::try_from(len).ok().filter(|l| u32::from(*l) <= max).ok_or_else(|| {
            ConfigError::invalid(format!("[{i}].prefix_len"), format!("prefix length {len} exceeds {max}"))
        })?;
        out.push(model::CidrRange { address, prefix_len });
    }
    Ok(out)
}
