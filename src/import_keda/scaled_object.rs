//! KEDA's ScaledObject to spillway's.
//!
//! | KEDA field | spillway |
//! |---|---|
//! | scaleTargetRef {apiVersion, kind, name}, pollingInterval (30), cooldownPeriod (300), minReplicaCount (0), maxReplicaCount (100), idleReplicaCount, fallback {failureThreshold, replicas}, fallback.behavior currentReplicas, currentReplicasIfHigher, currentReplicasIfLower, advanced.horizontalPodAutoscalerConfig {name, behavior}, advanced.restoreToOriginalReplicaCount true, triggers[].authenticationRef | same, written out |
//! | annotations `autoscaling.keda.sh/paused`, `paused-replicas` | `spec.paused`, `spec.pausedReplicas` |
//! | initialCooldownPeriod (0), triggers[].name, triggers[].metricType Value, metadata.labels (copied to the HPA) | same, written out (AverageValue left out: the default) |
//! | annotations `paused-scale-in`, `paused-scale-out`, `scaledobject.keda.sh/hpa-excluded-labels` | `spec.pausedScaleIn`, `spec.pausedScaleOut`, `spillway.dev/hpa-excluded-labels` |
//! | fallback.behavior static (the default), restoreToOriginalReplicaCount false (the default), useCachedMetrics, envSourceContainerName, `transfer-hpa-ownership` (the HPA is annotated instead) | left out with a note: spillway behaves so |
//! | cpu and memory triggers {metricType Utilization or AverageValue (or the deprecated metadata.type), value, containerName} | `cpu`/`memory` {`utilization` or `averageValue`, `containerName`}: a Resource (or ContainerResource) metric on the HPA, as in KEDA |
//! | advanced.scalingModifiers {formula, target, activationTarget, metricType}, fallback.behavior scalingModifiers | same; `target` and `activationTarget` as numbers; the formula runs in spillway's expr-lang subset and must compile over the trigger names |
//! | fallback with a Value trigger (unless scalingModifiers), `force-activation`, other trigger types | refused |
//!
//! The result must pass the controller's checks (`spillway plan`'s), and a trigger's
//! `authenticationRef` is checked against the imported TriggerAuthentication it names: its
//! parameters must be credentials of that trigger.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::params::{Metadata, kind_of};
use super::{
    Completeness, KedaKind, KedaObject, Manifest, ObjectName, Outcome, credentials_of, cron, kafka,
    metadata_of, nats, prometheus, rabbitmq, resource,
};
use crate::config::TriggerConfig;
use crate::controller::crd::{MAX_NAME_LENGTH, ScaledObject};
use crate::controller::hpa::EXCLUDED_LABELS_ANNOTATION;
use crate::controller::trigger_auth::{Credentials, describe, fill_credentials};
use crate::plan::PlanSource;
use crate::scalers::{ScalerError, TriggerParams};
use crate::secret::{AuthenticationKind, AuthenticationRef};

/// What became of each authentication in the input, for the ScaledObjects naming them.
pub(super) struct Authentications {
    by_name: HashMap<(AuthenticationKind, Option<String>, String), Option<Credentials>>,
    completeness: Completeness,
}

impl Authentications {
    pub(super) fn new(completeness: Completeness) -> Self {
        Self {
            by_name: HashMap::new(),
            completeness,
        }
    }

    /// Records an authentication's outcome: its credentials, or none when refused.
    pub(super) fn add(&mut self, outcome: &Outcome) {
        let object = outcome.object();
        let kind = match object.kind {
            KedaKind::ClusterTriggerAuthentication => {
                AuthenticationKind::ClusterTriggerAuthentication
            }
            _ => AuthenticationKind::TriggerAuthentication,
        };
        let credentials = match outcome {
            Outcome::Imported { manifest, .. } => credentials_of(manifest).map(|(_, c)| c),
            Outcome::Refused { .. } => None,
        };
        self.by_name
            .entry((kind, object.namespace.clone(), object.name.clone()))
            .or_insert(credentials);
    }

