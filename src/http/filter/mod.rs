//! The HTTP filter chain of an HCM (Envoy's `FilterManager`, `filter_manager.h`).
//!
//! The HCM's `http_filters` are kept in config order as typed filters (an enum, not boxed
//! trait objects: dispatch is a match, and per-worker state can stay `Rc`). For each request:
//! - request hooks (`decode_headers`) run in order; a filter may stop the chain with a local
//!   reply (Envoy's `StopIteration` + `sendLocalReply`) or ask the HCM to match the route again
//!   (`clearRouteCache`);
//! - the router, always last, is the terminal filter (see `http::router`);
//! - response hooks (`encode_headers`) run in reverse order on every response, proxied or
//!   local, as Envoy's encoder filters do; a filter that did not see the request simply finds
//!   its per-request state empty;
//! - per-route `typed_per_filter_config` was resolved when the route table was compiled
//!   (see [`route_config`]); here it only picks the most specific entry for each filter, and
//!   `disabled` filters run only where a route enables them.

pub mod callbacks;
pub mod cors;
pub mod fault;
pub mod header_mutation;
pub mod local_ratelimit;
pub mod on_demand;
pub mod rate_limiter;
pub mod route_config;

use std::sync::Arc;

use http::request::Parts;
use http::Response;
use pinion_xds::model::{self, HeaderMutationConfig, HeaderMutationPerRoute};

use super::body::ResponseBody;
pub use callbacks::{DecodeCx, EncodeCx, FilterStatus};
use route_config::{FilterOverride, RouteFilterConfigs};

/// A filter the chain can run (the router is not one of them: it is the chain's end).
pub enum HttpFilter {
    /// `envoy.filters.http.on_demand` (VHDS).
    OnDemand(on_demand::OnDemand),
    /// `envoy.filters.http.fault`.
    Fault(fault::Fault),
    /// `envoy.filters.http.cors`.
    Cors(cors::Cors),
    /// `envoy.filters.http.local_ratelimit`: the HCM-level limiter (routes may bring their own).
    LocalRateLimit(Arc<local_ratelimit::LocalRateLimit>),
    /// `envoy.filters.http.header_mutation`.
    HeaderMutation(Arc<HeaderMutationConfig>),
}

/// One configured filter of the chain.
pub struct FilterEntry {
    /// The filter's config name (the key of `typed_per_filter_config`).
    pub name: Arc<str>,
    /// `disabled: true`: runs only on routes whose per-filter config enables it.
    pub disabled: bool,
    /// The filter.
    pub filter: HttpFilter,
}

/// A filter's state for one request, created empty and filled by its request hook.
#[derive(Default)]
pub enum FilterState {
    /// Nothing recorded (the filter did not run, or keeps no state).
    #[default]
    Empty,
    /// The fault filter holds an active fault until the request ends.
    Fault(fault::ActiveFault),
    /// A CORS request whose origin is allowed.
    Cors(cors::CorsState),
}

/// Whether (and with which override) a filter runs for a request.
pub enum Applies<'a> {
    /// Skipped: disabled by the route, or disabled in the HCM and not enabled by the route.
    Skip,
    /// Runs, with this per-route override if any.
    Run(Option<&'a FilterOverride>),
}

/// An HCM's filters before the router, compiled once per listener and shared by workers.
#[derive(Default)]
pub struct FilterChain {
    filters: Box<[FilterEntry]>,
}

impl FilterChain {
    /// A chain of these filters, in config order.
    pub fn new(filters: Vec<FilterEntry>) -> Self {
        FilterChain { filters: filters.into_boxed_slice() }
    }

    /// Number of filters (the router not counted).
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// True when the router is the only filter: the common case costs nothing per request.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The filter at `i`.
    pub fn entry(&self, i: usize) -> &FilterEntry {
        &self.filters[i]
    }

    /// Fresh per-request states, one per filter (no allocation for an empty chain).
    pub fn new_states(&self) -> Vec<FilterState> {
        if self.filters.is_empty() {
            return Vec::new();
        }
        self.filters.iter().map(|_| FilterState::Empty).collect()
    }

