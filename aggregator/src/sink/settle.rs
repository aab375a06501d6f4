//! What a flush whose INSERT failed left behind, made whole.
//!
//! ClickHouse has no transaction over a table and its materialized views: it
//! writes an INSERT's part of `rollup_5m` first, then the part of each view
//! (`aggregator_progress`, `rollup_1d`, `rollup_1h`) one after the other, and
//! keeps what it wrote when it dies in between. So after a failed flush,
//! `rollup_5m` may hold it while `rollup_1h` does not; writing the flush
//! again would count it twice in `rollup_5m`, and trusting the checkpoint
//! alone leaves the hour short. Instead, each table is checked for this
//! flush (every row of a flush carries its watermark, strictly larger than
//! the partition's previous flush's) and only what is missing is written:
//!
//! - `rollup_5m` rows: compared by key with the flush's rows. Missing rows
//!   (a month's part not written; all of them when nothing landed) go out
//!   in a new INSERT, whose views take them.
//! - `rollup_1h` / `rollup_1d`: each bucket the flush reached in `rollup_5m`
//!   compares this source's events in the level (`source_events_state`)
//!   with `rollup_5m`'s. Short by exactly the flush's events: the bucket is
//!   filled from the flush's `rollup_5m` rows, with the views' own SELECT.
//! - `aggregator_progress`: written directly when no new INSERT carries it.
//!
//! Only this consumer writes its partition's rows while it holds the
//! partition, so the comparison is not racing another writer.

use std::collections::{HashMap, HashSet};

use clickhouse::Row;
use hourglass_core::clickhouse::levels::{self, Level};
use serde::Deserialize;

use super::{RollupSink, SinkError};
use crate::window::{Checkpoint, ClosedWindows, RollupRow};

/// What [`RollupSink::settle`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// None of the flush is in `rollup_5m` (and so in none of its views):
    /// write it again.
    NotLanded,
    /// All of it landed.
    Landed,
    /// Part of it landed; the rest is written now.
    Repaired(Repairs),
}

/// What a settle wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repairs {
    /// `rollup_5m` rows written again (with their views).
    pub rows: usize,
    /// Buckets of `rollup_1h` and `rollup_1d` filled from `rollup_5m`.
    pub hourly_buckets: usize,
    pub daily_buckets: usize,
    /// The checkpoint row written directly.
    pub progress: bool,
    /// Buckets whose numbers matched neither "has the flush" nor "lacks
    /// it" (someone else wrote or deleted this source's rows meanwhile):
    /// left as they are, logged.
    pub unverified_buckets: usize,
}

impl Repairs {
    pub(super) fn is_empty(&self) -> bool {
        *self == Repairs::default()
    }

    pub(super) fn record(&self, partition: i32) {
        for (table, n) in [
            ("rollup_5m", self.rows),
            ("rollup_1h", self.hourly_buckets),
            ("rollup_1d", self.daily_buckets),
            ("aggregator_progress", usize::from(self.progress)),
        ] {
            if n > 0 {
                metrics::counter!(crate::metrics::FLUSH_REPAIRS, "table" => table)
                    .increment(n as u64);
            }
        }
        if self.unverified_buckets > 0 {
            metrics::counter!(crate::metrics::FLUSH_UNVERIFIED)
                .increment(self.unverified_buckets as u64);
        }
        tracing::warn!(
            partition,
            repairs = ?self,
            "a failed flush had landed in part; wrote the rest"
        );
    }
}

/// A `rollup_5m` row's identity within one flush.
type RowKey = (u32, String, String, String);

#[derive(Row, Deserialize)]
struct LandedRow {
    window_start: u32,
    project_id: String,
    event: String,
    dimensions: String,
}

/// One bucket of a level, as `rollup_5m` and the level see this source.
struct BucketEvents {
    bucket: u32,
    /// All of this source's events in the bucket, per `rollup_5m`.
    in_rollup_5m: u64,
    /// Those of this flush.
    of_flush: u64,
    /// This source's events the level holds.
    in_level: u64,
}

