//! Publishing normalized events to Kafka, answering only once the broker has
//! acknowledged every one of them (`acks=all`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hourglass_core::config::{IngestConfig, KafkaConfig};
use hourglass_core::contract::{EncodedEvent, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use hourglass_core::kafka::BatchProducer;
use hourglass_core::telemetry::Readiness;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use crate::broker_health::{self, BrokerHealth, Health, Probe};
use crate::metrics;

/// Why a request's events were not all acknowledged: each is a 503, and the
/// text tells the client which of these it was.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the event broker is unreachable: {0}")]
    Unreachable(String),
    #[error(
        "the event broker answers, but slowly: not every event was acknowledged within {timeout_ms} ms ({error})"
    )]
    Slow { timeout_ms: u64, error: String },
    #[error("the event broker refused the events: {0}")]
    Refused(String),
    #[error("the producer queue is full ({0} events waiting for the broker)")]
    QueueFull(u64),
}

/// One producer instance. It is replaced, not repaired, after a delivery
/// failure: an idempotent producer whose messages timed out bumps its epoch
/// when the broker returns, which some Kafka-protocol brokers mishandle
/// (tansu 0.6 panics in its storage layer), and fatal idempotence errors need
/// a new producer anyway. A fresh producer gets a fresh producer id.
struct Generation {
    id: u64,
    producer: BatchProducer,
}

type MakeProducer = dyn Fn() -> Result<BatchProducer, KafkaError> + Send + Sync;

/// Ingest's throughput settings for its producer (linger, queue size,
/// delivery timeout); the delivery guarantees are core's.
pub fn producer_tuning(ingest: &IngestConfig) -> Vec<(&'static str, String)> {
    vec![
        ("linger.ms", ingest.linger_ms.to_string()),
        (
            "queue.buffering.max.messages",
            ingest.producer_queue_events.to_string(),
        ),
        ("message.timeout.ms", ingest.delivery_timeout_ms.to_string()),
        ("batch.num.messages", "10000".into()),
    ]
}

#[derive(Clone)]
pub struct Publisher {
    current: Arc<RwLock<Arc<Generation>>>,
    make: Arc<MakeProducer>,
    topic: Arc<str>,
    brokers: Arc<str>,
    delivery_timeout_ms: u64,
    health: Arc<BrokerHealth>,
}

