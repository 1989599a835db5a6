//! The standalone configuration file (`spillway serve --config FILE`) and its validation.
//!
//! YAML, camelCase keys like Kubernetes resources, unknown keys rejected. Every error names
//! the file, the line and column, and the field path, e.g. `spillway.yaml:7:5: server.listen: ...`:
//! serde locates type and syntax errors, [`Config::validate`] locates the rules it checks.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cache::TriggerId;
use crate::names;
use crate::scalers::cron::{CronScaler, CronTrigger};
use crate::scalers::kafka::{KafkaScaler, KafkaTrigger};
use crate::scalers::nats::{NatsJetStreamScaler, NatsJetStreamTrigger};
use crate::scalers::prometheus::{PrometheusScaler, PrometheusTrigger};
use crate::scalers::rabbitmq::{RabbitMqScaler, RabbitMqTrigger};
use crate::scalers::{Scaler, ScalerError, Trigger, TriggerParams};
use crate::secret::AuthenticationRef;

/// Why a configuration file could not be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed YAML, a wrong type, an unknown or missing field, or a value out of range.
    #[error("{path}:{line}:{column}: {detail}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Field path and message as serde reports them, e.g. `server.listen: invalid socket address syntax`.
        detail: String,
    },
    /// Well-formed, but a value breaks a rule (a range, or a relation between fields).
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Where the metrics API and spillway's own `/metrics` listen.
    #[serde(default)]
    pub server: ServerConfig,
    /// How often every trigger is polled (KEDA's `pollingInterval`, in seconds).
    #[serde(default)]
    pub polling_interval: PollingInterval,
    /// What to scale on which triggers, shaped like ScaledObjects (standalone mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaled_objects: Vec<ScaledObjectConfig>,
}

/// A scaled workload in a config file: KEDA's ScaledObject fields that standalone mode uses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScaledObjectConfig {
    pub name: String,
    #[serde(default = "ScaledObjectConfig::default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub min_replica_count: u32,
    #[serde(default = "ScaledObjectConfig::default_max_replica_count")]
    pub max_replica_count: u32,
    /// The workload this scaled object scales; its triggers' values are then also served as
    /// that object's custom metrics. Optional in standalone mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target_ref: Option<ScaleTargetRef>,
    pub triggers: Vec<TriggerConfig>,
}

impl ScaledObjectConfig {
    fn default_namespace() -> String {
        "default".into()
    }
    fn default_max_replica_count() -> u32 {
        100
    }
}

/// The scaled workload, as KEDA's `scaleTargetRef`: a Deployment unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default = "ScaleTargetRef::default_api_version")]
    pub api_version: String,
    #[serde(default = "ScaleTargetRef::default_kind")]
    pub kind: String,
    pub name: String,
}

impl ScaleTargetRef {
    fn default_api_version() -> String {
        "apps/v1".into()
    }
    fn default_kind() -> String {
        "Deployment".into()
    }

    /// The API group: `apps` for `apps/v1`, empty for the core group (`v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
    }

    /// The resource: the lower-case plural of the kind, guessed as apimachinery's
    /// `UnsafeGuessKindToResource` does (`Deployment` -> `deployments`, `Ingress` ->
    /// `ingresses`, `Policy` -> `policies`), which is what discovery names for these kinds.
    pub fn resource(&self) -> String {
        let singular = self.kind.to_ascii_lowercase();
        if singular.ends_with('s') {
            format!("{singular}es")
        } else if let Some(stem) = singular.strip_suffix('y') {
            format!("{stem}ies")
        } else {
            format!("{singular}s")
        }
    }

    /// The resource as a custom metrics path names it: `deployments.apps`, or `pods` for the
    /// core group (what the HPA sends: `GroupResource.String()`).
    pub fn group_resource(&self) -> String {
        match self.group() {
            "" => self.resource(),
            group => format!("{}.{group}", self.resource()),
        }
    }

    /// Why this reference cannot name an object, with the field at fault.
    fn check(&self) -> Result<(), (&'static str, String)> {
        names::check_dns1123_subdomain(&self.name).map_err(|m| ("name", m))?;
        if !self.kind.starts_with(|c: char| c.is_ascii_uppercase())
            || !self.kind.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err((
                "kind",
                format!(
                    "{:?} is not a kind: letters and digits, starting with an upper-case letter (Deployment, StatefulSet)",
                    self.kind
                ),
            ));
        }
        let (group, version) = self
            .api_version
            .split_once('/')
            .unwrap_or(("", &self.api_version));
        if !group.is_empty() {
            names::check_dns1123_subdomain(group)
                .map_err(|m| ("apiVersion", format!("the group {m}")))?;
        }
        names::check_dns1123_label(version).map_err(|m| {
            (
                "apiVersion",
                format!("{:?}: the version {m}", self.api_version),
            )
        })?;
        Ok(())
    }
}

