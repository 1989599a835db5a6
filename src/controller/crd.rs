//! The ScaledObject custom resource (`scaledobjects.spillway.dev`, version `v1alpha1`): KEDA's
//! field names where the meaning is the same, typed triggers instead of string maps, and a
//! schema that lets the API server refuse what spillway would refuse (ranges, enums, one broker
//! per trigger, KEDA's relations between replica counts) before the controller sees it.
//!
//! [`crd`] is the definition to install (`spillway crd` prints it with the TriggerAuthentication
//! kinds, [`crds`]; `deploy/crd.yaml` is its output): kube's derived definition with the schema adjusted for Kubernetes (see
//! [`adjust_schema`]).

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{MetricType, TriggerConfig};

/// The API group of spillway's resources.
pub const GROUP: &str = "spillway.dev";

/// A ScaledObject's name is the value of the `scaledobject.spillway.dev/name` label on its
/// HPA and in its metric selectors, and label values stop at 63 characters.
pub const MAX_NAME_LENGTH: u64 = 63;

/// The most triggers one ScaledObject may have. KEDA sets no limit; one is needed so the API
/// server can bound the cost of the CEL rules that look at every trigger.
pub const MAX_TRIGGERS: u32 = 64;

/// The condition types spillway writes into `status.conditions`, as KEDA names them.
pub mod condition {
    /// The object is valid and its HPA and triggers are in place.
    pub const READY: &str = "Ready";
    /// At least one trigger asks for replicas (activation).
    pub const ACTIVE: &str = "Active";
    /// A trigger failed `fallback.failureThreshold` polls in a row and fallback replicas apply.
    pub const FALLBACK: &str = "Fallback";
    /// Scaling is paused (`paused` or `pausedReplicas`).
    pub const PAUSED: &str = "Paused";
}

