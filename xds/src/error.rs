//! Config errors: every rejection names the field path and the reason.

use std::fmt;

/// What kind of rejection a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The config breaks a proto constraint or one of Envoy's semantic checks.
    Invalid,
    /// The config is valid for Envoy but uses something Pinion does not implement.
    Unsupported,
}

/// A rejected piece of config: `path: reason`, e.g.
/// `static_resources.clusters[2].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: port 0 is invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted proto field path (proto field names, `[i]` for list items, `["k"]` for map keys).
    pub path: String,
    /// Human-readable reason.
    pub reason: String,
    /// Invalid or unsupported.
    pub kind: ErrorKind,
}

impl ConfigError {
    /// An invalid-config error at `path`.
    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into(), kind: ErrorKind::Invalid }
    }

    /// An unsupported-feature error at `path`.
    pub fn unsupported(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into(), kind: ErrorKind::Unsupported }
    }

    /// Prefix the path with a parent segment (`parent.child`).
    pub fn under(mut self, parent: &str) -> Self {
        if parent.is_empty() {
            return self;
        }
        self.path = if self.path.is_empty() {
            parent.to_string()
        } else if self.path.starts_with('[') {
            format!("{parent}{}", self.path)
        } else {
            format!("{parent}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            ErrorKind::Invalid => "",
            ErrorKind::Unsupported => "unsupported: ",
        };
        if self.path.is_empty() {
            write!(f, "{prefix}{}", self.reason)
        } else {
            write!(f, "{}: {prefix}{}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Result alias for config handling.
pub type ConfigResult<T> = Result<T, ConfigError>;
