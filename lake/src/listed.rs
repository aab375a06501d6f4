//! Reading a file that an earlier listing found. Compaction and erasure
//! replace files while readers run: a merged file (or a rewrite without
//! erased events) is written, then the files it replaces are removed. A
//! reader that listed a folder before the swap and reads after it finds its
//! file gone; it reads the file of the folder that now holds the same
//! partitions' offsets instead (a partition's merged file, or an hour file),
//! keeping only the gone file's offsets, so no event is missed or read
//! twice.

use bytes::Bytes;

use crate::layout::{self, FileName, Span};
use crate::named::{self, Named};
use crate::schema::LakeEvent;
use crate::store::{ObjectStore, StoreError};

/// A replaced file's replacement may itself be replaced before it is read
/// (the next compaction pass): look again this many times.
const LOOKS: usize = 5;

/// What was read for a listed file.
pub struct Listed {
    pub bytes: Bytes,
    /// Set when the file had been replaced: the replacement's events that
    /// were the listed file's (its spans).
    pub only: Option<Vec<Span>>,
}

impl Listed {
    /// Keep the events that were the listed file's.
    pub fn keep_own(&self, events: &mut Vec<LakeEvent>) {
        if let Some(spans) = &self.only {
            events.retain(|e| spans.iter().any(|s| s.holds(e.partition, e.offset)));
        }
    }
}

