//! What the chain and its filters say to each other (Envoy's filter callbacks and
//! `FilterHeadersStatus`): a leaf module, so filters never import the chain.

use http::Response;

use super::route_config::{FilterOverride, RouteFilterConfigs};
use crate::http::body::ResponseBody;
use crate::http::route_table::{Matched, RouteTable};
use crate::http::stream_info::StreamInfo;

/// What a request hook tells the chain.
pub enum FilterStatus {
    /// Go on with the next filter.
    Continue,
    /// Go on, but match the route again first (headers or route tables changed).
    ClearRouteCache,
    /// Stop here with a local reply (Envoy's `sendLocalReply`): the matched route's response
    /// header mutations apply to it, then the response hooks.
    LocalReply(Response<ResponseBody>),
    /// Stop here with a response the filter built itself (Envoy's `encodeHeaders` from a
    /// decoder filter, e.g. a CORS preflight): only the response hooks apply.
    StopIteration(Response<ResponseBody>),
}

/// What a request hook sees besides the request head.
pub struct DecodeCx<'a, 'r> {
    /// The request's stream info (flags, details, addresses).
    pub info: &'a mut StreamInfo,
    /// Whether the request is gRPC (local replies become trailers-only gRPC responses).
    pub grpc: bool,
    /// The route table the request was matched against, if one is loaded.
    pub table: Option<&'a RouteTable>,
    /// The matched route, if any.
    pub route: Option<&'a Matched<'r>>,
    /// The cluster the route chose, if it forwards.
    pub cluster: Option<&'a str>,
    /// This filter's most specific per-route override, if any.
    pub per_route: Option<&'a FilterOverride>,
    /// Every level's overrides (for filters that merge levels), and the weighted cluster.
    pub route_configs: Option<(&'a RouteFilterConfigs, Option<usize>)>,
}

/// What a response hook sees besides the response.
pub struct EncodeCx<'a> {
    /// The request's stream info.
    pub info: &'a StreamInfo,
    /// Whether the request was gRPC.
    pub grpc: bool,
    /// This filter's most specific per-route override, if any.
    pub per_route: Option<&'a FilterOverride>,
    /// Every level's overrides (for filters that merge levels), and the weighted cluster.
    pub route_configs: Option<(&'a RouteFilterConfigs, Option<usize>)>,
}
