//! Where a trigger reads from: its server URL (from `host` or `hostFromSecret`) parsed into
//! protocol, server, vhost and credentials, and the connection key triggers share a scaler by.
//! Nothing here shows a password: the server URL is kept without credentials.

use std::time::Duration;

use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use url::Url;

use super::BROKER;
use super::trigger::{Protocol, RabbitMqTrigger};
use crate::scalers::ScalerError;
use crate::scalers::http::HttpAuth;
use crate::secret::{SecretString, keyed_hash};

/// Which protocol a trigger resolved to (never `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Wire {
    Amqp,
    Http,
}

/// AMQP connection options a URL's query may set (the ones amqp091-go, KEDA's client, knows
/// and lapin supports).
#[derive(Debug, Clone, Default, PartialEq)]
struct AmqpOptions {
    heartbeat: Option<u16>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    auth_mechanism: Option<SASLMechanism>,
}

/// A parsed server URL with the credentials split out.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) wire: Wire,
    /// amqps or https.
    pub(super) tls: bool,
    /// The URL without credentials, query or vhost: `amqp://host:5672`, or for HTTP the base
    /// the API lives under (`http://host:15672/prefix`). Safe to show.
    pub(super) server: Url,
    /// Host for the AMQP socket (an IPv6 address in brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// Percent-decoded; empty when the URL has none.
    username: String,
    password: Option<SecretString>,
    pub(super) vhost: String,
    amqp: AmqpOptions,
}

impl Endpoint {
    /// Parses a server URL. For AMQP the whole path is the vhost; for HTTP the last path
    /// segment is the vhost and the segments before it a prefix the API lives under (KEDA's
    /// rules). An empty vhost means `/`.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|err| format!("not a valid URL: {err}"))?;
        let (wire, tls, default_port) = match url.scheme() {
            "amqp" => (Wire::Amqp, false, 5672),
            "amqps" => (Wire::Amqp, true, 5671),
            "http" => (Wire::Http, false, 80),
            "https" => (Wire::Http, true, 443),
            other => {
                return Err(format!(
                    "unknown host URL scheme {other:?}: use amqp, amqps, http or https"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(domain)) if !domain.is_empty() => percent_decoded(domain)?,
            Some(url::Host::Ipv4(addr)) => addr.to_string(),
            // Bracketed: lapin joins host and port with a colon before resolving.
            Some(url::Host::Ipv6(addr)) => format!("[{addr}]"),
            _ => return Err("the URL has no host".into()),
        };
        let port = url.port().unwrap_or(default_port);
        let username = percent_decoded(url.username())?;
        let password = url
            .password()
            .map(percent_decoded)
            .transpose()?
            .map(SecretString::new);
        let path = url.path().strip_prefix('/').unwrap_or(url.path());

        let mut server = url.clone();
        // Infallible for URLs with a host, which this one has.
        let _ = server.set_username("");
        let _ = server.set_password(None);
        server.set_query(None);
        server.set_fragment(None);
        server.set_path("");
        // Spelled out so `amqp://r` and `amqp://r:5672` share a key (http's default is implied).
        let _ = server.set_port(Some(port));

        let (vhost, amqp) = match wire {
            Wire::Amqp => (percent_decoded(path)?, Self::amqp_options(&url)?),
            Wire::Http => {
                if url.query().is_some() {
                    return Err("an http host URL takes no query".into());
                }
                let mut segments: Vec<&str> = path.split('/').collect();
                let vhost = percent_decoded(segments.pop().unwrap_or(""))?;
                if let Ok(mut base) = server.path_segments_mut() {
                    for segment in segments.iter().filter(|s| !s.is_empty()) {
                        base.push(&percent_decoded(segment)?);
                    }
                }
                (vhost, AmqpOptions::default())
            }
        };
        Ok(Self {
            wire,
            tls,
            server,
            host,
            port,
            username,
            password,
            vhost: if vhost.is_empty() { "/".into() } else { vhost },
            amqp,
        })
    }

    fn amqp_options(url: &Url) -> Result<AmqpOptions, String> {
        let mut options = AmqpOptions::default();
        for (key, value) in url.query_pairs() {
            let number = |what: &str| format!("URL query {key}={value:?} is not a valid {what}");
            match key.as_ref() {
                "heartbeat" => options.heartbeat = Some(value.parse().map_err(|_| number("u16"))?),
                "frame_max" => options.frame_max = Some(value.parse().map_err(|_| number("u32"))?),
                "channel_max" => {
                    options.channel_max = Some(value.parse().map_err(|_| number("u16"))?);
                }
                "auth_mechanism" => {
                    options.auth_mechanism = Some(value.parse().map_err(|err: String| err)?);
                }
                // The trigger's `timeout` bounds connecting; the URL's value is accepted and
                // superseded, so KEDA URLs keep working.
                "connection_timeout" => {}
                other => {
                    return Err(format!(
                        "unsupported URL query parameter {other:?} (supported: heartbeat, \
                         frame_max, channel_max, auth_mechanism, connection_timeout)"
                    ));
                }
            }
        }
        Ok(options)
    }

    /// Triggers with equal keys share a connection: protocol, server, TLS settings and a hash
    /// of the credentials (keyed per process, so a logged key reveals nothing). AMQP
    /// connections are per vhost; one HTTP scaler serves every vhost of its server.
    pub(super) fn connection_key(&self, trigger: &RabbitMqTrigger) -> String {
        let credentials = keyed_hash(&(
            &self.username,
            self.password.as_ref().map(SecretString::expose),
        ));
        match self.wire {
            Wire::Amqp => format!(
                "rabbitmq|amqp|{}|vhost={:?}|cred={credentials:016x}|options={:?}|tls={:016x}",
                display_server(&self.server),
                self.vhost,
                self.amqp,
                keyed_hash(&trigger.tls),
            ),
            Wire::Http => format!(
                "rabbitmq|http|{}|cred={credentials:016x}|unsafeSsl={}",
                display_server(&self.server),
                trigger.unsafe_ssl,
            ),
        }
    }

    pub(super) fn amqp_uri(&self, timeout: Duration) -> AMQPUri {
        // Without any user, KEDA's client and lapin both log in as guest:guest.
        let (username, password) = match (self.username.as_str(), &self.password) {
            ("", None) => ("guest".to_owned(), "guest".to_owned()),
            (user, password) => (
                user.to_owned(),
                password
                    .as_ref()
                    .map(|p| p.expose().to_owned())
                    .unwrap_or_default(),
            ),
        };
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                frame_max: self.amqp.frame_max,
                channel_max: self.amqp.channel_max,
                heartbeat: self.amqp.heartbeat,
                // Bounds the blocking TCP connect lapin runs on its own thread, so a timed-out
                // connect does not keep that thread for the OS's minutes-long default.
                connection_timeout: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
                auth_mechanism: self.amqp.auth_mechanism,
            },
        }
    }

    pub(super) fn http_auth(&self) -> HttpAuth {
        if self.username.is_empty() && self.password.is_none() {
            HttpAuth::None
        } else {
            HttpAuth::Basic {
                username: self.username.clone(),
                password: self
                    .password
                    .clone()
                    .unwrap_or_else(|| SecretString::new("")),
            }
        }
    }
}

