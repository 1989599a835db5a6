//! Prometheus scaler: a PromQL instant query over the HTTP API (KEDA's `prometheus` trigger),
//! or, for teams without a Prometheus server, one series picked out of any text-exposition
//! endpoint (`/metrics`) and aggregated.
//!
//! One trigger type, two modes, chosen by the fields present:
//! - **query**: `serverAddress` + `query` (+ `ignoreNullValues`, `namespace`, `queryParameters`)
//!   -> `GET <serverAddress>/api/v1/query?query=...`. A scalar or a one-element vector is the
//!   value; more elements are an error (aggregate with `sum(...)`), as in KEDA.
//! - **scrape**: `scrapeUrl` + `metricName` (+ `labels`, `aggregation`) -> `GET <scrapeUrl>`,
//!   parsed with `prometheus-parse`; the samples named `metricName` whose labels equal every
//!   entry of `labels` (an empty value matches a missing label, as in PromQL) are combined by
//!   `aggregation` (`sum`, the default, `max`, `min` or `avg`). No matching sample is an error.
//!   The parser splits label sets on `,`, so label values containing `,` or `=` do not match.
//!
//! Both modes share `threshold`, `activationThreshold`, `customHeaders`, `unsafeSsl`, `timeout`
//! (milliseconds, default 3000) and credentials read from files at every poll (so a rotated
//! Secret is picked up): `bearerToken: {file}` or `username` + `password: {file}`.
//!
//! One scaler per origin (scheme, host, port) and credentials identity, TLS mode and timeout.
//! Each poll sends the distinct requests of its triggers concurrently, once each: triggers with
//! the same query, or scraping the same URL, share one call.
//!
//! Where spillway differs from KEDA, on purpose:
//! - `customHeaders` and `queryParameters` take KEDA's `"k=v,k2=v2"` string or a map (a map
//!   can hold commas in values).
//! - `±Inf` is always an error: KEDA reads it as 0 when `ignoreNullValues` is true, which would
//!   scale down on a division by zero. `NaN` (0/0: no traffic) and an empty result are "null"
//!   as in KEDA: 0 when `ignoreNullValues` is true, an error when false.
//! - `ignoreNullValues` defaults to **false** (KEDA: true): an empty answer is what a broken
//!   exporter, a renamed series or a typo in a label gives, and reading it as 0 scales the
//!   target down while the backlog grows. Write `ignoreNullValues: true` where "no series"
//!   really means "nothing to do"; an object migrated from KEDA that relied on its default
//!   says so explicitly.
//! - A range vector, a string or a native-histogram sample is an error naming the result type.
//! - Credentials inside `serverAddress` or `scrapeUrl` are rejected: they come from files.
//! - No `time` parameter is sent: Prometheus evaluates at its own "now", which avoids clock
//!   skew between spillway and Prometheus.
//! - Cloud identities (AWS SigV4, Azure, GCP), OAuth, TLS client certificates and KEDA's
//!   `authModes` are not supported; bearer and basic are.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use prometheus_parse::{Scrape, Value};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use super::http::{HttpAuth, HttpClient, json_error, known_error_kind};
use super::{
    ActivationInput, CredentialSlot, MAX_TIMEOUT_MS, Reading, Scaler, ScalerError, TriggerParams,
    normalize_metric_name,
};
use crate::secret::SecretSource;

/// The broker name in errors, logs and metric labels.
const BROKER: &str = "prometheus";
/// KEDA's global HTTP timeout, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
/// Longest query text quoted in an error.
const QUERY_EXCERPT: usize = 120;
/// Requests of one round in flight at once. A round holds every due trigger of one server and
/// credentials: sent all at once, 500 distinct queries held 500 connections to Prometheus
/// (whose `--web.max-connections` default is 512), queued behind its `--query.max-concurrency`
/// (20) anyway, and came back in one burst that stalled the metrics API beside them (p99.9 at
/// 10,000 req/s from 3 ms to 11 ms every 5 s). A slow query holds one of these places, never
/// the others' answers: the round waited for its slowest request before too.
pub const REQUESTS_IN_FLIGHT: usize = 16;

/// A `prometheus` trigger in query mode or scrape mode (see the module docs).
// The schema's rules repeat the mode and credential checks of `validate`, so a ScaledObject
// mixing the modes is refused when written. That a username needs a password is the trigger
// entry's rule, which sees whether an `authenticationRef` may supply it (`TriggerConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.serverAddress) != has(self.scrapeUrl)",
        "message": "set either serverAddress (query mode) or scrapeUrl (scrape mode)"
    },
    {
        "rule": "!has(self.serverAddress) || (has(self.query) && !has(self.metricName) && !has(self.aggregation))",
        "message": "query mode (serverAddress) needs query, and takes no metricName or aggregation"
    },
    {
        "rule": "!has(self.scrapeUrl) || (has(self.metricName) && !has(self.query) && !has(self.ignoreNullValues) && !has(self.namespace))",
        "message": "scrape mode (scrapeUrl) needs metricName, and takes no query, ignoreNullValues or namespace"
    },
    {
        "rule": "!has(self.password) || has(self.username)",
        "message": "username and password go together"
    },
    {
        "rule": "!(has(self.bearerToken) && has(self.username))",
        "message": "set bearerToken or username and password, not both"
    }
]))]
pub struct PrometheusTrigger {
    /// Query mode: base URL of the Prometheus HTTP API, e.g. `http://prometheus:9090`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
    /// Query mode: PromQL instant query returning a scalar or a single-element vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Query mode: an empty (or NaN) result reads 0 when true, is an error when false.
    /// Defaults to false (KEDA: true): a missing series is an error, never a silent 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_null_values: Option<bool>,
    /// Query mode: `namespace=` for Thanos Querier tenancy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Query mode: extra query-string parameters.
    #[serde(default, skip_serializing_if = "KeyValues::is_empty")]
    pub query_parameters: KeyValues,

