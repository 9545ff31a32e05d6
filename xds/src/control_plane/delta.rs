//! One Delta (incremental) stream of the test control plane.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use super::{empty_means_wildcard, Event, Flow, Misbehave, Names, Protocol, ProtocolStream, RecordedRequest, Serve};

pub(crate) struct Watch {
    names: Names,
    /// VHDS on-demand names (`<route config>/<host>`) subscribed explicitly (also on top of a
    /// wildcard subscription: Envoy opens VHDS with an empty, i.e. wildcard, request).
    on_demand: std::collections::BTreeSet<String>,
    /// Those already answered.
    aliases_done: std::collections::BTreeSet<String>,
    /// Per-resource versions the client has (as far as this stream knows).
    client: HashMap<String, String>,
}

/// The Delta protocol of the test control plane's streams.
pub(crate) struct Delta;

type Stream = ProtocolStream<Delta>;

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Watch = Watch;

    fn injected(ev: Event) -> Option<DeltaDiscoveryResponse> {
        match ev {
            Event::InjectDelta(resp) => Some(*resp),
            _ => None,
        }
    }
}

impl Serve<Delta> for Stream {
    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Flow {
        let type_url = self.begin_request(&req.type_url, req.node.as_ref());
        self.cp.record(RecordedRequest {
            node_id: self.node_id.clone(),
            type_url: type_url.clone(),
            version_info: String::new(),
            response_nonce: req.response_nonce.clone(),
            resource_names: req.resource_names_subscribe.clone(),
            unsubscribe: req.resource_names_unsubscribe.clone(),
            initial_resource_versions: req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            error_detail: req.error_detail.as_ref().map(|s| (s.code, s.message.clone())),
            delta: true,
            has_node: req.node.is_some(),
            stream_id: self.id,
            received_at: std::time::Instant::now(),
        });
        if self.cp.misbehave() == Misbehave::Silent {
            return Flow::Continue;
        }
        if req.error_detail.is_some() && !self.watches.contains_key(&type_url) {
            // A NACK of a type never subscribed (e.g. an injected unknown type): not a subscription.
            return Flow::Continue;
        }
        match self.watches.get_mut(&type_url) {
            None => {
                let names = if req.resource_names_subscribe.iter().any(|n| n == "*")
                    || (req.resource_names_subscribe.is_empty() && empty_means_wildcard(&type_url))
                {
                    Names::Wildcard
                } else {
                    Names::Set(req.resource_names_subscribe.iter().cloned().collect())
                };
                let vhds = is_vhds(&type_url);
                let mut client: HashMap<String, String> = req.initial_resource_versions.clone();
                client.retain(|k, _| names.covers(vhds, k));
                let on_demand = if vhds {
                    req.resource_names_subscribe.iter().filter(|n| n.contains('/')).cloned().collect()
                } else {
                    Default::default()
                };
                self.watches
                    .insert(type_url.clone(), Watch { names, on_demand, aliases_done: Default::default(), client });
            }
            Some(w) => {
                if is_vhds(&type_url) {
                    w.on_demand.extend(req.resource_names_subscribe.iter().filter(|n| n.contains('/')).cloned());
                }
                for n in &req.resource_names_subscribe {
                    match &mut w.names {
                        Names::Wildcard => {}
                        Names::Set(_) if n == "*" => w.names = Names::Wildcard,
                        Names::Set(s) => {
                            s.insert(n.clone());
                        }
                    }
                }
                for n in &req.resource_names_unsubscribe {
                    if n == "*" {
                        if w.names == Names::Wildcard {
                            w.names = Names::Set(Default::default());
                        }
                    } else if let Names::Set(s) = &mut w.names {
                        s.remove(n);
                    }
                    w.client.remove(n);
                }
                let names = w.names.clone();
                let vhds = is_vhds(&type_url);
                w.client.retain(|k, _| names.covers(vhds, k));
            }
        }
        self.respond(&type_url).await
    }

