//! Kafka consumer-group lag, with KEDA's `kafka` trigger parameters and semantics, answered for
//! every trigger on a cluster by one shared client in one batched round per tick: requests grow
//! with brokers and coordinators, never with groups (see `client.rs` and `crate::kafka_client`).
//!
//! Beyond KEDA:
//! - **lag in seconds**: the age of the oldest unconsumed message of each lagging partition (the
//!   timestamp of the record at the committed offset), served as the trigger's second metric
//!   `lag-seconds` (the maximum over its partitions). Timestamps are cached per offset, so a
//!   partition is read again only when its consumer moved. Records are read by one librdkafka
//!   consumer per cluster, created when a partition first lags (`records.rs`).
//! - **backlog per partition**: each reading carries every counted partition's lag (records
//!   behind, persistent lag included, before KEDA's caps on the total) and lag seconds, for
//!   spillway's `/metrics` (`spillway_kafka_consumer_lag{,_seconds}`); at most
//!   [`MAX_BACKLOG_SAMPLES`](super::MAX_BACKLOG_SAMPLES) partitions per trigger, the most
//!   lagging ones. They come from the same answers, so the requests per tick do not change.
//! - **errors are errors**: an unreachable cluster, a missing topic, a refused authorization, a
//!   partition left out of an answer: each is a [`ScalerError`], never a lag of 0 (KEDA reads
//!   a missing partition as 0).
//! - **one topic's failure is its own**: ListOffsets answers per partition, so a deleted topic
//!   or a moved leader fails only its partitions; the round re-reads their metadata at once
//!   (not after the cache's 60 s) and asks moved partitions once more, so only the triggers
//!   counting a failing topic fail and every other trigger gets its value from the same round.
//!
//! Deliberate differences from KEDA, each because KEDA's answer misleads the HPA:
//! - **`earliest` counts the records still in the log**: a partition without a valid commit
//!   counts end - log start (the log start read with ListOffsets EARLIEST in the same round),
//!   not the end offset. After retention or DeleteRecords moved the log start, KEDA counts
//!   records that no consumer can read any more (millions on a topic with retention) and sends
//!   the target to maxReplicas.
//! - **a commit outside the log is an invalid offset**: beyond the end (topic deleted and
//!   recreated, or truncated) or below the log start (retention passed the consumer), the
//!   committed offset counts as no commit, by `offsetResetPolicy` (and
//!   `scaleToZeroOnInvalidOffset`), because that is where a consumer restarts. KEDA reads a
//!   commit beyond the end as lag 0, so a recreated topic shows no backlog until its end passes
//!   the old commit.
//!
//! Where KEDA is silent or lax, spillway chooses:
//! - a consumer group the coordinator does not know is a group without commits, as in KEDA:
//!   each partition counts by `offsetResetPolicy` (1 under `latest`, the records in the log
//!   under `earliest`), so the first consumer of a new group starts from zero replicas; an
//!   error stays an error only when the cluster or the topic cannot be read;
//! - with `topic` empty, the topics counted are those of the cluster the group has committed
//!   to, so a deleted topic drops out (it holds no work); a named `topic` that is missing is
//!   `NotFound`, and a group with no commits at all has nothing to count: `NotFound`, not 0;
//! - `partitionLimitation` without `topic`, and TLS files without `tls: enable`, are rejected
//!   instead of ignored; an encrypted client key (`keyPassword`) is refused with a clear error
//!   (the wire client's rustls reads unencrypted keys only).

mod client;
mod lag;
mod records;
mod trigger;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Offset;
use rdkafka::config::ClientConfig;

pub use client::{
    GroupOffsets, KafkaCluster, LowestCommits, PartitionMap, RequestCounts, TopicPartition,
};
pub use lag::{
    LagRules, OffsetResetPolicy, PartitionOffsets, TotalLag, parse_partition_limitation,
    partition_lag, total_lag,
};
use records::RecordReader;
pub use trigger::{KafkaTrigger, SaslMechanism, TlsMode};

use super::{ActivationInput, BacklogSample, Reading, Scaler, ScalerError, TriggerParams};
use crate::secret::SecretSource;

const KIND: &str = "kafka";

/// Lag of one partition in one trigger's view.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub end_offset: i64,
    /// First offset still in the log (retention and DeleteRecords move it).
    pub log_start_offset: i64,
    /// `None` when the group has not committed this partition.
    pub committed_offset: Option<i64>,
    /// Lag counted for the scaling metric (KEDA's rules, persistent lag excluded if asked).
    pub lag: i64,
    /// Lag with persistent lag counted: how far behind the group is.
    pub lag_with_persistent: i64,
    /// Age of the oldest unconsumed message, when the partition lags and its record was read.
    pub lag_seconds: Option<f64>,
}

/// Everything one trigger's poll found.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaLagReport {
    pub total: TotalLag,
    /// Maximum age over lagging partitions; `None` when a lagging partition's age is unknown.
    pub lag_seconds: Option<f64>,
    /// Why lag seconds could not be read at all this tick (the record reader's destinations
    /// are refused, or it cannot be created); the lag itself is still read.
    pub lag_seconds_error: Option<ScalerError>,
    pub partitions: Vec<PartitionLag>,
    pub active: bool,
}

