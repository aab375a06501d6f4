//! Where lake objects live, behind one small trait: a local folder (the
//! default on one machine) or S3 (aws-sdk-s3; AWS or any S3-compatible
//! server). Keys are `/`-separated paths relative to the lake's root.

use std::path::PathBuf;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use hourglass_core::Config;
use hourglass_core::config::LakeStorage;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lake folder {path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    /// An object among the lake's files that the lake did not write as it
    /// is (an hour file's footer without its spans).
    #[error("lake object {key} is not a file the lake wrote: {reason}")]
    NotLake { key: String, reason: String },
    /// `get` of a key that is not (or no longer) there.
    #[error("lake object {key} is not there (removed since it was listed: list again)")]
    NotFound { key: String },
    #[error("S3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Write `body` under `key`, replacing what was there; visible to readers
    /// only once complete.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// The object's bytes; [`StoreError::NotFound`] when it is not there.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// The object's last `bytes` bytes (all of it when smaller): a Parquet
    /// file's footer without the file.
    async fn get_tail(&self, key: &str, bytes: u64) -> Result<Bytes, StoreError>;
    /// Remove an object; one already gone is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Where this store is, for people.
    fn describe(&self) -> String;
}

/// The store the configuration names.
pub async fn open(cfg: &Config) -> Result<Box<dyn ObjectStore>, StoreError> {
    Ok(match cfg.lake.storage {
        LakeStorage::Local => Box::new(LocalStore::new(&cfg.lake.local_dir)),
        LakeStorage::S3 => {
            let client = hourglass_core::s3::client(&cfg.s3).await;
            Box::new(S3Store {
                client,
                bucket: cfg.s3.bucket.clone(),
                prefix: cfg.s3.prefix.trim_matches('/').to_owned(),
                part_size: cfg.lake.multipart_threshold_bytes.max(5 * 1024 * 1024),
            })
        }
    })
}

/// A folder: objects are files; a write goes to a temporary name first and
/// is renamed into place, so a reader never sees half a file.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn err(path: &std::path::Path, source: std::io::Error) -> StoreError {
        StoreError::Local {
            path: path.display().to_string(),
            source,
        }
    }

    /// A failed read of `key`: [`StoreError::NotFound`] when it is not there.
    fn read_err(key: &str, path: &std::path::Path, e: std::io::Error) -> StoreError {
        match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound {
                key: key.to_owned(),
            },
            _ => Self::err(path, e),
        }
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.root.join(key);
        let dir = path.parent().expect("keys have a folder").to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Self::err(&dir, e))?;
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        tokio::fs::write(&tmp, &body)
            .await
            .map_err(|e| Self::err(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| Self::err(&path, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // The folder part of the prefix, then a name filter.
        let folder = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut stack = vec![self.root.join(folder)];
        let base = self.root.clone();
        while let Some(dir) = stack.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::err(&dir, e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(|e| Self::err(&dir, e))? {
                // A write in progress (renamed into place any moment): not
                // an object yet.
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                // Removed since the folder was read (compaction, erasure,
                // retention running beside this listing): no longer there.
                let meta = match entry.metadata().await {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Self::err(&path, e)),
                };
                let rel = path
                    .strip_prefix(&base)
                    .expect("under the root")
                    .to_string_lossy()
                    .replace('\\', "/");
                if meta.is_dir() {
                    stack.push(path);
                } else if rel.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key: rel,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.root.join(key);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::err(&path, e)),
            _ => Ok(()),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.root.join(key);
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| Self::read_err(key, &path, e))
    }

    async fn get_tail(&self, key: &str, bytes: u64) -> Result<Bytes, StoreError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.root.join(key);
        let failed = |e| Self::read_err(key, &path, e);
        let mut file = tokio::fs::File::open(&path).await.map_err(failed)?;
        let size = file.metadata().await.map_err(failed)?.len();
        let from = size.saturating_sub(bytes);
        file.seek(std::io::SeekFrom::Start(from))
            .await
            .map_err(failed)?;
        let mut out = Vec::with_capacity((size - from) as usize);
        file.read_to_end(&mut out).await.map_err(failed)?;
        Ok(Bytes::from(out))
    }

    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }
}

/// An S3 bucket under a key prefix. Objects of `part_size` or more are sent
/// as a multipart upload (aborted on failure, so no parts are left behind).
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

impl S3Store {
    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn err(op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::S3 {
            op,
            key: key.to_owned(),
            message: e.to_string(),
        }
    }