    /// `Ok(Some)` with the credentials `reference` (named from `namespace`) maps, `Ok(None)`
    /// when it was not in the input, `Err` when it cannot supply them.
    fn lookup(
        &self,
        reference: &AuthenticationRef,
        namespace: Option<&str>,
    ) -> Result<Option<&Credentials>, String> {
        let scope = match reference.kind {
            AuthenticationKind::TriggerAuthentication => {
                Some(namespace.unwrap_or("default").to_owned())
            }
            AuthenticationKind::ClusterTriggerAuthentication => None,
        };
        let object = describe(reference, namespace.unwrap_or("default"));
        let found = self
            .by_name
            .get(&(reference.kind, scope.clone(), reference.name.clone()))
            // A TriggerAuthentication written without a namespace lands in the same place.
            .or_else(|| {
                scope.as_ref().filter(|s| *s == "default").and_then(|_| {
                    self.by_name
                        .get(&(reference.kind, None, reference.name.clone()))
                })
            });
        match (found, self.completeness) {
            (Some(Some(credentials)), _) => Ok(Some(credentials)),
            (Some(None), _) => Err(format!("{object} is refused (see its reasons)")),
            (None, Completeness::Complete) => Err(format!("{object} does not exist")),
            (None, Completeness::Partial) => Ok(None),
        }
    }
}

/// What the mapping found wrong and what it changed.
#[derive(Default)]
struct Findings {
    reasons: Vec<String>,
    differences: Vec<String>,
}

