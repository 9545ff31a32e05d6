//! Empty `google.protobuf.Any` values in proto3 JSON. Envoy's JSON parser reads `{}` where an
//! `Any` is expected as an `Any` with neither type URL nor payload, and Envoy gives that a
//! meaning (`FilterConfig{config: {}}` enables a disabled HTTP filter on a route). prost-reflect
//! insists on `@type` in both directions, so decoding first marks such values with a sentinel
//! type and clears the sentinel afterwards; rendering does the reverse.

use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};
use serde_json::Value as Json;

/// Stands in for "no type" while prost-reflect handles the message (never seen outside).
const SENTINEL_URL: &str = "pinion.internal/google.protobuf.Empty";
const ANY: &str = "google.protobuf.Any";

/// The JSON prost-reflect accepts for an empty `Any`.
fn sentinel_json() -> Json {
    serde_json::json!({ "@type": SENTINEL_URL, "value": {} })
}

/// `json` (a `desc`) with every `{}` at an `Any` (following `Any` payloads) replaced by the
/// sentinel, or `None` when there is none.
pub(crate) fn marked_json(desc: &MessageDescriptor, json: &Json) -> Option<Json> {
    // Cheap common case: no empty object at all, nothing to copy.
    if !has_empty_object(json) {
        return None;
    }
    let mut out = json.clone();
    mark_message_json(desc, &mut out).then_some(out)
}

fn has_empty_object(json: &Json) -> bool {
    match json {
        Json::Object(m) => m.is_empty() || m.values().any(has_empty_object),
        Json::Array(a) => a.iter().any(has_empty_object),
        _ => false,
    }
}

fn mark_message_json(desc: &MessageDescriptor, json: &mut Json) -> bool {
    let Json::Object(map) = json else { return false };
    let mut desc = desc.clone();
    if desc.full_name() == ANY {
        // The payload's fields sit next to `@type`; well-known payloads carry no Any we follow.
        let name = map.get("@type").and_then(Json::as_str).map(|u| u.rsplit('/').next().unwrap_or(u).to_string());
        match name.and_then(|n| desc.parent_pool().get_message_by_name(&n)) {
            Some(p) if !p.full_name().starts_with("google.protobuf.") => desc = p,
            _ => return false,
        }
    }
    let mut found = false;
    for (key, value) in map.iter_mut() {
        let Some(fd) = desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key)) else { continue };
        let Kind::Message(m) = fd.kind() else { continue };
        if fd.is_map() {
            let Kind::Message(v) = m.map_entry_value_field().kind() else { continue };
            if let Json::Object(entries) = value {
                for e in entries.values_mut() {
                    found |= mark_value(&v, e);
                }
            }
        } else if fd.is_list() {
            if let Json::Array(items) = value {
                for item in items {
                    found |= mark_value(&m, item);
                }
            }
        } else {
            found |= mark_value(&m, value);
        }
    }
    found
}

fn mark_value(desc: &MessageDescriptor, json: &mut Json) -> bool {
    if desc.full_name() == ANY && json.as_object().is_some_and(|o| o.is_empty()) {
        *json = sentinel_json();
        return true;
    }
    if desc.full_name() == ANY || !desc.full_name().starts_with("google.protobuf.") {
        return mark_message_json(desc, json);
    }
    false
}

/// Turn sentinel `Any`s back into empty ones (following `Any` payloads).
pub(crate) fn clear_sentinels(msg: &mut DynamicMessage) {
    walk(msg, &mut |url, value| {
        if url == SENTINEL_URL {
            url.clear();
            value.clear();
            true
        } else {
            false
        }
    });
}

/// Give empty `Any`s the sentinel type so prost-reflect can render them; returns whether
/// there was one (then [`unmark_json`] must run on the rendering).
pub(crate) fn mark_message(msg: &mut DynamicMessage) -> bool {
    walk(msg, &mut |url, value| {
        if url.is_empty() && value.is_empty() {
            *url = SENTINEL_URL.to_string();
            true
        } else {
            false
        }
    })
}

/// Replace rendered sentinels with `{}`.
pub(crate) fn unmark_json(json: &mut Json) {
    match json {
        Json::Object(m) => {
            if m.get("@type").and_then(Json::as_str) == Some(SENTINEL_URL) {
                m.clear();
                return;
            }
            m.values_mut().for_each(unmark_json);
        }
        Json::Array(a) => a.iter_mut().for_each(unmark_json),
        _ => {}
    }
}

