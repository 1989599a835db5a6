//! The HTTP path: the management API's paginated queue listing, one per vhost per tick,
//! answering every trigger of that vhost (exact names and regexes alike).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use url::Url;

use super::BROKER;
use super::endpoint::{Endpoint, display_server};
use super::figures::{QueueFigures, aggregate, reading_from_figures};
use super::trigger::{MAX_TIMEOUT_MS, RabbitMqTrigger};
use crate::scalers::http::{HttpAuth, HttpClient};
use crate::scalers::{BacklogSample, Reading, ScalerError};

/// A listing longer than this is refused rather than read in part (a partial listing would read
/// as a too-small sum or a missing queue). The whole listing of a vhost is held while a round
/// answers its triggers, so this bounds memory too: 100 pages of up to 500 queues.
const MAX_PAGES: u32 = 100;

/// The listing's columns: everything any trigger needs, nothing more.
const LISTING_COLUMNS: &str = "name,messages,messages_ready,messages_unacknowledged,\
message_stats.publish,message_stats.publish_details.rate,\
message_stats.deliver_get,message_stats.deliver_get_details.rate";

/// One page of `GET /api/queues/<vhost>?pagination=true`.
#[derive(Debug, Deserialize)]
struct QueuePage {
    items: Vec<QueueItem>,
    #[serde(default)]
    page_count: u32,
}

/// One queue of the listing, restricted to [`LISTING_COLUMNS`].
#[derive(Debug, Deserialize)]
struct QueueItem {
    name: String,
    messages: Option<f64>,
    messages_ready: Option<f64>,
    messages_unacknowledged: Option<f64>,
    message_stats: Option<MessageStats>,
}

/// A queue's `message_stats`: RabbitMQ omits the whole object until the queue sees traffic
/// (or when statistics are off), and omits a counter that never moved since statistics began.
#[derive(Debug, Deserialize)]
struct MessageStats {
    publish: Option<f64>,
    publish_details: Option<RateDetails>,
    deliver_get: Option<f64>,
    deliver_get_details: Option<RateDetails>,
}

