//! The long-running poller: keeps one task per connection group in step with the registry,
//! and watches every reading's age.
//!
//! Once a second (and at once when the API asks for a cold trigger) it reads the registry's
//! snapshot; when the snapshot changed it places each trigger in its group (broker kind plus
//! [`Scaler::connection_key`](crate::scalers::Scaler::connection_key)), starts the groups that
//! are new, hands each group its members, and stops the groups that are gone. A trigger whose
//! spec changed gets a new spec version: the cache drops its old reading at once and its
//! group polls it at once. A trigger that cannot be polled (invalid parameters) gets its error
//! recorded every interval, like a failed poll.
//!
//! Shared polling ([`Shard`]): only the groups this replica owns run here; the others' triggers
//! are still tracked (their copies from the owner age and turn stale here like any reading),
//! cold misses on them go to their owner, and each sync publishes every trigger's
//! [`Placement`]. A change of the live set is a sync too.
//!
//! Freshness: a trigger with no poll finished within [`freshness_bound`] of its interval is
//! marked stale in the cache, and again every interval after, so it answers 503 and counts
//! toward `fallback.failureThreshold` like a failed poll, however long its broker takes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::group::{GroupAddress, GroupKind, GroupKinds, Member, Shared};
use super::limits::RoundLimits;
use super::observe_outcome;
use super::shard::{ForwardedAsk, Owners, Placed, Placement, Shard};
use crate::cache::{MetricCache, TriggerId};
use crate::metrics::Metrics;
use crate::registry::{Registry, Served};
use crate::scalers::{self, ScalerError, Trigger};

/// How often the scheduler looks at the registry and at the readings' age: the finest polling
/// interval there is (KEDA's is in whole seconds too).
const RESOLUTION: Duration = Duration::from_secs(1);

/// A reading is never stale sooner than this, however short its interval: a broker round
/// taking a few seconds now and then is normal.
pub const MIN_FRESHNESS: Duration = Duration::from_secs(15);

/// How old a trigger's latest poll may be before its reading is stale: three polling
/// intervals, and at least [`MIN_FRESHNESS`].
pub fn freshness_bound(interval: Duration) -> Duration {
    bound_with_floor(interval, MIN_FRESHNESS)
}

fn bound_with_floor(interval: Duration, floor: Duration) -> Duration {
    (interval * 3).max(floor)
}

/// One registered trigger as the scheduler follows it.
#[derive(Debug)]
struct Tracked {
    trigger: Trigger,
    interval: Duration,
    /// Its spec version (the registry's): outcomes are recorded for it only.
    version: u64,
    /// When this spec version was first seen: the age of a trigger never polled.
    since: Instant,
    /// Its group, or why it cannot be polled.
    place: Result<GroupAddress, ScalerError>,
    /// Its spec's fingerprint, the same in every replica.
    fingerprint: u64,
    /// Whether this replica polls its group (always, without a [`Shard`]).
    owned: bool,
    /// For an invalid trigger: when its error is recorded next.
    next_error: Instant,
}

/// A running group task and the channels that feed it.
struct Group {
    members: watch::Sender<Arc<[Member]>>,
    asks: mpsc::UnboundedSender<TriggerId>,
    task: JoinHandle<()>,
}

impl Drop for Group {
    fn drop(&mut self) {
        // Cuts a round in flight too: a removed group's broker may be the one that hangs.
        self.task.abort();
    }
}

/// Follows the registry and runs the groups; see the module doc.
pub struct Scheduler {
    shared: Arc<Shared>,
    kinds: Vec<Arc<dyn GroupKind>>,
    tracked: BTreeMap<TriggerId, Tracked>,
    groups: HashMap<GroupAddress, Group>,
    /// The registry snapshot the groups follow now.
    synced: Option<Arc<Served>>,
    /// [`MIN_FRESHNESS`], shorter in tests.
    min_freshness: Duration,
    /// The polling shared with other replicas, when it is.
    shard: Option<Shard>,
}

impl Scheduler {
    pub fn new(cache: Arc<MetricCache>, metrics: Arc<Metrics>) -> Self {
        let mut kinds = GroupKinds::default();
        scalers::for_each_kind(&mut kinds);
        Self {
            shared: Arc::new(Shared {
                cache,
                metrics,
                limits: RoundLimits::default(),
            }),
            kinds: kinds.0,
            tracked: BTreeMap::new(),
            groups: HashMap::new(),
            synced: None,
            min_freshness: MIN_FRESHNESS,
            shard: None,
        }
    }

