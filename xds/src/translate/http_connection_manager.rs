//! `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager` and the
//! shared HTTP/1 and HTTP/2 protocol options (its HTTP filters are in `http_filter`).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

use super::access_log::access_logs;
use super::http_filter;
use super::route::route_configuration_in;
use super::{at, bool_or, duration_or, duration_zero_disables, enum_value, reject_set, u32_or};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Translate an `HttpConnectionManager`; errors relative to it.
pub(crate) fn http_connection_manager(h: &hcm::HttpConnectionManager) -> ConfigResult<model::HttpConnectionManager> {
    use hcm::http_connection_manager::{
        CodecType as Codec, ForwardClientCertDetails as Fcc, PathWithEscapedSlashesAction as Esc, RouteSpecifier as RS,
        ServerHeaderTransformation as Sht,
    };
    let hcm::HttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        // Whether invalid HTTP messages reset only the stream; error handling detail.
        stream_error_on_invalid_http_message: _,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        // Only relevant with an overload manager, which Pinion does not have.
        append_local_overload: _,
        // Only relevant with the PROXY protocol listener filter, which Pinion does not have.
        add_proxy_protocol_connection_state: _,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = h;
    reject_set(tracing, "tracing")?;
    reject_set(http3_protocol_options, "http3_protocol_options")?;
    reject_set(scheme_header_transformation, "scheme_header_transformation")?;
    reject_set(stream_flush_timeout, "stream_flush_timeout")?;
    reject_set(drain_timeout_jitter, "drain_timeout_jitter")?;
    reject_set(access_log_flush_interval, "access_log_flush_interval")?;
    reject_set(flush_access_log_on_new_request, "flush_access_log_on_new_request")?;
    reject_set(access_log_options, "access_log_options")?;
    reject_set(original_ip_detection_extensions, "original_ip_detection_extensions")?;
    reject_set(early_header_mutation_extensions, "early_header_mutation_extensions")?;
    reject_set(internal_address_config, "internal_address_config")?;
    let forward_client_cert = match enum_value::<Fcc>(*forward_client_cert_details, "forward_client_cert_details")? {
        Fcc::Sanitize => model::ForwardClientCert::Sanitize,
        Fcc::ForwardOnly => model::ForwardClientCert::ForwardOnly,
        Fcc::AppendForward => model::ForwardClientCert::AppendForward,
        Fcc::SanitizeSet => model::ForwardClientCert::SanitizeSet,
        Fcc::AlwaysForwardOnly => model::ForwardClientCert::AlwaysForwardOnly,
    };
    let client_cert_details = match set_current_client_cert_details {
        None => model::ClientCertDetails::default(),
        Some(d) => client_cert_details(d).map_err(at("set_current_client_cert_details"))?,
    };
    reject_set(forward_client_cert_matcher, "forward_client_cert_matcher")?;
    reject_set(proxy_100_continue, "proxy_100_continue")?;
    reject_set(represent_ipv4_remote_address_as_ipv4_mapped_ipv6, "represent_ipv4_remote_address_as_ipv4_mapped_ipv6")?;
    reject_set(request_id_extension, "request_id_extension")?;
    reject_set(local_reply_config, "local_reply_config")?;
    reject_set(strip_matching_host_port, "strip_matching_host_port")?;
    reject_set(path_normalization_options, "path_normalization_options")?;
    reject_set(strip_trailing_host_dot, "strip_trailing_host_dot")?;
    reject_set(proxy_status_config, "proxy_status_config")?;
    reject_set(typed_header_validation_config, "typed_header_validation_config")?;
    reject_set(append_x_forwarded_port, "append_x_forwarded_port")?;
    reject_set(forward_proto_config, "forward_proto_config")?;
    reject_set(strip_port_mode, "strip_any_host_port")?;

    let codec_type = match enum_value::<Codec>(*codec_type, "codec_type")? {
        Codec::Auto => model::CodecType::Auto,
        Codec::Http1 => model::CodecType::Http1,
        Codec::Http2 => model::CodecType::Http2,
        Codec::Http3 => return Err(ConfigError::unsupported("codec_type", "HTTP3 codec is not supported by pinion")),
    };
    let route_specifier = match route_specifier {
        None => return Err(ConfigError::invalid("", "one of route_config, rds or scoped_routes must be set")),
        Some(RS::RouteConfig(rc)) => {
            // Envoy skips a route's config for an optional HTTP filter it does not know.
            let optional: Vec<String> = http_filters.iter().filter(|f| f.is_optional).map(|f| f.name.clone()).collect();
            model::RouteSpecifier::Static(Arc::new(route_configuration_in(rc, &optional).map_err(at("route_config"))?))
        }
        Some(RS::Rds(hcm::Rds { route_config_name, config_source: _ })) => {
            // config_source: the xDS client resolves where RDS comes from.
            model::RouteSpecifier::Rds { route_config_name: route_config_name.clone() }
        }
        Some(RS::ScopedRoutes(s)) => {
            model::RouteSpecifier::Scoped(Arc::new(super::scoped_route::scoped_routes(s).map_err(at("scoped_routes"))?))
        }
    };
    let http_filters = http_filter::http_filters(http_filters).map_err(at("http_filters"))?;

    if let Some(c) = common_http_protocol_options {
        reject_set(&c.max_requests_per_connection, "common_http_protocol_options.max_requests_per_connection")?;
    }
    let common = common_http_protocol_options
        .as_ref()
        .map(common_options)
        .transpose()
        .map_err(at("common_http_protocol_options"))?
        .unwrap_or_default();
    let (accept_http_10, default_host_for_http_10) = match http_protocol_options {
        None => (false, None),
        Some(o) => http1_options(o, Side::Downstream).map_err(at("http_protocol_options"))?,
    };
    let http2 = match http2_protocol_options {
        None => model::Http2Options::default(),
        Some(o) => http2_options(o).map_err(at("http2_protocol_options"))?,
    };

    let mut upgrade_types = Vec::new();
    for (i, u) in upgrade_configs.iter().enumerate() {
        let hcm::http_connection_manager::UpgradeConfig { upgrade_type, filters, enabled } = u;
        let p = format!("upgrade_configs[{i}]");
        reject_set(filters, &format!("{p}.filters"))?;
        let ty = upgrade_type.to_ascii_lowercase();
        if ty != "websocket" {
            return Err(ConfigError::unsupported(
                format!("{p}.upgrade_type"),
                format!("upgrade type '{upgrade_type}' is not supported by pinion (only websocket)"),
            ));
        }
        // `enabled: false` allows the upgrade only on routes that enable it; those are not
        // tracked at the HCM level, so the type is simply not enabled here.
        if bool_or(enabled, true) && !upgrade_types.contains(&ty) {
            upgrade_types.push(ty);
        }
    }

    if *always_set_request_id_in_response {
        return Err(ConfigError::unsupported(
            "always_set_request_id_in_response",
            "always_set_request_id_in_response is not supported by pinion yet",
        ));
    }
    Ok(model::HttpConnectionManager {
        stat_prefix: stat_prefix.clone(),
        codec_type,
        route_specifier,
        http_filters,
        use_remote_address: bool_or(use_remote_address, false),
        xff_num_trusted_hops: *xff_num_trusted_hops,
        skip_xff_append: *skip_xff_append,
        via: if via.is_empty() { None } else { Some(via.clone()) },
        generate_request_id: bool_or(generate_request_id, true),
        preserve_external_request_id: *preserve_external_request_id,
        always_set_request_id_in_response: *always_set_request_id_in_response,
        normalize_path: bool_or(normalize_path, false),
        merge_slashes: *merge_slashes,
        path_with_escaped_slashes_action: match enum_value::<Esc>(
            *path_with_escaped_slashes_action,
            "path_with_escaped_slashes_action",
        )? {
            Esc::ImplementationSpecificDefault | Esc::KeepUnchanged => model::EscapedSlashesAction::KeepUnchanged,
            Esc::RejectRequest => model::EscapedSlashesAction::RejectRequest,
            Esc::UnescapeAndRedirect => model::EscapedSlashesAction::UnescapeAndRedirect,
            Esc::UnescapeAndForward => model::EscapedSlashesAction::UnescapeAndForward,
        },
        max_request_headers_kb: u32_or(max_request_headers_kb, 60),
        idle_timeout: common.idle_timeout,
        max_headers_count: common.max_headers_count,
        max_stream_duration: common.max_stream_duration,
        max_connection_duration: common.max_connection_duration,
        max_connection_duration_jitter_percent: common.max_connection_duration_jitter_percent,
        http1_safe_max_connection_duration: *http1_safe_max_connection_duration,
        headers_with_underscores_action: common.headers_with_underscores_action,
        accept_http_10,
        default_host_for_http_10,
        http2,
        server_name: if server_name.is_empty() { "envoy".to_string() } else { server_name.clone() },
        forward_client_cert,
        client_cert_details,
        server_header_transformation: match enum_value::<Sht>(
            *server_header_transformation,
            "server_header_transformation",
        )? {
            Sht::Overwrite => model::ServerHeaderTransformation::Overwrite,
            Sht::AppendIfAbsent => model::ServerHeaderTransformation::AppendIfAbsent,
            Sht::PassThrough => model::ServerHeaderTransformation::PassThrough,
        },
        stream_idle_timeout: duration_zero_disables(
            stream_idle_timeout,
            Some(Duration::from_secs(300)),
            "stream_idle_timeout",
        )?,
        request_timeout: duration_zero_disables(request_timeout, None, "request_timeout")?,
        request_headers_timeout: duration_zero_disables(request_headers_timeout, None, "request_headers_timeout")?,
        drain_timeout: duration_or(drain_timeout, Duration::from_secs(5), "drain_timeout")?,
        delayed_close_timeout: duration_or(delayed_close_timeout, Duration::from_secs(1), "delayed_close_timeout")?,
        access_logs: access_logs(access_log).map_err(at("access_log"))?,
        upgrade_types,
        add_user_agent: bool_or(add_user_agent, false),
    })
}

