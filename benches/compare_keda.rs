//! spillway side by side with KEDA (issue 19, items 1 and 2): the release `spillway serve` and
//! KEDA's own scalers (`bench/keda/`, a Go driver built against KEDA's released module that
//! builds and polls them as KEDA's operator does) read the same broker, the same topic and
//! consumer groups, the same queues and the same N, one after the other.
//!
//! For N = 10 / 100 / 1,000 / 5,000 Kafka objects (each its own group on one topic of 4
//! partitions) plus 100 RabbitMQ queues (management HTTP API) and 100 Prometheus queries
//! (`vector(j)`), `pollingInterval: 5`, it prints
//! RSS, threads (and goroutines), open sockets, time per poll p50/p99 by broker, broker
//! requests per polling round, and whether each object's value is the same in both.
//!
//! Requests are counted the same way for both: each program runs in a network namespace of its
//! own whose loopback has a counting proxy on the brokers' ports (127.0.0.1:<port>, so the
//! address Kafka advertises needs no rewriting); the proxy forwards to the real brokers on the
//! host's loopback and counts Kafka requests by API key (the length prefix and api_key of each
//! frame) and HTTP requests (header blocks). Needs root (unshare, setns).
//!
//! `make bench-compare` builds the driver and runs this; by hand:
//! `KEDA_DRIVER=<binary> cargo bench --bench compare_keda` (services up;
//! `COMPARE_KEDA_SIZES=10,100` picks sizes). Nothing is asserted.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/histogram.rs"]
mod histogram;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARTITIONS: i32 = 4;
const RECORDS_PER_PARTITION: i64 = 100;
const QUEUES: usize = 100;
/// Prometheus objects, each with its own query (`vector(j)`, so the value is j).
const QUERIES: usize = 100;
const POLLING_INTERVAL: Duration = Duration::from_secs(5);
/// How long each run measures, after every object has a value and one more interval.
const WINDOW: Duration = Duration::from_secs(30);
/// Longest wait for every object's first value (KEDA builds a Kafka client per object).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// The lag threshold and queue target: high enough that KEDA's cap (replicas at most the
/// partition count) never changes a value.
const TARGET: u32 = 1000;
/// Proxy processes sharing the Kafka port: KEDA's 5,000 objects hold about 10,000 connections.
const KAFKA_PROXIES: usize = 4;

/// Committed offset of partition p in the group of Kafka object i: the lags differ by object.
fn committed(object: usize, partition: i32) -> i64 {
    10 + i64::from(partition) + (object % 10) as i64
}

fn expected_lag(object: usize) -> f64 {
    (0..PARTITIONS)
        .map(|p| (RECORDS_PER_PARTITION - committed(object, p)) as f64)
        .sum()
}

/// Messages in RabbitMQ queue j.
fn queue_depth(queue: usize) -> usize {
    queue % 10 + 1
}

/// A network namespace with its loopback up. Programs started in it, and sockets made in it,
/// see only what the counting proxy puts on its loopback.
#[derive(Clone)]
struct Netns(Arc<std::fs::File>);

impl Netns {
    fn create() -> Self {
        let file = std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends when the closure does.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {} (the bench needs root)",
                std::io::Error::last_os_error()
            );
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("run ip");
            assert!(up.success(), "ip link set lo up");
            std::fs::File::open("/proc/thread-self/ns/net").expect("open the namespace")
        })
        .join()
        .expect("namespace thread");
        Self(Arc::new(file))
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes and programs it starts
    /// stay there.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.0.clone();
        std::thread::spawn(move || {
            // SAFETY: setns on this short-lived thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// `GET path` of an HTTP server listening on `port` inside the namespace.
    async fn get(&self, port: u16, path: &str) -> Option<String> {
        let ns = self.clone();
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        tokio::task::spawn_blocking(move || {
            ns.run(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                stream.write_all(request.as_bytes()).ok()?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer).ok()?;
                let (head, body) = answer.split_once("\r\n\r\n")?;
                head.starts_with("HTTP/1.1 200")
                    .then(|| body.to_owned())
                    .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
            })
        })
        .await
        .expect("scrape task")
    }
}

