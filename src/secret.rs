//! Credentials, never printed: read from files (a mounted Kubernetes Secret, a Vault agent file)
//! in a config file, or from a Secret by reference in a ScaledObject. `Debug` and `Display` of a
//! [`SecretString`] show `<redacted>`, and no error carries a secret's content.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};

use crate::kube_client::ApiFailure;

/// A secret value held in memory. Compare and use it only through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one call that sends it to a broker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from, as written in a config file or trigger: `{file: /path}` or
/// `{secretKeyRef: {name, key}}`. Either way the value is the content with one trailing newline
/// removed, so a Secret mounted as a file and the same Secret by reference read alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "SecretSourceFields", into = "SecretSourceFields")]
pub enum SecretSource {
    /// A file on spillway's own file system, read at every use so a rotated file is picked up.
    File(PathBuf),
    /// A key of a Secret in the ScaledObject's namespace, fetched by the controller.
    SecretKeyRef(SecretKeyRef),
}

/// A key of a Secret in the namespace of the object that names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in the Secret's `data`.
    pub key: String,
    /// The namespace to read the Secret from instead of the object's: set only by the
    /// controller, for a ClusterTriggerAuthentication's Secrets (in spillway's own namespace).
    /// Never (de)serialized: a ScaledObject cannot name another namespace.
    #[serde(skip)]
    namespace: Option<String>,
    /// The value once [`SecretKeyRef::resolve`] fetched it. Never (de)serialized, so a resolved
    /// trigger prints as the reference the user wrote.
    #[serde(skip)]
    value: Option<SecretString>,
}

/// A trigger's reference to the credentials a TriggerAuthentication (in the ScaledObject's
/// namespace) or a ClusterTriggerAuthentication (cluster-scoped, created by cluster admins)
/// maps to its parameters, as KEDA's `authenticationRef`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthenticationRef {
    /// The TriggerAuthentication's (or ClusterTriggerAuthentication's) name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Which kind `name` is (default TriggerAuthentication).
    #[serde(default)]
    pub kind: AuthenticationKind,
}

/// The two kinds an [`AuthenticationRef`] may name.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    schemars::JsonSchema,
)]
pub enum AuthenticationKind {
    /// Namespaced: read from the ScaledObject's namespace only, its Secrets too.
    #[default]
    TriggerAuthentication,
    /// Cluster-scoped: its Secrets are read from spillway's own namespace.
    ClusterTriggerAuthentication,
}

impl AuthenticationKind {
    /// The kind's name, as written in `authenticationRef.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TriggerAuthentication => "TriggerAuthentication",
            Self::ClusterTriggerAuthentication => "ClusterTriggerAuthentication",
        }
    }
}

impl fmt::Display for AuthenticationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire form of [`SecretSource`]: one map with exactly one of the keys, so an unknown or a
/// missing key gets a message naming both choices (serde's untagged enums cannot say why).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", rename = "SecretSource")]
struct SecretSourceFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_key_ref: Option<SecretKeyRef>,
}

impl TryFrom<SecretSourceFields> for SecretSource {
    type Error = &'static str;

    fn try_from(fields: SecretSourceFields) -> Result<Self, Self::Error> {
        match (fields.file, fields.secret_key_ref) {
            (Some(path), None) => Ok(Self::File(path)),
            (None, Some(reference)) => Ok(Self::SecretKeyRef(reference)),
            (Some(_), Some(_)) => Err("set only one of `file` and `secretKeyRef`"),
            (None, None) => Err("set one of `file` (a path) or `secretKeyRef` ({name, key})"),
        }
    }
}

impl From<SecretSource> for SecretSourceFields {
    fn from(source: SecretSource) -> Self {
        match source {
            SecretSource::File(path) => Self {
                file: Some(path),
                secret_key_ref: None,
            },
            SecretSource::SecretKeyRef(reference) => Self {
                file: None,
                secret_key_ref: Some(reference),
            },
        }
    }
}

