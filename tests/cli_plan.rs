//! `spillway plan` as a user runs it: the binary on the ScaledObject examples of
//! `deploy/examples/` with values given by hand, on bad input, and with `--live` on a real queue.
//!
//! Every expected number is worked out beside it from the HPA's rules
//! (docs/k8s-metrics-api.md): ceil(value / target) per trigger, the tolerance band
//! [0.9, 1.1] on value / (target × current), min/max, and one step's limits.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::rabbitmq;

fn spillway(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .env(common::ALLOW_LOOPBACK.0, common::ALLOW_LOOPBACK.1)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run spillway");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/examples")
        .join(name)
        .display()
        .to_string()
}

/// The numbers of deploy/examples/kafka.yaml the expectations below are worked out from.
fn assume_kafka_example() {
    let text = std::fs::read_to_string(example("kafka.yaml")).unwrap();
    for line in [
        "minReplicaCount: 0",
        "maxReplicaCount: 24",
        "cooldownPeriod: 300",
        "lagThreshold: 100",
    ] {
        assert!(
            text.contains(line),
            "deploy/examples/kafka.yaml changed ({line} is gone): update this test's numbers"
        );
    }
}

/// The `REPLICAS` and `WHY` of a step row.
fn step(stdout: &str, name: &str) -> (String, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no step {name}:\n{stdout}"));
    let rest = line[name.len()..].trim_start();
    let (replicas, why) = rest.split_once("  ").unwrap_or((rest, ""));
    (replicas.to_owned(), why.trim().to_owned())
}

