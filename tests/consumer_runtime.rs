//! The consumer runtime's watchdog against the coordinator bug it exists
//! for: tansu 0.6 gives a member that joins while a SIGKILLed member still
//! holds the group (until its session ends) an empty assignment that no
//! later rebalance corrects. Reproduced with the loader: with the watchdog
//! off the replacement reads nothing long after the dead member's session
//! ended; with it on, the next replacement rejoins and loads every event
//! exactly once.

mod common;

use std::time::{Duration, Instant};

use common::generator;
use common::{TestEnv, sigkill, sigterm, wait_until};

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
async fn a_consumer_left_without_partitions_rejoins_its_group() {
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
    let mut a = env.spawn(&["load"], &loader_env(0));
    wait_until(
        Duration::from_secs(60),
        "the first events loaded",
        || async { loaded(&env).await >= 10_000 },
    )
    .await;
    sigkill(&mut a);
    generator::produce(&env.cfg.kafka, rest).await;

    // B joins at once, watchdog off: the bug.
    let mut b = env.spawn(&["load"], &loader_env(0));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(3 * SESSION_MS + 5_000)).await;
    let during_b = loaded(&env).await;
    sigkill(&mut b);
    eprintln!(
        "B (watchdog off): {during_b} of {n} loaded {:.0?} after joining",
        started.elapsed()
    );
    assert_eq!(
        during_b, 10_000,
        "the stuck group reproduces: B, joined while A's session ran, reads nothing for three sessions"
    );

    // C joins at once too, watchdog on (2 s): it rejoins once B's session
    // is over and loads the rest, each event once.
    let mut c = env.spawn(&["load"], &loader_env(2));
    let started = Instant::now();
    wait_until(
        Duration::from_secs(90),
        "every event loaded by C",
        || async { loaded(&env).await >= n },
    )
    .await;
    eprintln!(
        "C (watchdog on): every event loaded {:.0?} after joining",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(loaded(&env).await, n, "each event loaded once");
    sigterm(&mut c);
    let log = std::fs::read_to_string(std::env::temp_dir().join(format!("{}.log", env.name)))
        .unwrap_or_default();
    assert!(
        log.contains("rejoining"),
        "C's watchdog is what mended it (log: /tmp/{}.log)",
        env.name
    );
    env.teardown().await;
}
