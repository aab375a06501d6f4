//! Migrations rendered for a ClickHouse cluster (`clickhouse.cluster`).
//!
//! The migration files describe one server; on a cluster each statement is
//! rewritten as [`hourglass_core::clickhouse::cluster`] lays the tables out:
//! a sharded table becomes `<name>_local` (Replicated, `ON CLUSTER`, under
//! `/clickhouse/hourglass/<db>/{shard}/<name>_local`) plus a Distributed
//! table `<name>` sharded by its source partition; every other table becomes
//! Replicated under one path for all servers
//! (`/clickhouse/hourglass/<db>/all/<name>`), so each server holds all of it.
//! Materialized views read and fill the local tables (an INSERT through a
//! Distributed table arrives at the shard's local table, where its views
//! fire); views and the readers keep the names they use on one server.

use hourglass_core::clickhouse::cluster::{
    local_name, sharded_replication_path, sharding_key, zookeeper_root,
};

/// One rendered single-server statement as the statements a cluster runs.
pub fn rewrite(statement: &str, database: &str, cluster: &str) -> Vec<String> {
    let db = super::quote_ident(database);
    let on = format!(" ON CLUSTER {}", super::quote_ident(cluster));
    let qualified = format!("{db}.");
    let after = |prefix: &str| -> Option<(String, String)> {
        let rest = statement.strip_prefix(prefix)?.strip_prefix(&qualified)?;
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        Some((rest[..end].to_owned(), rest[end..].to_owned()))
    };
    let distributed = |table: &str, key: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table}{on} AS {db}.{local} \
             ENGINE = Distributed({cl}, {dbl}, {local_lit}, {key})",
            local = local_name(table),
            cl = literal(cluster),
            dbl = literal(database),
            local_lit = literal(&local_name(table)),
        )
    };

    if let Some((table, rest)) = after("CREATE TABLE IF NOT EXISTS ") {
        return match sharding_key(&table) {
            Some(key) => {
                let local = local_name(&table);
                let path = sharded_replication_path(database, "{shard}", &table);
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{local}{on}{}",
                        replicated(&rest, &path)
                    ),
                    distributed(&table, key),
                ]
            }
            None => {
                let path = format!("{}/all/{table}", zookeeper_root(database));
                vec![format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{table}{on}{}",
                    replicated(&rest, &path)
                )]
            }
        };
    }
    if let Some((view, rest)) = after("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
        // Both ends local: `TO db.target AS SELECT ... FROM db.source`.
        let mut body = rest;
        for (table, _) in hourglass_core::clickhouse::cluster::SHARDED_TABLES {
            body = replace_table(&body, &qualified, table, &local_name(table));
        }
        return vec![format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view}{on}{body}"
        )];
    }
    if let Some((view, rest)) = after("CREATE VIEW IF NOT EXISTS ") {
        return vec![format!("CREATE VIEW IF NOT EXISTS {db}.{view}{on}{rest}")];
    }
    if let Some((table, rest)) = after("DROP TABLE IF EXISTS ") {
        return vec![format!("DROP TABLE IF EXISTS {db}.{table}{on}{rest}")];
    }
    if let Some((table, rest)) = after("ALTER TABLE ") {
        return match sharding_key(&table) {
            // A Distributed table takes no ALTER ON CLUSTER on a replicated
            // cluster: it is created again over the altered local table.
            Some(key) => vec![
                format!("ALTER TABLE {db}.{}{on}{rest}", local_name(&table)),
                format!("DROP TABLE IF EXISTS {db}.{table}{on}"),
                distributed(&table, key),
            ],
            // A replicated table's ALTER reaches every replica by itself.
            None => vec![statement.to_owned()],
        };
    }
    if statement.starts_with("CREATE DATABASE IF NOT EXISTS ") {
        return vec![format!("{statement}{on}")];
    }
    vec![statement.to_owned()]
}

/// `ENGINE = XMergeTree(args)` → `ENGINE = ReplicatedXMergeTree('path', '{replica}', args)`.
fn replicated(definition: &str, path: &str) -> String {
    const ENGINE: &str = "ENGINE = ";
    let Some(at) = definition.find(ENGINE) else {
        return definition.to_owned();
    };
    let engine_start = at + ENGINE.len();
    let rest = &definition[engine_start..];
    let Some(open) = rest.find('(') else {
        return definition.to_owned();
    };
    let close = open + rest[open..].find(')').unwrap_or(rest.len() - open);
    let name = rest[..open].trim();
    let args = rest[open + 1..close].trim();
    let mut new_args = format!("{}, '{{replica}}'", literal(path));
    if !args.is_empty() {
        new_args.push_str(", ");
        new_args.push_str(args);
    }
    format!(
        "{}Replicated{name}({new_args}){}",
        &definition[..engine_start],
        &rest[close + 1..]
    )
}

