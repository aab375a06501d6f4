//! The consumer's rebalance hook: on assignment it reads each partition's
//! checkpoint from ClickHouse and assigns the partition *at* its resume
//! offset, so no record is ever fetched from anywhere else; on revocation it
//! tells the loop to drop that partition's windows (flushes run on the loop's
//! thread, outside `poll`, so none is in flight while this runs).

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::metrics::CONSUMER_LAG;
use crate::sink::RollupSink;
use crate::window::Checkpoint;

#[derive(Debug)]
pub enum Change {
    Assigned(Vec<(i32, Option<Checkpoint>)>),
    Revoked(Vec<i32>),
}

pub struct AggregatorContext {
    pub sink: RollupSink,
    pub runtime: Handle,
    pub changes: Mutex<Vec<Change>>,
}

impl AggregatorContext {
    /// Checkpoints, retried until ClickHouse answers: assigning a partition
    /// anywhere but its checkpoint could count events twice.
    fn checkpoints(&self) -> Vec<(i32, Checkpoint)> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.runtime.block_on(self.sink.checkpoints()) {
                Ok(c) => return c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read checkpoints; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl ClientContext for AggregatorContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Reaching the end of a partition is how idleness is detected, not a fault.
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
        for topic in stats.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(CONSUMER_LAG, "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let checkpoints = self.checkpoints();
                let mut assigned = Vec::new();
                for element in tpl.elements() {
                    let p = element.partition();
                    assigned.push((
                        p,
                        checkpoints.iter().find(|(cp, _)| *cp == p).map(|(_, c)| *c),
                    ));
                }
                let topic = tpl
                    .elements()
                    .first()
                    .map(|e| e.topic().to_owned())
                    .unwrap_or_default();
                for (p, checkpoint) in &assigned {
                    let offset =
                        checkpoint.map_or(Offset::Beginning, |c| Offset::Offset(c.resume_offset));
                    if let Err(e) = tpl.set_partition_offset(&topic, *p, offset) {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                }
                tracing::info!(?assigned, "partitions assigned at their checkpoints");
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