/// The `common_http_protocol_options` fields the HCM uses.
pub(crate) struct CommonOptions {
    /// `idle_timeout` (default 1h, 0 = disabled).
    pub idle_timeout: Option<Duration>,
    /// `max_headers_count` (default 100).
    pub max_headers_count: u32,
    /// `max_stream_duration` (0 = disabled).
    pub max_stream_duration: Option<Duration>,
    /// `max_connection_duration` (0 = disabled).
    pub max_connection_duration: Option<Duration>,
    /// `max_connection_duration_jitter`, in percent.
    pub max_connection_duration_jitter_percent: f64,
    /// `headers_with_underscores_action`.
    pub headers_with_underscores_action: model::HeadersWithUnderscoresAction,
    /// `max_requests_per_connection` (0 = unlimited).
    pub max_requests_per_connection: u32,
}

impl Default for CommonOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(3600)),
            max_headers_count: 100,
            max_stream_duration: None,
            max_connection_duration: None,
            max_connection_duration_jitter_percent: 0.0,
            headers_with_underscores_action: model::HeadersWithUnderscoresAction::Allow,
            max_requests_per_connection: 0,
        }
    }
}

/// Translate `core.HttpProtocolOptions`; errors relative to it.
pub(crate) fn common_options(o: &core::HttpProtocolOptions) -> ConfigResult<CommonOptions> {
    use core::http_protocol_options::HeadersWithUnderscoresAction as U;
    let core::HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = o;
    reject_set(max_response_headers_kb, "max_response_headers_kb")?;
    let jitter = match max_connection_duration_jitter {
        None => 0.0,
        Some(p) => {
            let envoy_types::pb::envoy::r#type::v3::Percent { value } = p;
            if !(0.0..=100.0).contains(value) {
                return Err(ConfigError::invalid("max_connection_duration_jitter.value", "must be in [0, 100]"));
            }
            *value
        }
    };
    Ok(CommonOptions {
        max_connection_duration: duration_zero_disables(max_connection_duration, None, "max_connection_duration")?,
        max_connection_duration_jitter_percent: jitter,
        idle_timeout: duration_zero_disables(idle_timeout, Some(Duration::from_secs(3600)), "idle_timeout")?,
        max_headers_count: u32_or(max_headers_count, 100),
        max_stream_duration: duration_zero_disables(max_stream_duration, None, "max_stream_duration")?,
        headers_with_underscores_action: match enum_value::<U>(
            *headers_with_underscores_action,
            "headers_with_underscores_action",
        )? {
            U::Allow => model::HeadersWithUnderscoresAction::Allow,
            U::RejectRequest => model::HeadersWithUnderscoresAction::RejectRequest,
            U::DropHeader => model::HeadersWithUnderscoresAction::DropHeader,
        },
        max_requests_per_connection: u32_or(max_requests_per_connection, 0),
    })
}

