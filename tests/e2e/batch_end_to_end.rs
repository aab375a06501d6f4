//! The lambda architecture end to end, through ingest: a seeded stream with
//! duplicates (resent requests, and a lost answer the official Segment SDK
//! retries), events later than the grace (minutes to days), a 20-day-old
//! `/v1/import` and one user deletion. Before the batch pass the speed layer
//! is off from the truth by exactly the late events and duplicates; after
//! it, the serving views and `/v1/metrics` equal the truth, and `reconcile`
//! reports exactly what was injected. Batch passes SIGKILLed at random
//! moments never show a reader a missing or doubled hour or day.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{Ingest, TestEnv, hourglass_bin, wait_until};
use chrono::{DateTime, SecondsFormat, Utc};
use clickhouse::Row;
use hourglass_core::histogram::VALUE_SCALE;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

const PROJECT: &str = "shop";
const SECRET: &str = "batch-e2e-secret";
const DAY: i64 = 86_400;
const EVENTS: [&str; 3] = ["page_view", "purchase", "signup"];

/// One event as the generator made it (its copies share all of it).
#[derive(Debug, Clone)]
struct Event {
    id: Uuid,
    user: String,
    anonymous: bool,
    event: &'static str,
    value: Option<f64>,
    ts_ms: i64,
}

impl Event {
    fn native(&self) -> Value {
        let t = DateTime::<Utc>::from_timestamp_millis(self.ts_ms)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut v = json!({"event": self.event, "event_id": self.id, "timestamp": t,
                           "properties": {"path": "/p"}});
        let who = if self.anonymous {
            "anonymous_id"
        } else {
            "user_id"
        };
        v[who] = json!(self.user);
        if let Some(x) = self.value {
            v["value"] = json!(x);
        }
        v
    }
}

/// Every record the topic will hold, by kind.
#[derive(Default)]
struct Plan {
    /// Requests to `/v1/batch`, in order: (event, on time for the speed layer).
    stream: Vec<Vec<(Event, bool)>>,
    /// Sent through the SDK behind a proxy that loses answers (on time).
    sdk: Vec<Event>,
    /// `/v1/import` of events 20 days old (late).
    import: Vec<Event>,
}

fn plan(seed: u64, stream_start: i64, import_start: i64) -> Plan {
    let mut rng = SmallRng::seed_from_u64(seed);
    let new_event = |rng: &mut SmallRng, ts_ms: i64| {
        let n = rng.random_range(0..400);
        let event = match rng.random_range(0..100) {
            0..60 => "page_view",
            60..85 => "purchase",
            _ => "signup",
        };
        Event {
            id: Uuid::from_u128(rng.random()),
            user: format!("user-{n}"),
            anonymous: n % 10 == 0,
            event,
            value: (event == "purchase")
                .then(|| f64::from(rng.random_range(50..500_000u32)) / 100.0),
            ts_ms,
        }
    };
    let mut plan = Plan::default();
    let n = 10_000;
    let span_ms = 2 * 3_600_000;
    let mut request = Vec::new();
    for i in 0..n {
        // In time order with up to 20 s of disorder, inside the 60 s grace.
        let nominal = stream_start * 1000 + (i as i64 * span_ms) / n as i64;
        let ts = (nominal - rng.random_range(0..20_000)).max(stream_start * 1000);
        let e = new_event(&mut rng, ts);
        request.push((e.clone(), true));
        if rng.random_bool(0.02) {
            // Sent again within the grace: the speed layer counts it twice.
            request.push((e, true));
        }
        // Late by 10 minutes to 3 days, once every partition has a watermark.
        if i > n / 20 && rng.random_bool(0.03) {
            let behind = if rng.random_bool(0.5) {
                rng.random_range(600_000..5_400_000)
            } else {
                rng.random_range(DAY * 1000..3 * DAY * 1000)
            };
            request.push((new_event(&mut rng, nominal - behind), false));
        }
        if request.len() >= 200 {
            plan.stream.push(std::mem::take(&mut request));
        }
    }
    plan.stream.push(request);
    // The SDK's events: after the stream, inside one window, away from its edges.
    let sdk_start = (stream_start + 2 * 3600 + 30) * 1000;
    plan.sdk = (0..150)
        .map(|i| {
            let mut e = new_event(&mut rng, sdk_start + i * 400);
            e.anonymous = false;
            e
        })
        .collect();
    plan.import = (0..200)
        .map(|_| {
            let ts = (import_start + rng.random_range(0..3600)) * 1000;
            new_event(&mut rng, ts)
        })
        .collect();
    plan
}