    /// Whether filter `i` runs for this route, and with which override: the weighted cluster's
    /// entry wins over the route's (which already holds the virtual host's and the route
    /// configuration's, most specific first).
    pub fn applies<'a>(
        &self,
        i: usize,
        configs: Option<&'a RouteFilterConfigs>,
        weighted: Option<usize>,
    ) -> Applies<'a> {
        let entry = &self.filters[i];
        let found = configs.and_then(|c| c.find(&entry.name, weighted));
        match found {
            Some(FilterOverride::Disabled) => Applies::Skip,
            None if entry.disabled => Applies::Skip,
            None => Applies::Run(None),
            // `Enabled` only switches a disabled filter on: it runs with its HCM config.
            Some(o) => Applies::Run((!matches!(o, FilterOverride::Enabled)).then_some(o)),
        }
    }

    /// Run filter `i`'s request hook.
    pub async fn decode_headers(
        &self,
        i: usize,
        state: &mut FilterState,
        head: &mut Parts,
        cx: &mut DecodeCx<'_, '_>,
    ) -> FilterStatus {
        let entry = &self.filters[i];
        match &entry.filter {
            HttpFilter::OnDemand(f) => f.decode_headers(head, cx).await,
            HttpFilter::Fault(f) => {
                let per_route = match cx.per_route {
                    Some(FilterOverride::Fault(c)) => Some(c),
                    _ => None,
                };
                let mut active = None;
                let status = f.decode_headers(per_route, &mut active, head, cx).await;
                if let Some(a) = active {
                    *state = FilterState::Fault(a);
                }
                status
            }
            HttpFilter::Cors(f) => {
                let mut typed = levels(cx.route_configs, &entry.name).filter_map(|o| match o {
                    FilterOverride::Cors(p) => Some(&**p),
                    _ => None,
                });
                let mut cors = None;
                let status = f.decode_headers(&mut typed, &mut cors, head, cx);
                if let Some(c) = cors {
                    *state = FilterState::Cors(c);
                }
                status
            }
            HttpFilter::LocalRateLimit(f) => {
                let limiter = match cx.per_route {
                    Some(FilterOverride::LocalRateLimit(l)) => l,
                    _ => f,
                };
                local_ratelimit::decode_headers(limiter, head, cx)
            }
            HttpFilter::HeaderMutation(config) => {
                let per_route = header_mutation_levels(cx.route_configs, &entry.name);
                header_mutation::decode_headers(config, &per_route, &mut head.headers, cx.info);
                FilterStatus::Continue
            }
        }
    }

    /// Run filter `i`'s response hook.
    pub fn encode_headers(
        &self,
        i: usize,
        state: &mut FilterState,
        resp: &mut Response<ResponseBody>,
        cx: &EncodeCx<'_>,
    ) {
        let entry = &self.filters[i];
        match (&entry.filter, state) {
            (HttpFilter::Cors(_), FilterState::Cors(s)) => cors::Cors::encode_headers(Some(s), resp),
            (HttpFilter::HeaderMutation(config), _) => {
                let per_route = header_mutation_levels(cx.route_configs, &entry.name);
                header_mutation::encode_headers(config, &per_route, resp.headers_mut(), cx.info);
            }
            _ => {}
        }
    }
}

/// Every level's override for filter `name`, most specific first.
fn levels<'a>(configs: Option<RouteConfigsRef<'a>>, name: &'a str) -> impl Iterator<Item = &'a FilterOverride> + 'a {
    configs.into_iter().flat_map(move |(c, weighted)| c.all(name, weighted))
}

/// The per-route `HeaderMutationPerRoute`s for filter `name`, most specific first.
fn header_mutation_levels<'a>(configs: Option<RouteConfigsRef<'a>>, name: &'a str) -> Vec<&'a HeaderMutationPerRoute> {
    levels(configs, name)
        .filter_map(|o| match o {
            FilterOverride::HeaderMutation(m) => Some(&**m),
            _ => None,
        })
        .collect()
}

/// A matched route's per-filter overrides and the weighted cluster chosen.
pub type RouteConfigsRef<'a> = (&'a RouteFilterConfigs, Option<usize>);

/// Build the runtime filter for one configured HCM filter (`None` for the router, and for
/// `on_demand` when there is no xDS to ask).
pub fn build(
    f: &model::HttpFilter,
    store: &crate::stats::Store,
    stat_prefix: &str,
    on_demand: Option<Arc<crate::http::on_demand::OnDemandVhds>>,
) -> Option<FilterEntry> {
    let filter = match &f.kind {
        model::HttpFilterKind::Router(_) => return None,
        model::HttpFilterKind::OnDemand => HttpFilter::OnDemand(on_demand::OnDemand::new(on_demand?)),
        model::HttpFilterKind::Fault(c) => HttpFilter::Fault(fault::Fault::new(c.clone(), store, stat_prefix)),
        model::HttpFilterKind::Cors(_) => HttpFilter::Cors(cors::Cors::new(store, stat_prefix)),
        model::HttpFilterKind::LocalRateLimit(c) => {
            HttpFilter::LocalRateLimit(Arc::new(local_ratelimit::LocalRateLimit::new(c.clone(), store)))
        }
        model::HttpFilterKind::HeaderMutation(c) => HttpFilter::HeaderMutation(c.clone()),
    };
    Some(FilterEntry { name: f.name.as_str().into(), disabled: f.disabled, filter })
}

