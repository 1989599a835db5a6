//! The HPA's rules for one sync, as kubernetes `pkg/controller/podautoscaler` applies them:
//! AverageValue or Value per trigger (ceil on milli-units), the tolerance band, the stabilization
//! windows and the scaling policies of a `behavior`, or the built-in limits without one.

use std::fmt::{self, Write as _};

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

use super::render::format_number;

/// The HPA's AverageValue rule, ceil(value / target), on milli-units as the HPA reads
/// quantities (`MilliValue()`), so 1.1 / 0.1 is 11, not 12; saturating. A non-positive target
/// or value asks nothing.
pub(super) fn average_value_replicas(value: f64, target: f64) -> u32 {
    let (value, target) = (milli(value), milli(target));
    if target <= 0 || value <= 0 {
        return 0;
    }
    // Float division and ceil, as the HPA's replica calculator does; `as` saturates.
    (value as f64 / target as f64).ceil() as u32
}

/// usage / (target × current): how far the value is from what `current` replicas carry.
pub(super) fn usage_ratio(value: f64, target: f64, current: u32) -> f64 {
    milli(value) as f64 / (milli(target) as f64 * f64::from(current))
}

/// The HPA's Value rule for an External metric: usage / target scales the current replicas,
/// ceil(ratio × current), or ceil(ratio) at 0 (kubernetes `getUsageRatioReplicaCount`, with
/// every replica taken as ready). Returns the replicas and the ratio.
pub(super) fn value_replicas(value: f64, target: f64, current: Option<u32>) -> (u32, f64) {
    let (value, target) = (milli(value), milli(target));
    if target <= 0 || value <= 0 {
        return (0, 0.0);
    }
    let ratio = value as f64 / target as f64;
    let scaled = match current {
        Some(current) if current > 0 => ratio * f64::from(current),
        _ => ratio,
    };
    (scaled.ceil() as u32, ratio)
}

/// A value in milli-units, rounded; NaN reads as 0 and the rest saturates (`as`).
fn milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

/// The controller manager's `--horizontal-pod-autoscaler-tolerance` default.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// The controller manager's `--horizontal-pod-autoscaler-downscale-stabilization` default.
pub const DOWNSCALE_STABILIZATION_SECONDS: u32 = 300;
/// The controller manager's `--horizontal-pod-autoscaler-sync-period` default.
pub const SYNC_PERIOD_SECONDS: u32 = 15;

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
    pub(super) fn window(&self, up: bool) -> u32 {
        match (self, up) {
            (Self::Builtin, true) => 0,
            (Self::Builtin, false) => DOWNSCALE_STABILIZATION_SECONDS,
            (Self::Behavior { scale_up, .. }, true) => scale_up.stabilization_window_seconds,
            (Self::Behavior { scale_down, .. }, false) => scale_down.stabilization_window_seconds,
        }
    }

    /// One step from `current` toward `desired` (already within min and max), limited by the
    /// rate rules, and why.
    pub(super) fn limit_step(
        &self,
        current: u32,
        desired: u32,
        min: u32,
        max: u32,
    ) -> (u32, String) {
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
    if text.trim().ends_with('i') {
        return None;
    }
    crate::quantity::parse_quantity(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_works_on_milli_units_as_the_hpa_reads_quantities() {
        // In f64, 1.1 / 0.1 is 11.000000000000002, whose ceil would be 12; as quantities
        // "1100m" / "100m" it is 11.
        assert_eq!(average_value_replicas(1.1, 0.1), 11);
        assert_eq!(average_value_replicas(450.0, 100.0), 5);
        assert_eq!(average_value_replicas(0.0, 100.0), 0);
        assert_eq!(average_value_replicas(5.0, 0.0), 0);
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
}
