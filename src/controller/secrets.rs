//! The Secrets that ScaledObjects name, from one cluster-wide watch held in memory. Reconciles
//! read credentials from this cache, never with a GET per object per polling interval, and a
//! change of a Secret (a rotation, a deletion) reconciles the objects that name it at once.
//!
//! Until the first list is complete a read waits a moment, then answers "not now"
//! ([`SecretError::Unavailable`], transient: the object keeps its last registration), never "not
//! found"; a forbidden list answers [`SecretError::Refused`]. Once listed, the cache answers
//! from memory even while the API server is unreachable, and the watch catches up when it is
//! back. RBAC: `list` and `watch` on `secrets` in every namespace (`deploy/rbac.yaml`).
//!
//! Memory: every watched Secret is held, stripped to its name, namespace, resourceVersion, type
//! and data (annotations go: kubectl's last-applied-configuration repeats the whole Secret; so
//! do labels and managedFields). Helm release records (`type: helm.sh/release.v1`, up to 1 MiB
//! each, one per revision) are not watched at all, so a trigger cannot name one. A re-list holds
//! the old and the new copy until it completes.
//!
//! With a label selector (`--secret-label-selector spillway.dev/credentials=true`) the watch
//! asks the API server for matching Secrets only, so spillway never holds the others; a
//! trigger naming an unlabelled Secret is told the label is missing (one metadata-only list by
//! name tells it from a Secret that does not exist). RBAC cannot grant by label: the option
//! limits what spillway holds, not what it may list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};

use super::crd::ScaledObject;
use crate::kube_client::ApiFailure;
use crate::secret::{SecretError, SecretReader, SecretString, safe_cause, secret_key};

/// The Secrets the watch leaves out (see the module doc).
const UNWATCHED: &str = "type!=helm.sh/release.v1";
/// How long a read waits for the first list before answering "not now". At start the list is
/// usually a moment away; waiting spares a round of requeues.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// The Secrets of the cluster as last listed and watched, and which ScaledObjects name which.
pub struct SecretCache {
    store: Store<Secret>,
    /// Taken by the one watch that fills `store`.
    writer: Mutex<Option<Writer<Secret>>>,
    /// The watch's latest failure, cleared by its next event: what a read answers before the
    /// first list completes.
    watch_failure: Mutex<Option<(ApiFailure, String)>>,
    /// (namespace, Secret) -> the ScaledObjects naming it.
    users: Mutex<Referrers<(String, String)>>,
    /// Only Secrets matching this label selector are watched.
    label_selector: Option<String>,
    /// The watch's client, for telling an unlabelled Secret from a missing one.
    client: OnceLock<kube::Client>,
}

impl Default for SecretCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretCache {
    pub fn new() -> Self {
        Self::with_label_selector(None)
    }

    /// A cache that holds only the Secrets matching `selector` (all with `None`).
    pub fn with_label_selector(selector: Option<String>) -> Self {
        let (store, writer) = reflector::store();
        Self {
            store,
            writer: Mutex::new(Some(writer)),
            watch_failure: Mutex::new(None),
            users: Mutex::new(Referrers::default()),
            label_selector: selector,
            client: OnceLock::new(),
        }
    }

