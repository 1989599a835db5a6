//! The `rabbitmq` trigger as users write it (KEDA's parameter names), and its checks: every
//! rule a trigger must pass before a poll reads with it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use url::Url;

use super::BROKER;
use super::endpoint::{Endpoint, Wire, display_server};
use crate::scalers::{
    ActivationInput, CredentialSlot, ScalerError, TriggerParams, normalize_metric_name,
};
use crate::secret::SecretSource;

/// RabbitMQ refuses pages larger than this (`invalid_pagination_parameters`).
pub const MAX_PAGE_SIZE: u32 = 500;

/// The largest `timeout` in milliseconds, shared by every broker: a read slower than a minute
/// is useless to an HPA that syncs every 15 s.
pub use crate::scalers::MAX_TIMEOUT_MS;

/// KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT`, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 3_000;

/// KEDA's default `pageSize`.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// One `rabbitmq` trigger as written in a ScaledObject or a config file (KEDA's names).
// In the ScaledObject schema the numbers and booleans take their native types only (a
// structural schema cannot say "number or string"), except the integers, which are
// int-or-string; the string forms remain for config files copied from KEDA's metadata.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.host) && has(self.hostFromSecret))",
        "message": "set one of host (a URL without password) or hostFromSecret (a Secret holding the URL)"
    }
]))]
pub struct RabbitMqTrigger {
    /// The server URL without a password; exclusive with `host_from_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A file holding the whole server URL, credentials included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_from_secret: Option<SecretSource>,
    /// `auto` picks the protocol from the URL's scheme.
    #[serde(default)]
    pub protocol: Protocol,
    /// The queue, or a regex over queue names with `use_regex`.
    #[schemars(length(min = 1))]
    pub queue_name: String,
    /// Overrides the vhost the URL names; empty means unset, as in KEDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_name: Option<String>,
    /// What the value measures.
    #[serde(default)]
    pub mode: Mode,
    /// The HPA's AverageValue target.
    #[serde(deserialize_with = "lenient::parse")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub value: f64,
    /// The trigger is active when its value is above this.
    #[serde(default, deserialize_with = "lenient::parse")]
    pub activation_value: f64,
    /// HTTP only: `queue_name` is a regex, and matching queues are combined by `operation`.
    #[serde(default, deserialize_with = "lenient::parse")]
    pub use_regex: bool,
    /// How the figures of regex-matched queues combine.
    #[serde(default)]
    pub operation: Operation,
    /// HTTP only: count ready messages, not those delivered and awaiting acknowledgement.
    #[serde(default, deserialize_with = "lenient::parse")]
    pub exclude_unacknowledged: bool,
    /// Queues per page of the management API listing.
    #[serde(
        default = "RabbitMqTrigger::default_page_size",
        deserialize_with = "lenient::parse"
    )]
    #[schemars(schema_with = "lenient::page_size_schema")]
    pub page_size: u32,
    /// Bound on connecting and on each request, in milliseconds.
    #[serde(
        default = "RabbitMqTrigger::default_timeout",
        deserialize_with = "lenient::parse"
    )]
    #[schemars(schema_with = "lenient::timeout_schema")]
    pub timeout: u64,
    /// HTTPS only: accept any server certificate.
    #[serde(default, deserialize_with = "lenient::parse")]
    pub unsafe_ssl: bool,
    /// AMQPS only: CA and client identity files. Left out of the ScaledObject schema: the files
    /// would have to be in spillway's own pod, which a ScaledObject's author cannot provide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub tls: Option<RabbitMqTls>,
}

/// TLS material for an `amqps://` connection. Files are read at each (re)connect, so rotated
/// certificates are picked up without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RabbitMqTls {
    /// PEM file with the CA certificates the server's certificate must chain to, in addition to
    /// the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PKCS#12 file with the client certificate and key; add `?auth_mechanism=external` to the
    /// URL to log in by certificate alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pkcs12_file: Option<PathBuf>,
    /// The PKCS#12 file's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pkcs12_password: Option<SecretSource>,
}

/// KEDA's `protocol`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// By the host URL's scheme: `amqp(s)` or `http(s)`.
    #[default]
    Auto,
    /// Passive queue declare over AMQP 0-9-1.
    Amqp,
    /// The management plugin's HTTP API.
    Http,
}

