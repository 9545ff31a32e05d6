//! Pinion's data plane: a service-mesh sidecar proxy that boots from Envoy's bootstrap,
//! with per-core workers, an HTTP connection manager and router, upstream pools, admin and
//! stats. Config arrives as plain model types from `pinion-xds`.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod access_log_grpc;
pub mod admin;
pub mod cli;
pub mod config_store;
pub mod demo;
pub mod formatter;
pub mod http;
pub mod listener;
pub mod listener_filter;
pub mod listener_manager;
pub mod logging;
pub mod runtime;
pub mod secret_manager;
pub mod server;
pub mod server_state;
pub mod snapshot;
pub mod stats;
pub mod tcp_proxy;
pub mod tls;
pub mod upstream;
pub mod worker;
pub mod worker_context;
pub mod xds_start;