impl Publisher {
    pub fn new(
        kafka: &KafkaConfig,
        ingest: &IngestConfig,
        readiness: Readiness,
    ) -> Result<Self, KafkaError> {
        let topic = Arc::from(kafka.topic.as_str());
        let brokers = Arc::from(kafka.brokers.as_str());
        let health = Arc::new(BrokerHealth::new(
            readiness,
            Duration::from_secs(ingest.broker_patience_secs),
        ));
        let kafka = kafka.clone();
        let tuning = producer_tuning(ingest);
        let make: Arc<MakeProducer> = Arc::new(move || BatchProducer::new(&kafka, &tuning));
        let producer = make()?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(Generation { id: 0, producer }))),
            make,
            topic,
            brokers,
            delivery_timeout_ms: ingest.delivery_timeout_ms,
            health,
        })
    }

    fn generation(&self) -> Arc<Generation> {
        self.current.read().expect("publisher lock").clone()
    }

    /// Replace generation `id` with a fresh producer (once, however many
    /// requests saw it fail). The old one is dropped off the async threads:
    /// tearing down librdkafka may wait on its broker threads.
    fn retire(&self, id: u64, why: &str) {
        let mut current = self.current.write().expect("publisher lock");
        if current.id != id {
            return;
        }
        match (self.make)() {
            Ok(producer) => {
                tracing::warn!(
                    generation = id + 1,
                    reason = why,
                    "replacing the Kafka producer after a delivery failure"
                );
                let old = std::mem::replace(
                    &mut *current,
                    Arc::new(Generation {
                        id: id + 1,
                        producer,
                    }),
                );
                drop(current);
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new Kafka producer; keeping the old one")
            }
        }
    }

    /// Publish `events` and wait for the broker to acknowledge all of them.
    ///
    /// An error means the request must be answered 503: some events may have
    /// landed, so clients retry with the same `event_id`s (Segment SDKs keep
    /// `messageId` across retries) and the loader keeps one row per id.
    pub async fn publish(&self, events: &[EncodedEvent]) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        if let Health::Unreachable { reason } = self.health.get() {
            return Err(PublishError::Unreachable(reason));
        }
        let generation = self.generation();
        let producer = &generation.producer;
        let version = SCHEMA_VERSION.to_string();
        let started = Instant::now();
        let outcome = producer
            .send_all(
                &self.topic,
                &[(SCHEMA_VERSION_HEADER, version.as_bytes())],
                events
                    .iter()
                    .map(|e| (e.key.as_bytes(), e.payload.as_slice())),
            )
            .await;
        metrics::delivery_latency(started.elapsed());
        metrics::queue_depth(producer.in_flight_count());
        // Whatever was enqueued has settled by now: the answer is never
        // ahead of the broker.
        if let Some(error) = outcome.failed {
            self.retire(generation.id, &error.to_string());
            return Err(self.failure(error));
        }
        match outcome.refused {
            None => Ok(()),
            Some(error) => match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => Err(PublishError::QueueFull(
                    producer.in_flight_count().max(0) as u64,
                )),
                _ => {
                    self.retire(generation.id, &error.to_string());
                    Err(self.failure(error))
                }
            },
        }
    }

    /// Name a delivery failure by what the probe last saw of the broker.
    fn failure(&self, error: KafkaError) -> PublishError {
        let timed_out = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut)
        );
        match self.health.get() {
            Health::Unreachable { reason } => PublishError::Unreachable(reason),
            _ if timed_out => PublishError::Slow {
                timeout_ms: self.delivery_timeout_ms,
                error: error.to_string(),
            },
            _ => PublishError::Refused(error.to_string()),
        }
    }

    /// Probe the broker every `every` until `stop` is set: metadata for the
    /// topic, and when that does not answer within `every` (at least 1.5 s), a TCP connect
    /// (see [`broker_health`]). Ingest is ready unless the broker is
    /// unreachable.
    pub async fn watch_broker(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        while !stop.is_cancelled() {
            let generation = self.generation();
            let (topic, brokers) = (self.topic.clone(), self.brokers.clone());
            let probe = tokio::task::spawn_blocking(move || {
                let answer = generation
                    .producer
                    .producer()
                    .client()
                    .fetch_metadata(Some(&topic), every.max(Duration::from_millis(1_500)))
                    .map_err(|e| e.to_string())
                    .and_then(|m| match m.topics().first().and_then(|t| t.error()) {
                        None => Ok(()),
                        Some(code) => Err(format!("topic {topic}: {code:?}")),
                    });
                match answer {
                    Ok(()) => Probe::Answered,
                    Err(error) => match broker_health::connects(&brokers, Duration::from_secs(1)) {
                        Ok(()) => Probe::NoAnswer {
                            connects: true,
                            error,
                        },
                        Err(refused) => Probe::NoAnswer {
                            connects: false,
                            error: refused,
                        },
                    },
                }
            })
            .await
            .unwrap_or_else(|e| Probe::NoAnswer {
                connects: false,
                error: e.to_string(),
            });
            if stop.is_cancelled() {
                break;
            }
            match self.health.observe(probe, Instant::now()) {
                Some(Health::Answering) => {
                    tracing::info!(topic = %self.topic, "broker answers: ready")
                }
                Some(Health::Slow { error, .. }) => tracing::warn!(
                    %error,
                    "broker accepts connections but answers slowly: still ready, still publishing"
                ),
                Some(Health::Unreachable { reason }) => {
                    tracing::warn!(%reason, "broker unreachable: not ready, answering 503")
                }
                None => {}
            }
            metrics::queue_depth(self.generation().producer.in_flight_count());
            tokio::time::sleep(every).await;
        }
    }

    /// The broker as the probe last saw it.
    pub fn broker_health(&self) -> Health {
        self.health.get()
    }

    /// Not ready from now on (draining), whatever the probe saw last.
    pub fn stop_being_ready(&self) {
        self.health.set_not_ready();
    }

    /// Wait until every queued event is acknowledged (or `timeout` passes).
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let generation = self.generation();
        tokio::task::spawn_blocking(move || generation.producer.producer().flush(timeout))
            .await
            .unwrap_or(Ok(()))
    }
}
