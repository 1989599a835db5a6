//! The registry: which scaled objects spillway serves right now, shared by whoever fills it
//! (a config file at start, or the controller as ScaledObjects come and go), the poller (what
//! to read, how often) and the metrics API (which metric names exist, which workloads they
//! describe, what to serve when a trigger keeps failing).
//!
//! Readers take an immutable [`Served`] snapshot (an `Arc` clone), so a request or a poller
//! round never holds the lock. A change edits the objects in place and drops the snapshot; the
//! next reader builds a new one. So registering N objects costs O(N log N) plus one build per
//! read in between, not a build per object (10,000 objects at start took minutes that way).
//!
//! The types that describe what is served ([`MetricSource`], [`ScaleTarget`], [`FallbackValue`])
//! live here, below the poller, the metrics API and the controller that all read them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::TriggerId;
use crate::composite::{Composite, FallbackRule};
use crate::config::{Config, ScaleTargetRef, ScaledObjectConfig};
use crate::scalers::{Trigger, TriggerParams, served_metric_name};

/// The metric label that ties a value to its scaled object; the HPA of that object selects
/// its own trigger with `scaledobject.spillway.dev/name=<name>`.
pub const SCALED_OBJECT_LABEL: &str = "scaledobject.spillway.dev/name";

/// One trigger's main metric, as served: `s<index>-<metric_name>` in the scaled object's namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSource {
    /// The trigger whose cache entry holds the value.
    pub id: TriggerId,
    /// The served name of the main metric; extras are `<metric>-<suffix>`.
    pub metric: String,
    /// What the main metric serves once the trigger has failed often enough (the scaled
    /// object's `fallback`); without it a failing trigger is a 503.
    pub fallback: Option<FallbackValue>,
    /// The version of the trigger's spec; a reading taken for another version is not this
    /// metric's (see [`Served::spec_versions`]).
    pub spec_version: u64,
}

/// The served metrics of `triggers`, in order (the names `spillway watch` shows).
pub fn catalog(triggers: &[(TriggerId, Trigger)]) -> Vec<MetricSource> {
    triggers
        .iter()
        .map(|(id, trigger)| MetricSource {
            id: id.clone(),
            metric: served_metric_name(id.index, trigger),
            fallback: None,
            spec_version: 0,
        })
        .collect()
}

/// The workload a scaled object scales: what a custom metrics path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTarget {
    pub namespace: String,
    pub scaled_object: String,
    pub target: ScaleTargetRef,
}

pub use crate::cache::past_failure_threshold;

/// What a trigger's metric serves once it has failed more than `failure_threshold` polls in a
/// row: a value that makes the HPA settle on `replicas` (`replicas * target`, since an HPA with
/// an AverageValue target asks for `ceil(value / target)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FallbackValue {
    pub failure_threshold: u32,
    pub replicas: u32,
    pub value: f64,
}

impl FallbackValue {
    /// Whether a trigger that failed `consecutive_failures` polls in a row serves this value.
    pub fn applies(&self, consecutive_failures: u32) -> bool {
        past_failure_threshold(consecutive_failures, self.failure_threshold)
    }
}

/// An object's composite metric (`advanced.scalingModifiers`), as served.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeSource {
    pub namespace: String,
    pub scaled_object: String,
    pub composite: Composite,
    /// Every trigger spillway polls for the object, with its spec version: all must have a
    /// current reading (see [`Composite::evaluate`]).
    pub triggers: Vec<(TriggerId, u64)>,
    pub fallback: Option<FallbackRule>,
}

/// One scaled object as the poller and the API need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub config: ScaledObjectConfig,
    /// The triggers with their ids, credentials resolved.
    pub triggers: Vec<(TriggerId, Trigger)>,
    pub polling_interval: Duration,
    /// `fallback.failureThreshold` and `fallback.replicas`, when set.
    pub fallback: Option<(u32, u32)>,
    /// The composite metric of `advanced.scalingModifiers`, when set.
    pub composite: Option<Composite>,
}

impl Registered {
    fn key(&self) -> (String, String) {
        (self.config.namespace.clone(), self.config.name.clone())
    }
}

/// An immutable view of everything registered.
#[derive(Debug, Default)]
pub struct Served {
    /// Every registered object, by (namespace, name).
    pub objects: BTreeMap<(String, String), Arc<Registered>>,
    /// Every trigger's served metric, with its fallback value.
    pub metrics: Arc<[MetricSource]>,
    /// The workloads the objects scale, for object metrics.
    pub targets: Arc<[ScaleTarget]>,
    /// The composite metrics of objects with `advanced.scalingModifiers`.
    pub composites: Arc<[CompositeSource]>,
    /// Each trigger's spec version: it changes when the trigger's spec changes (host, queue,
    /// topic, query), so a reading of the old spec is never served for the new one. The
    /// poller reads with it and the cache keeps it beside each reading.
    pub spec_versions: HashMap<TriggerId, u64>,
    /// Positions in `metrics` by namespace and served name: what a value request looks up,
    /// rather than scanning every trigger of the cluster.
    metrics_by_namespace: HashMap<String, NamespaceMetrics>,
}

