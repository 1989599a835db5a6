//! From a ScaledObject to what the poller and the metrics API read: the same
//! [`ScaledObjectConfig`] a config file yields, and the [`Trigger`]s with their ids. Also the
//! credentials of those triggers: a ScaledObject names Secrets, which are read here (from the
//! controller's Secret cache) before the poller sees the triggers, so the poller never waits on
//! the API server; an `authenticationRef` is first turned into the `secretKeyRef`s its
//! TriggerAuthentication maps ([`resolve_authentication`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::cache::TriggerId;
use crate::composite::Composite;
use crate::config::{self, ScaledObjectConfig, TriggerConfig};
use crate::formula::Formula;
use crate::scalers::{Trigger, served_metric_name};
use crate::secret::{
    AuthenticationKind, AuthenticationRef, SecretError, SecretKeyRef, SecretReader, SecretSource,
};

use super::crd::{FallbackBehavior, ScaledObject};
use super::trigger_auth::{TriggerAuthError, TriggerAuthReader, describe, fill_credentials};

/// Why a ScaledObject cannot be handed to the poller. Each variant names the field, as a
/// status condition's message would.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The object lacks what the API server always sets (a name, a namespace).
    #[error("metadata.{0} is not set")]
    MissingMetadata(&'static str),
    #[error("spec.{field}: {message}")]
    Invalid { field: String, message: String },
    /// A credential names a file: only Secrets may be named by a ScaledObject.
    #[error(
        "spec.triggers[{index}].{field}: a ScaledObject names Secrets (secretKeyRef), not files of spillway's pod"
    )]
    FileSecret { index: usize, field: String },
    /// The authentication a trigger names could not supply its credentials.
    #[error("spec.triggers[{index}].authenticationRef: {source}")]
    Authentication {
        index: usize,
        #[source]
        source: Box<TriggerAuthError>,
    },
    /// A Secret a trigger names could not be read.
    #[error("spec.triggers[{index}].{field}: {source}")]
    Secret {
        index: usize,
        field: String,
        #[source]
        source: Box<SecretError>,
    },
}

impl SpecError {
    /// True when the object may be fine and only its Secrets could not be read now (see
    /// [`SecretError::is_transient`]): its last registration stays. Every other error is
    /// an answer: the object cannot be served as it is.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Secret { source, .. } => source.is_transient(),
            Self::Authentication { source, .. } => source.is_transient(),
            Self::MissingMetadata(_) | Self::Invalid { .. } | Self::FileSecret { .. } => false,
        }
    }

    /// A stable CamelCase name, for a status condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Secret { source, .. } => source.reason(),
            Self::Authentication { source, .. } => source.reason(),
            Self::MissingMetadata(_) | Self::Invalid { .. } | Self::FileSecret { .. } => {
                "InvalidSpec"
            }
        }
    }
}

impl ScaledObject {
    /// The name and namespace, which every object from the API server has.
    pub fn name_and_namespace(&self) -> Result<(&str, &str), SpecError> {
        let name = self
            .metadata
            .name
            .as_deref()
            .ok_or(SpecError::MissingMetadata("name"))?;
        let namespace = self
            .metadata
            .namespace
            .as_deref()
            .ok_or(SpecError::MissingMetadata("namespace"))?;
        Ok((name, namespace))
    }

