//! Metric values from the cache, shared by the external and the custom metrics APIs: which
//! triggers a metric name and a label selector pick, their values as quantities, and the
//! 404/503 rules (a trigger without a current reading is a 503, never a zero).
//!
//! A trigger not polled since start is a cold miss: the request asks the poller for that one
//! poll (asks for the same trigger are coalesced into one poll) and waits for it, bounded by
//! [`FIRST_POLL_TIMEOUT`], so an HPA never waits on a broker for long.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use futures::future::join_all;

use super::AppState;
use super::selector::Selector;
use super::status::Status;
use crate::cache::{MetricCache, PollRequests, TriggerId, TriggerState};
use crate::composite::{COMPOSITE_METRIC, Outcome};
use crate::names;
use crate::quantity::format_quantity;
use crate::registry::{CompositeSource, MetricSource, SCALED_OBJECT_LABEL};

/// How long a request waits for the first poll of a trigger not polled since start before it
/// answers 503. Below the aggregator's and the HPA client's timeouts, so the HPA gets our
/// Status rather than a timeout of its own.
pub const FIRST_POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// One value of a metric, ready for either API's item type.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// The trigger it comes from.
    pub id: TriggerId,
    /// The labels the selector was matched against.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, UTC, whole seconds: when the broker was read.
    pub timestamp: String,
    /// A canonical quantity string.
    pub value: String,
}

/// Why a lookup has no values.
#[derive(Debug, Clone, PartialEq)]
pub enum Miss {
    /// No trigger serves this metric name here; each API words its own 404.
    Unknown,
    /// Triggers serve the name, but the label selector picks none of them (a 404 too: an
    /// empty list is an error to the HPA anyway, and this one says why).
    NoneSelected,
    /// A selected trigger has no current value (503), or a value that cannot be served (500).
    Failed(Status),
}

/// Which value of a trigger a metric name asks for.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    Main,
    Extra(&'a str),
}

/// A trigger the name and selector picked.
struct Selected<'a> {
    source: &'a MetricSource,
    part: Part<'a>,
    labels: BTreeMap<String, String>,
}

/// The labels every value of `id` carries.
pub fn metric_labels(id: &TriggerId) -> BTreeMap<String, String> {
    object_labels(&id.scaled_object)
}

/// A value's timestamp as both APIs write it: RFC 3339, UTC, whole seconds.
fn rfc3339(at: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The labels every value of the scaled object `name` carries.
fn object_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SCALED_OBJECT_LABEL.to_owned(), name.to_owned())])
}

/// The longest query whose parsed selector is kept (see [`selector_param`]).
const REMEMBERED_QUERY_BYTES: usize = 512;
/// How many parsed selectors each worker thread keeps; all are forgotten when it is full.
const REMEMBERED_SELECTORS: usize = 4096;

/// Parsed selectors of one query parameter, by the whole query they came from.
type SelectorsByQuery = HashMap<Box<str>, Arc<Selector>>;

thread_local! {
    /// Parsed selectors by parameter and query, per worker thread (no lock): an HPA sends the
    /// same query on every sync, and parsing it was a good part of an answer's cost.
    static PARSED_SELECTORS: RefCell<HashMap<&'static str, SelectorsByQuery>> =
        RefCell::new(HashMap::new());
}

/// The query parameter `name` (`labelSelector`, `metricLabelSelector`) parsed as a label
/// selector; absent means everything, malformed is a 400. Selectors parsed from short queries
/// are remembered (bounded in count and size), so a repeated query is parsed once.
pub fn selector_param(query: Option<&str>, name: &'static str) -> Result<Arc<Selector>, Status> {
    let query = query.unwrap_or("");
    let remembered = query.len() <= REMEMBERED_QUERY_BYTES;
    if remembered
        && let Some(selector) = PARSED_SELECTORS.with_borrow(|parsed| {
            parsed
                .get(name)
                .and_then(|by_query| by_query.get(query))
                .cloned()
        })
    {
        return Ok(selector);
    }
    let text = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let selector = Arc::new(
        Selector::parse(&text).map_err(|err| Status::bad_request(format!("{name}: {err}")))?,
    );
    if remembered {
        PARSED_SELECTORS.with_borrow_mut(|parsed| {
            let by_query = parsed.entry(name).or_default();
            if by_query.len() >= REMEMBERED_SELECTORS {
                by_query.clear();
            }
            by_query.insert(query.into(), Arc::clone(&selector));
        });
    }
    Ok(selector)
}

