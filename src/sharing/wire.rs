//! The peer protocol's JSON: the states an owner sends ([`ReadingsPage`]) and the cold-miss
//! asks it receives ([`AskList`]). A state names its trigger by id and spec fingerprint (each
//! replica numbers spec versions on its own) and its age rather than a time of day, so the
//! receiver's freshness check does not depend on the two clocks agreeing.
//!
//! Decoding is strict: an unknown broker kind or extra-metric name, a value that is not finite,
//! or more than [`MAX_STATES`] states refuse the whole page with a reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::{ReplicatedState, TriggerId, TriggerState};
use crate::scalers::{EXTRA_SUFFIXES, Reading, ScalerError, known_kind};

/// The most states one page may carry (a replica owning 100,000 triggers sends them in
/// pages of this size).
pub const MAX_STATES: usize = 20_000;

/// Why a page or an ask from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("unknown broker kind {0:?}")]
    UnknownKind(String),
    #[error("unknown extra metric {0:?}")]
    UnknownExtra(String),
    #[error("{0} is not a finite value")]
    NotFinite(&'static str),
    #[error("{0} states in one page; at most {MAX_STATES}")]
    TooMany(usize),
}

/// One page of the states an owner read, changed after the `since` the follower gave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadingsPage {
    /// The owner process's random epoch: change numbers restart with a new one.
    pub epoch: u64,
    /// The change number to ask from next time.
    pub change: u64,
    /// Whether states changed after `change` are left for the next page.
    #[serde(default)]
    pub more: bool,
    pub states: Vec<WireState>,
}

/// One trigger's state as its owner holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireState {
    pub namespace: String,
    pub scaled_object: String,
    pub index: usize,
    /// [`Trigger::spec_fingerprint`](crate::scalers::Trigger::spec_fingerprint), in hex.
    pub spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<WireReading>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireScalerError>,
    pub consecutive_failures: u32,
    pub polls: u64,
    /// Milliseconds since the owner's latest poll finished.
    pub age_ms: u64,
    pub poll_duration_ms: u64,
}

/// A reading, without the backlog detail (that stays on the owner's `/metrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireReading {
    pub value: f64,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, f64)>,
    /// When the broker was read, in milliseconds since the Unix epoch (served as the metric's
    /// timestamp, as the owner would).
    pub timestamp_ms: u64,
}

/// [`ScalerError`], variant by variant, with its broker kind as text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reason", rename_all = "camelCase", deny_unknown_fields)]
pub enum WireScalerError {
    InvalidTrigger {
        broker: String,
        field: String,
        message: String,
    },
    Unreachable {
        broker: String,
        target: String,
        cause: String,
    },
    Timeout {
        broker: String,
        target: String,
        after_ms: u64,
    },
    NotFound {
        broker: String,
        target: String,
        what: String,
    },
    Unauthorized {
        broker: String,
        target: String,
        cause: String,
    },
    Broker {
        broker: String,
        target: String,
        cause: String,
    },
    BadResponse {
        broker: String,
        target: String,
        cause: String,
    },
    Stale {
        broker: String,
        target: String,
        age_seconds: u64,
        bound_seconds: u64,
    },
}

impl From<&ScalerError> for WireScalerError {
    fn from(error: &ScalerError) -> Self {
        match error.clone() {
            ScalerError::InvalidTrigger {
                broker,
                field,
                message,
            } => Self::InvalidTrigger {
                broker: broker.into(),
                field,
                message,
            },
            ScalerError::Unreachable {
                broker,
                target,
                cause,
            } => Self::Unreachable {
                broker: broker.into(),
                target,
                cause,
            },
            ScalerError::Timeout {
                broker,
                target,
                after,
            } => Self::Timeout {
                broker: broker.into(),
                target,
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
            ScalerError::NotFound {
                broker,
                target,
                what,
            } => Self::NotFound {
                broker: broker.into(),
                target,
                what,
            },
            ScalerError::Unauthorized {
                broker,
                target,
                cause,
            } => Self::Unauthorized {
                broker: broker.into(),
                target,
                cause,
            },
            ScalerError::Broker {
                broker,
                target,
                cause,
            } => Self::Broker {
                broker: broker.into(),
                target,
                cause,
            },
            ScalerError::BadResponse {
                broker,
                target,
                cause,
            } => Self::BadResponse {
                broker: broker.into(),
                target,
                cause,
            },
            ScalerError::Stale {
                broker,
                target,
                age_seconds,
                bound_seconds,
            } => Self::Stale {
                broker: broker.into(),
                target,
                age_seconds,
                bound_seconds,
            },
        }
    }
}

fn kind(broker: String) -> Result<&'static str, WireError> {
    known_kind(&broker).ok_or(WireError::UnknownKind(broker))
}

