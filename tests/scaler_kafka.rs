//! The Kafka scaler against the harness's real Kafka 4.x: KEDA's lag semantics, lag seconds,
//! typed errors, and a cross-check with Kafka's own consumer-groups tool.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use spillway::scalers::kafka::{KafkaLagReport, KafkaScaler, KafkaTrigger, OffsetResetPolicy};
use spillway::scalers::{Reading, Scaler, ScalerError};

use common::kafka::{bootstrap, client_config, commit, create_topic, delete_topic, produce};

/// A group member that has joined but never commits; the group exists while it lives.
fn join_without_commit(group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "consumer never got an assignment"
        );
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer
}

/// One trigger polled alone: its reading.
async fn poll_one(scaler: &KafkaScaler, trigger: &KafkaTrigger) -> Result<Reading, ScalerError> {
    scaler.poll(std::slice::from_ref(trigger)).await.remove(0)
}

/// One trigger polled alone: its per-partition report.
async fn report_one(
    scaler: &KafkaScaler,
    trigger: &KafkaTrigger,
) -> Result<KafkaLagReport, ScalerError> {
    scaler
        .poll_detailed(std::slice::from_ref(trigger))
        .await
        .remove(0)
}

fn trigger(group: &str, topic: Option<&str>) -> KafkaTrigger {
    KafkaTrigger::new(bootstrap(), group, topic)
}

#[tokio::test]
async fn lag_per_partition_with_commits_at_chosen_positions() {
    let topic = create_topic(12).await;
    let group = common::unique_name("group");
    let counts: Vec<i64> = (0..12).map(|p| 20 + p).collect();
    produce(&topic, &counts, Duration::ZERO).await;
    // Partition p committed at p (so lag = 20), except 11 left uncommitted.
    let commits: Vec<(&str, i32, i64)> = (0..11).map(|p| (topic.as_str(), p, p as i64)).collect();
    commit(&group, &commits);

    let uncapped = KafkaTrigger {
        allow_idle_consumers: true,
        ..trigger(&group, Some(&topic))
    };
    let scaler = KafkaScaler::connect(&uncapped).unwrap();
    let report = report_one(&scaler, &uncapped).await.expect("lag");
    assert_eq!(report.partitions.len(), 12);
    for p in &report.partitions {
        assert_eq!(p.end_offset, 20 + p.partition as i64);
        if p.partition < 11 {
            assert_eq!(
                (p.committed_offset, p.lag),
                (Some(p.partition as i64), 20),
                "partition {}",
                p.partition
            );
        } else {
            // No commit + latest policy: KEDA's lag 1, "scale to one so consumption can start".
            assert_eq!((p.committed_offset, p.lag), (None, 1));
        }
    }
    assert_eq!(report.total.metric, 11 * 20 + 1);
    assert!(report.active);

    // KEDA's default cap: no more consumers than partitions (12 x lagThreshold 10 = 120).
    let capped = trigger(&group, Some(&topic));
    let partitions = KafkaTrigger {
        partition_limitation: Some("0-2,7".into()),
        allow_idle_consumers: true,
        ..trigger(&group, Some(&topic))
    };
    let readings = scaler.poll(&[capped, partitions]).await;
    assert_eq!(readings[0].as_ref().unwrap().value, 120.0);
    assert_eq!(readings[1].as_ref().unwrap().value, 80.0);
    delete_topic(&topic).await;
}

