//! ClickHouse side of the aggregator: writing closed windows with their
//! checkpoint, reading checkpoints back, and settling a flush whose outcome
//! is unknown ([`settle`]).

mod settle;
mod takeover;

pub use settle::Settled;

use std::sync::Arc;

use clickhouse::{Client, Row};
use hourglass_core::clickhouse::cluster::{ConsistentReadError, QuorumGuard};
use serde::{Deserialize, Serialize};

use crate::window::{Checkpoint, ClosedWindows, RollupRow};

/// A `rollup_5m` row as sent (RowBinary, column order of the INSERT).
#[derive(Row, Serialize)]
struct Rollup5mRecord<'a> {
    window_start: u32,
    project_id: &'a str,
    event: &'a str,
    dimensions: &'a str,
    source_topic: &'a str,
    source_partition: u16,
    events: u64,
    users: u64,
    user_hashes: &'a [u64],
    value_count: u64,
    value_sum: f64,
    value_min: f64,
    value_max: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    hist_values: &'a [u64],
    hist_counts: &'a [u64],
    resume_offset: i64,
    watermark_ms: i64,
}

/// A `late_events` row.
#[derive(Row, Serialize)]
struct LateEventRecord<'a> {
    hour: u32,
    project_id: &'a str,
    event: &'a str,
    source_topic: &'a str,
    source_partition: u16,
    source_offset: i64,
}

#[derive(Row, Deserialize)]
struct CheckpointRecord {
    partition_id: u16,
    resume_offset: i64,
    watermark_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing {rows} rollup rows of partition {partition} failed: {source}")]
    Write {
        partition: i32,
        rows: usize,
        source: Arc<clickhouse::error::Error>,
    },
    /// An INSERT carrying this partition's rows with other partitions'
    /// failed: whatever the error, the partition is settled and written on
    /// its own before a refusal is believed, so a refusal names its partition.
    #[error(
        "the flush INSERT carrying partition {partition} with {others} other partitions failed: {source}"
    )]
    SharedWrite {
        partition: i32,
        others: usize,
        source: Arc<clickhouse::error::Error>,
    },
    #[error("reading checkpoints of topic {topic} failed: {source}")]
    ReadCheckpoints {
        topic: String,
        source: ConsistentReadError,
    },
    #[error("settling the last flush of partition {partition}: {what}: {source}")]
    Settle {
        partition: i32,
        what: &'static str,
        source: ConsistentReadError,
    },
    #[error("resetting the checkpoint of {topic} partition {partition} failed: {reason}")]
    ResetCheckpoint {
        topic: String,
        partition: i32,
        reason: String,
    },
}

impl SinkError {
    /// What the failure means: retry, or stop (see [`Failure`]).
    pub fn failure(&self) -> hourglass_core::clickhouse::errors::Failure {
        use hourglass_core::clickhouse::errors::{Failure, classify};
        match self {
            SinkError::Write { source, .. } => classify(source),
            SinkError::SharedWrite { .. } => Failure::Transient,
            SinkError::ReadCheckpoints { source, .. } | SinkError::Settle { source, .. } => {
                source.failure()
            }
            SinkError::ResetCheckpoint { .. } => Failure::Transient,
        }
    }
}

/// Writes rollups of one source topic.
#[derive(Clone)]
pub struct RollupSink {
    client: Client,
    topic: String,
    quorum: Option<QuorumGuard>,
    /// How far before a checkpoint's watermark the next flush's windows may
    /// start: a window, the grace and a day of margin.
    lookback_secs: i64,
}

fn lookback_secs(window_secs: u32, grace_secs: u32) -> i64 {
    i64::from(window_secs) + i64::from(grace_secs) + 86_400
}

/// Rows up to which the server reads a flush's INSERT as one block.
const ONE_BLOCK_ROWS: &str = "1000000000000";

/// Rows up to which a flush packs partitions into one INSERT: a block is
/// held whole in the server's memory (with its views' blocks), and a history
/// import flushes a month per partition.
pub const FLUSH_INSERT_ROWS: usize = 200_000;

/// Consecutive groups of `sizes`' indices, each summing to at most `limit`
/// unless one size alone passes it (then it is a group of its own).
fn pack_by_rows(
    sizes: impl IntoIterator<Item = usize>,
    limit: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut sum, mut end) = (0, 0, 0);
    for size in sizes {
        if end > start && sum + size > limit {
            groups.push(start..end);
            (start, sum) = (end, 0);
        }
        sum += size;
        end += 1;
    }
    if end > start {
        groups.push(start..end);
    }
    groups
}

/// The tables whose pending quorum INSERTs a checkpoint read waits for.
pub const CHECKPOINT_TABLES: &[&str] = &["rollup_5m", "aggregator_progress"];

impl RollupSink {
    pub fn new(client: Client, topic: impl Into<String>) -> Self {
        Self {
            client,
            topic: topic.into(),
            quorum: None,
            lookback_secs: lookback_secs(300, 60),
        }
    }