/// KEDA's `mode`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum Mode {
    /// Messages in the queue.
    #[default]
    QueueLength,
    /// Messages published per second (HTTP only).
    MessageRate,
}

/// KEDA's `operation`: how regex-matched queues combine.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// The total of the matched queues.
    #[default]
    Sum,
    /// The largest figure among the matched queues.
    Max,
    /// The mean over the matched queues.
    Avg,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Amqp => "amqp",
            Self::Http => "http",
        })
    }
}

impl RabbitMqTrigger {
    fn default_page_size() -> u32 {
        DEFAULT_PAGE_SIZE
    }

    fn default_timeout() -> u64 {
        DEFAULT_TIMEOUT_MS
    }

    /// The bound on connecting and on each request.
    pub fn timeout_duration(&self) -> Duration {
        Duration::from_millis(self.timeout)
    }

    /// Validates the trigger and resolves its server (reading `hostFromSecret`), so a poll
    /// works only with triggers that passed every check.
    pub(super) fn checked_endpoint(&self) -> Result<Endpoint, ScalerError> {
        if self.queue_name.is_empty() {
            return Err(ScalerError::invalid(
                BROKER,
                "queueName",
                "no queue name given",
            ));
        }
        // RabbitMQ's limit. Over AMQP a name travels as a short string whose length is one
        // byte: a longer name garbles the declare frame, and the server closes the connection
        // every trigger of the vhost shares (a regex is never sent, so it may be longer).
        const MAX_QUEUE_NAME_BYTES: usize = 255;
        if !self.use_regex && self.queue_name.len() > MAX_QUEUE_NAME_BYTES {
            return Err(ScalerError::invalid(
                BROKER,
                "queueName",
                format!(
                    "is {} bytes long; RabbitMQ queue names hold at most {MAX_QUEUE_NAME_BYTES}",
                    self.queue_name.len()
                ),
            ));
        }
        if !(self.value.is_finite() && self.value > 0.0) {
            return Err(ScalerError::invalid(
                BROKER,
                "value",
                "must be a number greater than 0",
            ));
        }
        if !self.activation_value.is_finite() {
            return Err(ScalerError::invalid(
                BROKER,
                "activationValue",
                "must be a finite number",
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(ScalerError::invalid(
                BROKER,
                "pageSize",
                format!("must be between 1 and {MAX_PAGE_SIZE} (RabbitMQ's largest page)"),
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout) {
            return Err(ScalerError::invalid(
                BROKER,
                "timeout",
                format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds"),
            ));
        }
        let endpoint = self.endpoint()?;
        match endpoint.wire {
            Wire::Amqp => {
                if self.use_regex {
                    return Err(ScalerError::invalid(
                        BROKER,
                        "useRegex",
                        "useRegex needs the http protocol: AMQP reads one queue by name",
                    ));
                }
                if self.exclude_unacknowledged {
                    return Err(ScalerError::invalid(
                        BROKER,
                        "excludeUnacknowledged",
                        "excludeUnacknowledged needs the http protocol: over AMQP the count is \
                         always ready messages only",
                    ));
                }
                if self.mode == Mode::MessageRate {
                    return Err(ScalerError::invalid(
                        BROKER,
                        "mode",
                        "mode MessageRate needs the http protocol: AMQP has no rates",
                    ));
                }
                if self.unsafe_ssl {
                    return Err(ScalerError::invalid(
                        BROKER,
                        "unsafeSsl",
                        "unsafeSsl applies to https only; for amqps give the server's CA in \
                         tls.caFile",
                    ));
                }
                if let Some(tls) = &self.tls {
                    if !endpoint.tls {
                        return Err(ScalerError::invalid(
                            BROKER,
                            "tls",
                            "tls needs an amqps:// host",
                        ));
                    }
                    if tls.client_pkcs12_password.is_some() && tls.client_pkcs12_file.is_none() {
                        return Err(ScalerError::invalid(
                            BROKER,
                            "tls.clientPkcs12Password",
                            "needs tls.clientPkcs12File",
                        ));
                    }
                }
            }
            Wire::Http => {
                if self.tls.is_some() {
                    return Err(ScalerError::invalid(
                        BROKER,
                        "tls",
                        "tls applies to amqps only; https verifies against the system roots \
                         (unsafeSsl skips verification)",
                    ));
                }
            }
        }
        if self.use_regex {
            self.queue_regex()?;
        }
        Ok(endpoint)
    }

    /// `queue_name` as a regex: unanchored and case-insensitive, like RabbitMQ's
    /// `use_regex=true` name filter.
    pub(super) fn queue_regex(&self) -> Result<Regex, ScalerError> {
        RegexBuilder::new(&self.queue_name)
            .case_insensitive(true)
            .build()
            .map_err(|err| {
                ScalerError::invalid(BROKER, "queueName", format!("not a valid regex: {err}"))
            })
    }

    /// Names what this trigger reads, for errors: never credentials.
    pub(super) fn target(&self, vhost: &str, server: &Url) -> String {
        let what = if self.use_regex {
            "queues matching"
        } else {
            "queue"
        };
        format!(
            "{what} {:?} in vhost {vhost:?} at {}",
            self.queue_name,
            display_server(server)
        )
    }
}

impl TriggerParams for RabbitMqTrigger {
    fn target_value(&self) -> f64 {
        self.value
    }

    fn activation_threshold(&self) -> f64 {
        self.activation_value
    }

    /// Active when the value or the queue depth (the backlog) is above the activation value:
    /// KEDA keeps a MessageRate trigger active while a backlog remains, so a queue nobody
    /// publishes to is still drained.
    fn is_active(&self, input: ActivationInput) -> bool {
        let threshold = self.activation_threshold();
        input.value > threshold || input.backlog.is_some_and(|depth| depth > threshold)
    }

    fn metric_name(&self) -> String {
        normalize_metric_name(&format!("rabbitmq-{}", self.queue_name))
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.checked_endpoint().map(|_| ())
    }

    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)> {
        let RabbitMqTrigger {
            host_from_secret,
            tls,
            host: _,
            protocol: _,
            queue_name: _,
            vhost_name: _,
            mode: _,
            value: _,
            activation_value: _,
            use_regex: _,
            operation: _,
            exclude_unacknowledged: _,
            page_size: _,
            timeout: _,
            unsafe_ssl: _,
        } = self;
        let mut sources = Vec::new();
        if let Some(source) = host_from_secret {
            sources.push(("hostFromSecret", source));
        }
        if let Some(source) = tls.as_mut().and_then(|t| t.client_pkcs12_password.as_mut()) {
            sources.push(("tls.clientPkcs12Password", source));
        }
        sources
    }

    /// KEDA's RabbitMQ TriggerAuthentication parameter `host` (the URL with its password) fills
    /// `hostFromSecret`; `tls.clientPkcs12Password` once the trigger sets `tls`.
    fn credential_slots(&mut self) -> Vec<CredentialSlot<'_>> {
        let mut slots = vec![CredentialSlot {
            parameter: "hostFromSecret",
            keda_parameter: Some("host"),
            source: &mut self.host_from_secret,
        }];
        if let Some(tls) = self.tls.as_mut() {
            slots.push(CredentialSlot::new(
                "tls.clientPkcs12Password",
                &mut tls.client_pkcs12_password,
            ));
        }
        slots
    }
}

/// Numbers and booleans from YAML/JSON natively or as strings, since a ScaledObject's
/// `metadata` is a string map (`value: "20"`).
mod lenient {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NativeOrText<T> {
        Native(T),
        Text(String),
    }

    /// The schema of `pageSize`: an integer from 1 to [`super::MAX_PAGE_SIZE`], or its digits.
    pub fn page_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        int_or_digits(
            "Queues per page of the management API listing, 1 to 500 (default 100).",
            super::MAX_PAGE_SIZE.into(),
        )
    }

    /// The schema of `timeout`: milliseconds from 1 to [`super::MAX_TIMEOUT_MS`], or digits.
    pub fn timeout_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        int_or_digits(
            "Bound on connecting and on each request, in milliseconds, 1 to 60000 (default 3000).",
            super::MAX_TIMEOUT_MS,
        )
    }

