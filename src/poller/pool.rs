//! One-shot rounds: a [`ScalerPool`] keeps one scaler per connection of one broker kind and
//! reads a list of triggers in one batched round per connection, all connections concurrently.
//! `spillway watch`, `plan --live` and `check` use it through [`super::Poller::tick`]; the
//! long-running poller schedules each connection group on its own task instead
//! ([`super::scheduler`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};

use super::group::connection_group;
use super::{PollOutcome, poll_within_deadline};
use crate::cache::TriggerId;
use crate::scalers::{KindVisitor, Scaler, Trigger, TriggerParams};

/// The live scalers of one broker kind, one per connection.
pub struct ScalerPool<S: Scaler> {
    scalers: HashMap<String, Arc<S>>,
}

impl<S: Scaler> Default for ScalerPool<S> {
    fn default() -> Self {
        Self {
            scalers: HashMap::new(),
        }
    }
}

impl<S: Scaler> ScalerPool<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many connections (scalers) are open.
    pub fn connections(&self) -> usize {
        self.scalers.len()
    }

    /// Reads all `triggers` of this kind: invalid ones fail alone, the rest are grouped by
    /// connection and each group is polled once, all groups concurrently. Connections no
    /// trigger of this list uses are closed: `triggers` is every trigger of the kind.
    pub async fn poll(&mut self, triggers: &[(TriggerId, S::Trigger)]) -> Vec<PollOutcome> {
        self.round(triggers, true).await
    }

    /// Reads some triggers of this kind, as [`ScalerPool::poll`], but keeps every connection
    /// open: the other triggers still need theirs.
    pub async fn poll_some(&mut self, triggers: &[(TriggerId, S::Trigger)]) -> Vec<PollOutcome> {
        self.round(triggers, false).await
    }

    /// Closes the connections no trigger of `triggers` (every trigger of the kind) uses.
    pub fn close_unused(&mut self, triggers: &[(TriggerId, S::Trigger)]) {
        let used: std::collections::HashSet<String> = triggers
            .iter()
            .map(|(id, t)| connection_group::<S>(&id.namespace, t))
            .collect();
        self.scalers.retain(|key, _| used.contains(key));
    }

    async fn round(
        &mut self,
        triggers: &[(TriggerId, S::Trigger)],
        close_unused: bool,
    ) -> Vec<PollOutcome> {
        let mut outcomes = Vec::with_capacity(triggers.len());
        let mut groups: HashMap<String, Vec<&(TriggerId, S::Trigger)>> = HashMap::new();
        for entry in triggers {
            match entry.1.validate() {
                Ok(()) => groups
                    .entry(connection_group::<S>(&entry.0.namespace, &entry.1))
                    .or_default()
                    .push(entry),
                Err(err) => outcomes.push((entry.0.clone(), Err(err), Duration::ZERO)),
            }
        }
        // Connections nobody uses any more are closed by dropping their scaler.
        if close_unused {
            self.scalers.retain(|key, _| groups.contains_key(key));
        }
        let mut rounds = Vec::with_capacity(groups.len());
        for (key, members) in groups {
            let scaler = match self.scalers.get(&key) {
                Some(scaler) => Ok(Arc::clone(scaler)),
                None => S::connect(&members[0].1).map(Arc::new),
            };
            match scaler {
                Ok(scaler) => {
                    self.scalers.insert(key, Arc::clone(&scaler));
                    rounds.push(async move {
                        let batch: Vec<S::Trigger> =
                            members.iter().map(|(_, t)| t.clone()).collect();
                        let started = Instant::now();
                        let endpoint = S::endpoint(&batch[0]);
                        let results = poll_within_deadline(&*scaler, &batch, &endpoint).await;
                        let took = started.elapsed();
                        members
                            .iter()
                            .zip(results)
                            .map(|((id, _), result)| (id.clone(), result, took))
                            .collect::<Vec<_>>()
                    });
                }
                Err(err) => outcomes.extend(
                    members
                        .iter()
                        .map(|(id, _)| (id.clone(), Err(err.clone()), Duration::ZERO)),
                ),
            }
        }
        for round in join_all(rounds).await {
            outcomes.extend(round);
        }
        outcomes
    }
}

