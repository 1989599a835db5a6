//! The AMQP path: one connection per server, vhost and credentials, kept between ticks, and a
//! passive queue declare per queue for its ready messages. A connection given up on is always
//! closed, never leaked.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

use super::BROKER;
use super::endpoint::{Endpoint, display_server};
use super::figures::reading_from_ready;
use super::trigger::{RabbitMqTls, RabbitMqTrigger};
use crate::destination;
use crate::scalers::{Reading, ScalerError};

/// How long a connection being discarded may take to close politely before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads queue depths over one AMQP connection to one vhost.
pub(super) struct AmqpReader {
    endpoint: Endpoint,
    tls: Option<RabbitMqTls>,
    /// Held for a whole round: polls of one scaler take turns on its one channel.
    session: tokio::sync::Mutex<AmqpSession>,
}

#[derive(Default)]
struct AmqpSession {
    connection: Option<Connection>,
    channel: Option<Channel>,
}

/// Why a passive declare failed, and what it did to the channel and connection.
enum DeclareFailure {
    /// The server closed the channel (missing queue, no permission); the connection is fine.
    Queue(ScalerError),
    /// The connection is broken or stuck; the rest of the round would fail the same way.
    Connection(ScalerError),
}

impl AmqpReader {
    pub(super) fn new(endpoint: Endpoint, tls: Option<RabbitMqTls>) -> Self {
        Self {
            endpoint,
            tls,
            session: tokio::sync::Mutex::new(AmqpSession::default()),
        }
    }