impl MessageStats {
    /// One rate from its counter and details: the details' rate; 0 when the counter is absent
    /// too (nothing happened since statistics began); `None` when the counter is there without
    /// a rate (the management plugin counts but collects no rates).
    fn rate(count: Option<f64>, details: Option<&RateDetails>) -> Option<f64> {
        match (details, count) {
            (Some(details), _) => Some(details.rate),
            (None, Some(_)) => None,
            (None, None) => Some(0.0),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RateDetails {
    rate: f64,
}

impl QueueItem {
    /// The queue's figures; an error when the counts are absent (the management plugin has not
    /// sampled a new queue yet) or not counts at all.
    fn figures(&self) -> Result<QueueFigures, String> {
        let (Some(messages), Some(messages_ready)) = (self.messages, self.messages_ready) else {
            return Err(format!(
                "queue {:?} has no message counts yet (the management plugin samples a new \
                 queue after a few seconds)",
                self.name
            ));
        };
        // No message_stats at all: no rate is known, none is read as 0.
        let stats = self.message_stats.as_ref();
        let figures = QueueFigures {
            messages,
            messages_ready,
            messages_unacknowledged: self
                .messages_unacknowledged
                .unwrap_or(messages - messages_ready),
            publish_rate: stats
                .and_then(|s| MessageStats::rate(s.publish, s.publish_details.as_ref())),
            deliver_rate: stats
                .and_then(|s| MessageStats::rate(s.deliver_get, s.deliver_get_details.as_ref())),
        };
        let all = [
            Some(figures.messages),
            Some(figures.messages_ready),
            Some(figures.messages_unacknowledged),
            figures.publish_rate,
            figures.deliver_rate,
        ];
        if all.iter().flatten().all(|v| v.is_finite() && *v >= 0.0) {
            Ok(figures)
        } else {
            Err(format!(
                "queue {:?} reports a negative or non-finite figure",
                self.name
            ))
        }
    }
}

/// How a trigger picks queues out of a listing.
enum Selector {
    Name(String),
    Regex(Regex),
}

/// Answers one HTTP trigger from its vhost's listing.
fn answer_from_listing(
    trigger: &RabbitMqTrigger,
    selector: &Selector,
    listing: &HashMap<String, QueueItem>,
    vhost: &str,
    target: String,
) -> Result<Reading, ScalerError> {
    let mut matched: Vec<&QueueItem> = match selector {
        Selector::Name(name) => listing.get(name).into_iter().collect(),
        Selector::Regex(regex) => listing
            .values()
            .filter(|queue| regex.is_match(&queue.name))
            .collect(),
    };
    // By name, so the backlog series come out in a stable order.
    matched.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let figures = matched
        .iter()
        .map(|queue| queue.figures())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| ScalerError::BadResponse {
            broker: BROKER,
            target: target.clone(),
            cause,
        })?;
    let what = match selector {
        Selector::Name(_) => "queue",
        Selector::Regex(_) => "any queue matching the regex",
    };
    let combined = aggregate(trigger.operation, &figures).ok_or_else(|| ScalerError::NotFound {
        broker: BROKER,
        target: target.clone(),
        what: what.into(),
    })?;
    let backlog = matched
        .iter()
        .zip(&figures)
        .map(|(queue, figures)| BacklogSample::RabbitMqQueue {
            vhost: vhost.to_owned(),
            queue: queue.name.clone(),
            messages: Some(figures.messages),
            messages_ready: figures.messages_ready,
            messages_unacknowledged: Some(figures.messages_unacknowledged),
            publish_rate: figures.publish_rate,
            deliver_rate: figures.deliver_rate,
        })
        .collect();
    let reading =
        reading_from_figures(trigger, &combined).map_err(|cause| ScalerError::BadResponse {
            broker: BROKER,
            target,
            cause,
        })?;
    Ok(reading.with_backlog(backlog))
}

/// Reads the management API of one server.
pub(super) struct HttpReader {
    client: HttpClient,
    auth: HttpAuth,
    /// Credential-free base URL the API lives under.
    server: Url,
}

/// The triggers of one vhost, answered by one listing.
struct VhostGroup {
    page_size: u32,
    timeout: Duration,
    members: Vec<(usize, Selector)>,
}

impl HttpReader {
    pub(super) fn new(endpoint: Endpoint, unsafe_ssl: bool) -> Result<Self, ScalerError> {
        Ok(Self {
            // Each request is bounded by its trigger's timeout; the client's own bound is the
            // ceiling any trigger may ask for.
            client: HttpClient::new(BROKER, Duration::from_millis(MAX_TIMEOUT_MS), unsafe_ssl)?,
            auth: endpoint.http_auth(),
            server: endpoint.server,
        })
    }

    pub(super) async fn poll(
        &self,
        triggers: &[RabbitMqTrigger],
    ) -> Vec<Result<Reading, ScalerError>> {
        let mut results: Vec<Option<Result<Reading, ScalerError>>> = vec![None; triggers.len()];
        let mut groups: BTreeMap<String, VhostGroup> = BTreeMap::new();
        for (index, trigger) in triggers.iter().enumerate() {
            let selector = trigger.checked_endpoint().and_then(|endpoint| {
                let selector = if trigger.use_regex {
                    Selector::Regex(trigger.queue_regex()?)
                } else {
                    Selector::Name(trigger.queue_name.clone())
                };
                Ok((endpoint.vhost, selector))
            });
            match selector {
                Ok((vhost, selector)) => {
                    let group = groups.entry(vhost).or_insert(VhostGroup {
                        page_size: 1,
                        timeout: Duration::ZERO,
                        members: Vec::new(),
                    });
                    group.page_size = group.page_size.max(trigger.page_size);
                    group.timeout = group.timeout.max(trigger.timeout_duration());
                    group.members.push((index, selector));
                }
                Err(err) => results[index] = Some(Err(err)),
            }
        }

        let listings = futures::future::join_all(
            groups
                .iter()
                .map(|(vhost, group)| self.list_queues(vhost, group.page_size, group.timeout)),
        )
        .await;

        for ((vhost, group), listing) in groups.iter().zip(listings) {
            for (index, selector) in &group.members {
                let trigger = &triggers[*index];
                let answer = match &listing {
                    Ok(queues) => answer_from_listing(
                        trigger,
                        selector,
                        queues,
                        vhost,
                        trigger.target(vhost, &self.server),
                    ),
                    Err(err) => Err(err.clone()),
                };
                results[*index] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ScalerError::BadResponse {
                        broker: BROKER,
                        target: display_server(&self.server),
                        cause: "trigger left unanswered".into(),
                    })
                })
            })
            .collect()
    }

    /// Every queue of `vhost`, by name, page after page; each request bounded by `timeout`.
    async fn list_queues(
        &self,
        vhost: &str,
        page_size: u32,
        timeout: Duration,
    ) -> Result<HashMap<String, QueueItem>, ScalerError> {
        let target = format!("vhost {vhost:?} at {}", display_server(&self.server));
        let mut queues = HashMap::new();
        let mut page = 1;
        // Never more pages than the bound, whatever page_count says (it may change between pages).
        while page <= MAX_PAGES {
            let url = self.listing_url(vhost, page, page_size);
            let request = self
                .client
                .get_json::<QueuePage>(&url, &self.auth, &[], &target);
            let body = match tokio::time::timeout(timeout, request).await {
                Ok(Ok(body)) => body,
                Ok(Err(ScalerError::NotFound { .. })) => {
                    return Err(ScalerError::NotFound {
                        broker: BROKER,
                        target,
                        what: "vhost".into(),
                    });
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    return Err(ScalerError::Timeout {
                        broker: BROKER,
                        target,
                        after: timeout,
                    });
                }
            };
            if body.page_count > MAX_PAGES {
                // A partial listing would read as a too-small sum or a missing queue.
                return Err(ScalerError::BadResponse {
                    broker: BROKER,
                    target,
                    cause: format!(
                        "the listing has {} pages of {page_size}, more than the {MAX_PAGES} \
                         spillway reads; raise pageSize",
                        body.page_count
                    ),
                });
            }
            if body.items.len() > page_size as usize {
                // The server ignored the page size: the page count means nothing either.
                return Err(ScalerError::BadResponse {
                    broker: BROKER,
                    target,
                    cause: format!(
                        "page {page} has {} queues, more than the {page_size} asked for",
                        body.items.len()
                    ),
                });
            }
            queues.extend(body.items.into_iter().map(|q| (q.name.clone(), q)));
            if page >= body.page_count {
                tracing::debug!(
                    broker = BROKER,
                    server = %display_server(&self.server),
                    vhost,
                    pages = page,
                    queues = queues.len(),
                    "listed queues"
                );
                return Ok(queues);
            }
            page += 1;
        }
        Err(ScalerError::BadResponse {
            broker: BROKER,
            target,
            cause: format!("the listing goes on past {MAX_PAGES} pages, more than spillway reads"),
        })
    }

    fn listing_url(&self, vhost: &str, page: u32, page_size: u32) -> Url {
        let mut url = self.server.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["api", "queues", vhost]);
        }
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("page_size", &page_size.to_string())
            .append_pair("pagination", "true")
            // A fixed order keeps pages from overlapping while queues come and go.
            .append_pair("sort", "name")
            .append_pair("columns", LISTING_COLUMNS);
        url
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_triggers::{trigger, with};
    use super::*;

    #[test]
    fn listing_url_encodes_the_vhost_and_asks_only_needed_columns() {
        let e = Endpoint::parse("http://rabbit:15672/mgmt/").unwrap();
        let reader = HttpReader {
            client: HttpClient::new(BROKER, Duration::from_secs(1), false).unwrap(),
            auth: HttpAuth::None,
            server: e.server,
        };
        let url = reader.listing_url("/", 2, 50);
        assert_eq!(url.path(), "/mgmt/api/queues/%2F");
        let query: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["page"], "2");
        assert_eq!(query["page_size"], "50");
        assert_eq!(query["pagination"], "true");
        assert!(query["columns"].contains("message_stats.publish_details.rate"));
        let url = reader.listing_url("a b/c", 1, 1);
        assert_eq!(url.path(), "/mgmt/api/queues/a%20b%2Fc");
    }

    #[test]
    fn listing_answers_names_and_regexes() {
        let page: QueuePage = serde_json::from_value(serde_json::json!({
            "items": [
                {"name": "jobs-a", "messages": 5, "messages_ready": 3, "messages_unacknowledged": 2,
                 "message_stats": {"publish_details": {"rate": 1.5}}},
                {"name": "Jobs-B", "messages": 7, "messages_ready": 7, "messages_unacknowledged": 0},
                {"name": "other", "messages": 100, "messages_ready": 100},
                // Counted, but the management plugin keeps no rates.
                {"name": "counted", "messages": 1, "messages_ready": 1,
                 "message_stats": {"publish": 4, "deliver_get": 3}},
                {"name": "fresh"},
            ],
            "page_count": 1,
        }))
        .unwrap();
        let listing: HashMap<String, QueueItem> = page
            .items
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect();
        let t = trigger("http://r/", "jobs-a");
        let answer = |t: &RabbitMqTrigger| {
            let selector = if t.use_regex {
                Selector::Regex(t.queue_regex().unwrap())
            } else {
                Selector::Name(t.queue_name.clone())
            };
            answer_from_listing(t, &selector, &listing, "/", "target".into())
        };

        assert_eq!(answer(&t).unwrap().value, 5.0);
        assert_eq!(
            answer(&t).unwrap().backlog.samples(),
            [BacklogSample::RabbitMqQueue {
                vhost: "/".into(),
                queue: "jobs-a".into(),
                messages: Some(5.0),
                messages_ready: 3.0,
                messages_unacknowledged: Some(2.0),
                publish_rate: Some(1.5),
                // Stats collected, nothing delivered yet: a rate of 0.
                deliver_rate: Some(0.0),
            }]
        );
        let regex = with(
            &t,
            serde_json::json!({"useRegex": true, "queueName": "^jobs-"}),
        );
        // Case-insensitive, like RabbitMQ's own regex filter: Jobs-B matches.
        assert_eq!(answer(&regex).unwrap().value, 12.0);
        // Each matched queue on its own, by name, whatever the operation combines.
        let queues: Vec<_> = answer(&regex)
            .unwrap()
            .backlog
            .samples()
            .iter()
            .map(|s| match s {
                BacklogSample::RabbitMqQueue {
                    queue, messages, ..
                } => (queue.clone(), *messages),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            queues,
            [("Jobs-B".into(), Some(7.0)), ("jobs-a".into(), Some(5.0))]
        );
        let max = with(&regex, serde_json::json!({"operation": "max"}));
        assert_eq!(answer(&max).unwrap().value, 7.0);
        let avg = with(&regex, serde_json::json!({"operation": "avg"}));
        assert_eq!(answer(&avg).unwrap().value, 6.0);

        let missing = with(&t, serde_json::json!({"queueName": "jobs"}));
        assert!(matches!(
            answer(&missing),
            Err(ScalerError::NotFound { .. })
        ));
        let no_match = with(&regex, serde_json::json!({"queueName": "^nothing$"}));
        assert!(matches!(
            answer(&no_match),
            Err(ScalerError::NotFound { .. })
        ));
        let fresh = with(&t, serde_json::json!({"queueName": "fresh"}));
        assert!(matches!(
            answer(&fresh),
            Err(ScalerError::BadResponse { .. })
        ));

        let rate = with(&t, serde_json::json!({"mode": "MessageRate"}));
        assert_eq!(answer(&rate).unwrap().value, 1.5);
        for queue in ["Jobs-B", "counted"] {
            let no_rate = with(&rate, serde_json::json!({"queueName": queue}));
            assert!(
                matches!(
                    answer(&no_rate),
                    Err(ScalerError::BadResponse { cause, .. }) if cause.contains("no publish rate")
                ),
                "{queue}"
            );
        }
        let counted = answer(&with(&t, serde_json::json!({"queueName": "counted"}))).unwrap();
        assert!(counted.extra.is_empty(), "no rates, no rate metrics");
    }
}
