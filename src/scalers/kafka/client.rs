//! One librdkafka client per Kafka cluster (bootstrap servers plus credentials), shared by
//! every trigger on that cluster.
//!
//! Per tick it answers all triggers with a handful of requests: committed offsets of each
//! group (one OffsetFetch to the group's coordinator, groups in parallel), end offsets of every
//! needed partition in one `offsets_for_times` call (librdkafka sends one ListOffsets per
//! partition leader), and metadata only when the cache is stale or a topic is new. When the
//! end-offsets call fails on one topic's error (a topic deleted since the metadata was cached),
//! that topic's metadata is read again at once and the call narrowed down, so the other topics
//! still get their offsets in the same round. The calls block, so the scaler runs them on
//! tokio's blocking pool.
//!
//! Committed offsets are read through librdkafka's consumer API (`rd_kafka_committed`), with one
//! light client per consumer group that never joins the group and connects only to its
//! coordinator. The admin API's ListConsumerGroupOffsets would need no extra clients, but in
//! librdkafka 2.12 a coordinator request outstanding while the broker restarts trips an
//! `enq_once` refcount assertion and aborts the process (reproduced here); an autoscaler must
//! survive exactly that, so the admin path is not used.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::scalers::ScalerError;

const KIND: &str = "kafka";

/// How metadata (topic -> partitions) stays fresh: new partitions are seen within this time.
const METADATA_MAX_AGE: Duration = Duration::from_secs(60);

/// A topic partition.
pub type TopicPartition = (String, i32);

/// Request counts by Kafka API name, summed over brokers, from librdkafka's statistics.
pub type RequestCounts = HashMap<String, i64>;

/// Per-client context: keeps the latest librdkafka statistics (request counters) and routes
/// librdkafka's own log lines into `tracing`.
#[derive(Default)]
pub struct ClusterContext {
    requests: Mutex<RequestCounts>,
}

