//! Publishing normalized events to Kafka, answering only once the broker has
//! acknowledged every one of them (`acks=all`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use hourglass_core::config::{IngestConfig, KafkaConfig};
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use hourglass_core::telemetry::Readiness;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the event broker is unreachable: {0}")]
    Unavailable(String),
    #[error("the producer queue is full ({0} events waiting for the broker)")]
    QueueFull(u64),
}

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
    readiness: Readiness,
}

impl Publisher {
    pub fn new(
        kafka: &KafkaConfig,
        ingest: &IngestConfig,
        readiness: Readiness,
    ) -> Result<Self, KafkaError> {
        let producer = hourglass_core::kafka::producer_tuned(
            kafka,
            &[
                ("linger.ms", ingest.linger_ms.to_string()),
                (
                    "queue.buffering.max.messages",
                    ingest.producer_queue_events.to_string(),
                ),
                ("message.timeout.ms", ingest.delivery_timeout_ms.to_string()),
                ("batch.num.messages", "10000".into()),
                ("statistics.interval.ms", "0".into()),
            ],
        )?;
        Ok(Self {
            producer,
            topic: Arc::from(kafka.topic.as_str()),
            readiness,
        })
    }

    /// Publish `events` and wait for the broker to acknowledge all of them.
    ///
    /// An error means the request must be answered 503: some events may have
    /// landed, so clients retry with the same `event_id`s (Segment SDKs keep
    /// `messageId` across retries) and the loader keeps one row per id.
    pub async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        if !self.readiness.get() {
            return Err(PublishError::Unavailable(
                "no answer to metadata requests".into(),
            ));
        }
        let version = SCHEMA_VERSION.to_string();
        let started = Instant::now();
        let mut pending = Vec::with_capacity(events.len());
        let mut refused = None;
        for event in events {
            let key = event.kafka_key();
            let payload = event.encode();
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: SCHEMA_VERSION_HEADER,
                value: Some(version.as_bytes()),
            });
            let record = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((error, _)) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        // Whatever was enqueued may still land: wait for it before answering,
        // so the answer is never ahead of the broker.
        let outcomes = join_all(pending).await;
        metrics::delivery_latency(started.elapsed());
        metrics::queue_depth(self.producer.in_flight_count());
        if let Some(error) = refused {
            return Err(self.refusal(error));
        }
        for outcome in outcomes {
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(PublishError::Unavailable(error.to_string())),
                Err(_) => return Err(PublishError::Unavailable("producer closed".into())),
            }
        }
        Ok(())
    }

    fn refusal(&self, error: KafkaError) -> PublishError {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => {
                PublishError::QueueFull(self.producer.in_flight_count().max(0) as u64)
            }
            _ => PublishError::Unavailable(error.to_string()),
        }
    }

    /// Ready while the broker answers metadata for the topic; checked every
    /// `every`, until `stop` is set.
    pub async fn watch_broker(&self, every: Duration, stop: Arc<std::sync::atomic::AtomicBool>) {
        let mut was_ready = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let producer = self.producer.clone();
            let topic = self.topic.clone();
            let probe = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_millis(1_500))
                    .map_err(|e| e.to_string())
                    .and_then(|m| match m.topics().first().and_then(|t| t.error()) {
                        None => Ok(()),
                        Some(code) => Err(format!("topic {topic}: {code:?}")),
                    })
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let ready = probe.is_ok();
            self.readiness.set(ready);
            metrics::queue_depth(self.producer.in_flight_count());
            if was_ready != Some(ready) {
                match &probe {
                    Ok(()) => tracing::info!(topic = %self.topic, "broker answers: ready"),
                    Err(e) => {
                        tracing::warn!(error = %e, "broker does not answer: not ready, answering 503")
                    }
                }
                was_ready = Some(ready);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Wait until every queued event is acknowledged (or `timeout` passes).
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Ok(()))
    }
}
