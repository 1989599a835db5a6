//! Bearer tokens reviewed by kube-apiserver (TokenReview) without letting a caller turn spillway
//! into a TokenReview amplifier:
//!
//! - answers (valid or not) are cached for [`REVIEW_TTL`] in a bounded LRU keyed by an HMAC of
//!   the token under a key made at process start, so no raw token is kept as a key and a
//!   flood of new tokens evicts the least recently used, not everything;
//! - concurrent requests with one token share one review (single flight);
//! - reviews not answered from the cache are limited in rate ([`REVIEWS_PER_SECOND`], bursts
//!   of [`REVIEW_BURST`]) and in flight ([`MAX_REVIEWS_IN_FLIGHT`]); a request over either
//!   limit is answered 429 without a review.
//!
//! The limits are per process and shared by every caller: a flood of random tokens costs the
//! flooder 429s and kube-apiserver at most the rate, while callers with a cached answer, and
//! the aggregator (a front-proxy certificate, no token), are not affected.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};

use super::auth::UserInfo;
use super::lru::ExpiringLru;
use crate::metrics::Metrics;

/// How long an answer is reused (k8s.io/apiserver's delegating default is 10 s).
pub const REVIEW_TTL: Duration = Duration::from_secs(10);
/// Answers kept; beyond that the least recently used is dropped.
pub const CACHE_CAPACITY: usize = 4096;
/// Reviews sent per second on average, once a burst is spent.
pub const REVIEWS_PER_SECOND: f64 = 20.0;
/// Reviews that may be sent at once after a quiet spell.
pub const REVIEW_BURST: f64 = 40.0;
/// Reviews waiting on kube-apiserver at once.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 8;
/// How long a request waits for a review slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Why a bearer token gives no identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// kube-apiserver says the token is not valid (cached like a valid answer).
    Invalid(String),
    /// No review can be made now: over the review rate, or no slot in time (429).
    Limited(String),
    /// The review failed or timed out; not cached, so kube-apiserver being away briefly does
    /// not lock users out.
    Failed(String),
}

/// What one review says: the user, or why the token is not valid; `Err` when there was no
/// answer.
pub type ReviewAnswer = Result<Result<UserInfo, String>, String>;

type Outcome = Result<UserInfo, TokenRefusal>;

/// An HMAC-SHA256 of a token under the process's key.
type TokenDigest = [u8; 32];

/// The token cache, the reviews in flight and the limits; one per [`super::auth::Authenticator`].
pub struct TokenReviews {
    key: ring::hmac::Key,
    cache: Mutex<ExpiringLru<TokenDigest, Outcome>>,
    in_flight: Mutex<HashMap<TokenDigest, Arc<OnceCell<Outcome>>>>,
    rate: Mutex<TokenBucket>,
    slots: Semaphore,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TokenReviews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviews").finish_non_exhaustive()
    }
}

impl TokenReviews {
    /// Empty, with a fresh HMAC key; reviews and refusals are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .expect("the system's random source works");
        Self {
            key,
            cache: Mutex::new(ExpiringLru::new(CACHE_CAPACITY)),
            in_flight: Mutex::new(HashMap::new()),
            rate: Mutex::new(TokenBucket::new(
                REVIEW_BURST,
                REVIEWS_PER_SECOND,
                Instant::now(),
            )),
            slots: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            metrics,
        }
    }

    fn digest(&self, token: &str) -> TokenDigest {
        let tag = ring::hmac::sign(&self.key, token.as_bytes());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(tag.as_ref());
        digest
    }

    /// The identity of `token`: cached, or shared with a review in flight for the same token,
    /// or from `review` (called at most once here, within the limits).
    pub async fn authenticate<F, Fut>(&self, token: &str, review: F) -> Outcome
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ReviewAnswer>,
    {
        let digest = self.digest(token);
        if let Some(outcome) = self.cached(&digest) {
            return outcome;
        }
        let cell = Arc::clone(
            self.in_flight
                .lock()
                .expect("in-flight lock")
                .entry(digest)
                .or_default(),
        );
        // The first caller reviews; the others wait for its outcome. If the first one goes
        // away (its client hung up), the next waiter takes over.
        let outcome = cell
            .get_or_init(|| self.review_once(digest, token.to_owned(), review))
            .await
            .clone();
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if in_flight
            .get(&digest)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            in_flight.remove(&digest);
        }
        outcome
    }

    fn cached(&self, digest: &TokenDigest) -> Option<Outcome> {
        self.cache
            .lock()
            .expect("token cache lock")
            .get(digest, Instant::now())
            .cloned()
    }

    async fn review_once<F, Fut>(&self, digest: TokenDigest, token: String, review: F) -> Outcome
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ReviewAnswer>,
    {
        // A review that finished while this caller waited for the in-flight lock.
        if let Some(outcome) = self.cached(&digest) {
            return outcome;
        }
        if !self
            .rate
            .lock()
            .expect("rate lock")
            .try_take(Instant::now())
        {
            self.metrics.observe_token_review_refused("rate");
            return Err(TokenRefusal::Limited(format!(
                "too many new bearer tokens: at most {REVIEWS_PER_SECOND} TokenReviews per second are made; retry later"
            )));
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await else {
            self.metrics.observe_token_review_refused("concurrency");
            return Err(TokenRefusal::Limited(format!(
                "{MAX_REVIEWS_IN_FLIGHT} TokenReviews are already in flight; retry later"
            )));
        };
        let in_flight = self.metrics.token_reviews_in_flight();
        in_flight.inc();
        let answer = review(token).await;
        in_flight.dec();
        let outcome = match answer {
            Ok(Ok(user)) => {
                self.metrics.observe_token_review("authenticated");
                Ok(user)
            }
            Ok(Err(message)) => {
                self.metrics.observe_token_review("unauthenticated");
                Err(TokenRefusal::Invalid(message))
            }
            Err(message) => {
                self.metrics.observe_token_review("error");
                return Err(TokenRefusal::Failed(message));
            }
        };
        self.cache.lock().expect("token cache lock").put(
            digest,
            outcome.clone(),
            Instant::now() + REVIEW_TTL,
        );
        outcome
    }
}

