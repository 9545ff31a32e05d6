//! The HTTP probe (`http_health_check`): one request per check on a connection kept between
//! checks (HTTP/1.1, or HTTP/2 with `codec_client_type: HTTP2`), judged by status code and
//! Envoy's `x-envoy-*` response headers.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pinion_xds::model::{HealthCheckCodec, HttpHealthCheck};

use super::probe::{apply_headers, in_ranges, Driver, Target, Verdict, USER_AGENT};
use crate::upstream::health_checker::{CheckResult, Failure};

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// A session's HTTP connection.
#[derive(Default)]
pub(super) struct HttpProbe {
    conn: Option<(Sender, Driver)>,
}

async fn connect(t: &Target<'_>, codec: HealthCheckCodec) -> Option<(Sender, Driver)> {
    use crate::tls::Alpn;
    let alpn = match codec {
        HealthCheckCodec::Http1 => Alpn::Http1,
        HealthCheckCodec::Http2 => Alpn::Http2,
    };
    let io = TokioIo::new(t.connect(alpn).await.ok()?);
    match codec {
        HealthCheckCodec::Http1 => {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            let driver = Driver(tokio::spawn(async move {
                let _ = conn.await;
            }));
            Some((Sender::H1(send), driver))
        }
        HealthCheckCodec::Http2 => {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.ok()?;
            let driver = Driver(tokio::spawn(async move {
                let _ = conn.await;
            }));
            Some((Sender::H2(send), driver))
        }
    }
}

impl HttpProbe {
    /// Drop the connection.
    pub(super) fn close(&mut self) {
        self.conn = None;
    }

    /// One check.
    pub(super) async fn check(&mut self, t: &Target<'_>, c: &HttpHealthCheck) -> Verdict {
        // A connection the host closed since the last check is replaced, as Envoy does when
        // it sees the close between checks.
        let usable = match &mut self.conn {
            Some((Sender::H1(s), _)) => s.ready().await.is_ok(),
            Some((Sender::H2(s), _)) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.conn = match connect(t, c.codec).await {
                Some(conn) => Some(conn),
                None => return Verdict::network(),
            };
        }
        let host = t.hostname(&c.host);
        let scheme = if t.is_tls() { "https" } else { "http" };
        let Some((sender, _)) = &mut self.conn else { return Verdict::network() };
        let mut req = hyper::Request::new(Empty::<Bytes>::new());
        *req.method_mut() = c.method.clone();
        let uri = match sender {
            // HTTP/1.1: origin-form path and a Host header.
            Sender::H1(_) => c.path.parse::<hyper::Uri>(),
            // HTTP/2: `:scheme` and `:authority` come from the URI.
            Sender::H2(_) => format!("{scheme}://{host}{}", c.path).parse::<hyper::Uri>(),
        };
        let Ok(uri) = uri else { return Verdict::network() };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        if let Sender::H1(_) = sender {
            match hyper::header::HeaderValue::from_str(&host) {
                Ok(v) => {
                    headers.insert(hyper::header::HOST, v);
                }
                Err(_) => return Verdict::network(),
            }
        }
        headers.insert(hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static(USER_AGENT));
        apply_headers(headers, &c.request_headers_to_add, &c.request_headers_to_remove);
        let sent = match sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                return Verdict::network();
            }
        };
        let (parts, mut body) = resp.into_parts();
        // Read the body to its end (discarding it) so the connection can carry the next check.
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                self.conn = None;
                return Verdict::network();
            }
        }
        let close = parts.version < hyper::Version::HTTP_11
            || parts
                .headers
                .get(hyper::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        if close && matches!(sender, Sender::H1(_)) {
            self.conn = None;
        }
        judge(c, parts.status.as_u16(), &parts.headers)
    }
}

/// Envoy's `healthCheckResult()` for a complete response.
fn judge(c: &HttpHealthCheck, status: u16, headers: &hyper::HeaderMap) -> Verdict {
    if !in_ranges(status, &c.expected_statuses) {
        // Only with a failing status does the immediate-fail header exclude the host.
        let exclude = headers.contains_key("x-envoy-immediate-health-check-fail");
        let retriable = in_ranges(status, &c.retriable_statuses);
        return Verdict::of(CheckResult::Failure { kind: Failure::Active, retriable, exclude });
    }
    let degraded = headers.contains_key("x-envoy-degraded");
    if let Some(m) = &c.service_name_matcher {
        let cluster =
            headers.get("x-envoy-upstream-healthchecked-cluster").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let result = if m.matches(cluster) {
            CheckResult::Success { degraded }
        } else {
            CheckResult::Failure { kind: Failure::Active, retriable: false, exclude: false }
        };
        return Verdict { result, verified_cluster: true };
    }
    Verdict::of(CheckResult::Success { degraded })
}

#[cfg(test)]
mod tests {
    use pinion_xds::model::StringMatcher;

    use super::*;

    fn cfg() -> HttpHealthCheck {
        HttpHealthCheck {
            host: String::new(),
            path: "/healthz".into(),
            method: http::Method::GET,
            request_headers_to_add: Vec::new(),
            request_headers_to_remove: Vec::new(),
            expected_statuses: vec![(200, 201)],
            retriable_statuses: vec![(503, 504)],
            codec: HealthCheckCodec::Http1,
            service_name_matcher: None,
        }
    }

    fn headers(list: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        list.iter().map(|(k, v)| (hyper::header::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn responses_are_judged_as_envoy() {
        let fail = |retriable, exclude| CheckResult::Failure { kind: Failure::Active, retriable, exclude };
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], CheckResult);
        let cases: &[Case] = &[
            (200, &[], CheckResult::Success { degraded: false }),
            (200, &[("x-envoy-degraded", "")], CheckResult::Success { degraded: true }),
            // The immediate-fail header only matters on a failing status.
            (200, &[("x-envoy-immediate-health-check-fail", "")], CheckResult::Success { degraded: false }),
            (500, &[], fail(false, false)),
            (503, &[], fail(true, false)),
            (503, &[("x-envoy-immediate-health-check-fail", "true")], fail(true, true)),
            (204, &[("x-envoy-immediate-health-check-fail", "true")], fail(false, true)),
        ];
        for (status, h, want) in cases {
            let v = judge(&cfg(), *status, &headers(h));
            assert_eq!((v.result, v.verified_cluster), (*want, false), "{status} {h:?}");
        }
    }

    #[test]
    fn service_name_matcher_checks_the_healthchecked_cluster_header() {
        let mut c = cfg();
        c.service_name_matcher = Some(StringMatcher::Prefix { value: "svc".into(), ignore_case: false });
        let ok = judge(&c, 200, &headers(&[("x-envoy-upstream-healthchecked-cluster", "svc-a")]));
        assert_eq!((ok.result, ok.verified_cluster), (CheckResult::Success { degraded: false }, true));
        let missing = judge(&c, 200, &headers(&[]));
        assert!(matches!(missing.result, CheckResult::Failure { kind: Failure::Active, .. }));
        assert!(missing.verified_cluster);
        // A failing status is judged before the service name (no verify_cluster).
        assert!(!judge(&c, 500, &headers(&[])).verified_cluster);
    }
}