    /// A cache that has listed `secrets`, as the watch's first list leaves it.
    #[cfg(test)]
    pub(crate) fn listed_with(secrets: Vec<Secret>) -> Self {
        let cache = Self::new();
        let mut writer = cache.writer.lock().unwrap().take().unwrap();
        writer.apply_watcher_event(&watcher::Event::Init);
        for mut secret in secrets {
            strip(&mut secret);
            writer.apply_watcher_event(&watcher::Event::InitApply(secret));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The writer is dropped: a listed store keeps answering.
        cache
    }

    /// The watch that fills the cache, once (`None` when already started). It yields the
    /// Secrets that changed, after the cache holds the change, for the controller to map to the
    /// objects naming them ([`SecretCache::objects_naming`]); and the watch's errors, which
    /// it retries with backoff.
    pub fn watch(
        self: &Arc<Self>,
        client: kube::Client,
    ) -> Option<impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static> {
        let writer = self.writer.lock().expect("secret writer").take()?;
        let _ = self.client.set(client.clone());
        let api: Api<Secret> = Api::all(client);
        let cache = Arc::clone(self);
        let mut changes = Changes::new(self.store.clone());
        let mut config = watcher::Config::default().fields(UNWATCHED);
        if let Some(selector) = &self.label_selector {
            config = config.labels(selector);
        }
        let stream = watcher(api, config)
            .map(move |event| {
                cache.note_watch(&event);
                event
            })
            .default_backoff()
            .modify(strip)
            .reflect(writer)
            .flat_map(move |event| {
                let items: Vec<_> = match event {
                    Ok(event) => changes.after(event).into_iter().map(Ok).collect(),
                    Err(err) => vec![Err(err)],
                };
                futures::stream::iter(items)
            });
        Some(stream)
    }

    /// Records that the object `namespace/object` names `secrets` (namespace, name; a
    /// ClusterTriggerAuthentication's are in spillway's namespace) and no others, so a change
    /// of any of them reconciles it. Call it before reading them: a change that lands after
    /// the read then still finds the object.
    pub fn set_named(&self, namespace: &str, object: &str, secrets: BTreeSet<(String, String)>) {
        self.users
            .lock()
            .expect("secret users")
            .set(namespace, object, secrets);
    }

    /// Keeps the records of the objects for which `keep(namespace, name)` holds.
    pub fn retain_objects(&self, keep: impl Fn(&str, &str) -> bool) {
        self.users.lock().expect("secret users").retain(keep);
    }

    /// The ScaledObjects that name `secret`.
    pub fn objects_naming(&self, secret: &Secret) -> Vec<ObjectRef<ScaledObject>> {
        let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name)
        else {
            return Vec::new();
        };
        self.users
            .lock()
            .expect("secret users")
            .of(&(namespace.clone(), name.clone()))
    }

    /// True once the first list is complete.
    fn listed(&self) -> bool {
        self.store
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|ready| ready.is_ok())
    }

    fn note_watch(&self, event: &Result<watcher::Event<Secret>, watcher::Error>) {
        let failure = match event {
            Ok(_) => None,
            Err(err) => {
                let (class, cause) = watch_failure(err);
                tracing::warn!(error = %cause, definite = class.is_definite(), "the Secret watch failed; retrying");
                Some((class, cause))
            }
        };
        *self.watch_failure.lock().expect("watch failure") = failure;
    }

    /// What a read answers while the first list is not complete.
    fn not_listed(&self, namespace: &str, name: &str, key: &str) -> SecretError {
        let (namespace, name, key) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        match self.watch_failure.lock().expect("watch failure").clone() {
            Some((class, cause)) if class.is_definite() => SecretError::Refused {
                namespace,
                name,
                key,
                cause: format!("spillway cannot list and watch Secrets: {cause}"),
            },
            Some((_, cause)) => SecretError::Unavailable {
                namespace,
                name,
                key,
                cause: format!("the Secret cache has not listed the cluster yet: {cause}"),
            },
            None => SecretError::Unavailable {
                namespace,
                name,
                key,
                cause: "the Secret cache has not listed the cluster yet".into(),
            },
        }
    }
}

impl SecretReader for SecretCache {
    async fn read_key(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<SecretString, SecretError> {
        if !self.listed() {
            let err = self.not_listed(namespace, name, key);
            if !err.is_transient() {
                return Err(err);
            }
            let _ = tokio::time::timeout(FIRST_LIST_WAIT, self.store.wait_until_ready()).await;
            if !self.listed() {
                return Err(self.not_listed(namespace, name, key));
            }
        }
        match self.store.get(&ObjectRef::new(name).within(namespace)) {
            Some(secret) => secret_key(&secret, namespace, name, key),
            None => Err(self.not_held(namespace, name, key).await),
        }
    }
}

impl SecretCache {
    /// Why a listed cache does not hold `namespace/name`: it does not exist, or (with a label
    /// selector) it exists without the label, told apart by a metadata-only list by name (no
    /// data is fetched). Should that list fail, the Secret counts as missing.
    async fn not_held(&self, namespace: &str, name: &str, key: &str) -> SecretError {
        let (namespace, name, key) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        if let (Some(selector), Some(client)) = (&self.label_selector, self.client.get()) {
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
            match api.list_metadata(&by_name).await {
                Ok(list) if !list.items.is_empty() => {
                    return SecretError::NotLabelled {
                        namespace,
                        name,
                        key,
                        selector: selector.clone(),
                    };
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%namespace, secret = %name, error = %safe_cause(&err), "cannot tell an unlabelled Secret from a missing one");
                }
            }
        }
        SecretError::NotFound {
            namespace,
            name,
            key,
        }
    }
}

