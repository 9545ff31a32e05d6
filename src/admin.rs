//! The admin listener, with Envoy's endpoints and output formats (operators' tools parse
//! them): `/ready`, `/server_info`, `/stats` (+ `/stats/prometheus`), `/config_dump`,
//! `/clusters`, `/listeners`, `/healthcheck/fail|ok`, `/drain_listeners`, `/logging`,
//! `/quitquitquit`. Runs on the main thread's runtime, never on a worker.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::server_state::{ServerState, ServerStateKind};
use crate::upstream::outlier_detection::Origin;
use crate::upstream::outlier_detector::{format_g, format_shortest};
use crate::upstream::{HealthFlags, Host};
use pinion_xds::model::RoutingPriority;

/// Bind the admin listener and serve it in the background; returns the bound address.
pub async fn start(addr: SocketAddr, state: Arc<ServerState>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(bound)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, "text/plain; charset=UTF-8".parse().expect("static header"));
    r
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_string_pretty(v).unwrap_or_default())));
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("static header"));
    r
}

fn query_params(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(state: &Arc<ServerState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let q = query_params(&req);
    let post = req.method() == Method::POST;
    let mutating = matches!(
        path.as_str(),
        "/healthcheck/fail"
            | "/healthcheck/ok"
            | "/quitquitquit"
            | "/drain_listeners"
            | "/reset_counters"
            | "/runtime_modify"
    ) || (path == "/logging" && !q.is_empty());
    if mutating && !post {
        return text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST.\n");
    }
    match path.as_str() {
        "/ready" => {
            let s = effective_state(state);
            let code = if s == ServerStateKind::Live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(code, format!("{}\n", s.name()))
        }
        "/server_info" => json_response(&server_info(state)),
        "/stats" => stats(state, &q),
        "/stats/prometheus" => {
            let used_only = q.contains_key("usedonly");
            let mut r = text(StatusCode::OK, state.store.render_prometheus(used_only));
            r.headers_mut().insert(header::CONTENT_TYPE, "text/plain; version=0.0.4".parse().expect("static header"));
            r
        }
        "/config_dump" => json_response(&config_dump(state)),
        "/clusters" => {
            if q.get("format").map(String::as_str) == Some("json") {
                json_response(&clusters_json(state))
            } else {
                text(StatusCode::OK, clusters_text(state))
            }
        }
        "/listeners" => listeners(state, &q),
        "/healthcheck/fail" => {
            state.healthcheck_failed.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            state.healthcheck_failed.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            state.start_drain();
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" => {
            state.immediate_exit.store(true, Ordering::Relaxed);
            state.shutdown.notify_one();
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => match q.get("level") {
            Some(l) if state.log.set_level(l) => text(StatusCode::OK, format!("active loggers:\n  pinion: {l}\n")),
            Some(l) => text(StatusCode::BAD_REQUEST, format!("error: unknown logger level '{l}'\n")),
            None if !q.is_empty() => text(StatusCode::BAD_REQUEST, "usage: /logging?level=<level>\n"),
            None => text(StatusCode::OK, "active loggers:\n  pinion\n"),
        },
        "/memory" => {
            json_response(&json!({ "allocated": rss_bytes().to_string(), "heap_size": rss_bytes().to_string() }))
        }
        "/runtime" => json_response(&state.runtime.dump()),
        "/runtime_modify" => {
            let kv: Vec<(String, String)> = q.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            match state.runtime.modify(&kv) {
                Ok(()) => text(StatusCode::OK, "OK\n"),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
        "/" | "/help" => text(StatusCode::OK, HELP),
        _ => text(StatusCode::NOT_FOUND, format!("invalid path. admin commands are:\n{HELP}")),
    }
}

const HELP: &str = "  /: this help\n  /clusters: upstream cluster status\n  /config_dump: dump current config\n  /drain_listeners (POST): drain listeners\n  /healthcheck/fail (POST): cause the server to fail health checks\n  /healthcheck/ok (POST): cause the server to pass health checks\n  /listeners: print listener info\n  /logging (POST): query/change logging levels\n  /memory: print current allocation/heap usage\n  /quitquitquit (POST): exit the server\n  /ready: print server state, return 200 if LIVE, otherwise return 503\n  /runtime: print runtime values\n  /runtime_modify (POST): Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an empty string as the value. Note that deletion only applies to overrides added via this endpoint; values loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...\n  /server_info: print server version/status information\n  /stats: print server stats\n  /stats/prometheus: print server stats in prometheus format\n";

fn effective_state(state: &ServerState) -> ServerStateKind {
    // Envoy reports DRAINING while health checks are failed.
    if state.healthcheck_failed.load(Ordering::Relaxed) {
        ServerStateKind::Draining
    } else {
        state.state()
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn duration_string(secs: u64) -> String {
    format!("{secs}s")
}

fn server_info(state: &ServerState) -> Value {
    let o = &state.options;
    let node = &state.bootstrap.node;
    let uptime = state.start.elapsed().as_secs();
    json!({
        "version": format!("pinion/{}/Clean/RELEASE/rustls", env!("CARGO_PKG_VERSION")),
        "state": effective_state(state).name(),
        "hot_restart_version": "disabled",
        "command_line_options": {
            "base_id": o.base_id.unwrap_or(0).to_string(),
            "concurrency": state.concurrency,
            "config_path": o.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "config_yaml": o.config_yaml.clone().unwrap_or_default(),
            "allow_unknown_static_fields": o.allow_unknown_static_fields,
            "log_level": o.log_level,
            "component_log_level": o.component_log_level.clone().unwrap_or_default(),
            "log_path": o.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "service_cluster": node.cluster,
            "service_node": node.id,
            "service_zone": o.service_zone.clone().unwrap_or_default(),
            "drain_time": duration_string(o.drain_time_s),
            "drain_strategy": if o.drain_strategy.eq_ignore_ascii_case("immediate") { "Immediate" } else { "Gradual" },
            "file_flush_interval": format!("{}s", o.file_flush_interval_msec as f64 / 1000.0),
            "mode": "Serve",
            "disable_hot_restart": true,
            "local_address_ip_version": if o.local_address_ip_version == "v6" { "v6" } else { "v4" },
        },
        "node": {
            "id": node.id,
            "cluster": node.cluster,
            "metadata": node.metadata,
            "user_agent_name": "pinion",
            "user_agent_build_version": { "version": version_json() },
        },
        "uptime_current_epoch": duration_string(uptime),
        "uptime_all_epochs": duration_string(uptime),
    })
}

fn version_json() -> Value {
    let mut parts = env!("CARGO_PKG_VERSION").split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    json!({
        "major_number": parts.next().unwrap_or(0),
        "minor_number": parts.next().unwrap_or(0),
        "patch": parts.next().unwrap_or(0),
    })
}

fn stats(state: &ServerState, q: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let used_only = q.contains_key("usedonly");
    let filter = match q.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => match regex::Regex::new(f) {
            Ok(re) => Some(re),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n")),
        },
        None => None,
    };
    match q.get("format").map(String::as_str) {
        Some("json") => json_response(&state.store.render_json(filter.as_ref(), used_only)),
        Some("prometheus") => text(StatusCode::OK, state.store.render_prometheus(used_only)),
        _ => text(StatusCode::OK, state.store.render_text(filter.as_ref(), used_only)),
    }
}

fn listeners(state: &ServerState, q: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let bound = state.bound_listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if q.get("format").map(String::as_str) == Some("json") {
        let statuses: Vec<Value> = bound
            .iter()
            .map(|(name, addr)| {
                json!({"name": name, "local_address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}})
            })
            .collect();
        return json_response(&json!({ "listener_statuses": statuses }));
    }
    let mut out = String::new();
    for (name, addr) in bound {
        let _ = writeln!(out, "{name}::{addr}");
    }
    text(StatusCode::OK, out)
}

fn last_updated(state: &ServerState) -> String {
    let t = std::time::SystemTime::now() - state.start.elapsed();
    crate::formatter::format_time(t)
}

/// Envoy's `ConfigDump`: bootstrap, then static clusters, listeners and route configs.
fn config_dump(state: &ServerState) -> Value {
    let b = &state.bootstrap.config_dump_json;
    let updated = last_updated(state);
    let empty = Vec::new();
    let static_resources = b.get("static_resources");
    let clusters = static_resources.and_then(|s| s.get("clusters")).and_then(Value::as_array).unwrap_or(&empty);
    let listeners = static_resources.and_then(|s| s.get("listeners")).and_then(Value::as_array).unwrap_or(&empty);
    let mut routes = Vec::new();
    for l in listeners {
        let chains = l.get("filter_chains").and_then(Value::as_array).into_iter().flatten();
        for chain in chains.chain(l.get("default_filter_chain")) {
            for f in chain.get("filters").and_then(Value::as_array).into_iter().flatten() {
                if let Some(rc) = f.get("typed_config").and_then(|t| t.get("route_config")) {
                    routes.push(json!({ "route_config": with_type(rc, "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"), "last_updated": updated }));
                }
            }
        }
    }
    let mut dump = json!({
        "configs": [
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": b, "last_updated": updated },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "static_clusters": clusters.iter().map(|c| json!({
                    "cluster": with_type(c, "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                    "last_updated": updated,
                })).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "static_listeners": listeners.iter().map(|l| json!({
                    "listener": with_type(l, "type.googleapis.com/envoy.config.listener.v3.Listener"),
                    "last_updated": updated,
                })).collect::<Vec<_>>(),
            },
            { "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "static_route_configs": routes },
        ]
    });
    if let Some(store) = state.config_store.get() {
        merge_dynamic(&mut dump, store.dump());
    }
    dump
}

/// Fold the config store's dynamic state into the per-type dumps, with Envoy's field names.
fn merge_dynamic(dump: &mut Value, dynamic: Value) {
    let Some(configs) = dump.get_mut("configs").and_then(Value::as_array_mut) else { return };
    let put = |configs: &mut Vec<Value>, ty: &str, key: &str, v: &Value| {
        if let Some(c) = configs.iter_mut().find(|c| c["@type"] == ty) {
            c[key] = v.clone();
        }
    };
    let clusters = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
    let listeners = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
    let routes = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump";
    put(configs, clusters, "dynamic_active_clusters", &dynamic["dynamic_active_clusters"]);
    put(configs, clusters, "dynamic_warming_clusters", &dynamic["dynamic_warming_clusters"]);
    put(configs, listeners, "dynamic_listeners", &dynamic["dynamic_listeners"]);
    put(configs, routes, "dynamic_route_configs", &dynamic["dynamic_route_configs"]);
    if !dynamic["last_rejected_update"].is_null() {
        put(configs, listeners, "last_rejected_update", &dynamic["last_rejected_update"]);
    }
    if dynamic["dynamic_scoped_route_configs"].as_array().is_some_and(|a| !a.is_empty()) {
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
            "dynamic_scoped_route_configs": [{ "scoped_route_configs": dynamic["dynamic_scoped_route_configs"] }],
        }));
    }
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        "dynamic_endpoint_configs": dynamic["dynamic_endpoint_configs"],
    }));
}

