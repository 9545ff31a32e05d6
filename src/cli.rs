//! Command line: Envoy's flags (so Pinion is a drop-in for control-plane agents that start
//! Envoy), plus `pinion demo`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Pinion: an Envoy-compatible service-mesh sidecar proxy.
#[derive(Parser, Debug, Clone)]
#[command(name = "pinion", version, about)]
pub struct Cli {
    /// Subcommand (`demo`); without one, Pinion runs as a proxy like Envoy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Envoy-compatible options.
    #[command(flatten)]
    pub opts: Options,
}

/// Subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run a demo mesh: built-in backends and a sidecar with a built-in bootstrap.
    Demo {
        /// Listener port of the demo sidecar.
        #[arg(long, default_value_t = 10000)]
        port: u16,
        /// Admin port of the demo sidecar.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Stop after this many seconds (0 = run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration_s: u64,
    },
}

/// `--mode`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Run the proxy.
    #[default]
    Serve,
    /// Parse, validate and translate the config; exit 0 if valid, 1 if not.
    Validate,
    /// Initialize (bind nothing) and exit: accepted for compatibility, same as validate.
    InitOnly,
}

/// Envoy's command line options. Options that only make sense for Envoy's internals are
/// accepted as documented no-ops so agents that launch Envoy can launch Pinion unchanged.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Options {
    /// Path to the bootstrap (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,
    /// Bootstrap YAML merged over the file (or used alone).
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,
    /// Number of worker threads (default: available cores).
    #[arg(long, global = true)]
    pub concurrency: Option<usize>,
    /// `--mode serve|validate|init_only`.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    pub mode: Mode,
    /// Overrides `node.id`.
    #[arg(long = "service-node")]
    pub service_node: Option<String>,
    /// Overrides `node.cluster`.
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,
    /// Overrides `node.locality.zone`.
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,
    /// Log level: trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info", global = true)]
    pub log_level: String,
    /// Per-component levels (`upstream:debug,router:trace`); mapped onto Pinion's modules.
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,
    /// Log line format (Envoy's spdlog pattern): accepted, Pinion uses its own format.
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// Write logs to this file instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,
    /// Escape newlines in log messages: accepted no-op.
    #[arg(long = "log-format-escaped")]
    pub log_format_escaped: bool,
    /// Fine-grain logging: accepted no-op.
    #[arg(long = "enable-fine-grain-logging")]
    pub enable_fine_grain_logging: bool,
    /// Seconds to drain connections on shutdown (default 600, as Envoy).
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,
    /// `gradual` or `immediate`: accepted; Pinion drains immediately (GOAWAY / Connection: close at once).
    #[arg(long = "drain-strategy", default_value = "gradual")]
    pub drain_strategy: String,
    /// Hot restart parent shutdown time: accepted no-op (Pinion has no hot restart).
    #[arg(long = "parent-shutdown-time-s")]
    pub parent_shutdown_time_s: Option<u64>,
    /// Hot restart: accepted no-op.
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,
    /// Hot restart base id: accepted no-op.
    #[arg(long = "base-id")]
    pub base_id: Option<u64>,
    /// Hot restart: accepted no-op.
    #[arg(long = "use-dynamic-base-id")]
    pub use_dynamic_base_id: bool,
    /// Hot restart: accepted no-op.
    #[arg(long = "base-id-path")]
    pub base_id_path: Option<PathBuf>,
    /// Hot restart epoch: accepted no-op.
    #[arg(long = "restart-epoch")]
    pub restart_epoch: Option<u64>,
    /// Print the hot restart compatibility version: Pinion has none.
    #[arg(long = "hot-restart-version")]
    pub hot_restart_version: bool,
    /// `v4` or `v6`: the local address family (used for `server_info`).
    #[arg(long = "local-address-ip-version", default_value = "v4")]
    pub local_address_ip_version: String,
    /// Access log flush interval in milliseconds.
    #[arg(long = "file-flush-interval-msec", default_value_t = 1000)]
    pub file_flush_interval_msec: u64,
    /// Accept unknown fields in the bootstrap (warn instead of reject).
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,
    /// Reject unknown fields in dynamic resources: accepted (Pinion rejects them by default).
    #[arg(long = "reject-unknown-dynamic-fields")]
    pub reject_unknown_dynamic_fields: bool,
    /// Ignore unknown fields in dynamic resources: accepted.
    #[arg(long = "ignore-unknown-dynamic-fields")]
    pub ignore_unknown_dynamic_fields: bool,
    /// Pin workers to the process's cpuset: accepted no-op.
    #[arg(long = "cpuset-threads")]
    pub cpuset_threads: bool,
    /// Envoy's per-stat name length limit: accepted no-op.
    #[arg(long = "max-obj-name-len")]
    pub max_obj_name_len: Option<u64>,
    /// Disable extensions by name: accepted no-op.
    #[arg(long = "disable-extensions")]
    pub disable_extensions: Option<String>,
    /// Socket path/mode for hot restart: accepted no-op.
    #[arg(long = "socket-path")]
    pub socket_path: Option<String>,
    /// Socket mode for hot restart: accepted no-op.
    #[arg(long = "socket-mode")]
    pub socket_mode: Option<String>,
    /// Stats tag override: accepted no-op.
    #[arg(long = "stats-tag")]
    pub stats_tag: Vec<String>,
}
