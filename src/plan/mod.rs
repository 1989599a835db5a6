//! `spillway plan`: the replica count a scaled object gets from its triggers' values, as the
//! HPA computes it (kubernetes `pkg/controller/podautoscaler`), plus the controller's own step
//! to and from zero, which an HPA cannot take. Given the current count, every step of one HPA
//! sync and why; without it, where the count settles (what `spillway watch` shows).

mod hpa_rules;
mod input;
mod manifests;
mod render;
mod steps;

pub use hpa_rules::{
    DEFAULT_TOLERANCE, DOWNSCALE_STABILIZATION_SECONDS, HpaRules, PolicyKind, SYNC_PERIOD_SECONDS,
    ScalingPolicy, ScalingRules, SelectPolicy, Tolerance,
};
pub use input::{
    DEFAULT_COOLDOWN_SECONDS, Fallback, Observed, Pause, PlanError, PlanInput, PlanSource,
    PlanTrigger, TriggerValue,
};
pub use manifests::parse_scaled_objects;
pub use steps::{Plan, PlanStep, TriggerPlan, plan};
