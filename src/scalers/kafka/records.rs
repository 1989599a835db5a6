//! Record timestamps behind lag seconds, read with one librdkafka consumer per cluster (created
//! on first use, shared by every trigger and group of the cluster, so bounded: a few threads
//! and one socket per broker). The wire client in `crate::kafka_client` reads offsets; reading
//! records would need the Fetch API with record-batch decoding and decompression, which
//! librdkafka already does well, so this one path keeps it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

use super::client::TopicPartition;
use crate::scalers::ScalerError;

const KIND: &str = "kafka";

/// Request counts by Kafka API name, from librdkafka's statistics.
type StatisticsCounts = HashMap<String, i64>;

/// Per-client context: keeps the latest librdkafka statistics (request counters) and routes
/// librdkafka's own log lines into `tracing`.
#[derive(Default)]
pub struct ClusterContext {
    requests: Mutex<StatisticsCounts>,
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
        let mut totals = StatisticsCounts::new();
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

/// The record reader of one cluster.
pub struct RecordReader {
    consumer: BaseConsumer<ClusterContext>,
    /// The bootstrap servers, for logs (never credentials).
    target: String,
    timeout: Duration,
    /// Serialises the record fetches, which change the client's assignment.
    fetch_lock: Mutex<()>,
}

impl RecordReader {
    /// Builds the consumer; nothing is sent until the first read.
    pub fn new(
        mut config: ClientConfig,
        target: String,
        timeout: Duration,
    ) -> Result<Self, ScalerError> {
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("socket.timeout.ms", timeout.as_millis().max(1).to_string())
            // librdkafka's floor for connection setup is one second.
            .set(
                "socket.connection.setup.timeout.ms",
                timeout.as_millis().max(1000).to_string(),
            )
            // One record per partition, not megabytes.
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "4096")
            .set("fetch.wait.max.ms", "100")
            .set("queued.min.messages", "10")
            // librdkafka backs a partition off for a second once its queue is full; we read one record.
            .set("fetch.queue.backoff.ms", "10")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "60000")
            // librdkafka assigns partitions only with a group id. This one never joins (no
            // subscribe) and never commits: it only reads the records behind lag seconds.
            .set("group.id", "spillway-lag-reader");
        let consumer = config
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
            target,
            timeout,
            fetch_lock: Mutex::new(()),
        })
    }

    /// Requests this reader sent (needs `statistics.interval.ms` in the config).
    pub fn request_counts(&self) -> StatisticsCounts {
        let _guard = self.fetch_lock.lock().expect("fetch lock");
        // Statistics arrive as events on the client's queue and a poll serves at most one
        // (returning nothing either way), so poll enough times to reach the newest report.
        for _ in 0..2_000 {
            let _ = self.consumer.poll(Duration::ZERO);
        }
        self.consumer
            .context()
            .requests
            .lock()
            .expect("stats lock")
            .clone()
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
}
