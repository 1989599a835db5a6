//! RabbitMQ scaler: queue depth (or publish rate) of RabbitMQ queues, read over AMQP with a
//! passive queue declare or over the management HTTP API, with KEDA's `rabbitmq` parameters so
//! KEDA users find what they know.
//!
//! # Parameters
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `host` | one of `host`, `hostFromSecret` | server URL **without a password**: `amqp(s)://[user@]host[:5672]/vhost` or `http(s)://[user@]host[:15672][/prefix]/vhost` |
//! | `hostFromSecret` | | `{file: PATH}`: a file (a mounted Secret) holding the whole URL, credentials included |
//! | `protocol` | `auto` | `auto` (by the URL's scheme), `amqp` or `http`; an explicit value must agree with the scheme |
//! | `queueName` | required | the queue (at most 255 bytes, RabbitMQ's limit); a regex with `useRegex` |
//! | `vhostName` | | overrides the vhost of the URL (empty means unset) |
//! | `mode` | `QueueLength` | `QueueLength` or `MessageRate` (http only) |
//! | `value` | required, > 0 | the HPA's AverageValue target |
//! | `activationValue` | `0` | active when the value is above it |
//! | `useRegex` | `false` | http only: `queueName` is a regex over the vhost's queue names |
//! | `operation` | `sum` | `sum`, `max` or `avg` of the matched queues (each figure separately) |
//! | `excludeUnacknowledged` | `false` | http only: count ready messages only |
//! | `pageSize` | `100` | queues per management API page, 1 to 500 |
//! | `timeout` | `3000` | milliseconds, 1 to 60000: bounds connecting and each request |
//! | `unsafeSsl` | `false` | https only: skip certificate verification |
//! | `tls` | | amqps only: `{caFile, clientPkcs12File, clientPkcs12Password: {file}}` |
//!
//! Numbers and booleans may also be given as strings (`value: "20"`), as in a ScaledObject's
//! string-only `metadata`.
//!
//! # How it reads
//!
//! - **AMQP**: one connection per server, vhost and credentials, shared by every trigger that
//!   names them, opened lazily inside [`Scaler::poll`] and kept between ticks; one channel is
//!   reused for all queues. A passive declare gives the queue's ready messages (unacknowledged
//!   ones are not counted, as in KEDA). A missing queue makes the server close the channel: that
//!   queue reads [`ScalerError::NotFound`] and the next queue gets a fresh channel on the same
//!   connection. A replaced or broken connection is always closed, never left open (KEDA leaked
//!   10k+ connections this way, kedacore/keda#6266).
//! - **HTTP**: one paginated listing of `/api/queues/<vhost>` (only the needed columns) per vhost
//!   per tick answers every trigger of that server: exact names, or regexes combined with the
//!   operation. QueueLength is `messages` (ready + unacknowledged), or `messages_ready` with
//!   `excludeUnacknowledged`; MessageRate is `message_stats.publish_details.rate`. Every HTTP
//!   reading also carries `deliver-rate` (`message_stats.deliver_get_details.rate`) as an extra
//!   metric, plus `publish-rate` (QueueLength) or `messages` (MessageRate). RabbitMQ omits
//!   `message_stats` until a queue sees traffic, so an absent rate reads 0.
//! - **Backlog detail** for spillway's `/metrics`, from the same answers: over HTTP each matched
//!   queue's messages, ready, unacknowledged, publish and deliver rates (at most
//!   [`MAX_BACKLOG_SAMPLES`](super::MAX_BACKLOG_SAMPLES) queues per trigger, the fullest);
//!   over AMQP the queue's ready messages only, which is all a passive declare tells.
//!
//! # Where spillway differs from KEDA
//!
//! - Errors, never a guess: a missing queue, a regex that matches no queue (KEDA reads 0), a
//!   missing vhost, or a queue the management plugin has not sampled yet (no `messages` field)
//!   is an error, not 0. One failing queue does not fail the other triggers.
//! - Credentials: `host` must not carry a password; the whole URL goes in a file named by
//!   `hostFromSecret` instead (KEDA takes `host`, `username` and `password` from env or
//!   TriggerAuthentication). A URL without user defaults to `guest:guest`, like KEDA's client.
//! - `value` is required (KEDA falls back to QueueLength 20), the deprecated `queueLength` is
//!   rejected, and only the modes QueueLength and MessageRate exist; the deliver rate is the
//!   extra metric `deliver-rate` rather than a mode.
//! - `timeout` bounds AMQP too (KEDA rejects it with AMQP); each trigger's timeout bounds its
//!   own requests, and a connect or listing shared by several triggers waits for the longest.
//! - Regex: every page of the listing is read (KEDA errors past the first page, #2068) and the
//!   regex runs in spillway with Rust `regex` syntax, unanchored and case-insensitive like
//!   RabbitMQ's own filter; PCRE-only constructs (look-around, back-references) are rejected
//!   at validation. `avg` is a float (KEDA integer-divides counts).
//! - `pageSize` is capped at 500, the largest page RabbitMQ serves.
//! - An empty AMQP vhost path (`amqp://host/`) means `/`, as it does for HTTP.
//! - TLS: the URL's scheme turns it on. Over amqps a CA file and a PKCS#12 client identity can
//!   be given (KEDA takes PEM `ca`, `cert`, `key`); `unsafeSsl` only exists for https, because
//!   the AMQP client cannot skip verification.
//! - Metric names replace every character outside `[a-z0-9-]` with `-` (KEDA query-escapes the
//!   queue name first), e.g. `rabbitmq-orders-v1` for `orders.v1`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::{Channel, Connection, ConnectionProperties};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{HttpAuth, HttpClient};
use super::{BacklogSample, Reading, Scaler, ScalerError, TriggerParams, normalize_metric_name};
use crate::secret::{SecretSource, SecretString};

const BROKER: &str = "rabbitmq";

/// RabbitMQ refuses pages larger than this (`invalid_pagination_parameters`).
pub const MAX_PAGE_SIZE: u32 = 500;

/// The largest `timeout` in milliseconds: a read slower than a minute is useless to an HPA
/// that syncs every 15 s.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT`, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 3_000;

/// KEDA's default `pageSize`.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// A listing longer than this is refused rather than read in part: 1000 pages of up to 500
/// queues is far beyond any broker spillway expects.
const MAX_PAGES: u32 = 1_000;

/// How long a connection being discarded may take to close politely before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listing's columns: everything any trigger needs, nothing more.
const LISTING_COLUMNS: &str = "name,messages,messages_ready,messages_unacknowledged,\
message_stats.publish_details.rate,message_stats.deliver_get_details.rate";

