//! Listeners: SO_REUSEPORT sockets (one per worker), filter chain selection, and the
//! compiled listener config (`ListenerImpl`: stats, filter chains).

use std::net::SocketAddr;
use std::sync::Arc;

use std::collections::HashMap;

use arc_swap::{ArcSwap, ArcSwapOption};
use pinion_xds::model;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::access_log::{AccessLogManager, AccessLogger};
use crate::http::filter::{self, FilterChain};
use crate::http::on_demand::OnDemandVhds;
use crate::http::route_table::RouteTable;
use crate::stats::{Counter, Gauge, Prom, Store};

/// Envoy's listener stats.
pub struct ListenerStats {
    /// `listener.<addr>.downstream_cx_total`.
    pub downstream_cx_total: Counter,
    /// `listener.<addr>.downstream_cx_active`.
    pub downstream_cx_active: Gauge,
    /// `listener.<addr>.downstream_cx_destroy`.
    pub downstream_cx_destroy: Counter,
    /// `listener.<addr>.no_filter_chain_match`.
    pub no_filter_chain_match: Counter,
    /// `listener.<addr>.downstream_pre_cx_timeout`: listener filters timed out.
    pub downstream_pre_cx_timeout: Counter,
    /// `listener.<addr>.worker_<i>.downstream_cx_total`, per worker.
    pub worker_cx_total: Vec<Counter>,
    /// `listener.<addr>.worker_<i>.downstream_cx_active`, per worker.
    pub worker_cx_active: Vec<Gauge>,
}

/// Envoy's stat-name form of an address: `127.0.0.1_10000`, `[__1]_10000`.
pub fn address_stat_name(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]_{}", a.ip().to_string().replace(':', "_"), a.port()),
    }
}

impl ListenerStats {
    fn new(store: &Store, prefix: &str, workers: usize) -> Self {
        let tag = "envoy_listener_address";
        let c = |rest: &str| {
            store.counter(&format!("listener.{prefix}.{rest}"), Prom::tagged("listener", tag, prefix, rest))
        };
        let g =
            |rest: &str| store.gauge(&format!("listener.{prefix}.{rest}"), Prom::tagged("listener", tag, prefix, rest));
        let wc = |i: usize, rest: &str| {
            store.counter(
                &format!("listener.{prefix}.worker_{i}.{rest}"),
                Prom::tagged("listener", tag, prefix, rest).with_tag("envoy_worker_id", &i.to_string()),
            )
        };
        let wg = |i: usize, rest: &str| {
            store.gauge(
                &format!("listener.{prefix}.worker_{i}.{rest}"),
                Prom::tagged("listener", tag, prefix, rest).with_tag("envoy_worker_id", &i.to_string()),
            )
        };
        ListenerStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            no_filter_chain_match: c("no_filter_chain_match"),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
            worker_cx_total: (0..workers).map(|i| wc(i, "downstream_cx_total")).collect(),
            worker_cx_active: (0..workers).map(|i| wg(i, "downstream_cx_active")).collect(),
        }
    }
}

