//! Retention tiers on backdated data: raw events, every rollup level (speed
//! and batch rows) and lake folders of four projects at known ages; `hourglass
//! retention --dry-run` names exactly what would go and removes nothing, a
//! pass removes exactly that and nothing else, and a project's changed
//! retention applies on the next pass.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hourglass_core::config::LakeStorage;

use crate::common::{TestEnv, run_hourglass};

/// Days back each project has data at (00:30 UTC of that day).
const AGES: [i64; 9] = [0, 1, 2, 3, 5, 6, 10, 40, 100];
const PROJECTS: [&str; 4] = ["free_app", "paid", "custom", "other"];
const ROWS: u64 = 7;
const DAY: i64 = 86_400;

fn today() -> i64 {
    Utc::now().timestamp().div_euclid(DAY) * DAY
}

fn at(age: i64) -> i64 {
    today() - age * DAY + 1_800
}

/// The configuration of the test, as environment variables (`paid_raw` is
/// the paid project's raw days, changed between passes).
fn retention_env(env: &TestEnv, paid_raw: u32) -> Vec<(String, String)> {
    let mut vars = env.child_env();
    vars.extend(
        [
            ("HOURGLASS_RETENTION__RAW_DAYS", "30".to_owned()),
            ("HOURGLASS_RETENTION__LAKE_DAYS", "5".to_owned()),
            (
                "HOURGLASS_RETENTION__TIERS",
                "{free={raw_days=1, rollup_5m_days=2, rollup_1h_days=5, rollup_1d_days=40}}"
                    .to_owned(),
            ),
            ("HOURGLASS_PROJECTS__FREE_APP", "{tier=\"free\"}".to_owned()),
            (
                "HOURGLASS_PROJECTS__PAID",
                format!("{{raw_days={paid_raw}, rollup_5m_days=10}}"),
            ),
            (
                "HOURGLASS_PROJECTS__CUSTOM",
                "{tier=\"free\", raw_days=0}".to_owned(),
            ),
            ("HOURGLASS_LAKE__STORAGE", "s3".to_owned()),
            ("HOURGLASS_S3__PREFIX", env.name.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    vars
}

fn retention(env: &TestEnv, paid_raw: u32, dry_run: bool) -> String {
    let args: &[&str] = if dry_run {
        &["retention", "--dry-run"]
    } else {
        &["retention"]
    };
    run_hourglass(args, &retention_env(env, paid_raw))
}

/// (table, extra condition, time column) of every table a level lives in.
const TABLES: [(&str, &str, &str); 8] = [
    ("events", "", "timestamp"),
    ("rollup_5m", "", "window_start"),
    ("batch_rollups", "period_secs = 300 AND ", "bucket_start"),
    ("batch_states", "", "window_start"),
    ("rollup_1h", "", "bucket_start"),
    ("batch_rollups", "period_secs = 3600 AND ", "bucket_start"),
    ("rollup_1d", "", "bucket_start"),
    ("batch_rollups", "period_secs = 86400 AND ", "bucket_start"),
];

/// Days each project keeps in the table `TABLES[i]` (0: forever).
fn kept_days(i: usize, project: &str, paid_raw: i64) -> i64 {
    let level = match i {
        0 => 0,
        1..=3 => 1,
        4 | 5 => 2,
        _ => 3,
    };
    let free = [1, 2, 5, 40][level];
    match project {
        "free_app" => free,
        "custom" => [0, 2, 5, 40][level],
        "paid" => [paid_raw, 10, 0, 0][level],
        _ => [30, 0, 0, 0][level],
    }
}

/// Per table and project, the ages (days) whose rows are there.
async fn ages_held(env: &TestEnv) -> BTreeMap<(usize, String), BTreeSet<i64>> {
    let ch = env.clickhouse();
    let mut held = BTreeMap::new();
    for (i, (table, extra, column)) in TABLES.iter().enumerate() {
        let rows: Vec<(String, u32, u64)> = ch
            .query(&format!(
                "SELECT project_id, toUInt32(toStartOfDay({column})), count() FROM {table} \
                 WHERE {extra}1 GROUP BY project_id, toStartOfDay({column})"
            ))
            .fetch_all()
            .await
            .unwrap();
        for (project, day, n) in rows {
            let expected = if i == 0 { ROWS } else { 1 };
            assert_eq!(n, expected, "{table} {project} {day}");
            held.entry((i, project))
                .or_insert_with(BTreeSet::new)
                .insert((today() - i64::from(day)) / DAY);
        }
    }
    held
}

/// What each table holds of each project after a pass (`None`: before any).
fn expected(paid_raw: Option<i64>) -> BTreeMap<(usize, String), BTreeSet<i64>> {
    let mut want = BTreeMap::new();
    for i in 0..TABLES.len() {
        for p in PROJECTS {
            let days = paid_raw.map_or(0, |raw| kept_days(i, p, raw));
            let ages = AGES
                .iter()
                .copied()
                .filter(|a| days == 0 || *a <= days)
                .collect();
            want.insert((i, p.to_owned()), ages);
        }
    }
    want
}

async fn seed(env: &TestEnv) {
    let ch = env.clickhouse();
    for p in PROJECTS {
        for age in AGES {
            let t = at(age);
            ch.query(
                "INSERT INTO events (project_id, event, event_id, user_id, timestamp, timestamp_ms, received_at) \
                 SELECT ?, 'view', concat(?, toString(number)), toString(number), toDateTime(?), ? * 1000, toDateTime(?) \
                 FROM system.numbers LIMIT ?",
            )
            .bind(p)
            .bind(format!("{p}-{age}-"))
            .bind(t)
            .bind(t)
            .bind(t)
            .bind(ROWS)
            .execute()
            .await
            .unwrap();
            // One 5-minute row each; the views make the hourly and daily.
            ch.query(
                "INSERT INTO rollup_5m (window_start, project_id, event, source_topic, source_partition, events, users, user_hashes) \
                 VALUES (toDateTime(?), ?, 'view', 't', 0, 7, 1, [1])",
            )
            .bind(t)
            .bind(p)
            .execute()
            .await
            .unwrap();
            for period in [300, 3600, 86_400] {
                ch.query(
                    "INSERT INTO batch_rollups (period_secs, bucket_start, project_id, event, version, events) \
                     VALUES (?, toDateTime(?), ?, 'view', 1, 7)",
                )
                .bind(period)
                .bind(t - t.rem_euclid(period))
                .bind(p)
                .execute()
                .await
                .unwrap();
            }
            ch.query(
                "INSERT INTO batch_states (version, hour, window_start, project_id, event, events) \
                 VALUES (1, toDateTime(?), toDateTime(?), ?, 'view', 7)",
            )
            .bind(t - t.rem_euclid(3600))
            .bind(t)
            .bind(p)
            .execute()
            .await
            .unwrap();
            // Served by a commit, as a pass leaves them (rows no commit
            // names are a killed pass's, which the pruning deletes).
            for period in [3600, 86_400] {
                ch.query(
                    "INSERT INTO batch_commits (period_secs, bucket_start, version, source, raw_as_of, visible_from, events) \
                     VALUES (?, toDateTime(?), 1, 'test', now(), now(), 7)",
                )
                .bind(period)
                .bind(t - t.rem_euclid(period))
                .execute()
                .await
                .unwrap();
            }
        }
    }
}

async fn lake_days_held(env: &TestEnv) -> (BTreeSet<i64>, bool) {
    let store = hourglass_lake::store::open(&env.cfg).await.unwrap();
    let keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let days = keys
        .iter()
        .filter_map(|k| k.strip_prefix("dt="))
        .map(|k| {
            let d = chrono::NaiveDate::parse_from_str(&k[..10], "%Y-%m-%d").unwrap();
            (today() - d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp()) / DAY
        })
        .collect();
    (days, keys.iter().any(|k| k == "notes/keep.txt"))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tier_removes_exactly_what_it_should_and_a_change_applies_next_pass() {
    let mut env = TestEnv::new("retention").await;
    env.cfg.lake.storage = LakeStorage::S3;
    env.cfg.s3.prefix = env.name.clone();
    env.migrate().await;
    seed(&env).await;
    let store = hourglass_lake::store::open(&env.cfg).await.unwrap();
    for age in AGES {
        let day = DateTime::<Utc>::from_timestamp(at(age), 0).unwrap();
        for hour in ["00", "13"] {
            let key = format!("dt={}/hour={hour}/t-0000-1.parquet", day.format("%Y-%m-%d"));
            store.put(&key, Bytes::from_static(b"x")).await.unwrap();
        }
    }
    store
        .put("notes/keep.txt", Bytes::from_static(b"not a lake folder"))
        .await
        .unwrap();
    let all = expected(None);
    assert_eq!(ages_held(&env).await, all, "seeded");

    // Dry run: names what would go, removes nothing.
    let dry = retention(&env, 90, true);
    assert_eq!(
        ages_held(&env).await,
        all,
        "a dry run deletes nothing:\n{dry}"
    );
    let want = expected(Some(90));
    let mut would: BTreeMap<String, u64> = BTreeMap::new();
    for ((i, p), ages) in &all {
        let gone = ages.difference(&want[&(*i, p.clone())]).count() as u64;
        if gone > 0 {
            *would.entry(TABLES[*i].0.to_owned()).or_default() +=
                gone * if *i == 0 { ROWS } else { 1 };
        }
    }
    let mut said: BTreeMap<String, u64> = BTreeMap::new();
    for line in dry
        .lines()
        .filter(|l| l.contains(" rows of ") && !l.starts_with("batch layer:"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[..2], ["would", "delete"], "{line}");
        *said.entry(words[5].to_owned()).or_default() += words[2].parse::<u64>().unwrap();
    }
    assert_eq!(said, would, "{dry}");
    assert!(
        dry.contains(&format!(
            "would delete {:>10} lake objects (8 bytes) before {}",
            8,
            lake_cutoff()
        )),
        "two objects of each day from 6 days back: {dry}"
    );
    assert_eq!(lake_days_held(&env).await.0.len(), AGES.len());

    // The pass: exactly that.
    let done = retention(&env, 90, false);
    assert_eq!(ages_held(&env).await, want, "{done}");
    let (lake_days, kept_other) = lake_days_held(&env).await;
    assert_eq!(lake_days, BTreeSet::from([0, 1, 2, 3, 5]), "{done}");
    assert!(
        kept_other,
        "an object outside the lake's folders was deleted"
    );
    // Nothing more on a second pass.
    assert_eq!(
        retention(&env, 90, false),
        format!(
            "deleted {:>10} lake objects (0 bytes) before {}\nbatch layer: no superseded versions\n",
            0,
            lake_cutoff()
        )
    );

    // The paid project now keeps 5 days of raw events: the next pass
    // applies it, to that project's raw events only.
    retention(&env, 5, false);
    assert_eq!(ages_held(&env).await, expected(Some(5)));
    env.teardown().await;
}

fn lake_cutoff() -> String {
    DateTime::<Utc>::from_timestamp(today() - 5 * DAY, 0)
        .unwrap()
        .date_naive()
        .to_string()
}
