//! Issue 16: the destination policy against real sockets. A tenant's trigger naming loopback,
//! link-local or the kube-apiserver (directly, by a name that resolves there, or by a redirect)
//! is refused before any connection is made, and errors a tenant reads never carry what a
//! server answered.
//!
//! The policy is process-wide, so this binary never calls `common::endpoint` (which allows
//! loopback) and its tests take turns, each installing the policy it tests.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spillway::destination::{self, DestinationClass, DestinationPolicy};
use spillway::scalers::kafka::KafkaScaler;
use spillway::scalers::nats::NatsJetStreamScaler;
use spillway::scalers::prometheus::PrometheusScaler;
use spillway::scalers::rabbitmq::RabbitMqScaler;
use spillway::scalers::{Reading, Scaler, ScalerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// One test at a time: each installs its own policy.
static POLICY: Mutex<()> = Mutex::const_new(());

/// A server on `bind` that counts the connections it accepts and answers each request with
/// `response` (a whole HTTP/1.1 response).
async fn counting_server(bind: &str, response: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (address, accepted)
}

fn http_response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What one trigger of scaler `S` reads, polled alone.
async fn poll_one<S: Scaler>(trigger: serde_json::Value) -> Result<Reading, ScalerError>
where
    S::Trigger: serde::de::DeserializeOwned,
{
    let trigger: S::Trigger = serde_json::from_value(trigger).expect("trigger");
    let scaler = S::connect(&trigger)?;
    scaler.poll(std::slice::from_ref(&trigger)).await.remove(0)
}

fn prometheus(server: &str) -> serde_json::Value {
    serde_json::json!({"serverAddress": server, "query": "up", "threshold": 1, "ignoreNullValues": true})
}

/// The refusal `result` must be: unreachable, naming `class`, and how to allow it.
fn assert_refused(result: Result<Reading, ScalerError>, class: DestinationClass, what: &str) {
    match result {
        Err(ScalerError::Unreachable { cause, .. }) => {
            assert!(
                cause.contains(&format!("{class} address"))
                    && cause.contains("--allow-destinations"),
                "{what}: {cause}"
            );
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_is_refused_by_default_by_name_and_by_address_and_never_connected() {
    let _turn = POLICY.lock().await;
    destination::install(DestinationPolicy::strict());
    let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#;
    let (address, accepted) =
        counting_server("127.0.0.1:0", http_response("200 OK", "", body)).await;
    let port = address.port();

    // `localhost` is a name: refused after resolution. 127.0.0.1 is a literal: refused at once.
    for server in [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        assert_refused(
            poll_one::<PrometheusScaler>(prometheus(&server)).await,
            DestinationClass::Loopback,
            &server,
        );
    }
    let nats = serde_json::json!({"natsServerMonitoringEndpoint": format!("localhost:{port}"),
        "stream": "s", "consumer": "c"});
    assert_refused(
        poll_one::<NatsJetStreamScaler>(nats).await,
        DestinationClass::Loopback,
        "nats",
    );
    for host in [
        format!("http://localhost:{port}/"),
        format!("amqp://localhost:{port}/"),
    ] {
        let rabbitmq = serde_json::json!({"host": host, "queueName": "q", "value": 1});
        assert_refused(
            poll_one::<RabbitMqScaler>(rabbitmq).await,
            DestinationClass::Loopback,
            &host,
        );
    }
    // Kafka's bootstrap servers (and the brokers its metadata names) go through the same check.
    let kafka = serde_json::json!({"bootstrapServers": format!("localhost:{port}"),
        "consumerGroup": "g", "topic": "t", "lagThreshold": 1, "timeout": 2000});
    assert_refused(
        poll_one::<KafkaScaler>(kafka).await,
        DestinationClass::Loopback,
        "kafka",
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection reached the server"
    );

    // The cluster-scoped setting allows it: the same trigger reads.
    destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
    let reading = poll_one::<PrometheusScaler>(prometheus(&format!("http://localhost:{port}")))
        .await
        .expect("allowed loopback reads");
    assert_eq!(reading.value, 7.0);
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn link_local_and_the_api_server_are_refused_even_by_redirect() {
    let _turn = POLICY.lock().await;
    // Loopback allowed (the test's own servers), the API server known at 127.0.0.2.
    destination::install(
        DestinationPolicy::strict()
            .allowing([DestinationClass::Loopback])
            .with_api_server(["127.0.0.2".parse().unwrap()]),
    );
    for server in ["http://169.254.169.254", "http://[fe80::1]:9090"] {
        assert_refused(
            poll_one::<PrometheusScaler>(prometheus(server)).await,
            DestinationClass::LinkLocal,
            server,
        );
    }
    let (api, api_accepted) =
        counting_server("127.0.0.2:0", http_response("200 OK", "", "{}")).await;
    assert_refused(
        poll_one::<PrometheusScaler>(prometheus(&format!("http://{api}"))).await,
        DestinationClass::ApiServer,
        "api server",
    );
    assert_eq!(api_accepted.load(Ordering::SeqCst), 0);

    // An allowed server redirecting to the metadata service or to the API server: not followed.
    for location in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://{api}/api"),
    ] {
        let (redirecting, _) = counting_server(
            "127.0.0.1:0",
            http_response("302 Found", &format!("location: {location}\r\n"), ""),
        )
        .await;
        let result =
            poll_one::<PrometheusScaler>(prometheus(&format!("http://{redirecting}"))).await;
        match result {
            Err(err) => assert!(
                err.to_string().contains("--allow-destinations"),
                "redirect to {location}: {err}"
            ),
            Ok(reading) => panic!("redirect to {location} was followed: {reading:?}"),
        }
    }
    assert_eq!(api_accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn errors_a_tenant_reads_never_carry_the_answer() {
    let _turn = POLICY.lock().await;
    destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
    let secret = "INTERNAL-SERVICE-SECRET";
    let answers = [
        http_response(
            "500 Internal Server Error",
            "",
            &format!("<html>{secret}</html>"),
        ),
        http_response("403 Forbidden", "", secret),
        http_response(
            "200 OK",
            "",
            &format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":"{secret}"}}}}"#
            ),
        ),
        http_response(
            "200 OK",
            "",
            &format!(
                r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,"{secret}"]}}}}"#
            ),
        ),
        http_response("200 OK", "", &format!(r#"{{"status":"{secret}"}}"#)),
        http_response(
            "400 Bad Request",
            "",
            &format!(r#"{{"status":"error","errorType":"bad_data","error":"{secret}"}}"#),
        ),
    ];
    for answer in answers {
        let (server, _) = counting_server("127.0.0.1:0", answer.clone()).await;
        let error = poll_one::<PrometheusScaler>(prometheus(&format!("http://{server}")))
            .await
            .expect_err("a bad answer is an error");
        let text = error.to_string();
        assert!(
            !text.contains(secret),
            "the error repeats the answer: {text}"
        );
        println!("{} -> {text}", answer.lines().next().unwrap_or_default());
    }
}

/// The librdkafka reader behind lag seconds connects on its own: every address of the
/// cluster is checked before it reads, so with loopback refused, lag seconds is refused with
/// the policy's error (never a 0) even while the wire client's open connections still read
/// the lag.
#[tokio::test]
async fn lag_seconds_is_refused_for_a_loopback_kafka_when_loopback_is_not_allowed() {
    use common::kafka::{commit, create_topic, delete_topic, produce};
    use spillway::scalers::kafka::KafkaTrigger;
    let _turn = POLICY.lock().await;
    let bootstrap = common::kafka::bootstrap();
    destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
    let topic = create_topic(1).await;
    let group = common::unique_name("refused-age");
    produce(&topic, &[5], Duration::from_secs(60)).await;
    commit(&group, &[(&topic, 0, 5)]);
    let trigger = KafkaTrigger::new(bootstrap, &group, Some(&topic));
    let scaler = KafkaScaler::connect(&trigger).unwrap();
    let caught_up = scaler
        .poll_detailed(std::slice::from_ref(&trigger))
        .await
        .remove(0)
        .expect("loopback allowed: the trigger reads");
    assert_eq!(
        (caught_up.total.metric, caught_up.lag_seconds),
        (0, Some(0.0))
    );

    // The group falls behind by 60 s old records; loopback is no longer allowed.
    commit(&group, &[(&topic, 0, 2)]);
    destination::install(DestinationPolicy::strict());
    let report = scaler
        .poll_detailed(std::slice::from_ref(&trigger))
        .await
        .remove(0)
        .expect("the wire client's connections are already open");
    assert_eq!(report.total.metric, 3, "the lag itself is still read");
    assert_eq!(report.lag_seconds, None, "no age, never 0");
    match &report.lag_seconds_error {
        Some(ScalerError::Unreachable { cause, .. }) => assert!(
            cause.contains("loopback address") && cause.contains("--allow-destinations loopback"),
            "{cause}"
        ),
        other => panic!("lag seconds refused with the policy error, got {other:?}"),
    }
    let reading = scaler
        .poll(std::slice::from_ref(&trigger))
        .await
        .remove(0)
        .expect("reading");
    assert!(
        !reading.extra.iter().any(|(name, _)| *name == "lag-seconds"),
        "no lag-seconds metric: {:?}",
        reading.extra
    );

    destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
    let allowed = scaler
        .poll_detailed(std::slice::from_ref(&trigger))
        .await
        .remove(0)
        .unwrap();
    assert!(
        allowed.lag_seconds.is_some_and(|age| age >= 59.0),
        "allowed again: {allowed:?}"
    );
    delete_topic(&topic).await;
}

/// `run` learns where kube-apiserver really listens from the `kubernetes` Service's
/// EndpointSlices, which kube-apiserver writes in a real cluster (the local control plane runs
/// with `--endpoint-reconciler-type none`, so the test writes the slice as kube-apiserver
/// would, with a TEST-NET address). A trigger aimed at that address is then refused as the
/// API server's, and never connected.
#[tokio::test]
async fn kube_apiservers_endpoint_addresses_are_learned_and_refused() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let _turn = POLICY.lock().await;
    let client = common::k8s::admin().await;
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let name = common::unique_name("kubernetes");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["203.0.113.9"]}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }))
    .unwrap();
    slices
        .create(&kube::api::PostParams::default(), &slice)
        .await
        .expect("create the EndpointSlice");
    let addresses = spillway::kube_client::api_server_endpoint_addresses(&client).await;
    slices
        .delete(&name, &kube::api::DeleteParams::default())
        .await
        .expect("delete the EndpointSlice");
    let addresses = addresses.expect("list EndpointSlices of the kubernetes Service");
    let endpoint: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    assert!(addresses.contains(&endpoint), "{addresses:?}");

    destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
    destination::learn_api_server_addresses(addresses);
    assert_refused(
        poll_one::<PrometheusScaler>(prometheus("http://203.0.113.9:6443")).await,
        DestinationClass::ApiServer,
        "a Prometheus trigger at kube-apiserver's endpoint",
    );
    destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]));
}
