//! Leader election against the real kube-apiserver: two candidates on one Lease, with short
//! timings (lease 3 s, renew deadline 2 s, retry 0.5 s). Exactly one leads; a crashed leader is
//! replaced once its lease expires, a gracefully stopped one at once; a leader cut off from the
//! API server steps down before its successor takes over. Handover times are printed.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use spillway::controller::leader::{LeaderElectionConfig, LeaderElector};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NAMESPACE: &str = "default";

/// The electors' transition logs, shown with `--nocapture`.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("spillway=info")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

fn timings() -> LeaderElectionConfig {
    LeaderElectionConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
    }
}

/// One running elector, its leadership as published, and every change of it with the time.
struct Candidate {
    identity: String,
    leading: watch::Receiver<bool>,
    history: Arc<Mutex<Vec<(Instant, bool)>>>,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Candidate {
    fn start(client: kube::Client, lease: &str, identity: &str) -> Self {
        let elector = LeaderElector::new(client, NAMESPACE, lease, identity, timings())
            .expect("valid timings");
        let leading = elector.subscribe();
        let history = Arc::new(Mutex::new(Vec::new()));
        let mut changes = elector.subscribe();
        let record = history.clone();
        // Ends when the elector is dropped (a finished or aborted task): it leads no more.
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let now = *changes.borrow_and_update();
                record.lock().unwrap().push((Instant::now(), now));
            }
            record.lock().unwrap().push((Instant::now(), false));
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        }));
        Self {
            identity: identity.to_owned(),
            leading,
            history,
            task,
            stop: Some(stop),
        }
    }

    fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until the published leadership equals `leading`; the time it was seen.
    async fn wait_until(&mut self, leading: bool, timeout: Duration) -> Instant {
        tokio::time::timeout(timeout, self.leading.wait_for(|now| *now == leading))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not become leading={leading} within {timeout:?}",
                    self.identity
                )
            })
            .expect("elector alive");
        Instant::now()
    }

    /// Graceful shutdown: the elector stops leading and releases the lease.
    async fn shut_down(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        (&mut self.task).await.expect("elector task");
    }

    /// Leadership intervals `(from, to)`; an open interval ends at `Instant::now()`.
    fn intervals(&self) -> Vec<(Instant, Instant)> {
        let mut intervals = Vec::new();
        let mut since = None;
        for &(at, leading) in self.history.lock().unwrap().iter() {
            match (leading, since) {
                (true, None) => since = Some(at),
                (false, Some(from)) => {
                    intervals.push((from, at));
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(from) = since {
            intervals.push((from, Instant::now()));
        }
        intervals
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two candidates never led at the same time (as far as their published state says).
fn assert_never_both(a: &Candidate, b: &Candidate) {
    for (a_from, a_to) in a.intervals() {
        for (b_from, b_to) in b.intervals() {
            assert!(
                a_to <= b_from || b_to <= a_from,
                "{} led {a_from:?}..{a_to:?} while {} led {b_from:?}..{b_to:?}",
                a.identity,
                b.identity
            );
        }
    }
}

async fn lease(client: &kube::Client, name: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get(name)
        .await
        .expect("lease")
}

async fn delete_lease(client: &kube::Client, name: &str) {
    let _ = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .delete(name, &DeleteParams::default())
        .await;
}

/// Starts two candidates and waits until one leads; (leader, follower).
async fn elect_one(client: &kube::Client, lease_name: &str) -> (Candidate, Candidate) {
    let mut a = Candidate::start(client.clone(), lease_name, &format!("{lease_name}-a"));
    let mut b = Candidate::start(client.clone(), lease_name, &format!("{lease_name}-b"));
    let started = Instant::now();
    tokio::select! {
        _ = a.wait_until(true, Duration::from_secs(10)) => {}
        _ = b.wait_until(true, Duration::from_secs(10)) => {}
    }
    println!("first leader elected after {:?}", started.elapsed());
    // Several renewals: the leader keeps leading and the follower keeps waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        a.is_leader() ^ b.is_leader(),
        "exactly one leads: a={}, b={}",
        a.is_leader(),
        b.is_leader()
    );
    assert_never_both(&a, &b);
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    let spec = lease(client, lease_name).await.spec.expect("spec");
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(leader.identity.as_str())
    );
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert_eq!(spec.lease_transitions, Some(0));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    (leader, follower)
}

#[tokio::test]
async fn crashed_leader_is_replaced_after_the_lease_expires() {
    show_logs();
    let client = common::k8s::admin().await;
    let name = common::unique_name("leader-crash");
    let (leader, mut follower) = elect_one(&client, &name).await;

    // A crash: the task dies without releasing the lease.
    let crashed = Instant::now();
    leader.task.abort();
    let took_over = follower
        .wait_until(true, Duration::from_secs(10))
        .await
        .duration_since(crashed);
    println!("handover after a crash (lease 3 s, retry 0.5 s): {took_over:?}");
    assert!(
        took_over < Duration::from_secs(6),
        "lease + 3 s: {took_over:?}"
    );
    // The lease was renewed at most a retry period (plus a request) before the crash; the
    // follower must wait out its duration from then.
    assert!(
        took_over > Duration::from_secs(2),
        "took over before the lease expired: {took_over:?}"
    );
    assert_never_both(&leader, &follower);

    let spec = lease(&client, &name).await.spec.expect("spec");
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(follower.identity.as_str())
    );
    assert_eq!(spec.lease_transitions, Some(1));
    delete_lease(&client, &name).await;
}

#[tokio::test]
async fn gracefully_stopped_leader_hands_over_at_once() {
    show_logs();
    let client = common::k8s::admin().await;
    let name = common::unique_name("leader-release");
    let (mut leader, mut follower) = elect_one(&client, &name).await;

    let stopping = Instant::now();
    leader.shut_down().await;
    let released = stopping.elapsed();
    assert!(!leader.is_leader());
    let took_over = follower
        .wait_until(true, Duration::from_secs(10))
        .await
        .duration_since(stopping);
    println!("graceful handover (retry 0.5 s): {took_over:?} (release written after {released:?})");
    assert!(
        took_over < Duration::from_millis(2500),
        "retry + 2 s: {took_over:?}"
    );
    assert_never_both(&leader, &follower);

    let spec = lease(&client, &name).await.spec.expect("spec");
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(follower.identity.as_str())
    );
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    delete_lease(&client, &name).await;
}