/// One `rabbitmq` trigger as written in a ScaledObject or a config file (KEDA's names).
// In the ScaledObject schema the numbers and booleans take their native types only (a
// structural schema cannot say "number or string"), except the integers, which are
// int-or-string; the string forms remain for config files copied from KEDA's metadata.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.host) != has(self.hostFromSecret)",
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
    fn checked_endpoint(&self) -> Result<Endpoint, ScalerError> {
        if self.queue_name.is_empty() {
            return Err(invalid("queueName", "no queue name given"));
        }
        // RabbitMQ's limit. Over AMQP a name travels as a short string whose length is one
        // byte: a longer name garbles the declare frame, and the server closes the connection
        // every trigger of the vhost shares (a regex is never sent, so it may be longer).
        const MAX_QUEUE_NAME_BYTES: usize = 255;
        if !self.use_regex && self.queue_name.len() > MAX_QUEUE_NAME_BYTES {
            return Err(invalid(
                "queueName",
                format!(
                    "is {} bytes long; RabbitMQ queue names hold at most {MAX_QUEUE_NAME_BYTES}",
                    self.queue_name.len()
                ),
            ));
        }
        if !(self.value.is_finite() && self.value > 0.0) {
            return Err(invalid("value", "must be a number greater than 0"));
        }
        if !self.activation_value.is_finite() {
            return Err(invalid("activationValue", "must be a finite number"));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(invalid(
                "pageSize",
                format!("must be between 1 and {MAX_PAGE_SIZE} (RabbitMQ's largest page)"),
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout) {
            return Err(invalid(
                "timeout",
                format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds"),
            ));
        }
        let endpoint = self.endpoint()?;
        match endpoint.wire {
            Wire::Amqp => {
                if self.use_regex {
                    return Err(invalid(
                        "useRegex",
                        "useRegex needs the http protocol: AMQP reads one queue by name",
                    ));
                }
                if self.exclude_unacknowledged {
                    return Err(invalid(
                        "excludeUnacknowledged",
                        "excludeUnacknowledged needs the http protocol: over AMQP the count is \
                         always ready messages only",
                    ));
                }
                if self.mode == Mode::MessageRate {
                    return Err(invalid(
                        "mode",
                        "mode MessageRate needs the http protocol: AMQP has no rates",
                    ));
                }
                if self.unsafe_ssl {
                    return Err(invalid(
                        "unsafeSsl",
                        "unsafeSsl applies to https only; for amqps give the server's CA in \
                         tls.caFile",
                    ));
                }
                if let Some(tls) = &self.tls {
                    if !endpoint.tls {
                        return Err(invalid("tls", "tls needs an amqps:// host"));
                    }
                    if tls.client_pkcs12_password.is_some() && tls.client_pkcs12_file.is_none() {
                        return Err(invalid(
                            "tls.clientPkcs12Password",
                            "needs tls.clientPkcs12File",
                        ));
                    }
                }
            }
            Wire::Http => {
                if self.tls.is_some() {
                    return Err(invalid(
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

    /// The server this trigger names, with `vhostName` applied and the protocol checked
    /// against the URL. Messages never echo the URL: it may hold a password.
    fn endpoint(&self) -> Result<Endpoint, ScalerError> {
        let (text, field, from_secret) = match (&self.host, &self.host_from_secret) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "host",
                    "set either host or hostFromSecret, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "host",
                    "no host given: set host (a URL without password) or hostFromSecret (a \
                     file holding the URL)",
                ));
            }
            (Some(host), None) => (SecretString::new(host.clone()), "host", false),
            (None, Some(source)) => (
                source
                    .read()
                    .map_err(|err| invalid("hostFromSecret", err.to_string()))?,
                "hostFromSecret",
                true,
            ),
        };
        let mut endpoint = Endpoint::parse(text.expose()).map_err(|msg| invalid(field, msg))?;
        if !from_secret && endpoint.password.is_some() {
            return Err(invalid(
                "host",
                "host must not carry a password (it would show in the trigger); put the whole \
                 URL in a file and name it with hostFromSecret",
            ));
        }
        match (self.protocol, endpoint.wire) {
            (Protocol::Auto, _) | (Protocol::Amqp, Wire::Amqp) | (Protocol::Http, Wire::Http) => {}
            (protocol, _) => {
                return Err(invalid(
                    "protocol",
                    format!(
                        "protocol {protocol} does not match the host URL's {} scheme",
                        endpoint.server.scheme()
                    ),
                ));
            }
        }
        if let Some(vhost) = self.vhost_name.as_deref().filter(|v| !v.is_empty()) {
            vhost.clone_into(&mut endpoint.vhost);
        }
        Ok(endpoint)
    }

    /// `queue_name` as a regex: unanchored and case-insensitive, like RabbitMQ's
    /// `use_regex=true` name filter.
    fn queue_regex(&self) -> Result<Regex, ScalerError> {
        RegexBuilder::new(&self.queue_name)
            .case_insensitive(true)
            .build()
            .map_err(|err| invalid("queueName", format!("not a valid regex: {err}")))
    }

    /// Names what this trigger reads, for errors: never credentials.
    fn target(&self, vhost: &str, server: &Url) -> String {
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

    fn metric_name(&self) -> String {
        normalize_metric_name(&format!("rabbitmq-{}", self.queue_name))
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.checked_endpoint().map(|_| ())
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ScalerError {
    ScalerError::InvalidTrigger {
        broker: BROKER,
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Which protocol a trigger resolved to (never `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Wire {
    Amqp,
    Http,
}

/// AMQP connection options a URL's query may set (the ones amqp091-go, KEDA's client, knows
/// and lapin supports).
#[derive(Debug, Clone, Default, PartialEq)]
struct AmqpOptions {
    heartbeat: Option<u16>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    auth_mechanism: Option<SASLMechanism>,
}

/// A parsed server URL with the credentials split out.
#[derive(Debug, Clone)]
struct Endpoint {
    wire: Wire,
    /// amqps or https.
    tls: bool,
    /// The URL without credentials, query or vhost: `amqp://host:5672`, or for HTTP the base
    /// the API lives under (`http://host:15672/prefix`). Safe to show.
    server: Url,
    /// Host for the AMQP socket (an IPv6 address in brackets).
    host: String,
    port: u16,
    /// Percent-decoded; empty when the URL has none.
    username: String,
    password: Option<SecretString>,
    vhost: String,
    amqp: AmqpOptions,
}

impl Endpoint {
    /// Parses a server URL. For AMQP the whole path is the vhost; for HTTP the last path
    /// segment is the vhost and the segments before it a prefix the API lives under (KEDA's
    /// rules). An empty vhost means `/`.
    fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|err| format!("not a valid URL: {err}"))?;
        let (wire, tls, default_port) = match url.scheme() {
            "amqp" => (Wire::Amqp, false, 5672),
            "amqps" => (Wire::Amqp, true, 5671),
            "http" => (Wire::Http, false, 80),
            "https" => (Wire::Http, true, 443),
            other => {
                return Err(format!(
                    "unknown host URL scheme {other:?}: use amqp, amqps, http or https"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(domain)) if !domain.is_empty() => percent_decoded(domain)?,
            Some(url::Host::Ipv4(addr)) => addr.to_string(),
            // Bracketed: lapin joins host and port with a colon before resolving.
            Some(url::Host::Ipv6(addr)) => format!("[{addr}]"),
            _ => return Err("the URL has no host".into()),
        };
        let port = url.port().unwrap_or(default_port);
        let username = percent_decoded(url.username())?;
        let password = url
            .password()
            .map(percent_decoded)
            .transpose()?
            .map(SecretString::new);
        let path = url.path().strip_prefix('/').unwrap_or(url.path());

        let mut server = url.clone();
        // Infallible for URLs with a host, which this one has.
        let _ = server.set_username("");
        let _ = server.set_password(None);
        server.set_query(None);
        server.set_fragment(None);
        server.set_path("");
        // Spelled out so `amqp://r` and `amqp://r:5672` share a key (http's default is implied).
        let _ = server.set_port(Some(port));

        let (vhost, amqp) = match wire {
            Wire::Amqp => (percent_decoded(path)?, Self::amqp_options(&url)?),
            Wire::Http => {
                if url.query().is_some() {
                    return Err("an http host URL takes no query".into());
                }
                let mut segments: Vec<&str> = path.split('/').collect();
                let vhost = percent_decoded(segments.pop().unwrap_or(""))?;
                if let Ok(mut base) = server.path_segments_mut() {
                    for segment in segments.iter().filter(|s| !s.is_empty()) {
                        base.push(&percent_decoded(segment)?);
                    }
                }
                (vhost, AmqpOptions::default())
            }
        };
        Ok(Self {
            wire,
            tls,
            server,
            host,
            port,
            username,
            password,
            vhost: if vhost.is_empty() { "/".into() } else { vhost },
            amqp,
        })
    }

    fn amqp_options(url: &Url) -> Result<AmqpOptions, String> {
        let mut options = AmqpOptions::default();
        for (key, value) in url.query_pairs() {
            let number = |what: &str| format!("URL query {key}={value:?} is not a valid {what}");
            match key.as_ref() {
                "heartbeat" => options.heartbeat = Some(value.parse().map_err(|_| number("u16"))?),
                "frame_max" => options.frame_max = Some(value.parse().map_err(|_| number("u32"))?),
                "channel_max" => {
                    options.channel_max = Some(value.parse().map_err(|_| number("u16"))?);
                }
                "auth_mechanism" => {
                    options.auth_mechanism = Some(value.parse().map_err(|err: String| err)?);
                }
                // The trigger's `timeout` bounds connecting; the URL's value is accepted and
                // superseded, so KEDA URLs keep working.
                "connection_timeout" => {}
                other => {
                    return Err(format!(
                        "unsupported URL query parameter {other:?} (supported: heartbeat, \
                         frame_max, channel_max, auth_mechanism, connection_timeout)"
                    ));
                }
            }
        }
        Ok(options)
    }

    /// Triggers with equal keys share a connection: protocol, server, TLS settings and a hash
    /// of the credentials (keyed per process, so a logged key reveals nothing). AMQP
    /// connections are per vhost; one HTTP scaler serves every vhost of its server.
    fn connection_key(&self, trigger: &RabbitMqTrigger) -> String {
        let credentials = keyed_hash(&(
            &self.username,
            self.password.as_ref().map(SecretString::expose),
        ));
        match self.wire {
            Wire::Amqp => format!(
                "rabbitmq|amqp|{}|vhost={:?}|cred={credentials:016x}|options={:?}|tls={:016x}",
                display_server(&self.server),
                self.vhost,
                self.amqp,
                keyed_hash(&trigger.tls),
            ),
            Wire::Http => format!(
                "rabbitmq|http|{}|cred={credentials:016x}|unsafeSsl={}",
                display_server(&self.server),
                trigger.unsafe_ssl,
            ),
        }
    }

    fn amqp_uri(&self, timeout: Duration) -> AMQPUri {
        // Without any user, KEDA's client and lapin both log in as guest:guest.
        let (username, password) = match (self.username.as_str(), &self.password) {
            ("", None) => ("guest".to_owned(), "guest".to_owned()),
            (user, password) => (
                user.to_owned(),
                password
                    .as_ref()
                    .map(|p| p.expose().to_owned())
                    .unwrap_or_default(),
            ),
        };
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                frame_max: self.amqp.frame_max,
                channel_max: self.amqp.channel_max,
                heartbeat: self.amqp.heartbeat,
                // Bounds the blocking TCP connect lapin runs on its own thread, so a timed-out
                // connect does not keep that thread for the OS's minutes-long default.
                connection_timeout: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
                auth_mechanism: self.amqp.auth_mechanism,
            },
        }
    }

    fn http_auth(&self) -> HttpAuth {
        if self.username.is_empty() && self.password.is_none() {
            HttpAuth::None
        } else {
            HttpAuth::Basic {
                username: self.username.clone(),
                password: self
                    .password
                    .clone()
                    .unwrap_or_else(|| SecretString::new("")),
            }
        }
    }
}

/// `scheme://host:port[/prefix]` of a credential-free URL, without the trailing `/` `Url` adds.
fn display_server(server: &Url) -> String {
    server.as_str().trim_end_matches('/').to_owned()
}

fn percent_decoded(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the URL has percent-encoded bytes that are not UTF-8".to_owned())
}

/// A hash keyed once per process: stable for connection keys, meaningless outside it.
fn keyed_hash(value: &impl Hash) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(value)
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

/// The figures of one queue (or of several, combined) the management API reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct QueueFigures {
    messages: f64,
    messages_ready: f64,
    messages_unacknowledged: f64,
    publish_rate: f64,
    deliver_rate: f64,
}

/// Combines the figures of regex-matched queues, each figure on its own (KEDA's
/// `getComposedQueue`); `None` when nothing matched.
fn aggregate(operation: Operation, queues: &[QueueFigures]) -> Option<QueueFigures> {
    if queues.is_empty() {
        return None;
    }
    let combine = |figure: fn(&QueueFigures) -> f64| {
        let values = queues.iter().map(figure);
        match operation {
            Operation::Sum => values.sum(),
            Operation::Max => values.fold(f64::NEG_INFINITY, f64::max),
            Operation::Avg => values.sum::<f64>() / queues.len() as f64,
        }
    };
    Some(QueueFigures {
        messages: combine(|q| q.messages),
        messages_ready: combine(|q| q.messages_ready),
        messages_unacknowledged: combine(|q| q.messages_unacknowledged),
        publish_rate: combine(|q| q.publish_rate),
        deliver_rate: combine(|q| q.deliver_rate),
    })
}

/// The reading of an HTTP trigger from its queue's (or queues') figures.
fn reading_from_figures(trigger: &RabbitMqTrigger, figures: &QueueFigures) -> Reading {
    let depth = if trigger.exclude_unacknowledged {
        figures.messages_ready
    } else {
        figures.messages
    };
    match trigger.mode {
        Mode::QueueLength => Reading::new(depth, depth > trigger.activation_value)
            .with_extra("publish-rate", figures.publish_rate)
            .with_extra("deliver-rate", figures.deliver_rate),
        // KEDA keeps a MessageRate trigger active while a backlog remains, so a queue nobody
        // publishes to is still drained.
        Mode::MessageRate => Reading::new(
            figures.publish_rate,
            figures.publish_rate > trigger.activation_value || depth > trigger.activation_value,
        )
        .with_extra("messages", depth)
        .with_extra("deliver-rate", figures.deliver_rate),
    }
}

/// One page of `GET /api/queues/<vhost>?pagination=true`.
#[derive(Debug, Deserialize)]
struct QueuePage {
    items: Vec<QueueItem>,
    #[serde(default)]
    page_count: u32,
}

/// One queue of the listing, restricted to [`LISTING_COLUMNS`].
#[derive(Debug, Deserialize)]
struct QueueItem {
    name: String,
    messages: Option<f64>,
    messages_ready: Option<f64>,
    messages_unacknowledged: Option<f64>,
    message_stats: Option<MessageStats>,
}

#[derive(Debug, Deserialize)]
struct MessageStats {
    publish_details: Option<RateDetails>,
    deliver_get_details: Option<RateDetails>,
}

#[derive(Debug, Deserialize)]
struct RateDetails {
    rate: f64,
}

impl QueueItem {
    /// The queue's figures; an error when the counts are absent (the management plugin has not
    /// sampled a new queue yet) or not counts at all.
    fn figures(&self) -> Result<QueueFigures, String> {
        let (Some(messages), Some(messages_ready)) = (self.messages, self.messages_ready) else {
            return Err(format!(
                "queue {:?} has no message counts yet (the management plugin samples a new \
                 queue after a few seconds)",
                self.name
            ));
        };
        let stats = self.message_stats.as_ref();
        let rate = |details: Option<&RateDetails>| details.map_or(0.0, |d| d.rate);
        let figures = QueueFigures {
            messages,
            messages_ready,
            messages_unacknowledged: self
                .messages_unacknowledged
                .unwrap_or(messages - messages_ready),
            publish_rate: rate(stats.and_then(|s| s.publish_details.as_ref())),
            deliver_rate: rate(stats.and_then(|s| s.deliver_get_details.as_ref())),
        };
        let all = [
            figures.messages,
            figures.messages_ready,
            figures.messages_unacknowledged,
            figures.publish_rate,
            figures.deliver_rate,
        ];
        if all.iter().all(|v| v.is_finite() && *v >= 0.0) {
            Ok(figures)
        } else {
            Err(format!(
                "queue {:?} reports a negative or non-finite figure",
                self.name
            ))
        }
    }
}

/// How a trigger picks queues out of a listing.
enum Selector {
    Name(String),
    Regex(Regex),
}

/// Answers one HTTP trigger from its vhost's listing.
fn answer_from_listing(
    trigger: &RabbitMqTrigger,
    selector: &Selector,
    listing: &HashMap<String, QueueItem>,
    vhost: &str,
    target: String,
) -> Result<Reading, ScalerError> {
    let mut matched: Vec<&QueueItem> = match selector {
        Selector::Name(name) => listing.get(name).into_iter().collect(),
        Selector::Regex(regex) => listing
            .values()
            .filter(|queue| regex.is_match(&queue.name))
            .collect(),
    };
    // By name, so the backlog series come out in a stable order.
    matched.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let figures = matched
        .iter()
        .map(|queue| queue.figures())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| ScalerError::BadResponse {
            broker: BROKER,
            target: target.clone(),
            cause,
        })?;
    let what = match selector {
        Selector::Name(_) => "queue",
        Selector::Regex(_) => "any queue matching the regex",
    };
    let combined = aggregate(trigger.operation, &figures).ok_or(ScalerError::NotFound {
        broker: BROKER,
        target,
        what: what.into(),
    })?;
    let backlog = matched
        .iter()
        .zip(&figures)
        .map(|(queue, figures)| BacklogSample::RabbitMqQueue {
            vhost: vhost.to_owned(),
            queue: queue.name.clone(),
            messages: Some(figures.messages),
            messages_ready: figures.messages_ready,
            messages_unacknowledged: Some(figures.messages_unacknowledged),
            publish_rate: Some(figures.publish_rate),
            deliver_rate: Some(figures.deliver_rate),
        })
        .collect();
    Ok(reading_from_figures(trigger, &combined).with_backlog(backlog))
}

/// Reads RabbitMQ for every trigger sharing one connection key: an AMQP connection to one
/// vhost, or the management API of one server.
pub struct RabbitMqScaler {
    transport: Transport,
}

enum Transport {
    // Boxed: the AMQP reader holds a whole endpoint and session, the HTTP one little.
    Amqp(Box<AmqpReader>),
    Http(HttpReader),
}

impl Scaler for RabbitMqScaler {
    type Trigger = RabbitMqTrigger;

    const KIND: &'static str = BROKER;

    fn trigger_of(trigger: &super::Trigger) -> Option<&Self::Trigger> {
        match trigger {
            super::Trigger::RabbitMq(t) => Some(t),
            _ => None,
        }
    }

    fn connection_key(trigger: &RabbitMqTrigger) -> String {
        match trigger.endpoint() {
            Ok(endpoint) => endpoint.connection_key(trigger),
            // Such a trigger fails validation in every poll; the key must still not show a
            // password a bad `host` might carry.
            Err(_) => format!(
                "rabbitmq|unresolved|{:016x}",
                keyed_hash(&(&trigger.host, &trigger.host_from_secret))
            ),
        }
    }

    fn connect(trigger: &RabbitMqTrigger) -> Result<Self, ScalerError> {
        let endpoint = trigger.checked_endpoint()?;
        let transport = match endpoint.wire {
            Wire::Amqp => Transport::Amqp(Box::new(AmqpReader {
                endpoint,
                tls: trigger.tls.clone(),
                session: tokio::sync::Mutex::new(AmqpSession::default()),
            })),
            Wire::Http => Transport::Http(HttpReader {
                // Each request is bounded by its trigger's timeout; the client's own bound
                // is the ceiling any trigger may ask for.
                client: HttpClient::new(
                    BROKER,
                    Duration::from_millis(MAX_TIMEOUT_MS),
                    trigger.unsafe_ssl,
                )?,
                auth: endpoint.http_auth(),
                server: endpoint.server,
            }),
        };
        Ok(Self { transport })
    }

    async fn poll(&self, triggers: &[RabbitMqTrigger]) -> Vec<Result<Reading, ScalerError>> {
        match &self.transport {
            Transport::Amqp(reader) => reader.poll(triggers).await,
            Transport::Http(reader) => reader.poll(triggers).await,
        }
    }
}

/// Reads the management API of one server.
struct HttpReader {
    client: HttpClient,
    auth: HttpAuth,
    /// Credential-free base URL the API lives under.
    server: Url,
}

/// The triggers of one vhost, answered by one listing.
struct VhostGroup {
    page_size: u32,
    timeout: Duration,
    members: Vec<(usize, Selector)>,
}

impl HttpReader {
    async fn poll(&self, triggers: &[RabbitMqTrigger]) -> Vec<Result<Reading, ScalerError>> {
        let mut results: Vec<Option<Result<Reading, ScalerError>>> = vec![None; triggers.len()];
        let mut groups: BTreeMap<String, VhostGroup> = BTreeMap::new();
        for (index, trigger) in triggers.iter().enumerate() {
            let selector = trigger.checked_endpoint().and_then(|endpoint| {
                let selector = if trigger.use_regex {
                    Selector::Regex(trigger.queue_regex()?)
                } else {
                    Selector::Name(trigger.queue_name.clone())
                };
                Ok((endpoint.vhost, selector))
            });
            match selector {
                Ok((vhost, selector)) => {
                    let group = groups.entry(vhost).or_insert(VhostGroup {
                        page_size: 1,
                        timeout: Duration::ZERO,
                        members: Vec::new(),
                    });
                    group.page_size = group.page_size.max(trigger.page_size);
                    group.timeout = group.timeout.max(trigger.timeout_duration());
                    group.members.push((index, selector));
                }
                Err(err) => results[index] = Some(Err(err)),
            }
        }

        let listings = futures::future::join_all(
            groups
                .iter()
                .map(|(vhost, group)| self.list_queues(vhost, group.page_size, group.timeout)),
        )
        .await;

        for ((vhost, group), listing) in groups.iter().zip(listings) {
            for (index, selector) in &group.members {
                let trigger = &triggers[*index];
                let answer = match &listing {
                    Ok(queues) => answer_from_listing(
                        trigger,
                        selector,
                        queues,
                        vhost,
                        trigger.target(vhost, &self.server),
                    ),
                    Err(err) => Err(err.clone()),
                };
                results[*index] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ScalerError::BadResponse {
                        broker: BROKER,
                        target: display_server(&self.server),
                        cause: "trigger left unanswered".into(),
                    })
                })
            })
            .collect()
    }

    /// Every queue of `vhost`, by name, page after page; each request bounded by `timeout`.
    async fn list_queues(
        &self,
        vhost: &str,
        page_size: u32,
        timeout: Duration,
    ) -> Result<HashMap<String, QueueItem>, ScalerError> {
        let target = format!("vhost {vhost:?} at {}", display_server(&self.server));
        let mut queues = HashMap::new();
        let mut page = 1;
        loop {
            let url = self.listing_url(vhost, page, page_size);
            let request = self
                .client
                .get_json::<QueuePage>(&url, &self.auth, &[], &target);
            let body = match tokio::time::timeout(timeout, request).await {
                Ok(Ok(body)) => body,
                Ok(Err(ScalerError::NotFound { .. })) => {
                    return Err(ScalerError::NotFound {
                        broker: BROKER,
                        target,
                        what: "vhost".into(),
                    });
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    return Err(ScalerError::Timeout {
                        broker: BROKER,
                        target,
                        after: timeout,
                    });
                }
            };
            if body.page_count > MAX_PAGES {
                // A partial listing would read as a too-small sum or a missing queue.
                return Err(ScalerError::BadResponse {
                    broker: BROKER,
                    target,
                    cause: format!(
                        "the listing has {} pages of {page_size}, more than the {MAX_PAGES} \
                         spillway reads; raise pageSize",
                        body.page_count
                    ),
                });
            }
            queues.extend(body.items.into_iter().map(|q| (q.name.clone(), q)));
            if page >= body.page_count {
                tracing::debug!(
                    broker = BROKER,
                    server = %display_server(&self.server),
                    vhost,
                    pages = page,
                    queues = queues.len(),
                    "listed queues"
                );
                return Ok(queues);
            }
            page += 1;
        }
    }

    fn listing_url(&self, vhost: &str, page: u32, page_size: u32) -> Url {
        let mut url = self.server.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["api", "queues", vhost]);
        }
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("page_size", &page_size.to_string())
            .append_pair("pagination", "true")
            // A fixed order keeps pages from overlapping while queues come and go.
            .append_pair("sort", "name")
            .append_pair("columns", LISTING_COLUMNS);
        url
    }
}

