//! Broker outage: while the broker is down ingest answers 503 with
//! Retry-After and never 2xx; once the broker is back it accepts again
//! without a restart, and every event it acknowledged is on the topic.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::{Ingest, TestEnv, read_topic};
use hourglass_core::contract::EventEnvelope;
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

fn batch(n: usize) -> (String, Vec<Uuid>) {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let events: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"event": "e", "user_id": format!("u{i}"), "event_id": id}))
        .collect();
    (json!({ "batch": events }).to_string(), ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_means_503_never_2xx_and_back_means_accepting() {
    // Not someone else's broker: skipped outside CI, a failure in CI.
    let Some(kafka_pid) = crate::common::scenario::stack_pid_for("kafka", "broker outage") else {
        return;
    };
    let env = TestEnv::new("ingest_outage").await;
    env.create_topic(4).await;
    let mut ingest = Ingest::start(
        &env,
        "out",
        &[
            ("HOURGLASS_INGEST__DELIVERY_TIMEOUT_MS", "3000".into()),
            // The outage loop sends as fast as 503s come back: the key's
            // rate limit (answered 429 before the broker is looked at) is
            // not what this test is about.
            ("HOURGLASS_INGEST__RATE_LIMIT_EVENTS_PER_SEC", "0".into()),
        ],
    )
    .await;
    let mut acknowledged: HashSet<Uuid> = HashSet::new();
    let (body, ids) = batch(50);
    assert_eq!(ingest.post("/v1/batch", body).await.status(), 200);
    acknowledged.extend(ids);

    // Broker gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kafka_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = nix::unistd::Pid::from_raw(kafka_pid);
    while nix::sys::signal::kill(gone, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage = Instant::now();
    let mut refused = 0;
    while outage.elapsed() < Duration::from_secs(8) {
        let (body, _) = batch(20);
        let r = ingest.post("/v1/batch", body).await;
        assert_eq!(r.status(), 503, "no 2xx while the broker is down");
        let retry: u32 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry > 0);
        refused += 1;
    }
    assert!(refused >= 3, "{refused} refusals");
    let ready = reqwest::get(format!("{}/health/ready", ingest.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the broker is down");

    // Broker back: accepting again, same ingest process.
    crate::common::stack_up();
    let back = Instant::now();
    loop {
        let (body, ids) = batch(20);
        let r = ingest.post("/v1/batch", body).await;
        if r.status() == 200 {
            acknowledged.extend(ids);
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "ingest did not recover"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..5 {
        let (body, ids) = batch(20);
        assert_eq!(ingest.post("/v1/batch", body).await.status(), 200);
        acknowledged.extend(ids);
    }
    assert!(
        ingest.child.try_wait().unwrap().is_none(),
        "ingest kept running"
    );

    // Every acknowledged event is on the topic (refused ones may be too:
    // a 503 promises nothing either way, which is why clients retry with ids).
    let records = read_topic(
        &env.cfg.kafka,
        acknowledged.len(),
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let on_topic: HashSet<Uuid> = records
        .iter()
        .map(|r| {
            EventEnvelope::decode(r.payload().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    let missing = acknowledged.difference(&on_topic).count();
    assert_eq!(missing, 0, "acknowledged events missing from the topic");
    drop(ingest);
    env.teardown().await;
}
