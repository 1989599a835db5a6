//! The validating admission webhook for ScaledObjects (`POST /validate/scaledobjects`,
//! registered by `deploy/webhook.yaml`): a ScaledObject sets its target's replicas through
//! spillway's cluster-wide `*/scale` rights, so whoever writes one must be allowed to do that
//! themselves. For a CREATE, or an UPDATE that changes the spec, kube-apiserver's
//! `userInfo` is asked by SubjectAccessReview whether it may `update` the `<resource>/scale`
//! of the target (its group and resource found by discovery); no is a refusal that says
//! which right is missing. A `spec.advanced.scalingModifiers.formula` that does not compile
//! over the object's trigger names is refused too (400), with the compiler's reason.
//!
//! kube-apiserver calls the webhook without a client identity, so the route is not behind the
//! aggregator's authentication: anyone reaching it learns only what SubjectAccessReview says
//! about the request they sent, and at most [`MAX_REVIEWS_IN_FLIGHT`] reviews run at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::crd::{ScaleTargetRef, ScaledObject};

/// Where kube-apiserver sends ScaledObject writes (`deploy/webhook.yaml`'s `clientConfig.path`).
pub const PATH: &str = "/validate/scaledobjects";
/// Reviews (discovery and SubjectAccessReview) running at once; more wait up to the timeout.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 8;
/// kube-apiserver gives the webhook 5 s (`timeoutSeconds`); answer within that.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(4);

/// What the webhook shares: the client that asks, the resources found by discovery.
#[derive(Clone)]
struct Webhook {
    client: kube::Client,
    /// Plural resource names by (apiVersion, kind).
    resources: Arc<Mutex<HashMap<(String, String), String>>>,
    slots: Arc<Semaphore>,
}

/// The webhook's route, asking `client`'s cluster.
pub fn router(client: kube::Client) -> Router {
    Router::new().route(PATH, post(review)).with_state(Webhook {
        client,
        resources: Arc::new(Mutex::new(HashMap::new())),
        slots: Arc::new(Semaphore::new(MAX_REVIEWS_IN_FLIGHT)),
    })
}

/// The parts of an `admission.k8s.io/v1` AdmissionReview the webhook reads.
#[derive(Debug, Deserialize)]
struct AdmissionReview {
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionRequest {
    uid: String,
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    user_info: UserInfo,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<Value>,
}

/// The scale right a request needs, if any.
#[derive(Debug, Clone, PartialEq)]
struct ScaleRight {
    namespace: String,
    target: ScaleTargetRef,
}

/// What must be checked for `request`: nothing for a DELETE or an UPDATE that leaves the spec
/// as it was (status, labels, finalizers); the target's scale right otherwise.
fn needed_right(request: &AdmissionRequest) -> Result<Option<ScaleRight>, String> {
    let parse = |value: &Value| -> Result<ScaledObject, String> {
        serde_json::from_value(value.clone())
            .map_err(|err| format!("the object is not a ScaledObject: {err}"))
    };
    let object = match (request.operation.as_str(), &request.object) {
        ("CREATE" | "UPDATE", Some(object)) => parse(object)?,
        ("CREATE" | "UPDATE", None) => return Err("the request carries no object".into()),
        _ => return Ok(None),
    };
    if request.operation == "UPDATE"
        && let Some(old) = &request.old_object
        && parse(old).is_ok_and(|old| old.spec == object.spec)
    {
        return Ok(None);
    }
    // A formula is a program the API server's schema cannot check: refused here, as KEDA's
    // webhook does, rather than stored and refused later in the object's status.
    object.composite().map_err(|err| err.to_string())?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| object.metadata.namespace.clone())
        .ok_or("the request names no namespace")?;
    Ok(Some(ScaleRight {
        namespace,
        target: object.spec.scale_target_ref,
    }))
}

