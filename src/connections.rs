//! Bounded serving of accepted connections, shared by the metrics API and `/metrics`: a cap on
//! open connections (one over it is closed at once and counted), a header-read timeout, HTTP/2
//! keep-alive pings, an idle timeout that closes a connection with no request in flight
//! (HTTP/2 included, which hyper would otherwise keep open forever), and a graceful drain.
//!
//! Without these, any pod that reaches the port can hold sockets and tasks without bound.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tower::ServiceExt;

/// How a server bounds its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed (HTTP/1 and HTTP/2).
    pub idle_timeout: Duration,
    /// How long a request's headers may take to arrive (HTTP/1).
    pub header_read_timeout: Duration,
    /// How often an HTTP/2 connection is pinged; an unanswered ping closes it after
    /// [`KEEP_ALIVE_TIMEOUT`].
    pub keep_alive_interval: Duration,
}

/// How long an HTTP/2 keep-alive ping may go unanswered.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection asked to close gets to do so before it is dropped: hyper's
/// HTTP/2 close waits for the peer to answer a ping, which a silent client never does.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The open connections of one server: admission against the cap, the drive of each one, and
/// the drain at shutdown.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    /// Counts connections closed because the cap was reached.
    refused: Counter,
    /// `true` once shutdown starts: every connection finishes its requests and closes.
    closing: watch::Sender<bool>,
    /// Each connection task holds a clone; the drain waits until every clone is gone.
    open: Mutex<Option<mpsc::Sender<()>>>,
    all_closed: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// A connection admitted under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _open: mpsc::Sender<()>,
    closing: watch::Receiver<bool>,
}

impl Connections {
    /// `refused` counts connections turned away at the cap.
    pub fn new(limits: ConnectionLimits, refused: Counter) -> Self {
        let (open, all_closed) = mpsc::channel(1);
        Self {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            refused,
            closing: watch::channel(false).0,
            open: Mutex::new(Some(open)),
            all_closed: tokio::sync::Mutex::new(all_closed),
        }
    }

    /// A place for a connection just accepted, or `None` (counted) when the cap is reached or
    /// shutdown has started: the caller drops the socket, which closes it.
    pub fn admit(&self) -> Option<Admitted> {
        let open = self.open.lock().expect("connections lock").clone()?;
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(Admitted {
                _permit: permit,
                _open: open,
                closing: self.closing.subscribe(),
            }),
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// A connection builder with the header timeout and HTTP/2 keep-alive set.
    pub fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.limits.keep_alive_interval))
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
        builder
    }

    /// Serves `app` on `io` until the client closes, the connection has been idle for the
    /// idle timeout, or shutdown asks it to finish (its requests in flight are answered).
    pub async fn serve<I>(
        &self,
        mut admitted: Admitted,
        builder: &Builder<TokioExecutor>,
        io: I,
        app: Router,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let tracked = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = tracked.begin();
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(busy);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut finishing = *admitted.closing.borrow();
        if finishing {
            connection.as_mut().graceful_shutdown();
        }
        let mut idle_since = None;
        loop {
            let grace_over = async {
                match idle_since {
                    Some(since) => tokio::time::sleep_until(since + CLOSE_GRACE).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                served = connection.as_mut() => return served,
                _ = admitted.closing.changed(), if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = activity.idle_for(self.limits.idle_timeout), if !finishing => {
                    finishing = true;
                    idle_since = Some(tokio::time::Instant::now());
                    tracing::debug!(after = ?self.limits.idle_timeout, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                }
                () = grace_over => {
                    tracing::debug!("an idle connection did not close in time; dropped");
                    return Ok(());
                }
            }
        }
    }

    /// Asks every connection to finish and waits up to `timeout` for them; admits no more.
    /// Returns whether all closed in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.open.lock().expect("connections lock").take();
        let _ = self.closing.send(true);
        let mut all_closed = self.all_closed.lock().await;
        tokio::time::timeout(timeout, all_closed.recv())
            .await
            .is_ok()
    }
}

/// Requests in flight on one connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_done.lock().expect("activity lock") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    /// Completes once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let since = *self.last_done.lock().expect("activity lock");
            let idle_until = since + timeout;
            if self.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() >= idle_until {
                return;
            }
            let wake = idle_until.max(Instant::now() + Duration::from_millis(100));
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_requests_for_the_timeout() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_secs(30);
        let busy = activity.begin();
        // A request in flight for longer than the timeout keeps the connection.
        let idle = tokio::time::timeout(Duration::from_secs(60), activity.idle_for(timeout)).await;
        assert!(idle.is_err(), "idle while a request was in flight");
        drop(busy);
        let started = tokio::time::Instant::now();
        activity.idle_for(timeout).await;
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn admission_stops_at_the_cap_and_counts_refusals() {
        let refused = Counter::default();
        let connections = Connections::new(
            ConnectionLimits {
                max_connections: 2,
                idle_timeout: Duration::from_secs(1),
                header_read_timeout: Duration::from_secs(1),
                keep_alive_interval: Duration::from_secs(1),
            },
            refused.clone(),
        );
        let first = connections.admit().expect("first");
        let _second = connections.admit().expect("second");
        assert!(connections.admit().is_none());
        assert_eq!(refused.get(), 1);
        drop(first);
        let third = connections.admit().expect("a freed place");
        drop(third);
        drop(_second);
        assert!(connections.drain(Duration::from_secs(1)).await);
        assert!(connections.admit().is_none(), "admitted after shutdown");
    }
}
