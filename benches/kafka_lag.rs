//! Kafka lag figures on the harness's real broker (run: `make bench` or
//! `cargo bench --bench kafka_lag`; needs `make services-up`). Prints figures, asserts nothing.
//!
//! 1. Time per tick for one consumer group over 10,000 partitions (10 topics x 1,000).
//! 2. Kafka requests per tick for 1, 10 and 200 triggers on one cluster, counted by the wire
//!    client (`request_counts`): all sharing one scaler (spillway) against one scaler per
//!    trigger (KEDA's architecture: a client per ScaledObject), for triggers on one group and
//!    on a group each.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use spillway::scalers::Scaler;
use spillway::scalers::kafka::{KafkaScaler, KafkaTrigger, RequestCounts};

const STATS: [(&str, &str); 1] = [("statistics.interval.ms", "100")];

fn config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set(
        "bootstrap.servers",
        common::endpoint("SPILLWAY_KAFKA_BOOTSTRAP"),
    );
    config
}

async fn create_topics(names: &[String], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for chunk in topics.chunks(5) {
        let result = admin
            .create_topics(
                chunk,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(120))),
            )
            .await
            .unwrap();
        assert!(result.iter().all(|r| r.is_ok()), "{result:?}");
    }
}

/// Deletes `names` and waits until metadata no longer has them and their files are closed
/// (the harness's broker closes them 1 s after deletion): the broker may hold 20,000 files, so
/// the next run's 10,000 partitions must not meet this run's.
async fn delete_topics(names: &[String]) {
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    let consumer: BaseConsumer = config().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let left = consumer
            .fetch_metadata(None, Duration::from_secs(30))
            .map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| names.contains(&t.name()))
                    .count()
            })
            .unwrap_or(names.len());
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then until the broker has removed their directories (and closed their files): under load
    // that took longer than the 1 s delay, and the next run's partitions then failed the log dir.
    let data = std::env::var("SPILLWAY_KAFKA_LOG")
        .ok()
        .and_then(|log| Some(std::path::Path::new(&log).parent()?.join("data")));
    while let Some(data) = &data
        && Instant::now() < deadline
    {
        let pending = std::fs::read_dir(data)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.ends_with("-delete") || names.iter().any(|t| name.starts_with(t))
                    })
                    .count()
            })
            .unwrap_or(0);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// One record per partition, nothing committed past it: every partition lags by one.
fn fill_and_commit(topics: &[String], partitions: i32, group: &str) {
    let all: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (t.clone(), p)))
        .collect();
    produce_to(&all);
    let committer: BaseConsumer = config().set("group.id", group).create().unwrap();
    // One topic per commit: a single OffsetCommit of 10,000 partitions is refused.
    for topic in topics {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(0))
                .unwrap();
        }
        committer.commit(&tpl, CommitMode::Sync).unwrap();
    }
}

