//! The metric cache: the latest reading or error of every trigger, with its age.
//!
//! The poller writes it once per tick; readers (the metrics API, the live view, the controller)
//! take a snapshot without ever waiting on a broker. A std `RwLock` is enough: writes are one
//! per trigger per tick and no lock is held across an `.await`.
//!
//! The one wait it offers is bounded: [`MetricCache::first_outcome`] lets a request for a
//! trigger not polled since start wait (up to a timeout) for that first poll, which it asks
//! the poller for through [`PollRequests`] (the cold-miss handshake: asks for the same trigger
//! within [`ASK_INTERVAL`] are one poll).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

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
#[derive(Debug)]
pub struct MetricCache {
    entries: RwLock<BTreeMap<TriggerId, TriggerState>>,
    /// Bumped after every record. One channel for all triggers, not one per trigger: only
    /// requests for not-yet-polled triggers wait on it, and a watch wakes each waiter once per
    /// burst of records however many land.
    recorded: watch::Sender<u64>,
}

impl Default for MetricCache {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            recorded: watch::Sender::new(0),
        }
    }
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
        drop(entries);
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `id`'s state once it has one: at once if it was polled already, else when its first
    /// poll is recorded; `None` if that takes longer than `timeout`.
    pub async fn first_outcome(&self, id: &TriggerId, timeout: Duration) -> Option<TriggerState> {
        // Subscribing before looking means a record between the look and the wait still wakes us.
        let mut recorded = self.recorded.subscribe();
        let wait = async {
            loop {
                if let Some(state) = self.get(id) {
                    return state;
                }
                // The sender lives in `self`, so the channel cannot close while we borrow it.
                if recorded.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
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

/// At most one poll per trigger per this interval is asked for by requests: the coalescing
/// window of [`PollRequests`]. Equal to the API's wait for a first poll, so a trigger whose
/// first poll outlasts one wait is asked for again by the next request, not by every request.
pub const ASK_INTERVAL: Duration = Duration::from_secs(5);

/// The API's side of the poll-now channel: asks the poller to poll a trigger that has no cache
/// entry yet. Cheap to clone; every clone shares the coalescing.
#[derive(Debug, Clone)]
pub struct PollRequests {
    sender: mpsc::UnboundedSender<TriggerId>,
    /// When each trigger was last asked for. Entries older than [`ASK_INTERVAL`] are dropped
    /// at the next ask, so this holds at most the triggers asked for recently.
    asked: Arc<Mutex<HashMap<TriggerId, Instant>>>,
}

impl PollRequests {
    /// A new channel: the requests side, and the receiver the poller listens on.
    /// Unbounded, because the coalescing bounds it: one message per trigger per interval.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<TriggerId>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let requests = Self {
            sender,
            asked: Arc::default(),
        };
        (requests, receiver)
    }

    /// Asks for a poll of `id` now, unless it was asked for within [`ASK_INTERVAL`] (that poll
    /// is still coming). False when the poller no longer listens: no poll will come.
    pub fn ask(&self, id: &TriggerId) -> bool {
        let mut asked = self.asked.lock().expect("poll requests lock");
        asked.retain(|_, at| at.elapsed() < ASK_INTERVAL);
        if asked.contains_key(id) {
            return !self.sender.is_closed();
        }
        if self.sender.send(id.clone()).is_err() {
            return false;
        }
        asked.insert(id.clone(), Instant::now());
        true
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

    #[tokio::test]
    async fn first_outcome_waits_for_the_first_record_or_times_out() {
        let cache = std::sync::Arc::new(MetricCache::new());
        let short = Duration::from_millis(50);
        assert!(
            cache.first_outcome(&id(0), short).await.is_none(),
            "timed out"
        );

        let writer = std::sync::Arc::clone(&cache);
        let recorded = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.record(id(1), Ok(Reading::new(1.0, true)), Default::default());
            writer.record(id(0), Err(down()), Default::default());
        });
        let state = cache.first_outcome(&id(0), Duration::from_secs(5)).await;
        assert_eq!(
            state.unwrap().consecutive_failures,
            1,
            "a failure is an outcome too"
        );
        recorded.await.unwrap();
        assert!(
            cache.first_outcome(&id(1), short).await.is_some(),
            "already there"
        );
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