#[test]
fn a_backlog_from_two_replicas_is_limited_by_the_scale_up_rule() {
    assume_kafka_example();
    let (code, stdout, stderr) = spillway(&[
        "plan",
        "-f",
        &example("kafka.yaml"),
        "--value",
        "s0=450",
        "--current-replicas",
        "2",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    println!("{stdout}");
    assert!(stdout.starts_with("default/orders-consumer: 2 replicas now"));
    // 450 / (100 × 2) = 2.25, outside [0.9, 1.1]: ceil(450 / 100) = 5.
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("s0 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "s0",
            "s0-kafka-orders",
            "450",
            "100",
            "yes",
            "2.25",
            "outside",
            "[0.9,",
            "1.1]",
            "5",
            "ceil(450",
            "/",
            "100)",
            "=",
            "5"
        ]
    );
    assert_eq!(step(&stdout, "metrics").0, "5");
    assert_eq!(step(&stdout, "min/max").0, "5");
    // Active (450 > activation 0): no scale to zero.
    assert_eq!(step(&stdout, "scale to zero").0, "-");
    // No behavior in the example: a step up reaches at most max(2 × 2, 4) = 4.
    assert_eq!(
        step(&stdout, "rate limit"),
        (
            "4".into(),
            "no behavior: a step up reaches at most max(2 × 2, 4) = 4 (ScaleUpLimit: 4 instead of 5)"
                .into()
        )
    );
    assert_eq!(
        step(&stdout, "result"),
        ("4".into(), "from 2 to 4 in this sync".into())
    );
    assert!(
        stdout.contains("it goes on toward 5 in the next syncs"),
        "{stdout}"
    );
}

#[test]
fn replicas_settle_capped_at_max_or_at_zero_when_idle() {
    assume_kafka_example();
    let kafka = example("kafka.yaml");
    // Without a current count: ceil(450 / 100) = 5 is where it settles.
    let (code, stdout, _) = spillway(&["plan", "-f", &kafka, "--value", "s0=450"]);
    assert_eq!(code, Some(0));
    assert_eq!(step(&stdout, "result").0, "5", "{stdout}");
    assert!(stdout.contains("Give --current-replicas"), "{stdout}");

    // ceil(3000 / 100) = 30 > maxReplicaCount 24; from 20, max(2 × 20, 4) = 40 does not limit.
    let (code, stdout, _) = spillway(&[
        "plan",
        "-f",
        &kafka,
        "--value",
        "s0=3000",
        "--current-replicas",
        "20",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(
        step(&stdout, "min/max"),
        ("24".into(), "capped at maxReplicaCount 24".into())
    );
    assert_eq!(step(&stdout, "result").0, "24", "{stdout}");

    // No lag: inactive, so 0 after the 300 s cooldown; until then the HPA's 300 s downscale
    // window keeps 3.
    let (code, stdout, _) = spillway(&[
        "plan",
        "-f",
        &kafka,
        "--value",
        "s0=0",
        "--current-replicas",
        "3",
    ]);
    assert_eq!(code, Some(0));
    let (replicas, why) = step(&stdout, "scale to zero");
    assert_eq!(replicas, "0");
    assert!(why.contains("cooldownPeriod 300 s"), "{why}");
    assert_eq!(step(&stdout, "result").0, "3", "{stdout}");
}

#[test]
fn a_manifest_with_its_trigger_authentication_is_planned() {
    // deploy/examples/rabbitmq-trigger-authentication.yaml: a TriggerAuthentication, then a
    // ScaledObject with value 20 whose URL comes through it; ceil(100 / 20) = 5.
    let (code, stdout, stderr) = spillway(&[
        "plan",
        "-f",
        &example("rabbitmq-trigger-authentication.yaml"),
        "--value",
        "s0=100",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("default/orders-worker: "), "{stdout}");
    assert_eq!(step(&stdout, "result").0, "5", "{stdout}");
}

#[test]
fn a_behavior_window_holds_a_scale_down() {
    // deploy/examples/prometheus.yaml: threshold 100, minReplicaCount 2, scaleDown window 120 s.
    let (code, stdout, stderr) = spillway(&[
        "plan",
        "-f",
        &example("prometheus.yaml"),
        "--value",
        "s0=420",
        "--current-replicas",
        "10",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    // 420 / (100 × 10) = 0.42: ceil(420 / 100) = 5; the window keeps 10 for 120 s.
    assert_eq!(step(&stdout, "metrics").0, "5", "{stdout}");
    let (replicas, why) = step(&stdout, "stabilization");
    assert_eq!(replicas, "10");
    assert!(
        why.starts_with("scaleDown.stabilizationWindowSeconds 120"),
        "{why}"
    );
    assert_eq!(step(&stdout, "result").0, "10");
    assert!(stdout.contains("then it goes to 5"), "{stdout}");
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let kafka = example("kafka.yaml");
    // No trigger s3 in a one-trigger object.
    let (code, stdout, stderr) = spillway(&["plan", "-f", &kafka, "--value", "s3=10"]);
    assert_ne!(code, Some(0));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("--value s3: default/orders-consumer has no trigger s3 (its triggers: s0)"),
        "{stderr}"
    );
    // A negative backlog.
    let (code, _, stderr) = spillway(&["plan", "-f", &kafka, "--value", "s0=-5"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("0 or more"), "{stderr}");
    // No value at all.
    let (code, _, stderr) = spillway(&["plan", "-f", &kafka]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--value"), "{stderr}");

    // A ScaledObject that fails validation: minReplicaCount above maxReplicaCount.
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("bad-so")));
    let text = std::fs::read_to_string(&kafka)
        .unwrap()
        .replace("minReplicaCount: 0", "minReplicaCount: 30");
    std::fs::write(&file, text).unwrap();
    let (code, stdout, stderr) =
        spillway(&["plan", "-f", file.to_str().unwrap(), "--value", "s0=1"]);
    std::fs::remove_file(&file).unwrap();
    assert_ne!(code, Some(0));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(
            "default/orders-consumer: spec.minReplicaCount: 30 is above maxReplicaCount 24"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn live_reads_the_backlog_once() {
    let (_connection, channel, queue) = rabbitmq::queue_with_messages("plan", 45).await;
    let port = rabbitmq::amqp_port();
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("plan-live")));
    std::fs::write(
        &file,
        format!(
            "apiVersion: spillway.dev/v1alpha1\nkind: ScaledObject\nmetadata: {{name: jobs-worker, namespace: shop}}\nspec:\n  scaleTargetRef: {{name: jobs-worker}}\n  maxReplicaCount: 10\n  triggers:\n    - rabbitmq: {{host: \"amqp://127.0.0.1:{port}/\", queueName: {queue}, value: 10}}\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = spillway(&[
        "plan",
        "-f",
        file.to_str().unwrap(),
        "--live",
        "--current-replicas",
        "1",
    ]);
    std::fs::remove_file(&file).unwrap();
    channel
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    println!("{stdout}");
    // 45 ready messages / (10 × 1) = 4.5: ceil(45 / 10) = 5; from 1, max(2 × 1, 4) = 4.
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("s0 "))
        .unwrap_or_else(|| panic!("no trigger row:\n{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[2..6], ["45", "10", "yes", "4.5"], "{stdout}");
    assert_eq!(step(&stdout, "metrics").0, "5");
    assert_eq!(
        step(&stdout, "result"),
        ("4".into(), "from 1 to 4 in this sync".into())
    );
}

#[test]
fn live_fallback_follows_its_behavior_from_the_current_replicas() {
    // A RabbitMQ on a port nobody listens on fails its one live poll; failureThreshold 0 puts
    // it on fallback at once. At 5 replicas with fallback.replicas 3 and target 10: static
    // serves 30 and goes to 3; currentReplicasIfHigher serves max(5, 3) × 10 = 50 and stays;
    // currentReplicasIfLower serves min(5, 3) × 10 = 30 and goes to 3 (the metrics step: the
    // downscale window delays the result).
    for (behavior, value, result) in [
        ("static", "30", "3"),
        ("currentReplicasIfHigher", "50", "5"),
        ("currentReplicasIfLower", "30", "3"),
    ] {
        let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("fallback")));
        std::fs::write(
            &file,
            format!(
                "apiVersion: spillway.dev/v1alpha1\nkind: ScaledObject\nmetadata: {{name: worker, namespace: shop}}\nspec:\n  scaleTargetRef: {{name: worker}}\n  minReplicaCount: 1\n  maxReplicaCount: 10\n  fallback: {{failureThreshold: 0, replicas: 3, behavior: {behavior}}}\n  triggers:\n    - rabbitmq: {{host: 'amqp://127.0.0.1:1/', queueName: jobs, value: 10}}\n"
            ),
        )
        .unwrap();
        let (code, stdout, stderr) = spillway(&[
            "plan",
            "-f",
            file.to_str().unwrap(),
            "--live",
            "--current-replicas",
            "5",
        ]);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(code, Some(0), "{stderr}");
        let row = stdout
            .lines()
            .find(|l| l.starts_with("s0 "))
            .unwrap_or_else(|| panic!("no trigger row:\n{stdout}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[2], value, "{behavior}: {row}");
        assert_eq!(step(&stdout, "metrics").0, result, "{behavior}:\n{stdout}");
    }
}
