//! Bootstrap decoding: YAML/JSON text -> proto3 JSON mapping over the Envoy descriptor pool
//! (with `Any` resolved by `@type`) -> PGV validation -> envoy-types prost structs.
//! Errors name the proto field path (`static_resources.clusters[0].connect_timeout`).

use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value as Json;

use crate::descriptor::pool;
use crate::error::ConfigError;
use crate::validate::{validate_message, validate_message_shallow};

/// Text format of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Proto3 JSON.
    Json,
    /// YAML, converted to JSON first (as Envoy does).
    Yaml,
    /// JSON if the text starts with `{`, otherwise YAML.
    Auto,
}

/// Decoding knobs.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Envoy's `--allow-unknown-static-fields`: drop unknown JSON fields instead of failing.
    pub allow_unknown_fields: bool,
}

/// Decodes and validates a bootstrap from YAML or JSON text.
pub fn bootstrap_from_str(text: &str, format: Format, opts: &DecodeOptions) -> Result<Bootstrap, ConfigError> {
    message_from_str::<Bootstrap>(text, format, opts)
}

/// Reads, decodes and validates a bootstrap file; the format comes from the extension.
pub fn bootstrap_from_file(path: &Path, opts: &DecodeOptions) -> Result<Bootstrap, ConfigError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let format = match ext.as_str() {
        "json" => Format::Json,
        "yaml" | "yml" => Format::Yaml,
        "pb" | "pb_text" => {
            return Err(ConfigError::unsupported(
                "",
                format!(
                    "{}: binary/text proto bootstraps (.pb, .pb_text) are not supported; use .yaml or .json",
                    path.display()
                ),
            ))
        }
        // Envoy guesses for unknown extensions too; we sniff JSON vs YAML.
        _ => Format::Auto,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid("", format!("cannot read {}: {e}", path.display())))?;
    bootstrap_from_str(&text, format, opts)
}

/// Decodes and validates any pool-known message type from YAML or JSON text.
pub fn message_from_str<M: Message + prost::Name + Default>(
    text: &str,
    format: Format,
    opts: &DecodeOptions,
) -> Result<M, ConfigError> {
    let json = text_to_json(text, format)?;
    message_from_json::<M>(&json, opts)
}

/// Decodes and validates any pool-known message type from a JSON value.
pub fn message_from_json<M: Message + prost::Name + Default>(
    json: &Json,
    opts: &DecodeOptions,
) -> Result<M, ConfigError> {
    let desc = descriptor_for::<M>()?;
    let dynamic = dynamic_from_json(&desc, json, opts)?;
    validate_message(&dynamic)?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::invalid("", format!("internal transcoding error: {e}")))
}

/// Parses text (JSON or YAML) into a JSON value, with `@type` keys moved first.
pub fn text_to_json(text: &str, format: Format) -> Result<Json, ConfigError> {
    let format = match format {
        Format::Auto if text.trim_start().starts_with('{') => Format::Json,
        Format::Auto => Format::Yaml,
        f => f,
    };
    let mut json = match format {
        Format::Json => {
            serde_json::from_str::<Json>(text).map_err(|e| ConfigError::invalid("", format!("invalid JSON: {e}")))?
        }
        _ => yaml_to_json(text)?,
    };
    hoist_type_keys(&mut json);
    Ok(json)
}

/// Proto3 JSON -> DynamicMessage of `desc` (no PGV validation), errors with proto paths.
pub fn dynamic_from_json(
    desc: &MessageDescriptor,
    json: &Json,
    opts: &DecodeOptions,
) -> Result<DynamicMessage, ConfigError> {
    let de_opts = DeserializeOptions::new().deny_unknown_fields(!opts.allow_unknown_fields);
    // `{}` for an Any is an empty Any (as in Envoy), which prost-reflect cannot read as is.
    let marked = crate::empty_any::marked_json(desc, json);
    let json = marked.as_ref().unwrap_or(json);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(json, &mut track);
    match DynamicMessage::deserialize_with_options(desc.clone(), de, &de_opts) {
        Ok(mut m) => {
            if marked.is_some() {
                crate::empty_any::clear_sentinels(&mut m);
            }
            Ok(m)
        }
        Err(e) => {
            let segments: Vec<serde_path_to_error::Segment> = track.path().iter().cloned().collect();
            let (path, leaf, at) = proto_path(desc, json, &segments);
            Err(ConfigError::invalid(path, explain(&e.to_string(), leaf, at)))
        }
    }
}

