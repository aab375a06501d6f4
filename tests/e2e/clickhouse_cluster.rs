//! The aggregator and the loader on a ClickHouse cluster: the local stack's
//! cluster profile (`hourglass stack up --cluster`, which the test command
//! runs: ZooKeeper and 2 shards × 2 replicas of ClickHouse 18.16), in
//! cluster mode (Replicated tables behind Distributed ones, inserts with a
//! quorum of 2, sequentially consistent reads; docs/clickhouse-cluster.md).
//!
//! Seeded events on a 4-partition topic (partitions 0 and 2 on shard 1, 1
//! and 3 on shard 2) are loaded and aggregated while (1) a replica of shard
//! 1 is SIGKILLed mid-run and brought back, and (2) a replica of shard 2 is
//! SIGKILLed and both consumers are SIGKILLed and restarted while it is
//! down. Then the rollups and every serving view equal the generator's
//! truth, `events` holds each event once, and each shard's two replicas
//! hold the same rows. A batch pass then recomputes every hour on the
//! cluster, the views (now from the batch layer) still equal the truth, and
//! the query API answers from it.

use std::time::Duration;

use crate::common::generator;
use crate::common::rollup_truth::{assert_matches_truth, flushed_events, wait_all_flushed};
use crate::common::{TestEnv, sigkill, sigterm, wait_until};

const CLUSTER_URL: &str = "http://127.0.0.1:18201";

fn event_count() -> usize {
    crate::common::scenario::env_count("HG_CLUSTER_EVENTS", 300_000)
}

fn components_env() -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "300".into()),
        ("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#.into()),
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LOADER__BATCH_ROWS", "20000".into()),
        ("HOURGLASS_CONSUMERS__RETRY_MAX_MS", "2000".into()),
    ];
    vars.extend(crate::common::scenario::fast_group_env());
    vars
}

/// The PID of cluster server `n`, which this stack must have started: a
/// server it cannot kill is a failure, not a skipped scenario.
fn replica_pid(n: u16) -> i32 {
    crate::common::stack_pid(&format!("cluster/ch{n}")).unwrap_or_else(|| {
        panic!(
            "cluster server ch{n} was not started by this stack: run `hourglass stack up --cluster`"
        )
    })
}

fn kill_replica(n: u16) {
    crate::common::scenario::kill_server(replica_pid(n));
}