/// A TCP relay to the API server that can be cut: once blocked, it forwards nothing, on open
/// connections or new ones, and closes nothing, so requests hang as behind a partition.
struct Partition {
    addr: SocketAddr,
    blocked: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Partition {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blocked, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watching = watching.clone();
                tokio::spawn(async move {
                    if *watching.borrow() {
                        return std::future::pending().await;
                    }
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = watching.wait_for(|blocked| *blocked) => true,
                    };
                    if cut {
                        // Hold both sockets open and silent.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Self {
            addr,
            blocked,
            task,
        }
    }

    fn block(&self) {
        self.blocked.send_replace(true);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The admin client, talking to the API server at `addr` instead (same TLS identity: the
/// serving certificate names 127.0.0.1, whatever the port).
async fn admin_via(addr: SocketAddr) -> kube::Client {
    let mut config = admin_config().await;
    config.cluster_url = format!("https://{addr}").parse().unwrap();
    kube::Client::try_from(config).expect("client")
}

async fn admin_config() -> kube::Config {
    let path = common::k8s::k8s_dir().join("admin.kubeconfig");
    let file = kube::config::Kubeconfig::read_from(&path).expect("admin kubeconfig");
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig")
}

async fn api_server_addr() -> SocketAddr {
    let url = admin_config().await.cluster_url;
    let host = url.host().expect("host");
    let port = url.port_u16().unwrap_or(443);
    tokio::net::lookup_host((host, port))
        .await
        .unwrap()
        .next()
        .expect("address")
}

#[tokio::test]
async fn leader_cut_off_from_the_api_server_steps_down_before_the_handover() {
    show_logs();
    let client = common::k8s::admin().await;
    let name = common::unique_name("leader-partition");
    let partition = Partition::start(api_server_addr().await).await;

    // The cut-off candidate leads first; the other waits on a direct connection.
    let mut cut = Candidate::start(
        admin_via(partition.addr).await,
        &name,
        &format!("{name}-cut"),
    );
    cut.wait_until(true, Duration::from_secs(10)).await;
    let mut other = Candidate::start(client.clone(), &name, &format!("{name}-other"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cut.is_leader() && !other.is_leader());

    let blocked = Instant::now();
    partition.block();
    let stepped_down = cut.wait_until(false, Duration::from_secs(5)).await;
    let took_over = other.wait_until(true, Duration::from_secs(10)).await;
    let step_down = stepped_down.duration_since(blocked);
    let handover = took_over.duration_since(blocked);
    println!(
        "partitioned leader stepped down after {step_down:?} (renew deadline 2 s); \
         the other led after {handover:?}, {:?} after the step-down",
        took_over.duration_since(stepped_down)
    );
    assert!(
        step_down <= Duration::from_millis(2500),
        "renew deadline + 0.5 s: {step_down:?}"
    );
    assert!(
        stepped_down < took_over,
        "the successor led before the cut-off leader stepped down"
    );
    assert!(
        handover < Duration::from_secs(6),
        "lease + 3 s: {handover:?}"
    );
    assert_never_both(&cut, &other);
    // Cut off, it cannot learn anything that would let it lead again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!cut.is_leader());
    delete_lease(&client, &name).await;
}

#[tokio::test]
async fn candidate_without_an_api_server_never_leads() {
    show_logs();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let name = common::unique_name("leader-unreachable");
    let candidate = Candidate::start(admin_via(closed).await, &name, &format!("{name}-a"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!candidate.is_leader());
    assert!(candidate.intervals().is_empty());
}
