//! The client's state store per type and the stream sessions (SotW and Delta) that drive it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::resources::{self, Entry};
use super::transport::{self, StreamKind};
use super::{Backoff, ClientConfig, ClientStats, Mode, ServerAddr};
use crate::control_plane::fnv1a;
use crate::sink::{ConfigSink, Rejected, ResourceType, Update};

/// Requests waiting to be written; a server that stops reading fails the stream instead of
/// growing this without bound.
const REQUEST_QUEUE: usize = 1024;
/// `google.rpc.Code.INTERNAL`, what Envoy puts in NACKs (`GrpcMuxImpl`, `DeltaSubscriptionState`).
const NACK_CODE: i32 = 13;
/// Order of the initial requests on a stream (Envoy: CDS, EDS, RTDS, LDS, RDS, then the
/// subscriptions listeners and route configurations bring along).
const ORDER: [ResourceType; 8] = [
    ResourceType::Cluster,
    ResourceType::ClusterLoadAssignment,
    ResourceType::Runtime,
    ResourceType::Listener,
    ResourceType::RouteConfiguration,
    ResourceType::ScopedRouteConfiguration,
    ResourceType::VirtualHost,
    ResourceType::Secret,
];

/// What every session of one [`super::run`] shares.
pub(crate) struct Shared {
    pub(crate) cfg: ClientConfig,
    sink: Arc<dyn ConfigSink>,
    stats: Arc<ClientStats>,
    /// Bumped after every applied update so sessions re-query the wanted RDS/EDS names.
    wanted: watch::Sender<u64>,
    connected: AtomicUsize,
    node: core::Node,
}

impl Shared {
    pub(crate) fn new(cfg: ClientConfig, sink: Arc<dyn ConfigSink>, stats: Arc<ClientStats>) -> Arc<Self> {
        let node = cfg.node_proto();
        let changes = sink.wanted_changes();
        let sh = Arc::new(Self { cfg, sink, stats, wanted: watch::channel(0).0, connected: AtomicUsize::new(0), node });
        if let Some(mut rx) = changes {
            // The data plane asks for names on its own (VHDS on demand): re-query like after an update.
            let weak = Arc::downgrade(&sh);
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    match weak.upgrade() {
                        Some(sh) => sh.bump_wanted(),
                        None => break,
                    }
                }
            });
        }
        sh
    }

    fn bump_wanted(&self) {
        self.wanted.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Counts a connected stream; drives `control_plane.connected_state` and `sink.connected`.
struct Connected<'a>(&'a Shared);

impl<'a> Connected<'a> {
    fn new(sh: &'a Shared) -> Self {
        if sh.connected.fetch_add(1, Ordering::SeqCst) == 0 {
            sh.stats.connected_state.store(1, Ordering::Relaxed);
            sh.sink.connected(true);
        }
        Self(sh)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        if self.0.connected.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.stats.connected_state.store(0, Ordering::Relaxed);
            self.0.sink.connected(false);
        }
    }
}

/// Protocol state of one type; survives reconnects.
#[derive(Debug)]
struct TypeState {
    type_: ResourceType,
    /// SotW: last accepted `version_info`.
    version_info: String,
    /// Nonce of the last response on the current stream.
    nonce: String,
    /// Subscribed names (RDS/EDS); `None` for wildcard types.
    names: Option<BTreeSet<String>>,
    /// Lazy wildcard types (SRDS): subscribed once the config needs them, then for good.
    active: bool,
    /// A request for this type went out on the current stream.
    requested: bool,
    /// Names applied to the sink (SotW wildcard removal).
    known: BTreeSet<String>,
    /// Delta: accepted per-resource versions.
    resource_versions: BTreeMap<String, String>,
    /// Hash of the accepted bytes per resource: identical re-sends are not re-applied.
    hashes: HashMap<String, u64>,
    /// When the initial fetch times out.
    init_deadline: Option<Instant>,
}

impl TypeState {
    fn new(t: ResourceType) -> Self {
        Self {
            type_: t,
            version_info: String::new(),
            nonce: String::new(),
            names: (!t.is_wildcard()).then(BTreeSet::new),
            active: !t.is_lazy(),
            requested: false,
            known: BTreeSet::new(),
            resource_versions: BTreeMap::new(),
            hashes: HashMap::new(),
            init_deadline: None,
        }
    }