/// The class and a loggable cause of a failed watch request.
fn watch_failure(err: &watcher::Error) -> (ApiFailure, String) {
    match err {
        watcher::Error::InitialListFailed(err)
        | watcher::Error::WatchStartFailed(err)
        | watcher::Error::WatchFailed(err) => (ApiFailure::of(err), safe_cause(err)),
        watcher::Error::WatchError(status) => {
            // 410 Gone says the watch fell behind; it lists again, nothing is refused.
            let class = match status.code {
                410 => ApiFailure::Unavailable,
                code => ApiFailure::of_code(code),
            };
            (class, format!("{} ({})", status.message, status.code))
        }
        watcher::Error::NoResourceVersion => (ApiFailure::Unavailable, err.to_string()),
    }
}

/// Keeps what a read needs: metadata name, namespace and resourceVersion (the store's key and
/// what tells a change), the type and the data.
fn strip(secret: &mut Secret) {
    let ObjectMeta {
        annotations,
        labels,
        managed_fields,
        owner_references,
        finalizers,
        ..
    } = &mut secret.metadata;
    *annotations = None;
    *labels = None;
    *managed_fields = None;
    *owner_references = None;
    *finalizers = None;
    secret.string_data = None;
}

/// Which ScaledObjects (by namespace and name) name which things (Secrets by namespace and
/// name, authentications), both ways, so a change of one finds its objects without walking
/// every object.
#[derive(Debug)]
pub(crate) struct Referrers<T> {
    /// What is named -> the objects naming it.
    by_named: BTreeMap<T, BTreeSet<(String, String)>>,
    /// (namespace, object) -> what it names.
    by_object: BTreeMap<(String, String), BTreeSet<T>>,
}

impl<T> Default for Referrers<T> {
    fn default() -> Self {
        Self {
            by_named: BTreeMap::new(),
            by_object: BTreeMap::new(),
        }
    }
}

impl<T: Ord + Clone> Referrers<T> {
    /// Records that `namespace/object` names `named` and nothing else.
    pub(crate) fn set(&mut self, namespace: &str, object: &str, named: BTreeSet<T>) {
        self.remove(namespace, object);
        if named.is_empty() {
            return;
        }
        let key = (namespace.to_owned(), object.to_owned());
        for item in &named {
            self.by_named
                .entry(item.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_object.insert(key, named);
    }

    fn remove(&mut self, namespace: &str, object: &str) {
        let key = (namespace.to_owned(), object.to_owned());
        for item in self.by_object.remove(&key).unwrap_or_default() {
            if let Some(objects) = self.by_named.get_mut(&item) {
                objects.remove(&key);
                if objects.is_empty() {
                    self.by_named.remove(&item);
                }
            }
        }
    }

    /// Keeps the records of the objects for which `keep(namespace, name)` holds.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        let gone: Vec<(String, String)> = self
            .by_object
            .keys()
            .filter(|(namespace, object)| !keep(namespace, object))
            .cloned()
            .collect();
        for (namespace, object) in gone {
            self.remove(&namespace, &object);
        }
    }

    /// The objects naming `item`, as references for the controller's queue.
    pub(crate) fn of(&self, item: &T) -> Vec<ObjectRef<ScaledObject>> {
        self.by_named
            .get(item)
            .into_iter()
            .flatten()
            .map(|(namespace, object)| ObjectRef::new(object).within(namespace))
            .collect()
    }
}

/// From the watch's events, once the store has applied them, to the Secrets that changed.
/// An added, modified or deleted Secret is a change as it comes. A re-list (after the watch
/// fell too far behind, or at start) is applied by the store in one swap when it completes, so
/// its changes are told only then: a reconcile they trigger must read the new content. Only
/// what differs from before the re-list counts (a new resourceVersion, a Secret gone), so a
/// re-list does not reconcile every object.
struct Changes {
    store: Store<Secret>,
    /// Before a re-list: the resourceVersion of each Secret the store held; what is still
    /// here when the re-list completes was deleted meanwhile.
    before: HashMap<ObjectRef<Secret>, Option<String>>,
    relisted: Vec<ObjectRef<Secret>>,
}

impl Changes {
    fn new(store: Store<Secret>) -> Self {
        Self {
            store,
            before: HashMap::new(),
            relisted: Vec::new(),
        }
    }

