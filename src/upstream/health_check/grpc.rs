//! The gRPC probe (`grpc_health_check`): the standard `grpc.health.v1.Health/Check` unary
//! call over the cluster's HTTP/2; a check passes only with gRPC status OK and a
//! `SERVING` answer. Any other answer is an active failure (immediate, as in Envoy); a reset
//! or a broken connection is a network failure.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pinion_xds::model::GrpcHealthCheck;

use super::probe::{apply_headers, Driver, Target, Verdict, USER_AGENT};

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// `ServingStatus`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// A session's HTTP/2 connection.
#[derive(Default)]
pub(super) struct GrpcProbe {
    conn: Option<(Sender, Driver)>,
}

/// Envoy's `Grpc::Common::toGrpcTimeout`: milliseconds, in a coarser unit when the number
/// would not fit gRPC's eight digits.
fn grpc_timeout(d: std::time::Duration) -> String {
    let ms = d.as_millis() as u64;
    let units = [(1u64, 'm'), (1000, 'S'), (60_000, 'M'), (3_600_000, 'H')];
    for (div, unit) in units {
        if ms / div < 100_000_000 {
            return format!("{}{unit}", ms / div);
        }
    }
    "99999999H".into()
}

/// The `grpc-status` of a header or trailer block, if any.
fn grpc_status(h: &hyper::HeaderMap) -> Option<u32> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

impl GrpcProbe {
    /// Drop the connection.
    pub(super) fn close(&mut self) {
        self.conn = None;
    }

    /// One check.
    pub(super) async fn check(&mut self, t: &Target<'_>, c: &GrpcHealthCheck) -> Verdict {
        let usable = match &mut self.conn {
            Some((s, _)) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.conn = None;
            let Ok(io) = t.connect(crate::tls::Alpn::Http2).await else { return Verdict::network() };
            let Ok((send, conn)) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await
            else {
                return Verdict::network();
            };
            let driver = Driver(tokio::spawn(async move {
                let _ = conn.await;
            }));
            self.conn = Some((send, driver));
        }
        let Some((sender, _)) = &mut self.conn else { return Verdict::network() };
        let authority = t.hostname(&c.authority);
        let scheme = if t.is_tls() { "https" } else { "http" };
        let Ok(uri) = format!("{scheme}://{authority}/grpc.health.v1.Health/Check").parse::<hyper::Uri>() else {
            return Verdict::network();
        };
        let msg =
            prost::Message::encode_to_vec(&HealthCheckRequest { service: c.service_name.clone().unwrap_or_default() });
        let mut frame = BytesMut::with_capacity(5 + msg.len());
        frame.put_u8(0);
        frame.put_u32(msg.len() as u32);
        frame.put_slice(&msg);
        let mut req = hyper::Request::new(Full::new(frame.freeze()));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/grpc"));
        h.insert(hyper::header::TE, hyper::header::HeaderValue::from_static("trailers"));
        h.insert(hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static(USER_AGENT));
        apply_headers(h, &c.initial_metadata, &[]);
        if let Ok(v) = hyper::header::HeaderValue::from_str(&grpc_timeout(t.cfg.timeout)) {
            h.insert("grpc-timeout", v);
        }
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                return Verdict::network();
            }
        };
        let (parts, mut body) = resp.into_parts();
        if parts.status != hyper::StatusCode::OK {
            return Verdict::active();
        }
        let is_grpc = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !is_grpc {
            return Verdict::active();
        }
        // Trailers-only answer (e.g. UNIMPLEMENTED for an unknown service).
        let mut status = grpc_status(&parts.headers);
        let mut data = BytesMut::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Err(_) => {
                    self.conn = None;
                    return Verdict::network();
                }
                Ok(f) => {
                    if let Some(t) = f.trailers_ref() {
                        status = grpc_status(t);
                    } else if let Ok(d) = f.into_data() {
                        data.extend_from_slice(&d);
                    }
                }
            }
            if data.len() > 1 << 16 {
                // A health answer is a few bytes: anything this large is not one.
                return Verdict::active();
            }
        }
        if status != Some(0) || !serving(data.freeze()) {
            return Verdict::active();
        }
        Verdict::passed()
    }
}

/// Whether the body is exactly one uncompressed message saying `SERVING`.
fn serving(mut body: Bytes) -> bool {
    if body.len() < 5 || body[0] != 0 {
        return false;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() != len {
        return false;
    }
    matches!(<HealthCheckResponse as prost::Message>::decode(body), Ok(r) if r.status == SERVING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(status: i32) -> Bytes {
        let msg = prost::Message::encode_to_vec(&HealthCheckResponse { status });
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(msg.len() as u32);
        b.put_slice(&msg);
        b.freeze()
    }

    #[test]
    fn only_serving_passes() {
        assert!(serving(framed(SERVING)));
        assert!(!serving(framed(2)));
        assert!(!serving(framed(0)));
        assert!(!serving(Bytes::new()));
        let mut compressed = framed(SERVING).to_vec();
        compressed[0] = 1;
        assert!(!serving(Bytes::from(compressed)));
    }

    #[test]
    fn timeouts_in_grpc_units() {
        use std::time::Duration;
        assert_eq!(grpc_timeout(Duration::from_secs(1)), "1000m");
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
