//! `spillway import-keda`: KEDA's objects (`keda.sh/v1alpha1` ScaledObjects,
//! TriggerAuthentications, ClusterTriggerAuthentications) turned into spillway's
//! (`spillway.dev/v1alpha1`) that behave the same. KEDA's defaults are written out where
//! spillway's differ; whatever cannot be carried over refuses its object, with the reason, and
//! every difference the import makes is listed: no field is dropped without a word.
//!
//! [`input`] reads documents (files, directories, stdin) and [`cluster`] reads a cluster;
//! [`scaled_object`] and [`authentication`] map objects, one module per broker maps a trigger's
//! `metadata` ([`kafka`], [`rabbitmq`], [`nats`], [`prometheus`], [`cron`]) through
//! [`params`]; each result passes spillway's own checks (the controller's, as `spillway plan`
//! runs them) before it is written. [`Report`] prints the YAML, the refusals and `--check`.

mod authentication;
pub mod cluster;
mod cron;
pub mod input;
mod kafka;
mod nats;
mod params;
mod prometheus;
mod rabbitmq;
mod resource;
mod scaled_object;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::config::TriggerConfig;
use crate::controller::crd::ScaledObject;
use crate::controller::trigger_auth::{
    ClusterTriggerAuthentication, Credentials, TriggerAuthentication,
};
use crate::secret::AuthenticationKind;

/// KEDA's API version, the one read.
pub const KEDA_API_VERSION: &str = "keda.sh/v1alpha1";

/// Why an import could not run at all (a refused object is not an error: see [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML or JSON, or a document that is not an object.
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cluster could not be read.
    #[error("cannot list {what} from the cluster: {cause}")]
    Cluster { what: String, cause: String },
    #[error("no KEDA object (apiVersion {KEDA_API_VERSION}) in the input")]
    Empty,
}

/// The kinds of KEDA objects the import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KedaKind {
    ScaledObject,
    ScaledJob,
    TriggerAuthentication,
    ClusterTriggerAuthentication,
}

impl KedaKind {
    /// The kind by its name in `kind:`.
    pub fn of(kind: &str) -> Option<Self> {
        Some(match kind {
            "ScaledObject" => Self::ScaledObject,
            "ScaledJob" => Self::ScaledJob,
            "TriggerAuthentication" => Self::TriggerAuthentication,
            "ClusterTriggerAuthentication" => Self::ClusterTriggerAuthentication,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScaledObject => "ScaledObject",
            Self::ScaledJob => "ScaledJob",
            Self::TriggerAuthentication => "TriggerAuthentication",
            Self::ClusterTriggerAuthentication => "ClusterTriggerAuthentication",
        }
    }
}

/// One KEDA object as read, with where it came from.
#[derive(Debug, Clone)]
pub struct KedaObject {
    pub kind: KedaKind,
    /// `file.yaml document 2`, or `cluster`.
    pub source: String,
    pub value: Value,
    /// Problems found outside the object that refuse it (a Secret it names is missing from
    /// the cluster).
    pub problems: Vec<String>,
}

impl KedaObject {
    /// `metadata.namespace`, when given; none for the cluster-scoped kind.
    pub fn namespace(&self) -> Option<String> {
        if self.kind == KedaKind::ClusterTriggerAuthentication {
            return None;
        }
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `metadata.name`, or the document it came from.
    pub fn name(&self) -> String {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("<no name, {}>", self.source), str::to_owned)
    }
}

/// An object's kind, namespace and name, as messages print it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName {
    pub kind: KedaKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.kind.as_str(), self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// A spillway object the import writes.
#[derive(Debug, Clone)]
pub enum Manifest {
    ScaledObject(Box<ScaledObject>),
    TriggerAuthentication(Box<TriggerAuthentication>),
    ClusterTriggerAuthentication(Box<ClusterTriggerAuthentication>),
}

impl Manifest {
    /// The object as one YAML document.
    pub fn to_yaml(&self) -> String {
        let text = match self {
            Self::ScaledObject(so) => serde_norway::to_string(so),
            Self::TriggerAuthentication(ta) => serde_norway::to_string(ta),
            Self::ClusterTriggerAuthentication(cta) => serde_norway::to_string(cta),
        };
        text.expect("a spillway object serializes")
    }
}

/// What became of one KEDA object.
#[derive(Debug, Clone)]
pub enum Outcome {
    Imported {
        object: ObjectName,
        manifest: Manifest,
        /// What behaves or reads differently, one sentence each.
        differences: Vec<String>,
    },
    Refused {
        object: ObjectName,
        reasons: Vec<String>,
    },
}

impl Outcome {
    pub fn object(&self) -> &ObjectName {
        match self {
            Self::Imported { object, .. } | Self::Refused { object, .. } => object,
        }
    }
}

/// Every object's outcome, in input order, and the documents that were not KEDA's.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Documents left alone: `file.yaml document 1: v1 Secret default/x`.
    pub ignored: Vec<String>,
}

