//! `envoy.extensions.filters.http.fault.v3.HTTPFault` (filter-level and per-route alike).

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;

use crate::error::{ConfigError, ConfigResult};
use crate::model;
use crate::translate::matcher::header_matcher;
use crate::translate::route::fractional_percent;
use crate::translate::{at, duration, reject_set};

/// Envoy's abort body when `response_body` is unset.
const DEFAULT_ABORT_BODY: &str = "fault filter abort";

/// Translate an `HTTPFault`; errors relative to it.
pub(super) fn fault(f: &fault::HttpFault) -> ConfigResult<model::FaultConfig> {
    let fault::HttpFault {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        response_rate_limit,
        delay_percent_runtime,
        abort_percent_runtime,
        delay_duration_runtime,
        abort_http_status_runtime,
        max_active_faults_runtime,
        response_rate_limit_percent_runtime,
        abort_grpc_status_runtime,
        disable_downstream_cluster_stats,
        filter_metadata,
    } = f;
    reject_set(response_rate_limit, "response_rate_limit")?;
    reject_set(filter_metadata, "filter_metadata")?;
    let mut hs = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        hs.push(header_matcher(h).map_err(at(format!("headers[{i}]")))?);
    }
    let key = |v: &String, default: &str| if v.is_empty() { default.to_string() } else { v.clone() };
    Ok(model::FaultConfig {
        delay: delay.as_ref().map(fault_delay).transpose().map_err(at("delay"))?,
        abort: abort.as_ref().map(fault_abort).transpose().map_err(at("abort"))?,
        upstream_cluster: if upstream_cluster.is_empty() { None } else { Some(upstream_cluster.clone()) },
        headers: hs,
        downstream_nodes: downstream_nodes.clone(),
        max_active_faults: max_active_faults.as_ref().map(|v| v.value),
        runtime: model::FaultRuntimeKeys {
            delay_percent: key(delay_percent_runtime, "fault.http.delay.fixed_delay_percent"),
            abort_percent: key(abort_percent_runtime, "fault.http.abort.abort_percent"),
            delay_duration: key(delay_duration_runtime, "fault.http.delay.fixed_duration_ms"),
            abort_http_status: key(abort_http_status_runtime, "fault.http.abort.http_status"),
            abort_grpc_status: key(abort_grpc_status_runtime, "fault.http.abort.grpc_status"),
            max_active_faults: key(max_active_faults_runtime, "fault.http.max_active_faults"),
            response_rate_limit_percent: key(
                response_rate_limit_percent_runtime,
                "fault.http.rate_limit.response_percent",
            ),
        },
        disable_downstream_cluster_stats: *disable_downstream_cluster_stats,
    })
}

/// An unset `percentage` is Envoy's default `FractionalPercent`: 0 out of 100.
fn percentage(
    p: &Option<envoy_types::pb::envoy::r#type::v3::FractionalPercent>,
) -> ConfigResult<model::FractionalPercent> {
    match p {
        None => Ok(model::FractionalPercent { numerator: 0, denominator: 100 }),
        Some(p) => fractional_percent(p).map_err(at("percentage")),
    }
}

fn fault_delay(d: &common::FaultDelay) -> ConfigResult<model::FaultDelay> {
    use common::fault_delay::FaultDelaySecifier as S;
    let common::FaultDelay { percentage: pct, fault_delay_secifier } = d;
    let kind = match fault_delay_secifier {
        None => return Err(ConfigError::invalid("", "one of fixed_delay or header_delay must be set")),
        Some(S::FixedDelay(d)) => {
            let d = duration(d).map_err(at("fixed_delay"))?;
            if d.is_zero() {
                return Err(ConfigError::invalid("fixed_delay", "value must be greater than 0s"));
            }
            // Envoy reads the delay in whole milliseconds.
            model::FaultDelayKind::Fixed(Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        }
        Some(S::HeaderDelay(common::fault_delay::HeaderDelay {})) => model::FaultDelayKind::Header,
    };
    Ok(model::FaultDelay { kind, percentage: percentage(pct)? })
}

fn fault_abort(a: &fault::FaultAbort) -> ConfigResult<model::FaultAbort> {
    use fault::fault_abort::ErrorType as E;
    let fault::FaultAbort { percentage: pct, response_body, error_type } = a;
    let kind = match error_type {
        None => return Err(ConfigError::invalid("", "one of http_status, grpc_status or header_abort must be set")),
        Some(E::HttpStatus(s)) => model::FaultAbortKind::Http(
            u16::try_from(*s)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| ConfigError::invalid("http_status", "value must be inside range [200, 600)"))?,
        ),
        Some(E::GrpcStatus(s)) => model::FaultAbortKind::Grpc(*s),
        Some(E::HeaderAbort(fault::fault_abort::HeaderAbort {})) => model::FaultAbortKind::Header,
    };
    Ok(model::FaultAbort {
        kind,
        percentage: percentage(pct)?,
        response_body: if response_body.is_empty() { DEFAULT_ABORT_BODY.to_string() } else { response_body.clone() },
    })
}