    fn after(&mut self, event: watcher::Event<Secret>) -> Vec<Secret> {
        match event {
            watcher::Event::Apply(secret) | watcher::Event::Delete(secret) => vec![secret],
            watcher::Event::Init => {
                self.before = self
                    .store
                    .state()
                    .iter()
                    .map(|s| {
                        (
                            ObjectRef::from_obj(&**s),
                            s.metadata.resource_version.clone(),
                        )
                    })
                    .collect();
                self.relisted.clear();
                Vec::new()
            }
            watcher::Event::InitApply(secret) => {
                let key = ObjectRef::from_obj(&secret);
                let changed = match self.before.remove(&key) {
                    Some(version) => version != secret.metadata.resource_version,
                    None => true,
                };
                if changed {
                    self.relisted.push(key);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let deleted = std::mem::take(&mut self.before).into_keys();
                std::mem::take(&mut self.relisted)
                    .into_iter()
                    .chain(deleted)
                    .map(|key| Secret {
                        metadata: ObjectMeta {
                            name: Some(key.name),
                            namespace: key.namespace,
                            ..Default::default()
                        },
                        ..Default::default()
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    fn secret(namespace: &str, name: &str, version: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                resource_version: Some(version.into()),
                annotations: Some(BTreeMap::from([(
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{\"data\":{\"password\":\"aHVudGVyMg==\"}}".into(),
                )])),
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

    fn names(secrets: &[Secret]) -> Vec<String> {
        secrets
            .iter()
            .map(|s| {
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect()
    }

    fn key_of(
        cache: &SecretCache,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<String, SecretError> {
        cache
            .read_key(namespace, name, key)
            .now_or_never()
            .expect("a listed cache answers at once")
            .map(|value| value.expose().to_owned())
    }

    #[test]
    fn a_listed_cache_answers_definitely() {
        let cache = SecretCache::listed_with(vec![secret(
            "shop",
            "rabbit",
            "1",
            &[("url", "amqp://u:p@host/\n")],
        )]);
        assert_eq!(
            key_of(&cache, "shop", "rabbit", "url").unwrap(),
            "amqp://u:p@host/"
        );
        let cases = [
            (
                "shop",
                "gone",
                "url",
                "SecretNotFound",
                "secret shop/gone (key url) does not exist",
            ),
            (
                "other",
                "rabbit",
                "url",
                "SecretNotFound",
                "secret other/rabbit (key url) does not exist",
            ),
            (
                "shop",
                "rabbit",
                "password",
                "SecretKeyNotFound",
                "secret shop/rabbit has no key password",
            ),
        ];
        for (namespace, name, key, reason, message) in cases {
            let err = key_of(&cache, namespace, name, key).unwrap_err();
            assert!(!err.is_transient(), "{err}");
            assert_eq!((err.reason(), err.to_string().as_str()), (reason, message));
        }
    }

    #[test]
    fn the_cache_keeps_what_a_read_needs() {
        let cache = SecretCache::listed_with(vec![secret("shop", "rabbit", "7", &[("url", "x")])]);
        let held = cache
            .store
            .get(&ObjectRef::new("rabbit").within("shop"))
            .unwrap();
        assert_eq!(
            held.metadata.annotations, None,
            "last-applied-configuration repeats the data"
        );
        assert_eq!(held.metadata.resource_version.as_deref(), Some("7"));
        assert!(held.data.as_ref().unwrap().contains_key("url"));
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_first_list_a_read_is_transient_and_a_forbidden_list_is_definite() {
        let cache = SecretCache::new();
        let err = cache.read_key("shop", "rabbit", "url").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(
            err.to_string(),
            "secret shop/rabbit (key url) cannot be read now: the Secret cache has not listed the cluster yet"
        );

        let refused = kube::Error::Api(
            kube::core::Status::failure("secrets is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        );
        cache.note_watch(&Err(watcher::Error::InitialListFailed(refused)));
        let err = cache.read_key("shop", "rabbit", "url").await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert_eq!(err.reason(), "SecretNotReadable");
        assert!(
            err.to_string()
                .contains("spillway cannot list and watch Secrets"),
            "{err}"
        );

        let throttled = kube::Error::Api(
            kube::core::Status::failure("too many requests", "TooManyRequests")
                .with_code(429)
                .boxed(),
        );
        cache.note_watch(&Err(watcher::Error::InitialListFailed(throttled)));
        let err = cache.read_key("shop", "rabbit", "url").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("too many requests (429)"), "{err}");
    }

    #[tokio::test]
    async fn a_watch_on_a_refusing_port_answers_not_now() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let cache = Arc::new(SecretCache::new());
        let watch = cache.watch(client.clone()).expect("the first watch");
        assert!(cache.watch(client).is_none(), "one watch per cache");
        let driven = tokio::spawn(watch.for_each(|_| async {}));
        let err = cache.read_key("shop", "rabbit", "url").await.unwrap_err();
        driven.abort();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("has not listed the cluster yet: "),
            "{err}"
        );
    }

    #[test]
    fn a_secret_finds_the_objects_naming_it() {
        let cache = SecretCache::new();
        let names = |namespace: &str, list: &[&str]| {
            list.iter()
                .map(|s| (namespace.to_owned(), (*s).to_owned()))
                .collect()
        };
        cache.set_named("shop", "orders", names("shop", &["rabbit", "kafka"]));
        cache.set_named("shop", "billing", names("shop", &["rabbit"]));
        cache.set_named("other", "orders", names("other", &["rabbit"]));
        // A ClusterTriggerAuthentication's Secret lives in spillway's namespace.
        cache.set_named("other", "billing", names("spillway-system", &["shared"]));
        let naming = |namespace: &str, name: &str| -> Vec<String> {
            cache
                .objects_naming(&secret(namespace, name, "1", &[]))
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            naming("shop", "rabbit"),
            [
                "ScaledObject.v1alpha1.spillway.dev/billing.shop",
                "ScaledObject.v1alpha1.spillway.dev/orders.shop"
            ]
        );
        assert_eq!(naming("shop", "kafka").len(), 1);
        assert!(naming("shop", "unused").is_empty());

        // A spec change names other Secrets; a deleted object names none.
        cache.set_named("shop", "orders", names("shop", &["kafka"]));
        assert_eq!(naming("shop", "rabbit").len(), 1);
        cache.retain_objects(|namespace, _| namespace != "shop");
        assert!(naming("shop", "kafka").is_empty());
        assert!(naming("shop", "rabbit").is_empty());
        assert_eq!(naming("other", "rabbit").len(), 1);
        assert_eq!(
            naming("spillway-system", "shared"),
            ["ScaledObject.v1alpha1.spillway.dev/billing.other"]
        );
    }

    #[test]
    fn a_relist_tells_only_what_changed_and_only_when_complete() {
        let (store, mut writer) = reflector::store::<Secret>();
        let mut changes = Changes::new(store);
        // Each event goes to the store first, as `reflect` does, then to `changes`.
        let mut feed = |event: watcher::Event<Secret>| {
            writer.apply_watcher_event(&event);
            names(&changes.after(event))
        };
        assert!(feed(watcher::Event::Init).is_empty());
        assert!(feed(watcher::Event::InitApply(secret("a", "same", "1", &[]))).is_empty());
        assert!(feed(watcher::Event::InitApply(secret("a", "rotated", "1", &[]))).is_empty());
        assert!(feed(watcher::Event::InitApply(secret("a", "deleted", "1", &[]))).is_empty());
        assert_eq!(
            feed(watcher::Event::InitDone).len(),
            3,
            "the first list is all new"
        );
        assert_eq!(
            feed(watcher::Event::Apply(secret("a", "rotated", "2", &[]))),
            ["a/rotated"]
        );
        assert_eq!(
            feed(watcher::Event::Delete(secret("a", "rotated", "2", &[]))),
            ["a/rotated"]
        );
        assert_eq!(
            feed(watcher::Event::Apply(secret("a", "rotated", "3", &[]))),
            ["a/rotated"]
        );

        // The watch fell behind: a re-list where "rotated" changed, "deleted" is gone and
        // "added" is new.
        assert!(feed(watcher::Event::Init).is_empty());
        for relisted in [
            secret("a", "same", "1", &[]),
            secret("a", "rotated", "4", &[]),
            secret("a", "added", "5", &[]),
        ] {
            assert!(feed(watcher::Event::InitApply(relisted)).is_empty());
        }
        let mut told = feed(watcher::Event::InitDone);
        told.sort();
        assert_eq!(told, ["a/added", "a/deleted", "a/rotated"]);
    }
}
