//! The archiver: Kafka `events` → one Parquet file per partition and hour of
//! `received_at`, in the lake.
//!
//! Exactly once without a coordinator: a file's name is its topic,
//! partition, first and last offset, and before a file is started at offset
//! F the lake is asked whether a file starting at F already exists (written
//! before a crash, whose commit was lost). If so its records are skipped
//! through its last offset. Kafka commits (made only after an object is
//! complete) say where to start reading; the lake says what is already there.
//!
//! Events of users deleted before they were archived (`deletions`, read
//! again every few seconds when it changed) are left out, as the loader
//! leaves them out of `events`; a file that left any out is named with its
//! row count (`layout::compacted_key`), since its offsets have gaps. What
//! was archived before a request is rewritten by the erasure pass
//! (`crate::erase`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hourglass_core::Config;
use hourglass_core::clickhouse::deletions::DeletionsWatch;
use hourglass_core::config::{ConsumersConfig, LakeConfig};
use hourglass_core::consumer::{AssignmentWatchdog, ConsumerError, PausedRetry};
use hourglass_core::contract::EventEnvelope;
use hourglass_core::kafka::LagReporting;
use hourglass_core::kafka::assign::commit_hint;
use hourglass_core::telemetry::Readiness;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::layout;
use crate::metrics;
use crate::schema::{BatchBuilder, to_parquet};
use crate::store::{ObjectStore, StoreError};

fn parquet_failed(e: crate::schema::SchemaError) -> ConsumerError {
    ConsumerError::Sink {
        what: "encoding Parquet",
        error: e.to_string(),
    }
}

/// How often finished files' offsets are committed. A commit per file
/// would send one OffsetCommit per object, and around an hour boundary
/// (records of two hours interleaved) files hold a record or two: hundreds
/// of commits a second, each a write in the broker's store, queued on the
/// coordinator connection ahead of the heartbeats (tansu 0.6 let such a
/// member's session expire and never took it back). Committing later only
/// means more re-reading after a crash, which the lake's existence check
/// skips.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// How often `deletions` is asked whether it changed.
const DELETIONS_EVERY: Duration = Duration::from_secs(5);

/// The partitions a member holds, shared with its compaction passes.
pub type OwnedPartitions = Arc<std::sync::RwLock<std::collections::HashSet<i32>>>;

/// One file being filled.
struct OpenFile {
    hour: DateTime<Utc>,
    first: i64,
    last: i64,
    builder: BatchBuilder,
    /// Events of deleted users read into this file's offsets, left out.
    left_out: usize,
    bytes: usize,
    opened: Instant,
}

pub struct Archiver {
    consumer: BaseConsumer<LagReporting>,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    topic: String,
    cfg: LakeConfig,
    retry: ConsumersConfig,
    watchdog: AssignmentWatchdog,
    files: HashMap<i32, OpenFile>,
    /// Offsets already in the lake, per partition (found by the existence check).
    skip_through: HashMap<i32, i64>,
    /// Next offset to read per partition (to re-seek after a pause).
    next: HashMap<i32, i64>,
    /// Offset after the last file written per partition, not yet committed.
    to_commit: HashMap<i32, i64>,
    last_commit: Instant,
    shutdown: CancellationToken,
    readiness: Readiness,
    /// Partitions assigned to this member, for its compaction passes.
    owned: OwnedPartitions,
    /// A seek after a pause that failed for good: the consumer's position
    /// is no longer ours, so the archiver stops (a restart resumes from the
    /// last commit).
    position_lost: Option<ConsumerError>,
    deletions: DeletionsWatch,
    tenant_property: String,
    deletions_checked: Option<Instant>,
}

