//! End to end: seeded events plus poison records on Kafka → `hourglass load`
//! → exactly one `events` row per event, with the loader SIGKILLed and with
//! ClickHouse stopped mid-run; poison records land in the dead-letter topic.

mod common;

use std::time::Duration;

use common::generator;
use common::{TestEnv, sigkill, sigterm, wait_until};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;

fn event_count() -> usize {
    std::env::var("HG_LOAD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn loader_env() -> Vec<(&'static str, String)> {
    vec![
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LOADER__BATCH_ROWS", "50000".into()),
        ("HOURGLASS_LOADER__MAX_BACKOFF_MS", "2000".into()),
    ]
}

async fn loaded(env: &TestEnv) -> (u64, u64) {
    env.clickhouse()
        .query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap_or((0, 0))
}

async fn wait_all_loaded(env: &TestEnv, n: u64) {
    wait_until(
        Duration::from_secs(900),
        "every event in `events`",
        || async { loaded(env).await.0 >= n },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        loaded(env).await,
        (n, n),
        "count() and uniqExact(event_id) of `events`"
    );
}

/// A fresh database whose `events` never merges, so a duplicate row stays
/// visible to count() instead of being collapsed by the table engine.
async fn scenario(label: &str, topic: &str) -> TestEnv {
    let mut env = TestEnv::new(label).await;
    env.cfg.kafka.topic = topic.to_owned();
    env.cfg.kafka.dlq_topic = format!("{topic}.dlq");
    env.migrate().await;
    env.clickhouse()
        .query("SYSTEM STOP MERGES events")
        .execute()
        .await
        .unwrap();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_loads_exactly_once_through_kills_and_a_clickhouse_outage() {
    let n = event_count();
    let topic_env = TestEnv::new("load").await;
    topic_env.create_topic(8).await;
    hourglass_core::kafka::ensure_topics(
        &topic_env.cfg.kafka,
        &[(topic_env.cfg.kafka.dlq_topic.as_str(), 1)],
    )
    .await
    .unwrap();
    let generated = generator::generate(11, n, 13, 5_000);
    let (first, rest) = generated.events.split_at(n / 2);
    generator::produce(&topic_env.cfg.kafka, first).await;
    // Two poison records in the middle of the stream.
    {
        let producer = hourglass_core::kafka::producer(&topic_env.cfg.kafka).unwrap();
        for (key, payload) in [
            ("proj:poison-1", &b"{not json"[..]),
            ("proj:poison-2", &b"{\"event\":42}"[..]),
        ] {
            producer
                .send(
                    FutureRecord::to(&topic_env.cfg.kafka.topic)
                        .key(key)
                        .payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    generator::produce(&topic_env.cfg.kafka, rest).await;
    let topic = topic_env.cfg.kafka.topic.clone();

    // 1. A clean run; the poison records are dead-lettered with their reason.
    let env = scenario("load_clean", &topic).await;
    let started = std::time::Instant::now();
    let mut child = env.spawn(&["load"], &loader_env());
    wait_all_loaded(&env, n as u64).await;
    eprintln!("clean run: {n} rows in {:?}", started.elapsed());
    sigterm(&mut child);
    env.drop_database().await;

    // Scoped: a consumer left unpolled past max.poll.interval.ms is evicted,
    // and librdkafka's rebalance then runs on a client nobody serves.
    {
        let dlq: BaseConsumer = hourglass_core::kafka::consumer_config(
            &topic_env.cfg.kafka,
            &format!("{}-dlq", topic_env.name),
        )
        .create()
        .unwrap();
        dlq.subscribe(&[&topic_env.cfg.kafka.dlq_topic]).unwrap();
        let mut dead = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while dead.len() < 2 && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
                let reason = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "hourglass-reason"))
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    .unwrap_or_default();
                dead.push((m.payload().unwrap_or_default().to_vec(), reason));
            }
        }
        assert_eq!(
            dead.len(),
            2,
            "both poison records are in the dead-letter topic"
        );
        dead.sort();
        assert_eq!(dead[0].0, br#"{"event":42}"#, "original bytes kept");
        assert!(dead[0].1.contains("invalid type"), "reason: {}", dead[0].1);
        assert_eq!(dead[1].0, b"{not json", "original bytes kept");
        assert!(
            dead[1].1.contains("not a valid event envelope"),
            "reason: {}",
            dead[1].1
        );
    }

    // 2. SIGKILLed at random moments, restarted each time.
    let env = scenario("load_kills", &topic).await;
    let mut rng = SmallRng::seed_from_u64(5);
    let mut seen = 0;
    for kill in 1..=5 {
        let mut child = env.spawn(&["load"], &loader_env());
        wait_until(
            Duration::from_secs(120),
            "progress before a kill",
            || async { loaded(&env).await.0 > seen },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_500))).await;
        sigkill(&mut child);
        seen = loaded(&env).await.0;
        assert!(
            seen < n as u64,
            "kill {kill} came after the run had finished"
        );
        eprintln!("kill {kill}: {seen} rows loaded before it");
        common::after_sigkill().await;
    }
    let mut child = env.spawn(&["load"], &loader_env());
    wait_all_loaded(&env, n as u64).await;
    sigterm(&mut child);
    env.drop_database().await;

    // 3. ClickHouse stopped for 30 s mid-run; the loader recovers by itself.
    match common::stack_pid("clickhouse") {
        None => eprintln!("ClickHouse was not started by this stack: skipping the outage scenario"),
        Some(pid) => {
            let env = scenario("load_outage", &topic).await;
            let mut child = env.spawn(&["load"], &loader_env());
            wait_until(
                Duration::from_secs(120),
                "some rows before the outage",
                || async { loaded(&env).await.0 > 0 },
            )
            .await;
            let before = loaded(&env).await.0;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            eprintln!("outage: ClickHouse stopped with {before} rows loaded");
            tokio::time::sleep(Duration::from_secs(30)).await;
            common::stack_up();
            wait_all_loaded(&env, n as u64).await;
            assert!(
                child.try_wait().unwrap().is_none(),
                "the loader kept running through the outage"
            );
            sigterm(&mut child);
            env.drop_database().await;
        }
    }

    let _ = hourglass_core::kafka::delete_topics(
        &topic_env.cfg.kafka,
        &[&topic_env.cfg.kafka.dlq_topic],
    )
    .await;
    topic_env.teardown().await;
}