/// What to scale and on what, like KEDA's ScaledObject. spillway owns one HPA per ScaledObject
/// for 1..N replicas and scales between 0 and 1 itself.
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "spillway.dev",
    version = "v1alpha1",
    kind = "ScaledObject",
    namespaced,
    status = "ScaledObjectStatus",
    shortname = "so",
    derive = "PartialEq",
    doc = "Scales a workload with the backlog in Kafka, RabbitMQ, NATS JetStream or Prometheus, or on a schedule.",
    // Raw JSON columns: clippy reads the repeated `type_ = ...` of the structured form as
    // duplicated attributes.
    printcolumn = r#"{"name": "Kind", "type": "string", "jsonPath": ".spec.scaleTargetRef.kind", "description": "Kind of the scaled resource"}"#,
    printcolumn = r#"{"name": "Target", "type": "string", "jsonPath": ".spec.scaleTargetRef.name", "description": "Name of the scaled resource"}"#,
    printcolumn = r#"{"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicaCount", "description": "Fewest replicas while active"}"#,
    printcolumn = r#"{"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicaCount", "description": "Most replicas"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "description": "Whether the HPA and the triggers are in place"}"#,
    printcolumn = r#"{"name": "Active", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Active\")].status", "description": "Whether a trigger asks for replicas"}"#,
    printcolumn = r#"{"name": "Fallback", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Fallback\")].status", "description": "Whether fallback replicas apply"}"#,
    printcolumn = r#"{"name": "Paused", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Paused\")].status", "description": "Whether scaling is paused"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// `has()` guards keep each rule right whether or not the API server filled in the defaults.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.minReplicaCount) ? self.minReplicaCount : 0) <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)",
        "message": "minReplicaCount must not be above maxReplicaCount"
    },
    {
        "rule": "!has(self.idleReplicaCount) || self.idleReplicaCount < (has(self.minReplicaCount) ? self.minReplicaCount : 0)",
        "message": "idleReplicaCount must be less than minReplicaCount"
    },
    {
        "rule": "!has(self.fallback) || self.triggers.exists(t, !has(t.cron) && !has(t.cpu) && !has(t.memory))",
        "message": "fallback needs a trigger that can fail: cron triggers never do, and the HPA reads cpu and memory itself"
    },
    {
        "rule": "(has(self.minReplicaCount) ? self.minReplicaCount : 0) > 0 || self.triggers.exists(t, !has(t.cpu) && !has(t.memory))",
        "message": "minReplicaCount 0 needs a trigger other than cpu and memory: with no pods there is no cpu or memory to read (KEDA refuses it too)"
    },
    {
        "rule": "!has(self.fallback) || (has(self.advanced) && has(self.advanced.scalingModifiers)) || self.triggers.all(t, !has(t.metricType) || t.metricType == 'AverageValue')",
        "message": "fallback needs AverageValue triggers: the replicas a Value target yields depend on the current replicas, so fallback could not steer to fallback.replicas"
    },
    {
        "rule": "!has(self.fallback) || !has(self.advanced) || !has(self.advanced.scalingModifiers) || !has(self.advanced.scalingModifiers.metricType) || self.advanced.scalingModifiers.metricType == 'AverageValue'",
        "message": "fallback needs scalingModifiers.metricType AverageValue: the replicas a Value target yields depend on the current replicas, so fallback could not steer to fallback.replicas"
    },
    {
        "rule": "!has(self.fallback) || !has(self.fallback.behavior) || self.fallback.behavior != 'scalingModifiers' || (has(self.advanced) && has(self.advanced.scalingModifiers))",
        "message": "fallback.behavior scalingModifiers needs advanced.scalingModifiers: the formula decides with the failing triggers as nil"
    },
    {
        "rule": "!has(self.advanced) || !has(self.advanced.scalingModifiers) || self.triggers.exists(t, has(t.name) && !has(t.cpu) && !has(t.memory))",
        "message": "advanced.scalingModifiers.formula names triggers: give a trigger other than cpu and memory a name"
    },
    {
        "rule": "self.triggers.all(t, !has(t.name) || self.triggers.exists_one(u, has(u.name) && u.name == t.name))",
        "message": "trigger names must be unique within a ScaledObject"
    }
]))]
pub struct ScaledObjectSpec {
    /// The resource to scale: any kind with a `scale` subresource.
    pub scale_target_ref: ScaleTargetRef,
    /// Seconds between two polls of every trigger (default 30).
    #[serde(default = "ScaledObjectSpec::default_polling_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval: i32,
    /// Seconds after the last active poll before the target goes from its HPA's minimum to
    /// `idleReplicaCount` or 0 (default 300). Scaling between 1 and N follows the HPA's behavior.
    #[serde(default = "ScaledObjectSpec::default_cooldown_period")]
    #[schemars(range(min = 0))]
    pub cooldown_period: i32,
    /// Seconds after the object's creation before a target whose triggers were never active
    /// may go to idle (KEDA's `initialCooldownPeriod`). Unset: `cooldownPeriod`, counted from
    /// the creation, so a new object does not take a running target to zero at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub initial_cooldown_period: Option<i32>,
    /// Fewest replicas while active; 0 lets an idle target scale to zero (default 0).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replica_count: i32,
    /// Most replicas (default 100).
    #[serde(default = "ScaledObjectSpec::default_max_replica_count")]
    #[schemars(range(min = 1))]
    pub max_replica_count: i32,
    /// Replicas while no trigger is active, below minReplicaCount (usually 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub idle_replica_count: Option<i32>,
    /// Replicas to hold while triggers keep failing, instead of scaling on no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advanced: Option<Advanced>,
    /// Stop scaling and leave the target at its current replicas. `pausedReplicas` pauses too.
    #[serde(default)]
    pub paused: bool,
    /// Pause and hold the target at this many replicas (paused even when `paused` is false,
    /// as KEDA's `paused-replicas` annotation pauses on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub paused_replicas: Option<i32>,
    /// Never scale the target in: the HPA's scale-down is disabled and the target does not go
    /// to idle (KEDA's `paused-scale-in` annotation). Scaling out goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_scale_in: bool,
    /// Never scale the target out: the HPA's scale-up is disabled and the target does not
    /// leave idle (KEDA's `paused-scale-out` annotation). Scaling in goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_scale_out: bool,
    /// What to scale on; each entry names exactly one broker. Each trigger is one External
    /// metric of the HPA, which asks for the most replicas any of them wants.
    #[schemars(length(min = 1, max = MAX_TRIGGERS))]
    pub triggers: Vec<TriggerConfig>,
}

impl ScaledObjectSpec {
    fn default_polling_interval() -> i32 {
        30
    }
    fn default_cooldown_period() -> i32 {
        300
    }
    fn default_max_replica_count() -> i32 {
        100
    }

    /// Whether deleting the object scales its target back to `status.originalReplicaCount`.
    pub fn restores_original_replicas(&self) -> bool {
        self.advanced
            .as_ref()
            .is_some_and(|a| a.restore_to_original_replica_count)
    }

    /// `advanced.scalingModifiers`, when set.
    pub fn scaling_modifiers(&self) -> Option<&ScalingModifiers> {
        self.advanced
            .as_ref()
            .and_then(|a| a.scaling_modifiers.as_ref())
    }

    /// True when scaling is paused, by `paused` or by `pausedReplicas`.
    pub fn is_paused(&self) -> bool {
        self.paused || self.paused_replicas.is_some()
    }

