//! NATS JetStream scaler: a consumer's backlog read from the server's HTTP monitoring endpoint
//! (`/jsz`), with KEDA's `nats-jetstream` parameters and its choice of fields.
//!
//! The lag of a trigger is `num_pending + num_ack_pending` of its consumer: messages not yet
//! delivered plus messages delivered and not yet acknowledged (KEDA's `getMaxMsgLag`). Both parts
//! are also reported as the extra metrics `pending` and `ack-pending`, and as the trigger's
//! backlog detail for spillway's `/metrics` (`spillway_nats_jetstream_consumer_{pending,ack_pending}`).
//!
//! One scaler serves every trigger on one monitoring endpoint and reads them all from ONE
//! `GET /jsz?accounts=true&streams=true&consumers=true&config=true` per tick (plus `acc=<name>`
//! when every trigger names the same account, which only shrinks the answer). KEDA asks once
//! per trigger.
//!
//! A missing stream or consumer is a [`ScalerError::NotFound`] naming it, as in KEDA since 2.20
//! (before, KEDA served the stream's `last_seq`, the whole stream as backlog, for a missing
//! consumer).
//!
//! Where spillway differs from KEDA, on purpose:
//! - `account` defaults to `$G`, the account of a server that runs without accounts; KEDA
//!   requires `account` or `accountID`. An account matches by id (`accountID`, else `account`)
//!   or by name (`account`, else `accountID`), as in KEDA.
//! - Clustered JetStream (`meta_cluster.cluster_size > 1`): a follower's counts can be stale
//!   (nats-server#4539) or zero (newer servers), so the consumer's leader
//!   (`consumer_detail[].cluster.leader`, a server name) is read. The endpoint's answer is used
//!   when it came from the leader (its `server_id` is known to belong to the leader); otherwise
//!   the leader's own monitoring endpoint is asked, once per tick per leader, for all triggers it
//!   leads. Server names are mapped to monitoring URLs by asking `/varz` of candidate hosts and
//!   keeping those whose `server_name` answers: first `<name>.<endpoint host>` (the headless
//!   Service naming KEDA assumes), then the hosts in the endpoint's `/varz` `connect_urls` and
//!   `cluster.urls`, all on the endpoint's monitoring port, at most [`MAX_PROBED_HOSTS`] per
//!   discovery. The map is cached and rebuilt only when a leader is unknown or stops answering. A consumer absent from the node that answered
//!   (an R1 stream on another node) is looked for on every known node. A consumer without a
//!   leader (an election in progress), or whose leader cannot be found, is an error, never the
//!   follower's figure.
//! - The `/jsz` call is bounded by a 3 s timeout (KEDA's global HTTP default). A poll makes at
//!   most three rounds of calls (endpoint, discovery, leaders), each so bounded.
//! - nats-server lists at most 1024 accounts per `/jsz` answer (its default `limit`): a trigger
//!   whose account is beyond that reads as "account not found". Give triggers of many-account
//!   servers a shared `account` so the `acc=` filter applies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{HttpAuth, HttpClient};
use super::{
    ActivationInput, BacklogSample, Reading, Scaler, ScalerError, TriggerParams,
    normalize_metric_name,
};
use crate::secret::SecretSource;

/// The broker name in errors, logs and metric labels; KEDA's trigger type.
const BROKER: &str = "nats-jetstream";
/// KEDA's `defaultJetStreamLagThreshold`.
pub const DEFAULT_LAG_THRESHOLD: u64 = 10;
/// The account every connection lands in when the server has no accounts configured.
pub const DEFAULT_ACCOUNT: &str = "$G";
/// Bound of each monitoring call (KEDA's `KEDA_HTTP_DEFAULT_TIMEOUT`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A `nats-jetstream` trigger: KEDA's parameter names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsJetStreamTrigger {
    /// `host[:port]` of the monitoring port, no scheme, e.g. `nats.nats.svc:8222`.
    #[schemars(length(min = 1, max = 512))]
    pub nats_server_monitoring_endpoint: String,
    /// Account name; `$G` when neither it nor `accountID` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub account: Option<String>,
    /// Account id (an account public key in operator mode); defaults to `account`.
    #[serde(
        default,
        rename = "accountID",
        alias = "accountId",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1))]
    pub account_id: Option<String>,
    /// Stream name.
    #[schemars(length(min = 1))]
    pub stream: String,
    /// Consumer name (durable name for durable consumers).
    #[schemars(length(min = 1))]
    pub consumer: String,
    /// Target lag per replica (the HPA's AverageValue).
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: u64,
    /// The trigger is active when the lag is above this.
    #[serde(default)]
    pub activation_lag_threshold: u64,
    /// Read the monitoring endpoint over HTTPS.
    #[serde(default)]
    pub use_https: bool,
}

fn default_lag_threshold() -> u64 {
    DEFAULT_LAG_THRESHOLD
}

impl NatsJetStreamTrigger {
    /// The account id to match (KEDA: `accountID`, else `account`).
    fn account_id(&self) -> &str {
        self.account_id
            .as_deref()
            .or(self.account.as_deref())
            .unwrap_or(DEFAULT_ACCOUNT)
    }

    /// The account name to match (`account`, else `accountID`).
    fn account_name(&self) -> &str {
        self.account
            .as_deref()
            .or(self.account_id.as_deref())
            .unwrap_or(DEFAULT_ACCOUNT)
    }

