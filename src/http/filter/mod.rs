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
pub mod on_demand;
pub mod route_config;

use std::sync::Arc;

use http::request::Parts;
use http::Response;

use super::body::ResponseBody;
pub use callbacks::{DecodeCx, EncodeCx, FilterStatus};
use route_config::{FilterOverride, RouteFilterConfigs};

/// A filter the chain can run (the router is not one of them: it is the chain's end).
pub enum HttpFilter {
    /// `envoy.filters.http.on_demand` (VHDS).
    OnDemand(on_demand::OnDemand),
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
        let _ = &state;
        match &self.filters[i].filter {
            HttpFilter::OnDemand(f) => f.decode_headers(head, cx).await,
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
        let _ = (&resp, cx);
        match (&self.filters[i].filter, state) {
            (HttpFilter::OnDemand(_), _) => {}
        }
    }
}
