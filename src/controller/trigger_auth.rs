//! Credentials kept apart from triggers, as KEDA keeps them: a `TriggerAuthentication`
//! (`triggerauthentications.spillway.dev`, namespaced, short name `ta`) maps trigger parameters
//! to keys of Secrets in its own namespace, and a trigger names it with
//! `authenticationRef: {name}`; a `ClusterTriggerAuthentication` (cluster-scoped, `cta`,
//! created by cluster admins) does the same with Secrets in spillway's own namespace
//! (`--cluster-trigger-auth-namespace`, KEDA's ClusterObjectNamespace).
//!
//! | field | meaning |
//! |---|---|
//! | `secretTargetRef[].parameter` | the trigger's credential field: spillway's name (`password`, `hostFromSecret`) or KEDA's (`host`) |
//! | `secretTargetRef[].name`, `.key` | the Secret and the key in its data |
//!
//! Where spillway differs from KEDA:
//! - only `secretTargetRef`: `env`, `configMapTargetRef`, `hashiCorpVault`, `azureKeyVault`,
//!   `awsSecretManager`, `gcpSecretManager`, `podIdentity` and `boundServiceAccountToken` are
//!   refused by the API server with the reason (never pruned silently), and again here;
//! - a parameter must be a credential field of the trigger (KEDA ignores unknown ones), and must
//!   not also be set inline;
//! - settings KEDA allows in a TriggerAuthentication (`sasl`, `username`, `tls`) stay in the
//!   trigger: they are not secrets.

use std::future::Future;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::TriggerConfig;
use crate::kube_client::ApiFailure;
use crate::secret::{
    AuthenticationKind, AuthenticationRef, SecretKeyRef, SecretSource, safe_cause,
};

/// The most `secretTargetRef` entries one authentication may hold (bounds the API server's
/// cost of checking them).
pub const MAX_SECRET_TARGETS: u32 = 64;

/// One credential: the trigger parameter it fills, and the Secret key holding it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretTargetRef {
    /// The trigger's credential field, by spillway's name or KEDA's.
    #[schemars(length(min = 1, max = 253))]
    pub parameter: String,
    /// The Secret's name (in the TriggerAuthentication's namespace; in spillway's namespace
    /// for a ClusterTriggerAuthentication).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// KEDA's credential sources spillway does not read, by field name, and why.
pub const UNSUPPORTED_SOURCES: [(&str, &str); 8] = [
    (
        "env",
        "reads the scaled workload's container environment, which spillway never sees",
    ),
    (
        "configMapTargetRef",
        "ConfigMaps are not read: put the value in the trigger, or in a Secret",
    ),
    ("hashiCorpVault", "Vault is not supported"),
    ("azureKeyVault", "Azure Key Vault is not supported"),
    ("awsSecretManager", "AWS Secrets Manager is not supported"),
    ("gcpSecretManager", "GCP Secret Manager is not supported"),
    ("podIdentity", "pod identity providers are not supported"),
    (
        "boundServiceAccountToken",
        "service account tokens are not minted for triggers",
    ),
];

/// The schema of one unsupported source: any value, refused by a rule that says why. It is
/// declared (not left out) so the API server refuses it instead of pruning it silently.
fn unsupported_source(field: &str, array: bool) -> schemars::Schema {
    let why = UNSUPPORTED_SOURCES
        .iter()
        .find(|(name, _)| *name == field)
        .map_or("", |(_, why)| why);
    let rule = serde_json::json!([{
        "rule": "false",
        "message": format!("{field} is not supported by spillway ({why}); use secretTargetRef")
    }]);
    if array {
        schemars::json_schema!({
            "description": format!("KEDA's {field}: refused by spillway ({why})."),
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "x-kubernetes-validations": rule,
        })
    } else {
        schemars::json_schema!({
            "description": format!("KEDA's {field}: refused by spillway ({why})."),
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "x-kubernetes-validations": rule,
        })
    }
}