    /// The scaled object as a config file would hold it: what the poller and the metrics API
    /// need. Checks the replica counts and the trigger entries again (an object may predate a
    /// schema change, or come from elsewhere than the API server) and refuses file credentials;
    /// `secretKeyRef`s stay unfetched (see [`resolve_secrets`]). A config entry has no polling
    /// interval of its own: `spec.pollingInterval` stays with the ScaledObject.
    pub fn to_config(&self) -> Result<ScaledObjectConfig, SpecError> {
        let (name, namespace) = self.name_and_namespace()?;
        let spec = &self.spec;
        let invalid = |field: &str, message: String| SpecError::Invalid {
            field: field.to_owned(),
            message,
        };
        let min = u32::try_from(spec.min_replica_count)
            .map_err(|_| invalid("minReplicaCount", "must not be negative".into()))?;
        let max = u32::try_from(spec.max_replica_count)
            .ok()
            .filter(|max| *max >= 1)
            .ok_or_else(|| invalid("maxReplicaCount", "must be at least 1".into()))?;
        if min > max {
            return Err(invalid(
                "minReplicaCount",
                format!("{min} is above maxReplicaCount {max}"),
            ));
        }
        if let Some(idle) = spec.idle_replica_count
            && (idle < 0 || idle >= spec.min_replica_count)
        {
            return Err(invalid(
                "idleReplicaCount",
                format!(
                    "{idle} must be at least 0 and less than minReplicaCount {}",
                    spec.min_replica_count
                ),
            ));
        }
        if spec.triggers.is_empty() {
            return Err(invalid("triggers", "needs at least one trigger".into()));
        }
        let mut read_by_spillway = 0;
        for (index, entry) in spec.triggers.iter().enumerate() {
            match entry.resource() {
                Some((name, resource)) if entry.is_resource_only() => {
                    check_resource_trigger(index, entry, name, resource)?;
                }
                _ => {
                    trigger_of(index, entry)?;
                    read_by_spillway += 1;
                }
            }
            if let Some(name) = &entry.name
                && spec.triggers[..index]
                    .iter()
                    .any(|other| other.name.as_ref() == Some(name))
            {
                return Err(invalid(
                    &format!("triggers[{index}].name"),
                    format!("{name:?} names an earlier trigger too: trigger names must be unique"),
                ));
            }
            if spec.fallback.is_some()
                && spec.scaling_modifiers().is_none()
                && !entry.is_resource_only()
                && entry.metric_type != config::MetricType::AverageValue
            {
                return Err(invalid(
                    &format!("triggers[{index}].metricType"),
                    "fallback needs AverageValue triggers: the replicas a Value target yields depend on the current replicas".into(),
                ));
            }
            let mut entry = entry.clone();
            if let Some(field) =
                entry_secret_sources(&mut entry)
                    .into_iter()
                    .find_map(|(field, source)| {
                        matches!(source, SecretSource::File(_)).then_some(field)
                    })
            {
                return Err(SpecError::FileSecret { index, field });
            }
        }
        // As KEDA: the HPA cannot take a target to zero on its resource metrics alone (no pods,
        // no metrics), and fallback steers through the metrics spillway serves.
        if read_by_spillway == 0 {
            if min == 0 {
                return Err(invalid(
                    "minReplicaCount",
                    "0 needs a trigger other than cpu and memory: with no pods there is no cpu or memory to read".into(),
                ));
            }
            if spec.fallback.is_some() {
                return Err(invalid(
                    "fallback",
                    "needs a trigger other than cpu and memory: the HPA reads those itself".into(),
                ));
            }
        }
        self.composite()?;
        Ok(ScaledObjectConfig {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            min_replica_count: min,
            max_replica_count: max,
            scale_target_ref: Some(config::ScaleTargetRef {
                api_version: spec.scale_target_ref.api_version.clone(),
                kind: spec.scale_target_ref.kind.clone(),
                name: spec.scale_target_ref.name.clone(),
            }),
            triggers: spec.triggers.clone(),
        })
    }
}

impl ScaledObject {
    /// The composite metric of `advanced.scalingModifiers`, its formula compiled over the names
    /// of the triggers spillway polls (`None` without it). Refuses a formula that does not
    /// compile or cannot give a number, a target not above 0, `fallback.behavior:
    /// scalingModifiers` without a formula, and fallback on a Value composite.
    pub fn composite(&self) -> Result<Option<Composite>, SpecError> {
        let spec = &self.spec;
        let invalid = |field: &str, message: String| SpecError::Invalid {
            field: field.to_owned(),
            message,
        };
        let Some(modifiers) = spec.scaling_modifiers() else {
            if spec
                .fallback
                .as_ref()
                .is_some_and(|f| f.behavior == FallbackBehavior::ScalingModifiers)
            {
                return Err(invalid(
                    "fallback.behavior",
                    "scalingModifiers needs advanced.scalingModifiers".into(),
                ));
            }
            return Ok(None);
        };
        let field = "advanced.scalingModifiers";
        if !(modifiers.target.is_finite() && modifiers.target > 0.0) {
            return Err(invalid(
                &format!("{field}.target"),
                format!("{} must be a number above 0", modifiers.target),
            ));
        }
        if !modifiers.activation_target.is_finite() {
            return Err(invalid(
                &format!("{field}.activationTarget"),
                "must be a finite number".into(),
            ));
        }
        if spec.fallback.is_some() && modifiers.metric_type != config::MetricType::AverageValue {
            return Err(invalid(
                &format!("{field}.metricType"),
                "fallback needs AverageValue: the replicas a Value target yields depend on the current replicas".into(),
            ));
        }
        let (names, inputs): (Vec<String>, Vec<usize>) = spec
            .triggers
            .iter()
            .enumerate()
            .filter(|(_, entry)| !entry.is_resource_only())
            .filter_map(|(index, entry)| entry.name.clone().map(|name| (name, index)))
            .unzip();
        let formula = Formula::compile(&modifiers.formula, &names)
            .map_err(|err| invalid(&format!("{field}.formula"), err.to_string()))?;
        Ok(Some(Composite {
            formula: Arc::new(formula),
            target: modifiers.target,
            activation_target: modifiers.activation_target,
            metric_type: modifiers.metric_type,
            inputs,
            nil_in_fallback: spec
                .fallback
                .as_ref()
                .is_some_and(|f| f.behavior == FallbackBehavior::ScalingModifiers),
        }))
    }
}

