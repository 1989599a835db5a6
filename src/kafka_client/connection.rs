//! One connection to one broker. Requests are pipelined: each gets a correlation id, is written
//! as soon as the writer is free, and waits for the answer carrying its id, which a reader task
//! routes back; many requests are in flight at once. Every request has a timeout. A broken
//! connection (reset, end of stream, timeout) fails every request in flight and is marked
//! closed, so the pool opens a new one on the next request: a broker restart costs the requests
//! in flight, never the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::cluster::ConnectOptions;
use super::requests::{ReadRequest, negotiate};
use super::sasl::{SaslCredentials, ScramExchange, plain_message};
use super::{WireError, error_of};

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxedStream = Box<dyn Stream>;

/// The largest answer accepted, the same cap as every other broker answer (a Metadata answer
/// for 10,000 partitions is under 1 MiB): a bound against a garbage or hostile length, checked
/// before the frame is read.
const MAX_FRAME: usize = 16 << 20;

/// Requests sent, by API name, shared by every connection of a cluster.
#[derive(Default)]
pub struct RequestCounter(Mutex<HashMap<&'static str, u64>>);

/// Requests sent by every cluster of the process, by API (`spillway_kafka_requests_total`).
static SENT_BY_PROCESS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Requests sent by every cluster of the process so far, by Kafka API name.
pub fn requests_sent_by_process() -> Vec<(&'static str, u64)> {
    SENT_BY_PROCESS
        .lock()
        .expect("request counter lock")
        .iter()
        .map(|(api, n)| (*api, *n))
        .collect()
}

impl RequestCounter {
    fn count(&self, api: &'static str) {
        *self
            .0
            .lock()
            .expect("request counter lock")
            .entry(api)
            .or_default() += 1;
        *SENT_BY_PROCESS
            .lock()
            .expect("request counter lock")
            .entry(api)
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> HashMap<&'static str, u64> {
        self.0.lock().expect("request counter lock").clone()
    }
}

type Waiter = oneshot::Sender<Result<Bytes, String>>;

/// Requests waiting for their answer, by correlation id; `closed` once the connection broke.
#[derive(Default)]
struct InFlight {
    closed: Option<String>,
    waiting: HashMap<i32, Waiter>,
}

impl InFlight {
    fn close(&mut self, cause: &str) {
        self.closed.get_or_insert_with(|| cause.to_owned());
        for (_, waiter) in self.waiting.drain() {
            let _ = waiter.send(Err(cause.to_owned()));
        }
    }
}

pub struct Connection {
    broker: String,
    writer: tokio::sync::Mutex<WriteHalf<BoxedStream>>,
    in_flight: Arc<Mutex<InFlight>>,
    next_correlation_id: AtomicI32,
    /// The broker's version range per API key, from ApiVersions.
    versions: OnceLock<HashMap<i16, (i16, i16)>>,
    reader: tokio::task::JoinHandle<()>,
    counter: Arc<RequestCounter>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connects to the first address of `broker` (`host:port`) the destination policy allows,
/// checked after resolution for each connection: bootstrap servers come from tenants, and the
/// brokers Kafka's metadata names could be anything.
async fn connect_allowed(broker: &str) -> std::io::Result<TcpStream> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| std::io::Error::other(format!("{broker:?} is not host:port")))?;
    let addresses = crate::destination::resolve(host, port)
        .await
        .map_err(std::io::Error::other)?;
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => return Ok(tcp),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

impl Connection {
    /// Connects, negotiates versions and authenticates, each step within the timeout.
    pub async fn open(
        broker: &str,
        options: &ConnectOptions,
        counter: Arc<RequestCounter>,
    ) -> Result<Arc<Self>, WireError> {
        let timeout = options.timeout;
        let tcp = match tokio::time::timeout(timeout, connect_allowed(broker)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => {
                return Err(WireError::Connect {
                    broker: broker.to_owned(),
                    cause: err.to_string(),
                });
            }
            Err(_) => {
                return Err(WireError::Timeout {
                    broker: broker.to_owned(),
                    api: "connect",
                    after: timeout,
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream: BoxedStream = match &options.tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = broker
                    .rsplit_once(':')
                    .map_or(broker, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|err| WireError::Config(format!("TLS server name {host:?}: {err}")))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(err)) => {
                        return Err(WireError::Connect {
                            broker: broker.to_owned(),
                            cause: format!("TLS handshake: {err}"),
                        });
                    }
                    Err(_) => {
                        return Err(WireError::Timeout {
                            broker: broker.to_owned(),
                            api: "TLS handshake",
                            after: timeout,
                        });
                    }
                }
            }
        };
        let (read, write) = tokio::io::split(stream);
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let reader = tokio::spawn(read_answers(read, Arc::clone(&in_flight)));
        let connection = Arc::new(Self {
            broker: broker.to_owned(),
            writer: tokio::sync::Mutex::new(write),
            in_flight,
            next_correlation_id: AtomicI32::new(1),
            versions: OnceLock::new(),
            reader,
            counter,
        });
        connection.negotiate_versions(timeout).await?;
        if let Some(sasl) = &options.sasl {
            connection.authenticate(sasl, timeout).await?;
        }
        Ok(connection)
    }

    pub fn is_closed(&self) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .closed
            .is_some()
    }

    /// Sends `request` at the highest version both sides speak and waits for its answer.
    pub async fn send<R: ReadRequest>(
        &self,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Response, WireError> {
        let version = self.version_of::<R>()?;
        self.send_version(request, version, timeout).await
    }

    /// The version `send` would use.
    pub fn version_of<R: ReadRequest>(&self) -> Result<i16, WireError> {
        self.versions
            .get()
            .and_then(|versions| versions.get(&(R::KEY as i16)))
            .and_then(|theirs| negotiate(R::VERSIONS, *theirs))
            .ok_or_else(|| WireError::Unsupported {
                broker: self.broker.clone(),
                api: R::NAME,
            })
    }

    async fn send_version<R: ReadRequest>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, WireError> {
        let protocol = |cause: anyhow::Error| WireError::Protocol {
            broker: self.broker.clone(),
            api: R::NAME,
            cause: cause.to_string(),
        };
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("spillway")));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, R::KEY.request_header_version(version))
            .map_err(protocol)?;
        request.encode(&mut frame, version).map_err(protocol)?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());

        let (sender, answer) = oneshot::channel();
        {
            let mut in_flight = self.in_flight.lock().expect("in-flight lock");
            if let Some(cause) = &in_flight.closed {
                return Err(WireError::Disconnected {
                    broker: self.broker.clone(),
                    cause: cause.clone(),
                });
            }
            in_flight.waiting.insert(correlation_id, sender);
        }
        self.counter.count(R::NAME);
        let exchange = async {
            {
                let mut writer = self.writer.lock().await;
                writer.write_all(&frame).await.map_err(|e| e.to_string())?;
                writer.flush().await.map_err(|e| e.to_string())?;
            }
            answer.await.map_err(|_| "connection closed".to_owned())?
        };
        let mut bytes = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(cause)) => {
                self.close(&cause);
                return Err(WireError::Disconnected {
                    broker: self.broker.clone(),
                    cause,
                });
            }
            Err(_) => {
                // A broker that lets a request time out is not trusted with the next one (and
                // a write cut short leaves the stream mid-frame): the next request reconnects.
                self.close(&format!("{} timed out", R::NAME));
                return Err(WireError::Timeout {
                    broker: self.broker.clone(),
                    api: R::NAME,
                    after: timeout,
                });
            }
        };
        ResponseHeader::decode(&mut bytes, R::KEY.response_header_version(version))
            .map_err(protocol)?;
        R::Response::decode(&mut bytes, version).map_err(protocol)
    }

    fn close(&self, cause: &str) {
        self.in_flight.lock().expect("in-flight lock").close(cause);
        self.reader.abort();
    }

    /// ApiVersions v3; a broker too old for it answers in v0's format, so v0 is asked then.
    async fn negotiate_versions(&self, timeout: Duration) -> Result<(), WireError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("spillway"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let answer = match self.send_version(&request, 3, timeout).await {
            Ok(answer) if answer.error_code == 0 => answer,
            Ok(_) | Err(WireError::Protocol { .. }) => {
                self.send_version(&ApiVersionsRequest::default(), 0, timeout)
                    .await?
            }
            Err(err) => return Err(err),
        };
        if let Some(code) = error_of(answer.error_code) {
            return Err(WireError::Kafka {
                broker: self.broker.clone(),
                api: "ApiVersions",
                code,
            });
        }
        let versions = answer
            .api_keys
            .iter()
            .map(|api| (api.api_key, (api.min_version, api.max_version)))
            .collect();
        let _ = self.versions.set(versions);
        Ok(())
    }

    async fn authenticate(
        &self,
        credentials: &SaslCredentials,
        timeout: Duration,
    ) -> Result<(), WireError> {
        let refused = |cause: String| WireError::Authentication {
            broker: self.broker.clone(),
            cause,
        };
        let handshake = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str(credentials.mechanism()));
        let answer = self.send(&handshake, timeout).await?;
        if let Some(code) = error_of(answer.error_code) {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(format!(
                "{} not enabled ({code}); the broker offers {offered:?}",
                credentials.mechanism()
            )));
        }
        match credentials {
            SaslCredentials::Plain { username, password } => {
                self.sasl_step(plain_message(username, password), timeout)
                    .await?;
            }
            SaslCredentials::Scram {
                mechanism,
                username,
                password,
            } => {
                let mut exchange = ScramExchange::new(
                    *mechanism,
                    username,
                    password,
                    &ScramExchange::random_nonce(),
                );
                let server_first = self.sasl_step(exchange.client_first(), timeout).await?;
                let client_final = exchange.client_final(&server_first).map_err(refused)?;
                let server_final = self.sasl_step(client_final, timeout).await?;
                exchange
                    .verify_server_final(&server_final)
                    .map_err(refused)?;
            }
        }
        Ok(())
    }

    async fn sasl_step(&self, message: Vec<u8>, timeout: Duration) -> Result<Bytes, WireError> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
        let answer = self.send(&request, timeout).await?;
        match error_of(answer.error_code) {
            None => Ok(answer.auth_bytes),
            Some(code) => Err(WireError::Authentication {
                broker: self.broker.clone(),
                cause: match answer.error_message {
                    Some(message) => format!("{code}: {}", message.as_str()),
                    None => code.to_string(),
                },
            }),
        }
    }
}

/// Reads answers and hands each to the request with its correlation id, until the stream
/// ends or breaks; then fails every request still waiting.
async fn read_answers(mut read: ReadHalf<BoxedStream>, in_flight: Arc<Mutex<InFlight>>) {
    let cause = loop {
        let length = match read.read_i32().await {
            Ok(length) => length,
            Err(err) => break format!("read: {err}"),
        };
        if length < 4 || length as usize > MAX_FRAME {
            break format!("answer with impossible length {length}");
        }
        let mut frame = vec![0u8; length as usize];
        if let Err(err) = read.read_exact(&mut frame).await {
            break format!("read: {err}");
        }
        let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let waiter = in_flight
            .lock()
            .expect("in-flight lock")
            .waiting
            .remove(&correlation_id);
        // No waiter: the request timed out and its caller left; the answer is dropped.
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(Bytes::from(frame)));
        }
    };
    in_flight.lock().expect("in-flight lock").close(&cause);
}
