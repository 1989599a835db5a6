//! `advanced.restoreToOriginalReplicaCount`, as KEDA's: deleting a ScaledObject scales its
//! target back to `status.originalReplicaCount`, the replicas it had before spillway first
//! changed them. The finalizer [`FINALIZER`] holds the deletion until the leader has done so;
//! only objects that set the field carry it, so deleting any other is unaffected.
//!
//! Pure: [`on_delete`] says what a deletion asks for, [`finalizers_patch`] adds or removes the
//! finalizer, [`gives_up`] says which answers end the attempt; `reconcile` acts on them.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::crd::ScaledObject;

/// The finalizer of objects whose deletion restores their target's replicas.
pub const FINALIZER: &str = "spillway.dev/restore-replicas";

/// Whether `so` carries [`FINALIZER`].
pub fn has_finalizer(so: &ScaledObject) -> bool {
    so.finalizers().iter().any(|f| f == FINALIZER)
}

/// Whether `so` should carry [`FINALIZER`]: it asks for the restore and is not being deleted.
pub fn wants_finalizer(so: &ScaledObject) -> bool {
    so.spec.restores_original_replicas() && so.metadata.deletion_timestamp.is_none()
}

/// What the deletion of an object asks of spillway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDelete {
    /// Not spillway's finalizer: nothing to do, the object goes as soon as others let it.
    Nothing,
    /// Scale the target to `to` replicas, then remove the finalizer.
    Restore { to: i32 },
    /// Remove the finalizer without a restore, with a Warning saying `why`.
    Skip { why: String },
}

/// What to do for `so`, being deleted.
pub fn on_delete(so: &ScaledObject) -> OnDelete {
    if !has_finalizer(so) {
        return OnDelete::Nothing;
    }
    if !so.spec.restores_original_replicas() {
        // Set when the finalizer was added, unset since and deleted before a reconcile
        // removed the finalizer: nothing is asked any more.
        return OnDelete::Skip {
            why: "advanced.restoreToOriginalReplicaCount is no longer set".into(),
        };
    }
    match so.status.as_ref().and_then(|s| s.original_replica_count) {
        Some(to) => OnDelete::Restore { to },
        None => OnDelete::Skip {
            why: "no status.originalReplicaCount was recorded (the target was never read)".into(),
        },
    }
}

/// The merge patch that adds [`FINALIZER`] to `so` (`add`) or removes it, or `None` when it
/// is already so. The patch names `resource_version` (the object's, or a newer one its caller
/// wrote), so a concurrent change of its finalizers is a conflict (409) to retry, never
/// overwritten.
pub fn finalizers_patch(
    so: &ScaledObject,
    add: bool,
    resource_version: Option<&str>,
) -> Option<Value> {
    if has_finalizer(so) == add {
        return None;
    }
    let mut finalizers: Vec<String> = so
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if add {
        finalizers.push(FINALIZER.to_owned());
    }
    Some(json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": resource_version,
    }}))
}

/// Whether an API answer to reading or scaling the target is definite, so retrying would hold
/// the deletion for ever: the target or its kind gone (404), the right to scale it missing
/// (403), or the request refused (400, 422). Conflicts, throttling and server errors are
/// retried.
pub fn gives_up(code: u16) -> bool {
    matches!(code, 400 | 403 | 404 | 405 | 410 | 422)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(extra: &str, finalizers: &[&str], original: Option<i32>) -> ScaledObject {
        let mut so: ScaledObject = serde_norway::from_str(&format!(
            r#"
apiVersion: spillway.dev/v1alpha1
kind: ScaledObject
metadata: {{name: worker, namespace: shop, resourceVersion: "42"}}
spec:
  scaleTargetRef: {{name: worker}}
  triggers:
    - cron: {{timezone: UTC, start: '0 8 * * *', end: '0 9 * * *', desiredReplicas: 1}}
{extra}"#
        ))
        .unwrap();
        so.metadata.finalizers =
            (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| (*f).to_owned()).collect());
        if let Some(n) = original {
            so.status = Some(crate::controller::crd::ScaledObjectStatus {
                original_replica_count: Some(n),
                ..Default::default()
            });
        }
        so
    }

    const RESTORE: &str = "  advanced: {restoreToOriginalReplicaCount: true}\n";

    #[test]
    fn only_objects_that_restore_want_the_finalizer() {
        assert!(wants_finalizer(&object(RESTORE, &[], None)));
        assert!(!wants_finalizer(&object("", &[], None)));
        assert!(!wants_finalizer(&object(
            "  advanced: {restoreToOriginalReplicaCount: false}\n",
            &[],
            None
        )));
        let mut deleting = object(RESTORE, &[FINALIZER], Some(3));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(
            !wants_finalizer(&deleting),
            "never added back while deleting"
        );
    }

    #[test]
    fn a_deletion_restores_what_was_recorded_or_says_why_not() {
        let cases = [
            (
                object(RESTORE, &[FINALIZER], Some(3)),
                OnDelete::Restore { to: 3 },
            ),
            (
                object(RESTORE, &[FINALIZER], Some(0)),
                OnDelete::Restore { to: 0 },
            ),
            (object(RESTORE, &[], Some(3)), OnDelete::Nothing),
            (object("", &["other.io/keep"], Some(3)), OnDelete::Nothing),
        ];
        for (so, expected) in cases {
            assert_eq!(on_delete(&so), expected, "{:?}", so.metadata.finalizers);
        }
        assert!(matches!(
            on_delete(&object(RESTORE, &[FINALIZER], None)),
            OnDelete::Skip { why } if why.contains("originalReplicaCount")
        ));
        assert!(matches!(
            on_delete(&object("", &[FINALIZER], Some(3))),
            OnDelete::Skip { why } if why.contains("no longer set")
        ));
    }

    #[test]
    fn the_patch_keeps_other_finalizers_and_names_the_version() {
        let so = object(RESTORE, &["other.io/keep"], None);
        let version = so.metadata.resource_version.as_deref();
        assert_eq!(
            finalizers_patch(&so, true, version),
            Some(json!({"metadata": {
                "finalizers": ["other.io/keep", FINALIZER], "resourceVersion": "42"}}))
        );
        assert_eq!(
            finalizers_patch(&so, false, version),
            None,
            "not there: nothing to remove"
        );
        let so = object(RESTORE, &[FINALIZER, "other.io/keep"], None);
        assert_eq!(finalizers_patch(&so, true, Some("43")), None);
        assert_eq!(
            finalizers_patch(&so, false, Some("43")),
            Some(json!({"metadata": {
                "finalizers": ["other.io/keep"], "resourceVersion": "43"}}))
        );
    }

    #[test]
    fn definite_answers_end_the_attempt_and_transient_ones_retry() {
        for code in [400, 403, 404, 422] {
            assert!(gives_up(code), "{code}");
        }
        for code in [409, 429, 500, 503, 504] {
            assert!(!gives_up(code), "{code}");
        }
    }
}
