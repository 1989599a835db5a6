//! A cluster as the client sees it: the broker addresses (from the bootstrap list, then from
//! Metadata and FindCoordinator answers), two pooled connections per broker (one per [`Lane`];
//! a third for a leader of thousands of partitions) shared by every caller, request counts per API, and the batched reads lag needs. Each read answers per item
//! (group, partition) with a typed error, so one bad topic or group fails only itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, GroupId, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, OffsetCommitRequest, OffsetFetchRequest, TopicName,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    },
};
use kafka_protocol::protocol::StrBytes;

use super::connection::{Connection, RequestCounter};
use super::requests::{Lane, ReadRequest};
use super::sasl::SaslCredentials;
use super::{ResponseError, WireError, error_of};

/// Requests sent so far, by Kafka API name.
pub type RequestCounts = HashMap<String, i64>;

/// How every connection of a cluster is made.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub sasl: Option<SaslCredentials>,
    /// Bound on connecting and on each request.
    pub timeout: Duration,
}

/// Why one item (a group, a partition) has no value: its request failed, or Kafka answered the
/// item with an error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ItemError {
    #[error(transparent)]
    Request(#[from] WireError),
    #[error("{0}")]
    Code(ResponseError),
}

/// Committed offset per partition of one group (`None`: no commit), or a partition's error.
/// A map keyed by (topic, partition), hashed with foldhash: a tick over 10,000 partitions
/// looks every key up several times, and SipHash over the topic names was a fifth of its CPU.
/// Seeded per map (`RandomState`), since topic names come from the cluster's tenants.
pub type PartitionMap<V> = HashMap<(String, i32), V, foldhash::fast::RandomState>;

pub type CommittedOffsets = Vec<((String, i32), Result<Option<i64>, ResponseError>)>;

/// ListOffsets' special timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// Partitions of one leader above which ListOffsets is sent as two requests on two connections.
const SPLIT_LIST_OFFSETS_ABOVE: usize = 2_000;

/// `partitions` (holding `count` partitions) as two halves of about equal partition counts,
/// a topic's partitions split between them where the middle falls inside it.
#[allow(clippy::type_complexity)]
fn split_in_half(
    partitions: &BTreeMap<String, Vec<i32>>,
    count: usize,
) -> (Vec<(&String, &[i32])>, Vec<(&String, &[i32])>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut left = count / 2;
    for (topic, ids) in partitions {
        let taken = left.min(ids.len());
        left -= taken;
        if taken > 0 {
            first.push((topic, &ids[..taken]));
        }
        if taken < ids.len() {
            second.push((topic, &ids[taken..]));
        }
    }
    (first, second)
}

/// Groups per OffsetFetch request (v8+): bounds one answer's size, still O(1) requests per
/// coordinator for any realistic fleet.
const GROUPS_PER_OFFSET_FETCH: usize = 2_000;

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

pub struct ClusterClient {
    bootstrap: Vec<String>,
    options: ConnectOptions,
    /// Broker id -> `host:port`.
    brokers: Mutex<HashMap<i32, String>>,
    /// One connection slot per address and lane; a slot's lock is held while it connects, so
    /// concurrent callers share one connection attempt.
    connections: Mutex<HashMap<(String, Lane), Slot>>,
    counter: Arc<RequestCounter>,
}

