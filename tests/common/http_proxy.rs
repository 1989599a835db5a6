//! A counting HTTP reverse proxy in front of a broker's HTTP API (Prometheus, RabbitMQ's
//! management API): every request is forwarded to the upstream and counted against the
//! process that sent it, found from the client's socket under `/proc` (loopback only, Linux).
//! What the broker saw, by process: which replica polled a connection group and how often.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};

/// Requests seen, by the sending process's pid (0: not found), with the time of each.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<(u32, Instant)>,
    /// Client port -> pid, found once per connection.
    pids: HashMap<u16, u32>,
}

pub struct CountingProxy {
    pub address: SocketAddr,
    upstream: String,
    seen: Arc<Mutex<Seen>>,
    in_flight: Arc<InFlight>,
    task: tokio::task::JoinHandle<()>,
}

/// Requests being forwarded now, and the most there have been at once.
#[derive(Debug, Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Seen>>,
    in_flight: Arc<InFlight>,
}

impl CountingProxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`http://host:port`, no path).
    pub async fn start(upstream: &str) -> Self {
        super::allow_loopback_destinations();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let in_flight = Arc::new(InFlight::default());
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            seen: Arc::clone(&seen),
            in_flight: Arc::clone(&in_flight),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Self {
            address,
            upstream: upstream.to_owned(),
            seen,
            in_flight,
            task,
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The most requests that were being forwarded at once.
    pub fn most_in_flight(&self) -> usize {
        self.in_flight.most.load(Ordering::SeqCst)
    }

    /// Requests by pid since `from`.
    pub fn by_pid_since(&self, from: Instant) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for (pid, at) in &self.seen.lock().unwrap().requests {
            if *at >= from {
                *counts.entry(*pid).or_default() += 1;
            }
        }
        counts
    }

    /// The first request by `pid` at or after `from`.
    pub fn first_from(&self, pid: u32, from: Instant) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .find(|(p, at)| *p == pid && *at >= from)
            .map(|(_, at)| *at)
    }

    /// The last request by any pid in `pids` before `until`.
    pub fn last_by(&self, pids: &[u32], until: Instant) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(p, at)| pids.contains(p) && *at < until)
            .map(|(_, at)| *at)
            .max()
    }

    /// The first request by one of `pids` at or after `from`.
    pub fn first_by_any(&self, pids: &[u32], from: Instant) -> Option<(u32, Instant)> {
        self.seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .find(|(p, at)| pids.contains(p) && *at >= from)
            .copied()
    }

    /// The first request by a pid not in `pids` at or after `from`.
    pub fn first_by_other(&self, pids: &[u32], from: Instant) -> Option<(u32, Instant)> {
        self.seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .find(|(p, at)| !pids.contains(p) && *at >= from)
            .copied()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(state): State<ProxyState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let pid = {
        let mut seen = state.seen.lock().unwrap();
        let pid = match seen.pids.get(&peer.port()) {
            Some(pid) => *pid,
            None => {
                let pid = pid_of_loopback_client(peer.port()).unwrap_or(0);
                seen.pids.insert(peer.port(), pid);
                pid
            }
        };
        seen.requests.push((pid, Instant::now()));
        pid
    };
    let _ = pid;
    let now = state.in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
    state.in_flight.most.fetch_max(now, Ordering::SeqCst);
    let response = send_upstream(&state, request).await;
    state.in_flight.now.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn send_upstream(state: &ProxyState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut upstream = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get("content-type").cloned();
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = (status, bytes).into_response();
            if let Some(content_type) = content_type {
                response.headers_mut().insert("content-type", content_type);
            }
            response
        }
        Err(err) => (axum::http::StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

/// The pid of the process whose loopback TCP socket has local port `port`: the socket's inode
/// from `/proc/net/tcp`, then the process holding that inode among `/proc/*/fd`.
pub fn pid_of_loopback_client(port: u16) -> Option<u32> {
    let inode = socket_inode(port)?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return Some(pid);
            }
        }
    }
    None
}

fn socket_inode(port: u16) -> Option<String> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = fields.get(1) else { continue };
            let Some((_, hex_port)) = local.rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16).ok() == Some(port) {
                if let Some(inode) = fields.get(9).filter(|i| **i != "0") {
                    return Some((*inode).to_owned());
                }
            }
        }
    }
    None
}
