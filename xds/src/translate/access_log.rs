//! Access loggers: `envoy.access_loggers.file`, `envoy.access_loggers.stdout` / `stderr`.

use envoy_types::pb::envoy::config::accesslog::v3 as al;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3 as grpc;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3 as stream;
use envoy_types::pb::google::protobuf as pbuf;

use super::{at, data_source, is_type, reject_set, type_name, unpack};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Translate a list of `AccessLog`s; errors relative to the list (`[i]...`).
pub(crate) fn access_logs(logs: &[al::AccessLog]) -> ConfigResult<Vec<model::AccessLog>> {
    let mut out = Vec::with_capacity(logs.len());
    for (i, l) in logs.iter().enumerate() {
        out.push(access_log(l).map_err(at(format!("[{i}]")))?);
    }
    Ok(out)
}

/// Translate one `AccessLog`; errors relative to it.
pub(crate) fn access_log(l: &al::AccessLog) -> ConfigResult<model::AccessLog> {
    use al::access_log::ConfigType;
    let al::AccessLog { name, filter, config_type } = l;
    reject_set(filter, "filter")?;
    let Some(ConfigType::TypedConfig(any)) = config_type else {
        return Err(ConfigError::invalid("typed_config", format!("access log '{name}' needs a typed_config")));
    };
    let typed = |e: ConfigError| e.under("typed_config");
    if is_type::<file::FileAccessLog>(any) {
        let f: file::FileAccessLog = unpack(any).map_err(typed)?;
        file_access_log(&f).map_err(typed)
    } else if is_type::<stream::StdoutAccessLog>(any) {
        let stream::StdoutAccessLog { access_log_format } = unpack(any).map_err(typed)?;
        let format = match access_log_format {
            None => model::AccessLogFormat::Default,
            Some(stream::stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                substitution_format(&f).map_err(at("typed_config.log_format"))?
            }
        };
        Ok(model::AccessLog { sink: model::AccessLogSink::Stdout, format })
    } else if is_type::<stream::StderrAccessLog>(any) {
        let stream::StderrAccessLog { access_log_format } = unpack(any).map_err(typed)?;
        let format = match access_log_format {
            None => model::AccessLogFormat::Default,
            Some(stream::stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                substitution_format(&f).map_err(at("typed_config.log_format"))?
            }
        };
        Ok(model::AccessLog { sink: model::AccessLogSink::Stderr, format })
    } else if is_type::<grpc::HttpGrpcAccessLogConfig>(any) {
        let grpc::HttpGrpcAccessLogConfig {
            common_config,
            additional_request_headers_to_log,
            additional_response_headers_to_log,
            additional_response_trailers_to_log,
        } = unpack(any).map_err(typed)?;
        let mut g = common_grpc_config(common_config.as_ref(), model::GrpcAccessLogKind::Http).map_err(typed)?;
        g.additional_request_headers_to_log = header_names(&additional_request_headers_to_log)
            .map_err(at("typed_config.additional_request_headers_to_log"))?;
        g.additional_response_headers_to_log = header_names(&additional_response_headers_to_log)
            .map_err(at("typed_config.additional_response_headers_to_log"))?;
        // Pinion's access log path does not see response trailers yet.
        reject_set(&additional_response_trailers_to_log, "typed_config.additional_response_trailers_to_log")?;
        Ok(model::AccessLog { sink: model::AccessLogSink::Grpc(g), format: model::AccessLogFormat::Default })
    } else if is_type::<grpc::TcpGrpcAccessLogConfig>(any) {
        let grpc::TcpGrpcAccessLogConfig { common_config } = unpack(any).map_err(typed)?;
        let g = common_grpc_config(common_config.as_ref(), model::GrpcAccessLogKind::Tcp).map_err(typed)?;
        Ok(model::AccessLog { sink: model::AccessLogSink::Grpc(g), format: model::AccessLogFormat::Default })
    } else {
        Err(ConfigError::unsupported(
            "typed_config",
            format!("access logger '{name}' ({}) is not supported by pinion", type_name(any)),
        ))
    }
}

