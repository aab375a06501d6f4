//! The batch layer's loader: Kafka `events` → ClickHouse `events`, batched,
//! exactly once in effect, with a dead-letter topic.
//!
//! One thread owns the consumer. Records become rows ([`rows`]) in a batch
//! that is written in one INSERT when it reaches `batch_rows`, `batch_bytes`
//! or `batch_age_ms`. The same INSERT feeds `loader_progress` (a materialized
//! view: the highest offset loaded per partition), and every assignment
//! starts each partition right after that offset, so a crash at any moment
//! neither loses nor repeats a row. While ClickHouse is down the partitions
//! are paused and the INSERT retried with exponential backoff and jitter; a
//! failed attempt whose outcome is unknown is checked against the progress
//! table first. Records that can never be loaded go to the dead-letter topic
//! with the original bytes and the reason in headers; rows ClickHouse itself
//! refuses are found by halving the batch and dead-lettered the same way.

mod consumer;
pub mod metrics;
pub mod rows;
pub mod sink;

use hourglass_core::Config;
use hourglass_core::clickhouse::ServerVersion;
use hourglass_core::kafka::assign::AssignAtPositions;
use hourglass_core::telemetry;

use sink::EventSink;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("invalid loader configuration: {0}")]
    Config(String),
    #[error("Kafka client failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("health endpoint failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("loader thread panicked")]
    Panicked,
    #[error("ClickHouse refuses every write until an operator fixes it: {0}")]
    Setup(String),
}

/// Run the loader until SIGINT/SIGTERM; the current batch is finished first.
pub async fn run(cfg: Config) -> Result<(), LoaderError> {
    run_with(cfg, telemetry::shutdown_on_signal()).await
}

/// Run the loader until `shutdown` is set.
pub async fn run_with(
    cfg: Config,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), LoaderError> {
    cfg.validate()
        .map_err(|e| LoaderError::Config(e.to_string()))?;
    let service = telemetry::Service::start_with(&cfg.loader.http_listen, shutdown)
        .map_err(|e| LoaderError::Config(format!("loader.http_listen: {e}")))?;
    // After the recorder exists (Service installs it), or the descriptions are lost.
    metrics::describe();
    // The loader produces dead letters with acks=all.
    hourglass_core::kafka::topics::check_pipeline_topics_in_background(&cfg.kafka);
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let mut sink = EventSink::new(client.clone());
    match ServerVersion::query(&client).await {
        Ok(v) if v.has_insert_dedup() => sink = sink.with_dedup_tokens(&cfg.kafka.topic),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask ClickHouse its version; inserting without deduplication tokens")
        }
    }
    let context = AssignAtPositions::new(
        sink,
        tokio::runtime::Handle::current(),
        metrics::CONSUMER_LAG,
    );
    let consumer =
        hourglass_core::kafka::lag_reporting_consumer_config(&cfg.kafka, &cfg.loader.group_id)
            .set("partition.assignment.strategy", "range")
            .create_with_context(context)?;
    let dlq = hourglass_core::kafka::producer(&cfg.kafka)?;
    let main = consumer::Loop::new(
        consumer,
        dlq,
        &cfg,
        service.shutdown.clone(),
        service.readiness.clone(),
    );
    tracing::info!(topic = %cfg.kafka.topic, group = %cfg.loader.group_id, "loader starting");
    let result = tokio::task::spawn_blocking(move || main.run())
        .await
        .map_err(|_| LoaderError::Panicked)?;
    service.stop().await?;
    result
}
