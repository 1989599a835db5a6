//! JetStream test fixtures on the harness's nats-server: a stream with a backlog and durable
//! pull consumers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

/// A stream with `published` messages and durable pull consumers named `consumers`.
pub struct TestStream {
    pub js: jetstream::Context,
    pub name: String,
}

impl TestStream {
    pub async fn create(
        prefix: &str,
        consumers: &[&str],
        published: usize,
    ) -> (Self, Vec<consumer::PullConsumer>) {
        let client = async_nats::connect(super::endpoint("SPILLWAY_NATS_URL"))
            .await
            .expect("NATS connect");
        let js = jetstream::new(client);
        let name = super::unique_name(prefix);
        let subject = format!("{name}.jobs");
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        };
        // On a busy machine JetStream's API can miss the client's request timeout; creating a
        // stream again with the same config is idempotent, so a few tries are safe.
        let mut tries = 0;
        let stream = loop {
            tries += 1;
            match js.create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(err) if tries < 3 => {
                    eprintln!("create stream {name}: {err}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => panic!("create stream {name}: {err}"),
            }
        };
        let mut pulls = Vec::new();
        for consumer_name in consumers {
            pulls.push(
                stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some((*consumer_name).into()),
                        // Long enough that fetched, unacknowledged messages stay ack-pending for a test.
                        ack_wait: Duration::from_secs(300),
                        ..Default::default()
                    })
                    .await
                    .expect("create consumer"),
            );
        }
        for i in 0..published {
            js.publish(subject.clone(), format!("job {i}").into())
                .await
                .expect("publish")
                .await
                .expect("publish ack");
        }
        (Self { js, name }, pulls)
    }

    pub async fn delete(self) {
        self.js
            .delete_stream(&self.name)
            .await
            .expect("delete stream");
    }
}