/// The schema is the cluster form only: a ScaledObject names Secrets. `file` is a path on
/// spillway's own file system, so in a ScaledObject it would let anyone who may create one send
/// the controller's files (its service account token) to a broker of their choosing; it stays a
/// config-file feature, and the API server prunes it from a ScaledObject.
impl schemars::JsonSchema for SecretSource {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretSource".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A credential: a key of a Secret in the ScaledObject's namespace. \
                            The value, minus one trailing newline, is the secret.",
            "type": "object",
            "required": ["secretKeyRef"],
            "properties": {
                "secretKeyRef": {
                    "description": "The Secret and the key in its data.",
                    "type": "object",
                    "required": ["name", "key"],
                    "properties": {
                        "name": {
                            "description": "The Secret's name, in the ScaledObject's namespace.",
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 253
                        },
                        "key": {
                            "description": "The key in the Secret's data.",
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 253,
                            "pattern": "^[-._a-zA-Z0-9]+$"
                        }
                    }
                }
            }
        })
    }
}

/// A secret could not be read. Names the file, or the Secret and key, never the content.
///
/// [`SecretError::is_transient`] tells an answer about the Secret (it is gone, has no such key,
/// spillway may not read it) from a failure of the moment (the API server is unreachable,
/// throttling or restarting; the Secret cache has not synced yet): a ScaledObject is
/// unregistered on the first only.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {cause}")]
    File { path: PathBuf, cause: String },
    /// The Secret does not exist: deleted, never created, or absent from a synced cache.
    #[error("secret {namespace}/{name} (key {key}) does not exist")]
    NotFound {
        namespace: String,
        name: String,
        key: String,
    },
    /// The API server refused the read for good: forbidden, or a request it rejects.
    #[error("cannot read secret {namespace}/{name} (key {key}): {cause}")]
    Refused {
        namespace: String,
        name: String,
        key: String,
        cause: String,
    },
    /// No answer now (see [`ApiFailure::Unavailable`]); asking again later may answer.
    #[error("secret {namespace}/{name} (key {key}) cannot be read now: {cause}")]
    Unavailable {
        namespace: String,
        name: String,
        key: String,
        cause: String,
    },
    /// spillway reads only Secrets with a label (`--secret-label-selector`), and this one
    /// exists without it.
    #[error(
        "secret {namespace}/{name} (key {key}) lacks the label {selector}: spillway reads only Secrets matching --secret-label-selector; label it to let triggers use it"
    )]
    NotLabelled {
        namespace: String,
        name: String,
        key: String,
        selector: String,
    },
    #[error("secret {namespace}/{name} has no key {key}")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("secret {namespace}/{name} key {key} is not UTF-8 text")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    /// A `secretKeyRef` was read before the controller fetched it: it only works for
    /// ScaledObjects, not in a config file.
    #[error(
        "secret {name} key {key} was not fetched: secretKeyRef works in ScaledObjects; a config file names a file"
    )]
    Unresolved { name: String, key: String },
}

impl SecretError {
    /// The error of a failed request for Secret `namespace/name`, by what the failure says.
    pub fn of_request(err: &kube::Error, namespace: &str, name: &str, key: &str) -> Self {
        let (namespace, name, key) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        let cause = safe_cause(err);
        match ApiFailure::of(err) {
            ApiFailure::NotFound => Self::NotFound {
                namespace,
                name,
                key,
            },
            ApiFailure::Refused => Self::Refused {
                namespace,
                name,
                key,
                cause,
            },
            ApiFailure::Unavailable => Self::Unavailable {
                namespace,
                name,
                key,
                cause,
            },
        }
    }

    /// True when the read may succeed if tried again with nothing changed: what was read
    /// before stays in use meanwhile. Every other error is an answer about the Secret.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::File { .. }
            | Self::NotFound { .. }
            | Self::NotLabelled { .. }
            | Self::Refused { .. }
            | Self::MissingKey { .. }
            | Self::NotText { .. }
            | Self::Unresolved { .. } => false,
        }
    }

    /// A stable CamelCase name, for a status condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "SecretNotFound",
            Self::NotLabelled { .. } => "SecretNotLabelled",
            Self::MissingKey { .. } => "SecretKeyNotFound",
            Self::NotText { .. } => "SecretNotText",
            Self::Unavailable { .. } => "SecretUnavailable",
            Self::File { .. } | Self::Refused { .. } | Self::Unresolved { .. } => {
                "SecretNotReadable"
            }
        }
    }
}