    /// The monitoring endpoint as a base URL (`scheme://host:port/`).
    pub fn endpoint_url(&self) -> Result<Url, ScalerError> {
        let endpoint = self.nats_server_monitoring_endpoint.trim();
        let bad_endpoint =
            |message: String| ScalerError::invalid(BROKER, "natsServerMonitoringEndpoint", message);
        if endpoint.is_empty() {
            return Err(bad_endpoint("must be set to host[:port]".into()));
        }
        if endpoint.contains("://") {
            return Err(bad_endpoint(format!(
                "{endpoint:?} must be host[:port] without a scheme; set useHttps for HTTPS"
            )));
        }
        if endpoint.contains(['/', '?', '#', '@']) {
            return Err(bad_endpoint(format!(
                "{endpoint:?} must be host[:port] only, without a path, query or credentials"
            )));
        }
        let scheme = if self.use_https { "https" } else { "http" };
        let url = Url::parse(&format!("{scheme}://{endpoint}/")).map_err(|err| {
            bad_endpoint(format!("{endpoint:?} is not a valid host[:port]: {err}"))
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad_endpoint(format!("{endpoint:?} has no host")));
        }
        Ok(url)
    }

    /// What errors name: the consumer and where it lives.
    fn target(&self) -> String {
        format!(
            "{} consumer {:?} of stream {:?} (account {:?})",
            self.nats_server_monitoring_endpoint.trim(),
            self.consumer,
            self.stream,
            self.account_name()
        )
    }
}

impl TriggerParams for NatsJetStreamTrigger {
    fn target_value(&self) -> f64 {
        self.lag_threshold as f64
    }

    fn activation_threshold(&self) -> f64 {
        self.activation_lag_threshold as f64
    }

    fn metric_name(&self) -> String {
        normalize_metric_name(&format!("nats-jetstream-{}", self.stream))
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.endpoint_url()?;
        if self.stream.trim().is_empty() {
            return Err(ScalerError::invalid(
                BROKER,
                "stream",
                "no stream name given",
            ));
        }
        if self.consumer.trim().is_empty() {
            return Err(ScalerError::invalid(
                BROKER,
                "consumer",
                "no consumer name given",
            ));
        }
        if self.account.as_deref().is_some_and(|a| a.trim().is_empty()) {
            return Err(ScalerError::invalid(
                BROKER,
                "account",
                "must not be empty; omit it for the default $G",
            ));
        }
        if self
            .account_id
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(ScalerError::invalid(
                BROKER,
                "accountID",
                "must not be empty when given",
            ));
        }
        if self.lag_threshold == 0 {
            return Err(ScalerError::invalid(
                BROKER,
                "lagThreshold",
                "must be at least 1: it is the HPA's target per replica",
            ));
        }
        Ok(())
    }

    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)> {
        let NatsJetStreamTrigger {
            nats_server_monitoring_endpoint: _,
            account: _,
            account_id: _,
            stream: _,
            consumer: _,
            lag_threshold: _,
            activation_lag_threshold: _,
            use_https: _,
        } = self;
        Vec::new()
    }
}

/// The parts of a `/jsz` answer the scaler reads (nats-server 2.9 field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Jsz {
    /// The answering server's id; `/varz` maps it to a server name.
    pub server_id: String,
    /// Present when JetStream is clustered.
    #[serde(default)]
    pub meta_cluster: Option<MetaCluster>,
    /// One entry per JetStream-enabled account (at most 1024).
    #[serde(default)]
    pub account_details: Vec<AccountDetail>,
}

/// `/jsz` `meta_cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaCluster {
    /// Number of servers in the JetStream cluster.
    #[serde(default)]
    pub cluster_size: usize,
}

/// `/jsz` `account_details[]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AccountDetail {
    /// Account name (its name tag in operator mode).
    pub name: String,
    /// Account id (the public key in operator mode; the name otherwise).
    #[serde(default)]
    pub id: String,
    /// The account's streams that this server holds.
    #[serde(default)]
    pub stream_detail: Vec<StreamDetail>,
}

/// `/jsz` `account_details[].stream_detail[]`.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamDetail {
    /// Stream name.
    pub name: String,
    /// The stream's consumers on this server.
    #[serde(default)]
    pub consumer_detail: Vec<ConsumerDetail>,
}

/// `/jsz` `...consumer_detail[]`: the counts the lag is made of.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConsumerDetail {
    /// Consumer name.
    pub name: String,
    /// Messages matching the consumer not yet delivered.
    pub num_pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub num_ack_pending: u64,
    /// Present in clustered JetStream: who leads this consumer.
    #[serde(default)]
    pub cluster: Option<ClusterInfo>,
}

/// `cluster` of a stream or consumer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClusterInfo {
    /// Server name of the leader; absent during an election.
    #[serde(default)]
    pub leader: Option<String>,
}

impl Jsz {
    /// True when JetStream runs as a cluster of more than one server.
    pub fn is_clustered(&self) -> bool {
        self.meta_cluster
            .as_ref()
            .is_some_and(|meta| meta.cluster_size > 1)
    }

    /// Finds the trigger's consumer, or says which level is missing.
    pub fn locate(&self, trigger: &NatsJetStreamTrigger) -> Result<&ConsumerDetail, Missing> {
        let account = self
            .account_details
            .iter()
            .find(|a| a.id == trigger.account_id() || a.name == trigger.account_name())
            .ok_or(Missing::Account)?;
        let stream = account
            .stream_detail
            .iter()
            .find(|s| s.name == trigger.stream)
            .ok_or(Missing::Stream)?;
        stream
            .consumer_detail
            .iter()
            .find(|c| c.name == trigger.consumer)
            .ok_or(Missing::Consumer)
    }
}