/// The triggers of one scaled object with their ids, in order: what the poller's `tick` takes
/// and the metrics API's catalog lists.
pub fn triggers(config: &ScaledObjectConfig) -> Result<Vec<(TriggerId, Trigger)>, SpecError> {
    config
        .triggers
        .iter()
        .enumerate()
        // cpu and memory are the HPA's to read; their indices stay those of `spec.triggers`.
        .filter(|(_, entry)| !entry.is_resource_only())
        .map(|(index, entry)| {
            let id = TriggerId {
                namespace: config.namespace.clone(),
                scaled_object: config.name.clone(),
                index,
            };
            Ok((id, trigger_of(index, entry)?))
        })
        .collect()
}

/// The served metric name of each trigger, `s<index>-<name>`, in order.
pub fn metric_names(config: &ScaledObjectConfig) -> Result<Vec<String>, SpecError> {
    Ok(triggers(config)?
        .iter()
        .map(|(id, trigger)| served_metric_name(id.index, trigger))
        .collect())
}

/// Reads every `secretKeyRef` of `config`'s triggers from its namespace, so the scalers read
/// them from memory. Read again at each call: a rotated Secret is picked up when the
/// controller next converts the object.
pub async fn resolve_secrets(
    config: &mut ScaledObjectConfig,
    reader: &impl SecretReader,
) -> Result<(), SpecError> {
    let namespace = config.namespace.clone();
    for (index, entry) in config.triggers.iter_mut().enumerate() {
        for (field, source) in entry_secret_sources(entry) {
            source
                .resolve(reader, &namespace)
                .await
                .map_err(|source| SpecError::Secret {
                    index,
                    field,
                    source: Box::new(source),
                })?;
        }
    }
    Ok(())
}

/// The `authenticationRef`s of `config`'s triggers, each once.
pub fn authentication_refs(config: &ScaledObjectConfig) -> Vec<AuthenticationRef> {
    let mut references: Vec<AuthenticationRef> = Vec::new();
    for reference in config
        .triggers
        .iter()
        .filter_map(|entry| entry.authentication_ref.as_ref())
    {
        if !references.contains(reference) {
            references.push(reference.clone());
        }
    }
    references
}

/// Turns each trigger's `authenticationRef` into the `secretKeyRef`s its authentication maps
/// to the trigger's credential fields (not fetched yet: [`resolve_secrets`] does that). A
/// TriggerAuthentication is read from `config`'s namespace only, and so are its Secrets; a
/// ClusterTriggerAuthentication's Secrets are read from `cluster_namespace` (spillway's own).
pub async fn resolve_authentication(
    config: &mut ScaledObjectConfig,
    reader: &impl TriggerAuthReader,
    cluster_namespace: &str,
) -> Result<(), SpecError> {
    let namespace = config.namespace.clone();
    for (index, entry) in config.triggers.iter_mut().enumerate() {
        let Some(reference) = entry.authentication_ref.clone() else {
            continue;
        };
        let failed = |source| SpecError::Authentication {
            index,
            source: Box::new(source),
        };
        let credentials = reader
            .read_authentication(&namespace, &reference)
            .await
            .map_err(failed)?;
        let secret_namespace = match reference.kind {
            AuthenticationKind::TriggerAuthentication => None,
            AuthenticationKind::ClusterTriggerAuthentication => Some(cluster_namespace),
        };
        let object = describe(&reference, &namespace);
        let filled =
            fill_credentials(entry, &credentials, &object, secret_namespace).map_err(failed)?;
        tracing::debug!(%namespace, scaled_object = %config.name, trigger = index, authentication = %object, ?filled, "credentials from an authenticationRef");
    }
    Ok(())
}

