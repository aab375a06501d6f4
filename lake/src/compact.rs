//! Compaction: a settled hour's files made few. First each partition's
//! files become one (by the member holding the partition), then, once every
//! partition of the folder is down to its file, those become one hour file
//! holding every partition (by the member holding partition 0).
//!
//! The archiver closes a file every `lake.file_max_age_secs` per partition,
//! and around an hour boundary (records of two hours interleaved) files of
//! a record or two: a day holds thousands of small objects, which readers
//! (DuckDB, Spark, replay) pay for per object. A pass lists the hour
//! folders of a range and, per partition, merges runs of files up to
//! `lake.compact_max_bytes` into one file named by its first and last
//! offset and its row count ([`layout::compacted_key`]), then removes the
//! sources. With `lake.compact_across_partitions`, the folder's files are
//! then merged across partitions (up to the same size) into an hour file,
//! whose footer holds each partition's span ([`FileName::key`]).
//!
//! Nothing is lost or doubled if a pass stops anywhere: the merged file is
//! complete before any source is removed, and sources left behind are
//! [`layout::superseded`] (readers skip them, the next pass removes them).
//! Two passes over the same sources (a rebalance mid-pass) write the same
//! object. Two passes over different sources that share records (a
//! partition's straggler merged by its owner while the hour file was being
//! made) would leave two files neither of which replaces the other: each
//! merge lists the folder again once its file is written, and if such a
//! file is there ([`FileName::conflicts`]) it removes its own and keeps its
//! sources. Of two racing writers at least the later one sees the other.
//!
//! A merge leaves out the events of deleted users (`deletions`, read before
//! each merge), and reads the requests again once its file is written: a
//! request made while it ran is applied to that file before the sources go
//! (the file is rewritten as the erasure pass would). So a file compaction
//! writes after a request never holds what the request covers, and the
//! erasure pass, which starts well after the request, sees every file
//! written before it.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use chrono::{DateTime, Duration, Utc};
use hourglass_core::clickhouse::deletions::DeletionsWatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::erase::{FilteringWriter, Removal, without_covered};
use crate::layout::{self, FileName, Span};
use crate::metrics;
use crate::named::{self, Named};
use crate::schema::SchemaError;
use crate::store::{ObjectStore, StoreError};

/// What one pass looks at and how large its files may grow.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    pub topic: String,
    /// Hour folders whose hour starts in `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// A merged file holds sources of at most this many bytes in all.
    pub max_bytes: u64,
    pub row_group_rows: usize,
    /// `contract.tenant_property`: a tenant's deletion request covers its
    /// tenant's events only.
    pub tenant_property: String,
    /// Merge a folder's partition files into hour files too: one member of
    /// the archiver group does (the holder of partition 0).
    pub across_partitions: bool,
    /// Report what would be merged and removed, change nothing.
    pub dry_run: bool,
}

impl CompactOptions {
    /// The settled hours of the configured lookback at `now`: an hour is
    /// settled once it ended `settle` ago (its records written by then).
    pub fn settled(cfg: &hourglass_core::Config, now: DateTime<Utc>) -> Self {
        let lake = &cfg.lake;
        let last = now - Duration::seconds(lake.compact_settle_secs as i64) - Duration::hours(1);
        let to = layout::hour_of(last) + Duration::hours(1);
        Self {
            topic: cfg.kafka.topic.clone(),
            from: to - Duration::hours(i64::from(lake.compact_lookback_hours)),
            to,
            max_bytes: lake.compact_max_bytes,
            row_group_rows: lake.row_group_rows,
            tenant_property: cfg.contract.tenant_property.clone(),
            across_partitions: lake.compact_across_partitions,
            dry_run: false,
        }
    }
}

/// What a pass did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactSummary {
    pub folders: usize,
    /// Files merged, and their bytes.
    pub files_in: usize,
    pub bytes_in: u64,
    /// Files written in their place (hour files among them), their bytes
    /// and rows.
    pub files_out: usize,
    pub hour_files: usize,
    pub bytes_out: u64,
    pub rows: u64,
    /// Events of deleted users left out of the files written.
    pub events_removed: u64,
    /// Sources a stopped pass left behind, removed.
    pub superseded_removed: usize,
    /// Merges undone because another pass changed their folder meanwhile
    /// (their sources stay for the next pass).
    pub backed_off: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: {source}")]
    Read { key: String, source: SchemaError },
    #[error("writing Parquet: {0}")]
    Write(#[from] SchemaError),
    #[error("reading deletion requests: {0}")]
    Deletions(#[from] clickhouse::error::Error),
    #[error(
        "{first_source} and the {others} files merged with it hold {found} rows, their names say {named}"
    )]
    Rows {
        first_source: String,
        others: usize,
        named: i64,
        found: i64,
    },
}

