//! The replica count a scaled object gets from its triggers' values, as the HPA computes it
//! (kubernetes `pkg/controller/podautoscaler`: AverageValue per trigger, the tolerance, the
//! maximum over triggers, min/max, stabilization and the scaling policies), plus spillway's own
//! step to and from zero (an HPA cannot go below one).
//!
//! [`desired_replicas`] is the short answer the live view shows: it has no current count or
//! history, so tolerance and behavior are left out. [`plan`] is the long one `spillway plan`
//! prints: given the current count, every step of one HPA sync, and why.

use std::fmt::{self, Write as _};
use std::path::Path;
use std::str::FromStr;

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};
use serde::Deserialize as _;

use crate::cache::{TriggerId, TriggerState};
use crate::config::ScaledObjectConfig;
use crate::controller::crd::{GROUP, ScaledObject};
use crate::controller::triggers::{SpecError, triggers};
use crate::scalers::{
    ActivationInput, Reading, ScalerError, Trigger, TriggerParams, served_metric_name,
};

/// What the readings ask for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaProposal {
    /// `None`: hold the current count (a trigger failed, so no safe number exists).
    pub replicas: Option<u32>,
    pub reason: String,
}

/// `triggers`: each trigger's AverageValue target and its current reading (`None` if its
/// latest poll failed).
pub fn desired_replicas(
    triggers: &[(f64, Option<&Reading>)],
    min_replicas: u32,
    max_replicas: u32,
) -> ReplicaProposal {
    if let Some(failed) = triggers.iter().position(|(_, r)| r.is_none()) {
        return ReplicaProposal {
            replicas: None,
            reason: format!(
                "hold: trigger {failed} has no reading; the HPA keeps the current count"
            ),
        };
    }
    let readings: Vec<(f64, &Reading)> = triggers
        .iter()
        .map(|(t, r)| (*t, r.expect("checked")))
        .collect();
    if min_replicas == 0 && !readings.iter().any(|(_, r)| r.active) {
        return ReplicaProposal {
            replicas: Some(0),
            reason: "idle: every trigger at or below its activation value".into(),
        };
    }
    let (best, index) = readings
        .iter()
        .enumerate()
        .map(|(i, (target, reading))| (average_value_replicas(reading.value, *target), i))
        .max()
        .unwrap_or((0, 0));
    let floor = min_replicas.max(1);
    let replicas = best.clamp(floor, max_replicas.max(floor));
    let reason = if best > max_replicas {
        format!("trigger {index} asks {best}, capped at maxReplicaCount {max_replicas}")
    } else if best < floor {
        format!("trigger {index} asks {best}, raised to {floor}")
    } else {
        format!("trigger {index}: ceil(value / target) = {best}")
    };
    ReplicaProposal {
        replicas: Some(replicas),
        reason,
    }
}

/// The HPA's AverageValue rule, ceil(value / target), on milli-units as the HPA reads
/// quantities (`MilliValue()`), so 1.1 / 0.1 is 11, not 12; saturating. A non-positive target
/// or value asks nothing.
fn average_value_replicas(value: f64, target: f64) -> u32 {
    let (value, target) = (milli(value), milli(target));
    if target <= 0 || value <= 0 {
        return 0;
    }
    // Float division and ceil, as the HPA's replica calculator does; `as` saturates.
    (value as f64 / target as f64).ceil() as u32
}

/// usage / (target × current): how far the value is from what `current` replicas carry.
fn usage_ratio(value: f64, target: f64, current: u32) -> f64 {
    milli(value) as f64 / (milli(target) as f64 * f64::from(current))
}

/// A value in milli-units, rounded; NaN reads as 0 and the rest saturates (`as`).
fn milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

// ---------------------------------------------------------------------------------------------
// The HPA's rules for one sync: tolerance, stabilization, policies.

/// The controller manager's `--horizontal-pod-autoscaler-tolerance` default.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// The controller manager's `--horizontal-pod-autoscaler-downscale-stabilization` default.
pub const DOWNSCALE_STABILIZATION_SECONDS: u32 = 300;
/// The controller manager's `--horizontal-pod-autoscaler-sync-period` default.
pub const SYNC_PERIOD_SECONDS: u32 = 15;
/// KEDA's default `cooldownPeriod`, for scaled objects of a config file.
pub const DEFAULT_COOLDOWN_SECONDS: u32 = 300;

/// The band of usage ratios inside which the HPA keeps the current count:
/// `1 - down <= ratio <= 1 + up`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub up: f64,
    pub down: f64,
}

impl Tolerance {
    pub fn contains(self, ratio: f64) -> bool {
        1.0 - self.down <= ratio && ratio <= 1.0 + self.up
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}]",
            format_number(1.0 - self.down),
            format_number(1.0 + self.up)
        )
    }
}

/// A scaling policy's kind: a number of pods, or a percentage of the current count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// One entry of a behavior's `policies`: at most `value` pods or percent per `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingPolicy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period_seconds: u32,
}

impl ScalingPolicy {
    /// The bound this policy sets on one step from `current`, with no earlier scaling in its
    /// period (horizontal.go `calculateScaleUpLimitWithScalingRules` and
    /// `calculateScaleDownLimitWithBehaviors`): up rounds a percentage up, down truncates it.
    fn bound(self, current: u32, up: bool) -> i64 {
        let current_f = f64::from(current);
        let value = i64::from(self.value);
        match (self.kind, up) {
            (PolicyKind::Pods, true) => i64::from(current) + value,
            (PolicyKind::Pods, false) => i64::from(current) - value,
            (PolicyKind::Percent, true) => {
                (current_f * (1.0 + f64::from(self.value) / 100.0)).ceil() as i64
            }
            (PolicyKind::Percent, false) => {
                (current_f * (1.0 - f64::from(self.value) / 100.0)) as i64
            }
        }
    }
}

impl fmt::Display for ScalingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PolicyKind::Pods => write!(f, "{} pods", self.value)?,
            PolicyKind::Percent => write!(f, "{}%", self.value)?,
        }
        write!(f, " per {} s", self.period_seconds)
    }
}

/// How a behavior picks among its policies' bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the biggest change (the default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One direction of a behavior, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_seconds: u32,
    pub select_policy: SelectPolicy,
    pub policies: Vec<ScalingPolicy>,
    pub tolerance: f64,
}