impl ClientContext for ClusterContext {
    /// Reads the request counters from the raw statistics JSON: rdkafka's typed `Statistics`
    /// fails to parse some librdkafka 2.12 fields and then drops the whole report.
    fn stats_raw(&self, statistics: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Report {
            brokers: HashMap<String, BrokerReport>,
        }
        #[derive(serde::Deserialize)]
        struct BrokerReport {
            #[serde(default)]
            req: HashMap<String, i64>,
        }
        let Ok(report) = serde_json::from_slice::<Report>(statistics) else {
            return;
        };
        let mut totals = RequestCounts::new();
        for broker in report.brokers.values() {
            for (api, count) in &broker.req {
                *totals.entry(api.clone()).or_default() += count;
            }
        }
        *self.requests.lock().expect("stats lock") = totals;
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(target: "librdkafka", facility = fac, "{log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }
}

impl ConsumerContext for ClusterContext {}

/// Committed offsets of one group: every partition it has committed, over all topics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupOffsets {
    pub committed: HashMap<TopicPartition, i64>,
    /// Partitions the coordinator answered with an error of their own (a topic the group may
    /// not read, say): they fail the triggers counting them, not the whole group.
    pub failed: HashMap<TopicPartition, ScalerError>,
}

impl GroupOffsets {
    /// Sorts OffsetFetch's answer per partition: an offset, no commit (left out, the caller
    /// applies the reset policy), or an error of that partition.
    fn from_answers(
        answers: impl IntoIterator<Item = (TopicPartition, Result<Offset, ScalerError>)>,
    ) -> Self {
        let mut offsets = Self::default();
        for (tp, answer) in answers {
            match answer {
                Ok(Offset::Offset(offset)) if offset >= 0 => {
                    offsets.committed.insert(tp, offset);
                }
                Ok(_) => {}
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

struct CachedTopic {
    partitions: Result<Vec<i32>, ScalerError>,
    fetched: Instant,
}

/// A Kafka cluster as spillway reads it.
pub struct KafkaCluster {
    consumer: BaseConsumer<ClusterContext>,
    /// The settings every client of this cluster shares.
    config: ClientConfig,
    /// One offsets-reading client per consumer group.
    group_clients: Mutex<HashMap<String, Arc<BaseConsumer<ClusterContext>>>>,
    topic_list: Mutex<Option<(Instant, Vec<String>)>>,
    /// The bootstrap servers, for error messages (never credentials).
    target: String,
    timeout: Duration,
    metadata: Mutex<HashMap<String, CachedTopic>>,
    /// Serialises the record fetches, which change the client's assignment.
    fetch_lock: Mutex<()>,
}

impl KafkaCluster {
    /// Builds the client; nothing is sent until the first call, so a down cluster fails a poll,
    /// not the construction.
    pub fn new(
        mut config: ClientConfig,
        target: String,
        timeout: Duration,
    ) -> Result<Self, ScalerError> {
        let timeout_ms = timeout.as_millis().max(1).to_string();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("socket.timeout.ms", &timeout_ms)
            // librdkafka's floor for connection setup is one second.
            .set(
                "socket.connection.setup.timeout.ms",
                timeout.as_millis().max(1000).to_string(),
            )
            // Record fetches for lag seconds want one record per partition, not megabytes.
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "4096")
            .set("fetch.wait.max.ms", "100")
            .set("queued.min.messages", "10")
            // librdkafka backs a partition off for a second once its queue is full; we read one record.
            .set("fetch.queue.backoff.ms", "10")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "60000");
        let consumer: BaseConsumer<ClusterContext> = config
            .clone()
            // librdkafka assigns partitions only with a group id. This one never joins (no
            // subscribe) and never commits: it only reads the records behind lag seconds.
            .set("group.id", "spillway-lag-reader")
            .create_with_context(ClusterContext::default())
            .map_err(|err| {
                ScalerError::invalid(
                    KIND,
                    "bootstrapServers",
                    format!("cannot create a Kafka client: {err}"),
                )
            })?;
        Ok(Self {
            consumer,
            config,
            group_clients: Mutex::default(),
            topic_list: Mutex::default(),
            target,
            timeout,
            metadata: Mutex::new(HashMap::new()),
            fetch_lock: Mutex::new(()),
        })
    }

    /// Request counts since the client started (needs `statistics.interval.ms` in the config).
    pub fn request_counts(&self) -> RequestCounts {
        let clients: Vec<_> = self
            .group_clients
            .lock()
            .expect("group clients lock")
            .values()
            .cloned()
            .collect();
        let mut totals = RequestCounts::new();
        // The main client may hold an assignment only inside record_timestamps.
        let _guard = self.fetch_lock.lock().expect("fetch lock");
        for client in std::iter::once(&self.consumer).chain(clients.iter().map(|c| c.as_ref())) {
            // Statistics arrive as events on each client's queue and a poll serves at most one
            // (returning nothing either way), so poll enough times to reach the newest report.
            for _ in 0..2_000 {
                let _ = client.poll(Duration::ZERO);
            }
            for (api, n) in client.context().requests.lock().expect("stats lock").iter() {
                *totals.entry(api.clone()).or_default() += n;
            }
        }
        totals
    }

    /// Committed offsets of each group for the given partitions, groups in parallel. A
    /// partition the group never committed is left out of the answer; a partition the coordinator
    /// answered with an error is in [`GroupOffsets::failed`].
    pub fn committed_offsets(
        &self,
        requests: &[(&str, Vec<TopicPartition>)],
    ) -> HashMap<String, Result<GroupOffsets, ScalerError>> {
        let clients: Vec<_> = requests
            .iter()
            .map(|(group, _)| self.group_client(group))
            .collect();
        let mut results = HashMap::new();
        // Bounded parallelism: each OffsetFetch blocks its thread until answered or timed out.
        for chunk in requests.iter().zip(clients).collect::<Vec<_>>().chunks(16) {
            let answers: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|((group, partitions), client)| {
                        scope.spawn(move || {
                            (
                                group.to_string(),
                                self.fetch_committed(group, client, partitions),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("offset fetch thread"))
                    .collect()
            });
            results.extend(answers);
        }
        // Clients of groups no trigger asks about any more are closed.
        let asked: HashSet<&str> = requests.iter().map(|(g, _)| *g).collect();
        self.group_clients
            .lock()
            .expect("group clients lock")
            .retain(|g, _| asked.contains(g.as_str()));
        results
    }

    fn fetch_committed(
        &self,
        group: &str,
        client: &Result<Arc<BaseConsumer<ClusterContext>>, ScalerError>,
        partitions: &[TopicPartition],
    ) -> Result<GroupOffsets, ScalerError> {
        let client = client.as_ref().map_err(Clone::clone)?;
        if partitions.is_empty() {
            return Ok(GroupOffsets::default());
        }
        let answers = in_chunks(partitions, |chunk| {
            let mut request = TopicPartitionList::with_capacity(chunk.len());
            for (topic, partition) in chunk {
                request.add_partition(topic, *partition);
            }
            client
                .committed_offsets(request, self.timeout)
                .map_err(|err| {
                    self.error_from_kafka(&err, &format!("consumer group {group} offsets"))
                })
        })?;
        let answers = answers.iter().flat_map(|a| a.elements()).map(|element| {
            let tp = (element.topic().to_owned(), element.partition());
            let answer = element.error().map(|()| element.offset()).map_err(|err| {
                self.error_from_kafka(
                    &err,
                    &format!("consumer group {group} partition {}/{}", tp.0, tp.1),
                )
            });
            (tp, answer)
        });
        Ok(GroupOffsets::from_answers(answers))
    }

    /// The client that reads `group`'s offsets, created on first use.
    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer<ClusterContext>>, ScalerError> {
        let mut clients = self.group_clients.lock().expect("group clients lock");
        if let Some(client) = clients.get(group) {
            return Ok(Arc::clone(client));
        }
        let client: BaseConsumer<ClusterContext> = self
            .config
            .clone()
            .set("group.id", group)
            .create_with_context(ClusterContext::default())
            .map_err(|err| {
                ScalerError::invalid(
                    KIND,
                    "consumerGroup",
                    format!("cannot create a Kafka client for group {group:?}: {err}"),
                )
            })?;
        let client = Arc::new(client);
        clients.insert(group.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    /// Whether each group is known to its coordinator (has members or committed offsets).
    /// Asked only for groups with no commits, to tell "never committed" from "no such group".
    pub fn groups_exist(&self, groups: &[&str]) -> HashMap<String, Result<bool, ScalerError>> {
        groups
            .iter()
            .map(|group| {
                let known = self
                    .consumer
                    .fetch_group_list(Some(group), self.timeout)
                    .map(|list| {
                        list.groups()
                            .iter()
                            .any(|g| g.name() == *group && !g.state().eq_ignore_ascii_case("dead"))
                    })
                    .map_err(|err| self.error_from_kafka(&err, &format!("consumer group {group}")));
                (group.to_string(), known)
            })
            .collect()
    }

    /// Names of every topic in the cluster (for triggers without `topic`), cached like metadata.
    pub fn all_topics(&self) -> Result<Vec<String>, ScalerError> {
        let mut cache = self.topic_list.lock().expect("topic list lock");
        if let Some((fetched, topics)) = cache.as_ref()
            && fetched.elapsed() < METADATA_MAX_AGE
        {
            return Ok(topics.clone());
        }
        let metadata = self
            .consumer
            .fetch_metadata(None, self.timeout)
            .map_err(|err| self.error_from_kafka(&err, "metadata"))?;
        let mut topics: Vec<String> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            .map(|t| t.name().to_owned())
            .collect();
        topics.sort();
        *cache = Some((Instant::now(), topics.clone()));
        Ok(topics)
    }

    /// Partitions of each topic, from the metadata cache; stale or unknown topics are fetched
    /// in one Metadata request. A topic the cluster says does not exist is `NotFound`.
    pub fn partitions(&self, topics: &[&str]) -> HashMap<String, Result<Vec<i32>, ScalerError>> {
        let mut cache = self.metadata.lock().expect("metadata lock");
        let stale: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| {
                cache
                    .get(*t)
                    .is_none_or(|c| c.fetched.elapsed() > METADATA_MAX_AGE || c.partitions.is_err())
            })
            .collect();
        if !stale.is_empty() {
            // One topic: a topic-scoped request. Several: one request for all topics, keeping
            // only those we need (KEDA's clients cached the whole cluster's metadata each).
            let only = (stale.len() == 1).then(|| stale[0]);
            match self.consumer.fetch_metadata(only, self.timeout) {
                Ok(metadata) => {
                    let now = Instant::now();
                    let listed: HashMap<&str, _> =
                        metadata.topics().iter().map(|t| (t.name(), t)).collect();
                    for topic in &stale {
                        let partitions = match listed.get(topic) {
                            Some(t) if t.error().is_none() => {
                                let mut ids: Vec<i32> =
                                    t.partitions().iter().map(|p| p.id()).collect();
                                ids.sort_unstable();
                                Ok(ids)
                            }
                            Some(t) => {
                                let code: RDKafkaErrorCode = t.error().expect("checked").into();
                                Err(self.error_from_code(code, "", &format!("topic {topic}")))
                            }
                            None => Err(self.not_found(format!("topic {topic}"))),
                        };
                        cache.insert(
                            topic.to_string(),
                            CachedTopic {
                                partitions,
                                fetched: now,
                            },
                        );
                    }
                }
                Err(err) => {
                    let error = self.error_from_kafka(&err, "metadata");
                    return topics
                        .iter()
                        .map(|t| (t.to_string(), Err(error.clone())))
                        .collect();
                }
            }
        }
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
    }

    /// Log-end offsets of `partitions`, in one call that librdkafka splits by partition leader.
    /// The outer error (the cluster did not answer) fails the whole round; inner errors fail only
    /// their partition. A call that fails on an error one topic can cause (see
    /// [`is_topic_scoped`]) is narrowed down by [`Self::isolate_end_offsets`], so only that
    /// topic's partitions fail and the others still get their offsets in this round.
    pub fn end_offsets(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Result<i64, ScalerError>>, ScalerError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let mut offsets = match self.list_end_offsets(partitions, self.timeout) {
            Ok(offsets) => offsets,
            Err(err) if is_topic_scoped(&err) => self.isolate_end_offsets(partitions, &err),
            Err(err) => return Err(self.error_from_kafka(&err, "end offsets")),
        };
        // A partition the answer left out is an error, never lag 0 (KEDA reads 0 there).
        for tp in partitions {
            offsets.entry(tp.clone()).or_insert_with(|| {
                Err(ScalerError::BadResponse {
                    broker: KIND,
                    target: self.target.clone(),
                    cause: format!(
                        "partition {}/{} missing from the ListOffsets answer",
                        tp.0, tp.1
                    ),
                })
            });
        }
        Ok(offsets)
    }

    /// The end-offsets call itself: each partition's answer, or the error that failed the call.
    fn list_end_offsets(
        &self,
        partitions: &[TopicPartition],
        timeout: Duration,
    ) -> Result<HashMap<TopicPartition, Result<i64, ScalerError>>, KafkaError> {
        let answers = in_chunks(partitions, |chunk| self.end_offsets_chunk(chunk, timeout))?;
        let mut offsets = HashMap::with_capacity(partitions.len());
        for element in answers.iter().flat_map(|a| a.elements()) {
            let key = (element.topic().to_owned(), element.partition());
            let value = match (element.error(), element.offset()) {
                (Err(err), _) => {
                    Err(self.error_from_kafka(&err, &format!("partition {}/{}", key.0, key.1)))
                }
                (Ok(()), Offset::Offset(end)) => Ok(end),
                (Ok(()), other) => Err(ScalerError::BadResponse {
                    broker: KIND,
                    target: self.target.clone(),
                    cause: format!("no end offset for partition {}/{}: {other:?}", key.0, key.1),
                }),
            };
            offsets.insert(key, value);
        }
        Ok(offsets)
    }

    /// Which topics a failed end-offsets call failed on, so the others still get their offsets
    /// in this round. A broker answers a deleted topic or a moved leader per partition, but
    /// librdkafka fails the whole `offsets_for_times` call with the first such answer.
    ///
    /// 1. The metadata of the call's topics is read again at once (one Metadata request, which
    ///    also refreshes the cache the next rounds read): a deleted topic fails with what the
    ///    cluster says (`NotFound`) and leaves the call.
    /// 2. The rest is asked again, split in halves by topic while a call still fails on a
    ///    topic's error ([`by_halves`]): one bad topic among n costs about 2 log2(n) calls,
    ///    and a topic that fails alone gets its error.
    ///
    /// Step 2 is bounded by one timeout; calls it has no time left for are not made and their
    /// partitions time out.
    fn isolate_end_offsets(
        &self,
        partitions: &[TopicPartition],
        cause: &KafkaError,
    ) -> HashMap<TopicPartition, Result<i64, ScalerError>> {
        let topics: BTreeSet<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        let topics: Vec<&str> = topics.into_iter().collect();
        tracing::info!(cluster = %self.target, error = %cause, topics = topics.len(), "end offsets failed on a topic's error; isolating the failing topics");
        self.invalidate_metadata(&topics);
        let known = self.partitions(&topics);
        let mut offsets = HashMap::with_capacity(partitions.len());
        let mut by_topic: BTreeMap<&str, Vec<TopicPartition>> = BTreeMap::new();
        for tp in partitions {
            match &known[&tp.0] {
                Err(err) => {
                    offsets.insert(tp.clone(), Err(err.clone()));
                }
                // `partitions` keeps the ids sorted.
                Ok(ids) if ids.binary_search(&tp.1).is_err() => {
                    offsets.insert(
                        tp.clone(),
                        Err(self.not_found(format!("partition {}/{}", tp.0, tp.1))),
                    );
                }
                Ok(_) => by_topic.entry(tp.0.as_str()).or_default().push(tp.clone()),
            }
        }
        let by_topic: Vec<Vec<TopicPartition>> = by_topic.into_values().collect();
        let deadline = Instant::now() + self.timeout;
        let call = |partitions: &[TopicPartition]| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OperationTimedOut));
            }
            self.list_end_offsets(partitions, remaining)
        };
        for (asked, answer) in by_halves(&by_topic, &call, &is_topic_scoped) {
            match answer {
                Ok(found) => offsets.extend(found),
                Err(err) => offsets.extend(asked.into_iter().map(|tp| {
                    let error = self.error_from_kafka(&err, &format!("topic {} end offsets", tp.0));
                    (tp, Err(error))
                })),
            }
        }
        offsets
    }