fn with_type(v: &Value, ty: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("@type".into(), Value::String(ty.into()));
    if let Value::Object(o) = v {
        for (k, val) in o {
            m.insert(k.clone(), val.clone());
        }
    }
    Value::Object(m)
}

fn host_counters(h: &Host) -> [(&'static str, u64, bool); 9] {
    let s = &h.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let g = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
    [
        ("cx_active", g(&s.cx_active), true),
        ("cx_connect_fail", l(&s.cx_connect_fail), false),
        ("cx_total", l(&s.cx_total), false),
        ("rq_active", g(&s.rq_active), true),
        ("rq_error", l(&s.rq_error), false),
        ("rq_pending_active", g(&s.rq_pending_active), true),
        ("rq_success", l(&s.rq_success), false),
        ("rq_timeout", l(&s.rq_timeout), false),
        ("rq_total", l(&s.rq_total), false),
    ]
}

/// Envoy's `/clusters` text format.
fn clusters_text(state: &ServerState) -> String {
    let snap = state.snapshot.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let c = &snap.clusters[name];
        let _ = writeln!(out, "{name}::observability_name::{}", c.config.stat_name);
        if let Some(od) = c.outlier() {
            // fmt's `{:g}` in Envoy's `addOutlierInfo`.
            let (ext, local) = (od.success_rate_nums(Origin::External), od.success_rate_nums(Origin::Local));
            let _ = writeln!(out, "{name}::outlier::success_rate_average::{}", format_g(ext.average, 6));
            let _ = writeln!(
                out,
                "{name}::outlier::success_rate_ejection_threshold::{}",
                format_g(ext.ejection_threshold, 6)
            );
            let _ = writeln!(out, "{name}::outlier::local_origin_success_rate_average::{}", format_g(local.average, 6));
            let _ = writeln!(
                out,
                "{name}::outlier::local_origin_success_rate_ejection_threshold::{}",
                format_g(local.ejection_threshold, 6)
            );
        }
        // The limits in force now (runtime overrides and a retry budget's current size
        // included), as Envoy prints them.
        for p in RoutingPriority::ALL {
            let rm = c.resource_manager(p);
            let prio = p.name();
            let _ = writeln!(out, "{name}::{prio}_priority::max_connections::{}", rm.connections().max());
            let _ = writeln!(out, "{name}::{prio}_priority::max_pending_requests::{}", rm.pending_requests().max());
            let _ = writeln!(out, "{name}::{prio}_priority::max_requests::{}", rm.requests().max());
            let _ = writeln!(out, "{name}::{prio}_priority::max_retries::{}", rm.max_retries());
        }
        let _ = writeln!(out, "{name}::added_via_api::false");
        for h in c.hosts().all() {
            let a = h.address;
            for (stat, v, _) in host_counters(h) {
                let _ = writeln!(out, "{name}::{a}::{stat}::{v}");
            }
            let _ = writeln!(out, "{name}::{a}::hostname::{}", h.hostname());
            let _ = writeln!(out, "{name}::{a}::health_flags::{}", h.health_flags_text());
            let _ = writeln!(out, "{name}::{a}::weight::{}", h.weight());
            let loc = h.locality().unwrap_or_default();
            let _ = writeln!(out, "{name}::{a}::region::{}", loc.region);
            let _ = writeln!(out, "{name}::{a}::zone::{}", loc.zone);
            let _ = writeln!(out, "{name}::{a}::sub_zone::{}", loc.sub_zone);
            let _ = writeln!(out, "{name}::{a}::canary::false");
            let _ = writeln!(out, "{name}::{a}::priority::{}", h.priority());
            // -1 without a detector or without a rate last interval; fmt's `{}` otherwise.
            let rates = if c.outlier().is_some() { h.outlier_state().success_rate } else { [-1.0; 2] };
            let _ = writeln!(out, "{name}::{a}::success_rate::{}", format_shortest(rates[0]));
            let _ = writeln!(out, "{name}::{a}::local_origin_success_rate::{}", format_shortest(rates[1]));
        }
    }
    out
}

