//! What the HTTP, TCP and gRPC probes share: the host they check, their verdict, and small
//! helpers. A leaf of `upstream::health_check`, so the probes do not depend on the checker.

use std::net::SocketAddr;

use pinion_xds::model;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::upstream::cluster::Cluster;
use crate::upstream::health_checker::{CheckResult, Failure};
use crate::upstream::host::Host;

/// Envoy's `User-Agent` of HTTP and gRPC health checks.
pub(super) const USER_AGENT: &str = "Envoy/HC";

/// What a probe needs to reach one host.
pub(super) struct Target<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) host: &'a Host,
    pub(super) cfg: &'a model::HealthCheck,
}

impl Target<'_> {
    /// Host header / `:authority`: the endpoint's `health_check_config.hostname`, else the
    /// checker's configured host, else the cluster name (Envoy's order).
    pub(super) fn hostname(&self, configured: &str) -> String {
        let hc = self.host.health_check_config();
        if !hc.hostname.is_empty() {
            hc.hostname
        } else if !configured.is_empty() {
            configured.to_string()
        } else {
            self.cluster.config.name.clone()
        }
    }

    /// Whether connections use the cluster's TLS.
    pub(super) fn is_tls(&self) -> bool {
        self.cluster.tls.is_some()
    }

    /// Connect to the host's health-check address with the cluster's transport socket.
    pub(super) async fn connect(&self, alpn: crate::tls::Alpn) -> std::io::Result<crate::tls::Io> {
        let addr: SocketAddr = self.host.health_check_address();
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        match &self.cluster.tls {
            None => Ok(crate::tls::Io::Plain(tcp)),
            Some(tls) => tls.connect(tcp, alpn, self.cfg.timeout).await,
        }
    }
}

/// A probe's answer: the result, plus whether a service-name check ran
/// (`health_check.verify_cluster`).
pub(super) struct Verdict {
    pub(super) result: CheckResult,
    pub(super) verified_cluster: bool,
}

impl Verdict {
    pub(super) fn of(result: CheckResult) -> Self {
        Verdict { result, verified_cluster: false }
    }

    pub(super) fn network() -> Self {
        Verdict::of(CheckResult::Failure { kind: Failure::Network, retriable: false, exclude: false })
    }

    pub(super) fn active() -> Self {
        Verdict::of(CheckResult::Failure { kind: Failure::Active, retriable: false, exclude: false })
    }

    pub(super) fn passed() -> Self {
        Verdict::of(CheckResult::Success { degraded: false })
    }
}

/// Whether `status` is in one of the half-open `ranges`.
pub(super) fn in_ranges(status: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(start, end)| status >= start && status < end)
}

/// Apply plain-valued header additions and removals (removals first, as Envoy).
pub(super) fn apply_headers(headers: &mut ::http::HeaderMap, add: &[model::HeaderValueOption], remove: &[String]) {
    use ::http::HeaderValue;
    use model::AppendAction as A;
    for name in remove {
        headers.remove(name.as_str());
    }
    for opt in add {
        if opt.value.is_empty() && !opt.keep_empty_value {
            continue;
        }
        let Ok(v) = HeaderValue::from_str(&opt.value) else { continue };
        match opt.append_action {
            A::AppendIfExistsOrAdd => {
                headers.append(opt.name.clone(), v);
            }
            A::AddIfAbsent => {
                if !headers.contains_key(&opt.name) {
                    headers.insert(opt.name.clone(), v);
                }
            }
            A::OverwriteIfExistsOrAdd => {
                headers.insert(opt.name.clone(), v);
            }
            A::OverwriteIfExists => {
                if headers.contains_key(&opt.name) {
                    headers.insert(opt.name.clone(), v);
                }
            }
        }
    }
}

/// A spawned connection driver, stopped when dropped.
pub(super) struct Driver(pub(super) JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_are_half_open() {
        let r = [(200, 201), (500, 504)];
        assert!(in_ranges(200, &r));
        assert!(!in_ranges(201, &r));
        assert!(in_ranges(503, &r));
        assert!(!in_ranges(504, &r));
    }
}