/// A path whose segments do not decode (bad percent-encoding, not UTF-8) is a 400 Status,
/// not axum's plain-text rejection.
pub fn bad_path(rejection: PathRejection) -> Status {
    Status::bad_request(format!("invalid request path: {}", rejection.body_text()))
}

/// A 400 unless `namespace` is a valid namespace name.
pub fn check_namespace(namespace: &str) -> Result<(), Status> {
    names::check_dns1123_label(namespace)
        .map_err(|m| Status::bad_request(format!("invalid namespace in the path: {m}")))
}

/// A 400 unless `metric` can be a metric name (the `resource` of the request path).
pub fn check_metric_name(metric: &str) -> Result<(), Status> {
    names::check_path_segment(metric)
        .map_err(|m| Status::bad_request(format!("invalid metric name in the path: {m}")))
}

/// The values of `metric` among `sources` whose labels `selector` matches, first waiting
/// (bounded) for the first poll of any picked trigger not polled since start.
///
/// Errors: [`Miss::Unknown`] and [`Miss::NoneSelected`] for the caller's 404, or a 503 when
/// any picked trigger has no current reading, since a partial sum would under-scale.
pub async fn lookup(
    state: &AppState,
    sources: &[&MetricSource],
    metric: &str,
    selector: &Selector,
) -> Result<Vec<MetricValue>, Miss> {
    let selected = select(sources, &state.cache, metric, selector)?;
    let cold: Vec<(TriggerId, u64)> = selected
        .iter()
        .filter(|s| {
            !state
                .cache
                .has_for_spec(&s.source.id, s.source.spec_version)
        })
        .map(|s| (s.source.id.clone(), s.source.spec_version))
        .collect();
    if cold.is_empty() {
        return read(&selected, &state.cache, metric);
    }
    if let Some(requests) = &state.poll_requests {
        await_first_polls(&state.cache, requests, &cold, FIRST_POLL_TIMEOUT).await;
    }
    // Selected again: a first reading tells which extras a trigger really has.
    let selected = select(sources, &state.cache, metric, selector)?;
    read(&selected, &state.cache, metric)
}

/// The composite metric (`advanced.scalingModifiers`) of each object among `composites`
/// whose labels `selector` matches, first waiting (bounded) for the first poll of any of their
/// triggers not polled since start. A composite without a value is a 503, as a trigger is.
pub async fn lookup_composite(
    state: &AppState,
    composites: &[&CompositeSource],
    selector: &Selector,
) -> Result<Vec<MetricValue>, Miss> {
    if composites.is_empty() {
        return Err(Miss::Unknown);
    }
    let selected: Vec<(&CompositeSource, BTreeMap<String, String>)> = composites
        .iter()
        .map(|c| (*c, object_labels(&c.scaled_object)))
        .filter(|(_, labels)| selector.matches(labels))
        .collect();
    if selected.is_empty() {
        return Err(Miss::NoneSelected);
    }
    let cold: Vec<(TriggerId, u64)> = selected
        .iter()
        .flat_map(|(c, _)| c.triggers.iter())
        .filter(|(id, version)| !state.cache.has_for_spec(id, *version))
        .cloned()
        .collect();
    if !cold.is_empty() {
        if let Some(requests) = &state.poll_requests {
            await_first_polls(&state.cache, requests, &cold, FIRST_POLL_TIMEOUT).await;
        }
    }
    let mut values = Vec::with_capacity(selected.len());
    for (source, labels) in selected {
        let states: Vec<Option<TriggerState>> = source
            .triggers
            .iter()
            .map(|(id, version)| state.cache.get_for_spec(id, *version))
            .collect();
        let indexed: Vec<(usize, Option<&TriggerState>)> = source
            .triggers
            .iter()
            .zip(&states)
            .map(|((id, _), s)| (id.index, s.as_ref()))
            .collect();
        let object = format!("{}/{}", source.namespace, source.scaled_object);
        let (value, read_at) = match source.composite.evaluate(&indexed, source.fallback) {
            Outcome::Value { value, read_at } => (value, read_at),
            Outcome::Fallback {
                replicas,
                value,
                why,
            } => {
                tracing::debug!(%object, replicas, %why, "serving the composite fallback value");
                (value, std::time::SystemTime::now())
            }
            Outcome::Unavailable(why) => {
                return Err(Miss::Failed(Status::service_unavailable(format!(
                    "metric {COMPOSITE_METRIC} of {object}: {why}"
                ))));
            }
        };
        let quantity = format_quantity(value).map_err(|err| {
            Miss::Failed(Status::internal(format!(
                "metric {COMPOSITE_METRIC} of {object}: {err}"
            )))
        })?;
        values.push(MetricValue {
            id: source
                .triggers
                .first()
                .map(|(id, _)| id.clone())
                .unwrap_or_else(|| TriggerId {
                    namespace: source.namespace.clone(),
                    scaled_object: source.scaled_object.clone(),
                    index: 0,
                }),
            labels,
            timestamp: rfc3339(read_at),
            value: quantity.text,
        });
    }
    Ok(values)
}

