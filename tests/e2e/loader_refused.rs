//! End to end: rows ClickHouse refuses do not stop loading. A batch holding
//! three events the server refuses (a column default that throws for them,
//! standing in for any per-row refusal: a constraint, a bad value) and
//! events spread over 120 months (more partitions than one INSERT may hold
//! on servers with `max_partitions_per_insert_block`) is loaded: every other
//! event lands exactly once, the three go to the dead-letter topic with the
//! server's reason and their source offsets, the progress reaches the end
//! of every partition, and events produced afterwards load too.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::generator;
use crate::common::{TestEnv, read_topic, sigterm};
use hourglass_core::contract::EventEnvelope;
use rdkafka::Message;
use rdkafka::message::Headers;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_dead_lettered_and_loading_goes_on() {
    let env = TestEnv::new("load_refused").await;
    env.create_topic(2).await;
    hourglass_core::kafka::ensure_topics(&env.cfg.kafka, &[(env.cfg.kafka.dlq_topic.as_str(), 1)])
        .await
        .unwrap();
    env.migrate().await;
    let ch = env.clickhouse();
    env.refuse_event("events", "poison").await;

    let generated = generator::generate(31, 3_000, 6, 100);
    let mut stream: Vec<EventEnvelope> = generated.events.clone();
    // 120 months, one event each, interleaved with the rest.
    let first_month = chrono::DateTime::parse_from_rfc3339("2016-01-15T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    for m in 0..120u32 {
        let mut e = generated.events[m as usize].clone();
        e.event_id = Uuid::from_u128(0x0A0A_0000 + u128::from(m));
        e.timestamp = first_month
            .checked_add_months(chrono::Months::new(m))
            .unwrap();
        stream.insert((m as usize) * 20, e);
    }
    let mut poison_ids = BTreeSet::new();
    for (i, at) in [5usize, 1_500, 3_100].into_iter().enumerate() {
        let mut e = generated.events[i].clone();
        e.event_id = Uuid::from_u128(0x9015_0000 + i as u128);
        e.event = "poison".into();
        poison_ids.insert(e.event_id.to_string());
        stream.insert(at, e);
    }
    generator::produce(&env.cfg.kafka, &stream).await;
    let ends = env.partition_ends(2).await;

    let mut loader = env.spawn(
        &["load"],
        &[("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into())],
    );
    env.wait_loaded_to(
        &ends,
        Duration::from_secs(180),
        "the loader's progress at the end of every partition",
    )
    .await;

    let expected = (stream.len() - poison_ids.len()) as u64;
    let (rows, ids, poison, months): (u64, u64, u64, u64) = ch
        .query(
            "SELECT count(), uniqExact(event_id), countIf(event = 'poison'), uniqExact(toYYYYMM(timestamp)) FROM events FINAL",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, ids, poison),
        (expected, expected, 0),
        "every other event once, no poison"
    );
    assert!(months >= 120, "the batch spanned {months} months");

    let dlq = hourglass_core::config::KafkaConfig {
        topic: env.cfg.kafka.dlq_topic.clone(),
        ..env.cfg.kafka.clone()
    };
    let letters = read_topic(&dlq, 3, Duration::from_secs(2), Duration::from_secs(30));
    assert_eq!(letters.len(), 3, "each refused event dead-lettered once");
    let mut lettered = BTreeSet::new();
    for m in &letters {
        let header = |name: &str| {
            m.headers()
                .unwrap()
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        assert!(
            header("hourglass-reason").contains("throwIf"),
            "{}",
            header("hourglass-reason")
        );
        assert!(!header("hourglass-source-offset").is_empty());
        let row: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(row["event"], "poison");
        lettered.insert(row["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(lettered, poison_ids);

    // Loading goes on.
    let more: Vec<EventEnvelope> = generated.events[..50]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.event_id = Uuid::from_u128(0x0B0B_0000 + i as u128);
            e
        })
        .collect();
    generator::produce(&env.cfg.kafka, &more).await;
    let ends = env.partition_ends(2).await;
    env.wait_loaded_to(&ends, Duration::from_secs(60), "the later events loaded")
        .await;
    let rows: u64 = ch
        .query("SELECT count() FROM events FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, expected + 50);
    sigterm(&mut loader);
    env.teardown().await;
}