/// How long a group's commits are kept for `excludePersistentLag` after its last read.
const PREVIOUS_COMMITS_KEPT: Duration = Duration::from_secs(600);

/// State kept between ticks.
#[derive(Default)]
struct LagState {
    /// Committed offsets seen at the group's previous tick, and when, per group. A group not
    /// read for [`PREVIOUS_COMMITS_KEPT`] is forgotten: groups come and go with their
    /// ScaledObjects, and this map must not grow with every group ever polled.
    previous_committed: HashMap<String, (Instant, PartitionMap<i64>)>,
    /// Record timestamps (ms) by partition and offset.
    timestamps: HashMap<(TopicPartition, i64), i64, foldhash::fast::RandomState>,
}

/// The librdkafka record reader of a cluster, created the first time a partition lags (a
/// cluster whose consumers keep up never starts its threads).
struct LazyRecordReader {
    config: ClientConfig,
    target: String,
    timeout: Duration,
    reader: Mutex<Option<Arc<RecordReader>>>,
}

impl LazyRecordReader {
    fn get(&self) -> Result<Arc<RecordReader>, ScalerError> {
        let mut reader = self.reader.lock().expect("record reader lock");
        if let Some(reader) = reader.as_ref() {
            return Ok(Arc::clone(reader));
        }
        let created = Arc::new(RecordReader::new(
            self.config.clone(),
            self.target.clone(),
            self.timeout,
        )?);
        *reader = Some(Arc::clone(&created));
        Ok(created)
    }
}

/// The scaler for one Kafka cluster.
pub struct KafkaScaler {
    cluster: Arc<KafkaCluster>,
    records: Arc<LazyRecordReader>,
    state: Arc<tokio::sync::Mutex<LagState>>,
    timeout: Duration,
}

impl KafkaScaler {
    /// Builds the scaler with extra librdkafka settings for the record reader behind lag
    /// seconds (e.g. `statistics.interval.ms`, for its request counts).
    pub fn connect_with(
        trigger: &KafkaTrigger,
        extra: &[(&str, &str)],
    ) -> Result<Self, ScalerError> {
        trigger.validate()?;
        let options = trigger.connect_options()?;
        let mut config = trigger.client_config()?;
        for (key, value) in extra {
            config.set(*key, *value);
        }
        let timeout = Duration::from_millis(trigger.timeout);
        let target = trigger.servers().join(",");
        let servers = trigger.servers().into_iter().map(str::to_owned).collect();
        let client = crate::kafka_client::ClusterClient::new(servers, options);
        Ok(Self {
            cluster: Arc::new(KafkaCluster::new(client, target.clone())),
            records: Arc::new(LazyRecordReader {
                config,
                target,
                timeout,
                reader: Mutex::default(),
            }),
            state: Arc::default(),
            timeout,
        })
    }

    /// Kafka requests sent so far, by API: the wire client's, plus the record reader's from
    /// librdkafka's statistics (needs `statistics.interval.ms`) as `<API> (lag reader)`.
    pub fn request_counts(&self) -> RequestCounts {
        let mut counts = self.cluster.request_counts();
        let reader = self
            .records
            .reader
            .lock()
            .expect("record reader lock")
            .clone();
        if let Some(reader) = reader {
            for (api, n) in reader.request_counts() {
                counts.insert(format!("{api} (lag reader)"), n);
            }
        }
        counts
    }

    /// Open broker connections of the wire client.
    pub fn open_connections(&self) -> usize {
        self.cluster.open_connections()
    }

    /// One batched round for `triggers`, with per-partition detail.
    pub async fn poll_detailed(
        &self,
        triggers: &[KafkaTrigger],
    ) -> Vec<Result<KafkaLagReport, ScalerError>> {
        // Each broker request is bounded by the timeout; a round makes at most nine in sequence
        // (metadata, coordinators, committed offsets and one retry after a coordinator moved,
        // group lookup, end offsets, metadata again and one retry, records).
        let bound = self.timeout * 9 + Duration::from_secs(1);
        let round = poll_round(&self.cluster, &self.records, &self.state, triggers);
        match tokio::time::timeout(bound, round).await {
            Ok(reports) => reports,
            Err(_) => triggers
                .iter()
                .map(|t| {
                    Err(ScalerError::Timeout {
                        broker: KIND,
                        target: t.bootstrap_servers.clone(),
                        after: bound,
                    })
                })
                .collect(),
        }
    }
}

impl Scaler for KafkaScaler {
    type Trigger = KafkaTrigger;
    const KIND: &'static str = KIND;

    const CONFIG_KEY: &'static str = "kafka";

    fn trigger_of(trigger: &super::Trigger) -> Option<&Self::Trigger> {
        match trigger {
            super::Trigger::Kafka(t) => Some(t),
            _ => None,
        }
    }