/// The spillway ScaledObject for `object`, or why it cannot be one.
pub(super) fn map(object: &KedaObject, authentications: &Authentications) -> Outcome {
    let mut found = Findings {
        reasons: object.problems.clone(),
        differences: Vec::new(),
    };
    let (name, mut metadata) = metadata_of(object, &mut found.reasons, &mut found.differences);
    let namespace = object.namespace();
    let id = ObjectName {
        kind: KedaKind::ScaledObject,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    if name.len() as u64 > MAX_NAME_LENGTH {
        found.reasons.push(format!(
            "metadata.name: longer than {MAX_NAME_LENGTH} characters: spillway uses it as a label value"
        ));
    }
    let mut spec = Map::new();
    annotations(&mut metadata, &mut spec, &mut found);
    let empty = Map::new();
    let given = match object.value.get("spec") {
        Some(Value::Object(spec)) => spec,
        Some(other) => {
            found
                .reasons
                .push(format!("spec: is {}, not a map", kind_of(other)));
            &empty
        }
        None => {
            found.reasons.push("spec: missing".to_owned());
            &empty
        }
    };
    let mut hpa_name = None;
    let mut triggers = Vec::new();
    for (field, value) in given {
        match field.as_str() {
            "scaleTargetRef" => spec.insert(field.clone(), scale_target_ref(value, &mut found)),
            "pollingInterval"
            | "cooldownPeriod"
            | "minReplicaCount"
            | "maxReplicaCount"
            | "idleReplicaCount"
            | "initialCooldownPeriod" => spec.insert(field.clone(), value.clone()),
            "fallback" => spec.insert(field.clone(), fallback(value, &mut found)),
            "advanced" => advanced(value, &mut found, &mut hpa_name)
                .and_then(|advanced| spec.insert(field.clone(), advanced)),
            "triggers" => {
                match value.as_array() {
                    Some(list) => {
                        for (index, trigger) in list.iter().enumerate() {
                            triggers.push(self::trigger(index, trigger, &mut found));
                        }
                    }
                    None => found
                        .reasons
                        .push(format!("spec.triggers: is {}, not a list", kind_of(value))),
                }
                None
            }
            other => {
                found.reasons.push(format!(
                    "spec.{other}: is not a field spillway knows; refused rather than dropped"
                ));
                None
            }
        };
    }
    // KEDA lets a never-active object go idle right after creation (initialCooldownPeriod
    // 0); spillway's unset field waits cooldownPeriod, so KEDA's default is written out.
    spec.entry("initialCooldownPeriod")
        .or_insert_with(|| 0.into());
    if triggers.is_empty() && !given.is_empty() {
        found.reasons.push("spec.triggers: none given".to_owned());
    }
    // KEDA keeps an object of only cpu and memory triggers active for ever, so its target never
    // goes below one replica whatever minReplicaCount says; spillway asks for that to be written.
    let only_resources = !triggers.is_empty()
        && triggers
            .iter()
            .all(|t| t.get("cpu").is_some() || t.get("memory").is_some());
    let min = spec
        .get("minReplicaCount")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if only_resources && min == 0 {
        spec.insert("minReplicaCount".into(), 1.into());
        found.differences.push(
            "spec.minReplicaCount: 1 written for 0: with only cpu and memory triggers KEDA never scales to zero (the object is always active), and spillway refuses 0 for such an object".to_owned(),
        );
    }
    match &hpa_name {
        Some(hpa) => found.differences.push(format!(
            "spec.advanced.horizontalPodAutoscalerConfig.name: spillway will not take over KEDA's HPA {hpa} until KEDA's ScaledObject is deleted (or the HPA is annotated spillway.dev/transfer-to: {name})"
        )),
        None => found.differences.push(format!(
            "HPA: spillway owns spillway-{name}; KEDA's keda-hpa-{name} stays until KEDA's ScaledObject is deleted"
        )),
    }
    spec.insert("triggers".into(), Value::Array(triggers));
    if !found.reasons.is_empty() {
        return Outcome::Refused {
            object: id,
            reasons: found.reasons,
        };
    }
    let manifest = json!({
        "apiVersion": "spillway.dev/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": spec,
    });
    let so: ScaledObject = match serde_json::from_value(manifest) {
        Ok(so) => so,
        Err(err) => {
            return Outcome::Refused {
                object: id,
                reasons: vec![format!("spillway refuses the result: {err}")],
            };
        }
    };
    check_authentication(&so, namespace.as_deref(), authentications, &mut found);
    check_referencing_triggers(&so, &mut found);
    if let Err(err) = PlanSource::from_scaled_object(&so) {
        found
            .reasons
            .push(format!("spillway's checks refuse the result: {err}"));
    }
    if !found.reasons.is_empty() {
        return Outcome::Refused {
            object: id,
            reasons: found.reasons,
        };
    }
    Outcome::Imported {
        object: id,
        manifest: Manifest::ScaledObject(Box::new(so)),
        differences: found.differences,
    }
}

/// KEDA's annotations: the pause ones become spec fields, those spillway lacks refuse the
/// object, the rest stay.
fn annotations(
    metadata: &mut Map<String, Value>,
    spec: &mut Map<String, Value>,
    found: &mut Findings,
) {
    let Some(Value::Object(annotations)) = metadata.get_mut("annotations") else {
        return;
    };
    let keda: Vec<String> = annotations
        .keys()
        .filter(|k| k.contains("keda.sh/"))
        .cloned()
        .collect();
    for key in keda {
        let value = annotations.remove(&key).unwrap_or_default();
        let text = value.as_str().unwrap_or_default().trim().to_owned();
        let at = format!("metadata.annotations[{key}]");
        match key.as_str() {
            "autoscaling.keda.sh/paused" => {
                // KEDA pauses on any value but "false".
                let paused = !text.eq_ignore_ascii_case("false");
                spec.insert("paused".into(), paused.into());
                found.differences.push(format!("{at}: written as spec.paused: {paused}"));
            }
            "autoscaling.keda.sh/paused-replicas" => match text.parse::<i32>() {
                Ok(n) if n >= 0 => {
                    spec.insert("pausedReplicas".into(), n.into());
                    found.differences.push(format!("{at}: written as spec.pausedReplicas: {n}"));
                }
                _ => found.reasons.push(format!("{at}: {text:?} is not a replica count")),
            },
            "autoscaling.keda.sh/paused-scale-in" | "autoscaling.keda.sh/paused-scale-out" => {
                let field = if key.ends_with("-in") { "pausedScaleIn" } else { "pausedScaleOut" };
                let paused = !text.eq_ignore_ascii_case("false");
                spec.insert(field.into(), paused.into());
                found.differences.push(format!("{at}: written as spec.{field}: {paused}"));
            }
            "autoscaling.keda.sh/force-activation" => {
                found.reasons.push(format!("{at}: spillway has no forced activation"))
            }
            "scaledobject.keda.sh/transfer-hpa-ownership" => found.differences.push(format!(
                "{at}: left out: spillway takes an existing HPA over only when the HPA itself is annotated spillway.dev/transfer-to: <ScaledObject name> and no other object controls it (see Coming from KEDA: cutover)"
            )),
            "scaledobject.keda.sh/hpa-excluded-labels" => {
                annotations.insert(EXCLUDED_LABELS_ANNOTATION.into(), value.clone());
                found.differences.push(format!(
                    "{at}: written as {EXCLUDED_LABELS_ANNOTATION}"
                ));
            }
            "validations.keda.sh/hpa-ownership" => found.differences.push(format!(
                "{at}: left out: spillway never overwrites an HPA it does not own"
            )),
            _ => found.reasons.push(format!("{at}: a KEDA annotation spillway does not know")),
        }
    }
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
}

fn scale_target_ref(value: &Value, found: &mut Findings) -> Value {
    let mut out = Map::new();
    for (key, field) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "apiVersion" | "kind" | "name" => {
                out.insert(key.clone(), field.clone());
            }
            "envSourceContainerName" => found.differences.push(
                "spec.scaleTargetRef.envSourceContainerName: left out: it names the container *FromEnv parameters read, which spillway refuses".to_owned(),
            ),
            other => found.reasons.push(format!("spec.scaleTargetRef.{other}: is not a field spillway knows")),
        }
    }
    Value::Object(out)
}