/// `CommonGrpcAccessLogConfig` (errors relative to the logger config).
fn common_grpc_config(
    c: Option<&grpc::CommonGrpcAccessLogConfig>,
    kind: model::GrpcAccessLogKind,
) -> ConfigResult<model::GrpcAccessLog> {
    let Some(c) = c else {
        return Err(ConfigError::invalid("common_config", "common_config is required"));
    };
    let under = at("common_config");
    let grpc::CommonGrpcAccessLogConfig {
        log_name,
        grpc_service,
        transport_api_version,
        buffer_flush_interval,
        buffer_size_bytes,
        filter_state_objects_to_log,
        grpc_stream_retry_policy,
        custom_tags,
    } = c;
    if log_name.is_empty() {
        return Err(ConfigError::invalid("common_config.log_name", "log_name must not be empty"));
    }
    match super::enum_value::<core::ApiVersion>(*transport_api_version, "common_config.transport_api_version")? {
        core::ApiVersion::Auto | core::ApiVersion::V3 => {}
        core::ApiVersion::V2 => {
            return Err(ConfigError::invalid(
                "common_config.transport_api_version",
                "the v2 access log service API is no longer supported (use V3)",
            ))
        }
    }
    let Some(service) = grpc_service else {
        return Err(ConfigError::invalid("common_config.grpc_service", "grpc_service is required"));
    };
    let service = super::config_source::grpc_service(service).map_err(at("common_config.grpc_service"))?;
    let (cluster_name, authority) = match service {
        model::GrpcService::EnvoyGrpc { cluster_name, authority, max_receive_message_length: _ } => {
            (cluster_name, authority)
        }
        model::GrpcService::GoogleGrpc { .. } => {
            return Err(super::unsupported_field("common_config.grpc_service.google_grpc"));
        }
    };
    let buffer_flush_interval = super::duration_or(
        buffer_flush_interval,
        model::GrpcAccessLog::DEFAULT_FLUSH_INTERVAL,
        "common_config.buffer_flush_interval",
    )?;
    if buffer_flush_interval.is_zero() {
        return Err(ConfigError::invalid("common_config.buffer_flush_interval", "must be greater than 0s"));
    }
    let buffer_size_bytes = super::u32_or(buffer_size_bytes, model::GrpcAccessLog::DEFAULT_BUFFER_SIZE_BYTES);
    reject_set(filter_state_objects_to_log, "filter_state_objects_to_log").map_err(under)?;
    reject_set(grpc_stream_retry_policy, "common_config.grpc_stream_retry_policy")?;
    reject_set(custom_tags, "common_config.custom_tags")?;
    Ok(model::GrpcAccessLog {
        log_name: log_name.clone(),
        cluster_name,
        authority,
        kind,
        buffer_flush_interval,
        buffer_size_bytes,
        additional_request_headers_to_log: Vec::new(),
        additional_response_headers_to_log: Vec::new(),
        additional_response_trailers_to_log: Vec::new(),
    })
}

/// Header names to log: valid HTTP header names, lowercased (`:authority`-style pseudo
/// headers are allowed, as in Envoy).
fn header_names(names: &[String]) -> ConfigResult<Vec<String>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let lower = n.to_ascii_lowercase();
            let bare = lower.strip_prefix(':').unwrap_or(&lower);
            if http::HeaderName::from_bytes(bare.as_bytes()).is_err() {
                return Err(ConfigError::invalid(format!("[{i}]"), format!("invalid header name '{n}'")));
            }
            Ok(lower)
        })
        .collect()
}

fn file_access_log(f: &file::FileAccessLog) -> ConfigResult<model::AccessLog> {
    use file::file_access_log::AccessLogFormat as F;
    let file::FileAccessLog { path, access_log_format } = f;
    if path.is_empty() {
        return Err(ConfigError::invalid("path", "path must not be empty"));
    }
    let format = match access_log_format {
        None => model::AccessLogFormat::Default,
        Some(F::Format(s)) if s.is_empty() => model::AccessLogFormat::Default,
        Some(F::Format(s)) => model::AccessLogFormat::Text(s.clone()),
        Some(F::JsonFormat(s)) => json_format(s).map_err(at("json_format"))?,
        Some(F::TypedJsonFormat(s)) => json_format(s).map_err(at("typed_json_format"))?,
        Some(F::LogFormat(sf)) => substitution_format(sf).map_err(at("log_format"))?,
    };
    Ok(model::AccessLog { sink: model::AccessLogSink::File(path.clone()), format })
}

/// Translate a `SubstitutionFormatString`; errors relative to it.
pub(crate) fn substitution_format(s: &core::SubstitutionFormatString) -> ConfigResult<model::AccessLogFormat> {
    use core::substitution_format_string::Format;
    let core::SubstitutionFormatString {
        omit_empty_values,
        // Only used for local replies (the Content-Type of a formatted body).
        content_type: _,
        formatters,
        // Only affects key ordering of JSON output.
        json_format_options: _,
        format,
    } = s;
    reject_set(omit_empty_values, "omit_empty_values")?;
    reject_set(formatters, "formatters")?;
    match format {
        None => Ok(model::AccessLogFormat::Default),
        Some(Format::TextFormat(t)) => Ok(model::AccessLogFormat::Text(t.clone())),
        Some(Format::TextFormatSource(ds)) => {
            let bytes = data_source(ds).map_err(at("text_format_source"))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| ConfigError::invalid("text_format_source", "format must be UTF-8"))?;
            Ok(model::AccessLogFormat::Text(text))
        }
        Some(Format::JsonFormat(j)) => json_format(j).map_err(at("json_format")),
    }
}

/// A flat JSON format: every value must be a string (nested objects are not supported yet).
fn json_format(s: &pbuf::Struct) -> ConfigResult<model::AccessLogFormat> {
    use pbuf::value::Kind;
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(v) = s.fields.get(k) else { continue };
        match &v.kind {
            Some(Kind::StringValue(f)) => out.push((k.clone(), f.clone())),
            _ => {
                return Err(ConfigError::unsupported(
                    format!("[\"{k}\"]"),
                    format!("non-string json_format value for '{k}' is not supported by pinion"),
                ))
            }
        }
    }
    Ok(model::AccessLogFormat::Json(out))
}
