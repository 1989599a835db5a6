//! The metrics API and the real poller together, in one process without sockets: concurrent
//! requests for a trigger not polled yet ask the poller for one first poll, not one each.
//! (Here rather than in `src/api`'s unit tests, which stay below the poller.)

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use spillway::api::{AppState, router};
use spillway::cache::{MetricCache, PollRequests};
use spillway::config::Config;
use spillway::poller::Poller;
use spillway::registry::Registry;
use tower::ServiceExt;

#[tokio::test]
async fn the_real_poller_polls_a_cold_trigger_once() {
    // One cron trigger, as `spillway serve` would register it from its config file.
    let config = Config::parse(
        Path::new("cold.yaml"),
        "pollingInterval: 1\nscaledObjects:\n  - name: office\n    namespace: default\n    triggers:\n      - cron: {timezone: UTC, start: '0 6 * * *', end: '0 20 * * *', desiredReplicas: 4}\n",
    )
    .unwrap();
    let (requests, asks) = PollRequests::channel();
    let state = AppState::new(
        Arc::new(MetricCache::new()),
        Arc::new(Registry::from_config(&config)),
    )
    .with_poll_requests(requests);
    let poller = Poller::new(Arc::clone(&state.cache)).with_metrics(Arc::clone(&state.own_metrics));
    let poller = tokio::spawn(poller.run_registry(Arc::clone(&state.registry), asks));
    let metric = &state.metrics()[0].metric;
    let asks = (0..20).map(|_| {
        let state = state.clone();
        let uri = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}");
        async move {
            let response = router(state)
                .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let code = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (code, String::from_utf8_lossy(&body).into_owned())
        }
    });
    for (code, body) in futures::future::join_all(asks).await {
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let text = state.own_metrics.encode().unwrap();
    assert!(
        text.lines()
            .any(|l| l == r#"spillway_poll_duration_seconds_count{broker="cron"} 1"#),
        "{text}"
    );
    poller.abort();
}
