//! Reading KEDA's objects from a cluster through the kubeconfig: ScaledObjects, ScaledJobs
//! and TriggerAuthentications of one namespace or all, the ClusterTriggerAuthentications
//! (with a namespace: only those its ScaledObjects name), and the Secrets the authentications
//! name, read only to check that they and their keys exist. A Secret's values are never kept
//! or printed: only its key names are looked at.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

use super::input::Documents;
use super::{ImportError, KEDA_API_VERSION, KedaKind, KedaObject};
use crate::secret::safe_cause;

/// The kinds listed, with their plural and scope.
const KINDS: [(KedaKind, &str, bool); 4] = [
    (
        KedaKind::TriggerAuthentication,
        "triggerauthentications",
        true,
    ),
    (
        KedaKind::ClusterTriggerAuthentication,
        "clustertriggerauthentications",
        false,
    ),
    (KedaKind::ScaledObject, "scaledobjects", true),
    (KedaKind::ScaledJob, "scaledjobs", true),
];

/// KEDA's objects in `namespace` (every namespace when `None`), their Secrets checked: those
/// of a ClusterTriggerAuthentication in `keda_namespace` (KEDA's ClusterObjectNamespace).
pub async fn read(
    client: &kube::Client,
    namespace: Option<&str>,
    keda_namespace: &str,
) -> Result<Documents, ImportError> {
    let mut objects = Vec::new();
    for (kind, plural, namespaced) in KINDS {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", kind.as_str());
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = match (namespaced, namespace) {
            (true, Some(namespace)) => Api::namespaced_with(client.clone(), namespace, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            // KEDA without ScaledJobs (or an older KEDA): nothing of that kind to import.
            Err(kube::Error::Api(status)) if status.code == 404 && kind == KedaKind::ScaledJob => {
                continue;
            }
            Err(err) => {
                return Err(ImportError::Cluster {
                    what: format!("{KEDA_API_VERSION} {plural}"),
                    cause: safe_cause(&err),
                });
            }
        };
        for item in list.items {
            let mut value = serde_json::to_value(&item).expect("a listed object serializes");
            // List items carry no type of their own.
            value["apiVersion"] = KEDA_API_VERSION.into();
            value["kind"] = kind.as_str().into();
            objects.push(KedaObject {
                kind,
                source: "cluster".to_owned(),
                value,
                problems: Vec::new(),
            });
        }
    }
    if namespace.is_some() {
        let named: BTreeSet<String> = objects
            .iter()
            .filter(|o| o.kind == KedaKind::ScaledObject)
            .flat_map(|o| {
                o.value
                    .pointer("/spec/triggers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|t| {
                t.pointer("/authenticationRef/kind").and_then(Value::as_str)
                    == Some("ClusterTriggerAuthentication")
            })
            .filter_map(|t| {
                t.pointer("/authenticationRef/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        objects.retain(|o| {
            o.kind != KedaKind::ClusterTriggerAuthentication || named.contains(&o.name())
        });
    }
    let mut secrets = SecretKeys::default();
    for object in &mut objects {
        let secret_namespace = match object.kind {
            KedaKind::TriggerAuthentication => {
                object.namespace().unwrap_or_else(|| "default".into())
            }
            KedaKind::ClusterTriggerAuthentication => keda_namespace.to_owned(),
            _ => continue,
        };
        let targets = object
            .value
            .pointer("/spec/secretTargetRef")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for target in targets {
            let text = |key: &str| target.get(key).and_then(Value::as_str).map(str::to_owned);
            let (Some(name), Some(key)) = (text("name"), text("key")) else {
                continue;
            };
            if let Some(problem) = secrets.check(client, &secret_namespace, &name, &key).await {
                object.problems.push(problem);
            }
        }
    }
    Ok(Documents {
        objects,
        ignored: Vec::new(),
    })
}

/// The key names of the Secrets read so far (each read once), or why one could not be read.
#[derive(Default)]
struct SecretKeys(BTreeMap<(String, String), Result<BTreeSet<String>, String>>);

impl SecretKeys {
    /// Why `key` of Secret `namespace/name` cannot be used, if it cannot.
    async fn check(
        &mut self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Option<String> {
        let id = (namespace.to_owned(), name.to_owned());
        if !self.0.contains_key(&id) {
            let keys = match Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
            {
                Ok(Some(secret)) => Ok(secret
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .chain(secret.string_data.into_iter().flatten().map(|(k, _)| k))
                    .collect()),
                Ok(None) => Err(format!("Secret {namespace}/{name} does not exist")),
                Err(err) => Err(format!(
                    "Secret {namespace}/{name} cannot be read: {}",
                    safe_cause(&err)
                )),
            };
            self.0.insert(id.clone(), keys);
        }
        match &self.0[&id] {
            Ok(keys) if keys.contains(key) => None,
            Ok(_) => Some(format!("Secret {namespace}/{name} has no key {key}")),
            Err(problem) => Some(problem.clone()),
        }
    }
}
