//! The README's main command: `pinion demo` brings up the embedded control plane, backends
//! and an ADS-configured sidecar, pushes two config changes, and exits by itself.

use std::process::Command;

#[test]
fn demo_runs_the_scripted_mesh_and_exits() {
    let port = pinion_testkit::free_port().to_string();
    let admin = pinion_testkit::free_port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_pinion"))
        .args(["demo", "--duration-s", "1", "--port", &port, "--admin-port", &admin, "-l", "warning"])
        .output()
        .expect("run pinion demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("GET /healthz  -> ok (config 1)"), "{stdout}");
    // After config 2 (weights 0/100, service-a moved to its second endpoint).
    assert!(stdout.contains("[config 2 pushed, ACKed by the sidecar: true]"), "{stdout}");
    assert!(stdout.contains("20 x GET /    -> service-b x20"), "{stdout}");
    assert!(stdout.contains("10 x GET /a   -> service-a/2 x10"), "{stdout}");
    assert!(stdout.contains("[config 3 pushed, ACKed: true]"), "{stdout}");
}