/// Reads queue depths over one AMQP connection to one vhost.
struct AmqpReader {
    endpoint: Endpoint,
    tls: Option<RabbitMqTls>,
    /// Held for a whole round: polls of one scaler take turns on its one channel.
    session: tokio::sync::Mutex<AmqpSession>,
}

#[derive(Default)]
struct AmqpSession {
    connection: Option<Connection>,
    channel: Option<Channel>,
}

/// Why a passive declare failed, and what it did to the channel and connection.
enum DeclareFailure {
    /// The server closed the channel (missing queue, no permission); the connection is fine.
    Queue(ScalerError),
    /// The connection is broken or stuck; the rest of the round would fail the same way.
    Connection(ScalerError),
}

impl AmqpReader {
    async fn poll(&self, triggers: &[RabbitMqTrigger]) -> Vec<Result<Reading, ScalerError>> {
        let mut results: Vec<Option<Result<Reading, ScalerError>>> = vec![None; triggers.len()];
        // Each queue is declared once however many triggers name it.
        let mut queues: Vec<(String, Duration, Vec<usize>)> = Vec::new();
        for (index, trigger) in triggers.iter().enumerate() {
            if let Err(err) = trigger.checked_endpoint() {
                results[index] = Some(Err(err));
                continue;
            }
            match queues
                .iter_mut()
                .find(|(name, ..)| *name == trigger.queue_name)
            {
                Some((_, timeout, members)) => {
                    *timeout = (*timeout).max(trigger.timeout_duration());
                    members.push(index);
                }
                None => queues.push((
                    trigger.queue_name.clone(),
                    trigger.timeout_duration(),
                    vec![index],
                )),
            }
        }

        if !queues.is_empty() {
            let connect_timeout = queues.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
            let mut session = self.session.lock().await;
            let mut broken = self
                .ensure_connection(&mut session, connect_timeout)
                .await
                .err();
            for (queue, timeout, members) in &queues {
                let count = match &broken {
                    Some(err) => Err(err.clone()),
                    None => match self.declare(&mut session, queue, *timeout).await {
                        Ok(count) => Ok(count),
                        Err(DeclareFailure::Queue(err)) => Err(err),
                        Err(DeclareFailure::Connection(err)) => {
                            tracing::warn!(
                                broker = BROKER,
                                server = %display_server(&self.endpoint.server),
                                vhost = %self.endpoint.vhost,
                                error = %err,
                                "AMQP connection discarded; the next poll reconnects"
                            );
                            discard(&mut session, "spillway: connection failed");
                            broken = Some(err.clone());
                            Err(err)
                        }
                    },
                };
                for &index in members {
                    let trigger = &triggers[index];
                    results[index] = Some(count.clone().map(|ready| {
                        Reading::new(ready, ready > trigger.activation_value).with_backlog(vec![
                            BacklogSample::RabbitMqQueue {
                                vhost: self.endpoint.vhost.clone(),
                                queue: queue.clone(),
                                messages: None,
                                messages_ready: ready,
                                messages_unacknowledged: None,
                                publish_rate: None,
                                deliver_rate: None,
                            },
                        ])
                    }));
                }
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ScalerError::BadResponse {
                        broker: BROKER,
                        target: self.vhost_target(),
                        cause: "trigger left unanswered".into(),
                    })
                })
            })
            .collect()
    }

    fn vhost_target(&self) -> String {
        format!(
            "vhost {:?} at {}",
            self.endpoint.vhost,
            display_server(&self.endpoint.server)
        )
    }

    fn queue_target(&self, queue: &str) -> String {
        format!(
            "queue {queue:?} in vhost {:?} at {}",
            self.endpoint.vhost,
            display_server(&self.endpoint.server)
        )
    }

    /// Keeps a live connection in `session`, replacing one the server or a heartbeat closed.
    async fn ensure_connection(
        &self,
        session: &mut AmqpSession,
        timeout: Duration,
    ) -> Result<(), ScalerError> {
        if session
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            return Ok(());
        }
        discard(session, "spillway: reconnecting");
        let connection = self.open_connection(timeout).await?;
        tracing::info!(
            broker = BROKER,
            server = %display_server(&self.endpoint.server),
            vhost = %self.endpoint.vhost,
            "AMQP connection opened"
        );
        session.connection = Some(connection);
        Ok(())
    }

    /// Connects within `timeout`. A handshake still running at the deadline is left to finish
    /// in the background and its connection closed, so giving up never leaks a connection.
    async fn open_connection(&self, timeout: Duration) -> Result<Connection, ScalerError> {
        let target = self.vhost_target();
        let tls = amqp_tls_config(self.tls.as_ref())?;
        let uri = self.endpoint.amqp_uri(timeout);
        let properties = ConnectionProperties::default().with_connection_name(
            concat!("spillway/", env!("CARGO_PKG_VERSION"))
                .to_owned()
                .into(),
        );
        let mut connecting =
            tokio::spawn(Connection::connect_uri_with_config(uri, properties, tls));
        match tokio::time::timeout(timeout, &mut connecting).await {
            Ok(Ok(Ok(connection))) => Ok(connection),
            Ok(Ok(Err(err))) => Err(connect_failure(&err, target)),
            Ok(Err(join)) => Err(ScalerError::Unreachable {
                broker: BROKER,
                target,
                cause: format!("connect task failed: {join}"),
            }),
            Err(_) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(CLOSE_TIMEOUT, &mut connecting).await {
                        Ok(Ok(Ok(late))) => {
                            close_in_background(late, "spillway: connect timed out")
                        }
                        Ok(_) => {}
                        Err(_) => connecting.abort(),
                    }
                });
                Err(ScalerError::Timeout {
                    broker: BROKER,
                    target,
                    after: timeout,
                })
            }
        }
    }

    /// The ready-message count of `queue`, by passive declare on the session's channel
    /// (opening a fresh one when the last was closed).
    async fn declare(
        &self,
        session: &mut AmqpSession,
        queue: &str,
        timeout: Duration,
    ) -> Result<f64, DeclareFailure> {
        let target = self.queue_target(queue);
        let timed_out = |target: String| {
            DeclareFailure::Connection(ScalerError::Timeout {
                broker: BROKER,
                target,
                after: timeout,
            })
        };
        let Some(connection) = session.connection.as_ref() else {
            return Err(DeclareFailure::Connection(ScalerError::Unreachable {
                broker: BROKER,
                target,
                cause: "no connection".into(),
            }));
        };
        let channel = match session.channel.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => match tokio::time::timeout(timeout, connection.create_channel()).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(err)) => {
                    return Err(DeclareFailure::Connection(amqp_failure(
                        &err, target, "queue",
                    )));
                }
                Err(_) => return Err(timed_out(target)),
            },
        };
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declare = channel.queue_declare(queue, options, FieldTable::default());
        match tokio::time::timeout(timeout, declare).await {
            Ok(Ok(declared)) => {
                session.channel = Some(channel);
                Ok(f64::from(declared.message_count()))
            }
            // The server closed the channel; it is dropped here and the next queue opens a
            // fresh one on the same connection.
            Ok(Err(lapin::Error::ProtocolError(err)))
                if matches!(err.kind(), AMQPErrorKind::Soft(_)) =>
            {
                let failure = amqp_failure(&lapin::Error::ProtocolError(err), target, "queue");
                tracing::debug!(broker = BROKER, error = %failure, "passive declare refused");
                Err(DeclareFailure::Queue(failure))
            }
            Ok(Err(err)) => Err(DeclareFailure::Connection(amqp_failure(
                &err, target, "queue",
            ))),
            Err(_) => Err(timed_out(target)),
        }
    }
}

