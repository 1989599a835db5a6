//! The poller: every tick, reads every trigger and writes the outcomes to the metric cache.
//!
//! Triggers are grouped by broker kind and then by [`Scaler::connection_key`]; each group is
//! answered by one scaler in one batched round, and all groups run concurrently. Scalers are
//! kept between ticks (their connections, metadata and caches with them) and dropped when no
//! trigger uses their connection any more. The poller names no broker: it keeps one
//! [`ScalerPool`] per kind that [`scalers::for_each_kind`] lists.
//!
//! Between ticks it also answers [`PollRequests`](crate::cache::PollRequests): the API asks for the first poll of a trigger
//! a request wants before its first tick has read it (a cold miss), and every ask for the same
//! trigger within [`ASK_INTERVAL`](crate::cache::ASK_INTERVAL) is one poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use tokio::sync::mpsc;

use crate::cache::{MetricCache, TriggerId};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::scalers::{self, KindVisitor, Reading, Scaler, ScalerError, Trigger, TriggerParams};

/// How often [`Poller::run_registry`] looks for scaled objects due for a poll: the finest
/// polling interval there is (KEDA's is in whole seconds too).
const SCHEDULER_RESOLUTION: Duration = Duration::from_secs(1);

/// One outcome of a round: the trigger, its reading or error, and how long its group took.
pub type PollOutcome = (TriggerId, Result<Reading, ScalerError>, Duration);

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
        let used: std::collections::HashSet<String> =
            triggers.iter().map(|(_, t)| S::connection_key(t)).collect();
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
                    .entry(S::connection_key(&entry.1))
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
                        let results = scaler.poll(&batch).await;
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

/// Writes a round's outcomes to the cache, counts them in `metrics` and logs failures
/// (structured, one line each).
pub fn record_outcomes(
    cache: &MetricCache,
    metrics: &Metrics,
    kind: &'static str,
    outcomes: Vec<PollOutcome>,
) {
    for (id, result, took) in outcomes {
        if let Err(err) = &result {
            tracing::warn!(trigger = %id, broker = kind, reason = err.reason(), error = %err, "poll failed");
        } else {
            tracing::debug!(trigger = %id, broker = kind, took_ms = took.as_millis() as u64, "polled");
        }
        metrics.observe_poll(&id, kind, result.as_ref().map(|_| ()), took);
        cache.record(id, result, took);
    }
}

/// A [`ScalerPool`] of any kind, fed with untyped triggers: the poller keeps one per broker
/// kind in one list and never names a broker.
trait KindPool: Send {
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

    /// Closes the connections no trigger of `every` (the whole list) uses.
    fn close_unused(&mut self, every: &[(TriggerId, Trigger)]);
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

    fn close_unused(&mut self, every: &[(TriggerId, Trigger)]) {
        ScalerPool::close_unused(self, &of_kind::<S>(every));
    }
}

/// Builds one empty pool per broker kind.
#[derive(Default)]
struct PoolPerKind(Vec<Box<dyn KindPool>>);

impl KindVisitor for PoolPerKind {
    fn visit<S: Scaler>(&mut self) {
        self.0.push(Box::new(ScalerPool::<S>::new()));
    }
}

/// Polls every trigger of every broker kind once per tick, all kinds concurrently, and keeps
/// the cache in step with the trigger list.
pub struct Poller {
    cache: Arc<MetricCache>,
    metrics: Arc<Metrics>,
    /// One pool per broker kind.
    pools: Vec<Box<dyn KindPool>>,
}

impl Poller {
    /// A poller writing to `cache`, counting into a registry of its own until
    /// [`Poller::with_metrics`] gives it the served one.
    pub fn new(cache: Arc<MetricCache>) -> Self {
        let mut pools = PoolPerKind::default();
        scalers::for_each_kind(&mut pools);
        Self {
            metrics: Arc::new(Metrics::new(Arc::clone(&cache))),
            cache,
            pools: pools.0,
        }
    }

    /// Counts polls into `metrics` (the registry `/metrics` serves).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Open broker connections (scalers), summed over kinds.
    pub fn connections(&self) -> usize {
        self.pools.iter().map(|pool| pool.connections()).sum()
    }

