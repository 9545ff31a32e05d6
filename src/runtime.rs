//! Envoy's layered runtime: static, admin and RTDS layers merged into one immutable snapshot,
//! published with an atomic swap. Workers read it lock-free (route `runtime_fraction`); the
//! control thread rebuilds it when RTDS delivers a layer or `/runtime_modify` changes the admin
//! layer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use pinion_xds::model::{self, FractionalPercent, RuntimeValue};

use crate::stats::{Counter, Gauge, Prom, Store};

/// The merged view.
#[derive(Debug, Default)]
pub struct RuntimeSnapshot {
    /// Final values.
    pub values: BTreeMap<String, RuntimeValue>,
    /// Layer names in order, with each layer's values (for `/runtime`).
    pub layers: Vec<(String, BTreeMap<String, RuntimeValue>)>,
}

impl RuntimeSnapshot {
    /// Envoy's `featureEnabled(key, default, random)`: a fractional percent in the runtime, or
    /// an integer numerator over the default's denominator, or the default.
    pub fn feature_enabled(&self, key: &str, default: &FractionalPercent, random: u64) -> bool {
        let percent = match self.values.get(key) {
            Some(v) if v.fractional_percent.is_some() => v.fractional_percent.unwrap_or(*default),
            Some(RuntimeValue { uint: Some(n), .. }) => {
                FractionalPercent { numerator: u32::try_from(*n).unwrap_or(u32::MAX), denominator: default.denominator }
            }
            _ => *default,
        };
        percent.evaluate(random)
    }

    /// Envoy's `getDouble(key, default)`: the key's value if it is a number, else `default`.
    pub fn get_double(&self, key: &str, default: f64) -> f64 {
        self.values.get(key).and_then(|v| v.raw.trim().parse::<f64>().ok()).unwrap_or(default)
    }

    /// Envoy's `getInteger(key, default)`: the key's integer value, else `default`.
    pub fn get_integer(&self, key: &str, default: u64) -> u64 {
        self.values.get(key).and_then(|v| v.uint).unwrap_or(default)
    }
}

/// The process's runtime (one per process, like Envoy's).
// Global on purpose: route matching reads it per request on every worker, lock-free, and it is
// process-wide in Envoy too; a handle threaded into every route table would buy nothing.
static CURRENT: OnceLock<ArcSwap<RuntimeSnapshot>> = OnceLock::new();

/// The current snapshot.
pub fn snapshot() -> arc_swap::Guard<Arc<RuntimeSnapshot>> {
    CURRENT.get_or_init(Default::default).load()
}

enum Layer {
    Static(BTreeMap<String, RuntimeValue>),
    Admin(BTreeMap<String, RuntimeValue>),
    Rtds { resource: String, values: BTreeMap<String, RuntimeValue> },
}

/// The runtime's layers and stats; owned by the control thread.
pub struct Runtime {
    layers: Mutex<Vec<(String, Layer)>>,
    load_success: Counter,
    num_keys: Gauge,
    num_layers: Gauge,
    admin_overrides_active: Gauge,
}

/// Why `/runtime_modify` failed.
#[derive(Debug, thiserror::Error)]
pub enum ModifyError {
    /// No admin layer in `layered_runtime`.
    #[error("No admin layer specified")]
    NoAdminLayer,
}