/// How the objects were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// Files: a TriggerAuthentication a ScaledObject names may simply not have been given.
    Partial,
    /// A cluster: every authentication a ScaledObject names was listed, so a missing one does
    /// not exist.
    Complete,
}

/// Imports `objects`: authentications first (the ScaledObjects naming them are checked against
/// what they map), then ScaledObjects and ScaledJobs; outcomes in input order.
pub fn import(objects: &[KedaObject], ignored: Vec<String>, completeness: Completeness) -> Report {
    let credentials = credential_parameters();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; objects.len()];
    let mut seen: HashMap<ObjectName, String> = HashMap::new();
    let mut duplicate = |object: &KedaObject| -> Option<Outcome> {
        let id = ObjectName {
            kind: object.kind,
            namespace: object.namespace(),
            name: object.name(),
        };
        match seen.get(&id) {
            Some(first) => Some(Outcome::Refused {
                reasons: vec![format!(
                    "given twice: first in {first}; this one ({}) is not imported",
                    object.source
                )],
                object: id,
            }),
            None => {
                seen.insert(id, object.source.clone());
                None
            }
        }
    };
    let mut authentications = scaled_object::Authentications::new(completeness);
    for (i, object) in objects.iter().enumerate() {
        if matches!(
            object.kind,
            KedaKind::TriggerAuthentication | KedaKind::ClusterTriggerAuthentication
        ) {
            let outcome =
                duplicate(object).unwrap_or_else(|| authentication::map(object, &credentials));
            authentications.add(&outcome);
            outcomes[i] = Some(outcome);
        }
    }
    for (i, object) in objects.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let outcome = duplicate(object).unwrap_or_else(|| match object.kind {
            KedaKind::ScaledJob => Outcome::Refused {
                object: ObjectName {
                    kind: object.kind,
                    namespace: object.namespace(),
                    name: object.name(),
                },
                reasons: vec!["ScaledJobs (a Job per event) are not supported by spillway, which scales workloads only".to_owned()],
            },
            _ => scaled_object::map(object, &authentications),
        });
        outcomes[i] = Some(outcome);
    }
    Report {
        outcomes: outcomes.into_iter().flatten().collect(),
        ignored,
    }
}

