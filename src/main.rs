//! The `pinion` binary.
#![forbid(unsafe_code)]

use clap::Parser;

use pinion::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let opts = cli.opts;
    if cli.command.is_none() && std::env::var_os(pinion::server::DECODE_CHILD_ENV).is_some() {
        // The bootstrap-decoding child of `run_main`: no logging, no serving.
        std::process::exit(pinion::server::decode_child(&opts));
    }
    if opts.hot_restart_version {
        println!("pinion has no hot restart");
        return;
    }
    let log = pinion::logging::init(&opts.log_level, opts.component_log_level.as_deref(), opts.log_path.as_deref());
    let code = match cli.command {
        Some(Command::Demo { port, admin_port, duration_s }) => {
            pinion::demo::run(port, admin_port, duration_s, opts, log)
        }
        None => pinion::server::run_main(opts, log),
    };
    std::process::exit(code);
}
