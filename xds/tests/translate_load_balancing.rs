//! Translation of a cluster's load-balancer settings (`common_lb_config`,
//! `round_robin_lb_config`, `least_request_lb_config`), from YAML as a bootstrap has them.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as c;
use pinion_xds::decode::{message_from_str, DecodeOptions, Format};
use pinion_xds::model::{LbConfig, SlowStart};
use pinion_xds::translate::cluster;
use pinion_xds::{ConfigError, ErrorKind};

fn translate(extra: &str) -> Result<LbConfig, ConfigError> {
    let yaml = format!("name: svc\ntype: STATIC\nconnect_timeout: 1s\n{extra}");
    let proto: c::Cluster = message_from_str(&yaml, Format::Yaml, &DecodeOptions::default()).expect("decodes");
    cluster(&proto).map(|m| m.lb_config)
}

#[test]
fn defaults_are_envoys() {
    let d = translate("").unwrap();
    assert_eq!(d, LbConfig::default());
    assert_eq!((d.healthy_panic_threshold, d.locality_weighted, d.choice_count), (50, false, 2));
    assert_eq!((d.active_request_bias, d.slow_start), (None, None));
}

#[test]
fn settings_are_mapped() {
    // (extra cluster YAML, expected settings)
    let cases: Vec<(&str, LbConfig)> = vec![
        (
            "common_lb_config: { healthy_panic_threshold: { value: 0 } }",
            LbConfig { healthy_panic_threshold: 0, ..LbConfig::default() },
        ),
        (
            "common_lb_config: { healthy_panic_threshold: { value: 32.6 }, locality_weighted_lb_config: {} }",
            LbConfig { healthy_panic_threshold: 33, locality_weighted: true, ..LbConfig::default() },
        ),
        ("common_lb_config: { update_merge_window: 0s }", LbConfig::default()),
        (
            "lb_policy: LEAST_REQUEST\nleast_request_lb_config: { choice_count: 3, active_request_bias: { default_value: 0.5, runtime_key: k } }",
            LbConfig {
                choice_count: 3,
                active_request_bias: Some(0.5),
                active_request_bias_key: "k".into(),
                ..LbConfig::default()
            },
        ),
        (
            "round_robin_lb_config: { slow_start_config: { slow_start_window: 30s } }",
            LbConfig {
                slow_start: Some(SlowStart {
                    window: Duration::from_secs(30),
                    aggression: 1.0,
                    aggression_key: String::new(),
                    min_weight: 0.1,
                }),
                ..LbConfig::default()
            },
        ),
        (
            "lb_policy: LEAST_REQUEST\nleast_request_lb_config: { slow_start_config: { slow_start_window: 5s, aggression: { default_value: 2, runtime_key: a }, min_weight_percent: { value: 25 } } }",
            LbConfig {
                slow_start: Some(SlowStart {
                    window: Duration::from_secs(5),
                    aggression: 2.0,
                    aggression_key: "a".into(),
                    min_weight: 0.25,
                }),
                ..LbConfig::default()
            },
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(translate(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}")), want, "{yaml}");
    }
}

#[test]
fn unsupported_settings_are_refused_with_their_path() {
    // (extra cluster YAML, error kind, field path)
    let cases = [
        (
            "common_lb_config: { zone_aware_lb_config: { min_cluster_size: 3 } }",
            ErrorKind::Unsupported,
            "common_lb_config.zone_aware_lb_config",
        ),
        (
            "common_lb_config: { update_merge_window: 5s }",
            ErrorKind::Unsupported,
            "common_lb_config.update_merge_window",
        ),
        (
            "common_lb_config: { ignore_new_hosts_until_first_hc: true }",
            ErrorKind::Unsupported,
            "common_lb_config.ignore_new_hosts_until_first_hc",
        ),
        (
            "common_lb_config: { close_connections_on_host_set_change: true }",
            ErrorKind::Unsupported,
            "common_lb_config.close_connections_on_host_set_change",
        ),
        (
            "common_lb_config: { override_host_status: { statuses: [HEALTHY] } }",
            ErrorKind::Unsupported,
            "common_lb_config.override_host_status",
        ),
    ];
    for (yaml, kind, path) in cases {
        let err = translate(yaml).expect_err(yaml);
        assert_eq!((err.kind, err.path.as_str()), (kind, path), "{yaml}: {err}");
        if kind == ErrorKind::Unsupported {
            assert!(err.reason.contains("not supported by pinion"), "{err}");
        }
    }
}

#[test]
fn assignment_policy_is_mapped() {
    let yaml = "name: svc\ntype: STATIC\nload_assignment:\n  cluster_name: svc\n  policy: { overprovisioning_factor: 200, weighted_priority_health: true }\n";
    let proto: c::Cluster = message_from_str(yaml, Format::Yaml, &DecodeOptions::default()).expect("decodes");
    let la = cluster(&proto).unwrap().load_assignment;
    assert_eq!((la.overprovisioning_factor, la.weighted_priority_health), (200, true));
    let proto: c::Cluster =
        message_from_str("name: svc\ntype: STATIC\n", Format::Yaml, &DecodeOptions::default()).expect("decodes");
    let la = cluster(&proto).unwrap().load_assignment;
    assert_eq!((la.overprovisioning_factor, la.weighted_priority_health), (140, false));
}