/// One namespace's positions in [`Served::metrics`].
#[derive(Debug, Default)]
struct NamespaceMetrics {
    /// Every trigger's, in order.
    all: Vec<usize>,
    /// By main metric name.
    by_name: HashMap<String, NamedMetric>,
}

/// The positions of the triggers serving one main metric name in a namespace.
#[derive(Debug, Default)]
struct NamedMetric {
    /// Every one, in order.
    all: Vec<usize>,
    /// By scaled object: many objects share a name (every cron window of one timezone and
    /// schedule), and the HPA's selector names one of them.
    by_object: HashMap<String, Vec<usize>>,
}

impl NamespaceMetrics {
    /// The positions of `metrics` by namespace.
    fn index(metrics: &[MetricSource]) -> HashMap<String, Self> {
        let mut by_namespace: HashMap<String, Self> = HashMap::new();
        for (position, source) in metrics.iter().enumerate() {
            let index = by_namespace.entry(source.id.namespace.clone()).or_default();
            index.all.push(position);
            let named = index.by_name.entry(source.metric.clone()).or_default();
            named.all.push(position);
            named
                .by_object
                .entry(source.id.scaled_object.clone())
                .or_default()
                .push(position);
        }
        by_namespace
    }
}

impl Served {
    /// The metric sources of `namespace` a request for `metric` may mean: those whose main
    /// metric it is when any is, else every one of the namespace (`metric` may be an extra,
    /// `<main>-<suffix>`, which only a reading confirms).
    ///
    /// `object`, the one scaled object the request's selector can match when it names one,
    /// narrows a main metric's sources to that object's, when it has any: what the others
    /// would add the selector turns away. Without any, every source of the name is given, so
    /// the caller still tells a metric nobody serves from a selector that picks none.
    pub fn metric_sources(
        &self,
        namespace: &str,
        metric: &str,
        object: Option<&str>,
    ) -> Vec<&MetricSource> {
        let Some(index) = self.metrics_by_namespace.get(namespace) else {
            return Vec::new();
        };
        let positions = match index.by_name.get(metric) {
            Some(named) => object
                .and_then(|object| named.by_object.get(object))
                .unwrap_or(&named.all),
            None => &index.all,
        };
        positions.iter().map(|&i| &self.metrics[i]).collect()
    }

    fn build(
        objects: BTreeMap<(String, String), Arc<Registered>>,
        spec_versions: HashMap<TriggerId, u64>,
    ) -> Self {
        let mut metrics = Vec::new();
        let mut targets = Vec::new();
        let mut composites = Vec::new();
        for object in objects.values() {
            if let Some(composite) = &object.composite {
                composites.push(CompositeSource {
                    namespace: object.config.namespace.clone(),
                    scaled_object: object.config.name.clone(),
                    composite: composite.clone(),
                    triggers: object
                        .triggers
                        .iter()
                        .map(|(id, _)| (id.clone(), spec_versions.get(id).copied().unwrap_or(0)))
                        .collect(),
                    fallback: object
                        .fallback
                        .map(|(failure_threshold, replicas)| FallbackRule {
                            failure_threshold,
                            replicas,
                        }),
                });
            }
            for (mut source, (_, trigger)) in
                catalog(&object.triggers).into_iter().zip(&object.triggers)
            {
                source.fallback =
                    object
                        .fallback
                        .map(|(failure_threshold, replicas)| FallbackValue {
                            failure_threshold,
                            replicas,
                            value: f64::from(replicas) * trigger.target_value(),
                        });
                source.spec_version = spec_versions.get(&source.id).copied().unwrap_or(0);
                metrics.push(source);
            }
            if let Some(target) = &object.config.scale_target_ref {
                targets.push(ScaleTarget {
                    namespace: object.config.namespace.clone(),
                    scaled_object: object.config.name.clone(),
                    target: target.clone(),
                });
            }
        }
        Self {
            metrics_by_namespace: NamespaceMetrics::index(&metrics),
            objects,
            metrics: metrics.into(),
            targets: targets.into(),
            composites: composites.into(),
            spec_versions,
        }
    }

