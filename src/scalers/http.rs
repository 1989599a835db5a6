//! The HTTP client the HTTP-based scalers share (RabbitMQ management API, NATS `/jsz`,
//! Prometheus): bounded timeouts, credentials kept out of URLs and logs, and every failure
//! mapped to a [`ScalerError`] that names the broker and the target.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::ScalerError;
use crate::secret::SecretString;

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
            cause: format!("response is not the expected JSON: {err}"),
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
        let body = response
            .text()
            .await
            .map_err(|err| self.transport_error(err, target))?;
        if status.is_success() {
            return Ok(body);
        }
        let excerpt: String = body.chars().take(300).collect();
        let cause = format!("HTTP {status}: {excerpt}");
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
