//! Fixture-driven checks of bootstrap decoding + PGV validation: every file under
//! testdata/invalid must be rejected with the error named on its `# expect:` line, and every
//! file under testdata/valid must decode cleanly. Real Envoy 1.40 (`envoy --mode validate`)
//! agrees with each verdict.

use std::path::{Path, PathBuf};

use pinion_xds::decode::{bootstrap_from_file, bootstrap_from_str, DecodeOptions, Format};
use pinion_xds::ErrorKind;

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn expectation(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or("");
    first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()))
        .to_string()
}

#[test]
fn invalid_bootstraps_are_rejected_with_path() {
    let files = fixtures("invalid");
    assert!(files.len() >= 20, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let want = expectation(f);
        match bootstrap_from_file(f, &DecodeOptions::default()) {
            Ok(_) => failures.push(format!("{}: accepted, expected error {want:?}", f.display())),
            Err(e) => {
                let got = e.to_string();
                println!("{}: {got}", f.file_name().unwrap().to_string_lossy());
                if !got.contains(&want) {
                    failures.push(format!("{}:\n  want: {want}\n  got:  {got}", f.display()));
                }
                if e.kind != ErrorKind::Invalid {
                    failures.push(format!("{}: kind {:?}", f.display(), e.kind));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_bootstraps_decode() {
    let files = fixtures("valid");
    assert!(files.len() >= 3);
    for f in &files {
        let b = bootstrap_from_file(f, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(b.static_resources.is_some(), "{}", f.display());
    }
}

#[test]
fn unknown_fields_accepted_when_allowed() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid/unknown_field.yaml");
    let opts = DecodeOptions { allow_unknown_fields: true };
    let b = bootstrap_from_file(&f, &opts).expect("unknown field must be dropped");
    assert_eq!(b.static_resources.unwrap().clusters[0].name, "upstream_tcp");
}

#[test]
fn json_and_yaml_agree() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/valid/front_proxy.yaml");
    let from_yaml = bootstrap_from_file(&f, &DecodeOptions::default()).unwrap();
    let json = pinion_xds::decode::to_json(&from_yaml);
    let text = serde_json::to_string(&json).unwrap();
    let from_json = bootstrap_from_str(&text, Format::Auto, &DecodeOptions::default()).unwrap();
    assert_eq!(from_yaml, from_json);
    // Any payloads are expanded with @type in the JSON rendering.
    let hcm = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    assert!(hcm["typed_config"]["@type"].as_str().unwrap().ends_with("HttpConnectionManager"));
}

#[test]
fn camel_case_json_paths_use_proto_names() {
    let text = r#"{"staticResources": {"clusters": [{"name": "c", "connectTimeout": "0s"}]}}"#;
    let e = bootstrap_from_str(text, Format::Json, &DecodeOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "static_resources.clusters[0].connect_timeout: value must be greater than 0s");
}

#[test]
fn binary_bootstrap_is_unsupported() {
    let e = bootstrap_from_file(Path::new("/nonexistent/bootstrap.pb"), &DecodeOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

/// Hostile inputs: mutated encodings must give Ok or Err from the validator, never a panic.
#[test]
fn mutated_protos_never_panic() {
    use prost::Message;
    use prost_reflect::DynamicMessage;

    let pool = pinion_xds::descriptor::pool();
    let desc = pool.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap").unwrap();
    let mut seeds = Vec::new();
    for f in fixtures("valid") {
        let b = bootstrap_from_file(&f, &DecodeOptions::default()).unwrap();
        seeds.push(b.encode_to_vec());
    }
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut decoded, mut rejected) = (0, 0);
    for i in 0..3000 {
        let mut bytes = seeds[i % seeds.len()].clone();
        for _ in 0..(1 + next() % 4) {
            let pos = (next() as usize) % bytes.len();
            bytes[pos] = next() as u8;
        }
        if let Ok(msg) = DynamicMessage::decode(desc.clone(), bytes.as_slice()) {
            decoded += 1;
            if pinion_xds::validate::validate_message(&msg).is_err() {
                rejected += 1;
            }
        }
    }
    assert!(decoded > 100, "mutations too destructive: {decoded} decoded");
    assert!(rejected > 0);
}

/// `Any` payloads decode afresh (resetting prost's recursion limit), so nesting is bounded
/// by the validator itself.
#[test]
fn deeply_nested_any_is_rejected_not_overflowed() {
    use prost::Message;
    use prost_reflect::DynamicMessage;

    let mut any = prost_types::Any { type_url: "type.googleapis.com/google.protobuf.Empty".into(), value: Vec::new() };
    for _ in 0..5000 {
        any =
            prost_types::Any { type_url: "type.googleapis.com/google.protobuf.Any".into(), value: any.encode_to_vec() };
    }
    let pool = pinion_xds::descriptor::pool();
    let desc = pool.get_message_by_name("google.protobuf.Any").unwrap();
    let msg = DynamicMessage::decode(desc, any.encode_to_vec().as_slice()).unwrap();
    let e = pinion_xds::validate::validate_message(&msg).unwrap_err();
    assert!(e.reason.contains("nesting"), "{e}");
}

#[test]
fn validate_prost_applies_annotations() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Duration;

    let mut c = Cluster { name: "c".into(), ..Default::default() };
    pinion_xds::decode::validate_prost(&c).unwrap();
    c.connect_timeout = Some(Duration { seconds: 0, nanos: 0 });
    let e = pinion_xds::decode::validate_prost(&c).unwrap_err();
    assert_eq!(e.to_string(), "connect_timeout: value must be greater than 0s");
    c.connect_timeout = Some(Duration { seconds: 1, nanos: 2_000_000_000 });
    let e = pinion_xds::decode::validate_prost(&c).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    c.connect_timeout = None;
    c.name.clear();
    assert!(pinion_xds::decode::validate_prost(&c).is_err());
}
