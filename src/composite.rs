//! The composite metric of `advanced.scalingModifiers`, as KEDA defines it: one value computed
//! by a [`Formula`] over the object's named triggers replaces their metrics on the HPA (named
//! [`COMPOSITE_METRIC`], with the formula's own target), and decides activity against its own
//! `activationTarget`.
//!
//! [`Composite::evaluate`] is the one rule, shared by the metrics API (what the HPA reads), the
//! controller (activity, scaling to and from zero) and `spillway plan`:
//! - every trigger spillway polls must have a current reading, named or not (a partial
//!   formula would under-scale): otherwise the metric is unavailable (503), never a value;
//! - a trigger past `fallback.failureThreshold` serves `fallback.replicas × target` for the
//!   whole composite (the replicas chosen by `fallback.behavior`), as KEDA does; with
//!   `fallback.behavior: scalingModifiers` it enters the formula as `nil` instead, so
//!   `name ?? default` decides, and a formula that then gives nil serves the fallback value;
//! - a formula that fails, or gives a value that is not finite, is unavailable with its error.

use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::{TriggerState, past_failure_threshold};
use crate::config::MetricType;
use crate::formula::Formula;

/// The metric name the HPA of an object with `scalingModifiers` reads (KEDA's name).
pub const COMPOSITE_METRIC: &str = "composite-metric";

/// One object's composite metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Composite {
    pub formula: Arc<Formula>,
    /// The HPA's target for the composite value.
    pub target: f64,
    /// The composite value is active above this.
    pub activation_target: f64,
    /// How the HPA compares the value with `target`.
    pub metric_type: MetricType,
    /// The index in `spec.triggers` of the trigger behind each of the formula's names, in
    /// [`Formula::names`] order.
    pub inputs: Vec<usize>,
    /// `fallback.behavior: scalingModifiers`: a trigger in fallback enters the formula as nil.
    pub nil_in_fallback: bool,
}

/// The failure threshold and the replicas fallback steers to, when `fallback` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackRule {
    pub failure_threshold: u32,
    pub replicas: u32,
}

/// What the composite metric is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The formula's value over current readings; `read_at` is the oldest of them.
    Value { value: f64, read_at: SystemTime },
    /// Fallback applies: `value` steers the HPA to `replicas`; `why` names the trigger.
    Fallback {
        replicas: u32,
        value: f64,
        why: String,
    },
    /// No value can be served now, and why.
    Unavailable(String),
}

/// One trigger as the composite sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A current reading, taken at `read_at`.
    Read { value: f64, read_at: SystemTime },
    /// The latest poll failed, the last `consecutive_failures` in a row.
    Failed {
        consecutive_failures: u32,
        error: String,
    },
    /// Not polled yet.
    NotRead,
}

impl Input {
    /// A trigger's state in the metric cache (`None`: no poll recorded yet).
    pub fn of(state: Option<&TriggerState>) -> Self {
        match state {
            None => Self::NotRead,
            Some(state) => match (state.current(), &state.error) {
                (Some(reading), _) => Self::Read {
                    value: reading.value,
                    read_at: reading.timestamp,
                },
                (None, Some(error)) => Self::Failed {
                    consecutive_failures: state.consecutive_failures,
                    error: error.to_string(),
                },
                (None, None) => Self::NotRead,
            },
        }
    }
}

impl Composite {
    /// The composite metric for `states`: one entry per trigger spillway polls, with its index
    /// in `spec.triggers` (`None`: not polled yet), under `fallback` when the object sets it.
    pub fn evaluate(
        &self,
        states: &[(usize, Option<&TriggerState>)],
        fallback: Option<FallbackRule>,
    ) -> Outcome {
        let inputs: Vec<(usize, Input)> = states
            .iter()
            .map(|(index, state)| (*index, Input::of(*state)))
            .collect();
        self.evaluate_inputs(&inputs, fallback)
    }