crate::stats_struct! {
    /// HCM stats (`http.<stat_prefix>.*`).
    pub struct HcmStats {
        /// `downstream_cx_total`.
        downstream_cx_total: Counter = "downstream_cx_total",
        /// `downstream_cx_active`.
        downstream_cx_active: Gauge = "downstream_cx_active",
        /// `downstream_cx_http1_total`.
        downstream_cx_http1_total: Counter = "downstream_cx_http1_total",
        /// `downstream_cx_http2_total`.
        downstream_cx_http2_total: Counter = "downstream_cx_http2_total",
        /// `downstream_cx_destroy`.
        downstream_cx_destroy: Counter = "downstream_cx_destroy",
        /// `downstream_cx_idle_timeout`.
        downstream_cx_idle_timeout: Counter = "downstream_cx_idle_timeout",
        /// `downstream_cx_max_duration_reached`.
        downstream_cx_max_duration_reached: Counter = "downstream_cx_max_duration_reached",
        /// `downstream_rq_total`.
        downstream_rq_total: Counter = "downstream_rq_total",
        /// `downstream_rq_active`.
        downstream_rq_active: Gauge = "downstream_rq_active",
        /// `downstream_rq_http1_total`.
        downstream_rq_http1_total: Counter = "downstream_rq_http1_total",
        /// `downstream_rq_http2_total`.
        downstream_rq_http2_total: Counter = "downstream_rq_http2_total",
        /// `downstream_rq_1xx`.
        downstream_rq_1xx: Counter = "downstream_rq_1xx",
        /// `downstream_rq_2xx`.
        downstream_rq_2xx: Counter = "downstream_rq_2xx",
        /// `downstream_rq_3xx`.
        downstream_rq_3xx: Counter = "downstream_rq_3xx",
        /// `downstream_rq_4xx`.
        downstream_rq_4xx: Counter = "downstream_rq_4xx",
        /// `downstream_rq_5xx`.
        downstream_rq_5xx: Counter = "downstream_rq_5xx",
        /// `downstream_rq_completed`.
        downstream_rq_completed: Counter = "downstream_rq_completed",
        /// `downstream_rq_timeout`.
        downstream_rq_timeout: Counter = "downstream_rq_timeout",
        /// `downstream_rq_idle_timeout`.
        downstream_rq_idle_timeout: Counter = "downstream_rq_idle_timeout",
        /// `downstream_rq_max_duration_reached`.
        downstream_rq_max_duration_reached: Counter = "downstream_rq_max_duration_reached",
        /// `downstream_rq_ws_on_non_ws_route`.
        downstream_rq_ws_on_non_ws_route: Counter = "downstream_rq_ws_on_non_ws_route",
        /// `no_route`.
        no_route: Counter = "no_route",
        /// `no_cluster`.
        no_cluster: Counter = "no_cluster",
        /// `rq_redirect`.
        rq_redirect: Counter = "rq_redirect",
        /// `rq_direct_response`.
        rq_direct_response: Counter = "rq_direct_response",
        /// `rq_total`.
        rq_total: Counter = "rq_total",
    }
}

impl HcmStats {
    /// The stats of the HCM with `stat_prefix`.
    fn for_prefix(store: &Store, prefix: &str) -> Self {
        Self::new(store, "http", "envoy_http_conn_manager_prefix", prefix)
    }

    /// Count a downstream response status class.
    pub fn record_status(&self, status: u16) {
        match status / 100 {
            1 => self.downstream_rq_1xx.inc(),
            2 => self.downstream_rq_2xx.inc(),
            3 => self.downstream_rq_3xx.inc(),
            4 => self.downstream_rq_4xx.inc(),
            5 => self.downstream_rq_5xx.inc(),
            _ => {}
        }
        self.downstream_rq_completed.inc();
    }
}

/// Shared RDS slots: route config name -> the current compiled table (empty until the first
/// RDS response). Listeners that name the same route config share one slot, so an RDS update
/// reaches them all without rebuilding any listener.
pub type RdsSlot = Arc<ArcSwapOption<RouteTable>>;

/// The scopes of a `scoped_routes` HCM: scope key (fragments joined by [`KEY_SEPARATOR`]) ->
/// (scope name, the slot of its route table).
#[derive(Default)]
pub struct ScopeMap {
    /// Whether the scope set is known (inline, or SRDS has answered or timed out).
    pub ready: bool,
    /// Scopes by key.
    pub scopes: HashMap<String, (String, RdsSlot)>,
}

/// Joins key fragments (a control character: header values cannot contain it).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// Shared scope set; SRDS updates swap it whole.
pub type ScopeSlot = Arc<ArcSwap<ScopeMap>>;

/// What the config store provides to listeners that take routes from xDS.
pub trait RouteProvider {
    /// The shared slot of an RDS route config.
    fn rds(&self, name: &str) -> RdsSlot;
    /// The scope set delivered by SRDS.
    fn srds(&self) -> ScopeSlot;
    /// The VHDS on-demand registry.
    fn on_demand(&self) -> Arc<OnDemandVhds>;
}

