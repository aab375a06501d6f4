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
use hourglass_core::consumer::{Component, ConsumerError, Started, run_consumer};
use tokio_util::sync::CancellationToken;

/// Run the archiver until `shutdown` is cancelled; open files are written
/// first.
pub async fn run_archiver(cfg: Config, shutdown: CancellationToken) -> Result<(), ConsumerError> {
    let component = Component {
        name: "archiver",
        http_listen: &cfg.lake.http_listen,
        group_id: &cfg.lake.group_id,
    };
    run_consumer(&cfg, component, shutdown, metrics::describe, |started| {
        build(&cfg, started)
    })
    .await
}

async fn build(
    cfg: &Config,
    started: Started,
) -> Result<impl FnOnce() -> Result<(), ConsumerError> + use<>, ConsumerError> {
    let store: Arc<dyn store::ObjectStore> =
        Arc::from(store::open(cfg).await.map_err(|e| ConsumerError::Sink {
            what: "opening the lake",
            error: e.to_string(),
        })?);
    tracing::info!(lake = %store.describe(), "archiving into the lake");
    let consumer =
        started
            .consumer_config
            .create_with_context(hourglass_core::kafka::LagReporting {
                gauge: metrics::CONSUMER_LAG,
                group_health: Default::default(),
            })?;
    let archiver = archive::Archiver::new(
        consumer,
        store,
        &cfg.kafka.topic,
        cfg,
        started.watchdog,
        started.shutdown,
        started.readiness,
    );
    Ok(move || archiver.run())
}
