//! The live view: a table of every trigger's latest reading, how fast it moves, and the
//! replicas its scaled object settles at (as `spillway plan` computes them without a current
//! count), drawn from the metric cache after each tick (`spillway watch`, `make run`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::cache::{MetricCache, TriggerId, TriggerState};
use crate::config::{Config, ScaledObjectConfig};
use crate::plan::{PlanSource, plan};
use crate::scalers::{Reading, TriggerParams};

/// Renders the table for `config`'s scaled objects from `cache`, as at a first poll: no rates.
pub fn render_table(config: &Config, cache: &MetricCache) -> String {
    LiveTable::default().render(config, cache)
}

/// The table across polls: it keeps each trigger's previous reading, so the `RATE` column
/// shows how fast a backlog grows or drains between the last two polls.
#[derive(Debug, Default)]
pub struct LiveTable {
    previous: HashMap<TriggerId, Sample>,
}

/// A reading kept for the next poll's rate.
#[derive(Debug, Clone, Copy)]
struct Sample {
    value: f64,
    at: SystemTime,
    /// The rate computed when this reading arrived, shown again while it is the latest.
    rate: Option<f64>,
}

impl LiveTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Renders the table for `config`'s scaled objects from `cache`, and remembers this poll's
    /// readings for the next call's rates.
    pub fn render(&mut self, config: &Config, cache: &MetricCache) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:>12} {:>8} {:>7} {:>9} {:>9} {:>10}  STATUS",
            "SCALED OBJECT",
            "METRIC",
            "VALUE",
            "TARGET",
            "ACTIVE",
            "LAG (s)",
            "REPLICAS",
            "RATE (/s)"
        );
        let triggers = config.triggers();
        for so in &config.scaled_objects {
            let name = format!("{}/{}", so.namespace, so.name);
            let mine: Vec<_> = triggers
                .iter()
                .filter(|(id, _)| id.namespace == so.namespace && id.scaled_object == so.name)
                .map(|(id, trigger)| (id, trigger, cache.get(id)))
                .collect();
            let states: Vec<Option<TriggerState>> =
                mine.iter().map(|(_, _, state)| state.clone()).collect();
            let (replicas, reason) = settles_at(so, &states);
            for (row, (id, trigger, state)) in mine.iter().enumerate() {
                let metric = format!("s{}-{}", id.index, trigger.metric_name());
                let reading = state.as_ref().and_then(|s| s.current());
                let rate = format_rate(self.observe(id, reading));
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
                        (None, None) => {
                            ("-".to_owned(), "-", "-".to_owned(), "no reading".to_owned())
                        }
                    },
                };
                let (so_column, replica_column) = if row == 0 {
                    (name.as_str(), replicas.as_str())
                } else {
                    ("", "")
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:<32} {:>12} {:>8} {:>7} {:>9} {:>9} {:>10}  {}",
                    so_column,
                    metric,
                    value,
                    format_value(trigger.target_value()),
                    active,
                    lag_seconds,
                    replica_column,
                    rate,
                    status
                );
            }
            let _ = writeln!(out, "{:<24} {}", "", reason);
        }
        out
    }

    /// The change per second between this reading and the previous poll's, remembering this
    /// one. `None` on a first poll, after a failed poll (the last two polls do not both have a
    /// value), and when no time passed between the two.
    fn observe(&mut self, id: &TriggerId, reading: Option<&Reading>) -> Option<f64> {
        let Some(reading) = reading else {
            self.previous.remove(id);
            return None;
        };
        let rate = match self.previous.get(id) {
            // The same reading drawn again (no poll in between): the same rate.
            Some(previous) if previous.at == reading.timestamp => return previous.rate,
            Some(previous) => reading
                .timestamp
                .duration_since(previous.at)
                .ok()
                .map(|elapsed| elapsed.as_secs_f64())
                .filter(|seconds| *seconds > 0.0)
                .map(|seconds| (reading.value - previous.value) / seconds),
            None => None,
        };
        self.previous.insert(
            id.clone(),
            Sample {
                value: reading.value,
                at: reading.timestamp,
                rate,
            },
        );
        rate
    }
}

/// The count `so` settles at with these states (`hold`: it keeps its current one), and why.
fn settles_at(so: &ScaledObjectConfig, states: &[Option<TriggerState>]) -> (String, String) {
    match PlanSource::from_config(so) {
        Ok(mut source) => {
            source.set_states(states);
            let plan = plan(&source.input);
            let replicas = plan.settles_at.map_or("hold".to_owned(), |n| n.to_string());
            (replicas, plan.settling_reason())
        }
        // A loaded config's triggers are valid; an error is shown all the same, not hidden.
        Err(err) => ("-".to_owned(), err.to_string()),
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.2}")
    }
}

