//! KEDA's `prometheus` trigger to spillway's `prometheus` (query mode).
//!
//! | KEDA parameter | spillway |
//! |---|---|
//! | serverAddress, query, threshold, activationThreshold, namespace, customHeaders, queryParameters, unsafeSsl, timeout (ms) | same |
//! | ignoreNullValues unset | `ignoreNullValues: true` written out: KEDA's default (spillway's is false, so an empty answer is an error) |
//! | authModes bearer, basic | left out: spillway uses `bearerToken`, or `username` and `password`, when they are given (through a TriggerAuthentication) |
//! | authModes tls, custom, apiKey, oauth; awsRegion, identityOwner; `*FromEnv` | refused |

use serde_json::{Map, Value};

use super::params::Metadata;

/// KEDA's trigger type.
pub(super) const TYPE: &str = "prometheus";

/// The `prometheus` trigger's body.
pub(super) fn map(md: &mut Metadata) -> Map<String, Value> {
    let mut out = Map::new();
    md.required(&mut out, "serverAddress");
    md.required(&mut out, "query");
    md.required_number(&mut out, "threshold");
    md.number(&mut out, "activationThreshold", None);
    md.string(&mut out, "namespace");
    md.string(&mut out, "customHeaders");
    md.string(&mut out, "queryParameters");
    if md.has("ignoreNullValues") {
        md.boolean(&mut out, "ignoreNullValues");
    } else {
        out.insert("ignoreNullValues".into(), Value::Bool(true));
        md.differs(
            "ignoreNullValues",
            "true written out: KEDA's default (spillway's is false: an empty answer would be an error)",
        );
    }
    md.boolean(&mut out, "unsafeSsl");
    md.integer(&mut out, "timeout", None);
    if let Some(modes) = md.take("authModes") {
        let unsupported: Vec<&str> = modes
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && !matches!(*m, "bearer" | "basic"))
            .collect();
        if unsupported.is_empty() {
            md.differs(
                "authModes",
                format!("{modes:?} left out: spillway sends bearerToken, or username and password, when they are given"),
            );
        } else {
            md.refuse(
                "authModes",
                format!(
                    "{} not supported by spillway (it takes bearer and basic)",
                    unsupported.join(", ")
                ),
            );
        }
    }
    md.finish(TYPE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapped(metadata: Value) -> (Value, Vec<String>, Vec<String>) {
        super::super::params::map_trigger(map, metadata)
    }

    #[test]
    fn keda_s_ignore_null_values_default_is_written_out() {
        let (out, reasons, differences) = mapped(json!({
            "serverAddress": "http://prometheus:9090", "threshold": "100", "query": "sum(up)"
        }));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(
            out,
            json!({"serverAddress": "http://prometheus:9090", "query": "sum(up)", "threshold": 100, "ignoreNullValues": true})
        );
        assert!(differences[0].contains("KEDA's default"));
        let (out, _, differences) = mapped(json!({
            "serverAddress": "http://p:9090", "threshold": "1", "query": "up", "ignoreNullValues": "false"
        }));
        assert_eq!(out["ignoreNullValues"], false);
        assert!(differences.is_empty());
    }

    #[test]
    fn the_optional_parameters_are_carried_over() {
        let (out, reasons, _) = mapped(json!({
            "serverAddress": "http://p:9090", "query": "up", "threshold": "100.50",
            "activationThreshold": "5.5", "namespace": "example-namespace",
            "customHeaders": "X-Client-Id=cid,X-Tenant-Id=tid", "queryParameters": "key-1=value-1",
            "unsafeSsl": "false", "timeout": "1000", "authModes": "bearer"
        }));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(out["threshold"], 100.5);
        assert_eq!(out["timeout"], 1000);
        assert_eq!(out["customHeaders"], "X-Client-Id=cid,X-Tenant-Id=tid");
    }

    #[test]
    fn auth_modes_and_cloud_identities_spillway_lacks_are_refused() {
        let (_, reasons, _) = mapped(json!({
            "serverAddress": "http://p:9090", "query": "up", "threshold": "1",
            "authModes": "tls,basic", "awsRegion": "eu-west-1"
        }));
        let text = reasons.join("\n");
        assert!(text.contains("authModes: tls not supported"), "{text}");
        assert!(text.contains("awsRegion: is not a parameter"), "{text}");
        let (_, reasons, _) = mapped(json!({"serverAddress": "http://p:9090", "query": "up"}));
        assert_eq!(
            reasons,
            ["triggers[0].metadata.threshold: is required (by KEDA too)"]
        );
    }
}
