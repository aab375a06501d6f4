//! Reading a file that an earlier listing found. Compaction and erasure
//! replace files while readers run: a merged file (or a rewrite without
//! erased events) is written, then the files it replaces are removed. A
//! reader that listed a folder before the swap and reads after it finds its
//! file gone; it reads the file of the folder that now holds the same
//! partition's offsets instead, keeping only the gone file's offsets, so no
//! event is missed or read twice.

use bytes::Bytes;

use crate::layout::{self, FileName};
use crate::schema::LakeEvent;
use crate::store::{ObjectStore, StoreError};

/// A replaced file's replacement may itself be replaced before it is read
/// (the next compaction pass): look again this many times.
const LOOKS: usize = 5;

/// What was read for a listed file.
pub struct Listed {
    pub bytes: Bytes,
    /// Set when the file had been replaced: the replacement's events that
    /// were the listed file's (its partition, first and last offset).
    pub only: Option<(i32, i64, i64)>,
}

impl Listed {
    /// Keep the events that were the listed file's.
    pub fn keep_own(&self, events: &mut Vec<LakeEvent>) {
        if let Some((partition, first, last)) = self.only {
            events.retain(|e| e.partition == partition && (first..=last).contains(&e.offset));
        }
    }
}

/// The bytes of `key`, or of the file that replaced it since it was listed.
/// A file gone with nothing holding its offsets (removed by retention, or
/// every event of it erased) is [`StoreError::NotFound`]: a reader listing
/// again no longer finds it.
pub async fn get_listed(store: &dyn ObjectStore, key: &str) -> Result<Listed, StoreError> {
    let gone = match store.get(key).await {
        Err(StoreError::NotFound { .. }) => {
            layout::parse_key(key).ok_or_else(|| StoreError::NotFound {
                key: key.to_owned(),
            })?
        }
        other => return other.map(|bytes| Listed { bytes, only: None }),
    };
    for _ in 0..LOOKS {
        let Some(replacement) = replacement(store, key, &gone).await? else {
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
                    only: Some((gone.partition, gone.first, gone.last)),
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

/// The file of `key`'s folder, topic and partition that supersedes `gone`
/// ([`FileName::supersedes`]): the widest, and over the same range the
/// latest rewrite.
async fn replacement(
    store: &dyn ObjectStore,
    key: &str,
    gone: &FileName,
) -> Result<Option<String>, StoreError> {
    let folder = layout::folder_of(key);
    let best = store
        .list(folder)
        .await?
        .into_iter()
        .filter(|o| o.key != key && layout::folder_of(&o.key) == folder)
        .filter_map(|o| Some((layout::parse_key(&o.key)?, o.key)))
        .filter(|(f, _)| {
            f.topic == gone.topic && f.partition == gone.partition && f.supersedes(gone)
        })
        .max_by_key(|(f, _)| (f.last - f.first, f.erased, f.records()));
    Ok(best.map(|(_, key)| key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::compact;
    use crate::schema::{BatchBuilder, read_parquet, to_parquet};
    use crate::store::LocalStore;
    use crate::test_support::{day, event, keys};
    use chrono::{DateTime, Duration, Utc};
    use hourglass_core::clickhouse::deletions::DeletionsWatch;

    /// Read every listed file after compaction replaced them all.
    async fn read_all(store: &LocalStore, listed: &[String]) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        for key in listed {
            let got = get_listed(store, key).await.unwrap();
            assert!(got.only.is_some(), "{key} was replaced");
            let mut events = read_parquet(got.bytes.clone()).unwrap();
            got.keep_own(&mut events);
            out.push((key.clone(), events.iter().map(|e| e.offset).collect()));
        }
        out
    }

    /// Files listed before a compaction pass merged them (two partitions,
    /// records of two hours interleaved at the boundary) are read after it
    /// from the merged files: each listed file gives exactly its own
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
            expected.push((key, offsets.collect::<Vec<_>>()));
        }
        let listed = keys(&store, "dt=2026-01-01/").await;
        assert_eq!(listed.len(), 7);

        let pass = compact(
            &store,
            &day(false),
            &|_| true,
            &mut DeletionsWatch::fixed(Default::default()),
        )
        .await
        .unwrap();
        assert_eq!((pass.files_in, pass.files_out), (7, 3));
        assert!(
            store
                .list("")
                .await
                .unwrap()
                .iter()
                .all(|o| !listed.contains(&o.key)),
            "every listed file was replaced"
        );

        expected.sort();
        let mut read = read_all(&store, &listed).await;
        read.sort();
        assert_eq!(read, expected);
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
        assert!(matches!(
            get_listed(&store, &key).await,
            Err(StoreError::NotFound { key: k }) if k == key
        ));
    }
}