fn fallback(value: &Value, found: &mut Findings) -> Value {
    let mut out = Map::new();
    for (key, field) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "failureThreshold" | "replicas" => {
                out.insert(key.clone(), field.clone());
            }
            "behavior" => match field.as_str() {
                Some("static") => found.differences.push(
                    "spec.fallback.behavior: static left out (spillway's default)".to_owned(),
                ),
                Some(
                    "currentReplicas" | "currentReplicasIfHigher" | "currentReplicasIfLower"
                    | "scalingModifiers",
                ) => {
                    out.insert(key.clone(), field.clone());
                }
                _ => found.reasons.push(format!(
                    "spec.fallback.behavior: {field} is not one of static, currentReplicas, currentReplicasIfHigher, currentReplicasIfLower, scalingModifiers"
                )),
            },
            other => found.reasons.push(format!("spec.fallback.{other}: is not a field spillway knows")),
        }
    }
    Value::Object(out)
}

/// `spec.advanced` without what spillway lacks; `None` when nothing is left.
fn advanced(value: &Value, found: &mut Findings, hpa_name: &mut Option<String>) -> Option<Value> {
    let mut out = Map::new();
    for (key, field) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "horizontalPodAutoscalerConfig" => {
                let mut config = Map::new();
                for (key, field) in field.as_object().into_iter().flatten() {
                    match key.as_str() {
                        "name" => {
                            *hpa_name = field.as_str().map(str::to_owned);
                            config.insert(key.clone(), field.clone());
                        }
                        "behavior" => {
                            config.insert(key.clone(), field.clone());
                        }
                        other => found.reasons.push(format!(
                            "spec.advanced.horizontalPodAutoscalerConfig.{other}: is not a field spillway knows"
                        )),
                    }
                }
                if !config.is_empty() {
                    out.insert(key.clone(), Value::Object(config));
                }
            }
            "restoreToOriginalReplicaCount" if field.as_bool() == Some(false) => found.differences.push(
                "spec.advanced.restoreToOriginalReplicaCount: false left out: spillway leaves the target as it is when the ScaledObject is deleted".to_owned(),
            ),
            "restoreToOriginalReplicaCount" if field.as_bool() == Some(true) => {
                out.insert(key.clone(), field.clone());
            }
            "restoreToOriginalReplicaCount" => found.reasons.push(format!(
                "spec.advanced.restoreToOriginalReplicaCount: {field} is not a boolean"
            )),
            "scalingModifiers" => {
                if let Some(modifiers) = scaling_modifiers(field, found) {
                    out.insert(key.clone(), modifiers);
                }
            }
            other => found.reasons.push(format!("spec.advanced.{other}: is not a field spillway knows")),
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// `spec.advanced.scalingModifiers`: KEDA's strings `target` and `activationTarget` as
/// numbers; the formula as written (the controller's check compiles it over the trigger names).
fn scaling_modifiers(value: &Value, found: &mut Findings) -> Option<Value> {
    let at = "spec.advanced.scalingModifiers";
    let mut out = Map::new();
    for (key, field) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "formula" => {
                out.insert(key.clone(), field.clone());
            }
            "target" | "activationTarget" => {
                let number = match field {
                    Value::String(text) => text.trim().parse::<f64>().ok(),
                    other => other.as_f64(),
                };
                match number {
                    Some(n) if n.is_finite() => {
                        out.insert(key.clone(), json!(n));
                    }
                    _ => found
                        .reasons
                        .push(format!("{at}.{key}: {field} is not a number")),
                }
            }
            "metricType" => match field.as_str() {
                Some("AverageValue") => {}
                Some("Value") => {
                    out.insert(key.clone(), field.clone());
                }
                _ => found.reasons.push(format!(
                    "{at}.metricType: {field} is not AverageValue or Value"
                )),
            },
            other => found
                .reasons
                .push(format!("{at}.{other}: is not a field spillway knows")),
        }
    }
    if !out.contains_key("formula") {
        // KEDA ignores scalingModifiers without a formula; so does the import, saying so.
        found.differences.push(format!(
            "{at}: without a formula KEDA composes nothing; left out"
        ));
        return None;
    }
    found.differences.push(format!(
        "{at}: spillway runs the formula in the subset of expr-lang that composes numbers (README), and never takes the target to idle while a trigger fails, even where the formula gives a value without it"
    ));
    Some(Value::Object(out))
}

