//! Per-request state shared by the phases (Envoy's `StreamInfo`): timings, addresses, the
//! response code and flags, and what the access log needs.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

bitflags::bitflags! {
    /// Envoy response flags (`%RESPONSE_FLAGS%`).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct ResponseFlags: u32 {
        /// `NR`: no route.
        const NO_ROUTE = 1 << 0;
        /// `NC`: no cluster.
        const NO_CLUSTER = 1 << 1;
        /// `UH`: no healthy upstream.
        const NO_HEALTHY_UPSTREAM = 1 << 2;
        /// `UF`: upstream connection failure.
        const UPSTREAM_CONNECTION_FAILURE = 1 << 3;
        /// `UT`: upstream request timeout.
        const UPSTREAM_REQUEST_TIMEOUT = 1 << 4;
        /// `UC`: upstream connection termination.
        const UPSTREAM_CONNECTION_TERMINATION = 1 << 5;
        /// `DC`: downstream connection termination.
        const DOWNSTREAM_CONNECTION_TERMINATION = 1 << 6;
        /// `UR`: upstream remote reset.
        const UPSTREAM_REMOTE_RESET = 1 << 7;
        /// `DPE`: downstream protocol error.
        const DOWNSTREAM_PROTOCOL_ERROR = 1 << 8;
        /// `UPE`: upstream protocol error.
        const UPSTREAM_PROTOCOL_ERROR = 1 << 9;
        /// `UO`: upstream overflow (circuit breaker).
        const UPSTREAM_OVERFLOW = 1 << 10;
        /// `DI`: the fault filter delayed the request.
        const DELAY_INJECTED = 1 << 11;
        /// `FI`: the fault filter aborted the request.
        const FAULT_INJECTED = 1 << 12;
        /// `RL`: rate limited (local rate limit filter).
        const RATE_LIMITED = 1 << 13;
        /// `URX`: the response was retriable but the retries were used up.
        const UPSTREAM_RETRY_LIMIT_EXCEEDED = 1 << 14;
        /// `UMSDR`: the cluster's `max_stream_duration` ended the upstream stream.
        const UPSTREAM_MAX_STREAM_DURATION_REACHED = 1 << 15;
    }
}

impl ResponseFlags {
    /// Envoy's short string: `-` when none, else codes joined by `,`.
    pub fn to_short_string(self) -> String {
        // URX before UT, UF and UC, as Envoy 1.40 prints them (`URX,UT`).
        const NAMES: [(ResponseFlags, &str); 16] = [
            (ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
            (ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, "UH"),
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, "UT"),
            (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, "UF"),
            (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, "UC"),
            (ResponseFlags::UPSTREAM_REMOTE_RESET, "UR"),
            (ResponseFlags::UPSTREAM_OVERFLOW, "UO"),
            (ResponseFlags::NO_ROUTE, "NR"),
            (ResponseFlags::NO_CLUSTER, "NC"),
            (ResponseFlags::DELAY_INJECTED, "DI"),
            (ResponseFlags::FAULT_INJECTED, "FI"),
            (ResponseFlags::RATE_LIMITED, "RL"),
            (ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
            (ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED, "UMSDR"),
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "UPE"),
        ];
        if self.is_empty() {
            return "-".into();
        }
        NAMES.iter().filter(|(b, _)| self.contains(*b)).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
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
    /// The client address the connection manager settled on from `x-forwarded-for`
    /// (Envoy's stream remote address); `None`: the peer's.
    pub downstream_client_ip: Option<std::net::IpAddr>,
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
    /// Upstream attempts made (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`; 0: none was routed upstream).
    pub attempt_count: u32,
    /// When the HCM's stream duration limit (`max_stream_duration`) ends the stream, as the
    /// route phase set it (`None`: no limit).
    pub stream_deadline: Option<Instant>,
}

impl StreamInfo {
    /// A fresh stream.
    pub fn new(downstream_remote: SocketAddr, downstream_local: SocketAddr, protocol: &'static str) -> Self {
        StreamInfo {
            start_time: SystemTime::now(),
            start: Instant::now(),
            downstream_remote,
            downstream_local,
            downstream_client_ip: None,
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
            attempt_count: 0,
            stream_deadline: None,
        }
    }
}