    fn arm(&mut self, timeout: Option<Duration>) {
        if let (Some(d), None) = (timeout, self.init_deadline) {
            self.init_deadline = Some(Instant::now() + d);
        }
    }

    fn request_names(&self) -> Vec<String> {
        self.names.as_ref().map(|n| n.iter().cloned().collect()).unwrap_or_default()
    }
}

type States = BTreeMap<ResourceType, TypeState>;

/// Activates a lazy wildcard type once the sink wants it; returns whether the type is active.
fn activate(sh: &Shared, st: &mut TypeState) -> bool {
    if !st.active && sh.sink.wanted(st.type_).is_some_and(|w| !w.is_empty()) {
        st.active = true;
        st.arm(sh.cfg.fetch_timeout(st.type_));
    }
    st.active
}

/// Jittered exponential backoff.
struct BackoffState {
    cfg: Backoff,
    next: Duration,
}

impl BackoffState {
    fn new(cfg: Backoff) -> Self {
        Self { cfg, next: cfg.initial }
    }

    fn reset(&mut self) {
        self.next = self.cfg.initial;
    }

    fn delay(&mut self) -> Duration {
        let d = self.next.min(self.cfg.max);
        self.next = (d * 2).min(self.cfg.max).max(self.cfg.initial);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let lo = ms / 2;
        Duration::from_millis(if ms > lo { rand::rng().random_range(lo..=ms) } else { ms })
    }
}