/// One trigger entry: the broker key with its body, and `authenticationRef`.
fn trigger(index: usize, value: &Value, found: &mut Findings) -> Value {
    let at = format!("spec.triggers[{index}]");
    let Some(fields) = value.as_object() else {
        found
            .reasons
            .push(format!("{at}: is {}, not a map", kind_of(value)));
        return Value::Null;
    };
    let mut out = Map::new();
    let mut cached = false;
    let kind = fields
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let resource = resource::TYPES.contains(&kind);
    for (key, field) in fields {
        match key.as_str() {
            "type" | "metadata" => {}
            // A cpu or memory trigger's target kind: read by `resource::map` below.
            "metricType" if resource => {}
            "name" => {
                out.insert(key.clone(), field.clone());
            }
            "metricType" if field.as_str() == Some("AverageValue") => {}
            "metricType" if field.as_str() == Some("Value") => {
                out.insert(key.clone(), field.clone());
            }
            "metricType" => found.reasons.push(format!(
                "{at}.metricType: {field} is for cpu and memory triggers only (AverageValue and Value are for the others)"
            )),
            "useCachedMetrics" => cached = field.as_bool() == Some(true) || field.as_str() == Some("true"),
            "authenticationRef" => {
                out.insert(key.clone(), field.clone());
            }
            other => found.reasons.push(format!("{at}.{other}: is not a field spillway knows")),
        }
    }
    if !cached && !resource {
        found.differences.push(format!(
            "{at}: served from the latest poll (every pollingInterval), as KEDA's useCachedMetrics: true; KEDA asked the broker at each HPA request"
        ));
    }
    let mut md = Metadata::new(&at, fields.get("metadata"));
    let (key, body) = match kind {
        kafka::TYPE => ("kafka", kafka::map(&mut md)),
        rabbitmq::TYPE => ("rabbitmq", rabbitmq::map(&mut md)),
        nats::TYPE => ("natsJetStream", nats::map(&mut md)),
        prometheus::TYPE => ("prometheus", prometheus::map(&mut md)),
        cron::TYPE => ("cron", cron::map(&mut md)),
        "cpu" | "memory" => (
            kind,
            resource::map(&mut md, fields.get("metricType").and_then(Value::as_str)),
        ),
        "" => {
            found.reasons.push(format!("{at}.type: missing"));
            return Value::Null;
        }
        other => {
            found.reasons.push(format!(
                "{at}.type: {other} is not supported by spillway (it takes kafka, rabbitmq, nats-jetstream, prometheus, cron)"
            ));
            return Value::Null;
        }
    };
    found.reasons.append(&mut md.reasons);
    found.differences.append(&mut md.differences);
    out.insert(key.into(), Value::Object(body));
    Value::Object(out)
}

