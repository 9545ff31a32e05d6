//! Generic protoc-gen-validate (PGV) enforcement over [`DynamicMessage`]s.
//!
//! Every rule comes from the `validate.*` annotations in the descriptor pool (field option
//! `validate.rules`, oneof option `validate.required`, message options `validate.disabled`
//! and `validate.ignored`); nothing here knows about individual Envoy fields. On top of PGV,
//! every `google.protobuf.Duration` must be non-negative and in range (as Envoy checks), and
//! every `google.protobuf.Any` payload must be a type the pool knows and is validated in turn.
//!
//! The walker never panics on input: it is fed whatever a control plane sends.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use envoy_types::pb::google::protobuf::{Duration as PbDuration, Timestamp as PbTimestamp};
use envoy_types::pb::validate::{
    bytes_rules, field_rules::Type as RuleType, string_rules, AnyRules, BytesRules, DurationRules, EnumRules,
    FieldRules, KnownRegex, MapRules, RepeatedRules, StringRules, TimestampRules,
};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};

use crate::error::ConfigError;

/// Nesting bound: prost caps one decode at 100 levels, but `Any` payloads decode afresh.
const MAX_DEPTH: usize = 200;

/// Largest Duration seconds protobuf allows (10,000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// Validates `msg` (and everything reachable from it) against its PGV annotations.
pub fn validate_message(msg: &DynamicMessage) -> Result<(), ConfigError> {
    validate_message_at(msg, "")
}

/// Like [`validate_message`], with every error path prefixed by `root` (e.g. a resource name).
pub fn validate_message_at(msg: &DynamicMessage, root: &str) -> Result<(), ConfigError> {
    validate_with(msg, root, true)
}

/// Like [`validate_message`] but without looking into `Any` payloads (the `Any` field rules
/// still apply): what Envoy checks when it decodes the resources of an xDS response
/// (`MessageUtil::anyConvertAndValidate`, which does not recurse into `Any`). Typed configs are
/// validated later, per resource, when the resource is built.
pub fn validate_message_shallow(msg: &DynamicMessage) -> Result<(), ConfigError> {
    validate_with(msg, "", false)
}

fn validate_with(msg: &DynamicMessage, root: &str, into_any: bool) -> Result<(), ConfigError> {
    let pool = msg.descriptor().parent_pool().clone();
    let own = crate::descriptor::pool();
    let mut path = Path::default();
    let result = if pool == own {
        shared_validator(into_any).check_message(msg, &mut path, 0, true)
    } else {
        // A foreign pool gets its own (uncached) rule tables.
        Validator::new(pool, into_any).check_message(msg, &mut path, 0, true)
    };
    result.map_err(|e| e.under(root))
}

static DEEP: std::sync::Mutex<Option<Arc<Validator>>> = std::sync::Mutex::new(None);
static SHALLOW: std::sync::Mutex<Option<Arc<Validator>>> = std::sync::Mutex::new(None);

fn shared_validator(into_any: bool) -> Arc<Validator> {
    let cell = if into_any { &DEEP } else { &SHALLOW };
    let mut v = cell.lock().unwrap_or_else(|e| e.into_inner());
    v.get_or_insert_with(|| Arc::new(Validator::new(crate::descriptor::pool(), into_any))).clone()
}

/// Drop the cached rule tables (see `descriptor::release`).
pub(crate) fn release_caches() {
    for cell in [&DEEP, &SHALLOW] {
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Field path from the root, rendered only when an error is reported.
#[derive(Default)]
struct Path(Vec<Seg>);

enum Seg {
    Field(FieldDescriptor),
    Name(String),
    Index(usize),
    Key(MapKey),
}

impl Path {
    fn render(&self) -> String {
        let mut s = String::new();
        for seg in &self.0 {
            match seg {
                Seg::Field(fd) => push_name(&mut s, fd.name()),
                Seg::Name(n) => push_name(&mut s, n),
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
                Seg::Key(MapKey::String(k)) => s.push_str(&format!("[{k:?}]")),
                Seg::Key(k) => s.push_str(&format!("[{}]", map_key_display(k))),
            }
        }
        s
    }

    fn err(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.render(), reason)
    }
}

fn push_name(s: &mut String, name: &str) {
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(name);
}

fn map_key_display(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(v) => format!("{v:?}"),
    }
}

/// PGV rules of one field, with patterns compiled once.
struct Compiled {
    rules: FieldRules,
    regex: Option<regex::Regex>,
    bytes_regex: Option<regex::bytes::Regex>,
    items: Option<Box<Compiled>>,
    keys: Option<Box<Compiled>>,
    values: Option<Box<Compiled>>,
}

impl Compiled {
    fn new(rules: FieldRules) -> Self {
        let mut c = Compiled {
            regex: None,
            bytes_regex: None,
            items: None,
            keys: None,
            values: None,
            rules: FieldRules::default(),
        };
        match &rules.r#type {
            Some(RuleType::String(s)) => {
                c.regex = s.pattern.as_deref().and_then(|p| compile_regex(p, regex::Regex::new));
            }
            Some(RuleType::Bytes(b)) => {
                c.bytes_regex = b.pattern.as_deref().and_then(|p| compile_regex(p, regex::bytes::Regex::new));
            }
            Some(RuleType::Repeated(r)) => {
                c.items = r.items.clone().map(|i| Box::new(Compiled::new(*i)));
            }
            Some(RuleType::Map(m)) => {
                c.keys = m.keys.clone().map(|k| Box::new(Compiled::new(*k)));
                c.values = m.values.clone().map(|v| Box::new(Compiled::new(*v)));
            }
            _ => {}
        }
        c.rules = rules;
        c
    }

    fn message_skip(&self) -> bool {
        self.rules.message.as_ref().and_then(|m| m.skip).unwrap_or(false)
    }

    fn message_required(&self) -> bool {
        let by_type = match &self.rules.r#type {
            Some(RuleType::Duration(d)) => d.required,
            Some(RuleType::Timestamp(t)) => t.required,
            Some(RuleType::Any(a)) => a.required,
            _ => None,
        };
        by_type.unwrap_or(false) || self.rules.message.as_ref().and_then(|m| m.required).unwrap_or(false)
    }
}