#[tokio::test]
async fn group_without_commits_follows_reset_policy() {
    let topic = create_topic(3).await;
    produce(&topic, &[5, 7, 9], Duration::ZERO).await;
    let group = common::unique_name("fresh");
    let member = join_without_commit(&group, &topic);

    let latest = trigger(&group, Some(&topic));
    let earliest = KafkaTrigger {
        offset_reset_policy: OffsetResetPolicy::Earliest,
        ..trigger(&group, Some(&topic))
    };
    let to_zero = KafkaTrigger {
        scale_to_zero_on_invalid_offset: true,
        ..trigger(&group, Some(&topic))
    };
    let scaler = KafkaScaler::connect(&latest).unwrap();
    let readings = scaler.poll(&[latest, earliest, to_zero]).await;
    let latest = readings[0].as_ref().expect("latest");
    assert_eq!((latest.value, latest.active), (3.0, true));
    let earliest = readings[1].as_ref().expect("earliest");
    assert_eq!((earliest.value, earliest.active), (21.0, true));
    let to_zero = readings[2].as_ref().expect("scaleToZeroOnInvalidOffset");
    assert_eq!((to_zero.value, to_zero.active), (0.0, false));
    drop(member);
    delete_topic(&topic).await;
}

/// Issue 15: an unknown group is a group without commits (KEDA's rule), a missing topic is an
/// error.
#[tokio::test]
async fn unknown_group_reads_by_its_reset_policy_and_missing_topic_is_an_error() {
    let topic = create_topic(2).await;
    produce(&topic, &[3, 3], Duration::ZERO).await;
    let known = common::unique_name("known");
    commit(&known, &[(&topic, 0, 1)]);

    let unknown_group = trigger(&common::unique_name("nobody"), Some(&topic));
    let missing_topic = trigger(&known, Some(&common::unique_name("no-such-topic")));
    let scaler = KafkaScaler::connect(&unknown_group).unwrap();
    let readings = scaler
        .poll(&[unknown_group, missing_topic, trigger(&known, Some(&topic))])
        .await;
    let unknown = readings[0].as_ref().expect("unknown group");
    assert_eq!(
        (unknown.value, unknown.active),
        (2.0, true),
        "1 per partition under latest"
    );
    assert!(
        matches!(&readings[1], Err(ScalerError::NotFound { what, .. }) if what.starts_with("topic")),
        "{:?}",
        readings[1]
    );
    // The failures of other triggers do not spill over.
    assert_eq!(
        readings[2].as_ref().expect("healthy trigger").value,
        2.0 + 1.0
    );
    delete_topic(&topic).await;
}

#[tokio::test]
async fn deleted_topic_becomes_an_error() {
    let topic = create_topic(2).await;
    produce(&topic, &[4, 4], Duration::ZERO).await;
    let group = common::unique_name("deleted");
    commit(&group, &[(&topic, 0, 1), (&topic, 1, 1)]);
    let t = trigger(&group, Some(&topic));
    let scaler = KafkaScaler::connect(&t).unwrap();
    assert_eq!(poll_one(&scaler, &t).await.as_ref().unwrap().value, 6.0);

    delete_topic(&topic).await;
    let after = common::eventually(
        "the deleted topic to read as an error",
        Duration::from_secs(20),
        || async { poll_one(&scaler, &t).await.err() },
    )
    .await;
    assert!(matches!(after, ScalerError::NotFound { .. }), "{after:?}");
}

#[tokio::test]
async fn persistent_lag_is_excluded_but_still_activates() {
    let topic = create_topic(2).await;
    produce(&topic, &[30, 30], Duration::ZERO).await;
    let group = common::unique_name("stuck");
    commit(&group, &[(&topic, 0, 10), (&topic, 1, 10)]);
    let t = KafkaTrigger {
        exclude_persistent_lag: true,
        allow_idle_consumers: true,
        ..trigger(&group, Some(&topic))
    };
    let scaler = KafkaScaler::connect(&t).unwrap();
    let first = poll_one(&scaler, &t).await.unwrap();
    assert_eq!(
        (first.value, first.active),
        (40.0, true),
        "first sighting counts"
    );
    let second = poll_one(&scaler, &t).await.unwrap();
    assert_eq!(
        (second.value, second.active),
        (0.0, true),
        "unchanged commits: excluded, still active"
    );
    commit(&group, &[(&topic, 0, 15)]);
    let third = poll_one(&scaler, &t).await.unwrap();
    assert_eq!(third.value, 15.0, "the partition that moved counts again");
    delete_topic(&topic).await;
}

