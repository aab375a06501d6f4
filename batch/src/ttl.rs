//! Retention as table TTLs, on servers that have them (21.8 and later), kept
//! in sync with the configuration by each retention pass.
//!
//! The pass's own deletions (`crate::retention`) are exact and work on every
//! server; a TTL makes ClickHouse drop expired rows during its merges as
//! well, so a server whose retention pass stopped running does not keep
//! data past its days. Each table's TTL is one expression over its project
//! column (and, for `batch_rollups`, its period) giving each project's days
//! by the same rule as the pass (a day counts from midnight UTC; 0 keeps
//! forever, written as [`FOREVER_DAYS`]). A pass reads each table's TTL from
//! `system.tables` and changes only those that differ, with
//! `materialize_ttl_after_modify = 0`: the change is metadata only (no part
//! is rewritten; the pass's deletions deal with rows already stored).

use clickhouse::Client;
use hourglass_core::Config;
use hourglass_core::clickhouse::ServerVersion;
use hourglass_core::clickhouse::cluster::{mutated_table, mutation_target};
use hourglass_core::config::RetentionDays;

use crate::BatchError;
use crate::retention::Store;

/// Days a TTL gives a project that keeps its rows forever: a Date can hold
/// today plus this (Dates end in 2149).
pub const FOREVER_DAYS: u32 = 36_500;

/// A table's TTL as it is and as the configuration wants it (None: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlChange {
    pub table: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A table a TTL is kept on: its time column, and the stores whose days