/// Per (bucket, event): the events, the distinct users, the values.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    events: u64,
    users: BTreeSet<String>,
    values: Vec<f64>,
}

type Tallies = BTreeMap<(i64, String), Tally>;

fn tally<'a>(events: impl Iterator<Item = &'a Event>, period: i64) -> Tallies {
    let mut out = Tallies::new();
    for e in events {
        let secs = e.ts_ms.div_euclid(1000);
        let t = out
            .entry((secs - secs.rem_euclid(period), e.event.to_owned()))
            .or_default();
        t.events += 1;
        t.users.insert(e.user.clone());
        t.values.extend(e.value);
    }
    out
}

/// The truth's percentile, from the `hdrhistogram` crate fed the raw values.
fn true_quantile(values: &[f64], q: f64, cfg: &hourglass_core::Config) -> f64 {
    let a = &cfg.aggregator;
    let max_scaled = (a.histogram_max_value * VALUE_SCALE) as u64;
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, max_scaled, a.histogram_sigfig).unwrap();
    for v in values {
        let scaled = (v * VALUE_SCALE).round().clamp(0.0, max_scaled as f64) as u64;
        h.saturating_record(scaled);
    }
    h.value_at_quantile(q) as f64 / VALUE_SCALE
}

#[derive(Debug, Row, Deserialize)]
struct Served {
    bucket: u32,
    event: String,
    events: u64,
    users: u64,
    p50: f64,
    p95: f64,
    p99: f64,
    layer: String,
}

async fn served(ch: &clickhouse::Client, view: &str) -> Vec<Served> {
    ch.query(&format!(
        "SELECT toUInt32(window_start) AS bucket, toString(event) AS event, events, users, p50, p95, p99, layer \
         FROM {view} WHERE project_id = ? ORDER BY bucket, event"
    ))
    .bind(PROJECT)
    .fetch_all()
    .await
    .unwrap()
}

fn assert_served(
    got: &[Served],
    want: &Tallies,
    layer: &str,
    cfg: &hourglass_core::Config,
    what: &str,
) {
    let keys: Vec<(i64, String)> = got
        .iter()
        .map(|s| (i64::from(s.bucket), s.event.clone()))
        .collect();
    assert_eq!(
        keys,
        want.keys().cloned().collect::<Vec<_>>(),
        "{what}: buckets"
    );
    for (s, (key, t)) in got.iter().zip(want) {
        assert_eq!(s.layer, layer, "{what} {key:?}");
        assert_eq!(
            (s.events, s.users),
            (t.events, t.users.len() as u64),
            "{what} {key:?}: events, users"
        );
        if !t.values.is_empty() {
            for (q, p) in [(0.5, s.p50), (0.95, s.p95), (0.99, s.p99)] {
                assert_eq!(
                    p,
                    true_quantile(&t.values, q, cfg),
                    "{what} {key:?}: p{}",
                    q * 100.0
                );
            }
        }
    }
}

/// Each serving view gives the batch layer's truth.
async fn every_level_serves_the_truth(
    ch: &clickhouse::Client,
    truth: &[&Event],
    cfg: &hourglass_core::Config,
) {
    for (view, period) in [
        ("metrics_5m", 300),
        ("metrics_1h", 3600),
        ("metrics_1d", DAY),
    ] {
        assert_served(
            &served(ch, view).await,
            &tally(truth.iter().copied(), period),
            "batch",
            cfg,
            view,
        );
    }
}

