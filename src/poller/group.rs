//! One connection group's task: the triggers that share one scaler (one broker connection)
//! polled on their own schedule, in batched rounds, by a task no other group waits on.
//!
//! The scheduler hands a group its members through a `watch` channel and cold-miss asks
//! through an `mpsc` one; the group owns its scaler (its connection) and its [`Schedule`].
//! A round waits for its [`RoundLimits`](super::limits::RoundLimits) permits, runs within
//! [`ROUND_DEADLINE`](super::ROUND_DEADLINE), and records each outcome only for the spec it
//! was read with.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::limits::RoundLimits;
use super::{observe_outcome, poll_within_deadline};
use crate::cache::{MetricCache, TriggerId};
use crate::metrics::Metrics;
use crate::scalers::{
    KindVisitor, Scaler, ScalerError, Trigger, TriggerParams, carries_credentials,
};

/// One trigger of a group, as the scheduler hands it over.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Member {
    pub id: TriggerId,
    pub trigger: Trigger,
    /// The spec version the cache tracks for `id`: outcomes are recorded for it only.
    pub version: u64,
    /// Its scaled object's polling interval.
    pub interval: Duration,
}

/// What every group task shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub cache: Arc<MetricCache>,
    pub metrics: Arc<Metrics>,
    pub limits: RoundLimits,
}

/// Where a trigger is polled: its connection group and the endpoint that group reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupAddress {
    pub kind: &'static str,
    pub connection: String,
    pub endpoint: String,
    /// What replicas sharing the polling hash to choose the group's owner; see
    /// [`GroupAddress::ownership_key`].
    owner_key: String,
}

impl GroupAddress {
    /// The key replicas that share polling hash to choose the group's owner: the kind, the
    /// endpoint, and the namespace of a connection that carries credentials. Not the
    /// connection key: its credential fingerprints are keyed per process, so two replicas
    /// would name one group differently. Groups that differ only by credentials share an
    /// owner, which keeps them in one process like the rest of the endpoint's.
    pub fn ownership_key(&self) -> String {
        self.owner_key.clone()
    }
}

/// The connection group of `trigger`, polled for a scaled object in `namespace`: its scaler's
/// connection key, with the namespace when the connection carries credentials. Tenants'
/// authenticated sessions are never shared across namespaces (a Secret of the same name and
/// value elsewhere gets its own), while credential-less connections to one broker are shared
/// by every namespace, so a fleet on one cluster keeps one client per broker.
pub(super) fn connection_group<S: Scaler>(namespace: &str, trigger: &S::Trigger) -> String {
    let key = S::connection_key(trigger);
    if carries_credentials(trigger) {
        format!("{key}|namespace={namespace}")
    } else {
        key
    }
}

/// A broker kind as the scheduler sees it, its scaler type erased: it places untyped triggers
/// in groups and starts the typed group tasks.
pub(super) trait GroupKind: Send + Sync {
    /// The broker kind (`kafka`, ...).
    fn kind(&self) -> &'static str;

    /// `None` when `trigger` (of trigger `id`) is another kind's; else its group, or why it
    /// cannot be polled.
    fn place(&self, id: &TriggerId, trigger: &Trigger)
    -> Option<Result<GroupAddress, ScalerError>>;

    /// Starts the task of the group at `address`.
    fn spawn(
        &self,
        address: &GroupAddress,
        members: watch::Receiver<Arc<[Member]>>,
        asks: mpsc::UnboundedReceiver<TriggerId>,
        shared: Arc<Shared>,
    ) -> JoinHandle<()>;
}

struct KindOf<S>(PhantomData<fn() -> S>);

impl<S: Scaler> GroupKind for KindOf<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn place(
        &self,
        id: &TriggerId,
        trigger: &Trigger,
    ) -> Option<Result<GroupAddress, ScalerError>> {
        S::trigger_of(trigger).map(|typed| {
            typed.validate().map(|()| {
                let endpoint = S::endpoint(typed);
                let owner_key = if carries_credentials(typed) {
                    format!("{}|{endpoint}|namespace={}", S::KIND, id.namespace)
                } else {
                    format!("{}|{endpoint}", S::KIND)
                };
                GroupAddress {
                    kind: S::KIND,
                    connection: connection_group::<S>(&id.namespace, typed),
                    endpoint,
                    owner_key,
                }
            })
        })
    }

    fn spawn(
        &self,
        address: &GroupAddress,
        members: watch::Receiver<Arc<[Member]>>,
        asks: mpsc::UnboundedReceiver<TriggerId>,
        shared: Arc<Shared>,
    ) -> JoinHandle<()> {
        tokio::spawn(run_group::<S>(
            address.endpoint.clone(),
            members,
            asks,
            shared,
        ))
    }
}

