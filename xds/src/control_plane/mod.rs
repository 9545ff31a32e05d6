//! A conforming test xDS control plane on tonic + envoy-types: snapshots per node id, ADS and
//! per-type services (LDS/RDS/CDS/EDS), SotW and Delta, and a record of every request it got
//! (ACKs and NACKs). Used by tests, the demo and the interop tests against the real Envoy.
//!
//! Semantics follow go-control-plane: a SotW stream gets a response for a type when the
//! snapshot version differs from what was last sent on that stream for the type, or when the
//! subscribed names change; ACKs and NACKs are recorded and never answered by themselves;
//! stale-nonce requests are recorded and otherwise ignored. Delta streams track the
//! subscribed names and the per-resource versions the client has, and send only the
//! difference (with `removed_resources`).

mod delta;
mod service;
mod sotw;
mod yaml;

pub use yaml::{ads_bootstrap, hcm_listener, static_cluster};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::envoy::service::runtime::v3::Runtime;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::broadcast;

use crate::sink::ResourceType;

/// Node id whose snapshot serves every node without its own.
pub const DEFAULT_NODE: &str = "*";

/// A resource as served: the `Any` type URL and the encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResource {
    /// The `Any.type_url` put on the wire (may differ from the response type in hostile tests).
    pub type_url: String,
    /// The encoded message (or garbage).
    pub value: Vec<u8>,
}

impl RawResource {
    /// As a protobuf `Any`.
    pub fn to_any(&self) -> Any {
        Any { type_url: self.type_url.clone(), value: self.value.clone() }
    }

    /// Per-resource version used by Delta: a stable hash of type URL and bytes.
    pub fn version(&self) -> String {
        format!("{:016x}", fnv1a(&[self.type_url.as_bytes(), &self.value]))
    }
}

/// FNV-1a over several byte slices.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A versioned set of resources for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Snapshot version: SotW `version_info` and Delta `system_version_info`.
    pub version: String,
    /// Resources by response type URL, then by name.
    pub resources: BTreeMap<String, BTreeMap<String, RawResource>>,
    /// Extra entries appended to every SotW response of the type (duplicates allowed; for
    /// hostile tests), as (response type URL, resource).
    pub extras: Vec<(String, RawResource)>,
}

impl Snapshot {
    /// An empty snapshot with `version`.
    pub fn new(version: impl Into<String>) -> Self {
        Self { version: version.into(), ..Default::default() }
    }

    fn with_message<M: Message + prost::Name>(self, rt: ResourceType, name: String, msg: &M) -> Self {
        self.with_raw(rt.type_url(), name, msg.encode_to_vec())
    }

    /// Adds a listener (keyed by its name).
    pub fn with_listener(self, l: Listener) -> Self {
        let name = l.name.clone();
        self.with_message(ResourceType::Listener, name, &l)
    }

    /// Adds a route configuration (keyed by its name).
    pub fn with_route(self, r: RouteConfiguration) -> Self {
        let name = r.name.clone();
        self.with_message(ResourceType::RouteConfiguration, name, &r)
    }

    /// Adds a cluster (keyed by its name).
    pub fn with_cluster(self, c: Cluster) -> Self {
        let name = c.name.clone();
        self.with_message(ResourceType::Cluster, name, &c)
    }

    /// Adds endpoints (keyed by `cluster_name`).
    pub fn with_endpoints(self, e: ClusterLoadAssignment) -> Self {
        let name = e.cluster_name.clone();
        self.with_message(ResourceType::ClusterLoadAssignment, name, &e)
    }

    /// Adds a routing scope (keyed by its name).
    pub fn with_scoped_route(self, s: ScopedRouteConfiguration) -> Self {
        let name = s.name.clone();
        self.with_message(ResourceType::ScopedRouteConfiguration, name, &s)
    }

    /// Adds a VHDS virtual host of route configuration `route_config`, keyed
    /// `<route_config>/<vhost name>` (VHDS's naming). The virtual host's own `name` is set to
    /// that resource name too, as Envoy's VHDS tests do: Envoy 1.40 matches
    /// `removed_resources` against virtual host names, so this is what makes removal work there.
    pub fn with_virtual_host(self, route_config: &str, mut v: VirtualHost) -> Self {
        if !v.name.starts_with(&format!("{route_config}/")) {
            v.name = format!("{route_config}/{}", v.name);
        }
        let name = v.name.clone();
        self.with_message(ResourceType::VirtualHost, name, &v)
    }

    /// Adds a runtime layer (keyed by its name).
    pub fn with_runtime(self, r: Runtime) -> Self {
        let name = r.name.clone();
        self.with_message(ResourceType::Runtime, name, &r)
    }