/// The `secretKeyRef`s of `entry` not fetched yet, each with the field its trigger reads it
/// from, as the trigger's errors name it (`password`, `tls.clientPkcs12Password`).
pub fn unfetched_secrets(entry: &mut TriggerConfig) -> Vec<(String, &mut SecretKeyRef)> {
    entry_secret_sources(entry)
        .into_iter()
        .filter_map(|(field, source)| match source {
            SecretSource::SecretKeyRef(reference) if !reference.is_resolved() => {
                // Without the broker's key that entry_secret_sources puts first.
                let field = field.split_once('.').map_or(field.as_str(), |(_, f)| f);
                Some((field.to_owned(), reference))
            }
            _ => None,
        })
        .collect()
}

/// The Secrets `config`'s triggers name, by namespace and name: its own namespace, or
/// spillway's for those a ClusterTriggerAuthentication maps.
pub fn secret_names(config: &ScaledObjectConfig) -> BTreeSet<(String, String)> {
    let mut triggers = config.triggers.clone();
    triggers
        .iter_mut()
        .flat_map(entry_secret_sources)
        .filter_map(|(_, source)| match source {
            SecretSource::SecretKeyRef(reference) => Some((
                reference.namespace(&config.namespace).to_owned(),
                reference.name.clone(),
            )),
            SecretSource::File(_) => None,
        })
        .collect()
}

/// A cpu or memory entry: its target, and none of what only triggers spillway reads take.
fn check_resource_trigger(
    index: usize,
    entry: &TriggerConfig,
    name: config::ResourceName,
    resource: &config::ResourceTrigger,
) -> Result<(), SpecError> {
    let invalid = |field: String, message: &str| SpecError::Invalid {
        field,
        message: message.to_owned(),
    };
    if entry.metric_type != config::MetricType::AverageValue {
        return Err(invalid(
            format!("triggers[{index}].metricType"),
            "cpu and memory triggers give their target as utilization or averageValue, not metricType",
        ));
    }
    if entry.authentication_ref.is_some() {
        return Err(invalid(
            format!("triggers[{index}].authenticationRef"),
            "cpu and memory triggers take no credentials",
        ));
    }
    resource.validate().map_err(|(field, message)| {
        invalid(
            format!("triggers[{index}].{}.{field}", name.as_str()),
            &message,
        )
    })
}

fn trigger_of(index: usize, entry: &TriggerConfig) -> Result<Trigger, SpecError> {
    entry.trigger().map_err(|keys| SpecError::Invalid {
        field: format!("triggers[{index}]"),
        message: if keys.is_empty() {
            format!(
                "names no broker: set one of {}",
                Trigger::CONFIG_KEYS.join(", ")
            )
        } else {
            format!("sets {}: one broker per trigger", keys.join(" and "))
        },
    })
}

