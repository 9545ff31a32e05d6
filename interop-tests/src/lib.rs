//! Harness shared by the interop tests.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// Directory holding the bootstrap templates (`interop-tests/bootstraps`).
pub fn bootstraps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bootstraps")
}

/// Reads template `name` from [`bootstraps_dir`] and replaces each `{{KEY}}` with its
/// value; panics if a placeholder is left over, so a typo cannot reach a proxy.
pub fn render_bootstrap(name: &str, vars: &[(&str, String)]) -> String {
    let path = bootstraps_dir().join(name);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(i) = text.find("{{") {
        let end = text[i..].find("}}").map_or(text.len(), |e| i + e + 2);
        panic!("unreplaced placeholder {} in {}", &text[i..end], path.display());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_differential_bootstrap() {
        let vars: Vec<(&str, String)> =
            ["ADMIN_PORT", "LISTEN_PORT", "H1_PORT", "H2_PORT", "GRPC_PORT", "REFUSED_PORT"]
                .iter()
                .map(|k| (*k, "1".to_string()))
                .collect();
        let y = render_bootstrap("differential.yaml", &vars);
        assert!(y.contains("port_value: 1 }"));
    }
}