    /// The seconds without an active trigger before the target may go to idle: `cooldownPeriod`,
    /// or `initialCooldownPeriod` when set and no trigger was ever active (`ever_active` false).
    pub fn cooldown_seconds(&self, ever_active: bool) -> i32 {
        match self.initial_cooldown_period {
            Some(initial) if !ever_active => initial,
            _ => self.cooldown_period,
        }
    }
}

/// The scaled resource, like an HPA's `scaleTargetRef`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the resource (default `apps/v1`).
    #[serde(default = "ScaleTargetRef::default_api_version")]
    #[schemars(length(min = 1))]
    pub api_version: String,
    /// Kind of the resource (default `Deployment`).
    #[serde(default = "ScaleTargetRef::default_kind")]
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Name of the resource, in the ScaledObject's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl ScaleTargetRef {
    fn default_api_version() -> String {
        "apps/v1".into()
    }
    fn default_kind() -> String {
        "Deployment".into()
    }
}

/// Replicas to hold while triggers fail, as KEDA's `fallback`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Failed polls in a row a trigger may have before fallback applies, as in KEDA: with 3 the
    /// fourth failure in a row starts it, with 0 the first.
    #[schemars(range(min = 0))]
    pub failure_threshold: i32,
    /// Replicas the HPA is steered to while fallback applies (`behavior` may prefer the
    /// target's current replicas).
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Which replicas fallback steers to: `static` (default) `replicas`; `currentReplicas` the
    /// target's replicas as they are; `currentReplicasIfHigher` the larger of the two;
    /// `currentReplicasIfLower` the smaller. Current replicas are the target's `spec.replicas`,
    /// read while a trigger fails.
    #[serde(default, skip_serializing_if = "FallbackBehavior::is_static")]
    pub behavior: FallbackBehavior,
}

/// KEDA's `fallback.behavior`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FallbackBehavior {
    /// `fallback.replicas`.
    #[default]
    Static,
    /// The target's current replicas: hold it where it is.
    CurrentReplicas,
    /// max(current replicas, `fallback.replicas`).
    CurrentReplicasIfHigher,
    /// min(current replicas, `fallback.replicas`).
    CurrentReplicasIfLower,
    /// With `advanced.scalingModifiers`: a trigger in fallback enters the formula as `nil`
    /// (`name ?? default` decides); a formula that then gives nil serves `fallback.replicas`.
    ScalingModifiers,
}

impl FallbackBehavior {
    fn is_static(&self) -> bool {
        *self == Self::Static
    }

    /// Whether the replicas steered to depend on the target's current replicas.
    pub fn reads_current_replicas(self) -> bool {
        matches!(
            self,
            Self::CurrentReplicas | Self::CurrentReplicasIfHigher | Self::CurrentReplicasIfLower
        )
    }

    /// The replicas fallback steers to, from `fallback.replicas` and the target's `current`
    /// replicas (`None`: not known, which only `static` can do without).
    pub fn replicas(self, fallback_replicas: u32, current: Option<u32>) -> Option<u32> {
        match self {
            Self::Static | Self::ScalingModifiers => Some(fallback_replicas),
            Self::CurrentReplicas => current,
            Self::CurrentReplicasIfHigher => current.map(|c| c.max(fallback_replicas)),
            Self::CurrentReplicasIfLower => current.map(|c| c.min(fallback_replicas)),
        }
    }

    /// KEDA's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::CurrentReplicas => "currentReplicas",
            Self::CurrentReplicasIfHigher => "currentReplicasIfHigher",
            Self::CurrentReplicasIfLower => "currentReplicasIfLower",
            Self::ScalingModifiers => "scalingModifiers",
        }
    }
}

/// Settings beyond the common ones.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Advanced {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizontal_pod_autoscaler_config: Option<HorizontalPodAutoscalerConfig>,
    /// When the ScaledObject is deleted, scale the target back to `status.originalReplicaCount`
    /// (its replicas before spillway first changed them), as KEDA does. spillway holds the
    /// deletion with the finalizer `spillway.dev/restore-replicas` until it has; a target gone
    /// by then does not hold it (a Warning Event says so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore_to_original_replica_count: bool,
    /// One metric composed from the named triggers by a formula, as KEDA's `scalingModifiers`:
    /// it replaces their metrics on the HPA and decides activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_modifiers: Option<ScalingModifiers>,
}