    pub(super) async fn poll(
        &self,
        triggers: &[RabbitMqTrigger],
    ) -> Vec<Result<Reading, ScalerError>> {
        let mut results: Vec<Option<Result<Reading, ScalerError>>> = vec![None; triggers.len()];
        // Each queue is declared once however many triggers name it.
        let mut queues: Vec<(String, Duration, Vec<usize>)> = Vec::new();
        for (index, trigger) in triggers.iter().enumerate() {
            if let Err(err) = trigger.checked_endpoint() {
                results[index] = Some(Err(err));
                continue;
            }
            match queues
                .iter_mut()
                .find(|(name, ..)| *name == trigger.queue_name)
            {
                Some((_, timeout, members)) => {
                    *timeout = (*timeout).max(trigger.timeout_duration());
                    members.push(index);
                }
                None => queues.push((
                    trigger.queue_name.clone(),
                    trigger.timeout_duration(),
                    vec![index],
                )),
            }
        }

        if !queues.is_empty() {
            let connect_timeout = queues.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
            let mut session = self.session.lock().await;
            let mut broken = self
                .ensure_connection(&mut session, connect_timeout)
                .await
                .err();
            for (queue, timeout, members) in &queues {
                let count = match &broken {
                    Some(err) => Err(err.clone()),
                    None => match self.declare(&mut session, queue, *timeout).await {
                        Ok(count) => Ok(count),
                        Err(DeclareFailure::Queue(err)) => Err(err),
                        Err(DeclareFailure::Connection(err)) => {
                            tracing::warn!(
                                broker = BROKER,
                                server = %display_server(&self.endpoint.server),
                                vhost = %self.endpoint.vhost,
                                error = %err,
                                "AMQP connection discarded; the next poll reconnects"
                            );
                            discard(&mut session, "spillway: connection failed");
                            broken = Some(err.clone());
                            Err(err)
                        }
                    },
                };
                for &index in members {
                    let trigger = &triggers[index];
                    results[index] = Some(count.clone().map(|ready| {
                        reading_from_ready(trigger, &self.endpoint.vhost, queue, ready)
                    }));
                }
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ScalerError::BadResponse {
                        broker: BROKER,
                        target: self.vhost_target(),
                        cause: "trigger left unanswered".into(),
                    })
                })
            })
            .collect()
    }

    fn vhost_target(&self) -> String {
        format!(
            "vhost {:?} at {}",
            self.endpoint.vhost,
            display_server(&self.endpoint.server)
        )
    }

    fn queue_target(&self, queue: &str) -> String {
        format!(
            "queue {queue:?} in vhost {:?} at {}",
            self.endpoint.vhost,
            display_server(&self.endpoint.server)
        )
    }

    /// Keeps a live connection in `session`, replacing one the server or a heartbeat closed.
    async fn ensure_connection(
        &self,
        session: &mut AmqpSession,
        timeout: Duration,
    ) -> Result<(), ScalerError> {
        if session
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            return Ok(());
        }
        discard(session, "spillway: reconnecting");
        let connection = self.open_connection(timeout).await?;
        tracing::info!(
            broker = BROKER,
            server = %display_server(&self.endpoint.server),
            vhost = %self.endpoint.vhost,
            "AMQP connection opened"
        );
        session.connection = Some(connection);
        Ok(())
    }

    /// Connects within `timeout`. A handshake still running at the deadline is left to finish
    /// in the background and its connection closed, so giving up never leaks a connection.
    async fn open_connection(&self, timeout: Duration) -> Result<Connection, ScalerError> {
        let target = self.vhost_target();
        let tls = amqp_tls_config(self.tls.as_ref())?;
        let mut uri = self.endpoint.amqp_uri(timeout);
        // The destination policy, after resolution. Over plain AMQP the socket goes to the
        // address checked here; over amqps the client needs the name for TLS and resolves it
        // again, so there the check is made once per connect, just before it.
        let resolving = destination::resolve(&self.endpoint.host, self.endpoint.port);
        let addresses = match tokio::time::timeout(timeout, resolving).await {
            Ok(Ok(addresses)) => addresses,
            Ok(Err(err)) => {
                return Err(ScalerError::Unreachable {
                    broker: BROKER,
                    target,
                    cause: err.to_string(),
                });
            }
            Err(_) => {
                return Err(ScalerError::Timeout {
                    broker: BROKER,
                    target,
                    after: timeout,
                });
            }
        };
        if !self.endpoint.tls {
            uri.authority.host = match addresses[0].ip() {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
        }
        let properties = ConnectionProperties::default().with_connection_name(
            concat!("spillway/", env!("CARGO_PKG_VERSION"))
                .to_owned()
                .into(),
        );
        let mut connecting =
            tokio::spawn(Connection::connect_uri_with_config(uri, properties, tls));
        match tokio::time::timeout(timeout, &mut connecting).await {
            Ok(Ok(Ok(connection))) => Ok(connection),
            Ok(Ok(Err(err))) => Err(connect_failure(&err, target)),
            Ok(Err(join)) => Err(ScalerError::Unreachable {
                broker: BROKER,
                target,
                cause: format!("connect task failed: {join}"),
            }),
            Err(_) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(CLOSE_TIMEOUT, &mut connecting).await {
                        Ok(Ok(Ok(late))) => {
                            close_in_background(late, "spillway: connect timed out")
                        }
                        Ok(_) => {}
                        Err(_) => connecting.abort(),
                    }
                });
                Err(ScalerError::Timeout {
                    broker: BROKER,
                    target,
                    after: timeout,
                })
            }
        }
    }

    /// The ready-message count of `queue`, by passive declare on the session's channel
    /// (opening a fresh one when the last was closed).
    async fn declare(
        &self,
        session: &mut AmqpSession,
        queue: &str,
        timeout: Duration,
    ) -> Result<f64, DeclareFailure> {
        let target = self.queue_target(queue);
        let timed_out = |target: String| {
            DeclareFailure::Connection(ScalerError::Timeout {
                broker: BROKER,
                target,
                after: timeout,
            })
        };
        let Some(connection) = session.connection.as_ref() else {
            return Err(DeclareFailure::Connection(ScalerError::Unreachable {
                broker: BROKER,
                target,
                cause: "no connection".into(),
            }));
        };
        let channel = match session.channel.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => match tokio::time::timeout(timeout, connection.create_channel()).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(err)) => {
                    return Err(DeclareFailure::Connection(amqp_failure(
                        &err, target, "queue",
                    )));
                }
                Err(_) => return Err(timed_out(target)),
            },
        };
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declare = channel.queue_declare(queue, options, FieldTable::default());
        match tokio::time::timeout(timeout, declare).await {
            Ok(Ok(declared)) => {
                session.channel = Some(channel);
                Ok(f64::from(declared.message_count()))
            }
            // The server closed the channel; it is dropped here and the next queue opens a
            // fresh one on the same connection.
            Ok(Err(lapin::Error::ProtocolError(err)))
                if matches!(err.kind(), AMQPErrorKind::Soft(_)) =>
            {
                let failure = amqp_failure(&lapin::Error::ProtocolError(err), target, "queue");
                tracing::debug!(broker = BROKER, error = %failure, "passive declare refused");
                Err(DeclareFailure::Queue(failure))
            }
            Ok(Err(err)) => Err(DeclareFailure::Connection(amqp_failure(
                &err, target, "queue",
            ))),
            Err(_) => Err(timed_out(target)),
        }
    }
}

impl Drop for AmqpReader {
    fn drop(&mut self) {
        // A removed scaler closes its connection; lapin does not close one on drop.
        discard(self.session.get_mut(), "spillway: scaler removed");
    }
}

/// Takes the session's connection (and channel) out and closes it without waiting.
fn discard(session: &mut AmqpSession, reason: &'static str) {
    session.channel = None;
    if let Some(connection) = session.connection.take() {
        close_in_background(connection, reason);
    }
}

