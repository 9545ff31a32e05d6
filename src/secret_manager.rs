//! Envoy's secret manager: the static secrets of the bootstrap and one SDS subscription per
//! secret name, shared by every listener and cluster that names it. Lives on the control
//! thread; TLS contexts keep the [`SecretSlot`]s it hands out and read them per handshake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use pinion_xds::model;
use pinion_xds::sink::{Rejected, Resource, ResourceUpdate};

use crate::stats::{Prom, Store};
use crate::tls::{LoadedSecret, SecretLookup, SecretSlot};

/// An SDS secret as last accepted, for `/config_dump`.
#[derive(Clone)]
pub struct DynamicSecret {
    /// The slot contexts read.
    pub slot: Arc<SecretSlot>,
    /// Version of the accepted value (empty before the first one).
    pub version: String,
    /// When it was accepted.
    pub last_updated: Option<SystemTime>,
    /// Named with an `api_config_source` (else ADS): which client subscribes to it.
    pub api: bool,
}

/// The secrets of one server.
pub struct SecretManager {
    /// Itself, for the initial fetch timers.
    me: std::sync::Weak<SecretManager>,
    statics: HashMap<String, Arc<SecretSlot>>,
    /// SDS secrets by name; subscribed while some context holds the slot.
    dynamic: Mutex<BTreeMap<String, DynamicSecret>>,
    stats: Store,
    /// Called on the control thread when a secret's own `initial_fetch_timeout` passes
    /// without it (the config store goes on warming without it).
    on_timeout: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl SecretManager {
    /// A manager holding the bootstrap's `static_resources.secrets`, each checked (a key that
    /// does not match its certificate fails the bootstrap, as in Envoy).
    pub fn new(statics: &[Arc<model::Secret>], stats: &Store) -> Result<Arc<Self>, String> {
        let mut map = HashMap::new();
        for s in statics {
            let slot = SecretSlot::new(&s.name);
            slot.set(LoadedSecret::load(s.clone()).map_err(|e| format!("static secret '{}': {e}", s.name))?);
            map.insert(s.name.clone(), slot);
        }
        Ok(Arc::new_cyclic(|me| SecretManager {
            me: me.clone(),
            statics: map,
            dynamic: Mutex::new(BTreeMap::new()),
            stats: stats.clone(),
            on_timeout: std::sync::OnceLock::new(),
        }))
    }

    /// A manager without static secrets.
    pub fn empty(stats: &Store) -> Arc<Self> {
        Arc::new_cyclic(|me| SecretManager {
            me: me.clone(),
            statics: HashMap::new(),
            dynamic: Mutex::new(BTreeMap::new()),
            stats: stats.clone(),
            on_timeout: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DynamicSecret>> {
        self.dynamic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The SDS names to subscribe to: those some context still holds. Forgets the others,
    /// as Envoy drops an SDS subscription with its last user.
    pub fn subscribed(&self) -> BTreeSet<String> {
        self.subscribed_where(|_| true)
    }

    /// [`SecretManager::subscribed`], only the secrets named with an `api_config_source`
    /// (`api`) or over ADS (`!api`).
    pub fn subscribed_by(&self, api: bool) -> BTreeSet<String> {
        self.subscribed_where(|d| d.api == api)
    }

    fn subscribed_where(&self, keep: impl Fn(&DynamicSecret) -> bool) -> BTreeSet<String> {
        let mut dynamic = self.lock();
        dynamic.retain(|_, d| Arc::strong_count(&d.slot) > 1);
        dynamic.iter().filter(|(_, d)| keep(d)).map(|(n, _)| n.clone()).collect()
    }

    /// Have `f` called when a secret's own initial fetch times out.
    pub fn set_on_timeout(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_timeout.set(f);
    }

    /// Whether every subscribed secret has a value or timed out.
    pub fn all_ready(&self) -> bool {
        self.lock().values().filter(|d| Arc::strong_count(&d.slot) > 1).all(|d| d.slot.is_settled())
    }

    /// The initial fetch of every secret still missing timed out: warming goes on without
    /// them; counts `sds.<name>.init_fetch_timeout`.
    pub fn give_up_missing(&self) {
        let given_up: Vec<String> =
            self.lock().values().filter(|d| d.slot.give_up()).map(|d| d.slot.name.clone()).collect();
        for name in given_up {
            self.bump(&name, "init_fetch_timeout");
        }
    }

    /// Apply an SDS update: each secret is checked (PEM, key against certificate, CAs) and
    /// installed, or rejected with the reason while the last good value keeps serving.
    /// Removed secrets keep their last value (Envoy keeps serving it too).
    pub fn apply(&self, updated: Vec<ResourceUpdate>) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        let mut dynamic = self.lock();
        for u in updated {
            let Resource::Secret(secret) = u.resource else { continue };
            match LoadedSecret::load(secret) {
                Ok(loaded) => {
                    let entry = dynamic.entry(u.name.clone()).or_insert_with(|| DynamicSecret {
                        slot: SecretSlot::new(&u.name),
                        version: String::new(),
                        last_updated: None,
                        api: false,
                    });
                    entry.slot.set(loaded);
                    entry.version = u.version;
                    entry.last_updated = Some(SystemTime::now());
                }
                Err(reason) => rejected.push(Rejected { name: u.name, reason }),
            }
        }
        rejected
    }

    /// Count an SDS response's outcome per secret: `sds.<name>.update_attempt`,
    /// `update_success` or `update_rejected`, as Envoy's per-secret subscription stats.
    pub fn count_outcomes(&self, accepted: &[String], rejected: &[String]) {
        for (names, ok) in [(accepted, true), (rejected, false)] {
            for name in names {
                self.bump(name, "update_attempt");
                self.bump(name, if ok { "update_success" } else { "update_rejected" });
            }
        }
    }

    fn bump(&self, name: &str, what: &str) {
        let stat = format!("sds.{name}.{what}");
        self.stats.counter(&stat, Prom::plain(&stat)).inc();
    }

    /// The SDS secrets, for `/config_dump`.
    pub fn dynamic_secrets(&self) -> Vec<DynamicSecret> {
        self.lock().values().cloned().collect()
    }
}

impl SecretLookup for SecretManager {
    fn slot(&self, cfg: &model::SdsSecretConfig) -> Result<Arc<SecretSlot>, String> {
        match &cfg.source {
            None => self.statics.get(&cfg.name).cloned().ok_or_else(|| format!("Unknown static secret: {}", cfg.name)),
            Some(source) => {
                let slot = self
                    .lock()
                    .entry(cfg.name.clone())
                    .or_insert_with(|| DynamicSecret {
                        slot: SecretSlot::new(&cfg.name),
                        version: String::new(),
                        last_updated: None,
                        api: matches!(source.kind, model::ConfigSourceKind::Api(_)),
                    })
                    .slot
                    .clone();
                // Envoy's SDS init target: this reference's own initial_fetch_timeout.
                if let (Some(timeout), false, Ok(rt)) =
                    (source.initial_fetch_timeout, slot.is_settled(), tokio::runtime::Handle::try_current())
                {
                    let weak = Arc::downgrade(&slot);
                    let me = self.me.clone();
                    rt.spawn(async move {
                        tokio::time::sleep(timeout).await;
                        let (Some(slot), Some(me)) = (weak.upgrade(), me.upgrade()) else { return };
                        if slot.give_up() {
                            me.bump(&slot.name, "init_fetch_timeout");
                            if let Some(f) = me.on_timeout.get() {
                                f();
                            }
                        }
                    });
                }
                Ok(slot)
            }
        }
    }
}