/// Which side HTTP/1 options apply to (a few fields only make sense on one side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// HCM (downstream).
    Downstream,
    /// Cluster (upstream).
    Upstream,
}

/// Translate `Http1ProtocolOptions` into (`accept_http_10`, `default_host_for_http_10`).
pub(crate) fn http1_options(o: &core::Http1ProtocolOptions, side: Side) -> ConfigResult<(bool, Option<String>)> {
    let core::Http1ProtocolOptions {
        // Absolute-form request targets are always accepted (as with Envoy's default).
        allow_absolute_url: _,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        // Requests with both Content-Length and chunked are handled by the codec (chunked wins).
        allow_chunked_length: _,
        // Error handling detail (reset stream vs. close connection).
        override_stream_error_on_invalid_http_message: _,
        send_fully_qualified_url,
        // Parser implementation choice.
        use_balsa_parser: _,
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = o;
    reject_set(header_key_format, "header_key_format")?;
    reject_set(enable_trailers, "enable_trailers")?;
    reject_set(send_fully_qualified_url, "send_fully_qualified_url")?;
    reject_set(allow_custom_methods, "allow_custom_methods")?;
    reject_set(ignore_http_11_upgrade, "ignore_http_11_upgrade")?;
    if side == Side::Upstream {
        reject_set(accept_http_10, "accept_http_10")?;
        reject_set(default_host_for_http_10, "default_host_for_http_10")?;
    }
    let host = if default_host_for_http_10.is_empty() { None } else { Some(default_host_for_http_10.clone()) };
    Ok((*accept_http_10, host))
}

/// Translate `Http2ProtocolOptions`; errors relative to it.
pub(crate) fn http2_options(o: &core::Http2ProtocolOptions) -> ConfigResult<model::Http2Options> {
    let core::Http2ProtocolOptions {
        // HPACK table sizing is a codec tuning knob.
        hpack_table_size: _,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        // Flood-protection limits: the h2 codec enforces its own.
        max_outbound_frames: _,
        max_outbound_control_frames: _,
        max_consecutive_inbound_frames_with_empty_payload: _,
        max_inbound_priority_frames_per_stream: _,
        max_inbound_window_update_frames_per_data_frame_sent: _,
        // Error handling detail (reset stream vs. close connection).
        stream_error_on_invalid_http_messaging: _,
        override_stream_error_on_invalid_http_message: _,
        custom_settings_parameters,
        connection_keepalive,
        // Codec implementation choice.
        use_oghttp2_codec: _,
        // Only relevant with allow_metadata, which is rejected.
        max_metadata_size: _,
        // HPACK encoding detail.
        enable_huffman_encoding: _,
        // Header size limits are enforced by max_request_headers_kb.
        max_header_field_size_kb: _,
        // Header validation detail.
        disallow_obs_text: _,
        // Flood-protection limits: the h2 codec enforces its own.
        stream_reset_burst: _,
        stream_reset_rate: _,
    } = o;
    reject_set(allow_connect, "allow_connect")?;
    reject_set(allow_metadata, "allow_metadata")?;
    reject_set(custom_settings_parameters, "custom_settings_parameters")?;
    let d = model::Http2Options::default();
    let (keepalive_interval, keepalive_timeout) = match connection_keepalive {
        None => (None, None),
        Some(k) => {
            let core::KeepaliveSettings {
                interval,
                timeout,
                // Jitter only spreads pings; harmless to ignore.
                interval_jitter: _,
                connection_idle_interval,
            } = k;
            reject_set(connection_idle_interval, "connection_keepalive.connection_idle_interval")?;
            (
                duration_zero_disables(interval, None, "connection_keepalive.interval")?,
                duration_zero_disables(timeout, None, "connection_keepalive.timeout")?,
            )
        }
    };
    Ok(model::Http2Options {
        max_concurrent_streams: u32_or(max_concurrent_streams, d.max_concurrent_streams),
        initial_stream_window_size: u32_or(initial_stream_window_size, d.initial_stream_window_size),
        initial_connection_window_size: u32_or(initial_connection_window_size, d.initial_connection_window_size),
        keepalive_interval,
        keepalive_timeout,
    })
}

/// `SetCurrentClientCertDetails`: subject, URI and DNS SANs; the PEM fields are refused.
fn client_cert_details(
    d: &hcm::http_connection_manager::SetCurrentClientCertDetails,
) -> ConfigResult<model::ClientCertDetails> {
    let hcm::http_connection_manager::SetCurrentClientCertDetails { subject, cert, chain, dns, uri, issuer, format } =
        d;
    reject_set(cert, "cert")?;
    reject_set(chain, "chain")?;
    reject_set(issuer, "issuer")?;
    reject_set(format, "format")?;
    Ok(model::ClientCertDetails { subject: bool_or(subject, false), uri: *uri, dns: *dns })
}