fn compile_regex<R, E: Display>(pattern: &str, f: impl Fn(&str) -> Result<R, E>) -> Option<R> {
    match f(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            // The pattern comes from our own descriptors (RE2 syntax); a miss is a gap in
            // Pinion, not bad input, so it is logged and the pattern rule is not applied.
            tracing::warn!(pattern, error = %e, "PGV pattern not supported by regex crate");
            None
        }
    }
}

struct FieldPlan {
    fd: FieldDescriptor,
    rules: Option<Compiled>,
}

/// What to check on one message type: fields with rules or message values, required oneofs.
struct MessagePlan {
    /// `validate.disabled` / `validate.ignored`: PGV rules off for this message and below.
    disabled: bool,
    fields: Vec<FieldPlan>,
    required_oneofs: Vec<(String, Vec<FieldDescriptor>)>,
}

struct Validator {
    pool: DescriptorPool,
    ext_rules: Option<ExtensionDescriptor>,
    ext_disabled: Option<ExtensionDescriptor>,
    ext_ignored: Option<ExtensionDescriptor>,
    ext_oneof_required: Option<ExtensionDescriptor>,
    /// Whether `Any` payloads are decoded and validated too.
    into_any: bool,
    /// Plans built lazily per message type: only the types actually seen cost memory.
    plans: RwLock<HashMap<String, Arc<MessagePlan>>>,
}

impl Validator {
    fn new(pool: DescriptorPool, into_any: bool) -> Self {
        let ext = |name: &str| pool.get_extension_by_name(name);
        let ext_rules = ext("validate.rules");
        let ext_disabled = ext("validate.disabled");
        let ext_ignored = ext("validate.ignored");
        let ext_oneof_required = ext("validate.required");
        Validator {
            pool,
            ext_rules,
            ext_disabled,
            ext_ignored,
            ext_oneof_required,
            into_any,
            plans: RwLock::new(HashMap::new()),
        }
    }