    async fn push_all(&mut self) -> Flow {
        let types: Vec<String> = self.watches.keys().cloned().collect();
        for t in types {
            if let Flow::Close = self.respond(&t).await {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn inject(&mut self, mut resp: DeltaDiscoveryResponse) -> Flow {
        if resp.nonce.is_empty() {
            resp.nonce = self.cp.next_nonce();
        }
        self.send(resp).await
    }
}

impl Stream {
    async fn respond(&mut self, type_url: &str) -> Flow {
        if self.cp.misbehave() == Misbehave::Silent {
            return Flow::Continue;
        }
        let Some(snap) = self.cp.snapshot_for(&self.node_id) else { return Flow::Continue };
        let Some(w) = self.watches.get_mut(type_url) else { return Flow::Continue };
        let empty = BTreeMap::new();
        let of_type = snap.of_type(type_url).unwrap_or(&empty);
        let mut resources = Vec::new();
        let vhds = is_vhds(type_url);
        for (name, raw) in of_type {
            if !w.names.covers(vhds, name) {
                continue;
            }
            let v = raw.version();
            if w.client.get(name) != Some(&v) {
                resources.push(Resource {
                    name: name.clone(),
                    version: v.clone(),
                    resource: Some(raw.to_any()),
                    ..Default::default()
                });
                w.client.insert(name.clone(), v);
            }
        }
        if vhds {
            resources.extend(on_demand_answers(w, of_type));
        }
        let mut removed: Vec<String> = w.client.keys().filter(|n| !of_type.contains_key(*n)).cloned().collect();
        removed.sort();
        for n in &removed {
            w.client.remove(n);
        }
        if resources.is_empty() && removed.is_empty() {
            return Flow::Continue;
        }
        let resp = DeltaDiscoveryResponse {
            system_version_info: snap.version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: self.cp.next_nonce(),
            ..Default::default()
        };
        self.send(resp).await
    }
}

fn is_vhds(type_url: &str) -> bool {
    type_url == crate::sink::ResourceType::VirtualHost.type_url()
}

/// VHDS on demand: each subscribed `<route config>/<host>` name is answered once, with the
/// virtual host of that route config whose domains match `host` (carrying the name as an
/// alias), or with an empty resource when none does (Envoy's protocol for unresolved aliases).
fn on_demand_answers(w: &mut Watch, of_type: &BTreeMap<String, super::RawResource>) -> Vec<Resource> {
    use prost::Message;
    let mut out = Vec::new();
    for n in &w.on_demand {
        let Some((rc, host)) = n.rsplit_once('/') else { continue };
        if of_type.contains_key(n) || w.aliases_done.contains(n) {
            continue;
        }
        let found = of_type.iter().find(|(name, raw)| {
            name.rsplit_once('/').is_some_and(|(ns, _)| ns == rc)
                && envoy_types::pb::envoy::config::route::v3::VirtualHost::decode(raw.value.as_slice())
                    .is_ok_and(|vh| vh.domains.iter().any(|d| domain_matches(d, host)))
        });
        out.push(match found {
            Some((name, raw)) => {
                let v = raw.version();
                w.client.insert(name.clone(), v.clone());
                Resource {
                    name: name.clone(),
                    version: v,
                    resource: Some(raw.to_any()),
                    aliases: vec![n.clone()],
                    ..Default::default()
                }
            }
            None => Resource { name: n.clone(), aliases: vec![n.clone()], ..Default::default() },
        });
        w.aliases_done.insert(n.clone());
    }
    out
}

fn domain_matches(domain: &str, host: &str) -> bool {
    let (d, h) = (domain.to_ascii_lowercase(), host.to_ascii_lowercase());
    if d == "*" || d == h {
        return true;
    }
    if let Some(suffix) = d.strip_prefix('*') {
        return h.len() > suffix.len() && h.ends_with(suffix);
    }
    if let Some(prefix) = d.strip_suffix('*') {
        return h.len() > prefix.len() && h.starts_with(prefix);
    }
    false
}
