//! Real backends, clients and proxy-process helpers shared by Pinion's integration
//! tests (`tests/`) and the differential interop tests (`interop-tests/`).
#![forbid(unsafe_code)]

pub mod backend;
pub mod client;
pub mod flaky;
pub mod gate;
pub mod grpc;
pub mod health;
pub mod mesh;
pub mod process;
pub mod sds;

pub use backend::{spawn_http_backend, spawn_http_backend_named, Backend, BackendKind, BoxError, RespBody};
pub use client::{
    empty, full, h2c_client, h2c_client_to, http1_client, http1_client_to, send, send_full, Reply, ReqBody, TestClient,
    TestConnector,
};
pub use flaky::{spawn_flaky_backend, FlakyBackend, Seen};
pub use gate::{spawn_gate_backend, GateBackend};
pub use grpc::{
    grpc_bidi_echo, grpc_unary, grpc_unary_with, grpc_unary_with_metadata, spawn_grpc_backend, GrpcBackend,
    GrpcBidiReply, GrpcUnaryReply,
};
pub use health::{HealthBackend, TcpBackend};
pub use process::{free_port, http_get_blocking, terminate, ProxyKind, ProxyProcess};