    /// Polls only the groups `shard`'s live set gives this replica; see the module doc.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = Some(shard);
        self
    }

    /// Runs until the task is dropped; dropping it stops every group.
    pub async fn run(
        mut self,
        registry: Arc<Registry>,
        mut requests: mpsc::UnboundedReceiver<TriggerId>,
    ) {
        let mut seconds = tokio::time::interval(RESOLUTION);
        seconds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owners = self.shard.as_ref().map(|s| s.owners.clone());
        loop {
            tokio::select! {
                biased;
                Some(()) = owners_changed(&mut owners) => {
                    // Groups move: every placement is looked at again.
                    self.synced = None;
                    self.sync(registry.served());
                }
                _ = seconds.tick() => {
                    self.sync(registry.served());
                    self.check_freshness(Instant::now());
                    self.shared.limits.forget_idle();
                }
                Some(first) = requests.recv() => {
                    // The registry may hold the asked trigger since less than a second.
                    self.sync(registry.served());
                    let mut ids = vec![first];
                    while let Ok(id) = requests.try_recv() {
                        ids.push(id);
                    }
                    self.ask(&ids);
                }
            }
        }
    }

    /// Follows `served` if it changed since the last sync, or a group task ended.
    fn sync(&mut self, served: Arc<Served>) {
        let owners = self.shard.as_ref().map(|s| Arc::clone(&s.owners.borrow()));
        let unchanged = self
            .synced
            .as_ref()
            .is_some_and(|synced| Arc::ptr_eq(synced, &served));
        if unchanged && self.groups.values().all(|g| !g.task.is_finished()) {
            return;
        }
        let now = Instant::now();
        let mut live = HashSet::new();
        let mut members: HashMap<GroupAddress, Vec<Member>> = HashMap::new();
        let mut placement = Placement::default();
        let mut all_groups = HashSet::new();
        for object in served.objects.values() {
            for (id, trigger) in &object.triggers {
                live.insert(id.clone());
                let version = served.spec_versions.get(id).copied().unwrap_or(0);
                let tracked = self.track(id, trigger, version, object.polling_interval, now);
                let (place, fingerprint) = (tracked.place.clone(), tracked.fingerprint);
                if let Ok(address) = &place {
                    let owned = match &owners {
                        Some(owners) => {
                            let key = address.ownership_key();
                            let owner = owners.owner(&key);
                            placement.triggers.insert(
                                id.clone(),
                                Placed {
                                    version,
                                    fingerprint,
                                    owner: owner.identity.clone(),
                                },
                            );
                            all_groups.insert(address.clone());
                            owners.is_mine(&key)
                        }
                        None => true,
                    };
                    if let Some(tracked) = self.tracked.get_mut(id) {
                        tracked.owned = owned;
                    }
                    if !owned {
                        continue;
                    }
                    members.entry(address.clone()).or_default().push(Member {
                        id: id.clone(),
                        trigger: trigger.clone(),
                        version,
                        interval: object.polling_interval,
                    });
                }
            }
        }
        self.tracked.retain(|id, _| live.contains(id));
        self.shared.cache.retain(|id| live.contains(id));
        self.shared
            .metrics
            .track_triggers(served.objects.values().flat_map(|o| o.triggers.iter()));
        // Groups nobody is in any more stop (dropping a group aborts its task).
        self.groups
            .retain(|address, group| members.contains_key(address) && !group.task.is_finished());
        for (address, list) in members {
            let list: Arc<[Member]> = list.into();
            match self.groups.get(&address) {
                Some(group) => {
                    group.members.send_if_modified(|current| {
                        let changed = **current != *list;
                        if changed {
                            *current = Arc::clone(&list);
                        }
                        changed
                    });
                }
                None => {
                    let group = self.start_group(&address, list);
                    self.groups.insert(address, group);
                }
            }
        }
        tracing::debug!(
            triggers = self.tracked.len(),
            groups = self.groups.len(),
            "following the registry"
        );
        if let Some(shard) = &self.shard {
            placement.owned_groups = self.groups.len();
            placement.groups = all_groups.len();
            let sharing = self.shared.metrics.sharing();
            sharing
                .owned_groups
                .set(i64::try_from(placement.owned_groups).unwrap_or(i64::MAX));
            sharing
                .groups
                .set(i64::try_from(placement.groups).unwrap_or(i64::MAX));
            shard.placement.send_replace(Arc::new(placement));
        }
        self.synced = Some(served);
    }

    /// The tracked entry of `id`, new or updated for `trigger` (spec `version`, the registry's)
    /// and `interval`: a new version drops the old reading from the cache.
    fn track(
        &mut self,
        id: &TriggerId,
        trigger: &Trigger,
        version: u64,
        interval: Duration,
        now: Instant,
    ) -> &Tracked {
        let same = self
            .tracked
            .get(id)
            .is_some_and(|t| t.version == version && t.interval == interval);
        if !same {
            let spec_changed = self.tracked.get(id).is_some_and(|t| t.version != version);
            if self.shared.cache.track_spec(id, version) {
                tracing::info!(trigger = %id, "spec changed: its old reading is dropped and it is polled again at once");
            }
            let place = self
                .kinds
                .iter()
                .find_map(|kind| kind.place(id, trigger))
                .unwrap_or_else(|| {
                    Err(ScalerError::InvalidTrigger {
                        broker: trigger.kind(),
                        field: "kind".into(),
                        message: "no scaler reads this broker kind".into(),
                    })
                });
            let since = match self.tracked.get(id) {
                Some(t) if !spec_changed => t.since,
                _ => now,
            };
            let owned = self.tracked.get(id).is_none_or(|t| t.owned);
            self.tracked.insert(
                id.clone(),
                Tracked {
                    trigger: trigger.clone(),
                    interval,
                    version,
                    since,
                    place,
                    fingerprint: trigger.spec_fingerprint(),
                    owned,
                    next_error: now,
                },
            );
        }
        self.tracked.get(id).expect("tracked above")
    }

    fn start_group(&self, address: &GroupAddress, members: Arc<[Member]>) -> Group {
        let (members_tx, members_rx) = watch::channel(members);
        let (asks_tx, asks_rx) = mpsc::unbounded_channel();
        let kind = self
            .kinds
            .iter()
            .find(|k| k.kind() == address.kind)
            .expect("an address comes from a kind");
        tracing::debug!(broker = address.kind, endpoint = %address.endpoint, "starting a connection group");
        Group {
            task: kind.spawn(address, members_rx, asks_rx, Arc::clone(&self.shared)),
            members: members_tx,
            asks: asks_tx,
        }
    }

    /// Hands cold-miss asks to the groups of the triggers asked for; an invalid trigger gets
    /// its error at once.
    fn ask(&mut self, ids: &[TriggerId]) {
        let now = Instant::now();
        let owners = self.shard.as_ref().map(|s| Arc::clone(&s.owners.borrow()));
        let mut forwarded: HashMap<String, ForwardedAsk> = HashMap::new();
        for id in ids {
            let Some(tracked) = self.tracked.get_mut(id) else {
                continue;
            };
            match &tracked.place {
                Ok(address) if tracked.owned => {
                    if let Some(group) = self.groups.get(address) {
                        let _ = group.asks.send(id.clone());
                    }
                }
                Ok(address) => {
                    // Another replica polls it: that one is asked.
                    if let Some(owners) = &owners {
                        let owner = owners.owner(&address.ownership_key());
                        forwarded
                            .entry(owner.identity.clone())
                            .or_insert_with(|| ForwardedAsk {
                                owner: owner.clone(),
                                triggers: Vec::new(),
                            })
                            .triggers
                            .push((id.clone(), tracked.fingerprint));
                    }
                }
                Err(_) => tracked.next_error = now,
            }
        }
        if let Some(shard) = &self.shard {
            for ask in forwarded.into_values() {
                let _ = shard.forward.send(ask);
            }
        }
        self.check_freshness(now);
    }

    /// Records the error of every invalid trigger that is due, and marks stale every reading
    /// older than its freshness bound (again each interval while it stays so).
    fn check_freshness(&mut self, now: Instant) {
        let cache = &self.shared.cache;
        let min_freshness = self.min_freshness;
        for (id, tracked) in &mut self.tracked {
            match &tracked.place {
                Err(err) => {
                    if tracked.next_error <= now {
                        let result = Err(err.clone());
                        observe_outcome(
                            &self.shared.metrics,
                            tracked.trigger.kind(),
                            id,
                            &result,
                            Duration::ZERO,
                        );
                        cache.record_for_spec(id.clone(), tracked.version, result, Duration::ZERO);
                        tracked.next_error = now + tracked.interval;
                    }
                }
                Ok(address) => {
                    let times = cache.poll_times(id);
                    let polled_at = times
                        .and_then(|t| t.polled_at)
                        .unwrap_or_else(|| tracked.since.into_std());
                    let age = now.into_std().saturating_duration_since(polled_at);
                    let bound = bound_with_floor(tracked.interval, min_freshness);
                    let marked_lately = times.is_some_and(|t| {
                        t.stale
                            && now.into_std().saturating_duration_since(t.recorded_at)
                                < tracked.interval
                    });
                    if age > bound && !marked_lately {
                        let error = ScalerError::Stale {
                            broker: address.kind,
                            target: address.endpoint.clone(),
                            age_seconds: age.as_secs(),
                            bound_seconds: bound.as_secs(),
                        };
                        tracing::warn!(trigger = %id, broker = address.kind, error = %error, "reading is stale");
                        self.shared.metrics.observe_stale(id, address.kind);
                        cache.mark_stale(id, tracked.version, error, tracked.owned);
                    }
                }
            }
        }
    }
}