    /// The window and grace the flushes are closed with (for
    /// [`RollupSink::start_positions`]; defaults: 300 s and 60 s).
    pub fn with_window(mut self, window_secs: u32, grace_secs: u32) -> Self {
        self.lookback_secs = lookback_secs(window_secs, grace_secs);
        self
    }

    /// On a cluster: read checkpoints only while no quorum INSERT is
    /// pending ([`QuorumGuard`]).
    pub fn with_quorum_guard(mut self, guard: Option<QuorumGuard>) -> Self {
        self.quorum = guard;
        self
    }

    /// One INSERT holding every closed window of one partition plus its
    /// checkpoint (the progress view derives the checkpoint row from it),
    /// after the late records read before it. Rewriting late records after a
    /// restart is harmless: `late_events` counts each (partition, offset) once.
    pub async fn write(&self, partition: i32, closed: &ClosedWindows) -> Result<(), SinkError> {
        self.insert_flush(&[(partition, closed)])
            .await
            .map_err(|source| SinkError::Write {
                partition,
                rows: closed.rows.len(),
                source: Arc::new(source),
            })
    }

    /// A flush of many partitions: their rows packed into as few INSERTs as
    /// [`FLUSH_INSERT_ROWS`] allows (one partition's rows never split), sent
    /// at once. Each partition's rows carry its own checkpoint, and each
    /// table takes an INSERT as one part per month, so what landed is still
    /// told apart per partition ([`RollupSink::settle`]). Eight INSERTs a
    /// flush, each with its parts in four tables, cost ClickHouse more than
    /// the rows did. Returns each batch's outcome, in order: a failed INSERT
    /// fails each of its partitions with [`SinkError::SharedWrite`] when it
    /// carried several, [`SinkError::Write`] when it carried one.
    pub async fn write_flush(
        &self,
        batches: &[(i32, ClosedWindows)],
    ) -> Vec<Result<(), SinkError>> {
        let groups = pack_by_rows(batches.iter().map(|(_, c)| c.rows.len()), FLUSH_INSERT_ROWS);
        let outcomes = futures::future::join_all(groups.iter().map(|group| async move {
            let members: Vec<(i32, &ClosedWindows)> = batches[group.clone()]
                .iter()
                .map(|(p, closed)| (*p, closed))
                .collect();
            self.insert_flush(&members).await.map_err(Arc::new)
        }))
        .await;
        let mut results = Vec::with_capacity(batches.len());
        for (group, outcome) in groups.into_iter().zip(outcomes) {
            let shared_by = group.len();
            for (partition, closed) in &batches[group] {
                results.push(outcome.as_ref().map(|_| ()).map_err(|source| {
                    let (partition, source) = (*partition, Arc::clone(source));
                    if shared_by > 1 {
                        SinkError::SharedWrite {
                            partition,
                            others: shared_by - 1,
                            source,
                        }
                    } else {
                        SinkError::Write {
                            partition,
                            rows: closed.rows.len(),
                            source,
                        }
                    }
                }));
            }
        }
        results
    }

