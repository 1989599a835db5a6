//! The cron scaler through `Scaler::poll` with an injected clock: a window that opens and
//! closes as time moves, several triggers in one poll, daylight-saving nights in Europe/Berlin,
//! and invalid triggers failing alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use spillway::scalers::cron::{Clock, CronScaler, CronTrigger, ManualClock};
use spillway::scalers::{Reading, Scaler, ScalerError, TriggerParams};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn trigger(timezone: &str, start: &str, end: &str, desired_replicas: u32) -> CronTrigger {
    serde_json::from_value(serde_json::json!({
        "timezone": timezone,
        "start": start,
        "end": end,
        "desiredReplicas": desired_replicas,
    }))
    .expect("trigger")
}

fn scaler_at(now: &str) -> (CronScaler, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(utc(now)));
    (CronScaler::with_clock(clock.clone()), clock)
}

fn values(readings: &[Result<Reading, ScalerError>]) -> Vec<(f64, bool)> {
    readings
        .iter()
        .map(|r| {
            let r = r.as_ref().expect("reading");
            (r.value, r.active)
        })
        .collect()
}

#[tokio::test]
async fn a_window_opens_and_closes_as_the_clock_moves() {
    // KEDA's documented example: 06:00 to 20:00 in Asia/Kolkata (UTC+05:30).
    let office = trigger("Asia/Kolkata", "0 6 * * *", "0 20 * * *", 10);
    office.validate().expect("valid");
    assert_eq!(office.metric_name(), "cron-asia-kolkata-06xxx-020xxx");
    assert_eq!(office.target_value(), 1.0);
    let (scaler, clock) = scaler_at("2025-06-02T00:29:00Z"); // 05:59 IST
    let triggers = [office];

    let mut seen = Vec::new();
    for step in 0..4 {
        let readings = scaler.poll(&triggers).await;
        let reading = readings[0].as_ref().expect("reading");
        assert_eq!(reading.timestamp, SystemTime::from(clock.now()));
        seen.push((step, reading.value, reading.active));
        // 05:59 -> 06:00 -> 19:59 -> 20:00 IST
        match step {
            0 => clock.advance(Duration::from_secs(60)),
            1 => clock.advance(Duration::from_secs(13 * 3600 + 59 * 60)),
            _ => clock.advance(Duration::from_secs(60)),
        }
    }
    assert_eq!(
        seen,
        [
            (0, 0.0, false),
            (1, 10.0, true),
            (2, 10.0, true),
            (3, 0.0, false)
        ]
    );
}

#[tokio::test]
async fn one_poll_answers_every_trigger_and_bad_ones_fail_alone() {
    let triggers = [
        trigger("UTC", "0 22 * * *", "0 6 * * *", 4), // across midnight
        trigger("UTC", "0 8 * * MON-FRI", "0 18 * * MON-FRI", 3), // weekdays
        trigger("UTC", "*/10 * * * *", "5-59/10 * * * *", 2), // the first 5 minutes of every 10
        trigger("Nowhere/City", "0 6 * * *", "0 7 * * *", 1),
        trigger("UTC", "0 6 * * *", "0 6 * * *", 1),
    ];
    assert_eq!(
        CronScaler::connection_key(&triggers[0]),
        CronScaler::connection_key(&triggers[1]),
        "all cron triggers share one scaler"
    );
    // 2025-06-07 is a Saturday.
    let (scaler, clock) = scaler_at("2025-06-06T23:02:00Z");
    let readings = scaler.poll(&triggers).await;
    assert_eq!(
        values(&readings[..3]),
        [(4.0, true), (0.0, false), (2.0, true)]
    );
    assert!(
        matches!(&readings[3], Err(ScalerError::InvalidTrigger { field, .. }) if field == "timezone"),
        "{:?}",
        readings[3]
    );
    assert!(
        matches!(&readings[4], Err(ScalerError::InvalidTrigger { field, message, .. })
            if field == "end" && message.contains("same time")),
        "{:?}",
        readings[4]
    );

    clock.set(utc("2025-06-09T09:07:00Z")); // Monday 09:07
    let readings = scaler.poll(&triggers[..3]).await;
    assert_eq!(values(&readings), [(0.0, false), (3.0, true), (0.0, false)]);
    clock.set(utc("2025-06-07T09:00:00Z")); // Saturday
    assert_eq!(values(&scaler.poll(&triggers[1..2]).await), [(0.0, false)]);
}

#[tokio::test]
async fn daylight_saving_nights_in_berlin() {
    // Spring forward, 2025-03-30: 02:00 CET jumps to 03:00 CEST at 01:00 UTC, so 02:30 never
    // shows on the wall clock. The window opens when the clock jumps past it.
    let night = trigger("Europe/Berlin", "30 2 * * *", "0 6 * * *", 5);
    let (scaler, clock) = scaler_at("2025-03-29T12:00:00Z");
    let mut timeline = Vec::new();
    for at in [
        "2025-03-29T12:00:00Z", // Saturday noon: closed (KEDA's robfig schedule reads it as open)
        "2025-03-30T00:59:59Z", // 01:59:59 CET
        "2025-03-30T01:00:00Z", // 03:00 CEST
        "2025-03-30T03:59:59Z", // 05:59:59 CEST
        "2025-03-30T04:00:00Z", // 06:00 CEST
    ] {
        clock.set(utc(at));
        let reading = scaler.poll(std::slice::from_ref(&night)).await.remove(0);
        timeline.push(reading.expect("reading").active);
    }
    assert_eq!(timeline, [false, false, true, true, false]);

    // Fall back, 2025-10-26: 03:00 CEST goes back to 02:00 CET at 01:00 UTC. A window from
    // 02:30 to 03:00 opens at the first 02:30 and stays open through the repeated hour.
    let repeated = trigger("Europe/Berlin", "30 2 * * *", "0 3 * * *", 5);
    let mut timeline = Vec::new();
    for at in [
        "2025-10-26T00:29:00Z", // 02:29 CEST
        "2025-10-26T00:30:00Z", // 02:30 CEST
        "2025-10-26T01:10:00Z", // 02:10 CET (the hour again)
        "2025-10-26T01:40:00Z", // 02:40 CET
        "2025-10-26T02:00:00Z", // 03:00 CET
        "2025-10-26T02:30:00Z", // 03:30 CET: 02:30 does not fire twice
    ] {
        clock.set(utc(at));
        let reading = scaler.poll(std::slice::from_ref(&repeated)).await.remove(0);
        timeline.push(reading.expect("reading").active);
    }
    assert_eq!(timeline, [false, true, true, true, false, false]);
}

#[tokio::test]
async fn connect_uses_the_system_clock() {
    // Open from 00:01 to 00:00 the next day: closed only during the minute after midnight UTC.
    let always = trigger("UTC", "1 0 * * *", "0 0 * * *", 7);
    let scaler = CronScaler::connect(&always).expect("connect");
    let reading = scaler.poll(std::slice::from_ref(&always)).await.remove(0);
    let reading = reading.expect("reading");
    let now = Utc::now();
    let in_gap = now.format("%H:%M").to_string() == "00:00";
    assert_eq!(reading.active, !in_gap, "at {now}");
    let age = SystemTime::now()
        .duration_since(reading.timestamp)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(5),
        "reading timestamp is now: {age:?}"
    );
}
