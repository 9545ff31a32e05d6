//! One SotW stream of the test control plane.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{empty_means_wildcard, Event, Flow, Misbehave, Names, Protocol, ProtocolStream, RecordedRequest, Serve};

pub(crate) struct Watch {
    names: Names,
    /// Snapshot version last sent (or the version the client said it has).
    sent_version: Option<String>,
    /// Nonce of the last response of this type.
    last_nonce: String,
}

/// The SotW protocol of the test control plane's streams.
pub(crate) struct Sotw;

type Stream = ProtocolStream<Sotw>;

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Watch = Watch;

    fn injected(ev: Event) -> Option<DiscoveryResponse> {
        match ev {
            Event::InjectSotw(resp) => Some(*resp),
            _ => None,
        }
    }
}

impl Serve<Sotw> for Stream {
    async fn on_request(&mut self, req: DiscoveryRequest) -> Flow {
        let type_url = self.begin_request(&req.type_url, req.node.as_ref());
        self.cp.record(RecordedRequest {
            node_id: self.node_id.clone(),
            type_url: type_url.clone(),
            version_info: req.version_info.clone(),
            response_nonce: req.response_nonce.clone(),
            resource_names: req.resource_names.clone(),
            unsubscribe: Vec::new(),
            initial_resource_versions: BTreeMap::new(),
            error_detail: req.error_detail.as_ref().map(|s| (s.code, s.message.clone())),
            delta: false,
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
        let names = if req.resource_names.iter().any(|n| n == "*")
            || (req.resource_names.is_empty() && empty_means_wildcard(&type_url))
        {
            Names::Wildcard
        } else {
            Names::Set(req.resource_names.iter().cloned().collect::<BTreeSet<_>>())
        };
        let force = match self.watches.get_mut(&type_url) {
            None => {
                let sent_version = (!req.version_info.is_empty()).then(|| req.version_info.clone());
                self.watches.insert(type_url.clone(), Watch { names, sent_version, last_nonce: String::new() });
                false
            }
            Some(w) => {
                if !req.response_nonce.is_empty() && req.response_nonce != w.last_nonce {
                    // Stale nonce: the client has not seen our latest response yet.
                    return Flow::Continue;
                }
                if w.names != names {
                    w.names = names;
                    true
                } else {
                    false
                }
            }
        };
        self.respond(&type_url, force).await
    }

    async fn push_all(&mut self) -> Flow {
        let types: Vec<String> = self.watches.keys().cloned().collect();
        for t in types {
            if let Flow::Close = self.respond(&t, false).await {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn inject(&mut self, mut resp: DiscoveryResponse) -> Flow {
        if resp.nonce.is_empty() {
            resp.nonce = self.cp.next_nonce();
        }
        if let Some(w) = self.watches.get_mut(&resp.type_url) {
            w.last_nonce = resp.nonce.clone();
        }
        self.send(resp).await
    }
}

impl Stream {
    async fn respond(&mut self, type_url: &str, force: bool) -> Flow {
        if self.cp.misbehave() == Misbehave::Silent {
            return Flow::Continue;
        }
        let Some(snap) = self.cp.snapshot_for(&self.node_id) else { return Flow::Continue };
        let Some(w) = self.watches.get_mut(type_url) else { return Flow::Continue };
        if !force && w.sent_version.as_deref() == Some(snap.version.as_str()) {
            return Flow::Continue;
        }
        let mut resources = Vec::new();
        if let Some(of_type) = snap.of_type(type_url) {
            match &w.names {
                Names::Wildcard => resources.extend(of_type.values().map(|r| r.to_any())),
                Names::Set(names) => resources.extend(names.iter().filter_map(|n| of_type.get(n)).map(|r| r.to_any())),
            }
        }
        resources.extend(snap.extras.iter().filter(|(t, _)| t == type_url).map(|(_, r)| r.to_any()));
        let nonce = self.cp.next_nonce();
        w.sent_version = Some(snap.version.clone());
        w.last_nonce = nonce.clone();
        let resp = DiscoveryResponse {
            version_info: snap.version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        };
        self.send(resp).await
    }
}