#[tokio::test]
async fn group_across_many_topics_without_topic_parameter() {
    let group = common::unique_name("multi");
    let mut topics = Vec::new();
    for n in 0..4 {
        let topic = create_topic(3).await;
        produce(&topic, &[10, 10, 10], Duration::ZERO).await;
        commit(&group, &[(&topic, 0, n), (&topic, 1, 10), (&topic, 2, 10)]);
        topics.push(topic);
    }
    let other = create_topic(1).await; // the group never committed here: not counted
    produce(&other, &[50], Duration::ZERO).await;

    let t = KafkaTrigger {
        allow_idle_consumers: true,
        ..trigger(&group, None)
    };
    let scaler = KafkaScaler::connect(&t).unwrap();
    let report = report_one(&scaler, &t).await.unwrap();
    assert_eq!(report.partitions.len(), 12);
    assert_eq!(report.total.metric, 10 + 9 + 8 + 7);
    for topic in topics.iter().chain([&other]) {
        delete_topic(topic).await;
    }
}

#[tokio::test]
async fn lag_seconds_is_the_age_of_the_oldest_unconsumed_message() {
    let topic = create_topic(2).await;
    let group = common::unique_name("age");
    produce(&topic, &[5, 0], Duration::from_secs(120)).await;
    produce(&topic, &[5, 5], Duration::from_secs(10)).await;
    // Partition 0: next to consume is a 120 s old record; partition 1: a 10 s old one.
    commit(&group, &[(&topic, 0, 2), (&topic, 1, 0)]);
    let t = trigger(&group, Some(&topic));
    let scaler = KafkaScaler::connect(&t).unwrap();
    let report = report_one(&scaler, &t).await.unwrap();
    let ages: HashMap<i32, f64> = report
        .partitions
        .iter()
        .map(|p| (p.partition, p.lag_seconds.expect("age known")))
        .collect();
    assert!(
        (119.0..180.0).contains(&ages[&0]),
        "partition 0 age {}",
        ages[&0]
    );
    assert!(
        (9.0..60.0).contains(&ages[&1]),
        "partition 1 age {}",
        ages[&1]
    );
    assert_eq!(report.lag_seconds, Some(ages[&0]));
    let reading = poll_one(&scaler, &t).await.unwrap();
    let extra = reading
        .extra
        .iter()
        .find(|(name, _)| *name == "lag-seconds")
        .expect("lag-seconds metric")
        .1;
    assert!(
        extra >= ages[&0],
        "second poll reads the cached timestamp, older by now"
    );

    // The consumer moved to a younger record: the new record is read (not the cached one).
    commit(&group, &[(&topic, 0, 7)]);
    let report = report_one(&scaler, &t).await.unwrap();
    let moved = report
        .partitions
        .iter()
        .find(|p| p.partition == 0)
        .unwrap()
        .lag_seconds
        .expect("age of the new record");
    assert!(
        (9.0..60.0).contains(&moved),
        "partition 0 after the commit: age {moved}"
    );

    // Caught up: no lag, no age.
    commit(&group, &[(&topic, 0, 10), (&topic, 1, 5)]);
    let report = report_one(&scaler, &t).await.unwrap();
    assert_eq!((report.total.metric, report.lag_seconds), (0, Some(0.0)));
    assert!(!report.active);
    delete_topic(&topic).await;
}

#[tokio::test]
async fn unreachable_cluster_is_an_error_within_the_timeout() {
    let t = KafkaTrigger {
        bootstrap_servers: "127.0.0.1:1".into(),
        timeout: 1000,
        ..trigger("any", Some("orders"))
    };
    let scaler = KafkaScaler::connect(&t).unwrap();
    let started = Instant::now();
    let result = poll_one(&scaler, &t).await;
    let took = started.elapsed();
    assert!(
        matches!(
            result,
            Err(ScalerError::Unreachable { .. } | ScalerError::Timeout { .. })
        ),
        "{result:?}"
    );
    // A down cluster fails within a couple of calls, well inside the round bound (6 x 1 s + 1 s).
    assert!(took < Duration::from_secs(6), "took {took:?}");
    println!(
        "kafka: unreachable cluster reported as {:?} after {took:?}",
        result.unwrap_err().reason()
    );
}