    async fn multipart(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                Self::err(
                    "CreateMultipartUpload",
                    key,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            for (i, chunk) in body.chunks(self.part_size).enumerate() {
                let number = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.slice_ref(chunk)))
                    .send()
                    .await
                    .map_err(|e| {
                        Self::err("UploadPart", key, aws_sdk_s3::error::DisplayErrorContext(e))
                    })?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| {
                    Self::err(
                        "CompleteMultipartUpload",
                        key,
                        aws_sdk_s3::error::DisplayErrorContext(e),
                    )
                })?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let key = self.full(key);
        if body.len() >= self.part_size {
            return self.multipart(&key, body).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| Self::err("PutObject", &key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = self.full(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Self::err(
                    "ListObjectsV2",
                    &full,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectInfo {
                        key: k[strip.min(k.len())..].to_owned(),
                        size: o.size().unwrap_or_default().max(0) as u64,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        // S3 answers a DELETE of a missing key with success too.
        let key = self.full(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                Self::err(
                    "DeleteObject",
                    &key,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_range(key, None).await
    }

    async fn get_tail(&self, key: &str, bytes: u64) -> Result<Bytes, StoreError> {
        self.get_range(key, Some(format!("bytes=-{}", bytes.max(1))))
            .await
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Store {
    /// GetObject, of `range` (an HTTP Range) when given.
    async fn get_range(&self, key: &str, range: Option<String>) -> Result<Bytes, StoreError> {
        let key = self.full(key);
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_range(range)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StoreError::NotFound { key: key.clone() }
                } else {
                    Self::err("GetObject", &key, aws_sdk_s3::error::DisplayErrorContext(e))
                }
            })?;
        let body = o
            .body
            .collect()
            .await
            .map_err(|e| Self::err("GetObject", &key, e))?;
        Ok(body.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_puts_lists_and_gets() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .put(
                "dt=2026-01-01/hour=00/a-1.parquet",
                Bytes::from_static(b"one"),
            )
            .await
            .unwrap();
        store
            .put(
                "dt=2026-01-01/hour=01/a-2.parquet",
                Bytes::from_static(b"two!"),
            )
            .await
            .unwrap();
        store
            .put(
                "dt=2026-01-02/hour=00/b-1.parquet",
                Bytes::from_static(b"3"),
            )
            .await
            .unwrap();
        let all = store.list("").await.unwrap();
        assert_eq!(all.len(), 3);
        let day = store.list("dt=2026-01-01/").await.unwrap();
        assert_eq!(day.iter().map(|o| o.size).collect::<Vec<_>>(), vec![3, 4]);
        let named = store.list("dt=2026-01-01/hour=01/a-").await.unwrap();
        assert_eq!(named.len(), 1);
        assert!(
            store
                .list("dt=2026-01-01/hour=01/b-")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.list("dt=2030-01-01/").await.unwrap().is_empty());
        assert_eq!(
            &store
                .get("dt=2026-01-02/hour=00/b-1.parquet")
                .await
                .unwrap()[..],
            b"3"
        );
        let a2 = "dt=2026-01-01/hour=01/a-2.parquet";
        assert_eq!(&store.get_tail(a2, 2).await.unwrap()[..], b"o!");
        assert_eq!(&store.get_tail(a2, 10).await.unwrap()[..], b"two!");
        assert!(matches!(
            store
                .get_tail("dt=2026-01-01/hour=01/gone.parquet", 8)
                .await,
            Err(StoreError::NotFound { .. })
        ));
    }

    /// A listing runs while files are written (temporary name, then a
    /// rename) and removed beside it, as replay or compaction list while
    /// the archiver writes: what vanishes mid-listing is left out, never an
    /// error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_tolerates_files_written_and_removed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::new(dir.path()));
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..2_000 {
                    let key = format!("dt=2026-01-01/hour=00/a-{i}.parquet");
                    store.put(&key, Bytes::from_static(b"x")).await.unwrap();
                    if i % 2 == 0 {
                        store.delete(&key).await.unwrap();
                    }
                }
            })
        };
        let mut listings = 0;
        while !writer.is_finished() {
            let listed = store.list("dt=2026-01-01/").await.unwrap();
            assert!(listed.iter().all(|o| !o.key.contains("/.")), "{listed:?}");
            listings += 1;
        }
        writer.await.unwrap();
        assert!(listings > 1);
        assert_eq!(store.list("").await.unwrap().len(), 1_000);
    }
}
