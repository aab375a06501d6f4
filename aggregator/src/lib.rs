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
use hourglass_core::clickhouse::cluster::QuorumGuard;
use hourglass_core::consumer::{Component, ConsumerError, Started, run_consumer};
use tokio_util::sync::CancellationToken;

use sink::RollupSink;
use window::WindowConfig;

/// Run the aggregator until `shutdown` is cancelled; the flush in flight
/// and the windows closed by then are written first.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), ConsumerError> {
    let component = Component {
        name: "aggregator",
        http_listen: &cfg.aggregator.http_listen,
        group_id: &cfg.aggregator.group_id,
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
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let quorum = QuorumGuard::new(&cfg.clickhouse, client.clone(), sink::CHECKPOINT_TABLES);
    let context = consumer::AggregatorContext::new(
        RollupSink::new(client, &cfg.kafka.topic)
            .with_quorum_guard(quorum)
            .with_window(cfg.aggregator.window_secs, cfg.aggregator.grace_secs),
        started.runtime.clone(),
        metrics::CONSUMER_LAG,
        &cfg.consumers,
    );
    let mut consumer_config = started.consumer_config;
    let consumer = consumer_config
        .set("enable.partition.eof", "true")
        .create_with_context(context)?;
    let main = consumer::Loop {
        consumer,
        topic: cfg.kafka.topic.clone(),
        windows: Arc::new(WindowConfig::from(cfg)),
        flush_interval: Duration::from_millis(cfg.aggregator.flush_interval_ms.max(10)),
        retry: cfg.consumers.clone(),
        watchdog: started.watchdog,
        shutdown: started.shutdown,
        readiness: started.readiness,
        partitions: BTreeMap::new(),
        counters: consumer::EventCounters::register(),
        in_flight: None,
        refused: None,
    };
    Ok(move || main.run())
}