impl ConsumerDetail {
    /// The consumer's leader by server name, if the answer names one.
    fn leader(&self) -> Option<&str> {
        self.cluster
            .as_ref()
            .and_then(|c| c.leader.as_deref())
            .filter(|l| !l.is_empty())
    }
}

/// Which level of account -> stream -> consumer a `/jsz` answer lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No account with the trigger's name or id.
    Account,
    /// The account has no such stream.
    Stream,
    /// The stream has no such consumer.
    Consumer,
}

impl Missing {
    fn error(self, trigger: &NatsJetStreamTrigger) -> ScalerError {
        let what = match self {
            Self::Account => format!(
                "JetStream account {:?} (no account with that name or id)",
                trigger.account_name()
            ),
            Self::Stream => format!("stream {:?}", trigger.stream),
            Self::Consumer => format!(
                "consumer {:?} of stream {:?}",
                trigger.consumer, trigger.stream
            ),
        };
        ScalerError::NotFound {
            broker: BROKER,
            target: trigger.nats_server_monitoring_endpoint.trim().to_owned(),
            what,
        }
    }
}

/// Where a trigger's answer is, given one `/jsz` answer and the name of the server that gave it.
#[derive(Debug, PartialEq)]
pub enum Placement<'a> {
    /// This answer holds the figures to use.
    Here(&'a ConsumerDetail),
    /// The consumer is led by another server, whose `/jsz` must be read.
    Leader(&'a str),
    /// Clustered, and the consumer has no leader right now.
    Leaderless,
    /// Not in this answer.
    Missing(Missing),
}

/// Decides whether `jsz` (answered by the server named `responder`, if known) can answer `trigger`.
pub fn place<'a>(
    jsz: &'a Jsz,
    responder: Option<&str>,
    trigger: &NatsJetStreamTrigger,
) -> Placement<'a> {
    let consumer = match jsz.locate(trigger) {
        Ok(consumer) => consumer,
        Err(missing) => return Placement::Missing(missing),
    };
    if !jsz.is_clustered() {
        return Placement::Here(consumer);
    }
    match consumer.leader() {
        None => Placement::Leaderless,
        Some(leader) if responder == Some(leader) => Placement::Here(consumer),
        Some(leader) => Placement::Leader(leader),
    }
}

/// The reading of one consumer: lag = pending + ack pending.
fn reading(trigger: &NatsJetStreamTrigger, consumer: &ConsumerDetail) -> Reading {
    let lag = consumer
        .num_pending
        .saturating_add(consumer.num_ack_pending);
    let value = lag as f64;
    Reading::new(value, trigger.is_active(ActivationInput::value_only(value)))
        .with_extra("pending", consumer.num_pending as f64)
        .with_extra("ack-pending", consumer.num_ack_pending as f64)
        .with_backlog(vec![BacklogSample::NatsConsumer {
            stream: trigger.stream.clone(),
            consumer: trigger.consumer.clone(),
            pending: consumer.num_pending,
            ack_pending: consumer.num_ack_pending,
        }])
}

/// The parts of `/varz` used to map server names to monitoring URLs.
#[derive(Debug, Clone, Deserialize)]
pub struct Varz {
    /// The id `/jsz` reports as `server_id`.
    pub server_id: String,
    /// The name consumers' `cluster.leader` uses.
    pub server_name: String,
    /// Client URLs the cluster advertises (`host:port`).
    #[serde(default)]
    pub connect_urls: Vec<String>,
    /// Route information.
    #[serde(default)]
    pub cluster: VarzCluster,
}

/// `/varz` `cluster`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VarzCluster {
    /// Route URLs (`host:port`, sometimes `nats://host:port`).
    #[serde(default)]
    pub urls: Vec<String>,
}

/// The host part of `host:port`, `scheme://user@host:port` or `[v6]:port`.
fn host_of(address: &str) -> Option<String> {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let rest = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split_once(']').map(|(host, _)| format!("[{host}]"))?
    } else {
        rest.split(':').next()?.to_owned()
    };
    (!host.is_empty()).then_some(host)
}

/// The most hosts one discovery asks `/varz` of. The candidates come from the server's answer
/// (its `connect_urls` and routes), so without a bound one answer would decide how many
/// requests spillway sends; a JetStream cluster has a handful of servers, a super-cluster a few
/// dozen.
pub const MAX_PROBED_HOSTS: usize = 32;

/// Monitoring URLs that may belong to servers of the cluster, most likely first: the
/// headless-Service name `<name>.<endpoint host>` of each wanted server (KEDA's guess), then the
/// hosts the endpoint's `/varz` advertises, at most [`MAX_PROBED_HOSTS`]. All use the
/// endpoint's scheme and monitoring port.
pub fn candidate_urls(endpoint: &Url, wanted: &[&str], varz: Option<&Varz>) -> Vec<Url> {
    let mut hosts: Vec<String> = Vec::new();
    if let Some(url::Host::Domain(domain)) = endpoint.host() {
        for name in wanted {
            if !name.is_empty() && !name.contains(['/', ':', '@', ' ']) {
                hosts.push(format!("{name}.{domain}"));
            }
        }
    }
    if let Some(varz) = varz {
        hosts.extend(
            varz.connect_urls
                .iter()
                .chain(&varz.cluster.urls)
                .filter_map(|u| host_of(u)),
        );
    }
    let mut seen = BTreeSet::new();
    hosts
        .into_iter()
        .filter(|h| seen.insert(h.clone()))
        .filter_map(|host| {
            let mut url = endpoint.clone();
            url.set_host(Some(&host)).ok()?;
            Some(url)
        })
        .take(MAX_PROBED_HOSTS)
        .collect()
}

