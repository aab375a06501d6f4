//! Where Hourglass's tables live when `clickhouse.cluster` is set.
//!
//! The tables a source partition writes are sharded by that partition: each
//! is a Replicated table `<name>_local` on every server behind a Distributed
//! table `<name>` whose sharding key is the partition, so partition `p`'s
//! rows, and the checkpoint the same INSERT carries, always land on shard
//! `p mod shards` (shards weighted equally). Writers insert through the
//! Distributed table synchronously (`insert_distributed_sync`) with a quorum
//! of replicas, and read with `select_sequential_consistency`: a replica
//! that lacks an acknowledged insert refuses to answer instead of handing a
//! consumer an older checkpoint. Every other table (batch layer, deletions,
//! ledgers) is small and replicated to every server under one path, so a
//! query sent to any shard finds it locally.

use crate::clickhouse::errors::{Failure, classify};
use crate::config::ClickHouseConfig;

/// The sharded tables and their sharding keys. Tables materialized views
/// fill from a sharded table are sharded alike (their rows come from the
/// same INSERT); rows never inserted through their Distributed table get a
/// random key.
pub const SHARDED_TABLES: &[(&str, &str)] = &[
    ("events", "kafka_partition"),
    ("rollup_5m", "source_partition"),
    ("aggregator_progress", "partition_id"),
    ("loader_progress", "partition_id"),
    ("rollup_1h", "rand()"),
    ("rollup_1d", "rand()"),
    ("event_hours", "rand()"),
];

/// The Distributed sharding key of `table` when it is sharded.
pub fn sharding_key(table: &str) -> Option<&'static str> {
    SHARDED_TABLES
        .iter()
        .find(|(name, _)| *name == table)
        .map(|(_, key)| *key)
}

/// The local (per-shard) table behind a sharded table's Distributed one.
pub fn local_name(table: &str) -> String {
    format!("{table}_local")
}

/// The ZooKeeper folder of a database's replicated tables: one folder per
/// shard (named by the `{shard}` macro) for the sharded tables, and `all`
/// for the tables every server holds.
pub fn zookeeper_root(database: &str) -> String {
    format!("/clickhouse/hourglass/{database}")
}

/// The replication path of a sharded table's local table on `shard` (pass
/// `{shard}` for the macro in DDL).
pub fn sharded_replication_path(database: &str, shard: &str, table: &str) -> String {
    format!("{}/{shard}/{}", zookeeper_root(database), local_name(table))
}

/// A read whose answer decides what to write next (a checkpoint, a
/// progress mark, a landed check) failed or cannot be trusted yet.
#[derive(Debug, thiserror::Error)]
pub enum ConsistentReadError {
    #[error(transparent)]
    Read(#[from] clickhouse::error::Error),
    #[error(
        "a quorum INSERT into {table} on shard {shard} has not reached its quorum (a replica down?); \
         its part will become visible when it does, so progress read now would be behind it"
    )]
    QuorumPending { table: String, shard: String },
}

impl ConsistentReadError {
    /// A pending quorum settles by itself (the replica comes back and
    /// fetches the part): transient.
    pub fn failure(&self) -> Failure {
        match self {
            ConsistentReadError::Read(e) => classify(e),
            ConsistentReadError::QuorumPending { .. } => Failure::Transient,
        }
    }
}

/// Holds progress reads back while a quorum INSERT is pending on a cluster.
///
/// A quorum INSERT that fails (its second replica died, or the writer was
/// killed with a replica down) leaves its part on the replica that took it,
/// and ClickHouse does not roll it back: sequentially consistent reads hide
/// the part until the missing replica fetches it, then show it. A consumer
/// that read its checkpoint in between would write those rows again in
/// other blocks, which ZooKeeper's block deduplication does not recognise:
/// a double count once the part appears. So a checkpoint or progress read
/// counts only while no quorum INSERT into the tables is pending on any
/// shard (ZooKeeper's `<table>/quorum/status` node exists exactly then).
/// Waiting costs no availability: at that quorum the shard takes no other
/// INSERT until the replica is back either.
#[derive(Clone)]
pub struct QuorumGuard {
    client: clickhouse::Client,
    database: String,
    tables: &'static [&'static str],
}