impl Archiver {
    pub fn new(
        consumer: BaseConsumer<LagReporting>,
        store: Arc<dyn ObjectStore>,
        topic: &str,
        cfg: &Config,
        watchdog: AssignmentWatchdog,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> Self {
        Self {
            consumer,
            store,
            runtime: tokio::runtime::Handle::current(),
            topic: topic.to_owned(),
            cfg: cfg.lake.clone(),
            retry: cfg.consumers.clone(),
            watchdog,
            files: HashMap::new(),
            skip_through: HashMap::new(),
            next: HashMap::new(),
            to_commit: HashMap::new(),
            last_commit: Instant::now(),
            shutdown,
            readiness,
            owned: OwnedPartitions::default(),
            position_lost: None,
            deletions: DeletionsWatch::new(hourglass_core::clickhouse::client(&cfg.clickhouse)),
            tenant_property: cfg.contract.tenant_property.clone(),
            deletions_checked: None,
        }
    }

    /// The partitions this member holds, as its housekeeping last saw them.
    pub fn owned_partitions(&self) -> OwnedPartitions {
        self.owned.clone()
    }

    /// Archive until shutdown; files open then are written out first.
    pub fn run(mut self) -> Result<(), ConsumerError> {
        self.consumer.subscribe(&[&self.topic])?;
        let mut housekeeping = Instant::now();
        self.refresh_deletions();
        while !self.shutdown.is_cancelled() {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    self.readiness.set(true);
                    let (p, o) = (m.partition(), m.offset());
                    let payload = m.payload().map(<[u8]>::to_vec);
                    drop(m);
                    self.on_record(p, o, payload.as_deref())?;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => self.readiness.set(true),
            }
            if housekeeping.elapsed() > Duration::from_millis(500) {
                housekeeping = Instant::now();
                self.forget_revoked();
                self.close_aged()?;
                self.refresh_deletions();
                if self.last_commit.elapsed() >= COMMIT_EVERY {
                    self.commit();
                }
                self.watchdog.check(&self.consumer);
            }
            if let Some(e) = self.position_lost.take() {
                return Err(e);
            }
        }
        tracing::info!(
            open_files = self.files.len(),
            "archiver stopping: writing open files"
        );
        let partitions: Vec<i32> = self.files.keys().copied().collect();
        for p in partitions {
            self.close(p)?;
        }
        self.commit();
        Ok(())
    }

    /// Read `deletions` again if it changed (at most every few seconds).
    /// ClickHouse being down does not stop archiving: the requests as last
    /// read apply, and the erasure pass removes what slips through.
    fn refresh_deletions(&mut self) {
        if self
            .deletions_checked
            .is_some_and(|t| t.elapsed() < DELETIONS_EVERY)
        {
            return;
        }
        self.deletions_checked = Some(Instant::now());
        if let Err(e) = self.runtime.block_on(self.deletions.refresh()) {
            tracing::warn!(error = %e, "cannot read deletion requests; the last ones read apply");
        }
    }

    /// Commit past every file written since the last commit.
    fn commit(&mut self) {
        self.last_commit = Instant::now();
        commit_hint(&self.consumer, &self.topic, self.to_commit.drain());
    }

    fn on_record(
        &mut self,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
    ) -> Result<(), ConsumerError> {
        self.next.insert(partition, offset + 1);
        if self
            .skip_through
            .get(&partition)
            .is_some_and(|&s| offset <= s)
        {
            metrics::skipped(1);
            return Ok(());
        }
        let Some(event) = payload.and_then(|b| EventEnvelope::decode(b).ok()) else {
            // Not an event (the loader dead-letters such records); nothing to archive.
            metrics::undecodable();
            return Ok(());
        };
        let hour = layout::hour_of(event.received_at);
        if let Some(open) = self.files.get(&partition) {
            if offset <= open.last {
                // Re-delivered from an older position (the partition came back
                // after a rebalance): start over from here.
                self.files.remove(&partition);
            } else if open.hour != hour {
                self.close(partition)?;
            }
        }
        if !self.files.contains_key(&partition) {
            if let Some(last) = self.existing_file(hour, partition, offset) {
                tracing::info!(
                    partition,
                    first = offset,
                    last,
                    "already in the lake; skipping through its last offset"
                );
                self.skip_through.insert(partition, last);
                metrics::skipped(1);
                return Ok(());
            }
            self.files.insert(
                partition,
                OpenFile {
                    hour,
                    first: offset,
                    last: offset,
                    builder: BatchBuilder::default(),
                    left_out: 0,
                    bytes: 0,
                    opened: Instant::now(),
                },
            );
        }
        let open = self.files.get_mut(&partition).expect("just opened");
        if self
            .deletions
            .users()
            .covers_event(&event, &self.tenant_property)
        {
            open.left_out += 1;
        } else {
            open.builder.append(&event, partition, offset);
        }
        open.last = offset;
        open.bytes += payload.map_or(0, <[u8]>::len);
        if open.builder.rows() >= self.cfg.file_max_rows || open.bytes >= self.cfg.file_max_bytes {
            self.close(partition)?;
        }
        Ok(())
    }

