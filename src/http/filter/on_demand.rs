//! `envoy.filters.http.on_demand` for VHDS: a request whose `:authority` has no virtual host
//! in a route configuration with `vhds` asks the control plane for `<route config>/<host>`,
//! waits (bounded) for the answer, and has the HCM match the route again.

use std::sync::Arc;

use http::header;
use http::request::Parts;

use super::callbacks::{DecodeCx, FilterStatus};
use crate::http::on_demand::{OnDemandVhds, ON_DEMAND_TIMEOUT};

/// Longest `Host` asked for: a DNS name plus a port. Names stay subscribed for good, so a
/// longer, client-made one is never requested.
const MAX_HOST_LEN: usize = 261;

/// The filter: the process-wide registry of names requested on demand.
pub struct OnDemand {
    vhds: Arc<OnDemandVhds>,
}

impl OnDemand {
    /// A filter requesting through `vhds`.
    pub fn new(vhds: Arc<OnDemandVhds>) -> Self {
        OnDemand { vhds }
    }

    /// Only a host without a virtual host in a VHDS route configuration does anything.
    pub async fn decode_headers(&self, head: &mut Parts, cx: &mut DecodeCx<'_, '_>) -> FilterStatus {
        let Some(table) = cx.table else { return FilterStatus::Continue };
        let authority = head.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if table.config.vhds.is_none() || authority.len() > MAX_HOST_LEN || table.virtual_host(authority).is_some() {
            return FilterStatus::Continue;
        }
        let name = format!("{}/{}", table.config.name, authority.to_ascii_lowercase());
        self.vhds.fetch(name, ON_DEMAND_TIMEOUT).await;
        FilterStatus::ClearRouteCache
    }
}
