//! `envoy.config.core.v3.HealthCheck` (a cluster's `health_checks`): active health checking
//! with the HTTP, TCP and gRPC checkers, Envoy's defaults resolved here.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf as pbuf;

use super::matcher::string_matcher;
use super::route::{header_value_option, headers_to_remove};
use super::{at, bool_or, duration, duration_or, enum_value, reject_set, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Translate a cluster's `health_checks` (errors relative to the cluster). `http2`: the
/// cluster speaks HTTP/2 upstream (required by gRPC checks, as in Envoy).
pub(crate) fn health_checks(
    list: &[core::HealthCheck],
    cluster_name: &str,
    http2: bool,
) -> ConfigResult<Option<model::HealthCheck>> {
    match list {
        [] => Ok(None),
        [hc] => health_check(hc, cluster_name, http2).map(Some).map_err(at("health_checks[0]")),
        // Envoy 1.40 combines several named checkers per host; one checker per cluster here.
        _ => Err(ConfigError::unsupported(
            "health_checks",
            "more than one health check per cluster is not supported by pinion",
        )),
    }
}

/// A required duration PGV already checked to be set (and, for `interval`, positive).
fn required(d: &Option<pbuf::Duration>, field: &str) -> ConfigResult<Duration> {
    match d {
        Some(d) => duration(d).map_err(at(field)),
        None => Err(ConfigError::invalid(field, "value is required")),
    }
}

fn health_check(hc: &core::HealthCheck, cluster_name: &str, http2: bool) -> ConfigResult<model::HealthCheck> {
    use core::health_check::HealthChecker as C;
    let core::HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path,
        event_logger,
        event_service,
        always_log_health_check_failures,
        // Only changes what the event logger writes, and event loggers are refused.
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = hc;
    reject_set(alt_port, "alt_port")?;
    reject_set(event_log_path, "event_log_path")?;
    reject_set(event_logger, "event_logger")?;
    reject_set(event_service, "event_service")?;
    reject_set(tls_options, "tls_options")?;
    reject_set(transport_socket_match_criteria, "transport_socket_match_criteria")?;
    let threshold = |v: &Option<pbuf::UInt32Value>, field: &str| match v {
        Some(v) => Ok(v.value),
        None => Err(ConfigError::invalid(field, "value is required")),
    };
    let interval = required(interval, "interval")?;
    let unhealthy_interval = duration_or(unhealthy_interval, interval, "unhealthy_interval")?;
    let no_traffic_interval = duration_or(no_traffic_interval, Duration::from_secs(60), "no_traffic_interval")?;
    let checker = match health_checker {
        None => return Err(ConfigError::invalid("health_checker", "health_checker is required")),
        Some(C::HttpHealthCheck(h)) => model::HealthChecker::Http(http(h).map_err(at("http_health_check"))?),
        Some(C::TcpHealthCheck(t)) => model::HealthChecker::Tcp(tcp(t).map_err(at("tcp_health_check"))?),
        Some(C::GrpcHealthCheck(g)) => {
            if !http2 {
                // Envoy's wording.
                return Err(ConfigError::invalid(
                    "grpc_health_check",
                    format!("{cluster_name} cluster must support HTTP/2 for gRPC healthchecking"),
                ));
            }
            model::HealthChecker::Grpc(grpc(g).map_err(at("grpc_health_check"))?)
        }
        Some(C::CustomHealthCheck(_)) => return Err(unsupported_field("custom_health_check")),
    };
    Ok(model::HealthCheck {
        timeout: required(timeout, "timeout")?,
        interval,
        initial_jitter: duration_or(initial_jitter, Duration::ZERO, "initial_jitter")?,
        interval_jitter: duration_or(interval_jitter, Duration::ZERO, "interval_jitter")?,
        interval_jitter_percent: *interval_jitter_percent,
        unhealthy_threshold: threshold(unhealthy_threshold, "unhealthy_threshold")?,
        healthy_threshold: threshold(healthy_threshold, "healthy_threshold")?,
        reuse_connection: bool_or(reuse_connection, true),
        no_traffic_interval,
        no_traffic_healthy_interval: duration_or(
            no_traffic_healthy_interval,
            no_traffic_interval,
            "no_traffic_healthy_interval",
        )?,
        unhealthy_interval,
        unhealthy_edge_interval: duration_or(unhealthy_edge_interval, unhealthy_interval, "unhealthy_edge_interval")?,
        healthy_edge_interval: duration_or(healthy_edge_interval, interval, "healthy_edge_interval")?,
        always_log_health_check_failures: *always_log_health_check_failures,
        checker,
    })
}

/// Status ranges as Envoy's `HttpStatusChecker` validates them: `start < end`,
/// `start >= 100`, `end <= 600` (Envoy's messages).
fn status_ranges(list: &[types::Int64Range], kind: &str) -> ConfigResult<Vec<(u16, u16)>> {
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let types::Int64Range { start, end } = *r;
        let err = |m: String| ConfigError::invalid(format!("[{i}]"), m);
        if start >= end {
            return Err(err(format!(
                "Invalid http {kind} status range: expecting start < end, but found start={start} and end={end}"
            )));
        }
        if start < 100 {
            return Err(err(format!(
                "Invalid http {kind} status range: expecting start >= 100, but found start={start}"
            )));
        }
        if end > 600 {
            return Err(err(format!("Invalid http {kind} status range: expecting end <= 600, but found end={end}")));
        }
        // In range by the checks above.
        out.push((start as u16, end as u16));
    }
    Ok(out)
}