/// A token bucket: `capacity` takes at once, refilled at `per_second`.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(capacity: f64, per_second: f64, now: Instant) -> Self {
        Self {
            capacity,
            per_second,
            tokens: capacity,
            updated: now,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MetricCache;
    use std::collections::BTreeMap as Map;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn reviews() -> (Arc<TokenReviews>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(Arc::new(MetricCache::new())));
        (Arc::new(TokenReviews::new(Arc::clone(&metrics))), metrics)
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: None,
            groups: vec![],
            extra: Map::new(),
        }
    }

    /// A review that takes `delay`, counts its calls and the most running at once.
    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Counting {
        async fn review(&self, token: String, delay: Duration) -> ReviewAnswer {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(if token.starts_with("good") {
                Ok(user(&token))
            } else {
                Err("not valid".into())
            })
        }
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_token_share_one_review() {
        let (reviews, _) = reviews();
        let counting = Arc::new(Counting::default());
        let asks = (0..200).map(|_| {
            let (reviews, counting) = (Arc::clone(&reviews), Arc::clone(&counting));
            tokio::spawn(async move {
                reviews
                    .authenticate("good-1", |t| async move {
                        counting.review(t, Duration::from_millis(100)).await
                    })
                    .await
            })
        });
        for ask in futures::future::join_all(asks).await {
            assert_eq!(ask.unwrap(), Ok(user("good-1")));
        }
        assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
        // And later asks are answered from the cache.
        let again = reviews
            .authenticate("good-1", |_| async { panic!("reviewed again") })
            .await;
        assert_eq!(again, Ok(user("good-1")));
    }

    #[tokio::test]
    async fn many_tokens_are_reviewed_within_the_rate_and_the_slots() {
        let (reviews, metrics) = reviews();
        let counting = Arc::new(Counting::default());
        let asks = (0..300).map(|i| {
            let (reviews, counting) = (Arc::clone(&reviews), Arc::clone(&counting));
            tokio::spawn(async move {
                reviews
                    .authenticate(&format!("random-{i}"), |t| async move {
                        counting.review(t, Duration::from_millis(50)).await
                    })
                    .await
            })
        });
        let outcomes: Vec<Outcome> = futures::future::join_all(asks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let calls = counting.calls.load(Ordering::SeqCst);
        assert!(
            (REVIEW_BURST as usize..=REVIEW_BURST as usize + 5).contains(&calls),
            "{calls} reviews"
        );
        assert!(counting.most.load(Ordering::SeqCst) <= MAX_REVIEWS_IN_FLIGHT);
        let limited = outcomes
            .iter()
            .filter(|o| matches!(o, Err(TokenRefusal::Limited(_))))
            .count();
        assert_eq!(limited + calls, 300);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(&format!(
                "spillway_token_reviews_total{{result=\"unauthenticated\"}} {calls}"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failed_review_is_not_cached() {
        let (reviews, _) = reviews();
        let failed = reviews
            .authenticate("good-2", |_| async { Err("timed out".to_owned()) })
            .await;
        assert_eq!(failed, Err(TokenRefusal::Failed("timed out".into())));
        let ok = reviews
            .authenticate("good-2", |t| async move { Ok(Ok(user(&t))) })
            .await;
        assert_eq!(ok, Ok(user("good-2")));
    }

    #[test]
    fn the_cache_key_is_a_keyed_hash_not_the_token() {
        let (first, _) = reviews();
        let (second, _) = reviews();
        let token = "eyJhbGciOiJSUzI1NiJ9.secret";
        assert_eq!(first.digest(token), first.digest(token));
        assert_ne!(
            first.digest(token),
            second.digest(token),
            "keys per process"
        );
        assert!(
            !first
                .digest(token)
                .windows(8)
                .any(|w| token.as_bytes().windows(8).any(|t| t == w))
        );
    }

    #[test]
    fn the_bucket_allows_bursts_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3.0, 2.0, start);
        let cases = [
            // (milliseconds after start, expected)
            (0, true),
            (0, true),
            (0, true),
            (0, false),
            (400, false),
            (500, true),
            (500, false),
            (10_000, true),
        ];
        for (ms, expected) in cases {
            assert_eq!(
                bucket.try_take(start + Duration::from_millis(ms)),
                expected,
                "at {ms} ms"
            );
        }
    }
}
