//! The INSERT into `events` and the progress read back from `loader_progress`.

use std::collections::BTreeMap;

use clickhouse::{Client, Row};
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
}

/// The deduplication token of a batch: topic, then each partition's offset
/// range, so a retried INSERT of the same records carries the same token.
pub fn dedup_token(topic: &str, rows: &[EventRow]) -> String {
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
            client,
            dedup_topic: None,
        }
    }

    /// Send insert deduplication tokens (only for servers that know them).
    pub fn with_dedup_tokens(mut self, topic: &str) -> Self {
        self.dedup_topic = Some(topic.to_owned());
        self
    }

    /// One INSERT for the whole batch (its progress rows come from the same INSERT).
    pub async fn insert(&self, rows: &[EventRow]) -> Result<(), clickhouse::error::Error> {
        let client = match &self.dedup_topic {
            Some(topic) => self
                .client
                .clone()
                .with_setting("insert_deduplication_token", dedup_token(topic, rows)),
            None => self.client.clone(),
        };
        let mut insert = client.insert::<EventRow>("events").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Highest offset loaded per partition.
    pub async fn progress(&self) -> Result<BTreeMap<i32, i64>, clickhouse::error::Error> {
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

    async fn read(&self) -> Result<Vec<(i32, i64)>, String> {
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
}
