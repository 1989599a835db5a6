//! The TriggerAuthentications and ClusterTriggerAuthentications of the cluster, from one watch
//! of each kind held in memory (as [`super::secrets::SecretCache`] holds Secrets): a reconcile
//! reads them from here, and a change of one (created, edited, deleted) reconciles the
//! ScaledObjects naming it at once, which read its Secrets again.
//!
//! A re-list (the watch fell behind) is told when it completes, with the objects deleted
//! meanwhile, as for Secrets.
//!
//! Before the first list a read waits a moment, then answers "not now" (transient: the object
//! keeps its last registration); a refused list (forbidden, or the CRD not installed) answers
//! so, definitely, for the objects that name one, and leaves every other object alone.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::api::{Api, ObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::crd::ScaledObject;
use super::secrets::Referrers;
use super::trigger_auth::{
    ClusterTriggerAuthentication, Credentials, TriggerAuthError, TriggerAuthReader,
    TriggerAuthentication, describe, not_found_hint,
};
use crate::kube_client::ApiFailure;
use crate::secret::{AuthenticationKind, AuthenticationRef, safe_cause};

/// How long a read waits for the first list before answering "not now".
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// What an `authenticationRef` names: its kind, the namespace it is looked for in (empty for
/// the cluster-scoped kind) and its name.
type AuthKey = (AuthenticationKind, String, String);

/// One kind's watched objects and the watch's latest failure.
struct KindStore<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    /// Taken by the one watch that fills `store`.
    writer: Mutex<Option<Writer<K>>>,
    failure: Mutex<Option<(ApiFailure, String)>>,
}

impl<K> KindStore<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    fn new() -> Self {
        let (store, writer) = reflector::store();
        Self {
            store,
            writer: Mutex::new(Some(writer)),
            failure: Mutex::new(None),
        }
    }

    fn listed(&self) -> bool {
        self.store
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|ready| ready.is_ok())
    }

    fn note(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        let failure = event.as_ref().err().map(|err| {
            let (class, cause) = match err {
                watcher::Error::InitialListFailed(err)
                | watcher::Error::WatchStartFailed(err)
                | watcher::Error::WatchFailed(err) => (ApiFailure::of(err), safe_cause(err)),
                watcher::Error::WatchError(status) => (
                    match status.code {
                        410 => ApiFailure::Unavailable,
                        code => ApiFailure::of_code(code),
                    },
                    format!("{} ({})", status.message, status.code),
                ),
                watcher::Error::NoResourceVersion => (ApiFailure::Unavailable, err.to_string()),
            };
            tracing::warn!(kind = %K::kind(&()), error = %cause, definite = class.is_definite(), "the watch failed; retrying");
            (class, cause)
        });
        *self.failure.lock().expect("watch failure") = failure;
    }

    /// The object `name` (in `namespace`, for a namespaced kind), once listed.
    async fn get(
        &self,
        namespace: Option<&str>,
        name: &str,
        object: &str,
    ) -> Result<Option<Arc<K>>, TriggerAuthError> {
        if !self.listed() {
            let err = self.not_listed(object);
            if !err.is_transient() {
                return Err(err);
            }
            let _ = tokio::time::timeout(FIRST_LIST_WAIT, self.store.wait_until_ready()).await;
            if !self.listed() {
                return Err(self.not_listed(object));
            }
        }
        let mut key = ObjectRef::new(name);
        if let Some(namespace) = namespace {
            key = key.within(namespace);
        }
        Ok(self.store.get(&key))
    }

    fn not_listed(&self, object: &str) -> TriggerAuthError {
        let object = object.to_owned();
        let kind = K::kind(&());
        match self.failure.lock().expect("watch failure").clone() {
            Some((class, cause)) if class.is_definite() => TriggerAuthError::Refused {
                object,
                cause: format!(
                    "spillway cannot list and watch {kind}s (is deploy/crd.yaml installed, and deploy/rbac.yaml?): {cause}"
                ),
            },
            Some((_, cause)) => TriggerAuthError::Unavailable {
                object,
                cause: format!("the {kind} cache has not listed the cluster yet: {cause}"),
            },
            None => TriggerAuthError::Unavailable {
                object,
                cause: format!("the {kind} cache has not listed the cluster yet"),
            },
        }
    }

    /// The watch filling the store, once; yields the objects that changed after the store
    /// holds the change. An applied or deleted object as it comes; a (re-)list, which the store
    /// swaps in when it completes, only then: every listed object, and a stub (`stub(name,
    /// namespace)`) of each one the store held before and the list no longer has (deleted
    /// while the watch was away).
    fn watch(
        self: &Arc<Self>,
        api: Api<K>,
        stub: fn(String, Option<String>) -> K,
    ) -> Option<impl Stream<Item = Result<K, watcher::Error>> + Send + 'static> {
        let writer = self.writer.lock().expect("writer").take()?;
        let this = Arc::clone(self);
        let mut changes = ListChanges::new(self.store.clone(), stub);
        Some(
            watcher(api, watcher::Config::default())
                .map(move |event| {
                    this.note(&event);
                    event
                })
                .default_backoff()
                .reflect(writer)
                .flat_map(move |event| {
                    let changed: Vec<Result<K, watcher::Error>> = match event {
                        Ok(event) => changes.after(event).into_iter().map(Ok).collect(),
                        Err(err) => vec![Err(err)],
                    };
                    futures::stream::iter(changed)
                }),
        )
    }
}