/// Server names and ids learned from `/varz`, kept across ticks.
#[derive(Debug, Default)]
struct ClusterMap {
    /// Server name -> its monitoring base URL.
    urls: HashMap<String, Url>,
    /// Server id (as `/jsz` reports it) -> server name.
    names: HashMap<String, String>,
    /// Consumer (account, stream, consumer) -> the server that led it last, for consumers the
    /// endpoint's own node does not hold.
    last_leader: HashMap<(String, String, String), String>,
}

/// Reads JetStream consumers of one monitoring endpoint (and, in a cluster, of their leaders).
#[derive(Debug)]
pub struct NatsJetStreamScaler {
    http: HttpClient,
    endpoint: Url,
    cluster: Mutex<ClusterMap>,
}

fn consumer_key(t: &NatsJetStreamTrigger) -> (String, String, String) {
    (
        t.account_name().to_owned(),
        t.stream.clone(),
        t.consumer.clone(),
    )
}

impl NatsJetStreamScaler {
    fn jsz_url(base: &Url, triggers: &[NatsJetStreamTrigger]) -> Url {
        let mut url = base.clone();
        url.set_path("/jsz");
        {
            let mut query = url.query_pairs_mut();
            let accounts: BTreeSet<&str> = triggers.iter().map(|t| t.account_id()).collect();
            if let [only] = accounts.into_iter().collect::<Vec<_>>()[..] {
                // An unmatched `acc` makes the server list every account, so this only narrows.
                query.append_pair("acc", only);
            }
            query
                .append_pair("accounts", "true")
                .append_pair("streams", "true")
                .append_pair("consumers", "true")
                .append_pair("config", "true");
        }
        url
    }

    async fn fetch_jsz(
        &self,
        base: &Url,
        triggers: &[NatsJetStreamTrigger],
    ) -> Result<Jsz, ScalerError> {
        let url = Self::jsz_url(base, triggers);
        let target = base_target(base);
        self.http
            .get_json(&url, &HttpAuth::None, &[], &target)
            .await
    }

    async fn fetch_varz(&self, base: &Url) -> Result<Varz, ScalerError> {
        let mut url = base.clone();
        url.set_path("/varz");
        self.http
            .get_json(&url, &HttpAuth::None, &[], &base_target(base))
            .await
    }

    /// Learns the monitoring URLs of the `wanted` servers (and of every server it can see when
    /// `everyone`), asking `/varz` of candidate hosts concurrently. Failed guesses are expected.
    async fn discover(&self, wanted: &[&str], everyone: bool) {
        let endpoint_varz = match self.fetch_varz(&self.endpoint).await {
            Ok(varz) => Some(varz),
            Err(err) => {
                tracing::debug!(endpoint = %base_target(&self.endpoint), error = %err, "nats /varz failed");
                None
            }
        };
        if let Some(varz) = &endpoint_varz {
            // The endpoint may be a load-balanced Service: learn its id, never a URL for its name.
            self.cluster
                .lock()
                .expect("nats cluster map")
                .names
                .insert(varz.server_id.clone(), varz.server_name.clone());
        }
        let known: Vec<Url> = self
            .cluster
            .lock()
            .expect("nats cluster map")
            .urls
            .values()
            .cloned()
            .collect();
        let candidates: Vec<Url> = candidate_urls(&self.endpoint, wanted, endpoint_varz.as_ref())
            .into_iter()
            .filter(|u| everyone || !known.contains(u))
            .collect();
        let answers = join_all(candidates.iter().map(|url| self.fetch_varz(url))).await;
        let mut map = self.cluster.lock().expect("nats cluster map");
        for (url, answer) in candidates.into_iter().zip(answers) {
            match answer {
                Ok(varz) => {
                    tracing::debug!(server = %varz.server_name, url = %url, "nats server located");
                    map.names.insert(varz.server_id, varz.server_name.clone());
                    map.urls.insert(varz.server_name, url);
                }
                Err(err) => {
                    tracing::debug!(url = %url, error = %err, "nats candidate did not answer /varz")
                }
            }
        }
    }
}

/// What errors name for a monitoring base URL: `host:port`.
fn base_target(base: &Url) -> String {
    match (base.host_str(), base.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => base.to_string(),
    }
}

impl Scaler for NatsJetStreamScaler {
    type Trigger = NatsJetStreamTrigger;

    const KIND: &'static str = BROKER;

    const CONFIG_KEY: &'static str = "natsJetStream";

    fn trigger_of(trigger: &super::Trigger) -> Option<&Self::Trigger> {
        match trigger {
            super::Trigger::NatsJetStream(t) => Some(t),
            _ => None,
        }
    }

    fn connection_key(trigger: &Self::Trigger) -> String {
        match trigger.endpoint_url() {
            Ok(url) => format!("{BROKER}:{}://{}", url.scheme(), base_target(&url)),
            Err(_) => format!(
                "{BROKER}:invalid:{}",
                trigger.nats_server_monitoring_endpoint
            ),
        }
    }

    fn connect(trigger: &Self::Trigger) -> Result<Self, ScalerError> {
        let endpoint = trigger.endpoint_url()?;
        Ok(Self {
            http: HttpClient::new(BROKER, REQUEST_TIMEOUT, false)?,
            endpoint,
            cluster: Mutex::new(ClusterMap::default()),
        })
    }

