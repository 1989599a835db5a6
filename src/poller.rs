//! The poller: every tick, reads every trigger and writes the outcomes to the metric cache.
//!
//! Triggers are grouped by broker kind and then by [`Scaler::connection_key`]; each group is
//! answered by one scaler in one batched round, and all groups run concurrently. Scalers are
//! kept between ticks (their connections, metadata and caches with them) and dropped when no
//! trigger uses their connection any more.
//!
//! Between ticks it also answers [`PollRequests`]: the API asks for the first poll of a trigger
//! a request wants before its first tick has read it (a cold miss), and every ask for the same
//! trigger within [`ASK_INTERVAL`] is one poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::mpsc;

use crate::cache::{MetricCache, TriggerId};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::scalers::cron::CronScaler;
use crate::scalers::kafka::KafkaScaler;
use crate::scalers::nats::NatsJetStreamScaler;
use crate::scalers::prometheus::PrometheusScaler;
use crate::scalers::rabbitmq::RabbitMqScaler;
use crate::scalers::{Reading, Scaler, ScalerError, Trigger, TriggerParams};

/// Triggers split by broker kind, each list typed for its scaler pool.
#[derive(Default)]
struct ByKind {
    kafka: Vec<(TriggerId, <KafkaScaler as Scaler>::Trigger)>,
    rabbitmq: Vec<(TriggerId, <RabbitMqScaler as Scaler>::Trigger)>,
    nats: Vec<(TriggerId, <NatsJetStreamScaler as Scaler>::Trigger)>,
    prometheus: Vec<(TriggerId, <PrometheusScaler as Scaler>::Trigger)>,
    cron: Vec<(TriggerId, <CronScaler as Scaler>::Trigger)>,
}

impl ByKind {
    fn split(triggers: &[(TriggerId, Trigger)]) -> Self {
        let mut kinds = Self::default();
        for (id, trigger) in triggers {
            let id = id.clone();
            match trigger {
                Trigger::Kafka(t) => kinds.kafka.push((id, t.clone())),
                Trigger::RabbitMq(t) => kinds.rabbitmq.push((id, t.clone())),
                Trigger::NatsJetStream(t) => kinds.nats.push((id, t.clone())),
                Trigger::Prometheus(t) => kinds.prometheus.push((id, t.clone())),
                Trigger::Cron(t) => kinds.cron.push((id, t.clone())),
            }
        }
        kinds
    }
}

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

/// Reads `triggers` with `pool` and records the outcomes as soon as this kind is done, so a
/// slow broker of another kind does not hold them back.
async fn poll_kind<S: Scaler>(
    pool: &mut ScalerPool<S>,
    triggers: &[(TriggerId, S::Trigger)],
    every_trigger: bool,
    cache: &MetricCache,
    metrics: &Metrics,
) {
    if triggers.is_empty() && !every_trigger {
        return;
    }
    let outcomes = if every_trigger {
        pool.poll(triggers).await
    } else {
        pool.poll_some(triggers).await
    };
    record_outcomes(cache, metrics, S::KIND, outcomes);
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
    /// A new channel: the requests side, and the receiver to hand to [`Poller::run`].
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

/// Polls every trigger of every broker kind once per tick, all kinds concurrently, and keeps
/// the cache in step with the trigger list.
pub struct Poller {
    cache: Arc<MetricCache>,
    metrics: Arc<Metrics>,
    kafka: ScalerPool<KafkaScaler>,
    rabbitmq: ScalerPool<RabbitMqScaler>,
    nats: ScalerPool<NatsJetStreamScaler>,
    prometheus: ScalerPool<PrometheusScaler>,
    cron: ScalerPool<CronScaler>,
}

impl Poller {
    /// A poller writing to `cache`, counting into a registry of its own until
    /// [`Poller::with_metrics`] gives it the served one.
    pub fn new(cache: Arc<MetricCache>) -> Self {
        Self {
            metrics: Arc::new(Metrics::new(Arc::clone(&cache))),
            cache,
            kafka: ScalerPool::new(),
            rabbitmq: ScalerPool::new(),
            nats: ScalerPool::new(),
            prometheus: ScalerPool::new(),
            cron: ScalerPool::new(),
        }
    }

    /// Counts polls into `metrics` (the registry `/metrics` serves).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Open broker connections (scalers), summed over kinds.
    pub fn connections(&self) -> usize {
        self.kafka.connections()
            + self.rabbitmq.connections()
            + self.nats.connections()
            + self.prometheus.connections()
            + self.cron.connections()
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
        let ByKind {
            kafka,
            rabbitmq,
            nats,
            prometheus,
            cron,
        } = ByKind::split(every);
        self.kafka.close_unused(&kafka);
        self.rabbitmq.close_unused(&rabbitmq);
        self.nats.close_unused(&nats);
        self.prometheus.close_unused(&prometheus);
        self.cron.close_unused(&cron);
    }

    /// Polls `triggers`, grouped by kind, all kinds concurrently; each kind's outcomes are
    /// recorded as soon as that kind is done. `every_trigger` says `triggers` is the whole
    /// list, so unused connections may close.
    async fn poll(&mut self, triggers: &[(TriggerId, Trigger)], every_trigger: bool) {
        let ByKind {
            kafka,
            rabbitmq,
            nats,
            prometheus,
            cron,
        } = ByKind::split(triggers);
        let (cache, metrics) = (&*self.cache, &*self.metrics);
        tokio::join!(
            poll_kind(&mut self.kafka, &kafka, every_trigger, cache, metrics),
            poll_kind(&mut self.rabbitmq, &rabbitmq, every_trigger, cache, metrics),
            poll_kind(&mut self.nats, &nats, every_trigger, cache, metrics),
            poll_kind(
                &mut self.prometheus,
                &prometheus,
                every_trigger,
                cache,
                metrics
            ),
            poll_kind(&mut self.cron, &cron, every_trigger, cache, metrics),
        );
    }
}
