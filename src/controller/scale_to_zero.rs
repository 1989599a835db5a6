//! Scaling to and from zero (or `idleReplicaCount`): an HPA never goes below one replica, so
//! the controller takes the target down when no trigger is active and back up when one is.
//! [`decide`] is that one decision, pure: `reconcile` acts on it and `spillway plan` predicts
//! it. Callers check pause first; a paused object is held, whatever its triggers say.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::crd::{FallbackBehavior, ScaledObjectSpec};
use crate::cache::TriggerState;
use crate::registry::past_failure_threshold;

/// `fallback`: replicas to steer the target to after repeated failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// Failures in a row a trigger may have before fallback applies: it applies from the next
    /// one (KEDA's rule, [`past_failure_threshold`]).
    pub failure_threshold: u32,
    pub replicas: u32,
    pub behavior: FallbackBehavior,
}

impl Fallback {
    /// Whether a trigger that failed `consecutive_failures` polls in a row is in fallback.
    pub fn applies(&self, consecutive_failures: u32) -> bool {
        past_failure_threshold(consecutive_failures, self.failure_threshold)
    }

    /// The replicas fallback steers a target at `current` replicas to (`None`: not known, and
    /// the behavior needs them).
    pub fn replicas_at(&self, current: Option<u32>) -> Option<u32> {
        self.behavior.replicas(self.replicas, current)
    }
}

/// The numbers of a spec that scaling to and from zero reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroRules {
    pub min_replica_count: u32,
    pub idle_replica_count: Option<u32>,
    pub cooldown_seconds: u32,
    pub fallback: Option<Fallback>,
}

impl ZeroRules {
    /// The rules of a ScaledObject's spec. The API server keeps every count at 0 or more; a
    /// `failureThreshold` of 0 means fallback from the first failure, as in KEDA.
    pub fn from_spec(spec: &ScaledObjectSpec) -> Self {
        let count = |n: i32| n.max(0) as u32;
        Self {
            min_replica_count: count(spec.min_replica_count),
            idle_replica_count: spec.idle_replica_count.map(count),
            cooldown_seconds: count(spec.cooldown_period),
            fallback: spec.fallback.as_ref().map(|f| Fallback {
                failure_threshold: count(f.failure_threshold),
                replicas: count(f.replicas),
                behavior: f.behavior,
            }),
        }
    }

    /// Whether the target goes below the HPA's minimum when idle: `minReplicaCount` 0, or an
    /// `idleReplicaCount`.
    pub fn scales_to_idle(&self) -> bool {
        self.min_replica_count == 0 || self.idle_replica_count.is_some()
    }

    /// The count while idle: `idleReplicaCount`, else 0.
    pub fn idle_replicas(&self) -> u32 {
        self.idle_replica_count.unwrap_or(0)
    }

    /// The HPA's minimum, where an active target starts: max(1, `minReplicaCount`).
    pub fn hpa_min_replicas(&self) -> u32 {
        self.min_replica_count.max(1)
    }

    /// The first trigger that failed more than `fallback.failureThreshold` polls in a row, when
    /// `fallback` is set.
    pub fn fallback_trigger(&self, triggers: &[TriggerActivity]) -> Option<usize> {
        let fallback = self.fallback?;
        triggers.iter().position(|t| {
            matches!(t, TriggerActivity::Failed { consecutive_failures } if fallback.applies(*consecutive_failures))
        })
    }
}

/// What one trigger's latest poll says about activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerActivity {
    /// A current reading, above the trigger's activation value (`active`) or not.
    Read { active: bool },
    /// The latest poll failed, the last `consecutive_failures` polls in a row: no current
    /// reading, so activity is unknown.
    Failed { consecutive_failures: u32 },
    /// Not polled yet.
    NotRead,
}

impl TriggerActivity {
    /// The activity of a trigger in the metric cache (`None`: no poll recorded yet).
    pub fn of(state: Option<&TriggerState>) -> Self {
        match state {
            None => Self::NotRead,
            Some(state) => match state.current() {
                Some(reading) => Self::Read {
                    active: reading.active,
                },
                None => Self::Failed {
                    consecutive_failures: state.consecutive_failures,
                },
            },
        }
    }

