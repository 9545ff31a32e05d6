//! The client's counters and gauges, as plain atomics; the data plane registers them under
//! Envoy's names (see [`ClientStats::entries`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sink::ResourceType;

/// Counters of one subscription type.
#[derive(Debug, Default)]
pub struct TypeStats {
    /// `update_attempt`: responses received (and connection attempts that failed).
    pub update_attempt: AtomicU64,
    /// `update_success`: responses accepted (ACKed).
    pub update_success: AtomicU64,
    /// `update_rejected`: responses rejected (NACKed).
    pub update_rejected: AtomicU64,
    /// `update_failure`: stream or connection failures.
    pub update_failure: AtomicU64,
    /// `version`: hash of the last accepted `version_info` (FNV-1a 64; Envoy uses xxHash64).
    pub version: AtomicU64,
    /// `init_fetch_timeout`: initial fetches that timed out.
    pub init_fetch_timeout: AtomicU64,
}

impl TypeStats {
    fn entries(&self, prefix: &str, out: &mut Vec<StatEntry>) {
        let c = |name: &str, v: &AtomicU64, gauge: bool| StatEntry {
            name: format!("{prefix}.{name}"),
            value: v.load(Ordering::Relaxed),
            gauge,
        };
        out.push(c("update_attempt", &self.update_attempt, false));
        out.push(c("update_success", &self.update_success, false));
        out.push(c("update_rejected", &self.update_rejected, false));
        out.push(c("update_failure", &self.update_failure, false));
        out.push(c("version", &self.version, true));
        out.push(c("init_fetch_timeout", &self.init_fetch_timeout, false));
    }
}

/// One stat with its Envoy name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatEntry {
    /// Full stat name, e.g. `listener_manager.lds.update_success`.
    pub name: String,
    /// Current value.
    pub value: u64,
    /// Gauge (true) or counter (false).
    pub gauge: bool,
}

/// All of the xDS client's stats.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// `control_plane.connected_state`: 1 while a stream to the control plane is up.
    pub connected_state: AtomicU64,
    /// LDS.
    pub lds: TypeStats,
    /// RDS (all route configurations together).
    pub rds: TypeStats,
    /// CDS.
    pub cds: TypeStats,
    /// EDS (all load assignments together).
    pub eds: TypeStats,
    /// SRDS.
    pub srds: TypeStats,
    /// VHDS (all route configurations together).
    pub vhds: TypeStats,
    /// RTDS.
    pub rtds: TypeStats,
    /// SDS (all secrets together; not exported: Envoy counts per secret, `sds.<name>.`, which
    /// the data plane does).
    pub sds: TypeStats,
}

impl ClientStats {
    /// Fresh, zeroed stats.
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// The counters of `t`.
    pub fn for_type(&self, t: ResourceType) -> &TypeStats {
        match t {
            ResourceType::Listener => &self.lds,
            ResourceType::RouteConfiguration => &self.rds,
            ResourceType::Cluster => &self.cds,
            ResourceType::ClusterLoadAssignment => &self.eds,
            ResourceType::ScopedRouteConfiguration => &self.srds,
            ResourceType::VirtualHost => &self.vhds,
            ResourceType::Runtime => &self.rtds,
            ResourceType::Secret => &self.sds,
        }
    }

    /// Envoy's stat prefix for `t`: `listener_manager.lds`, `cluster_manager.cds`,
    /// `runtime.rtds`; RDS, EDS, SRDS and VHDS are per resource in Envoy
    /// (`http.<prefix>.rds.<name>.`, `cluster.<name>.`, ...): the per-type totals are here under
    /// `rds`, `eds`, `srds` and `vhds` (the data plane adds the per-resource RDS counters).
    pub fn prefix(t: ResourceType) -> &'static str {
        match t {
            ResourceType::Listener => "listener_manager.lds",
            ResourceType::RouteConfiguration => "rds",
            ResourceType::Cluster => "cluster_manager.cds",
            ResourceType::ClusterLoadAssignment => "eds",
            ResourceType::ScopedRouteConfiguration => "srds",
            ResourceType::VirtualHost => "vhds",
            ResourceType::Runtime => "runtime.rtds",
            ResourceType::Secret => "sds",
        }
    }

    /// Every stat with its name and current value.
    pub fn entries(&self) -> Vec<StatEntry> {
        let mut out = vec![StatEntry {
            name: "control_plane.connected_state".into(),
            value: self.connected_state.load(Ordering::Relaxed),
            gauge: true,
        }];
        for t in ResourceType::ALL.into_iter().filter(|t| *t != ResourceType::Secret) {
            let ts = self.for_type(t);
            if t.is_optional() && ts.update_attempt.load(Ordering::Relaxed) == 0 {
                continue; // SRDS/VHDS/RTDS stats exist in Envoy only where they are used
            }
            ts.entries(Self::prefix(t), &mut out);
        }
        out
    }
}