impl Drop for AmqpReader {
    fn drop(&mut self) {
        // A removed scaler closes its connection; lapin does not close one on drop.
        discard(self.session.get_mut(), "spillway: scaler removed");
    }
}

/// Takes the session's connection (and channel) out and closes it without waiting.
fn discard(session: &mut AmqpSession, reason: &'static str) {
    session.channel = None;
    if let Some(connection) = session.connection.take() {
        close_in_background(connection, reason);
    }
}

/// Closes `connection` politely in a task, bounded by [`CLOSE_TIMEOUT`]. Closing one the
/// server already closed is a no-op.
fn close_in_background(connection: Connection, reason: &'static str) {
    if !connection.status().connected() {
        return;
    }
    let close = async move {
        match tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason)).await {
            Ok(Ok(())) => tracing::debug!(broker = BROKER, reason, "AMQP connection closed"),
            Ok(Err(err)) => {
                tracing::debug!(broker = BROKER, reason, error = %err, "AMQP close failed");
            }
            Err(_) => tracing::warn!(
                broker = BROKER,
                reason,
                "AMQP connection did not close within {CLOSE_TIMEOUT:?}; dropped"
            ),
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(close);
        }
        Err(_) => tracing::warn!(
            broker = BROKER,
            reason,
            "no async runtime to close an AMQP connection; it stays open until exit"
        ),
    }
}

