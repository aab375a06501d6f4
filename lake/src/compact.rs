//! Compaction: the files the archiver wrote for one partition and hour made
//! one, once the hour has settled.
//!
//! The archiver closes a file every `lake.file_max_age_secs` per partition,
//! and around an hour boundary (records of two hours interleaved) files of
//! a record or two: a day holds thousands of small objects, which readers
//! (DuckDB, Spark, replay) pay for per object. A pass lists the hour
//! folders of a range and, per partition, merges runs of files up to
//! `lake.compact_max_bytes` into one file named by its first and last
//! offset and its row count ([`layout::compacted_key`]), then removes the
//! sources. Nothing is lost or doubled if a pass stops anywhere: the merged
//! file is complete before any source is removed, and sources left behind
//! are [`layout::superseded`] (readers skip them, the next pass removes
//! them). Two passes on one partition (a rebalance mid-pass) write the same
//! object for the same sources.
//!
//! A merge leaves out the events of deleted users (`deletions`, read before
//! each merge), and reads the requests again once its file is written: a
//! request made while it ran is applied to that file before the sources go
//! (the file is rewritten as the erasure pass would). So a file compaction
//! writes after a request never holds what the request covers, and the
//! erasure pass, which starts well after the request, sees every file
//! written before it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use hourglass_core::clickhouse::deletions::DeletionsWatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::erase::{FilteringWriter, Removal, without_covered};
use crate::layout::{self, FileName};
use crate::metrics;
use crate::schema::SchemaError;
use crate::store::{ObjectInfo, ObjectStore, StoreError};

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
    /// Files written in their place, their bytes and rows.
    pub files_out: usize,
    pub bytes_out: u64,
    pub rows: u64,
    /// Events of deleted users left out of the files written.
    pub events_removed: u64,
    /// Sources a stopped pass left behind, removed.
    pub superseded_removed: usize,
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
    #[error("{folder}: partition {partition}'s files hold {found} rows, their names say {named}")]
    Rows {
        folder: String,
        partition: i32,
        named: i64,
        found: i64,
    },
}

impl From<parquet::errors::ParquetError> for CompactError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Write(e.into())
    }
}

/// One file of a folder, with what its name says.
#[derive(Debug, Clone)]
struct Source {
    info: ObjectInfo,
    name: FileName,
}

/// Runs of a partition's files (in offset order) to merge: consecutive
/// files whose sizes add up to at most `max_bytes`; a run of one is left.
fn plan(sizes: &[u64], max_bytes: u64) -> Vec<std::ops::Range<usize>> {
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
        let objects = store.list(&folder).await?;
        if objects.is_empty() {
            continue;
        }
        summary.folders += 1;
        let gone = layout::superseded(objects.iter().map(|o| o.key.as_str()));
        let mut partitions: BTreeMap<i32, Vec<Source>> = BTreeMap::new();
        for info in &objects {
            let Some(name) = layout::parse_key(&info.key) else {
                continue;
            };
            if name.topic != opts.topic || !owns(name.partition) {
                continue;
            }
            if gone.contains(info.key.as_str()) {
                if !opts.dry_run {
                    store.delete(&info.key).await?;
                    metrics::compaction_superseded_removed();
                }
                summary.superseded_removed += 1;
                continue;
            }
            partitions.entry(name.partition).or_default().push(Source {
                info: info.clone(),
                name,
            });
        }
        for (partition, mut files) in partitions {
            files.sort_by_key(|f| f.name.first);
            let sizes: Vec<u64> = files.iter().map(|f| f.info.size).collect();
            for run in plan(&sizes, opts.max_bytes) {
                let run = &files[run];
                summary.files_in += run.len();
                summary.bytes_in += run.iter().map(|f| f.info.size).sum::<u64>();
                if opts.dry_run {
                    summary.files_out += 1;
                    summary.rows += run.iter().map(|f| f.name.records() as u64).sum::<u64>();
                    continue;
                }
                let merged = merge(store, &folder, opts, partition, run, deletions).await?;
                tracing::info!(key = ?merged.key, sources = run.len(), rows = merged.rows, bytes = merged.bytes, removed = merged.removed, "files compacted");
                metrics::compacted(run.len(), merged.bytes);
                summary.files_out += usize::from(merged.key.is_some());
                summary.bytes_out += merged.bytes;
                summary.rows += merged.rows;
                summary.events_removed += merged.removed;
            }
        }
    }
    Ok(summary)
}

/// What a merge wrote: its key (None: every event was a deleted user's),
/// bytes, rows and the events it left out.
struct Merged {
    key: Option<String>,
    bytes: u64,
    rows: u64,
    removed: u64,
}

/// Write the run's rows, in offset order, as one file without the events
/// of deleted users; then remove the run's files.
async fn merge(
    store: &dyn ObjectStore,
    folder: &str,
    opts: &CompactOptions,
    partition: i32,
    run: &[Source],
    deletions: &mut DeletionsWatch,
) -> Result<Merged, CompactError> {
    deletions.refresh().await?;
    let removal = Removal::deleted_users(deletions.users().clone(), &opts.tenant_property);
    let named: i64 = run.iter().map(|f| f.name.records()).sum();
    let mut writer = FilteringWriter::new(&removal, opts.row_group_rows)?;
    let mut found = 0i64;
    for f in run {
        let body = store.get(&f.info.key).await?;
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
            folder: folder.to_owned(),
            partition,
            named,
            found,
        });
    }
    let (mut rows, mut removed) = (writer.kept, writer.removed);
    let body = writer.finish()?;
    let mut bytes = body.len() as u64;
    let first = run.iter().map(|f| f.name.first).min().unwrap_or_default();
    let last = run.iter().map(|f| f.name.last).max().unwrap_or_default();
    let mut key = None;
    if rows > 0 {
        let mut written =
            layout::compacted_key(folder, &opts.topic, partition, first, last, rows as i64);
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
                let name = layout::parse_key(&written).expect("a key compaction made");
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
            key = Some(written);
        }
    }
    for f in run {
        if key.as_deref() != Some(f.info.key.as_str()) {
            store.delete(&f.info.key).await?;
        }
    }
    Ok(Merged {
        key,
        bytes,
        rows,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(plan(&files[..1], 100), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(plan(&[], 100), Vec::<std::ops::Range<usize>>::new());
    }

    /// Files of partition 0 as the archiver writes them around an hour
    /// boundary: records of 13:00 and 14:00 interleaved by offset.
    async fn archive_like(store: &LocalStore) -> Vec<(DateTime<Utc>, i64)> {
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
                b.append(&event(o, hour + Duration::minutes(59)), 0, o);
                written.push((hour, o));
            }
            let body = to_parquet(&b.finish(), 1024).unwrap();
            let key = layout::file_key(hour, "events", 0, offsets.start, offsets.end - 1);
            store.put(&key, body).await.unwrap();
        }
        written
    }

    async fn offsets_in(store: &LocalStore, folder: &str) -> Vec<i64> {
        let mut out = Vec::new();
        let objects = store.list(folder).await.unwrap();
        let gone = layout::superseded(objects.iter().map(|o| o.key.as_str()));
        for o in objects.iter().filter(|o| !gone.contains(o.key.as_str())) {
            out.extend(
                read_parquet(store.get(&o.key).await.unwrap())
                    .unwrap()
                    .into_iter()
                    .map(|e| e.offset),
            );
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
}