/// spillway's per-partition lag equals what Kafka's own `kafka-consumer-groups --describe` prints.
#[tokio::test]
async fn lag_matches_kafka_consumer_groups_tool() {
    let topic = create_topic(12).await;
    let group = common::unique_name("tool");
    let counts: Vec<i64> = (0..12).map(|p| 3 * p + 1).collect();
    produce(&topic, &counts, Duration::ZERO).await;
    let commits: Vec<(&str, i32, i64)> = (0..12)
        .map(|p| (topic.as_str(), p, (p as i64) % 4))
        .collect();
    commit(&group, &commits);

    let t = trigger(&group, Some(&topic));
    let scaler = KafkaScaler::connect(&t).unwrap();
    let report = report_one(&scaler, &t).await.unwrap();
    let ours: HashMap<i32, (i64, i64, i64)> = report
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition,
                (p.committed_offset.unwrap(), p.end_offset, p.lag),
            )
        })
        .collect();

    let classpath = format!("{}/*", common::endpoint("SPILLWAY_KAFKA_CLASSPATH"));
    let output = tokio::process::Command::new("java")
        .args([
            "-Xmx256m",
            "-cp",
            &classpath,
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        ])
        .args([
            "--bootstrap-server",
            &bootstrap(),
            "--describe",
            "--group",
            &group,
        ])
        .output()
        .await
        .expect("run ConsumerGroupCommand");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ConsumerGroupCommand failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut theirs = HashMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        if fields.len() >= 6 && fields[1] == topic {
            let number = |i: usize| {
                fields[i]
                    .parse::<i64>()
                    .unwrap_or_else(|_| panic!("bad field {i} in {line:?}"))
            };
            theirs.insert(number(2) as i32, (number(3), number(4), number(5)));
        }
    }
    assert_eq!(theirs.len(), 12, "tool output:\n{stdout}");
    assert_eq!(ours, theirs);
    println!(
        "kafka: per-partition lag of 12 partitions equals ConsumerGroupCommand --describe (total {})",
        report.total.uncapped
    );
    delete_topic(&topic).await;
}

/// Waits until the broker itself no longer lists `topic`, so the next poll is the first one
/// after the deletion took effect (DeleteTopics answers before every broker forgot the topic).
async fn wait_until_gone(topic: &str) {
    let consumer: BaseConsumer = client_config().create().expect("metadata client");
    common::eventually(
        "the broker to forget the deleted topic",
        Duration::from_secs(20),
        || async {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()?;
            metadata
                .topics()
                .iter()
                .all(|t| t.name() != topic || t.error().is_some())
                .then_some(())
        },
    )
    .await;
}

