//! No import cycles between the files of `src/` beyond the allowlisted ones
//! (`tools/module_cycles_allow.txt`), checked by `tools/module_cycles.py` (python3, stdlib
//! only). The checker's self-test runs too, so a checker that stopped finding cycles fails
//! here instead of passing everything.

use std::process::{Command, Output};

fn checker(args: &[&str]) -> Output {
    Command::new("python3")
        .arg("tools/module_cycles.py")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running python3 (needed for tools/module_cycles.py)")
}

fn describe(out: &Output) -> String {
    format!("{}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn checker_finds_cycles_in_a_synthetic_crate() {
    let out = checker(&["--self-test"]);
    assert!(out.status.success(), "module_cycles.py --self-test failed:\n{}", describe(&out));
}

#[test]
fn src_has_no_module_cycles() {
    let out = checker(&[]);
    assert!(out.status.success(), "import cycles between files in src/ (fix them):\n{}", describe(&out));
}
