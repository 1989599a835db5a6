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
//! | `activationValue` | `0` | active when the value, or in MessageRate mode the queue depth, is above it |
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
//!   `message_stats` until a queue sees traffic (and keeps counts without rates when rates are
//!   off): such a rate is unknown, not 0, so a MessageRate trigger reads an error and an unknown
//!   extra rate is left out (its metric answers 503). A counter that never moved while stats
//!   exist (nothing delivered yet) is a rate of 0.
//! - **Backlog detail** for spillway's `/metrics`, from the same answers: over HTTP each matched
//!   queue's messages, ready, unacknowledged, publish and deliver rates (at most
//!   [`MAX_BACKLOG_SAMPLES`](super::MAX_BACKLOG_SAMPLES) queues per trigger, the fullest);
//!   over AMQP the queue's ready messages only, which is all a passive declare tells.
//!
//! # Where spillway differs from KEDA
//!
//! - Errors, never a guess: a missing queue, a regex that matches no queue (KEDA reads 0), a
//!   missing vhost, or a queue the management plugin has not sampled yet (no `messages` field)
//!   is an error, not 0. So is a MessageRate trigger's queue without a publish rate (no
//!   `message_stats`; KEDA reads 0, which looks like an idle queue when the broker collects no
//!   rates). One failing queue does not fail the other triggers.
//! - Credentials: `host` must not carry a password; the whole URL goes in a file named by
//!   `hostFromSecret` instead (KEDA takes `host`, `username` and `password` from env or
//!   TriggerAuthentication). A URL without user defaults to `guest:guest`, like KEDA's client.
//! - `value` is required (KEDA falls back to QueueLength 20), the deprecated `queueLength` is
//!   rejected, and only the modes QueueLength and MessageRate exist; the deliver rate is the
//!   extra metric `deliver-rate` rather than a mode.
//! - `timeout` bounds AMQP too (KEDA rejects it with AMQP); each trigger's timeout bounds its
//!   own requests, and a connect or listing shared by several triggers waits for the longest.
//! - Regex: every page of the listing is read, up to 100 pages (KEDA errors past the first
//!   page, #2068; a longer listing, or a page larger than `pageSize`, is an error) and the
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

mod amqp;
mod endpoint;
mod figures;
mod http;
mod trigger;

pub use trigger::{
    DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT_MS, MAX_PAGE_SIZE, MAX_TIMEOUT_MS, Mode, Operation,
    Protocol, RabbitMqTls, RabbitMqTrigger,
};

use self::amqp::AmqpReader;
use self::endpoint::{Wire, display_server};
use self::http::HttpReader;
use super::{Reading, Scaler, ScalerError};
use crate::secret::keyed_hash;

const BROKER: &str = "rabbitmq";

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

    const CONFIG_KEY: &'static str = "rabbitmq";

    fn trigger_of(trigger: &super::Trigger) -> Option<&Self::Trigger> {
        match trigger {
            super::Trigger::RabbitMq(t) => Some(t),
            _ => None,
        }
    }

    fn endpoint(trigger: &RabbitMqTrigger) -> String {
        match trigger.endpoint() {
            Ok(endpoint) => display_server(&endpoint.server),
            Err(_) => "rabbitmq (unresolved host)".into(),
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
            Wire::Amqp => Transport::Amqp(Box::new(AmqpReader::new(endpoint, trigger.tls.clone()))),
            Wire::Http => Transport::Http(HttpReader::new(endpoint, trigger.unsafe_ssl)?),
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

/// Triggers the unit tests of every part start from.
#[cfg(test)]
mod test_triggers {
    use super::RabbitMqTrigger;

    pub fn trigger(host: &str, queue: &str) -> RabbitMqTrigger {
        serde_json::from_value(serde_json::json!({
            "host": host, "queueName": queue, "value": 10,
        }))
        .unwrap()
    }

    pub fn with(base: &RabbitMqTrigger, patch: serde_json::Value) -> RabbitMqTrigger {
        let mut value = serde_json::to_value(base).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_triggers::trigger;
    use super::*;
    use crate::scalers::TriggerParams;

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
}
