//! The plan itself: one HPA sync for a scaled object, step by step (the triggers' proposals,
//! min/max, the controller's step to or from zero, stabilization and the rate limit), and why.

use std::fmt::Write as _;

use super::hpa_rules::{
    DEFAULT_TOLERANCE, HpaRules, SYNC_PERIOD_SECONDS, Tolerance, average_value_replicas,
    usage_ratio, value_replicas,
};
use super::input::{Fallback, Observed, Pause, PlanInput, PlanTrigger, metric_label};
use super::render::{format_number, format_ratio};
use crate::composite::COMPOSITE_METRIC;
use crate::config::MetricType;
use crate::controller::scale_to_zero::{
    Cooldown, HoldReason, TriggerActivity, ZeroDecision, ZeroRules, decide,
};

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

impl TriggerPlan {
    /// A trigger the HPA gets no value for, and why.
    fn without_value(trigger: &PlanTrigger, target: f64, why: String) -> Self {
        Self {
            metric: trigger.metric.clone(),
            target,
            value: None,
            active: None,
            ratio: None,
            within_tolerance: None,
            raw: None,
            proposal: None,
            why,
        }
    }
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

impl Plan {
    /// Why the count settles where it does, in one line: the pause, the controller's step to
    /// or from zero when it takes one, else what the triggers ask within the HPA's bounds.
    pub fn settling_reason(&self) -> String {
        let step = |name: &str| self.steps.iter().find(|s| s.name == name);
        if let Some(paused) = step("paused") {
            return paused.why.clone();
        }
        match step("scale to zero") {
            Some(zero) if zero.replicas.is_some() => zero.why.clone(),
            _ => ["metrics", "min/max"]
                .into_iter()
                .filter_map(step)
                .map(|s| s.why.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// One HPA sync for `input` (and spillway's step to or from zero), step by step.
pub fn plan(input: &PlanInput) -> Plan {
    // scalingModifiers: the HPA, and the step to or from zero, see the composite alone.
    if let Some(composite) = input.composite_trigger() {
        let mut planned = plan(&PlanInput {
            triggers: vec![composite],
            composite: None,
            ..input.clone()
        });
        let hpa_min = input.min_replica_count.max(1);
        planned.settings = settings_line(input, hpa_min, input.max_replica_count.max(hpa_min));
        return planned;
    }
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
        .map(|(_, t)| metric_label(&t.metric).to_owned())
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
        // Without a current count nobody knows whether `p` is a step up (taken) or down (not
        // taken on partial data): the count is held, as the live view shows it.
        Some((_, p)) if !failed.is_empty() && current.is_none() => {
            step(
                "metrics",
                None,
                format!(
                    "{} without a value: the HPA uses the others (at most {p}) only to scale up, so the count is held unless it is below {p}",
                    failed.join(", ")
                ),
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
                format!("{} asks {p}", metric_label(&triggers[index].metric))
            } else {
                let others: Vec<String> = valid
                    .iter()
                    .filter(|(i, _)| *i != index)
                    .map(|(i, q)| format!("{} {q}", metric_label(&triggers[*i].metric)))
                    .collect();
                format!(
                    "the most any trigger asks: {} {p} ({})",
                    metric_label(&triggers[index].metric),
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

    // 3. Spillway's controller: to and from zero (or idleReplicaCount). A plan reads no
    // status, so it cannot tell how long the triggers have been idle: it takes cooldownPeriod
    // as passed, and its texts say so.
    let zero_rules = ZeroRules {
        min_replica_count: min,
        idle_replica_count: input.idle_replica_count,
        cooldown_seconds: input.cooldown_seconds,
        fallback: input.fallback,
    };
    let activity: Vec<TriggerActivity> = input
        .triggers
        .iter()
        .map(|t| t.observed.activity())
        .collect();
    let zero = decide(&zero_rules, current, &activity, Cooldown::AssumedPassed);
    let idle = zero_rules.idle_replicas();
    let idle_name = if input.idle_replica_count.is_some() {
        format!("idleReplicaCount {idle}")
    } else {
        "0".to_owned()
    };
    let mut settles_at = clamped.or(current);
    match &zero {
        ZeroDecision::ToIdle { to, .. } => {
            settles_at = Some(*to);
            step(
                "scale to zero",
                Some(*to),
                format!(
                    "no trigger active: once cooldownPeriod {} s has passed since the last active poll, the controller scales to {idle_name} and removes the HPA",
                    input.cooldown_seconds
                ),
            );
        }
        ZeroDecision::FromIdle { to } => step(
            "scale to zero",
            Some(*to),
            format!(
                "a trigger is active at {} replicas: the controller scales to {to} (max(1, minReplicaCount)) and the HPA takes over from there",
                current.unwrap_or_default()
            ),
        ),
        ZeroDecision::FallbackFromZero { to, .. } => step(
            "scale to zero",
            Some(*to),
            format!(
                "at 0 with a trigger past fallback.failureThreshold: the controller scales to {}",
                input
                    .fallback
                    .map_or(format!("fallback.replicas {to}"), |f| {
                        fallback_replicas_text(f, *to)
                    })
            ),
        ),
        ZeroDecision::Hold(reason) => step(
            "scale to zero",
            None,
            hold_why(reason, input, &triggers, hpa_min),
        ),
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
            if matches!(zero, ZeroDecision::ToIdle { .. }) {
                let _ = write!(
                    summary,
                    " No trigger is active: {idle_name} after cooldownPeriod {} s.",
                    input.cooldown_seconds
                );
            }
        }
        Some(c) => match zero {
            ZeroDecision::FromIdle { to } => {
                next = Some(to);
                summary = format!(
                    "The controller scales {object} from {c} to {to} replicas; the HPA then goes on toward {}.",
                    clamped.map_or("-".into(), |n| n.to_string())
                );
            }
            ZeroDecision::FallbackFromZero { to, .. } => {
                next = Some(to);
                summary = format!(
                    "The controller scales {object} from 0 to fallback.replicas {to}: a trigger keeps failing."
                );
            }
            ZeroDecision::ToIdle { to, .. } if c <= to => {
                next = Some(to);
                summary = format!("{object} stays idle at {to} replicas: no trigger is active.");
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
                if matches!(zero, ZeroDecision::ToIdle { .. }) {
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

/// Why the controller leaves the count alone, in the plan's words.
fn hold_why(
    reason: &HoldReason,
    input: &PlanInput,
    triggers: &[TriggerPlan],
    hpa_min: u32,
) -> String {
    let min = input.min_replica_count;
    match reason {
        HoldReason::NeverIdle => {
            format!("minReplicaCount {min} and no idleReplicaCount: never below {min}")
        }
        HoldReason::Active { trigger } => format!(
            "{} is active ({} > activation {}): the target stays at {hpa_min} or more",
            metric_label(&triggers[*trigger].metric),
            triggers[*trigger].value.map_or("-".into(), format_number),
            format_number(input.triggers[*trigger].activation)
        ),
        HoldReason::CoolingDown { idle_for } => format!(
            "no trigger active for {} s, less than cooldownPeriod {} s: the count is kept",
            idle_for.as_secs(),
            input.cooldown_seconds
        ),
        HoldReason::Unread { triggers: unread } => format!(
            "{} without a value: a failing trigger never scales to zero",
            unread
                .iter()
                .map(|i| metric_label(&triggers[*i].metric))
                .collect::<Vec<_>>()
                .join(", ")
        ),
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

/// How fallback came to `replicas`: "fallback.replicas 3", or "currentReplicasIfHigher
/// max(5, fallback.replicas 3) = 5".
fn fallback_replicas_text(f: Fallback, replicas: u32) -> String {
    use crate::controller::crd::FallbackBehavior::*;
    match f.behavior {
        Static | ScalingModifiers => format!("fallback.replicas {replicas}"),
        CurrentReplicas => format!("currentReplicas {replicas}"),
        CurrentReplicasIfHigher => format!(
            "currentReplicasIfHigher (the higher of current and fallback.replicas {}) {replicas}",
            f.replicas
        ),
        CurrentReplicasIfLower => format!(
            "currentReplicasIfLower (the lower of current and fallback.replicas {}) {replicas}",
            f.replicas
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
            Some(f) if f.applies(*consecutive_failures) => match f.replicas_at(current) {
                Some(replicas) => (
                    Some(f64::from(replicas) * target),
                    None,
                    Some(format!(
                        "failed {consecutive_failures} polls in a row (fallback.failureThreshold {}): {} × target is served: {error}",
                        f.failure_threshold,
                        fallback_replicas_text(f, replicas)
                    )),
                ),
                None => {
                    return TriggerPlan::without_value(
                        trigger,
                        target,
                        format!(
                            "no value: past fallback.failureThreshold {}, but fallback.behavior {} serves from the target's current replicas (give --current-replicas): {error}",
                            f.failure_threshold,
                            f.behavior.as_str()
                        ),
                    );
                }
            },
            _ => {
                return TriggerPlan::without_value(trigger, target, format!("no value: {error}"));
            }
        },
    };
    let by_value = trigger.metric_type == MetricType::Value;
    let (raw, ratio) = if by_value {
        let computed = value.map(|v| value_replicas(v, target, current));
        (
            computed.map(|(replicas, _)| replicas),
            computed
                .filter(|_| current.is_some_and(|c| c > 0))
                .map(|(_, ratio)| ratio),
        )
    } else {
        (
            value.map(|v| average_value_replicas(v, target)),
            value
                .zip(current.filter(|c| *c > 0))
                .map(|(v, c)| usage_ratio(v, target, c)),
        )
    };
    let within = ratio.map(|r| tolerance.contains(r));
    let (proposal, mut why) = match (value, raw, within, current) {
        (Some(_), _, Some(true), Some(c)) => (
            Some(c),
            format!(
                "usage ratio {} within {tolerance}: keeps {c}",
                format_ratio(ratio.unwrap_or_default())
            ),
        ),
        (Some(v), Some(r), _, Some(c)) if by_value && c > 0 => (
            Some(r),
            format!(
                "Value target: ceil({c} × {} / {}) = {r}",
                format_number(v),
                format_number(target)
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
            ", fallback {} after more than {} failures",
            f.replicas, f.failure_threshold
        );
        if f.behavior.as_str() != "static" {
            let _ = write!(line, " ({})", f.behavior.as_str());
        }
    }
    if let Some(composite) = &input.composite {
        let _ = write!(
            line,
            "\nscalingModifiers: the HPA reads {COMPOSITE_METRIC} = {} over {}, target {}, active above {}",
            composite.formula.text(),
            composite.formula.names().join(", "),
            format_number(composite.target),
            format_number(composite.activation_target)
        );
    }
    if !input.resource_triggers.is_empty() {
        let _ = write!(
            line,
            "\nAlso on the HPA, read by it from the cluster's resource metrics and not planned here: {}",
            input.resource_triggers.join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::crd::FallbackBehavior;

    // Plans: every number below is worked out in the comment beside it, from the rules in
    // docs/k8s-metrics-api.md ("The HPA (autoscaling/v2) and External metrics").

    fn trigger(metric: &str, target: f64, value: f64) -> PlanTrigger {
        PlanTrigger {
            metric: metric.into(),
            target,
            metric_type: MetricType::AverageValue,
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
            metric_type: MetricType::AverageValue,
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
            composite: None,
            resource_triggers: Vec::new(),
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
    fn without_a_current_count_the_plan_says_where_the_count_settles() {
        // What `spillway watch` shows: ceil(value / target), the most of any trigger, within
        // max(1, minReplicaCount) and maxReplicaCount; 0 when nothing is active and
        // minReplicaCount is 0; no number when no trigger has a value.
        let cases = [
            // ceil(1500 / 10) = 150, capped at 100.
            (vec![trigger("s0", 10.0, 1500.0)], 0, 100, Some(100)),
            (vec![trigger("s0", 100.0, 1500.0)], 0, 100, Some(15)),
            // max(ceil(1500 / 100), ceil(30 / 1)) = 30.
            (
                vec![trigger("s0", 100.0, 1500.0), trigger("s1", 1.0, 30.0)],
                0,
                100,
                Some(30),
            ),
            // ceil(30 / 1000) = 1, raised to minReplicaCount 3, or to the HPA's 1.
            (vec![trigger("s0", 1000.0, 30.0)], 3, 10, Some(3)),
            (vec![trigger("s0", 1000.0, 30.0)], 0, 10, Some(1)),
            // Idle: 0 with minReplicaCount 0, else minReplicaCount.
            (vec![trigger("s0", 10.0, 0.0)], 0, 5, Some(0)),
            (vec![trigger("s0", 10.0, 0.0)], 2, 5, Some(2)),
            // No value: the count is held, never read as 0.
            (vec![failed("s0", 10.0, 1)], 0, 5, None),
            // One idle trigger and one without a value: held too (the HPA does not scale
            // down on partial data, and a failing trigger never scales to zero).
            (
                vec![trigger("s0", 10.0, 0.0), failed("s1", 10.0, 1)],
                0,
                5,
                None,
            ),
        ];
        for (triggers, min, max, want) in cases {
            let mut i = input(triggers, None);
            (i.min_replica_count, i.max_replica_count) = (min, max);
            assert_eq!(plan(&i).settles_at, want, "{i:?}");
        }
    }

    #[test]
    fn the_settling_reason_is_the_step_that_decides() {
        let p = plan(&input(vec![trigger("s0", 100.0, 1000.0)], None));
        assert_eq!(
            p.settling_reason(),
            "s0 asks 10; within minReplicas 1 (max(1, minReplicaCount 0)) and maxReplicas 24"
        );
        let p = plan(&input(vec![trigger("s0", 100.0, 0.0)], None));
        assert!(
            p.settling_reason()
                .starts_with("no trigger active: once cooldownPeriod 300 s"),
            "{}",
            p.settling_reason()
        );
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
    fn a_value_target_scales_the_current_count_by_value_over_target() {
        // metricType Value, target 100, current 4: ratio = value / 100, not / (100 × 4).
        let cases = [
            // 150 / 100 = 1.5: ceil(4 × 1.5) = 6.
            (150.0, Some(4), Some(1.5), false, 6),
            // 105 / 100 = 1.05: inside the band, keeps 4.
            (105.0, Some(4), Some(1.05), true, 4),
            // 30 / 100 = 0.3: ceil(4 × 0.3) = 2.
            (30.0, Some(4), Some(0.3), false, 2),
            // No current count: ceil(ratio) = ceil(2.5) = 3, as the HPA at 0 replicas.
            (250.0, None, None, false, 3),
        ];
        for (value, current, ratio, within, proposal) in cases {
            let mut t = trigger("s0-prometheus", 100.0, value);
            t.metric_type = MetricType::Value;
            let plan = plan(&input(vec![t], current));
            let t = &plan.triggers[0];
            assert_eq!(t.ratio, ratio, "{value}");
            assert_eq!(t.proposal, Some(proposal), "{value}");
            if current.is_some() {
                assert_eq!(t.within_tolerance, Some(within), "{value}");
            }
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
        // fallback 3 after more than 2 failures: at the third the value served is 3 × 100 = 300,
        // ceil(300 / 100) = 3.
        let mut i = input(vec![failed("s0", 100.0, 3)], Some(6));
        i.fallback = Some(Fallback {
            failure_threshold: 2,
            replicas: 3,
            behavior: FallbackBehavior::Static,
        });
        let p = plan(&i);
        assert_eq!(p.triggers[0].value, Some(300.0));
        assert_eq!(p.triggers[0].proposal, Some(3));
        assert_eq!(p.settles_at, Some(3));
        // Two failures are not more than the threshold: no value, hold (KEDA's rule).
        i.triggers = vec![failed("s0", 100.0, 2)];
        assert_eq!(plan(&i).settles_at, Some(6));
    }

    #[test]
    fn fallback_behaviors_serve_from_the_current_replicas() {
        use FallbackBehavior::*;
        // fallback 3 after more than 2 failures, target 100, at 6 replicas now:
        // (behavior, value served, settles at)
        let cases = [
            (Static, 300.0, 3),
            (CurrentReplicas, 600.0, 6),
            (CurrentReplicasIfHigher, 600.0, 6),
            (CurrentReplicasIfLower, 300.0, 3),
        ];
        for (behavior, value, settles) in cases {
            let mut i = input(vec![failed("s0", 100.0, 3)], Some(6));
            i.fallback = Some(Fallback {
                failure_threshold: 2,
                replicas: 3,
                behavior,
            });
            let p = plan(&i);
            assert_eq!(p.triggers[0].value, Some(value), "{behavior:?}");
            assert_eq!(p.settles_at, Some(settles), "{behavior:?}");
        }
        // At 2 now, IfHigher goes up to fallback.replicas 3 and IfLower holds 2.
        for (behavior, settles) in [(CurrentReplicasIfHigher, 3), (CurrentReplicasIfLower, 2)] {
            let mut i = input(vec![failed("s0", 100.0, 3)], Some(2));
            i.fallback = Some(Fallback {
                failure_threshold: 2,
                replicas: 3,
                behavior,
            });
            assert_eq!(plan(&i).settles_at, Some(settles), "{behavior:?}");
        }
        // Without --current-replicas only static has a value to serve.
        let mut i = input(vec![failed("s0", 100.0, 3)], None);
        i.fallback = Some(Fallback {
            failure_threshold: 2,
            replicas: 3,
            behavior: CurrentReplicas,
        });
        let p = plan(&i);
        assert_eq!(p.triggers[0].value, None);
        assert!(
            p.triggers[0].why.contains("--current-replicas"),
            "{}",
            p.triggers[0].why
        );
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
}