/// Issue 13: one tenant deleting its topic must not fail the other triggers on the cluster, not
/// even for one tick, although the scaler's metadata cache (60 s) still lists the topic.
#[tokio::test]
async fn deleting_one_topic_fails_only_its_triggers_on_the_next_poll() {
    let kept = create_topic(2).await;
    let deleted = create_topic(2).await;
    produce(&kept, &[10, 10], Duration::ZERO).await;
    produce(&deleted, &[20, 20], Duration::ZERO).await;
    // A group per topic, and one group reading both topics.
    let kept_group = common::unique_name("kept");
    let deleted_group = common::unique_name("gone");
    let shared_group = common::unique_name("shared");
    commit(&kept_group, &[(&kept, 0, 3), (&kept, 1, 4)]);
    commit(&deleted_group, &[(&deleted, 0, 5), (&deleted, 1, 5)]);
    commit(
        &shared_group,
        &[
            (&kept, 0, 1),
            (&kept, 1, 1),
            (&deleted, 0, 2),
            (&deleted, 1, 2),
        ],
    );
    let uncapped = |group: &str, topic: Option<&str>| KafkaTrigger {
        allow_idle_consumers: true,
        ..trigger(group, topic)
    };
    let triggers = [
        uncapped(&kept_group, Some(&kept)),
        uncapped(&deleted_group, Some(&deleted)),
        uncapped(&shared_group, Some(&kept)),
        uncapped(&shared_group, Some(&deleted)),
        uncapped(&shared_group, None),
    ];
    let scaler =
        KafkaScaler::connect_with(&triggers[0], &[("statistics.interval.ms", "100")]).unwrap();
    // ListOffsets and Metadata requests sent so far (librdkafka's statistics lag by 100 ms).
    let requests = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let counts = scaler.request_counts();
        let count = |api: &str| counts.get(api).copied().unwrap_or(0);
        (count("ListOffsets"), count("Metadata"))
    };
    let values = |readings: &[Result<Reading, ScalerError>]| -> Vec<Option<f64>> {
        readings
            .iter()
            .map(|r| r.as_ref().ok().map(|r| r.value))
            .collect()
    };
    let before = scaler.poll(&triggers).await;
    assert_eq!(
        values(&before),
        [Some(13.0), Some(30.0), Some(18.0), Some(36.0), Some(54.0)],
        "{before:?}"
    );

    // A healthy tick: one ListOffsets for the ends (one broker leads every partition; the log
    // starts of the first tick are reused while every commit is at or above them), no Metadata.
    let at_start = requests().await;
    assert!(scaler.poll(&triggers).await.iter().all(Result::is_ok));
    let healthy = requests().await;
    assert_eq!(
        (healthy.0 - at_start.0, healthy.1 - at_start.1),
        (1, 0),
        "ListOffsets and Metadata requests of a healthy tick"
    );

    delete_topic(&deleted).await;
    wait_until_gone(&deleted).await;
    let before_deletion_tick = requests().await;
    let started = Instant::now();
    let after = scaler.poll(&triggers).await;
    let took = started.elapsed();
    let after_deletion_tick = requests().await;
    assert_eq!(
        values(&after),
        [Some(13.0), None, Some(18.0), None, Some(18.0)],
        "the kept topic's triggers read on the first poll after the deletion: {after:?}"
    );
    for i in [1, 3] {
        assert!(
            matches!(&after[i], Err(ScalerError::NotFound { what, .. }) if what.contains(&deleted)),
            "trigger {i} on the deleted topic: {:?}",
            after[i]
        );
    }
    // The round stays well inside one broker timeout (5 s) beyond a healthy one.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let again = scaler.poll(&triggers).await;
    assert_eq!(values(&again), values(&after), "{again:?}");
    let extra = (
        after_deletion_tick.0 - before_deletion_tick.0,
        after_deletion_tick.1 - before_deletion_tick.1,
    );
    // The failed call, then the kept topic alone; one Metadata request finds the deleted topic.
    assert!(
        extra.0 <= 3 && extra.1 <= 3,
        "ListOffsets and Metadata requests of the deletion tick: {extra:?}"
    );
    println!(
        "kafka: first poll after deleting one of two topics took {took:?} with {} ListOffsets and {} Metadata requests: {:?}",
        extra.0,
        extra.1,
        after
            .iter()
            .map(|r| r.as_ref().map(|r| r.value).map_err(|e| e.reason()))
            .collect::<Vec<_>>()
    );
    delete_topic(&kept).await;
}

