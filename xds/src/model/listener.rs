//! `envoy.config.listener.v3.Listener` and filter chains.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{DownstreamTlsContext, HttpConnectionManager, TcpProxy};

/// A listener: one address, filter chains chosen per connection.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Unique listener name (stats: `listener.<address>.` use the address; `stat_prefix` overrides).
    pub name: String,
    /// Bound address (TCP).
    pub address: SocketAddr,
    /// `stat_prefix` for listener stats; empty means Envoy's default (the address).
    pub stat_prefix: String,
    /// Filter chains, matched by `filter_chain_match`.
    pub filter_chains: Vec<Arc<FilterChain>>,
    /// Used when no chain matches; connection closed if none.
    pub default_filter_chain: Option<Arc<FilterChain>>,
    /// Listener filters, in order.
    pub listener_filters: Vec<ListenerFilter>,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub per_connection_buffer_limit_bytes: u32,
    /// `enable_reuse_port` (default true on Linux): one socket per worker.
    pub reuse_port: bool,
    /// `connection_balance_config` absent = kernel balances via SO_REUSEPORT.
    pub tcp_backlog_size: Option<u32>,
    /// `listener_filters_timeout` (default 15s; `None`: unbounded): how long the listener
    /// filters may wait for a connection's first bytes.
    pub listener_filters_timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: on that timeout, pick a chain with what is
    /// known instead of closing the connection.
    pub continue_on_listener_filters_timeout: bool,
}

/// Listener filters Pinion implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerFilter {
    /// `envoy.filters.listener.tls_inspector`.
    TlsInspector,
    /// `envoy.filters.listener.http_inspector`.
    HttpInspector,
    /// `envoy.filters.listener.original_dst`.
    OriginalDst,
}

/// `envoy.config.listener.v3.FilterChainMatch` (the parts Pinion implements).
#[derive(Debug, Clone, Default)]
pub struct FilterChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` on the destination address.
    pub prefix_ranges: Vec<CidrRange>,
    /// `source_prefix_ranges`.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
    /// `server_names` (SNI), exact or `*.suffix`.
    pub server_names: Vec<String>,
    /// `transport_protocol` (`raw_buffer`, `tls`), empty = any.
    pub transport_protocol: String,
    /// `application_protocols` (ALPN), empty = any.
    pub application_protocols: Vec<String>,
}

impl FilterChainMatch {
    /// Whether the chain matches every connection (no criterion set).
    pub fn is_empty(&self) -> bool {
        let FilterChainMatch {
            destination_port,
            prefix_ranges,
            source_prefix_ranges,
            source_ports,
            server_names,
            transport_protocol,
            application_protocols,
        } = self;
        destination_port.is_none()
            && prefix_ranges.is_empty()
            && source_prefix_ranges.is_empty()
            && source_ports.is_empty()
            && server_names.is_empty()
            && transport_protocol.is_empty()
            && application_protocols.is_empty()
    }
}

/// `envoy.config.core.v3.CidrRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    /// Network address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

impl CidrRange {
    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let len = u32::from(self.prefix_len.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let len = u32::from(self.prefix_len.min(128));
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A filter chain: match criteria and the terminal network filter.
#[derive(Debug, Clone)]
pub struct FilterChain {
    /// Chain name (may be empty).
    pub name: String,
    /// Match criteria.
    pub filter_chain_match: FilterChainMatch,
    /// The terminal network filter (Pinion supports exactly one per chain).
    pub filter: NetworkFilter,
    /// Downstream TLS (`transport_socket` `envoy.transport_sockets.tls`); `None` = plaintext.
    pub transport_socket: Option<Arc<DownstreamTlsContext>>,
    /// `transport_socket_connect_timeout`: bound on the TLS handshake (`None`: unbounded, as in Envoy).
    pub transport_socket_connect_timeout: Option<Duration>,
}

/// Terminal network filters.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    /// `envoy.filters.network.http_connection_manager`.
    HttpConnectionManager(Arc<HttpConnectionManager>),
    /// `envoy.filters.network.tcp_proxy`.
    TcpProxy(Arc<TcpProxy>),
}

/// Envoy's default listener drain time when none is given.
pub const DEFAULT_DRAIN_TIME: Duration = Duration::from_secs(600);