/// `scheme://host:port[/prefix]` of a credential-free URL, without the trailing `/` `Url` adds.
pub(super) fn display_server(server: &Url) -> String {
    server.as_str().trim_end_matches('/').to_owned()
}

fn percent_decoded(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the URL has percent-encoded bytes that are not UTF-8".to_owned())
}

impl RabbitMqTrigger {
    /// The server this trigger names, with `vhostName` applied and the protocol checked
    /// against the URL. Messages never echo the URL: it may hold a password.
    pub(super) fn endpoint(&self) -> Result<Endpoint, ScalerError> {
        let (text, field, from_secret) = match (&self.host, &self.host_from_secret) {
            (Some(_), Some(_)) => {
                return Err(ScalerError::invalid(
                    BROKER,
                    "host",
                    "set either host or hostFromSecret, not both",
                ));
            }
            (None, None) => {
                return Err(ScalerError::invalid(
                    BROKER,
                    "host",
                    "no host given: set host (a URL without password) or hostFromSecret (a \
                     file holding the URL)",
                ));
            }
            (Some(host), None) => (SecretString::new(host.clone()), "host", false),
            (None, Some(source)) => (
                source.read().map_err(|err| {
                    ScalerError::invalid(BROKER, "hostFromSecret", err.to_string())
                })?,
                "hostFromSecret",
                true,
            ),
        };
        let mut endpoint = Endpoint::parse(text.expose())
            .map_err(|msg| ScalerError::invalid(BROKER, field, msg))?;
        if !from_secret && endpoint.password.is_some() {
            return Err(ScalerError::invalid(
                BROKER,
                "host",
                "host must not carry a password (it would show in the trigger); put the whole \
                 URL in a file and name it with hostFromSecret",
            ));
        }
        match (self.protocol, endpoint.wire) {
            (Protocol::Auto, _) | (Protocol::Amqp, Wire::Amqp) | (Protocol::Http, Wire::Http) => {}
            (protocol, _) => {
                return Err(ScalerError::invalid(
                    BROKER,
                    "protocol",
                    format!(
                        "protocol {protocol} does not match the host URL's {} scheme",
                        endpoint.server.scheme()
                    ),
                ));
            }
        }
        if let Some(vhost) = self.vhost_name.as_deref().filter(|v| !v.is_empty()) {
            vhost.clone_into(&mut endpoint.vhost);
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_triggers::{trigger, with};
    use super::*;

    #[test]
    fn amqp_urls_resolve_to_vhost_and_credentials() {
        let e = Endpoint::parse("amqp://us%40er:p%3Ass@rabbit.local:5673/my%2Fvhost?heartbeat=7")
            .unwrap();
        assert_eq!(e.wire, Wire::Amqp);
        assert_eq!((e.host.as_str(), e.port), ("rabbit.local", 5673));
        assert_eq!(e.username, "us@er");
        assert_eq!(e.password.as_ref().unwrap().expose(), "p:ss");
        assert_eq!(e.vhost, "my/vhost");
        assert_eq!(e.amqp.heartbeat, Some(7));
        assert_eq!(display_server(&e.server), "amqp://rabbit.local:5673");

        for (url, vhost) in [
            ("amqp://rabbit", "/"),
            ("amqp://rabbit/", "/"),
            ("amqp://rabbit/%2f", "/"),
            ("amqp://rabbit/%2F", "/"),
            ("amqps://rabbit/prod", "prod"),
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().vhost, vhost, "{url}");
        }
        let default_port = Endpoint::parse("amqps://rabbit").unwrap();
        assert_eq!((default_port.port, default_port.tls), (5671, true));
        let v6 = Endpoint::parse("amqp://[::1]:5672/").unwrap();
        assert_eq!(v6.host, "[::1]");

        let uri = Endpoint::parse("amqp://rabbit/")
            .unwrap()
            .amqp_uri(Duration::from_secs(2));
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.authority.userinfo.password, "guest");
        assert_eq!(uri.query.connection_timeout, Some(2000));
        assert_eq!(uri.vhost, "/");
        let external = Endpoint::parse("amqps://rabbit/?auth_mechanism=external").unwrap();
        assert_eq!(external.amqp.auth_mechanism, Some(SASLMechanism::External));
    }

