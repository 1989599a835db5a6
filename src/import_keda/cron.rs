//! KEDA's `cron` trigger to spillway's `cron`: timezone, start, end and desiredReplicas, the
//! same meaning (the window is open when the next end comes before the next start).

use serde_json::{Map, Value};

use super::params::Metadata;

/// KEDA's trigger type.
pub(super) const TYPE: &str = "cron";

/// The `cron` trigger's body.
pub(super) fn map(md: &mut Metadata) -> Map<String, Value> {
    let mut out = Map::new();
    md.required(&mut out, "timezone");
    md.required(&mut out, "start");
    md.required(&mut out, "end");
    md.required_integer(&mut out, "desiredReplicas");
    md.finish(TYPE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keda_s_example_maps_one_to_one() {
        let given = json!({"timezone": "Asia/Kolkata", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": "10"});
        let mut md = Metadata::new("triggers[0]", Some(&given));
        let out = map(&mut md);
        assert!(md.reasons.is_empty());
        assert_eq!(
            Value::Object(out),
            json!({"timezone": "Asia/Kolkata", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 10})
        );
    }

    #[test]
    fn desired_replicas_must_be_a_whole_number() {
        let given = json!({"timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": "ten"});
        let mut md = Metadata::new("triggers[0]", Some(&given));
        map(&mut md);
        assert_eq!(
            md.reasons,
            ["triggers[0].metadata.desiredReplicas: \"ten\" is not a whole number"]
        );
    }
}
