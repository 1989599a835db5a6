//! The poller: every tick, reads every trigger and writes the outcomes to the metric cache.
//!
//! Triggers are grouped by broker kind and then by [`Scaler::connection_key`]; each group is
//! answered by one scaler in one batched round, and all groups run concurrently. Scalers are
//! kept between ticks (their connections, metadata and caches with them) and dropped when no
//! trigger uses their connection any more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::cache::{MetricCache, TriggerId};
use crate::scalers::cron::CronScaler;
use crate::scalers::kafka::KafkaScaler;
use crate::scalers::nats::NatsJetStreamScaler;
use crate::scalers::prometheus::PrometheusScaler;
use crate::scalers::rabbitmq::RabbitMqScaler;
use crate::scalers::{Reading, Scaler, ScalerError, Trigger, TriggerParams};

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
    /// connection and each group is polled once, all groups concurrently.
    pub async fn poll(&mut self, triggers: &[(TriggerId, S::Trigger)]) -> Vec<PollOutcome> {
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
        self.scalers.retain(|key, _| groups.contains_key(key));
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

/// Writes a round's outcomes to the cache and logs failures (structured, one line each).
pub fn record_outcomes(cache: &MetricCache, kind: &'static str, outcomes: Vec<PollOutcome>) {
    for (id, result, took) in outcomes {
        if let Err(err) = &result {
            tracing::warn!(trigger = %id, broker = kind, reason = err.reason(), error = %err, "poll failed");
        } else {
            tracing::debug!(trigger = %id, broker = kind, took_ms = took.as_millis() as u64, "polled");
        }
        cache.record(id, result, took);
    }
}

/// Polls every trigger of every broker kind once per tick, all kinds concurrently, and keeps
/// the cache in step with the trigger list.
pub struct Poller {
    cache: Arc<MetricCache>,
    kafka: ScalerPool<KafkaScaler>,
    rabbitmq: ScalerPool<RabbitMqScaler>,
    nats: ScalerPool<NatsJetStreamScaler>,
    prometheus: ScalerPool<PrometheusScaler>,
    cron: ScalerPool<CronScaler>,
}

impl Poller {
    pub fn new(cache: Arc<MetricCache>) -> Self {
        Self {
            cache,
            kafka: ScalerPool::new(),
            rabbitmq: ScalerPool::new(),
            nats: ScalerPool::new(),
            prometheus: ScalerPool::new(),
            cron: ScalerPool::new(),
        }
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
        let mut kafka = Vec::new();
        let mut rabbitmq = Vec::new();
        let mut nats = Vec::new();
        let mut prometheus = Vec::new();
        let mut cron = Vec::new();
        for (id, trigger) in triggers {
            let id = id.clone();
            match trigger {
                Trigger::Kafka(t) => kafka.push((id, t.clone())),
                Trigger::RabbitMq(t) => rabbitmq.push((id, t.clone())),
                Trigger::NatsJetStream(t) => nats.push((id, t.clone())),
                Trigger::Prometheus(t) => prometheus.push((id, t.clone())),
                Trigger::Cron(t) => cron.push((id, t.clone())),
            }
        }
        let (k, r, n, p, c) = tokio::join!(
            self.kafka.poll(&kafka),
            self.rabbitmq.poll(&rabbitmq),
            self.nats.poll(&nats),
            self.prometheus.poll(&prometheus),
            self.cron.poll(&cron),
        );
        record_outcomes(&self.cache, KafkaScaler::KIND, k);
        record_outcomes(&self.cache, RabbitMqScaler::KIND, r);
        record_outcomes(&self.cache, NatsJetStreamScaler::KIND, n);
        record_outcomes(&self.cache, PrometheusScaler::KIND, p);
        record_outcomes(&self.cache, CronScaler::KIND, c);
        let live: std::collections::HashSet<&TriggerId> =
            triggers.iter().map(|(id, _)| id).collect();
        self.cache.retain(|id| live.contains(id));
    }
}
