//! Kafka at fleet scale (issue 14): the release `spillway serve`, as a user runs it, with N
//! scaled objects on one cluster, each with its own consumer group (committed offsets on one
//! topic of 4 partitions), `pollingInterval: 5`. For N = 10 / 100 / 1,000 / 5,000 / 10,000 it
//! prints the process's RSS, threads and open fds (sockets among them) from /proc, the poll
//! duration p50/p99 from `spillway_poll_duration_seconds{broker="kafka"}`, Kafka requests per
//! tick by API from `spillway_kafka_requests_total`, whether every trigger was polled within
//! its interval (`spillway_trigger_polls_total`), and whether every value equals the lag
//! Kafka's own offsets give.
//!
//! `cargo bench --bench kafka_fleet` (services up; `KAFKA_FLEET_SIZES=10,100` to pick sizes).
//! Nothing is asserted.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/histogram.rs"]
mod histogram;

use std::collections::HashMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const RECORDS_PER_PARTITION: i64 = 100;
const POLLING_INTERVAL: Duration = Duration::from_secs(5);
/// How long each row measures, after every trigger has a value.
const WINDOW: Duration = Duration::from_secs(60);

/// Committed offset of partition p in every group: 10 + p.
fn committed(partition: i32) -> i64 {
    10 + i64::from(partition)
}

struct Scrape {
    text: String,
}

impl Scrape {
    async fn take(url: &str) -> Self {
        Self {
            text: reqwest::get(url).await.unwrap().text().await.unwrap(),
        }
    }