/// `db.table` → `db.new` wherever `table` is a whole name.
fn replace_table(text: &str, qualified: &str, table: &str, new: &str) -> String {
    let from = format!("{qualified}{table}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&from) {
        let end = at + from.len();
        let whole = rest[end..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        out.push_str(&rest[..at]);
        out.push_str(
            if whole {
                format!("{qualified}{new}")
            } else {
                from.clone()
            }
            .as_str(),
        );
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Features, MIGRATIONS, render};

    fn all(features: Features) -> Vec<String> {
        MIGRATIONS
            .iter()
            .flat_map(|m| render(m.sql, "hg", features, 30))
            .flat_map(|s| rewrite(&s, "hg", "prod"))
            .collect()
    }

    #[test]
    fn every_statement_runs_on_the_cluster_and_every_table_is_replicated() {
        for features in [
            Features {
                modern_ddl: false,
                insert_dedup: false,
            },
            Features {
                modern_ddl: true,
                insert_dedup: true,
            },
        ] {
            for s in all(features) {
                let plain_alter = s.starts_with("ALTER TABLE `hg`.deletions ");
                // Data, not schema: through the Distributed tables.
                let backfill = s.starts_with("INSERT INTO `hg`.rollup_1");
                assert!(
                    s.contains(" ON CLUSTER `prod`") || plain_alter || backfill,
                    "not on the cluster: {s}"
                );
                if s.starts_with("CREATE TABLE") {
                    assert!(
                        s.contains("ENGINE = Replicated") || s.contains("ENGINE = Distributed("),
                        "{s}"
                    );
                }
            }
        }
    }

    #[test]
    fn sharded_tables_are_local_replicas_behind_distributed_ones() {
        let statements = all(Features {
            modern_ddl: false,
            insert_dedup: false,
        });
        let find = |prefix: &str| {
            statements
                .iter()
                .find(|s| s.starts_with(prefix))
                .unwrap_or_else(|| panic!("no statement starts with {prefix}"))
                .clone()
        };
        let local = find("CREATE TABLE IF NOT EXISTS `hg`.rollup_5m_local ON CLUSTER `prod`");
        assert!(
            local.contains(
                "ENGINE = ReplicatedMergeTree('/clickhouse/hourglass/hg/{shard}/rollup_5m_local', '{replica}')"
            ),
            "{local}"
        );
        assert_eq!(
            find("CREATE TABLE IF NOT EXISTS `hg`.rollup_5m ON CLUSTER"),
            "CREATE TABLE IF NOT EXISTS `hg`.rollup_5m ON CLUSTER `prod` AS `hg`.rollup_5m_local \
             ENGINE = Distributed('prod', 'hg', 'rollup_5m_local', source_partition)"
        );
        let progress = find("CREATE TABLE IF NOT EXISTS `hg`.aggregator_progress_local");
        assert!(
            progress.contains(
                "ReplicatedReplacingMergeTree('/clickhouse/hourglass/hg/{shard}/aggregator_progress_local', '{replica}', checkpoint_offset)"
            ),
            "{progress}"
        );
        let mv = find("CREATE MATERIALIZED VIEW IF NOT EXISTS `hg`.rollup_1h_mv");
        assert!(
            mv.contains("TO `hg`.rollup_1h_local AS") && mv.contains("FROM `hg`.rollup_5m_local"),
            "{mv}"
        );
        let lease = find("CREATE TABLE IF NOT EXISTS `hg`.batch_lease");
        assert!(
            lease.contains(
                "ReplicatedMergeTree('/clickhouse/hourglass/hg/all/batch_lease', '{replica}')"
            ),
            "{lease}"
        );
        // The tenant column: on every shard's local table, then the
        // Distributed table again over it.
        let i = statements
            .iter()
            .position(|s| {
                s.starts_with(
                    "ALTER TABLE `hg`.events_local ON CLUSTER `prod` ADD COLUMN tenant_id",
                )
            })
            .expect("tenant column");
        assert_eq!(
            statements[i + 1],
            "DROP TABLE IF EXISTS `hg`.events ON CLUSTER `prod`"
        );
        assert!(statements[i + 2].starts_with("CREATE TABLE IF NOT EXISTS `hg`.events ON CLUSTER"));
        let view = find("CREATE VIEW IF NOT EXISTS `hg`.metrics_1h ON CLUSTER `prod` AS");
        assert!(view.contains("FROM `hg`.rollup_1h"), "{view}");
    }
}