    fn endpoint(trigger: &KafkaTrigger) -> String {
        let mut servers = trigger.servers();
        servers.sort_unstable();
        servers.join(",")
    }

    fn connection_key(trigger: &KafkaTrigger) -> String {
        let mut servers = trigger.servers();
        servers.sort_unstable();
        // Secrets count by identity and a keyed hash of their value: a rotated one gets a new
        // client, and a Secret of the same name elsewhere never shares this one's session.
        format!(
            "{}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}",
            servers.join(","),
            trigger.sasl,
            trigger.username.as_deref().unwrap_or(""),
            trigger.password.as_ref().map(SecretSource::fingerprint),
            trigger.tls,
            trigger.ca.as_ref().map(SecretSource::fingerprint),
            trigger.cert.as_ref().map(SecretSource::fingerprint),
            trigger.key.as_ref().map(SecretSource::fingerprint),
            trigger.key_password.as_ref().map(SecretSource::fingerprint),
            trigger.unsafe_ssl,
            trigger.timeout,
        )
    }

    fn connect(trigger: &KafkaTrigger) -> Result<Self, ScalerError> {
        Self::connect_with(trigger, &[])
    }

    async fn poll(&self, triggers: &[KafkaTrigger]) -> Vec<Result<Reading, ScalerError>> {
        self.poll_detailed(triggers)
            .await
            .into_iter()
            .zip(triggers)
            .map(|(report, trigger)| report.map(|r| reading(trigger, &r)))
            .collect()
    }
}

/// A trigger's reading from its report: the capped total, lag seconds, and every partition.
fn reading(trigger: &KafkaTrigger, report: &KafkaLagReport) -> Reading {
    let backlog = report
        .partitions
        .iter()
        .map(|p| BacklogSample::KafkaPartition {
            consumer_group: trigger.consumer_group.clone(),
            topic: p.topic.clone(),
            partition: p.partition,
            lag: p.lag_with_persistent,
            lag_seconds: p.lag_seconds,
        })
        .collect();
    let reading = Reading::new(report.total.metric as f64, report.active).with_backlog(backlog);
    match report.lag_seconds {
        Some(seconds) => reading.with_extra("lag-seconds", seconds),
        None => reading,
    }
}

/// What a trigger's activation weighs from its total: the served lag, and as the backlog the
/// lag with persistent lag and before the caps.
fn activation_input(total: &TotalLag) -> ActivationInput {
    ActivationInput {
        value: total.metric as f64,
        backlog: Some(total.with_persistent as f64),
    }
}