    async fn poll(&self, triggers: &[Self::Trigger]) -> Vec<Result<Reading, ScalerError>> {
        let mut results: Vec<Option<Result<Reading, ScalerError>>> = vec![None; triggers.len()];
        for (slot, trigger) in results.iter_mut().zip(triggers) {
            if let Err(err) = trigger.validate() {
                *slot = Some(Err(err));
            }
        }
        let valid: Vec<NatsJetStreamTrigger> = triggers
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        if valid.is_empty() {
            return results.into_iter().map(Option::unwrap).collect();
        }

        let base = match self.fetch_jsz(&self.endpoint, &valid).await {
            Ok(jsz) => jsz,
            Err(err) => {
                tracing::warn!(endpoint = %base_target(&self.endpoint), error = %err, "nats /jsz failed");
                return results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(err.clone())))
                    .collect();
            }
        };

        // Triggers the endpoint's answer cannot settle: by leader name, or unknown (None).
        let mut routed: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        {
            let map = self.cluster.lock().expect("nats cluster map");
            let responder = map.names.get(&base.server_id).map(String::as_str);
            for (i, trigger) in triggers.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                results[i] = match place(&base, responder, trigger) {
                    Placement::Here(consumer) => Some(Ok(reading(trigger, consumer))),
                    Placement::Leader(leader) => {
                        routed.entry(Some(leader.to_owned())).or_default().push(i);
                        None
                    }
                    Placement::Leaderless => Some(Err(leaderless(trigger))),
                    Placement::Missing(missing) if !base.is_clustered() => {
                        Some(Err(missing.error(trigger)))
                    }
                    Placement::Missing(_) => {
                        let leader = map.last_leader.get(&consumer_key(trigger)).cloned();
                        routed.entry(leader).or_default().push(i);
                        None
                    }
                };
            }
        }
        if !routed.is_empty() {
            self.poll_cluster(triggers, &base, routed, &mut results)
                .await;
        }
        results
            .into_iter()
            .map(|r| r.expect("every trigger answered"))
            .collect()
    }
}

fn leaderless(trigger: &NatsJetStreamTrigger) -> ScalerError {
    ScalerError::Broker {
        broker: BROKER,
        target: trigger.target(),
        cause: "the consumer has no leader (an election is in progress); a follower's counts are not used".into(),
    }
}

impl NatsJetStreamScaler {
    /// Answers the triggers `routed` to other servers: by leader name, or (`None`) to be looked
    /// for on every known server. One `/jsz` per server, shared by its triggers.
    async fn poll_cluster(
        &self,
        triggers: &[NatsJetStreamTrigger],
        base: &Jsz,
        routed: BTreeMap<Option<String>, Vec<usize>>,
        results: &mut [Option<Result<Reading, ScalerError>>],
    ) {
        let search_all = routed.contains_key(&None);
        let wanted: Vec<&str> = routed.keys().flatten().map(String::as_str).collect();
        let cluster_size = base.meta_cluster.as_ref().map_or(0, |m| m.cluster_size);
        let missing_url = {
            let map = self.cluster.lock().expect("nats cluster map");
            wanted.iter().any(|name| !map.urls.contains_key(*name))
                || (search_all && map.urls.len() < cluster_size)
        };
        if missing_url {
            self.discover(&wanted, search_all).await;
        }

        // The servers to ask: every wanted leader, or all known servers when searching.
        let servers: Vec<(String, Url)> = {
            let map = self.cluster.lock().expect("nats cluster map");
            let responder = map.names.get(&base.server_id);
            map.urls
                .iter()
                .filter(|(name, _)| {
                    wanted.contains(&name.as_str()) || (search_all && Some(*name) != responder)
                })
                .map(|(name, url)| (name.clone(), url.clone()))
                .collect()
        };
        let routed_triggers: Vec<NatsJetStreamTrigger> = routed
            .values()
            .flatten()
            .map(|&i| triggers[i].clone())
            .collect();
        let answers = join_all(
            servers
                .iter()
                .map(|(_, url)| self.fetch_jsz(url, &routed_triggers)),
        )
        .await;
        let mut by_server: HashMap<&str, Result<Jsz, ScalerError>> = HashMap::new();
        for ((name, _), answer) in servers.iter().zip(answers) {
            if answer.is_err() {
                // Stale address (a restarted pod): find it again next tick.
                self.cluster
                    .lock()
                    .expect("nats cluster map")
                    .urls
                    .remove(name);
            }
            by_server.insert(name.as_str(), answer);
        }

        for (leader, indices) in &routed {
            for &i in indices {
                let trigger = &triggers[i];
                let outcome = match leader {
                    Some(leader) => answer_from_leader(trigger, leader, by_server.get(&**leader)),
                    None => self.search(trigger, base, &by_server),
                };
                if matches!(outcome, Err(ScalerError::NotFound { .. })) {
                    // A remembered leader that no longer holds the consumer: search again next tick.
                    self.cluster
                        .lock()
                        .expect("nats cluster map")
                        .last_leader
                        .remove(&consumer_key(trigger));
                }
                results[i] = Some(outcome);
            }
        }
    }

