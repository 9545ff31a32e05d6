//! The HTTP connection manager, its filter chain, the router and their helpers.

pub mod body;
pub mod connection_context;
pub mod connection_manager;
pub mod filter;
pub mod forwarded_client_cert;
pub mod h1_framing;
pub mod header_mutation;
pub mod local_reply;
pub mod max_stream_duration;
pub mod on_demand;
pub mod path;
pub mod redirect;
pub mod replay_body;
pub mod request_headers;
pub mod route_table;
pub mod router;
pub mod stream_info;

thread_local! {
    // Per thread (each worker is one): a cache, so no lock and nothing to hand around.
    static NUMERIC: std::cell::RefCell<std::collections::HashMap<u64, http::HeaderValue>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A header value for a small number (`x-envoy-upstream-service-time`, expected timeouts),
/// cached per worker so the common values cost no allocation per request.
pub fn numeric_header(n: u64) -> http::HeaderValue {
    if n > 100_000 {
        return http::HeaderValue::from(n);
    }
    NUMERIC.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 4096 {
            c.clear(); // bounded: long-tail values just get recomputed
        }
        c.entry(n).or_insert_with(|| http::HeaderValue::from(n)).clone()
    })
}