/// Requests of one tick by API, after a warm-up tick filled the caches.
async fn requests_of_one_tick(
    scaler: &KafkaScaler,
    triggers: &[KafkaTrigger],
) -> (Vec<Result<Reading, ScalerError>>, HashMap<String, i64>) {
    let before = scaler.request_counts();
    let readings = scaler.poll(triggers).await;
    let after = scaler.request_counts();
    let delta = after
        .into_iter()
        .map(|(api, n)| {
            let d = n - before.get(&api).copied().unwrap_or(0);
            (api, d)
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    (readings, delta)
}

/// Issue 14: groups share the cluster's connection and their requests; 200 groups cost one
/// OffsetFetch per coordinator per tick (one broker here, so one coordinator), two ListOffsets
/// per leader (ends and log starts), and no Metadata or FindCoordinator once cached.
#[tokio::test]
async fn two_hundred_groups_are_read_with_requests_that_do_not_grow_with_groups() {
    let topic = create_topic(2).await;
    produce(&topic, &[10, 10], Duration::ZERO).await;
    let groups: Vec<String> = (0..200)
        .map(|i| common::unique_name(&format!("fleet{i}")))
        .collect();
    common::kafka::commit_many(&groups, &[(&topic, 0, 4), (&topic, 1, 7)]).await;
    let triggers: Vec<KafkaTrigger> = groups
        .iter()
        .map(|g| KafkaTrigger {
            allow_idle_consumers: true,
            ..trigger(g, Some(&topic))
        })
        .collect();
    let scaler = KafkaScaler::connect(&triggers[0]).unwrap();
    let warm_up = scaler.poll(&triggers).await;
    assert!(
        warm_up
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.value == 9.0)),
        "{:?}",
        &warm_up[..3]
    );
    let (readings, requests) = requests_of_one_tick(&scaler, &triggers).await;
    assert!(
        readings
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.value == 9.0))
    );
    let wire: HashMap<&str, i64> = requests
        .iter()
        .filter(|(api, _)| !api.contains("lag reader"))
        .map(|(api, n)| (api.as_str(), *n))
        .collect();
    assert_eq!(
        wire,
        HashMap::from([("OffsetFetch", 1), ("ListOffsets", 1)]),
        "requests of a tick for 200 groups"
    );
    assert_eq!(
        scaler.open_connections(),
        2,
        "two connections to the one broker (group reads, partition reads), whatever the groups"
    );
    delete_topic(&topic).await;
}

/// Issues 14 and 15: a group the cluster does not know reads as a new group (by its reset
/// policy) in the same batched OffsetFetch as existing groups, which keep their values.
#[tokio::test]
async fn a_new_group_among_existing_groups_reads_by_its_reset_policy() {
    let topic = create_topic(2).await;
    produce(&topic, &[5, 5], Duration::ZERO).await;
    let existing: Vec<String> = (0..3).map(|_| common::unique_name("present")).collect();
    common::kafka::commit_many(&existing, &[(&topic, 0, 1), (&topic, 1, 2)]).await;
    let missing = common::unique_name("never-existed");
    let mut triggers: Vec<KafkaTrigger> =
        existing.iter().map(|g| trigger(g, Some(&topic))).collect();
    triggers.insert(1, trigger(&missing, Some(&topic)));
    let scaler = KafkaScaler::connect(&triggers[0]).unwrap();
    let readings = scaler.poll(&triggers).await;
    let values: Vec<Option<f64>> = readings
        .iter()
        .map(|r| r.as_ref().ok().map(|r| r.value))
        .collect();
    assert_eq!(
        values,
        [Some(7.0), Some(2.0), Some(7.0), Some(7.0)],
        "{readings:?}"
    );
    delete_topic(&topic).await;
}