/// How a proxy reads the client's side of a connection.
#[derive(Clone, Copy)]
enum Protocol {
    /// Kafka: 4-byte length, then api_key and api_version of each request.
    Kafka,
    /// HTTP/1.1: one header block per request (the scalers only GET).
    Http,
}

/// What a proxy has seen: connections accepted and requests by kind.
#[derive(Default)]
struct Counts {
    connections: u64,
    requests: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Counts>>;

/// Splits a Kafka client's byte stream into requests.
#[derive(Default)]
struct KafkaFrames {
    header: Vec<u8>,
    remaining: usize,
}

impl KafkaFrames {
    fn feed(&mut self, mut bytes: &[u8], counts: &Shared) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (8 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 8 {
                let length = i32::from_be_bytes(self.header[0..4].try_into().unwrap());
                let key = i16::from_be_bytes(self.header[4..6].try_into().unwrap());
                let api = kafka_protocol::messages::ApiKey::try_from(key)
                    .map_or_else(|_| format!("api {key}"), |api| format!("{api:?}"));
                *counts.lock().unwrap().requests.entry(api).or_default() += 1;
                self.remaining = (length as usize).saturating_sub(4);
                self.header.clear();
            }
        }
    }
}

/// Counts HTTP header blocks (`\r\n\r\n`) across reads.
#[derive(Default)]
struct HttpRequests {
    tail: Vec<u8>,
}

impl HttpRequests {
    fn feed(&mut self, bytes: &[u8], counts: &Shared) {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(bytes);
        let found = window.windows(4).filter(|w| w == b"\r\n\r\n").count() as u64;
        if found > 0 {
            *counts
                .lock()
                .unwrap()
                .requests
                .entry("GET".to_owned())
                .or_default() += found;
        }
        let keep = window.len().min(3);
        self.tail = window[window.len() - keep..].to_vec();
    }
}

/// A counting proxy: listens on `127.0.0.1:port` inside the namespace and forwards to the same
/// address on the host. Several proxy processes share the port (SO_REUSEPORT) so that
/// thousands of KEDA connections, two descriptors each here, stay under each process's
/// open-file limit.
async fn serve_proxy(netns: &Netns, port: u16, protocol: Protocol) -> Shared {
    let listener = netns.run(move || {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("bind in the namespace");
        let fd = socket.into_raw_fd();
        // SAFETY: fd is the bound socket just released by `into_raw_fd`.
        assert_eq!(unsafe { libc::listen(fd, 4096) }, 0, "listen");
        // SAFETY: fd is a listening socket this function owns.
        unsafe { std::net::TcpListener::from_raw_fd(fd) }
    });
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let counts = Shared::default();
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            shared.lock().unwrap().connections += 1;
            let counts = shared.clone();
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_broker, mut to_broker) = upstream.into_split();
                let ask = async {
                    let (mut kafka, mut http) = (KafkaFrames::default(), HttpRequests::default());
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        match protocol {
                            Protocol::Kafka => kafka.feed(&buf[..n], &counts),
                            Protocol::Http => http.feed(&buf[..n], &counts),
                        }
                        if to_broker.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_broker.shutdown().await;
                };
                let answer = async {
                    let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
                    let _ = to_client.shutdown().await;
                };
                tokio::join!(ask, answer);
            });
        }
    });
    counts
}

/// The variable that makes this binary a proxy process: `<netns path> <port> kafka|http`.
const PROXY_MODE: &str = "COMPARE_KEDA_PROXY";

/// A proxy process's main: prints `listening`, then its counts as JSON for each `count` read
/// on stdin; exits when stdin closes.
async fn proxy_process(spec: &str) {
    let mut parts = spec.split(' ');
    let (path, port, protocol) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse().unwrap(),
        match parts.next().unwrap() {
            "kafka" => Protocol::Kafka,
            _ => Protocol::Http,
        },
    );
    let netns = Netns(Arc::new(
        std::fs::File::open(path).expect("open the namespace"),
    ));
    let counts = serve_proxy(&netns, port, protocol).await;
    println!("listening");
    let stdin = tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line == "count" {
                let counts = counts.lock().unwrap();
                println!(
                    "{}",
                    serde_json::json!({"connections": counts.connections, "requests": counts.requests})
                );
            }
        }
    });
    let _ = stdin.await;
    std::process::exit(0);
}