impl Runtime {
    /// Build from the bootstrap's `layered_runtime` and publish the first snapshot.
    pub fn new(cfg: &model::LayeredRuntime, stats: &Store) -> Arc<Self> {
        let layers = cfg
            .layers
            .iter()
            .map(|l| {
                let layer = match &l.kind {
                    model::RuntimeLayerKind::Static(v) => Layer::Static(v.clone()),
                    model::RuntimeLayerKind::Admin => Layer::Admin(BTreeMap::new()),
                    model::RuntimeLayerKind::Rtds { resource, .. } => {
                        Layer::Rtds { resource: resource.clone(), values: BTreeMap::new() }
                    }
                };
                (l.name.clone(), layer)
            })
            .collect();
        let c = |n: &str| stats.counter(&format!("runtime.{n}"), Prom::plain(&format!("runtime.{n}")));
        let g = |n: &str| stats.gauge(&format!("runtime.{n}"), Prom::plain(&format!("runtime.{n}")));
        let rt = Arc::new(Runtime {
            layers: Mutex::new(layers),
            load_success: c("load_success"),
            num_keys: g("num_keys"),
            num_layers: g("num_layers"),
            admin_overrides_active: g("admin_overrides_active"),
        });
        c("load_error");
        rt.publish(&rt.lock());
        rt
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Layer)>> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The RTDS resource names the layers subscribe to.
    pub fn rtds_names(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|(_, l)| match l {
                Layer::Rtds { resource, .. } => Some(resource.clone()),
                _ => None,
            })
            .collect()
    }

    /// Install an RTDS layer (or clear it: `None`, when the resource is removed).
    pub fn set_rtds(&self, resource: &str, layer: Option<&model::RuntimeLayer>) {
        let mut layers = self.lock();
        for (_, l) in layers.iter_mut() {
            if let Layer::Rtds { resource: r, values } = l {
                if r == resource {
                    *values = layer.map(|l| l.values.clone()).unwrap_or_default();
                }
            }
        }
        self.publish(&layers);
    }

    /// `/runtime_modify?k=v&...`: set keys in the admin layer; an empty value removes the key.
    pub fn modify(&self, kv: &[(String, String)]) -> Result<(), ModifyError> {
        let mut layers = self.lock();
        let admin = layers
            .iter_mut()
            .find_map(|(_, l)| match l {
                Layer::Admin(v) => Some(v),
                _ => None,
            })
            .ok_or(ModifyError::NoAdminLayer)?;
        for (k, v) in kv {
            if v.is_empty() {
                admin.remove(k);
            } else {
                admin.insert(k.clone(), RuntimeValue::parse(v));
            }
        }
        self.publish(&layers);
        Ok(())
    }

    fn publish(&self, layers: &[(String, Layer)]) {
        let mut snap = RuntimeSnapshot::default();
        let mut admin_keys = 0;
        for (name, l) in layers {
            let values = match l {
                Layer::Static(v) | Layer::Rtds { values: v, .. } => v,
                Layer::Admin(v) => {
                    admin_keys += v.len();
                    v
                }
            };
            for (k, v) in values {
                snap.values.insert(k.clone(), v.clone());
            }
            snap.layers.push((name.clone(), values.clone()));
        }
        self.load_success.inc();
        self.num_keys.set(snap.values.len() as i64);
        self.num_layers.set(layers.len() as i64);
        self.admin_overrides_active.set(i64::from(admin_keys > 0));
        CURRENT.get_or_init(Default::default).store(Arc::new(snap));
    }

    /// `/runtime` as Envoy renders it.
    pub fn dump(&self) -> serde_json::Value {
        let snap = snapshot();
        let mut entries = serde_json::Map::new();
        for (k, v) in &snap.values {
            let layer_values: Vec<&str> =
                snap.layers.iter().map(|(_, l)| l.get(k).map_or("", |v| v.raw.as_str())).collect();
            entries.insert(k.clone(), serde_json::json!({ "final_value": v.raw, "layer_values": layer_values }));
        }
        let layers: Vec<&str> = snap.layers.iter().map(|(n, _)| n.as_str()).collect();
        serde_json::json!({ "entries": entries, "layers": layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(values: &[(&str, RuntimeValue)]) -> RuntimeSnapshot {
        RuntimeSnapshot { values: values.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(), layers: Vec::new() }
    }

    #[test]
    fn feature_enabled_follows_envoy() {
        let default = FractionalPercent { numerator: 10, denominator: 100 };
        // No key: the default (10 of every 100 random values).
        let s = snap(&[]);
        assert_eq!((0..100).filter(|r| s.feature_enabled("k", &default, *r)).count(), 10);
        // An integer is a numerator over the default's denominator.
        let s = snap(&[("k", RuntimeValue::parse("50"))]);
        assert_eq!((0..100).filter(|r| s.feature_enabled("k", &default, *r)).count(), 50);
        // A fractional percent brings its own denominator.
        let mut v = RuntimeValue::parse("");
        v.fractional_percent = Some(FractionalPercent { numerator: 5, denominator: 10_000 });
        let s = snap(&[("k", v)]);
        assert_eq!((0..10_000).filter(|r| s.feature_enabled("k", &default, *r)).count(), 5);
        // A value that is no number: the default.
        let s = snap(&[("k", RuntimeValue::parse("abc"))]);
        assert_eq!((0..100).filter(|r| s.feature_enabled("k", &default, *r)).count(), 10);
    }
}
