//! A consumer context that assigns every partition *at* a position read from
//! the component's durable sink (ClickHouse), never from Kafka's committed
//! offsets, which are only a hint. Components own their offsets this way:
//! the aggregator (checkpoints in `aggregator_progress`) and the loader
//! (`loader_progress`).
//!
//! Assignment and revocation are recorded for the component's loop, which
//! applies them after `poll` returns. A write the loop runs in the
//! background holds the write gate ([`AssignAtPositions::hold_write_gate`]);
//! a revocation waits for it, so a partition is released only after its
//! write has landed or failed.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::ConsumersConfig;
use crate::consumer::{Backoff, GroupHealth, WatchedContext};

/// Where each partition resumes, as the durable sink knows it.
pub trait StartPositions: Send + Sync + 'static {
    type Position: Copy + Debug + Send;

    /// Every partition that has a position; the others start at the
    /// beginning. `assigned` are the partitions this member takes now: a
    /// sink settles what their previous owner may have left half written
    /// before it tells where they resume.
    fn read(
        &self,
        assigned: &[i32],
    ) -> impl Future<Output = Result<Vec<(i32, Self::Position)>, String>> + Send;

    /// The next offset to read for a position.
    fn next_offset(position: &Self::Position) -> i64;
}

#[derive(Debug)]
pub enum Change<P> {
    Assigned(Vec<(i32, Option<P>)>),
    Revoked(Vec<i32>),
}

pub struct AssignAtPositions<S: StartPositions> {
    pub source: S,
    pub runtime: Handle,
    changes: Mutex<Vec<Change<S::Position>>>,
    /// Held by a write in flight (see [`AssignAtPositions::hold_write_gate`]).
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// Gauge set from librdkafka statistics, labelled by partition.
    lag_gauge: &'static str,
    /// How reading the start positions is retried.
    retry: ConsumersConfig,
    /// The group's state from the statistics, for the watchdog.
    group_health: GroupHealth,
}

impl<S: StartPositions> AssignAtPositions<S> {
    pub fn new(
        source: S,
        runtime: Handle,
        lag_gauge: &'static str,
        retry: &ConsumersConfig,
    ) -> Self {
        Self {
            source,
            runtime,
            changes: Mutex::new(Vec::new()),
            write_gate: Arc::default(),
            lag_gauge,
            retry: retry.clone(),
            group_health: GroupHealth::default(),
        }
    }

    /// Take the gate for a write about to run in the background: move the
    /// guard into the write and drop it when the write is over. Taken before
    /// the write is spawned, so a revocation cannot slip in before it starts.
    /// `None` while an earlier write still holds it.
    pub fn hold_write_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.write_gate.clone().try_lock_owned().ok()
    }

    /// Assignments and revocations since the last call, in order.
    pub fn take_changes(&self) -> Vec<Change<S::Position>> {
        std::mem::take(&mut *self.changes.lock().expect("not poisoned"))
    }

    /// Retried until the sink answers: starting anywhere else could count
    /// records twice or skip them.
    fn positions(&self, assigned: &[i32]) -> Vec<(i32, S::Position)> {
        let mut backoff = Backoff::new(&self.retry);
        loop {
            match self.runtime.block_on(self.source.read(assigned)) {
                Ok(p) => return p,
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot read start positions; retrying");
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

impl<S: StartPositions> ClientContext for AssignAtPositions<S> {
    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching the end of a partition is how idleness is detected, not a fault.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::trace!(%reason, "partition EOF");
        } else {
            tracing::error!(error = %error, %reason, "librdkafka error");
        }
    }

    fn stats(&self, stats: Statistics) {
        super::record_consumer_lag(&stats, self.lag_gauge);
        self.group_health.record(&stats);
    }
}

impl<S: StartPositions> ConsumerContext for AssignAtPositions<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let positions = self.positions(&partitions);
                let mut assigned = Vec::new();
                for element in tpl.elements() {
                    let p = element.partition();
                    let found = positions.iter().find(|(q, _)| *q == p).map(|(_, pos)| *pos);
                    assigned.push((element.topic().to_owned(), p, found));
                }
                for (topic, p, position) in &assigned {
                    let offset = position
                        .as_ref()
                        .map_or(Offset::Beginning, |pos| Offset::Offset(S::next_offset(pos)));
                    if let Err(e) = tpl.set_partition_offset(topic, *p, offset) {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                }
                let assigned: Vec<(i32, Option<S::Position>)> =
                    assigned.into_iter().map(|(_, p, pos)| (p, pos)).collect();
                tracing::info!(?assigned, "partitions assigned at their durable positions");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
                self.changes
                    .lock()
                    .expect("not poisoned")
                    .push(Change::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // A write in flight finishes before its partition is released.
                drop(self.runtime.block_on(self.write_gate.lock()));
                tracing::info!(?revoked, "partitions revoked");
                self.changes
                    .lock()
                    .expect("not poisoned")
                    .push(Change::Revoked(revoked));
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// Commit `next offset` per partition asynchronously, only as a hint for lag
/// tools: components resume from their durable positions, never from this.
pub fn commit_hint<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    next_offsets: impl IntoIterator<Item = (i32, i64)>,
) {
    let mut tpl = TopicPartitionList::new();
    for (p, next) in next_offsets {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(next));
    }
    if tpl.count() > 0 {
        let _ = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async);
    }
}

impl<S: StartPositions> WatchedContext for AssignAtPositions<S> {
    fn group_health(&self) -> &GroupHealth {
        &self.group_health
    }
}
