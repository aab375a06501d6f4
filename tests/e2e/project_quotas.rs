//! Two projects on one pipeline, one of them flooding: the flooder is held
//! to its quotas (429 naming the quota, with Retry-After) and to its own key
//! cap in the aggregator (its extra keys in its own `__other__`), while every
//! event of its neighbour is accepted and counted exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clickhouse::Row;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::rollup_truth::wait_all_flushed;
use crate::common::{Ingest, TestEnv};

const BATCH: usize = 100;
const CALM_BATCHES: usize = 20;
const FLOOD_PER_DAY: usize = 2_000;
const FLOOD_KEYS: usize = 4;
const FLOOD_QUOTAS: &str =
    "{events_per_sec=300, events_burst=300, events_per_day=2000, max_keys_per_window=4}";

/// Per (window start, event): events and distinct users.
type Truth = BTreeMap<(u32, String), (u64, BTreeSet<String>)>;

/// A seeded batch of `project`'s events over the 15 minutes from `base`:
/// `names` event names, `users` users.
fn batch(rng: &mut SmallRng, project: &str, base: i64, names: u32, users: u32) -> Vec<Value> {
    (0..BATCH)
        .map(|_| {
            let ts = DateTime::<Utc>::from_timestamp_millis(base + rng.random_range(0..900_000))
                .unwrap();
            json!({
                "event": format!("{project}-{}", rng.random_range(0..names)),
                "user_id": format!("{project}-user-{}", rng.random_range(0..users)),
                "timestamp": ts.to_rfc3339_opts(SecondsFormat::Millis, true),
                "value": rng.random_range(1..1_000),
            })
        })
        .collect()
}

fn add(truth: &mut Truth, events: &[Value]) {
    for e in events {
        let ts = DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let window = u32::try_from(ts.div_euclid(300) * 300).unwrap();
        let t = truth
            .entry((window, e["event"].as_str().unwrap().to_owned()))
            .or_default();
        t.0 += 1;
        t.1.insert(e["user_id"].as_str().unwrap().to_owned());
    }
}

#[derive(Row, Deserialize, Debug)]
struct Counted {
    bucket: u32,
    project_id: String,
    event: String,
    events: u64,
    users: u64,
}