/// One tick for all triggers of a cluster: committed offsets per group, metadata, end offsets,
/// lag, then record timestamps for lagging partitions.
async fn poll_round(
    cluster: &KafkaCluster,
    records: &Arc<LazyRecordReader>,
    state: &tokio::sync::Mutex<LagState>,
    triggers: &[KafkaTrigger],
) -> Vec<Result<KafkaLagReport, ScalerError>> {
    let mut results: Vec<Option<Result<KafkaLagReport, ScalerError>>> = triggers
        .iter()
        .map(|t| t.validate().err().map(Err))
        .collect();
    let open = |results: &[Option<_>]| -> Vec<usize> {
        (0..triggers.len())
            .filter(|i| results[*i].is_none())
            .collect()
    };

    // Time per phase, for the debug log: where a slow tick spends its time.
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    let mut phase_started = std::time::Instant::now();

    // 1. Candidate topics: the named one, or (no `topic`) every topic of the cluster, narrowed
    //    below to those the group has committed to.
    let mut candidates: HashMap<usize, Vec<String>> = HashMap::new();
    for i in open(&results) {
        match &triggers[i].topic {
            Some(topic) => {
                candidates.insert(i, vec![topic.clone()]);
            }
            None => match cluster.all_topics().await {
                Ok(topics) => {
                    candidates.insert(i, topics);
                }
                Err(err) => results[i] = Some(Err(err)),
            },
        }
    }
    let all_topics: BTreeSet<&str> = candidates.values().flatten().map(String::as_str).collect();
    let all_topics: Vec<&str> = all_topics.into_iter().collect();
    let partitions = cluster.partitions(&all_topics).await;

    phases.push(("metadata", phase_started.elapsed()));
    phase_started = std::time::Instant::now();
    // 2. Committed offsets: one OffsetFetch per group for the partitions its triggers need.
    // Vectors sorted and deduplicated, not ordered sets: a tick over 10,000 partitions spent
    // most of its own CPU comparing topic names in B-trees.
    let mut asked: BTreeMap<&str, Vec<TopicPartition>> = BTreeMap::new();
    for (i, topics) in &candidates {
        let wanted = asked
            .entry(triggers[*i].consumer_group.as_str())
            .or_default();
        for topic in topics {
            if let Ok(ids) = &partitions[topic.as_str()] {
                wanted.extend(ids.iter().map(|p| (topic.clone(), *p)));
            }
        }
    }
    let requests: Vec<(&str, Vec<TopicPartition>)> = asked
        .into_iter()
        .map(|(g, mut tps)| {
            sort_dedup(&mut tps);
            (g, tps)
        })
        .collect();
    // End offsets are asked at the same time as the commits, on the broker's other
    // connection, so the broker serves both reads in parallel: of the partitions step 3 will
    // count, as far as they are known now (a named topic's; without `topic`, those the group
    // committed to at its last read). An end read a moment before a commit can only count
    // less lag than one read after it, never a commit beyond the log (see below); a
    // partition the guess missed is asked in step 4.
    // A tokio lock: it is held across the reads below; rounds of one scaler run one at a time.
    let mut state = state.lock().await;
    let mut guessed: Vec<TopicPartition> = Vec::new();
    for i in open(&results) {
        let filter = triggers[i].partition_filter();
        let counted = |tp: &TopicPartition| {
            filter.as_ref().is_none_or(|f| f.contains(&tp.1))
                && matches!(partitions.get(tp.0.as_str()), Some(Ok(ids)) if ids.binary_search(&tp.1).is_ok())
        };
        match &triggers[i].topic {
            Some(topic) => {
                if let Some(Ok(ids)) = partitions.get(topic.as_str()) {
                    guessed.extend(
                        ids.iter()
                            .map(|p| (topic.clone(), *p))
                            .filter(|tp| counted(tp)),
                    );
                }
            }
            None => {
                if let Some((_, previous)) =
                    state.previous_committed.get(&triggers[i].consumer_group)
                {
                    guessed.extend(previous.keys().filter(|tp| counted(tp)).cloned());
                }
            }
        }
    }
    sort_dedup(&mut guessed);
    let ((committed, fetch_time), (mut early_ends, ends_time)) = futures::join!(
        timed(cluster.committed_offsets(&requests)),
        timed(cluster.end_offsets(&guessed))
    );
    phases.push(("offset_fetch", fetch_time));
    phases.push(("early_ends", ends_time));
    drop_ends_passed_by_commits(&mut early_ends, &committed);
    for i in open(&results) {
        let group = triggers[i].consumer_group.as_str();
        match committed.get(group) {
            Some(Err(err)) => results[i] = Some(Err(err.clone())),
            // A group without commits, known or not, is counted by the reset policy (KEDA):
            // a new group's first consumer must start. Without `topic`, the topics counted are
            // those the group committed to, so there is nothing to count: an error, not 0.
            Some(Ok(offsets)) if triggers[i].topic.is_none() && offsets.topics().is_empty() => {
                results[i] = Some(Err(not_found(
                    &triggers[i],
                    format!(
                        "committed offsets of consumer group {group} (no `topic` is named, so the topics counted are those the group committed to)"
                    ),
                )))
            }
            Some(Ok(_)) => {}
            None => {
                results[i] = Some(Err(not_found(
                    &triggers[i],
                    format!("consumer group {group}"),
                )))
            }
        }
    }

    phases.push(("committed", phase_started.elapsed()));
    phase_started = std::time::Instant::now();
    // Topics of each trigger: the named one, or every topic the group committed to (KEDA).
    let mut trigger_topics: HashMap<usize, Vec<String>> = HashMap::new();
    for i in open(&results) {
        let topics = match &triggers[i].topic {
            Some(topic) => vec![topic.clone()],
            None => {
                let offsets = committed[triggers[i].consumer_group.as_str()]
                    .as_ref()
                    .expect("checked");
                let mut topics: Vec<String> =
                    offsets.topics().into_iter().map(str::to_owned).collect();
                topics.sort();
                topics
            }
        };
        trigger_topics.insert(i, topics);
    }

    // 3. The partitions each trigger counts.
    let mut trigger_partitions: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
    for (i, topics) in &trigger_topics {
        let filter = triggers[*i].partition_filter();
        let mut wanted = Vec::new();
        for topic in topics {
            match &partitions[topic.as_str()] {
                Ok(ids) => wanted.extend(
                    ids.iter()
                        .filter(|p| filter.as_ref().is_none_or(|f| f.contains(p)))
                        .map(|p| (topic.clone(), *p)),
                ),
                // A deleted topic the group still has commits for holds no work.
                Err(ScalerError::NotFound { .. }) if triggers[*i].topic.is_none() => {
                    tracing::warn!(group = %triggers[*i].consumer_group, topic = %topic, "group has offsets for a topic the cluster does not have; skipping it");
                }
                Err(err) => {
                    results[*i] = Some(Err(err.clone()));
                    break;
                }
            }
        }
        if results[*i].is_none() && triggers[*i].topic.is_some() && wanted.is_empty() {
            let topic = triggers[*i].topic.as_deref().unwrap_or_default();
            results[*i] = Some(Err(ScalerError::invalid(
                KIND,
                "partitionLimitation",
                format!("expected at least one active partition within the topic '{topic}'"),
            )));
        }
        if results[*i].is_none() {
            trigger_partitions.insert(*i, wanted);
        }
    }

    phases.push(("partitions", phase_started.elapsed()));
    phase_started = std::time::Instant::now();
    // 4. End offsets of every partition any trigger counts, in one call.
    let mut needed: Vec<&TopicPartition> = trigger_partitions.values().flatten().collect();
    sort_dedup(&mut needed);
    let needed: Vec<TopicPartition> = needed.into_iter().cloned().collect();
    // The lowest commit per partition over the groups counting it (None: a group has none),
    // so the cluster can reuse a log start that still bounds every commit.
    let mut lowest_commits: LowestCommits = LowestCommits::default();
    for (i, tps) in &trigger_partitions {
        let group = triggers[*i].consumer_group.as_str();
        let Some(Ok(offsets)) = committed.get(group) else {
            continue;
        };
        for tp in tps {
            let commit = offsets.committed.get(tp).copied();
            lowest_commits
                .entry(tp)
                .and_modify(|lowest| *lowest = lowest.zip(commit).map(|(a, b)| a.min(b)))
                .or_insert(commit);
        }
    }
    let log_offsets = match cluster
        .log_offsets(&needed, &lowest_commits, early_ends)
        .await
    {
        Ok(offsets) => offsets,
        Err(err) => {
            for i in trigger_partitions.keys() {
                results[*i] = Some(Err(err.clone()));
            }
            PartitionMap::default()
        }
    };
    let failed_topics: BTreeSet<&str> = log_offsets
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|((t, _), _)| t.as_str())
        .collect();
    if !failed_topics.is_empty() {
        cluster.invalidate_metadata(&failed_topics.into_iter().collect::<Vec<_>>());
    }

    phases.push(("end_offsets", phase_started.elapsed()));
    phase_started = std::time::Instant::now();
    // 5. Lag per trigger.
    let mut reports: HashMap<usize, KafkaLagReport> = HashMap::new();
    for (i, tps) in &trigger_partitions {
        if results[*i].is_some() {
            continue;
        }
        let trigger = &triggers[*i];
        let group = trigger.consumer_group.as_str();
        let offsets = committed[group].as_ref().expect("checked");
        let rules = trigger.rules();
        let previous = state
            .previous_committed
            .get(group)
            .map(|(_, offsets)| offsets);
        let mut partition_lags = Vec::with_capacity(tps.len());
        let mut failure = None;
        for tp in tps {
            let log = match &log_offsets[tp] {
                Ok(log) => *log,
                Err(err) => {
                    failure = Some(err.clone());
                    break;
                }
            };
            if let Some(err) = offsets.failed.get(tp) {
                failure = Some(err.clone());
                break;
            }
            let committed_offset = offsets.committed.get(tp).copied();
            let persistent = committed_offset.is_some()
                && previous.and_then(|previous| previous.get(tp)) == committed_offset.as_ref();
            let (lag, with_persistent) = partition_lag(
                PartitionOffsets {
                    log_start: log.start,
                    end: log.end,
                    committed: committed_offset,
                    persistent,
                },
                &rules,
                trigger.exclude_persistent_lag,
            );
            partition_lags.push(PartitionLag {
                topic: tp.0.clone(),
                partition: tp.1,
                end_offset: log.end,
                log_start_offset: log.start,
                committed_offset,
                lag,
                lag_with_persistent: with_persistent,
                lag_seconds: None,
            });
        }
        if let Some(err) = failure {
            results[*i] = Some(Err(err));
            continue;
        }
        let total = total_lag(
            partition_lags
                .iter()
                .map(|p| (p.lag, p.lag_with_persistent)),
            &rules,
        );
        let active = trigger.is_active(activation_input(&total));
        reports.insert(
            *i,
            KafkaLagReport {
                total,
                lag_seconds: None,
                lag_seconds_error: None,
                partitions: partition_lags,
                active,
            },
        );
    }
    // Remember this tick's commits for excludePersistentLag, after every trigger compared.
    let now = Instant::now();
    for (group, offsets) in committed
        .iter()
        .filter_map(|(g, r)| r.as_ref().ok().map(|o| (g, o)))
    {
        let previous = state
            .previous_committed
            .entry(group.clone())
            .or_insert_with(|| (now, PartitionMap::default()));
        previous.0 = now;
        // In place: a warm tick of 10,000 partitions then allocates nothing here.
        for (tp, offset) in &offsets.committed {
            match previous.1.get_mut(tp) {
                Some(kept) => *kept = *offset,
                None => {
                    previous.1.insert(tp.clone(), *offset);
                }
            }
        }
    }
    state
        .previous_committed
        .retain(|_, (read, _)| now.duration_since(*read) < PREVIOUS_COMMITS_KEPT);

    phases.push(("lag", phase_started.elapsed()));
    phase_started = std::time::Instant::now();
    // 6. Lag seconds: the record at each lagging partition's next offset to consume.
    let mut wanted: HashSet<(TopicPartition, i64), foldhash::fast::RandomState> =
        HashSet::default();
    for (i, report) in &reports {
        for p in &report.partitions {
            if let Some(offset) = oldest_unconsumed(p, &triggers[*i]) {
                wanted.insert(((p.topic.clone(), p.partition), offset));
            }
        }
    }
    let missing: Vec<(TopicPartition, Offset)> = wanted
        .iter()
        .filter(|key| !state.timestamps.contains_key(*key))
        .map(|(tp, offset)| {
            (
                tp.clone(),
                if *offset == OFFSET_BEGINNING_KEY {
                    Offset::Beginning
                } else {
                    Offset::Offset(*offset)
                },
            )
        })
        .collect();
    // librdkafka resolves and connects on its own, past the wire client's per-connection
    // check: every address of the cluster is checked before the reader is made or used.
    let mut reader_refused = None;
    let fetched = if missing.is_empty() {
        HashMap::new()
    } else {
        let reader = match cluster.check_destinations().await {
            Ok(()) => records.get(),
            Err(err) => Err(err),
        };
        match reader {
            Ok(reader) => {
                let asked = missing.clone();
                tokio::task::spawn_blocking(move || reader.record_timestamps(&asked))
                    .await
                    .unwrap_or_default()
            }
            Err(err) => {
                tracing::warn!(error = %err, "no lag seconds this tick: the record reader is refused or cannot be made");
                reader_refused = Some(err);
                HashMap::new()
            }
        }
    };
    for (tp, offset) in &missing {
        if let Some(ts) = fetched.get(tp) {
            let key = if *offset == Offset::Beginning {
                OFFSET_BEGINNING_KEY
            } else {
                offset.to_raw().unwrap_or_default()
            };
            state.timestamps.insert((tp.clone(), key), *ts);
        }
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for (i, report) in reports.iter_mut() {
        let mut complete = true;
        let mut oldest: f64 = 0.0;
        for p in &mut report.partitions {
            let Some(offset) = oldest_unconsumed(p, &triggers[*i]) else {
                p.lag_seconds = Some(0.0);
                continue;
            };
            match state
                .timestamps
                .get(&((p.topic.clone(), p.partition), offset))
            {
                Some(ts) => {
                    let age = ((now_ms - ts).max(0)) as f64 / 1000.0;
                    p.lag_seconds = Some(age);
                    oldest = oldest.max(age);
                }
                None if offset == OFFSET_BEGINNING_KEY => p.lag_seconds = Some(0.0),
                None => complete = false,
            }
        }
        report.lag_seconds = complete.then_some(oldest);
        if !complete {
            report.lag_seconds_error = reader_refused.clone();
        }
    }
    // Keep only the timestamps this tick used; the log start record can change, so it is not kept.
    state
        .timestamps
        .retain(|key, _| key.1 != OFFSET_BEGINNING_KEY && wanted.contains(key));

    phases.push(("lag_seconds", phase_started.elapsed()));
    tracing::debug!(triggers = triggers.len(), ?phases, "kafka poll round");
    for (i, report) in reports {
        results[i] = Some(Ok(report));
    }
    results
        .into_iter()
        .zip(triggers)
        .map(|(r, t)| r.unwrap_or_else(|| Err(not_found(t, "partitions".into()))))
        .collect()
}