async fn review(State(webhook): State<Webhook>, Json(body): Json<AdmissionReview>) -> Json<Value> {
    let Some(request) = body.request else {
        return answer(
            "",
            Err((400, "an AdmissionReview without a request".into())),
        );
    };
    let decision = match tokio::time::timeout(REVIEW_TIMEOUT, decide(&webhook, &request)).await {
        Ok(decision) => decision,
        Err(_) => Err((
            500,
            format!("spillway could not check the scale right within {REVIEW_TIMEOUT:?}"),
        )),
    };
    if let Err((code, message)) = &decision {
        tracing::info!(user = ?request.user_info.username, code, %message, "ScaledObject write refused");
    }
    answer(&request.uid, decision)
}

/// Allowed, or the HTTP-like code and message of the refusal.
async fn decide(webhook: &Webhook, request: &AdmissionRequest) -> Result<(), (u16, String)> {
    let Some(right) = needed_right(request).map_err(|message| (400, message))? else {
        return Ok(());
    };
    let _slot = webhook
        .slots
        .acquire()
        .await
        .map_err(|_| (500, "shutting down".to_owned()))?;
    let target = &right.target;
    let resource = webhook
        .resource(&target.api_version, &target.kind)
        .await
        .map_err(|message| (403, message))?;
    let group = match target.api_version.split_once('/') {
        Some((group, _)) => group.to_owned(),
        None => String::new(),
    };
    let user = &request.user_info;
    let username = user.username.clone().unwrap_or_default();
    let spec = SubjectAccessReviewSpec {
        user: Some(username.clone()),
        uid: user.uid.clone(),
        groups: user.groups.clone(),
        extra: user.extra.clone(),
        resource_attributes: Some(ResourceAttributes {
            group: Some(group.clone()),
            namespace: Some(right.namespace.clone()),
            resource: Some(resource.clone()),
            subresource: Some("scale".into()),
            name: Some(target.name.clone()),
            verb: Some("update".into()),
            ..Default::default()
        }),
        non_resource_attributes: None,
    };
    let reviews: Api<SubjectAccessReview> = Api::all(webhook.client.clone());
    let status = reviews
        .create(
            &PostParams::default(),
            &SubjectAccessReview {
                spec,
                ..Default::default()
            },
        )
        .await
        .map_err(|err| {
            (
                500,
                format!("cannot check the scale right: SubjectAccessReview failed: {err}"),
            )
        })?
        .status
        .unwrap_or_default();
    if status.allowed && !status.denied.unwrap_or(false) {
        return Ok(());
    }
    let qualified = if group.is_empty() {
        resource
    } else {
        format!("{resource}.{group}")
    };
    Err((
        403,
        format!(
            "User {username:?} may not update {qualified}/scale {:?} in namespace {:?}: a ScaledObject sets the replicas of its scaleTargetRef, so writing one needs that right",
            target.name, right.namespace
        ),
    ))
}

impl Webhook {
    /// The plural resource of `kind` in `api_version`, found by discovery once.
    async fn resource(&self, api_version: &str, kind: &str) -> Result<String, String> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.resources.lock().expect("resources lock").get(&key) {
            return Ok(found.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|err| {
                format!("scaleTargetRef {api_version} {kind} is not served by the cluster: {err}")
            })?;
        self.resources
            .lock()
            .expect("resources lock")
            .insert(key, resource.plural.clone());
        Ok(resource.plural)
    }
}

