//! Where spillway connects on a tenant's behalf. A ScaledObject names hosts (a Prometheus
//! `serverAddress`, a RabbitMQ URL, a NATS monitoring endpoint) and spillway connects from its
//! own network identity, so by default it refuses addresses a tenant should never reach through
//! it: link-local (169.254.0.0/16, fe80::/10: cloud metadata services), loopback (spillway's own
//! pod) and the kube-apiserver's addresses. A cluster-scoped setting
//! (`--allow-destinations`, `server.allowDestinations`) allows a class back; tenants cannot.
//!
//! Addresses are checked after DNS resolution, at every new connection ([`resolve`] is what the
//! HTTP client resolves with), so a name that resolves to a refused address is refused, and
//! re-checked when it moves. The policy is process-wide: `main` installs it once from the flags
//! and the config before anything connects ([`install`]); scalers build their clients from a
//! trigger alone, and threading it through every scaler's constructor would put a cluster
//! setting into every trigger type.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// A class of addresses the policy refuses unless allowed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DestinationClass {
    /// 127.0.0.0/8, ::1 and the unspecified addresses (0.0.0.0, ::), which reach the local host.
    Loopback,
    /// 169.254.0.0/16 and fe80::/10: link-local, where cloud metadata services answer.
    LinkLocal,
    /// The kube-apiserver's addresses as spillway knows them (its Service and endpoints).
    ApiServer,
}

impl DestinationClass {
    /// Every class, in the order the CLI lists them.
    pub const ALL: [Self; 3] = [Self::Loopback, Self::LinkLocal, Self::ApiServer];

    /// The name in flags, config and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::ApiServer => "api-server",
        }
    }
}

impl fmt::Display for DestinationClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DestinationClass {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|class| class.name() == text.trim())
            .ok_or_else(|| {
                format!(
                    "unknown destination class {text:?}: use loopback, link-local or api-server"
                )
            })
    }
}

/// Which classes are allowed, and which addresses are the kube-apiserver's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPolicy {
    allowed: BTreeSet<DestinationClass>,
    api_server: BTreeSet<IpAddr>,
}

/// A connection the policy refuses. The message names the class and how to allow it, never the
/// address a name resolved to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{host} is a {class} address, which spillway does not connect to for a trigger (a cluster \
     administrator may allow it with --allow-destinations {class})"
)]
pub struct Refused {
    pub host: String,
    pub class: DestinationClass,
}

impl DestinationPolicy {
    /// Refuses every class: the default.
    pub fn strict() -> Self {
        Self::default()
    }

    /// This policy with `classes` allowed as well.
    pub fn allowing(mut self, classes: impl IntoIterator<Item = DestinationClass>) -> Self {
        self.allowed.extend(classes);
        self
    }

    /// This policy knowing `addresses` as the kube-apiserver's.
    pub fn with_api_server(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.api_server
            .extend(addresses.into_iter().map(|a| a.to_canonical()));
        self
    }

    pub fn allows(&self, class: DestinationClass) -> bool {
        self.allowed.contains(&class)
    }

    /// The refused class `address` falls in, if any.
    pub fn refused_class(&self, address: IpAddr) -> Option<DestinationClass> {
        let address = address.to_canonical();
        let class = if self.api_server.contains(&address) {
            DestinationClass::ApiServer
        } else if address.is_loopback() || address.is_unspecified() {
            DestinationClass::Loopback
        } else if is_link_local(address) {
            DestinationClass::LinkLocal
        } else {
            return None;
        };
        (!self.allows(class)).then_some(class)
    }

    /// Checks one address `host` names (itself, or what it resolved to).
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        match self.refused_class(address) {
            Some(class) => Err(Refused {
                host: host.to_owned(),
                class,
            }),
            None => Ok(()),
        }
    }
}

fn is_link_local(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        // fe80::/10
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn installed() -> &'static RwLock<Arc<DestinationPolicy>> {
    static POLICY: std::sync::OnceLock<RwLock<Arc<DestinationPolicy>>> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| RwLock::new(Arc::new(DestinationPolicy::strict())))
}

/// Makes `policy` the one every later connection is checked against.
pub fn install(policy: DestinationPolicy) {
    tracing::info!(
        allowed = ?policy.allowed.iter().map(|c| c.name()).collect::<Vec<_>>(),
        api_server_addresses = policy.api_server.len(),
        "destination policy"
    );
    *installed().write().expect("destination policy lock") = Arc::new(policy);
}

/// Adds `addresses` to the installed policy's kube-apiserver addresses and returns how many
/// were new. `run` calls it with the endpoints behind the `kubernetes` Service, where
/// kube-apiserver really listens: the Service address alone leaves a tenant free to name a
/// control-plane node's address instead. Loopback and unspecified addresses stay in their own
/// class, so `--allow-destinations loopback` (a local cluster whose API server is on 127.0.0.1,
/// like the tests') still means what it says.
pub fn learn_api_server_addresses(addresses: impl IntoIterator<Item = IpAddr>) -> usize {
    let mut installed = installed().write().expect("destination policy lock");
    let mut policy = DestinationPolicy::clone(&installed);
    let before = policy.api_server.len();
    policy.api_server.extend(
        addresses
            .into_iter()
            .map(|a| a.to_canonical())
            .filter(|a| !a.is_loopback() && !a.is_unspecified()),
    );
    let added = policy.api_server.len() - before;
    *installed = Arc::new(policy);
    added
}

