//! What `spillway plan` computes with: a scaled object's numbers and HPA rules, each
//! trigger's value (given with `--value`, or polled once), and the errors of reading them.

use std::str::FromStr;

use super::hpa_rules::HpaRules;
use crate::cache::{TriggerId, TriggerState};
use crate::composite::{COMPOSITE_METRIC, Composite, FallbackRule, Input, Outcome};
use crate::config::{MetricType, ScaledObjectConfig, TriggerConfig};
use crate::controller::crd::ScaledObject;
pub use crate::controller::scale_to_zero::Fallback;
use crate::controller::scale_to_zero::TriggerActivity;
use crate::controller::triggers::{SpecError, triggers, unfetched_secrets};
use crate::scalers::{ActivationInput, ScalerError, Trigger, TriggerParams, served_metric_name};

/// KEDA's default `cooldownPeriod`, for scaled objects of a config file.
pub const DEFAULT_COOLDOWN_SECONDS: u32 = 300;

/// Why a plan cannot be made. Each variant names the file, the object or the `--value` at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The file is not YAML, or holds something other than spillway ScaledObjects.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// The ScaledObject breaks a rule the API server or spillway enforces.
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
    #[error("--value s{index}: {object} has no trigger s{index} (its triggers: {known})")]
    UnknownTrigger {
        object: String,
        index: usize,
        known: String,
    },
    #[error("--value s{index} is given twice")]
    DuplicateValue { index: usize },
    #[error("--value s{index}={value}: a value must be a finite number, 0 or more")]
    BadValue { index: usize, value: f64 },
    #[error("{object}: trigger s{index} ({metric}) has no value: add --value s{index}=N")]
    MissingValue {
        object: String,
        index: usize,
        metric: String,
    },
}

/// One `--value s<index>=<value>`: a trigger's value, given by hand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerValue {
    pub index: usize,
    pub value: f64,
}

impl FromStr for TriggerValue {
    type Err = String;

    /// `s0=450` (or `0=450`): the value of the trigger at that index of `triggers`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (index, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not s<index>=<value>, e.g. s0=450"))?;
        let digits = index.trim().strip_prefix('s').unwrap_or(index.trim());
        let index: usize = digits
            .parse()
            .map_err(|_| format!("{index:?} is not a trigger index such as s0"))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{value:?} is not a number"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!(
                "s{index}={value}: a value must be a finite number, 0 or more (a backlog is never negative)"
            ));
        }
        Ok(Self { index, value })
    }
}

/// What the HPA reads for one trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// A value, and whether it is above the trigger's activation value.
    Value { value: f64, active: bool },
    /// No value: the latest poll failed (or none was made).
    Failed {
        error: String,
        consecutive_failures: u32,
    },
}

impl Observed {
    /// What this says about the trigger's activity, for the step to or from zero.
    pub fn activity(&self) -> TriggerActivity {
        match *self {
            Self::Value { active, .. } => TriggerActivity::Read { active },
            Self::Failed {
                consecutive_failures,
                ..
            } => TriggerActivity::Failed {
                consecutive_failures,
            },
        }
    }
}

/// One trigger of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTrigger {
    /// The served metric name, `s<index>-<name>`.
    pub metric: String,
    /// The target, an AverageValue or a Value as `metric_type` says.
    pub target: f64,
    pub metric_type: MetricType,
    /// Values above this are active.
    pub activation: f64,
    pub observed: Observed,
}

impl PlanTrigger {
    /// How the plan names the trigger, `s<index>`: its index in `spec.triggers`, the served
    /// metric name's prefix (cpu and memory triggers have none, so it is not the position).
    pub fn label(&self) -> &str {
        metric_label(&self.metric)
    }
}

/// `s<index>` of a served metric name `s<index>-<name>`.
pub fn metric_label(metric: &str) -> &str {
    metric.split('-').next().unwrap_or(metric)
}

/// Whether scaling is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    Running,
    /// `paused: true`: the target keeps its count.
    Paused,
    /// `pausedReplicas`: the target is held at this count.
    PausedAt(u32),
}

