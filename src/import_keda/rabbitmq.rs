//! KEDA's `rabbitmq` trigger to spillway's `rabbitmq`.
//!
//! | KEDA parameter | spillway |
//! |---|---|
//! | host (no password in it), protocol, queueName, vhostName, mode (QueueLength, MessageRate), value, activationValue, useRegex, operation, excludeUnacknowledged, pageSize, timeout (ms), unsafeSsl | same |
//! | nothing of mode, value, queueLength | `mode: QueueLength`, `value: 20` written out (KEDA's default; spillway requires value) |
//! | queueLength (deprecated) | `mode: QueueLength`, `value: <queueLength>` |
//! | host with a password | refused: spillway takes such a URL from a Secret (TriggerAuthentication parameter `host`) |
//! | mode DeliverGetRate, PublishedToDeliveredRatio, ExpectedQueueConsumptionTime, `*FromEnv` | refused |

use serde_json::{Map, Value};

use super::params::{Metadata, number};

/// KEDA's trigger type.
pub(super) const TYPE: &str = "rabbitmq";

/// KEDA's `value` when neither `mode`, `value` nor `queueLength` is set.
const KEDA_DEFAULT_VALUE: f64 = 20.0;

/// The `rabbitmq` trigger's body.
pub(super) fn map(md: &mut Metadata) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(host) = md.take("host") {
        match url::Url::parse(host.trim()) {
            Ok(parsed) if parsed.password().is_some() => md.refuse(
                "host",
                "the URL carries a password, which spillway never takes inline: keep the URL in a Secret and map it with a TriggerAuthentication (parameter host)",
            ),
            _ => {
                out.insert("host".into(), Value::String(host));
            }
        }
    }
    let protocol = md.one_of(&mut out, "protocol", &["auto", "amqp", "http"]);
    md.required(&mut out, "queueName");
    md.string(&mut out, "vhostName");
    let mut scratch = Map::new();
    let queue_length = md.number(&mut scratch, "queueLength", None);
    let mode = md.take("mode");
    let value = md.number(&mut scratch, "value", None);
    match (queue_length, mode.as_deref(), value) {
        (Some(length), None, None) => {
            out.insert("mode".into(), "QueueLength".into());
            out.insert("value".into(), number(length));
            md.differs(
                "queueLength",
                format!("written as mode: QueueLength, value: {length} (queueLength is deprecated in KEDA)"),
            );
        }
        (Some(_), _, _) => md.refuse(
            "queueLength",
            "is deprecated and cannot be combined with mode or value (KEDA refuses it too)",
        ),
        (None, None, None) => {
            out.insert("mode".into(), "QueueLength".into());
            out.insert("value".into(), number(KEDA_DEFAULT_VALUE));
            md.differs(
                "value",
                "mode: QueueLength, value: 20 written out (KEDA's default; spillway requires value)",
            );
        }
        (None, None, Some(_)) => {
            md.refuse("mode", "must be given with value (KEDA refuses it too)")
        }
        (None, Some(mode), value) => {
            match mode.trim() {
                "QueueLength" | "MessageRate" => {
                    out.insert("mode".into(), Value::String(mode.trim().to_owned()));
                }
                other => md.refuse(
                    "mode",
                    format!(
                        "{other:?} is not supported by spillway (it takes QueueLength, MessageRate)"
                    ),
                ),
            }
            match value {
                Some(v) => {
                    out.insert("value".into(), number(v));
                }
                None => md.refuse("value", "is required with mode (by KEDA too)"),
            }
        }
    }
    md.number(&mut out, "activationValue", None);
    md.boolean(&mut out, "useRegex");
    md.one_of(&mut out, "operation", &["sum", "max", "avg"]);
    md.boolean(&mut out, "excludeUnacknowledged");
    md.integer(&mut out, "pageSize", None);
    if let Some(timeout) = md.take("timeout") {
        if protocol.as_deref() == Some("amqp") {
            md.refuse("timeout", "KEDA refuses a timeout with protocol amqp");
        } else {
            match timeout.trim().parse::<u64>() {
                Ok(ms) => {
                    out.insert("timeout".into(), ms.into());
                }
                Err(_) => md.refuse("timeout", format!("{timeout:?}: give whole milliseconds")),
            }
        }
    }
    md.boolean(&mut out, "unsafeSsl");
    md.finish(TYPE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapped(metadata: Value) -> (Value, Vec<String>, Vec<String>) {
        super::super::params::map_trigger(map, metadata)
    }

    #[test]
    fn no_mode_or_value_is_keda_s_queue_length_20_written_out() {
        let (out, reasons, differences) =
            mapped(json!({"host": "amqp://rabbit:5672/", "queueName": "jobs"}));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(out["mode"], "QueueLength");
        assert_eq!(out["value"], 20);
        assert!(differences[0].contains("KEDA's default"));
    }

    #[test]
    fn queue_length_becomes_value() {
        let (out, reasons, differences) =
            mapped(json!({"host": "amqp://rabbit:5672/", "queueName": "jobs", "queueLength": "5"}));
        assert!(reasons.is_empty());
        assert_eq!(
            (out["mode"].as_str(), out["value"].as_i64()),
            (Some("QueueLength"), Some(5))
        );
        assert!(differences[0].contains("deprecated"));
        let (_, reasons, _) = mapped(
            json!({"queueName": "jobs", "queueLength": "5", "mode": "QueueLength", "value": "3"}),
        );
        assert!(reasons[0].contains("cannot be combined"), "{reasons:?}");
    }

    #[test]
    fn modes_spillway_lacks_and_inline_passwords_are_refused() {
        let (_, reasons, _) = mapped(json!({
            "host": "http://guest:secret@rabbit:15672/", "protocol": "http", "queueName": "q",
            "mode": "DeliverGetRate", "value": "30"
        }));
        let text = reasons.join("\n");
        assert!(text.contains("host: the URL carries a password"), "{text}");
        assert!(
            text.contains("\"DeliverGetRate\" is not supported"),
            "{text}"
        );
        assert!(!text.contains("secret"), "never print a password: {text}");
    }

    #[test]
    fn the_http_parameters_are_carried_over_typed() {
        let (out, reasons, _) = mapped(json!({
            "host": "http://rabbit:15672/", "protocol": "http", "queueName": "^.*incoming$",
            "mode": "QueueLength", "value": "100.50", "activationValue": "10.5", "useRegex": "true",
            "operation": "max", "excludeUnacknowledged": "true", "pageSize": "50", "timeout": "1000",
            "unsafeSsl": "true", "vhostName": "/"
        }));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(out["value"], 100.5);
        assert_eq!(out["useRegex"], true);
        assert_eq!(out["pageSize"], 50);
        assert_eq!(out["timeout"], 1000);
        let (_, reasons, _) = mapped(
            json!({"host": "amqp://r/", "protocol": "amqp", "queueName": "q", "timeout": "1000"}),
        );
        assert!(reasons[0].contains("timeout with protocol amqp"));
    }
}
