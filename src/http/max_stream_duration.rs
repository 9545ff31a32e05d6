//! The HCM's stream duration limit (Envoy's `max_stream_duration` timer): the HCM-wide
//! `common_http_protocol_options.max_stream_duration`, replaced by a route's
//! `max_stream_duration` (and, with `grpc_timeout_header_max`, by the request's
//! `grpc-timeout` header), counted from the start of the stream. When it fires the stream
//! ends: a local reply before the response started (504, or 408 while the request is still
//! arriving; gRPC `DEADLINE_EXCEEDED`), a reset after.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use pinion_xds::model::RouteMaxStreamDuration;

use super::body::ResponseBody;
use super::local_reply::reply_with_grpc_status;
use super::stream_info::StreamInfo;
use crate::listener::HcmStats;

/// `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Envoy's local reply body when the limit fires.
pub const BODY: &str = "downstream duration timeout";

/// Envoy's response code details when the limit fires.
pub const DETAILS: &str = "max_duration_timeout";

/// gRPC `DEADLINE_EXCEEDED`, the status of the local reply to a gRPC request.
const DEADLINE_EXCEEDED: u32 = 4;

/// The largest value `grpc-timeout` may carry (8 digits).
const MAX_GRPC_TIMEOUT_VALUE: u64 = 99_999_999;

/// The stream's limit once a forwarding route matched (Envoy's `refreshDurationTimeout`), as
/// a duration from the stream's start; `None` disables it. `hcm` is the HCM's limit, `route`
/// the route's `max_stream_duration` (its presence is Envoy's "new timeouts": the
/// `grpc-timeout` header of a gRPC request is then rewritten to the limit, or removed when
/// there is none and the HCM had one).
pub fn for_route(
    hcm: Option<Duration>,
    route: Option<&RouteMaxStreamDuration>,
    headers: &mut HeaderMap,
    grpc: bool,
) -> Option<Duration> {
    let header_max = route.and_then(|r| r.grpc_timeout_header_max);
    let from_header = match header_max {
        Some(max) => headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout).map(|t| (t, max)),
        None => None,
    };
    let limit = match from_header {
        Some((mut t, max)) => {
            if t > max && !max.is_zero() {
                t = max;
            }
            if let (false, Some(offset)) = (t.is_zero(), route.and_then(|r| r.grpc_timeout_header_offset)) {
                // An offset that eats the whole timeout leaves zero: the stream ends at once.
                t = t.saturating_sub(offset);
            }
            Some(t)
        }
        None => match route.and_then(|r| r.max_stream_duration) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => hcm,
        },
    };
    if route.is_some() && grpc {
        match limit {
            Some(t) => {
                headers.insert(GRPC_TIMEOUT, to_grpc_timeout(t));
            }
            // Envoy removes it only when a timer existed, i.e. the HCM had a limit.
            None if hcm.is_some() => {
                headers.remove(&GRPC_TIMEOUT);
            }
            None => {}
        }
    }
    limit
}

/// The deadline of a stream that started at `start`, for a limit.
pub fn deadline(start: Instant, limit: Option<Duration>) -> Option<Instant> {
    limit.map(|l| start + l)
}

