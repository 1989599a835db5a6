//! KEDA's TriggerAuthentication and ClusterTriggerAuthentication to spillway's kinds of the
//! same names: `secretTargetRef` carries over as it is (the same Secrets, the same keys);
//! every other source is refused with the reason the spillway CRD gives.
//!
//! A `parameter` must be a credential some spillway trigger takes from a Secret (kafka
//! `password`, `ca`, `cert`, `key`, `keyPassword`; rabbitmq `host`; prometheus `bearerToken`,
//! `password`, ...). KEDA also lets settings come from Secrets (`sasl`, `tls`, `username`,
//! `vhostName`): spillway reads those from the trigger, so they are refused, never dropped.
//! A ClusterTriggerAuthentication's Secrets are read from spillway's namespace, not KEDA's.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::params::kind_of;
use super::{KedaKind, KedaObject, Manifest, ObjectName, Outcome, metadata_of};
use crate::controller::trigger_auth::{
    ClusterTriggerAuthentication, TriggerAuthentication, UNSUPPORTED_SOURCES,
};

/// The spillway object for `object` (a KEDA TriggerAuthentication or
/// ClusterTriggerAuthentication), or why it cannot be one. `credentials` is every parameter a
/// spillway trigger takes from a Secret.
pub(super) fn map(object: &KedaObject, credentials: &BTreeSet<&'static str>) -> Outcome {
    let mut reasons = object.problems.clone();
    let mut differences = Vec::new();
    let (name, metadata) = metadata_of(object, &mut reasons, &mut differences);
    let id = ObjectName {
        kind: object.kind,
        namespace: object.namespace(),
        name,
    };
    let empty = Map::new();
    let spec = match object.value.get("spec") {
        Some(Value::Object(spec)) => spec,
        None | Some(Value::Null) => &empty,
        Some(other) => {
            reasons.push(format!("spec: is {}, not a map", kind_of(other)));
            &empty
        }
    };
    let mut targets = Vec::new();
    let mut secrets = BTreeSet::new();
    for (field, value) in spec {
        match field.as_str() {
            "secretTargetRef" => {
                let Some(list) = value.as_array() else {
                    reasons.push(format!("spec.secretTargetRef: is {}, not a list", kind_of(value)));
                    continue;
                };
                for (i, target) in list.iter().enumerate() {
                    let at = format!("spec.secretTargetRef[{i}]");
                    let text = |key: &str| target.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
                    let (Some(parameter), Some(secret), Some(key)) = (text("parameter"), text("name"), text("key")) else {
                        reasons.push(format!("{at}: needs parameter, name and key, each a string"));
                        continue;
                    };
                    if let Some(extra) = target.as_object().and_then(|t| {
                        t.keys().find(|k| !matches!(k.as_str(), "parameter" | "name" | "key"))
                    }) {
                        reasons.push(format!("{at}.{extra}: is not a field of a secretTargetRef"));
                    }
                    if !credentials.contains(parameter) {
                        reasons.push(format!(
                            "{at}: parameter {parameter} is not a credential any spillway trigger reads from a Secret (those are {}); settings such as sasl, tls, username and vhostName are written in the trigger instead",
                            credentials.iter().copied().collect::<Vec<_>>().join(", ")
                        ));
                        continue;
                    }
                    secrets.insert(secret.to_owned());
                    targets.push(json!({"parameter": parameter, "name": secret, "key": key}));
                }
            }
            "podIdentity"
                if value
                    .get("provider")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p == "none")
                    && value.as_object().is_none_or(|m| m.len() <= 1) =>
            {
                differences.push("spec.podIdentity: provider none left out (no identity, as spillway)".to_owned());
            }
            "filePath" => reasons.push(
                "spec.filePath: reads files of KEDA's operator pod, which spillway does not have: use secretTargetRef".to_owned(),
            ),
            other => match UNSUPPORTED_SOURCES.iter().find(|(source, _)| *source == other) {
                Some((source, why)) => reasons.push(format!(
                    "spec.{source}: not supported by spillway ({why}); only secretTargetRef is read"
                )),
                None => reasons.push(format!("spec.{other}: is not a field spillway knows; refused rather than dropped")),
            },
        }
    }
    if targets.is_empty() && reasons.is_empty() {
        reasons.push("spec.secretTargetRef: empty: nothing to carry over".to_owned());
    }
    if !reasons.is_empty() {
        return Outcome::Refused {
            object: id,
            reasons,
        };
    }
    if object.kind == KedaKind::ClusterTriggerAuthentication {
        differences.push(format!(
            "Secrets {} are read from spillway's namespace (spillway-system unless --cluster-trigger-auth-namespace says otherwise), not KEDA's: copy them there",
            secrets.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let manifest = json!({
        "apiVersion": "spillway.dev/v1alpha1",
        "kind": object.kind.as_str(),
        "metadata": metadata,
        "spec": {"secretTargetRef": targets},
    });
    let typed = match object.kind {
        KedaKind::ClusterTriggerAuthentication => {
            serde_json::from_value::<ClusterTriggerAuthentication>(manifest)
                .map(|cta| Manifest::ClusterTriggerAuthentication(Box::new(cta)))
        }
        _ => serde_json::from_value::<TriggerAuthentication>(manifest)
            .map(|ta| Manifest::TriggerAuthentication(Box::new(ta))),
    };
    match typed {
        Ok(manifest) => Outcome::Imported {
            object: id,
            manifest,
            differences,
        },
        Err(err) => Outcome::Refused {
            object: id,
            reasons: vec![format!("spillway refuses the result: {err}")],
        },
    }
}