impl RollupSink {
    /// Check, after a failed flush of `partition`, which tables it reached,
    /// and write what is missing.
    pub async fn settle(
        &self,
        partition: i32,
        closed: &ClosedWindows,
    ) -> Result<Settled, SinkError> {
        let failed = |what: &'static str| {
            move |source: clickhouse::error::Error| SinkError::Settle {
                partition,
                what,
                source: source.into(),
            }
        };
        if let Some(guard) = &self.quorum {
            guard.settled().await.map_err(|source| SinkError::Settle {
                partition,
                what: "waiting for pending quorum inserts",
                source,
            })?;
        }
        let watermark = closed.checkpoint.watermark_ms;
        let since = closed
            .rows
            .iter()
            .map(|r| r.window_start_ms / 1000)
            .min()
            .unwrap_or(0);
        let landed = self
            .landed_rows(partition, watermark, since)
            .await
            .map_err(failed("reading the flush's rollup_5m rows"))?;
        if landed.is_empty() {
            return Ok(Settled::NotLanded);
        }
        let mut repairs = Repairs::default();
        // The levels first, from the rows rollup_5m holds now: rows written
        // again below reach the levels through the views.
        self.complete_levels(partition, watermark, since, &mut repairs)
            .await
            .map_err(failed("completing the rollup levels from rollup_5m"))?;
        let unwritten: Vec<(i32, &RollupRow, Checkpoint)> = closed
            .rows
            .iter()
            .filter(|r| !landed.contains(&key(r)))
            .map(|row| (partition, row, closed.checkpoint))
            .collect();
        if !unwritten.is_empty() {
            repairs.rows = unwritten.len();
            self.write_rows(&unwritten)
                .await
                .map_err(failed("writing the flush's missing rollup_5m rows"))?;
        } else if !self.progress_landed(partition, watermark).await? {
            repairs.progress = true;
            self.record_progress(
                partition,
                closed.checkpoint,
                u32::try_from(closed.last_window_start_ms / 1000).unwrap_or(0),
                closed.rows.len() as u64,
            )
            .await
            .map_err(failed("writing the flush's checkpoint"))?;
        }
        if repairs.is_empty() {
            return Ok(Settled::Landed);
        }
        repairs.record(partition);
        Ok(Settled::Repaired(repairs))
    }

    /// Each level's buckets that lack the flush, filled from its `rollup_5m`
    /// rows (those with window starts from `since`, in seconds, on).
    pub(super) async fn complete_levels(
        &self,
        partition: i32,
        watermark_ms: i64,
        since: i64,
        repairs: &mut Repairs,
    ) -> Result<(), clickhouse::error::Error> {
        for level in levels::LEVELS {
            let buckets = self
                .level_buckets(level, partition, watermark_ms, since)
                .await?;
            let mut missing = Vec::new();
            for b in &buckets {
                if b.in_level >= b.in_rollup_5m {
                    continue;
                }
                if b.in_level + b.of_flush == b.in_rollup_5m {
                    missing.push(b.bucket);
                } else {
                    repairs.unverified_buckets += 1;
                    tracing::error!(
                        partition,
                        table = level.table,
                        bucket = b.bucket,
                        in_rollup_5m = b.in_rollup_5m,
                        of_flush = b.of_flush,
                        in_level = b.in_level,
                        "a bucket's events from this partition differ from rollup_5m's by other than this flush; left as it is"
                    );
                }
            }
            if missing.is_empty() {
                continue;
            }
            self.fill_level(level, partition, watermark_ms, &missing)
                .await?;
            if level == levels::HOURLY {
                repairs.hourly_buckets += missing.len();
            } else {
                repairs.daily_buckets += missing.len();
            }
        }
        Ok(())
    }

    async fn landed_rows(
        &self,
        partition: i32,
        watermark_ms: i64,
        since: i64,
    ) -> Result<HashSet<RowKey>, clickhouse::error::Error> {
        let rows: Vec<LandedRow> = self
            .client
            .query(
                "SELECT toUInt32(window_start), project_id, event, dimensions FROM rollup_5m \
                 WHERE source_topic = ? AND source_partition = ? AND watermark_ms = ? \
                   AND window_start >= toDateTime(?)",
            )
            .bind(&self.topic)
            .bind(partition as u16)
            .bind(watermark_ms)
            .bind(since.clamp(0, i64::from(u32::MAX)) as u32)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.window_start, r.project_id, r.event, r.dimensions))
            .collect())
    }

    /// The level's buckets that hold rows of this flush in `rollup_5m`.
    /// (Two queries, joined here: servers old and new disagree on JOIN.)
    async fn level_buckets(
        &self,
        level: Level,
        partition: i32,
        watermark_ms: i64,
        since: i64,
    ) -> Result<Vec<BucketEvents>, clickhouse::error::Error> {
        let bucket = level.bucket;
        // A day before `since` still holds every row of its buckets, so the
        // scans stay within the months around the flush.
        let since = since.saturating_sub(86_400).clamp(0, i64::from(u32::MAX)) as u32;
        let flush_buckets = format!(
            "SELECT DISTINCT {bucket}(window_start) FROM rollup_5m \
             WHERE source_topic = ? AND source_partition = ? AND watermark_ms = ? \
               AND window_start >= toDateTime({since})"
        );
        let p = partition as u16;
        let in_rollup_5m: Vec<(u32, u64, u64)> = self
            .client
            .query(&format!(
                "SELECT toUInt32({bucket}(window_start)) AS bucket, sum(events), \
                        sumIf(events, watermark_ms = ?) \
                 FROM rollup_5m WHERE source_topic = ? AND source_partition = ? \
                   AND window_start >= toDateTime({since}) \
                   AND {bucket}(window_start) GLOBAL IN ({flush_buckets}) GROUP BY bucket"
            ))
            .bind(watermark_ms)
            .bind(&self.topic)
            .bind(p)
            .bind(&self.topic)
            .bind(p)
            .bind(watermark_ms)
            .fetch_all()
            .await?;
        // The source's key as the views compute it (levels::SOURCE_KEY),
        // from the bound topic and partition.
        let in_level: HashMap<u32, u64> = self
            .client
            .query(&format!(
                // The map is read in an outer query on this server: 18.16
                // sends `tupleElement(…)` to the shards as `held.1`, which
                // it cannot parse back.
                "SELECT bucket, tupleElement(held, 2)[indexOf(tupleElement(held, 1), \
                        cityHash64(?, toUInt16(?)))] FROM \
                 (SELECT toUInt32(bucket_start) AS bucket, sumMapMerge(source_events_state) AS held \
                  FROM {table} WHERE bucket_start >= toDateTime({since}) \
                    AND bucket_start GLOBAL IN ({flush_buckets}) GROUP BY bucket)",
                table = level.table
            ))
            .bind(&self.topic)
            .bind(p)
            .bind(&self.topic)
            .bind(p)
            .bind(watermark_ms)
            .fetch_all::<(u32, u64)>()
            .await?
            .into_iter()
            .collect();
        Ok(in_rollup_5m
            .into_iter()
            .map(|(bucket, all, of_flush)| BucketEvents {
                bucket,
                in_rollup_5m: all,
                of_flush,
                in_level: in_level.get(&bucket).copied().unwrap_or(0),
            })
            .collect())
    }

    async fn fill_level(
        &self,
        level: Level,
        partition: i32,
        watermark_ms: i64,
        buckets: &[u32],
    ) -> Result<(), clickhouse::error::Error> {
        let filter = format!(
            "source_topic = ? AND source_partition = ? AND watermark_ms = ? \
             AND has(?, toUInt32({}(window_start)))",
            level.bucket
        );
        self.client
            .query(&levels::fill_from_rollup_5m(level, &filter))
            .bind(&self.topic)
            .bind(partition as u16)
            .bind(watermark_ms)
            .bind(buckets)
            .execute()
            .await
    }

    /// Whether the partition's stored checkpoint has reached this watermark.
    async fn progress_landed(&self, partition: i32, watermark_ms: i64) -> Result<bool, SinkError> {
        Ok(self
            .checkpoints()
            .await?
            .into_iter()
            .any(|(p, stored)| p == partition && stored.watermark_ms >= watermark_ms))
    }

    /// The checkpoint row the progress view would have written, stamped
    /// with the server's clock as the view's is.
    pub(super) async fn record_progress(
        &self,
        partition: i32,
        cp: Checkpoint,
        last_window_start: u32,
        rows: u64,
    ) -> Result<(), clickhouse::error::Error> {
        self.client
            .query(
                "INSERT INTO aggregator_progress (topic, partition_id, last_window_start, \
                 checkpoint_offset, checkpoint_watermark_ms, flushed_rows, flushed_at) \
                 SELECT ?, toUInt16(?), toDateTime(?), toInt64(?), toInt64(?), toUInt64(?), now()",
            )
            .bind(&self.topic)
            .bind(partition as u16)
            .bind(last_window_start)
            .bind(cp.resume_offset)
            .bind(cp.watermark_ms)
            .bind(rows)
            .execute()
            .await
    }
}

fn key(row: &RollupRow) -> RowKey {
    (
        (row.window_start_ms / 1000) as u32,
        row.project_id.clone(),
        row.event.clone(),
        row.dimensions.clone(),
    )
}
