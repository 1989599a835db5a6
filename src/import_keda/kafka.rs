//! KEDA's `kafka` trigger to spillway's `kafka`: the same parameter names and defaults
//! (lagThreshold 10, activationLagThreshold 0, offsetResetPolicy latest), written out.
//!
//! | KEDA parameter | spillway |
//! |---|---|
//! | bootstrapServers, consumerGroup, topic, lagThreshold, activationLagThreshold, offsetResetPolicy, allowIdleConsumers, excludePersistentLag, scaleToZeroOnInvalidOffset, limitToPartitionsWithLag, ensureEvenDistributionOfPartitions, partitionLimitation, sasl (none, plaintext, scram_sha256, scram_sha512), tls, unsafeSsl | same |
//! | partitionLimitation without topic | left out, as KEDA ignores it (spillway would refuse it) |
//! | version, fullMetadata | left out with a note: spillway asks each broker its versions and reads the metadata of the topics it counts |
//! | sasl oauthbearer or gssapi, saslTokenProvider, awsRegion, `*FromEnv` | refused |

use serde_json::{Map, Value};

use super::params::Metadata;

/// KEDA's trigger type.
pub(super) const TYPE: &str = "kafka";

/// The `kafka` trigger's body.
pub(super) fn map(md: &mut Metadata) -> Map<String, Value> {
    let mut out = Map::new();
    md.required(&mut out, "bootstrapServers");
    md.required(&mut out, "consumerGroup");
    let topic = md.string(&mut out, "topic");
    md.integer(&mut out, "lagThreshold", Some(10));
    md.integer(&mut out, "activationLagThreshold", Some(0));
    md.one_of(&mut out, "offsetResetPolicy", &["latest", "earliest"]);
    for flag in [
        "allowIdleConsumers",
        "excludePersistentLag",
        "scaleToZeroOnInvalidOffset",
        "limitToPartitionsWithLag",
        "ensureEvenDistributionOfPartitions",
        "unsafeSsl",
    ] {
        md.boolean(&mut out, flag);
    }
    if topic.is_some() {
        md.string(&mut out, "partitionLimitation");
    } else if let Some(limitation) = md.take("partitionLimitation") {
        md.differs(
            "partitionLimitation",
            format!("{limitation:?} left out: KEDA ignores it without topic, and spillway refuses it there"),
        );
    }
    if let Some(sasl) = md.take("sasl") {
        match sasl.trim() {
            "none" | "plaintext" | "scram_sha256" | "scram_sha512" => {
                out.insert("sasl".into(), Value::String(sasl.trim().to_owned()));
            }
            "oauthbearer" | "gssapi" | "aws_msk_iam" => md.refuse(
                "sasl",
                format!("{sasl} is not supported by spillway (it takes none, plaintext, scram_sha256, scram_sha512)"),
            ),
            other => md.refuse("sasl", format!("{other:?} is not a SASL mode")),
        }
    }
    md.one_of(&mut out, "tls", &["enable", "disable"]);
    if let Some(version) = md.take("version") {
        md.differs(
            "version",
            format!("{version:?} left out: spillway asks each broker which request versions it speaks (ApiVersions)"),
        );
    }
    if let Some(full) = md.take("fullMetadata") {
        md.differs(
            "fullMetadata",
            format!("{full:?} left out: spillway reads the metadata of the topics it counts only"),
        );
    }
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
    fn keda_defaults_are_written_out() {
        let (out, reasons, differences) =
            mapped(json!({"bootstrapServers": "k:9092", "consumerGroup": "g", "topic": "t"}));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert!(differences.is_empty());
        assert_eq!(
            out,
            json!({"bootstrapServers": "k:9092", "consumerGroup": "g", "topic": "t", "lagThreshold": 10, "activationLagThreshold": 0})
        );
    }

    #[test]
    fn every_supported_parameter_is_carried_over_typed() {
        let (out, reasons, differences) = mapped(json!({
            "bootstrapServers": "k:9092", "consumerGroup": "g", "topic": "t", "lagThreshold": "5",
            "activationLagThreshold": "3", "offsetResetPolicy": "earliest", "allowIdleConsumers": "false",
            "scaleToZeroOnInvalidOffset": "true", "excludePersistentLag": "false",
            "limitToPartitionsWithLag": "false", "ensureEvenDistributionOfPartitions": "false",
            "version": "1.0.0", "partitionLimitation": "1,2,10-20,31", "sasl": "plaintext",
            "tls": "enable", "unsafeSsl": "false"
        }));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(out["lagThreshold"], 5);
        assert_eq!(out["scaleToZeroOnInvalidOffset"], true);
        assert_eq!(out["partitionLimitation"], "1,2,10-20,31");
        assert_eq!(out["sasl"], "plaintext");
        assert_eq!(differences.len(), 1, "version is noted");
        assert!(differences[0].contains("ApiVersions"));
    }

    #[test]
    fn unsupported_sasl_and_environment_parameters_are_refused() {
        let (_, reasons, _) = mapped(json!({
            "bootstrapServers": "k:9092", "consumerGroupFromEnv": "GROUP", "sasl": "gssapi", "awsRegion": "eu-west-1"
        }));
        let text = reasons.join("\n");
        assert!(text.contains("consumerGroup: is required"), "{text}");
        assert!(text.contains("sasl: gssapi is not supported"), "{text}");
        assert!(text.contains("awsRegion: is not a parameter"), "{text}");
        assert!(
            text.contains(
                "consumerGroupFromEnv: reads the scaled workload's container environment"
            ),
            "{text}"
        );
    }

    #[test]
    fn partition_limitation_without_topic_is_left_out_as_keda_ignores_it() {
        let (out, reasons, differences) = mapped(
            json!({"bootstrapServers": "k:9092", "consumerGroup": "g", "partitionLimitation": "0-3"}),
        );
        assert!(reasons.is_empty());
        assert!(out.get("partitionLimitation").is_none());
        assert!(differences[0].contains("KEDA ignores it without topic"));
    }
}
