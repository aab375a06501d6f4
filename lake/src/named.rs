//! A listing's files with what each holds. A file's key says it, but for
//! an hour file, whose spans are in its Parquet footer
//! ([`layout::SPANS_KEY`]): that footer is read from the object's tail
//! (one small range read per hour file, about one per hour folder).

use std::collections::HashSet;

use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};

use crate::layout::{self, FileName};
use crate::store::{ObjectInfo, ObjectStore, StoreError};

/// A listed lake file and what it holds.
#[derive(Debug, Clone)]
pub struct Named {
    pub info: ObjectInfo,
    pub name: FileName,
}

/// Bytes read from an hour file's end at first: its footer, with room to
/// spare (a footer larger than this takes a second read).
const TAIL_BYTES: u64 = 64 * 1024;

/// The lake files among `objects` (keys that are not lake files left out),
/// each with what it holds. An hour file removed since the listing is left
/// out too: what replaced it is listed by the next look.
pub async fn name_all(
    store: &dyn ObjectStore,
    objects: impl IntoIterator<Item = ObjectInfo>,
) -> Result<Vec<Named>, StoreError> {
    let mut out = Vec::new();
    for info in objects {
        let Some(name) = layout::parse_key(&info.key) else {
            continue;
        };
        let name = if name.hour.is_some() {
            match footer_spans(store, &info.key, name, TAIL_BYTES).await {
                Ok(name) => name,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        } else {
            name
        };
        out.push(Named { info, name });
    }
    Ok(out)
}

/// [`name_all`] of the objects under `prefix`.
pub async fn list_named(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<Named>, StoreError> {
    let objects = store.list(prefix).await?;
    name_all(store, objects).await
}

/// Keys of `files` that another of them supersedes ([`layout::superseded`]).
pub fn superseded(files: &[Named]) -> HashSet<&str> {
    layout::superseded(files.iter().map(|f| (f.info.key.as_str(), &f.name)))
}

/// `files` split into those readers read and those another of them
/// supersedes ([`superseded`]).
pub fn split_superseded(files: Vec<Named>) -> (Vec<Named>, Vec<Named>) {
    let gone: HashSet<String> = superseded(&files).into_iter().map(str::to_owned).collect();
    files.into_iter().partition(|f| !gone.contains(&f.info.key))
}

/// `name` (an hour file's) with the spans its footer holds, reading
/// `first_read` bytes of its end first.
async fn footer_spans(
    store: &dyn ObjectStore,
    key: &str,
    name: FileName,
    first_read: u64,
) -> Result<FileName, StoreError> {
    let bad = |reason: String| StoreError::NotLake {
        key: key.to_owned(),
        reason,
    };
    let mut tail = store.get_tail(key, first_read).await?;
    let footer_at = |tail: &[u8]| -> Result<usize, StoreError> {
        let end = tail
            .get(tail.len().saturating_sub(8)..)
            .filter(|end| end.len() == 8)
            .ok_or_else(|| bad("shorter than a Parquet footer".into()))?;
        let len = FooterTail::try_from(end)
            .map_err(|e| bad(e.to_string()))?
            .metadata_length();
        Ok(len + 8)
    };
    let needed = footer_at(&tail)?;
    if needed > tail.len() {
        tail = store.get_tail(key, needed as u64).await?;
        if needed > tail.len() {
            return Err(bad(format!(
                "footer of {needed} bytes in a file of {}",
                tail.len()
            )));
        }
    }
    let metadata = &tail[tail.len() - needed..tail.len() - 8];
    let meta = ParquetMetaDataReader::decode_metadata(metadata).map_err(|e| bad(e.to_string()))?;
    let text = layout::spans_footer(meta.file_metadata())
        .into_iter()
        .find_map(|kv| kv.value)
        .ok_or_else(|| bad(format!("an hour file without `{}`", layout::SPANS_KEY)))?;
    name.with_footer_spans(&text)
        .ok_or_else(|| bad(format!("spans `{text}` do not match the name's digest")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Span;
    use crate::schema::{BatchBuilder, parquet_writer};
    use crate::store::LocalStore;
    use crate::test_support::event;

    #[tokio::test]
    async fn an_hour_files_spans_come_from_its_footer() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let folder = "dt=2026-01-01/hour=13/";
        let at = "2026-01-01T13:10:00Z".parse().unwrap();
        let name = FileName::compacted("events", vec![Span::new(0, 0, 1), Span::new(1, 5, 5)], 3);
        let mut b = BatchBuilder::default();
        for (p, o) in [(0, 0), (0, 1), (1, 5)] {
            b.append(&event(o, at), p, o);
        }
        let mut writer = parquet_writer(1, name.footer()).unwrap();
        writer.write(&b.finish()).unwrap();
        let body = bytes::Bytes::from(writer.into_inner().unwrap());
        store.put(&name.key(folder), body.clone()).await.unwrap();
        // Written without its footer entry, or under another digest.
        let bare = FileName::compacted("events", vec![Span::new(0, 0, 9), Span::new(1, 0, 9)], 3);
        let b2 = crate::schema::to_parquet(&b.finish(), 1024).unwrap();
        store.put(&bare.key(folder), b2).await.unwrap();
        let single = layout::file_key(at, "events", 2, 0, 0);
        store
            .put(&single, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        store
            .put(&format!("{folder}notes.txt"), bytes::Bytes::new())
            .await
            .unwrap();

        let err = list_named(&store, folder).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::NotLake { key, reason } if *key == bare.key(folder) && reason.contains(layout::SPANS_KEY)),
            "{err}"
        );
        store.delete(&bare.key(folder)).await.unwrap();
        let named = list_named(&store, folder).await.unwrap();
        let got: Vec<(&str, &FileName)> = named
            .iter()
            .map(|n| (n.info.key.as_str(), &n.name))
            .collect();
        let single_name = layout::parse_key(&single).unwrap();
        assert_eq!(
            got,
            vec![
                (single.as_str(), &single_name),
                (name.key(folder).as_str(), &name)
            ]
        );
        assert!(superseded(&named).is_empty());
        // A first read shorter than the footer takes a second, exact one.
        let parsed = layout::parse_key(&name.key(folder)).unwrap();
        let read = footer_spans(&store, &name.key(folder), parsed, 16)
            .await
            .unwrap();
        assert_eq!(read, name);
    }
}
