//! Access loggers: `envoy.access_loggers.file`, `envoy.access_loggers.stdout` / `stderr`.

use envoy_types::pb::envoy::config::accesslog::v3 as al;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
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
    } else {
        Err(ConfigError::unsupported(
            "typed_config",
            format!("access logger '{name}' ({}) is not supported by pinion", type_name(any)),
        ))
    }
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
