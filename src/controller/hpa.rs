//! The autoscaling/v2 HorizontalPodAutoscaler a ScaledObject owns: built from the spec alone
//! ([`desired_hpa`]), and compared with what is in the cluster in the fields spillway owns
//! ([`hpa_drift`]), so a hand edit is repaired and an unchanged HPA is left alone.
//!
//! An HPA of the chosen name that exists already is taken over only when this ScaledObject owns
//! it, or when someone who may edit the HPA handed it over with the [`TRANSFER_ANNOTATION`]
//! ([`hpa_ownership`]): otherwise a ScaledObject could rewrite any HPA of its namespace.
//!
//! The HPA scales between `max(1, minReplicaCount)` and `maxReplicaCount` on one External metric
//! per trigger (or, with `advanced.scalingModifiers`, one `composite-metric` for all of them),
//! and a Resource metric per cpu or memory trigger; scaling to and from zero is the
//! controller's job, because an HPA stops at one.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricSource, CrossVersionObjectReference, ExternalMetricSource,
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;

use super::crd::ScaledObject;
use super::triggers::SpecError;
use crate::composite::COMPOSITE_METRIC;
use crate::config::{MetricType, ResourceName, ResourceTrigger, TriggerConfig};
use crate::quantity::format_quantity;
use crate::registry::SCALED_OBJECT_LABEL;
use crate::scalers::{TriggerParams, served_metric_name};

/// The label every object spillway creates carries, with [`MANAGED_BY`] as its value.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "spillway";

/// The annotation on an existing HPA that hands it over to the ScaledObject it names (in the
/// same namespace): whoever may write the HPA may give it away.
pub const TRANSFER_ANNOTATION: &str = "spillway.dev/transfer-to";

/// The ScaledObject annotation listing, comma-separated, labels not to copy to its HPA (KEDA's
/// `scaledobject.keda.sh/hpa-excluded-labels`).
pub const EXCLUDED_LABELS_ANNOTATION: &str = "spillway.dev/hpa-excluded-labels";

/// Whose an existing HPA of the chosen name is, seen from one ScaledObject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HpaOwnership {
    /// Its owner references name this ScaledObject (by uid).
    Owned,
    /// Not owned, but annotated [`TRANSFER_ANNOTATION`]`: <this ScaledObject's name>`.
    Transferred,
    /// Someone else's: left alone, with why.
    Foreign(String),
}

/// Whether `so` may manage `existing`, the HPA of its chosen name.
pub fn hpa_ownership(existing: &HorizontalPodAutoscaler, so: &ScaledObject) -> HpaOwnership {
    let owners = existing.metadata.owner_references.as_deref().unwrap_or(&[]);
    if owners
        .iter()
        .any(|o| Some(&o.uid) == so.metadata.uid.as_ref())
    {
        return HpaOwnership::Owned;
    }
    let name = existing.metadata.name.as_deref().unwrap_or_default();
    let so_name = so.metadata.name.as_deref().unwrap_or_default();
    let transfer_to = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRANSFER_ANNOTATION));
    let controller = owners.iter().find(|o| o.controller == Some(true));
    match (transfer_to, controller) {
        (Some(to), None) if to == so_name => HpaOwnership::Transferred,
        (Some(to), Some(owner)) if to == so_name => HpaOwnership::Foreign(format!(
            "HorizontalPodAutoscaler {name} is handed over by {TRANSFER_ANNOTATION} but still controlled by {} {}; remove that owner reference",
            owner.kind, owner.name
        )),
        _ => {
            let whose = match controller {
                Some(owner) => format!("it is controlled by {} {}", owner.kind, owner.name),
                None => "this ScaledObject does not own it".to_owned(),
            };
            HpaOwnership::Foreign(format!(
                "HorizontalPodAutoscaler {name} exists and {whose}; spillway does not take it over. Delete it, choose another name (advanced.horizontalPodAutoscalerConfig.name), or annotate it {TRANSFER_ANNOTATION}={so_name} to hand it over"
            ))
        }
    }
}