    /// Scrape mode: URL of a text-exposition endpoint, e.g. `http://app:8080/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_url: Option<String>,
    /// Scrape mode: the sample name to read, e.g. `rabbitmq_queue_messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<String>,
    /// Scrape mode: label equality matchers; an empty value matches a missing label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape mode: how matching samples combine; `sum` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<Aggregation>,

    /// Target value per replica (the HPA's AverageValue).
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub threshold: f64,
    /// The trigger is active when the value is above this.
    #[serde(default)]
    pub activation_threshold: f64,
    /// Extra HTTP headers, e.g. `X-Scope-OrgID` for Cortex or Mimir.
    #[serde(default, skip_serializing_if = "KeyValues::is_empty")]
    pub custom_headers: KeyValues,
    /// Bearer token file (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretSource>,
    /// Basic-auth user name; needs `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic-auth password file; needs `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    /// Skip TLS certificate verification.
    #[serde(default)]
    pub unsafe_ssl: bool,
    /// HTTP timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60_000))]
    pub timeout: Option<u64>,
}

/// How the samples matched in scrape mode are combined.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Total of the matching samples (e.g. messages over all queues).
    #[default]
    Sum,
    /// Largest matching sample.
    Max,
    /// Smallest matching sample.
    Min,
    /// Mean of the matching samples.
    Avg,
}

impl Aggregation {
    /// Combines `values` (never empty).
    pub fn apply(self, values: &[f64]) -> f64 {
        match self {
            Self::Sum => values.iter().sum(),
            Self::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Self::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Self::Avg => values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// Ordered `key=value` pairs, written as KEDA's `"k=v,k2=v2"` string or as a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValues(pub Vec<(String, String)>);

impl KeyValues {
    /// True when no pair is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses KEDA's `k=v,k2=v2` form; spaces around keys and values are trimmed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not key=value"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("{item:?} has an empty key"));
            }
            pairs.push((key.to_owned(), value.trim().to_owned()));
        }
        Ok(Self(pairs))
    }
}

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyValuesVisitor;
        impl<'de> Visitor<'de> for KeyValuesVisitor {
            type Value = KeyValues;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings or a \"key=value,key2=value2\" string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<KeyValues, E> {
                KeyValues::parse(text).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyValues, A::Error> {
                let mut pairs = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    pairs.push((key, value));
                }
                Ok(KeyValues(pairs))
            }
        }
        deserializer.deserialize_any(KeyValuesVisitor)
    }
}

/// A map of strings in the ScaledObject schema: a structural schema cannot also allow KEDA's
/// `"k=v,k2=v2"` string, which stays a config-file form.
impl schemars::JsonSchema for KeyValues {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeyValues".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "additionalProperties": {"type": "string"}
        })
    }
}

impl Serialize for KeyValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// The mode a valid trigger is in, with its required fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode<'a> {
    /// A PromQL instant query against a Prometheus HTTP API.
    Query {
        server_address: &'a str,
        query: &'a str,
    },
    /// One series read from a text-exposition endpoint.
    Scrape {
        scrape_url: &'a str,
        metric_name: &'a str,
    },
}