/// Schema functions for [`unsupported_source`], one per field (schemars takes paths only).
mod unsupported {
    use super::unsupported_source;
    pub fn env(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("env", true)
    }
    pub fn config_map_target_ref(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("configMapTargetRef", true)
    }
    pub fn hashi_corp_vault(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("hashiCorpVault", false)
    }
    pub fn azure_key_vault(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("azureKeyVault", false)
    }
    pub fn aws_secret_manager(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("awsSecretManager", false)
    }
    pub fn gcp_secret_manager(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("gcpSecretManager", false)
    }
    pub fn pod_identity(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("podIdentity", false)
    }
    pub fn bound_service_account_token(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        unsupported_source("boundServiceAccountToken", true)
    }
}

/// The spec both kinds share (KEDA's `TriggerAuthenticationSpec`), written once for each
/// derive.
macro_rules! authentication_spec {
    ($(#[$meta:meta])* $name:ident) => {
        #[derive(CustomResource, Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
        $(#[$meta])*
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// Trigger parameters and the Secret keys that hold them.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(length(max = MAX_SECRET_TARGETS))]
            #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["parameter"]))]
            pub secret_target_ref: Vec<SecretTargetRef>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::env")]
            pub env: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::config_map_target_ref")]
            pub config_map_target_ref: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::hashi_corp_vault")]
            pub hashi_corp_vault: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::azure_key_vault")]
            pub azure_key_vault: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::aws_secret_manager")]
            pub aws_secret_manager: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::gcp_secret_manager")]
            pub gcp_secret_manager: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::pod_identity")]
            pub pod_identity: Option<Value>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "unsupported::bound_service_account_token")]
            pub bound_service_account_token: Option<Value>,
        }

        impl $name {
            /// The unsupported sources this spec sets, by field name.
            pub fn unsupported_sources(&self) -> Vec<&'static str> {
                let Self {
                    secret_target_ref: _,
                    env,
                    config_map_target_ref,
                    hashi_corp_vault,
                    azure_key_vault,
                    aws_secret_manager,
                    gcp_secret_manager,
                    pod_identity,
                    bound_service_account_token,
                } = self;
                [
                    env,
                    config_map_target_ref,
                    hashi_corp_vault,
                    azure_key_vault,
                    aws_secret_manager,
                    gcp_secret_manager,
                    pod_identity,
                    bound_service_account_token,
                ]
                .into_iter()
                .zip(UNSUPPORTED_SOURCES)
                .filter(|(value, _)| value.is_some())
                .map(|(_, (field, _))| field)
                .collect()
            }

            /// What the controller reads of it.
            pub fn credentials(&self) -> Credentials {
                Credentials {
                    secret_target_ref: self.secret_target_ref.clone(),
                    unsupported: self.unsupported_sources(),
                }
            }
        }
    };
}

authentication_spec!(
    /// Maps trigger parameters to keys of Secrets in this object's namespace; ScaledObjects of
    /// the same namespace name it with `authenticationRef: {name}`.
    #[kube(
        group = "spillway.dev",
        version = "v1alpha1",
        kind = "TriggerAuthentication",
        namespaced,
        shortname = "ta",
        derive = "PartialEq",
        doc = "Credentials for triggers of ScaledObjects in this namespace: trigger parameters mapped to keys of Secrets in this namespace."
    )]
    TriggerAuthenticationSpec
);

authentication_spec!(
    /// Maps trigger parameters to keys of Secrets in spillway's own namespace; any ScaledObject
    /// names it with `authenticationRef: {name, kind: ClusterTriggerAuthentication}`. Being
    /// cluster-scoped, only cluster admins create it.
    #[kube(
        group = "spillway.dev",
        version = "v1alpha1",
        kind = "ClusterTriggerAuthentication",
        shortname = "cta",
        derive = "PartialEq",
        doc = "Credentials for triggers of ScaledObjects in any namespace: trigger parameters mapped to keys of Secrets in spillway's namespace. Created by cluster admins."
    )]
    ClusterTriggerAuthenticationSpec
);

/// What an authentication of either kind says, as the controller reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    pub secret_target_ref: Vec<SecretTargetRef>,
    /// KEDA's sources it sets that spillway refuses.
    pub unsupported: Vec<&'static str>,
}