    /// Looks for a consumer the endpoint's node does not hold on every server that answered.
    fn search(
        &self,
        trigger: &NatsJetStreamTrigger,
        base: &Jsz,
        by_server: &HashMap<&str, Result<Jsz, ScalerError>>,
    ) -> Result<Reading, ScalerError> {
        let mut leaders = BTreeSet::new();
        let mut without_leader = false;
        for (name, answer) in by_server {
            let Ok(jsz) = answer else { continue };
            match place(jsz, Some(name), trigger) {
                Placement::Here(consumer) => {
                    self.cluster
                        .lock()
                        .expect("nats cluster map")
                        .last_leader
                        .insert(consumer_key(trigger), (*name).to_owned());
                    return Ok(reading(trigger, consumer));
                }
                Placement::Leader(leader) => {
                    leaders.insert(leader.to_owned());
                }
                Placement::Leaderless => without_leader = true,
                Placement::Missing(_) => {}
            }
        }
        if without_leader {
            return Err(leaderless(trigger));
        }
        if let Some(leader) = leaders.into_iter().next() {
            // Held by servers that answered, led by one that did not: next tick routes to it.
            self.cluster
                .lock()
                .expect("nats cluster map")
                .last_leader
                .insert(consumer_key(trigger), leader.clone());
            return Err(unknown_leader(trigger, &leader));
        }
        // Nobody holds it: report the most specific level the endpoint's node knew.
        let missing = match base.locate(trigger) {
            Err(missing) => missing,
            Ok(_) => Missing::Consumer,
        };
        Err(missing.error(trigger))
    }
}

fn unknown_leader(trigger: &NatsJetStreamTrigger, leader: &str) -> ScalerError {
    ScalerError::Unreachable {
        broker: BROKER,
        target: trigger.target(),
        cause: format!(
            "the consumer's leader {leader:?} has no monitoring endpoint spillway can find \
             (tried {leader}.<endpoint host> and the hosts /varz advertises)"
        ),
    }
}

