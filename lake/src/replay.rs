//! Replay: rebuild any time range from the lake, into ClickHouse `events`,
//! into the rollups (through the aggregator's own windowing core), or back
//! onto a Kafka topic.
//!
//! Files are listed only in the hour folders that can hold the range, read
//! a few at a time (bounded memory), and filtered by event time. The
//! rollups mode feeds every event of those files to one windowing core per
//! source partition in offset order, as the live aggregator saw them, so
//! the recomputed windows (late events included or dropped alike) equal a
//! live run's.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hourglass_aggregator::sink::RollupSink;
use hourglass_aggregator::window::{
    Checkpoint, ClosedWindows, EventRef, PartitionWindows, WindowConfig,
};
use hourglass_core::Config;
use hourglass_core::clickhouse::cluster::{mutated_table, mutation_target};
use hourglass_core::clickhouse::deletions::DeletedUsers;
use hourglass_core::clickhouse::levels;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::FutureRecord;

use crate::layout;
use crate::named::{self, Named};
use crate::schema::{LakeEvent, read_parquet};
use crate::store::ObjectStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    ClickHouse,
    Rollups,
    Kafka,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub project: Option<String>,
    pub target: Target,
    /// Topic to re-publish to (`--into kafka`).
    pub kafka_topic: String,
    pub dry_run: bool,
    /// Files read at once.
    pub parallel: usize,
    /// How much later than its event time an event may have arrived.
    pub lateness: chrono::Duration,
    /// How much earlier (a client clock running ahead).
    pub lead: chrono::Duration,
    pub progress: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub files: usize,
    pub bytes: u64,
    pub events_read: u64,
    pub events_in_range: u64,
    /// Raw events inserted (clickhouse), rollup rows written (rollups), records produced (kafka).
    pub written: u64,
    /// Raw events already in ClickHouse (clickhouse mode).
    pub already_present: u64,
    /// Events of users whose data was deleted (the `deletions` table), skipped.
    pub deleted_skipped: u64,
    pub seconds: f64,
}

/// The longest range one `--into rollups` replay writes (about 95 months).
pub const MAX_ROLLUP_REPLAY_DAYS: i64 = 2_900;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("--from must be before --to")]
    EmptyRange,
    #[error(
        "a replay into rollups spans at most {MAX_ROLLUP_REPLAY_DAYS} days (its rows go in one INSERT per partition, and ClickHouse refuses one over 100 monthly partitions): replay the range in parts"
    )]
    RangeTooLong,
    #[error("lake: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("reading {key}: {source}")]
    Read {
        key: String,
        source: crate::schema::SchemaError,
    },
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("writing rollups: {0}")]
    Rollups(#[from] hourglass_aggregator::sink::SinkError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("ClickHouse mutation on {table} not done after {secs} s")]
    MutationTimeout { table: String, secs: u64 },
}

/// Files of `topic` that can hold events of the range, by partition and offset.
pub async fn list_files(
    store: &dyn ObjectStore,
    topic: &str,
    opts: &ReplayOptions,
) -> Result<Vec<Named>, ReplayError> {
    let mut files = Vec::new();
    for folder in layout::hour_folders(opts.from, opts.to, opts.lead, opts.lateness) {
        let mut listed = named::list_named(store, &folder).await?;
        listed.retain(|f| f.name.topic == topic);
        // Without sources a stopped compaction left beside their merged file.
        files.extend(named::split_superseded(listed).0);
    }
    files.sort_by_key(|f| f.name.first_span());
    Ok(files)
}

pub async fn replay(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: &ReplayOptions,
) -> Result<ReplaySummary, ReplayError> {
    let sink = Sink::new(cfg, opts).await?;
    replay_into(cfg, store, opts, sink).await
}

/// Every copy of every event of the range (deleted users' events left out,
/// as replay does) into `table`, a table with the columns of `events` that
/// the batch layer reads instead of `events` (`hourglass batch --source
/// lake`). Copies stay: the batch keeps the earliest received, as it does
/// from `events`.
pub async fn stage(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: &ReplayOptions,
    table: &str,
) -> Result<ReplaySummary, ReplayError> {
    let sink = Sink::ClickHouse {
        client: hourglass_core::clickhouse::client(&cfg.clickhouse),
        table: table.to_owned(),
        existing: None,
        shape: cfg.into(),
    };
    replay_into(cfg, store, opts, sink).await
}