/// Call `f(type_url, value)` on every `Any` in `msg`, payloads included; returns whether
/// anything changed.
fn walk(msg: &mut DynamicMessage, f: &mut dyn FnMut(&mut String, &mut Vec<u8>) -> bool) -> bool {
    if msg.descriptor().full_name() == ANY {
        return walk_any(msg, f);
    }
    let mut changed = false;
    for (_, v) in msg.fields_mut() {
        changed |= walk_value(v, f);
    }
    changed
}

fn walk_value(v: &mut Value, f: &mut dyn FnMut(&mut String, &mut Vec<u8>) -> bool) -> bool {
    match v {
        Value::Message(m) => walk(m, f),
        Value::List(items) => items.iter_mut().fold(false, |c, i| walk_value(i, f) | c),
        Value::Map(entries) => entries.values_mut().fold(false, |c, e| walk_value(e, f) | c),
        _ => false,
    }
}

fn walk_any(any: &mut DynamicMessage, f: &mut dyn FnMut(&mut String, &mut Vec<u8>) -> bool) -> bool {
    let mut url = any.get_field_by_name("type_url").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let mut bytes = any.get_field_by_name("value").and_then(|v| v.as_bytes().map(|b| b.to_vec())).unwrap_or_default();
    let mut changed = f(&mut url, &mut bytes);
    if !changed && !bytes.is_empty() {
        // Follow the payload; an unknown or undecodable one is left for the validator.
        let name = url.rsplit('/').next().unwrap_or(&url);
        if let Some(desc) = any.descriptor().parent_pool().get_message_by_name(name) {
            if let Ok(mut payload) = DynamicMessage::decode(desc, bytes.as_slice()) {
                if walk(&mut payload, f) {
                    bytes = prost::Message::encode_to_vec(&payload);
                    changed = true;
                }
            }
        }
    }
    if changed {
        any.set_field_by_name("type_url", Value::String(url));
        any.set_field_by_name("value", Value::Bytes(bytes.into()));
    }
    changed
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::{FilterConfig, RouteConfiguration};
    use prost::Message;
    use serde_json::json;

    use crate::decode::{message_from_str, to_json, DecodeOptions, Format};

    const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

    fn route_config(f: &str) -> Result<RouteConfiguration, crate::ConfigError> {
        let text = format!(
            "virtual_hosts: [ {{ name: vh, domains: ['*'], routes: [], typed_per_filter_config: {{ f: {{ '@type': {FILTER_CONFIG}, {f} }} }} }} ]"
        );
        message_from_str(&text, Format::Yaml, &DecodeOptions::default())
    }

    #[test]
    fn empty_object_is_an_empty_any_both_ways() {
        // Read as Envoy reads it: neither type URL nor payload.
        let proto = route_config("config: {}").unwrap();
        let any = &proto.virtual_hosts[0].typed_per_filter_config["f"];
        let fc = FilterConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(fc.config, Some(Default::default()));
        // Rendered (config dumps) as written.
        let dumped = to_json(&proto);
        assert_eq!(
            dumped["virtual_hosts"][0]["typed_per_filter_config"]["f"],
            json!({"@type": FILTER_CONFIG, "config": {}})
        );
    }

    #[test]
    fn only_empty_objects_at_any_fields_change() {
        // A non-empty Any still needs its @type...
        let e = route_config("config: { disabled: true }").unwrap_err();
        assert_eq!(e.path, r#"virtual_hosts[0].typed_per_filter_config["f"].config"#, "{e}");
        // ...and `{}` elsewhere keeps its meaning (an empty message), next to an empty Any.
        let text = format!(
            "virtual_hosts: [ {{ name: vh, domains: ['*'], routes: [ {{ match: {{ prefix: /, grpc: {{}} }}, route: {{ cluster: c }}, typed_per_filter_config: {{ f: {{ '@type': {FILTER_CONFIG}, config: {{}} }} }} }} ] }} ]"
        );
        let proto: RouteConfiguration = message_from_str(&text, Format::Yaml, &DecodeOptions::default()).unwrap();
        let route = &proto.virtual_hosts[0].routes[0];
        assert!(route.r#match.as_ref().unwrap().grpc.is_some());
        let fc = FilterConfig::decode(route.typed_per_filter_config["f"].value.as_slice()).unwrap();
        assert_eq!(fc.config, Some(Default::default()));
    }
}
