//! Runtime: the bootstrap's `layered_runtime` and RTDS `Runtime` resources.

use envoy_types::pb::envoy::config::bootstrap::v3 as b;
use envoy_types::pb::envoy::service::runtime::v3 as rt;
use envoy_types::pb::google::protobuf as pbuf;

use super::config_source::config_source;
use super::{at, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Translate `layered_runtime` (errors relative to it).
pub(crate) fn layered_runtime(l: &b::LayeredRuntime) -> ConfigResult<model::LayeredRuntime> {
    use b::runtime_layer::LayerSpecifier as L;
    let b::LayeredRuntime { layers } = l;
    let mut out = Vec::with_capacity(layers.len());
    let mut names = std::collections::HashSet::new();
    for (i, layer) in layers.iter().enumerate() {
        let b::RuntimeLayer { name, layer_specifier } = layer;
        let p = format!("layers[{i}]");
        if !names.insert(name.as_str()) {
            return Err(ConfigError::invalid(format!("{p}.name"), format!("Duplicate layer name: {name}")));
        }
        let kind = match layer_specifier {
            None => return Err(ConfigError::invalid(&p, "layer_specifier must be set")),
            Some(L::StaticLayer(s)) => {
                model::RuntimeLayerKind::Static(flatten(s).map_err(at(format!("{p}.static_layer")))?)
            }
            Some(L::AdminLayer(_)) => model::RuntimeLayerKind::Admin,
            Some(L::DiskLayer(_)) => return Err(unsupported_field(&format!("{p}.disk_layer"))),
            Some(L::RtdsLayer(b::runtime_layer::RtdsLayer { name: resource, rtds_config })) => {
                let cs = rtds_config
                    .as_ref()
                    .ok_or_else(|| ConfigError::invalid(format!("{p}.rtds_layer.rtds_config"), "must be set"))?;
                model::RuntimeLayerKind::Rtds {
                    resource: resource.clone(),
                    config_source: config_source(cs).map_err(at(format!("{p}.rtds_layer.rtds_config")))?,
                }
            }
        };
        out.push(model::RuntimeLayerSpec { name: name.clone(), kind });
    }
    Ok(model::LayeredRuntime { layers: out })
}

/// Translate an RTDS `Runtime` resource.
pub fn runtime_layer(r: &rt::Runtime) -> ConfigResult<model::RuntimeLayer> {
    let rt::Runtime { name, layer } = r;
    let values = match layer {
        Some(s) => flatten(s).map_err(at("layer"))?,
        None => model::RuntimeValues::new(),
    };
    Ok(model::RuntimeLayer { name: name.clone(), values })
}

/// Flatten a `Struct` into `a.b.c` keys, as Envoy's `SnapshotImpl::walkProtoValue` does: a
/// nested struct is a fractional percent if it has `numerator` (then it is a leaf), otherwise
/// its keys nest; lists and nulls are refused.
pub(crate) fn flatten(s: &pbuf::Struct) -> ConfigResult<model::RuntimeValues> {
    let mut out = model::RuntimeValues::new();
    walk(s, "", &mut out)?;
    Ok(out)
}

fn walk(s: &pbuf::Struct, prefix: &str, out: &mut model::RuntimeValues) -> ConfigResult<()> {
    use pbuf::value::Kind;
    for (k, v) in &s.fields {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match &v.kind {
            None | Some(Kind::NullValue(_)) => {
                return Err(ConfigError::invalid(&key, "Invalid runtime entry value for key: null"))
            }
            Some(Kind::ListValue(_)) => {
                return Err(ConfigError::invalid(&key, "Invalid runtime entry value for key: list"))
            }
            Some(Kind::StringValue(sv)) => {
                out.insert(key, model::RuntimeValue::parse(sv));
            }
            Some(Kind::BoolValue(b)) => {
                let mut v = model::RuntimeValue::parse(if *b { "true" } else { "false" });
                v.boolean = Some(*b);
                out.insert(key, v);
            }
            Some(Kind::NumberValue(n)) => {
                let mut v = model::RuntimeValue::parse(&format_number(*n));
                if n.fract() == 0.0 && *n >= 0.0 && *n < u64::MAX as f64 {
                    v.uint = Some(*n as u64);
                }
                out.insert(key, v);
            }
            Some(Kind::StructValue(inner)) => {
                if inner.fields.contains_key("numerator") {
                    out.insert(key.clone(), fractional(inner).map_err(at(&key))?);
                } else {
                    walk(inner, &key, out)?;
                }
            }
        }
    }
    Ok(())
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn fractional(s: &pbuf::Struct) -> ConfigResult<model::RuntimeValue> {
    use pbuf::value::Kind;
    let numerator = match s.fields.get("numerator").and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(n)) if *n >= 0.0 && n.fract() == 0.0 && *n <= f64::from(u32::MAX) => *n as u32,
        _ => return Err(ConfigError::invalid("numerator", "must be a non-negative integer")),
    };
    let denominator = match s.fields.get("denominator").and_then(|v| v.kind.as_ref()) {
        None => 100,
        Some(Kind::StringValue(d)) => match d.as_str() {
            "HUNDRED" => 100,
            "TEN_THOUSAND" => 10_000,
            "MILLION" => 1_000_000,
            other => return Err(ConfigError::invalid("denominator", format!("unknown denominator {other}"))),
        },
        Some(Kind::NumberValue(n)) => match *n as i64 {
            0 => 100,
            1 => 10_000,
            2 => 1_000_000,
            other => return Err(ConfigError::invalid("denominator", format!("unknown denominator {other}"))),
        },
        _ => return Err(ConfigError::invalid("denominator", "must be a string")),
    };
    let raw = format!("{{\"numerator\":{numerator},\"denominator\":{denominator}}}");
    Ok(model::RuntimeValue {
        raw,
        uint: None,
        fractional_percent: Some(model::FractionalPercent { numerator, denominator }),
        boolean: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(kind: pbuf::value::Kind) -> pbuf::Value {
        pbuf::Value { kind: Some(kind) }
    }

    fn st(fields: Vec<(&str, pbuf::Value)>) -> pbuf::Struct {
        pbuf::Struct { fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }

    #[test]
    fn flattens_like_envoy() {
        use pbuf::value::Kind;
        let s = st(vec![
            (
                "routing",
                value(Kind::StructValue(st(vec![
                    ("canary", value(Kind::NumberValue(25.0))),
                    ("enabled", value(Kind::BoolValue(true))),
                    (
                        "share",
                        value(Kind::StructValue(st(vec![
                            ("numerator", value(Kind::NumberValue(3.0))),
                            ("denominator", value(Kind::StringValue("TEN_THOUSAND".into()))),
                        ]))),
                    ),
                ]))),
            ),
            ("name", value(Kind::StringValue("x".into()))),
        ]);
        let v = flatten(&s).unwrap();
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "routing.canary", "routing.enabled", "routing.share"]);
        assert_eq!(v["routing.canary"].uint, Some(25));
        assert_eq!(v["routing.canary"].raw, "25");
        assert_eq!(v["routing.enabled"].boolean, Some(true));
        assert_eq!(
            v["routing.share"].fractional_percent,
            Some(model::FractionalPercent { numerator: 3, denominator: 10_000 })
        );
        let bad = st(vec![("l", value(Kind::ListValue(pbuf::ListValue { values: vec![] })))]);
        assert!(flatten(&bad).unwrap_err().to_string().contains("Invalid runtime entry value"));
    }
}
