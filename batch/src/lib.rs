//! The batch layer of the lambda architecture: `hourglass batch`.
//!
//! For every closed hour older than `batch.settle_secs`, a pass recomputes the
//! hour's 5-minute and hourly rollups from the raw record (`events`) inside
//! ClickHouse, one event per `event_id`, late events in, deleted users out,
//! by the speed layer's rules ([`sql`]). Its rows land under a new version;
//! one single-row commit then switches readers from the speed rows to them.
//! Hours that change after their pass (late arrivals, imports, deletions)
//! are found in `event_hours` and `deleted_events` and recomputed. A day whose
//! hours are all batched gets finalized daily rows. Each pass writes the
//! speed-versus-batch reconciliation of its hours ([`reconcile`]).
//!
//! Computing in ClickHouse, not here, is what lets the work scale with the
//! data: a pass sends a few statements, and a ClickHouse cluster runs the
//! scan on its shards in parallel.

pub mod erasure;
pub mod lake_source;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod prune;
pub mod reconcile;
pub mod retention;
pub mod rollup_erasure;
pub mod sql;
pub mod ttl;

use std::time::{Duration, Instant};

use clickhouse::Client;
use hourglass_core::Config;
use hourglass_core::dimensions::Dimensions;
use hourglass_core::telemetry;
use tokio_util::sync::CancellationToken;

use crate::lease::Lease;
use crate::sql::HourSpec;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(
        "another `hourglass batch` ({holder}) holds the lease of this database (renewed {secs_ago} s ago; it lapses after {lease_secs} s without renewal)"
    )]
    LeaseHeld {
        holder: String,
        secs_ago: u32,
        lease_secs: u32,
    },
    #[error("batch lease: {0}")]
    Lease(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("reading the lake: {0}")]
    Lake(String),
    #[error("erasure: {0}")]
    Erasure(String),
    #[error("health endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Which hours a pass looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// Unix seconds, inclusive; `None`: from the first hour with events.
    pub from: Option<i64>,
    /// Unix seconds, exclusive; `None`: up to the settled hours.
    pub to: Option<i64>,
    /// Recompute every hour of the range with events, changed or not.
    pub force: bool,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub hours: Vec<i64>,
    pub days: Vec<i64>,
    pub events: u64,
    /// Hours that were due but left for the next pass (`max_hours_per_pass`).
    pub left_over: usize,
}

/// One batch worker against one database.
pub struct Batch {
    client: Client,
    cfg: Config,
    empty_dimensions: String,
    last_version: u64,
}