/// Why the authentication a trigger names cannot supply its credentials. Names the objects,
/// parameters and fields, never a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerAuthError {
    /// Absent: deleted, never created, or in another namespace (a TriggerAuthentication is
    /// read from the ScaledObject's namespace only).
    #[error("{object} does not exist{hint}")]
    NotFound { object: String, hint: &'static str },
    /// spillway may not read the kind, or it is not installed.
    #[error("cannot read {object}: {cause}")]
    Refused { object: String, cause: String },
    /// No answer now (the watch has not listed yet, the API server is away).
    #[error("{object} cannot be read now: {cause}")]
    Unavailable { object: String, cause: String },
    #[error(
        "{object} uses {unsupported}, which spillway does not support: only secretTargetRef is read"
    )]
    UnsupportedSource {
        object: String,
        unsupported: &'static str,
    },
    #[error(
        "{object}: parameter {parameter} is not a credential of the {broker} trigger (it takes {accepted})"
    )]
    UnknownParameter {
        object: String,
        parameter: String,
        broker: &'static str,
        accepted: String,
    },
    #[error("{object}: parameter {parameter} is given twice")]
    DuplicateParameter { object: String, parameter: String },
    #[error(
        "{object}: parameter {parameter} is also set inline as {broker}.{field}: set it in one place"
    )]
    SetInline {
        object: String,
        parameter: String,
        broker: &'static str,
        field: &'static str,
    },
}

impl TriggerAuthError {
    /// The error of a failed request for `object`, by what the failure says.
    pub fn of_request(err: &kube::Error, object: String) -> Self {
        let cause = safe_cause(err);
        match ApiFailure::of(err) {
            ApiFailure::NotFound => Self::NotFound { object, hint: "" },
            ApiFailure::Refused => Self::Refused { object, cause },
            ApiFailure::Unavailable => Self::Unavailable { object, cause },
        }
    }

    /// True when reading again with nothing changed may succeed (see
    /// [`crate::secret::SecretError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::NotFound { .. }
            | Self::Refused { .. }
            | Self::UnsupportedSource { .. }
            | Self::UnknownParameter { .. }
            | Self::DuplicateParameter { .. }
            | Self::SetInline { .. } => false,
        }
    }

    /// A stable CamelCase name, for a status condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "TriggerAuthenticationNotFound",
            Self::Refused { .. } => "TriggerAuthenticationNotReadable",
            Self::Unavailable { .. } => "TriggerAuthenticationUnavailable",
            Self::UnsupportedSource { .. }
            | Self::UnknownParameter { .. }
            | Self::DuplicateParameter { .. }
            | Self::SetInline { .. } => "TriggerAuthenticationInvalid",
        }
    }
}

/// How errors and logs name the authentication `reference` of an object in `namespace`.
pub fn describe(reference: &AuthenticationRef, namespace: &str) -> String {
    match reference.kind {
        AuthenticationKind::TriggerAuthentication => {
            format!("TriggerAuthentication {namespace}/{}", reference.name)
        }
        AuthenticationKind::ClusterTriggerAuthentication => {
            format!("ClusterTriggerAuthentication {}", reference.name)
        }
    }
}

/// What a NotFound adds for the kind: where else it was not looked for.
pub fn not_found_hint(kind: AuthenticationKind) -> &'static str {
    match kind {
        AuthenticationKind::TriggerAuthentication => {
            " (a TriggerAuthentication is read from the ScaledObject's own namespace only)"
        }
        AuthenticationKind::ClusterTriggerAuthentication => "",
    }
}

/// Where `authenticationRef`s are read from: the controller's watch cache, or one GET each
/// from a [`kube::Client`] (`spillway plan --live`).
pub trait TriggerAuthReader {
    /// The credentials of `reference`, named by an object in `namespace` (where a
    /// TriggerAuthentication is looked for; a ClusterTriggerAuthentication has none).
    fn read_authentication(
        &self,
        namespace: &str,
        reference: &AuthenticationRef,
    ) -> impl Future<Output = Result<Credentials, TriggerAuthError>> + Send;
}

