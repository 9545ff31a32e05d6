//! Differential test of the HTTP filters `envoy.filters.http.fault`, `.cors`,
//! `.local_ratelimit` and `.header_mutation`, with per-route `typed_per_filter_config`
//! (filter overrides, `envoy.config.route.v3.FilterConfig` disabling a filter on a route
//! and enabling an HCM filter that has `disabled: true`), and the filter chain's order.
//!
//! The real Envoy and Pinion get the same bootstrap (`bootstraps/http_filters.yaml`, only
//! ports differ) and the same table of requests, over HTTP/1.1 and h2c (gRPC rows: h2c).
//! Each row carries its own expectations (status, matched route, backend hits, headers,
//! bodies, a lower bound on the latency of delayed requests), checked against every proxy
//! that runs, so the table itself is verified against Envoy; with both proxies the
//! observations are also compared with each other. After the table the filters' counters
//! from admin `/stats` are checked against fixed values (what Envoy counts for this
//! table) and compared between the proxies.
//!
//! Rows run in table order, the whole table over HTTP/1.1 first, then over h2c; the
//! counters and token buckets they touch depend on that order, and every proxy gets a
//! fresh process, so the counts are the same on every run. Rate-limit rows go to one
//! listener per downstream protocol, so each protocol starts with full buckets.
//!
//! `INTEROP_ONLY=envoy` (or `pinion`) runs a single proxy; the default is both.
//! `INTEROP_VERBOSE=1` prints every observation. A proxy that does not start (e.g. one
//! that refuses the bootstrap) is reported with its logs; the other one still runs the
//! table, and the test fails.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use pinion_interop_tests::render_bootstrap;
use pinion_testkit::{
    full, grpc_unary_with_metadata, h2c_client_to, http1_client_to, send_full, spawn_grpc_backend, spawn_http_backend,
    Backend, BackendKind, GrpcBackend, ProxyKind, ProxyProcess, TestClient,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------

/// Downstream protocol a row is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

/// Which downstream protocols a row runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protos {
    Both,
    H2Only,
}

/// The listener (one HCM each, see the bootstrap) a row is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L {
    /// `fault`: header-controlled faults at filter level, fixed faults per route.
    Fault,
    /// `cors`: CorsPolicy on the virtual host, overridden on `/override`.
    Cors,
    /// `rl_h1` over HTTP/1.1, `rl_h2` over h2c: local_ratelimit, then fault.
    Rl,
    /// `hm`: header_mutation at filter level and per route.
    Hm,
    /// `order`: cors, header_mutation (outer), fault, header_mutation `hm_inner`.
    Order,
    /// `toggle`: a fault filter with `disabled: true`, enabled on some routes.
    Toggle,
}

/// What a row sends.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One HTTP request.
    Http,
    /// n identical requests one after the other; the observation is the last response,
    /// plus every status (`statuses`).
    Burst(usize),
    /// Two identical requests, the second sent this many ms after the first while the
    /// first is still in flight; the observation is the second response, plus both
    /// statuses (first, second).
    Overlap(u64),
    /// gRPC unary `Authorization/Check` with the row's headers as metadata (status =
    /// grpc-status; body = `path=.. echo=..` on OK, `grpc-message=..` otherwise).
    Grpc,
}

/// How to compare response bodies between the proxies.
#[derive(Clone, Copy, Debug)]
enum BodyCmp {
    /// Byte for byte (local replies, CORS preflight answers, gRPC summaries).
    Exact,
    /// The backend's JSON description: compare what the backend observed.
    Upstream,
}

/// One request (or a few) and what to compare / expect.
struct Row {
    name: &'static str,
    listener: L,
    kind: Kind,
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    protos: Protos,
    cmp: BodyCmp,
    /// Expected HTTP status of the (last) response (gRPC rows: grpc-status code).
    status: u16,
    /// Expected `x-route` response header; None = must be absent.
    route: Option<&'static str>,
    /// Requests the (HTTP/1.1, gRPC) backends must receive during the row.
    hits: (u64, u64),
    /// Lower bound on the slowest request of the row, in ms (fault delays). There is
    /// deliberately never an upper bound.
    min_ms: u64,
    /// Extra expectations. Keys: `up.<field>` (backend JSON field), `up:<header>` (as
    /// the backend saw it), `resp:<header>`, `trailer:<name>`, `body`, `statuses` (space-separated, in
    /// sending order). Values: exact text (multi-values joined with " | "), `<absent>`
    /// or `<present>`.
    expect: &'static [(&'static str, &'static str)],
}

const AUTHORITY: &str = "filters.example.com";

/// Defaults for rows: GET / on the fault listener, proxied JSON, 200, both protocols,
/// one request reaching the HTTP/1.1 backend.
const R: Row = Row {
    name: "",
    listener: L::Fault,
    kind: Kind::Http,
    method: "GET",
    authority: AUTHORITY,
    path: "/",
    headers: &[],
    protos: Protos::Both,
    cmp: BodyCmp::Upstream,
    status: 200,
    route: None,
    hits: (1, 0),
    min_ms: 0,
    expect: &[],
};

/// Envoy's local reply body for a fault abort (`text/plain`).
const FAULT_BODY: &str = "fault filter abort";
/// Envoy's local reply body for a local rate limit (`text/plain`).
const RL_BODY: &str = "local_rate_limited";
const ALLOWED: &str = "https://allowed.example";

/// Values that legitimately differ between the two runs, and why. Everything else
/// listed in the module docs is compared.
const DELIBERATE_DIFFERENCES: &[(&str, &str)] = &[
    ("response `date`", "wall-clock time: only its presence is compared"),
    ("response `x-envoy-upstream-service-time`", "measured latency: only its presence is compared"),
    ("upstream `x-request-id`", "random UUID per request: only its presence is compared"),
    ("latency of delayed requests", "timing: each proxy must meet the row's lower bound, values are not compared"),
];

