//! The Kafka scaler across a broker restart: while the broker is down every trigger is an error
//! (never lag 0), and the first poll after it is back answers again on the same client.
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

// Multi-threaded: a task keeps polling while the (blocking) script stops the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_tick_after_a_broker_restart_recovers() {
    let bootstrap = kafka::bootstrap();
    // Two topics on one cluster: a broker down is every trigger's failure, never one topic's
    // (the round must not narrow it down to some topics and serve the others).
    let mut topics = Vec::new();
    for _ in 0..2 {
        topics.push(kafka::create_topic(3).await);
    }
    let group = common::unique_name("restart-group");
    for topic in &topics {
        kafka::produce(topic, &[10, 10, 10], Duration::ZERO).await;
        let commits: Vec<(&str, i32, i64)> = (0..3).map(|p| (topic.as_str(), p, 2)).collect();
        kafka::commit(&group, &commits);
    }

    let triggers: Vec<KafkaTrigger> = topics
        .iter()
        .map(|topic| KafkaTrigger {
            timeout: 2000,
            ..KafkaTrigger::new(&bootstrap, &group, Some(topic))
        })
        .collect();
    let scaler = std::sync::Arc::new(KafkaScaler::connect(&triggers[0]).unwrap());
    let values = |readings: &[Result<spillway::scalers::Reading, ScalerError>]| {
        readings
            .iter()
            .map(|r| r.as_ref().ok().map(|r| r.value))
            .collect::<Vec<_>>()
    };
    let before = scaler.poll(&triggers).await;
    assert_eq!(values(&before), [Some(24.0), Some(24.0)], "{before:?}");

    // Requests in flight while the broker goes down: rounds run back to back during the stop.
    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_flight = tokio::spawn({
        let (scaler, triggers, stopping) = (
            std::sync::Arc::clone(&scaler),
            triggers.clone(),
            std::sync::Arc::clone(&stopping),
        );
        async move {
            let mut rounds = 0u32;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = scaler.poll(&triggers).await;
                rounds += 1;
            }
            rounds
        }
    });
    kafka_script("stop");
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = in_flight
        .await
        .expect("rounds across the stop must not panic");
    assert!(rounds > 0, "no round ran while the broker stopped");
    let down = scaler.poll(&triggers).await;
    let restarted = std::panic::catch_unwind(|| kafka_script("start"));
    for reading in &down {
        assert!(
            matches!(
                reading,
                Err(ScalerError::Unreachable { .. }
                    | ScalerError::Timeout { .. }
                    | ScalerError::Broker { .. })
            ),
            "a down broker must be an error for every trigger, got {down:?}"
        );
    }
    assert!(restarted.is_ok(), "Kafka did not come back");

    let after = common::eventually(
        "the scaler to read lag again after the restart",
        Duration::from_secs(60),
        || async {
            let readings = scaler.poll(&triggers).await;
            readings.iter().all(Result::is_ok).then_some(readings)
        },
    )
    .await;
    assert_eq!(values(&after), [Some(24.0), Some(24.0)]);
    println!(
        "kafka: down broker read as {:?}; after restart lag {:?} again",
        down.iter()
            .map(|r| r.as_ref().map(|_| ()).unwrap_err().reason())
            .collect::<Vec<_>>(),
        values(&after)
    );
    for topic in &topics {
        kafka::delete_topic(topic).await;
    }
}