/// Why no HPA can be built for a ScaledObject.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HpaError {
    /// The object lacks what the API server always sets (name, namespace, uid), or its spec
    /// breaks a rule the schema also checks.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The object has no uid, so nothing can name it as owner.
    #[error("metadata.uid is not set: the HPA cannot name its owner")]
    MissingUid,
    /// A trigger's target cannot be written as a quantity.
    #[error("spec.triggers[{index}]: target {value} is not a quantity")]
    Target { index: usize, value: f64 },
}

/// The HPA's name: `advanced.horizontalPodAutoscalerConfig.name`, else `spillway-<name>`.
pub fn hpa_name(so: &ScaledObject) -> Result<String, HpaError> {
    let configured = so
        .spec
        .advanced
        .as_ref()
        .and_then(|a| a.horizontal_pod_autoscaler_config.as_ref())
        .and_then(|c| c.name.clone());
    match configured {
        Some(name) => Ok(name),
        None => Ok(format!("spillway-{}", so.name_and_namespace()?.0)),
    }
}

/// The HPA as spillway wants it for `so`: owned by it, one External metric per trigger named
/// as the metrics API serves it and selected by the ScaledObject's label, each with the
/// trigger's target as an AverageValue (so the HPA asks for `ceil(value / target)` replicas) or,
/// with `metricType: Value`, a Value.
pub fn desired_hpa(so: &ScaledObject) -> Result<HorizontalPodAutoscaler, HpaError> {
    let config = so.to_config()?;
    let name = hpa_name(so)?;
    let mut owner = so.controller_owner_ref(&()).ok_or(HpaError::MissingUid)?;
    // Garbage collection waits for the HPA before it removes a foreground-deleted ScaledObject.
    owner.block_owner_deletion = Some(true);
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            SCALED_OBJECT_LABEL.to_owned(),
            config.name.clone(),
        )])),
        match_expressions: None,
    };
    let composite = so.spec.scaling_modifiers();
    let mut metrics = config
        .triggers
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| match entry.resource() {
            Some((name, resource)) if entry.is_resource_only() => {
                Some(Ok(resource_metric(name, resource)))
            }
            // scalingModifiers: one composite metric stands for every trigger spillway reads.
            _ if composite.is_some() => None,
            _ => Some(external_metric(index, entry, &selector)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(modifiers) = composite {
        let quantity = format_quantity(modifiers.target).map_err(|_| HpaError::Target {
            index: 0,
            value: modifiers.target,
        })?;
        metrics.insert(
            0,
            external_metric_spec(
                COMPOSITE_METRIC.to_owned(),
                &selector,
                modifiers.metric_type,
                quantity.text,
            ),
        );
    }
    let target = &so.spec.scale_target_ref;
    Ok(HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(config.namespace.clone()),
            labels: Some(hpa_labels(so, &config.name)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(target.api_version.clone()),
                kind: target.kind.clone(),
                name: target.name.clone(),
            },
            min_replicas: Some(so.spec.min_replica_count.max(1)),
            max_replicas: so.spec.max_replica_count,
            behavior: behavior(so),
            metrics: Some(metrics),
        }),
        status: None,
    })
}