/// Issue 14: with many groups batched per coordinator, a deleted topic fails only the groups
/// counting it, on the first tick after the deletion, at the cost of one Metadata request.
#[tokio::test]
async fn a_deleted_topic_fails_only_its_groups_among_many_healthy_ones() {
    let kept = create_topic(2).await;
    let gone = create_topic(2).await;
    produce(&kept, &[6, 6], Duration::ZERO).await;
    produce(&gone, &[6, 6], Duration::ZERO).await;
    let kept_groups: Vec<String> = (0..20).map(|_| common::unique_name("kept")).collect();
    let gone_groups: Vec<String> = (0..20).map(|_| common::unique_name("gone")).collect();
    common::kafka::commit_many(&kept_groups, &[(&kept, 0, 1), (&kept, 1, 1)]).await;
    common::kafka::commit_many(&gone_groups, &[(&gone, 0, 2), (&gone, 1, 2)]).await;
    let triggers: Vec<KafkaTrigger> = kept_groups
        .iter()
        .map(|g| trigger(g, Some(&kept)))
        .chain(gone_groups.iter().map(|g| trigger(g, Some(&gone))))
        .map(|t| KafkaTrigger {
            allow_idle_consumers: true,
            ..t
        })
        .collect();
    let scaler = KafkaScaler::connect(&triggers[0]).unwrap();
    let before = scaler.poll(&triggers).await;
    assert!(
        before.iter().all(Result::is_ok),
        "{:?}",
        before.iter().find(|r| r.is_err())
    );
    delete_topic(&gone).await;
    wait_until_gone(&gone).await;
    let (after, requests) = requests_of_one_tick(&scaler, &triggers).await;
    for (i, reading) in after.iter().enumerate() {
        if i < 20 {
            assert_eq!(
                reading.as_ref().map(|r| r.value).ok(),
                Some(10.0),
                "kept group {i}: {reading:?}"
            );
        } else {
            assert!(
                matches!(reading, Err(ScalerError::NotFound { what, .. }) if what.contains(&gone)),
                "group {i} of the deleted topic: {reading:?}"
            );
        }
    }
    let count = |api: &str| requests.get(api).copied().unwrap_or(0);
    assert!(
        count("Metadata") <= 1 && count("ListOffsets") <= 2 && count("OffsetFetch") <= 1,
        "requests of the deletion tick: {requests:?}"
    );
    delete_topic(&kept).await;
}

/// Issue 15: the first deploy of a consumer with `minReplicaCount: 0`: its group has never
/// existed, and the topic already has records. Under both policies the trigger is active.
#[tokio::test]
async fn a_brand_new_group_on_a_topic_with_records_reads_by_its_reset_policy() {
    let topic = create_topic(3).await;
    produce(&topic, &[5, 7, 9], Duration::ZERO).await;
    let group = common::unique_name("brand-new");
    let latest = trigger(&group, Some(&topic));
    let earliest = KafkaTrigger {
        offset_reset_policy: OffsetResetPolicy::Earliest,
        allow_idle_consumers: true,
        ..trigger(&group, Some(&topic))
    };
    let to_zero = KafkaTrigger {
        scale_to_zero_on_invalid_offset: true,
        ..trigger(&group, Some(&topic))
    };
    let scaler = KafkaScaler::connect(&latest).unwrap();
    let readings = scaler.poll(&[latest, earliest, to_zero]).await;
    let figures: Vec<(f64, bool)> = readings
        .iter()
        .map(|r| {
            let r = r.as_ref().expect("a new group is not an error");
            (r.value, r.active)
        })
        .collect();
    assert_eq!(figures, [(3.0, true), (21.0, true), (0.0, false)]);
    delete_topic(&topic).await;
}

/// Offsets of every partition of `topic` at `time` (-1 latest, -2 earliest), as Kafka's own
/// GetOffsetShell reports them.
async fn get_offset_shell(topic: &str, time: &str) -> HashMap<i32, i64> {
    let classpath = format!("{}/*", common::endpoint("SPILLWAY_KAFKA_CLASSPATH"));
    let output = tokio::process::Command::new("java")
        .args([
            "-Xmx256m",
            "-cp",
            &classpath,
            "org.apache.kafka.tools.GetOffsetShell",
        ])
        .args([
            "--bootstrap-server",
            &bootstrap(),
            "--topic",
            topic,
            "--time",
            time,
        ])
        .output()
        .await
        .expect("run GetOffsetShell");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "GetOffsetShell failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| {
            let mut fields = line.rsplitn(3, ':');
            let offset = fields.next()?.parse().ok()?;
            let partition = fields.next()?.parse().ok()?;
            (fields.next()? == topic).then_some((partition, offset))
        })
        .collect()
}

