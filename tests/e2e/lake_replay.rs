//! Replay: a day's raw rows and rollups deleted, then rebuilt from the lake
//! → the same numbers as before and as the generator's truth; the same
//! replay again → unchanged; then a range of raw rows that covers only part
//! of an hour, deleted and replayed → exactly the generator's events of that
//! range, none twice. The day itself is partly covered: the events span
//! 23:30 of the day before to 00:35.

use std::time::Duration;

use crate::common::generator;
use crate::common::rollup_truth::assert_matches_truth;
use crate::common::{TestEnv, sigterm, wait_until};
use chrono::{DateTime, TimeZone, Utc};

const DAY: &str = "2026-01-01 00:00:00";

fn pipeline_env(lake: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#.into()),
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__LOCAL_DIR", lake.into()),
        ("HOURGLASS_LAKE__FILE_MAX_AGE_SECS", "2".into()),
    ]
}

async fn sql(env: &TestEnv, query: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{}/?database={}", env.cfg.clickhouse.url, env.name))
        .body(query.to_owned())
        .send()
        .await
        .expect("ClickHouse answers");
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{query}: {text}");
    text
}

/// Everything a user would look at: raw counts and every serving view row.
async fn snapshot(env: &TestEnv) -> Vec<String> {
    let mut out = vec![
        sql(env, &format!("SELECT count(), uniqExact(event_id), round(sum(value), 3) FROM events WHERE timestamp >= '{DAY}'")).await,
        sql(env, "SELECT count(), uniqExact(event_id), round(sum(value), 3) FROM events").await,
    ];
    for view in ["metrics_5m", "metrics_1h", "metrics_1d"] {
        out.push(
            sql(
                env,
                &format!(
                    "SELECT window_start, event, dimensions, events, users, value_count, round(value_sum, 3), \
                     value_min, value_max, p50, p90, p95, p99 FROM {view} ORDER BY window_start, event, dimensions"
                ),
            )
            .await,
        );
    }
    out
}

async fn wait_mutations(env: &TestEnv) {
    wait_until(Duration::from_secs(120), "mutations done", || async {
        sql(env, "SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0").await.trim() == "0"
    })
    .await;
}

async fn replay(env: &TestEnv, lake: &str, into: &str) {
    replay_range(
        env,
        lake,
        into,
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
    )
    .await;
}