    fn plan(&self, desc: &MessageDescriptor) -> Arc<MessagePlan> {
        let name = desc.full_name();
        if let Some(p) = self.plans.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return p.clone();
        }
        let plan = Arc::new(self.build_plan(desc));
        self.plans.write().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_insert(plan).clone()
    }

    fn build_plan(&self, desc: &MessageDescriptor) -> MessagePlan {
        let opts = desc.options();
        let flag = |ext: &Option<ExtensionDescriptor>| {
            ext.as_ref().is_some_and(|e| opts.has_extension(e) && opts.get_extension(e).as_bool().unwrap_or(false))
        };
        let disabled = flag(&self.ext_disabled) || flag(&self.ext_ignored);

        let mut fields = Vec::new();
        for fd in desc.fields() {
            let rules = self.field_rules(&fd).map(Compiled::new);
            if rules.is_some() || carries_messages(&fd) {
                fields.push(FieldPlan { fd, rules });
            }
        }

        let mut required_oneofs = Vec::new();
        if let Some(ext) = &self.ext_oneof_required {
            for oneof in desc.oneofs() {
                if oneof.is_synthetic() {
                    continue;
                }
                let o = oneof.options();
                if o.has_extension(ext) && o.get_extension(ext).as_bool().unwrap_or(false) {
                    required_oneofs.push((oneof.name().to_string(), oneof.fields().collect()));
                }
            }
        }
        MessagePlan { disabled, fields, required_oneofs }
    }

    fn field_rules(&self, fd: &FieldDescriptor) -> Option<FieldRules> {
        let ext = self.ext_rules.as_ref()?;
        let opts = fd.options();
        if !opts.has_extension(ext) {
            return None;
        }
        let value = opts.get_extension(ext);
        let msg = value.as_message()?;
        // Transcode into the prost struct so rules are plain, typed Rust values.
        FieldRules::decode(msg.encode_to_vec().as_slice()).ok()
    }

    /// Walks one message. `pgv` is false below a `validate.disabled` message, where only the
    /// Envoy-wide checks (Duration sanity, known `Any` types) still apply.
    fn check_message(&self, msg: &DynamicMessage, path: &mut Path, depth: usize, pgv: bool) -> Result<(), ConfigError> {
        if depth > MAX_DEPTH {
            return Err(path.err(format!("message nesting exceeds {MAX_DEPTH} levels")));
        }
        let desc = msg.descriptor();
        match desc.full_name() {
            "google.protobuf.Duration" => {
                return duration_of(msg).map(|_| ()).map_err(|r| path.err(r));
            }
            "google.protobuf.Any" => return self.check_any_payload(msg, path, depth, pgv),
            _ => {}
        }
        let plan = self.plan(&desc);
        let pgv = pgv && !plan.disabled;
        if pgv {
            for (name, members) in &plan.required_oneofs {
                if !members.iter().any(|fd| msg.has_field(fd)) {
                    let names: Vec<&str> = members.iter().map(|f| f.name()).collect();
                    path.0.push(Seg::Name(name.clone()));
                    let e = path.err(format!("value is required: exactly one of [{}] must be set", names.join(", ")));
                    path.0.pop();
                    return Err(e);
                }
            }
        }
        for fp in &plan.fields {
            path.0.push(Seg::Field(fp.fd.clone()));
            let r = self.check_field(msg, fp, path, depth, pgv);
            path.0.pop();
            r?;
        }
        Ok(())
    }

    fn check_field(
        &self,
        msg: &DynamicMessage,
        fp: &FieldPlan,
        path: &mut Path,
        depth: usize,
        pgv: bool,
    ) -> Result<(), ConfigError> {
        let fd = &fp.fd;
        let rules = if pgv { fp.rules.as_ref() } else { None };
        if fd.is_map() {
            let value = msg.get_field(fd);
            let Some(map) = value.as_map() else {
                return Ok(());
            };
            return self.check_map(fd, map, rules, path, depth, pgv);
        }
        if fd.is_list() {
            let value = msg.get_field(fd);
            let Some(list) = value.as_list() else {
                return Ok(());
            };
            return self.check_list(fd, list, rules, path, depth, pgv);
        }
        let present = msg.has_field(fd);
        if let Kind::Message(_) = fd.kind() {
            if !present {
                // PGV only checks the set member of a oneof; `required` means the others.
                if fd.containing_oneof().is_some() {
                    return Ok(());
                }
                return match rules {
                    Some(r) if r.message_required() => Err(path.err("value is required")),
                    _ => Ok(()),
                };
            }
            let value = msg.get_field(fd);
            let Some(m) = value.as_message() else {
                return Ok(());
            };
            return self.check_message_value(m, rules, path, depth, pgv);
        }
        // Scalars without presence are checked at their default value, as PGV does;
        // unset oneof members and `optional` scalars are skipped.
        if !present && fd.supports_presence() {
            return Ok(());
        }
        if let Some(r) = rules {
            let value = msg.get_field(fd);
            check_scalar(&value, &fd.kind(), r).map_err(|reason| path.err(reason))?;
        }
        Ok(())
    }

    fn check_list(
        &self,
        fd: &FieldDescriptor,
        list: &[Value],
        rules: Option<&Compiled>,
        path: &mut Path,
        depth: usize,
        pgv: bool,
    ) -> Result<(), ConfigError> {
        let mut items = None;
        if let Some(Some(RuleType::Repeated(rr))) = rules.map(|r| &r.rules.r#type) {
            check_repeated(list, rr).map_err(|reason| path.err(reason))?;
            items = rules.and_then(|r| r.items.as_deref());
        }
        let kind = fd.kind();
        let is_msg = matches!(kind, Kind::Message(_));
        if items.is_none() && !is_msg {
            return Ok(());
        }
        for (i, v) in list.iter().enumerate() {
            path.0.push(Seg::Index(i));
            let r = self.check_element(v, &kind, items, path, depth, pgv);
            path.0.pop();
            r?;
        }
        Ok(())
    }

    fn check_map(
        &self,
        fd: &FieldDescriptor,
        map: &HashMap<MapKey, Value>,
        rules: Option<&Compiled>,
        path: &mut Path,
        depth: usize,
        pgv: bool,
    ) -> Result<(), ConfigError> {
        let (mut keys, mut values) = (None, None);
        if let Some(Some(RuleType::Map(mr))) = rules.map(|r| &r.rules.r#type) {
            check_map_counts(map.len(), mr).map_err(|reason| path.err(reason))?;
            if !(mr.ignore_empty.unwrap_or(false) && map.is_empty()) {
                keys = rules.and_then(|r| r.keys.as_deref());
                values = rules.and_then(|r| r.values.as_deref());
            }
        }
        let Kind::Message(entry) = fd.kind() else {
            return Ok(());
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let value_is_msg = matches!(value_kind, Kind::Message(_));
        if keys.is_none() && values.is_none() && !value_is_msg {
            return Ok(());
        }
        // Sorted so the first error reported does not depend on hash order.
        let mut entries: Vec<(&MapKey, &Value)> = map.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in entries {
            path.0.push(Seg::Key(k.clone()));
            let mut r = Ok(());
            if let Some(kr) = keys {
                let kv = map_key_value(k);
                r = check_scalar(&kv, &key_kind, kr).map_err(|reason| path.err(reason));
            }
            if r.is_ok() {
                r = self.check_element(v, &value_kind, values, path, depth, pgv);
            }
            path.0.pop();
            r?;
        }
        Ok(())
    }

    /// One repeated element or map value: always present.
    fn check_element(
        &self,
        value: &Value,
        kind: &Kind,
        rules: Option<&Compiled>,
        path: &mut Path,
        depth: usize,
        pgv: bool,
    ) -> Result<(), ConfigError> {
        match value.as_message() {
            Some(m) => self.check_message_value(m, rules, path, depth, pgv),
            None => match rules {
                Some(r) => check_scalar(value, kind, r).map_err(|reason| path.err(reason)),
                None => Ok(()),
            },
        }
    }

    /// A present message value: type-specific rules (Duration, Timestamp, Any, wrappers),
    /// then recursion unless `message.skip`.
    fn check_message_value(
        &self,
        m: &DynamicMessage,
        rules: Option<&Compiled>,
        path: &mut Path,
        depth: usize,
        pgv: bool,
    ) -> Result<(), ConfigError> {
        let desc = m.descriptor();
        if let Some(r) = rules {
            match &r.rules.r#type {
                Some(RuleType::Duration(dr)) if desc.full_name() == "google.protobuf.Duration" => {
                    let d = duration_of(m).map_err(|reason| path.err(reason))?;
                    check_duration_rules(d, dr).map_err(|reason| path.err(reason))?;
                }
                Some(RuleType::Timestamp(tr)) if desc.full_name() == "google.protobuf.Timestamp" => {
                    check_timestamp_rules(timestamp_of(m), tr).map_err(|reason| path.err(reason))?;
                }
                Some(RuleType::Any(ar)) if desc.full_name() == "google.protobuf.Any" => {
                    let url = m.get_field_by_name("type_url");
                    let url = url.as_deref().and_then(Value::as_str).unwrap_or("");
                    check_any_rules(url, ar).map_err(|reason| path.err(reason))?;
                }
                Some(_) if is_wrapper(desc.full_name()) => {
                    if let Some(inner_fd) = desc.get_field(1) {
                        let inner = m.get_field(&inner_fd);
                        check_scalar(&inner, &inner_fd.kind(), r).map_err(|reason| path.err(reason))?;
                    }
                }
                _ => {}
            }
            if r.message_skip() {
                return Ok(());
            }
        }
        self.check_message(m, path, depth + 1, pgv)
    }

    fn check_any_payload(
        &self,
        any: &DynamicMessage,
        path: &mut Path,
        depth: usize,
        pgv: bool,
    ) -> Result<(), ConfigError> {
        if !self.into_any {
            return Ok(());
        }
        let url = any.get_field_by_name("type_url");
        let url = url.as_deref().and_then(Value::as_str).unwrap_or("");
        let bytes = any.get_field_by_name("value");
        let bytes: &[u8] = bytes.as_deref().and_then(Value::as_bytes).map(|b| &b[..]).unwrap_or(&[]);
        if url.is_empty() {
            if bytes.is_empty() {
                return Ok(());
            }
            return Err(path.err("Any has a payload but no type URL"));
        }
        let name = url.rsplit('/').next().unwrap_or(url);
        let Some(desc) = self.pool.get_message_by_name(name) else {
            return Err(path.err(format!("unknown type URL {url:?} (not a message type Pinion knows)")));
        };
        let payload = DynamicMessage::decode(desc, bytes)
            .map_err(|e| path.err(format!("cannot decode Any payload as {name}: {e}")))?;
        self.check_message(&payload, path, depth + 1, pgv)
    }
}

