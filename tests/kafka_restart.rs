//! The Kafka scaler across a broker restart: while the broker is down a poll is an error (never
//! lag 0), and the first poll after it is back answers again on the same client.
//!
//! A test binary of its own: it stops the shared broker, so nothing else may run beside it
//! (cargo runs test binaries one after another).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::kafka;
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
    let bootstrap = kafka::bootstrap();
    let topic = kafka::create_topic(3).await;
    let group = common::unique_name("restart-group");
    kafka::produce(&topic, &[10, 10, 10], Duration::ZERO).await;
    let commits: Vec<(&str, i32, i64)> = (0..3).map(|p| (topic.as_str(), p, 2)).collect();
    kafka::commit(&group, &commits);

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
    kafka::delete_topic(&topic).await;
}
