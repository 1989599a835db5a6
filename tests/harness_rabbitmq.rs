//! Proves the RabbitMQ harness is a real broker: 500 confirmed publishes (common::rabbitmq),
//! then the queue depth from a passive declare.

mod common;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

const MESSAGES: u32 = 500;

#[tokio::test]
async fn passive_declare_reports_queue_depth() {
    let amqp = common::endpoint("SPILLWAY_RABBITMQ_AMQP");
    let http = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    let (connection, channel, queue) =
        common::rabbitmq::queue_with_messages("harness", MESSAGES as usize).await;

    let passive = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(passive.message_count(), MESSAGES);

    let overview = common::get_json(&format!("{http}/api/overview")).await;
    let version = overview["rabbitmq_version"]
        .as_str()
        .expect("rabbitmq_version")
        .to_owned();
    println!(
        "rabbitmq: RabbitMQ {version} at {amqp}, queue {queue}: passive declare reports {MESSAGES} messages"
    );

    channel
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .expect("delete queue");
    connection.close(200, "done").await.expect("close");
}