/// Where an HCM's route table comes from.
pub enum RouteSource {
    /// Inline `route_config`.
    Static(Arc<RouteTable>),
    /// `rds`: the slot for this route config name.
    Rds {
        /// `route_config_name`.
        name: String,
        /// The slot.
        slot: RdsSlot,
    },
    /// `scoped_routes`: a key built from request headers picks the scope.
    Scoped {
        /// The key builder.
        config: Arc<model::ScopedRoutes>,
        /// The scopes.
        scopes: ScopeSlot,
    },
}

/// A borrowed view of the current route table. For RDS it is an arc-swap guard, so reading
/// the table per request touches no shared reference count.
pub enum RouteGuard<'a> {
    /// Inline table.
    Static(&'a RouteTable),
    /// RDS table.
    Rds(arc_swap::Guard<Option<Arc<RouteTable>>>),
}

impl std::ops::Deref for RouteGuard<'_> {
    type Target = RouteTable;
    fn deref(&self) -> &RouteTable {
        match self {
            RouteGuard::Static(t) => t,
            // `table_for()` only builds this variant when the slot holds a table.
            RouteGuard::Rds(g) => g.as_deref().expect("checked non-empty"),
        }
    }
}

fn load_slot(slot: &RdsSlot) -> Option<RouteGuard<'static>> {
    let g = slot.load();
    g.is_some().then_some(RouteGuard::Rds(g))
}

impl RouteSource {
    /// The table that routes a request with `headers` (None while an RDS config has not
    /// arrived, or when no scope matches).
    #[inline]
    pub fn table_for(&self, headers: &http::HeaderMap) -> Option<RouteGuard<'_>> {
        match self {
            RouteSource::Static(t) => Some(RouteGuard::Static(t)),
            RouteSource::Rds { slot, .. } => load_slot(slot),
            RouteSource::Scoped { config, scopes } => {
                let key = scope_key(config, headers)?;
                let map = scopes.load();
                let (_, slot) = map.scopes.get(&key)?;
                load_slot(slot)
            }
        }
    }

    /// The RDS name, if any.
    pub fn rds_name(&self) -> Option<&str> {
        match self {
            RouteSource::Static(_) | RouteSource::Scoped { .. } => None,
            RouteSource::Rds { name, .. } => Some(name),
        }
    }

    /// Whether every route table this source needs has arrived (listener warming).
    pub fn is_warm(&self) -> bool {
        match self {
            RouteSource::Static(_) => true,
            RouteSource::Rds { slot, .. } => slot.load().is_some(),
            RouteSource::Scoped { scopes, .. } => {
                let map = scopes.load();
                map.ready && map.scopes.values().all(|(_, slot)| slot.load().is_some())
            }
        }
    }
}

/// Envoy's `ScopeKeyBuilderImpl::computeScopeKey`: every fragment must be found.
fn scope_key(config: &model::ScopedRoutes, headers: &http::HeaderMap) -> Option<String> {
    let mut key = String::new();
    for (i, f) in config.key_builder.iter().enumerate() {
        if i > 0 {
            key.push(KEY_SEPARATOR);
        }
        key.push_str(f.compute(headers)?);
    }
    Some(key)
}

/// A scope's key as stored in a [`ScopeMap`].
pub fn scope_map_key(fragments: &[String]) -> String {
    fragments.join(&KEY_SEPARATOR.to_string())
}

/// An HCM ready to serve: config, compiled routes, stats, access logs.
pub struct HcmConfig {
    /// Config.
    pub config: Arc<model::HttpConnectionManager>,
    /// Route table source.
    pub routes: RouteSource,
    /// Stats.
    pub stats: HcmStats,
    /// Access loggers.
    pub access_logs: Vec<AccessLogger>,
    /// The HTTP filters before the router, in config order.
    pub filters: FilterChain,
    /// The router filter's settings.
    pub router: model::RouterConfig,
}