/// `read`'s answer and how long it took (for the round's phases in the debug log).
async fn timed<T>(read: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = std::time::Instant::now();
    let answer = read.await;
    (answer, started.elapsed())
}

/// Sorts `items` and drops repeats. Partition lists come sorted by topic from metadata, which
/// the sort sees in one pass.
fn sort_dedup<T: Ord>(items: &mut Vec<T>) {
    items.sort_unstable();
    items.dedup();
}

/// Drops the end offsets a commit has passed. An end read before a commit that has since
/// passed it would make that commit look beyond the log, which counts as invalid (the whole
/// log under `earliest`): such ends are read again after the commits.
fn drop_ends_passed_by_commits(
    ends: &mut client::EndOffsets,
    committed: &HashMap<String, Result<client::GroupOffsets, ScalerError>>,
) {
    for offsets in committed.values().filter_map(|r| r.as_ref().ok()) {
        for (tp, commit) in &offsets.committed {
            if matches!(ends.get(tp), Some(Ok(end)) if commit > end) {
                ends.remove(tp);
            }
        }
    }
}

/// Timestamp cache key for "the first record of the partition" (earliest policy, no commit).
const OFFSET_BEGINNING_KEY: i64 = -2;

/// Where the oldest unconsumed record of a lagging partition is: at the commit when it lies in
/// the log; at the log start when the commit is missing or invalid and the group would reset
/// to earliest; nowhere under `latest` (a new consumer starts at the end, so nothing waits).
fn oldest_unconsumed(p: &PartitionLag, trigger: &KafkaTrigger) -> Option<i64> {
    if p.lag_with_persistent == 0 {
        return None;
    }
    match p
        .committed_offset
        .filter(|c| (p.log_start_offset..=p.end_offset).contains(c))
    {
        Some(committed) => Some(committed),
        None if trigger.offset_reset_policy == OffsetResetPolicy::Earliest
            && !trigger.scale_to_zero_on_invalid_offset =>
        {
            Some(OFFSET_BEGINNING_KEY)
        }
        None => None,
    }
}