impl ClusterClient {
    /// Nothing is sent until the first request: a down cluster fails a read, not the construction.
    pub fn new(bootstrap: Vec<String>, options: ConnectOptions) -> Self {
        Self {
            bootstrap,
            options,
            brokers: Mutex::default(),
            connections: Mutex::default(),
            counter: Arc::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.counter
            .snapshot()
            .into_iter()
            .map(|(api, n)| (api.to_owned(), n as i64))
            .collect()
    }

    /// Open connections (for tests and benches: at most three per broker, never O(groups)).
    pub fn open_connections(&self) -> usize {
        let slots: Vec<Slot> = self
            .connections
            .lock()
            .expect("connections lock")
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|slot| {
                slot.try_lock()
                    .map(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                    .unwrap_or(true)
            })
            .count()
    }

    /// The bootstrap servers and every broker address metadata has named so far (`host:port`),
    /// sorted and without duplicates: what another client of this cluster would connect to.
    pub fn known_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .brokers
            .lock()
            .expect("brokers lock")
            .values()
            .chain(&self.bootstrap)
            .cloned()
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    async fn connection(&self, address: &str, lane: Lane) -> Result<Arc<Connection>, WireError> {
        let slot = Arc::clone(
            self.connections
                .lock()
                .expect("connections lock")
                .entry((address.to_owned(), lane))
                .or_default(),
        );
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        *slot = None;
        let connection =
            Connection::open(address, &self.options, Arc::clone(&self.counter)).await?;
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    fn address_of(&self, node: i32) -> Result<String, WireError> {
        self.brokers
            .lock()
            .expect("brokers lock")
            .get(&node)
            .cloned()
            .ok_or_else(|| WireError::Connect {
                broker: format!("broker {node}"),
                cause: "no address known for this broker id".into(),
            })
    }

    fn remember_broker(&self, node: i32, host: &str, port: i32) {
        self.brokers
            .lock()
            .expect("brokers lock")
            .insert(node, format!("{host}:{port}"));
    }

    /// Sends to broker `node`.
    pub async fn send_to_node<R: ReadRequest>(
        &self,
        node: i32,
        request: &R,
    ) -> Result<R::Response, WireError> {
        self.send_to_node_on(node, request, R::LANE).await
    }

    async fn send_to_node_on<R: ReadRequest>(
        &self,
        node: i32,
        request: &R,
        lane: Lane,
    ) -> Result<R::Response, WireError> {
        let address = self.address_of(node)?;
        self.connection(&address, lane)
            .await?
            .send(request, self.options.timeout)
            .await
    }

    /// The version broker `node` would get for `R`: decides between batched and per-group forms.
    pub async fn version_for_node<R: ReadRequest>(&self, node: i32) -> Result<i16, WireError> {
        let address = self.address_of(node)?;
        self.connection(&address, R::LANE).await?.version_of::<R>()
    }

    /// Sends to any broker that answers: known brokers first, then the bootstrap list.
    async fn send_to_any<R: ReadRequest>(&self, request: &R) -> Result<R::Response, WireError> {
        let mut addresses: Vec<String> = self
            .brokers
            .lock()
            .expect("brokers lock")
            .values()
            .cloned()
            .collect();
        addresses.sort();
        for address in &self.bootstrap {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        }
        let mut last = None;
        for address in &addresses {
            let sent = match self.connection(address, R::LANE).await {
                Ok(connection) => connection.send(request, self.options.timeout).await,
                Err(err) => Err(err),
            };
            match sent {
                Ok(answer) => return Ok(answer),
                Err(err) => {
                    tracing::debug!(broker = %address, error = %err, api = R::NAME, "broker did not answer; trying the next");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| WireError::Config("no bootstrap servers".into())))
    }

    /// Metadata of `topics` (all topics with `None`), from any broker; learns broker addresses.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<MetadataResponse, WireError> {
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(topics.map(|topics| {
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string((*t).to_owned()))))
                    })
                    .collect()
            }));
        let answer = self.send_to_any(&request).await?;
        for broker in &answer.brokers {
            self.remember_broker(broker.node_id.0, broker.host.as_str(), broker.port);
        }
        Ok(answer)
    }

    /// The coordinator (broker id) of each group: one FindCoordinator with every key (v4+), or
    /// one per group, pipelined, on older brokers.
    pub async fn find_coordinators(
        &self,
        groups: &[String],
    ) -> HashMap<String, Result<i32, ItemError>> {
        if groups.is_empty() {
            return HashMap::new();
        }
        let batched = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(
                groups
                    .iter()
                    .map(|g| StrBytes::from_string(g.clone()))
                    .collect(),
            );
        // Version 4+ is what carries many keys; ask a broker which it speaks.
        match self.send_to_any(&batched).await {
            Ok(answer) if !answer.coordinators.is_empty() => {
                let mut found: HashMap<String, Result<i32, ItemError>> = HashMap::new();
                for c in answer.coordinators {
                    let result = match error_of(c.error_code) {
                        None => {
                            self.remember_broker(c.node_id.0, c.host.as_str(), c.port);
                            Ok(c.node_id.0)
                        }
                        Some(code) => Err(ItemError::Code(code)),
                    };
                    found.insert(c.key.as_str().to_owned(), result);
                }
                groups
                    .iter()
                    .map(|g| {
                        let result = found.remove(g).unwrap_or(Err(ItemError::Code(
                            ResponseError::CoordinatorNotAvailable,
                        )));
                        (g.clone(), result)
                    })
                    .collect()
            }
            Err(err) => groups
                .iter()
                .map(|g| (g.clone(), Err(err.clone().into())))
                .collect(),
            // An answer without the batch: the broker spoke a version below 4.
            Ok(_) => {
                let lookups = groups.iter().map(|group| async move {
                    let request = FindCoordinatorRequest::default()
                        .with_key(StrBytes::from_string(group.clone()))
                        .with_key_type(0);
                    let result = match self.send_to_any(&request).await {
                        Ok(answer) => match error_of(answer.error_code) {
                            None => {
                                self.remember_broker(
                                    answer.node_id.0,
                                    answer.host.as_str(),
                                    answer.port,
                                );
                                Ok(answer.node_id.0)
                            }
                            Some(code) => Err(ItemError::Code(code)),
                        },
                        Err(err) => Err(err.into()),
                    };
                    (group.clone(), result)
                });
                futures::future::join_all(lookups)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Committed offsets of `groups` (each with the partitions asked, by topic) from their
    /// coordinator `node`: one OffsetFetch for many groups (v8+, KIP-709), or one per group
    /// pipelined on the coordinator's connection (brokers before 3.0).
    pub async fn fetch_committed(
        &self,
        node: i32,
        groups: &[(String, BTreeMap<String, Vec<i32>>)],
    ) -> HashMap<String, Result<CommittedOffsets, ItemError>> {
        let version = match self.version_for_node::<OffsetFetchRequest>(node).await {
            Ok(version) => version,
            Err(err) => {
                return groups
                    .iter()
                    .map(|(g, _)| (g.clone(), Err(err.clone().into())))
                    .collect();
            }
        };
        if version >= 8 {
            let mut results = HashMap::new();
            let requests = groups
                .chunks(GROUPS_PER_OFFSET_FETCH)
                .map(|chunk| async move {
                    let request = OffsetFetchRequest::default().with_groups(
                        chunk
                            .iter()
                            .map(|(group, topics)| {
                                OffsetFetchRequestGroup::default()
                                    .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                                    .with_member_epoch(-1)
                                    .with_topics(Some(
                                        topics
                                            .iter()
                                            .map(|(topic, partitions)| {
                                                OffsetFetchRequestTopics::default()
                                                    .with_name(TopicName(StrBytes::from_string(
                                                        topic.clone(),
                                                    )))
                                                    .with_partition_indexes(partitions.clone())
                                            })
                                            .collect(),
                                    ))
                            })
                            .collect(),
                    );
                    (chunk, self.send_to_node(node, &request).await)
                });
            for (chunk, answer) in futures::future::join_all(requests).await {
                match answer {
                    Ok(answer) => {
                        let mut by_group: HashMap<String, Result<CommittedOffsets, ItemError>> =
                            HashMap::new();
                        for group in answer.groups {
                            let result = match error_of(group.error_code) {
                                Some(code) => Err(ItemError::Code(code)),
                                None => Ok(group
                                    .topics
                                    .iter()
                                    .flat_map(|t| {
                                        t.partitions.iter().map(|p| {
                                            (
                                                (t.name.0.as_str().to_owned(), p.partition_index),
                                                committed(p.committed_offset, p.error_code),
                                            )
                                        })
                                    })
                                    .collect()),
                            };
                            by_group.insert(group.group_id.0.as_str().to_owned(), result);
                        }
                        for (group, _) in chunk {
                            let result = by_group.remove(group).unwrap_or_else(|| {
                                Err(ItemError::Request(WireError::Protocol {
                                    broker: format!("broker {node}"),
                                    api: "OffsetFetch",
                                    cause: format!("group {group} missing from the answer"),
                                }))
                            });
                            results.insert(group.clone(), result);
                        }
                    }
                    Err(err) => results.extend(
                        chunk
                            .iter()
                            .map(|(g, _)| (g.clone(), Err(err.clone().into()))),
                    ),
                }
            }
            return results;
        }
        let requests = groups.iter().map(|(group, topics)| async move {
            let request = OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_topics(Some(
                    topics
                        .iter()
                        .map(|(topic, partitions)| {
                            OffsetFetchRequestTopic::default()
                                .with_name(TopicName(StrBytes::from_string(topic.clone())))
                                .with_partition_indexes(partitions.clone())
                        })
                        .collect(),
                ));
            let result = match self.send_to_node(node, &request).await {
                Ok(answer) => match error_of(answer.error_code) {
                    Some(code) => Err(ItemError::Code(code)),
                    None => Ok(answer
                        .topics
                        .iter()
                        .flat_map(|t| {
                            t.partitions.iter().map(|p| {
                                (
                                    (t.name.0.as_str().to_owned(), p.partition_index),
                                    committed(p.committed_offset, p.error_code),
                                )
                            })
                        })
                        .collect()),
                },
                Err(err) => Err(err.into()),
            };
            (group.clone(), result)
        });
        futures::future::join_all(requests)
            .await
            .into_iter()
            .collect()
    }

    /// Offsets at `timestamp` ([`LATEST`] or [`EARLIEST`]) of `partitions` (by topic), from
    /// their leader `node`; each partition answers for itself. One request, or two at once on
    /// two connections above [`SPLIT_LIST_OFFSETS_ABOVE`] partitions: Kafka serves one
    /// connection's requests in order on one thread, and ListOffsets of 10,000 partitions was
    /// most of a tick's time with the broker's other cores idle.
    pub async fn list_offsets(
        &self,
        node: i32,
        partitions: &BTreeMap<String, Vec<i32>>,
        timestamp: i64,
    ) -> Result<PartitionMap<Result<i64, ResponseError>>, WireError> {
        let count: usize = partitions.values().map(Vec::len).sum();
        if count <= SPLIT_LIST_OFFSETS_ABOVE {
            return self
                .list_offsets_on(node, partitions.iter(), timestamp, Lane::Partitions)
                .await;
        }
        let (first, second) = split_in_half(partitions, count);
        let (first, second) = futures::join!(
            self.list_offsets_on(node, first.into_iter(), timestamp, Lane::Partitions),
            self.list_offsets_on(node, second.into_iter(), timestamp, Lane::MorePartitions)
        );
        let (mut first, second) = (first?, second?);
        first.extend(second);
        Ok(first)
    }

    async fn list_offsets_on<'a, P>(
        &self,
        node: i32,
        partitions: impl Iterator<Item = (&'a String, P)>,
        timestamp: i64,
        lane: Lane,
    ) -> Result<PartitionMap<Result<i64, ResponseError>>, WireError>
    where
        P: AsRef<[i32]>,
    {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(0)
            .with_timeout_ms(self.options.timeout.as_millis().min(i32::MAX as u128) as i32)
            .with_topics(
                partitions
                    .map(|(topic, ids)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic.clone())))
                            .with_partitions(
                                ids.as_ref()
                                    .iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(*p)
                                            .with_current_leader_epoch(-1)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let answer = self.send_to_node_on(node, &request, lane).await?;
        let mut offsets = PartitionMap::with_capacity_and_hasher(
            answer.topics.iter().map(|t| t.partitions.len()).sum(),
            Default::default(),
        );
        for t in &answer.topics {
            for p in &t.partitions {
                let result = match error_of(p.error_code) {
                    None => Ok(p.offset),
                    Some(code) => Err(code),
                };
                offsets.insert((t.name.0.as_str().to_owned(), p.partition_index), result);
            }
        }
        Ok(offsets)
    }

    /// Commits offsets for `group` as an admin tool does (no member, no generation): for
    /// fixtures and benches that need many groups with commits, cheaply.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(&str, i32, i64)],
    ) -> Result<(), ItemError> {
        let node = self
            .find_coordinators(&[group.to_owned()])
            .await
            .remove(group)
            .expect("asked")?;
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (topic, partition, offset) in offsets {
            by_topic.entry(topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset)
                    .with_committed_metadata(Some(StrBytes::from_static_str(""))),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_retention_time_ms(-1)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let answer = self.send_to_node(node, &request).await?;
        for topic in answer.topics {
            for partition in topic.partitions {
                if let Some(code) = error_of(partition.error_code) {
                    return Err(ItemError::Code(code));
                }
            }
        }
        Ok(())
    }
}

/// One partition of an OffsetFetch answer: -1 is "no commit".
fn committed(offset: i64, error_code: i16) -> Result<Option<i64>, ResponseError> {
    match error_of(error_code) {
        Some(code) => Err(code),
        None => Ok((offset >= 0).then_some(offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_read_splits_in_two_halves_of_partitions_through_a_topic() {
        let partitions: BTreeMap<String, Vec<i32>> = [
            ("a".to_owned(), (0..3).collect()),
            ("b".to_owned(), (0..4).collect()),
        ]
        .into();
        let (first, second) = split_in_half(&partitions, 7);
        let flat = |half: Vec<(&String, &[i32])>| -> Vec<(String, i32)> {
            half.into_iter()
                .flat_map(|(t, ids)| ids.iter().map(move |p| (t.clone(), *p)))
                .collect()
        };
        let (first, second) = (flat(first), flat(second));
        assert_eq!(first.len(), 3);
        assert_eq!(second.len(), 4);
        let mut all = [first, second].concat();
        all.sort();
        let mut expected: Vec<(String, i32)> = partitions
            .iter()
            .flat_map(|(t, ids)| ids.iter().map(move |p| (t.clone(), *p)))
            .collect();
        expected.sort();
        assert_eq!(all, expected, "every partition in exactly one half");
        // A single topic splits inside itself.
        let one: BTreeMap<String, Vec<i32>> = [("t".to_owned(), (0..5).collect())].into();
        let (first, second) = split_in_half(&one, 5);
        assert_eq!(first, vec![(&"t".to_owned(), &[0, 1][..])]);
        assert_eq!(second, vec![(&"t".to_owned(), &[2, 3, 4][..])]);
    }
}