/// Where `secretKeyRef`s are read from: the controller's watch cache of Secrets, or one GET
/// each from a [`kube::Client`] (`spillway plan --live`, which reads once).
pub trait SecretReader {
    /// The text of `key` in Secret `namespace/name`, one trailing newline removed.
    fn read_key(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<SecretString, SecretError>> + Send;
}

impl SecretReader for kube::Client {
    fn read_key(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<SecretString, SecretError>> + Send {
        fetch_secret_key(self, namespace, name, key)
    }
}

impl SecretSource {
    /// A file source (the config-file form).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File(path.into())
    }

    /// The secret: the file's content now, or the Secret's value as last fetched.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::File(path) => read_secret_file(path),
            Self::SecretKeyRef(reference) => {
                reference
                    .value
                    .clone()
                    .ok_or_else(|| SecretError::Unresolved {
                        name: reference.name.clone(),
                        key: reference.key.clone(),
                    })
            }
        }
    }

    /// What identifies the secret without its value, for logs: the path, or
    /// `secret:<name>/<key>`.
    pub fn identity(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::SecretKeyRef(reference) => match &reference.namespace {
                Some(namespace) => {
                    format!("secret:{namespace}/{}/{}", reference.name, reference.key)
                }
                None => format!("secret:{}/{}", reference.name, reference.key),
            },
        }
    }

    /// What a connection key holds of this secret: its [`identity`](Self::identity) and a
    /// [`keyed_hash`] of its value now (a file's content, a Secret's value as last fetched), so
    /// a changed value makes a new key (a new client on the next poll) and two Secrets of one
    /// name in different namespaces, or holding different values, never share one. A value
    /// that cannot be read hashes as such: the poll then fails on it.
    pub fn fingerprint(&self) -> String {
        let value = self.read().ok();
        format!(
            "{}#{:016x}",
            self.identity(),
            keyed_hash(&value.as_ref().map(SecretString::expose))
        )
    }

    /// Reads a `secretKeyRef` from `namespace` and keeps the value; a file is left to be read
    /// at each use.
    pub async fn resolve(
        &mut self,
        reader: &impl SecretReader,
        namespace: &str,
    ) -> Result<(), SecretError> {
        match self {
            Self::File(_) => Ok(()),
            Self::SecretKeyRef(reference) => reference.resolve(reader, namespace).await,
        }
    }
}

impl SecretKeyRef {
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: key.into(),
            namespace: None,
            value: None,
        }
    }

    /// A reference to a Secret of `namespace`, whatever the object's: what a
    /// ClusterTriggerAuthentication names (its Secrets live in spillway's namespace).
    pub fn in_namespace(
        namespace: impl Into<String>,
        name: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            namespace: Some(namespace.into()),
            ..Self::new(name, key)
        }
    }

    /// The namespace the Secret is read from when the object's is `object_namespace`.
    pub fn namespace<'a>(&'a self, object_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(object_namespace)
    }

    /// True once the value was fetched.
    pub fn is_resolved(&self) -> bool {
        self.value.is_some()
    }

    /// Gives a reference not fetched yet an empty value, so a trigger's checks that do not
    /// depend on the secret can run without a cluster (`spillway plan` on a file). Never
    /// polled with.
    pub fn stand_in(&mut self) {
        self.value.get_or_insert_with(|| SecretString::new(""));
    }

    /// Reads the value from the Secret in `namespace` (the object's; see
    /// [`SecretKeyRef::in_namespace`]) and keeps it, so [`SecretSource::read`] answers from
    /// memory at each poll.
    pub async fn resolve(
        &mut self,
        reader: &impl SecretReader,
        namespace: &str,
    ) -> Result<(), SecretError> {
        let namespace = self.namespace(namespace).to_owned();
        self.value = Some(reader.read_key(&namespace, &self.name, &self.key).await?);
        Ok(())
    }
}

/// A hash keyed once per process: stable within it, so equal values give equal connection
/// keys, and meaningless outside it, so a logged key reveals nothing about the values hashed.
pub fn keyed_hash(value: &impl Hash) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(value)
}

