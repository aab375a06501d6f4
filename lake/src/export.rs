//! One user's events in the lake, for `GET /v1/users/{user}/export`: raw
//! retention may have dropped from ClickHouse what the lake still keeps.
//!
//! A scan reads every file of the lake as replay sees it (superseded files
//! skipped), looks at the three cheap columns of each batch (project,
//! `user_id`, `anonymous_id`) and decodes only the batches that name the
//! user. Events a deletion request covers are left out even before the
//! erasure pass has rewritten their files, and so are the ids the caller
//! already has (ClickHouse's copy). Copies of one event in the lake (the
//! same event sent twice) are one. The scan holds one file at a time.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use hourglass_core::clickhouse::deletions::DeletedUsers;
use hourglass_core::contract::EventEnvelope;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::erase::{EraseError, any_row};
use crate::schema::{LakeEvent, SchemaError, decode_batch};
use crate::store::ObjectStore;

/// Whose events a scan looks for.
#[derive(Debug, Clone)]
pub struct UserScope {
    pub project_id: String,
    /// A tenant's token sees its tenant's events only.
    pub tenant_id: Option<String>,
    /// `contract.tenant_property`.
    pub tenant_property: String,
    /// As `user_id` or `anonymous_id`.
    pub user: String,
}

impl UserScope {
    fn names(&self, project: &str, user_id: &str, anonymous_id: &str) -> bool {
        project == self.project_id && (user_id == self.user || anonymous_id == self.user)
    }

    /// Whether an event the scan found ([`of_user`]: it names the user) is
    /// in the scope's tenant and no request covers it.
    fn holds(&self, e: &EventEnvelope, deleted: &DeletedUsers) -> bool {
        self.tenant_id
            .as_deref()
            .is_none_or(|t| t == e.tenant(&self.tenant_property))
            && !deleted.covers_event(e, &self.tenant_property)
    }
}

/// What a scan found, and what it read to find it.
#[derive(Debug, Default)]
pub struct UserEvents {
    /// Oldest first (by event time, then id), one per `event_id`.
    pub events: Vec<EventEnvelope>,
    pub files_read: u64,
}

/// The user's events in the lake that `known` (event ids, hyphenated) does
/// not hold and no request in `deleted` covers.
pub async fn user_events(
    store: &dyn ObjectStore,
    scope: &UserScope,
    known: &HashSet<String>,
    deleted: &DeletedUsers,
) -> Result<UserEvents, EraseError> {
    let files = crate::named::list_named(store, "dt=").await?;
    let (files, _superseded) = crate::named::split_superseded(files);
    let scope = Arc::new(scope.clone());
    let mut found = UserEvents::default();
    let mut seen: HashSet<uuid::Uuid> = HashSet::new();
    for file in &files {
        let info = &file.info;
        // Compaction or erasure may have replaced it since the listing.
        let listed = crate::listed::get_listed(store, file).await?;
        found.files_read += 1;
        let for_scan = scope.clone();
        let body = listed.bytes.clone();
        let mut events = tokio::task::spawn_blocking(move || of_user(body, &for_scan))
            .await
            .expect("scan thread")
            .map_err(|source| EraseError::Read {
                key: info.key.clone(),
                source,
            })?;
        listed.keep_own(&mut events);
        for e in events {
            if scope.holds(&e.event, deleted)
                && !known.contains(&e.event.event_id.to_string())
                && seen.insert(e.event.event_id)
            {
                found.events.push(e.event);
            }
        }
    }
    found.events.sort_by_key(|e| (e.timestamp, e.event_id));
    Ok(found)
}

/// The events of a file whose project and ids name the user.
fn of_user(body: Bytes, scope: &UserScope) -> Result<Vec<LakeEvent>, SchemaError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(body)?
        .with_batch_size(16 * 1024)
        .build()?;
    let mut out = Vec::new();
    let mut decoded = Vec::new();
    for batch in reader {
        let batch = batch?;
        if !any_row(&batch, &|project, user, anon| {
            scope.names(project, user, anon)
        })? {
            continue;
        }
        decoded.clear();
        decode_batch(&batch, &mut decoded)?;
        out.extend(decoded.drain(..).filter(|e| {
            scope.names(
                &e.event.project_id,
                e.event.user_id.as_deref().unwrap_or_default(),
                e.event.anonymous_id.as_deref().unwrap_or_default(),
            )
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BatchBuilder, to_parquet};
    use crate::store::LocalStore;
    use chrono::{DateTime, Duration, Utc};
    use hourglass_core::contract::SCHEMA_VERSION;

    fn event(i: u128, user: &str, at: DateTime<Utc>) -> EventEnvelope {
        EventEnvelope {
            schema_version: SCHEMA_VERSION,
            project_id: "p".into(),
            event_id: uuid::Uuid::from_u128(i),
            event: "page_view".into(),
            user_id: Some(user.into()),
            anonymous_id: None,
            session_id: None,
            timestamp: at,
            received_at: at,
            value: None,
            properties: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_scan_finds_the_users_events_once_each_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let t0: DateTime<Utc> = "2026-01-01T13:00:00Z".parse().unwrap();
        let mut want = Vec::new();
        // Two files, newer first by name; the user's events interleaved
        // with others', one sent twice, one as an anonymous id, one of
        // another project, one the caller has.
        for (file, range) in [(0, 0..50u128), (1, 50..100)] {
            let mut b = BatchBuilder::default();
            for i in range.clone() {
                let at = t0 + Duration::minutes(100 - i as i64);
                let mut e = event(i, if i % 5 == 0 { "u" } else { "x" }, at);
                if i == 7 {
                    e.user_id = Some("y".into());
                    e.anonymous_id = Some("u".into());
                }
                if i == 10 {
                    e.project_id = "q".into();
                }
                if (i % 5 == 0 && i != 10 && i != 20) || i == 7 {
                    want.push(e.event_id);
                }
                b.append(&e, 0, i as i64);
                if i == 45 {
                    b.append(&e, 0, 1_000 + i as i64);
                }
            }
            let hour = t0 + Duration::hours(file);
            let key = crate::layout::file_key(
                hour,
                "events",
                0,
                range.start as i64,
                range.end as i64 - 1,
            );
            store
                .put(&key, to_parquet(&b.finish(), 1024).unwrap())
                .await
                .unwrap();
        }
        let scope = UserScope {
            project_id: "p".into(),
            tenant_id: None,
            tenant_property: "tenant_id".into(),
            user: "u".into(),
        };
        let known: HashSet<String> = [uuid::Uuid::from_u128(20).to_string()].into();
        let found = user_events(&store, &scope, &known, &DeletedUsers::default())
            .await
            .unwrap();
        // Later ids are older here.
        want.reverse();
        let got: Vec<_> = found.events.iter().map(|e| e.event_id).collect();
        assert_eq!(got, want);
        assert_eq!(found.files_read, 2);

        // Deleted up to the 40th minute: the older ones go.
        let mut deleted = DeletedUsers::default();
        let cutoff = t0 + Duration::minutes(40);
        deleted.add(
            "p".into(),
            String::new(),
            "u".into(),
            cutoff.timestamp() as u32,
        );
        let found = user_events(&store, &scope, &known, &deleted).await.unwrap();
        assert!(!found.events.is_empty());
        assert!(found.events.iter().all(|e| e.received_at > cutoff));
    }
}