async fn replay_range(env: &TestEnv, lake: &str, into: &str, from: &str, to: &str) {
    let mut child = env.spawn(
        &["replay", "--from", from, "--to", to, "--into", into],
        &pipeline_env(lake),
    );
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "replay --into {into} failed (log: /tmp/{}.log)",
        env.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_day_is_rebuilt_from_the_lake_with_the_same_numbers() {
    let n = crate::common::scenario::env_count("HG_REPLAY_EVENTS", 200_000);
    let env = TestEnv::new("lake_replay").await;
    env.migrate().await;
    env.create_topic(8).await;
    let lake = std::env::temp_dir()
        .join(format!("{}-lake", env.name))
        .display()
        .to_string();
    let generated = generator::generate(23, n, 13, 2_000);
    generator::produce(&env.cfg.kafka, &generated.events).await;

    let vars = pipeline_env(&lake);
    let mut children = vec![
        env.spawn(&["load"], &vars),
        env.spawn(&["aggregate"], &vars),
        env.spawn(&["archive"], &vars),
    ];
    let store = hourglass_lake::store::LocalStore::new(&lake);
    // Progress is the three stores' counts together; a stall (not a slow
    // machine) fails.
    crate::common::wait_for_progress(
        Duration::from_secs(120),
        "events loaded, aggregated and archived",
        3 * n as u64,
        || async {
            let raw = sql(&env, "SELECT count() FROM events").await;
            let rolled = sql(&env, "SELECT sum(events) FROM rollup_5m").await;
            let objects = hourglass_lake::store::ObjectStore::list(&store, "")
                .await
                .unwrap_or_default();
            let archived =
                hourglass_lake::layout::records_named(objects.iter().map(|o| o.key.as_str()));
            [
                raw.trim().parse().unwrap_or(0),
                rolled.trim().parse().unwrap_or(0),
                archived,
            ]
            .iter()
            .map(|&c: &i64| c.clamp(0, n as i64) as u64)
            .sum()
        },
    )
    .await;
    for child in &mut children {
        sigterm(child);
    }
    let before = snapshot(&env).await;
    assert!(
        before[0].starts_with(|c: char| c.is_ascii_digit() && c != '0'),
        "the day has events: {}",
        before[0]
    );

    // Lose the day.
    for (table, column) in [
        ("events", "timestamp"),
        ("rollup_5m", "window_start"),
        ("rollup_1h", "bucket_start"),
        ("rollup_1d", "bucket_start"),
    ] {
        sql(
            &env,
            &format!("ALTER TABLE {table} DELETE WHERE {column} >= '{DAY}'"),
        )
        .await;
    }
    wait_mutations(&env).await;
    let lost = snapshot(&env).await;
    assert!(
        lost[0].starts_with("0\t"),
        "the day's raw rows are gone: {}",
        lost[0]
    );
    assert_ne!(lost, before);

    // Compact the lake first (`hourglass compact`, as an operator would):
    // the replay reads one file per hour, every partition in it.
    let written = hourglass_lake::store::ObjectStore::list(&store, "")
        .await
        .unwrap();
    let mut child = env.spawn(
        &[
            "compact",
            "--from",
            "2025-12-31T00:00:00Z",
            "--to",
            "2026-01-03T00:00:00Z",
        ],
        &pipeline_env(&lake),
    );
    assert!(child.wait().unwrap().success(), "hourglass compact failed");
    let compacted = hourglass_lake::store::ObjectStore::list(&store, "")
        .await
        .unwrap();
    let hours: std::collections::HashSet<_> = compacted
        .iter()
        .map(|o| hourglass_lake::layout::folder_of(&o.key))
        .collect();
    assert_eq!(hours.len(), compacted.len(), "one file per hour");
    assert_eq!(
        hourglass_lake::layout::records_named(compacted.iter().map(|o| o.key.as_str())),
        n as i64
    );
    eprintln!(
        "compacted {} objects into {}",
        written.len(),
        compacted.len()
    );

    // Rebuild it, twice.
    for round in 1..=2 {
        replay(&env, &lake, "clickhouse").await;
        replay(&env, &lake, "rollups").await;
        let after = snapshot(&env).await;
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            assert_eq!(a, b, "replay round {round}: snapshot part {i} differs");
        }
    }
    // Not only what the pipeline said before: what the generator sent.
    let day = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(
        raw_in(&env, day, day + chrono::Duration::days(1)).await,
        truth_in(&generated.events, day, day + chrono::Duration::days(1)),
        "the replayed day's raw rows (count, distinct ids) against the generator"
    );
    assert_matches_truth(&env, &generated).await;

    // Part of an hour: 00:10-00:20 deleted from `events` and replayed; rows
    // just outside it were kept and must not come twice.
    let (from, to) = (
        day + chrono::Duration::minutes(10),
        day + chrono::Duration::minutes(20),
    );
    sql(
        &env,
        &format!(
            "ALTER TABLE events DELETE WHERE timestamp >= '{}' AND timestamp < '{}'",
            from.format("%F %T"),
            to.format("%F %T")
        ),
    )
    .await;
    wait_mutations(&env).await;
    assert_eq!(raw_in(&env, from, to).await, (0, 0), "the range is gone");
    replay_range(
        &env,
        &lake,
        "clickhouse",
        &from.to_rfc3339(),
        &to.to_rfc3339(),
    )
    .await;
    let truth = truth_in(&generated.events, from, to);
    assert!(truth.0 > 0, "the generator sent events in {from}..{to}");
    assert_eq!(
        raw_in(&env, from, to).await,
        truth,
        "the part of the hour against the generator"
    );
    assert_eq!(
        raw_in(
            &env,
            day - chrono::Duration::days(1),
            day + chrono::Duration::days(1)
        )
        .await,
        (n as u64, n as u64),
        "every event once: rows around the range were not replayed again"
    );
    let _ = std::fs::remove_dir_all(&lake);
    env.teardown().await;
}

/// Raw rows with `from <= timestamp < to`: count and distinct event ids.
async fn raw_in(env: &TestEnv, from: DateTime<Utc>, to: DateTime<Utc>) -> (u64, u64) {
    let text = sql(
        env,
        &format!(
            "SELECT count(), uniqExact(event_id) FROM events \
             WHERE timestamp >= '{}' AND timestamp < '{}'",
            from.format("%F %T"),
            to.format("%F %T")
        ),
    )
    .await;
    let mut parts = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The generator's events with `from <= timestamp < to` (all distinct).
fn truth_in(
    events: &[hourglass_core::contract::EventEnvelope],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (u64, u64) {
    let n = events
        .iter()
        .filter(|e| e.timestamp >= from && e.timestamp < to)
        .count() as u64;
    (n, n)
}