/// One trigger: exactly one broker key, typed, so a misspelt parameter is an error.
// The same entry is a ScaledObject's `triggers[]` item; its schema says "exactly one" in CEL.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
// The rules after the first require a credential unless `authenticationRef` may supply it; the
// controller checks again once the reference is read.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.kafka) ? 1 : 0) + (has(self.rabbitmq) ? 1 : 0) + (has(self.natsJetStream) ? 1 : 0) + (has(self.prometheus) ? 1 : 0) + (has(self.cron) ? 1 : 0) + (has(self.cpu) ? 1 : 0) + (has(self.memory) ? 1 : 0) == 1",
        "message": "a trigger names exactly one of kafka, rabbitmq, natsJetStream, prometheus, cron, cpu, memory"
    },
    {
        "rule": "!(has(self.cpu) || has(self.memory)) || !has(self.metricType)",
        "message": "cpu and memory triggers give their target as utilization or averageValue, not metricType"
    },
    {
        "rule": "!(has(self.cpu) || has(self.memory)) || !has(self.authenticationRef)",
        "message": "authenticationRef: cpu and memory triggers take no credentials"
    },
    {
        "rule": "!has(self.kafka) || has(self.authenticationRef) || !has(self.kafka.sasl) || self.kafka.sasl == 'none' || has(self.kafka.password)",
        "message": "kafka: sasl needs username and password (the password inline or through authenticationRef)"
    },
    {
        "rule": "!has(self.kafka) || has(self.authenticationRef) || has(self.kafka.cert) == has(self.kafka.key)",
        "message": "kafka: cert and key go together"
    },
    {
        "rule": "!has(self.rabbitmq) || has(self.authenticationRef) || has(self.rabbitmq.host) || has(self.rabbitmq.hostFromSecret)",
        "message": "rabbitmq: set one of host (a URL without password) or hostFromSecret (a Secret holding the URL), or authenticationRef with parameter host"
    },
    {
        "rule": "!has(self.prometheus) || has(self.authenticationRef) || !has(self.prometheus.username) || has(self.prometheus.password)",
        "message": "prometheus: username and password go together (the password inline or through authenticationRef)"
    },
    {
        "rule": "!has(self.authenticationRef) || !(has(self.cron) || has(self.natsJetStream))",
        "message": "authenticationRef: cron and natsJetStream triggers take no credentials"
    }
]))]
pub struct TriggerConfig {
    /// A name for this trigger, unique within its ScaledObject (KEDA's trigger `name`): shown
    /// in `status.triggers[]`, and what an imported KEDA object called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// How the HPA compares this trigger's value with its target (KEDA's `metricType`):
    /// `AverageValue` (default) asks for `ceil(value / target)` replicas, `Value` scales the
    /// current replicas by `value / target`.
    #[serde(default, skip_serializing_if = "MetricType::is_default")]
    pub metric_type: MetricType,
    /// Credentials from a TriggerAuthentication in the ScaledObject's namespace, or a
    /// ClusterTriggerAuthentication, mapped to this trigger's credential fields (KEDA's
    /// `authenticationRef`). ScaledObjects only: a config file names files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_ref: Option<AuthenticationRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_jet_stream: Option<NatsJetStreamTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronTrigger>,
    /// The pods' CPU (KEDA's `cpu` trigger): a Resource metric on the HPA, read by the HPA from
    /// the cluster's resource metrics (metrics-server); ScaledObjects only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ResourceTrigger>,
    /// The pods' memory (KEDA's `memory` trigger), as `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ResourceTrigger>,
}

/// A cpu or memory trigger. spillway never reads it: the HPA does, from `metrics.k8s.io`, as
/// with KEDA. It neither activates nor fails, so it takes no part in scaling to zero or in
/// fallback: an object of only cpu and memory triggers is always active and cannot scale to zero.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.utilization) != has(self.averageValue)",
        "message": "set one of utilization (percent of the pods' requests) or averageValue (a quantity per pod)"
    }
]))]
pub struct ResourceTrigger {
    /// Target average use in percent of the containers' requests (KEDA's `metricType:
    /// Utilization` with `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub utilization: Option<i32>,
    /// Target average per pod as a quantity, `500m` CPU or `512Mi` memory (KEDA's `metricType:
    /// AverageValue` with `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<String>,
    /// One container's use instead of the whole pod's (a ContainerResource metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

/// The resource a [`ResourceTrigger`] reads, by its Kubernetes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceName {
    Cpu,
    Memory,
}

impl ResourceName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
        }
    }
}