/// The AdmissionReview answer for `uid`.
fn answer(uid: &str, decision: Result<(), (u16, String)>) -> Json<Value> {
    let response = match decision {
        Ok(()) => json!({"uid": uid, "allowed": true}),
        Err((code, message)) => json!({
            "uid": uid,
            "allowed": false,
            "status": {
                "code": code,
                "reason": if code == 403 { "Forbidden" } else { "BadRequest" },
                "message": message,
            },
        }),
    };
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn so(target: Value, min: i32) -> Value {
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "worker", "namespace": "shop"},
            "spec": {"scaleTargetRef": target, "minReplicaCount": min,
                "triggers": [{"cron": {"timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 3}}]}})
    }

    fn request(operation: &str, object: Option<Value>, old: Option<Value>) -> AdmissionRequest {
        serde_json::from_value(json!({
            "uid": "u1", "operation": operation, "namespace": "shop",
            "userInfo": {"username": "jane", "groups": ["dev"]},
            "object": object, "oldObject": old,
        }))
        .unwrap()
    }

    #[test]
    fn a_formula_that_does_not_compile_is_refused_with_the_reason() {
        let mut object = so(json!({"name": "web"}), 1);
        object["spec"]["triggers"][0]["name"] = json!("office");
        object["spec"]["advanced"] =
            json!({"scalingModifiers": {"formula": "office * 2", "target": 1}});
        assert!(needed_right(&request("CREATE", Some(object.clone()), None)).is_ok());
        object["spec"]["advanced"]["scalingModifiers"]["formula"] = json!("office * hours");
        let err = needed_right(&request("CREATE", Some(object), None)).unwrap_err();
        assert!(
            err.starts_with("spec.advanced.scalingModifiers.formula: unknown name \"hours\""),
            "{err}"
        );
    }

    #[test]
    fn writes_that_set_a_spec_need_the_targets_scale_right() {
        let deployment = json!({"name": "web"});
        let statefulset = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"});
        let right = |target: Value| {
            Some(ScaleRight {
                namespace: "shop".into(),
                target: serde_json::from_value(target).unwrap(),
            })
        };
        let cases = [
            // (operation, object, old object, right needed)
            (
                "CREATE",
                Some(so(deployment.clone(), 1)),
                None,
                right(deployment.clone()),
            ),
            (
                "CREATE",
                Some(so(statefulset.clone(), 1)),
                None,
                right(statefulset.clone()),
            ),
            // A changed spec (min replicas to 0, another target) is a new claim on a target.
            (
                "UPDATE",
                Some(so(deployment.clone(), 0)),
                Some(so(deployment.clone(), 1)),
                right(deployment.clone()),
            ),
            (
                "UPDATE",
                Some(so(statefulset.clone(), 1)),
                Some(so(deployment.clone(), 1)),
                right(statefulset.clone()),
            ),
            // Status, labels or finalizers only: nothing to check.
            (
                "UPDATE",
                Some(so(deployment.clone(), 1)),
                Some(so(deployment.clone(), 1)),
                None,
            ),
            ("DELETE", None, Some(so(deployment.clone(), 1)), None),
        ];
        for (operation, object, old, expected) in cases {
            let got = needed_right(&request(operation, object, old)).unwrap();
            assert_eq!(got, expected, "{operation}");
        }
        let defaulted = needed_right(&request("CREATE", Some(so(deployment, 1)), None))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                defaulted.target.api_version.as_str(),
                defaulted.target.kind.as_str()
            ),
            ("apps/v1", "Deployment")
        );
        let err = needed_right(&request("CREATE", Some(json!({"spec": 1})), None)).unwrap_err();
        assert!(err.contains("not a ScaledObject"), "{err}");
        // An authenticationRef names one of the two authentication kinds, nothing else.
        let mut other_kind = so(json!({"name": "web"}), 1);
        other_kind["spec"]["triggers"][0]["authenticationRef"] =
            json!({"name": "creds", "kind": "Secret"});
        let err = needed_right(&request("CREATE", Some(other_kind), None)).unwrap_err();
        assert!(err.contains("unknown variant `Secret`"), "{err}");
    }

    #[test]
    fn refusals_carry_the_request_uid_and_a_status() {
        let Json(refused) = answer("u1", Err((403, "no".into())));
        assert_eq!(refused["kind"], "AdmissionReview");
        assert_eq!(refused["response"]["uid"], "u1");
        assert_eq!(refused["response"]["allowed"], false);
        assert_eq!(refused["response"]["status"]["code"], 403);
        let Json(allowed) = answer("u2", Ok(()));
        assert_eq!(allowed["response"]["allowed"], true);
    }
}