impl ScalingRules {
    /// The API server's scaleUp defaults: max(4 pods, 100 %) per 15 s, no window.
    pub fn default_scale_up() -> Self {
        Self {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period_seconds: 15,
                },
                ScalingPolicy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_seconds: 15,
                },
            ],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// The scaleDown defaults: 100 % per 15 s, and the controller manager's 300 s window.
    pub fn default_scale_down() -> Self {
        Self {
            stabilization_window_seconds: DOWNSCALE_STABILIZATION_SECONDS,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15,
            }],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// `rules` with unset fields taken from `defaults`, checked as the API server checks them
    /// (pkg/apis/autoscaling/validation); errors name the field under `at`.
    fn from_k8s(rules: Option<&HPAScalingRules>, defaults: Self, at: &str) -> Result<Self, String> {
        let Some(rules) = rules else {
            return Ok(defaults);
        };
        let stabilization_window_seconds = match rules.stabilization_window_seconds {
            None => defaults.stabilization_window_seconds,
            Some(seconds @ 0..=3600) => seconds as u32,
            Some(seconds) => {
                return Err(format!(
                    "{at}.stabilizationWindowSeconds: {seconds} is not between 0 and 3600"
                ));
            }
        };
        let select_policy = match rules.select_policy.as_deref() {
            None | Some("Max") => SelectPolicy::Max,
            Some("Min") => SelectPolicy::Min,
            Some("Disabled") => SelectPolicy::Disabled,
            Some(other) => {
                return Err(format!(
                    "{at}.selectPolicy: {other:?} is not one of Max, Min, Disabled"
                ));
            }
        };
        let policies = match &rules.policies {
            None => defaults.policies,
            Some(policies) if policies.is_empty() => {
                return Err(format!("{at}.policies: needs at least one policy"));
            }
            Some(policies) => policies
                .iter()
                .enumerate()
                .map(|(i, policy)| {
                    let at = format!("{at}.policies[{i}]");
                    let kind = match policy.type_.as_str() {
                        "Pods" => PolicyKind::Pods,
                        "Percent" => PolicyKind::Percent,
                        other => {
                            return Err(format!(
                                "{at}.type: {other:?} is not one of Pods, Percent"
                            ));
                        }
                    };
                    if policy.value <= 0 {
                        return Err(format!(
                            "{at}.value: must be greater than 0, got {}",
                            policy.value
                        ));
                    }
                    if !(1..=1800).contains(&policy.period_seconds) {
                        return Err(format!(
                            "{at}.periodSeconds: {} is not between 1 and 1800",
                            policy.period_seconds
                        ));
                    }
                    Ok(ScalingPolicy {
                        kind,
                        value: policy.value as u32,
                        period_seconds: policy.period_seconds as u32,
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let tolerance = match &rules.tolerance {
            None => defaults.tolerance,
            Some(quantity) => match parse_decimal_quantity(&quantity.0) {
                Some(t) if t >= 0.0 => t,
                Some(_) => return Err(format!("{at}.tolerance: must not be negative")),
                None => {
                    return Err(format!(
                        "{at}.tolerance: {:?} is not a quantity (e.g. 0.05 or 50m)",
                        quantity.0
                    ));
                }
            },
        };
        Ok(Self {
            stabilization_window_seconds,
            select_policy,
            policies,
            tolerance,
        })
    }

    /// The bound on one step from `current` in this direction: each policy's, and the one
    /// `selectPolicy` picks (`None` when scaling this way is disabled).
    fn bounds(&self, current: u32, up: bool) -> (Vec<(ScalingPolicy, i64)>, Option<i64>) {
        let each: Vec<(ScalingPolicy, i64)> = self
            .policies
            .iter()
            .map(|p| (*p, p.bound(current, up)))
            .collect();
        let values = each.iter().map(|(_, b)| *b);
        // Up, Max picks the highest bound; down, Max picks the lowest (the biggest change).
        let chosen = match (self.select_policy, up) {
            (SelectPolicy::Disabled, _) => None,
            (SelectPolicy::Max, true) | (SelectPolicy::Min, false) => values.max(),
            (SelectPolicy::Min, true) | (SelectPolicy::Max, false) => values.min(),
        };
        (each, chosen)
    }
}

/// How the HPA limits one sync's change.
#[derive(Debug, Clone, PartialEq)]
pub enum HpaRules {
    /// The HPA has no `behavior` (the API server leaves it unset): tolerance 0.1 both ways, a
    /// step up reaches at most max(2 × current, 4), a step down waits for the controller
    /// manager's 300 s downscale stabilization and is otherwise unlimited.
    Builtin,
    /// `behavior`, the API server's defaults filled in.
    Behavior {
        scale_up: ScalingRules,
        scale_down: ScalingRules,
    },
}

impl HpaRules {
    /// The rules of an HPA with this `behavior`; errors name the field, from `behavior`.
    pub fn from_behavior(
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
    ) -> Result<Self, String> {
        let Some(behavior) = behavior else {
            return Ok(Self::Builtin);
        };
        Ok(Self::Behavior {
            scale_up: ScalingRules::from_k8s(
                behavior.scale_up.as_ref(),
                ScalingRules::default_scale_up(),
                "behavior.scaleUp",
            )?,
            scale_down: ScalingRules::from_k8s(
                behavior.scale_down.as_ref(),
                ScalingRules::default_scale_down(),
                "behavior.scaleDown",
            )?,
        })
    }

    pub fn tolerance(&self) -> Tolerance {
        match self {
            Self::Builtin => Tolerance {
                up: DEFAULT_TOLERANCE,
                down: DEFAULT_TOLERANCE,
            },
            Self::Behavior {
                scale_up,
                scale_down,
            } => Tolerance {
                up: scale_up.tolerance,
                down: scale_down.tolerance,
            },
        }
    }

    /// The stabilization window of a step up or down, in seconds.
    fn window(&self, up: bool) -> u32 {
        match (self, up) {
            (Self::Builtin, true) => 0,
            (Self::Builtin, false) => DOWNSCALE_STABILIZATION_SECONDS,
            (Self::Behavior { scale_up, .. }, true) => scale_up.stabilization_window_seconds,
            (Self::Behavior { scale_down, .. }, false) => scale_down.stabilization_window_seconds,
        }
    }

    /// One step from `current` toward `desired` (already within min and max), limited by the
    /// rate rules, and why.
    fn limit_step(&self, current: u32, desired: u32, min: u32, max: u32) -> (u32, String) {
        if desired == current {
            return (current, "no change".into());
        }
        let up = desired > current;
        let (bound, mut why) = match self {
            Self::Builtin if up => {
                let bound = (2 * i64::from(current)).max(4);
                (
                    bound,
                    format!(
                        "no behavior: a step up reaches at most max(2 × {current}, 4) = {bound}"
                    ),
                )
            }
            Self::Builtin => {
                return (desired, "no behavior: a step down has no rate limit".into());
            }
            Self::Behavior {
                scale_up,
                scale_down,
            } => {
                let (rules, direction) = if up {
                    (scale_up, "scaleUp")
                } else {
                    (scale_down, "scaleDown")
                };
                let (each, chosen) = rules.bounds(current, up);
                let listed: Vec<String> = each
                    .iter()
                    .map(|(policy, bound)| format!("{policy} allows {bound}"))
                    .collect();
                match chosen {
                    None => (
                        i64::from(current),
                        format!("{direction}.selectPolicy Disabled: no scaling this way"),
                    ),
                    Some(chosen) => {
                        let select = match rules.select_policy {
                            SelectPolicy::Min => "Min",
                            _ => "Max",
                        };
                        // The HPA never lets a policy turn a step around.
                        let bound = if up {
                            chosen.max(i64::from(current))
                        } else {
                            chosen.min(i64::from(current))
                        };
                        (
                            bound,
                            format!(
                                "{direction}: {}; {select} picks {chosen}",
                                listed.join(", ")
                            ),
                        )
                    }
                }
            }
        };
        let next = if up {
            let allowed = bound.min(i64::from(max));
            i64::from(desired).min(allowed) as u32
        } else {
            let allowed = bound.max(i64::from(min));
            i64::from(desired).max(allowed) as u32
        };
        if next != desired {
            let _ = write!(
                why,
                " ({}: {next} instead of {desired})",
                if up { "ScaleUpLimit" } else { "ScaleDownLimit" }
            );
        } else {
            why.push_str(": not limiting");
        }
        (next, why)
    }
}

/// A decimal resource.Quantity as a number: `0.05`, `50m`, `5e-2`, `1k`. Binary suffixes are
/// refused: no tolerance is written that way.
fn parse_decimal_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, exponent) = match text.char_indices().last()? {
        (i, 'n') => (&text[..i], -9),
        (i, 'u') => (&text[..i], -6),
        (i, 'm') => (&text[..i], -3),
        (i, 'k') => (&text[..i], 3),
        (i, 'M') => (&text[..i], 6),
        (i, 'G') => (&text[..i], 9),
        _ => (text, 0),
    };
    let digits_only = number
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'));
    if number.is_empty() || !digits_only {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    // Dividing by a power of ten keeps 50m exactly 0.05.
    let value = if exponent < 0 {
        value / 10f64.powi(-exponent)
    } else {
        value * 10f64.powi(exponent)
    };
    value.is_finite().then_some(value)
}

// ---------------------------------------------------------------------------------------------
// What `spillway plan` computes with.

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

/// One trigger of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTrigger {
    /// The served metric name, `s<index>-<name>`.
    pub metric: String,
    /// The AverageValue target.
    pub target: f64,
    /// Values above this are active.
    pub activation: f64,
    pub observed: Observed,
}

/// `fallback`: replicas to steer the HPA to after repeated failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// Failures in a row from which the fallback value is served (at least 1).
    pub failure_threshold: u32,
    pub replicas: u32,
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
                failure_threshold: (f.failure_threshold as u32).max(1),
                replicas: f.replicas as u32,
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
            let slot = given
                .get_mut(v.index)
                .ok_or_else(|| PlanError::UnknownTrigger {
                    object: input.object.clone(),
                    index: v.index,
                    known: (0..input.triggers.len())
                        .map(|i| format!("s{i}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if slot.replace(v.value).is_some() {
                return Err(PlanError::DuplicateValue { index: v.index });
            }
        }
        let plan_triggers = input.triggers.iter_mut().zip(given).zip(&rules);
        for (index, ((trigger, value), (_, rule))) in plan_triggers.enumerate() {
            let value = value.ok_or_else(|| PlanError::MissingValue {
                object: input.object.clone(),
                index,
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
        for (trigger, state) in self.input.triggers.iter_mut().zip(states) {
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
                        let mut error = error
                            .as_ref()
                            .map_or_else(|| "no reading".into(), ToString::to_string);
                        // A ScaledObject's Secrets are fetched only from a cluster.
                        if error.contains("was not fetched") {
                            error.push_str(" (give --kubeconfig to read the cluster's Secrets)");
                        }
                        Observed::Failed {
                            error,
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
        if let Err(ScalerError::InvalidTrigger {
            broker,
            field,
            message,
        }) = trigger.validate()
        {
            // A Secret's value is read only once fetched from the cluster (at poll time here):
            // a check that needs it cannot be made from the file alone.
            if message.contains("was not fetched") {
                continue;
            }
            let key = if broker == "nats-jetstream" {
                "natsJetStream"
            } else {
                broker
            };
            return Err(format!("triggers[{}].{key}.{field}: {message}", id.index));
        }
    }
    Ok(())
}

/// The plan's triggers of `config`, without values yet.
fn plan_triggers(config: &ScaledObjectConfig) -> Result<Vec<PlanTrigger>, SpecError> {
    Ok(triggers(config)?
        .into_iter()
        .map(|(id, trigger)| PlanTrigger {
            metric: served_metric_name(id.index, &trigger),
            target: trigger.target_value(),
            activation: trigger.activation_threshold(),
            observed: Observed::Failed {
                error: "no value given".into(),
                consecutive_failures: 0,
            },
        })
        .collect())
}

/// The ScaledObjects of a manifest (one or more YAML documents), as `kubectl apply` would
/// take them: `apiVersion: spillway.dev/v1alpha1`, `kind: ScaledObject`, no unknown fields
/// (kubectl's strict field validation). The spec's rules are checked by
/// [`PlanSource::from_scaled_object`].
pub fn parse_scaled_objects(path: &Path, text: &str) -> Result<Vec<ScaledObject>, PlanError> {
    let file_error = |message: String| PlanError::File {
        path: path.display().to_string(),
        message,
    };
    let located = |err: serde_norway::Error| match err.location() {
        Some(l) => {
            let message = err.to_string();
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            format!(
                "{}:{}: {}",
                l.line(),
                l.column(),
                message.strip_suffix(&suffix).unwrap_or(&message)
            )
        }
        None => err.to_string(),
    };
    let api_version = format!("{GROUP}/v1alpha1");
    let mut objects = Vec::new();
    let untyped = serde_norway::Deserializer::from_str(text);
    let typed = serde_norway::Deserializer::from_str(text);
    for (number, (untyped, typed)) in untyped.zip(typed).enumerate() {
        let document = number + 1;
        let value = serde_json::Value::deserialize(untyped).map_err(|e| file_error(located(e)))?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
        if field("kind") != Some("ScaledObject") || field("apiVersion") != Some(&api_version) {
            return Err(file_error(format!(
                "document {document} is {} {}, not a ScaledObject of {api_version}",
                field("apiVersion").unwrap_or("<no apiVersion>"),
                field("kind").unwrap_or("<no kind>")
            )));
        }
        let so = ScaledObject::deserialize(typed).map_err(|e| file_error(located(e)))?;
        let written = serde_json::to_value(&so).expect("a ScaledObject serializes");
        if let Some(unknown) = unknown_fields(&value, &written, "").into_iter().next() {
            return Err(file_error(format!(
                "document {document}: {unknown}: unknown field"
            )));
        }
        objects.push(so);
    }
    if objects.is_empty() {
        return Err(file_error("holds no ScaledObject".into()));
    }
    Ok(objects)
}

/// Paths of fields set in `given` that the typed object dropped: fields spillway does not
/// know. Triggers deny unknown fields themselves (and accept aliases), so they are skipped.
fn unknown_fields(given: &serde_json::Value, kept: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    match (given, kept) {
        (Value::Object(given), Value::Object(kept)) => given
            .iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(key, value)| {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match kept.get(key) {
                    _ if matches!(path.as_str(), "spec.triggers" | "status") => Vec::new(),
                    None => vec![path],
                    Some(kept) => unknown_fields(value, kept, &path),
                }
            })
            .collect(),
        (Value::Array(given), Value::Array(kept)) => given
            .iter()
            .zip(kept)
            .enumerate()
            .flat_map(|(i, (g, k))| unknown_fields(g, k, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The plan.

/// One trigger's part of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerPlan {
    pub metric: String,
    pub target: f64,
    /// The value the HPA reads: the trigger's, or the fallback value; `None`: it gets none.
    pub value: Option<f64>,
    pub active: Option<bool>,
    /// usage / (target × current), when the current count is known and above zero.
    pub ratio: Option<f64>,
    /// Whether the ratio is inside the tolerance band (the HPA then keeps the current count).
    pub within_tolerance: Option<bool>,
    /// ceil(value / target).
    pub raw: Option<u32>,
    /// What this trigger asks of the HPA: `raw`, or the current count inside the tolerance.
    pub proposal: Option<u32>,
    /// How the proposal came about, or why there is none.
    pub why: String,
}

/// One step of the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    pub name: &'static str,
    /// The count after this step; `None`: the step does not apply or keeps an unknown count.
    pub replicas: Option<u32>,
    pub why: String,
}

/// The decision for one scaled object.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub object: String,
    pub current: Option<u32>,
    /// The numbers the decision rests on.
    pub settings: String,
    pub tolerance: Tolerance,
    pub triggers: Vec<TriggerPlan>,
    pub steps: Vec<PlanStep>,
    /// The count the target goes to while the values stay as they are (`None`: it keeps its
    /// current count, which was not given).
    pub settles_at: Option<u32>,
    /// The count after this sync, from the current one (`None` without a current count).
    pub next: Option<u32>,
    pub summary: String,
}

/// What spillway's controller does about zero (reconcile.rs: scale to and from idle).
enum ZeroStep {
    /// Every trigger read, none active: to the idle count after the cooldown, no HPA.
    ToIdle,
    /// Active at or below the idle count: up to max(1, minReplicaCount), then the HPA.
    FromIdle,
    /// At 0 with a trigger past its failure threshold: up to fallback.replicas.
    FallbackFromZero(u32),
    /// Not the controller's business; why.
    NotApplicable(String),
}

/// One HPA sync for `input` (and spillway's step to or from zero), step by step.
pub fn plan(input: &PlanInput) -> Plan {
    let min = input.min_replica_count;
    let hpa_min = min.max(1);
    let max = input.max_replica_count.max(hpa_min);
    let current = input.current_replicas;
    let tolerance = input.rules.tolerance();
    let triggers: Vec<TriggerPlan> = input
        .triggers
        .iter()
        .map(|t| trigger_plan(t, current, tolerance, input.fallback))
        .collect();
    let settings = settings_line(input, hpa_min, max);
    let mut steps = Vec::new();
    let mut step = |name: &'static str, replicas: Option<u32>, why: String| {
        steps.push(PlanStep {
            name,
            replicas,
            why,
        })
    };

    if input.pause != Pause::Running {
        let (held, why) = match input.pause {
            Pause::PausedAt(n) => (
                Some(n),
                format!("pausedReplicas: the target is held at {n}, no HPA"),
            ),
            _ => (current, "paused: the target keeps its count, no HPA".into()),
        };
        step("paused", held, why.clone());
        return Plan {
            object: input.object.clone(),
            current,
            settings,
            tolerance,
            triggers,
            steps,
            settles_at: held,
            next: held,
            summary: format!("Scaling is paused: {why}."),
        };
    }

    // 1. The highest proposal, unless failed metrics make the HPA hold.
    let valid: Vec<(usize, u32)> = triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.proposal.map(|p| (i, p)))
        .collect();
    let failed: Vec<String> = triggers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.proposal.is_none())
        .map(|(i, _)| format!("s{i}"))
        .collect();
    // The first of equal proposals names the step.
    let best = valid
        .iter()
        .copied()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
    let metric_replicas = match best {
        None => {
            step(
                "metrics",
                current,
                "no trigger has a value: the HPA cannot compute a count and keeps the current one (ScalingActive=False)".into(),
            );
            None
        }
        Some((_, p)) if !failed.is_empty() && current.is_some_and(|c| p < c) => {
            step(
                "metrics",
                current,
                format!(
                    "{} without a value, and the others ask only {p}: the HPA keeps the current count rather than scale down on partial data",
                    failed.join(", ")
                ),
            );
            None
        }
        Some((index, p)) => {
            let mut why = if valid.len() == 1 {
                format!("s{index} asks {p}")
            } else {
                let others: Vec<String> = valid
                    .iter()
                    .filter(|(i, _)| *i != index)
                    .map(|(i, q)| format!("s{i} {q}"))
                    .collect();
                format!(
                    "the most any trigger asks: s{index} {p} ({})",
                    others.join(", ")
                )
            };
            if !failed.is_empty() {
                let _ = write!(
                    why,
                    "; {} without a value: the HPA uses the rest only to scale up",
                    failed.join(", ")
                );
            }
            step("metrics", Some(p), why);
            Some(p)
        }
    };

    // 2. The HPA's bounds.
    let clamped = metric_replicas.map(|d| d.clamp(hpa_min, max));
    let floor = if min == hpa_min {
        format!("minReplicas {hpa_min}")
    } else {
        format!("minReplicas {hpa_min} (max(1, minReplicaCount {min}))")
    };
    match (metric_replicas, clamped) {
        (Some(d), Some(c)) if d > c => step(
            "min/max",
            Some(c),
            format!("capped at maxReplicaCount {max}"),
        ),
        (Some(d), Some(c)) if d < c => {
            step("min/max", Some(c), format!("raised to the HPA's {floor}"))
        }
        (Some(_), Some(c)) => step(
            "min/max",
            Some(c),
            format!("within {floor} and maxReplicas {max}"),
        ),
        _ => step(
            "min/max",
            current,
            "nothing to bound: the count is held".into(),
        ),
    }

    // 3. Spillway's controller: to and from zero (or idleReplicaCount).
    let active = triggers.iter().any(|t| t.active == Some(true));
    let unread: Vec<String> = input
        .triggers
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.observed, Observed::Value { .. }))
        .map(|(i, _)| format!("s{i}"))
        .collect();
    let all_read = unread.is_empty();
    let scales_to_idle = min == 0 || input.idle_replica_count.is_some();
    let idle = input.idle_replica_count.unwrap_or(0);
    let idle_name = if input.idle_replica_count.is_some() {
        format!("idleReplicaCount {idle}")
    } else {
        "0".to_owned()
    };
    let fallback_from_zero = input.fallback.filter(|f| {
        current == Some(0)
            && input.triggers.iter().any(|t| {
                matches!(t.observed, Observed::Failed { consecutive_failures, .. } if consecutive_failures >= f.failure_threshold)
            })
    });
    let zero = if active && scales_to_idle && current.is_some_and(|c| c <= idle) {
        ZeroStep::FromIdle
    } else if !active && all_read && scales_to_idle {
        ZeroStep::ToIdle
    } else if let Some(f) = fallback_from_zero {
        ZeroStep::FallbackFromZero(f.replicas)
    } else if !scales_to_idle {
        ZeroStep::NotApplicable(format!(
            "minReplicaCount {min} and no idleReplicaCount: never below {min}"
        ))
    } else if active {
        let first = triggers
            .iter()
            .position(|t| t.active == Some(true))
            .unwrap_or(0);
        ZeroStep::NotApplicable(format!(
            "s{first} is active ({} > activation {}): the target stays at {hpa_min} or more",
            triggers[first].value.map_or("-".into(), format_number),
            format_number(input.triggers[first].activation)
        ))
    } else {
        ZeroStep::NotApplicable(format!(
            "{} without a value: a failing trigger never scales to zero",
            unread.join(", ")
        ))
    };
    let mut settles_at = clamped.or(current);
    match &zero {
        ZeroStep::ToIdle => {
            settles_at = Some(idle);
            step(
                "scale to zero",
                Some(idle),
                format!(
                    "no trigger active: once cooldownPeriod {} s has passed since the last active poll, the controller scales to {idle_name} and removes the HPA",
                    input.cooldown_seconds
                ),
            );
        }
        ZeroStep::FromIdle => step(
            "scale to zero",
            Some(hpa_min),
            format!(
                "a trigger is active at {} replicas: the controller scales to {hpa_min} (max(1, minReplicaCount)) and the HPA takes over from there",
                current.unwrap_or_default()
            ),
        ),
        ZeroStep::FallbackFromZero(n) => step(
            "scale to zero",
            Some(*n),
            format!(
                "at 0 with a trigger past fallback.failureThreshold: the controller scales to fallback.replicas {n}"
            ),
        ),
        ZeroStep::NotApplicable(why) => step("scale to zero", None, why.clone()),
    }

    // 4. One HPA sync from the current count.
    let mut next = None;
    let mut summary: String;
    let object = &input.object;
    match current {
        None => {
            let settled = settles_at.map_or("its current count".to_owned(), |n| n.to_string());
            summary = format!(
                "With these values {object} settles at {settled} replicas. Give --current-replicas to see the tolerance test and the HPA's next step."
            );
            if matches!(zero, ZeroStep::ToIdle) {
                let _ = write!(
                    summary,
                    " No trigger is active: {idle_name} after cooldownPeriod {} s.",
                    input.cooldown_seconds
                );
            }
        }
        Some(c) => match zero {
            ZeroStep::FromIdle => {
                next = Some(hpa_min);
                summary = format!(
                    "The controller scales {object} from {c} to {hpa_min} replicas; the HPA then goes on toward {}.",
                    clamped.map_or("-".into(), |n| n.to_string())
                );
            }
            ZeroStep::FallbackFromZero(n) => {
                next = Some(n);
                summary = format!(
                    "The controller scales {object} from 0 to fallback.replicas {n}: a trigger keeps failing."
                );
            }
            ZeroStep::ToIdle if c <= idle => {
                next = Some(idle);
                summary = format!("{object} stays idle at {idle} replicas: no trigger is active.");
            }
            _ if c == 0 => {
                next = Some(0);
                step(
                    "hpa",
                    Some(0),
                    "the target is at 0: the HPA is disabled there (ScalingDisabled) and nothing scales it up".into(),
                );
                summary = format!("{object} stays at 0 replicas.");
            }
            _ if c > max || c < hpa_min => {
                let bound = c.clamp(hpa_min, max);
                next = Some(bound);
                step(
                    "hpa",
                    Some(bound),
                    format!(
                        "current {c} is outside minReplicas {hpa_min} .. maxReplicas {max}: the HPA sets {bound} at once, before reading metrics"
                    ),
                );
                summary = format!("The HPA scales {object} from {c} to {bound} replicas.");
            }
            ref zero => {
                let desired = clamped.unwrap_or(c);
                let (now, later) = hpa_step(&input.rules, c, desired, hpa_min, max, &mut step);
                next = Some(now);
                summary = step_summary(object, c, desired, now, later, &input.rules);
                if matches!(zero, ZeroStep::ToIdle) {
                    let _ = write!(
                        summary,
                        " No trigger is active: once cooldownPeriod {} s has passed since the last active poll, the controller scales it to {idle_name}.",
                        input.cooldown_seconds
                    );
                }
            }
        },
    }
    if let Some(n) = next {
        step(
            "result",
            Some(n),
            match current {
                Some(c) if c == n => format!("stays at {n}"),
                Some(c) => format!("from {c} to {n} in this sync"),
                None => String::new(),
            },
        );
    } else {
        step(
            "result",
            settles_at,
            "where the count settles; no current count given, so no single step".into(),
        );
    }
    Plan {
        object: input.object.clone(),
        current,
        settings,
        tolerance,
        triggers,
        steps,
        settles_at,
        next,
        summary,
    }
}

/// Stabilization and the rate limit of one sync from `current` toward `desired`: the count
/// now, and (when the window holds it back) the count once the window has passed. The window
/// is assumed to hold the current count's recommendations (the HPA records the current count
/// when it starts, and a steady target has been recommended all along).
fn hpa_step(
    rules: &HpaRules,
    current: u32,
    desired: u32,
    min: u32,
    max: u32,
    step: &mut impl FnMut(&'static str, Option<u32>, String),
) -> (u32, Option<u32>) {
    if desired == current {
        step("stabilization", Some(current), "no change proposed".into());
        step("rate limit", Some(current), "no change proposed".into());
        return (current, None);
    }
    let up = desired > current;
    let window = rules.window(up);
    let direction = if up { "scaleUp" } else { "scaleDown" };
    let held = window > 0;
    let why = match (rules, held) {
        (_, false) => format!("{direction}: no stabilization window"),
        (HpaRules::Builtin, true) => format!(
            "no behavior: the controller manager's {window} s downscale window applies; the HPA takes the highest proposal of the last {window} s, so it keeps {current} until {desired} has been proposed for {window} s"
        ),
        (HpaRules::Behavior { .. }, true) => format!(
            "{direction}.stabilizationWindowSeconds {window}: the HPA takes the {} proposal of the last {window} s, so it keeps {current} until {desired} has been proposed for {window} s",
            if up { "lowest" } else { "highest" }
        ),
    };
    let stabilized = if held { current } else { desired };
    step("stabilization", Some(stabilized), why);
    // The rate limit shown is the one of the step toward `desired`: with the window holding,
    // it applies once the window has passed.
    let (limited, mut why) = rules.limit_step(current, desired, min, max);
    if held {
        why = format!("after the window: {why}");
    }
    step(
        "rate limit",
        Some(if held { current } else { limited }),
        why,
    );
    if held {
        (current, Some(limited))
    } else {
        (limited, None)
    }
}

/// The closing sentence of a plan with an HPA step.
fn step_summary(
    object: &str,
    current: u32,
    desired: u32,
    now: u32,
    later: Option<u32>,
    rules: &HpaRules,
) -> String {
    match later {
        Some(later) => format!(
            "The HPA keeps {object} at {current} replicas for now: the {} s stabilization window holds it; then it goes to {later}{}.",
            rules.window(desired > current),
            if later == desired {
                String::new()
            } else {
                format!(" on its way to {desired}")
            }
        ),
        None if now == current => format!("The HPA keeps {object} at {current} replicas."),
        None if now == desired => {
            format!("The HPA scales {object} from {current} to {now} replicas in this sync.")
        }
        None => format!(
            "The HPA scales {object} from {current} to {now} replicas in this sync, limited by its rate rules; it goes on toward {desired} in the next syncs (every {SYNC_PERIOD_SECONDS} s)."
        ),
    }
}

fn trigger_plan(
    trigger: &PlanTrigger,
    current: Option<u32>,
    tolerance: Tolerance,
    fallback: Option<Fallback>,
) -> TriggerPlan {
    let target = trigger.target;
    let (value, active, source) = match &trigger.observed {
        Observed::Value { value, active } => (Some(*value), Some(*active), None),
        Observed::Failed {
            error,
            consecutive_failures,
        } => match fallback {
            Some(f) if *consecutive_failures >= f.failure_threshold => (
                Some(f64::from(f.replicas) * target),
                None,
                Some(format!(
                    "failed {consecutive_failures} polls in a row (fallback.failureThreshold {}): fallback.replicas {} × target is served: {error}",
                    f.failure_threshold, f.replicas
                )),
            ),
            _ => {
                return TriggerPlan {
                    metric: trigger.metric.clone(),
                    target,
                    value: None,
                    active: None,
                    ratio: None,
                    within_tolerance: None,
                    raw: None,
                    proposal: None,
                    why: format!("no value: {error}"),
                };
            }
        },
    };
    let raw = value.map(|v| average_value_replicas(v, target));
    let ratio = value
        .zip(current.filter(|c| *c > 0))
        .map(|(v, c)| usage_ratio(v, target, c));
    let within = ratio.map(|r| tolerance.contains(r));
    let (proposal, mut why) = match (value, raw, within, current) {
        (Some(_), _, Some(true), Some(c)) => (
            Some(c),
            format!(
                "usage ratio {} within {tolerance}: keeps {c}",
                format_ratio(ratio.unwrap_or_default())
            ),
        ),
        (Some(v), Some(r), _, _) => (
            Some(r),
            format!(
                "ceil({} / {}) = {r}",
                format_number(v),
                format_number(target)
            ),
        ),
        _ => (None, String::new()),
    };
    if let Some(source) = source {
        why = format!("{why}; {source}");
    }
    TriggerPlan {
        metric: trigger.metric.clone(),
        target,
        value,
        active,
        ratio,
        within_tolerance: within,
        raw,
        proposal,
        why,
    }
}

fn settings_line(input: &PlanInput, hpa_min: u32, max: u32) -> String {
    let mut line = match input.current_replicas {
        Some(c) => format!("{c} replicas now"),
        None => "current replicas not given".to_owned(),
    };
    let _ = write!(
        line,
        "; minReplicaCount {} (HPA minReplicas {hpa_min}), maxReplicaCount {max}",
        input.min_replica_count
    );
    if let Some(idle) = input.idle_replica_count {
        let _ = write!(line, ", idleReplicaCount {idle}");
    }
    let _ = write!(line, ", cooldownPeriod {} s", input.cooldown_seconds);
    if let Some(f) = input.fallback {
        let _ = write!(
            line,
            ", fallback {} after {} failures",
            f.replicas, f.failure_threshold
        );
    }
    let tolerance = input.rules.tolerance();
    let _ = match &input.rules {
        HpaRules::Builtin => write!(
            line,
            "\nHPA without behavior: tolerance {}, its built-in limits",
            format_number(DEFAULT_TOLERANCE)
        ),
        HpaRules::Behavior {
            scale_up,
            scale_down,
        } => write!(
            line,
            "\nHPA behavior: tolerance up {} / down {}, scaleUp window {} s, scaleDown window {} s",
            format_number(tolerance.up),
            format_number(tolerance.down),
            scale_up.stabilization_window_seconds,
            scale_down.stabilization_window_seconds
        ),
    };
    line
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.object, self.settings)?;
        writeln!(f)?;
        let rows: Vec<Vec<String>> = self
            .triggers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                vec![
                    format!("s{i}"),
                    t.metric.clone(),
                    t.value.map_or("-".into(), format_number),
                    format_number(t.target),
                    match t.active {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "-".into(),
                    },
                    t.ratio.map_or("-".into(), format_ratio),
                    match t.within_tolerance {
                        Some(true) => format!("within {}", self.tolerance),
                        Some(false) => format!("outside {}", self.tolerance),
                        None => "-".into(),
                    },
                    t.proposal.map_or("-".into(), |p| p.to_string()),
                    t.why.clone(),
                ]
            })
            .collect();
        write_table(
            f,
            &[
                ("TRIGGER", false),
                ("METRIC", false),
                ("VALUE", true),
                ("TARGET", true),
                ("ACTIVE", false),
                ("USAGE RATIO", true),
                ("TOLERANCE", false),
                ("PROPOSAL", true),
                ("WHY", false),
            ],
            &rows,
        )?;
        writeln!(f)?;
        let rows: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.name.to_owned(),
                    s.replicas.map_or("-".into(), |n| n.to_string()),
                    s.why.clone(),
                ]
            })
            .collect();
        write_table(
            f,
            &[("STEP", false), ("REPLICAS", true), ("WHY", false)],
            &rows,
        )?;
        writeln!(f)?;
        writeln!(f, "{}", self.summary)
    }
}