/// TCP proxy runtime.
pub struct TcpProxyConfig {
    /// Config.
    pub config: Arc<model::TcpProxy>,
    /// `tcp.<stat_prefix>.downstream_cx_total`.
    pub downstream_cx_total: Counter,
    /// `tcp.<stat_prefix>.upstream_flush_total`-style failures: `tcp.<prefix>.downstream_cx_no_route`.
    pub downstream_cx_no_route: Counter,
    /// Access loggers.
    pub access_logs: Vec<AccessLogger>,
}

/// A filter chain ready to serve: its transport socket, then its terminal filter.
pub struct FilterChainImpl {
    /// Downstream TLS (`None`: plaintext).
    pub tls: Option<Arc<crate::tls::ServerContext>>,
    /// The terminal network filter.
    pub filter: ChainFilter,
}

/// A filter chain's terminal network filter.
pub enum ChainFilter {
    /// HTTP.
    Http(Arc<HcmConfig>),
    /// TCP proxy.
    Tcp(Arc<TcpProxyConfig>),
}

/// A listener at runtime.
pub struct ListenerImpl {
    /// Config.
    pub config: Arc<model::Listener>,
    /// Set when this listener generation is removed or replaced: its connections drain.
    pub drain: watch::Sender<bool>,
    /// Stats.
    pub stats: ListenerStats,
    /// Chains parallel to `config.filter_chains`.
    pub chains: Vec<FilterChainImpl>,
    /// Default chain.
    pub default_chain: Option<FilterChainImpl>,
}

/// Errors building a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Unsupported at runtime (e.g. RDS without xDS).
    #[error("listener '{0}': {1}")]
    Unsupported(String, String),
    /// Access log setup failed.
    #[error("listener '{0}': access log: {1}")]
    AccessLog(String, String),
}

