//! One broken broker never freezes, fails or ages another trigger's metric: the real
//! `spillway serve --no-auth` polls healthy Kafka, RabbitMQ, NATS JetStream, Prometheus and
//! cron triggers next to triggers of every kind whose endpoint is a tarpit (a socket that
//! accepts and never answers), in separate scaled objects.

mod common;

use std::time::{Duration, Instant};

async fn scrape(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// The value of the sample of `name` whose labels start with `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("a number"))
}

fn polls(text: &str, object: &str) -> f64 {
    sample(
        text,
        "spillway_trigger_polls_total",
        &format!(r#"namespace="default",scaled_object="{object}","#),
    )
    .unwrap_or(0.0)
}

/// The served metric name of `object`'s first trigger, from its cache-age series.
fn metric_of(text: &str, object: &str) -> String {
    let prefix =
        format!(r#"spillway_cache_age_seconds{{namespace="default",scaled_object="{object}","#);
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no cache age for {object}:\n{text}"));
    let start = line.find(r#"metric=""#).expect("a metric label") + r#"metric=""#.len();
    line[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_hung_endpoint_neither_slows_nor_ages_the_healthy_triggers() {
    // Backlogs the healthy triggers read.
    let topic = common::kafka::create_topic(2).await;
    let group = common::unique_name("isolation-group");
    common::kafka::produce(&topic, &[8, 4], Duration::ZERO).await;
    common::kafka::commit(&group, &[(&topic, 0, 2), (&topic, 1, 0)]);
    let (_connection, _channel, queue) =
        common::rabbitmq::queue_with_messages("isolation", 23).await;
    let amqp_port = common::rabbitmq::amqp_port();
    let (stream, _pulls) = common::nats::TestStream::create("isolation", &["worker"], 6).await;
    let nats_monitor = common::endpoint("SPILLWAY_NATS_MONITOR")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let prometheus = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let bootstrap = common::kafka::bootstrap();
    let (hung, tarpit_task) = common::tarpit().await;

    let healthy = ["kafka", "rabbit", "nats", "query", "office"];
    let started = common::serve::start(
        "isolation",
        &format!(
            "  - name: kafka
    triggers:
      - kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 10}}
  - name: rabbit
    triggers:
      - rabbitmq: {{host: \"amqp://127.0.0.1:{amqp_port}/\", queueName: {queue}, value: 10}}
  - name: nats
    triggers:
      - natsJetStream: {{natsServerMonitoringEndpoint: \"{nats_monitor}\", stream: {stream}, consumer: worker}}
  - name: query
    triggers:
      - prometheus: {{serverAddress: \"{prometheus}\", query: \"vector(5)\", threshold: 1}}
  - name: office
    triggers:
      - cron: {{timezone: UTC, start: \"0 0 * * *\", end: \"59 23 * * *\", desiredReplicas: 3}}
  - name: hung-prometheus
    triggers:
      - prometheus: {{serverAddress: \"http://{hung}\", query: up, threshold: 1, timeout: 60000}}
  - name: hung-rabbitmq
    triggers:
      - rabbitmq: {{host: \"http://{hung}/\", queueName: q, value: 10, timeout: 60000}}
  - name: hung-kafka
    triggers:
      - kafka: {{bootstrapServers: \"{hung}\", consumerGroup: g, topic: t, timeout: 60000}}
  - name: hung-nats
    triggers:
      - natsJetStream: {{natsServerMonitoringEndpoint: \"{hung}\", stream: s, consumer: c}}
",
            stream = stream.name,
        ),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/metrics", started.metrics_port);

    // Every healthy trigger has its value, whatever the tarpit does.
    let expected = [
        ("kafka", 10.0),
        ("rabbit", 23.0),
        ("nats", 6.0),
        ("query", 5.0),
        ("office", 3.0),
    ];
    let value = |text: &str, object: &str| {
        sample(
            text,
            "spillway_trigger_value",
            &format!(r#"namespace="default",scaled_object="{object}","#),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(&url).await.unwrap_or_default();
        let found: Vec<(&str, Option<f64>)> = expected
            .iter()
            .map(|(o, _)| (*o, value(&text, o)))
            .collect();
        if expected
            .iter()
            .zip(&found)
            .all(|((_, want), (_, got))| Some(*want) == *got)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthy triggers not at their values after 30 s: {found:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Over 20 s the healthy triggers keep their 1 s pace.
    let first = scrape(&url).await.expect("/metrics");
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let text = scrape(&url).await.expect("/metrics");
    let seconds = from.elapsed().as_secs_f64();
    for object in healthy {
        let rate = (polls(&text, object) - polls(&first, object)) / seconds;
        assert!(
            rate >= 0.85,
            "{object} polled {rate:.2} times a second next to a hung endpoint, not ~1"
        );
    }
    for (object, want) in expected {
        assert_eq!(value(&text, object), Some(want), "{object}");
        let age = sample(
            &text,
            "spillway_cache_age_seconds",
            &format!(r#"namespace="default",scaled_object="{object}","#),
        )
        .expect("an age");
        assert!(age < 3.0, "{object}'s reading is {age} s old");
    }

    // The hung triggers, 20 s in, are past their freshness bound (15 s): stale, no value, a
    // 503 from the metrics API, never a number.
    for hung in [
        "hung-prometheus",
        "hung-rabbitmq",
        "hung-kafka",
        "hung-nats",
    ] {
        assert_eq!(value(&text, hung), None, "{hung} has no value");
        let stale = sample(
            &text,
            "spillway_poll_errors_total",
            &format!(r#"namespace="default",scaled_object="{hung}",trigger="0","#),
        );
        assert!(stale.is_some(), "{hung} counted as failing:\n{text}");
    }
    let stale = sample(
        &text,
        "spillway_poll_errors_total",
        r#"namespace="default",scaled_object="hung-prometheus",trigger="0",broker="prometheus",reason="stale""#,
    );
    assert!(
        stale.is_some_and(|n| n >= 1.0),
        "a 60 s round is marked stale:\n{text}"
    );
    let client = common::https_client();
    let base = format!(
        "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default",
        started.port
    );
    let response = client
        .get(format!("{base}/{}", metric_of(&text, "hung-prometheus")))
        .query(&[(
            "labelSelector",
            "scaledobject.spillway.dev/name=hung-prometheus",
        )])
        .send()
        .await
        .expect("the metrics API answers");
    let code = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("Status JSON");
    assert_eq!(code, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no reading newer than")),
        "{body}"
    );
    let response = client
        .get(format!("{base}/{}", metric_of(&text, "office")))
        .query(&[("labelSelector", "scaledobject.spillway.dev/name=office")])
        .send()
        .await
        .expect("the metrics API answers");
    assert_eq!(response.status().as_u16(), 200);

    drop(started);
    tarpit_task.abort();
    stream.delete().await;
}
