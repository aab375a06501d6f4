//! `hourglass migrate` against the local ClickHouse: idempotent, safe when
//! run concurrently, and the same schema either way.

use hourglass_core::config::ClickHouseConfig;
use rand::Rng;

fn config(label: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        database: format!("hgt_{label}_{:08x}", rand::rng().random::<u32>()),
        ..ClickHouseConfig::default()
    }
}

/// Every table's DDL, by name.
async fn schema(cfg: &ClickHouseConfig) -> Vec<(String, String)> {
    hourglass_core::clickhouse::server_client(cfg)
        .query(
            "SELECT name, create_table_query FROM system.tables WHERE database = ? ORDER BY name",
        )
        .bind(&cfg.database)
        .fetch_all()
        .await
        .expect("read schema")
}

async fn applied(cfg: &ClickHouseConfig) -> Vec<u32> {
    hourglass_core::clickhouse::client(cfg)
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .expect("read schema_migrations")
}

async fn drop(cfg: &ClickHouseConfig) {
    let _ = hourglass_core::clickhouse::server_client(cfg)
        .query(&format!("DROP DATABASE IF EXISTS `{}`", cfg.database))
        .execute()
        .await;
}

#[tokio::test]
async fn migrate_twice_in_a_row_then_concurrently_leaves_one_schema() {
    let seq = config("mig_seq");
    let first = hourglass_sql::migrate(&seq).await.expect("first migrate");
    assert_eq!(
        first.applied,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );
    let second = hourglass_sql::migrate(&seq).await.expect("second migrate");
    assert!(second.applied.is_empty());
    assert_eq!(
        second.already_applied,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );
    let sequential = schema(&seq).await;
    let names: Vec<&str> = sequential.iter().map(|(n, _)| n.as_str()).collect();
    for table in [
        "aggregator_progress",
        "aggregator_progress_mv",
        "batch_dup_ids",
        "deletions",
        "events",
        "loader_progress",
        "loader_progress_mv",
        "metrics_1d",
        "metrics_1h",
        "metrics_5m",
        "rollup_1d",
        "rollup_1d_mv",
        "rollup_1h",
        "rollup_1h_mv",
        "rollup_5m",
        "schema_migrations",
    ] {
        assert!(names.contains(&table), "{table} missing from {names:?}");
    }

    let conc = config("mig_conc");
    let (a, b) = tokio::join!(hourglass_sql::migrate(&conc), hourglass_sql::migrate(&conc));
    a.expect("concurrent migrate a");
    b.expect("concurrent migrate b");
    let concurrent = schema(&conc).await;
    let normalize = |rows: &[(String, String)], db: &str| -> Vec<(String, String)> {
        rows.iter()
            .map(|(n, q)| (n.clone(), q.replace(db, "DB")))
            .collect()
    };
    assert_eq!(
        normalize(&concurrent, &conc.database),
        normalize(&sequential, &seq.database)
    );
    assert_eq!(
        applied(&conc).await,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );

    drop(&seq).await;
    drop(&conc).await;
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let cfg = ClickHouseConfig {
        url: "http://127.0.0.1:1".into(),
        ..config("unreachable")
    };
    let err = hourglass_sql::migrate(&cfg).await.unwrap_err().to_string();
    assert!(
        err.contains("127.0.0.1:1") && err.contains("did not answer"),
        "{err}"
    );
}

/// Migration 11 on a database that already holds rollups (what an upgrade
/// meets): the hourly and daily rollups learn each bucket's events per
/// source from rollup_5m, their numbers stay as they were, and rows written
/// afterwards get theirs from the views.
#[tokio::test]
async fn source_events_are_filled_for_rollups_written_before_migration_11() {
    let cfg = config("mig_upgrade");
    let old = hourglass_sql::migrate_to(&cfg, 10)
        .await
        .expect("migrate to 10");
    assert_eq!(old.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let client = hourglass_core::clickhouse::client(&cfg);
    // Two sources, two hours; 2026-01-01 10:05, 10:10 and 11:00 UTC.
    let row = |ts: &str, topic: &str, partition: u16, events: u64| {
        format!(
            "('{ts}', 'p', 'page', '{{}}', '{topic}', {partition}, {events}, {events}, [1], 0, 0, 0, 0, 0, 0, 0, 0, [], [], 0, 0)"
        )
    };
    let insert = |rows: Vec<String>| {
        format!(
            "INSERT INTO rollup_5m (window_start, project_id, event, dimensions, source_topic, source_partition, \
             events, users, user_hashes, value_count, value_sum, value_min, value_max, p50, p90, p95, p99, \
             hist_values, hist_counts, resume_offset, watermark_ms) VALUES {}",
            rows.join(", ")
        )
    };
    let before = vec![
        row("2026-01-01 10:05:00", "events", 0, 5),
        row("2026-01-01 10:10:00", "events", 1, 7),
        row("2026-01-01 11:00:00", "events", 0, 11),
    ];
    client.query(&insert(before)).execute().await.unwrap();
    let upgrade = hourglass_sql::migrate(&cfg).await.expect("migrate to 11");
    assert_eq!(upgrade.applied, vec![11, 12, 13, 14]);
    let after = vec![row("2026-01-01 10:15:00", "events", 0, 13)];
    client.query(&insert(after)).execute().await.unwrap();

    // (bucket, events, events of partition 0, events of partition 1)
    for (table, want) in [
        (
            "rollup_1h",
            vec![
                (1_767_261_600u32, 25u64, 18u64, 7u64),
                (1_767_265_200, 11, 11, 0),
            ],
        ),
        ("rollup_1d", vec![(1_767_225_600, 36, 29, 7)]),
    ] {
        let got: Vec<(u32, u64, u64, u64)> = client
            .query(&format!(
                "SELECT toUInt32(bucket_start) AS b, sumMerge(events_state), \
                 tupleElement(sumMapMerge(source_events_state) AS m, 2)[indexOf(tupleElement(m, 1), cityHash64('events', toUInt16(0)))], \
                 tupleElement(m, 2)[indexOf(tupleElement(m, 1), cityHash64('events', toUInt16(1)))] \
                 FROM {table} GROUP BY b ORDER BY b"
            ))
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(got, want, "{table}");
    }
    drop(&cfg).await;
}