/// Validates a prost message against the PGV annotations of its proto type.
pub fn validate_prost<M: Message + prost::Name>(msg: &M) -> Result<(), ConfigError> {
    let desc = descriptor_for::<M>()?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::invalid("", format!("cannot decode {}: {e}", M::full_name())))?;
    validate_message(&dynamic)
}

/// Like [`validate_prost`] without looking into `Any` payloads (see
/// [`validate_message_shallow`]): the check Envoy makes when it decodes an xDS resource.
pub fn validate_prost_shallow<M: Message + prost::Name>(msg: &M) -> Result<(), ConfigError> {
    let desc = descriptor_for::<M>()?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::invalid("", format!("cannot decode {}: {e}", M::full_name())))?;
    validate_message_shallow(&dynamic)
}

/// Proto3 JSON of a message (proto field names, defaults omitted, `Any` expanded with
/// `@type`), for `/config_dump`. `Null` if the type (or a nested `Any`) is not in the pool.
pub fn to_json<M: Message + prost::Name>(msg: &M) -> Json {
    let result = descriptor_for::<M>().and_then(|desc| {
        let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
            .map_err(|e| ConfigError::invalid("", e.to_string()))?;
        render(dynamic).map_err(|e| ConfigError::invalid("", e.to_string()))
    });
    result.unwrap_or_else(|e| {
        tracing::warn!(type_name = %M::full_name(), error = %e, "cannot render message as JSON");
        Json::Null
    })
}

/// Proto3 JSON of an encoded message of type `message_name` (for `/config_dump`); `Null` if it
/// cannot be rendered.
pub fn json_of(message_name: &str, raw: &[u8]) -> Json {
    let Some(desc) = pool().get_message_by_name(message_name) else { return Json::Null };
    let Ok(dynamic) = DynamicMessage::decode(desc, raw) else { return Json::Null };
    render(dynamic).unwrap_or(Json::Null)
}

/// Proto3 JSON of a message with proto field names, defaults omitted, empty `Any`s as `{}`.
fn render(mut dynamic: DynamicMessage) -> Result<Json, serde_json::Error> {
    let opts = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true);
    let marked = crate::empty_any::mark_message(&mut dynamic);
    let mut json = dynamic.serialize_with_options(serde_json::value::Serializer, &opts)?;
    if marked {
        crate::empty_any::unmark_json(&mut json);
    }
    Ok(json)
}

fn descriptor_for<M: prost::Name>() -> Result<MessageDescriptor, ConfigError> {
    let name = M::full_name();
    pool()
        .get_message_by_name(&name)
        .ok_or_else(|| ConfigError::unsupported("", format!("message type {name} is not in the descriptor pool")))
}

