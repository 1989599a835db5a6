//! The replica count a scaled object would get from the current readings: the HPA's
//! AverageValue rule per trigger (ceil(value / target)), the maximum over triggers, clamped to
//! min/max, plus spillway's own step to and from zero (an HPA cannot go below one).
//!
//! The HPA's tolerance and stabilisation windows depend on the current replica count and its
//! history, which a standalone view does not have; they are left out, and said so.

use crate::scalers::Reading;

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
        .map(|(i, (target, reading))| (per_trigger(reading.value, *target), i))
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

/// ceil(value / target), saturating; a non-positive target asks nothing.
fn per_trigger(value: f64, target: f64) -> u32 {
    if target.is_nan() || target <= 0.0 || !value.is_finite() || value <= 0.0 {
        return 0;
    }
    let replicas = (value / target).ceil();
    if replicas >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        replicas as u32
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
}