impl ResourceTrigger {
    /// Whether the target is one an HPA accepts: exactly one of a positive utilization or a
    /// positive quantity, and a container name that is a DNS label.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match (&self.utilization, &self.average_value) {
            (Some(percent), None) if *percent >= 1 => {}
            (Some(percent), None) => {
                return Err(("utilization", format!("{percent} must be at least 1")));
            }
            (None, Some(quantity)) => match crate::quantity::parse_quantity(quantity) {
                Ok(value) if value > 0.0 => {}
                Ok(_) => return Err(("averageValue", format!("{quantity:?} must be above 0"))),
                Err(err) => return Err(("averageValue", format!("{quantity:?}: {err}"))),
            },
            _ => {
                return Err((
                    "utilization",
                    "set one of utilization or averageValue".to_owned(),
                ));
            }
        }
        if let Some(container) = &self.container_name {
            names::check_dns1123_label(container).map_err(|m| ("containerName", m))?;
        }
        Ok(())
    }
}

impl TriggerConfig {
    /// The one trigger this entry names, or the keys it sets (none, or more than one).
    pub fn trigger(&self) -> Result<Trigger, Vec<&'static str>> {
        let Self {
            name: _,
            metric_type: _,
            authentication_ref: _,
            kafka,
            rabbitmq,
            nats_jet_stream,
            prometheus,
            cron,
            cpu: _,
            memory: _,
        } = self;
        if let Some((resource, _)) = self.resource() {
            let mut keys: Vec<&'static str> = [
                kafka.is_some().then_some(KafkaScaler::CONFIG_KEY),
                rabbitmq.is_some().then_some(RabbitMqScaler::CONFIG_KEY),
                nats_jet_stream
                    .is_some()
                    .then_some(NatsJetStreamScaler::CONFIG_KEY),
                prometheus.is_some().then_some(PrometheusScaler::CONFIG_KEY),
                cron.is_some().then_some(CronScaler::CONFIG_KEY),
            ]
            .into_iter()
            .flatten()
            .collect();
            keys.push(resource.as_str());
            if resource == ResourceName::Cpu && self.memory.is_some() {
                keys.push(ResourceName::Memory.as_str());
            }
            return Err(keys);
        }
        let mut set: Vec<Trigger> = [
            kafka.clone().map(Trigger::Kafka),
            rabbitmq.clone().map(Trigger::RabbitMq),
            nats_jet_stream.clone().map(Trigger::NatsJetStream),
            prometheus.clone().map(Trigger::Prometheus),
            cron.clone().map(Trigger::Cron),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() == 1 {
            Ok(set.remove(0))
        } else {
            Err(set.iter().map(Trigger::config_key).collect())
        }
    }

    /// The cpu or memory trigger this entry sets, if any (cpu first when both are set).
    pub fn resource(&self) -> Option<(ResourceName, &ResourceTrigger)> {
        match (&self.cpu, &self.memory) {
            (Some(cpu), _) => Some((ResourceName::Cpu, cpu)),
            (None, Some(memory)) => Some((ResourceName::Memory, memory)),
            (None, None) => None,
        }
    }

    /// Whether this entry is a cpu or memory trigger alone: read by the HPA, not by spillway.
    pub fn is_resource_only(&self) -> bool {
        self.resource().is_some()
            && self.kafka.is_none()
            && self.rabbitmq.is_none()
            && self.nats_jet_stream.is_none()
            && self.prometheus.is_none()
            && self.cron.is_none()
            && !(self.cpu.is_some() && self.memory.is_some())
    }

    /// Every trigger this entry sets (one in a valid entry) by its key, to change in place: the
    /// controller fills in the credentials it fetched.
    pub fn triggers_mut(&mut self) -> Vec<(&'static str, &mut dyn TriggerParams)> {
        let Self {
            name: _,
            metric_type: _,
            authentication_ref: _,
            kafka,
            rabbitmq,
            nats_jet_stream,
            prometheus,
            cron,
            cpu: _,
            memory: _,
        } = self;
        let set: [(&'static str, Option<&mut dyn TriggerParams>); 5] = [
            (KafkaScaler::CONFIG_KEY, kafka.as_mut().map(|t| t as _)),
            (
                RabbitMqScaler::CONFIG_KEY,
                rabbitmq.as_mut().map(|t| t as _),
            ),
            (
                NatsJetStreamScaler::CONFIG_KEY,
                nats_jet_stream.as_mut().map(|t| t as _),
            ),
            (
                PrometheusScaler::CONFIG_KEY,
                prometheus.as_mut().map(|t| t as _),
            ),
            (CronScaler::CONFIG_KEY, cron.as_mut().map(|t| t as _)),
        ];
        set.into_iter()
            .filter_map(|(key, trigger)| Some((key, trigger?)))
            .collect()
    }
}

/// How an HPA compares a trigger's value with its target (autoscaling/v2 `MetricTarget.type`);
/// `Utilization` is for resource metrics only, as in KEDA.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum MetricType {
    /// The HPA wants `ceil(value / target)` replicas: the value is the backlog of all replicas.
    #[default]
    AverageValue,
    /// The HPA wants `ceil(current replicas × value / target)`: the value is a level to hold,
    /// such as a latency or a lag age.
    Value,
}