impl From<parquet::errors::ParquetError> for CompactError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Write(e.into())
    }
}

/// One file of a folder, with what it holds.
type Source = Named;

/// Runs of files (in their order) to merge: consecutive files whose sizes
/// add up to at most `max_bytes`; a run of one is left.
fn plan(sizes: &[u64], max_bytes: u64) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && bytes + size > max_bytes {
            runs.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    runs.push(start..sizes.len());
    runs.retain(|r| r.len() >= 2);
    runs
}

/// Each partition's span over `files`: from its first offset in any of
/// them to its last.
fn merged_spans(files: &[Source]) -> Vec<Span> {
    let mut spans: BTreeMap<i32, Span> = BTreeMap::new();
    for s in files.iter().flat_map(|f| &f.name.spans) {
        spans
            .entry(s.partition)
            .and_modify(|m| (m.first, m.last) = (m.first.min(s.first), m.last.max(s.last)))
            .or_insert(*s);
    }
    spans.into_values().collect()
}

/// The name a merge of `files` gets (its row count as the names say).
fn merged_name(topic: &str, files: &[Source]) -> FileName {
    let rows = files.iter().map(|f| f.name.records()).sum();
    FileName::compacted(topic, merged_spans(files), rows)
}

/// The folder's files of `opts.topic`: superseded ones removed (of the
/// partitions `removes` accepts, counted in `summary`) and left out.
async fn sources(
    store: &dyn ObjectStore,
    folder: &str,
    opts: &CompactOptions,
    removes: &(dyn Fn(&FileName) -> bool + Sync),
    summary: &mut CompactSummary,
) -> Result<Vec<Source>, CompactError> {
    let mut listed = named::list_named(store, folder).await?;
    listed.retain(|f| f.name.topic == opts.topic);
    let (mut files, gone) = named::split_superseded(listed);
    for f in gone.iter().filter(|f| removes(&f.name)) {
        if !opts.dry_run {
            store.delete(&f.info.key).await?;
            metrics::compaction_superseded_removed();
        }
        summary.superseded_removed += 1;
    }
    files.sort_by_key(|f| f.name.first_span());
    Ok(files)
}

/// One pass over the hour folders of `opts`, for the partitions `owns`
/// accepts, leaving out the events `deletions` covers.
pub async fn compact(
    store: &dyn ObjectStore,
    opts: &CompactOptions,
    owns: &(dyn Fn(i32) -> bool + Sync),
    deletions: &mut DeletionsWatch,
) -> Result<CompactSummary, CompactError> {
    let mut summary = CompactSummary::default();
    let mut hour = layout::hour_of(opts.from);
    while hour < opts.to {
        let folder = layout::hour_folder(hour);
        hour += Duration::hours(1);
        let owned = |f: &FileName| f.partition().is_some_and(owns);
        let files = sources(store, &folder, opts, &owned, &mut summary).await?;
        if files.is_empty() {
            continue;
        }
        summary.folders += 1;
        let mut partitions: BTreeMap<i32, Vec<Source>> = BTreeMap::new();
        for f in files.into_iter().filter(|f| owned(&f.name)) {
            partitions
                .entry(f.name.first_span().partition)
                .or_default()
                .push(f);
        }
        for files in partitions.values() {
            let sizes: Vec<u64> = files.iter().map(|f| f.info.size).collect();
            for run in plan(&sizes, opts.max_bytes) {
                merge_run(store, &folder, opts, &files[run], deletions, &mut summary).await?;
            }
        }
        if opts.across_partitions {
            across_partitions(store, &folder, opts, deletions, &mut summary).await?;
        }
    }
    Ok(summary)
}