    /// One round over `triggers`; returns when every outcome is in the cache.
    pub async fn tick(&mut self, triggers: &[(TriggerId, Trigger)]) {
        self.metrics.track_triggers(triggers);
        self.poll(triggers, true).await;
        let live: std::collections::HashSet<&TriggerId> =
            triggers.iter().map(|(id, _)| id).collect();
        self.cache.retain(|id| live.contains(id));
    }

    /// Polls those of `ids` that are in `triggers` and still have no cache entry (a tick may
    /// have read them since they were asked for), keeping every connection open.
    pub async fn poll_cold(&mut self, triggers: &[(TriggerId, Trigger)], ids: &[TriggerId]) {
        let cold: Vec<(TriggerId, Trigger)> = triggers
            .iter()
            .filter(|(id, _)| ids.contains(id) && self.cache.get(id).is_none())
            .cloned()
            .collect();
        if !cold.is_empty() {
            tracing::debug!(triggers = cold.len(), "polling cold triggers now");
            self.poll(&cold, false).await;
        }
    }

    /// Ticks every `interval` (the first at once) and, between ticks, polls what `requests`
    /// asks for; until the task is dropped. A slow round delays the next tick instead of
    /// bunching ticks up.
    pub async fn run(
        mut self,
        triggers: Vec<(TriggerId, Trigger)>,
        interval: Duration,
        mut requests: mpsc::UnboundedReceiver<TriggerId>,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A due tick first: it reads every trigger, the cold ones included.
                biased;
                _ = ticks.tick() => self.tick(&triggers).await,
                Some(first) = requests.recv() => {
                    let mut ids = vec![first];
                    while let Ok(id) = requests.try_recv() {
                        ids.push(id);
                    }
                    self.poll_cold(&triggers, &ids).await;
                }
            }
        }
    }

    /// Polls the scaled objects of `registry`, each every its own polling interval (checked
    /// once a second), and, between rounds, polls what `requests` asks for; until the task
    /// is dropped. Objects that come and go in the registry are picked up at the next
    /// second; their cache entries and unused connections go with them.
    pub async fn run_registry(
        mut self,
        registry: Arc<Registry>,
        mut requests: mpsc::UnboundedReceiver<TriggerId>,
    ) {
        let mut due: HashMap<(String, String), Instant> = HashMap::new();
        let mut seconds = tokio::time::interval(SCHEDULER_RESOLUTION);
        seconds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = seconds.tick() => {
                    let served = registry.served();
                    let now = Instant::now();
                    let mut round = Vec::new();
                    for (key, object) in &served.objects {
                        if due.get(key).is_none_or(|at| *at <= now) {
                            round.extend(object.triggers.iter().cloned());
                            due.insert(key.clone(), now + object.polling_interval);
                        }
                    }
                    due.retain(|key, _| served.objects.contains_key(key));
                    let every = served.triggers();
                    self.metrics.track_triggers(&every);
                    if !round.is_empty() {
                        self.poll(&round, false).await;
                    }
                    self.forget_unused(&every);
                }
                Some(first) = requests.recv() => {
                    let mut ids = vec![first];
                    while let Ok(id) = requests.try_recv() {
                        ids.push(id);
                    }
                    self.poll_cold(&registry.served().triggers(), &ids).await;
                }
            }
        }
    }

    /// Drops cache entries and connections of triggers no longer in `every`.
    fn forget_unused(&mut self, every: &[(TriggerId, Trigger)]) {
        let live: std::collections::HashSet<&TriggerId> = every.iter().map(|(id, _)| id).collect();
        self.cache.retain(|id| live.contains(id));
        for pool in &mut self.pools {
            pool.close_unused(every);
        }
    }

    /// Polls `triggers`, grouped by kind, all kinds concurrently; each kind's outcomes are
    /// recorded as soon as that kind is done. `every_trigger` says `triggers` is the whole
    /// list, so unused connections may close.
    async fn poll(&mut self, triggers: &[(TriggerId, Trigger)], every_trigger: bool) {
        let (cache, metrics) = (&*self.cache, &*self.metrics);
        // Each kind's outcomes are recorded as soon as that kind is done, so a slow broker of
        // another kind does not hold them back.
        join_all(self.pools.iter_mut().map(|pool| async move {
            let kind = pool.kind();
            let outcomes = pool.poll(triggers, every_trigger).await;
            record_outcomes(cache, metrics, kind, outcomes);
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

        fn metric_name(&self) -> String {
            "fake".into()
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
