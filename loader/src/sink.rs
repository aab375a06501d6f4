//! The INSERT into `events` and the progress read back from `loader_progress`.
//!
//! A user deleted through the query API (`deletions`) must not come back
//! through a loader that lags behind the request: each batch leaves out the
//! events a deletion covers ([`DeletedUsers`], the rule the delete itself
//! and the batch layer apply), and records the offsets it skipped
//! so the progress still reaches the batch's end.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Datelike;
use clickhouse::{Client, Row};
use hourglass_core::clickhouse::cluster::{ConsistentReadError, QuorumGuard};
use hourglass_core::clickhouse::deletions::{DeletedUsers, DeletionsWatch};
use hourglass_core::kafka::assign::StartPositions;
use serde::Deserialize;

use crate::rows::EventRow;

#[derive(Row, Deserialize)]
struct ProgressRecord {
    partition_id: u16,
    last_offset: i64,
}

#[derive(Clone)]
pub struct EventSink {
    client: Client,
    /// Set when the server supports `insert_deduplication_token` (22.2+):
    /// the source topic, named in every token.
    dedup_topic: Option<String>,
    /// `deletions`, read again before a batch when it changed.
    deletions: Arc<tokio::sync::Mutex<DeletionsWatch>>,
    quorum: Option<QuorumGuard>,
}

/// The tables whose pending quorum INSERTs a progress read waits for.
pub const PROGRESS_TABLES: &[&str] = &["events", "loader_progress"];

/// Whether a request covers the row's event.
fn covered(users: &DeletedUsers, row: &EventRow) -> bool {
    users.covers(
        &row.project_id,
        &row.tenant_id,
        &row.user_id,
        &row.anonymous_id,
        i64::from(row.received_at),
    )
}

#[derive(Row, serde::Serialize)]
struct SkippedProgress {
    partition_id: u16,
    last_offset: i64,
    loaded_rows: u64,
    loaded_at: u32,
}

/// The highest offset of each partition in `rows`.
pub(crate) fn last_offsets<'a>(rows: impl IntoIterator<Item = &'a EventRow>) -> BTreeMap<u16, i64> {
    let mut last: BTreeMap<u16, i64> = BTreeMap::new();
    for r in rows {
        let o = last.entry(r.kafka_partition).or_insert(r.kafka_offset);
        *o = (*o).max(r.kafka_offset);
    }
    last
}

/// Partitions (months of `timestamp`) one INSERT may span: ClickHouse
/// refuses a block over `max_partitions_per_insert_block` (100 by default
/// on servers that have the setting).
pub const MAX_MONTHS_PER_INSERT: usize = 100;

/// The month holding Unix second `t`: its first second, the first second
/// of the next month, and `YYYYMM`.
fn month_of(t: u32) -> (u32, u32, i32) {
    let Some(day) = chrono::DateTime::from_timestamp(i64::from(t), 0).map(|d| d.date_naive())
    else {
        return (t, t.saturating_add(1), 0);
    };
    let first = day.with_day(1).expect("every month has a first day");
    let next = first + chrono::Months::new(1);
    let second = |d: chrono::NaiveDate| {
        u32::try_from(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp()).unwrap_or(u32::MAX)
    };
    (
        second(first),
        second(next),
        day.year() * 100 + day.month() as i32,
    )
}

/// `rows` cut, in their order, into runs of at most `max` months each. Each
/// run holds, for every Kafka partition, the next offsets after the run
/// before it, so the progress a run's INSERT records never passes a row of
/// a later run.
pub fn month_runs(rows: &[&EventRow], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut months = std::collections::BTreeSet::new();
    // Rows of one month mostly come together: the month's bounds are
    // computed once per change, not per row.
    let mut current = (u32::MAX, 0u32, 0i32);
    for (i, row) in rows.iter().enumerate() {
        if !(current.0..current.1).contains(&row.timestamp) {
            current = month_of(row.timestamp);
        }
        let month = current.2;
        if !months.contains(&month) && months.len() == max.max(1) {
            runs.push(start..i);
            start = i;
            months.clear();
        }
        months.insert(month);
    }
    if start < rows.len() {
        runs.push(start..rows.len());
    }
    runs
}