/// KEDA's `advanced.scalingModifiers`: the HPA scales on `formula` over the triggers' values,
/// named `composite-metric`, against `target`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.target > 0.0", "message": "target must be above 0"}
]))]
pub struct ScalingModifiers {
    /// An expr-lang expression over trigger names that gives a number, e.g.
    /// `(kafka + rabbit) / 2` or `kafka > 100 ? kafka : 0` (the subset spillway runs is listed
    /// in the README).
    #[schemars(length(min = 1, max = 1024))]
    pub formula: String,
    /// The HPA's target for the formula's value (an AverageValue unless `metricType` says Value).
    pub target: f64,
    /// The object is active while the formula's value is above this (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub activation_target: f64,
    /// How the HPA compares the value with `target`: `AverageValue` (default) or `Value`.
    #[serde(default, skip_serializing_if = "MetricType::is_default")]
    pub metric_type: MetricType,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

/// The owned HPA's name and scaling behavior.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerConfig {
    /// The HPA's name (default `spillway-<ScaledObject name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Copied into the HPA's `spec.behavior` (autoscaling/v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// What spillway last observed and did; written by the controller only.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectStatus {
    /// Ready, Active, Fallback and Paused (see [`condition`]), one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The name of the HPA spillway owns for this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa_name: Option<String>,
    /// The last poll at which a trigger was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<Time>,
    /// The target's replicas when spillway took it over, recorded before its first change of
    /// them; `advanced.restoreToOriginalReplicaCount` restores them on deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_replica_count: Option<i32>,
    /// The replicas the target is held at while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_replica_count: Option<i32>,
    /// One entry per trigger, by its index in `spec.triggers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["index"]))]
    pub triggers: Vec<TriggerStatus>,
}

/// The latest poll of one trigger.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// Position in `spec.triggers`.
    #[schemars(range(min = 0))]
    pub index: i32,
    /// The trigger's `name`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The served metric name, `s<index>-<name>`.
    pub metric: String,
    /// The latest value served to the HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
    /// Why the latest poll failed; absent after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed polls in a row (what `fallback.failureThreshold` counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub consecutive_failures: Option<i32>,
    /// When the trigger was last polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
}

/// The CustomResourceDefinition to install: kube's derived one, with the schema adjusted by
/// [`adjust_schema`].
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ScaledObject::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("a schema serializes");
            adjust_schema(&mut value);
            *schema = serde_json::from_value(value).expect("the adjusted schema is still a schema");
        }
    }
    crd
}

/// Every definition spillway installs: the ScaledObject ([`crd`]) and the two kinds of
/// authentication (`super::trigger_auth`), their integer formats adjusted as
/// [`adjust_schema`] does.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use super::trigger_auth::{ClusterTriggerAuthentication, TriggerAuthentication};
    let mut all = vec![
        crd(),
        TriggerAuthentication::crd(),
        ClusterTriggerAuthentication::crd(),
    ];
    for definition in &mut all[1..] {
        for version in &mut definition.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                let mut value = serde_json::to_value(&*schema).expect("a schema serializes");
                kubernetes_formats(&mut value);
                *schema =
                    serde_json::from_value(value).expect("the adjusted schema is still a schema");
            }
        }
    }
    all
}

/// The definitions as YAML documents, as `spillway crd` prints them and `deploy/crd.yaml`
/// holds them.
pub fn crd_yaml() -> String {
    let documents: Vec<String> = crds()
        .iter()
        .map(|definition| {
            serde_norway::to_string(definition).expect("a CustomResourceDefinition serializes")
        })
        .collect();
    format!(
        "# Generated by `spillway crd` from src/controller/crd.rs and src/controller/trigger_auth.rs;\n\
         # do not edit. Regenerate with: cargo run -- crd > deploy/crd.yaml\n{}",
        documents.join("---\n")
    )
}

/// What Kubernetes needs beyond what schemars and kube generate:
/// - `metadata.name` is limited to [`MAX_NAME_LENGTH`] (structural schemas may restrict the
///   name, and only it), because the name is a label value;
/// - integer formats are `int32` or `int64`: schemars writes Rust's (`uint64`, `double`), which
///   the API server does not know and warns about on every apply since 1.34. Unsigned types keep
///   their range through `minimum` (and `maximum` for 32 bits).
pub fn adjust_schema(root: &mut Value) {
    if let Some(properties) = root.get_mut("properties").and_then(Value::as_object_mut) {
        let metadata = properties
            .entry("metadata")
            .or_insert_with(|| serde_json::json!({"type": "object"}));
        metadata["properties"] = serde_json::json!({
            "name": {"type": "string", "maxLength": MAX_NAME_LENGTH}
        });
    }
    kubernetes_formats(root);
}

