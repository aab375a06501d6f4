//! End to end: seeded events plus poison records on Kafka → `hourglass load`
//! → exactly one `events` row per event, with the loader SIGKILLed at random
//! moments and with ClickHouse SIGKILLed mid-INSERT; poison records land in
//! the dead-letter topic, and with the answers to INSERTs that landed lost
//! on the way back. Duplicates are counted in a plain MergeTree shadow
//! of `events` (filled by a materialized view), which no merge collapses.
//! `HG_LOAD_EVENTS` (default 400,000), `HG_KILL_SEED` (replays the kills).

use std::time::Duration;

use crate::common::generator;
use crate::common::lost_answers::{LostAnswers, clickhouse_host_port};
use crate::common::scenario::{self, KillPlan};
use crate::common::{TestEnv, sigterm};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;

fn loader_env() -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LOADER__BATCH_ROWS", "50000".into()),
        ("HOURGLASS_CONSUMERS__RETRY_MAX_MS", "2000".into()),
    ];
    env.extend(scenario::fast_group_env());
    env
}

/// Rows written and distinct events, from the shadow: every INSERT into
/// `events` also lands there, and a plain MergeTree never collapses a
/// duplicate (`events` may, whenever it merges; a ClickHouse restart forgets
/// `SYSTEM STOP MERGES`).
async fn loaded(env: &TestEnv) -> (u64, u64) {
    env.clickhouse()
        .query("SELECT count(), uniqExact(event_id) FROM events_shadow")
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap_or((0, 0))
}

async fn wait_all_loaded(env: &TestEnv, n: u64) {
    // Fails once nothing moved for 2 minutes, not after a fixed budget.
    crate::common::wait_for_progress(
        Duration::from_secs(120),
        "rows inserted into `events`",
        n,
        || async { loaded(env).await.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        loaded(env).await,
        (n, n),
        "count() and uniqExact(event_id) of every row inserted into `events`"
    );
}

/// A fresh database with the shadow of `events`.
async fn scenario(label: &str, topic: &str) -> TestEnv {
    let mut env = TestEnv::new(label).await;
    env.cfg.kafka.topic = topic.to_owned();
    env.cfg.kafka.dlq_topic = format!("{topic}.dlq");
    env.migrate().await;
    for ddl in [
        "CREATE TABLE events_shadow (event_id String, kafka_partition UInt16, kafka_offset Int64) \
         ENGINE = MergeTree() ORDER BY (kafka_partition, kafka_offset)",
        "CREATE MATERIALIZED VIEW events_shadow_mv TO events_shadow AS \
         SELECT event_id, kafka_partition, kafka_offset FROM events",
    ] {
        env.clickhouse().query(ddl).execute().await.unwrap();
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_loads_exactly_once_through_kills_and_a_clickhouse_outage() {
    let n = scenario::env_count("HG_LOAD_EVENTS", 400_000);
    let mut plan = KillPlan::new("loader_exactly_once");
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
    let life_span = (started.elapsed() / 2).clamp(Duration::from_secs(5), Duration::from_secs(20));
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

    // 2. SIGKILLed at random moments of its lives (joining the group,
    // reading its progress, batching, inserting), restarted at once.
    let env = scenario("load_kills", &topic).await;
    let mut child = scenario::kill_lives(
        &mut plan,
        5,
        life_span,
        || env.spawn(&["load"], &loader_env()),
        || async { loaded(&env).await.0 },
        n as u64,
    )
    .await;
    wait_all_loaded(&env, n as u64).await;
    sigterm(&mut child);
    env.drop_database().await;

    // 3. ClickHouse SIGKILLed in the middle of an INSERT: the running
    // loader rides the outage out, a second one joins while ClickHouse is
    // down (it waits for its progress); back 10 s later.
    if let Some(pid) = scenario::stack_pid_for("clickhouse", "outage") {
        let env = scenario("load_outage", &topic).await;
        let (mut first, mut second) = scenario::clickhouse_outage(
            &mut plan,
            pid,
            &env.clickhouse(),
            "events",
            // Within the first quarter of a clean run: work must be left.
            life_span / 2,
            || env.spawn(&["load"], &loader_env()),
            || async { loaded(&env).await.0 },
            n as u64,
        )
        .await;
        wait_all_loaded(&env, n as u64).await;
        assert!(
            first.try_wait().unwrap().is_none() && second.try_wait().unwrap().is_none(),
            "both loaders kept running through the outage"
        );
        sigterm(&mut first);
        sigterm(&mut second);
        env.drop_database().await;
    }

    // 4. The answers to three INSERTs lost on the way back (ClickHouse wrote
    // them; the loader sees a broken connection): its progress check must
    // find them landed, or the retry writes them twice.
    let env = scenario("load_lost", &topic).await;
    let proxy = LostAnswers::start(&clickhouse_host_port(&env), "events", 3).await;
    let mut vars = loader_env();
    vars.push(("HOURGLASS_CLICKHOUSE__URL", proxy.url.clone()));
    let mut child = env.spawn(&["load"], &vars);
    wait_all_loaded(&env, n as u64).await;
    sigterm(&mut child);
    assert_eq!(proxy.lost(), 3, "answers lost on the way back");
    env.drop_database().await;

    let _ = hourglass_core::kafka::delete_topics(
        &topic_env.cfg.kafka,
        &[&topic_env.cfg.kafka.dlq_topic],
    )
    .await;
    topic_env.teardown().await;
}
