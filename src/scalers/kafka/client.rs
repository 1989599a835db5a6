//! A Kafka cluster as the scaler reads it, on the shared wire client ([`ClusterClient`]: one
//! connection per broker for every trigger and group of the cluster).
//!
//! Per tick it answers all triggers with requests that grow with brokers and coordinators, not
//! with groups: committed offsets in one OffsetFetch per coordinator (many groups each, KIP-709;
//! one per group, pipelined, on brokers before 3.0), coordinators from a cache filled by one
//! batched FindCoordinator and re-found at once when one moves, end offsets in one ListOffsets
//! per partition leader, and Metadata only when the cache is stale or an answer says a topic
//! changed. ListOffsets answers per partition, so a deleted topic or a moved leader fails only
//! its partitions; their metadata is read again in the same round and moved leaders are asked
//! once more.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::kafka_client::PartitionMap;

/// A map keyed by topic name, hashed with foldhash (a tick looks a topic up per partition).
pub type TopicMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
use crate::kafka_client::{ClusterClient, EARLIEST, ItemError, LATEST, ResponseError, WireError};
use crate::scalers::ScalerError;

const KIND: &str = "kafka";

/// How metadata (topic -> partitions) stays fresh: new partitions are seen within this time.
const METADATA_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a partition's log start is reused while every group counting it has a commit at
/// or after it. A log start only moves forward (retention, DeleteRecords), so a cached one is
/// at most that old and never above the real one: a commit it passes as valid can at worst
/// count records retention removed in the meantime, more backlog, never less.
const LOG_START_MAX_AGE: Duration = Duration::from_secs(60);

/// A topic partition.
pub type TopicPartition = (String, i32);

pub use crate::kafka_client::RequestCounts;

/// End offset, or why there is none, per partition.
pub type EndOffsets = PartitionMap<Result<i64, ItemError>>;

/// The lowest commit per partition over the groups counting it (`None`: a group has none),
/// keyed by reference: a round builds it over every partition it counts.
pub type LowestCommits<'a> = HashMap<&'a TopicPartition, Option<i64>, foldhash::fast::RandomState>;

/// The log of one partition: its start (first record kept) and end (next offset written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub start: i64,
    pub end: i64,
}

/// Committed offsets of one group: every partition it has committed, over all topics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupOffsets {
    pub committed: PartitionMap<i64>,
    /// Partitions the coordinator answered with an error of their own (a topic the group may
    /// not read, say): they fail the triggers counting them, not the whole group.
    pub failed: PartitionMap<ScalerError>,
}

impl GroupOffsets {
    /// Sorts OffsetFetch's answer per partition: an offset, no commit (left out, the caller
    /// applies the reset policy), or an error of that partition.
    fn from_answers(
        answers: impl IntoIterator<Item = (TopicPartition, Result<Option<i64>, ScalerError>)>,
    ) -> Self {
        let mut offsets = Self::default();
        for (tp, answer) in answers {
            match answer {
                Ok(Some(offset)) => {
                    offsets.committed.insert(tp, offset);
                }
                Ok(None) => {}
                Err(err) => {
                    offsets.failed.insert(tp, err);
                }
            }
        }
        offsets
    }

    /// Topics the group has committed offsets for (KEDA's topic discovery when `topic` is empty),
    /// and those whose offsets failed: their triggers must fail, not skip them.
    pub fn topics(&self) -> HashSet<&str> {
        self.committed
            .keys()
            .chain(self.failed.keys())
            .map(|(t, _)| t.as_str())
            .collect()
    }
}

/// One topic's metadata: sorted partition ids and each partition's leader (-1: none).
struct CachedTopic {
    partitions: Result<Vec<i32>, ScalerError>,
    leaders: HashMap<i32, i32>,
    fetched: Instant,
}

/// A Kafka cluster as spillway reads it.
pub struct KafkaCluster {
    client: ClusterClient,
    /// The bootstrap servers, for error messages (never credentials).
    target: String,
    timeout: Duration,
    metadata: Mutex<HashMap<String, CachedTopic>>,
    topic_list: Mutex<Option<(Instant, Vec<String>)>>,
    /// Coordinator broker id per group; forgotten when the coordinator moves or fails.
    coordinators: Mutex<HashMap<String, i32>>,
    /// Log start offsets with when they were read (see [`LOG_START_MAX_AGE`]): a tick of fully
    /// committed groups asks only for end offsets, a third less broker work than both.
    log_starts: Mutex<PartitionMap<(i64, Instant)>>,
}

