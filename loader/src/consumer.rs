//! The loader's loop: poll, batch, insert, repeat.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hourglass_core::Config;
use hourglass_core::clickhouse::errors::{Failure, classify};
use hourglass_core::config::ConsumersConfig;
use hourglass_core::consumer::{AssignmentWatchdog, Backoff, ConsumerError, PausedRetry};
use hourglass_core::kafka::assign::{AssignAtPositions, Change, commit_hint};
use hourglass_core::telemetry::Readiness;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::metrics::*;
use crate::rows::{EventRow, Refusal, RowShape, to_row};
use crate::sink::EventSink;

type LoaderConsumer = BaseConsumer<AssignAtPositions<EventSink>>;

/// Sends records that can never be loaded to the dead-letter topic.
struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    runtime: tokio::runtime::Handle,
    retry: ConsumersConfig,
}

pub struct Loop {
    consumer: LoaderConsumer,
    dead_letters: DeadLetters,
    topic: String,
    batch_rows: usize,
    batch_bytes: usize,
    batch_age: Duration,
    retry: ConsumersConfig,
    watchdog: AssignmentWatchdog,
    shutdown: CancellationToken,
    readiness: Readiness,
    /// Next offset to load, per assigned partition.
    batch: Batch,
}

/// Rows waiting for the next INSERT, and where each partition continues.
#[derive(Default)]
struct Batch {
    /// Next offset to load, per assigned partition.
    next: BTreeMap<i32, i64>,
    rows: Vec<EventRow>,
    bytes: usize,
    started: Option<Instant>,
    /// Turns `properties` into `events.dimensions` (as the aggregator keys)
    /// and `events.tenant_id`.
    shape: RowShape,
}

impl Batch {
    fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
        self.started = None;
    }

    /// Highest offset of each partition in the batch.
    fn last_offsets(&self) -> BTreeMap<i32, i64> {
        crate::sink::last_offsets(&self.rows)
            .into_iter()
            .map(|(p, o)| (i32::from(p), o))
            .collect()
    }

    fn take(&mut self, message: &BorrowedMessage<'_>, dead_letters: &DeadLetters) {
        let p = message.partition();
        let offset = message.offset();
        match self.next.get(&p) {
            Some(next) if offset >= *next => {}
            // Not ours, or already loaded (fetched before a seek).
            _ => return,
        }
        self.next.insert(p, offset + 1);
        match to_row(message.payload(), p, offset, &self.shape) {
            Ok(row) => {
                self.bytes += message.payload_len();
                self.rows.push(row);
                self.started.get_or_insert_with(Instant::now);
            }
            Err(refusal) => dead_letters.send(message, &refusal),
        }
    }
}

impl Loop {
    pub fn new(
        consumer: LoaderConsumer,
        dlq: FutureProducer,
        cfg: &Config,
        watchdog: AssignmentWatchdog,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> Self {
        let dead_letters = DeadLetters {
            producer: dlq,
            topic: cfg.kafka.dlq_topic.clone(),
            source_topic: cfg.kafka.topic.clone(),
            runtime: consumer.context().runtime.clone(),
            retry: cfg.consumers.clone(),
        };
        Self {
            consumer,
            dead_letters,
            topic: cfg.kafka.topic.clone(),
            batch_rows: cfg.loader.batch_rows,
            batch_bytes: cfg.loader.batch_bytes,
            batch_age: Duration::from_millis(cfg.loader.batch_age_ms),
            retry: cfg.consumers.clone(),
            watchdog,
            shutdown,
            readiness,
            batch: Batch {
                shape: RowShape::from(cfg),
                ..Batch::default()
            },
        }
    }

    pub fn run(mut self) -> Result<(), ConsumerError> {
        self.consumer.subscribe(&[&self.topic])?;
        while !self.shutdown.is_cancelled() {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(message)) => self.batch.take(&message, &self.dead_letters),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            }
            self.apply_rebalances();
            self.watchdog.check(&self.consumer);
            let due = self.batch.rows.len() >= self.batch_rows
                || self.batch.bytes >= self.batch_bytes
                || self
                    .batch
                    .started
                    .is_some_and(|s| s.elapsed() >= self.batch_age);
            if due {
                self.flush()?;
            }
        }
        self.flush()?;
        tracing::info!("loader stopped");
        Ok(())
    }
}

impl DeadLetters {
    /// Send a record that can never be loaded to the dead-letter topic,
    /// waiting for the broker's ack so it is never lost.
    fn send(&self, message: &BorrowedMessage<'_>, refusal: &Refusal) {
        self.send_record(
            message.key(),
            message.payload().unwrap_or_default(),
            (message.partition(), message.offset()),
            &refusal.to_string(),
            refusal.code(),
        );
    }

    /// A row ClickHouse refuses, as its JSON, with the server's reason.
    fn send_refused(&self, row: &EventRow, reason: &str) {
        let payload = serde_json::to_vec(row).unwrap_or_default();
        self.send_record(
            None,
            &payload,
            (i32::from(row.kafka_partition), row.kafka_offset),
            reason,
            "refused_by_clickhouse",
        );
    }

    fn send_record(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        (partition, offset): (i32, i64),
        reason: &str,
        code: &'static str,
    ) {
        let partition = partition.to_string();
        let offset = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "hourglass-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "hourglass-source-topic",
                value: Some(self.source_topic.as_str()),
            })
            .insert(Header {
                key: "hourglass-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "hourglass-source-offset",
                value: Some(offset.as_str()),
            });
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let mut record = FutureRecord::to(&self.topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            match self
                .runtime
                .block_on(self.producer.send(record, Duration::from_secs(30)))
            {
                Ok(_) => break,
                Err((e, _)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "dead-letter produce failed; retrying");
                    std::thread::sleep(wait);
                }
            }
        }
        tracing::warn!(partition = %partition, offset = %offset, %reason, "record sent to the dead-letter topic");
        metrics::counter!(DEAD_LETTERS, "reason" => code).increment(1);
    }
}

