//! The lake: every event archived as zstd Parquet under Hive-style folders
//! (`dt=YYYY-MM-DD/hour=HH/`, by `received_at`), in S3 or a local folder,
//! and replay of any time range from it.
//!
//! - [`archive`]: the archiver consumer group (exactly once through
//!   deterministic object names and an existence check, see its docs).
//! - [`compact`]: a settled hour's small files of a partition made one,
//!   then every partition's made one hour file.
//! - [`erase`]: files rewritten without deleted users' events.
//! - [`replay`]: lake → ClickHouse `events`, the rollups, or Kafka.
//! - [`store`]: the one small trait over S3 and a local folder.
//! - [`named`]: a listing's files with what each holds (hour files' spans
//!   from their footers); [`listed`]: reading a listed file that was
//!   replaced since.
//! - [`schema`], [`layout`]: the Parquet columns and the object names.

pub mod archive;
pub mod compact;
pub mod erase;
pub mod export;
pub mod layout;
pub mod listed;
pub mod metrics;
pub mod named;
pub mod replay;
pub mod schema;
pub mod store;
#[cfg(test)]
mod test_support;

use std::sync::Arc;

use hourglass_core::Config;
use hourglass_core::clickhouse::deletions::DeletionsWatch;
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
        store.clone(),
        &cfg.kafka.topic,
        cfg,
        started.watchdog,
        started.shutdown.clone(),
        started.readiness,
    );
    if cfg.lake.compact_interval_secs > 0 {
        let owned = archiver.owned_partitions();
        let (cfg, shutdown) = (cfg.clone(), started.shutdown);
        // Its own blocking thread: merging is CPU work (Parquet decode and
        // encode) that must not hold the runtime serving health checks.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(compaction_loop(cfg, store, owned, shutdown));
        });
    }
    Ok(move || archiver.run())
}

/// A compaction pass over the settled hours of the partitions this member
/// holds, every `lake.compact_interval_secs`, until shutdown (a pass cut
/// short leaves only files the next one finishes, see [`compact`]).
async fn compaction_loop(
    cfg: Config,
    store: Arc<dyn store::ObjectStore>,
    owned: archive::OwnedPartitions,
    shutdown: CancellationToken,
) {
    let every = std::time::Duration::from_secs(cfg.lake.compact_interval_secs);
    let mut deletions = DeletionsWatch::new(hourglass_core::clickhouse::client(&cfg.clickhouse));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mine = owned.read().expect("owned partitions lock").clone();
        if mine.is_empty() {
            continue;
        }
        let mut opts = compact::CompactOptions::settled(&cfg, chrono::Utc::now());
        // One member makes the hour files: the holder of partition 0, which
        // the group gives to one member at a time (a rebalance overlap is
        // resolved by the merge's race check).
        opts.across_partitions &= mine.contains(&0);
        let owns = |p: i32| mine.contains(&p);
        let pass = compact::compact(store.as_ref(), &opts, &owns, &mut deletions);
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = pass => match result {
                Ok(s) if s.files_in + s.superseded_removed + s.backed_off > 0 => tracing::info!(
                    files_in = s.files_in,
                    files_out = s.files_out,
                    hour_files = s.hour_files,
                    bytes_out = s.bytes_out,
                    superseded_removed = s.superseded_removed,
                    deleted_users_events_removed = s.events_removed,
                    backed_off = s.backed_off,
                    "compaction pass"
                ),
                Ok(_) => {}
                Err(e) => {
                    metrics::compaction_failed();
                    tracing::warn!(error = %e, "compaction pass failed; retried next interval");
                }
            }
        }
    }
}
