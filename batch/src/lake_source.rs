//! `hourglass batch --source lake`: the same recompute over the Parquet
//! lake, for ranges ClickHouse no longer holds. The range's events (every
//! copy, as archived) are staged into a table with the columns of `events`,
//! and each hour runs the very statements a pass runs over `events`, so both
//! sources give identical rows for the same raw record.

use std::sync::Arc;

use hourglass_lake::replay::{ReplayOptions, Target};

use crate::lease::Lease;
use crate::{Batch, BatchError, PassReport, plan};

/// The staging table (recreated by each run).
pub const STAGING: &str = "batch_lake_events";

impl Batch {
    /// Recompute and commit every hour of `[from, to)` that the lake holds
    /// events for, then the days they complete. `lateness_hours`: how long
    /// after its event time an event may have been received (the lake is
    /// laid out by arrival hour).
    pub async fn pass_from_lake(
        &mut self,
        from: i64,
        to: i64,
        lateness_hours: i64,
        lease: &Lease,
    ) -> Result<PassReport, BatchError> {
        let from = from - from.rem_euclid(3600);
        let cutoff = plan::settled_before(self.client(), self.cfg.batch.settle_secs).await?;
        let to = to.min(cutoff);
        let margin = i64::from(self.cfg.batch.dedup_margin_secs);
        let time = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .ok_or_else(|| BatchError::Config(format!("{t} is not a time")))
        };
        let opts = ReplayOptions {
            from: time(from - margin)?,
            to: time(to + margin)?,
            project: None,
            target: Target::ClickHouse,
            kafka_topic: String::new(),
            dry_run: false,
            parallel: 4,
            lateness: chrono::Duration::hours(lateness_hours),
            lead: chrono::Duration::hours(1),
            progress: false,
        };
        let client = self.client().clone();
        client
            .query(&format!("DROP TABLE IF EXISTS {STAGING}"))
            .execute()
            .await?;
        client
            // A plain MergeTree: every archived copy must survive until the
            // pass picks the earliest received, and `events`' engine would
            // collapse copies in background merges keeping the last inserted.
            .query(&format!(
                "CREATE TABLE {STAGING} AS events ENGINE = MergeTree() \
                 PARTITION BY toYYYYMM(timestamp) ORDER BY (project_id, event, timestamp, event_id)"
            ))
            .execute()
            .await?;
        let store = hourglass_lake::store::open(&self.cfg)
            .await
            .map_err(|e| BatchError::Lake(e.to_string()))?;
        let staged = hourglass_lake::replay::stage(&self.cfg, Arc::from(store), &opts, STAGING)
            .await
            .map_err(|e| BatchError::Lake(e.to_string()))?;
        tracing::info!(
            files = staged.files,
            events = staged.written,
            "lake range staged"
        );
        let hours: Vec<u32> = client
            .query(&format!(
                "SELECT DISTINCT toUInt32(toStartOfHour(timestamp)) AS h FROM {STAGING} \
                 WHERE timestamp >= toDateTime(?) AND timestamp < toDateTime(?) ORDER BY h"
            ))
            .bind(from)
            .bind(to)
            .fetch_all()
            .await?;
        let mut report = PassReport::default();
        for hour in hours.into_iter().map(i64::from) {
            lease.renew().await?;
            report.events += self.hours_from(STAGING, "lake", &[hour]).await?;
            report.hours.push(hour);
        }
        let day_cutoff = cutoff + 3_600 - 86_400 + 1;
        for day in plan::due_days(&client, Some(from), day_cutoff, false).await? {
            lease.renew().await?;
            self.day(day).await?;
            report.days.push(day);
        }
        client
            .query(&format!("DROP TABLE IF EXISTS {STAGING}"))
            .execute()
            .await?;
        Ok(report)
    }
}

/// `hourglass batch --once --source lake --from T --to T`.
pub async fn run_once_from_lake(
    cfg: &hourglass_core::Config,
    from: i64,
    to: i64,
    lateness_hours: i64,
) -> Result<PassReport, BatchError> {
    let mut batch = Batch::new(cfg);
    let lease = Lease::acquire(batch.client(), cfg.batch.lease_secs, true).await?;
    let report = batch.pass_from_lake(from, to, lateness_hours, &lease).await;
    lease.release().await;
    report
}