/// Every parameter a spillway trigger takes from a Secret through a TriggerAuthentication
/// (spillway's names and KEDA's), read from the triggers themselves so a new credential field
/// counts here too.
fn credential_parameters() -> BTreeSet<&'static str> {
    let samples = [
        json!({"kafka": {"bootstrapServers": "k:9092", "consumerGroup": "g"}}),
        json!({"rabbitmq": {"queueName": "q", "value": 1}}),
        json!({"natsJetStream": {"natsServerMonitoringEndpoint": "n:8222", "stream": "s", "consumer": "c"}}),
        json!({"prometheus": {"threshold": 1}}),
        json!({"cron": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 9 * * *", "desiredReplicas": 1}}),
    ];
    let mut parameters = BTreeSet::new();
    for sample in samples {
        let mut entry: TriggerConfig =
            serde_json::from_value(sample).expect("a sample trigger deserializes");
        for (_, trigger) in entry.triggers_mut() {
            for slot in trigger.credential_slots() {
                parameters.insert(slot.parameter);
                parameters.extend(slot.keda_parameter);
            }
        }
    }
    parameters
}

/// The spillway `metadata` of `object`: its name and namespace, labels and annotations (the
/// caller handles KEDA's own annotations); what the API server set on the old object is left
/// out, and anything else is noted.
fn metadata_of(
    object: &KedaObject,
    reasons: &mut Vec<String>,
    differences: &mut Vec<String>,
) -> (String, Map<String, Value>) {
    let mut metadata = Map::new();
    let given = object.value.get("metadata").and_then(Value::as_object);
    let name = match given.and_then(|m| m.get("name")) {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(other) => {
            reasons.push(format!(
                "metadata.name: is {}, not a name",
                params::kind_of(other)
            ));
            object.name()
        }
        None => {
            reasons.push("metadata.name: missing".to_owned());
            object.name()
        }
    };
    metadata.insert("name".into(), Value::String(name.clone()));
    for (key, value) in given.into_iter().flatten() {
        match key.as_str() {
            "name" => {}
            "namespace" if object.kind != KedaKind::ClusterTriggerAuthentication => {
                metadata.insert(key.clone(), value.clone());
            }
            "labels" => {
                metadata.insert(key.clone(), value.clone());
            }
            "annotations" => {
                let mut annotations = value.as_object().cloned().unwrap_or_default();
                if annotations
                    .remove("kubectl.kubernetes.io/last-applied-configuration")
                    .is_some()
                {
                    differences.push("metadata.annotations: kubectl's last-applied-configuration left out (it describes the KEDA object)".to_owned());
                }
                if !annotations.is_empty() {
                    metadata.insert(key.clone(), Value::Object(annotations));
                }
            }
            // Set by the API server on the KEDA object; a new object gets its own.
            "uid" | "resourceVersion" | "generation" | "creationTimestamp" | "managedFields"
            | "selfLink" => {}
            other => differences.push(format!(
                "metadata.{other}: left out (it belongs to the KEDA object)"
            )),
        }
    }
    (name, metadata)
}

impl Report {
    /// Objects refused.
    pub fn refused(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Refused { .. }))
            .count()
    }

    /// Objects imported.
    pub fn imported(&self) -> usize {
        self.outcomes.len() - self.refused()
    }

    /// Every imported object as YAML documents, each after a comment naming its KEDA original
    /// and the differences.
    pub fn yaml(&self) -> String {
        self.documents()
            .into_iter()
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// Each imported object as (file name, YAML document).
    pub fn documents(&self) -> Vec<(String, String)> {
        self.outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Imported {
                    object,
                    manifest,
                    differences,
                } => {
                    let mut text = format!(
                        "# Imported from {KEDA_API_VERSION} {object} by spillway import-keda.\n"
                    );
                    for difference in differences {
                        text.push_str(&format!("# differs: {difference}\n"));
                    }
                    text.push_str(&manifest.to_yaml());
                    let file = match &object.namespace {
                        Some(namespace) => format!(
                            "{}-{namespace}-{}.yaml",
                            object.kind.as_str().to_lowercase(),
                            object.name
                        ),
                        None => format!(
                            "{}-{}.yaml",
                            object.kind.as_str().to_lowercase(),
                            object.name
                        ),
                    };
                    Some((file, text))
                }
                Outcome::Refused { .. } => None,
            })
            .collect()
    }

    /// Writes each imported object to its own file in `dir` (created if missing); returns the
    /// paths.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ImportError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        let mut written = Vec::new();
        for (file, text) in self.documents() {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(write_error(&path))?;
            written.push(path);
        }
        Ok(written)
    }

    /// The refusals and ignored documents, for stderr.
    pub fn refusals(&self) -> String {
        let mut text = String::new();
        for outcome in &self.outcomes {
            if let Outcome::Refused { object, reasons } = outcome {
                text.push_str(&format!("refused {object}:\n"));
                for reason in reasons {
                    text.push_str(&format!("  ! {reason}\n"));
                }
            }
        }
        for ignored in &self.ignored {
            text.push_str(&format!("ignored {ignored}\n"));
        }
        text
    }

    /// `--check`: per object, imported or refused, and what differs or why.
    pub fn check(&self) -> String {
        let mut text = String::new();
        for outcome in &self.outcomes {
            match outcome {
                Outcome::Imported {
                    object,
                    differences,
                    ..
                } => {
                    text.push_str(&format!("{object}: imported\n"));
                    if differences.is_empty() {
                        text.push_str("  = nothing differs\n");
                    }
                    for difference in differences {
                        text.push_str(&format!("  ~ {difference}\n"));
                    }
                }
                Outcome::Refused { object, reasons } => {
                    text.push_str(&format!("{object}: refused\n"));
                    for reason in reasons {
                        text.push_str(&format!("  ! {reason}\n"));
                    }
                }
            }
        }
        for ignored in &self.ignored {
            text.push_str(&format!("ignored {ignored}\n"));
        }
        text.push_str(&format!(
            "{} imported, {} refused, {} ignored\n",
            self.imported(),
            self.refused(),
            self.ignored.len()
        ));
        text
    }
}

