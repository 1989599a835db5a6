//! The poller: reads every trigger from its broker and writes the outcomes to the metric cache.
//!
//! Triggers are grouped by broker kind and then by [`Scaler::connection_key`]; each group is
//! answered by one scaler in one batched round. The poller names no broker: it reaches every
//! kind through [`scalers::for_each_kind`].
//!
//! Two ways to run it:
//! - [`Poller::run_registry`], the long-running poller of `spillway serve` and `spillway run`:
//!   each connection group polls on a task of its own ([`scheduler`]), so a hung or slow
//!   broker delays only its own triggers; rounds in flight are bounded per process and per
//!   endpoint ([`limits`]); a reading that grows older than its freshness bound without a
//!   newer poll is marked stale; a changed spec drops the old reading and is polled at once.
//!   It also answers [`PollRequests`](crate::cache::PollRequests): the API asks for the first
//!   poll of a trigger a request wants before it was ever read (a cold miss).
//! - [`Poller::tick`], one round over a list of triggers that returns when every outcome is in
//!   the cache (`spillway watch`, `plan --live`, `check`), through a [`pool::ScalerPool`] per kind.
//!
//! With replicas sharing the polling ([`shard`]), the scheduler runs only the connection groups
//! this replica owns and forwards cold misses on the others to their owner.
//!
//! Every round has a deadline ([`ROUND_DEADLINE`]) on top of the scalers' own timeouts: a
//! round cut there is a timeout for each of its triggers, never a value.

mod group;
pub mod limits;
pub mod pool;
pub mod scheduler;
pub mod shard;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::mpsc;

use crate::cache::{MetricCache, TriggerId};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::scalers::{self, MAX_TIMEOUT_MS, Reading, Scaler, ScalerError, Trigger};
use pool::{KindPool, PoolPerKind};

/// The longest one batched round may take, whatever the scaler's own bounds: two broker
/// calls at the longest timeout a trigger may set, and a second of grace.
pub const ROUND_DEADLINE: Duration = Duration::from_millis(2 * MAX_TIMEOUT_MS + 1_000);

/// One outcome of a round: the trigger, its reading or error, and how long its group took.
pub type PollOutcome = (TriggerId, Result<Reading, ScalerError>, Duration);

/// Reads `triggers` with `scaler`, cut at [`ROUND_DEADLINE`]: a round that has not answered
/// by then is a timeout for each trigger, naming `endpoint`.
pub(crate) async fn poll_within_deadline<S: Scaler>(
    scaler: &S,
    triggers: &[S::Trigger],
    endpoint: &str,
) -> Vec<Result<Reading, ScalerError>> {
    match tokio::time::timeout(ROUND_DEADLINE, scaler.poll(triggers)).await {
        Ok(results) => results,
        Err(_) => triggers
            .iter()
            .map(|_| {
                Err(ScalerError::Timeout {
                    broker: S::KIND,
                    target: endpoint.to_owned(),
                    after: ROUND_DEADLINE,
                })
            })
            .collect(),
    }
}

/// Logs one outcome (structured, one line) and counts it in `metrics`.
fn observe_outcome(
    metrics: &Metrics,
    kind: &'static str,
    id: &TriggerId,
    result: &Result<Reading, ScalerError>,
    took: Duration,
) {
    if let Err(err) = result {
        tracing::warn!(trigger = %id, broker = kind, reason = err.reason(), error = %err, "poll failed");
    } else {
        tracing::debug!(trigger = %id, broker = kind, took_ms = took.as_millis() as u64, "polled");
    }
    metrics.observe_poll(id, kind, result.as_ref().map(|_| ()), took);
}

/// Writes a round's outcomes to the cache, counts them in `metrics` and logs failures.
pub fn record_outcomes(
    cache: &MetricCache,
    metrics: &Metrics,
    kind: &'static str,
    outcomes: Vec<PollOutcome>,
) {
    for (id, result, took) in outcomes {
        observe_outcome(metrics, kind, &id, &result, took);
        cache.record(id, result, took);
    }
}

/// Polls triggers into the cache: one round at a time ([`Poller::tick`]) or for as long as a
/// registry serves them ([`Poller::run_registry`]).
pub struct Poller {
    cache: Arc<MetricCache>,
    metrics: Arc<Metrics>,
    /// One pool per broker kind, for one-shot rounds.
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

    /// Open broker connections (scalers) of one-shot rounds, summed over kinds.
    pub fn connections(&self) -> usize {
        self.pools.iter().map(|pool| pool.connections()).sum()
    }

    /// One round over `triggers`, every kind and connection concurrently; returns when every
    /// outcome is in the cache. Connections and cache entries of other triggers are dropped.
    pub async fn tick(&mut self, triggers: &[(TriggerId, Trigger)]) {
        self.metrics.track_triggers(triggers);
        let (cache, metrics) = (&*self.cache, &*self.metrics);
        // Each kind's outcomes are recorded as soon as that kind is done, so a slow broker of
        // another kind does not hold them back.
        join_all(self.pools.iter_mut().map(|pool| async move {
            let kind = pool.kind();
            let outcomes = pool.poll(triggers, true).await;
            record_outcomes(cache, metrics, kind, outcomes);
        }))
        .await;
        let live: std::collections::HashSet<&TriggerId> =
            triggers.iter().map(|(id, _)| id).collect();
        self.cache.retain(|id| live.contains(id));
    }

    /// Polls the scaled objects of `registry`, each trigger every its object's polling
    /// interval, each connection group on a task of its own, and polls at once what
    /// `requests` asks for; until the task is dropped (which stops every group). See
    /// [`scheduler`].
    pub async fn run_registry(
        self,
        registry: Arc<Registry>,
        requests: mpsc::UnboundedReceiver<TriggerId>,
    ) {
        scheduler::Scheduler::new(self.cache, self.metrics)
            .run(registry, requests)
            .await;
    }

    /// [`Poller::run_registry`] polling only the connection groups `shard` says this replica
    /// owns (see [`shard`]).
    pub async fn run_registry_shared(
        self,
        registry: Arc<Registry>,
        requests: mpsc::UnboundedReceiver<TriggerId>,
        shard: shard::Shard,
    ) {
        scheduler::Scheduler::new(self.cache, self.metrics)
            .with_shard(shard)
            .run(registry, requests)
            .await;
    }
}
