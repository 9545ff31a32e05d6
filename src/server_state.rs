//! The server's shared state, as the control loop (`server.rs`) and the admin endpoints
//! (`admin.rs`) both see it. Apart from both, so that neither module imports the other's
//! state: the server starts admin, and admin only needs this.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pinion_xds::model;
use tokio::sync::{watch, Notify};

use crate::cli::Options;
use crate::config_store::ConfigStore;
use crate::logging::LogHandle;
use crate::snapshot::SharedSnapshot;
use crate::stats::{Gauge, Store};

/// Envoy's `server.state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerStateKind {
    /// Serving.
    Live = 0,
    /// Draining.
    Draining = 1,
    /// Before init.
    PreInitializing = 2,
    /// Initializing (warming).
    Initializing = 3,
}

impl ServerStateKind {
    /// Envoy's name.
    pub fn name(self) -> &'static str {
        match self {
            ServerStateKind::Live => "LIVE",
            ServerStateKind::Draining => "DRAINING",
            ServerStateKind::PreInitializing => "PRE_INITIALIZING",
            ServerStateKind::Initializing => "INITIALIZING",
        }
    }
}

/// Shared server state (admin, control loop).
pub struct ServerState {
    /// Stats.
    pub store: Store,
    /// Active config.
    pub snapshot: SharedSnapshot,
    /// Translated bootstrap.
    pub bootstrap: Arc<model::Bootstrap>,
    /// Command line.
    pub options: Options,
    /// Start time.
    pub start: Instant,
    /// The current [`ServerStateKind`]; crate-visible only so `server.rs` can build the
    /// struct: change it with [`ServerState::set_state`], which also sets `server.state`.
    pub(crate) state: AtomicU8,
    /// `/healthcheck/fail` was called.
    pub healthcheck_failed: AtomicBool,
    /// Drain signal to workers.
    pub drain_tx: watch::Sender<bool>,
    /// Wakes the control loop to shut down.
    pub shutdown: Notify,
    /// Whether shutdown should skip draining (`/quitquitquit`).
    pub immediate_exit: AtomicBool,
    /// Log level control.
    pub log: LogHandle,
    /// Worker count.
    pub concurrency: usize,
    /// Listener name -> bound address (ports resolved when 0).
    pub bound_listeners: Arc<Mutex<Vec<(String, SocketAddr)>>>,
    /// Bound admin address.
    pub admin_address: Mutex<Option<SocketAddr>>,
    /// The xDS config store, when `dynamic_resources` is configured.
    pub config_store: std::sync::OnceLock<Arc<ConfigStore>>,
    /// The layered runtime.
    pub runtime: Arc<crate::runtime::Runtime>,
    /// `server.state`.
    pub(crate) state_gauge: Gauge,
}

impl ServerState {
    /// Current state.
    pub fn state(&self) -> ServerStateKind {
        match self.state.load(Ordering::Relaxed) {
            0 => ServerStateKind::Live,
            1 => ServerStateKind::Draining,
            2 => ServerStateKind::PreInitializing,
            _ => ServerStateKind::Initializing,
        }
    }

    /// Set the state (and `server.state`).
    pub fn set_state(&self, s: ServerStateKind) {
        self.state.store(s as u8, Ordering::Relaxed);
        self.state_gauge.set(s as i64);
    }

    /// Begin draining listeners (`/drain_listeners`, SIGTERM).
    pub fn start_drain(&self) {
        self.set_state(ServerStateKind::Draining);
        let _ = self.drain_tx.send(true);
    }
}
