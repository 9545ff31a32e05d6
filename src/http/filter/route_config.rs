//! Per-route filter configuration (`typed_per_filter_config`), compiled with the route table:
//! for each route, the entries of the route, its virtual host and its route configuration
//! merged most specific first, plus each weighted cluster's own entries, so a request only
//! looks up its filters' names in one short list.

use std::sync::Arc;

use pinion_xds::model::{self, ClusterSpecifier, CorsPolicy, FaultConfig, HeaderMutationPerRoute, RouteAction};

use super::rate_limiter::LocalRateLimit;
use crate::stats::Store;

/// A per-route override for one filter.
pub enum FilterOverride {
    /// `FilterConfig { disabled: true }`: the filter is skipped on this route.
    Disabled,
    /// `FilterConfig { disabled: false }` without a config: a filter `disabled` in the HCM
    /// runs on this route with its HCM config.
    Enabled,
    /// A route's `HTTPFault`, replacing the HCM's.
    Fault(Arc<FaultConfig>),
    /// A `CorsPolicy` (levels merge field by field).
    Cors(Arc<CorsPolicy>),
    /// A route's own rate limit, with its own bucket (built with the route table).
    LocalRateLimit(Arc<LocalRateLimit>),
    /// A `HeaderMutationPerRoute` (every level applies).
    HeaderMutation(Arc<HeaderMutationPerRoute>),
}

/// One filter's override on a route.
pub struct RouteFilterConfig {
    /// The filter's config name.
    pub name: Arc<str>,
    /// The override.
    pub config: FilterOverride,
}

/// A route's per-filter overrides (empty for almost every route: no allocation then).
#[derive(Default)]
pub struct RouteFilterConfigs {
    /// Route, virtual host and route configuration entries, most specific first, one per name.
    pub route: Box<[RouteFilterConfig]>,
    /// Per weighted cluster (parallel to the route's `weighted_clusters`), its own entries.
    pub weighted: Box<[Box<[RouteFilterConfig]>]>,
}

impl RouteFilterConfigs {
    /// True when no level configures any filter.
    pub fn is_empty(&self) -> bool {
        self.route.is_empty() && self.weighted.iter().all(|w| w.is_empty())
    }

    /// The most specific override for filter `name`: the chosen weighted cluster's, else the
    /// route's, virtual host's or route configuration's.
    pub fn find(&self, name: &str, weighted: Option<usize>) -> Option<&FilterOverride> {
        let w: &[RouteFilterConfig] = weighted.and_then(|i| self.weighted.get(i)).map_or(&[], |w| w);
        w.iter().chain(self.route.iter()).find(|c| &*c.name == name).map(|c| &c.config)
    }

    /// Every level's override for filter `name`, most specific first.
    pub fn all<'a>(&'a self, name: &'a str, weighted: Option<usize>) -> impl Iterator<Item = &'a FilterOverride> + 'a {
        let w: &[RouteFilterConfig] = weighted.and_then(|i| self.weighted.get(i)).map_or(&[], |w| w);
        w.iter().chain(self.route.iter()).filter(move |c| &*c.name == name).map(|c| &c.config)
    }
}

/// Compile a route configuration's per-filter overrides: per virtual host, per route, each
/// route's list holding its own entries, then its virtual host's, then the route
/// configuration's. `None` when no level configures a filter (no cost per request then).
pub fn compile(config: &model::RouteConfiguration, store: &Store) -> Option<Box<[Box<[RouteFilterConfigs]>]>> {
    let any = !config.per_filter_config.is_empty()
        || config.virtual_hosts.iter().any(|vh| {
            !vh.per_filter_config.is_empty()
                || vh.routes.iter().any(|r| !r.per_filter_config.is_empty() || !weighted_of(r).is_empty())
        });
    if !any {
        return None;
    }
    let level = |pfc: &model::PerFilterConfig| -> Vec<RouteFilterConfig> {
        pfc.iter()
            .map(|(name, o)| RouteFilterConfig { name: name.as_str().into(), config: compile_one(o, store) })
            .collect()
    };
    let top = level(&config.per_filter_config);
    let vhosts = config
        .virtual_hosts
        .iter()
        .map(|vh| {
            let vh_level = level(&vh.per_filter_config);
            vh.routes
                .iter()
                .map(|r| {
                    let mut route: Vec<RouteFilterConfig> = level(&r.per_filter_config);
                    // Virtual host and route configuration entries are compiled once and
                    // shared by their routes (one bucket for a rate limit there).
                    route.extend(vh_level.iter().map(RouteFilterConfig::share));
                    route.extend(top.iter().map(RouteFilterConfig::share));
                    let weighted =
                        weighted_of(r).iter().map(|w| level(&w.per_filter_config).into_boxed_slice()).collect();
                    RouteFilterConfigs { route: route.into_boxed_slice(), weighted }
                })
                .collect::<Vec<_>>()
                .into_boxed_slice()
        })
        .collect::<Vec<_>>()
        .into_boxed_slice();
    Some(vhosts)
}

