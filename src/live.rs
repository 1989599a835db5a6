//! The live view: a table of every trigger's latest reading and the replicas its scaled object
//! would get, drawn from the metric cache after each tick (`spillway watch`, `make run`).

use std::fmt::Write as _;

use crate::cache::MetricCache;
use crate::config::Config;
use crate::replicas::desired_replicas;
use crate::scalers::TriggerParams;

/// Renders the table for `config`'s scaled objects from `cache`.
pub fn render_table(config: &Config, cache: &MetricCache) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:>12} {:>8} {:>7} {:>9} {:>9}  STATUS",
        "SCALED OBJECT", "METRIC", "VALUE", "TARGET", "ACTIVE", "LAG (s)", "REPLICAS"
    );
    let triggers = config.triggers();
    for so in &config.scaled_objects {
        let name = format!("{}/{}", so.namespace, so.name);
        let mine: Vec<_> = triggers
            .iter()
            .filter(|(id, _)| id.namespace == so.namespace && id.scaled_object == so.name)
            .map(|(id, trigger)| (id, trigger, cache.get(id)))
            .collect();
        let inputs: Vec<(f64, Option<&crate::scalers::Reading>)> = mine
            .iter()
            .map(|(_, trigger, state)| {
                (
                    trigger.target_value(),
                    state.as_ref().and_then(|s| s.current()),
                )
            })
            .collect();
        let proposal = desired_replicas(&inputs, so.min_replica_count, so.max_replica_count);
        let replicas = proposal
            .replicas
            .map_or("hold".to_owned(), |r| r.to_string());
        for (row, (id, trigger, state)) in mine.iter().enumerate() {
            let metric = format!("s{}-{}", id.index, trigger.metric_name());
            let (value, active, lag_seconds, status) = match state {
                None => (
                    "-".to_owned(),
                    "-",
                    "-".to_owned(),
                    "waiting for the first poll".to_owned(),
                ),
                Some(state) => match (state.current(), &state.error) {
                    (Some(reading), _) => {
                        let lag = reading
                            .extra
                            .iter()
                            .find(|(n, _)| *n == "lag-seconds")
                            .map_or("-".to_owned(), |(_, v)| format!("{v:.1}"));
                        (
                            format_value(reading.value),
                            if reading.active { "yes" } else { "no" },
                            lag,
                            "ok".to_owned(),
                        )
                    }
                    (None, Some(err)) => (
                        "error".to_owned(),
                        "-",
                        "-".to_owned(),
                        format!("{} (x{}): {err}", err.reason(), state.consecutive_failures),
                    ),
                    (None, None) => ("-".to_owned(), "-", "-".to_owned(), "no reading".to_owned()),
                },
            };
            let (so_column, replica_column) = if row == 0 {
                (name.as_str(), replicas.as_str())
            } else {
                ("", "")
            };
            let _ = writeln!(
                out,
                "{:<24} {:<32} {:>12} {:>8} {:>7} {:>9} {:>9}  {}",
                so_column,
                metric,
                value,
                format_value(trigger.target_value()),
                active,
                lag_seconds,
                replica_column,
                status
            );
        }
        let _ = writeln!(out, "{:<24} {}", "", proposal.reason);
    }
    out
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.2}")
    }
}