/// Asks the poller for the first poll of each of `ids` (with their spec versions; coalesced
/// with every other ask for the same trigger) and waits until each has an outcome for its
/// spec in `cache`, or `timeout` has passed.
pub async fn await_first_polls(
    cache: &MetricCache,
    requests: &PollRequests,
    ids: &[(TriggerId, u64)],
    timeout: Duration,
) {
    let waits = ids
        .iter()
        .filter(|(id, _)| requests.ask(id))
        .map(|(id, version)| {
            tracing::debug!(trigger = %id, "cold miss: waiting for the first poll");
            cache.first_outcome(id, *version, timeout)
        });
    join_all(waits).await;
}

/// The triggers among `sources` serving `metric` whose labels `selector` matches.
fn select<'a>(
    sources: &[&'a MetricSource],
    cache: &MetricCache,
    metric: &'a str,
    selector: &Selector,
) -> Result<Vec<Selected<'a>>, Miss> {
    // A main metric wins over an extra spelled the same (queue `jobs-eu` vs `jobs` + `-eu`).
    let main = sources.iter().any(|s| s.metric == metric);
    let mut known = false;
    let mut selected = Vec::new();
    for &source in sources {
        let part = if source.metric == metric {
            Part::Main
        } else if main {
            continue;
        } else if let Some(suffix) = metric
            .strip_prefix(source.metric.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
        {
            // Extras are known from readings; before the first one, any suffix of a
            // not-yet-polled trigger may be real, so it waits like the main metric.
            let seen = cache
                .read_for_spec(&source.id, source.spec_version, |s| {
                    s.last_reading
                        .as_ref()
                        .map(|r| r.extra.iter().any(|(n, _)| *n == suffix))
                })
                .flatten();
            match seen {
                Some(true) | None => Part::Extra(suffix),
                Some(false) => continue,
            }
        } else {
            continue;
        };
        known = true;
        // Matched without building the labels: a metric name many objects share (a cron
        // window) is read with a selector picking one of them.
        let name = source.id.scaled_object.as_str();
        if selector.matches_label(|key| (key == SCALED_OBJECT_LABEL).then_some(name)) {
            selected.push(Selected {
                source,
                part,
                labels: metric_labels(&source.id),
            });
        }
    }
    match (known, selected.is_empty()) {
        (false, _) => Err(Miss::Unknown),
        (true, true) => Err(Miss::NoneSelected),
        (true, false) => Ok(selected),
    }
}

/// What a selected trigger's state gives: its value and when it was read, the fallback value
/// (with the error that called for it), or why there is none.
enum Found {
    Value(f64, std::time::SystemTime),
    Fallback(String),
    Unavailable(String),
}

