//! `Bootstrap.dynamic_resources`, `ConfigSource`, `ApiConfigSource` and `GrpcService`: where
//! the xDS client fetches from. gRPC (SotW and Delta) only, v3 only.

use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3 as b;
use envoy_types::pb::envoy::config::core::v3 as core;

use super::{at, duration_zero_disables, enum_value, reject_set, unsupported_field};
use crate::error::{ConfigError, ConfigResult};
use crate::model;

/// Envoy's default `initial_fetch_timeout`.
const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Translate `dynamic_resources` (errors relative to it).
pub fn dynamic_resources(d: &b::bootstrap::DynamicResources) -> ConfigResult<model::DynamicResources> {
    let b::bootstrap::DynamicResources {
        lds_config,
        lds_resources_locator,
        cds_config,
        cds_resources_locator,
        ads_config,
    } = d;
    reject_set(lds_resources_locator, "lds_resources_locator")?;
    reject_set(cds_resources_locator, "cds_resources_locator")?;
    let ads = match ads_config {
        None => None,
        Some(a) => Some(api_config_source(a).map_err(at("ads_config"))?),
    };
    let source = |c: &Option<core::ConfigSource>, field: &str| -> ConfigResult<Option<model::ConfigSource>> {
        let Some(c) = c else { return Ok(None) };
        let s = config_source(c).map_err(at(field))?;
        if s.kind == model::ConfigSourceKind::Ads && ads.is_none() {
            return Err(ConfigError::invalid(format!("{field}.ads"), "ads is used but ads_config is not set"));
        }
        Ok(Some(s))
    };
    let lds = source(lds_config, "lds_config")?;
    let cds = source(cds_config, "cds_config")?;
    Ok(model::DynamicResources { ads, lds, cds })
}

/// Translate a `ConfigSource` (errors relative to it). `ads: {}` is accepted without checking
/// that the bootstrap has `ads_config`; [`dynamic_resources`] checks that for LDS/CDS.
pub fn config_source(c: &core::ConfigSource) -> ConfigResult<model::ConfigSource> {
    use core::config_source::ConfigSourceSpecifier as S;
    let core::ConfigSource { authorities, initial_fetch_timeout, resource_api_version, config_source_specifier } = c;
    reject_set(authorities, "authorities")?;
    api_version(*resource_api_version, "resource_api_version")?;
    let kind = match config_source_specifier {
        None => return Err(ConfigError::invalid("", "config_source_specifier must be set")),
        Some(S::Ads(core::AggregatedConfigSource {})) => model::ConfigSourceKind::Ads,
        Some(S::ApiConfigSource(a)) => {
            model::ConfigSourceKind::Api(api_config_source(a).map_err(at("api_config_source"))?)
        }
        #[allow(deprecated)]
        Some(S::Path(_)) => return Err(unsupported_field("path")),
        Some(S::PathConfigSource(_)) => return Err(unsupported_field("path_config_source")),
        Some(S::Self_(_)) => return Err(unsupported_field("self")),
    };
    let initial_fetch_timeout =
        duration_zero_disables(initial_fetch_timeout, Some(DEFAULT_INITIAL_FETCH_TIMEOUT), "initial_fetch_timeout")?;
    Ok(model::ConfigSource { kind, initial_fetch_timeout })
}

/// Translate an `ApiConfigSource` with a gRPC transport (errors relative to it).
pub fn api_config_source(a: &core::ApiConfigSource) -> ConfigResult<model::ApiConfigSource> {
    use core::api_config_source::ApiType as T;
    let core::ApiConfigSource {
        api_type,
        transport_api_version,
        cluster_names,
        grpc_services,
        // REST-only knobs, ignored for gRPC (as Envoy does).
        refresh_delay: _,
        request_timeout: _,
        rate_limit_settings,
        set_node_on_first_message_only,
        config_validators,
    } = a;
    let api_type = match enum_value::<T>(*api_type, "api_type")? {
        T::Grpc => model::ApiType::Grpc,
        T::DeltaGrpc => model::ApiType::DeltaGrpc,
        T::Rest => return Err(ConfigError::unsupported("api_type", "REST xDS is not supported by pinion (use GRPC)")),
        other => {
            return Err(ConfigError::unsupported(
                "api_type",
                format!("api_type {} is not supported by pinion (use GRPC or DELTA_GRPC)", other.as_str_name()),
            ))
        }
    };
    api_version(*transport_api_version, "transport_api_version")?;
    if !cluster_names.is_empty() {
        return Err(ConfigError::invalid("cluster_names", "cluster_names must not be set with a gRPC api_type"));
    }
    reject_set(rate_limit_settings, "rate_limit_settings")?;
    reject_set(config_validators, "config_validators")?;
    let grpc_service = match grpc_services.as_slice() {
        [] => {
            return Err(ConfigError::invalid("grpc_services", "a gRPC api_type needs exactly one grpc_services entry"))
        }
        [g] => grpc_service(g).map_err(at("grpc_services[0]"))?,
        _ => return Err(ConfigError::invalid("grpc_services", "only a single gRPC service can be specified")),
    };
    Ok(model::ApiConfigSource {
        api_type,
        grpc_service,
        set_node_on_first_message_only: *set_node_on_first_message_only,
    })
}

