//! `spillway loadgen`: produces to and consumes from Kafka, RabbitMQ or NATS JetStream at set
//! rates, so there is a real, changing backlog to watch (`make run`, demos, soak tests).
//!
//! The producer follows a [`Shape`] (constant, ramp, burst); the consumer drains at a constant
//! rate. When production outruns consumption the backlog grows, and shrinks otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;

/// How the production rate changes over time.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Shape {
    /// `rate` messages per second throughout.
    Constant,
    /// From 0 up to `rate` over `period` seconds, then again from 0.
    Ramp,
    /// `rate` for a fifth of each `period`, nothing for the rest.
    Burst,
}

/// The production and consumption plan.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub shape: Shape,
    /// Peak messages per second produced.
    pub rate: f64,
    /// Messages per second consumed (0: no consumer).
    pub consume_rate: f64,
    pub period: Duration,
    /// Stop after this long (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
}

impl Load {
    /// The production rate at `elapsed` into the run.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        let period = self.period.as_secs_f64().max(1.0);
        let phase = (elapsed.as_secs_f64() % period) / period;
        match self.shape {
            Shape::Constant => self.rate,
            Shape::Ramp => self.rate * phase,
            Shape::Burst if phase < 0.2 => self.rate,
            Shape::Burst => 0.0,
        }
    }
}

/// Where the messages go.
#[derive(Debug, Clone)]
pub enum Target {
    Kafka {
        bootstrap: String,
        topic: String,
        partitions: i32,
        group: String,
    },
    RabbitMq {
        url: String,
        queue: String,
    },
    Nats {
        url: String,
        stream: String,
        consumer: String,
    },
}

/// Counters the progress line reads.
#[derive(Default)]
struct Progress {
    produced: AtomicU64,
    consumed: AtomicU64,
}

/// Runs the load until the duration ends or Ctrl-C.
pub async fn run(target: Target, load: Load) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let deadline = load.duration.map(|d| started + d);
    let (producer, consumer) = match &target {
        Target::Kafka { .. } => kafka::start(&target, load, &progress).await?,
        Target::RabbitMq { .. } => rabbitmq::start(&target, load, &progress).await?,
        Target::Nats { .. } => nats::start(&target, load, &progress).await?,
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let produced = progress.produced.load(Ordering::Relaxed);
                let consumed = progress.consumed.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen {}: {:>6.0}s produced {produced:>8} consumed {consumed:>8} rate now {:>6.1}/s",
                    target.name(),
                    started.elapsed().as_secs_f64(),
                    load.rate_at(started.elapsed())
                );
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    producer.abort();
    if let Some(consumer) = consumer {
        consumer.abort();
    }
    Ok(())
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Kafka { topic, .. } => format!("kafka/{topic}"),
            Target::RabbitMq { queue, .. } => format!("rabbitmq/{queue}"),
            Target::Nats { stream, .. } => format!("nats/{stream}"),
        }
    }
}

type Tasks = (
    tokio::task::JoinHandle<()>,
    Option<tokio::task::JoinHandle<()>>,
);

/// Calls `send` at the shape's rate, in 100 ms slices, until aborted.
fn pace<F, Fut>(load: Load, progress: Arc<Progress>, mut send: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let started = Instant::now();
        let mut owed = 0.0;
        let mut slice = tokio::time::interval(Duration::from_millis(100));
        loop {
            slice.tick().await;
            owed += load.rate_at(started.elapsed()) / 10.0;
            while owed >= 1.0 {
                owed -= 1.0;
                let n = progress.produced.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = send(n).await {
                    tracing::warn!(error = %format!("{err:#}"), "loadgen: send failed");
                }
            }
        }
    })
}

/// Sleeps between consumed messages so consumption stays at `rate` per second.
async fn consume_pause(rate: f64) {
    tokio::time::sleep(Duration::from_secs_f64(1.0 / rate.max(0.001))).await;
}