/// The checks of each trigger with an `authenticationRef`, which spillway's own checks put off
/// until the authentication is read: any failure but a missing credential (one the
/// authentication may supply) refuses the object now.
fn check_referencing_triggers(so: &ScaledObject, found: &mut Findings) {
    for (index, entry) in so.spec.triggers.iter().enumerate() {
        if entry.authentication_ref.is_none() {
            continue;
        }
        let Ok(trigger) = entry.trigger() else {
            continue;
        };
        let Err(ScalerError::InvalidTrigger { field, message, .. }) = trigger.validate() else {
            continue;
        };
        let mut probe = entry.clone();
        let credential = probe.triggers_mut().into_iter().any(|(_, params)| {
            params.credential_slots().iter().any(|slot| {
                field == slot.parameter
                    || slot.keda_parameter == Some(field.as_str())
                    || field.starts_with(&format!("{}.", slot.parameter))
            })
        });
        if !credential {
            found.reasons.push(format!(
                "spillway's checks refuse the result: spec.triggers[{index}].{}.{field}: {message}",
                trigger.config_key()
            ));
        }
    }
}

/// Each trigger's `authenticationRef` against the authentication it names, when that was in
/// the input: spillway's own fill (the controller's) must accept its parameters for the
/// trigger.
fn check_authentication(
    so: &ScaledObject,
    namespace: Option<&str>,
    authentications: &Authentications,
    found: &mut Findings,
) {
    for (index, entry) in so.spec.triggers.iter().enumerate() {
        let Some(reference) = &entry.authentication_ref else {
            continue;
        };
        let at = format!("spec.triggers[{index}].authenticationRef");
        match authentications.lookup(reference, namespace) {
            Err(reason) => found.reasons.push(format!("{at}: {reason}")),
            Ok(None) => found.differences.push(format!(
                "{at}: {} was not among the inputs: import it too; its parameters are not checked against this trigger",
                describe(reference, namespace.unwrap_or("default"))
            )),
            Ok(Some(credentials)) => {
                let mut filled: TriggerConfig = entry.clone();
                let object = describe(reference, namespace.unwrap_or("default"));
                let secret_namespace = match reference.kind {
                    AuthenticationKind::ClusterTriggerAuthentication => Some("spillway-system"),
                    AuthenticationKind::TriggerAuthentication => None,
                };
                if let Err(err) = fill_credentials(&mut filled, credentials, &object, secret_namespace) {
                    found.reasons.push(format!("{at}: {err}"));
                }
            }
        }
    }
}
