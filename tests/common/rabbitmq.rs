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

/// A connection to `url` (an AMQP URL with its vhost) and a channel in confirm mode.
pub async fn confirmed_channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("AMQP connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    (connection, channel)
}

/// Declares `queue` (durable: a broker restart keeps it and its persistent messages) and
/// publishes `count` messages, each confirmed by the broker (persistent when durable).
pub async fn declare_with_messages(channel: &Channel, queue: &str, durable: bool, count: usize) {
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    let properties = if durable {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    for i in 0..count {
        let confirm = channel
            .basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                b"job",
                properties.clone(),
            )
            .await
            .expect("publish");
        assert!(
            confirm.await.expect("confirm").is_ack(),
            "message {i} not acked by the broker"
        );
    }
}

/// Declares a fresh queue named after `prefix` and publishes `count` messages, each confirmed
/// by the broker. The connection and channel are returned so the caller can clean up.
pub async fn queue_with_messages(prefix: &str, count: usize) -> (Connection, Channel, String) {
    let queue = super::unique_name(prefix);
    let (connection, channel) = confirmed_channel(&super::endpoint("SPILLWAY_RABBITMQ_AMQP")).await;
    declare_with_messages(&channel, &queue, false, count).await;
    (connection, channel, queue)
}