    /// [`Composite::evaluate`] over triggers as [`Input`]s (`spillway plan` has no cache).
    pub fn evaluate_inputs(
        &self,
        triggers: &[(usize, Input)],
        fallback: Option<FallbackRule>,
    ) -> Outcome {
        let in_fallback = |failures: u32| {
            fallback.is_some_and(|f| past_failure_threshold(failures, f.failure_threshold))
        };
        let failure = |index: usize, failures: u32, error: &str| {
            format!("trigger {index} failed {failures} polls in a row: {error}")
        };
        let fallback_outcome = |rule: FallbackRule, why: String| Outcome::Fallback {
            replicas: rule.replicas,
            value: f64::from(rule.replicas) * self.target,
            why,
        };
        // A trigger in fallback answers for the whole composite, before any unread one, as in
        // KEDA (unless the formula takes it as nil).
        if !self.nil_in_fallback
            && let Some(rule) = fallback
            && let Some(why) = triggers.iter().find_map(|(index, input)| match input {
                Input::Failed {
                    consecutive_failures,
                    error,
                } if in_fallback(*consecutive_failures) => {
                    Some(failure(*index, *consecutive_failures, error))
                }
                _ => None,
            })
        {
            return fallback_outcome(rule, why);
        }
        let mut values: Vec<(usize, Option<f64>)> = Vec::with_capacity(triggers.len());
        let mut oldest: Option<SystemTime> = None;
        let mut nil_reason = None;
        for (index, input) in triggers {
            match input {
                Input::Read { value, read_at } => {
                    values.push((*index, Some(*value)));
                    oldest = Some(oldest.map_or(*read_at, |t| t.min(*read_at)));
                }
                Input::Failed {
                    consecutive_failures,
                    error,
                } if self.nil_in_fallback && in_fallback(*consecutive_failures) => {
                    nil_reason.get_or_insert_with(|| failure(*index, *consecutive_failures, error));
                    values.push((*index, None));
                }
                Input::Failed {
                    consecutive_failures,
                    error,
                } => {
                    return Outcome::Unavailable(failure(*index, *consecutive_failures, error));
                }
                Input::NotRead => {
                    return Outcome::Unavailable(format!("trigger {index} has no reading yet"));
                }
            }
        }
        let inputs: Vec<Option<f64>> = self
            .inputs
            .iter()
            .map(|index| {
                values
                    .iter()
                    .find(|(i, _)| i == index)
                    .and_then(|(_, v)| *v)
            })
            .collect();
        match self.formula.evaluate(&inputs) {
            Ok(Some(value)) if value.is_finite() => Outcome::Value {
                value,
                read_at: oldest.unwrap_or_else(SystemTime::now),
            },
            Ok(Some(value)) => {
                Outcome::Unavailable(format!("the formula gives {value}, not a finite number"))
            }
            Ok(None) => match fallback {
                Some(rule) => fallback_outcome(
                    rule,
                    format!(
                        "the formula gives nil ({})",
                        nil_reason.unwrap_or_else(|| "no trigger in fallback".into())
                    ),
                ),
                None => {
                    Outcome::Unavailable("the formula gives nil and there is no fallback".into())
                }
            },
            Err(err) => Outcome::Unavailable(format!("the formula fails: {err}")),
        }
    }

    /// Whether `outcome` is active: a value above `activationTarget` (a fallback or no value
    /// says nothing about activity).
    pub fn is_active(&self, outcome: &Outcome) -> Option<bool> {
        match outcome {
            Outcome::Value { value, .. } => Some(*value > self.activation_target),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::scalers::{Reading, ScalerError};

    fn composite(text: &str, names: &[&str], inputs: &[usize], nil: bool) -> Composite {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        Composite {
            formula: Arc::new(Formula::compile(text, &names).unwrap()),
            target: 10.0,
            activation_target: 5.0,
            metric_type: MetricType::AverageValue,
            inputs: inputs.to_vec(),
            nil_in_fallback: nil,
        }
    }

    fn read(value: f64, age: u64) -> TriggerState {
        TriggerState {
            last_reading: Some(Reading {
                timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age),
                ..Reading::new(value, value > 0.0)
            }),
            error: None,
            consecutive_failures: 0,
            polled_at: Instant::now(),
            polled_at_wall: SystemTime::now(),
            poll_duration: Duration::ZERO,
            recorded_at: Instant::now(),
            polls: 1,
            spec_version: None,
        }
    }

    fn failed(failures: u32) -> TriggerState {
        TriggerState {
            error: Some(ScalerError::Unreachable {
                broker: "kafka",
                target: "k:9092".into(),
                cause: "connection refused".into(),
            }),
            consecutive_failures: failures,
            ..read(7.0, 0)
        }
    }

    const RULE: FallbackRule = FallbackRule {
        failure_threshold: 2,
        replicas: 3,
    };

    #[test]
    fn the_formula_runs_over_current_readings_and_is_active_above_its_activation_target() {
        let c = composite("(a + b) / 2", &["a", "b"], &[0, 2], false);
        let (a, b, unnamed) = (read(4.0, 5), read(8.0, 1), read(100.0, 0));
        let outcome = c.evaluate(&[(0, Some(&a)), (1, Some(&unnamed)), (2, Some(&b))], None);
        let Outcome::Value { value, read_at } = outcome.clone() else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            value, 6.0,
            "the unnamed trigger takes no part in the formula"
        );
        assert_eq!(
            read_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(995),
            "the oldest"
        );
        assert_eq!(c.is_active(&outcome), Some(true));
        let low = c.evaluate(&[(0, Some(&read(1.0, 0))), (2, Some(&read(1.0, 0)))], None);
        assert_eq!(c.is_active(&low), Some(false));
    }

