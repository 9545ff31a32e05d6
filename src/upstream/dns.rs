//! STRICT_DNS / LOGICAL_DNS resolution on the control thread: resolve every endpoint's name,
//! swap the host set when the answer changes, re-resolve every `dns_refresh_rate`.

use std::net::SocketAddr;
use std::sync::Arc;

use pinion_xds::model::{DiscoveryType, DnsLookupFamily, EndpointAddress};

use super::Cluster;

/// Resolve one name with the cluster's lookup family.
async fn resolve(host: &str, port: u16, family: DnsLookupFamily) -> Vec<SocketAddr> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(it) => it.collect(),
        Err(e) => {
            tracing::debug!(host, error = %e, "dns resolution failed");
            return Vec::new();
        }
    };
    let v4: Vec<SocketAddr> = addrs.iter().filter(|a| a.is_ipv4()).copied().collect();
    let v6: Vec<SocketAddr> = addrs.iter().filter(|a| a.is_ipv6()).copied().collect();
    match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookupFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsLookupFamily::All => addrs,
    }
}

/// Resolve a DNS cluster once and install the hosts. STRICT_DNS keeps every address;
/// LOGICAL_DNS only the first, as Envoy does.
pub async fn refresh(cluster: &Arc<Cluster>) {
    let cfg = &cluster.config;
    let mut resolved = Vec::new();
    for loc in &cfg.load_assignment.localities {
        for ep in &loc.endpoints {
            match &ep.address {
                EndpointAddress::Socket(a) => resolved.push((loc, ep, *a)),
                // Unix sockets are not dialed by the HTTP data plane (see the model).
                EndpointAddress::Pipe(_) => {}
                EndpointAddress::Dns { host, port } => {
                    let mut addrs = resolve(host, *port, cfg.dns_lookup_family).await;
                    if cfg.discovery == DiscoveryType::LogicalDns {
                        addrs.truncate(1);
                    }
                    resolved.extend(addrs.into_iter().map(|a| (loc, ep, a)));
                }
            }
        }
    }
    let current: Vec<SocketAddr> = cluster.hosts().all().map(|h| h.address).collect();
    let new: Vec<SocketAddr> = resolved.iter().map(|r| r.2).collect();
    // The first answer is installed even when empty: it completes the cluster's first host
    // set (the initial health-check round waits for one).
    if current != new || !cluster.has_host_set() {
        cluster.update_hosts(resolved);
    }
}

/// Whether a cluster needs DNS resolution.
pub fn is_dns(cluster: &Cluster) -> bool {
    matches!(cluster.config.discovery, DiscoveryType::StrictDns | DiscoveryType::LogicalDns)
}

/// Keep a DNS cluster resolved until the cluster is dropped from config (weak reference).
pub fn spawn_refresher(cluster: &Arc<Cluster>) {
    let weak = Arc::downgrade(cluster);
    let rate = cluster.config.dns_refresh_rate.max(std::time::Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            // Dropped from config, or replaced by a cluster that took over its hosts.
            let Some(c) = weak.upgrade().filter(|c| !c.is_retired()) else { return };
            refresh(&c).await;
            drop(c);
            tokio::time::sleep(rate).await;
        }
    });
}