/// Every broker kind, as [`GroupKind`]s.
#[derive(Default)]
pub(super) struct GroupKinds(pub Vec<Arc<dyn GroupKind>>);

impl KindVisitor for GroupKinds {
    fn visit<S: Scaler>(&mut self) {
        self.0.push(Arc::new(KindOf::<S>(PhantomData)));
    }
}

/// When each member of a group is due. Each interval has a grid of due times that starts with
/// the group, so a trigger that joins later is polled at once, then falls in step with the
/// others of its interval and shares their batched rounds. A round that ends late skips the
/// grid points it missed instead of bunching rounds up.
#[derive(Debug)]
pub(super) struct Schedule {
    epoch: Instant,
    /// Member -> (spec version, next due time).
    due: HashMap<TriggerId, (u64, Instant)>,
}

impl Schedule {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            due: HashMap::new(),
        }
    }

    /// Follows `members`: a new member, or one whose spec changed, is due at once; members
    /// no longer listed are forgotten.
    pub fn sync(&mut self, members: &[Member], now: Instant) {
        // A set, not a scan per entry: a group can hold thousands of triggers (one Kafka
        // cluster, a group each) and this runs before every round.
        let listed: HashSet<&TriggerId> = members.iter().map(|m| &m.id).collect();
        self.due.retain(|id, _| listed.contains(id));
        for member in members {
            let entry = self
                .due
                .entry(member.id.clone())
                .or_insert((member.version, now));
            if entry.0 != member.version {
                *entry = (member.version, now);
            }
        }
    }

    /// Makes `id` due now (a cold-miss ask).
    pub fn ask(&mut self, id: &TriggerId, now: Instant) {
        if let Some(entry) = self.due.get_mut(id) {
            entry.1 = entry.1.min(now);
        }
    }

    /// The earliest due time, if the group has members.
    pub fn next_wake(&self) -> Option<Instant> {
        self.due.values().map(|(_, at)| *at).min()
    }

    pub fn is_due(&self, id: &TriggerId, now: Instant) -> bool {
        self.due.get(id).is_some_and(|(_, at)| *at <= now)
    }

    /// `id` was polled in a round that started at `started`: next due at the first grid
    /// point of its interval at least half an interval later.
    pub fn polled(&mut self, id: &TriggerId, interval: Duration, started: Instant) {
        let interval = interval.max(Duration::from_millis(1));
        let earliest = started + interval / 2;
        let since_epoch = earliest.saturating_duration_since(self.epoch);
        let steps = since_epoch.as_nanos().div_ceil(interval.as_nanos());
        let next = self.epoch
            + Duration::from_nanos(u64::try_from(steps * interval.as_nanos()).unwrap_or(u64::MAX));
        if let Some(entry) = self.due.get_mut(id) {
            entry.1 = next;
        }
    }
}

/// Outcomes a group records before it lets other tasks run.
const RECORDS_PER_SLICE: usize = 64;

