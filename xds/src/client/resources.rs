//! Typed handlers: `Any` payloads of a response -> decoded, PGV-validated, translated model
//! resources, plus the rejected ones (which become the NACK).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::Resource as ResourceWrapper;
use envoy_types::pb::envoy::service::runtime::v3::Runtime;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::control_plane::fnv1a;
use crate::decode::{validate_prost, validate_prost_shallow};
use crate::error::ConfigError;
use crate::sink::{Rejected, Resource, ResourceType, ResourceUpdate};
use crate::translate;

/// Type URL of the `Resource` wrapper some servers put around SotW resources.
const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// Longest NACK message we send (a hostile response can have very many bad resources).
const MAX_NACK_MESSAGE: usize = 64 * 1024;

/// One resource of a response.
pub(crate) struct Entry<'a> {
    /// Delta: the `Resource.name` of the wrapper.
    pub wrapper_name: Option<&'a str>,
    /// Version to record for the resource.
    pub version: String,
    /// The payload (Delta: may be missing).
    pub any: Option<&'a Any>,
}

/// The outcome for a response that could be decoded as a whole.
#[derive(Debug, Default)]
pub(crate) struct Processed {
    /// Resources that passed validation and translation.
    pub updated: Vec<ResourceUpdate>,
    /// Resources that did not.
    pub rejected: Vec<Rejected>,
    /// Every resource name in the response.
    pub names: BTreeSet<String>,
    /// Hash of the payload of each updated resource.
    pub hashes: HashMap<String, u64>,
    /// Resources identical to what was accepted before, as (name, version): not re-applied.
    pub unchanged: Vec<(String, String)>,
}

enum Decoded {
    Listener(Box<Listener>),
    Route(Box<RouteConfiguration>),
    Cluster(Box<Cluster>),
    Endpoints(Box<ClusterLoadAssignment>),
    Scope(Box<ScopedRouteConfiguration>),
    /// VHDS resources are named by their wrapper (`<route config>/<vhost>`), not the message.
    VirtualHost(Box<VirtualHost>, String),
    Runtime(Box<Runtime>),
    Secret(Box<Secret>),
}

impl Decoded {
    fn name(&self) -> &str {
        match self {
            Decoded::Listener(m) => &m.name,
            Decoded::Route(m) => &m.name,
            Decoded::Cluster(m) => &m.name,
            Decoded::Endpoints(m) => &m.cluster_name,
            Decoded::Scope(m) => &m.name,
            Decoded::VirtualHost(_, name) => name,
            Decoded::Runtime(m) => &m.name,
            Decoded::Secret(m) => &m.name,
        }
    }

    /// The PGV check Envoy's gRPC mux makes while decoding a response (not into `Any`
    /// payloads): one failure rejects the whole response.
    fn validate_shallow(&self) -> Result<(), ConfigError> {
        match self {
            Decoded::Listener(m) => validate_prost_shallow(m.as_ref()),
            Decoded::Route(m) => validate_prost_shallow(m.as_ref()),
            Decoded::Cluster(m) => validate_prost_shallow(m.as_ref()),
            Decoded::Endpoints(m) => validate_prost_shallow(m.as_ref()),
            Decoded::Scope(m) => validate_prost_shallow(m.as_ref()),
            Decoded::VirtualHost(m, _) => validate_prost_shallow(m.as_ref()),
            Decoded::Runtime(m) => validate_prost_shallow(m.as_ref()),
            Decoded::Secret(m) => validate_prost_shallow(m.as_ref()),
        }
    }
}

/// The word Envoy uses for a type in its NACK messages.
pub(crate) fn kind(t: ResourceType) -> &'static str {
    match t {
        ResourceType::Listener => "listener",
        ResourceType::RouteConfiguration => "route configuration",
        ResourceType::Cluster => "cluster",
        ResourceType::ClusterLoadAssignment => "cluster load assignment",
        ResourceType::ScopedRouteConfiguration => "scoped route configuration",
        ResourceType::VirtualHost => "virtual host",
        ResourceType::Runtime => "runtime layer",
        ResourceType::Secret => "secret",
    }
}