/// The proxy processes of one broker port.
struct Proxies {
    broker: &'static str,
    processes: Mutex<
        Vec<(
            Child,
            std::process::ChildStdin,
            BufReader<std::process::ChildStdout>,
        )>,
    >,
}

impl Proxies {
    fn start(netns: &Netns, broker: &'static str, port: u16, protocol: &str, count: usize) -> Self {
        let path = format!("/proc/{}/fd/{}", std::process::id(), netns.0.as_raw_fd());
        let processes = (0..count)
            .map(|_| {
                let mut child = Child(
                    std::process::Command::new(std::env::current_exe().unwrap())
                        .env(PROXY_MODE, format!("{path} {port} {protocol}"))
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .expect("start a proxy process"),
                );
                let stdin = child.0.stdin.take().unwrap();
                let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                assert_eq!(line.trim(), "listening", "proxy process for {broker}");
                (child, stdin, stdout)
            })
            .collect();
        Self {
            broker,
            processes: Mutex::new(processes),
        }
    }

    /// Connections and requests seen so far by every process of this port.
    fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for (_, stdin, stdout) in self.processes.lock().unwrap().iter_mut() {
            writeln!(stdin, "count").unwrap();
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let counts: serde_json::Value = serde_json::from_str(&line).unwrap();
            total.connections += counts["connections"].as_u64().unwrap_or(0);
            for (api, n) in counts["requests"].as_object().into_iter().flatten() {
                *total.requests.entry(api.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        total
    }
}

/// Requests and connections by name (`Kafka ListOffsets`, `RabbitMQ GET`...) at one moment.
fn snapshot(proxies: &[Proxies]) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for proxy in proxies {
        let counts = proxy.counts();
        all.insert(format!("{} connections", proxy.broker), counts.connections);
        for (api, n) in &counts.requests {
            all.insert(format!("{} {api}", proxy.broker), *n);
        }
    }
    all
}

/// RSS (MB), threads and open sockets of `pid`, from /proc.
fn process_figures(pid: u32) -> (f64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0);
    (field("VmRSS:") as f64 / 1024.0, field("Threads:"), sockets)
}

/// The Kafka topic, groups and RabbitMQ queues both programs read.
struct Fixtures {
    bootstrap: String,
    topic: String,
    groups: Vec<String>,
    rabbit_http: String,
    vhost: String,
    queues: Vec<String>,
    prometheus: String,
}

