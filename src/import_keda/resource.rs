//! KEDA's `cpu` and `memory` triggers to spillway's `cpu` and `memory`: the HPA reads both from
//! the cluster's resource metrics, in KEDA and in spillway. KEDA gives the target kind as the
//! trigger's `metricType` (or the deprecated `metadata.type`) and the target as the string
//! `value`; spillway writes the kind as the field's name, `utilization` (a whole percent) or
//! `averageValue` (a quantity), so a bare number can never be read as the other kind.

use serde_json::{Map, Value};

use super::params::Metadata;

/// KEDA's trigger types.
pub(super) const TYPES: [&str; 2] = ["cpu", "memory"];

/// The trigger's body, from its `metadata` and its trigger-level `metricType` (if any).
pub(super) fn map(md: &mut Metadata, metric_type: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    let deprecated = md.take("type");
    let kind = match (metric_type, deprecated.as_deref()) {
        (Some(kind), _) => Some(kind.to_owned()),
        (None, Some(kind)) => {
            md.differs(
                "type",
                "KEDA's deprecated form of the trigger's metricType, read as it",
            );
            Some(kind.to_owned())
        }
        (None, None) => None,
    };
    let value = md.take("value");
    match (kind.as_deref(), value) {
        (_, None) => md.refuse("value", "is required (by KEDA too)"),
        (Some("Utilization"), Some(value)) => match value.trim().parse::<i32>() {
            Ok(percent) if percent >= 1 => {
                out.insert("utilization".into(), percent.into());
            }
            _ => md.refuse(
                "value",
                format!("{value:?} is not a whole percent of at least 1 (metricType Utilization)"),
            ),
        },
        (Some("AverageValue"), Some(value)) => match crate::quantity::parse_quantity(&value) {
            Ok(n) if n > 0.0 => {
                out.insert("averageValue".into(), Value::String(value.trim().to_owned()));
            }
            Ok(_) => md.refuse("value", format!("{value:?} must be above 0")),
            Err(err) => md.refuse("value", format!("{value:?}: {err}")),
        },
        (Some(other), Some(_)) => md.refuse(
            "value",
            format!("metricType {other} is not one cpu and memory triggers take (Utilization, AverageValue)"),
        ),
        (None, Some(_)) => md.refuse(
            "value",
            "needs the trigger's metricType (Utilization or AverageValue), as KEDA does",
        ),
    }
    md.string(&mut out, "containerName");
    md.finish("cpu and memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapped(metadata: Value, metric_type: Option<&str>) -> (Value, Vec<String>, Vec<String>) {
        let mut md = Metadata::new("triggers[0]", Some(&metadata));
        let out = map(&mut md, metric_type);
        (Value::Object(out), md.reasons, md.differences)
    }

    #[test]
    fn keda_s_examples_map_to_a_utilization_or_an_average_value() {
        // keda.sh/docs/scalers/cpu and /memory.
        let (out, reasons, _) = mapped(json!({"value": "60"}), Some("Utilization"));
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(out, json!({"utilization": 60}));
        let (out, reasons, _) = mapped(
            json!({"value": "512Mi", "containerName": "api"}),
            Some("AverageValue"),
        );
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(
            out,
            json!({"averageValue": "512Mi", "containerName": "api"})
        );
        // The deprecated metadata.type still reads, with a note.
        let (out, reasons, differences) =
            mapped(json!({"type": "Utilization", "value": "50"}), None);
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(out, json!({"utilization": 50}));
        assert_eq!(differences.len(), 1);
    }

    #[test]
    fn a_target_that_cannot_be_read_is_refused_with_the_value() {
        for (metadata, metric_type, reason) in [
            (
                json!({"value": "60"}),
                None,
                "needs the trigger's metricType",
            ),
            (
                json!({"value": "60%"}),
                Some("Utilization"),
                "\"60%\" is not a whole percent",
            ),
            (
                json!({"value": "0"}),
                Some("Utilization"),
                "is not a whole percent of at least 1",
            ),
            (
                json!({"value": "lots"}),
                Some("AverageValue"),
                "not a Kubernetes quantity",
            ),
            (
                json!({"value": "60"}),
                Some("Value"),
                "metricType Value is not one",
            ),
            (json!({}), Some("Utilization"), "is required"),
            (
                json!({"value": "60", "unknown": "x"}),
                Some("Utilization"),
                "unknown: is not a parameter",
            ),
        ] {
            let (_, reasons, _) = mapped(metadata.clone(), metric_type);
            assert!(
                reasons.iter().any(|r| r.contains(reason)),
                "{metadata} {metric_type:?}: {reasons:?}"
            );
        }
    }
}
