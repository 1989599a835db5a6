//! `spillway serve` as a user runs it: the binary, a config file, a real RabbitMQ backlog, and
//! the external metrics API read over HTTPS as the aggregator would.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server when the test ends, passed or failed.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_answers_the_backlog_over_https_and_503_for_a_down_broker() {
    const MESSAGES: usize = 37;
    let (_connection, channel, queue) =
        common::rabbitmq::queue_with_messages("serve", MESSAGES).await;
    let amqp_port = common::rabbitmq::amqp_port();

    let port = free_port();
    let metrics_port = free_port();
    let config = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("serve")));
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\npollingInterval: 1\nscaledObjects:\n  - name: jobs\n    triggers:\n      - rabbitmq: {{host: \"amqp://127.0.0.1:{amqp_port}/\", queueName: {queue}, value: 10}}\n  - name: broken\n    triggers:\n      - rabbitmq: {{host: \"amqp://127.0.0.1:1/\", queueName: gone, value: 10, timeout: 500}}\n"
        ),
    )
    .unwrap();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start spillway serve"),
    );

    // The self-signed certificate is accepted here only: the test has no CA to trust.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");

    let health = common::eventually(
        "the server to answer /healthz over plain HTTP",
        Duration::from_secs(30),
        || async {
            let response = client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .ok()?;
            response.text().await.ok()
        },
    )
    .await;
    assert_eq!(health, "ok");

    let discovery: serde_json::Value = client
        .get(format!("{base}/apis/external.metrics.k8s.io/v1beta1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metric = format!("s0-rabbitmq-{queue}");
    assert!(
        discovery["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == metric.as_str()),
        "{metric} not in {discovery}"
    );

    let url = format!(
        "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}?labelSelector=scaledobject.spillway.dev%2Fname%3Djobs"
    );
    let list = common::eventually(
        &format!("{metric} to show {MESSAGES}"),
        Duration::from_secs(30),
        || async {
            let response = client.get(&url).send().await.ok()?;
            let body: serde_json::Value = response.json().await.ok()?;
            (body["items"][0]["value"] == MESSAGES.to_string().as_str()).then_some(body)
        },
    )
    .await;
    println!("{list}");
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["items"][0]["metricLabels"]["scaledobject.spillway.dev/name"],
        "jobs"
    );

    // A broker that is down is a 503 Status naming the error, never a value of 0; wait for
    // its first poll to fail (before it, the answer is 503 "no reading yet").
    let broken =
        format!("{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/s0-rabbitmq-gone");
    let status = common::eventually(
        "the down broker's poll to fail",
        Duration::from_secs(30),
        || async {
            let response = client.get(&broken).send().await.ok()?;
            assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
            let body: serde_json::Value = response.json().await.ok()?;
            body["message"]
                .as_str()?
                .contains("latest poll failed")
                .then_some(body)
        },
    )
    .await;
    println!("{status}");
    assert_eq!(
        (&status["kind"], &status["reason"], &status["code"]),
        (&"Status".into(), &"ServiceUnavailable".into(), &503.into())
    );

    let missing = client
        .get(format!(
            "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/s0-nothing"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // SIGTERM, what Kubernetes sends, stops it cleanly and soon.
    let mut server = server;
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = server.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spillway still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "exit after SIGTERM: {exit}");
    drop(server);
    std::fs::remove_file(&config).unwrap();
    channel
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
}
