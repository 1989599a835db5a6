//! Issue 16: a broker answer never decides how much memory spillway uses. Against real sockets
//! (servers started here): an endless body, a body announced as huge, and a RabbitMQ listing
//! that ignores its page size or never ends are refused with a clear error, never read whole.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use spillway::scalers::http::MAX_ANSWER_BYTES;
use spillway::scalers::prometheus::PrometheusScaler;
use spillway::scalers::rabbitmq::RabbitMqScaler;
use spillway::scalers::{Reading, Scaler, ScalerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one request head; `None` when the client went away.
async fn request_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A loopback server that answers every request with `respond(request head, socket)`.
async fn server<F, Fut>(respond: F) -> String
where
    F: Fn(String, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    common::allow_loopback_destinations();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let respond = Arc::clone(&respond);
            tokio::spawn(async move {
                if let Some(head) = request_head(&mut socket).await {
                    respond(head, socket).await;
                }
            });
        }
    });
    address
}

async fn poll_one<S: Scaler>(trigger: serde_json::Value) -> Result<Reading, ScalerError>
where
    S::Trigger: serde::de::DeserializeOwned,
{
    let trigger: S::Trigger = serde_json::from_value(trigger).expect("trigger");
    let scaler = S::connect(&trigger)?;
    scaler.poll(std::slice::from_ref(&trigger)).await.remove(0)
}

