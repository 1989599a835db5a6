//! The backlog on spillway's own `/metrics`, as a Prometheus-only team scrapes it: the real
//! `spillway serve --no-auth`, a Kafka topic with chosen commits, a RabbitMQ queue read over
//! the management API and over AMQP, a JetStream consumer with pending and unacknowledged
//! messages, and triggers on brokers that are down, which export no backlog at all.

mod common;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicGetOptions;

use common::serve::Server;

/// Starts `spillway serve --no-auth` polling every second with `scaled_objects` (YAML list
/// items); returns it, its config file and its `/metrics` URL once it answers.
async fn start_serve(scaled_objects: &str) -> (Server, std::path::PathBuf, String) {
    let started = common::serve::start("backlog", scaled_objects).await;
    let url = format!("http://127.0.0.1:{}/metrics", started.metrics_port);
    common::eventually("/metrics to answer", Duration::from_secs(30), || async {
        reqwest::get(&url).await.ok()?.error_for_status().ok()
    })
    .await;
    (started.server, started.config, url)
}

async fn scrape(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// The sample lines of `text` of the family `name` (exactly: not its `_seconds` sibling).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).collect()
}

/// The value of the one sample of `name` whose labels are exactly `labels`.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test]
async fn backlog_of_kafka_rabbitmq_and_jetstream_is_exported_exactly() {
    // Kafka: 3 partitions of 10, 20 and 5 records stamped 10 minutes ago; the group is 6, 0
    // and 5 behind.
    let topic = common::kafka::create_topic(3).await;
    let group = common::unique_name("backlog-group");
    let age = Duration::from_secs(600);
    common::kafka::produce(&topic, &[10, 20, 5], age).await;
    common::kafka::commit(&group, &[(&topic, 0, 4), (&topic, 1, 20), (&topic, 2, 0)]);

    // RabbitMQ: 37 messages, 3 of them taken and not acknowledged.
    const MESSAGES: usize = 37;
    let (_connection, channel, queue) =
        common::rabbitmq::queue_with_messages("backlog", MESSAGES).await;
    for _ in 0..3 {
        channel
            .basic_get(&queue, BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get")
            .expect("a message");
    }
    let amqp_port = common::rabbitmq::amqp_port();
    // The management API wants credentials, which only `hostFromSecret` may carry.
    let management = std::env::temp_dir().join(common::unique_name("backlog-rabbitmq-url"));
    std::fs::write(
        &management,
        format!(
            "{}/\n",
            common::endpoint("SPILLWAY_RABBITMQ_HTTP").trim_end_matches('/')
        ),
    )
    .unwrap();

    // JetStream: 20 messages, 4 delivered and not acknowledged.
    let (stream, mut pulls) = common::nats::TestStream::create("backlog", &["worker"], 20).await;
    let worker = pulls.remove(0);
    let stream_name = stream.name.clone();
    let mut batch = worker
        .fetch()
        .max_messages(4)
        .messages()
        .await
        .expect("fetch");
    let mut unacked = Vec::new();
    while let Some(message) = batch.next().await {
        unacked.push(message.expect("message"));
    }
    assert_eq!(unacked.len(), 4);
    let nats_monitor = common::endpoint("SPILLWAY_NATS_MONITOR")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let bootstrap = common::kafka::bootstrap();
    let (server, config, url) = start_serve(&format!(
        "  - name: backlog
    triggers:
      - kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 1}}
      - rabbitmq: {{hostFromSecret: {{file: \"{}\"}}, queueName: {queue}, value: 10}}
      - rabbitmq: {{host: \"amqp://127.0.0.1:{amqp_port}/\", queueName: {queue}, value: 10}}
      - natsJetStream: {{natsServerMonitoringEndpoint: \"{nats_monitor}\", stream: {stream_name}, consumer: worker}}
  - name: down
    triggers:
      - kafka: {{bootstrapServers: \"127.0.0.1:1\", consumerGroup: {group}, topic: {topic}, timeout: 500}}
      - rabbitmq: {{host: \"http://127.0.0.1:1/\", queueName: {queue}, value: 10, timeout: 500}}
      - rabbitmq: {{host: \"amqp://127.0.0.1:1/\", queueName: {queue}, value: 10, timeout: 500}}
      - natsJetStream: {{natsServerMonitoringEndpoint: \"127.0.0.1:1\", stream: {stream_name}, consumer: worker}}
",
        management.display()
    ))
    .await;

    let owner = |trigger: usize| {
        format!(r#"namespace="default",scaled_object="backlog",trigger="{trigger}""#)
    };
    let partition = |p: i32| {
        format!(
            r#"{},consumer_group="{group}",topic="{topic}",partition="{p}""#,
            owner(0)
        )
    };
    let rabbit = |trigger: usize| format!(r#"{},vhost="/",queue="{queue}""#, owner(trigger));
    let nats = format!(r#"{},stream="{stream_name}",consumer="worker""#, owner(3));

    // The management API samples queues every few seconds, so wait for its figures to settle;
    // the down triggers must have failed at least once by then.
    let text = common::eventually(
        "every backlog series at its value, and the down triggers polled",
        Duration::from_secs(60),
        || async {
            let text = scrape(&url).await?;
            let settled = value(&text, "spillway_kafka_consumer_lag", &partition(0)) == Some(6.0)
                && value(&text, "spillway_rabbitmq_queue_messages_unacked", &rabbit(1)) == Some(3.0)
                && value(&text, "spillway_rabbitmq_queue_messages_ready", &rabbit(1)) == Some(34.0)
                && value(&text, "spillway_rabbitmq_queue_messages_ready", &rabbit(2)).is_some()
                // Rates come with message_stats, which may follow the counts by a sample.
                && value(&text, "spillway_rabbitmq_queue_deliver_rate", &rabbit(1)).is_some()
                && value(&text, "spillway_rabbitmq_queue_publish_rate", &rabbit(1)).is_some()
                && value(&text, "spillway_nats_jetstream_consumer_pending", &nats).is_some();
            let down_polled = (0..4).all(|i| {
                let prefix = format!(
                    r#"spillway_trigger_consecutive_failures{{namespace="default",scaled_object="down",trigger="{i}","#
                );
                text.lines()
                    .any(|l| l.starts_with(&prefix) && !l.ends_with(" 0"))
            });
            (settled && down_polled).then_some(text)
        },
    )
    .await;
    for line in text.lines().filter(|l| {
        [
            "spillway_kafka",
            "spillway_rabbitmq",
            "spillway_nats",
            "spillway_backlog",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        println!("{line}");
    }

    // Kafka: records behind per partition, exactly; the age where the group lags.
    assert_eq!(
        samples(&text, "spillway_kafka_consumer_lag"),
        [(0, 6), (1, 0), (2, 5)]
            .map(|(p, lag)| format!("spillway_kafka_consumer_lag{{{}}} {lag}", partition(p)))
    );
    assert_eq!(
        samples(&text, "spillway_kafka_consumer_lag_seconds").len(),
        3
    );
    assert_eq!(
        value(&text, "spillway_kafka_consumer_lag_seconds", &partition(1)),
        Some(0.0),
        "no lag, no age"
    );
    for p in [0, 2] {
        let seconds = value(&text, "spillway_kafka_consumer_lag_seconds", &partition(p)).unwrap();
        assert!(
            (600.0..700.0).contains(&seconds),
            "partition {p}: the records are 10 minutes old, read {seconds}"
        );
    }

    // RabbitMQ over the management API: every figure; over AMQP the ready count only.
    assert_eq!(
        samples(&text, "spillway_rabbitmq_queue_messages"),
        [format!(
            "spillway_rabbitmq_queue_messages{{{}}} 37.0",
            rabbit(1)
        )]
    );
    assert_eq!(
        samples(&text, "spillway_rabbitmq_queue_messages_ready"),
        [
            format!(
                "spillway_rabbitmq_queue_messages_ready{{{}}} 34.0",
                rabbit(1)
            ),
            format!(
                "spillway_rabbitmq_queue_messages_ready{{{}}} 34.0",
                rabbit(2)
            ),
        ]
    );
    assert_eq!(
        samples(&text, "spillway_rabbitmq_queue_messages_unacked"),
        [format!(
            "spillway_rabbitmq_queue_messages_unacked{{{}}} 3.0",
            rabbit(1)
        )]
    );
    for rate in ["publish_rate", "deliver_rate"] {
        let name = format!("spillway_rabbitmq_queue_{rate}");
        assert_eq!(samples(&text, &name).len(), 1, "{name}");
        assert!(
            value(&text, &name, &rabbit(1)).is_some_and(|r| r >= 0.0),
            "{name}"
        );
    }

    // JetStream: 16 not delivered, 4 delivered and not acknowledged.
    assert_eq!(
        samples(&text, "spillway_nats_jetstream_consumer_pending"),
        [format!(
            "spillway_nats_jetstream_consumer_pending{{{nats}}} 16"
        )]
    );
    assert_eq!(
        samples(&text, "spillway_nats_jetstream_consumer_ack_pending"),
        [format!(
            "spillway_nats_jetstream_consumer_ack_pending{{{nats}}} 4"
        )]
    );

    // Nothing was left out; the down triggers export no backlog, not even a zero.
    assert_eq!(
        samples(&text, "spillway_backlog_series_truncated"),
        (0..4)
            .map(|i| format!("spillway_backlog_series_truncated{{{}}} 0", owner(i)))
            .collect::<Vec<_>>()
    );
    let backlog_lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            [
                "spillway_kafka",
                "spillway_rabbitmq",
                "spillway_nats",
                "spillway_backlog",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(
        backlog_lines
            .iter()
            .all(|l| !l.contains(r#"scaled_object="down""#)),
        "{backlog_lines:#?}"
    );

    drop(server);
    std::fs::remove_file(&config).unwrap();
    std::fs::remove_file(&management).unwrap();
    drop(unacked);
    stream.delete().await;
    channel
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
    common::kafka::delete_topic(&topic).await;
}
