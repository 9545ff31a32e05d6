//! Criterion micro-benchmarks of Pinion's per-request hot paths:
//! route match over 1,000 routes, load-balancer pick, header mutation.
//!
//! `cargo bench -p pinion-bench` (all), or `cargo bench -p pinion-bench -- route` (a subset).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pinion::formatter::Context;
use pinion::http::header_mutation;
use pinion::http::route_table::{RequestView, RouteTable};
use pinion::http::stream_info::StreamInfo;
use pinion::stats::Store;
use pinion::upstream::{ClusterStats, Host, HostSet, LbContext, LoadBalancer};
use pinion_xds::decode::{message_from_json, DecodeOptions};
use pinion_xds::model::{AppendAction, HeaderValueOption, HealthStatus, LbPolicy};

type RouteConfigProto = envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

/// One virtual host (`*`) with 1,000 prefix routes `/svc<i>/` and a catch-all domain set,
/// compiled the way Pinion compiles a bootstrap's inline route config.
fn route_table_1000() -> RouteTable {
    let routes: Vec<serde_json::Value> = (0..1000)
        .map(|i| serde_json::json!({ "match": { "prefix": format!("/svc{i}/") }, "route": { "cluster": format!("c{i}") } }))
        .collect();
    let json = serde_json::json!({
        "name": "bench",
        "validate_clusters": false,
        "virtual_hosts": [
            { "name": "other", "domains": ["other.example.com"], "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "x" } }] },
            { "name": "all", "domains": ["*"], "routes": routes }
        ]
    });
    let proto: RouteConfigProto = message_from_json(&json, &DecodeOptions::default()).expect("decode route config");
    let model = pinion_xds::translate::route_configuration(&proto).expect("translate route config");
    RouteTable::new(Arc::new(model), &pinion::stats::Store::new(1))
}

fn bench_route_match(c: &mut Criterion) {
    let table = route_table_1000();
    let headers = HeaderMap::new();
    let method = Method::GET;
    let mut g = c.benchmark_group("route_match_1000_routes");
    for (name, path) in
        [("first", "/svc0/item"), ("middle", "/svc500/item"), ("last", "/svc999/item"), ("miss", "/nothing/here")]
    {
        let req = RequestView {
            authority: "api.example.com",
            path,
            query: None,
            method: &method,
            headers: &headers,
            is_grpc: false,
            random: Default::default(),
        };
        g.bench_function(name, |b| b.iter(|| black_box(table.route(black_box(&req)).is_some())));
    }
    g.finish();
}

fn hosts(n: u16, weight: impl Fn(u16) -> u32) -> HostSet {
    let hs = (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 10000 + i));
            Arc::new(Host::new(addr, String::new(), weight(i), None, 0, HealthStatus::Healthy))
        })
        .collect();
    HostSet::new(vec![hs])
}

fn bench_lb_pick(c: &mut Criterion) {
    let store = Store::new(1);
    let stats = ClusterStats::new(&store, "bench");
    let mut g = c.benchmark_group("lb_pick");
    let cases = [
        ("round_robin_3_hosts", LbPolicy::RoundRobin, hosts(3, |_| 1)),
        ("round_robin_weighted_10_hosts", LbPolicy::RoundRobin, hosts(10, |i| u32::from(i) + 1)),
        ("round_robin_100_hosts", LbPolicy::RoundRobin, hosts(100, |_| 1)),
        ("least_request_10_hosts", LbPolicy::LeastRequest, hosts(10, |_| 1)),
        ("random_10_hosts", LbPolicy::Random, hosts(10, |_| 1)),
    ];
    for (name, policy, set) in cases {
        let lb = LoadBalancer::new(policy, 2);
        lb.on_hosts_changed(&set);
        let ctx = LbContext::default();
        g.bench_function(name, |b| b.iter(|| black_box(lb.choose(black_box(&set), &ctx, &stats))));
    }
    g.finish();
}

fn opt(name: &'static str, value: &str, action: AppendAction) -> HeaderValueOption {
    HeaderValueOption {
        name: HeaderName::from_static(name),
        value: value.to_string(),
        has_formatter: value.contains('%'),
        append_action: action,
        keep_empty_value: false,
    }
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-request-id", "4b5e0c4e-6f4a-4a41-9a55-1f7c9d5d0e11"),
        ("x-remove-me", "yes"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench_header_mutation(c: &mut Criterion) {
    let base = request_headers();
    let remove = vec!["x-remove-me".to_string()];
    let plain = vec![
        opt("x-env", "prod", AppendAction::AppendIfExistsOrAdd),
        opt("x-route", "bench", AppendAction::OverwriteIfExistsOrAdd),
        opt("x-absent", "added", AppendAction::AddIfAbsent),
    ];
    let formatted = vec![
        opt("x-peer", "%DOWNSTREAM_REMOTE_ADDRESS%", AppendAction::OverwriteIfExistsOrAdd),
        opt("x-ua", "%REQ(user-agent)%", AppendAction::OverwriteIfExistsOrAdd),
    ];
    let info = StreamInfo::new(
        SocketAddr::from(([10, 0, 0, 1], 40000)),
        SocketAddr::from(([127, 0, 0, 1], 10000)),
        "HTTP/1.1",
    );
    let mut g = c.benchmark_group("header_mutation");
    g.bench_function("clone_only_baseline", |b| b.iter(|| black_box(base.clone())));
    g.bench_function("3_adds_1_remove", |b| {
        b.iter(|| {
            let mut h = base.clone();
            header_mutation::apply(&mut h, black_box(&plain), black_box(&remove), None);
            black_box(h)
        })
    });
    g.bench_function("2_formatted_adds", |b| {
        b.iter(|| {
            let mut h = base.clone();
            let ctx = Context { info: &info, request_headers: Some(&base), response_headers: None, bytes_sent: 0 };
            header_mutation::apply(&mut h, black_box(&formatted), &[], Some(&ctx));
            black_box(h)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_route_match, bench_lb_pick, bench_header_mutation);
criterion_main!(benches);