/// The folder's files merged across partitions, once no partition has
/// files its own merge would take (its holder may not have got to it yet).
async fn across_partitions(
    store: &dyn ObjectStore,
    folder: &str,
    opts: &CompactOptions,
    deletions: &mut DeletionsWatch,
    summary: &mut CompactSummary,
) -> Result<(), CompactError> {
    let files = sources(store, folder, opts, &|_| true, summary).await?;
    let mut by_partition: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for f in &files {
        if let Some(p) = f.name.partition() {
            by_partition.entry(p).or_default().push(f.info.size);
        }
    }
    let unsettled = by_partition
        .values()
        .any(|sizes| !plan(sizes, opts.max_bytes).is_empty());
    if unsettled {
        return Ok(());
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.info.size).collect();
    for run in plan(&sizes, opts.max_bytes) {
        let before = summary.files_out;
        merge_run(store, folder, opts, &files[run], deletions, summary).await?;
        summary.hour_files += summary.files_out - before;
    }
    Ok(())
}

/// Merge `run` (or, dry, count it) and add what it did to `summary`.
async fn merge_run(
    store: &dyn ObjectStore,
    folder: &str,
    opts: &CompactOptions,
    run: &[Source],
    deletions: &mut DeletionsWatch,
    summary: &mut CompactSummary,
) -> Result<(), CompactError> {
    let bytes_in = run.iter().map(|f| f.info.size).sum::<u64>();
    if opts.dry_run {
        summary.files_in += run.len();
        summary.bytes_in += bytes_in;
        summary.files_out += 1;
        summary.rows += run.iter().map(|f| f.name.records() as u64).sum::<u64>();
        return Ok(());
    }
    let name = merged_name(&opts.topic, run);
    let tier = if name.hour.is_some() {
        "hour"
    } else {
        "partition"
    };
    let Some(merged) = merge(store, folder, opts, run, name, deletions).await? else {
        summary.backed_off += 1;
        metrics::compaction_backed_off();
        return Ok(());
    };
    summary.files_in += run.len();
    summary.bytes_in += bytes_in;
    tracing::info!(key = ?merged.key, tier, sources = run.len(), rows = merged.rows, bytes = merged.bytes, removed = merged.removed, "files compacted");
    metrics::compacted(tier, run.len(), merged.bytes);
    summary.files_out += usize::from(merged.key.is_some());
    summary.bytes_out += merged.bytes;
    summary.rows += merged.rows;
    summary.events_removed += merged.removed;
    Ok(())
}

/// What a merge wrote: its key (None: every event was a deleted user's),
/// bytes, rows and the events it left out.
struct Merged {
    key: Option<String>,
    bytes: u64,
    rows: u64,
    removed: u64,
}