/// The task of one connection group: until the scheduler drops its member channel.
async fn run_group<S: Scaler>(
    endpoint: String,
    mut members: watch::Receiver<Arc<[Member]>>,
    mut asks: mpsc::UnboundedReceiver<TriggerId>,
    shared: Arc<Shared>,
) {
    let mut schedule = Schedule::new(Instant::now());
    let mut scaler: Option<Arc<S>> = None;
    loop {
        let current = Arc::clone(&*members.borrow_and_update());
        schedule.sync(&current, Instant::now());
        let wake = schedule.next_wake();
        tokio::select! {
            biased;
            changed = members.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            Some(id) = asks.recv() => {
                // A round may have read it since it was asked for.
                if shared.cache.get(&id).is_none() {
                    schedule.ask(&id, Instant::now());
                }
            }
            () = sleep_until(wake) => {}
        }
        let now = Instant::now();
        let due: Vec<&Member> = current
            .iter()
            .filter(|m| schedule.is_due(&m.id, now))
            .collect();
        if due.is_empty() {
            continue;
        }
        let typed: Vec<S::Trigger> = due
            .iter()
            .filter_map(|m| S::trigger_of(&m.trigger).cloned())
            .collect();
        if typed.len() != due.len() {
            // The scheduler places triggers by kind; a foreign one is a bug, not a reading.
            tracing::error!(broker = S::KIND, %endpoint, "a trigger of another kind reached this group");
            return;
        }
        let permit = shared.limits.acquire(&endpoint).await;
        let started = Instant::now();
        let results = match connected(&mut scaler, &typed[0]) {
            Ok(scaler) => poll_within_deadline(&*scaler, &typed, &endpoint).await,
            Err(err) => typed.iter().map(|_| Err(err.clone())).collect(),
        };
        drop(permit);
        let took = started.elapsed();
        for (recorded, (member, result)) in due.iter().zip(results).enumerate() {
            // A round of hundreds of triggers is milliseconds of recording: the metrics API's
            // requests on this worker get their turn between slices of it.
            if recorded > 0 && recorded % RECORDS_PER_SLICE == 0 {
                tokio::task::yield_now().await;
            }
            observe_outcome(&shared.metrics, S::KIND, &member.id, &result, took);
            shared
                .cache
                .record_for_spec(member.id.clone(), member.version, result, took);
            schedule.polled(&member.id, member.interval, started);
        }
    }
}