/// apply with the condition that tells their rows apart (`batch_rollups`
/// holds three levels, told apart by period).
pub struct TtlTable {
    pub name: &'static str,
    pub column: &'static str,
    pub levels: Vec<(Store, &'static str)>,
}

/// Every table a retention pass deletes from ([`Store::tables`]), once.
pub fn tables() -> Vec<TtlTable> {
    let mut out: Vec<TtlTable> = Vec::new();
    for store in Store::ALL {
        for &(name, column, condition) in store.tables() {
            let level = (store, condition.trim_end_matches(" AND "));
            match out.iter_mut().find(|t| t.name == name) {
                Some(table) => table.levels.push(level),
                None => out.push(TtlTable {
                    name,
                    column,
                    levels: vec![level],
                }),
            }
        }
    }
    out
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Days of `store` per project as a SQL expression over `project_id`; None
/// when every project keeps forever.
fn days_by_project(cfg: &Config, store: Store) -> Option<String> {
    let cap = |days: u32| -> u32 {
        // Raw events: never longer than the older global TTL.
        let global = cfg.clickhouse.events_retention_days;
        match (store, days, global) {
            (Store::Raw, 0, g) if g > 0 => g,
            (Store::Raw, d, g) if g > 0 => d.min(g),
            (_, d, _) => d,
        }
    };
    let of = |d: &RetentionDays| cap(store.days(d));
    let default = of(&cfg.retention.defaults());
    let listed: Vec<(&String, u32)> = cfg
        .projects
        .iter()
        .map(|(id, p)| (id, of(&cfg.retention.of(p))))
        .collect();
    if default == 0 && listed.iter().all(|(_, d)| *d == 0) {
        return None;
    }
    let days = |d: u32| if d == 0 { FOREVER_DAYS } else { d }.to_string();
    // Only projects whose days differ from the default need a branch.
    let branches: Vec<String> = listed
        .iter()
        .filter(|(_, d)| *d != default)
        .map(|(id, d)| format!("project_id = {}, {}", quote(id), days(*d)))
        .collect();
    Some(if branches.is_empty() {
        days(default)
    } else {
        format!("multiIf({}, {})", branches.join(", "), days(default))
    })
}

/// The TTL `table` should have (None: none).
pub fn wanted(cfg: &Config, table: &str) -> Option<String> {
    let table = tables().into_iter().find(|t| t.name == table)?;
    let days = match &table.levels[..] {
        [(store, _)] => days_by_project(cfg, *store)?,
        levels => {
            let days: Vec<_> = levels
                .iter()
                .map(|(store, _)| days_by_project(cfg, *store))
                .collect();
            if days.iter().all(Option::is_none) {
                return None;
            }
            // multiIf(level 1, days 1, level 2, days 2, …, last level's days).
            let mut arms: Vec<String> = Vec::new();
            for (i, ((_, condition), days)) in levels.iter().zip(days).enumerate() {
                let days = days.unwrap_or_else(|| FOREVER_DAYS.to_string());
                if i + 1 < levels.len() {
                    arms.push(condition.to_string());
                }
                arms.push(days);
            }
            format!("multiIf({})", arms.join(", "))
        }
    };
    let column = table.column;
    // Kept through the day `days` after the row's: expired from the
    // midnight that makes it older than the pass's cutoff.
    Some(format!("toDate({column}) + toIntervalDay({days} + 1)"))
}

/// The TTL clause of a table's `engine_full` (None: none).
pub fn current(engine_full: &str) -> Option<String> {
    let (_, rest) = engine_full.split_once(" TTL ")?;
    let ttl = rest.split(" SETTINGS ").next().unwrap_or(rest);
    Some(ttl.trim().to_owned())
}

/// Whether two TTL expressions are the same, as ClickHouse prints them
/// (spacing aside).
fn same(a: &str, b: &str) -> bool {
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    squeeze(a) == squeeze(b)
}

/// The changes that bring tables whose `engine_full` is given to the
/// configured retention.
pub fn changes(cfg: &Config, engines: &[(&'static str, String)]) -> Vec<TtlChange> {
    engines
        .iter()
        .filter_map(|(table, engine)| {
            let (from, to) = (current(engine), wanted(cfg, table));
            let in_sync = match (&from, &to) {
                (Some(a), Some(b)) => same(a, b),
                (None, None) => true,
                _ => false,
            };
            (!in_sync).then_some(TtlChange { table, from, to })
        })
        .collect()
}

/// The statement that makes one change.
pub fn statement(cfg: &Config, change: &TtlChange) -> String {
    let target = mutation_target(&cfg.clickhouse, change.table);
    match &change.to {
        Some(ttl) => format!("ALTER TABLE {target} MODIFY TTL {ttl}"),
        None => format!("ALTER TABLE {target} REMOVE TTL"),
    }
}

/// Bring every table's TTL in line with the configuration (or, dry, say
/// what would change). Nothing on a server without TTLs.
pub async fn sync(
    cfg: &Config,
    client: &Client,
    dry_run: bool,
) -> Result<Vec<TtlChange>, BatchError> {
    if !ServerVersion::query(client).await?.has_modern_ddl() {
        return Ok(Vec::new());
    }
    let mut engines = Vec::new();
    for TtlTable { name: table, .. } in tables() {
        let engine: String = client
            .query(
                "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = ?",
            )
            .bind(mutated_table(&cfg.clickhouse, table))
            .fetch_one()
            .await?;
        engines.push((table, engine));
    }
    let changes = changes(cfg, &engines);
    if dry_run {
        return Ok(changes);
    }
    let client = client
        .clone()
        .with_setting("materialize_ttl_after_modify", "0");
    for change in &changes {
        client.query(&statement(cfg, change)).execute().await?;
        tracing::info!(table = change.table, from = ?change.from, to = ?change.to, "retention: table TTL changed");
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_core::config::ProjectConfig;

    fn config() -> Config {
        let mut cfg = Config::default();
        cfg.retention.raw_days = 30;
        cfg.retention.rollup_1h_days = 400;
        let acme = ProjectConfig {
            raw_days: Some(3),
            rollup_5m_days: Some(7),
            ..ProjectConfig::default()
        };
        cfg.projects.insert("acme".into(), acme);
        cfg.projects
            .insert("globex".into(), ProjectConfig::default());
        cfg
    }

    #[test]
    fn each_table_gets_its_projects_days() {
        let cfg = config();
        assert_eq!(
            wanted(&cfg, "events").unwrap(),
            "toDate(timestamp) + toIntervalDay(multiIf(project_id = 'acme', 3, 30) + 1)"
        );
        assert_eq!(
            wanted(&cfg, "rollup_5m").unwrap(),
            "toDate(window_start) + toIntervalDay(multiIf(project_id = 'acme', 7, 36500) + 1)"
        );
        assert_eq!(
            wanted(&cfg, "rollup_1h").unwrap(),
            "toDate(bucket_start) + toIntervalDay(400 + 1)"
        );
        assert_eq!(wanted(&cfg, "rollup_1d"), None, "forever everywhere");
        assert_eq!(
            wanted(&cfg, "batch_rollups").unwrap(),
            "toDate(bucket_start) + toIntervalDay(multiIf(period_secs = 300, multiIf(project_id = 'acme', 7, 36500), period_secs = 3600, 400, 36500) + 1)"
        );
    }

    #[test]
    fn only_tables_out_of_line_change() {
        let cfg = config();
        let engine = |ttl: Option<String>| match ttl {
            Some(t) => format!("MergeTree ORDER BY (a) TTL {t} SETTINGS index_granularity = 8192"),
            None => "MergeTree ORDER BY (a) SETTINGS index_granularity = 8192".to_owned(),
        };
        let in_sync: Vec<(&'static str, String)> = tables()
            .iter()
            .map(|t| (t.name, engine(wanted(&cfg, t.name))))
            .collect();
        assert!(changes(&cfg, &in_sync).is_empty());
        let mut later = cfg.clone();
        later.projects.get_mut("acme").unwrap().raw_days = Some(5);
        later.retention.rollup_1h_days = 0;
        let changed = changes(&later, &in_sync);
        let tables: Vec<_> = changed.iter().map(|c| c.table).collect();
        assert_eq!(tables, vec!["events", "batch_rollups", "rollup_1h"]);
        assert_eq!(
            statement(&later, &changed[2]),
            "ALTER TABLE rollup_1h REMOVE TTL"
        );
        assert_eq!(
            current("MergeTree ORDER BY x TTL toDate(t) + toIntervalDay(3 + 1) SETTINGS a = 1"),
            Some("toDate(t) + toIntervalDay(3 + 1)".into())
        );
    }
}