/// The labels spillway sets on the HPA of the ScaledObject `name`.
fn owned_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (SCALED_OBJECT_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The HPA's labels: the ScaledObject's own, as KEDA propagates them (so a team's cost or
/// ownership labels reach its HPA), less those [`EXCLUDED_LABELS_ANNOTATION`] lists, and
/// spillway's [`owned_labels`] over them.
fn hpa_labels(so: &ScaledObject, name: &str) -> BTreeMap<String, String> {
    let excluded: Vec<&str> = so
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXCLUDED_LABELS_ANNOTATION))
        .map(|list| list.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut labels: BTreeMap<String, String> = so
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| !excluded.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    labels.extend(owned_labels(name));
    labels
}

/// `advanced.horizontalPodAutoscalerConfig.behavior`, with the direction `pausedScaleIn` or
/// `pausedScaleOut` holds set to `selectPolicy: Disabled` (how KEDA pauses one direction).
fn behavior(so: &ScaledObject) -> Option<HorizontalPodAutoscalerBehavior> {
    let configured = so
        .spec
        .advanced
        .as_ref()
        .and_then(|a| a.horizontal_pod_autoscaler_config.as_ref())
        .and_then(|c| c.behavior.clone());
    if !so.spec.paused_scale_in && !so.spec.paused_scale_out {
        return configured;
    }
    let mut behavior = configured.unwrap_or_default();
    let disable = |rules: &mut Option<HPAScalingRules>| {
        rules
            .get_or_insert_with(HPAScalingRules::default)
            .select_policy = Some("Disabled".to_owned());
    };
    if so.spec.paused_scale_in {
        disable(&mut behavior.scale_down);
    }
    if so.spec.paused_scale_out {
        disable(&mut behavior.scale_up);
    }
    Some(behavior)
}

/// A cpu or memory trigger as the HPA reads it: a Resource metric, or a ContainerResource
/// metric for one container (KEDA does the same).
fn resource_metric(name: ResourceName, resource: &ResourceTrigger) -> MetricSpec {
    let target = MetricTarget {
        type_: if resource.utilization.is_some() {
            "Utilization"
        } else {
            "AverageValue"
        }
        .to_owned(),
        average_utilization: resource.utilization,
        average_value: resource.average_value.clone().map(Quantity),
        value: None,
    };
    match &resource.container_name {
        Some(container) => MetricSpec {
            type_: "ContainerResource".to_owned(),
            container_resource: Some(ContainerResourceMetricSource {
                name: name.as_str().to_owned(),
                container: container.clone(),
                target,
            }),
            ..MetricSpec::default()
        },
        None => MetricSpec {
            type_: "Resource".to_owned(),
            resource: Some(ResourceMetricSource {
                name: name.as_str().to_owned(),
                target,
            }),
            ..MetricSpec::default()
        },
    }
}

fn external_metric(
    index: usize,
    entry: &TriggerConfig,
    selector: &LabelSelector,
) -> Result<MetricSpec, HpaError> {
    let trigger = entry
        .trigger()
        .expect("to_config checked that each trigger names one broker");
    let value = trigger.target_value();
    let quantity = format_quantity(value).map_err(|_| HpaError::Target { index, value })?;
    Ok(external_metric_spec(
        served_metric_name(index, &trigger),
        selector,
        entry.metric_type,
        quantity.text,
    ))
}

/// An External metric `name` of the ScaledObject `selector` picks, with `target` as an
/// AverageValue (the HPA asks for `ceil(value / target)` replicas) or a Value.
fn external_metric_spec(
    name: String,
    selector: &LabelSelector,
    metric_type: MetricType,
    target: String,
) -> MetricSpec {
    MetricSpec {
        type_: "External".to_owned(),
        external: Some(ExternalMetricSource {
            metric: MetricIdentifier {
                name,
                selector: Some(selector.clone()),
            },
            target: match metric_type {
                MetricType::AverageValue => MetricTarget {
                    type_: "AverageValue".to_owned(),
                    average_value: Some(Quantity(target)),
                    average_utilization: None,
                    value: None,
                },
                MetricType::Value => MetricTarget {
                    type_: "Value".to_owned(),
                    value: Some(Quantity(target)),
                    average_utilization: None,
                    average_value: None,
                },
            },
        }),
        ..MetricSpec::default()
    }
}

/// `metrics` with every target quantity as its value: the API server stores a quantity in
/// canonical form (`0.5` as `500m`, `1024Mi` as `1Gi`), which must not read as a hand edit.
fn comparable(metrics: &Option<Vec<MetricSpec>>) -> Option<Vec<MetricSpec>> {
    let canonical = |q: &mut Option<Quantity>| {
        if let Some(quantity) = q
            && let Ok(value) = crate::quantity::parse_quantity(&quantity.0)
        {
            quantity.0 = value.to_string();
        }
    };
    let mut metrics = metrics.clone()?;
    for metric in &mut metrics {
        let targets = [
            metric.external.as_mut().map(|m| &mut m.target),
            metric.resource.as_mut().map(|m| &mut m.target),
            metric.container_resource.as_mut().map(|m| &mut m.target),
        ];
        for target in targets.into_iter().flatten() {
            canonical(&mut target.value);
            canonical(&mut target.average_value);
        }
    }
    Some(metrics)
}

/// The fields spillway owns in which `existing` differs from `desired`, as paths (empty when
/// the HPA needs no update). Fields others may own are not compared: extra labels and owner
/// references, annotations, the status. The API server's defaults for `behavior` are applied to
/// the desired side first, so a stored HPA is not mistaken for a hand edit.
pub fn hpa_drift(
    existing: &HorizontalPodAutoscaler,
    desired: &HorizontalPodAutoscaler,
) -> Vec<&'static str> {
    let mut drift = Vec::new();
    let has_all = |have: &Option<BTreeMap<String, String>>,
                   want: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|have| have.get(k)) == Some(v))
    };
    if !has_all(&existing.metadata.labels, &desired.metadata.labels) {
        drift.push("metadata.labels");
    }
    let owners = |meta: &ObjectMeta| -> Vec<OwnerReference> {
        meta.owner_references.clone().unwrap_or_default()
    };
    let existing_owners = owners(&existing.metadata);
    if !owners(&desired.metadata)
        .iter()
        .all(|want| existing_owners.contains(want))
    {
        drift.push("metadata.ownerReferences");
    }
    let empty = HorizontalPodAutoscalerSpec::default();
    let have = existing.spec.as_ref().unwrap_or(&empty);
    let want = desired.spec.as_ref().unwrap_or(&empty);
    if have.scale_target_ref != want.scale_target_ref {
        drift.push("spec.scaleTargetRef");
    }
    // The API server stores an unset minReplicas as 1.
    if have.min_replicas.unwrap_or(1) != want.min_replicas.unwrap_or(1) {
        drift.push("spec.minReplicas");
    }
    if have.max_replicas != want.max_replicas {
        drift.push("spec.maxReplicas");
    }
    if comparable(&have.metrics) != comparable(&want.metrics) {
        drift.push("spec.metrics");
    }
    if have.behavior != stored_behavior(want.behavior.as_ref(), have.behavior.as_ref()) {
        drift.push("spec.behavior");
    }
    drift
}

