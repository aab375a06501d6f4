//! The rollups checked against a generator's ground truth: `rollup_5m`
//! summed over source partitions and every serving view, row by row
//! (events, exact distinct users, value count, sum, min and max, and
//! p50/p90/p95/p99 against the `hdrhistogram` crate itself fed the bucket's
//! raw values: not the project's own histogram type).

use std::collections::BTreeMap;
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;

use super::TestEnv;
use super::generator::{Generated, Truth};

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
    value_sum: f64,
    value_min: f64,
    value_max: f64,
    p50: f64,
    p90: f64,
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
    // Fails once nothing moved for 2 minutes (longer than a kill's rejoin
    // and a ClickHouse restart), not after a fixed budget for the run.
    super::wait_for_progress(Duration::from_secs(120), "events in rollup_5m", n, || {
        flushed_events(env)
    })
    .await;
    // Nothing more may arrive (a double count would push it past n).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(flushed_events(env).await, n, "events in rollup_5m");
}

/// p50, p90, p95, p99 of `values` as the schema defines them: thousandths
/// recorded into an HdrHistogram of 3 significant figures over one hour
/// (the aggregator's defaults), read with `value_at_quantile`. Straight from
/// the `hdrhistogram` crate, so a bug shared by the aggregator and its own
/// histogram type cannot pass here.
pub fn expected_quantiles(values: &[f64]) -> [f64; 4] {
    let max = 3_600_000 * 1000;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, max, 3).unwrap();
    for v in values {
        h.saturating_record(((v * 1000.0).round().max(0.0) as u64).min(max));
    }
    [0.5, 0.9, 0.95, 0.99].map(|q| h.value_at_quantile(q) as f64 / 1000.0)
}

/// `sum`, `min`, `max` of `values` (0 for min and max when there are none,
/// as the views answer).
pub fn expected_value_stats(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let sum = values.iter().sum();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (sum, min, max)
}

/// Sums of many floats in a different order differ in the last bits.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
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
            "SELECT toUInt32(window_start), event, dimensions, events, users, value_count, \
             value_sum, value_min, value_max, p50, p90, p95, p99 \
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
        let (sum, min, max) = expected_value_stats(&t.values);
        assert!(
            close(row.value_sum, sum),
            "{view} value sum {key:?}: {} against {sum}",
            row.value_sum
        );
        if !t.values.is_empty() {
            assert_eq!(
                (row.value_min, row.value_max),
                (min, max),
                "{view} value min and max {key:?}"
            );
            assert_eq!(
                [row.p50, row.p90, row.p95, row.p99],
                expected_quantiles(&t.values),
                "{view} p50, p90, p95, p99 {key:?}"
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