/// The reading for a trigger routed to `leader`, from that server's `/jsz` answer.
fn answer_from_leader(
    trigger: &NatsJetStreamTrigger,
    leader: &str,
    answer: Option<&Result<Jsz, ScalerError>>,
) -> Result<Reading, ScalerError> {
    let jsz = match answer {
        None => return Err(unknown_leader(trigger, leader)),
        Some(Err(err)) => return Err(err.clone()),
        Some(Ok(jsz)) => jsz,
    };
    match place(jsz, Some(leader), trigger) {
        Placement::Here(consumer) => Ok(reading(trigger, consumer)),
        Placement::Leader(now) => Err(ScalerError::Broker {
            broker: BROKER,
            target: trigger.target(),
            cause: format!(
                "the consumer's leader moved from {leader:?} to {now:?} during the poll"
            ),
        }),
        Placement::Leaderless => Err(leaderless(trigger)),
        Placement::Missing(missing) => Err(missing.error(trigger)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::Trigger;

    fn trigger() -> NatsJetStreamTrigger {
        serde_json::from_value(serde_json::json!({
            "natsServerMonitoringEndpoint": "nats.nats.svc:8222",
            "stream": "capture",
            "consumer": "worker",
        }))
        .unwrap()
    }

    /// A real nats-server 2.9.10 answer: stream `capture`, durable `worker`, 7 messages
    /// published, 2 fetched without an ack.
    const CAPTURED_JSZ: &str = r#"{
      "server_id": "ND2UAE65K5PBVJVMU4ORIL3YETKA7HBIN3Q4IHOS6ZDTKSL255K7PYRB",
      "now": "2026-11-25T22:39:18.571679717Z",
      "config": {"max_memory": 18957047808, "max_storage": 60784536576, "store_dir": "/work/main/target/services/nats/jetstream/jetstream"},
      "memory": 0, "storage": 315, "reserved_memory": 0, "reserved_storage": 0,
      "accounts": 1, "ha_assets": 0, "api": {"total": 2, "errors": 0},
      "streams": 1, "consumers": 1, "messages": 7, "bytes": 315,
      "account_details": [{
        "name": "$G", "id": "$G", "memory": 0, "storage": 315,
        "reserved_memory": 18446744073709551615, "reserved_storage": 18446744073709551615,
        "accounts": 0, "ha_assets": 0, "api": {"total": 2, "errors": 0},
        "stream_detail": [{
          "name": "capture",
          "created": "2026-11-25T22:39:17.72509839Z",
          "cluster": {"leader": "spillway-test"},
          "config": {"name": "capture", "subjects": ["capture.\u003e"], "retention": "limits",
                     "max_consumers": -1, "max_msgs": -1, "max_bytes": -1, "max_age": 0,
                     "max_msgs_per_subject": -1, "max_msg_size": -1, "discard": "old",
                     "storage": "file", "num_replicas": 1, "duplicate_window": 120000000000,
                     "allow_direct": false, "mirror_direct": false, "sealed": false,
                     "deny_delete": false, "deny_purge": false, "allow_rollup_hdrs": false},
          "state": {"messages": 7, "bytes": 315, "first_seq": 1,
                    "first_ts": "2026-11-25T22:39:17.769649932Z", "last_seq": 7,
                    "last_ts": "2026-11-25T22:39:17.812295229Z", "num_subjects": 1,
                    "consumer_count": 1},
          "consumer_detail": [{
            "stream_name": "capture", "name": "worker",
            "created": "2026-11-25T22:39:17.768413633Z",
            "config": {"durable_name": "worker", "deliver_policy": "all", "ack_policy": "explicit",
                       "ack_wait": 120000000000, "max_deliver": -1, "replay_policy": "instant",
                       "max_waiting": 512, "max_ack_pending": 1000, "num_replicas": 0},
            "delivered": {"consumer_seq": 2, "stream_seq": 2, "last_active": "2026-11-25T22:39:18.070501036Z"},
            "ack_floor": {"consumer_seq": 0, "stream_seq": 0},
            "num_ack_pending": 2, "num_redelivered": 0, "num_waiting": 0, "num_pending": 5
          }]
        }]
      }]
    }"#;

    /// A clustered answer from server `n1` for a consumer led by `n2`.
    const CLUSTERED_JSZ: &str = r#"{
      "server_id": "ID-N1",
      "meta_cluster": {"name": "c1", "leader": "n3", "peer": "abc", "cluster_size": 3},
      "account_details": [{"name": "$G", "id": "$G", "stream_detail": [{
        "name": "capture", "cluster": {"name": "c1", "leader": "n1"},
        "consumer_detail": [
          {"name": "worker", "num_pending": 0, "num_ack_pending": 0,
           "cluster": {"name": "c1", "leader": "n2", "replicas": [{"name": "n1", "current": true}]}},
          {"name": "electing", "num_pending": 3, "num_ack_pending": 0, "cluster": {"name": "c1"}}
        ]}]}]
    }"#;

    #[test]
    fn captured_jsz_gives_pending_plus_ack_pending() {
        let jsz: Jsz = serde_json::from_str(CAPTURED_JSZ).unwrap();
        assert!(!jsz.is_clustered());
        let t = trigger();
        let Placement::Here(consumer) = place(&jsz, None, &t) else {
            panic!("standalone answer must settle the trigger");
        };
        let r = reading(&t, consumer);
        assert_eq!(r.value, 7.0);
        assert!(r.active);
        assert_eq!(r.extra, vec![("pending", 5.0), ("ack-pending", 2.0)]);
        assert_eq!(
            r.backlog.samples(),
            [BacklogSample::NatsConsumer {
                stream: t.stream.clone(),
                consumer: t.consumer.clone(),
                pending: 5,
                ack_pending: 2,
            }]
        );
    }

    #[test]
    fn missing_levels_are_named() {
        let jsz: Jsz = serde_json::from_str(CAPTURED_JSZ).unwrap();
        let cases = [
            (
                ("$G", "capture", "nobody"),
                Missing::Consumer,
                "consumer \"nobody\"",
            ),
            (("$G", "gone", "worker"), Missing::Stream, "stream \"gone\""),
            (
                ("ACME", "capture", "worker"),
                Missing::Account,
                "account \"ACME\"",
            ),
        ];
        for ((account, stream, consumer), missing, text) in cases {
            let mut t = trigger();
            t.account = Some(account.into());
            t.stream = stream.into();
            t.consumer = consumer.into();
            assert_eq!(place(&jsz, None, &t), Placement::Missing(missing));
            let err = missing.error(&t);
            assert_eq!(err.reason(), "not_found");
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    #[test]
    fn account_matches_by_id_or_name() {
        let jsz: Jsz = serde_json::from_str(
            r#"{"server_id": "S", "account_details": [{"name": "orders", "id": "AAXYZ",
                "stream_detail": [{"name": "s", "consumer_detail": [
                  {"name": "c", "num_pending": 1, "num_ack_pending": 0}]}]}]}"#,
        )
        .unwrap();
        let mut t = trigger();
        t.stream = "s".into();
        t.consumer = "c".into();
        for (account, id, found) in [
            (Some("orders"), None, true),
            (None, Some("AAXYZ"), true),
            (Some("other"), Some("AAXYZ"), true),
            (None, None, false),
            (Some("AAXYZ"), None, true),
        ] {
            t.account = account.map(Into::into);
            t.account_id = id.map(Into::into);
            assert_eq!(jsz.locate(&t).is_ok(), found, "{account:?} {id:?}");
        }
    }

    #[test]
    fn activation_is_strictly_above_threshold() {
        let consumer = ConsumerDetail {
            name: "worker".into(),
            num_pending: 3,
            num_ack_pending: 2,
            cluster: None,
        };
        let mut t = trigger();
        t.activation_lag_threshold = 5;
        assert!(!reading(&t, &consumer).active);
        t.activation_lag_threshold = 4;
        assert!(reading(&t, &consumer).active);
    }

    #[test]
    fn cluster_answers_are_used_only_from_the_leader() {
        let jsz: Jsz = serde_json::from_str(CLUSTERED_JSZ).unwrap();
        assert!(jsz.is_clustered());
        let t = trigger();
        assert_eq!(place(&jsz, Some("n1"), &t), Placement::Leader("n2"));
        assert_eq!(place(&jsz, None, &t), Placement::Leader("n2"));
        assert!(matches!(place(&jsz, Some("n2"), &t), Placement::Here(_)));
        let mut electing = trigger();
        electing.consumer = "electing".into();
        assert_eq!(place(&jsz, Some("n1"), &electing), Placement::Leaderless);
        // The leader's own answer that names another leader is not used either.
        let moved = answer_from_leader(&t, "n1", Some(&Ok(jsz.clone()))).unwrap_err();
        assert!(moved.to_string().contains("moved"), "{moved}");
        assert!(answer_from_leader(&t, "n2", Some(&Ok(jsz))).is_ok());
        let unknown = answer_from_leader(&t, "n9", None).unwrap_err();
        assert_eq!(unknown.reason(), "unreachable");
    }

    #[test]
    fn candidate_urls_follow_headless_names_then_advertised_hosts() {
        let endpoint = Url::parse("http://nats.nats.svc:8222/").unwrap();
        let varz: Varz = serde_json::from_str(
            r#"{"server_id": "X", "server_name": "nats-0",
                "connect_urls": ["10.0.0.5:4222", "[fd00::7]:4222"],
                "cluster": {"urls": ["nats://nats-1.nats.nats.svc:6222", "10.0.0.5:6222"]}}"#,
        )
        .unwrap();
        let urls: Vec<String> = candidate_urls(&endpoint, &["nats-2"], Some(&varz))
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            urls,
            [
                "http://nats-2.nats.nats.svc:8222/",
                "http://10.0.0.5:8222/",
                "http://[fd00::7]:8222/",
                "http://nats-1.nats.nats.svc:8222/",
            ]
        );
        // An IP endpoint has no DNS suffix to build names from.
        let by_ip = Url::parse("https://10.1.1.1:8222/").unwrap();
        assert!(candidate_urls(&by_ip, &["nats-2"], None).is_empty());

        // However many hosts an answer advertises, one discovery asks a bounded number.
        let advertised: Vec<String> = (0..5_000)
            .map(|i| format!("10.{}.{}.{}:4222", i / 65_536, (i / 256) % 256, i % 256))
            .collect();
        let flood: Varz = serde_json::from_value(serde_json::json!({
            "server_id": "X", "server_name": "nats-0", "connect_urls": advertised,
        }))
        .unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let urls = candidate_urls(&endpoint, &names, Some(&flood));
        assert_eq!(urls.len(), MAX_PROBED_HOSTS);
    }

    #[test]
    fn jsz_url_narrows_to_a_shared_account() {
        let base = Url::parse("http://127.0.0.1:8222/").unwrap();
        let one = NatsJetStreamScaler::jsz_url(&base, &[trigger(), trigger()]);
        assert_eq!(
            one.as_str(),
            "http://127.0.0.1:8222/jsz?acc=%24G&accounts=true&streams=true&consumers=true&config=true"
        );
        let mut other = trigger();
        other.account = Some("B".into());
        let all = NatsJetStreamScaler::jsz_url(&base, &[trigger(), other]);
        assert_eq!(
            all.query(),
            Some("accounts=true&streams=true&consumers=true&config=true")
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "", "stream": "s", "consumer": "c"}),
                "natsServerMonitoringEndpoint",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "http://nats:8222", "stream": "s", "consumer": "c"}),
                "natsServerMonitoringEndpoint",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:8222/jsz", "stream": "s", "consumer": "c"}),
                "natsServerMonitoringEndpoint",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:notaport", "stream": "s", "consumer": "c"}),
                "natsServerMonitoringEndpoint",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:8222", "stream": " ", "consumer": "c"}),
                "stream",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:8222", "stream": "s", "consumer": ""}),
                "consumer",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:8222", "stream": "s", "consumer": "c", "account": ""}),
                "account",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:8222", "stream": "s", "consumer": "c", "accountID": ""}),
                "accountID",
            ),
            (
                serde_json::json!({"natsServerMonitoringEndpoint": "nats:8222", "stream": "s", "consumer": "c", "lagThreshold": 0}),
                "lagThreshold",
            ),
        ];
        for (json, field) in cases {
            let t: NatsJetStreamTrigger = serde_json::from_value(json.clone()).unwrap();
            match t.validate() {
                Err(ScalerError::InvalidTrigger { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected InvalidTrigger on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_names_and_keys_follow_keda() {
        let t = trigger();
        t.validate().unwrap();
        assert_eq!(t.lag_threshold, 10);
        assert_eq!(t.activation_lag_threshold, 0);
        assert_eq!(t.target_value(), 10.0);
        assert_eq!(t.account_name(), "$G");
        let mut dotted = t.clone();
        dotted.stream = "Orders.v1".into();
        assert_eq!(dotted.metric_name(), "nats-jetstream-orders-v1");
        assert_eq!(
            NatsJetStreamScaler::connection_key(&t),
            "nats-jetstream:http://nats.nats.svc:8222"
        );
        let mut https = t.clone();
        https.use_https = true;
        https.nats_server_monitoring_endpoint = "nats.nats.svc".into();
        assert_eq!(
            NatsJetStreamScaler::connection_key(&https),
            "nats-jetstream:https://nats.nats.svc:443"
        );
        let unknown = serde_json::from_value::<NatsJetStreamTrigger>(serde_json::json!({
            "natsServerMonitoringEndpoint": "n:8222", "stream": "s", "consumer": "c", "lagTreshold": 5
        }));
        assert!(unknown.is_err(), "unknown fields are rejected");
        let keda_id: NatsJetStreamTrigger = serde_json::from_value(serde_json::json!({
            "natsServerMonitoringEndpoint": "n:8222", "stream": "s", "consumer": "c", "accountID": "AB"
        }))
        .unwrap();
        assert_eq!(keda_id.account_id(), "AB");
    }

    #[test]
    fn hosts_are_cut_from_every_address_form() {
        for (address, host) in [
            ("10.0.0.5:4222", Some("10.0.0.5")),
            ("nats://user:pw@nats-1.svc:6222", Some("nats-1.svc")),
            ("[fd00::7]:4222", Some("[fd00::7]")),
            ("nats-0", Some("nats-0")),
            (":4222", None),
        ] {
            assert_eq!(host_of(address).as_deref(), host, "{address}");
        }
    }

    #[test]
    fn plan_decides_activity_from_the_value_as_the_scaler_does() {
        for (pending, ack_pending, activation) in [(3, 2, 4), (3, 2, 5), (0, 0, 0), (1, 0, 0)] {
            let consumer = ConsumerDetail {
                name: "worker".into(),
                num_pending: pending,
                num_ack_pending: ack_pending,
                cluster: None,
            };
            let mut t = trigger();
            t.activation_lag_threshold = activation;
            let read = reading(&t, &consumer);
            let planned =
                Trigger::NatsJetStream(t).is_active(ActivationInput::value_only(read.value));
            assert_eq!(
                planned, read.active,
                "lag {} activation {activation}",
                read.value
            );
        }
    }
}
