//! End to end for replicas sharing the polling (`spillway run --share-polling`): three
//! `spillway run` processes on loopback behind a Service-like proxy on the registered port,
//! on the local control plane (the aggregator, the HPA controller) with real brokers.
//!
//! The brokers' HTTP APIs are reached through counting proxies that attribute every request to
//! the process that sent it, so "polled by exactly one replica" is counted at the broker.
//!
//! Measured and printed (`--nocapture`): requests per group per second, which replica polled
//! each group, how long a killed replica's group went unpolled, how long a graceful stop's
//! handover took, and every answer the replicas gave while groups moved.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_proxy::CountingProxy;
use common::k8s::{self, SpillwayController};
use common::replicas::{ReplicaRecorder, replicas};
use common::service_proxy::ServiceProxy;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::{Value, json};

const EXTERNAL: &str = "v1beta1.external.metrics.k8s.io";
const LABEL: &str = "scaledobject.spillway.dev/name";
/// Short, so a killed replica's groups move within the test's patience.
const MEMBER_LEASE_SECONDS: u64 = 4;
/// Prometheus connection groups (one proxy each), and scaled objects per group.
const PROMETHEUS_GROUPS: usize = 4;
const OBJECTS_PER_GROUP: usize = 2;

/// What the sampler saw from the replicas and the aggregator while groups moved.
#[derive(Debug, Default)]
struct Answers {
    by_code: BTreeMap<String, usize>,
    zeros: Vec<String>,
    values: Vec<(Duration, String, f64)>,
}

/// `spillway_sharing_members` of a replica's `/metrics`.
async fn members_seen(replica: &SpillwayController) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", replica.metrics_port))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("spillway_sharing_members "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

async fn wait_members(replicas: &[&SpillwayController], count: f64, timeout: Duration) -> Duration {
    let started = Instant::now();
    for replica in replicas {
        common::eventually(
            &format!("{} to see {count} live replicas", replica.identity),
            timeout,
            || async { (members_seen(replica).await == Some(count)).then_some(()) },
        )
        .await;
    }
    started.elapsed()
}

/// The value of `metric` for scaled object `name`, read from the replica on `port` directly.
async fn value_from(
    client: &reqwest::Client,
    port: u16,
    ns: &str,
    metric: &str,
    name: &str,
) -> Result<f64, String> {
    let url = format!(
        "https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector={LABEL}%3D{name}"
    );
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("error: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{status}: {e}"))?;
    if status != 200 {
        return Err(status.to_string());
    }
    let text = body["items"][0]["value"].as_str().unwrap_or("?").to_owned();
    text.parse::<f64>()
        .or_else(|_| {
            text.strip_suffix('m')
                .and_then(|m| m.parse::<f64>().ok())
                .map(|m| m / 1000.0)
                .ok_or(())
        })
        .map_err(|()| format!("unreadable value {text}"))
}

/// Which of `pids` polled each proxy in the window `[from, now)`, with its request count.
/// Other processes are left out: on a shared control plane another `spillway run` (a bench, a
/// developer's) may register these objects too; in CI there is none.
fn pollers(proxies: &[&CountingProxy], from: Instant, pids: &[u32]) -> Vec<HashMap<u32, usize>> {
    proxies
        .iter()
        .map(|p| {
            let mut counts = p.by_pid_since(from);
            let others: usize = counts
                .iter()
                .filter(|(pid, _)| !pids.contains(pid))
                .map(|(_, n)| n)
                .sum();
            if others > 0 {
                println!("({others} requests from processes outside this test left out)");
            }
            counts.retain(|pid, _| pids.contains(pid));
            counts
        })
        .collect()
}

fn name_of(pid: u32, replicas: &[&SpillwayController]) -> String {
    replicas
        .iter()
        .find(|r| r.pid() == pid)
        .map_or_else(|| format!("pid {pid}"), |r| r.identity.clone())
}

async fn start_replica(
    cluster_kubeconfig: &std::path::Path,
    lease: &str,
    identity: &str,
) -> SpillwayController {
    let lease_seconds = MEMBER_LEASE_SECONDS.to_string();
    SpillwayController::start_with_args(
        cluster_kubeconfig,
        common::free_port(),
        lease,
        identity,
        None,
        &[
            "--share-polling",
            "--member-lease-duration-seconds",
            &lease_seconds,
        ],
    )
    .await
}