/// The credentials of a config entry, with their paths (`kafka.password`), as each trigger
/// classes its own fields ([`crate::scalers::TriggerParams::secret_sources`]).
fn entry_secret_sources(entry: &mut TriggerConfig) -> Vec<(String, &mut SecretSource)> {
    entry
        .triggers_mut()
        .into_iter()
        .flat_map(|(key, trigger)| {
            trigger
                .secret_sources()
                .into_iter()
                .map(move |(field, source)| (format!("{key}.{field}"), source))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use axum::http::{Request, Response, StatusCode};
    use kube::client::Body;

    use crate::config::Config;
    use crate::registry::catalog;
    use crate::scalers::cron::CronTrigger;

    const SO: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata:
  name: orders-consumer
  namespace: shop
spec:
  scaleTargetRef: {name: orders-consumer}
  minReplicaCount: 1
  maxReplicaCount: 20
  triggers:
    - kafka:
        bootstrapServers: kafka:9092
        consumerGroup: orders
        topic: orders
        lagThreshold: 50
        sasl: plaintext
        username: orders
        password: {secretKeyRef: {name: kafka-orders, key: password}}
    - natsJetStream:
        natsServerMonitoringEndpoint: nats:8222
        stream: ORDERS
        consumer: worker
"#;

    fn so(text: &str) -> ScaledObject {
        serde_norway::from_str(text).unwrap()
    }

    const MODIFIED: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {name: orders, namespace: shop}
spec:
  scaleTargetRef: {name: orders}
  advanced:
    scalingModifiers: {formula: "(kafka + rabbit) / 2", target: 10, activationTarget: 2}
  triggers:
    - cpu: {utilization: 60}
      name: cpu
    - name: kafka
      kafka: {bootstrapServers: "k:9092", consumerGroup: g, topic: t}
    - cron: {timezone: UTC, start: "0 8 * * *", end: "0 9 * * *", desiredReplicas: 2}
    - name: rabbit
      rabbitmq: {host: "http://r:15672", queueName: q, mode: QueueLength, value: 5}
"#;

    #[test]
    fn scaling_modifiers_compile_over_the_named_triggers_spillway_reads() {
        let composite = so(MODIFIED).composite().unwrap().expect("a composite");
        assert_eq!(composite.formula.names(), ["kafka", "rabbit"]);
        assert_eq!(composite.inputs, [1, 3], "indices in spec.triggers");
        assert_eq!((composite.target, composite.activation_target), (10.0, 2.0));
        assert!(!composite.nil_in_fallback);
        so(MODIFIED).to_config().unwrap();

        let refused = |from: &str, to: &str| {
            let text = MODIFIED.replace(from, to);
            so(&text).to_config().unwrap_err().to_string()
        };
        // cpu is the HPA's to read: it has no value in a formula.
        let err = refused("(kafka + rabbit) / 2", "kafka + cpu");
        assert!(
            err.starts_with("spec.advanced.scalingModifiers.formula: unknown name \"cpu\""),
            "{err}"
        );
        let err = refused("(kafka + rabbit) / 2", "kafka > 1");
        assert!(err.contains("not a number"), "{err}");
        let err = refused("target: 10", "target: 0");
        assert!(err.contains("scalingModifiers.target"), "{err}");
        let with_value = MODIFIED
            .replace(
                "activationTarget: 2}",
                "activationTarget: 2, metricType: Value}",
            )
            .replace(
                "  triggers:",
                "  fallback: {failureThreshold: 2, replicas: 3}\n  triggers:",
            );
        let err = so(&with_value).to_config().unwrap_err().to_string();
        assert!(err.contains("scalingModifiers.metricType"), "{err}");

        // fallback.behavior scalingModifiers: the triggers in fallback are nil in the formula.
        let nil = MODIFIED.replace(
            "  triggers:",
            "  fallback: {failureThreshold: 2, replicas: 3, behavior: scalingModifiers}\n  triggers:",
        );
        assert!(so(&nil).composite().unwrap().unwrap().nil_in_fallback);
        let without = nil.replace(
            "  advanced:\n    scalingModifiers: {formula: \"(kafka + rabbit) / 2\", target: 10, activationTarget: 2}\n",
            "",
        );
        let err = so(&without).to_config().unwrap_err().to_string();
        assert!(
            err.contains("fallback.behavior: scalingModifiers needs advanced.scalingModifiers"),
            "{err}"
        );
        // Value triggers are fine with fallback here: the HPA reads only the composite.
        let value_trigger = nil.replace("value: 5}", "value: 5}\n      metricType: Value");
        so(&value_trigger).to_config().unwrap();
    }

    const WITH_CPU: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {name: api, namespace: shop}
spec:
  scaleTargetRef: {name: api}
  minReplicaCount: 1
  triggers:
    - cpu: {utilization: 60}
    - cron: {timezone: UTC, start: "0 8 * * *", end: "0 9 * * *", desiredReplicas: 2}
    - memory: {averageValue: 512Mi, containerName: api}
"#;

    #[test]
    fn cpu_and_memory_triggers_are_the_hpa_s_and_keep_the_other_triggers_indices() {
        let config = so(WITH_CPU).to_config().unwrap();
        let ids: Vec<usize> = triggers(&config)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id.index)
            .collect();
        assert_eq!(
            ids,
            [1],
            "only the cron trigger is spillway's to poll, at its own index"
        );
        assert_eq!(metric_names(&config).unwrap(), ["s1-cron-utc-08xxx-09xxx"]);
    }

    #[test]
    fn cpu_and_memory_triggers_are_refused_where_keda_refuses_them() {
        let refused = |change: &dyn Fn(&mut ScaledObject), field: &str, words: &str| {
            let mut object = so(WITH_CPU);
            change(&mut object);
            match object.to_config() {
                Err(SpecError::Invalid { field: f, message }) => {
                    assert_eq!(f, field, "{message}");
                    assert!(message.contains(words), "{message}");
                }
                other => panic!("{field}: {other:?}"),
            }
        };
        let only_resources = |o: &mut ScaledObject| {
            o.spec.triggers.remove(1);
        };
        refused(
            &|o| {
                only_resources(o);
                o.spec.min_replica_count = 0;
            },
            "minReplicaCount",
            "needs a trigger other than cpu and memory",
        );
        refused(
            &|o| {
                only_resources(o);
                o.spec.fallback = Some(
                    serde_json::from_value(
                        serde_json::json!({"failureThreshold": 3, "replicas": 2}),
                    )
                    .unwrap(),
                );
            },
            "fallback",
            "needs a trigger other than cpu and memory",
        );
        refused(
            &|o| o.spec.triggers[0].metric_type = config::MetricType::Value,
            "triggers[0].metricType",
            "utilization or averageValue",
        );
        refused(
            &|o| o.spec.triggers[2].memory.as_mut().unwrap().average_value = Some("lots".into()),
            "triggers[2].memory.averageValue",
            "not a Kubernetes quantity",
        );
        refused(
            &|o| o.spec.triggers[0].cpu.as_mut().unwrap().utilization = Some(0),
            "triggers[0].cpu.utilization",
            "at least 1",
        );
        refused(
            &|o| o.spec.triggers[0].cpu.as_mut().unwrap().average_value = Some("500m".into()),
            "triggers[0].cpu.utilization",
            "one of utilization or averageValue",
        );
        refused(
            &|o| {
                o.spec.triggers[2].memory.as_mut().unwrap().container_name = Some("No_Such".into())
            },
            "triggers[2].memory.containerName",
            "",
        );
        // A config file has no HPA to read them.
        let err = Config::parse(
            "spillway.yaml".as_ref(),
            "scaledObjects:\n  - {name: a, namespace: n, triggers: [{cpu: {utilization: 60}}]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cpu and memory triggers work in ScaledObjects only"),
            "{err}"
        );
    }

    #[test]
    fn a_scaled_object_becomes_the_config_entry_a_file_would_hold() {
        let config = so(SO).to_config().unwrap();
        // The same object written as a config file entry.
        let file = Config::parse(
            "spillway.yaml".as_ref(),
            r#"
scaledObjects:
  - name: orders-consumer
    namespace: shop
    scaleTargetRef: {name: orders-consumer}
    minReplicaCount: 1
    maxReplicaCount: 20
    triggers:
      - kafka:
          bootstrapServers: kafka:9092
          consumerGroup: orders
          topic: orders
          lagThreshold: 50
          sasl: plaintext
          username: orders
          password: {secretKeyRef: {name: kafka-orders, key: password}}
      - natsJetStream:
          natsServerMonitoringEndpoint: nats:8222
          stream: ORDERS
          consumer: worker
"#,
        )
        .unwrap();
        assert_eq!(config, file.scaled_objects[0]);
        let ids = triggers(&config).unwrap();
        assert_eq!(ids, file.triggers());
        assert_eq!(ids[1].0.to_string(), "shop/orders-consumer[1]");
        assert!(matches!(ids[0].1, Trigger::Kafka(_)));
        // The names the HPA will ask for are the ones the metrics API serves.
        let served: Vec<String> = catalog(&ids).into_iter().map(|m| m.metric).collect();
        assert_eq!(metric_names(&config).unwrap(), served);
        assert_eq!(served, ["s0-kafka-orders", "s1-nats-jetstream-orders"]);
    }

    #[test]
    fn file_credentials_are_refused() {
        let text = SO.replace(
            "{secretKeyRef: {name: kafka-orders, key: password}}",
            "{file: /var/run/secrets/kubernetes.io/serviceaccount/token}",
        );
        assert_eq!(
            so(&text).to_config().unwrap_err().to_string(),
            "spec.triggers[0].kafka.password: a ScaledObject names Secrets (secretKeyRef), not files of spillway's pod"
        );
    }

    #[test]
    fn structure_is_checked_again() {
        let mut object = so(SO);
        object.spec.min_replica_count = 30;
        assert_eq!(
            object.to_config().unwrap_err().to_string(),
            "spec.minReplicaCount: 30 is above maxReplicaCount 20"
        );
        let mut object = so(SO);
        object.spec.triggers[1].cron = Some(CronTrigger {
            timezone: "UTC".into(),
            start: "0 8 * * *".into(),
            end: "0 9 * * *".into(),
            desired_replicas: 1,
        });
        assert_eq!(
            object.to_config().unwrap_err().to_string(),
            "spec.triggers[1]: sets natsJetStream and cron: one broker per trigger"
        );
        let mut object = so(SO);
        object.spec.idle_replica_count = Some(1);
        assert_eq!(
            object.to_config().unwrap_err().to_string(),
            "spec.idleReplicaCount: 1 must be at least 0 and less than minReplicaCount 1"
        );
        let mut object = so(SO);
        object.metadata.namespace = None;
        assert_eq!(
            object.to_config().unwrap_err(),
            SpecError::MissingMetadata("namespace")
        );
    }

    #[test]
    fn the_secrets_an_object_names_are_listed_once() {
        let text = SO.replace(
            "    - natsJetStream:",
            "    - prometheus:\n        serverAddress: http://prometheus:9090\n        query: up\n        threshold: 1\n        bearerToken: {secretKeyRef: {name: kafka-orders, key: token}}\n        password: {secretKeyRef: {name: prom, key: password}}\n    - natsJetStream:",
        );
        let config = so(&text).to_config().unwrap();
        assert_eq!(
            secret_names(&config)
                .into_iter()
                .map(|(namespace, name)| format!("{namespace}/{name}"))
                .collect::<Vec<_>>(),
            ["shop/kafka-orders", "shop/prom"]
        );
    }

    #[test]
    fn only_secrets_unreadable_for_now_keep_a_registration() {
        let secret = |source: SecretError| SpecError::Secret {
            index: 0,
            field: "kafka.password".into(),
            source: Box::new(source),
        };
        let (namespace, name, key) = ("shop".to_owned(), "kafka".to_owned(), "password".to_owned());
        let cases = [
            (
                secret(SecretError::Unavailable {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    key: key.clone(),
                    cause: "connection refused".into(),
                }),
                true,
                "SecretUnavailable",
            ),
            (
                secret(SecretError::NotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    key: key.clone(),
                }),
                false,
                "SecretNotFound",
            ),
            (
                secret(SecretError::Refused {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    key: key.clone(),
                    cause: "forbidden (403)".into(),
                }),
                false,
                "SecretNotReadable",
            ),
            (
                secret(SecretError::MissingKey {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    key: key.clone(),
                }),
                false,
                "SecretKeyNotFound",
            ),
            (
                secret(SecretError::NotText {
                    namespace,
                    name,
                    key,
                }),
                false,
                "SecretNotText",
            ),
            (
                SpecError::Invalid {
                    field: "triggers".into(),
                    message: "needs at least one trigger".into(),
                },
                false,
                "InvalidSpec",
            ),
            (
                SpecError::FileSecret {
                    index: 0,
                    field: "kafka.password".into(),
                },
                false,
                "InvalidSpec",
            ),
            (SpecError::MissingMetadata("name"), false, "InvalidSpec"),
        ];
        for (err, transient, reason) in cases {
            assert_eq!(
                (err.is_transient(), err.reason()),
                (transient, reason),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn secrets_are_fetched_from_the_objects_namespace() {
        let service = tower::service_fn(|request: Request<Body>| async move {
            let (status, body) = if request.uri().path()
                == "/api/v1/namespaces/shop/secrets/kafka-orders"
            {
                // "hunter2", base64.
                (
                    StatusCode::OK,
                    r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"kafka-orders"},"data":{"password":"aHVudGVyMg=="}}"#,
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"not found","reason":"NotFound","code":404}"#,
                )
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(body.as_bytes().to_vec()))
                .unwrap();
            Ok::<_, Infallible>(response)
        });
        let client = kube::Client::new(service, "default");
        let mut config = so(SO).to_config().unwrap();
        resolve_secrets(&mut config, &client).await.unwrap();
        let Trigger::Kafka(kafka) = triggers(&config).unwrap().remove(0).1 else {
            panic!("the first trigger is kafka");
        };
        assert_eq!(
            kafka.client_config().unwrap().get("sasl.password"),
            Some("hunter2")
        );

        let mut missing = so(&SO.replace("name: kafka-orders", "name: gone"))
            .to_config()
            .unwrap();
        let err = resolve_secrets(&mut missing, &client).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.triggers[0].kafka.password: secret shop/gone (key password) does not exist"
        );
    }
}