/// Everything one plan needs: the scaled object's numbers, its triggers' values, the HPA's
/// rules, and the target's current count if known.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    /// `namespace/name`.
    pub object: String,
    pub triggers: Vec<PlanTrigger>,
    pub min_replica_count: u32,
    pub max_replica_count: u32,
    pub idle_replica_count: Option<u32>,
    pub cooldown_seconds: u32,
    pub fallback: Option<Fallback>,
    pub pause: Pause,
    pub rules: HpaRules,
    /// The target's replicas now; without it, no tolerance test and no step.
    pub current_replicas: Option<u32>,
    /// `advanced.scalingModifiers`: the HPA reads the formula over `triggers`, not them.
    pub composite: Option<Composite>,
    /// The cpu and memory triggers, described (`s1 cpu utilization 50 %`): the HPA reads them
    /// itself, so the plan only names them.
    pub resource_triggers: Vec<String>,
}

impl PlanInput {
    /// With `scalingModifiers`, the one metric the HPA reads, as a trigger of the plan: the
    /// formula over the triggers' values (see [`Composite::evaluate`]); no value is a failed
    /// metric, past the fallback threshold exactly when the served metric is the fallback value.
    pub fn composite_trigger(&self) -> Option<PlanTrigger> {
        let composite = self.composite.as_ref()?;
        let now = std::time::SystemTime::now();
        let inputs: Vec<(usize, Input)> = self
            .triggers
            .iter()
            .map(|t| {
                let index = t
                    .label()
                    .trim_start_matches('s')
                    .parse()
                    .unwrap_or(usize::MAX);
                let input = match &t.observed {
                    Observed::Value { value, .. } => Input::Read {
                        value: *value,
                        read_at: now,
                    },
                    Observed::Failed {
                        error,
                        consecutive_failures,
                    } => Input::Failed {
                        consecutive_failures: *consecutive_failures,
                        error: error.clone(),
                    },
                };
                (index, input)
            })
            .collect();
        let failures = self
            .triggers
            .iter()
            .filter_map(|t| match t.observed {
                Observed::Failed {
                    consecutive_failures,
                    ..
                } => Some(consecutive_failures),
                Observed::Value { .. } => None,
            })
            .max()
            .unwrap_or(0);
        let fallback = self.fallback.map(|f| FallbackRule {
            failure_threshold: f.failure_threshold,
            replicas: f.replicas,
        });
        let observed = match composite.evaluate_inputs(&inputs, fallback) {
            Outcome::Value { value, .. } => Observed::Value {
                value,
                active: value > composite.activation_target,
            },
            // Past the threshold, so the plan's fallback applies, as it does when served.
            Outcome::Fallback { why, .. } => Observed::Failed {
                error: why,
                consecutive_failures: failures.max(fallback.map_or(0, |f| f.failure_threshold + 1)),
            },
            // Served as a 503, which the HPA holds on: no fallback, whatever the failures.
            Outcome::Unavailable(why) => Observed::Failed {
                error: why,
                consecutive_failures: 0,
            },
        };
        Some(PlanTrigger {
            metric: COMPOSITE_METRIC.to_owned(),
            target: composite.target,
            metric_type: composite.metric_type,
            activation: composite.activation_target,
            observed,
        })
    }
}

/// A scaled object to plan for: its config entry (what the poller reads) and the plan input.
#[derive(Debug, Clone)]
pub struct PlanSource {
    pub config: ScaledObjectConfig,
    pub input: PlanInput,
}