impl MetricType {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The name autoscaling/v2 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AverageValue => "AverageValue",
            Self::Value => "Value",
        }
    }
}

/// Listen addresses and TLS material of the API server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// HTTPS address of the external metrics API.
    #[serde(default = "ServerConfig::default_listen")]
    pub listen: SocketAddr,
    /// Plain-HTTP address of spillway's own Prometheus metrics.
    #[serde(default = "ServerConfig::default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Serving certificate and key; without them a self-signed pair is made at start.
    /// Re-read when the files change, without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Connections the metrics API keeps open at once; one more is closed on accept.
    #[serde(default = "ServerConfig::default_max_connections")]
    pub max_connections: u32,
    /// Connections the metrics API keeps open at once from one client address, so one pod
    /// cannot take every place.
    #[serde(default = "ServerConfig::default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    /// Seconds a metrics API connection (HTTP/1 or HTTP/2) may stay open with no request in
    /// flight before spillway closes it.
    #[serde(default = "ServerConfig::default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u32,
    /// Who may read `/metrics`: `none` (the default: anyone who reaches the address, as a
    /// plain Prometheus scrape expects) or `namespaces` (a bearer token is required; a caller
    /// gets the series of the namespaces where it may list ScaledObjects, and the process-wide
    /// series only with `get` on the non-resource URL `/metrics`).
    #[serde(default, skip_serializing_if = "MetricsAuth::is_none")]
    pub metrics_auth: MetricsAuth,
    /// Destination classes triggers may reach beyond the default (`loopback`, `link-local`,
    /// `api-server`; see [`crate::destination`]), added to `--allow-destinations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_destinations: Vec<crate::destination::DestinationClass>,
}

impl ServerConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6443))
    }
    fn default_metrics_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9090))
    }
    fn default_max_connections() -> u32 {
        1000
    }
    fn default_max_connections_per_client() -> u32 {
        100
    }
    fn default_idle_timeout_seconds() -> u32 {
        120
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            metrics_listen: Self::default_metrics_listen(),
            tls: None,
            max_connections: Self::default_max_connections(),
            max_connections_per_client: Self::default_max_connections_per_client(),
            idle_timeout_seconds: Self::default_idle_timeout_seconds(),
            metrics_auth: MetricsAuth::None,
            allow_destinations: Vec::new(),
        }
    }
}

/// How `/metrics` authorizes its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAuth {
    /// Everything to anyone who reaches the address.
    #[default]
    None,
    /// Per caller, by TokenReview and SubjectAccessReview (the metrics API's access module does it).
    Namespaces,
}

impl MetricsAuth {
    fn is_none(&self) -> bool {
        *self == Self::None
    }
}

impl ServerConfig {
    /// Replaces `metricsListen` (from `--metrics-listen`), keeping the rule that it differs
    /// from `listen`.
    pub fn override_metrics_listen(&mut self, address: SocketAddr) -> Result<(), String> {
        if address == self.listen {
            return Err(format!(
                "--metrics-listen {address} must differ from server.listen: the metrics API and /metrics need their own ports"
            ));
        }
        self.metrics_listen = address;
        Ok(())
    }
}

/// Reads a listen address: `IP:PORT`, `[IPv6]:PORT`, or an IPv6 address without brackets
/// followed by `:PORT`, which is what `$(POD_IP):9090` gives in a pod spec on an IPv6
/// cluster (the downward API's `status.podIP` has no brackets).
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bad = || format!("{text:?} is not IP:PORT (e.g. 10.0.0.7:9090 or [fd00::7]:9090)");
    let (ip, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::from((ip, port)))
}

/// PEM files for the serving certificate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A polling interval in whole seconds, 1 to 3600; KEDA's default is 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollingInterval(Duration);

impl PollingInterval {
    pub const MAX_SECONDS: u64 = 3600;

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl Default for PollingInterval {
    fn default() -> Self {
        Self(Duration::from_secs(30))
    }
}

impl<'de> Deserialize<'de> for PollingInterval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The range is checked in Config::validate, where the error can be located.
        u64::deserialize(deserializer).map(|seconds| Self(Duration::from_secs(seconds)))
    }
}

impl Serialize for PollingInterval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0.as_secs())
    }
}

