//! End to end: seeded events on Kafka → `hourglass aggregate` → ClickHouse
//! rollups equal to the generator's ground truth, with and without crashes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::generator;
use common::rollup_truth::{assert_matches_truth, flushed_events, wait_all_flushed};
use common::{TestEnv, sigkill, sigterm, wait_until};
use rand::{Rng, SeedableRng, rngs::SmallRng};

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
