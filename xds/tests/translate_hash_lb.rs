//! Translation of the hash-based load balancers (`RING_HASH`, `MAGLEV`, their typed
//! `load_balancing_policy` extensions) and of route `hash_policy`, from YAML as users write it.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use pinion_xds::model::{self, HashPolicyKind, LbPolicy, MaglevConfig, RingHashConfig};
use pinion_xds::translate::{cluster, route_configuration};
use pinion_xds::{ConfigError, ErrorKind};

fn cluster_yaml(extra: &str) -> Result<model::Cluster, ConfigError> {
    let yaml = format!("name: svc\nconnect_timeout: 1s\n{extra}");
    let proto: Cluster = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default())?;
    cluster(&proto)
}

fn typed(type_name: &str, body: &str) -> String {
    format!(
        "load_balancing_policy:\n  policies:\n  - typed_extension_config:\n      name: p\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.{type_name}\n{body}"
    )
}

#[test]
fn lb_policies_translate() {
    let ring = |min, max, host| {
        LbPolicy::RingHash(RingHashConfig {
            minimum_ring_size: min,
            maximum_ring_size: max,
            use_hostname_for_hashing: host,
        })
    };
    let maglev = |size, host| LbPolicy::Maglev(MaglevConfig { table_size: size, use_hostname_for_hashing: host });
    let rows: Vec<(String, LbPolicy)> = vec![
        ("lb_policy: RING_HASH\n".into(), ring(1024, 8 << 20, false)),
        (
            "lb_policy: RING_HASH\nring_hash_lb_config: { minimum_ring_size: 64, maximum_ring_size: 4096, hash_function: XX_HASH }\n".into(),
            ring(64, 4096, false),
        ),
        (
            "lb_policy: RING_HASH\ncommon_lb_config: { consistent_hashing_lb_config: { use_hostname_for_hashing: true } }\n".into(),
            ring(1024, 8 << 20, true),
        ),
        ("lb_policy: MAGLEV\n".into(), maglev(65537, false)),
        ("lb_policy: MAGLEV\nmaglev_lb_config: { table_size: 251 }\n".into(), maglev(251, false)),
        // A setting for another policy is unused, as in Envoy.
        ("lb_policy: ROUND_ROBIN\nmaglev_lb_config: { table_size: 251 }\n".into(), LbPolicy::RoundRobin),
        (typed("ring_hash.v3.RingHash", "        minimum_ring_size: 16\n"), ring(16, 8 << 20, false)),
        (
            typed(
                "ring_hash.v3.RingHash",
                "        consistent_hashing_lb_config: { use_hostname_for_hashing: true }\n",
            ),
            ring(1024, 8 << 20, true),
        ),
        (typed("maglev.v3.Maglev", "        table_size: 131\n"), maglev(131, false)),
        (typed("round_robin.v3.RoundRobin", ""), LbPolicy::RoundRobin),
        (typed("least_request.v3.LeastRequest", ""), LbPolicy::LeastRequest),
        (typed("random.v3.Random", ""), LbPolicy::Random),
        // The typed policy decides over `lb_policy`.
        (format!("lb_policy: RANDOM\n{}", typed("maglev.v3.Maglev", "")), maglev(65537, false)),
    ];
    for (yaml, want) in rows {
        let got = cluster_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        assert_eq!(got.lb_policy, want, "{yaml}");
    }
}