impl RouteFilterConfig {
    /// The same override for another route (a virtual host's or route configuration's entry
    /// is one object shared by its routes, so a rate limit there is one bucket, as in Envoy).
    fn share(&self) -> RouteFilterConfig {
        let config = match &self.config {
            FilterOverride::Disabled => FilterOverride::Disabled,
            FilterOverride::Enabled => FilterOverride::Enabled,
            FilterOverride::Fault(c) => FilterOverride::Fault(c.clone()),
            FilterOverride::Cors(c) => FilterOverride::Cors(c.clone()),
            FilterOverride::LocalRateLimit(c) => FilterOverride::LocalRateLimit(c.clone()),
            FilterOverride::HeaderMutation(c) => FilterOverride::HeaderMutation(c.clone()),
        };
        RouteFilterConfig { name: self.name.clone(), config }
    }
}

fn weighted_of(r: &model::Route) -> &[model::WeightedCluster] {
    match &r.action {
        RouteAction::Forward(a) => match &a.cluster {
            ClusterSpecifier::Weighted { clusters, .. } => clusters,
            _ => &[],
        },
        _ => &[],
    }
}

fn compile_one(o: &model::FilterOverride, store: &Store) -> FilterOverride {
    match o {
        model::FilterOverride::Disabled => FilterOverride::Disabled,
        model::FilterOverride::Enabled => FilterOverride::Enabled,
        model::FilterOverride::Fault(c) => FilterOverride::Fault(c.clone()),
        model::FilterOverride::Cors(c) => FilterOverride::Cors(c.clone()),
        model::FilterOverride::LocalRateLimit(c) => {
            FilterOverride::LocalRateLimit(Arc::new(LocalRateLimit::new(c.clone(), store)))
        }
        model::FilterOverride::HeaderMutation(c) => FilterOverride::HeaderMutation(c.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_xds::model::{
        DomainMatcher, FilterOverride as M, HeaderMutationPerRoute, HeaderMutations, PathMatch, RequireTls, Route,
        RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    };

    fn route(name: &str, pfc: model::PerFilterConfig) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            matcher: RouteMatch {
                path: PathMatch::Prefix("/".into()),
                case_sensitive: true,
                headers: vec![],
                query_parameters: vec![],
                grpc: false,
                runtime_fraction: None,
            },
            action: RouteAction::NonForwarding,
            headers: HeaderMutations::default(),
            per_filter_config: pfc,
            per_request_buffer_limit_bytes: None,
        })
    }

    fn table(top: model::PerFilterConfig, vh: model::PerFilterConfig, routes: Vec<Arc<Route>>) -> RouteConfiguration {
        RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: vec![Arc::new(VirtualHost {
                name: "vh".into(),
                domains: vec![DomainMatcher::Any],
                routes,
                headers: HeaderMutations::default(),
                require_tls: RequireTls::None,
                retry_policy: None,
                include_request_attempt_count: false,
                include_attempt_count_in_response: false,
                per_request_buffer_limit_bytes: None,
                per_filter_config: vh,
                legacy_cors: None,
            })],
            headers: HeaderMutations::default(),
            internal_only_headers: vec![],
            max_direct_response_body_size_bytes: 4096,
            most_specific_header_mutations_wins: false,
            validate_clusters: None,
            vhds: None,
            per_filter_config: top,
        }
    }

    fn names(c: &RouteFilterConfigs) -> Vec<(String, &'static str)> {
        c.route
            .iter()
            .map(|e| {
                let k = match e.config {
                    FilterOverride::Disabled => "disabled",
                    FilterOverride::Enabled => "enabled",
                    _ => "config",
                };
                (e.name.to_string(), k)
            })
            .collect()
    }

    #[test]
    fn nothing_configured_compiles_to_nothing() {
        let rc = table(vec![], vec![], vec![route("r", vec![])]);
        assert!(compile(&rc, &Store::new(1)).is_none());
    }

    #[test]
    fn levels_are_merged_most_specific_first() {
        let hm = || M::HeaderMutation(Arc::new(HeaderMutationPerRoute::default()));
        let rc = table(
            vec![("f".into(), M::Disabled), ("g".into(), hm())],
            vec![("f".into(), M::Enabled)],
            vec![route("r0", vec![("g".into(), M::Disabled)]), route("r1", vec![])],
        );
        let compiled = compile(&rc, &Store::new(1)).expect("configured");
        let r0 = &compiled[0][0];
        assert_eq!(
            names(r0),
            vec![("g".into(), "disabled"), ("f".into(), "enabled"), ("f".into(), "disabled"), ("g".into(), "config")]
        );
        assert!(matches!(r0.find("f", None), Some(FilterOverride::Enabled)));
        assert!(matches!(r0.find("g", None), Some(FilterOverride::Disabled)));
        let r1 = &compiled[0][1];
        assert!(matches!(r1.find("g", None), Some(FilterOverride::HeaderMutation(_))));
        assert!(r1.find("h", None).is_none());
    }
}