/// Parses an http(s) URL without credentials, query or fragment.
fn parse_http_url(field: &str, text: &str, allow_query: bool) -> Result<Url, ScalerError> {
    let url = Url::parse(text.trim()).map_err(|err| {
        ScalerError::invalid(BROKER, field, format!("{text:?} is not a URL: {err}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ScalerError::invalid(
            BROKER,
            field,
            format!("{text:?} must be an http or https URL"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ScalerError::invalid(
            BROKER,
            field,
            format!("{text:?} has no host"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ScalerError::invalid(
            BROKER,
            field,
            "must not carry credentials; use username + password or bearerToken (files)",
        ));
    }
    if url.fragment().is_some() || (!allow_query && url.query().is_some()) {
        return Err(ScalerError::invalid(
            BROKER,
            field,
            format!("{text:?} must not have a query or fragment"),
        ));
    }
    Ok(url)
}

impl PrometheusTrigger {
    /// Which mode the fields select; an error names the field that is missing or misplaced.
    pub fn mode(&self) -> Result<Mode<'_>, ScalerError> {
        match (&self.server_address, &self.scrape_url) {
            (Some(_), Some(_)) => Err(ScalerError::invalid(
                BROKER,
                "scrapeUrl",
                "set either serverAddress (query mode) or scrapeUrl (scrape mode), not both",
            )),
            (None, None) => Err(ScalerError::invalid(
                BROKER,
                "serverAddress",
                "no serverAddress given (or scrapeUrl for scrape mode)",
            )),
            (Some(server_address), None) => {
                let scrape_only = [
                    ("metricName", self.metric_name.is_some()),
                    ("labels", !self.labels.is_empty()),
                    ("aggregation", self.aggregation.is_some()),
                ];
                if let Some((field, _)) = scrape_only.iter().find(|(_, set)| *set) {
                    return Err(ScalerError::invalid(
                        BROKER,
                        *field,
                        "belongs to scrape mode (scrapeUrl); query mode uses query",
                    ));
                }
                let query = self
                    .query
                    .as_deref()
                    .filter(|q| !q.trim().is_empty())
                    .ok_or_else(|| ScalerError::invalid(BROKER, "query", "no query given"))?;
                Ok(Mode::Query {
                    server_address,
                    query,
                })
            }
            (None, Some(scrape_url)) => {
                let query_only = [
                    ("query", self.query.is_some()),
                    ("ignoreNullValues", self.ignore_null_values.is_some()),
                    ("namespace", self.namespace.is_some()),
                    ("queryParameters", !self.query_parameters.is_empty()),
                ];
                if let Some((field, _)) = query_only.iter().find(|(_, set)| *set) {
                    return Err(ScalerError::invalid(
                        BROKER,
                        *field,
                        "belongs to query mode (serverAddress); a scrape with no matching sample is always an error",
                    ));
                }
                let metric_name = self
                    .metric_name
                    .as_deref()
                    .filter(|m| !m.trim().is_empty())
                    .ok_or_else(|| {
                        ScalerError::invalid(
                            BROKER,
                            "metricName",
                            "no metricName given for scrapeUrl",
                        )
                    })?;
                Ok(Mode::Scrape {
                    scrape_url,
                    metric_name,
                })
            }
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout.unwrap_or(DEFAULT_TIMEOUT_MS))
    }

    /// The URL this trigger reads: the query URL with its parameters, or the scrape URL.
    pub fn request_url(&self) -> Result<Url, ScalerError> {
        match self.mode()? {
            Mode::Query {
                server_address,
                query,
            } => {
                let mut url = parse_http_url("serverAddress", server_address, false)?;
                let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
                url.set_path(&path);
                {
                    let mut pairs = url.query_pairs_mut();
                    pairs.append_pair("query", query);
                    if let Some(namespace) = &self.namespace {
                        pairs.append_pair("namespace", namespace);
                    }
                    for (key, value) in &self.query_parameters.0 {
                        pairs.append_pair(key, value);
                    }
                }
                Ok(url)
            }
            Mode::Scrape { scrape_url, .. } => parse_http_url("scrapeUrl", scrape_url, true),
        }
    }

    /// The credentials, read from their files now.
    fn auth(&self) -> Result<HttpAuth, ScalerError> {
        let read = |field: &str, source: &SecretSource| {
            source
                .read()
                .map_err(|err| ScalerError::invalid(BROKER, field, err.to_string()))
        };
        match (&self.bearer_token, &self.username, &self.password) {
            (Some(token), None, None) => Ok(HttpAuth::Bearer(read("bearerToken", token)?)),
            (None, Some(username), Some(password)) => Ok(HttpAuth::Basic {
                username: username.clone(),
                password: read("password", password)?,
            }),
            (None, None, None) => Ok(HttpAuth::None),
            (Some(_), _, _) => Err(ScalerError::invalid(
                BROKER,
                "bearerToken",
                "bearer and basic authentication are mutually exclusive",
            )),
            (None, Some(_), None) => Err(ScalerError::invalid(
                BROKER,
                "password",
                "username needs a password file",
            )),
            (None, None, Some(_)) => Err(ScalerError::invalid(
                BROKER,
                "username",
                "password needs a username",
            )),
        }
    }

    /// Which credentials are used: by reference and a keyed hash of the value
    /// ([`SecretSource::fingerprint`]), never by content.
    fn auth_identity(&self) -> String {
        match (&self.bearer_token, &self.username, &self.password) {
            (Some(token), _, _) => format!("bearer:{}", token.fingerprint()),
            (None, Some(user), Some(password)) => {
                format!("basic:{user}:{}", password.fingerprint())
            }
            _ => "none".into(),
        }
    }

    /// What errors name: the server and query, or the scrape URL and metric. No credentials.
    fn target(&self) -> String {
        match self.mode() {
            Ok(Mode::Query {
                server_address,
                query,
            }) => {
                let mut excerpt: String = query.chars().take(QUERY_EXCERPT).collect();
                if excerpt.len() < query.len() {
                    excerpt.push_str("...");
                }
                format!("{} query {excerpt:?}", server_address.trim())
            }
            Ok(Mode::Scrape {
                scrape_url,
                metric_name,
            }) => {
                let url = Url::parse(scrape_url.trim())
                    .map(|mut u| {
                        u.set_query(None);
                        u.to_string()
                    })
                    .unwrap_or_else(|_| scrape_url.to_owned());
                format!("{url} metric {metric_name:?}")
            }
            Err(_) => "invalid trigger".into(),
        }
    }
}

impl TriggerParams for PrometheusTrigger {
    fn target_value(&self) -> f64 {
        self.threshold
    }

    fn activation_threshold(&self) -> f64 {
        self.activation_threshold
    }

    fn metric_name(&self) -> String {
        match self.mode() {
            Ok(Mode::Scrape { metric_name, .. }) => {
                normalize_metric_name(&format!("prometheus-{metric_name}"))
            }
            _ => "prometheus".into(),
        }
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.request_url()?;
        if !self.threshold.is_finite() || self.threshold <= 0.0 {
            return Err(ScalerError::invalid(
                BROKER,
                "threshold",
                format!(
                    "must be a number above 0 (the HPA's target per replica), got {}",
                    self.threshold
                ),
            ));
        }
        if !self.activation_threshold.is_finite() {
            return Err(ScalerError::invalid(
                BROKER,
                "activationThreshold",
                "must be a finite number",
            ));
        }
        if let Some(timeout) = self.timeout
            && !(1..=MAX_TIMEOUT_MS).contains(&timeout)
        {
            return Err(ScalerError::invalid(
                BROKER,
                "timeout",
                format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds, got {timeout}"),
            ));
        }
        for (name, value) in &self.custom_headers.0 {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ScalerError::invalid(
                    BROKER,
                    "customHeaders",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(ScalerError::invalid(
                    BROKER,
                    "customHeaders",
                    format!("the value of {name:?} is not a valid header value"),
                ));
            }
            if name.eq_ignore_ascii_case("authorization") {
                return Err(ScalerError::invalid(
                    BROKER,
                    "customHeaders",
                    "Authorization must come from bearerToken or username + password (files)",
                ));
            }
        }
        if let Some(user) = &self.username {
            if user.is_empty() || user.contains(':') {
                return Err(ScalerError::invalid(
                    BROKER,
                    "username",
                    "must be non-empty and without ':'",
                ));
            }
        }
        // Checks the combination without reading the files.
        match (&self.bearer_token, &self.username, &self.password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ScalerError::invalid(
                BROKER,
                "bearerToken",
                "bearer and basic authentication are mutually exclusive",
            )),
            (None, Some(_), None) => Err(ScalerError::invalid(
                BROKER,
                "password",
                "username needs a password file",
            )),
            (None, None, Some(_)) => Err(ScalerError::invalid(
                BROKER,
                "username",
                "password needs a username",
            )),
            _ => Ok(()),
        }
    }

    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)> {
        let PrometheusTrigger {
            bearer_token,
            password,
            server_address: _,
            query: _,
            ignore_null_values: _,
            namespace: _,
            query_parameters: _,
            scrape_url: _,
            metric_name: _,
            labels: _,
            aggregation: _,
            threshold: _,
            activation_threshold: _,
            custom_headers: _,
            username: _,
            unsafe_ssl: _,
            timeout: _,
        } = self;
        [("bearerToken", bearer_token), ("password", password)]
            .into_iter()
            .filter_map(|(field, source)| source.as_mut().map(|s| (field, s)))
            .collect()
    }

    /// KEDA's Prometheus TriggerAuthentication parameters of the same names; `username` is
    /// not a credential and stays in the trigger.
    fn credential_slots(&mut self) -> Vec<CredentialSlot<'_>> {
        vec![
            CredentialSlot::new("bearerToken", &mut self.bearer_token),
            CredentialSlot::new("password", &mut self.password),
        ]
    }
}

/// Why a Prometheus answer gives no value; mapped to a [`ScalerError`] with the trigger's target.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Prometheus said the query failed.
    Broker(String),
    /// The answer holds no usable value.
    Bad(String),
    /// No sample matched (scrape mode).
    NotFound(String),
}

