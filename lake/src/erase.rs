//! Erasure: the lake's files rewritten without deleted users' events.
//!
//! `DELETE /v1/users/{u}` records a request in `deletions`; replay and the
//! loader skip what it covers, but the events stay in the Parquet files
//! until a pass of this module (run by `hourglass batch` and `hourglass
//! erase`) rewrites them. A pass reads every file of the lake, and for each
//! that holds an event a request covers (the one rule of
//! `hourglass_core::clickhouse::deletions`) writes the file again without
//! those events, then removes the original. The rewrite keeps the original's
//! partition and offsets, states its rows and counts its rewrites
//! ([`layout::erased_key`]), so it supersedes the original
//! ([`layout::superseded`]): a pass stopped between the two leaves a pair
//! that replay and compaction read as the rewrite alone, and the next pass
//! removes the original. A file left without events is removed. Other
//! events are copied as they were read (same columns, same order).
//!
//! The same rewrite ([`remove_events`]) takes a project's expired events out
//! of folders other projects still keep (per-project lake retention).

use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;
use hourglass_core::clickhouse::deletions::DeletedUsers;
use hourglass_core::contract::EventEnvelope;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::layout;
use crate::schema::{BatchBuilder, LakeEvent, SchemaError, decode_batch, parquet_writer, strings};
use crate::store::{ObjectInfo, ObjectStore, StoreError};

/// What one pass did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EraseSummary {
    pub files_read: u64,
    /// Files written again without the covered events.
    pub files_rewritten: u64,
    /// Files removed: every event covered, or left behind by a stopped pass.
    pub files_removed: u64,
    pub events_removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading lake file {key}: {source}")]
    Read { key: String, source: SchemaError },
}

/// Rows a rewrite decodes at a time.
const CHUNK_ROWS: usize = 16 * 1024;

/// A first look at a row: (project, `user_id`, `anonymous_id`) → may go.
pub type FirstLook = Box<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// Which events a rewrite removes.
pub struct Removal {
    /// A cheap first look at a row: its project, `user_id` and
    /// `anonymous_id` (empty for null). False: the row stays, and a batch
    /// of such rows is copied without decoding its events.
    pub may_cover: FirstLook,
    /// Whether the event goes.
    pub covers: Box<dyn Fn(&EventEnvelope) -> bool + Send + Sync>,
}

impl Removal {
    /// The events the requests in `deleted` cover; `tenant_property` is
    /// `contract.tenant_property` (a tenant's request covers its tenant's
    /// events only).
    pub fn deleted_users(deleted: DeletedUsers, tenant_property: &str) -> Self {
        let deleted = Arc::new(deleted);
        let tenant = tenant_property.to_owned();
        let first_look = deleted.clone();
        Self {
            may_cover: Box::new(move |project, user, anon| first_look.names(project, user, anon)),
            covers: Box::new(move |ev| deleted.covers_event(ev, &tenant)),
        }
    }
}

/// One pass over every file of the lake for the requests in `deleted`.
pub async fn erase(
    store: &dyn ObjectStore,
    deleted: DeletedUsers,
    tenant_property: &str,
    row_group_rows: usize,
    dry_run: bool,
) -> Result<EraseSummary, EraseError> {
    if deleted.is_empty() {
        return Ok(EraseSummary::default());
    }
    let objects = store.list("dt=").await?;
    let removal = Arc::new(Removal::deleted_users(deleted, tenant_property));
    let summary = remove_events(store, &objects, removal, row_group_rows, dry_run).await?;
    if !dry_run {
        crate::metrics::erased(&summary);
    }
    Ok(summary)
}

