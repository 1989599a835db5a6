//! KEDA's `nats-jetstream` trigger to spillway's `natsJetStream`: the same parameters
//! (natsServerMonitoringEndpoint, account, accountID, stream, consumer, lagThreshold 10,
//! activationLagThreshold 0, useHttps). The one difference is spillway's and KEDA 2.20's alike:
//! a consumer the server does not list is an error, not the stream's length.

use serde_json::{Map, Value};

use super::params::Metadata;

/// KEDA's trigger type.
pub(super) const TYPE: &str = "nats-jetstream";

/// The `natsJetStream` trigger's body.
pub(super) fn map(md: &mut Metadata) -> Map<String, Value> {
    let mut out = Map::new();
    md.required(&mut out, "natsServerMonitoringEndpoint");
    md.string(&mut out, "account");
    md.string(&mut out, "accountID");
    md.required(&mut out, "stream");
    md.required(&mut out, "consumer");
    md.integer(&mut out, "lagThreshold", Some(10));
    md.integer(&mut out, "activationLagThreshold", Some(0));
    md.boolean(&mut out, "useHttps");
    md.finish(TYPE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keda_s_example_maps_one_to_one() {
        let given = json!({"natsServerMonitoringEndpoint": "nats.nats.svc.cluster.local:8222",
            "account": "$G", "stream": "mystream", "consumer": "pull_consumer",
            "lagThreshold": "10", "activationLagThreshold": "15", "useHttps": "false"});
        let mut md = Metadata::new("triggers[0]", Some(&given));
        let out = map(&mut md);
        assert!(md.reasons.is_empty(), "{:?}", md.reasons);
        assert_eq!(
            Value::Object(out),
            json!({"natsServerMonitoringEndpoint": "nats.nats.svc.cluster.local:8222",
                "account": "$G", "stream": "mystream", "consumer": "pull_consumer",
                "lagThreshold": 10, "activationLagThreshold": 15, "useHttps": false})
        );
    }

    #[test]
    fn a_missing_stream_is_refused() {
        let given = json!({"natsServerMonitoringEndpoint": "n:8222", "consumer": "c"});
        let mut md = Metadata::new("triggers[2]", Some(&given));
        map(&mut md);
        assert_eq!(
            md.reasons,
            ["triggers[2].metadata.stream: is required (by KEDA too)"]
        );
    }
}