/// The policy in force: the installed one, else [`DestinationPolicy::strict`].
pub fn current() -> Arc<DestinationPolicy> {
    Arc::clone(&installed().read().expect("destination policy lock"))
}

/// Why `host` gives no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {cause}")]
    Lookup { host: String, cause: String },
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// The addresses of `host:port` the policy allows; an error when it has none. A name that
/// resolves to some refused and some allowed addresses keeps the allowed ones only.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    let policy = current();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = bare.parse::<IpAddr>() {
        policy.check(host, address)?;
        return Ok(vec![SocketAddr::new(address, port)]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|err| ResolveError::Lookup {
            host: host.to_owned(),
            cause: err.to_string(),
        })?
        .collect();
    let mut refused = None;
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| match policy.check(host, a.ip()) {
            Ok(()) => true,
            Err(err) => {
                refused.get_or_insert(err);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some(refused)) => Err(refused.into()),
        (true, None) => Err(ResolveError::Lookup {
            host: host.to_owned(),
            cause: "no addresses".into(),
        }),
        (false, _) => Ok(allowed),
    }
}

/// Checks that every address `broker` (`host:port`) resolves to is allowed, for a client that
/// resolves and connects on its own (librdkafka): unlike [`resolve`], which keeps the allowed
/// addresses of a mixed answer for a connection spillway makes itself, one refused address
/// refuses the whole name, since the other client may pick any of them.
pub async fn check_every_address(broker: &str) -> Result<(), ResolveError> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| ResolveError::Lookup {
            host: broker.to_owned(),
            cause: "not host:port".into(),
        })?;
    let policy = current();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = bare.parse::<IpAddr>() {
        return Ok(policy.check(host, address)?);
    }
    let found =
        tokio::net::lookup_host((bare, port))
            .await
            .map_err(|err| ResolveError::Lookup {
                host: host.to_owned(),
                cause: err.to_string(),
            })?;
    for address in found {
        policy.check(host, address.ip())?;
    }
    Ok(())
}

/// Checks a URL's host when it is an IP literal, which an HTTP client connects to without
/// resolving; names are checked by [`resolve`] at connect time.
pub fn check_url(url: &url::Url) -> Result<(), Refused> {
    let address = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    current().check(url.host_str().unwrap_or_default(), address)
}

/// The kube-apiserver address a pod knows without asking: the `kubernetes` Service's, from
/// the environment Kubernetes gives every pod.
pub fn api_server_addresses() -> Vec<IpAddr> {
    std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()
        .and_then(|host| host.parse().ok())
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoints `run` reads join the installed policy as the API server's; loopback ones
    /// keep their class. (TEST-NET-3: nothing in the other tests connects there.)
    #[test]
    fn learned_api_server_endpoints_are_refused_and_loopback_keeps_its_class() {
        let endpoint: IpAddr = "203.0.113.7".parse().unwrap();
        let learned = learn_api_server_addresses([endpoint, "127.0.0.1".parse().unwrap()]);
        assert!(learned <= 1, "only the routable address is learned");
        assert_eq!(
            current().refused_class(endpoint),
            (!current().allows(DestinationClass::ApiServer)).then_some(DestinationClass::ApiServer)
        );
        assert_ne!(
            current().refused_class("127.0.0.1".parse().unwrap()),
            Some(DestinationClass::ApiServer)
        );
    }

    #[test]
    fn classes_of_addresses_and_what_allows_them() {
        let apiserver: IpAddr = "10.96.0.1".parse().unwrap();
        let strict = DestinationPolicy::strict().with_api_server([apiserver]);
        let cases = [
            ("10.0.0.7", None),
            ("2001:db8::1", None),
            ("127.0.0.1", Some(DestinationClass::Loopback)),
            ("127.8.9.10", Some(DestinationClass::Loopback)),
            ("::1", Some(DestinationClass::Loopback)),
            ("0.0.0.0", Some(DestinationClass::Loopback)),
            ("::", Some(DestinationClass::Loopback)),
            ("::ffff:127.0.0.1", Some(DestinationClass::Loopback)),
            ("169.254.169.254", Some(DestinationClass::LinkLocal)),
            ("::ffff:169.254.169.254", Some(DestinationClass::LinkLocal)),
            ("fe80::1", Some(DestinationClass::LinkLocal)),
            ("febf::1", Some(DestinationClass::LinkLocal)),
            ("fec0::1", None),
            ("10.96.0.1", Some(DestinationClass::ApiServer)),
            ("::ffff:10.96.0.1", Some(DestinationClass::ApiServer)),
        ];
        for (address, class) in cases {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(strict.refused_class(address), class, "{address}");
            if let Some(class) = class {
                let allowed = strict.clone().allowing([class]);
                assert_eq!(allowed.refused_class(address), None, "{address} allowed");
            }
        }
        let err = strict
            .check("metadata.internal", "169.254.169.254".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("link-local") && err.contains("--allow-destinations"),
            "{err}"
        );
        assert!(
            !err.contains("169.254"),
            "the resolved address is not echoed: {err}"
        );
    }

    #[test]
    fn class_names_parse_as_written() {
        for class in DestinationClass::ALL {
            assert_eq!(class.name().parse::<DestinationClass>(), Ok(class));
        }
        assert!("metadata".parse::<DestinationClass>().is_err());
    }
}