/// The TLS material for lapin, read from the trigger's files at each connect.
fn amqp_tls_config(tls: Option<&RabbitMqTls>) -> Result<OwnedTLSConfig, ScalerError> {
    let Some(tls) = tls else {
        return Ok(OwnedTLSConfig::default());
    };
    let cert_chain = tls
        .ca_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|err| {
                invalid(
                    "tls.caFile",
                    format!("cannot read {}: {err}", path.display()),
                )
            })
        })
        .transpose()?;
    let identity = match &tls.client_pkcs12_file {
        None => None,
        Some(path) => {
            let der = std::fs::read(path).map_err(|err| {
                invalid(
                    "tls.clientPkcs12File",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            let password = match &tls.client_pkcs12_password {
                Some(source) => source
                    .read()
                    .map_err(|err| invalid("tls.clientPkcs12Password", err.to_string()))?
                    .expose()
                    .to_owned(),
                None => String::new(),
            };
            Some(OwnedIdentity { der, password })
        }
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Maps a failed connect: refused logins are Unauthorized, an unknown vhost NotFound.
fn connect_failure(err: &lapin::Error, target: String) -> ScalerError {
    amqp_failure(err, target, "vhost")
}

/// Maps a lapin error to a [`ScalerError`]; `missing` names what a NOT_FOUND means here.
fn amqp_failure(err: &lapin::Error, target: String, missing: &str) -> ScalerError {
    match err {
        lapin::Error::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ScalerError::NotFound {
                    broker: BROKER,
                    target,
                    what: missing.to_owned(),
                },
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) if text.contains("not found") => {
                    ScalerError::NotFound {
                        broker: BROKER,
                        target,
                        what: "vhost".into(),
                    }
                }
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => ScalerError::Unauthorized {
                    broker: BROKER,
                    target,
                    cause: amqp.to_string(),
                },
                _ => ScalerError::Broker {
                    broker: BROKER,
                    target,
                    cause: amqp.to_string(),
                },
            }
        }
        lapin::Error::IOError(_)
        | lapin::Error::InvalidConnectionState(_)
        | lapin::Error::InvalidChannelState(_)
        | lapin::Error::MissingHeartbeatError => ScalerError::Unreachable {
            broker: BROKER,
            target,
            cause: err.to_string(),
        },
        other => ScalerError::Broker {
            broker: BROKER,
            target,
            cause: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(host: &str, queue: &str) -> RabbitMqTrigger {
        serde_json::from_value(serde_json::json!({
            "host": host, "queueName": queue, "value": 10,
        }))
        .unwrap()
    }

    fn with(base: &RabbitMqTrigger, patch: serde_json::Value) -> RabbitMqTrigger {
        let mut value = serde_json::to_value(base).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

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

    #[test]
    fn errors_never_echo_a_password() {
        let t = trigger("amqp://guest:hunter2@rabbit/", "q");
        let err = t.validate().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("hostFromSecret"), "{err}");
        let key = RabbitMqScaler::connection_key(&t);
        assert!(!key.contains("hunter2"), "{key}");
    }

    #[test]
    fn amqp_urls_resolve_to_vhost_and_credentials() {
        let e = Endpoint::parse("amqp://us%40er:p%3Ass@rabbit.local:5673/my%2Fvhost?heartbeat=7")
            .unwrap();
        assert_eq!(e.wire, Wire::Amqp);
        assert_eq!((e.host.as_str(), e.port), ("rabbit.local", 5673));
        assert_eq!(e.username, "us@er");
        assert_eq!(e.password.as_ref().unwrap().expose(), "p:ss");
        assert_eq!(e.vhost, "my/vhost");
        assert_eq!(e.amqp.heartbeat, Some(7));
        assert_eq!(display_server(&e.server), "amqp://rabbit.local:5673");

        for (url, vhost) in [
            ("amqp://rabbit", "/"),
            ("amqp://rabbit/", "/"),
            ("amqp://rabbit/%2f", "/"),
            ("amqp://rabbit/%2F", "/"),
            ("amqps://rabbit/prod", "prod"),
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().vhost, vhost, "{url}");
        }
        let default_port = Endpoint::parse("amqps://rabbit").unwrap();
        assert_eq!((default_port.port, default_port.tls), (5671, true));
        let v6 = Endpoint::parse("amqp://[::1]:5672/").unwrap();
        assert_eq!(v6.host, "[::1]");

        let uri = Endpoint::parse("amqp://rabbit/")
            .unwrap()
            .amqp_uri(Duration::from_secs(2));
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.authority.userinfo.password, "guest");
        assert_eq!(uri.query.connection_timeout, Some(2000));
        assert_eq!(uri.vhost, "/");
        let external = Endpoint::parse("amqps://rabbit/?auth_mechanism=external").unwrap();
        assert_eq!(external.amqp.auth_mechanism, Some(SASLMechanism::External));
    }

    #[test]
    fn http_urls_resolve_to_prefix_and_vhost() {
        for (url, base, vhost) in [
            ("http://rabbit:15672", "http://rabbit:15672", "/"),
            ("http://rabbit:15672/", "http://rabbit:15672", "/"),
            ("http://rabbit:15672/%2F", "http://rabbit:15672", "/"),
            (
                "http://rabbit:15672/orders",
                "http://rabbit:15672",
                "orders",
            ),
            (
                "https://rabbit/mgmt/orders",
                "https://rabbit/mgmt",
                "orders",
            ),
            ("https://rabbit/mgmt/", "https://rabbit/mgmt", "/"),
        ] {
            let e = Endpoint::parse(url).unwrap();
            assert_eq!(display_server(&e.server), base, "{url}");
            assert_eq!(e.vhost, vhost, "{url}");
        }
        let e = Endpoint::parse("http://admin:s3cret@rabbit:15672/").unwrap();
        match e.http_auth() {
            HttpAuth::Basic { username, password } => {
                assert_eq!((username.as_str(), password.expose()), ("admin", "s3cret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.server.as_str().contains("s3cret"));
        assert!(matches!(
            Endpoint::parse("http://rabbit/").unwrap().http_auth(),
            HttpAuth::None
        ));
    }

    #[test]
    fn vhost_name_overrides_the_url() {
        let t = with(
            &trigger("http://r:15672/a", "q"),
            serde_json::json!({"vhostName": "b/c"}),
        );
        assert_eq!(t.endpoint().unwrap().vhost, "b/c");
        let t = with(
            &trigger("amqp://r/a", "q"),
            serde_json::json!({"vhostName": ""}),
        );
        assert_eq!(t.endpoint().unwrap().vhost, "a");
    }

    #[test]
    fn listing_url_encodes_the_vhost_and_asks_only_needed_columns() {
        let e = Endpoint::parse("http://rabbit:15672/mgmt/").unwrap();
        let reader = HttpReader {
            client: HttpClient::new(BROKER, Duration::from_secs(1), false).unwrap(),
            auth: HttpAuth::None,
            server: e.server,
        };
        let url = reader.listing_url("/", 2, 50);
        assert_eq!(url.path(), "/mgmt/api/queues/%2F");
        let query: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["page"], "2");
        assert_eq!(query["page_size"], "50");
        assert_eq!(query["pagination"], "true");
        assert!(query["columns"].contains("message_stats.publish_details.rate"));
        let url = reader.listing_url("a b/c", 1, 1);
        assert_eq!(url.path(), "/mgmt/api/queues/a%20b%2Fc");
    }

    #[test]
    fn connection_keys_share_by_server_vhost_and_credentials() {
        let key = |host: &str| RabbitMqScaler::connection_key(&trigger(host, "q"));
        let with_secret = |content: &str, name: &str| {
            let path = std::env::temp_dir().join(format!(
                "spillway-rabbitmq-key-{}-{name}",
                std::process::id()
            ));
            std::fs::write(&path, content).unwrap();
            let t: RabbitMqTrigger = serde_json::from_value(serde_json::json!({
                "hostFromSecret": {"file": path}, "queueName": "q", "value": 1,
            }))
            .unwrap();
            let key = RabbitMqScaler::connection_key(&t);
            std::fs::remove_file(&path).unwrap();
            key
        };
        assert_eq!(key("amqp://r/a"), key("amqp://r:5672/a"));
        assert_ne!(key("amqp://r/a"), key("amqp://r/b"));
        assert_ne!(key("amqp://r/a"), key("amqp://u@r/a"));
        // One HTTP scaler serves every vhost of a server.
        assert_eq!(key("http://r:15672/a"), key("http://r:15672/b"));
        assert_ne!(key("http://r:15672/a"), key("amqp://r:15672/a"));

        let a = with_secret("amqp://u:pw-alpha@r/v", "a");
        let b = with_secret("amqp://u:pw-bravo@r/v", "b");
        let a_again = with_secret("amqp://u:pw-alpha@r/v", "c");
        assert_ne!(a, b);
        assert_eq!(a, a_again);
        assert!(
            !a.contains("pw-alpha") && !b.contains("pw-bravo"),
            "{a} {b}"
        );
    }

    fn figures(messages: f64, ready: f64, publish: f64, deliver: f64) -> QueueFigures {
        QueueFigures {
            messages,
            messages_ready: ready,
            messages_unacknowledged: messages - ready,
            publish_rate: publish,
            deliver_rate: deliver,
        }
    }

    #[test]
    fn aggregation_combines_each_figure_on_its_own() {
        let queues = [
            figures(10.0, 4.0, 1.0, 0.0),
            figures(2.0, 2.0, 5.0, 3.0),
            figures(0.0, 0.0, 0.0, 0.5),
        ];
        let sum = aggregate(Operation::Sum, &queues).unwrap();
        assert_eq!(sum, figures(12.0, 6.0, 6.0, 3.5));
        let max = aggregate(Operation::Max, &queues).unwrap();
        // Max is per figure: messages from the first queue, publish rate from the second.
        assert_eq!(max, figures(10.0, 4.0, 5.0, 3.0));
        let avg = aggregate(Operation::Avg, &queues).unwrap();
        assert_eq!(avg.messages, 4.0);
        assert_eq!(avg.publish_rate, 2.0);
        assert!((avg.deliver_rate - 3.5 / 3.0).abs() < 1e-12);
        assert_eq!(aggregate(Operation::Sum, &[]), None);
    }

    #[test]
    fn readings_follow_mode_and_activation() {
        let t = trigger("http://r/", "q");
        let f = figures(10.0, 4.0, 2.5, 1.5);

        let r = reading_from_figures(&t, &f);
        assert_eq!((r.value, r.active), (10.0, true));
        assert_eq!(r.extra, vec![("publish-rate", 2.5), ("deliver-rate", 1.5)]);

        let ready_only = with(
            &t,
            serde_json::json!({"excludeUnacknowledged": true, "activationValue": 4}),
        );
        let r = reading_from_figures(&ready_only, &f);
        assert_eq!((r.value, r.active), (4.0, false));

        let rate = with(
            &t,
            serde_json::json!({"mode": "MessageRate", "activationValue": 5}),
        );
        let r = reading_from_figures(&rate, &f);
        assert_eq!(r.value, 2.5);
        // Still active: the backlog (10) is above the activation value even if the rate is not.
        assert!(r.active);
        assert_eq!(r.extra, vec![("messages", 10.0), ("deliver-rate", 1.5)]);
        let idle = reading_from_figures(&rate, &figures(1.0, 1.0, 0.0, 0.0));
        assert!(!idle.active);
    }

    #[test]
    fn listing_answers_names_and_regexes() {
        let page: QueuePage = serde_json::from_value(serde_json::json!({
            "items": [
                {"name": "jobs-a", "messages": 5, "messages_ready": 3, "messages_unacknowledged": 2,
                 "message_stats": {"publish_details": {"rate": 1.5}}},
                {"name": "Jobs-B", "messages": 7, "messages_ready": 7, "messages_unacknowledged": 0},
                {"name": "other", "messages": 100, "messages_ready": 100},
                {"name": "fresh"},
            ],
            "page_count": 1,
        }))
        .unwrap();
        let listing: HashMap<String, QueueItem> = page
            .items
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect();
        let t = trigger("http://r/", "jobs-a");
        let answer = |t: &RabbitMqTrigger| {
            let selector = if t.use_regex {
                Selector::Regex(t.queue_regex().unwrap())
            } else {
                Selector::Name(t.queue_name.clone())
            };
            answer_from_listing(t, &selector, &listing, "/", "target".into())
        };

        assert_eq!(answer(&t).unwrap().value, 5.0);
        assert_eq!(
            answer(&t).unwrap().backlog.samples(),
            [BacklogSample::RabbitMqQueue {
                vhost: "/".into(),
                queue: "jobs-a".into(),
                messages: Some(5.0),
                messages_ready: 3.0,
                messages_unacknowledged: Some(2.0),
                publish_rate: Some(1.5),
                deliver_rate: Some(0.0),
            }]
        );
        let regex = with(
            &t,
            serde_json::json!({"useRegex": true, "queueName": "^jobs-"}),
        );
        // Case-insensitive, like RabbitMQ's own regex filter: Jobs-B matches.
        assert_eq!(answer(&regex).unwrap().value, 12.0);
        // Each matched queue on its own, by name, whatever the operation combines.
        let queues: Vec<_> = answer(&regex)
            .unwrap()
            .backlog
            .samples()
            .iter()
            .map(|s| match s {
                BacklogSample::RabbitMqQueue {
                    queue, messages, ..
                } => (queue.clone(), *messages),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            queues,
            [("Jobs-B".into(), Some(7.0)), ("jobs-a".into(), Some(5.0))]
        );
        let max = with(&regex, serde_json::json!({"operation": "max"}));
        assert_eq!(answer(&max).unwrap().value, 7.0);
        let avg = with(&regex, serde_json::json!({"operation": "avg"}));
        assert_eq!(answer(&avg).unwrap().value, 6.0);

        let missing = with(&t, serde_json::json!({"queueName": "jobs"}));
        assert!(matches!(
            answer(&missing),
            Err(ScalerError::NotFound { .. })
        ));
        let no_match = with(&regex, serde_json::json!({"queueName": "^nothing$"}));
        assert!(matches!(
            answer(&no_match),
            Err(ScalerError::NotFound { .. })
        ));
        let fresh = with(&t, serde_json::json!({"queueName": "fresh"}));
        assert!(matches!(
            answer(&fresh),
            Err(ScalerError::BadResponse { .. })
        ));
    }

    #[test]
    fn amqp_errors_map_to_typed_errors() {
        use lapin::protocol::AMQPError;
        let protocol = |kind: AMQPErrorKind, text: &str| {
            lapin::Error::ProtocolError(AMQPError::new(kind, text.into()))
        };
        let not_found = protocol(AMQPSoftError::NOTFOUND.into(), "NOT_FOUND - no queue 'q'");
        assert!(matches!(
            amqp_failure(&not_found, "t".into(), "queue"),
            ScalerError::NotFound { what, .. } if what == "queue"
        ));
        let vhost = protocol(AMQPHardError::NOTALLOWED.into(), "vhost x not found");
        assert!(matches!(
            connect_failure(&vhost, "t".into()),
            ScalerError::NotFound { what, .. } if what == "vhost"
        ));
        let refused = protocol(AMQPSoftError::ACCESSREFUSED.into(), "ACCESS_REFUSED");
        assert!(matches!(
            connect_failure(&refused, "t".into()),
            ScalerError::Unauthorized { .. }
        ));
        let io = lapin::Error::IOError(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(
            connect_failure(&io, "t".into()),
            ScalerError::Unreachable { .. }
        ));
    }
}
