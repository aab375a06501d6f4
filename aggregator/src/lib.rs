//! The speed layer: Kafka `events` → 5-minute event-time windows →
//! `rollup_5m`, exactly once in effect.
//!
//! - [`window`]: the pure core (windows, watermarks, late events, cardinality
//!   guard, histograms), no Kafka or ClickHouse types.
//! - `consumer`: one thread owns the consumer and all partitions' windows,
//!   feeds records into the core and flushes closed windows; `record` reads
//!   each record's fields and configured dimensions without building a map.
//! - the rebalance hook is core's `AssignAtPositions`, which assigns each
//!   partition at the checkpoint read back from ClickHouse.
//! - [`sink`]: the INSERT into `rollup_5m` (whose progress view records the
//!   checkpoint in the same request) and the checkpoint read.
//!
//! Exactly once: every flush of a partition writes its closed windows and the
//! checkpoint (resume offset, watermark) in one INSERT. A restarted or newly
//! assigned partition resumes at the checkpoint with the checkpoint's
//! watermark, so windows already flushed count as closed and are never
//! written again, and open windows are rebuilt from the same records in the
//! same order. Kafka commits are written too, only as a hint for lag tools.

mod consumer;
pub mod metrics;
mod record;
pub mod sink;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hourglass_core::Config;
use hourglass_core::telemetry;

use sink::RollupSink;
use window::WindowConfig;

#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("invalid aggregator configuration: {0}")]
    Config(String),
    #[error("Kafka consumer failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("health endpoint failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("aggregator thread panicked")]
    Panicked,
    #[error(
        "ClickHouse refuses the windows of partition {partition} (records at offsets {offsets:?}) for good ({failure}): {error}"
    )]
    Refused {
        partition: i32,
        offsets: std::ops::Range<i64>,
        failure: &'static str,
        error: String,
    },
}

/// Run the aggregator until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<(), AggregatorError> {
    run_with(cfg, telemetry::shutdown_on_signal()).await
}

/// Run the aggregator until `shutdown` is set.
pub async fn run_with(
    cfg: Config,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), AggregatorError> {
    cfg.validate()
        .map_err(|e| AggregatorError::Config(e.to_string()))?;
    let service = telemetry::Service::start_with(&cfg.aggregator.http_listen, shutdown)
        .map_err(|e| AggregatorError::Config(format!("aggregator.http_listen: {e}")))?;
    // After the recorder exists (Service installs it), or the descriptions are lost.
    metrics::describe();
    let context = consumer::AggregatorContext::new(
        RollupSink::new(
            hourglass_core::clickhouse::client(&cfg.clickhouse),
            &cfg.kafka.topic,
        ),
        tokio::runtime::Handle::current(),
        metrics::CONSUMER_LAG,
    );
    let consumer =
        hourglass_core::kafka::lag_reporting_consumer_config(&cfg.kafka, &cfg.aggregator.group_id)
            .set("enable.partition.eof", "true")
            .set("partition.assignment.strategy", "range")
            .create_with_context(context)?;
    let main = consumer::Loop {
        consumer,
        topic: cfg.kafka.topic.clone(),
        windows: Arc::new(WindowConfig::from(&cfg.aggregator)),
        flush_interval: Duration::from_millis(cfg.aggregator.flush_interval_ms.max(10)),
        shutdown: service.shutdown.clone(),
        readiness: service.readiness.clone(),
        partitions: BTreeMap::new(),
        counters: consumer::EventCounters::register(),
        in_flight: None,
        refused: None,
    };
    tracing::info!(topic = %cfg.kafka.topic, group = %cfg.aggregator.group_id, "aggregator starting");
    let result = tokio::task::spawn_blocking(move || main.run())
        .await
        .map_err(|_| AggregatorError::Panicked)?;
    service.stop().await?;
    result
}
