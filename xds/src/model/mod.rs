//! Pinion's own config model: plain, validated, immutable Rust types. Translation from Envoy
//! protos (see `crate::translate`) is the only way to build them from config, so the data
//! plane never sees a proto and never re-validates.

mod access_log;
mod bootstrap;
mod cluster;
mod dynamic;
mod http_connection_manager;
mod http_filter;
mod listener;
mod matcher;
mod route;
mod runtime;
mod scoped_route;
mod secret;
mod tcp_proxy;
mod tls;

pub use access_log::*;
pub use bootstrap::*;
pub use cluster::*;
pub use dynamic::*;
pub use http_connection_manager::*;
pub use http_filter::*;
pub use listener::*;
pub use matcher::*;
pub use route::*;
pub use runtime::*;
pub use scoped_route::*;
pub use secret::*;
pub use tcp_proxy::*;
pub use tls::*;