/// The deduplication token of a batch: topic, then each partition's offset
/// range, so a retried INSERT of the same records carries the same token.
pub fn dedup_token<'a>(topic: &str, rows: impl IntoIterator<Item = &'a EventRow>) -> String {
    let mut ranges: BTreeMap<u16, (i64, i64)> = BTreeMap::new();
    for r in rows {
        let e = ranges
            .entry(r.kafka_partition)
            .or_insert((r.kafka_offset, r.kafka_offset));
        e.0 = e.0.min(r.kafka_offset);
        e.1 = e.1.max(r.kafka_offset);
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|(p, (a, b))| format!("{p}:{a}-{b}"))
        .collect();
    format!("{topic}/{}", parts.join(","))
}

impl EventSink {
    pub fn new(client: Client) -> Self {
        Self {
            deletions: Arc::new(tokio::sync::Mutex::new(DeletionsWatch::new(client.clone()))),
            client,
            dedup_topic: None,
            quorum: None,
        }
    }

    /// On a cluster: read progress only while no quorum INSERT is pending
    /// ([`QuorumGuard`]).
    pub fn with_quorum_guard(mut self, guard: Option<QuorumGuard>) -> Self {
        self.quorum = guard;
        self
    }

    /// Send insert deduplication tokens (only for servers that know them).
    pub fn with_dedup_tokens(mut self, topic: &str) -> Self {
        self.dedup_topic = Some(topic.to_owned());
        self
    }

    /// The batch without the events of deleted users, in one INSERT per run
    /// of at most [`MAX_MONTHS_PER_INSERT`] months (the progress rows come
    /// from the same INSERTs); returns how many were left out. When those
    /// were a partition's last records, the skipped offsets are recorded
    /// after the INSERTs (a crash in between only makes the next run read
    /// them again and leave them out again).
    pub async fn insert(&self, rows: &[EventRow]) -> Result<u64, clickhouse::error::Error> {
        let kept: Vec<&EventRow> = {
            let mut deletions = self.deletions.lock().await;
            deletions.refresh().await?;
            let users = deletions.users();
            if users.is_empty() {
                rows.iter().collect()
            } else {
                rows.iter().filter(|r| !covered(users, r)).collect()
            }
        };
        let skipped = (rows.len() - kept.len()) as u64;
        for run in month_runs(&kept, MAX_MONTHS_PER_INSERT) {
            let run = &kept[run];
            // The token names the run's records: a retry carries the same one.
            let client = match &self.dedup_topic {
                Some(topic) => self.client.clone().with_setting(
                    "insert_deduplication_token",
                    dedup_token(topic, run.iter().copied()),
                ),
                None => self.client.clone(),
            };
            let mut insert = client.insert::<EventRow>("events").await?;
            for row in run {
                insert.write(*row).await?;
            }
            insert.end().await?;
        }
        if skipped > 0 {
            // Deleted users' records that end a partition's part of the
            // batch: the INSERT's progress does not reach them.
            let loaded = last_offsets(kept.iter().copied());
            let tails: BTreeMap<u16, i64> = last_offsets(rows)
                .into_iter()
                .filter(|(p, last)| loaded.get(p).is_none_or(|l| l < last))
                .collect();
            self.mark_done(&tails).await?;
        }
        Ok(skipped)
    }

    /// Record that every record up to `last` (per partition) is handled:
    /// loaded, left out or dead-lettered.
    pub async fn mark_done(
        &self,
        last: &BTreeMap<u16, i64>,
    ) -> Result<(), clickhouse::error::Error> {
        if last.is_empty() {
            return Ok(());
        }
        let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(u32::MAX);
        let mut insert = self
            .client
            .insert::<SkippedProgress>("loader_progress")
            .await?;
        for (&partition_id, &last_offset) in last {
            insert
                .write(&SkippedProgress {
                    partition_id,
                    last_offset,
                    loaded_rows: 0,
                    loaded_at: now,
                })
                .await?;
        }
        insert.end().await
    }