impl Problem {
    fn into_error(self, target: String) -> ScalerError {
        match self {
            Self::Broker(cause) => ScalerError::Broker {
                broker: BROKER,
                target,
                cause,
            },
            Self::Bad(cause) => ScalerError::BadResponse {
                broker: BROKER,
                target,
                cause,
            },
            Self::NotFound(what) => ScalerError::NotFound {
                broker: BROKER,
                target,
                what,
            },
        }
    }
}

/// `GET /api/v1/query` answer.
#[derive(Debug, Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

/// One element of an instant vector.
#[derive(Debug, Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// Parses a Prometheus sample value (`"1"`, `"NaN"`, `"+Inf"`).
fn parse_sample_value(text: &str) -> Result<f64, Problem> {
    text.parse::<f64>()
        .map_err(|_| Problem::Bad("a sample value is not a number".into()))
}

/// The value of an instant query's JSON answer under KEDA's rules (see the module docs).
pub fn interpret_query(body: &str, ignore_null_values: bool) -> Result<f64, Problem> {
    let response: ApiResponse = serde_json::from_str(body).map_err(|err| {
        Problem::Bad(format!(
            "response is not the expected JSON ({})",
            json_error(&err)
        ))
    })?;
    if response.status != "success" {
        // The error type from Prometheus's fixed list; its free-text message stays out of
        // errors a tenant reads (see `super::http`).
        return Err(Problem::Broker(format!(
            "query failed: {}",
            response
                .error_type
                .as_deref()
                .and_then(known_error_kind)
                .unwrap_or("error")
        )));
    }
    let data = response
        .data
        .ok_or_else(|| Problem::Bad("success without data".into()))?;
    let result_type = data
        .get("resultType")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let result = data.get("result").cloned().unwrap_or_default();
    let null = |what: &str| {
        if ignore_null_values {
            Ok(0.0)
        } else {
            Err(Problem::Bad(format!(
                "{what}: the series may be lost (set ignoreNullValues: true to read 0)"
            )))
        }
    };
    let text = match result_type {
        "scalar" => {
            let (_, text): (f64, String) = serde_json::from_value(result)
                .map_err(|err| Problem::Bad(format!("malformed scalar ({})", json_error(&err))))?;
            text
        }
        "vector" => {
            let samples: Vec<VectorSample> = serde_json::from_value(result)
                .map_err(|err| Problem::Bad(format!("malformed vector ({})", json_error(&err))))?;
            match samples.as_slice() {
                [] => return null("the query returned an empty vector"),
                [one] => match &one.value {
                    Some((_, text)) => text.clone(),
                    None => {
                        return Err(Problem::Bad(
                            "the sample has no float value (a native histogram?)".into(),
                        ));
                    }
                },
                many => {
                    let labels: Vec<String> = many
                        .iter()
                        .take(3)
                        .map(|s| format!("{:?}", s.metric))
                        .collect();
                    return Err(Problem::Bad(format!(
                        "the query returned {} elements (e.g. {}); it must return one: aggregate it, e.g. sum(...)",
                        many.len(),
                        labels.join(", ")
                    )));
                }
            }
        }
        other => {
            return Err(Problem::Bad(format!(
                "result type {other:?} is not supported: the query must return a scalar or an instant vector"
            )));
        }
    };
    let value = parse_sample_value(&text)?;
    if value.is_nan() {
        return null("the query returned NaN");
    }
    if value.is_infinite() {
        return Err(Problem::Bad(format!("the query returned {value}")));
    }
    Ok(value)
}