/// Envoy's `Grpc::Common::getGrpcTimeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), in whole milliseconds (sub-millisecond units rounded up).
pub fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    let (unit, digits) = b.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let ms = match unit {
        b'H' => n * 3_600_000,
        b'M' => n * 60_000,
        b'S' => n * 1000,
        b'm' => n,
        b'u' => n.div_ceil(1000),
        b'n' => n.div_ceil(1_000_000),
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Envoy's `Grpc::Common::toGrpcTimeout`: milliseconds, or the smallest larger unit that
/// fits 8 digits (capped at `99999999H`).
pub fn to_grpc_timeout(t: Duration) -> HeaderValue {
    let mut time = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
    let units = [b'm', b'S', b'M', b'H'];
    let mut unit = 0;
    if time > MAX_GRPC_TIMEOUT_VALUE {
        time /= 1000;
        unit = 1;
    }
    while time > MAX_GRPC_TIMEOUT_VALUE {
        if unit == 3 {
            time = MAX_GRPC_TIMEOUT_VALUE;
            break;
        }
        time /= 60;
        unit += 1;
    }
    let mut s = time.to_string();
    s.push(char::from(units[unit]));
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0m"))
}

/// The local reply when the limit fires before the response started, with its counter:
/// 504 once the request is complete, else 408 (and the connection closes, as for Envoy's
/// other downstream timeouts); gRPC requests get `DEADLINE_EXCEEDED`.
pub fn timeout_reply(
    stats: &HcmStats,
    info: &mut StreamInfo,
    grpc: bool,
    request_complete: bool,
) -> http::Response<ResponseBody> {
    stats.downstream_rq_max_duration_reached.inc();
    let status = if request_complete { 504 } else { 408 };
    let mut resp = reply_with_grpc_status(status, BODY, grpc, Some(DEADLINE_EXCEEDED), info, DETAILS);
    if status == 408 {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn grpc_timeout_header_round_trip() {
        assert_eq!(parse_grpc_timeout(&hv("1500m")), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout(&hv("2S")), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(&hv("1M")), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout(&hv("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(&hv("1001u")), Some(Duration::from_millis(2)));
        assert_eq!(parse_grpc_timeout(&hv("1n")), Some(Duration::from_millis(1)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(&hv(bad)), None, "{bad:?}");
        }
        assert_eq!(to_grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(to_grpc_timeout(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(to_grpc_timeout(Duration::from_secs(100_000_000 * 60)), "1666666H");
    }

    fn route(max: Option<u64>, header_max: Option<u64>, offset: Option<u64>) -> RouteMaxStreamDuration {
        RouteMaxStreamDuration {
            max_stream_duration: max.map(Duration::from_millis),
            grpc_timeout_header_max: header_max.map(Duration::from_millis),
            grpc_timeout_header_offset: offset.map(Duration::from_millis),
        }
    }

    #[test]
    fn route_limits_as_envoy_refreshes_them() {
        let ms = Duration::from_millis;
        let hcm = Some(ms(1000));
        let mut h = HeaderMap::new();
        // No route limit: the HCM's; a route's replaces it; zero disables both.
        assert_eq!(for_route(hcm, None, &mut h, false), hcm);
        assert_eq!(for_route(hcm, Some(&route(None, None, None)), &mut h, false), hcm);
        assert_eq!(for_route(hcm, Some(&route(Some(200), None, None)), &mut h, false), Some(ms(200)));
        assert_eq!(for_route(hcm, Some(&route(Some(0), None, None)), &mut h, false), None);
        // grpc-timeout counts only with grpc_timeout_header_max: capped, minus the offset.
        h.insert(GRPC_TIMEOUT, hv("3S"));
        assert_eq!(for_route(hcm, Some(&route(Some(200), None, None)), &mut h, false), Some(ms(200)));
        assert_eq!(for_route(hcm, Some(&route(None, Some(0), None)), &mut h, false), Some(ms(3000)));
        assert_eq!(for_route(hcm, Some(&route(None, Some(500), None)), &mut h, false), Some(ms(500)));
        assert_eq!(for_route(hcm, Some(&route(None, Some(5000), Some(100))), &mut h, false), Some(ms(2900)));
        assert_eq!(for_route(hcm, Some(&route(None, Some(0), Some(5000))), &mut h, false), Some(ms(0)));
        // Not rewritten for non-gRPC requests; rewritten to the limit for gRPC ones.
        assert_eq!(h.get(&GRPC_TIMEOUT).unwrap(), "3S");
        assert_eq!(for_route(hcm, Some(&route(None, Some(500), None)), &mut h, true), Some(ms(500)));
        assert_eq!(h.get(&GRPC_TIMEOUT).unwrap(), "500m");
        // A gRPC request on a route that disables the limit loses its header (HCM limit set).
        assert_eq!(for_route(hcm, Some(&route(Some(0), None, None)), &mut h, true), None);
        assert!(h.get(&GRPC_TIMEOUT).is_none());
        // Without a route limit message the header is left alone.
        h.insert(GRPC_TIMEOUT, hv("3S"));
        assert_eq!(for_route(hcm, None, &mut h, true), hcm);
        assert_eq!(h.get(&GRPC_TIMEOUT).unwrap(), "3S");
    }
}