    /// Adds a secret (keyed by its name). Rotating a certificate is pushing a snapshot with a
    /// new secret of the same name.
    pub fn with_secret(self, s: Secret) -> Self {
        let name = s.name.clone();
        self.with_message(ResourceType::Secret, name, &s)
    }

    /// Adds raw bytes under response type `type_url`, with the same `Any.type_url`.
    pub fn with_raw(self, type_url: impl Into<String>, name: impl Into<String>, bytes: Vec<u8>) -> Self {
        let type_url = type_url.into();
        self.with_any(type_url.clone(), name, Any { type_url, value: bytes })
    }

    /// Adds an arbitrary `Any` under response type `response_type_url` (e.g. a wrong type URL).
    pub fn with_any(mut self, response_type_url: impl Into<String>, name: impl Into<String>, any: Any) -> Self {
        self.resources
            .entry(response_type_url.into())
            .or_default()
            .insert(name.into(), RawResource { type_url: any.type_url, value: any.value });
        self
    }

    /// Appends an extra `Any` to every SotW response of `response_type_url` (duplicates allowed).
    pub fn with_extra(mut self, response_type_url: impl Into<String>, any: Any) -> Self {
        self.extras.push((response_type_url.into(), RawResource { type_url: any.type_url, value: any.value }));
        self
    }

    /// The resources of one type.
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, RawResource>> {
        self.resources.get(type_url)
    }
}

/// One request the control plane received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Node id of the stream (from its first request that carried a node).
    pub node_id: String,
    /// Request type URL (implied by the service for per-type streams when empty).
    pub type_url: String,
    /// SotW `version_info` (empty for Delta).
    pub version_info: String,
    /// `response_nonce`.
    pub response_nonce: String,
    /// SotW `resource_names`, or Delta `resource_names_subscribe`.
    pub resource_names: Vec<String>,
    /// Delta `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// Delta `initial_resource_versions` (sorted).
    pub initial_resource_versions: BTreeMap<String, String>,
    /// `error_detail` as (code, message): present on NACKs.
    pub error_detail: Option<(i32, String)>,
    /// Whether it came on a Delta stream.
    pub delta: bool,
    /// Whether the request carried a `node`.
    pub has_node: bool,
    /// Which stream (per control plane, increasing) it came on.
    pub stream_id: u64,
    /// When the control plane received it (for timing: push to ACK).
    pub received_at: std::time::Instant,
}

impl RecordedRequest {
    /// A NACK: carries `error_detail`.
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }

    /// An ACK: answers a response (non-empty nonce) without `error_detail`.
    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_none()
    }
}

/// Deliberately broken server behaviour for hostile tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misbehave {
    /// Behave.
    #[default]
    None,
    /// End every stream with `UNAVAILABLE` right after sending a response.
    CloseStreamAfterResponse,
    /// Record requests but never respond.
    Silent,
}

/// Events broadcast to open streams.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A snapshot changed: re-evaluate every watch.
    Changed,
    /// Close every open stream (with `UNAVAILABLE`).
    Disconnect,
    /// Send this SotW response as is on every open SotW stream.
    InjectSotw(Box<DiscoveryResponse>),
    /// Send this Delta response as is on every open Delta stream.
    InjectDelta(Box<DeltaDiscoveryResponse>),
}

#[derive(Default)]
struct State {
    snapshots: HashMap<String, Arc<Snapshot>>,
    requests: Vec<RecordedRequest>,
    misbehave: Misbehave,
}

/// The test control plane. Create with [`ControlPlane::new`], start with [`ControlPlane::serve`].
pub struct ControlPlane {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    connected: AtomicUsize,
    total_streams: AtomicU64,
    nonce: AtomicU64,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("connected", &self.connected_streams()).finish_non_exhaustive()
    }
}

/// Stops a served control plane when dropped or on [`ShutdownHandle::shutdown`].
#[derive(Debug)]
pub struct ShutdownHandle {
    tx: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    cp: Arc<ControlPlane>,
}

impl ShutdownHandle {
    /// Stops accepting, closes open streams and waits (at most 5 s) for the server to end.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
        self.cp.disconnect_all();
    }
}