impl Fixtures {
    async fn create(largest: usize) -> Self {
        let topic = common::kafka::create_topic(PARTITIONS).await;
        common::kafka::produce(
            &topic,
            &vec![RECORDS_PER_PARTITION; PARTITIONS as usize],
            Duration::ZERO,
        )
        .await;
        let prefix = common::unique_name("cmp");
        let groups: Vec<String> = (0..largest).map(|i| format!("{prefix}-{i}")).collect();
        for residue in 0..10 {
            let these: Vec<String> = groups.iter().skip(residue).step_by(10).cloned().collect();
            let offsets: Vec<(&str, i32, i64)> = (0..PARTITIONS)
                .map(|p| (topic.as_str(), p, committed(residue, p)))
                .collect();
            common::kafka::commit_many(&these, &offsets).await;
        }

        // A vhost of its own, so the listing spillway reads holds only these queues.
        let rabbit_http = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
        let vhost = common::unique_name("cmp");
        let http = reqwest::Client::new();
        let api = |path: String| {
            let url = reqwest::Url::parse(&format!("{rabbit_http}{path}")).unwrap();
            let (user, password) = (url.username().to_owned(), url.password().map(str::to_owned));
            let mut bare = url.clone();
            bare.set_username("").unwrap();
            bare.set_password(None).unwrap();
            (bare, user, password)
        };
        for (path, body) in [
            (format!("/api/vhosts/{vhost}"), serde_json::json!({})),
            (
                format!("/api/permissions/{vhost}/guest"),
                serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
            ),
        ] {
            let (url, user, password) = api(path);
            let status = http
                .put(url)
                .basic_auth(user, password)
                .json(&body)
                .send()
                .await
                .expect("RabbitMQ management API")
                .status();
            assert!(status.is_success(), "RabbitMQ vhost setup: {status}");
        }
        let amqp = common::endpoint("SPILLWAY_RABBITMQ_AMQP");
        let amqp = format!("{}/{vhost}", amqp.rsplit_once('/').unwrap().0);
        let (connection, channel) = common::rabbitmq::confirmed_channel(&amqp).await;
        let queues: Vec<String> = (0..QUEUES).map(|j| format!("q-{j}")).collect();
        for (j, queue) in queues.iter().enumerate() {
            common::rabbitmq::declare_with_messages(&channel, queue, false, queue_depth(j)).await;
        }
        // Kept open: non-durable queues outlive it, but closing it is not needed either.
        std::mem::forget((connection, channel));
        // The management API shows a queue's messages once it has sampled it.
        let (url, user, password) = api(format!("/api/queues/{vhost}?columns=name,messages"));
        common::eventually(
            "RabbitMQ's management API to show every queue's messages",
            Duration::from_secs(60),
            || {
                let (http, url, user, password) =
                    (http.clone(), url.clone(), user.clone(), password.clone());
                async move {
                    let listed: serde_json::Value = http
                        .get(url)
                        .basic_auth(user, password)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    let sampled = listed
                        .as_array()?
                        .iter()
                        .filter(|q| q.get("messages").is_some_and(|m| m.is_u64()))
                        .count();
                    (sampled == QUEUES).then_some(())
                }
            },
        )
        .await;
        Self {
            bootstrap: common::kafka::bootstrap(),
            topic,
            groups,
            rabbit_http,
            vhost,
            queues,
            prometheus: common::endpoint("SPILLWAY_PROMETHEUS_URL"),
        }
    }

    /// The management API's URL for the vhost, credentials included.
    fn rabbit_url(&self) -> String {
        format!("{}/{}", self.rabbit_http.trim_end_matches('/'), self.vhost)
    }

    /// `host:port` of the management API.
    fn rabbit_authority(&self) -> String {
        let url = reqwest::Url::parse(&self.rabbit_http).unwrap();
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    async fn delete(self) {
        common::kafka::delete_topic(&self.topic).await;
        let url = reqwest::Url::parse(&format!("{}/api/vhosts/{}", self.rabbit_http, self.vhost))
            .unwrap();
        let (user, password) = (url.username().to_owned(), url.password().map(str::to_owned));
        let mut bare = url.clone();
        bare.set_username("").unwrap();
        bare.set_password(None).unwrap();
        let _ = reqwest::Client::new()
            .delete(bare)
            .basic_auth(user, password)
            .send()
            .await;
    }
}

/// One program's figures over the window.
struct Run {
    rss: f64,
    threads: u64,
    goroutines: Option<u64>,
    sockets: usize,
    /// p50, p99 (ms) by broker.
    poll_ms: BTreeMap<String, (f64, f64)>,
    /// Requests per polling round by name.
    per_round: BTreeMap<String, f64>,
    fewest_polls: f64,
    values: HashMap<String, f64>,
    ready_after: Duration,
}

fn per_round(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, f64> {
    let rounds = WINDOW.as_secs_f64() / POLLING_INTERVAL.as_secs_f64();
    after
        .iter()
        .map(|(k, n)| {
            let delta = n - before.get(k).copied().unwrap_or(0);
            (k.clone(), delta as f64 / rounds)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// spillway's `/metrics`, parsed for what the table needs.
struct Scrape(String);

impl Scrape {
    fn samples<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0
            .lines()
            .filter(move |l| l.starts_with(prefix))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series, value.parse().ok()?))
            })
    }

    fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
        series
            .split(&format!("{name}=\""))
            .nth(1)?
            .split('"')
            .next()
    }

    /// Each object's main trigger value (not the extra metrics: lag seconds, rates).
    fn values(&self) -> HashMap<String, f64> {
        self.samples("spillway_trigger_value{")
            .filter_map(|(s, v)| {
                let metric = Self::label(s, "metric")?;
                let extra = [
                    "-lag-seconds",
                    "-deliver-rate",
                    "-publish-rate",
                    "-messages",
                ]
                .iter()
                .any(|suffix| metric.ends_with(suffix));
                (!extra).then_some((Self::label(s, "scaled_object")?.to_owned(), v))
            })
            .collect()
    }

    fn polls_by_object(&self) -> HashMap<String, f64> {
        self.samples("spillway_trigger_polls_total{")
            .filter_map(|(s, v)| Some((Self::label(s, "scaled_object")?.to_owned(), v)))
            .collect()
    }

    fn poll_buckets(&self, broker: &str) -> Vec<(f64, f64)> {
        let wanted = format!("broker=\"{broker}\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples("spillway_poll_duration_seconds_bucket{")
            .filter(|(s, _)| s.contains(&wanted))
            .filter_map(|(s, v)| {
                let le = Self::label(s, "le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// Kills a started program when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the release `spillway serve` on N Kafka objects and the queues.
async fn run_spillway(netns: &Netns, proxies: &[Proxies], fixtures: &Fixtures, n: usize) -> Run {
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let mut config = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\npollingInterval: {}\nscaledObjects:\n",
        POLLING_INTERVAL.as_secs()
    );
    for (i, group) in fixtures.groups[..n].iter().enumerate() {
        config.push_str(&format!(
            "  - name: k-{i}\n    triggers:\n      - kafka: {{bootstrapServers: \"{}\", consumerGroup: {group}, topic: {}, lagThreshold: {TARGET}}}\n",
            fixtures.bootstrap, fixtures.topic
        ));
    }
    // spillway takes a URL with a password only from a file (a mounted Secret in a cluster).
    let secret = std::env::temp_dir().join(common::unique_name("compare-rabbitmq-url"));
    std::fs::write(&secret, fixtures.rabbit_url()).unwrap();
    for j in 0..QUERIES {
        config.push_str(&format!(
            "  - name: p-{j}\n    triggers:\n      - prometheus: {{serverAddress: \"{}\", query: \"vector({j})\", threshold: {TARGET}}}\n",
            fixtures.prometheus
        ));
    }
    for (j, queue) in fixtures.queues.iter().enumerate() {
        config.push_str(&format!(
            "  - name: r-{j}\n    triggers:\n      - rabbitmq: {{hostFromSecret: {{file: \"{}\"}}, protocol: http, queueName: {queue}, mode: QueueLength, value: {TARGET}}}\n",
            secret.display()
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("compare")));
    std::fs::write(&path, config).unwrap();
    let launched = Instant::now();
    let spawn_path = path.clone();
    let child = Child(netns.run(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["serve", "--no-auth", "--config"])
            .arg(spawn_path)
            .env(common::ALLOW_LOOPBACK.0, common::ALLOW_LOOPBACK.1)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start spillway serve")
    }));
    let pid = child.0.id();
    let total = n + QUEUES + QUERIES;
    loop {
        if let Some(text) = netns.get(metrics_port, "/metrics").await {
            if Scrape(text).values().len() == total {
                break;
            }
        }
        assert!(
            launched.elapsed() < READY_TIMEOUT,
            "spillway, {n} objects: not every value after {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ready_after = launched.elapsed();
    tokio::time::sleep(POLLING_INTERVAL).await;
    let scrape = || async {
        Scrape(
            netns
                .get(metrics_port, "/metrics")
                .await
                .expect("spillway's /metrics"),
        )
    };
    let (before, counted_before) = (scrape().await, snapshot(proxies));
    tokio::time::sleep(WINDOW).await;
    let counted_after = snapshot(proxies);
    let (rss, threads, sockets) = process_figures(pid);
    let after = scrape().await;
    drop(child);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&secret);

    let polls_before = before.polls_by_object();
    let fewest_polls = after
        .polls_by_object()
        .iter()
        .map(|(object, n)| n - polls_before.get(object).copied().unwrap_or(0.0))
        .fold(f64::INFINITY, f64::min);
    let mut poll_ms = BTreeMap::new();
    for broker in ["kafka", "rabbitmq", "prometheus"] {
        let (b, a) = (before.poll_buckets(broker), after.poll_buckets(broker));
        let ms = |q| histogram::quantile(&b, &a, q).map_or(f64::NAN, |s| s * 1000.0);
        poll_ms.insert(broker.to_owned(), (ms(0.5), ms(0.99)));
    }
    Run {
        rss,
        threads,
        goroutines: None,
        sockets,
        poll_ms,
        per_round: per_round(&counted_before, &counted_after),
        fewest_polls,
        values: after.values(),
        ready_after,
    }
}

/// The KEDA driver's plan: the same objects, with the metadata a ScaledObject would carry.
fn keda_plan(fixtures: &Fixtures, n: usize) -> serde_json::Value {
    let mut objects = Vec::new();
    for (i, group) in fixtures.groups[..n].iter().enumerate() {
        objects.push(serde_json::json!({
            "name": format!("k-{i}"),
            "type": "kafka",
            "metadata": {
                "bootstrapServers": fixtures.bootstrap,
                "consumerGroup": group,
                "topic": fixtures.topic,
                "lagThreshold": TARGET.to_string(),
            },
        }));
    }
    for (j, queue) in fixtures.queues.iter().enumerate() {
        objects.push(serde_json::json!({
            "name": format!("r-{j}"),
            "type": "rabbitmq",
            "metadata": {
                "host": fixtures.rabbit_url(),
                "protocol": "http",
                "queueName": queue,
                "mode": "QueueLength",
                "value": TARGET.to_string(),
            },
        }));
    }
    for j in 0..QUERIES {
        objects.push(serde_json::json!({
            "name": format!("p-{j}"),
            "type": "prometheus",
            "metadata": {
                "serverAddress": fixtures.prometheus,
                "query": format!("vector({j})"),
                "threshold": TARGET.to_string(),
            },
        }));
    }
    serde_json::json!({
        "pollingIntervalSeconds": POLLING_INTERVAL.as_secs(),
        "objects": objects,
    })
}

/// The driver's next event named `wanted`, skipping others.
async fn next_event(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    wanted: &str,
    n: usize,
) -> serde_json::Value {
    loop {
        let event = tokio::time::timeout(READY_TIMEOUT, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("KEDA driver, {n} objects: no {wanted} in time"))
            .unwrap_or_else(|| panic!("KEDA driver, {n} objects: exited before {wanted}"));
        if event["event"] == wanted {
            return event;
        }
    }
}

/// Runs KEDA's scalers through the driver on the same objects.
async fn run_keda(
    netns: &Netns,
    proxies: &[Proxies],
    fixtures: &Fixtures,
    driver: &str,
    n: usize,
) -> Run {
    let path = std::env::temp_dir().join(format!("{}.json", common::unique_name("keda-plan")));
    std::fs::write(&path, keda_plan(fixtures, n).to_string()).unwrap();
    let launched = Instant::now();
    let (driver, spawn_path) = (driver.to_owned(), path.clone());
    let mut child = Child(netns.run(move || {
        std::process::Command::new(driver)
            .arg(spawn_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the KEDA driver")
    }));
    let pid = child.0.id();
    let mut stdin = child.0.stdin.take().unwrap();
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str(&line) {
                if lines_tx.send(event).is_err() {
                    break;
                }
            }
        }
    });
    next_event(&mut lines, "ready", n).await;
    let ready_after = launched.elapsed();
    tokio::time::sleep(POLLING_INTERVAL).await;
    writeln!(stdin, "mark").unwrap();
    let counted_before = snapshot(proxies);
    tokio::time::sleep(WINDOW).await;
    let counted_after = snapshot(proxies);
    let (rss, threads, sockets) = process_figures(pid);
    writeln!(stdin, "report").unwrap();
    let report = next_event(&mut lines, "report", n).await;
    drop(stdin);
    drop(child);
    let _ = std::fs::remove_file(&path);

    let poll_ms = report["pollMs"]
        .as_object()
        .map(|by_type| {
            by_type
                .iter()
                .map(|(kind, l)| {
                    let ms = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
                    (kind.clone(), (ms("p50"), ms("p99")))
                })
                .collect()
        })
        .unwrap_or_default();
    let values = report["values"]
        .as_object()
        .map(|v| {
            v.iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    if report["errors"].as_u64().unwrap_or(0) > 0 {
        println!(
            "KEDA driver, {n} objects: {} failed polls in the window, e.g. {}",
            report["errors"], report["someError"]
        );
    }
    Run {
        rss,
        threads,
        goroutines: report["goroutines"].as_u64(),
        sockets,
        poll_ms,
        per_round: per_round(&counted_before, &counted_after),
        fewest_polls: report["fewestPolls"].as_f64().unwrap_or(f64::NAN),
        values,
        ready_after,
    }
}

fn requests(run: &Run, broker: &str) -> String {
    let parts: Vec<String> = run
        .per_round
        .iter()
        .filter(|(k, _)| k.starts_with(broker) && !k.ends_with("connections"))
        .map(|(k, v)| format!("{} {v:.1}", k.trim_start_matches(broker).trim()))
        .collect();
    if parts.is_empty() {
        "0".to_owned()
    } else {
        parts.join(", ")
    }
}

fn total_requests(run: &Run, broker: &str) -> f64 {
    run.per_round
        .iter()
        .filter(|(k, _)| k.starts_with(broker) && !k.ends_with("connections"))
        .fold(0.0, |a, (_, v)| a + v)
}

fn ms(run: &Run, broker: &str) -> String {
    run.poll_ms
        .get(broker)
        .map_or("-".to_owned(), |(p50, p99)| {
            format!("{p50:.0} / {p99:.0} ms")
        })
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var(PROXY_MODE) {
        return proxy_process(&spec).await;
    }
    let driver = std::env::var("KEDA_DRIVER")
        .expect("KEDA_DRIVER: the driver binary (make bench-compare builds it)");
    let sizes: Vec<usize> = std::env::var("COMPARE_KEDA_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("size"))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 100, 1_000, 5_000]);
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let started = Instant::now();
    let fixtures = Fixtures::create(largest).await;
    println!(
        "fixtures in {:.0} s: topic {} ({PARTITIONS} partitions, {RECORDS_PER_PARTITION} records each), {largest} groups (lag 318-354), vhost {} with {QUEUES} queues (1-10 messages)",
        started.elapsed().as_secs_f64(),
        fixtures.topic,
        fixtures.vhost
    );

    let netns = Netns::create();
    let port_of = |address: &str| -> u16 {
        address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port")
    };
    let kafka_port = port_of(&fixtures.bootstrap);
    let rabbit_port = port_of(&fixtures.rabbit_authority());
    let proxies = [
        Proxies::start(&netns, "Kafka", kafka_port, "kafka", KAFKA_PROXIES),
        Proxies::start(&netns, "RabbitMQ", rabbit_port, "http", 1),
        Proxies::start(
            &netns,
            "Prometheus",
            port_of(&fixtures.prometheus),
            "http",
            1,
        ),
    ];

    println!(
        "pollingInterval {} s, window {} s, each program in its own network namespace behind a counting proxy",
        POLLING_INTERVAL.as_secs(),
        WINDOW.as_secs()
    );
    println!(
        "| Kafka objects (+{QUEUES} queues) | program | RSS | threads (goroutines) | open sockets | Kafka poll p50 / p99 | RabbitMQ poll p50 / p99 | Prometheus poll p50 / p99 | Kafka requests per round | RabbitMQ requests per round | Prometheus requests per round | connections opened in window | fewest polls of {} | values equal | ready after |",
        WINDOW.as_secs() / POLLING_INTERVAL.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for n in sizes {
        let spillway = run_spillway(&netns, &proxies, &fixtures, n).await;
        let keda = run_keda(&netns, &proxies, &fixtures, &driver, n).await;
        let names: Vec<String> = (0..n)
            .map(|i| format!("k-{i}"))
            .chain((0..QUEUES).map(|j| format!("r-{j}")))
            .chain((0..QUERIES).map(|j| format!("p-{j}")))
            .collect();
        let equal = names
            .iter()
            .filter(|name| {
                matches!((spillway.values.get(*name), keda.values.get(*name)), (Some(a), Some(b)) if a == b)
            })
            .count();
        let right = names
            .iter()
            .enumerate()
            .filter(|(index, name)| {
                let expected = if *index < n {
                    expected_lag(*index)
                } else if *index < n + QUEUES {
                    queue_depth(*index - n) as f64
                } else {
                    (*index - n - QUEUES) as f64
                };
                spillway.values.get(*name) == Some(&expected)
            })
            .count();
        for (label, run) in [("spillway", &spillway), ("KEDA", &keda)] {
            let connections: f64 = run
                .per_round
                .iter()
                .filter(|(k, _)| k.ends_with("connections"))
                .map(|(_, v)| v * WINDOW.as_secs_f64() / POLLING_INTERVAL.as_secs_f64())
                .fold(0.0, |a, b| a + b);
            println!(
                "| {n} | {label} | {:.0} MB | {}{} | {} | {} | {} | {} | {} | {} | {} | {connections:.0} | {:.0} | {} | {:.0} s |",
                run.rss,
                run.threads,
                run.goroutines.map_or(String::new(), |g| format!(" ({g})")),
                run.sockets,
                ms(run, "kafka"),
                ms(run, "rabbitmq"),
                ms(run, "prometheus"),
                requests(run, "Kafka"),
                requests(run, "RabbitMQ"),
                requests(run, "Prometheus"),
                run.fewest_polls,
                if label == "spillway" {
                    format!("{equal} of {} ({right} as expected)", names.len())
                } else {
                    format!("{equal} of {}", names.len())
                },
                run.ready_after.as_secs_f64(),
            );
        }
        ratios.push((n, spillway, keda));
    }

    println!();
    println!("spillway / KEDA:");
    println!(
        "| Kafka objects | RSS | threads | open sockets | Kafka poll p50 | Kafka poll p99 | RabbitMQ poll p50 | Prometheus poll p50 | Kafka requests per round | RabbitMQ requests per round | Prometheus requests per round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, s, k) in &ratios {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 && a / b < 0.01 && a > 0.0 {
                format!("1/{:.0}", b / a)
            } else if b > 0.0 {
                format!("{:.3}", a / b)
            } else {
                "-".to_owned()
            }
        };
        let p = |run: &Run, broker: &str, p99: bool| {
            run.poll_ms
                .get(broker)
                .map_or(f64::NAN, |(a, b)| if p99 { *b } else { *a })
        };
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ratio(s.rss, k.rss),
            ratio(s.threads as f64, k.threads as f64),
            ratio(s.sockets as f64, k.sockets as f64),
            ratio(p(s, "kafka", false), p(k, "kafka", false)),
            ratio(p(s, "kafka", true), p(k, "kafka", true)),
            ratio(p(s, "rabbitmq", false), p(k, "rabbitmq", false)),
            ratio(p(s, "prometheus", false), p(k, "prometheus", false)),
            ratio(total_requests(s, "Kafka"), total_requests(k, "Kafka")),
            ratio(total_requests(s, "RabbitMQ"), total_requests(k, "RabbitMQ")),
            ratio(
                total_requests(s, "Prometheus"),
                total_requests(k, "Prometheus")
            ),
        );
    }
    fixtures.delete().await;
}
