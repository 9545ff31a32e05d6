//! The Envoy descriptor pool compiled by build.rs: drives proto3 JSON/YAML decoding,
//! `Any` resolution and protoc-gen-validate rule lookup.

use std::sync::Mutex;

use prost_reflect::DescriptorPool;

/// Encoded `FileDescriptorSet` produced by build.rs (no source info).
static DESCRIPTOR_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// The shared Envoy descriptor pool (a cheap handle), decoded on first use.
pub fn pool() -> DescriptorPool {
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    p.get_or_insert_with(|| {
        // The bytes come from our own build script; failing here is a build bug, not input.
        DescriptorPool::decode(DESCRIPTOR_BYTES).expect("embedded Envoy descriptor set is valid")
    })
    .clone()
}

/// Drop the decoded pool and the validators' rule caches (several MiB). A proxy that only
/// runs a static bootstrap never needs them again; the next `pool()` call decodes anew.
pub fn release() {
    *POOL.lock().unwrap_or_else(|e| e.into_inner()) = None;
    crate::validate::release_caches();
}

/// Size in bytes of the embedded descriptor set (for diagnostics).
pub fn encoded_len() -> usize {
    DESCRIPTOR_BYTES.len()
}