impl ListenerImpl {
    /// Build runtime state for `config` with `workers` workers; its access loggers use
    /// `logs`' writers and sinks. `dynamic` provides route tables from xDS (RDS, SRDS,
    /// VHDS); static listeners have none.
    pub fn new(
        config: Arc<model::Listener>,
        store: &Store,
        workers: usize,
        logs: &AccessLogManager,
        dynamic: Option<&dyn RouteProvider>,
        secrets: &dyn crate::tls::SecretLookup,
    ) -> Result<Self, ListenerError> {
        let prefix =
            if config.stat_prefix.is_empty() { address_stat_name(&config.address) } else { config.stat_prefix.clone() };
        let stats = ListenerStats::new(store, &prefix, workers);
        let build = |chain: &model::FilterChain| -> Result<FilterChainImpl, ListenerError> {
            let tls = match &chain.transport_socket {
                None => None,
                Some(t) => {
                    let stats = crate::tls::SslStats::new(store, "listener", "envoy_listener_address", &prefix);
                    let ctx = crate::tls::ServerContext::new(t, chain.transport_socket_connect_timeout, stats, secrets)
                        .map_err(|e| {
                            ListenerError::Unsupported(
                                config.name.clone(),
                                format!("filter chain '{}': {e}", chain.name),
                            )
                        })?;
                    Some(Arc::new(ctx))
                }
            };
            let filter = match &chain.filter {
                model::NetworkFilter::HttpConnectionManager(hcm) => {
                    let needs_xds = |what: &str| {
                        ListenerError::Unsupported(config.name.clone(), format!("{what} needs dynamic_resources"))
                    };
                    let routes = match &hcm.route_specifier {
                        model::RouteSpecifier::Static(rc) => {
                            RouteSource::Static(Arc::new(RouteTable::new(rc.clone(), store)))
                        }
                        model::RouteSpecifier::Rds { route_config_name } => match dynamic {
                            Some(d) => {
                                RouteSource::Rds { name: route_config_name.clone(), slot: d.rds(route_config_name) }
                            }
                            None => return Err(needs_xds(&format!("rds route config '{route_config_name}'"))),
                        },
                        model::RouteSpecifier::Scoped(sr) => {
                            let d = dynamic.ok_or_else(|| needs_xds("scoped_routes"))?;
                            let scopes = match &sr.scopes {
                                model::ScopesSource::Srds(_) => d.srds(),
                                model::ScopesSource::Inline(list) => {
                                    let mut map = ScopeMap { ready: true, scopes: HashMap::new() };
                                    for sc in list {
                                        let slot = match &sc.route_configuration {
                                            Some(rc) => Arc::new(ArcSwapOption::from_pointee(RouteTable::new(
                                                rc.clone(),
                                                store,
                                            ))),
                                            None => d.rds(&sc.route_configuration_name),
                                        };
                                        map.scopes.insert(scope_map_key(&sc.key), (sc.name.clone(), slot));
                                    }
                                    Arc::new(ArcSwap::from_pointee(map))
                                }
                            };
                            RouteSource::Scoped { config: sr.clone(), scopes }
                        }
                    };
                    let filters = filter_chain(hcm, store, dynamic);
                    let router = hcm
                        .http_filters
                        .iter()
                        .filter_map(|f| match &f.kind {
                            model::HttpFilterKind::Router(r) => Some(r.clone()),
                            _ => None,
                        })
                        .next_back()
                        .unwrap_or_default();
                    let access_logs = hcm
                        .access_logs
                        .iter()
                        .map(|l| AccessLogger::new(l, logs))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| ListenerError::AccessLog(config.name.clone(), e))?;
                    ChainFilter::Http(Arc::new(HcmConfig {
                        stats: HcmStats::for_prefix(store, &hcm.stat_prefix),
                        config: hcm.clone(),
                        routes,
                        access_logs,
                        router,
                        filters,
                    }))
                }
                model::NetworkFilter::TcpProxy(tcp) => {
                    let p = &tcp.stat_prefix;
                    let tag = "envoy_tcp_prefix";
                    let access_logs = tcp
                        .access_logs
                        .iter()
                        .map(|l| AccessLogger::new(l, logs))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| ListenerError::AccessLog(config.name.clone(), e))?;
                    ChainFilter::Tcp(Arc::new(TcpProxyConfig {
                        config: tcp.clone(),
                        downstream_cx_total: store.counter(
                            &format!("tcp.{p}.downstream_cx_total"),
                            Prom::tagged("tcp", tag, p, "downstream_cx_total"),
                        ),
                        downstream_cx_no_route: store.counter(
                            &format!("tcp.{p}.downstream_cx_no_route"),
                            Prom::tagged("tcp", tag, p, "downstream_cx_no_route"),
                        ),
                        access_logs,
                    }))
                }
            };
            Ok(FilterChainImpl { tls, filter })
        };
        let chains = config.filter_chains.iter().map(|c| build(c)).collect::<Result<Vec<_>, _>>()?;
        let default_chain = config.default_filter_chain.as_ref().map(|c| build(c)).transpose()?;
        Ok(ListenerImpl { config, drain: watch::channel(false).0, stats, chains, default_chain })
    }

    /// RDS names this listener's HCMs need.
    pub fn rds_names(&self) -> Vec<String> {
        self.chains
            .iter()
            .chain(self.default_chain.iter())
            .filter_map(|c| match &c.filter {
                ChainFilter::Http(h) => h.routes.rds_name().map(str::to_owned),
                ChainFilter::Tcp(_) => None,
            })
            .collect()
    }

    /// Whether every RDS table this listener needs has arrived (Envoy's listener warming).
    pub fn is_warm(&self) -> bool {
        self.routes_ready() && self.secrets_ready()
    }

    /// Whether every route configuration (RDS/SRDS) of the HCMs has arrived.
    pub fn routes_ready(&self) -> bool {
        self.chains.iter().chain(self.default_chain.iter()).all(|c| match &c.filter {
            ChainFilter::Http(h) => h.routes.is_warm(),
            ChainFilter::Tcp(_) => true,
        })
    }

    /// Whether every secret (SDS) of the filter chains' TLS contexts has arrived.
    pub fn secrets_ready(&self) -> bool {
        self.chains.iter().chain(self.default_chain.iter()).all(|c| c.tls.as_ref().is_none_or(|t| t.secrets_ready()))
    }

    /// Pick the filter chain as Envoy does: the chains are pruned criterion by criterion
    /// (destination port, destination IP, server name, transport protocol, application
    /// protocols, source IP, source port); at each step only the chains that match most
    /// specifically stay (a chain without that criterion is the least specific match). No
    /// chain left: the default chain.
    pub fn select_chain(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        inspected: &crate::listener_filter::Inspected,
    ) -> Option<&FilterChainImpl> {
        let chains = &self.config.filter_chains;
        // Common case: one chain and nothing to match on.
        if let [only] = chains.as_slice() {
            if only.filter_chain_match.is_empty() {
                return self.chains.first();
            }
        }
        let transport =
            if inspected.transport_protocol.is_empty() { "raw_buffer" } else { inspected.transport_protocol };
        let mut cands: Vec<usize> = (0..chains.len()).collect();
        let steps: [&MatchStep; 7] = [
            &|m| exact_or_any(m.destination_port.map(|p| p == local.port())),
            &|m| longest_prefix(&m.prefix_ranges, local.ip()),
            &|m| server_name_score(&m.server_names, inspected.server_name.as_deref()),
            &|m| exact_or_any((!m.transport_protocol.is_empty()).then(|| m.transport_protocol == transport)),
            &|m| {
                exact_or_any(
                    (!m.application_protocols.is_empty())
                        .then(|| m.application_protocols.iter().any(|p| inspected.application_protocols.contains(p))),
                )
            },
            &|m| longest_prefix(&m.source_prefix_ranges, peer.ip()),
            &|m| exact_or_any((!m.source_ports.is_empty()).then(|| m.source_ports.contains(&peer.port()))),
        ];
        for score in steps {
            let scored: Vec<(usize, u32)> =
                cands.iter().filter_map(|&i| score(&chains[i].filter_chain_match).map(|s| (i, s))).collect();
            let Some(best) = scored.iter().map(|(_, s)| *s).max() else {
                cands.clear();
                break;
            };
            cands = scored.into_iter().filter(|(_, s)| *s == best).map(|(i, _)| i).collect();
        }
        match cands.first() {
            Some(&i) => self.chains.get(i),
            None => self.default_chain.as_ref(),
        }
    }
}