    pub fn is_active(self) -> bool {
        self == Self::Read { active: true }
    }
}

/// How long no trigger has been active, to hold against `cooldownPeriod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooldown {
    /// A trigger was last active at `last_active` (`status.lastActiveTime`, else the object's
    /// creation); it is `now`.
    Measured {
        last_active: Timestamp,
        now: Timestamp,
    },
    /// Not known (`spillway plan` reads no status): `cooldownPeriod` is taken as passed.
    AssumedPassed,
}

/// What the controller does about zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZeroDecision {
    /// A trigger is active and the target is at or below its idle count: up to the HPA's
    /// minimum, and the HPA takes over from there.
    FromIdle { to: u32 },
    /// Every trigger read and none active for `cooldownPeriod`: down to the idle count, and no
    /// HPA (its minimum of 1 would undo it). `idle_for`: how long, when measured.
    ToIdle {
        to: u32,
        idle_for: Option<SignedDuration>,
    },
    /// At 0 while `trigger` fails past `fallback.failureThreshold`: up to the replicas fallback
    /// steers to (`fallback.replicas`, or by its behavior), when above 0.
    FallbackFromZero { to: u32, trigger: usize },
    /// Nothing to do about zero: the HPA, if any, has the target.
    Hold(HoldReason),
}

/// Why the controller leaves the count alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldReason {
    /// `minReplicaCount` above 0 and no `idleReplicaCount`: never below `minReplicaCount`.
    NeverIdle,
    /// `trigger` (the first active one) is active, and the target is above its idle count or
    /// its count is not known.
    Active { trigger: usize },
    /// No trigger active, but for less than `cooldownPeriod`.
    CoolingDown { idle_for: SignedDuration },
    /// These triggers have no current reading: a failing trigger never scales to idle.
    Unread { triggers: Vec<usize> },
}

