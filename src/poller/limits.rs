//! Bounds on broker rounds in flight: at most [`MAX_ROUNDS_IN_FLIGHT`] in the process and
//! [`MAX_ROUNDS_PER_ENDPOINT`] against one broker endpoint, so a thousand connection groups on
//! a dead host open a handful of sockets at a time, not a thousand, and cannot take every
//! slot from the healthy brokers.
//!
//! A group waits for its permits before it starts a round; while it waits, its readings age
//! and turn stale like those of any broker that does not answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Rounds in flight in one process, over every broker.
pub const MAX_ROUNDS_IN_FLIGHT: usize = 64;
/// Rounds in flight against one endpoint (servers or origin), whatever the credentials.
pub const MAX_ROUNDS_PER_ENDPOINT: usize = 8;

/// The permits of one round; dropping it frees them.
#[derive(Debug)]
pub struct RoundPermit {
    _process: OwnedSemaphorePermit,
    _endpoint: OwnedSemaphorePermit,
}

/// The process-wide and per-endpoint round limits; shared by every group task.
#[derive(Debug)]
pub struct RoundLimits {
    process: Arc<Semaphore>,
    in_process: usize,
    per_endpoint: usize,
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for RoundLimits {
    fn default() -> Self {
        Self::new(MAX_ROUNDS_IN_FLIGHT, MAX_ROUNDS_PER_ENDPOINT)
    }
}

impl RoundLimits {
    pub fn new(in_process: usize, per_endpoint: usize) -> Self {
        Self {
            process: Arc::new(Semaphore::new(in_process.max(1))),
            in_process: in_process.max(1),
            per_endpoint: per_endpoint.max(1),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a round's permits against `endpoint`: the endpoint's first, so a group
    /// waiting on a crowded endpoint holds no process-wide slot.
    pub async fn acquire(&self, endpoint: &str) -> RoundPermit {
        let semaphore = Arc::clone(
            self.endpoints
                .lock()
                .expect("limits lock")
                .entry(endpoint.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint))),
        );
        let endpoint = semaphore
            .acquire_owned()
            .await
            .expect("round semaphores are never closed");
        let process = Arc::clone(&self.process)
            .acquire_owned()
            .await
            .expect("round semaphores are never closed");
        RoundPermit {
            _process: process,
            _endpoint: endpoint,
        }
    }

    /// Forgets the endpoints no round holds or waits for (the map would otherwise keep every
    /// endpoint ever polled).
    pub fn forget_idle(&self) {
        self.endpoints
            .lock()
            .expect("limits lock")
            .retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
    }

    /// Rounds in flight now, in the process.
    pub fn in_flight(&self) -> usize {
        self.in_process - self.process.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn rounds_wait_for_their_endpoint_and_the_process() {
        let limits = Arc::new(RoundLimits::new(3, 2));
        let spawn_acquire = |endpoint: &'static str| {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.acquire(endpoint).await })
        };
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        let a1 = limits.acquire("a").await;
        let _a2 = limits.acquire("a").await;
        // A third round against `a` waits for a's slots; one against `b` does not.
        let third_a = spawn_acquire("a");
        settle().await;
        assert!(!third_a.is_finished(), "a's two slots are taken");
        let b1 = tokio::time::timeout(Duration::from_secs(1), limits.acquire("b"))
            .await
            .expect("b has slots of its own");
        assert_eq!(limits.in_flight(), 3);
        // The process's three slots are taken: b's second round waits for one.
        let second_b = spawn_acquire("b");
        settle().await;
        assert!(!second_b.is_finished(), "the process is full");

        // a1 ends: its process slot goes to the round that waited for one first (b's), and
        // the third round against `a` now waits for the process only.
        drop(a1);
        let _b2 = tokio::time::timeout(Duration::from_secs(1), second_b)
            .await
            .expect("a process slot freed")
            .unwrap();
        settle().await;
        assert!(!third_a.is_finished(), "the process is full again");
        drop(b1);
        tokio::time::timeout(Duration::from_secs(1), third_a)
            .await
            .expect("a process slot freed")
            .unwrap();
    }

    #[tokio::test]
    async fn idle_endpoints_are_forgotten() {
        let limits = RoundLimits::new(4, 1);
        let held = limits.acquire("kept").await;
        drop(limits.acquire("gone").await);
        limits.forget_idle();
        let endpoints: Vec<String> = limits.endpoints.lock().unwrap().keys().cloned().collect();
        assert_eq!(endpoints, ["kept"]);
        drop(held);
    }
}