fn not_found(trigger: &KafkaTrigger, what: String) -> ScalerError {
    ScalerError::NotFound {
        broker: KIND,
        target: trigger.bootstrap_servers.clone(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::Trigger;

    fn trigger() -> KafkaTrigger {
        KafkaTrigger::new("127.0.0.1:9092", "orders-consumer", Some("orders"))
    }

    #[test]
    fn an_end_a_commit_has_passed_is_read_again() {
        let tp = |p: i32| ("orders".to_owned(), p);
        let mut ends: client::EndOffsets =
            client::EndOffsets::from_iter([(tp(0), Ok(100)), (tp(1), Ok(100)), (tp(2), Ok(100))]);
        let group = |commits: &[(i32, i64)]| {
            Ok(client::GroupOffsets {
                committed: commits.iter().map(|(p, c)| (tp(*p), *c)).collect(),
                failed: PartitionMap::default(),
            })
        };
        let committed = HashMap::from([
            // Caught up with a busy topic: committed past the end read a moment before.
            ("a".to_owned(), group(&[(0, 103), (1, 100)])),
            ("b".to_owned(), group(&[(1, 40), (2, 99)])),
        ]);
        drop_ends_passed_by_commits(&mut ends, &committed);
        let mut kept: Vec<i32> = ends.keys().map(|tp| tp.1).collect();
        kept.sort();
        // Partition 0 is read again; a commit at or below the end keeps it.
        assert_eq!(kept, [1, 2]);
    }

    #[test]
    fn parses_keda_style_yaml_with_defaults() {
        let yaml = "bootstrapServers: a:9092,b:9092\nconsumerGroup: g\ntopic: orders.v1\noffsetResetPolicy: earliest\n";
        let t: KafkaTrigger = serde_norway::from_str(yaml).unwrap();
        assert_eq!(t.lag_threshold, 10);
        assert_eq!(t.activation_lag_threshold, 0);
        assert_eq!(t.offset_reset_policy, OffsetResetPolicy::Earliest);
        assert_eq!(t.metric_name(), "kafka-orders-v1");
        assert_eq!(t.target_value(), 10.0);
        t.validate().unwrap();
        let all: KafkaTrigger =
            serde_norway::from_str("bootstrapServers: a:9092\nconsumerGroup: Billing_1\n").unwrap();
        assert_eq!(all.metric_name(), "kafka-billing-1-topics");
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_rejected() {
        for yaml in [
            "bootstrapServers: a:1\nconsumerGroup: g\nlagTreshold: 5\n",
            "bootstrapServers: a:1\nconsumerGroup: g\noffsetResetPolicy: newest\n",
            "bootstrapServers: a:1\nconsumerGroup: g\nsasl: gssapi\n",
            "bootstrapServers: a:1\nconsumerGroup: g\nlagThreshold: -1\n",
        ] {
            assert!(
                serde_norway::from_str::<KafkaTrigger>(yaml).is_err(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn validation_names_the_field() {
        let secret = || Some(SecretSource::file("/pw"));
        let cases: Vec<(KafkaTrigger, &str)> = vec![
            (
                KafkaTrigger {
                    bootstrap_servers: " ".into(),
                    ..trigger()
                },
                "bootstrapServers",
            ),
            (
                KafkaTrigger {
                    bootstrap_servers: "host-without-port".into(),
                    ..trigger()
                },
                "bootstrapServers",
            ),
            (
                KafkaTrigger {
                    consumer_group: "".into(),
                    ..trigger()
                },
                "consumerGroup",
            ),
            (
                KafkaTrigger {
                    lag_threshold: 0,
                    ..trigger()
                },
                "lagThreshold",
            ),
            (
                KafkaTrigger {
                    allow_idle_consumers: true,
                    limit_to_partitions_with_lag: true,
                    ..trigger()
                },
                "limitToPartitionsWithLag",
            ),
            (
                KafkaTrigger {
                    topic: None,
                    limit_to_partitions_with_lag: true,
                    ..trigger()
                },
                "topic",
            ),
            (
                KafkaTrigger {
                    topic: None,
                    partition_limitation: Some("1".into()),
                    ..trigger()
                },
                "partitionLimitation",
            ),
            (
                KafkaTrigger {
                    partition_limitation: Some("3-1".into()),
                    ..trigger()
                },
                "partitionLimitation",
            ),
            (
                KafkaTrigger {
                    sasl: SaslMechanism::ScramSha512,
                    password: secret(),
                    ..trigger()
                },
                "username",
            ),
            (
                KafkaTrigger {
                    sasl: SaslMechanism::Plaintext,
                    username: Some("u".into()),
                    ..trigger()
                },
                "password",
            ),
            (
                KafkaTrigger {
                    ca: secret(),
                    ..trigger()
                },
                "ca",
            ),
            (
                KafkaTrigger {
                    tls: TlsMode::Enable,
                    cert: secret(),
                    ..trigger()
                },
                "key",
            ),
            (
                KafkaTrigger {
                    timeout: 10,
                    ..trigger()
                },
                "timeout",
            ),
        ];
        for (t, field) in cases {
            match t.validate() {
                Err(ScalerError::InvalidTrigger { field: got, .. }) => {
                    assert_eq!(got, field, "{t:?}")
                }
                other => panic!("{t:?}: expected invalid {field}, got {other:?}"),
            }
        }
        trigger().validate().unwrap();
    }

    #[test]
    fn client_config_maps_sasl_and_tls_and_reads_secret_files() {
        let dir = std::env::temp_dir().join(format!("spillway-kafka-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        std::fs::write(dir.join("ca"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let t = KafkaTrigger {
            sasl: SaslMechanism::ScramSha256,
            username: Some("svc".into()),
            password: Some(SecretSource::file(dir.join("pw"))),
            tls: TlsMode::Enable,
            ca: Some(SecretSource::file(dir.join("ca"))),
            ..trigger()
        };
        t.validate().unwrap();
        let config = t.client_config().unwrap();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(
            config.get("ssl.ca.pem"),
            Some("-----BEGIN CERTIFICATE-----")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = KafkaTrigger {
            password: Some(SecretSource::file("/nonexistent/pw")),
            ..t
        };
        assert!(
            matches!(missing.client_config(), Err(ScalerError::InvalidTrigger { field, .. }) if field == "password")
        );
    }

    #[test]
    fn reading_carries_every_partition_before_the_caps() {
        let partition = |partition, lag, lag_with_persistent, lag_seconds| PartitionLag {
            topic: "orders".into(),
            partition,
            end_offset: 100,
            log_start_offset: 0,
            committed_offset: Some(100 - lag_with_persistent),
            lag,
            lag_with_persistent,
            lag_seconds,
        };
        let report = KafkaLagReport {
            total: TotalLag {
                metric: 20,
                uncapped: 50,
                with_persistent: 80,
                partitions: 2,
                partitions_with_lag: 1,
            },
            lag_seconds: None,
            lag_seconds_error: None,
            // Partition 1 is stuck (persistent lag excluded from the metric), its age unknown.
            partitions: vec![partition(0, 50, 50, Some(12.5)), partition(1, 0, 30, None)],
            active: true,
        };
        let reading = reading(&trigger(), &report);
        assert_eq!(reading.value, 20.0, "the capped total");
        assert!(reading.extra.is_empty(), "lag seconds unknown");
        let sample = |partition, lag, lag_seconds| BacklogSample::KafkaPartition {
            consumer_group: "orders-consumer".into(),
            topic: "orders".into(),
            partition,
            lag,
            lag_seconds,
        };
        assert_eq!(
            reading.backlog.samples(),
            [sample(0, 50, Some(12.5)), sample(1, 30, None)]
        );
        assert_eq!(reading.backlog.left_out(), 0);
    }

    #[test]
    fn connection_key_shares_clusters_not_credentials() {
        let a = trigger();
        let b = KafkaTrigger {
            bootstrap_servers: " 127.0.0.1:9092 ".into(),
            consumer_group: "other".into(),
            topic: None,
            ..trigger()
        };
        assert_eq!(
            KafkaScaler::connection_key(&a),
            KafkaScaler::connection_key(&b)
        );
        let c = KafkaTrigger {
            sasl: SaslMechanism::Plaintext,
            username: Some("u".into()),
            ..trigger()
        };
        assert_ne!(
            KafkaScaler::connection_key(&a),
            KafkaScaler::connection_key(&c)
        );
    }

    #[test]
    fn plan_decides_activity_from_the_value_as_the_scaler_does_unless_lag_was_left_out_or_capped() {
        // (per partition (lag, lag with persistent), activation, scaler active, plan active
        // from the served value alone); lagThreshold 10.
        let cases = [
            ([(3, 3), (2, 2)], 4, true, true),
            ([(3, 3), (2, 2)], 5, false, false),
            ([(0, 0), (0, 0)], 0, false, false),
            // excludePersistentLag left a stuck consumer's 7 out of the value; it still activates.
            ([(0, 7), (2, 2)], 4, true, false),
            // Capped at partitions x lagThreshold = 20, below the activation value.
            ([(100, 100), (0, 0)], 50, true, false),
        ];
        for (lags, activation, scaler, plan) in cases {
            let mut t = KafkaTrigger::new("k:9092", "g", Some("t"));
            t.activation_lag_threshold = activation;
            let total = total_lag(lags, &t.rules());
            let trigger = Trigger::Kafka(t.clone());
            assert_eq!(t.is_active(activation_input(&total)), scaler, "{lags:?}");
            assert_eq!(
                trigger.is_active(ActivationInput::value_only(total.metric as f64)),
                plan,
                "{lags:?}"
            );
            // Given the backlog as well, the rule answers as the scaler did.
            assert_eq!(
                trigger.is_active(activation_input(&total)),
                scaler,
                "{lags:?}"
            );
        }
    }
}
