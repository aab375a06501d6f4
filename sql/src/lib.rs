//! The ClickHouse schema of Hourglass and the runner behind `hourglass migrate`.
//!
//! Migrations are the `.sql` files in `migrations/`, compiled into the binary
//! and applied in order. Each is rendered for the server it runs on
//! ([`Features`]): modern-only DDL (LowCardinality, codecs, TTL, insert
//! deduplication) is switched on only where the server has it, so the same
//! files run on Debian's ClickHouse 18.16 and on 24.x. Every statement is
//! idempotent (`IF NOT EXISTS`), which makes running twice, or from two
//! processes at once, safe; `schema_migrations` records what ran and refuses
//! a migration whose file changed after it was applied.

pub mod cluster;

use clickhouse::Client;
use hourglass_core::clickhouse::{ServerVersion, server_client};
use hourglass_core::config::ClickHouseConfig;

/// One versioned migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in the order it applies.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "rollups",
        sql: include_str!("../migrations/0002_rollups.sql"),
    },
    Migration {
        version: 3,
        name: "aggregator_progress",
        sql: include_str!("../migrations/0003_aggregator_progress.sql"),
    },
    Migration {
        version: 4,
        name: "serving_views",
        sql: include_str!("../migrations/0004_serving_views.sql"),
    },
    Migration {
        version: 5,
        name: "loader_progress",
        sql: include_str!("../migrations/0005_loader_progress.sql"),
    },
    Migration {
        version: 6,
        name: "flat_serving_views",
        sql: include_str!("../migrations/0006_flat_serving_views.sql"),
    },
    Migration {
        version: 7,
        name: "deletions",
        sql: include_str!("../migrations/0007_deletions.sql"),
    },
    Migration {
        version: 8,
        name: "batch_layer",
        sql: include_str!("../migrations/0008_batch_layer.sql"),
    },
    Migration {
        version: 9,
        name: "batch_duplicate_ids",
        sql: include_str!("../migrations/0009_batch_duplicate_ids.sql"),
    },
    Migration {
        version: 10,
        name: "tenants",
        sql: include_str!("../migrations/0010_tenants.sql"),
    },
    Migration {
        version: 11,
        name: "rollup_source_events",
        sql: include_str!("../migrations/0011_rollup_source_events.sql"),
    },
    Migration {
        version: 12,
        name: "serving_views_one_switch",
        sql: include_str!("../migrations/0012_serving_views_one_switch.sql"),
    },
    Migration {
        version: 13,
        name: "lake_erasures",
        sql: include_str!("../migrations/0013_lake_erasures.sql"),
    },
    Migration {
        version: 14,
        name: "rollup_erasures",
        sql: include_str!("../migrations/0014_rollup_erasures.sql"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("ClickHouse at {url} did not answer: {source}")]
    Unreachable {
        url: String,
        source: clickhouse::error::Error,
    },
    #[error("migration {version} ({name}) failed on statement:\n{statement}\n{source}")]
    Statement {
        version: u32,
        name: &'static str,
        statement: String,
        source: clickhouse::error::Error,
    },
    #[error(
        "migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {now} in this build)"
    )]
    Changed {
        version: u32,
        name: &'static str,
        applied: String,
        now: String,
    },
    #[error("ClickHouse query failed: {0}")]
    Query(#[from] clickhouse::error::Error),
    #[error("clickhouse.cluster: {0}")]
    Cluster(String),
}

/// What the server supports, deciding how migrations are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub modern_ddl: bool,
    pub insert_dedup: bool,
}

impl From<ServerVersion> for Features {
    fn from(v: ServerVersion) -> Self {
        Self {
            modern_ddl: v.has_modern_ddl(),
            insert_dedup: v.has_insert_dedup(),
        }
    }
}

/// Substitute the placeholders of a migration for one database and server.
pub fn render(sql: &str, database: &str, features: Features, retention_days: u32) -> Vec<String> {
    let (lc_string, codec_time, codec_zstd) = if features.modern_ddl {
        (
            "LowCardinality(String)",
            " CODEC(DoubleDelta, LZ4)",
            " CODEC(ZSTD(3))",
        )
    } else {
        ("String", "", "")
    };
    let ttl = if features.modern_ddl && retention_days > 0 {
        format!("TTL timestamp + INTERVAL {retention_days} DAY")
    } else {
        String::new()
    };
    let settings = if features.insert_dedup {
        "SETTINGS non_replicated_deduplication_window = 10000"
    } else {
        ""
    };
    let without_comments: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{db}", &quote_ident(database))
                .replace("{lc_string}", lc_string)
                .replace("{codec_time}", codec_time)
                .replace("{codec_zstd}", codec_zstd)
                .replace("{events_ttl}", &ttl)
                .replace("{events_settings}", settings)
        })
        .collect()
}

