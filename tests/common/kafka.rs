//! Kafka test fixtures: topics with chosen backlogs and commits on the harness's broker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The harness broker's bootstrap address.
pub fn bootstrap() -> String {
    super::endpoint("SPILLWAY_KAFKA_BOOTSTRAP")
}

/// Client settings pointing at the harness broker.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    config
}

pub async fn create_topic(partitions: i32) -> String {
    let topic = super::unique_name("lag");
    create_topic_named(&topic, partitions).await;
    topic
}

/// Creates `topic` (say, again after deleting it).
pub async fn create_topic_named(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin");
    let result = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("CreateTopics");
    assert!(result.iter().all(|r| r.is_ok()), "{result:?}");
}

pub async fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin");
    let result = admin
        .delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("DeleteTopics");
    assert!(result.iter().all(|r| r.is_ok()), "{result:?}");
}

/// Produces `counts[p]` messages to partition p, stamped `age` in the past.
pub async fn produce(topic: &str, counts: &[i64], age: Duration) {
    let producer: FutureProducer = client_config()
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let stamp = (SystemTime::now() - age)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut sends = Vec::new();
    for (partition, count) in counts.iter().enumerate() {
        for i in 0..*count {
            let producer = &producer;
            sends.push(async move {
                let payload = format!("m{i}");
                producer
                    .send(
                        FutureRecord::<(), _>::to(topic)
                            .partition(partition as i32)
                            .payload(&payload)
                            .timestamp(stamp),
                        Duration::from_secs(20),
                    )
                    .await
            });
        }
    }
    for result in futures::future::join_all(sends).await {
        result.expect("delivery");
    }
}

/// Commits `offsets` (topic, partition, offset) for `group` without joining it.
pub fn commit(group: &str, offsets: &[(&str, i32, i64)]) {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

/// Commits the same `offsets` for each of `groups` without joining them, through spillway's
/// wire client (one connection, many commits in flight): thousands of groups in seconds.
#[allow(dead_code)]
pub async fn commit_many(groups: &[String], offsets: &[(&str, i32, i64)]) {
    use futures::StreamExt;
    use spillway::kafka_client::{ClusterClient, ConnectOptions};
    let client = ClusterClient::new(
        vec![bootstrap()],
        ConnectOptions {
            tls: None,
            sasl: None,
            timeout: Duration::from_secs(30),
        },
    );
    let commits = futures::stream::iter(groups)
        .map(|group| {
            let client = &client;
            async move { (group, client.commit_offsets(group, offsets).await) }
        })
        .buffer_unordered(64);
    let results: Vec<_> = commits.collect().await;
    for (group, result) in results {
        result.unwrap_or_else(|err| panic!("commit for {group}: {err}"));
    }
}
