//! The HTTP connection manager, the router and their helpers.

pub mod body;
pub mod connection_manager;
pub mod h1_framing;
pub mod header_mutation;
pub mod local_reply;
pub mod path;
pub mod request_headers;
pub mod route_table;
pub mod router;
pub mod stream_info;