/// Issue 15: after DeleteRecords moved the log start, `earliest` counts the records a new
/// consumer would read, end - log start, exactly as Kafka's GetOffsetShell reports the two;
/// a commit below the log start is invalid and counts the same way.
#[tokio::test]
async fn earliest_after_delete_records_counts_end_minus_log_start_as_get_offset_shell_reports() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    let topic = create_topic(2).await;
    produce(&topic, &[141, 60], Duration::ZERO).await;
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin");
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(&topic, 0, Offset::Offset(50))
        .unwrap();
    before
        .add_partition_offset(&topic, 1, Offset::Offset(10))
        .unwrap();
    let deleted = admin
        .delete_records(&before, &AdminOptions::new())
        .await
        .expect("DeleteRecords");
    assert!(
        deleted.elements().iter().all(|e| e.error().is_ok()),
        "{deleted:?}"
    );

    let starts = get_offset_shell(&topic, "-2").await;
    let ends = get_offset_shell(&topic, "-1").await;
    assert_eq!(
        starts,
        HashMap::from([(0, 50), (1, 10)]),
        "the tool sees the moved log start"
    );
    let expected: i64 = ends.iter().map(|(p, end)| end - starts[p]).sum();
    assert_eq!(expected, 91 + 50);

    let new_group = common::unique_name("earliest-new");
    let behind_retention = common::unique_name("earliest-behind");
    // Partition 0 committed below its log start (invalid), partition 1 within the log.
    commit(&behind_retention, &[(&topic, 0, 20), (&topic, 1, 30)]);
    let earliest = |group: &str| KafkaTrigger {
        offset_reset_policy: OffsetResetPolicy::Earliest,
        allow_idle_consumers: true,
        ..trigger(group, Some(&topic))
    };
    let triggers = [earliest(&new_group), earliest(&behind_retention)];
    let scaler = KafkaScaler::connect(&triggers[0]).unwrap();
    let readings = scaler.poll(&triggers).await;
    let values: Vec<f64> = readings
        .iter()
        .map(|r| r.as_ref().expect("earliest").value)
        .collect();
    assert_eq!(values, [expected as f64, (91 + 30) as f64]);
    delete_topic(&topic).await;
}

/// Issue 15: a topic deleted and recreated under the same name while the group's commits
/// point beyond its new end: the commits are invalid and count by the reset policy (KEDA reads
/// 0 until the new end passes the old commit).
#[tokio::test]
async fn a_recreated_topic_with_old_commits_counts_by_the_reset_policy() {
    let topic = create_topic(2).await;
    produce(&topic, &[20, 20], Duration::ZERO).await;
    let group = common::unique_name("recreated");
    commit(&group, &[(&topic, 0, 15), (&topic, 1, 15)]);
    delete_topic(&topic).await;
    wait_until_gone(&topic).await;
    common::kafka::create_topic_named(&topic, 2).await;
    produce(&topic, &[4, 4], Duration::ZERO).await;
    // The consumer's old position, committed again as a consumer that has not noticed the
    // recreation does (the coordinator may have dropped the commits with the old topic).
    commit(&group, &[(&topic, 0, 15), (&topic, 1, 15)]);
    let latest = trigger(&group, Some(&topic));
    let earliest = KafkaTrigger {
        offset_reset_policy: OffsetResetPolicy::Earliest,
        allow_idle_consumers: true,
        ..trigger(&group, Some(&topic))
    };
    let scaler = KafkaScaler::connect(&latest).unwrap();
    let readings = scaler.poll(&[latest, earliest]).await;
    let figures: Vec<(f64, bool)> = readings
        .iter()
        .map(|r| r.as_ref().map(|r| (r.value, r.active)).unwrap())
        .collect();
    assert_eq!(figures, [(2.0, true), (8.0, true)]);
    delete_topic(&topic).await;
}