/// Fields that can hold messages (singular, repeated or map values) need recursion.
fn carries_messages(fd: &FieldDescriptor) -> bool {
    match fd.kind() {
        Kind::Message(m) if fd.is_map() => {
            matches!(m.map_entry_value_field().kind(), Kind::Message(_))
        }
        Kind::Message(_) => true,
        _ => false,
    }
}

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

fn map_key_value(k: &MapKey) -> Value {
    match k {
        MapKey::Bool(v) => Value::Bool(*v),
        MapKey::I32(v) => Value::I32(*v),
        MapKey::I64(v) => Value::I64(*v),
        MapKey::U32(v) => Value::U32(*v),
        MapKey::U64(v) => Value::U64(*v),
        MapKey::String(v) => Value::String(v.clone()),
    }
}

// ---------------------------------------------------------------------------------------
// Scalar rules. Each returns the PGV-style reason; the caller adds the path.
// ---------------------------------------------------------------------------------------

fn check_scalar(value: &Value, kind: &Kind, c: &Compiled) -> Result<(), String> {
    let Some(t) = &c.rules.r#type else {
        return Ok(());
    };
    // A rule kind that does not match the value kind is ignored (PGV would not generate it).
    match t {
        RuleType::String(r) => value.as_str().map_or(Ok(()), |s| check_string(s, r, c)),
        RuleType::Bytes(r) => value.as_bytes().map_or(Ok(()), |b| check_bytes(b, r, c)),
        RuleType::Bool(r) => match (value.as_bool(), r.r#const) {
            (Some(v), Some(want)) if v != want => Err(format!("value must equal {want}")),
            _ => Ok(()),
        },
        RuleType::Enum(r) => value.as_enum_number().map_or(Ok(()), |n| check_enum(n, kind, r)),
        RuleType::Float(r) => value
            .as_f32()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0.0)),
        RuleType::Double(r) => value
            .as_f64()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0.0)),
        RuleType::Int32(r) => value
            .as_i32()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Sint32(r) => value
            .as_i32()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Sfixed32(r) => value
            .as_i32()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Int64(r) => value
            .as_i64()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Sint64(r) => value
            .as_i64()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Sfixed64(r) => value
            .as_i64()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Uint32(r) => value
            .as_u32()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Fixed32(r) => value
            .as_u32()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Uint64(r) => value
            .as_u64()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        RuleType::Fixed64(r) => value
            .as_u64()
            .map_or(Ok(()), |v| num(v, r.r#const, r.lt, r.lte, r.gt, r.gte, &r.r#in, &r.not_in, r.ignore_empty, 0)),
        // Message-typed rules are handled where the message value is seen.
        RuleType::Repeated(_)
        | RuleType::Map(_)
        | RuleType::Any(_)
        | RuleType::Duration(_)
        | RuleType::Timestamp(_) => Ok(()),
    }
}

