//! Translate: envoy-types prost structs into Pinion's config model ([`crate::model`]).
//!
//! Every proto struct is destructured completely (no `..`), so a field Envoy adds later fails
//! to compile here instead of being silently ignored. Each field is either translated, ignored
//! with a one-line reason, or rejected with [`ErrorKind::Unsupported`](crate::ErrorKind) when
//! set to a non-default value. Error paths are relative to the message being translated; the
//! caller prefixes them with [`ConfigError::under`].
//!
//! The PGV rules are enforced by `crate::validate` before this step; here live Envoy's semantic
//! checks (duplicates, terminal filters, wildcard domains, regex syntax, weights, ...).

// Deprecated proto fields must still be named in the destructuring patterns (and are mapped
// where Envoy 1.40 still honours them).
#![allow(deprecated)]

mod access_log;
mod bootstrap;
mod cluster;
pub mod config_source;
mod endpoint;
mod hash_policy;
mod health_check;
mod http_connection_manager;
mod http_filter;
mod listener;
mod load_balancing;
mod load_balancing_policy;
mod matcher;
mod route;
mod runtime;
mod scoped_route;
mod tcp_proxy;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as pbuf;

use crate::error::{ConfigError, ConfigResult};

pub use bootstrap::{bootstrap, NodeOverrides};
pub use cluster::cluster;
pub use endpoint::cluster_load_assignment;
pub use listener::listener;
pub use route::{route_configuration, vhds_virtual_host};
pub use runtime::runtime_layer;
pub use scoped_route::scoped_route_configuration;
pub use tls::secret;

/// Prefix used by every type URL Envoy emits.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Map an error to one under `parent` (closure helper for `map_err`).
pub(crate) fn at(parent: impl AsRef<str>) -> impl FnOnce(ConfigError) -> ConfigError {
    move |e| e.under(parent.as_ref())
}

/// `google.protobuf.Duration` -> `std::time::Duration` (negative or out-of-range -> invalid).
pub(crate) fn duration(d: &pbuf::Duration) -> ConfigResult<Duration> {
    let pbuf::Duration { seconds, nanos } = d;
    if *seconds < 0 || *nanos < 0 {
        return Err(ConfigError::invalid("", "duration must not be negative"));
    }
    if *nanos >= 1_000_000_000 {
        return Err(ConfigError::invalid("", "duration nanos must be below 1e9"));
    }
    let secs = u64::try_from(*seconds).map_err(|_| ConfigError::invalid("", "duration out of range"))?;
    let nanos = u32::try_from(*nanos).map_err(|_| ConfigError::invalid("", "duration out of range"))?;
    Ok(Duration::new(secs, nanos))
}

/// An optional duration with a default when unset; errors are placed at `field`.
pub(crate) fn duration_or(d: &Option<pbuf::Duration>, default: Duration, field: &str) -> ConfigResult<Duration> {
    match d {
        None => Ok(default),
        Some(d) => duration(d).map_err(at(field)),
    }
}

/// An optional duration where `0s` means disabled (`None`) and unset means `default`.
pub(crate) fn duration_zero_disables(
    d: &Option<pbuf::Duration>,
    default: Option<Duration>,
    field: &str,
) -> ConfigResult<Option<Duration>> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(d).map_err(at(field))?;
            Ok(if d.is_zero() { None } else { Some(d) })
        }
    }
}

/// Whether `v` equals its type's default (the proto3 "unset" value).
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The standard unsupported-field error: `<field>: unsupported: <field> is not supported by pinion`.
pub(crate) fn unsupported_field(field: &str) -> ConfigError {
    let name = field.rsplit('.').next().unwrap_or(field);
    ConfigError::unsupported(field, format!("{name} is not supported by pinion"))
}

/// Reject `v` when it is set to a non-default value.
pub(crate) fn reject_set<T: Default + PartialEq>(v: &T, field: &str) -> ConfigResult<()> {
    if is_default(v) {
        Ok(())
    } else {
        Err(unsupported_field(field))
    }
}

/// `BoolValue` with a default when unset.
pub(crate) fn bool_or(v: &Option<pbuf::BoolValue>, default: bool) -> bool {
    v.as_ref().map_or(default, |b| b.value)
}