/// From the watch's events, once the store has applied them, to the objects that changed (see
/// [`KindStore::watch`]).
struct ListChanges<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    stub: fn(String, Option<String>) -> K,
    /// Before a re-list: what the store held; what is still here when it completes is gone.
    before: HashSet<ObjectRef<K>>,
    relisted: Vec<K>,
}

impl<K> ListChanges<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    fn new(store: Store<K>, stub: fn(String, Option<String>) -> K) -> Self {
        Self {
            store,
            stub,
            before: HashSet::new(),
            relisted: Vec::new(),
        }
    }

    fn after(&mut self, event: watcher::Event<K>) -> Vec<K> {
        match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => vec![object],
            watcher::Event::Init => {
                self.before = self
                    .store
                    .state()
                    .iter()
                    .map(|object| ObjectRef::from_obj(&**object))
                    .collect();
                self.relisted.clear();
                Vec::new()
            }
            watcher::Event::InitApply(object) => {
                self.before.remove(&ObjectRef::from_obj(&object));
                self.relisted.push(object);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let stub = self.stub;
                std::mem::take(&mut self.relisted)
                    .into_iter()
                    .chain(
                        self.before
                            .drain()
                            .map(|gone| stub(gone.name, gone.namespace)),
                    )
                    .collect()
            }
        }
    }
}

/// Both kinds of authentication as last listed and watched, and which ScaledObjects name which.
pub struct TriggerAuthCache {
    namespaced: Arc<KindStore<TriggerAuthentication>>,
    cluster: Arc<KindStore<ClusterTriggerAuthentication>>,
    users: Mutex<Referrers<AuthKey>>,
}

impl Default for TriggerAuthCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TriggerAuthCache {
    pub fn new() -> Self {
        Self {
            namespaced: Arc::new(KindStore::new()),
            cluster: Arc::new(KindStore::new()),
            users: Mutex::new(Referrers::default()),
        }
    }

    /// A cache that has listed `namespaced` and `cluster`, as the watches' first lists leave it.
    #[cfg(test)]
    pub(crate) fn listed_with(
        namespaced: Vec<TriggerAuthentication>,
        cluster: Vec<ClusterTriggerAuthentication>,
    ) -> Self {
        fn fill<K>(store: &KindStore<K>, objects: Vec<K>)
        where
            K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync,
        {
            let mut writer = store.writer.lock().unwrap().take().unwrap();
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(object));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        let cache = Self::new();
        fill(&cache.namespaced, namespaced);
        fill(&cache.cluster, cluster);
        cache
    }

