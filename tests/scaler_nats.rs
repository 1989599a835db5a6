//! The NATS JetStream scaler against the harness's real nats-server: pending and ack-pending
//! of real consumers, several triggers answered by one `/jsz` call, and the errors for a
//! missing stream, a missing consumer and an unreachable monitoring endpoint.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use common::nats::TestStream;
use futures::StreamExt;
use spillway::scalers::nats::{NatsJetStreamScaler, NatsJetStreamTrigger};
use spillway::scalers::{Scaler, ScalerError, TriggerParams};

/// Serialises the tests of this file that count `/jsz` requests.
static JSZ_COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `host:port` of the monitoring endpoint, as KEDA's `natsServerMonitoringEndpoint` wants it.
fn monitor_host_port() -> String {
    let monitor = common::endpoint("SPILLWAY_NATS_MONITOR");
    monitor
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

fn trigger(stream: &str, consumer: &str) -> NatsJetStreamTrigger {
    serde_json::from_value(serde_json::json!({
        "natsServerMonitoringEndpoint": monitor_host_port(),
        "stream": stream,
        "consumer": consumer,
        "lagThreshold": 5,
    }))
    .expect("trigger")
}

/// Fetches `count` messages without acknowledging them, and returns them.
async fn fetch_unacked(pull: &consumer::PullConsumer, count: usize) -> Vec<jetstream::Message> {
    let mut batch = pull
        .fetch()
        .max_messages(count)
        .messages()
        .await
        .expect("fetch");
    let mut messages = Vec::new();
    while let Some(message) = batch.next().await {
        messages.push(message.expect("message"));
    }
    assert_eq!(messages.len(), count, "fetched");
    messages
}

/// How many `/jsz` requests the server has answered so far.
async fn jsz_requests() -> u64 {
    let varz = common::get_json(&format!(
        "{}/varz",
        common::endpoint("SPILLWAY_NATS_MONITOR")
    ))
    .await;
    varz["http_req_stats"]["/jsz"].as_u64().unwrap_or(0)
}

fn lag_parts(reading: &spillway::scalers::Reading) -> (f64, f64, f64) {
    let extra = |name: &str| {
        reading
            .extra
            .iter()
            .find(|(suffix, _)| *suffix == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {reading:?}"))
    };
    (reading.value, extra("pending"), extra("ack-pending"))
}

#[tokio::test]
async fn pending_and_ack_pending_of_several_consumers_from_one_jsz_call() {
    let _counting = JSZ_COUNTING.lock().await;
    let (stream, pulls) = TestStream::create("scaler", &["worker", "audit"], 20).await;
    let worker = trigger(&stream.name, "worker");
    let mut audit = trigger(&stream.name, "audit");
    audit.activation_lag_threshold = 20;
    let triggers = [worker.clone(), audit.clone()];
    let scaler = NatsJetStreamScaler::connect(&worker).expect("connect");
    assert_eq!(
        NatsJetStreamScaler::connection_key(&worker),
        NatsJetStreamScaler::connection_key(&audit),
        "triggers on one endpoint share a scaler"
    );

    // Deliver 6 to `worker` without acking: they move from pending to ack-pending.
    let delivered = fetch_unacked(&pulls[0], 6).await;
    let readings = common::eventually(
        "/jsz to show 14 pending and 6 ack-pending",
        Duration::from_secs(10),
        || async {
            let readings = scaler.poll(&triggers).await;
            let worker = readings[0].as_ref().ok()?;
            (lag_parts(worker) == (20.0, 14.0, 6.0)).then_some(readings)
        },
    )
    .await;
    let worker_reading = readings[0].as_ref().unwrap();
    let audit_reading = readings[1].as_ref().unwrap();
    assert!(worker_reading.active, "lag 20 > activation 0");
    assert_eq!(lag_parts(audit_reading), (20.0, 20.0, 0.0));
    assert!(!audit_reading.active, "lag 20 is not above activation 20");
    assert_eq!(worker.target_value(), 5.0);
    assert_eq!(
        worker.metric_name(),
        format!("nats-jetstream-{}", stream.name)
    );

    // One poll of both triggers is one /jsz request. Other programs may read /jsz too, so
    // a few attempts are allowed to see a clean count.
    let mut counts = Vec::new();
    for _ in 0..5 {
        let before = jsz_requests().await;
        let readings = scaler.poll(&triggers).await;
        let after = jsz_requests().await;
        assert!(readings.iter().all(Result::is_ok), "{readings:?}");
        counts.push(after - before);
        if after - before == 1 {
            break;
        }
    }
    assert_eq!(
        counts.last(),
        Some(&1),
        "/jsz requests per poll: {counts:?}"
    );

    // Acking drains ack-pending.
    for message in delivered {
        message.ack().await.expect("ack");
    }
    common::eventually(
        "acks to clear ack-pending",
        Duration::from_secs(10),
        || async {
            let readings = scaler.poll(&triggers).await;
            let worker = readings[0].as_ref().ok()?;
            (lag_parts(worker) == (14.0, 14.0, 0.0)).then_some(())
        },
    )
    .await;
    println!(
        "nats: stream {}: worker lag 20 (14 pending + 6 ack-pending), then 14 after acks; one /jsz per poll",
        stream.name
    );
    stream.delete().await;
}

#[tokio::test]
async fn missing_stream_and_missing_consumer_are_not_found() {
    let (stream, _pulls) = TestStream::create("scaler", &["worker"], 3).await;
    let triggers = [
        trigger(&stream.name, "worker"),
        trigger(&stream.name, "no-such-consumer"),
        trigger(&format!("{}-absent", stream.name), "worker"),
        {
            let mut t = trigger(&stream.name, "worker");
            t.account = Some("NO_SUCH_ACCOUNT".into());
            t
        },
    ];
    let scaler = NatsJetStreamScaler::connect(&triggers[0]).expect("connect");
    let readings = common::eventually(
        "the published messages to show as pending",
        Duration::from_secs(10),
        || async {
            let readings = scaler.poll(&triggers).await;
            matches!(&readings[0], Ok(r) if r.value == 3.0).then_some(readings)
        },
    )
    .await;

    // A missing consumer is an error naming it (KEDA agrees since 2.20; before, it read the
    // stream's last_seq, 3 here).
    match &readings[1] {
        Err(ScalerError::NotFound { broker, what, .. }) => {
            assert_eq!(*broker, "nats-jetstream");
            assert_eq!(
                what,
                &format!("consumer \"no-such-consumer\" of stream {:?}", stream.name)
            );
        }
        other => panic!("missing consumer: expected NotFound, got {other:?}"),
    }
    match &readings[2] {
        Err(ScalerError::NotFound { what, .. }) => {
            assert_eq!(what, &format!("stream \"{}-absent\"", stream.name));
        }
        other => panic!("missing stream: expected NotFound, got {other:?}"),
    }
    match &readings[3] {
        Err(ScalerError::NotFound { what, .. }) => {
            assert!(what.contains("NO_SUCH_ACCOUNT"), "{what}");
        }
        other => panic!("missing account: expected NotFound, got {other:?}"),
    }
    println!(
        "nats: missing consumer -> {}",
        readings[1].as_ref().unwrap_err()
    );
    stream.delete().await;
}

#[tokio::test]
async fn unreachable_monitoring_endpoint_is_an_error_quickly() {
    let mut down = trigger("orders", "worker");
    down.nats_server_monitoring_endpoint = "127.0.0.1:1".into();
    let mut other = down.clone();
    other.consumer = "audit".into();
    let scaler = NatsJetStreamScaler::connect(&down).expect("connect never touches the network");
    let started = Instant::now();
    let readings = scaler.poll(&[down, other]).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(readings.len(), 2);
    for reading in &readings {
        match reading {
            Err(ScalerError::Unreachable { target, .. } | ScalerError::Timeout { target, .. }) => {
                assert_eq!(target, "127.0.0.1:1");
            }
            other => panic!("expected Unreachable or Timeout, got {other:?}"),
        }
    }
    println!(
        "nats: unreachable in {took:?}: {}",
        readings[0].as_ref().unwrap_err()
    );
}

#[tokio::test]
async fn invalid_triggers_fail_alone_without_the_network() {
    let (stream, _pulls) = TestStream::create("scaler", &["worker"], 1).await;
    let good = trigger(&stream.name, "worker");
    let mut bad = good.clone();
    bad.consumer = String::new();
    let scaler = NatsJetStreamScaler::connect(&good).expect("connect");
    let readings = common::eventually(
        "the good trigger to read its message",
        Duration::from_secs(10),
        || async {
            let readings = scaler.poll(&[bad.clone(), good.clone()]).await;
            matches!(&readings[1], Ok(r) if r.value == 1.0).then_some(readings)
        },
    )
    .await;
    assert!(
        matches!(&readings[0], Err(ScalerError::InvalidTrigger { field, .. }) if field == "consumer"),
        "{:?}",
        readings[0]
    );
    stream.delete().await;
}

/// Issue 13: a stream or a consumer deleted between two ticks fails its own triggers on the
/// next poll; the other triggers of the endpoint read from the same `/jsz` answer.
#[tokio::test]
async fn deleted_stream_or_consumer_fails_only_its_triggers() {
    let (kept, _kept_pulls) = TestStream::create("kept", &["worker", "retired"], 3).await;
    let (doomed, _doomed_pulls) = TestStream::create("doomed", &["worker"], 5).await;
    let triggers = [
        trigger(&kept.name, "worker"),
        trigger(&kept.name, "retired"),
        trigger(&doomed.name, "worker"),
    ];
    let scaler = NatsJetStreamScaler::connect(&triggers[0]).expect("connect");
    let values =
        |readings: &[Result<spillway::scalers::Reading, ScalerError>]| -> Vec<Option<f64>> {
            readings
                .iter()
                .map(|r| r.as_ref().ok().map(|r| r.value))
                .collect()
        };
    common::eventually(
        "every consumer to show its backlog",
        Duration::from_secs(10),
        || async {
            let readings = scaler.poll(&triggers).await;
            (values(&readings) == [Some(3.0), Some(3.0), Some(5.0)]).then_some(())
        },
    )
    .await;

    kept.js
        .get_stream(&kept.name)
        .await
        .expect("kept stream")
        .delete_consumer("retired")
        .await
        .expect("delete consumer");
    let doomed_name = doomed.name.clone();
    doomed.delete().await;
    let readings = scaler.poll(&triggers).await;
    assert_eq!(values(&readings), [Some(3.0), None, None], "{readings:?}");
    match &readings[1] {
        Err(ScalerError::NotFound { what, .. }) => {
            assert_eq!(
                what,
                &format!("consumer \"retired\" of stream {:?}", kept.name)
            )
        }
        other => panic!("deleted consumer: {other:?}"),
    }
    match &readings[2] {
        Err(ScalerError::NotFound { what, .. }) => {
            assert_eq!(what, &format!("stream {doomed_name:?}"))
        }
        other => panic!("deleted stream: {other:?}"),
    }
    kept.delete().await;
}
