//! End to end: seeded events on Kafka → `hourglass aggregate` → ClickHouse
//! rollups equal to the generator's ground truth, with and without crashes.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::generator;
use crate::common::lost_answers::{LostAnswers, clickhouse_host_port};
use crate::common::rollup_truth::{assert_matches_truth, flushed_events, wait_all_flushed};
use crate::common::scenario::{self, KillPlan};
use crate::common::{TestEnv, sigterm};

const SCENARIOS: [&str; 5] = ["clean", "kills", "pair", "outage", "lost"];

fn aggregator_env() -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "300".into()),
        ("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#.into()),
        ("HOURGLASS_CONSUMERS__RETRY_MAX_MS", "2000".into()),
    ];
    env.extend(scenario::fast_group_env());
    env
}

/// One topic, produced once; each scenario gets its own database and group.
/// `HG_AGG_EVENTS` (default 400,000), `HG_AGG_SCENARIOS` (default all of
/// clean, kills, pair, outage, lost) and `HG_KILL_SEED` (replays a run's kills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_are_exact_with_and_without_crashes() {
    let n = scenario::env_count("HG_AGG_EVENTS", 400_000);
    let only = scenario::env_scenarios("HG_AGG_SCENARIOS", &SCENARIOS);
    let mut plan = KillPlan::new("aggregator_exactly_once");
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
    // How long one life of an aggregator lasts before its kill, at most:
    // half a clean run, so several kills land before the work is done.
    let mut life_span = Duration::from_secs(15);

    // 1. A clean run.
    if only.iter().any(|s| s == "clean") {
        let env = scenario_env("clean").await;
        let started = std::time::Instant::now();
        let mut child = env.spawn(&["aggregate"], &aggregator_env());
        wait_all_flushed(&env, n as u64).await;
        eprintln!("clean run: {n} events flushed in {:?}", started.elapsed());
        life_span = (started.elapsed() / 2).clamp(Duration::from_secs(5), Duration::from_secs(20));
        sigterm(&mut child);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 2. SIGKILLed at random moments of its lives (joining the group,
    // reading checkpoints, reading, inserting), restarted at once each time.
    if only.iter().any(|s| s == "kills") {
        let env = scenario_env("kills").await;
        let mut child = scenario::kill_lives(
            &mut plan,
            5,
            life_span,
            || env.spawn(&["aggregate"], &aggregator_env()),
            || flushed_events(&env),
            n as u64,
        )
        .await;
        wait_all_flushed(&env, n as u64).await;
        sigterm(&mut child);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 3. Two aggregators in one group; one is SIGKILLed at a random moment
    // (the survivor takes its partitions over) and restarted at once.
    if only.iter().any(|s| s == "pair") {
        let env = scenario_env("pair").await;
        let mut b = env.spawn(&["aggregate"], &aggregator_env());
        // Two members read twice as fast: shorter lives.
        let mut a = scenario::kill_lives(
            &mut plan,
            2,
            life_span / 3,
            || env.spawn(&["aggregate"], &aggregator_env()),
            || flushed_events(&env),
            n as u64,
        )
        .await;
        wait_all_flushed(&env, n as u64).await;
        sigterm(&mut a);
        sigterm(&mut b);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 4. ClickHouse SIGKILLed in the middle of a flush's INSERT: the
    // running aggregator rides the outage out, a second one joins while
    // ClickHouse is down (it waits for its checkpoints); back 10 s later.
    if only.iter().any(|s| s == "outage")
        && let Some(pid) = scenario::stack_pid_for("clickhouse", "outage")
    {
        let env = scenario_env("outage").await;
        let (mut first, mut second) = scenario::clickhouse_outage(
            &mut plan,
            pid,
            &env.clickhouse(),
            "rollup_5m",
            // Within the first quarter of a clean run: work must be left.
            life_span / 2,
            || env.spawn(&["aggregate"], &aggregator_env()),
            || flushed_events(&env),
            n as u64,
        )
        .await;
        wait_all_flushed(&env, n as u64).await;
        assert!(
            first.try_wait().unwrap().is_none() && second.try_wait().unwrap().is_none(),
            "both aggregators kept running through the outage"
        );
        sigterm(&mut first);
        sigterm(&mut second);
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    // 5. The answers to three flushes' INSERTs lost on the way back
    // (ClickHouse wrote them; the aggregator sees a broken connection): its
    // landed check must find them, or the retry writes the windows twice.
    if only.iter().any(|s| s == "lost") {
        let env = scenario_env("lost").await;
        let proxy = LostAnswers::start(&clickhouse_host_port(&env), "rollup_5m", 3).await;
        let mut vars = aggregator_env();
        vars.push(("HOURGLASS_CLICKHOUSE__URL", proxy.url.clone()));
        let mut child = env.spawn(&["aggregate"], &vars);
        wait_all_flushed(&env, n as u64).await;
        sigterm(&mut child);
        assert_eq!(proxy.lost(), 3, "answers lost on the way back");
        assert_matches_truth(&env, &generated).await;
        env.drop_database().await;
    }

    topic_env.teardown().await;
}