    /// One `offsets_for_times` call for at most [`PARTITIONS_PER_CALL`] partitions.
    fn end_offsets_chunk(
        &self,
        partitions: &[TopicPartition],
        timeout: Duration,
    ) -> Result<TopicPartitionList, KafkaError> {
        let mut request = TopicPartitionList::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            request.add_partition_offset(topic, *partition, Offset::End)?;
        }
        match self.consumer.offsets_for_times(request.clone(), timeout) {
            // A leader moved (broker restart, new topic): librdkafka refreshes its metadata on
            // this error, so one more try usually lands on the new leader.
            Err(err) if is_leader_change(&err) => {
                std::thread::sleep(Duration::from_millis(200));
                self.consumer.offsets_for_times(request, timeout)
            }
            other => other,
        }
    }

    /// Timestamps (ms since the epoch) of the records at the given offsets: the oldest
    /// unconsumed message of each partition. Best effort within the timeout: partitions whose
    /// record did not arrive are left out, and the caller reports no age for them.
    pub fn record_timestamps(
        &self,
        wanted: &[(TopicPartition, Offset)],
    ) -> HashMap<TopicPartition, i64> {
        let mut found = HashMap::new();
        if wanted.is_empty() {
            return found;
        }
        let _guard = self.fetch_lock.lock().expect("fetch lock");
        let mut assignment = TopicPartitionList::with_capacity(wanted.len());
        for ((topic, partition), offset) in wanted {
            if assignment
                .add_partition_offset(topic, *partition, *offset)
                .is_err()
            {
                return found;
            }
        }
        if let Err(err) = self.consumer.assign(&assignment) {
            tracing::warn!(cluster = %self.target, error = %err, "cannot assign partitions to read record timestamps");
            return found;
        }
        // librdkafka keeps a partition's pause across unassign and assign: undo the last round's.
        let _ = self.consumer.resume(&assignment);
        let deadline = Instant::now() + self.timeout;
        while found.len() < wanted.len() && Instant::now() < deadline {
            match self
                .consumer
                .poll(deadline.saturating_duration_since(Instant::now()))
            {
                Some(Ok(message)) => {
                    let key = (message.topic().to_owned(), message.partition());
                    if let Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) =
                        message.timestamp()
                    {
                        found.entry(key.clone()).or_insert(ms);
                    }
                    // One record is all we need from this partition: stop fetching it.
                    let mut done = TopicPartitionList::new();
                    done.add_partition(&key.0, key.1);
                    let _ = self.consumer.pause(&done);
                }
                Some(Err(err)) => {
                    tracing::debug!(cluster = %self.target, error = %err, "record fetch for lag seconds");
                }
                None => {}
            }
        }
        let _ = self.consumer.unassign();
        tracing::debug!(cluster = %self.target, wanted = wanted.len(), found = found.len(), "read record timestamps for lag seconds");
        found
    }

    fn not_found(&self, what: String) -> ScalerError {
        ScalerError::NotFound {
            broker: KIND,
            target: self.target.clone(),
            what,
        }
    }

    fn error_from_kafka(&self, err: &KafkaError, what: &str) -> ScalerError {
        match err.rdkafka_error_code() {
            Some(code) => self.error_from_code(code, &err.to_string(), what),
            None => ScalerError::Broker {
                broker: KIND,
                target: self.target.clone(),
                cause: format!("{what}: {err}"),
            },
        }
    }

    /// Maps a Kafka error code to the scaler error a user can act on.
    fn error_from_code(&self, code: RDKafkaErrorCode, message: &str, what: &str) -> ScalerError {
        use RDKafkaErrorCode as C;
        let target = self.target.clone();
        let cause = if message.is_empty() {
            format!("{what}: {code}")
        } else {
            format!("{what}: {message}")
        };
        match code {
            C::OperationTimedOut | C::RequestTimedOut | C::TimedOutQueue => ScalerError::Timeout {
                broker: KIND,
                target,
                after: self.timeout,
            },
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::CoordinatorNotAvailable => ScalerError::Unreachable {
                broker: KIND,
                target,
                cause,
            },
            C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::GroupIdNotFound => ScalerError::NotFound {
                broker: KIND,
                target,
                what: what.to_owned(),
            },
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication => ScalerError::Unauthorized {
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
}

/// The error can come from one topic or partition (deleted, unknown, leader moved, log dir
/// offline, not authorized) rather than from the cluster: a batched call failing on it is
/// narrowed down to the failing topics instead of failing every trigger of the round.
fn is_topic_scoped(err: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        err.rdkafka_error_code(),
        Some(
            C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::UnknownTopicId
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::ReplicaNotAvailable
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::KafkaStorageError
                | C::TopicAuthorizationFailed
        )
    )
}

/// Asks `call` for all of `topics` (each one topic's partitions) at once; when it fails on an
/// error `narrow` accepts, asks each half of the topics on its own (the halves in parallel),
/// down to single topics. Returns each call's answer or error with the partitions it asked for.
fn by_halves<T: Send, E: Send + Sync>(
    topics: &[Vec<TopicPartition>],
    call: &(impl Fn(&[TopicPartition]) -> Result<T, E> + Sync),
    narrow: &(impl Fn(&E) -> bool + Sync),
) -> Vec<(Vec<TopicPartition>, Result<T, E>)> {
    let partitions = topics.concat();
    if partitions.is_empty() {
        return Vec::new();
    }
    match call(&partitions) {
        Err(err) if topics.len() > 1 && narrow(&err) => {
            let (left, right) = topics.split_at(topics.len() / 2);
            std::thread::scope(|scope| {
                let left = scope.spawn(|| by_halves(left, call, narrow));
                let mut answers = by_halves(right, call, narrow);
                answers.extend(left.join().expect("end offsets thread"));
                answers
            })
        }
        answer => vec![(partitions, answer)],
    }
}

/// The error says a partition's leader is unknown or moved: worth one retry.
fn is_leader_change(err: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        err.rdkafka_error_code(),
        Some(
            C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::UnknownLeaderEpoch
                | C::FencedLeaderEpoch
        )
    )
}

