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
use hourglass_core::clickhouse::cluster::QuorumGuard;
use hourglass_core::consumer::{Component, ConsumerError, Started, run_consumer};
use hourglass_core::kafka::assign::AssignAtPositions;
use tokio_util::sync::CancellationToken;

use sink::EventSink;

/// Run the loader until `shutdown` is cancelled; the current batch is
/// written first.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), ConsumerError> {
    let component = Component {
        name: "loader",
        http_listen: &cfg.loader.http_listen,
        group_id: &cfg.loader.group_id,
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
    // The loader produces dead letters with acks=all.
    hourglass_core::kafka::topics::check_pipeline_topics_in_background(&cfg.kafka);
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let mut sink = EventSink::new(client.clone()).with_quorum_guard(QuorumGuard::new(
        &cfg.clickhouse,
        client.clone(),
        sink::PROGRESS_TABLES,
    ));
    match ServerVersion::query(&client).await {
        Ok(v) if v.has_insert_dedup() => sink = sink.with_dedup_tokens(&cfg.kafka.topic),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask ClickHouse its version; inserting without deduplication tokens")
        }
    }
    let context = AssignAtPositions::new(
        sink,
        started.runtime.clone(),
        metrics::CONSUMER_LAG,
        &cfg.consumers,
    );
    let consumer = started.consumer_config.create_with_context(context)?;
    let dlq = hourglass_core::kafka::producer(&cfg.kafka)?;
    let main = consumer::Loop::new(
        consumer,
        dlq,
        cfg,
        started.watchdog,
        started.shutdown,
        started.readiness,
    );
    Ok(move || main.run())
}