/// Rewrite each of `objects` that holds an event `removal` covers without
/// those events (see the module's documentation); a file left empty, or
/// superseded, is removed instead.
pub async fn remove_events(
    store: &dyn ObjectStore,
    objects: &[ObjectInfo],
    removal: Arc<Removal>,
    row_group_rows: usize,
    dry_run: bool,
) -> Result<EraseSummary, EraseError> {
    let mut summary = EraseSummary::default();
    let files = crate::named::name_all(store, objects.iter().cloned()).await?;
    let gone = crate::named::superseded(&files);
    for crate::named::Named { info, name } in &files {
        let body = match store.get(&info.key).await {
            Ok(body) => body,
            // Replaced since the listing by a compaction, which left out
            // every request made before it removed this file (so every
            // request this pass applies).
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        summary.files_read += 1;
        let removal = removal.clone();
        let rewrite =
            tokio::task::spawn_blocking(move || without_covered(body, &removal, row_group_rows))
                .await
                .expect("rewrite thread")
                .map_err(|source| EraseError::Read {
                    key: info.key.clone(),
                    source,
                })?;
        let Some(rewrite) = rewrite else {
            continue;
        };
        summary.events_removed += rewrite.removed;
        // A superseded file's events are in the file that supersedes it,
        // which the pass rewrites in its turn: it is removed, not rewritten.
        let rewritten = rewrite.kept > 0 && !gone.contains(info.key.as_str());
        if rewritten {
            summary.files_rewritten += 1;
        } else {
            summary.files_removed += 1;
        }
        if dry_run {
            continue;
        }
        if rewritten {
            let new_key =
                layout::erased_key(layout::folder_of(&info.key), name, rewrite.kept as i64);
            store.put(&new_key, rewrite.body).await?;
            tracing::info!(from = %info.key, to = %new_key, removed = rewrite.removed, kept = rewrite.kept, "lake file rewritten without removed events");
        } else {
            tracing::info!(key = %info.key, removed = rewrite.removed, "lake file removed: it held only removed events, or a rewrite supersedes it");
        }
        store.delete(&info.key).await?;
    }
    Ok(summary)
}

/// A file's rewrite: its events but the covered ones.
pub(crate) struct Rewrite {
    pub body: Bytes,
    pub kept: u64,
    pub removed: u64,
}

/// The file without the covered events (None: it holds none).
pub(crate) fn without_covered(
    body: Bytes,
    removal: &Removal,
    row_group_rows: usize,
) -> Result<Option<Rewrite>, SchemaError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(body)?;
    // An hour file's spans, in its footer, stay with its rewrite.
    let footer = layout::spans_footer(builder.metadata().file_metadata());
    let reader = builder.with_batch_size(CHUNK_ROWS).build()?;
    let mut writer = FilteringWriter::new(removal, row_group_rows, footer)?;
    for batch in reader {
        writer.write(&batch?)?;
    }
    if writer.removed == 0 {
        return Ok(None);
    }
    let (kept, removed) = (writer.kept, writer.removed);
    Ok(Some(Rewrite {
        body: writer.finish()?,
        kept,
        removed,
    }))
}

/// A Parquet file written from lake batches, less the events a
/// [`Removal`] covers: batches without a candidate row are copied as read,
/// the others decoded and written again without the covered events.
pub(crate) struct FilteringWriter<'a> {
    removal: &'a Removal,
    writer: ArrowWriter<Vec<u8>>,
    builder: BatchBuilder,
    events: Vec<LakeEvent>,
    pub kept: u64,
    pub removed: u64,
}

impl<'a> FilteringWriter<'a> {
    /// `footer`: key-value metadata of the file written (an hour file's
    /// spans, [`layout::spans_footer`]).
    pub fn new(
        removal: &'a Removal,
        row_group_rows: usize,
        footer: Vec<parquet::file::metadata::KeyValue>,
    ) -> Result<Self, SchemaError> {
        Ok(Self {
            removal,
            writer: parquet_writer(row_group_rows, footer)?,
            builder: BatchBuilder::default(),
            events: Vec::new(),
            kept: 0,
            removed: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SchemaError> {
        if !any_row(batch, &*self.removal.may_cover)? {
            self.kept += batch.num_rows() as u64;
            self.writer.write(batch)?;
            return Ok(());
        }
        self.events.clear();
        decode_batch(batch, &mut self.events)?;
        for e in &self.events {
            if (self.removal.covers)(&e.event) {
                self.removed += 1;
            } else {
                self.builder.append(&e.event, e.partition, e.offset);
                self.kept += 1;
            }
        }
        if self.builder.rows() > 0 {
            self.writer.write(&self.builder.finish())?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Bytes, SchemaError> {
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

/// Whether `look` accepts a row of the batch by its project, `user_id` and
/// `anonymous_id` (empty for null), read without decoding the events.
pub(crate) fn any_row(
    batch: &RecordBatch,
    look: &dyn Fn(&str, &str, &str) -> bool,
) -> Result<bool, SchemaError> {
    let project = strings(batch, "project_id")?;
    let user = strings(batch, "user_id")?;
    let anon = strings(batch, "anonymous_id")?;
    Ok((0..batch.num_rows()).any(|i| look(project.value(i), text_at(user, i), text_at(anon, i))))
}

/// A nullable string column's value, empty for null.
fn text_at(column: &arrow_array::StringArray, i: usize) -> &str {
    if arrow_array::Array::is_null(column, i) {
        ""
    } else {
        column.value(i)
    }
}