/// A migration's statements for the configured target: rendered for the
/// server, then rewritten for the cluster when `clickhouse.cluster` is set.
pub fn statements(m: &Migration, cfg: &ClickHouseConfig, features: Features) -> Vec<String> {
    for_target(
        cfg,
        render(m.sql, &cfg.database, features, cfg.events_retention_days),
    )
}

/// Single-server statements as the configured target runs them.
fn for_target(cfg: &ClickHouseConfig, rendered: Vec<String>) -> Vec<String> {
    if !cfg.is_cluster() {
        return rendered;
    }
    rendered
        .iter()
        .flat_map(|s| cluster::rewrite(s, &cfg.database, &cfg.cluster))
        .collect()
}

/// The cluster named by `clickhouse.cluster` exists on the server and every
/// shard has at least `insert_quorum` replicas (else no insert could ever
/// count); a quorum that is not a majority is allowed with a warning (a
/// failed-over consumer could then read an older checkpoint).
async fn check_cluster(client: &Client, cfg: &ClickHouseConfig) -> Result<(), MigrateError> {
    let shards: Vec<(u32, u64)> = client
        .query("SELECT shard_num, count() FROM system.clusters WHERE cluster = ? GROUP BY shard_num ORDER BY shard_num")
        .bind(&cfg.cluster)
        .fetch_all()
        .await?;
    if shards.is_empty() {
        return Err(MigrateError::Cluster(format!(
            "the server at {} has no cluster {:?} in its remote_servers",
            cfg.url, cfg.cluster
        )));
    }
    let fewest = shards.iter().map(|(_, n)| *n).min().unwrap_or(0);
    let quorum = u64::from(cfg.insert_quorum);
    if quorum > fewest {
        return Err(MigrateError::Cluster(format!(
            "insert_quorum {quorum} is more than the {fewest} replicas of the smallest shard of {:?}: no insert could count",
            cfg.cluster
        )));
    }
    if quorum * 2 <= fewest {
        tracing::warn!(cluster = %cfg.cluster, quorum, replicas = fewest, "clickhouse.insert_quorum is not a majority of a shard's replicas: a consumer failing over could read a checkpoint older than its last flush");
    }
    // A retried flush whose block the main table already holds must still
    // reach the materialized views that missed it (an INSERT can fail after
    // its main table and before a view); servers since 19.x can, when asked.
    let views_dedup: Vec<String> = client
        .query("SELECT value FROM system.settings WHERE name = 'deduplicate_blocks_in_dependent_materialized_views'")
        .fetch_all()
        .await?;
    if views_dedup.first().is_some_and(|v| v == "0") {
        tracing::warn!(
            "set deduplicate_blocks_in_dependent_materialized_views = 1 in the writing user's profile: without it a retried INSERT that the main table deduplicates skips the rollup views (docs/clickhouse-cluster.md)"
        );
    }
    tracing::info!(cluster = %cfg.cluster, shards = shards.len(), replicas = fewest, quorum, "migrating on a cluster");
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// FNV-1a: a checksum that stays the same across Rust releases.
fn checksum(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A racing process created the same object first: for `IF NOT EXISTS`
/// statements that is success.
fn is_already_exists(err: &clickhouse::error::Error) -> bool {
    let text = err.to_string();
    // 57 TABLE_ALREADY_EXISTS, 82 DATABASE_ALREADY_EXISTS, 44 for a column
    // added twice (18.16 has no ADD COLUMN IF NOT EXISTS)
    text.contains("Code: 57")
        || text.contains("Code: 82")
        || (text.contains("Code: 44") && text.contains("already exists"))
}

async fn execute(client: &Client, sql: &str) -> Result<(), clickhouse::error::Error> {
    match client.query(sql).execute().await {
        Err(e) if is_already_exists(&e) => Ok(()),
        other => other,
    }
}

/// The outcome of [`migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub server_version: String,
    pub features: Features,
    pub applied: Vec<u32>,
    pub already_applied: Vec<u32>,
}

/// Apply every pending migration to the configured database.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<MigrateReport, MigrateError> {
    migrate_to(cfg, u32::MAX).await
}