/// Rewrites prost-reflect/serde reasons into Envoy-ish ones, naming the offending value.
fn explain(reason: &str, leaf: Leaf, at: Option<&Json>) -> String {
    if let Leaf::UnknownType(url) = &leaf {
        return format!("unknown type URL {url:?} (not a message type Pinion knows)");
    }
    if let Some(rest) = reason.strip_prefix("unrecognized field name ") {
        return format!("unknown field {rest}");
    }
    let Leaf::Field(fd) = &leaf else {
        return reason.to_string();
    };
    let shown = at.map(|v| v.to_string()).unwrap_or_default();
    if shown.is_empty() || shown.len() > 80 || fd.is_list() || fd.is_map() {
        return reason.to_string();
    }
    match fd.kind() {
        Kind::Message(m) if m.full_name() == "google.protobuf.Duration" => {
            format!("invalid duration {shown}: {reason}")
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            format!("invalid timestamp {shown}: {reason}")
        }
        // Enum errors already quote the value.
        Kind::Message(_) | Kind::Enum(_) => reason.to_string(),
        kind => format!("invalid {} value {shown}: {reason}", kind_name(&kind)),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64",
        Kind::Uint32 | Kind::Fixed32 => "uint32",
        Kind::Uint64 | Kind::Fixed64 => "uint64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

/// What the error path ended on, for a better reason.
enum Leaf {
    None,
    Field(FieldDescriptor),
    UnknownType(String),
}

/// Turns serde path segments (JSON keys, maybe camelCase) into a proto field path
/// (snake_case names, `[i]`, `["key"]` for proto maps), following `Any` payloads.
fn proto_path<'j>(
    root: &MessageDescriptor,
    json: &'j Json,
    segments: &[serde_path_to_error::Segment],
) -> (String, Leaf, Option<&'j Json>) {
    use serde_path_to_error::Segment;

    let mut out = String::new();
    let mut ctx = Ctx::Msg(root.clone());
    let mut cur = Some(json);
    let mut leaf = Leaf::None;
    let mut stop = false;
    let push = |out: &mut String, name: &str| {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(name);
    };
    for seg in segments {
        match seg {
            Segment::Map { key } => {
                let next_json = cur.and_then(|j| j.get(key.as_str()));
                ctx = match ctx {
                    Ctx::Msg(md) => {
                        let md = any_payload(&md, cur).unwrap_or(md);
                        if md.full_name() == "google.protobuf.Any" {
                            // The Any's own type could not be resolved: report the URL.
                            if let Some(url) = cur.and_then(|j| j.get("@type")).and_then(Json::as_str) {
                                leaf = Leaf::UnknownType(url.to_string());
                                stop = true;
                            }
                        }
                        let field = if stop {
                            None
                        } else {
                            md.get_field_by_name(key).or_else(|| md.get_field_by_json_name(key))
                        };
                        match field {
                            Some(fd) => {
                                push(&mut out, fd.name());
                                leaf = Leaf::Field(fd.clone());
                                field_ctx(fd)
                            }
                            None if stop => Ctx::Raw,
                            None => {
                                push(&mut out, key);
                                leaf = Leaf::None;
                                Ctx::Raw
                            }
                        }
                    }
                    Ctx::Field(fd) if fd.is_map() => {
                        out.push_str(&format!("[{key:?}]"));
                        leaf = Leaf::None;
                        match fd.kind() {
                            Kind::Message(entry) => match entry.map_entry_value_field().kind() {
                                Kind::Message(v) => msg_ctx(v),
                                _ => Ctx::Raw,
                            },
                            _ => Ctx::Raw,
                        }
                    }
                    _ => {
                        push(&mut out, key);
                        leaf = Leaf::None;
                        Ctx::Raw
                    }
                };
                cur = next_json;
                if stop {
                    break;
                }
            }
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                cur = cur.and_then(|j| j.get(*index));
                ctx = match ctx {
                    Ctx::Field(fd) if fd.is_list() => match fd.kind() {
                        Kind::Message(m) => msg_ctx(m),
                        _ => Ctx::Raw,
                    },
                    _ => Ctx::Raw,
                };
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    // An unknown `@type` fails before any payload key is read: the path ends on the Any.
    if let Leaf::Field(fd) = &leaf {
        if let Kind::Message(m) = fd.kind() {
            if m.full_name() == "google.protobuf.Any" && !fd.is_list() {
                if let Some(url) = cur.and_then(|j| j.get("@type")).and_then(Json::as_str) {
                    if any_payload(&m, cur).is_none() {
                        leaf = Leaf::UnknownType(url.to_string());
                    }
                }
            }
        }
    }
    if let Some(Json::Object(o)) = cur {
        if let (Some(Json::String(url)), Ctx::Msg(m)) = (o.get("@type"), &ctx) {
            if m.full_name() == "google.protobuf.Any" && any_payload(m, cur).is_none() {
                leaf = Leaf::UnknownType(url.clone());
            }
        }
    }
    (out, leaf, cur)
}

/// Where [`proto_path`] is while walking the segments.
enum Ctx {
    Msg(MessageDescriptor),
    Field(FieldDescriptor),
    Raw,
}

fn field_ctx(fd: FieldDescriptor) -> Ctx {
    if fd.is_list() || fd.is_map() {
        return Ctx::Field(fd);
    }
    match fd.kind() {
        Kind::Message(m) => msg_ctx(m),
        _ => Ctx::Field(fd),
    }
}
fn msg_ctx(m: MessageDescriptor) -> Ctx {
    // Well-known types other than Any have special JSON shapes: keep raw keys below them.
    if m.full_name().starts_with("google.protobuf.") && m.full_name() != "google.protobuf.Any" {
        Ctx::Raw
    } else {
        Ctx::Msg(m)
    }
}

/// The payload descriptor of an `Any` JSON object, if `md` is Any and the type is known.
fn any_payload(md: &MessageDescriptor, json: Option<&Json>) -> Option<MessageDescriptor> {
    if md.full_name() != "google.protobuf.Any" {
        return None;
    }
    let url = json?.get("@type")?.as_str()?;
    let name = url.rsplit('/').next().unwrap_or(url);
    md.parent_pool().get_message_by_name(name)
}

/// Moves `@type` to the front of every object: prost-reflect buffers keys seen before it,
/// which loses error paths (only matters if serde_json's `preserve_order` is ever on).
fn hoist_type_keys(v: &mut Json) {
    match v {
        Json::Object(map) => {
            if let Some(t) = map.remove("@type") {
                let rest = std::mem::take(map);
                map.insert("@type".to_string(), t);
                map.extend(rest);
            }
            for (_, child) in map.iter_mut() {
                hoist_type_keys(child);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(hoist_type_keys),
        _ => {}
    }
}

/// YAML -> JSON the way Envoy does it: merge keys applied, scalar keys stringified,
/// `!ignore`-tagged keys dropped, other tags rejected.
fn yaml_to_json(text: &str) -> Result<Json, ConfigError> {
    let mut y: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ConfigError::invalid("", format!("invalid YAML: {e}")))?;
    y.apply_merge().map_err(|e| ConfigError::invalid("", format!("invalid YAML merge: {e}")))?;
    if y.is_null() {
        return Err(ConfigError::invalid("", "empty YAML document"));
    }
    yaml_value(y, &mut String::new())
}

fn yaml_value(y: serde_yaml::Value, path: &mut String) -> Result<Json, ConfigError> {
    use serde_yaml::Value as Y;
    Ok(match y {
        Y::Null => Json::Null,
        Y::Bool(b) => Json::Bool(b),
        Y::Number(n) => yaml_number(&n),
        Y::String(s) => Json::String(s),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(yaml_value(item, path)?);
                path.truncate(len);
            }
            Json::Array(out)
        }
        Y::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Tagged(t) if t.tag == "!ignore" => continue,
                    other => {
                        return Err(ConfigError::invalid(
                            path.clone(),
                            format!("unsupported YAML mapping key {}", yaml_kind(&other)),
                        ))
                    }
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let value = yaml_value(v, path)?;
                path.truncate(len);
                out.insert(key, value);
            }
            Json::Object(out)
        }
        Y::Tagged(t) => return Err(ConfigError::invalid(path.clone(), format!("unsupported YAML tag {}", t.tag))),
    })
}