    /// Last offset of a file of this partition starting at `first`, if the
    /// lake has one. Retried until the store answers: guessing would risk a
    /// duplicate.
    fn existing_file(&mut self, hour: DateTime<Utc>, partition: i32, first: i64) -> Option<i64> {
        let prefix = format!(
            "{}{}",
            layout::hour_folder(hour),
            layout::file_prefix(&self.topic, partition, first)
        );
        let store = self.store.clone();
        let found = self.with_retries("list", || {
            let store = store.clone();
            let prefix = prefix.clone();
            async move { store.list(&prefix).await }
        })?;
        found
            .iter()
            .filter_map(|o| layout::parse_key(&o.key))
            .map(|f| f.first_span().last)
            .max()
    }

    fn close_aged(&mut self) -> Result<(), ConsumerError> {
        let max_age = Duration::from_secs(self.cfg.file_max_age_secs);
        let aged: Vec<i32> = self
            .files
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= max_age)
            .map(|(p, _)| *p)
            .collect();
        for p in aged {
            self.close(p)?;
        }
        Ok(())
    }

    /// Drop the state of partitions no longer assigned: their next owner
    /// re-reads from the last commit.
    fn forget_revoked(&mut self) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let mine: std::collections::HashSet<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        self.files.retain(|p, _| mine.contains(p));
        self.skip_through.retain(|p, _| mine.contains(p));
        self.to_commit.retain(|p, _| mine.contains(p));
        metrics::open_files(self.files.len());
        *self.owned.write().expect("owned partitions lock") = mine;
    }

    /// Write a partition's open file to the lake; the next commit goes past it.
    fn close(&mut self, partition: i32) -> Result<(), ConsumerError> {
        let Some(mut open) = self.files.remove(&partition) else {
            return Ok(());
        };
        let rows = open.builder.rows();
        if rows == 0 {
            // Every event was a deleted user's: nothing to write.
            self.to_commit.insert(partition, open.last + 1);
            metrics::open_files(self.files.len());
            return Ok(());
        }
        let batch = open.builder.finish();
        let body = to_parquet(&batch, self.cfg.row_group_rows).map_err(parquet_failed)?;
        let key = if open.left_out > 0 {
            layout::compacted_key(
                &layout::hour_folder(open.hour),
                &self.topic,
                partition,
                open.first,
                open.last,
                rows as i64,
            )
        } else {
            layout::file_key(open.hour, &self.topic, partition, open.first, open.last)
        };
        let started = Instant::now();
        let store = self.store.clone();
        let size = body.len();
        let put = self.with_retries("put", || {
            let (store, key, body) = (store.clone(), key.clone(), body.clone());
            async move { store.put(&key, body).await }
        });
        if put.is_none() {
            // Shutdown or revocation while the store was down: the records
            // are re-read from the last commit by whoever owns the partition.
            return Ok(());
        }
        metrics::file_written(rows, size, started.elapsed());
        tracing::debug!(%key, rows, bytes = size, "file written");
        self.to_commit.insert(partition, open.last + 1);
        metrics::open_files(self.files.len());
        Ok(())
    }

    /// Run a store operation until it succeeds, pausing consumption and
    /// backing off while it fails. None on shutdown.
    fn with_retries<T, F, Fut>(&mut self, what: &'static str, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retry = PausedRetry::new(&self.retry, &self.readiness);
        let result = loop {
            match self.runtime.block_on(op()) {
                Ok(v) => break Some(v),
                Err(e) => {
                    metrics::store_error(what);
                    retry.wait(&self.consumer, &format!("lake {what}"), &e);
                    if self.shutdown.is_cancelled() {
                        break None;
                    }
                }
            }
        };
        let next = &self.next;
        if let Err(e) = retry.finish(&self.consumer, &self.topic, |partition| {
            next.get(&partition).copied()
        }) {
            self.position_lost = Some(e);
            return None;
        }
        result
    }
}