impl Drop for ShutdownHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ControlPlane {
    /// A control plane with no snapshots.
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            state: Mutex::new(State::default()),
            events,
            connected: AtomicUsize::new(0),
            total_streams: AtomicU64::new(0),
            nonce: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves ADS and the per-type services on `addr` (TCP) on the current tokio runtime.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<(SocketAddr, ShutdownHandle)> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let router = service::router(self.clone());
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok((local, ShutdownHandle { tx: Some(tx), task: Some(task), cp: self.clone() }))
    }

    /// Serves on a Unix domain socket at `path` (for `pipe` addresses).
    pub fn serve_unix(self: &Arc<Self>, path: &Path) -> std::io::Result<ShutdownHandle> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let router = service::router(self.clone());
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(ShutdownHandle { tx: Some(tx), task: Some(task), cp: self.clone() })
    }

    /// Sets the snapshot for `node_id` (`"*"`: every node without its own) and pushes it to
    /// all open streams.
    pub fn set_snapshot(&self, node_id: &str, snapshot: Snapshot) {
        self.lock().snapshots.insert(node_id.to_string(), Arc::new(snapshot));
        let _ = self.events.send(Event::Changed);
    }

    /// Removes the snapshot of `node_id` (streams keep what they have).
    pub fn clear_snapshot(&self, node_id: &str) {
        self.lock().snapshots.remove(node_id);
    }

    /// The snapshot that serves `node_id`.
    pub fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let st = self.lock();
        st.snapshots.get(node_id).or_else(|| st.snapshots.get(DEFAULT_NODE)).cloned()
    }

    /// Sets hostile behaviour for all streams.
    pub fn set_misbehave(&self, m: Misbehave) {
        self.lock().misbehave = m;
    }

    pub(crate) fn misbehave(&self) -> Misbehave {
        self.lock().misbehave
    }

    /// Closes every open stream with `UNAVAILABLE` (clients should reconnect).
    pub fn disconnect_all(&self) {
        let _ = self.events.send(Event::Disconnect);
    }

    /// Sends `resp` verbatim on every open SotW stream (a nonce is assigned if empty).
    pub fn inject(&self, resp: DiscoveryResponse) {
        let _ = self.events.send(Event::InjectSotw(Box::new(resp)));
    }

    /// Sends `resp` verbatim on every open Delta stream (a nonce is assigned if empty).
    pub fn inject_delta(&self, resp: DeltaDiscoveryResponse) {
        let _ = self.events.send(Event::InjectDelta(Box::new(resp)));
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Recorded ACKs for `type_url`.
    pub fn acks(&self, type_url: &str) -> Vec<RecordedRequest> {
        self.lock().requests.iter().filter(|r| r.type_url == type_url && r.is_ack()).cloned().collect()
    }

    /// Recorded NACKs for `type_url`.
    pub fn nacks(&self, type_url: &str) -> Vec<RecordedRequest> {
        self.lock().requests.iter().filter(|r| r.type_url == type_url && r.is_nack()).cloned().collect()
    }

    /// `version_info` of the last SotW ACK from `node_id` for `type_url`.
    pub fn last_ack_version(&self, node_id: &str, type_url: &str) -> Option<String> {
        self.lock()
            .requests
            .iter()
            .rev()
            .find(|r| r.node_id == node_id && r.type_url == type_url && r.is_ack() && !r.delta)
            .map(|r| r.version_info.clone())
    }

    /// Waits (at most `timeout`) until `pred` holds over the recorded requests.
    pub async fn wait_for(&self, pred: impl Fn(&[RecordedRequest]) -> bool, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Clone first: `pred` may call back into the control plane.
            let requests = self.lock().requests.clone();
            if pred(&requests) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Number of currently open xDS streams.
    pub fn connected_streams(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }

    /// Number of streams ever opened.
    pub fn total_streams(&self) -> u64 {
        self.total_streams.load(Ordering::SeqCst)
    }

    /// Waits (at most `timeout`) until `n` streams are open.
    pub async fn wait_for_streams(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.connected_streams() != n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub(crate) fn record(&self, r: RecordedRequest) {
        tracing::debug!(node = %r.node_id, type_url = %r.type_url, version = %r.version_info, nonce = %r.response_nonce, nack = r.is_nack(), "xDS request");
        self.lock().requests.push(r);
    }

    pub(crate) fn next_nonce(&self) -> String {
        (self.nonce.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.connected.fetch_add(1, Ordering::SeqCst);
        let id = self.total_streams.fetch_add(1, Ordering::SeqCst) + 1;
        StreamGuard { cp: self.clone(), id }
    }
}

/// Whether a stream goes on.
pub(crate) enum Flow {
    Continue,
    Close,
}

/// The message types of a SotW or a Delta stream of the test control plane.
pub(crate) trait Protocol: Sized + Send + 'static {
    /// Requests from the client.
    type Request: Send + 'static;
    /// Responses to the client.
    type Response: Send + 'static;
    /// Per-type subscription state of the stream.
    type Watch: Send;

    /// The injected response in `ev`, if it is one of this protocol.
    fn injected(ev: Event) -> Option<Self::Response>;
}

/// How a stream of protocol `P` answers what happens to it.
pub(crate) trait Serve<P: Protocol> {
    /// Records and answers one request.
    fn on_request(&mut self, req: P::Request) -> impl std::future::Future<Output = Flow> + Send;
    /// A snapshot changed: re-evaluate every watch.
    fn push_all(&mut self) -> impl std::future::Future<Output = Flow> + Send;
    /// Sends an injected response.
    fn inject(&mut self, resp: P::Response) -> impl std::future::Future<Output = Flow> + Send;
}

/// One stream of the test control plane.
pub(crate) struct ProtocolStream<P: Protocol> {
    pub(crate) cp: Arc<ControlPlane>,
    pub(crate) tx: tokio::sync::mpsc::Sender<Result<P::Response, tonic::Status>>,
    /// The node id of the stream's first request that named one.
    pub(crate) node_id: String,
    /// By type URL.
    pub(crate) watches: BTreeMap<String, P::Watch>,
    pub(crate) id: u64,
    /// The type of a non-aggregated service, whose requests may leave `type_url` empty.
    pub(crate) implied_type: Option<&'static str>,
}

impl<P: Protocol> ProtocolStream<P> {
    /// A request's type URL (the service's own when a non-aggregated request leaves it
    /// empty); notes the node id of the first request that names one.
    pub(crate) fn begin_request(
        &mut self,
        type_url: &str,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> String {
        if let Some(n) = node {
            if self.node_id.is_empty() {
                self.node_id = n.id.clone();
            }
        }
        match (type_url.is_empty(), self.implied_type) {
            (true, Some(t)) => t.to_string(),
            _ => type_url.to_string(),
        }
    }

    /// Sends one response; with `Misbehave::CloseStreamAfterResponse` the stream then ends.
    pub(crate) async fn send(&mut self, resp: P::Response) -> Flow {
        if self.tx.send(Ok(resp)).await.is_err() {
            return Flow::Close;
        }
        if self.cp.misbehave() == Misbehave::CloseStreamAfterResponse {
            let _ = self.tx.send(Err(tonic::Status::unavailable("control plane closes after each response"))).await;
            return Flow::Close;
        }
        Flow::Continue
    }
}

/// Serves one stream until the client goes away or the stream is closed.
pub(crate) async fn serve_stream<P: Protocol>(
    cp: Arc<ControlPlane>,
    mut requests: tonic::Streaming<P::Request>,
    tx: tokio::sync::mpsc::Sender<Result<P::Response, tonic::Status>>,
    implied_type: Option<&'static str>,
) where
    ProtocolStream<P>: Serve<P>,
{
    let guard = cp.stream_opened();
    let mut events = cp.subscribe_events();
    let mut s =
        ProtocolStream::<P> { cp, tx, node_id: String::new(), watches: BTreeMap::new(), id: guard.id, implied_type };
    loop {
        let flow = tokio::select! {
            req = requests.message() => match req {
                Ok(Some(r)) => s.on_request(r).await,
                _ => Flow::Close,
            },
            ev = events.recv() => match ev {
                Ok(Event::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => s.push_all().await,
                Ok(Event::Disconnect) => {
                    let _ = s.tx.send(Err(tonic::Status::unavailable("control plane closed the stream"))).await;
                    Flow::Close
                }
                Ok(ev) => match P::injected(ev) {
                    Some(resp) => s.inject(resp).await,
                    None => Flow::Continue,
                },
                Err(broadcast::error::RecvError::Closed) => Flow::Close,
            },
        };
        if let Flow::Close = flow {
            break;
        }
    }
    drop(guard);
}

/// Counts an open stream for its lifetime.
pub(crate) struct StreamGuard {
    cp: Arc<ControlPlane>,
    pub(crate) id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.cp.connected.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether an empty subscription for this type means "everything": LDS, CDS and types the
/// control plane does not know (RDS/EDS always name their resources).
pub(crate) fn empty_means_wildcard(type_url: &str) -> bool {
    !matches!(
        ResourceType::from_type_url(type_url),
        Some(
            ResourceType::RouteConfiguration
                | ResourceType::ClusterLoadAssignment
                | ResourceType::Runtime
                | ResourceType::Secret
        )
    )
}

/// A subscription: wildcard or a set of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Names {
    Wildcard,
    Set(BTreeSet<String>),
}

impl Names {
    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            Names::Wildcard => true,
            Names::Set(s) => s.contains(name),
        }
    }

    /// `contains`, plus VHDS namespace matching: a subscribed route configuration name covers
    /// every `<name>/<vhost>` resource.
    pub(crate) fn covers(&self, vhds: bool, name: &str) -> bool {
        self.contains(name) || (vhds && name.rsplit_once('/').is_some_and(|(ns, _)| self.contains(ns)))
    }
}