mod kafka {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    pub async fn start(
        target: &Target,
        load: Load,
        progress: &Arc<Progress>,
    ) -> anyhow::Result<Tasks> {
        let Target::Kafka {
            bootstrap,
            topic,
            partitions,
            group,
        } = target.clone()
        else {
            unreachable!()
        };
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        let admin: AdminClient<DefaultClientContext> =
            config.create().context("Kafka admin client")?;
        let created = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await
            .with_context(|| format!("creating topic {topic} on {bootstrap}"))?;
        for result in created {
            match result {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
            }
        }
        let producer: FutureProducer = config
            .clone()
            .set("linger.ms", "5")
            .create()
            .context("Kafka producer")?;
        let send_topic = topic.clone();
        let producer_task = pace(load, Arc::clone(progress), move |n| {
            let producer = producer.clone();
            let topic = send_topic.clone();
            async move {
                let payload = format!("job {n}");
                let key = n.to_string();
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(err, _)| anyhow::anyhow!("produce: {err}"))?;
                Ok(())
            }
        });
        if load.consume_rate <= 0.0 {
            return Ok((producer_task, None));
        }
        let consumer: StreamConsumer = config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .context("Kafka consumer")?;
        consumer.subscribe(&[&topic]).context("subscribe")?;
        let progress = Arc::clone(progress);
        let consumer_task = tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(message) = stream.next().await {
                match message {
                    Ok(message) => {
                        // Commit each message: the lag spillway reads moves as work is done.
                        if let Err(err) = consumer.commit_message(&message, CommitMode::Async) {
                            tracing::warn!(error = %err, "loadgen: commit failed");
                        }
                        progress.consumed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => tracing::warn!(error = %err, "loadgen: consume failed"),
                }
                consume_pause(load.consume_rate).await;
            }
        });
        Ok((producer_task, Some(consumer_task)))
    }
}

mod rabbitmq {
    use super::*;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    pub async fn start(
        target: &Target,
        load: Load,
        progress: &Arc<Progress>,
    ) -> anyhow::Result<Tasks> {
        let Target::RabbitMq { url, queue } = target.clone() else {
            unreachable!()
        };
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .context("AMQP connect")?;
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring queue {queue}"))?;
        let publish_queue = queue.clone();
        let publisher = channel.clone();
        let producer_task = pace(load, Arc::clone(progress), move |n| {
            let channel = publisher.clone();
            let queue = publish_queue.clone();
            async move {
                channel
                    .basic_publish(
                        "",
                        &queue,
                        BasicPublishOptions::default(),
                        format!("job {n}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await?;
                Ok(())
            }
        });
        if load.consume_rate <= 0.0 {
            return Ok((producer_task, None));
        }
        let consumer_channel = connection.create_channel().await?;
        consumer_channel
            .basic_qos(1, BasicQosOptions::default())
            .await?;
        let mut consumer = consumer_channel
            .basic_consume(
                &queue,
                "spillway-loadgen",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let progress = Arc::clone(progress);
        let consumer_task = tokio::spawn(async move {
            // The connection lives as long as the consumer task.
            let _connection = connection;
            while let Some(delivery) = consumer.next().await {
                consume_pause(load.consume_rate).await;
                match delivery {
                    Ok(delivery) => {
                        if delivery.ack(BasicAckOptions::default()).await.is_ok() {
                            progress.consumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "loadgen: consume failed"),
                }
            }
        });
        Ok((producer_task, Some(consumer_task)))
    }
}

mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer, stream};

    pub async fn start(
        target: &Target,
        load: Load,
        progress: &Arc<Progress>,
    ) -> anyhow::Result<Tasks> {
        let Target::Nats {
            url,
            stream: stream_name,
            consumer: consumer_name,
        } = target.clone()
        else {
            unreachable!()
        };
        let client = async_nats::connect(&url)
            .await
            .with_context(|| format!("NATS connect {url}"))?;
        let js = jetstream::new(client);
        let subject = format!("{stream_name}.jobs");
        let stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {stream_name}"))?;
        let pull = stream
            .get_or_create_consumer(
                &consumer_name,
                consumer::pull::Config {
                    durable_name: Some(consumer_name.clone()),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating consumer {consumer_name}"))?;
        let publisher = js.clone();
        let producer_task = pace(load, Arc::clone(progress), move |n| {
            let js = publisher.clone();
            let subject = subject.clone();
            async move {
                js.publish(subject, format!("job {n}").into())
                    .await?
                    .await?;
                Ok(())
            }
        });
        if load.consume_rate <= 0.0 {
            return Ok((producer_task, None));
        }
        let progress = Arc::clone(progress);
        let consumer_task = tokio::spawn(async move {
            loop {
                match pull
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await
                {
                    Ok(mut batch) => {
                        while let Some(message) = batch.next().await {
                            if let Ok(message) = message
                                && message.ack().await.is_ok()
                            {
                                progress.consumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "loadgen: fetch failed"),
                }
                consume_pause(load.consume_rate).await;
            }
        });
        Ok((producer_task, Some(consumer_task)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_their_rate() {
        let load = |shape| Load {
            shape,
            rate: 100.0,
            consume_rate: 0.0,
            period: Duration::from_secs(10),
            duration: None,
        };
        let at = Duration::from_secs;
        assert_eq!(load(Shape::Constant).rate_at(at(7)), 100.0);
        assert_eq!(load(Shape::Ramp).rate_at(at(5)), 50.0);
        assert_eq!(load(Shape::Ramp).rate_at(at(15)), 50.0);
        assert_eq!(load(Shape::Burst).rate_at(at(1)), 100.0);
        assert_eq!(load(Shape::Burst).rate_at(at(3)), 0.0);
    }
}