impl KafkaCluster {
    pub fn new(client: ClusterClient, target: String) -> Self {
        Self {
            timeout: client.timeout(),
            client,
            target,
            metadata: Mutex::default(),
            topic_list: Mutex::default(),
            coordinators: Mutex::default(),
            log_starts: Mutex::default(),
        }
    }

    /// Requests sent so far, by Kafka API name.
    pub fn request_counts(&self) -> RequestCounts {
        self.client.request_counts()
    }

    /// Checks every address of the cluster known to the wire client (bootstrap servers and the
    /// brokers its metadata named) against the destination policy, each name's every resolved
    /// address, for the librdkafka record reader, which connects on its own.
    pub async fn check_destinations(&self) -> Result<(), ScalerError> {
        for address in self.client.known_addresses() {
            crate::destination::check_every_address(&address)
                .await
                .map_err(|err| ScalerError::Unreachable {
                    broker: KIND,
                    target: self.target.clone(),
                    cause: format!("the lag-seconds reader may not connect: {err}"),
                })?;
        }
        Ok(())
    }

    /// Open broker connections.
    pub fn open_connections(&self) -> usize {
        self.client.open_connections()
    }

    /// Committed offsets of each group for the given partitions. A partition the group never
    /// committed is left out of the answer; a partition the coordinator answered with an error
    /// is in [`GroupOffsets::failed`]. A group whose coordinator moved is asked once more.
    pub async fn committed_offsets(
        &self,
        requests: &[(&str, Vec<TopicPartition>)],
    ) -> HashMap<String, Result<GroupOffsets, ScalerError>> {
        let mut results: HashMap<String, Result<GroupOffsets, ScalerError>> = HashMap::new();
        let mut asked: HashMap<String, BTreeMap<String, Vec<i32>>> = HashMap::new();
        for (group, partitions) in requests {
            if partitions.is_empty() {
                results.insert(group.to_string(), Ok(GroupOffsets::default()));
                continue;
            }
            let topics = asked.entry(group.to_string()).or_default();
            for (topic, partition) in partitions {
                match topics.get_mut(topic.as_str()) {
                    Some(ids) => ids.push(*partition),
                    None => {
                        topics.insert(topic.clone(), vec![*partition]);
                    }
                }
            }
        }
        let mut pending: Vec<String> = asked.keys().cloned().collect();
        pending.sort();
        for attempt in 0..2 {
            let by_node = self.coordinators_of(&pending, &mut results).await;
            let fetches = by_node.into_iter().map(|(node, groups)| {
                let groups: Vec<(String, BTreeMap<String, Vec<i32>>)> = groups
                    .into_iter()
                    .map(|g| {
                        let topics = asked[&g].clone();
                        (g, topics)
                    })
                    .collect();
                async move { self.client.fetch_committed(node, &groups).await }
            });
            let mut retry = Vec::new();
            for answers in futures::future::join_all(fetches).await {
                for (group, answer) in answers {
                    let what = format!("consumer group {group}");
                    match answer {
                        Ok(partitions) => {
                            let offsets = GroupOffsets::from_answers(partitions.into_iter().map(
                                |(tp, answer)| {
                                    let answer = answer.map_err(|code| {
                                        self.error_from_code(
                                            code,
                                            &format!("{what} partition {}/{}", tp.0, tp.1),
                                        )
                                    });
                                    (tp, answer)
                                },
                            ));
                            results.insert(group, Ok(offsets));
                        }
                        // The coordinator knows no such group: it has no commits (new group).
                        Err(ItemError::Code(ResponseError::GroupIdNotFound)) => {
                            results.insert(group, Ok(GroupOffsets::default()));
                        }
                        Err(err) => {
                            if coordinator_moved(&err) {
                                self.coordinators
                                    .lock()
                                    .expect("coordinators lock")
                                    .remove(&group);
                                if attempt == 0 {
                                    retry.push(group);
                                    continue;
                                }
                            }
                            results.insert(group, Err(self.error(&err, &what)));
                        }
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            tracing::debug!(cluster = %self.target, groups = retry.len(), "coordinator moved or connection lost; finding coordinators again");
            pending = retry;
        }
        results
    }

    /// Each group's coordinator, from the cache or one batched FindCoordinator; groups whose
    /// coordinator cannot be found get their error in `results`.
    async fn coordinators_of(
        &self,
        groups: &[String],
        results: &mut HashMap<String, Result<GroupOffsets, ScalerError>>,
    ) -> BTreeMap<i32, Vec<String>> {
        let mut by_node: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        let mut unknown = Vec::new();
        {
            let cache = self.coordinators.lock().expect("coordinators lock");
            for group in groups {
                match cache.get(group) {
                    Some(node) => by_node.entry(*node).or_default().push(group.clone()),
                    None => unknown.push(group.clone()),
                }
            }
        }
        for (group, found) in self.client.find_coordinators(&unknown).await {
            match found {
                Ok(node) => {
                    self.coordinators
                        .lock()
                        .expect("coordinators lock")
                        .insert(group.clone(), node);
                    by_node.entry(node).or_default().push(group);
                }
                Err(err) => {
                    let error = self.error(&err, &format!("consumer group {group} coordinator"));
                    results.insert(group, Err(error));
                }
            }
        }
        by_node
    }

    /// Names of every topic in the cluster (for triggers without `topic`), cached like metadata.
    pub async fn all_topics(&self) -> Result<Vec<String>, ScalerError> {
        if let Some((fetched, topics)) = self.topic_list.lock().expect("topic list lock").as_ref()
            && fetched.elapsed() < METADATA_MAX_AGE
        {
            return Ok(topics.clone());
        }
        let metadata = self
            .client
            .metadata(None)
            .await
            .map_err(|err| self.error(&err.into(), "metadata"))?;
        let mut topics: Vec<String> = metadata
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_owned()))
            .filter(|name| !name.starts_with("__"))
            .collect();
        topics.sort();
        *self.topic_list.lock().expect("topic list lock") = Some((Instant::now(), topics.clone()));
        Ok(topics)
    }

    /// Partitions of each topic, from the metadata cache; stale or unknown topics are fetched
    /// in one Metadata request. A topic the cluster says does not exist is `NotFound`.
    pub async fn partitions(&self, topics: &[&str]) -> TopicMap<Result<Vec<i32>, ScalerError>> {
        let stale: Vec<&str> = {
            let cache = self.metadata.lock().expect("metadata lock");
            topics
                .iter()
                .copied()
                .filter(|t| {
                    cache.get(*t).is_none_or(|c| {
                        c.fetched.elapsed() > METADATA_MAX_AGE || c.partitions.is_err()
                    })
                })
                .collect::<BTreeSet<&str>>()
                .into_iter()
                .collect()
        };
        if !stale.is_empty() {
            match self.client.metadata(Some(&stale)).await {
                Ok(metadata) => {
                    let now = Instant::now();
                    let listed: HashMap<&str, _> = metadata
                        .topics
                        .iter()
                        .filter_map(|t| Some((t.name.as_ref()?.0.as_str(), t)))
                        .collect();
                    let mut cache = self.metadata.lock().expect("metadata lock");
                    for topic in &stale {
                        let what = format!("topic {topic}");
                        let mut leaders = HashMap::new();
                        let partitions = match listed.get(topic) {
                            Some(t) => match crate::kafka_client::error_of(t.error_code) {
                                None => {
                                    let mut ids = Vec::with_capacity(t.partitions.len());
                                    for p in &t.partitions {
                                        ids.push(p.partition_index);
                                        leaders.insert(p.partition_index, p.leader_id.0);
                                    }
                                    ids.sort_unstable();
                                    Ok(ids)
                                }
                                Some(code) => Err(self.error_from_code(code, &what)),
                            },
                            None => Err(self.not_found(what)),
                        };
                        cache.insert(
                            topic.to_string(),
                            CachedTopic {
                                partitions,
                                leaders,
                                fetched: now,
                            },
                        );
                    }
                }
                Err(err) => {
                    let error = self.error(&err.into(), "metadata");
                    return topics
                        .iter()
                        .map(|t| (t.to_string(), Err(error.clone())))
                        .collect();
                }
            }
        }
        let cache = self.metadata.lock().expect("metadata lock");
        topics
            .iter()
            .map(|t| {
                let partitions = cache
                    .get(*t)
                    .map(|c| c.partitions.clone())
                    .unwrap_or_else(|| Err(self.not_found(format!("topic {t}"))));
                (t.to_string(), partitions)
            })
            .collect()
    }

    /// Forgets cached metadata so the next call asks the cluster (after an offsets error).
    pub fn invalidate_metadata(&self, topics: &[&str]) {
        let mut cache = self.metadata.lock().expect("metadata lock");
        for topic in topics {
            cache.remove(*topic);
        }
        // A topic deleted and created again starts a new log.
        self.log_starts
            .lock()
            .expect("log starts lock")
            .retain(|(topic, _), _| !topics.contains(&topic.as_str()));
    }

    /// Log start and end offsets of `partitions`: per partition leader one ListOffsets for the
    /// ends and one for the starts, all in parallel. The outer error (no broker answered at
    /// all) fails the whole round; inner errors fail only their partition. Partitions answered with an error a topic can cause (deleted, leader moved:
    /// [`is_topic_scoped`]) get their topic's metadata read again at once and are asked once
    /// more on their new leader, so the others still get their offsets in this round.
    ///
    /// `lowest_commits` gives, per partition, the lowest commit of the groups counting it
    /// (None: one of them has none). A log start is read again unless a cached one is younger
    /// than [`LOG_START_MAX_AGE`] and at or below that commit: a partition without a commit
    /// (`earliest` counts from the start) or with one below the start always gets a fresh one.
    ///
    /// `known_ends` are end offsets read earlier in this round ([`Self::end_offsets`]); they
    /// are not asked again.
    pub async fn log_offsets(
        &self,
        partitions: &[TopicPartition],
        lowest_commits: &LowestCommits<'_>,
        known_ends: EndOffsets,
    ) -> Result<PartitionMap<Result<LogOffsets, ScalerError>>, ScalerError> {
        if partitions.is_empty() {
            return Ok(PartitionMap::default());
        }
        let mut offsets = self
            .log_offsets_by_leader(partitions, lowest_commits, known_ends)
            .await;
        let scoped: BTreeSet<String> = offsets
            .iter()
            .filter(|(_, r)| matches!(r, Err(ItemError::Code(code)) if is_topic_scoped(*code)))
            .map(|((t, _), _)| t.clone())
            .collect();
        if !scoped.is_empty() {
            let topics: Vec<&str> = scoped.iter().map(String::as_str).collect();
            tracing::info!(cluster = %self.target, topics = topics.len(), "end offsets failed on a topic's error; reading those topics' metadata again");
            self.invalidate_metadata(&topics);
            let known = self.partitions(&topics).await;
            let mut again = Vec::new();
            for (tp, result) in offsets.iter_mut() {
                if !matches!(result, Err(ItemError::Code(code)) if is_topic_scoped(*code)) {
                    continue;
                }
                match &known[&tp.0] {
                    Err(_) => {}
                    Ok(ids) if ids.binary_search(&tp.1).is_err() => {}
                    Ok(_) => again.push(tp.clone()),
                }
            }
            // Moved partitions: their starts are read again with their ends.
            offsets.extend(
                self.log_offsets_by_leader(
                    &again,
                    &LowestCommits::default(),
                    EndOffsets::default(),
                )
                .await,
            );
            // What metadata says about a deleted topic beats the partition's error code.
            let mut answers = self.scaler_errors(offsets);
            for (tp, answer) in answers.iter_mut() {
                if answer.is_err()
                    && let Some(Err(err)) = known.get(&tp.0)
                {
                    *answer = Err(err.clone());
                }
            }
            return self.whole_round_failure(answers);
        }
        self.whole_round_failure(self.scaler_errors(offsets))
    }

    /// When no partition got an answer because no broker did, the round fails as one.
    #[allow(clippy::type_complexity)]
    fn whole_round_failure(
        &self,
        answers: PartitionMap<Result<LogOffsets, ScalerError>>,
    ) -> Result<PartitionMap<Result<LogOffsets, ScalerError>>, ScalerError> {
        let unreachable = |r: &Result<LogOffsets, ScalerError>| {
            matches!(
                r,
                Err(ScalerError::Unreachable { .. } | ScalerError::Timeout { .. })
            )
        };
        if answers.values().all(unreachable)
            && let Some(Err(err)) = answers.values().next()
        {
            return Err(err.clone());
        }
        Ok(answers)
    }

    fn scaler_errors(
        &self,
        offsets: PartitionMap<Result<LogOffsets, ItemError>>,
    ) -> PartitionMap<Result<LogOffsets, ScalerError>> {
        offsets
            .into_iter()
            .map(|(tp, result)| {
                let result =
                    result.map_err(|err| self.error(&err, &format!("partition {}/{}", tp.0, tp.1)));
                (tp, result)
            })
            .collect()
    }

    /// End offsets of `partitions`, one ListOffsets per leader: for a round to ask while it
    /// reads committed offsets (on the broker's other connection), so the two overlap, and to
    /// hand to [`Self::log_offsets`], errors included (a deleted topic is asked once a round).
    pub async fn end_offsets(&self, partitions: &[TopicPartition]) -> EndOffsets {
        if partitions.is_empty() {
            return EndOffsets::default();
        }
        self.offsets_by_leader(partitions, LATEST).await
    }

    /// End offsets of `partitions` that `known_ends` does not have and the start offsets the
    /// cache cannot give (see [`Self::log_offsets`]), both asked at once; a partition fails
    /// with the first error of either answer.
    async fn log_offsets_by_leader(
        &self,
        partitions: &[TopicPartition],
        lowest_commits: &LowestCommits<'_>,
        mut known_ends: EndOffsets,
    ) -> PartitionMap<Result<LogOffsets, ItemError>> {
        let now = Instant::now();
        let start_is_fresh = |cached: Option<&(i64, Instant)>, tp: &TopicPartition| {
            let lowest = lowest_commits.get(tp).copied().flatten();
            matches!((cached, lowest), (Some((start, read)), Some(lowest))
                if now.duration_since(*read) < LOG_START_MAX_AGE && *start <= lowest)
        };
        // Only what must be asked is copied: on a warm round of 10,000 partitions nothing is.
        // Fresh starts are kept by position in `partitions`.
        let mut stale = Vec::new();
        let cached: Vec<Option<i64>> = {
            let log_starts = self.log_starts.lock().expect("log starts lock");
            partitions
                .iter()
                .map(|tp| match log_starts.get(tp) {
                    Some(entry) if start_is_fresh(Some(entry), tp) => Some(entry.0),
                    _ => {
                        stale.push(tp.clone());
                        None
                    }
                })
                .collect()
        };
        let unknown_ends: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| !known_ends.contains_key(*tp))
            .cloned()
            .collect();
        let (ends, mut starts) = futures::join!(
            self.offsets_by_leader(&unknown_ends, LATEST),
            self.offsets_by_leader(&stale, EARLIEST)
        );
        known_ends.extend(ends);
        {
            let mut log_starts = self.log_starts.lock().expect("log starts lock");
            for (tp, start) in &starts {
                match start {
                    Ok(start) => log_starts.insert(tp.clone(), (*start, now)),
                    Err(_) => log_starts.remove(tp),
                };
            }
        }
        // Keys moved out of the ends, not copied: every partition asked has its end there.
        let mut offsets =
            PartitionMap::with_capacity_and_hasher(partitions.len(), Default::default());
        for (tp, cached) in partitions.iter().zip(cached) {
            let (tp, end) = known_ends
                .remove_entry(tp)
                .expect("every partition answered");
            let start = match cached {
                Some(start) => Ok(start),
                None => starts.remove(&tp).expect("every stale partition answered"),
            };
            offsets.insert(
                tp,
                end.and_then(|end| Ok(LogOffsets { start: start?, end })),
            );
        }
        offsets
    }