/// Numeric rules shared by all numeric kinds (and, via [`range`], Durations/Timestamps).
#[allow(clippy::too_many_arguments)]
fn num<T: PartialOrd + Copy + Display>(
    v: T,
    konst: Option<T>,
    lt: Option<T>,
    lte: Option<T>,
    gt: Option<T>,
    gte: Option<T>,
    r#in: &[T],
    not_in: &[T],
    ignore_empty: Option<bool>,
    zero: T,
) -> Result<(), String> {
    if ignore_empty.unwrap_or(false) && v == zero {
        return Ok(());
    }
    let show = |x: &T| x.to_string();
    if let Some(c) = konst {
        if v != c {
            return Err(format!("value must equal {c}"));
        }
    }
    range(&v, lt.as_ref(), lte.as_ref(), gt.as_ref(), gte.as_ref(), show)?;
    in_lists(&v, r#in, not_in, show)
}

fn in_lists<T: PartialEq>(v: &T, r#in: &[T], not_in: &[T], show: impl Fn(&T) -> String) -> Result<(), String> {
    let list = |l: &[T]| l.iter().map(&show).collect::<Vec<_>>().join(", ");
    if !r#in.is_empty() && !r#in.contains(v) {
        return Err(format!("value must be in list [{}]", list(r#in)));
    }
    if not_in.contains(v) {
        return Err(format!("value must not be in list [{}]", list(not_in)));
    }
    Ok(())
}

/// PGV range semantics, including exclusive ranges when the upper bound is below the lower.
fn range<T: PartialOrd>(
    v: &T,
    lt: Option<&T>,
    lte: Option<&T>,
    gt: Option<&T>,
    gte: Option<&T>,
    show: impl Fn(&T) -> String,
) -> Result<(), String> {
    let lower = gt.map(|g| (g, false)).or(gte.map(|g| (g, true)));
    let upper = lt.map(|l| (l, false)).or(lte.map(|l| (l, true)));
    let lower_ok = |(b, incl): (&T, bool)| if incl { v >= b } else { v > b };
    let upper_ok = |(b, incl): (&T, bool)| if incl { v <= b } else { v < b };
    match (lower, upper) {
        (Some(lo), Some(hi)) if hi.0 > lo.0 => {
            if lower_ok(lo) && upper_ok(hi) {
                Ok(())
            } else {
                Err(format!(
                    "value must be inside range {}{}, {}{}",
                    if lo.1 { '[' } else { '(' },
                    show(lo.0),
                    show(hi.0),
                    if hi.1 { ']' } else { ')' }
                ))
            }
        }
        (Some(lo), Some(hi)) => {
            if lower_ok(lo) || upper_ok(hi) {
                Ok(())
            } else {
                Err(format!(
                    "value must be outside range {}{}, {}{}",
                    if hi.1 { '(' } else { '[' },
                    show(hi.0),
                    show(lo.0),
                    if lo.1 { ')' } else { ']' }
                ))
            }
        }
        (Some(lo), None) if !lower_ok(lo) => {
            Err(format!("value must be greater than {}{}", if lo.1 { "or equal to " } else { "" }, show(lo.0)))
        }
        (None, Some(hi)) if !upper_ok(hi) => {
            Err(format!("value must be less than {}{}", if hi.1 { "or equal to " } else { "" }, show(hi.0)))
        }
        _ => Ok(()),
    }
}

fn check_enum(n: i32, kind: &Kind, r: &EnumRules) -> Result<(), String> {
    if let Some(c) = r.r#const {
        if n != c {
            return Err(format!("value must equal {c}"));
        }
    }
    if r.defined_only.unwrap_or(false) {
        if let Kind::Enum(e) = kind {
            if e.get_value(n).is_none() {
                return Err(format!("value {n} must be one of the defined enum values"));
            }
        }
    }
    in_lists(&n, &r.r#in, &r.not_in, |x| x.to_string())
}

fn check_string(s: &str, r: &StringRules, c: &Compiled) -> Result<(), String> {
    if r.ignore_empty.unwrap_or(false) && s.is_empty() {
        return Ok(());
    }
    if let Some(k) = &r.r#const {
        if s != k {
            return Err(format!("value must equal {k:?}"));
        }
    }
    let chars = || s.chars().count() as u64;
    if let Some(n) = r.len {
        if chars() != n {
            return Err(format!("value length must be {n} characters"));
        }
    }
    if let Some(n) = r.min_len {
        if chars() < n {
            return Err(format!("value length must be at least {n} characters"));
        }
    }
    if let Some(n) = r.max_len {
        if chars() > n {
            return Err(format!("value length must be at most {n} characters"));
        }
    }
    let bytes = s.len() as u64;
    if let Some(n) = r.len_bytes {
        if bytes != n {
            return Err(format!("value length must be {n} bytes"));
        }
    }
    if let Some(n) = r.min_bytes {
        if bytes < n {
            return Err(format!("value length must be at least {n} bytes"));
        }
    }
    if let Some(n) = r.max_bytes {
        if bytes > n {
            return Err(format!("value length must be at most {n} bytes"));
        }
    }
    if let (Some(p), Some(re)) = (&r.pattern, &c.regex) {
        if !re.is_match(s) {
            return Err(format!("value does not match regex pattern {p:?}"));
        }
    }
    if let Some(p) = &r.prefix {
        if !s.starts_with(p.as_str()) {
            return Err(format!("value does not have prefix {p:?}"));
        }
    }
    if let Some(p) = &r.suffix {
        if !s.ends_with(p.as_str()) {
            return Err(format!("value does not have suffix {p:?}"));
        }
    }
    if let Some(p) = &r.contains {
        if !s.contains(p.as_str()) {
            return Err(format!("value does not contain substring {p:?}"));
        }
    }
    if let Some(p) = &r.not_contains {
        if s.contains(p.as_str()) {
            return Err(format!("value contains substring {p:?}"));
        }
    }
    in_lists(&s.to_string(), &r.r#in, &r.not_in, |x| format!("{x:?}"))?;
    let Some(wk) = &r.well_known else {
        return Ok(());
    };
    use string_rules::WellKnown as W;
    let ok_or = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("value must be {what}"))
        }
    };
    match *wk {
        W::Email(true) => ok_or(is_email(s), "a valid email address"),
        W::Hostname(true) => ok_or(is_hostname(s), "a valid hostname"),
        W::Ip(true) => ok_or(s.parse::<IpAddr>().is_ok(), "a valid IP address"),
        W::Ipv4(true) => ok_or(s.parse::<Ipv4Addr>().is_ok(), "a valid IPv4 address"),
        W::Ipv6(true) => ok_or(s.parse::<Ipv6Addr>().is_ok(), "a valid IPv6 address"),
        W::Uri(true) => ok_or(is_uri(s), "a valid absolute URI"),
        W::UriRef(true) => ok_or(is_uri_ref(s), "a valid URI reference"),
        W::Address(true) => ok_or(s.parse::<IpAddr>().is_ok() || is_hostname(s), "a valid hostname or IP address"),
        W::Uuid(true) => ok_or(is_uuid(s), "a valid UUID"),
        W::WellKnownRegex(k) => check_header_regex(s, k, r.strict.unwrap_or(true)),
        _ => Ok(()),
    }
}

