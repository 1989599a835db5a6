//! A lean HTTPS load generator for the metrics API benches: HTTP/1.1 keep-alive connections
//! over tokio-rustls on one thread (the server under test gets the other cores), each writing
//! raw request bytes prepared up front and reading answers with a minimal parser (status line,
//! `Content-Length`, body). Far cheaper per request than reqwest, so on a small machine the
//! figures are the server's, not the client's.
//!
//! Two modes: open loop at a fixed rate (each connection sends its share of the requests at
//! evenly spaced times; latency counts from when a request was due when its connection was
//! still waiting on the previous answer then, so a stall is not hidden by the connection
//! waiting on it, and from when it was sent otherwise, so the timer's 1 ms granularity is not
//! counted as the server's) and saturation (each connection sends its next request as soon
//! as the answer to the last one is in).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// What to load and how.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// Raw requests, sent in turn (connection `c` starts at request `c`).
    pub requests: Arc<Vec<Vec<u8>>>,
}

impl Target {
    /// A target whose requests GET each of `paths` with `headers` (name, value) added.
    pub fn new(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        paths: &[String],
        headers: &[(&str, &str)],
    ) -> Self {
        let requests = paths
            .iter()
            .map(|path| {
                let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nUser-Agent: spillway-bench\r\n");
                for (name, value) in headers {
                    request.push_str(&format!("{name}: {value}\r\n"));
                }
                request.push_str("\r\n");
                request.into_bytes()
            })
            .collect();
        Self {
            addr,
            tls,
            requests: Arc::new(requests),
        }
    }
}

/// A TLS client config trusting the PEM CA at `ca`, presenting the PEM certificate and key at
/// `identity` when given; HTTP/1.1 by ALPN.
pub fn client_config(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(ca).expect("CA file"),
    )) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
                std::fs::File::open(cert).expect("client certificate"),
            ))
            .collect::<Result<Vec<_>, _>>()
            .expect("client certificate PEM");
            let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
                std::fs::File::open(key).expect("client key"),
            ))
            .expect("client key PEM")
            .expect("a client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client certificate and key")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What one run measured.
pub struct Summary {
    /// Latency of each answered request, in microseconds, sorted.
    pub latencies: Vec<u32>,
    /// Requests that failed: not a 200, a broken connection (which is then reopened).
    pub errors: u64,
    /// From the first due request to the last answer (at least the run's length).
    pub elapsed: Duration,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies.len();
        self.latencies[((n as f64 - 1.0) * q).round() as usize] as f64 / 1e3
    }

    /// One line: rate, count, errors, p50, p90, p99, p99.9, max.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<44} {:>8.0} req/s  n={:<8} errors={:<5} p50 {:>6.3} ms  p90 {:>6.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  max {:>7.2} ms",
            self.rate(),
            self.latencies.len(),
            self.errors,
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(1.0),
        )
    }
}

/// Runs `connections` connections against `target` for `length` on a runtime of
/// `threads` threads of its own: `rate` requests per second over all connections, or as fast
/// as answers come when `None`. Connections are opened (and warmed with one request) before
/// the clock starts.
pub fn run(
    target: &Target,
    connections: usize,
    rate: Option<u64>,
    length: Duration,
    threads: usize,
) -> Summary {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("load runtime");
    let target = target.clone();
    std::thread::spawn(move || runtime.block_on(load(target, connections, rate, length)))
        .join()
        .expect("load thread")
}

async fn load(target: Target, connections: usize, rate: Option<u64>, length: Duration) -> Summary {
    let mut opened = Vec::new();
    for c in 0..connections {
        let mut connection = Connection::open(&target).await.expect("open a connection");
        connection
            .exchange(&target.requests[c % target.requests.len()])
            .await
            .expect("a first answer");
        opened.push(connection);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (c, mut connection) in opened.into_iter().enumerate() {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
            let offset =
                period.map_or(Duration::ZERO, |p| p.mul_f64(c as f64 / connections as f64));
            let end = start + length;
            let mut k: usize = 0;
            loop {
                let due = match period {
                    Some(period) => start + offset + period * k as u32,
                    None => Instant::now().max(start),
                };
                if due >= end {
                    break;
                }
                // Waiting on the connection's last answer past `due` counts (the server's
                // delay); waiting on the timer, which wakes up to 1 ms late, does not.
                let from = if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                let request = &target.requests[(c + k * 31) % target.requests.len()];
                match connection.exchange(request).await {
                    Ok(true) => latencies.push(from.elapsed().as_micros() as u32),
                    Ok(false) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        match Connection::open(&target).await {
                            Ok(fresh) => connection = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
                k += 1;
            }
            (latencies, errors)
        }));
    }
    let mut summary = Summary {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, errors) = task.await.expect("connection task");
        summary.latencies.extend(latencies);
        summary.errors += errors;
    }
    summary.elapsed = start.elapsed().max(length);
    summary.latencies.sort_unstable();
    summary
}

/// One keep-alive connection and its read buffer.
struct Connection {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(target: &Target) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::from(target.addr.ip());
        let stream = TlsConnector::from(Arc::clone(&target.tls))
            .connect(name, tcp)
            .await?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(8192),
        })
    }

    /// Sends `request` and reads its answer whole: `Ok(true)` for a 200.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<bool> {
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        self.buffer.clear();
        let broken = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad answer");
        let (head, length) = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).map_err(|_| broken())?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(broken)?;
                break (end + 4, length);
            }
            self.fill().await?;
        };
        while self.buffer.len() < head + length {
            self.fill().await?;
        }
        Ok(self.buffer.starts_with(b"HTTP/1.1 200 ") && length > 0)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Waits until `target` answers its first request with a 200, or panics after `timeout`.
pub async fn wait_ready(target: &Target, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut connection) = Connection::open(target).await
            && let Ok(true) = connection.exchange(&target.requests[0]).await
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not answer 200 within {timeout:?}",
            target.addr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