/// Combines the samples of `scrape` named `metric` whose labels match `labels`.
/// Returns the value and how many samples matched.
pub fn select_samples(
    scrape: &Scrape,
    metric: &str,
    labels: &BTreeMap<String, String>,
    aggregation: Aggregation,
) -> Result<(f64, usize), Problem> {
    let mut values = Vec::new();
    for sample in scrape.samples.iter().filter(|s| s.metric == metric) {
        let matches = labels
            .iter()
            .all(|(name, want)| sample.labels.get(name).unwrap_or("") == want);
        if !matches {
            continue;
        }
        let value = match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) => {
                return Err(Problem::Bad(format!(
                    "{metric} is a histogram; read {metric}_count or {metric}_sum"
                )));
            }
            Value::Summary(_) => {
                return Err(Problem::Bad(format!(
                    "{metric} is a summary; read {metric}_count or {metric}_sum"
                )));
            }
        };
        if !value.is_finite() {
            return Err(Problem::Bad(format!(
                "sample {metric}{{{}}} is {value}",
                sample.labels
            )));
        }
        values.push(value);
    }
    if values.is_empty() {
        let matchers: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        return Err(Problem::NotFound(format!(
            "sample {metric}{{{}}} in the scrape",
            matchers.join(",")
        )));
    }
    Ok((aggregation.apply(&values), values.len()))
}

/// Parses a text exposition body.
pub fn parse_scrape(body: &str) -> Result<Scrape, Problem> {
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned())))
        .map_err(|err| Problem::Bad(format!("cannot parse the exposition text: {err}")))
}

/// Reads Prometheus queries and scrapes for the triggers sharing one origin and credentials.
#[derive(Debug)]
pub struct PrometheusScaler {
    http: HttpClient,
}

/// Asks scrape endpoints for the classic text format even when they also speak OpenMetrics.
const SCRAPE_ACCEPT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// One HTTP request that answers one or more triggers.
struct Request {
    url: Url,
    auth: HttpAuth,
    headers: Vec<(String, String)>,
    target: String,
    triggers: Vec<usize>,
}

impl PrometheusScaler {
    /// The value of one trigger from its request's body.
    fn answer(
        trigger: &PrometheusTrigger,
        body: &str,
        scrape: Option<&Result<Scrape, Problem>>,
    ) -> Result<Reading, ScalerError> {
        let reading = match trigger.mode()? {
            Mode::Query { .. } => {
                let value = interpret_query(body, trigger.ignore_null_values.unwrap_or(false))
                    .map_err(|p| p.into_error(trigger.target()))?;
                Reading::new(value, trigger.is_active(ActivationInput::value_only(value)))
            }
            Mode::Scrape { metric_name, .. } => {
                let scrape = match scrape {
                    Some(Ok(scrape)) => scrape,
                    Some(Err(problem)) => return Err(problem.clone().into_error(trigger.target())),
                    None => {
                        return Err(Problem::Bad("no scrape".into()).into_error(trigger.target()));
                    }
                };
                let (value, series) = select_samples(
                    scrape,
                    metric_name,
                    &trigger.labels,
                    trigger.aggregation.unwrap_or_default(),
                )
                .map_err(|p| p.into_error(trigger.target()))?;
                Reading::new(value, trigger.is_active(ActivationInput::value_only(value)))
                    .with_extra("series", series as f64)
            }
        };
        Ok(reading)
    }
}

impl Scaler for PrometheusScaler {
    type Trigger = PrometheusTrigger;

    const KIND: &'static str = BROKER;

    const CONFIG_KEY: &'static str = "prometheus";

    fn trigger_of(trigger: &super::Trigger) -> Option<&Self::Trigger> {
        match trigger {
            super::Trigger::Prometheus(t) => Some(t),
            _ => None,
        }
    }

