//! The lake: every event archived as zstd Parquet under Hive-style folders
//! (`dt=YYYY-MM-DD/hour=HH/`, by `received_at`), in S3 or a local folder,
//! and replay of any time range from it.
//!
//! - [`archive`]: the archiver consumer group (exactly once through
//!   deterministic object names and an existence check, see its docs).
//! - [`replay`]: lake → ClickHouse `events`, the rollups, or Kafka.
//! - [`store`]: the one small trait over S3 and a local folder.
//! - [`schema`], [`layout`]: the Parquet columns and the object names.

pub mod archive;
pub mod layout;
pub mod metrics;
pub mod replay;
pub mod schema;
pub mod store;

use std::sync::Arc;

use hourglass_core::Config;
use hourglass_core::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("invalid lake configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("Kafka client failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("health endpoint failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("archiver thread panicked")]
    Panicked,
}

/// Run the archiver until SIGINT/SIGTERM; open files are written first.
pub async fn run_archiver(cfg: Config) -> Result<(), LakeError> {
    run_archiver_with(cfg, telemetry::shutdown_on_signal()).await
}

/// Run the archiver until `shutdown` is set.
pub async fn run_archiver_with(
    cfg: Config,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), LakeError> {
    cfg.validate()
        .map_err(|e| LakeError::Config(e.to_string()))?;
    let service = telemetry::Service::start_with(&cfg.lake.http_listen, shutdown)
        .map_err(|e| LakeError::Config(format!("lake.http_listen: {e}")))?;
    metrics::describe();
    let store: Arc<dyn store::ObjectStore> = Arc::from(store::open(&cfg).await?);
    let consumer =
        hourglass_core::kafka::lag_reporting_consumer_config(&cfg.kafka, &cfg.lake.group_id)
            .set("partition.assignment.strategy", "range")
            .create_with_context(hourglass_core::kafka::LagReporting {
                gauge: metrics::CONSUMER_LAG,
            })?;
    tracing::info!(topic = %cfg.kafka.topic, group = %cfg.lake.group_id, lake = %store.describe(), "archiver starting");
    let archiver = archive::Archiver::new(
        consumer,
        store,
        &cfg.kafka.topic,
        &cfg.lake,
        service.shutdown.clone(),
        service.readiness.clone(),
    );
    let result = tokio::task::spawn_blocking(move || archiver.run())
        .await
        .map_err(|_| LakeError::Panicked)?;
    service.stop().await?;
    tracing::info!("archiver stopped");
    Ok(result?)
}