impl PlanSource {
    /// From a ScaledObject as users write it, checked as the controller checks it (replica
    /// counts, one broker per trigger, each trigger's parameters, the behavior). A missing
    /// namespace is `default`, as for `kubectl apply`.
    pub fn from_scaled_object(so: &ScaledObject) -> Result<Self, PlanError> {
        let mut so = so.clone();
        so.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        let object = format!(
            "{}/{}",
            so.metadata.namespace.as_deref().unwrap_or_default(),
            so.metadata.name.as_deref().unwrap_or("<no name>")
        );
        let invalid = |message: String| PlanError::Invalid {
            object: object.clone(),
            message,
        };
        let config = so.to_config().map_err(|e| invalid(e.to_string()))?;
        check_triggers(&config).map_err(|m| invalid(format!("spec.{m}")))?;
        let spec = &so.spec;
        let behavior = spec
            .advanced
            .as_ref()
            .and_then(|a| a.horizontal_pod_autoscaler_config.as_ref())
            .and_then(|c| c.behavior.as_ref());
        let rules = HpaRules::from_behavior(behavior)
            .map_err(|m| invalid(format!("spec.advanced.horizontalPodAutoscalerConfig.{m}")))?;
        if spec.cooldown_period < 0 {
            return Err(invalid("spec.cooldownPeriod: must not be negative".into()));
        }
        let fallback = match &spec.fallback {
            None => None,
            Some(f) if f.failure_threshold < 0 || f.replicas < 0 => {
                return Err(invalid(
                    "spec.fallback: failureThreshold and replicas must not be negative".into(),
                ));
            }
            Some(f) => Some(Fallback {
                failure_threshold: f.failure_threshold as u32,
                replicas: f.replicas as u32,
                behavior: f.behavior,
            }),
        };
        let pause = match spec.paused_replicas {
            Some(n) if n < 0 => {
                return Err(invalid("spec.pausedReplicas: must not be negative".into()));
            }
            Some(n) => Pause::PausedAt(n as u32),
            None if spec.paused => Pause::Paused,
            None => Pause::Running,
        };
        let triggers = plan_triggers(&config).map_err(|e| invalid(e.to_string()))?;
        let composite = so.composite().map_err(|e| invalid(e.to_string()))?;
        let input = PlanInput {
            object,
            triggers,
            min_replica_count: config.min_replica_count,
            max_replica_count: config.max_replica_count,
            // Checked by to_config: 0 or more, below minReplicaCount.
            idle_replica_count: spec.idle_replica_count.map(|n| n as u32),
            cooldown_seconds: spec.cooldown_period as u32,
            fallback,
            pause,
            rules,
            current_replicas: None,
            composite,
            resource_triggers: resource_triggers(&config),
        };
        Ok(Self { config, input })
    }

    /// From a config file's entry (validated when the file was loaded): no behavior, idle
    /// count, fallback or pause there, and KEDA's default cooldown.
    pub fn from_config(config: &ScaledObjectConfig) -> Result<Self, PlanError> {
        let object = format!("{}/{}", config.namespace, config.name);
        let input = PlanInput {
            triggers: plan_triggers(config).map_err(|e| PlanError::Invalid {
                object: object.clone(),
                message: e.to_string(),
            })?,
            object,
            min_replica_count: config.min_replica_count,
            max_replica_count: config.max_replica_count,
            idle_replica_count: None,
            cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
            fallback: None,
            pause: Pause::Running,
            rules: HpaRules::Builtin,
            current_replicas: None,
            composite: None,
            resource_triggers: Vec::new(),
        };
        Ok(Self {
            config: config.clone(),
            input,
        })
    }

    /// The triggers with their ids, as the poller takes them.
    pub fn triggers(&self) -> Result<Vec<(TriggerId, Trigger)>, SpecError> {
        triggers(&self.config)
    }

