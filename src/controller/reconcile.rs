//! The reconcile loop: watches ScaledObjects (and the HPAs it owns) in every namespace and, for
//! each object,
//!
//! 1. registers its triggers (credentials read from the [`SecretCache`], through the
//!    TriggerAuthentications of the [`TriggerAuthCache`] where a trigger names one) with the
//!    [`Registry`], so the poller reads them and the metrics API serves them: on every replica,
//!    leader or not, since every replica serves the metrics API. A definite failure (invalid
//!    spec, Secret or key gone, reading forbidden) unregisters the object and says why in its
//!    Ready condition; a transient one (the Secrets not listed yet) keeps the last good
//!    registration and its metrics, and retries. A change of a Secret or of a
//!    (Cluster)TriggerAuthentication reconciles the objects naming it at once;
//! 2. on the leader only: keeps its owned HPA as [`desired_hpa`] says (repairing hand edits),
//!    scales the target to and from zero (or `idleReplicaCount`) through the scale
//!    subresource, holds it while paused, and writes the status and Events.
//!
//! Scale to zero: [`decide`] says when the target goes to its idle count (the HPA removed: its
//! minimum of 1 would undo it), back to `max(1, minReplicaCount)` (the HPA back), or from zero
//! to `fallback.replicas` while its triggers fail; `status.lastActiveTime` (or the object's
//! creation) is when a trigger was last active, against `cooldownPeriod`.
//!
//! Fallback: a failing trigger's metric serves `replicas × target`, the replicas set by
//! `fallback.behavior`. A behavior that reads the target's current replicas has them read here,
//! fresh at each reconcile while a trigger fails, on every replica (each serves the metrics
//! API); until they are read the metric answers 503 and the HPA holds the target.
//!
//! Deletion: `status.originalReplicaCount` is recorded before spillway first changes the
//! target; an object with `advanced.restoreToOriginalReplicaCount` carries the
//! [`restore::FINALIZER`], and its deletion removes the HPA, scales the target back, then
//! the finalizer ([`restore::on_delete`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::crd::{ScaledObject, ScaledObjectStatus, TriggerStatus, condition};
use super::hpa::{
    HpaError, HpaOwnership, TRANSFER_ANNOTATION, desired_hpa, hpa_drift, hpa_name, hpa_ownership,
};
use super::restore::{self, OnDelete};
use super::scale_to_zero::{Cooldown, TriggerActivity, ZeroDecision, ZeroRules, decide};
use super::secrets::SecretCache;
use super::trigger_auth::{ClusterTriggerAuthentication, TriggerAuthentication};
use super::trigger_auth_cache::TriggerAuthCache;
use super::triggers::{
    SpecError, authentication_refs, resolve_authentication, resolve_secrets, secret_names, triggers,
};
use crate::cache::{MetricCache, TriggerState};
use crate::composite::{Composite, FallbackRule, Outcome};
use crate::metrics::Metrics;
use crate::quantity::format_quantity;
use crate::registry::{Registered, Registry};
use crate::scalers::served_metric_name;

/// The field manager of everything spillway writes.
pub const FIELD_MANAGER: &str = "spillway";
/// How often an object is looked at again when nothing happens: often enough to see a trigger
/// turn active within about a polling interval.
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// An object that cannot be served (bad spec, missing Secret or target) is retried this often.
const RETRY_BROKEN: Duration = Duration::from_secs(15);
/// An object whose Secrets cannot be read now is retried this often.
const RETRY_TRANSIENT: Duration = Duration::from_secs(5);
/// The status is rewritten at least this often while only poll times or values change.
const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// A target's replicas read through its scale subresource are reused this long by reconciles
/// that change nothing; a reconcile that would scale reads them again first. With a thousand
/// objects requeued every polling interval, a read per reconcile was 200 GETs a second.
const SCALE_REREAD: Duration = Duration::from_secs(30);

/// Why one reconcile failed; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Hpa(#[from] HpaError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("scale target {kind} {name}: {message}")]
    Target {
        kind: String,
        name: String,
        message: String,
    },
}

impl ReconcileError {
    /// A short stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Spec(_) => "spec",
            Self::Hpa(_) => "hpa",
            Self::Kube(_) => "kube",
            Self::Target { .. } => "target",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub registry: Arc<Registry>,
    pub cache: Arc<MetricCache>,
    /// The cluster's Secrets, filled by the watch [`run`] starts.
    pub secrets: Arc<SecretCache>,
    /// The cluster's (Cluster)TriggerAuthentications, filled by the watches [`run`] starts.
    pub trigger_auths: Arc<TriggerAuthCache>,
    /// Where a ClusterTriggerAuthentication's Secrets are read from: spillway's namespace.
    pub cluster_auth_namespace: String,
    /// Reconciles run at once, 0 for no bound (`--max-concurrent-reconciles`).
    pub max_concurrent_reconciles: u16,
    /// True while this replica holds the leader Lease.
    pub leader: watch::Receiver<bool>,
    /// spillway's own metrics: reconciles, scaling actions, fallback and pause state.
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// API resources of scale targets by (apiVersion, kind), found by discovery once.
    resources: Mutex<HashMap<(String, String), ApiResource>>,
    /// The cluster's HPAs (managed fields stripped), from the watch [`run`] starts: a
    /// reconcile reads the HPA of its object here, not with a GET.
    hpas: OnceLock<Store<HorizontalPodAutoscaler>>,
    /// Per object (namespace, name): the target's replicas as last read or set.
    scale_reads: Mutex<HashMap<(String, String), ScaleRead>>,
    /// Per object: when this leader last saw a trigger active. `status.lastActiveTime` is
    /// written at most every [`active_time_refresh`], so the cooldown is measured from this.
    last_active: Mutex<HashMap<(String, String), Timestamp>>,
    /// Objects (namespace, name) reconciled at least once by this replica: what
    /// [`wait_caught_up`] waits for before the replica calls itself ready.
    reconciled: Mutex<std::collections::HashSet<(String, String)>>,
}