/// `behavior` as the API server stores it (k8s.io/kubernetes pkg/apis/autoscaling/v2
/// defaults.go): a set behavior gets both rule sets, each unset field filled from the defaults;
/// an unset one stays unset. `stored` is the behavior in the cluster: where it lacks a
/// `tolerance` we asked for, the server dropped it (the feature gate is off), and asking again
/// would never converge.
fn stored_behavior(
    desired: Option<&HorizontalPodAutoscalerBehavior>,
    stored: Option<&HorizontalPodAutoscalerBehavior>,
) -> Option<HorizontalPodAutoscalerBehavior> {
    let desired = desired?;
    let rules = |rules: Option<&HPAScalingRules>,
                 defaults: HPAScalingRules,
                 stored: Option<&HPAScalingRules>| {
        let rules = rules.cloned().unwrap_or_default();
        let tolerance = match stored {
            Some(stored) if stored.tolerance.is_none() => None,
            _ => rules.tolerance,
        };
        HPAScalingRules {
            select_policy: rules.select_policy.or(defaults.select_policy),
            stabilization_window_seconds: rules
                .stabilization_window_seconds
                .or(defaults.stabilization_window_seconds),
            policies: rules.policies.or(defaults.policies),
            tolerance,
        }
    };
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.to_owned(),
        value,
        period_seconds: 15,
    };
    let scale_up = HPAScalingRules {
        select_policy: Some("Max".to_owned()),
        stabilization_window_seconds: Some(0),
        policies: Some(vec![policy("Pods", 4), policy("Percent", 100)]),
        tolerance: None,
    };
    // The scale-down window stays unset: the controller manager's flag supplies it.
    let scale_down = HPAScalingRules {
        select_policy: Some("Max".to_owned()),
        stabilization_window_seconds: None,
        policies: Some(vec![policy("Percent", 100)]),
        tolerance: None,
    };
    Some(HorizontalPodAutoscalerBehavior {
        scale_up: Some(rules(
            desired.scale_up.as_ref(),
            scale_up,
            stored.and_then(|s| s.scale_up.as_ref()),
        )),
        scale_down: Some(rules(
            desired.scale_down.as_ref(),
            scale_down,
            stored.and_then(|s| s.scale_down.as_ref()),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::triggers::triggers;
    use crate::registry::catalog;

    /// A ScaledObject as a user writes it, with the uid the API server adds.
    fn scaled_object(text: &str) -> ScaledObject {
        let mut so: ScaledObject = serde_norway::from_str(text).unwrap();
        so.metadata.uid = Some("7f1d3c2a-0000-4000-8000-000000000001".into());
        so
    }

    #[test]
    fn an_existing_hpa_is_taken_over_only_when_owned_or_handed_over() {
        let so = scaled_object(ORDERS);
        let ours = desired_hpa(&so).unwrap();
        let owner = |kind: &str, uid: &str| OwnerReference {
            api_version: "x/v1".into(),
            kind: kind.into(),
            name: "other".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let hpa = |owners: Vec<OwnerReference>, transfer_to: Option<&str>| {
            let mut hpa = ours.clone();
            hpa.metadata.owner_references = Some(owners);
            hpa.metadata.annotations = transfer_to
                .map(|to| BTreeMap::from([(TRANSFER_ANNOTATION.to_owned(), to.to_owned())]));
            hpa
        };
        let cases = [
            // (owners, annotation, expected: Ok(ownership) or Err(part of the refusal))
            (
                ours.metadata.owner_references.clone().unwrap(),
                None,
                Ok(HpaOwnership::Owned),
            ),
            (
                vec![],
                Some("orders-consumer"),
                Ok(HpaOwnership::Transferred),
            ),
            (vec![], None, Err("this ScaledObject does not own it")),
            (
                vec![],
                Some("someone-else"),
                Err("annotate it spillway.dev/transfer-to=orders-consumer"),
            ),
            (
                vec![owner("ScaledObject", "another-uid")],
                None,
                Err("controlled by ScaledObject other"),
            ),
            (
                vec![owner("Deployment", "d-uid")],
                Some("orders-consumer"),
                Err("still controlled by Deployment other"),
            ),
        ];
        for (owners, transfer_to, expected) in cases {
            let got = hpa_ownership(&hpa(owners, transfer_to), &so);
            match (&got, expected) {
                (got, Ok(want)) => assert_eq!(got, &want, "{transfer_to:?}"),
                (HpaOwnership::Foreign(why), Err(part)) => {
                    assert!(why.contains(part), "{why}")
                }
                (got, Err(part)) => panic!("{got:?}, expected a refusal with {part:?}"),
            }
        }
    }

    const ORDERS: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata:
  name: orders-consumer
  namespace: shop
spec:
  scaleTargetRef:
    name: orders-consumer
  maxReplicaCount: 30
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 60
  triggers:
    - kafka:
        bootstrapServers: kafka:9092
        consumerGroup: orders
        topic: Orders.v1
        lagThreshold: 1500
    - rabbitmq:
        host: http://rabbitmq:15672/
        queueName: retry
        value: "2.5"
    - prometheus:
        serverAddress: http://prometheus:9090
        query: sum(rate(http_requests_total[1m]))
        threshold: 12000
    - cron:
        timezone: Europe/Berlin
        start: "0 8 * * 1-5"
        end: "0 18 * * 1-5"
        desiredReplicas: 3
"#;

    #[test]
    fn builds_the_owned_hpa_from_a_scaled_object_as_users_write_it() {
        let so = scaled_object(ORDERS);
        let hpa = desired_hpa(&so).unwrap();
        let expected = serde_json::json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": "spillway-orders-consumer",
                "namespace": "shop",
                "labels": {
                    "app.kubernetes.io/managed-by": "spillway",
                    "scaledobject.spillway.dev/name": "orders-consumer"
                },
                "ownerReferences": [{
                    "apiVersion": "spillway.dev/v1alpha1",
                    "kind": "ScaledObject",
                    "name": "orders-consumer",
                    "uid": "7f1d3c2a-0000-4000-8000-000000000001",
                    "controller": true,
                    "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders-consumer"},
                // minReplicaCount 0: the HPA stops at one, the controller does 1 -> 0.
                "minReplicas": 1,
                "maxReplicas": 30,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
                "metrics": [
                    external("s0-kafka-orders-v1", "1500"),
                    external("s1-rabbitmq-retry", "2500m"),
                    external("s2-prometheus", "12k"),
                    external("s3-cron-europe-berlin-08xx1-5-018xx1-5", "1"),
                ]
            }
        });
        let actual = serde_json::to_value(&hpa).unwrap();
        let metric_names: Vec<&str> = actual["spec"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["external"]["metric"]["name"].as_str().unwrap())
            .collect();
        // The cron name is whatever the metrics API serves; compared below against the catalog.
        let mut expected = expected;
        expected["spec"]["metrics"][3]["external"]["metric"]["name"] = metric_names[3].into();
        assert_eq!(actual, expected);
    }

    fn external(name: &str, target: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "External",
            "external": {
                "metric": {
                    "name": name,
                    "selector": {"matchLabels": {"scaledobject.spillway.dev/name": "orders-consumer"}}
                },
                "target": {"type": "AverageValue", "averageValue": target}
            }
        })
    }

    #[test]
    fn metric_names_are_the_ones_the_metrics_api_serves() {
        let so = scaled_object(ORDERS);
        let hpa = desired_hpa(&so).unwrap();
        let asked: Vec<String> = hpa
            .spec
            .unwrap()
            .metrics
            .unwrap()
            .into_iter()
            .map(|m| m.external.unwrap().metric.name)
            .collect();
        let served: Vec<String> = catalog(&triggers(&so.to_config().unwrap()).unwrap())
            .into_iter()
            .map(|m| m.metric)
            .collect();
        assert_eq!(asked, served);
        assert!(
            asked[3].starts_with("s3-cron-europe-berlin-"),
            "{}",
            asked[3]
        );
    }

    #[test]
    fn name_min_replicas_and_target_follow_the_spec() {
        let mut so = scaled_object(ORDERS);
        so.spec.min_replica_count = 4;
        so.spec.scale_target_ref.api_version = "argoproj.io/v1alpha1".into();
        so.spec.scale_target_ref.kind = "Rollout".into();
        so.spec
            .advanced
            .as_mut()
            .unwrap()
            .horizontal_pod_autoscaler_config
            .as_mut()
            .unwrap()
            .name = Some("orders-hpa".into());
        let hpa = desired_hpa(&so).unwrap();
        assert_eq!(hpa.metadata.name.as_deref(), Some("orders-hpa"));
        let spec = hpa.spec.unwrap();
        assert_eq!(spec.min_replicas, Some(4));
        assert_eq!(spec.scale_target_ref.kind, "Rollout");
        assert_eq!(
            spec.scale_target_ref.api_version.as_deref(),
            Some("argoproj.io/v1alpha1")
        );
    }

    #[test]
    fn scaling_modifiers_replace_the_triggers_metrics_with_one_composite_metric() {
        let so = scaled_object(
            r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {name: orders, namespace: shop}
spec:
  scaleTargetRef: {name: orders}
  advanced:
    scalingModifiers: {formula: "kafka + rabbit", target: 2.5, metricType: Value}
  triggers:
    - name: kafka
      kafka: {bootstrapServers: "k:9092", consumerGroup: g, topic: t}
    - cpu: {utilization: 60}
    - name: rabbit
      rabbitmq: {host: "http://r:15672", queueName: q, mode: QueueLength, value: 5}
"#,
        );
        let hpa = serde_json::to_value(desired_hpa(&so).unwrap()).unwrap();
        assert_eq!(
            hpa["spec"]["metrics"],
            serde_json::json!([
                {"type": "External", "external": {
                    "metric": {"name": "composite-metric", "selector": {"matchLabels": {"scaledobject.spillway.dev/name": "orders"}}},
                    "target": {"type": "Value", "value": "2500m"}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
            ])
        );
    }

    #[test]
    fn labels_value_targets_and_one_way_pauses_reach_the_hpa() {
        let mut so = scaled_object(ORDERS);
        so.metadata.labels = Some(BTreeMap::from([
            ("team".to_owned(), "payments".to_owned()),
            ("build".to_owned(), "4711".to_owned()),
            // A label spillway sets itself is spillway's value on the HPA.
            (MANAGED_BY_LABEL.to_owned(), "helm".to_owned()),
        ]));
        so.metadata.annotations = Some(BTreeMap::from([(
            EXCLUDED_LABELS_ANNOTATION.to_owned(),
            "build, other".to_owned(),
        )]));
        so.spec.triggers[2].metric_type = MetricType::Value;
        so.spec.paused_scale_in = true;
        let hpa = serde_json::to_value(desired_hpa(&so).unwrap()).unwrap();
        assert_eq!(
            hpa["metadata"]["labels"],
            serde_json::json!({
                "team": "payments",
                "app.kubernetes.io/managed-by": "spillway",
                "scaledobject.spillway.dev/name": "orders-consumer"
            })
        );
        assert_eq!(
            hpa["spec"]["metrics"][2]["external"]["target"],
            serde_json::json!({"type": "Value", "value": "12k"})
        );
        assert_eq!(
            hpa["spec"]["metrics"][0]["external"]["target"]["type"],
            "AverageValue"
        );
        // The configured scale-down window stays; only the paused direction is disabled.
        assert_eq!(
            hpa["spec"]["behavior"],
            serde_json::json!({"scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Disabled"}})
        );
        so.spec.paused_scale_in = false;
        so.spec.paused_scale_out = true;
        so.spec.advanced = None;
        let hpa = serde_json::to_value(desired_hpa(&so).unwrap()).unwrap();
        assert_eq!(
            hpa["spec"]["behavior"],
            serde_json::json!({"scaleUp": {"selectPolicy": "Disabled"}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        let mut so = scaled_object(ORDERS);
        so.metadata.uid = None;
        assert_eq!(desired_hpa(&so).unwrap_err(), HpaError::MissingUid);
        let mut so = scaled_object(ORDERS);
        so.spec.triggers.clear();
        assert_eq!(
            desired_hpa(&so).unwrap_err().to_string(),
            "spec.triggers: needs at least one trigger"
        );
        let mut so = scaled_object(ORDERS);
        so.spec.triggers[0] = TriggerConfig::default();
        assert!(
            desired_hpa(&so)
                .unwrap_err()
                .to_string()
                .starts_with("spec.triggers[0]: names no broker")
        );
    }

    /// The HPA as the API server returns it after a create: defaults filled in, fields of
    /// its own added.
    fn as_stored(desired: &HorizontalPodAutoscaler) -> HorizontalPodAutoscaler {
        let mut stored = desired.clone();
        stored.metadata.resource_version = Some("4711".into());
        stored
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "shop".into());
        let spec = stored.spec.as_mut().unwrap();
        spec.behavior = Some(
            serde_json::from_value(serde_json::json!({
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 15},
                        {"type": "Percent", "value": 100, "periodSeconds": 15}
                    ]
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 60,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]
                }
            }))
            .unwrap(),
        );
        stored
    }

    #[test]
    fn cpu_and_memory_triggers_are_resource_metrics_and_a_canonical_quantity_is_no_drift() {
        let so = scaled_object(
            r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {name: api, namespace: shop}
spec:
  scaleTargetRef: {name: api}
  minReplicaCount: 1
  triggers:
    - cpu: {utilization: 60}
    - cron: {timezone: UTC, start: "0 8 * * *", end: "0 9 * * *", desiredReplicas: 2}
    - memory: {averageValue: "1024Mi", containerName: api}
    - cpu: {averageValue: "0.5"}
"#,
        );
        let desired = desired_hpa(&so).unwrap();
        let metrics = desired.spec.as_ref().unwrap().metrics.clone().unwrap();
        let json = serde_json::to_value(&metrics).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}})
        );
        assert_eq!(json[1]["type"], "External");
        assert_eq!(
            json[1]["external"]["metric"]["name"],
            "s1-cron-utc-08xxx-09xxx"
        );
        assert_eq!(
            json[2],
            serde_json::json!({"type": "ContainerResource", "containerResource": {"name": "memory", "container": "api", "target": {"type": "AverageValue", "averageValue": "1024Mi"}}})
        );
        // The API server stores 0.5 as 500m and 1024Mi as 1Gi: not a hand edit.
        let mut stored = desired.clone();
        let stored_metrics = stored.spec.as_mut().unwrap().metrics.as_mut().unwrap();
        stored_metrics[2]
            .container_resource
            .as_mut()
            .unwrap()
            .target
            .average_value = Some(Quantity("1Gi".into()));
        stored_metrics[3]
            .resource
            .as_mut()
            .unwrap()
            .target
            .average_value = Some(Quantity("500m".into()));
        assert_eq!(hpa_drift(&stored, &desired), Vec::<&str>::new());
        stored.spec.as_mut().unwrap().metrics.as_mut().unwrap()[0]
            .resource
            .as_mut()
            .unwrap()
            .target
            .average_utilization = Some(80);
        assert_eq!(hpa_drift(&stored, &desired), ["spec.metrics"]);
    }

    #[test]
    fn a_stored_hpa_with_server_defaults_has_no_drift() {
        let desired = desired_hpa(&scaled_object(ORDERS)).unwrap();
        assert_eq!(
            hpa_drift(&as_stored(&desired), &desired),
            Vec::<&str>::new()
        );
        // Without behavior, the server stores none.
        let mut so = scaled_object(ORDERS);
        so.spec.advanced = None;
        let plain = desired_hpa(&so).unwrap();
        assert_eq!(hpa_drift(&plain.clone(), &plain), Vec::<&str>::new());
    }

    #[test]
    fn hand_edits_of_owned_fields_are_drift() {
        let desired = desired_hpa(&scaled_object(ORDERS)).unwrap();
        let stored = as_stored(&desired);
        let edit = |change: fn(&mut HorizontalPodAutoscaler)| {
            let mut edited = stored.clone();
            change(&mut edited);
            hpa_drift(&edited, &desired)
        };
        assert_eq!(
            edit(|h| h.spec.as_mut().unwrap().max_replicas = 3),
            ["spec.maxReplicas"]
        );
        assert_eq!(
            edit(|h| h.spec.as_mut().unwrap().min_replicas = None),
            Vec::<&str>::new(),
            "an unset minReplicas is stored as 1"
        );
        assert_eq!(
            edit(|h| h.spec.as_mut().unwrap().min_replicas = Some(2)),
            ["spec.minReplicas"]
        );
        assert_eq!(
            edit(|h| {
                h.spec.as_mut().unwrap().metrics.as_mut().unwrap().pop();
            }),
            ["spec.metrics"]
        );
        assert_eq!(
            edit(|h| {
                let metric = &mut h.spec.as_mut().unwrap().metrics.as_mut().unwrap()[0];
                metric.external.as_mut().unwrap().target.average_value =
                    Some(Quantity("10".into()));
            }),
            ["spec.metrics"]
        );
        assert_eq!(
            edit(|h| h.spec.as_mut().unwrap().scale_target_ref.name = "other".into()),
            ["spec.scaleTargetRef"]
        );
        assert_eq!(
            edit(|h| {
                let behavior = h.spec.as_mut().unwrap().behavior.as_mut().unwrap();
                behavior
                    .scale_down
                    .as_mut()
                    .unwrap()
                    .stabilization_window_seconds = Some(300);
            }),
            ["spec.behavior"]
        );
        assert_eq!(
            edit(|h| h.spec.as_mut().unwrap().behavior = None),
            ["spec.behavior"]
        );
        assert_eq!(
            edit(|h| {
                h.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .remove(SCALED_OBJECT_LABEL);
            }),
            ["metadata.labels"]
        );
        assert_eq!(
            edit(|h| h.metadata.owner_references = None),
            ["metadata.ownerReferences"]
        );
        assert_eq!(
            edit(|h| h.metadata.annotations = Some(BTreeMap::from([("a".into(), "b".into())]))),
            Vec::<&str>::new(),
            "annotations are not ours"
        );
    }

    #[test]
    fn a_tolerance_the_server_dropped_is_not_asked_for_forever() {
        let mut so = scaled_object(ORDERS);
        let config = so
            .spec
            .advanced
            .as_mut()
            .unwrap()
            .horizontal_pod_autoscaler_config
            .as_mut()
            .unwrap();
        config
            .behavior
            .as_mut()
            .unwrap()
            .scale_down
            .as_mut()
            .unwrap()
            .tolerance = Some(Quantity("50m".into()));
        let desired = desired_hpa(&so).unwrap();
        // Feature gate off: stored without tolerance.
        let stored = as_stored(&desired);
        assert_eq!(hpa_drift(&stored, &desired), Vec::<&str>::new());
        // Feature gate on but a different tolerance stored: drift.
        let mut other = stored.clone();
        other
            .spec
            .as_mut()
            .unwrap()
            .behavior
            .as_mut()
            .unwrap()
            .scale_down
            .as_mut()
            .unwrap()
            .tolerance = Some(Quantity("100m".into()));
        assert_eq!(hpa_drift(&other, &desired), ["spec.behavior"]);
    }
}