async fn loaded(env: &TestEnv) -> u64 {
    env.clickhouse()
        .query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

/// `SELECT count()` of `table` on one server only.
async fn count_on(node: u16, env: &TestEnv, table: &str) -> u64 {
    let mut cfg = env.cfg.clickhouse.clone();
    cfg.url = format!("http://127.0.0.1:{}", 18200 + node);
    hourglass_core::clickhouse::client(&cfg)
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("count {table} on ch{node}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_replica_kills_and_failovers() {
    let n = event_count();
    let mut env = TestEnv::new("cluster").await;
    env.cfg.clickhouse.url = CLUSTER_URL.into();
    env.cfg.clickhouse.cluster = "hourglass".into();
    let answers = reqwest::get(format!("{CLUSTER_URL}/?query=SELECT%201"))
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(
        answers,
        "the cluster profile does not answer at {CLUSTER_URL}: run `hourglass stack up --cluster` (scripts/test does)"
    );
    env.migrate().await;
    env.create_topic(4).await;
    let generated = generator::generate(21, n, 13, 2_000);
    generator::produce(&env.cfg.kafka, &generated.events).await;
    eprintln!("produced {n} events on 4 partitions");

    let extra = components_env();
    let mut aggregator = env.spawn(&["aggregate"], &extra);
    let mut loader = env.spawn(&["load"], &extra);
    wait_until(
        Duration::from_secs(120),
        "first flushes and loads",
        || async { flushed_events(&env).await > 0 && loaded(&env).await > 0 },
    )
    .await;

    // 1. A replica of shard 1 SIGKILLed mid-run; writes to shard 1 wait for
    // their quorum, reads go to the other replica; it comes back 10 s later.
    let (flushed, rows) = (flushed_events(&env).await, loaded(&env).await);
    kill_replica(2);
    eprintln!("ch2 (shard 1) SIGKILLed with {flushed} events flushed and {rows} rows loaded");
    assert!(
        flushed < n as u64 && rows < n as u64,
        "the kill came after the run had finished"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        aggregator.try_wait().unwrap().is_none() && loader.try_wait().unwrap().is_none(),
        "the consumers ride out a replica's death"
    );
    crate::common::stack_up();
    eprintln!(
        "ch2 back: {} events flushed, {} rows loaded",
        flushed_events(&env).await,
        loaded(&env).await
    );

    // 2. A replica of shard 2 SIGKILLed, then both consumers SIGKILLed and
    // started again while it is down: they read their checkpoints from the
    // surviving replicas, which have every acknowledged insert.
    let (flushed, rows) = (flushed_events(&env).await, loaded(&env).await);
    kill_replica(4);
    sigkill(&mut aggregator);
    sigkill(&mut loader);
    eprintln!(
        "ch4 (shard 2) and both consumers SIGKILLed with {flushed} events flushed and {rows} rows loaded"
    );
    // Replacements start at once; the watchdog rejoins one the group left
    // without partitions while the dead members' sessions run out.
    let mut aggregator = env.spawn(&["aggregate"], &extra);
    let mut loader = env.spawn(&["load"], &extra);
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!(
        "restarted with ch4 down: {} events flushed, {} rows loaded",
        flushed_events(&env).await,
        loaded(&env).await
    );
    crate::common::stack_up();

    wait_all_flushed(&env, n as u64).await;
    wait_until(Duration::from_secs(600), "every event loaded", || async {
        loaded(&env).await >= n as u64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigterm(&mut aggregator);
    sigterm(&mut loader);

    assert_matches_truth(&env, &generated).await;
    let (rows, ids): (u64, u64) = env
        .clickhouse()
        .query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, ids),
        (n as u64, n as u64),
        "events holds each event once"
    );

    // Each shard's replicas hold the same rows; the shards together hold
    // each row once.
    wait_until(Duration::from_secs(60), "replicas in step", || async {
        count_on(1, &env, "events_local").await == count_on(2, &env, "events_local").await
            && count_on(3, &env, "events_local").await == count_on(4, &env, "events_local").await
    })
    .await;
    for table in ["events_local", "rollup_5m_local"] {
        let counts = [
            count_on(1, &env, table).await,
            count_on(2, &env, table).await,
            count_on(3, &env, table).await,
            count_on(4, &env, table).await,
        ];
        eprintln!("{table} rows on ch1..ch4: {counts:?}");
        assert!(
            counts.iter().all(|c| *c > 0),
            "{table}: rows on every shard"
        );
        assert_eq!(
            (counts[0], counts[2]),
            (counts[1], counts[3]),
            "{table}: replicas of a shard hold the same rows"
        );
    }
    assert_eq!(
        count_on(1, &env, "events_local").await + count_on(3, &env, "events_local").await,
        n as u64,
        "the shards together hold each event once"
    );

    // 3. The batch layer on the cluster: one pass recomputes every hour from
    // `events` (read through the Distributed table) into the tables every
    // server holds; the views, now answering from it, still equal the truth.
    env.cfg.batch.switch_delay_secs = 0;
    let pass = hourglass_batch::run_once(
        &env.cfg,
        hourglass_batch::Range {
            from: None,
            to: None,
            force: false,
        },
    )
    .await
    .expect("a batch pass on the cluster");
    eprintln!(
        "batch pass: {} hours, {} days, {} events",
        pass.hours.len(),
        pass.days.len(),
        pass.events
    );
    assert_eq!(pass.events, n as u64, "the pass read every event once");
    let hours: std::collections::BTreeSet<i64> = generated
        .truth
        .keys()
        .map(|(w, _, _)| w.div_euclid(3_600_000) * 3600)
        .collect();
    assert_eq!(pass.hours, hours.iter().copied().collect::<Vec<_>>());
    for node in 1..=4 {
        let commits = count_on(node, &env, "batch_commits").await;
        assert!(commits >= hours.len() as u64, "ch{node}: {commits} commits");
    }
    assert_matches_truth(&env, &generated).await;

    // 4. The query API on the cluster answers from the batch layer.
    let page_views: u64 = generated
        .truth
        .iter()
        .filter(|((_, e, _), _)| e == "page_view")
        .map(|(_, t)| t.events)
        .sum();
    let (from, to) = (hours.first().unwrap(), hours.last().unwrap() + 3600);
    let answer = query_metrics(
        &env,
        &format!("event=page_view&step=1h&from={from}&to={to}"),
    )
    .await;
    let points = answer["series"][0]["points"].as_array().expect("points");
    let served: u64 = points.iter().map(|p| p["events"].as_u64().unwrap()).sum();
    assert_eq!(served, page_views, "/v1/metrics on the cluster: {answer}");
    assert!(points.iter().all(|p| p["layer"] == "batch"), "{answer}");
    env.drop_database().await;
}

/// `GET /v1/metrics?query` from a query API started in-process against the cluster.
async fn query_metrics(env: &TestEnv, query: &str) -> serde_json::Value {
    const SECRET: &str = "cluster-check-secret-0123456789abcdef";
    let mut cfg = env.cfg.clone();
    cfg.query.jwt_secret = SECRET.into();
    cfg.query.allow_project_wide_tokens = true;
    let (base, stop) = crate::common::start_query_api(cfg).await;
    let claims = serde_json::json!({"project_id": "proj", "sub": "t", "exp": chrono::Utc::now().timestamp() + 600});
    let token = crate::common::hs256_token(SECRET, &claims);
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/metrics?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    stop.cancel();
    assert!(status.is_success(), "/v1/metrics?{query}: {status} {body}");
    body
}