    /// Highest offset loaded per partition.
    pub async fn progress(&self) -> Result<BTreeMap<i32, i64>, ConsistentReadError> {
        if let Some(guard) = &self.quorum {
            guard.settled().await?;
        }
        let rows: Vec<ProgressRecord> = self
            .client
            .query("SELECT partition_id, max(last_offset) AS o FROM loader_progress GROUP BY partition_id")
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (i32::from(r.partition_id), r.last_offset))
            .collect())
    }
}

impl StartPositions for EventSink {
    /// The last offset loaded.
    type Position = i64;

    async fn read(&self, _assigned: &[i32]) -> Result<Vec<(i32, i64)>, String> {
        Ok(self
            .progress()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect())
    }

    fn next_offset(last_loaded: &i64) -> i64 {
        last_loaded + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::to_row;

    #[test]
    fn dedup_tokens_name_the_offset_ranges() {
        let json = r#"{"schema_version":1,"project_id":"p","event_id":"0192f0a4-8a40-7cc0-8000-000000000001",
            "event":"e","user_id":"u","timestamp":"2026-01-01T00:00:00Z","received_at":"2026-01-01T00:00:01Z"}"#;
        let rows: Vec<EventRow> = [(3, 10), (1, 7), (3, 12), (1, 5)]
            .iter()
            .map(|(p, o)| to_row(Some(json.as_bytes()), *p, *o, &Default::default()).unwrap())
            .collect();
        assert_eq!(dedup_token("events", &rows), "events/1:5-7,3:10-12");
    }

    #[test]
    fn a_month_is_bounded_by_its_first_second_and_the_next_months() {
        let at = |s: &str| {
            s.parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
                .timestamp() as u32
        };
        let jan = (
            at("2026-01-01T00:00:00Z"),
            at("2026-02-01T00:00:00Z"),
            202601,
        );
        assert_eq!(month_of(at("2026-01-01T00:00:00Z")), jan);
        assert_eq!(month_of(at("2026-01-31T23:59:59Z")), jan);
        assert_eq!(
            month_of(at("2025-12-31T23:59:59Z")),
            (at("2025-12-01T00:00:00Z"), jan.0, 202512)
        );
        assert_eq!(
            month_of(at("2028-02-29T12:00:00Z")),
            (
                at("2028-02-01T00:00:00Z"),
                at("2028-03-01T00:00:00Z"),
                202802
            )
        );
        assert_eq!(month_of(0).2, 197001);
        assert_eq!(month_of(u32::MAX).2, 210602);
    }

    #[test]
    fn runs_hold_at_most_the_months_allowed_in_order() {
        let json = |month: u32| {
            format!(
                r#"{{"schema_version":1,"project_id":"p","event_id":"0192f0a4-8a40-7cc0-8000-000000000001",
                "event":"e","user_id":"u","timestamp":"{}-{:02}-15T00:00:00Z","received_at":"2026-01-01T00:00:01Z"}}"#,
                2010 + month / 12,
                month % 12 + 1
            )
        };
        // 120 months, each twice, interleaved over two partitions.
        let rows: Vec<EventRow> = (0..240u32)
            .map(|i| {
                let payload = json(i / 2);
                to_row(
                    Some(payload.as_bytes()),
                    (i % 2) as i32,
                    i64::from(i),
                    &Default::default(),
                )
                .unwrap()
            })
            .collect();
        let refs: Vec<&EventRow> = rows.iter().collect();
        let runs = month_runs(&refs, 100);
        assert_eq!(runs, vec![0..200, 200..240]);
        assert_eq!(month_runs(&refs, 1000), vec![0..240]);
        assert_eq!(month_runs(&refs, 50).len(), 3);
        assert!(month_runs(&[], 100).is_empty());
    }
}