/// Waits until this replica has reconciled once every ScaledObject that existed when it
/// started (so it serves their metrics and does not answer 404 for them), or until `bound`
/// passes (an object that never reconciles must not keep the replica unready for ever).
/// True when caught up within the bound.
pub async fn wait_caught_up(ctx: &Context, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let objects: Api<ScaledObject> = Api::all(ctx.client.clone());
    let listed = loop {
        match objects
            .list_metadata(&kube::api::ListParams::default())
            .await
        {
            Ok(list) => break list.items,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "cannot list ScaledObjects yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => return false,
        }
    };
    let keys: Vec<(String, String)> = listed
        .into_iter()
        .filter_map(|o| Some((o.metadata.namespace?, o.metadata.name?)))
        .collect();
    loop {
        let pending = {
            let reconciled = ctx.reconciled.lock().expect("reconciled lock");
            keys.iter().filter(|k| !reconciled.contains(*k)).count()
        };
        if pending == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                pending,
                of = keys.len(),
                "ready before every ScaledObject was reconciled once"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A target's replicas as read through its scale subresource, or as spillway set them.
#[derive(Debug, Clone, PartialEq)]
struct ScaleRead {
    /// The target (apiVersion, kind, name) and the object's generation they were read for:
    /// an edit of the object reads them again.
    target: (String, String, String),
    generation: Option<i64>,
    replicas: i32,
    at: Instant,
}

impl Context {
    pub fn new(
        client: kube::Client,
        registry: Arc<Registry>,
        cache: Arc<MetricCache>,
        leader: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Self {
        let reporter = Reporter {
            controller: "spillway".into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            cache,
            secrets: Arc::new(SecretCache::new()),
            trigger_auths: Arc::new(TriggerAuthCache::new()),
            cluster_auth_namespace: DEFAULT_CLUSTER_AUTH_NAMESPACE.into(),
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
            leader,
            metrics,
            resources: Mutex::new(HashMap::new()),
            hpas: OnceLock::new(),
            scale_reads: Mutex::new(HashMap::new()),
            last_active: Mutex::new(HashMap::new()),
            reconciled: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Reads only the Secrets matching `selector` (`--secret-label-selector`).
    pub fn with_secret_label_selector(mut self, selector: Option<String>) -> Self {
        self.secrets = Arc::new(SecretCache::with_label_selector(selector));
        self
    }

    /// Reads ClusterTriggerAuthentications' Secrets from `namespace`
    /// (`--cluster-trigger-auth-namespace`).
    pub fn with_cluster_auth_namespace(mut self, namespace: String) -> Self {
        self.cluster_auth_namespace = namespace;
        self
    }

    /// Runs at most `n` reconciles at once, or any number when 0
    /// (`--max-concurrent-reconciles`).
    pub fn with_max_concurrent_reconciles(mut self, n: u16) -> Self {
        self.max_concurrent_reconciles = n;
        self
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Forgets what the leader remembers of objects for which `keep` does not hold.
    fn retain_objects(&self, keep: impl Fn(&(String, String)) -> bool) {
        self.scale_reads
            .lock()
            .expect("scale reads")
            .retain(|key, _| keep(key));
        self.last_active
            .lock()
            .expect("last active")
            .retain(|key, _| keep(key));
    }

    /// The HPA `name` in `namespace`: from the watch once it has listed the cluster, with a
    /// GET before that.
    async fn hpa(
        &self,
        hpas: &Api<HorizontalPodAutoscaler>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<HorizontalPodAutoscaler>, kube::Error> {
        if let Some(store) = self.hpas.get()
            && store
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        {
            return Ok(store
                .get(&ObjectRef::new(name).within(namespace))
                .map(|hpa| (*hpa).clone()));
        }
        match hpas.get(name).await {
            Ok(hpa) => Ok(Some(hpa)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The target's replicas: the last read or set for the same target and generation when
    /// younger than [`SCALE_REREAD`] and `reuse` allows, else read through `api`.
    async fn replicas(
        &self,
        api: &Api<DynamicObject>,
        so: &ScaledObject,
        reuse: bool,
    ) -> Result<ScaleRead, kube::Error> {
        let key = (so.namespace().unwrap_or_default(), so.name_any());
        let target = &so.spec.scale_target_ref;
        let identity = (
            target.api_version.clone(),
            target.kind.clone(),
            target.name.clone(),
        );
        if reuse
            && let Some(read) = self.scale_reads.lock().expect("scale reads").get(&key)
            && read.target == identity
            && read.generation == so.metadata.generation
            && read.at.elapsed() < SCALE_REREAD
        {
            return Ok(read.clone());
        }
        let scale = api.get_scale(&target.name).await;
        let replicas = match scale {
            Ok(scale) => scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            Err(err) => {
                self.scale_reads.lock().expect("scale reads").remove(&key);
                return Err(err);
            }
        };
        let read = ScaleRead {
            target: identity,
            generation: so.metadata.generation,
            replicas,
            at: Instant::now(),
        };
        self.scale_reads
            .lock()
            .expect("scale reads")
            .insert(key, read.clone());
        Ok(read)
    }

    /// Records that spillway set the target of `so` to `replicas`.
    fn scaled_to(&self, so: &ScaledObject, replicas: i32) {
        let key = (so.namespace().unwrap_or_default(), so.name_any());
        if let Some(read) = self.scale_reads.lock().expect("scale reads").get_mut(&key) {
            read.replicas = replicas;
            read.at = Instant::now();
        }
    }
}

/// Reconciles at once unless told otherwise (the flag's default): 0, no bound.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 0;

/// spillway's namespace in the shipped install, where ClusterTriggerAuthentications' Secrets
/// live unless told otherwise.
pub const DEFAULT_CLUSTER_AUTH_NAMESPACE: &str = "spillway-system";

/// Runs the controller until `shutdown` completes.
pub async fn run(
    context: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let objects: Api<ScaledObject> = Api::all(context.client.clone());
    let hpas: Api<HorizontalPodAutoscaler> = Api::all(context.client.clone());
    let Some(secret_changes) = context.secrets.watch(context.client.clone()) else {
        tracing::error!("the controller runs once per Context; not started again");
        return;
    };
    let Some((auth_changes, cluster_auth_changes)) =
        context.trigger_auths.watch(context.client.clone())
    else {
        tracing::error!("the controller runs once per Context; not started again");
        return;
    };
    // Every HPA of the cluster, not only spillway's: a reconcile must also see a user's HPA of
    // the name it would take. Owner references pick the ones that reconcile an object.
    let (hpa_store, hpa_writer) = reflector::store();
    if context.hpas.set(hpa_store).is_err() {
        tracing::error!("the controller runs once per Context; not started again");
        return;
    }
    let hpa_changes = watcher(hpas, watcher::Config::default())
        .default_backoff()
        .modify(|hpa: &mut HorizontalPodAutoscaler| hpa.metadata.managed_fields = None)
        .reflect(hpa_writer)
        .applied_objects();
    let secrets = Arc::clone(&context.secrets);
    let auths = Arc::clone(&context.trigger_auths);
    let cluster_auths = Arc::clone(&context.trigger_auths);
    let controller = Controller::new(objects, watcher::Config::default())
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(context.max_concurrent_reconciles),
        )
        .owns_stream(hpa_changes)
        .watches_stream(secret_changes, move |secret: Secret| {
            secrets.objects_naming(&secret)
        })
        .watches_stream(auth_changes, move |ta: TriggerAuthentication| {
            auths.objects_naming(&ta)
        })
        .watches_stream(
            cluster_auth_changes,
            move |cta: ClusterTriggerAuthentication| cluster_auths.objects_naming_cluster(&cta),
        );
    // Deleted objects are never reconciled again: unregister what the watch no longer has.
    let store = controller.store();
    let registry = Arc::clone(&context.registry);
    let metrics = Arc::clone(&context.metrics);
    let secrets = Arc::clone(&context.secrets);
    let auths = Arc::clone(&context.trigger_auths);
    let memo_context = Arc::clone(&context);
    // No wait for the store's first list: `Store::wait_until_ready` never resolved under the
    // Controller (the soak test found every deleted object registered and polled for ever),
    // and none is needed. An object is registered only by a reconcile, which reads it from
    // this store, and a re-list swaps the store whole: an object registered and absent from
    // the store was deleted.
    let sweeper = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(2));
        loop {
            ticks.tick().await;
            let gone: Vec<(String, String)> = registry
                .served()
                .objects
                .keys()
                .filter(|(namespace, name)| {
                    store.get(&ObjectRef::new(name).within(namespace)).is_none()
                })
                .cloned()
                .collect();
            for (namespace, name) in gone {
                registry.remove(&namespace, &name);
                metrics.forget_scaled_object(&namespace, &name);
                tracing::info!(%namespace, %name, "unregistered a deleted ScaledObject");
            }
            // A reconcile in flight when its object was deleted may set its gauges after the
            // sweep above: series of objects the store no longer has end here too.
            for (namespace, name) in metrics.scaled_objects() {
                if store
                    .get(&ObjectRef::new(&name).within(&namespace))
                    .is_none()
                {
                    metrics.forget_scaled_object(&namespace, &name);
                }
            }
            let exists = |namespace: &str, name: &str| {
                store.get(&ObjectRef::new(name).within(namespace)).is_some()
            };
            secrets.retain_objects(exists);
            auths.retain_objects(exists);
            memo_context.retain_objects(|(namespace, name)| exists(namespace, name));
        }
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|outcome| async move {
            if let Err(err) = outcome {
                tracing::debug!(error = %err, "reconcile round ended with an error");
            }
        })
        .await;
    sweeper.abort();
}

fn error_policy(so: Arc<ScaledObject>, err: &ReconcileError, _: Arc<Context>) -> Action {
    let retry = retry_after(err);
    tracing::warn!(namespace = so.namespace().unwrap_or_default(), name = %so.name_any(), error = %err, retry_secs = retry.as_secs(), "reconcile failed; retrying");
    Action::requeue(retry)
}

/// When a failed reconcile runs again. The API server unreachable, overloaded or failing
/// (transport errors, 429, 5xx) is retried like an unreadable Secret: a reconcile that failed
/// as an outage began must not wait out a broken object's delay, or the object is not looked
/// at again through a short outage. Everything else is the object's own fault.
fn retry_after(err: &ReconcileError) -> Duration {
    match err {
        ReconcileError::Kube(kube::Error::Api(status))
            if status.code == 429 || status.code >= 500 =>
        {
            RETRY_TRANSIENT
        }
        ReconcileError::Kube(kube::Error::Api(_)) => RETRY_BROKEN,
        ReconcileError::Kube(_) => RETRY_TRANSIENT,
        _ => RETRY_BROKEN,
    }
}

/// What the triggers of one object say right now.
#[derive(Debug)]
struct Activity {
    triggers: Vec<TriggerActivity>,
    /// Some trigger's latest reading is active.
    active: bool,
    /// Every trigger has a current reading (none failed, none unpolled).
    all_read: bool,
    /// The first trigger at or past `fallback.failureThreshold` failures, with its error.
    fallback: Option<String>,
    /// Each trigger's index in `spec.triggers`, by position in `triggers`.
    indices: Vec<usize>,
    /// The composite metric of `advanced.scalingModifiers`, when set.
    composite: Option<Outcome>,
}

/// [`activity_indexed`] of triggers at their own positions (tests: no cpu or memory triggers).
#[cfg(test)]
fn activity(rules: &ZeroRules, states: &[Option<TriggerState>]) -> Activity {
    let positions: Vec<usize> = (0..states.len()).collect();
    activity_indexed(rules, states, &positions)
}

/// [`activity`] of triggers whose indices in `spec.triggers` are `indices` (the states'
/// positions differ from them when cpu or memory triggers, which have no state, come first).
fn activity_indexed(
    rules: &ZeroRules,
    states: &[Option<TriggerState>],
    indices: &[usize],
) -> Activity {
    let triggers: Vec<TriggerActivity> = states
        .iter()
        .map(|s| TriggerActivity::of(s.as_ref()))
        .collect();
    Activity {
        // No trigger spillway reads (only cpu and memory): always active, as in KEDA, so an
        // idleReplicaCount never takes the target below what the HPA decides.
        active: triggers.is_empty() || triggers.iter().any(|t| t.is_active()),
        all_read: triggers
            .iter()
            .all(|t| matches!(t, TriggerActivity::Read { .. })),
        fallback: rules
            .fallback_trigger(&triggers)
            .map(|position| failure_reason(indices[position], states[position].as_ref())),
        triggers,
        indices: indices.to_vec(),
        composite: None,
    }
}

/// With `advanced.scalingModifiers`, the composite value decides activity, as in KEDA: every
/// trigger with a current reading counts as active exactly when the formula's value is above
/// `activationTarget`. Failing and unread triggers stay so: a failing trigger never lets the
/// target go to idle, even where the formula gives a value without it.
fn composite_activity(
    mut act: Activity,
    composite: &Composite,
    states: &[Option<TriggerState>],
    fallback: Option<(u32, u32)>,
) -> Activity {
    let indexed: Vec<(usize, Option<&TriggerState>)> = act
        .indices
        .iter()
        .zip(states)
        .map(|(index, state)| (*index, state.as_ref()))
        .collect();
    let outcome = composite.evaluate(
        &indexed,
        fallback.map(|(failure_threshold, replicas)| FallbackRule {
            failure_threshold,
            replicas,
        }),
    );
    let active = composite.is_active(&outcome) == Some(true);
    for trigger in &mut act.triggers {
        if let TriggerActivity::Read { active: read } = trigger {
            *read = active;
        }
    }
    act.active = active;
    act.composite = Some(outcome);
    act
}

/// Why trigger `index` counts as failing: its failures in a row and its latest error.
fn failure_reason(index: usize, state: Option<&TriggerState>) -> String {
    format!(
        "trigger {index} failed {} polls in a row: {}",
        state.map_or(0, |s| s.consecutive_failures),
        state
            .and_then(|s| s.error.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default()
    )
}

async fn reconcile(so: Arc<ScaledObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let leading = ctx.is_leader();
    let started = std::time::Instant::now();
    let key = (
        so.metadata.namespace.clone().unwrap_or_default(),
        so.metadata.name.clone().unwrap_or_default(),
    );
    let outcome = reconcile_object(so, &ctx).await;
    ctx.reconciled.lock().expect("reconciled lock").insert(key);
    if leading {
        ctx.metrics.observe_reconcile(
            outcome.as_ref().map(|_| ()).map_err(ReconcileError::reason),
            started.elapsed(),
        );
    }
    outcome
}

async fn reconcile_object(so: Arc<ScaledObject>, ctx: &Context) -> Result<Action, ReconcileError> {
    let (name, namespace) = so.name_and_namespace()?;
    let (name, namespace) = (name.to_owned(), namespace.to_owned());
    let interval = Duration::from_secs(so.spec.polling_interval.max(1) as u64);

    // 0. Being deleted: nothing is served for it any more; the leader does what the deletion
    // asks (before registering: an object whose spec no longer registers must still go).
    if so.metadata.deletion_timestamp.is_some() {
        ctx.registry.remove(&namespace, &name);
        if ctx.is_leader() {
            finalize(ctx, &so).await?;
        }
        return Ok(Action::await_change());
    }

    // 1. Register, on every replica.
    let mut registered = match registration(&so, ctx).await {
        Ok(registered) => registered,
        Err(err) if err.is_transient() => return Ok(keep_registration(&so, ctx, &err).await),
        Err(err) => {
            if ctx.registry.remove(&namespace, &name) {
                tracing::warn!(%namespace, %name, error = %err, "unregistered ScaledObject");
            }
            if ctx.is_leader() {
                let mut status = so.status.clone().unwrap_or_default();
                set_condition(
                    &mut status,
                    condition::READY,
                    false,
                    err.reason(),
                    &err.to_string(),
                    &so,
                );
                write_status(ctx, &so, status).await?;
            }
            return Ok(Action::requeue(RETRY_BROKEN));
        }
    };
    if so
        .spec
        .fallback
        .as_ref()
        .is_some_and(|f| f.behavior.reads_current_replicas())
    {
        registered.fallback = fallback_from_current_replicas(ctx, &so, &registered).await;
    }
    let trigger_ids: Vec<_> = registered
        .triggers
        .iter()
        .map(|(id, t)| (id.clone(), served_metric_name(id.index, t)))
        .collect();
    let composite = registered
        .composite
        .clone()
        .map(|c| (c, registered.fallback));
    if ctx.registry.upsert(registered) {
        tracing::info!(%namespace, %name, triggers = trigger_ids.len(), "registered ScaledObject");
    }
    if !ctx.is_leader() {
        return Ok(Action::requeue(interval.max(Duration::from_secs(5))));
    }

    // 2. Lead: the target, the HPA, scaling to and from zero, status.
    let mut status = so.status.clone().unwrap_or_default();
    let target = &so.spec.scale_target_ref;
    let scale_api = match scale_api(ctx, &namespace, &target.api_version, &target.kind).await {
        Ok(api) => api,
        Err(err) => {
            set_condition(
                &mut status,
                condition::READY,
                false,
                "ScaleTargetUnknown",
                &err.to_string(),
                &so,
            );
            write_status(ctx, &so, status).await?;
            return Ok(Action::requeue(RETRY_BROKEN));
        }
    };
    let read_replicas = |reuse: bool| ctx.replicas(&scale_api, &so, reuse);
    let reads_from = Instant::now();
    let mut read = match read_replicas(true).await {
        Ok(read) => read,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let message = format!("{} {} not found in {namespace}", target.kind, target.name);
            set_condition(
                &mut status,
                condition::READY,
                false,
                "ScaleTargetNotFound",
                &message,
                &so,
            );
            write_status(ctx, &so, status).await?;
            return Ok(Action::requeue(RETRY_BROKEN));
        }
        Err(err) => return Err(err.into()),
    };
    // Only states read with the registered spec: after an edit, the old spec's reading is
    // no reading of this object's.
    let served = ctx.registry.served();
    let states: Vec<Option<TriggerState>> = trigger_ids
        .iter()
        .map(|(id, _)| match served.spec_versions.get(id) {
            Some(version) => ctx.cache.get_for_spec(id, *version),
            None => ctx.cache.get(id),
        })
        .collect();
    let now = Timestamp::now();
    let rules = ZeroRules::from_spec(&so.spec);
    let indices: Vec<usize> = trigger_ids.iter().map(|(id, _)| id.index).collect();
    let mut act = activity_indexed(&rules, &states, &indices);
    if let Some((composite, fallback)) = &composite {
        act = composite_activity(act, composite, &states, *fallback);
    }
    let key = (namespace.clone(), name.clone());
    {
        let mut last_active = ctx.last_active.lock().expect("last active");
        if act.active {
            last_active.insert(key.clone(), now);
            status.last_active_time = Some(Time(now));
        } else if let Some(seen) = last_active.get(&key)
            && status.last_active_time.as_ref().is_none_or(|t| t.0 < *seen)
        {
            status.last_active_time = Some(Time(*seen));
        }
    }

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let hpa = hpa_name(&so)?;
    // Someone else's HPA of that name: touch neither it nor the target.
    let existing_hpa = ctx.hpa(&hpas, &namespace, &hpa).await?;
    if let Some(existing) = &existing_hpa
        && let HpaOwnership::Foreign(why) = hpa_ownership(existing, &so)
    {
        tracing::warn!(%namespace, %name, %hpa, %why, "refusing to take over an HPA");
        set_condition(
            &mut status,
            condition::READY,
            false,
            "HPANotOwned",
            &why,
            &so,
        );
        write_status(ctx, &so, status).await?;
        return Ok(Action::requeue(RETRY_BROKEN));
    }

    // The target as spillway found it, stored before any change of spillway's (its HPA's
    // included), so a restart in between cannot record a count spillway set.
    let mut version = so.metadata.resource_version.clone();
    if status.original_replica_count.is_none() {
        if read.at < reads_from {
            read = read_replicas(false).await?;
        }
        version = record_original_replicas(ctx, &so, read.replicas)
            .await?
            .metadata
            .resource_version;
        status.original_replica_count = Some(read.replicas);
    }
    if let Some(patch) =
        restore::finalizers_patch(&so, restore::wants_finalizer(&so), version.as_deref())
    {
        let api: Api<ScaledObject> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }

    let mut planned = target_plan(&so, &rules, &act, &states, &status, read.replicas, now);
    // Replicas reused from an earlier read decide only to do nothing: before scaling, the
    // target is read again (the HPA or a user may have moved it since).
    if planned.action.is_some() && read.at < reads_from {
        read = read_replicas(false).await?;
        planned = target_plan(&so, &rules, &act, &states, &status, read.replicas, now);
    }
    if let Some(action) = &planned.action {
        scale(
            ctx,
            &scale_api,
            &so,
            read.replicas,
            action.to,
            action.reason,
            &action.why,
        )
        .await?;
        ctx.scaled_to(&so, action.to);
    }
    status.paused_replica_count = if so.spec.is_paused() {
        so.spec.paused_replicas
    } else {
        None
    };
    let want_hpa = planned.want_hpa;

    if want_hpa {
        ensure_hpa(ctx, &hpas, &so, &hpa, existing_hpa).await?;
        status.hpa_name = Some(hpa.clone());
    } else {
        delete_hpa(ctx, &hpas, &so, &hpa, existing_hpa, "while paused or idle").await?;
        status.hpa_name = None;
    }

    // 3. Status.
    let paused = so.spec.is_paused();
    set_condition(
        &mut status,
        condition::READY,
        true,
        "ScaledObjectReady",
        if paused {
            "paused: no HPA, the target is held"
        } else if want_hpa {
            "the HPA and the triggers are in place"
        } else {
            "idle: the target is at its idle count, no HPA"
        },
        &so,
    );
    let (active_status, active_reason, active_message) = if let Some(outcome) = &act.composite {
        let activation = so
            .spec
            .scaling_modifiers()
            .map_or(0.0, |m| m.activation_target);
        match outcome {
            Outcome::Value { value, .. } if act.active => (
                Some(true),
                "CompositeActive",
                format!(
                    "the scalingModifiers formula gives {value}, above activationTarget {activation}"
                ),
            ),
            Outcome::Value { value, .. } if act.all_read => (
                Some(false),
                "CompositeIdle",
                format!(
                    "the scalingModifiers formula gives {value}, at or below activationTarget {activation}"
                ),
            ),
            Outcome::Value { .. } => (
                None,
                "TriggerWithoutReading",
                "a trigger has no current reading; activity is unknown".to_owned(),
            ),
            Outcome::Fallback { why, .. } | Outcome::Unavailable(why) => (
                None,
                "CompositeWithoutValue",
                format!("the scalingModifiers formula has no value: {why}"),
            ),
        }
    } else if act.active {
        (
            Some(true),
            "TriggerActive",
            "a trigger is above its activation threshold".to_owned(),
        )
    } else if act.all_read {
        (
            Some(false),
            "TriggersIdle",
            "every trigger is at or below its activation threshold".to_owned(),
        )
    } else {
        (
            None,
            "TriggerWithoutReading",
            "a trigger has no current reading; activity is unknown".to_owned(),
        )
    };
    set_condition_tri(
        &mut status,
        condition::ACTIVE,
        active_status,
        active_reason,
        &active_message,
        &so,
    );
    match &act.fallback {
        Some(reason) if so.spec.fallback.is_some() => {
            let steered = rules
                .fallback
                .and_then(|f| f.replicas_at(u32::try_from(read.replicas).ok()))
                .unwrap_or(0);
            let behavior = so
                .spec
                .fallback
                .as_ref()
                .map(|f| f.behavior)
                .unwrap_or_default();
            let how = if behavior.reads_current_replicas() {
                format!(" (fallback.behavior {})", behavior.as_str())
            } else {
                String::new()
            };
            set_condition(
                &mut status,
                condition::FALLBACK,
                true,
                "FallbackActive",
                &format!("serving fallback replicas {steered}{how}: {reason}"),
                &so,
            );
        }
        _ => set_condition(
            &mut status,
            condition::FALLBACK,
            false,
            "TriggersHealthy",
            "no trigger is past its failure threshold",
            &so,
        ),
    }
    let (paused_status, paused_reason, paused_message) = if paused {
        (true, "Paused", "spec.paused or spec.pausedReplicas is set")
    } else if so.spec.paused_scale_in && so.spec.paused_scale_out {
        (
            true,
            "ScaleInAndOutPaused",
            "spec.pausedScaleIn and spec.pausedScaleOut are set: the HPA holds the replicas",
        )
    } else if so.spec.paused_scale_in {
        (
            true,
            "ScaleInPaused",
            "spec.pausedScaleIn is set: the target may grow, never shrink",
        )
    } else if so.spec.paused_scale_out {
        (
            true,
            "ScaleOutPaused",
            "spec.pausedScaleOut is set: the target may shrink, never grow",
        )
    } else {
        (false, "NotPaused", "scaling is on")
    };
    set_condition(
        &mut status,
        condition::PAUSED,
        paused_status,
        paused_reason,
        paused_message,
        &so,
    );
    status.observed_generation = so.metadata.generation;
    ctx.metrics.set_scaled_object_state(
        &namespace,
        &name,
        act.fallback.is_some() && so.spec.fallback.is_some(),
        paused,
    );
    // By each trigger's own index in `spec.triggers`: cpu and memory triggers have no entry.
    status.triggers = trigger_ids
        .iter()
        .zip(&states)
        .map(|((id, metric), state)| {
            let name = so.spec.triggers.get(id.index).and_then(|t| t.name.clone());
            trigger_status(id.index, name, metric, state.as_ref())
        })
        .collect();
    write_status(ctx, &so, status).await?;
    Ok(Action::requeue(interval.max(MIN_REQUEUE)))
}

/// What the leader does to the target in one reconcile.
#[derive(Debug, PartialEq)]
struct TargetPlan {
    /// The replicas to set through the scale subresource, if any.
    action: Option<ScaleAction>,
    /// Whether the object has its HPA: not while paused or at its idle count.
    want_hpa: bool,
}

#[derive(Debug, PartialEq)]
struct ScaleAction {
    to: i32,
    reason: &'static str,
    why: String,
}

/// Pauses, then [`decide`]: what to do with a target at `replicas`, the cooldown measured
/// from `status.lastActiveTime` (or the object's creation).
fn target_plan(
    so: &ScaledObject,
    rules: &ZeroRules,
    act: &Activity,
    states: &[Option<TriggerState>],
    status: &ScaledObjectStatus,
    replicas: i32,
    now: Timestamp,
) -> TargetPlan {
    let action = |to: i32, reason: &'static str, why: String| Some(ScaleAction { to, reason, why });
    if so.spec.is_paused() {
        return TargetPlan {
            action: so
                .spec
                .paused_replicas
                .filter(|paused| *paused != replicas)
                .and_then(|paused| {
                    action(
                        paused,
                        "PausedReplicas",
                        "pausedReplicas holds the target".into(),
                    )
                }),
            want_hpa: false,
        };
    }
    let ever_active = status.last_active_time.is_some();
    let last_active = status
        .last_active_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| so.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let current = u32::try_from(replicas).unwrap_or(0);
    let cooldown = Cooldown::Measured { last_active, now };
    let cooldown_seconds = so.spec.cooldown_seconds(ever_active);
    let rules = ZeroRules {
        cooldown_seconds: cooldown_seconds.max(0) as u32,
        ..*rules
    };
    let hold = TargetPlan {
        action: None,
        want_hpa: true,
    };
    match decide(&rules, Some(current), &act.triggers, cooldown) {
        // pausedScaleOut: an idle target stays idle, without the HPA that would raise it
        // (a target that never idles keeps its HPA, whose scale-up is disabled).
        ZeroDecision::FromIdle { .. } | ZeroDecision::FallbackFromZero { .. }
            if so.spec.paused_scale_out =>
        {
            TargetPlan {
                action: None,
                want_hpa: !rules.scales_to_idle(),
            }
        }
        // pausedScaleIn: a target above its idle count keeps it, and its HPA (scale-down
        // disabled) holds it; one already idle stays as it is.
        ZeroDecision::ToIdle { to, .. } if so.spec.paused_scale_in && current != to => hold,
        ZeroDecision::FromIdle { to } => TargetPlan {
            action: action(to as i32, "ScaledFromIdle", "a trigger is active".into()),
            want_hpa: true,
        },
        ZeroDecision::ToIdle { to, idle_for } => TargetPlan {
            action: (current != to)
                .then(|| {
                    action(
                        to as i32,
                        "ScaledToIdle",
                        format!(
                            "no trigger active for {}s ({} {}s)",
                            idle_for.map_or(0, |d| d.as_secs_f64() as i64),
                            if ever_active || so.spec.initial_cooldown_period.is_none() {
                                "cooldownPeriod"
                            } else {
                                "initialCooldownPeriod"
                            },
                            cooldown_seconds
                        ),
                    )
                })
                .flatten(),
            want_hpa: false,
        },
        ZeroDecision::FallbackFromZero { to, trigger } => TargetPlan {
            action: action(
                to as i32,
                "FallbackFromZero",
                failure_reason(act.indices[trigger], states[trigger].as_ref()),
            ),
            want_hpa: true,
        },
        ZeroDecision::Hold(_) => hold,
    }
}

/// The object's triggers as the poller reads them, credentials read from the context's
/// Secrets, through its TriggerAuthentications where a trigger names one.
async fn registration(so: &ScaledObject, ctx: &Context) -> Result<Registered, SpecError> {
    let mut config = so.to_config()?;
    // Named before they are read, so a change that lands after the read still reconciles.
    ctx.trigger_auths.set_named(
        &config.namespace,
        &config.name,
        &authentication_refs(&config),
    );
    resolve_authentication(
        &mut config,
        &*ctx.trigger_auths,
        &ctx.cluster_auth_namespace,
    )
    .await?;
    ctx.secrets
        .set_named(&config.namespace, &config.name, secret_names(&config));
    resolve_secrets(&mut config, &*ctx.secrets).await?;
    let triggers = triggers(&config)?;
    Ok(Registered {
        config,
        triggers,
        polling_interval: Duration::from_secs(so.spec.polling_interval.max(1) as u64),
        // A behavior that reads the current replicas: set by the caller once they are read.
        fallback: so
            .spec
            .fallback
            .as_ref()
            .filter(|f| !f.behavior.reads_current_replicas())
            .map(|f| (f.failure_threshold.max(0) as u32, f.replicas.max(0) as u32)),
        composite: so.composite()?,
    })
}

/// For a `fallback.behavior` that reads the target's current replicas: the failure threshold
/// and the replicas fallback steers to, from a fresh read of the target while one of the
/// object's triggers fails. `None` while none fails (no fallback value is served then, and a
/// read ahead would be stale when one is) and when the read fails: a failing trigger then
/// answers 503 as without fallback, and the HPA holds the target (KEDA answers the error too).
async fn fallback_from_current_replicas(
    ctx: &Context,
    so: &ScaledObject,
    registered: &Registered,
) -> Option<(u32, u32)> {
    let fallback = ZeroRules::from_spec(&so.spec).fallback?;
    let failing = registered.triggers.iter().any(|(id, _)| {
        ctx.cache
            .get(id)
            .is_some_and(|s| s.current().is_none() && s.consecutive_failures > 0)
    });
    if !failing {
        return None;
    }
    let target = &so.spec.scale_target_ref;
    let namespace = so.namespace().unwrap_or_default();
    let read = match scale_api(ctx, &namespace, &target.api_version, &target.kind).await {
        Ok(api) => ctx
            .replicas(&api, so, false)
            .await
            .map_err(ReconcileError::from),
        Err(err) => Err(err),
    };
    match read {
        Ok(read) => {
            let current = u32::try_from(read.replicas).unwrap_or(0);
            let steered = fallback.replicas_at(Some(current))?;
            Some((fallback.failure_threshold, steered))
        }
        Err(err) => {
            tracing::warn!(%namespace, name = %so.name_any(), error = %err, "cannot read the target's replicas for fallback.behavior; its failing triggers answer 503 meanwhile");
            None
        }
    }
}

/// Stores the target's replicas as `status.originalReplicaCount`, as KEDA does on its first
/// reconcile; the object as written.
async fn record_original_replicas(
    ctx: &Context,
    so: &ScaledObject,
    replicas: i32,
) -> Result<ScaledObject, ReconcileError> {
    let api: Api<ScaledObject> = Api::namespaced(
        ctx.client.clone(),
        so.namespace().as_deref().unwrap_or_default(),
    );
    Ok(api
        .patch_status(
            &so.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"originalReplicaCount": replicas}})),
        )
        .await?)
}

/// Does what the deletion of `so` asks ([`restore::on_delete`]): removes its HPA (left, it
/// would scale the target again), scales the target to `status.originalReplicaCount`, and
/// removes the finalizer. A target (or its kind) gone, or a definite refusal, does not hold
/// the deletion: the finalizer goes with a Warning Event; a transient error is retried.
async fn finalize(ctx: &Context, so: &ScaledObject) -> Result<(), ReconcileError> {
    let step = restore::on_delete(so);
    if step == OnDelete::Nothing {
        return Ok(());
    }
    let namespace = so.namespace().unwrap_or_default();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Ok(hpa) = hpa_name(so) {
        let existing = ctx.hpa(&hpas, &namespace, &hpa).await?;
        delete_hpa(
            ctx,
            &hpas,
            so,
            &hpa,
            existing,
            "before restoring the replicas",
        )
        .await?;
    }
    let target = &so.spec.scale_target_ref;
    let skipped = match step {
        OnDelete::Nothing => return Ok(()),
        OnDelete::Skip { why } => Some(why),
        OnDelete::Restore { to } => match restore_replicas(ctx, so, to).await {
            Ok(()) => None,
            Err(RestoreError::GaveUp(why)) => Some(why),
            Err(RestoreError::Retry(err)) => return Err(err),
        },
    };
    if let Some(why) = skipped {
        tracing::warn!(%namespace, name = %so.name_any(), %why, "not restoring the target's replicas");
        publish(
            ctx,
            so,
            EventType::Warning,
            "RestoreSkipped",
            &format!(
                "{} {}: replicas not restored on deletion: {why}",
                target.kind, target.name
            ),
        )
        .await;
    }
    if let Some(patch) = restore::finalizers_patch(so, false, so.resource_version().as_deref()) {
        let api: Api<ScaledObject> = Api::namespaced(ctx.client.clone(), &namespace);
        match api
            .patch(
                &so.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Why a restore did not happen: a definite answer (the deletion goes on without it) or a
/// transient error (retried).
enum RestoreError {
    GaveUp(String),
    Retry(ReconcileError),
}

/// Scales the target of `so` to `to` through its scale subresource, with an Event.
async fn restore_replicas(ctx: &Context, so: &ScaledObject, to: i32) -> Result<(), RestoreError> {
    let target = &so.spec.scale_target_ref;
    let namespace = so.namespace().unwrap_or_default();
    let definite = |err: kube::Error| match err {
        kube::Error::Api(e) if restore::gives_up(e.code) => RestoreError::GaveUp(format!(
            "{} {} in {namespace}: {} ({})",
            target.kind, target.name, e.message, e.code
        )),
        err => RestoreError::Retry(err.into()),
    };
    let api = match scale_api(ctx, &namespace, &target.api_version, &target.kind).await {
        Ok(api) => api,
        Err(err @ ReconcileError::Target { .. }) => {
            return Err(RestoreError::GaveUp(err.to_string()));
        }
        Err(err) => return Err(RestoreError::Retry(err)),
    };
    let from = api
        .get_scale(&target.name)
        .await
        .map_err(definite)?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let why = "advanced.restoreToOriginalReplicaCount: the ScaledObject is deleted";
    match scale(ctx, &api, so, from, to, "RestoredOriginalReplicas", why).await {
        Ok(()) => Ok(()),
        Err(ReconcileError::Kube(err)) => Err(definite(err)),
        Err(err) => Err(RestoreError::Retry(err)),
    }
}

/// The object's Secrets could not be read now: whatever is registered stays (its metrics keep
/// being served and polled), and the leader says so in the Ready condition, whose status stays
/// as it was (Unknown when nothing is registered). Retried soon.
async fn keep_registration(so: &ScaledObject, ctx: &Context, err: &SpecError) -> Action {
    let namespace = so.namespace().unwrap_or_default();
    let name = so.name_any();
    let kept = ctx
        .registry
        .served()
        .objects
        .contains_key(&(namespace.clone(), name.clone()));
    tracing::warn!(%namespace, %name, error = %err, kept, "cannot read the object's Secrets now; retrying");
    if ctx.is_leader() {
        let mut status = so.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .and_then(|c| match c.status.as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            })
            .filter(|_| kept);
        let message = if kept {
            format!("{err}; serving the last registration meanwhile")
        } else {
            format!("{err}; not registered yet")
        };
        set_condition_tri(
            &mut status,
            condition::READY,
            ready,
            err.reason(),
            &message,
            so,
        );
        // Best effort: the API server that could not answer may not take the status either.
        if let Err(err) = write_status(ctx, so, status).await {
            tracing::debug!(%namespace, %name, error = %err, "cannot write the status");
        }
    }
    Action::requeue(RETRY_TRANSIENT)
}

/// An API for the scale subresource of `kind` in `api_version`, found by discovery once.
async fn scale_api(
    ctx: &Context,
    namespace: &str,
    api_version: &str,
    kind: &str,
) -> Result<Api<DynamicObject>, ReconcileError> {
    let key = (api_version.to_owned(), kind.to_owned());
    let known = ctx
        .resources
        .lock()
        .expect("resource cache")
        .get(&key)
        .cloned();
    let resource = match known {
        Some(resource) => resource,
        None => {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let (resource, _) = kube::discovery::pinned_kind(&ctx.client, &gvk)
                .await
                .map_err(|err| ReconcileError::Target {
                    kind: kind.to_owned(),
                    name: String::new(),
                    message: format!("{api_version} {kind} is not served by the cluster: {err}"),
                })?;
            ctx.resources
                .lock()
                .expect("resource cache")
                .insert(key, resource.clone());
            resource
        }
    };
    Ok(Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &resource,
    ))
}

/// Sets the target's replicas through the scale subresource, with an Event saying why.
async fn scale(
    ctx: &Context,
    api: &Api<DynamicObject>,
    so: &ScaledObject,
    from: i32,
    to: i32,
    reason: &str,
    why: &str,
) -> Result<(), ReconcileError> {
    let target = &so.spec.scale_target_ref;
    api.patch_scale(
        &target.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": to}})),
    )
    .await?;
    let namespace = so.namespace().unwrap_or_default();
    tracing::info!(%namespace, name = %so.name_any(), target = %target.name, from, to, %reason, %why, "scaled");
    ctx.metrics
        .observe_scaling(&namespace, &so.name_any(), reason);
    publish(
        ctx,
        so,
        EventType::Normal,
        reason,
        &format!(
            "{} {}: {from} -> {to} replicas ({why})",
            target.kind, target.name
        ),
    )
    .await;
    Ok(())
}

/// Creates the HPA, or brings `existing` (owned or handed over: checked by the caller) to the
/// desired state.
async fn ensure_hpa(
    ctx: &Context,
    hpas: &Api<HorizontalPodAutoscaler>,
    so: &ScaledObject,
    name: &str,
    existing: Option<HorizontalPodAutoscaler>,
) -> Result<(), ReconcileError> {
    let desired = desired_hpa(so)?;
    match existing {
        None => {
            let created = hpas
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &desired,
                )
                .await;
            match created {
                Ok(_) => {}
                // Made a moment ago and not yet in the watch's store: the next reconcile
                // finds it there and checks whose it is.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(err) => return Err(err.into()),
            }
            publish(
                ctx,
                so,
                EventType::Normal,
                "HPACreated",
                &format!("created HorizontalPodAutoscaler {name}"),
            )
            .await;
        }
        Some(existing) => {
            let adopted = hpa_ownership(&existing, so) == HpaOwnership::Transferred;
            let drift = hpa_drift(&existing, &desired);
            if !drift.is_empty() {
                hpas.patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await?;
                let (reason, note) = if adopted {
                    (
                        "HPAAdopted",
                        format!(
                            "took over HorizontalPodAutoscaler {name}, handed over by {TRANSFER_ANNOTATION}"
                        ),
                    )
                } else {
                    (
                        "HPARepaired",
                        format!(
                            "HorizontalPodAutoscaler {name} differed in {}; restored",
                            drift.join(", ")
                        ),
                    )
                };
                publish(ctx, so, EventType::Normal, reason, &note).await;
            }
        }
    }
    Ok(())
}

/// Deletes `existing` (the HPA `name` as the caller found it) if this object owns it.
async fn delete_hpa(
    ctx: &Context,
    hpas: &Api<HorizontalPodAutoscaler>,
    so: &ScaledObject,
    name: &str,
    existing: Option<HorizontalPodAutoscaler>,
    when: &str,
) -> Result<(), ReconcileError> {
    let Some(existing) = existing else {
        return Ok(());
    };
    // Only an HPA this object owns is removed; a same-named HPA of a user is left alone.
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == so.meta().uid.as_ref());
    if !ours {
        return Ok(());
    }
    match hpas.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            publish(
                ctx,
                so,
                EventType::Normal,
                "HPARemoved",
                &format!("removed HorizontalPodAutoscaler {name} {when}"),
            )
            .await;
            Ok(())
        }
        // Already gone: the watch had not told yet.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn trigger_status(
    index: usize,
    name: Option<String>,
    metric: &str,
    state: Option<&TriggerState>,
) -> TriggerStatus {
    TriggerStatus {
        index: index as i32,
        name,
        metric: metric.to_owned(),
        value: state
            .and_then(|s| s.current())
            .and_then(|r| format_quantity(r.value).ok())
            .map(|q| Quantity(q.text)),
        last_error: state
            .and_then(|s| s.error.as_ref())
            .map(ToString::to_string),
        consecutive_failures: state
            .map(|s| s.consecutive_failures as i32)
            .filter(|n| *n > 0),
        last_poll_time: state
            .and_then(|s| Timestamp::try_from(s.polled_at_wall).ok())
            .map(Time),
    }
}

fn set_condition(
    status: &mut ScaledObjectStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    so: &ScaledObject,
) {
    set_condition_tri(status, type_, Some(value), reason, message, so);
}

/// Sets one condition, keeping its transition time when its status did not change.
fn set_condition_tri(
    status: &mut ScaledObjectStatus,
    type_: &str,
    value: Option<bool>,
    reason: &str,
    message: &str,
    so: &ScaledObject,
) {
    let text = match value {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let previous = status.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(c) if c.status == text => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status: text.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: so.metadata.generation,
    };
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(condition);
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Writes `status` when it differs from the stored one in more than poll times, values and
/// the last active time; when only those changed, once the stored poll times are
/// [`STATUS_REFRESH`] old or the stored last active time is [`active_time_refresh`] behind.
/// A status written at every poll was a write per object per polling interval (with a
/// thousand objects, 100 a second, each reconciling its object again). An Event for every
/// condition that changed.
async fn write_status(
    ctx: &Context,
    so: &ScaledObject,
    status: ScaledObjectStatus,
) -> Result<(), ReconcileError> {
    let stored = so.status.clone().unwrap_or_default();
    if !status_write_due(&stored, &status, so.spec.cooldown_period) {
        return Ok(());
    }
    for condition in &status.conditions {
        let before = stored
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_);
        if before.is_some_and(|b| b.status == condition.status && b.reason == condition.reason) {
            continue;
        }
        let warning = (condition.type_ == condition::READY && condition.status == "False")
            || (condition.type_ == condition::FALLBACK && condition.status == "True");
        publish(
            ctx,
            so,
            if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            &condition.reason,
            &format!(
                "{}={}: {}",
                condition.type_, condition.status, condition.message
            ),
        )
        .await;
    }
    let api: Api<ScaledObject> = Api::namespaced(
        ctx.client.clone(),
        so.namespace().as_deref().unwrap_or_default(),
    );
    let written = api
        .patch_status(
            &so.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await;
    match written {
        Ok(_) => {}
        // Deleted while being reconciled: nothing left to report on.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

/// Whether `status` must be written over `stored`: see [`write_status`].
fn status_write_due(
    stored: &ScaledObjectStatus,
    status: &ScaledObjectStatus,
    cooldown_period: i32,
) -> bool {
    // What a reader acts on: conditions, errors, whether a trigger has a value at all.
    let material = |s: &ScaledObjectStatus| {
        let mut s = s.clone();
        for t in &mut s.triggers {
            t.last_poll_time = None;
            t.value = t.value.as_ref().map(|_| Quantity(String::new()));
        }
        s.last_active_time = s
            .last_active_time
            .as_ref()
            .map(|_| Time(Timestamp::UNIX_EPOCH));
        s
    };
    if material(stored) != material(status) {
        return true;
    }
    let behind = |old: Option<Timestamp>, new: Option<Timestamp>, by: Duration| match (old, new) {
        (Some(old), Some(new)) => new.duration_since(old).as_secs_f64() >= by.as_secs_f64(),
        (None, Some(_)) => true,
        _ => false,
    };
    let newest_poll = |s: &ScaledObjectStatus| {
        s.triggers
            .iter()
            .filter_map(|t| t.last_poll_time.as_ref().map(|t| t.0))
            .max()
    };
    let last_active = |s: &ScaledObjectStatus| s.last_active_time.as_ref().map(|t| t.0);
    behind(newest_poll(stored), newest_poll(status), STATUS_REFRESH)
        || behind(
            last_active(stored),
            last_active(status),
            active_time_refresh(cooldown_period),
        )
}

/// How far `status.lastActiveTime` may lag the last activity this leader saw: a quarter of
/// the cooldown, between 5 s and [`STATUS_REFRESH`]. The leader measures the cooldown from
/// what it saw; a new leader, from the stored time, so it may scale to idle that much early.
fn active_time_refresh(cooldown_period: i32) -> Duration {
    (Duration::from_secs(cooldown_period.max(0) as u64) / 4)
        .clamp(Duration::from_secs(5), STATUS_REFRESH)
}

/// Publishes an Event about `so`; a failure to do so is logged, never fails the reconcile.
async fn publish(ctx: &Context, so: &ScaledObject, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &so.object_ref(&())).await {
        tracing::warn!(error = %err, %reason, "cannot publish Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::TriggerId;
    use crate::controller::scale_to_zero::Fallback;
    use crate::scalers::{Reading, ScalerError};

    #[test]
    fn activity_of_the_cached_states() {
        let cache = MetricCache::new();
        let id = |index| TriggerId {
            namespace: "shop".into(),
            scaled_object: "orders".into(),
            index,
        };
        let ms = Duration::from_millis(1);
        let down = || ScalerError::Unreachable {
            broker: "kafka",
            target: "k:9092".into(),
            cause: "refused".into(),
        };
        cache.record(id(0), Ok(Reading::new(0.0, false)), ms);
        cache.record(id(1), Ok(Reading::new(50.0, true)), ms);
        for _ in 0..3 {
            cache.record(id(2), Err(down()), ms);
        }
        let states: Vec<Option<TriggerState>> = (0..4).map(|i| cache.get(&id(i))).collect();
        let rules = |fallback: Option<Fallback>| ZeroRules {
            min_replica_count: 0,
            idle_replica_count: None,
            cooldown_seconds: 300,
            fallback,
        };
        let failing = "trigger 2 failed 3 polls in a row: kafka k:9092 is unreachable: refused";
        let cases = [
            // (states, fallback threshold, active, all read, fallback reason)
            (&states[..2], Some(1), true, true, None),
            (&states[..1], Some(1), false, true, None),
            // Fallback after more failures in a row than the threshold (KEDA's rule).
            (&states[..3], Some(2), true, false, Some(failing)),
            (&states[..3], Some(3), true, false, None),
            (&states[..3], None, true, false, None),
            (&states[3..], Some(1), false, false, None),
        ];
        for (states, threshold, active, all_read, fallback) in cases {
            let fallback_rule = threshold.map(|failure_threshold| Fallback {
                failure_threshold,
                replicas: 2,
                behavior: Default::default(),
            });
            let act = activity(&rules(fallback_rule), states);
            assert_eq!(
                (act.active, act.all_read, act.fallback.as_deref()),
                (active, all_read, fallback),
                "{} states, threshold {threshold:?}",
                states.len()
            );
            assert_eq!(act.triggers.len(), states.len());
        }
    }

    #[test]
    fn the_status_is_written_for_what_readers_act_on_and_refreshed_otherwise() {
        let at = |secs: i64| Some(Time(Timestamp::from_second(1_700_000_000 + secs).unwrap()));
        let status = |value: Option<&str>, polled: i64, active: Option<i64>| ScaledObjectStatus {
            triggers: vec![TriggerStatus {
                index: 0,
                metric: "s0-rabbitmq-jobs".into(),
                value: value.map(|v| Quantity(v.into())),
                last_poll_time: at(polled),
                ..Default::default()
            }],
            last_active_time: active.and_then(at),
            ..Default::default()
        };
        let stored = status(Some("10"), 0, Some(0));
        // (new status, cooldown, written)
        let cases = [
            (status(Some("10"), 5, Some(0)), 300, false),
            // A new value alone waits for the refresh; a value appearing or going does not.
            (status(Some("11"), 5, Some(0)), 300, false),
            (status(None, 5, Some(0)), 300, true),
            (status(Some("11"), 60, Some(0)), 300, true),
            // The last active time: a quarter of the cooldown, at least 5 s, at most 60 s.
            (status(Some("10"), 5, Some(4)), 10, false),
            (status(Some("10"), 5, Some(5)), 10, true),
            (status(Some("10"), 5, Some(59)), 300, false),
            (status(Some("10"), 5, Some(60)), 300, true),
            (status(Some("10"), 5, Some(60)), 100_000, true),
        ];
        for (new, cooldown, written) in cases {
            assert_eq!(
                status_write_due(&stored, &new, cooldown),
                written,
                "{new:?}, cooldown {cooldown}"
            );
        }
        let mut failing = status(Some("10"), 5, Some(0));
        failing.triggers[0].last_error = Some("refused".into());
        assert!(
            status_write_due(&stored, &failing, 300),
            "an error is written at once"
        );
        assert!(!status_write_due(
            &ScaledObjectStatus::default(),
            &ScaledObjectStatus::default(),
            300
        ));
    }

    #[test]
    fn the_plan_scales_only_when_the_replicas_read_call_for_it() {
        let so: ScaledObject = serde_norway::from_str(
            &(SO.to_owned() + "  minReplicaCount: 0\n  cooldownPeriod: 10\n"),
        )
        .unwrap();
        let rules = ZeroRules::from_spec(&so.spec);
        let cache = MetricCache::new();
        let id = TriggerId {
            namespace: "shop".into(),
            scaled_object: "worker".into(),
            index: 0,
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let ago = |secs: i64| Some(Time(now.checked_sub(jiff_seconds(secs)).unwrap()));
        cache.record(
            id.clone(),
            Ok(Reading::new(0.0, false)),
            Duration::from_millis(1),
        );
        let idle = vec![cache.get(&id)];
        let idle_act = activity(&rules, &idle);
        let recent = ScaledObjectStatus {
            last_active_time: ago(3),
            ..Default::default()
        };
        let long_ago = ScaledObjectStatus {
            last_active_time: ago(30),
            ..Default::default()
        };
        // Inside the cooldown: nothing; past it: to 0, and no HPA; at 0 already: no call.
        let plan = target_plan(&so, &rules, &idle_act, &idle, &recent, 2, now);
        assert_eq!(
            plan,
            TargetPlan {
                action: None,
                want_hpa: true
            }
        );
        let plan = target_plan(&so, &rules, &idle_act, &idle, &long_ago, 2, now);
        assert_eq!(
            plan.action.as_ref().map(|a| (a.to, a.reason)),
            Some((0, "ScaledToIdle"))
        );
        assert!(!plan.want_hpa);
        let plan = target_plan(&so, &rules, &idle_act, &idle, &long_ago, 0, now);
        assert_eq!(
            plan,
            TargetPlan {
                action: None,
                want_hpa: false
            }
        );

        cache.record(
            id.clone(),
            Ok(Reading::new(50.0, true)),
            Duration::from_millis(1),
        );
        let busy = vec![cache.get(&id)];
        let busy_act = activity(&rules, &busy);
        let plan = target_plan(&so, &rules, &busy_act, &busy, &recent, 0, now);
        assert_eq!(
            plan.action.as_ref().map(|a| (a.to, a.reason)),
            Some((1, "ScaledFromIdle"))
        );
        assert!(plan.want_hpa);

        // Paused at 3: held there, no HPA.
        let paused: ScaledObject =
            serde_norway::from_str(&(SO.to_owned() + "  pausedReplicas: 3\n")).unwrap();
        let plan = target_plan(&paused, &rules, &busy_act, &busy, &recent, 5, now);
        assert_eq!(
            plan.action.as_ref().map(|a| (a.to, a.reason)),
            Some((3, "PausedReplicas"))
        );
        assert!(!plan.want_hpa);
        let plan = target_plan(&paused, &rules, &busy_act, &busy, &recent, 3, now);
        assert_eq!(
            plan,
            TargetPlan {
                action: None,
                want_hpa: false
            }
        );
    }

    #[test]
    fn one_way_pauses_and_the_initial_cooldown_shape_the_plan() {
        let spec = |extra: &str| -> ScaledObject {
            let mut so: ScaledObject = serde_norway::from_str(
                &(SO.to_owned() + "  minReplicaCount: 0\n  cooldownPeriod: 60\n" + extra),
            )
            .unwrap();
            so.metadata.creation_timestamp =
                Some(Time(Timestamp::from_second(1_700_000_000 - 20).unwrap()));
            so
        };
        let cache = MetricCache::new();
        let id = TriggerId {
            namespace: "shop".into(),
            scaled_object: "worker".into(),
            index: 0,
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let never_active = ScaledObjectStatus::default();
        let long_ago = ScaledObjectStatus {
            last_active_time: Some(Time(now.checked_sub(jiff_seconds(600)).unwrap())),
            ..Default::default()
        };
        let read = |value: f64, active: bool| {
            cache.record(
                id.clone(),
                Ok(Reading::new(value, active)),
                Duration::from_millis(1),
            );
            vec![cache.get(&id)]
        };
        let plan = |so: &ScaledObject, states: &[Option<TriggerState>], st, replicas| {
            let rules = ZeroRules::from_spec(&so.spec);
            target_plan(
                so,
                &rules,
                &activity(&rules, states),
                states,
                st,
                replicas,
                now,
            )
        };
        let to = |p: &TargetPlan| p.action.as_ref().map(|a| (a.to, a.reason));

        // Created 20 s ago, never active: cooldownPeriod (60 s) from the creation holds it;
        // initialCooldownPeriod 10 lets it go, and 0 at once, as KEDA's default does.
        let idle = read(0.0, false);
        assert_eq!(to(&plan(&spec(""), &idle, &never_active, 2)), None);
        let initial = spec("  initialCooldownPeriod: 10\n");
        let p = plan(&initial, &idle, &never_active, 2);
        assert_eq!(to(&p), Some((0, "ScaledToIdle")));
        assert!(p.action.unwrap().why.contains("initialCooldownPeriod 10s"));
        assert_eq!(
            to(&plan(
                &spec("  initialCooldownPeriod: 0\n"),
                &idle,
                &never_active,
                2
            )),
            Some((0, "ScaledToIdle"))
        );
        // Once a trigger was active, cooldownPeriod applies again.
        let recent = ScaledObjectStatus {
            last_active_time: Some(Time(now.checked_sub(jiff_seconds(15)).unwrap())),
            ..Default::default()
        };
        assert_eq!(to(&plan(&initial, &idle, &recent, 2)), None);

        // pausedScaleIn: past the cooldown the target keeps its replicas and its HPA.
        let no_in = spec("  pausedScaleIn: true\n");
        assert_eq!(
            plan(&no_in, &idle, &long_ago, 2),
            TargetPlan {
                action: None,
                want_hpa: true
            }
        );
        assert_eq!(
            to(&plan(&spec(""), &idle, &long_ago, 2)),
            Some((0, "ScaledToIdle"))
        );
        // ... and an active trigger still brings it from zero.
        let busy = read(50.0, true);
        assert_eq!(
            to(&plan(&no_in, &busy, &long_ago, 0)),
            Some((1, "ScaledFromIdle"))
        );

        // pausedScaleOut: an active trigger leaves an idle target idle, without an HPA; scaling
        // in goes on.
        let no_out = spec("  pausedScaleOut: true\n");
        assert_eq!(
            plan(&no_out, &busy, &long_ago, 0),
            TargetPlan {
                action: None,
                want_hpa: false
            }
        );
        let idle = read(0.0, false);
        assert_eq!(
            to(&plan(&no_out, &idle, &long_ago, 3)),
            Some((0, "ScaledToIdle"))
        );
    }

    fn jiff_seconds(secs: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    use k8s_openapi::ByteString;

    const SO: &str = r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {name: worker, namespace: shop}
spec:
  scaleTargetRef: {name: worker}
  pollingInterval: 7
  triggers:
    - rabbitmq:
        hostFromSecret: {secretKeyRef: {name: rabbit, key: url}}
        queueName: jobs
        mode: QueueLength
        value: 5
"#;

    fn rabbit(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("rabbit".into()),
                namespace: Some("shop".into()),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A follower's context: its reconciles register and send nothing to the API server.
    fn follower() -> Context {
        let nowhere = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let cache = Arc::new(MetricCache::new());
        let (_, leader) = watch::channel(false);
        Context::new(
            kube::Client::try_from(nowhere).unwrap(),
            Arc::new(Registry::new()),
            Arc::clone(&cache),
            leader,
            Arc::new(Metrics::new(cache)),
            "test".into(),
        )
    }

    fn registered(ctx: &Context) -> Option<Registered> {
        let served = ctx.registry.served();
        let object = served.objects.get(&("shop".into(), "worker".into()))?;
        Some((**object).clone())
    }

    #[tokio::test(start_paused = true)]
    async fn secrets_unreadable_for_now_keep_the_registration_and_an_answer_ends_it() {
        let so = Arc::new(serde_norway::from_str::<ScaledObject>(SO).unwrap());
        let listed = || SecretCache::listed_with(vec![rabbit(&[("url", "amqp://u:p@rabbit/")])]);
        let mut ctx = follower();
        ctx.secrets = Arc::new(listed());
        ctx.trigger_auths = Arc::new(TriggerAuthCache::listed_with(vec![], vec![]));
        let good = registration(&so, &ctx).await.unwrap();
        let action = reconcile_object(Arc::clone(&so), &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(7)));
        assert_eq!(registered(&ctx), Some(good.clone()));
        assert_eq!(
            ctx.secrets.objects_naming(&rabbit(&[])).len(),
            1,
            "a change of the Secret reconciles the object"
        );

        // No answer (the Secrets are not listed yet): kept as it was, retried soon.
        ctx.secrets = Arc::new(SecretCache::new());
        let action = reconcile_object(Arc::clone(&so), &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(RETRY_TRANSIENT));
        assert_eq!(registered(&ctx), Some(good.clone()));

        // Answers: a key or a Secret gone unregisters.
        for answer in [vec![rabbit(&[("user", "u")])], vec![]] {
            ctx.registry.upsert(good.clone());
            ctx.secrets = Arc::new(SecretCache::listed_with(answer));
            let action = reconcile_object(Arc::clone(&so), &ctx).await.unwrap();
            assert_eq!(action, Action::requeue(RETRY_BROKEN));
            assert_eq!(registered(&ctx), None);
        }
    }

    #[test]
    fn an_object_of_only_cpu_and_memory_triggers_is_always_active() {
        let rules = ZeroRules::from_spec(
            &serde_json::from_value(serde_json::json!({
                "scaleTargetRef": {"name": "api"},
                "minReplicaCount": 2,
                "idleReplicaCount": 0,
                "triggers": [{"cpu": {"utilization": 60}}]
            }))
            .unwrap(),
        );
        let act = activity(&rules, &[]);
        assert!(act.active && act.all_read && act.fallback.is_none());
        // A failing trigger after a cpu trigger is named by its own index, not its position.
        let fallback = ZeroRules::from_spec(&serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"name": "api"},
            "fallback": {"failureThreshold": 0, "replicas": 2},
            "triggers": [{"cpu": {"utilization": 60}}, {"cron": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 9 * * *", "desiredReplicas": 1}}]
        })).unwrap());
        let cache = MetricCache::new();
        let id = TriggerId {
            namespace: "shop".into(),
            scaled_object: "api".into(),
            index: 1,
        };
        let down = ScalerError::Unreachable {
            broker: "kafka",
            target: "k:9092".into(),
            cause: "refused".into(),
        };
        cache.record(id.clone(), Err(down), Duration::from_millis(1));
        let act = activity_indexed(&fallback, &[cache.get(&id)], &[1]);
        let why = act.fallback.expect("fallback");
        assert!(
            why.starts_with("trigger 1 failed 1 polls in a row"),
            "{why}"
        );
    }

    #[test]
    fn an_api_server_outage_is_retried_sooner_than_a_broken_object() {
        let api = |code| {
            ReconcileError::Kube(kube::Error::Api(Box::new(
                kube::core::Status::failure("m", "r").with_code(code),
            )))
        };
        assert_eq!(retry_after(&api(503)), RETRY_TRANSIENT);
        assert_eq!(retry_after(&api(429)), RETRY_TRANSIENT);
        assert_eq!(retry_after(&api(422)), RETRY_BROKEN);
        assert_eq!(retry_after(&api(403)), RETRY_BROKEN);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            retry_after(&ReconcileError::Kube(kube::Error::Service(Box::new(
                refused
            )))),
            RETRY_TRANSIENT
        );
        assert_eq!(
            retry_after(&ReconcileError::Hpa(HpaError::MissingUid)),
            RETRY_BROKEN
        );
    }

    fn rabbit_auth(namespace: &str) -> TriggerAuthentication {
        use crate::controller::trigger_auth::{SecretTargetRef, TriggerAuthenticationSpec};
        TriggerAuthentication {
            metadata: kube::api::ObjectMeta {
                name: Some("rabbit-auth".into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            spec: TriggerAuthenticationSpec {
                secret_target_ref: vec![SecretTargetRef {
                    parameter: "host".into(),
                    name: "rabbit".into(),
                    key: "url".into(),
                }],
                ..Default::default()
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_come_through_a_trigger_authentication_of_the_objects_namespace_only() {
        let text = SO.replace(
            "        hostFromSecret: {secretKeyRef: {name: rabbit, key: url}}\n",
            "",
        ) + "      authenticationRef: {name: rabbit-auth}\n";
        let so = Arc::new(serde_norway::from_str::<ScaledObject>(&text).unwrap());
        let mut ctx = follower();
        ctx.secrets = Arc::new(SecretCache::listed_with(vec![rabbit(&[(
            "url",
            "amqp://u:p@rabbit/",
        )])]));
        ctx.trigger_auths = Arc::new(TriggerAuthCache::listed_with(
            vec![rabbit_auth("shop")],
            vec![],
        ));
        let action = reconcile_object(Arc::clone(&so), &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(7)));
        let mut config = registered(&ctx).expect("registered").config;
        let (_, trigger) = config.triggers[0].triggers_mut().remove(0);
        let sources = trigger.secret_sources();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].0, "hostFromSecret");
        assert_eq!(sources[0].1.read().unwrap().expose(), "amqp://u:p@rabbit/");
        assert_eq!(
            ctx.trigger_auths.objects_naming(&rabbit_auth("shop")).len(),
            1,
            "a change of the TriggerAuthentication reconciles the object"
        );
        assert_eq!(
            ctx.secrets.objects_naming(&rabbit(&[])).len(),
            1,
            "so does a change of the Secret it maps"
        );

        // Only another namespace has one of that name: unregistered, never served with it.
        ctx.trigger_auths = Arc::new(TriggerAuthCache::listed_with(
            vec![rabbit_auth("other")],
            vec![],
        ));
        let action = reconcile_object(Arc::clone(&so), &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(RETRY_BROKEN));
        assert_eq!(registered(&ctx), None);
    }
}
