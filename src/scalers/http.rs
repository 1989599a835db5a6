//! The HTTP client the HTTP-based scalers share (RabbitMQ management API, NATS `/jsz`,
//! Prometheus): bounded timeouts, credentials kept out of URLs and logs, every failure mapped
//! to a [`ScalerError`] that names the broker and the target, and the
//! [destination policy](crate::destination) applied to every connection and redirect.
//!
//! Errors say what happened in our own words and the HTTP status, never what the server
//! answered: a tenant who points a trigger at an internal service reads its errors in
//! `status.triggers[].lastError`, and must not read that service's answers there. The start of
//! an error body goes to spillway's own debug log, for the operator.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::ScalerError;
use crate::destination;
use crate::secret::SecretString;

/// The most bytes of one answer spillway reads. Answers are read as they arrive and a longer
/// one is refused at this size, so a huge or endless body (a trigger pointed at the wrong
/// server, or a hostile one) costs at most this much memory per request in flight, never the
/// process. 16 MiB holds a RabbitMQ page of 500 queues or a NATS `/jsz` of thousands of
/// consumers many times over.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Of an error answer, only this much is read: its start goes to the debug log.
const ERROR_ANSWER_BYTES: usize = 4096;

/// What [`HttpClient::read_capped`] does with an answer longer than its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BeyondCap {
    /// Refuse it: a success answer read in part would parse as a wrong figure, or not at all.
    Refuse,
    /// Keep its start: of an error answer only the start is ever used.
    Cut,
}

/// Most redirects followed, each to a destination the policy allows.
const MAX_REDIRECTS: usize = 5;

/// Resolves every host the client connects to through [`destination::resolve`], so each new
/// connection is checked after DNS resolution.
struct PolicyResolver;

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = destination::resolve(&host, 0).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Follows a redirect only to an allowed destination: an IP literal is checked here, a name
/// when its connection is resolved.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match destination::check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// How a request authenticates.
#[derive(Clone, Debug, Default)]
pub enum HttpAuth {
    #[default]
    None,
    Basic {
        username: String,
        password: SecretString,
    },
    Bearer(SecretString),
}

/// A reqwest client with spillway's defaults: connect and total timeouts, rustls, optional
/// skipping of certificate verification (`unsafeSsl`), and a connection pool reused across ticks.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
    broker: &'static str,
}

