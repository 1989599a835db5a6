//! The metric cache: the latest reading or error of every trigger, with its age.
//!
//! The poller writes it once per tick; readers (the metrics API, the live view, the controller)
//! take a snapshot without ever waiting on a broker. A std `RwLock` is enough: writes are one
//! per trigger per tick and no lock is held across an `.await`.
//!
//! Two rules keep a reading honest. A reading is recorded only for the trigger spec it was
//! read with ([`MetricCache::track_spec`]): a changed spec drops the old reading at once and a
//! round still running for the old spec records nothing. And a reading that grows old without
//! a newer poll is marked stale ([`MetricCache::mark_stale`]): it is then an error like a
//! failed poll, so it is never served as current and counts toward `fallback`.
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

/// KEDA's fallback rule, the one place it is written: a trigger is in fallback once it has
/// failed MORE than `failure_threshold` polls in a row (with 3, from the fourth failure on;
/// with 0, from the first). The served value (`registry::FallbackValue::applies`) and the controller
/// (scaling from zero, the Fallback condition, `spillway plan`) all ask here, so they agree,
/// and an object moved from KEDA falls back at the same poll.
pub fn past_failure_threshold(consecutive_failures: u32, failure_threshold: u32) -> bool {
    consecutive_failures > failure_threshold
}

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
    /// The error of the latest poll, if it failed, or [`ScalerError::Stale`] when no poll
    /// finished in time.
    pub error: Option<ScalerError>,
    /// Polls failed in a row, stale marks included (the controller's fallback counts these).
    pub consecutive_failures: u32,
    /// When the latest poll finished (for a trigger whose first poll never finished: when it
    /// was first marked stale).
    pub polled_at: Instant,
    pub polled_at_wall: SystemTime,
    /// How long the latest poll took.
    pub poll_duration: std::time::Duration,
    /// When the latest outcome was recorded: a poll, or a stale mark.
    pub recorded_at: Instant,
    /// Polls recorded since the trigger (with this spec) was first recorded.
    pub polls: u64,
    /// The spec version the state was recorded for ([`MetricCache::record_for_spec`]), or
    /// `None` for a one-off round ([`MetricCache::record`]).
    pub spec_version: Option<u64>,
}

impl TriggerState {
    /// Whether this state was read with spec `version` (a state of a one-off round holds for
    /// any version).
    pub fn is_for_spec(&self, version: u64) -> bool {
        self.spec_version.is_none_or(|v| v == version)
    }
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

/// A trigger's poll times; see [`MetricCache::poll_times`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollTimes {
    /// When its latest poll finished; `None` while no poll of its spec ever finished.
    pub polled_at: Option<Instant>,
    /// When its latest outcome (a poll or a stale mark) was recorded.
    pub recorded_at: Instant,
    /// Whether that outcome is a stale mark.
    pub stale: bool,
}

/// The sizes of the cache's maps; see [`MetricCache::sizes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    pub states: usize,
    pub specs: usize,
}

/// The states and the spec each may hold, under one lock so a spec change and a record
/// cannot interleave.
#[derive(Debug, Default)]
struct Entries {
    states: BTreeMap<TriggerId, TriggerState>,
    /// The spec version each tracked trigger is read with; see [`MetricCache::track_spec`].
    specs: HashMap<TriggerId, u64>,
    /// The states this process read itself (polls and its own stale marks, not copies from
    /// another replica), each with the change number it was last recorded at: what other
    /// replicas follow ([`MetricCache::own_changes_since`]).
    own: BTreeMap<TriggerId, u64>,
    /// The last change number handed out.
    last_change: u64,
}

impl Entries {
    /// Notes `id`'s state as read here, at a new change number.
    fn note_own(&mut self, id: &TriggerId) {
        self.last_change += 1;
        let change = self.last_change;
        self.own.insert(id.clone(), change);
    }
}