/// The credentials an imported authentication maps, by kind, namespace and name.
fn credentials_of(manifest: &Manifest) -> Option<(AuthenticationKind, Credentials)> {
    match manifest {
        Manifest::TriggerAuthentication(ta) => Some((
            AuthenticationKind::TriggerAuthentication,
            ta.spec.credentials(),
        )),
        Manifest::ClusterTriggerAuthentication(cta) => Some((
            AuthenticationKind::ClusterTriggerAuthentication,
            cta.spec.credentials(),
        )),
        Manifest::ScaledObject(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricType;
    use crate::controller::hpa::EXCLUDED_LABELS_ANNOTATION;

    fn report(yaml: &str, completeness: Completeness) -> Report {
        let documents = input::parse("t.yaml", yaml).unwrap();
        import(&documents.objects, documents.ignored, completeness)
    }

    fn reasons(report: &Report, object: &str) -> String {
        report
            .outcomes
            .iter()
            .find_map(|o| match o {
                Outcome::Refused {
                    object: id,
                    reasons,
                } if id.to_string() == object => Some(reasons.join("\n")),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{object} not refused:\n{}", report.check()))
    }

    const SO: &str = "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: w\n  namespace: shop\n";

    #[test]
    fn pause_annotations_become_spec_fields_and_other_annotations_stay() {
        let yaml = format!(
            "{SO}  annotations: {{autoscaling.keda.sh/paused-replicas: '2', team: orders}}\nspec:\n  scaleTargetRef: {{name: w}}\n  fallback: {{failureThreshold: 3, replicas: 6, behavior: static}}\n  triggers: [{{type: kafka, metadata: {{bootstrapServers: 'k:9092', consumerGroup: g, topic: t}}}}]\n"
        );
        let report = report(&yaml, Completeness::Partial);
        let Outcome::Imported {
            manifest: Manifest::ScaledObject(so),
            differences,
            ..
        } = &report.outcomes[0]
        else {
            panic!("{}", report.check());
        };
        assert_eq!(so.spec.paused_replicas, Some(2));
        assert_eq!(
            so.spec
                .fallback
                .as_ref()
                .map(|f| (f.failure_threshold, f.replicas)),
            Some((3, 6))
        );
        let annotations = so.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.into_iter().collect::<Vec<_>>(),
            [("team".to_owned(), "orders".to_owned())]
        );
        let differences = differences.join("\n");
        assert!(
            differences.contains("written as spec.pausedReplicas: 2"),
            "{differences}"
        );
        assert!(
            differences.contains("fallback.behavior: static left out"),
            "{differences}"
        );
    }

    #[test]
    fn fallback_behaviors_and_the_restore_carry_over() {
        use crate::controller::crd::FallbackBehavior;
        for (text, behavior) in [
            ("currentReplicas", FallbackBehavior::CurrentReplicas),
            (
                "currentReplicasIfHigher",
                FallbackBehavior::CurrentReplicasIfHigher,
            ),
            (
                "currentReplicasIfLower",
                FallbackBehavior::CurrentReplicasIfLower,
            ),
        ] {
            let yaml = format!(
                "{SO}spec:\n  scaleTargetRef: {{name: w}}\n  fallback: {{failureThreshold: 3, replicas: 6, behavior: {text}}}\n  advanced: {{restoreToOriginalReplicaCount: true}}\n  triggers: [{{type: kafka, metadata: {{bootstrapServers: 'k:9092', consumerGroup: g, topic: t}}}}]\n"
            );
            let report = report(&yaml, Completeness::Partial);
            let Outcome::Imported {
                manifest: Manifest::ScaledObject(so),
                ..
            } = &report.outcomes[0]
            else {
                panic!("{}", report.check());
            };
            let fallback = so.spec.fallback.as_ref().unwrap();
            assert_eq!(
                (
                    fallback.failure_threshold,
                    fallback.replicas,
                    fallback.behavior
                ),
                (3, 6, behavior)
            );
            assert!(so.spec.restores_original_replicas(), "{text}");
        }
    }

    #[test]
    fn scaling_modifiers_come_over_with_numbers_for_keda_s_strings() {
        let yaml = format!(
            "{SO}spec:\n  scaleTargetRef: {{name: w}}\n  fallback: {{failureThreshold: 3, replicas: 6, behavior: scalingModifiers}}\n  advanced:\n    scalingModifiers: {{formula: \"(kafka ?? 0) + rabbit\", target: \"10\", activationTarget: \"1.5\", metricType: AverageValue}}\n  triggers:\n  - {{type: kafka, name: kafka, metadata: {{bootstrapServers: 'k:9092', consumerGroup: g, topic: t}}}}\n  - {{type: rabbitmq, name: rabbit, metadata: {{host: 'http://r:15672', queueName: q, mode: QueueLength, value: '20'}}}}\n"
        );
        let imported = report(&yaml, Completeness::Partial);
        let Outcome::Imported {
            manifest: Manifest::ScaledObject(so),
            differences,
            ..
        } = &imported.outcomes[0]
        else {
            panic!("{}", imported.check());
        };
        assert!(
            differences.join("\n").contains("expr-lang"),
            "{differences:?}"
        );
        let modifiers = so.spec.scaling_modifiers().expect("scalingModifiers");
        assert_eq!(modifiers.formula, "(kafka ?? 0) + rabbit");
        assert_eq!((modifiers.target, modifiers.activation_target), (10.0, 1.5));
        let composite = so.composite().unwrap().expect("compiles");
        assert!(composite.nil_in_fallback);
        assert_eq!(composite.inputs, [0, 1]);

        // A formula spillway cannot run is refused with the compiler's reason.
        let bad = yaml.replace("(kafka ?? 0) + rabbit", "kafka + queue");
        let refused = report(&bad, Completeness::Partial);
        let text = reasons(&refused, "ScaledObject shop/w");
        assert!(text.contains("unknown name \"queue\""), "{text}");
    }

    #[test]
    fn what_spillway_lacks_refuses_the_object_with_every_reason() {
        let yaml = format!(
            "{SO}  annotations: {{autoscaling.keda.sh/force-activation: 'true'}}\nspec:\n  scaleTargetRef: {{name: w}}\n  fallback: {{failureThreshold: 3, replicas: 6, behavior: sometimes}}\n  advanced: {{restoreToOriginalReplicaCount: 'yes'}}\n  unknownField: 1\n  triggers:\n  - {{type: memory, metadata: {{value: '80'}}}}\n  - {{type: aws-sqs-queue, metadata: {{queueURL: q}}}}\n---\napiVersion: keda.sh/v1alpha1\nkind: ScaledJob\nmetadata: {{name: j, namespace: shop}}\n"
        );
        let report = report(&yaml, Completeness::Partial);
        let text = reasons(&report, "ScaledObject shop/w");
        for phrase in [
            "force-activation]: spillway has no forced activation",
            "fallback.behavior: \"sometimes\" is not one of",
            "restoreToOriginalReplicaCount: \"yes\" is not a boolean",
            "spec.unknownField: is not a field spillway knows",
            "triggers[0].metadata.value: needs the trigger's metricType",
            "triggers[1].type: aws-sqs-queue is not supported",
        ] {
            assert!(text.contains(phrase), "missing {phrase:?} in\n{text}");
        }
        assert!(reasons(&report, "ScaledJob shop/j").contains("ScaledJobs"));
        assert_eq!(report.imported(), 0);
    }

    #[test]
    fn one_way_pauses_names_value_targets_labels_and_the_initial_cooldown_carry_over() {
        let yaml = format!(
            "{SO}  labels: {{team: orders, build: '7'}}\n  annotations: {{autoscaling.keda.sh/paused-scale-in: 'true', scaledobject.keda.sh/hpa-excluded-labels: build, scaledobject.keda.sh/transfer-hpa-ownership: 'true'}}\nspec:\n  scaleTargetRef: {{name: w}}\n  initialCooldownPeriod: 60\n  triggers:\n  - {{type: prometheus, name: latency, metricType: Value, metadata: {{serverAddress: 'http://p:9090', query: up, threshold: '1'}}}}\n  - {{type: cron, name: office, metricType: AverageValue, metadata: {{timezone: UTC, start: '0 8 * * *', end: '0 18 * * *', desiredReplicas: '2'}}}}\n"
        );
        let imported = report(&yaml, Completeness::Partial);
        let Outcome::Imported {
            manifest: Manifest::ScaledObject(so),
            differences,
            ..
        } = &imported.outcomes[0]
        else {
            panic!("{}", imported.check());
        };
        assert!(so.spec.paused_scale_in && !so.spec.paused_scale_out);
        assert_eq!(so.spec.initial_cooldown_period, Some(60));
        let names: Vec<_> = so.spec.triggers.iter().map(|t| t.name.as_deref()).collect();
        assert_eq!(names, [Some("latency"), Some("office")]);
        assert_eq!(so.spec.triggers[0].metric_type, MetricType::Value);
        assert_eq!(so.spec.triggers[1].metric_type, MetricType::AverageValue);
        assert_eq!(
            so.metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(EXCLUDED_LABELS_ANNOTATION)
                .map(String::as_str),
            Some("build")
        );
        assert_eq!(so.metadata.labels.as_ref().unwrap().len(), 2);
        let differences = differences.join("\n");
        assert!(
            differences.contains("written as spec.pausedScaleIn: true"),
            "{differences}"
        );
        assert!(
            differences.contains("transfer-hpa-ownership]: left out"),
            "{differences}"
        );

        // KEDA's default initialCooldownPeriod (0) is written out: spillway's unset one waits
        // cooldownPeriod after creation.
        let plain = report(
            &format!(
                "{SO}spec:\n  scaleTargetRef: {{name: w}}\n  triggers:\n  - {{type: prometheus, metadata: {{serverAddress: 'http://p:9090', query: up, threshold: '1'}}}}\n"
            ),
            Completeness::Partial,
        );
        let Outcome::Imported {
            manifest: Manifest::ScaledObject(so),
            ..
        } = &plain.outcomes[0]
        else {
            panic!("{}", plain.check());
        };
        assert_eq!(so.spec.initial_cooldown_period, Some(0));

        // A Value trigger under fallback is refused with the reason.
        let refused = report(
            &format!(
                "{SO}spec:\n  scaleTargetRef: {{name: w}}\n  fallback: {{failureThreshold: 3, replicas: 2}}\n  triggers:\n  - {{type: prometheus, metricType: Value, metadata: {{serverAddress: 'http://p:9090', query: up, threshold: '1'}}}}\n"
            ),
            Completeness::Partial,
        );
        assert!(
            reasons(&refused, "ScaledObject shop/w")
                .contains("fallback needs AverageValue triggers"),
            "{}",
            refused.check()
        );
    }

    #[test]
    fn an_authentication_is_checked_against_the_triggers_naming_it() {
        let yaml = "apiVersion: keda.sh/v1alpha1\nkind: TriggerAuthentication\nmetadata: {name: prom, namespace: shop}\nspec:\n  secretTargetRef: [{parameter: ca, name: s, key: ca}]\n---\napiVersion: keda.sh/v1alpha1\nkind: TriggerAuthentication\nmetadata: {name: env, namespace: shop}\nspec:\n  env: [{parameter: host, name: HOST}]\n---\napiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: w, namespace: shop}\nspec:\n  scaleTargetRef: {name: w}\n  triggers:\n  - {type: prometheus, metadata: {serverAddress: 'http://p:9090', query: up, threshold: '1'}, authenticationRef: {name: prom}}\n---\napiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: v, namespace: shop}\nspec:\n  scaleTargetRef: {name: v}\n  triggers:\n  - {type: rabbitmq, metadata: {queueName: q, mode: QueueLength, value: '5'}, authenticationRef: {name: env}}\n  - {type: rabbitmq, metadata: {host: 'amqp://r:5672/', queueName: q2}, authenticationRef: {name: gone}}\n";
        let partial = report(yaml, Completeness::Partial);
        assert!(
            reasons(&partial, "ScaledObject shop/w")
                .contains("parameter ca is not a credential of the prometheus trigger"),
            "{}",
            partial.check()
        );
        assert!(
            reasons(&partial, "TriggerAuthentication shop/env")
                .contains("spec.env: not supported by spillway")
        );
        let v = reasons(&partial, "ScaledObject shop/v");
        assert!(
            v.contains("TriggerAuthentication shop/env is refused"),
            "{v}"
        );
        assert!(
            !v.contains("gone"),
            "a reference not in the files is a note only: {v}"
        );
        // From a cluster every authentication was listed: one that is not there does not exist.
        let complete = report(yaml, Completeness::Complete);
        assert!(
            reasons(&complete, "ScaledObject shop/v")
                .contains("TriggerAuthentication shop/gone does not exist")
        );
    }

    #[test]
    fn a_cluster_trigger_authentication_says_where_its_secrets_go_and_duplicates_are_refused() {
        let cta = "apiVersion: keda.sh/v1alpha1\nkind: ClusterTriggerAuthentication\nmetadata: {name: rabbit}\nspec:\n  secretTargetRef: [{parameter: host, name: rabbit-url, key: url}]\n";
        let report = report(&format!("{cta}---\n{cta}"), Completeness::Partial);
        let Outcome::Imported {
            manifest: Manifest::ClusterTriggerAuthentication(imported),
            differences,
            ..
        } = &report.outcomes[0]
        else {
            panic!("{}", report.check());
        };
        assert_eq!(imported.spec.secret_target_ref[0].parameter, "host");
        assert!(differences[0].contains("Secrets rabbit-url are read from spillway's namespace"));
        assert!(
            reasons(&report, "ClusterTriggerAuthentication rabbit")
                .contains("given twice: first in t.yaml document 1")
        );
        assert_eq!(
            report.documents()[0].0,
            "clustertriggerauthentication-rabbit.yaml"
        );
    }
}
