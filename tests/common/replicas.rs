//! A Deployment's replica count over a test, from a watch: what the e2e tests assert "never
//! dropped" and print.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use tokio::task::JoinHandle;

/// Every change of a Deployment's replicas, from a watch (so no short dip is missed).
pub struct ReplicaRecorder {
    since: Instant,
    seen: Arc<Mutex<Vec<(Duration, i32)>>>,
    task: JoinHandle<()>,
}

impl ReplicaRecorder {
    pub fn start(deployments: Api<Deployment>, name: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let since = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::<(Duration, i32)>::new()));
        let record = seen.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut changes = watcher(deployments, config).applied_objects().boxed();
        let task = tokio::spawn(async move {
            while let Some(event) = changes.next().await {
                let Ok(deployment) = event else { continue };
                let now = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
                let mut seen = record.lock().unwrap();
                if seen.last().is_none_or(|(_, last)| *last != now) {
                    seen.push((since.elapsed(), now));
                }
            }
        });
        Self { since, seen, task }
    }

    /// Lets the watch deliver what a wait has just seen.
    pub async fn catch_up(&self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    pub fn lowest(&self) -> Option<i32> {
        self.seen.lock().unwrap().iter().map(|(_, r)| *r).min()
    }

    /// The lowest count since `from` (on [`ReplicaRecorder::elapsed`]'s clock), the count in
    /// force at `from` included; after letting the watch catch up.
    pub async fn lowest_since(&self, from: Duration) -> Option<i32> {
        self.catch_up().await;
        let seen = self.seen.lock().unwrap();
        let before = seen.iter().rev().find(|(at, _)| *at <= from).map(|s| s.1);
        let after = seen.iter().filter(|(at, _)| *at > from).map(|s| s.1);
        before.into_iter().chain(after).min()
    }
    /// "1 at 0.0 s, 3 at 12.3 s", times from the recorder's start.
    pub fn describe(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(at, r)| format!("{r} at {:.1} s", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn elapsed(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for ReplicaRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Deployment's `spec.replicas` now (1 when unset, as the API server defaults it).
pub async fn replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get(name)
        .await
        .unwrap_or_else(|err| panic!("get Deployment {name}: {err}"))
        .spec
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}