    fn samples<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.text
            .lines()
            .filter(move |l| l.starts_with(prefix))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series, value.parse().ok()?))
            })
    }

    /// Kafka trigger values (not the lag-seconds extras).
    fn lag_values(&self) -> Vec<f64> {
        self.samples("spillway_trigger_value{")
            .filter(|(s, _)| s.contains("broker=\"kafka\"") && !s.contains("lag-seconds"))
            .map(|(_, v)| v)
            .collect()
    }

    fn polls_by_object(&self) -> HashMap<String, f64> {
        self.samples("spillway_trigger_polls_total{")
            .filter_map(|(s, v)| {
                let object = s.split("scaled_object=\"").nth(1)?.split('"').next()?;
                Some((object.to_owned(), v))
            })
            .collect()
    }

    fn requests_by_api(&self) -> HashMap<String, f64> {
        self.samples("spillway_kafka_requests_total{")
            .filter_map(|(s, v)| {
                let api = s.split("api=\"").nth(1)?.split('"').next()?;
                Some((api.to_owned(), v))
            })
            .collect()
    }

    /// Cumulative bucket counts of the Kafka poll duration histogram, by upper bound.
    fn poll_buckets(&self) -> Vec<(f64, f64)> {
        let mut buckets: Vec<(f64, f64)> = self
            .samples("spillway_poll_duration_seconds_bucket{")
            .filter(|(s, _)| s.contains("broker=\"kafka\""))
            .filter_map(|(s, v)| {
                let le = s.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// RSS (MB), threads, open fds and sockets of `pid`, from /proc.
fn process_figures(pid: u32) -> (f64, u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut fds = 0;
    let mut sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    (
        field("VmRSS:") as f64 / 1024.0,
        field("Threads:"),
        fds,
        sockets,
    )
}

/// Starts `spillway serve --no-auth --config <path>` and waits for `/healthz`; start-up with
/// thousands of objects takes minutes (the registry rebuilds its served set per object).
async fn start(path: &std::path::Path, port: u16) -> common::serve::Server {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["serve", "--no-auth", "--config"])
        .arg(path)
        .env(common::ALLOW_LOOPBACK.0, common::ALLOW_LOOPBACK.1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start spillway serve");
    let server = common::serve::Server(child);
    common::eventually(
        "spillway serve to answer /healthz",
        Duration::from_secs(900),
        || async {
            let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()?;
            (response.text().await.ok()? == "ok").then_some(())
        },
    )
    .await;
    server
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("KAFKA_FLEET_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("size"))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 100, 1_000, 5_000, 10_000]);
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let topic = common::kafka::create_topic(PARTITIONS).await;
    common::kafka::produce(
        &topic,
        &vec![RECORDS_PER_PARTITION; PARTITIONS as usize],
        Duration::ZERO,
    )
    .await;
    let prefix = common::unique_name("fleet");
    let groups: Vec<String> = (0..largest).map(|i| format!("{prefix}-{i}")).collect();
    let offsets: Vec<(&str, i32, i64)> = (0..PARTITIONS)
        .map(|p| (topic.as_str(), p, committed(p)))
        .collect();
    let started = Instant::now();
    common::kafka::commit_many(&groups, &offsets).await;
    println!(
        "committed offsets for {largest} groups in {:.1} s (OffsetCommit through the wire client)",
        started.elapsed().as_secs_f64()
    );
    let expected: f64 = (0..PARTITIONS)
        .map(|p| (RECORDS_PER_PARTITION - committed(p)) as f64)
        .sum();
    let bootstrap = common::kafka::bootstrap();

    println!(
        "one broker, one topic of {PARTITIONS} partitions, a consumer group per scaled object, pollingInterval {} s, window {} s; expected lag {expected}",
        POLLING_INTERVAL.as_secs(),
        WINDOW.as_secs()
    );
    println!(
        "| scaled objects | RSS | threads | open fds (sockets) | poll p50 | poll p99 | polled within interval | Kafka requests per tick | values right | start-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let (port, metrics_port) = (common::free_port(), common::free_port());
        let mut config = format!(
            "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\npollingInterval: {}\nscaledObjects:\n",
            POLLING_INTERVAL.as_secs()
        );
        for (i, group) in groups[..n].iter().enumerate() {
            config.push_str(&format!(
                "  - name: f-{i}\n    triggers:\n      - kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 1000}}\n"
            ));
        }
        let path =
            std::env::temp_dir().join(format!("{}.yaml", common::unique_name("kafka-fleet")));
        std::fs::write(&path, config).unwrap();
        let launched = Instant::now();
        let server = start(&path, port).await;
        let startup = launched.elapsed();
        let pid = server.0.id();
        // Two intervals of polling before any scrape: the RSS of polling alone (a scrape of
        // thousands of triggers' series raises the allocator's high-water mark).
        tokio::time::sleep(POLLING_INTERVAL * 2).await;
        let (rss_unscraped, ..) = process_figures(pid);
        let url = format!("http://127.0.0.1:{metrics_port}/metrics");
        let ready = Instant::now();
        loop {
            let scrape = Scrape::take(&url).await;
            if scrape.lag_values().len() == n {
                break;
            }
            assert!(
                ready.elapsed() < Duration::from_secs(300),
                "{n} objects: only {} values after 300 s",
                scrape.lag_values().len()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // One more interval so every trigger is in its steady schedule.
        tokio::time::sleep(POLLING_INTERVAL).await;
        let before = Scrape::take(&url).await;
        tokio::time::sleep(WINDOW).await;
        let after = Scrape::take(&url).await;
        let (rss, threads, fds, sockets) = process_figures(pid);

        let ticks = WINDOW.as_secs_f64() / POLLING_INTERVAL.as_secs_f64();
        let polls_before = before.polls_by_object();
        let polls_after = after.polls_by_object();
        let fewest_polls = polls_after
            .iter()
            .map(|(object, n)| n - polls_before.get(object).copied().unwrap_or(0.0))
            .fold(f64::INFINITY, f64::min);
        // Within its interval: at least one poll per interval of the window, less one at the edge.
        let on_time = polls_after.len() == n && fewest_polls >= ticks - 1.0;
        let requests_before = before.requests_by_api();
        let mut requests: Vec<(String, f64)> = after
            .requests_by_api()
            .into_iter()
            .map(|(api, count)| {
                let per_tick = (count - requests_before.get(&api).copied().unwrap_or(0.0)) / ticks;
                (api, per_tick)
            })
            .filter(|(_, per_tick)| *per_tick > 0.0)
            .collect();
        requests.sort_by(|a, b| a.0.cmp(&b.0));
        let requests: Vec<String> = requests
            .iter()
            .map(|(api, per_tick)| format!("{api} {per_tick:.1}"))
            .collect();
        let values = after.lag_values();
        let right = values.iter().filter(|v| **v == expected).count();
        let (b, a) = (before.poll_buckets(), after.poll_buckets());
        let ms = |q| {
            histogram::quantile(&b, &a, q)
                .map_or("-".to_owned(), |s| format!("{:.0} ms", s * 1000.0))
        };
        println!(
            "| {n} | {rss:.0} MB ({rss_unscraped:.0} MB before any scrape) | {threads} | {fds} ({sockets}) | {} | {} | {} (fewest polls {fewest_polls:.0} of {ticks:.0}) | {} | {} | {:.0} s |",
            ms(0.5),
            ms(0.99),
            if on_time { "all" } else { "NOT all" },
            requests.join(", "),
            if right == n {
                "all".to_owned()
            } else {
                format!("{right} of {n}")
            },
            startup.as_secs_f64(),
        );
        drop(server);
        let _ = std::fs::remove_file(&path);
    }
    common::kafka::delete_topic(&topic).await;
}