impl TryFrom<WireScalerError> for ScalerError {
    type Error = WireError;

    fn try_from(error: WireScalerError) -> Result<Self, WireError> {
        Ok(match error {
            WireScalerError::InvalidTrigger {
                broker,
                field,
                message,
            } => Self::InvalidTrigger {
                broker: kind(broker)?,
                field,
                message,
            },
            WireScalerError::Unreachable {
                broker,
                target,
                cause,
            } => Self::Unreachable {
                broker: kind(broker)?,
                target,
                cause,
            },
            WireScalerError::Timeout {
                broker,
                target,
                after_ms,
            } => Self::Timeout {
                broker: kind(broker)?,
                target,
                after: Duration::from_millis(after_ms),
            },
            WireScalerError::NotFound {
                broker,
                target,
                what,
            } => Self::NotFound {
                broker: kind(broker)?,
                target,
                what,
            },
            WireScalerError::Unauthorized {
                broker,
                target,
                cause,
            } => Self::Unauthorized {
                broker: kind(broker)?,
                target,
                cause,
            },
            WireScalerError::Broker {
                broker,
                target,
                cause,
            } => Self::Broker {
                broker: kind(broker)?,
                target,
                cause,
            },
            WireScalerError::BadResponse {
                broker,
                target,
                cause,
            } => Self::BadResponse {
                broker: kind(broker)?,
                target,
                cause,
            },
            WireScalerError::Stale {
                broker,
                target,
                age_seconds,
                bound_seconds,
            } => Self::Stale {
                broker: kind(broker)?,
                target,
                age_seconds,
                bound_seconds,
            },
        })
    }
}

/// A fingerprint as the wire writes it.
pub fn fingerprint_text(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

impl WireState {
    /// `state` of `id` (read with the spec of `fingerprint`), as sent.
    pub fn of(id: &TriggerId, fingerprint: u64, state: &TriggerState) -> Self {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            namespace: id.namespace.clone(),
            scaled_object: id.scaled_object.clone(),
            index: id.index,
            spec: fingerprint_text(fingerprint),
            reading: state.last_reading.as_ref().map(|r| WireReading {
                value: r.value,
                active: r.active,
                extra: r.extra.iter().map(|(s, v)| ((*s).to_owned(), *v)).collect(),
                timestamp_ms: r.timestamp.duration_since(UNIX_EPOCH).map_or(0, millis),
            }),
            error: state.error.as_ref().map(WireScalerError::from),
            consecutive_failures: state.consecutive_failures,
            polls: state.polls,
            age_ms: if state.polls > 0 {
                millis(state.polled_at.elapsed())
            } else {
                // Never polled (a stale mark only): as old as the mark.
                millis(state.recorded_at.elapsed())
            },
            poll_duration_ms: millis(state.poll_duration),
        }
    }

    pub fn id(&self) -> TriggerId {
        TriggerId {
            namespace: self.namespace.clone(),
            scaled_object: self.scaled_object.clone(),
            index: self.index,
        }
    }

    /// The state as the cache takes it, or why it cannot be.
    pub fn into_state(self) -> Result<ReplicatedState, WireError> {
        let last_reading = match self.reading {
            None => None,
            Some(reading) => {
                if !reading.value.is_finite() {
                    return Err(WireError::NotFinite("value"));
                }
                let mut extra = Vec::with_capacity(reading.extra.len());
                for (name, value) in reading.extra {
                    let suffix = EXTRA_SUFFIXES
                        .iter()
                        .find(|s| **s == name)
                        .ok_or(WireError::UnknownExtra(name))?;
                    if !value.is_finite() {
                        return Err(WireError::NotFinite("extra"));
                    }
                    extra.push((*suffix, value));
                }
                let mut read = Reading::new(reading.value, reading.active);
                read.extra = extra;
                read.timestamp = UNIX_EPOCH + Duration::from_millis(reading.timestamp_ms);
                Some(read)
            }
        };
        Ok(ReplicatedState {
            last_reading,
            error: self.error.map(ScalerError::try_from).transpose()?,
            consecutive_failures: self.consecutive_failures,
            polls: self.polls,
            age: Duration::from_millis(self.age_ms),
            poll_duration: Duration::from_millis(self.poll_duration_ms),
        })
    }
}