/// `UInt32Value` with a default when unset.
pub(crate) fn u32_or(v: &Option<pbuf::UInt32Value>, default: u32) -> u32 {
    v.as_ref().map_or(default, |b| b.value)
}

/// Convert a proto enum `i32` into its prost enum (unknown values -> invalid at `field`).
pub(crate) fn enum_value<E: TryFrom<i32>>(v: i32, field: &str) -> ConfigResult<E> {
    E::try_from(v).map_err(|_| ConfigError::invalid(field, format!("unknown enum value {v}")))
}

/// The message name of an `Any` (the part of the type URL after the last `/`).
pub(crate) fn type_name(any: &pbuf::Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or("")
}

/// Whether `any` holds a message of type `M`.
pub(crate) fn is_type<M: prost::Name>(any: &pbuf::Any) -> bool {
    type_name(any) == M::full_name()
}

/// Unpack an `Any` as `M`, with a clear error for an unexpected type URL or bad bytes.
pub(crate) fn unpack<M: prost::Message + prost::Name + Default>(any: &pbuf::Any) -> ConfigResult<M> {
    if !is_type::<M>(any) {
        return Err(ConfigError::invalid(
            "",
            format!("unexpected type URL '{}', expected '{TYPE_URL_PREFIX}{}'", any.type_url, M::full_name()),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ConfigError::invalid("", format!("cannot decode {}: {e}", M::full_name())))
}

/// How an address may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressMode {
    /// Must be an IP literal (listeners, admin, STATIC/EDS endpoints).
    RequireIp,
    /// A hostname is kept for DNS resolution (STRICT_DNS/LOGICAL_DNS endpoints).
    AllowDns,
}

/// A translated `envoy.config.core.v3.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolvedAddress {
    /// IP literal and port.
    Ip(SocketAddr),
    /// Hostname to resolve and port.
    Dns(String, u16),
    /// A unix domain socket path (`pipe`): cluster endpoints only.
    Pipe(String),
}

/// Translate an `Address` (socket addresses over TCP only); errors relative to the `Address`.
pub(crate) fn address(a: &core::Address, mode: AddressMode) -> ConfigResult<ResolvedAddress> {
    use core::address::Address as A;
    let core::Address { address } = a;
    match address {
        None => Err(ConfigError::invalid("", "address must be set")),
        Some(A::Pipe(p)) => {
            let core::Pipe { path, mode } = p;
            if *mode != 0 {
                return Err(ConfigError::unsupported("pipe.mode", "pipe.mode is not supported by pinion"));
            }
            Ok(ResolvedAddress::Pipe(path.clone()))
        }
        Some(A::EnvoyInternalAddress(_)) => {
            Err(ConfigError::unsupported("envoy_internal_address", "envoy_internal_address is not supported by pinion"))
        }
        Some(A::SocketAddress(s)) => socket_address(s, mode).map_err(at("socket_address")),
    }
}

fn socket_address(s: &core::SocketAddress, mode: AddressMode) -> ConfigResult<ResolvedAddress> {
    use core::socket_address::{PortSpecifier, Protocol};
    let core::SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = s;
    match enum_value::<Protocol>(*protocol, "protocol")? {
        Protocol::Tcp => {}
        Protocol::Udp => return Err(ConfigError::unsupported("protocol", "UDP is not supported by pinion (TCP only)")),
    }
    reject_set(resolver_name, "resolver_name")?;
    reject_set(ipv4_compat, "ipv4_compat")?;
    reject_set(network_namespace_filepath, "network_namespace_filepath")?;
    let port = match port_specifier {
        None => 0,
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(*p).map_err(|_| ConfigError::invalid("port_value", format!("port {p} is out of range")))?
        }
        Some(PortSpecifier::NamedPort(_)) => return Err(unsupported_field("named_port")),
    };
    // Envoy accepts IPv6 literals without brackets; tolerate bracketed ones too.
    let literal = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(address);
    match literal.parse::<IpAddr>() {
        Ok(ip) => Ok(ResolvedAddress::Ip(SocketAddr::new(ip, port))),
        Err(_) => match mode {
            AddressMode::RequireIp => Err(ConfigError::invalid("address", format!("malformed IP address: {address}"))),
            AddressMode::AllowDns => {
                if address.is_empty() {
                    Err(ConfigError::invalid("address", "address must not be empty"))
                } else {
                    Ok(ResolvedAddress::Dns(address.clone(), port))
                }
            }
        },
    }
}

