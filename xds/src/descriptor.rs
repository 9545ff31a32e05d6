//! The Envoy descriptor pool compiled by build.rs: drives proto3 JSON/YAML decoding,
//! `Any` resolution and protoc-gen-validate rule lookup.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// Encoded `FileDescriptorSet` produced by build.rs (no source info).
static DESCRIPTOR_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// The shared Envoy descriptor pool, decoded on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes come from our own build script; failing here is a build bug, not input.
        DescriptorPool::decode(DESCRIPTOR_BYTES).expect("embedded Envoy descriptor set is valid")
    })
}

/// Size in bytes of the embedded descriptor set (for diagnostics).
pub fn encoded_len() -> usize {
    DESCRIPTOR_BYTES.len()
}
