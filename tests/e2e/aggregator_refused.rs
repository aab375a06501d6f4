//! End to end: windows ClickHouse refuses for good (a column default that
//! throws for one event name, standing in for any permanent refusal) stop
//! the aggregator loudly, naming the partition and the offsets of the
//! records it could not write, instead of retrying for ever; its checkpoint
//! is not moved past them, so a restart meets the same refusal.

use std::time::{Duration, Instant};

use crate::common::generator;
use crate::common::{TestEnv, sigterm};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_flush_stops_the_aggregator_naming_the_offsets() {
    let env = TestEnv::new("agg_refused").await;
    env.create_topic(1).await;
    env.migrate().await;
    let ch = env.clickhouse();
    env.refuse_event("rollup_5m", "poison").await;
    let generated = generator::generate(41, 2_000, 8, 50);
    let mut stream = generated.events.clone();
    let mut poison = generated.events[500].clone();
    poison.event_id = Uuid::from_u128(0x9015);
    poison.event = "poison".into();
    stream.insert(501, poison);
    generator::produce(&env.cfg.kafka, &stream).await;

    let log = std::env::temp_dir().join(format!("{}.log", env.name));
    let run = |env: &TestEnv| {
        env.spawn(
            &["aggregate"],
            &[("HOURGLASS_AGGREGATOR__HTTP_LISTEN", "127.0.0.1:0".into())],
        )
    };
    let mut aggregator = run(&env);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = aggregator.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            sigterm(&mut aggregator);
            panic!("the aggregator is still running after 90 s: it should have stopped");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "stops with an error: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("refuses this flush for good"), "{text}");
    assert!(text.contains("throwIf"), "the server's reason is named");
    // The records a restart reads again, the refused one among them.
    let named = text
        .split("records at offsets ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("the offsets are named: {text}"));
    let (from, to) = named.split_once("..").unwrap();
    let (from, to): (i64, i64) = (from.parse().unwrap(), to.parse().unwrap());
    assert!(
        from <= 501 && 501 < to,
        "offsets {from}..{to} hold the refused record at 501"
    );

    // The refused windows' checkpoint was not written.
    let checkpoint: u64 = ch
        .query("SELECT count() FROM aggregator_progress WHERE checkpoint_offset > 501")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(checkpoint, 0, "no checkpoint past the refused record");
    env.teardown().await;
}
