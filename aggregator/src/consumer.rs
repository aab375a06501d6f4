//! The aggregator's loop: one thread owns the consumer and every partition's
//! windows. It reads records into the windowing core and, every flush
//! interval, writes each partition's closed windows in one INSERT with the
//! partition's checkpoint. The INSERTs run in the background while the loop
//! keeps reading; the next flush (or a shutdown) first waits for them, and a
//! revocation waits for them inside `poll` (the consumer context's write
//! gate), so a partition is never released with its write in flight. A
//! failed write is retried with backoff from the loop with the partitions
//! paused (the consumer keeps polling, so it stays in the group and memory
//! stays bounded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use crate::metrics::*;
use crate::record::RecordView;
use crate::window::{ClosedWindows, EventRef, Ingested, PartitionWindows, WindowConfig};
use hourglass_core::config::ConsumersConfig;
use hourglass_core::consumer::{AssignmentWatchdog, ConsumerError, PausedRetry};
use hourglass_core::kafka::assign::{AssignAtPositions, Change, commit_hint};
use hourglass_core::telemetry::Readiness;
use tokio_util::sync::CancellationToken;

use crate::sink::{RollupSink, Settled, SinkError};
use hourglass_core::clickhouse::errors::Failure;

pub type AggregatorContext = AssignAtPositions<RollupSink>;

/// Counter handles registered once: looking a labelled counter up by name for
/// every record would put a registry lookup on the hot path.
pub struct EventCounters {
    added: metrics::Counter,
    overflow: metrics::Counter,
    late: metrics::Counter,
    ahead: metrics::Counter,
    too_old: metrics::Counter,
    undecodable: metrics::Counter,
    clamped: metrics::Counter,
}

impl EventCounters {
    /// Call after the metrics recorder is installed.
    pub fn register() -> Self {
        Self {
            added: metrics::counter!(EVENTS, "outcome" => "added"),
            overflow: metrics::counter!(EVENTS, "outcome" => "overflow"),
            late: metrics::counter!(EVENTS, "outcome" => "late"),
            ahead: metrics::counter!(EVENTS, "outcome" => "ahead"),
            too_old: metrics::counter!(EVENTS, "outcome" => "too_old"),
            undecodable: metrics::counter!(EVENTS, "outcome" => "undecodable"),
            clamped: metrics::counter!(CLAMPED_VALUES),
        }
    }
}

pub struct Loop {
    pub consumer: BaseConsumer<AggregatorContext>,
    pub topic: String,
    pub windows: Arc<WindowConfig>,
    pub flush_interval: Duration,
    pub retry: ConsumersConfig,
    pub watchdog: AssignmentWatchdog,
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    pub partitions: BTreeMap<i32, PartitionWindows>,
    pub counters: EventCounters,
    pub in_flight: Option<InFlight>,
    /// A write ClickHouse refuses for good: the loop stops with it.
    pub refused: Option<ConsumerError>,
}

/// One flush's INSERTs, running in the background.
pub struct InFlight {
    batches: Arc<Vec<(i32, ClosedWindows)>>,
    results: tokio::task::JoinHandle<Vec<Result<(), SinkError>>>,
    started: Instant,
    /// Partitions revoked since the flush began: their failed writes are
    /// abandoned (their new owner settles what landed and resumes from
    /// there: `RollupSink::start_positions`), and no commit hint is sent
    /// for them.
    revoked: Vec<i32>,
}

