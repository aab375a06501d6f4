//! The rollups checked against a generator's ground truth: `rollup_5m`
//! summed over source partitions and every serving view, row by row
//! (events, exact distinct users, value count, p50/p95/p99 against one
//! HdrHistogram fed the bucket's values).

use std::collections::BTreeMap;
use std::time::Duration;

use clickhouse::Row;
use hourglass_core::histogram::ValueHistogram;
use serde::Deserialize;

use super::generator::{Generated, Truth};
use super::{TestEnv, wait_until};

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

pub async fn flushed_events(env: &TestEnv) -> u64 {
    env.clickhouse()
        .query("SELECT sum(events) FROM rollup_5m")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

pub async fn wait_all_flushed(env: &TestEnv, n: u64) {
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

pub fn expected_quantiles(values: &[f64]) -> (f64, f64, f64) {
    let mut h = ValueHistogram::new(3, 3_600_000.0);
    values.iter().for_each(|v| h.record(*v));
    (h.quantile(0.5), h.quantile(0.95), h.quantile(0.99))
}

/// Roll the 5-minute truth up to `bucket_ms` buckets.
pub fn roll_up(
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

pub async fn assert_view_matches(
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

pub async fn assert_matches_truth(env: &TestEnv, generated: &Generated) {
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