#[tokio::test]
async fn three_replicas_poll_each_group_once_and_an_hpa_keeps_scaling_through_a_kill_a_join_and_a_stop()
 {
    let admin = k8s::admin().await;
    let kubeconfig = k8s::install_spillway(&admin).await;
    k8s::delete_namespaces_starting_with(&admin, "e2e-share-").await;
    let ns = k8s::namespace(&admin, "e2e-share").await;

    // The brokers, behind counting proxies: one proxy per connection group.
    let prometheus = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let mut prometheus_proxies = Vec::new();
    for _ in 0..PROMETHEUS_GROUPS {
        prometheus_proxies.push(CountingProxy::start(&prometheus).await);
    }
    let management = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    let management_origin = management
        .rsplit('@')
        .next()
        .map(|host| format!("http://{host}"))
        .unwrap();
    let rabbitmq_proxy = CountingProxy::start(&management_origin).await;
    let (_connection, channel, queue) =
        common::rabbitmq::queue_with_messages("e2e-share", 40).await;

    // Three replicas sharing the polling, behind the registered port.
    let lease = common::unique_name("e2e-share-lease");
    let a = start_replica(&kubeconfig, &lease, &format!("{lease}-a")).await;
    let b = start_replica(&kubeconfig, &lease, &format!("{lease}-b")).await;
    let c = start_replica(&kubeconfig, &lease, &format!("{lease}-c")).await;
    let service = ServiceProxy::start(k8s::spillway_port(), vec![a.port, b.port, c.port]).await;
    k8s::register_api_service(&admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(&admin, EXTERNAL, Duration::from_secs(60)).await;
    let took = wait_members(&[&a, &b, &c], 3.0, Duration::from_secs(20)).await;
    println!("3 replicas see each other after {took:.1?}");

    // Scaled objects: PROMETHEUS_GROUPS x OBJECTS_PER_GROUP constant queries, and a queue whose
    // depth an HPA scales on (40 messages at 10 per replica: 4).
    let mut expected: Vec<(String, f64)> = Vec::new();
    for (g, proxy) in prometheus_proxies.iter().enumerate() {
        for o in 0..OBJECTS_PER_GROUP {
            let name = format!("prom-{g}-{o}");
            let value = (10 * g + o + 11) as f64;
            k8s::pause_deployment(&admin, &ns, &format!("idle-{g}-{o}")).await;
            k8s::apply(
                &admin,
                json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"scaleTargetRef": {"name": format!("idle-{g}-{o}")}, "pollingInterval": 1,
                        "minReplicaCount": 1, "maxReplicaCount": 2,
                        "triggers": [{"prometheus": {"serverAddress": format!("http://{}", proxy.address),
                            "query": format!("vector({value})"), "threshold": 1000}}]}}),
            )
            .await;
            expected.push((name, value));
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    k8s::pause_deployment(&admin, &ns, "worker").await;
    // The management URL carries the password: from a Secret, as spillway requires.
    let with_password = management.replacen(
        &management_origin["http://".len()..],
        &rabbitmq_proxy.address.to_string(),
        1,
    );
    k8s::apply(
        &admin,
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "rabbit", "namespace": ns},
            "stringData": {"url": with_password}}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "worker", "namespace": ns},
            "spec": {"scaleTargetRef": {"name": "worker"}, "pollingInterval": 1,
                "minReplicaCount": 1, "maxReplicaCount": 12,
                "triggers": [{"rabbitmq": {"hostFromSecret": {"secretKeyRef": {"name": "rabbit", "key": "url"}},
                    "protocol": "http", "queueName": queue, "mode": "QueueLength", "value": 10}}]}}),
    )
    .await;
    let worker_metric = format!(
        "s0-rabbitmq-{}",
        spillway::scalers::normalize_metric_name(&queue)
    );
    let recorder = ReplicaRecorder::start(deployments.clone(), "worker");
    let started = Instant::now();
    common::eventually(
        "the HPA to scale worker to 4",
        Duration::from_secs(90),
        || async { (replicas(&deployments, "worker").await == 4).then_some(()) },
    )
    .await;
    println!(
        "worker scaled 1 -> 4 from the queue after {:.1?}",
        started.elapsed()
    );

    // Every replica answers every metric with the right value.
    let direct = k8s::direct_client(Some("admin"));
    for replica in [&a, &b, &c] {
        for (name, value) in &expected {
            let got = common::eventually(
                &format!("{} to serve {name}", replica.identity),
                Duration::from_secs(20),
                || async {
                    value_from(&direct, replica.port, &ns, "s0-prometheus", name)
                        .await
                        .ok()
                },
            )
            .await;
            assert_eq!(got, *value, "{name} from {}", replica.identity);
        }
        let got = value_from(&direct, replica.port, &ns, &worker_metric, "worker")
            .await
            .unwrap();
        assert_eq!(got, 40.0, "worker from {}", replica.identity);
    }
    println!(
        "every replica serves all {} metrics with the owner's value",
        expected.len() + 1
    );

    // The peer routes answer only the install's serving certificate: not a cluster admin's
    // client certificate, not an anonymous client.
    let peer_url = format!("https://127.0.0.1:{}/peer/v1/readings?waitMs=0", a.port);
    for (who, client) in [
        ("admin", direct.clone()),
        ("anonymous", k8s::direct_client(None)),
    ] {
        let status = client.get(&peer_url).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 403, "{who} on the peer routes");
    }
    let as_peer = {
        let mut pem = std::fs::read(k8s::pki("spillway-serving.crt")).unwrap();
        pem.extend(std::fs::read(k8s::pki("spillway-serving.key")).unwrap());
        reqwest::Client::builder()
            .use_rustls_tls()
            .danger_accept_invalid_certs(true)
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    };
    let page: Value = as_peer
        .get(&peer_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "a peer's first page from {}: {} states",
        a.identity,
        page["states"].as_array().map_or(0, Vec::len)
    );
    assert!(page["epoch"].is_u64() && page["change"].is_u64(), "{page}");
    let refused = as_peer
        .post(format!("https://127.0.0.1:{}/peer/v1/asks", a.port))
        .header("content-type", "application/json")
        .body("{\"triggers\": 7}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(refused.as_u16(), 400, "a malformed ask is a 400");

    // Each group polled by exactly one replica, counted at the broker.
    let all: Vec<&CountingProxy> = prometheus_proxies
        .iter()
        .chain(std::iter::once(&rabbitmq_proxy))
        .collect();
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let window = window_start.elapsed().as_secs_f64();
    let seen = pollers(&all, window_start, &[a.pid(), b.pid(), c.pid()]);
    for (g, by_pid) in seen.iter().enumerate() {
        let who: Vec<String> = by_pid
            .iter()
            .map(|(pid, n)| format!("{} x{n}", name_of(*pid, &[&a, &b, &c])))
            .collect();
        println!(
            "group {g}: {:.2} requests/s, from {}",
            by_pid.values().sum::<usize>() as f64 / window,
            who.join(", ")
        );
        assert_eq!(by_pid.len(), 1, "group {g} polled by one replica: {who:?}");
        assert!(
            by_pid
                .keys()
                .all(|pid| [a.pid(), b.pid(), c.pid()].contains(pid)),
            "group {g}: {who:?}"
        );
    }
    // One request per trigger per second at most, plus a round's slack: not once per replica.
    for (g, by_pid) in seen.iter().take(PROMETHEUS_GROUPS).enumerate() {
        let per_second = by_pid.values().sum::<usize>() as f64 / window;
        assert!(
            per_second <= OBJECTS_PER_GROUP as f64 * 1.3,
            "group {g}: {per_second:.2} requests/s for {OBJECTS_PER_GROUP} triggers at 1 s"
        );
    }

    // The sampler: every live replica's answer for the worker metric, every 200 ms, and the
    // aggregator's every 500 ms. A 0 is never right: the queue is never empty.
    let answers = Arc::new(Mutex::new(Answers::default()));
    let live_ports = Arc::new(Mutex::new(vec![a.port, b.port, c.port]));
    let sampler = {
        let (answers, live_ports, direct) = (answers.clone(), live_ports.clone(), direct.clone());
        let (ns, metric) = (ns.clone(), worker_metric.clone());
        let admin = admin.clone();
        let since = Instant::now();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                let ports = live_ports.lock().unwrap().clone();
                for port in ports {
                    let got = value_from(&direct, port, &ns, &metric, "worker").await;
                    let mut answers = answers.lock().unwrap();
                    match got {
                        Ok(value) => {
                            *answers.by_code.entry("200".into()).or_default() += 1;
                            if value == 0.0 {
                                answers.zeros.push(format!("replica on {port}"));
                            }
                            answers
                                .values
                                .push((since.elapsed(), port.to_string(), value));
                        }
                        Err(code) => *answers.by_code.entry(code).or_default() += 1,
                    }
                }
                if tick % 2 == 0 {
                    let path = format!(
                        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector={LABEL}%3Dworker"
                    );
                    let (code, body) = k8s::get_raw(&admin, &path).await;
                    let mut answers = answers.lock().unwrap();
                    *answers
                        .by_code
                        .entry(format!("aggregator {code}"))
                        .or_default() += 1;
                    if code == 200 && body.contains("\"value\":\"0\"") {
                        answers.zeros.push("through the aggregator".into());
                    }
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // 1. The replica polling the queue is killed (SIGKILL: its Lease is left to expire).
    let owner_pid = *seen[PROMETHEUS_GROUPS].keys().next().unwrap();
    let mut replicas_now = vec![a, b, c];
    let killed_at_index = replicas_now
        .iter()
        .position(|r| r.pid() == owner_pid)
        .unwrap();
    let mut killed = replicas_now.remove(killed_at_index);
    println!("killing {} (polls the queue)", killed.identity);
    live_ports.lock().unwrap().retain(|p| *p != killed.port);
    let killed_at = Instant::now();
    killed.kill();
    service.set_targets(replicas_now.iter().map(|r| r.port).collect());
    common::rabbitmq::declare_with_messages(&channel, &queue, false, 40).await;
    let survivors: Vec<u32> = replicas_now.iter().map(|r| r.pid()).collect();
    let (new_owner, polled_again) = common::eventually(
        "the queue's group to be polled by a surviving replica",
        Duration::from_secs(30),
        || async { rabbitmq_proxy.first_by_any(&survivors, killed_at) },
    )
    .await;
    let gap = polled_again
        - rabbitmq_proxy
            .last_by(&[owner_pid], killed_at)
            .unwrap_or(killed_at);
    println!(
        "killed replica's group polled again by {} {:.1?} after the kill ({:.1?} since its last poll; member Lease {MEMBER_LEASE_SECONDS} s, interval 1 s)",
        name_of(new_owner, &replicas_now.iter().collect::<Vec<_>>()),
        polled_again - killed_at,
        gap
    );
    assert!(survivors.contains(&new_owner));
    assert!(
        polled_again - killed_at <= Duration::from_secs(MEMBER_LEASE_SECONDS + 1 + 3),
        "within the Lease duration, an interval and slack"
    );
    common::eventually(
        "the HPA to scale worker to 8",
        Duration::from_secs(90),
        || async { (replicas(&deployments, "worker").await == 8).then_some(()) },
    )
    .await;
    println!(
        "80 messages -> worker at 8 after {:.1?} (one replica dead)",
        killed_at.elapsed()
    );

    // 2. A new replica joins: groups move to it, polling stays single.
    let d = start_replica(&kubeconfig, &lease, &format!("{lease}-d")).await;
    let joined_at = Instant::now();
    // Like a Service, traffic only once ready (every ScaledObject registered there).
    let ready_after = d.wait_ready(Duration::from_secs(40)).await;
    println!(
        "{} ready {ready_after:.1?} after answering /healthz",
        d.identity
    );
    live_ports.lock().unwrap().push(d.port);
    replicas_now.push(d);
    service.set_targets(replicas_now.iter().map(|r| r.port).collect());
    let refs: Vec<&SpillwayController> = replicas_now.iter().collect();
    let took = wait_members(&refs, 3.0, Duration::from_secs(20)).await;
    println!("{} joined; 3 live again after {took:.1?}", refs[2].identity);
    common::rabbitmq::declare_with_messages(&channel, &queue, false, 20).await;
    common::eventually(
        "the HPA to scale worker to 10",
        Duration::from_secs(90),
        || async { (replicas(&deployments, "worker").await == 10).then_some(()) },
    )
    .await;
    println!(
        "100 messages -> worker at 10 after {:.1?} (after the join)",
        joined_at.elapsed()
    );
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pids: Vec<u32> = refs.iter().map(|r| r.pid()).collect();
    for (g, by_pid) in pollers(&all, window_start, &pids).iter().enumerate() {
        let who: Vec<String> = by_pid
            .iter()
            .map(|(pid, n)| format!("{} x{n}", name_of(*pid, &refs)))
            .collect();
        println!("after the join, group {g}: from {}", who.join(", "));
        assert_eq!(by_pid.len(), 1, "group {g} polled by one replica: {who:?}");
        assert!(by_pid.keys().all(|p| pids.contains(p)), "{who:?}");
    }

    // 3. The queue's owner stops gracefully: its Lease goes first, so the group moves with
    // no longer gap than a polling interval or two.
    let owner_pid = *pollers(&[&rabbitmq_proxy], window_start, &pids)[0]
        .keys()
        .next()
        .unwrap();
    let index = replicas_now
        .iter()
        .position(|r| r.pid() == owner_pid)
        .unwrap();
    let stopping = replicas_now.remove(index);
    // A terminating pod leaves the Service's endpoints.
    live_ports.lock().unwrap().retain(|p| *p != stopping.port);
    service.set_targets(replicas_now.iter().map(|r| r.port).collect());
    let stop_at = Instant::now();
    println!("stopping {} (SIGTERM; polls the queue)", stopping.identity);
    let stopped = stopping.terminate_in_background(Duration::from_secs(30));
    let (successor, first) = common::eventually(
        "the queue's group to be polled by another replica after the SIGTERM",
        Duration::from_secs(20),
        || async {
            let others: Vec<u32> = pids.iter().copied().filter(|p| *p != owner_pid).collect();
            rabbitmq_proxy.first_by_any(&others, stop_at)
        },
    )
    .await;
    let (stopping, exited) = stopped.await.unwrap();
    assert!(exited, "{} exits after SIGTERM", stopping.identity);
    // The old owner polls on through the handover; the gap is from its last poll before the
    // successor's first.
    let last = rabbitmq_proxy
        .last_by(&[owner_pid], first)
        .unwrap_or(stop_at);
    let handover_gap = first.saturating_duration_since(last);
    println!(
        "graceful stop: {} polled the queue {:.1?} after SIGTERM; gap after the old owner's last poll {:.1?}",
        name_of(successor, &replicas_now.iter().collect::<Vec<_>>()),
        first - stop_at,
        handover_gap
    );
    assert!(
        handover_gap <= Duration::from_millis(2_500),
        "graceful handover leaves at most about an interval unpolled: {handover_gap:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    sampler.abort();
    recorder.catch_up().await;
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    println!("answers while groups moved: {:?}", answers.by_code);
    let not_200: Vec<_> = answers
        .by_code
        .iter()
        .filter(|(code, _)| !code.ends_with("200"))
        .collect();
    assert!(
        not_200.is_empty(),
        "every answer of a ready replica and of the aggregator is the value: {not_200:?}"
    );
    println!("worker replicas: {}", recorder.describe());
    assert!(
        answers.zeros.is_empty(),
        "a 0 was served: {:?}",
        answers.zeros
    );
    let wrong: Vec<&(Duration, String, f64)> = answers
        .values
        .iter()
        .filter(|(_, _, v)| ![40.0, 80.0, 100.0].contains(v))
        .collect();
    assert!(
        wrong.is_empty(),
        "values other than the queue's depths: {wrong:?}"
    );
    // Once at 4, the worker never went below it through the kill, the join and the stop.
    let seen_after = recorder.describe();
    let dropped = seen_after
        .split(", ")
        .filter_map(|s| s.split(' ').next()?.parse::<i32>().ok())
        .skip_while(|r| *r < 4)
        .any(|r| r < 4);
    assert!(!dropped, "worker dropped below 4: {seen_after}");
    // Later tests share the cluster: leave none of this test's objects to their spillways.
    k8s::delete_namespaces_starting_with(&admin, "e2e-share-").await;
    drop(service);
    drop(killed);
}