    /// The watches of both kinds, once (`None` when already started).
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        client: kube::Client,
    ) -> Option<(
        impl Stream<Item = Result<TriggerAuthentication, watcher::Error>> + Send + 'static,
        impl Stream<Item = Result<ClusterTriggerAuthentication, watcher::Error>> + Send + 'static,
    )> {
        let namespaced = self
            .namespaced
            .watch(Api::all(client.clone()), |name, namespace| {
                TriggerAuthentication {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace,
                        ..Default::default()
                    },
                    spec: Default::default(),
                }
            })?;
        let cluster =
            self.cluster
                .watch(Api::all(client), |name, _| ClusterTriggerAuthentication {
                    metadata: ObjectMeta {
                        name: Some(name),
                        ..Default::default()
                    },
                    spec: Default::default(),
                })?;
        Some((namespaced, cluster))
    }

    /// Records that `namespace/object` names `references` and no others, so a change of any of
    /// them reconciles it. Call it before reading them.
    pub fn set_named(&self, namespace: &str, object: &str, references: &[AuthenticationRef]) {
        let keys: BTreeSet<AuthKey> = references
            .iter()
            .map(|reference| key_of(reference, namespace))
            .collect();
        self.users
            .lock()
            .expect("authentication users")
            .set(namespace, object, keys);
    }

    /// Keeps the records of the objects for which `keep(namespace, name)` holds.
    pub fn retain_objects(&self, keep: impl Fn(&str, &str) -> bool) {
        self.users
            .lock()
            .expect("authentication users")
            .retain(keep);
    }

    /// The ScaledObjects naming the TriggerAuthentication `ta`.
    pub fn objects_naming(&self, ta: &TriggerAuthentication) -> Vec<ObjectRef<ScaledObject>> {
        let key = (
            AuthenticationKind::TriggerAuthentication,
            ta.metadata.namespace.clone().unwrap_or_default(),
            ta.metadata.name.clone().unwrap_or_default(),
        );
        self.users.lock().expect("authentication users").of(&key)
    }

    /// The ScaledObjects naming the ClusterTriggerAuthentication `cta`.
    pub fn objects_naming_cluster(
        &self,
        cta: &ClusterTriggerAuthentication,
    ) -> Vec<ObjectRef<ScaledObject>> {
        let key = (
            AuthenticationKind::ClusterTriggerAuthentication,
            String::new(),
            cta.metadata.name.clone().unwrap_or_default(),
        );
        self.users.lock().expect("authentication users").of(&key)
    }
}

/// The key of `reference` as named from `namespace`.
fn key_of(reference: &AuthenticationRef, namespace: &str) -> AuthKey {
    match reference.kind {
        AuthenticationKind::TriggerAuthentication => {
            (reference.kind, namespace.to_owned(), reference.name.clone())
        }
        AuthenticationKind::ClusterTriggerAuthentication => {
            (reference.kind, String::new(), reference.name.clone())
        }
    }
}