/// The bytes of the `listed` file, or of the file that replaced it since
/// it was listed. A file gone with nothing holding its offsets (removed by
/// retention, or every event of it erased) is [`StoreError::NotFound`]: a
/// reader listing again no longer finds it.
pub async fn get_listed(store: &dyn ObjectStore, listed: &Named) -> Result<Listed, StoreError> {
    let key = listed.info.key.as_str();
    match store.get(key).await {
        Err(StoreError::NotFound { .. }) => {}
        other => return other.map(|bytes| Listed { bytes, only: None }),
    }
    let gone = &listed.name;
    for _ in 0..LOOKS {
        let Some(replacement) = replacement(store, key, gone).await? else {
            break;
        };
        match store.get(&replacement).await {
            Ok(bytes) => {
                tracing::debug!(
                    listed = key,
                    read = replacement,
                    "read the file that replaced a listed one"
                );
                return Ok(Listed {
                    bytes,
                    only: Some(gone.spans.clone()),
                });
            }
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::NotFound {
        key: key.to_owned(),
    })
}

/// The file of `key`'s folder that supersedes `gone`
/// ([`FileName::supersedes`]): the widest, and over the same spans the
/// latest rewrite.
async fn replacement(
    store: &dyn ObjectStore,
    key: &str,
    gone: &FileName,
) -> Result<Option<String>, StoreError> {
    let folder = layout::folder_of(key);
    let best = named::list_named(store, folder)
        .await?
        .into_iter()
        .filter(|f| f.info.key != key && layout::folder_of(&f.info.key) == folder)
        .filter(|f| f.name.supersedes(gone))
        .max_by_key(|f| (width(&f.name), f.name.erased, f.name.records()));
    Ok(best.map(|f| f.info.key))
}

/// How many offsets a file's spans reach over: of two files that both
/// supersede a gone one, the wider holds the other.
fn width(f: &FileName) -> i64 {
    f.spans.iter().map(|s| s.last - s.first + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::compact;
    use crate::schema::{BatchBuilder, read_parquet, to_parquet};
    use crate::store::LocalStore;
    use crate::test_support::{day, event};
    use chrono::{DateTime, Duration, Utc};
    use hourglass_core::clickhouse::deletions::DeletionsWatch;

    /// Read every listed file after compaction replaced them all: each
    /// one's (partition, offset) pairs, by key.
    async fn read_all(store: &LocalStore, listed: &[Named]) -> Vec<(String, Vec<(i32, i64)>)> {
        let mut out = Vec::new();
        for f in listed {
            let got = get_listed(store, f).await.unwrap();
            assert!(got.only.is_some(), "{} was replaced", f.info.key);
            let mut events = read_parquet(got.bytes.clone()).unwrap();
            got.keep_own(&mut events);
            let records = events.iter().map(|e| (e.partition, e.offset)).collect();
            out.push((f.info.key.clone(), records));
        }
        out.sort();
        out
    }

    async fn compact_day(store: &LocalStore) -> crate::compact::CompactSummary {
        compact(
            store,
            &day(false),
            &|_| true,
            &mut DeletionsWatch::fixed(Default::default()),
        )
        .await
        .unwrap()
    }

    /// Files listed before a compaction pass merged them (two partitions,
    /// records of two hours interleaved at the boundary) are read after it
    /// from the merged files (an hour file for hour 13): each listed file gives exactly its own
    /// records, so the reader sees every record once.
    #[tokio::test]
    async fn files_listed_before_a_compaction_are_read_from_what_replaced_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let h13: DateTime<Utc> = "2026-01-01T13:00:00Z".parse().unwrap();
        let h14 = h13 + Duration::hours(1);
        let runs: [(DateTime<Utc>, i32, std::ops::Range<i64>); 7] = [
            (h13, 0, 0..40),
            (h13, 0, 40..90),
            (h14, 0, 90..91),
            (h13, 0, 91..92),
            (h14, 0, 92..95),
            (h13, 1, 0..7),
            (h13, 1, 7..20),
        ];
        let mut expected = Vec::new();
        for (hour, partition, offsets) in runs {
            let mut b = BatchBuilder::default();
            for o in offsets.clone() {
                b.append(&event(o, hour + Duration::minutes(59)), partition, o);
            }
            let key = layout::file_key(hour, "events", partition, offsets.start, offsets.end - 1);
            store
                .put(&key, to_parquet(&b.finish(), 1024).unwrap())
                .await
                .unwrap();
            expected.push((key, offsets.map(|o| (partition, o)).collect::<Vec<_>>()));
        }
        let listed = named::list_named(&store, "dt=2026-01-01/").await.unwrap();
        assert_eq!(listed.len(), 7);

        let pass = compact_day(&store).await;
        // Each partition-hour's files made one, then hour 13's two
        // partitions' files one hour file.
        assert_eq!(
            (pass.files_in, pass.files_out, pass.hour_files),
            (7 + 2, 3 + 1, 1)
        );
        assert!(
            store
                .list("")
                .await
                .unwrap()
                .iter()
                .all(|o| listed.iter().all(|f| f.info.key != o.key)),
            "every listed file was replaced"
        );
        expected.sort();
        assert_eq!(read_all(&store, &listed).await, expected);

        // The hour file listed, then replaced by a wider one (a straggler of
        // partition 1 merged in): read from it, only its own records.
        let h13_folder = layout::hour_folder(h13);
        let listed = named::list_named(&store, &h13_folder).await.unwrap();
        assert_eq!(listed.len(), 1);
        let mut expected: Vec<(i32, i64)> = (0..90)
            .chain([91])
            .map(|o| (0, o))
            .chain((0..20).map(|o| (1, o)))
            .collect();
        expected.sort();
        let mut b = BatchBuilder::default();
        b.append(&event(50, h13), 1, 50);
        let straggler = layout::file_key(h13, "events", 1, 50, 50);
        store
            .put(&straggler, to_parquet(&b.finish(), 1024).unwrap())
            .await
            .unwrap();
        assert_eq!(compact_day(&store).await.hour_files, 1);
        assert_eq!(
            read_all(&store, &listed).await,
            vec![(listed[0].info.key.clone(), expected)]
        );
    }

    /// A listed file gone with nothing holding its offsets is an error, not
    /// an empty read.
    #[tokio::test]
    async fn a_file_gone_with_nothing_in_its_place_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let hour: DateTime<Utc> = "2026-01-01T13:00:00Z".parse().unwrap();
        let key = layout::file_key(hour, "events", 0, 0, 9);
        let other = layout::file_key(hour, "events", 1, 0, 99);
        store.put(&other, Bytes::from_static(b"x")).await.unwrap();
        let listed = Named {
            info: crate::store::ObjectInfo {
                key: key.clone(),
                size: 1,
            },
            name: layout::parse_key(&key).unwrap(),
        };
        assert!(matches!(
            get_listed(&store, &listed).await,
            Err(StoreError::NotFound { key: k }) if k == key
        ));
    }
}