/// Partitions per librdkafka offsets call in a big round. librdkafka matches answers to
/// requests with list searches that grow with the square of the list (10,000 partitions in one
/// `offsets_for_times` took ~0.9 s here, almost all of it on the client), so rounds above
/// [`SPLIT_ABOVE`] partitions are split into calls of this size, run in parallel.
const PARTITIONS_PER_CALL: usize = 500;

/// Up to this many partitions a round is one call (one request per leader): the list matching
/// costs a few milliseconds there, and requests stay flat.
const SPLIT_ABOVE: usize = 2000;

/// Runs `call` on all of `partitions`, or for a big round on chunks of them in parallel (at most
/// 8 at a time), and collects the answers in order; the first error wins.
fn in_chunks<T: Send, E: Send>(
    partitions: &[TopicPartition],
    call: impl Fn(&[TopicPartition]) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    if partitions.len() <= SPLIT_ABOVE {
        return Ok(vec![call(partitions)?]);
    }
    let chunks: Vec<&[TopicPartition]> = partitions.chunks(PARTITIONS_PER_CALL).collect();
    let mut answers = Vec::with_capacity(chunks.len());
    for batch in chunks.chunks(8) {
        let results: Vec<Result<T, E>> = std::thread::scope(|scope| {
            let call = &call;
            let handles: Vec<_> = batch
                .iter()
                .map(|chunk| scope.spawn(move || call(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("offsets call thread"))
                .collect()
        });
        for result in results {
            answers.push(result?);
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| ("t".to_owned(), p)).collect()
    }

    #[test]
    fn chunks_keep_order_and_cover_every_partition() {
        let per_call = PARTITIONS_PER_CALL as i32;
        let total = per_call * 17 + per_call / 2; // above SPLIT_ABOVE, more than 8 chunks
        assert!(total as usize > SPLIT_ABOVE);
        let sizes = in_chunks(&partitions(total), |chunk| {
            Ok::<_, ScalerError>((chunk[0].1, chunk.len()))
        })
        .unwrap();
        let starts: Vec<i32> = sizes.iter().map(|(start, _)| *start).collect();
        assert_eq!(starts, (0..18).map(|i| i * per_call).collect::<Vec<_>>());
        assert_eq!(sizes.iter().map(|(_, n)| n).sum::<usize>(), total as usize);
        let small = SPLIT_ABOVE as i32;
        assert_eq!(
            in_chunks(&partitions(small), |chunk| Ok::<_, ScalerError>(
                chunk.len()
            ))
            .unwrap(),
            vec![SPLIT_ABOVE]
        );
    }

    #[test]
    fn a_partition_error_fails_that_partition_not_the_group() {
        let denied = ScalerError::Unauthorized {
            broker: KIND,
            target: "k".into(),
            cause: "topic b".into(),
        };
        let tp = |topic: &str, partition| (topic.to_owned(), partition);
        let offsets = GroupOffsets::from_answers([
            (tp("a", 0), Ok(Offset::Offset(7))),
            (tp("a", 1), Ok(Offset::Invalid)),
            (tp("a", 2), Ok(Offset::Offset(-1))),
            (tp("b", 0), Err(denied.clone())),
            (tp("c", 0), Ok(Offset::Offset(0))),
        ]);
        assert_eq!(
            offsets.committed,
            HashMap::from([(tp("a", 0), 7), (tp("c", 0), 0)])
        );
        assert_eq!(offsets.failed, HashMap::from([(tp("b", 0), denied)]));
        assert_eq!(offsets.topics(), HashSet::from(["a", "b", "c"]));
    }

    #[test]
    fn halving_isolates_the_failing_topics() {
        // (topics in the round, topics that fail the whole call, calls at most)
        let cases: [(usize, &[usize], usize); 6] = [
            (8, &[], 1),
            (8, &[2], 7),
            (8, &[0, 7], 11),
            (1, &[0], 1),
            (2, &[0, 1], 3),
            (100, &[42], 15),
        ];
        for (n, bad, most_calls) in cases {
            let topics: Vec<Vec<TopicPartition>> = (0..n)
                .map(|t| vec![(format!("t{t}"), 0), (format!("t{t}"), 1)])
                .collect();
            let bad_names: HashSet<String> = bad.iter().map(|t| format!("t{t}")).collect();
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let call = |partitions: &[TopicPartition]| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match partitions.iter().find(|(t, _)| bad_names.contains(t)) {
                    Some((t, _)) => Err(t.clone()),
                    None => Ok(partitions.len()),
                }
            };
            let answers = by_halves(&topics, &call, &|_: &String| true);
            let mut answered = 0;
            let mut failed = BTreeSet::new();
            for (asked, answer) in answers {
                match answer {
                    Ok(count) => {
                        assert_eq!(count, asked.len());
                        answered += count;
                    }
                    Err(topic) => {
                        assert!(asked.iter().all(|(t, _)| *t == topic), "{asked:?}");
                        failed.insert(topic);
                    }
                }
            }
            assert_eq!(answered, 2 * (n - bad.len()), "n {n} bad {bad:?}");
            assert_eq!(failed, bad_names.into_iter().collect(), "n {n}");
            let calls = calls.into_inner();
            assert!(calls <= most_calls, "n {n} bad {bad:?}: {calls} calls");
        }
    }

    #[test]
    fn an_error_of_the_cluster_is_not_narrowed_down() {
        let topics: Vec<Vec<TopicPartition>> = (0..4).map(|t| vec![(format!("t{t}"), 0)]).collect();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let call = |_: &[TopicPartition]| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err::<(), _>("all brokers down")
        };
        let answers = by_halves(&topics, &call, &|_: &&str| false);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0.len(), 4, "every partition fails with it");
        assert_eq!(calls.into_inner(), 1);
    }

    #[test]
    fn topic_scoped_errors_are_told_from_cluster_errors() {
        use RDKafkaErrorCode as C;
        let cases = [
            (C::UnknownTopicOrPartition, true),
            (C::NotLeaderForPartition, true),
            (C::TopicAuthorizationFailed, true),
            (C::UnknownPartition, true),
            (C::AllBrokersDown, false),
            (C::OperationTimedOut, false),
            (C::BrokerTransportFailure, false),
            (C::ClusterAuthorizationFailed, false),
        ];
        for (code, scoped) in cases {
            assert_eq!(
                is_topic_scoped(&KafkaError::OffsetFetch(code)),
                scoped,
                "{code:?}"
            );
        }
    }

    #[test]
    fn one_failed_chunk_fails_the_call() {
        let per_call = PARTITIONS_PER_CALL as i32;
        let result = in_chunks(&partitions(SPLIT_ABOVE as i32 + 1), |chunk| {
            if chunk[0].1 == per_call {
                Err(ScalerError::Timeout {
                    broker: KIND,
                    target: "k".into(),
                    after: Duration::from_secs(1),
                })
            } else {
                Ok(())
            }
        });
        assert!(matches!(result, Err(ScalerError::Timeout { .. })));
    }
}