    /// Kubernetes' int-or-string shape, which `parse` accepts: the range bounds the integer,
    /// the pattern the string (JSON Schema applies each keyword to its own type only). Not
    /// nullable: `parse` refuses null, so the API server must prune it and apply the default.
    fn int_or_digits(description: &str, max: u64) -> schemars::Schema {
        schemars::json_schema!({
            "description": description,
            "x-kubernetes-int-or-string": true,
            "nullable": false,
            "minimum": 1,
            "maximum": max,
            "pattern": "^\\s*[0-9]+\\s*$"
        })
    }

    /// `T` from its native form or from a string `T::from_str` accepts.
    pub fn parse<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + FromStr,
        T::Err: Display,
    {
        match NativeOrText::<T>::deserialize(deserializer)? {
            NativeOrText::Native(value) => Ok(value),
            NativeOrText::Text(text) => text
                .trim()
                .parse()
                .map_err(|err| D::Error::custom(format!("invalid value {text:?}: {err}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_triggers::{trigger, with};
    use super::*;

    fn field_of(err: ScalerError) -> String {
        match err {
            ScalerError::InvalidTrigger { field, .. } => field,
            other => panic!("expected InvalidTrigger, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_keda() {
        let t = trigger("amqp://rabbit/", "jobs");
        assert_eq!(t.protocol, Protocol::Auto);
        assert_eq!(t.mode, Mode::QueueLength);
        assert_eq!(t.operation, Operation::Sum);
        assert_eq!(t.activation_value, 0.0);
        assert_eq!(t.page_size, 100);
        assert_eq!(t.timeout_duration(), Duration::from_secs(3));
        assert!(!t.use_regex && !t.exclude_unacknowledged && !t.unsafe_ssl);
        assert_eq!(t.target_value(), 10.0);
        assert_eq!(t.metric_name(), "rabbitmq-jobs");
        assert_eq!(
            trigger("amqp://r/", "Orders.v1").metric_name(),
            "rabbitmq-orders-v1"
        );
    }

    #[test]
    fn strings_are_accepted_for_numbers_and_booleans() {
        let t: RabbitMqTrigger = serde_json::from_value(serde_json::json!({
            "host": "http://rabbit:15672/", "queueName": "^jobs", "value": "20.5",
            "activationValue": "3", "useRegex": "true", "pageSize": "50", "timeout": "1500",
            "operation": "max", "mode": "MessageRate", "protocol": "http",
        }))
        .unwrap();
        assert_eq!(t.value, 20.5);
        assert_eq!(t.activation_value, 3.0);
        assert!(t.use_regex);
        assert_eq!((t.page_size, t.timeout), (50, 1500));
        assert_eq!((t.operation, t.mode), (Operation::Max, Mode::MessageRate));
        t.validate().unwrap();

        let bad = serde_json::from_value::<RabbitMqTrigger>(serde_json::json!({
            "host": "amqp://r/", "queueName": "q", "value": "ten",
        }));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("invalid value \"ten\"")
        );
    }

    #[test]
    fn unknown_and_deprecated_fields_are_rejected() {
        for extra in ["queueLength", "username", "bogus"] {
            let result = serde_json::from_value::<RabbitMqTrigger>(serde_json::json!({
                "host": "amqp://r/", "queueName": "q", "value": 1, extra: "5",
            }));
            assert!(result.is_err(), "{extra} accepted");
        }
        let missing_value = serde_json::from_value::<RabbitMqTrigger>(serde_json::json!({
            "host": "amqp://r/", "queueName": "q",
        }));
        assert!(missing_value.unwrap_err().to_string().contains("value"));
    }

    #[test]
    fn validation_table() {
        let amqp = trigger("amqp://rabbit:5672/vh", "jobs");
        let http = trigger("http://rabbit:15672/vh", "jobs");
        let ok = [
            amqp.clone(),
            http.clone(),
            with(
                &http,
                serde_json::json!({"useRegex": true, "queueName": "^jobs-.*$"}),
            ),
            with(&http, serde_json::json!({"excludeUnacknowledged": true})),
            with(
                &http,
                serde_json::json!({"mode": "MessageRate", "activationValue": -1}),
            ),
            with(
                &http,
                serde_json::json!({"pageSize": 500, "timeout": 60000}),
            ),
            with(
                &amqp,
                serde_json::json!({"host": "amqps://rabbit/", "tls": {"caFile": "/ca.pem"}}),
            ),
            with(
                &amqp,
                serde_json::json!({"host": "amqp://user@rabbit/?heartbeat=10"}),
            ),
            with(
                &amqp,
                serde_json::json!({"protocol": "amqp", "vhostName": ""}),
            ),
            with(
                &http,
                serde_json::json!({"host": "https://rabbit/", "unsafeSsl": true}),
            ),
            with(&amqp, serde_json::json!({"queueName": "q".repeat(255)})),
            with(
                &http,
                serde_json::json!({"useRegex": true, "queueName": format!("^{}", "q".repeat(300))}),
            ),
        ];
        for t in &ok {
            t.validate().unwrap_or_else(|err| panic!("{t:?}: {err}"));
        }

        let cases = [
            (
                with(&amqp, serde_json::json!({"queueName": ""})),
                "queueName",
            ),
            (
                with(&amqp, serde_json::json!({"queueName": "q".repeat(256)})),
                "queueName",
            ),
            (
                with(&http, serde_json::json!({"queueName": "é".repeat(128)})),
                "queueName",
            ),
            (with(&amqp, serde_json::json!({"value": 0})), "value"),
            (with(&amqp, serde_json::json!({"value": -3})), "value"),
            (with(&amqp, serde_json::json!({"pageSize": 0})), "pageSize"),
            (
                with(&http, serde_json::json!({"pageSize": 501})),
                "pageSize",
            ),
            (with(&amqp, serde_json::json!({"timeout": 0})), "timeout"),
            (
                with(&amqp, serde_json::json!({"timeout": 60001})),
                "timeout",
            ),
            (
                with(&amqp, serde_json::json!({"useRegex": true})),
                "useRegex",
            ),
            (
                with(&amqp, serde_json::json!({"excludeUnacknowledged": true})),
                "excludeUnacknowledged",
            ),
            (
                with(&amqp, serde_json::json!({"mode": "MessageRate"})),
                "mode",
            ),
            (
                with(&amqp, serde_json::json!({"unsafeSsl": true})),
                "unsafeSsl",
            ),
            (
                with(&amqp, serde_json::json!({"tls": {"caFile": "/ca.pem"}})),
                "tls",
            ),
            (
                with(&http, serde_json::json!({"tls": {"caFile": "/ca.pem"}})),
                "tls",
            ),
            (
                with(
                    &amqp,
                    serde_json::json!({"host": "amqps://r/", "tls": {"clientPkcs12Password": {"file": "/pw"}}}),
                ),
                "tls.clientPkcs12Password",
            ),
            (
                with(
                    &http,
                    serde_json::json!({"useRegex": true, "queueName": "(unclosed"}),
                ),
                "queueName",
            ),
            (
                with(
                    &http,
                    serde_json::json!({"useRegex": true, "queueName": "(?=look)ahead"}),
                ),
                "queueName",
            ),
            (
                with(&amqp, serde_json::json!({"protocol": "http"})),
                "protocol",
            ),
            (
                with(&http, serde_json::json!({"protocol": "amqp"})),
                "protocol",
            ),
            (
                with(
                    &amqp,
                    serde_json::json!({"host": "amqp://guest:pw@rabbit/"}),
                ),
                "host",
            ),
            (
                with(&amqp, serde_json::json!({"host": "kafka://rabbit/"})),
                "host",
            ),
            (
                with(&amqp, serde_json::json!({"host": "not a url"})),
                "host",
            ),
            (
                with(
                    &amqp,
                    serde_json::json!({"host": "amqp://rabbit/?verify=none"}),
                ),
                "host",
            ),
            (
                with(
                    &amqp,
                    serde_json::json!({"host": "amqp://rabbit/?heartbeat=x"}),
                ),
                "host",
            ),
            (
                with(&http, serde_json::json!({"host": "http://rabbit/?x=1"})),
                "host",
            ),
            (with(&amqp, serde_json::json!({"host": null})), "host"),
            (
                with(
                    &amqp,
                    serde_json::json!({"hostFromSecret": {"file": "/nonexistent/url"}}),
                ),
                "host",
            ),
            (
                with(
                    &amqp,
                    serde_json::json!({"host": null, "hostFromSecret": {"file": "/nonexistent/url"}}),
                ),
                "hostFromSecret",
            ),
        ];
        for (t, field) in cases {
            let err = t.validate().expect_err(&format!("{t:?} should be invalid"));
            assert_eq!(field_of(err), field, "{t:?}");
        }
    }
}