const RECORDS_PER_CLOCK: u32 = 256;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Loop {
    pub fn run(mut self) -> Result<(), ConsumerError> {
        self.consumer.subscribe(&[&self.topic])?;
        // Every flush interval the loop ticks (closes windows by wall clock
        // and writes what closed). Between ticks, windows closed by event
        // time are written once the interval since the last write has
        // passed, or at once when their partitions have reached the end of
        // the log (nothing more to batch them with: a live stream closes a
        // window per partition every window length, a catch-up keeps to the
        // interval).
        let (mut last_tick, mut last_write) = (Instant::now(), Instant::now());
        // Reading the clock per record was a twentieth of the loop's time:
        // it is read again every RECORDS_PER_CLOCK records and whenever a
        // poll brings no record (a quiet stream reads it every time).
        let mut now_ms = wall_ms();
        let mut records_since_clock = 0;
        while !self.shutdown.is_cancelled() {
            if let Some(refused) = self.refused.take() {
                return Err(refused);
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    handle_record(
                        &mut self.partitions,
                        &self.windows,
                        &self.counters,
                        &message,
                        now_ms,
                    );
                    records_since_clock += 1;
                    // A poll that returns a record served no rebalance
                    // (rust-rdkafka returns from `poll` after one), so
                    // there is nothing to adopt yet.
                    if records_since_clock < RECORDS_PER_CLOCK {
                        continue;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(windows) = self.partitions.get_mut(&p) {
                        if !windows.is_caught_up() {
                            tracing::debug!(
                                partition = p,
                                offset = windows.next_offset(),
                                "caught up"
                            );
                        }
                        windows.mark_caught_up(wall_ms());
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
            records_since_clock = 0;
            now_ms = wall_ms();
            self.apply_rebalances();
            self.watchdog.check(&self.consumer);
            let write_due = self.write_due(last_write.elapsed());
            if write_due || last_tick.elapsed() >= self.flush_interval {
                self.finish_flush();
                if self.start_flush() {
                    last_write = Instant::now();
                }
                last_tick = Instant::now();
            }
        }
        // Complete windows only: open ones are rebuilt from the checkpoint on the next start.
        self.finish_flush();
        // A history import's windows go out one month per flush.
        while self.refused.is_none() && self.start_flush() {
            self.finish_flush();
        }
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        tracing::info!("aggregator stopped");
        Ok(())
    }
}

/// Feed one record into its partition's windows.
fn handle_record(
    partitions: &mut BTreeMap<i32, PartitionWindows>,
    cfg: &WindowConfig,
    counters: &EventCounters,
    message: &BorrowedMessage<'_>,
    now_ms: i64,
) {
    let p = message.partition();
    let Some(windows) = partitions.get_mut(&p) else {
        // Not (or no longer) ours: a record fetched before a rebalance.
        return;
    };
    let offset = message.offset();
    if offset < windows.next_offset() {
        return;
    }
    let view = message
        .payload()
        .and_then(|bytes| RecordView::decode(bytes, &cfg.dimensions));
    let Some(view) = view else {
        counters.undecodable.increment(1);
        return;
    };
    let Ok(ts) = chrono::DateTime::parse_from_rfc3339(&view.timestamp) else {
        counters.undecodable.increment(1);
        return;
    };
    let event = EventRef {
        project_id: &view.project_id,
        event: &view.event,
        user: view.user(),
        timestamp_ms: ts.timestamp_millis(),
        value: view.value,
        dimensions: &view.dimensions,
    };
    let clamped_before = windows.clamped_values;
    match windows.ingest(&event, offset, now_ms) {
        Ingested::Added => counters.added.increment(1),
        Ingested::Overflow => counters.overflow.increment(1),
        Ingested::Late => counters.late.increment(1),
        Ingested::Ahead => counters.ahead.increment(1),
        Ingested::TooOld => counters.too_old.increment(1),
    }
    if windows.clamped_values != clamped_before {
        counters.clamped.increment(1);
    }
}

impl Loop {
    /// Adopt the assignments and revocations the rebalance hook recorded;
    /// returns the partitions revoked (some may have been assigned back).
    fn apply_rebalances(&mut self) -> Vec<i32> {
        let revoked = self.adopt_changes();
        if let Some(in_flight) = self.in_flight.as_mut() {
            in_flight.revoked.extend(&revoked);
        }
        revoked
    }

    fn adopt_changes(&mut self) -> Vec<i32> {
        let mut revoked = Vec::new();
        let changes = self.consumer.context().take_changes();
        for change in changes {
            match change {
                Change::Assigned(parts) => {
                    for (p, checkpoint) in parts {
                        let start = checkpoint.map_or(0, |c| c.resume_offset);
                        let windows = PartitionWindows::new(
                            self.windows.clone(),
                            start,
                            checkpoint.map(|c| c.watermark_ms),
                        );
                        self.partitions.insert(p, windows);
                    }
                    self.readiness.set(true);
                }
                Change::Revoked(parts) => {
                    for p in parts {
                        self.partitions.remove(&p);
                        metrics::gauge!(WATERMARK_LAG, "partition" => p.to_string()).set(0.0);
                        revoked.push(p);
                    }
                }
            }
        }
        revoked
    }

    /// Whether closed windows should be written now (see `run`).
    fn write_due(&self, since_last_write: Duration) -> bool {
        let mut closed = self
            .partitions
            .values()
            .filter(|w| w.has_closed())
            .peekable();
        if closed.peek().is_none() {
            return false;
        }
        since_last_write >= self.flush_interval || closed.all(PartitionWindows::is_caught_up)
    }

    /// Close what the watermarks allow and start writing every partition's
    /// closed windows, packed into few INSERTs sent at once
    /// ([`RollupSink::write_flush`]), in the background (written one after
    /// the other from the loop, eight partitions' INSERTs held it for most
    /// of a second). Returns whether any writes started.
    fn start_flush(&mut self) -> bool {
        // After a refusal nothing more is written: a later flush's
        // checkpoint would pass the refused windows.
        if self.refused.is_some() {
            return false;
        }
        let now = wall_ms();
        let (mut open_windows, mut open_keys) = (0, 0);
        let mut batches = Vec::new();
        let ps: Vec<i32> = self.partitions.keys().copied().collect();
        for p in ps {
            let Some(w) = self.partitions.get_mut(&p) else {
                continue;
            };
            if w.needs_idle_check(now) {
                let idle =
                    match self
                        .consumer
                        .fetch_watermarks(&self.topic, p, Duration::from_secs(2))
                    {
                        Ok((_, high)) => w.next_offset() >= high,
                        Err(e) => {
                            tracing::debug!(partition = p, error = %e, "cannot confirm idleness");
                            false
                        }
                    };
                if !idle {
                    tracing::debug!(
                        partition = p,
                        "end-of-partition came early: records are waiting"
                    );
                }
                w.confirm_idle(idle, now);
            }
            w.tick(now);
            if let Some(wm) = w.watermark_ms() {
                metrics::gauge!(WATERMARK_LAG, "partition" => p.to_string())
                    .set((now - wm) as f64 / 1000.0);
            }
            if let Some(closed) = w.take_closed() {
                batches.push((p, closed));
            }
            open_windows += w.open_windows();
            open_keys += w.open_keys();
        }
        metrics::gauge!(OPEN_WINDOWS).set(open_windows as f64);
        metrics::gauge!(OPEN_KEYS).set(open_keys as f64);
        if batches.is_empty() {
            return false;
        }

        let context = self.consumer.context();
        let gate = context
            .hold_write_gate()
            .expect("the previous flush is finished before the next starts");
        let batches = Arc::new(batches);
        let (sink, written) = (context.source.clone(), batches.clone());
        let results = context.runtime.spawn(async move {
            let results = sink.write_flush(&written).await;
            drop(gate);
            results
        });
        self.in_flight = Some(InFlight {
            batches,
            results,
            started: Instant::now(),
            revoked: Vec::new(),
        });
        true
    }

    /// Wait for the flush in flight, and retry what failed.
    fn finish_flush(&mut self) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        let runtime = self.consumer.context().runtime.clone();
        let results = match runtime.block_on(in_flight.results) {
            Ok(results) => results,
            // Its windows are neither written nor held any more, and later
            // writes would move the checkpoints past them: stop, and let the
            // next start redo them from the checkpoints.
            Err(failed) => std::panic::resume_unwind(failed.into_panic()),
        };
        let started = in_flight.started;
        let mut revoked = in_flight.revoked;
        for ((p, closed), result) in in_flight.batches.iter().zip(results) {
            if self.refused.is_some() {
                // Stopping: what else was written is kept, what failed is
                // redone from its checkpoint on the next start.
                break;
            }
            let written = match result {
                Ok(()) => true,
                Err(error) => self.retry_flush(*p, closed, error, &mut revoked),
            };
            if !written {
                continue;
            }
            metrics::histogram!(FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::counter!(FLUSH_ROWS).increment(closed.rows.len() as u64);
            tracing::debug!(partition = p, rows = closed.rows.len(), windows = closed.windows, elapsed = ?started.elapsed(), checkpoint = ?closed.checkpoint, "flushed");
            if !revoked.contains(p) {
                // A flush of late records alone carries no checkpoint.
                if let Some(windows) = self.partitions.get_mut(p)
                    && !closed.rows.is_empty()
                {
                    windows.checkpoint_written(closed.checkpoint);
                }
                // Only a hint for lag tools: the checkpoint in ClickHouse is what counts.
                commit_hint(
                    &self.consumer,
                    &self.topic,
                    [(*p, closed.checkpoint.resume_offset)],
                );
            }
        }
    }

    /// After a failed write of `closed`: pause the partitions and retry with
    /// backoff until it lands. Returns false when the write was given up
    /// (revoked meanwhile, or shutting down), to be redone from the
    /// checkpoint. `revoked` gathers the partitions revoked meanwhile,
    /// across the retries of one flush.
    fn retry_flush(
        &mut self,
        p: i32,
        closed: &ClosedWindows,
        first: SinkError,
        revoked: &mut Vec<i32>,
    ) -> bool {
        if revoked.contains(&p) {
            tracing::warn!(
                partition = p,
                error = %first,
                "flush failed after the partition was revoked; its new owner settles what landed"
            );
            return false;
        }
        let sink = self.consumer.context().source.clone();
        let runtime = self.consumer.context().runtime.clone();
        let started = Instant::now();
        let mut retry = PausedRetry::new(&self.retry, &self.readiness);
        let mut abandoned = false;
        let mut error = first;
        // The failed request may have reached the server: what it wrote is
        // settled before anything is written again.
        let mut outcome_unknown = !closed.rows.is_empty();
        loop {
            let failure = error.failure();
            if failure != Failure::Transient {
                // Retrying cannot help, and writing later windows would move
                // the checkpoint past these: stop, naming what was refused.
                // The records a restart reads again, the refused among them.
                let offsets = self.partitions.get(&p).map_or(
                    closed.checkpoint.resume_offset..closed.checkpoint.resume_offset,
                    PartitionWindows::unwritten_offsets,
                );
                tracing::error!(
                    partition = p,
                    ?offsets,
                    failure = failure.label(),
                    error = %error,
                    "ClickHouse refuses this flush for good; stopping (see `hourglass checkpoint`)"
                );
                self.refused = Some(ConsumerError::Refused {
                    what: format!("the windows of partition {p} (records at offsets {offsets:?})"),
                    failure,
                    error: error.to_string(),
                });
                abandoned = true;
                break;
            }
            metrics::counter!(FLUSH_RETRIES).increment(1);
            if outcome_unknown {
                match runtime.block_on(sink.settle(p, closed)) {
                    Ok(Settled::NotLanded) => outcome_unknown = false,
                    Ok(Settled::Landed | Settled::Repaired(_)) => break,
                    // Checked again after the wait, before any write.
                    Err(e) => error = e,
                }
            }
            // Keeps polling while paused so the group keeps us; a record
            // that still arrives is not processed here, and its partition is
            // re-read from our position once resumed.
            retry.wait(&self.consumer, &format!("flush of partition {p}"), &error);
            if self.shutdown.is_cancelled() && started.elapsed() > Duration::from_secs(30) {
                tracing::error!(
                    partition = p,
                    "giving up a flush at shutdown; it is redone from the checkpoint on the next start"
                );
                // Nothing later of this partition may be written now: its
                // checkpoint would pass these windows.
                self.partitions.remove(&p);
                abandoned = true;
                break;
            }
            // Revoked, even if assigned straight back (an eager rebalance does
            // both): the partition now restarts from where its assignment
            // settled it (this flush's checkpoint if its rows had landed),
            // so writing these windows later could count them twice.
            revoked.extend(self.apply_rebalances());
            if revoked.contains(&p) {
                tracing::warn!(
                    partition = p,
                    "partition revoked during a failed flush; its new owner settles what landed"
                );
                abandoned = true;
                break;
            }
            if outcome_unknown {
                continue;
            }
            error = match runtime.block_on(sink.write(p, closed)) {
                Ok(()) => break,
                Err(e) => {
                    outcome_unknown = !closed.rows.is_empty();
                    e
                }
            };
        }
        let partitions = &self.partitions;
        let resumed = retry.finish(&self.consumer, &self.topic, |p| {
            partitions.get(&p).map(PartitionWindows::next_offset)
        });
        if let Err(e) = resumed {
            // Reading on from a wrong position would skip records: stop;
            // the next start resumes from the checkpoints.
            self.refused = Some(e);
        }
        !abandoned
    }
}
