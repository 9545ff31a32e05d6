//! Scoped routes (SRDS): a key built from request headers selects a scope, whose route
//! configuration routes the request.

use std::sync::Arc;

use super::{ConfigSource, RouteConfiguration};

/// `envoy.config.route.v3.ScopedRouteConfiguration`.
#[derive(Debug, Clone)]
pub struct ScopedRouteConfiguration {
    /// Scope name.
    pub name: String,
    /// `on_demand`: Envoy fetches the route configuration on first use; Pinion subscribes to
    /// it at once (see the README's deliberate differences).
    pub on_demand: bool,
    /// `route_configuration_name` (RDS), or the inline table's name.
    pub route_configuration_name: String,
    /// Inline `route_configuration`, if given instead of a name.
    pub route_configuration: Option<Arc<RouteConfiguration>>,
    /// `key.fragments` (string keys), in order.
    pub key: Vec<String>,
}

/// HCM `scoped_routes`.
#[derive(Debug, Clone)]
pub struct ScopedRoutes {
    /// `name`.
    pub name: String,
    /// `scope_key_builder.fragments`, in order.
    pub key_builder: Vec<ScopeKeyFragment>,
    /// `rds_config_source`: where the scopes' route configurations come from.
    pub rds_config_source: ConfigSource,
    /// The scopes: inline, or from SRDS.
    pub scopes: ScopesSource,
}

/// Where the scopes come from.
#[derive(Debug, Clone)]
pub enum ScopesSource {
    /// `scoped_route_configurations_list`.
    Inline(Vec<Arc<ScopedRouteConfiguration>>),
    /// `scoped_rds.scoped_rds_config_source`.
    Srds(ConfigSource),
}

/// `ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeKeyFragment {
    /// Header name (lowercased).
    pub header: http::HeaderName,
    /// `element_separator` (empty: the whole value is one element).
    pub element_separator: String,
    /// Which element.
    pub extract: FragmentExtract,
}

/// `HeaderValueExtractor.extract_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentExtract {
    /// `index`: the element at this position.
    Index(u32),
    /// `element`: the value of the `key<separator>value` element named `key`.
    Element {
        /// `separator` between key and value.
        separator: String,
        /// `key`.
        key: String,
    },
}

impl ScopeKeyFragment {
    /// Envoy's `HeaderValueExtractorImpl::computeFragment`: `None` if the header is absent or the
    /// element is not there.
    pub fn compute<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        let value = headers.get(&self.header)?.to_str().ok()?;
        match &self.extract {
            FragmentExtract::Index(i) => {
                if self.element_separator.is_empty() {
                    return (*i == 0).then_some(value);
                }
                value.split(self.element_separator.as_str()).nth(*i as usize)
            }
            FragmentExtract::Element { separator, key } => {
                let elements: Box<dyn Iterator<Item = &str>> = if self.element_separator.is_empty() {
                    Box::new(std::iter::once(value))
                } else {
                    Box::new(value.split(self.element_separator.as_str()))
                };
                for e in elements {
                    let e = e.trim();
                    if let Some((k, v)) = e.split_once(separator.as_str()) {
                        if k == key {
                            return Some(v);
                        }
                    }
                }
                None
            }
        }
    }
}