/// Apply the pending migrations up to `last` (a database as an older
/// release left it, for upgrade tests).
pub async fn migrate_to(cfg: &ClickHouseConfig, last: u32) -> Result<MigrateReport, MigrateError> {
    let client = server_client(cfg);
    let version_text: String =
        client
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|source| MigrateError::Unreachable {
                url: cfg.url.clone(),
                source,
            })?;
    let version = ServerVersion::parse(&version_text).ok_or_else(|| {
        MigrateError::Query(clickhouse::error::Error::Custom(format!(
            "unrecognized server version {version_text:?}"
        )))
    })?;
    let features = Features::from(version);
    let db = quote_ident(&cfg.database);
    if cfg.is_cluster() {
        check_cluster(&client, cfg).await?;
    }

    let ledger = format!(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
         (version UInt32, name String, checksum String, applied_at DateTime) \
         ENGINE = ReplacingMergeTree() ORDER BY version"
    );
    let database = format!("CREATE DATABASE IF NOT EXISTS {db}");
    for statement in for_target(cfg, vec![database, ledger]) {
        execute(&client, &statement).await?;
    }

    let applied: Vec<(u32, String)> = client
        .query(&format!(
            "SELECT DISTINCT version, checksum FROM {db}.schema_migrations"
        ))
        .fetch_all()
        .await?;

    let mut report = MigrateReport {
        server_version: version_text.clone(),
        features,
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for m in MIGRATIONS.iter().filter(|m| m.version <= last) {
        let sum = checksum(m.sql);
        if let Some((_, old)) = applied.iter().find(|(v, _)| *v == m.version) {
            if *old != sum {
                return Err(MigrateError::Changed {
                    version: m.version,
                    name: m.name,
                    applied: old.clone(),
                    now: sum,
                });
            }
            report.already_applied.push(m.version);
            continue;
        }
        for statement in statements(m, cfg, features) {
            execute(&client, &statement)
                .await
                .map_err(|source| MigrateError::Statement {
                    version: m.version,
                    name: m.name,
                    statement: statement.clone(),
                    source,
                })?;
        }
        client
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at) VALUES ({}, '{}', '{}', now())",
                m.version, m.name, sum
            ))
            .execute()
            .await?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Features = Features {
        modern_ddl: false,
        insert_dedup: false,
    };
    const NEW: Features = Features {
        modern_ddl: true,
        insert_dedup: true,
    };

    #[test]
    fn every_placeholder_is_rendered() {
        for m in MIGRATIONS {
            for features in [OLD, NEW] {
                for s in render(m.sql, "db", features, 30) {
                    assert!(
                        !s.contains('{') || s.contains("'{}'"),
                        "{}: unrendered placeholder in {s}",
                        m.name
                    );
                    assert!(!s.contains("--"), "comments are stripped");
                }
            }
        }
    }

    #[test]
    fn old_servers_get_plain_ddl() {
        let events = render(MIGRATIONS[0].sql, "db", OLD, 30).join("\n");
        assert!(
            !events.contains("LowCardinality")
                && !events.contains("CODEC")
                && !events.contains("TTL")
        );
        let events = render(MIGRATIONS[0].sql, "db", NEW, 30).join("\n");
        assert!(events.contains("LowCardinality(String)"));
        assert!(events.contains("TTL timestamp + INTERVAL 30 DAY"));
        assert!(events.contains("non_replicated_deduplication_window"));
    }

    #[test]
    fn the_newest_level_views_select_what_code_fills_levels_with() {
        use hourglass_core::clickhouse::levels::{LEVELS, level_select};
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        for level in LEVELS {
            let head = format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS `db`.{}_mv ",
                level.table
            );
            let newest = MIGRATIONS
                .iter()
                .flat_map(|m| render(m.sql, "db", OLD, 0))
                .rfind(|s| s.starts_with(&head))
                .expect("the level's view");
            let want = format!(
                "SELECT {} FROM `db`.rollup_5m GROUP BY bucket_start, project_id, event, dimensions",
                level_select(level)
            );
            assert!(
                words(&newest).ends_with(&words(&want)),
                "{newest}\nshould end with\n{want}"
            );
        }
    }

    #[test]
    fn versions_are_increasing_and_checksums_stable() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(checksum("abc"), "e71fa2190541574b");
    }

    #[test]
    fn database_names_are_quoted() {
        let s = render(
            "CREATE TABLE {db}.t (x UInt8) ENGINE = Memory",
            "a`b",
            OLD,
            0,
        );
        assert_eq!(s, vec!["CREATE TABLE `a\\`b`.t (x UInt8) ENGINE = Memory"]);
    }
}
