//! pinion-xds: everything that touches Envoy protos. Bootstrap decoding (YAML/JSON with
//! `Any`), generic protoc-gen-validate enforcement, and translation into Pinion's plain,
//! validated config model. Protos stop here: the data plane only sees [`model`].
#![forbid(unsafe_code)]

pub mod als;
pub mod client;
pub mod control_plane;
pub mod decode;
pub mod descriptor;
mod empty_any;
pub mod error;
pub mod loader;
pub mod model;
pub mod sink;
pub mod translate;
pub mod validate;

pub use error::{ConfigError, ConfigResult, ErrorKind};