/// A [`ScalerPool`] of any kind, fed with untyped triggers: the poller keeps one per broker
/// kind in one list and never names a broker.
pub(super) trait KindPool: Send {
    /// The broker kind, for metric labels and logs.
    fn kind(&self) -> &'static str;

    /// Open connections (scalers).
    fn connections(&self) -> usize;

    /// Reads this kind's triggers among `triggers` (the others are skipped). `every_trigger`
    /// says `triggers` is the whole list, so connections none of them uses close.
    fn poll<'a>(
        &'a mut self,
        triggers: &'a [(TriggerId, Trigger)],
        every_trigger: bool,
    ) -> BoxFuture<'a, Vec<PollOutcome>>;
}

/// This kind's triggers among `triggers`, typed for its scaler.
fn of_kind<S: Scaler>(triggers: &[(TriggerId, Trigger)]) -> Vec<(TriggerId, S::Trigger)> {
    triggers
        .iter()
        .filter_map(|(id, t)| S::trigger_of(t).map(|t| (id.clone(), t.clone())))
        .collect()
}

impl<S: Scaler> KindPool for ScalerPool<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn connections(&self) -> usize {
        ScalerPool::connections(self)
    }

    fn poll<'a>(
        &'a mut self,
        triggers: &'a [(TriggerId, Trigger)],
        every_trigger: bool,
    ) -> BoxFuture<'a, Vec<PollOutcome>> {
        Box::pin(async move {
            let typed = of_kind::<S>(triggers);
            if typed.is_empty() && !every_trigger {
                return Vec::new();
            }
            self.round(&typed, every_trigger).await
        })
    }
}

/// Builds one empty pool per broker kind.
#[derive(Default)]
pub(super) struct PoolPerKind(pub(super) Vec<Box<dyn KindPool>>);