/// The current value of each selected trigger; the first that has none fails the lookup.
fn read(
    selected: &[Selected<'_>],
    cache: &MetricCache,
    metric: &str,
) -> Result<Vec<MetricValue>, Miss> {
    let unavailable = |id: &TriggerId, why: String| {
        Miss::Failed(Status::service_unavailable(format!(
            "metric {metric} of {id}: {why}"
        )))
    };
    let mut values = Vec::with_capacity(selected.len());
    for Selected {
        source,
        part,
        labels,
    } in selected
    {
        let id = &source.id;
        // Read in place: a state can hold a large reading (a backlog's samples).
        let found = cache.read_for_spec(id, source.spec_version, |state| {
            match (state.current(), &state.error) {
                (Some(reading), _) => match part {
                    Part::Main => Found::Value(reading.value, reading.timestamp),
                    Part::Extra(suffix) => match reading.extra.iter().find(|(n, _)| n == suffix) {
                        Some((_, v)) => Found::Value(*v, reading.timestamp),
                        None => Found::Unavailable(format!("the latest reading has no {suffix}")),
                    },
                },
                // Failed often enough: the value that holds the HPA at fallback.replicas. Only
                // the main metric has one; extras stay unavailable.
                (None, Some(err))
                    if matches!(part, Part::Main)
                        && source
                            .fallback
                            .is_some_and(|f| f.applies(state.consecutive_failures)) =>
                {
                    Found::Fallback(err.to_string())
                }
                (None, Some(err)) => Found::Unavailable(format!(
                    "the latest poll failed ({} in a row): {err}",
                    state.consecutive_failures
                )),
                (None, None) => Found::Unavailable("no reading yet".into()),
            }
        });
        let (value, timestamp) = match found {
            None => {
                return Err(unavailable(
                    id,
                    "no reading yet (the first poll has not finished)".into(),
                ));
            }
            Some(Found::Unavailable(why)) => return Err(unavailable(id, why)),
            Some(Found::Fallback(error)) => {
                let fallback = source.fallback.expect("checked");
                tracing::debug!(trigger = %id, %metric, replicas = fallback.replicas, %error, "serving the fallback value");
                (fallback.value, std::time::SystemTime::now())
            }
            Some(Found::Value(value, timestamp)) => (value, timestamp),
        };
        let quantity = format_quantity(value).map_err(|err| {
            Miss::Failed(Status::internal(format!("metric {metric} of {id}: {err}")))
        })?;
        if quantity.capped {
            tracing::warn!(trigger = %id, %metric, value, served = %quantity.text, "value capped to what the HPA can read");
        }
        values.push(MetricValue {
            id: id.clone(),
            labels: labels.clone(),
            timestamp: rfc3339(timestamp),
            value: quantity.text,
        });
    }
    Ok(values)
}

/// Logs how a metric request was answered: a value at debug, a refusal at info (the HPA's own
/// condition says the same, but only in its namespace), malformed input at debug (whoever
/// sends it gets the reason; a scanner must not fill the log). `answer` is the item count or
/// the Status.
/// `path` is formatted only when the line is logged: at the default level, a served value
/// costs no formatting.
pub fn log_answer(path: std::fmt::Arguments<'_>, answer: Result<usize, &Status>) {
    match answer {
        Ok(items) => tracing::debug!(%path, items, "served metric"),
        Err(status) if status.code == axum::http::StatusCode::BAD_REQUEST => tracing::debug!(
            %path, code = status.code.as_u16(), message = %status.message, "malformed metric request"
        ),
        Err(status) => tracing::info!(
            %path, code = status.code.as_u16(), reason = status.reason,
            message = %status.message, "metric not served"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered(name: &'static str) -> usize {
        PARSED_SELECTORS.with_borrow(|parsed| parsed.get(name).map_or(0, HashMap::len))
    }

    #[test]
    fn a_repeated_selector_is_parsed_once_and_the_memory_is_bounded() {
        let query = Some("labelSelector=scaledobject.spillway.dev%2Fname%3Dorders");
        let first = selector_param(query, "labelSelector").unwrap();
        let again = selector_param(query, "labelSelector").unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second is the remembered one"
        );
        assert_eq!(first.requirements.len(), 1);
        // Per parameter: the same query names no metricLabelSelector.
        let other = selector_param(query, "metricLabelSelector").unwrap();
        assert!(other.requirements.is_empty());

        // Malformed stays a 400 every time, and is not remembered.
        let before = remembered("labelSelector");
        for _ in 0..2 {
            let refused =
                selector_param(Some("labelSelector=a%20in%20("), "labelSelector").unwrap_err();
            assert_eq!(refused.code, axum::http::StatusCode::BAD_REQUEST);
        }
        assert_eq!(remembered("labelSelector"), before);

        // A long query is parsed every time; a flood of distinct ones never grows the memory
        // past its bound.
        let values: Vec<String> = (0..REMEMBERED_QUERY_BYTES / 4)
            .map(|i| format!("v{i}"))
            .collect();
        let long = format!("labelSelector=a%20in%20({})", values.join(","));
        let long_first = selector_param(Some(&long), "labelSelector").unwrap();
        let long_again = selector_param(Some(&long), "labelSelector").unwrap();
        assert!(!Arc::ptr_eq(&long_first, &long_again));
        for i in 0..REMEMBERED_SELECTORS + 10 {
            selector_param(Some(&format!("labelSelector=n%3D{i}")), "labelSelector").unwrap();
            assert!(remembered("labelSelector") <= REMEMBERED_SELECTORS);
        }
    }
}