/// Closes `connection` politely in a task, bounded by [`CLOSE_TIMEOUT`]. Closing one the
/// server already closed is a no-op.
fn close_in_background(connection: Connection, reason: &'static str) {
    if !connection.status().connected() {
        return;
    }
    let close = async move {
        match tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason)).await {
            Ok(Ok(())) => tracing::debug!(broker = BROKER, reason, "AMQP connection closed"),
            Ok(Err(err)) => {
                tracing::debug!(broker = BROKER, reason, error = %err, "AMQP close failed");
            }
            Err(_) => tracing::warn!(
                broker = BROKER,
                reason,
                "AMQP connection did not close within {CLOSE_TIMEOUT:?}; dropped"
            ),
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(close);
        }
        Err(_) => tracing::warn!(
            broker = BROKER,
            reason,
            "no async runtime to close an AMQP connection; it stays open until exit"
        ),
    }
}

/// The TLS material for lapin, read from the trigger's files at each connect.
fn amqp_tls_config(tls: Option<&RabbitMqTls>) -> Result<OwnedTLSConfig, ScalerError> {
    let Some(tls) = tls else {
        return Ok(OwnedTLSConfig::default());
    };
    let cert_chain = tls
        .ca_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|err| {
                ScalerError::invalid(
                    BROKER,
                    "tls.caFile",
                    format!("cannot read {}: {err}", path.display()),
                )
            })
        })
        .transpose()?;
    let identity = match &tls.client_pkcs12_file {
        None => None,
        Some(path) => {
            let der = std::fs::read(path).map_err(|err| {
                ScalerError::invalid(
                    BROKER,
                    "tls.clientPkcs12File",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            let password = match &tls.client_pkcs12_password {
                Some(source) => source
                    .read()
                    .map_err(|err| {
                        ScalerError::invalid(BROKER, "tls.clientPkcs12Password", err.to_string())
                    })?
                    .expose()
                    .to_owned(),
                None => String::new(),
            };
            Some(OwnedIdentity { der, password })
        }
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Maps a failed connect: refused logins are Unauthorized, an unknown vhost NotFound.
fn connect_failure(err: &lapin::Error, target: String) -> ScalerError {
    amqp_failure(err, target, "vhost")
}

/// Maps a lapin error to a [`ScalerError`]; `missing` names what a NOT_FOUND means here.
fn amqp_failure(err: &lapin::Error, target: String, missing: &str) -> ScalerError {
    match err {
        lapin::Error::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ScalerError::NotFound {
                    broker: BROKER,
                    target,
                    what: missing.to_owned(),
                },
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) if text.contains("not found") => {
                    ScalerError::NotFound {
                        broker: BROKER,
                        target,
                        what: "vhost".into(),
                    }
                }
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => ScalerError::Unauthorized {
                    broker: BROKER,
                    target,
                    cause: amqp.to_string(),
                },
                _ => ScalerError::Broker {
                    broker: BROKER,
                    target,
                    cause: amqp.to_string(),
                },
            }
        }
        lapin::Error::IOError(_)
        | lapin::Error::InvalidConnectionState(_)
        | lapin::Error::InvalidChannelState(_)
        | lapin::Error::MissingHeartbeatError => ScalerError::Unreachable {
            broker: BROKER,
            target,
            cause: err.to_string(),
        },
        other => ScalerError::Broker {
            broker: BROKER,
            target,
            cause: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_errors_map_to_typed_errors() {
        use lapin::protocol::AMQPError;
        let protocol = |kind: AMQPErrorKind, text: &str| {
            lapin::Error::ProtocolError(AMQPError::new(kind, text.into()))
        };
        let not_found = protocol(AMQPSoftError::NOTFOUND.into(), "NOT_FOUND - no queue 'q'");
        assert!(matches!(
            amqp_failure(&not_found, "t".into(), "queue"),
            ScalerError::NotFound { what, .. } if what == "queue"
        ));
        let vhost = protocol(AMQPHardError::NOTALLOWED.into(), "vhost x not found");
        assert!(matches!(
            connect_failure(&vhost, "t".into()),
            ScalerError::NotFound { what, .. } if what == "vhost"
        ));
        let refused = protocol(AMQPSoftError::ACCESSREFUSED.into(), "ACCESS_REFUSED");
        assert!(matches!(
            connect_failure(&refused, "t".into()),
            ScalerError::Unauthorized { .. }
        ));
        let io = lapin::Error::IOError(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(
            connect_failure(&io, "t".into()),
            ScalerError::Unreachable { .. }
        ));
    }
}