impl TriggerAuthReader for kube::Client {
    async fn read_authentication(
        &self,
        namespace: &str,
        reference: &AuthenticationRef,
    ) -> Result<Credentials, TriggerAuthError> {
        let object = describe(reference, namespace);
        let found = match reference.kind {
            AuthenticationKind::TriggerAuthentication => {
                kube::Api::<TriggerAuthentication>::namespaced(self.clone(), namespace)
                    .get(&reference.name)
                    .await
                    .map(|ta| ta.spec.credentials())
            }
            AuthenticationKind::ClusterTriggerAuthentication => {
                kube::Api::<ClusterTriggerAuthentication>::all(self.clone())
                    .get(&reference.name)
                    .await
                    .map(|cta| cta.spec.credentials())
            }
        };
        found.map_err(|err| match TriggerAuthError::of_request(&err, object) {
            TriggerAuthError::NotFound { object, .. } => TriggerAuthError::NotFound {
                object,
                hint: not_found_hint(reference.kind),
            },
            other => other,
        })
    }
}

/// Fills `entry`'s credential fields from `credentials` (read for the authentication `object`):
/// each `secretTargetRef` becomes the `secretKeyRef` of the field its parameter names, read
/// from `secret_namespace` when given (a ClusterTriggerAuthentication's), else from the
/// object's namespace. Refuses unsupported sources, a parameter the trigger does not take or
/// that is given twice, and a field also set inline. Returns the fields filled.
pub fn fill_credentials(
    entry: &mut TriggerConfig,
    credentials: &Credentials,
    object: &str,
    secret_namespace: Option<&str>,
) -> Result<Vec<&'static str>, TriggerAuthError> {
    if let Some(unsupported) = credentials.unsupported.first() {
        return Err(TriggerAuthError::UnsupportedSource {
            object: object.to_owned(),
            unsupported,
        });
    }
    // Filled on a copy, kept only when every parameter fits: a refusal changes nothing.
    let mut filling = entry.clone();
    let mut filled = Vec::new();
    for (broker, trigger) in filling.triggers_mut() {
        let mut slots = trigger.credential_slots();
        let accepted = match slots_names(&slots) {
            names if names.is_empty() => "no credentials".to_owned(),
            names => names.join(", "),
        };
        for target in &credentials.secret_target_ref {
            let Some(slot) = slots.iter_mut().find(|s| s.is_named(&target.parameter)) else {
                return Err(TriggerAuthError::UnknownParameter {
                    object: object.to_owned(),
                    parameter: target.parameter.clone(),
                    broker,
                    accepted,
                });
            };
            if filled.contains(&slot.parameter) {
                return Err(TriggerAuthError::DuplicateParameter {
                    object: object.to_owned(),
                    parameter: target.parameter.clone(),
                });
            }
            if slot.source.is_some() {
                return Err(TriggerAuthError::SetInline {
                    object: object.to_owned(),
                    parameter: target.parameter.clone(),
                    broker,
                    field: slot.parameter,
                });
            }
            let reference = match secret_namespace {
                Some(namespace) => SecretKeyRef::in_namespace(namespace, &target.name, &target.key),
                None => SecretKeyRef::new(&target.name, &target.key),
            };
            *slot.source = Some(SecretSource::SecretKeyRef(reference));
            filled.push(slot.parameter);
        }
    }
    *entry = filling;
    Ok(filled)
}