impl fmt::Display for PollingInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs())
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` only names the source in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            // serde would report a puzzling "missing field" for an empty document.
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                line: 1,
                column: 1,
                detail: "the file is empty; write `{}` for all defaults".into(),
            });
        }
        let config: Config = serde_norway::from_str(text).map_err(|err| parse_error(path, &err))?;
        config.validate(path, text)?;
        Ok(config)
    }

    /// Rules serde cannot express: ranges and relations between fields.
    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| {
            let (line, column) = locate_field(text, field).unwrap_or((1, 1));
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message,
            })
        };
        let polling = self.polling_interval.as_duration().as_secs();
        if !(1..=PollingInterval::MAX_SECONDS).contains(&polling) {
            return invalid(
                "pollingInterval",
                format!(
                    "must be between 1 and {} seconds, got {polling}",
                    PollingInterval::MAX_SECONDS
                ),
            );
        }
        let mut defined = std::collections::HashSet::new();
        // (namespace, group, kind, name) -> the scaled object scaling it: KEDA's admission
        // webhook refuses a second ScaledObject for one workload, and so does this check.
        let mut targets = std::collections::HashMap::new();
        for (i, so) in self.scaled_objects.iter().enumerate() {
            let at = format!("scaledObjects[{i}]");
            if so.name.trim().is_empty() {
                return invalid(&format!("{at}.name"), "must not be empty".into());
            }
            // A namespace no request path can name would leave its metrics unreachable.
            if let Err(message) = names::check_dns1123_label(&so.namespace) {
                return invalid(&format!("{at}.namespace"), message);
            }
            if let Some(target) = &so.scale_target_ref {
                if let Err((field, message)) = target.check() {
                    return invalid(&format!("{at}.scaleTargetRef.{field}"), message);
                }
                let key = (
                    so.namespace.as_str(),
                    target.group(),
                    target.kind.as_str(),
                    target.name.as_str(),
                );
                if let Some(other) = targets.insert(key, so.name.as_str()) {
                    return invalid(
                        &format!("{at}.scaleTargetRef.name"),
                        format!(
                            "{} {}/{} is already scaled by scaled object {other}",
                            target.kind, so.namespace, target.name
                        ),
                    );
                }
            }
            if !defined.insert((so.namespace.as_str(), so.name.as_str())) {
                return invalid(
                    &format!("{at}.name"),
                    format!("{}/{} is defined twice", so.namespace, so.name),
                );
            }
            if so.min_replica_count > so.max_replica_count {
                return invalid(
                    &format!("{at}.minReplicaCount"),
                    format!(
                        "{} is above maxReplicaCount {}",
                        so.min_replica_count, so.max_replica_count
                    ),
                );
            }
            if so.triggers.is_empty() {
                return invalid(
                    &format!("{at}.triggers"),
                    "needs at least one trigger".into(),
                );
            }
            for (j, entry) in so.triggers.iter().enumerate() {
                let at = format!("{at}.triggers[{j}]");
                if entry.authentication_ref.is_some() {
                    return invalid(
                        &format!("{at}.authenticationRef"),
                        "works in ScaledObjects only: a config file names its credentials as files"
                            .into(),
                    );
                }
                if entry.is_resource_only() {
                    return invalid(
                        &at,
                        "cpu and memory triggers work in ScaledObjects only: the HPA reads them, and a config file has no HPA".into(),
                    );
                }
                let trigger = match entry.trigger() {
                    Ok(trigger) => trigger,
                    Err(keys) if keys.is_empty() => {
                        return invalid(
                            &at,
                            format!(
                                "names no broker: set one of {}",
                                Trigger::CONFIG_KEYS.join(", ")
                            ),
                        );
                    }
                    Err(keys) => {
                        return invalid(
                            &at,
                            format!("sets {}: one broker per trigger", keys.join(" and ")),
                        );
                    }
                };
                if let Err(ScalerError::InvalidTrigger { field, message, .. }) = trigger.validate()
                {
                    let key = trigger.config_key();
                    let field_path = format!("{at}.{key}.{field}");
                    let located = if locate_field(text, &field_path).is_some() {
                        field_path
                    } else {
                        format!("{at}.{key}")
                    };
                    return invalid(&located, message);
                }
            }
        }
        if self.server.max_connections == 0 {
            return invalid("server.maxConnections", "must be at least 1".to_owned());
        }
        if self.server.max_connections_per_client == 0 {
            return invalid(
                "server.maxConnectionsPerClient",
                "must be at least 1".to_owned(),
            );
        }
        if self.server.idle_timeout_seconds == 0 {
            return invalid("server.idleTimeoutSeconds", "must be at least 1".to_owned());
        }
        if self.server.listen == self.server.metrics_listen {
            return invalid(
                "server.metricsListen",
                format!(
                    "must differ from server.listen ({}): the metrics API and /metrics need their own ports",
                    self.server.listen
                ),
            );
        }
        Ok(())
    }

    /// Every trigger with its id, in file order.
    pub fn triggers(&self) -> Vec<(TriggerId, Trigger)> {
        let mut triggers = Vec::new();
        for so in &self.scaled_objects {
            for (index, entry) in so.triggers.iter().enumerate() {
                if let Ok(trigger) = entry.trigger() {
                    let id = TriggerId {
                        namespace: so.namespace.clone(),
                        scaled_object: so.name.clone(),
                        index,
                    };
                    triggers.push((id, trigger));
                }
            }
        }
        triggers
    }

    /// The configuration as spillway understands it, defaults filled in.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a Config always serializes")
    }
}

/// serde_norway's message ends in " at line L column C"; the location moves to the front so
/// every error reads `file:line:column: field.path: message`.
fn parse_error(path: &Path, err: &serde_norway::Error) -> ConfigError {
    let message = err.to_string();
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let suffix = format!(" at line {line} column {column}");
    let detail = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        detail,
    }
}

/// Line and column (both from 1) of the value at a serde path such as `triggers[0].kafka.lagThreshold`.
fn locate_field(text: &str, field: &str) -> Option<(usize, usize)> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;

    /// Tracks the path of the node each event belongs to.
    struct Walker<'a> {
        want: &'a str,
        /// One entry per open collection: its path, and for a mapping the pending key,
        /// for a sequence the next index.
        stack: Vec<(String, Frame)>,
        found: Option<Marker>,
    }
    enum Frame {
        Mapping { key: Option<String> },
        Sequence { next: usize },
    }
    impl Walker<'_> {
        /// The path of the node now starting, or None when this event is a mapping key.
        fn node_path(&mut self, scalar: Option<&str>) -> Option<String> {
            let Some((parent, frame)) = self.stack.last_mut() else {
                return Some(String::new());
            };
            match frame {
                Frame::Mapping { key } => match key.take() {
                    None => {
                        *key = Some(scalar.unwrap_or_default().to_owned());
                        None
                    }
                    Some(k) if parent.is_empty() => Some(k),
                    Some(k) => Some(format!("{parent}.{k}")),
                },
                Frame::Sequence { next } => {
                    *next += 1;
                    Some(format!("{parent}[{}]", *next - 1))
                }
            }
        }
    }
    impl MarkedEventReceiver for Walker<'_> {
        fn on_event(&mut self, event: Event, mark: Marker) {
            if self.found.is_some() {
                return;
            }
            let (scalar, opens) = match &event {
                Event::Scalar(value, ..) => (Some(value.as_str()), None),
                Event::Alias(_) => (None, None),
                Event::MappingStart(..) => (None, Some(Frame::Mapping { key: None })),
                Event::SequenceStart(..) => (None, Some(Frame::Sequence { next: 0 })),
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                    return;
                }
                _ => return,
            };
            let Some(path) = self.node_path(scalar) else {
                return;
            };
            if path == self.want {
                self.found = Some(mark);
            }
            if let Some(frame) = opens {
                self.stack.push((path, frame));
            }
        }
    }

    let mut walker = Walker {
        want: field,
        stack: Vec::new(),
        found: None,
    };
    Parser::new_from_str(text).load(&mut walker, false).ok()?;
    walker.found.map(|m| (m.line(), m.col() + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("spillway.yaml"), text)
    }

    #[test]
    fn broker_keys_are_the_triggers_own() {
        let schema = schemars::schema_for!(TriggerConfig);
        let mut properties: Vec<&str> = schema.as_value()["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            // The keys that are not a broker's (cpu and memory are the HPA's to read).
            .filter(|key| {
                !["authenticationRef", "name", "metricType", "cpu", "memory"].contains(key)
            })
            .collect();
        properties.sort_unstable();
        let mut keys = Trigger::CONFIG_KEYS;
        keys.sort_unstable();
        assert_eq!(properties, keys);
        let rule = schema.as_value()["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap();
        for key in Trigger::CONFIG_KEYS {
            assert!(rule.contains(&format!("has(self.{key})")), "{key}: {rule}");
        }

        let mut every_broker: TriggerConfig = serde_norway::from_str(
            r#"
kafka: {bootstrapServers: "k:9092", consumerGroup: g, topic: t}
rabbitmq: {host: "amqp://r/", queueName: q, value: 1}
natsJetStream: {natsServerMonitoringEndpoint: "n:8222", stream: s, consumer: c}
prometheus: {serverAddress: "http://p:9090", query: up, threshold: 1}
cron: {timezone: UTC, start: "0 8 * * *", end: "0 9 * * *", desiredReplicas: 1}
"#,
        )
        .unwrap();
        assert_eq!(every_broker.trigger(), Err(Trigger::CONFIG_KEYS.to_vec()));
        let keys: Vec<&str> = every_broker
            .triggers_mut()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, Trigger::CONFIG_KEYS);
    }

    #[test]
    fn empty_mapping_gives_defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(
            config.polling_interval.as_duration(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn full_file_round_trips() {
        let text = "server:\n  listen: 127.0.0.1:7443\n  metricsListen: '[::1]:9191'\n  tls:\n    certFile: /etc/spillway/tls.crt\n    keyFile: /etc/spillway/tls.key\n  allowDestinations: [loopback, link-local]\npollingInterval: 5\n";
        let config = parse(text).unwrap();
        assert_eq!(
            config.server.allow_destinations,
            [
                crate::destination::DestinationClass::Loopback,
                crate::destination::DestinationClass::LinkLocal
            ]
        );
        assert_eq!(config.server.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(config.server.metrics_listen, "[::1]:9191".parse().unwrap());
        assert_eq!(config.polling_interval.to_string(), "5s");
        assert_eq!(parse(&config.to_yaml()).unwrap(), config);
    }

    /// Each bad input names file, line, column and field.
    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            (
                "server:\n  tls:\n    certFile: a\n    keyFile: b\n    keyfile: c\n",
                "spillway.yaml:5:5: server.tls: unknown field `keyfile`",
            ),
            (
                "server:\n  listen: 127.0.0.1:1\n  lisen: x\n",
                "spillway.yaml:3:3: server: unknown field `lisen`",
            ),
            (
                "server:\n  allowDestinations: [metadata]\n",
                "spillway.yaml:2:23: server.allowDestinations[0]: unknown variant `metadata`",
            ),
            (
                "server:\n  listen: nope\n",
                "spillway.yaml:2:11: server.listen: invalid socket address syntax",
            ),
            (
                "pollingInterval: 0\n",
                "spillway.yaml:1:18: pollingInterval: must be between 1 and 3600 seconds, got 0",
            ),
            (
                "pollingInterval: -5\n",
                "spillway.yaml:1:18: pollingInterval: invalid type: integer `-5`",
            ),
            (
                "triggerz: []\n",
                "spillway.yaml:1:1: unknown field `triggerz`",
            ),
            ("server: [\n", "spillway.yaml:"),
            ("", "spillway.yaml:1:1: the file is empty"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "{text:?}: got {err:?}, want prefix {want:?}"
            );
        }
    }

    #[test]
    fn listen_addresses_from_the_downward_api_are_read() {
        let cases: [(&str, Option<&str>); 7] = [
            ("10.0.0.7:9090", Some("10.0.0.7:9090")),
            ("[fd00::7]:9090", Some("[fd00::7]:9090")),
            // `$(POD_IP):9090` on an IPv6 cluster.
            ("fd00::7:9090", Some("[fd00::7]:9090")),
            ("10.0.0.7", None),
            (":9090", None),
            ("pod.local:9090", None),
            ("10.0.0.7:99999", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_listen_address(text);
            match expected {
                Some(address) => {
                    assert_eq!(parsed, Ok(address.parse().unwrap()), "{text}")
                }
                None => assert!(
                    parsed.as_ref().is_err_and(|e| e.contains("is not IP:PORT")),
                    "{text}: {parsed:?}"
                ),
            }
        }
    }

    #[test]
    fn the_metrics_listen_override_must_differ_from_listen() {
        let mut server = ServerConfig::default();
        let api = server.listen;
        let err = server.override_metrics_listen(api).unwrap_err();
        assert!(err.contains("must differ from server.listen"), "{err}");
        assert_eq!(server.metrics_listen, "127.0.0.1:9090".parse().unwrap());
        server
            .override_metrics_listen("10.0.0.7:9090".parse().unwrap())
            .unwrap();
        assert_eq!(server.metrics_listen, "10.0.0.7:9090".parse().unwrap());
    }

    #[test]
    fn metrics_auth_is_off_unless_asked() {
        assert_eq!(
            parse("server: {}\n").unwrap().server.metrics_auth,
            MetricsAuth::None
        );
        let config = parse("server:\n  metricsAuth: namespaces\n").unwrap();
        assert_eq!(config.server.metrics_auth, MetricsAuth::Namespaces);
        assert!(config.to_yaml().contains("metricsAuth: namespaces"));
        assert!(parse("server:\n  metricsAuth: all\n").is_err());
    }

    #[test]
    fn same_port_for_api_and_metrics_is_rejected() {
        let err = parse("server:\n  listen: 127.0.0.1:9000\n  metricsListen: 127.0.0.1:9000\n")
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { field, line: 3, column: 18, .. } if field == "server.metricsListen"),
            "{err}"
        );
    }

    const ORDERS: &str = "scaledObjects:\n  - name: orders\n    maxReplicaCount: 12\n    triggers:\n      - kafka:\n          bootstrapServers: 127.0.0.1:9092\n          consumerGroup: orders\n          topic: orders\n";

    #[test]
    fn scaled_objects_give_typed_triggers() {
        let config = parse(ORDERS).unwrap();
        let triggers = config.triggers();
        assert_eq!(triggers.len(), 1);
        assert_eq!(triggers[0].0.to_string(), "default/orders[0]");
        assert_eq!(triggers[0].1.kind(), "kafka");
        assert_eq!(triggers[0].1.metric_name(), "kafka-orders");
        assert_eq!(config.scaled_objects[0].max_replica_count, 12);
        assert_eq!(parse(&config.to_yaml()).unwrap(), config);
    }

    #[test]
    fn bad_triggers_are_located() {
        let cases = [
            (ORDERS.replace("topic: orders", "topic: orders\n          lagThreshold: 0"), "spillway.yaml:9:25: scaledObjects[0].triggers[0].kafka.lagThreshold: must be positive number"),
            (ORDERS.replace("topic: orders", "topik: orders"), "spillway.yaml:8:11: scaledObjects[0].triggers[0].kafka: unknown field `topik`"),
            (ORDERS.replace("      - kafka:", "      - cron: {timezone: UTC, start: '0 8 * * *', end: '0 9 * * *', desiredReplicas: 1}\n        kafka:"), "spillway.yaml:5:13: scaledObjects[0].triggers[0]: sets kafka and cron"),
            (ORDERS.replace("maxReplicaCount: 12", "maxReplicaCount: 12\n    minReplicaCount: 13"), "spillway.yaml:4:22: scaledObjects[0].minReplicaCount: 13 is above maxReplicaCount 12"),
            ("scaledObjects:\n  - name: a\n    triggers: [{}]\n".to_owned(), "spillway.yaml:3:16: scaledObjects[0].triggers[0]: names no broker"),
            (ORDERS.replace("      - kafka:", "      - authenticationRef: {name: kafka}\n        kafka:"), "spillway.yaml:5:28: scaledObjects[0].triggers[0].authenticationRef: works in ScaledObjects only"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want prefix {want:?}");
        }
    }

    #[test]
    fn scale_targets_default_to_deployments_and_name_their_resource() {
        let text = ORDERS.replace(
            "    maxReplicaCount: 12\n",
            "    maxReplicaCount: 12\n    scaleTargetRef: {name: orders-consumer}\n",
        );
        let config = parse(&text).unwrap();
        let target = config.scaled_objects[0].scale_target_ref.as_ref().unwrap();
        assert_eq!(
            (target.api_version.as_str(), target.kind.as_str()),
            ("apps/v1", "Deployment")
        );
        assert_eq!(target.group_resource(), "deployments.apps");
        assert_eq!(parse(&config.to_yaml()).unwrap(), config);

        let cases = [
            ("apps/v1", "StatefulSet", "statefulsets.apps"),
            ("v1", "Service", "services"),
            (
                "networking.k8s.io/v1",
                "Ingress",
                "ingresses.networking.k8s.io",
            ),
            ("example.com/v1", "Policy", "policies.example.com"),
        ];
        for (api_version, kind, resource) in cases {
            let target = ScaleTargetRef {
                api_version: api_version.into(),
                kind: kind.into(),
                name: "x".into(),
            };
            assert_eq!(target.group_resource(), resource, "{kind}");
            assert!(target.check().is_ok(), "{kind}");
        }
    }

    #[test]
    fn bad_scale_targets_and_namespaces_are_located() {
        let with = |target: &str| {
            ORDERS.replace(
                "    maxReplicaCount: 12\n",
                &format!("    maxReplicaCount: 12\n    scaleTargetRef: {target}\n"),
            )
        };
        let twice = format!(
            "{}  - name: again\n    scaleTargetRef: {{name: orders-consumer}}\n    triggers: [{{cron: {{timezone: UTC, start: '0 6 * * *', end: '0 20 * * *', desiredReplicas: 1}}}}]\n",
            with("{name: orders-consumer}")
        );
        let cases = [
            (
                with("{name: Orders}"),
                "scaledObjects[0].scaleTargetRef.name: \"Orders\" must consist",
            ),
            (
                with("{name: a, kind: deployment}"),
                "scaledObjects[0].scaleTargetRef.kind: \"deployment\" is not a kind",
            ),
            (
                with("{name: a, apiVersion: apps/}"),
                "scaledObjects[0].scaleTargetRef.apiVersion: \"apps/\": the version must not be empty",
            ),
            (
                with("{name: a, replicas: 3}"),
                "scaledObjects[0].scaleTargetRef: unknown field `replicas`",
            ),
            (
                twice,
                "scaledObjects[1].scaleTargetRef.name: Deployment default/orders-consumer is already scaled by scaled object orders",
            ),
            (
                ORDERS.replace(
                    "  - name: orders\n",
                    "  - name: orders\n    namespace: Team_A\n",
                ),
                "scaledObjects[0].namespace: \"Team_A\" must consist",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn locates_fields_inside_sequences_and_flow_mappings() {
        let text = "a:\n  - x: 1\n  - x: 2\n    y: {z: 3}\n";
        assert_eq!(locate_field(text, "a[1].y.z"), Some((4, 12)));
        assert_eq!(locate_field(text, "a[0].x"), Some((2, 8)));
        assert_eq!(locate_field(text, "a[2]"), None);
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/spillway.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read config file /nonexistent/spillway.yaml"
        );
        assert!(
            matches!(err, ConfigError::Read { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
    }
}