async fn counted(env: &TestEnv, sql: &str) -> Vec<Counted> {
    env.clickhouse().query(sql).fetch_all().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_project_meets_its_quotas_and_its_neighbour_keeps_exact_numbers() {
    let env = TestEnv::new("quotas").await;
    env.migrate().await;
    // One partition: which of the flooder's keys a window admits is then
    // the order of one log, and every admitted key holds all its events.
    env.create_topic(1).await;
    let quotas = [("HOURGLASS_PROJECTS__FLOOD", FLOOD_QUOTAS.to_owned())];
    let mut ingest_env = vec![("HOURGLASS_CONTRACT__MAX_BATCH_EVENTS", BATCH.to_string())];
    ingest_env.extend(quotas.iter().cloned());
    let ingest = Ingest::start_projects(&env, &["calm", "flood"], &ingest_env).await;
    // Three hours back, whole windows: every window closes on event time.
    let base = (Utc::now().timestamp() / 3600 - 3) * 3_600_000;

    // The neighbour sends its batches while the flooder sends as fast as
    // it can, past both of its quotas.
    let calm = {
        let ingest_url = ingest.url.clone();
        let key = Ingest::key_of(&env, "calm");
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(11);
            let mut truth = Truth::new();
            let client = reqwest::Client::new();
            for _ in 0..CALM_BATCHES {
                let events = batch(&mut rng, "calm", base, 8, 60);
                let r = client
                    .post(format!("{ingest_url}/v1/batch"))
                    .basic_auth(&key, Some(""))
                    .json(&json!({"batch": events}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let answer: Value = r.json().await.unwrap();
                assert_eq!(
                    (status, answer["accepted"].as_u64()),
                    (200, Some(BATCH as u64)),
                    "the calm project is never refused: {answer}"
                );
                add(&mut truth, &events);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            truth
        })
    };
    let flood_key = Ingest::key_of(&env, "flood");
    let mut rng = SmallRng::seed_from_u64(12);
    let mut flood_truth = Truth::new();
    let (mut accepted, mut per_sec, mut per_day) = (0, 0, 0);
    for _ in 0..2_000 {
        let events = batch(&mut rng, "flood", base, 40, 200);
        let r = ingest
            .post_as(
                &flood_key,
                "/v1/batch",
                json!({"batch": events}).to_string(),
            )
            .await;
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").cloned();
        let answer: Value = r.json().await.unwrap();
        match status {
            200 => {
                assert_eq!(per_day, 0, "accepted after the day's quota: {answer}");
                assert_eq!(answer["accepted"], BATCH, "{answer}");
                accepted += BATCH;
                add(&mut flood_truth, &events);
            }
            429 => {
                assert_eq!(answer["code"], "quota_exceeded", "{answer}");
                assert!(retry_after.is_some(), "429 without Retry-After: {answer}");
                assert!(
                    answer["message"].as_str().unwrap().contains("\"flood\""),
                    "{answer}"
                );
                match answer["quota"].as_str() {
                    Some("events_per_sec") => per_sec += 1,
                    Some("events_per_day") => per_day += 1,
                    _ => panic!("a 429 naming no quota: {answer}"),
                }
            }
            _ => panic!("flood: {status} {answer}"),
        }
        if per_day >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted, FLOOD_PER_DAY, "the day's quota, exactly");
    assert!(per_sec > 0, "the flooder never met its rate");
    assert_eq!(per_day, 3);
    let calm_truth = calm.await.unwrap();
    let metrics = reqwest::get(format!("{}/metrics", ingest.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let over_day = metrics
        .lines()
        .find(|l| {
            l.starts_with("hourglass_ingest_over_quota_events_total")
                && l.contains("project=\"flood\"")
                && l.contains("quota=\"events_per_day\"")
        })
        .unwrap_or_else(|| panic!("no over-quota metric:\n{metrics}"));
    assert!(over_day.ends_with(" 300"), "{over_day}");

    // The aggregator holds at most 10 keys of a project per window, the
    // flooder 4: its 40 event names cannot push the neighbour's 8 into
    // `__other__` (with one cap per window they did).
    // The batches are dated at random over three windows: an hour's grace
    // keeps every event in its window until the idle partition's watermark
    // moves to the clock.
    let mut agg_env = vec![
        ("HOURGLASS_AGGREGATOR__GRACE_SECS", "3600".to_owned()),
        ("HOURGLASS_AGGREGATOR__MAX_KEYS_PER_WINDOW", "10".to_owned()),
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "3".to_owned()),
        ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "300".to_owned()),
    ];
    agg_env.extend(quotas.iter().cloned());
    let mut aggregator = env.spawn(&["aggregate"], &agg_env);
    wait_all_flushed(&env, (CALM_BATCHES * BATCH + FLOOD_PER_DAY) as u64).await;

    let rows = counted(
        &env,
        "SELECT toUInt32(window_start) AS bucket, project_id, event, sum(events) AS events, \
         uniqExactArray(user_hashes) AS users FROM rollup_5m \
         GROUP BY bucket, project_id, event ORDER BY bucket, project_id, event",
    )
    .await;
    let calm_got: BTreeMap<(u32, String), (u64, u64)> = rows
        .iter()
        .filter(|r| r.project_id == "calm")
        .map(|r| ((r.bucket, r.event.clone()), (r.events, r.users)))
        .collect();
    let calm_want: BTreeMap<(u32, String), (u64, u64)> = calm_truth
        .iter()
        .map(|(k, (events, users))| (k.clone(), (*events, users.len() as u64)))
        .collect();
    assert_eq!(calm_got, calm_want, "the calm project's 5-minute numbers");

    // The hourly serving view agrees for the neighbour.
    let hourly = counted(
        &env,
        "SELECT toUInt32(window_start) AS bucket, project_id, event, events, users \
         FROM metrics_1h WHERE project_id = 'calm' ORDER BY bucket, event",
    )
    .await;
    let mut hourly_want: BTreeMap<(u32, String), (u64, BTreeSet<String>)> = BTreeMap::new();
    for ((w, e), (events, users)) in &calm_truth {
        let h = hourly_want.entry((w / 3600 * 3600, e.clone())).or_default();
        h.0 += events;
        h.1.extend(users.iter().cloned());
    }
    let hourly_got: BTreeMap<(u32, String), (u64, u64)> = hourly
        .iter()
        .map(|r| ((r.bucket, r.event.clone()), (r.events, r.users)))
        .collect();
    let hourly_want: BTreeMap<(u32, String), (u64, u64)> = hourly_want
        .into_iter()
        .map(|(k, (events, users))| (k, (events, users.len() as u64)))
        .collect();
    assert_eq!(hourly_got, hourly_want, "the calm project's hourly numbers");

    // The flooder: per window, 4 named keys, each with all of its events,
    // and the rest in its own `__other__`.
    let mut flood_windows: BTreeMap<u32, u64> = BTreeMap::new();
    for ((w, _), (events, _)) in &flood_truth {
        *flood_windows.entry(*w).or_default() += events;
    }
    let mut flood_total = 0;
    for (w, total) in &flood_windows {
        let in_window: Vec<&Counted> = rows
            .iter()
            .filter(|r| r.project_id == "flood" && r.bucket == *w)
            .collect();
        let named: Vec<&&Counted> = in_window
            .iter()
            .filter(|r| r.event != "__other__")
            .collect();
        assert_eq!(named.len(), FLOOD_KEYS, "window {w}: {in_window:?}");
        for r in &named {
            let (events, users) = &flood_truth[&(*w, r.event.clone())];
            assert_eq!(
                (r.events, r.users),
                (*events, users.len() as u64),
                "window {w}, {}",
                r.event
            );
        }
        let other: u64 = in_window
            .iter()
            .filter(|r| r.event == "__other__")
            .map(|r| r.events)
            .sum();
        let named_events: u64 = named.iter().map(|r| r.events).sum();
        assert!(other > 0, "window {w}: nothing in __other__");
        assert_eq!(named_events + other, *total, "window {w}");
        flood_total += total;
    }
    assert_eq!(flood_total, FLOOD_PER_DAY as u64);
    assert!(
        !rows
            .iter()
            .any(|r| r.project_id == "flood" && !flood_windows.contains_key(&r.bucket)),
        "flood rows outside its windows: {rows:?}"
    );
    crate::common::sigterm(&mut aggregator);
    env.teardown().await;
}