/// One record to each of `partitions`.
fn produce_to(partitions: &[(String, i32)]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        config().set("linger.ms", "20").create().unwrap();
    for (topic, p) in partitions {
        while producer
            .send(BaseRecord::<(), _>::to(topic).partition(*p).payload("x"))
            .is_err()
        {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
}

/// Deletes topics an earlier, interrupted run left behind (10,000 partitions weigh on the broker).
async fn delete_leftovers() {
    let consumer: BaseConsumer = config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .unwrap();
    let leftovers: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with("bench10k-") || n.starts_with("benchreq-"))
        .collect();
    if !leftovers.is_empty() {
        println!("deleting {} topics left by an earlier run", leftovers.len());
        delete_topics(&leftovers).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn tick_time_over_10k_partitions() {
    let topics: Vec<String> = (0..10).map(|_| common::unique_name("bench10k")).collect();
    let group = common::unique_name("bench10k-group");
    let started = Instant::now();
    create_topics(&topics, 1000).await;
    fill_and_commit(&topics, 1000, &group);
    println!(
        "setup: 10 topics x 1,000 partitions, one record per partition produced, 10,000 commits in {:.1?}",
        started.elapsed()
    );

    let trigger = KafkaTrigger {
        timeout: 30_000,
        allow_idle_consumers: true,
        ..KafkaTrigger::new(common::endpoint("SPILLWAY_KAFKA_BOOTSTRAP"), &group, None)
    };
    let scaler = KafkaScaler::connect(&trigger).unwrap();
    let cold = Instant::now();
    // New partitions may still be electing leaders: the first good tick is the cold one.
    let mut first = scaler
        .poll_detailed(std::slice::from_ref(&trigger))
        .await
        .remove(0);
    // On a loaded 2-core machine 10,000 new partitions took over 30 s to all have a leader.
    for _ in 0..120 {
        if first.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        first = scaler
            .poll_detailed(std::slice::from_ref(&trigger))
            .await
            .remove(0);
    }
    let mut first = first.expect("first tick");
    let cold = cold.elapsed();
    // librdkafka fails (does not retry) a record for a partition its metadata does not have
    // yet, which new 1,000-partition topics lose some of: produce those again until every
    // partition holds its record, so the lag to expect is known.
    for _ in 0..5 {
        let empty: Vec<(String, i32)> = first
            .partitions
            .iter()
            .filter(|p| p.end_offset == 0)
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        if empty.is_empty() {
            break;
        }
        println!(
            "{} partitions lost their record to the producer; producing them again",
            empty.len()
        );
        produce_to(&empty);
        first = scaler
            .poll_detailed(std::slice::from_ref(&trigger))
            .await
            .remove(0)
            .expect("tick after producing again");
    }
    println!(
        "first tick saw {} partitions, total lag {} (10,000 expected: one uncommitted record each)",
        first.partitions.len(),
        first.total.metric
    );
    let wrong: Vec<_> = first.partitions.iter().filter(|p| p.lag != 1).collect();
    if !wrong.is_empty() {
        println!(
            "WRONG: {} partitions do not lag by one, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }
    let mut ticks = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let report = scaler
            .poll_detailed(std::slice::from_ref(&trigger))
            .await
            .remove(0)
            .expect("tick");
        ticks.push(t.elapsed());
        if report.total.metric != first.total.metric {
            println!(
                "tick saw total lag {} (first tick: {})",
                report.total.metric, first.total.metric
            );
        }
    }
    ticks.sort();
    println!(
        "tick, 1 group over 10,000 partitions (lag + lag seconds): cold {cold:.1?} (metadata + 10,000 record timestamps); warm median {:.1?}, p90 {:.1?}, min {:.1?}, max {:.1?} over {} ticks (target < 100 ms)",
        percentile(&ticks, 0.5),
        percentile(&ticks, 0.9),
        ticks[0],
        ticks[ticks.len() - 1],
        ticks.len()
    );
    delete_topics(&topics).await;
}

/// One tick: every scaler polls its triggers, all scalers concurrently (as a poller would).
async fn poll_all(scalers: &[(KafkaScaler, Vec<KafkaTrigger>)], what: &str) {
    let rounds = scalers
        .iter()
        .map(|(scaler, triggers)| scaler.poll(triggers));
    for results in futures::future::join_all(rounds).await {
        for r in results {
            r.unwrap_or_else(|err| panic!("{what}: {err}"));
        }
    }
}

/// Requests per tick, by API, over `ticks` ticks after one warm-up tick.
async fn requests_per_tick(
    scalers: &[(KafkaScaler, Vec<KafkaTrigger>)],
    ticks: u32,
) -> RequestCounts {
    let snapshot = |scalers: &[(KafkaScaler, Vec<KafkaTrigger>)]| {
        let mut total = RequestCounts::new();
        for (scaler, _) in scalers {
            for (api, n) in scaler.request_counts() {
                *total.entry(api).or_default() += n;
            }
        }
        total
    };
    poll_all(scalers, "warm-up tick").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = snapshot(scalers);
    for _ in 0..ticks {
        poll_all(scalers, "tick").await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = snapshot(scalers);
    let mut per_tick = RequestCounts::new();
    for (api, n) in after {
        let delta = (n - before.get(&api).copied().unwrap_or(0)) / i64::from(ticks);
        if delta > 0 {
            per_tick.insert(api, delta);
        }
    }
    per_tick
}

fn describe(counts: &RequestCounts) -> String {
    let total: i64 = counts.values().sum();
    let mut parts: Vec<String> = counts.iter().map(|(api, n)| format!("{api} {n}")).collect();
    parts.sort();
    format!("{total:>4} ({})", parts.join(", "))
}

async fn requests_by_trigger_count() {
    let topics: Vec<String> = (0..200).map(|_| common::unique_name("benchreq")).collect();
    let shared_group = common::unique_name("benchreq-shared");
    create_topics(&topics, 3).await;
    fill_and_commit(&topics, 3, &shared_group);
    let own_groups: Vec<String> = topics.iter().map(|t| format!("{t}-group")).collect();
    for (topic, group) in topics.iter().zip(&own_groups) {
        let committer: BaseConsumer = config().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(topic, p, Offset::Offset(1))
                .unwrap();
        }
        committer.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let bootstrap = common::endpoint("SPILLWAY_KAFKA_BOOTSTRAP");
    let mut rows: HashMap<(usize, &str, &str), RequestCounts> = HashMap::new();
    for n in [1usize, 10, 200] {
        for (grouping, groups) in [
            ("one group", vec![shared_group.clone(); n]),
            ("a group each", own_groups[..n].to_vec()),
        ] {
            let triggers: Vec<KafkaTrigger> = topics[..n]
                .iter()
                .zip(&groups)
                .map(|(topic, group)| KafkaTrigger {
                    timeout: 30_000,
                    ..KafkaTrigger::new(&bootstrap, group, Some(topic))
                })
                .collect();
            let shared = vec![(
                KafkaScaler::connect_with(&triggers[0], &STATS).unwrap(),
                triggers.clone(),
            )];
            rows.insert(
                (n, grouping, "spillway, one shared client"),
                requests_per_tick(&shared, 5).await,
            );
            let separate: Vec<(KafkaScaler, Vec<KafkaTrigger>)> = triggers
                .iter()
                .map(|t| {
                    (
                        KafkaScaler::connect_with(t, &STATS).unwrap(),
                        vec![t.clone()],
                    )
                })
                .collect();
            rows.insert(
                (n, grouping, "one client per trigger (KEDA's shape)"),
                requests_per_tick(&separate, 5).await,
            );
        }
    }
    println!(
        "Kafka requests per tick (spillway's wire client counts; 1 broker, 3 partitions per topic, each trigger its own topic):"
    );
    for grouping in ["one group", "a group each"] {
        for n in [1usize, 10, 200] {
            for shape in [
                "spillway, one shared client",
                "one client per trigger (KEDA's shape)",
            ] {
                println!(
                    "  {n:>3} triggers, {grouping:<12} {shape:<40} {}",
                    describe(&rows[&(n, grouping, shape)])
                );
            }
        }
    }
    delete_topics(&topics).await;
}

#[tokio::main]
async fn main() {
    // RUST_LOG=spillway=debug shows where a tick spends its time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    // SPILLWAY_BENCH=requests or =ticks runs one part only.
    let only = std::env::var("SPILLWAY_BENCH").unwrap_or_default();
    delete_leftovers().await;
    if only.is_empty() || only == "requests" {
        requests_by_trigger_count().await;
    }
    if only.is_empty() || only == "ticks" {
        tick_time_over_10k_partitions().await;
    }
}