impl HttpClient {
    pub fn new(
        broker: &'static str,
        timeout: Duration,
        unsafe_ssl: bool,
    ) -> Result<Self, ScalerError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .danger_accept_invalid_certs(unsafe_ssl)
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(PolicyResolver))
            .redirect(redirect_policy())
            .user_agent(concat!("spillway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                ScalerError::invalid(broker, "tls", format!("cannot build an HTTP client: {err}"))
            })?;
        Ok(Self {
            client,
            timeout,
            broker,
        })
    }

    /// GET `url` with `headers` and `auth`, and parse the JSON body as `T`. `target` names what
    /// is read (a queue, a server) in errors; it must not contain credentials.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &url::Url,
        auth: &HttpAuth,
        headers: &[(String, String)],
        target: &str,
    ) -> Result<T, ScalerError> {
        let body = self.get_text(url, auth, headers, target).await?;
        serde_json::from_str(&body).map_err(|err| ScalerError::BadResponse {
            broker: self.broker,
            target: target.to_owned(),
            cause: format!("response is not the expected JSON ({})", json_error(&err)),
        })
    }

    /// GET `url` and return the body as text; non-2xx answers are errors by status class.
    pub async fn get_text(
        &self,
        url: &url::Url,
        auth: &HttpAuth,
        headers: &[(String, String)],
        target: &str,
    ) -> Result<String, ScalerError> {
        destination::check_url(url).map_err(|refused| ScalerError::Unreachable {
            broker: self.broker,
            target: target.to_owned(),
            cause: refused.to_string(),
        })?;
        let mut request = self.client.get(url.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request = match auth {
            HttpAuth::None => request,
            HttpAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            HttpAuth::Bearer(token) => request.bearer_auth(token.expose()),
        };
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(err, target))?;
        let status = response.status();
        if status.is_success() {
            let body = self
                .read_capped(response, MAX_ANSWER_BYTES, BeyondCap::Refuse, target)
                .await?;
            return String::from_utf8(body).map_err(|_| ScalerError::BadResponse {
                broker: self.broker,
                target: target.to_owned(),
                cause: "the answer is not UTF-8 text".into(),
            });
        }
        let body = self
            .read_capped(response, ERROR_ANSWER_BYTES, BeyondCap::Cut, target)
            .await
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        let excerpt: String = body.chars().take(300).collect();
        tracing::debug!(broker = self.broker, target, %status, body = %excerpt, "HTTP error answer");
        let cause = match error_kind_of_answer(&body) {
            Some(kind) => format!("HTTP {status}: {kind}"),
            None => format!("HTTP {status}"),
        };
        let target = target.to_owned();
        let broker = self.broker;
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ScalerError::Unauthorized {
                broker,
                target,
                cause,
            },
            StatusCode::NOT_FOUND => ScalerError::NotFound {
                broker,
                target,
                what: format!("resource ({cause})"),
            },
            _ => ScalerError::Broker {
                broker,
                target,
                cause,
            },
        })
    }

    /// The body of `response`, read as it arrives, at most `cap` bytes; what happens to a
    /// longer one is `beyond`'s to say.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        cap: usize,
        beyond: BeyondCap,
        target: &str,
    ) -> Result<Vec<u8>, ScalerError> {
        let refuse = || ScalerError::BadResponse {
            broker: self.broker,
            target: target.to_owned(),
            cause: format!(
                "the answer is larger than {} MiB, more than spillway reads",
                cap / (1024 * 1024)
            ),
        };
        if beyond == BeyondCap::Refuse && response.content_length().is_some_and(|n| n > cap as u64)
        {
            return Err(refuse());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(err, target))?
        {
            if body.len() + chunk.len() > cap {
                return match beyond {
                    BeyondCap::Refuse => Err(refuse()),
                    BeyondCap::Cut => {
                        body.extend_from_slice(&chunk[..cap - body.len()]);
                        Ok(body)
                    }
                };
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, err: reqwest::Error, target: &str) -> ScalerError {
        let target = target.to_owned();
        // The URL (which may carry a vhost or a query) is dropped from the message: the target says it.
        let err = err.without_url();
        if err.is_timeout() {
            ScalerError::Timeout {
                broker: self.broker,
                target,
                after: self.timeout,
            }
        } else if err.is_decode() || err.is_body() {
            ScalerError::BadResponse {
                broker: self.broker,
                target,
                cause: error_chain(&err),
            }
        } else {
            ScalerError::Unreachable {
                broker: self.broker,
                target,
                cause: error_chain(&err),
            }
        }
    }
}

/// A JSON error without the text it quotes: serde's "invalid type: string \"...\"" repeats the
/// answer. Its class and position, and a missing field (our own name), are ours to say.
pub fn json_error(err: &serde_json::Error) -> String {
    let message = err.to_string();
    if message.starts_with("missing field") {
        return message;
    }
    let class = match err.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected content",
        serde_json::error::Category::Eof => "cut short",
    };
    match err.line() {
        // Errors from an already parsed value have no position.
        0 => class.to_owned(),
        line => format!("{class} at line {line} column {}", err.column()),
    }
}

/// `error_type` when it is one of the Prometheus API's fixed error types (`bad_data`, ...): a
/// word from a known list repeats nothing of the answer.
pub fn known_error_kind(error_type: &str) -> Option<&'static str> {
    const KINDS: [&str; 7] = [
        "bad_data",
        "timeout",
        "canceled",
        "execution",
        "unavailable",
        "internal",
        "not_found",
    ];
    KINDS.into_iter().find(|kind| *kind == error_type)
}

/// The [known error kind](known_error_kind) of a Prometheus-style error answer
/// (`{"errorType": "bad_data", ...}`).
fn error_kind_of_answer(body: &str) -> Option<&'static str> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorAnswer {
        error_type: String,
    }
    let answer: ErrorAnswer = serde_json::from_str(body).ok()?;
    known_error_kind(&answer.error_type)
}

/// An error and its sources on one line, e.g. "error sending request: connection refused".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
