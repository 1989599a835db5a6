//! `spillway watch --once` and `spillway check` as a user runs them: the binary, a config
//! file, real brokers with a real backlog.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{kafka, rabbitmq};

fn spillway(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .env(common::ALLOW_LOOPBACK.0, common::ALLOW_LOOPBACK.1)
        .args(args)
        .output()
        .expect("run spillway");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn watch_once_shows_backlogs_and_replicas() {
    let bootstrap = kafka::bootstrap();
    let topic = kafka::create_topic(4).await;
    let group = common::unique_name("watch-group");
    kafka::produce(&topic, &[100; 4], Duration::ZERO).await;
    let commits: Vec<(&str, i32, i64)> = (0..4).map(|p| (topic.as_str(), p, 25)).collect();
    kafka::commit(&group, &commits);
    let (_connection, channel, queue) = rabbitmq::queue_with_messages("watch", 45).await;
    let amqp_port = rabbitmq::amqp_port();

    let config = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("watch")));
    std::fs::write(
        &config,
        format!(
            "pollingInterval: 5\nscaledObjects:\n  - name: orders\n    maxReplicaCount: 20\n    triggers:\n      - kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 30}}\n  - name: jobs\n    triggers:\n      - rabbitmq: {{host: \"amqp://127.0.0.1:{amqp_port}/\", queueName: {queue}, value: 10}}\n  - name: broken\n    triggers:\n      - kafka: {{bootstrapServers: \"127.0.0.1:1\", consumerGroup: g, topic: t, timeout: 500}}\n"
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = spillway(&["watch", "--once", "--config", config.to_str().unwrap()]);
    std::fs::remove_file(&config).unwrap();
    assert!(ok, "watch failed: {stderr}");
    println!("{stdout}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .to_owned()
    };
    let columns = |line: String| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // 4 partitions x 75 lag = 300 = the cap (4 partitions x 30), asking 10 replicas... capped to 4 by KEDA's rule.
    let orders = columns(row("default/orders"));
    assert_eq!(
        &orders[2..6],
        ["120", "30", "yes", &orders[5]],
        "{orders:?}"
    );
    assert_eq!(orders[6], "4", "{orders:?}");
    let jobs = columns(row("default/jobs"));
    assert_eq!(
        (&jobs[2][..], &jobs[3][..], &jobs[6][..]),
        ("45", "10", "5"),
        "{jobs:?}"
    );
    // A broker that is down holds the scale: never zero.
    let broken = row("default/broken");
    assert!(
        broken.contains("error") && broken.contains("hold"),
        "{broken}"
    );

    channel
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
    kafka::delete_topic(&topic).await;
}

#[test]
fn check_rejects_a_bad_config_with_file_line_and_field() {
    let config = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("bad")));
    std::fs::write(&config, "scaledObjects:\n  - name: orders\n    triggers:\n      - kafka: {bootstrapServers: \"k:9092\", consumerGroup: g, lagThreshold: 0}\n").unwrap();
    let (ok, stdout, stderr) = spillway(&["check", "--config", config.to_str().unwrap()]);
    std::fs::remove_file(&config).unwrap();
    assert!(!ok, "a bad config must fail");
    assert!(stdout.is_empty(), "nothing printed as valid: {stdout}");
    let path = config.display().to_string();
    assert!(
        stderr.contains(&format!("{path}:4:"))
            && stderr.contains(
                "scaledObjects[0].triggers[0].kafka.lagThreshold: must be positive number"
            ),
        "{stderr}"
    );
}
