//! A consumer group member SIGKILLed and replaced at once, as a supervisor
//! does: the replacement joins while the dead member still holds the group
//! (until its session ends). tansu 0.6 has given such a member an empty
//! assignment for good (seen in the kill suites); the consumer runtime's
//! watchdog rejoins then. Here the replacement, watchdog on, must load every
//! event exactly once; whether the watchdog had to act is printed (tansu did
//! not leave the group stuck in every run, so it is not asserted).

use std::time::{Duration, Instant};

use crate::common::generator;
use crate::common::{TestEnv, sigkill, sigterm, wait_until};

const SESSION_MS: u64 = 6_000;

fn loader_env(watchdog_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LOADER__BATCH_ROWS", "2000".into()),
        (
            "HOURGLASS_KAFKA__SESSION_TIMEOUT_MS",
            SESSION_MS.to_string(),
        ),
        (
            "HOURGLASS_CONSUMERS__STUCK_ASSIGNMENT_SECS",
            watchdog_secs.to_string(),
        ),
    ]
}

async fn loaded(env: &TestEnv) -> u64 {
    env.clickhouse()
        .query("SELECT count() FROM loader_progress_rows")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_started_at_once_loads_every_event_once() {
    let env = TestEnv::new("runtime").await;
    env.migrate().await;
    // Counts every row inserted, duplicates included.
    for ddl in [
        "CREATE TABLE loader_progress_rows (event_id String) ENGINE = MergeTree() ORDER BY tuple()",
        "CREATE MATERIALIZED VIEW loader_progress_rows_mv TO loader_progress_rows AS SELECT event_id FROM events",
    ] {
        env.clickhouse().query(ddl).execute().await.unwrap();
    }
    env.create_topic(4).await;
    let n = 40_000u64;
    let generated = generator::generate(3, n as usize, 4, 500);
    let (first, rest) = generated.events.split_at(10_000);
    generator::produce(&env.cfg.kafka, first).await;

    // A leads the group, loads the first events, and dies.
    let mut a = env.spawn(&["load"], &loader_env(2));
    wait_until(
        Duration::from_secs(60),
        "the first events loaded",
        || async { loaded(&env).await >= 10_000 },
    )
    .await;
    sigkill(&mut a);
    generator::produce(&env.cfg.kafka, rest).await;

    // B joins at once, watchdog on (2 s).
    let mut b = env.spawn(&["load"], &loader_env(2));
    let started = Instant::now();
    wait_until(
        Duration::from_secs(90),
        "every event loaded by B",
        || async { loaded(&env).await >= n },
    )
    .await;
    eprintln!(
        "B: every event loaded {:.0?} after joining",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(loaded(&env).await, n, "each event loaded once");
    sigterm(&mut b);
    let log = std::fs::read_to_string(std::env::temp_dir().join(format!("{}.log", env.name)))
        .unwrap_or_default();
    eprintln!(
        "the watchdog rejoined {} time(s)",
        log.matches("rejoining").count()
    );
    env.teardown().await;
}