/// Columns as wide as their widest cell; the last column is not padded.
fn write_table(
    f: &mut fmt::Formatter<'_>,
    headers: &[(&str, bool)],
    rows: &[Vec<String>],
) -> fmt::Result {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    let header: Vec<String> = headers.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let (width, right) = (widths[i], headers[i].1);
            if i + 1 == row.len() {
                line.push_str(cell);
            } else if right {
                let _ = write!(line, "{cell:>width$}  ");
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Whole numbers without a fraction, others with up to three decimals.
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn format_ratio(ratio: f64) -> String {
    if ratio.is_finite() {
        format_number((ratio * 1000.0).round() / 1000.0)
    } else {
        "inf".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: f64, active: bool) -> Reading {
        Reading::new(value, active)
    }

    #[test]
    fn follows_the_hpa_average_value_rule() {
        let lag = reading(1500.0, true);
        let queue = reading(30.0, true);
        let cases = [
            (vec![(10.0, Some(&lag))], 0, 100, Some(100)),
            (vec![(100.0, Some(&lag))], 0, 100, Some(15)),
            (
                vec![(100.0, Some(&lag)), (1.0, Some(&queue))],
                0,
                100,
                Some(30),
            ),
            (vec![(1000.0, Some(&queue))], 3, 10, Some(3)),
            (vec![(1000.0, Some(&queue))], 0, 10, Some(1)),
        ];
        for (triggers, min, max, want) in cases {
            assert_eq!(
                desired_replicas(&triggers, min, max).replicas,
                want,
                "{triggers:?} {min} {max}"
            );
        }
    }

    #[test]
    fn idle_goes_to_zero_only_when_allowed() {
        let idle = reading(0.0, false);
        assert_eq!(
            desired_replicas(&[(10.0, Some(&idle))], 0, 5).replicas,
            Some(0)
        );
        assert_eq!(
            desired_replicas(&[(10.0, Some(&idle))], 2, 5).replicas,
            Some(2)
        );
    }

    #[test]
    fn a_failed_trigger_holds_instead_of_reading_zero() {
        let idle = reading(0.0, false);
        let proposal = desired_replicas(&[(10.0, Some(&idle)), (10.0, None)], 0, 5);
        assert_eq!(proposal.replicas, None);
        assert!(proposal.reason.starts_with("hold"));
    }

    #[test]
    fn ceil_works_on_milli_units_as_the_hpa_reads_quantities() {
        // In f64, 1.1 / 0.1 is 11.000000000000002, whose ceil would be 12; as quantities
        // "1100m" / "100m" it is 11.
        assert_eq!(average_value_replicas(1.1, 0.1), 11);
        assert_eq!(average_value_replicas(450.0, 100.0), 5);
        assert_eq!(average_value_replicas(0.0, 100.0), 0);
        assert_eq!(average_value_replicas(5.0, 0.0), 0);
    }

    // Plans: every number below is worked out in the comment beside it, from the rules in
    // docs/k8s-metrics-api.md ("The HPA (autoscaling/v2) and External metrics").

    fn trigger(metric: &str, target: f64, value: f64) -> PlanTrigger {
        PlanTrigger {
            metric: metric.into(),
            target,
            activation: 0.0,
            observed: Observed::Value {
                value,
                active: value > 0.0,
            },
        }
    }

    fn failed(metric: &str, target: f64, failures: u32) -> PlanTrigger {
        PlanTrigger {
            metric: metric.into(),
            target,
            activation: 0.0,
            observed: Observed::Failed {
                error: "kafka k:9092 is unreachable: refused".into(),
                consecutive_failures: failures,
            },
        }
    }

    /// minReplicaCount 0, maxReplicaCount 24, no behavior, cooldown 300 s.
    fn input(triggers: Vec<PlanTrigger>, current: Option<u32>) -> PlanInput {
        PlanInput {
            object: "default/orders".into(),
            triggers,
            min_replica_count: 0,
            max_replica_count: 24,
            idle_replica_count: None,
            cooldown_seconds: 300,
            fallback: None,
            pause: Pause::Running,
            rules: HpaRules::Builtin,
            current_replicas: current,
        }
    }

    fn behavior(json: serde_json::Value) -> HpaRules {
        HpaRules::from_behavior(Some(&serde_json::from_value(json).unwrap())).unwrap()
    }

    fn step<'a>(plan: &'a Plan, name: &str) -> &'a PlanStep {
        plan.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}: {plan:#?}"))
    }

    #[test]
    fn tolerance_keeps_the_count_inside_the_band() {
        // current 4, target 100: ratio = value / (100 × 4); band [0.9, 1.1].
        let cases = [
            // 450 / 400 = 1.125 > 1.1: ceil(450 / 100) = 5.
            (450.0, Some(1.125), false, 5),
            // 430 / 400 = 1.075: inside, keeps 4 (ceil would ask 5).
            (430.0, Some(1.075), true, 4),
            // 440 / 400 = 1.1: the band's edge is inside.
            (440.0, Some(1.1), true, 4),
            // 360 / 400 = 0.9: the lower edge is inside too.
            (360.0, Some(0.9), true, 4),
            // 350 / 400 = 0.875 < 0.9: ceil(350 / 100) = 4 all the same.
            (350.0, Some(0.875), false, 4),
            // 200 / 400 = 0.5: ceil(200 / 100) = 2.
            (200.0, Some(0.5), false, 2),
        ];
        for (value, ratio, within, proposal) in cases {
            let plan = plan(&input(
                vec![trigger("s0-kafka-orders", 100.0, value)],
                Some(4),
            ));
            let t = &plan.triggers[0];
            assert_eq!(t.ratio, ratio, "{value}");
            assert_eq!(t.within_tolerance, Some(within), "{value}");
            assert_eq!(t.proposal, Some(proposal), "{value}");
        }
    }

    #[test]
    fn a_behavior_tolerance_replaces_the_default() {
        // 430 / (100 × 4) = 1.075: inside 1.1, outside 1 + 0.05 = 1.05, so ceil(4.3) = 5.
        let rules = behavior(serde_json::json!({"scaleUp": {"tolerance": "50m"}}));
        assert_eq!(
            rules.tolerance(),
            Tolerance {
                up: 0.05,
                down: 0.1
            }
        );
        let mut i = input(vec![trigger("s0", 100.0, 430.0)], Some(4));
        i.rules = rules;
        let plan = plan(&i);
        assert_eq!(plan.triggers[0].within_tolerance, Some(false));
        assert_eq!(plan.triggers[0].proposal, Some(5));
        assert_eq!(plan.next, Some(5));
    }

    #[test]
    fn the_highest_proposal_wins_and_is_bounded_by_min_and_max() {
        // ceil(450 / 100) = 5, ceil(30 / 20) = 2: max 5.
        let p = plan(&input(
            vec![trigger("s0", 100.0, 450.0), trigger("s1", 20.0, 30.0)],
            None,
        ));
        assert_eq!(step(&p, "metrics").replicas, Some(5));
        assert!(
            step(&p, "metrics")
                .why
                .starts_with("the most any trigger asks: s0 5 (s1 2)")
        );
        assert_eq!(p.settles_at, Some(5));
        assert_eq!(p.next, None, "no single step without a current count");
        // ceil(3000 / 100) = 30 > maxReplicaCount 24.
        let p = plan(&input(vec![trigger("s0", 100.0, 3000.0)], None));
        assert_eq!(step(&p, "metrics").replicas, Some(30));
        assert_eq!(step(&p, "min/max").replicas, Some(24));
        assert_eq!(step(&p, "min/max").why, "capped at maxReplicaCount 24");
        // ceil(50 / 100) = 1; minReplicaCount 3 raises it to 3.
        let mut i = input(vec![trigger("s0", 100.0, 50.0)], None);
        i.min_replica_count = 3;
        let p = plan(&i);
        assert_eq!(step(&p, "min/max").replicas, Some(3));
        assert_eq!(step(&p, "min/max").why, "raised to the HPA's minReplicas 3");
    }

    #[test]
    fn idle_triggers_go_to_zero_after_the_cooldown() {
        // Every value 0, activation 0: inactive; minReplicaCount 0: to 0 after 300 s.
        let p = plan(&input(
            vec![trigger("s0", 100.0, 0.0), trigger("s1", 20.0, 0.0)],
            Some(3),
        ));
        assert_eq!(step(&p, "scale to zero").replicas, Some(0));
        assert!(
            step(&p, "scale to zero")
                .why
                .contains("cooldownPeriod 300 s")
        );
        assert_eq!(p.settles_at, Some(0));
        // Until then the HPA has it: ceil(0 / 100) = 0, raised to minReplicas 1; a step down
        // from 3 is held by the 300 s downscale window.
        assert_eq!(p.next, Some(3));
        // idleReplicaCount 1 below minReplicaCount 2: the idle count instead of 0.
        let mut i = input(vec![trigger("s0", 100.0, 0.0)], Some(1));
        i.min_replica_count = 2;
        i.idle_replica_count = Some(1);
        let p = plan(&i);
        assert_eq!((p.settles_at, p.next), (Some(1), Some(1)));
        // minReplicaCount 2 without idleReplicaCount: never below 2.
        let mut i = input(vec![trigger("s0", 100.0, 0.0)], None);
        i.min_replica_count = 2;
        let p = plan(&i);
        assert_eq!(step(&p, "scale to zero").replicas, None);
        assert_eq!(p.settles_at, Some(2));
    }

    #[test]
    fn an_active_trigger_at_zero_is_the_controllers_step() {
        // At 0, ceil(450 / 100) = 5 but the HPA is disabled at 0: the controller scales to
        // max(1, minReplicaCount 0) = 1 and the HPA goes on to 5 from there.
        let p = plan(&input(vec![trigger("s0", 100.0, 450.0)], Some(0)));
        assert_eq!(step(&p, "scale to zero").replicas, Some(1));
        assert_eq!((p.next, p.settles_at), (Some(1), Some(5)));
        // minReplicaCount 2 without idleReplicaCount at 0: nobody scales it.
        let mut i = input(vec![trigger("s0", 100.0, 450.0)], Some(0));
        i.min_replica_count = 2;
        let p = plan(&i);
        assert_eq!(p.next, Some(0));
        assert!(step(&p, "hpa").why.contains("ScalingDisabled"));
    }

    #[test]
    fn without_behavior_a_step_up_reaches_twice_the_count_or_four() {
        // ceil(2000 / 100) = 20 from 2: max(2 × 2, 4) = 4. From 6: max(12, 4) = 12.
        // From 10: max(20, 4) = 20 >= 20, not limiting.
        for (current, next) in [(2, 4), (6, 12), (10, 20)] {
            let p = plan(&input(vec![trigger("s0", 100.0, 2000.0)], Some(current)));
            assert_eq!(p.next, Some(next), "from {current}");
            assert_eq!(step(&p, "stabilization").replicas, Some(20));
        }
        let p = plan(&input(vec![trigger("s0", 100.0, 2000.0)], Some(2)));
        assert!(
            step(&p, "rate limit")
                .why
                .contains("max(2 × 2, 4) = 4 (ScaleUpLimit")
        );
    }

    #[test]
    fn default_behavior_scales_up_by_four_pods_or_double() {
        // A behavior with only scaleDown set gets the scaleUp defaults: Pods 4 and Percent 100
        // per 15 s, Max. Desired ceil(2000 / 100) = 20.
        // From 2: 2 + 4 = 6, ceil(2 × 2) = 4: Max 6.  From 4: 8 and 8: 8.
        // From 10: 14 and 20: 20, not limiting.
        let rules = behavior(serde_json::json!({"scaleDown": {"stabilizationWindowSeconds": 60}}));
        for (current, next) in [(2, 6), (4, 8), (10, 20)] {
            let mut i = input(vec![trigger("s0", 100.0, 2000.0)], Some(current));
            i.rules = rules.clone();
            assert_eq!(plan(&i).next, Some(next), "from {current}");
        }
        let mut i = input(vec![trigger("s0", 100.0, 2000.0)], Some(2));
        i.rules = rules;
        let p = plan(&i);
        let why = &step(&p, "rate limit").why;
        assert_eq!(
            why,
            "scaleUp: 4 pods per 15 s allows 6, 100% per 15 s allows 4; Max picks 6 (ScaleUpLimit: 6 instead of 20)"
        );
    }

    #[test]
    fn select_policy_min_and_disabled() {
        // From 10 toward 20: Pods 4 allows 14, Percent 100 allows 20; Min picks 14.
        let mut i = input(vec![trigger("s0", 100.0, 2000.0)], Some(10));
        i.rules = behavior(serde_json::json!({"scaleUp": {"selectPolicy": "Min"}}));
        assert_eq!(plan(&i).next, Some(14));
        i.rules = behavior(serde_json::json!({"scaleUp": {"selectPolicy": "Disabled"}}));
        assert_eq!(plan(&i).next, Some(10));
    }

    #[test]
    fn scale_down_waits_for_the_window_then_follows_the_policy() {
        // From 10 toward ceil(400 / 100) = 4.
        // No behavior: the 300 s downscale window keeps 10; after it, no rate limit: 4.
        let p = plan(&input(vec![trigger("s0", 100.0, 400.0)], Some(10)));
        assert_eq!(step(&p, "stabilization").replicas, Some(10));
        assert_eq!(p.next, Some(10));
        assert!(p.summary.contains("then it goes to 4"), "{}", p.summary);
        // Behavior window 0 and Percent 50 per 60 s: floor(10 × 0.5) = 5 instead of 4.
        let mut i = input(vec![trigger("s0", 100.0, 400.0)], Some(10));
        i.rules = behavior(serde_json::json!({"scaleDown": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]}}));
        let p = plan(&i);
        assert_eq!(p.next, Some(5));
        assert!(
            step(&p, "rate limit")
                .why
                .contains("ScaleDownLimit: 5 instead of 4")
        );
        // Pods 2 per 60 s as well, Max (the biggest change): min(10 - 2, 5) = 5; Min: 8.
        i.rules = behavior(serde_json::json!({"scaleDown": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60},
                         {"type": "Pods", "value": 2, "periodSeconds": 60}]}}));
        assert_eq!(plan(&i).next, Some(5));
        i.rules = behavior(serde_json::json!({"scaleDown": {
            "stabilizationWindowSeconds": 0, "selectPolicy": "Min",
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60},
                         {"type": "Pods", "value": 2, "periodSeconds": 60}]}}));
        assert_eq!(plan(&i).next, Some(8));
        // Default scaleDown (100 % per 15 s allows 10 × 0 = 0) with a 60 s window: held at 10.
        i.rules = behavior(serde_json::json!({"scaleDown": {"stabilizationWindowSeconds": 60}}));
        let p = plan(&i);
        assert_eq!(p.next, Some(10));
        assert!(
            step(&p, "rate limit")
                .why
                .starts_with("after the window: scaleDown: 100% per 15 s allows 0")
        );
    }

    #[test]
    fn failed_metrics_hold_unless_the_rest_scale_up() {
        // s1 failed. From 4: s0 asks ceil(900 / 100) = 9 > 4, so the HPA scales up on s0
        // (max(2 × 4, 4) = 8 this sync). s0 asking ceil(200 / 100) = 2 < 4: hold at 4.
        let p = plan(&input(
            vec![trigger("s0", 100.0, 900.0), failed("s1", 10.0, 1)],
            Some(4),
        ));
        assert_eq!(p.next, Some(8));
        let p = plan(&input(
            vec![trigger("s0", 100.0, 200.0), failed("s1", 10.0, 1)],
            Some(4),
        ));
        assert_eq!(p.next, Some(4));
        assert_eq!(step(&p, "metrics").replicas, Some(4));
        // Every trigger failed: hold, and never to zero.
        let p = plan(&input(vec![failed("s0", 100.0, 1)], Some(6)));
        assert_eq!((p.next, p.settles_at), (Some(6), Some(6)));
        assert!(
            step(&p, "scale to zero")
                .why
                .contains("never scales to zero")
        );
    }

    #[test]
    fn fallback_serves_its_replicas_after_the_threshold() {
        // fallback 3 after 2 failures: the value served is 3 × 100 = 300, ceil(300 / 100) = 3.
        let mut i = input(vec![failed("s0", 100.0, 2)], Some(6));
        i.fallback = Some(Fallback {
            failure_threshold: 2,
            replicas: 3,
        });
        let p = plan(&i);
        assert_eq!(p.triggers[0].value, Some(300.0));
        assert_eq!(p.triggers[0].proposal, Some(3));
        assert_eq!(p.settles_at, Some(3));
        // One failure is below the threshold: no value, hold.
        i.triggers = vec![failed("s0", 100.0, 1)];
        assert_eq!(plan(&i).settles_at, Some(6));
    }

    #[test]
    fn current_outside_min_and_max_is_set_at_once() {
        // 30 > maxReplicaCount 24: 24 without reading metrics or rate limits.
        let p = plan(&input(vec![trigger("s0", 100.0, 100.0)], Some(30)));
        assert_eq!(p.next, Some(24));
    }

    #[test]
    fn paused_holds() {
        let mut i = input(vec![trigger("s0", 100.0, 900.0)], Some(2));
        i.pause = Pause::PausedAt(7);
        assert_eq!(plan(&i).next, Some(7));
        i.pause = Pause::Paused;
        assert_eq!(plan(&i).next, Some(2));
    }

    #[test]
    fn behaviors_are_checked_as_the_api_server_checks_them() {
        let bad = |json: serde_json::Value| {
            HpaRules::from_behavior(Some(&serde_json::from_value(json).unwrap())).unwrap_err()
        };
        assert_eq!(
            bad(serde_json::json!({"scaleUp": {"stabilizationWindowSeconds": 3601}})),
            "behavior.scaleUp.stabilizationWindowSeconds: 3601 is not between 0 and 3600"
        );
        assert_eq!(
            bad(
                serde_json::json!({"scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}})
            ),
            "behavior.scaleDown.policies[0].value: must be greater than 0, got 0"
        );
        assert_eq!(
            bad(
                serde_json::json!({"scaleDown": {"policies": [{"type": "Percent", "value": 5, "periodSeconds": 1801}]}})
            ),
            "behavior.scaleDown.policies[0].periodSeconds: 1801 is not between 1 and 1800"
        );
        assert_eq!(
            bad(serde_json::json!({"scaleUp": {"selectPolicy": "Fastest"}})),
            "behavior.scaleUp.selectPolicy: \"Fastest\" is not one of Max, Min, Disabled"
        );
        assert_eq!(
            bad(serde_json::json!({"scaleUp": {"policies": []}})),
            "behavior.scaleUp.policies: needs at least one policy"
        );
        assert!(
            bad(serde_json::json!({"scaleUp": {"tolerance": "lots"}}))
                .contains("is not a quantity")
        );
        assert_eq!(parse_decimal_quantity("0.05"), Some(0.05));
        assert_eq!(parse_decimal_quantity("50m"), Some(0.05));
        assert_eq!(parse_decimal_quantity("5e-2"), Some(0.05));
        assert_eq!(parse_decimal_quantity("1Ki"), None);
    }

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

    const ORDERS: &str = r#"
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

    fn source(text: &str) -> Result<PlanSource, PlanError> {
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
    fn plans_print_a_table_and_a_summary() {
        let mut s = source(ORDERS).unwrap();
        s.set_values(&[
            TriggerValue {
                index: 0,
                value: 450.0,
            },
            TriggerValue {
                index: 1,
                value: 30.0,
            },
        ])
        .unwrap();
        s.input.current_replicas = Some(2);
        let text = plan(&s.input).to_string();
        // ceil(450 / 100) = 5, ceil(30 / 20) = 2; max(2 × 2, 4) = 4 from 2.
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("s0 "))
            .unwrap()
            .split_whitespace()
            .collect();
        // TRIGGER METRIC VALUE TARGET ACTIVE USAGE-RATIO TOLERANCE PROPOSAL: 450 / (100 × 2) = 2.25.
        assert_eq!(
            row[..10],
            [
                "s0",
                "s0-kafka-orders",
                "450",
                "100",
                "yes",
                "2.25",
                "outside",
                "[0.9,",
                "1.1]",
                "5"
            ],
            "{text}"
        );
        assert!(text.contains("ceil(450 / 100) = 5"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("result") && l.contains(" 4  from 2 to 4")),
            "{text}"
        );
        assert!(
            text.ends_with("it goes on toward 5 in the next syncs (every 15 s).\n"),
            "{text}"
        );
    }
}
