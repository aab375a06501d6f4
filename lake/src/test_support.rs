//! Fixtures the crate's unit tests share.

use chrono::{DateTime, Utc};
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION};

use crate::compact::CompactOptions;
use crate::store::ObjectStore;

/// An event of project `p` received at `received_at`, its id and user made
/// from `i` (the record's offset in the tests).
pub fn event(i: i64, received_at: DateTime<Utc>) -> EventEnvelope {
    EventEnvelope {
        schema_version: SCHEMA_VERSION,
        project_id: "p".into(),
        event_id: uuid::Uuid::from_u128(i as u128),
        event: "page_view".into(),
        user_id: Some(format!("u{i}")),
        anonymous_id: None,
        session_id: None,
        timestamp: received_at,
        received_at,
        value: Some(i as f64),
        properties: Default::default(),
    }
}

/// A compaction pass over topic `events` on 2026-01-01.
pub fn day(dry_run: bool) -> CompactOptions {
    CompactOptions {
        topic: "events".into(),
        from: "2026-01-01T00:00:00Z".parse().unwrap(),
        to: "2026-01-02T00:00:00Z".parse().unwrap(),
        max_bytes: 1 << 30,
        row_group_rows: 1024,
        tenant_property: "tenant".into(),
        across_partitions: true,
        dry_run,
    }
}

/// The keys under `prefix`, sorted.
pub async fn keys(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}
