//! Known `rollup_5m` rows for several windows and source partitions, written
//! through the aggregator's sink → `rollup_1h`, `rollup_1d` and the serving
//! views return exactly the sums, and percentiles from merged buckets equal
//! those of one HdrHistogram fed every value.

use std::collections::HashSet;

use hourglass_aggregator::sink::RollupSink;
use hourglass_aggregator::window::{Checkpoint, ClosedWindows, KeyAggregate, RollupRow, user_hash};
use hourglass_core::config::ClickHouseConfig;
use hourglass_core::histogram::ValueHistogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MIN: i64 = 60_000;

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Served {
    events: u64,
    users: u64,
    value_count: u64,
    value_sum: f64,
    value_min: f64,
    value_max: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

#[tokio::test]
async fn hourly_and_daily_views_equal_the_merged_five_minute_rows() {
    let cfg = ClickHouseConfig {
        database: format!("hgt_views_{:08x}", rand::rng().random::<u32>()),
        ..ClickHouseConfig::default()
    };
    hourglass_sql::migrate(&cfg).await.expect("migrate");
    let client = hourglass_core::clickhouse::client(&cfg);
    let sink = RollupSink::new(client.clone(), "events");

    let mut rng = SmallRng::seed_from_u64(3);
    let mut whole = ValueHistogram::new(3, 3_600_000.0);
    let mut all_users = HashSet::new();
    let (mut events, mut sum, mut count) = (0u64, 0f64, 0u64);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    // 12 windows (one hour) × 4 source partitions; users 0..400 keyed to partitions.
    for partition in 0..4 {
        let mut rows = Vec::new();
        for w in 0..12 {
            let mut agg = KeyAggregate::default();
            for _ in 0..rng.random_range(50..300) {
                let user = format!("u{}", rng.random_range(0..100) * 4 + partition);
                let v = (rng.random::<f64>().powi(3) * 5_000.0 * 1000.0).round() / 1000.0;
                agg.add(user_hash(&user), Some(v), 3, 3_600_000.0);
                all_users.insert(user);
                whole.record(v);
                events += 1;
                count += 1;
                sum += v;
                min = min.min(v);
                max = max.max(v);
            }
            rows.push(RollupRow::new(T0 + w * 5 * MIN, "p\u{1f}api\u{1f}{}", agg));
        }
        let closed = ClosedWindows {
            windows: rows.len(),
            last_window_start_ms: T0 + 55 * MIN,
            rows,
            late: Vec::new(),
            checkpoint: Checkpoint {
                resume_offset: 1000 + i64::from(partition),
                watermark_ms: T0 + 61 * MIN,
            },
        };
        sink.write(partition, &closed).await.expect("write");
    }

    for view in ["metrics_1h", "metrics_1d"] {
        let got: Vec<Served> = client
            .query(&format!(
                "SELECT events, users, value_count, value_sum, value_min, value_max, p50, p95, p99 FROM {view}"
            ))
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{view}: one bucket");
        let g = &got[0];
        assert_eq!(
            (g.events, g.users, g.value_count),
            (events, all_users.len() as u64, count),
            "{view}"
        );
        assert!(
            (g.value_sum - sum).abs() < 1e-6 * sum,
            "{view} sum {} vs {sum}",
            g.value_sum
        );
        assert_eq!((g.value_min, g.value_max), (min, max), "{view} min/max");
        assert_eq!(
            (g.p50, g.p95, g.p99),
            (
                whole.quantile(0.5),
                whole.quantile(0.95),
                whole.quantile(0.99)
            ),
            "{view}: percentiles from merged buckets equal one histogram fed every value"
        );
    }

    // A dashboard selects only what it plots: each column must work alone.
    for view in ["metrics_5m", "metrics_1h", "metrics_1d"] {
        for column in ["p95", "users", "value_avg", "events"] {
            let alone: Vec<f64> = client
                .query(&format!("SELECT toFloat64({column}) FROM {view}"))
                .fetch_all()
                .await
                .unwrap_or_else(|e| panic!("SELECT {column} FROM {view}: {e}"));
            assert!(!alone.is_empty(), "{view}.{column}");
        }
    }
    let p95_alone: Vec<f64> = client
        .query("SELECT p95 FROM metrics_1h")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(p95_alone, vec![whole.quantile(0.95)]);

    // metrics_5m: 12 rows, each the sum over the 4 source partitions.
    let per_window: Vec<(u64, u64)> = client
        .query("SELECT events, value_count FROM metrics_5m ORDER BY window_start")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(per_window.len(), 12);
    assert_eq!(per_window.iter().map(|r| r.0).sum::<u64>(), events);

    let checkpoints = sink.checkpoints().await.unwrap();
    assert_eq!(checkpoints.len(), 4);
    assert!(
        checkpoints
            .iter()
            .all(|(p, c)| c.resume_offset == 1000 + i64::from(*p))
    );
    assert!(
        sink.landed(
            2,
            Checkpoint {
                resume_offset: 0,
                watermark_ms: T0 + 61 * MIN
            }
        )
        .await
        .unwrap()
    );
    assert!(
        !sink
            .landed(
                2,
                Checkpoint {
                    resume_offset: 0,
                    watermark_ms: T0 + 62 * MIN
                }
            )
            .await
            .unwrap()
    );

    client
        .query(&format!("DROP DATABASE `{}`", cfg.database))
        .execute()
        .await
        .unwrap();
}
