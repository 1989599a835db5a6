//! The peer routes, served on the metrics API's TLS port to other replicas only:
//!
//! - `GET /peer/v1/readings?epoch=E&since=N&waitMs=W`: the states this replica polled that
//!   changed after change number N of epoch E (all of them for another epoch), waiting up to W
//!   milliseconds for one when there is none yet (a long poll: a follower hears of a poll
//!   within [`COALESCE`] of it, on one kept-alive connection).
//! - `POST /peer/v1/asks`: triggers a follower had a cold miss on; each whose spec matches is
//!   asked of this replica's poller, as a local cold miss would be.
//!
//! Only a caller presenting this replica's own serving certificate as its client certificate
//! (every replica of an install mounts the same one) gets past [`require_peer`]; everyone
//! else gets a 403 Status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

use super::wire::{AskList, MAX_STATES, ReadingsPage, WireState, fingerprint_text};
use crate::api::auth::ClientCertificates;
use crate::api::serving_cert::ServingCertificate;
use crate::api::status::Status;
use crate::cache::{MetricCache, PollRequests};
use crate::poller::shard::Placement;

/// The longest a readings request may wait for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// After the first change a waiting request sees, it waits this long for more, so one answer
/// carries a round's worth of states rather than one each.
pub const COALESCE: Duration = Duration::from_millis(50);
/// The most triggers one ask may name.
const MAX_ASKED: usize = 10_000;

/// What the peer routes read.
#[derive(Clone)]
pub struct PeerState {
    pub cache: Arc<MetricCache>,
    pub placement: watch::Receiver<Arc<Placement>>,
    pub poll_requests: PollRequests,
    /// This process's epoch: change numbers mean nothing across processes.
    pub epoch: u64,
    pub serving: Arc<ServingCertificate>,
}

/// The peer routes, behind [`require_peer`].
pub fn router(state: PeerState) -> Router {
    Router::new()
        .route("/peer/v1/readings", get(readings))
        .route("/peer/v1/asks", post(asks))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_peer,
        ))
        .with_state(state)
}

/// Lets through only a caller whose client certificate is this replica's serving certificate.
async fn require_peer(State(state): State<PeerState>, request: Request, next: Next) -> Response {
    let presented = request
        .extensions()
        .get::<ClientCertificates>()
        .and_then(ClientCertificates::leaf);
    let serving = state.serving.current();
    let ours = serving.cert.first();
    match (presented, ours) {
        (Some(presented), Some(ours)) if presented == ours => next.run(request).await,
        (None, _) => Status::forbidden(
            "peer routes answer other spillway replicas only: present the serving certificate as the client certificate",
        )
        .into_response(),
        _ => Status::forbidden(
            "peer routes answer other spillway replicas only: the client certificate is not this install's serving certificate",
        )
        .into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReadingsQuery {
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn readings(
    State(state): State<PeerState>,
    query: Result<Query<ReadingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return Status::bad_request(format!("readings: {}", rejection.body_text()))
                .into_response();
        }
    };
    let since = if query.epoch == state.epoch {
        query.since
    } else {
        0
    };
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut records = state.cache.subscribe_records();
    loop {
        records.borrow_and_update();
        let (latest, changed) = state.cache.own_changes_since(since, MAX_STATES);
        if !changed.is_empty() || tokio::time::Instant::now() >= deadline {
            let placement = Arc::clone(&state.placement.borrow());
            let more = changed.len() == MAX_STATES;
            let change = if more {
                changed.iter().map(|(_, c, _)| *c).max().unwrap_or(since)
            } else {
                latest
            };
            let states = changed
                .iter()
                .filter_map(|(id, _, trigger_state)| {
                    let placed = placement.triggers.get(id)?;
                    // A state read for another spec than the one placed now is not sent.
                    (trigger_state.spec_version == Some(placed.version))
                        .then(|| WireState::of(id, placed.fingerprint, trigger_state))
                })
                .collect();
            return Json(ReadingsPage {
                epoch: state.epoch,
                change,
                more,
                states,
            })
            .into_response();
        }
        tokio::select! {
            changed = records.changed() => {
                if changed.is_err() {
                    return Status::service_unavailable("shutting down").into_response();
                }
                tokio::time::sleep(COALESCE).await;
            }
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn asks(
    State(state): State<PeerState>,
    body: Result<Json<AskList>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(list) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return Status::bad_request(format!("asks: {}", rejection.body_text())).into_response();
        }
    };
    if list.triggers.len() > MAX_ASKED {
        return Status::bad_request(format!(
            "asks: {} triggers in one ask; at most {MAX_ASKED}",
            list.triggers.len()
        ))
        .into_response();
    }
    let placement = Arc::clone(&state.placement.borrow());
    let mut asked = 0usize;
    for trigger in &list.triggers {
        let id = trigger.id();
        let known = placement
            .triggers
            .get(&id)
            .is_some_and(|p| fingerprint_text(p.fingerprint) == trigger.spec);
        if known && state.poll_requests.ask(&id) {
            asked += 1;
        }
    }
    tracing::debug!(
        asked,
        of = list.triggers.len(),
        "cold misses asked by a peer"
    );
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"asked": asked})),
    )
        .into_response()
}
