//! Proves the Kafka harness is a real broker: 1,000 messages into a 12-partition topic,
//! end offsets read back per partition.

mod common;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 12;
const MESSAGES: i32 = 1_000;

fn broker_version() -> String {
    let log = common::endpoint("SPILLWAY_KAFKA_LOG");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|err| panic!("read {log}: {err}"));
    text.lines()
        .find_map(|l| l.split("Kafka version: ").nth(1))
        .map(|v| v.split_whitespace().next().unwrap_or(v).to_owned())
        .unwrap_or_else(|| panic!("{log} does not name the broker's version"))
}

#[tokio::test]
async fn produces_to_twelve_partitions_and_reads_end_offsets() {
    let bootstrap = common::endpoint("SPILLWAY_KAFKA_BOOTSTRAP");
    let topic = common::unique_name("harness");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &bootstrap);

    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("CreateTopics request");
    assert!(
        created.iter().all(|r| r.is_ok()),
        "create topic: {created:?}"
    );

    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = (0..MESSAGES).map(|i| {
        let producer = &producer;
        let topic = &topic;
        async move {
            let payload = format!("message {i}");
            let key = i.to_string();
            let record = FutureRecord::to(topic)
                .partition(i % PARTITIONS)
                .key(&key)
                .payload(&payload);
            producer.send(record, Duration::from_secs(20)).await
        }
    });
    let delivered = futures::future::join_all(sends).await;
    let failures: Vec<_> = delivered.iter().filter(|r| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} sends failed, first: {:?}",
        failures.len(),
        failures.first()
    );

    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), PARTITIONS as usize);

    let mut total = 0;
    for partition in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .expect("ListOffsets");
        assert_eq!(low, 0);
        let expected = (0..MESSAGES)
            .filter(|i| i % PARTITIONS == partition)
            .count() as i64;
        assert_eq!(high, expected, "end offset of partition {partition}");
        total += high;
    }
    assert_eq!(total, MESSAGES as i64);

    println!(
        "kafka: Apache Kafka {} at {bootstrap}, topic {topic}: {PARTITIONS} partitions, end offsets sum to {total}",
        broker_version()
    );
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .expect("DeleteTopics");
}
