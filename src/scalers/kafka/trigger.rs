//! The `kafka` trigger: KEDA's parameters (see the module doc of [`super`]), their defaults and
//! checks, how a trigger names its connection and its metric, and its activation rule.

use std::collections::HashSet;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

use super::{KIND, LagRules, OffsetResetPolicy, parse_partition_limitation};
use crate::kafka_client::{ConnectOptions, SaslCredentials, ScramMechanism, TlsOptions};
use crate::scalers::{
    ActivationInput, CredentialSlot, ScalerError, TriggerParams, normalize_metric_name,
};
use crate::secret::{SecretSource, SecretString};

/// SASL mechanism, with KEDA's names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SaslMechanism {
    #[default]
    None,
    /// SASL/PLAIN.
    Plaintext,
    #[serde(rename = "scram_sha256")]
    ScramSha256,
    #[serde(rename = "scram_sha512")]
    ScramSha512,
}

/// Whether the connection uses TLS (KEDA's `tls: enable|disable`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Disable,
    Enable,
}

/// The `kafka` trigger: KEDA's parameter names and defaults, typed.
// The schema's rules repeat the cross-field checks of `validate` that the API server can make,
// so a ScaledObject breaking them is refused when written, not when polled. Those that need a
// credential present (password, cert with key) are the trigger entry's, which sees whether an
// `authenticationRef` may supply it (`TriggerConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.sasl) || self.sasl == 'none' || (has(self.username) && self.username != '')",
        "message": "sasl needs username and password"
    },
    {
        "rule": "(has(self.tls) && self.tls == 'enable') || !(has(self.ca) || has(self.cert) || has(self.key) || has(self.keyPassword) || (has(self.unsafeSsl) && self.unsafeSsl))",
        "message": "ca, cert, key, keyPassword and unsafeSsl need tls: enable"
    },
    {
        "rule": "has(self.topic) || !(has(self.partitionLimitation) || (has(self.limitToPartitionsWithLag) && self.limitToPartitionsWithLag) || (has(self.ensureEvenDistributionOfPartitions) && self.ensureEvenDistributionOfPartitions))",
        "message": "partitionLimitation, limitToPartitionsWithLag and ensureEvenDistributionOfPartitions need topic"
    },
    {
        "rule": "!(has(self.limitToPartitionsWithLag) && self.limitToPartitionsWithLag && ((has(self.allowIdleConsumers) && self.allowIdleConsumers) || (has(self.ensureEvenDistributionOfPartitions) && self.ensureEvenDistributionOfPartitions)))",
        "message": "limitToPartitionsWithLag cannot be set with allowIdleConsumers or ensureEvenDistributionOfPartitions"
    }
]))]
pub struct KafkaTrigger {
    /// Comma-separated `host:port` list.
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: String,
    #[schemars(length(min = 1, max = 1024))]
    pub consumer_group: String,
    /// One topic; empty means every topic the group has committed offsets for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub topic: Option<String>,
    /// The HPA's AverageValue target: lag one consumer should handle. Default 10.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: u64,
    /// Active (scale from zero) when total lag is strictly greater. Default 0.
    #[serde(default)]
    pub activation_lag_threshold: u64,
    #[serde(default)]
    pub offset_reset_policy: OffsetResetPolicy,
    #[serde(default)]
    pub allow_idle_consumers: bool,
    #[serde(default)]
    pub exclude_persistent_lag: bool,
    #[serde(default)]
    pub scale_to_zero_on_invalid_offset: bool,
    #[serde(default)]
    pub limit_to_partitions_with_lag: bool,
    #[serde(default)]
    pub ensure_even_distribution_of_partitions: bool,
    /// Partitions to count, e.g. `"0,1,10-12"`; needs `topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub partition_limitation: Option<String>,
    #[serde(default)]
    pub sasl: SaslMechanism,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM CA bundle to verify the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretSource>,
    /// PEM client certificate and key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_password: Option<SecretSource>,
    /// Skip verification of the brokers' certificates.
    #[serde(default)]
    pub unsafe_ssl: bool,
    /// Bound on each broker call, in milliseconds (not in KEDA). Default 5000.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 100, max = 60_000))]
    pub timeout: u64,
}