    /// The late records of `batches` in one INSERT, then their rows in one
    /// more.
    async fn insert_flush(
        &self,
        batches: &[(i32, &ClosedWindows)],
    ) -> Result<(), clickhouse::error::Error> {
        if batches.iter().any(|(_, c)| !c.late.is_empty()) {
            let mut insert = self
                .client
                .insert::<LateEventRecord<'_>>("late_events")
                .await?;
            for (partition, closed) in batches {
                for late in &closed.late {
                    insert
                        .write(&LateEventRecord {
                            hour: late.hour.clamp(0, i64::from(u32::MAX)) as u32,
                            project_id: &late.project_id,
                            event: &late.event,
                            source_topic: &self.topic,
                            source_partition: *partition as u16,
                            source_offset: late.offset,
                        })
                        .await?;
                }
            }
            insert.end().await?;
        }
        if batches.iter().all(|(_, c)| c.rows.is_empty()) {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(batches.iter().map(|(_, c)| c.rows.len()).sum());
        for (partition, closed) in batches {
            for row in &closed.rows {
                rows.push((*partition, row, closed.checkpoint));
            }
        }
        self.write_rows(&rows).await
    }

    /// One INSERT into `rollup_5m` of `rows`, each carrying its partition's
    /// checkpoint, read by the server as one block: it cuts an INSERT into
    /// blocks of `max_insert_block_size` rows (a million) and fires the
    /// views per block, so a flush of more rows could land half in a view.
    /// One block lands in each table as one part per month, which [`settle`]
    /// checks.
    async fn write_rows(
        &self,
        rows: &[(i32, &RollupRow, Checkpoint)],
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert::<Rollup5mRecord<'_>>("rollup_5m")
            .await?
            .with_setting("max_insert_block_size", ONE_BLOCK_ROWS);
        for &(partition, row, cp) in rows {
            insert.write(&self.record(partition, row, cp)).await?;
        }
        insert.end().await
    }

    fn record<'a>(
        &'a self,
        partition: i32,
        row: &'a RollupRow,
        cp: Checkpoint,
    ) -> Rollup5mRecord<'a> {
        Rollup5mRecord {
            window_start: (row.window_start_ms / 1000) as u32,
            project_id: &row.project_id,
            event: &row.event,
            dimensions: &row.dimensions,
            source_topic: &self.topic,
            source_partition: partition as u16,
            events: row.events,
            users: row.users,
            user_hashes: &row.user_hashes,
            value_count: row.value_count,
            value_sum: row.value_sum,
            value_min: row.value_min,
            value_max: row.value_max,
            p50: row.p50,
            p90: row.p90,
            p95: row.p95,
            p99: row.p99,
            hist_values: &row.hist_values,
            hist_counts: &row.hist_counts,
            resume_offset: cp.resume_offset,
            watermark_ms: cp.watermark_ms,
        }
    }

    /// The latest checkpoint of every partition that has flushed, from the
    /// small progress table (never a scan of `rollup_5m`).
    pub async fn checkpoints(&self) -> Result<Vec<(i32, Checkpoint)>, SinkError> {
        let failed = |source| SinkError::ReadCheckpoints {
            topic: self.topic.clone(),
            source,
        };
        if let Some(guard) = &self.quorum {
            guard.settled().await.map_err(failed)?;
        }
        let rows: Vec<CheckpointRecord> = self
            .client
            .query(
                "SELECT partition_id, max(checkpoint_offset) AS resume, max(checkpoint_watermark_ms) AS wm \
                 FROM aggregator_progress WHERE topic = ? GROUP BY partition_id",
            )
            .bind(&self.topic)
            .fetch_all()
            .await
            .map_err(|e| failed(e.into()))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    i32::from(r.partition_id),
                    Checkpoint {
                        resume_offset: r.resume_offset,
                        watermark_ms: r.watermark_ms,
                    },
                )
            })
            .collect())
    }
}

impl RollupSink {
    /// Replace a partition's checkpoint (operator's repair, with the
    /// aggregator stopped): a watermark poisoned by events dated far ahead
    /// (before event times were bounded) would otherwise hold every later
    /// event of the partition late for ever, since the checkpoint is the
    /// largest ever written. The partition's progress rows are deleted
    /// (waiting for the mutation) and one row with `to` is written.
    pub async fn reset_checkpoint(
        &self,
        ch: &hourglass_core::config::ClickHouseConfig,
        partition: i32,
        to: Checkpoint,
    ) -> Result<(), SinkError> {
        use hourglass_core::clickhouse::cluster::{mutated_table, mutation_target};
        let fail = |reason: String| SinkError::ResetCheckpoint {
            topic: self.topic.clone(),
            partition,
            reason,
        };
        let partition_id =
            u16::try_from(partition).map_err(|_| fail("no such partition".into()))?;
        self.client
            .query(&format!(
                "ALTER TABLE {} DELETE WHERE topic = ? AND partition_id = ?",
                mutation_target(ch, "aggregator_progress")
            ))
            .bind(&self.topic)
            .bind(partition_id)
            .execute()
            .await
            .map_err(|e| fail(format!("deleting its progress rows: {e}")))?;
        let limit = std::time::Duration::from_secs(120);
        let done = hourglass_core::clickhouse::mutations_done(
            &self.client,
            &mutated_table(ch, "aggregator_progress"),
            limit,
        )
        .await
        .map_err(|e| fail(format!("waiting for the deletion: {e}")))?;
        if !done {
            return Err(fail("the deletion has not finished after 120 s".into()));
        }
        self.record_progress(partition, to, 0, 0)
            .await
            .map_err(|e| fail(e.to_string()))
    }
}

impl hourglass_core::kafka::assign::StartPositions for RollupSink {
    type Position = Checkpoint;

    async fn read(&self, assigned: &[i32]) -> Result<Vec<(i32, Checkpoint)>, String> {
        self.start_positions(assigned)
            .await
            .map_err(|e| e.to_string())
    }

    fn next_offset(position: &Checkpoint) -> i64 {
        position.resume_offset
    }
}

#[cfg(test)]
mod tests {
    use super::pack_by_rows;

    #[test]
    fn partitions_are_packed_in_order_up_to_the_limit() {
        assert_eq!(pack_by_rows([3, 4, 2, 5, 1], 7), vec![0..2, 2..4, 4..5]);
        assert_eq!(pack_by_rows([7, 7], 7), vec![0..1, 1..2]);
        assert_eq!(pack_by_rows([0, 0, 0], 7), vec![0..3]);
        assert!(pack_by_rows([], 7).is_empty());
    }

    #[test]
    fn a_partition_larger_than_the_limit_goes_alone() {
        assert_eq!(pack_by_rows([2, 9, 2], 7), vec![0..1, 1..2, 2..3]);
        assert_eq!(pack_by_rows([9], 7), vec![0..1]);
    }
}