/// Write the run's rows, in their order, as one file without the events
/// of deleted users, named `name` ([`merged_name`], rows as written); then
/// remove the run's files. None: backed off, the
/// folder changed under the merge (a source gone, or a racing merge's file
/// sharing records with this one), nothing removed.
async fn merge(
    store: &dyn ObjectStore,
    folder: &str,
    opts: &CompactOptions,
    run: &[Source],
    mut name: FileName,
    deletions: &mut DeletionsWatch,
) -> Result<Option<Merged>, CompactError> {
    deletions.refresh().await?;
    let removal = Removal::deleted_users(deletions.users().clone(), &opts.tenant_property);
    let named = name.records();
    let mut writer = FilteringWriter::new(&removal, opts.row_group_rows, name.footer())?;
    let mut found = 0i64;
    for f in run {
        let body = match store.get(&f.info.key).await {
            Ok(body) => body,
            Err(StoreError::NotFound { key }) => {
                tracing::info!(%key, "a source was merged by another pass meanwhile; left to the next pass");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let read = |source: SchemaError| CompactError::Read {
            key: f.info.key.clone(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(body)
            .map_err(|e| read(e.into()))?
            .with_batch_size(16 * 1024)
            .build()
            .map_err(|e| read(e.into()))?;
        for batch in reader {
            let batch = batch.map_err(|e| read(e.into()))?;
            found += batch.num_rows() as i64;
            writer.write(&batch)?;
        }
    }
    if found != named {
        return Err(CompactError::Rows {
            first_source: run[0].info.key.clone(),
            others: run.len() - 1,
            named,
            found,
        });
    }
    let (mut rows, mut removed) = (writer.kept, writer.removed);
    let body = writer.finish()?;
    let mut bytes = body.len() as u64;
    let mut key = None;
    if rows > 0 {
        name.compacted_rows = Some(rows as i64);
        let mut written = name.key(folder);
        store.put(&written, body.clone()).await?;
        if deletions.refresh().await? {
            // A request made during the merge: applied to the new file now,
            // since the erasure pass may have listed the lake before it.
            let removal = Removal::deleted_users(deletions.users().clone(), &opts.tenant_property);
            let rewrite = without_covered(body, &removal, opts.row_group_rows)
                .map_err(CompactError::Write)?;
            if let Some(rewrite) = rewrite {
                rows = rewrite.kept;
                removed += rewrite.removed;
                if rewrite.kept > 0 {
                    let again = layout::erased_key(folder, &name, rows as i64);
                    bytes = rewrite.body.len() as u64;
                    store.put(&again, rewrite.body).await?;
                    store.delete(&written).await?;
                    written = again;
                } else {
                    store.delete(&written).await?;
                    bytes = 0;
                }
            }
        }
        if rows > 0 {
            if raced(store, folder, run, &written).await? {
                store.delete(&written).await?;
                return Ok(None);
            }
            key = Some(written);
        }
    }
    for f in run {
        if key.as_deref() != Some(f.info.key.as_str()) {
            store.delete(&f.info.key).await?;
        }
    }
    Ok(Some(Merged {
        key,
        bytes,
        rows,
        removed,
    }))
}

/// Whether the folder now holds a file that shares records with `written`
/// while neither replaces the other ([`FileName::conflicts`]): another
/// pass merged some of the same records differently.
async fn raced(
    store: &dyn ObjectStore,
    folder: &str,
    run: &[Source],
    written: &str,
) -> Result<bool, CompactError> {
    let now = named::list_named(store, folder).await?;
    let Some(ours) = now.iter().find(|f| f.info.key == written) else {
        return Ok(true);
    };
    let sources: HashSet<&str> = run.iter().map(|f| f.info.key.as_str()).collect();
    let rival = now
        .iter()
        .filter(|f| f.info.key != written && !sources.contains(f.info.key.as_str()))
        .find(|f| ours.name.conflicts(&f.name));
    if let Some(rival) = rival {
        tracing::warn!(written, rival = %rival.info.key, "another compaction merged some of the same records meanwhile: this file is removed and its sources left to the next pass");
    }
    Ok(rival.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::erased_key;
    use crate::schema::{BatchBuilder, read_parquet, to_parquet};
    use crate::store::LocalStore;
    use crate::test_support::{day, event, keys};

    fn no_deletions() -> DeletionsWatch {
        DeletionsWatch::fixed(Default::default())
    }

    #[test]
    fn runs_stay_under_the_size_and_single_files_are_left() {
        let files = [10, 10, 10, 95, 3, 200, 1];
        assert_eq!(plan(&files, 100), vec![0..3, 3..5]);
        assert_eq!(plan(&files, 1_000), vec![0..7]);
        assert_eq!(plan(&files[..1], 100), Vec::<Range<usize>>::new());
        assert_eq!(plan(&[], 100), Vec::<Range<usize>>::new());
    }

    /// Files of partition 0 as the archiver writes them around an hour
    /// boundary: records of 13:00 and 14:00 interleaved by offset.
    async fn archive_like(store: &LocalStore) -> Vec<(DateTime<Utc>, i64)> {
        archive_partition(store, 0).await
    }

    /// [`archive_like`]'s files for `partition`.
    async fn archive_partition(store: &LocalStore, partition: i32) -> Vec<(DateTime<Utc>, i64)> {
        let h13: DateTime<Utc> = "2026-01-01T13:00:00Z".parse().unwrap();
        let h14 = h13 + Duration::hours(1);
        let mut written = Vec::new();
        let runs: [(DateTime<Utc>, std::ops::Range<i64>); 6] = [
            (h13, 0..40),
            (h13, 40..90),
            (h14, 90..91),
            (h13, 91..92),
            (h14, 92..95),
            (h13, 95..96),
        ];
        for (hour, offsets) in runs {
            let mut b = BatchBuilder::default();
            for o in offsets.clone() {
                b.append(&event(o, hour + Duration::minutes(59)), partition, o);
                written.push((hour, o));
            }
            let body = to_parquet(&b.finish(), 1024).unwrap();
            let key = layout::file_key(hour, "events", partition, offsets.start, offsets.end - 1);
            store.put(&key, body).await.unwrap();
        }
        written
    }

    async fn offsets_in(store: &LocalStore, folder: &str) -> Vec<i64> {
        let mut out: Vec<i64> = records_in(store, folder)
            .await
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        out.sort();
        out
    }

    /// (partition, offset) of every record the folder's files hold, as
    /// readers see them (superseded files skipped).
    async fn records_in(store: &dyn ObjectStore, folder: &str) -> Vec<(i32, i64)> {
        let files = named::list_named(store, folder).await.unwrap();
        let gone = named::superseded(&files);
        let mut out = Vec::new();
        for f in files.iter().filter(|f| !gone.contains(f.info.key.as_str())) {
            let events = read_parquet(store.get(&f.info.key).await.unwrap()).unwrap();
            out.extend(events.into_iter().map(|e| (e.partition, e.offset)));
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_partition_hour_becomes_one_file_with_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let written = archive_like(&store).await;
        let dry = compact(&store, &day(true), &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((dry.files_in, dry.files_out, dry.rows), (6, 2, 96));
        assert_eq!(
            store.list("").await.unwrap().len(),
            6,
            "a dry run changes nothing"
        );

        let opts = day(false);
        let done = compact(&store, &opts, &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!(
            (done.folders, done.files_in, done.files_out, done.rows),
            (2, 6, 2, 96)
        );
        let keys = keys(&store, "").await;
        assert_eq!(
            keys,
            vec![
                "dt=2026-01-01/hour=13/events-0000-00000000000000000000-00000000000000000095-c92.parquet",
                "dt=2026-01-01/hour=14/events-0000-00000000000000000090-00000000000000000094-c4.parquet",
            ]
        );
        for (folder, hour) in [
            ("dt=2026-01-01/hour=13/", 13),
            ("dt=2026-01-01/hour=14/", 14),
        ] {
            let want: Vec<i64> = written
                .iter()
                .filter(|(h, _)| h.format("%H").to_string() == format!("{hour}"))
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(offsets_in(&store, folder).await, want, "{folder}");
        }
        assert_eq!(layout::records_named(keys.iter().map(String::as_str)), 96);

        // A straggler written after the pass joins the hour's file next time.
        let mut b = BatchBuilder::default();
        let h13: DateTime<Utc> = "2026-01-01T13:59:00Z".parse().unwrap();
        b.append(&event(120, h13), 0, 120);
        store
            .put(
                &layout::file_key(h13, "events", 0, 120, 120),
                to_parquet(&b.finish(), 1024).unwrap(),
            )
            .await
            .unwrap();
        let again = compact(&store, &opts, &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((again.files_in, again.files_out, again.rows), (2, 1, 93));
        assert_eq!(store.list("dt=2026-01-01/hour=13/").await.unwrap().len(), 1);

        // Nothing to do is nothing done; other partitions are left alone.
        let idle = compact(&store, &opts, &|p| p != 0, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((idle.files_in, idle.files_out), (0, 0));
    }

    #[tokio::test]
    async fn sources_a_stopped_pass_left_are_skipped_by_readers_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        archive_like(&store).await;
        let folder = "dt=2026-01-01/hour=13/";
        let before = store.list(folder).await.unwrap();
        // A pass that wrote the merged file and stopped before removing its
        // sources: the merged file, written by hand from the sources.
        let mut b = BatchBuilder::default();
        for o in &before {
            for e in read_parquet(store.get(&o.key).await.unwrap()).unwrap() {
                b.append(&e.event, e.partition, e.offset);
            }
        }
        let rows = b.rows() as i64;
        store
            .put(
                &layout::compacted_key(folder, "events", 0, 0, 95, rows),
                to_parquet(&b.finish(), 1024).unwrap(),
            )
            .await
            .unwrap();
        let everything = offsets_in(&store, folder).await;
        assert_eq!(everything.len(), 92, "readers see each record once");
        let opts = CompactOptions {
            from: "2026-01-01T13:00:00Z".parse().unwrap(),
            to: "2026-01-01T14:00:00Z".parse().unwrap(),
            ..day(false)
        };
        let done = compact(&store, &opts, &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((done.superseded_removed, done.files_in), (4, 0));
        assert_eq!(store.list(folder).await.unwrap().len(), 1);
        assert_eq!(offsets_in(&store, folder).await, everything);
    }

    fn deleted(users: &[&str]) -> hourglass_core::clickhouse::deletions::DeletedUsers {
        let mut d = hourglass_core::clickhouse::deletions::DeletedUsers::default();
        for u in users {
            d.add("p".into(), String::new(), (*u).into(), u32::MAX);
        }
        d
    }

    /// A day's compaction of [`archive_like`]'s files with `deletions`:
    /// the pass's summary, the keys left, and the offsets each hour holds.
    async fn compact_day(
        mut deletions: DeletionsWatch,
    ) -> (CompactSummary, Vec<String>, [Vec<i64>; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        archive_like(&store).await;
        let done = compact(&store, &day(false), &|_| true, &mut deletions)
            .await
            .unwrap();
        let keys = store.list("").await.unwrap().into_iter().map(|o| o.key);
        let hours = [
            offsets_in(&store, "dt=2026-01-01/hour=13/").await,
            offsets_in(&store, "dt=2026-01-01/hour=14/").await,
        ];
        (done, keys.collect(), hours)
    }

    /// Offsets [`archive_like`] writes for hour 13, but `gone`.
    fn hour_13_but(gone: &[i64]) -> Vec<i64> {
        (0..90)
            .chain([91, 95])
            .filter(|o| !gone.contains(o))
            .collect()
    }

    #[tokio::test]
    async fn a_merge_leaves_out_deleted_users_events() {
        let deletions = DeletionsWatch::fixed(deleted(&["u3", "u50", "u93"]));
        let (done, keys, [h13, h14]) = compact_day(deletions).await;
        assert_eq!((done.files_out, done.rows, done.events_removed), (2, 93, 3));
        assert_eq!(
            keys,
            vec![
                "dt=2026-01-01/hour=13/events-0000-00000000000000000000-00000000000000000095-c90.parquet",
                "dt=2026-01-01/hour=14/events-0000-00000000000000000090-00000000000000000094-c3.parquet",
            ]
        );
        assert_eq!(h13, hour_13_but(&[3, 50]));
        assert_eq!(h14, vec![90, 92, 94]);
    }

    #[tokio::test]
    async fn a_request_made_during_a_merge_is_applied_to_its_file() {
        // The hour-13 merge reads no request before it writes; the request
        // for u60 is there when it looks again.
        let deletions = DeletionsWatch::given([deleted(&[]), deleted(&["u60"])]);
        let (done, keys, [h13, h14]) = compact_day(deletions).await;
        assert_eq!((done.files_out, done.rows, done.events_removed), (2, 95, 1));
        assert_eq!(
            keys,
            vec![
                "dt=2026-01-01/hour=13/events-0000-00000000000000000000-00000000000000000095-c91-e1.parquet",
                "dt=2026-01-01/hour=14/events-0000-00000000000000000090-00000000000000000094-c4.parquet",
            ]
        );
        assert_eq!(h13, hour_13_but(&[60]));
        assert_eq!(h14, vec![90, 92, 93, 94]);
    }

    /// The key of an hour file of topic `events` in `folder`.
    fn hour_file(folder: &str, spans: &[(i32, i64, i64)], rows: i64) -> String {
        let spans = spans.iter().map(|&(p, f, l)| Span::new(p, f, l)).collect();
        FileName::compacted("events", spans, rows).key(folder)
    }

    /// The name (less rows) of hour 13's file of partitions 0 and 1.
    static HOUR_13_OF_0_AND_1: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    /// What [`archive_partition`] writes for hour 13 of each of `partitions`.
    fn hour_13_of(partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = partitions
            .iter()
            .flat_map(|&p| hour_13_but(&[]).into_iter().map(move |o| (p, o)))
            .collect();
        out.sort();
        out
    }

    async fn three_partitions(store: &LocalStore) {
        for p in 0..3 {
            archive_partition(store, p).await;
        }
    }

    /// One record of `partition` at `offset` in hour 13, written after the
    /// hour was compacted.
    async fn straggler(store: &LocalStore, partition: i32, offset: i64) {
        let h13: DateTime<Utc> = "2026-01-01T13:59:00Z".parse().unwrap();
        let mut b = BatchBuilder::default();
        b.append(&event(offset, h13), partition, offset);
        let key = layout::file_key(h13, "events", partition, offset, offset);
        store
            .put(&key, to_parquet(&b.finish(), 1024).unwrap())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn every_partitions_files_of_an_hour_become_one_file() {
        let h13 = "dt=2026-01-01/hour=13/";
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        three_partitions(&store).await;
        let done = compact(&store, &day(false), &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!(
            (done.files_in, done.files_out, done.hour_files, done.rows),
            (18 + 6, 6 + 2, 2, 2 * 3 * 96),
            "each partition's 6 files made 2 (one per hour), then each hour's 3 made 1"
        );
        let h14 = "dt=2026-01-01/hour=14/";
        assert_eq!(
            keys(&store, "").await,
            vec![
                hour_file(h13, &[(0, 0, 95), (1, 0, 95), (2, 0, 95)], 276),
                hour_file(h14, &[(0, 90, 94), (1, 90, 94), (2, 90, 94)], 12),
            ]
        );
        assert_eq!(records_in(&store, h13).await, hour_13_of(&[0, 1, 2]));

        // A straggler of partition 1 joins the hour file on the next pass.
        straggler(&store, 1, 120).await;
        let again = compact(&store, &day(false), &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((again.files_in, again.hour_files, again.rows), (2, 1, 277));
        assert_eq!(
            keys(&store, h13).await,
            vec![hour_file(h13, &[(0, 0, 95), (1, 0, 120), (2, 0, 95)], 277)]
        );
        let mut want = hour_13_of(&[0, 1, 2]);
        want.push((1, 120));
        want.sort();
        assert_eq!(records_in(&store, h13).await, want);

        // Off: one file per partition and hour.
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        three_partitions(&store).await;
        let per_partition = CompactOptions {
            across_partitions: false,
            ..day(false)
        };
        let done = compact(&store, &per_partition, &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((done.files_out, done.hour_files), (6, 0));
    }

    #[tokio::test]
    async fn hour_files_wait_for_every_partitions_own_merge() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        three_partitions(&store).await;
        let h13 = "dt=2026-01-01/hour=13/";
        // The holder of partition 0 passes first: partitions 1 and 2 still
        // have files their holders will merge.
        let first = compact(&store, &day(false), &|p| p == 0, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((first.files_out, first.hour_files), (2, 0));
        assert_eq!(store.list(h13).await.unwrap().len(), 1 + 2 * 4);
        let others = CompactOptions {
            across_partitions: false,
            ..day(false)
        };
        let second = compact(&store, &others, &|p| p != 0, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((second.files_out, second.hour_files), (4, 0));
        let third = compact(&store, &day(false), &|p| p == 0, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((third.files_in, third.hour_files), (6, 2));
        assert_eq!(store.list(h13).await.unwrap().len(), 1);
        assert_eq!(records_in(&store, h13).await, hour_13_of(&[0, 1, 2]));
    }

    /// Another pass's work, run while a merge is under way.
    type Rival = for<'a> fn(&'a LocalStore) -> futures::future::BoxFuture<'a, ()>;

    /// A local folder whose first `put` of a key holding `when` runs `then`
    /// right after it.
    struct Racing {
        inner: LocalStore,
        when: &'static String,
        then: std::sync::Mutex<Option<Rival>>,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Racing {
        async fn put(&self, key: &str, body: bytes::Bytes) -> Result<(), StoreError> {
            self.inner.put(key, body).await?;
            let then = self
                .then
                .lock()
                .unwrap()
                .take_if(|_| key.contains(self.when.as_str()));
            if let Some(then) = then {
                then(&self.inner).await;
            }
            Ok(())
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::store::ObjectInfo>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn get(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
            self.inner.get(key).await
        }
        async fn get_tail(&self, key: &str, bytes: u64) -> Result<bytes::Bytes, StoreError> {
            self.inner.get_tail(key, bytes).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    const C1: &str =
        "dt=2026-01-01/hour=13/events-0001-00000000000000000000-00000000000000000095-c92.parquet";

    /// Partition 1's holder merging its hour-13 file with the straggler at
    /// offset 120.
    fn merge_partition_1(s: &LocalStore) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut b = BatchBuilder::default();
            for e in read_parquet(s.get(C1).await.unwrap()).unwrap() {
                b.append(&e.event, 1, e.offset);
            }
            let h13: DateTime<Utc> = "2026-01-01T13:59:00Z".parse().unwrap();
            b.append(&event(120, h13), 1, 120);
            let merged = layout::compacted_key(&layout::hour_folder(h13), "events", 1, 0, 120, 93);
            s.put(&merged, to_parquet(&b.finish(), 1024).unwrap())
                .await
                .unwrap();
            s.delete(C1).await.unwrap();
            let straggler = layout::file_key(h13, "events", 1, 120, 120);
            s.delete(&straggler).await.unwrap();
        })
    }

    #[tokio::test]
    async fn a_merge_that_raced_another_backs_off_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::new(dir.path());
        for p in 0..2 {
            archive_partition(&local, p).await;
        }
        let per_partition = CompactOptions {
            across_partitions: false,
            ..day(false)
        };
        compact(&local, &per_partition, &|_| true, &mut no_deletions())
            .await
            .unwrap();
        straggler(&local, 1, 120).await;
        let h13 = "dt=2026-01-01/hour=13/";
        // While the hour file of partitions 0 and 1 is written, partition
        // 1's holder merges its file with the straggler.
        let store = Racing {
            inner: LocalStore::new(dir.path()),
            when: HOUR_13_OF_0_AND_1.get_or_init(|| {
                let key = hour_file(h13, &[(0, 0, 95), (1, 0, 95)], 184);
                key[..key.len() - "-c184.parquet".len()].to_owned()
            }),
            then: std::sync::Mutex::new(Some(merge_partition_1)),
        };
        // Only hour 13: the straggler is there, so partition 1 has two files
        // and the hour must wait; the pass is run as if it had listed before.
        let opts = CompactOptions {
            from: "2026-01-01T13:00:00Z".parse().unwrap(),
            to: "2026-01-01T14:00:00Z".parse().unwrap(),
            ..day(false)
        };
        let files = sources(&store, h13, &opts, &|_| true, &mut Default::default())
            .await
            .unwrap();
        let listed_before: Vec<Source> = files
            .into_iter()
            .filter(|f| !f.info.key.contains("-0001-00000000000000000120-"))
            .collect();
        assert_eq!(listed_before.len(), 2);
        let mut summary = CompactSummary::default();
        merge_run(
            &store,
            h13,
            &opts,
            &listed_before,
            &mut no_deletions(),
            &mut summary,
        )
        .await
        .unwrap();
        assert_eq!((summary.backed_off, summary.files_out), (1, 0));
        let mut want = hour_13_of(&[0, 1]);
        want.push((1, 120));
        want.sort();
        assert_eq!(
            keys(&store, h13).await,
            vec![
                "dt=2026-01-01/hour=13/events-0000-00000000000000000000-00000000000000000095-c92.parquet",
                "dt=2026-01-01/hour=13/events-0001-00000000000000000000-00000000000000000120-c93.parquet",
            ],
            "the hour file removed, partition 0's source kept"
        );
        assert_eq!(records_in(&store, h13).await, want);
        // The next pass makes the hour file of what is there now.
        let next = compact(&store, &opts, &|_| true, &mut no_deletions())
            .await
            .unwrap();
        assert_eq!((next.hour_files, next.backed_off), (1, 0));
        assert_eq!(
            keys(&store, h13).await,
            vec![hour_file(h13, &[(0, 0, 95), (1, 0, 120)], 185)]
        );
        assert_eq!(records_in(&store, h13).await, want);
    }

    #[tokio::test]
    async fn an_hour_file_is_rewritten_without_erased_events_over_its_spans() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        three_partitions(&store).await;
        compact(&store, &day(false), &|_| true, &mut no_deletions())
            .await
            .unwrap();
        let h13 = "dt=2026-01-01/hour=13/";
        let objects = store.list(h13).await.unwrap();
        // u7 is offset 7 of every partition.
        let removal = Removal::deleted_users(deleted(&["u7"]), "tenant");
        let done = crate::erase::remove_events(
            &store,
            &objects,
            std::sync::Arc::new(removal),
            1024,
            false,
        )
        .await
        .unwrap();
        assert_eq!((done.files_rewritten, done.events_removed), (1, 3));
        assert_eq!(
            keys(&store, h13).await,
            vec![erased_key(
                h13,
                &layout::parse_key(&hour_file(h13, &[(0, 0, 95), (1, 0, 95), (2, 0, 95)], 276))
                    .unwrap(),
                273
            )]
        );
        let want: Vec<(i32, i64)> = hour_13_of(&[0, 1, 2])
            .into_iter()
            .filter(|&(_, o)| o != 7)
            .collect();
        assert_eq!(records_in(&store, h13).await, want);
    }
}