/// Header additions with plain values: a health check has no request to take `%VAR%`
/// values from, and Pinion does not render the upstream-host ones Envoy allows here.
fn plain_headers(list: &[core::HeaderValueOption]) -> ConfigResult<Vec<model::HeaderValueOption>> {
    let mut out = Vec::with_capacity(list.len());
    for (i, o) in list.iter().enumerate() {
        let h = header_value_option(o).map_err(at(format!("[{i}]")))?;
        if h.has_formatter {
            return Err(ConfigError::unsupported(
                format!("[{i}].header.value"),
                "formatter commands in health check headers are not supported by pinion",
            ));
        }
        out.push(h);
    }
    Ok(out)
}

fn http(h: &core::health_check::HttpHealthCheck) -> ConfigResult<model::HttpHealthCheck> {
    use core::RequestMethod as M;
    use types::CodecClientType as Codec;
    let core::health_check::HttpHealthCheck {
        host,
        path,
        send,
        receive,
        // Only bounds how much of the body `receive` looks at, and `receive` is refused.
        response_buffer_size: _,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = h;
    reject_set(send, "send")?;
    reject_set(receive, "receive")?;
    let codec = match enum_value::<Codec>(*codec_client_type, "codec_client_type")? {
        Codec::Http1 => model::HealthCheckCodec::Http1,
        Codec::Http2 => model::HealthCheckCodec::Http2,
        Codec::Http3 => {
            return Err(ConfigError::unsupported(
                "codec_client_type",
                "HTTP3 health checks are not supported by pinion",
            ))
        }
    };
    let method = match enum_value::<M>(*method, "method")? {
        M::MethodUnspecified | M::Get => http::Method::GET,
        M::Head => http::Method::HEAD,
        M::Post => http::Method::POST,
        M::Put => http::Method::PUT,
        M::Delete => http::Method::DELETE,
        M::Options => http::Method::OPTIONS,
        M::Trace => http::Method::TRACE,
        M::Patch => http::Method::PATCH,
        // PGV refuses CONNECT; kept for completeness.
        M::Connect => return Err(ConfigError::invalid("method", "CONNECT is not allowed")),
    };
    let mut expected = status_ranges(expected_statuses, "expected").map_err(at("expected_statuses"))?;
    if expected.is_empty() {
        expected.push((200, 201));
    }
    Ok(model::HttpHealthCheck {
        host: host.clone(),
        path: path.clone(),
        method,
        request_headers_to_add: plain_headers(request_headers_to_add).map_err(at("request_headers_to_add"))?,
        request_headers_to_remove: headers_to_remove(request_headers_to_remove)
            .map_err(at("request_headers_to_remove"))?,
        expected_statuses: expected,
        retriable_statuses: status_ranges(retriable_statuses, "retriable").map_err(at("retriable_statuses"))?,
        codec,
        service_name_matcher: match service_name_matcher {
            None => None,
            Some(m) => Some(string_matcher(m).map_err(at("service_name_matcher"))?),
        },
    })
}

/// Decode Envoy's hex payload text: pairs of hex digits, any case; anything else (odd
/// length, a non-hex character, nothing at all) is Envoy's "invalid hex string".
fn hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok())).collect()
}

/// `Payload` list -> segments, as Envoy's `PayloadMatcher::loadProtoBytes` (empty segments
/// dropped).
fn payloads(list: &[core::health_check::Payload]) -> ConfigResult<Vec<Vec<u8>>> {
    use core::health_check::payload::Payload as P;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let core::health_check::Payload { payload } = p;
        let bytes = match payload {
            Some(P::Text(t)) => hex(t)
                .ok_or_else(|| ConfigError::invalid(format!("[{i}].text"), format!("invalid hex string '{t}'")))?,
            Some(P::Binary(b)) => b.clone(),
            None => Vec::new(),
        };
        if !bytes.is_empty() {
            out.push(bytes);
        }
    }
    Ok(out)
}

fn tcp(t: &core::health_check::TcpHealthCheck) -> ConfigResult<model::TcpHealthCheck> {
    use core::health_check::payload::Payload as P;
    let core::health_check::TcpHealthCheck { send, receive, proxy_protocol_config } = t;
    reject_set(proxy_protocol_config, "proxy_protocol_config")?;
    // Envoy 1.40 loads `send` only when its `text` is non-empty: a `binary` send payload is
    // accepted and never written. Same here.
    let send = match send {
        Some(p @ core::health_check::Payload { payload: Some(P::Text(t)) }) if !t.is_empty() => {
            payloads(std::slice::from_ref(p)).map_err(at("send"))?.concat()
        }
        _ => Vec::new(),
    };
    Ok(model::TcpHealthCheck { send, receive: payloads(receive).map_err(at("receive"))? })
}

fn grpc(g: &core::health_check::GrpcHealthCheck) -> ConfigResult<model::GrpcHealthCheck> {
    let core::health_check::GrpcHealthCheck { service_name, authority, initial_metadata } = g;
    Ok(model::GrpcHealthCheck {
        service_name: (!service_name.is_empty()).then(|| service_name.clone()),
        authority: authority.clone(),
        initial_metadata: plain_headers(initial_metadata).map_err(at("initial_metadata"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_payloads_decode_as_envoy() {
        assert_eq!(hex("0a1B"), Some(vec![0x0a, 0x1b]));
        assert_eq!(hex("abc"), None);
        assert_eq!(hex("zz"), None);
        assert_eq!(hex(""), None);
    }
}
