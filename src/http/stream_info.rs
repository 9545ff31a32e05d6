//! Per-request state shared by the phases (Envoy's `StreamInfo`): timings, addresses, the
//! response code and flags, and what the access log needs.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

/// Envoy response flags (`%RESPONSE_FLAGS%`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(pub u32);

impl ResponseFlags {
    /// `NR`: no route.
    pub const NO_ROUTE: u32 = 1 << 0;
    /// `NC`: no cluster.
    pub const NO_CLUSTER: u32 = 1 << 1;
    /// `UH`: no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: u32 = 1 << 2;
    /// `UF`: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u32 = 1 << 3;
    /// `UT`: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u32 = 1 << 4;
    /// `UC`: upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u32 = 1 << 5;
    /// `DC`: downstream connection termination.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u32 = 1 << 6;
    /// `UR`: upstream remote reset.
    pub const UPSTREAM_REMOTE_RESET: u32 = 1 << 7;
    /// `DPE`: downstream protocol error.
    pub const DOWNSTREAM_PROTOCOL_ERROR: u32 = 1 << 8;
    /// `UPE`: upstream protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: u32 = 1 << 9;
    /// `UO`: upstream overflow (circuit breaker).
    pub const UPSTREAM_OVERFLOW: u32 = 1 << 10;

    /// Set a flag.
    pub fn set(&mut self, f: u32) {
        self.0 |= f;
    }

    /// Envoy's short string: `-` when none, else codes joined by `,`.
    pub fn to_short_string(self) -> String {
        const NAMES: [(u32, &str); 11] = [
            (ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, "UH"),
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, "UT"),
            (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, "UF"),
            (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, "UC"),
            (ResponseFlags::UPSTREAM_REMOTE_RESET, "UR"),
            (ResponseFlags::UPSTREAM_OVERFLOW, "UO"),
            (ResponseFlags::NO_ROUTE, "NR"),
            (ResponseFlags::NO_CLUSTER, "NC"),
            (ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "UPE"),
        ];
        if self.0 == 0 {
            return "-".into();
        }
        NAMES.iter().filter(|(b, _)| self.0 & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
    }
}

/// Per-request state.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Wall-clock start (for `%START_TIME%`).
    pub start_time: SystemTime,
    /// Monotonic start (for `%DURATION%`).
    pub start: Instant,
    /// Downstream peer.
    pub downstream_remote: SocketAddr,
    /// Local address the connection was accepted on.
    pub downstream_local: SocketAddr,
    /// `HTTP/1.1`, `HTTP/2`, `HTTP/1.0`.
    pub protocol: &'static str,
    /// Response code (0 until known).
    pub response_code: u16,
    /// Response flags.
    pub flags: ResponseFlags,
    /// Chosen upstream host.
    pub upstream_host: Option<SocketAddr>,
    /// Chosen cluster.
    pub upstream_cluster: Option<std::sync::Arc<str>>,
    /// Request body bytes received (as far as known).
    pub bytes_received: u64,
    /// Time to upstream response headers.
    pub upstream_service_time: Option<std::time::Duration>,
    /// Route name.
    pub route_name: Option<std::sync::Arc<str>>,
    /// Header values captured at request time for the access log (`%REQ(..)%`), in the
    /// order the formatter asked for them.
    pub captured_request_headers: Vec<Option<String>>,
    /// Response details (`%RESPONSE_CODE_DETAILS%`).
    pub response_code_details: &'static str,
}

impl StreamInfo {
    /// A fresh stream.
    pub fn new(downstream_remote: SocketAddr, downstream_local: SocketAddr, protocol: &'static str) -> Self {
        StreamInfo {
            start_time: SystemTime::now(),
            start: Instant::now(),
            downstream_remote,
            downstream_local,
            protocol,
            response_code: 0,
            flags: ResponseFlags::default(),
            upstream_host: None,
            upstream_cluster: None,
            bytes_received: 0,
            upstream_service_time: None,
            route_name: None,
            captured_request_headers: Vec::new(),
            response_code_details: "via_upstream",
        }
    }
}
