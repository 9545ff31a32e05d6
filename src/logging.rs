//! Logging with Envoy's level names, changeable at runtime via `/logging?level=`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Handle to change the log level at runtime.
#[derive(Clone)]
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

/// Map Envoy's level names onto tracing's.
pub fn tracing_level(envoy: &str) -> Option<&'static str> {
    Some(match envoy.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

impl LogHandle {
    /// A handle that cannot change anything (tests, validate mode).
    pub fn noop() -> Self {
        LogHandle { reload: None }
    }

    /// Set the global level (Envoy names). Returns false for an unknown level.
    pub fn set_level(&self, envoy_level: &str) -> bool {
        let Some(level) = tracing_level(envoy_level) else { return false };
        if let Some(h) = &self.reload {
            let _ = h.modify(|f| *f = EnvFilter::new(filter_directive(level, None)));
        }
        true
    }
}

fn filter_directive(level: &str, components: Option<&str>) -> String {
    // Noisy dependencies stay at warn unless asked for.
    let mut s = format!("{level},h2=warn,hyper=warn,hyper_util=warn,tower=warn");
    if let Some(c) = components {
        for part in c.split(',') {
            if let Some((comp, lvl)) = part.split_once(':') {
                if let Some(l) = tracing_level(lvl.trim()) {
                    s.push_str(&format!(",pinion::{}={l}", comp.trim()));
                }
            }
        }
    }
    s
}

/// Install the global subscriber. Logs go to stderr, or to `log_path`.
pub fn init(level: &str, components: Option<&str>, log_path: Option<&std::path::Path>) -> LogHandle {
    let level = tracing_level(level).unwrap_or("info");
    let filter = EnvFilter::new(filter_directive(level, components));
    let (filter, handle) = reload::Layer::new(filter);
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match log_path {
        Some(p) => {
            let p = p.to_path_buf();
            Box::new(move || -> Box<dyn std::io::Write> {
                match std::fs::OpenOptions::new().create(true).append(true).open(&p) {
                    Ok(f) => Box::new(f),
                    Err(_) => Box::new(std::io::stderr()),
                }
            })
        }
        None => Box::new(|| -> Box<dyn std::io::Write> { Box::new(std::io::stderr()) }),
    };
    let fmt = tracing_subscriber::fmt::layer().with_target(true).with_writer(writer);
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    LogHandle { reload: Some(handle) }
}
