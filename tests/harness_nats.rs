//! Proves the NATS harness is a real JetStream server: publish to a stream, then read the
//! consumer's pending and ack-pending counts from the monitoring endpoint `/jsz`.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

const MESSAGES: u64 = 100;
const DELIVERED: u64 = 10;

/// `(num_pending, num_ack_pending)` of one consumer, as `/jsz` reports it.
async fn consumer_counts(
    monitor: &str,
    stream_name: &str,
    consumer_name: &str,
) -> Option<(u64, u64)> {
    let jsz = common::get_json(&format!(
        "{monitor}/jsz?accounts=true&streams=true&consumers=true"
    ))
    .await;
    let accounts = jsz["account_details"].as_array()?;
    let consumer = accounts
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == stream_name)
        .flat_map(|s| s["consumer_detail"].as_array().into_iter().flatten())
        .find(|c| c["name"] == consumer_name)?;
    Some((
        consumer["num_pending"].as_u64()?,
        consumer["num_ack_pending"].as_u64()?,
    ))
}

#[tokio::test]
async fn jsz_reports_consumer_pending() {
    let url = common::endpoint("SPILLWAY_NATS_URL");
    let monitor = common::endpoint("SPILLWAY_NATS_MONITOR");
    let stream_name = common::unique_name("harness");
    let subject = format!("{stream_name}.jobs");

    let client = async_nats::connect(&url).await.expect("NATS connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let pull = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".into()),
            ack_wait: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create consumer");

    for i in 0..MESSAGES {
        js.publish(subject.clone(), format!("job {i}").into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }
    let (pending, ack_pending) = common::eventually(
        "/jsz to report every message pending",
        Duration::from_secs(10),
        || consumer_counts(&monitor, &stream_name, "worker"),
    )
    .await;
    assert_eq!((pending, ack_pending), (MESSAGES, 0));

    // Deliver some without acking: they move from pending to ack-pending.
    let mut batch = pull
        .fetch()
        .max_messages(DELIVERED as usize)
        .messages()
        .await
        .expect("fetch");
    let mut received = 0;
    while let Some(message) = batch.next().await {
        message.expect("message");
        received += 1;
    }
    assert_eq!(received, DELIVERED);
    let counts = common::eventually(
        "/jsz to show ack-pending deliveries",
        Duration::from_secs(10),
        || async {
            consumer_counts(&monitor, &stream_name, "worker")
                .await
                .filter(|c| *c == (MESSAGES - DELIVERED, DELIVERED))
        },
    )
    .await;

    let varz = common::get_json(&format!("{monitor}/varz")).await;
    let version = varz["version"].as_str().expect("version");
    println!(
        "nats: nats-server {version} at {url}, stream {stream_name}: num_pending {}, num_ack_pending {}",
        counts.0, counts.1
    );
    js.delete_stream(&stream_name).await.expect("delete stream");
}
