//! End to end: seeded events on Kafka → `hourglass aggregate` → ClickHouse
//! rollups equal to the generator's ground truth, with and without crashes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use clickhouse::Row;
use common::generator::{self, Generated, Truth};
use common::{TestEnv, sigkill, sigterm, wait_until};
use hourglass_core::histogram::ValueHistogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Deserialize;

fn event_count() -> usize {
    std::env::var("HG_AGG_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn aggregator_env() -> Vec<(&'static str, String)> {
    vec![
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "300".into()),
        ("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#.into()),
    ]
}

#[derive(Row, Deserialize, Debug)]
struct Totals {
    window_start: u32,
    event: String,
    dimensions: String,
    events: u64,
    users: u64,
    value_count: u64,
}

#[derive(Row, Deserialize, Debug)]
struct Served {
    window_start: u32,
    event: String,
    dimensions: String,
    events: u64,
    users: u64,
    value_count: u64,
    p50: f64,
    p95: f64,
    p99: f64,
}

async fn flushed_events(env: &TestEnv) -> u64 {
    env.clickhouse()
        .query("SELECT sum(events) FROM rollup_5m")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

async fn wait_all_flushed(env: &TestEnv, n: u64) {
    wait_until(
        Duration::from_secs(900),
        "every event in rollup_5m",
        || async { flushed_events(env).await >= n },
    )
    .await;
    // Nothing more may arrive (a double count would push it past n).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(flushed_events(env).await, n, "events in rollup_5m");
}

fn expected_quantiles(values: &[f64]) -> (f64, f64, f64) {
    let mut h = ValueHistogram::new(3, 3_600_000.0);
    values.iter().for_each(|v| h.record(*v));
    (h.quantile(0.5), h.quantile(0.95), h.quantile(0.99))
}

/// Roll the 5-minute truth up to `bucket_ms` buckets.
fn roll_up(
    truth: &BTreeMap<(i64, String, String), Truth>,
    bucket_ms: i64,
) -> BTreeMap<(i64, String, String), Truth> {
    let mut out: BTreeMap<(i64, String, String), Truth> = BTreeMap::new();
    for ((w, e, d), t) in truth {
        let o = out
            .entry((w.div_euclid(bucket_ms) * bucket_ms, e.clone(), d.clone()))
            .or_default();
        o.events += t.events;
        o.users.extend(t.users.iter().cloned());
        o.values.extend(&t.values);
    }
    out
}

async fn assert_view_matches(
    env: &TestEnv,
    view: &str,
    truth: &BTreeMap<(i64, String, String), Truth>,
) {
    let served: Vec<Served> = env
        .clickhouse()
        .query(&format!(
            "SELECT toUInt32(window_start), event, dimensions, events, users, value_count, p50, p95, p99 \
             FROM {view} ORDER BY window_start, event, dimensions"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(served.len(), truth.len(), "{view}: row count");
    for row in served {
        let key = (
            i64::from(row.window_start) * 1000,
            row.event.clone(),
            row.dimensions.clone(),
        );
        let t = truth
            .get(&key)
            .unwrap_or_else(|| panic!("{view}: unexpected row {row:?}"));
        assert_eq!(row.events, t.events, "{view} events {key:?}");
        assert_eq!(
            row.users,
            t.users.len() as u64,
            "{view} distinct users {key:?}"
        );
        assert_eq!(
            row.value_count,
            t.values.len() as u64,
            "{view} value count {key:?}"
        );
        if !t.values.is_empty() {
            let (p50, p95, p99) = expected_quantiles(&t.values);
            assert_eq!(
                (row.p50, row.p95, row.p99),
                (p50, p95, p99),
                "{view} percentiles {key:?}"
            );
        }
    }
}

async fn assert_matches_truth(env: &TestEnv, generated: &Generated) {
    // rollup_5m summed over source partitions.
    let totals: Vec<Totals> = env
        .clickhouse()
        .query(
            "SELECT toUInt32(window_start), event, dimensions, sum(events), sum(users), sum(value_count) \
             FROM rollup_5m GROUP BY window_start, event, dimensions ORDER BY window_start, event, dimensions",
        )
        .fetch_all()
        .await
        .unwrap();
    let got: BTreeMap<_, _> = totals
        .into_iter()
        .map(|t| {
            (
                (i64::from(t.window_start) * 1000, t.event, t.dimensions),
                (t.events, t.users, t.value_count),
            )
        })
        .collect();
    let want: BTreeMap<_, _> = generated
        .truth
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                (t.events, t.users.len() as u64, t.values.len() as u64),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "rollup_5m summed over partitions equals the ground truth"
    );
    assert_view_matches(env, "metrics_5m", &generated.truth).await;
    assert_view_matches(env, "metrics_1h", &roll_up(&generated.truth, 3_600_000)).await;
    assert_view_matches(env, "metrics_1d", &roll_up(&generated.truth, 86_400_000)).await;
}

/// One topic, produced once; each scenario gets its own database and group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_are_exact_with_and_without_crashes() {
    let n = event_count();
    let topic_env = TestEnv::new("agg").await;
    topic_env.create_topic(8).await;
    let generated = generator::generate(42, n, 13, 5_000);
    let windows: HashSet<i64> = generated.truth.keys().map(|k| k.0).collect();
    assert!(windows.len() >= 12, "{} windows", windows.len());
    let started = std::time::Instant::now();
    generator::produce(&topic_env.cfg.kafka, &generated.events).await;
    eprintln!("produced {n} events in {:?}", started.elapsed());

    let scenario_env = |label: &str| {
        let label = label.to_owned();
        let topic = topic_env.cfg.kafka.topic.clone();
        async move {
            let mut env = TestEnv::new(&label).await;
            env.cfg.kafka.topic = topic;
            env.migrate().await;
            env
        }
    };

    let only =
        std::env::var("HG_AGG_SCENARIOS").unwrap_or_else(|_| "clean,kills,pair,outage".into());

    // 1. A clean run.
    if only.contains("clean") {
        let env = scenario_env("clean").await;
        let started = std::time::Instant::now();
        let mut child = env.spawn(&["aggregate"], &aggregator_env());
        wait_all_flushed(&env, n as u64).await;
        eprintln!("clean run: {n} events flushed in {:?}", started.elapsed());
        sigterm(&mut child);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 2. SIGKILLed at random moments, restarted each time.
    if only.contains("kills") {
        let env = scenario_env("kills").await;
        let mut rng = SmallRng::seed_from_u64(7);
        let mut kills = 0;
        let mut seen = 0;
        while kills < 5 {
            let mut child = env.spawn(&["aggregate"], &aggregator_env());
            // Kill at a random moment after this process has made progress.
            wait_until(
                Duration::from_secs(120),
                "progress before a kill",
                || async { flushed_events(&env).await > seen },
            )
            .await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..2_000))).await;
            let before = flushed_events(&env).await;
            seen = before;
            sigkill(&mut child);
            assert!(
                before < n as u64,
                "kill {kills} came after the run had finished"
            );
            kills += 1;
            eprintln!("kill {kills}: {before} events flushed before it");
            common::after_sigkill().await;
        }
        let mut child = env.spawn(&["aggregate"], &aggregator_env());
        wait_all_flushed(&env, n as u64).await;
        sigterm(&mut child);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 3. Two aggregators in one group; one is SIGKILLed mid-run (rebalance),
    // then restarted as its supervisor would.
    if only.contains("pair") {
        let env = scenario_env("pair").await;
        let mut a = env.spawn(&["aggregate"], &aggregator_env());
        let mut b = env.spawn(&["aggregate"], &aggregator_env());
        wait_until(Duration::from_secs(120), "a first flush", || async {
            flushed_events(&env).await > 0
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = flushed_events(&env).await;
        sigkill(&mut a);
        assert!(
            before < n as u64,
            "the kill came after the run had finished"
        );
        eprintln!("pair: killed one of two with {before} events flushed");
        // The survivor takes over once the dead member's session expires.
        common::after_sigkill().await;
        let mid = flushed_events(&env).await;
        eprintln!("pair: {mid} events flushed by the survivor alone; restarting the killed one");
        let mut a = env.spawn(&["aggregate"], &aggregator_env());
        wait_all_flushed(&env, n as u64).await;
        sigterm(&mut a);
        sigterm(&mut b);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 4. ClickHouse stopped for 20 s mid-run: partitions pause, flushes are
    // retried, and the numbers are still exact.
    if only.contains("outage") {
        match common::stack_pid("clickhouse") {
            None => {
                eprintln!("ClickHouse was not started by this stack: skipping the outage scenario")
            }
            Some(pid) => {
                let env = scenario_env("outage").await;
                let mut child = env.spawn(&["aggregate"], &aggregator_env());
                wait_until(Duration::from_secs(120), "a first flush", || async {
                    flushed_events(&env).await > 0
                })
                .await;
                let before = flushed_events(&env).await;
                common::stop_clickhouse(pid);
                eprintln!("outage: ClickHouse stopped with {before} events flushed");
                tokio::time::sleep(Duration::from_secs(20)).await;
                common::stack_up();
                wait_all_flushed(&env, n as u64).await;
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the aggregator kept running through the outage"
                );
                sigterm(&mut child);
                assert_matches_truth(&env, &generated).await;
                env.drop_database().await;
            }
        }
    }

    topic_env.teardown().await;
}
