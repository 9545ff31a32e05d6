//! Runtime (Envoy's layered runtime and RTDS): flat key -> value layers, later layers win.

use std::collections::BTreeMap;

/// One runtime value. Envoy keeps a value's string form and, where it parses, its numeric,
/// boolean or fractional-percent reading; so does Pinion.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeValue {
    /// The string form (what `/runtime` shows).
    pub raw: String,
    /// As an unsigned integer, if it is one.
    pub uint: Option<u64>,
    /// As a `FractionalPercent` (`{numerator, denominator}`), if it is one.
    pub fractional_percent: Option<FractionalPercent>,
    /// As a boolean, if it is one.
    pub boolean: Option<bool>,
}

/// `envoy.type.v3.FractionalPercent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FractionalPercent {
    /// `numerator`.
    pub numerator: u32,
    /// `denominator` as a number: 100, 10,000 or 1,000,000.
    pub denominator: u32,
}

impl FractionalPercent {
    /// Envoy's `evaluateFractionalPercent`: `random % denominator < numerator`.
    pub fn evaluate(&self, random: u64) -> bool {
        self.denominator > 0 && random % u64::from(self.denominator) < u64::from(self.numerator)
    }
}

/// A layer's values, keyed by the flattened key (`a.b.c`).
pub type RuntimeValues = BTreeMap<String, RuntimeValue>;

/// A runtime layer delivered by RTDS (`envoy.service.runtime.v3.Runtime`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeLayer {
    /// The RTDS resource name.
    pub name: String,
    /// Its values.
    pub values: RuntimeValues,
}

/// `Bootstrap.layered_runtime`, translated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayeredRuntime {
    /// Layers in order; a key in a later layer overrides earlier ones.
    pub layers: Vec<RuntimeLayerSpec>,
}

/// One layer of the bootstrap's `layered_runtime`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeLayerSpec {
    /// Layer name (shown by `/runtime`).
    pub name: String,
    /// What it holds.
    pub kind: RuntimeLayerKind,
}

/// Layer kinds Pinion implements (disk layers are refused as unsupported).
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeLayerKind {
    /// `static_layer`.
    Static(RuntimeValues),
    /// `admin_layer`: set through `/runtime_modify`.
    Admin,
    /// `rtds_layer`: the RTDS resource `name`, fetched from `config_source`.
    Rtds {
        /// RTDS resource name.
        resource: String,
        /// Where it comes from.
        config_source: super::ConfigSource,
    },
}

impl RuntimeValue {
    /// Parse a scalar the way Envoy's runtime snapshot does (`SnapshotImpl::createEntry`).
    pub fn parse(s: &str) -> Self {
        let t = s.trim();
        let boolean = match t.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        RuntimeValue { raw: s.to_string(), uint: t.parse::<u64>().ok(), fractional_percent: None, boolean }
    }
}