impl QuorumGuard {
    /// None on one server (no quorum, nothing to wait for).
    pub fn new(
        cfg: &ClickHouseConfig,
        client: clickhouse::Client,
        tables: &'static [&'static str],
    ) -> Option<Self> {
        cfg.is_cluster().then(|| Self {
            client,
            database: cfg.database.clone(),
            tables,
        })
    }

    /// Ok when no quorum INSERT into the tables is pending on any shard.
    pub async fn settled(&self) -> Result<(), ConsistentReadError> {
        let shards: Vec<String> = self
            .client
            .query("SELECT name FROM system.zookeeper WHERE path = ? AND name != 'all'")
            .bind(zookeeper_root(&self.database))
            .fetch_all()
            .await?;
        for shard in &shards {
            for table in self.tables {
                let quorum = format!(
                    "{}/quorum",
                    sharded_replication_path(&self.database, shard, table)
                );
                let pending: u64 = self
                    .client
                    .query(
                        "SELECT count() FROM system.zookeeper WHERE path = ? AND name = 'status'",
                    )
                    .bind(quorum)
                    .fetch_one()
                    .await?;
                if pending > 0 {
                    return Err(ConsistentReadError::QuorumPending {
                        table: (*table).to_owned(),
                        shard: shard.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// What `ALTER TABLE … DELETE` must name to delete rows of `table`: the
/// table itself on one server; on a cluster, a sharded table's local tables
/// on every shard (a Distributed table takes no mutations; a replicated
/// table's mutation reaches its other replicas by itself).
pub fn mutation_target(cfg: &ClickHouseConfig, table: &str) -> String {
    if sharded_here(cfg, table) {
        format!(
            "`{}`.{} ON CLUSTER `{}`",
            cfg.database,
            local_name(table),
            cfg.cluster
        )
    } else {
        table.to_owned()
    }
}

/// The local table whose `system.mutations` rows show a mutation of
/// `table` (see [`mutation_target`]).
pub fn mutated_table(cfg: &ClickHouseConfig, table: &str) -> String {
    if sharded_here(cfg, table) {
        local_name(table)
    } else {
        table.to_owned()
    }
}

/// `table` is sharded on the configured target (a cluster, and a table of
/// [`SHARDED_TABLES`]).
fn sharded_here(cfg: &ClickHouseConfig, table: &str) -> bool {
    cfg.is_cluster() && sharding_key(table).is_some()
}

/// Settings every pipeline client sends on a cluster (none on one server).
pub fn writer_settings(cfg: &ClickHouseConfig) -> Vec<(&'static str, String)> {
    if !cfg.is_cluster() {
        return Vec::new();
    }
    vec![
        ("insert_distributed_sync", "1".into()),
        ("insert_quorum", cfg.insert_quorum.to_string()),
        (
            "insert_quorum_timeout",
            (u64::from(cfg.insert_quorum_timeout_secs) * 1000).to_string(),
        ),
        ("select_sequential_consistency", "1".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_of_sharded_tables_go_to_every_shard() {
        let mut cfg = ClickHouseConfig::default();
        assert_eq!(mutation_target(&cfg, "events"), "events");
        assert!(writer_settings(&cfg).is_empty());
        cfg.cluster = "hg".into();
        assert_eq!(
            mutation_target(&cfg, "events"),
            "`hourglass`.events_local ON CLUSTER `hg`"
        );
        assert_eq!(mutation_target(&cfg, "batch_lease"), "batch_lease");
        assert_eq!(mutated_table(&cfg, "rollup_5m"), "rollup_5m_local");
        assert_eq!(
            sharded_replication_path("hg", "{shard}", "events"),
            "/clickhouse/hourglass/hg/{shard}/events_local"
        );
        assert!(
            writer_settings(&cfg).contains(&("insert_quorum", "2".into())),
            "{:?}",
            writer_settings(&cfg)
        );
    }
}