impl KindVisitor for PoolPerKind {
    fn visit<S: Scaler>(&mut self) {
        self.0.push(Box::new(ScalerPool::<S>::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::scalers::{Reading, ScalerError};

    /// What the fake broker saw: connects and rounds, by connection.
    type Log = Arc<Mutex<Vec<String>>>;

    /// A trigger of the fake broker: which connection it names, what it reads.
    #[derive(Debug, Clone)]
    struct FakeTrigger {
        connection: &'static str,
        value: f64,
        valid: bool,
        log: Log,
    }

    impl TriggerParams for FakeTrigger {
        fn target_value(&self) -> f64 {
            1.0
        }

        fn activation_threshold(&self) -> f64 {
            0.0
        }

        fn metric_name(&self) -> String {
            "fake".into()
        }

        fn secret_sources(&mut self) -> Vec<(&'static str, &mut crate::secret::SecretSource)> {
            Vec::new()
        }

        fn validate(&self) -> Result<(), ScalerError> {
            if self.valid {
                Ok(())
            } else {
                Err(ScalerError::InvalidTrigger {
                    broker: "fake",
                    field: "value".into(),
                    message: "invalid on purpose".into(),
                })
            }
        }
    }

    /// Answers each trigger its own value; the connection `refused` cannot be built.
    struct FakeScaler {
        connection: &'static str,
        log: Log,
    }

    impl Scaler for FakeScaler {
        type Trigger = FakeTrigger;
        const KIND: &'static str = "fake";
        const CONFIG_KEY: &'static str = "fake";

        fn trigger_of(_: &Trigger) -> Option<&FakeTrigger> {
            None
        }

        fn connection_key(trigger: &FakeTrigger) -> String {
            trigger.connection.into()
        }

        fn connect(trigger: &FakeTrigger) -> Result<Self, ScalerError> {
            trigger
                .log
                .lock()
                .unwrap()
                .push(format!("connect {}", trigger.connection));
            if trigger.connection == "refused" {
                return Err(ScalerError::Unreachable {
                    broker: "fake",
                    target: "refused".into(),
                    cause: "connection refused".into(),
                });
            }
            Ok(Self {
                connection: trigger.connection,
                log: Arc::clone(&trigger.log),
            })
        }

        async fn poll(&self, triggers: &[FakeTrigger]) -> Vec<Result<Reading, ScalerError>> {
            self.log
                .lock()
                .unwrap()
                .push(format!("poll {} x{}", self.connection, triggers.len()));
            triggers
                .iter()
                .map(|t| Ok(Reading::new(t.value, t.value > 0.0)))
                .collect()
        }
    }

    fn trigger(log: &Log, index: usize, connection: &'static str) -> (TriggerId, FakeTrigger) {
        (
            TriggerId {
                namespace: "default".into(),
                scaled_object: format!("so-{index}"),
                index: 0,
            },
            FakeTrigger {
                connection,
                value: index as f64,
                valid: true,
                log: Arc::clone(log),
            },
        )
    }

    /// The outcomes by scaled object name: its value, or its error's reason.
    fn by_object(outcomes: Vec<PollOutcome>) -> Vec<(String, Result<f64, &'static str>)> {
        let mut found: Vec<_> = outcomes
            .into_iter()
            .map(|(id, result, _)| {
                (
                    id.scaled_object,
                    result.map(|r| r.value).map_err(|e| e.reason()),
                )
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    fn sorted(log: &Log) -> Vec<String> {
        let mut entries = std::mem::take(&mut *log.lock().unwrap());
        entries.sort();
        entries
    }

    #[tokio::test]
    async fn triggers_sharing_a_connection_are_read_in_one_round_by_a_kept_scaler() {
        let log = Log::default();
        let triggers = vec![
            trigger(&log, 1, "a"),
            trigger(&log, 2, "b"),
            trigger(&log, 3, "a"),
            trigger(&log, 4, "a"),
        ];
        let mut pool = ScalerPool::<FakeScaler>::new();
        let outcomes = by_object(pool.poll(&triggers).await);
        assert_eq!(
            outcomes,
            vec![
                ("so-1".into(), Ok(1.0)),
                ("so-2".into(), Ok(2.0)),
                ("so-3".into(), Ok(3.0)),
                ("so-4".into(), Ok(4.0)),
            ]
        );
        assert_eq!(
            sorted(&log),
            ["connect a", "connect b", "poll a x3", "poll b x1"]
        );
        assert_eq!(pool.connections(), 2);

        pool.poll(&triggers).await;
        assert_eq!(
            sorted(&log),
            ["poll a x3", "poll b x1"],
            "no new connection"
        );
    }

    #[tokio::test]
    async fn an_invalid_trigger_or_a_refused_connection_fails_only_its_own_triggers() {
        let log = Log::default();
        let mut invalid = trigger(&log, 1, "a");
        invalid.1.valid = false;
        let triggers = vec![
            invalid,
            trigger(&log, 2, "a"),
            trigger(&log, 3, "refused"),
            trigger(&log, 4, "refused"),
        ];
        let mut pool = ScalerPool::<FakeScaler>::new();
        let outcomes = by_object(pool.poll(&triggers).await);
        assert_eq!(
            outcomes,
            vec![
                ("so-1".into(), Err("invalid_trigger")),
                ("so-2".into(), Ok(2.0)),
                ("so-3".into(), Err("unreachable")),
                ("so-4".into(), Err("unreachable")),
            ]
        );
        assert_eq!(
            sorted(&log),
            ["connect a", "connect refused", "poll a x1"],
            "an invalid trigger is never sent to its broker"
        );
        assert_eq!(pool.connections(), 1, "a refused connection is not kept");
    }

    #[tokio::test]
    async fn connections_close_when_no_trigger_uses_them_but_not_after_a_partial_round() {
        let log = Log::default();
        let (a, b) = (trigger(&log, 1, "a"), trigger(&log, 2, "b"));
        let mut pool = ScalerPool::<FakeScaler>::new();
        pool.poll(&[a.clone(), b.clone()]).await;
        assert_eq!(pool.connections(), 2);

        pool.poll_some(std::slice::from_ref(&a)).await;
        assert_eq!(pool.connections(), 2, "b's triggers still need it");

        pool.poll(std::slice::from_ref(&a)).await;
        assert_eq!(pool.connections(), 1, "b has no trigger left");

        pool.close_unused(&[]);
        assert_eq!(pool.connections(), 0);
    }
}