fn assert_too_large(result: Result<Reading, ScalerError>, what: &str) {
    match result {
        Err(ScalerError::BadResponse { cause, .. }) => {
            assert!(cause.contains("larger than 16 MiB"), "{what}: {cause}")
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_endless_answer_is_refused_at_the_cap() {
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    let address = server(move |_, mut socket| {
        let counter = Arc::clone(&counter);
        async move {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            // Until spillway hangs up.
            while socket.write_all(chunk.as_bytes()).await.is_ok() {
                counter.fetch_add(0x10000, Ordering::Relaxed);
            }
        }
    })
    .await;
    for trigger in [
        serde_json::json!({"serverAddress": format!("http://{address}"), "query": "up",
            "threshold": 1, "timeout": 60000}),
        serde_json::json!({"scrapeUrl": format!("http://{address}/metrics"),
            "metricName": "m", "threshold": 1, "timeout": 60000}),
    ] {
        assert_too_large(poll_one::<PrometheusScaler>(trigger).await, "endless body");
    }
    let sent = written.load(Ordering::Relaxed);
    assert!(
        sent >= MAX_ANSWER_BYTES,
        "read up to the cap first: {sent} bytes"
    );
    println!(
        "endless body: refused after the server had sent {} MiB (two requests)",
        sent / (1024 * 1024)
    );
}

#[tokio::test]
async fn an_answer_announced_as_huge_is_refused_before_reading() {
    let address = server(|_, mut socket| async move {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1099511627776\r\n\r\n{";
        let _ = socket.write_all(head.as_bytes()).await;
        // Then nothing: a reader waiting for the body would time out instead.
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    })
    .await;
    let trigger = serde_json::json!({"serverAddress": format!("http://{address}"),
        "query": "up", "threshold": 1, "timeout": 60000});
    assert_too_large(
        poll_one::<PrometheusScaler>(trigger).await,
        "1 TiB announced",
    );
}

/// A management API that answers every listing page with `items` queues and `page_count`.
async fn rabbitmq_listing(items: usize, page_count: u32) -> (String, Arc<AtomicUsize>) {
    let pages = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pages);
    let address = server(move |_, mut socket| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let queues: Vec<_> = (0..items)
                .map(|i| serde_json::json!({"name": format!("q{i}"), "messages": 1, "messages_ready": 1}))
                .collect();
            let body = serde_json::json!({"items": queues, "page_count": page_count}).to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    })
    .await;
    (address, pages)
}

#[tokio::test]
async fn a_rabbitmq_listing_past_its_page_size_or_page_cap_is_refused() {
    let trigger = |address: &str| {
        serde_json::json!({"host": format!("http://{address}/"), "queueName": "q0",
            "value": 1, "pageSize": 10})
    };
    // A page with more queues than asked for.
    let (address, _) = rabbitmq_listing(11, 1).await;
    match poll_one::<RabbitMqScaler>(trigger(&address)).await {
        Err(ScalerError::BadResponse { cause, .. }) => {
            assert!(cause.contains("more than the 10 asked for"), "{cause}")
        }
        other => panic!("an oversized page: expected a refusal, got {other:?}"),
    }
    // A listing that claims 10,000 pages: refused at the first page, not read 10,000 times.
    let (address, pages) = rabbitmq_listing(10, 10_000).await;
    match poll_one::<RabbitMqScaler>(trigger(&address)).await {
        Err(ScalerError::BadResponse { cause, .. }) => {
            assert!(cause.contains("10000 pages"), "{cause}")
        }
        other => panic!("10,000 pages: expected a refusal, got {other:?}"),
    }
    assert_eq!(pages.load(Ordering::SeqCst), 1);
    // Within both bounds the same server reads.
    let (address, _) = rabbitmq_listing(10, 3).await;
    let reading = poll_one::<RabbitMqScaler>(trigger(&address))
        .await
        .expect("a bounded listing reads");
    assert_eq!(reading.value, 1.0);
}

/// A clustered NATS server's monitoring port: `/jsz` says the consumer's leader is `n2`, and
/// `/varz` (answered on every address) says this is `n1` and advertises 200 other hosts.
/// Returns the port and the local addresses `/varz` was asked on.
async fn nats_advertising_many_hosts() -> (u16, Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>) {
    common::allow_loopback_destinations();
    // Every 127.x address reaches a listener on 0.0.0.0: each advertised host is a real socket.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&asked);
    let hosts: Vec<String> = (2..202)
        .map(|i| format!("127.0.{}.{}:4222", i / 256, i % 256))
        .collect();
    let varz = serde_json::json!({"server_id": "ID-N1", "server_name": "n1",
        "connect_urls": hosts})
    .to_string();
    let jsz = serde_json::json!({
        "server_id": "ID-N1",
        "meta_cluster": {"name": "c1", "leader": "n3", "cluster_size": 3},
        "account_details": [{"name": "$G", "id": "$G", "stream_detail": [{
            "name": "capture", "cluster": {"name": "c1", "leader": "n1"},
            "consumer_detail": [{"name": "worker", "num_pending": 4, "num_ack_pending": 0,
                "cluster": {"name": "c1", "leader": "n2"}}]}]}]
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (varz, jsz, recorded) = (varz.clone(), jsz.clone(), Arc::clone(&recorded));
            tokio::spawn(async move {
                let Some(head) = request_head(&mut socket).await else {
                    return;
                };
                let body = if head.starts_with("GET /varz") {
                    recorded
                        .lock()
                        .unwrap()
                        .push(socket.local_addr().unwrap().ip());
                    varz
                } else {
                    jsz
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, asked)
}

#[tokio::test]
async fn a_nats_server_advertising_many_hosts_gets_a_bounded_number_of_probes() {
    let (port, asked) = nats_advertising_many_hosts().await;
    let trigger = serde_json::json!({"natsServerMonitoringEndpoint": format!("127.0.0.1:{port}"),
        "stream": "capture", "consumer": "worker"});
    // The leader n2 is nowhere to be found: an error, after a bounded search.
    let result = poll_one::<spillway::scalers::nats::NatsJetStreamScaler>(trigger).await;
    assert!(result.is_err(), "{result:?}");
    let asked = asked.lock().unwrap().clone();
    let hosts: std::collections::BTreeSet<_> = asked.iter().collect();
    assert!(
        hosts.len() <= 1 + spillway::scalers::nats::MAX_PROBED_HOSTS,
        "{} hosts asked for /varz",
        hosts.len()
    );
    assert!(hosts.len() > 1, "discovery did probe advertised hosts");
    println!(
        "nats: 200 hosts advertised, {} asked ({} /varz requests): {}",
        hosts.len(),
        asked.len(),
        result.unwrap_err()
    );
}