/// Triggers a follower asks their owner to poll now (cold misses).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AskList {
    pub triggers: Vec<AskedTrigger>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AskedTrigger {
    pub namespace: String,
    pub scaled_object: String,
    pub index: usize,
    pub spec: String,
}

impl AskedTrigger {
    pub fn id(&self) -> TriggerId {
        TriggerId {
            namespace: self.namespace.clone(),
            scaled_object: self.scaled_object.clone(),
            index: self.index,
        }
    }
}

/// Checks a page's size before its states are looked at.
pub fn check_page(page: &ReadingsPage) -> Result<(), WireError> {
    if page.states.len() > MAX_STATES {
        return Err(WireError::TooMany(page.states.len()));
    }
    Ok(())
}

/// Now as the wire's timestamps count it (tests and logs).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(reading: Option<Reading>, error: Option<ScalerError>) -> TriggerState {
        let now = std::time::Instant::now();
        TriggerState {
            last_reading: reading,
            error,
            consecutive_failures: 2,
            polled_at: now,
            polled_at_wall: SystemTime::now(),
            poll_duration: Duration::from_millis(12),
            recorded_at: now,
            polls: 7,
            spec_version: Some(3),
        }
    }

    fn id() -> TriggerId {
        TriggerId {
            namespace: "team-a".into(),
            scaled_object: "orders".into(),
            index: 1,
        }
    }

    #[test]
    fn a_state_crosses_the_wire_whole() {
        let reading = Reading::new(45.0, true).with_extra("lag-seconds", 12.5);
        let error = ScalerError::Timeout {
            broker: "kafka",
            target: "broker:9092".into(),
            after: Duration::from_secs(5),
        };
        let sent = WireState::of(
            &id(),
            0xabc,
            &state(Some(reading.clone()), Some(error.clone())),
        );
        let json = serde_json::to_string(&sent).unwrap();
        let back: WireState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.id(), id());
        assert_eq!(back.spec, "0000000000000abc");
        let state = back.into_state().unwrap();
        let got = state.last_reading.unwrap();
        assert_eq!(
            (got.value, got.active, got.extra.clone()),
            (45.0, true, reading.extra)
        );
        let skew = got
            .timestamp
            .duration_since(reading.timestamp)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(1), "{skew:?}");
        assert_eq!(state.error, Some(error));
        assert_eq!((state.consecutive_failures, state.polls), (2, 7));
    }

    #[test]
    fn garbage_from_a_peer_is_refused_with_a_reason() {
        let mut sent = WireState::of(&id(), 1, &state(Some(Reading::new(1.0, true)), None));
        sent.reading.as_mut().unwrap().extra = vec![("made-up".into(), 1.0)];
        assert_eq!(
            sent.clone().into_state().unwrap_err(),
            WireError::UnknownExtra("made-up".into())
        );
        sent.reading.as_mut().unwrap().extra.clear();
        sent.reading.as_mut().unwrap().value = f64::NAN;
        assert_eq!(
            sent.clone().into_state().unwrap_err(),
            WireError::NotFinite("value")
        );
        sent.reading = None;
        sent.error = Some(WireScalerError::Broker {
            broker: "mqtt".into(),
            target: "x".into(),
            cause: "y".into(),
        });
        assert_eq!(
            sent.into_state().unwrap_err(),
            WireError::UnknownKind("mqtt".into())
        );
        for text in [
            r#"{"epoch":1,"change":2,"states":[{"namespace":"a"}]}"#,
            r#"{"epoch":1,"change":2,"states":[],"extra":true}"#,
            r#"[1,2,3]"#,
        ] {
            assert!(
                serde_json::from_str::<ReadingsPage>(text).is_err(),
                "{text}"
            );
        }
    }
}