    #[test]
    fn http_urls_resolve_to_prefix_and_vhost() {
        for (url, base, vhost) in [
            ("http://rabbit:15672", "http://rabbit:15672", "/"),
            ("http://rabbit:15672/", "http://rabbit:15672", "/"),
            ("http://rabbit:15672/%2F", "http://rabbit:15672", "/"),
            (
                "http://rabbit:15672/orders",
                "http://rabbit:15672",
                "orders",
            ),
            (
                "https://rabbit/mgmt/orders",
                "https://rabbit/mgmt",
                "orders",
            ),
            ("https://rabbit/mgmt/", "https://rabbit/mgmt", "/"),
        ] {
            let e = Endpoint::parse(url).unwrap();
            assert_eq!(display_server(&e.server), base, "{url}");
            assert_eq!(e.vhost, vhost, "{url}");
        }
        let e = Endpoint::parse("http://admin:s3cret@rabbit:15672/").unwrap();
        match e.http_auth() {
            HttpAuth::Basic { username, password } => {
                assert_eq!((username.as_str(), password.expose()), ("admin", "s3cret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.server.as_str().contains("s3cret"));
        assert!(matches!(
            Endpoint::parse("http://rabbit/").unwrap().http_auth(),
            HttpAuth::None
        ));
    }

    #[test]
    fn vhost_name_overrides_the_url() {
        let t = with(
            &trigger("http://r:15672/a", "q"),
            serde_json::json!({"vhostName": "b/c"}),
        );
        assert_eq!(t.endpoint().unwrap().vhost, "b/c");
        let t = with(
            &trigger("amqp://r/a", "q"),
            serde_json::json!({"vhostName": ""}),
        );
        assert_eq!(t.endpoint().unwrap().vhost, "a");
    }
}
