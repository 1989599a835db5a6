//! `spillway serve` as a user runs it: the binary, a config file, a real RabbitMQ backlog, and
//! the external metrics API read over HTTPS as the aggregator would.

mod common;

use std::process::Command;
use std::time::Duration;

use common::serve::Server;

#[tokio::test]
async fn serve_answers_the_backlog_over_https_and_503_for_a_down_broker() {
    const MESSAGES: usize = 37;
    let (_connection, channel, queue) =
        common::rabbitmq::queue_with_messages("serve", MESSAGES).await;
    let amqp_port = common::rabbitmq::amqp_port();

    let (server, config, port, _) = start_serve(
        "serve",
        &format!(
            "  - name: jobs\n    triggers:\n      - rabbitmq: {{host: \"amqp://127.0.0.1:{amqp_port}/\", queueName: {queue}, value: 10}}\n  - name: broken\n    triggers:\n      - rabbitmq: {{host: \"amqp://127.0.0.1:1/\", queueName: gone, value: 10, timeout: 500}}\n"
        ),
    )
    .await;
    let client = common::https_client();
    let base = format!("https://127.0.0.1:{port}");

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

/// Starts `spillway serve --no-auth` on free ports with `scaled_objects` (YAML list items) and
/// waits for /healthz; returns the server, its config file, its port (HTTPS, and plain HTTP
/// for health) and its metrics port.
async fn start_serve(name: &str, scaled_objects: &str) -> (Server, std::path::PathBuf, u16, u16) {
    let started = common::serve::start(name, scaled_objects).await;
    (
        started.server,
        started.config,
        started.port,
        started.metrics_port,
    )
}

/// The body of a Status answer, checked for its kind and code.
async fn status_of(response: reqwest::Response, code: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), code);
    let body: serde_json::Value = response.json().await.expect("a Status body");
    assert_eq!(
        (&body["kind"], &body["code"]),
        (&"Status".into(), &code.into()),
        "{body}"
    );
    body
}

/// One raw HTTP/1.1 exchange on the plain-HTTP side of the API port: the status line.
async fn raw_status_line(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn serve_speaks_custom_metrics_openapi_own_metrics_and_survives_bad_input() {
    let (server, config, port, metrics_port) = start_serve(
        "serve-extras",
        "  - name: office\n    scaleTargetRef: {name: office-app}\n    triggers:\n      - cron: {timezone: UTC, start: '0 6 * * *', end: '0 20 * * *', desiredReplicas: 3}\n",
    )
    .await;
    let client = common::https_client();
    let base = format!("https://127.0.0.1:{port}");
    let get = |path: &str| client.get(format!("{base}{path}")).send();

    // Custom metrics: discovery names `<resource>/<metric>`, the value describes the workload.
    let resources: serde_json::Value = get("/apis/custom.metrics.k8s.io/v1beta2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resource = resources["resources"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let metric = resource
        .strip_prefix("deployments.apps/")
        .unwrap_or_else(|| panic!("{resources}"))
        .to_owned();
    let list: serde_json::Value = common::eventually(
        "the object metric",
        Duration::from_secs(30),
        || async {
            let response = get(&format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/deployments.apps/office-app/{metric}"
            ))
            .await
            .ok()?;
            response.status().is_success().then_some(response.json().await.ok()?)
        },
    )
    .await;
    println!("{list}");
    assert_eq!(list["kind"], "MetricValueList");
    assert_eq!(
        list["items"][0]["describedObject"],
        serde_json::json!({"kind": "Deployment", "namespace": "default", "name": "office-app", "apiVersion": "apps/v1"})
    );
    let value = list["items"][0]["value"].as_str().unwrap();
    assert!(value == "0" || value == "3", "{value}");

    // OpenAPI: v2, the v3 discovery document, and a group version by its hash.
    let v2: serde_json::Value = get("/openapi/v2").await.unwrap().json().await.unwrap();
    assert_eq!(v2["swagger"], "2.0");
    let v3: serde_json::Value = get("/openapi/v3").await.unwrap().json().await.unwrap();
    let url = v3["paths"]["apis/external.metrics.k8s.io/v1beta1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let document: serde_json::Value = get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(document["openapi"], "3.0.0");

    // Bad input: each a Status with its code, and the server goes on serving.
    let metrics = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";
    status_of(get("/apis/nowhere").await.unwrap(), 404).await;
    status_of(
        get(&format!("{metrics}/s0-x?labelSelector=a+in+%28"))
            .await
            .unwrap(),
        400,
    )
    .await;
    status_of(
        get(&format!("{metrics}/{}", "m".repeat(300)))
            .await
            .unwrap(),
        400,
    )
    .await;
    status_of(get(&format!("{metrics}/a%2Fb")).await.unwrap(), 400).await;
    let padded = |bytes: usize| {
        client
            .get(format!("{base}/apis"))
            .header("x-padding", "p".repeat(bytes))
            .send()
    };
    status_of(padded(40 * 1024).await.unwrap(), 431).await;
    // Past hyper's own cap the answer is its bare 431 (or a closed connection).
    if let Ok(response) = padded(512 * 1024).await {
        assert_eq!(response.status().as_u16(), 431);
    }
    let too_large = raw_status_line(
        port,
        "POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await;
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    assert_eq!(get("/healthz").await.unwrap().text().await.unwrap(), "ok");
    assert!(get("/apis").await.unwrap().status().is_success());

    // spillway's own metrics, on their own plain-HTTP port.
    let scrape = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    assert!(
        scrape.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = scrape.text().await.unwrap();
    for want in [
        "spillway_trigger_value{namespace=\"default\",scaled_object=\"office\",trigger=\"0\",broker=\"cron\"",
        "spillway_trigger_active{",
        "spillway_trigger_consecutive_failures{",
        "spillway_cache_age_seconds{",
        "spillway_poll_duration_seconds_count{broker=\"cron\"}",
        "spillway_api_requests_total{route=\"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{name}/{metric}\",code=\"200\"}",
        "spillway_api_requests_total{route=\"unmatched\",code=\"404\"} 1",
        "spillway_api_request_duration_seconds_bucket{",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    assert!(!text.contains("nowhere"), "raw paths never become labels");

    drop(server);
    std::fs::remove_file(&config).unwrap();
}

/// Slow clients: connections that never send a byte, stall in the middle of a TLS handshake,
/// or trickle their headers hold no one else up, and the server cuts each off at its bound
/// (10 s to finish a handshake).
#[tokio::test]
async fn slow_clients_neither_stall_the_server_nor_stay_forever() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_server, _config, port, _) = start_serve(
        "serve-slow",
        "  - name: office\n    triggers:\n      - cron: {timezone: UTC, start: '0 6 * * *', end: '0 20 * * *', desiredReplicas: 3}\n",
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    // Half a TLS record header: a handshake that never completes.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    // Plain-HTTP headers trickled without an end.
    let mut trickle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    // Meanwhile everyone else is served: the client's own 10 s timeout would fail this if
    // the slow connections held up accepting or handshaking (the server's bound is 10 s too).
    let response = common::https_client()
        .get(format!(
            "https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The stalled handshake is closed by the server within its bound (plus slack).
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), stalled.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a handshake stalled for 20 s must be cut off: {closed:?}"
    );
    drop((silent, trickle));
}