/// Run the `hourglass` binary to completion.
fn hourglass(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let out = Command::new(hourglass_bin())
        .args(args)
        .envs(env.child_env())
        .envs(batch_env())
        .output()
        .expect("run hourglass");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A killed batch leaves its lease row behind; the next run takes over once
/// it lapses, so keep it short here.
fn batch_env() -> [(&'static str, String); 2] {
    [
        ("HOURGLASS_BATCH__LEASE_SECS", "5".into()),
        ("HOURGLASS_BATCH__HTTP_LISTEN", "127.0.0.1:0".into()),
    ]
}

/// What a reader may see for one bucket while passes run and die: the speed
/// layer's number or the truth, never nothing (when the speed layer had
/// something) and never both.
struct Allowed {
    view: &'static str,
    buckets: BTreeMap<i64, (u64, u64)>,
}

/// Poll the hourly and daily views until `stop`; every reading outside
/// `allowed`, described.
async fn watch(
    ch: clickhouse::Client,
    allowed: Vec<Allowed>,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>) {
    let (mut reads, mut wrong) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        for a in &allowed {
            let got: Vec<(u32, u64)> = ch
                .query(&format!(
                    "SELECT toUInt32(window_start), toUInt64(sum(events)) FROM {} \
                     WHERE project_id = ? GROUP BY window_start",
                    a.view
                ))
                .bind(PROJECT)
                .fetch_all()
                .await
                .unwrap();
            let got: BTreeMap<i64, u64> = got.into_iter().map(|(t, n)| (i64::from(t), n)).collect();
            for (t, (speed, truth)) in &a.buckets {
                let n = got.get(t).copied().unwrap_or(0);
                if n != *speed && n != *truth && wrong.len() < 20 {
                    wrong.push(format!(
                        "{} {}: read {n}, speed {speed}, truth {truth}",
                        a.view,
                        hourglass_batch::plan::show(*t)
                    ));
                }
            }
            for t in got.keys().filter(|t| !a.buckets.contains_key(t)) {
                wrong.push(format!("{} {t}: a bucket that should not exist", a.view));
            }
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (reads, wrong)
}

fn rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_batch_layer_replaces_speed_numbers_with_the_truth() {
    let env = TestEnv::new("batch_e2e").await;
    env.migrate().await;
    env.create_topic(4).await;
    let ch = env.clickhouse();
    let today = Utc::now().timestamp() / DAY * DAY;
    // Two days back: every hour and the day itself are long settled.
    let stream_start = today - 2 * DAY + 10 * 3600;
    let import_start = today - 20 * DAY + 9 * 3600;
    let plan = plan(2026, stream_start, import_start);

    // 1. Everything into the topic before the speed layer reads any of it, so
    // its watermarks follow event time and not the wall clock.
    let ingest = Ingest::start(&env, PROJECT, &[]).await;
    for request in &plan.stream {
        let body = json!({"batch": request.iter().map(|(e, _)| e.native()).collect::<Vec<_>>()});
        let r = ingest.post("/v1/batch", body.to_string()).await;
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let sdk_file = std::env::temp_dir().join(format!("{}-sdk.json", env.name));
    let sdk_events: Vec<Value> = plan
        .sdk
        .iter()
        .map(|e| {
            json!({"user": e.user, "event": e.event, "value": e.value, "message_id": e.id,
                   "timestamp": DateTime::<Utc>::from_timestamp_millis(e.ts_ms).unwrap().to_rfc3339()})
        })
        .collect();
    std::fs::write(&sdk_file, serde_json::to_vec(&sdk_events).unwrap()).unwrap();
    let python = crate::common::python();
    let out = Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/segment_retry.py"),
            &ingest.url,
            &ingest.key,
            &sdk_file.display().to_string(),
            "1",
        ])
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e} (scripts/test installs the Segment SDK)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sdk["errors"], json!([]), "{sdk}");
    assert_eq!(sdk["lost"], 1, "{sdk}");
    let lost_ids: BTreeSet<Uuid> = sdk["lost_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!lost_ids.is_empty(), "{sdk}");

    // 2. The speed layer and the loader read it all; then the import, which
    // arrives after every window of its time has closed.
    let mut aggregator = env.spawn(
        &["aggregate"],
        &[
            ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "3".into()),
            ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "300".into()),
        ],
    );
    let mut loader = env.spawn(
        &["load"],
        &[("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into())],
    );
    // Records per kind, with what the speed layer counts.
    let mut records: Vec<(&Event, bool)> = plan
        .stream
        .iter()
        .flatten()
        .map(|(e, on_time)| (e, *on_time))
        .collect();
    records.extend(plan.sdk.iter().map(|e| (e, true)));
    records.extend(
        plan.sdk
            .iter()
            .filter(|e| lost_ids.contains(&e.id))
            .map(|e| (e, true)),
    );
    let on_time_copies = records.iter().filter(|r| r.1).count() as u64;
    let speed_wait = || async {
        let n: u64 = ch
            .query("SELECT toUInt64(sum(events)) FROM rollup_5m")
            .fetch_one()
            .await
            .unwrap_or(0);
        n >= on_time_copies
    };
    wait_until(
        Duration::from_secs(300),
        "the speed layer to count the stream",
        speed_wait,
    )
    .await;
    let body = json!({"batch": plan.import.iter().map(Event::native).collect::<Vec<_>>()});
    let r = ingest.post("/v1/import", body.to_string()).await;
    assert_eq!(r.status().as_u16(), 200);
    records.extend(plan.import.iter().map(|e| (e, false)));
    let copies = records.len() as u64;
    let late_copies = records.iter().filter(|r| !r.1).count() as u64;
    wait_until(
        Duration::from_secs(300),
        "every record loaded and every late one recorded",
        || async {
            let loaded: u64 = ch
                .query("SELECT toUInt64(sum(copies)) FROM event_hours")
                .fetch_one()
                .await
                .unwrap_or(0);
            let late: u64 = ch
                .query("SELECT uniqExact(source_partition, source_offset) FROM late_events")
                .fetch_one()
                .await
                .unwrap_or(0);
            loaded >= copies && late >= late_copies
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. Before the batch: the speed layer counts the on-time copies, so it
    // is off from the truth by exactly the duplicates it saw and the late
    // events it never did.
    let speed_want = tally(records.iter().filter(|r| r.1).map(|r| r.0), 3600);
    let speed = served(&ch, "metrics_1h").await;
    let speed_keys: Vec<_> = speed
        .iter()
        .map(|s| (i64::from(s.bucket), s.event.clone(), s.events, s.users))
        .collect();
    let want_keys: Vec<_> = speed_want
        .iter()
        .map(|((t, e), v)| (*t, e.clone(), v.events, v.users.len() as u64))
        .collect();
    assert_eq!(speed_keys, want_keys, "speed layer before the batch");
    assert!(speed.iter().all(|s| s.layer == "speed"));
    let mut distinct: HashMap<Uuid, &Event> = HashMap::new();
    for (e, _) in &records {
        distinct.insert(e.id, e);
    }
    let on_time_ids: BTreeSet<Uuid> = records.iter().filter(|r| r.1).map(|r| r.0.id).collect();
    let late_events = distinct
        .keys()
        .filter(|id| !on_time_ids.contains(id))
        .count() as u64;
    let duplicates = copies - distinct.len() as u64;
    let counted_twice = on_time_copies - on_time_ids.len() as u64;
    let speed_total: u64 = speed.iter().map(|s| s.events).sum();
    assert_eq!(
        speed_total,
        distinct.len() as u64 + counted_twice - late_events,
        "speed = truth + duplicates it saw − late events"
    );
    eprintln!(
        "{} events, {copies} records: {duplicates} duplicates ({} through the SDK), {late_events} late, {} imported",
        distinct.len(),
        lost_ids.len(),
        plan.import.len()
    );
    assert!(duplicates * 100 >= distinct.len() as u64, "~2 % duplicates");
    assert!(late_events * 100 >= 2 * distinct.len() as u64, "~3 % late");

    // 4. One user deleted through the query API.
    let mut qcfg = env.cfg.clone();
    qcfg.query.jwt_secret = SECRET.into();
    qcfg.query.allow_project_wide_tokens = true;
    let (api, stop) = crate::common::start_query_api(qcfg).await;
    let token = |admin: bool| {
        crate::common::hs256_token(
            SECRET,
            &json!({"project_id": PROJECT, "sub": "e2e", "hourglass_admin": admin,
                    "exp": Utc::now().timestamp() + 3600}),
        )
    };
    let victim = "user-7";
    let victim_events = distinct.values().filter(|e| e.user == victim).count() as u64;
    let http = reqwest::Client::new();
    let r = http
        .delete(format!("{api}/v1/users/{victim}"))
        .bearer_auth(token(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["events_removed"].as_u64().unwrap() >= victim_events);
    let truth_events: Vec<&Event> = distinct
        .values()
        .copied()
        .filter(|e| e.user != victim)
        .collect();

    // 5. Batch passes killed at random moments (after their first commit,
    // so inside the hours' replacements or the days'), then one that runs
    // to the end. A reader polling the views meanwhile sees, per hour and
    // per day, the speed layer's number or the truth, nothing else.
    let cfg = &env.cfg;
    let speed_of = |period: i64| -> BTreeMap<i64, u64> {
        let mut out = BTreeMap::new();
        for ((t, _), v) in tally(records.iter().filter(|r| r.1).map(|r| r.0), period) {
            *out.entry(t).or_default() += v.events;
        }
        out
    };
    let allowed = [("metrics_1h", 3600), ("metrics_1d", DAY)]
        .into_iter()
        .map(|(view, period)| {
            let speed = speed_of(period);
            let mut buckets: BTreeMap<i64, (u64, u64)> =
                speed.iter().map(|(t, n)| (*t, (*n, 0))).collect();
            for ((t, _), v) in tally(truth_events.iter().copied(), period) {
                buckets.entry(t).or_default().1 += v.events;
            }
            Allowed { view, buckets }
        })
        .collect();
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(ch.clone(), allowed, stop_watch.clone()));
    let range = [
        "batch".to_owned(),
        "--once".into(),
        "--from".into(),
        rfc3339(today - 25 * DAY),
        "--to".into(),
        rfc3339(today),
    ];
    let range_args: Vec<&str> = range.iter().map(String::as_str).collect();
    let batch_whole_range = || hourglass(&env, &range_args);
    let commits = || async {
        ch.query("SELECT count() FROM batch_commits")
            .fetch_one::<u64>()
            .await
            .unwrap()
    };
    let mut kill_rng = rand::rng();
    for kill in 1..=5 {
        let before = commits().await;
        let mut child = env.spawn(&range_args, &batch_env());
        wait_until(
            Duration::from_secs(60),
            "the pass's first commit",
            || async { commits().await > before },
        )
        .await;
        let delay = kill_rng.random_range(0..4_000);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        crate::common::sigkill(&mut child);
        eprintln!(
            "kill {kill}: {delay} ms after the pass's first commit, {} commits made by it",
            commits().await - before
        );
    }
    let (ok, out) = batch_whole_range();
    assert!(ok, "hourglass batch --once:\n{out}");
    let days: BTreeSet<i64> = distinct
        .values()
        .map(|e| e.ts_ms.div_euclid(1000) / DAY)
        .collect();
    assert!(out.contains(&format!(" and {} days", days.len())), "{out}");
    // Readers switch to a pass's rows `batch.switch_delay_secs` after it commits.
    tokio::time::sleep(Duration::from_secs(
        u64::from(cfg.batch.switch_delay_secs) + 1,
    ))
    .await;
    stop_watch.store(true, Ordering::Relaxed);
    let (reads, wrong) = watcher.await.unwrap();
    assert!(wrong.is_empty(), "a reader saw:\n{}", wrong.join("\n"));
    assert!(reads > 50, "{reads} readings");
    eprintln!("{reads} readings of the hourly and daily views, all speed or truth");
    every_level_serves_the_truth(&ch, &truth_events, cfg).await;

    // 6. The query API, uncached: 30 days at 1d and the stream's day at 5m.
    let reader = token(false);
    for (step, period, from, to) in [
        ("1d", DAY, today - 30 * DAY, today),
        ("5m", 300, today - 2 * DAY, today - DAY),
    ] {
        for event in EVENTS {
            let body: Value = http
                .get(format!(
                    "{api}/v1/metrics?event={event}&step={step}&from={from}&to={to}"
                ))
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let want: Vec<(String, u64, u64, String)> = tally(
                truth_events.iter().copied().filter(|e| e.event == event),
                period,
            )
            .into_iter()
            .filter(|((t, _), _)| (from..to).contains(t))
            .map(|((t, _), v)| {
                (
                    hourglass_batch::plan::show(t),
                    v.events,
                    v.users.len() as u64,
                    "batch".into(),
                )
            })
            .collect();
            let got: Vec<(String, u64, u64, String)> = body["series"][0]["points"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .iter()
                .filter(|p| p["events"].as_u64() != Some(0))
                .map(|p| {
                    (
                        p["time"].as_str().unwrap().to_owned(),
                        p["events"].as_u64().unwrap(),
                        p["users"].as_u64().unwrap(),
                        p["layer"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            assert_eq!(got, want, "/v1/metrics {event} at {step}");
        }
    }
    stop.cancel();

    // 7. Reconciliation: per hour and event, exactly what was injected.
    let (ok, table) = hourglass(
        &env,
        &[
            "reconcile",
            "--from",
            &rfc3339(today - 25 * DAY),
            "--to",
            &rfc3339(today),
        ],
    );
    assert!(ok, "reconcile flagged a difference:\n{table}");
    #[derive(Debug, Row, Deserialize)]
    struct Recon {
        hour: u32,
        event: String,
        speed_events: u64,
        batch_events: u64,
        duplicates_removed: i64,
        late_added: u64,
        deleted_removed: u64,
        unexplained: i64,
    }
    let got: Vec<Recon> = ch
        .query(
            "SELECT toUInt32(hour) AS hour, event, speed_events, batch_events, duplicates_removed, late_added, \
                    deleted_removed, unexplained \
             FROM (SELECT * FROM reconciliation FINAL ORDER BY checked_at DESC, version DESC LIMIT 1 BY hour, project_id, event) \
             ORDER BY hour, event",
        )
        .fetch_all()
        .await
        .unwrap();
    let hour_of = |e: &Event| {
        let s = e.ts_ms.div_euclid(1000);
        (s - s.rem_euclid(3600), e.event.to_owned())
    };
    #[derive(Default, Debug, PartialEq)]
    struct Want {
        speed: u64,
        batch: u64,
        duplicates: i64,
        late: u64,
        deleted: u64,
    }
    let mut want: BTreeMap<(i64, String), Want> = BTreeMap::new();
    let mut seen: BTreeSet<Uuid> = BTreeSet::new();
    for (e, on_time) in &records {
        let w = want.entry(hour_of(e)).or_default();
        if *on_time {
            w.speed += 1;
        } else {
            w.late += 1;
        }
        if !seen.insert(e.id) {
            w.duplicates += 1;
        } else if e.user == victim {
            w.deleted += 1;
        } else {
            w.batch += 1;
        }
    }
    let got: BTreeMap<(i64, String), Want> = got
        .into_iter()
        .map(|r| {
            assert_eq!(r.unexplained, 0, "{r:?}");
            (
                (i64::from(r.hour), r.event),
                Want {
                    speed: r.speed_events,
                    batch: r.batch_events,
                    duplicates: r.duplicates_removed,
                    late: r.late_added,
                    deleted: r.deleted_removed,
                },
            )
        })
        .collect();
    assert_eq!(got, want, "reconciliation\n{table}");

    // 8. Every hour and day of the range recomputed once more, then a retention
    // pass: each bucket keeps only the version readers are served; the
    // earlier ones (the killed passes' and the first complete pass's) go,
    // and the views still give the truth.
    let (ok, out) = batch_whole_range();
    assert!(ok, "hourglass batch --once, again:\n{out}");
    tokio::time::sleep(Duration::from_secs(
        u64::from(cfg.batch.switch_delay_secs) + 1,
    ))
    .await;
    let serving: BTreeMap<(u32, u32), u64> = ch
        .query(
            "SELECT period_secs, toUInt32(bucket_start), max(version) FROM batch_commits \
             GROUP BY period_secs, bucket_start",
        )
        .fetch_all::<(u32, u32, u64)>()
        .await
        .unwrap()
        .into_iter()
        .map(|(p, b, v)| ((p, b), v))
        .collect();
    let versions = || async {
        let mut out: BTreeMap<&str, Vec<(u32, u32, u64, u64)>> = BTreeMap::new();
        for (table, period, bucket) in [
            (
                "batch_rollups",
                "if(period_secs = 86400, 86400, 3600)",
                "if(period_secs = 86400, bucket_start, toStartOfHour(bucket_start))",
            ),
            ("batch_states", "3600", "hour"),
        ] {
            let rows = ch
                .query(&format!(
                    "SELECT toUInt32({period}) AS p, toUInt32({bucket}) AS b, version, count() \
                     FROM {table} GROUP BY p, b, version ORDER BY p, b, version"
                ))
                .fetch_all::<(u32, u32, u64, u64)>()
                .await
                .unwrap();
            out.insert(table, rows);
        }
        out
    };
    let before = versions().await;
    let mut stale: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (table, rows) in &before {
        for (p, b, v, n) in rows {
            let current = serving
                .get(&(*p, *b))
                .unwrap_or_else(|| panic!("{table}: rows of bucket {p}/{b} that no commit serves"));
            if v < current {
                let s = stale.entry(table).or_default();
                s.0 += 1;
                s.1 += n;
            }
        }
    }
    assert!(
        stale.get("batch_states").is_some_and(|s| s.0 > 24),
        "the forced pass left earlier versions: {stale:?}"
    );
    let prune_env = [("HOURGLASS_BATCH__PRUNE_AFTER_SECS", "0")];
    let run = |args: &[&str]| {
        let out = Command::new(hourglass_bin())
            .args(args)
            .envs(env.child_env())
            .envs(prune_env)
            .output()
            .expect("run hourglass");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = run(&["retention", "--dry-run"]);
    for (table, (n, rows)) in &stale {
        let line = format!("would delete {rows} rows of {n} superseded versions from {table}");
        assert!(dry.contains(&line), "{line}\n{dry}");
    }
    assert_eq!(versions().await, before, "a dry run deletes nothing");
    let done = run(&["retention"]);
    for (table, (n, rows)) in &stale {
        let line = format!("deleted {rows} rows of {n} superseded versions from {table}");
        assert!(done.contains(&line), "{line}\n{done}");
    }
    for (table, rows) in versions().await {
        let want: Vec<_> = before[table]
            .iter()
            .filter(|(p, b, v, _)| serving[&(*p, *b)] == *v)
            .copied()
            .collect();
        assert_eq!(rows, want, "{table}: only the served versions are left");
    }
    assert!(
        run(&["retention"]).contains("batch layer: no superseded versions"),
        "a second pass finds nothing"
    );
    every_level_serves_the_truth(&ch, &truth_events, cfg).await;

    crate::common::sigterm(&mut aggregator);
    crate::common::sigterm(&mut loader);
    let _ = std::fs::remove_file(&sdk_file);
    drop(ingest);
    env.teardown().await;
}