async fn replay_into(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: &ReplayOptions,
    mut sink: Sink,
) -> Result<ReplaySummary, ReplayError> {
    if opts.from >= opts.to {
        return Err(ReplayError::EmptyRange);
    }
    if opts.target == Target::Rollups
        && opts.to - opts.from > chrono::Duration::days(MAX_ROLLUP_REPLAY_DAYS)
    {
        return Err(ReplayError::RangeTooLong);
    }
    let started = Instant::now();
    let files = list_files(store.as_ref(), &cfg.kafka.topic, opts).await?;
    let mut summary = ReplaySummary {
        files: files.len(),
        bytes: files.iter().map(|f| f.info.size).sum(),
        ..Default::default()
    };
    let bar = progress_bar(summary.bytes, opts.progress);
    let deleted = DeletedUsers::read(&hourglass_core::clickhouse::client(&cfg.clickhouse)).await?;
    let reads = futures::stream::iter(files.into_iter().map(|f| {
        let store = store.clone();
        async move {
            // Compaction or erasure may have replaced it since the listing.
            let listed = crate::listed::get_listed(store.as_ref(), &f).await?;
            let size = f.info.size;
            let key = f.info.key.clone();
            let bytes = listed.bytes.clone();
            let mut events = tokio::task::spawn_blocking(move || read_parquet(bytes))
                .await
                .expect("decoder thread")
                .map_err(|source| ReplayError::Read { key, source })?;
            listed.keep_own(&mut events);
            Ok::<_, ReplayError>((size, events))
        }
    }))
    .buffered(opts.parallel.max(1));
    futures::pin_mut!(reads);
    while let Some(file) = reads.next().await {
        let (size, mut events) = file?;
        summary.events_read += events.len() as u64;
        if !deleted.is_empty() {
            let before = events.len();
            let tenant = &cfg.contract.tenant_property;
            events.retain(|e| !deleted.covers_event(&e.event, tenant));
            summary.deleted_skipped += (before - events.len()) as u64;
        }
        sink.take(events, opts, &mut summary).await?;
        bar.inc(size);
        let rate = summary.events_read as f64 / started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{} events read, {rate:.0}/s", summary.events_read));
    }
    sink.finish(opts, &mut summary).await?;
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn progress_bar(total: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn in_range(e: &LakeEvent, opts: &ReplayOptions) -> bool {
    e.event.timestamp >= opts.from
        && e.event.timestamp < opts.to
        && opts
            .project
            .as_ref()
            .is_none_or(|p| &e.event.project_id == p)
}

enum Sink {
    ClickHouse {
        client: clickhouse::Client,
        table: String,
        /// Event ids already in the table, skipped (`None`: every copy goes in).
        existing: Option<HashSet<uuid::Uuid>>,
        shape: hourglass_loader::rows::RowShape,
    },
    Rollups {
        client: clickhouse::Client,
        /// Where mutations go (a cluster's local tables).
        clickhouse: hourglass_core::config::ClickHouseConfig,
        topic: String,
        window: Arc<WindowConfig>,
        partitions: BTreeMap<i32, PartitionWindows>,
    },
    Kafka {
        producer: rdkafka::producer::FutureProducer,
    },
}

impl Sink {
    async fn new(cfg: &Config, opts: &ReplayOptions) -> Result<Self, ReplayError> {
        let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
        Ok(match opts.target {
            Target::ClickHouse => Sink::ClickHouse {
                table: "events".into(),
                existing: Some(existing_ids(&client, opts).await?),
                shape: cfg.into(),
                client,
            },
            Target::Rollups => Sink::Rollups {
                client,
                clickhouse: cfg.clickhouse.clone(),
                topic: cfg.kafka.topic.clone(),
                window: Arc::new(WindowConfig::from(cfg)),
                partitions: BTreeMap::new(),
            },
            Target::Kafka => Sink::Kafka {
                producer: hourglass_core::kafka::producer(&cfg.kafka)?,
            },
        })
    }

    async fn take(
        &mut self,
        events: Vec<LakeEvent>,
        opts: &ReplayOptions,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        match self {
            Sink::ClickHouse {
                client,
                table,
                existing,
                shape,
            } => {
                let mut rows = Vec::new();
                for e in events.iter().filter(|e| in_range(e, opts)) {
                    summary.events_in_range += 1;
                    if let Some(existing) = existing.as_mut()
                        && !existing.insert(e.event.event_id)
                    {
                        summary.already_present += 1;
                        continue;
                    }
                    match hourglass_loader::rows::from_envelope(
                        e.event.clone(),
                        e.partition,
                        e.offset,
                        shape,
                    ) {
                        Ok(row) => rows.push(row),
                        Err(why) => {
                            tracing::warn!(event_id = %e.event.event_id, %why, "not loadable; skipped")
                        }
                    }
                }
                if !opts.dry_run && !rows.is_empty() {
                    let mut insert = client
                        .insert::<hourglass_loader::rows::EventRow>(table)
                        .await?;
                    for row in &rows {
                        insert.write(row).await?;
                    }
                    insert.end().await?;
                }
                summary.written += rows.len() as u64;
            }
            Sink::Rollups {
                window, partitions, ..
            } => {
                // The live aggregator's rule: events dated past the clock
                // (plus `max_ahead`) are set aside, never windowed.
                let now_ms = chrono::Utc::now().timestamp_millis();
                for e in &events {
                    summary.events_in_range += u64::from(in_range(e, opts));
                    let core = partitions
                        .entry(e.partition)
                        .or_insert_with(|| PartitionWindows::new(window.clone(), e.offset, None));
                    let ev = &e.event;
                    let dimensions = hourglass_aggregator::window::dimension_values(
                        &window.dimensions,
                        Some(&ev.properties),
                    );
                    core.ingest(
                        &EventRef {
                            project_id: &ev.project_id,
                            event: &ev.event,
                            user: ev.user(),
                            timestamp_ms: ev.timestamp_millis(),
                            value: ev.value,
                            dimensions: &dimensions,
                        },
                        e.offset,
                        now_ms,
                    );
                }
            }
            Sink::Kafka { producer } => {
                let matching: Vec<&LakeEvent> =
                    events.iter().filter(|e| in_range(e, opts)).collect();
                summary.events_in_range += matching.len() as u64;
                if !opts.dry_run {
                    let topic = opts.kafka_topic.as_str();
                    let producer = &*producer;
                    let sends = matching.iter().map(|e| {
                        let key = e.event.kafka_key();
                        let payload = e.event.encode();
                        async move {
                            producer
                                .send(
                                    FutureRecord::to(topic).key(&key).payload(&payload),
                                    Duration::from_secs(60),
                                )
                                .await
                                .map_err(|(err, _)| err)
                        }
                    });
                    for r in futures::future::join_all(sends).await {
                        r?;
                    }
                    summary.written += matching.len() as u64;
                }
            }
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        opts: &ReplayOptions,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        let Sink::Rollups {
            client,
            clickhouse,
            topic,
            partitions,
            ..
        } = self
        else {
            return Ok(());
        };
        let from_ms = opts.from.timestamp_millis();
        let to_ms = opts.to.timestamp_millis();
        let mut closed = Vec::new();
        for (partition, core) in partitions.iter_mut() {
            // The lake ends here: close every window, as an idle partition would.
            core.mark_caught_up(0);
            core.tick(i64::MAX);
            if let Some(mut c) = core.take_all_closed() {
                c.rows.retain(|r| {
                    r.window_start_ms >= from_ms
                        && r.window_start_ms < to_ms
                        && opts.project.as_ref().is_none_or(|p| &r.project_id == p)
                });
                if !c.rows.is_empty() {
                    closed.push((*partition, c));
                }
            }
        }
        summary.written = closed.iter().map(|(_, c)| c.rows.len() as u64).sum();
        if opts.dry_run {
            return Ok(());
        }
        replace_rollups(client, clickhouse, topic, opts, &closed).await
    }
}

/// Ids of the raw events ClickHouse already holds in the range, so a replay
/// inserts only what is missing (running it twice changes nothing).
async fn existing_ids(
    client: &clickhouse::Client,
    opts: &ReplayOptions,
) -> Result<HashSet<uuid::Uuid>, ReplayError> {
    let from = opts.from.timestamp();
    let to = opts.to.timestamp() + 1;
    let mut cursor = client
        .query("SELECT toString(event_id) FROM events WHERE timestamp >= toDateTime(?) AND timestamp < toDateTime(?) AND (? = '' OR project_id = ?)")
        .bind(from)
        .bind(to)
        .bind(opts.project.clone().unwrap_or_default())
        .bind(opts.project.clone().unwrap_or_default())
        .fetch::<String>()?;
    let mut ids = HashSet::new();
    while let Some(id) = cursor.next().await? {
        if let Ok(id) = id.parse() {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Replace the range's `rollup_5m` rows, and the hourly and daily buckets
/// they feed, with recomputed ones. Buckets the range covers only in part
/// are rebuilt from the `rollup_5m` rows outside the range plus the new ones.
async fn replace_rollups(
    client: &clickhouse::Client,
    ch: &hourglass_core::config::ClickHouseConfig,
    topic: &str,
    opts: &ReplayOptions,
    closed: &[(i32, ClosedWindows)],
) -> Result<(), ReplayError> {
    let project = opts.project.clone().unwrap_or_default();
    let (from, to) = (opts.from.timestamp(), opts.to.timestamp());
    let only = "(? = '' OR project_id = ?)";
    let h0 = layout::hour_of(opts.from).timestamp();
    let h1 = layout::hour_of(opts.to - chrono::Duration::milliseconds(1)).timestamp() + 3600;
    let d0 = opts
        .from
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp();
    let d1 = (opts.to - chrono::Duration::milliseconds(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp()
        + 86_400;

    client
        .query(&format!("ALTER TABLE {} DELETE WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) AND {only}", mutation_target(ch, "rollup_5m")))
        .bind(from).bind(to).bind(&project).bind(&project)
        .execute().await?;
    for (table, a, b) in [("rollup_1h", h0, h1), ("rollup_1d", d0, d1)] {
        client
            .query(&format!("ALTER TABLE {} DELETE WHERE bucket_start >= toDateTime(?) AND bucket_start < toDateTime(?) AND {only}", mutation_target(ch, table)))
            .bind(a).bind(b).bind(&project).bind(&project)
            .execute().await?;
    }
    for table in ["rollup_5m", "rollup_1h", "rollup_1d"] {
        wait_for_mutations(client, &mutated_table(ch, table)).await?;
    }
    // The new rows; the views add them to the (now empty) hourly and daily buckets.
    let sink = RollupSink::new(client.clone(), format!("replay:{topic}"));
    for (partition, c) in closed {
        let c = ClosedWindows {
            rows: c.rows.clone(),
            // The live aggregator's ledger, not a replay's.
            late: Vec::new(),
            windows: c.windows,
            last_window_start_ms: c.last_window_start_ms,
            // The replay's rows carry no checkpoint of the live aggregator.
            checkpoint: Checkpoint {
                resume_offset: 0,
                watermark_ms: 0,
            },
        };
        sink.write(*partition, &c).await?;
    }
    // The rest of partly covered buckets, from the rows outside the range,
    // as the levels' materialized views would have computed them.
    for (level, a, b) in [(levels::HOURLY, h0, h1), (levels::DAILY, d0, d1)] {
        let filter = format!(
            "window_start >= toDateTime(?) AND window_start < toDateTime(?) \
             AND NOT (window_start >= toDateTime(?) AND window_start < toDateTime(?)) AND {only}"
        );
        client
            .query(&levels::fill_from_rollup_5m(level, &filter))
            .bind(a)
            .bind(b)
            .bind(from)
            .bind(to)
            .bind(&project)
            .bind(&project)
            .execute()
            .await?;
    }
    Ok(())
}

async fn wait_for_mutations(client: &clickhouse::Client, table: &str) -> Result<(), ReplayError> {
    const LIMIT_SECS: u64 = 300;
    if hourglass_core::clickhouse::mutations_done(client, table, Duration::from_secs(LIMIT_SECS))
        .await?
    {
        Ok(())
    } else {
        Err(ReplayError::MutationTimeout {
            table: table.into(),
            secs: LIMIT_SECS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rollups_replay_over_100_months_is_refused_before_any_work() {
        let from = chrono::TimeZone::with_ymd_and_hms(&Utc, 2016, 1, 1, 0, 0, 0).unwrap();
        let opts = ReplayOptions {
            from,
            to: from + chrono::Duration::days(3_700),
            project: None,
            target: Target::Rollups,
            kafka_topic: String::new(),
            dry_run: true,
            parallel: 1,
            lateness: chrono::Duration::hours(2),
            lead: chrono::Duration::hours(1),
            progress: false,
        };
        let empty = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::store::LocalStore::new(empty.path()));
        let cfg = Config::default();
        let err = replay(&cfg, store, &opts).await.unwrap_err();
        assert!(matches!(err, ReplayError::RangeTooLong), "{err}");
        assert!(err.to_string().contains("in parts"));
    }
}
