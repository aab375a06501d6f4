//! A producer that acknowledges whole batches: one wake-up per batch once the
//! broker has confirmed every record of it, instead of a future, a channel and
//! a wake-up per record. Ingest answers a request only when all its events
//! are acknowledged; at 100 events a request, per-record futures were a fifth
//! of its producer cost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use super::producer_config;
use crate::config::KafkaConfig;

/// The durable producer of [`super::producer`] (idempotent, `acks=all`, zstd)
/// sending batches.
pub struct BatchProducer {
    inner: ThreadedProducer<BatchAcks>,
}

/// What became of one batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Why the rest were not enqueued (queue full, producer fenced, ...).
    pub refused: Option<KafkaError>,
    /// The first delivery failure among the enqueued records.
    pub failed: Option<KafkaError>,
}

impl BatchOutcome {
    /// Every record of the batch was acknowledged by the broker.
    pub fn all_acknowledged(&self) -> bool {
        self.refused.is_none() && self.failed.is_none()
    }
}

impl BatchProducer {
    /// `tuning` as for [`super::producer_tuned`].
    pub fn new(cfg: &KafkaConfig, tuning: &[(&str, String)]) -> Result<Self, KafkaError> {
        Ok(Self {
            inner: producer_config(cfg, tuning).create_with_context(BatchAcks)?,
        })
    }

    /// Enqueue `records` (key, payload) on `topic`, each with `headers`, and
    /// wait until every enqueued record is settled. Enqueueing stops at the
    /// first refusal; what was enqueued before it is still waited for, so
    /// the outcome is never ahead of the broker.
    pub async fn send_all<'r>(
        &self,
        topic: &str,
        headers: &[(&str, &[u8])],
        records: impl IntoIterator<Item = (&'r [u8], &'r [u8])>,
    ) -> BatchOutcome {
        // One count held by this call until every record is enqueued, so
        // early acknowledgements cannot finish the batch.
        let batch = Arc::new(Pending {
            unsettled: AtomicUsize::new(1),
            failed: Mutex::new(None),
            settled: Notify::new(),
        });
        let mut outcome = BatchOutcome::default();
        for (key, payload) in records {
            let mut record_headers = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in headers {
                record_headers = record_headers.insert(Header {
                    key: name,
                    value: Some(*value),
                });
            }
            batch.unsettled.fetch_add(1, Ordering::AcqRel);
            let record = BaseRecord::with_opaque_to(topic, batch.clone())
                .key(key)
                .payload(payload)
                .headers(record_headers);
            match self.inner.send(record) {
                Ok(()) => {}
                Err((error, _)) => {
                    batch.unsettled.fetch_sub(1, Ordering::AcqRel);
                    outcome.refused = Some(error);
                    break;
                }
            }
        }
        if batch.settle_one() {
            batch.settled.notified().await;
        }
        outcome.failed = batch.failed.lock().expect("batch lock").take();
        outcome
    }

    pub fn producer(&self) -> &ThreadedProducer<BatchAcks> {
        &self.inner
    }

    pub fn in_flight_count(&self) -> i32 {
        self.inner.in_flight_count()
    }
}

/// One batch's records not yet acknowledged (or failed).
pub struct Pending {
    unsettled: AtomicUsize,
    failed: Mutex<Option<KafkaError>>,
    settled: Notify,
}

impl Pending {
    /// Count one record settled; true while others are still unsettled.
    fn settle_one(&self) -> bool {
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit when nobody waits yet: the waiter sees it.
            self.settled.notify_one();
            return false;
        }
        true
    }
}

/// Producer context settling each record's batch.
pub struct BatchAcks;

impl ClientContext for BatchAcks {}

impl ProducerContext for BatchAcks {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Pending>) {
        if let Err((error, _)) = result {
            batch
                .failed
                .lock()
                .expect("batch lock")
                .get_or_insert_with(|| error.clone());
        }
        batch.settle_one();
    }
}