/// The next change of the live set, when there is one to follow; never without.
async fn owners_changed(owners: &mut Option<watch::Receiver<Arc<Owners>>>) -> Option<()> {
    match owners {
        Some(owners) => match owners.changed().await {
            Ok(()) => Some(()),
            // The live set's sender is gone: nothing more will move.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScaledObjectConfig;
    use crate::registry::Registered;
    use crate::scalers::Reading;

    /// A scaled object of one trigger, polled every second.
    fn object(name: &str, trigger: serde_json::Value) -> Registered {
        let trigger: Trigger = match trigger.get("cron") {
            Some(cron) => Trigger::Cron(serde_json::from_value(cron.clone()).unwrap()),
            None => {
                Trigger::Prometheus(serde_json::from_value(trigger["prometheus"].clone()).unwrap())
            }
        };
        Registered {
            config: ScaledObjectConfig {
                name: name.into(),
                namespace: "default".into(),
                min_replica_count: 0,
                max_replica_count: 10,
                scale_target_ref: None,
                triggers: Vec::new(),
            },
            triggers: vec![(
                TriggerId {
                    namespace: "default".into(),
                    scaled_object: name.into(),
                    index: 0,
                },
                trigger,
            )],
            polling_interval: Duration::from_secs(1),
            fallback: None,
            composite: None,
        }
    }

    fn cron(desired: u32) -> serde_json::Value {
        // A window that is always open: the reading is `desired`.
        serde_json::json!({"cron": {"timezone": "UTC", "start": "0 0 * * *", "end": "59 23 * * *", "desiredReplicas": desired}})
    }

    fn state(cache: &MetricCache, name: &str) -> Option<crate::cache::TriggerState> {
        cache.get(&TriggerId {
            namespace: "default".into(),
            scaled_object: name.into(),
            index: 0,
        })
    }

    fn value(cache: &MetricCache, name: &str) -> Option<f64> {
        state(cache, name).and_then(|s| s.current().map(|r: &Reading| r.value))
    }

    #[tokio::test]
    async fn a_hung_broker_delays_only_its_own_group_and_turns_stale() {
        use crate::destination::{self, DestinationClass, DestinationPolicy};
        // The hung broker is on loopback, which the default policy refuses at once.
        destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
        // Accepts connections and never answers.
        let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tarpit.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = tarpit.accept().await {
                open.push(socket);
            }
        });
        let registry = Arc::new(Registry::new());
        registry.upsert(object("hung", serde_json::json!({"prometheus": {
            "serverAddress": format!("http://{address}"), "query": "up", "threshold": 1.0, "timeout": 60000
        }})));
        registry.upsert(object("office", cron(4)));
        let cache = Arc::new(MetricCache::new());
        let mut scheduler = Scheduler::new(
            Arc::clone(&cache),
            Arc::new(Metrics::new(Arc::clone(&cache))),
        );
        scheduler.min_freshness = Duration::from_secs(2);
        let (_requests, asks) = crate::cache::PollRequests::channel();
        let running = tokio::spawn(scheduler.run(Arc::clone(&registry), asks));

        tokio::time::sleep(Duration::from_millis(4_600)).await;
        let office = state(&cache, "office").expect("polled");
        assert_eq!(value(&cache, "office"), Some(4.0));
        assert!(
            office.polls >= 4,
            "polled every second beside a hung broker: {}",
            office.polls
        );
        let hung = state(&cache, "hung").expect("marked stale");
        assert_eq!(hung.polls, 0, "its round never finished");
        assert_eq!(hung.error.as_ref().map(ScalerError::reason), Some("stale"));
        assert!(hung.consecutive_failures >= 1);

        // A changed spec drops the old reading at once and is polled again at once.
        let before = office.polls;
        registry.upsert(object("office", cron(7)));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(value(&cache, "office"), Some(7.0));
        assert!(
            state(&cache, "office").unwrap().polls <= before,
            "counted anew for the new spec"
        );

        // A removed object's group stops and its entries go.
        registry.remove("default", "hung");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(state(&cache, "hung").is_none());
        running.abort();
        held.abort();
    }

    #[test]
    fn the_freshness_bound_is_three_intervals_and_never_short() {
        for (interval, bound) in [(1, 15), (5, 15), (10, 30), (60, 180)] {
            assert_eq!(
                freshness_bound(Duration::from_secs(interval)),
                Duration::from_secs(bound),
                "interval {interval} s"
            );
        }
    }
}