fn table() -> Vec<Row> {
    vec![
        // ---- fault: fixed aborts per route ----
        Row {
            name: "fault-abort-http-status",
            path: "/abort",
            cmp: BodyCmp::Exact,
            status: 503,
            route: Some("abort"),
            hits: (0, 0),
            expect: &[("body", FAULT_BODY), ("resp:content-type", "text/plain"), ("resp:content-length", "18")],
            ..R
        },
        Row {
            name: "fault-abort-headers-match",
            path: "/abort-if-header",
            headers: &[("x-fault", "on")],
            cmp: BodyCmp::Exact,
            status: 403,
            route: Some("abort-if-header"),
            hits: (0, 0),
            expect: &[("body", FAULT_BODY), ("resp:content-type", "text/plain")],
            ..R
        },
        Row {
            name: "fault-abort-headers-other-value",
            path: "/abort-if-header",
            headers: &[("x-fault", "off")],
            route: Some("abort-if-header"),
            expect: &[("up:x-fault", "off")],
            ..R
        },
        Row { name: "fault-abort-headers-absent", path: "/abort-if-header", route: Some("abort-if-header"), ..R },
        Row { name: "fault-abort-percentage-zero", path: "/abort-zero", route: Some("abort-zero"), ..R },
        // ---- fault: header-controlled faults (filter-level config) ----
        Row {
            name: "fault-header-abort-429",
            path: "/x",
            headers: &[("x-envoy-fault-abort-request", "429")],
            cmp: BodyCmp::Exact,
            status: 429,
            route: Some("header-faults"),
            hits: (0, 0),
            expect: &[("body", FAULT_BODY), ("resp:content-type", "text/plain")],
            ..R
        },
        Row {
            name: "fault-header-delay-200ms",
            path: "/x",
            headers: &[("x-envoy-fault-delay-request", "200")],
            route: Some("header-faults"),
            min_ms: 200,
            expect: &[("up:x-envoy-fault-delay-request", "200")],
            ..R
        },
        Row {
            name: "fault-header-delay-then-abort",
            path: "/x",
            headers: &[("x-envoy-fault-delay-request", "200"), ("x-envoy-fault-abort-request", "429")],
            cmp: BodyCmp::Exact,
            status: 429,
            route: Some("header-faults"),
            hits: (0, 0),
            min_ms: 200,
            expect: &[("body", FAULT_BODY)],
            ..R
        },
        Row {
            name: "fault-header-abort-out-of-range",
            path: "/x",
            headers: &[("x-envoy-fault-abort-request", "600")],
            route: Some("header-faults"),
            expect: &[("up:x-envoy-fault-abort-request", "600")],
            ..R
        },
        Row { name: "fault-no-fault-headers", path: "/x", route: Some("header-faults"), ..R },
        // ---- fault: fixed delay, max_active_faults ----
        Row { name: "fault-fixed-delay-300ms", path: "/delay", route: Some("delay"), min_ms: 300, ..R },
        Row { name: "fault-max-active-faults-0", path: "/overflow", route: Some("overflow"), ..R },
        Row {
            name: "fault-max-active-faults-1-overlap",
            kind: Kind::Overlap(150),
            path: "/one-active",
            route: Some("one-active"),
            hits: (2, 0),
            min_ms: 800,
            expect: &[("statuses", "200 200")],
            ..R
        },
        // ---- fault: gRPC (h2c) ----
        Row {
            name: "grpc-fault-abort-grpc-status",
            kind: Kind::Grpc,
            authority: "grpc-abort.example.com",
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 7,
            hits: (0, 0),
            expect: &[("body", "grpc-message=fault filter abort"), ("resp:content-type", "application/grpc")],
            ..R
        },
        Row {
            name: "grpc-fault-abort-http-status",
            kind: Kind::Grpc,
            authority: "grpc-http-abort.example.com",
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 14,
            hits: (0, 0),
            expect: &[("body", "grpc-message=fault filter abort"), ("resp:content-type", "application/grpc")],
            ..R
        },
        Row {
            name: "grpc-fault-header-abort-grpc",
            kind: Kind::Grpc,
            authority: "grpc.example.com",
            headers: &[("x-envoy-fault-abort-grpc-request", "5")],
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 5,
            hits: (0, 0),
            expect: &[("body", "grpc-message=fault filter abort")],
            ..R
        },
        // The same abort seen as plain HTTP/2: a trailers-only gRPC reply.
        Row {
            name: "grpc-fault-abort-trailers-only",
            method: "POST",
            authority: "grpc-abort.example.com",
            path: "/envoy.service.auth.v3.Authorization/Check",
            headers: &[("content-type", "application/grpc"), ("te", "trailers")],
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            hits: (0, 0),
            expect: &[
                ("body", ""),
                ("resp:content-type", "application/grpc"),
                ("resp:grpc-status", "7"),
                ("resp:grpc-message", "fault filter abort"),
                ("resp:content-length", "<absent>"),
                ("trailer:grpc-status", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "grpc-no-fault",
            kind: Kind::Grpc,
            authority: "grpc.example.com",
            protos: Protos::H2Only,
            cmp: BodyCmp::Exact,
            status: 0,
            hits: (0, 1),
            expect: &[("body", "path=/probe echo=hello")],
            ..R
        },
        // ---- cors ----
        Row {
            name: "cors-preflight-allowed",
            listener: L::Cors,
            method: "OPTIONS",
            headers: &[("origin", ALLOWED), ("access-control-request-method", "POST")],
            cmp: BodyCmp::Exact,
            hits: (0, 0),
            expect: &[
                ("body", ""),
                ("resp:access-control-allow-origin", ALLOWED),
                ("resp:access-control-allow-methods", "GET, POST, PUT"),
                ("resp:access-control-allow-headers", "x-custom, content-type"),
                ("resp:access-control-max-age", "600"),
                ("resp:access-control-allow-credentials", "true"),
                ("resp:access-control-expose-headers", "x-backend, x-route"),
                ("resp:content-type", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "cors-preflight-allowed-suffix-any-method",
            listener: L::Cors,
            method: "OPTIONS",
            headers: &[
                ("origin", "https://a.trusted.example"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-other"),
            ],
            cmp: BodyCmp::Exact,
            hits: (0, 0),
            expect: &[
                ("resp:access-control-allow-origin", "https://a.trusted.example"),
                ("resp:access-control-allow-methods", "GET, POST, PUT"),
                ("resp:access-control-allow-headers", "x-custom, content-type"),
            ],
            ..R
        },
        Row {
            name: "cors-preflight-disallowed-origin-forwarded",
            listener: L::Cors,
            method: "OPTIONS",
            headers: &[("origin", "https://evil.example"), ("access-control-request-method", "POST")],
            route: Some("cors"),
            expect: &[
                ("up.method", "OPTIONS"),
                ("up:origin", "https://evil.example"),
                ("resp:access-control-allow-origin", "<absent>"),
                ("resp:access-control-allow-methods", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "cors-options-without-request-method-forwarded",
            listener: L::Cors,
            method: "OPTIONS",
            headers: &[("origin", ALLOWED)],
            route: Some("cors"),
            expect: &[
                ("up.method", "OPTIONS"),
                ("resp:access-control-allow-origin", ALLOWED),
                ("resp:access-control-allow-methods", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "cors-simple-allowed",
            listener: L::Cors,
            headers: &[("origin", ALLOWED)],
            route: Some("cors"),
            expect: &[
                ("resp:access-control-allow-origin", ALLOWED),
                ("resp:access-control-allow-credentials", "true"),
                ("resp:access-control-expose-headers", "x-backend, x-route"),
                ("resp:access-control-allow-methods", "<absent>"),
                ("resp:access-control-max-age", "<absent>"),
                ("up:origin", ALLOWED),
            ],
            ..R
        },
        Row {
            name: "cors-simple-disallowed",
            listener: L::Cors,
            headers: &[("origin", "https://evil.example")],
            route: Some("cors"),
            expect: &[
                ("resp:access-control-allow-origin", "<absent>"),
                ("resp:access-control-allow-credentials", "<absent>"),
                ("resp:access-control-expose-headers", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "cors-no-origin",
            listener: L::Cors,
            route: Some("cors"),
            expect: &[("resp:access-control-allow-origin", "<absent>")],
            ..R
        },
        // The route's CorsPolicy sets only origins and methods: the other fields come
        // from the virtual host's policy (Envoy looks each field up, most specific first).
        Row {
            name: "cors-route-override-preflight",
            listener: L::Cors,
            method: "OPTIONS",
            path: "/override",
            headers: &[("origin", "https://override.example"), ("access-control-request-method", "DELETE")],
            cmp: BodyCmp::Exact,
            hits: (0, 0),
            expect: &[
                ("body", ""),
                ("resp:access-control-allow-origin", "https://override.example"),
                ("resp:access-control-allow-methods", "DELETE"),
                ("resp:access-control-allow-headers", "x-custom, content-type"),
                ("resp:access-control-max-age", "600"),
                ("resp:access-control-allow-credentials", "true"),
                ("resp:access-control-expose-headers", "x-backend, x-route"),
            ],
            ..R
        },
        Row {
            name: "cors-route-override-rejects-vhost-origin",
            listener: L::Cors,
            method: "OPTIONS",
            path: "/override",
            headers: &[("origin", ALLOWED), ("access-control-request-method", "DELETE")],
            route: Some("cors-override"),
            expect: &[("up.method", "OPTIONS"), ("resp:access-control-allow-origin", "<absent>")],
            ..R
        },
        Row {
            name: "cors-route-override-simple",
            listener: L::Cors,
            path: "/override",
            headers: &[("origin", "https://override.example")],
            route: Some("cors-override"),
            expect: &[
                ("resp:access-control-allow-origin", "https://override.example"),
                ("resp:access-control-allow-credentials", "true"),
                ("resp:access-control-expose-headers", "x-backend, x-route"),
            ],
            ..R
        },
        // ---- local_ratelimit (each protocol on its own listener, fresh buckets) ----
        Row {
            name: "rl-burst-3-of-5",
            listener: L::Rl,
            kind: Kind::Burst(5),
            path: "/burst",
            cmp: BodyCmp::Exact,
            status: 429,
            route: Some("burst"),
            hits: (3, 0),
            expect: &[
                ("statuses", "200 200 200 429 429"),
                ("body", RL_BODY),
                ("resp:content-type", "text/plain"),
                ("resp:x-local-rate-limit", "true"),
                ("resp:x-envoy-ratelimited", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "rl-route-bucket-1",
            listener: L::Rl,
            kind: Kind::Burst(2),
            path: "/route-bucket",
            cmp: BodyCmp::Exact,
            status: 429,
            route: Some("route-bucket"),
            hits: (1, 0),
            expect: &[("statuses", "200 429"), ("body", RL_BODY), ("resp:x-local-rate-limit", "<absent>")],
            ..R
        },
        Row {
            name: "rl-disabled-on-route",
            listener: L::Rl,
            kind: Kind::Burst(5),
            path: "/unlimited",
            route: Some("unlimited"),
            hits: (5, 0),
            expect: &[("statuses", "200 200 200 200 200")],
            ..R
        },
        // filter_enforced 0%: the bucket (max_tokens 1) still counts, nothing is refused;
        // requests over the limit get request_headers_to_add_when_not_enforced.
        Row {
            name: "rl-not-enforced-within-limit",
            listener: L::Rl,
            path: "/shadow",
            route: Some("shadow"),
            expect: &[("up:x-rl-shadow", "<absent>")],
            ..R
        },
        Row {
            name: "rl-not-enforced-over-limit-forwarded",
            listener: L::Rl,
            kind: Kind::Burst(3),
            path: "/shadow",
            route: Some("shadow"),
            hits: (3, 0),
            expect: &[("statuses", "200 200 200"), ("up:x-rl-shadow", "limited")],
            ..R
        },
        // local_ratelimit runs before fault: a token lets the request reach the fault
        // (503), an empty bucket answers 429 before the fault filter sees the request.
        Row {
            name: "rl-before-fault",
            listener: L::Rl,
            kind: Kind::Burst(2),
            path: "/order",
            cmp: BodyCmp::Exact,
            status: 429,
            route: Some("order"),
            hits: (0, 0),
            expect: &[("statuses", "503 429"), ("body", RL_BODY)],
            ..R
        },
        // ---- header_mutation ----
        Row {
            name: "hm-filter-level",
            listener: L::Hm,
            headers: &[("x-hm-req", "client"), ("x-hm-set", "client"), ("x-hm-remove", "1")],
            route: Some("hm"),
            expect: &[
                ("up:x-hm-req", "client | filter"),
                ("up:x-hm-set", "filter"),
                ("up:x-hm-remove", "<absent>"),
                ("resp:x-hm-resp", "filter"),
                ("resp:x-hm-resp-set", "filter"),
                ("resp:x-backend", "<absent>"),
            ],
            ..R
        },
        Row {
            name: "hm-route-override-applied-after-filter-level",
            listener: L::Hm,
            path: "/override",
            headers: &[("x-hm-req", "client"), ("x-hm-set", "client"), ("x-hm-remove", "1")],
            route: Some("hm-override"),
            expect: &[
                ("up:x-hm-req", "client | filter | route"),
                ("up:x-hm-set", "route"),
                ("up:x-hm-remove", "<absent>"),
                ("resp:x-hm-resp", "filter | route"),
                ("resp:x-hm-resp-set", "route"),
                ("resp:x-backend", "<absent>"),
            ],
            ..R
        },
        // ---- filter order: request hooks in order, response hooks in reverse ----
        Row {
            name: "order-upstream-response",
            listener: L::Order,
            headers: &[("origin", ALLOWED)],
            route: Some("order"),
            expect: &[
                ("up:x-hm-order", "outer | inner"),
                ("resp:x-hm-resp", "inner | outer"),
                ("resp:access-control-allow-origin", ALLOWED),
                ("resp:access-control-expose-headers", "x-hm-resp"),
            ],
            ..R
        },
        // The fault's local reply goes through every encoder filter, the ones after the
        // fault filter (hm_inner) included.
        Row {
            name: "order-fault-local-reply-through-encoders",
            listener: L::Order,
            path: "/fault",
            headers: &[("origin", ALLOWED)],
            cmp: BodyCmp::Exact,
            status: 503,
            route: Some("order-fault"),
            hits: (0, 0),
            expect: &[
                ("body", FAULT_BODY),
                ("resp:x-hm-resp", "inner | outer"),
                ("resp:access-control-allow-origin", ALLOWED),
                ("resp:access-control-expose-headers", "x-hm-resp"),
            ],
            ..R
        },
        // ---- an HCM filter with disabled: true ----
        Row {
            name: "toggle-enabled-by-empty-filterconfig",
            listener: L::Toggle,
            path: "/enabled",
            cmp: BodyCmp::Exact,
            status: 418,
            route: Some("enabled"),
            hits: (0, 0),
            expect: &[("body", FAULT_BODY)],
            ..R
        },
        Row {
            name: "toggle-enabled-by-route-config",
            listener: L::Toggle,
            path: "/enabled-by-config",
            cmp: BodyCmp::Exact,
            status: 451,
            route: Some("enabled-by-config"),
            hits: (0, 0),
            expect: &[("body", FAULT_BODY)],
            ..R
        },
        Row { name: "toggle-other-routes-unaffected", listener: L::Toggle, route: Some("toggle-default"), ..R },
    ]
}

/// The filters' counters after the whole table (HTTP/1.1 then h2c), exactly as Envoy
/// names and counts them; every filter counter a proxy prints must be listed here.
///
/// Per protocol run (x2 for the totals), from the rows above:
/// * `http.fault.fault.*`: aborts = /abort, header match, header abort 429, delay then
///   abort (4; h2c adds the four gRPC aborts); delays = header delay, delay then abort,
///   fixed delay, the overlap's first request (4); overflow = max_active_faults 0 and the
///   overlap's second request (2). One request with a delay and an abort counts both.
/// * `http.cors.cors.*`: valid = both allowed preflights, OPTIONS without a request method,
///   simple allowed, route override preflight and simple (6); invalid = disallowed
///   preflight, simple disallowed, override rejecting the vhost's origin (3); a request
///   without `Origin` counts neither.
/// * `rl.*` (HCM-level bucket, only /burst): 5 requests, 3 ok, 2 limited and enforced.
///   `rl_route.*`, `rl_order.*`: 2 requests, 1 ok, 1 limited and enforced.
///   `rl_shadow.*`: 4 requests, 1 ok, 3 limited, none enforced. The two rate-limit
///   listeners share these counters (same stat_prefix), not their buckets.
/// * `http.order.*`: 2 valid origins, 1 abort; `http.toggle.fault.aborts_injected`: 2.
/// * `http.rl_h1.fault.aborts_injected` (HTTP/1.1 run only) and `http.rl_h2.…` (h2c run
///   only): 1 each, the /order request that got a token.
///
/// `shadow_mode` stays 0 here: it is not what filter_enforced 0% counts.
const EXPECTED_STATS: &[(&str, u64)] = &[
    ("http.fault.fault.aborts_injected", 12),
    ("http.fault.fault.delays_injected", 8),
    ("http.fault.fault.faults_overflow", 4),
    ("http.fault.fault.active_faults", 0),
    ("http.fault.fault.response_rl_injected", 0),
    ("http.cors.cors.origin_valid", 12),
    ("http.cors.cors.origin_invalid", 6),
    ("rl.http_local_rate_limit.enabled", 10),
    ("rl.http_local_rate_limit.ok", 6),
    ("rl.http_local_rate_limit.rate_limited", 4),
    ("rl.http_local_rate_limit.enforced", 4),
    ("rl.http_local_rate_limit.shadow_mode", 0),
    ("rl_route.http_local_rate_limit.enabled", 4),
    ("rl_route.http_local_rate_limit.ok", 2),
    ("rl_route.http_local_rate_limit.rate_limited", 2),
    ("rl_route.http_local_rate_limit.enforced", 2),
    ("rl_route.http_local_rate_limit.shadow_mode", 0),
    ("rl_shadow.http_local_rate_limit.enabled", 8),
    ("rl_shadow.http_local_rate_limit.ok", 2),
    ("rl_shadow.http_local_rate_limit.rate_limited", 6),
    ("rl_shadow.http_local_rate_limit.enforced", 0),
    ("rl_shadow.http_local_rate_limit.shadow_mode", 0),
    ("rl_order.http_local_rate_limit.enabled", 4),
    ("rl_order.http_local_rate_limit.ok", 2),
    ("rl_order.http_local_rate_limit.rate_limited", 2),
    ("rl_order.http_local_rate_limit.enforced", 2),
    ("rl_order.http_local_rate_limit.shadow_mode", 0),
    ("http.rl_h1.fault.aborts_injected", 1),
    ("http.rl_h1.fault.delays_injected", 0),
    ("http.rl_h1.fault.faults_overflow", 0),
    ("http.rl_h1.fault.active_faults", 0),
    ("http.rl_h1.fault.response_rl_injected", 0),
    ("http.rl_h2.fault.aborts_injected", 1),
    ("http.rl_h2.fault.delays_injected", 0),
    ("http.rl_h2.fault.faults_overflow", 0),
    ("http.rl_h2.fault.active_faults", 0),
    ("http.rl_h2.fault.response_rl_injected", 0),
    ("http.order.cors.origin_valid", 4),
    ("http.order.cors.origin_invalid", 0),
    ("http.order.fault.aborts_injected", 2),
    ("http.order.fault.delays_injected", 0),
    ("http.order.fault.faults_overflow", 0),
    ("http.order.fault.active_faults", 0),
    ("http.order.fault.response_rl_injected", 0),
    ("http.toggle.fault.aborts_injected", 4),
    ("http.toggle.fault.delays_injected", 0),
    ("http.toggle.fault.faults_overflow", 0),
    ("http.toggle.fault.active_faults", 0),
    ("http.toggle.fault.response_rl_injected", 0),
];

// ---------------------------------------------------------------------------------
// Running rows
// ---------------------------------------------------------------------------------

/// What one proxy did for one row.
#[derive(Debug, Default, Clone)]
struct Obs {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
    body: Bytes,
    trailers: BTreeMap<String, Vec<String>>,
    upstream: Option<Value>,
    /// Requests the (HTTP/1.1, gRPC) backends received while the row ran.
    hits: (u64, u64),
    /// Status of every request of the row, in sending order.
    statuses: Vec<u16>,
    /// Latency of the slowest request of the row.
    slowest: Duration,
    error: Option<String>,
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        m.entry(k.as_str().to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    m
}

struct Backends {
    h1: Backend,
    grpc: GrpcBackend,
}

impl Backends {
    fn hits(&self) -> (u64, u64) {
        (self.h1.hit_count(), self.grpc.hits.load(Ordering::SeqCst))
    }
}

/// How much earlier than configured a fault delay may end. Envoy's timers run on
/// libevent's coarse monotonic clock (jiffies): a 800 ms delay was seen to end after
/// 798.98 ms measured by the client.
const TIMER_SLACK: Duration = Duration::from_millis(10);
/// Bound for one request (or one gRPC call).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// After this many timed-out rows a proxy is considered hung: its remaining rows fail
/// at once instead of each waiting for the timeout.
const MAX_TIMEOUTS: u32 = 3;
/// Bound for a proxy to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

struct Target {
    kind: ProxyKind,
    proc: ProxyProcess,
    /// Per listener: address, HTTP/1.1 client, h2c client.
    listeners: Vec<(L, SocketAddr, TestClient, TestClient)>,
    /// `rl_h1` and `rl_h2`, the rate-limit listener for each protocol.
    rl: [(SocketAddr, TestClient); 2],
    timeouts: AtomicU32,
}

impl Target {
    fn endpoint(&self, l: L, proto: Proto) -> (SocketAddr, &TestClient) {
        if l == L::Rl {
            let (a, c) = match proto {
                Proto::H1 => &self.rl[0],
                Proto::H2c => &self.rl[1],
            };
            return (*a, c);
        }
        let (_, a, h1, h2) = self.listeners.iter().find(|(x, ..)| *x == l).expect("listener");
        (*a, if proto == Proto::H1 { h1 } else { h2 })
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts `kind` with the bootstrap; Err (with the proxy's logs) if it exits, is not
/// ready within [`READY_TIMEOUT`] or does not accept on every listener within 5 s.
fn start(kind: ProxyKind, b: &Backends) -> Result<Target, String> {
    let admin = pinion_testkit::free_port();
    let names = ["FAULT", "CORS", "RL_H1", "RL_H2", "HM", "ORDER", "TOGGLE"];
    let ports: Vec<u16> = names.iter().map(|_| pinion_testkit::free_port()).collect();
    let mut vars: Vec<(String, String)> =
        names.iter().zip(&ports).map(|(n, p)| (format!("{n}_PORT"), p.to_string())).collect();
    vars.push(("ADMIN_PORT".into(), admin.to_string()));
    vars.push(("H1_PORT".into(), b.h1.port().to_string()));
    vars.push(("GRPC_PORT".into(), b.grpc.port().to_string()));
    let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let yaml = render_bootstrap("http_filters.yaml", &vars);

    let mut proc =
        ProxyProcess::try_spawn(kind, &yaml, &[]).map_err(|e| format!("{kind} could not be started: {e:#}"))?;
    proc.wait_ready(admin, READY_TIMEOUT).map_err(|e| format!("{kind} did not become ready: {e:#}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    for (name, port) in names.iter().zip(&ports) {
        let addr = local(*port);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("{kind} ready but listener {name} ({addr}) not accepting\n{}", proc.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let at = |i: usize| local(ports[i]);
    let listeners = [(L::Fault, 0), (L::Cors, 1), (L::Hm, 4), (L::Order, 5), (L::Toggle, 6)]
        .into_iter()
        .map(|(l, i)| (l, at(i), http1_client_to(at(i)), h2c_client_to(at(i))))
        .collect();
    Ok(Target {
        kind,
        proc,
        listeners,
        rl: [(at(2), http1_client_to(at(2))), (at(3), h2c_client_to(at(3)))],
        timeouts: AtomicU32::new(0),
    })
}

fn request(row: &Row) -> Request<pinion_testkit::ReqBody> {
    let mut req = Request::builder()
        .method(Method::from_bytes(row.method.as_bytes()).expect("method"))
        .uri(format!("http://{}{}", row.authority, row.path));
    for (k, v) in row.headers {
        req = req.header(*k, *v);
    }
    req.body(full("")).expect("request")
}

/// One HTTP request: the observation (without hits) and its latency.
async fn http_once(client: &TestClient, row: &Row) -> (Obs, Duration) {
    let t0 = Instant::now();
    let res = send_full(client, request(row), REQUEST_TIMEOUT).await;
    let took = t0.elapsed();
    let obs = match res {
        Ok(r) => {
            let upstream = match row.cmp {
                BodyCmp::Upstream => serde_json::from_slice(&r.body).ok(),
                BodyCmp::Exact => None,
            };
            Obs {
                status: r.status.as_u16(),
                headers: header_map(&r.headers),
                body: r.body,
                trailers: r.trailers.as_ref().map(header_map).unwrap_or_default(),
                upstream,
                statuses: vec![r.status.as_u16()],
                slowest: took,
                ..Obs::default()
            }
        }
        Err(e) => Obs { error: Some(format!("{e:#}")), statuses: vec![0], slowest: took, ..Obs::default() },
    };
    (obs, took)
}

async fn run_grpc(addr: SocketAddr, row: &Row) -> Obs {
    let t0 = Instant::now();
    let addr = addr.to_string();
    let call = grpc_unary_with_metadata(&addr, Some(row.authority), "/probe", "hello", row.headers);
    let res = tokio::time::timeout(REQUEST_TIMEOUT, call).await;
    let slowest = t0.elapsed();
    match res {
        Ok(Ok(r)) => {
            let body = if r.code == tonic::Code::Ok {
                format!("path={} echo={}", r.echoed_path.unwrap_or_default(), r.echoed_header.unwrap_or_default())
            } else {
                format!("grpc-message={}", r.message)
            };
            let status = r.code as u16;
            Obs {
                status,
                headers: header_map(&r.metadata),
                body: Bytes::from(body),
                statuses: vec![status],
                slowest,
                ..Obs::default()
            }
        }
        Ok(Err(e)) => Obs { error: Some(format!("{e:#}")), slowest, ..Obs::default() },
        Err(_) => {
            Obs { error: Some(format!("gRPC call: no answer within {REQUEST_TIMEOUT:?}")), slowest, ..Obs::default() }
        }
    }
}

async fn run_row(t: &Target, b: &Backends, row: &Row, proto: Proto) -> Obs {
    if t.timeouts.load(Ordering::SeqCst) >= MAX_TIMEOUTS {
        return Obs {
            error: Some(format!("skipped: {} timed out on {MAX_TIMEOUTS} rows already", t.kind)),
            ..Obs::default()
        };
    }
    let before = b.hits();
    let (addr, client) = t.endpoint(row.listener, proto);
    let mut obs = match row.kind {
        Kind::Http => http_once(client, row).await.0,
        Kind::Burst(n) => {
            let mut statuses = Vec::with_capacity(n);
            let mut slowest = Duration::ZERO;
            let mut last = Obs::default();
            for _ in 0..n {
                let (o, took) = http_once(client, row).await;
                statuses.push(o.status);
                slowest = slowest.max(took);
                let failed = o.error.is_some();
                last = o;
                if failed {
                    break;
                }
            }
            Obs { statuses, slowest, ..last }
        }
        Kind::Overlap(gap_ms) => {
            let (first, second) = tokio::join!(http_once(client, row), async {
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                http_once(client, row).await
            });
            let (a, b) = (first.0, second.0);
            let error = a.error.clone().map(|e| format!("first request: {e}")).or(b.error.clone());
            Obs { statuses: vec![a.status, b.status], slowest: first.1.max(second.1), error, ..b }
        }
        Kind::Grpc => run_grpc(addr, row).await,
    };
    if obs.error.as_deref().is_some_and(|e| e.contains("within")) {
        t.timeouts.fetch_add(1, Ordering::SeqCst);
    }
    // Let a request the backend answered after the proxy's reply register before counting.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after = b.hits();
    obs.hits = (after.0 - before.0, after.1 - before.1);
    obs
}

// ---------------------------------------------------------------------------------
// Checking and comparing
// ---------------------------------------------------------------------------------

/// Response headers whose values are compared on every row (absent == absent).
const COMPARED_RESPONSE_HEADERS: &[&str] = &[
    "server",
    "content-type",
    "x-backend",
    "x-route",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "x-hm-resp",
    "x-hm-resp-set",
    "x-local-rate-limit",
    "x-envoy-ratelimited",
    "grpc-status",
    "grpc-message",
];
/// Response headers compared for presence only (values vary by time).
const PRESENCE_ONLY_RESPONSE_HEADERS: &[&str] = &["date", "x-envoy-upstream-service-time"];
/// Upstream request headers compared for presence only.
const PRESENCE_ONLY_UPSTREAM_HEADERS: &[&str] = &["x-request-id"];

fn joined(v: Option<&Vec<String>>) -> String {
    match v {
        None => "<absent>".into(),
        Some(v) => v.join(" | "),
    }
}

fn upstream_header(o: &Obs, name: &str) -> Option<Vec<String>> {
    let h = o.upstream.as_ref()?.get("headers")?.get(name)?;
    Some(match h {
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
        Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    })
}

fn upstream_field(o: &Obs, f: &str) -> String {
    match o.upstream.as_ref().and_then(|u| u.get(f)) {
        None => "<absent>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn matches(want: &str, got: &str) -> bool {
    match want {
        "<present>" => got != "<absent>",
        _ => want == got,
    }
}

fn statuses(o: &Obs) -> String {
    o.statuses.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" ")
}

/// The row's own expectations against one proxy's observation.
fn check_expectations(row: &Row, o: &Obs) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(e) = &o.error {
        bad.push(format!("error: {e}"));
    }
    if o.status != row.status {
        bad.push(format!("status {} (want {})", o.status, row.status));
    }
    let got = joined(o.headers.get("x-route"));
    let want = row.route.unwrap_or("<absent>");
    if got != want {
        bad.push(format!("x-route {got:?} (want {want:?})"));
    }
    if o.hits != row.hits {
        bad.push(format!("backend hits (h1,grpc) {:?} (want {:?})", o.hits, row.hits));
    }
    if o.slowest + TIMER_SLACK < Duration::from_millis(row.min_ms) {
        bad.push(format!(
            "slowest request took {:?} (want at least {} ms, less {TIMER_SLACK:?} of timer slack)",
            o.slowest, row.min_ms
        ));
    }
    if matches!(row.cmp, BodyCmp::Upstream) && o.upstream.is_none() && o.error.is_none() {
        bad.push("body is not the backend's JSON description".into());
    }
    for (key, want) in row.expect {
        let got = if let Some(f) = key.strip_prefix("up.") {
            upstream_field(o, f)
        } else if let Some(h) = key.strip_prefix("up:") {
            joined(upstream_header(o, h).as_ref())
        } else if let Some(h) = key.strip_prefix("resp:") {
            joined(o.headers.get(h))
        } else if let Some(h) = key.strip_prefix("trailer:") {
            joined(o.trailers.get(h))
        } else if *key == "body" {
            String::from_utf8_lossy(&o.body).into_owned()
        } else if *key == "statuses" {
            statuses(o)
        } else {
            panic!("row {}: unknown expectation key {key}", row.name)
        };
        if !matches(want, &got) {
            bad.push(format!("{key} = {got:?} (want {want:?})"));
        }
    }
    bad
}

/// Differences between Envoy's (`a`) and Pinion's (`b`) observations.
fn compare(row: &Row, a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    if a.status != b.status {
        d.push(format!("status: envoy {} vs pinion {}", a.status, b.status));
    }
    if a.statuses != b.statuses {
        d.push(format!("statuses: envoy {:?} vs pinion {:?}", statuses(a), statuses(b)));
    }
    if a.error.is_some() != b.error.is_some() {
        d.push(format!("error: envoy {:?} vs pinion {:?}", a.error, b.error));
    }
    if a.hits != b.hits {
        d.push(format!("backend hits (h1,grpc): envoy {:?} vs pinion {:?}", a.hits, b.hits));
    }
    let names = |o: &Obs| o.headers.keys().cloned().collect::<BTreeSet<_>>();
    if names(a) != names(b) {
        d.push(format!(
            "response header names: only envoy {:?}, only pinion {:?}",
            names(a).difference(&names(b)).collect::<Vec<_>>(),
            names(b).difference(&names(a)).collect::<Vec<_>>()
        ));
    }
    let mut value_headers: Vec<&str> = COMPARED_RESPONSE_HEADERS.to_vec();
    if matches!(row.cmp, BodyCmp::Exact) {
        value_headers.push("content-length");
    }
    for h in value_headers {
        let (x, y) = (joined(a.headers.get(h)), joined(b.headers.get(h)));
        if x != y {
            d.push(format!("response {h}: envoy {x:?} vs pinion {y:?}"));
        }
    }
    for h in PRESENCE_ONLY_RESPONSE_HEADERS {
        let (x, y) = (a.headers.contains_key(*h), b.headers.contains_key(*h));
        if x != y {
            d.push(format!("response {h} present: envoy {x} vs pinion {y}"));
        }
    }
    if a.trailers != b.trailers {
        d.push(format!("trailers: envoy {:?} vs pinion {:?}", a.trailers, b.trailers));
    }
    match row.cmp {
        BodyCmp::Exact => {
            if a.body != b.body {
                d.push(format!("body: envoy {:?} vs pinion {:?}", show(&a.body), show(&b.body)));
            }
        }
        BodyCmp::Upstream => d.extend(compare_upstream(a, b)),
    }
    d
}

/// Compares what the backend saw: request line fields, header names and values.
fn compare_upstream(a: &Obs, b: &Obs) -> Vec<String> {
    let mut d = Vec::new();
    for f in ["backend", "method", "path", "version", "body_len"] {
        let (x, y) = (upstream_field(a, f), upstream_field(b, f));
        if x != y {
            d.push(format!("upstream {f}: envoy {x:?} vs pinion {y:?}"));
        }
    }
    let headers = |o: &Obs| -> BTreeMap<String, Value> {
        o.upstream
            .as_ref()
            .and_then(|u| u.get("headers"))
            .and_then(|h| h.as_object())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (ha, hb) = (headers(a), headers(b));
    let keys: BTreeSet<&String> = ha.keys().chain(hb.keys()).collect();
    for k in keys {
        let (x, y) = (ha.get(k), hb.get(k));
        let same =
            if PRESENCE_ONLY_UPSTREAM_HEADERS.contains(&k.as_str()) { x.is_some() == y.is_some() } else { x == y };
        if !same {
            d.push(format!(
                "upstream header {k}: envoy {} vs pinion {}",
                x.map_or("<absent>".into(), |v| v.to_string()),
                y.map_or("<absent>".into(), |v| v.to_string())
            ));
        }
    }
    d
}

fn show(b: &[u8]) -> String {
    const MAX: usize = 300;
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX)]).into_owned();
    if b.len() > MAX {
        format!("{s}…({} bytes)", b.len())
    } else {
        s
    }
}

fn describe(o: &Obs) -> String {
    let body = match &o.upstream {
        Some(u) => u.to_string(),
        None => show(&o.body),
    };
    format!(
        "status={} statuses=[{}] slowest={:?} error={:?} hits(h1,grpc)={:?}\n      headers={:?}\n      \
         trailers={:?}\n      body={}",
        o.status,
        statuses(o),
        o.slowest,
        o.error,
        o.hits,
        o.headers,
        o.trailers,
        body
    )
}

// ---------------------------------------------------------------------------------
// Filter stats
// ---------------------------------------------------------------------------------

/// True for the counters/gauges of the filters under test: `http.<hcm>.fault.*`,
/// `http.<hcm>.cors.*` and `<stat_prefix>.http_local_rate_limit.*`.
fn is_filter_stat(name: &str) -> bool {
    if name.contains(".http_local_rate_limit.") {
        return true;
    }
    let mut parts = name.splitn(3, '.');
    parts.next() == Some("http")
        && parts.next().is_some()
        && parts.next().is_some_and(|rest| rest.starts_with("fault.") || rest.starts_with("cors."))
}

/// The filter stats from admin `/stats` (`name: value` lines; histograms skipped).
fn filter_stats(p: &ProxyProcess) -> Result<BTreeMap<String, u64>, String> {
    let body = match p.admin_get("/stats") {
        Ok((200, body)) => body,
        Ok((code, body)) => return Err(format!("{} /stats returned {code}: {}", p.kind(), show(body.as_bytes()))),
        Err(e) => return Err(format!("{e:#}")),
    };
    Ok(body
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let v = v.trim().parse::<u64>().ok()?;
            is_filter_stat(k).then(|| (k.to_string(), v))
        })
        .collect())
}

/// Problems of one proxy's filter stats against [`EXPECTED_STATS`].
fn check_stats(got: &BTreeMap<String, u64>) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, want) in EXPECTED_STATS {
        match got.get(*name) {
            Some(v) if v == want => {}
            Some(v) => bad.push(format!("{name} = {v} (want {want})")),
            None => bad.push(format!("{name} missing (want {want})")),
        }
    }
    for (name, v) in got {
        if !EXPECTED_STATS.iter().any(|(n, _)| n == name) {
            bad.push(format!("unexpected filter stat {name} = {v}"));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_filters_envoy_vs_pinion() {
    let kinds = match std::env::var("INTEROP_ONLY").unwrap_or_default().as_str() {
        "" | "both" => vec![ProxyKind::Envoy, ProxyKind::Pinion],
        "envoy" => vec![ProxyKind::Envoy],
        "pinion" => vec![ProxyKind::Pinion],
        other => panic!("INTEROP_ONLY must be envoy, pinion or both, not {other:?}"),
    };
    let verbose = std::env::var_os("INTEROP_VERBOSE").is_some();
    let rows = table();
    assert!(rows.len() >= 35, "table has only {} rows", rows.len());
    let names: BTreeSet<_> = rows.iter().map(|r| r.name).collect();
    assert_eq!(names.len(), rows.len(), "row names must be unique");
    assert!(!DELIBERATE_DIFFERENCES.is_empty());

    let backends = Backends { h1: spawn_http_backend(BackendKind::Http1), grpc: spawn_grpc_backend() };
    // Spawning and waiting are blocking calls (bounded by READY_TIMEOUT).
    let started: Vec<(ProxyKind, Result<Target, String>)> =
        tokio::task::block_in_place(|| kinds.iter().map(|k| (*k, start(*k, &backends))).collect());
    let mut startup_failures = Vec::new();
    let mut targets = Vec::new();
    for (kind, s) in started {
        match s {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("http_filters: {kind} failed to start (details at the end); the table runs without it");
                startup_failures.push(e);
            }
        }
    }
    if targets.is_empty() {
        panic!("PROXY FAILED TO START, no row ran:\n{}", startup_failures.join("\n\n"));
    }

    let t_table = Instant::now();
    let mut failures = Vec::new();
    let mut passed = 0usize;
    let mut total = 0usize;
    for proto in [Proto::H1, Proto::H2c] {
        for row in &rows {
            if proto == Proto::H1 && row.protos == Protos::H2Only {
                continue;
            }
            total += 1;
            let mut obs = Vec::new();
            for t in &targets {
                obs.push((t.kind, run_row(t, &backends, row, proto).await));
            }
            if verbose {
                for (kind, o) in &obs {
                    eprintln!("{} [{proto:?}] {kind}: {}", row.name, describe(o));
                }
            }
            let mut problems = Vec::new();
            for (kind, o) in &obs {
                for p in check_expectations(row, o) {
                    problems.push(format!("{kind} expectation: {p}"));
                }
            }
            if let [(_, a), (_, b)] = obs.as_slice() {
                problems.extend(compare(row, a, b));
            }
            if problems.is_empty() {
                passed += 1;
            } else {
                let sides: Vec<String> = obs.iter().map(|(k, o)| format!("    {k}: {}", describe(o))).collect();
                failures.push(format!(
                    "row {} [{:?}] {} {}{} (authority {}, listener {:?}):\n  - {}\n{}",
                    row.name,
                    proto,
                    row.method,
                    row.path,
                    if row.headers.is_empty() { String::new() } else { format!(" {:?}", row.headers) },
                    row.authority,
                    row.listener,
                    problems.join("\n  - "),
                    sides.join("\n")
                ));
            }
        }
    }
    let which: Vec<String> = targets.iter().map(|t| t.kind.to_string()).collect();
    eprintln!(
        "http_filters [{}]: {passed}/{total} row runs passed ({} rows x protocols) in {:?}",
        which.join(" vs "),
        rows.len(),
        t_table.elapsed()
    );

    // The filters' counters: fixed expectations, and the same between the proxies.
    let mut stats = Vec::new();
    for t in &targets {
        match filter_stats(&t.proc) {
            Ok(s) => {
                if verbose {
                    for (k, v) in &s {
                        eprintln!("stat {}: {k}: {v}", t.kind);
                    }
                }
                let bad = check_stats(&s);
                if !bad.is_empty() {
                    failures.push(format!("{} filter stats:\n  - {}", t.kind, bad.join("\n  - ")));
                }
                stats.push(s);
            }
            Err(e) => failures.push(format!("{} filter stats: {e}", t.kind)),
        }
    }
    if let [a, b] = stats.as_slice() {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: envoy {:?} vs pinion {:?}", a.get(k), b.get(k)))
            .collect();
        if !diffs.is_empty() {
            failures.push(format!("filter stats differ:\n  - {}", diffs.join("\n  - ")));
        }
    }

    if !startup_failures.is_empty() || !failures.is_empty() {
        let logs: Vec<String> =
            if failures.is_empty() { Vec::new() } else { targets.iter().map(|t| t.proc.logs()).collect() };
        panic!(
            "{}{} of {total} row runs failed\n\n{}\n\n{}",
            if startup_failures.is_empty() {
                String::new()
            } else {
                format!("PROXY FAILED TO START:\n{}\n\n", startup_failures.join("\n\n"))
            },
            total - passed,
            failures.join("\n\n"),
            logs.join("\n")
        );
    }
}

/// The comparison itself must notice differences (guards against a vacuous harness).
#[test]
fn compare_reports_differences() {
    let row = table().into_iter().find(|r| r.name == "rl-burst-3-of-5").expect("row");
    let mut a =
        Obs { status: 429, statuses: vec![200, 200, 200, 429, 429], body: Bytes::from(RL_BODY), ..Obs::default() };
    a.headers.insert("x-local-rate-limit".into(), vec!["true".into()]);
    let b = a.clone();
    assert!(compare(&row, &a, &b).is_empty());
    let mut b = a.clone();
    b.statuses = vec![200, 200, 200, 200, 429];
    b.headers.insert("x-envoy-ratelimited".into(), vec!["true".into()]);
    b.body = Bytes::from("too many");
    let d = compare(&row, &a, &b).join("\n");
    assert!(d.contains("statuses"), "{d}");
    assert!(d.contains("response x-envoy-ratelimited"), "{d}");
    assert!(d.contains("body"), "{d}");
    assert!(!check_expectations(&row, &b).is_empty());
}

/// Only the filters' own stats are picked from `/stats`.
#[test]
fn picks_filter_stats() {
    assert!(is_filter_stat("http.fault.fault.aborts_injected"));
    assert!(is_filter_stat("http.cors.cors.origin_valid"));
    assert!(is_filter_stat("rl_route.http_local_rate_limit.ok"));
    assert!(!is_filter_stat("http.fault.downstream_rq_total"));
    assert!(!is_filter_stat("http.cors.downstream_cx_total"));
    assert!(!is_filter_stat("cluster.fault.upstream_rq_total"));
}