/// Translate a `GrpcService` (errors relative to it).
pub fn grpc_service(g: &core::GrpcService) -> ConfigResult<model::GrpcService> {
    use core::grpc_service::TargetSpecifier as T;
    let core::GrpcService { timeout, initial_metadata, retry_policy, target_specifier } = g;
    reject_set(timeout, "timeout")?;
    reject_set(initial_metadata, "initial_metadata")?;
    reject_set(retry_policy, "retry_policy")?;
    match target_specifier {
        None => Err(ConfigError::invalid("", "envoy_grpc or google_grpc must be set")),
        Some(T::EnvoyGrpc(e)) => {
            let core::grpc_service::EnvoyGrpc {
                cluster_name,
                authority,
                retry_policy,
                max_receive_message_length,
                // Only changes which x-envoy-* headers are sent.
                skip_envoy_headers: _,
            } = e;
            reject_set(retry_policy, "envoy_grpc.retry_policy")?;
            if cluster_name.is_empty() {
                return Err(ConfigError::invalid("envoy_grpc.cluster_name", "cluster_name must not be empty"));
            }
            Ok(model::GrpcService::EnvoyGrpc {
                cluster_name: cluster_name.clone(),
                authority: authority.clone(),
                max_receive_message_length: max_receive_message_length.as_ref().map(|v| v.value),
            })
        }
        Some(T::GoogleGrpc(gg)) => {
            let core::grpc_service::GoogleGrpc {
                target_uri,
                channel_credentials,
                channel_credentials_plugin,
                call_credentials,
                call_credentials_plugin,
                stat_prefix,
                credentials_factory_name,
                config,
                per_stream_buffer_limit_bytes,
                channel_args,
            } = gg;
            reject_set(channel_credentials, "google_grpc.channel_credentials")?;
            reject_set(channel_credentials_plugin, "google_grpc.channel_credentials_plugin")?;
            reject_set(call_credentials, "google_grpc.call_credentials")?;
            reject_set(call_credentials_plugin, "google_grpc.call_credentials_plugin")?;
            reject_set(credentials_factory_name, "google_grpc.credentials_factory_name")?;
            reject_set(config, "google_grpc.config")?;
            reject_set(per_stream_buffer_limit_bytes, "google_grpc.per_stream_buffer_limit_bytes")?;
            reject_set(channel_args, "google_grpc.channel_args")?;
            if target_uri.is_empty() {
                return Err(ConfigError::invalid("google_grpc.target_uri", "target_uri must not be empty"));
            }
            Ok(model::GrpcService::GoogleGrpc { target_uri: target_uri.clone(), stat_prefix: stat_prefix.clone() })
        }
    }
}

/// `AUTO` (which means V3 today) and `V3` are fine; `V2` is gone.
fn api_version(v: i32, field: &str) -> ConfigResult<()> {
    match enum_value::<core::ApiVersion>(v, field)? {
        core::ApiVersion::Auto | core::ApiVersion::V3 => Ok(()),
        core::ApiVersion::V2 => Err(ConfigError::invalid(field, "the v2 xDS API is no longer supported (use V3)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{message_from_str, DecodeOptions, Format};

    fn dynamic(yaml: &str) -> ConfigResult<model::DynamicResources> {
        let d: b::bootstrap::DynamicResources =
            message_from_str(yaml, Format::Yaml, &DecodeOptions::default()).expect("decodes");
        dynamic_resources(&d)
    }

    #[test]
    fn ads_grpc_and_delta() {
        let d = dynamic(concat!(
            "ads_config: {api_type: DELTA_GRPC, transport_api_version: V3, set_node_on_first_message_only: true, ",
            "grpc_services: [{envoy_grpc: {cluster_name: xds}}]}\n",
            "lds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s}\n",
            "cds_config: {ads: {}, initial_fetch_timeout: 2s}\n",
        ))
        .unwrap();
        let ads = d.ads.unwrap();
        assert_eq!(ads.api_type, model::ApiType::DeltaGrpc);
        assert!(ads.set_node_on_first_message_only);
        assert!(
            matches!(ads.grpc_service, model::GrpcService::EnvoyGrpc { ref cluster_name, .. } if cluster_name == "xds")
        );
        assert_eq!(d.lds.unwrap().initial_fetch_timeout, None);
        assert_eq!(d.cds.unwrap().initial_fetch_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn per_type_sources() {
        let d = dynamic(
            "lds_config: {api_config_source: {api_type: GRPC, grpc_services: [{google_grpc: {target_uri: '127.0.0.1:18000', stat_prefix: x}}]}}",
        )
        .unwrap();
        assert!(d.ads.is_none());
        let lds = d.lds.unwrap();
        assert_eq!(lds.initial_fetch_timeout, Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
        let model::ConfigSourceKind::Api(a) = lds.kind else { panic!("api") };
        assert_eq!(
            a.grpc_service,
            model::GrpcService::GoogleGrpc { target_uri: "127.0.0.1:18000".into(), stat_prefix: "x".into() }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = dynamic("lds_config: {ads: {}}").unwrap_err().to_string();
        assert_eq!(e, "lds_config.ads: ads is used but ads_config is not set");
        let e = dynamic("ads_config: {api_type: REST, cluster_names: [x]}").unwrap_err().to_string();
        assert!(e.starts_with("ads_config.api_type: unsupported: "), "{e}");
        let e = dynamic("ads_config: {api_type: GRPC}").unwrap_err().to_string();
        assert!(e.starts_with("ads_config.grpc_services: "), "{e}");
        let e = dynamic("cds_config: {path_config_source: {path: /x}}").unwrap_err().to_string();
        assert_eq!(e, "cds_config.path_config_source: unsupported: path_config_source is not supported by pinion");
        let e = dynamic("ads_config: {api_type: AGGREGATED_GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("AGGREGATED_GRPC"), "{e}");
    }
}