fn default_lag_threshold() -> u64 {
    10
}

fn default_timeout_ms() -> u64 {
    5000
}

impl KafkaTrigger {
    /// A trigger with KEDA's defaults.
    pub fn new(
        bootstrap_servers: impl Into<String>,
        consumer_group: impl Into<String>,
        topic: Option<&str>,
    ) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            consumer_group: consumer_group.into(),
            topic: topic.map(str::to_owned),
            lag_threshold: default_lag_threshold(),
            activation_lag_threshold: 0,
            offset_reset_policy: OffsetResetPolicy::Latest,
            allow_idle_consumers: false,
            exclude_persistent_lag: false,
            scale_to_zero_on_invalid_offset: false,
            limit_to_partitions_with_lag: false,
            ensure_even_distribution_of_partitions: false,
            partition_limitation: None,
            sasl: SaslMechanism::None,
            username: None,
            password: None,
            tls: TlsMode::Disable,
            ca: None,
            cert: None,
            key: None,
            key_password: None,
            unsafe_ssl: false,
            timeout: default_timeout_ms(),
        }
    }

    pub(super) fn rules(&self) -> LagRules {
        LagRules {
            lag_threshold: self.lag_threshold,
            offset_reset_policy: self.offset_reset_policy,
            scale_to_zero_on_invalid_offset: self.scale_to_zero_on_invalid_offset,
            allow_idle_consumers: self.allow_idle_consumers,
            limit_to_partitions_with_lag: self.limit_to_partitions_with_lag,
            ensure_even_distribution_of_partitions: self.ensure_even_distribution_of_partitions,
        }
    }

    pub(super) fn servers(&self) -> Vec<&str> {
        self.bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub(super) fn partition_filter(&self) -> Option<HashSet<i32>> {
        self.partition_limitation
            .as_deref()
            .and_then(|text| parse_partition_limitation(text).ok())
            .map(|p| p.into_iter().collect())
    }

    /// How the wire client connects: TLS (CA, client certificate, `unsafeSsl`) and SASL, with
    /// secret files read now. An encrypted client key (`keyPassword`) is refused: rustls reads
    /// only unencrypted keys, and a key that silently fails would read as a broken cluster.
    pub fn connect_options(&self) -> Result<ConnectOptions, ScalerError> {
        let read = |field: &str, source: &SecretSource| -> Result<String, ScalerError> {
            source
                .read()
                .map(|secret| secret.expose().to_owned())
                .map_err(|err| ScalerError::invalid(KIND, field, err.to_string()))
        };
        let sasl = match self.sasl {
            SaslMechanism::None => None,
            mechanism => {
                let username = self.username.clone().unwrap_or_default();
                let password = match &self.password {
                    Some(password) => read("password", password)?,
                    None => String::new(),
                };
                Some(match mechanism {
                    SaslMechanism::Plaintext => SaslCredentials::Plain { username, password },
                    SaslMechanism::ScramSha256 => SaslCredentials::Scram {
                        mechanism: ScramMechanism::Sha256,
                        username,
                        password,
                    },
                    SaslMechanism::ScramSha512 => SaslCredentials::Scram {
                        mechanism: ScramMechanism::Sha512,
                        username,
                        password,
                    },
                    SaslMechanism::None => unreachable!("matched above"),
                })
            }
        };
        let tls = match self.tls {
            TlsMode::Disable => None,
            TlsMode::Enable => {
                if self.key_password.is_some() {
                    return Err(ScalerError::invalid(
                        KIND,
                        "keyPassword",
                        "encrypted client keys are not supported; give the key unencrypted (PKCS#8 or PKCS#1 PEM) in `key`",
                    ));
                }
                let options = TlsOptions {
                    ca_pem: self.ca.as_ref().map(|ca| read("ca", ca)).transpose()?,
                    cert_pem: self.cert.as_ref().map(|c| read("cert", c)).transpose()?,
                    key_pem: self.key.as_ref().map(|k| read("key", k)).transpose()?,
                    insecure: self.unsafe_ssl,
                };
                let config = options
                    .client_config()
                    .map_err(|err| ScalerError::invalid(KIND, "tls", err.to_string()))?;
                Some(config)
            }
        };
        Ok(ConnectOptions {
            tls,
            sasl,
            timeout: std::time::Duration::from_millis(self.timeout),
        })
    }

    /// librdkafka settings for this trigger's cluster, with secrets read from their files.
    pub fn client_config(&self) -> Result<ClientConfig, ScalerError> {
        let read = |field: &str, source: &SecretSource| -> Result<SecretString, ScalerError> {
            source
                .read()
                .map_err(|err| ScalerError::invalid(KIND, field, err.to_string()))
        };
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.servers().join(","));
        config.set("client.id", "spillway");
        let protocol = match (self.sasl, self.tls) {
            (SaslMechanism::None, TlsMode::Disable) => "plaintext",
            (SaslMechanism::None, TlsMode::Enable) => "ssl",
            (_, TlsMode::Disable) => "sasl_plaintext",
            (_, TlsMode::Enable) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if self.sasl != SaslMechanism::None {
            let mechanism = match self.sasl {
                SaslMechanism::Plaintext => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
                SaslMechanism::None => unreachable!("checked above"),
            };
            config.set("sasl.mechanism", mechanism);
            config.set("sasl.username", self.username.clone().unwrap_or_default());
            if let Some(password) = &self.password {
                config.set("sasl.password", read("password", password)?.expose());
            }
        }
        if self.tls == TlsMode::Enable {
            if let Some(ca) = &self.ca {
                config.set("ssl.ca.pem", read("ca", ca)?.expose());
            }
            if let Some(cert) = &self.cert {
                config.set("ssl.certificate.pem", read("cert", cert)?.expose());
            }
            if let Some(key) = &self.key {
                config.set("ssl.key.pem", read("key", key)?.expose());
            }
            if let Some(key_password) = &self.key_password {
                config.set(
                    "ssl.key.password",
                    read("keyPassword", key_password)?.expose(),
                );
            }
            if self.unsafe_ssl {
                config.set("enable.ssl.certificate.verification", "false");
                config.set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        Ok(config)
    }
}

impl TriggerParams for KafkaTrigger {
    fn target_value(&self) -> f64 {
        self.lag_threshold as f64
    }

    fn activation_threshold(&self) -> f64 {
        self.activation_lag_threshold as f64
    }

    /// Compares the lag with persistent lag and before the caps (the backlog), so a stuck
    /// consumer keeps its trigger active even when `excludePersistentLag` leaves its lag out
    /// of the value; without the backlog, the value stands for it.
    fn is_active(&self, input: ActivationInput) -> bool {
        input.backlog.unwrap_or(input.value) > self.activation_threshold()
    }

    fn metric_name(&self) -> String {
        match &self.topic {
            Some(topic) => normalize_metric_name(&format!("kafka-{topic}")),
            None => normalize_metric_name(&format!("kafka-{}-topics", self.consumer_group)),
        }
    }

    fn validate(&self) -> Result<(), ScalerError> {
        let servers = self.servers();
        if servers.is_empty() {
            return Err(ScalerError::invalid(
                KIND,
                "bootstrapServers",
                "must name at least one host:port",
            ));
        }
        for server in &servers {
            let valid = server.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(ScalerError::invalid(
                    KIND,
                    "bootstrapServers",
                    format!("{server:?} is not host:port"),
                ));
            }
        }
        if self.consumer_group.trim().is_empty() {
            return Err(ScalerError::invalid(
                KIND,
                "consumerGroup",
                "must not be empty",
            ));
        }
        if self.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ScalerError::invalid(
                KIND,
                "topic",
                "must not be empty when set",
            ));
        }
        if self.lag_threshold == 0 {
            return Err(ScalerError::invalid(
                KIND,
                "lagThreshold",
                "must be positive number",
            ));
        }
        if self.allow_idle_consumers && self.limit_to_partitions_with_lag {
            return Err(ScalerError::invalid(
                KIND,
                "limitToPartitionsWithLag",
                "allowIdleConsumers and limitToPartitionsWithLag cannot be set simultaneously",
            ));
        }
        if self.limit_to_partitions_with_lag && self.ensure_even_distribution_of_partitions {
            return Err(ScalerError::invalid(
                KIND,
                "ensureEvenDistributionOfPartitions",
                "limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot be set simultaneously",
            ));
        }
        if self.topic.is_none() {
            if self.limit_to_partitions_with_lag {
                return Err(ScalerError::invalid(
                    KIND,
                    "topic",
                    "topic must be specified when using limitToPartitionsWithLag",
                ));
            }
            if self.ensure_even_distribution_of_partitions {
                return Err(ScalerError::invalid(
                    KIND,
                    "topic",
                    "topic must be specified when using ensureEvenDistributionOfPartitions",
                ));
            }
            if self.partition_limitation.is_some() {
                return Err(ScalerError::invalid(
                    KIND,
                    "partitionLimitation",
                    "needs topic: it names partitions of one topic",
                ));
            }
        }
        if let Some(text) = &self.partition_limitation {
            parse_partition_limitation(text)
                .map_err(|m| ScalerError::invalid(KIND, "partitionLimitation", m))?;
        }
        if self.sasl != SaslMechanism::None {
            if self.username.as_deref().is_none_or(str::is_empty) {
                return Err(ScalerError::invalid(
                    KIND,
                    "username",
                    "required when sasl is set",
                ));
            }
            if self.password.is_none() {
                return Err(ScalerError::invalid(
                    KIND,
                    "password",
                    "required when sasl is set",
                ));
            }
        }
        if self.tls == TlsMode::Disable {
            for (field, set) in [
                ("ca", self.ca.is_some()),
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("unsafeSsl", self.unsafe_ssl),
            ] {
                if set {
                    return Err(ScalerError::invalid(KIND, field, "needs tls: enable"));
                }
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(ScalerError::invalid(
                KIND,
                if self.cert.is_some() { "key" } else { "cert" },
                "cert and key go together",
            ));
        }
        if !(100..=60_000).contains(&self.timeout) {
            return Err(ScalerError::invalid(
                KIND,
                "timeout",
                format!(
                    "must be between 100 and 60000 milliseconds, got {}",
                    self.timeout
                ),
            ));
        }
        Ok(())
    }

    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)> {
        let KafkaTrigger {
            password,
            ca,
            cert,
            key,
            key_password,
            bootstrap_servers: _,
            consumer_group: _,
            topic: _,
            lag_threshold: _,
            activation_lag_threshold: _,
            offset_reset_policy: _,
            allow_idle_consumers: _,
            exclude_persistent_lag: _,
            scale_to_zero_on_invalid_offset: _,
            limit_to_partitions_with_lag: _,
            ensure_even_distribution_of_partitions: _,
            partition_limitation: _,
            sasl: _,
            username: _,
            tls: _,
            unsafe_ssl: _,
            timeout: _,
        } = self;
        [
            ("password", password),
            ("ca", ca),
            ("cert", cert),
            ("key", key),
            ("keyPassword", key_password),
        ]
        .into_iter()
        .filter_map(|(field, source)| source.as_mut().map(|s| (field, s)))
        .collect()
    }

    /// KEDA's Kafka TriggerAuthentication parameters of the same names; `sasl`, `username`
    /// and `tls` are settings, not credentials, and stay in the trigger.
    fn credential_slots(&mut self) -> Vec<CredentialSlot<'_>> {
        vec![
            CredentialSlot::new("password", &mut self.password),
            CredentialSlot::new("ca", &mut self.ca),
            CredentialSlot::new("cert", &mut self.cert),
            CredentialSlot::new("key", &mut self.key),
            CredentialSlot::new("keyPassword", &mut self.key_password),
        ]
    }
}