impl Loop {
    fn apply_rebalances(&mut self) {
        for change in self.consumer.context().take_changes() {
            match change {
                Change::Assigned(parts) => {
                    for (p, last) in parts {
                        self.batch.next.insert(p, last.map_or(0, |o| o + 1));
                    }
                    self.readiness.set(true);
                }
                Change::Revoked(parts) => {
                    // Rows of a revoked partition are its new owner's to load.
                    let revoked: BTreeSet<i32> = parts.into_iter().collect();
                    for p in &revoked {
                        self.batch.next.remove(p);
                    }
                    self.batch
                        .rows
                        .retain(|r| !revoked.contains(&i32::from(r.kafka_partition)));
                    if self.batch.rows.is_empty() {
                        self.batch.clear();
                    }
                }
            }
        }
    }

    /// Load the batch. A transient failure pauses the partitions and
    /// retries; rows the server refuses are found by halving the batch (in
    /// order, so progress never passes a row not yet handled) and
    /// dead-lettered with the server's reason while the rest load; a setup
    /// failure (unknown table, credentials) stops the loader.
    fn flush(&mut self) -> Result<(), ConsumerError> {
        if self.batch.rows.is_empty() {
            self.batch.clear();
            return Ok(());
        }
        let sink = self.consumer.context().source.clone();
        let runtime = self.consumer.context().runtime.clone();
        let started = Instant::now();
        let mut retry = PausedRetry::new(&self.retry, &self.readiness);
        let rows = self.batch.rows.len();
        let mut skipped = 0u64;
        let mut isolating = false;
        loop {
            let attempt = if isolating {
                self.isolate_refused(&sink, &runtime)
            } else {
                runtime.block_on(sink.insert(&self.batch.rows))
            };
            let error = match attempt {
                Ok(n) => {
                    skipped = n;
                    break;
                }
                Err(e) => e,
            };
            match classify(&error) {
                Failure::Setup => {
                    tracing::error!(rows, error = %error, "ClickHouse refuses every write until an operator fixes it; stopping");
                    return Err(ConsumerError::Refused {
                        what: format!(
                            "a batch of {rows} rows (every write, until an operator fixes it)"
                        ),
                        failure: Failure::Setup,
                        error: error.to_string(),
                    });
                }
                Failure::Refused if !isolating => {
                    tracing::warn!(rows, error = %error, "ClickHouse refused the batch; finding the rows it refuses");
                    isolating = true;
                    continue;
                }
                Failure::Refused | Failure::Transient => {}
            }
            metrics::counter!(RETRIES).increment(1);
            // An attempt may have landed before the connection failed.
            let last = self.batch.last_offsets();
            if let Ok(progress) = runtime.block_on(sink.progress())
                && last
                    .iter()
                    .all(|(p, o)| progress.get(p).is_some_and(|done| done >= o))
            {
                break;
            }
            retry.wait(&self.consumer, &format!("insert of {rows} rows"), &error);
            self.apply_rebalances();
            if self.batch.rows.is_empty() {
                break;
            }
        }
        let next = &self.batch.next;
        // A failed seek stops the loader: it resumes from loader_progress.
        retry.finish(&self.consumer, &self.topic, |p| next.get(&p).copied())?;
        let loaded = (self.batch.rows.len() as u64).saturating_sub(skipped);
        let last = self.batch.last_offsets();
        self.batch.clear();
        metrics::counter!(ROWS).increment(loaded);
        metrics::counter!(DELETED_USERS_ROWS).increment(skipped);
        metrics::histogram!(BATCH_ROWS).record(loaded as f64);
        metrics::histogram!(BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        // Only a hint for lag tools: loader_progress is what counts.
        commit_hint(
            &self.consumer,
            &self.topic,
            last.into_iter().map(|(p, o)| (p, o + 1)),
        );
        Ok(())
    }

    /// Insert the batch in ever smaller parts, in order, until every row is
    /// loaded or, alone, refused (dead-lettered); then record the batch as
    /// handled, refused tails included. Returns the rows left out for
    /// deleted users; a transient or setup failure stops it (the caller
    /// retries from the start: what landed is deduplicated by `event_id`).
    fn isolate_refused(
        &self,
        sink: &crate::sink::EventSink,
        runtime: &tokio::runtime::Handle,
    ) -> Result<u64, clickhouse::error::Error> {
        let rows = &self.batch.rows;
        let mut skipped = 0;
        let mut refused = 0u64;
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..rows.len());
        while let Some(range) = todo.pop() {
            let error = match runtime.block_on(sink.insert(&rows[range.clone()])) {
                Ok(n) => {
                    skipped += n;
                    continue;
                }
                Err(e) => e,
            };
            if classify(&error) != Failure::Refused {
                return Err(error);
            }
            if range.len() == 1 {
                self.dead_letters
                    .send_refused(&rows[range.start], &error.to_string());
                refused += 1;
                continue;
            }
            let mid = range.start + range.len() / 2;
            // Popped last-in first: the first half goes first.
            todo.push(mid..range.end);
            todo.push(range.start..mid);
        }
        if refused > 0 {
            let last = crate::sink::last_offsets(rows);
            runtime.block_on(sink.mark_done(&last))?;
        }
        Ok(skipped)
    }
}