    /// Offsets at `timestamp` of `partitions`, one ListOffsets per leader, leaders in parallel.
    /// Every partition asked is in the answer (a partition the broker left out is an error,
    /// never lag 0).
    async fn offsets_by_leader(
        &self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> PartitionMap<Result<i64, ItemError>> {
        let mut results =
            PartitionMap::with_capacity_and_hasher(partitions.len(), Default::default());
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        {
            let cache = self.metadata.lock().expect("metadata lock");
            for (topic, partition) in partitions {
                match cache
                    .get(topic)
                    .and_then(|c| c.leaders.get(partition))
                    .filter(|leader| **leader >= 0)
                {
                    Some(leader) => {
                        // The topic's name is copied once per leader, not once per partition.
                        let topics = by_leader.entry(*leader).or_default();
                        match topics.get_mut(topic.as_str()) {
                            Some(ids) => ids.push(*partition),
                            None => {
                                topics.insert(topic.clone(), vec![*partition]);
                            }
                        }
                    }
                    None => {
                        results.insert(
                            (topic.clone(), *partition),
                            Err(ItemError::Code(ResponseError::LeaderNotAvailable)),
                        );
                    }
                }
            }
        }
        let calls = by_leader.into_iter().map(|(leader, asked)| async move {
            let answer = self.client.list_offsets(leader, &asked, timestamp).await;
            (asked, answer)
        });
        for (asked, answer) in futures::future::join_all(calls).await {
            let asked = asked
                .into_iter()
                .flat_map(|(t, ids)| ids.into_iter().map(move |p| (t.clone(), p)));
            match answer {
                Ok(mut found) => {
                    for tp in asked {
                        let result = match found.remove(&tp) {
                            Some(answer) => answer.map_err(ItemError::Code),
                            None => Err(ItemError::Request(WireError::Protocol {
                                broker: self.target.clone(),
                                api: "ListOffsets",
                                cause: format!(
                                    "partition {}/{} missing from the answer",
                                    tp.0, tp.1
                                ),
                            })),
                        };
                        results.insert(tp, result);
                    }
                }
                Err(err) => results.extend(asked.map(|tp| (tp, Err(err.clone().into())))),
            }
        }
        results
    }

    fn not_found(&self, what: String) -> ScalerError {
        ScalerError::NotFound {
            broker: KIND,
            target: self.target.clone(),
            what,
        }
    }

    /// Maps a wire failure to the scaler error a user can act on.
    fn error(&self, err: &ItemError, what: &str) -> ScalerError {
        let target = self.target.clone();
        let cause = format!("{what}: {err}");
        match err {
            ItemError::Code(code) => self.error_from_code(*code, what),
            ItemError::Request(wire) => match wire {
                WireError::Kafka { code, .. } => self.error_from_code(*code, what),
                WireError::Timeout { .. } => ScalerError::Timeout {
                    broker: KIND,
                    target,
                    after: self.timeout,
                },
                WireError::Connect { .. } | WireError::Disconnected { .. } => {
                    ScalerError::Unreachable {
                        broker: KIND,
                        target,
                        cause,
                    }
                }
                WireError::Authentication { .. } => ScalerError::Unauthorized {
                    broker: KIND,
                    target,
                    cause,
                },
                WireError::Config(_) => ScalerError::Broker {
                    broker: KIND,
                    target,
                    cause,
                },
                WireError::Unsupported { .. } | WireError::Protocol { .. } => {
                    ScalerError::BadResponse {
                        broker: KIND,
                        target,
                        cause,
                    }
                }
            },
        }
    }

    /// Maps a Kafka error code to the scaler error a user can act on.
    fn error_from_code(&self, code: ResponseError, what: &str) -> ScalerError {
        error_from_code(&self.target, self.timeout, code, what)
    }
}

/// Maps a Kafka error code to the scaler error a user can act on.
fn error_from_code(
    target: &str,
    timeout: Duration,
    code: ResponseError,
    what: &str,
) -> ScalerError {
    use ResponseError as E;
    let target = target.to_owned();
    let cause = format!("{what}: {code}");
    match code {
        E::RequestTimedOut => ScalerError::Timeout {
            broker: KIND,
            target,
            after: timeout,
        },
        E::NetworkException
        | E::CoordinatorNotAvailable
        | E::NotCoordinator
        | E::CoordinatorLoadInProgress
        | E::BrokerNotAvailable => ScalerError::Unreachable {
            broker: KIND,
            target,
            cause,
        },
        E::UnknownTopicOrPartition | E::UnknownTopicId | E::GroupIdNotFound => {
            ScalerError::NotFound {
                broker: KIND,
                target,
                what: what.to_owned(),
            }
        }
        E::TopicAuthorizationFailed
        | E::GroupAuthorizationFailed
        | E::ClusterAuthorizationFailed
        | E::SaslAuthenticationFailed => ScalerError::Unauthorized {
            broker: KIND,
            target,
            cause,
        },
        _ => ScalerError::Broker {
            broker: KIND,
            target,
            cause,
        },
    }
}

/// The error can come from one topic or partition (deleted, unknown, leader moved, log dir
/// offline) rather than from the cluster: its topic's metadata is read again at once.
fn is_topic_scoped(code: ResponseError) -> bool {
    use ResponseError as E;
    matches!(
        code,
        E::UnknownTopicOrPartition
            | E::UnknownTopicId
            | E::NotLeaderOrFollower
            | E::LeaderNotAvailable
            | E::ReplicaNotAvailable
            | E::FencedLeaderEpoch
            | E::UnknownLeaderEpoch
            | E::OffsetNotAvailable
            | E::KafkaStorageError
    )
}

/// The group's coordinator moved or its connection broke: find the coordinator again.
fn coordinator_moved(err: &ItemError) -> bool {
    use ResponseError as E;
    match err {
        ItemError::Code(code) => matches!(
            code,
            E::NotCoordinator | E::CoordinatorNotAvailable | E::CoordinatorLoadInProgress
        ),
        ItemError::Request(WireError::Disconnected { .. } | WireError::Connect { .. }) => true,
        ItemError::Request(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_error_fails_that_partition_not_the_group() {
        let denied = ScalerError::Unauthorized {
            broker: KIND,
            target: "k".into(),
            cause: "topic b".into(),
        };
        let tp = |topic: &str, partition| (topic.to_owned(), partition);
        let offsets = GroupOffsets::from_answers([
            (tp("a", 0), Ok(Some(7))),
            (tp("a", 1), Ok(None)),
            (tp("b", 0), Err(denied.clone())),
            (tp("c", 0), Ok(Some(0))),
        ]);
        assert_eq!(
            offsets.committed,
            PartitionMap::from_iter([(tp("a", 0), 7), (tp("c", 0), 0)])
        );
        assert_eq!(
            offsets.failed,
            PartitionMap::from_iter([(tp("b", 0), denied)])
        );
        assert_eq!(offsets.topics(), HashSet::from(["a", "b", "c"]));
    }

    #[test]
    fn topic_scoped_errors_are_told_from_cluster_errors() {
        use ResponseError as E;
        let cases = [
            (E::UnknownTopicOrPartition, true),
            (E::NotLeaderOrFollower, true),
            (E::LeaderNotAvailable, true),
            (E::UnknownTopicId, true),
            (E::TopicAuthorizationFailed, false),
            (E::RequestTimedOut, false),
            (E::NetworkException, false),
            (E::ClusterAuthorizationFailed, false),
        ];
        for (code, scoped) in cases {
            assert_eq!(is_topic_scoped(code), scoped, "{code:?}");
        }
    }

    #[test]
    fn kafka_error_codes_map_to_errors_a_user_can_act_on() {
        use ResponseError as E;
        let reason = |code| error_from_code("k:9092", Duration::from_secs(1), code, "x").reason();
        let cases = [
            (E::UnknownTopicOrPartition, "not_found"),
            (E::GroupIdNotFound, "not_found"),
            (E::NotCoordinator, "unreachable"),
            (E::CoordinatorNotAvailable, "unreachable"),
            (E::RequestTimedOut, "timeout"),
            (E::GroupAuthorizationFailed, "unauthorized"),
            (E::TopicAuthorizationFailed, "unauthorized"),
            (E::InvalidRequest, "broker_error"),
        ];
        for (code, expected) in cases {
            assert_eq!(reason(code), expected, "{code:?}");
        }
    }

    #[test]
    fn a_moved_coordinator_is_found_again_but_a_refusal_is_final() {
        use ResponseError as E;
        let cases = [
            (ItemError::Code(E::NotCoordinator), true),
            (ItemError::Code(E::CoordinatorLoadInProgress), true),
            (
                ItemError::Request(WireError::Disconnected {
                    broker: "b".into(),
                    cause: "reset".into(),
                }),
                true,
            ),
            (ItemError::Code(E::GroupAuthorizationFailed), false),
            (
                ItemError::Request(WireError::Timeout {
                    broker: "b".into(),
                    api: "OffsetFetch",
                    after: Duration::from_secs(1),
                }),
                false,
            ),
        ];
        for (err, moved) in cases {
            assert_eq!(coordinator_moved(&err), moved, "{err:?}");
        }
    }
}