/// The parameter names `slots` take, KEDA's in parentheses where they differ.
fn slots_names(slots: &[crate::scalers::CredentialSlot<'_>]) -> Vec<String> {
    slots
        .iter()
        .map(|slot| match slot.keda_parameter {
            Some(keda) => format!("{} (or {keda})", slot.parameter),
            None => slot.parameter.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use kube::CustomResourceExt;
    use kube::core::cel::Validator;

    use crate::scalers::{Trigger, TriggerParams};

    fn entry(text: &str) -> TriggerConfig {
        serde_norway::from_str(text).unwrap()
    }

    fn targets(pairs: &[(&str, &str, &str)]) -> Credentials {
        Credentials {
            secret_target_ref: pairs
                .iter()
                .map(|(parameter, name, key)| SecretTargetRef {
                    parameter: (*parameter).into(),
                    name: (*name).into(),
                    key: (*key).into(),
                })
                .collect(),
            unsupported: Vec::new(),
        }
    }

    const KAFKA: &str = "kafka: {bootstrapServers: 'k:9092', consumerGroup: g, topic: t, lagThreshold: 5, sasl: plaintext, username: u, tls: enable}\nauthenticationRef: {name: kafka-auth}";
    const RABBIT: &str = "rabbitmq: {queueName: jobs, mode: QueueLength, value: 5}\nauthenticationRef: {name: rabbit-auth}";
    const PROMETHEUS: &str = "prometheus: {serverAddress: 'http://p:9090', query: up, threshold: 1}\nauthenticationRef: {name: prom, kind: ClusterTriggerAuthentication}";
    const CRON: &str =
        "cron: {timezone: UTC, start: '0 8 * * *', end: '0 9 * * *', desiredReplicas: 1}";

    /// The secret sources of `entry` after filling: field, identity.
    fn sources(entry: &mut TriggerConfig) -> Vec<(String, String)> {
        let mut trigger: Trigger = entry.trigger().unwrap();
        trigger
            .secret_sources()
            .into_iter()
            .map(|(field, source)| (field.to_owned(), source.identity()))
            .collect()
    }

    #[test]
    fn parameters_fill_the_triggers_credential_fields() {
        // (trigger entry, credentials, Secret namespace, (field, identity) filled)
        type Case<'a> = (
            &'a str,
            Credentials,
            Option<&'a str>,
            Vec<(&'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (
                KAFKA,
                targets(&[
                    ("password", "kafka", "pw"),
                    ("ca", "kafka-tls", "ca.crt"),
                    ("cert", "kafka-tls", "tls.crt"),
                    ("key", "kafka-tls", "tls.key"),
                ]),
                None,
                vec![
                    ("password", "secret:kafka/pw"),
                    ("ca", "secret:kafka-tls/ca.crt"),
                    ("cert", "secret:kafka-tls/tls.crt"),
                    ("key", "secret:kafka-tls/tls.key"),
                ],
            ),
            // KEDA's `host` and spillway's `hostFromSecret` name the same field.
            (
                RABBIT,
                targets(&[("host", "rabbit", "url")]),
                None,
                vec![("hostFromSecret", "secret:rabbit/url")],
            ),
            (
                RABBIT,
                targets(&[("hostFromSecret", "rabbit", "url")]),
                None,
                vec![("hostFromSecret", "secret:rabbit/url")],
            ),
            // A ClusterTriggerAuthentication's Secrets come from spillway's namespace.
            (
                PROMETHEUS,
                targets(&[("bearerToken", "prom", "token")]),
                Some("spillway-system"),
                vec![("bearerToken", "secret:spillway-system/prom/token")],
            ),
        ];
        for (text, credentials, namespace, expected) in cases {
            let mut entry = entry(text);
            let filled = fill_credentials(&mut entry, &credentials, "auth", namespace).unwrap();
            assert_eq!(filled.len(), expected.len(), "{text}");
            let got = sources(&mut entry);
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn what_a_trigger_cannot_take_is_refused_with_the_reason() {
        let unsupported = Credentials {
            unsupported: vec!["env"],
            ..targets(&[("password", "kafka", "pw")])
        };
        let inline_password = KAFKA.replace(
            "tls: enable",
            "tls: enable, password: {secretKeyRef: {name: mine, key: pw}}",
        );
        let cases: Vec<(&str, Credentials, &str)> = vec![
            (
                KAFKA,
                targets(&[("username", "kafka", "user")]),
                "ta: parameter username is not a credential of the kafka trigger (it takes password, ca, cert, key, keyPassword)",
            ),
            (
                RABBIT,
                targets(&[("password", "rabbit", "pw")]),
                "ta: parameter password is not a credential of the rabbitmq trigger (it takes hostFromSecret (or host))",
            ),
            (
                CRON,
                targets(&[("password", "x", "y")]),
                "ta: parameter password is not a credential of the cron trigger (it takes no credentials)",
            ),
            (
                RABBIT,
                targets(&[
                    ("host", "rabbit", "url"),
                    ("hostFromSecret", "rabbit", "url"),
                ]),
                "ta: parameter hostFromSecret is given twice",
            ),
            (
                &inline_password,
                targets(&[("password", "kafka", "pw")]),
                "ta: parameter password is also set inline as kafka.password: set it in one place",
            ),
            (
                KAFKA,
                unsupported,
                "ta uses env, which spillway does not support: only secretTargetRef is read",
            ),
        ];
        for (text, credentials, message) in cases {
            let mut entry = entry(text);
            let before = entry.clone();
            let err = fill_credentials(&mut entry, &credentials, "ta", None).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert_eq!(err.reason(), "TriggerAuthenticationInvalid");
            assert!(!err.is_transient());
            assert_eq!(entry, before, "a refusal changes nothing: {message}");
        }
    }

    #[test]
    fn describes_each_kind_and_where_it_was_looked_for() {
        let ta = AuthenticationRef {
            name: "creds".into(),
            kind: AuthenticationKind::TriggerAuthentication,
        };
        let cta = AuthenticationRef {
            name: "creds".into(),
            kind: AuthenticationKind::ClusterTriggerAuthentication,
        };
        assert_eq!(describe(&ta, "shop"), "TriggerAuthentication shop/creds");
        assert_eq!(describe(&cta, "shop"), "ClusterTriggerAuthentication creds");
        let err = TriggerAuthError::NotFound {
            object: describe(&ta, "shop"),
            hint: not_found_hint(ta.kind),
        };
        assert_eq!(
            err.to_string(),
            "TriggerAuthentication shop/creds does not exist (a TriggerAuthentication is read from the ScaledObject's own namespace only)"
        );
        assert_eq!(err.reason(), "TriggerAuthenticationNotFound");
        let parsed: AuthenticationRef = serde_norway::from_str("name: creds").unwrap();
        assert_eq!(parsed, ta);
        assert!(
            serde_norway::from_str::<AuthenticationRef>("{name: creds, kind: Secret}").is_err()
        );
    }

    fn ta_schema() -> Value {
        let crd = TriggerAuthentication::crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_api_server_refuses_unsupported_sources_by_name() {
        let schema = ta_schema();
        let ok = serde_json::json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": "a", "namespace": "shop"},
            "spec": {"secretTargetRef": [{"parameter": "password", "name": "s", "key": "k"}]}});
        assert!(Validator::new().validate(&schema, &ok, None).is_ok());
        for (field, _) in UNSUPPORTED_SOURCES {
            let value = if matches!(
                field,
                "env" | "configMapTargetRef" | "boundServiceAccountToken"
            ) {
                serde_json::json!([{"parameter": "password", "name": "x"}])
            } else {
                serde_json::json!({"provider": "x"})
            };
            let mut object = ok.clone();
            object["spec"][field] = value;
            let errors: Vec<String> = match Validator::new().validate(&schema, &object, None) {
                Ok(()) => Vec::new(),
                Err(errors) => errors.iter().map(ToString::to_string).collect(),
            };
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(&format!("{field} is not supported by spillway"))),
                "{field}: {errors:?}"
            );
            let spec: TriggerAuthenticationSpec =
                serde_json::from_value(object["spec"].clone()).unwrap();
            assert_eq!(spec.unsupported_sources(), [field]);
        }
        let cta = ClusterTriggerAuthentication::crd();
        assert_eq!(cta.spec.scope, "Cluster");
        assert_eq!(cta.spec.names.short_names, Some(vec!["cta".to_owned()]));
        assert_eq!(TriggerAuthentication::crd().spec.scope, "Namespaced");
    }
}
