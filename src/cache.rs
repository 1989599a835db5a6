//! The metric cache: the latest reading or error of every trigger, with its age.
//!
//! The poller writes it once per tick; readers (the metrics API, the live view, the controller)
//! take a snapshot without ever waiting on a broker. A std `RwLock` is enough: writes are one
//! per trigger per tick and no lock is held across an `.await`.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Instant, SystemTime};

use crate::scalers::{Reading, ScalerError};

/// Names one trigger: the scaled object it belongs to and its position in its trigger list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TriggerId {
    pub namespace: String,
    pub scaled_object: String,
    pub index: usize,
}

impl std::fmt::Display for TriggerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}[{}]",
            self.namespace, self.scaled_object, self.index
        )
    }
}

/// What the cache knows of one trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerState {
    /// The last good reading, kept while later polls fail so status can show it; it is
    /// never served as current once `error` is set.
    pub last_reading: Option<Reading>,
    /// The error of the latest poll, if it failed.
    pub error: Option<ScalerError>,
    /// Polls failed in a row (the controller's fallback counts these).
    pub consecutive_failures: u32,
    /// When the latest poll finished.
    pub polled_at: Instant,
    pub polled_at_wall: SystemTime,
    /// How long the latest poll took.
    pub poll_duration: std::time::Duration,
}

impl TriggerState {
    /// The reading to act on: the latest poll's, or `None` when that poll failed.
    pub fn current(&self) -> Option<&Reading> {
        if self.error.is_some() {
            None
        } else {
            self.last_reading.as_ref()
        }
    }
}

/// Latest state of every trigger.
#[derive(Debug, Default)]
pub struct MetricCache {
    entries: RwLock<BTreeMap<TriggerId, TriggerState>>,
}

impl MetricCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one poll's outcome.
    pub fn record(
        &self,
        id: TriggerId,
        outcome: Result<Reading, ScalerError>,
        poll_duration: std::time::Duration,
    ) {
        let mut entries = self.entries.write().expect("cache lock");
        let previous = entries.remove(&id);
        let (last_reading, error, consecutive_failures) = match outcome {
            Ok(reading) => (Some(reading), None, 0),
            Err(err) => (
                previous.as_ref().and_then(|p| p.last_reading.clone()),
                Some(err),
                previous.map_or(1, |p| p.consecutive_failures.saturating_add(1)),
            ),
        };
        entries.insert(
            id,
            TriggerState {
                last_reading,
                error,
                consecutive_failures,
                polled_at: Instant::now(),
                polled_at_wall: SystemTime::now(),
                poll_duration,
            },
        );
    }

    /// One trigger's state.
    pub fn get(&self, id: &TriggerId) -> Option<TriggerState> {
        self.entries.read().expect("cache lock").get(id).cloned()
    }

    /// Every trigger's state, ordered by id.
    pub fn snapshot(&self) -> Vec<(TriggerId, TriggerState)> {
        self.entries
            .read()
            .expect("cache lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Drops triggers that no longer exist.
    pub fn retain(&self, keep: impl Fn(&TriggerId) -> bool) {
        self.entries
            .write()
            .expect("cache lock")
            .retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: usize) -> TriggerId {
        TriggerId {
            namespace: "default".into(),
            scaled_object: "orders".into(),
            index,
        }
    }

    fn down() -> ScalerError {
        ScalerError::Unreachable {
            broker: "kafka",
            target: "k:9092".into(),
            cause: "connection refused".into(),
        }
    }

    #[test]
    fn a_failed_poll_is_never_served_as_current() {
        let cache = MetricCache::new();
        cache.record(id(0), Ok(Reading::new(42.0, true)), Default::default());
        assert_eq!(cache.get(&id(0)).unwrap().current().unwrap().value, 42.0);
        cache.record(id(0), Err(down()), Default::default());
        cache.record(id(0), Err(down()), Default::default());
        let state = cache.get(&id(0)).unwrap();
        assert!(state.current().is_none());
        assert_eq!(state.consecutive_failures, 2);
        assert_eq!(
            state.last_reading.unwrap().value,
            42.0,
            "kept for status, not served"
        );
        cache.record(id(0), Ok(Reading::new(7.0, true)), Default::default());
        assert_eq!(cache.get(&id(0)).unwrap().consecutive_failures, 0);
    }

    #[test]
    fn retain_drops_removed_triggers() {
        let cache = MetricCache::new();
        cache.record(id(0), Ok(Reading::new(1.0, true)), Default::default());
        cache.record(id(1), Err(down()), Default::default());
        cache.retain(|i| i.index == 1);
        assert_eq!(cache.snapshot().len(), 1);
        assert!(cache.get(&id(0)).is_none());
    }
}