    fn endpoint(trigger: &Self::Trigger) -> String {
        trigger
            .request_url()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "invalid".into())
    }

    fn connection_key(trigger: &Self::Trigger) -> String {
        let origin = trigger
            .request_url()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "invalid".into());
        format!(
            "{BROKER}:{origin}|{}|unsafeSsl={}|timeout={}ms",
            trigger.auth_identity(),
            trigger.unsafe_ssl,
            trigger.timeout().as_millis()
        )
    }

    fn connect(trigger: &Self::Trigger) -> Result<Self, ScalerError> {
        Ok(Self {
            http: HttpClient::new(BROKER, trigger.timeout(), trigger.unsafe_ssl)?,
        })
    }

    async fn poll(&self, triggers: &[Self::Trigger]) -> Vec<Result<Reading, ScalerError>> {
        let mut results: Vec<Option<Result<Reading, ScalerError>>> = vec![None; triggers.len()];
        // Distinct requests, in first-seen order, keyed by URL, headers and credentials identity.
        let mut requests: Vec<Request> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (i, trigger) in triggers.iter().enumerate() {
            let planned = trigger.validate().and_then(|()| {
                let url = trigger.request_url()?;
                let auth = trigger.auth()?;
                let mut headers = trigger.custom_headers.0.clone();
                if matches!(trigger.mode()?, Mode::Scrape { .. }) {
                    headers.push(("Accept".into(), SCRAPE_ACCEPT.into()));
                }
                Ok((url, auth, headers))
            });
            let (url, auth, headers) = match planned {
                Ok(plan) => plan,
                Err(err) => {
                    results[i] = Some(Err(err));
                    continue;
                }
            };
            let key = format!("{url}|{headers:?}|{}", trigger.auth_identity());
            match by_key.get(&key) {
                Some(&r) => requests[r].triggers.push(i),
                None => {
                    by_key.insert(key, requests.len());
                    requests.push(Request {
                        target: trigger.target(),
                        url,
                        auth,
                        headers,
                        triggers: vec![i],
                    });
                }
            }
        }

        // Collected first: a stream over the iterator's closure is not `Send` for every
        // lifetime the trait's future needs.
        let asks: Vec<_> = requests
            .iter()
            .map(|r| self.http.get_text(&r.url, &r.auth, &r.headers, &r.target))
            .collect();
        let bodies: Vec<_> = futures::stream::iter(asks)
            .buffered(REQUESTS_IN_FLIGHT)
            .collect()
            .await;

        for (request, body) in requests.iter().zip(bodies) {
            let body = match body {
                Ok(body) => body,
                Err(err) => {
                    tracing::warn!(target_name = %request.target, error = %err, "prometheus request failed");
                    for &i in &request.triggers {
                        results[i] = Some(Err(err.clone()));
                    }
                    continue;
                }
            };
            // Parsed once per request, shared by its scrape-mode triggers.
            let scrape = request
                .triggers
                .iter()
                .any(|&i| matches!(triggers[i].mode(), Ok(Mode::Scrape { .. })))
                .then(|| parse_scrape(&body));
            for &i in &request.triggers {
                let answer = Self::answer(&triggers[i], &body, scrape.as_ref());
                if let Err(err) = &answer {
                    tracing::debug!(error = %err, "prometheus trigger has no value");
                }
                results[i] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every trigger answered"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::Trigger;

    fn query_trigger(query: &str) -> PrometheusTrigger {
        serde_json::from_value(serde_json::json!({
            "serverAddress": "http://prometheus:9090",
            "query": query,
            "threshold": 10.0,
        }))
        .unwrap()
    }

    #[test]
    fn query_results_follow_keda() {
        let vector_one = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"prometheus"},"value":[1700000000.5,"3.5"]}]}}"#;
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"42"]}}"#;
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let nan = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        let inf = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#;
        let many = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"i":"a"},"value":[1,"1"]},{"metric":{"i":"b"},"value":[1,"2"]}]}}"#;
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1,"1"]]}]}}"#;
        let failed = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let histogram = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"histogram":[1,{"count":"2"}]}]}}"#;

        assert_eq!(interpret_query(vector_one, false), Ok(3.5));
        assert_eq!(interpret_query(scalar, false), Ok(42.0));
        assert_eq!(interpret_query(empty, true), Ok(0.0));
        assert!(
            matches!(interpret_query(empty, false), Err(Problem::Bad(m)) if m.contains("empty"))
        );
        assert_eq!(interpret_query(nan, true), Ok(0.0));
        assert!(matches!(interpret_query(nan, false), Err(Problem::Bad(m)) if m.contains("NaN")));
        for ignore in [true, false] {
            assert!(
                matches!(interpret_query(inf, ignore), Err(Problem::Bad(m)) if m.contains("inf"))
            );
            assert!(
                matches!(interpret_query(many, ignore), Err(Problem::Bad(m)) if m.contains("2 elements"))
            );
            assert!(
                matches!(interpret_query(matrix, ignore), Err(Problem::Bad(m)) if m.contains("matrix"))
            );
            assert!(
                matches!(interpret_query(failed, ignore), Err(Problem::Broker(m)) if m.contains("bad_data"))
            );
            assert!(matches!(
                interpret_query(histogram, ignore),
                Err(Problem::Bad(_))
            ));
            assert!(matches!(
                interpret_query("<html>", ignore),
                Err(Problem::Bad(_))
            ));
        }
        assert_eq!(parse_sample_value("-Inf"), Ok(f64::NEG_INFINITY));
        assert_eq!(parse_sample_value("1e3"), Ok(1000.0));
    }

    const EXPOSITION: &str = "\
# HELP rabbitmq_queue_messages Messages in a queue
# TYPE rabbitmq_queue_messages gauge
rabbitmq_queue_messages{vhost=\"/\",queue=\"jobs\"} 7
rabbitmq_queue_messages{vhost=\"/\",queue=\"mail\"} 3
rabbitmq_queue_messages{vhost=\"other\",queue=\"jobs\"} 5
# TYPE http_requests_total counter
http_requests_total 12
# TYPE broken gauge
broken NaN
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"1\"} 2
latency_seconds_bucket{le=\"+Inf\"} 3
latency_seconds_sum 1.5
latency_seconds_count 3
";

    #[test]
    fn scrape_matching_and_aggregation() {
        let scrape = parse_scrape(EXPOSITION).unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        let metric = "rabbitmq_queue_messages";
        let cases = [
            (labels(&[]), Aggregation::Sum, 15.0, 3),
            (labels(&[]), Aggregation::Max, 7.0, 3),
            (labels(&[]), Aggregation::Min, 3.0, 3),
            (labels(&[]), Aggregation::Avg, 5.0, 3),
            (labels(&[("queue", "jobs")]), Aggregation::Sum, 12.0, 2),
            (
                labels(&[("queue", "jobs"), ("vhost", "/")]),
                Aggregation::Sum,
                7.0,
                1,
            ),
        ];
        for (matchers, aggregation, value, count) in cases {
            assert_eq!(
                select_samples(&scrape, metric, &matchers, aggregation),
                Ok((value, count)),
                "{matchers:?} {aggregation:?}"
            );
        }
        // An empty matcher value matches a missing label, as in PromQL.
        assert_eq!(
            select_samples(
                &scrape,
                "http_requests_total",
                &labels(&[("job", "")]),
                Aggregation::Sum
            ),
            Ok((12.0, 1))
        );
        assert_eq!(
            select_samples(
                &scrape,
                "latency_seconds_count",
                &labels(&[]),
                Aggregation::Sum
            ),
            Ok((3.0, 1))
        );
        assert!(matches!(
            select_samples(&scrape, metric, &labels(&[("queue", "nope")]), Aggregation::Sum),
            Err(Problem::NotFound(m)) if m.contains("queue=\"nope\"")
        ));
        assert!(matches!(
            select_samples(&scrape, "absent", &labels(&[]), Aggregation::Sum),
            Err(Problem::NotFound(_))
        ));
        assert!(matches!(
            select_samples(&scrape, "broken", &labels(&[]), Aggregation::Sum),
            Err(Problem::Bad(m)) if m.contains("NaN")
        ));
        assert!(matches!(
            select_samples(&scrape, "latency_seconds", &labels(&[]), Aggregation::Sum),
            Err(Problem::Bad(m)) if m.contains("histogram")
        ));
    }

    #[test]
    fn key_values_take_keda_strings_and_maps() {
        let from_string: PrometheusTrigger = serde_json::from_value(serde_json::json!({
            "serverAddress": "http://p:9090", "query": "up", "threshold": 1,
            "customHeaders": "X-Scope-OrgID=tenant-a, X-Client-Id = cid",
        }))
        .unwrap();
        assert_eq!(
            from_string.custom_headers.0,
            [
                ("X-Scope-OrgID".to_owned(), "tenant-a".to_owned()),
                ("X-Client-Id".to_owned(), "cid".to_owned())
            ]
        );
        let from_map: PrometheusTrigger = serde_json::from_value(serde_json::json!({
            "serverAddress": "http://p:9090", "query": "up", "threshold": 1,
            "customHeaders": {"X-Scope-OrgID": "a,b"},
        }))
        .unwrap();
        assert_eq!(
            from_map.custom_headers.0,
            [("X-Scope-OrgID".to_owned(), "a,b".to_owned())]
        );
        assert!(KeyValues::parse("novalue").is_err());
        assert!(KeyValues::parse("=v").is_err());
        assert_eq!(KeyValues::parse("").unwrap(), KeyValues::default());
    }

    #[test]
    fn yaml_triggers_parse_in_both_modes() {
        let query: PrometheusTrigger = serde_norway::from_str(
            "serverAddress: http://prometheus:9090\n\
             query: sum(rate(http_requests_total[2m]))\n\
             threshold: 100.5\n\
             activationThreshold: 5.5\n\
             customHeaders: X-Client-Id=cid,X-Tenant-Id=tid\n\
             ignoreNullValues: false\n",
        )
        .unwrap();
        query.validate().unwrap();
        assert_eq!(query.custom_headers.0.len(), 2);
        assert_eq!(query.ignore_null_values, Some(false));
        let scrape: PrometheusTrigger = serde_norway::from_str(
            "scrapeUrl: http://rabbitmq:15692/metrics\n\
             metricName: rabbitmq_queue_messages\n\
             labels: {queue: jobs}\n\
             aggregation: max\n\
             threshold: 20\n\
             customHeaders: {X-Scope-OrgID: team-a}\n",
        )
        .unwrap();
        scrape.validate().unwrap();
        assert_eq!(scrape.aggregation, Some(Aggregation::Max));
        assert_eq!(scrape.labels.get("queue").map(String::as_str), Some("jobs"));
        let round_trip: PrometheusTrigger =
            serde_norway::from_str(&serde_norway::to_string(&scrape).unwrap()).unwrap();
        assert_eq!(round_trip, scrape);
    }

    #[test]
    fn request_urls_carry_query_namespace_and_parameters() {
        let mut t = query_trigger("sum(rate(x{a=\"b\"}[2m]))");
        t.server_address = Some("https://thanos.example/prefix/".into());
        t.namespace = Some("team-a".into());
        t.query_parameters = KeyValues::parse("dedup=true").unwrap();
        assert_eq!(
            t.request_url().unwrap().as_str(),
            "https://thanos.example/prefix/api/v1/query?query=sum%28rate%28x%7Ba%3D%22b%22%7D%5B2m%5D%29%29&namespace=team-a&dedup=true"
        );
        assert_eq!(t.metric_name(), "prometheus");
        let scrape: PrometheusTrigger = serde_json::from_value(serde_json::json!({
            "scrapeUrl": "http://app:8080/metrics?format=text", "metricName": "Queue_Depth", "threshold": 5
        }))
        .unwrap();
        scrape.validate().unwrap();
        assert_eq!(
            scrape.request_url().unwrap().as_str(),
            "http://app:8080/metrics?format=text"
        );
        assert_eq!(scrape.metric_name(), "prometheus-queue-depth");
    }

    #[test]
    fn validation_names_the_field() {
        let base =
            serde_json::json!({"serverAddress": "http://p:9090", "query": "up", "threshold": 1});
        let with = |extra: serde_json::Value| {
            let mut value = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    value.as_object_mut().unwrap().remove(k);
                } else {
                    value[k] = v.clone();
                }
            }
            value
        };
        let cases = [
            (
                with(serde_json::json!({"serverAddress": null})),
                "serverAddress",
            ),
            (
                with(serde_json::json!({"serverAddress": "prometheus:9090"})),
                "serverAddress",
            ),
            (
                with(serde_json::json!({"serverAddress": "ftp://p"})),
                "serverAddress",
            ),
            (
                with(serde_json::json!({"serverAddress": "http://u:pw@p:9090"})),
                "serverAddress",
            ),
            (
                with(serde_json::json!({"serverAddress": "http://p:9090?x=1"})),
                "serverAddress",
            ),
            (with(serde_json::json!({"query": null})), "query"),
            (with(serde_json::json!({"query": "  "})), "query"),
            (with(serde_json::json!({"threshold": 0})), "threshold"),
            (with(serde_json::json!({"threshold": -1.5})), "threshold"),
            (with(serde_json::json!({"timeout": 0})), "timeout"),
            (
                with(serde_json::json!({"scrapeUrl": "http://app/metrics"})),
                "scrapeUrl",
            ),
            (with(serde_json::json!({"metricName": "x"})), "metricName"),
            (
                with(serde_json::json!({"customHeaders": "Bad Header=x"})),
                "customHeaders",
            ),
            (
                with(serde_json::json!({"customHeaders": "Authorization=Bearer x"})),
                "customHeaders",
            ),
            (with(serde_json::json!({"username": "u"})), "password"),
            (
                with(serde_json::json!({"password": {"file": "/p"}})),
                "username",
            ),
            (
                with(
                    serde_json::json!({"bearerToken": {"file": "/t"}, "username": "u", "password": {"file": "/p"}}),
                ),
                "bearerToken",
            ),
            (
                serde_json::json!({"scrapeUrl": "http://app/metrics", "threshold": 1}),
                "metricName",
            ),
            (
                serde_json::json!({"scrapeUrl": "http://app/metrics", "metricName": "m", "threshold": 1, "ignoreNullValues": true}),
                "ignoreNullValues",
            ),
            (
                serde_json::json!({"scrapeUrl": "http://app/metrics", "metricName": "m", "threshold": 1, "query": "up"}),
                "query",
            ),
        ];
        for (json, field) in cases {
            let t: PrometheusTrigger = serde_json::from_value(json.clone()).unwrap();
            match t.validate() {
                Err(ScalerError::InvalidTrigger { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected InvalidTrigger on {field}, got {other:?}"),
            }
        }
        assert!(
            serde_json::from_value::<PrometheusTrigger>(with(serde_json::json!({"treshold": 1})))
                .is_err(),
            "unknown fields are rejected"
        );
        assert!(
            serde_json::from_value::<PrometheusTrigger>(with(
                serde_json::json!({"aggregation": "median"})
            ))
            .is_err()
        );
    }

    #[test]
    fn connection_keys_group_by_origin_credentials_and_client_settings() {
        let a = query_trigger("up");
        let b = query_trigger("sum(up)");
        assert_eq!(
            PrometheusScaler::connection_key(&a),
            PrometheusScaler::connection_key(&b)
        );
        let mut token = a.clone();
        token.bearer_token = Some(SecretSource::file("/run/secrets/token"));
        let key = PrometheusScaler::connection_key(&token);
        assert_ne!(key, PrometheusScaler::connection_key(&a));
        assert!(key.contains("bearer:/run/secrets/token"), "{key}");
        let mut slow = a.clone();
        slow.timeout = Some(10_000);
        assert_ne!(
            PrometheusScaler::connection_key(&slow),
            PrometheusScaler::connection_key(&a)
        );
        assert_eq!(
            PrometheusScaler::connection_key(&a),
            "prometheus:http://prometheus:9090|none|unsafeSsl=false|timeout=3000ms"
        );
    }

    #[test]
    fn secrets_are_read_from_files_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("spillway-prom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-token\n").unwrap();
        let mut t = query_trigger("up");
        t.bearer_token = Some(SecretSource::file(file.clone()));
        let auth = t.auth().unwrap();
        assert!(matches!(&auth, HttpAuth::Bearer(s) if s.expose() == "s3cret-token"));
        assert!(!format!("{auth:?} {t:?}").contains("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
        let err = t.auth().unwrap_err();
        assert!(
            matches!(&err, ScalerError::InvalidTrigger { field, .. } if field == "bearerToken"),
            "{err}"
        );
    }

    #[test]
    fn plan_decides_activity_from_the_value_as_the_scaler_does() {
        for (value, activation) in [("3.5", 3.0), ("3.5", 3.5), ("0", 0.0), ("0.1", 0.0)] {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,"{value}"]}}}}"#
            );
            let mut t = query_trigger("up");
            t.activation_threshold = activation;
            let read = PrometheusScaler::answer(&t, &body, None).unwrap();
            let planned = Trigger::Prometheus(t).is_active(ActivationInput::value_only(read.value));
            assert_eq!(
                planned, read.active,
                "value {value} activation {activation}"
            );
        }
    }
}