/// `+12.5` growing, `-3.0` draining, `0` steady, `-` unknown.
fn format_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_owned(),
        Some(rate) if rate.abs() < 0.05 => "0".to_owned(),
        Some(rate) => format!("{rate:+.1}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;
    use std::time::Duration;

    use crate::scalers::ScalerError;

    const CONFIG: &str = "scaledObjects:\n  - name: orders\n    maxReplicaCount: 12\n    triggers:\n      - kafka: {bootstrapServers: \"127.0.0.1:9092\", consumerGroup: orders, topic: orders, lagThreshold: 100}\n      - rabbitmq: {host: \"amqp://127.0.0.1:5672/\", queueName: jobs, value: 20}\n";

    fn id(index: usize) -> TriggerId {
        TriggerId {
            namespace: "default".into(),
            scaled_object: "orders".into(),
            index,
        }
    }

    /// A reading taken `seconds` after a fixed instant.
    fn reading_at(value: f64, seconds: u64) -> Reading {
        Reading {
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds),
            ..Reading::new(value, value > 0.0)
        }
    }

    /// The columns of the row of trigger `metric`.
    fn columns(table: &str, metric: &str) -> Vec<String> {
        table
            .lines()
            .find(|l| l.contains(metric))
            .unwrap_or_else(|| panic!("no row for {metric}:\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn rate_is_the_change_per_second_between_the_last_two_polls() {
        let config = Config::parse(Path::new("spillway.yaml"), CONFIG).unwrap();
        let cache = MetricCache::new();
        let mut table = LiveTable::new();
        let ms = Duration::from_millis(3);
        cache.record(id(0), Ok(reading_at(1000.0, 0)), ms);
        cache.record(id(1), Ok(reading_at(60.0, 0)), ms);
        let first = table.render(&config, &cache);
        // SCALED-OBJECT METRIC VALUE TARGET ACTIVE LAG REPLICAS RATE STATUS; first poll: no rate.
        // 1000 / 100 = 10 replicas.
        assert_eq!(
            columns(&first, "s0-kafka-orders")[1..9],
            [
                "s0-kafka-orders",
                "1000",
                "100",
                "yes",
                "-",
                "10",
                "-",
                "ok"
            ],
            "{first}"
        );
        assert_eq!(columns(&first, "s1-rabbitmq-jobs")[5], "-", "{first}");

        // 2 s later: (1100 - 1000) / 2 = +50 per second; (30 - 60) / 2 = -15.
        cache.record(id(0), Ok(reading_at(1100.0, 2)), ms);
        cache.record(id(1), Ok(reading_at(30.0, 2)), ms);
        let second = table.render(&config, &cache);
        assert_eq!(columns(&second, "s0-kafka-orders")[7], "+50.0", "{second}");
        // The second row has no scaled object or replicas column.
        assert_eq!(
            columns(&second, "s1-rabbitmq-jobs")[..6],
            ["s1-rabbitmq-jobs", "30", "20", "yes", "-", "-15.0"],
            "{second}"
        );
        // Drawn again without a poll in between: the same rates.
        assert_eq!(table.render(&config, &cache), second);

        // 4 s later the lag has not moved: 0. The queue's poll fails: no rate, and none at the
        // next good poll either (the poll before it had no value).
        cache.record(id(0), Ok(reading_at(1100.0, 6)), ms);
        let down = ScalerError::Unreachable {
            broker: "rabbitmq",
            target: "127.0.0.1:5672".into(),
            cause: "connection refused".into(),
        };
        cache.record(id(1), Err(down), ms);
        let third = table.render(&config, &cache);
        assert_eq!(columns(&third, "s0-kafka-orders")[7], "0", "{third}");
        assert_eq!(
            columns(&third, "s1-rabbitmq-jobs")[1..3],
            ["error", "20"],
            "{third}"
        );
        cache.record(id(1), Ok(reading_at(45.0, 8)), ms);
        let fourth = table.render(&config, &cache);
        assert_eq!(columns(&fourth, "s1-rabbitmq-jobs")[5], "-", "{fourth}");
    }

    #[test]
    fn render_table_shows_a_first_poll() {
        let config = Config::parse(Path::new("spillway.yaml"), CONFIG).unwrap();
        let cache = MetricCache::new();
        let table = render_table(&config, &cache);
        assert!(
            table.lines().next().unwrap().contains("RATE (/s)"),
            "{table}"
        );
        assert!(
            columns(&table, "s0-kafka-orders").ends_with(&[
                "-".to_owned(),
                "waiting".into(),
                "for".into(),
                "the".into(),
                "first".into(),
                "poll".into()
            ]),
            "{table}"
        );
    }

    #[test]
    fn rates_read_as_growing_draining_or_steady() {
        assert_eq!(format_rate(None), "-");
        assert_eq!(format_rate(Some(12.46)), "+12.5");
        assert_eq!(format_rate(Some(-3.0)), "-3.0");
        assert_eq!(format_rate(Some(0.01)), "0");
    }
}