fn yaml_number(n: &serde_yaml::Number) -> Json {
    if let Some(u) = n.as_u64() {
        Json::from(u)
    } else if let Some(i) = n.as_i64() {
        Json::from(i)
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        // Proto3 JSON spells non-finite floats as strings.
        serde_json::Number::from_f64(f).map(Json::Number).unwrap_or_else(|| {
            Json::String(
                if f.is_nan() {
                    "NaN"
                } else if f > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                }
                .to_string(),
            )
        })
    }
}

fn yaml_kind(v: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => "null",
        Y::Bool(_) => "bool",
        Y::Number(_) => "number",
        Y::String(_) => "string",
        Y::Sequence(_) => "(a sequence)",
        Y::Mapping(_) => "(a mapping)",
        Y::Tagged(_) => "(a tagged value)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        bootstrap_from_str(yaml, Format::Yaml, &DecodeOptions::default()).unwrap_err().to_string()
    }

    #[test]
    fn minimal_bootstrap_decodes() {
        let b = bootstrap_from_str("admin: {}", Format::Auto, &DecodeOptions::default()).unwrap();
        assert!(b.admin.is_some());
        let b = bootstrap_from_str("{\"admin\": {}}", Format::Auto, &DecodeOptions::default()).unwrap();
        assert!(b.admin.is_some());
    }

    #[test]
    fn json_errors_carry_proto_paths() {
        let e = err("staticResources:\n  clusters:\n  - name: a\n    connectTimeout: abc\n");
        assert!(e.starts_with("static_resources.clusters[0].connect_timeout: "), "{e}");
    }

    #[test]
    fn yaml_oddities_are_errors_not_panics() {
        assert!(err("").contains("empty"));
        assert!(err("? [a, b]\n: 1\n").contains("mapping key"));
        assert!(err("admin: !foo {}\n").contains("tag"));
        assert!(err("a: 1\n---\nb: 2\n").contains("YAML"));
    }

    #[test]
    fn to_json_round_trips() {
        let b =
            bootstrap_from_str("node: {id: n1}\nstats_flush_interval: 5s\n", Format::Yaml, &DecodeOptions::default())
                .unwrap();
        let j = to_json(&b);
        assert_eq!(j["node"]["id"], "n1");
        assert_eq!(j["stats_flush_interval"], "5s");
    }
}
