//! How a hung broker affects the healthy triggers beside it: the real `spillway serve`
//! (release build) polls healthy Kafka, RabbitMQ, NATS JetStream, Prometheus and cron triggers
//! every second next to 0, 1 and 10 tarpit endpoints (sockets that accept and never answer),
//! each read by a Prometheus and a RabbitMQ trigger with a 60 s timeout. The figure is each
//! healthy trigger's polls per minute over the configured 60, from `spillway_trigger_polls_total`.
//!
//! `cargo bench --bench fault_isolation` (services up) prints a table; nothing is asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

/// How long each row measures, after a warm-up.
const WINDOW: Duration = Duration::from_secs(60);
/// Healthy scaled objects of each kind.
const HEALTHY_PER_KIND: usize = 4;

/// `spillway_trigger_polls_total` of every healthy object (`h-*`), by object.
async fn polls(url: &str) -> Vec<(String, f64)> {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("spillway_trigger_polls_total{"))
        .filter_map(|l| {
            let object = l.split("scaled_object=\"").nth(1)?.split('"').next()?;
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            object.starts_with("h-").then(|| (object.to_owned(), n))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let topic = common::kafka::create_topic(2).await;
    let group = common::unique_name("bench-isolation");
    common::kafka::produce(&topic, &[5, 5], Duration::ZERO).await;
    common::kafka::commit(&group, &[(&topic, 0, 0), (&topic, 1, 0)]);
    let (_connection, _channel, queue) =
        common::rabbitmq::queue_with_messages("bench-isolation", 10).await;
    let amqp_port = common::rabbitmq::amqp_port();
    let (stream, _pulls) = common::nats::TestStream::create("bench-isolation", &["w"], 3).await;
    let nats = common::endpoint("SPILLWAY_NATS_MONITOR")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let prometheus = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let bootstrap = common::kafka::bootstrap();

    println!(
        "healthy triggers: {} ({HEALTHY_PER_KIND} each of kafka, rabbitmq, nats, prometheus, cron), pollingInterval 1 s, window {} s",
        HEALTHY_PER_KIND * 5,
        WINDOW.as_secs()
    );
    println!(
        "{:<16} {:>18} {:>18} {:>18}",
        "hung endpoints", "polls/min (min)", "polls/min (mean)", "ratio to 60 (min)"
    );
    for hung in [0usize, 1, 10] {
        let mut tarpits = Vec::new();
        let mut objects = String::new();
        for i in 0..HEALTHY_PER_KIND {
            objects.push_str(&format!(
                "  - name: h-kafka-{i}\n    triggers:\n      - kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 5}}\n\
                 \x20 - name: h-rabbitmq-{i}\n    triggers:\n      - rabbitmq: {{host: \"amqp://127.0.0.1:{amqp_port}/\", queueName: {queue}, value: 5}}\n\
                 \x20 - name: h-nats-{i}\n    triggers:\n      - natsJetStream: {{natsServerMonitoringEndpoint: \"{nats}\", stream: {}, consumer: w}}\n\
                 \x20 - name: h-prometheus-{i}\n    triggers:\n      - prometheus: {{serverAddress: \"{prometheus}\", query: \"vector({i})\", threshold: 1}}\n\
                 \x20 - name: h-cron-{i}\n    triggers:\n      - cron: {{timezone: UTC, start: \"0 0 * * *\", end: \"59 23 * * *\", desiredReplicas: {}}}\n",
                stream.name,
                i + 1
            ));
        }
        for j in 0..hung {
            let (address, task) = common::tarpit().await;
            tarpits.push(task);
            objects.push_str(&format!(
                "  - name: hung-{j}\n    triggers:\n      - prometheus: {{serverAddress: \"http://{address}\", query: up, threshold: 1, timeout: 60000}}\n      - rabbitmq: {{host: \"http://{address}/\", queueName: q, value: 5, timeout: 60000}}\n"
            ));
        }
        let started = common::serve::start("bench-isolation", &objects).await;
        let url = format!("http://127.0.0.1:{}/metrics", started.metrics_port);
        // Warm-up: first polls done, the hung rounds in flight.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = polls(&url).await;
        let from = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let after = polls(&url).await;
        let minutes = from.elapsed().as_secs_f64() / 60.0;
        let rates: Vec<f64> = after
            .iter()
            .map(|(object, n)| {
                let was = before
                    .iter()
                    .find(|(o, _)| o == object)
                    .map_or(0.0, |(_, n)| *n);
                (n - was) / minutes
            })
            .collect();
        assert_eq!(
            rates.len(),
            HEALTHY_PER_KIND * 5,
            "every healthy trigger polled"
        );
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        println!("{hung:<16} {min:>18.1} {mean:>18.1} {:>18.2}", min / 60.0);
        drop(started);
        for task in tarpits {
            task.abort();
        }
    }
    stream.delete().await;
}
