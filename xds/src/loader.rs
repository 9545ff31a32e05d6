//! One call from text to model: decode (proto3 JSON/YAML with `Any`), validate (PGV rules),
//! translate (semantic checks), and keep the proto JSON for `/config_dump`.

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

use crate::decode::{self, DecodeOptions};
use crate::error::ConfigResult;
use crate::model;
use crate::translate::{self, NodeOverrides};

/// Decode, validate and translate a bootstrap given as a JSON value (YAML already converted).
pub fn bootstrap_from_json(
    json: &serde_json::Value,
    opts: &DecodeOptions,
    overrides: &NodeOverrides,
) -> ConfigResult<model::Bootstrap> {
    let proto: Bootstrap = decode::message_from_json(json, opts)?;
    let mut b = translate::bootstrap(&proto, overrides)?;
    b.config_dump_json = decode::to_json(&proto);
    Ok(b)
}