/// PGV's HTTP header regexes, as character predicates (same sets, no regex engine needed):
/// name (strict) `^:?[0-9a-zA-Z!#$%&'*+-.^_|~\x60]+$`, value (strict)
/// `^[^\u0000-\u0008\u000A-\u001F\u007F]*$`, either non-strict `^[^\u0000\u000A\u000D]*$`.
fn check_header_regex(s: &str, known: i32, strict: bool) -> Result<(), String> {
    let known = KnownRegex::try_from(known).unwrap_or(KnownRegex::Unknown);
    if known == KnownRegex::Unknown {
        return Ok(());
    }
    if !strict {
        return if s.chars().any(|c| matches!(c, '\0' | '\n' | '\r')) {
            Err(r#"value does not match regex pattern "^[^\x00\n\r]*$" (NUL, CR and LF are not allowed)"#.into())
        } else {
            Ok(())
        };
    }
    match known {
        KnownRegex::HttpHeaderName => {
            let body = s.strip_prefix(':').unwrap_or(s);
            // `+-.` in PGV's class is a range, so ',' is allowed too.
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+,-.^_|~`".contains(c);
            if body.is_empty() || !body.chars().all(tchar) {
                Err(r#"value does not match regex pattern "^:?[0-9a-zA-Z!#$%&'*+-.^_|~\x60]+$" (HTTP header name)"#
                    .into())
            } else {
                Ok(())
            }
        }
        _ => {
            let bad = |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}');
            if s.chars().any(bad) {
                Err(r#"value does not match regex pattern "^[^\x00-\x08\x0A-\x1F\x7F]*$" (HTTP header value)"#.into())
            } else {
                Ok(())
            }
        }
    }
}

fn check_bytes(b: &[u8], r: &BytesRules, c: &Compiled) -> Result<(), String> {
    if r.ignore_empty.unwrap_or(false) && b.is_empty() {
        return Ok(());
    }
    if let Some(k) = &r.r#const {
        if b != k.as_slice() {
            return Err(format!("value must equal {:?}", String::from_utf8_lossy(k)));
        }
    }
    let n = b.len() as u64;
    if let Some(want) = r.len {
        if n != want {
            return Err(format!("value length must be {want} bytes"));
        }
    }
    if let Some(want) = r.min_len {
        if n < want {
            return Err(format!("value length must be at least {want} bytes"));
        }
    }
    if let Some(want) = r.max_len {
        if n > want {
            return Err(format!("value length must be at most {want} bytes"));
        }
    }
    if let (Some(p), Some(re)) = (&r.pattern, &c.bytes_regex) {
        if !re.is_match(b) {
            return Err(format!("value does not match regex pattern {p:?}"));
        }
    }
    if let Some(p) = &r.prefix {
        if !b.starts_with(p) {
            return Err("value does not have the required prefix".into());
        }
    }
    if let Some(p) = &r.suffix {
        if !b.ends_with(p) {
            return Err("value does not have the required suffix".into());
        }
    }
    if let Some(p) = &r.contains {
        if !p.is_empty() && !b.windows(p.len()).any(|w| w == p.as_slice()) {
            return Err("value does not contain the required bytes".into());
        }
    }
    let bv = b.to_vec();
    in_lists(&bv, &r.r#in, &r.not_in, |x| format!("{:?}", String::from_utf8_lossy(x)))?;
    use bytes_rules::WellKnown as W;
    match r.well_known {
        Some(W::Ip(true)) if n != 4 && n != 16 => Err("value must be a valid IP address".into()),
        Some(W::Ipv4(true)) if n != 4 => Err("value must be a valid IPv4 address".into()),
        Some(W::Ipv6(true)) if n != 16 => Err("value must be a valid IPv6 address".into()),
        _ => Ok(()),
    }
}

fn check_repeated(list: &[Value], r: &RepeatedRules) -> Result<(), String> {
    if r.ignore_empty.unwrap_or(false) && list.is_empty() {
        return Ok(());
    }
    let n = list.len() as u64;
    if let Some(min) = r.min_items {
        if n < min {
            return Err(format!("value must contain at least {min} item(s)"));
        }
    }
    if let Some(max) = r.max_items {
        if n > max {
            return Err(format!("value must contain no more than {max} item(s)"));
        }
    }
    if r.unique.unwrap_or(false) {
        let mut seen = HashSet::with_capacity(list.len());
        for v in list {
            if !seen.insert(UniqueKey::of(v)) {
                return Err("repeated value must contain unique items".into());
            }
        }
    }
    Ok(())
}

/// Hashable identity of a repeated element (PGV `unique` is defined for scalars; messages
/// compare by encoding).
#[derive(PartialEq, Eq, Hash)]
enum UniqueKey<'a> {
    Bool(bool),
    Int(i128),
    Float(u64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Other(Vec<u8>),
}

impl<'a> UniqueKey<'a> {
    fn of(v: &'a Value) -> Self {
        match v {
            Value::Bool(b) => UniqueKey::Bool(*b),
            Value::I32(x) => UniqueKey::Int(i128::from(*x)),
            Value::I64(x) => UniqueKey::Int(i128::from(*x)),
            Value::U32(x) => UniqueKey::Int(i128::from(*x)),
            Value::U64(x) => UniqueKey::Int(i128::from(*x)),
            Value::EnumNumber(x) => UniqueKey::Int(i128::from(*x)),
            Value::F32(x) => UniqueKey::Float(f64::from(*x).to_bits()),
            Value::F64(x) => UniqueKey::Float(x.to_bits()),
            Value::String(s) => UniqueKey::Str(s),
            Value::Bytes(b) => UniqueKey::Bytes(b),
            Value::Message(m) => UniqueKey::Other(m.encode_to_vec()),
            Value::List(_) | Value::Map(_) => UniqueKey::Other(Vec::new()),
        }
    }
}

fn check_map_counts(n: usize, r: &MapRules) -> Result<(), String> {
    if r.ignore_empty.unwrap_or(false) && n == 0 {
        return Ok(());
    }
    let n = n as u64;
    if let Some(min) = r.min_pairs {
        if n < min {
            return Err(format!("value must contain at least {min} pair(s)"));
        }
    }
    if let Some(max) = r.max_pairs {
        if n > max {
            return Err(format!("value must contain no more than {max} pair(s)"));
        }
    }
    Ok(())
}

fn check_any_rules(url: &str, r: &AnyRules) -> Result<(), String> {
    if !r.r#in.is_empty() && !r.r#in.iter().any(|u| u == url) {
        return Err(format!("type URL must be in list [{}]", r.r#in.join(", ")));
    }
    if r.not_in.iter().any(|u| u == url) {
        return Err(format!("type URL must not be in list [{}]", r.not_in.join(", ")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Durations and timestamps, compared as (seconds, nanos).
// ---------------------------------------------------------------------------------------

type Dur = (i64, i32);

fn sec_nanos(msg: &DynamicMessage) -> Dur {
    let s = msg.get_field_by_number(1).and_then(|v| v.as_i64()).unwrap_or(0);
    let n = msg.get_field_by_number(2).and_then(|v| v.as_i32()).unwrap_or(0);
    (s, n)
}

/// Reads a Duration, rejecting what Envoy rejects for every Duration field.
fn duration_of(msg: &DynamicMessage) -> Result<Dur, String> {
    let (s, n) = sec_nanos(msg);
    if s < 0 || n < 0 {
        return Err(format!("invalid duration {}: must not be negative", fmt_dur(&(s, n))));
    }
    if s > MAX_DURATION_SECONDS || n > 999_999_999 {
        return Err(format!("invalid duration {}: out of range", fmt_dur(&(s, n))));
    }
    Ok((s, n))
}

fn timestamp_of(msg: &DynamicMessage) -> Dur {
    sec_nanos(msg)
}

fn fmt_dur(d: &Dur) -> String {
    let (s, n) = *d;
    if n == 0 {
        return format!("{s}s");
    }
    let frac = format!("{:09}", n.unsigned_abs());
    let sign = if s == 0 && n < 0 { "-" } else { "" };
    format!("{sign}{s}.{}s", frac.trim_end_matches('0'))
}

fn pb_dur(d: &PbDuration) -> Dur {
    (d.seconds, d.nanos)
}

fn pb_ts(t: &PbTimestamp) -> Dur {
    (t.seconds, t.nanos)
}

fn fmt_ts(t: &Dur) -> String {
    let ts = prost_types::Timestamp { seconds: t.0, nanos: t.1 };
    ts.to_string()
}

fn check_duration_rules(d: Dur, r: &DurationRules) -> Result<(), String> {
    if let Some(c) = &r.r#const {
        if d != pb_dur(c) {
            return Err(format!("value must equal {}", fmt_dur(&pb_dur(c))));
        }
    }
    let b = |x: &Option<PbDuration>| x.as_ref().map(pb_dur);
    let (lt, lte, gt, gte) = (b(&r.lt), b(&r.lte), b(&r.gt), b(&r.gte));
    range(&d, lt.as_ref(), lte.as_ref(), gt.as_ref(), gte.as_ref(), fmt_dur)?;
    let ins: Vec<Dur> = r.r#in.iter().map(pb_dur).collect();
    let outs: Vec<Dur> = r.not_in.iter().map(pb_dur).collect();
    in_lists(&d, &ins, &outs, fmt_dur)
}

fn check_timestamp_rules(t: Dur, r: &TimestampRules) -> Result<(), String> {
    if let Some(c) = &r.r#const {
        if t != pb_ts(c) {
            return Err(format!("value must equal {}", fmt_ts(&pb_ts(c))));
        }
    }
    let b = |x: &Option<PbTimestamp>| x.as_ref().map(pb_ts);
    let (lt, lte, gt, gte) = (b(&r.lt), b(&r.lte), b(&r.gt), b(&r.gte));
    range(&t, lt.as_ref(), lte.as_ref(), gt.as_ref(), gte.as_ref(), fmt_ts)?;
    let now = now();
    if r.lt_now.unwrap_or(false) && t >= now {
        return Err("value must be less than now".into());
    }
    if r.gt_now.unwrap_or(false) && t <= now {
        return Err("value must be greater than now".into());
    }
    if let Some(w) = &r.within {
        let w = pb_dur(w);
        let lo = dur_sub(now, w);
        let hi = dur_add(now, w);
        if t < lo || t > hi {
            return Err(format!("value must be within {} of now", fmt_dur(&w)));
        }
    }
    Ok(())
}

fn now() -> Dur {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos() as i32)
}

fn dur_add(a: Dur, b: Dur) -> Dur {
    normalize(i128::from(a.0) + i128::from(b.0), i128::from(a.1) + i128::from(b.1))
}

fn dur_sub(a: Dur, b: Dur) -> Dur {
    normalize(i128::from(a.0) - i128::from(b.0), i128::from(a.1) - i128::from(b.1))
}

fn normalize(s: i128, n: i128) -> Dur {
    let total = s * 1_000_000_000 + n;
    let secs = total.div_euclid(1_000_000_000);
    let nanos = total.rem_euclid(1_000_000_000);
    let secs = secs.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    (secs, nanos as i32)
}

// ---------------------------------------------------------------------------------------
// Cheap well-known string formats.
// ---------------------------------------------------------------------------------------

fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

fn is_email(s: &str) -> bool {
    let s = s.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(s);
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && !local.chars().any(|c| c.is_whitespace() || c.is_control())
                && is_hostname(domain)
        }
        None => false,
    }
}

fn is_uri_ref(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut cs = scheme.chars();
    cs.next().is_some_and(|c| c.is_ascii_alphabetic())
        && cs.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && is_uri_ref(s)
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_pgv() {
        let show = |x: &i64| x.to_string();
        assert!(range(&5, None, Some(&65535), None, None, show).is_ok());
        assert_eq!(
            range(&70000, None, Some(&65535), None, None, show).unwrap_err(),
            "value must be less than or equal to 65535"
        );
        assert!(range(&0, Some(&10), None, Some(&0), None, show).is_err());
        assert!(range(&5, Some(&10), None, Some(&0), None, show).is_ok());
        // Exclusive range: lt < gt means "outside [lt, gt]".
        assert!(range(&5, Some(&0), None, Some(&10), None, show).is_err());
        assert!(range(&11, Some(&0), None, Some(&10), None, show).is_ok());
        assert!(range(&-1, Some(&0), None, Some(&10), None, show).is_ok());
    }

    #[test]
    fn header_names() {
        let name = KnownRegex::HttpHeaderName as i32;
        assert!(check_header_regex("x-foo", name, true).is_ok());
        assert!(check_header_regex(":authority", name, true).is_ok());
        assert!(check_header_regex("x foo", name, true).is_err());
        assert!(check_header_regex("", name, true).is_err());
        assert!(check_header_regex("x\nfoo", name, false).is_err());
        assert!(check_header_regex("x foo", name, false).is_ok());
        let value = KnownRegex::HttpHeaderValue as i32;
        assert!(check_header_regex("a\tb", value, true).is_ok());
        assert!(check_header_regex("a\x01b", value, true).is_err());
    }

    #[test]
    fn durations_format() {
        assert_eq!(fmt_dur(&(0, 0)), "0s");
        assert_eq!(fmt_dur(&(1, 500_000_000)), "1.5s");
        assert_eq!(fmt_dur(&(0, 1_000_000)), "0.001s");
    }

    #[test]
    fn formats() {
        assert!(is_hostname("foo.example.com"));
        assert!(!is_hostname("-foo.com"));
        assert!(is_uuid("123e4567-e89b-12d3-a456-426614174000"));
        assert!(is_uri("https://example.com/x"));
        assert!(!is_uri("/relative"));
        assert!(is_email("a@b.com"));
    }

    fn cluster_err(yaml: &str) -> String {
        use crate::decode::{message_from_str, DecodeOptions, Format};
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let opts = DecodeOptions::default();
        match message_from_str::<Cluster>(yaml, Format::Yaml, &opts) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    fn route_err(yaml: &str) -> String {
        use crate::decode::{message_from_str, DecodeOptions, Format};
        use envoy_types::pb::envoy::config::route::v3::Route;
        let opts = DecodeOptions::default();
        match message_from_str::<Route>(yaml, Format::Yaml, &opts) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn annotation_rule_kinds() {
        // map keys
        assert_eq!(
            cluster_err("name: c\nmetadata: {filter_metadata: {'': {}}}"),
            r#"metadata.filter_metadata[""]: value length must be at least 1 characters"#
        );
        // wrapper (DoubleValue) with an inclusive range
        assert_eq!(
            cluster_err("name: c\npreconnect_policy: {per_upstream_preconnect_ratio: 3.5}"),
            "preconnect_policy.per_upstream_preconnect_ratio: value must be inside range [1, 3]"
        );
        assert_eq!(cluster_err("name: c\npreconnect_policy: {per_upstream_preconnect_ratio: 2}"), "");
        // enum not_in
        let hc = "name: c\nhealth_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, \
                  healthy_threshold: 1, http_health_check: {path: /h, method: CONNECT}}]";
        assert_eq!(cluster_err(hc), "health_checks[0].http_health_check.method: value must not be in list [6]");
        // string pattern
        assert!(route_err("match: {path_separated_prefix: /a/}\ndirect_response: {status: 200}")
            .starts_with("match.path_separated_prefix: value does not match regex pattern"));
        assert_eq!(route_err("match: {path_separated_prefix: /a}\ndirect_response: {status: 200}"), "");
        // repeated unique + items
        let redirect = |hdrs: &str| {
            route_err(&format!(
                "match: {{prefix: /}}\nroute: {{cluster: c, internal_redirect_policy: \
                 {{response_headers_to_copy: {hdrs}}}}}"
            ))
        };
        assert_eq!(
            redirect("[a, a]"),
            "route.internal_redirect_policy.response_headers_to_copy: \
             repeated value must contain unique items"
        );
        assert!(redirect("[a, \"b\\nc\"]").starts_with("route.internal_redirect_policy.response_headers_to_copy[1]: "));
        assert_eq!(redirect("[a, b]"), "");
    }

    #[test]
    fn unknown_any_in_binary_input_is_rejected() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use envoy_types::pb::google::protobuf::Any;
        let mut c = Cluster { name: "c".into(), ..Default::default() };
        c.typed_extension_protocol_options
            .insert("x".into(), Any { type_url: "type.googleapis.com/no.Such".into(), value: vec![1, 2] });
        let e = crate::decode::validate_prost(&c).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"typed_extension_protocol_options["x"]: unknown type URL "type.googleapis.com/no.Such" (not a message type Pinion knows)"#
        );
        // The shallow check (Envoy's decode-time one) does not look into Any payloads, but
        // still checks the message's own fields.
        crate::decode::validate_prost_shallow(&c).expect("Any payloads are not checked");
        c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: -1, nanos: 0 });
        let e = crate::decode::validate_prost_shallow(&c).unwrap_err();
        assert!(e.to_string().contains("connect_timeout"), "{e}");
    }

    #[test]
    fn every_pattern_in_the_pool_compiles() {
        let v = shared_validator(true);
        let mut checked = 0;
        for m in v.pool.all_messages() {
            let plan = v.plan(&m);
            for f in &plan.fields {
                if let Some(c) = &f.rules {
                    if let Some(RuleType::String(s)) = &c.rules.r#type {
                        if s.pattern.is_some() {
                            assert!(c.regex.is_some(), "{}: {:?}", f.fd.full_name(), s.pattern);
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 0, "no PGV patterns found: extensions not readable?");
    }
}