/// Decodes every entry; a payload that cannot be decoded, a wrong type URL, a PGV violation
/// outside `Any` payloads or a duplicate name rejects the whole response (as Envoy's gRPC mux
/// does: it validates while decoding). Validation of typed configs and translation failures
/// reject only the resource. Resources whose payload hash equals `accepted[name]` are
/// listed as unchanged and not translated again; names outside `subscribed` (when given) are
/// ignored.
pub(crate) fn process(
    t: ResourceType,
    entries: &[Entry<'_>],
    accepted: &HashMap<String, u64>,
    subscribed: Option<&BTreeSet<String>>,
) -> Result<Processed, String> {
    let mut decoded = Vec::with_capacity(entries.len());
    let mut out = Processed::default();
    for (i, e) in entries.iter().enumerate() {
        let Some(any) = e.any else {
            if t == ResourceType::VirtualHost {
                // VHDS answers an on-demand name it cannot resolve with an empty resource
                // carrying the name as an alias (Envoy skips those).
                continue;
            }
            return Err(format!("resource {i} ({}): the resource body is missing", e.wrapper_name.unwrap_or("")));
        };
        let d = decode_any(t, any, e.wrapper_name).map_err(|m| format!("resource {i}: {m}"))?;
        let name = d.name().to_string();
        if !out.names.insert(name.clone()) {
            return Err(format!("duplicate {} {name} found", kind(t)));
        }
        d.validate_shallow().map_err(|e| nack_message(t, &[Rejected { name: name.clone(), reason: e.to_string() }]))?;
        decoded.push((d, e, fnv1a(&[any.type_url.as_bytes(), &any.value])));
    }
    for (d, e, hash) in decoded {
        let name = d.name().to_string();
        if subscribed.is_some_and(|w| !is_subscribed(t, w, &name)) {
            // Not subscribed (RDS/EDS): ignored, as Envoy's watch map does.
            continue;
        }
        if accepted.get(&name) == Some(&hash) {
            out.unchanged.push((name, e.version.clone()));
            continue;
        }
        if let Some(w) = e.wrapper_name {
            if w != name {
                out.rejected.push(Rejected {
                    name: name.clone(),
                    reason: format!("name in the Resource wrapper ({w}) does not match the resource name"),
                });
                continue;
            }
        }
        if name.is_empty() {
            out.rejected.push(Rejected { name, reason: "name: resource name must not be empty".into() });
            continue;
        }
        match build(d) {
            Ok((resource, raw)) => {
                out.hashes.insert(name.clone(), hash);
                out.updated.push(ResourceUpdate { name, version: e.version.clone(), resource, raw })
            }
            Err(err) => out.rejected.push(Rejected { name, reason: err.to_string() }),
        }
    }
    Ok(out)
}

/// Whether `name` is covered by the subscribed names. VHDS uses namespace matching (Envoy's
/// `use_namespace_matching`): subscribing to a route configuration name covers every
/// `<name>/<vhost>` resource.
fn is_subscribed(t: ResourceType, subscribed: &BTreeSet<String>, name: &str) -> bool {
    if subscribed.contains(name) {
        return true;
    }
    t == ResourceType::VirtualHost && name.rsplit_once('/').is_some_and(|(ns, _)| subscribed.contains(ns))
}

fn decode_any(t: ResourceType, any: &Any, wrapper_name: Option<&str>) -> Result<Decoded, String> {
    let unwrapped;
    let any = if any.type_url == RESOURCE_WRAPPER {
        let w = ResourceWrapper::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode envoy.service.discovery.v3.Resource: {e}"))?;
        unwrapped = w.resource.ok_or_else(|| "the Resource wrapper has no resource".to_string())?;
        &unwrapped
    } else {
        any
    };
    if any.type_url != t.type_url() {
        return Err(format!(
            "type URL {} does not match the message-wide type URL {} in DiscoveryResponse",
            any.type_url,
            t.type_url()
        ));
    }
    let bytes = any.value.as_slice();
    let err = |e: prost::DecodeError| format!("cannot decode {}: {e}", t.type_url().rsplit('/').next().unwrap_or(""));
    Ok(match t {
        ResourceType::Listener => Decoded::Listener(Box::new(Listener::decode(bytes).map_err(err)?)),
        ResourceType::RouteConfiguration => Decoded::Route(Box::new(RouteConfiguration::decode(bytes).map_err(err)?)),
        ResourceType::Cluster => Decoded::Cluster(Box::new(Cluster::decode(bytes).map_err(err)?)),
        ResourceType::ClusterLoadAssignment => {
            Decoded::Endpoints(Box::new(ClusterLoadAssignment::decode(bytes).map_err(err)?))
        }
        ResourceType::ScopedRouteConfiguration => {
            Decoded::Scope(Box::new(ScopedRouteConfiguration::decode(bytes).map_err(err)?))
        }
        ResourceType::VirtualHost => {
            let vh = VirtualHost::decode(bytes).map_err(err)?;
            let name = match wrapper_name {
                Some(w) => w.to_string(),
                None => return Err("VHDS resources must come in a named Resource wrapper (Delta xDS)".into()),
            };
            Decoded::VirtualHost(Box::new(vh), name)
        }
        ResourceType::Runtime => Decoded::Runtime(Box::new(Runtime::decode(bytes).map_err(err)?)),
        ResourceType::Secret => Decoded::Secret(Box::new(Secret::decode(bytes).map_err(err)?)),
    })
}

fn build(d: Decoded) -> Result<(Resource, bytes::Bytes), ConfigError> {
    fn raw<M: Message>(m: &M) -> bytes::Bytes {
        bytes::Bytes::from(m.encode_to_vec())
    }
    Ok(match d {
        Decoded::Listener(m) => {
            validate_prost(m.as_ref())?;
            (Resource::Listener(Arc::new(translate::listener(&m)?)), raw(m.as_ref()))
        }
        Decoded::Route(m) => {
            validate_prost(m.as_ref())?;
            (Resource::RouteConfiguration(Arc::new(translate::route_configuration(&m)?)), raw(m.as_ref()))
        }
        Decoded::Cluster(m) => {
            validate_prost(m.as_ref())?;
            (Resource::Cluster(Arc::new(translate::cluster(&m)?)), raw(m.as_ref()))
        }
        Decoded::Endpoints(m) => {
            validate_prost(m.as_ref())?;
            (Resource::ClusterLoadAssignment(Arc::new(translate::cluster_load_assignment(&m)?)), raw(m.as_ref()))
        }
        Decoded::Scope(m) => {
            validate_prost(m.as_ref())?;
            (Resource::ScopedRouteConfiguration(Arc::new(translate::scoped_route_configuration(&m)?)), raw(m.as_ref()))
        }
        Decoded::VirtualHost(m, _) => {
            validate_prost(m.as_ref())?;
            (Resource::VirtualHost(Arc::new(translate::vhds_virtual_host(&m)?)), raw(m.as_ref()))
        }
        Decoded::Runtime(m) => {
            validate_prost(m.as_ref())?;
            (Resource::Runtime(Arc::new(translate::runtime_layer(&m)?)), raw(m.as_ref()))
        }
        Decoded::Secret(m) => {
            validate_prost(m.as_ref())?;
            (Resource::Secret(Arc::new(translate::secret(&m)?)), raw(m.as_ref()))
        }
    })
}

/// The NACK message: `Error adding/updating listener(s) a: reason, b: reason` (Envoy's form).
pub(crate) fn nack_message(t: ResourceType, rejected: &[Rejected]) -> String {
    let mut msg = format!("Error adding/updating {}(s) ", kind(t));
    for (i, r) in rejected.iter().enumerate() {
        if msg.len() > MAX_NACK_MESSAGE {
            msg.push_str(&format!(", ... and {} more", rejected.len() - i));
            break;
        }
        if i > 0 {
            msg.push_str(", ");
        }
        msg.push_str(&format!("{}: {}", r.name, r.reason));
    }
    msg
}

/// A whole-response rejection message, bounded.
pub(crate) fn bounded(mut msg: String) -> String {
    if msg.len() > MAX_NACK_MESSAGE {
        let mut cut = MAX_NACK_MESSAGE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("...");
    }
    msg
}
