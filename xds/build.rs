//! Compiles the Envoy .proto files shipped inside the `envoy-types` crate into one
//! FileDescriptorSet (`$OUT_DIR/envoy_descriptor.bin`) with protox, so the crate can do
//! proto3 JSON/YAML decoding and read protoc-gen-validate annotations at run time
//! without protoc.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files compiled into the pool (their imports come along). Entries that do not exist in
/// the shipped proto tree are skipped, so a newer envoy-types that drops one still builds.
const FILES: &[&str] = &[
    // First: protox resolves relative names against every package compiled so far (protoc
    // only looks at imports), and `common.ratelimit.v3.*` here would otherwise bind to
    // `envoy.extensions.filters.common` brought in by other filters.
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/on_demand/v3/on_demand.proto",
    "envoy/extensions/filters/http/upstream_codec/v3/upstream_codec.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/grpc/v3/als.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/header_mutation/v3/header_mutation.proto",
    "envoy/extensions/filters/http/health_check/v3/health_check.proto",
    "envoy/extensions/filters/http/grpc_web/v3/grpc_web.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/clusters/aggregate/v3/cluster.proto",
    "envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto",
    "envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto",
    "envoy/extensions/load_balancing_policies/random/v3/random.proto",
    "envoy/extensions/load_balancing_policies/ring_hash/v3/ring_hash.proto",
    "envoy/extensions/load_balancing_policies/maglev/v3/maglev.proto",
    "envoy/extensions/regex_engines/v3/google_re2.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/config/route/v3/scoped_route.proto",
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/runtime/v3/rtds.proto",
    "envoy/admin/v3/config_dump.proto",
];

/// Include roots inside envoy-types' `proto/` dir (relative paths).
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
    "ratelimit/api",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    let proto_root = envoy_types_proto_dir();
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|d| proto_root.join(d)).filter(|p| p.is_dir()).collect();
    let api = proto_root.join("data-plane-api");
    let files: Vec<&str> = FILES.iter().copied().filter(|f| api.join(f).is_file()).collect();
    if files.is_empty() {
        panic!("no Envoy .proto files found under {}", api.display());
    }

    let mut compiler = protox::Compiler::new(&includes).unwrap_or_else(|e| panic!("protox include setup failed: {e}"));
    // Source info roughly doubles the descriptor and is never used at run time.
    compiler.include_source_info(false);
    compiler.include_imports(true);
    compiler.open_files(&files).unwrap_or_else(|e| panic!("protox failed: {e:?}"));
    let bytes = compiler.encode_file_descriptor_set();

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR not set"));
    std::fs::write(out.join("envoy_descriptor.bin"), bytes).unwrap_or_else(|e| panic!("writing descriptor: {e}"));
}

/// Finds `<envoy-types package dir>/proto` via `cargo metadata`, falling back to a scan of
/// the cargo registry when metadata is unavailable (e.g. a vendored or offline build).
fn envoy_types_proto_dir() -> PathBuf {
    if let Some(dir) = env::var_os("PINION_ENVOY_PROTO_DIR") {
        return PathBuf::from(dir);
    }
    match from_cargo_metadata() {
        Ok(dir) => dir,
        Err(meta_err) => from_registry_scan()
            .unwrap_or_else(|| panic!("cannot locate envoy-types proto dir: {meta_err}; set PINION_ENVOY_PROTO_DIR")),
    }
}

fn from_cargo_metadata() -> Result<PathBuf, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no manifest dir")?);
    // The workspace manifest resolves the same Cargo.lock as the build in progress.
    let ws_manifest = manifest_dir.parent().map(|p| p.join("Cargo.toml"));
    let manifest = match ws_manifest {
        Some(m) if m.is_file() => m,
        _ => manifest_dir.join("Cargo.toml"),
    };
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata json: {e}"))?;
    let packages = meta["packages"].as_array().ok_or("no packages in metadata")?;
    let candidates: Vec<&serde_json::Value> = packages.iter().filter(|p| p["name"] == "envoy-types").collect();
    // Prefer the envoy-types that this crate actually resolved to, if several are present.
    let own_dep = resolved_envoy_types_id(&meta);
    let pkg = candidates
        .iter()
        .find(|p| own_dep.is_some() && p["id"].as_str() == own_dep.as_deref())
        .or_else(|| candidates.first())
        .ok_or("envoy-types not in cargo metadata")?;
    let manifest_path = pkg["manifest_path"].as_str().ok_or("no manifest_path")?;
    let dir = Path::new(manifest_path).parent().ok_or("bad manifest_path")?.join("proto");
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("{} is not a directory", dir.display()))
    }
}

/// Package id of the envoy-types that this crate resolved to (in case several versions are
/// in the graph): find our own package by manifest path, then its `envoy_types` dependency.
fn resolved_envoy_types_id(meta: &serde_json::Value) -> Option<String> {
    let own_manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let own_id = meta["packages"].as_array()?.iter().find_map(|p| {
        let path = Path::new(p["manifest_path"].as_str()?);
        (path == own_manifest).then(|| p["id"].as_str().map(str::to_string))?
    })?;
    let node = meta["resolve"]["nodes"].as_array()?.iter().find(|n| n["id"].as_str() == Some(own_id.as_str()))?;
    node["deps"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == "envoy_types")
        .and_then(|d| d["pkg"].as_str())
        .map(str::to_string)
}

fn from_registry_scan() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    // Same minor series as the Cargo.toml requirement; the highest one wins.
    let mut found: Vec<PathBuf> = Vec::new();
    for index in std::fs::read_dir(home.join("registry/src")).ok()?.flatten() {
        for pkg in std::fs::read_dir(index.path()).into_iter().flatten().flatten() {
            let name = pkg.file_name();
            if name.to_string_lossy().starts_with("envoy-types-0.7.") {
                let proto = pkg.path().join("proto");
                if proto.is_dir() {
                    found.push(proto);
                }
            }
        }
    }
    found.sort();
    found.pop()
}