/// The group's scaler, built on first use; a failed build is retried at the next round.
fn connected<S: Scaler>(
    scaler: &mut Option<Arc<S>>,
    trigger: &S::Trigger,
) -> Result<Arc<S>, ScalerError> {
    if let Some(scaler) = scaler {
        return Ok(Arc::clone(scaler));
    }
    let built = Arc::new(S::connect(trigger)?);
    *scaler = Some(Arc::clone(&built));
    Ok(built)
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::kafka::KafkaScaler;
    use crate::scalers::prometheus::{PrometheusScaler, PrometheusTrigger};
    use crate::secret::{SecretError, SecretReader, SecretSource, SecretString};

    /// Every Secret key of a namespace reads `value`.
    struct Reads(&'static str);

    impl SecretReader for Reads {
        async fn read_key(&self, _: &str, _: &str, _: &str) -> Result<SecretString, SecretError> {
            Ok(SecretString::new(self.0))
        }
    }

    /// A trigger as the controller registers it: `secret` resolved to `value` in `namespace`.
    async fn resolved<T: TriggerParams + Clone>(
        trigger: &T,
        namespace: &str,
        value: &'static str,
    ) -> T {
        let mut trigger = trigger.clone();
        for (_, source) in trigger.secret_sources() {
            source.resolve(&Reads(value), namespace).await.unwrap();
        }
        trigger
    }

    #[tokio::test]
    async fn credentials_keep_a_connection_to_their_namespace_and_value() {
        let prometheus: PrometheusTrigger = serde_json::from_value(serde_json::json!({
            "serverAddress": "http://prometheus:9090", "query": "up", "threshold": 1,
            "bearerToken": {"secretKeyRef": {"name": "prom", "key": "token"}},
        }))
        .unwrap();
        let group = |namespace: &str, t: &PrometheusTrigger| {
            connection_group::<PrometheusScaler>(namespace, t)
        };
        let a = resolved(&prometheus, "tenant-a", "alpha").await;
        let b_same_value = resolved(&prometheus, "tenant-b", "alpha").await;
        let b_other_value = resolved(&prometheus, "tenant-b", "bravo").await;
        // A Secret of the same name elsewhere never shares the session, whatever it holds.
        assert_ne!(group("tenant-a", &a), group("tenant-b", &b_same_value));
        assert_ne!(group("tenant-a", &a), group("tenant-b", &b_other_value));
        // A rotated value is a new connection; the same value the same one.
        let rotated = resolved(&prometheus, "tenant-a", "charlie").await;
        assert_ne!(group("tenant-a", &a), group("tenant-a", &rotated));
        assert_eq!(
            group("tenant-a", &a),
            group(
                "tenant-a",
                &resolved(&prometheus, "tenant-a", "alpha").await
            )
        );
        for key in [group("tenant-a", &a), group("tenant-a", &rotated)] {
            assert!(!key.contains("alpha") && !key.contains("charlie"), "{key}");
        }

        // Without credentials one connection serves every namespace.
        let open = PrometheusTrigger {
            bearer_token: None,
            ..prometheus.clone()
        };
        assert_eq!(group("tenant-a", &open), group("tenant-b", &open));

        let kafka: crate::scalers::kafka::KafkaTrigger =
            serde_json::from_value(serde_json::json!({
                "bootstrapServers": "kafka:9092", "consumerGroup": "g", "topic": "t",
                "sasl": "plaintext", "username": "u",
                "password": {"secretKeyRef": {"name": "kafka", "key": "password"}},
            }))
            .unwrap();
        let kafka_group = |namespace: &str, t: &crate::scalers::kafka::KafkaTrigger| {
            connection_group::<KafkaScaler>(namespace, t)
        };
        let k_a = resolved(&kafka, "tenant-a", "alpha").await;
        assert_ne!(
            kafka_group("tenant-a", &k_a),
            kafka_group("tenant-b", &resolved(&kafka, "tenant-b", "alpha").await)
        );
        assert_ne!(
            kafka_group("tenant-a", &k_a),
            kafka_group("tenant-a", &resolved(&kafka, "tenant-a", "bravo").await)
        );
        let plain = crate::scalers::kafka::KafkaTrigger {
            sasl: Default::default(),
            username: None,
            password: None,
            ..kafka
        };
        assert_eq!(
            kafka_group("tenant-a", &plain),
            kafka_group("tenant-b", &plain)
        );
        assert!(
            SecretSource::file("/nonexistent")
                .fingerprint()
                .starts_with("/nonexistent#")
        );
    }

    fn member(index: usize, version: u64, interval_s: u64) -> Member {
        Member {
            id: TriggerId {
                namespace: "default".into(),
                scaled_object: "so".into(),
                index,
            },
            trigger: Trigger::Cron(
                serde_json::from_value(serde_json::json!({
                    "timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 1
                }))
                .unwrap(),
            ),
            version,
            interval: Duration::from_secs(interval_s),
        }
    }

    #[tokio::test]
    async fn a_late_member_is_polled_at_once_then_joins_its_interval_grid() {
        let epoch = Instant::now();
        let at = |s: f64| epoch + Duration::from_secs_f64(s);
        let mut schedule = Schedule::new(epoch);
        let (a, b) = (member(0, 1, 5), member(1, 1, 5));
        schedule.sync(std::slice::from_ref(&a), at(0.0));
        assert!(schedule.is_due(&a.id, at(0.0)));
        schedule.polled(&a.id, a.interval, at(0.0));
        assert_eq!(schedule.next_wake(), Some(at(5.0)));

        // b joins at 2.3 s: due at once, then on a's grid (5 s), not at 7.3 s.
        schedule.sync(&[a.clone(), b.clone()], at(2.3));
        assert!(schedule.is_due(&b.id, at(2.3)) && !schedule.is_due(&a.id, at(2.3)));
        schedule.polled(&b.id, b.interval, at(2.3));
        assert!(schedule.is_due(&a.id, at(5.0)) && schedule.is_due(&b.id, at(5.0)));

        // A round that starts late (0.4 s) keeps the grid; one that overran skips a point.
        schedule.polled(&a.id, a.interval, at(5.4));
        assert!(!schedule.is_due(&a.id, at(9.9)) && schedule.is_due(&a.id, at(10.0)));
        schedule.polled(&a.id, a.interval, at(13.0));
        assert!(!schedule.is_due(&a.id, at(19.9)) && schedule.is_due(&a.id, at(20.0)));
    }

    #[tokio::test]
    async fn a_changed_spec_is_due_at_once_and_asks_only_bring_time_forward() {
        let epoch = Instant::now();
        let at = |s: f64| epoch + Duration::from_secs_f64(s);
        let mut schedule = Schedule::new(epoch);
        let a = member(0, 1, 10);
        schedule.sync(std::slice::from_ref(&a), at(0.0));
        schedule.polled(&a.id, a.interval, at(0.0));
        schedule.ask(&a.id, at(12.0));
        assert_eq!(schedule.next_wake(), Some(at(10.0)), "an ask never delays");
        schedule.ask(&a.id, at(3.0));
        assert!(schedule.is_due(&a.id, at(3.0)));

        schedule.polled(&a.id, a.interval, at(3.0));
        let changed = member(0, 2, 10);
        schedule.sync(std::slice::from_ref(&changed), at(4.0));
        assert!(schedule.is_due(&a.id, at(4.0)), "new spec, polled at once");

        schedule.sync(&[], at(4.0));
        assert_eq!(schedule.next_wake(), None);
    }
}