/// Drives one stream (ADS, or one type) forever: connect, run a session, back off, repeat.
pub(crate) async fn drive(sh: Arc<Shared>, kind: StreamKind, types: Vec<ResourceType>, server: ServerAddr) {
    let mut states: States = types.iter().map(|t| (*t, TypeState::new(*t))).collect();
    for st in states.values_mut() {
        if st.type_.is_wildcard() && st.active {
            st.arm(sh.cfg.fetch_timeout(st.type_));
        }
    }
    let mut backoff = BackoffState::new(sh.cfg.backoff);
    let mut wanted_rx = sh.wanted.subscribe();
    if let StreamKind::Single(t) = kind {
        // A stream of its own for SRDS or VHDS opens only once the config uses them, so a
        // control plane that does not serve them is not pestered with failing streams.
        if matches!(t, ResourceType::ScopedRouteConfiguration | ResourceType::VirtualHost | ResourceType::Secret) {
            while sh.sink.wanted(t).is_none_or(|w| w.is_empty()) {
                if wanted_rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
    loop {
        let (responded, err) = match sh.cfg.mode {
            Mode::Sotw => session::<Sotw>(&sh, kind, &server, &mut states, &mut wanted_rx).await,
            Mode::Delta => session::<Delta>(&sh, kind, &server, &mut states, &mut wanted_rx).await,
        };
        for t in states.keys() {
            sh.stats.for_type(*t).update_failure.fetch_add(1, Ordering::Relaxed);
        }
        if responded {
            backoff.reset();
        }
        let d = backoff.delay();
        tracing::warn!(?kind, error = %err, retry_in = ?d, "xDS stream to the control plane failed");
        with_timers(tokio::time::sleep(d), &mut states, &sh).await;
    }
}

/// Polls `fut` while firing due initial-fetch timers.
async fn with_timers<F: Future>(fut: F, states: &mut States, sh: &Shared) -> F::Output {
    tokio::pin!(fut);
    loop {
        let next = next_deadline(states);
        tokio::select! {
            out = &mut fut => return out,
            _ = sleep_until_opt(next) => fire_due(states, sh),
        }
    }
}

fn next_deadline(states: &States) -> Option<Instant> {
    states.values().filter_map(|s| s.init_deadline).min()
}

async fn sleep_until_opt(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn fire_due(states: &mut States, sh: &Shared) {
    let now = Instant::now();
    for st in states.values_mut() {
        if st.init_deadline.is_some_and(|d| d <= now) {
            st.init_deadline = None;
            sh.stats.for_type(st.type_).init_fetch_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(type_url = st.type_.type_url(), "initial fetch timed out");
            sh.sink.initial_fetch_timeout(st.type_);
        }
    }
}

/// Queue of requests to the server; attaches the node as configured.
struct Outbox<'a, T> {
    tx: mpsc::Sender<T>,
    first: bool,
    sh: &'a Shared,
}

impl<T> Outbox<'_, T> {
    fn node(&mut self) -> Option<core::Node> {
        let attach = self.first || !self.sh.cfg.set_node_on_first_message_only;
        self.first = false;
        attach.then(|| self.sh.node.clone())
    }

    fn send(&self, msg: T) -> Result<(), String> {
        self.tx.try_send(msg).map_err(|_| "the control plane is not reading requests".to_string())
    }
}

fn nack_status(message: String) -> Option<RpcStatus> {
    Some(RpcStatus { code: NACK_CODE, message, details: Vec::new() })
}

fn unsubscribed_message(type_url: &str) -> String {
    match ResourceType::from_type_url(type_url) {
        Some(_) => format!("type URL {type_url} was not subscribed to on this stream"),
        None if type_url.contains(".v2.") => format!("type URL {type_url} is an xDS v2 type; only v3 is supported"),
        None => format!("unknown type URL {type_url}"),
    }
}

/// What processing one response produced.
struct Outcome {
    rejected: Vec<Rejected>,
    whole: Option<String>,
}

impl Outcome {
    fn message(&self, t: ResourceType) -> Option<String> {
        match &self.whole {
            Some(m) => Some(resources::bounded(m.clone())),
            None if self.rejected.is_empty() => None,
            None => Some(resources::nack_message(t, &self.rejected)),
        }
    }
}

/// Decodes, applies and bookkeeps one response's resources for `st`.
fn apply(
    sh: &Shared,
    st: &mut TypeState,
    entries: &[Entry<'_>],
    removed: Vec<String>,
    version: &str,
    sotw: bool,
) -> Outcome {
    let t = st.type_;
    let mut p = match resources::process(t, entries, &st.hashes, st.names.as_ref()) {
        Ok(p) => p,
        Err(m) => return Outcome { rejected: Vec::new(), whole: Some(m) },
    };
    let removed: Vec<String> = if sotw && t.is_wildcard() {
        st.known.iter().filter(|n| !p.names.contains(*n)).cloned().collect()
    } else {
        removed
    };
    let updated: Vec<(String, String)> = p.updated.iter().map(|u| (u.name.clone(), u.version.clone())).collect();
    // VHDS: even an empty answer (an unresolved on-demand name) goes to the sink, which wakes
    // the requests waiting for it.
    let sink_rejected = if p.updated.is_empty() && removed.is_empty() && !sotw && t != ResourceType::VirtualHost {
        Vec::new()
    } else {
        sh.sink.apply(Update {
            type_: t,
            updated: std::mem::take(&mut p.updated),
            removed: removed.clone(),
            version: version.to_string(),
        })
    };
    for n in &removed {
        st.known.remove(n);
        st.hashes.remove(n);
        st.resource_versions.remove(n);
    }
    for (name, v) in updated {
        if sink_rejected.iter().any(|r| r.name == name) {
            continue;
        }
        if let Some(h) = p.hashes.get(&name) {
            st.hashes.insert(name.clone(), *h);
        }
        st.resource_versions.insert(name.clone(), v);
        st.known.insert(name);
    }
    for (name, v) in p.unchanged {
        st.resource_versions.insert(name, v);
    }
    let mut rejected = p.rejected;
    rejected.extend(sink_rejected);
    if !t.is_wildcard() {
        let rejected_names: Vec<String> = rejected.iter().map(|r| r.name.clone()).collect();
        let accepted: Vec<String> =
            p.names.iter().filter(|n| !rejected_names.contains(n) && is_named(st, n)).cloned().collect();
        sh.sink.resource_outcomes(t, &accepted, &rejected_names);
    }
    Outcome { rejected, whole: None }
}

/// Whether `name` is one the type subscribed to (by name: the VHDS namespace is not counted).
fn is_named(st: &TypeState, name: &str) -> bool {
    st.names.as_ref().is_some_and(|n| n.contains(name))
}

fn record_result(sh: &Shared, st: &mut TypeState, message: &Option<String>, version: &str) {
    let ts = sh.stats.for_type(st.type_);
    match message {
        None => {
            ts.update_success.fetch_add(1, Ordering::Relaxed);
            ts.version.store(fnv1a(&[version.as_bytes()]), Ordering::Relaxed);
        }
        Some(m) => {
            ts.update_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(type_url = st.type_.type_url(), error = %m, "xDS update rejected");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One stream session, for either protocol

/// What differs between state-of-the-world and incremental xDS on a stream.
trait Protocol {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// Opens the stream (boxed: once per stream).
    fn open(
        ch: Channel,
        kind: StreamKind,
        reqs: ReceiverStream<Self::Request>,
        max: usize,
    ) -> BoxFuture<'static, Result<Streaming<Self::Response>, Status>>;

    /// Before the first request on a new stream: forget what no longer is wanted.
    fn forget_unwanted(_st: &mut TypeState, _wanted: &BTreeSet<String>) {}

    /// The first request of `st` on a new stream.
    fn initial(out: &mut Outbox<'_, Self::Request>, st: &mut TypeState) -> Result<(), String>;

    /// Applies a response and answers it (ACK/NACK), then follows subscription changes.
    fn on_response(
        sh: &Shared,
        states: &mut States,
        out: &mut Outbox<'_, Self::Request>,
        resp: Self::Response,
    ) -> Result<(), String>;

    /// Re-queries the wanted names and sends requests where they changed.
    fn resubscribe(sh: &Shared, states: &mut States, out: &mut Outbox<'_, Self::Request>) -> Result<(), String>;
}

/// Connects, subscribes and serves one stream until it fails; returns whether any response
/// arrived (backoff resets then) and why the stream ended.
async fn session<P: Protocol>(
    sh: &Shared,
    kind: StreamKind,
    server: &ServerAddr,
    states: &mut States,
    wanted_rx: &mut watch::Receiver<u64>,
) -> (bool, String) {
    let ch = match with_timers(transport::connect(server), states, sh).await {
        Ok(c) => c,
        Err(e) => return (false, e),
    };
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let mut out = Outbox { tx, first: true, sh };
    for t in ORDER {
        let Some(st) = states.get_mut(&t) else { continue };
        st.nonce.clear();
        st.requested = false;
        if !activate(sh, st) {
            continue;
        }
        if !t.is_wildcard() {
            let wanted = sh.sink.wanted(t).unwrap_or_default();
            let old = st.names.clone().unwrap_or_default();
            if wanted.iter().any(|n| !old.contains(n)) {
                st.arm(sh.cfg.fetch_timeout(st.type_));
            }
            P::forget_unwanted(st, &wanted);
            st.names = Some(wanted);
            if st.names.as_ref().is_some_and(BTreeSet::is_empty) {
                continue;
            }
        }
        if let Err(e) = P::initial(&mut out, st) {
            return (false, e);
        }
    }
    let open = P::open(ch, kind, ReceiverStream::new(rx), sh.cfg.max_message_size);
    let mut stream = match with_timers(tokio::time::timeout(transport::OPEN_TIMEOUT, open), states, sh).await {
        Ok(Ok(s)) => s,
        Ok(Err(status)) => return (false, format!("cannot open the stream: {status}")),
        Err(_) => return (false, "opening the stream timed out".into()),
    };
    let _connected = Connected::new(sh);
    let mut responded = false;
    wanted_rx.mark_unchanged();
    loop {
        let next = next_deadline(states);
        let step = tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    responded = true;
                    P::on_response(sh, states, &mut out, resp)
                }
                Ok(None) => Err("stream closed by the control plane".to_string()),
                Err(s) => Err(format!("stream failed: {s}")),
            },
            r = wanted_rx.changed() => match r {
                Ok(()) => P::resubscribe(sh, states, &mut out),
                Err(_) => Err("client shutting down".to_string()),
            },
            _ = sleep_until_opt(next) => {
                fire_due(states, sh);
                Ok(())
            }
        };
        if let Err(e) = step {
            return (responded, e);
        }
    }
}

/// The state of a response's type, with the attempt counted and the nonce taken; `None` for
/// a type this stream does not watch (Envoy ignores those, an ECDS or v2 push say: no ACK,
/// no NACK, nothing applied).
fn state_for<'a>(sh: &Shared, states: &'a mut States, type_url: &str, nonce: &str) -> Option<&'a mut TypeState> {
    let Some(st) = ResourceType::from_type_url(type_url).and_then(|t| states.get_mut(&t)) else {
        tracing::warn!("ignoring xDS response for unwatched type: {}", unsubscribed_message(type_url));
        return None;
    };
    sh.stats.for_type(st.type_).update_attempt.fetch_add(1, Ordering::Relaxed);
    st.nonce = nonce.to_string();
    st.init_deadline = None;
    Some(st)
}

/// Applies a response's resources and records the outcome; returns the NACK message, if any.
fn accept(
    sh: &Shared,
    st: &mut TypeState,
    entries: &[Entry<'_>],
    removed: Vec<String>,
    version: &str,
    sotw: bool,
) -> Option<String> {
    let message = apply(sh, st, entries, removed, version, sotw).message(st.type_);
    record_result(sh, st, &message, version);
    if message.is_none() {
        st.version_info = version.to_string();
    }
    message
}

// ---------------------------------------------------------------------------------------------
// SotW

struct Sotw;

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn open(
        ch: Channel,
        kind: StreamKind,
        reqs: ReceiverStream<DiscoveryRequest>,
        max: usize,
    ) -> BoxFuture<'static, Result<Streaming<DiscoveryResponse>, Status>> {
        Box::pin(transport::open_sotw(ch, kind, reqs, max))
    }

    fn initial(out: &mut Outbox<'_, DiscoveryRequest>, st: &mut TypeState) -> Result<(), String> {
        send_sotw(out, st, None)
    }

    fn on_response(
        sh: &Shared,
        states: &mut States,
        out: &mut Outbox<'_, DiscoveryRequest>,
        resp: DiscoveryResponse,
    ) -> Result<(), String> {
        let Some(st) = state_for(sh, states, &resp.type_url, &resp.nonce) else { return Ok(()) };
        let entries: Vec<Entry<'_>> = resp
            .resources
            .iter()
            .map(|a| Entry { wrapper_name: None, version: resp.version_info.clone(), any: Some(a) })
            .collect();
        let message = accept(sh, st, &entries, Vec::new(), &resp.version_info, true);
        send_sotw(out, st, message.and_then(nack_status))?;
        sh.bump_wanted();
        Self::resubscribe(sh, states, out)
    }

    fn resubscribe(sh: &Shared, states: &mut States, out: &mut Outbox<'_, DiscoveryRequest>) -> Result<(), String> {
        resubscribe_sotw(sh, states, out)
    }
}

fn send_sotw(
    out: &mut Outbox<'_, DiscoveryRequest>,
    st: &mut TypeState,
    error_detail: Option<RpcStatus>,
) -> Result<(), String> {
    st.requested = true;
    let req = DiscoveryRequest {
        version_info: st.version_info.clone(),
        node: out.node(),
        resource_names: st.request_names(),
        type_url: st.type_.type_url().to_string(),
        response_nonce: st.nonce.clone(),
        error_detail,
        ..Default::default()
    };
    out.send(req)
}

/// Re-queries the wanted RDS/EDS names and sends a request where they changed.
fn resubscribe_sotw(sh: &Shared, states: &mut States, out: &mut Outbox<'_, DiscoveryRequest>) -> Result<(), String> {
    for t in ORDER {
        let Some(st) = states.get_mut(&t) else { continue };
        if !st.active {
            if activate(sh, st) {
                send_sotw(out, st, None)?;
            }
            continue;
        }
        let Some(old) = &st.names else { continue };
        let wanted = sh.sink.wanted(t).unwrap_or_default();
        if &wanted == old {
            continue;
        }
        let added = wanted.iter().any(|n| !old.contains(n));
        if added {
            st.arm(sh.cfg.fetch_timeout(st.type_));
        }
        st.names = Some(wanted);
        if st.names.as_ref().is_some_and(|n| !n.is_empty()) || st.requested {
            send_sotw(out, st, None)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Delta

struct Delta;

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn open(
        ch: Channel,
        kind: StreamKind,
        reqs: ReceiverStream<DeltaDiscoveryRequest>,
        max: usize,
    ) -> BoxFuture<'static, Result<Streaming<DeltaDiscoveryResponse>, Status>> {
        Box::pin(transport::open_delta(ch, kind, reqs, max))
    }

    fn forget_unwanted(st: &mut TypeState, wanted: &BTreeSet<String>) {
        st.resource_versions.retain(|k, _| wanted.contains(k));
        st.hashes.retain(|k, _| wanted.contains(k));
    }

    fn initial(out: &mut Outbox<'_, DeltaDiscoveryRequest>, st: &mut TypeState) -> Result<(), String> {
        send_delta_initial(out, st)
    }

    fn on_response(
        sh: &Shared,
        states: &mut States,
        out: &mut Outbox<'_, DeltaDiscoveryRequest>,
        resp: DeltaDiscoveryResponse,
    ) -> Result<(), String> {
        let Some(st) = state_for(sh, states, &resp.type_url, &resp.nonce) else { return Ok(()) };
        let entries: Vec<Entry<'_>> = resp
            .resources
            .iter()
            .map(|r| Entry {
                wrapper_name: Some(r.name.as_str()),
                version: r.version.clone(),
                any: r.resource.as_ref(),
            })
            .collect();
        let mut removed: Vec<String> = resp.removed_resources.clone();
        removed.extend(resp.removed_resource_names.iter().map(|n| n.name.clone()));
        removed.sort();
        removed.dedup();
        let message = accept(sh, st, &entries, removed, &resp.system_version_info, false);
        let req = DeltaDiscoveryRequest {
            node: out.node(),
            type_url: st.type_.type_url().to_string(),
            response_nonce: resp.nonce.clone(),
            error_detail: message.and_then(nack_status),
            ..Default::default()
        };
        out.send(req)?;
        sh.bump_wanted();
        Self::resubscribe(sh, states, out)
    }

    fn resubscribe(
        sh: &Shared,
        states: &mut States,
        out: &mut Outbox<'_, DeltaDiscoveryRequest>,
    ) -> Result<(), String> {
        resubscribe_delta(sh, states, out)
    }
}

/// The first request of a type on a stream: subscriptions plus the versions we hold.
fn send_delta_initial(out: &mut Outbox<'_, DeltaDiscoveryRequest>, st: &mut TypeState) -> Result<(), String> {
    st.requested = true;
    let req = DeltaDiscoveryRequest {
        node: out.node(),
        type_url: st.type_.type_url().to_string(),
        resource_names_subscribe: st.request_names(),
        initial_resource_versions: st.resource_versions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    out.send(req)
}

/// Re-queries the wanted RDS/EDS names and sends (un)subscriptions where they changed.
fn resubscribe_delta(
    sh: &Shared,
    states: &mut States,
    out: &mut Outbox<'_, DeltaDiscoveryRequest>,
) -> Result<(), String> {
    for t in ORDER {
        let Some(st) = states.get_mut(&t) else { continue };
        if !st.active {
            if activate(sh, st) {
                send_delta_initial(out, st)?;
            }
            continue;
        }
        let Some(old) = st.names.clone() else { continue };
        let wanted = sh.sink.wanted(t).unwrap_or_default();
        if wanted == old {
            continue;
        }
        let subscribe: Vec<String> = wanted.difference(&old).cloned().collect();
        let unsubscribe: Vec<String> = old.difference(&wanted).cloned().collect();
        if !subscribe.is_empty() {
            st.arm(sh.cfg.fetch_timeout(st.type_));
        }
        for n in &unsubscribe {
            st.resource_versions.remove(n);
            st.hashes.remove(n);
            st.known.remove(n);
        }
        st.names = Some(wanted);
        if !st.requested {
            if st.names.as_ref().is_some_and(|n| !n.is_empty()) {
                send_delta_initial(out, st)?;
            }
            continue;
        }
        let req = DeltaDiscoveryRequest {
            node: out.node(),
            type_url: t.type_url().to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        };
        out.send(req)?;
    }
    Ok(())
}
