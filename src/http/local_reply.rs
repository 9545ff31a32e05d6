//! Local replies (Envoy's `sendLocalReply`): status, a short `text/plain` body, and the
//! response-code details Envoy reports.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use super::stream_info::StreamInfo;

/// Envoy's body for "no healthy upstream" (UH).
pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
/// Envoy's body for a route timeout (UT).
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";

/// Build a local reply. Envoy sends `content-type: text/plain` only with a non-empty body.
pub fn local_reply(status: u16, body: &str) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp =
        Response::new(if body.is_empty() { ResponseBody::empty() } else { ResponseBody::full(body.to_owned()) });
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    // An empty body gets no content-length from us: hyper adds `0` on HTTP/1.1 and leaves it
    // out on HTTP/2, which is exactly what Envoy sends.
    if !body.is_empty() {
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    resp
}

/// Envoy's body for an upstream connect failure or reset before headers (`retried`: the
/// request was retried before, and this is the latest attempt's reason).
pub fn upstream_reset_body(reason: &str, retried: bool) -> String {
    let retried = if retried { "retried and the latest " } else { "" };
    format!("upstream connect error or disconnect/reset before headers. {retried}reset reason: {reason}")
}

/// A local reply, converted to a gRPC trailers-only response for gRPC requests (as Envoy
/// does), with the response code details recorded for the access log.
pub fn reply(
    status: u16,
    body: &str,
    grpc: bool,
    info: &mut StreamInfo,
    details: &'static str,
) -> Response<ResponseBody> {
    reply_with_grpc_status(status, body, grpc, None, info, details)
}

/// A local reply with an explicit gRPC status for gRPC requests (Envoy's `sendLocalReply`
/// with `grpc_status`); without one, the status is mapped from the HTTP status.
pub fn reply_with_grpc_status(
    status: u16,
    body: &str,
    grpc: bool,
    grpc_status: Option<u32>,
    info: &mut StreamInfo,
    details: &'static str,
) -> Response<ResponseBody> {
    info.response_code_details = details;
    if !grpc {
        return local_reply(status, body);
    }
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let code = grpc_status.unwrap_or_else(|| u32::from(grpc_status_for(status)));
    h.insert("grpc-status", HeaderValue::from(code));
    if !body.is_empty() {
        if let Ok(v) = HeaderValue::from_str(body) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus` for local replies to gRPC requests.
pub fn grpc_status_for(http_status: u16) -> u16 {
    match http_status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}