/// Reads one key of a Secret with a GET.
pub async fn fetch_secret_key(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<SecretString, SecretError> {
    let api = kube::Api::<Secret>::namespaced(client.clone(), namespace);
    let secret = api
        .get(name)
        .await
        .map_err(|err| SecretError::of_request(&err, namespace, name, key))?;
    secret_key(&secret, namespace, name, key)
}

/// One key of `secret` (its `data`, base64-decoded by the client) as UTF-8 text, one trailing
/// newline removed as for files.
pub fn secret_key(
    secret: &Secret,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<SecretString, SecretError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| SecretError::MissingKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        })?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| SecretError::NotText {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })?;
    tracing::debug!(namespace, secret = name, key, "read secret key");
    Ok(SecretString::new(strip_newline(text)))
}

/// The cause of a failed request for Secrets, safe to log: the API server's own message for
/// its refusals; for an answer that could not be decoded only that, because a decoding error
/// may quote the body, and the body holds the Secrets' values.
pub fn safe_cause(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => {
            format!("{} ({})", status.message, status.code)
        }
        kube::Error::Api(status) => format!("{} ({})", status.reason, status.code),
        kube::Error::SerdeError(_) => "the API server's answer could not be decoded".into(),
        other => other.to_string(),
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|err| SecretError::File {
        path: path.to_owned(),
        cause: err.to_string(),
    })?;
    Ok(SecretString::new(strip_newline(&text)))
}

