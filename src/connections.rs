//! Bounded serving of accepted connections, shared by the metrics API and `/metrics`: a cap on
//! open connections in all and per client address (one over either is closed at once and
//! counted), so one pod cannot take every place, a header-read timeout, HTTP/2
//! keep-alive pings, an idle timeout that closes a connection with no request in flight
//! (HTTP/2 included, which hyper would otherwise keep open forever), and a graceful drain.
//!
//! Without these, any pod that reaches the port can hold sockets and tasks without bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
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
    /// Connections open at once from one client address.
    pub max_connections_per_client: usize,
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
    /// Open connections per client address (addresses with none are removed).
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Counts connections closed because the cap was reached: in all, and per client.
    refused: Counter,
    refused_per_client: Counter,
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
    _client: ClientPlace,
    closing: watch::Receiver<bool>,
}

/// One of a client address's places; given back when dropped.
#[derive(Debug)]
struct ClientPlace {
    client: IpAddr,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut per_client = self.per_client.lock().expect("per-client lock");
        if let Some(open) = per_client.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

impl Connections {
    /// `refused` counts connections turned away at the cap, `refused_per_client` those turned
    /// away at a client's cap.
    pub fn new(limits: ConnectionLimits, refused: Counter, refused_per_client: Counter) -> Self {
        let (open, all_closed) = mpsc::channel(1);
        Self {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            limits,
            refused,
            refused_per_client,
            closing: watch::channel(false).0,
            open: Mutex::new(Some(open)),
            all_closed: tokio::sync::Mutex::new(all_closed),
        }
    }

    /// A place for a connection just accepted from `client`, or `None` (counted) when the cap
    /// or the client's cap is reached or shutdown has started: the caller drops the socket,
    /// which closes it.
    pub fn admit(&self, client: IpAddr) -> Option<Admitted> {
        let open = self.open.lock().expect("connections lock").clone()?;
        let place = {
            let mut per_client = self.per_client.lock().expect("per-client lock");
            let count = per_client.entry(client).or_insert(0);
            if *count >= self.limits.max_connections_per_client {
                drop(per_client);
                self.refused_per_client.inc();
                return None;
            }
            *count += 1;
            ClientPlace {
                client,
                per_client: Arc::clone(&self.per_client),
            }
        };
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(Admitted {
                _permit: permit,
                _open: open,
                _client: place,
                closing: self.closing.subscribe(),
            }),
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// The next connection `listener` accepts that fits within the caps, with its place and
    /// peer; `None` once `shutdown` completes. Connections over a cap are closed before any
    /// byte is read; accept errors (out of file descriptors and the like) back off instead of
    /// spinning. `server` names the listener in logs.
    pub async fn accept<F: std::future::Future<Output = ()>>(
        &self,
        listener: &tokio::net::TcpListener,
        mut shutdown: std::pin::Pin<&mut F>,
        server: &str,
    ) -> Option<(Admitted, tokio::net::TcpStream, std::net::SocketAddr)> {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(server, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return None,
            };
            match self.admit(peer.ip()) {
                Some(admitted) => return Some((admitted, tcp, peer)),
                None => tracing::debug!(server, %peer, "connection cap reached; closed"),
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
    pub async fn serve<I, S>(
        &self,
        mut admitted: Admitted,
        builder: &Builder<TokioExecutor>,
        io: I,
        app: S,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: tower::Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
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
        let (refused, refused_per_client) = (Counter::default(), Counter::default());
        let connections = Connections::new(
            ConnectionLimits {
                max_connections: 3,
                max_connections_per_client: 2,
                idle_timeout: Duration::from_secs(1),
                header_read_timeout: Duration::from_secs(1),
                keep_alive_interval: Duration::from_secs(1),
            },
            refused.clone(),
            refused_per_client.clone(),
        );
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let first = connections.admit(a).expect("first");
        let second = connections.admit(a).expect("second");
        assert!(connections.admit(a).is_none(), "a third from one client");
        assert_eq!(refused_per_client.get(), 1);
        let third = connections.admit(b).expect("another client");
        assert!(connections.admit(c).is_none(), "a fourth in all");
        assert_eq!(refused.get(), 1);
        drop(first);
        let fourth = connections.admit(c).expect("a freed place");
        drop((second, third, fourth));
        assert!(connections.per_client.lock().unwrap().is_empty());
        assert!(connections.drain(Duration::from_secs(1)).await);
        assert!(connections.admit(a).is_none(), "admitted after shutdown");
    }
}
