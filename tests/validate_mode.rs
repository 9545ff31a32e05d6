//! `pinion --mode validate -c FILE` (issue 2, acceptance 3): invalid bootstraps are rejected
//! with the field path, valid ones (including Envoy's own examples) are accepted, and valid
//! but unsupported features give an explicit "unsupported" error. Real Envoy 1.40 accepts every
//! bootstrap under tests/bootstraps/ and rejects every one under xds/testdata/invalid/; the
//! fixtures under tests/bootstraps/http_filters/ carry their verdict, checked against Envoy too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run_validate(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pinion"))
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("run pinion --mode validate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `# expect: <substring>` first line of a fixture.
fn expectation(p: &Path) -> Option<String> {
    let text = std::fs::read_to_string(p).expect("read fixture");
    text.lines().next()?.strip_prefix("# expect: ").map(str::to_owned)
}

#[test]
fn invalid_bootstraps_fail_naming_the_field() {
    let files = yaml_files(&root().join("xds/testdata/invalid"));
    assert!(files.len() >= 15, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let want = expectation(f).unwrap_or_else(|| panic!("{}: no `# expect:` line", f.display()));
        let (code, _, stderr) = run_validate(f);
        if code == Some(0) || code.is_none() {
            failures.push(format!("{}: exit {code:?}, expected failure with {want:?}", f.display()));
        } else if !stderr.contains(&want) {
            failures.push(format!("{}:\n  want: {want}\n  got:  {}", f.display(), stderr.trim()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn envoy_example_bootstraps_are_accepted() {
    let dir = root().join("tests/bootstraps");
    let mut accepted = 0;
    for name in ["front_proxy.yaml", "envoyproxy_io_proxy.yaml", "optional_grpc_web.yaml"] {
        let f = dir.join(name);
        let (code, stdout, stderr) = run_validate(&f);
        assert_eq!(code, Some(0), "{}:\n{stderr}", f.display());
        assert!(stdout.contains("OK"), "{}: {stdout}", f.display());
        accepted += 1;
    }
    assert_eq!(accepted, 3);
}

#[test]
fn valid_fixtures_are_accepted_or_explicitly_unsupported() {
    // xds/testdata/valid holds proto-valid bootstraps; some use features later issues bring
    // (health checks, outlier detection, gRPC-Web). Those must fail as "unsupported", naming the
    // field, never as invalid; the others must pass.
    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    for f in yaml_files(&root().join("xds/testdata/valid")) {
        let (code, _, stderr) = run_validate(&f);
        match code {
            Some(0) => accepted.push(f.file_name().unwrap().to_string_lossy().into_owned()),
            _ if stderr.contains(": unsupported: ") && stderr.contains("not supported by pinion") => {
                println!("{}: {}", f.display(), stderr.trim());
            }
            _ => failures.push(format!("{}: exit {code:?}: {}", f.display(), stderr.trim())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for must in ["access_log_file.yaml", "tcp_proxy.yaml"] {
        assert!(accepted.iter().any(|a| a == must), "{must} must validate; accepted: {accepted:?}");
    }
}

#[test]
fn unsupported_features_are_named() {
    let dir = root().join("tests/bootstraps");
    for name in ["unsupported_grpc_web.yaml", "unsupported_original_dst.yaml", "unsupported_rtds_without_xds.yaml"] {
        let f = dir.join(name);
        let want = expectation(&f).expect("expect line");
        let (code, _, stderr) = run_validate(&f);
        assert_eq!(code, Some(1), "{}: {stderr}", f.display());
        assert!(stderr.contains("unsupported"), "{}: {stderr}", f.display());
        assert!(stderr.contains(&want), "{}: want {want:?} in {stderr}", f.display());
    }
    // The error names the filter's field path.
    let (_, _, stderr) = run_validate(&dir.join("unsupported_grpc_web.yaml"));
    assert!(
        stderr.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"),
        "{stderr}"
    );
}

#[test]
fn missing_file_fails() {
    let (code, _, stderr) = run_validate(Path::new("/nonexistent/pinion-bootstrap.yaml"));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("/nonexistent/pinion-bootstrap.yaml"), "{stderr}");
}

/// The example bootstraps shipped in `deploy/` stay valid.
#[test]
fn deploy_examples_validate() {
    for f in ["deploy/bootstrap-static.yaml", "deploy/bootstrap-ads.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinion"))
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .expect("run pinion");
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn tls_context_errors_name_the_field() {
    // Real Envoy 1.40 rejects both too ("Failed to load incomplete private key from path",
    // "SAN-based verification of peer certificates without trusted CA is insecure").
    let dir = root().join("tests/bootstraps");
    for name in ["invalid_tls_missing_cert_file.yaml", "invalid_tls_san_without_ca.yaml"] {
        let f = dir.join(name);
        let want = expectation(&f).expect("expect line");
        let (code, _, stderr) = run_validate(&f);
        assert_eq!(code, Some(1), "{}: {stderr}", f.display());
        assert!(stderr.contains(&want), "{}: want {want:?} in {stderr}", f.display());
    }
    let (_, _, stderr) = run_validate(&dir.join("invalid_tls_missing_cert_file.yaml"));
    assert!(stderr.contains("cannot read file '/nonexistent/pinion-test/cert.pem'"), "{stderr}");
}

/// The verdict header of a fixture under tests/bootstraps/http_filters: `# verdict: ok`,
/// `# verdict: invalid` (both reject; `# envoy:` and `# pinion:` name a part of each error) or
/// `# verdict: unsupported` (Envoy accepts; Pinion refuses it as unsupported, `# pinion:`).
struct Verdict {
    verdict: String,
    envoy: Option<String>,
    pinion: Option<String>,
}

fn verdict(p: &Path) -> Verdict {
    let text = std::fs::read_to_string(p).expect("read fixture");
    let line = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_owned));
    Verdict {
        verdict: line("verdict").unwrap_or_else(|| panic!("{}: no `# verdict:` line", p.display())),
        envoy: line("envoy"),
        pinion: line("pinion"),
    }
}

/// HTTP filter and typed_per_filter_config fixtures: Pinion's verdict is the one written in
/// each file, and so is real Envoy 1.40's when its binary is around (always in CI).
#[test]
fn http_filter_fixtures_match_envoy() {
    let files = yaml_files(&root().join("tests/bootstraps/http_filters"));
    assert!(files.len() >= 20, "only {} fixtures", files.len());
    let envoy = match pinion_testkit::ProxyKind::Envoy.binary() {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{e}"),
        Err(e) => {
            println!("checking Pinion's side only: {e}");
            None
        }
    };
    let mut failures = Vec::new();
    for f in &files {
        let v = verdict(f);
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let (code, _, stderr) = run_validate(f);
        let pinion_ok = code == Some(0);
        match v.verdict.as_str() {
            "ok" if !pinion_ok => failures.push(format!("{name}: pinion rejected it: {}", stderr.trim())),
            "invalid" | "unsupported" if pinion_ok => failures.push(format!("{name}: pinion accepted it")),
            "ok" | "invalid" | "unsupported" => {}
            other => panic!("{name}: unknown verdict {other:?}"),
        }
        if !pinion_ok {
            let want = v.pinion.as_deref().unwrap_or_else(|| panic!("{name}: no `# pinion:` line"));
            if !stderr.contains(want) {
                failures.push(format!("{name}: pinion said {:?}, want {want:?}", stderr.trim()));
            }
            let unsupported = stderr.contains(": unsupported: ");
            if unsupported != (v.verdict == "unsupported") {
                failures.push(format!("{name}: verdict {} but pinion said {:?}", v.verdict, stderr.trim()));
            }
        }
        let Some(envoy) = &envoy else { continue };
        let out = Command::new(envoy)
            .args(["--mode", "validate", "-l", "critical", "-c"])
            .arg(f)
            .output()
            .expect("run envoy --mode validate");
        let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        match (v.verdict.as_str(), out.status.success()) {
            ("ok" | "unsupported", true) => {}
            ("invalid", false) => {
                let want = v.envoy.as_deref().unwrap_or_else(|| panic!("{name}: no `# envoy:` line"));
                if !said.contains(want) {
                    failures.push(format!("{name}: envoy said {:?}, want {want:?}", said.trim()));
                }
            }
            (_, ok) => failures.push(format!("{name}: verdict {} but envoy ok={ok}: {}", v.verdict, said.trim())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