/// One step of the filter chain match: how specifically a chain's match meets the
/// connection (higher is more specific), `None` if it does not.
type MatchStep<'a> = dyn Fn(&model::FilterChainMatch) -> Option<u32> + 'a;

/// A criterion that is unset (0), met (1) or failed (`None`).
fn exact_or_any(matched: Option<bool>) -> Option<u32> {
    match matched {
        None => Some(0),
        Some(true) => Some(1),
        Some(false) => None,
    }
}

/// Unset ranges: 0; otherwise 1 + the longest matching prefix, or `None` if none matches.
fn longest_prefix(ranges: &[model::CidrRange], ip: std::net::IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges.iter().filter(|r| r.contains(ip)).map(|r| 1 + u32::from(r.prefix_len)).max()
}

/// `server_names`: an exact name beats the longest matching `*.suffix`, which beats a chain
/// without server names. No SNI matches only the latter.
fn server_name_score(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|n| match n.strip_prefix('*') {
            // `*.example.com` matches `a.example.com` (and `a.b.example.com`), not `example.com`.
            Some(suffix) => (sni.len() > suffix.len() && sni.ends_with(suffix)).then(|| suffix.len() as u32 + 1),
            None => n.eq_ignore_ascii_case(sni).then_some(u32::MAX),
        })
        .max()
}

/// Compile an HCM's filters before the router. `on_demand` needs the xDS registry: without
/// `dynamic_resources` there is nothing to ask, and the filter is left out.
fn filter_chain(hcm: &model::HttpConnectionManager, store: &Store, dynamic: Option<&dyn RouteProvider>) -> FilterChain {
    let on_demand = dynamic.map(|d| d.on_demand());
    FilterChain::new(
        hcm.http_filters.iter().filter_map(|f| filter::build(f, store, &hcm.stat_prefix, on_demand.clone())).collect(),
    )
}

/// Bind one listening socket with SO_REUSEPORT (so each worker can have its own) and
/// SO_REUSEADDR, non-blocking, ready for tokio.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}