/// The step to or from zero for a target at `current` replicas (`None`: not known) whose
/// triggers say `triggers`.
pub fn decide(
    rules: &ZeroRules,
    current: Option<u32>,
    triggers: &[TriggerActivity],
    cooldown: Cooldown,
) -> ZeroDecision {
    let active = triggers.iter().position(|t| t.is_active());
    let unread: Vec<usize> = triggers
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t, TriggerActivity::Read { .. }))
        .map(|(index, _)| index)
        .collect();
    let scales_to_idle = rules.scales_to_idle();
    let idle = rules.idle_replicas();

    if active.is_some() && scales_to_idle && current.is_some_and(|c| c <= idle) {
        return ZeroDecision::FromIdle {
            to: rules.hpa_min_replicas(),
        };
    }
    // Every trigger read means none is failing, so fallback cannot apply here.
    if active.is_none() && unread.is_empty() && scales_to_idle {
        let idle_for = match cooldown {
            Cooldown::Measured { last_active, now } => Some(now.duration_since(last_active)),
            Cooldown::AssumedPassed => None,
        };
        return match idle_for {
            Some(idle_for) if idle_for.as_secs_f64() < f64::from(rules.cooldown_seconds) => {
                ZeroDecision::Hold(HoldReason::CoolingDown { idle_for })
            }
            _ => ZeroDecision::ToIdle { to: idle, idle_for },
        };
    }
    // From 0 only to a count above it: `currentReplicas` (and `IfLower`) hold a target at 0
    // there, as KEDA's do.
    if current == Some(0)
        && let (Some(fallback), Some(trigger)) = (rules.fallback, rules.fallback_trigger(triggers))
        && let Some(to) = fallback.replicas_at(current).filter(|to| *to > 0)
    {
        return ZeroDecision::FallbackFromZero { to, trigger };
    }
    ZeroDecision::Hold(if !scales_to_idle {
        HoldReason::NeverIdle
    } else if let Some(trigger) = active {
        HoldReason::Active { trigger }
    } else {
        HoldReason::Unread { triggers: unread }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::cache::{MetricCache, TriggerId};
    use crate::scalers::{Reading, ScalerError};

    use HoldReason::*;
    use TriggerActivity::*;
    use ZeroDecision::*;

    const ACTIVE: TriggerActivity = Read { active: true };
    const INACTIVE: TriggerActivity = Read { active: false };

    fn failed(consecutive_failures: u32) -> TriggerActivity {
        Failed {
            consecutive_failures,
        }
    }

    /// `minReplicaCount`, `idleReplicaCount`, `cooldownPeriod` 300 s, and `fallback` of 3
    /// replicas after more than 2 failures when `fallback` is true.
    fn rules(min: u32, idle: Option<u32>, fallback: bool) -> ZeroRules {
        ZeroRules {
            min_replica_count: min,
            idle_replica_count: idle,
            cooldown_seconds: 300,
            fallback: fallback.then_some(Fallback {
                failure_threshold: 2,
                replicas: 3,
                behavior: FallbackBehavior::Static,
            }),
        }
    }

    /// No trigger active for `seconds` (negative: the last activity is ahead of the clock).
    fn idle_for(seconds: i64) -> Cooldown {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        Cooldown::Measured {
            last_active: now - SignedDuration::from_secs(seconds),
            now,
        }
    }

    fn seconds(n: i64) -> Option<SignedDuration> {
        Some(SignedDuration::from_secs(n))
    }

    #[test]
    fn every_branch_of_the_decision() {
        let cooled = idle_for(300);
        let cases = [
            // From idle: active at or below the idle count, up to max(1, minReplicaCount).
            (
                "active at 0 with minReplicaCount 0",
                rules(0, None, false),
                Some(0),
                vec![ACTIVE],
                cooled,
                FromIdle { to: 1 },
            ),
            (
                "active at idleReplicaCount 1, minReplicaCount 3",
                rules(3, Some(1), false),
                Some(1),
                vec![INACTIVE, ACTIVE],
                idle_for(0),
                FromIdle { to: 3 },
            ),
            (
                "active at 0 while another trigger fails past its threshold",
                rules(0, None, true),
                Some(0),
                vec![ACTIVE, failed(5)],
                idle_for(0),
                FromIdle { to: 1 },
            ),
            (
                "active above the idle count: the HPA has it",
                rules(0, None, false),
                Some(4),
                vec![INACTIVE, ACTIVE],
                idle_for(0),
                Hold(Active { trigger: 1 }),
            ),
            (
                "active, count not known",
                rules(0, None, false),
                None,
                vec![ACTIVE],
                Cooldown::AssumedPassed,
                Hold(Active { trigger: 0 }),
            ),
            (
                "active at 0 with minReplicaCount 2 and no idleReplicaCount",
                rules(2, None, false),
                Some(0),
                vec![ACTIVE],
                idle_for(0),
                Hold(NeverIdle),
            ),
            // To idle: every trigger read, none active, for cooldownPeriod.
            (
                "inactive for exactly cooldownPeriod, minReplicaCount 0",
                rules(0, None, false),
                Some(3),
                vec![INACTIVE, INACTIVE],
                cooled,
                ToIdle {
                    to: 0,
                    idle_for: seconds(300),
                },
            ),
            (
                "inactive and already at the idle count",
                rules(0, None, false),
                Some(0),
                vec![INACTIVE],
                idle_for(900),
                ToIdle {
                    to: 0,
                    idle_for: seconds(900),
                },
            ),
            (
                "idleReplicaCount 0 below minReplicaCount 3",
                rules(3, Some(0), false),
                Some(3),
                vec![INACTIVE],
                cooled,
                ToIdle {
                    to: 0,
                    idle_for: seconds(300),
                },
            ),
            (
                "idleReplicaCount 1 below minReplicaCount 2",
                rules(2, Some(1), false),
                Some(2),
                vec![INACTIVE],
                cooled,
                ToIdle {
                    to: 1,
                    idle_for: seconds(300),
                },
            ),
            (
                "cooldown not known (a plan): taken as passed",
                rules(0, None, false),
                None,
                vec![INACTIVE],
                Cooldown::AssumedPassed,
                ToIdle {
                    to: 0,
                    idle_for: None,
                },
            ),
            (
                "inactive for less than cooldownPeriod",
                rules(0, None, false),
                Some(3),
                vec![INACTIVE],
                idle_for(299),
                Hold(CoolingDown {
                    idle_for: SignedDuration::from_secs(299),
                }),
            ),
            (
                "last activity ahead of the clock",
                rules(0, None, false),
                Some(3),
                vec![INACTIVE],
                idle_for(-5),
                Hold(CoolingDown {
                    idle_for: SignedDuration::from_secs(-5),
                }),
            ),
            (
                "inactive with minReplicaCount 2 and no idleReplicaCount",
                rules(2, None, false),
                Some(2),
                vec![INACTIVE],
                cooled,
                Hold(NeverIdle),
            ),
            // A trigger without a current reading never scales to idle.
            (
                "one trigger failing, the other inactive",
                rules(0, None, false),
                Some(3),
                vec![INACTIVE, failed(1)],
                cooled,
                Hold(Unread { triggers: vec![1] }),
            ),
            (
                "not polled yet",
                rules(0, None, true),
                Some(0),
                vec![NotRead, INACTIVE],
                cooled,
                Hold(Unread { triggers: vec![0] }),
            ),
            // Fallback from zero: only at 0, only past the threshold (more than 2 failures).
            (
                "at 0, failing past fallback.failureThreshold",
                rules(0, None, true),
                Some(0),
                vec![INACTIVE, failed(3)],
                cooled,
                FallbackFromZero { to: 3, trigger: 1 },
            ),
            (
                "at 0 with minReplicaCount 2, failing past the threshold",
                rules(2, None, true),
                Some(0),
                vec![failed(7)],
                cooled,
                FallbackFromZero { to: 3, trigger: 0 },
            ),
            (
                "at 0, failing as often as the threshold: KEDA waits for one more",
                rules(0, None, true),
                Some(0),
                vec![failed(2)],
                cooled,
                Hold(Unread { triggers: vec![0] }),
            ),
            (
                "above 0, failing past the threshold: the HPA has it",
                rules(0, None, true),
                Some(2),
                vec![failed(3)],
                cooled,
                Hold(Unread { triggers: vec![0] }),
            ),
            (
                "count not known, failing past the threshold",
                rules(0, None, true),
                None,
                vec![failed(3)],
                Cooldown::AssumedPassed,
                Hold(Unread { triggers: vec![0] }),
            ),
            (
                "at 0, failing past the threshold, no fallback",
                rules(0, None, false),
                Some(0),
                vec![failed(9)],
                cooled,
                Hold(Unread { triggers: vec![0] }),
            ),
            (
                "at 0, failing with minReplicaCount 2 and no fallback",
                rules(2, None, false),
                Some(0),
                vec![failed(9)],
                cooled,
                Hold(NeverIdle),
            ),
        ];
        for (name, rules, current, triggers, cooldown, want) in cases {
            assert_eq!(decide(&rules, current, &triggers, cooldown), want, "{name}");
        }
    }

    #[test]
    fn the_rules_of_a_spec() {
        let spec: ScaledObjectSpec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"name": "orders"},
            "minReplicaCount": 2,
            "idleReplicaCount": 0,
            "fallback": {"failureThreshold": 0, "replicas": 4},
            "triggers": [],
        }))
        .unwrap();
        let rules = ZeroRules::from_spec(&spec);
        assert_eq!(
            rules,
            ZeroRules {
                min_replica_count: 2,
                idle_replica_count: Some(0),
                cooldown_seconds: 300,
                fallback: Some(Fallback {
                    failure_threshold: 0,
                    replicas: 4,
                    behavior: FallbackBehavior::Static,
                }),
            }
        );
        assert!(rules.scales_to_idle());
        assert_eq!((rules.idle_replicas(), rules.hpa_min_replicas()), (0, 2));
        assert!(
            !ZeroRules::from_spec(&ScaledObjectSpec {
                idle_replica_count: None,
                ..spec
            })
            .scales_to_idle()
        );
    }

    #[test]
    fn fallback_from_zero_follows_the_behavior() {
        use FallbackBehavior::*;
        let failing = [failed(3)];
        // (behavior, fallback.replicas, decision at 0)
        let cases = [
            (Static, 3, FallbackFromZero { to: 3, trigger: 0 }),
            (
                CurrentReplicasIfHigher,
                3,
                FallbackFromZero { to: 3, trigger: 0 },
            ),
            // Held at 0 as KEDA holds it: no HPA runs a target at 0, and these ask for 0.
            (CurrentReplicas, 3, Hold(Unread { triggers: vec![0] })),
            (
                CurrentReplicasIfLower,
                3,
                Hold(Unread { triggers: vec![0] }),
            ),
            // fallback.replicas 0 is no step from 0 to 0.
            (Static, 0, Hold(Unread { triggers: vec![0] })),
        ];
        for (behavior, replicas, expected) in cases {
            let mut rules = rules(0, None, true);
            rules.fallback = Some(Fallback {
                failure_threshold: 2,
                replicas,
                behavior,
            });
            assert_eq!(
                decide(&rules, Some(0), &failing, idle_for(0)),
                expected,
                "{behavior:?}, fallback.replicas {replicas}"
            );
        }
    }

    #[test]
    fn each_behavior_picks_its_replicas() {
        use FallbackBehavior::*;
        // (behavior, fallback.replicas, current, steered to)
        let cases = [
            (Static, 3, Some(5), Some(3)),
            (Static, 3, None, Some(3)),
            (CurrentReplicas, 3, Some(5), Some(5)),
            (CurrentReplicas, 3, Some(1), Some(1)),
            (CurrentReplicasIfHigher, 3, Some(5), Some(5)),
            (CurrentReplicasIfHigher, 3, Some(2), Some(3)),
            (CurrentReplicasIfLower, 3, Some(5), Some(3)),
            (CurrentReplicasIfLower, 3, Some(2), Some(2)),
            (CurrentReplicas, 3, None, None),
            (CurrentReplicasIfHigher, 3, None, None),
            (CurrentReplicasIfLower, 3, None, None),
        ];
        for (behavior, replicas, current, expected) in cases {
            let fallback = Fallback {
                failure_threshold: 0,
                replicas,
                behavior,
            };
            assert_eq!(
                fallback.replicas_at(current),
                expected,
                "{behavior:?} at {current:?}"
            );
        }
    }

    #[test]
    fn activity_of_a_cached_state() {
        let cache = MetricCache::new();
        let id = |index| TriggerId {
            namespace: "default".into(),
            scaled_object: "orders".into(),
            index,
        };
        let ms = Duration::from_millis(1);
        let down = || ScalerError::Unreachable {
            broker: "kafka",
            target: "k:9092".into(),
            cause: "refused".into(),
        };
        cache.record(id(0), Ok(Reading::new(5.0, true)), ms);
        cache.record(id(1), Ok(Reading::new(0.0, false)), ms);
        // A failure after a good reading: the old reading is not current.
        cache.record(id(2), Ok(Reading::new(5.0, true)), ms);
        for _ in 0..3 {
            cache.record(id(2), Err(down()), ms);
        }
        let activity: Vec<TriggerActivity> = (0..4)
            .map(|i| TriggerActivity::of(cache.get(&id(i)).as_ref()))
            .collect();
        // Three failures: more than the threshold of 2.
        assert_eq!(activity, [ACTIVE, INACTIVE, failed(3), NotRead]);
        assert_eq!(rules(0, None, true).fallback_trigger(&activity), Some(2));
        assert_eq!(rules(0, None, false).fallback_trigger(&activity), None);
    }
}