/// Rewrites `format` keywords (see [`adjust_schema`]) in a schema and all its subschemas.
fn kubernetes_formats(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    match object.get("format").and_then(Value::as_str) {
        Some("int32" | "int64") | None => {}
        Some(unsigned @ ("uint8" | "uint16" | "uint32")) => {
            let max = match unsigned {
                "uint8" => u64::from(u8::MAX),
                "uint16" => u64::from(u16::MAX),
                _ => u64::from(u32::MAX),
            };
            object.insert("format".into(), "int64".into());
            object.entry("maximum").or_insert(max.into());
            object.entry("minimum").or_insert(0.into());
        }
        Some("uint64" | "uint") => {
            object.insert("format".into(), "int64".into());
            object.entry("minimum").or_insert(0.into());
        }
        Some("int8" | "int16") => {
            object.insert("format".into(), "int32".into());
        }
        // `double` and `float` add nothing to `type: number`; date-time and friends stay.
        Some("double" | "float") => {
            object.remove("format");
        }
        Some(_) => {}
    }
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            // Values, not schemas: a default or an enum member may hold a `format` key.
            "default" | "enum" | "example" | "x-kubernetes-validations" => {}
            "properties" => {
                if let Some(properties) = value.as_object_mut() {
                    properties.values_mut().for_each(kubernetes_formats);
                }
            }
            "anyOf" | "oneOf" | "allOf" => {
                if let Some(items) = value.as_array_mut() {
                    items.iter_mut().for_each(kubernetes_formats);
                }
            }
            _ => kubernetes_formats(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::cel::Validator;

    /// The ScaledObject schema as the API server would get it.
    fn schema() -> Value {
        let crd = crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    const EXAMPLE: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata:
  name: orders-consumer
  namespace: shop
spec:
  scaleTargetRef:
    name: orders-consumer
  minReplicaCount: 1
  maxReplicaCount: 20
  idleReplicaCount: 0
  fallback:
    failureThreshold: 3
    replicas: 6
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 120
  triggers:
    - kafka:
        bootstrapServers: kafka-0.kafka:9092,kafka-1.kafka:9092
        consumerGroup: orders
        topic: orders
        lagThreshold: 50
        sasl: scram_sha512
        username: orders
        password:
          secretKeyRef: {name: kafka-orders, key: password}
        tls: enable
    - rabbitmq:
        host: amqp://rabbitmq.shop:5672/
        queueName: orders-retry
        value: 20
    - cron:
        timezone: Europe/Berlin
        start: "0 8 * * 1-5"
        end: "0 18 * * 1-5"
        desiredReplicas: 4
"#;

    fn example() -> ScaledObject {
        serde_norway::from_str(EXAMPLE).unwrap()
    }

    /// Evaluates the schema's CEL rules against `object`, as the API server would on create.
    fn cel_errors(object: &Value) -> Vec<String> {
        match Validator::new().validate(&schema(), object, None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn with_spec(change: impl FnOnce(&mut Value)) -> Value {
        let mut object = serde_json::to_value(example()).unwrap();
        change(&mut object["spec"]);
        object
    }

    #[test]
    fn names_kind_scope_and_subresources() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("scaledobjects.spillway.dev")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "ScaledObject");
        assert_eq!(crd.spec.names.short_names, Some(vec!["so".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Kind", "Target", "Min", "Max", "Ready", "Active", "Fallback", "Paused", "Age"
            ]
        );
    }

    #[test]
    fn a_scaled_object_as_users_write_it_gets_keda_defaults() {
        let so = example();
        assert_eq!(so.spec.scale_target_ref.api_version, "apps/v1");
        assert_eq!(so.spec.scale_target_ref.kind, "Deployment");
        assert_eq!(so.spec.polling_interval, 30);
        assert_eq!(so.spec.cooldown_period, 300);
        assert!(!so.spec.is_paused());
        assert_eq!(so.spec.triggers.len(), 3);
        let minimal: ScaledObjectSpec = serde_norway::from_str(
            "scaleTargetRef: {name: w}\ntriggers: [{cron: {timezone: UTC, start: '0 8 * * *', end: '0 9 * * *', desiredReplicas: 1}}]",
        )
        .unwrap();
        assert_eq!(
            (minimal.min_replica_count, minimal.max_replica_count),
            (0, 100)
        );
        assert_eq!(minimal.idle_replica_count, None);
        let paused = ScaledObjectSpec {
            paused_replicas: Some(0),
            ..minimal
        };
        assert!(paused.is_paused());
    }

    #[test]
    fn the_example_passes_every_rule() {
        let errors = cel_errors(&serde_json::to_value(example()).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn cel_rules_refuse_what_keda_refuses() {
        let cases: Vec<(&str, Value)> = vec![
            (
                "minReplicaCount must not be above maxReplicaCount",
                with_spec(|s| {
                    s["minReplicaCount"] = 5.into();
                    s["maxReplicaCount"] = 4.into();
                }),
            ),
            (
                "minReplicaCount must not be above maxReplicaCount",
                // maxReplicaCount left out: its default 100 applies.
                with_spec(|s| {
                    s.as_object_mut().unwrap().remove("maxReplicaCount");
                    s["minReplicaCount"] = 101.into();
                }),
            ),
            (
                "idleReplicaCount must be less than minReplicaCount",
                with_spec(|s| s["idleReplicaCount"] = 1.into()),
            ),
            (
                "idleReplicaCount must be less than minReplicaCount",
                with_spec(|s| s["minReplicaCount"] = 0.into()),
            ),
            (
                "fallback needs a trigger that can fail",
                with_spec(|s| {
                    let cron = s["triggers"][2].clone();
                    s["triggers"] = Value::Array(vec![cron]);
                }),
            ),
            (
                "a trigger names exactly one of kafka, rabbitmq",
                with_spec(|s| s["triggers"][1]["cron"] = s["triggers"][2]["cron"].clone()),
            ),
            (
                "a trigger names exactly one of kafka, rabbitmq",
                with_spec(|s| s["triggers"][1] = serde_json::json!({})),
            ),
            (
                "sasl needs username and password",
                with_spec(|s| {
                    s["triggers"][0]["kafka"]
                        .as_object_mut()
                        .unwrap()
                        .remove("password");
                }),
            ),
            (
                "need tls: enable",
                with_spec(|s| {
                    s["triggers"][0]["kafka"]["tls"] = "disable".into();
                    s["triggers"][0]["kafka"]["ca"] =
                        serde_json::json!({"secretKeyRef": {"name": "ca", "key": "ca.crt"}});
                }),
            ),
            (
                "need topic",
                with_spec(|s| {
                    let kafka = s["triggers"][0]["kafka"].as_object_mut().unwrap();
                    kafka.remove("topic");
                    kafka.insert("partitionLimitation".into(), "0-3".into());
                }),
            ),
            (
                "set one of host (a URL without password) or hostFromSecret",
                with_spec(|s| {
                    s["triggers"][1]["rabbitmq"]["hostFromSecret"] =
                        serde_json::json!({"secretKeyRef": {"name": "rabbit", "key": "url"}});
                }),
            ),
            (
                "set either serverAddress (query mode) or scrapeUrl (scrape mode)",
                with_spec(|s| {
                    s["triggers"][2] = serde_json::json!({"prometheus": {
                        "serverAddress": "http://prometheus:9090", "query": "up",
                        "scrapeUrl": "http://app:8080/metrics", "threshold": 5.0}});
                }),
            ),
            (
                "username and password go together",
                with_spec(|s| {
                    s["triggers"][2] = serde_json::json!({"prometheus": {
                        "serverAddress": "http://prometheus:9090", "query": "up",
                        "username": "u", "threshold": 5.0}});
                }),
            ),
            (
                "fallback needs AverageValue triggers",
                with_spec(|s| s["triggers"][1]["metricType"] = "Value".into()),
            ),
            (
                "trigger names must be unique",
                with_spec(|s| {
                    s["triggers"][0]["name"] = "lag".into();
                    s["triggers"][2]["name"] = "lag".into();
                }),
            ),
        ];
        for (expected, object) in cases {
            let errors = cel_errors(&object);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "expected {expected:?} for {}, got {errors:?}",
                object["spec"]
            );
        }
    }

    #[test]
    fn cel_rules_accept_named_triggers_and_value_targets_without_fallback() {
        let named = with_spec(|s| {
            s["triggers"][0]["name"] = "lag".into();
            s["triggers"][1]["name"] = "queue".into();
        });
        assert_eq!(cel_errors(&named), Vec::<String>::new());
        let value = with_spec(|s| {
            s.as_object_mut().unwrap().remove("fallback");
            s["triggers"][1]["metricType"] = "Value".into();
            s["triggers"][0]["metricType"] = "AverageValue".into();
        });
        assert_eq!(cel_errors(&value), Vec::<String>::new());
    }

    #[test]
    fn cel_rules_accept_each_mode() {
        let scrape = with_spec(|s| {
            s["triggers"][2] = serde_json::json!({"prometheus": {
                "scrapeUrl": "http://app:8080/metrics", "metricName": "queue_depth",
                "labels": {"queue": "a"}, "threshold": 5.0}});
        });
        assert_eq!(cel_errors(&scrape), Vec::<String>::new());
        let query = with_spec(|s| {
            s["triggers"][2] = serde_json::json!({"prometheus": {
                "serverAddress": "http://prometheus:9090", "query": "sum(up)",
                "bearerToken": {"secretKeyRef": {"name": "prom", "key": "token"}},
                "threshold": 5.0}});
        });
        assert_eq!(cel_errors(&query), Vec::<String>::new());
        let host_from_secret = with_spec(|s| {
            let rabbit = s["triggers"][1]["rabbitmq"].as_object_mut().unwrap();
            rabbit.remove("host");
            rabbit.insert(
                "hostFromSecret".into(),
                serde_json::json!({"secretKeyRef": {"name": "rabbit", "key": "url"}}),
            );
        });
        assert_eq!(cel_errors(&host_from_secret), Vec::<String>::new());
        // An authenticationRef may supply the credentials the rules otherwise ask for.
        let through_reference = with_spec(|s| {
            let rabbit = s["triggers"][1]["rabbitmq"].as_object_mut().unwrap();
            rabbit.remove("host");
            s["triggers"][1]["authenticationRef"] = serde_json::json!({"name": "rabbit"});
            s["triggers"][0]["kafka"]
                .as_object_mut()
                .unwrap()
                .remove("password");
            s["triggers"][0]["authenticationRef"] =
                serde_json::json!({"name": "kafka", "kind": "ClusterTriggerAuthentication"});
        });
        assert_eq!(cel_errors(&through_reference), Vec::<String>::new());
    }

    #[test]
    fn an_authentication_ref_names_one_of_the_two_kinds() {
        let schema = schema();
        let reference = &schema["properties"]["spec"]["properties"]["triggers"]["items"]["properties"]
            ["authenticationRef"];
        assert_eq!(
            reference["properties"]["kind"]["enum"],
            serde_json::json!(["TriggerAuthentication", "ClusterTriggerAuthentication"])
        );
        assert_eq!(reference["required"], serde_json::json!(["name"]));
        let cases = [
            (
                "rabbitmq: set one of host",
                with_spec(|s| {
                    let rabbit = s["triggers"][1]["rabbitmq"].as_object_mut().unwrap();
                    rabbit.remove("host");
                }),
            ),
            (
                "cron and natsJetStream triggers take no credentials",
                with_spec(|s| {
                    s["triggers"][2]["authenticationRef"] = serde_json::json!({"name": "a"})
                }),
            ),
        ];
        for (expected, object) in cases {
            let errors = cel_errors(&object);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "expected {expected:?}, got {errors:?}"
            );
        }
    }

    #[test]
    fn ranges_enums_and_required_fields_are_in_the_schema() {
        let schema = schema();
        let spec = &schema["properties"]["spec"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["scaleTargetRef", "triggers"])
        );
        let p = &spec["properties"];
        assert_eq!(p["pollingInterval"]["minimum"], 1.0);
        assert_eq!(p["pollingInterval"]["default"], 30);
        assert_eq!(p["cooldownPeriod"]["default"], 300);
        assert_eq!(p["minReplicaCount"]["minimum"], 0.0);
        assert_eq!(p["maxReplicaCount"]["minimum"], 1.0);
        assert_eq!(p["maxReplicaCount"]["default"], 100);
        assert_eq!(p["triggers"]["minItems"], 1);
        assert_eq!(p["triggers"]["maxItems"], MAX_TRIGGERS);
        assert_eq!(
            p["scaleTargetRef"]["properties"]["kind"]["default"],
            "Deployment"
        );
        assert_eq!(p["scaleTargetRef"]["required"], serde_json::json!(["name"]));
        assert_eq!(
            p["fallback"]["required"],
            serde_json::json!(["failureThreshold", "replicas"])
        );
        assert_eq!(
            p["fallback"]["properties"]["behavior"]["enum"],
            serde_json::json!([
                "static",
                "currentReplicas",
                "currentReplicasIfHigher",
                "currentReplicasIfLower",
                "scalingModifiers"
            ])
        );
        assert_eq!(
            p["advanced"]["properties"]["restoreToOriginalReplicaCount"]["type"],
            "boolean"
        );
        let trigger = &p["triggers"]["items"]["properties"];
        let kafka = &trigger["kafka"]["properties"];
        let mut sasl: Vec<&str> = kafka["sasl"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        sasl.sort_unstable();
        assert_eq!(sasl, ["none", "plaintext", "scram_sha256", "scram_sha512"]);
        assert_eq!(
            kafka["offsetResetPolicy"]["enum"],
            serde_json::json!(["latest", "earliest"])
        );
        assert_eq!(kafka["lagThreshold"]["minimum"], 1.0);
        assert_eq!(kafka["lagThreshold"]["format"], "int64");
        assert_eq!(
            trigger["kafka"]["required"],
            serde_json::json!(["bootstrapServers", "consumerGroup"])
        );
        let rabbit = &trigger["rabbitmq"]["properties"];
        assert_eq!(
            rabbit["mode"]["enum"],
            serde_json::json!(["QueueLength", "MessageRate"])
        );
        assert_eq!(rabbit["pageSize"]["x-kubernetes-int-or-string"], true);
        assert_eq!(rabbit["pageSize"]["maximum"], 500.0);
        assert_eq!(rabbit["value"]["type"], "number");
        assert!(
            rabbit.get("tls").is_none(),
            "files of spillway's pod are config-file only"
        );
        assert_eq!(
            trigger["natsJetStream"]["properties"]["accountID"]["type"],
            "string"
        );
        // A credential in a ScaledObject is a Secret reference only.
        let password = &kafka["password"];
        assert_eq!(password["required"], serde_json::json!(["secretKeyRef"]));
        assert!(password["properties"].get("file").is_none());
        // The HPA behavior is the autoscaling/v2 type, inlined.
        let behavior =
            &p["advanced"]["properties"]["horizontalPodAutoscalerConfig"]["properties"]["behavior"];
        assert_eq!(
            behavior["properties"]["scaleUp"]["properties"]["selectPolicy"]["type"],
            "string"
        );
        assert_eq!(
            schema["properties"]["metadata"]["properties"]["name"]["maxLength"],
            MAX_NAME_LENGTH
        );
    }

    #[test]
    fn fallback_behavior_and_restore_read_as_keda_writes_them() {
        let spec = |extra: &str| {
            serde_norway::from_str::<ScaledObjectSpec>(&format!(
                "scaleTargetRef: {{name: w}}\ntriggers: [{{rabbitmq: {{host: 'amqp://r/', queueName: q, value: 5}}}}]\n{extra}"
            ))
        };
        let plain = spec("fallback: {failureThreshold: 3, replicas: 6}").unwrap();
        let fallback = plain.fallback.as_ref().unwrap();
        assert_eq!(fallback.behavior, FallbackBehavior::Static);
        assert!(!plain.restores_original_replicas());
        // static is the default, so it is not written back.
        assert_eq!(
            serde_json::to_value(fallback).unwrap(),
            serde_json::json!({"failureThreshold": 3, "replicas": 6})
        );
        for (text, behavior) in [
            ("static", FallbackBehavior::Static),
            ("currentReplicas", FallbackBehavior::CurrentReplicas),
            (
                "currentReplicasIfHigher",
                FallbackBehavior::CurrentReplicasIfHigher,
            ),
            (
                "currentReplicasIfLower",
                FallbackBehavior::CurrentReplicasIfLower,
            ),
            ("scalingModifiers", FallbackBehavior::ScalingModifiers),
        ] {
            let read = spec(&format!(
                "fallback: {{failureThreshold: 3, replicas: 6, behavior: {text}}}"
            ))
            .unwrap();
            assert_eq!(read.fallback.unwrap().behavior, behavior);
            assert_eq!(behavior.as_str(), text);
        }
        let err = spec("fallback: {failureThreshold: 3, replicas: 6, behavior: fromFormula}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fromFormula") && err.contains("currentReplicasIfHigher"),
            "{err}"
        );
        let restoring = spec("advanced: {restoreToOriginalReplicaCount: true}").unwrap();
        assert!(restoring.restores_original_replicas());
        assert_eq!(
            serde_json::to_value(restoring.advanced.unwrap()).unwrap(),
            serde_json::json!({"restoreToOriginalReplicaCount": true})
        );
    }

    #[test]
    fn derived_definition_and_adjusted_one_differ_only_in_the_schema() {
        let derived = ScaledObject::crd();
        let adjusted = crd();
        assert_eq!(derived.metadata, adjusted.metadata);
        assert_eq!(derived.spec.names, adjusted.spec.names);
        assert_eq!(
            derived.spec.versions[0].additional_printer_columns,
            adjusted.spec.versions[0].additional_printer_columns
        );
    }

    #[test]
    fn status_round_trips_with_conditions() {
        let status: ScaledObjectStatus = serde_norway::from_str(
            r#"
conditions:
  - type: Ready
    status: "True"
    reason: ScaledObjectReady
    message: HPA spillway-orders is in place
    lastTransitionTime: "2025-01-01T00:00:00Z"
hpaName: spillway-orders
lastActiveTime: "2025-01-01T00:00:05Z"
triggers:
  - index: 0
    metric: s0-kafka-orders
    value: "1500"
    lastPollTime: "2025-01-01T00:00:05Z"
  - index: 1
    metric: s1-rabbitmq-orders-retry
    lastError: "rabbitmq amqp://rabbitmq.shop:5672/: queue orders-retry not found"
    consecutiveFailures: 2
"#,
        )
        .unwrap();
        assert_eq!(status.conditions[0].type_, condition::READY);
        assert_eq!(status.triggers[1].consecutive_failures, Some(2));
        let again: ScaledObjectStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(again, status);
    }
}