/// A state another replica read, as [`MetricCache::replicate`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicatedState {
    pub last_reading: Option<Reading>,
    pub error: Option<ScalerError>,
    pub consecutive_failures: u32,
    pub polls: u64,
    /// How long ago the owner's latest poll finished, as it sent it.
    pub age: Duration,
    pub poll_duration: Duration,
}

/// Latest state of every trigger.
#[derive(Debug)]
pub struct MetricCache {
    entries: RwLock<Entries>,
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
        Self::insert_outcome(&mut entries.states, id, None, outcome, poll_duration);
        drop(entries);
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records one poll's outcome if `id` is still tracked with spec `version`; false (and
    /// nothing recorded) when its spec changed or it is gone since the poll began.
    pub fn record_for_spec(
        &self,
        id: TriggerId,
        version: u64,
        outcome: Result<Reading, ScalerError>,
        poll_duration: std::time::Duration,
    ) -> bool {
        let mut entries = self.entries.write().expect("cache lock");
        if entries.specs.get(&id) != Some(&version) {
            return false;
        }
        entries.note_own(&id);
        Self::insert_outcome(
            &mut entries.states,
            id,
            Some(version),
            outcome,
            poll_duration,
        );
        drop(entries);
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    fn insert_outcome(
        states: &mut BTreeMap<TriggerId, TriggerState>,
        id: TriggerId,
        spec_version: Option<u64>,
        outcome: Result<Reading, ScalerError>,
        poll_duration: std::time::Duration,
    ) {
        let previous = states.remove(&id);
        let polls = previous.as_ref().map_or(0, |p| p.polls).saturating_add(1);
        let (last_reading, error, consecutive_failures) = match outcome {
            Ok(reading) => (Some(reading), None, 0),
            Err(err) => (
                previous.as_ref().and_then(|p| p.last_reading.clone()),
                Some(err),
                previous.map_or(1, |p| p.consecutive_failures.saturating_add(1)),
            ),
        };
        let now = Instant::now();
        states.insert(
            id,
            TriggerState {
                last_reading,
                error,
                consecutive_failures,
                polled_at: now,
                polled_at_wall: SystemTime::now(),
                poll_duration,
                recorded_at: now,
                polls,
                spec_version,
            },
        );
    }

    /// Tracks `id` as read with spec `version` from now on. A different version than the one
    /// tracked drops the trigger's state (its reading came from the old spec), so until the new
    /// spec's first poll the trigger reads as not yet polled. True when a state was dropped.
    pub fn track_spec(&self, id: &TriggerId, version: u64) -> bool {
        let mut entries = self.entries.write().expect("cache lock");
        match entries.specs.insert(id.clone(), version) {
            Some(previous) if previous != version => {
                entries.own.remove(id);
                entries.states.remove(id).is_some()
            }
            _ => false,
        }
    }

    /// Marks `id`'s reading stale (`error`, one more failure in a row) without a poll having
    /// finished, if it is still tracked with spec `version`. Its poll time stays that of the
    /// latest poll; a trigger never polled gets a state of its own. `owned`: this process
    /// polls the trigger, so other replicas follow the mark; a replica that only copies the
    /// trigger's state marks it for itself.
    pub fn mark_stale(
        &self,
        id: &TriggerId,
        version: u64,
        error: ScalerError,
        owned: bool,
    ) -> bool {
        let mut entries = self.entries.write().expect("cache lock");
        if entries.specs.get(id) != Some(&version) {
            return false;
        }
        if owned {
            entries.note_own(id);
        }
        let now = Instant::now();
        let state = entries
            .states
            .entry(id.clone())
            .or_insert_with(|| TriggerState {
                last_reading: None,
                error: None,
                consecutive_failures: 0,
                polled_at: now,
                polled_at_wall: SystemTime::now(),
                poll_duration: Duration::ZERO,
                recorded_at: now,
                polls: 0,
                spec_version: Some(version),
            });
        state.error = Some(error);
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.recorded_at = now;
        drop(entries);
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// `id`'s state for spec `version` once it has one: at once if it was polled already, else
    /// when its first poll is recorded; `None` if that takes longer than `timeout`.
    pub async fn first_outcome(
        &self,
        id: &TriggerId,
        version: u64,
        timeout: Duration,
    ) -> Option<TriggerState> {
        // Subscribing before looking means a record between the look and the wait still wakes us.
        let mut recorded = self.recorded.subscribe();
        let wait = async {
            loop {
                if let Some(state) = self.get_for_spec(id, version) {
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

    /// One trigger's state if it was read with spec `version`: a state of the trigger's
    /// previous spec is none of the current one's.
    pub fn get_for_spec(&self, id: &TriggerId, version: u64) -> Option<TriggerState> {
        self.get(id).filter(|state| state.is_for_spec(version))
    }

    /// When `id` was last polled and last given an outcome, and whether that outcome is a stale
    /// mark: what the freshness check reads of every trigger each second, without cloning its
    /// reading (a backlog of up to a thousand samples).
    pub fn poll_times(&self, id: &TriggerId) -> Option<PollTimes> {
        self.entries
            .read()
            .expect("cache lock")
            .states
            .get(id)
            .map(|state| PollTimes {
                polled_at: (state.polls > 0).then_some(state.polled_at),
                recorded_at: state.recorded_at,
                stale: matches!(state.error, Some(ScalerError::Stale { .. })),
            })
    }

    /// Whether `id` has a state read with spec `version`: [`Self::get_for_spec`]`.is_some()`
    /// without cloning the state (the metrics API asks on every request).
    pub fn has_for_spec(&self, id: &TriggerId, version: u64) -> bool {
        self.entries
            .read()
            .expect("cache lock")
            .states
            .get(id)
            .is_some_and(|state| state.is_for_spec(version))
    }

    /// What `read` makes of `id`'s state when it was read with spec `version`, without cloning
    /// the state: what the metrics API does on every request.
    pub fn read_for_spec<R>(
        &self,
        id: &TriggerId,
        version: u64,
        read: impl FnOnce(&TriggerState) -> R,
    ) -> Option<R> {
        self.entries
            .read()
            .expect("cache lock")
            .states
            .get(id)
            .filter(|state| state.is_for_spec(version))
            .map(read)
    }

    /// One trigger's state.
    pub fn get(&self, id: &TriggerId) -> Option<TriggerState> {
        self.entries
            .read()
            .expect("cache lock")
            .states
            .get(id)
            .cloned()
    }

    /// Every trigger's state, ordered by id.
    pub fn snapshot(&self) -> Vec<(TriggerId, TriggerState)> {
        self.entries
            .read()
            .expect("cache lock")
            .states
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many entries the cache holds: trigger states and tracked specs (a trigger tracked
    /// and not yet polled has a spec and no state). Exported so a leak shows on `/metrics`.
    pub fn sizes(&self) -> CacheSizes {
        let entries = self.entries.read().expect("cache lock");
        CacheSizes {
            states: entries.states.len(),
            specs: entries.specs.len(),
        }
    }

    /// Drops triggers that no longer exist, with their tracked specs.
    pub fn retain(&self, keep: impl Fn(&TriggerId) -> bool) {
        let mut entries = self.entries.write().expect("cache lock");
        entries.states.retain(|id, _| keep(id));
        entries.specs.retain(|id, _| keep(id));
        entries.own.retain(|id, _| keep(id));
    }

    /// Records the state another replica read for `id`, if `id` is still tracked with spec
    /// `version` (the spec the sender read it with, in this process's numbering); false and
    /// nothing recorded otherwise. Its poll time is `state.age` before now: the freshness
    /// check then ages it as if polled here.
    pub fn replicate(&self, id: TriggerId, version: u64, state: ReplicatedState) -> bool {
        let mut entries = self.entries.write().expect("cache lock");
        if entries.specs.get(&id) != Some(&version) {
            return false;
        }
        let now = Instant::now();
        entries.own.remove(&id);
        entries.states.insert(
            id,
            TriggerState {
                last_reading: state.last_reading,
                error: state.error,
                consecutive_failures: state.consecutive_failures,
                polled_at: now.checked_sub(state.age).unwrap_or(now),
                polled_at_wall: SystemTime::now()
                    .checked_sub(state.age)
                    .unwrap_or_else(SystemTime::now),
                poll_duration: state.poll_duration,
                recorded_at: now,
                polls: state.polls,
                spec_version: Some(version),
            },
        );
        drop(entries);
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// The states this process read itself that changed after change number `since`, at most
    /// `limit` of them (the earliest changes first), each with its change number, and the
    /// latest change number there is.
    pub fn own_changes_since(
        &self,
        since: u64,
        limit: usize,
    ) -> (u64, Vec<(TriggerId, u64, TriggerState)>) {
        let entries = self.entries.read().expect("cache lock");
        let mut changed: Vec<(&TriggerId, u64)> = entries
            .own
            .iter()
            .filter(|(_, change)| **change > since)
            .map(|(id, change)| (id, *change))
            .collect();
        if changed.len() > limit {
            changed.sort_unstable_by_key(|(_, change)| *change);
            changed.truncate(limit);
        }
        let states = changed
            .into_iter()
            .filter_map(|(id, change)| Some((id.clone(), change, entries.states.get(id)?.clone())))
            .collect();
        (entries.last_change, states)
    }

    /// Wakes on every record (a poll, a stale mark, a copy from another replica).
    pub fn subscribe_records(&self) -> watch::Receiver<u64> {
        self.recorded.subscribe()
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
    fn own_readings_are_followed_and_copies_are_not_sent_on() {
        let cache = MetricCache::new();
        cache.track_spec(&id(0), 1);
        cache.track_spec(&id(1), 2);
        assert!(cache.record_for_spec(id(0), 1, Ok(Reading::new(5.0, true)), Duration::ZERO));
        let (first, changed) = cache.own_changes_since(0, 10);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, id(0));
        // A copy from the owner is served here but never offered to other replicas.
        let copy = ReplicatedState {
            last_reading: Some(Reading::new(7.0, true)),
            error: None,
            consecutive_failures: 0,
            polls: 9,
            age: Duration::from_secs(3),
            poll_duration: Duration::from_millis(4),
        };
        assert!(cache.replicate(id(1), 2, copy.clone()));
        assert!(!cache.replicate(id(1), 3, copy), "another spec is refused");
        let state = cache.get(&id(1)).unwrap();
        assert_eq!(state.current().map(|r| r.value), Some(7.0));
        assert!(
            state.polled_at.elapsed() >= Duration::from_secs(3),
            "aged as sent"
        );
        assert_eq!(cache.own_changes_since(first, 10).1.len(), 0);
        // A stale mark of a trigger this replica owns is followed; of a copy, it is not.
        assert!(cache.mark_stale(&id(1), 2, stale(), false));
        assert_eq!(cache.own_changes_since(first, 10).1.len(), 0);
        assert!(cache.mark_stale(&id(0), 1, stale(), true));
        let (_, changed) = cache.own_changes_since(first, 10);
        assert_eq!(changed.len(), 1);
        // Paging: the earliest changes first.
        assert_eq!(cache.own_changes_since(0, 1).1.len(), 1);
    }

    fn stale() -> ScalerError {
        ScalerError::Stale {
            broker: "kafka",
            target: "k:9092".into(),
            age_seconds: 20,
            bound_seconds: 15,
        }
    }

    #[test]
    fn a_changed_spec_drops_the_old_reading_and_a_late_round_records_nothing() {
        let cache = MetricCache::new();
        assert!(!cache.track_spec(&id(0), 1), "nothing to drop");
        assert!(cache.record_for_spec(id(0), 1, Ok(Reading::new(7.0, true)), Duration::ZERO));
        assert!(!cache.track_spec(&id(0), 1), "same spec: kept");
        assert_eq!(cache.get(&id(0)).unwrap().current().unwrap().value, 7.0);

        assert!(cache.track_spec(&id(0), 2), "new spec: dropped");
        assert!(cache.get(&id(0)).is_none(), "reads as not yet polled");
        // The old spec's round ends after the change: its value must not land.
        assert!(!cache.record_for_spec(id(0), 1, Ok(Reading::new(7.0, true)), Duration::ZERO));
        assert!(cache.get(&id(0)).is_none());
        assert!(cache.record_for_spec(id(0), 2, Ok(Reading::new(3.0, false)), Duration::ZERO));
        assert_eq!(cache.get(&id(0)).unwrap().current().unwrap().value, 3.0);

        // An untracked trigger records nothing either (it was removed meanwhile).
        cache.retain(|_| false);
        assert!(!cache.record_for_spec(id(0), 2, Ok(Reading::new(1.0, true)), Duration::ZERO));
        assert!(cache.snapshot().is_empty());
    }

    #[test]
    fn a_stale_mark_is_a_failure_that_keeps_the_poll_time() {
        let cache = MetricCache::new();
        cache.track_spec(&id(0), 1);
        cache.record_for_spec(id(0), 1, Ok(Reading::new(9.0, true)), Duration::ZERO);
        let polled = cache.get(&id(0)).unwrap();
        assert!(cache.mark_stale(&id(0), 1, stale(), true));
        assert!(cache.mark_stale(&id(0), 1, stale(), true));
        let state = cache.get(&id(0)).unwrap();
        assert!(state.current().is_none(), "never served as current");
        assert_eq!(state.consecutive_failures, 2, "counts toward fallback");
        assert_eq!(
            state.last_reading.as_ref().unwrap().value,
            9.0,
            "kept for status"
        );
        assert_eq!((state.polled_at, state.polls), (polled.polled_at, 1));
        assert!(state.recorded_at >= polled.recorded_at);
        assert_eq!(state.error.as_ref().map(ScalerError::reason), Some("stale"));
        let times = cache.poll_times(&id(0)).unwrap();
        assert_eq!(times.polled_at, Some(polled.polled_at));
        assert!(times.stale && times.recorded_at == state.recorded_at);

        // A good poll ends it.
        cache.record_for_spec(id(0), 1, Ok(Reading::new(4.0, true)), Duration::ZERO);
        let state = cache.get(&id(0)).unwrap();
        assert_eq!((state.consecutive_failures, state.polls), (0, 2));
        assert_eq!(state.current().unwrap().value, 4.0);

        // A trigger never polled gets a state of its own; another spec's mark is ignored.
        cache.track_spec(&id(1), 5);
        assert!(!cache.mark_stale(&id(1), 4, stale(), true));
        assert!(cache.mark_stale(&id(1), 5, stale(), true));
        let state = cache.get(&id(1)).unwrap();
        assert_eq!((state.consecutive_failures, state.polls), (1, 0));
        assert!(state.last_reading.is_none());
        assert_eq!(
            cache.poll_times(&id(1)).unwrap().polled_at,
            None,
            "never polled"
        );
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
            cache.first_outcome(&id(0), 0, short).await.is_none(),
            "timed out"
        );

        let writer = std::sync::Arc::clone(&cache);
        let recorded = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.record(id(1), Ok(Reading::new(1.0, true)), Default::default());
            writer.record(id(0), Err(down()), Default::default());
        });
        let state = cache.first_outcome(&id(0), 0, Duration::from_secs(5)).await;
        assert_eq!(
            state.unwrap().consecutive_failures,
            1,
            "a failure is an outcome too"
        );
        recorded.await.unwrap();
        assert!(
            cache.first_outcome(&id(1), 0, short).await.is_some(),
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