#[test]
fn lb_policy_errors_name_the_field() {
    let rows: Vec<(String, ErrorKind, &str)> = vec![
        (
            "lb_policy: MAGLEV\nmaglev_lb_config: { table_size: 65536 }\n".into(),
            ErrorKind::Invalid,
            "maglev_lb_config.table_size",
        ),
        (
            "lb_policy: RING_HASH\nring_hash_lb_config: { minimum_ring_size: 4096, maximum_ring_size: 1024 }\n".into(),
            ErrorKind::Invalid,
            "ring_hash_lb_config.minimum_ring_size",
        ),
        (
            "lb_policy: RING_HASH\nring_hash_lb_config: { hash_function: MURMUR_HASH_2 }\n".into(),
            ErrorKind::Unsupported,
            "ring_hash_lb_config.hash_function",
        ),
        (
            "lb_policy: RING_HASH\ncommon_lb_config: { consistent_hashing_lb_config: { hash_balance_factor: 150 } }\n"
                .into(),
            ErrorKind::Unsupported,
            "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
        ),
        (
            typed("maglev.v3.Maglev", "        table_size: 100\n"),
            ErrorKind::Invalid,
            "load_balancing_policy.policies[0].typed_extension_config.typed_config.table_size",
        ),
        (
            typed("ring_hash.v3.RingHash", "        hash_function: MURMUR_HASH_2\n"),
            ErrorKind::Unsupported,
            "load_balancing_policy.policies[0].typed_extension_config.typed_config.hash_function",
        ),
        (
            typed("least_request.v3.LeastRequest", "        choice_count: 3\n"),
            ErrorKind::Unsupported,
            "load_balancing_policy.policies[0].typed_extension_config.typed_config.choice_count",
        ),
    ];
    for (yaml, kind, path) in rows {
        match cluster_yaml(&yaml) {
            Ok(c) => panic!("{yaml}: accepted as {:?}", c.lb_policy),
            Err(e) => assert_eq!((e.kind, e.path.as_str()), (kind, path), "{yaml}: {e}"),
        }
    }
}

#[test]
fn endpoint_hash_key_metadata_is_read() {
    let c = cluster_yaml(
        "load_assignment:\n  cluster_name: svc\n  endpoints:\n  - lb_endpoints:\n    - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } }\n      metadata: { filter_metadata: { envoy.lb: { hash_key: tenant-a } } }\n    - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 2 } } }\n",
    )
    .unwrap();
    let eps = &c.load_assignment.localities[0].endpoints;
    assert_eq!((eps[0].lb_hash_key.as_str(), eps[1].lb_hash_key.as_str()), ("tenant-a", ""));
}

fn hash_policies(policies: &str) -> Result<Vec<model::HashPolicy>, ConfigError> {
    let yaml = format!(
        "name: r\nvirtual_hosts:\n- name: vh\n  domains: ['*']\n  routes:\n  - match: {{ prefix: / }}\n    route:\n      cluster: svc\n      hash_policy:\n{policies}"
    );
    let proto: RouteConfiguration = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default())?;
    let cfg = route_configuration(&proto)?;
    match &cfg.virtual_hosts[0].routes[0].action {
        model::RouteAction::Forward(f) => Ok(f.hash_policy.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn route_hash_policies_translate() {
    let got = hash_policies(
        "      - header: { header_name: X-User }\n        terminal: true\n      - header: { header_name: ':path', regex_rewrite: { pattern: { regex: '^/(\\w+)/.*' }, substitution: '\\1' } }\n      - cookie: { name: sid, ttl: 3600.5s, path: /, attributes: [{ name: SameSite, value: Lax }] }\n      - connection_properties: { source_ip: true }\n      - connection_properties: { source_ip: false }\n      - query_parameter: { name: user }\n",
    )
    .unwrap();
    assert_eq!(got.len(), 5, "source_ip: false contributes nothing, as in Envoy: {got:?}");
    assert!(got[0].terminal && !got[1].terminal);
    assert!(matches!(&got[0].kind, HashPolicyKind::Header { name, regex_rewrite: None } if name == "x-user"));
    assert!(matches!(&got[1].kind, HashPolicyKind::Header { name, regex_rewrite: Some(_) } if name == ":path"));
    match &got[2].kind {
        HashPolicyKind::Cookie { name, path, ttl, attributes } => {
            assert_eq!((name.as_str(), path.as_str()), ("sid", "/"));
            assert_eq!(*ttl, Some(std::time::Duration::from_secs(3600)), "whole seconds, as Envoy");
            assert_eq!(attributes, &[("SameSite".to_string(), "Lax".to_string())]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(got[3].kind, HashPolicyKind::SourceIp));
    assert!(matches!(&got[4].kind, HashPolicyKind::QueryParameter { name } if name == "user"));

    let err = hash_policies("      - filter_state: { key: k }\n").unwrap_err();
    assert_eq!(
        (err.kind, err.path.as_str()),
        (ErrorKind::Unsupported, "virtual_hosts[0].routes[0].route.hash_policy[0].filter_state"),
        "{err}"
    );
}