    /// Every trigger of every object, in order.
    pub fn triggers(&self) -> Vec<(TriggerId, Trigger)> {
        self.objects
            .values()
            .flat_map(|o| o.triggers.iter().cloned())
            .collect()
    }
}

/// The registered scaled objects; see the module doc.
#[derive(Debug, Default)]
pub struct Registry {
    state: Mutex<RegistryState>,
    /// The last spec version handed out.
    last_spec_version: AtomicU64,
}

/// What the registry holds; the snapshot is built from the rest when a reader asks.
#[derive(Debug, Default)]
struct RegistryState {
    objects: BTreeMap<(String, String), Arc<Registered>>,
    spec_versions: HashMap<TriggerId, u64>,
    /// The snapshot of the objects as they are now; `None` after a change.
    view: Option<Arc<Served>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding a config file's scaled objects (standalone mode).
    pub fn from_config(config: &Config) -> Self {
        let registry = Self::new();
        let mut by_object: HashMap<(String, String), Vec<(TriggerId, Trigger)>> = HashMap::new();
        for (id, trigger) in config.triggers() {
            by_object
                .entry((id.namespace.clone(), id.scaled_object.clone()))
                .or_default()
                .push((id, trigger));
        }
        for so in &config.scaled_objects {
            registry.upsert(Registered {
                config: so.clone(),
                // Pushed one by one, so trimmed: the registry keeps it for the object's life.
                triggers: {
                    let mut triggers = by_object
                        .remove(&(so.namespace.clone(), so.name.clone()))
                        .unwrap_or_default();
                    triggers.shrink_to_fit();
                    triggers
                },
                polling_interval: config.polling_interval.as_duration(),
                fallback: None,
                composite: None,
            });
        }
        registry
    }

    /// The current view.
    pub fn served(&self) -> Arc<Served> {
        let mut state = self.state.lock().expect("registry lock");
        if let Some(view) = &state.view {
            return Arc::clone(view);
        }
        let view = Arc::new(Served::build(
            state.objects.clone(),
            state.spec_versions.clone(),
        ));
        state.view = Some(Arc::clone(&view));
        view
    }

    /// Adds or replaces one object; false when it was registered exactly so already.
    pub fn upsert(&self, object: Registered) -> bool {
        let mut state = self.state.lock().expect("registry lock");
        let state = &mut *state;
        let key = object.key();
        if state.objects.get(&key).is_some_and(|o| **o == object) {
            return false;
        }
        // A trigger keeps its version while its spec is the same; a new or changed one gets
        // the next.
        let previous = state.objects.get(&key);
        for (id, trigger) in &object.triggers {
            let unchanged =
                previous.is_some_and(|p| p.triggers.iter().any(|(i, t)| i == id && t == trigger));
            if !unchanged || !state.spec_versions.contains_key(id) {
                let version = self.last_spec_version.fetch_add(1, Ordering::Relaxed) + 1;
                state.spec_versions.insert(id.clone(), version);
            }
        }
        if let Some(previous) = previous {
            for (id, _) in &previous.triggers {
                if !object.triggers.iter().any(|(i, _)| i == id) {
                    state.spec_versions.remove(id);
                }
            }
        }
        state.objects.insert(key, Arc::new(object));
        state.view = None;
        true
    }

    /// Removes one object; false when it was not registered.
    pub fn remove(&self, namespace: &str, name: &str) -> bool {
        self.retain(|ns, n| !(ns == namespace && n == name)) > 0
    }

    /// Keeps the objects `keep` says yes to; returns how many were removed.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) -> usize {
        let mut state = self.state.lock().expect("registry lock");
        let state = &mut *state;
        let before = state.objects.len();
        state.objects.retain(|(ns, name), _| keep(ns, name));
        let removed = before - state.objects.len();
        if removed > 0 {
            let objects = &state.objects;
            state.spec_versions.retain(|id, _| {
                objects.contains_key(&(id.namespace.clone(), id.scaled_object.clone()))
            });
            state.view = None;
        }
        removed
    }
}