    #[test]
    fn a_failing_or_unread_trigger_makes_it_unavailable_never_a_value() {
        let c = composite("a + b", &["a", "b"], &[0, 1], false);
        let a = read(4.0, 0);
        for (states, why) in [
            (
                vec![(0, Some(&a)), (1, None)],
                "trigger 1 has no reading yet",
            ),
            (
                vec![(0, Some(&a)), (1, Some(&failed(1)))],
                "trigger 1 failed 1 polls",
            ),
        ] {
            let outcome = c.evaluate(&states, Some(RULE));
            assert!(
                matches!(&outcome, Outcome::Unavailable(m) if m.contains(why)),
                "{outcome:?}"
            );
            assert_eq!(c.is_active(&outcome), None);
        }
        // An unnamed trigger counts too.
        let named_only = composite("a", &["a"], &[0], false);
        let outcome = named_only.evaluate(&[(0, Some(&a)), (1, Some(&failed(1)))], None);
        assert!(matches!(outcome, Outcome::Unavailable(_)), "{outcome:?}");
    }

    #[test]
    fn past_the_threshold_fallback_serves_replicas_times_the_formula_s_target() {
        let c = composite("a + b", &["a", "b"], &[0, 1], false);
        let outcome = c.evaluate(
            &[(0, Some(&read(4.0, 0))), (1, Some(&failed(3)))],
            Some(RULE),
        );
        assert!(
            matches!(&outcome, Outcome::Fallback { replicas: 3, value, why } if *value == 30.0 && why.contains("trigger 1 failed 3")),
            "{outcome:?}"
        );
        // Without fallback, the same failure is a 503.
        let outcome = c.evaluate(&[(0, Some(&read(4.0, 0))), (1, Some(&failed(3)))], None);
        assert!(matches!(outcome, Outcome::Unavailable(_)));
    }

    #[test]
    fn with_behavior_scaling_modifiers_a_trigger_in_fallback_is_nil_in_the_formula() {
        let c = composite("a + (b ?? 20)", &["a", "b"], &[0, 1], true);
        let a = read(4.0, 0);
        let outcome = c.evaluate(&[(0, Some(&a)), (1, Some(&failed(3)))], Some(RULE));
        assert!(
            matches!(outcome, Outcome::Value { value, .. } if value == 24.0),
            "{outcome:?}"
        );
        // Below the threshold it is still unavailable.
        let outcome = c.evaluate(&[(0, Some(&a)), (1, Some(&failed(2)))], Some(RULE));
        assert!(matches!(outcome, Outcome::Unavailable(_)), "{outcome:?}");
        // A formula that gives nil serves fallback.replicas × target.
        let nil = composite("b ?? nil", &["b"], &[1], true);
        let outcome = nil.evaluate(&[(0, Some(&a)), (1, Some(&failed(3)))], Some(RULE));
        assert!(
            matches!(&outcome, Outcome::Fallback { replicas: 3, value, .. } if *value == 30.0),
            "{outcome:?}"
        );
        // A formula without a default fails, with the reason.
        let plain = composite("a + b", &["a", "b"], &[0, 1], true);
        let outcome = plain.evaluate(&[(0, Some(&a)), (1, Some(&failed(3)))], Some(RULE));
        assert!(
            matches!(&outcome, Outcome::Unavailable(m) if m.contains("?? 0")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_value_that_is_not_finite_is_not_served() {
        let c = composite("a / b", &["a", "b"], &[0, 1], false);
        let outcome = c.evaluate(&[(0, Some(&read(1.0, 0))), (1, Some(&read(0.0, 0)))], None);
        assert!(
            matches!(&outcome, Outcome::Unavailable(m) if m.contains("inf")),
            "{outcome:?}"
        );
    }
}
