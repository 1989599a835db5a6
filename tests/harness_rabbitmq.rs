//! Proves the RabbitMQ harness is a real broker: 500 confirmed publishes, then the queue depth
//! from a passive declare.

mod common;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const MESSAGES: u32 = 500;

#[tokio::test]
async fn passive_declare_reports_queue_depth() {
    let amqp = common::endpoint("SPILLWAY_RABBITMQ_AMQP");
    let http = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    let queue = common::unique_name("harness");

    let connection = Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .expect("AMQP connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare queue");

    for i in 0..MESSAGES {
        let confirm = channel
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                format!("job {i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(
            confirm.await.expect("confirm").is_ack(),
            "message {i} not acked by the broker"
        );
    }

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