/// Envoy's `/clusters?format=json`.
fn clusters_json(state: &ServerState) -> Value {
    let snap = state.snapshot.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let statuses: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let c = &snap.clusters[name];
            let thresholds: Vec<Value> = RoutingPriority::ALL
                .into_iter()
                .map(|p| {
                    let rm = c.resource_manager(p);
                    let mut t = json!({
                        "max_connections": rm.connections().max(),
                        "max_pending_requests": rm.pending_requests().max(),
                        "max_requests": rm.requests().max(),
                        "max_retries": rm.max_retries(),
                    });
                    // Proto3 JSON leaves the default priority out.
                    if p == RoutingPriority::High {
                        t["priority"] = json!("HIGH");
                    }
                    t
                })
                .collect();
            let hosts: Vec<Value> = c
                .hosts()
                .all()
                .map(|h| {
                    let stats: Vec<Value> = host_counters(h)
                        .iter()
                        .map(|(n, v, gauge)| {
                            if *gauge {
                                json!({"type": "GAUGE", "name": n, "value": v.to_string()})
                            } else {
                                json!({"name": n, "value": v.to_string()})
                            }
                        })
                        .collect();
                    let flags = h.health_flags();
                    let mut health = json!({ "eds_health_status": flags.eds_status_name() });
                    // Envoy's `HostHealthStatus` fields, one per flag it reports.
                    for (flag, key) in [
                        (HealthFlags::FAILED_OUTLIER_CHECK, "failed_outlier_check"),
                        (HealthFlags::FAILED_ACTIVE_HC, "failed_active_health_check"),
                        (HealthFlags::DEGRADED_ACTIVE_HC, "failed_active_degraded_check"),
                        (HealthFlags::PENDING_DYNAMIC_REMOVAL, "pending_dynamic_removal"),
                        (HealthFlags::PENDING_ACTIVE_HC, "pending_active_hc"),
                        (HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "excluded_via_immediate_hc_fail"),
                        (HealthFlags::ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
                    ] {
                        if flags.contains(flag) {
                            health[key] = json!(true);
                        }
                    }
                    let loc = h.locality().unwrap_or_default();
                    let mut host = json!({
                        "address": {"socket_address": {"address": h.address.ip().to_string(), "port_value": h.address.port()}},
                        "stats": stats,
                        "health_status": health,
                        "weight": h.weight(),
                        "hostname": h.hostname(),
                        "priority": h.priority(),
                        "locality": {"region": loc.region, "zone": loc.zone, "sub_zone": loc.sub_zone},
                    });
                    if c.outlier().is_some() {
                        let rates = h.outlier_state().success_rate;
                        for (key, rate) in [("success_rate", rates[0]), ("local_origin_success_rate", rates[1])] {
                            if rate >= 0.0 {
                                host[key] = double_value(rate);
                            }
                        }
                    }
                    host
                })
                .collect();
            let mut status = json!({
                "name": name,
                "observability_name": c.config.stat_name,
                "added_via_api": false,
                "circuit_breakers": {"thresholds": thresholds},
                "host_statuses": hosts,
            });
            if let Some(od) = c.outlier() {
                for (key, origin) in [
                    ("success_rate_ejection_threshold", Origin::External),
                    ("local_origin_success_rate_ejection_threshold", Origin::Local),
                ] {
                    let threshold = od.success_rate_nums(origin).ejection_threshold;
                    if threshold > 0.0 {
                        status[key] = double_value(threshold);
                    }
                }
            }
            status
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// A `google.protobuf.DoubleValue` as Envoy's JSON shows it: `{"value": v}`, and `{}` for 0
/// (proto3 leaves out a zero field); integral values without a fraction.
fn double_value(v: f64) -> Value {
    if v == 0.0 {
        return json!({});
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return json!({ "value": v as i64 });
    }
    json!({ "value": v })
}
