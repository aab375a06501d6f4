//! Taking partitions over: what their last flush left, settled before
//! reading resumes.
//!
//! [`super::settle`] makes a failed flush whole while its writer still holds
//! the windows. When it cannot (the partition was revoked during the retry,
//! the aggregator was killed while ClickHouse was down), the next owner
//! finds the flush's rows in `rollup_5m` and nothing else: the checkpoint's
//! view or a level's may have missed them. Resuming from the checkpoint
//! table alone would then count those windows a second time.
//!
//! A flush holds one month (see `PartitionWindows::take_closed`), so its
//! `rollup_5m` rows landed whole or not at all, and they carry its
//! checkpoint. For each partition taken over, every flush in `rollup_5m` at
//! or after the stored checkpoint's watermark is settled from its rows:
//! levels short by exactly the flush are filled from it, and a flush past
//! the stored checkpoint becomes the checkpoint (its row is written). Only
//! then does the partition resume, from there. On one server; not yet on a
//! ClickHouse cluster (see [`RollupSink::start_positions`]).

use std::collections::HashMap;

use clickhouse::Row;
use serde::Deserialize;

use super::settle::Repairs;
use super::{RollupSink, SinkError};
use crate::window::Checkpoint;

/// One flush found in `rollup_5m` (rows sharing a partition and watermark).
#[derive(Debug, Row, Deserialize)]
struct FlushFound {
    partition: u16,
    watermark_ms: i64,
    resume_offset: i64,
    first_window_start: u32,
    last_window_start: u32,
    rows: u64,
}

impl RollupSink {
    /// Where each partition resumes, after settling the last flushes of
    /// those in `assigned` (see the module's documentation).
    pub async fn start_positions(
        &self,
        assigned: &[i32],
    ) -> Result<Vec<(i32, Checkpoint)>, SinkError> {
        let mut positions: HashMap<i32, Checkpoint> =
            self.checkpoints().await?.into_iter().collect();
        // Not on a cluster: there a level's fill is an INSERT through a
        // Distributed table that can land on one shard and fail on another
        // (a replica down, a quorum not reached), and its parts stay
        // invisible to the next check until their quorum is reached, so a
        // retried takeover filled a bucket twice (CI trial of 51fef84:
        // metrics_1h 1,452 events for 1,396). Fencing the fill per shard
        // is left to do; a cluster resumes from the stored checkpoints.
        if assigned.is_empty() || self.quorum.is_some() {
            return Ok(positions.into_iter().collect());
        }
        let found = self
            .flushes_from_checkpoints(assigned, &positions)
            .await
            .map_err(|source| SinkError::Settle {
                partition: assigned[0],
                what: "finding the flushes of the partitions taken over",
                source: source.into(),
            })?;
        for flush in found {
            let p = i32::from(flush.partition);
            let failed = |what: &'static str| {
                move |source: clickhouse::error::Error| SinkError::Settle {
                    partition: p,
                    what,
                    source: source.into(),
                }
            };
            let mut repairs = Repairs::default();
            self.complete_levels(
                p,
                flush.watermark_ms,
                i64::from(flush.first_window_start),
                &mut repairs,
            )
            .await
            .map_err(failed("completing the rollup levels from rollup_5m"))?;
            let stored = positions.get(&p).map(|c| c.watermark_ms);
            if stored.is_none_or(|w| flush.watermark_ms > w) {
                let checkpoint = Checkpoint {
                    resume_offset: flush.resume_offset,
                    watermark_ms: flush.watermark_ms,
                };
                self.record_progress(p, checkpoint, flush.last_window_start, flush.rows)
                    .await
                    .map_err(failed("writing the flush's checkpoint"))?;
                repairs.progress = true;
                positions.insert(p, checkpoint);
            }
            if !repairs.is_empty() {
                tracing::warn!(
                    partition = p,
                    watermark_ms = flush.watermark_ms,
                    "the partition's last flush had landed in part before it was taken over"
                );
                repairs.record(p);
            }
        }
        Ok(positions.into_iter().collect())
    }

    /// The flushes of `assigned` in `rollup_5m` whose watermark is at or
    /// after the partition's stored checkpoint (every flush, for a partition
    /// without one), oldest first.
    async fn flushes_from_checkpoints(
        &self,
        assigned: &[i32],
        stored: &HashMap<i32, Checkpoint>,
    ) -> Result<Vec<FlushFound>, clickhouse::error::Error> {
        // Windows a flush after a checkpoint writes end (plus grace) past
        // its watermark: the scan starts a window, a grace and a day before
        // the oldest checkpoint, unless a partition has none.
        let since = assigned
            .iter()
            .map(|p| {
                stored
                    .get(p)
                    .map(|c| c.watermark_ms / 1000 - self.lookback_secs)
            })
            .collect::<Option<Vec<i64>>>()
            .and_then(|s| s.into_iter().min())
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX));
        let per_partition: Vec<String> = assigned
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .map(|p| match stored.get(&i32::from(p)) {
                Some(c) => format!(
                    "(source_partition = {p} AND watermark_ms >= {})",
                    c.watermark_ms
                ),
                None => format!("source_partition = {p}"),
            })
            .collect();
        if per_partition.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .query(&format!(
                "SELECT source_partition, watermark_ms, any(resume_offset), \
                        toUInt32(min(window_start)), toUInt32(max(window_start)), count() \
                 FROM rollup_5m \
                 WHERE source_topic = ? AND window_start >= toDateTime({since}) AND ({}) \
                 GROUP BY source_partition, watermark_ms \
                 ORDER BY source_partition, watermark_ms",
                per_partition.join(" OR ")
            ))
            .bind(&self.topic)
            .fetch_all()
            .await
    }
}