#[cfg(test)]
mod tests {
    use super::route_config::RouteFilterConfig;
    use super::*;

    fn entry(name: &str, disabled: bool) -> FilterEntry {
        FilterEntry {
            name: name.into(),
            disabled,
            filter: HttpFilter::HeaderMutation(Arc::new(HeaderMutationConfig::default())),
        }
    }

    fn cfg(name: &str, config: FilterOverride) -> RouteFilterConfig {
        RouteFilterConfig { name: name.into(), config }
    }

    fn per_route(c: &FilterOverride) -> &'static str {
        match c {
            FilterOverride::Disabled => "disabled",
            FilterOverride::Enabled => "enabled",
            FilterOverride::HeaderMutation(m) if m.mutations.request_mutations.is_empty() => "route-mutation",
            _ => "other",
        }
    }

    #[test]
    fn which_filters_run_on_a_route() {
        let hm = || FilterOverride::HeaderMutation(Arc::new(HeaderMutationPerRoute::default()));
        let configs = RouteFilterConfigs {
            // Route level first, then the virtual host's entries for the same names.
            route: vec![
                cfg("off-here", FilterOverride::Disabled),
                cfg("enabled-here", FilterOverride::Enabled),
                cfg("configured", hm()),
                cfg("off-here", FilterOverride::Enabled),
            ]
            .into_boxed_slice(),
            weighted: vec![vec![cfg("configured", FilterOverride::Disabled)].into_boxed_slice()].into_boxed_slice(),
        };
        let chain = FilterChain::new(vec![
            entry("plain", false),
            entry("disabled-in-hcm", true),
            entry("off-here", false),
            entry("enabled-here", true),
            entry("configured", false),
        ]);
        // (filter index, weighted cluster, expected: None = skipped, Some(per-route kind))
        type Case = (usize, Option<usize>, Option<Option<&'static str>>);
        let cases: Vec<Case> = vec![
            (0, None, Some(None)),
            // A filter disabled in the HCM runs only where a route enables it.
            (1, None, None),
            // The most specific level wins: the route's `disabled` over the vhost's enable.
            (2, None, None),
            // `Enabled` runs the HCM config (no override).
            (3, None, Some(None)),
            (4, None, Some(Some("route-mutation"))),
            // The weighted cluster's entry beats the route's.
            (4, Some(0), None),
        ];
        for (i, weighted, want) in cases {
            let got = match chain.applies(i, Some(&configs), weighted) {
                Applies::Skip => None,
                Applies::Run(o) => Some(o.map(per_route)),
            };
            assert_eq!(got, want, "filter {i}, weighted {weighted:?}");
        }
        // Without per-route config: everything but the HCM-disabled filters runs.
        let ran: Vec<usize> =
            (0..chain.len()).filter(|&i| matches!(chain.applies(i, None, None), Applies::Run(None))).collect();
        assert_eq!(ran, vec![0, 2, 4]);
    }

    #[test]
    fn every_level_in_order_for_merging_filters() {
        let configs = RouteFilterConfigs {
            route: vec![
                cfg("a", FilterOverride::Enabled),
                cfg("b", FilterOverride::Disabled),
                cfg("a", FilterOverride::Disabled),
            ]
            .into_boxed_slice(),
            weighted: vec![vec![cfg("a", FilterOverride::Disabled)].into_boxed_slice()].into_boxed_slice(),
        };
        let kinds = |w| configs.all("a", w).map(per_route).collect::<Vec<_>>();
        assert_eq!(kinds(None), vec!["enabled", "disabled"]);
        assert_eq!(kinds(Some(0)), vec!["disabled", "enabled", "disabled"]);
        assert!(chain_is_free_when_empty());
    }

    fn chain_is_free_when_empty() -> bool {
        let chain = FilterChain::default();
        chain.is_empty() && chain.new_states().capacity() == 0
    }
}