    /// Sets every trigger's value from `--value`s: each index must exist, once, and every
    /// trigger needs a value. Whether it is active is the trigger's own rule on the value alone
    /// (see [`ActivationInput`] for where the scaler, which has the backlog, may differ).
    pub fn set_values(&mut self, values: &[TriggerValue]) -> Result<(), PlanError> {
        let rules = triggers(&self.config).map_err(|e| PlanError::Invalid {
            object: self.input.object.clone(),
            message: e.to_string(),
        })?;
        let input = &mut self.input;
        let mut given: Vec<Option<f64>> = vec![None; input.triggers.len()];
        for v in values {
            if !v.value.is_finite() || v.value < 0.0 {
                return Err(PlanError::BadValue {
                    index: v.index,
                    value: v.value,
                });
            }
            let label = format!("s{}", v.index);
            let position = input.triggers.iter().position(|t| t.label() == label);
            let slot = position
                .and_then(|position| given.get_mut(position))
                .ok_or_else(|| PlanError::UnknownTrigger {
                    object: input.object.clone(),
                    index: v.index,
                    known: input
                        .triggers
                        .iter()
                        .map(PlanTrigger::label)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if slot.replace(v.value).is_some() {
                return Err(PlanError::DuplicateValue { index: v.index });
            }
        }
        let plan_triggers = input.triggers.iter_mut().zip(given).zip(&rules);
        for ((trigger, value), (id, rule)) in plan_triggers {
            let value = value.ok_or_else(|| PlanError::MissingValue {
                object: input.object.clone(),
                index: id.index,
                metric: trigger.metric.clone(),
            })?;
            trigger.observed = Observed::Value {
                value,
                active: rule.is_active(ActivationInput::value_only(value)),
            };
        }
        Ok(())
    }

    /// Sets every trigger's value from the cache's states after a poll, in trigger order.
    pub fn set_states(&mut self, states: &[Option<TriggerState>]) {
        let ids = triggers(&self.config).unwrap_or_default();
        let entries = ids.iter().map(|(id, _)| &self.config.triggers[id.index]);
        for ((trigger, state), entry) in self.input.triggers.iter_mut().zip(states).zip(entries) {
            trigger.observed = match state {
                None => Observed::Failed {
                    error: "not polled".into(),
                    consecutive_failures: 0,
                },
                Some(state) => match (state.current(), &state.error) {
                    (Some(reading), _) => Observed::Value {
                        value: reading.value,
                        active: reading.active,
                    },
                    (None, error) => {
                        let mut text = error
                            .as_ref()
                            .map_or_else(|| "no reading".into(), ToString::to_string);
                        // A ScaledObject's Secrets are fetched only from a cluster.
                        if error
                            .as_ref()
                            .is_some_and(|e| reads_an_unfetched_secret(entry, e))
                        {
                            text.push_str(" (give --kubeconfig to read the cluster's Secrets)");
                        }
                        Observed::Failed {
                            error: text,
                            consecutive_failures: state.consecutive_failures,
                        }
                    }
                },
            };
        }
    }
}

/// Each trigger's own parameter checks (`config` validation does the same for files), as
/// `triggers[i].<broker>.<field>: message`.
fn check_triggers(config: &ScaledObjectConfig) -> Result<(), String> {
    let list = triggers(config).map_err(|e| e.to_string())?;
    for (id, trigger) in list {
        let entry = &config.triggers[id.index];
        let outcome = trigger.validate();
        // A Secret's value is read only once fetched from the cluster (at poll time here):
        // a check that needs it cannot be made from the file alone.
        if fails_for_want_of_secrets(entry, &outcome) {
            continue;
        }
        // Nor can one whose credentials an authenticationRef supplies: which fields it fills
        // is known once the TriggerAuthentication is read (the controller checks then).
        if outcome.is_err() && entry.authentication_ref.is_some() {
            continue;
        }
        if let Err(ScalerError::InvalidTrigger { field, message, .. }) = outcome {
            let key = trigger.config_key();
            return Err(format!("triggers[{}].{key}.{field}: {message}", id.index));
        }
    }
    Ok(())
}

/// Whether `outcome`, the checks of `entry`'s trigger, failed for want of a Secret not fetched
/// yet: with a stand-in value for each such Secret, the checks end otherwise.
fn fails_for_want_of_secrets(entry: &TriggerConfig, outcome: &Result<(), ScalerError>) -> bool {
    if outcome.is_ok() {
        return false;
    }
    let mut stand_in = entry.clone();
    let unfetched = unfetched_secrets(&mut stand_in);
    if unfetched.is_empty() {
        return false;
    }
    for (_, reference) in unfetched {
        reference.stand_in();
    }
    stand_in.trigger().ok().map(|t| t.validate()).as_ref() != Some(outcome)
}

/// Whether `error` is `entry`'s trigger failing to read a Secret not fetched yet.
fn reads_an_unfetched_secret(entry: &TriggerConfig, error: &ScalerError) -> bool {
    let ScalerError::InvalidTrigger { field, .. } = error else {
        return false;
    };
    unfetched_secrets(&mut entry.clone())
        .iter()
        .any(|(unfetched, _)| unfetched == field)
}

/// The plan's triggers of `config`, without values yet.
/// The cpu and memory triggers of `config`, as the plan names them.
fn resource_triggers(config: &ScaledObjectConfig) -> Vec<String> {
    config
        .triggers
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.is_resource_only())
        .filter_map(|(index, entry)| {
            let (name, resource) = entry.resource()?;
            let target = match (&resource.utilization, &resource.average_value) {
                (Some(percent), _) => format!("utilization {percent} %"),
                (None, Some(value)) => format!("averageValue {value}"),
                (None, None) => "no target".to_owned(),
            };
            let container = resource
                .container_name
                .as_ref()
                .map(|c| format!(" of container {c}"))
                .unwrap_or_default();
            Some(format!("s{index} {} {target}{container}", name.as_str()))
        })
        .collect()
}

fn plan_triggers(config: &ScaledObjectConfig) -> Result<Vec<PlanTrigger>, SpecError> {
    Ok(triggers(config)?
        .into_iter()
        .map(|(id, trigger)| PlanTrigger {
            metric: served_metric_name(id.index, &trigger),
            target: trigger.target_value(),
            metric_type: config.triggers[id.index].metric_type,
            activation: trigger.activation_threshold(),
            observed: Observed::Failed {
                error: "no value given".into(),
                consecutive_failures: 0,
            },
        })
        .collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use std::path::Path;
    use std::time::Duration;

    use crate::cache::MetricCache;
    use crate::plan::parse_scaled_objects;

    #[test]
    fn trigger_values_parse_and_refuse_negatives() {
        assert_eq!(
            "s0=450".parse::<TriggerValue>(),
            Ok(TriggerValue {
                index: 0,
                value: 450.0
            })
        );
        assert_eq!(
            "2=1.5".parse::<TriggerValue>(),
            Ok(TriggerValue {
                index: 2,
                value: 1.5
            })
        );
        assert!(
            "s0=-5"
                .parse::<TriggerValue>()
                .unwrap_err()
                .contains("0 or more")
        );
        assert!(
            "s0".parse::<TriggerValue>()
                .unwrap_err()
                .contains("s<index>=<value>")
        );
        assert!(
            "x=1"
                .parse::<TriggerValue>()
                .unwrap_err()
                .contains("trigger index")
        );
        assert!("s0=NaN".parse::<TriggerValue>().is_err());
    }

    pub(in crate::plan) const ORDERS: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata:
  name: orders-consumer
spec:
  scaleTargetRef: {name: orders-consumer}
  maxReplicaCount: 24
  triggers:
    - kafka: {bootstrapServers: "k:9092", consumerGroup: orders, topic: orders, lagThreshold: 100, activationLagThreshold: 10}
    - rabbitmq: {host: "amqp://r:5672/", queueName: retry, value: 20}
"#;

    pub(in crate::plan) fn source(text: &str) -> Result<PlanSource, PlanError> {
        let objects = parse_scaled_objects(Path::new("so.yaml"), text)?;
        PlanSource::from_scaled_object(&objects[0])
    }

    #[test]
    fn a_scaled_object_file_becomes_a_plan_input() {
        let mut source = source(ORDERS).unwrap();
        assert_eq!(source.input.object, "default/orders-consumer");
        assert_eq!(source.input.rules, HpaRules::Builtin);
        assert_eq!(source.input.triggers[0].metric, "s0-kafka-orders");
        assert_eq!(source.input.triggers[0].activation, 10.0);
        // 10 is not above activationLagThreshold 10; 11 is.
        source
            .set_values(&[
                TriggerValue {
                    index: 0,
                    value: 10.0,
                },
                TriggerValue {
                    index: 1,
                    value: 11.0,
                },
            ])
            .unwrap();
        let actives: Vec<bool> = source
            .input
            .triggers
            .iter()
            .map(|t| matches!(t.observed, Observed::Value { active: true, .. }))
            .collect();
        assert_eq!(actives, [false, true]);
        assert_eq!(source.triggers().unwrap().len(), 2);
    }

    #[test]
    fn with_scaling_modifiers_the_plan_scales_on_the_formula_and_its_fallback() {
        let text = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {name: orders}
spec:
  scaleTargetRef: {name: orders}
  advanced:
    scalingModifiers: {formula: "lag + (queued ?? 0)", target: 10, activationTarget: 5}
  fallback: {failureThreshold: 2, replicas: 3, behavior: scalingModifiers}
  triggers:
    - name: lag
      kafka: {bootstrapServers: "k:9092", consumerGroup: g, topic: t}
    - cpu: {utilization: 50}
    - name: queued
      prometheus: {serverAddress: "http://p:9090", query: "vector(1)", threshold: 6}
"#;
        let mut s = source(text).unwrap();
        let v = |index, value| TriggerValue { index, value };
        s.set_values(&[v(0, 30.0), v(2, 12.0)]).unwrap();
        let plan = crate::plan::plan(&s.input);
        assert_eq!(plan.triggers.len(), 1);
        assert_eq!(plan.triggers[0].metric, "composite-metric");
        assert_eq!(plan.settles_at, Some(5), "ceil((30 + 12) / 10)");
        // Below activationTarget 5: to zero after the cooldown.
        s.set_values(&[v(0, 2.0), v(2, 1.0)]).unwrap();
        assert_eq!(crate::plan::plan(&s.input).settles_at, Some(0));
        // The Prometheus trigger in fallback is nil, `?? 0` decides: 30 / 10.
        let failed = Observed::Failed {
            error: "down".into(),
            consecutive_failures: 3,
        };
        s.set_values(&[v(0, 30.0), v(2, 1.0)]).unwrap();
        s.input.triggers[1].observed = failed.clone();
        let composite = s.input.composite_trigger().unwrap();
        assert_eq!(
            composite.observed,
            Observed::Value {
                value: 30.0,
                active: true
            }
        );
        // Both failing: `lag` has no default, so the formula fails; served as a 503, the HPA
        // holds (no fallback: the formula did not give nil).
        s.input.triggers[0].observed = failed.clone();
        let held = crate::plan::plan(&s.input);
        assert!(
            matches!(&s.input.composite_trigger().unwrap().observed, Observed::Failed { error, consecutive_failures: 0 } if error.contains("?? 0")),
            "{held:?}"
        );
        // A formula that gives nil for failing triggers, under fallback.behavior
        // scalingModifiers:
        s.input.composite.as_mut().unwrap().formula = std::sync::Arc::new(
            crate::formula::Formula::compile(
                "(lag ?? nil) ?? (queued ?? nil)",
                &["lag".to_owned(), "queued".to_owned()],
            )
            .unwrap(),
        );
        // both nil, so the formula gives nil and fallback.replicas 3 apply.
        assert_eq!(crate::plan::plan(&s.input).settles_at, Some(3));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut s = source(ORDERS).unwrap();
        let v = |index, value| TriggerValue { index, value };
        assert_eq!(
            s.set_values(&[v(0, 1.0), v(1, 1.0), v(5, 1.0)])
                .unwrap_err()
                .to_string(),
            "--value s5: default/orders-consumer has no trigger s5 (its triggers: s0, s1)"
        );
        assert_eq!(
            s.set_values(&[v(0, 1.0)]).unwrap_err().to_string(),
            "default/orders-consumer: trigger s1 (s1-rabbitmq-retry) has no value: add --value s1=N"
        );
        assert_eq!(
            s.set_values(&[v(0, 1.0), v(0, 2.0)]).unwrap_err(),
            PlanError::DuplicateValue { index: 0 }
        );
        assert_eq!(
            s.set_values(&[v(0, -1.0)]).unwrap_err(),
            PlanError::BadValue {
                index: 0,
                value: -1.0
            }
        );
    }

    #[test]
    fn bad_scaled_objects_are_refused_with_the_field() {
        let cases = [
            (
                ORDERS.replace("maxReplicaCount: 24", "maxReplicaCount: 24\n  minReplicaCount: 30"),
                "default/orders-consumer: spec.minReplicaCount: 30 is above maxReplicaCount 24",
            ),
            (
                ORDERS.replace("lagThreshold: 100,", "lagThreshold: 0,"),
                "default/orders-consumer: spec.triggers[0].kafka.lagThreshold: must be positive number",
            ),
            (
                ORDERS.replace("maxReplicaCount: 24", "maxReplicas: 24"),
                "so.yaml: document 1: spec.maxReplicas: unknown field",
            ),
            (
                ORDERS.replace("kind: ScaledObject", "kind: Deployment"),
                "so.yaml: document 1 is spillway.dev/v1alpha1 Deployment, not a ScaledObject of spillway.dev/v1alpha1",
            ),
            (
                ORDERS.replace("maxReplicaCount: 24", "maxReplicaCount: 24\n  advanced: {horizontalPodAutoscalerConfig: {behavior: {scaleUp: {selectPolicy: Fast}}}}"),
                "default/orders-consumer: spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.selectPolicy: \"Fast\" is not one of Max, Min, Disabled",
            ),
            (
                ORDERS.replace("maxReplicaCount: 24", "maxReplicaCount: many"),
                "so.yaml: 8:20: spec.maxReplicaCount: invalid type: string \"many\", expected i32",
            ),
        ];
        for (text, want) in cases {
            let err = source(&text).unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn defaults_written_out_are_known_fields_and_typos_are_not() {
        let with = |extra: &str| {
            ORDERS.replace(
                "maxReplicaCount: 24",
                &format!("maxReplicaCount: 24\n{extra}"),
            )
        };
        // Left out of the typed object for holding their defaults, yet fields of the schema.
        let defaults = with(
            "  pausedScaleIn: false\n  fallback: {failureThreshold: 2, replicas: 3, behavior: static}\n  advanced: {restoreToOriginalReplicaCount: false}",
        );
        let fallback = source(&defaults).unwrap().input.fallback.unwrap();
        assert_eq!(
            fallback.behavior,
            crate::controller::crd::FallbackBehavior::Static
        );
        let typo = with("  fallback: {failureThreshold: 2, replicas: 3, behaviour: static}");
        let err = source(&typo).unwrap_err().to_string();
        assert!(
            err.starts_with("so.yaml: document 1: spec.fallback.behaviour: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn checks_that_need_an_unfetched_secret_wait_for_the_poll() {
        // The rabbitmq checks read hostFromSecret: they cannot be made from the file alone.
        let text = ORDERS.replace(
            r#"host: "amqp://r:5672/""#,
            "hostFromSecret: {secretKeyRef: {name: rabbitmq, key: url}}",
        );
        let mut s = source(&text).unwrap();
        // The kafka checks do not read ca: one without tls is refused all the same.
        let text = ORDERS.replace(
            "activationLagThreshold: 10}",
            "activationLagThreshold: 10, ca: {secretKeyRef: {name: kafka, key: ca}}}",
        );
        assert_eq!(
            source(&text).unwrap_err().to_string(),
            "default/orders-consumer: spec.triggers[0].kafka.ca: needs tls: enable"
        );
        // Polled without a cluster, reading the Secret fails: the error says what to give.
        let triggers = s.triggers().unwrap();
        let cache = MetricCache::new();
        let ms = Duration::from_millis(1);
        let (kafka, rabbitmq) = (&triggers[0].0, &triggers[1]);
        let unread = rabbitmq.1.validate().unwrap_err();
        cache.record(rabbitmq.0.clone(), Err(unread), ms);
        let down = ScalerError::Unreachable {
            broker: "kafka",
            target: "k:9092".into(),
            cause: "refused".into(),
        };
        cache.record(kafka.clone(), Err(down), ms);
        s.set_states(&[cache.get(kafka), cache.get(&rabbitmq.0)]);
        let errors: Vec<&str> = s
            .input
            .triggers
            .iter()
            .map(|t| match &t.observed {
                Observed::Failed { error, .. } => error.as_str(),
                Observed::Value { .. } => "",
            })
            .collect();
        assert!(!errors[0].contains("--kubeconfig"), "{}", errors[0]);
        assert!(
            errors[1].ends_with("(give --kubeconfig to read the cluster's Secrets)"),
            "{}",
            errors[1]
        );
    }
}
