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
}

impl EventSink {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// One INSERT for the whole batch (its progress rows come from the same INSERT).
    pub async fn insert(&self, rows: &[EventRow]) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert::<EventRow>("events").await?;
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