impl Batch {
    pub fn new(cfg: &Config) -> Self {
        Self {
            client: hourglass_core::clickhouse::client(&cfg.clickhouse),
            cfg: cfg.clone(),
            empty_dimensions: Dimensions::from(&cfg.aggregator).empty_key(),
            last_version: 0,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A version larger than any pass before, even if the clock went back.
    async fn next_version(&mut self) -> Result<u64, BatchError> {
        if self.last_version == 0 {
            self.last_version = self
                .client
                .query("SELECT max(version) FROM batch_commits")
                .fetch_one()
                .await?;
        }
        let now = chrono::Utc::now().timestamp_millis() as u64;
        self.last_version = now.max(self.last_version + 1);
        Ok(self.last_version)
    }

    /// Recompute and commit every due hour of `range`, then the days they
    /// complete. `lease` is renewed between hours.
    pub async fn pass(&mut self, range: Range, lease: &Lease) -> Result<PassReport, BatchError> {
        let b = &self.cfg.batch;
        let cutoff = plan::settled_before(&self.client, b.settle_secs).await?;
        let to = range.to.map_or(cutoff, |t| t.min(cutoff));
        let due = plan::due_hours(&self.client, range.from, to, range.force).await?;
        // Left by a run killed between its two statements; only the lease
        // holder writes here.
        self.client
            .query("TRUNCATE TABLE IF EXISTS batch_dup_ids")
            .execute()
            .await?;
        let max = b.max_hours_per_pass.max(1) as usize;
        ::metrics::gauge!(metrics::HOURS_DUE).set(due.len() as f64);
        let mut report = PassReport {
            left_over: due.len().saturating_sub(max),
            ..PassReport::default()
        };
        let due: Vec<i64> = due.into_iter().take(max).collect();
        for run in plan::statement_runs(&self.client, &due).await? {
            lease.renew().await?;
            report.events += self.hours_from("events", "clickhouse", &run).await?;
            report.hours.extend(run);
        }
        if report.left_over == 0 {
            // A day is due once its last hour is, and, with a range, when it
            // starts before the range's end (a forced pass leaves the days
            // after the range alone; a day the range only partly covers is
            // derived again from its hours' current passes).
            let day_cutoff = (cutoff + 3_600 - 86_400 + 1).min(range.to.unwrap_or(i64::MAX));
            for day in plan::due_days(&self.client, range.from, day_cutoff, range.force).await? {
                lease.renew().await?;
                self.day(day).await?;
                report.days.push(day);
            }
        }
        reconcile::publish_gauges(&self.client).await?;
        Ok(report)
    }

    /// Recompute one hour from `events` and commit it; returns its events.
    pub async fn hour(&mut self, hour: i64) -> Result<u64, BatchError> {
        self.hours_from("events", "clickhouse", &[hour]).await
    }

    /// Recompute a run of consecutive hours from `source` (a table with the
    /// columns of `events`) under one version, with one statement per step,
    /// and commit each hour; returns their events. Per-statement overhead
    /// is paid once per run instead of once per hour
    /// ([`plan::statement_runs`] bounds a run's size).
    pub async fn hours_from(
        &mut self,
        source: &str,
        source_name: &str,
        hours: &[i64],
    ) -> Result<u64, BatchError> {
        let (Some(&first), Some(&last)) = (hours.first(), hours.last()) else {
            return Ok(0);
        };
        let started = Instant::now();
        let version = self.next_version().await?;
        // Anything loaded from this instant on may be missing from the pass:
        // its hour counts as changed again.
        let raw_as_of = plan::server_now(&self.client).await?;
        let a = &self.cfg.aggregator;
        let spec = HourSpec {
            source,
            version,
            hour: first,
            end: last + 3600,
            window_secs: a.window_secs,
            dedup_margin_secs: self.cfg.batch.dedup_margin_secs,
            histogram_sigfig: a.histogram_sigfig,
            histogram_max_value: a.histogram_max_value,
            empty_dimensions: &self.empty_dimensions,
        };
        self.client
            .query(&sql::duplicate_ids(&spec))
            .execute()
            .await?;
        self.client
            .query(&sql::hour_states(&spec))
            .execute()
            .await?;
        self.client
            .query(&sql::drop_duplicate_ids(version))
            .execute()
            .await?;
        let states = sql::states_of_pass(first, last + 3600, version);
        self.client
            .query(&sql::finalize(
                &[(300, false), (300, true), (3600, false), (3600, true)],
                version,
                &states,
            ))
            .execute()
            .await?;
        self.client
            .query(&sql::commit_hours(
                hours,
                version,
                source_name,
                raw_as_of,
                self.cfg.batch.switch_delay_secs,
            ))
            .execute()
            .await?;
        let events: u64 = self
            .client
            .query(
                "SELECT toUInt64(sum(events)) FROM batch_commits WHERE period_secs = 3600 \
                 AND bucket_start >= toDateTime(?) AND bucket_start <= toDateTime(?) AND version = ?",
            )
            .bind(first)
            .bind(last)
            .bind(version)
            .fetch_one()
            .await?;
        reconcile::record_hours(&self.client, hours, version).await?;
        let secs = started.elapsed().as_secs_f64();
        ::metrics::counter!(metrics::HOURS).increment(hours.len() as u64);
        ::metrics::counter!(metrics::EVENTS).increment(events);
        for _ in hours {
            ::metrics::histogram!(metrics::HOUR_SECONDS).record(secs / hours.len() as f64);
        }
        tracing::info!(
            from = %plan::show(first),
            to = %plan::show(last + 3600),
            hours = hours.len(),
            version,
            events,
            seconds = secs,
            "hours batched"
        );
        Ok(events)
    }

    /// Derive one day's 1d rows from the current pass of each of its hours.
    pub async fn day(&mut self, day: i64) -> Result<(), BatchError> {
        let version = self.next_version().await?;
        let raw_as_of = plan::server_now(&self.client).await?;
        let states = sql::states_of_day(day);
        self.client
            .query(&sql::finalize(
                &[(86_400, false), (86_400, true)],
                version,
                &states,
            ))
            .execute()
            .await?;
        self.client
            .query(&sql::commit(
                86_400,
                day,
                version,
                "hours",
                raw_as_of,
                self.cfg.batch.switch_delay_secs,
            ))
            .execute()
            .await?;
        ::metrics::counter!(metrics::DAYS).increment(1);
        tracing::info!(day = %plan::show(day), version, "day batched");
        Ok(())
    }
}

/// `hourglass batch --once`: one pass over the whole of `range`, holding the
/// lease (`max_hours_per_pass` paces the long-running loop; a user asking for
/// a range wants all of it).
pub async fn run_once(cfg: &Config, range: Range) -> Result<PassReport, BatchError> {
    let mut cfg = cfg.clone();
    cfg.batch.max_hours_per_pass = u32::MAX;
    let cfg = &cfg;
    let mut batch = Batch::new(cfg);
    let lease = Lease::acquire(batch.client(), cfg.batch.lease_secs, true).await?;
    let report = batch.pass(range, &lease).await;
    lease.release().await;
    report
}

/// `hourglass batch`: a pass every `batch.interval_secs` until `shutdown`
/// is cancelled. A pass in progress finishes its current hour first; a pass
/// that fails is retried on the next interval.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), BatchError> {
    cfg.validate()
        .map_err(|e| BatchError::Config(e.to_string()))?;
    let service = telemetry::Service::start_with(&cfg.batch.http_listen, shutdown)
        .map_err(|e| BatchError::Config(format!("batch.http_listen: {e}")))?;
    metrics::describe();
    hourglass_lake::metrics::describe_erasure();
    let mut batch = Batch::new(&cfg);
    let stop = service.shutdown.clone();
    let lease = loop {
        match Lease::acquire(batch.client(), cfg.batch.lease_secs, true).await {
            Ok(lease) => break Some(lease),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the batch lease yet; retrying");
                if sleep_unless(&stop, Duration::from_secs(5)).await {
                    break None;
                }
            }
        }
    };
    let Some(lease) = lease else {
        service.stop().await?;
        return Ok(());
    };
    service.readiness.set(true);
    let interval = Duration::from_secs(u64::from(cfg.batch.interval_secs.max(1)));
    let retention_every = Duration::from_secs(cfg.retention.interval_secs);
    let mut retention_due = Instant::now();
    while !stop.is_cancelled() {
        if !retention_every.is_zero() && Instant::now() >= retention_due {
            let now = chrono::Utc::now();
            let passes = async {
                retention::pass(&cfg, now, false).await?;
                erasure::pass(&cfg, now, false).await?;
                prune::pass(&cfg, false).await
            };
            match passes.await {
                Ok(_) => retention_due = Instant::now() + retention_every,
                Err(e) => {
                    ::metrics::counter!(metrics::FAILURES).increment(1);
                    tracing::warn!(error = %e, "retention, erasure or pruning pass failed; retrying next interval");
                }
            }
        }
        match batch.pass(Range::default(), &lease).await {
            Ok(r) if !r.hours.is_empty() || !r.days.is_empty() => tracing::info!(
                hours = r.hours.len(),
                days = r.days.len(),
                events = r.events,
                left_over = r.left_over,
                "batch pass done"
            ),
            Ok(_) => {}
            Err(e @ BatchError::LeaseHeld { .. }) => {
                service.readiness.set(false);
                service.stop().await?;
                return Err(e);
            }
            Err(e) => {
                ::metrics::counter!(metrics::FAILURES).increment(1);
                tracing::warn!(error = %e, "batch pass failed; retrying next interval");
            }
        }
        // The lease is renewed while waiting: a standby takes over only
        // after this process stops renewing.
        let renew_every = Duration::from_secs(u64::from(cfg.batch.lease_secs.max(3) / 3));
        let next_pass = Instant::now() + interval;
        let mut stopped = false;
        while Instant::now() < next_pass {
            let nap = renew_every.min(next_pass.saturating_duration_since(Instant::now()));
            if sleep_unless(&stop, nap).await {
                stopped = true;
                break;
            }
            if let Err(e) = lease.renew().await {
                tracing::warn!(error = %e, "renewing the batch lease failed");
                if matches!(e, BatchError::LeaseHeld { .. }) {
                    service.stop().await?;
                    return Err(e);
                }
            }
        }
        if stopped {
            break;
        }
    }
    service.readiness.set(false);
    lease.release().await;
    service.stop().await?;
    Ok(())
}

/// Sleep `d` unless `stop` is cancelled first; returns whether it was.
async fn sleep_unless(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => stop.is_cancelled(),
    }
}