impl TriggerAuthReader for TriggerAuthCache {
    async fn read_authentication(
        &self,
        namespace: &str,
        reference: &AuthenticationRef,
    ) -> Result<Credentials, TriggerAuthError> {
        let object = describe(reference, namespace);
        let found = match reference.kind {
            AuthenticationKind::TriggerAuthentication => self
                .namespaced
                .get(Some(namespace), &reference.name, &object)
                .await?
                .map(|ta| ta.spec.credentials()),
            AuthenticationKind::ClusterTriggerAuthentication => self
                .cluster
                .get(None, &reference.name, &object)
                .await?
                .map(|cta| cta.spec.credentials()),
        };
        found.ok_or(TriggerAuthError::NotFound {
            object,
            hint: not_found_hint(reference.kind),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::trigger_auth::{
        ClusterTriggerAuthenticationSpec, SecretTargetRef, TriggerAuthenticationSpec,
    };

    fn target() -> Vec<SecretTargetRef> {
        vec![SecretTargetRef {
            parameter: "host".into(),
            name: "rabbit".into(),
            key: "url".into(),
        }]
    }

    fn ta(namespace: &str, name: &str) -> TriggerAuthentication {
        TriggerAuthentication {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            spec: TriggerAuthenticationSpec {
                secret_target_ref: target(),
                ..Default::default()
            },
        }
    }

    fn cta(name: &str) -> ClusterTriggerAuthentication {
        ClusterTriggerAuthentication {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: ClusterTriggerAuthenticationSpec {
                secret_target_ref: target(),
                ..Default::default()
            },
        }
    }

    fn reference(name: &str, kind: AuthenticationKind) -> AuthenticationRef {
        AuthenticationRef {
            name: name.into(),
            kind,
        }
    }

    #[tokio::test]
    async fn a_trigger_authentication_is_read_from_the_objects_namespace_only() {
        let cache =
            TriggerAuthCache::listed_with(vec![ta("team-a", "rabbit")], vec![cta("shared")]);
        let ours = cache
            .read_authentication(
                "team-a",
                &reference("rabbit", AuthenticationKind::TriggerAuthentication),
            )
            .await
            .unwrap();
        assert_eq!(ours.secret_target_ref, target());
        let theirs = cache
            .read_authentication(
                "team-b",
                &reference("rabbit", AuthenticationKind::TriggerAuthentication),
            )
            .await
            .unwrap_err();
        assert_eq!(
            theirs.to_string(),
            "TriggerAuthentication team-b/rabbit does not exist (a TriggerAuthentication is read from the ScaledObject's own namespace only)"
        );
        assert!(!theirs.is_transient());
        for namespace in ["team-a", "team-b"] {
            let shared = cache
                .read_authentication(
                    namespace,
                    &reference("shared", AuthenticationKind::ClusterTriggerAuthentication),
                )
                .await
                .unwrap();
            assert_eq!(shared.secret_target_ref, target());
        }
        // A namespaced one is never found by the cluster kind, nor the other way round.
        assert!(
            cache
                .read_authentication(
                    "team-a",
                    &reference("rabbit", AuthenticationKind::ClusterTriggerAuthentication)
                )
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_first_list_a_read_is_transient_and_a_refused_list_is_definite() {
        let cache = TriggerAuthCache::new();
        let reference = reference("rabbit", AuthenticationKind::TriggerAuthentication);
        let err = cache
            .read_authentication("team-a", &reference)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        let missing_crd = kube::Error::Api(
            kube::core::Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(404)
            .boxed(),
        );
        cache
            .namespaced
            .note(&Err(watcher::Error::InitialListFailed(missing_crd)));
        let err = cache
            .read_authentication("team-a", &reference)
            .await
            .unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert_eq!(err.reason(), "TriggerAuthenticationNotReadable");
        assert!(
            err.to_string().contains("is deploy/crd.yaml installed"),
            "{err}"
        );
    }

    #[test]
    fn a_change_finds_the_objects_naming_it() {
        let cache = TriggerAuthCache::new();
        let ta_ref = reference("rabbit", AuthenticationKind::TriggerAuthentication);
        let cta_ref = reference("shared", AuthenticationKind::ClusterTriggerAuthentication);
        cache.set_named("team-a", "worker", &[ta_ref.clone(), cta_ref.clone()]);
        cache.set_named("team-b", "worker", &[ta_ref, cta_ref]);
        let names = |refs: Vec<ObjectRef<ScaledObject>>| -> Vec<String> {
            refs.iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            names(cache.objects_naming(&ta("team-a", "rabbit"))),
            ["ScaledObject.v1alpha1.spillway.dev/worker.team-a"]
        );
        assert_eq!(cache.objects_naming_cluster(&cta("shared")).len(), 2);
        assert!(cache.objects_naming(&ta("team-c", "rabbit")).is_empty());
        cache.retain_objects(|namespace, _| namespace != "team-a");
        assert!(cache.objects_naming(&ta("team-a", "rabbit")).is_empty());
        assert_eq!(cache.objects_naming_cluster(&cta("shared")).len(), 1);
    }

    #[test]
    fn a_relist_tells_its_objects_and_those_deleted_meanwhile_only_when_complete() {
        let (store, mut writer) = reflector::store::<TriggerAuthentication>();
        let mut changes = ListChanges::new(store, |name, namespace| TriggerAuthentication {
            metadata: ObjectMeta {
                name: Some(name),
                namespace,
                ..Default::default()
            },
            spec: Default::default(),
        });
        let mut feed = |event: watcher::Event<TriggerAuthentication>| {
            writer.apply_watcher_event(&event);
            let mut names: Vec<String> = changes
                .after(event)
                .iter()
                .map(|ta| ObjectRef::from_obj(ta).to_string())
                .collect();
            names.sort();
            names
        };
        assert!(feed(watcher::Event::Init).is_empty());
        assert!(feed(watcher::Event::InitApply(ta("a", "kept"))).is_empty());
        assert!(feed(watcher::Event::InitApply(ta("a", "deleted"))).is_empty());
        assert_eq!(feed(watcher::Event::InitDone).len(), 2);
        assert_eq!(feed(watcher::Event::Apply(ta("a", "new"))).len(), 1);
        // The watch fell behind: "deleted" went meanwhile.
        assert!(feed(watcher::Event::Init).is_empty());
        assert!(feed(watcher::Event::InitApply(ta("a", "kept"))).is_empty());
        assert!(feed(watcher::Event::InitApply(ta("a", "new"))).is_empty());
        assert_eq!(
            feed(watcher::Event::InitDone),
            [
                "TriggerAuthentication.v1alpha1.spillway.dev/deleted.a",
                "TriggerAuthentication.v1alpha1.spillway.dev/kept.a",
                "TriggerAuthentication.v1alpha1.spillway.dev/new.a",
            ]
        );
    }
}
