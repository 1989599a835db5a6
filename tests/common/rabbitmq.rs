//! RabbitMQ test fixtures: queues holding a known number of confirmed messages.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The AMQP port of the harness's RabbitMQ, for triggers that name `amqp://127.0.0.1:PORT/`.
pub fn amqp_port() -> String {
    let amqp = super::endpoint("SPILLWAY_RABBITMQ_AMQP");
    let authority = amqp.rsplit('@').next().unwrap_or(&amqp);
    authority
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("port in SPILLWAY_RABBITMQ_AMQP")
        .to_owned()
}

/// Declares a fresh queue named after `prefix` and publishes `count` messages, each confirmed
/// by the broker. The connection and channel are returned so the caller can clean up.
pub async fn queue_with_messages(prefix: &str, count: usize) -> (Connection, Channel, String) {
    let queue = super::unique_name(prefix);
    let connection = Connection::connect(
        &super::endpoint("SPILLWAY_RABBITMQ_AMQP"),
        ConnectionProperties::default(),
    )
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
    for i in 0..count {
        let confirm = channel
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                b"job",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(
            confirm.await.expect("confirm").is_ack(),
            "message {i} not acked by the broker"
        );
    }
    (connection, channel, queue)
}