/// Registries built for unit tests, not through [`Registry::upsert`].
#[cfg(test)]
impl Registry {
    /// A registry serving a fixed catalog of metrics and targets, with no objects to poll
    /// (API tests that fill the cache themselves).
    pub(crate) fn with_catalog(metrics: Vec<MetricSource>, targets: Vec<ScaleTarget>) -> Self {
        Self {
            state: Mutex::new(RegistryState {
                view: Some(Arc::new(Served {
                    objects: BTreeMap::new(),
                    metrics_by_namespace: NamespaceMetrics::index(&metrics),
                    metrics: metrics.into(),
                    targets: targets.into(),
                    composites: Arc::new([]),
                    spec_versions: HashMap::new(),
                })),
                ..RegistryState::default()
            }),
            last_spec_version: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::cron::CronTrigger;

    fn object(name: &str, fallback: Option<(u32, u32)>) -> Registered {
        let config: ScaledObjectConfig = serde_norway::from_str(&format!(
            "name: {name}\nscaleTargetRef: {{name: {name}-app}}\ntriggers:\n  - cron: {{timezone: UTC, start: '0 8 * * *', end: '0 18 * * *', desiredReplicas: 4}}\n"
        ))
        .unwrap();
        let trigger: CronTrigger = serde_norway::from_str(
            "{timezone: UTC, start: '0 8 * * *', end: '0 18 * * *', desiredReplicas: 4}",
        )
        .unwrap();
        Registered {
            triggers: vec![(
                TriggerId {
                    namespace: "default".into(),
                    scaled_object: name.into(),
                    index: 0,
                },
                Trigger::Cron(trigger),
            )],
            config,
            polling_interval: Duration::from_secs(5),
            fallback,
            composite: None,
        }
    }

    #[test]
    fn a_trigger_keeps_its_spec_version_until_its_spec_changes() {
        let registry = Registry::new();
        registry.upsert(object("a", None));
        registry.upsert(object("b", None));
        let id_a = registry.served().objects[&("default".into(), "a".into())].triggers[0]
            .0
            .clone();
        let first = registry.served().spec_versions[&id_a];
        assert_eq!(registry.served().metrics[0].spec_version, first);

        // Only the fallback changes: same spec, same version.
        registry.upsert(object("a", Some((3, 2))));
        assert_eq!(registry.served().spec_versions[&id_a], first);

        // The trigger changes: a new version, served with the metric.
        let mut changed = object("a", Some((3, 2)));
        if let Trigger::Cron(cron) = &mut changed.triggers[0].1 {
            cron.desired_replicas = 9;
        }
        registry.upsert(changed);
        let served = registry.served();
        let second = served.spec_versions[&id_a];
        assert!(second > first);
        assert_eq!(served.metrics[0].spec_version, second);

        registry.remove("default", "a");
        assert!(!registry.served().spec_versions.contains_key(&id_a));
        assert_eq!(registry.served().spec_versions.len(), 1, "b keeps its own");
    }

    #[test]
    fn upsert_and_remove_rebuild_the_served_view() {
        let registry = Registry::new();
        assert!(registry.upsert(object("a", None)));
        assert!(!registry.upsert(object("a", None)), "unchanged");
        assert!(registry.upsert(object("b", Some((3, 2)))));
        let served = registry.served();
        assert_eq!(served.metrics.len(), 2);
        assert_eq!(served.targets.len(), 2);
        let fallback = served.metrics[1].fallback.unwrap();
        // cron's target is 1 per replica: 2 replicas' worth.
        assert_eq!((fallback.failure_threshold, fallback.replicas), (3, 2));
        assert_eq!(fallback.value, 2.0);
        assert!(registry.remove("default", "a"));
        assert!(!registry.remove("default", "a"));
        assert_eq!(registry.served().metrics.len(), 1);
        assert_eq!(served.metrics.len(), 2, "an old view is unchanged");
    }

    #[test]
    fn metric_sources_are_found_by_namespace_and_name() {
        let registry = Registry::new();
        // The same cron window: one metric name for both objects.
        registry.upsert(object("a", None));
        registry.upsert(object("b", None));
        let served = registry.served();
        let metric = served.metrics[0].metric.clone();
        let objects = |sources: Vec<&MetricSource>| {
            sources
                .iter()
                .map(|s| s.id.scaled_object.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            objects(served.metric_sources("default", &metric, None)),
            ["a", "b"]
        );
        // A selector naming one object: that object's alone; naming one without it: all, so
        // the lookup tells "none selected" from "nobody serves it".
        assert_eq!(
            objects(served.metric_sources("default", &metric, Some("b"))),
            ["b"]
        );
        assert_eq!(
            objects(served.metric_sources("default", &metric, Some("c"))),
            ["a", "b"]
        );
        // Maybe an extra of one of them: every trigger of the namespace, for the lookup to
        // decide from readings, whichever object the selector names.
        for object in [None, Some("a")] {
            assert_eq!(
                objects(served.metric_sources("default", &format!("{metric}-lag"), object)),
                ["a", "b"]
            );
        }
        assert!(served.metric_sources("other", &metric, None).is_empty());
        registry.remove("default", "a");
        assert_eq!(
            objects(
                registry
                    .served()
                    .metric_sources("default", &metric, Some("a"))
            ),
            ["b"]
        );
    }
}
