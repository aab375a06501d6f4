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
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let second = hourglass_sql::migrate(&seq).await.expect("second migrate");
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
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
    assert_eq!(applied(&conc).await, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);

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
