//! Proves the Prometheus harness is a real server: it scrapes itself and reports `up == 1`.

mod common;

use std::time::Duration;

#[tokio::test]
async fn prometheus_scrapes_itself() {
    let base = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let query = format!("{base}/api/v1/query?query=up%7Bjob%3D%22prometheus%22%7D");
    let value = common::eventually(
        "up{job=\"prometheus\"} to have a sample",
        Duration::from_secs(30),
        || async {
            let body = common::get_json(&query).await;
            assert_eq!(body["status"], "success", "query failed: {body}");
            body["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(value, "1", "Prometheus reports its own target down");

    let build = common::get_json(&format!("{base}/api/v1/status/buildinfo")).await;
    let version = build["data"]["version"].as_str().expect("version");
    println!("prometheus: Prometheus {version} at {base}: up{{job=\"prometheus\"}} == {value}");
}