/// One trailing `\n` (or `\r\n`), as `echo` and most editors leave, is not part of a secret.
fn strip_newline(text: &str) -> &str {
    let value = text.strip_suffix('\n').unwrap_or(text);
    value.strip_suffix('\r').unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use axum::http::{Request, Response, StatusCode};
    use k8s_openapi::ByteString;
    use kube::client::Body;

    #[test]
    fn secrets_never_print() {
        let secret = SecretString::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn reads_file_without_trailing_newline() {
        let path = std::env::temp_dir().join(format!("spillway-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = SecretSource::file(path.clone()).read().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.expose(), "s3cret");
    }

    #[test]
    fn missing_file_names_path_only() {
        let err = SecretSource::file("/nonexistent/pw").read().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read secret file /nonexistent/pw: ")
        );
    }

    #[test]
    fn both_forms_parse_and_print_as_written() {
        let file: SecretSource = serde_norway::from_str("file: /run/pw").unwrap();
        assert_eq!(file, SecretSource::file("/run/pw"));
        assert_eq!(serde_norway::to_string(&file).unwrap(), "file: /run/pw\n");

        let text = "secretKeyRef:\n  name: kafka\n  key: password\n";
        let reference: SecretSource = serde_norway::from_str(text).unwrap();
        assert_eq!(
            reference,
            SecretSource::SecretKeyRef(SecretKeyRef::new("kafka", "password"))
        );
        assert_eq!(serde_norway::to_string(&reference).unwrap(), text);
        assert_eq!(reference.identity(), "secret:kafka/password");
    }

    #[test]
    fn exactly_one_form_is_required() {
        let err = |text: &str| {
            serde_norway::from_str::<SecretSource>(text)
                .unwrap_err()
                .to_string()
        };
        assert!(err("{}").contains("set one of `file`"), "{}", err("{}"));
        let both = err("{file: /pw, secretKeyRef: {name: a, key: b}}");
        assert!(both.contains("set only one of"), "{both}");
        let unknown = err("{path: /pw}");
        assert!(
            unknown.contains("unknown field `path`, expected `file` or `secretKeyRef`"),
            "{unknown}"
        );
        let partial = err("{secretKeyRef: {name: a}}");
        assert!(partial.contains("missing field `key`"), "{partial}");
    }

    #[test]
    fn an_unfetched_reference_says_so() {
        let source = SecretSource::SecretKeyRef(SecretKeyRef::new("kafka", "password"));
        assert_eq!(
            source.read().unwrap_err(),
            SecretError::Unresolved {
                name: "kafka".into(),
                key: "password".into()
            }
        );
    }

    /// A client whose API server answers every request with `status` and `body`, recording
    /// the paths asked for.
    fn client_answering(
        status: StatusCode,
        body: String,
    ) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&paths);
        let service = tower::service_fn(move |request: Request<Body>| {
            seen.lock().unwrap().push(request.uri().path().to_owned());
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(body.clone().into_bytes()))
                .unwrap();
            async move { Ok::<_, Infallible>(response) }
        });
        (kube::Client::new(service, "default"), paths)
    }

    fn secret_json(data: &[(&str, &[u8])]) -> String {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("kafka".into()),
                namespace: Some("team-a".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        };
        serde_json::to_string(&secret).unwrap()
    }

    #[tokio::test]
    async fn resolves_a_key_from_the_namespace() {
        let (client, paths) = client_answering(
            StatusCode::OK,
            secret_json(&[("password", b"hunter2\n"), ("user", b"app")]),
        );
        let mut source = SecretSource::SecretKeyRef(SecretKeyRef::new("kafka", "password"));
        source.resolve(&client, "team-a").await.unwrap();
        assert_eq!(source.read().unwrap().expose(), "hunter2");
        assert_eq!(
            paths.lock().unwrap().as_slice(),
            ["/api/v1/namespaces/team-a/secrets/kafka"]
        );
        // The resolved value stays out of what is printed or serialized.
        assert!(!format!("{source:?}").contains("hunter2"));
        assert!(
            !serde_norway::to_string(&source)
                .unwrap()
                .contains("hunter2")
        );
    }

    #[tokio::test]
    async fn a_missing_key_names_secret_and_key_not_values() {
        let (client, _) = client_answering(StatusCode::OK, secret_json(&[("user", b"hunter2")]));
        let err = fetch_secret_key(&client, "team-a", "kafka", "password")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "secret team-a/kafka has no key password");
    }

    #[tokio::test]
    async fn binary_data_is_refused_without_quoting_it() {
        let (client, _) =
            client_answering(StatusCode::OK, secret_json(&[("password", &[0xff, 0xfe])]));
        let err = fetch_secret_key(&client, "team-a", "kafka", "password")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret team-a/kafka key password is not UTF-8 text"
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_definite_only_when_it_answers_about_the_secret() {
        let cases = [
            (StatusCode::NOT_FOUND, "NotFound", false, "SecretNotFound"),
            (
                StatusCode::FORBIDDEN,
                "Forbidden",
                false,
                "SecretNotReadable",
            ),
            (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                true,
                "SecretUnavailable",
            ),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                true,
                "SecretUnavailable",
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                true,
                "SecretUnavailable",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                true,
                "SecretUnavailable",
            ),
            (
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                true,
                "SecretUnavailable",
            ),
        ];
        for (code, reason, transient, condition_reason) in cases {
            let status = format!(
                r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure",
                "message":"refused by test","reason":"{reason}","code":{}}}"#,
                code.as_u16()
            );
            let (client, _) = client_answering(code, status);
            let err = fetch_secret_key(&client, "team-a", "kafka", "password")
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient, "{code}: {err}");
            assert_eq!(err.reason(), condition_reason, "{code}: {err}");
        }
    }

    #[tokio::test]
    async fn a_missing_secret_says_so_and_a_refusal_carries_the_api_servers_message() {
        let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"secrets \"kafka\" not found","reason":"NotFound","code":404}"#;
        let (client, _) = client_answering(StatusCode::NOT_FOUND, status.into());
        let err = fetch_secret_key(&client, "team-a", "kafka", "password")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret team-a/kafka (key password) does not exist"
        );
        let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"secrets \"kafka\" is forbidden","reason":"Forbidden","code":403}"#;
        let (client, _) = client_answering(StatusCode::FORBIDDEN, status.into());
        let err = fetch_secret_key(&client, "team-a", "kafka", "password")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read secret team-a/kafka (key password): secrets \"kafka\" is forbidden (403)"
        );
    }

    #[tokio::test]
    async fn an_api_server_that_refuses_connections_is_not_an_answer() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let err = fetch_secret_key(&client, "team-a", "kafka", "password")
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string()
                .starts_with("secret team-a/kafka (key password) cannot be read now: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_undecodable_answer_is_not_quoted() {
        let (client, _) = client_answering(StatusCode::OK, r#"{"data": "hunter2"}"#.into());
        let err = fetch_secret_key(&client, "team-a", "kafka", "password")
            .await
            .unwrap_err();
        assert!(err.is_transient(), "a garbled answer is no answer: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("could not be decoded"), "{err}");
    }
}