/// An address that must be an IP literal; errors relative to the field holding the `Address`.
pub(crate) fn ip_address(a: &Option<core::Address>) -> ConfigResult<SocketAddr> {
    let Some(a) = a else {
        return Err(ConfigError::invalid("", "address is required"));
    };
    match address(a, AddressMode::RequireIp)? {
        ResolvedAddress::Ip(sa) => Ok(sa),
        // RequireIp never yields a hostname; keep a defensive error rather than a panic.
        ResolvedAddress::Dns(h, _) => {
            Err(ConfigError::invalid("socket_address.address", format!("malformed IP address: {h}")))
        }
        ResolvedAddress::Pipe(_) => Err(ConfigError::unsupported(
            "pipe",
            "pipe (unix domain socket) addresses are supported only for cluster endpoints (e.g. the xDS cluster)",
        )),
    }
}

/// Read a `DataSource` (inline string/bytes, or a file read now); errors relative to it.
pub(crate) fn data_source(d: &core::DataSource) -> ConfigResult<Vec<u8>> {
    use core::data_source::Specifier;
    let core::DataSource { watched_directory, specifier } = d;
    reject_set(watched_directory, "watched_directory")?;
    match specifier {
        None => Ok(Vec::new()),
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::Filename(f)) => {
            std::fs::read(f).map_err(|e| ConfigError::invalid("filename", format!("cannot read file '{f}': {e}")))
        }
        Some(Specifier::EnvironmentVariable(_)) => Err(unsupported_field("environment_variable")),
    }
}

/// `google.protobuf.Struct` -> JSON object.
pub(crate) fn struct_to_json(s: &pbuf::Struct) -> serde_json::Value {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let map = keys.into_iter().filter_map(|k| s.fields.get(k).map(|v| (k.clone(), value_to_json(v)))).collect();
    serde_json::Value::Object(map)
}

/// `google.protobuf.Value` -> JSON.
pub(crate) fn value_to_json(v: &pbuf::Value) -> serde_json::Value {
    use pbuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// Validate that a formatter string only contains well-formed `%COMMAND%`s; returns whether it has any.
pub(crate) fn has_formatter(value: &str) -> ConfigResult<bool> {
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut found = false;
    while i < bytes.len() {
        if bytes.get(i) == Some(&b'%') {
            if bytes.get(i + 1) == Some(&b'%') {
                i += 2;
                continue;
            }
            match bytes.get(i + 1..).and_then(|rest| rest.iter().position(|b| *b == b'%')) {
                Some(end) => {
                    found = true;
                    i += end + 2;
                }
                None => {
                    return Err(ConfigError::invalid("", format!("un-terminated variable expression in '{value}'")))
                }
            }
        } else {
            i += 1;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatter_detection() {
        assert!(!has_formatter("plain").unwrap());
        assert!(!has_formatter("100%%").unwrap());
        assert!(has_formatter("%DOWNSTREAM_REMOTE_ADDRESS%").unwrap());
        assert!(has_formatter("a %REQ(x-foo)% b").unwrap());
        assert!(has_formatter("50%").is_err());
    }

    #[test]
    fn duration_conversion() {
        let d = pbuf::Duration { seconds: 1, nanos: 500_000_000 };
        assert_eq!(duration(&d).unwrap(), Duration::from_millis(1500));
        assert!(duration(&pbuf::Duration { seconds: -1, nanos: 0 }).is_err());
        let zero = Some(pbuf::Duration::default());
        assert_eq!(duration_zero_disables(&zero, Some(Duration::from_secs(1)), "x").unwrap(), None);
        assert_eq!(
            duration_zero_disables(&None, Some(Duration::from_secs(1)), "x").unwrap(),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn unpack_rejects_wrong_type_url() {
        let any = pbuf::Any { type_url: "type.googleapis.com/foo.Bar".into(), value: vec![] };
        let err = unpack::<pbuf::BoolValue>(&any).unwrap_err();
        assert!(err.to_string().contains("unexpected type URL 'type.googleapis.com/foo.Bar'"), "{err}");
    }
}
