//! The Kafka scaler across a broker restart: while the broker is down a poll is an error (never
//! lag 0), and the first poll after it is back answers again on the same client.
//!
//! A test binary of its own: it stops the shared broker, so nothing else may run beside it
//! (cargo runs test binaries one after another).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use spillway::scalers::kafka::{KafkaScaler, KafkaTrigger};
use spillway::scalers::{Scaler, ScalerError};

fn kafka_script(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(action)
        .status()
        .expect("run scripts/kafka.sh");
    assert!(status.success(), "scripts/kafka.sh {action} failed");
}

#[tokio::test]
async fn next_tick_after_a_broker_restart_recovers() {
    let bootstrap = common::endpoint("SPILLWAY_KAFKA_BOOTSTRAP");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &bootstrap);
    let topic = common::unique_name("restart");
    let group = common::unique_name("restart-group");
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().unwrap();
    for i in 0..30 {
        producer
            .send(
                BaseRecord::<(), _>::to(&topic)
                    .partition(i % 3)
                    .payload("x"),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(20)).unwrap();
    let committer: BaseConsumer = config.clone().set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, Offset::Offset(2))
            .unwrap();
    }
    committer.commit(&tpl, CommitMode::Sync).unwrap();

    let trigger = KafkaTrigger {
        timeout: 2000,
        ..KafkaTrigger::new(&bootstrap, &group, Some(&topic))
    };
    let scaler = KafkaScaler::connect(&trigger).unwrap();
    let before = scaler
        .poll(std::slice::from_ref(&trigger))
        .await
        .remove(0)
        .expect("lag before the restart");
    assert_eq!(before.value, 24.0);

    kafka_script("stop");
    let down = scaler.poll(std::slice::from_ref(&trigger)).await.remove(0);
    let restarted = std::panic::catch_unwind(|| kafka_script("start"));
    assert!(
        matches!(
            down,
            Err(ScalerError::Unreachable { .. }
                | ScalerError::Timeout { .. }
                | ScalerError::Broker { .. })
        ),
        "a down broker must be an error, got {down:?}"
    );
    assert!(restarted.is_ok(), "Kafka did not come back");

    let after = common::eventually(
        "the scaler to read lag again after the restart",
        Duration::from_secs(60),
        || async {
            scaler
                .poll(std::slice::from_ref(&trigger))
                .await
                .remove(0)
                .ok()
        },
    )
    .await;
    assert_eq!(after.value, 24.0);
    println!(
        "kafka: down broker read as {:?}; after restart lag {} again",
        down.unwrap_err().reason(),
        after.value
    );
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}
